//! An upstream's `headers:`: extra request headers, with `${VAR}` read from
//! the environment so keys need not be written in the file.

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::check::Checker;

/// Headers the gateway writes itself on every upstream request (or that
/// belong to the connection, not the request); `headers:` cannot set them.
const GATEWAY_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Words that make a header name a credential's: its value is marked
/// sensitive even when written in the file, so `Debug` prints `Sensitive`
/// and upstream error text is scrubbed of it, and `llmgate check` warns
/// that the secret sits in the file.
const CREDENTIAL_WORDS: [&str; 7] = [
    "auth", "key", "token", "secret", "password", "cookie", "session",
];

/// An upstream's checked `headers:`.
#[derive(Debug, Default)]
pub(super) struct Headers {
    /// The headers to send; credentials and values read from the
    /// environment are marked sensitive.
    pub(super) map: http::HeaderMap,
    /// Credential headers whose value is written in the file itself.
    pub(super) literal_secrets: Vec<String>,
}

/// Whether `header` usually carries a credential.
fn is_credential(header: &http::HeaderName) -> bool {
    CREDENTIAL_WORDS
        .iter()
        .any(|word| header.as_str().contains(word))
}

// === checks ===

impl Checker {
    /// `headers:`: each name a valid header the gateway does not write
    /// itself, each value valid once `${VAR}`s are read. Values that read
    /// the environment, and credentials written in the file, are marked
    /// sensitive.
    pub(super) fn headers(
        &mut self,
        name: &str,
        raw: &HashMap<Spanned<String>, Spanned<String>>,
        key_header: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Headers {
        let mut entries: Vec<_> = raw.iter().collect();
        entries.sort_by_key(|(key, _)| (key.referenced.line(), key.referenced.column()));
        let mut headers = Headers::default();
        for (key, value) in entries {
            let Ok(header) = http::HeaderName::from_bytes(key.value.as_bytes()) else {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': '{}' is not a valid HTTP header name",
                        key.value
                    ),
                );
                continue;
            };
            if GATEWAY_HEADERS.contains(&header.as_str()) {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': header '{}' is written by the gateway on every \
                         request; remove it from headers:",
                        key.value
                    ),
                );
                continue;
            }
            if key_header == Some(header.as_str()) {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': header '{}' carries the key from api_key_env; \
                         remove one of the two",
                        key.value
                    ),
                );
                continue;
            }
            if headers.map.contains_key(&header) {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': header '{}' is given twice (header names ignore \
                         case)",
                        key.value
                    ),
                );
                continue;
            }
            let Some((text, from_env)) = self.interpolate(name, &header, value, env) else {
                continue;
            };
            match http::HeaderValue::try_from(text) {
                Ok(mut header_value) => {
                    let credential = is_credential(&header);
                    header_value.set_sensitive(from_env || credential);
                    if credential && !from_env {
                        headers.literal_secrets.push(header.to_string());
                    }
                    headers.map.insert(header, header_value);
                }
                Err(_) => {
                    // Never quote the value: it may hold a key.
                    self.report(
                        value,
                        format!(
                            "upstream '{name}': the value of header '{header}' is not a valid \
                             header value (printable ASCII on one line)"
                        ),
                    );
                }
            }
        }
        headers
    }

    /// A header value with each `${VAR}` replaced by the variable's value;
    /// also says whether any variable was read.
    fn interpolate(
        &mut self,
        name: &str,
        header: &http::HeaderName,
        raw: &Spanned<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(String, bool)> {
        let mut out = String::new();
        let mut rest = raw.value.as_str();
        let mut from_env = false;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let var = after.find('}').map(|end| &after[..end]).filter(|var| {
                var.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            let Some(var) = var else {
                self.report(
                    raw,
                    format!(
                        "upstream '{name}': header '{header}': '${{' must start a variable \
                         such as ${{PROVIDER_KEY}}"
                    ),
                );
                return None;
            };
            match env(var) {
                Some(value) if !value.is_empty() => out.push_str(&value),
                _ => {
                    self.report(
                        raw,
                        format!(
                            "upstream '{name}': environment variable {var} (for header \
                             '{header}') is not set (or empty); export it before starting \
                             the gateway"
                        ),
                    );
                    return None;
                }
            }
            from_env = true;
            rest = &after[var.len() + 1..];
        }
        out.push_str(rest);
        Some((out, from_env))
    }
}
