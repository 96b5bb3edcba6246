//! The audit log of Brankas (invariants 6 and 8 of the threat model).
//!
//! Every request that reads, finds, writes, deletes or exports patient data, every denial,
//! break-glass, token issuance, client administration and read of the log itself becomes one
//! [`AuditEntry`] per patient touched (IHE Basic Audit Log Patterns). The [`AuditLog`] seals
//! each under the vault's audit key, bound to its position, time, patient pseudonym and actor
//! tag, appends them in group commits, and answers the caller only once they are durable: the
//! HTTP layer releases a response only after that (fail closed). A write's records go first:
//! [`AuditLog::record_ahead`] returns the [`WriteAhead`] proof the engine's store commit
//! requires, so no write is committed without its record.
//!
//! The records are the leaves of an RFC 6962 Merkle tree ([`merkle`]); the log signs a
//! checkpoint (size and tree head, a C2SP signed note, Ed25519; [`note`]) at least every
//! second while records arrive. [`verify()`] walks the whole log and names the first position
//! that was edited, removed, inserted, reordered or truncated behind a known checkpoint.
//!
//! *Architecture invariant:* records name patients by resource id and pseudonym only, never by
//! identity data, and search requests by parameter names only (values may be NIKs or names).
//! The stored bytes reveal positions, times, patient pseudonyms and keyed actor tags; the
//! content is sealed.

pub mod archive;
pub mod breach;
mod codec;
mod entry;
mod log;
pub mod merkle;
pub mod note;
mod verify;

pub use entry::{AuditEntry, Outcome};
pub use log::{AppendHealth, AuditError, AuditLog, NewRecord, Opened, Proof, Receipt, WriteAhead, archived_from, head, tree_root};
pub use verify::{VerifyFailure, VerifyReport, verify, verify_with};

/// The log's origin line in checkpoints: names this deployment's log by its key.
pub fn origin(public_key: &[u8; 32]) -> String {
    let h = brankas_vault::sha256(public_key);
    format!("brankas-audit/{}", h[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The authenticated bytes of a stored record except its sealed body: position, time,
/// partition (or none) and actor tag, length-prefixed where variable.
pub(crate) fn row_context(seq: u64, time_us: i64, partition: Option<&brankas_store::PartitionId>, actor: &[u8; 32]) -> Vec<u8> {
    let mut c = Vec::with_capacity(8 + 8 + 33 + 32);
    c.extend_from_slice(&seq.to_be_bytes());
    c.extend_from_slice(&time_us.to_be_bytes());
    match partition {
        Some(p) => {
            c.push(1);
            c.extend_from_slice(&p.0);
        }
        None => c.push(0),
    }
    c.extend_from_slice(actor);
    c
}

/// The Merkle leaf of a stored record: its context and its sealed body.
pub(crate) fn leaf_of(row: &brankas_store::AuditRow) -> merkle::Hash {
    let mut d = row_context(row.seq, row.time_us, row.partition.as_ref(), &row.actor);
    d.extend_from_slice(&(row.sealed.len() as u64).to_be_bytes());
    d.extend_from_slice(&row.sealed);
    merkle::leaf_hash(&d)
}
