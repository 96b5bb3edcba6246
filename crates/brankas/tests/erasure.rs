//! Erasure that survives a restore (crypto-shredding, threat model invariant 9): `brankas
//! erase` destroys the patient's data key, so a copy of the data directory taken before the
//! erasure, opened later with the same key file, neither serves nor decrypts the patient,
//! while every other patient (also those sharing the erased one's shred-key bucket) reads.

mod common;

use std::path::Path;
use std::sync::Arc;

use brankas_vault::{KeyFile, PartitionId, RecordAad, Vault, WrappedKey, bucket_of};
use common::*;
use serde_json::{Value, json};

/// The vault of a data directory (as a thief with the key file and its siblings would open it).
fn vault_of(db: &Path, key_file: &Path) -> Vault {
    let c = rusqlite::Connection::open(db).unwrap();
    let root: Vec<u8> = c.query_row("SELECT value FROM meta WHERE name = 'system-root'", [], |r| r.get(0)).unwrap();
    let v = Vault::open(Arc::new(KeyFile::open(key_file).unwrap()), &WrappedKey::from_bytes(&root).unwrap()).unwrap();
    v.with_erasure(key_file).unwrap()
}

/// `n` patient ids whose partitions share one shred-key bucket.
fn ids_in_one_bucket(v: &Vault, n: usize) -> Vec<String> {
    let first = "erase-me".to_string();
    let b = bucket_of(&v.patient_partition(&first));
    let mut out = vec![first];
    let mut i = 0u64;
    while out.len() < n {
        let id = format!("peer-{i}");
        if bucket_of(&v.patient_partition(&id)) == b {
            out.push(id);
        }
        i += 1;
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

/// Every wrapped data key and every version row (partition, type, key, version, dek version,
/// sealed) of a database file, read as raw rows.
#[allow(clippy::type_complexity)]
fn dump(db: &Path) -> (Vec<(PartitionId, WrappedKey)>, Vec<(PartitionId, String, [u8; 32], u64, u32, Vec<u8>)>) {
    let c = rusqlite::Connection::open(db).unwrap();
    let p32 = |b: Vec<u8>| -> [u8; 32] { b.try_into().unwrap() };
    let deks = c
        .prepare("SELECT partition, wrapped FROM deks")
        .unwrap()
        .query_map([], |r| Ok((PartitionId(p32(r.get(0)?)), WrappedKey::from_bytes(&r.get::<_, Vec<u8>>(1)?).unwrap())))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows = c
        .prepare("SELECT partition, rtype, rkey, version, dek_version, sealed FROM versions")
        .unwrap()
        .query_map([], |r| Ok((PartitionId(p32(r.get(0)?)), r.get(1)?, p32(r.get(2)?), r.get::<_, i64>(3)? as u64, r.get::<_, i64>(4)? as u32, r.get(5)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (deks, rows)
}

/// How many of `partition`'s version rows in `db` open under any data key of `db` the vault
/// can unwrap.
fn readable_rows(v: &Vault, db: &Path, partition: &PartitionId) -> usize {
    let (deks, rows) = dump(db);
    let keys: Vec<_> = deks.iter().filter_map(|(p, w)| v.open_data_key(p, w).ok()).collect();
    rows.iter()
        .filter(|(p, ..)| p == partition)
        .filter(|(p, t, k, ver, dv, sealed)| {
            let rk = brankas_vault::RecordKey(*k);
            let aad = RecordAad { resource_type: t, record: &rk, version: *ver, partition: p, dek_version: *dv };
            keys.iter().any(|key| key.open(&aad, sealed).is_ok())
        })
        .count()
}

fn status(s: &Server, path: &str) -> u16 {
    s.get(path).status().as_u16()
}

#[test]
fn an_erased_patient_stays_erased_in_a_copy_taken_before() {
    let inst = Instance::init();
    let s = inst.serve();
    let v = vault_of(&inst.data_dir().join("brankas.db"), &inst.key_file());
    let ids = ids_in_one_bucket(&v, 3);
    let (victim, peers) = (&ids[0], &ids[1..]);
    let mut obs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut p = patient(&format!("317101470890{:04}", i + 1), &format!("Hapus{i}"));
        p["id"] = json!(id);
        assert_eq!(s.put(&format!("Patient/{id}"), &p).status(), 201, "create Patient/{id}");
        obs.push(id_of(&s.create(&observation(id))));
    }
    let other = id_of(&s.create(&patient("3171014708900099", "Lain")));
    s.stop();

    // Before the erasure: a backup taken with `brankas backup` (to restore), and a plain copy of
    // the directory (to dump).
    let backup = inst.root.path().join("backup");
    let dumped = inst.root.path().join("dumped");
    let out = inst.cli(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    copy_dir(&inst.data_dir(), &dumped);
    let victim_p = v.patient_partition(victim);
    assert!(readable_rows(&v, &dumped.join("brankas.db"), &victim_p) >= 2, "before the erasure the copy opens the patient's rows (the check below is not vacuous)");

    let out = inst.cli(&["erase", "--patient", &format!("Patient/{victim}"), "--reason", "court-order", "--note", "PN Jakarta Pusat 12/2026"]);
    assert!(out.status.success(), "erase failed: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("erase prints one JSON object");
    assert_eq!(r["erased"], format!("Patient/{victim}"));
    assert_eq!(r["peers_rewrapped"], peers.len(), "{r}");
    assert_eq!(r["reaches_older_copies"], true, "{r}");

    // (a) the patient is gone, cleanly; (b) everyone else reads.
    let s = inst.serve();
    assert_eq!(status(&s, &format!("Patient/{victim}")), 410);
    assert_eq!(status(&s, &format!("Observation/{}", obs[0])), 410);
    assert_eq!(status(&s, &format!("Patient/{victim}/_history/1")), 410);
    let hits = s.get(&format!("Patient?identifier={NIK_SYSTEM}|3171014708900001")).json::<Value>().unwrap();
    assert_eq!(hits["total"], 0, "its blind-index terms are gone: {hits}");
    for (i, id) in peers.iter().enumerate() {
        assert_eq!(status(&s, &format!("Patient/{id}")), 200, "bucket peer {id}");
        assert_eq!(status(&s, &format!("Observation/{}", obs[i + 1])), 200);
    }
    assert_eq!(status(&s, &format!("Patient/{other}")), 200);
    // `brankas verify` counts the erased patient as erased, not as damage.
    let out = inst.cli(&["verify"]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("verify prints one JSON object");
    assert!(out.status.success() && r["intact"] == true, "verify after an erasure: {r}");
    assert_eq!(r["counts"]["erased_patients"], 1, "{r}");
    let (st, ev) = s.get_as(&officer_token(&inst, &s), &format!("AuditEvent?patient=Patient/{victim}&_count=100"));
    assert_eq!(st, 200, "{ev}");
    assert!(ev.to_string().contains("erase") && ev.to_string().contains("court-order"), "a signed erasure record, its pseudonymous history kept: {ev:.3000}");
    s.stop();

    // (c) the backup from before, restored with `brankas restore` in place of the directory and
    // opened with the same key file: the ledger is re-applied, the patient stays erased, its
    // bucket peers read.
    let live = inst.root.path().join("live");
    std::fs::rename(inst.data_dir(), &live).unwrap();
    let out = inst.cli(&["restore", "--from", backup.to_str().unwrap(), "--reason", "restore drill after an erasure"]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = inst.cli(&["verify"]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("verify prints one JSON object");
    assert!(out.status.success() && r["intact"] == true && r["counts"]["erased_patients"] == 1, "verify of the restored backup: {r}");
    let mut s = inst.serve();
    s.token = s.new_token();
    assert_eq!(status(&s, &format!("Patient/{victim}")), 410, "erased in the restored copy");
    assert_eq!(status(&s, &format!("Observation/{}", obs[0])), 410);
    for (i, id) in peers.iter().enumerate() {
        assert_eq!(status(&s, &format!("Patient/{id}")), 200, "bucket peer {id} in the restored copy");
        assert_eq!(status(&s, &format!("Observation/{}", obs[i + 1])), 200);
    }
    assert_eq!(status(&s, &format!("Patient/{other}")), 200);
    s.stop();

    // (d) the other copy, never opened since: every data key the key file (and the shred keys
    // beside it) can unwrap, tried on every row of the patient's partition: none opens.
    let v = vault_of(&dumped.join("brankas.db"), &inst.key_file());
    assert_eq!(readable_rows(&v, &dumped.join("brankas.db"), &victim_p), 0, "a dump of an older copy decrypts nothing of the erased patient");
    let (deks, _) = dump(&dumped.join("brankas.db"));
    let (_, w) = deks.iter().find(|(p, _)| *p == victim_p).expect("the old copy holds the wrapped key");
    assert!(v.open_data_key(&victim_p, w).is_err(), "its wrapped data key opens under nothing");
}

fn officer_token(inst: &Instance, s: &Server) -> String {
    s.token_for(&inst.officer_id, &inst.officer_secret)
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn retention_refuses_an_early_erasure_on_request() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = id_of(&s.create(&patient("3171014708900001", "Tetap")));
    s.stop();
    for (reason, says) in [("patient-request", "retention"), ("retention-expired", "retention"), ("because", "unknown erasure reason")] {
        let out = inst.cli(&["erase", "--patient", &format!("Patient/{p}"), "--reason", reason]);
        assert!(!out.status.success(), "{reason}: an erasure within the 25-year retention needs a reason that overrides it");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{reason}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = inst.cli(&["erase", "--patient", "Patient/no-such-patient", "--reason", "created-in-error"]);
    assert!(!out.status.success(), "an unknown patient cannot be erased");
    let s = inst.serve();
    assert_eq!(status(&s, &format!("Patient/{p}")), 200, "nothing was erased");
    s.stop();
    let out = inst.cli(&["erase", "--patient", &format!("Patient/{p}"), "--reason", "created-in-error"]);
    assert!(out.status.success(), "created-in-error overrides retention: {}", String::from_utf8_lossy(&out.stderr));
    let out = inst.cli(&["erase", "--patient", &format!("Patient/{p}"), "--reason", "created-in-error"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("deleted"), "erased once: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_removed_or_edited_ledger_stops_the_opening() {
    let inst = Instance::init();
    let s = inst.serve();
    let a = id_of(&s.create(&patient("3171014708900001", "Satu")));
    let b = id_of(&s.create(&patient("3171014708900002", "Dua")));
    s.stop();
    for p in [&a, &b] {
        let out = inst.cli(&["erase", "--patient", &format!("Patient/{p}"), "--reason", "duplicate-registration"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ledger = inst.root.path().join("master.key.erasures");
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(text.lines().count(), 2);
    let refused = |what: &str| {
        let out = inst.cli(&["anchor", "accept", "--reason", "test"]);
        assert!(!out.status.success(), "{what}: the directory must not open");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("erasure ledger"), "{what}: {err}");
    };
    // Truncated to its first entry.
    std::fs::write(&ledger, format!("{}\n", text.lines().next().unwrap())).unwrap();
    refused("truncated");
    // Removed.
    std::fs::remove_file(&ledger).unwrap();
    refused("removed");
    // An entry edited (its reason changed).
    std::fs::write(&ledger, text.replace("duplicate-registration", "created-in-error")).unwrap();
    refused("edited");
    // Put back: the directory opens, both stay erased.
    std::fs::write(&ledger, &text).unwrap();
    let s = inst.serve();
    assert_eq!(status(&s, &format!("Patient/{a}")), 410);
    assert_eq!(status(&s, &format!("Patient/{b}")), 410);
    s.stop();
}

/// An admin-API call with `token`: status and JSON body.
fn admin(s: &Server, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut r = s.http.request(method, format!("{}{path}", s.root)).bearer_auth(token);
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(serde_json::to_vec(b).unwrap());
    }
    let r = r.send().unwrap();
    let st = r.status().as_u16();
    (st, serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null))
}

#[test]
fn an_erasure_over_http_needs_a_second_officer() {
    use reqwest::Method;
    let inst = Instance::init();
    let s = inst.serve();
    let p = id_of(&s.create(&patient("3171014708900001", "Dihapus")));
    let keep = id_of(&s.create(&patient("3171014708900002", "Tinggal")));
    let first = officer_token(&inst, &s);
    let second = inst.caller(&s, &["--name", "second officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let admin_token = s.token_for(&inst.admin_id, &inst.admin_secret);
    let body = json!({"patient": format!("Patient/{p}"), "reason": "created-in-error", "note": "test registration"});

    // Who may ask, and what is refused at once.
    assert_eq!(admin(&s, &s.token, Method::POST, "/admin/erasures", Some(&body)).0, 403, "a facility client cannot ask");
    let (st, e) = admin(&s, &first, Method::POST, "/admin/erasures", Some(&json!({"patient": format!("Patient/{p}"), "reason": "patient-request"})));
    assert_eq!(st, 422, "within retention, a patient's own request waits for its end: {e}");
    let (st, _) = admin(&s, &first, Method::POST, "/admin/erasures", Some(&json!({"patient": format!("Patient/{p}"), "reason": "whatever"})));
    assert_eq!(st, 400, "an unknown reason code");
    let (st, _) = admin(&s, &first, Method::POST, "/admin/erasures", Some(&json!({"patient": "Patient/nobody", "reason": "court-order"})));
    assert_eq!(st, 404);

    // One officer asks: 202, nothing happens yet.
    let (st, req) = admin(&s, &first, Method::POST, "/admin/erasures", Some(&body));
    assert_eq!((st, req["status"].as_str()), (202, Some("pending_approval")), "{req}");
    let eid = req["id"].as_str().unwrap().to_string();
    assert_eq!(status(&s, &format!("Patient/{p}")), 200, "a request alone erases nothing");
    let (st, list) = admin(&s, &admin_token, Method::GET, "/admin/erasures", None);
    assert_eq!(st, 200);
    assert_eq!(list["erasures"][0]["id"], eid.as_str(), "{list}");

    // The requester cannot approve it, nor an admin; a second officer does.
    let approve = format!("/admin/erasures/{eid}/approve");
    assert_eq!(admin(&s, &first, Method::POST, &approve, None).0, 403, "self-approval is refused");
    assert_eq!(admin(&s, &admin_token, Method::POST, &approve, None).0, 403, "an admin does not approve");
    assert_eq!(status(&s, &format!("Patient/{p}")), 200);
    let (st, done) = admin(&s, &second.token, Method::POST, &approve, None);
    assert_eq!((st, done["status"].as_str()), (200, Some("erased")), "{done}");
    assert_eq!(done["requested_by"], inst.officer_id.as_str());
    assert_eq!(done["approved_by"], second.id.as_str());
    assert_eq!(status(&s, &format!("Patient/{p}")), 410);
    assert_eq!(status(&s, &format!("Patient/{keep}")), 200);
    assert_eq!(admin(&s, &second.token, Method::POST, &approve, None).0, 404, "carried out once");
    let (_, list) = admin(&s, &first, Method::GET, "/admin/erasures", None);
    assert_eq!(list["erasures"].as_array().map(Vec::len), Some(0));
    let (st, ev) = s.get_as(&first, &format!("AuditEvent?patient=Patient/{p}&_count=100"));
    assert_eq!(st, 200);
    let text = ev.to_string();
    assert!(text.contains("created-in-error") && text.contains(&second.id), "the erasure record names reason and approver: {ev:.3000}");
    s.stop();
    // The ledger beside the key file holds it.
    assert_eq!(std::fs::read_to_string(inst.root.path().join("master.key.erasures")).unwrap().lines().count(), 1);
}

#[test]
fn an_erasure_at_the_command_line_reaches_a_running_server() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = id_of(&s.create(&patient("3171014708900001", "Berjalan")));
    let o = id_of(&s.create(&observation(&p)));
    // Read once, so the server holds the patient's data key in its cache.
    assert_eq!(status(&s, &format!("Observation/{o}")), 200);
    let out = inst.cli(&["erase", "--patient", &format!("Patient/{p}"), "--reason", "created-in-error"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&s, &format!("Observation/{o}")), 410, "gone, not a 500, although the key was cached");
    assert_eq!(status(&s, &format!("Patient/{p}")), 410);
    assert_eq!(status(&s, &format!("Patient/{p}/Observation")), 410);
    let other = id_of(&s.create(&patient("3171014708900002", "Baru")));
    assert_eq!(status(&s, &format!("Patient/{other}")), 200, "new patients are created and read after the erasure");
    s.stop();
}
