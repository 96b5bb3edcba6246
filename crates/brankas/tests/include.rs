//! `_include` and `_revinclude` through the HTTP API: what they add, and the walls they keep
//! (one patient's record per reference, the caller's own gates, break-the-glass only by
//! asking for the patient itself).

mod common;

use common::{Caller, Instance, NIK_SYSTEM, Server, next_link, observation, patient};
use serde_json::{Value, json};

fn facility(inst: &Instance, s: &Server, org: &str, scopes: &str) -> Caller {
    inst.caller(s, &["--name", org, "--role", "facility-system", "--organization", &format!("Organization/{org}"), "--scopes", scopes])
}

fn get(s: &Server, c: &Caller, path: &str) -> (u16, Value) {
    s.get_as(&c.token, path)
}

fn create(s: &Server, c: &Caller, body: Value) -> String {
    let (st, v) = s.call(&c.token, reqwest::Method::POST, body["resourceType"].as_str().unwrap(), Some(&body), &[]);
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// `Type/id` of the entries with `search.mode` `mode`, sorted.
fn by_mode(b: &Value, mode: &str) -> Vec<String> {
    let mut v: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap()))
        .collect();
    v.sort();
    v
}

fn notes(b: &Value) -> String {
    b["entry"].as_array().into_iter().flatten().filter(|e| e["search"]["mode"] == "outcome").map(|e| e["resource"].to_string()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

struct World {
    pid: String,
    other: String,
    doctor: String,
    enc: String,
    obs: Vec<String>,
    cond: String,
}

/// A patient with a visit at `rs-a`, two results read by a practitioner of the directory (one
/// of them also naming another patient as a performer), a condition; and that other patient.
fn world(s: &Server, rs_a: &Caller) -> World {
    let pid = create(s, rs_a, patient("3171054708900003", "Lestari"));
    let other = create(s, rs_a, patient("3273014708900007", "Santoso"));
    let doctor = create(s, rs_a, json!({"resourceType": "Practitioner", "name": [{"family": "Wijaya", "prefix": ["dr."]}]}));
    let enc = create(
        s,
        rs_a,
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/rs-a"},
            "period": {"start": "2026-11-29T08:00:00+07:00"}}),
    );
    let mut o1 = observation(&pid);
    o1["performer"] = json!([{"reference": format!("Practitioner/{doctor}")}]);
    o1["encounter"] = json!({"reference": format!("Encounter/{enc}")});
    let mut o2 = observation(&pid);
    o2["performer"] = json!([{"reference": format!("Practitioner/{doctor}")}, {"reference": format!("Patient/{other}")}]);
    let obs = vec![create(s, rs_a, o1), create(s, rs_a, o2)];
    let cond = create(s, rs_a, json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")}, "code": {"text": "demam"}}));
    World { pid, other, doctor, enc, obs, cond }
}

#[test]
fn include_follows_references_within_the_patients_record_and_the_directory() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a", "system/*.cruds");
    let w = world(&s, &rs_a);
    let (st, b) = get(&s, &rs_a, &format!("Observation?patient={}&_include=Observation:performer&_include=Observation:encounter&_include=Observation:subject", w.pid));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["total"], 2, "includes are not counted in the total: {b}");
    assert_eq!(by_mode(&b, "match"), sorted(w.obs.iter().map(|o| format!("Observation/{o}")).collect()));
    assert_eq!(by_mode(&b, "include"), sorted(vec![format!("Encounter/{}", w.enc), format!("Patient/{}", w.pid), format!("Practitioner/{}", w.doctor)]), "each once");
    // The other patient named as a performer is not reached through this patient's record.
    assert!(!b.to_string().contains("Santoso"), "{b}");
    assert!(notes(&b).contains("another patient's record"), "{b}");
    assert!(!notes(&b).contains(&w.other), "the note names no one");
    // A target type narrows; `*` takes every reference parameter.
    let (_, b) = get(&s, &rs_a, &format!("Observation?patient={}&_include=Observation:performer:Practitioner", w.pid));
    assert_eq!(by_mode(&b, "include"), vec![format!("Practitioner/{}", w.doctor)]);
    assert!(notes(&b).is_empty(), "the other patient was not a Practitioner: {b}");
    let (_, b) = get(&s, &rs_a, &format!("Observation?patient={}&_include=Observation:*", w.pid));
    assert_eq!(by_mode(&b, "include"), sorted(vec![format!("Encounter/{}", w.enc), format!("Patient/{}", w.pid), format!("Practitioner/{}", w.doctor)]));
    // The compartment form works alike, and paging keeps the includes.
    let (st, b) = get(&s, &rs_a, &format!("Patient/{}/Observation?_include=Observation:performer&_count=1", w.pid));
    assert_eq!(st, 200, "{b}");
    assert_eq!(by_mode(&b, "match").len(), 1);
    assert_eq!(by_mode(&b, "include"), vec![format!("Practitioner/{}", w.doctor)]);
    let next = next_link(&b).expect("a second page");
    let r = s.http.get(&next).bearer_auth(&rs_a.token).send().unwrap();
    let b2: Value = r.json().unwrap();
    assert_eq!(by_mode(&b2, "match").len(), 1);
    assert_eq!(by_mode(&b2, "include"), vec![format!("Practitioner/{}", w.doctor)], "{b2}");
    // A count has nothing to include.
    let (_, b) = get(&s, &rs_a, &format!("Observation?patient={}&_include=Observation:performer&_summary=count", w.pid));
    assert_eq!(b["total"], 2);
    assert!(by_mode(&b, "include").is_empty(), "{b}");
}

#[test]
fn revinclude_and_iterate_stay_in_the_referenced_patients_record() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a", "system/*.cruds");
    let w = world(&s, &rs_a);
    let lookup = format!("Patient?identifier={NIK_SYSTEM}|3171054708900003&_revinclude=Observation:subject&_revinclude=Condition:subject");
    let (st, b) = get(&s, &rs_a, &lookup);
    assert_eq!(st, 200, "{b}");
    assert_eq!(by_mode(&b, "match"), vec![format!("Patient/{}", w.pid)]);
    let mut want: Vec<String> = w.obs.iter().map(|o| format!("Observation/{o}")).collect();
    want.push(format!("Condition/{}", w.cond));
    assert_eq!(by_mode(&b, "include"), sorted(want.clone()));
    // `:iterate` goes on from what was included: the results' performers and encounters.
    let (_, b) = get(&s, &rs_a, &format!("{lookup}&_include:iterate=Observation:performer&_include:iterate=Observation:encounter"));
    want.extend([format!("Practitioner/{}", w.doctor), format!("Encounter/{}", w.enc)]);
    assert_eq!(by_mode(&b, "include"), sorted(want));
    assert!(!b.to_string().contains("Santoso"), "{b}");
    // Without `:iterate`, an include that starts elsewhere than the searched type is refused.
    let (st, b) = get(&s, &rs_a, &format!("{lookup}&_include=Observation:performer"));
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["resourceType"], "OperationOutcome");
    // A revinclude from the directory would list every patient's records that name it: the
    // wall holds, and says so.
    let (st, b) = get(&s, &rs_a, &format!("Practitioner?_id={}&_revinclude=Observation:performer", w.doctor));
    assert_eq!(st, 200, "{b}");
    assert_eq!(by_mode(&b, "match"), vec![format!("Practitioner/{}", w.doctor)]);
    assert!(by_mode(&b, "include").is_empty(), "{b}");
    assert!(notes(&b).contains("would cross patients"), "{b}");
}

#[test]
fn included_resources_pass_the_callers_own_gates() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a", "system/*.cruds");
    let w = world(&s, &rs_a);
    // A facility without a care relationship finds the patient by NIK (a registration) but
    // none of the record through a revinclude, and no error says whether there is any.
    let rs_b = facility(&inst, &s, "rs-b", "system/*.cruds");
    let lookup = format!("Patient?identifier={NIK_SYSTEM}|3171054708900003&_revinclude=Observation:subject");
    let (st, b) = get(&s, &rs_b, &lookup);
    assert_eq!(st, 200, "{b}");
    assert_eq!(by_mode(&b, "match"), vec![format!("Patient/{}", w.pid)]);
    assert!(by_mode(&b, "include").is_empty(), "{b}");
    assert!(!b.to_string().contains("94558-4"), "{b}");
    // Scopes: a client that may read Observations only includes no Practitioner.
    let obs_only = facility(&inst, &s, "rs-a", "system/Observation.rs");
    let (st, b) = get(&s, &obs_only, &format!("Observation?patient={}&_include=Observation:performer", w.pid));
    assert_eq!(st, 200, "{b}");
    assert_eq!(by_mode(&b, "match").len(), 2);
    assert!(by_mode(&b, "include").is_empty(), "{b}");
    // Break-the-glass: the search that names the patient opens its record, includes too; a
    // lookup's revinclude does not break the glass on whoever the lookup finds.
    let igd = facility(&inst, &s, "igd-c", "system/*.cruds");
    let btg = [("X-Purpose-Of-Use", "BTG"), ("X-Break-Glass-Reason", "unconscious patient in the emergency room")];
    let (st, b) = s.call(&igd.token, reqwest::Method::GET, &lookup, None, &btg);
    assert_eq!(st, 200, "{b}");
    assert!(by_mode(&b, "include").is_empty(), "{b}");
    assert!(notes(&b).contains("break-the-glass"), "{b}");
    let (st, _) = get(&s, &igd, &format!("Observation/{}", w.obs[0]));
    assert_eq!(st, 403, "no grant was made through the revinclude");
    let (st, b) = s.call(&igd.token, reqwest::Method::GET, &format!("Observation?patient={}&_include=Observation:subject", w.pid), None, &btg);
    assert_eq!(st, 200, "{b}");
    assert_eq!(by_mode(&b, "include"), vec![format!("Patient/{}", w.pid)]);
}

#[test]
fn bad_include_values_are_refused_without_echoing_them() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a", "system/*.cruds");
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    for bad in [
        "Observation:code",
        "Observation:subject:Medication",
        "Observation",
        "Observation:3171054708900003",
        "Nope:subject",
        "Observation:subject:Patient:x",
        "Patient:general-practitioner",
    ] {
        let (st, b) = get(&s, &rs_a, &format!("Observation?patient={pid}&_include={bad}"));
        assert_eq!(st, 400, "{bad}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
        assert!(!b.to_string().contains("3171054708900003"), "{b}");
    }
    let (st, b) = get(&s, &rs_a, &format!("Observation?patient={pid}&_include:deep=Observation:subject"));
    assert_eq!(st, 400, "{b}");
    let many: String =
        (0..17).map(|i| format!("&_include=Observation:subject&_include:iterate=Observation:performer&_revinclude=Provenance:target{}", ["", ":Observation"][i % 2])).collect();
    let (st, b) = get(
        &s,
        &rs_a,
        &format!(
            "Observation?patient={pid}{many}&_include=Observation:encounter&_include=Observation:focus&_include=Observation:device&_include=Observation:specimen&_include=Observation:has-member&_include=Observation:derived-from&_include=Observation:based-on&_include=Observation:part-of&_include=Observation:performer&_include:iterate=Encounter:subject&_include:iterate=Encounter:practitioner&_include:iterate=Encounter:location&_include:iterate=Encounter:episode-of-care&_include:iterate=Encounter:service-provider"
        ),
    );
    assert_eq!(st, 400, "{b}");
}

/// Every `searchInclude` and `searchRevInclude` the CapabilityStatement lists is accepted.
#[test]
fn every_include_the_capability_statement_lists_is_accepted() {
    let inst = Instance::init();
    let s = inst.serve();
    // Some two thousand requests, as fast as they go.
    let rs_a = inst.caller(
        &s,
        &["--name", "rs-a", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.cruds", "--rate-per-second", "100000", "--burst", "100000"],
    );
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    let (st, cs) = get(&s, &rs_a, "metadata");
    assert_eq!(st, 200);
    let mut asks: Vec<(String, String)> = Vec::new();
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        let in_compartment = r["documentation"].as_str().unwrap().contains("one patient");
        let base = if t == "Patient" {
            format!("Patient?identifier={NIK_SYSTEM}|3171054708900003")
        } else if in_compartment {
            format!("Patient/{pid}/{t}?_count=1")
        } else {
            format!("{t}?_count=1")
        };
        for (key, list) in [("_include", &r["searchInclude"]), ("_revinclude", &r["searchRevInclude"])] {
            asks.extend(list.as_array().into_iter().flatten().map(|v| (t.to_string(), format!("{base}&{key}={}", v.as_str().unwrap()))));
        }
    }
    let asked = asks.len();
    std::thread::scope(|scope| {
        for part in asks.chunks(asked.div_ceil(4)) {
            let (s, rs_a) = (&s, &rs_a);
            scope.spawn(move || {
                for (t, url) in part {
                    let (st, b) = get(s, rs_a, url);
                    assert_eq!(st, 200, "{t}: {url}: {b}");
                }
            });
        }
    });
    assert!(asked > 1_000, "{asked}");
}

#[test]
fn chains_reach_patients_by_identity_and_has_looks_inside_one_record() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a", "system/*.cruds");
    let w = world(&s, &rs_a);
    let want: Vec<String> = sorted(w.obs.iter().map(|o| format!("Observation/{o}")).collect());
    let nik = format!("{NIK_SYSTEM}|3171054708900003");
    for chain in [
        format!("subject.identifier={nik}"),
        format!("subject:Patient.identifier={nik}"),
        format!("patient.identifier={nik}"),
        "subject.name=Lestari&subject.birthdate=1990-08-07".to_string(),
    ] {
        let (st, b) = get(&s, &rs_a, &format!("Observation?{chain}"));
        assert_eq!(st, 200, "{chain}: {b}");
        assert_eq!(by_mode(&b, "match"), want, "{chain}");
        // Paging keeps the chain.
        let (_, b) = get(&s, &rs_a, &format!("Observation?{chain}&_count=1"));
        let r = s.http.get(next_link(&b).expect("next")).bearer_auth(&rs_a.token).send().unwrap();
        assert_eq!(by_mode(&r.json::<Value>().unwrap(), "match").len(), 1);
    }
    let (st, b) = get(&s, &rs_a, &format!("Observation?subject.identifier={NIK_SYSTEM}|3171054708900099"));
    assert_eq!((st, b["total"].as_u64()), (200, Some(0)), "nobody: nothing");
    // Chains that are no identity, or go elsewhere than a patient, would list across patients.
    for bad in ["subject.gender=female", "encounter.status=finished", "subject:Group.name=x", "subject.organization.name=x"] {
        let (st, b) = get(&s, &rs_a, &format!("Observation?{bad}"));
        assert_eq!(st, 400, "{bad}: {b}");
    }
    // The patient's own gate decides: another facility reaches nothing through a chain.
    let rs_b = facility(&inst, &s, "rs-b", "system/*.cruds");
    let (st, b) = get(&s, &rs_b, &format!("Observation?subject.identifier={nik}"));
    assert_eq!(st, 403, "{b}");
    assert!(!b.to_string().contains("94558-4"));

    // _has: the patient found by NIK, kept only if its record holds such a result.
    let has = |code: &str| format!("Patient?identifier={nik}&_has:Observation:patient:code={code}");
    let (st, b) = get(&s, &rs_a, &has("94558-4"));
    assert_eq!((st, by_mode(&b, "match")), (200, vec![format!("Patient/{}", w.pid)]), "{b}");
    let (st, b) = get(&s, &rs_a, &has("0000-0"));
    assert_eq!((st, b["total"].as_u64()), (200, Some(0)), "{b}");
    // Looking into a record needs its gate.
    let (st, _) = get(&s, &rs_b, &has("94558-4"));
    assert_eq!(st, 403);
    // Within one record: the visits some result points at.
    let (st, b) = get(&s, &rs_a, &format!("Encounter?patient={}&_has:Observation:encounter:code=94558-4", w.pid));
    assert_eq!((st, by_mode(&b, "match")), (200, vec![format!("Encounter/{}", w.enc)]), "{b}");
    // From the directory into patients' records, or _has within _has: refused.
    let (st, _) = get(&s, &rs_a, &format!("Practitioner?_id={}&_has:Observation:performer:code=94558-4", w.doctor));
    assert_eq!(st, 400);
    let (st, _) = get(&s, &rs_a, &format!("Patient?identifier={nik}&_has:Observation:patient:_has:Provenance:target:agent=x"));
    assert_eq!(st, 400);
    let (st, _) = get(&s, &rs_a, &format!("Patient?identifier={nik}&_has:Observation:code:code=x"));
    assert_eq!(st, 400, "not a reference parameter");
}
