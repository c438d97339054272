//! What the wires that are not OpenAI's share when they translate an agent
//! call: the refusal of a field they cannot say (named, so the caller
//! knows what to leave out or where to route instead), tool arguments as
//! the JSON objects they take where OpenAI carries text, and images from
//! data URLs.

use serde_json::Value;

use crate::error::GatewayError;

/// The refusal of a request field a wire cannot say: the caller asked for
/// something this upstream would not do, and dropping it in silence would
/// hand back an answer that ignored it.
pub(crate) fn unsupported(field: &str, upstream: &str, api: &str) -> GatewayError {
    GatewayError::invalid_argument(
        field,
        &format!(
            "cannot be honoured: this model is served by upstream '{upstream}' ({api}), \
             which has no such setting; leave it out or route to an upstream that has it"
        ),
    )
}

/// A tool call's arguments as the JSON object wires other than OpenAI's
/// take (OpenAI carries them as text); `field` names them in the error.
pub(crate) fn arguments_json(field: &str, arguments: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_str(arguments) {
        Ok(Value::Object(object)) => Ok(Value::Object(object)),
        Ok(_) => Err(GatewayError::invalid_argument(
            field,
            "is not a JSON object; tool arguments are an object of named arguments",
        )),
        Err(err) => Err(GatewayError::invalid_argument(
            field,
            &format!("is not a JSON object: {err}"),
        )),
    }
}

/// The media type and base64 data of a `data:` URL
/// (`data:image/png;base64,...`); `None` for any other URL.
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (head, data) = rest.split_once(',')?;
    let media_type = head.strip_suffix(";base64")?;
    Some((media_type, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_split_into_media_type_and_base64_and_other_urls_do_not() {
        assert_eq!(
            data_url("data:image/png;base64,iVBORw0KGgo="),
            Some(("image/png", "iVBORw0KGgo="))
        );
        assert_eq!(data_url("https://example.com/cat.png"), None);
        assert_eq!(data_url("data:text/plain,hello"), None, "not base64");
    }

    #[test]
    fn tool_arguments_must_be_json_and_empty_ones_are_an_empty_object() {
        assert_eq!(
            arguments_json("f", r#"{"city":"Paris"}"#).ok(),
            Some(serde_json::json!({"city": "Paris"}))
        );
        assert_eq!(arguments_json("f", " ").ok(), Some(serde_json::json!({})));
        assert!(
            arguments_json("f", "[1, 2]").is_err(),
            "an array is not arguments"
        );
        let err = arguments_json("messages[1].tool_calls[0].function.arguments", "{\"ci")
            .expect_err("not JSON");
        assert!(
            err.message()
                .starts_with("messages[1].tool_calls[0].function.arguments"),
            "{err:?}"
        );
    }
}
