//! Offline bulk import: transaction Bundles (JSON) and NDJSON, prepared on all cores and
//! committed in large groups (many Bundles per durable store transaction, each Bundle still
//! all-or-nothing).
//!
//! An import can be killed and run again: each unit (a Bundle, a line) commits with a marker
//! of itself (an internal record in the system partition whose key is a keyed hash of the
//! unit's bytes: nothing of the content is readable), so a run that meets a unit already
//! imported skips it, and a killed run re-run to the end leaves the state of one clean run.
//! The consequence: a unit whose exact bytes were imported before is skipped in any later
//! run too (to apply the same bytes again, import them over the API). Each group's write-ahead
//! audit records (one per patient written, see `ahead`) are durable before the group commits.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use brankas_auth::Principal;
use brankas_store::{Expect, NewVersion, RecordKey, StoreError, VersionRow, WriteBatch};
use brankas_vault::RecordAad;
use serde_json::{Value, json};

use crate::access::{CareFacts, merge_facts};
use crate::ahead::Named;
use crate::{Engine, EngineError, Result};

/// Counts of an import run.
#[derive(Clone, Debug, Default)]
pub struct ImportStats {
    /// Units read (Bundles, or single resources).
    pub units: u64,
    /// Resources written.
    pub resources: u64,
    /// Units refused (invalid, conflicting…), each all-or-nothing.
    pub failed: u64,
    /// Units skipped because an earlier run (or an identical earlier unit) imported them.
    pub skipped: u64,
    /// First few failures: where, and the error (never content).
    pub errors: Vec<String>,
    /// Bytes of input read.
    pub bytes: u64,
}

/// Type of the internal records that mark imported units (never served).
pub(crate) const MARK_TYPE: &str = "BrankasImport";

/// Largest single input line or file accepted.
const MAX_UNIT_BYTES: usize = 256 * 1024 * 1024;
/// NDJSON lines prepared (in parallel) and committed in one durable transaction, at most:
/// larger groups amortise SQLite's page writes and fsync over more patients (measured: 512
/// lines import 1.6x faster than 64; see BENCHMARKS.md) ...
const GROUP: usize = 512;
/// ... and at most this many bytes of input per group, so memory stays bounded.
const GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Bulk importer bound to an engine.
pub struct Importer<'a> {
    engine: &'a Engine,
    who: Principal,
    threads: usize,
}

impl<'a> Importer<'a> {
    /// An importer acting as `who`: the operator's principal, made by the command-line tool
    /// that holds the key file (`Principal::local_operator_for(organization)`: on behalf of a
    /// facility, which then gets a care relationship with every patient whose records it
    /// imports, as for data it submits over the API).
    pub fn new(engine: &'a Engine, who: Principal) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self { engine, who, threads }
    }

    /// Imports one file. `progress` is called with the stats after each group commit.
    pub fn import_file(&self, path: &Path, stats: &mut ImportStats, progress: &mut dyn FnMut(&ImportStats)) -> Result<()> {
        self.import_paths(std::slice::from_ref(&path.to_path_buf()), stats, progress)
    }

    /// Imports files in order: JSON Bundle files (a unit each) and NDJSON files (`.ndjson`,
    /// `.jsonl`: a unit per line), all as one stream of units, so that many small Bundle files
    /// share each group's preparation on all cores and its one durable commit. A file that
    /// cannot be read counts as one failed unit; the others go on.
    pub fn import_paths(&self, paths: &[std::path::PathBuf], stats: &mut ImportStats, progress: &mut dyn FnMut(&ImportStats)) -> Result<()> {
        let mut files = paths.iter();
        let mut open: Option<(String, BufReader<std::fs::File>, u64)> = None;
        self.import_units(
            &mut |stats: &mut ImportStats| loop {
                if let Some((name, reader, line_no)) = open.as_mut() {
                    let (units, end) = match read_group(name, reader, line_no, stats) {
                        Ok(r) => r,
                        // A file that cannot be read on: counted, and the next file goes on.
                        Err(e) => {
                            stats.units += 1;
                            fail(stats, &name.clone(), &e);
                            (Vec::new(), true)
                        }
                    };
                    if end {
                        open = None;
                    }
                    if !units.is_empty() {
                        return Ok(Some(units));
                    }
                    continue;
                }
                let Some(path) = files.next() else { return Ok(None) };
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let f = match std::fs::File::open(path) {
                    Ok(f) => f,
                    Err(e) => {
                        stats.units += 1;
                        fail(stats, &name, &EngineError::BadRequest(format!("{e}")));
                        continue;
                    }
                };
                if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
                    open = Some((name, BufReader::with_capacity(1 << 20, f), 0));
                    continue;
                }
                let mut buf = Vec::new();
                if let Err(e) = f.take(MAX_UNIT_BYTES as u64 + 1).read_to_end(&mut buf) {
                    stats.units += 1;
                    fail(stats, &name, &EngineError::BadRequest(format!("{e}")));
                    continue;
                }
                stats.bytes += buf.len() as u64;
                return Ok(Some(vec![(name, buf)]));
            },
            stats,
            progress,
        )
    }

    /// Imports from a reader: NDJSON (one resource or Bundle per line) when `ndjson`, else one
    /// JSON Bundle. `name` appears in refusal messages (never content).
    pub fn import_reader(&self, name: &str, ndjson: bool, mut reader: impl BufRead, stats: &mut ImportStats, progress: &mut dyn FnMut(&ImportStats)) -> Result<()> {
        let name = name.to_string();
        let (mut line_no, mut done) = (0u64, false);
        self.import_units(
            &mut |stats: &mut ImportStats| {
                if done {
                    return Ok(None);
                }
                if ndjson {
                    let (units, end) = read_group(&name, &mut reader, &mut line_no, stats)?;
                    done = end;
                    return Ok(Some(units));
                }
                let mut buf = Vec::new();
                (&mut reader).take(MAX_UNIT_BYTES as u64 + 1).read_to_end(&mut buf).map_err(|e| EngineError::BadRequest(format!("{name}: {e}")))?;
                stats.bytes += buf.len() as u64;
                done = true;
                Ok(Some(vec![(name.clone(), buf)]))
            },
            stats,
            progress,
        )
    }

    /// Imports a stream of units (`next` gives the next few, `None` at the end) in groups.
    ///
    /// Groups are pipelined: while one group commits (SQLite writes on one core), the next is
    /// read and prepared on the others. A unit prepared during the previous group's commit is
    /// prepared again after it when that commit could have changed what it read: a record
    /// whose current version it read was written, it queried a type the commit wrote, or it
    /// failed on something the store's state decides (a precondition, a conflict, a record
    /// not found). Within a group, units are as if imported one after another: a group ends
    /// before the first unit that depends on an earlier unit of the group (it read a record
    /// one of them writes, queried a type one of them writes, or failed on the store's state
    /// while earlier units were pending), and that unit starts the next group. So each unit
    /// sees every unit before it, and independent units (a patient's Bundle after another's)
    /// share one group.
    fn import_units(&self, next: &mut dyn FnMut(&mut ImportStats) -> Result<Option<Vec<Input>>>, stats: &mut ImportStats, progress: &mut dyn FnMut(&ImportStats)) -> Result<()> {
        std::thread::scope(|s| {
            let mut inflight: Option<Inflight<'_>> = None;
            let mut carry: std::collections::VecDeque<Input> = std::collections::VecDeque::new();
            let mut ended = false;
            loop {
                let mut bytes: usize = carry.iter().map(|(_, b)| b.len()).sum();
                while !ended && carry.len() < GROUP && bytes < GROUP_BYTES {
                    match next(stats)? {
                        Some(units) => {
                            bytes += units.iter().map(|(_, b)| b.len()).sum::<usize>();
                            carry.extend(units);
                        }
                        None => ended = true,
                    }
                }
                if carry.is_empty() {
                    break;
                }
                let (mut take, mut taken) = (0, 0usize);
                while take < carry.len() && take < GROUP && (take == 0 || taken + carry[take].1.len() <= GROUP_BYTES) {
                    taken += carry[take].1.len();
                    take += 1;
                }
                let mut group = self.prepare_group(carry.drain(..take).collect());
                if let Some(f) = inflight.take() {
                    let written = self.finish(f, stats)?;
                    progress(stats);
                    self.refresh(&mut group, &written);
                }
                let cut = independent_prefix(&group);
                for u in group.drain(cut..).rev() {
                    carry.push_front((u.where_, u.bytes));
                }
                inflight = Some(self.start_commit(s, group, stats)?);
            }
            if let Some(f) = inflight.take() {
                self.finish(f, stats)?;
                progress(stats);
            }
            Ok(())
        })
    }

    /// Parses, validates and seals units on all cores.
    fn prepare_group(&self, units: Vec<Input>) -> Vec<Unit> {
        let chunk = units.len().div_ceil(self.threads.max(1)).max(1);
        let mut chunks: Vec<Vec<Input>> = Vec::new();
        let mut it = units.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(chunk).collect());
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        c.into_iter()
                            .map(|(where_, bytes)| {
                                let prep = self.prepare_unit(&bytes);
                                Unit { where_, bytes, prep }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        })
    }

    /// Prepares again, now that the previous group is committed, the units whose
    /// preparation that commit may have made stale (see [`Importer::import_reader`]).
    fn refresh(&self, group: &mut [Unit], written: &Written) {
        let stale = |u: &Unit| match &u.prep {
            Ok(Some(p)) => p.queried.iter().any(|t| written.types.contains(t)) || p.reads.iter().any(|k| written.keys.contains(k)),
            Ok(None) => false,
            Err(e) => depends_on_state(e),
        };
        let again: Vec<usize> = (0..group.len()).filter(|&i| stale(&group[i])).collect();
        if again.is_empty() {
            return;
        }
        let units = again.iter().map(|&i| (String::new(), std::mem::take(&mut group[i].bytes))).collect();
        for (i, u) in again.into_iter().zip(self.prepare_group(units)) {
            group[i].bytes = u.bytes;
            group[i].prep = u.prep;
        }
    }

    /// Brings new data keys along and starts the group's durable commit on its own thread.
    fn start_commit<'s>(&'s self, s: &'s std::thread::Scope<'s, '_>, group: Vec<Unit>, stats: &mut ImportStats) -> Result<Inflight<'s>> {
        let mut batches = Vec::new();
        let mut owners = Vec::new();
        let mut named = Vec::new();
        let mut care = CareFacts::new();
        for u in group {
            stats.units += 1;
            match u.prep {
                Ok(None) => stats.skipped += 1,
                Ok(Some(mut p)) => {
                    self.engine.attach_new_keys(&mut p.batch)?;
                    let mark = p.batch.versions.iter().rposition(|v| v.row.resource_type == MARK_TYPE);
                    batches.push(p.batch);
                    owners.push(Owner { where_: u.where_, resources: p.resources, mark });
                    named.extend(p.named);
                    merge_facts(&mut care, p.care);
                }
                Err(e) => fail(stats, &u.where_, &e),
            }
        }
        // One last batch records the care relationships of the whole group, merged per
        // patient (several lines of a group may concern one patient), read now that every
        // earlier group is committed. Should a unit fail at commit, the relationship it
        // would have established is still recorded: a facility that tried to submit data
        // for a patient is in that patient's care.
        if !care.is_empty() {
            let now = crate::crud::now_us();
            let versions = self.engine.care_versions(&care, now)?;
            let mut b = WriteBatch { versions, ..Default::default() };
            if !b.versions.is_empty() {
                self.engine.attach_new_keys(&mut b)?;
                batches.push(b);
                owners.push(Owner { where_: "care relationships of the group".into(), resources: 0, mark: None });
            }
        }
        if batches.is_empty() {
            let handle = s.spawn(move || (batches, Ok(Vec::new())));
            return Ok(Inflight { handle, owners });
        }
        // The group's audit records, one per patient it writes, are durable before any of it
        // is committed; if they cannot be written, nothing of the group is.
        let refs: Vec<&WriteBatch> = batches.iter().collect();
        let ahead = self.engine.write_ahead(&self.who, &refs, &named, Some(("import", "C")))?;
        let engine = self.engine;
        let handle = s.spawn(move || {
            let r = engine.commit_many_audited(&batches, &ahead);
            (batches, r)
        });
        Ok(Inflight { handle, owners })
    }

    /// Waits for a group's commit, settles its data keys and counts its outcome. Returns the
    /// records (and their types) it wrote.
    fn finish(&self, f: Inflight<'_>, stats: &mut ImportStats) -> Result<Written> {
        let (batches, results) = f.handle.join().map_err(|_| EngineError::Integrity)?;
        let results = results?;
        let mut written = Written::default();
        for ((o, r), b) in f.owners.into_iter().zip(results).zip(&batches) {
            let (where_, n) = (o.where_, o.resources);
            match r {
                Ok(()) => {
                    self.engine.settle_new_keys(b, true)?;
                    stats.resources += n;
                    written.keys.extend(b.versions.iter().map(|v| v.row.key));
                    written.types.extend(b.versions.iter().map(|v| v.row.resource_type.clone()));
                }
                // Its marker exists: an identical unit committed first (earlier in this run).
                Err(StoreError::Conflict { index }) if Some(index) == o.mark => stats.skipped += 1,
                Err(e) => {
                    if matches!(e, StoreError::DataKeyRace) {
                        self.engine.settle_new_keys(b, false)?;
                    }
                    fail(stats, &where_, &EngineError::from(e))
                }
            }
        }
        Ok(written)
    }

    /// Prepares one unit; `None` when it was imported before (its marker is stored).
    fn prepare_unit(&self, bytes: &[u8]) -> Result<Option<Prepped>> {
        let mark = self.mark_of(bytes);
        if let Some((key, _)) = &mark
            && self.engine.store.current(key)?.is_some()
        {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| EngineError::BadRequest(format!("not valid JSON (line {}, column {})", e.line(), e.column())))?;
        let bundle = match v.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") if matches!(v.get("type").and_then(Value::as_str), Some("transaction" | "batch")) => v,
            Some(t) if brankas_fhir::is_resource_type(t) => {
                // A bare resource (bulk-data NDJSON): create-or-update under its own id.
                let t = t.to_string();
                let url = match v.get("id").and_then(Value::as_str) {
                    Some(id) => format!("{t}/{id}"),
                    None => t.clone(),
                };
                let method = if url.contains('/') { "PUT" } else { "POST" };
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": v, "request": {"method": method, "url": url}}]})
            }
            _ => return Err(EngineError::BadRequest("not a transaction or batch Bundle, nor a resource".into())),
        };
        let tx = self.engine.prepare_transaction(&self.who, &bundle)?;
        let resources = tx.prepared.len() as u64;
        // The care relationships the records establish (Encounters at facilities...): written
        // for the whole group at once, after its units (see `start_commit`).
        let now = crate::crud::now_us();
        let care = self.engine.care_facts(&self.who, &tx.prepared, now);
        // The unit's work-list entries are appended with it (they never conflict).
        let list_entries = self.engine.worklist_entries(&crate::worklist::facts_of(&tx.prepared, now))?;
        let reads = tx.reads;
        let named = self.engine.named(&tx.prepared);
        let mut batch = WriteBatch { list_entries, ..Default::default() };
        for p in tx.prepared {
            batch.unique.extend(p.unique.iter().map(|t| (p.row.key, *t)));
            batch.versions.push(NewVersion { row: p.row, expect: p.expect, entry: p.entry });
            if let Some(ix) = p.index {
                batch.index.push(ix);
            }
        }
        // The unit's marker, last in its batch: committed with the unit or not at all.
        if let Some((key, id)) = mark {
            batch.versions.push(self.marker(key, &id, now)?);
        }
        Ok(Some(Prepped { batch, resources, reads, queried: tx.queried, care, named }))
    }

    /// The record key and id of a unit's marker: a keyed hash of its bytes (surrounding
    /// whitespace aside), so the store learns nothing of the content. `None` for bytes that
    /// are not text (such a unit fails to parse anyway).
    fn mark_of(&self, bytes: &[u8]) -> Option<(RecordKey, String)> {
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let id: String = self.engine.vault.record_key(MARK_TYPE, text).0.iter().map(|b| format!("{b:02x}")).collect();
        Some((self.engine.vault.record_key(MARK_TYPE, &id), id))
    }

    /// A unit's marker version: an internal record of the system partition that must not
    /// exist yet.
    fn marker(&self, key: RecordKey, id: &str, now: i64) -> Result<NewVersion> {
        let partition = self.engine.vault.system_partition();
        let dek = self.engine.data_key(&partition, true)?.ok_or(EngineError::Integrity)?;
        let aad = RecordAad { resource_type: MARK_TYPE, record: &key, version: 1, partition: &partition, dek_version: 1 };
        let sealed = dek.seal(&aad, &serde_json::to_vec(&json!({"resourceType": MARK_TYPE, "id": id})).map_err(|_| EngineError::Integrity)?)?;
        let row = VersionRow { key, version: 1, partition, resource_type: MARK_TYPE.into(), deleted: false, last_updated_us: now, dek_version: 1, sealed };
        Ok(NewVersion { row, expect: Expect::Absent, entry: None })
    }
}

/// Reads the next group of NDJSON lines; true when the input has ended.
fn read_group(name: &str, reader: &mut impl BufRead, line_no: &mut u64, stats: &mut ImportStats) -> Result<(Vec<Input>, bool)> {
    let mut group = Vec::with_capacity(GROUP);
    let mut group_bytes = 0usize;
    loop {
        let mut line = Vec::new();
        let n = reader.take(MAX_UNIT_BYTES as u64 + 1).read_until(b'\n', &mut line).map_err(|e| EngineError::BadRequest(format!("{name}: {e}")))?;
        if n == 0 {
            return Ok((group, true));
        }
        *line_no += 1;
        stats.bytes += n as u64;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        group.push((format!("{name}:{line_no}"), line));
        group_bytes += n;
        if group.len() >= GROUP || group_bytes >= GROUP_BYTES {
            return Ok((group, false));
        }
    }
}

/// One input unit as read: where it came from (file and line), and its bytes.
type Input = (String, Vec<u8>);

/// What a committed group wrote: record keys and resource types.
#[derive(Default)]
struct Written {
    keys: HashSet<RecordKey>,
    types: HashSet<String>,
}

/// Whether a preparation's failure may depend on what other units write (so it is prepared
/// again once they are committed): a record or patient not found, a precondition, a conflict.
fn depends_on_state(e: &EngineError) -> bool {
    matches!(e, EngineError::PreconditionFailed(_) | EngineError::Conflict | EngineError::NotFound | EngineError::Gone | EngineError::Unprocessable(_))
}

/// How many units, from the first, are independent of each other (see
/// [`Importer::import_units`]): the first unit that read a record or queried a type written
/// by an earlier one, or failed on the store's state after earlier units, ends the prefix.
/// Never 0 for a non-empty group: the first unit has nothing before it.
fn independent_prefix(group: &[Unit]) -> usize {
    let mut written = Written::default();
    for (i, u) in group.iter().enumerate() {
        match &u.prep {
            Ok(Some(p)) => {
                if i > 0 && (p.queried.iter().any(|t| written.types.contains(t)) || p.reads.iter().any(|k| written.keys.contains(k))) {
                    return i;
                }
                written.keys.extend(p.batch.versions.iter().map(|v| v.row.key));
                written.types.extend(p.batch.versions.iter().filter(|v| v.row.resource_type != MARK_TYPE).map(|v| v.row.resource_type.clone()));
            }
            Ok(None) => {}
            Err(e) if i > 0 && depends_on_state(e) && !written.keys.is_empty() => return i,
            Err(_) => {}
        }
    }
    group.len()
}

/// What a group's commit thread hands back: the batches, and each one's outcome.
type Committed = (Vec<WriteBatch>, Result<Vec<brankas_store::Result<()>>>);

/// One input unit and the outcome of preparing it (the bytes are kept for a second
/// preparation).
struct Unit {
    where_: String,
    bytes: Vec<u8>,
    prep: Result<Option<Prepped>>,
}

/// A prepared unit: its writes, and what its preparation read of the store.
struct Prepped {
    batch: WriteBatch,
    resources: u64,
    reads: Vec<RecordKey>,
    queried: Vec<String>,
    care: CareFacts,
    /// The versions as the group's write-ahead audit records name them.
    named: Vec<Named>,
}

/// Whose a batch of a group is: where it came from, how many resources it writes, and the
/// index of its marker version.
struct Owner {
    where_: String,
    resources: u64,
    mark: Option<usize>,
}

/// A group whose commit runs on its own thread: the batches come back with the outcome.
struct Inflight<'s> {
    handle: std::thread::ScopedJoinHandle<'s, Committed>,
    owners: Vec<Owner>,
}

fn fail(stats: &mut ImportStats, where_: &str, e: &EngineError) {
    stats.failed += 1;
    if stats.errors.len() < 20 {
        stats.errors.push(format!("{where_}: {e}"));
    }
}
