//! The gateway's own connections to plain-HTTP upstreams: reused from call
//! to call, replaced when the server closed them, and closed when a call
//! is cancelled.

use futures_util::StreamExt;

use crate::support::*;

/// A streamed answer of `tokens`, finished and with usage.
fn streamed(tokens: &[&str]) -> Vec<Step> {
    openai_stream(tokens, "stop", 3, tokens.len() as u32)
}

#[tokio::test]
async fn sequential_calls_reuse_one_upstream_connection_and_name_the_host() {
    let upstream = paris_and_abc_upstream().await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    for round in 0..3 {
        unary_and_stream(&mut client, round).await;
    }
    assert_eq!(upstream.count(), 6);
    // Unary calls and streams alike go over connections their calls
    // drive, and one after another they share one.
    assert_eq!(
        upstream.connections(),
        1,
        "three unary calls and three streams one after another should reuse one connection"
    );
    let address = upstream.addr.to_string();
    for received in upstream.received() {
        assert_eq!(received.header("host"), Some(address.as_str()));
        assert_eq!(received.path, "/v1/chat/completions");
    }
}

#[tokio::test]
async fn a_connection_the_server_closed_after_answering_is_replaced_without_a_failed_call() {
    // The server streams an answer, then closes the connection (as a server
    // at its keep-alive limit does): the next call must not fail for it.
    let upstream = FakeUpstream::start(|_| {
        let mut steps = streamed(&["a", "b"]);
        steps.push(Step::Cut);
        steps
    })
    .await;
    // One attempt per call: a request lost on a dead connection would fail
    // the call instead of being retried out of sight.
    let routes = one_upstream(&upstream.url(), "").replace(
        "routes:\n  - model: m\n",
        "routes:\n  - model: m\n    retry: { attempts: 1 }\n",
    );
    let gateway = Gateway::start(&routes).await;
    let mut client = gateway.client().await;
    for round in 0..4 {
        let stream = client
            .complete_stream(request("m", "hi"))
            .await
            .unwrap_or_else(|err| panic!("stream {round} failed to start: {err}"))
            .into_inner();
        let chunks: Vec<_> = stream.collect().await;
        let text: String = chunks
            .iter()
            .map(|chunk| match chunk {
                Ok(chunk) => chunk.token.clone(),
                Err(err) => panic!("stream {round} failed: {err}"),
            })
            .collect();
        assert_eq!(text, "ab");
    }
    assert_eq!(upstream.count(), 4, "each call reached the upstream once");
    assert_eq!(upstream.connections(), 4);
}

#[tokio::test]
async fn a_cancelled_stream_closes_its_upstream_connection_and_the_next_call_dials_anew() {
    let mut upstream = FakeUpstream::start(|request| {
        if request.body["stream"] == true {
            vec![
                Step::Head(200, "text/event-stream"),
                Step::Chunk(sse_token("first").into_bytes()),
                Step::Hang,
            ]
        } else {
            paris_reply()
        }
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    let mut stream = client
        .complete_stream(request("m", "hi"))
        .await
        .expect("stream starts")
        .into_inner();
    let first = stream.next().await.expect("a chunk").expect("no error");
    assert_eq!(first.token, "first");
    drop(stream);
    upstream.wait_closed().await;
    let answer = client
        .complete(request("m", "hi"))
        .await
        .expect("next call succeeds");
    assert_eq!(answer.into_inner().text, "Paris.");
    assert_eq!(upstream.connections(), 2);
}
