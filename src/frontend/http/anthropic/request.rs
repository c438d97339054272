//! A Messages API request as the internal [`ChatRequest`]: `system` as
//! the leading system message, each turn's blocks as the vocabulary's
//! messages (a user turn's `tool_result` blocks become tool messages, an
//! assistant turn's `tool_use` blocks its tool calls), tools and tool
//! choice, `top_k` and `metadata.user_id` as the extras every upstream
//! kind already reads, and every other field kept for the upstream.
//!
//! A wrong field is named by its path (`messages[1].content[0].source`),
//! as the OpenAI front names its own.

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::wire::{
    InBlock, InContent, InImageSource, InMessage, InTool, InToolChoice, KNOWN_FIELDS,
    MessagesRequest,
};
use crate::chat::{
    CallContext, Caller, ChatMessage, ChatRequest, ContentPart, RequestExtras, Role,
    SamplingParams, ToolCall, ToolChoice, ToolSpec,
};
use crate::error::GatewayError;
use crate::frontend::http::request::read_known_fields;

/// The most blocks one turn (or one tool result) may have: each costs an
/// allocation however small it is, as the OpenAI front bounds its parts.
const MAX_BLOCKS: usize = 256;

/// The body as a Messages request, with a wrong field named by its path,
/// and every field it does not read kept as sent in `passthrough`.
pub(super) fn parse_request(body: &[u8]) -> Result<MessagesRequest, GatewayError> {
    let (mut request, passthrough): (MessagesRequest, _) =
        read_known_fields(body, KNOWN_FIELDS, "a JSON Messages request")?;
    request.passthrough = passthrough;
    Ok(request)
}

/// The wire request as a validated [`ChatRequest`] of `caller`, tracked
/// by `call`.
pub(super) fn chat_request(
    wire: MessagesRequest,
    deadline: Option<Instant>,
    call: CallContext,
    caller: Caller,
) -> Result<ChatRequest, GatewayError> {
    let max_tokens = match wire.max_tokens {
        None => {
            return Err(GatewayError::invalid_argument(
                "max_tokens",
                "is missing; the Messages API requires a token cap",
            ));
        }
        Some(cap) => u32::try_from(cap)
            .ok()
            .filter(|&cap| cap > 0)
            .ok_or_else(|| {
                GatewayError::invalid_argument(
                    "max_tokens",
                    &format!("is {cap}; it must be at least 1"),
                )
            })?,
    };
    let mut messages = Vec::with_capacity(wire.messages.len() + 1);
    if let Some(system) = wire.system {
        let text = text_only("system", system)?;
        if !text.is_empty() {
            messages.push(ChatMessage::text(Role::System, text));
        }
    }
    for (i, message) in wire.messages.into_iter().enumerate() {
        turn(i, message, &mut messages)?;
    }
    let mut passthrough = wire.passthrough;
    // A prompt-caching hint, like the `cache_control` of blocks and tools
    // (which the wire types skip): it changes what a call costs, never
    // what it answers, and only Anthropic's own servers cache. Dropped so
    // a caller that sets it is served by every pool kind.
    passthrough.remove("cache_control");
    if let Some(top_k) = wire.top_k {
        passthrough.insert("top_k".into(), json!(top_k));
    }
    if let Some(user) = wire.metadata.and_then(|m| m.user_id) {
        passthrough.insert("user".into(), Value::String(user));
    }
    let tool_choice = match wire.tool_choice {
        Some(choice) => Some(tool_choice(choice, &mut passthrough)?),
        None => None,
    };
    let req = ChatRequest {
        model: wire.model.unwrap_or_default(),
        messages,
        params: SamplingParams {
            max_tokens: Some(max_tokens),
            temperature: wire.temperature,
            top_p: wire.top_p,
            stop: wire.stop_sequences.unwrap_or_default(),
        },
        extras: RequestExtras {
            tools: tools(wire.tools.unwrap_or_default())?,
            tool_choice,
            response_format: None,
            seed: None,
            passthrough,
            embed: None,
        },
        stream: wire.stream.unwrap_or(false),
        deadline,
        call,
        caller,
        prefill: false,
    };
    req.validate().map_err(rename_stop)?;
    Ok(req)
}

/// The vocabulary names the stop strings `stop`; this wire calls them
/// `stop_sequences`, and the caller should read the name it sent.
fn rename_stop(err: GatewayError) -> GatewayError {
    match err.field() {
        Some(field) if field == "stop" || field.starts_with("stop[") => {
            let renamed = field.replacen("stop", "stop_sequences", 1);
            let problem = err
                .message()
                .strip_prefix(field)
                .unwrap_or(err.message())
                .trim_start();
            GatewayError::invalid_argument(&renamed, problem)
        }
        _ => err,
    }
}

/// One turn as the vocabulary's messages, appended to `out`: a user
/// turn's tool results become tool messages (in order, before or after
/// its text), an assistant turn's `tool_use` blocks its tool calls.
fn turn(i: usize, message: InMessage, out: &mut Vec<ChatMessage>) -> Result<(), GatewayError> {
    let role = match message.role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(GatewayError::invalid_argument(
                &format!("messages[{i}].role"),
                &format!(
                    "'{other}' is not a role of the Messages API; use user or assistant \
                     (system instructions go in the top-level system field)"
                ),
            ));
        }
    };
    let blocks = match message.content {
        InContent::Text(text) => {
            out.push(ChatMessage::text(role, text));
            return Ok(());
        }
        InContent::Blocks(blocks) => blocks,
    };
    let at = format!("messages[{i}].content");
    if blocks.len() > MAX_BLOCKS {
        return Err(too_many_blocks(&at, blocks.len()));
    }
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let field = format!("{at}[{j}]");
        let block = read_block(&field, block)?;
        match (block.kind.as_str(), role) {
            ("text", _) => parts.push(ContentPart::Text(text_of(&field, block)?)),
            ("image", Role::User) => parts.push(image(&field, block.source)?),
            ("tool_use", Role::Assistant) => calls.push(tool_use(&field, block)?),
            ("tool_result", Role::User) => {
                // Results answer the previous assistant turn: whatever the
                // turn said before them goes first, as it was sent.
                flush(role, &mut parts, Vec::new(), out);
                out.push(tool_result(&field, block)?);
            }
            (kind @ ("image" | "tool_result"), _) => {
                return Err(GatewayError::invalid_argument(
                    &format!("{field}.type"),
                    &format!("'{kind}' blocks belong in user turns"),
                ));
            }
            ("tool_use", _) => {
                return Err(GatewayError::invalid_argument(
                    &format!("{field}.type"),
                    "'tool_use' blocks belong in assistant turns",
                ));
            }
            (kind, _) => {
                return Err(GatewayError::invalid_argument(
                    &format!("{field}.type"),
                    &format!(
                        "'{kind}' blocks are not supported by this gateway; send text, image, \
                         tool_use or tool_result blocks"
                    ),
                ));
            }
        }
    }
    if !parts.is_empty() || !calls.is_empty() {
        flush(role, &mut parts, calls, out);
    }
    Ok(())
}

/// Appends the turn's blocks so far as one message (its text parts joined
/// into its content, images kept as parts), and empties `parts`.
fn flush(
    role: Role,
    parts: &mut Vec<ContentPart>,
    tool_calls: Vec<ToolCall>,
    out: &mut Vec<ChatMessage>,
) {
    if parts.is_empty() && tool_calls.is_empty() {
        return;
    }
    let parts = std::mem::take(parts);
    let content = parts
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text(text) => Some(text.as_str()),
            ContentPart::Image { .. } => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let only_text = parts.iter().all(|p| matches!(p, ContentPart::Text(_)));
    out.push(ChatMessage {
        role,
        content,
        // Text alone travels as text: every wire takes it, and it is what
        // the caller meant.
        parts: if only_text { Vec::new() } else { parts },
        tool_calls,
        tool_call_id: None,
    });
}

/// One content block, a wrong field in it named by its path.
fn read_block(field: &str, block: Value) -> Result<InBlock, GatewayError> {
    serde_path_to_error::deserialize(block).map_err(|err| {
        let inner = err.path().to_string();
        let path = if inner == "." {
            field.to_string()
        } else {
            format!("{field}.{inner}")
        };
        GatewayError::invalid_argument(&path, &format!("is not valid: {}", err.into_inner()))
    })
}

/// A `text` block's text.
fn text_of(field: &str, block: InBlock) -> Result<String, GatewayError> {
    block.text.ok_or_else(|| {
        GatewayError::invalid_argument(
            &format!("{field}.text"),
            "is missing; a text block needs its text",
        )
    })
}

/// `system`, or a tool result's content: a string, or text blocks joined
/// by newlines.
fn text_only(field: &str, content: InContent) -> Result<String, GatewayError> {
    let blocks = match content {
        InContent::Text(text) => return Ok(text),
        InContent::Blocks(blocks) => blocks,
    };
    if blocks.len() > MAX_BLOCKS {
        return Err(too_many_blocks(field, blocks.len()));
    }
    let mut text = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.into_iter().enumerate() {
        let at = format!("{field}[{j}]");
        let block = read_block(&at, block)?;
        if block.kind != "text" {
            return Err(GatewayError::invalid_argument(
                &format!("{at}.type"),
                &format!("'{}' blocks cannot go here; send text blocks", block.kind),
            ));
        }
        text.push(text_of(&at, block)?);
    }
    Ok(text.join("\n"))
}

/// An `image` block as an image part: base64 data as a data URL, a `url`
/// source by reference.
fn image(field: &str, source: Option<InImageSource>) -> Result<ContentPart, GatewayError> {
    let bad = |problem: &str| GatewayError::invalid_argument(&format!("{field}.source"), problem);
    let source = source.ok_or_else(|| bad("is missing; an image block needs its source"))?;
    let url = match (
        source.kind.as_str(),
        source.media_type,
        source.data,
        source.url,
    ) {
        ("base64", Some(media_type), Some(data), _) => format!("data:{media_type};base64,{data}"),
        ("url", _, _, Some(url)) => url,
        ("base64", ..) => return Err(bad("needs media_type and data for a base64 image")),
        ("url", ..) => return Err(bad("needs the url of a url image")),
        (kind, ..) => {
            return Err(bad(&format!(
                "has type '{kind}'; send a base64 or url source"
            )));
        }
    };
    Ok(ContentPart::Image { url, detail: None })
}

/// A `tool_use` block as a tool call, its input as the JSON text the
/// vocabulary carries.
fn tool_use(field: &str, block: InBlock) -> Result<ToolCall, GatewayError> {
    let missing = |name: &str| {
        GatewayError::invalid_argument(
            &format!("{field}.{name}"),
            "is missing; a tool_use block needs its id, name and input",
        )
    };
    let id = block
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| missing("id"))?;
    let name = block
        .name
        .filter(|name| !name.is_empty())
        .ok_or_else(|| missing("name"))?;
    let input = block.input.unwrap_or_else(|| json!({}));
    if !input.is_object() {
        return Err(GatewayError::invalid_argument(
            &format!("{field}.input"),
            "must be a JSON object of the tool's arguments",
        ));
    }
    Ok(ToolCall {
        id,
        name,
        arguments: input.to_string(),
    })
}

/// A `tool_result` block as a tool message. `is_error` has no place in
/// the vocabulary (no other wire carries it): the result's text says what
/// failed, as the tool wrote it.
fn tool_result(field: &str, block: InBlock) -> Result<ChatMessage, GatewayError> {
    let id = block
        .tool_use_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            GatewayError::invalid_argument(
                &format!("{field}.tool_use_id"),
                "is missing; a tool_result names the tool_use it answers",
            )
        })?;
    let content = match block.content {
        None => String::new(),
        Some(content) => text_only(&format!("{field}.content"), content)?,
    };
    Ok(ChatMessage {
        role: Role::Tool,
        content,
        parts: Vec::new(),
        tool_calls: Vec::new(),
        tool_call_id: Some(id),
    })
}

/// The tools offered: custom tools with a name.
fn tools(wire: Vec<InTool>) -> Result<Vec<ToolSpec>, GatewayError> {
    wire.into_iter()
        .enumerate()
        .map(|(i, tool)| {
            if let Some(kind) = tool.kind.as_deref().filter(|&kind| kind != "custom") {
                return Err(GatewayError::invalid_argument(
                    &format!("tools[{i}].type"),
                    &format!(
                        "'{kind}' is one of Anthropic's server tools, which this gateway \
                         cannot run; offer custom tools (name, description, input_schema)"
                    ),
                ));
            }
            if tool.name.is_empty() {
                return Err(GatewayError::invalid_argument(
                    &format!("tools[{i}].name"),
                    "is missing; a tool needs a name",
                ));
            }
            Ok(ToolSpec {
                name: tool.name,
                description: tool.description,
                parameters: tool.input_schema,
                strict: None,
            })
        })
        .collect()
}

/// `tool_choice` as the vocabulary's; `disable_parallel_tool_use` as the
/// `parallel_tool_calls: false` extra, which each upstream kind says in
/// its own words (or refuses, naming it).
fn tool_choice(
    wire: InToolChoice,
    passthrough: &mut Map<String, Value>,
) -> Result<ToolChoice, GatewayError> {
    if wire.disable_parallel_tool_use == Some(true) {
        passthrough.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    match (wire.kind.as_str(), wire.name) {
        ("auto", _) => Ok(ToolChoice::Auto),
        ("any", _) => Ok(ToolChoice::Required),
        ("none", _) => Ok(ToolChoice::None),
        ("tool", Some(name)) if !name.is_empty() => Ok(ToolChoice::Function(name)),
        ("tool", _) => Err(GatewayError::invalid_argument(
            "tool_choice.name",
            "is missing; a tool choice of type tool names the tool",
        )),
        (kind, _) => Err(GatewayError::invalid_argument(
            "tool_choice.type",
            &format!("'{kind}' is not a tool choice; use auto, any, tool or none"),
        )),
    }
}

fn too_many_blocks(field: &str, count: usize) -> GatewayError {
    GatewayError::invalid_argument(
        field,
        &format!("has {count} blocks; send at most {MAX_BLOCKS} (join text blocks into one)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> Result<ChatRequest, GatewayError> {
        let wire = parse_request(body.to_string().as_bytes())?;
        chat_request(wire, None, CallContext::default(), Caller::Anonymous)
    }

    #[test]
    fn a_tool_turn_becomes_an_assistant_call_and_tool_messages_in_order() {
        let req = translate(json!({
            "model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "4C"}]},
                    {"type": "text", "text": "And tomorrow?"}]},
            ],
        }))
        .expect("a valid request");
        let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(req.messages[0].content, "Be brief.\nBe kind.");
        assert_eq!(req.messages[2].content, "Looking.");
        assert_eq!(
            req.messages[2].tool_calls,
            [ToolCall {
                id: "toolu_1".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            }]
        );
        assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(req.messages[3].content, "4C");
        assert_eq!(req.messages[4].content, "And tomorrow?");
        assert_eq!(req.params.max_tokens, Some(10));
    }

    #[test]
    fn images_stay_parts_and_extras_travel_in_the_vocabularys_names() {
        let req = translate(json!({
            "model": "m", "max_tokens": 5, "top_k": 40, "metadata": {"user_id": "u-7"},
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "tools": [{"name": "t", "input_schema": {"type": "object"}}],
            "thinking": {"type": "disabled"}, "cache_control": {"type": "ephemeral"},
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "text", "text": "What is this?"}]}],
        }))
        .expect("a valid request");
        assert_eq!(
            req.messages[0].parts,
            [
                ContentPart::Image {
                    url: "data:image/png;base64,iVBO".into(),
                    detail: None
                },
                ContentPart::Text("What is this?".into()),
            ]
        );
        assert_eq!(req.extras.tool_choice, Some(ToolChoice::Required));
        let extras = &req.extras.passthrough;
        assert_eq!(extras["top_k"], json!(40));
        assert_eq!(extras["user"], json!("u-7"));
        assert_eq!(extras["parallel_tool_calls"], json!(false));
        assert_eq!(extras["thinking"], json!({"type": "disabled"}));
        assert!(!extras.contains_key("cache_control"), "{extras:?}");
    }

    #[test]
    fn what_is_wrong_is_named_by_its_path() {
        let field = |body: Value| {
            translate(body)
                .expect_err("refused")
                .field()
                .map(str::to_string)
        };
        let hi = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            field(json!({"model": "m", "messages": hi})).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            field(json!({"model": "m", "max_tokens": 0, "messages": hi})).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            field(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}))
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            field(
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "A memo."}}]}]})
            )
            .as_deref(),
            Some("messages[0].content[0].type")
        );
        assert_eq!(
            field(
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": 7}]}]})
            )
            .as_deref(),
            Some("messages[0].content[1].text")
        );
        assert_eq!(
            field(json!({"model": "m", "max_tokens": 1, "messages": hi, "stop_sequences": [""]}))
                .as_deref(),
            Some("stop_sequences[0]")
        );
        assert_eq!(
            field(json!({"model": "m", "max_tokens": 1, "messages": hi,
                         "tool_choice": {"type": "tool"}}))
            .as_deref(),
            Some("tool_choice.name")
        );
        assert_eq!(
            field(json!({"model": "m", "max_tokens": 1, "messages": hi,
                         "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
            .as_deref(),
            Some("tools[0].type")
        );
    }
}
