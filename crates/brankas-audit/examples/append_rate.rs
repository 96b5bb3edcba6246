//! The audit log's append rate on this machine: `concurrency` submitters (as many concurrent
//! requests), each appending one record and waiting until it is durable, for `seconds`; then
//! `verify` over everything written. Prints one JSON line.
//!
//! `cargo run --release -p brankas-audit --example append_rate -- [concurrency] [seconds] [dir]`
//!
//! `WORKERS` sets the Tokio worker threads (default 1; a server has one per core). Every 10 s
//! the rate of the last 10 s goes to stderr, so a long run shows whether the rate holds as
//! the log grows. `dir` must be new: each run makes its own key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use brankas_audit::{AuditEntry, AuditLog, NewRecord, verify};
use brankas_store::{SqliteStore, Store};
use brankas_vault::{KeyFile, Vault};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = args.get(3).map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let kf = Arc::new(KeyFile::create(&tmp.path().join("k.json")).unwrap());
    let vault = Arc::new(Vault::create(kf).unwrap().0);
    let store = Arc::new(SqliteStore::open(&dir.join("brankas.db")).unwrap());
    let log = Arc::new(AuditLog::open(store.clone(), vault.clone()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1)).enable_all().build().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let lat_us = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            loop {
                std::thread::sleep(Duration::from_secs(10));
                let n = done.load(Ordering::Relaxed);
                eprintln!("{{\"records\":{n},\"records_per_s_last_10s\":{}}}", (n - last) / 10);
                last = n;
            }
        });
    }
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let (log, vault, done, lat_us) = (log.clone(), vault.clone(), done.clone(), lat_us.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                let mut mine = Vec::new();
                while Instant::now() < end {
                    let pid = format!("p{t}-{i}");
                    let entry = AuditEntry {
                        interaction: "read".into(),
                        action: "R".into(),
                        status: 200,
                        client_id: format!("c-{t}"),
                        role: "clinician".into(),
                        organization: Some("Organization/fac-0001".into()),
                        address: Some("10.0.0.7".into()),
                        request_id: format!("{t:04}{i:012}"),
                        purpose: Some("TREAT".into()),
                        resources: vec![format!("Patient/{pid}")],
                        patient: Some(pid.clone()),
                        ..Default::default()
                    };
                    let r = NewRecord { partition: Some(vault.patient_partition(&pid)), client_id: format!("c-{t}"), entry };
                    let t0 = Instant::now();
                    log.record(vec![r]).await.unwrap();
                    mine.push(t0.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                lat_us.lock().unwrap().extend(mine);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let mut lat = lat_us.lock().unwrap().clone();
    lat.sort_unstable();
    let p = |q: f64| lat.get(((q * lat.len() as f64) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1000.0;
    drop(Arc::into_inner(log).unwrap());
    let checkpoints = store.audit_checkpoints(0, usize::MAX).unwrap().len();
    let t = Instant::now();
    let report = verify(&*store, &vault, None).unwrap();
    let verify_secs = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(SqliteStore::audit_path(&dir.join("brankas.db"))).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "concurrency": concurrency, "seconds": (secs * 100.0).round() / 100.0, "records": n,
            "records_per_s": (n as f64 / secs).round(), "latency_ms": {"p50": p(0.5), "p99": p(0.99)},
            "checkpoints": checkpoints, "file_bytes_per_record": bytes / n.max(1),
            "verify_seconds": (verify_secs * 1000.0).round() / 1000.0, "verify_seconds_per_million": (verify_secs * 1e6 / report.records.max(1) as f64 * 10.0).round() / 10.0,
        })
    );
}
