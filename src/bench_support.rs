//! Entry points for `benches/token_path.rs`, the criterion micro-benchmarks
//! of the per-token path (issue 14). Not API: hidden from the docs, and
//! free to change with the code it measures.
//!
//! The benchmarks need to reach code that is rightly crate-private (the
//! stack, the router, the adapters' stream reading). Rather than widen
//! those modules, this one module opens a narrow door onto them, and every
//! piece here builds what the gateway itself builds (the way `server`
//! does), so a benchmark measures the real code and not a copy of it. The
//! benchmark depends on this module, `proto` and nothing else, so the rest
//! of the crate can keep narrowing its public API.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use tower::util::BoxCloneSyncService;

use crate::backend::bench::{OpenAiReader as Reader, OpenAiWire as Wire};
use crate::balance::Connectors;
use crate::chat::{
    CallContext, Caller, ChatEvent, ChatMessage, ChatRequest, ChatStream, Completion, FinishReason,
    RequestId, Role, SamplingParams, Usage,
};
use crate::config::{Config, UpstreamKind};
use crate::frontend::body::{BodyLimits, BodyRules, BufferBudget};
use crate::frontend::door::Door;
use crate::frontend::edge::Edge;
use crate::frontend::grpc::GrpcFrontend;
use crate::proto::llm_service_server::LlmServiceServer;
use crate::route::{Router, RoutingTable};
use crate::sim::SimRun;
use crate::stack::guard::Guard;

/// The words the simulator cycles through, so a benchmark's canned
/// answers carry the same tokens as the sim's.
pub const SIM_WORDS: [&str; 16] = crate::sim::WORDS;

/// The SSE decoder every SSE upstream's answer goes through (a wrapper,
/// not a re-export, so the decoder's module can stay crate-private).
#[derive(Default)]
pub struct SseDecoder(crate::backend::sse::SseDecoder);

impl SseDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as they came off the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }

    /// The `data` of the next whole event; `Ok(None)` until more bytes
    /// arrive.
    pub fn next_data(&mut self) -> Result<Option<String>, String> {
        self.0
            .next_event()
            .map(|event| event.map(|event| event.data))
            .map_err(|err| err.to_string())
    }
}

/// What a reader hands out, as the gateway's events say it (the text is
/// moved, not copied).
#[derive(Debug)]
pub enum Event {
    /// A piece of text.
    Token(String),
    /// A piece of a tool call.
    ToolCall,
    /// The answer is whole.
    Done,
}

/// A `kind: openai` upstream's adapter with the default settings, whose
/// [`OpenAiReader`]s read streamed answers as a call does.
pub struct OpenAiWire(Wire);

/// How an OpenAI-compatible upstream's streamed answer is read: SSE
/// framing, then each event as a `chat.completion.chunk`, into the
/// gateway's events. The same adapter code a real call runs,
/// minus the connection (a streamed body only hyper can make).
pub struct OpenAiReader(Reader);

impl OpenAiWire {
    /// The adapter (build it once: it builds an HTTP client, as a gateway
    /// does once per upstream).
    pub fn new() -> Result<Self, String> {
        let config = parse(
            "upstreams:\n  vllm:\n    kind: openai\n    endpoints: [http://127.0.0.1:8000]\n\
             routes:\n  - model: m\n    pools:\n      - upstream: vllm\n",
        )?;
        let upstream = config
            .upstreams
            .get("vllm")
            .filter(|up| up.kind == UpstreamKind::OpenAi)
            .ok_or("the reader's routing file has no openai upstream")?;
        Ok(OpenAiWire(Wire::new(upstream)))
    }

    /// A reader for one answer, as each call makes.
    pub fn reader(&self) -> OpenAiReader {
        OpenAiReader(self.0.reader())
    }
}

impl OpenAiReader {
    /// Appends bytes as they came off the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }

    /// The next event; `Ok(None)` until more bytes arrive; `Err` with the
    /// adapter's complaint when the stream is broken.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        Ok(self.0.next_event()?.map(|event| match event {
            ChatEvent::Token(text) => Event::Token(text),
            ChatEvent::ToolCall(_) => Event::ToolCall,
            ChatEvent::Done(_) => Event::Done,
        }))
    }
}

/// One gateway's call path for a routing file, without sockets: the
/// stack, the router, the balancers and the backends `server` would
/// build, and the fronts over them as services to call in process.
#[derive(Clone)]
pub struct Gateway {
    /// What every front stands on: the stack, the table, the keys.
    edge: Edge,
    /// The HTTP port's router, built once as the server builds it.
    http: axum::Router,
    /// The gRPC service behind its door, built once as the server does.
    grpc: Door<LlmServiceServer<GrpcFrontend>>,
}

impl Gateway {
    /// The gateway for the routing file `yaml`. Needs a Tokio runtime:
    /// upstreams start discovering their endpoints as they are built.
    pub fn new(yaml: &str) -> Result<Self, String> {
        Self::build(yaml, None)
    }

    /// The same fronts over a stub in place of the stack, answering every
    /// call at once with `tokens` tokens (the simulator's words) and a
    /// `stop`: what the fronts cost apart from everything behind them.
    pub fn canned(yaml: &str, tokens: u32) -> Result<Self, String> {
        Self::build(yaml, Some(tokens))
    }

    fn build(yaml: &str, canned: Option<u32>) -> Result<Self, String> {
        let config = parse(yaml)?;
        let table = Arc::new(
            RoutingTable::build(&config, &Connectors::default()).map_err(|e| e.to_string())?,
        );
        let guard = Arc::new(ArcSwap::from_pointee(
            Guard::build(&config, None).serving(&table),
        ));
        let table = Arc::new(ArcSwap::new(table));
        let stack = match canned {
            None => crate::stack::build(Router::new(table.clone()), guard.clone(), None),
            Some(tokens) => BoxCloneSyncService::new(tower::service_fn(move |req: ChatRequest| {
                futures_util::future::ready(Ok::<_, crate::error::GatewayError>(canned_answer(
                    tokens, &req.model,
                )))
            })),
        };
        let edge = Edge::new(stack, table, guard);
        let bodies = BodyRules {
            limits: BodyLimits {
                max_message: config.limits.max_request_size,
                idle: config.limits.connection.request_idle_timeout,
            },
            budget: BufferBudget::new(config.limits.max_buffered_bytes),
        };
        let http = crate::frontend::http::router(edge.clone(), bodies.clone(), None);
        let llm = LlmServiceServer::new(GrpcFrontend::new(edge.clone()))
            .max_decoding_message_size(config.limits.max_request_size);
        let grpc = Door::keyed(llm, bodies, edge.clone());
        Ok(Gateway { edge, http, grpc })
    }

    /// One streamed call of `model` through the stack, as a front makes
    /// it, read to its end: the number of tokens, or the call's error.
    pub async fn stream(&self, model: &str, prompt: &str) -> Result<usize, String> {
        let req = ChatRequest {
            model: model.to_string(),
            messages: vec![ChatMessage::text(Role::User, prompt)],
            params: SamplingParams::default(),
            extras: Default::default(),
            stream: true,
            deadline: None,
            call: CallContext::new(RequestId::generate()),
            caller: Caller::default(),
            prefill: false,
        };
        let mut events = self.edge.call(req).await.map_err(|e| e.to_string())?;
        let mut tokens = 0;
        while let Some(event) = events.next().await {
            match event.map_err(|e| e.to_string())? {
                ChatEvent::Token(_) => tokens += 1,
                ChatEvent::ToolCall(_) => {}
                ChatEvent::Done(_) => return Ok(tokens),
            }
        }
        Err("the stream ended without its final event".into())
    }

    /// The HTTP port's router (OpenAI's API and the Messages API), as the
    /// listener serves it, less CORS.
    pub fn http(&self) -> axum::Router {
        self.http.clone()
    }

    /// `llm.v1.LLMService` behind its door, as the gRPC port serves it,
    /// less grpc-web and the routing among the port's other services.
    pub fn grpc(
        &self,
    ) -> impl tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        self.grpc.clone()
    }
}

/// Installs the metrics recorder, as a gateway serving `/metrics` does
/// (the default): until then every metric is a no-op, so a benchmark
/// without it misses what recording costs per call and per token.
pub fn install_metrics() -> Result<(), String> {
    crate::telemetry::metrics::install()
        .map(drop)
        .map_err(|e| e.to_string())
}

fn parse(yaml: &str) -> Result<Config, String> {
    Config::parse(yaml, "bench.yaml", &|_| None).map_err(|e| e.to_string())
}

/// `tokens` of the simulator's words, then a `stop` with usage.
fn canned_answer(tokens: u32, model: &str) -> ChatStream {
    let done = ChatEvent::Done(Completion {
        finish_reason: Some(FinishReason::Stop),
        usage: Some(Usage {
            input_tokens: 8,
            output_tokens: tokens,
        }),
        model: Arc::from(model),
        logprobs: None,
        embeddings: None,
    });
    let events = (0..tokens)
        .map(|i| Ok(ChatEvent::Token(SimRun::token(i).to_string())))
        .chain(std::iter::once(Ok(done)));
    Box::pin(futures_util::stream::iter(events))
}
