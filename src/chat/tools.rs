//! What agent workloads add to a chat call: tools the model may call, the
//! calls it makes (whole in a conversation, in pieces in a stream), content
//! beyond text, a response format, and the request fields the gateway has
//! no reason to read but must not lose.
//!
//! These are vocabulary, not wire: fronts fill them in from their wire and
//! adapters write them out in theirs (or refuse, naming the field, what
//! their wire cannot say). JSON schemas and tool arguments stay JSON
//! (a [`Value`] or the caller's own text) because they are the caller's
//! data, passed through, never interpreted by the gateway.

use serde_json::{Map, Value};

/// Everything a call may carry beyond messages and sampling. Empty (the
/// default) for a plain chat call.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestExtras {
    /// Functions the model may call.
    pub tools: Vec<ToolSpec>,
    /// Whether and which tool the model must call; `None` is the upstream's
    /// default (`auto` when there are tools).
    pub tool_choice: Option<ToolChoice>,
    /// The shape the answer must take; `None` is free text.
    pub response_format: Option<ResponseFormat>,
    /// Seed for reproducible sampling, where the upstream supports it.
    pub seed: Option<i64>,
    /// Every other request field the caller sent (OpenAI's `user`,
    /// `logprobs`, penalties, `logit_bias`, vendor extras such as vLLM's
    /// `top_k`), by name and as sent. OpenAI-compatible upstreams get them
    /// unchanged; other wires say the ones they can and refuse the rest, so
    /// nothing a caller asked for is dropped in silence.
    pub passthrough: Map<String, Value>,
    /// What to embed, for an embedding call (which has no messages); `None`
    /// for chat. Shared, so the retries of a call do not copy its inputs.
    pub embed: Option<std::sync::Arc<super::EmbedRequest>>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// Its arguments as a JSON schema; `None` takes none.
    pub parameters: Option<Value>,
    /// OpenAI's strict schema adherence, passed on where it can be said.
    pub strict: Option<bool>,
}

/// How the model must use the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    /// It decides.
    Auto,
    /// It must not call any.
    None,
    /// It must call at least one.
    Required,
    /// It must call this one.
    Function(String),
}

/// The shape of the answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResponseFormat {
    /// Free text (the default, said explicitly).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that matches a schema.
    JsonSchema(JsonSchema),
}

/// A named JSON schema the answer must match.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonSchema {
    /// Its name (OpenAI requires one).
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The schema itself.
    pub schema: Option<Value>,
    /// Strict adherence, where the upstream supports it.
    pub strict: Option<bool>,
}

/// A tool call the model made, as it sits in the conversation (an earlier
/// assistant turn the caller sends back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolCall {
    /// The id the tool's result refers to.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// A piece of a tool call as the answer streams: the first piece of a call
/// carries its id and name, later ones more of its arguments. A whole
/// answer's call is one piece with everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ToolCallDelta {
    /// Which call of the answer (0, 1, ...) this piece belongs to.
    pub index: u32,
    /// The call's id, on its first piece.
    pub id: Option<String>,
    /// The function's name, on its first piece.
    pub name: Option<String>,
    /// More of the arguments' JSON text (may be empty).
    pub arguments: String,
}

/// One part of a message's content beyond plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContentPart {
    /// Text.
    Text(String),
    /// An image, by URL (`https:` or a `data:` URL).
    Image {
        /// Where the image is, or the image itself as a data URL.
        url: String,
        /// OpenAI's `detail` (`low`, `high`, `auto`), when given.
        detail: Option<String>,
    },
}

/// Joins the pieces of an answer's tool calls into whole calls, for fronts
/// that answer at once (and for anything that needs the calls whole).
#[derive(Debug, Default)]
pub(crate) struct ToolCallsBuilder {
    /// The calls so far, in index order.
    calls: Vec<ToolCall>,
}

// === impl ToolCallsBuilder ===

impl ToolCallsBuilder {
    /// The most calls one answer may make: a bound on what an upstream can
    /// make the gateway hold, far above what any model emits.
    pub(crate) const MAX_CALLS: u32 = 1024;

    /// Adds one piece. Pieces of a call with an index past [`Self::MAX_CALLS`]
    /// are dropped rather than allocating room for them.
    pub(crate) fn push(&mut self, delta: ToolCallDelta) {
        if delta.index >= Self::MAX_CALLS {
            return;
        }
        let index = delta.index as usize;
        while self.calls.len() <= index {
            self.calls.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let call = &mut self.calls[index];
        if let Some(id) = delta.id {
            call.id = id;
        }
        if let Some(name) = delta.name {
            call.name.push_str(&name);
        }
        call.arguments.push_str(&delta.arguments);
    }

    /// The whole calls, in order.
    pub(crate) fn finish(self) -> Vec<ToolCall> {
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_tool_calls_join_into_whole_calls_by_index() {
        let mut calls = ToolCallsBuilder::default();
        let piece = |index, id: Option<&str>, name: Option<&str>, arguments: &str| ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: arguments.to_string(),
        };
        calls.push(piece(0, Some("call_a"), Some("weather"), ""));
        calls.push(piece(1, Some("call_b"), Some("time"), "{\"tz\":"));
        calls.push(piece(0, None, None, "{\"city\":\"Paris\"}"));
        calls.push(piece(1, None, None, "\"UTC\"}"));
        calls.push(piece(
            ToolCallsBuilder::MAX_CALLS,
            Some("x"),
            Some("y"),
            "{}",
        ));
        assert_eq!(
            calls.finish(),
            [
                ToolCall {
                    id: "call_a".into(),
                    name: "weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "time".into(),
                    arguments: "{\"tz\":\"UTC\"}".into(),
                },
            ]
        );
    }
}
