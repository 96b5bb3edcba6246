//! Disclosure is counted where it is decided (threat model invariant 12): an answer trimmed
//! with `_elements` or `_summary`, reduced to a count, or a page of a work list, counts every
//! patient the access checks admitted into it against the client's budget, trips canaries,
//! and is named in the breach report. Each test is written as the attack that went through
//! when the patients were read back from the trimmed answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Caller, Instance, NIK_SYSTEM, Server, next_link, report_ids};
use serde_json::{Value, json};

/// `n` patients, each with a visit at `Organization/test-facility` (its anamnesis in
/// `reasonCode`) and a Condition with a note; returns (patient id, NIK, encounter id).
fn population(s: &Server, n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| {
            let nik = format!("317105470890{:04}", i + 1);
            let p = s.create(&json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
                "name": [{"family": format!("Pasien{i}"), "given": ["Sri"]}], "gender": "female", "birthDate": "1990-08-07"}));
            let id = p["id"].as_str().unwrap().to_string();
            let e = s.create(&json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{id}")}, "serviceProvider": {"reference": "Organization/test-facility"},
                "reasonCode": [{"text": format!("keluhan rahasia {i}")}],
                "period": {"start": "2026-11-29T08:00:00+07:00", "end": "2026-11-29T08:30:00+07:00"}}));
            s.create(&json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{id}")},
                "code": {"text": "diagnosis"}, "note": [{"text": format!("anamnesis rahasia {i}")}]}));
            (id, nik, e["id"].as_str().unwrap().to_string())
        })
        .collect()
}

fn officer(inst: &Instance, s: &Server) -> Caller {
    inst.caller(s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"])
}

fn breach_ids(s: &Server, officer: &Caller, client: &str) -> (BTreeSet<String>, Value) {
    let v = s.breach_report(&officer.token, client);
    (report_ids(&v, "patients"), v)
}

fn client_status(s: &Server, officer: &Caller, id: &str) -> Value {
    let r = s.http.get(format!("{}/admin/clients/{id}", s.root)).bearer_auth(&officer.token).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// Trimmed, summarised and counted answers about one patient each: the budget stops the
/// sixth patient, the client is suspended, and the breach report names the five.
#[test]
fn trimmed_and_counted_answers_count_against_the_budget_and_are_reported() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 12);
    let off = officer(&inst, &s);
    let stolen = inst.caller(
        &s,
        &[
            "--name",
            "ward app",
            "--role",
            "clinician",
            "--organization",
            "Organization/test-facility",
            "--practitioner",
            "Practitioner/x",
            "--scopes",
            "user/*.rs",
            "--budget-per-hour",
            "5",
            "--budget-per-day",
            "50",
        ],
    );
    // Every shape of answer that carries no `subject` (or nothing but a number). (A
    // Condition's subject is mandatory, so a trimmed Condition keeps it: valid R4.)
    let shapes = |id: &str, nik: &str| {
        vec![
            format!("Patient/{id}/Encounter?_elements=reasonCode"),
            format!("Encounter?patient={id}&_summary=text"),
            format!("Condition?patient=Patient/{id}&_summary=count"),
            format!("Patient/{id}/Encounter?_summary=data&_elements=status"),
            format!("Patient?identifier={NIK_SYSTEM}|{nik}&_elements=birthDate"),
            format!("Patient/{id}/Encounter?_elements=period"),
        ]
    };
    let mut answered: BTreeSet<String> = BTreeSet::new();
    let mut codes = Vec::new();
    let mut leaked_notes = 0;
    for (i, (id, nik, _)) in people.iter().enumerate() {
        let url = shapes(id, nik)[i % 6].clone();
        let (st, b) = s.get_as(&stolen.token, &url);
        codes.push(st);
        if st == 200 {
            answered.insert(id.clone());
            leaked_notes += b.to_string().matches("rahasia").count();
            // The answer really is trimmed: no reference to the patient in it.
            if !url.starts_with("Patient?") {
                assert!(!b.to_string().contains(&format!("Patient/{id}")), "{url}: {b}");
            }
        }
    }
    assert_eq!(answered.len(), 5, "five patients' answers, no more: {codes:?}");
    assert!(leaked_notes >= 1, "the trimmed answers did carry clinical text");
    let first_refusal = codes.iter().position(|c| *c == 429).expect("the sixth patient is refused");
    assert_eq!(first_refusal, 5, "{codes:?}");
    assert!(codes[first_refusal + 1..].iter().all(|c| *c == 401), "suspended from the next request on: {codes:?}");
    let c = client_status(&s, &off, &stolen.id);
    assert_eq!(c["status"], "suspended");
    assert_eq!(c["patient_budget_use"]["this_hour"], 5, "{c}");
    let (reported, report) = breach_ids(&s, &off, &stolen.id);
    assert_eq!(reported, answered, "the breach report names every patient answered about: {report}");
    // Each named with what was disclosed about it.
    for p in report["patients"].as_array().unwrap() {
        assert!(!p["categories"].as_array().unwrap().is_empty(), "{p}");
    }
}

/// A facility credential walks its work list with `_elements`, which drops `subject`: the
/// patients of each page still count, the walk stops at the budget, and the report names
/// exactly the patients whose visits were on the pages served.
#[test]
fn a_trimmed_work_list_walk_stops_at_the_budget() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 9);
    let by_encounter: BTreeMap<String, String> = people.iter().map(|(p, _, e)| (e.clone(), p.clone())).collect();
    let off = officer(&inst, &s);
    let sys = inst.budgeted_facility(&s, "simrs", 5, 50, &[]);
    let mut got: BTreeSet<String> = BTreeSet::new();
    let mut codes = Vec::new();
    let mut next = Some(s.url("Encounter?service-provider=Organization/test-facility&date=ge2026-11-01&date=le2026-12-31&_count=2&_elements=reasonCode,period,diagnosis"));
    while let Some(url) = next.take() {
        let r = s.http.get(&url).bearer_auth(&sys.token).send().unwrap();
        codes.push(r.status().as_u16());
        if r.status() != 200 {
            let body = r.text().unwrap();
            assert!(!body.contains("rahasia"), "a refused page discloses nothing: {body}");
            break;
        }
        let b: Value = r.json().unwrap();
        for e in b["entry"].as_array().into_iter().flatten() {
            assert!(e["resource"].get("subject").is_none(), "the page is trimmed");
            assert!(e["resource"]["reasonCode"][0]["text"].as_str().unwrap().contains("rahasia"));
            got.insert(by_encounter[e["resource"]["id"].as_str().unwrap()].clone());
        }
        next = next_link(&b);
    }
    assert_eq!(codes, vec![200, 200, 429], "two pages of two, the third would make six");
    assert_eq!(got.len(), 4);
    assert_eq!(client_status(&s, &off, &sys.id)["status"], "suspended");
    let (reported, report) = breach_ids(&s, &off, &sys.id);
    assert_eq!(reported, got, "{report}");
    // A count of the whole work list is the disclosure of every patient counted.
    let counter = inst.budgeted_facility(&s, "counter", 5, 50, &[]);
    let (st, _) = s.get_as(&counter.token, "Encounter?service-provider=Organization/test-facility&date=ge2026-11-01&date=le2026-12-31&_summary=count");
    assert_eq!(st, 429, "nine patients counted exceed a budget of five");
}

/// A canary is met through a trimmed or counted answer as through a whole one.
#[test]
fn a_canary_trips_on_a_count() {
    let inst = Instance::init();
    let out = inst.cli(&["canary", "create", "--count", "1", "--organization", "Organization/test-facility"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let planted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let canary = planted["canaries"][0]["id"].as_str().unwrap().to_string();
    let s = inst.serve();
    let off = officer(&inst, &s);
    let thief = inst.caller(&s, &["--name", "simrs", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/*.rs"]);
    let (st, b) = s.get_as(&thief.token, &format!("Patient/{canary}/Encounter?_summary=count"));
    assert_eq!(st, 403, "{b}");
    assert!(b.get("total").is_none(), "nothing of the answer left: {b}");
    let (st, _) = s.get_as(&thief.token, "metadata");
    assert_eq!(st, 200, "public");
    let (st, _) = s.get_as(&thief.token, &format!("Patient/{canary}"));
    assert_eq!(st, 401, "suspended");
    let r = s.http.get(format!("{}/admin/alerts", s.root)).bearer_auth(&off.token).send().unwrap();
    let al: Value = r.json().unwrap();
    assert!(al["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "canary" && a["client_id"] == thief.id.as_str()), "{al}");
}

/// What `_include` adds to a work-list page is disclosed with it: the breach report names
/// each patient with the identity the included Patient carried, not only the visit.
#[test]
fn what_an_include_adds_is_disclosed_with_the_page() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 3);
    let off = officer(&inst, &s);
    let sys = inst.caller(&s, &["--name", "simrs", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/*.rs"]);
    let url = "Encounter?service-provider=Organization/test-facility&date=ge2026-11-01&date=le2026-12-31&_include=Encounter:subject&_elements=period";
    let (st, b) = s.get_as(&sys.token, url);
    assert_eq!(st, 200, "{b}");
    let included: BTreeSet<String> =
        b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(included, people.iter().map(|p| p.0.clone()).collect::<BTreeSet<_>>(), "{b}");
    let (reported, report) = breach_ids(&s, &off, &sys.id);
    assert_eq!(reported, included, "{report}");
    for p in report["patients"].as_array().unwrap() {
        let cats: Vec<&str> = p["categories"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert!(cats.contains(&"identity"), "the included Patient is disclosed: {p}");
        assert!(cats.contains(&"anamnesis and conditions"), "{p}");
    }
}

/// Searches inside a batch disclose like searches of their own: three patients' records in one
/// batch exceed a budget of two, and the whole answer is refused.
#[test]
fn searches_inside_a_batch_count_against_the_budget() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 3);
    let sys = inst.budgeted_facility(&s, "simrs", 2, 50, &[]);
    let batch = |ids: &[&(String, String, String)]| {
        json!({"resourceType": "Bundle", "type": "batch", "entry": ids.iter().enumerate().map(|(i, (p, _, _))| {
            let url = if i % 2 == 0 { format!("Condition?patient={p}&_summary=count") } else { format!("Patient/{p}/$everything?_type=Condition&_elements=code") };
            json!({"request": {"method": "GET", "url": url}})
        }).collect::<Vec<_>>()})
    };
    let (st, b) = s.call(&sys.token, reqwest::Method::POST, "", Some(&batch(&[&people[0], &people[1]])), &[]);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["entry"][0]["resource"]["total"], 1, "{b}");
    let (st, b) = s.call(&sys.token, reqwest::Method::POST, "", Some(&batch(&[&people[2]])), &[]);
    assert_eq!(st, 429, "a third patient, through a count inside a batch: {b}");
    assert!(!b.to_string().contains("rahasia"), "{b}");
}
