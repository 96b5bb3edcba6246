//! `brankas audit archive`: moves the old, checkpointed part of the audit log out of the hot
//! database into segment files (see `brankas_audit::archive`), audited as the local operator
//! before a record is deleted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use brankas_store::Store;

/// The first position whose record was written at or after `time_us` (times only grow along
/// the log), searched among the held records.
fn position_at(store: &dyn Store, time_us: i64) -> Result<u64> {
    let size = store.audit_head()?.map_or(0, |h| h.size);
    let (mut lo, mut hi) = (brankas_audit::archived_from(store)?.unwrap_or(0), size);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let t = store.audit_rows(mid, 1)?.first().map_or(i64::MAX, |r| r.time_us);
        if t < time_us { lo = mid + 1 } else { hi = mid }
    }
    Ok(lo)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub(crate) fn archive(data_dir: &Path, key_file: Option<&Path>, before: Option<&str>, up_to: Option<u64>, out: &Path) -> Result<()> {
    crate::sqlite_only("brankas audit archive")?;
    let o = crate::open(data_dir, key_file)?;
    let cut = match (before, up_to) {
        (Some(t), None) => position_at(&*o.store, brankas_audit::breach::parse_time(t).context("--before must be RFC 3339 or YYYY-MM-DD")?)?,
        (None, Some(n)) => n,
        _ => bail!("give exactly one of --before TIME and --up-to POSITION"),
    };
    let db = data_dir.join(crate::DB_FILE);
    let audit_db = brankas_store::SqliteStore::audit_path(&db);
    let wal = PathBuf::from(format!("{}-wal", audit_db.display()));
    let bytes_before = file_len(&audit_db) + file_len(&wal);
    let start = std::time::Instant::now();
    let done = brankas_audit::archive::write_segment(&*o.store, &o.vault, cut, out)?;
    let written = start.elapsed().as_secs_f64();
    if done.records > 0 {
        // Audited before any record leaves the hot database: the record names the range and
        // the segment's SHA-256.
        o.audit_local("audit-archive", "D", Some(format!("AuditLog/{}-{}", done.from, done.to)), true, Some(format!("segment sha256 {}", done.sha256)))?;
        brankas_audit::archive::release(&*o.store, &done)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let held_from = brankas_audit::archived_from(&*o.store)?.unwrap_or(0);
    drop(o);
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "archived": done.records, "from": done.from, "to": done.to, "requested_cut": cut,
            "proven_by_checkpoint": done.proven_by_checkpoint,
            "segment": done.segment, "segment_bytes": done.bytes, "sha256": done.sha256,
            "held_from": held_from,
            "audit_db_bytes_before": bytes_before, "audit_db_bytes_after": file_len(&audit_db) + file_len(&wal),
            "write_seconds": r3(written), "seconds": r3(seconds),
        })
    );
    Ok(())
}
