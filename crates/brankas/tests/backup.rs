//! Verification, backup and restore (issue 14, findings 5 and 6): a damaged database is named
//! record by record by `brankas verify` and never served as data nor called transient; a backup
//! taken under write load restores into a directory that verifies and holds every write
//! acknowledged before the backup began; a plain copy of an older directory is still refused
//! by the state anchor while a restore is accepted; files are the owner's alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use common::{BIN, Instance, Server, patient};
use serde_json::{Value, json};

fn run(args: &[&str], extra: &[&Path]) -> (i32, Value, String) {
    let mut c = Command::new(BIN);
    c.args(args);
    for p in extra {
        c.arg(p);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, String::from_utf8_lossy(&out.stderr).to_string())
}

/// `brankas verify` on a data directory: exit code and its JSON.
fn verify(inst: &Instance, data: &Path) -> (i32, Value) {
    let out = Command::new(BIN).args(["verify", "--data-dir"]).arg(data).arg("--key-file").arg(inst.key_file()).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("verify prints one JSON object: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

fn audit_intact(inst: &Instance) -> Value {
    let out = inst.cli(&["audit", "verify"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success() && v["intact"] == true, "audit verify: {v} {}", String::from_utf8_lossy(&out.stderr));
    v
}

fn backup(inst: &Instance, out: &Path) -> Value {
    let o = Command::new(BIN).args(["backup", "--data-dir"]).arg(inst.data_dir()).arg("--key-file").arg(inst.key_file()).arg("--out").arg(out).output().unwrap();
    assert!(o.status.success(), "backup failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The main database file with its WAL folded in (the server is stopped).
fn db(inst: &Instance) -> PathBuf {
    inst.data_dir().join("brankas.db")
}

/// Flips one byte in the middle of the sealed bytes of version `version` of the only record
/// of type `rtype` (through SQLite, so the file stays structurally sound).
fn flip_sealed(inst: &Instance, rtype: &str, version: i64) {
    let c = rusqlite::Connection::open(db(inst)).unwrap();
    let (rowid, mut sealed): (i64, Vec<u8>) =
        c.query_row("SELECT rowid, sealed FROM versions WHERE rtype = ?1 AND version = ?2", rusqlite::params![rtype, version], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x01;
    c.execute("UPDATE versions SET sealed = ?1 WHERE rowid = ?2", rusqlite::params![sealed, rowid]).unwrap();
}

#[test]
fn verify_names_a_flipped_byte_and_the_server_does_not_serve_it_nor_call_it_transient() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&patient("3171054708900001", "Damagedfam"));
    let id = p["id"].as_str().unwrap().to_string();
    let mut p2 = p.clone();
    p2["name"][0]["given"] = json!(["Sri", "Ayu"]);
    assert_eq!(s.put(&format!("Patient/{id}"), &p2).status(), 200);
    let other = s.create(&patient("3171054708900002", "Soundfam"));
    s.stop();
    let (code, v) = verify(&inst, &inst.data_dir());
    assert_eq!(code, 0, "an intact directory verifies: {v}");
    assert!(v["counts"]["versions"].as_u64().unwrap() >= 3, "{v}");
    // The current version of the first patient is damaged; its first version still opens.
    flip_sealed(&inst, "Patient", 2);
    let (code, v) = verify(&inst, &inst.data_dir());
    assert_eq!(code, 1, "a damaged row fails verification: {v}");
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "exactly the damaged version is named: {v}");
    assert_eq!(problems[0]["name"], format!("Patient/{id}"), "named by Type/id: {v}");
    assert!(problems[0]["problem"].as_str().unwrap().contains("version 2"), "{v}");
    assert!(!v.to_string().contains("Damagedfam") && !v.to_string().contains("3171054708900001"), "no patient content: {v}");
    // The server starts (the file's structure is sound) and refuses to serve the damaged record
    // as data, as damage (500 exception), not as a passing storage trouble (503 transient).
    let s = inst.serve();
    let r = s.get(&format!("Patient/{id}"));
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["issue"][0]["code"], "exception", "{body}");
    assert!(!body.to_string().contains("Damagedfam"), "{body}");
    assert_eq!(s.get(&format!("Patient/{}", other["id"].as_str().unwrap())).status(), 200, "other records are served");
}

/// Overwrites the type byte of the B-tree page holding the sealed bytes of the only `rtype`
/// row (the server is stopped and its WAL folded into the file).
fn break_page(inst: &Instance, rtype: &str) {
    let sealed: Vec<u8> = {
        let c = rusqlite::Connection::open(db(inst)).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        c.query_row("SELECT sealed FROM versions WHERE rtype = ?1", [rtype], |r| r.get(0)).unwrap()
    };
    let mut file = std::fs::read(db(inst)).unwrap();
    let at = file.windows(32).position(|w| w == &sealed[..32]).expect("the sealed row is in the file");
    let page = at / 4096 * 4096;
    assert!(page > 0);
    file[page] = 0x00; // not a B-tree page type
    std::fs::write(db(inst), file).unwrap();
}

#[test]
fn a_damaged_database_page_stops_the_start_and_is_named_by_verify() {
    let inst = Instance::init();
    let s = inst.serve();
    s.create(&patient("3171054708900003", "Pagefam"));
    s.stop();
    break_page(&inst, "Patient");
    let (code, v) = verify(&inst, &inst.data_dir());
    assert_eq!(code, 1, "{v}");
    assert!(v["problems"].as_array().unwrap().iter().any(|p| p["kind"] == "file" && p["name"] == "brankas.db"), "the damaged file is named: {v}");
    let before = std::fs::read_to_string(inst.log_file()).unwrap_or_default().len();
    let (mut child, listening) = inst.spawn_serve(&["--insecure-http"]);
    let status = child.wait().unwrap();
    assert!(listening.is_none(), "the server started on a damaged database: {listening:?}");
    assert!(!status.success());
    let said = std::fs::read_to_string(inst.log_file()).unwrap()[before..].to_string();
    assert!(said.contains("damaged") && said.contains("brankas.db"), "the refusal says what is damaged: {said}");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir` is 0600 and every directory 0700.
fn private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            private(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{} is readable by others", p.display());
        }
    }
}

fn binary(s: &Server, pid: &str, bytes: &[u8]) -> String {
    let b = s.create(&json!({"resourceType": "Binary", "contentType": "application/octet-stream", "securityContext": {"reference": format!("Patient/{pid}")},
        "data": base64::engine::general_purpose::STANDARD.encode(bytes)}));
    b["id"].as_str().unwrap().to_string()
}

fn restore_into(inst: &Instance, from: &Path, to: &Path, reason: &str) -> Value {
    let (code, v, err) = run(&["restore", "--reason", reason, "--key-file", inst.key_file().to_str().unwrap(), "--from", from.to_str().unwrap(), "--data-dir"], &[to]);
    assert_eq!(code, 0, "restore failed: {err}");
    v
}

#[test]
fn a_backup_under_write_load_restores_every_acknowledged_write_and_verifies() {
    let inst = Instance::init();
    let s = inst.serve();
    let first = s.create(&patient("3171054708900004", "Backupfam"));
    let pid = first["id"].as_str().unwrap().to_string();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let bin = binary(&s, &pid, &content);
    // Writers keep creating patients through the backup; each notes what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(std::time::Instant, String)>::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            let (http, url, token) = (s.http.clone(), s.url("Patient"), s.token.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let body = patient(&format!("317105470890{:04}", 2000 + w * 2000 + i % 2000), &format!("Loadfam{w}x{i}"));
                    let r = http.post(&url).bearer_auth(&token).header("content-type", "application/fhir+json").body(serde_json::to_vec(&body).unwrap()).send().unwrap();
                    assert_eq!(r.status(), 201, "a write under load failed");
                    {
                        let v: Value = r.json().unwrap();
                        acked.lock().unwrap().push((std::time::Instant::now(), v["id"].as_str().unwrap().to_string()));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while acked.lock().unwrap().len() < 30 {
        assert!(std::time::Instant::now() < deadline && !writers.iter().any(|w| w.is_finished()), "the writers stopped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = inst.root.path().join("backup-1");
    let began = std::time::Instant::now();
    let b = backup(&inst, &out);
    while acked.lock().unwrap().iter().filter(|(t, _)| *t > began).count() < 10 {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(120) && !writers.iter().any(|w| w.is_finished()), "the writers stopped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(b["verified"], true, "{b}");
    assert!(b["blobs"].as_u64().unwrap() >= 1, "the attachment is in the backup: {b}");
    private(&out);
    let before: Vec<String> = acked.lock().unwrap().iter().filter(|(t, _)| *t < began).map(|(_, id)| id.clone()).collect();
    assert!(before.len() >= 30);
    s.stop();
    // The backup holds no key file and nothing in plaintext.
    for f in common::all_files(&out) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"Backupfam") && !bytes.windows(7).any(|w| w == b"Loadfam"), "plaintext in {}", f.display());
        assert!(!f.to_string_lossy().contains(".key"), "{}", f.display());
    }
    // The directory is lost; the backup comes back in its place.
    std::fs::rename(inst.data_dir(), inst.root.path().join("lost")).unwrap();
    let r = restore_into(&inst, &out, &inst.data_dir(), "drill: data directory lost");
    assert_eq!(r["audit_size"], b["audit_size"], "{r}");
    private(&inst.data_dir());
    let (code, v) = verify(&inst, &inst.data_dir());
    assert_eq!(code, 0, "the restored directory verifies: {v}");
    assert!(v["counts"]["attachments"].as_u64().unwrap() >= 1, "{v}");
    audit_intact(&inst);
    // A server starts on it and serves every write acknowledged before the backup began.
    let s = inst.serve();
    for id in &before {
        assert_eq!(s.get(&format!("Patient/{id}")).status(), 200, "Patient/{id} acknowledged before the backup is missing");
    }
    let r = s.http.get(s.url(&format!("Binary/{bin}"))).bearer_auth(&s.token).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), content, "the attachment comes back whole");
    assert_eq!(s.create(&patient("3171054708900005", "Afterfam"))["resourceType"], "Patient", "the restored directory takes writes");
    // The restore is in the audit log: the security officer sees it.
    s.stop();
    let v = audit_intact(&inst);
    assert!(v["records"].as_u64().unwrap() > b["audit_size"].as_u64().unwrap());
}

#[test]
fn a_plain_copy_of_an_older_directory_is_refused_while_its_restore_is_accepted() {
    let inst = Instance::init();
    let s = inst.serve();
    let old = s.create(&patient("3171054708900006", "Oldfam"));
    s.stop();
    // The same older state twice: a plain copy, and a backup.
    let copy = inst.root.path().join("plain-copy");
    assert!(Command::new("cp").arg("-a").arg(inst.data_dir()).arg(&copy).status().unwrap().success());
    let out = inst.root.path().join("backup-old");
    backup(&inst, &out);
    let s = inst.serve();
    for i in 0..5 {
        s.create(&patient(&format!("317105470890010{i}"), "Newerfam"));
    }
    s.stop();
    // The plain copy put in place is refused.
    std::fs::rename(inst.data_dir(), inst.root.path().join("newer")).unwrap();
    std::fs::rename(&copy, inst.data_dir()).unwrap();
    let (mut child, listening) = inst.spawn_serve(&["--insecure-http"]);
    assert!(!child.wait().unwrap().success() && listening.is_none(), "a plain copy of older state must not start");
    let log = std::fs::read_to_string(inst.log_file()).unwrap();
    assert!(log.contains("refusing to start"), "{log}");
    // A restore of the same older state is accepted, audited, and starts.
    std::fs::remove_dir_all(inst.data_dir()).unwrap();
    let (code, _, err) = run(&["restore", "--key-file", inst.key_file().to_str().unwrap(), "--from", out.to_str().unwrap(), "--data-dir"], &[&inst.data_dir()]);
    assert_eq!(code, 0, "{err}");
    // Into a directory that is not empty: refused unless forced.
    let (code, _, err) = run(&["restore", "--key-file", inst.key_file().to_str().unwrap(), "--from", out.to_str().unwrap(), "--data-dir"], &[&inst.data_dir()]);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    let s = inst.serve();
    assert_eq!(s.get(&format!("Patient/{}", old["id"].as_str().unwrap())).status(), 200);
    s.stop();
    audit_intact(&inst);
    // A backup altered after it was made is refused before anything is restored.
    let db = out.join("brankas.guard.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    let target = inst.root.path().join("another");
    let (code, _, err) = run(&["restore", "--key-file", inst.key_file().to_str().unwrap(), "--from", out.to_str().unwrap(), "--data-dir"], &[&target]);
    assert_ne!(code, 0);
    assert!(err.contains("brankas.guard.db") && err.contains("manifest"), "{err}");
    assert!(!target.exists());
}

#[test]
fn database_and_attachment_files_are_the_owners_alone() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&patient("3171054708900007", "Modefam"));
    binary(&s, p["id"].as_str().unwrap(), b"some attachment bytes");
    private(&inst.data_dir());
    s.stop();
    private(&inst.data_dir());
}
