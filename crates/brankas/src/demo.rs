//! `brankas demo`: the zero-setup first run. Seeds a fictional clinic and a few synthetic
//! patients seen there (fictional people with structurally valid NIKs), registers a client of
//! the clinic that can read and write (approved by a demo security officer, as the two-person
//! rule asks), prints on stdout a token and lines that run as pasted (a lookup, the patient's
//! whole record, a write), then serves.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use brankas_auth::{ClientSpec, Principal, Role};
use serde_json::json;

use crate::{Tls, default_key_file, init, open, serve};

/// The fictional clinic the demo patients were seen at.
const DEMO_ORG_ID: &str = "demo-puskesmas";

/// Fictional patients: name, NIK, birth date, gender, phone, city.
const PEOPLE: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("Siti Rahayu", "3171054708900003", "1990-08-07", "female", "+62 812 3456 7801", "Jakarta Pusat"),
    ("Budi Santoso", "3273011203850002", "1985-03-12", "male", "+62 813 2233 4455", "Bandung"),
    ("Ni Luh Putu Ayu", "5171026105920001", "1992-05-21", "female", "+62 817 9988 7766", "Denpasar"),
];

/// What the demo prints once it serves: lines that run as pasted into a POSIX shell (no
/// placeholder to fill in), the token first.
fn banner(base: &str, curl: &str, cid: &str, secret: &str, token: &str) -> String {
    let root = base.trim_end_matches("/fhir");
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    let lookup = format!("'{base}/Patient?identifier={}%7C3171054708900003'", brankas_fhir::NIK_SYSTEM);
    let observation = r#"'{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8310-5","display":"Body temperature"}]},"subject":{"reference":"Patient/'"$ID"'"},"effectiveDateTime":"2021-07-15T08:00:00+07:00","valueQuantity":{"value":37.2,"unit":"Cel","system":"http://unitsofmeasure.org","code":"Cel"}}'"#;
    [
        String::new(),
        format!("Brankas demo is running at {base} with {} synthetic patients.", PEOPLE.len()),
        format!("A client of the demo clinic that can read and write was registered: client_id={cid}"),
        "Paste these lines into a shell (the token is valid 5 minutes):".into(),
        String::new(),
        format!("TOKEN={token}"),
        "# Find a patient by her NIK:".into(),
        format!("{curl} {auth} {lookup}"),
        "# Her whole record:".into(),
        format!("ID=$({curl} {auth} {lookup} | grep -o '\"id\":\"[^\"]*\"' | head -1 | cut -d'\"' -f4)"),
        format!("{curl} {auth} \"{base}/Patient/$ID/\\$everything\""),
        "# Record a temperature for her:".into(),
        format!("{curl} {auth} -H 'Content-Type: application/fhir+json' -d {observation} {base}/Observation"),
        "# A new token when this one expires:".into(),
        format!("TOKEN=$({curl} -u '{cid}:{secret}' -d grant_type=client_credentials {root}/auth/token | grep -o '\"access_token\":\"[^\"]*\"' | cut -d'\"' -f4)"),
        String::new(),
        format!("Health: {curl} {root}/health    Stop: Ctrl-C"),
    ]
    .join("\n")
}

pub fn run(data_dir: &Path, key_file: Option<&Path>, listen: SocketAddr, insecure_http: bool) -> Result<()> {
    crate::sqlite_only("brankas demo")?;
    if !data_dir.join(crate::DB_FILE).exists() {
        init(data_dir, key_file)?;
        let o = open(data_dir, key_file)?;
        // Seeded on behalf of the demo clinic: the clinic's client is in its patients' care.
        let who = Principal::local_operator_for(Some(format!("Organization/{DEMO_ORG_ID}")));
        // The operator's own seeding: nothing of it is served to anyone.
        drop(o.engine.update(
            &who,
            "Organization",
            DEMO_ORG_ID,
            json!({
                "resourceType": "Organization", "id": DEMO_ORG_ID, "active": true,
                "name": "Puskesmas Demo (fictional)",
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}]
            }),
            None,
        )?);
        for (name, nik, birth, gender, phone, city) in PEOPLE {
            let (given, family) = name.rsplit_once(' ').unwrap_or((name, ""));
            let p = o.engine.create(
                &who,
                "Patient",
                json!({
                    "resourceType": "Patient",
                    "identifier": [{"system": brankas_fhir::NIK_SYSTEM, "value": nik}],
                    "name": [{"use": "official", "text": name, "family": family, "given": given.split(' ').collect::<Vec<_>>()}],
                    "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
                    "gender": gender, "birthDate": birth,
                    "address": [{"use": "home", "city": city, "country": "ID"}]
                }),
                None,
            )?;
            let pid = p.unreleased().stored.resource["id"].as_str().unwrap_or_default().to_string();
            let enc = o.engine.create(
                &who,
                "Encounter",
                json!({
                    "resourceType": "Encounter", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": format!("Patient/{pid}")},
                    "serviceProvider": {"reference": format!("Organization/{DEMO_ORG_ID}")},
                    "period": {"start": "2021-07-14T09:00:00+07:00", "end": "2021-07-14T09:30:00+07:00"},
                    "reasonCode": [{"text": "Demam dan batuk sejak tiga hari"}]
                }),
                None,
            )?;
            let eid = enc.unreleased().stored.resource["id"].as_str().unwrap_or_default().to_string();
            drop(o.engine.create(&who, "Observation", json!({
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "94558-4", "display": "SARS-CoV-2 (COVID-19) Ag [Presence] in Respiratory specimen by Rapid immunoassay"}]},
                "subject": {"reference": format!("Patient/{pid}")},
                "encounter": {"reference": format!("Encounter/{eid}")},
                "effectiveDateTime": "2021-07-14T09:10:00+07:00",
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}]}
            }), None)?);
        }
    }
    let o = open(data_dir, key_file)?;
    // Two people register a client that reads patient data: the demo plays both, a
    // security officer (the first, so active at once) approving the operator's request.
    let op = brankas_auth::Principal::local_operator();
    let officer = ClientSpec { name: "demo security officer".into(), role: Some(Role::SecurityOfficer), scopes: "system/AuditEvent.rs".into(), ..Default::default() };
    let (officer, _) = o.auth.register(&officer, &op)?;
    let (demo, _) = o.auth.register(
        &ClientSpec {
            name: "demo clinic".into(),
            role: Some(Role::FacilitySystem),
            scopes: "system/*.cruds".into(),
            organization: Some(format!("Organization/{DEMO_ORG_ID}")),
            ..Default::default()
        },
        &op,
    )?;
    o.auth.approve(&demo.client_id, &o.auth.authenticate(&officer.client_id, &officer.client_secret)?)?;
    let token = o.auth.issue(&demo.client_id, &demo.client_secret, None)?;
    drop(o);
    let kf = key_file.map(Path::to_path_buf).unwrap_or_else(|| default_key_file(data_dir));
    let cacert = data_dir.join("tls").join("cert.pem");
    let curl = if insecure_http { "curl -s".to_string() } else { format!("curl -s --cacert {}", cacert.display()) };
    let tls = if insecure_http { Tls::None } else { Tls::SelfSigned };
    let access = token.access_token.clone();
    let (cid, secret) = (demo.client_id.clone(), demo.client_secret.clone());
    serve(
        data_dir,
        Some(&kf),
        listen,
        tls,
        None,
        None,
        None,
        Some(Box::new(move |base: &str| {
            println!("{}", banner(base, &curl, &cid, &secret, &access));
        })),
        brankas_engine::AttachmentLimits::default(),
        None,
        crate::ConnArgs::default(),
    )
}
