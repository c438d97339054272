//! Deadlines, upstream time limits and cancellation: a call never outlives
//! its caller, and an upstream never keeps generating for nobody.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;

use crate::support::*;

fn hang_after(tokens: &'static [&'static str]) -> impl Fn(&Received) -> Vec<Step> {
    move |_| {
        let mut steps = vec![Step::Head(200, "text/event-stream")];
        let body: String = tokens.iter().map(|t| sse_token(t)).collect();
        steps.push(Step::Chunk(body.into_bytes()));
        steps.push(Step::Hang);
        steps
    }
}

#[tokio::test]
async fn a_hanging_upstream_meets_the_callers_deadline_and_is_dropped() {
    let mut upstream = FakeUpstream::start(|_| vec![Step::Hang]).await;
    // The upstream's own limit is far away: only the caller's deadline can
    // end this call.
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "    timeout: 300s\n")).await;
    let mut client = gateway.client().await;
    let status = client
        .complete(with_timeout(request("m", "hi"), Duration::from_millis(200)))
        .await
        .expect_err("the deadline passes");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    upstream.wait_closed().await;

    // The same for a stream that hangs after its first tokens.
    let mut upstream = FakeUpstream::start(hang_after(&["a", "b"])).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "    timeout: 300s\n")).await;
    let mut stream = gateway
        .client()
        .await
        // Long enough that a loaded machine still delivers both tokens
        // before it passes.
        .complete_stream(with_timeout(request("m", "hi"), Duration::from_secs(1)))
        .await
        .expect("headers")
        .into_inner();
    assert_eq!(stream.next().await.expect("a").expect("a").token, "a");
    assert_eq!(stream.next().await.expect("b").expect("b").token, "b");
    let status = stream.next().await.expect("an error").expect_err("error");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("deadline"),
        "{}",
        status.message()
    );
    upstream.wait_closed().await;
}

#[tokio::test]
async fn a_one_millisecond_deadline_is_deadline_exceeded_and_the_gateway_carries_on() {
    let upstream = FakeUpstream::start(hang_after(&["x"])).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let (code, message) = raw_complete(gateway.addr, &request("m", "hi"), "1m").await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    // The gateway still serves calls, on a new connection and an old one.
    let mut client = gateway.client().await;
    let models = client
        .list_models(llmgate::proto::ListModelsRequest {})
        .await
        .expect("still serving");
    assert_eq!(models.into_inner().models.len(), 1);
    let (code, _) = raw_complete(gateway.addr, &request("m", "hi"), "1u").await;
    assert_eq!(code, Code::DeadlineExceeded);
}

#[tokio::test]
async fn a_cancelled_stream_closes_the_upstream_connection() {
    let mut upstream = FakeUpstream::start(hang_after(&["first"])).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("m", "hi"))
        .await
        .expect("headers")
        .into_inner();
    let first = stream.next().await.expect("token").expect("token");
    assert_eq!(first.token, "first");
    drop(stream); // the caller goes away mid-generation
    upstream.wait_closed().await;
}

#[tokio::test]
async fn a_cancelled_unary_call_closes_the_upstream_connection() {
    let mut upstream = FakeUpstream::start(|_| vec![Step::Hang]).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    let call = tokio::spawn(async move { client.complete(request("m", "hi")).await });
    // Wait until the request reached the upstream, then walk away.
    tokio::time::timeout(PATIENCE, async {
        while upstream.received().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("request reaches the upstream");
    call.abort();
    upstream.wait_closed().await;
}

#[tokio::test]
async fn first_token_timeout_cuts_an_upstream_that_never_starts_or_never_answers() {
    // Headers and then silence, or no answer at all: either way no token
    // comes. The gateway may retry, so the caller sees the error before any
    // response headers.
    let scripts: [fn(&Received) -> Vec<Step>; 2] = [
        |_| vec![Step::Head(200, "text/event-stream"), Step::Hang],
        |_| vec![Step::Hang],
    ];
    for script in scripts {
        let mut upstream = FakeUpstream::start(script).await;
        let extra = "    first_token_timeout: 100ms\n";
        let gateway = Gateway::start(&one_upstream(&upstream.url(), extra)).await;
        let status = gateway
            .client()
            .await
            .complete_stream(request("m", "hi"))
            .await
            .expect_err("no first token in time");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("first_token_timeout"),
            "{}",
            status.message()
        );
        upstream.wait_closed().await;
    }
}

#[tokio::test]
async fn idle_timeout_cuts_a_stream_that_goes_silent_after_tokens() {
    let mut upstream = FakeUpstream::start(hang_after(&["a"])).await;
    // Not continued elsewhere (see resilience.rs for that): the caller sees
    // the silence as the error it is.
    let extra = "    idle_timeout: 100ms\n    continuation: none\n";
    let gateway = Gateway::start(&one_upstream(&upstream.url(), extra)).await;
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("m", "hi"))
        .await
        .expect("headers")
        .into_inner();
    assert_eq!(stream.next().await.expect("a").expect("a").token, "a");
    let status = stream.next().await.expect("an error").expect_err("error");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("idle_timeout"),
        "{}",
        status.message()
    );
    assert!(stream.next().await.is_none());
    upstream.wait_closed().await;
}

#[tokio::test]
async fn the_upstream_timeout_caps_a_call_whose_caller_sent_no_deadline() {
    let mut upstream = FakeUpstream::start(|_| vec![Step::Hang]).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "    timeout: 150ms\n")).await;
    let status = gateway
        .client()
        .await
        .complete(request("m", "hi"))
        .await
        .expect_err("the upstream's timeout passes");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("timeout of 150ms"),
        "{}",
        status.message()
    );
    upstream.wait_closed().await;
}

#[tokio::test]
async fn many_concurrent_streams_share_one_client_connection() {
    let upstream = FakeUpstream::start(|received| {
        // Echo the prompt back token by token so each caller can check it
        // got its own answer, in order.
        let prompt = received.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut body: String = prompt
            .split(' ')
            .map(|word| sse_token(&format!("{word} ")))
            .collect();
        body.push_str(&sse_finish("stop", 1, 3));
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(body.into_bytes()),
            Step::End,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let client = gateway.client().await; // one HTTP/2 connection
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let prompt = format!("call {i} here");
                let mut stream = client
                    .complete_stream(request("m", &prompt))
                    .await?
                    .into_inner();
                let mut text = String::new();
                let mut done = false;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    text.push_str(&chunk.token);
                    done |= chunk.done;
                }
                Ok::<_, tonic::Status>((prompt, text, done))
            })
        })
        .collect();
    for call in calls {
        let (prompt, text, done) = call.await.expect("task").expect("stream succeeds");
        assert_eq!(text, format!("{prompt} "));
        assert!(done);
    }
    assert_eq!(upstream.received().len(), 64);
}
