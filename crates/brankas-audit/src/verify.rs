//! Verification of the whole log: every record opens under its own position (so edits,
//! insertions and reorderings fail exactly where they are), positions have no gaps, the stored
//! subtree hashes and head agree with the records, every signed checkpoint's tree head equals
//! the one recomputed from the records, and no checkpoint (stored, or given from outside)
//! names more records than the log holds.

use brankas_store::Store;
use brankas_vault::Vault;

use crate::merkle::{Frontier, Hash, STORED_LEVELS};
use crate::note::Checkpoint;
use crate::{leaf_of, row_context};

/// What a verification of an intact log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub checkpoints: u64,
    pub root: Hash,
    /// Size of the newest signed checkpoint.
    pub signed_size: u64,
}

/// The first thing found wrong, with the position it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    #[error("record {position} is missing (positions jump to {found})")]
    Missing { position: u64, found: u64 },
    #[error("record {position} was altered, moved or inserted: it does not authenticate at its position")]
    Altered { position: u64 },
    #[error("the log was truncated: a signed checkpoint names {size} records, the log holds {records}; the first missing position is {records}")]
    Truncated { size: u64, records: u64 },
    #[error("the records up to position {} do not match the signed checkpoint of size {size}", size - 1)]
    CheckpointMismatch { size: u64 },
    #[error("the checkpoint stored for size {size} is not validly signed by this log's key")]
    BadCheckpoint { size: u64 },
    #[error("the stored subtree hash at level {level}, index {index} does not match the records")]
    BadNode { level: u8, index: u64 },
    #[error("the stored head does not match the records")]
    BadHead,
    #[error("the given checkpoint is not a checkpoint of this log signed by its key")]
    ForeignCheckpoint,
    #[error("reading the log failed: {0}")]
    Read(String),
}

const PAGE: usize = 8192;

/// Verifies the whole log; `external` is a signed checkpoint kept outside the database (e.g.
/// published earlier), which the log must still contain.
pub fn verify(store: &dyn Store, vault: &Vault, external: Option<&str>) -> Result<VerifyReport, VerifyFailure> {
    let rd = |e: brankas_store::StoreError| VerifyFailure::Read(e.to_string());
    let pk = vault.audit_public_key();
    let origin = crate::origin(&pk);
    // Signed checkpoints, by size; each must verify.
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut from = 0;
    loop {
        let page = store.audit_checkpoints(from, PAGE).map_err(rd)?;
        for row in &page {
            let cp = Checkpoint::verify(&row.note, Some(&origin), &pk).map_err(|_| VerifyFailure::BadCheckpoint { size: row.size })?;
            if cp.size != row.size {
                return Err(VerifyFailure::BadCheckpoint { size: row.size });
            }
            checkpoints.push(cp);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.size + 1,
            _ => break,
        }
    }
    if let Some(note) = external {
        let cp = Checkpoint::verify(note, Some(&origin), &pk).map_err(|_| VerifyFailure::ForeignCheckpoint)?;
        checkpoints.push(cp);
        checkpoints.sort_by_key(|c| c.size);
    }
    let mut next_cp = checkpoints.iter().peekable();
    while next_cp.peek().is_some_and(|c| c.size == 0) {
        next_cp.next();
    }
    let mut frontier = Frontier::default();
    let mut nodes: Vec<(u8, u64, Hash)> = Vec::new();
    let mut at = 0u64;
    loop {
        let rows = store.audit_rows(at, PAGE).map_err(rd)?;
        for row in &rows {
            if row.seq != at {
                return Err(VerifyFailure::Missing { position: at, found: row.seq });
            }
            let ctx = row_context(row.seq, row.time_us, row.partition.as_ref(), &row.actor);
            if vault.open_audit(&ctx, &row.sealed).is_err() {
                return Err(VerifyFailure::Altered { position: at });
            }
            for (level, index, hash) in frontier.push(leaf_of(row)) {
                if STORED_LEVELS.contains(&level) {
                    nodes.push((level, index, hash));
                }
            }
            at += 1;
            while let Some(cp) = next_cp.peek() {
                if cp.size > at {
                    break;
                }
                if frontier.root() != cp.root {
                    return Err(VerifyFailure::CheckpointMismatch { size: cp.size });
                }
                next_cp.next();
            }
        }
        check_nodes(store, &mut nodes)?;
        if rows.len() < PAGE {
            break;
        }
    }
    if let Some(cp) = next_cp.next() {
        return Err(VerifyFailure::Truncated { size: cp.size, records: at });
    }
    match store.audit_head().map_err(rd)? {
        None if at == 0 => {}
        Some(h) if h.size == at && Frontier::decode(&h.frontier).as_ref() == Some(&frontier) => {}
        Some(h) if h.size > at => return Err(VerifyFailure::Truncated { size: h.size, records: at }),
        _ => return Err(VerifyFailure::BadHead),
    }
    Ok(VerifyReport { records: at, checkpoints: checkpoints.len() as u64, root: frontier.root(), signed_size: checkpoints.last().map_or(0, |c| c.size) })
}

/// Compares recomputed subtree hashes with the stored ones.
fn check_nodes(store: &dyn Store, nodes: &mut Vec<(u8, u64, Hash)>) -> Result<(), VerifyFailure> {
    for &level in &STORED_LEVELS {
        let mine: Vec<&(u8, u64, Hash)> = nodes.iter().filter(|n| n.0 == level).collect();
        let Some(first) = mine.first() else { continue };
        let stored = store.audit_nodes(level, first.1, mine.len()).map_err(|e| VerifyFailure::Read(e.to_string()))?;
        for (i, n) in mine.iter().enumerate() {
            if stored.get(i).is_none_or(|(idx, h)| *idx != n.1 || *h != n.2) {
                return Err(VerifyFailure::BadNode { level, index: n.1 });
            }
        }
    }
    nodes.clear();
    Ok(())
}
