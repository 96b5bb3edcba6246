//! Verification of the whole log: every record opens under its own position (so edits,
//! insertions and reorderings fail exactly where they are), positions have no gaps, the stored
//! subtree hashes and head agree with the records, every signed checkpoint's tree head equals
//! the one recomputed from the records, and no checkpoint (stored, or given from outside)
//! names more records than the log holds.

use brankas_store::{AuditRow, Store};
use brankas_vault::Vault;

use crate::archive::{Archive, Damaged, Segment, SegmentReader, check_note, hex};
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
    /// The first position whose record was checked: 0, or where the hot database's records
    /// begin when older ones were archived and the archive was not given.
    pub first_checked: u64,
    /// Records the hot database no longer holds (archived before this position).
    pub archived: u64,
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
    #[error("the mark saying the records before position {first} were archived is not signed by this log's key or does not match the stored subtree hashes")]
    BadArchiveMark { first: u64 },
    #[error("archive segment {segment} is damaged at position {position}: the record there cannot be read")]
    ArchiveDamaged { segment: String, position: u64 },
    #[error("archive segment {segment} does not match the signed note that closes it (its bytes or range differ)")]
    ArchiveMismatch { segment: String },
    #[error("reading the log failed: {0}")]
    Read(String),
}

const PAGE: usize = 8192;

/// Verifies the whole log; `external` is a signed checkpoint kept outside the database (e.g.
/// published earlier), which the log must still contain.
pub fn verify(store: &dyn Store, vault: &Vault, external: Option<&str>) -> Result<VerifyReport, VerifyFailure> {
    verify_with(store, vault, external, None)
}

/// [`verify`] with the archive of the records the hot database no longer holds: the archived
/// records and the held ones are verified as one log from position 0. Without an archive
/// (or an empty one) a log whose older records were archived is verified from where its held
/// records begin, from the signed mark there ([`VerifyReport::first_checked`]).
pub fn verify_with(store: &dyn Store, vault: &Vault, external: Option<&str>, archive: Option<&Archive>) -> Result<VerifyReport, VerifyFailure> {
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
    let (held, held_frontier) = crate::archive::held_start(store, vault)?;
    let mut w = Walk { vault, checkpoints: &checkpoints, next_cp: 0, frontier: Frontier::default(), nodes: Vec::new(), at: 0 };
    match archive.filter(|a| !a.segments.is_empty()) {
        Some(a) => {
            for seg in &a.segments {
                w.segment(seg)?;
            }
            if w.at < held {
                return Err(VerifyFailure::Missing { position: w.at, found: held });
            }
        }
        None => {
            // Checkpoints inside the archived part cannot be checked without its records.
            (w.frontier, w.at) = (held_frontier, held);
            while w.checkpoints.get(w.next_cp).is_some_and(|c| c.size < held) {
                w.next_cp += 1;
            }
        }
    }
    let first_checked = if archive.is_some_and(|a| !a.segments.is_empty()) { 0 } else { held };
    w.passed()?;
    loop {
        let rows = store.audit_rows(w.at, PAGE).map_err(rd)?;
        for row in &rows {
            w.push(row)?;
        }
        check_nodes(store, &mut w.nodes)?;
        if rows.len() < PAGE {
            break;
        }
    }
    let at = w.at;
    if let Some(cp) = checkpoints.get(w.next_cp) {
        return Err(VerifyFailure::Truncated { size: cp.size, records: at });
    }
    match store.audit_head().map_err(rd)? {
        None if at == 0 => {}
        Some(h) if h.size == at && Frontier::decode(&h.frontier).as_ref() == Some(&w.frontier) => {}
        Some(h) if h.size > at => return Err(VerifyFailure::Truncated { size: h.size, records: at }),
        _ => return Err(VerifyFailure::BadHead),
    }
    Ok(VerifyReport {
        records: at,
        checkpoints: checkpoints.len() as u64,
        root: w.frontier.root(),
        signed_size: checkpoints.last().map_or(0, |c| c.size),
        first_checked,
        archived: held,
    })
}

/// The walk over the records in order: each must come at its position and authenticate
/// there; the tree is extended and compared with every signed checkpoint it passes.
struct Walk<'a> {
    vault: &'a Vault,
    checkpoints: &'a [Checkpoint],
    next_cp: usize,
    frontier: Frontier,
    nodes: Vec<(u8, u64, Hash)>,
    at: u64,
}

impl Walk<'_> {
    fn push(&mut self, row: &AuditRow) -> Result<(), VerifyFailure> {
        if row.seq != self.at {
            return Err(VerifyFailure::Missing { position: self.at, found: row.seq });
        }
        let ctx = row_context(row.seq, row.time_us, row.partition.as_ref(), &row.actor);
        if self.vault.open_audit(&ctx, &row.sealed).is_err() {
            return Err(VerifyFailure::Altered { position: self.at });
        }
        for (level, index, hash) in self.frontier.push(leaf_of(row)) {
            if STORED_LEVELS.contains(&level) {
                self.nodes.push((level, index, hash));
            }
        }
        self.at += 1;
        self.passed()
    }

    /// Compares the tree head with the checkpoints of the size reached.
    fn passed(&mut self) -> Result<(), VerifyFailure> {
        while let Some(cp) = self.checkpoints.get(self.next_cp) {
            if cp.size > self.at {
                break;
            }
            if cp.size > 0 && self.frontier.root() != cp.root {
                return Err(VerifyFailure::CheckpointMismatch { size: cp.size });
            }
            self.next_cp += 1;
        }
        Ok(())
    }

    /// One archive segment: its note signed and naming its range and bytes, every record in
    /// it at its position, the tree head at its end equal to the note's.
    fn segment(&mut self, seg: &Segment) -> Result<(), VerifyFailure> {
        let m = &seg.manifest;
        let name = seg.path.display().to_string();
        let mismatch = || VerifyFailure::ArchiveMismatch { segment: name.clone() };
        let (cp, from, sha) = check_note(&m.note, self.vault, m.to).ok_or_else(mismatch)?;
        if from != m.from || from != self.at {
            return Err(mismatch());
        }
        let mut r = SegmentReader::open(&seg.path).map_err(|_| VerifyFailure::ArchiveDamaged { segment: name.clone(), position: self.at })?;
        loop {
            match r.next_row() {
                Ok(Some(row)) => self.push(&row)?,
                Ok(None) => break,
                Err(Damaged) => return Err(VerifyFailure::ArchiveDamaged { segment: name.clone(), position: self.at }),
            }
        }
        if self.at != m.to {
            return Err(VerifyFailure::ArchiveDamaged { segment: name.clone(), position: self.at });
        }
        if hex(&r.sha256()) != sha {
            return Err(mismatch());
        }
        if self.frontier.root() != cp.root {
            return Err(VerifyFailure::CheckpointMismatch { size: m.to });
        }
        Ok(())
    }
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
