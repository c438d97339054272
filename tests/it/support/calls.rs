//! Calls through the gRPC front, and what tests assert about their
//! answers; fixtures written from each API's documentation.

use llmgate::proto::llm_service_client::LlmServiceClient;
use llmgate::proto::{CompleteRequest, TokenChunk};
use tonic::Status;
use tonic::transport::Channel;

use super::*;

/// Calls `CompleteStream` and gathers every chunk, or the status that ended
/// the stream.
pub async fn collect(
    client: &mut LlmServiceClient<Channel>,
    request: CompleteRequest,
) -> Result<Vec<TokenChunk>, tonic::Status> {
    use futures_util::StreamExt;
    let mut stream = client.complete_stream(request).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

/// An upstream answering unary calls with [`paris_reply`] and streaming
/// "a", "b", "c" to streamed ones: what [`unary_and_stream`] expects.
pub async fn paris_and_abc_upstream() -> FakeUpstream {
    FakeUpstream::start(|request| {
        if request.body["stream"] == true {
            openai_stream(&["a", "b", "c"], "stop", 3, 3)
        } else {
            paris_reply()
        }
    })
    .await
}

/// A unary call and then a stream for model `m` through `client`, each
/// answered whole as [`paris_and_abc_upstream`] answers; `round` names the
/// call in a failure.
pub async fn unary_and_stream(client: &mut LlmServiceClient<Channel>, round: usize) {
    let answer = client
        .complete(request("m", "hi"))
        .await
        .unwrap_or_else(|err| panic!("unary call {round}: {err}"))
        .into_inner();
    assert_eq!(answer.text, "Paris.");
    let chunks = collect(client, request("m", "hi"))
        .await
        .unwrap_or_else(|err| panic!("stream {round}: {err}"));
    assert_eq!(text_of(&chunks), "abc");
}

/// The same request, unary and then streamed, where both must fail: the
/// two statuses, for checks that hold either way.
pub async fn errors_both_ways(
    client: &mut LlmServiceClient<Channel>,
    request: CompleteRequest,
) -> [Status; 2] {
    let unary = client
        .complete(request.clone())
        .await
        .expect_err("the unary call fails");
    let streamed = collect(client, request)
        .await
        .expect_err("the streamed call fails");
    [unary, streamed]
}

/// A stream that fails after some tokens: the chunks before the error, and
/// the error. Panics if the stream ends without one, claims to be done
/// first, or sends anything after it.
pub async fn stream_until_error(
    client: &mut LlmServiceClient<Channel>,
    request: CompleteRequest,
) -> (Vec<TokenChunk>, Status) {
    use futures_util::StreamExt;
    let mut stream = client
        .complete_stream(request)
        .await
        .expect("the stream starts")
        .into_inner();
    let mut chunks = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                assert!(!chunk.done, "an answer that fails is never done");
                chunks.push(chunk);
            }
            Some(Err(status)) => {
                assert!(stream.next().await.is_none(), "nothing after the error");
                return (chunks, status);
            }
            None => panic!("the stream ended without an error"),
        }
    }
}

/// Streams once per split point of a [`splitting_upstream`] serving a body
/// of `len` bytes, and checks that every split gives the same answer: its
/// text, finish reason and usage (input, output).
pub async fn assert_every_split_gives(
    client: &mut LlmServiceClient<Channel>,
    len: usize,
    text: &str,
    finish_reason: &str,
    usage: (i32, i32),
) {
    for k in 0..=len {
        let chunks = collect(client, request("m", "hi"))
            .await
            .unwrap_or_else(|status| panic!("split at byte {k}: {status}"));
        assert_eq!(text_of(&chunks), text, "split at byte {k}");
        let last = chunks.last().expect("final chunk");
        assert_eq!(last.finish_reason, finish_reason, "split at byte {k}");
        let got = last.usage.map(|u| (u.input_tokens, u.output_tokens));
        assert_eq!(got, Some(usage), "split at byte {k}");
    }
}

/// Checks a failed call's code, and that its message has every needle.
#[track_caller]
pub fn assert_status(status: &Status, code: tonic::Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{}", status.message());
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{needle:?} missing from: {}",
            status.message()
        );
    }
}

/// Checks the shape of a whole streamed answer: only the last chunk is
/// done and carries usage, with this finish reason, model and usage
/// (input, output).
#[track_caller]
pub fn assert_final_chunk(
    chunks: &[TokenChunk],
    finish_reason: &str,
    model: &str,
    usage: (i32, i32),
) {
    let (last, tokens) = chunks.split_last().expect("a final chunk");
    assert!(last.done, "the last chunk is done");
    assert!(
        tokens.iter().all(|c| !c.done && c.usage.is_none()),
        "only the last chunk is done or has usage"
    );
    assert_eq!(last.finish_reason, finish_reason);
    assert_eq!(last.model, model);
    let got = last.usage.map(|u| (u.input_tokens, u.output_tokens));
    assert_eq!(got, Some(usage), "usage on the final chunk");
}

/// The text of a streamed answer.
pub fn text_of(chunks: &[TokenChunk]) -> String {
    chunks.iter().map(|c| c.token.as_str()).collect()
}

/// A fixture file from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("fixture {}: {err}", path.display()))
}

/// A fixture as JSON.
pub fn json_fixture(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}
