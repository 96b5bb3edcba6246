//! Tests over the shared public corpus (official R4 examples, Synthea
//! bundles). Skipped with a note when the corpus is absent.
//!
//! The corpus is found through `BRANKAS_CORPUS`, defaulting to
//! `shared/corpus` beside the repository.

use std::collections::BTreeSet;
use std::path::PathBuf;

use brankas_search::{Query, Registry};
use serde_json::Value;

fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("BRANKAS_CORPUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("NOTE: corpus not found at {}; skipping (set BRANKAS_CORPUS)", dir.display());
        None
    }
}

fn read(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "json"));
    v.sort();
    v
}

/// Every `Patient/<id>` literal reference anywhere in `v`, outside contained
/// resources: an upper bound for `patient_refs`.
fn all_patient_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "contained" {
                    continue;
                }
                if k == "reference"
                    && let Some(s) = x.as_str()
                {
                    let s = s.split("/_history/").next().unwrap_or(s);
                    if let Some((head, id)) = s.rsplit_once('/')
                        && (head == "Patient" || head.ends_with("/Patient"))
                    {
                        out.insert(id.to_owned());
                    }
                }
                all_patient_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| all_patient_refs(x, out)),
        _ => {}
    }
}

#[test]
fn patient_refs_on_official_examples() {
    let Some(dir) = corpus() else { return };
    let r = Registry::r4();
    let ex = dir.join("fhir-r4-examples");
    let load = |name: &str| read(&ex.join(name));

    assert_eq!(r.patient_refs("Observation", &load("Observation-example.json")), ["example"]);
    assert_eq!(r.patient_refs("Encounter", &load("Encounter-example.json")), ["example"]);
    assert_eq!(r.patient_refs("Condition", &load("Condition-example.json")), ["example"]);
    assert_eq!(r.patient_refs("AllergyIntolerance", &load("AllergyIntolerance-example.json")), ["example"]);
    assert_eq!(r.patient_refs("Coverage", &load("Coverage-9876B1.json")), ["4"]);
    assert_eq!(r.patient_refs("Appointment", &load("Appointment-example.json")), ["example"]);
    assert_eq!(r.patient_refs("Claim", &load("Claim-100150.json")), ["1"]);
    assert_eq!(r.patient_refs("CarePlan", &load("CarePlan-example.json")), ["example"]);
    assert_eq!(r.patient_refs("Patient", &load("Patient-example.json")), ["example"]);
    assert!(r.patient_refs("Provenance", &load("Provenance-example.json")).is_empty());

    let (mut files, mut in_compartment, mut with_patient) = (0, 0, 0);
    for path in json_files(&ex) {
        let v = read(&path);
        let Some(ty) = v.get("resourceType").and_then(Value::as_str) else {
            continue;
        };
        files += 1;
        assert!(r.is_resource_type(ty), "{ty}");
        let refs = r.patient_refs(ty, &v);
        if !r.in_patient_compartment(ty) {
            assert!(refs.is_empty(), "{}", path.display());
            continue;
        }
        in_compartment += 1;
        if ty == "Patient" {
            continue;
        }
        let mut bound = BTreeSet::new();
        all_patient_refs(&v, &mut bound);
        for id in &refs {
            assert!(bound.contains(id), "{}: {id} not referenced", path.display());
        }
        let unique: BTreeSet<_> = refs.iter().collect();
        assert_eq!(unique.len(), refs.len(), "{}: duplicates", path.display());
        if !refs.is_empty() {
            with_patient += 1;
        }
    }
    println!("{files} examples, {in_compartment} of a compartment type, {with_patient} non-Patient ones with a patient");
    assert!(with_patient > 150, "{with_patient}");
}

/// Every parameter of every example's type evaluates without panicking, and
/// `:missing=true` and `:missing=false` partition the examples.
#[test]
fn every_param_evaluates_on_every_example() {
    let Some(dir) = corpus() else { return };
    let r = Registry::r4();
    let mut evaluated = 0usize;
    for path in json_files(&dir.join("fhir-r4-examples")) {
        let v = read(&path);
        let Some(ty) = v.get("resourceType").and_then(Value::as_str) else {
            continue;
        };
        for p in r.params_for(ty).filter(|p| p.is_supported()) {
            let missing = |b: &str| Query::parse(r, ty, &[(format!("{}:missing", p.code), b.to_owned())]).unwrap_or_else(|e| panic!("{ty}.{}: {e}", p.code)).matches(&v);
            assert_ne!(missing("true"), missing("false"), "{ty}.{}", p.code);
            evaluated += 1;
        }
    }
    println!("{evaluated} (example, parameter) evaluations");
}

fn synthea_bundles(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v = json_files(&dir.join("synthea"));
    v.retain(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('_')));
    v
}

/// Rewrites the Patient entry's `urn:uuid:` fullUrl to `Patient/<uuid>` in
/// every reference, as a server does when it assigns ids in a transaction.
fn rewrite_patient_urn(bundle: &mut Value) -> Option<String> {
    let entries = bundle.get("entry")?.as_array()?;
    let (full, id) = entries.iter().find_map(|e| {
        let r = e.get("resource")?;
        (r.get("resourceType")?.as_str()? == "Patient").then(|| {
            let full = e.get("fullUrl")?.as_str()?.to_owned();
            let id = full.strip_prefix("urn:uuid:")?.to_owned();
            Some((full, id))
        })?
    })?;
    let to = format!("Patient/{id}");
    fn walk(v: &mut Value, from: &str, to: &str) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if k == "reference" && x.as_str() == Some(from) {
                        *x = Value::String(to.to_owned());
                    } else {
                        walk(x, from, to);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, from, to)),
            _ => {}
        }
    }
    walk(bundle, &full, &to);
    Some(id)
}

#[test]
fn synthea_entries_belong_to_their_patient() {
    let Some(dir) = corpus() else { return };
    let r = Registry::r4();
    let bundles = synthea_bundles(&dir);
    assert!(!bundles.is_empty());
    let mut checked = 0usize;
    for path in &bundles {
        let mut b = read(path);
        let id = rewrite_patient_urn(&mut b).unwrap_or_else(|| panic!("{}: no patient", path.display()));
        let pinned = |ty: &str| Query::parse(r, ty, &[("patient".to_owned(), id.clone())]).ok().filter(|q| q.pinned_patient() == Some(id.as_str()));
        for e in b["entry"].as_array().into_iter().flatten() {
            let res = &e["resource"];
            let ty = res["resourceType"].as_str().unwrap_or_default();
            if !r.in_patient_compartment(ty) {
                continue;
            }
            let mut res = res.clone();
            if ty == "Patient" {
                res["id"] = Value::String(id.clone());
            }
            let refs = r.patient_refs(ty, &res);
            assert_eq!(refs.first(), Some(&id), "{}: {ty} {:?}", path.display(), res.get("id"));
            // The same patient found by search: `patient=<id>` pins and matches.
            if ty != "Patient"
                && let Some(q) = pinned(ty)
            {
                assert!(q.matches(&res), "{}: {ty} not matched by patient=", path.display());
            }
            checked += 1;
        }
    }
    println!("{checked} Synthea compartment resources checked in {} bundles", bundles.len());
    assert!(checked > 10_000);
}

/// Date searches agree with a direct comparison of the effective dates.
#[test]
fn synthea_date_search_is_consistent() {
    let Some(dir) = corpus() else { return };
    let r = Registry::r4();
    let Some(path) = synthea_bundles(&dir).into_iter().next() else {
        return;
    };
    let b = read(&path);
    let obs: Vec<&Value> = b["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).filter(|r| r["resourceType"] == "Observation").collect();
    let year = |o: &Value| o["effectiveDateTime"].as_str().map(|s| s[..4].to_owned());
    let q = |v: &str| Query::parse(r, "Observation", &[("date".to_owned(), v.to_owned())]).unwrap();
    let (q2015, qge) = (q("2015"), q("ge2015"));
    for o in &obs {
        let Some(y) = year(o) else { continue };
        // Synthea writes +00:00 offsets, so the UTC year is the text's year.
        assert_eq!(q2015.matches(o), y == "2015");
        assert_eq!(qge.matches(o), y.as_str() >= "2015");
    }
    // Sorting by -date puts the newest first.
    let sort = Query::parse(r, "Observation", &[("_sort".to_owned(), "-date".to_owned())]).unwrap();
    let mut sorted: Vec<&Value> = obs.clone();
    sorted.sort_by(|a, b| sort.compare(a, b));
    let dates: Vec<&str> = sorted.iter().filter_map(|o| o["effectiveDateTime"].as_str()).collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]));
}
