//! Type and system history (`GET [type]/_history`, `GET _history`): one patient's record, or
//! the directory, never across patients; each version through the gates a read of it passes;
//! paged by sealed cursors; disclosed, counted and audited like the reads they are.

mod common;

use common::{Caller, Instance, Server, next_link, observation, patient};
use serde_json::{Value, json};

fn facility(inst: &Instance, s: &Server, name: &str, org: &str, extra: &[&str]) -> Caller {
    let organization = format!("Organization/{org}");
    let mut args = vec!["--name", name, "--role", "facility-system", "--organization", organization.as_str(), "--scopes", "system/*.cruds"];
    args.extend_from_slice(extra);
    inst.caller(s, &args)
}

fn create(s: &Server, c: &Caller, body: &Value) -> String {
    let (st, v) = s.call(&c.token, reqwest::Method::POST, body["resourceType"].as_str().unwrap(), Some(body), &[]);
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// `(type/id, versionId or "-", request method)` of each entry of a history Bundle.
fn listed(b: &Value) -> Vec<(String, String, String)> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let full = e["fullUrl"].as_str().unwrap();
            let tail: Vec<&str> = full.rsplitn(3, '/').collect();
            let version = e["response"]["etag"].as_str().unwrap().trim_start_matches("W/").trim_matches('"').to_string();
            (format!("{}/{}", tail[1], tail[0]), version, e["request"]["method"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Follows `next` links from `first`, collecting every entry.
fn all_pages(s: &Server, c: &Caller, first: &str) -> (Vec<(String, String, String)>, usize) {
    let (st, mut b) = s.get_as(&c.token, first);
    assert_eq!(st, 200, "{b}");
    let mut out = listed(&b);
    let mut pages = 1;
    while let Some(next) = next_link(&b) {
        let (st, nb) = s.get_as(&c.token, next.split("/fhir/").nth(1).unwrap());
        assert_eq!(st, 200, "{nb}");
        out.extend(listed(&nb));
        b = nb;
        pages += 1;
        assert!(pages < 100);
    }
    (out, pages)
}

#[test]
fn a_records_history_is_its_own_versions_newest_first_and_paged() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a", "rs-a", &[]);
    let a = create(&s, &rs, &patient("3171054708900003", "Lestari"));
    let b = create(&s, &rs, &patient("3171054708900011", "Wibowo"));
    let o1 = create(&s, &rs, &observation(&a));
    let o2 = create(&s, &rs, &observation(&a));
    let mut changed = observation(&a);
    changed["id"] = json!(o1);
    changed["status"] = json!("amended");
    let (st, v) = s.call(&rs.token, reqwest::Method::PUT, &format!("Observation/{o1}"), Some(&changed), &[]);
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.call(&rs.token, reqwest::Method::DELETE, &format!("Observation/{o2}"), None, &[]).0, 204);
    let other = create(&s, &rs, &observation(&b));

    // One type of one record: every version, deletes too, newest first; nothing of B's.
    let (st, h) = s.get_as(&rs.token, &format!("Observation/_history?patient={a}"));
    assert_eq!((st, h["type"].as_str()), (200, Some("history")), "{h}");
    let expected = vec![
        (format!("Observation/{o2}"), "2".to_string(), "DELETE".to_string()),
        (format!("Observation/{o1}"), "2".to_string(), "PUT".to_string()),
        (format!("Observation/{o2}"), "1".to_string(), "POST".to_string()),
        (format!("Observation/{o1}"), "1".to_string(), "POST".to_string()),
    ];
    assert_eq!(listed(&h), expected);
    assert!(!h.to_string().contains(&other), "another patient's record leaked into the history");
    assert!(h["entry"][0].get("resource").is_none(), "a delete carries no resource");
    assert_eq!(h["entry"][1]["resource"]["status"], "amended");
    // The self link says what was used.
    assert!(h["link"][0]["url"].as_str().unwrap().ends_with(&format!("Observation/_history?patient={a}")), "{}", h["link"]);

    // System history of the record: the Patient as well.
    let (st, sys) = s.get_as(&rs.token, &format!("_history?patient=Patient/{a}"));
    assert_eq!(st, 200, "{sys}");
    let ids = listed(&sys);
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[4], (format!("Patient/{a}"), "1".to_string(), "POST".to_string()));

    // Paged two at a time: the same versions, each once, in the same order.
    let (paged, pages) = all_pages(&s, &rs, &format!("Observation/_history?patient={a}&_count=2"));
    assert_eq!((paged, pages), (expected.clone(), 2));
    // New versions written while paging do not shift what the next page holds.
    let (_, first) = s.get_as(&rs.token, &format!("Observation/_history?patient={a}&_count=2"));
    create(&s, &rs, &observation(&a));
    let (_, second) = s.get_as(&rs.token, next_link(&first).unwrap().split("/fhir/").nth(1).unwrap());
    assert_eq!(listed(&second), expected[2..].to_vec());
    // A cursor is bound to its client.
    let rs2 = facility(&inst, &s, "rs-a (2)", "rs-a", &[]);
    assert_eq!(s.get_as(&rs2.token, next_link(&first).unwrap().split("/fhir/").nth(1).unwrap()).0, 400);
    // Cursors of one kind are not taken as another's.
    let page = next_link(&first).unwrap();
    let cursor = page.split("_page=").nth(1).unwrap();
    assert_eq!(s.get_as(&rs.token, &format!("Observation?_page={cursor}")).0, 400);
    assert_eq!(s.get_as(&rs.token, &format!("Patient/{a}/$everything?_page={cursor}")).0, 400);

    // Across patients: refused, saying how to ask.
    let (st, e) = s.get_as(&rs.token, "Observation/_history");
    assert_eq!(st, 400, "{e}");
    assert!(e["issue"][0]["diagnostics"].as_str().unwrap().contains("patient=<id>"), "{e}");
    assert_eq!(s.get_as(&rs.token, "_history").0, 400);
    // Bad input is a 4xx, never echoed.
    assert_eq!(s.get_as(&rs.token, "Observation/_history?patient=no%20such%3Cscript%3E").0, 400);
    assert_eq!(s.get_as(&rs.token, "Observation/_history?patient=nobody").0, 404);
    assert_eq!(s.get_as(&rs.token, &format!("Observation/_history?patient={a}&_count=0")).0, 400);
    assert_eq!(s.get_as(&rs.token, &format!("Observation/_history?patient={a}&_since=yesterday")).0, 400);
    assert_eq!(s.get_as(&rs.token, &format!("Observation/_history?patient={a}&_page=garbage")).0, 400);
    assert_eq!(s.get_as(&rs.token, "NoSuchType/_history").0, 404);
    // Unknown parameters: ignored, unless strict handling is asked for.
    let (st, l) = s.get_as(&rs.token, &format!("Observation/_history?patient={a}&colour=blue"));
    assert_eq!(st, 200);
    assert!(!l["link"][0]["url"].as_str().unwrap().contains("colour"));
    let strict = s.call(&rs.token, reqwest::Method::GET, &format!("Observation/_history?patient={a}&colour=blue"), None, &[("prefer", "handling=strict")]);
    assert_eq!(strict.0, 400, "{}", strict.1);
}

#[test]
fn since_and_at_select_versions_by_write_time() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a", "rs-a", &[]);
    let a = create(&s, &rs, &patient("3171054708900003", "Lestari"));
    let o = create(&s, &rs, &observation(&a));
    let (_, first) = s.get_as(&rs.token, &format!("Observation/{o}"));
    let t1 = first["meta"]["lastUpdated"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut changed = observation(&a);
    changed["id"] = json!(o);
    changed["status"] = json!("amended");
    let (_, second) = s.call(&rs.token, reqwest::Method::PUT, &format!("Observation/{o}"), Some(&changed), &[]);
    let t2 = second["meta"]["lastUpdated"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let late = create(&s, &rs, &observation(&a));
    let enc = |t: &str| t.replace('+', "%2B").replace(':', "%3A");
    let versions = |q: &str| -> Vec<(String, String, String)> {
        let (st, b) = s.get_as(&rs.token, &format!("Observation/_history?patient={a}&{q}"));
        assert_eq!(st, 200, "{q}: {b}");
        listed(&b)
    };
    // `_since`: written at or after it.
    let since = versions(&format!("_since={}", enc(&t2)));
    assert_eq!(since, vec![(format!("Observation/{late}"), "1".into(), "POST".into()), (format!("Observation/{o}"), "2".into(), "PUT".into())]);
    // `_at` an instant: what was current then (version 1 of o, before late existed).
    assert_eq!(versions(&format!("_at={}", enc(&t1))), vec![(format!("Observation/{o}"), "1".into(), "POST".into())]);
    // `_at` a year: every version current during it.
    let year = &t1[..4];
    assert_eq!(versions(&format!("_at={year}")).len(), 3);
    assert!(versions("_at=2001").is_empty());
}

#[test]
fn history_passes_each_gate_a_read_would() {
    let inst = Instance::init();
    let s = inst.serve();
    let granted = facility(&inst, &s, "rs-a psy", "rs-a", &["--sensitive", "PSY"]);
    let plain = facility(&inst, &s, "rs-a", "rs-a", &[]);
    let elsewhere = facility(&inst, &s, "rs-b", "rs-b", &[]);
    let a = create(&s, &granted, &patient("3171054708900003", "Lestari"));
    let seen = create(&s, &granted, &observation(&a));
    let mut psy = observation(&a);
    psy["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]});
    psy["valueCodeableConcept"] = json!({"text": "Depressive episode"});
    let hidden = create(&s, &granted, &psy);

    // The client with the grant sees both; the one without sees the unlabelled one only
    // (left out, not refused), as its search would.
    let (_, h) = s.get_as(&granted.token, &format!("Observation/_history?patient={a}"));
    assert_eq!(listed(&h).len(), 2);
    let (st, h) = s.get_as(&plain.token, &format!("Observation/_history?patient={a}"));
    assert_eq!(st, 200, "{h}");
    assert_eq!(listed(&h), vec![(format!("Observation/{seen}"), "1".into(), "POST".into())]);
    assert!(!h.to_string().contains("Depressive") && !h.to_string().contains(&hidden), "{h}");
    let (_, sys) = s.get_as(&plain.token, &format!("_history?patient={a}"));
    assert!(!sys.to_string().contains("Depressive") && !sys.to_string().contains(&hidden), "{sys}");

    // A facility with no care relationship is refused the record, as a read would be.
    let (st, e) = s.get_as(&elsewhere.token, &format!("Observation/_history?patient={a}"));
    assert_eq!(st, 403, "{e}");
    assert!(!e.to_string().contains("Lestari"));
    assert_eq!(s.get_as(&elsewhere.token, &format!("_history?patient={a}")).0, 403);

    // A patient's own client reads its own record without naming it, and no other.
    let b = create(&s, &granted, &patient("3171054708900011", "Wibowo"));
    let me = inst.caller(&s, &["--name", "me", "--role", "patient", "--patient", &format!("Patient/{a}"), "--scopes", "patient/*.rs"]);
    let (st, mine) = s.get_as(&me.token, "Observation/_history");
    assert_eq!(st, 200, "{mine}");
    assert_eq!(listed(&mine).len(), 2, "the patient sees their own labelled record");
    assert_eq!(s.get_as(&me.token, "_history").0, 200);
    assert_eq!(s.get_as(&me.token, &format!("Observation/_history?patient={b}")).0, 403);
}

#[test]
fn history_is_disclosed_counted_and_audited() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a", "rs-a", &[]);
    let budgeted = inst.budgeted_facility(&s, "reader", 2, 100, &["--on-exceed", "throttle"]);
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let mut ids = Vec::new();
    for (nik, name) in [("3171054708900003", "Lestari"), ("3171054708900011", "Wibowo"), ("3171054708900029", "Santoso")] {
        let mut p = patient(nik, name);
        p["managingOrganization"] = json!({"reference": "Organization/test-facility"});
        let id = create(&s, &rs, &p);
        create(&s, &rs, &observation(&id));
        ids.push(id);
    }
    // Each record's history counts against the patient budget like any read: the third
    // patient in the hour is refused, and the first stays readable.
    let statuses: Vec<u16> = ids.iter().map(|id| s.get_as(&budgeted.token, &format!("Observation/_history?patient={id}")).0).collect();
    assert_eq!(statuses, vec![200, 200, 429]);
    assert_eq!(s.get_as(&budgeted.token, &format!("_history?patient={}", ids[0])).0, 200);
    // Inside a batch too: the batch's histories join its disclosure and its budget.
    let fresh = inst.budgeted_facility(&s, "batch reader", 2, 100, &["--on-exceed", "throttle"]);
    let entries: Vec<Value> = ids.iter().map(|id| json!({"request": {"method": "GET", "url": format!("Observation/_history?patient={id}")}})).collect();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let (st, b) = s.call(&fresh.token, reqwest::Method::POST, "", Some(&batch), &[]);
    assert_eq!(st, 429, "{b}");

    // The read is in the patient's access history, as history.
    let (st, _) = s.get_as(&rs.token, &format!("_history?patient={}", ids[0]));
    assert_eq!(st, 200);
    let (st, events) = s.get_as(&officer.token, &format!("AuditEvent?patient={}", ids[0]));
    assert_eq!(st, 200, "{events}");
    let subtypes: Vec<&str> = events["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["subtype"][0]["code"].as_str()).collect();
    assert!(subtypes.contains(&"history-system"), "{subtypes:?}");
}

#[test]
fn directory_history_needs_no_patient_and_takes_none() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a", "rs-a", &[]);
    let org = create(&s, &rs, &json!({"resourceType": "Organization", "name": "RSUD Sehat"}));
    let (st, v) =
        s.call(&rs.token, reqwest::Method::PUT, &format!("Organization/{org}"), Some(&json!({"resourceType": "Organization", "id": org, "name": "RSUD Sehat Sekali"})), &[]);
    assert_eq!(st, 200, "{v}");
    let a = create(&s, &rs, &patient("3171054708900003", "Lestari"));
    let (st, h) = s.get_as(&rs.token, "Organization/_history");
    assert_eq!(st, 200, "{h}");
    assert_eq!(listed(&h), vec![(format!("Organization/{org}"), "2".into(), "PUT".into()), (format!("Organization/{org}"), "1".into(), "POST".into())]);
    assert!(!h.to_string().contains("Lestari"));
    assert_eq!(s.get_as(&rs.token, &format!("Organization/_history?patient={a}")).0, 400);
    // A researcher reaches no clinical API, the directory's history included.
    let researcher = inst.caller(&s, &["--name", "research", "--role", "researcher"]);
    assert_eq!(s.get_as(&researcher.token, "Organization/_history").0, 403);
}

#[test]
fn histories_inside_a_batch_answer_as_their_own_requests() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a", "rs-a", &[]);
    let a = create(&s, &rs, &patient("3171054708900003", "Lestari"));
    let o = create(&s, &rs, &observation(&a));
    let mut changed = observation(&a);
    changed["id"] = json!(o);
    changed["status"] = json!("amended");
    assert_eq!(s.call(&rs.token, reqwest::Method::PUT, &format!("Observation/{o}"), Some(&changed), &[]).0, 200);
    let org = create(&s, &rs, &json!({"resourceType": "Organization", "name": "RSUD Sehat"}));
    let get = |url: String| json!({"request": {"method": "GET", "url": url}});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        get(format!("Observation/{o}/_history?_count=1")),
        get(format!("Observation/_history?patient={a}")),
        get(format!("_history?patient={a}")),
        get("Organization/_history".into()),
        get("Observation/_history".into()),
    ]});
    let (st, b) = s.call(&rs.token, reqwest::Method::POST, "", Some(&batch), &[]);
    assert_eq!(st, 200, "{b}");
    let e = b["entry"].as_array().unwrap();
    // One resource's history: a page of one, its total, and a next link that works.
    assert_eq!(e[0]["response"]["status"], "200 OK");
    let one = &e[0]["resource"];
    assert_eq!((one["type"].as_str(), one["total"].as_u64()), (Some("history"), Some(2)));
    assert_eq!(listed(one), vec![(format!("Observation/{o}"), "2".into(), "PUT".into())]);
    let (st, rest) = s.get_as(&rs.token, next_link(one).unwrap().split("/fhir/").nth(1).unwrap());
    assert_eq!((st, listed(&rest)), (200, vec![(format!("Observation/{o}"), "1".into(), "POST".into())]));
    assert_eq!(listed(&e[1]["resource"]).len(), 2);
    assert_eq!(listed(&e[2]["resource"]).len(), 3);
    assert_eq!(listed(&e[3]["resource"]), vec![(format!("Organization/{org}"), "1".into(), "POST".into())]);
    // Across patients: that entry fails as its own request would, the others stand.
    assert!(e[4]["response"]["status"].as_str().unwrap().starts_with("400"), "{}", e[4]);
}
