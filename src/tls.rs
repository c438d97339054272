//! TLS on both sides of the gateway, with rustls and the `ring` provider.
//!
//! The front listener can serve TLS and require client certificates from a
//! CA (mTLS), so a caller without a valid certificate is refused during the
//! handshake, before it can send a byte of HTTP. Upstream clients always
//! verify the server's certificate: against the web PKI roots by default,
//! or against the one CA an upstream names (`tls: { ca: path }`) for a
//! fleet behind a private CA.
//!
//! One provider for both directions (`ring`, which the upstream client
//! already used) keeps a second cryptography library out of the build. The
//! routing file's checker builds the server configuration too, so a key
//! that does not match its certificate is reported at its line in the file
//! instead of when the gateway starts.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocols the front listener offers: gRPC needs HTTP/2, and
/// HTTP/1.1 stays available to HTTP front ends.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The one crypto provider the gateway uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in file order; an error names what is
/// wrong with the file (never its content).
pub(crate) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("is not a PEM certificate file ({err})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1). The error never
/// quotes the file: it is a secret.
pub(crate) fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        "holds no PEM private key (PKCS#8, RSA or EC: -----BEGIN PRIVATE KEY-----)".to_string()
    })
}

/// A root store holding every certificate of a PEM file.
pub(crate) fn root_store(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem)? {
        roots
            .add(cert)
            .map_err(|err| format!("holds a certificate that cannot be a CA ({err})"))?;
    }
    Ok(roots)
}

/// The front listener's TLS settings: `cert_chain` and `key` (PEM) for the
/// server; with `client_ca`, a client certificate issued by that CA is
/// required, and a client without one fails the handshake.
pub fn server_config(
    cert_chain: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, String> {
    let certs = certificates(cert_chain).map_err(|err| format!("cert {err}"))?;
    let key = private_key(key).map_err(|err| format!("key {err}"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS versions: {err}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = root_store(ca).map_err(|err| format!("client_ca {err}"))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|err| format!("client_ca cannot verify clients ({err})"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("the key does not fit the certificate ({err})"))?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Client settings that trust only the CA certificates in `ca` (PEM): for
/// an upstream fleet behind a private CA, whose servers the web PKI roots
/// would refuse.
pub fn client_config_trusting(ca: &[u8]) -> Result<ClientConfig, String> {
    let roots = root_store(ca)?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS versions: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
