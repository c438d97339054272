//! Criterion micro-benchmarks of the per-token path (issue 14): what the
//! gateway does for every token, measured apart from sockets, so a change
//! to one step shows up as a change in one line.
//!
//! Every case handles one 50-token answer and reports time per token
//! (`Throughput::Elements(50)`); the answer's fixed parts (the role chunk,
//! the finish and usage chunks, `[DONE]`, the call itself) are spread over
//! its 50 tokens. Where the per-call part matters, a 1-token answer runs
//! beside the 50-token one: (t50 − t1) / 49 is the cost of one more token.
//!
//! * **sse_decode**: a vLLM chat-completions stream as vLLM writes it
//!   (role chunk, 50 content chunks, finish chunk, usage chunk, `[DONE]`)
//!   through `SseDecoder`, fed whole and in 7-byte reads; then the same
//!   through the OpenAI adapter's chunk parsing into the gateway's events.
//! * **chunk_encode**: what the fronts write per token. `grpc_token_chunk`
//!   is the prost encoding of each `TokenChunk` behind the 5-byte gRPC frame
//!   header, as tonic's encoder writes it; the `*_front` cases call each
//!   front in process (the gRPC service behind its door, the HTTP router
//!   for `/v1/chat/completions` and `/v1/messages`) over a stub stack that
//!   answers at once, and read the whole streamed body: request parsing,
//!   the front's chunk encoder and the body machinery, nothing behind.
//! * **stack**: one streamed call of 50 tokens through the real stack
//!   (observe → auth → limits → in flight → rate → shared → deadline →
//!   router → balancer → endpoint → backend) to the in-process simulator
//!   (`kind: sim`, no time to first token, no pacing: no timer of the
//!   simulator's runs), first without a metrics recorder, then with the
//!   one a gateway serving `/metrics` installs; then the same call through
//!   each front, so front + stack is measured in one piece.
//!
//! Everything runs on one `current_thread` runtime, as one core would, and
//! what is measured is that thread's CPU time, not wall time: the machine
//! is shared with builds, which stretch wall time but not the CPU a case
//! spends (they still cost it caches). The `time` line is per answer (per
//! call), the `thrpt` line the same per token.
//!
//! ```text
//! cargo bench --bench token_path              # about a minute once built
//! cargo bench --bench token_path -- stack     # one group
//! cargo bench --bench token_allocs            # allocations per token
//! ```
//!
//! `token_allocs` runs these same cases (this file is its module) under a
//! counting allocator.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt;
use llmgate::bench_support::{Event, Gateway, OpenAiWire, SseDecoder, install_metrics};
use llmgate::proto;
use prost::Message as _;
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// Tokens in every answer.
pub(crate) const TOKENS: u32 = 50;

/// The simulator's words, as the canned stack and the sim answer with.
pub(crate) const WORDS: [&str; 16] = llmgate::bench_support::SIM_WORDS;

/// The routing file of every gateway here: model `bench` to the
/// in-process simulator answering 50 tokens at once.
pub(crate) const ROUTING: &str = "\
upstreams:
  sim:
    kind: sim
    sim: { ttft: 0ms, tokens_per_second: 0, output_tokens: 50 }
routes:
  - model: bench
    pools:
      - upstream: sim
";

pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn per_token<'a>(c: &'a mut Criterion<ThreadCpu>, name: &str) -> BenchmarkGroup<'a, ThreadCpu> {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Elements(u64::from(TOKENS)))
        .warm_up_time(Duration::from_millis(500))
        // Of CPU time: on a busy machine a case takes longer than this.
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    group
}

// === ThreadCpu ===

/// CPU time of the measuring thread, which runs every case (and its
/// `current_thread` runtime): what the gateway spends, whatever else the
/// machine is doing.
pub(crate) struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }

    fn end(&self, start: ThreadTime) -> Duration {
        start.elapsed()
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Times as criterion prints them, and throughput as CPU time per token
/// rather than tokens per second.
struct CpuFormatter;

impl CpuFormatter {
    /// The unit for `ns`, and the factor into it.
    fn unit(ns: f64, units: [&'static str; 4]) -> (f64, &'static str) {
        if ns < 1e3 {
            (1.0, units[0])
        } else if ns < 1e6 {
            (1e-3, units[1])
        } else if ns < 1e9 {
            (1e-6, units[2])
        } else {
            (1e-9, units[3])
        }
    }
}

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = Self::unit(typical, ["ns", "µs", "ms", "s"]);
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per = match *throughput {
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => n,
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
            Throughput::Bits(n) => n,
        }
        .max(1) as f64;
        let (factor, unit) = Self::unit(
            typical / per,
            ["ns/token", "µs/token", "ms/token", "s/token"],
        );
        values.iter_mut().for_each(|v| *v = *v / per * factor);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

// === sse_decode ===

/// A 50-token answer as vLLM streams it with `stream_options.include_usage`.
pub(crate) fn vllm_stream() -> Vec<u8> {
    let id = "chatcmpl-9b1f0c1e2d3a4b5c8d7e6f5a4b3c2d1e";
    let model = "meta-llama/Llama-3.1-8B-Instruct";
    let created = 1_764_633_600;
    let head = format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"{model}","#
    );
    let mut out = String::new();
    out.push_str(&format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    ));
    for i in 0..TOKENS as usize {
        let token = serde_json::to_string(WORDS[i % WORDS.len()]).expect("a string");
        out.push_str(&format!(
            "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{token}}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str(&format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}}]}}\n\n"
    ));
    out.push_str(&format!(
        "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"total_tokens\":62,\"completion_tokens\":50}}}}\n\n"
    ));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// Events out of `stream` fed in `pieces`.
pub(crate) fn decode(stream: &[u8], piece: usize) -> usize {
    let mut decoder = SseDecoder::new();
    let mut events = 0;
    for bytes in stream.chunks(piece) {
        decoder.push(bytes);
        while let Some(data) = decoder.next_data().expect("valid SSE") {
            events += std::hint::black_box(data).len().min(1);
        }
    }
    events
}

/// Tokens out of `stream` fed in `pieces` through the OpenAI adapter;
/// panics unless the answer ends whole.
pub(crate) fn read_openai(wire: &OpenAiWire, stream: &[u8], piece: usize) -> usize {
    let mut reader = wire.reader();
    let mut tokens = 0;
    for bytes in stream.chunks(piece) {
        reader.push(bytes);
        while let Some(event) = reader.next_event().expect("a whole answer") {
            match std::hint::black_box(event) {
                Event::Token(_) => tokens += 1,
                Event::ToolCall => {}
                Event::Done => return tokens,
            }
        }
    }
    panic!("the answer ended without its final event");
}

fn sse_decode(c: &mut Criterion<ThreadCpu>) {
    let stream = vllm_stream();
    let wire = OpenAiWire::new().expect("an adapter");
    // Role, 50 tokens, finish, usage, [DONE].
    assert_eq!(decode(&stream, stream.len()), TOKENS as usize + 4);
    assert_eq!(decode(&stream, 7), TOKENS as usize + 4);
    assert_eq!(read_openai(&wire, &stream, stream.len()), TOKENS as usize);
    assert_eq!(read_openai(&wire, &stream, 7), TOKENS as usize);
    let mut group = per_token(c, "sse_decode");
    group.bench_function("sse/whole", |b| b.iter(|| decode(&stream, stream.len())));
    group.bench_function("sse/7_byte_reads", |b| b.iter(|| decode(&stream, 7)));
    group.bench_function("openai_events/whole", |b| {
        b.iter(|| read_openai(&wire, &stream, stream.len()))
    });
    group.bench_function("openai_events/7_byte_reads", |b| {
        b.iter(|| read_openai(&wire, &stream, 7))
    });
    group.finish();
}

// === chunk_encode ===

/// The gRPC front's messages for one answer, each encoded as tonic's
/// encoder writes it: the 5-byte header (compression flag, length) and the
/// protobuf, split off one buffer.
pub(crate) fn encode_grpc(tokens: &[String]) -> usize {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut written = 0;
    let mut frame = |chunk: proto::TokenChunk| {
        buf.reserve(5 + chunk.encoded_len());
        buf.put_bytes(0, 5);
        chunk.encode(&mut buf).expect("room reserved");
        let len = u32::try_from(buf.len() - 5).expect("small");
        buf[1..5].copy_from_slice(&len.to_be_bytes());
        let frame: Bytes = buf.split().freeze();
        written += std::hint::black_box(frame).len();
    };
    for token in tokens {
        frame(proto::TokenChunk {
            token: token.clone(),
            ..Default::default()
        });
    }
    frame(proto::TokenChunk {
        done: true,
        usage: Some(proto::Usage {
            input_tokens: 8,
            output_tokens: TOKENS as i32,
        }),
        finish_reason: "stop".into(),
        model: "bench".into(),
        ..Default::default()
    });
    written
}

/// A `CompleteStream` call of model `bench` as a gRPC client sends it.
fn grpc_request() -> http::Request<tonic::body::Body> {
    let message = proto::CompleteRequest {
        model: "bench".into(),
        messages: vec![proto::Message {
            role: "user".into(),
            content: "Why balance per call?".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(u32::try_from(message.encoded_len()).expect("small"));
    message.encode(&mut body).expect("a growable buffer");
    http::Request::builder()
        .method("POST")
        .uri("http://gateway/llm.v1.LLMService/CompleteStream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.freeze(),
        )))
        .expect("a request")
}

/// One streamed gRPC call: the bytes of its messages; panics unless it
/// ends with `grpc-status: 0`.
pub(crate) async fn grpc_call(gateway: &Gateway) -> usize {
    let response = gateway
        .grpc()
        .oneshot(grpc_request())
        .await
        .expect("infallible");
    let mut body = response.into_body();
    let mut bytes = 0;
    let mut status = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("a body");
        match frame.into_data() {
            Ok(data) => bytes += data.len(),
            Err(frame) => {
                let trailers = frame.into_trailers().expect("trailers");
                status = trailers.get("grpc-status").cloned();
                assert_eq!(
                    status.as_ref().map(|v| v.as_bytes()),
                    Some(&b"0"[..]),
                    "{trailers:?}"
                );
            }
        }
    }
    assert!(status.is_some(), "the call ended without grpc-status 0");
    bytes
}

/// A streamed POST of `json` to `path` on the HTTP port.
fn http_request(path: &str, json: &'static str) -> http::Request<axum::body::Body> {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .header("content-length", json.len())
        .body(axum::body::Body::from(json))
        .expect("a request")
}

pub(crate) const CHAT: &str = r#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"Why balance per call?"}]}"#;
pub(crate) const MESSAGES: &str = r#"{"model":"bench","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Why balance per call?"}]}"#;

/// One streamed HTTP call: its body; panics unless it is a 200 ending with
/// `end`.
pub(crate) async fn http_call(
    gateway: &Gateway,
    path: &str,
    json: &'static str,
    end: &str,
) -> usize {
    let response = gateway
        .http()
        .oneshot(http_request(path, json))
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    assert!(
        body.ends_with(end.as_bytes()),
        "{}",
        String::from_utf8_lossy(&body)
    );
    body.len()
}

pub(crate) const CHAT_END: &str = "data: [DONE]\n\n";
pub(crate) const MESSAGES_END: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn chunk_encode(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let tokens: Vec<String> = (0..TOKENS as usize)
        .map(|i| WORDS[i % WORDS.len()].to_string())
        .collect();
    let (canned, canned_one) = rt.block_on(async {
        (
            Gateway::canned(ROUTING, TOKENS).expect("a gateway"),
            Gateway::canned(ROUTING, 1).expect("a gateway"),
        )
    });
    let mut group = per_token(c, "chunk_encode");
    group.bench_function("grpc_token_chunk", |b| b.iter(|| encode_grpc(&tokens)));
    for (name, gateway) in [("50_tokens", &canned), ("1_token", &canned_one)] {
        rt.block_on(grpc_call(gateway));
        group.bench_function(format!("grpc_front/{name}"), |b| {
            b.iter(|| rt.block_on(grpc_call(gateway)))
        });
        rt.block_on(http_call(gateway, "/v1/chat/completions", CHAT, CHAT_END));
        group.bench_function(format!("openai_front/{name}"), |b| {
            b.iter(|| rt.block_on(http_call(gateway, "/v1/chat/completions", CHAT, CHAT_END)))
        });
        rt.block_on(http_call(gateway, "/v1/messages", MESSAGES, MESSAGES_END));
        group.bench_function(format!("messages_front/{name}"), |b| {
            b.iter(|| rt.block_on(http_call(gateway, "/v1/messages", MESSAGES, MESSAGES_END)))
        });
    }
    group.finish();
}

// === stack ===

pub(crate) async fn stack_call(gateway: &Gateway) -> usize {
    let tokens = gateway
        .stream("bench", "Why balance per call?")
        .await
        .expect("a whole answer");
    assert_eq!(tokens, TOKENS as usize);
    tokens
}

fn stack(c: &mut Criterion<ThreadCpu>) {
    let rt = runtime();
    let gateway = rt.block_on(async { Gateway::new(ROUTING).expect("a gateway") });
    rt.block_on(stack_call(&gateway));
    let mut group = per_token(c, "stack");
    group.bench_function("sim/no_recorder", |b| {
        b.iter(|| rt.block_on(stack_call(&gateway)))
    });
    // From here on, as a gateway serving /metrics (the default) runs.
    install_metrics().expect("a recorder");
    group.bench_function("sim/metrics", |b| {
        b.iter(|| rt.block_on(stack_call(&gateway)))
    });
    group.bench_function("sim/grpc_front", |b| {
        b.iter(|| rt.block_on(grpc_call(&gateway)))
    });
    group.bench_function("sim/openai_front", |b| {
        b.iter(|| rt.block_on(http_call(&gateway, "/v1/chat/completions", CHAT, CHAT_END)))
    });
    group.bench_function("sim/messages_front", |b| {
        b.iter(|| rt.block_on(http_call(&gateway, "/v1/messages", MESSAGES, MESSAGES_END)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = sse_decode, chunk_encode, stack
}
criterion_main!(benches);
