//! TLS files the routing file names: `listen.tls` (certificate, key, client
//! CA) and each upstream's `tls.ca`. They are read when the file is loaded,
//! so a missing or broken file is reported at its line and column, and a
//! reload sees new contents. The private key's `Debug` prints its path only.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::Checker;
use super::limits::human_size;

/// Largest certificate, key or CA file read: PEM files are a few KiB, so a
/// bigger one is the wrong file (or a device that never ends).
const MAX_PEM_FILE: u64 = 1024 * 1024;

// === raw (as written) ===

/// `listen.tls:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// Certificate chain file.
    pub(crate) cert: Spanned<String>,
    /// Private key file.
    pub(crate) key: Spanned<String>,
    /// CA whose client certificates are required.
    #[serde(default)]
    pub(crate) client_ca: Option<Spanned<String>>,
}

/// `tls:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    /// The CA its servers' certificates are checked against.
    pub(crate) ca: Spanned<String>,
}

// === validated ===

/// A file the routing file names, read when the file was loaded. `Debug`
/// shows the path only: the contents may be a private key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PemFile {
    /// The path as written in the routing file.
    pub path: PathBuf,
    /// What the file held.
    contents: Arc<[u8]>,
}

/// `listen.tls:`: the front listener serves TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsConfig {
    /// The server's certificate chain, leaf first (PEM).
    pub cert: PemFile,
    /// The server's private key (PEM).
    pub key: PemFile,
    /// With it, callers must present a certificate this CA issued (mTLS).
    pub client_ca: Option<PemFile>,
}

// === impl PemFile ===

impl PemFile {
    /// A file's contents as read from `path`.
    pub(crate) fn new(path: PathBuf, contents: Vec<u8>) -> Self {
        PemFile {
            path,
            contents: contents.into(),
        }
    }

    /// What the file held.
    pub(crate) fn contents(&self) -> &[u8] {
        &self.contents
    }
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemFile({})", self.path.display())
    }
}

// === checks ===

impl Checker {
    /// `listen.tls:`: every file readable, and rustls accepts the result
    /// (the key fits the certificate).
    pub(super) fn listen_tls(&mut self, raw: &Spanned<RawTls>) -> Option<TlsConfig> {
        let tls = &raw.value;
        let cert = self.pem_file(&tls.cert, "listen.tls.cert");
        let key = self.pem_file(&tls.key, "listen.tls.key");
        let client_ca = match &tls.client_ca {
            Some(path) => Some(self.pem_file(path, "listen.tls.client_ca")?),
            None => None,
        };
        let (cert, key) = (cert?, key?);
        if let Err(err) = crate::tls::server_config(
            cert.contents(),
            key.contents(),
            client_ca.as_ref().map(PemFile::contents),
        ) {
            self.report(raw, format!("listen.tls: {err}"));
            return None;
        }
        Some(TlsConfig {
            cert,
            key,
            client_ca,
        })
    }

    /// An upstream's `tls:`: a CA file for `https://` endpoints.
    pub(super) fn upstream_tls(
        &mut self,
        name: &str,
        raw: &Spanned<RawUpstreamTls>,
        https: bool,
    ) -> Option<PemFile> {
        if !https {
            self.report(
                raw,
                format!(
                    "upstream '{name}': tls: applies to https:// endpoints, and this upstream \
                     has none; use https:// URLs (or scheme: https under discover:), or \
                     remove tls:"
                ),
            );
            return None;
        }
        let ca = self.pem_file(&raw.value.ca, &format!("upstream '{name}': tls.ca"))?;
        if let Err(err) = crate::tls::root_store(ca.contents()) {
            self.report(&raw.value.ca, format!("upstream '{name}': tls.ca {err}"));
            return None;
        }
        Some(ca)
    }

    /// Reads a PEM file named at `at`.
    fn pem_file(&mut self, at: &Spanned<String>, what: &str) -> Option<PemFile> {
        let contents = self.read_bounded(at, what, MAX_PEM_FILE)?;
        Some(PemFile::new(PathBuf::from(&at.value), contents))
    }

    /// Reads the file named at `at`, refusing one larger than `limit`.
    pub(super) fn read_bounded(
        &mut self,
        at: &Spanned<String>,
        what: &str,
        limit: u64,
    ) -> Option<Vec<u8>> {
        if at.value.is_empty() {
            self.report(at, format!("{what}: the path is empty"));
            return None;
        }
        let read = std::fs::File::open(Path::new(&at.value)).and_then(|file| {
            let mut bytes = Vec::new();
            file.take(limit + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) if bytes.len() as u64 > limit => {
                self.report(
                    at,
                    format!(
                        "{what}: {} is larger than {}; is it the right file?",
                        at.value,
                        human_size(usize::try_from(limit).unwrap_or(usize::MAX))
                    ),
                );
                None
            }
            Ok(bytes) => Some(bytes),
            Err(err) => {
                self.report(at, format!("{what}: cannot read {}: {err}", at.value));
                None
            }
        }
    }
}
