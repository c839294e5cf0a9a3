//! Outbound TLS client configuration shared by the key fetcher and upstream pools:
//! rustls on aws-lc-rs, webpki roots plus an optional extra CA bundle.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA bundle holds no usable certificate.
    #[error("CA bundle: {0}")]
    CaBundle(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls client configuration trusting the webpki roots and `extra_ca_pem`.
pub fn client_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsConfigError::CaBundle(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::CaBundle(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsConfigError::CaBundle("no certificate found".to_owned()));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // ALPN is left empty: hyper-rustls sets it from the enabled HTTP versions.
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
