//! The audit log through the public interfaces: every access leaves exactly the expected
//! records (one per patient touched, with actor and outcome), security officers search them as
//! AuditEvent, patients read their own history in plain words, the log fails closed, and
//! `brankas audit verify` catches every kind of tampering with the log file.

mod common;

use std::path::Path;

use common::{Caller, Instance, NIK_SYSTEM, Server, copy_files, observation, patient};
use serde_json::{Value, json};

/// Every AuditEvent of a search, following next links.
fn audit_events(s: &Server, token: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let (st, mut b) = s.get_as(token, &format!("AuditEvent?{query}"));
    assert_eq!(st, 200, "{b}");
    loop {
        out.extend(b["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()));
        let next = common::next_link(&b);
        let Some(next) = next else { break };
        let r = s.http.get(next).bearer_auth(token).send().unwrap();
        assert_eq!(r.status(), 200);
        b = r.json().unwrap();
    }
    out
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn client_of(e: &Value) -> &str {
    e["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or_default()
}

fn patients_of(e: &Value) -> Vec<String> {
    e["entity"].as_array().into_iter().flatten().filter(|x| x["role"]["code"] == "1").filter_map(|x| x["what"]["reference"].as_str().map(String::from)).collect()
}

/// Counts of (subtype, outcome, client) among events.
fn count(events: &[Value], sub: &str, outcome: &str, client: &str) -> usize {
    events.iter().filter(|e| subtype(e) == sub && e["outcome"] == outcome && client_of(e) == client).count()
}

/// Records written ahead of a write (no outcome yet).
fn ahead(events: &[Value], sub: &str, client: &str) -> usize {
    events.iter().filter(|e| subtype(e) == sub && e.get("outcome").is_none() && client_of(e) == client).count()
}

#[test]
fn every_access_is_recorded_once_per_patient_and_patients_see_theirs() {
    let inst = Instance::init();
    let s = inst.serve();
    let fac = Caller { id: s.client_id.clone(), token: s.token.clone() };
    // The facility names itself in the directory; patients will read that name.
    let (st, v) = s.call(
        &fac.token,
        reqwest::Method::PUT,
        "Organization/test-facility",
        Some(&json!({"resourceType": "Organization", "id": "test-facility", "name": "Puskesmas Uji Coba"})),
        &[],
    );
    assert_eq!(st, 201, "{v}");
    let p1 = s.create(&patient("3171054708900003", "Lestari"))["id"].as_str().unwrap().to_string();
    let p2 = s.create(&patient("3171054708900011", "Wulandari"))["id"].as_str().unwrap().to_string();
    let obs = s.create(&observation(&p1))["id"].as_str().unwrap().to_string();
    let clin = inst
        .caller(&s, &["--name", "dr sari", "--role", "clinician", "--organization", "Organization/test-facility", "--practitioner", "Practitioner/sari", "--scopes", "user/*.rs"]);
    let stranger = inst.caller(&s, &["--name", "rs lain", "--role", "facility-system", "--organization", "Organization/rs-lain", "--scopes", "system/*.rs"]);
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let me = inst.caller(&s, &["--name", "app of p1", "--role", "patient", "--patient", &format!("Patient/{p1}"), "--scopes", "patient/*.rs"]);

    // The clinician: 2 reads, 3 searches, 1 $everything of p1; 1 read of p2.
    assert_eq!(s.get_as(&clin.token, &format!("Patient/{p1}")).0, 200);
    assert_eq!(s.get_as(&clin.token, &format!("Observation/{obs}")).0, 200);
    for _ in 0..3 {
        let (st, b) = s.get_as(&clin.token, &format!("Observation?patient={p1}"));
        assert_eq!((st, b["total"].as_u64()), (200, Some(1)));
    }
    assert_eq!(s.get_as(&clin.token, &format!("Patient/{p1}/$everything")).0, 200);
    assert_eq!(s.get_as(&clin.token, &format!("Patient/{p2}")).0, 200);
    // An identity lookup answering one patient touches that patient only.
    let (st, b) = s.get_as(&clin.token, &format!("Patient?identifier={NIK_SYSTEM}|3171054708900011"));
    assert_eq!((st, b["total"].as_u64()), (200, Some(1)));
    // A transaction writing into two patients makes two records.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(&p1), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(&p2), "request": {"method": "POST", "url": "Observation"}}]});
    let (st, v) = s.call(&fac.token, reqwest::Method::POST, "", Some(&tx), &[]);
    assert_eq!(st, 200, "{v}");
    // A facility without care: two denials on p1, then break-glass.
    assert_eq!(s.get_as(&stranger.token, &format!("Patient/{p1}")).0, 403);
    assert_eq!(s.get_as(&stranger.token, &format!("Observation?patient={p1}")).0, 403);
    let (st, _) = s.call(&stranger.token, reqwest::Method::GET, &format!("Patient/{p1}"), None, &[("X-Purpose-Of-Use", "BTG"), ("X-Break-Glass-Reason", "unconscious at ER")]);
    assert_eq!(st, 200);

    // The officer's view of p1.
    let ev = audit_events(&s, &officer.token, &format!("patient={p1}&_count=7"));
    assert_eq!(count(&ev, "read", "0", &clin.id), 2, "clinician reads of p1");
    assert_eq!(count(&ev, "search-type", "0", &clin.id), 3);
    assert_eq!(count(&ev, "operation", "0", &clin.id), 1);
    assert_eq!(count(&ev, "create", "0", &fac.id), 2, "Patient and Observation created");
    assert_eq!(count(&ev, "transaction", "0", &fac.id), 1, "one record for p1 of the two-patient transaction");
    assert_eq!(count(&ev, "read", "4", &stranger.id), 1, "the denied read");
    assert_eq!(count(&ev, "search-type", "4", &stranger.id), 1, "the denied search");
    assert_eq!(count(&ev, "read", "0", &stranger.id), 1, "the break-glass read");
    // Each write's record written ahead of it: the Patient, the Observation, p1's part of the
    // transaction (all creates), and the break-glass grant (the care record it writes).
    assert_eq!(ahead(&ev, "create", &fac.id), 3, "records written ahead of the writes into p1");
    assert_eq!(ahead(&ev, "access-grant", &stranger.id), 1, "the record written ahead of the break-glass grant");
    assert_eq!(ev.len(), 16, "nothing else touched p1: {}", ev.iter().map(|e| format!("{}/{}/{}", subtype(e), e["outcome"], client_of(e))).collect::<Vec<_>>().join(" "));
    assert!(ev.iter().all(|e| patients_of(e) == vec![format!("Patient/{p1}")]), "every record names p1 and only p1");
    let btg = ev.iter().find(|e| client_of(e) == stranger.id && e["outcome"] == "0").unwrap();
    assert_eq!(btg["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "BTG");
    assert_eq!(btg["agent"][0]["purposeOfUse"][0]["text"], "unconscious at ER");
    let denied = ev.iter().find(|e| client_of(e) == stranger.id && subtype(e) == "read" && e["outcome"] == "4").unwrap();
    assert!(denied["outcomeDesc"].as_str().unwrap().contains("no care relationship"), "{denied}");
    let search = ev.iter().find(|e| subtype(e) == "search-type").unwrap();
    assert!(search["entity"].to_string().contains("search parameters: patient"), "query by parameter names: {search}");
    assert!(!ev.iter().any(|e| e.to_string().contains("3171054708900003") || e.to_string().contains("Lestari")), "no identity data in audit events");
    let read = ev.iter().find(|e| subtype(e) == "read" && client_of(e) == clin.id).unwrap();
    assert_eq!(read["agent"][1]["who"]["reference"], "Practitioner/sari");
    assert!(read["agent"].to_string().contains("Organization/test-facility"));
    assert!(read["meta"]["profile"][0].as_str().unwrap().ends_with("IHE.BasicAudit.PatientRead"));

    // p2: the clinician's read, the lookup, its creation, its half of the transaction (each
    // write with its record written ahead).
    let ev2 = audit_events(&s, &officer.token, &format!("patient={p2}"));
    assert_eq!(count(&ev2, "read", "0", &clin.id), 1);
    assert_eq!(count(&ev2, "search-type", "0", &clin.id), 1);
    assert_eq!(count(&ev2, "transaction", "0", &fac.id), 1);
    assert_eq!(ahead(&ev2, "create", &fac.id), 2);
    assert_eq!(ev2.len(), 6, "{}", ev2.iter().map(|e| subtype(e).to_string()).collect::<Vec<_>>().join(" "));
    // By actor, and filtered.
    let by_stranger = audit_events(&s, &officer.token, &format!("agent={}", stranger.id));
    assert_eq!(by_stranger.iter().filter(|e| !patients_of(e).is_empty()).count(), 3);
    assert_eq!(audit_events(&s, &officer.token, &format!("agent={}&outcome=4", stranger.id)).len(), 2);
    let about_obs = audit_events(&s, &officer.token, &format!("entity=Observation/{obs}"));
    assert_eq!(
        about_obs.len(),
        7,
        "its creation (and the record written ahead of it, naming Observation/id/_history/1), the clinician's read, three searches and $everything: {}",
        about_obs.iter().map(|e| subtype(e).to_string()).collect::<Vec<_>>().join(" ")
    );
    let created = audit_events(&s, &officer.token, &format!("patient={p1}&action=C"));
    assert_eq!(created.iter().filter(|e| e["outcome"] == "0").count(), 2, "{}", serde_json::to_string_pretty(&created).unwrap());
    assert_eq!(created.len(), 5, "and the records written ahead of the three creates into p1");
    assert!(audit_events(&s, &officer.token, &format!("patient={p1}&date=lt2020-01-01")).is_empty());
    assert_eq!(audit_events(&s, &officer.token, &format!("patient={p1}&date=ge2020-01-01&outcome=4")).len(), 2);

    // Reading the log is itself recorded.
    let again = audit_events(&s, &officer.token, &format!("patient={p1}&subtype=audit-read"));
    assert!(!again.is_empty() && again.iter().all(|e| client_of(e) == officer.id));

    // The patient's own history, in words.
    let mine = audit_events(&s, &me.token, &format!("patient={p1}"));
    assert!(mine.len() >= 12);
    assert!(mine.iter().all(|e| patients_of(e) == vec![format!("Patient/{p1}")]));
    let texts: Vec<String> = mine.iter().map(|e| e["text"]["div"].as_str().unwrap().to_string()).collect();
    assert!(texts.iter().any(|t| t.contains("A health professional at Puskesmas Uji Coba viewed your test results")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("Seorang tenaga kesehatan di Puskesmas Uji Coba melihat data Anda")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("break-glass") && t.contains("unconscious at ER")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("This access was refused")), "{texts:?}");
    // Nothing about anyone else, and no officer-only searches.
    assert_eq!(s.get_as(&me.token, &format!("AuditEvent?patient={p2}")).0, 403);
    assert_eq!(s.get_as(&me.token, "AuditEvent").0, 403);
    assert_eq!(s.get_as(&clin.token, &format!("AuditEvent?patient={p1}")).0, 403);
    assert_eq!(s.get_as(&fac.token, "AuditEvent").0, 403);
    // AuditEvent is the server's: not written by clients.
    assert_eq!(s.call(&fac.token, reqwest::Method::POST, "AuditEvent", Some(&json!({"resourceType": "AuditEvent"})), &[]).0, 405);
    // Bad parameters are refused cleanly.
    assert_eq!(s.get_as(&officer.token, "AuditEvent?date=yesterday").0, 400);
    assert_eq!(s.get_as(&officer.token, "AuditEvent?name=Lestari").0, 400);
}

#[test]
fn token_issuance_and_client_administration_are_recorded() {
    let inst = Instance::init();
    let s = inst.serve();
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    // A refused token request (wrong secret) and an admin action over HTTP.
    let r = s.http.post(format!("{}/auth/token", s.root)).basic_auth(&s.client_id, Some("wrong")).form(&[("grant_type", "client_credentials")]).send().unwrap();
    assert_eq!(r.status(), 401);
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);
    let r = s.http.get(format!("{}/admin/clients", s.root)).bearer_auth(&admin).send().unwrap();
    assert_eq!(r.status(), 200);
    let tokens = audit_events(&s, &officer.token, &format!("agent={}&subtype=token", s.client_id));
    assert_eq!(tokens.iter().filter(|e| e["outcome"] == "4").count(), 1, "the refused token request");
    assert!(tokens.iter().any(|e| e["outcome"] == "0"), "the issued tokens");
    let admin_events = audit_events(&s, &officer.token, &format!("agent={}&subtype=client-admin", inst.admin_id));
    assert_eq!(admin_events.len(), 1);
    // The CLI's own administration (the registrations above) is recorded too.
    let local = audit_events(&s, &officer.token, "agent=local-operator&subtype=client-admin");
    assert!(local.len() >= 2, "clients created with the CLI: {}", local.len());
    // An offline import while the server runs: one operator record naming the facility. The
    // server appends next and finds the log grown under it (as a second replica would).
    let file = inst.root.path().join("one.ndjson");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("3171054708900003", "Lestari"), "request": {"method": "POST", "url": "Patient"}}]});
    std::fs::write(&file, format!("{bundle}\n")).unwrap();
    let o = inst.cli(&["import", "--quiet", "--organization", "Organization/rs-impor", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let imports = audit_events(&s, &officer.token, "agent=local-operator&subtype=import");
    // The run's record, and the one written ahead of its patient's data.
    let (run, ahead): (Vec<&Value>, Vec<&Value>) = imports.iter().partition(|e| e.get("outcome").is_some());
    assert_eq!((run.len(), ahead.len()), (1, 1), "{imports:?}");
    assert!(run[0]["agent"].to_string().contains("Organization/rs-impor"), "{}", run[0]);
    assert!(ahead[0]["agent"].to_string().contains("Organization/rs-impor"), "{}", ahead[0]);
    s.stop();
    let out = inst.cli(&["audit", "verify"]);
    assert!(out.status.success(), "two writers kept one intact log: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn without_a_durable_audit_record_nothing_is_served() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&patient("3171054708900003", "Lestari"))["id"].as_str().unwrap().to_string();
    assert_eq!(s.get(&format!("Patient/{p}")).status(), 200);
    // The audit sink fails (as a full disk would): every insert into the log is refused.
    let db = rusqlite::Connection::open(inst.data_dir().join("brankas.audit.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch("CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'no space left'); END;").unwrap();
    for path in [format!("Patient/{p}"), format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"), format!("Patient/{p}/$everything")] {
        let r = s.get(&path);
        assert_eq!(r.status(), 503, "{path}");
        let body = r.text().unwrap();
        assert!(body.contains("OperationOutcome") && body.contains("audit"), "{body}");
        assert!(!body.contains("Lestari") && !body.contains(&p), "no data leaves without its audit record: {body}");
    }
    db.execute_batch("DROP TRIGGER audit_fails;").unwrap();
    assert_eq!(s.get(&format!("Patient/{p}")).status(), 200, "serving resumes once the log can be written");
    drop(s);
    let out = inst.cli(&["audit", "verify"]);
    assert!(out.status.success(), "the log stays intact across the failure: {}", String::from_utf8_lossy(&out.stdout));
}

fn verify(inst: &Instance, data: &Path, checkpoint: Option<&Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["audit", "verify", "--data-dir"]).arg(data).arg("--key-file").arg(inst.key_file());
    if let Some(c) = checkpoint {
        cmd.arg("--checkpoint").arg(c);
    }
    let o = cmd.output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn audit_verify_detects_every_kind_of_tampering() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&patient("3171054708900003", "Lestari"))["id"].as_str().unwrap().to_string();
    for _ in 0..20 {
        assert_eq!(s.get(&format!("Patient/{p}")).status(), 200);
    }
    s.stop(); // graceful: the last records are signed
    let (ok, out) = verify(&inst, &inst.data_dir(), None);
    assert!(ok, "{out}");
    let report: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let n = report["records"].as_u64().unwrap();
    assert_eq!(n, 26, "three CLI records (the harness officer, the facility client, its approval), one token, one create and the record written ahead of it, 20 reads: {report}");
    assert_eq!(report["signed_size"].as_u64(), Some(n), "the whole log is signed after a graceful stop");
    // The published checkpoint, kept outside.
    let cp_file = inst.root.path().join("published-checkpoint");
    let o = inst.cli(&["audit", "checkpoint"]);
    assert!(o.status.success());
    std::fs::write(&cp_file, &o.stdout).unwrap();

    let case_with = |name: &str, f: &dyn Fn(&rusqlite::Connection)| -> std::path::PathBuf {
        let d = inst.root.path().join(format!("case-{name}"));
        copy_files(&inst.data_dir(), &d);
        let c = rusqlite::Connection::open(d.join("brankas.audit.db")).unwrap();
        f(&c);
        drop(c);
        d
    };
    let case = |name: &str, sql: &str| case_with(name, &|c| c.execute_batch(sql).unwrap());
    let expect_fail = |name: &str, d: &Path, cp: Option<&Path>, needle: &str| {
        let (ok, out) = verify(&inst, d, cp);
        assert!(!ok, "{name}: verify passed on a tampered log: {out}");
        assert!(out.contains(needle), "{name}: expected '{needle}' in: {out}");
    };
    // Edited: one bit of a sealed record.
    let d = case_with("edit", &|c| {
        let mut b: Vec<u8> = c.query_row("SELECT sealed FROM audit_log WHERE seq = 9", [], |r| r.get(0)).unwrap();
        b[20] ^= 1;
        c.execute("UPDATE audit_log SET sealed = ?1 WHERE seq = 9", [b]).unwrap();
    });
    expect_fail("edit", &d, None, "record 9 was altered");
    // Edited in the clear columns: the record now claims another patient, another actor, or
    // another time.
    let d = case("move", "UPDATE audit_log SET partition = randomblob(32) WHERE seq = 1;");
    expect_fail("move", &d, None, "record 1 was altered");
    let d = case("actor", "UPDATE audit_log SET actor = zeroblob(32) WHERE seq = 12;");
    expect_fail("actor", &d, None, "record 12 was altered");
    let d = case("time", "UPDATE audit_log SET time = time - 3600000000 WHERE seq = 13;");
    expect_fail("time", &d, None, "record 13 was altered");
    // Removed.
    let d = case("delete", "DELETE FROM audit_log WHERE seq = 7;");
    expect_fail("delete", &d, None, "record 7 is missing");
    // Inserted: a copy of record 0 slipped in at position 3, the rest moved up.
    let d = case(
        "insert",
        "CREATE TEMP TABLE t AS SELECT * FROM audit_log; DELETE FROM audit_log WHERE seq >= 3;
         INSERT INTO audit_log SELECT 3, time, partition, actor, sealed FROM t WHERE seq = 0;
         INSERT INTO audit_log SELECT seq + 1, time, partition, actor, sealed FROM t WHERE seq >= 3;",
    );
    expect_fail("insert", &d, None, "record 3 was altered");
    // Reordered: records 4 and 5 swapped (every column but the position).
    let d = case(
        "reorder",
        "CREATE TEMP TABLE t AS SELECT * FROM audit_log WHERE seq IN (4, 5); DELETE FROM audit_log WHERE seq IN (4, 5);
         INSERT INTO audit_log SELECT 9 - seq, time, partition, actor, sealed FROM t;",
    );
    expect_fail("reorder", &d, None, "record 4 was altered");
    // Truncated: the last records removed.
    let d = case("truncate", &format!("DELETE FROM audit_log WHERE seq >= {};", n - 3));
    expect_fail("truncate", &d, None, "truncated");
    // Truncated with the newer checkpoints removed too (an attacker cannot sign new ones):
    // a checkpoint kept outside the database names records that are gone.
    let d = case("truncate-covered", &format!("DELETE FROM audit_log WHERE seq >= {m}; DELETE FROM audit_checkpoints WHERE size > {m}; DELETE FROM audit_head;", m = n - 3));
    expect_fail("truncate-covered", &d, Some(&cp_file), "truncated");
    // A forged checkpoint: its size changed, its signature no longer holds.
    let d = case(
        "forged-checkpoint",
        "UPDATE audit_checkpoints SET note = replace(note, char(10) || size || char(10), char(10) || (size + 1) || char(10)) WHERE size = (SELECT MAX(size) FROM audit_checkpoints);",
    );
    expect_fail("forged-checkpoint", &d, None, "is not validly signed");
    // The untouched log still verifies, also against the published checkpoint.
    let (ok, out) = verify(&inst, &inst.data_dir(), Some(&cp_file));
    assert!(ok, "{out}");
}

#[test]
fn checkpoints_and_proofs_verify_against_each_other() {
    use base64::Engine as _;
    use brankas_audit::merkle::{verify_consistency, verify_inclusion};
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&patient("3171054708900003", "Lestari"))["id"].as_str().unwrap().to_string();
    for _ in 0..40 {
        assert_eq!(s.get(&format!("Patient/{p}")).status(), 200);
    }
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let admin_get = |path: &str| -> (u16, Value) {
        let r = s.http.get(format!("{}{path}", s.root)).bearer_auth(&officer.token).send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    };
    // A checkpoint is signed within a second of the last record.
    let mut cp = Value::Null;
    for _ in 0..50 {
        let (st, v) = admin_get("/admin/audit/checkpoint");
        if st == 200 && v["size"].as_u64() >= Some(42) {
            cp = v;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let size = cp["size"].as_u64().expect("a checkpoint covering the reads");
    let b64 = |v: &Value| -> [u8; 32] { base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap().try_into().unwrap() };
    // The verifier key: <origin>+<key hash>+<base64(0x01 || Ed25519 key)>.
    let vk = cp["verifier_key"].as_str().unwrap();
    let key = base64::engine::general_purpose::STANDARD.decode(vk.splitn(3, '+').nth(2).unwrap()).unwrap();
    assert_eq!(key[0], 1);
    let key: [u8; 32] = key[1..].try_into().unwrap();
    let signed = brankas_audit::note::Checkpoint::verify(cp["note"].as_str().unwrap(), cp["origin"].as_str(), &key).expect("the note is signed by the verifier key");
    assert_eq!(signed.size, size);
    for seq in [0, 5, size / 2, size - 1] {
        let (st, pr) = admin_get(&format!("/admin/audit/proof?seq={seq}&size={size}"));
        assert_eq!(st, 200, "{pr}");
        let path: Vec<[u8; 32]> = pr["proof"].as_array().unwrap().iter().map(b64).collect();
        assert!(verify_inclusion(&b64(&pr["leaf_hash"]), seq, size, &path, &signed.root), "record {seq} is in the signed tree");
        assert!(!verify_inclusion(&b64(&pr["leaf_hash"]), (seq + 1) % size, size, &path, &signed.root));
    }
    let (st, c) = admin_get(&format!("/admin/audit/consistency?from=7&to={size}"));
    assert_eq!(st, 200, "{c}");
    let path: Vec<[u8; 32]> = c["proof"].as_array().unwrap().iter().map(b64).collect();
    assert!(verify_consistency(7, size, &path, &b64(&c["from_root"]), &signed.root));
    // Out of range and the wrong role.
    assert_eq!(admin_get(&format!("/admin/audit/proof?seq={size}&size={size}")).0, 400);
    assert_eq!(admin_get(&format!("/admin/audit/consistency?from=0&to={size}")).0, 400);
    let r = s.http.get(format!("{}/admin/audit/checkpoint", s.root)).bearer_auth(&s.token).send().unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn breach_report_lists_exactly_the_patients_a_credential_received() {
    let inst = Instance::init();
    let s = inst.serve();
    let fac = s.token.clone();
    let niks = ["3171054708900003", "3171054708900011", "3171054708900029", "3171054708900037", "3171054708900045"];
    let names = ["Lestari", "Wulandari", "Rahayu", "Susanti", "Hidayati"];
    let ids: Vec<String> = niks.iter().zip(names).map(|(n, f)| s.create(&patient(n, f))["id"].as_str().unwrap().to_string()).collect();
    let _ = s.create(&observation(&ids[3]));
    let ekg = s.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6", "display": "EKG study"}]},
        "subject": {"reference": format!("Patient/{}", ids[2])},
        "valueSampledData": {"origin": {"value": 0}, "period": 2, "dimensions": 1, "data": "0 12 40 12 0 -5"}}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let thief =
        inst.caller(&s, &["--name", "dr x", "--role", "clinician", "--organization", "Organization/test-facility", "--practitioner", "Practitioner/x", "--scopes", "user/*.rs"]);
    let bystander =
        inst.caller(&s, &["--name", "dr y", "--role", "clinician", "--organization", "Organization/test-facility", "--practitioner", "Practitioner/y", "--scopes", "user/*.rs"]);
    let elsewhere = inst.caller(&s, &["--name", "rs lain", "--role", "facility-system", "--organization", "Organization/rs-lain", "--scopes", "system/*.cruds"]);
    let foreign = {
        let (st, v) = s.call(&elsewhere.token, reqwest::Method::POST, "Patient", Some(&patient("3171054708900053", "Kurniasih")), &[]);
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    // What the thief's script received, by its own record.
    let mut received = std::collections::BTreeSet::new();
    for id in &ids[0..3] {
        let (st, v) = s.get_as(&thief.token, &format!("Patient/{id}"));
        assert_eq!(st, 200);
        received.insert(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(s.get_as(&thief.token, &format!("Observation/{ekg}")).0, 200);
    let (st, b) = s.get_as(&thief.token, &format!("Observation?patient={}", ids[3]));
    assert_eq!((st, b["total"].as_u64()), (200, Some(1)));
    received.insert(ids[3].clone());
    assert_eq!(s.get_as(&thief.token, &format!("Patient/{foreign}")).0, 403, "no care at the other facility");
    assert_eq!(s.get_as(&bystander.token, &format!("Patient/{}", ids[4])).0, 200);
    let _ = fac;

    let r = s
        .http
        .get(format!("{}/admin/breach-report", s.root))
        .bearer_auth(&officer.token)
        .query(&[("client", thief.id.as_str()), ("since", "2020-01-01"), ("contact", "DPO RS Uji, 021-555-0100")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let rep: Value = r.json().unwrap();
    let listed: std::collections::BTreeSet<String> = rep["patients"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, received, "exactly the patients the script received: {rep}");
    assert_eq!(rep["refused_attempts"], 1);
    let p0 = rep["patients"].as_array().unwrap().iter().find(|p| p["id"] == ids[0].as_str()).unwrap();
    assert_eq!(p0["identity"]["nik"], niks[0]);
    assert_eq!(p0["identity"]["name"], "Sri Lestari");
    assert_eq!(p0["categories"], json!(["identity"]));
    assert!(p0["first_access"].as_str().unwrap() <= p0["last_access"].as_str().unwrap());
    let p2 = rep["patients"].as_array().unwrap().iter().find(|p| p["id"] == ids[2].as_str()).unwrap();
    assert_eq!(p2["categories"], json!(["EKG", "identity"]), "an Observation with waveform samples is an EKG");
    assert!(p2["notification"]["en"].as_str().unwrap().contains("EKG (electrocardiogram) recordings"));
    let p3 = rep["patients"].as_array().unwrap().iter().find(|p| p["id"] == ids[3].as_str()).unwrap();
    assert_eq!(p3["categories"], json!(["lab and antigen results"]));
    let (nid, nen) = (p3["notification"]["id"].as_str().unwrap(), p3["notification"]["en"].as_str().unwrap());
    assert!(nid.contains("Pasal 46") && nid.contains("Susanti") && nid.contains("hasil laboratorium") && nid.contains("DPO RS Uji, 021-555-0100"), "{nid}");
    assert!(nen.contains("Article 46") && nen.contains("laboratory") && nen.contains("3 x 24 hours"), "{nen}");
    // CSV, in English; the CLI says the same.
    let r = s
        .http
        .get(format!("{}/admin/breach-report", s.root))
        .bearer_auth(&officer.token)
        .query(&[("client", thief.id.as_str()), ("since", "2020-01-01"), ("format", "csv"), ("lang", "en")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.text().unwrap();
    assert_eq!(csv.lines().count(), 1 + received.len());
    assert!(csv.contains("Article 46") && csv.contains(niks[1]));
    let o = inst.cli(&["breach-report", "--client", &thief.id, "--since", "2020-01-01"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli: Value = serde_json::from_slice(&o.stdout).unwrap();
    let cli_listed: std::collections::BTreeSet<String> = cli["patients"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(cli_listed, received);
    // A window after the accesses finds nothing; only officers ask; the report is audited.
    let r = s.http.get(format!("{}/admin/breach-report", s.root)).bearer_auth(&officer.token).query(&[("client", thief.id.as_str()), ("since", "2999-01-01")]).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap()["patients"], json!([]));
    let r = s.http.get(format!("{}/admin/breach-report", s.root)).bearer_auth(&s.token).query(&[("client", thief.id.as_str()), ("since", "2020-01-01")]).send().unwrap();
    assert_eq!(r.status(), 403);
    let r = s.http.get(format!("{}/admin/breach-report", s.root)).bearer_auth(&officer.token).query(&[("client", thief.id.as_str())]).send().unwrap();
    assert_eq!(r.status(), 400);
    let seen = audit_events(&s, &officer.token, &format!("patient={}&subtype=breach-report", ids[0]));
    assert!(seen.len() >= 2, "the API's and the CLI's reports disclosed this patient: {}", seen.len());
}
