//! State cannot be rolled back in silence (threat model invariant 14): the audit log, the
//! client registry, the guard's state and the data's versions are anchored beside the key
//! file, and a data directory behind its anchor does not start, unless the operator accepts
//! it with a reason, which is audited and alerted.

mod common;

use std::path::PathBuf;

use common::{Caller, Instance, NIK_SYSTEM, Server, patient};
use serde_json::Value;

const DBS: [&str; 3] = ["brankas.db", "brankas.audit.db", "brankas.guard.db"];

fn file(inst: &Instance, name: &str) -> PathBuf {
    inst.data_dir().join(name)
}

/// Copies a database file of the stopped server aside (with its WAL if one is left).
fn backup(inst: &Instance, name: &str) -> PathBuf {
    let to = inst.root.path().join(format!("backup-{name}"));
    std::fs::copy(file(inst, name), &to).unwrap();
    let wal = file(inst, &format!("{name}-wal"));
    if wal.exists() {
        std::fs::copy(&wal, inst.root.path().join(format!("backup-{name}-wal"))).unwrap();
    }
    to
}

/// Deletes a database file with its WAL and shared-memory files.
fn delete(inst: &Instance, name: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(file(inst, &format!("{name}{suffix}")));
    }
}

/// Puts a backup in place of the database file.
fn restore(inst: &Instance, name: &str, from: &PathBuf) {
    delete(inst, name);
    std::fs::copy(from, file(inst, name)).unwrap();
    let wal = inst.root.path().join(format!("backup-{name}-wal"));
    if wal.exists() {
        std::fs::copy(&wal, file(inst, &format!("{name}-wal"))).unwrap();
    }
}

fn anchor_file(inst: &Instance) -> PathBuf {
    let mut p = inst.key_file().into_os_string();
    p.push(".anchor");
    PathBuf::from(p)
}

/// Some work: patients written and read through the API.
fn work(s: &Server, from: usize, n: usize) {
    for i in from..from + n {
        let p = s.create(&patient(&format!("31710547089{:05}", i + 1), &format!("Rollfam{i}")));
        assert_eq!(s.get(&format!("Patient/{}", p["id"].as_str().unwrap())).status(), 200);
    }
    let r = s.get(&format!("Patient?identifier={NIK_SYSTEM}%7C31710547089{:05}", from + 1));
    assert_eq!(r.status(), 200);
}

/// `brankas serve` refuses to start: exits non-zero without listening, and says why on
/// stderr naming `part` (and no patient data). Returns what it said.
fn refused(inst: &Instance, part: &str) -> String {
    let before = std::fs::read_to_string(inst.log_file()).unwrap_or_default().len();
    let (mut child, listening) = inst.spawn_serve(&["--insecure-http"]);
    let status = child.wait().unwrap();
    assert!(listening.is_none(), "the server started on state behind its anchor ({part}): {listening:?}");
    assert!(!status.success(), "refusal must exit non-zero");
    let log = std::fs::read_to_string(inst.log_file()).unwrap();
    let said = log[before..].to_string();
    assert!(said.contains("refusing to start") && said.contains(part), "the refusal must name {part:?}: {said}");
    assert!(!said.contains("Rollfam"), "the refusal must carry no patient data: {said}");
    said
}

/// The operator accepts the state with a reason: the server starts, the audit log holds an
/// operator record with the reason, and an alert is listed.
fn accepted(inst: &Instance, reason: &str) -> Server {
    let mut s = inst.serve_with(&["--insecure-http", "--accept-state-rollback", reason]);
    s.token = s.new_token();
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let (st, al) = admin(&s, &officer, "/admin/alerts");
    assert_eq!(st, 200, "{al}");
    let al = al["alerts"].as_array().unwrap();
    assert!(
        al.iter().any(|a| a["kind"] == "state-rollback-accepted" && a["severity"] == "critical" && a.to_string().contains(reason)),
        "an alert naming the accepted rollback and its reason: {al:?}"
    );
    let (st, ev) = s.get_as(&officer.token, "AuditEvent?agent=local-operator&_count=100");
    assert_eq!(st, 200, "{ev}");
    assert!(ev.to_string().contains(reason), "an operator audit record with the reason: {ev:.2000}");
    // Accepted once: the next start needs nothing.
    s.stop();
    let s = inst.serve();
    assert_eq!(s.get("metadata").status(), 200);
    s
}

fn admin(s: &Server, who: &Caller, path: &str) -> (u16, Value) {
    let r = s.http.get(format!("{}{path}", s.root)).bearer_auth(&who.token).send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

#[test]
fn an_audit_log_replaced_by_an_older_copy_is_refused() {
    let inst = Instance::init();
    let s = inst.serve();
    work(&s, 0, 3);
    s.stop();
    let old = backup(&inst, "brankas.audit.db");
    let s = inst.serve();
    work(&s, 3, 3);
    s.stop();
    restore(&inst, "brankas.audit.db", &old);
    refused(&inst, "audit log");
    accepted(&inst, "restored the audit log from last night's backup").stop();
}

#[test]
fn a_deleted_audit_log_is_refused() {
    let inst = Instance::init();
    let s = inst.serve();
    work(&s, 0, 3);
    s.stop();
    delete(&inst, "brankas.audit.db");
    refused(&inst, "audit log");
    accepted(&inst, "audit disk replaced after a failure").stop();
}

#[test]
fn a_deleted_guard_database_is_refused() {
    let inst = Instance::init();
    let o = inst.cli(&["canary", "create", "--count", "3", "--organization", "Organization/test-facility"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    delete(&inst, "brankas.guard.db");
    refused(&inst, "guard database");
    accepted(&inst, "guard state lost with its disk").stop();
}

#[test]
fn canaries_removed_from_the_guard_database_are_refused() {
    let inst = Instance::init();
    let o = inst.cli(&["canary", "create", "--count", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rusqlite::Connection::open(file(&inst, "brankas.guard.db")).unwrap().execute("DELETE FROM canaries", []).unwrap();
    refused(&inst, "canaries");
}

#[test]
fn a_main_database_rolled_back_to_an_older_copy_is_refused() {
    let inst = Instance::init();
    let s = inst.serve();
    work(&s, 0, 2);
    s.stop();
    let old = backup(&inst, "brankas.db");
    let s = inst.serve();
    work(&s, 2, 3);
    s.stop();
    restore(&inst, "brankas.db", &old);
    refused(&inst, "main database");
    accepted(&inst, "restored the database after a disk failure").stop();
}

#[test]
fn a_client_row_restored_from_an_older_backup_is_refused() {
    let inst = Instance::init();
    let c = inst.register(&["--name", "old clinic", "--role", "facility-system", "--organization", "Organization/old", "--scopes", "system/Patient.rs"]);
    let id = c["client_id"].as_str().unwrap();
    let db = || rusqlite::Connection::open(file(&inst, "brankas.db")).unwrap();
    let active: Vec<u8> = db().query_row("SELECT doc FROM clients WHERE client_id = ?1", [id], |r| r.get(0)).unwrap();
    let o = inst.cli(&["clients", "revoke", id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The revoked client's row as an older backup had it: authentic, and active.
    db().execute("UPDATE clients SET doc = ?1 WHERE client_id = ?2", rusqlite::params![active, id]).unwrap();
    refused(&inst, "client registry");
    // Nor does any registry change go through on the tampered registry.
    let o = inst.cli(&["clients", "suspend", &inst.client_id]);
    assert!(!o.status.success(), "a CLI command opened a registry behind its anchor");
    let s = accepted(&inst, "registry restored on purpose");
    // Accepted means as it is: the operator now revokes the client again, and it stays so.
    let o = inst.cli(&["clients", "revoke", id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s.stop();
    assert!(inst.cli(&["anchor", "check"]).status.success());
}

#[test]
fn a_deleted_anchor_is_refused() {
    let inst = Instance::init();
    let s = inst.serve();
    work(&s, 0, 1);
    s.stop();
    std::fs::remove_file(anchor_file(&inst)).unwrap();
    refused(&inst, "is missing, but this data directory was anchored");
    let o = inst.cli(&["anchor", "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    let o = inst.cli(&["anchor", "accept", "--reason", "key file restored without its anchor"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = inst.serve();
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let (_, al) = admin(&s, &officer, "/admin/alerts");
    assert!(al.to_string().contains("key file restored without its anchor"), "{al}");
    s.stop();
}

#[test]
fn a_directory_never_anchored_is_anchored_on_its_first_start_with_an_alert() {
    let inst = Instance::init();
    // As a directory of an earlier release: no anchor, no mark.
    std::fs::remove_file(anchor_file(&inst)).unwrap();
    rusqlite::Connection::open(file(&inst, "brankas.db")).unwrap().execute("DELETE FROM meta WHERE name = 'anchor.id'", []).unwrap();
    let s = inst.serve();
    assert!(anchor_file(&inst).exists());
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let (_, al) = admin(&s, &officer, "/admin/alerts");
    assert!(al["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "state-anchor-created"), "{al}");
    s.stop();
}

/// No false alarm: restarts after normal work, CLI commands beside a running server, two
/// servers on one directory, and a `kill -9` in the middle of writes all start again (the
/// anchor may lag the state; only behind is refused).
#[test]
fn normal_restarts_and_a_crash_mid_writes_start_again() {
    let inst = Instance::init();
    let s = inst.serve();
    work(&s, 0, 3);
    s.stop();
    let s = inst.serve();
    let s2 = inst.serve();
    work(&s, 3, 2);
    work(&s2, 5, 2);
    inst.register(&["--name", "beside", "--role", "facility-system", "--organization", "Organization/b", "--scopes", "system/Patient.rs"]);
    let o = inst.cli(&["canary", "create", "--count", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s2.stop();
    // A crash in the middle of writes.
    let token = s.token.clone();
    let (base, http) = (s.base.clone(), s.http.clone());
    let writer = std::thread::spawn(move || {
        for i in 0..200 {
            let p = patient(&format!("31710547088{:05}", i + 1), "Crashfam");
            let r = http.post(format!("{base}/Patient")).bearer_auth(&token).header("content-type", "application/fhir+json").body(p.to_string()).send();
            if r.is_err() {
                return i;
            }
        }
        200
    });
    std::thread::sleep(std::time::Duration::from_millis(700));
    s.kill9();
    let written = writer.join().unwrap();
    assert!(written > 0, "the server was killed before any write");
    let o = inst.cli(&["anchor", "check"]);
    assert!(o.status.success(), "nothing is behind after a crash: {}", String::from_utf8_lossy(&o.stdout));
    let s = inst.serve();
    work(&s, 10, 1);
    s.stop();
    assert!(inst.cli(&["anchor", "check"]).status.success());
    for name in DBS {
        assert!(file(&inst, name).exists());
    }
}
