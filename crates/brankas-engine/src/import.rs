//! Offline bulk import: transaction Bundles (JSON) and NDJSON, prepared on all cores and
//! committed in large groups (many Bundles per durable store transaction, each Bundle still
//! all-or-nothing).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use brankas_auth::Principal;
use brankas_store::{NewVersion, StoreError, WriteBatch};
use serde_json::{Value, json};

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
    /// First few failures: where, and the error (never content).
    pub errors: Vec<String>,
    /// Bytes of input read.
    pub bytes: u64,
}

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
    pub fn new(engine: &'a Engine) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self { engine, who: Principal::local_operator(), threads }
    }

    /// Imports one file. `progress` is called with the stats after each group commit.
    pub fn import_file(&self, path: &Path, stats: &mut ImportStats, progress: &mut dyn FnMut(&ImportStats)) -> Result<()> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let f = std::fs::File::open(path).map_err(|e| EngineError::BadRequest(format!("{name}: {e}")))?;
        let ndjson = name.ends_with(".ndjson") || name.ends_with(".jsonl");
        self.import_reader(&name, ndjson, BufReader::with_capacity(1 << 20, f), stats, progress)
    }

    /// Imports from a reader: NDJSON (one resource or Bundle per line) when `ndjson`, else one
    /// JSON Bundle. `name` appears in refusal messages (never content).
    pub fn import_reader(
        &self,
        name: &str,
        ndjson: bool,
        mut reader: impl BufRead,
        stats: &mut ImportStats,
        progress: &mut dyn FnMut(&ImportStats),
    ) -> Result<()> {
        let name = name.to_string();
        let mut group: Vec<(String, Vec<u8>)> = Vec::with_capacity(GROUP);
        let mut group_bytes = 0usize;
        if ndjson {
            let mut line_no = 0u64;
            loop {
                let mut line = Vec::new();
                let n = (&mut reader).take(MAX_UNIT_BYTES as u64 + 1).read_until(b'\n', &mut line).map_err(|e| EngineError::BadRequest(format!("{name}: {e}")))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                stats.bytes += n as u64;
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                group.push((format!("{name}:{line_no}"), line));
                group_bytes += n;
                if group.len() >= GROUP || group_bytes >= GROUP_BYTES {
                    group_bytes = 0;
                    self.run_group(std::mem::take(&mut group), stats)?;
                    progress(stats);
                }
            }
        } else {
            let mut buf = Vec::new();
            (&mut reader).take(MAX_UNIT_BYTES as u64 + 1).read_to_end(&mut buf).map_err(|e| EngineError::BadRequest(format!("{name}: {e}")))?;
            stats.bytes += buf.len() as u64;
            group.push((name, buf));
        }
        if !group.is_empty() {
            self.run_group(group, stats)?;
            progress(stats);
        }
        Ok(())
    }

    fn run_group(&self, units: Vec<(String, Vec<u8>)>, stats: &mut ImportStats) -> Result<()> {
        // Prepare (parse, validate, seal) in parallel; commit in one durable transaction.
        let chunk = units.len().div_ceil(self.threads.max(1)).max(1);
        let prepared: Vec<(String, Result<(WriteBatch, u64)>)> = std::thread::scope(|s| {
            let handles: Vec<_> = units
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().map(|(w, b)| (w.clone(), self.prepare_unit(b))).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        let mut batches = Vec::new();
        let mut owners = Vec::new();
        for (where_, r) in prepared {
            stats.units += 1;
            match r {
                Ok((b, n)) => {
                    batches.push(b);
                    owners.push((where_, n));
                }
                Err(e) => fail(stats, &where_, &e),
            }
        }
        for b in &mut batches {
            self.engine.attach_new_keys(b)?;
        }
        let results = self.engine.store.commit_many(&batches)?;
        for (((where_, n), r), b) in owners.into_iter().zip(results).zip(&batches) {
            match r {
                Ok(()) => {
                    self.engine.settle_new_keys(b, true)?;
                    stats.resources += n;
                }
                Err(e) => {
                    if matches!(e, StoreError::DataKeyRace) {
                        self.engine.settle_new_keys(b, false)?;
                    }
                    fail(stats, &where_, &EngineError::from(e))
                }
            }
        }
        Ok(())
    }

    fn prepare_unit(&self, bytes: &[u8]) -> Result<(WriteBatch, u64)> {
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
        let n = tx.prepared.len() as u64;
        let mut batch = WriteBatch::default();
        for p in tx.prepared {
            batch.versions.push(NewVersion { row: p.row, expect: p.expect });
            if let Some(ix) = p.index {
                batch.index.push(ix);
            }
        }
        Ok((batch, n))
    }
}

fn fail(stats: &mut ImportStats, where_: &str, e: &EngineError) {
    stats.failed += 1;
    if stats.errors.len() < 20 {
        stats.errors.push(format!("{where_}: {e}"));
    }
}
