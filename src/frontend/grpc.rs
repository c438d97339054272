//! The `llm.v1.LLMService` gRPC front end.
//!
//! It translates messages, reads the caller's deadline from `grpc-timeout`
//! (tonic does not enforce it on streamed bodies, so the stack does), and
//! maps errors to canonical status codes in exactly one place
//! (`From<GatewayError> for Status`). Each call gets a request id (the
//! caller's `x-request-id`, or a new one) that goes to the upstream and
//! comes back in the response metadata. Responses stream straight from the
//! upstream body: no task hop per token, and when the caller cancels, tonic
//! drops the stream and with it the upstream request.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::chat::{
    CallContext, Caller, ChatEvent, ChatMessage, ChatRequest, ChatStream, Completion, EmbedInput,
    EmbedRequest, JsonSchema, RequestExtras, RequestId, ResponseFormat, Role, SamplingParams,
    ToolCall, ToolChoice, ToolSpec, try_collect_exact,
};
use crate::error::GatewayError;
use crate::frontend::door::Admitted;
use crate::frontend::edge::{self, Edge, FirstWrite, WholeAnswer, poll_events, truncated};
use crate::proto;
use crate::proto::llm_service_server::LlmService;
use crate::telemetry::{PRIORITY, REQUEST_ID};

/// The gRPC service implementation.
pub(crate) struct GrpcFrontend {
    /// What every front shares: the call path, the table, the keys.
    edge: Edge,
}

/// A [`ChatStream`] as `TokenChunk`s. It insists on a final `Done`: a
/// stream that stops without one was cut short, and the caller gets an
/// error instead of a truncated answer that looks complete.
pub(crate) struct TokenChunks {
    /// The tokens; `None` once finished.
    inner: Option<ChatStream>,
    /// tonic gathers every message ready into one write: the first is
    /// let through on its own.
    first_write: FirstWrite,
}

impl GrpcFrontend {
    /// The gRPC front over the shared `edge`.
    pub(crate) fn new(edge: Edge) -> Self {
        GrpcFrontend { edge }
    }

    /// Starts a call: its request id, the wire request translated, and the
    /// stack called. The request id comes back with the outcome, to be
    /// returned to the caller whatever the outcome is.
    async fn start(
        &self,
        request: Request<proto::CompleteRequest>,
        stream: bool,
    ) -> (RequestId, Result<ChatStream, GatewayError>) {
        let request_id = edge::request_id(
            request
                .metadata()
                .get(REQUEST_ID)
                .map(|value| value.as_bytes()),
        );
        let call = CallContext::new(request_id.clone());
        if let Some(asked) = request.metadata().get(PRIORITY) {
            call.ask_priority(asked.as_bytes());
        }
        let deadline = edge::deadline(grpc_timeout(request.metadata()));
        let caller = admitted(&request);
        let req = match chat_request(request.into_inner(), stream, deadline, call.clone()) {
            Ok(req) => ChatRequest { caller, ..req },
            Err((model, err)) => {
                self.edge.refused(call, &model, stream, &err);
                return (request_id, Err(err));
            }
        };
        (request_id, self.edge.call(req).await)
    }
}

#[tonic::async_trait]
impl LlmService for GrpcFrontend {
    async fn complete(
        &self,
        request: Request<proto::CompleteRequest>,
    ) -> Result<Response<proto::CompleteResponse>, Status> {
        let (request_id, stream) = self.start(request, false).await;
        let answer = async {
            let WholeAnswer {
                text,
                tool_calls,
                completion,
            } = edge::gather(stream?).await?;
            Ok::<_, GatewayError>(proto::CompleteResponse {
                text,
                usage: usage(&completion),
                finish_reason: finish_reason(&completion),
                model: completion.model.to_string(),
                tool_calls: tool_calls
                    .into_iter()
                    .map(|call| proto::ToolCall {
                        id: call.id,
                        name: call.name,
                        arguments: call.arguments,
                    })
                    .collect(),
            })
        };
        respond(&request_id, answer.await)
    }

    type CompleteStreamStream = TokenChunks;

    async fn complete_stream(
        &self,
        request: Request<proto::CompleteRequest>,
    ) -> Result<Response<Self::CompleteStreamStream>, Status> {
        let (request_id, stream) = self.start(request, true).await;
        respond(
            &request_id,
            stream.map(|stream| TokenChunks {
                first_write: FirstWrite::default(),
                inner: Some(stream),
            }),
        )
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let key = self.edge.authenticate(&caller(request.metadata()))?;
        let models = self
            .edge
            .visible_routes(key.as_deref())
            .iter()
            .map(|route| proto::ModelInfo {
                name: route.model.to_string(),
                aliases: route.aliases.clone(),
                pools: route
                    .pools
                    .iter()
                    .map(|pool| proto::PoolInfo {
                        upstream: pool.upstream.name().to_string(),
                        weight: pool.weight,
                        model: pool.model.to_string(),
                        endpoints: pool
                            .upstream
                            .endpoints(&pool.model)
                            .into_iter()
                            .map(|e| proto::EndpointInfo {
                                url: e.url,
                                state: e.state.to_string(),
                                in_flight: u32::try_from(e.in_flight).unwrap_or(u32::MAX),
                                consecutive_failures: e.consecutive_failures,
                                ejected_for: e.ejected_for.to_string(),
                                engine_requests_waiting: e.engine.map(|s| s.waiting),
                                engine_requests_running: e.engine.map(|s| s.running),
                                engine_kv_cache_usage: e.engine.map(|s| s.kv_cache_usage as f32),
                            })
                            .collect(),
                    })
                    .collect(),
                fallback: route.fallback.clone(),
            })
            .collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }

    async fn embed(
        &self,
        request: Request<proto::EmbedRequest>,
    ) -> Result<Response<proto::EmbedResponse>, Status> {
        let request_id = edge::request_id(
            request
                .metadata()
                .get(REQUEST_ID)
                .map(|value| value.as_bytes()),
        );
        let call = CallContext::new(request_id.clone());
        let deadline = edge::deadline(grpc_timeout(request.metadata()));
        let caller = admitted(&request);
        let req = match embed_request(request.into_inner(), deadline, call.clone(), caller) {
            Ok(req) => req,
            Err((model, err)) => {
                self.edge.refused(call, &model, false, &err);
                return respond(&request_id, Err(err));
            }
        };
        let answer = async {
            let completion = edge::embedded(self.edge.call(req).await?).await?;
            Ok(proto::EmbedResponse {
                embeddings: completion
                    .embeddings
                    .as_deref()
                    .map(|e| e.vectors.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|values| proto::Embedding {
                        values: values.clone(),
                    })
                    .collect(),
                usage: usage(&completion),
                model: completion.model.to_string(),
            })
        };
        respond(&request_id, answer.await)
    }
}

// === impl TokenChunks ===

impl Stream for TokenChunks {
    type Item = Result<proto::TokenChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.first_write.yield_for_flush(cx) {
            return Poll::Pending;
        }
        let chunk = ready!(self.next_chunk(cx));
        if chunk.is_some() {
            self.first_write.wrote();
        }
        Poll::Ready(chunk)
    }
}

impl TokenChunks {
    /// The next message: a token, a piece of a tool call, or the last.
    fn next_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<proto::TokenChunk, Status>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = match ready!(poll_events(inner, cx)) {
            Some(Ok(ChatEvent::Token(token))) => {
                return Poll::Ready(Some(Ok(proto::TokenChunk {
                    token,
                    ..Default::default()
                })));
            }
            Some(Ok(ChatEvent::ToolCall(delta))) => {
                return Poll::Ready(Some(Ok(proto::TokenChunk {
                    tool_calls: vec![proto::ToolCallDelta {
                        index: delta.index,
                        id: delta.id.unwrap_or_default(),
                        name: delta.name.unwrap_or_default(),
                        arguments: delta.arguments,
                    }],
                    ..Default::default()
                })));
            }
            Some(Ok(ChatEvent::Done(completion))) => Ok(proto::TokenChunk {
                token: String::new(),
                done: true,
                usage: usage(&completion),
                finish_reason: finish_reason(&completion),
                model: completion.model.to_string(),
                tool_calls: Vec::new(),
            }),
            Some(Err(err)) => Err(err.into()),
            None => Err(truncated().into()),
        };
        // Whatever ended the stream, release the upstream now.
        self.inner = None;
        Poll::Ready(Some(item))
    }
}

// === translation ===

/// The wire request as a validated [`ChatRequest`]; a refusal comes with
/// the model name asked for, for the record.
fn chat_request(
    wire: proto::CompleteRequest,
    stream: bool,
    deadline: Option<Instant>,
    call: CallContext,
) -> Result<ChatRequest, (String, GatewayError)> {
    let model = wire.model;
    let messages =
        match try_collect_exact(wire.messages.into_iter().enumerate().map(|(i, message)| {
            let role = Role::parse(&message.role).ok_or_else(|| {
                GatewayError::invalid_argument(
                    &format!("messages[{i}].role"),
                    &format!(
                        "'{}' is not a role; use system, user, assistant or tool",
                        message.role
                    ),
                )
            })?;
            Ok(ChatMessage {
                role,
                content: message.content,
                parts: Vec::new(),
                tool_calls: message
                    .tool_calls
                    .into_iter()
                    .map(|call| ToolCall {
                        id: call.id,
                        name: call.name,
                        arguments: call.arguments,
                    })
                    .collect(),
                tool_call_id: Some(message.tool_call_id).filter(|id| !id.is_empty()),
            })
        })) {
            Ok(messages) => messages,
            Err(err) => return Err((model, err)),
        };
    let max_tokens = match wire.max_tokens {
        0 => None,
        n if n < 0 => {
            let err = GatewayError::invalid_argument(
                "max_tokens",
                &format!("is {n}; it must be positive, or 0 for the upstream's default"),
            );
            return Err((model, err));
        }
        n => Some(n.unsigned_abs()),
    };
    let extras = match extras(
        wire.tools,
        wire.tool_choice,
        wire.response_format,
        wire.seed,
    ) {
        Ok(extras) => extras,
        Err(err) => return Err((model, err)),
    };
    let req = ChatRequest {
        model,
        messages,
        extras,
        params: SamplingParams {
            max_tokens,
            temperature: wire.temperature,
            top_p: wire.top_p,
            stop: wire.stop,
        },
        stream,
        deadline,
        call,
        caller: Caller::Anonymous,
        prefill: false,
    };
    match req.validate() {
        Ok(()) => Ok(req),
        Err(err) => Err((req.model, err)),
    }
}

/// The wire embedding request as a validated [`ChatRequest`] carrying it
/// (see [`crate::chat::embed`]); a refusal comes with the model name asked
/// for, for the record.
fn embed_request(
    wire: proto::EmbedRequest,
    deadline: Option<Instant>,
    call: CallContext,
    caller: Caller,
) -> Result<ChatRequest, (String, GatewayError)> {
    let model = wire.model;
    let input = match (wire.input.is_empty(), wire.tokens.is_empty()) {
        (false, false) => {
            let err = GatewayError::invalid_argument(
                "tokens",
                "is set with input; send texts in input or token ids in tokens, not both",
            );
            return Err((model, err));
        }
        (true, false) => EmbedInput::Tokens(wire.tokens.into_iter().map(|t| t.ids).collect()),
        _ => EmbedInput::Texts(wire.input),
    };
    let embed = EmbedRequest {
        input,
        dimensions: wire.dimensions,
    };
    if let Err(err) = embed.validate() {
        return Err((model, err));
    }
    let req = ChatRequest::embedding(model, embed, deadline, call, caller);
    match req.validate_model() {
        Ok(()) => Ok(req),
        Err(err) => Err((req.model, err)),
    }
}

/// Tools, tool choice, response format and seed as the vocabulary's; JSON
/// schemas travel as JSON text and are refused, naming the field, when
/// they are not JSON.
fn extras(
    tools: Vec<proto::Tool>,
    tool_choice: Option<proto::ToolChoice>,
    response_format: Option<proto::ResponseFormat>,
    seed: Option<i64>,
) -> Result<RequestExtras, GatewayError> {
    let schema = |field: &str, text: String| -> Result<Option<serde_json::Value>, GatewayError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| GatewayError::invalid_argument(field, &format!("is not JSON: {err}")))
    };
    let tools = try_collect_exact(tools.into_iter().enumerate().map(|(i, tool)| {
        if tool.name.is_empty() {
            return Err(GatewayError::invalid_argument(
                &format!("tools[{i}].name"),
                "is empty; every tool needs a name",
            ));
        }
        Ok(ToolSpec {
            parameters: schema(&format!("tools[{i}].parameters_json"), tool.parameters_json)?,
            name: tool.name,
            description: Some(tool.description).filter(|d| !d.is_empty()),
            strict: None,
        })
    }))?;
    let tool_choice = match tool_choice {
        None => None,
        Some(choice) => Some(match (choice.mode.as_str(), choice.function) {
            ("" | "auto", _) => ToolChoice::Auto,
            ("none", _) => ToolChoice::None,
            ("required", _) => ToolChoice::Required,
            ("function", name) if !name.is_empty() => ToolChoice::Function(name),
            ("function", _) => {
                return Err(GatewayError::invalid_argument(
                    "tool_choice.function",
                    "is empty; name the tool the model must call",
                ));
            }
            (mode, _) => {
                return Err(GatewayError::invalid_argument(
                    "tool_choice.mode",
                    &format!("'{mode}' is not a mode; use auto, none, required or function"),
                ));
            }
        }),
    };
    let response_format = match response_format {
        None => None,
        Some(format) => Some(match format.r#type.as_str() {
            "" | "text" => ResponseFormat::Text,
            "json_object" => ResponseFormat::JsonObject,
            "json_schema" => ResponseFormat::JsonSchema(JsonSchema {
                schema: schema("response_format.schema_json", format.schema_json)?,
                name: format.name,
                description: None,
                strict: format.strict,
            }),
            other => {
                return Err(GatewayError::invalid_argument(
                    "response_format.type",
                    &format!("'{other}' is not a format; use text, json_object or json_schema"),
                ));
            }
        }),
    };
    Ok(RequestExtras {
        tools,
        tool_choice,
        response_format,
        seed,
        passthrough: Default::default(),
        embed: None,
    })
}

/// The outcome as the caller gets it, with the request id in the response
/// metadata (headers, or trailers of an error) either way.
fn respond<T>(
    request_id: &RequestId,
    outcome: Result<T, GatewayError>,
) -> Result<Response<T>, Status> {
    let value = tonic::metadata::MetadataValue::try_from(request_id.as_str()).ok();
    match outcome {
        Ok(message) => {
            let mut response = Response::new(message);
            if let Some(value) = value {
                response.metadata_mut().insert(REQUEST_ID, value);
            }
            Ok(response)
        }
        Err(err) => {
            let mut status = Status::from(err);
            if let Some(value) = value {
                status.metadata_mut().insert(REQUEST_ID, value);
            }
            Err(status)
        }
    }
}

/// Who the call is: as its door admitted it, else what its
/// `authorization` metadata says.
fn admitted<T>(request: &Request<T>) -> Caller {
    match request.extensions().get::<Admitted>() {
        Some(Admitted(caller)) => caller.clone(),
        None => caller(request.metadata()),
    }
}

/// Who the call says it is, from its `authorization` metadata.
fn caller(metadata: &tonic::metadata::MetadataMap) -> Caller {
    Caller::from_authorization(metadata.get("authorization").map(|v| v.as_bytes()))
}

fn usage(completion: &Completion) -> Option<proto::Usage> {
    completion.usage.map(|u| proto::Usage {
        input_tokens: i32::try_from(u.input_tokens).unwrap_or(i32::MAX),
        output_tokens: i32::try_from(u.output_tokens).unwrap_or(i32::MAX),
    })
}

fn finish_reason(completion: &Completion) -> String {
    completion
        .finish_reason
        .map(|r| r.as_str().to_string())
        .unwrap_or_default()
}

/// The caller's time budget from the `grpc-timeout` header: up to eight
/// digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). A malformed header is
/// ignored, as gRPC servers do, rather than failing the call.
pub(crate) fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::testing::{done, token};

    #[test]
    fn the_first_token_goes_out_alone_and_the_rest_together() {
        let events = vec![token("Par"), token("is"), done(2, 2)];
        let mut chunks = TokenChunks {
            inner: Some(Box::pin(futures_util::stream::iter(events))),
            first_write: FirstWrite::default(),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = || match Pin::new(&mut chunks).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(chunk))) => Some((chunk.token, chunk.done)),
            Poll::Ready(other) => panic!("a chunk, not {other:?}"),
            Poll::Pending => None,
        };
        assert_eq!(poll(), Some(("Par".to_string(), false)));
        assert_eq!(poll(), None, "a pause, so tonic writes the first alone");
        assert_eq!(poll(), Some(("is".to_string(), false)), "then no pauses");
        assert_eq!(poll(), Some((String::new(), true)));
    }
}
