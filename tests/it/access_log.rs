//! The access log as an operator reads it: one line per call with the
//! request id that the caller, the upstream and the log all share, and no
//! secret anywhere in what the gateway logs.
//!
//! Each test captures what the gateway logs with the gateway's own
//! subscriber (`telemetry::logging::subscriber`) writing into a buffer. The
//! subscriber is the default for the test's thread, and `#[tokio::test]`
//! runs the gateway's tasks on that thread, so a test reads only its own
//! gateway's lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use llmgate::internals::ACCESS_LOG_TARGET;
use llmgate::logging::{LogFormat, subscriber};
use serde_json::Value;
use tonic::Code;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::support::*;

/// The key the upstream must receive and no log line may show.
const SECRET: &str = "sk-live-do-not-log-5c1e9a";

/// Everything written to it, kept for the test to read.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    /// Installs a `format` subscriber at `trace` for everything, writing
    /// here, as this thread's default until the guard drops.
    fn install(&self, format: LogFormat) -> tracing::subscriber::DefaultGuard {
        // tracing caches whether a callsite is enabled. While only one
        // dispatcher exists, that cache is computed from whichever thread
        // first reaches the callsite, so a test without a subscriber
        // running beside this one could switch the access line off for
        // good. A second dispatcher, kept for the whole run, makes tracing
        // ask every live dispatcher instead.
        static BYSTANDER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        BYSTANDER
            .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        tracing::subscriber::set_default(subscriber(
            format,
            EnvFilter::new("trace"),
            false,
            self.clone(),
        ))
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The upstream: a three-token stream, or a whole answer, with usage.
fn answer(req: &Received) -> Vec<Step> {
    if req.body["stream"].as_bool().unwrap_or(false) {
        let mut body = sse_token("a");
        body.push_str(&sse_token("b"));
        body.push_str(&sse_finish("stop", 7, 2));
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(body.into_bytes()),
            Step::End,
        ]
    } else {
        json_reply(
            200,
            &serde_json::json!({
                "choices": [{"message": {"content": "ab"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2},
            }),
        )
    }
}

/// A request carrying `x-request-id: id`.
fn with_id(model: &str, id: &str) -> tonic::Request<llmgate::proto::CompleteRequest> {
    let mut req = tonic::Request::new(request(model, "hello"));
    req.metadata_mut()
        .insert("x-request-id", id.parse().expect("ascii"));
    req
}

fn returned_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id in the response")
        .to_string()
}

/// The JSON access lines in `text`.
fn access_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == ACCESS_LOG_TARGET)
        .collect()
}

#[tokio::test]
async fn the_access_log_line_carries_the_request_id_and_no_secret() {
    let capture = Capture::default();
    let _logging = capture.install(LogFormat::Json);
    let upstream = FakeUpstream::start(answer).await;
    let yaml = one_upstream(&upstream.url(), "    api_key_env: ACCESS_TEST_KEY\n");
    let env = |name: &str| (name == "ACCESS_TEST_KEY").then(|| SECRET.to_string());
    let gateway = Gateway::start_with_env(&yaml, &env).await;
    let mut client = gateway.client().await;

    // The caller's id: returned at once in the response headers, sent on.
    let response = client
        .complete_stream(with_id("m", "caller-stream-1"))
        .await
        .expect("stream");
    assert_eq!(returned_id(response.metadata()), "caller-stream-1");
    read_to_end(response.into_inner()).await;
    // No id from the caller: a new one, returned.
    let response = client.complete(request("m", "hello")).await.expect("unary");
    let generated = returned_id(response.metadata());
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    // A failed call returns its id too, with the status.
    let status = client
        .complete(with_id("not-routed", "caller-failed-2"))
        .await
        .expect_err("not routed");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(returned_id(status.metadata()), "caller-failed-2");

    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].header("x-request-id"), Some("caller-stream-1"));
    assert_eq!(received[1].header("x-request-id"), Some(generated.as_str()));
    let bearer = format!("Bearer {SECRET}");
    assert_eq!(
        received[0].header("authorization"),
        Some(bearer.as_str()),
        "the key is really in use"
    );

    drop(client);
    gateway.shutdown().await.expect("clean exit");
    let text = capture.text();
    assert!(
        !text.contains(SECRET),
        "the key leaked into the logs:\n{text}"
    );

    let lines = access_lines(&text);
    assert_eq!(lines.len(), 3, "one line per call:\n{text}");
    let line = |id: &str| {
        lines
            .iter()
            .find(|line| line["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{text}"))
    };
    let streamed = line("caller-stream-1");
    assert_eq!(streamed["message"], "call");
    assert_eq!(streamed["model"], "m");
    assert_eq!(streamed["route"], "m");
    assert_eq!(streamed["upstream"], "up");
    assert_eq!(streamed["endpoint"], upstream.url());
    assert_eq!(streamed["code"], "OK");
    assert_eq!(streamed["stream"], true);
    assert_eq!(streamed["tokens_in"], 7);
    assert_eq!(streamed["tokens_out"], 2);
    assert_eq!(streamed["chunks"], 2);
    assert!(streamed["ttft_ms"].as_f64().is_some(), "{streamed}");
    let duration = streamed["duration_ms"].as_f64().expect("duration_ms");
    assert!(duration >= streamed["ttft_ms"].as_f64().unwrap_or(f64::MAX));

    let unary = line(&generated);
    assert_eq!(unary["code"], "OK");
    assert_eq!(unary["stream"], false);
    assert_eq!(
        unary.get("ttft_ms"),
        None,
        "a unary call has no first token"
    );

    let failed = line("caller-failed-2");
    assert_eq!(failed["code"], "NOT_FOUND");
    assert_eq!(failed["model"], "not-routed", "the log says what was asked");
    assert_eq!(failed["route"], "unknown");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("not routed")),
        "{failed}"
    );
}

#[tokio::test]
async fn an_unsafe_request_id_is_replaced_and_the_new_one_returned() {
    let upstream = FakeUpstream::start(answer).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    for unsafe_id in ["has spaces in it", "quote\"and=more", &"x".repeat(200)] {
        let response = client
            .complete(with_id("m", unsafe_id))
            .await
            .expect("the call goes on");
        let id = returned_id(response.metadata());
        assert_ne!(id, unsafe_id);
        assert_eq!(id.len(), 36, "a new UUID: {id}");
        let received = upstream.received();
        let sent = received.last().and_then(|r| r.header("x-request-id"));
        assert_eq!(sent, Some(id.as_str()), "the upstream gets the new id");
    }
}

#[tokio::test]
async fn text_access_lines_read_as_key_value_pairs() {
    let capture = Capture::default();
    let _logging = capture.install(LogFormat::Text);
    let gateway = Gateway::start(
        "upstreams:\n  sim: { kind: sim, sim: { ttft: 1ms, tokens_per_second: 0, output_tokens: 3 } }\nroutes:\n  - model: text-log\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    gateway
        .client()
        .await
        .complete(with_id("text-log", "text-id-9"))
        .await
        .expect("unary");
    gateway.shutdown().await.expect("clean exit");
    let text = capture.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(ACCESS_LOG_TARGET))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    for field in [
        "request_id=text-id-9",
        "model=\"text-log\"",
        "upstream=\"sim\"",
        "endpoint=\"in-process\"",
        "code=\"OK\"",
        "tokens_out=3",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
}

#[tokio::test]
async fn calls_refused_at_either_front_leave_the_same_access_line() {
    let capture = Capture::default();
    let _logging = capture.install(LogFormat::Json);
    let upstream = FakeUpstream::start(answer).await;
    let yaml = one_upstream(&upstream.url(), "").replace(
        "upstreams:",
        "auth:\n  keys:\n    - name: app\n      env: APP_KEY\n      models: [\"*\"]\nupstreams:",
    );
    let env = |name: &str| (name == "APP_KEY").then(|| SECRET.to_string());
    let gateway = Gateway::start_with_env(&yaml, &env).await;

    let status = gateway
        .client()
        .await
        .complete(with_id("m", "grpc-no-key"))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let head = |id: &str, key: &str, body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nx-request-id: {id}\r\n\
             {key}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, _) = raw_http(gateway.http_addr, head("http-no-key", "", "{}").as_bytes())
        .await
        .expect("refused");
    assert_eq!(status, 401);
    let with_key = format!("authorization: Bearer {SECRET}\r\n");
    let (status, _) = raw_http(
        gateway.http_addr,
        head("http-garbage", &with_key, "not json").as_bytes(),
    )
    .await
    .expect("refused");
    assert_eq!(status, 400);
    assert_eq!(upstream.count(), 0, "nothing refused reached the upstream");

    gateway.shutdown().await.expect("clean exit");
    let text = capture.text();
    let lines = access_lines(&text);
    for (id, code) in [
        ("grpc-no-key", "UNAUTHENTICATED"),
        ("http-no-key", "UNAUTHENTICATED"),
        ("http-garbage", "INVALID_ARGUMENT"),
    ] {
        let line = lines
            .iter()
            .find(|line| line["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{text}"));
        assert_eq!(line["code"], code, "{line}");
        if id.ends_with("no-key") {
            // Refused at the headers: the body, and the model in it, was
            // never read (see `frontend::door`).
            assert_eq!(line["model"], "", "{line}");
        }
    }
    assert!(!text.contains(SECRET), "the key leaked into the logs");
}

#[tokio::test]
async fn a_stream_continued_elsewhere_is_marked_in_its_access_line() {
    let capture = Capture::default();
    let _logging = capture.install(LogFormat::Json);
    // The first answer breaks after a token; the continuation (asked with
    // the delivered text as a prefill) finishes it.
    let upstream = FakeUpstream::start(|req| {
        if req.body.get("continue_final_message").is_some() {
            return answer(req);
        }
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(sse_token("a").into_bytes()),
            Step::Cut,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let chunks = gateway
        .stream(request("m", "hello"))
        .await
        .expect("continued");
    assert_eq!(
        text_of(&chunks),
        "aab",
        "the scripted continuation repeats 'a'"
    );
    drop(gateway);
    let lines = access_lines(&capture.text());
    let line = lines.last().expect("an access line");
    assert_eq!(line["rescued"], "prefill", "{line}");
    assert_eq!(line["code"], "OK", "{line}");
    assert_eq!(
        line["tokens_out"], 3,
        "the token delivered before the cut counts: {line}"
    );
}

#[tokio::test]
async fn embedding_calls_leave_access_lines_like_chat_refusals_included() {
    let capture = Capture::default();
    let _logging = capture.install(LogFormat::Json);
    let yaml = "auth:\n  keys:\n    - name: app\n      env: APP_KEY\n      models: [\"*\"]\n\
                upstreams:\n  sim: { kind: sim }\nroutes:\n  - model: embed-log\n    pools: [{ upstream: sim }]\n";
    let env = |name: &str| (name == "APP_KEY").then(|| SECRET.to_string());
    let gateway = Gateway::start_with_env(yaml, &env).await;
    let mut client = gateway.client().await;
    let mut embed = keyed(
        llmgate::proto::EmbedRequest {
            model: "embed-log".into(),
            input: vec!["three words here".into()],
            ..Default::default()
        },
        SECRET,
    );
    embed
        .metadata_mut()
        .insert("x-request-id", "embed-id-1".parse().expect("ascii"));
    client.embed(embed).await.expect("embedded");
    let mut keyless = tonic::Request::new(llmgate::proto::EmbedRequest::default());
    keyless
        .metadata_mut()
        .insert("x-request-id", "embed-no-key".parse().expect("ascii"));
    let status = client.embed(keyless).await.expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    drop(client);
    gateway.shutdown().await.expect("clean exit");
    let text = capture.text();
    assert!(!text.contains(SECRET), "the key leaked:\n{text}");
    let lines = access_lines(&text);
    let line = |id: &str| {
        lines
            .iter()
            .find(|line| line["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{text}"))
    };
    let served = line("embed-id-1");
    assert_eq!(served["model"], "embed-log");
    assert_eq!(served["upstream"], "sim");
    assert_eq!(served["code"], "OK");
    assert_eq!(served["tokens_in"], 3);
    assert_eq!(served["tokens_out"], 0);
    assert_eq!(line("embed-no-key")["code"], "UNAUTHENTICATED");
}
