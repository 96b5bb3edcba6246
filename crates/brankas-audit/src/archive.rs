//! Archiving the old part of the log: records before a cut leave the hot database for a
//! segment file, and [`crate::verify_with`] still proves the log whole from the archive.
//!
//! A segment is two files in the archive directory, named by the positions they hold:
//!
//! - `audit-<from>-<to>.seg`: the sealed records exactly as stored (position, time, partition,
//!   actor tag, sealed bytes), after a magic line.
//! - `audit-<from>-<to>.json`: the manifest: range, count, times, SHA-256 and size of the
//!   `.seg` file, the Merkle frontier at both ends, and the **archive note**: a checkpoint of
//!   size `to` signed by the audit key, with one extension line
//!   `brankas-archive <from> <to> <sha256 of the .seg file>`.
//!
//! The cut is a multiple of 256 (the level of the smallest stored subtree), no later than a
//! signed checkpoint, and the records up to that checkpoint are authenticated and rehashed to
//! its tree head before anything is written: only records a signed checkpoint proves leave.
//! The hot database keeps every stored subtree hash, so tree heads, proofs of newer records and
//! the frontier at the cut come from it without the archived records, and it keeps the
//! archive note as the mark of where its records begin: a verification without the archive
//! starts there from a signed statement, and one with it checks each segment against its note.
//!
//! Order of work, so a crash at any point loses nothing: the segment is written under
//! temporary names, synced, renamed and the directory synced; the caller audits the act; only
//! then are the rows deleted ([`release`]).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use brankas_store::{AuditRow, PartitionId, Store};
use brankas_vault::Vault;
use serde::{Deserialize, Serialize};

use crate::log::StoreSource;
use crate::merkle::{Frontier, Hash};
use crate::note::Checkpoint;
use crate::{leaf_of, row_context};

/// The first bytes of a segment file.
const MAGIC: &[u8] = b"brankas-audit-segment 1\n";
/// The manifest's format name.
const FORMAT: &str = "brankas-audit-segment/1";
/// Cuts fall on multiples of this (2^8: the smallest stored subtree).
pub const ALIGN: u64 = 256;
const PAGE: usize = 8192;

/// Errors of archiving. None carries record content.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Io(String),
    #[error("the audit log does not verify up to the checkpoint the archive would rely on: {0}")]
    Log(#[from] crate::VerifyFailure),
    #[error("the archive manifest {0} is not a segment manifest of this log")]
    Manifest(String),
    #[error("the archive segments do not follow each other: {0}")]
    Gap(String),
}

fn io(what: &str, p: &Path, e: std::io::Error) -> ArchiveError {
    ArchiveError::Io(format!("{what} {}: {e}", p.display()))
}

/// A segment's manifest (`audit-<from>-<to>.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    pub origin: String,
    /// First position held and the position after the last.
    pub from: u64,
    pub to: u64,
    pub records: u64,
    pub first_time_us: i64,
    pub last_time_us: i64,
    /// Size and SHA-256 (hex) of the `.seg` file.
    pub bytes: u64,
    pub sha256: String,
    /// [`Frontier::encode`] (hex) at `from` and at `to`.
    pub frontier_from: String,
    pub frontier_to: String,
    /// The archive note: a checkpoint of size `to`, with the extension line naming the range
    /// and the file's SHA-256, signed by the audit key.
    pub note: String,
}

/// A segment on disk: its manifest and the path of its records.
#[derive(Clone, Debug)]
pub struct Segment {
    pub manifest: Manifest,
    pub path: PathBuf,
}

impl Segment {
    /// The file name stem of the segment of `[from, to)`.
    pub fn stem(from: u64, to: u64) -> String {
        format!("audit-{from:016}-{to:016}")
    }
}

/// The archive: segments from one or more directories, in order of position.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    pub segments: Vec<Segment>,
}

impl Archive {
    /// Reads every segment manifest (`audit-*.json`) in `dirs`. The segments must follow each
    /// other from position 0 without gap or overlap.
    pub fn open(dirs: &[PathBuf]) -> Result<Archive, ArchiveError> {
        let mut segments = Vec::new();
        for d in dirs {
            let entries = std::fs::read_dir(d).map_err(|e| io("reading", d, e))?;
            for e in entries {
                let p = e.map_err(|e| io("reading", d, e))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !(name.starts_with("audit-") && name.ends_with(".json")) {
                    continue;
                }
                let bytes = std::fs::read(&p).map_err(|e| io("reading", &p, e))?;
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|_| ArchiveError::Manifest(p.display().to_string()))?;
                if manifest.format != FORMAT || manifest.to < manifest.from {
                    return Err(ArchiveError::Manifest(p.display().to_string()));
                }
                segments.push(Segment { path: p.with_extension("seg"), manifest });
            }
        }
        segments.sort_by_key(|s| s.manifest.from);
        let mut at = 0;
        for s in &segments {
            if s.manifest.from != at {
                return Err(ArchiveError::Gap(format!("positions {at} to {} are in no segment", s.manifest.from.max(at + 1) - 1)));
            }
            at = s.manifest.to;
        }
        Ok(Archive { segments })
    }

    /// The position after the last archived record (0 when empty).
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.manifest.to)
    }
}

/// What one archive run did.
#[derive(Clone, Debug, Serialize)]
pub struct Archived {
    pub from: u64,
    pub to: u64,
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
    pub segment: Option<PathBuf>,
    /// The signed checkpoint the records were proven against before they were written out.
    pub proven_by_checkpoint: u64,
    #[serde(skip)]
    pub note: String,
}

/// The parsed extension line of an archive note: `(from, to, sha256 hex)`.
pub(crate) fn note_range(extensions: &[String]) -> Option<(u64, u64, String)> {
    let [line] = extensions else { return None };
    let mut w = line.split(' ');
    let (Some("brankas-archive"), Some(from), Some(to), Some(sha), None) = (w.next(), w.next(), w.next(), w.next(), w.next()) else {
        return None;
    };
    if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some((from.parse().ok()?, to.parse().ok()?, sha.to_ascii_lowercase()))
}

/// Checks an archive note: signed by this log's key, for `to`, naming a range that ends there.
pub(crate) fn check_note(note: &str, vault: &Vault, to: u64) -> Option<(Checkpoint, u64, String)> {
    let pk = vault.audit_public_key();
    let (cp, ext) = Checkpoint::verify_extended(note, Some(&crate::origin(&pk)), &pk).ok()?;
    let (from, end, sha) = note_range(&ext)?;
    (cp.size == to && end == to && from <= to).then_some((cp, from, sha))
}

/// Where the held records begin and the frontier there, checked against the mark's signed note.
pub(crate) fn held_start(store: &dyn Store, vault: &Vault) -> Result<(u64, Frontier), crate::VerifyFailure> {
    let rd = |e: brankas_store::StoreError| crate::VerifyFailure::Read(e.to_string());
    let Some((first, note)) = store.audit_archived().map_err(rd)? else { return Ok((0, Frontier::default())) };
    let (cp, _, _) = check_note(&note, vault, first).ok_or(crate::VerifyFailure::BadArchiveMark { first })?;
    let frontier = Frontier::at(&mut StoreSource { store }, first).map_err(|_| crate::VerifyFailure::BadArchiveMark { first })?;
    if frontier.root() != cp.root {
        return Err(crate::VerifyFailure::BadArchiveMark { first });
    }
    Ok((first, frontier))
}

/// Writes the records before `up_to` (lowered to a multiple of [`ALIGN`] and to the newest
/// signed checkpoint) that the hot database still holds into a segment in `out`, after proving
/// them against a signed checkpoint. Deletes nothing: see [`release`].
pub fn write_segment(store: &dyn Store, vault: &Vault, up_to: u64, out: &Path) -> Result<Archived, ArchiveError> {
    let rd = |e: brankas_store::StoreError| ArchiveError::Io(format!("reading the audit log: {e}"));
    let (from, mut frontier) = held_start(store, vault)?;
    let latest = store.audit_latest_checkpoint().map_err(rd)?.map_or(0, |c| c.size);
    let to = up_to.min(latest) / ALIGN * ALIGN;
    if to <= from {
        return Ok(Archived { from, to: from, records: 0, bytes: 0, sha256: String::new(), segment: None, proven_by_checkpoint: 0, note: String::new() });
    }
    // The first signed checkpoint at or after the cut: the records up to it are rehashed to
    // its tree head, which proves the frontier at `from` and every record written out.
    let pk = vault.audit_public_key();
    let origin = crate::origin(&pk);
    let row = store.audit_checkpoints(to, 1).map_err(rd)?.into_iter().next().ok_or(crate::VerifyFailure::Truncated { size: to, records: latest })?;
    let proof = Checkpoint::verify(&row.note, Some(&origin), &pk).map_err(|_| crate::VerifyFailure::BadCheckpoint { size: row.size })?;
    std::fs::create_dir_all(out).map_err(|e| io("creating", out, e))?;
    let stem = Segment::stem(from, to);
    let (seg_tmp, seg_path) = (out.join(format!(".{stem}.seg.tmp")), out.join(format!("{stem}.seg")));
    let file = create_private(&seg_tmp).map_err(|e| io("creating", &seg_tmp, e))?;
    let mut w = HashingWriter { inner: BufWriter::new(file), sha: digest::Context::new(&digest::SHA256), bytes: 0 };
    w.write_all(MAGIC).map_err(|e| io("writing", &seg_tmp, e))?;
    let frontier_from = frontier.encode();
    let mut frontier_to = None;
    let (mut first_time, mut last_time) = (0i64, 0i64);
    let mut at = from;
    while at < proof.size {
        let rows = store.audit_rows(at, PAGE.min((proof.size - at) as usize)).map_err(rd)?;
        if rows.is_empty() {
            return Err(crate::VerifyFailure::Missing { position: at, found: at }.into());
        }
        for r in &rows {
            if r.seq != at {
                return Err(crate::VerifyFailure::Missing { position: at, found: r.seq }.into());
            }
            let ctx = row_context(r.seq, r.time_us, r.partition.as_ref(), &r.actor);
            if vault.open_audit(&ctx, &r.sealed).is_err() {
                return Err(crate::VerifyFailure::Altered { position: at }.into());
            }
            if at < to {
                write_row(&mut w, r).map_err(|e| io("writing", &seg_tmp, e))?;
                if at == from {
                    first_time = r.time_us;
                }
                last_time = r.time_us;
            }
            frontier.push(leaf_of(r));
            at += 1;
            if at == to {
                frontier_to = Some(frontier.clone());
            }
            if at == proof.size {
                break;
            }
        }
    }
    if frontier.root() != proof.root {
        return Err(crate::VerifyFailure::CheckpointMismatch { size: proof.size }.into());
    }
    let frontier_to = frontier_to.expect("the cut is at or before the checkpoint");
    let HashingWriter { inner, sha, bytes } = w;
    let file = inner.into_inner().map_err(|e| io("writing", &seg_tmp, e.into_error()))?;
    file.sync_all().map_err(|e| io("syncing", &seg_tmp, e))?;
    drop(file);
    let sha = hex(sha.finish().as_ref());
    let note =
        Checkpoint { origin: origin.clone(), size: to, root: frontier_to.root() }.sign_extended(&[format!("brankas-archive {from} {to} {sha}")], &pk, |m| vault.audit_sign(m));
    let manifest = Manifest {
        format: FORMAT.into(),
        origin,
        from,
        to,
        records: to - from,
        first_time_us: first_time,
        last_time_us: last_time,
        bytes,
        sha256: sha.clone(),
        frontier_from: hex(&frontier_from),
        frontier_to: hex(&frontier_to.encode()),
        note: note.clone(),
    };
    let (man_tmp, man_path) = (out.join(format!(".{stem}.json.tmp")), out.join(format!("{stem}.json")));
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Io(e.to_string()))?;
    write_synced(&man_tmp, &json)?;
    std::fs::rename(&seg_tmp, &seg_path).map_err(|e| io("renaming", &seg_tmp, e))?;
    std::fs::rename(&man_tmp, &man_path).map_err(|e| io("renaming", &man_tmp, e))?;
    std::fs::File::open(out).and_then(|d| d.sync_all()).map_err(|e| io("syncing", out, e))?;
    Ok(Archived { from, to, records: to - from, bytes, sha256: sha, segment: Some(seg_path), proven_by_checkpoint: proof.size, note })
}

/// Deletes the archived records from the hot database (after [`write_segment`] and the
/// audit record of the act) and returns their space.
pub fn release(store: &dyn Store, done: &Archived) -> Result<(), ArchiveError> {
    if done.records == 0 {
        return Ok(());
    }
    store.audit_archive(done.to, &done.note).map_err(|e| ArchiveError::Io(format!("removing the archived records: {e}")))
}

fn write_synced(p: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut f = create_private(p).map_err(|e| io("creating", p, e))?;
    f.write_all(bytes).map_err(|e| io("writing", p, e))?;
    f.sync_all().map_err(|e| io("syncing", p, e))
}

/// A new file readable by its owner only (the segment holds sealed records and pseudonyms).
fn create_private(p: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(p)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct HashingWriter<W: Write> {
    inner: W,
    sha: digest::Context,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_row(w: &mut impl Write, r: &AuditRow) -> std::io::Result<()> {
    w.write_all(&r.seq.to_be_bytes())?;
    w.write_all(&r.time_us.to_be_bytes())?;
    match &r.partition {
        Some(p) => {
            w.write_all(&[1])?;
            w.write_all(&p.0)?;
        }
        None => w.write_all(&[0])?,
    }
    w.write_all(&r.actor)?;
    w.write_all(&(r.sealed.len() as u32).to_be_bytes())?;
    w.write_all(&r.sealed)
}

/// Reads a segment's records in order, hashing the file as it goes.
pub(crate) struct SegmentReader {
    r: BufReader<std::fs::File>,
    sha: digest::Context,
    pub(crate) bytes: u64,
}

/// A segment file that ended or broke where a record was expected.
pub(crate) struct Damaged;

impl SegmentReader {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let mut s = SegmentReader { r: BufReader::with_capacity(1 << 16, std::fs::File::open(path)?), sha: digest::Context::new(&digest::SHA256), bytes: 0 };
        let mut magic = vec![0u8; MAGIC.len()];
        if s.exact(&mut magic).is_err() || magic != MAGIC {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a segment file"));
        }
        Ok(s)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), Damaged> {
        self.r.read_exact(buf).map_err(|_| Damaged)?;
        self.sha.update(buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// The next record, `Ok(None)` at the clean end of the file.
    pub(crate) fn next_row(&mut self) -> Result<Option<AuditRow>, Damaged> {
        let mut seq = [0u8; 8];
        match self.r.read(&mut seq[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {
                self.sha.update(&seq[..1]);
                self.bytes += 1;
            }
            Err(_) => return Err(Damaged),
        }
        self.exact(&mut seq[1..])?;
        let mut time = [0u8; 8];
        self.exact(&mut time)?;
        let mut flag = [0u8; 1];
        self.exact(&mut flag)?;
        let partition = match flag[0] {
            0 => None,
            1 => {
                let mut p = [0u8; 32];
                self.exact(&mut p)?;
                Some(PartitionId(p))
            }
            _ => return Err(Damaged),
        };
        let mut actor = [0u8; 32];
        self.exact(&mut actor)?;
        let mut len = [0u8; 4];
        self.exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 24 {
            return Err(Damaged);
        }
        let mut sealed = vec![0u8; len];
        self.exact(&mut sealed)?;
        Ok(Some(AuditRow { seq: u64::from_be_bytes(seq), time_us: i64::from_be_bytes(time), partition, actor, sealed }))
    }

    pub(crate) fn sha256(self) -> Hash {
        self.sha.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
    }
}
