//! TLS: a supplied certificate, or a self-signed one generated into the data directory on
//! first start (its SHA-256 fingerprint printed so clients can pin it).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors loading or creating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Loads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Io(cert.display().to_string(), e))?;
    let key_pem = std::fs::read(key).map_err(|e| TlsError::Io(key.display().to_string(), e))?;
    build(&cert_pem, &key_pem)
}

/// Loads `tls/cert.pem` and `tls/key.pem` from the data directory, generating a self-signed
/// pair first if absent. Returns the config and the certificate's SHA-256 fingerprint.
pub fn load_or_create_self_signed(data_dir: &Path, names: Vec<String>) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| TlsError::Io(dir.display().to_string(), e))?;
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Invalid(e.to_string()))?;
        write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert, ck.cert.pem()).map_err(|e| TlsError::Io(cert.display().to_string(), e))?;
    }
    load(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| TlsError::Io(path.display().to_string(), e))?;
    f.write_all(data).map_err(|e| TlsError::Io(path.display().to_string(), e))
}

fn build(cert_pem: &[u8], key_pem: &[u8]) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Invalid("certificate file is not valid PEM".into()))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in the certificate file".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|_| TlsError::Invalid("key file is not valid PEM".into()))?
        .ok_or_else(|| TlsError::Invalid("no private key in the key file".into()))?;
    let fp = brankas_vault::sha256(certs[0].as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), fp))
}
