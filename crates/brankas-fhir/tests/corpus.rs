//! Validates the shared real-world corpus: every official HL7 R4 example and
//! every Synthea bundle must produce zero issues.
//!
//! The corpus lives outside the repository; its location is `BRANKAS_CORPUS`
//! (default `<crate>/../../../shared/corpus`). When absent the tests print a
//! note and pass, so that the crate still tests on a bare checkout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use brankas_fhir::{Issue, validate_resource};
use serde_json::Value;

fn corpus_dir(sub: &str) -> Option<PathBuf> {
    let base = std::env::var_os("BRANKAS_CORPUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    let dir = base.join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("note: corpus directory {} not found; skipping", dir.display());
        None
    }
}

fn json_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read corpus dir").filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    files
}

/// Validates every file; returns (failures, files, total validation time).
fn run(dir: &PathBuf) -> (Vec<(String, Vec<Issue>)>, usize, Duration) {
    let files = json_files(dir);
    let mut failures = Vec::new();
    let mut spent = Duration::ZERO;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read corpus file");
        let v: Value = serde_json::from_str(&text).expect("corpus file is JSON");
        let start = Instant::now();
        let r = validate_resource(&v);
        spent += start.elapsed();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match r {
            Err(e) => failures.push((name, e.0)),
            Ok(()) => assert_rejects_unknown_element(v, &name),
        }
    }
    (failures, files.len(), spent)
}

/// Sanity check that acceptance is not vacuous: the same resource with one
/// extra root element must be rejected with exactly that one issue.
fn assert_rejects_unknown_element(mut v: Value, name: &str) {
    let Some(obj) = v.as_object_mut() else { return };
    obj.insert("bogusElement".into(), Value::Bool(true));
    let issues = validate_resource(&v).expect_err(name).0;
    assert_eq!(issues.len(), 1, "{name}: {issues:?}");
    assert!(issues[0].path.ends_with(".bogusElement"), "{name}: {issues:?}");
}

fn report(kind: &str, failures: &[(String, Vec<Issue>)], n: usize, spent: Duration) {
    println!("{kind}: {n} files, {} failing, validation {:?} total, {:?} per file", failures.len(), spent, spent / u32::try_from(n.max(1)).unwrap_or(u32::MAX));
    for (file, issues) in failures {
        for i in issues {
            println!("  {file}: {i}");
        }
    }
}

#[test]
fn official_r4_examples_validate() {
    let Some(dir) = corpus_dir("fhir-r4-examples") else {
        return;
    };
    // Warm the lazily compiled schema so it is not counted per example.
    let start = Instant::now();
    let _ = validate_resource(&serde_json::json!({"resourceType": "Patient"}));
    println!("schema compiled on first use in {:?}", start.elapsed());
    let (failures, n, spent) = run(&dir);
    report("official examples", &failures, n, spent);
    assert!(n >= 684, "expected the 684 official examples, found {n}");
    // The one official example that breaks its own StructureDefinition: Questionnaire qs1's
    // nested items have no `linkId`, which Questionnaire.item.linkId (1..1) requires.
    let failed: Vec<&str> = failures.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(failed, ["Questionnaire-qs1.json"], "official examples failing");
    assert!(failures[0].1.iter().all(|i| i.path.ends_with(".linkId") && i.code == brankas_fhir::IssueCode::Required), "{:?}", failures[0].1);
}

#[test]
fn synthea_bundles_validate() {
    let Some(dir) = corpus_dir("synthea") else {
        return;
    };
    let (failures, n, spent) = run(&dir);
    report("synthea bundles", &failures, n, spent);
    assert!(n > 0);
    assert!(failures.is_empty(), "{} synthea bundles failed", failures.len());
}
