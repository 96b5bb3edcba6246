//! The system root secret, the keys derived from it, and data-key wrapping.

use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use aws_lc_rs::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::aead::DataKey;
use crate::provider::{KekId, KeyProvider};
use crate::shred::{ERASED_KEK, Erasure, ErasureRecord, SHRED_KEK, Shredder};
use crate::{VaultError, random_bytes};

/// A keyed pseudonym naming one partition: a patient (HMAC of the patient's id under the
/// pseudonym key) or the system partition for resources in no patient's compartment.
/// Storage and sharding see only this, never the patient's id or identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub [u8; 32]);

/// Opaque storage key of one logical resource: HMAC of (type, id). The store never learns ids,
/// which clients may choose and which could carry identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(pub [u8; 32]);

/// A blind-index term: HMAC of a normalised identity value under the blind-index key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindTerm(pub [u8; 32]);

macro_rules! opaque_debug {
    ($t:ty, $name:literal) => {
        impl std::fmt::Debug for $t {
            // Pseudonyms are not secret, but a short prefix is all a log needs.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($name, "({:02x}{:02x}{:02x}{:02x}…)"), self.0[0], self.0[1], self.0[2], self.0[3])
            }
        }
    };
}
opaque_debug!(PartitionId, "PartitionId");
opaque_debug!(RecordKey, "RecordKey");
opaque_debug!(BlindTerm, "BlindTerm");

/// Label of the partition that holds resources outside every patient's compartment.
pub const SYSTEM_PARTITION_LABEL: &str = "system";

/// A key wrapped by a KEK, as it is stored: which KEK, which version of the wrapped key, and
/// the ciphertext. Safe to store and log (it reveals nothing without the KEK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek: KekId,
    pub key_version: u32,
    pub bytes: Vec<u8>,
}

impl WrappedKey {
    /// The tombstone stored in place of an erased partition's data key.
    pub fn erased() -> Self {
        WrappedKey { kek: ERASED_KEK, key_version: 0, bytes: Vec::new() }
    }

    /// Whether this is an erased partition's tombstone.
    pub fn is_erased(&self) -> bool {
        self.kek == ERASED_KEK
    }

    /// The generation of the shred key this data key is wrapped under (`None` if it is
    /// wrapped by a KEK directly, or erased).
    pub fn shred_generation(&self) -> Option<u32> {
        if self.kek != SHRED_KEK || self.bytes.len() < 4 {
            return None;
        }
        Some(u32::from_be_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]]))
    }

    /// Whether this key is wrapped by a KEK directly (not under a shred key, not erased).
    pub fn is_kek_wrapped(&self) -> bool {
        self.kek != SHRED_KEK && self.kek != ERASED_KEK
    }

    /// Self-describing byte form, for storing in a single column.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.bytes.len());
        v.extend_from_slice(&self.kek.0.to_be_bytes());
        v.extend_from_slice(&self.key_version.to_be_bytes());
        v.extend_from_slice(&self.bytes);
        v
    }

    /// Parses [`WrappedKey::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, VaultError> {
        if b.len() < 8 {
            return Err(VaultError::Integrity);
        }
        Ok(Self {
            kek: KekId(u32::from_be_bytes(b[0..4].try_into().map_err(|_| VaultError::Integrity)?)),
            key_version: u32::from_be_bytes(b[4..8].try_into().map_err(|_| VaultError::Integrity)?),
            bytes: b[8..].to_vec(),
        })
    }
}

/// Key handle for the whole server: derived keys plus access to the key provider.
///
/// *Architecture invariant:* derived keys are separated by HKDF labels, so the blind-index key,
/// pseudonym key, record-key key, token key and cursor key are independent: leaking one (say,
/// token forgery) gives nothing about another (say, blind-index terms).
pub struct Vault {
    provider: Arc<dyn KeyProvider>,
    blind: hmac::Key,
    pseudonym: hmac::Key,
    record: hmac::Key,
    token: hmac::Key,
    registry: hmac::Key,
    cursor: DataKey,
    audit_seal: DataKey,
    audit_index: hmac::Key,
    audit_signing: Ed25519KeyPair,
    secrets: DataKey,
    /// MACs the erasure ledger and tags the shred keys as this directory's.
    erasure: hmac::Key,
    /// The shred keys and the erasure ledger beside the key material, once attached
    /// ([`Vault::with_erasure`]); without them, data keys are wrapped by the KEK directly.
    shred: Option<Shredder>,
}

const ROOT_CONTEXT: &[u8] = b"system-root";

impl Vault {
    /// Creates a fresh system root under the provider's current KEK. Returns the vault and the
    /// wrapped root, which the caller stores (it is useless without the KEK).
    pub fn create(provider: Arc<dyn KeyProvider>) -> Result<(Self, WrappedKey), VaultError> {
        let mut root = Zeroizing::new([0u8; 32]);
        random_bytes(&mut root[..])?;
        let kek = provider.current()?;
        let wrapped = WrappedKey { kek, key_version: 1, bytes: provider.wrap(kek, &root[..], ROOT_CONTEXT)? };
        Ok((Self::from_root(provider, &root[..])?, wrapped))
    }

    /// Opens the vault from its stored wrapped root.
    pub fn open(provider: Arc<dyn KeyProvider>, wrapped_root: &WrappedKey) -> Result<Self, VaultError> {
        let root = provider.unwrap(wrapped_root.kek, &wrapped_root.bytes, ROOT_CONTEXT)?;
        if root.len() != 32 {
            return Err(VaultError::Root("wrong length"));
        }
        Self::from_root(provider, &root)
    }

    fn from_root(provider: Arc<dyn KeyProvider>, root: &[u8]) -> Result<Self, VaultError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"brankas-root-v1").extract(root);
        let derive = |label: &[u8]| -> Result<Zeroizing<[u8; 32]>, VaultError> {
            let mut out = Zeroizing::new([0u8; 32]);
            let info = [label];
            prk.expand(&info, hkdf::HKDF_SHA256)?.fill(&mut out[..])?;
            Ok(out)
        };
        Ok(Self {
            blind: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"blind-index")?[..]),
            pseudonym: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"patient-pseudonym")?[..]),
            record: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"record-key")?[..]),
            token: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"access-token")?[..]),
            registry: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"client-registry")?[..]),
            cursor: DataKey::from_bytes(&derive(b"paging-cursor")?[..])?,
            audit_seal: DataKey::from_bytes(&derive(b"audit-log")?[..])?,
            audit_index: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"audit-index")?[..]),
            audit_signing: Ed25519KeyPair::from_seed_unchecked(&derive(b"audit-signing")?[..]).map_err(|_| VaultError::Crypto)?,
            secrets: DataKey::from_bytes(&derive(b"opaque-secret")?[..])?,
            erasure: hmac::Key::new(hmac::HMAC_SHA256, &derive(b"erasure-ledger")?[..]),
            shred: None,
            provider,
        })
    }

    /// Attaches the shred keys (`<base>.shred`) and the erasure ledger (`<base>.erasures`)
    /// kept with the key material (`base` is the key file): from then on new data keys are
    /// wrapped under their bucket's shred key, and partitions can be erased for good. Shred
    /// keys of another data directory at that path are refused.
    pub fn with_erasure(mut self, base: &std::path::Path) -> Result<Self, VaultError> {
        let owner = mac(&self.erasure, &[b"shred-owner"]);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &mac(&self.erasure, &[b"ledger-mac"]));
        self.shred = Some(Shredder::open(base, self.provider.clone(), key, owner)?);
        Ok(self)
    }

    fn shredder(&self) -> Result<&Shredder, VaultError> {
        self.shred.as_ref().ok_or_else(|| VaultError::Ledger("no shred keys are attached to this vault".into()))
    }

    /// The shred-key file, if attached.
    pub fn shred_path(&self) -> Option<&std::path::Path> {
        self.shred.as_ref().map(Shredder::path)
    }

    /// Begins erasing `partition` (see [`crate::Erasure`]).
    pub fn begin_erasure(&self, partition: &PartitionId) -> Result<Erasure<'_>, VaultError> {
        self.shredder()?.begin(partition)
    }

    /// Every completed erasure, verified (MAC chain, and against the shred keys: a truncated,
    /// removed, edited or replaced ledger is [`VaultError::Ledger`]). Empty without shred keys.
    pub fn erasure_ledger(&self) -> Result<Vec<ErasureRecord>, VaultError> {
        match &self.shred {
            Some(s) => s.ledger(),
            None => Ok(Vec::new()),
        }
    }

    /// Rewraps the shred keys under KEK `to` (key rotation; the data keys under them stay as
    /// they are). Returns how many were rewrapped.
    pub fn rewrap_shred_keys(&self, to: KekId) -> Result<usize, VaultError> {
        match &self.shred {
            Some(s) => s.rewrap_all(to),
            None => Ok(0),
        }
    }

    /// A data key still wrapped by a KEK directly (stored by an earlier release), wrapped
    /// under its bucket's shred key instead; `None` if it already is (or is erased).
    pub fn migrate_data_key(&self, partition: &PartitionId, wrapped: &WrappedKey) -> Result<Option<WrappedKey>, VaultError> {
        if !wrapped.is_kek_wrapped() {
            return Ok(None);
        }
        let raw = self.provider.unwrap(wrapped.kek, &wrapped.bytes, &dek_context(partition, wrapped.key_version))?;
        Ok(Some(self.shredder()?.wrap_dek(partition, wrapped.key_version, &raw)?))
    }

    /// The key provider.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// Rewraps the stored root under KEK `to` (key rotation), without changing the root.
    pub fn rewrap_root(&self, wrapped: &WrappedKey, to: KekId) -> Result<WrappedKey, VaultError> {
        let root = self.provider.unwrap(wrapped.kek, &wrapped.bytes, ROOT_CONTEXT)?;
        Ok(WrappedKey { kek: to, key_version: wrapped.key_version, bytes: self.provider.wrap(to, &root, ROOT_CONTEXT)? })
    }

    /// The partition of the patient with logical id `patient_id`.
    pub fn patient_partition(&self, patient_id: &str) -> PartitionId {
        PartitionId(mac(&self.pseudonym, &[b"patient", patient_id.as_bytes()]))
    }

    /// The partition of resources that are in no patient's compartment.
    pub fn system_partition(&self) -> PartitionId {
        PartitionId(mac(&self.pseudonym, &[SYSTEM_PARTITION_LABEL.as_bytes()]))
    }

    /// The opaque storage key of resource `resource_type`/`id`.
    pub fn record_key(&self, resource_type: &str, id: &str) -> RecordKey {
        RecordKey(mac(&self.record, &[resource_type.as_bytes(), id.as_bytes()]))
    }

    /// A blind-index term for an already normalised value in index `domain` (e.g. "identifier").
    /// Fields are length-prefixed, so ("ab","c") and ("a","bc") differ.
    pub fn blind_term(&self, domain: &str, parts: &[&str]) -> BlindTerm {
        let mut fields: Vec<&[u8]> = vec![domain.as_bytes()];
        fields.extend(parts.iter().map(|p| p.as_bytes()));
        BlindTerm(mac(&self.blind, &fields))
    }

    /// A fresh data key for `partition`, and its wrapped form to store.
    pub fn new_data_key(&self, partition: &PartitionId) -> Result<(DataKey, WrappedKey), VaultError> {
        let (key, raw) = DataKey::generate_with_bytes()?;
        let version = 1;
        if let Some(s) = &self.shred {
            return Ok((key, s.wrap_dek(partition, version, &raw[..])?));
        }
        let kek = self.provider.current()?;
        let bytes = self.provider.wrap(kek, &raw[..], &dek_context(partition, version))?;
        Ok((key, WrappedKey { kek, key_version: version, bytes }))
    }

    /// Unwraps a stored data key. Fails if it was wrapped for another partition; an erased
    /// partition's tombstone is [`VaultError::Erased`]; a key under a destroyed generation of
    /// its shred key is [`VaultError::Integrity`].
    pub fn open_data_key(&self, partition: &PartitionId, wrapped: &WrappedKey) -> Result<DataKey, VaultError> {
        let raw = match wrapped.kek {
            ERASED_KEK => return Err(VaultError::Erased),
            SHRED_KEK => self.shredder()?.unwrap_dek(partition, wrapped)?,
            kek => self.provider.unwrap(kek, &wrapped.bytes, &dek_context(partition, wrapped.key_version))?,
        };
        DataKey::from_bytes(&raw)
    }

    /// Rewraps a data key wrapped by a KEK under KEK `to`; the data key itself, and so all
    /// data sealed with it, stays the same.
    pub fn rewrap_data_key(&self, partition: &PartitionId, wrapped: &WrappedKey, to: KekId) -> Result<WrappedKey, VaultError> {
        if !wrapped.is_kek_wrapped() {
            return Err(VaultError::Integrity);
        }
        let ctx = dek_context(partition, wrapped.key_version);
        let raw = self.provider.unwrap(wrapped.kek, &wrapped.bytes, &ctx)?;
        Ok(WrappedKey { kek: to, key_version: wrapped.key_version, bytes: self.provider.wrap(to, &raw, &ctx)? })
    }

    /// MAC over a stored client registration, so that rows edited or added in the database
    /// (a reactivated client, an admin with a chosen secret) are refused.
    pub fn registry_mac(&self, data: &[u8]) -> [u8; 32] {
        mac(&self.registry, &[data])
    }

    /// MAC over an access token's signing input.
    pub fn token_mac(&self, data: &[u8]) -> [u8; 32] {
        mac(&self.token, &[data])
    }

    /// Seals a paging cursor so that links reveal nothing of the query behind them.
    pub fn seal_cursor(&self, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.cursor.seal_raw(b"cursor", plaintext)
    }

    /// Seals an audit record; `aad` binds it to its place in the log (position, time, patient
    /// pseudonym, actor tag), so a record moved, reordered or edited fails to open.
    pub fn seal_audit(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut ctx = b"audit-record".to_vec();
        ctx.extend_from_slice(aad);
        self.audit_seal.seal_raw(&ctx, plaintext)
    }

    /// Opens an audit record sealed by [`Vault::seal_audit`] with the same `aad`.
    pub fn open_audit(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let mut ctx = b"audit-record".to_vec();
        ctx.extend_from_slice(aad);
        self.audit_seal.open_raw(&ctx, sealed)
    }

    /// A keyed tag of an audit index value (e.g. a client id), so the log can be searched by
    /// actor without naming the actor in the clear.
    pub fn audit_tag(&self, domain: &str, value: &str) -> [u8; 32] {
        mac(&self.audit_index, &[domain.as_bytes(), value.as_bytes()])
    }

    /// The Ed25519 public key that verifies audit checkpoints.
    pub fn audit_public_key(&self) -> [u8; 32] {
        self.audit_signing.public_key().as_ref().try_into().expect("Ed25519 public keys are 32 bytes")
    }

    /// Signs an audit checkpoint with the audit key (Ed25519).
    pub fn audit_sign(&self, message: &[u8]) -> [u8; 64] {
        self.audit_signing.sign(message).as_ref().try_into().expect("Ed25519 signatures are 64 bytes")
    }

    /// Seals an opaque secret the server keeps in its data directory (e.g. the TLS private
    /// key, under the label `tls-key`), so a copy of the directory does not carry it.
    pub fn seal_secret(&self, label: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.secrets.seal_raw(&secret_context(label), plaintext)
    }

    /// Opens a secret sealed by [`Vault::seal_secret`] under the same label.
    pub fn open_secret(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.secrets.open_raw(&secret_context(label), sealed)
    }

    /// Opens a paging cursor; fails on anything not sealed by this server.
    pub fn open_cursor(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.cursor.open_raw(b"cursor", sealed)
    }
}

fn secret_context(label: &str) -> Vec<u8> {
    let mut c = b"opaque-secret".to_vec();
    c.extend_from_slice(&(label.len() as u64).to_be_bytes());
    c.extend_from_slice(label.as_bytes());
    c
}

pub(crate) fn dek_context(partition: &PartitionId, version: u32) -> Vec<u8> {
    let mut c = b"data-key".to_vec();
    c.extend_from_slice(&partition.0);
    c.extend_from_slice(&version.to_be_bytes());
    c
}

fn mac(key: &hmac::Key, fields: &[&[u8]]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    for f in fields {
        ctx.update(&(f.len() as u64).to_be_bytes());
        ctx.update(f);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyFile;

    fn vault() -> (tempfile::TempDir, Vault, WrappedKey) {
        let dir = tempfile::tempdir().unwrap();
        let kf = Arc::new(KeyFile::create(&dir.path().join("k.json")).unwrap());
        let (v, w) = Vault::create(kf).unwrap();
        (dir, v, w)
    }

    #[test]
    fn derived_values_are_stable_across_reopen() {
        let (dir, v, w) = vault();
        let kf = Arc::new(KeyFile::open(&dir.path().join("k.json")).unwrap());
        let v2 = Vault::open(kf, &w).unwrap();
        assert_eq!(v.patient_partition("p1"), v2.patient_partition("p1"));
        assert_eq!(v.blind_term("nik", &["3171"]), v2.blind_term("nik", &["3171"]));
        assert_ne!(v.blind_term("nik", &["3171"]), v.blind_term("phone", &["3171"]));
        assert_ne!(v.blind_term("x", &["ab", "c"]), v.blind_term("x", &["a", "bc"]));
        assert_ne!(v.patient_partition("p1"), v.system_partition());
    }

    #[test]
    fn secrets_open_only_under_their_label_and_vault() {
        let (dir, v, w) = vault();
        let sealed = v.seal_secret("tls-key", b"private key bytes").unwrap();
        assert!(!sealed.windows(7).any(|x| x == b"private"), "sealed, not encoded");
        assert_eq!(&*v.open_secret("tls-key", &sealed).unwrap(), b"private key bytes");
        assert!(v.open_secret("tls-keys", &sealed).is_err(), "bound to its label");
        let kf = Arc::new(KeyFile::open(&dir.path().join("k.json")).unwrap());
        assert_eq!(&*Vault::open(kf, &w).unwrap().open_secret("tls-key", &sealed).unwrap(), b"private key bytes");
        let (_d2, other, _) = vault();
        assert!(other.open_secret("tls-key", &sealed).is_err(), "another vault cannot open it");
    }

    #[test]
    fn data_key_bound_to_partition_and_survives_rotation() {
        let (_dir, v, root) = vault();
        let p = v.patient_partition("a");
        let q = v.patient_partition("b");
        let (k, w) = v.new_data_key(&p).unwrap();
        assert!(v.open_data_key(&q, &w).is_err());
        let rk = v.record_key("Patient", "a");
        let aad = crate::RecordAad { resource_type: "Patient", record: &rk, version: 1, partition: &p, dek_version: 1 };
        let sealed = k.seal(&aad, b"x").unwrap();
        let new = v.provider().rotate().unwrap();
        let w2 = v.rewrap_data_key(&p, &w, new).unwrap();
        assert_eq!(w2.kek, new);
        assert_eq!(&*v.open_data_key(&p, &w2).unwrap().open(&aad, &sealed).unwrap(), b"x");
        let root2 = v.rewrap_root(&root, new).unwrap();
        let v2 = Vault::open(v.provider().clone(), &root2).unwrap();
        assert_eq!(v2.patient_partition("a"), p);
        assert_eq!(WrappedKey::from_bytes(&root2.to_bytes()).unwrap(), root2);
    }

    #[test]
    fn cursor_sealing() {
        let (_d, v, _) = vault();
        let c = v.seal_cursor(b"state").unwrap();
        assert_eq!(&*v.open_cursor(&c).unwrap(), b"state");
        let mut bad = c.clone();
        bad[5] ^= 1;
        assert!(v.open_cursor(&bad).is_err());
    }
}
