//! No write without its audit record (issue 14, finding 2): a write's audit record is durable
//! before its data commits, so when the audit log cannot be written nothing is stored (503),
//! and a retry after recovery stores exactly one resource. `/health/ready` names the failing
//! audit log meanwhile, and recovers with it.
//!
//! The audit log is made to fail for real, whatever the user (CI runs as root, so file modes
//! stop nothing): a trigger in the audit database refuses every insert into the log.

mod common;

use common::{Instance, NIK_SYSTEM, Server, patient};
use serde_json::{Value, json};

fn audit_db(inst: &Instance) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(inst.data_dir().join("brankas.audit.db")).expect("open the audit database");
    c.busy_timeout(std::time::Duration::from_secs(20)).unwrap();
    c
}

/// Every append to the audit log fails from now on (until [`heal`]).
fn break_audit(inst: &Instance) {
    audit_db(inst).execute_batch("CREATE TRIGGER refuse_appends BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log refused by the test'); END;").unwrap();
}

fn heal(inst: &Instance) {
    audit_db(inst).execute_batch("DROP TRIGGER refuse_appends;").unwrap();
}

fn ready(s: &Server) -> (u16, Value) {
    let r = s.http.get(format!("{}/health/ready", s.root)).send().unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn nik_count(s: &Server, nik: &str) -> u64 {
    let (st, b) = s.get_as(&s.token, &format!("Patient?identifier={NIK_SYSTEM}%7C{nik}"));
    assert_eq!(st, 200, "{b}");
    b["total"].as_u64().unwrap()
}

#[test]
fn a_write_whose_audit_record_cannot_be_written_is_not_stored() {
    let inst = Instance::init();
    let s = inst.serve();
    let created = s.create(&patient("3171054708900011", "Sebelum"));
    let pid = created["id"].as_str().unwrap().to_string();

    break_audit(&inst);
    // A create, an update and a delete: each answered 503, none of them stored.
    let p = patient("3171054708900012", "Gagal");
    assert_eq!(s.post("Patient", &p).status(), 503, "create while the audit log fails");
    let mut changed = created.clone();
    changed["name"] = json!([{"family": "Berubah"}]);
    assert_eq!(s.put(&format!("Patient/{pid}"), &changed).status(), 503, "update while the audit log fails");
    assert_eq!(s.delete(&format!("Patient/{pid}")).status(), 503, "delete while the audit log fails");

    heal(&inst);
    assert_eq!(nik_count(&s, "3171054708900012"), 0, "the refused create was not stored");
    let (st, now) = s.get_as(&s.token, &format!("Patient/{pid}"));
    assert_eq!(st, 200, "the refused delete was not stored: {now}");
    assert_eq!(now["meta"]["versionId"], "1", "the refused update was not stored: {now}");
    assert_eq!(now["name"][0]["family"], "Sebelum");

    // The retry stores exactly one, and it survives a restart.
    assert_eq!(s.post("Patient", &p).status(), 201, "retry after recovery");
    assert_eq!(nik_count(&s, "3171054708900012"), 1);
    s.stop();
    let s = inst.serve();
    assert_eq!(nik_count(&s, "3171054708900012"), 1, "exactly one after a restart");
}

#[test]
fn readiness_names_the_failing_audit_log_and_recovers_with_it() {
    let inst = Instance::init();
    let s = inst.serve();
    let (st, body) = ready(&s);
    assert_eq!(st, 200, "ready before anything fails: {body}");
    assert_eq!(body["failing"], json!([]), "{body}");
    break_audit(&inst);
    assert_eq!(s.post("Patient", &patient("3171054708900014", "Siap")).status(), 503);
    let (st, body) = ready(&s);
    assert_eq!(st, 503, "not ready while the audit log fails: {body}");
    assert_eq!(body["failing"], json!(["audit-log"]), "{body}");
    assert_eq!(body["components"]["database"], "ok", "{body}");
    // Liveness is not readiness: the process still answers.
    assert_eq!(s.http.get(format!("{}/health", s.root)).send().unwrap().status(), 200);

    heal(&inst);
    // The log is probed again at most once a second while it fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (st, body) = loop {
        let (st, body) = ready(&s);
        if st == 200 || std::time::Instant::now() > deadline {
            break (st, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(st, 200, "ready again once the audit log can be written: {body}");
    assert_eq!(body["components"]["audit-log"], "ok", "{body}");
}

#[test]
fn every_write_has_a_record_written_ahead_naming_its_version() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient("3171054708900013", "Tercatat"))["id"].as_str().unwrap().to_string();
    let mut p = s.get_as(&s.token, &format!("Patient/{pid}")).1;
    p["gender"] = json!("female");
    assert_eq!(s.put(&format!("Patient/{pid}"), &p).status(), 200);
    let officer = s.token_for(&inst.officer_id, &inst.officer_secret);
    let (st, b) = s.get_as(&officer, &format!("AuditEvent?patient={pid}&_count=200"));
    assert_eq!(st, 200, "{b}");
    let events: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    for (v, action) in [(1, "C"), (2, "U")] {
        let reference = format!("Patient/{pid}/_history/{v}");
        let ahead: Vec<&&Value> = events.iter().filter(|e| e["entity"].as_array().unwrap().iter().any(|x| x["what"]["reference"] == json!(reference))).collect();
        assert_eq!(ahead.len(), 1, "one record written ahead of {reference}: {b}");
        let e = ahead[0];
        assert_eq!(e["action"], action, "{e}");
        assert!(e.get("outcome").is_none(), "a record written ahead has no outcome yet: {e}");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], json!(inst.client_id), "{e}");
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1", "{e}");
        // Its request's own outcome record follows it, under the same request id.
        let rid = e["entity"].as_array().unwrap().iter().find(|x| x["type"]["code"] == "XrequestId").unwrap()["what"]["identifier"]["value"].clone();
        assert!(rid.as_str().is_some_and(|r| !r.is_empty()), "{e}");
        let outcome = events.iter().find(|o| o["outcome"] == "0" && o["entity"].as_array().unwrap().iter().any(|x| x["what"]["identifier"]["value"] == rid));
        assert!(outcome.is_some_and(|o| o["id"].as_str().unwrap().parse::<u64>().unwrap() > e["id"].as_str().unwrap().parse::<u64>().unwrap()), "outcome record after {e}");
    }
}
