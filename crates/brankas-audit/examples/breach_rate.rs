//! The breach report's time on a large audit log: `records` records from 64 clients over
//! 16 addresses (patients drawn from 200,000), then a report for one client (found through
//! the actor index) and one for one address (a walk of the whole window). Identities are
//! stubbed: this measures the log, not the decryption of the Patients. Prints one JSON line.
//!
//! `cargo run --release -p brankas-audit --example breach_rate -- [records]`

use std::sync::Arc;
use std::time::Instant;

use brankas_audit::breach::{BreachQuery, Identity, Suspect, breach_report};
use brankas_audit::{AuditEntry, AuditLog, NewRecord};
use brankas_store::SqliteStore;
use brankas_vault::{KeyFile, Vault};

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let kf = Arc::new(KeyFile::create(&tmp.path().join("k.json")).unwrap());
    let vault = Arc::new(Vault::create(kf).unwrap().0);
    let store = Arc::new(SqliteStore::open(&tmp.path().join("brankas.db")).unwrap());
    let log = AuditLog::open(store.clone(), vault.clone()).unwrap();
    let t = Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut i = 0;
    while i < n {
        let batch: Vec<NewRecord> = (0..1000.min(n - i))
            .map(|_| {
                let (c, p) = (next() % 64, next() % 200_000);
                let pid = format!("p{p:06}");
                let entry = AuditEntry {
                    interaction: "read".into(),
                    action: "R".into(),
                    outcome: Some(brankas_audit::Outcome::Success),
                    status: 200,
                    client_id: format!("c-{c:02}"),
                    role: "facility-system".into(),
                    address: Some(format!("10.0.0.{}", c % 16)),
                    request_id: format!("{:016x}", next()),
                    resources: vec![format!("Observation/{:032x}", next())],
                    patient: Some(pid.clone()),
                    ..Default::default()
                };
                NewRecord { partition: Some(vault.patient_partition(&pid)), client_id: format!("c-{c:02}"), entry }
            })
            .collect();
        i += batch.len() as u64;
        log.record_blocking(batch).unwrap();
    }
    let load = t.elapsed().as_secs_f64();
    let q = |suspect| BreachQuery { suspect, since_us: 0, until_us: None, contact: "DPO".into() };
    let t = Instant::now();
    let by_client = breach_report(&log, &q(Suspect::Client("c-07".into())), |_| Some(Identity::default()), |_| false).unwrap();
    let client_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let by_address = breach_report(&log, &q(Suspect::Address("10.0.0.3".into())), |_| Some(Identity::default()), |_| false).unwrap();
    let address_secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "records": n, "load_seconds": (load * 10.0).round() / 10.0,
            "by_client": {"seconds": (client_secs * 1000.0).round() / 1000.0, "records_examined": by_client.records_examined, "patients": by_client.patients.len()},
            "by_address": {"seconds": (address_secs * 1000.0).round() / 1000.0, "records_examined": by_address.records_examined, "patients": by_address.patients.len()},
        })
    );
}
