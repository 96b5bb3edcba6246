//! TLS: a supplied certificate, or a self-signed one generated into the data directory on
//! first start (its SHA-256 fingerprint printed so clients can pin it).
//!
//! The generated private key is kept like every other secret of the data directory: sealed by
//! the vault (`tls/key.sealed`, the PKCS#8 DER under the label `tls-key`), so a copy of the
//! directory without the key provider cannot impersonate the server. A `tls/key.pem` left by
//! an earlier version is sealed and removed at start. The key is in the clear only in memory,
//! inside rustls.

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

/// Label of the sealed TLS key in the vault.
const KEY_LABEL: &str = "tls-key";

/// Loads `tls/cert.pem` and the sealed `tls/key.sealed` from the data directory, generating a
/// self-signed pair first if absent (and sealing a plaintext `tls/key.pem` of an earlier
/// version, then removing it). Returns the config and the certificate's SHA-256 fingerprint.
pub fn load_or_create_self_signed(data_dir: &Path, names: Vec<String>, vault: &brankas_vault::Vault) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let plain = dir.join("key.pem");
    let sealed = dir.join("key.sealed");
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| TlsError::Io(p, e)
    };
    if cert.exists() && plain.exists() && !sealed.exists() {
        // An earlier version's plaintext key: seal it, then remove it.
        let pem = zeroize::Zeroizing::new(std::fs::read(&plain).map_err(io(&plain))?);
        let der = pkcs8_of(&pem)?;
        write_sealed(&sealed, &vault.seal_secret(KEY_LABEL, &der).map_err(|_| TlsError::Invalid("cannot seal the TLS key".into()))?)?;
        std::fs::remove_file(&plain).map_err(io(&plain))?;
        tracing::info!("the TLS private key was sealed by the vault; tls/key.pem removed");
    }
    if !cert.exists() || !sealed.exists() {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Invalid(e.to_string()))?;
        let der = zeroize::Zeroizing::new(ck.signing_key.serialize_der());
        write_sealed(&sealed, &vault.seal_secret(KEY_LABEL, &der).map_err(|_| TlsError::Invalid("cannot seal the TLS key".into()))?)?;
        std::fs::write(&cert, ck.cert.pem()).map_err(io(&cert))?;
        if plain.exists() {
            std::fs::remove_file(&plain).map_err(io(&plain))?;
        }
    }
    let cert_pem = std::fs::read(&cert).map_err(io(&cert))?;
    let blob = std::fs::read(&sealed).map_err(io(&sealed))?;
    let der = vault.open_secret(KEY_LABEL, &blob).map_err(|_| TlsError::Invalid("tls/key.sealed does not open under this key file".into()))?;
    let key = PrivateKeyDer::Pkcs8(der.to_vec().into());
    build_with(&cert_pem, key)
}

/// The PKCS#8 DER of the first private key in a PEM file.
fn pkcs8_of(pem: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(PrivateKeyDer::Pkcs8(k))) => Ok(zeroize::Zeroizing::new(k.secret_pkcs8_der().to_vec())),
        _ => Err(TlsError::Invalid("tls/key.pem holds no PKCS#8 private key".into())),
    }
}

/// Writes a file whole or not at all (temporary file, fsync, rename).
fn write_sealed(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, data)?;
    std::fs::rename(&tmp, path).map_err(|e| TlsError::Io(path.display().to_string(), e))
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
    f.write_all(data).and_then(|()| f.sync_all()).map_err(|e| TlsError::Io(path.display().to_string(), e))
}

fn build(cert_pem: &[u8], key_pem: &[u8]) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|_| TlsError::Invalid("key file is not valid PEM".into()))?
        .ok_or_else(|| TlsError::Invalid("no private key in the key file".into()))?;
    build_with(cert_pem, key)
}

fn build_with(cert_pem: &[u8], key: PrivateKeyDer<'static>) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<_, _>>().map_err(|_| TlsError::Invalid("certificate file is not valid PEM".into()))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in the certificate file".into()));
    }
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
