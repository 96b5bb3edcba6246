//! Black-box FHIR semantics of the `brankas` binary over HTTP: round-trips of the official R4
//! examples and of Synthea transactions, offline import, versioning, conditional create,
//! transactions and batches, identity and clinical search with paging, Prefer handling,
//! decimal fidelity, NIK validation and the discovery documents.
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Instance, Server, without_server_meta};
use reqwest::blocking::Response;
use serde_json::{Value, json};

const NIK_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik";
const NIK_IBU_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik-ibu";
/// A valid NIK of a woman born 1990-08-05 in Jakarta (day 05 + 40 = 45).
const NIK_SITI: &str = "3174054508900003";

/// Status, headers and body (raw text and parsed JSON, `Null` when empty).
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

fn reply(r: Response) -> Reply {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap();
    let json = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}")) };
    Reply { status, headers, text, json }
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    /// Asserts the body is an OperationOutcome with at least one error issue.
    fn assert_outcome(&self) {
        assert_eq!(self.json["resourceType"], "OperationOutcome", "{}", self.text);
        let issues = self.json["issue"].as_array().expect("issue array");
        assert!(issues.iter().any(|i| i["severity"] == "error" || i["severity"] == "fatal"), "{}", self.text);
    }
}

fn get(s: &Server, path: &str) -> Reply {
    reply(s.get(path))
}

fn with_headers(s: &Server, method: reqwest::Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Reply {
    let mut rb = s.http.request(method, s.url(path)).bearer_auth(&s.token);
    if let Some(b) = body {
        rb = rb.header("content-type", "application/fhir+json").body(serde_json::to_vec(b).unwrap());
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    reply(rb.send().unwrap())
}

/// `POST [base]` with a transaction or batch Bundle.
fn post_bundle(s: &Server, bundle: &Value) -> Reply {
    reply(s.http.post(&s.base).bearer_auth(&s.token).header("content-type", "application/fhir+json").body(serde_json::to_vec(bundle).unwrap()).send().unwrap())
}

/// Follows an absolute URL the server handed out (paging links, Locations).
fn get_abs(s: &Server, url: &str) -> Reply {
    reply(s.http.get(url).bearer_auth(&s.token).send().unwrap())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    v.sort();
    v
}

fn entries(bundle: &Value) -> &Vec<Value> {
    bundle["entry"].as_array().expect("Bundle.entry")
}

/// The ids of a Bundle's resources (a searchset's matches, not its outcome entry).
fn ids_of(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|es| es.iter().filter(|e| e["search"]["mode"] != "outcome").map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn link(bundle: &Value, rel: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == rel).map(|l| l["url"].as_str().unwrap().to_string())
}

/// `Type/id` (and the version) from a `Location` such as `.../fhir/Type/id/_history/1` or
/// `Type/id/_history/1`.
fn parse_location(loc: &str) -> (String, String, String) {
    let parts: Vec<&str> = loc.trim_end_matches('/').rsplitn(4, '/').collect();
    assert_eq!(parts.len(), 4, "location {loc}");
    assert_eq!(parts[1], "_history", "location {loc}");
    let t = parts[3].rsplit('/').next().unwrap();
    (t.to_string(), parts[2].to_string(), parts[0].to_string())
}

fn patient_siti() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NIK_SYSTEM, "value": NIK_SITI}],
        "name": [{"family": "Aminah", "given": ["Siti"]}],
        "telecom": [{"system": "phone", "value": "+62 812-3456-7890", "use": "mobile"}],
        "gender": "female",
        "birthDate": "1990-08-05"
    })
}

// ------------------------------------------------------------------------------------------
// 1. Every official R4 example round-trips through PUT (create-on-update) and GET.
// ------------------------------------------------------------------------------------------

#[test]
fn r4_examples_round_trip_exactly() {
    let dir = common::corpus().join("fhir-r4-examples");
    let files = json_files(&dir);
    assert_eq!(files.len(), 684, "expected the 684 official examples in {}", dir.display());
    // The comparisons below are exact for numbers too (serde_json's arbitrary_precision keeps
    // their text), so a decimal re-formatted by the server would be caught.
    assert_ne!(serde_json::from_str::<Value>("1.50").unwrap(), serde_json::from_str::<Value>("1.5").unwrap());
    let inst = Instance::init();
    let s = inst.serve();
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut consent_hidden = 0;
    let mut audit_events = 0;
    let mut invalid_examples = 0;
    let mut binaries = Vec::new();
    let mut no_patient = Vec::new();
    let compartment = patient_compartment_types();
    // Patients first: a clinical resource must name a patient that exists (422 otherwise).
    let mut files = files.clone();
    files.sort_by_key(|f| read_json(f)["resourceType"] != "Patient");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let sent = read_json(f);
        let t = sent["resourceType"].as_str().unwrap();
        let id = sent["id"].as_str().unwrap();
        if t == "Binary" {
            // A Binary belongs to a patient, named by its securityContext, which must exist
            // first: the Binary examples go last (below).
            binaries.push((name, sent));
            continue;
        }
        let put = reply(s.put(&format!("{t}/{id}"), &sent));
        if t == "AuditEvent" {
            // AuditEvents come from the server's own audit log; clients cannot write them.
            if put.status != 405 {
                failures.push(format!("{name}: PUT of an AuditEvent answered {}, not 405", put.status));
            }
            audit_events += 1;
            continue;
        }
        if put.status == 422 && compartment.contains(t) && put.text.contains("patient") {
            // Examples naming a patient the corpus does not have (or none at all): a clinical
            // record must belong to an existing patient.
            no_patient.push(name);
            continue;
        }
        if name == "Questionnaire-qs1.json" && put.status == 422 && put.text.contains("linkId is required") {
            // The one official example that breaks its own definition: nested items without
            // the linkId that Questionnaire.item.linkId (1..1) requires.
            invalid_examples += 1;
            continue;
        }
        if put.status != 201 {
            failures.push(format!("{name}: PUT {} {}", put.status, put.text));
            continue;
        }
        let (lt, lid, lv) = parse_location(put.header("location").expect("Location on create"));
        assert_eq!((lt.as_str(), lid.as_str(), lv.as_str()), (t, id, "1"), "{name}");
        let mut got = get(&s, &format!("{t}/{id}"));
        if got.status == 403 && got.text.contains("consent") {
            // The examples include privacy Consents of their patients, and they are enforced:
            // the records they hide are read back under break-glass, which overrides them.
            consent_hidden += 1;
            got = with_headers(&s, reqwest::Method::GET, &format!("{t}/{id}"), None, &[("X-Purpose-Of-Use", "BTG"), ("X-Break-Glass-Reason", "round-trip test")]);
        }
        if got.status != 200 {
            failures.push(format!("{name}: GET {} {}", got.status, got.text));
            continue;
        }
        assert_eq!(got.json["meta"]["versionId"], "1", "{name}");
        assert!(got.json["meta"]["lastUpdated"].is_string(), "{name}");
        if without_server_meta(got.json.clone()) != without_server_meta(sent.clone()) {
            failures.push(format!("{name}: read back differs:\n sent {}\n got  {}", sent, got.text));
        }
        // The PUT response body is the stored resource too.
        if without_server_meta(put.json) != without_server_meta(sent) {
            failures.push(format!("{name}: PUT response body differs from what was sent"));
        }
    }
    assert_eq!(binaries.len(), 2, "the two Binary examples");
    for (name, sent) in &binaries {
        let id = sent["id"].as_str().unwrap();
        let put = reply(s.put(&format!("Binary/{id}"), sent));
        let Some(context) = sent["securityContext"]["reference"].as_str() else {
            // Binary-f006 names no patient: refused, as every Binary must belong to one.
            assert_eq!(put.status, 422, "{name}: {}", put.text);
            put.assert_outcome();
            continue;
        };
        assert_eq!(put.status, 201, "{name}: {}", put.text);
        // Its securityContext (DocumentReference/example) is resolved to that document's patient.
        let doc = get(&s, context);
        let patient = doc.json["subject"]["reference"].as_str().unwrap().to_string();
        let got = with_headers(&s, reqwest::Method::GET, &format!("Binary/{id}"), None, &[("accept", "application/fhir+json")]);
        assert_eq!(got.status, 200, "{name}: {}", got.text);
        assert_eq!(got.json["securityContext"]["reference"], patient.as_str(), "{name}");
        assert_eq!(got.json["contentType"], sent["contentType"], "{name}");
        let bytes = |v: &Value| B64.decode(v.as_str().unwrap().split_ascii_whitespace().collect::<String>()).unwrap();
        assert_eq!(bytes(&got.json["data"]), bytes(&sent["data"]), "{name}: the content reads back exactly");
    }
    eprintln!("r4 examples: {} PUT+GET in {:.1?} ({consent_hidden} hidden by the examples' own Consents)", files.len(), start.elapsed());
    eprintln!("r4 examples refused for naming no existing patient: {} ({})", no_patient.len(), no_patient.join(", "));
    // 117 of the examples name a patient the corpus lacks (Claim-*, Coverage-* name
    // Patient/1...) or none at all (Group-herd1, MeasureReport-hiv-indicators...): refused,
    // with the reason, as every record of a Patient-compartment type must belong to one.
    assert_eq!(no_patient.len(), 117, "a clinical resource must name an existing patient: {}", no_patient.join(", "));
    assert_eq!(audit_events, 9, "the nine AuditEvent examples are refused");
    assert_eq!(invalid_examples, 1, "Questionnaire-qs1 is refused for what it lacks");
    assert!(consent_hidden > 0, "the examples' deny Consents (e.g. consent-example-notThis) hid nothing: consent is not enforced");
    assert!(failures.is_empty(), "{} of {} examples failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

// ------------------------------------------------------------------------------------------
// 2. Synthea transaction Bundles over HTTP.
// ------------------------------------------------------------------------------------------

/// Resource types of the official Patient CompartmentDefinition that have at least one
/// membership parameter (read from the corpus, not from the server).
fn patient_compartment_types() -> BTreeSet<String> {
    let def = read_json(&common::corpus().join("fhir-r4-definitions/compartmentdefinition-patient.json"));
    def["resource"].as_array().unwrap().iter().filter(|r| r["param"].as_array().is_some_and(|p| !p.is_empty())).map(|r| r["code"].as_str().unwrap().to_string()).collect()
}

/// Replaces every `reference` string found in `map` (fullUrl → `Type/id`).
fn rewrite_refs(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference"
                    && let Some(to) = x.as_str().and_then(|r| map.get(r))
                {
                    *x = Value::String(to.clone());
                    continue;
                }
                rewrite_refs(x, map);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, map)),
        _ => {}
    }
}

/// The exact text of every `valueQuantity.value` in a raw JSON document, in order.
fn quantity_value_texts(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(i) = rest.find("\"valueQuantity\"") {
        rest = &rest[i + 15..];
        let Some(j) = rest.find("\"value\"") else { break };
        let after = rest[j + 7..].trim_start().trim_start_matches(':').trim_start();
        let end = after.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(after.len());
        out.push(after[..end].to_string());
    }
    out
}

/// A posted transaction: the request Bundle and, per entry, the `Type/id` it became.
struct Posted {
    name: String,
    raw: String,
    bundle: Value,
    created: Vec<(String, String)>,
}

fn post_transaction(s: &Server, path: &Path) -> Posted {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let raw = std::fs::read_to_string(path).unwrap();
    let bundle: Value = serde_json::from_str(&raw).unwrap();
    let r = reply(s.http.post(&s.base).bearer_auth(&s.token).header("content-type", "application/fhir+json").body(raw.clone()).send().unwrap());
    assert_eq!(r.status, 200, "{name}: {}", &r.text[..r.text.len().min(2000)]);
    assert_eq!(r.json["resourceType"], "Bundle", "{name}");
    assert_eq!(r.json["type"], "transaction-response", "{name}");
    let req = entries(&bundle);
    let resp = entries(&r.json);
    assert_eq!(resp.len(), req.len(), "{name}: one response entry per request entry");
    let mut created = Vec::with_capacity(req.len());
    for (i, (q, a)) in req.iter().zip(resp).enumerate() {
        let status = a["response"]["status"].as_str().unwrap_or_default();
        assert!(status.starts_with("201"), "{name} entry {i}: status {status}");
        let loc = a["response"]["location"].as_str().unwrap_or_else(|| panic!("{name} entry {i}: no location"));
        let (t, id, v) = parse_location(loc);
        assert_eq!(t, q["resource"]["resourceType"].as_str().unwrap(), "{name} entry {i}");
        assert_eq!(v, "1", "{name} entry {i}");
        assert_eq!(a["response"]["etag"], "W/\"1\"", "{name} entry {i}");
        // POST: the server assigns a new id, never the client's.
        assert_ne!(id, q["resource"]["id"].as_str().unwrap_or_default(), "{name} entry {i}");
        created.push((t, id));
    }
    Posted { name, raw, bundle, created }
}

/// Checks one posted Synthea bundle in depth: every resource reads back as sent (with its new
/// id and rewritten references, decimals as written), `$everything` returns exactly the
/// compartment, and compartment and `patient=` searches agree.
fn verify_posted(s: &Server, p: &Posted, compartment: &BTreeSet<String>) {
    let name = &p.name;
    let req = entries(&p.bundle);
    let map: HashMap<String, String> = req.iter().zip(&p.created).map(|(e, (t, id))| (e["fullUrl"].as_str().unwrap().to_string(), format!("{t}/{id}"))).collect();
    let pi = req.iter().position(|e| e["resource"]["resourceType"] == "Patient").expect("a Patient entry");
    let pid = p.created[pi].1.clone();
    let patient_ref = format!("Patient/{pid}");
    let mut raw_values = Vec::new();
    for (e, (t, id)) in req.iter().zip(&p.created) {
        // Read back through the Location (a vread of version 1) and the plain read.
        let v1 = get(s, &format!("{t}/{id}/_history/1"));
        assert_eq!(v1.status, 200, "{name}: vread {t}: {}", v1.text);
        let cur = get(s, &format!("{t}/{id}"));
        assert_eq!(cur.status, 200, "{name}: read {t}: {}", cur.text);
        assert_eq!(cur.header("etag"), Some("W/\"1\""));
        assert_eq!(v1.json, cur.json, "{name}: vread and read differ for {t}");
        let mut expected = e["resource"].clone();
        expected["id"] = json!(id);
        rewrite_refs(&mut expected, &map);
        assert_eq!(without_server_meta(cur.json.clone()), without_server_meta(expected), "{name}: {t} read back differs");
        let text = serde_json::to_string(&cur.json).unwrap();
        assert!(!text.contains("urn:uuid:"), "{name}: {t} still holds a urn:uuid reference");
        if t == "Observation" {
            assert_eq!(cur.json["subject"]["reference"], json!(patient_ref), "{name}: Observation.subject");
            raw_values.extend(quantity_value_texts(&cur.text));
        }
    }
    // Decimals keep their exact text: the raw response bodies carry the same
    // valueQuantity.value literals, in the same order, as the raw request file (only
    // Observations hold valueQuantity in Synthea).
    let sent_values = quantity_value_texts(&p.raw);
    assert!(!sent_values.is_empty(), "{name}: no Observation with valueQuantity");
    assert_eq!(raw_values, sent_values, "{name}: valueQuantity.value texts");

    // $everything: exactly the bundle's compartment resources, over its pages.
    let ev = get(s, &format!("Patient/{pid}/$everything?_count=100"));
    assert_eq!(ev.status, 200, "{name}: $everything {}", ev.text);
    assert_eq!(ev.json["type"], "searchset");
    let mut got: Vec<(String, String)> = Vec::new();
    let mut page = ev.json.clone();
    loop {
        assert!(entries(&page).len() <= 100, "{name}: a page of at most _count");
        got.extend(entries(&page).iter().map(|e| (e["resource"]["resourceType"].as_str().unwrap().to_string(), e["resource"]["id"].as_str().unwrap().to_string())));
        let Some(next) = link(&page, "next") else { break };
        let r = get_abs(s, &next);
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        page = r.json;
    }
    let got_set: BTreeSet<(String, String)> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "{name}: $everything has duplicates");
    let want: BTreeSet<(String, String)> = p.created.iter().filter(|(t, _)| compartment.contains(t)).cloned().collect();
    assert!(want.len() < p.created.len(), "{name}: the bundle should also hold directory resources");
    assert_eq!(got_set, want, "{name}: $everything");
    assert_eq!(ev.json["total"], json!(want.len()));
    assert_eq!(got[0].0, "Patient", "{name}: $everything starts with the Patient");

    // Compartment search and patient= search agree, on the most frequent Observation code.
    let mut by_code: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (e, (t, id)) in req.iter().zip(&p.created) {
        if t == "Observation" {
            for c in e["resource"]["code"]["coding"].as_array().unwrap() {
                let key = format!("{}|{}", c["system"].as_str().unwrap(), c["code"].as_str().unwrap());
                by_code.entry(key).or_default().insert(id.clone());
            }
        }
    }
    let (code, want_ids) = by_code.iter().max_by_key(|(k, v)| (v.len(), std::cmp::Reverse((*k).clone()))).unwrap();
    let enc = url_encode(code);
    let a = get(s, &format!("Patient/{pid}/Observation?code={enc}&_count=500"));
    let b = get(s, &format!("Observation?patient={pid}&code={enc}&_count=500"));
    let c = get(s, &format!("Observation?subject=Patient/{pid}&code={enc}&_count=500"));
    for r in [&a, &b, &c] {
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_eq!(r.json["total"], json!(want_ids.len()), "{name}: total for the code");
        let ids: BTreeSet<String> = ids_of(&r.json).into_iter().collect();
        assert_eq!(&ids, want_ids, "{name}: search by code");
    }
    // A code the patient does not have finds nothing (the search does filter).
    let none = get(s, &format!("Observation?patient={pid}&code=http://loinc.org|0000-0"));
    assert_eq!(none.status, 200);
    assert_eq!(none.json["total"], 0);
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn synthea_transactions_over_http() {
    let dir = common::corpus().join("synthea");
    let files = json_files(&dir);
    assert_eq!(files.len(), 202, "200 patient bundles and 2 support bundles in {}", dir.display());
    let compartment = patient_compartment_types();
    let inst = Instance::init();
    let s = inst.serve();
    let start = Instant::now();
    let mut posted = Vec::new();
    let mut total = 0usize;
    for f in &files {
        let p = post_transaction(&s, f);
        total += p.created.len();
        posted.push(p);
    }
    let post_time = start.elapsed();
    assert_eq!(total, 34_926, "resources created");
    let created: BTreeSet<&(String, String)> = posted.iter().flat_map(|p| &p.created).collect();
    assert_eq!(created.len(), total, "every created resource has its own id");
    // Verify a sample in depth: every 10th patient bundle, and every resource of both support bundles.
    let start_verify = Instant::now();
    let patients: Vec<&Posted> = posted.iter().filter(|p| !p.name.starts_with('_')).collect();
    let mut verified = 0;
    for p in patients.iter().step_by(10) {
        verify_posted(&s, p, &compartment);
        verified += 1;
    }
    for p in posted.iter().filter(|p| p.name.starts_with('_')) {
        for (e, (t, id)) in entries(&p.bundle).iter().zip(&p.created) {
            let r = get(&s, &format!("{t}/{id}"));
            assert_eq!(r.status, 200);
            let mut expected = e["resource"].clone();
            expected["id"] = json!(id);
            assert_eq!(without_server_meta(r.json), without_server_meta(expected), "{}: {t}", p.name);
        }
    }
    eprintln!("synthea: {} bundles / {total} resources POSTed in {:.1?}; {verified} bundles verified in depth in {:.1?}", files.len(), post_time, start_verify.elapsed());
}

// ------------------------------------------------------------------------------------------
// 3. Offline import (server stopped): Synthea bundles and NDJSON.
// ------------------------------------------------------------------------------------------

fn import_json(inst: &Instance, path: &Path) -> (i32, Value, String) {
    let start = Instant::now();
    let out = inst.cli(&["import", "--quiet", "--organization", "Organization/test-facility", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("import {}: {:.1?}", path.display(), start.elapsed());
    let line = stdout.lines().last().unwrap_or_else(|| panic!("import printed nothing; stderr: {stderr}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("import output is not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

fn identifier_search(s: &Server, system: &str, value: &str) -> Reply {
    get(s, &format!("Patient?identifier={}|{}", url_encode(system), url_encode(value)))
}

#[test]
fn offline_import_of_synthea_bundles() {
    let dir = common::corpus().join("synthea");
    let files = json_files(&dir);
    let bundles: Vec<Value> = files.iter().map(|f| read_json(f)).collect();
    let expected: usize = bundles.iter().map(|b| entries(b).len()).sum();
    let inst = Instance::init();
    let (code, stats, stderr) = import_json(&inst, &dir);
    assert_eq!(code, 0, "import failed: {stats} {stderr}");
    assert_eq!(stats["files"], json!(files.len()), "{stats}");
    assert_eq!(stats["units"], json!(files.len()), "{stats}");
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["resources"], json!(expected), "{stats}");

    let s = inst.serve();
    let compartment = patient_compartment_types();
    // Every 25th patient is found by an identifier (SSN) and by its Synthea MRN, and its
    // compartment is complete.
    let mut checked = 0;
    for (f, b) in files.iter().zip(&bundles).filter(|(f, _)| !f.file_name().unwrap().to_string_lossy().starts_with('_')).step_by(25) {
        let name = f.file_name().unwrap().to_string_lossy();
        let patient = &entries(b).iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap()["resource"];
        let ident = |sys: &str| patient["identifier"].as_array().unwrap().iter().find(|i| i["system"] == sys).unwrap()["value"].as_str().unwrap().to_string();
        let r = identifier_search(&s, "http://hl7.org/fhir/sid/us-ssn", &ident("http://hl7.org/fhir/sid/us-ssn"));
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_eq!(r.json["total"], 1, "{name}: SSN lookup");
        let found = &entries(&r.json)[0]["resource"];
        let pid = found["id"].as_str().unwrap();
        let mut expected_patient = patient.clone();
        expected_patient["id"] = json!(pid);
        assert_eq!(without_server_meta(found.clone()), without_server_meta(expected_patient), "{name}: imported Patient");
        let r2 = identifier_search(&s, "http://hospital.smarthealthit.org", &ident("http://hospital.smarthealthit.org"));
        assert_eq!(ids_of(&r2.json), [pid.to_string()], "{name}: MRN lookup");
        let ev = get(&s, &format!("Patient/{pid}/$everything"));
        assert_eq!(ev.status, 200);
        let want = entries(b).iter().filter(|e| compartment.contains(e["resource"]["resourceType"].as_str().unwrap())).count();
        assert_eq!(ev.json["total"], json!(want), "{name}: $everything after import");
        for e in entries(&ev.json) {
            let text = serde_json::to_string(&e["resource"]).unwrap();
            assert!(!text.contains("urn:uuid:"), "{name}: unresolved reference after import");
            if e["resource"]["resourceType"] == "Observation" {
                assert_eq!(e["resource"]["subject"]["reference"], json!(format!("Patient/{pid}")));
            }
        }
        checked += 1;
    }
    assert!(checked >= 8);
}

#[test]
fn offline_import_of_ndjson() {
    let inst = Instance::init();
    let tmp = tempfile::tempdir().unwrap();
    let pat = json!({"resourceType": "Patient", "id": "nd-pat-1", "identifier": [{"system": "urn:test:mrn", "value": "ND-1"}],
        "name": [{"family": "Santoso", "given": ["Budi"]}], "gender": "male", "birthDate": "1985-02-03"});
    let obs = r#"{"resourceType":"Observation","id":"nd-obs-1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"subject":{"reference":"Patient/nd-pat-1"},"effectiveDateTime":"2024-01-02T08:00:00+07:00","valueQuantity":{"value":7.20,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}}"#;
    let org = json!({"resourceType": "Organization", "id": "nd-org-1", "identifier": [{"system": "urn:test:org", "value": "RS-1"}], "name": "RS Harapan"});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9a3e6a4c-6f7e-4c1e-9a53-5a2f1f0f7b01", "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "ND-2"}], "gender": "female"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:9a3e6a4c-6f7e-4c1e-9a53-5a2f1f0f7b02", "resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": "urn:uuid:9a3e6a4c-6f7e-4c1e-9a53-5a2f1f0f7b01"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let lines = [serde_json::to_string(&pat).unwrap(), obs.to_string(), serde_json::to_string(&org).unwrap(), serde_json::to_string(&tx).unwrap()];
    let good = tmp.path().join("good.ndjson");
    std::fs::write(&good, lines.join("\n") + "\n\n").unwrap();
    let (code, stats, stderr) = import_json(&inst, &good);
    assert_eq!(code, 0, "{stats} {stderr}");
    assert_eq!(stats["units"], 4, "{stats}");
    assert_eq!(stats["resources"], 5, "{stats}");
    assert_eq!(stats["failed"], 0, "{stats}");

    // A file with one bad line: that line is refused (exit 2), the others still import.
    let bad = tmp.path().join("mixed.ndjson");
    let bad_lines = [
        json!({"resourceType": "Patient", "id": "nd-pat-3", "gender": "female"}).to_string(),
        json!({"resourceType": "Observation", "id": "nd-obs-bad", "status": "not-a-status", "code": {"text": "x"}}).to_string(),
        "{not json".to_string(),
        json!({"resourceType": "Patient", "id": "nd-pat-4", "gender": "male"}).to_string(),
    ];
    std::fs::write(&bad, bad_lines.join("\n")).unwrap();
    let (code, stats, stderr) = import_json(&inst, &bad);
    assert_eq!(code, 2, "{stats} {stderr}");
    assert_eq!(stats["units"], 4, "{stats}");
    assert_eq!(stats["failed"], 2, "{stats}");
    assert_eq!(stats["resources"], 2, "{stats}");
    assert!(stderr.contains("mixed.ndjson:2") && stderr.contains("mixed.ndjson:3"), "{stderr}");
    assert!(!stderr.contains("not-a-status"), "refusals must not echo content: {stderr}");

    // `-` reads NDJSON from standard input (a generator piped straight in).
    let mut child = std::process::Command::new(common::BIN)
        .args(["import", "--quiet", "--organization", "Organization/test-facility", "-", "--data-dir"])
        .arg(inst.data_dir())
        .arg("--key-file")
        .arg(inst.key_file())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", json!({"resourceType": "Patient", "id": "nd-pat-5", "gender": "female"})).unwrap();
        writeln!(stdin, "{}", json!({"resourceType": "Patient", "id": "nd-pat-6", "gender": "male"})).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stats: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!((stats["units"].as_u64(), stats["resources"].as_u64(), stats["failed"].as_u64()), (Some(2), Some(2), Some(0)), "{stats}");

    let s = inst.serve();
    assert_eq!(get(&s, "Patient/nd-pat-6").status, 200);
    let p = get(&s, "Patient/nd-pat-1");
    assert_eq!(p.status, 200);
    assert_eq!(without_server_meta(p.json), pat);
    let o = get(&s, "Observation/nd-obs-1");
    assert_eq!(o.status, 200);
    assert!(o.text.contains(r#""value":7.20"#), "decimal text kept through import: {}", o.text);
    let o_sent: Value = serde_json::from_str(obs).unwrap();
    assert_eq!(without_server_meta(o.json), o_sent);
    assert_eq!(ids_of(&get(&s, "Observation?patient=nd-pat-1").json), ["nd-obs-1"]);
    assert_eq!(get(&s, "Organization/nd-org-1").status, 200);
    assert_eq!(ids_of(&get(&s, "Organization?identifier=urn:test:org|RS-1").json), ["nd-org-1"]);
    // The transaction line: its Patient is found by identifier, its Observation points to it.
    let r = identifier_search(&s, "urn:test:mrn", "ND-2");
    assert_eq!(r.json["total"], 1, "{}", r.text);
    let pid = entries(&r.json)[0]["resource"]["id"].as_str().unwrap().to_string();
    let obs2 = get(&s, &format!("Observation?patient={pid}"));
    assert_eq!(obs2.json["total"], 1, "{}", obs2.text);
    assert_eq!(entries(&obs2.json)[0]["resource"]["subject"]["reference"], json!(format!("Patient/{pid}")));
    // From the mixed file: the good lines are there, the refused one is not.
    assert_eq!(get(&s, "Patient/nd-pat-3").status, 200);
    assert_eq!(get(&s, "Patient/nd-pat-4").status, 200);
    assert_eq!(get(&s, "Observation/nd-obs-bad").status, 404);
}

/// Import commits one group of lines while it prepares the next; a line must still see
/// every earlier group, whatever it reads: a record's current version (update, If-Match,
/// delete) or a query (conditional create, conditional reference).
#[test]
fn offline_import_lines_see_every_earlier_group() {
    let inst = Instance::init();
    let tmp = tempfile::tempdir().unwrap();
    let patient = |i: usize, gender: &str| {
        json!({"resourceType": "Patient", "id": format!("pg-{i}"), "identifier": [{"system": "urn:test:mrn", "value": format!("PG-{i}")}], "gender": gender}).to_string()
    };
    let tx = |entry: Value| json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]}).to_string();
    // Groups hold 512 lines: lines 1-599 are new patients, so the lines after them fall in
    // the second group and name patients of the first; line 1101 (third group) names a
    // record the second group wrote.
    let mut lines: Vec<String> = (1..=599).map(|i| patient(i, "female")).collect();
    lines.push(patient(1, "male"));
    lines.push(tx(json!({"request": {"method": "DELETE", "url": "Patient/pg-2"}})));
    lines.push(tx(json!({"resource": {"resourceType": "Patient", "gender": "other"},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:test:mrn|PG-3"}})));
    lines.push(tx(json!({"resource": {"resourceType": "Patient", "id": "pg-4", "gender": "unknown"},
        "request": {"method": "PUT", "url": "Patient/pg-4", "ifMatch": "W/\"1\""}})));
    lines.push(tx(json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient?identifier=urn:test:mrn|PG-5"}}, "request": {"method": "POST", "url": "Observation"}})));
    lines.extend((1000..1495).map(|i| patient(i, "female")));
    assert_eq!(lines.len(), 1099);
    lines.push(patient(1, "other"));
    let file = tmp.path().join("groups.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, stats, stderr) = import_json(&inst, &file);
    assert_eq!(code, 0, "{stats} {stderr}");
    assert_eq!((stats["units"].as_u64(), stats["failed"].as_u64()), (Some(1100), Some(0)), "{stats} {stderr}");

    let s = inst.serve();
    let p1 = get(&s, "Patient/pg-1");
    assert_eq!((p1.json["meta"]["versionId"].as_str(), p1.json["gender"].as_str()), (Some("3"), Some("other")), "{}", p1.text);
    assert_eq!(get(&s, "Patient/pg-2").status, 410, "deleted by a later group");
    let r = identifier_search(&s, "urn:test:mrn", "PG-3");
    assert_eq!(r.json["total"], 1, "conditional create made a duplicate: {}", r.text);
    assert_eq!(entries(&r.json)[0]["resource"]["gender"], "female");
    let p4 = get(&s, "Patient/pg-4");
    assert_eq!((p4.json["meta"]["versionId"].as_str(), p4.json["gender"].as_str()), (Some("2"), Some("unknown")), "{}", p4.text);
    let o = get(&s, "Observation?patient=pg-5");
    assert_eq!(o.json["total"], 1, "{}", o.text);
}

/// Units of one group are as if imported one after another: a line or a file that depends on
/// an earlier one of the same group (a Patient created two lines before, an Organization a
/// file before created or conditionally created) sees it, and independent files share a group.
#[test]
fn offline_import_units_see_earlier_units_of_their_group() {
    let inst = Instance::init();
    let tmp = tempfile::tempdir().unwrap();
    let tx = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string();
    let lines = [
        json!({"resourceType": "Patient", "id": "sg-1", "identifier": [{"system": "urn:test:mrn", "value": "SG-1"}]}).to_string(),
        json!({"resourceType": "Observation", "id": "sg-obs", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/sg-1"}}).to_string(),
        tx(vec![json!({"resource": {"resourceType": "Patient", "gender": "other"},
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:test:mrn|SG-1"}})]),
        json!({"resourceType": "Patient", "id": "sg-1", "identifier": [{"system": "urn:test:mrn", "value": "SG-1"}], "gender": "female"}).to_string(),
    ];
    let file = tmp.path().join("one-group.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, stats, stderr) = import_json(&inst, &file);
    assert_eq!(code, 0, "{stats} {stderr}");
    assert_eq!((stats["units"].as_u64(), stats["failed"].as_u64()), (Some(4), Some(0)), "{stats} {stderr}");

    // Bundle files: the first creates an Organization by a conditional create; the next ones
    // refer to it by a conditional reference or conditionally create it again; many patients'
    // files in between are independent of each other.
    let dir = tmp.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let org = |n: &str| {
        tx(vec![
            json!({"fullUrl": "urn:uuid:4b8c1d2e-0000-4000-8000-000000000001", "resource": {"resourceType": "Organization", "name": n, "identifier": [{"system": "urn:test:org", "value": "ORG-1"}]},
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:test:org|ORG-1"}}),
        ])
    };
    std::fs::write(dir.join("a-org.json"), org("first")).unwrap();
    for i in 0..40 {
        let pid = format!("urn:uuid:4b8c1d2e-0000-4000-8000-{:012}", 100 + i);
        std::fs::write(
            dir.join(format!("b-patient-{i:02}.json")),
            tx(vec![
                json!({"fullUrl": pid, "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": format!("SF-{i}")}],
                    "managingOrganization": {"reference": "Organization?identifier=urn:test:org|ORG-1"}}, "request": {"method": "POST", "url": "Patient"}}),
                json!({"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": pid},
                    "serviceProvider": {"reference": "Organization?identifier=urn:test:org|ORG-1"}}, "request": {"method": "POST", "url": "Encounter"}}),
            ]),
        )
        .unwrap();
    }
    std::fs::write(dir.join("c-org-again.json"), org("second")).unwrap();
    let (code, stats, stderr) = import_json(&inst, &dir);
    assert_eq!(code, 0, "{stats} {stderr}");
    assert_eq!((stats["units"].as_u64(), stats["failed"].as_u64()), (Some(42), Some(0)), "{stats} {stderr}");

    let s = inst.serve();
    let p1 = get(&s, "Patient/sg-1");
    assert_eq!((p1.json["meta"]["versionId"].as_str(), p1.json["gender"].as_str()), (Some("2"), Some("female")), "{}", p1.text);
    let r = identifier_search(&s, "urn:test:mrn", "SG-1");
    assert_eq!(r.json["total"], 1, "the conditional create made a duplicate: {}", r.text);
    let o = get(&s, "Observation/sg-obs");
    assert_eq!(o.status, 200, "{}", o.text);
    let orgs = get(&s, "Organization?identifier=urn:test:org|ORG-1");
    assert_eq!(orgs.json["total"], 1, "{}", orgs.text);
    let org_id = entries(&orgs.json)[0]["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(entries(&orgs.json)[0]["resource"]["name"], "first");
    for i in [0, 17, 39] {
        let p = identifier_search(&s, "urn:test:mrn", &format!("SF-{i}"));
        assert_eq!(p.json["total"], 1, "{}", p.text);
        assert_eq!(entries(&p.json)[0]["resource"]["managingOrganization"]["reference"], format!("Organization/{org_id}"));
    }
}

// ------------------------------------------------------------------------------------------
// 4. Versioning: create, update, If-Match, vread, history, delete, re-create.
// ------------------------------------------------------------------------------------------

#[test]
fn versioning_history_and_delete() {
    let inst = Instance::init();
    let s = inst.serve();
    let body = json!({"resourceType": "Patient", "active": true, "gender": "female", "birthDate": "1970-01-02"});
    let c = reply(s.post("Patient", &body));
    assert_eq!(c.status, 201, "{}", c.text);
    let id = c.json["id"].as_str().unwrap().to_string();
    assert_eq!(c.header("etag"), Some("W/\"1\""));
    assert!(c.header("last-modified").is_some());
    assert_eq!(c.header("location"), Some(format!("{}/Patient/{id}/_history/1", s.base).as_str()));
    assert_eq!(c.json["meta"]["versionId"], "1");
    assert!(c.header("content-type").unwrap().starts_with("application/fhir+json"));

    // Update: version 2, no Location (only a create has one).
    let mut v2 = c.json.clone();
    v2["active"] = json!(false);
    let u = reply(s.put(&format!("Patient/{id}"), &v2));
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(u.header("etag"), Some("W/\"2\""));
    assert_eq!(u.header("location"), None);
    assert_eq!(u.json["meta"]["versionId"], "2");
    assert_eq!(u.json["active"], false);

    // If-Match: a stale version is refused and changes nothing; the current one applies.
    let mut v3 = v2.clone();
    v3["gender"] = json!("other");
    let stale = with_headers(&s, reqwest::Method::PUT, &format!("Patient/{id}"), Some(&v3), &[("if-match", "W/\"1\"")]);
    assert_eq!(stale.status, 412, "{}", stale.text);
    stale.assert_outcome();
    let now = get(&s, &format!("Patient/{id}"));
    assert_eq!(now.header("etag"), Some("W/\"2\""));
    assert_eq!(now.json["gender"], "female");
    let ok = with_headers(&s, reqwest::Method::PUT, &format!("Patient/{id}"), Some(&v3), &[("if-match", "W/\"2\"")]);
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.header("etag"), Some("W/\"3\""));
    // If-None-Match on read: 304 for the current version.
    let nm = with_headers(&s, reqwest::Method::GET, &format!("Patient/{id}"), None, &[("if-none-match", "W/\"3\"")]);
    assert_eq!(nm.status, 304);
    // If-Modified-Since: 304 from the version's Last-Modified on, 200 before it; an
    // If-None-Match naming an older version wins over a date (RFC 9110).
    let lm = ok.header("last-modified").unwrap().to_string();
    let at = |h: &[(&str, &str)]| with_headers(&s, reqwest::Method::GET, &format!("Patient/{id}"), None, h).status;
    assert_eq!(at(&[("if-modified-since", &lm)]), 304);
    assert_eq!(at(&[("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")]), 304);
    assert_eq!(at(&[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")]), 200);
    assert_eq!(at(&[("if-modified-since", "not a date")]), 200);
    assert_eq!(at(&[("if-modified-since", &lm), ("if-none-match", "W/\"2\"")]), 200);

    // vread of every version.
    let r1 = get(&s, &format!("Patient/{id}/_history/1"));
    assert_eq!(r1.status, 200);
    assert_eq!(r1.json["meta"]["versionId"], "1");
    assert_eq!(r1.json["active"], true);
    assert_eq!(r1.header("etag"), Some("W/\"1\""));
    let r2 = get(&s, &format!("Patient/{id}/_history/2"));
    assert_eq!(r2.json["active"], false);
    assert_eq!(r2.json["gender"], "female");
    assert_eq!(get(&s, &format!("Patient/{id}/_history/9")).status, 404);

    // Delete: 204, then 410 on read, 204 again (idempotent, no new version).
    let d = s.delete(&format!("Patient/{id}"));
    assert_eq!(d.status(), 204);
    assert_eq!(d.headers()["etag"], "W/\"4\"");
    assert!(d.text().unwrap().is_empty());
    let gone = get(&s, &format!("Patient/{id}"));
    assert_eq!(gone.status, 410, "{}", gone.text);
    gone.assert_outcome();
    let d2 = s.delete(&format!("Patient/{id}"));
    assert_eq!(d2.status(), 204);
    // Older versions stay readable.
    assert_eq!(get(&s, &format!("Patient/{id}/_history/3")).status, 200);
    // A delete of something that never existed is also 204 (FHIR: idempotent).
    assert_eq!(s.delete("Patient/never-existed").status(), 204);
    assert_eq!(get(&s, "Patient/never-existed").status, 404);

    // History: newest first, the delete as a DELETE entry without a resource.
    let h = get(&s, &format!("Patient/{id}/_history"));
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["type"], "history");
    assert_eq!(h.json["total"], 4);
    let es = entries(&h.json);
    let etags: Vec<&str> = es.iter().map(|e| e["response"]["etag"].as_str().unwrap()).collect();
    assert_eq!(etags, ["W/\"4\"", "W/\"3\"", "W/\"2\"", "W/\"1\""]);
    assert_eq!(es[0]["request"]["method"], "DELETE");
    assert!(es[0].get("resource").is_none());
    for (e, v) in es[1..].iter().zip(["3", "2", "1"]) {
        assert_eq!(e["resource"]["meta"]["versionId"], v);
        assert_eq!(e["resource"]["id"], json!(id));
    }
    assert_eq!(es[3]["request"]["method"], "POST");
    assert_eq!(es[1]["request"]["method"], "PUT");
    // History paging with _count.
    let h2 = get(&s, &format!("Patient/{id}/_history?_count=2"));
    let first: Vec<&str> = entries(&h2.json).iter().map(|e| e["response"]["etag"].as_str().unwrap()).collect();
    assert_eq!(first, ["W/\"4\"", "W/\"3\""]);
    assert_eq!(h2.json["total"], 4, "total counts every version, not the page");
    let next = link(&h2.json, "next").expect("next link of history");
    let h3 = get_abs(&s, &next);
    let second: Vec<&str> = entries(&h3.json).iter().map(|e| e["response"]["etag"].as_str().unwrap()).collect();
    assert_eq!(second, ["W/\"2\"", "W/\"1\""]);
    assert_eq!(h3.json["total"], 4);
    assert!(link(&h3.json, "next").is_none(), "no next link after version 1");

    // FHIR R4 (http.html, delete): a deleted resource can be brought back by an update; the
    // update creates it again, so 201 Created with a Location, and history continues.
    let revived = reply(s.put(&format!("Patient/{id}"), &v2));
    assert_eq!(revived.status, 201, "{}", revived.text);
    assert_eq!(revived.header("etag"), Some("W/\"5\""));
    assert_eq!(revived.header("location"), Some(format!("{}/Patient/{id}/_history/5", s.base).as_str()));
    assert_eq!(get(&s, &format!("Patient/{id}")).status, 200);
    assert_eq!(entries(&get(&s, &format!("Patient/{id}/_history")).json).len(), 5);

    // Update-as-create with a client id, then update: 201 then 200.
    let mine = json!({"resourceType": "Patient", "id": "client-chosen-1", "active": true});
    let a = reply(s.put("Patient/client-chosen-1", &mine));
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    let b = reply(s.put("Patient/client-chosen-1", &mine));
    assert_eq!(b.status, 200);
    assert_eq!(b.header("etag"), Some("W/\"2\""));

    // Update whose body id differs from the URL, or has no id: 400 and nothing written.
    let mut other = v2.clone();
    other["id"] = json!("some-other-id");
    let mm = reply(s.put(&format!("Patient/{id}"), &other));
    assert_eq!(mm.status, 400, "{}", mm.text);
    mm.assert_outcome();
    let mut noid = v2.clone();
    noid.as_object_mut().unwrap().remove("id");
    let ni = reply(s.put(&format!("Patient/{id}"), &noid));
    assert_eq!(ni.status, 400, "{}", ni.text);
    assert_eq!(get(&s, &format!("Patient/{id}")).header("etag"), Some("W/\"5\""));
    assert_eq!(get(&s, "Patient/some-other-id").status, 404);
    // A body of another type than the URL: 400.
    let wrong = reply(s.put(&format!("Observation/{id}"), &v2));
    assert_eq!(wrong.status, 400, "{}", wrong.text);
}

// ------------------------------------------------------------------------------------------
// 5. Conditional create, transactions (urn:uuid, all-or-nothing) and batches.
// ------------------------------------------------------------------------------------------

fn obs_for(subject: &str, code: &str, when: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject}, "effectiveDateTime": when})
}

#[test]
fn conditional_create_on_identifier() {
    let inst = Instance::init();
    let s = inst.serve();
    let ine = format!("identifier={}|{NIK_SITI}", url_encode(NIK_SYSTEM));
    let first = with_headers(&s, reqwest::Method::POST, "Patient", Some(&patient_siti()), &[("if-none-exist", &ine)]);
    assert_eq!(first.status, 201, "{}", first.text);
    let id = first.json["id"].as_str().unwrap().to_string();
    let mut again = patient_siti();
    again["active"] = json!(true);
    let second = with_headers(&s, reqwest::Method::POST, "Patient", Some(&again), &[("if-none-exist", &ine)]);
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.json["id"], json!(id), "the existing resource is returned");
    assert_eq!(second.header("etag"), Some("W/\"1\""), "nothing was written");
    assert!(second.json.get("active").is_none(), "the existing resource, not the new body");
    let found = identifier_search(&s, NIK_SYSTEM, NIK_SITI);
    assert_eq!(found.json["total"], 1, "{}", found.text);
    assert_eq!(ids_of(&found.json), [id.as_str()]);
    // A condition that matches nothing creates.
    let other = json!({"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "C-2"}]});
    let third = with_headers(&s, reqwest::Method::POST, "Patient", Some(&other), &[("if-none-exist", "identifier=urn:test:mrn|C-2")]);
    assert_eq!(third.status, 201);
    assert_ne!(third.json["id"], json!(id));
    // An If-None-Exist that is not an identity lookup is refused, not run as a scan.
    let bad = with_headers(&s, reqwest::Method::POST, "Patient", Some(&other), &[("if-none-exist", "gender=female")]);
    assert_eq!(bad.status, 400, "{}", bad.text);
    bad.assert_outcome();
    // Criteria in the URL are a conditional create too (fhirpy's get_or_create), never
    // ignored: the existing Patient comes back, no duplicate is made.
    let url = format!("Patient?{ine}");
    let via_url = reply(s.post(&url, &again));
    assert_eq!(via_url.status, 200, "{}", via_url.text);
    assert_eq!(via_url.json["id"], json!(id));
    let fresh = reply(s.post("Patient?identifier=urn:test:mrn|C-3", &json!({"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "C-3"}]})));
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    let differ = with_headers(&s, reqwest::Method::POST, &url, Some(&again), &[("if-none-exist", "identifier=urn:test:mrn|C-2")]);
    assert_eq!(differ.status, 400, "{}", differ.text);
    assert_eq!(reply(s.post("Patient?gender=female", &other)).status, 400, "not an identity lookup: refused");
    assert_eq!(identifier_search(&s, NIK_SYSTEM, NIK_SITI).json["total"], 1);
}

fn patch_as(s: &Server, path: &str, content_type: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut rb = s.http.patch(s.url(path)).bearer_auth(&s.token).header("content-type", content_type).body(serde_json::to_vec(body).unwrap());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    reply(rb.send().unwrap())
}

/// PATCH with JSON Patch (as SATUSEHAT documents it) and JSON Merge Patch (as fhirpy sends
/// it): applied whole or not at all, to the current version, never changing the type or id,
/// validated like any write; and FHIRPath Patch.
#[test]
fn patch_with_json_patch_and_merge_patch() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&patient_siti());
    let id = p["id"].as_str().unwrap().to_string();
    let at = format!("Patient/{id}");
    let jp = "application/json-patch+json";
    // SATUSEHAT's style: replace and add by JSON Pointer.
    let ops = json!([
        {"op": "replace", "path": "/name/0/family", "value": "Aminah-Rahayu"},
        {"op": "add", "path": "/telecom/-", "value": {"system": "email", "value": "siti@example.org"}},
        {"op": "test", "path": "/gender", "value": "female"}
    ]);
    let r = patch_as(&s, &at, jp, &ops, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["name"][0]["family"], "Aminah-Rahayu");
    assert_eq!(r.json["telecom"].as_array().unwrap().len(), 2);
    assert_eq!(r.json["meta"]["versionId"], "2");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_eq!(get(&s, &at).json["name"][0]["family"], "Aminah-Rahayu");
    // A failed test: nothing applied (not even the operations before it), 422, no value echoed.
    let failing = json!([{"op": "replace", "path": "/gender", "value": "male"}, {"op": "test", "path": "/birthDate", "value": "1901-01-01"}]);
    let r = patch_as(&s, &at, jp, &failing, &[]);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(!r.text.contains("1901") && !r.text.contains("male\""), "{}", r.text);
    assert_eq!(get(&s, &at).json["gender"], "female");
    assert_eq!(get(&s, &at).json["meta"]["versionId"], "2");
    // A path that does not exist, an id or type change, an invalid result: refused.
    assert_eq!(patch_as(&s, &at, jp, &json!([{"op": "remove", "path": "/nothing/here"}]), &[]).status, 422);
    assert_eq!(patch_as(&s, &at, jp, &json!([{"op": "replace", "path": "/id", "value": "other"}]), &[]).status, 422);
    assert_eq!(patch_as(&s, &at, jp, &json!([{"op": "replace", "path": "/resourceType", "value": "Group"}]), &[]).status, 422);
    assert_eq!(patch_as(&s, &at, jp, &json!([{"op": "replace", "path": "/birthDate", "value": "5 August"}]), &[]).status, 422);
    assert_eq!(patch_as(&s, &at, jp, &json!({"op": "replace"}), &[]).status, 400, "not an array");
    assert_eq!(patch_as(&s, &at, jp, &json!([{"op": "frobnicate", "path": "/x"}]), &[]).status, 400);
    // If-Match: a stale version is refused.
    assert_eq!(patch_as(&s, &at, jp, &json!([{"op": "add", "path": "/active", "value": true}]), &[("if-match", "W/\"1\"")]).status, 412);
    // JSON Merge Patch (fhirpy sends a plain JSON object): members replace, null removes.
    let r = patch_as(&s, &at, "application/json", &json!({"active": true, "telecom": null}), &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.json["active"].as_bool(), r.json.get("telecom").is_none(), r.json["meta"]["versionId"].as_str()), (Some(true), true, Some("3")));
    assert_eq!(patch_as(&s, &at, "application/merge-patch+json", &json!({"gender": "other"}), &[]).json["gender"], "other");
    // FHIRPath Patch (a Parameters resource): the R4 operations, whole or not at all.
    let op = |parts: Value| json!({"name": "operation", "part": parts});
    let fp = json!({"resourceType": "Parameters", "parameter": [
        op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.active"}])),
        op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient.name[0]"}, {"name": "name", "valueString": "given"}, {"name": "value", "valueString": "Ayu"}])),
        op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.identifier.where(system = 'https://fhir.kemkes.go.id/id/nik').value"}, {"name": "value", "valueString": NIK_SITI}])),
    ]});
    let r = patch_as(&s, &at, "application/fhir+json", &fp, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json.get("active").is_none(), "{}", r.text);
    assert_eq!(r.json["name"][0]["given"].as_array().unwrap().last().unwrap(), "Ayu");
    let bad = json!({"resourceType": "Parameters", "parameter": [
        op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "active"}, {"name": "value", "valueBoolean": true}])),
        op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name.given"}, {"name": "value", "valueString": "rahasia"}])),
    ]});
    let before = get(&s, &at).json["meta"]["versionId"].clone();
    let r = patch_as(&s, &at, "application/fhir+json", &bad, &[]);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("FHIRPath Patch operation 1") && !r.text.contains("rahasia"), "{}", r.text);
    assert_eq!(get(&s, &at).json["meta"]["versionId"], before, "nothing applied");
    assert_eq!(patch_as(&s, &at, "text/plain", &json!({}), &[]).status, 415);
    // A client that may update but not read cannot read through a patch.
    let writer = inst.caller(&s, &["--name", "writer", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/Patient.cu"]);
    let r = s.http.patch(s.url(&at)).bearer_auth(&writer.token).header("content-type", jp).body("[]").send().unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().unwrap());
    // Missing and deleted resources.
    assert_eq!(patch_as(&s, "Patient/no-such-patient", jp, &json!([]), &[]).status, 404);
    assert_eq!(s.delete(&at).status().as_u16(), 204);
    assert_eq!(patch_as(&s, &at, jp, &json!([]), &[]).status, 410);
}

/// `PUT Type?criteria` and `DELETE Type?criteria`: no match creates (update) or is 404
/// (delete), one match is that resource, more than one is 412.
#[test]
fn conditional_update_and_delete() {
    let inst = Instance::init();
    let s = inst.serve();
    let mrn = |v: &str| json!({"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": v}], "gender": "female"});
    // No match: created, with a new id.
    let r = reply(s.put("Patient?identifier=urn:test:mrn|M-1", &mrn("M-1")));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert!(r.header("location").unwrap().contains(&format!("Patient/{id}/_history/1")));
    // One match: that Patient is updated, whatever id the body left out.
    let mut changed = mrn("M-1");
    changed["active"] = json!(true);
    let r = reply(s.put("Patient?identifier=urn:test:mrn|M-1", &changed));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.json["id"].as_str(), r.json["meta"]["versionId"].as_str(), r.json["active"].as_bool()), (Some(id.as_str()), Some("2"), Some(true)));
    // A body id naming another resource is refused; If-Match is honoured.
    let mut wrong = changed.clone();
    wrong["id"] = json!("someone-else");
    assert_eq!(reply(s.put("Patient?identifier=urn:test:mrn|M-1", &wrong)).status, 400);
    let stale = with_headers(&s, reqwest::Method::PUT, "Patient?identifier=urn:test:mrn|M-1", Some(&changed), &[("if-match", "W/\"1\"")]);
    assert_eq!(stale.status, 412, "{}", stale.text);
    // Two matches: 412 for both interactions, nothing changed.
    let mut two = mrn("M-2");
    s.create(&two);
    two["gender"] = json!("male");
    s.create(&two);
    assert_eq!(reply(s.put("Patient?identifier=urn:test:mrn|M-2", &two)).status, 412);
    assert_eq!(s.delete("Patient?identifier=urn:test:mrn|M-2").status().as_u16(), 412);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "M-2").json["total"], 2);
    // Delete: one match deleted, then none left: 404.
    assert_eq!(s.delete("Patient?identifier=urn:test:mrn|M-1").status().as_u16(), 204);
    assert_eq!(get(&s, &format!("Patient/{id}")).status, 410);
    assert_eq!(s.delete("Patient?identifier=urn:test:mrn|M-1").status().as_u16(), 404);
    // Without criteria, PUT and DELETE on the type are not allowed.
    assert_eq!(reply(s.put("Patient", &mrn("M-3"))).status, 405);
    assert_eq!(s.delete("Patient").status().as_u16(), 405);
}

#[test]
fn transactions_resolve_urns_and_are_atomic() {
    let inst = Instance::init();
    let s = inst.serve();
    let p_urn = "urn:uuid:3f1e0c1a-9d0b-4b8e-8d2a-0c6f1b2a7e11";
    let e_urn = "urn:uuid:3f1e0c1a-9d0b-4b8e-8d2a-0c6f1b2a7e12";
    let mut obs = obs_for(p_urn, "8867-4", "2024-05-01T10:00:00+07:00");
    obs["encounter"] = json!({"reference": e_urn});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f1e0c1a-9d0b-4b8e-8d2a-0c6f1b2a7e13", "resource": obs, "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": p_urn, "resource": patient_siti(), "request": {"method": "POST", "url": "Patient",
            "ifNoneExist": format!("identifier={NIK_SYSTEM}|{NIK_SITI}")}},
        {"fullUrl": e_urn, "resource": {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": {"reference": p_urn}},
         "request": {"method": "POST", "url": "Encounter"}}
    ]});
    let r = post_bundle(&s, &tx);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["type"], "transaction-response");
    let locs: Vec<(String, String, String)> = entries(&r.json).iter().map(|e| parse_location(e["response"]["location"].as_str().unwrap())).collect();
    let statuses: Vec<&str> = entries(&r.json).iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created"; 3]);
    let (pid, eid, oid) = (&locs[1].1, &locs[2].1, &locs[0].1);
    let o = get(&s, &format!("Observation/{oid}"));
    assert_eq!(o.json["subject"]["reference"], json!(format!("Patient/{pid}")));
    assert_eq!(o.json["encounter"]["reference"], json!(format!("Encounter/{eid}")));
    let e = get(&s, &format!("Encounter/{eid}"));
    assert_eq!(e.json["subject"]["reference"], json!(format!("Patient/{pid}")));
    assert_eq!(ids_of(&get(&s, &format!("Observation?patient={pid}")).json), [oid.as_str()]);

    // The same Patient again with ifNoneExist: it matches (200), and the new Observation's
    // urn reference resolves to the existing Patient.
    let tx2 = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p_urn, "resource": patient_siti(), "request": {"method": "POST", "url": "Patient",
            "ifNoneExist": format!("identifier={NIK_SYSTEM}|{NIK_SITI}")}},
        {"fullUrl": "urn:uuid:3f1e0c1a-9d0b-4b8e-8d2a-0c6f1b2a7e14", "resource": obs_for(p_urn, "8310-5", "2024-05-02"),
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r2 = post_bundle(&s, &tx2);
    assert_eq!(r2.status, 200, "{}", r2.text);
    let es = entries(&r2.json);
    assert_eq!(es[0]["response"]["status"], "200 OK");
    assert_eq!(parse_location(es[0]["response"]["location"].as_str().unwrap()).1, *pid);
    assert_eq!(es[1]["response"]["status"], "201 Created");
    assert_eq!(get(&s, &format!("Observation?patient={pid}")).json["total"], 2);
    assert_eq!(identifier_search(&s, NIK_SYSTEM, NIK_SITI).json["total"], 1);

    // All or nothing: the 3rd entry is invalid, so neither of the first two is written.
    let atomic = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "TX-A"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "tx-b", "identifier": [{"system": "urn:test:mrn", "value": "TX-B"}]}, "request": {"method": "PUT", "url": "Patient/tx-b"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.5"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let bad = post_bundle(&s, &atomic);
    assert!((400..500).contains(&bad.status), "{} {}", bad.status, bad.text);
    bad.assert_outcome();
    assert!(bad.text.contains("Bundle.entry[2]"), "the outcome names the failing entry: {}", bad.text);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "TX-A").json["total"], 0);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "TX-B").json["total"], 0);
    assert_eq!(get(&s, "Patient/tx-b").status, 404);
    // A urn reference that names no entry also fails the whole transaction.
    let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "TX-C"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": obs_for("urn:uuid:00000000-0000-4000-8000-000000000000", "8867-4", "2024-01-01"), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let d = post_bundle(&s, &dangling);
    assert_eq!(d.status, 400, "{}", d.text);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "TX-C").json["total"], 0);
    // The same transaction without the bad entry goes through (the failure was the entry).
    let mut fixed = atomic.clone();
    fixed["entry"].as_array_mut().unwrap().pop();
    assert_eq!(post_bundle(&s, &fixed).status, 200);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "TX-A").json["total"], 1);
    assert_eq!(get(&s, "Patient/tx-b").status, 200);
    // DELETE and GET entries: the delete happens, the read sees the committed state.
    let mixed = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/tx-b"}},
        {"request": {"method": "GET", "url": format!("Observation/{oid}")}},
        {"request": {"method": "DELETE", "url": "Patient/never-was"}}
    ]});
    let m = post_bundle(&s, &mixed);
    assert_eq!(m.status, 200, "{}", m.text);
    let st: Vec<&str> = entries(&m.json).iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(st, ["204 No Content", "200 OK", "204 No Content"]);
    assert_eq!(entries(&m.json)[1]["resource"]["id"], json!(oid));
    assert_eq!(get(&s, "Patient/tx-b").status, 410);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "TX-B").json["total"], 0);
}

#[test]
fn batch_reports_each_entry() {
    let inst = Instance::init();
    let s = inst.serve();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "B-1"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "not a date", "identifier": [{"system": "urn:test:mrn", "value": "B-2"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "b-3", "identifier": [{"system": "urn:test:mrn", "value": "B-3"}]}, "request": {"method": "PUT", "url": "Patient/b-3"}},
        {"request": {"method": "GET", "url": "Patient/b-3"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}}
    ]});
    let r = post_bundle(&s, &batch);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["type"], "batch-response");
    let es = entries(&r.json);
    assert_eq!(es.len(), 5);
    let statuses: Vec<&str> = es.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "422 Unprocessable Entity", "201 Created", "200 OK", "404 Not Found"]);
    let outcome = &es[1]["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(outcome["issue"].as_array().unwrap().iter().any(|i| i["expression"][0].as_str().is_some_and(|p| p.contains("birthDate"))), "{outcome}");
    assert!(!es[1]["response"].to_string().contains("not a date"), "the outcome must not echo content");
    assert_eq!(es[4]["response"]["outcome"]["resourceType"], "OperationOutcome");
    let loc = es[0]["response"]["location"].as_str().unwrap();
    let (_, id1, _) = parse_location(loc);
    assert_eq!(get(&s, &format!("Patient/{id1}")).status, 200);
    assert_eq!(get(&s, "Patient/b-3").status, 200);
    assert_eq!(es[3]["resource"]["id"], "b-3");
    assert_eq!(identifier_search(&s, "urn:test:mrn", "B-1").json["total"], 1);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "B-2").json["total"], 0);
    assert_eq!(identifier_search(&s, "urn:test:mrn", "B-3").json["total"], 1);
    // Other Bundle types are not processed at the base URL.
    let coll = json!({"resourceType": "Bundle", "type": "collection", "entry": []});
    assert_eq!(post_bundle(&s, &coll).status, 400);
}

/// The official R4 batch examples of reads and searches run against the official example
/// Patient: each entry answers as its own request would.
#[test]
fn official_batch_examples_of_reads_and_searches() {
    let inst = Instance::init();
    let s = inst.serve();
    let dir = common::corpus().join("fhir-r4-examples");
    let patient = read_json(&dir.join("Patient-example.json"));
    assert_eq!(reply(s.put("Patient/example", &patient)).status, 201);
    let mut cond = json!({"resourceType": "Condition", "subject": {"reference": "Patient/example"}, "code": {"text": "demam"}});
    cond["id"] = json!("c1");
    assert_eq!(reply(s.put("Condition/c1", &cond)).status, 201);
    let r = post_bundle(&s, &read_json(&dir.join("Bundle-bundle-request-simplesummary.json")));
    assert_eq!(r.status, 200, "{}", r.text);
    let es = entries(&r.json);
    let statuses: Vec<&str> = es.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK"; 4], "{}", r.text);
    assert_eq!(es[0]["resource"]["id"], "example");
    assert_eq!(es[1]["resource"]["type"], "searchset");
    assert_eq!(es[1]["resource"]["total"], 1);
    assert_eq!(es[1]["resource"]["entry"][0]["resource"]["id"], "c1");
    assert_eq!(es[2]["resource"]["total"], 0);
    // The search's paging link works outside the Bundle.
    let this = link(&es[1]["resource"], "self").expect("a self link");
    assert_eq!(get_abs(&s, &this).json["entry"][0]["resource"]["id"], "c1");
    // _list (functional lists) is not supported: that entry says so; `notgiven` is no R4
    // parameter: ignored and reported, as a search of its own would.
    let r = post_bundle(&s, &read_json(&dir.join("Bundle-bundle-request-medsallergies.json")));
    assert_eq!(r.status, 200, "{}", r.text);
    let es = entries(&r.json);
    let statuses: Vec<&str> = es.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "400 Bad Request", "400 Bad Request", "400 Bad Request", "200 OK"], "{}", r.text);
    assert!(es[1]["response"]["outcome"].to_string().contains("_list"), "{}", r.text);
    assert!(es[4]["resource"].to_string().contains("'notgiven:not' was ignored"), "{}", r.text);
}

#[test]
fn bundles_read_search_patch_and_delete_conditionally() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    let oid = s.create(&obs_for(&format!("Patient/{pid}"), "8867-4", "2026-11-01T08:00:00+07:00"))["id"].as_str().unwrap().to_string();
    let oid2 = s.create(&obs_for(&format!("Patient/{pid}"), "8310-5", "2026-11-01T08:00:00+07:00"))["id"].as_str().unwrap().to_string();
    let b64 = |v: Value| base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&v).unwrap());
    let patch = |ops: Value| json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": b64(ops)});
    // A transaction: a patch by id, a patch by criteria, a conditional delete, then reads and
    // a search that see them (GETs run after the writes).
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patch(json!([{"op": "replace", "path": "/status", "value": "amended"}])), "request": {"method": "PATCH", "url": format!("Observation/{oid}")}},
        {"resource": patch(json!([{"op": "add", "path": "/active", "value": false}])), "request": {"method": "PATCH", "url": format!("Patient?identifier={NIK_SYSTEM}|{NIK_SITI}")}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"},
            {"name": "name", "valueString": "note"}, {"name": "value", "valueAnnotation": {"text": "dicatat ulang"}}]}]}, "request": {"method": "PATCH", "url": format!("Observation/{oid2}")}},
        {"resource": {"resourceType": "Practitioner", "identifier": [{"system": "urn:test:sip", "value": "SIP-1"}]}, "request": {"method": "POST", "url": "Practitioner"}},
        {"request": {"method": "GET", "url": format!("Observation/{oid}")}},
        {"request": {"method": "GET", "url": format!("Observation?patient={pid}&_include=Observation:subject")}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}/$everything?_count=1")}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}"), "ifNoneMatch": "W/\"2\""}},
        {"request": {"method": "GET", "url": format!("Observation/{oid}/_history/1")}}
    ]});
    let r = post_bundle(&s, &tx);
    assert_eq!(r.status, 200, "{}", r.text);
    let es = entries(&r.json);
    let statuses: Vec<&str> = es.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "200 OK", "200 OK", "201 Created", "200 OK", "200 OK", "200 OK", "304 Not Modified", "200 OK"], "{}", r.text);
    let es = &es[1..];
    assert_eq!(es[3]["resource"]["status"], "amended");
    assert_eq!(get(&s, &format!("Observation/{oid2}")).json["note"][0]["text"], "dicatat ulang", "a FHIRPath Patch inside the transaction");
    let found = entries(&es[4]["resource"]);
    assert!(found.iter().any(|e| e["resource"]["id"] == oid.as_str() && e["resource"]["status"] == "amended"), "{}", r.text);
    let included: Vec<&Value> = found.iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["resource"]["active"], false);
    assert_eq!(es[5]["resource"]["total"], 3);
    assert_eq!(entries(&es[5]["resource"]).len(), 1);
    assert!(link(&es[5]["resource"], "next").unwrap().contains("/$everything?_page="));
    assert!(es[6].get("resource").is_none(), "{}", r.text);
    assert_eq!(es[7]["resource"]["status"], "final");
    // All or nothing: a patch that fails its test fails the transaction, the other entry too.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patch(json!([{"op": "test", "path": "/status", "value": "final"}, {"op": "replace", "path": "/status", "value": "cancelled"}])), "request": {"method": "PATCH", "url": format!("Observation/{oid}")}},
        {"request": {"method": "DELETE", "url": "Practitioner?identifier=urn:test:sip|SIP-1"}}
    ]});
    let r = post_bundle(&s, &tx);
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(get(&s, &format!("Observation/{oid}")).json["status"], "amended");
    assert_eq!(get(&s, "Practitioner?identifier=urn:test:sip|SIP-1").json["total"], 1);
    // A conditional delete that matches nothing fails the transaction; one that matches deletes.
    let del = |q: &str| json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "DELETE", "url": q}}]});
    assert_eq!(post_bundle(&s, &del("Practitioner?identifier=urn:test:sip|NONE")).status, 412);
    let r = post_bundle(&s, &del("Practitioner?identifier=urn:test:sip|SIP-1"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get(&s, "Practitioner?identifier=urn:test:sip|SIP-1").json["total"], 0);
    // A batch: each entry on its own; a merge patch by criteria, a bad patch, a conditional
    // update, a history, a read not offered inside Bundles.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/merge-patch+json", "data": b64(json!({"active": true}))}, "request": {"method": "PATCH", "url": format!("Patient?identifier={NIK_SYSTEM}|{NIK_SITI}")}},
        {"resource": {"resourceType": "Binary", "contentType": "text/plain", "data": b64(json!([]))}, "request": {"method": "PATCH", "url": format!("Patient/{pid}")}},
        {"resource": {"resourceType": "Parameters", "parameter": []}, "request": {"method": "PATCH", "url": format!("Patient/{pid}")}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "multipleBirthBoolean"}, {"name": "value", "valueBoolean": false}]}]}, "request": {"method": "PATCH", "url": format!("Patient/{pid}")}},
        {"resource": {"resourceType": "Practitioner", "identifier": [{"system": "urn:test:sip", "value": "SIP-2"}], "active": true}, "request": {"method": "PUT", "url": "Practitioner?identifier=urn:test:sip|SIP-2"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}/_history")}},
        {"request": {"method": "GET", "url": "AuditEvent?patient=x"}}
    ]});
    let r = post_bundle(&s, &batch);
    assert_eq!(r.status, 200, "{}", r.text);
    let es = entries(&r.json);
    let statuses: Vec<&str> = es.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "415 Unsupported Media Type", "422 Unprocessable Entity", "200 OK", "201 Created", "200 OK", "400 Bad Request"], "{}", r.text);
    assert_eq!((es[5]["resource"]["type"].as_str(), es[5]["resource"]["total"].as_u64()), (Some("history"), Some(4)));
    let now = get(&s, &format!("Patient/{pid}")).json;
    assert_eq!((now["active"].as_bool(), now["multipleBirthBoolean"].as_bool()), (Some(true), Some(false)), "a FHIRPath Patch in a batch");
}

// ------------------------------------------------------------------------------------------
// 6. Search: identity lookups, patient-pinned clinical search, paging, strictness.
// ------------------------------------------------------------------------------------------

#[test]
fn patient_identity_search() {
    let inst = Instance::init();
    let s = inst.serve();
    let siti = s.create(&patient_siti());
    let sid = siti["id"].as_str().unwrap().to_string();
    // Another patient sharing the birth date and the family name, not the identity.
    let budi = s.create(&json!({"resourceType": "Patient",
        "identifier": [{"system": NIK_SYSTEM, "value": "3174050508900004"}],
        "name": [{"family": "Aminah", "given": ["Budi"]}], "telecom": [{"system": "phone", "value": "0813 1111 2222"}],
        "gender": "male", "birthDate": "1990-08-05"}));
    let bid = budi["id"].as_str().unwrap().to_string();

    let r = identifier_search(&s, NIK_SYSTEM, NIK_SITI);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["type"], "searchset");
    assert_eq!(r.json["total"], 1);
    assert_eq!(ids_of(&r.json), [sid.as_str()]);
    assert_eq!(entries(&r.json)[0]["search"]["mode"], "match");
    // Whitespace around the value is not significant; the system is.
    assert_eq!(identifier_search(&s, NIK_SYSTEM, &format!(" {NIK_SITI} ")).json["total"], 1);
    assert_eq!(identifier_search(&s, "urn:other", NIK_SITI).json["total"], 0);
    assert_eq!(identifier_search(&s, NIK_SYSTEM, "3174054508900009").json["total"], 0);

    // Phone: stored as "+62 812-3456-7890", found in national and other formats.
    for q in ["phone=081234567890", "phone=0812-3456-7890", "telecom=%2B6281234567890", "telecom=phone%7C0812%203456%207890", "phone=tel:%2B62-812-3456-7890"] {
        let r = get(&s, &format!("Patient?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(ids_of(&r.json), [sid.as_str()], "{q}");
    }
    assert_eq!(ids_of(&get(&s, "Patient?phone=%2B62%20813%201111%202222").json), [bid.as_str()]);
    assert_eq!(get(&s, "Patient?phone=081234567891").json["total"], 0);

    // Name with birth date (full name or family name, any case/spacing), optionally gender.
    for q in ["name=Siti%20Aminah&birthdate=1990-08-05", "name=SITI%20%20aminah&birthdate=1990-08-05"] {
        assert_eq!(ids_of(&get(&s, &format!("Patient?{q}")).json), [sid.as_str()], "{q}");
    }
    let fam = get(&s, "Patient?name=Aminah&birthdate=1990-08-05");
    let fam_ids: BTreeSet<String> = ids_of(&fam.json).into_iter().collect();
    assert_eq!(fam_ids, BTreeSet::from([sid.clone(), bid.clone()]));
    assert_eq!(ids_of(&get(&s, "Patient?name=Aminah&birthdate=1990-08-05&gender=female").json), [sid.as_str()]);
    assert_eq!(get(&s, "Patient?name=Siti%20Aminah&birthdate=1990-08-06").json["total"], 0);

    // Anything that is not an exact identity lookup is refused with an OperationOutcome.
    for q in [
        "name=Siti",
        "name=Siti%20Aminah",
        "birthdate=1990-08-05",
        "gender=female",
        "",
        "identifier=",
        "identifier=3174054508900003",
        "name=Siti&birthdate=ge1990-01-01",
        "family=Aminah&birthdate=1990-08-05",
    ] {
        let r = get(&s, &format!("Patient?{q}"));
        assert_eq!(r.status, 400, "Patient?{q}: {}", r.text);
        r.assert_outcome();
        assert!(!r.text.contains("Siti") && !r.text.contains("Aminah") && !r.text.contains(NIK_SITI), "error echoes the query: {}", r.text);
    }
    // Deleted patients are no longer found by identity.
    assert_eq!(s.delete(&format!("Patient/{bid}")).status(), 204);
    assert_eq!(get(&s, "Patient?phone=%2B62%20813%201111%202222").json["total"], 0);
    assert_eq!(identifier_search(&s, NIK_SYSTEM, "3174050508900004").json["total"], 0);
    // An update that changes the phone moves the index.
    let mut moved = siti.clone();
    moved["telecom"] = json!([{"system": "phone", "value": "0819 0000 1111"}]);
    assert_eq!(reply(s.put(&format!("Patient/{sid}"), &moved)).status, 200);
    assert_eq!(get(&s, "Patient?phone=081234567890").json["total"], 0);
    assert_eq!(ids_of(&get(&s, "Patient?phone=%2B6281900001111").json), [sid.as_str()]);

    // A second registration of the same person without the NIK (the same phone, name and
    // birth date; a second NIK registration would be refused): both are found, and paging
    // through them never puts the phone (or any other part of the query) into a link.
    let mut again = moved.clone();
    again.as_object_mut().unwrap().remove("identifier");
    again.as_object_mut().unwrap().remove("id");
    let dup = s.create(&again)["id"].as_str().unwrap().to_string();
    let mut page = get(&s, "Patient?phone=081900001111&_count=1");
    let mut seen = Vec::new();
    loop {
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.json["total"], 2);
        for l in page.json["link"].as_array().unwrap() {
            let url = l["url"].as_str().unwrap();
            for secret in ["081900001111", "phone", "_count="] {
                assert!(!url.contains(secret), "link leaks `{secret}`: {url}");
            }
        }
        seen.extend(ids_of(&page.json));
        match link(&page.json, "next") {
            Some(next) => page = get_abs(&s, &next),
            None => break,
        }
        assert!(seen.len() <= 2);
    }
    let seen: BTreeSet<String> = seen.into_iter().collect();
    assert_eq!(seen, BTreeSet::from([sid.clone(), dup]));
}

#[test]
fn clinical_search_paging_and_strictness() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    let other = s.create(&json!({"resourceType": "Patient", "gender": "male"}))["id"].as_str().unwrap().to_string();
    let dates = ["2020-06-01", "2021-01-01", "2021-03-15T08:00:00+07:00", "2022-07-04", "2023-02-28", "2023-11-30T23:59:00Z", "2024-05-05"];
    let mut by_date = BTreeMap::new();
    for d in dates {
        let o = s.create(&obs_for(&format!("Patient/{pid}"), "8867-4", d));
        by_date.insert(d.to_string(), o["id"].as_str().unwrap().to_string());
    }
    // Noise: another code for the same patient, and the same code for another patient.
    s.create(&obs_for(&format!("Patient/{pid}"), "8310-5", "2022-01-01"));
    s.create(&obs_for(&format!("Patient/{other}"), "8867-4", "2022-01-01"));

    // Without a patient: refused.
    for q in ["Observation", "Observation?code=http://loinc.org|8867-4", "Observation?date=ge2021-01-01"] {
        let r = get(&s, q);
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        r.assert_outcome();
    }

    let code = "http://loinc.org|8867-4";
    let q = format!("Observation?patient={pid}&code={}&date=ge2021-01-01&_sort=-date&_count=2", url_encode(code));
    let mut page = get(&s, &q);
    assert_eq!(page.status, 200, "{}", page.text);
    let want: Vec<String> = by_date.iter().rev().filter(|(d, _)| d.as_str() >= "2021-01-01").map(|(_, id)| id.clone()).collect();
    assert_eq!(want.len(), 6);
    let mut got = Vec::new();
    let mut pages = 0;
    let mut cursors = Vec::new();
    loop {
        pages += 1;
        assert_eq!(page.json["total"], json!(want.len()), "total on every page");
        let ids = ids_of(&page.json);
        assert!(ids.len() <= 2);
        got.extend(ids);
        // Links a client follows (next, previous, and the self link of a page reached through
        // one) carry the sealed cursor alone; only the first page's self link repeats what the
        // request's own URL said.
        for l in page.json["link"].as_array().unwrap() {
            if l["relation"] == "self" && pages == 1 {
                continue;
            }
            let url = l["url"].as_str().unwrap();
            for secret in [pid.as_str(), "patient=", "8867-4", "loinc.org", "2021-01-01", "date=", "_sort=", "_count=", NIK_SITI] {
                assert!(!url.contains(secret), "paging link leaks `{secret}`: {url}");
            }
        }
        if pages > 1 {
            assert!(link(&page.json, "previous").is_some(), "page {pages} has a previous link");
        }
        match link(&page.json, "next") {
            Some(next) => {
                cursors.push(next.clone());
                page = get_abs(&s, &next);
                assert_eq!(page.status, 200, "{}", page.text);
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(got, want, "all matches, newest first, no duplicates");
    // Going back with previous from the last page gives the middle page again.
    let prev = link(&page.json, "previous").unwrap();
    assert_eq!(ids_of(&get_abs(&s, &prev).json), want[2..4]);

    // The compartment form gives the same answer.
    let comp = get(&s, &format!("Patient/{pid}/Observation?code={}&date=ge2021-01-01&_sort=-date&_count=10", url_encode(code)));
    assert_eq!(ids_of(&comp.json), want);
    // Ascending sort.
    let asc = get(&s, &format!("Observation?subject=Patient/{pid}&code={}&_sort=date", url_encode(code)));
    let all_asc: Vec<String> = by_date.values().cloned().collect();
    assert_eq!(ids_of(&asc.json), all_asc);

    // A tampered cursor: 400, whichever character is changed.
    let cursor_link = &cursors[0];
    let (prefix, cursor) = cursor_link.split_once("_page=").unwrap();
    for pos in [0, cursor.len() / 2, cursor.len() - 1] {
        let mut bytes = cursor.as_bytes().to_vec();
        bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{prefix}_page={}", String::from_utf8(bytes).unwrap());
        let r = get_abs(&s, &tampered);
        assert_eq!(r.status, 400, "tampered cursor at {pos}: {}", r.text);
        r.assert_outcome();
    }
    assert_eq!(get(&s, "Observation?_page=not-a-cursor").status, 400);
    // A cursor is bound to the client that got it: the same link works again for it.
    assert_eq!(get_abs(&s, cursor_link).status, 200);

    // Unknown parameters: ignored by default (and with handling=lenient) and reported by name
    // in an outcome entry; 400 with handling=strict. Neither echoes the value.
    let unknown = format!("Observation?patient={pid}&code={}&colour=blue", url_encode(code));
    let strict = with_headers(&s, reqwest::Method::GET, &unknown, None, &[("prefer", "handling=strict")]);
    assert_eq!(strict.status, 400, "{}", strict.text);
    strict.assert_outcome();
    assert!(strict.text.contains("colour") && !strict.text.contains("blue"), "{}", strict.text);
    for lenient in [get(&s, &unknown), with_headers(&s, reqwest::Method::GET, &unknown, None, &[("prefer", "handling=lenient")])] {
        assert_eq!(lenient.status, 200, "{}", lenient.text);
        assert_eq!(lenient.json["total"], 7);
        let outcome: Vec<&Value> = entries(&lenient.json).iter().filter(|e| e["search"]["mode"] == "outcome").collect();
        assert_eq!(outcome.len(), 1, "{}", lenient.text);
        assert_eq!(outcome[0]["resource"]["resourceType"], "OperationOutcome");
        assert_eq!(outcome[0]["resource"]["issue"][0]["severity"], "warning");
        let said = outcome[0]["resource"]["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(said.contains("'colour'") && !lenient.text.contains("blue"), "{said}");
        assert_eq!(ids_of(&lenient.json).len(), 7);
        // The self link says which were used (and is that page).
        let this = link(&lenient.json, "self").unwrap();
        assert!(this.contains(&format!("patient={pid}")) && this.contains("code=") && this.contains("_page=") && !this.contains("colour"), "{this}");
        assert_eq!(ids_of(&get_abs(&s, &this).json), ids_of(&lenient.json));
    }
    // A value that says who a person is never appears in a link, the self link included.
    let found = get(&s, &format!("Patient?identifier={NIK_SYSTEM}|{NIK_SITI}"));
    assert_eq!(found.status, 200, "{}", found.text);
    let links: Vec<&str> = found.json["link"].as_array().unwrap().iter().map(|l| l["url"].as_str().unwrap()).collect();
    assert!(!links.is_empty() && links.iter().all(|l| !l.contains(NIK_SITI) && !l.contains("identifier")), "{links:?}");
    let chained = get(&s, &format!("Observation?subject.identifier={NIK_SYSTEM}|{NIK_SITI}"));
    assert!(chained.json["link"].as_array().unwrap().iter().all(|l| !l["url"].as_str().unwrap().contains(NIK_SITI)), "{}", chained.text);
    assert!(entries(&get(&s, &format!("Observation?patient={pid}")).json).iter().all(|e| e["search"]["mode"] == "match"), "no outcome when all were used");
    // Paging keeps the handling.
    let lenient_paged = get(&s, &format!("{unknown}&_count=3"));
    let next = link(&lenient_paged.json, "next").unwrap();
    let p2 = get_abs(&s, &next);
    assert_eq!(p2.status, 200, "{}", p2.text);
    assert_eq!(ids_of(&p2.json).len(), 3);
    let strict_paged = with_headers(&s, reqwest::Method::GET, &format!("Observation?patient={pid}&_count=3"), None, &[("prefer", "handling=strict")]);
    let next = link(&strict_paged.json, "next").unwrap();
    assert_eq!(get_abs(&s, &next).status, 200);

    // POST _search takes the same parameters as a form.
    let form = s.http.post(s.url("Observation/_search")).bearer_auth(&s.token).form(&[("patient", pid.as_str()), ("code", code), ("date", "lt2021-01-01")]).send().unwrap();
    let form = reply(form);
    assert_eq!(form.status, 200, "{}", form.text);
    assert_eq!(ids_of(&form.json), [by_date["2020-06-01"].clone()]);
    // A form keeps its parameters out of URLs, and so does its answer's self link.
    let this = link(&form.json, "self").unwrap();
    assert!(this.contains("_page=") && !this.contains(&pid) && !this.contains("code="), "{this}");
    // _summary=count: the total without entries.
    let count = get(&s, &format!("Observation?patient={pid}&_summary=count"));
    assert_eq!(count.json["total"], 8);
    assert!(entries(&count.json).is_empty());
}

// ------------------------------------------------------------------------------------------
// 7. Prefer: return=minimal, and decimals kept as written.
// ------------------------------------------------------------------------------------------

#[test]
fn prefer_minimal_and_decimal_fidelity() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = with_headers(&s, reqwest::Method::POST, "Patient", Some(&json!({"resourceType": "Patient", "gender": "female"})), &[("prefer", "return=minimal")]);
    assert_eq!(p.status, 201);
    assert!(p.text.is_empty(), "minimal means no body: {}", p.text);
    assert_eq!(p.header("etag"), Some("W/\"1\""));
    let (t, pid, v) = parse_location(p.header("location").expect("Location"));
    assert_eq!((t.as_str(), v.as_str()), ("Patient", "1"));
    assert_eq!(get(&s, &format!("Patient/{pid}")).status, 200);
    let u =
        with_headers(&s, reqwest::Method::PUT, &format!("Patient/{pid}"), Some(&json!({"resourceType": "Patient", "id": pid, "gender": "male"})), &[("prefer", "return=minimal")]);
    assert_eq!(u.status, 200);
    assert!(u.text.is_empty());
    assert_eq!(u.header("etag"), Some("W/\"2\""));
    let oo = with_headers(
        &s,
        reqwest::Method::PUT,
        &format!("Patient/{pid}"),
        Some(&json!({"resourceType": "Patient", "id": pid, "gender": "other"})),
        &[("prefer", "return=OperationOutcome")],
    );
    assert_eq!(oo.status, 200);
    assert_eq!(oo.json["resourceType"], "OperationOutcome");
    // Representation is the default.
    let rep = with_headers(
        &s,
        reqwest::Method::PUT,
        &format!("Patient/{pid}"),
        Some(&json!({"resourceType": "Patient", "id": pid, "gender": "unknown"})),
        &[("prefer", "return=representation")],
    );
    assert_eq!(rep.json["gender"], "unknown");

    // Decimals: the exact text is stored and served, never re-formatted through a float.
    let raw = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"lab"}},"subject":{{"reference":"Patient/{pid}"}},"effectiveDateTime":"2024-01-01","valueQuantity":{{"value":1.50,"unit":"mg"}},"component":[{{"code":{{"text":"trace"}},"valueQuantity":{{"value":0.000120,"unit":"mg"}}}},{{"code":{{"text":"big"}},"valueQuantity":{{"value":12345678901234567890.10}}}}]}}"#
    );
    let c = reply(s.http.post(s.url("Observation")).bearer_auth(&s.token).header("content-type", "application/fhir+json").body(raw).send().unwrap());
    assert_eq!(c.status, 201, "{}", c.text);
    let oid = c.json["id"].as_str().unwrap().to_string();
    for body in [&c.text, &get(&s, &format!("Observation/{oid}")).text, &get(&s, &format!("Observation?patient={pid}")).text, &get(&s, &format!("Patient/{pid}/$everything")).text]
    {
        assert!(body.contains(r#""value":1.50"#), "1.50 kept: {body}");
        assert!(body.contains(r#""value":0.000120"#), "0.000120 kept: {body}");
        assert!(body.contains(r#""value":12345678901234567890.10"#), "large decimal kept: {body}");
    }
    // Decimal search uses the precision of the query (1.5 means [1.45, 1.55)).
    assert_eq!(ids_of(&get(&s, &format!("Observation?patient={pid}&value-quantity=1.5")).json), [oid.as_str()]);
    assert_eq!(ids_of(&get(&s, &format!("Observation?patient={pid}&value-quantity=1.50")).json), [oid.as_str()]);
    assert_eq!(get(&s, &format!("Observation?patient={pid}&value-quantity=1.6")).json["total"], 0);
    assert_eq!(get(&s, &format!("Observation?patient={pid}&value-quantity=gt1.49")).json["total"], 1);
}

// ------------------------------------------------------------------------------------------
// 8. NIK validation.
// ------------------------------------------------------------------------------------------

#[test]
fn nik_validation_refuses_without_echoing() {
    let inst = Instance::init();
    let s = inst.serve();
    let with_nik = |nik: &str, gender: &str, birth: Option<&str>| {
        let mut p = json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}], "gender": gender});
        if let Some(b) = birth {
            p["birthDate"] = json!(b);
        }
        p
    };
    let cases = [
        ("15 digits", with_nik("317405450890000", "female", Some("1990-08-05")), "317405450890000"),
        ("letters", with_nik("31740545089000A3", "female", None), "31740545089000A3"),
        ("province 99", with_nik("9974054508900003", "female", Some("1990-08-05")), "9974054508900003"),
        ("31 February", with_nik("3174057102900003", "female", None), "3174057102900003"),
        ("month 13", with_nik("3174050513900003", "male", None), "3174050513900003"),
        ("serial 0000", with_nik("3174054508900000", "female", None), "3174054508900000"),
        ("mother's NIK of 4 digits", json!({"resourceType": "Patient", "identifier": [{"system": NIK_IBU_SYSTEM, "value": "1234"}]}), "1234"),
        ("mother's NIK in no province", json!({"resourceType": "Patient", "identifier": [{"system": NIK_IBU_SYSTEM, "value": "9974054508900003"}]}), "9974054508900003"),
    ];
    for (why, body, nik) in &cases {
        let r = reply(s.post("Patient", body));
        assert_eq!(r.status, 422, "{why}: {}", r.text);
        r.assert_outcome();
        assert!(r.text.contains("NIK"), "{why}: the outcome says what is wrong: {}", r.text);
        assert!(!r.text.contains(nik), "{why}: the NIK is echoed: {}", r.text);
        // PUT is checked the same way.
        let mut b = body.clone();
        b["id"] = json!("nik-put");
        let r = reply(s.put("Patient/nik-put", &b));
        assert_eq!(r.status, 422, "{why} (PUT): {}", r.text);
        assert!(!r.text.contains(nik));
        // Nothing was stored.
        assert_eq!(identifier_search(&s, NIK_SYSTEM, nik).json["total"], 0, "{why}");
    }
    assert_eq!(get(&s, "Patient/nik-put").status, 404);
    // Inside a transaction too, and the outcome does not echo it either.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": cases[4].1.clone(), "request": {"method": "POST", "url": "Patient"}}]});
    let r = post_bundle(&s, &tx);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(!r.text.contains(cases[4].2));
    // The valid ones are accepted: woman (+40) and man, with matching birth dates.
    s.create(&with_nik(NIK_SITI, "female", Some("1990-08-05")));
    s.create(&with_nik("3174050508900003", "male", Some("1990-08-05")));
    s.create(&with_nik("9274056908000001", "female", Some("2000-08-29"))); // a woman born 29-08-2000 in Papua
    assert_eq!(identifier_search(&s, NIK_SYSTEM, NIK_SITI).json["total"], 1);
}

/// A NIK names one person: a second Patient with a NIK already held is a conflict (409) that
/// names the existing Patient, whether created, updated, in a transaction or by concurrent
/// clients racing; a deleted Patient's NIK is free again.
#[test]
fn a_nik_already_held_is_a_conflict_naming_the_patient() {
    let inst = Instance::init();
    let s = inst.serve();
    let nik = "3174054508900003";
    let body = json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}], "gender": "female", "birthDate": "1990-08-05"});
    let first = s.create(&body);
    let id = first["id"].as_str().unwrap().to_string();
    // The same NIK, spelled with spaces around it, is the same NIK.
    let mut spaced = body.clone();
    spaced["identifier"][0]["value"] = json!(format!(" {nik} "));
    for b in [&body, &spaced] {
        let r = reply(s.post("Patient", b));
        assert_eq!(r.status, 409, "{}", r.text);
        r.assert_outcome();
        assert_eq!(r.json["issue"][0]["code"], "duplicate");
        assert!(r.text.contains(&format!("Patient/{id}")), "the existing Patient is named: {}", r.text);
        assert!(!r.text.contains(nik), "the NIK is not echoed: {}", r.text);
    }
    // Another Patient cannot take it by update; the holder itself can be updated.
    let other = s.create(&json!({"resourceType": "Patient", "gender": "male"}));
    let mut taken = other.clone();
    taken["identifier"] = body["identifier"].clone();
    let r = reply(s.put(&format!("Patient/{}", other["id"].as_str().unwrap()), &taken));
    assert_eq!(r.status, 409, "{}", r.text);
    let mut same = first.clone();
    same["active"] = json!(true);
    assert_eq!(reply(s.put(&format!("Patient/{id}"), &same)).status, 200);
    // Two Patients of one transaction with the same NIK: the whole transaction is refused.
    let pair = |n: &str| json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": n}]});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": pair("3174050508900005"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": pair("3174050508900005"), "request": {"method": "POST", "url": "Patient"}}]});
    let r = post_bundle(&s, &tx);
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(identifier_search(&s, NIK_SYSTEM, "3174050508900005").json["total"], 0);
    // Eight registration desks racing with one NIK: one Patient.
    let racing = pair("3174050508900006");
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8).map(|_| sc.spawn(|| s.post("Patient", &racing).status().as_u16())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|c| **c == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|c| *c == 201 || *c == 409), "{statuses:?}");
    assert_eq!(identifier_search(&s, NIK_SYSTEM, "3174050508900006").json["total"], 1);
    // Once the holder is deleted, the NIK can be registered again.
    assert_eq!(s.delete(&format!("Patient/{id}")).status().as_u16(), 204);
    assert_eq!(reply(s.post("Patient", &body)).status, 201);
}

/// The data-quality flags of a Patient (`meta.tag` in the server's system).
fn quality_flags(p: &Value) -> Vec<String> {
    let tags = p["meta"]["tag"].as_array().cloned().unwrap_or_default();
    tags.iter().filter(|t| t["system"] == "https://brankas.id/fhir/CodeSystem/data-quality").map(|t| t["code"].as_str().unwrap().to_string()).collect()
}

/// A well-formed NIK that disagrees with the Patient's birth date or gender is real data (a NIK
/// keeps the date it was issued with; SATUSEHAT's own sandbox identities encode other dates):
/// it is stored, flagged and answered with a warning that echoes neither the NIK nor the date;
/// the flag is the server's, and goes when the registration is corrected.
#[test]
fn nik_disagreement_is_stored_flagged_and_warned() {
    let inst = Instance::init();
    let s = inst.serve();
    // SATUSEHAT's published sandbox patients (NIK, gender, birth date).
    for (nik, gender, birth) in [
        ("9271060312000001", "male", "1992-01-09"),
        ("9204014804000002", "female", "1989-11-03"),
        ("9104224509000003", "female", "1976-07-07"),
        ("9104223107000004", "male", "1977-09-03"),
    ] {
        let body = json!({"resourceType": "Patient", "identifier": [{"use": "official", "system": NIK_SYSTEM, "value": nik}],
            "active": true, "name": [{"use": "official", "text": "Pasien Sandbox"}], "gender": gender, "birthDate": birth});
        let r = reply(s.post("Patient", &body));
        assert_eq!(r.status, 201, "{nik}: {}", r.text);
        assert_eq!(quality_flags(&r.json), ["nik-birthdate-mismatch"], "{nik}");
        let found = identifier_search(&s, NIK_SYSTEM, nik);
        assert_eq!(found.json["total"], 1, "{nik}");
        assert_eq!(quality_flags(&found.json["entry"][0]["resource"]), ["nik-birthdate-mismatch"]);
    }
    // Asked for an OperationOutcome: a warning naming the elements, not their values.
    let body = json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": "3174054508900003"}], "gender": "male", "birthDate": "1990-08-06"});
    let r = with_headers(&s, reqwest::Method::POST, "Patient", Some(&body), &[("prefer", "return=OperationOutcome")]);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    let warnings: Vec<&Value> = r.json["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "warning").collect();
    assert_eq!(warnings.len(), 2, "{}", r.text);
    assert!(warnings.iter().all(|w| w["code"] == "business-rule"));
    assert_eq!(warnings[0]["expression"], json!(["Patient.identifier", "Patient.birthDate"]));
    assert_eq!(warnings[1]["expression"], json!(["Patient.identifier", "Patient.gender"]));
    for value in ["3174054508900003", "1990", "08-06"] {
        assert!(!r.text.contains(value), "the warning echoes {value}: {}", r.text);
    }
    let id = parse_location(r.header("location").unwrap()).1;
    // A client cannot set or clear the flag; a corrected registration loses it.
    let mut p = get(&s, &format!("Patient/{id}")).json;
    assert_eq!(quality_flags(&p), ["nik-birthdate-mismatch", "nik-gender-mismatch"]);
    p["meta"]["tag"] = json!([{"system": "https://brankas.id/fhir/CodeSystem/data-quality", "code": "nik-gender-mismatch"}, {"system": "http://example.org", "code": "x"}]);
    p["gender"] = json!("female");
    let r = reply(s.put(&format!("Patient/{id}"), &p));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(quality_flags(&r.json), ["nik-birthdate-mismatch"]);
    assert_eq!(r.json["meta"]["tag"].as_array().unwrap().len(), 2, "the client's own tag stays");
    p["birthDate"] = json!("1990-08-05");
    let r = reply(s.put(&format!("Patient/{id}"), &p));
    assert!(quality_flags(&r.json).is_empty(), "{}", r.text);
    // In a transaction, the entry's response carries the warning.
    let newborn = json!({"resourceType": "Patient", "gender": "female", "birthDate": "2024-01-01",
        "identifier": [{"system": NIK_SYSTEM, "value": "3174050101240001"}, {"system": NIK_IBU_SYSTEM, "value": "3174054508900003"}]});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": newborn, "request": {"method": "POST", "url": "Patient"}}]});
    let r = post_bundle(&s, &tx);
    assert_eq!(r.status, 200, "{}", r.text);
    let outcome = &r.json["entry"][0]["response"]["outcome"];
    assert_eq!(outcome["issue"][1]["expression"], json!(["Patient.identifier", "Patient.gender"]), "{}", r.text);
}

// ------------------------------------------------------------------------------------------
// 9. Discovery documents.
// ------------------------------------------------------------------------------------------

#[test]
fn metadata_and_smart_configuration_are_public() {
    let inst = Instance::init();
    let s = inst.serve();
    let anon = reqwest::blocking::Client::new();
    let r = reply(anon.get(s.url("metadata")).send().unwrap());
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("content-type").unwrap().starts_with("application/fhir+json"));
    assert_eq!(r.json["resourceType"], "CapabilityStatement");
    assert_eq!(r.json["fhirVersion"], "4.0.1");
    assert_eq!(r.json["kind"], "instance");
    let rest = &r.json["rest"][0];
    assert_eq!(rest["mode"], "server");
    let resources = rest["resource"].as_array().unwrap();
    let patient = resources.iter().find(|x| x["type"] == "Patient").expect("Patient listed");
    let params: BTreeSet<&str> = patient["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["identifier", "telecom", "phone", "name", "birthdate"] {
        assert!(params.contains(p), "Patient search param {p}");
    }
    let ident = patient["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == "identifier").unwrap();
    assert_eq!(ident["type"], "token");
    let obs = resources.iter().find(|x| x["type"] == "Observation").expect("Observation listed");
    assert!(obs["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "patient"));
    let token_uri = rest["security"]["extension"][0]["extension"].as_array().unwrap().iter().find(|e| e["url"] == "token").unwrap()["valueUri"].clone();
    assert_eq!(token_uri, json!(format!("{}/auth/token", s.root)));
    // The CapabilityStatement is itself a valid resource: it can be stored and read back.
    let mut cs = r.json.clone();
    cs["id"] = json!("server-cs");
    let put = reply(s.put("CapabilityStatement/server-cs", &cs));
    assert_eq!(put.status, 201, "{}", put.text);

    let sc = reply(anon.get(s.url(".well-known/smart-configuration")).send().unwrap());
    assert_eq!(sc.status, 200, "{}", sc.text);
    let te = sc.json["token_endpoint"].as_str().unwrap();
    assert!(te.ends_with("/auth/token"), "{te}");
    assert_eq!(te, format!("{}/auth/token", s.root));
    assert!(sc.json["grant_types_supported"].as_array().unwrap().contains(&json!("client_credentials")));
    // The token endpoint it names works.
    let tok = reply(anon.post(te).basic_auth(&s.client_id, Some(&s.client_secret)).form(&[("grant_type", "client_credentials")]).send().unwrap());
    assert_eq!(tok.status, 200);
    assert_eq!(tok.json["token_type"], "Bearer");
    // Everything else under /fhir needs the token.
    let denied = reply(anon.get(s.url("Patient?identifier=a|b")).send().unwrap());
    assert_eq!(denied.status, 401);
    denied.assert_outcome();
}

// ------------------------------------------------------------------------------------------
// Placement follows the data: an update that changes the subject moves the resource.
// ------------------------------------------------------------------------------------------

#[test]
fn update_that_changes_the_subject_moves_the_resource() {
    let inst = Instance::init();
    let s = inst.serve();
    let a = s.create(&json!({"resourceType": "Patient", "gender": "female"}))["id"].as_str().unwrap().to_string();
    let b = s.create(&json!({"resourceType": "Patient", "gender": "male"}))["id"].as_str().unwrap().to_string();
    let o = s.create(&obs_for(&format!("Patient/{a}"), "8867-4", "2024-01-01"));
    let oid = o["id"].as_str().unwrap().to_string();
    assert_eq!(ids_of(&get(&s, &format!("Observation?patient={a}")).json), [oid.as_str()]);
    let mut moved = o.clone();
    moved["subject"] = json!({"reference": format!("Patient/{b}")});
    let u = reply(s.put(&format!("Observation/{oid}"), &moved));
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(get(&s, &format!("Observation?patient={a}")).json["total"], 0);
    assert_eq!(ids_of(&get(&s, &format!("Observation?patient={b}")).json), [oid.as_str()]);
    assert_eq!(ids_of(&get(&s, &format!("Patient/{b}/Observation")).json), [oid.as_str()]);
    let ev_a: Vec<String> = ids_of(&get(&s, &format!("Patient/{a}/$everything")).json);
    assert_eq!(ev_a, [a.as_str()]);
    let ev_b: BTreeSet<String> = ids_of(&get(&s, &format!("Patient/{b}/$everything")).json).into_iter().collect();
    assert_eq!(ev_b, BTreeSet::from([b.clone(), oid.clone()]));
    // Both versions stay readable, each as written.
    assert_eq!(get(&s, &format!("Observation/{oid}/_history/1")).json["subject"]["reference"], json!(format!("Patient/{a}")));
    assert_eq!(get(&s, &format!("Observation/{oid}/_history/2")).json["subject"]["reference"], json!(format!("Patient/{b}")));
    assert_eq!(entries(&get(&s, &format!("Observation/{oid}/_history")).json).len(), 2);
    // Deleting it removes it from the new patient's searches.
    assert_eq!(s.delete(&format!("Observation/{oid}")).status(), 204);
    assert_eq!(get(&s, &format!("Observation?patient={b}")).json["total"], 0);
    assert_eq!(ids_of(&get(&s, &format!("Patient/{b}/$everything")).json), [b.as_str()]);
}

#[test]
fn transaction_conditional_create_of_clinical_resource_for_matched_patient() {
    let inst = Instance::init();
    let s = inst.serve();
    let p_urn = "urn:uuid:5b0c3c59-3f0b-4a57-9a49-6a0fdc1e0a01";
    let tx = || {
        let mut obs = obs_for(p_urn, "8867-4", "2024-05-01T10:00:00+07:00");
        obs["identifier"] = json!([{"system": "urn:test:lab", "value": "LAB-1"}]);
        // The Observation comes first: its condition must still run within the patient that the
        // later entry resolves to.
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:5b0c3c59-3f0b-4a57-9a49-6a0fdc1e0a02", "resource": obs,
             "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:test:lab|LAB-1"}},
            {"fullUrl": p_urn, "resource": patient_siti(), "request": {"method": "POST", "url": "Patient",
                "ifNoneExist": format!("identifier={NIK_SYSTEM}|{NIK_SITI}")}}
        ]})
    };
    let r1 = post_bundle(&s, &tx());
    assert_eq!(r1.status, 200, "{}", r1.text);
    let st1: Vec<&str> = entries(&r1.json).iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(st1, ["201 Created", "201 Created"]);
    let pid = parse_location(entries(&r1.json)[1]["response"]["location"].as_str().unwrap()).1;
    let oid = parse_location(entries(&r1.json)[0]["response"]["location"].as_str().unwrap()).1;
    assert_eq!(get(&s, &format!("Observation/{oid}")).json["subject"]["reference"], json!(format!("Patient/{pid}")));
    // The same bundle again (a re-sent message): both conditions match, nothing new.
    let r2 = post_bundle(&s, &tx());
    assert_eq!(r2.status, 200, "{}", r2.text);
    let st2: Vec<&str> = entries(&r2.json).iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(st2, ["200 OK", "200 OK"]);
    let again: Vec<String> = entries(&r2.json).iter().map(|e| parse_location(e["response"]["location"].as_str().unwrap()).1).collect();
    assert_eq!(again, [oid.clone(), pid.clone()]);
    // A new lab result for the same patient in the same shape is created, attached to her.
    let mut tx3 = tx();
    tx3["entry"][0]["resource"]["identifier"][0]["value"] = json!("LAB-2");
    tx3["entry"][0]["request"]["ifNoneExist"] = json!("identifier=urn:test:lab|LAB-2");
    let r3 = post_bundle(&s, &tx3);
    assert_eq!(r3.status, 200, "{}", r3.text);
    assert_eq!(entries(&r3.json)[0]["response"]["status"], "201 Created");
    assert_eq!(entries(&r3.json)[1]["response"]["status"], "200 OK");
    assert_eq!(get(&s, &format!("Observation?patient={pid}")).json["total"], 2);
}

// ------------------------------------------------------------------------------------------
// Result parameters: _elements and _summary.
// ------------------------------------------------------------------------------------------

#[test]
fn elements_and_summary_subset_results_and_say_so() {
    let inst = Instance::init();
    let s = inst.serve();
    let mut p = patient_siti();
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Siti</div>"});
    let pid = s.create(&p)["id"].as_str().unwrap().to_string();
    let q = format!("Patient?identifier={}%7C{NIK_SITI}", url_encode(NIK_SYSTEM));

    let r = get(&s, &format!("{q}&_elements=gender,birthDate"));
    assert_eq!(r.status, 200, "{}", r.text);
    let res = &entries(&r.json)[0]["resource"];
    let mut keys: Vec<&str> = res.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["birthDate", "gender", "id", "meta", "resourceType"]);
    assert!(res["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"), "{res}");

    let r = get(&s, &format!("{q}&_summary=data"));
    let res = &entries(&r.json)[0]["resource"];
    assert!(res.get("text").is_none() && res["name"].is_array(), "{res}");
    assert!(res["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));

    let r = get(&s, &format!("{q}&_summary=count"));
    assert_eq!((r.status, r.json["total"].as_u64()), (200, Some(1)));
    assert!(r.json.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()), "{}", r.text);

    // _summary=true: the elements the official definition marks isSummary (a Patient's
    // name, identifiers, gender, birth date; not its narrative).
    let r = get(&s, &format!("{q}&_summary=true"));
    assert_eq!(r.status, 200, "{}", r.text);
    let res = &entries(&r.json)[0]["resource"];
    assert!(res.get("text").is_none() && res["name"].is_array() && res["birthDate"].is_string(), "{res}");

    // Without result parameters, the whole stored resource, untagged.
    let r = get(&s, &format!("Patient/{pid}"));
    assert!(r.json.get("text").is_some() && r.json["meta"].get("tag").is_none(), "{}", r.text);

    // On reads too; and every trimmed answer is still valid R4: mandatory elements stay
    // (an Observation's status and code).
    let mut o = obs_for(&format!("Patient/{pid}"), "8867-4", "2026-11-01T08:00:00+07:00");
    o["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">nadi 80</div>"});
    o["note"] = json!([{"text": "catatan"}]);
    o["valueQuantity"] = json!({"value": 80, "unit": "/min"});
    let oid = s.create(&o)["id"].as_str().unwrap().to_string();
    for (query, has, lacks) in [
        ("_summary=text", vec!["text", "status", "code"], vec!["note", "valueQuantity", "subject"]),
        ("_summary=true", vec!["status", "code", "subject", "valueQuantity"], vec!["text", "note"]),
        ("_summary=data", vec!["note", "status"], vec!["text"]),
        ("_elements=note", vec!["note", "status", "code"], vec!["text", "subject"]),
    ] {
        for path in [format!("Observation/{oid}?{query}"), format!("Observation/{oid}/_history/1?{query}"), format!("Observation?patient={pid}&{query}")] {
            let r = get(&s, &path);
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            let res = if path.contains("?patient=") { entries(&r.json)[0]["resource"].clone() } else { r.json.clone() };
            for k in &has {
                assert!(res.get(*k).is_some(), "{path}: {k} kept: {res}");
            }
            for k in &lacks {
                assert!(res.get(*k).is_none(), "{path}: {k} dropped: {res}");
            }
            assert!(res["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"), "{path}: {res}");
            let mut plain = res.clone();
            plain["meta"].as_object_mut().unwrap().remove("tag");
            assert!(brankas_fhir::validate_resource(&plain).is_ok(), "{path}: not valid R4: {res}");
        }
    }
    assert_eq!(get(&s, &format!("Observation/{oid}?_summary=count")).status, 400);
}

/// Validation from the official definitions: what the JSON Schema cannot say is refused too,
/// each with the element it concerns and no value.
#[test]
fn validation_follows_the_official_definitions() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    let good = obs_for(&format!("Patient/{pid}"), "8867-4", "2026-11-01T08:00:00+07:00");
    assert_eq!(reply(s.post("Observation", &good)).status, 201);
    let mut no_status = good.clone();
    no_status.as_object_mut().unwrap().remove("status");
    let mut two_values = good.clone();
    two_values["valueString"] = json!("rahasia-nilai");
    two_values["valueBoolean"] = json!(true);
    let mut bad_ref = good.clone();
    bad_ref["performer"] = json!([{"reference": "not a ref"}]);
    let mut bad_code = good.clone();
    bad_code["status"] = json!("rahasia-status");
    let mut no_component_code = good.clone();
    no_component_code["component"] = json!([{"valueString": "rahasia-komponen"}]);
    for (what, body, path) in [
        ("missing status", no_status, "Observation.status"),
        ("two values", two_values, "Observation.value[x]"),
        ("reference form", bad_ref, "Observation.performer[0].reference"),
        ("required binding", bad_code, "Observation.status"),
        ("backbone cardinality", no_component_code, "Observation.component[0]"),
    ] {
        let r = reply(s.post("Observation", &body));
        assert_eq!(r.status, 422, "{what}: {}", r.text);
        r.assert_outcome();
        assert!(r.json["issue"].as_array().unwrap().iter().any(|i| i["expression"][0].as_str().is_some_and(|e| e.starts_with(path))), "{what}: {}", r.text);
        assert!(!r.text.contains("rahasia") && !r.text.contains("not a ref"), "{what}: echoes a value: {}", r.text);
    }
}

// ------------------------------------------------------------------------------------------
// Browser applications: CORS.
// ------------------------------------------------------------------------------------------

/// CORS answers only the configured origins: a preflight without a token, every answer
/// (refusals too) with the headers a browser needs; another origin, or a server without
/// `--cors-origin`, gets no CORS headers at all.
#[test]
fn cors_for_the_configured_origins_only() {
    let inst = Instance::init();
    let mut s = inst.serve_with(&["--insecure-http", "--cors-origin", "https://app.example", "--cors-origin", "http://localhost:3000"]);
    s.token = s.new_token();
    let acao = |r: &Response| r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string());
    let preflight = |origin: &str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("Patient"))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header("access-control-request-headers", "authorization,content-type,prefer,if-match")
            .send()
            .unwrap()
    };
    let pre = preflight("https://app.example");
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(acao(&pre).as_deref(), Some("https://app.example"));
    let allowed = pre.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    for h in ["authorization", "content-type", "prefer", "if-match"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert!(pre.headers()["access-control-allow-methods"].to_str().unwrap().contains("PATCH"));
    assert_eq!(acao(&preflight("http://localhost:3000")).as_deref(), Some("http://localhost:3000"));
    // Answers from the allowed origin, refusals included, can be read by its page.
    let r =
        s.http.get(s.url(&format!("Patient/{}", s.create(&patient_siti())["id"].as_str().unwrap()))).bearer_auth(&s.token).header("origin", "https://app.example").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(acao(&r).as_deref(), Some("https://app.example"));
    let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("etag") && exposed.contains("location"), "{exposed}");
    let r = s.http.get(s.url("Patient/x")).header("origin", "https://app.example").send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(acao(&r).as_deref(), Some("https://app.example"));
    // Another origin gets nothing it could use.
    assert_eq!(acao(&preflight("https://evil.example")), None);
    let r = s.http.get(s.url("metadata")).header("origin", "https://evil.example").send().unwrap();
    assert_eq!(acao(&r), None);
    let cap = reply(s.http.get(s.url("metadata")).send().unwrap());
    assert_eq!(cap.json["rest"][0]["security"]["cors"], true);
    s.stop();
    // Without --cors-origin: no CORS at all.
    let s = inst.serve();
    let r = s.http.get(s.url("metadata")).header("origin", "https://app.example").send().unwrap();
    assert_eq!(acao(&r), None);
    assert_eq!(reply(s.http.get(s.url("metadata")).send().unwrap()).json["rest"][0]["security"]["cors"], false);
}

/// Large JSON answers are compressed when the client accepts it (gzip, brotli), and decode to
/// the same answer; small ones, and clients that do not ask, get plain JSON.
#[test]
fn large_json_answers_are_compressed_on_request() {
    use std::io::Read as _;
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    for i in 0..20 {
        s.create(&obs_for(&format!("Patient/{pid}"), "8867-4", &format!("2024-01-{:02}", i + 1)));
    }
    let url = s.url(&format!("Observation?patient={pid}"));
    let plain = s.http.get(&url).bearer_auth(&s.token).send().unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain: Value = plain.json().unwrap();
    assert_eq!(plain["total"], 20);
    let zipped = s.http.get(&url).bearer_auth(&s.token).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["entry"], plain["entry"]);
    assert!(bytes.len() * 3 < text.len(), "{} compressed bytes for {}", bytes.len(), text.len());
    let br = s.http.get(&url).bearer_auth(&s.token).header("accept-encoding", "br").send().unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");
    // A small answer stays plain.
    let small = s.http.get(s.url("Patient/no-such")).bearer_auth(&s.token).header("accept-encoding", "gzip").send().unwrap();
    assert!(small.headers().get("content-encoding").is_none());
}

/// Instance history with `_since` (versions written from then on) and `_at` (the versions
/// current at some moment of the period), paged with the window kept in the next link.
#[test]
fn history_since_and_at() {
    let inst = Instance::init();
    let s = inst.serve();
    let mut p = s.create(&json!({"resourceType": "Patient", "gender": "female", "active": true}));
    let id = p["id"].as_str().unwrap().to_string();
    let mut stamps = vec![p["meta"]["lastUpdated"].as_str().unwrap().to_string()];
    for n in 2..=5 {
        std::thread::sleep(std::time::Duration::from_millis(15));
        p["active"] = json!(n % 2 == 0);
        p = reply(s.put(&format!("Patient/{id}"), &p)).json;
        stamps.push(p["meta"]["lastUpdated"].as_str().unwrap().to_string());
    }
    let versions = |q: &str| {
        let r = get(&s, &format!("Patient/{id}/_history?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        let v: Vec<String> = entries(&r.json).iter().map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap().to_string()).collect();
        (v, r.json["total"].as_u64().unwrap(), link(&r.json, "next"))
    };
    let enc = |t: &str| url_encode(t);
    let (v, total, _) = versions(&format!("_since={}", enc(&stamps[2])));
    assert_eq!((v, total), (vec!["5".to_string(), "4".into(), "3".into()], 3));
    // _at an instant of version 2: version 2 (written in that millisecond) and version 1 (current when it began).
    let (v, total, _) = versions(&format!("_at={}", enc(&stamps[1])));
    assert_eq!((v, total), (vec!["2".to_string(), "1".into()], 2));
    // A period before the resource existed: nothing; far in the future: the current version.
    assert_eq!(versions("_at=2001").0, Vec::<String>::new());
    assert_eq!(versions("_at=2999").0, vec!["5".to_string()]);
    // Paged: the window stays in the next link.
    let (v, total, next) = versions(&format!("_since={}&_count=2", enc(&stamps[1])));
    assert_eq!((v, total), (vec!["5".to_string(), "4".into()], 4));
    let next = next.expect("a next link");
    assert!(next.contains("_since="), "{next}");
    let page2 = get_abs(&s, &next);
    let v2: Vec<&str> = entries(&page2.json).iter().map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap()).collect();
    assert_eq!(v2, ["3", "2"]);
    assert_eq!(get(&s, &format!("Patient/{id}/_history?_since=yesterday")).status, 400);
    assert_eq!(get(&s, "Patient/no-such/_history?_since=2020").status, 404);
}

#[test]
fn everything_pages_and_takes_count_since_and_type() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    let mut early = BTreeSet::new();
    for i in 0..5 {
        early.insert(s.create(&obs_for(&format!("Patient/{pid}"), "8867-4", &format!("2026-11-0{}T08:00:00+07:00", i + 1)))["id"].as_str().unwrap().to_string());
    }
    let cond = s.create(&json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")}, "code": {"text": "demam"}}));
    // The mark: a time between the two groups (a directory entry's write time).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mark = s.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Wijaya"}]}))["meta"]["lastUpdated"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut late = BTreeSet::new();
    for i in 0..3 {
        late.insert(s.create(&obs_for(&format!("Patient/{pid}"), "8310-5", &format!("2026-11-1{i}T08:00:00+07:00")))["id"].as_str().unwrap().to_string());
    }
    let walk = |q: &str| -> (Vec<(String, String)>, u64, usize) {
        let r = get(&s, &format!("Patient/{pid}/$everything{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        let total = r.json["total"].as_u64().unwrap();
        let mut page = r.json;
        let (mut got, mut pages) = (Vec::new(), 0);
        loop {
            pages += 1;
            got.extend(entries(&page).iter().map(|e| (e["resource"]["resourceType"].as_str().unwrap().to_string(), e["resource"]["id"].as_str().unwrap().to_string())));
            let Some(next) = link(&page, "next") else { break };
            assert!(next.contains(&format!("/Patient/{pid}/$everything?_page=")) && !next.contains("_count") && !next.contains("_type"), "a sealed cursor: {next}");
            let r = get_abs(&s, &next);
            assert_eq!(r.status, 200, "{}", r.text);
            page = r.json;
        }
        (got, total, pages)
    };
    // Paged by _count: every resource once, the Patient first, over ceil(10/3) pages.
    let (got, total, pages) = walk("?_count=3");
    assert_eq!((total, got.len(), pages), (10, 10, 4), "{got:?}");
    assert_eq!(got[0], ("Patient".to_string(), pid.clone()));
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 10);
    // _type: only those types (the Patient only when asked for).
    let (got, total, _) = walk("?_type=Condition,Patient");
    assert_eq!(total, 2);
    assert_eq!(got, vec![("Patient".to_string(), pid.clone()), ("Condition".to_string(), cond["id"].as_str().unwrap().to_string())]);
    // _since: what changed after the mark.
    let (got, total, _) = walk(&format!("?_since={}&_count=2", url_encode(&mark)));
    assert_eq!(total, 3);
    assert_eq!(got.into_iter().map(|(_, id)| id).collect::<BTreeSet<_>>(), late);
    let (got, _, _) = walk("?_type=Observation");
    assert_eq!(got.into_iter().map(|(_, id)| id).collect::<BTreeSet<_>>(), early.union(&late).cloned().collect());
    // Unknown parameters are ignored and named (start/end select by clinical dates, which
    // is not supported), or refused when the client asks for strict handling.
    let r = get(&s, &format!("Patient/{pid}/$everything?start=2026-11-10&_count=1"));
    assert_eq!(r.status, 200);
    assert!(r.text.contains("'start' was ignored"), "{}", r.text);
    let r = with_headers(&s, reqwest::Method::GET, &format!("Patient/{pid}/$everything?start=2026-11-10"), None, &[("prefer", "handling=strict")]);
    assert_eq!(r.status, 400, "{}", r.text);
    for bad in ["_type=Practitioner", "_type=Nope", "_count=0", "_count=x", "_since=yesterday", "_count=1&_count=2", "_page=AAAA"] {
        let r = get(&s, &format!("Patient/{pid}/$everything?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        r.assert_outcome();
    }
    // A paging link is the client's own.
    let r = get(&s, &format!("Patient/{pid}/$everything?_count=1"));
    let next = link(&r.json, "next").unwrap();
    let other = inst.caller(&s, &["--name", "other", "--role", "facility-system", "--organization", "Organization/x", "--scopes", "system/*.rs"]);
    let r = reply(s.http.get(&next).bearer_auth(&other.token).send().unwrap());
    assert_eq!(r.status, 400, "{}", r.text);
}

#[test]
fn validate_and_meta_operations() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    let good = obs_for(&format!("Patient/{pid}"), "8867-4", "2026-11-01T08:00:00+07:00");
    let r = reply(s.post("Observation/$validate", &good));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["issue"][0]["severity"], "information");
    // Invalid: 200 with the errors, nothing stored, no value echoed.
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("status");
    bad["valueString"] = json!("rahasia");
    bad["valueBoolean"] = json!(true);
    let r = reply(s.post("Observation/$validate", &bad));
    assert_eq!(r.status, 200, "{}", r.text);
    let paths: Vec<&str> = r.json["issue"].as_array().unwrap().iter().filter_map(|i| i["expression"][0].as_str()).collect();
    assert_eq!(paths, ["Observation.status", "Observation.value[x]"], "{}", r.text);
    assert!(!r.text.contains("rahasia"));
    assert_eq!(get(&s, &format!("Observation?patient={pid}")).json["total"], 0, "nothing was stored");
    // In Parameters, as the operation defines; a NIK disagreeing with the birth date warns.
    let mut p = patient_siti();
    p["identifier"][0]["value"] = json!("3174054508900004");
    p["birthDate"] = json!("1991-01-01");
    let r = reply(s.post("Patient/$validate", &json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": p}]})));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["issue"].as_array().unwrap().iter().any(|i| i["severity"] == "warning"), "{}", r.text);
    assert!(!r.text.contains("3174054508900004"));
    let r = reply(s.post(
        "Patient/$validate",
        &json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}, {"name": "resource", "resource": patient_siti()}]}),
    ));
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(reply(s.post("Patient/$nope", &patient_siti())).status, 404);
    // The type in the URL decides.
    let r = reply(s.post("Patient/$validate", &good));
    assert_eq!(r.status, 200);
    assert_eq!(r.json["issue"][0]["severity"], "error", "{}", r.text);
    // A client that may only read the type cannot use it.
    let reader = inst.caller(&s, &["--name", "reader", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/Observation.rs"]);
    assert_eq!(s.call(&reader.token, reqwest::Method::POST, "Observation/$validate", Some(&good), &[]).0, 403);

    // $meta: the resource's meta, read as the resource is.
    let r = get(&s, &format!("Patient/{pid}/$meta"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["resourceType"], "Parameters");
    assert_eq!(r.json["parameter"][0]["valueMeta"]["versionId"], "1");
    assert!(r.json.get("name").is_none() && !r.text.contains(NIK_SITI));
    assert_eq!(s.call(&reader.token, reqwest::Method::GET, &format!("Patient/{pid}/$meta"), None, &[]).0, 403);
    assert_eq!(get(&s, "Patient/nobody/$meta").status, 404);

    // $meta-add and $meta-delete: a tag added once (a new version), not twice; removed.
    let tag = json!({"system": "urn:test:tags", "code": "rujukan"});
    let change = |meta: Value| json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": meta}]});
    let r = reply(s.post(&format!("Patient/{pid}/$meta-add"), &change(json!({"tag": [tag]}))));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.json["parameter"][0]["valueMeta"]["tag"].clone(), r.json["parameter"][0]["valueMeta"]["versionId"].as_str()), (json!([tag]), Some("2")));
    let r = reply(s.post(&format!("Patient/{pid}/$meta-add"), &change(json!({"tag": [tag], "profile": []}))));
    assert_eq!(r.json["parameter"][0]["valueMeta"]["versionId"], "2", "nothing changed, nothing written");
    assert_eq!(get(&s, &format!("Patient/{pid}")).json["meta"]["tag"], json!([tag]));
    let r = reply(s.post(&format!("Patient/{pid}/$meta-delete"), &change(json!({"tag": [{"system": "urn:test:tags", "code": "rujukan", "display": "any"}]}))));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.json["parameter"][0]["valueMeta"].get("tag"), r.json["parameter"][0]["valueMeta"]["versionId"].as_str()), (None, Some("3")));
    assert_eq!(get(&s, &format!("Patient/{pid}/_history")).json["total"], 3);
    // What it does not change, and malformed requests, are refused without echoing.
    for bad in [
        change(json!({"versionId": "9"})),
        change(json!({"tag": [{"system": "urn:x"}]})),
        change(json!({"profile": "http://example.org/p"})),
        json!({"resourceType": "Parameters", "parameter": []}),
        json!({"resourceType": "Patient"}),
    ] {
        let r = reply(s.post(&format!("Patient/{pid}/$meta-add"), &bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(!r.text.contains(NIK_SITI));
    }
    assert_eq!(reply(s.post(&format!("Patient/{pid}/$nope"), &change(json!({"tag": [tag]})))).status, 404);
    assert_eq!(reply(s.post("Patient/nobody/$meta-add", &change(json!({"tag": [tag]})))).status, 404);
    // It writes: a client that may only read cannot.
    let r = s.call(&reader.token, reqwest::Method::POST, &format!("Patient/{pid}/$meta-add"), Some(&change(json!({"tag": [tag]}))), &[]);
    assert_eq!(r.0, 403);
}

/// Errors in Indonesian when the client asks for it; English otherwise.
#[test]
fn errors_speak_indonesian_when_asked() {
    let inst = Instance::init();
    let s = inst.serve();
    let id = [("accept-language", "id-ID,id;q=0.9,en;q=0.5")];
    let r = with_headers(&s, reqwest::Method::GET, "Patient/nobody", None, &id);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-language"), Some("id"));
    assert_eq!(r.json["issue"][0]["diagnostics"], "sumber daya tidak ditemukan", "{}", r.text);
    assert_eq!(r.json["issue"][0]["details"]["text"], "Sumber daya tidak ditemukan.");
    // Validation issues, with the element names they carry.
    let pid = s.create(&patient_siti())["id"].as_str().unwrap().to_string();
    let mut o = obs_for(&format!("Patient/{pid}"), "8867-4", "2026-11-01T08:00:00+07:00");
    o.as_object_mut().unwrap().remove("status");
    let r = with_headers(&s, reqwest::Method::POST, "Observation", Some(&o), &id);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.json["issue"].as_array().unwrap().iter().any(|i| i["diagnostics"] == "status wajib diisi (kardinalitas minimum 1)"), "{}", r.text);
    // A message without a translation keeps its English, under an Indonesian category.
    let r = with_headers(&s, reqwest::Method::GET, "Observation?code=x", None, &id);
    assert_eq!(r.status, 400);
    assert!(r.json["issue"][0]["diagnostics"].as_str().unwrap().starts_with("pencarian tidak didukung"), "{}", r.text);
    assert!(r.json["issue"][0]["details"]["text"].is_string());
    // Without a token, too.
    let anon = reqwest::blocking::Client::new();
    let r = reply(anon.get(s.url("Patient/x")).header("accept-language", "id").send().unwrap());
    assert_eq!(r.status, 401);
    assert_eq!(r.json["issue"][0]["diagnostics"], "diperlukan token akses Bearer yang sah", "{}", r.text);
    // English by default, and when English is preferred.
    let r = get(&s, "Patient/nobody");
    assert_eq!(r.json["issue"][0]["diagnostics"], "resource not found");
    assert!(r.header("content-language").is_none());
    let r = with_headers(&s, reqwest::Method::GET, "Patient/nobody", None, &[("accept-language", "en-US,en;q=0.9,id;q=0.8")]);
    assert_eq!(r.json["issue"][0]["diagnostics"], "resource not found");
    // A batch's failed entries too; type history across patients is refused in Indonesian.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/nobody"}},
        {"request": {"method": "GET", "url": "Observation/_history"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
    ]});
    let r = with_headers(&s, reqwest::Method::POST, "", Some(&batch), &id);
    assert_eq!((r.status, r.header("content-language")), (200, Some("id")), "{}", r.text);
    let said = |i: usize| r.json["entry"][i]["response"]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_string();
    assert_eq!(said(0), "sumber daya tidak ditemukan");
    assert!(said(1).starts_with("pencarian tidak didukung: riwayat Observation disimpan per pasien"), "{}", said(1));
    assert_eq!(r.json["entry"][2]["resource"]["id"], json!(pid));
    let r = with_headers(&s, reqwest::Method::GET, "Observation/_history", None, &id);
    assert!(r.json["issue"][0]["diagnostics"].as_str().unwrap().contains("disimpan per pasien"), "{}", r.text);
    // Successful answers are not touched.
    let r = with_headers(&s, reqwest::Method::GET, &format!("Patient/{pid}"), None, &id);
    assert_eq!(r.status, 200);
    assert!(r.header("content-language").is_none());
}
