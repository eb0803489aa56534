//! HTTPS for `tidemark serve` (`--tls-cert FILE --tls-key FILE`): rustls with the ring
//! provider, HTTP/1.1 only, certificate chain and private key read from PEM files at start-up.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// The acceptor for the certificate chain in `cert` and the private key in `key` (PEM).
/// Unreadable or unfit files are bad input (exit 2), named in the message.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<_, _>>())
        .map_err(|e| {
            Error::input(format!(
                "cannot read certificates from --tls-cert {}: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::input(format!(
            "--tls-cert {} holds no PEM certificate",
            cert.display()
        )));
    }
    // The key's contents never appear in a message: only the file's name does.
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::input(format!(
            "cannot read a private key from --tls-key {}: {}",
            key.display(),
            pem_error(&e)
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Runtime(format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            Error::input(format!(
                "--tls-cert {} and --tls-key {} do not make a usable certificate: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        _ => "not a PEM private key".into(),
    }
}
