//! `brankas verify`: the whole data directory opens and matches its rows, the way `brankas audit
//! verify` proves the audit log. And the structural check every server start runs.
//!
//! What is checked, and named when it fails (by `Type/id` when any version of the record
//! opened, else by resource type and the first bytes of its record key; never by content):
//!
//! - each database file passes SQLite's `PRAGMA integrity_check`;
//! - each partition's wrapped data key opens with the key provider;
//! - each version row has a data key for its partition, opens with it under its AAD (type,
//!   record key, version, partition, key version), and holds the record its row names (the id
//!   inside hashes to the record key); a record's versions run 1, 2, 3… without a gap, and its
//!   current pointer names its newest version and agrees with it;
//! - each current pointer names a version row that exists;
//! - a Binary's attachment exists and every segment of it opens;
//! - a record's blind-index terms are those its current content calls for, and the term table
//!   and the per-record term lists agree both ways;
//! - each work-list entry opens with the system partition's key under its AAD (list tag and
//!   entry id);
//! - the audit log verifies (`brankas_audit::verify`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use brankas_engine::{Engine, ROOT_META, RowProblem, VerifiedRow};
use brankas_store::{CheckDepth, FileBlobStore, RecordKey, SqliteStore, Store, StoreError, VersionRow};
use brankas_vault::{KeyFile, KeyProvider, Vault, WrappedKey};
use serde_json::{Value, json};

use crate::{BLOB_DIR, DB_FILE, key_path};

/// Problems listed in full; past it they are only counted.
const LIST_AT_MOST: usize = 1000;
/// Rows read per page.
const PAGE: usize = 2048;

/// Findings, counted and listed.
#[derive(Default)]
struct Report {
    problems: Vec<Value>,
    total: u64,
}

impl Report {
    fn add(&mut self, kind: &str, name: String, problem: impl Into<String>) {
        self.total += 1;
        if self.problems.len() < LIST_AT_MOST {
            self.problems.push(json!({"kind": kind, "name": name, "problem": problem.into()}));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A record's name when nothing of it opened: its type and the first bytes of its record key.
fn record_name(resource_type: &str, key: &RecordKey) -> String {
    format!("{resource_type} record {}", &hex(&key.0)[..16])
}

/// Counts per kind.
#[derive(Default)]
struct Counts {
    data_keys: u64,
    /// Data keys that are an erasure's tombstone, and the versions of those patients (their
    /// sealed bytes cleared): erased by design, not damaged.
    erased_patients: u64,
    erased_versions: u64,
    records: u64,
    versions: u64,
    current: u64,
    attachments: u64,
    attachment_bytes: u64,
    blind_rows: u64,
    blind_lists: u64,
    list_entries: u64,
    search_entries: u64,
}

/// The versions of one record met so far (they arrive in version order).
struct Record {
    key: RecordKey,
    resource_type: String,
    name: Option<String>,
    last: u64,
    /// The blind terms the newest version that opened calls for.
    terms: Option<Vec<brankas_vault::BlindTerm>>,
    newest_opened: bool,
    problems: Vec<(&'static str, String)>,
}

/// `brankas verify`: prints one JSON object; exit 0 only when everything opens and matches.
pub(crate) fn run(data_dir: &Path, key_file: Option<&Path>) -> Result<()> {
    crate::sqlite_only("brankas verify")?;
    let start = Instant::now();
    let kp = key_path(data_dir, key_file)?;
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        bail!("{} is not initialised (no {DB_FILE})", data_dir.display());
    }
    let mut report = Report::default();
    let mut counts = Counts::default();
    let mut files = Vec::new();
    for f in SqliteStore::check_files(&db, CheckDepth::Full)? {
        if f.missing {
            report.add("file", f.file.clone(), "the file is missing");
        }
        for p in &f.problems {
            report.add("file", f.file.clone(), p.clone());
        }
        files.push(json!({"file": f.file, "sound": !f.missing && f.problems.is_empty()}));
    }
    let provider: Arc<dyn KeyProvider> = Arc::new(KeyFile::open(&kp).with_context(|| format!("opening key file {}", kp.display()))?);
    let opened = SqliteStore::open(&db).map_err(anyhow::Error::from).and_then(|s| {
        let s = Arc::new(s);
        let root = s.get_meta(ROOT_META)?.context("the data directory has no system root key")?;
        let vault = Arc::new(crate::erase::attach(Vault::open(provider, &WrappedKey::from_bytes(&root)?).context("the key file does not open this data directory")?, &kp)?);
        Ok((s, vault))
    });
    let mut audit = Value::Null;
    match opened {
        Err(e) => report.add("database", DB_FILE.into(), format!("does not open: {e:#}")),
        Ok((sqlite, vault)) => {
            let store: Arc<dyn Store> = sqlite.clone();
            let blobs = Arc::new(FileBlobStore::open(&data_dir.join(BLOB_DIR)).context("opening the attachment store")?);
            let engine = Engine::new(store.clone(), vault.clone()).with_blobs(blobs, Default::default());
            if let Err(e) = rows(&sqlite, &engine, &mut report, &mut counts) {
                report.add("database", DB_FILE.into(), format!("reading stopped: {e:#}"));
            }
            audit = match brankas_audit::verify(&*store, &vault, None) {
                Ok(r) => json!({"intact": true, "records": r.records, "checkpoints": r.checkpoints, "signed_size": r.signed_size}),
                Err(f) => {
                    report.add("audit", "audit log".into(), f.to_string());
                    json!({"intact": false, "failure": f.to_string()})
                }
            };
        }
    }
    let intact = report.total == 0;
    let out = json!({
        "intact": intact,
        "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "counts": {
            "data_keys": counts.data_keys, "erased_patients": counts.erased_patients, "erased_versions": counts.erased_versions, "records": counts.records, "versions": counts.versions, "current": counts.current,
            "attachments": counts.attachments, "attachment_bytes": counts.attachment_bytes,
            "blind_rows": counts.blind_rows, "blind_lists": counts.blind_lists, "list_entries": counts.list_entries, "search_entries": counts.search_entries,
        },
        "files": files,
        "audit": audit,
        "problems_total": report.total,
        "problems": report.problems,
    });
    println!("{out}");
    if !intact {
        eprintln!("the data directory is NOT intact: {} problem(s), listed in the JSON on stdout", report.total);
        std::process::exit(1);
    }
    Ok(())
}

/// Every data key, version, current pointer and blind-index row.
fn rows(sqlite: &SqliteStore, engine: &Engine, report: &mut Report, counts: &mut Counts) -> Result<()> {
    // Data keys: each opens; their partitions are remembered (32 bytes each).
    let mut partitions = HashSet::new();
    let mut erased = HashSet::new();
    let mut after = None;
    loop {
        let page = sqlite.scan_deks(after.as_ref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.partition);
        for d in &page {
            counts.data_keys += 1;
            match engine.verify_data_key(d) {
                Err(RowProblem::Erased) => {
                    counts.erased_patients += 1;
                    erased.insert(d.partition.0);
                }
                Err(_) => report.add("data-key", format!("partition {}", &hex(&d.partition.0)[..16]), "the wrapped data key does not open with the key file"),
                Ok(()) => {
                    partitions.insert(d.partition.0);
                }
            }
        }
    }
    // Versions, in (record, version) order; each page opened on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let mut cur: Option<Record> = None;
    let mut after: Option<(RecordKey, u64)> = None;
    loop {
        let page = sqlite.scan_versions(after.as_ref().map(|(k, v)| (k, *v)), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some((last.key, last.version));
        let results = open_all(engine, &page, threads);
        for (row, res) in page.iter().zip(results) {
            counts.versions += 1;
            if cur.as_ref().is_some_and(|c| c.key != row.key)
                && let Some(done) = cur.take()
            {
                finish(sqlite, done, report, counts)?;
            }
            let rec = cur.get_or_insert_with(|| Record {
                key: row.key,
                resource_type: row.resource_type.clone(),
                name: None,
                last: 0,
                terms: None,
                newest_opened: false,
                problems: Vec::new(),
            });
            if row.version != rec.last + 1 {
                rec.problems.push(("version", format!("versions are not contiguous: {} follows {}", row.version, rec.last)));
            }
            rec.last = row.version;
            if row.resource_type != rec.resource_type {
                rec.problems.push(("version", format!("version {} is stored as another resource type", row.version)));
            }
            if erased.contains(&row.partition.0) {
                // An erased patient's rows keep their place (the version count the anchor
                // follows) without their sealed bytes; an index term left would be a finding.
                counts.erased_versions += 1;
                rec.name.get_or_insert_with(|| format!("{} (erased)", record_name(&rec.resource_type, &rec.key)));
                rec.terms = Some(Vec::new());
                rec.newest_opened = true;
                continue;
            }
            if !partitions.contains(&row.partition.0) {
                rec.problems.push(("version", format!("version {}: its partition has no data key that opens", row.version)));
                rec.newest_opened = false;
                continue;
            }
            rec.newest_opened = false;
            match res {
                Ok(v) => {
                    rec.name.get_or_insert_with(|| format!("{}/{}", v.resource_type, v.id));
                    if let Some(n) = v.attachment_bytes {
                        counts.attachments += 1;
                        counts.attachment_bytes += n;
                    }
                    rec.terms = Some(v.terms);
                    rec.newest_opened = true;
                }
                Err(RowProblem::NoDataKey) => rec.problems.push(("version", format!("version {}: its data key does not open", row.version))),
                Err(RowProblem::DoesNotOpen) => rec.problems.push(("version", format!("version {}: the sealed row does not open (damaged, moved or altered)", row.version))),
                Err(RowProblem::AttachmentMissing(n)) => {
                    rec.name.get_or_insert(n);
                    rec.problems.push(("attachment", format!("version {}: its attachment is missing from the blob store", row.version)));
                }
                Err(RowProblem::AttachmentDamaged(n)) => {
                    rec.name.get_or_insert(n);
                    rec.problems.push(("attachment", format!("version {}: its attachment does not open (damaged, cut or another's)", row.version)));
                }
                Err(RowProblem::Unavailable(e)) => rec.problems.push(("unavailable", format!("version {}: could not be checked: {e}", row.version))),
                // The partition's key became the tombstone during the scan (an erasure ran).
                Err(RowProblem::Erased) => counts.erased_versions += 1,
            }
        }
    }
    if let Some(done) = cur.take() {
        finish(sqlite, done, report, counts)?;
    }
    // Current pointers: each names a version row that exists and agrees with it (records
    // with versions were checked against theirs above; this finds pointers without any).
    let mut after = None;
    loop {
        let page = sqlite.scan_current(after.as_ref(), PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (key, r) in page {
            counts.current += 1;
            if r.is_err() && sqlite.history(&key, None, 1)?.is_empty() {
                report.add("current", format!("record {}", &hex(&key.0)[..16]), "the current pointer names no stored version");
            }
        }
    }
    // Work-list entries: each opens under the system partition's key, bound to its list
    // and id.
    let mut after: Option<([u8; 32], [u8; 32])> = None;
    loop {
        let page = sqlite.scan_list_entries(after.as_ref().map(|(l, e)| (l, e)), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some((last.list, last.entry));
        for e in &page {
            counts.list_entries += 1;
            match engine.verify_list_entry(e) {
                Ok(()) => {}
                Err(RowProblem::Unavailable(m)) => report.add("unavailable", format!("work-list entry {}", &hex(&e.entry)[..16]), format!("could not be checked: {m}")),
                Err(_) => report.add("list-entry", format!("work-list entry {}", &hex(&e.entry)[..16]), "the sealed entry does not open (damaged, moved or altered)"),
            }
        }
    }
    // Search entries: each belongs to its record's current version, opens under its AAD and
    // is the pruned copy of that version (a search trusts nothing else of it).
    let mut after = None;
    loop {
        let page = sqlite.scan_entries(after.as_ref(), PAGE)?;
        let Some((last, _, _)) = page.last() else { break };
        after = Some(*last);
        for (key, version, entry) in page {
            counts.search_entries += 1;
            let name = format!("record {}", &hex(&key.0)[..16]);
            match sqlite.current(&key) {
                Ok(Some(row)) if row.version == version => match engine.verify_entry(&row, &entry) {
                    Ok(()) | Err(RowProblem::Erased) => {}
                    Err(RowProblem::Unavailable(e)) => report.add("unavailable", name, format!("search entry could not be checked: {e}")),
                    Err(_) => report.add("search-entry", name, "the search entry does not open under its record, or is not that record's (damaged, moved or altered)"),
                },
                // A broken current pointer is reported above.
                Err(_) => {}
                _ => report.add("search-entry", name, "a search entry names a version that is not its record's current one (left behind or replayed)"),
            }
        }
    }
    // Blind index: the term table and the per-record lists agree both ways.
    let mut after: Option<(brankas_vault::BlindTerm, RecordKey)> = None;
    loop {
        let page = sqlite.scan_blind(after.as_ref().map(|(t, k)| (t, k)), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(*last);
        for (term, key) in page {
            counts.blind_rows += 1;
            if !sqlite.blind_terms_of(&key)?.contains(&term) {
                report.add("blind-index", format!("record {}", &hex(&key.0)[..16]), "an index term is not in the record's term list (planted or left behind)");
            }
        }
    }
    let mut after = None;
    loop {
        let page = sqlite.scan_blind_terms(after.as_ref(), PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (key, terms) in page {
            counts.blind_lists += 1;
            match terms {
                Err(_) => report.add("blind-index", format!("record {}", &hex(&key.0)[..16]), "the record's term list is malformed"),
                Ok(terms) => {
                    for t in terms {
                        if !sqlite.lookup(&t)?.contains(&key) {
                            report.add("blind-index", format!("record {}", &hex(&key.0)[..16]), "a term of the record's list is missing from the index");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Opens a page of versions on `threads` threads, in order.
fn open_all(engine: &Engine, page: &[VersionRow], threads: usize) -> Vec<Result<VerifiedRow, RowProblem>> {
    let chunk = page.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = page.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|r| engine.verify_version(r)).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// A record's versions are all read: its current pointer and its blind terms are checked,
/// and its problems reported under its best name.
fn finish(sqlite: &SqliteStore, rec: Record, report: &mut Report, counts: &mut Counts) -> Result<()> {
    counts.records += 1;
    let name = rec.name.clone().unwrap_or_else(|| record_name(&rec.resource_type, &rec.key));
    let mut problems = rec.problems;
    let mut settled = true;
    match sqlite.current(&rec.key) {
        Ok(Some(c)) if c.version == rec.last => {}
        // A version written after the scan passed the record (`current` checked that the row it
        // names exists and is the newest): not a finding, and the terms are those of the newer one.
        Ok(Some(c)) if c.version > rec.last => settled = false,
        Ok(Some(c)) => problems.push(("current", format!("the current pointer names version {}, the newest stored is {}", c.version, rec.last))),
        Ok(None) => problems.push(("current", "the record has versions but no current pointer".into())),
        Err(StoreError::Corrupt) => problems.push(("current", "the current pointer disagrees with the version row it names, or names an older one".into())),
        Err(e) => return Err(e.into()),
    }
    if rec.newest_opened && settled {
        let mut want: Vec<_> = rec.terms.unwrap_or_default().into_iter().map(|t| t.0).collect();
        let mut have: Vec<_> = sqlite.blind_terms_of(&rec.key)?.into_iter().map(|t| t.0).collect();
        want.sort();
        want.dedup();
        have.sort();
        have.dedup();
        if want != have {
            problems.push(("blind-index", format!("the record's index terms are not those of its content ({} stored, {} expected)", have.len(), want.len())));
        }
    }
    for (kind, p) in problems {
        report.add(kind, name.clone(), p);
    }
    Ok(())
}

/// The structural check at server start: SQLite's `quick_check` on each database file (it reads
/// every page once: measured in BENCHMARKS.md). A damaged file stops the start with a message
/// naming it and pointing to `brankas verify` and the restore drill.
/// A missing file is left to the state anchor, which names it.
pub(crate) fn start_check(data_dir: &Path) -> Result<()> {
    let db = data_dir.join(DB_FILE);
    if !db.exists() {
        return Ok(());
    }
    let t = Instant::now();
    let checks = SqliteStore::check_files(&db, CheckDepth::Quick).context("checking the database files")?;
    let bad: Vec<String> = checks.iter().filter(|c| !c.problems.is_empty()).map(|c| format!("{}: {}", c.file, c.problems.join("; "))).collect();
    if !bad.is_empty() {
        bail!(
            "refusing to start: the data directory is damaged:\n  - {}\nRun `brankas verify` for the records affected, and restore the last good backup (README: restore drill).",
            bad.join("\n  - ")
        );
    }
    tracing::info!(ms = t.elapsed().as_millis() as u64, "database files passed the structural check");
    Ok(())
}
