//! Checking stored rows without serving them, for `brankas verify`: each version opens with its
//! partition's data key under its AAD and is the record its row names, and each attachment it
//! refers to exists and opens to its last segment. Nothing opened here leaves the engine but
//! the resource's type and id and its blind-index terms.

use brankas_store::{StoredDek, VersionRow};
use brankas_vault::BlindTerm;
use serde_json::Value;

use crate::{Engine, EngineError};

/// What a version that opened is.
#[derive(Debug)]
pub struct VerifiedRow {
    pub resource_type: String,
    pub id: String,
    /// The blind-index terms its content calls for (none for a delete marker, or for a type
    /// whose content is never indexed).
    pub terms: Vec<BlindTerm>,
    /// The size of the attachment it names, opened whole.
    pub attachment_bytes: Option<u64>,
}

/// Why a version did not verify. Names no content.
#[derive(Debug, PartialEq, Eq)]
pub enum RowProblem {
    /// The partition has no stored data key, or it does not open.
    NoDataKey,
    /// The sealed bytes do not authenticate under the row's AAD, or are not the record the
    /// row names.
    DoesNotOpen,
    /// The attachment the version names (`Binary/<id>`) is missing.
    AttachmentMissing(String),
    /// The attachment is there but fails to open (altered, cut, or another Binary's).
    AttachmentDamaged(String),
    /// The patient was erased: its data key is the tombstone an erasure leaves (crypto-
    /// shredding), so nothing of it opens, by design. Not a finding.
    Erased,
    /// The key provider or the blob store failed (not a finding about the data).
    Unavailable(String),
}

impl Engine {
    /// Opens a stored version as a read would and, if it is a Binary that names a blob, reads
    /// and authenticates every segment of the blob.
    pub fn verify_version(&self, row: &VersionRow) -> Result<VerifiedRow, RowProblem> {
        match self.data_key(&row.partition, false) {
            Ok(Some(_)) => {}
            Err(EngineError::Gone) => return Err(RowProblem::Erased),
            Ok(None) | Err(EngineError::Integrity) => return Err(RowProblem::NoDataKey),
            Err(e) => return Err(RowProblem::Unavailable(e.to_string())),
        }
        let s = match self.open_row(row, None) {
            Ok(s) => s,
            Err(EngineError::Gone) => return Err(RowProblem::Erased),
            Err(EngineError::Integrity) => return Err(RowProblem::DoesNotOpen),
            Err(e) => return Err(RowProblem::Unavailable(e.to_string())),
        };
        let id = s.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let terms = if row.deleted { Vec::new() } else { self.index_terms(&row.resource_type, &s.resource).unwrap_or_default() };
        let mut attachment_bytes = None;
        if row.resource_type == "Binary" && !row.deleted && self.blobs.is_some() {
            let name = format!("Binary/{id}");
            let reader = match self.binary_reader(&s) {
                Ok(r) => r,
                Err(EngineError::Integrity) => {
                    let missing = self.blob_absent(&s.resource);
                    return Err(if missing { RowProblem::AttachmentMissing(name) } else { RowProblem::AttachmentDamaged(name) });
                }
                Err(e) => return Err(RowProblem::Unavailable(e.to_string())),
            };
            if let Some(r) = reader {
                let mut at = 0u64;
                while at < r.size() {
                    match r.read_span(at, 4 << 20) {
                        Ok(p) if !p.is_empty() => at += p.len() as u64,
                        Ok(_) | Err(EngineError::Integrity) => return Err(RowProblem::AttachmentDamaged(name)),
                        Err(e) => return Err(RowProblem::Unavailable(e.to_string())),
                    }
                }
                attachment_bytes = Some(r.size());
            }
        }
        Ok(VerifiedRow { resource_type: row.resource_type.clone(), id, terms, attachment_bytes })
    }

    /// Checks a stored search entry against the version it names (`row`, read by the caller):
    /// it opens under the version's AAD, and is exactly the pruned copy of the record. An
    /// entry written under an earlier pruning rule is not used by searches and passes.
    pub fn verify_entry(&self, row: &VersionRow, entry: &[u8]) -> Result<(), RowProblem> {
        let facts = brankas_store::EntryRow {
            key: row.key,
            version: row.version,
            partition: row.partition,
            resource_type: row.resource_type.clone(),
            last_updated_us: row.last_updated_us,
            dek_version: row.dek_version,
            entry: Some(entry.to_vec()),
        };
        let problem = |e: EngineError| match e {
            EngineError::Gone => RowProblem::Erased,
            EngineError::Integrity => RowProblem::DoesNotOpen,
            e => RowProblem::Unavailable(e.to_string()),
        };
        let Some(entry) = self.open_entry(&facts).map_err(problem)? else { return Ok(()) };
        if row.deleted {
            return Err(RowProblem::DoesNotOpen);
        }
        // A version that does not open is reported as such; its entry cannot be compared.
        let Ok(full) = self.open_row(row, None) else { return Ok(()) };
        if crate::entry::entry_copy(self.registry, &row.resource_type, &full.resource) != entry.resource {
            return Err(RowProblem::DoesNotOpen);
        }
        Ok(())
    }

    /// Opens a partition's wrapped data key with the key provider.
    pub fn verify_data_key(&self, dek: &StoredDek) -> Result<(), RowProblem> {
        if dek.wrapped.is_erased() {
            return Err(RowProblem::Erased);
        }
        match self.vault.open_data_key(&dek.partition, &dek.wrapped) {
            Ok(_) => Ok(()),
            Err(brankas_vault::VaultError::Integrity) => Err(RowProblem::NoDataKey),
            Err(e) => Err(RowProblem::Unavailable(e.to_string())),
        }
    }
}
