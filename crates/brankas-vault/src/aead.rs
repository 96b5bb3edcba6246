//! Record sealing under a partition's data key.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{PartitionId, RecordKey, VaultError, random_bytes};

/// Format byte in front of every sealed record, so the format can evolve.
const FORMAT_V1: u8 = 1;
/// AAD domain of search entries (records use `brankas-record-v1`; same length, so the two
/// encodings never collide).
const ENTRY_DOMAIN: &[u8] = b"brankas-sentry-v1";

/// Bytes a sealed record adds to its plaintext: format byte, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// What a sealed record is bound to. Opening with any field different fails, so rows cannot
/// be swapped between records, versions or patients, or replayed under another key version.
/// The record is named by its [`RecordKey`] (a keyed hash of type and id), which the reader
/// re-derives from the id inside the plaintext to close the loop.
pub struct RecordAad<'a> {
    pub resource_type: &'a str,
    pub record: &'a RecordKey,
    pub version: u64,
    pub partition: &'a PartitionId,
    pub dek_version: u32,
}

impl RecordAad<'_> {
    fn encode(&self) -> Vec<u8> {
        self.encode_as(b"brankas-record-v1")
    }

    /// `domain` separates what is sealed for one record: the record itself, its search entry.
    fn encode_as(&self, domain: &[u8]) -> Vec<u8> {
        // Length-prefixed fields: no two different tuples encode to the same bytes.
        let mut v = Vec::with_capacity(96);
        v.extend_from_slice(domain);
        v.extend_from_slice(&(self.resource_type.len() as u32).to_be_bytes());
        v.extend_from_slice(self.resource_type.as_bytes());
        v.extend_from_slice(&self.record.0);
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.partition.0);
        v.extend_from_slice(&self.dek_version.to_be_bytes());
        v
    }
}

/// What a sealed list entry is bound to: the list it belongs to and its id there (both keyed
/// hashes, as the store holds them), and the partition and key version that seal it. An entry
/// copied under another list or id, or sealed by another partition's key, does not open. The
/// domain (`brankas-list-entry-v1`) differs from a record's, so neither opens as the other.
pub struct EntryAad<'a> {
    pub list: &'a [u8; 32],
    pub entry: &'a [u8; 32],
    pub partition: &'a PartitionId,
    pub dek_version: u32,
}

impl EntryAad<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(b"brankas-list-entry-v1");
        v.extend_from_slice(self.list);
        v.extend_from_slice(self.entry);
        v.extend_from_slice(&self.partition.0);
        v.extend_from_slice(&self.dek_version.to_be_bytes());
        v
    }
}

/// One partition's data key. Holds the key inside aws-lc; its bytes cannot be read back.
pub struct DataKey {
    key: LessSafeKey,
}

impl DataKey {
    /// A fresh random key, returned with its raw bytes for wrapping (zeroised on drop).
    pub(crate) fn generate_with_bytes() -> Result<(Self, Zeroizing<[u8; 32]>), VaultError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        random_bytes(&mut raw[..])?;
        Ok((Self::from_bytes(&raw[..])?, raw))
    }

    /// A fresh random key (tests and examples; the server creates keys through [`crate::Vault`]).
    pub fn generate() -> Result<Self, VaultError> {
        Ok(Self::generate_with_bytes()?.0)
    }

    /// The aws-lc key, for the sealing modes of this crate.
    pub(crate) fn key(&self) -> &LessSafeKey {
        &self.key
    }

    pub(crate) fn from_bytes(raw: &[u8]) -> Result<Self, VaultError> {
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, raw).map_err(|_| VaultError::Crypto)?;
        Ok(Self { key: LessSafeKey::new(unbound) })
    }

    /// Seals a record's bytes, bound to `aad`.
    pub fn seal(&self, aad: &RecordAad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seal_raw(&aad.encode(), plaintext)
    }

    /// Opens a sealed record; fails with [`VaultError::Integrity`] unless it was sealed by
    /// this key for exactly this `aad`.
    pub fn open(&self, aad: &RecordAad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.open_raw(&aad.encode(), sealed)
    }

    /// Seals a list entry's bytes, bound to `aad`.
    pub fn seal_list_entry(&self, aad: &EntryAad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seal_raw(&aad.encode(), plaintext)
    }

    /// Opens a sealed list entry; fails with [`VaultError::Integrity`] unless it was sealed by
    /// this key for exactly this `aad`.
    pub fn open_list_entry(&self, aad: &EntryAad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.open_raw(&aad.encode(), sealed)
    }

    /// Seals a record version's search entry (a pruned copy of it, see the engine's search),
    /// bound to the same record, version, partition and key version as the record, under a
    /// domain of its own: an entry never opens as a record, nor a record as an entry.
    pub fn seal_entry(&self, aad: &RecordAad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seal_raw(&aad.encode_as(ENTRY_DOMAIN), plaintext)
    }

    /// Opens a search entry sealed by [`DataKey::seal_entry`] for exactly this `aad`.
    pub fn open_entry(&self, aad: &RecordAad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.open_raw(&aad.encode_as(ENTRY_DOMAIN), sealed)
    }

    pub(crate) fn seal_raw(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self.key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[1 + NONCE_LEN..])?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    pub(crate) fn open_raw(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != FORMAT_V1 {
            return Err(VaultError::Integrity);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let len = self.key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf[..]).map_err(|_| VaultError::Integrity)?.len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad<'a>(p: &'a PartitionId, id: &'a str, version: u64) -> RecordAad<'a> {
        let record: &'static RecordKey = if id == "a" { &RecordKey([0xa; 32]) } else { &RecordKey([0xb; 32]) };
        RecordAad { resource_type: "Observation", record, version, partition: p, dek_version: 1 }
    }

    #[test]
    fn round_trip_and_binding() {
        let k = DataKey::generate().unwrap();
        let p = PartitionId([1; 32]);
        let q = PartitionId([2; 32]);
        let s = k.seal(&aad(&p, "a", 1), b"hello").unwrap();
        assert_eq!(&*k.open(&aad(&p, "a", 1), &s).unwrap(), b"hello");
        assert!(matches!(k.open(&aad(&p, "a", 2), &s), Err(VaultError::Integrity)));
        assert!(matches!(k.open(&aad(&p, "b", 1), &s), Err(VaultError::Integrity)));
        assert!(matches!(k.open(&aad(&q, "a", 1), &s), Err(VaultError::Integrity)));
        let other = DataKey::generate().unwrap();
        assert!(matches!(other.open(&aad(&p, "a", 1), &s), Err(VaultError::Integrity)));
    }

    #[test]
    fn list_entries_are_bound_to_their_list_and_id() {
        let k = DataKey::generate().unwrap();
        let p = PartitionId([1; 32]);
        let e = |list: &'static [u8; 32], entry: &'static [u8; 32]| EntryAad { list, entry, partition: &p, dek_version: 1 };
        let s = k.seal_list_entry(&e(&[1; 32], &[2; 32]), b"record key").unwrap();
        assert_eq!(&*k.open_list_entry(&e(&[1; 32], &[2; 32]), &s).unwrap(), b"record key");
        assert!(matches!(k.open_list_entry(&e(&[3; 32], &[2; 32]), &s), Err(VaultError::Integrity)), "moved to another list");
        assert!(matches!(k.open_list_entry(&e(&[1; 32], &[3; 32]), &s), Err(VaultError::Integrity)), "another entry id");
        let q = PartitionId([2; 32]);
        assert!(matches!(k.open_list_entry(&EntryAad { list: &[1; 32], entry: &[2; 32], partition: &q, dek_version: 1 }, &s), Err(VaultError::Integrity)));
        // Not a record, whatever the record's fields.
        let r = RecordAad { resource_type: "", record: &RecordKey([1; 32]), version: 0, partition: &p, dek_version: 1 };
        assert!(matches!(k.open(&r, &s), Err(VaultError::Integrity)));
    }

    #[test]
    fn entries_and_records_never_open_as_each_other() {
        let k = DataKey::generate().unwrap();
        let p = PartitionId([1; 32]);
        let e = k.seal_entry(&aad(&p, "a", 1), b"entry").unwrap();
        assert_eq!(&*k.open_entry(&aad(&p, "a", 1), &e).unwrap(), b"entry");
        assert!(matches!(k.open(&aad(&p, "a", 1), &e), Err(VaultError::Integrity)));
        assert!(matches!(k.open_entry(&aad(&p, "a", 2), &e), Err(VaultError::Integrity)));
        assert!(matches!(k.open_entry(&aad(&p, "b", 1), &e), Err(VaultError::Integrity)));
        let r = k.seal(&aad(&p, "a", 1), b"record").unwrap();
        assert!(matches!(k.open_entry(&aad(&p, "a", 1), &r), Err(VaultError::Integrity)));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let k = DataKey::generate().unwrap();
        let p = PartitionId([1; 32]);
        let s = k.seal(&aad(&p, "a", 1), b"some clinical text").unwrap();
        for i in 0..s.len() * 8 {
            let mut t = s.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(k.open(&aad(&p, "a", 1), &t).is_err(), "flip {i} undetected");
        }
        assert!(k.open(&aad(&p, "a", 1), &s[..s.len() - 1]).is_err());
        assert!(k.open(&aad(&p, "a", 1), &[]).is_err());
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let k = DataKey::generate().unwrap();
        let p = PartitionId([1; 32]);
        let msg = b"3171234567890123 Budi Santoso";
        let s = k.seal(&aad(&p, "a", 1), msg).unwrap();
        assert!(!s.windows(msg.len()).any(|w| w == msg));
    }
}
