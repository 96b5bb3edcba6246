//! Sealed search entries: what a search inside one patient decides on without opening every
//! record whole.
//!
//! Each current version of a resource carries, in the same commit, an *entry*: a pruned copy
//! of the resource holding only `resourceType`, `id`, `meta` (labels, writer stamps,
//! `lastUpdated`, tags) and the top-level elements the type's search parameters can read
//! ([`brankas_search::Registry::search_reads`]), plus the few the disclosure reads
//! ([`brankas_audit::breach::category_of`], [`crate::Engine::audit_subject`]). Because it is
//! a copy of those elements, `Query::matches`, `Query::compare`, the scope restrictions and
//! `RecordView::permits` run on it unchanged and decide exactly as on the whole resource (a
//! property test compares the two). A search opens the entries, filters, sorts and counts
//! them, and opens whole only the records of the page it returns.
//!
//! At rest an entry is sealed under the patient's data key, bound like its record to type,
//! record key, version, partition and key version, under an AAD domain of its own
//! ([`brankas_vault::DataKey::seal_entry`]): it reveals nothing but its size. It is not
//! trusted beyond its seal: a record served from it is opened whole and its entry must be
//! exactly the pruned copy of what is served, or the search fails with
//! [`EngineError::Integrity`].
//!
//! The plaintext starts with a fingerprint of the pruning rule for the type (format and the
//! element names): an entry written under another rule (a release whose search parameters
//! read other elements) is not used, and its record is opened whole, as is a record written
//! before entries existed.

use brankas_search::Registry;
use brankas_store::EntryRow;
use brankas_vault::RecordAad;
use serde_json::{Map, Value};

use crate::{Engine, EngineError, Result, Stored};

/// Bumped whenever the pruning rule of [`prune`] changes in a way the registry does not show.
const FORMAT: u8 = 1;

/// Top-level elements kept besides those the search parameters read: the disclosure's
/// categories (`code`, `component`, `modality`) and subject (`securityContext`).
const ALSO_KEPT: &[&str] = &["resourceType", "id", "meta", "code", "component", "modality", "securityContext"];

/// The pruned copy of `resource` (of type `rtype`) that search decides on.
pub(crate) fn prune(registry: &Registry, rtype: &str, resource: &Value) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let mut out = Map::new();
    for (k, v) in obj {
        if k == "photo" && rtype == "Patient" {
            // Only whether there are photos matters (a disclosure category, and redaction).
            if v.as_array().is_some_and(|a| !a.is_empty()) {
                out.insert(k.clone(), Value::Array(vec![Value::Object(Map::new())]));
            }
        } else if ALSO_KEPT.contains(&k.as_str()) || registry.search_reads(rtype, k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The fingerprint of the pruning rule for `rtype` (FNV-1a over the format and the names of
/// the elements kept of a resource holding every element the type's parameters name).
pub(crate) fn fingerprint(registry: &Registry, rtype: &str) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(&[FORMAT]);
    eat(rtype.as_bytes());
    let mut names: Vec<&str> = registry.search_read_names(rtype).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_else(|| vec!["*"]);
    names.sort_unstable();
    for n in names {
        eat(n.as_bytes());
    }
    h.to_be_bytes()
}

impl Engine {
    /// Seals the entry of a version about to be written (same AAD as its record).
    pub(crate) fn seal_entry(&self, key: &brankas_vault::DataKey, aad: &RecordAad<'_>, resource: &Value) -> Result<Vec<u8>> {
        let mut plain = fingerprint(self.registry, aad.resource_type).to_vec();
        serde_json::to_writer(&mut plain, &prune(self.registry, aad.resource_type, resource)).map_err(|_| EngineError::Integrity)?;
        Ok(key.seal_entry(aad, &plain)?)
    }

    /// Opens a current row's entry as a pruned [`Stored`]; `None` when the row has no usable
    /// entry (written before entries, under another pruning rule, or erased). An entry that
    /// does not open under its row's AAD, or names another record, is an integrity error.
    pub(crate) fn open_entry(&self, row: &EntryRow) -> Result<Option<Stored>> {
        let Some(sealed) = &row.entry else { return Ok(None) };
        let key = self.data_key(&row.partition, false)?.ok_or(EngineError::Integrity)?;
        let aad = RecordAad { resource_type: &row.resource_type, record: &row.key, version: row.version, partition: &row.partition, dek_version: row.dek_version };
        let plain = key.open_entry(&aad, sealed)?;
        self.opens[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if plain.len() < 8 || plain[..8] != fingerprint(self.registry, &row.resource_type) {
            return Ok(None);
        }
        let json = plain[8..].to_vec();
        let resource: Value = serde_json::from_slice(&json).map_err(|_| EngineError::Integrity)?;
        let id = resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        if resource.get("resourceType").and_then(Value::as_str) != Some(row.resource_type.as_str()) || self.vault.record_key(&row.resource_type, id) != row.key {
            return Err(EngineError::Integrity);
        }
        Ok(Some(Stored { resource, version: row.version, last_updated_us: row.last_updated_us, deleted: false, partition: row.partition, entry: Some(json) }))
    }

    /// A current row as search sees it first: its entry, or the whole record when it has none.
    pub(crate) fn open_for_search(&self, row: &EntryRow) -> Result<Stored> {
        if let Some(s) = self.open_entry(row)? {
            return Ok(s);
        }
        let full = self.store.version(&row.key, row.version)?.ok_or(EngineError::Integrity)?;
        if full.partition != row.partition || full.resource_type != row.resource_type || full.deleted {
            return Err(EngineError::Integrity);
        }
        self.open_row(&full, None)
    }

    /// The whole record behind a [`Stored`] made from an entry (others are returned as they
    /// are), redacted for `who` as the entry was. The entry must be exactly the pruned copy
    /// of the record served: every decision taken on it is then the one the record gets.
    pub(crate) fn complete(&self, who: &brankas_auth::Principal, s: Stored) -> Result<Stored> {
        let Some(json) = s.entry else { return Ok(s) };
        let rtype = s.resource.get("resourceType").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        let id = s.resource.get("id").and_then(Value::as_str).ok_or(EngineError::Integrity)?;
        let key = self.vault.record_key(rtype, id);
        let row = self.store.version(&key, s.version)?.ok_or(EngineError::Integrity)?;
        if row.partition != s.partition || row.deleted {
            return Err(EngineError::Integrity);
        }
        let mut full = self.open_row(&row, Some((rtype, id)))?;
        let entry: Value = serde_json::from_slice(&json).map_err(|_| EngineError::Integrity)?;
        if prune(self.registry, rtype, &full.resource) != entry {
            return Err(EngineError::Integrity);
        }
        // The gates removed the photos from the entry exactly when they are to be removed
        // from the record (`RecordView::redact`).
        if entry.get("photo").is_some() && s.resource.get("photo").is_none() {
            crate::access::redact_photo(who, rtype, &mut full.resource);
        }
        Ok(full)
    }

    /// Records opened since start: `(whole records, search entries)` (for metrics and tests).
    pub fn open_counts(&self) -> (u64, u64) {
        (self.opens[0].load(std::sync::atomic::Ordering::Relaxed), self.opens[1].load(std::sync::atomic::Ordering::Relaxed))
    }
}
