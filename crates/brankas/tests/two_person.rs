//! Two people for power over patient data (threat model invariant 13, adversary A7): an
//! administrator alone registers no client that reads patients, cannot approve one, cannot
//! make its own approver, cannot free a caught thief; a security officer's identity-revealing
//! breach reports are budgeted and alerted; and a breach report can name an administrator.
//! Each test is the attack as it went through before.

mod common;

use std::collections::BTreeSet;

use common::{Caller, Instance, NIK_SYSTEM, Server};
use reqwest::Method as M;
use serde_json::{Value, json};

fn call(s: &Server, token: &str, method: M, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut r = s.http.request(method, format!("{}{path}", s.root)).bearer_auth(token);
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(serde_json::to_vec(b).unwrap());
    }
    let r = r.send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn token_status(s: &Server, id: &str, secret: &str) -> u16 {
    s.http.post(format!("{}/auth/token", s.root)).basic_auth(id, Some(secret)).form(&[("grant_type", "client_credentials")]).send().unwrap().status().as_u16()
}

/// `n` patients of `Organization/test-facility` (written by the instance's facility client).
fn population(s: &Server, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let nik = format!("317105470890{:04}", i + 1);
            let p = s.create(&json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
                "name": [{"family": format!("Pasien{i}"), "given": ["Sri"]}], "gender": "female", "birthDate": "1990-08-07",
                "managingOrganization": {"reference": "Organization/test-facility"}}));
            p["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn alerts(s: &Server, officer: &str) -> Vec<Value> {
    let (st, v) = call(s, officer, M::GET, "/admin/alerts", None);
    assert_eq!(st, 200, "{v}");
    v["alerts"].as_array().unwrap().clone()
}

fn facility_spec() -> Value {
    json!({"name": "SIMRS (registered by the admin alone)", "role": "facility-system", "organization": "Organization/test-facility", "scopes": "system/*.rs"})
}

#[test]
fn an_administrator_alone_cannot_open_patient_data() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 3);
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);
    let officer = s.token_for(&inst.officer_id, &inst.officer_secret);

    // The admin registers a facility client for a facility of its choosing: pending, no token.
    let (st, c) = call(&s, &admin, M::POST, "/admin/clients", Some(&facility_spec()));
    assert_eq!((st, c["status"].as_str()), (202, Some("pending_approval")), "{c}");
    let (fid, fsecret) = (c["client_id"].as_str().unwrap().to_string(), c["client_secret"].as_str().unwrap().to_string());
    assert_eq!(token_status(&s, &fid, &fsecret), 401, "no token before approval");
    // It cannot approve it itself.
    assert_eq!(call(&s, &admin, M::POST, &format!("/admin/clients/{fid}/approve"), None).0, 403);

    // It cannot make its own approver: a security officer it registers is pending too...
    let (st, so) = call(&s, &admin, M::POST, "/admin/clients", Some(&json!({"name": "my officer", "role": "security-officer", "scopes": "system/AuditEvent.rs"})));
    assert_eq!((st, so["status"].as_str()), (202, Some("pending_approval")), "{so}");
    let (so_id, so_secret) = (so["client_id"].as_str().unwrap().to_string(), so["client_secret"].as_str().unwrap().to_string());
    assert_eq!(token_status(&s, &so_id, &so_secret), 401);
    // ...and even once a real officer approves it, the admin knows its secret: it may not
    // approve the admin's requests.
    assert_eq!(call(&s, &officer, M::POST, &format!("/admin/clients/{so_id}/approve"), None).0, 200);
    let own = s.token_for(&so_id, &so_secret);
    let (st, v) = call(&s, &own, M::POST, &format!("/admin/clients/{fid}/approve"), None);
    assert_eq!(st, 403, "the admin's own officer: {v}");
    assert_eq!(token_status(&s, &fid, &fsecret), 401, "still pending");

    // A security officer never approves its own request.
    let other = inst.caller(&s, &["--name", "second officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    assert_eq!(call(&s, &other.token, M::POST, &format!("/admin/clients/{fid}/suspend"), None).0, 409, "a pending client is rejected, not suspended");
    let victim = inst.caller(&s, &["--name", "ward", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/*.rs"]);
    assert_eq!(call(&s, &other.token, M::POST, &format!("/admin/clients/{}/suspend", victim.id), None).0, 200);
    assert_eq!(call(&s, &other.token, M::POST, &format!("/admin/clients/{}/reinstate", victim.id), None).0, 202);
    assert_eq!(call(&s, &other.token, M::POST, &format!("/admin/clients/{}/approve", victim.id), None).0, 403, "its own request");

    // Another security officer approves: the client works.
    let (st, v) = call(&s, &officer, M::POST, &format!("/admin/clients/{fid}/approve"), None);
    assert_eq!((st, v["status"].as_str(), v["approved_by"].as_str()), (200, Some("active"), Some(inst.officer_id.as_str())), "{v}");
    let t = s.token_for(&fid, &fsecret);
    assert_eq!(s.get_as(&t, &format!("Patient/{}", people[0])).0, 200);
    assert_eq!(call(&s, &officer, M::POST, &format!("/admin/clients/{fid}/approve"), None).0, 409, "nothing left to approve");

    // Each step was alerted, naming requester and approver.
    let al = alerts(&s, &officer);
    let of = |kind: &str| al.iter().filter(|a| a["kind"] == kind && a["client_id"] == fid.as_str()).cloned().collect::<Vec<_>>();
    assert_eq!(of("approval-requested").len(), 1, "{al:?}");
    assert_eq!(of("approval-requested")[0]["detail"]["requested_by"], inst.admin_id.as_str());
    assert_eq!(of("approved")[0]["detail"]["approved_by"], inst.officer_id.as_str());
    assert_eq!(of("approved")[0]["detail"]["requested_by"], inst.admin_id.as_str());

    // A widening change (another facility) waits; the old registration stays in force.
    let (st, v) = call(&s, &admin, M::PATCH, &format!("/admin/clients/{fid}"), Some(&json!({"organization": "Organization/rs-lain"})));
    assert_eq!((st, v["status"].as_str(), v["request"].as_str()), (202, Some("pending_approval"), Some("change")), "{v}");
    let (_, shown) = call(&s, &admin, M::GET, &format!("/admin/clients/{fid}"), None);
    assert_eq!(shown["organization"], "Organization/test-facility");
    assert_eq!(call(&s, &admin, M::PATCH, &format!("/admin/clients/{fid}"), Some(&json!({"name": "x"}))).0, 409, "decide the pending change first");
    assert_eq!(call(&s, &admin, M::POST, &format!("/admin/clients/{fid}/reject"), None).0, 200);

    // The CLI is no back door: the operator's shell registers pending facility clients too.
    let c = inst.register_pending(&["--name", "cli", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/*.rs"]);
    assert_eq!(c["status"], "pending_approval");
    assert_eq!(token_status(&s, c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap()), 401);
    let out =
        inst.cli(&["clients", "approve", c["client_id"].as_str().unwrap(), "--approver-id", &inst.admin_id, "--approver-secret-file", write(&inst, &inst.admin_secret).as_str()]);
    assert!(!out.status.success(), "an admin's secret approves nothing");
    // A second officer from the CLI needs the first one's approval.
    let so = inst.register_pending(&["--name", "cli officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    assert_eq!(so["status"], "pending_approval");
    // Admins need no approval: they reach no patient data.
    let (st, _) = call(&s, &admin, M::POST, "/admin/clients", Some(&json!({"name": "deputy", "role": "admin", "scopes": "system/Organization.rs"})));
    assert_eq!(st, 201);
}

fn write(inst: &Instance, secret: &str) -> String {
    let p = inst.root.path().join("some.secret");
    std::fs::write(&p, secret).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn an_administrator_cannot_free_a_caught_thief() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 3);
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);
    let thief = inst.register(&[
        "--name",
        "kiosk",
        "--role",
        "facility-system",
        "--organization",
        "Organization/test-facility",
        "--scopes",
        "system/*.rs",
        "--budget-per-hour",
        "1",
        "--budget-per-day",
        "1",
    ]);
    let (tid, tsecret) = (thief["client_id"].as_str().unwrap().to_string(), thief["client_secret"].as_str().unwrap().to_string());
    let t = s.token_for(&tid, &tsecret);
    assert_eq!(s.get_as(&t, &format!("Patient/{}", people[0])).0, 200);
    assert_eq!(s.get_as(&t, &format!("Patient/{}", people[1])).0, 429, "caught at its budget and suspended");

    // The admin raises its budget: pending; the thief is still refused.
    let raise = json!({"patient_budget": {"per_hour": 1000000, "per_day": 10000000}});
    let (st, v) = call(&s, &admin, M::PATCH, &format!("/admin/clients/{tid}"), Some(&raise));
    assert_eq!((st, v["status"].as_str()), (202, Some("pending_approval")), "{v}");
    let (_, shown) = call(&s, &admin, M::GET, &format!("/admin/clients/{tid}"), None);
    assert_eq!(shown["patient_budget"]["per_hour"], 1, "the old budget stays in force");
    assert_eq!(call(&s, &admin, M::POST, &format!("/admin/clients/{tid}/reject"), None).0, 200);
    // It reinstates it: pending; still refused, old token and new.
    let (st, v) = call(&s, &admin, M::POST, &format!("/admin/clients/{tid}/reinstate"), None);
    assert_eq!((st, v["status"].as_str(), v["request"].as_str()), (202, Some("pending_approval"), Some("reinstatement")), "{v}");
    assert_eq!(token_status(&s, &tid, &tsecret), 401);
    assert_eq!(s.get_as(&t, &format!("Patient/{}", people[0])).0, 401);
    // The CLI does no better.
    let out = inst.cli(&["clients", "reinstate", &tid]);
    assert!(!out.status.success(), "a reinstatement is already awaiting approval");
    // Only an officer's approval brings it back.
    let officer = s.token_for(&inst.officer_id, &inst.officer_secret);
    assert_eq!(call(&s, &officer, M::POST, &format!("/admin/clients/{tid}/approve"), None).0, 200);
    assert_eq!(token_status(&s, &tid, &tsecret), 200);
    let al = alerts(&s, &officer);
    assert!(al.iter().any(|a| a["kind"] == "approved" && a["severity"] == "high" && a["detail"]["request"] == "reinstatement" && a["client_id"] == tid.as_str()), "{al:?}");
}

fn breach(s: &Server, officer: &Caller, q: &[(&str, &str)]) -> (u16, Value) {
    let r = s.http.get(format!("{}/admin/breach-report", s.root)).bearer_auth(&officer.token).query(&[("since", "2020-01-01")]).query(q).send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn ids(report: &Value) -> BTreeSet<String> {
    report["patients"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn breach_reports_are_budgeted_alerted_and_can_name_an_administrator() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 6);
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);

    // The admin's facility client (approved by an officer) reads four patients.
    let (st, c) = call(&s, &admin, M::POST, "/admin/clients", Some(&facility_spec()));
    assert_eq!(st, 202);
    let fid = c["client_id"].as_str().unwrap().to_string();
    inst.approve(&fid);
    let t = s.token_for(&fid, c["client_secret"].as_str().unwrap());
    for p in &people[..4] {
        assert_eq!(s.get_as(&t, &format!("Patient/{p}")).0, 200);
    }

    // A breach report on the administrator names exactly those four.
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let (st, rep) = breach(&s, &officer, &[("admin", inst.admin_id.as_str())]);
    assert_eq!(st, 200, "{rep}");
    let want: BTreeSet<String> = people[..4].iter().cloned().collect();
    assert_eq!(ids(&rep), want, "{rep}");
    assert!(rep["suspect"].as_str().unwrap().contains(&fid));
    let out = inst.cli(&["breach-report", "--admin", &inst.admin_id, "--since", "2020-01-01"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ids(&serde_json::from_slice(&out.stdout).unwrap()), want);

    // Each report that reveals identities counts against the officer's budget and is alerted.
    let (_, me) = call(&s, &officer.token, M::GET, &format!("/admin/clients/{}", officer.id), None);
    assert_eq!(me["patient_budget"], json!({"per_hour": 500, "per_day": 2000, "on_exceed": "suspend"}), "the role's default");
    assert_eq!(me["patient_budget_use"]["this_hour"], 4);
    let al = alerts(&s, &officer.token);
    assert!(al.iter().any(|a| a["kind"] == "breach-report" && a["client_id"] == officer.id.as_str() && a["detail"]["patients_revealed"] == 4), "{al:?}");

    // Past its budget an officer is refused and suspended like any other credential.
    let small = inst.caller(&s, &["--name", "small", "--role", "security-officer", "--scopes", "system/AuditEvent.rs", "--budget-per-hour", "3", "--budget-per-day", "3"]);
    let (st, v) = breach(&s, &small, &[("client", fid.as_str())]);
    assert_eq!(st, 429, "four identities, a budget of three: {v}");
    assert!(!v.to_string().contains("Pasien"), "no identity in the refusal: {v}");
    assert_eq!(breach(&s, &small, &[("client", fid.as_str())]).0, 401, "suspended");
    let al = alerts(&s, &officer.token);
    assert!(al.iter().any(|a| a["kind"] == "patient-budget" && a["client_id"] == small.id.as_str() && a["detail"]["action"] == "suspended"), "{al:?}");
}
