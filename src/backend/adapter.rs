//! The one shape every HTTP adapter has, and the one function that sends a
//! call through any of them.
//!
//! OpenAI, Ollama and Anthropic differ only in the JSON they write and
//! read: the request body, how a streamed item reads ([`Dialect`]) and how
//! a whole answer reads. Everything else (binding to an endpoint, sending,
//! error mapping, driving the streamed body) is written once, here and in
//! `wire`. [`send`] is generic over the adapter, so each wire's streaming
//! path is monomorphised: no `dyn` call and no box per token, only the one
//! box of the call's stream.

use std::sync::Arc;

use futures_util::FutureExt;
use http::Uri;
use serde::Serialize;

use super::dispatch::{Bind, Binding, Dispatch, EndpointCall};
use super::embed::{self, EmbedWire};
use super::wire::{Answered, Dialect, HttpUpstream};
use crate::chat::{ChatRequest, ChatStream, Completion};
use crate::error::{ErrorKind, GatewayError};

/// An upstream's HTTP wire.
pub(crate) trait Adapter: Send + Sync + 'static {
    /// The request body, borrowed from the call wherever it can be.
    type Body<'a>: Serialize
    where
        Self: 'a;
    /// How a streamed answer reads, item by item.
    type Dialect: Dialect;

    /// Where to send, with which headers.
    fn http(&self) -> &HttpUpstream;

    /// The body asking for `req` as `model`; an error (the caller's to fix)
    /// when the request cannot be said on this wire.
    fn body<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> Result<Self::Body<'a>, GatewayError>;

    /// Fresh state for reading one streamed answer.
    fn dialect(&self) -> Self::Dialect;

    /// Reads a whole answer: returns its text and tool calls and fills in
    /// `completion` (finish reason, usage, model) from what it reports.
    fn parse_answer(
        &self,
        bytes: &[u8],
        completion: &mut Completion,
    ) -> Result<Answered, GatewayError>;

    /// The wire's embeddings API; `None` (the default) for a wire without
    /// one, whose embedding calls are refused naming the upstream.
    fn embeddings(&self) -> Option<&dyn EmbedWire> {
        None
    }
}

/// Sends `req` as `model` to `url` through `adapter` and answers with its
/// tokens.
pub(crate) async fn send<A: Adapter>(
    adapter: &A,
    url: &Uri,
    model: Arc<str>,
    req: &ChatRequest,
) -> Result<ChatStream, GatewayError> {
    let body = encode(&adapter.body(&model, req)?)?;
    adapter
        .http()
        .exchange(
            url,
            body,
            req,
            model,
            adapter.dialect(),
            |bytes, completion| adapter.parse_answer(bytes, completion),
        )
        .await
}

/// The body as JSON bytes.
fn encode(body: &impl Serialize) -> Result<Vec<u8>, GatewayError> {
    serde_json::to_vec(body).map_err(|err| {
        GatewayError::new(ErrorKind::Internal, format!("encoding the request: {err}"))
    })
}

// === impl Bind for Adapter ===

impl<A: Adapter> Bind for A {
    fn bind(self: Arc<Self>, base: &Uri) -> Option<Binding> {
        let target = Arc::new(self.http().target(base)?);
        let embed_target: Option<Arc<Uri>> = self
            .embeddings()
            .and_then(|wire| self.http().target_at(base, wire.path()))
            .map(Arc::new);
        let label = Arc::from(base.to_string().trim_end_matches('/'));
        let dispatch: Dispatch = Arc::new(move |call: EndpointCall| {
            let adapter = self.clone();
            if let Some(what) = call.req.extras.embed.clone() {
                let url = embed_target.clone();
                return async move {
                    embed::send(&*adapter, url.as_deref(), call.model, &call.req, &what).await
                }
                .boxed();
            }
            let target = target.clone();
            async move { send(&*adapter, &target, call.model, &call.req).await }.boxed()
        });
        Some(Binding { label, dispatch })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::backend::anthropic::AnthropicBackend;
    use crate::backend::http;
    use crate::backend::ollama::OllamaBackend;
    use crate::backend::openai::OpenAiBackend;
    use crate::chat::{ChatMessage, Role, SamplingParams};
    use crate::config::{Config, UpstreamConfig};

    /// The upstream `up` of a routing file that defines it with `lines`.
    fn upstream(lines: &[&str]) -> UpstreamConfig {
        let mut text = String::from("upstreams:\n  up:\n");
        for line in lines {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("routes:\n  - model: m\n    pools:\n      - upstream: up\n");
        let config = match Config::parse(&text, "test.yaml", &|_| None) {
            Ok(config) => config,
            Err(err) => panic!("the test's routing file is invalid:\n{err}"),
        };
        config.upstreams["up"].clone()
    }

    fn message(role: Role, content: &str) -> ChatMessage {
        ChatMessage::text(role, content)
    }

    fn request(messages: Vec<ChatMessage>, max_tokens: Option<u32>, stream: bool) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages,
            params: SamplingParams {
                max_tokens,
                temperature: Some(0.5),
                top_p: None,
                stop: vec!["END".into()],
            },
            extras: Default::default(),
            stream,
            deadline: None,
            call: Default::default(),
            caller: Default::default(),
            prefill: false,
        }
    }

    /// The JSON `adapter` sends for `req` as model `served`.
    fn body<A: Adapter>(adapter: &A, req: &ChatRequest) -> Result<Value, GatewayError> {
        let bytes = encode(&adapter.body("served", req)?)?;
        Ok(serde_json::from_slice(&bytes).expect("the body is JSON"))
    }

    #[test]
    fn openai_asks_for_usage_on_a_stream_and_sends_the_configured_token_field() {
        let req = request(vec![message(Role::User, "hi")], Some(7), true);
        let vllm = OpenAiBackend::new(
            &upstream(&["kind: openai", "endpoints: [http://127.0.0.1:8000]"]),
            http::client(),
        );
        assert_eq!(
            body(&vllm, &req).expect("body"),
            json!({
                "model": "served",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 7,
                "temperature": 0.5,
                "stop": ["END"],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        let cloud = OpenAiBackend::new(
            &upstream(&[
                "kind: openai",
                "endpoints: [https://api.openai.com/v1]",
                "max_tokens_field: max_completion_tokens",
            ]),
            http::client(),
        );
        let unary = request(vec![message(Role::User, "hi")], Some(7), false);
        let sent = body(&cloud, &unary).expect("body");
        assert_eq!(sent["max_completion_tokens"], 7);
        assert!(sent.get("max_tokens").is_none(), "{sent}");
        assert!(sent.get("stream_options").is_none(), "{sent}");
    }

    #[test]
    fn ollama_puts_sampling_in_options_and_always_says_whether_to_stream() {
        let ollama = OllamaBackend::new(
            &upstream(&[
                "kind: ollama",
                "endpoints: [http://127.0.0.1:11434]",
                "keep_alive: 30m",
            ]),
            http::client(),
        );
        let req = request(vec![message(Role::User, "hi")], Some(7), false);
        assert_eq!(
            body(&ollama, &req).expect("body"),
            json!({
                "model": "served",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": false,
                "options": {"num_predict": 7, "temperature": 0.5, "stop": ["END"]},
                "keep_alive": "1800s",
            })
        );
    }

    #[test]
    fn anthropic_lifts_leading_system_messages_and_fills_in_max_tokens() {
        let claude = AnthropicBackend::new(
            &upstream(&[
                "kind: anthropic",
                "endpoints: [https://api.anthropic.com]",
                "default_max_tokens: 512",
            ]),
            http::client(),
        );
        let req = request(
            vec![
                message(Role::System, "be brief"),
                message(Role::System, "be kind"),
                message(Role::User, "hi"),
            ],
            None,
            true,
        );
        assert_eq!(
            body(&claude, &req).expect("body"),
            json!({
                "model": "served",
                "system": "be brief\n\nbe kind",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 512,
                "temperature": 0.5,
                "stop_sequences": ["END"],
                "stream": true,
            })
        );
    }

    #[test]
    fn anthropic_refuses_a_system_message_after_the_conversation_started() {
        let claude = AnthropicBackend::new(
            &upstream(&["kind: anthropic", "endpoints: [https://api.anthropic.com]"]),
            http::client(),
        );
        let req = request(
            vec![message(Role::User, "hi"), message(Role::System, "late")],
            None,
            false,
        );
        let err = body(&claude, &req).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("messages[1].role"), "{err:?}");
    }

    #[test]
    fn an_http_adapter_binds_to_each_base_url_under_its_own_label() {
        let vllm = Arc::new(OpenAiBackend::new(
            &upstream(&["kind: openai", "endpoints: [http://127.0.0.1:8000]"]),
            http::client(),
        ));
        let bound = vllm
            .bind(&Uri::from_static("http://10.0.0.5:8000/"))
            .expect("bound");
        assert_eq!(&*bound.label, "http://10.0.0.5:8000");
    }
}
