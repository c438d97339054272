//! The client behind `llmgate chat`: stream one completion to a terminal,
//! so a newcomer can see the gateway work end to end.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;

use crate::proto::llm_service_client::LlmServiceClient;
use crate::proto::{CompleteRequest, Message};

/// Streams a completion of `prompt` from the gateway at `addr` to `out`,
/// then writes usage to `summary`. With `api_key`, the call carries
/// `authorization: Bearer <key>`.
#[allow(clippy::too_many_arguments)]
pub async fn chat(
    addr: &str,
    model: &str,
    prompt: &str,
    max_tokens: i32,
    timeout: Duration,
    api_key: Option<&str>,
    out: &mut dyn Write,
    summary: &mut dyn Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut client = LlmServiceClient::connect(url).await?;
    let mut request = tonic::Request::new(CompleteRequest {
        model: model.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.to_string(),
            ..Default::default()
        }],
        max_tokens,
        ..Default::default()
    });
    request.set_timeout(timeout);
    if let Some(key) = api_key {
        // Never quote the key back, even when it cannot be sent.
        let mut value: tonic::metadata::MetadataValue<_> = format!("Bearer {key}")
            .parse()
            .map_err(|_| "the API key has characters a header cannot carry")?;
        // Kept out of HTTP/2 header compression tables.
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    let mut stream = client
        .complete_stream(request)
        .await
        .map_err(describe)?
        .into_inner();
    let mut printed = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(status) => {
                if printed {
                    writeln!(out)?;
                }
                return Err(describe(status).into());
            }
        };
        printed |= !chunk.token.is_empty();
        out.write_all(chunk.token.as_bytes())?;
        out.flush()?;
        if chunk.done {
            writeln!(out)?;
            let usage = chunk.usage.unwrap_or_default();
            writeln!(
                summary,
                "[model {}, finish {}, {} tokens in, {} out]",
                chunk.model, chunk.finish_reason, usage.input_tokens, usage.output_tokens
            )?;
        }
    }
    Ok(())
}

/// A status as one readable line: `DEADLINE_EXCEEDED: ...`.
fn describe(status: tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut name = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    format!("{name}: {}", status.message())
}
