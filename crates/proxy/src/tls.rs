//! TLS termination with a certificate that can change while the gateway runs:
//! the listener's rustls configuration resolves the certificate through a
//! [`CertStore`], whose current certificate and key a reload swaps atomically
//! (a renewed certificate, a Kubernetes Secret update). A new pair that does not
//! parse, or whose key does not match the certificate, is refused and the old
//! one keeps serving.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::TlsFiles;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate the traffic listener presents, swappable.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    /// The PEM it was built from, so an unchanged pair is not rebuilt.
    loaded_from: ArcSwap<TlsFiles>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.loaded_from.load().cert_file)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// A store holding the pair in `files`, or why it cannot be used.
    pub fn new(files: &TlsFiles) -> Result<Arc<Self>, String> {
        let key = certified_key(files)?;
        Ok(Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
            loaded_from: ArcSwap::from_pointee(files.clone()),
        }))
    }

    /// Swaps in the pair in `files`; `Ok(true)` when it changed, `Ok(false)` when it
    /// is the pair already served, `Err` (the old pair stays) when it is unusable.
    pub fn replace(&self, files: &TlsFiles) -> Result<bool, String> {
        if **self.loaded_from.load() == *files {
            return Ok(false);
        }
        let key = certified_key(files)?;
        self.current.store(Arc::new(key));
        self.loaded_from.store(Arc::new(files.clone()));
        Ok(true)
    }

    /// A TLS acceptor that presents whatever this store holds at each handshake
    /// (ALPN: h2, http/1.1).
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Parses a certificate chain and its private key, checking that they belong
/// together.
pub fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", files.cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem.0)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        format!(
            "{} and {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })
}
