//! Rough cost of `Query::matches` per resource over the Observations of the
//! largest Synthea bundle in the corpus.
//!
//! `cargo run --release -p brankas-search --example match_bench [bundle.json]`
//! (the corpus is found through `BRANKAS_CORPUS` like the tests).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use brankas_search::{Query, Registry};
use serde_json::Value;

fn main() {
    let path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        let dir = std::env::var_os("BRANKAS_CORPUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")).join("synthea");
        // The bundle with the most Observations.
        let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('_'))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((text.matches("\"resourceType\": \"Observation\"").count(), e.path()))
            })
            .collect();
        files.sort();
        files.pop().expect("no Synthea bundle").1
    });
    let text = std::fs::read_to_string(&path).expect("read bundle");
    let bundle: Value = serde_json::from_str(&text).expect("parse bundle");
    let patient_urn =
        bundle["entry"].as_array().into_iter().flatten().find(|e| e["resource"]["resourceType"] == "Patient").and_then(|e| e["fullUrl"].as_str()).unwrap_or_default().to_owned();
    let patient_id = patient_urn.trim_start_matches("urn:uuid:").to_owned();
    // As stored by the server: urn:uuid references rewritten to Patient/<id>.
    let text = text.replace(&format!("\"{patient_urn}\""), &format!("\"Patient/{patient_id}\""));
    let bundle: Value = serde_json::from_str(&text).expect("parse bundle");
    let obs: Vec<Value> = bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).filter(|r| r["resourceType"] == "Observation").collect();
    println!("{}: {} Observations", path.display(), obs.len());

    let t = Instant::now();
    let r = Registry::r4();
    println!("Registry::r4() first call (parse definitions, compile all expressions): {:?}", t.elapsed());

    let queries: &[&[(&str, &str)]] = &[
        &[("code", "http://loinc.org|8302-2")],
        &[("patient", &patient_id)],
        &[("date", "ge2015-01-01"), ("date", "lt2016")],
        &[("value-quantity", "gt100|http://unitsofmeasure.org|mg/dL")],
        &[("category", "laboratory"), ("code", "2093-3,2571-8,18262-6"), ("date", "ge2010")],
        &[("code:text", "body")],
        &[("combo-value-quantity", "lt80||mm[Hg]")],
        &[("subject", &format!("Patient/{patient_id}")), ("status", "final"), ("code", "8302-2"), ("date", "gt2000")],
    ];
    let rounds = 50;
    for q in queries {
        let pairs: Vec<(String, String)> = q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let query = Query::parse(r, "Observation", &pairs).expect("query");
        let t = Instant::now();
        for _ in 0..100 {
            black_box(Query::parse(r, "Observation", black_box(&pairs)).expect("query"));
        }
        let parse = t.elapsed() / 100;
        let mut hits = 0;
        let t = Instant::now();
        for _ in 0..rounds {
            hits = obs.iter().filter(|o| query.matches(black_box(o))).count();
        }
        let per = t.elapsed().as_nanos() as f64 / (rounds * obs.len()) as f64;
        let names: Vec<&str> = q.iter().map(|p| p.0).collect();
        println!("{:>7.0} ns/resource  {hits:>5} hits  parse {parse:>9.1?}  {names:?}", per);
    }

    let sort = Query::parse(r, "Observation", &[("_sort".into(), "-date".into())]).unwrap();
    let mut v: Vec<&Value> = obs.iter().collect();
    let t = Instant::now();
    sort.sort_resources(&mut v, |x| x);
    println!("sort_resources(-date) over {}: {:?}", v.len(), t.elapsed());
    let mut v: Vec<&Value> = obs.iter().collect();
    let t = Instant::now();
    v.sort_by(|a, b| sort.compare(a, b));
    println!("sort_by(compare) over {}: {:?}", v.len(), t.elapsed());

    let t = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        for o in &obs {
            n += r.patient_refs("Observation", black_box(o)).len();
        }
    }
    println!("patient_refs: {:.0} ns/resource ({n} refs)", t.elapsed().as_nanos() as f64 / (rounds * obs.len()) as f64);
}
