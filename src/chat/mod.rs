//! The one vocabulary a call speaks inside the gateway.
//!
//! Front ends translate their wire format (gRPC, OpenAI HTTP)
//! into a [`ChatRequest`]; backend adapters translate it into their
//! upstream's wire and answer with a [`ChatStream`] of [`ChatEvent`]s. No
//! layer in between knows any wire format, which is what lets one routing
//! table, one balancer and one set of limits serve every front end and every
//! kind of upstream.
//!
//! Helpers that several stages share live here with the vocabulary rather
//! than in one stage: [`timed`] holds a token stream to its time limits,
//! for the caller's deadline (stack) and an upstream's own limits alike;
//! [`hold`] keeps what a call holds (permits, load, its record) until its
//! stream ends. What agent calls add to the vocabulary (tools, tool calls
//! and their streamed pieces, content parts, the response format, fields
//! passed through) is in [`tools`]; what an embedding call asks and
//! answers, in [`embed`].

pub(crate) mod admit;
pub(crate) mod embed;
pub(crate) mod hold;
#[cfg(test)]
mod properties;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod timed;
pub(crate) mod tools;

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::Stream;
use tokio::time::Instant;

use crate::config::Priority;
use crate::error::GatewayError;
pub(crate) use embed::{EmbedInput, EmbedRequest, Embeddings};
pub(crate) use tools::{
    ContentPart, JsonSchema, RequestExtras, ResponseFormat, ToolCall, ToolCallDelta,
    ToolCallsBuilder, ToolChoice, ToolSpec,
};

/// One chat completion call, as every layer sees it.
#[derive(Debug, Clone)]
pub(crate) struct ChatRequest {
    /// The model name the caller asked for; the router maps it to a route.
    pub model: String,
    /// The conversation so far, oldest first. Never empty once validated.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters, passed through to the upstream.
    pub params: SamplingParams,
    /// Tools, response format, seed and every other field the caller sent
    /// for the upstream (see `RequestExtras`).
    pub extras: RequestExtras,
    /// Whether the caller wants tokens as they come (`CompleteStream`) or the
    /// whole answer at once (`Complete`); adapters pick the matching upstream
    /// mode so a unary call never pays for a stream it does not read.
    pub stream: bool,
    /// When the caller stops waiting (from `grpc-timeout`). Every layer below
    /// must be done by then, upstream included.
    pub deadline: Option<Instant>,
    /// Who the call is and where it went, shared with the layers that report
    /// on it.
    pub call: CallContext,
    /// Who is calling: what the front end read from the request, and once
    /// the auth layer checked it, the key's name.
    pub caller: Caller,
    /// The last message is the start of the assistant's answer, to be
    /// continued rather than replied to: set only by the router when it
    /// continues a broken stream on another endpoint (prefill).
    pub prefill: bool,
}

/// Who a call is, and where the gateway placed it, shared by every layer
/// that handles the call.
///
/// The front end fills in the request id; the router, and then the backend,
/// record the route, upstream and endpoint as they decide them. The context
/// is shared rather than returned with the answer because the layers that
/// report on a call (metrics, the access log) must know where it went when
/// it failed too, and a failed call returns nothing but its error. When a
/// call is retried elsewhere, the last placement is the one reported.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallContext {
    /// Shared by every clone of the request.
    inner: Arc<ContextInner>,
}

#[derive(Debug, Default)]
struct ContextInner {
    /// The id logs, the upstream and the caller all see for this call.
    request_id: RequestId,
    /// Filled in as the call is routed.
    placement: Mutex<Placement>,
    /// The snapshot the call is served under (see [`admit`]).
    pins: Mutex<Vec<admit::Pinned>>,
    /// Admits the call to a fallback route (see [`admit`]).
    route_admission: Mutex<Option<Arc<dyn admit::AdmitRoute>>>,
    /// The call's class in a route's queue (see [`CallContext::priority`]).
    priority: Mutex<Priorities>,
}

/// What the caller asked for with `x-llmgate-priority`, and the class it
/// was given.
#[derive(Debug, Default, Clone, Copy)]
struct Priorities {
    /// The header's class, if it named one; honoured only for keys with
    /// `priority_header: true`.
    asked: Option<Priority>,
    /// The class the call waits in.
    granted: Priority,
}

/// Where a call went. Every value is a name from the routing table, never
/// something the caller sent, so it is safe as a metric label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The route's model name (not the alias the caller used).
    pub route: Option<Arc<str>>,
    /// The upstream's name in the routing file.
    pub upstream: Option<Arc<str>>,
    /// The endpoint that served the call, as the routing file names it.
    pub endpoint: Option<Arc<str>>,
    /// How a stream that broke mid-answer ended: `prefill` or `replay`
    /// (continued elsewhere), `failed`; `None` when none broke.
    pub rescue: Option<&'static str>,
}

/// The id that ties together a call's log lines, its upstream request and
/// the caller's own records (`x-request-id`).
///
/// A caller's id is kept only if it is short and made of characters that
/// cannot break a log line or a header; anything else is replaced by a new
/// id, which the caller gets back in the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(Arc<str>);

/// Who is calling, as far as the gateway knows.
///
/// Front ends fill in what the caller presented; the auth layer replaces a
/// key it recognises with that key's name, so the layers after it (rate
/// limits, concurrency caps) count calls per key without ever holding the
/// key itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The call carried no credential.
    #[default]
    Anonymous,
    /// It carried an `authorization` value that is not `Bearer <key>`.
    Unreadable,
    /// It carried this bearer key, not yet checked.
    Presented(BearerKey),
    /// The key declared under this name, recognised by a front's edge
    /// or the auth layer.
    Key(Arc<str>),
}

/// An API key as a caller presented it. `Debug` never prints it, so a
/// request can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BearerKey(String);

/// Collects fallible items into a vector of exactly their number.
///
/// `collect` cannot tell how many items a fallible iterator will yield and
/// starts at four slots; a request's messages and tools are kept for the
/// whole call (for retries and continuations), so three spare slots of a
/// one-message call would be held for as long as its stream is open.
pub(crate) fn try_collect_exact<T, E>(
    items: impl ExactSizeIterator<Item = Result<T, E>>,
) -> Result<Vec<T>, E> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(item?);
    }
    Ok(out)
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said: the text, or the text parts of `parts` joined by
    /// newlines (what limits count, and what a wire without parts gets).
    pub content: String,
    /// The content as the caller sent it in parts (text and images), so a
    /// wire that takes parts gets them unflattened; empty when the content
    /// was plain text.
    pub parts: Vec<ContentPart>,
    /// The tools an assistant turn called.
    pub tool_calls: Vec<ToolCall>,
    /// For a [`Role::Tool`] message, the call whose result it is.
    pub tool_call_id: Option<String>,
}

/// The speakers of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The human (or calling service).
    User,
    /// The model's earlier answers.
    Assistant,
    /// A tool's result, answering an assistant's tool call.
    Tool,
}

/// Sampling parameters; `None` and empty mean "the upstream's default".
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SamplingParams {
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Strings that end generation when produced.
    pub stop: Vec<String>,
}

/// What a backend sends back, in order: any number of tokens, then exactly
/// one [`ChatEvent::Done`]. A stream that ends without `Done` was cut short,
/// and front ends must report it as an error rather than a complete answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChatEvent {
    /// A piece of generated text.
    Token(String),
    /// A piece of a tool call the model is making.
    ToolCall(ToolCallDelta),
    /// Generation finished; nothing follows.
    Done(Completion),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Completion {
    /// Why it ended, in the normalized vocabulary; `None` when the upstream
    /// did not say.
    pub finish_reason: Option<FinishReason>,
    /// Tokens in and out, when the upstream reported them.
    pub usage: Option<Usage>,
    /// The model that served the call, as the upstream named it.
    pub model: Arc<str>,
    /// Token log probabilities in OpenAI's shape (`{"content": [...]}`),
    /// when the caller asked for them and the upstream gave them. A
    /// stream's are gathered here in order: they are the caller's data,
    /// passed back whole at the end rather than re-shaped per token.
    pub logprobs: Option<serde_json::Value>,
    /// The vectors of an embedding call (see [`embed`]); `None` for chat.
    pub embeddings: Option<Arc<Embeddings>>,
}

/// Why generation stopped, normalized across upstream kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishReason {
    /// The model ended its answer or hit a stop string.
    Stop,
    /// `max_tokens` (or the context window) cut the answer.
    Length,
    /// The provider withheld content.
    ContentFilter,
    /// The model asked to call a tool.
    ToolCalls,
    /// The upstream reported an error while generating.
    Error,
}

/// Token accounting for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// The stream every backend returns and every layer passes along. It is
/// polled by the task that serves the call, so dropping it (the caller left,
/// or a deadline passed) drops the upstream request with it.
pub(crate) type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, GatewayError>> + Send>>;

// === impl CallContext ===

impl CallContext {
    /// A context for the call known as `request_id`.
    pub(crate) fn new(request_id: RequestId) -> Self {
        CallContext {
            inner: Arc::new(ContextInner {
                request_id,
                ..ContextInner::default()
            }),
        }
    }

    /// The call's request id.
    pub(crate) fn request_id(&self) -> &RequestId {
        &self.inner.request_id
    }

    /// Where the call has gone so far.
    pub(crate) fn placement(&self) -> Placement {
        self.lock().clone()
    }

    /// Records the route the call was matched to.
    pub(crate) fn place_route(&self, route: Arc<str>) {
        self.lock().route = Some(route);
    }

    /// Records the upstream about to serve the call; the endpoint is
    /// recorded once one is chosen.
    pub(crate) fn place_upstream(&self, upstream: Arc<str>) {
        let mut placement = self.lock();
        placement.upstream = Some(upstream);
        placement.endpoint = None;
    }

    /// Records the endpoint the call was sent to.
    pub(crate) fn place_endpoint(&self, endpoint: Arc<str>) {
        self.lock().endpoint = Some(endpoint);
    }

    /// Records how a broken stream was rescued (or that it was not).
    pub(crate) fn mark_rescue(&self, outcome: &'static str) {
        self.lock().rescue = Some(outcome);
    }

    /// Records the class the caller asked for in its `x-llmgate-priority`
    /// header; a value that names no class is ignored.
    pub(crate) fn ask_priority(&self, header: &[u8]) {
        let asked = std::str::from_utf8(header)
            .ok()
            .and_then(Priority::from_name);
        self.priorities().asked = asked;
    }

    /// Gives the call its key's class, or the one it asked for when the
    /// key lets its callers choose.
    pub(crate) fn grant_priority(&self, key: Priority, header_allowed: bool) {
        let mut priorities = self.priorities();
        priorities.granted = match priorities.asked {
            Some(asked) if header_allowed => asked,
            _ => key,
        };
    }

    /// The call's class in a route's queue: `normal` unless its key (or,
    /// where the key allows, its header) says otherwise.
    pub(crate) fn priority(&self) -> Priority {
        self.priorities().granted
    }

    fn priorities(&self) -> std::sync::MutexGuard<'_, Priorities> {
        self.inner
            .priority
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Placement> {
        // A panic elsewhere cannot leave a placement half written.
        self.inner
            .placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl RequestId ===

impl RequestId {
    /// The longest caller-chosen id kept.
    pub(crate) const MAX_LEN: usize = 128;

    /// The caller's id, if it is safe to log and to forward.
    pub(crate) fn from_caller(value: &str) -> Option<Self> {
        let safe = |c: char| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c);
        (!value.is_empty() && value.len() <= Self::MAX_LEN && value.chars().all(safe))
            .then(|| RequestId(Arc::from(value)))
    }

    /// A new random id, shaped like a version 4 UUID.
    pub(crate) fn generate() -> Self {
        // Version 4 (random) in the version nibble, RFC 4122 variant bits.
        let bits =
            (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
        let hex = format!("{bits:032x}");
        RequestId(Arc::from(format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )))
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

// === impl Caller ===

impl Caller {
    /// Reads an `authorization` header value, the one way every front end
    /// (gRPC metadata or HTTP) carries a key: `Bearer <key>`, the scheme in
    /// any case (RFC 7235). No header is [`Caller::Anonymous`]; a header in
    /// any other shape is [`Caller::Unreadable`], so the auth layer can say
    /// what was wrong with it.
    pub(crate) fn from_authorization(value: Option<&[u8]>) -> Caller {
        let Some(value) = value else {
            return Caller::Anonymous;
        };
        let Ok(text) = std::str::from_utf8(value) else {
            return Caller::Unreadable;
        };
        let Some((scheme, key)) = text.trim().split_once(' ') else {
            return Caller::Unreadable;
        };
        let key = key.trim_start();
        if !scheme.eq_ignore_ascii_case("bearer")
            || key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Caller::Unreadable;
        }
        Caller::Presented(BearerKey(key.to_string()))
    }

    /// The name of the key the auth layer recognised, if any.
    pub(crate) fn key_name(&self) -> Option<&Arc<str>> {
        match self {
            Caller::Key(name) => Some(name),
            _ => None,
        }
    }
}

// === impl BearerKey ===

impl BearerKey {
    /// The key, for the one place that checks it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::generate()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerKey(***)")
    }
}

// === impl Role ===

impl Role {
    /// The role's name on every wire we speak.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses a wire role name; `None` for anything we cannot forward.
    pub(crate) fn parse(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

// === impl FinishReason ===

impl FinishReason {
    /// Maps an upstream's finish reason onto the normalized set; reasons we do
    /// not know are kept as `None` rather than guessed.
    pub(crate) fn parse(name: &str) -> Option<FinishReason> {
        match name {
            "stop" | "end_turn" | "stop_sequence" | "eos" => Some(FinishReason::Stop),
            "length" | "max_tokens" | "model_context_window_exceeded" => Some(FinishReason::Length),
            "content_filter" | "refusal" => Some(FinishReason::ContentFilter),
            "tool_calls" | "tool_use" | "function_call" => Some(FinishReason::ToolCalls),
            "error" => Some(FinishReason::Error),
            _ => None,
        }
    }

    /// The normalized name callers see.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Error => "error",
        }
    }
}

// === impl ChatMessage ===

impl ChatMessage {
    /// A plain text message.
    pub(crate) fn text(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            parts: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

// === impl ChatRequest ===

impl ChatRequest {
    /// The conversation's size in bytes as limits and token estimates
    /// count it: each message's text and the arguments of the tool calls
    /// in it, which the upstream reads as prompt like any text.
    pub(crate) fn content_len(&self) -> usize {
        // An embedding call has no messages: its inputs are its content.
        if let Some(embed) = &self.extras.embed {
            return embed.content_len();
        }
        self.messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Checks what every upstream needs before the call goes anywhere, so a
    /// bad request fails here with the field named instead of as an opaque
    /// upstream 400.
    pub(crate) fn validate(&self) -> Result<(), GatewayError> {
        self.validate_model()?;
        if self.messages.is_empty() {
            return Err(GatewayError::invalid_argument(
                "messages",
                "is empty; send at least one message",
            ));
        }
        let finite_in = |value: Option<f32>, low: f32, high: f32| {
            value.is_none_or(|v| v.is_finite() && (low..=high).contains(&v))
        };
        if !finite_in(self.params.temperature, 0.0, 2.0) {
            return Err(GatewayError::invalid_argument(
                "temperature",
                "must be between 0 and 2",
            ));
        }
        if !finite_in(self.params.top_p, 0.0, 1.0) {
            return Err(GatewayError::invalid_argument(
                "top_p",
                "must be between 0 and 1",
            ));
        }
        self.validate_stop()?;
        self.validate_tools()
    }

    /// A model is named: the one check a call without messages (an
    /// embedding) shares with chat.
    pub(crate) fn validate_model(&self) -> Result<(), GatewayError> {
        if self.model.is_empty() {
            return Err(GatewayError::invalid_argument(
                "model",
                "is empty; name the model to use (ListModels shows the routed models)",
            ));
        }
        Ok(())
    }

    /// An embedding call of `model` for `embed`: no messages, unary, and
    /// otherwise a call like any other, so every layer admits, limits,
    /// routes, balances and records it as it does chat (see [`embed`]).
    pub(crate) fn embedding(
        model: String,
        embed: EmbedRequest,
        deadline: Option<Instant>,
        call: CallContext,
        caller: Caller,
    ) -> Self {
        ChatRequest {
            model,
            messages: Vec::new(),
            params: SamplingParams::default(),
            extras: RequestExtras {
                embed: Some(Arc::new(embed)),
                ..RequestExtras::default()
            },
            stream: false,
            deadline,
            call,
            caller,
            prefill: false,
        }
    }

    /// Tool turns that every upstream can place: a tool's result names the
    /// call it answers, only an assistant calls tools, and no more tools
    /// than OpenAI takes (each is a schema every upstream parses per call).
    fn validate_tools(&self) -> Result<(), GatewayError> {
        for (i, message) in self.messages.iter().enumerate() {
            if message.role == Role::Tool
                && message.tool_call_id.as_deref().is_none_or(str::is_empty)
            {
                return Err(GatewayError::invalid_argument(
                    &format!("messages[{i}].tool_call_id"),
                    "is missing; a tool message must name the tool call it answers",
                ));
            }
            if message.role != Role::Assistant && !message.tool_calls.is_empty() {
                return Err(GatewayError::invalid_argument(
                    &format!("messages[{i}].tool_calls"),
                    "may only be on an assistant message",
                ));
            }
        }
        let tools = &self.extras.tools;
        if tools.len() > MAX_TOOLS {
            return Err(GatewayError::invalid_argument(
                "tools",
                &format!("has {} tools; send at most {MAX_TOOLS}", tools.len()),
            ));
        }
        Ok(())
    }

    /// Stop sequences within what engines take: each upstream copies and
    /// scans every one per token, so thousands of them (a few MiB of empty
    /// strings) would cost tens of MB and real CPU per call.
    fn validate_stop(&self) -> Result<(), GatewayError> {
        let stop = &self.params.stop;
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(GatewayError::invalid_argument(
                "stop",
                &format!(
                    "has {} sequences; send at most {MAX_STOP_SEQUENCES}",
                    stop.len()
                ),
            ));
        }
        for (i, sequence) in stop.iter().enumerate() {
            if sequence.is_empty() || sequence.len() > MAX_STOP_SEQUENCE_BYTES {
                return Err(GatewayError::invalid_argument(
                    &format!("stop[{i}]"),
                    &format!(
                        "is {} bytes long; a stop sequence is 1 to {MAX_STOP_SEQUENCE_BYTES} bytes",
                        sequence.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The most stop sequences a call may send (OpenAI takes 4, vLLM and
/// Anthropic more; 16 leaves room without letting a call cost megabytes).
pub(crate) const MAX_STOP_SEQUENCES: usize = 16;

/// The most tools a call may offer (OpenAI's own limit).
pub(crate) const MAX_TOOLS: usize = 128;

/// The longest stop sequence, in bytes.
pub(crate) const MAX_STOP_SEQUENCE_BYTES: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_messages_hold_no_spare_slots_and_stop_at_the_first_error() {
        let one: Result<Vec<u8>, &str> = try_collect_exact([Ok(1)].into_iter());
        let one = one.expect("no error");
        assert_eq!((one.len(), one.capacity()), (1, 1));
        let failed = try_collect_exact([Ok(1), Err("second"), Err("third")].into_iter());
        assert_eq!(failed, Err("second"));
    }

    #[test]
    fn a_callers_request_id_is_kept_only_when_safe_to_log() {
        let kept = RequestId::from_caller("req-42_a.b:c/d+e=f@g").map(|id| id.to_string());
        assert_eq!(kept.as_deref(), Some("req-42_a.b:c/d+e=f@g"));
        for unsafe_id in [
            "",
            "has space",
            "line\nbreak",
            "quote\"",
            "é",
            &"x".repeat(129),
        ] {
            assert_eq!(RequestId::from_caller(unsafe_id), None, "{unsafe_id:?}");
        }
    }

    #[test]
    fn generated_request_ids_look_like_uuids_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        let text = a.as_str();
        let groups: Vec<usize> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{text}");
        assert_eq!(&text[14..15], "4", "version 4: {text}");
        assert!("89ab".contains(&text[19..20]), "RFC 4122 variant: {text}");
        assert!(
            RequestId::from_caller(text).is_some(),
            "our own ids pass our check"
        );
    }

    #[test]
    fn tool_calls_count_as_content_and_tool_turns_must_be_placeable() {
        let mut req = testing::request("m");
        let mut called = ChatMessage::text(Role::Assistant, "");
        called.tool_calls.push(ToolCall {
            id: "call_a".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        req.messages.push(called);
        assert_eq!(req.content_len(), "hi".len() + 11 + 16);
        assert!(req.validate().is_ok());

        req.messages.push(ChatMessage::text(Role::Tool, "18C"));
        let err = req
            .validate()
            .expect_err("a tool result must name its call");
        assert!(
            err.message().contains("messages[2].tool_call_id"),
            "{err:?}"
        );
        if let Some(result) = req.messages.last_mut() {
            result.tool_call_id = Some("call_a".into());
        }
        assert!(req.validate().is_ok());

        req.messages[0].tool_calls = req.messages[1].tool_calls.clone();
        let err = req.validate().expect_err("only an assistant calls tools");
        assert!(err.message().contains("messages[0].tool_calls"), "{err:?}");
    }

    #[test]
    fn placement_is_shared_by_clones_and_a_new_upstream_clears_the_endpoint() {
        let call = CallContext::default();
        let seen_by_router = call.clone();
        seen_by_router.place_route(Arc::from("llama"));
        seen_by_router.place_upstream(Arc::from("a"));
        seen_by_router.place_endpoint(Arc::from("http://10.0.0.1:8000"));
        seen_by_router.place_upstream(Arc::from("b"));
        assert_eq!(
            call.placement(),
            Placement {
                route: Some(Arc::from("llama")),
                upstream: Some(Arc::from("b")),
                endpoint: None,
                rescue: None,
            }
        );
    }
}
