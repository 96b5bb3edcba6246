//! The same audit records in both encodings: reads every record of a data directory's log,
//! and appends the same entries (same patients, same clients, same order) to a fresh log of
//! this build in `out`, so the two files can be compared record for record (same mix). Prints
//! one JSON line; measure the files with `benchmarks/audit-retention-2026-12-02/audit_bytes.sh`.
//!
//! `cargo run -p brankas-audit --example reencode -- <data-dir> <key-file> <out-dir>`

use std::sync::Arc;

use brankas_audit::{AuditLog, NewRecord};
use brankas_store::{SqliteStore, Store, WrappedKey};
use brankas_vault::{KeyFile, Vault};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, key, out) = (std::path::Path::new(&args[1]), std::path::Path::new(&args[2]), std::path::Path::new(&args[3]));
    let store = Arc::new(SqliteStore::open(&data.join("brankas.db")).unwrap());
    let root = store.get_meta("system-root").unwrap().expect("a data directory");
    let vault = Arc::new(Vault::open(Arc::new(KeyFile::open(key).unwrap()), &WrappedKey::from_bytes(&root).unwrap()).unwrap());
    let old = AuditLog::open(store.clone(), vault.clone()).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let fresh: Arc<dyn Store> = Arc::new(SqliteStore::open(&out.join("brankas.db")).unwrap());
    let new = AuditLog::open(fresh, vault.clone()).unwrap();
    let (mut at, mut n) = (0u64, 0u64);
    loop {
        let rows = store.audit_rows(at, 4096).unwrap();
        if rows.is_empty() {
            break;
        }
        at = rows.last().unwrap().seq + 1;
        let set: Vec<NewRecord> =
            old.open_rows(rows).unwrap().into_iter().map(|o| NewRecord { partition: o.partition, client_id: o.entry.client_id.clone(), entry: o.entry }).collect();
        n += set.len() as u64;
        new.record_blocking(set).unwrap();
    }
    drop(new);
    println!("{}", serde_json::json!({"records": n}));
}
