//! How fast the old part of the log is archived: `records` records appended in group commits
//! of 512 (as under load), then [`archive::write_segment`] and [`archive::release`] of all but
//! the newest ones, then `verify_with` the archive. Prints one JSON line.
//!
//! `cargo run --release -p brankas-audit --example archive_rate -- [records] [dir]`

use std::sync::Arc;
use std::time::Instant;

use brankas_audit::archive::{self, Archive};
use brankas_audit::{AuditEntry, AuditLog, NewRecord, verify_with};
use brankas_store::SqliteStore;
use brankas_vault::{KeyFile, Vault};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = args.get(2).map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let kf = Arc::new(KeyFile::create(&tmp.path().join("k.json")).unwrap());
    let vault = Arc::new(Vault::create(kf).unwrap().0);
    let db = dir.join("brankas.db");
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let log = AuditLog::open(store.clone(), vault.clone()).unwrap();
    let mut i = 0u64;
    while i < records {
        let set: Vec<NewRecord> = (i..(i + 512).min(records))
            .map(|i| {
                let pid = format!("{:08x}-6d7b-4c8e-9f01-23456789abcd", i % 5000);
                let entry = AuditEntry {
                    interaction: "read".into(),
                    action: "R".into(),
                    status: 200,
                    client_id: format!("c-{}", i % 16),
                    role: "clinician".into(),
                    organization: Some("Organization/fac-0001".into()),
                    address: Some("10.0.0.7".into()),
                    request_id: format!("{i:032x}"),
                    purpose: Some("TREAT".into()),
                    resources: vec![format!("Patient/{pid}")],
                    patient: Some(pid.clone()),
                    ..Default::default()
                };
                NewRecord { partition: Some(vault.patient_partition(&pid)), client_id: format!("c-{}", i % 16), entry }
            })
            .collect();
        i += set.len() as u64;
        log.record_blocking(set).unwrap();
    }
    drop(log); // signs the last checkpoint
    let audit_db = SqliteStore::audit_path(&db);
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = std::path::PathBuf::from(format!("{}-wal", audit_db.display()));
    let before = size(&audit_db) + size(&wal);
    let out = dir.join("archive");
    let t = Instant::now();
    let done = archive::write_segment(&*store, &vault, records - records / 10, &out).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    archive::release(&*store, &done).unwrap();
    let release_s = t.elapsed().as_secs_f64();
    let after = size(&audit_db) + size(&wal);
    let t = Instant::now();
    let report = verify_with(&*store, &vault, None, Some(&Archive::open(std::slice::from_ref(&out)).unwrap())).unwrap();
    let verify_s = t.elapsed().as_secs_f64();
    assert_eq!(report.records, records);
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "records": records, "archived": done.records, "segment_bytes": done.bytes,
            "write_seconds": r(write_s), "release_seconds": r(release_s),
            "archived_records_per_s": (done.records as f64 / (write_s + release_s)).round(),
            "audit_db_bytes_before": before, "audit_db_bytes_after": after,
            "verify_with_archive_seconds": r(verify_s),
        })
    );
}
