//! Who may see what, through the HTTP API: roles, facilities and their care relationships,
//! patient clients, and break-glass. Every denial is a 403 OperationOutcome that says what
//! is missing and nothing about the data.

mod common;

use common::{Caller, Instance, NIK_SYSTEM, Server, observation, patient};
use serde_json::{Value, json};

/// A client of the instance, with a token.
fn caller(inst: &Instance, s: &Server, args: &[&str]) -> Caller {
    inst.caller(s, args)
}

fn facility(inst: &Instance, s: &Server, org: &str) -> Caller {
    caller(inst, s, &["--name", org, "--role", "facility-system", "--organization", &format!("Organization/{org}"), "--scopes", "system/*.cruds"])
}

/// A facility client that also holds grants for sensitive categories.
fn facility_granted(inst: &Instance, s: &Server, org: &str, sensitive: &str) -> Caller {
    caller(inst, s, &["--name", org, "--role", "facility-system", "--organization", &format!("Organization/{org}"), "--scopes", "system/*.cruds", "--sensitive", sensitive])
}

fn call(s: &Server, c: &Caller, method: reqwest::Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> (u16, Value) {
    s.call(&c.token, method, path, body, headers)
}

fn get(s: &Server, c: &Caller, path: &str) -> (u16, Value) {
    call(s, c, reqwest::Method::GET, path, None, &[])
}

fn create(s: &Server, c: &Caller, body: Value) -> String {
    let (st, v) = call(s, c, reqwest::Method::POST, body["resourceType"].as_str().unwrap(), Some(&body), &[]);
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// A denial: 403, an OperationOutcome, and no trace of the record.
fn assert_denied(r: (u16, Value), what: &str, secret: &str) {
    assert_eq!(r.0, 403, "{what}: {}", r.1);
    assert_eq!(r.1["resourceType"], "OperationOutcome", "{what}");
    assert!(!r.1.to_string().contains(secret), "{what}: the denial echoes data: {}", r.1);
}

#[test]
fn facilities_reach_their_own_patients_and_identity_lookups_only_elsewhere() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let rs_b = facility(&inst, &s, "rs-b");
    let pkm_c = facility(&inst, &s, "pkm-c");

    // Facility A registers a patient and records a positive antigen result.
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    let oid = create(&s, &rs_a, observation(&pid));
    // A sees everything of its patient.
    assert_eq!(get(&s, &rs_a, &format!("Patient/{pid}")).0, 200);
    assert_eq!(get(&s, &rs_a, &format!("Observation/{oid}")).0, 200);
    assert_eq!(get(&s, &rs_a, &format!("Observation?patient={pid}")).1["total"], 1);
    assert_eq!(get(&s, &rs_a, &format!("Patient/{pid}/$everything")).0, 200);

    // Facility B has no care relationship: every route to the clinical record is closed.
    for path in [
        format!("Patient/{pid}"),
        format!("Observation/{oid}"),
        format!("Observation/{oid}/_history"),
        format!("Observation/{oid}/_history/1"),
        format!("Patient/{pid}/_history"),
        format!("Observation?patient={pid}"),
        format!("Observation?subject=Patient/{pid}"),
        format!("Patient/{pid}/Observation"),
        format!("Patient/{pid}/$everything"),
        format!("Patient?_id={pid}"),
    ] {
        assert_denied(get(&s, &rs_b, &path), &path, "Lestari");
    }
    assert_denied(
        call(
            &s,
            &rs_b,
            reqwest::Method::PUT,
            &format!("Observation/{oid}"),
            Some(&{
                let mut o = observation(&pid);
                o["id"] = json!(oid);
                o
            }),
            &[],
        ),
        "update of A's record",
        "Positive",
    );
    assert_denied(call(&s, &rs_b, reqwest::Method::DELETE, &format!("Observation/{oid}"), None, &[]), "delete of A's record", "Positive");
    assert_eq!(get(&s, &rs_a, &format!("Observation/{oid}")).1["meta"]["versionId"], "1", "nothing changed");
    // But an exact identity lookup answers (to register a visit), with the Patient only.
    let (st, found) = get(&s, &rs_b, &format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"));
    assert_eq!((st, found["total"].as_u64()), (200, Some(1)), "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], json!(pid));

    // A transaction cannot be used to read through a conditional create either.
    let sneaky = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": observation(&pid), "request": {"method": "POST", "url": "Observation", "ifNoneExist": "code=http://loinc.org|94558-4"}}]});
    let (st, v) = call(&s, &rs_b, reqwest::Method::POST, "", Some(&sneaky), &[]);
    assert_eq!(st, 403, "{v}");

    // An Encounter at puskesmas C (written by A, e.g. a referral visit) makes C part of the care.
    assert_denied(get(&s, &pkm_c, &format!("Observation/{oid}")), "C before the visit", "Positive");
    create(
        &s,
        &rs_a,
        json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/pkm-c"},
        "period": {"start": "2026-11-01T08:00:00+07:00"}}),
    );
    assert_eq!(get(&s, &pkm_c, &format!("Observation/{oid}")).0, 200, "C after the visit");
    assert_eq!(get(&s, &pkm_c, &format!("Patient/{pid}/$everything")).0, 200);
    // A referral ServiceRequest to B does the same for B.
    create(
        &s,
        &rs_a,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": format!("Patient/{pid}")}, "performer": [{"reference": "Organization/rs-b"}],
        "identifier": [{"system": "https://fhir.kemkes.go.id/id/referral", "value": "RJK-0001"}]}),
    );
    assert_eq!(get(&s, &rs_b, &format!("Observation/{oid}")).0, 200, "B after the referral");
}

/// The attack of issue 13: a facility that finds a patient by NIK and writes something for
/// them (an Observation, an Encounter at itself, a referral, a Consent permitting itself)
/// must not gain the rest of the record. It reaches what it wrote, nothing else.
#[test]
fn writing_for_a_patient_opens_nothing_but_what_was_written() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let rs_d = facility(&inst, &s, "rs-d");
    let rs_e = facility(&inst, &s, "rs-e");
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    let oid = create(&s, &rs_a, observation(&pid));
    // D finds the patient by NIK and writes for them.
    let (_, found) = get(&s, &rs_d, &format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"));
    assert_eq!(found["entry"][0]["resource"]["id"], json!(pid));
    let mut mine = observation(&pid);
    mine["valueCodeableConcept"] = json!({"text": "Negative"});
    // A writer stamp sent by the client is not believed.
    mine["meta"] = json!({"extension": [{"url": "https://brankas.id/fhir/StructureDefinition/written-by", "valueReference": {"reference": "Organization/rs-a"}}]});
    let my_obs = create(&s, &rs_d, mine);
    create(
        &s,
        &rs_d,
        json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/rs-d"}}),
    );
    create(
        &s,
        &rs_d,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": format!("Patient/{pid}")}, "performer": [{"reference": "Organization/rs-e"}]}),
    );
    create(
        &s,
        &rs_d,
        consent(
            &pid,
            json!({"type": "permit",
        "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "Organization/rs-d"}}]}),
        ),
    );
    // What it wrote it reads (and the stamp names it, not the one it claimed)...
    let (st, v) = get(&s, &rs_d, &format!("Observation/{my_obs}"));
    assert_eq!(st, 200, "{v}");
    let stamps: Vec<&Value> = v["meta"]["extension"].as_array().unwrap().iter().map(|e| &e["valueReference"]["reference"]).collect();
    assert_eq!(stamps, vec![&json!("Organization/rs-d")], "{v}");
    let (st, v) = get(&s, &rs_d, &format!("Observation?patient={pid}"));
    assert_eq!((st, v["total"].as_u64()), (200, Some(1)), "only its own: {v}");
    // ... and nothing else: not the Patient, not RS A's result, not through any route.
    for path in [format!("Patient/{pid}"), format!("Observation/{oid}"), format!("Observation/{oid}/_history/1"), format!("Observation/{oid}/_history")] {
        assert_denied(get(&s, &rs_d, &path), &path, "Positive");
    }
    let (_, all) = get(&s, &rs_d, &format!("Patient/{pid}/$everything"));
    assert!(!all.to_string().contains(&oid) && !all.to_string().contains("Lestari"), "{all}");
    let mut changed = observation(&pid);
    changed["id"] = json!(oid);
    assert_denied(call(&s, &rs_d, reqwest::Method::PUT, &format!("Observation/{oid}"), Some(&changed), &[]), "update of A's record", "Positive");
    assert_denied(call(&s, &rs_d, reqwest::Method::DELETE, &format!("Observation/{oid}"), None, &[]), "delete of A's record", "Positive");
    // Its referral opens nothing for E either: D is not in the patient's care.
    assert_denied(get(&s, &rs_e, &format!("Observation/{oid}")), "a referral from outside the care", "Positive");
    // The patient's own client writes the permit: that opens what it covers.
    let me = caller(&inst, &s, &["--name", "Mobile JKN", "--role", "patient", "--patient", &format!("Patient/{pid}"), "--scopes", "patient/*.cruds"]);
    let (st, v) = call(
        &s,
        &me,
        reqwest::Method::POST,
        "Consent",
        Some(&consent(
            &pid,
            json!({"type": "permit",
        "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "Organization/rs-d"}}],
        "class": [{"code": "Observation"}]}),
        )),
        &[],
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(get(&s, &rs_d, &format!("Observation/{oid}")).0, 200, "the patient's permit");
    assert_denied(get(&s, &rs_d, &format!("Patient/{pid}")), "the permit names Observations only", "Lestari");
    // The facility cannot widen the patient's permit; a facility in care that rewrites it
    // makes it its own, and then it grants nothing.
    let cid = v["id"].as_str().unwrap().to_string();
    let mut again = v.clone();
    again["provision"]["class"] = json!([{"code": "Observation"}, {"code": "Patient"}]);
    assert_denied(call(&s, &rs_d, reqwest::Method::PUT, &format!("Consent/{cid}"), Some(&again), &[]), "D widening its permit", "Lestari");
    assert_eq!(call(&s, &rs_a, reqwest::Method::PUT, &format!("Consent/{cid}"), Some(&again), &[]).0, 200);
    assert_denied(get(&s, &rs_d, &format!("Patient/{pid}")), "a permit last written by a facility", "Lestari");
    assert_denied(get(&s, &rs_d, &format!("Observation/{oid}")), "a permit last written by a facility", "Positive");
    // RS A registered the patient, so it is in the care: its referral to E opens for E.
    create(
        &s,
        &rs_a,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": format!("Patient/{pid}")}, "performer": [{"reference": "Organization/rs-e"}]}),
    );
    assert_eq!(get(&s, &rs_e, &format!("Observation/{oid}")).0, 200, "a referral from a facility in care");
}

#[test]
fn a_clinical_record_must_name_a_patient_that_exists() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let rs_b = facility(&inst, &s, "rs-b");
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    // A subject that does not resolve.
    let (st, v) = call(&s, &rs_a, reqwest::Method::POST, "Observation", Some(&observation("no-such-patient")), &[]);
    assert_eq!((st, v["resourceType"].as_str()), (422, Some("OperationOutcome")), "{v}");
    // No patient at all: it would land in the directory, readable by every facility.
    let mut orphan = observation(&pid);
    orphan.as_object_mut().unwrap().remove("subject");
    let (st, v) = call(&s, &rs_a, reqwest::Method::POST, "Observation", Some(&orphan), &[]);
    assert_eq!((st, v["resourceType"].as_str()), (422, Some("OperationOutcome")), "{v}");
    let (st, v) = call(
        &s,
        &rs_b,
        reqwest::Method::PUT,
        "Observation/orphan-1",
        Some(&{
            let mut o = orphan.clone();
            o["id"] = json!("orphan-1");
            o
        }),
        &[],
    );
    assert_eq!(st, 422, "{v}");
    // Another server's patient is not ours either.
    let (st, _) = call(
        &s,
        &rs_a,
        reqwest::Method::POST,
        "Observation",
        Some(
            &observation("x")
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("subject".into(), json!({"reference": "https://other.example/fhir/Patient/1"}));
                    Value::Object(o)
                })
                .unwrap(),
        ),
        &[],
    );
    assert_eq!(st, 422);
    // A deleted patient takes no new records.
    let gone = create(&s, &rs_a, patient("3273014708900007", "Santoso"));
    assert_eq!(call(&s, &rs_a, reqwest::Method::DELETE, &format!("Patient/{gone}"), None, &[]).0, 204);
    assert_eq!(call(&s, &rs_a, reqwest::Method::POST, "Observation", Some(&observation(&gone)), &[]).0, 422);
    // A patient created in the same transaction exists for its records.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7f0c3b0e-8a7a-4c55-b1f8-0d6a4a1f7a11", "resource": patient("3374014708900001", "Rahayu"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("x").as_object().map(|o| {
            let mut o = o.clone();
            o.insert("subject".into(), json!({"reference": "urn:uuid:7f0c3b0e-8a7a-4c55-b1f8-0d6a4a1f7a11"}));
            Value::Object(o)
        }).unwrap(), "request": {"method": "POST", "url": "Observation"}}]});
    let (st, v) = call(&s, &rs_a, reqwest::Method::POST, "", Some(&bundle), &[]);
    assert_eq!(st, 200, "{v}");
}

#[test]
fn a_patient_client_reaches_its_own_record_only() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a");
    let mine = create(&s, &rs, patient("3171054708900003", "Lestari"));
    let my_obs = create(&s, &rs, observation(&mine));
    let other = create(&s, &rs, patient("3273014708900007", "Santoso"));
    let other_obs = create(&s, &rs, observation(&other));
    let me = caller(&inst, &s, &["--name", "Mobile JKN (Sri)", "--role", "patient", "--patient", &format!("Patient/{mine}"), "--scopes", "patient/*.rs"]);

    assert_eq!(get(&s, &me, &format!("Patient/{mine}")).0, 200);
    assert_eq!(get(&s, &me, &format!("Observation/{my_obs}")).0, 200);
    assert_eq!(get(&s, &me, &format!("Observation?patient={mine}")).1["total"], 1);
    assert_eq!(get(&s, &me, &format!("Patient/{mine}/$everything")).0, 200);
    for path in [
        format!("Patient/{other}"),
        format!("Observation/{other_obs}"),
        format!("Observation/{other_obs}/_history"),
        format!("Patient/{other}/_history/1"),
        format!("Observation?patient={other}"),
        format!("Patient/{other}/Observation"),
        format!("Patient/{other}/$everything"),
        format!("Patient?_id={other}"),
    ] {
        assert_denied(get(&s, &me, &path), &path, "Santoso");
    }
    // An identity lookup of someone else finds nobody.
    let (st, v) = get(&s, &me, &format!("Patient?identifier={NIK_SYSTEM}|3273014708900007"));
    assert_eq!((st, v["total"].as_u64()), (200, Some(0)), "{v}");
    let (st, v) = get(&s, &me, &format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"));
    assert_eq!((st, v["total"].as_u64()), (200, Some(1)), "{v}");
    // Read-only scopes: no writes, even into the own record.
    let (st, _) = call(&s, &me, reqwest::Method::POST, "Observation", Some(&observation(&mine)), &[]);
    assert_eq!(st, 403);
}

#[test]
fn roles_without_a_clinical_purpose_read_no_patient_data() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a");
    let pid = create(&s, &rs, patient("3171054708900003", "Lestari"));
    let admin = Caller { id: inst.admin_id.clone(), token: s.token_for(&inst.admin_id, &inst.admin_secret) };
    let officer = caller(&inst, &s, &["--name", "CSIRT", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let researcher = caller(&inst, &s, &["--name", "Litbangkes", "--role", "researcher"]);
    for (who, c) in [("admin", &admin), ("security officer", &officer), ("researcher", &researcher)] {
        for path in
            [format!("Patient/{pid}"), format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"), format!("Observation?patient={pid}"), format!("Patient/{pid}/$everything")]
        {
            assert_denied(get(&s, c, &path), &format!("{who}: {path}"), "Lestari");
        }
    }
    // The admin maintains the directory.
    let (st, v) = call(&s, &admin, reqwest::Method::PUT, "Organization/rs-a", Some(&json!({"resourceType": "Organization", "id": "rs-a", "name": "RS A"})), &[]);
    assert_eq!(st, 201, "{v}");
    assert_eq!(get(&s, &rs, "Organization/rs-a").0, 200, "facilities read the directory");
    assert_denied(get(&s, &researcher, "Organization/rs-a"), "researcher reads no directory through the clinical API", "RS A");
}

#[test]
fn break_glass_needs_a_reason_is_time_limited_and_per_patient() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let igd = facility(&inst, &s, "igd-b");
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    let oid = create(&s, &rs_a, observation(&pid));
    let other = create(&s, &rs_a, patient("3273014708900007", "Santoso"));
    let path = format!("Observation/{oid}");

    assert_denied(get(&s, &igd, &path), "no relationship", "Positive");
    let (st, v) = call(&s, &igd, reqwest::Method::GET, &path, None, &[("X-Purpose-Of-Use", "BTG")]);
    assert_eq!(st, 400, "break-glass without a reason: {v}");
    assert!(v["issue"][0]["diagnostics"].as_str().unwrap().contains("reason"), "{v}");
    let (st, v) = call(&s, &igd, reqwest::Method::GET, &path, None, &[("X-Purpose-Of-Use", "TREAT;DROP"), ("X-Break-Glass-Reason", "x")]);
    assert_eq!(st, 400, "{v}");
    let btg = [("X-Purpose-Of-Use", "BTG"), ("X-Break-Glass-Reason", "unconscious patient in the emergency room")];
    let (st, v) = call(&s, &igd, reqwest::Method::GET, &path, None, &btg);
    assert_eq!(st, 200, "{v}");
    // The grant holds for this patient for a while, without repeating the headers...
    assert_eq!(get(&s, &igd, &format!("Patient/{pid}/$everything")).0, 200);
    // ... and for no one else.
    assert_denied(get(&s, &igd, &format!("Patient/{other}")), "another patient", "Santoso");
    // The alert is in the server's log, naming the client and not the patient.
    let log = std::fs::read_to_string(inst.log_file()).unwrap_or_default();
    assert!(log.contains("break-glass access granted"), "no alert logged");
    assert!(!log.contains(&pid) && !log.contains("Lestari") && !log.contains("3171054708900003"), "the alert names the patient");
}

#[test]
fn scope_query_restrictions_limit_reads_searches_and_writes() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a");
    let pid = create(&s, &rs, patient("3171054708900003", "Lestari"));
    let obs = |category: &str, value: &str| {
        let mut o = observation(&pid);
        o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}]);
        o["valueCodeableConcept"] = json!({"text": value});
        o
    };
    let lab = create(&s, &rs, obs("laboratory", "Positive"));
    let vital = create(&s, &rs, obs("vital-signs", "Febrile"));
    // A laboratory information system of the same facility: laboratory results only.
    let lis = caller(
        &inst,
        &s,
        &["--name", "LIS", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/Patient.rs system/Observation.crs?category=laboratory"],
    );
    assert_eq!(get(&s, &lis, &format!("Observation/{lab}")).0, 200);
    assert_denied(get(&s, &lis, &format!("Observation/{vital}")), "a vital sign through a laboratory scope", "Febrile");
    assert_denied(get(&s, &lis, &format!("Observation/{vital}/_history/1")), "vread of it", "Febrile");
    let (st, found) = get(&s, &lis, &format!("Observation?patient={pid}"));
    assert_eq!(st, 200);
    assert_eq!(found["total"], 1, "the total counts only what the scope shows: {found}");
    assert_eq!(found["entry"][0]["resource"]["id"], json!(lab));
    let (st, all) = get(&s, &lis, &format!("Patient/{pid}/$everything"));
    assert_eq!(st, 200);
    assert!(!all.to_string().contains("Febrile"), "$everything leaks the vital sign");
    assert!(all.to_string().contains(&lab));
    assert_eq!(call(&s, &lis, reqwest::Method::POST, "Observation", Some(&obs("laboratory", "Negative")), &[]).0, 201);
    assert_eq!(call(&s, &lis, reqwest::Method::POST, "Observation", Some(&obs("vital-signs", "36.5")), &[]).0, 403, "writes outside the restriction");
    // A restriction on a parameter the type does not have matches nothing, never everything.
    let odd = caller(&inst, &s, &["--name", "odd", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/Observation.rs?no-such-param=x"]);
    assert_denied(get(&s, &odd, &format!("Observation/{lab}")), "unknown restriction", "Positive");
    assert_eq!(get(&s, &odd, &format!("Observation?patient={pid}")).1["total"], 0);
}

fn consent(pid: &str, provision: Value) -> Value {
    json!({"resourceType": "Consent", "status": "active",
           "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
           "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
           "patient": {"reference": format!("Patient/{pid}")},
           "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
           "provision": provision})
}

#[test]
fn the_patients_consent_is_enforced_record_by_record() {
    let inst = Instance::init();
    let s = inst.serve();
    // All hold the PSY grant: what decides below is the patient's consent.
    let rs_a = facility_granted(&inst, &s, "rs-a", "PSY");
    let pkm_c = facility_granted(&inst, &s, "pkm-c", "PSY");
    let rs_e = facility_granted(&inst, &s, "rs-e", "PSY");
    let pid = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    let plain = create(&s, &rs_a, observation(&pid));
    let mut psy = observation(&pid);
    psy["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]});
    psy["valueCodeableConcept"] = json!({"text": "Depressive episode"});
    let psy = create(&s, &rs_a, psy);
    create(
        &s,
        &rs_a,
        json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/pkm-c"}}),
    );
    assert_eq!(get(&s, &pkm_c, &format!("Observation/{psy}")).0, 200, "before any consent, care is enough");

    // Psychiatric records: nobody but RS A (a deny with a nested permit).
    create(
        &s,
        &rs_a,
        consent(
            &pid,
            json!({"type": "deny",
        "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}],
        "provision": [{"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                                                      "reference": {"reference": "Organization/rs-a"}}]}]}),
        ),
    );
    assert_eq!(get(&s, &rs_a, &format!("Observation/{psy}")).0, 200, "the exception");
    assert_denied(get(&s, &pkm_c, &format!("Observation/{psy}")), "a labelled record the consent denies", "Depressive");
    assert_eq!(get(&s, &pkm_c, &format!("Observation/{plain}")).0, 200, "unlabelled records stay readable");
    let (_, found) = get(&s, &pkm_c, &format!("Observation?patient={pid}"));
    assert_eq!(found["total"], 1, "hidden, and not counted: {found}");
    let (_, all) = get(&s, &pkm_c, &format!("Patient/{pid}/$everything"));
    assert!(!all.to_string().contains("Depressive") && all.to_string().contains(&plain), "{all}");
    // Break-glass overrides the consent (and is alerted).
    let (st, _) = call(
        &s,
        &pkm_c,
        reqwest::Method::GET,
        &format!("Observation/{psy}"),
        None,
        &[("X-Purpose-Of-Use", "BTG"), ("X-Break-Glass-Reason", "suicide risk assessment in the emergency room")],
    );
    assert_eq!(st, 200);

    // A permit by name lets a facility without a relationship see what it names, nothing
    // else; only when the patient's own client wrote it (a facility's permit opens nothing).
    assert_denied(get(&s, &rs_e, &format!("Observation/{plain}")), "no relationship, no consent", "Positive");
    let permit_e = consent(
        &pid,
        json!({"type": "permit",
        "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "Organization/rs-e"}}],
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}),
    );
    create(&s, &rs_a, permit_e.clone());
    assert_denied(get(&s, &rs_e, &format!("Observation/{plain}")), "a permit a facility wrote", "Positive");
    let me = caller(&inst, &s, &["--name", "me", "--role", "patient", "--patient", &format!("Patient/{pid}"), "--scopes", "patient/*.cruds"]);
    assert_eq!(call(&s, &me, reqwest::Method::POST, "Consent", Some(&permit_e), &[]).0, 201);
    assert_eq!(get(&s, &rs_e, &format!("Observation/{plain}")).0, 200, "named by the permit");
    assert_denied(get(&s, &rs_e, &format!("Observation/{psy}")), "the PSY deny still holds", "Depressive");
    assert_denied(get(&s, &rs_e, &format!("Patient/{pid}")), "the permit names Observations only", "Lestari");

    // A consent that denies a facility everything.
    create(
        &s,
        &rs_a,
        consent(
            &pid,
            json!({"type": "deny",
        "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "Organization/pkm-c"}}]}),
        ),
    );
    // (pkm-c still holds its break-glass grant from above: use a second client of pkm-c.)
    let pkm_c2 = facility_granted(&inst, &s, "pkm-c", "PSY");
    assert_denied(get(&s, &pkm_c2, &format!("Observation/{plain}")), "denied by name", "Positive");
    assert_denied(get(&s, &pkm_c2, &format!("Patient/{pid}")), "denied by name", "Lestari");
    assert_eq!(get(&s, &pkm_c2, &format!("Observation?patient={pid}")).1["total"], 0);
    assert_eq!(get(&s, &rs_a, &format!("Observation?patient={pid}")).1["total"], 2, "RS A is not affected");
}

#[test]
fn sensitive_labels_and_photos_need_an_explicit_grant() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs = facility(&inst, &s, "rs-a");
    let mut p = patient("3171054708900003", "Lestari");
    // A real (1x1) PNG: photos are decoded to be cleaned of their metadata.
    p["photo"] = json!([{"contentType": "image/png", "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="}]);
    let pid = create(&s, &rs, p);
    let mut hiv = observation(&pid);
    hiv["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]});
    hiv["valueCodeableConcept"] = json!({"text": "HIV-1 antibody reactive"});
    let hiv = create(&s, &rs, hiv);
    let plain = create(&s, &rs, observation(&pid));
    // The same facility's general system holds no grant: the labelled record is hidden, the
    // photo redacted (and the resource marked so).
    assert_denied(get(&s, &rs, &format!("Observation/{hiv}")), "HIV-labelled record without a grant", "reactive");
    assert_eq!(get(&s, &rs, &format!("Observation?patient={pid}")).1["total"], 1);
    let (_, all) = get(&s, &rs, &format!("Patient/{pid}/$everything"));
    assert!(!all.to_string().contains("reactive") && all.to_string().contains(&plain));
    let (_, read) = get(&s, &rs, &format!("Patient/{pid}"));
    assert!(read.get("photo").is_none(), "{read}");
    assert!(read["meta"]["security"].to_string().contains("REDACTED"), "{read}");
    let (_, found) = get(&s, &rs, &format!("Patient?identifier={NIK_SYSTEM}|3171054708900003"));
    assert!(found["entry"][0]["resource"].get("photo").is_none(), "identity lookups redact photos too: {found}");
    // Every other way to the Patient resource redacts it alike: a search by id, the
    // compartment's own Patient search (decided on search entries), an include, a revinclude.
    for path in [
        format!("Patient?_id={pid}"),
        format!("Patient/{pid}/Patient"),
        format!("Observation?patient={pid}&_include=Observation:subject"),
        format!("Patient/{pid}/Patient?_revinclude=Patient:link"),
        format!("Patient/{pid}/$everything"),
    ] {
        let (st, found) = get(&s, &rs, &path);
        assert_eq!(st, 200, "{path}: {found}");
        let text = found.to_string();
        assert!(text.contains(&format!("\"Patient\",\"id\":\"{pid}\"")) || text.contains(&pid), "{path}: {found}");
        assert!(!text.contains("iVBORw0KGgo"), "{path} shows the photo: {found}");
    }
    // The HIV clinic's system holds both grants.
    let vct =
        caller(&inst, &s, &["--name", "VCT clinic", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.cruds", "--sensitive", "HIV,PHOTO"]);
    let (st, v) = get(&s, &vct, &format!("Observation/{hiv}"));
    assert_eq!((st, v["valueCodeableConcept"]["text"].as_str()), (200, Some("HIV-1 antibody reactive")));
    assert_eq!(get(&s, &vct, &format!("Observation?patient={pid}")).1["total"], 2);
    let (_, read) = get(&s, &vct, &format!("Patient/{pid}"));
    assert_eq!(read["photo"][0]["contentType"], "image/png");
    // The patient sees all of its own record.
    let me = caller(&inst, &s, &["--name", "me", "--role", "patient", "--patient", &format!("Patient/{pid}"), "--scopes", "patient/*.rs"]);
    assert_eq!(get(&s, &me, &format!("Observation/{hiv}")).0, 200);
    assert!(get(&s, &me, &format!("Patient/{pid}")).1.get("photo").is_some());
    // Unknown grants are refused at registration.
    let out =
        inst.cli(&["clients", "create", "--name", "x", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.rs", "--sensitive", "EVERYTHING"]);
    assert!(!out.status.success());
}

#[test]
fn facility_work_lists_are_the_one_cross_patient_search() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let rs_b = facility(&inst, &s, "rs-b");
    let visit = |c: &Caller, pid: &str, org: &str, start: &str| {
        create(
            &s,
            c,
            json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": format!("Organization/{org}")},
            "period": {"start": start, "end": start.replace("T0", "T1").replace("T10", "T11")}}),
        )
    };
    let p1 = create(&s, &rs_a, patient("3171054708900003", "Lestari"));
    let p2 = create(&s, &rs_a, patient("3273014708900007", "Wulandari"));
    let p3 = create(&s, &rs_b, patient("3374014708900001", "Rahayu"));
    let e1 = visit(&rs_a, &p1, "rs-a", "2026-11-30T08:00:00+07:00");
    let e2 = visit(&rs_a, &p2, "rs-a", "2026-11-29T10:00:00+07:00");
    let e3 = visit(&rs_b, &p3, "rs-b", "2026-11-30T09:00:00+07:00");
    let ids = |v: &Value| -> Vec<String> {
        let mut x: Vec<String> = v["entry"].as_array().map(|a| a.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect()).unwrap_or_default();
        x.sort();
        x
    };

    let (st, v) = get(&s, &rs_a, "Encounter?service-provider=Organization/rs-a&date=ge2026-11-29&date=le2026-11-30");
    assert_eq!(st, 200, "{v}");
    let mut want = vec![e1.clone(), e2.clone()];
    want.sort();
    assert_eq!(ids(&v), want, "both of A's visits, across two patients, and not B's");
    let (_, v) = get(&s, &rs_a, "Encounter?service-provider=rs-a&date=2026-11-30");
    assert_eq!(ids(&v), vec![e1.clone()], "one day");
    let (_, v) = get(&s, &rs_a, "Encounter?service-provider=Organization/rs-a&date=ge2026-11-30&date=le2026-11-30&status=planned");
    assert_eq!(v["total"], 0, "the rest of the query applies");
    let (_, v) = get(&s, &rs_b, "Encounter?service-provider=Organization/rs-b&date=2026-11-30");
    assert_eq!(ids(&v), vec![e3], "B's own list");
    // Only for one's own organization, only bounded, and no other cross-patient search.
    assert_denied(get(&s, &rs_a, "Encounter?service-provider=Organization/rs-b&date=2026-11-30"), "another facility's list", "Rahayu");
    assert_eq!(get(&s, &rs_a, "Encounter?service-provider=Organization/rs-a").0, 400, "unbounded");
    assert_eq!(get(&s, &rs_a, "Encounter?service-provider=Organization/rs-a&date=ge2025-01-01&date=le2026-12-31").0, 400, "too long");
    assert_eq!(get(&s, &rs_a, "Encounter?date=2026-11-30").0, 400, "no organization: across patients, refused");
    assert_eq!(get(&s, &rs_a, "Observation?code=http://loinc.org|94558-4").0, 400);
    let me = caller(&inst, &s, &["--name", "me", "--role", "patient", "--patient", &format!("Patient/{p1}"), "--scopes", "patient/*.rs"]);
    assert_eq!(get(&s, &me, "Encounter?service-provider=Organization/rs-a&date=2026-11-30").0, 403);

    // Incoming referrals: B's list of ServiceRequests naming it as performer.
    let sr = create(
        &s,
        &rs_a,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": format!("Patient/{p1}")}, "performer": [{"reference": "Organization/rs-b"}],
        "authoredOn": "2026-11-30T11:00:00+07:00", "identifier": [{"system": "https://fhir.kemkes.go.id/id/referral", "value": "RJK-0002"}]}),
    );
    let (st, v) = get(&s, &rs_b, "ServiceRequest?performer=Organization/rs-b&authored=2026-11-30");
    assert_eq!((st, ids(&v)), (200, vec![sr]), "{v}");
    // A visit moved to another facility leaves the old list.
    let (st, mut enc) = get(&s, &rs_a, &format!("Encounter/{e2}"));
    assert_eq!(st, 200);
    enc["serviceProvider"] = json!({"reference": "Organization/rs-c"});
    assert_eq!(call(&s, &rs_a, reqwest::Method::PUT, &format!("Encounter/{e2}"), Some(&enc), &[]).0, 200);
    let (_, v) = get(&s, &rs_a, "Encounter?service-provider=Organization/rs-a&date=2026-11-29");
    assert_eq!(v["total"], 0, "{v}");
}

/// A patient of RS A with one result, and puskesmas C in the patient's care (an Encounter
/// there, written by RS A). Returns (patient id, Observation id, Encounter id).
fn patient_in_care_of_c(s: &Server, rs_a: &Caller) -> (String, String, String) {
    let pid = create(s, rs_a, patient("3171054708900003", "Lestari"));
    let oid = create(s, rs_a, observation(&pid));
    let eid = create(
        s,
        rs_a,
        json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/pkm-c"},
        "period": {"start": "2026-11-30T08:00:00+07:00", "end": "2026-11-30T09:00:00+07:00"}}),
    );
    (pid, oid, eid)
}

#[test]
fn a_consent_deny_holds_however_the_organization_is_written_and_when_it_cannot_be_evaluated() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let pkm_c = facility(&inst, &s, "pkm-c");
    let (pid, oid, eid) = patient_in_care_of_c(&s, &rs_a);
    let me = caller(&inst, &s, &["--name", "me", "--role", "patient", "--patient", &format!("Patient/{pid}"), "--scopes", "patient/*.cruds"]);
    assert_eq!(get(&s, &pkm_c, &format!("Observation/{oid}")).0, 200, "care, no consent yet");
    let mut changed = observation(&pid);
    changed["id"] = json!(oid);
    for (form, reference) in [
        ("versioned", json!({"reference": "Organization/pkm-c/_history/1"})),
        ("absolute on this server", json!({"reference": s.url("Organization/pkm-c")})),
        ("absolute on another server", json!({"reference": "https://sisrute.example/fhir/Organization/pkm-c"})),
        ("an unresolved urn:uuid", json!({"reference": "urn:uuid:0b3a2e7a-4d7e-4e4e-9f0a-2a4f0c1e2b3c"})),
        ("an identifier", json!({"identifier": {"system": "https://sirs.kemkes.go.id", "value": "3171015"}})),
    ] {
        let (st, v) = call(
            &s,
            &rs_a,
            reqwest::Method::POST,
            "Consent",
            Some(&consent(
                &pid,
                json!({"type": "deny",
            "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": reference}]}),
            )),
            &[],
        );
        assert_eq!(st, 201, "{form}: {v}");
        let cid = v["id"].as_str().unwrap().to_string();
        for path in [format!("Observation/{oid}"), format!("Observation/{oid}/_history/1"), format!("Patient/{pid}")] {
            assert_denied(get(&s, &pkm_c, &path), &format!("{form}: {path}"), "Positive");
        }
        for path in [format!("Observation?patient={pid}"), format!("Patient/{pid}/Observation"), format!("Observation?_id={oid}&patient={pid}")] {
            let (st, v) = get(&s, &pkm_c, &path);
            assert_eq!((st, v["total"].as_u64()), (200, Some(0)), "{form}: {path}: {v}");
        }
        let (st, v) = get(&s, &pkm_c, &format!("Patient/{pid}/$everything"));
        assert!(st == 403 || !v.to_string().contains(&oid), "{form}: $everything: {st} {v}");
        let (st, v) = get(&s, &pkm_c, &format!("Observation/{oid}/_history"));
        assert!(st == 403 || !v.to_string().contains("Positive"), "{form}: history: {st} {v}");
        let (st, v) = get(&s, &pkm_c, "Encounter?service-provider=Organization/pkm-c&date=2026-11-30");
        assert!(st == 200 && !v.to_string().contains(&eid), "{form}: the work list: {st} {v}");
        assert_denied(call(&s, &pkm_c, reqwest::Method::PUT, &format!("Observation/{oid}"), Some(&changed), &[]), &format!("{form}: update"), "Positive");
        assert_denied(call(&s, &pkm_c, reqwest::Method::DELETE, &format!("Observation/{oid}"), None, &[]), &format!("{form}: delete"), "Positive");
        // RS A, named by none of these, is not affected by those it can evaluate.
        let certain = matches!(form, "versioned" | "absolute on this server");
        assert_eq!(get(&s, &rs_a, &format!("Observation/{oid}")).0 == 200, certain, "{form}: RS A");
        // The patient withdraws it (a deny nobody can evaluate denies RS A the Consent too).
        assert_eq!(call(&s, &me, reqwest::Method::DELETE, &format!("Consent/{cid}"), None, &[]).0, 204, "{form}");
        assert_eq!(get(&s, &pkm_c, &format!("Observation/{oid}")).0, 200, "{form}: the consent withdrawn");
    }
    assert_eq!(get(&s, &rs_a, &format!("Observation/{oid}")).1["meta"]["versionId"], "1", "nothing changed");
}

#[test]
fn a_purpose_of_use_is_honoured_only_when_registered_and_then_like_break_glass() {
    let inst = Instance::init();
    let s = inst.serve();
    let rs_a = facility(&inst, &s, "rs-a");
    let pkm_c = facility(&inst, &s, "pkm-c");
    let pkm_c_er =
        caller(&inst, &s, &["--name", "pkm-c ER", "--role", "facility-system", "--organization", "Organization/pkm-c", "--scopes", "system/*.cruds", "--purposes", "ETREAT"]);
    let (pid, oid, _) = patient_in_care_of_c(&s, &rs_a);
    // Nobody but in an emergency (a deny with a nested permit for purpose ETREAT).
    create(
        &s,
        &rs_a,
        consent(
            &pid,
            json!({"type": "deny", "class": [{"code": "Observation"}],
        "provision": [{"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}]}]}),
        ),
    );
    let path = format!("Observation/{oid}");
    assert_denied(get(&s, &pkm_c, &path), "treatment", "Positive");
    let etreat = ("X-Purpose-Of-Use", "ETREAT");
    let reason = ("X-Break-Glass-Reason", "patient brought in unconscious");
    // Stating the purpose is not enough: the client must be registered for it.
    let (st, v) = call(&s, &pkm_c, reqwest::Method::GET, &path, None, &[etreat, reason]);
    assert_eq!((st, v["resourceType"].as_str()), (403, Some("OperationOutcome")), "unregistered: {v}");
    let (st, _) = call(&s, &pkm_c, reqwest::Method::GET, &path, None, &[("X-Purpose-Of-Use", "HPAYMT"), reason]);
    assert_eq!(st, 403, "any other purpose, unregistered");
    // The attempts are audited and alerted, naming the client (never the patient).
    let officer = s.token_for(&inst.officer_id, &inst.officer_secret);
    let (st, ev) = s.get_as(&officer, &format!("AuditEvent?agent={}&subtype=purpose-refused", pkm_c.id));
    assert_eq!(st, 200, "{ev}");
    assert_eq!(ev["entry"].as_array().map_or(0, Vec::len), 2, "both refusals audited: {ev}");
    let al: serde_json::Value = s.http.get(format!("{}/admin/alerts", s.root)).bearer_auth(&officer).send().unwrap().json().unwrap();
    let refused = al["alerts"].as_array().unwrap().iter().filter(|a| a["kind"] == "purpose-refused" && a["client_id"] == pkm_c.id.as_str()).count();
    assert_eq!(refused, 2, "{al}");
    // Registered, it needs a reason...
    let (st, v) = call(&s, &pkm_c_er, reqwest::Method::GET, &path, None, &[etreat]);
    assert_eq!(st, 400, "registered without a reason: {v}");
    assert!(v["issue"][0]["diagnostics"].as_str().unwrap().contains("reason"), "{v}");
    assert_denied(get(&s, &pkm_c_er, &path), "the registered client, for treatment", "Positive");
    let (st, _) = call(&s, &pkm_c_er, reqwest::Method::GET, &path, None, &[("X-Purpose-Of-Use", "HPAYMT"), reason]);
    assert_eq!(st, 403, "a purpose it is not registered for");
    // ... and with one it is honoured, and alerted.
    let (st, v) = call(&s, &pkm_c_er, reqwest::Method::GET, &path, None, &[etreat, reason]);
    assert_eq!(st, 200, "{v}");
    let log = std::fs::read_to_string(inst.log_file()).unwrap_or_default();
    assert!(log.contains("purpose of use other than treatment granted"), "no alert logged");
    assert!(!log.contains(&pid) && !log.contains("Lestari"), "the alert names the patient");
    // A purpose opens nothing by itself: without a care relationship, still 403.
    let rs_e = caller(&inst, &s, &["--name", "rs-e", "--role", "facility-system", "--organization", "Organization/rs-e", "--scopes", "system/*.cruds", "--purposes", "ETREAT"]);
    assert_denied(call(&s, &rs_e, reqwest::Method::GET, &path, None, &[etreat, reason]), "no relationship", "Positive");
    // Registration refuses BTG as a purpose (break-glass is its own mechanism), and malformed codes.
    for bad in ["BTG", "E TREAT"] {
        let out = inst.cli(&["clients", "create", "--name", "x", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.rs", "--purposes", bad]);
        assert!(!out.status.success(), "{bad}");
    }
}
