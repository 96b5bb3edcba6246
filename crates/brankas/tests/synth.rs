//! `brankas synth`: deterministic output, and what it writes imports cleanly.

mod common;

use std::process::Command;

use common::{BIN, Instance};
use serde_json::Value;

fn synth(args: &[&str]) -> Vec<u8> {
    let out = Command::new(BIN).arg("synth").args(args).output().expect("run brankas synth");
    assert!(out.status.success(), "synth failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn same_seed_same_bytes() {
    for mix in ["minimal", "full"] {
        let a = synth(&["--patients", "5", "--seed", "77", "--mix", mix]);
        let b = synth(&["--patients", "5", "--seed", "77", "--mix", mix]);
        assert_eq!(a, b);
        assert_ne!(a, synth(&["--patients", "5", "--seed", "78", "--mix", mix]));
        let lines: Vec<&[u8]> = a.split(|&c| c == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 6, "directory + 5 patients");
        for l in lines {
            let v: Value = serde_json::from_slice(l).unwrap();
            assert_eq!(v["type"], "transaction");
        }
    }
}

#[test]
fn bundles_format_writes_one_file_per_patient() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    synth(&["--patients", "2", "--format", "bundles", "--out", out.to_str().unwrap()]);
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["000000-directory.json", "patient-000000001.json", "patient-000000002.json"]);
}

#[test]
fn generated_population_imports_without_failures() {
    let inst = Instance::init();
    let gen_dir = inst.root.path().join("gen");
    synth(&["--patients", "30", "--seed", "5", "--mix", "full", "--out", gen_dir.to_str().unwrap()]);
    let file = gen_dir.join("population.ndjson");
    let out = inst.cli(&["import", "--quiet", file.to_str().unwrap()]);
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).expect("import prints JSON");
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["units"], 31, "{stats}");
    assert!(stats["resources"].as_u64().unwrap() > 30 * 5, "{stats}");
}
