//! The CapabilityStatement says what the server does: every search parameter, include and
//! operation it lists is exercised here and answers.

mod common;

use common::{Instance, NIK_SYSTEM, patient};
use serde_json::Value;

/// A well-formed value for a search parameter of type `kind`.
fn value_for(kind: &str) -> &'static str {
    match kind {
        "token" | "string" => "x",
        "date" => "ge2020-01-01",
        "reference" => "x",
        "number" | "quantity" => "1",
        "uri" => "http://example.org/x",
        other => panic!("the CapabilityStatement lists a {other} parameter"),
    }
}

#[test]
fn every_listed_search_parameter_and_operation_answers() {
    let inst = Instance::init();
    let s = inst.serve();
    let fast = ["--rate-per-second", "100000", "--burst", "100000"];
    let args = |extra: &[&str]| -> Vec<String> { extra.iter().chain(fast.iter()).map(|a| a.to_string()).collect() };
    let rs = {
        let a = args(&["--name", "rs-a", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.cruds"]);
        inst.caller(&s, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let officer = {
        let a = args(&["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
        inst.caller(&s, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (st, v) = s.call(&rs.token, reqwest::Method::POST, "Patient", Some(&patient("3171054708900003", "Lestari")), &[]);
    assert_eq!(st, 201, "{v}");
    let pid = v["id"].as_str().unwrap().to_string();
    let (st, cs) = s.get_as(&rs.token, "metadata");
    assert_eq!(st, 200);
    let rest = &cs["rest"][0];
    let mut asks: Vec<(String, String)> = Vec::new();
    for r in rest["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        let in_compartment = r["documentation"].as_str().unwrap().contains("one patient");
        for p in r["searchParam"].as_array().unwrap() {
            let (name, kind) = (p["name"].as_str().unwrap(), p["type"].as_str().unwrap());
            let q = format!("{name}={}", value_for(kind));
            let path = match t {
                "AuditEvent" if name == "patient" => format!("AuditEvent?patient={pid}"),
                "AuditEvent" => format!("AuditEvent?patient={pid}&{q}"),
                "Patient" if name == "identifier" => format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"),
                "Patient" => format!("Patient?identifier={NIK_SYSTEM}|3171054708900003&{q}"),
                _ if in_compartment => format!("Patient/{pid}/{t}?{q}"),
                _ => format!("{t}?{q}"),
            };
            asks.push((t.to_string(), path));
        }
    }
    assert!(asks.len() > 1_000, "{}", asks.len());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for part in asks.chunks(asks.len().div_ceil(4)) {
            let (s, rs, officer, failures) = (&s, &rs, &officer, &failures);
            scope.spawn(move || {
                for (t, path) in part {
                    let token = if t == "AuditEvent" { &officer.token } else { &rs.token };
                    let (st, b) = s.get_as(token, path);
                    if st != 200 {
                        failures.lock().unwrap().push(format!("{path}: {st} {}", b["issue"]));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} listed parameters fail:\n{}", failures.len(), asks.len(), failures.join("\n"));

    // The operations it lists.
    let ops: Vec<&str> = rest["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(ops, ["everything", "validate", "meta", "meta-add", "meta-delete"]);
    assert_eq!(s.get_as(&rs.token, &format!("Patient/{pid}/$everything")).0, 200);
    assert_eq!(s.get_as(&rs.token, &format!("Patient/{pid}/$meta")).0, 200);
    for op in ["$meta-add", "$meta-delete"] {
        let change = serde_json::json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": "urn:test", "code": "x"}]}}]});
        let (st, v) = s.call(&rs.token, reqwest::Method::POST, &format!("Patient/{pid}/{op}"), Some(&change), &[]);
        assert_eq!(st, 200, "{op}: {v}");
    }
    let (st, v): (u16, Value) = s.call(&rs.token, reqwest::Method::POST, "Patient/$validate", Some(&patient("3171054708900003", "Lestari")), &[]);
    assert_eq!((st, v["issue"][0]["severity"].as_str()), (200, Some("information")), "{v}");
    // Type history for every type that lists it (one patient's record, or the directory),
    // and system history for the record.
    let (st, v) = s.call(
        &rs.token,
        reqwest::Method::POST,
        "Observation",
        Some(&serde_json::json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}})),
        &[],
    );
    assert_eq!(st, 201, "{v}");
    let mut histories = 0;
    for r in rest["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        if !r["interaction"].as_array().unwrap().iter().any(|i| i["code"] == "history-type") {
            continue;
        }
        let of_patient = t == "Patient" || r["documentation"].as_str().unwrap().contains("one patient");
        let path = if of_patient { format!("{t}/_history?patient={pid}") } else { format!("{t}/_history") };
        let (st, b) = s.get_as(&rs.token, &path);
        assert_eq!((st, b["type"].as_str()), (200, Some("history")), "{path}: {b}");
        histories += 1;
    }
    assert!(histories > 140, "{histories}");
    assert!(rest["interaction"].as_array().unwrap().iter().any(|i| i["code"] == "history-system"));
    let (st, b) = s.get_as(&rs.token, &format!("_history?patient={pid}"));
    // The Patient's three versions (created, tagged, untagged) and the Observation.
    assert_eq!((st, b["entry"].as_array().map(Vec::len)), (200, Some(4)), "{b}");
    // AuditEvent is written by the audit log only: no write interaction is listed.
    let audit = rest["resource"].as_array().unwrap().iter().find(|r| r["type"] == "AuditEvent").unwrap();
    assert_eq!(audit["interaction"], serde_json::json!([{"code": "search-type"}]));
}
