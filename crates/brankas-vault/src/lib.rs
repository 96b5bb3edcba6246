//! Keys and ciphertext for Brankas.
//!
//! This is the only crate that ever holds key material in the clear. Everything above it
//! handles keys through opaque handles ([`DataKey`], [`Vault`]) that can seal and open data
//! but cannot hand out their bytes, and nothing here implements `Debug`, `Display` or
//! `Serialize` for secret values.
//!
//! Main types:
//! - [`KeyProvider`]: where key-encryption keys (KEKs) live, outside the data store. The
//!   [`KeyFile`] provider keeps them in a file outside the data directory; a PKCS#11 provider
//!   implements the same trait.
//! - [`Vault`]: the system root secret (random, stored only wrapped by a KEK) and the keys
//!   derived from it with HKDF under separate labels: blind-index key, patient-pseudonym key,
//!   record-key key, token key and cursor key. It wraps and unwraps per-partition data keys.
//! - [`DataKey`]: one partition's (one patient's, or the system's) AES-256-GCM-SIV key.
//!   Seals records with associated data that binds them to their place ([`RecordAad`]).
//! - Shred keys and the erasure ledger (`shred` module, [`Vault::with_erasure`], [`Erasure`]):
//!   data keys are wrapped under one of 65,536 bucket keys kept beside the key file, so
//!   erasing a patient (destroying its bucket key's generation) reaches every copy of the data.
//!
//! ```
//! use brankas_vault::{DataKey, RecordAad, PartitionId, RecordKey};
//! let key = DataKey::generate().unwrap();
//! let aad = RecordAad { resource_type: "Patient", record: &RecordKey([1; 32]), version: 1,
//!                       partition: &PartitionId([7; 32]), dek_version: 1 };
//! let sealed = key.seal(&aad, b"{\"resourceType\":\"Patient\"}").unwrap();
//! assert_eq!(&*key.open(&aad, &sealed).unwrap(), b"{\"resourceType\":\"Patient\"}");
//! ```
//!
//! Why AES-256-GCM-SIV: nonces are random 96-bit values, and GCM-SIV stays safe if one ever
//! repeats (it only reveals equality of identical messages), so per-key message limits are far
//! beyond what one patient will ever write (NIST's 2^32 random-nonce bound for GCM applies with
//! a large margin; GCM-SIV's bound is higher still).

mod aead;
mod pkcs11;
mod provider;
mod shred;
mod stream;
mod vault;

pub use aead::{DataKey, EntryAad, RecordAad, SEAL_OVERHEAD};
pub use pkcs11::{Pkcs11Config, Pkcs11Provider};
pub use provider::{KekId, KeyFile, KeyProvider};
pub use shred::{Erasure, ErasureRecord, SHRED_BUCKETS, bucket_of, bucket_scan_start};
pub use stream::{STREAM_HEADER_LEN, STREAM_SEGMENT, STREAM_TAG_LEN, StreamOpener, StreamSealer, opener as stream_opener, sealer as stream_sealer};
pub use vault::{BlindTerm, PartitionId, RecordKey, SYSTEM_PARTITION_LABEL, Vault, WrappedKey};

/// Errors of key handling. None of them carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A ciphertext failed authentication: edited, truncated, moved to another record, or
    /// opened with the wrong key. Never served as data.
    #[error("ciphertext failed authentication (tampered, moved or wrong key)")]
    Integrity,
    /// The key provider does not hold the key-encryption key a wrapped key names.
    #[error("key-encryption key {0} is not available from the key provider")]
    UnknownKek(KekId),
    /// The key file could not be read, written or parsed.
    #[error("key file: {0}")]
    KeyFile(String),
    /// The system root secret is missing or malformed.
    #[error("system root key: {0}")]
    Root(&'static str),
    /// The partition was erased: its data key is destroyed (crypto-shredding).
    #[error("the data key was erased")]
    Erased,
    /// The erasure ledger or the shred keys beside the key file are missing, damaged or
    /// inconsistent.
    #[error("erasure ledger: {0}")]
    Ledger(String),
    /// The cryptographic library reported a failure (e.g. no randomness).
    #[error("cryptographic operation failed")]
    Crypto,
}

impl From<aws_lc_rs::error::Unspecified> for VaultError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        VaultError::Crypto
    }
}

/// Fills `out` from the system's cryptographically secure generator.
pub fn random_bytes(out: &mut [u8]) -> Result<(), VaultError> {
    use aws_lc_rs::rand::SecureRandom;
    aws_lc_rs::rand::SystemRandom::new().fill(out)?;
    Ok(())
}

/// A random identifier of `bytes` random bytes, hex-encoded (used for server-assigned ids).
pub fn random_id(bytes: usize) -> Result<String, VaultError> {
    let mut b = vec![0u8; bytes];
    random_bytes(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// An operator-provided HMAC-SHA256 key that signs outgoing messages (the alert webhook's
/// bodies), so the receiver can tell them from forgeries. Prints nothing of itself.
pub struct SigningKey(aws_lc_rs::hmac::Key);

impl SigningKey {
    /// A key from the secret's bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<Self, VaultError> {
        if secret.len() < 16 {
            return Err(VaultError::KeyFile("a signing secret needs at least 16 bytes".into()));
        }
        Ok(Self(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret)))
    }

    /// HMAC-SHA256 of `message`, lower-case hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        aws_lc_rs::hmac::sign(&self.0, message).as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}
