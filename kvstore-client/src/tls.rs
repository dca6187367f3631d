//! rustls settings (on ring) shared by requests and watches.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls_platform_verifier::BuilderVerifierExt;

use crate::Error;

/// Installs ring as the process-wide rustls provider, unless the program chose one
/// already. reqwest is built here without a provider of its own (to avoid a second
/// crypto library) and then needs one even for plain HTTP. [`crate::Client::new`]
/// calls this; call it first if the program builds its own reqwest clients before
/// any kvstore client.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A client configuration that trusts no server: for plain-HTTP clients.
pub(crate) fn trust_nothing() -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// A client configuration that trusts the CA certificates in `ca_pem`, or the
/// system's roots when `None`.
pub(crate) fn config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, Error> {
    let tls_error = |e: rustls::Error| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let mut config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
                roots.add(cert).map_err(tls_error)?;
            }
            if roots.is_empty() {
                return Err(Error::Tls("no certificate in the CA file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_platform_verifier()
            .map_err(tls_error)?
            .with_no_client_auth(),
    };
    // HTTP/1.1 only: WebSocket upgrades need it, and the server speaks nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
