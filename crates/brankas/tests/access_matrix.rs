//! The authorisation matrix, generated: every caller (role × scopes × facility × grants) ×
//! every target (two patients, one of them with a consent, each with a Patient, a plain and
//! an HIV-labelled Observation and an Encounter; and a directory Organization) × every
//! interaction (read, search, update, create), each sent through the HTTP API and compared
//! with an oracle written here from the rules as documented, independently of the server's
//! code. The number of cases is printed.

mod common;

use common::{Instance, Server};
use serde_json::{Value, json};

const NIK_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Facility,
    Clinician,
    Patient,
    Admin,
    Officer,
    Researcher,
}

struct Caller {
    name: &'static str,
    role: Role,
    /// Organization id (facility, clinician).
    org: Option<&'static str>,
    /// The patient key ("P" or "Q") of a patient client.
    own: Option<&'static str>,
    scopes: &'static str,
    hiv: bool,
    token: String,
}

impl Caller {
    /// Whether one of the caller's scopes grants `perm` on `rtype` (no query restrictions here).
    fn scope(&self, rtype: &str, perm: char) -> bool {
        self.scopes.split_whitespace().any(|s| {
            let Some((_, rest)) = s.split_once('/') else { return false };
            let Some((t, p)) = rest.split_once('.') else { return false };
            (t == "*" || t == rtype) && p.contains(perm)
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    /// Served (read 200; the record appears in the search; the write succeeds).
    Ok,
    /// The request is refused as a whole (403).
    Denied,
    /// The search answers 200 without the record (consent or label hide it).
    Hidden,
}

struct Target {
    rtype: &'static str,
    id: String,
    /// "P", "Q", or None for the directory.
    patient: Option<&'static str>,
    hiv: bool,
    body: Value,
}

/// The rules, as the README states them.
fn oracle(c: &Caller, t: &Target, interaction: &str) -> Want {
    let perm = match interaction {
        "read" => 'r',
        "search" => 's',
        "update" => 'u',
        _ => 'c',
    };
    let Some(p) = t.patient else {
        // The directory.
        let role_ok = match c.role {
            Role::Researcher | Role::Officer => false,
            Role::Admin | Role::Facility => true,
            Role::Clinician | Role::Patient => perm == 'r' || perm == 's',
        };
        return if role_ok && c.scope(t.rtype, perm) { Want::Ok } else { Want::Denied };
    };
    if !c.scope(t.rtype, perm) {
        return Want::Denied;
    }
    match c.role {
        Role::Admin | Role::Officer | Role::Researcher => Want::Denied,
        Role::Patient => {
            if c.own == Some(p) {
                Want::Ok
            } else {
                Want::Denied
            }
        }
        Role::Facility | Role::Clinician => {
            if perm == 'c' {
                // Any facility may add to a patient's record; it reaches what it wrote and
                // nothing more (checked after the creates, below).
                return Want::Ok;
            }
            // Both patients were registered by rs-home; rs-other has no relationship.
            if c.org != Some("rs-home") {
                return Want::Denied;
            }
            // Q's consent denies rs-home its Observations; HIV needs the grant.
            let consent_hides = p == "Q" && t.rtype == "Observation";
            let label_hides = t.hiv && !c.hiv;
            if consent_hides || label_hides {
                return if perm == 's' { Want::Hidden } else { Want::Denied };
            }
            Want::Ok
        }
    }
}

fn send(s: &Server, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut r = s.http.request(method, s.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.header("content-type", "application/fhir+json").body(serde_json::to_vec(b).unwrap());
    }
    let r = r.send().unwrap();
    let st = r.status().as_u16();
    (st, serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null))
}

#[test]
fn generated_authorisation_matrix() {
    let inst = Instance::init();
    let s = inst.serve();
    let admin_token = s.token_for(&inst.admin_id, &inst.admin_secret);
    let mk = |name: &'static str, role: Role, org: Option<&'static str>, own: Option<&'static str>, scopes: &'static str, hiv: bool, args: &[&str]| {
        let c = inst.register(args);
        Caller { name, role, org, own, scopes, hiv, token: s.token_for(c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap()) }
    };

    // The data, written by rs-home's full client (with the HIV grant, to read back its own writes).
    let writer = mk(
        "writer",
        Role::Facility,
        Some("rs-home"),
        None,
        "system/*.cruds",
        true,
        &["--name", "writer", "--role", "facility-system", "--organization", "Organization/rs-home", "--scopes", "system/*.cruds", "--sensitive", "HIV"],
    );
    let create = |body: Value| -> (String, Value) {
        let (st, v) = send(&s, &writer.token, reqwest::Method::POST, body["resourceType"].as_str().unwrap(), Some(&body));
        assert_eq!(st, 201, "{v}");
        (v["id"].as_str().unwrap().to_string(), v)
    };
    let mut targets = Vec::new();
    let mut pids = std::collections::HashMap::new();
    for (key, nik) in [("P", "3171054708900003"), ("Q", "3273014708900007")] {
        let (pid, pv) = create(json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
            "name": [{"family": format!("Pasien {key}")}], "gender": "female", "birthDate": "1990-08-07"}));
        pids.insert(key, pid.clone());
        targets.push(Target { rtype: "Patient", id: pid.clone(), patient: Some(key), hiv: false, body: pv });
        let obs = |hiv: bool| {
            let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "antigen"},
                "subject": {"reference": format!("Patient/{pid}")}, "valueCodeableConcept": {"text": "negative"}});
            if hiv {
                o["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]});
            }
            o
        };
        let (id, v) = create(obs(false));
        targets.push(Target { rtype: "Observation", id, patient: Some(key), hiv: false, body: v });
        let (id, v) = create(obs(true));
        targets.push(Target { rtype: "Observation", id, patient: Some(key), hiv: true, body: v });
        let (id, v) = create(json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": "Organization/rs-home"}}));
        targets.push(Target { rtype: "Encounter", id, patient: Some(key), hiv: false, body: v });
    }
    create(json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", pids["Q"])},
        "provision": {"type": "deny", "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "Organization/rs-home"}}],
                      "class": [{"code": "Observation"}]}}));
    let (st, org) = send(&s, &admin_token, reqwest::Method::PUT, "Organization/org-x", Some(&json!({"resourceType": "Organization", "id": "org-x", "name": "Dinas Kesehatan"})));
    assert_eq!(st, 201, "{org}");
    targets.push(Target { rtype: "Organization", id: "org-x".into(), patient: None, hiv: false, body: org });

    let p_ref = format!("Patient/{}", pids["P"]);
    let q_ref = format!("Patient/{}", pids["Q"]);
    let callers = vec![
        mk(
            "facility home, full",
            Role::Facility,
            Some("rs-home"),
            None,
            "system/*.cruds",
            false,
            &["--name", "a", "--role", "facility-system", "--organization", "Organization/rs-home", "--scopes", "system/*.cruds"],
        ),
        mk(
            "facility home, read-only",
            Role::Facility,
            Some("rs-home"),
            None,
            "system/*.rs",
            false,
            &["--name", "b", "--role", "facility-system", "--organization", "Organization/rs-home", "--scopes", "system/*.rs"],
        ),
        mk(
            "facility home, Patient and Observation only",
            Role::Facility,
            Some("rs-home"),
            None,
            "system/Patient.rs system/Observation.rs",
            false,
            &["--name", "c", "--role", "facility-system", "--organization", "Organization/rs-home", "--scopes", "system/Patient.rs system/Observation.rs"],
        ),
        mk(
            "facility home, HIV grant",
            Role::Facility,
            Some("rs-home"),
            None,
            "system/*.cruds",
            true,
            &["--name", "d", "--role", "facility-system", "--organization", "Organization/rs-home", "--scopes", "system/*.cruds", "--sensitive", "HIV"],
        ),
        mk(
            "facility other",
            Role::Facility,
            Some("rs-other"),
            None,
            "system/*.cruds",
            true,
            &["--name", "e", "--role", "facility-system", "--organization", "Organization/rs-other", "--scopes", "system/*.cruds", "--sensitive", "HIV"],
        ),
        mk(
            "clinician home",
            Role::Clinician,
            Some("rs-home"),
            None,
            "user/*.cruds",
            false,
            &["--name", "f", "--role", "clinician", "--organization", "Organization/rs-home", "--practitioner", "Practitioner/dr-1", "--scopes", "user/*.cruds"],
        ),
        mk(
            "clinician other",
            Role::Clinician,
            Some("rs-other"),
            None,
            "user/*.cruds",
            false,
            &["--name", "g", "--role", "clinician", "--organization", "Organization/rs-other", "--practitioner", "Practitioner/dr-2", "--scopes", "user/*.cruds"],
        ),
        mk("patient P", Role::Patient, None, Some("P"), "patient/*.rs", false, &["--name", "h", "--role", "patient", "--patient", &p_ref, "--scopes", "patient/*.rs"]),
        mk("patient Q", Role::Patient, None, Some("Q"), "patient/*.rs", false, &["--name", "i", "--role", "patient", "--patient", &q_ref, "--scopes", "patient/*.rs"]),
        Caller {
            name: "admin",
            role: Role::Admin,
            org: None,
            own: None,
            scopes: "system/Organization.cruds system/Practitioner.cruds system/PractitionerRole.cruds system/Location.cruds system/HealthcareService.cruds system/Endpoint.cruds",
            hiv: false,
            token: admin_token.clone(),
        },
        mk("security officer", Role::Officer, None, None, "system/AuditEvent.rs", false, &["--name", "j", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]),
        mk("researcher", Role::Researcher, None, None, "", false, &["--name", "k", "--role", "researcher"]),
    ];

    let mut cases = 0;
    let mut failures = Vec::new();
    let mut check = |what: String, want: Want, got: Want, status: u16| {
        cases += 1;
        if want != got {
            failures.push(format!("{what}: expected {want:?}, got {got:?} (HTTP {status})"));
        }
    };
    // Reads, searches and updates first (updates rewrite the same content), creates last.
    for c in &callers {
        for t in &targets {
            let what = |i: &str| format!("{} / {} {} of {} / {i}", c.name, t.rtype, if t.hiv { "(HIV)" } else { "" }, t.patient.unwrap_or("directory"));
            let (st, _) = send(&s, &c.token, reqwest::Method::GET, &format!("{}/{}", t.rtype, t.id), None);
            let got = match st {
                200 => Want::Ok,
                403 => Want::Denied,
                _ => panic!("{}: unexpected status {st}", what("read")),
            };
            check(what("read"), oracle(c, t, "read"), got, st);

            let q = match (t.rtype, t.patient) {
                ("Patient", _) | (_, None) => format!("{}?_id={}", t.rtype, t.id),
                (_, Some(p)) => format!("{}?patient={}", t.rtype, pids[p]),
            };
            let (st, v) = send(&s, &c.token, reqwest::Method::GET, &q, None);
            let got = match st {
                200 if v.to_string().contains(&t.id) => Want::Ok,
                200 => Want::Hidden,
                403 => Want::Denied,
                _ => panic!("{}: unexpected status {st} {v}", what("search")),
            };
            check(what("search"), oracle(c, t, "search"), got, st);

            let mut body = t.body.clone();
            if let Some(m) = body.as_object_mut() {
                m.remove("meta");
            }
            if t.hiv {
                body["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]});
            }
            let (st, v) = send(&s, &c.token, reqwest::Method::PUT, &format!("{}/{}", t.rtype, t.id), Some(&body));
            let got = match st {
                200 => Want::Ok,
                403 => Want::Denied,
                _ => panic!("{}: unexpected status {st} {v}", what("update")),
            };
            check(what("update"), oracle(c, t, "update"), got, st);
        }
    }
    for c in &callers {
        for p in ["P", "Q"] {
            let t = Target { rtype: "Observation", id: String::new(), patient: Some(p), hiv: false, body: Value::Null };
            let body = json!({"resourceType": "Observation", "status": "final", "code": {"text": "new"}, "subject": {"reference": format!("Patient/{}", pids[p])}});
            let (st, v) = send(&s, &c.token, reqwest::Method::POST, "Observation", Some(&body));
            let got = match st {
                201 => Want::Ok,
                403 => Want::Denied,
                _ => panic!("{} / create Observation of {p}: unexpected status {st} {v}", c.name),
            };
            check(format!("{} / create Observation of {p}", c.name), oracle(c, &t, "create"), got, st);
        }
    }
    // Writing for a patient opened nothing: every record of the patients is still denied
    // to the facility outside their care, as before its creates.
    for c in callers.iter().filter(|c| c.org == Some("rs-other")) {
        for t in targets.iter().filter(|t| t.patient.is_some()) {
            let (st, _) = send(&s, &c.token, reqwest::Method::GET, &format!("{}/{}", t.rtype, t.id), None);
            let got = if st == 200 {
                Want::Ok
            } else if st == 403 {
                Want::Denied
            } else {
                panic!("{}: read after create: {st}", c.name)
            };
            check(format!("{} / {} of {} / read after its own create", c.name, t.rtype, t.patient.unwrap()), Want::Denied, got, st);
        }
    }
    eprintln!("authorisation matrix: {cases} cases ({} callers × {} targets × read, search, update; plus creates)", callers.len(), targets.len());
    assert!(cases >= 300, "the generator lost cases: {cases}");
    assert!(failures.is_empty(), "{} of {cases} cases disagree with the rules:\n{}", failures.len(), failures.join("\n"));
}
