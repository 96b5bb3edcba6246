//! The audit log against the embedded store: appends, reads back, proofs, verification.

use std::sync::Arc;

use brankas_audit::merkle::{verify_consistency, verify_inclusion};
use brankas_audit::note::Checkpoint;
use brankas_audit::{AuditEntry, AuditLog, NewRecord, VerifyFailure, verify};
use brankas_store::{SqliteStore, Store};
use brankas_vault::{KeyFile, Vault};

fn setup() -> (tempfile::TempDir, Arc<SqliteStore>, Arc<Vault>) {
    let dir = tempfile::tempdir().unwrap();
    let kf = Arc::new(KeyFile::create(&dir.path().join("k.json")).unwrap());
    let (vault, _) = Vault::create(kf).unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("brankas.db")).unwrap());
    (dir, store, Arc::new(vault))
}

fn rec(vault: &Vault, patient: &str, client: &str) -> NewRecord {
    let entry = AuditEntry {
        interaction: "read".into(),
        action: "R".into(),
        status: 200,
        client_id: client.into(),
        role: "clinician".into(),
        request_id: "r1".into(),
        patient: Some(patient.into()),
        resources: vec![format!("Patient/{patient}")],
        ..Default::default()
    };
    NewRecord { partition: Some(vault.patient_partition(patient)), client_id: client.into(), entry }
}

#[test]
fn appends_reads_back_proves_and_verifies() {
    let (_dir, store, vault) = setup();
    let log = AuditLog::open(store.clone(), vault.clone()).unwrap();
    // 700 records in sets of varying size, so stored subtrees at level 8 exist.
    let mut last = 0;
    for i in 0..140u64 {
        let set: Vec<NewRecord> = (0..5).map(|j| rec(&vault, &format!("p{}", (i * 5 + j) % 37), if i % 2 == 0 { "c-a" } else { "c-b" })).collect();
        last = log.record_blocking(set).unwrap();
    }
    assert_eq!(last, 699);
    drop(log); // signs the final checkpoint
    let log = AuditLog::open(store.clone(), vault.clone()).unwrap();
    let cp = log.latest_checkpoint().unwrap().unwrap();
    assert_eq!(cp.size, 700);
    let c = Checkpoint::verify(&cp.note, Some(log.origin()), &log.public_key()).unwrap();
    assert_eq!(c.root, log.root(700).unwrap());

    let mine = log.by_partition(&vault.patient_partition("p3"), None, 1000).unwrap();
    assert_eq!(mine.len(), 19, "p3 is every 37th record of 700");
    assert!(mine.iter().all(|o| o.entry.patient.as_deref() == Some("p3")));
    assert!(mine.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert_eq!(log.by_client("c-a", None, 10_000).unwrap().len(), 350);
    assert_eq!(log.latest(Some(10), 100).unwrap().len(), 10);

    for (i, n) in [(0u64, 700u64), (255, 700), (256, 512), (699, 700), (13, 14)] {
        let p = log.inclusion_proof(i, n).unwrap();
        assert!(verify_inclusion(&log.leaf_hash(i).unwrap(), i, n, &p.hashes, &log.root(n).unwrap()), "inclusion {i} in {n}");
    }
    for (m, n) in [(1u64, 700u64), (256, 700), (300, 513), (699, 700)] {
        let p = log.consistency_proof(m, n).unwrap();
        assert!(verify_consistency(m, n, &p.hashes, &log.root(m).unwrap(), &log.root(n).unwrap()), "consistency {m} -> {n}");
    }
    assert!(log.inclusion_proof(700, 700).is_err());
    assert!(log.root(701).is_err());

    let report = verify(&*store, &vault, None).unwrap();
    assert_eq!(report.records, 700);
    assert_eq!(report.signed_size, 700);
    // An external checkpoint from the past still verifies.
    assert!(verify(&*store, &vault, Some(&cp.note)).is_ok());
    // Under another deployment's keys nothing authenticates: the first stored checkpoint fails.
    let other = setup();
    assert!(matches!(verify(&*store, &other.2, None), Err(VerifyFailure::BadCheckpoint { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_group_commits() {
    let (_dir, store, vault) = setup();
    let log = Arc::new(AuditLog::open(store.clone(), vault.clone()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (log, vault) = (log.clone(), vault.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                log.record(vec![rec(&vault, &format!("p{t}-{i}"), "c")]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.audit_head().unwrap().unwrap().size, 800);
    drop(Arc::into_inner(log).unwrap());
    let report = verify(&*store, &vault, None).unwrap();
    assert_eq!(report.records, 800);
}

/// Synchronous submitters lead their own group commits, side by side with asynchronous ones:
/// every submission gets its own positions (none shared, none lost, as its answer says), and
/// what the leaders appended is signed by the background thread within seconds, with no
/// further submission to trigger it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_submitters_lead_their_own_group_commits() {
    let (_dir, store, vault) = setup();
    let log = Arc::new(AuditLog::open(store.clone(), vault.clone()).unwrap());
    let mut threads = Vec::new();
    for t in 0..16 {
        let (log, vault) = (log.clone(), vault.clone());
        threads.push(std::thread::spawn(move || {
            let mut ends = Vec::new();
            for i in 0..40 {
                let n = 1 + (t + i) % 3;
                let set: Vec<NewRecord> = (0..n).map(|j| rec(&vault, &format!("s{t}-{i}-{j}"), "c-sync")).collect();
                ends.push((log.record_blocking(set).unwrap(), n as u64));
            }
            ends
        }));
    }
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (log, vault) = (log.clone(), vault.clone());
        tasks.push(tokio::spawn(async move {
            let mut ends = Vec::new();
            for i in 0..40 {
                ends.push((log.record(vec![rec(&vault, &format!("a{t}-{i}"), "c-async")]).await.unwrap(), 1u64));
            }
            ends
        }));
    }
    let mut spans = Vec::new();
    for t in threads {
        spans.extend(t.join().unwrap());
    }
    for t in tasks {
        spans.extend(t.await.unwrap());
    }
    // Each submission's last position names a span of its own: spans tile the log exactly.
    let mut covered: Vec<(u64, u64)> = spans.iter().map(|(last, n)| (last + 1 - n, *last)).collect();
    covered.sort();
    let total: u64 = spans.iter().map(|(_, n)| n).sum();
    assert_eq!(covered.first().unwrap().0, 0);
    assert!(covered.windows(2).all(|w| w[1].0 == w[0].1 + 1), "submissions' positions overlap or leave gaps");
    assert_eq!(covered.last().unwrap().1 + 1, total);
    assert_eq!(store.audit_head().unwrap().unwrap().size, total);
    // Every record is where its submission was told it is.
    let rows = log.by_client("c-sync", None, 100_000).unwrap();
    assert_eq!(rows.len() as u64, spans.iter().take(16 * 40).map(|(_, n)| n).sum::<u64>());
    // Signed without another submission: the background thread signs what leaders appended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.latest_checkpoint().unwrap().is_none_or(|c| c.size < total) {
        assert!(std::time::Instant::now() < deadline, "the appended records were never signed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(Arc::into_inner(log).unwrap());
    let report = verify(&*store, &vault, None).unwrap();
    assert_eq!((report.records, report.signed_size), (total, total));
}
