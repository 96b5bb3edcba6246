//! Imports that can be killed and run again (issue 14, finding 3): `brankas import` killed
//! with SIGKILL at random points and re-run to the end leaves exactly the state of one clean
//! run (no patient twice, the same records per patient), and every imported patient has its
//! audit records, written before its data was committed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Instance, Server};
use serde_json::Value;

/// Thirty Synthea patients and the two support bundles (hospitals, practitioners).
fn input(dir: &Path) -> Vec<PathBuf> {
    let src = common::corpus().join("synthea");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("the Synthea corpus at {}: {e}", src.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let support: Vec<PathBuf> = files.iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('_')).cloned().collect();
    let patients: Vec<PathBuf> = files.iter().filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_')).take(30).cloned().collect();
    assert_eq!(support.len(), 2);
    std::fs::create_dir_all(dir).unwrap();
    for f in support.iter().chain(&patients) {
        std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
    }
    patients.iter().map(|f| dir.join(f.file_name().unwrap())).collect()
}

fn import_cmd(inst: &Instance, dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["import", "--quiet", "--organization", "Organization/test-facility"]).arg(dir).arg("--data-dir").arg(inst.data_dir()).arg("--key-file").arg(inst.key_file());
    c
}

fn import_to_end(inst: &Instance, dir: &Path) -> Value {
    let out = import_cmd(inst, dir).output().unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("import prints one JSON object")
}

/// A small deterministic generator, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The patient of a Synthea bundle: its SSN.
fn ssn(bundle: &Path) -> String {
    let b: Value = serde_json::from_slice(&std::fs::read(bundle).unwrap()).unwrap();
    let p = b["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
    p["resource"]["identifier"].as_array().unwrap().iter().find(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn").unwrap()["value"].as_str().unwrap().to_string()
}

/// The ids of the patients with this SSN.
fn by_ssn(s: &Server, ssn: &str) -> Vec<String> {
    let (st, b) = s.get_as(&s.token, &format!("Patient?identifier=http%3A%2F%2Fhl7.org%2Ffhir%2Fsid%2Fus-ssn%7C{ssn}"));
    assert_eq!(st, 200, "{b}");
    b["entry"].as_array().map(|e| e.iter().map(|x| x["resource"]["id"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn everything_total(s: &Server, pid: &str) -> u64 {
    let (st, b) = s.get_as(&s.token, &format!("Patient/{pid}/$everything?_count=1"));
    assert_eq!(st, 200, "{b}");
    b["total"].as_u64().unwrap()
}

fn directory_count(s: &Server, t: &str) -> u64 {
    let (st, b) = s.get_as(&s.token, &format!("{t}?_summary=count"));
    assert_eq!(st, 200, "{b}");
    b["total"].as_u64().unwrap()
}

#[test]
fn an_import_killed_at_random_points_and_run_again_equals_one_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    let patients = input(&dir);

    // One clean run first: how long it takes places the kill points within an import.
    let clean = Instance::init();
    let started = std::time::Instant::now();
    let once = import_to_end(&clean, &dir);
    let whole = started.elapsed().as_millis() as u64;
    assert_eq!(once["failed"], 0, "{once}");

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill points seeded with {seed}; a clean run took {whole} ms");
    let mut rng = Rng(seed);
    let killed = Instance::init();
    for round in 0..3 {
        let mut child = import_cmd(&killed, &dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Somewhere between 15% and 85% of a whole run.
        let after = whole * 15 / 100 + rng.below((whole * 70 / 100).max(1));
        std::thread::sleep(Duration::from_millis(after));
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("round {round}: killed after {after} ms");
    }
    let resumed = import_to_end(&killed, &dir);
    assert_eq!(resumed["failed"], 0, "{resumed}");
    assert_eq!(resumed["units"], 32, "{resumed}");

    let a = killed.serve();
    let b = clean.serve();
    for t in ["Organization", "Practitioner", "Location"] {
        assert_eq!(directory_count(&a, t), directory_count(&b, t), "{t}s after the killed and resumed import");
    }
    let officer = a.token_for(&killed.officer_id, &killed.officer_secret);
    for f in &patients {
        let ssn = ssn(f);
        let ids = by_ssn(&a, &ssn);
        assert_eq!(ids.len(), 1, "{}: one patient after the killed and resumed import, found {ids:?}", f.display());
        let clean_ids = by_ssn(&b, &ssn);
        assert_eq!(clean_ids.len(), 1);
        assert_eq!(everything_total(&a, &ids[0]), everything_total(&b, &clean_ids[0]), "{}: the patient's records", f.display());
        // The patient's import is audited, under the operator, naming the Patient written.
        let (st, log) = a.get_as(&officer, &format!("AuditEvent?patient={}&subtype=import", ids[0]));
        assert_eq!(st, 200, "{log}");
        let events = log["entry"].as_array().cloned().unwrap_or_default();
        let names_patient = |e: &Value| {
            e["resource"]["entity"].as_array().unwrap().iter().any(|x| x["what"]["reference"].as_str().is_some_and(|r| r.starts_with(&format!("Patient/{}/_history/", ids[0]))))
        };
        assert!(events.iter().any(names_patient), "{}: no audit record of its import: {log}", f.display());
    }
    drop(a);
    drop(b);
    let out = killed.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify after the kills: {}", String::from_utf8_lossy(&out.stdout));
    // Imported once, it is never imported twice: the clean run's input, run again, is skipped.
    assert_eq!(once["skipped"], 0, "{once}");
    let again = import_to_end(&clean, &dir);
    assert_eq!((again["skipped"].as_u64(), again["resources"].as_u64()), (Some(32), Some(0)), "a second run of the same input: {again}");
}
