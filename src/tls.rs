//! TLS termination with rustls. HTTP/2 is offered through ALPN, with HTTP/1.1 as fallback.

use std::fs::File;
use std::io::BufReader;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;

pub fn server_config(settings: &TlsSettings) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut BufReader::new(
        File::open(&settings.cert_path).with_context(|| format!("server.tls.cert_path: {}", settings.cert_path.display()))?,
    ))
    .collect::<Result<_, _>>()
    .context("server.tls.cert_path: not a PEM certificate chain")?;
    anyhow::ensure!(!certs.is_empty(), "server.tls.cert_path: no certificate in {}", settings.cert_path.display());
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut BufReader::new(
        File::open(&settings.key_path).with_context(|| format!("server.tls.key_path: {}", settings.key_path.display()))?,
    ))
    .context("server.tls.key_path: unreadable PEM")?
    .context("server.tls.key_path: no private key found")?;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls: certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Makes ring the process-wide rustls provider, for clients that use the default (the S3
/// client of the artifact store, the CLI's HTTP client). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
