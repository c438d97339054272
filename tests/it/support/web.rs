//! Plain HTTP/1.1 from the outside: the admin port, the HTTP front, and
//! raw bytes for the tests of hostile clients.

use std::net::SocketAddr;

use super::*;

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// `GET url` over HTTP/1.1.
pub async fn http_get(url: &str) -> HttpAnswer {
    http_send(http::Method::GET, url).await
}

/// `POST url` with an empty body, over HTTP/1.1.
pub async fn http_post(url: &str) -> HttpAnswer {
    http_send(http::Method::POST, url).await
}

/// `GET url` with `authorization: Bearer key`.
pub async fn http_get_with_key(url: &str, key: &str) -> HttpAnswer {
    http_send_with(http::Method::GET, url, Some(key)).await
}

/// `POST url` with an empty body and `authorization: Bearer key`.
pub async fn http_post_with_key(url: &str, key: &str) -> HttpAnswer {
    http_send_with(http::Method::POST, url, Some(key)).await
}

async fn http_send(method: http::Method, url: &str) -> HttpAnswer {
    http_send_with(method, url, None).await
}

async fn http_send_with(method: http::Method, url: &str, key: Option<&str>) -> HttpAnswer {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(http_body_util::Empty::new()).expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("answer in time")
        .expect("HTTP response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `bytes` on a new connection to `addr` and reads the answer's
/// status line and body until the gateway closes or `PATIENCE` passes;
/// `None` when nothing came back in time.
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, bytes)
        .await
        .expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    // One whole answer is all the tests need.
                    if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        if length.is_some_and(|len| answer.len() >= end + 4 + len) {
                            return;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `POST url` with a JSON body over HTTP/1.1, read whole: for calls to the
/// OpenAI front whose streamed answer a test parses as an SDK would.
pub async fn http_post_json(url: &str, body: &serde_json::Value) -> HttpAnswer {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    send_whole(request).await
}

/// Sends `request` over HTTP/1.1 and reads the answer whole, each step
/// bounded by `PATIENCE`.
pub async fn send_whole(request: http::Request<http_body_util::Full<bytes::Bytes>>) -> HttpAnswer {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("answer in time")
        .expect("HTTP response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
