//! gRPC written by hand: frames, metadata and bodies no generated client
//! would send.

use std::net::SocketAddr;

use llmgate::proto::CompleteRequest;

use super::*;

/// Calls `Complete` over a bare HTTP/2 connection with a raw `grpc-timeout`
/// header, and returns the gRPC status the gateway sent. Unlike a tonic
/// client, this one arms no timer of its own, so it sees what the gateway
/// answers even when the deadline is shorter than a round trip.
pub async fn raw_complete(
    addr: SocketAddr,
    message: &CompleteRequest,
    grpc_timeout: &str,
) -> (tonic::Code, String) {
    use prost::Message as _;

    let body = http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&message.encode_to_vec())));
    raw_grpc(addr, Some(grpc_timeout), body).await
}

/// `message` framed as gRPC sends it: no compression, 4-byte length.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Calls `Complete` over a bare HTTP/2 connection with `body` as the
/// request body, whatever it holds, and returns the gRPC status the
/// gateway answered with.
pub async fn raw_grpc<B>(
    addr: SocketAddr,
    grpc_timeout: Option<&str>,
    body: B,
) -> (tonic::Code, String)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<B>();
    let mut request = http::Request::post(format!("http://{addr}/llm.v1.LLMService/Complete"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = grpc_timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let request = request.body(body).expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("gateway answers")
        .expect("HTTP/2 response");
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    let trailers = body.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = field("grpc-status")
        .and_then(|c| c.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    let message = field("grpc-message")
        .map(|m| percent_decode(&m))
        .unwrap_or_default();
    (code, message)
}

/// Decodes the percent-encoding of `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(b)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
