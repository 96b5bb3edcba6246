//! `brankas-bench compartment`: one page of a search inside a patient with many records.
//!
//! A patient gets N Observations (default 1,500, in transactions of 250); then
//! `Observation?patient=X&_count=50` is asked M times (default 200) one after another, and the
//! figures are the server's CPU seconds per search (from `/proc/<pid>/stat`) and the wall-clock
//! latency (median, 95th percentile). The same searches run twice on the same data:
//!
//! - **entries**: as written, each current record with its sealed search entry: the search
//!   decides on the entries and opens whole only the 50 records of the page;
//! - **whole records**: the `entries` table emptied (as for records written before entries
//!   existed): every Observation of the patient is opened whole, as searches did before.
//!
//! It also reports the sizes at rest: the mean sealed entry and the mean sealed resource.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{Ctx, Server, machine, round};

#[derive(clap::Args, Debug)]
pub struct CompartmentArgs {
    /// The `brankas` binary to measure (build it with `cargo build --release -p brankas`).
    #[arg(long, default_value = "target/release/brankas")]
    bin: PathBuf,
    /// Observations of the one patient.
    #[arg(long, default_value_t = 1500)]
    observations: usize,
    /// Searches per mode.
    #[arg(long, default_value_t = 200)]
    searches: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-compartment.json")]
    out: PathBuf,
    /// Directory for the data directory (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn observation(pid: &str, i: usize) -> Value {
    let codes = ["94558-4", "8310-5", "8867-4", "2345-7", "718-7", "4548-4"];
    json!({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": codes[i % codes.len()], "display": "Laboratory result"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": format!("20{:02}-{:02}-{:02}T08:{:02}:00+07:00", 15 + i % 10, 1 + i % 12, 1 + i % 28, i % 60),
        "valueQuantity": {"value": (i % 250) as f64 / 10.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
        "referenceRange": [{"low": {"value": 0.5, "unit": "mg/dL"}, "high": {"value": 20.0, "unit": "mg/dL"}, "text": "0.5-20 mg/dL"}],
        "note": [{"text": "Sample drawn fasting; repeat if symptoms persist. Reviewed by the attending clinician."}],
        "performer": [{"reference": "Organization/fac-0001"}],
    })
}

async fn searches(server: &Server, ctx: &Ctx, pid: &str, n: usize) -> Result<Value> {
    let url = format!("{}/Observation?patient={pid}&_count=50", ctx.fhir);
    // Warm: caches, prepared statements, the patient's gate.
    for _ in 0..3 {
        let r = ctx.client.get(&url).bearer_auth(&*ctx.token.get()).send().await?;
        ensure!(r.status() == 200, "search answered {}", r.status());
    }
    let cpu0 = server.cpu_seconds();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = ctx.client.get(&url).bearer_auth(&*ctx.token.get()).send().await?;
        ensure!(r.status() == 200, "search answered {}", r.status());
        let b: Value = serde_json::from_slice(&r.bytes().await?)?;
        ensure!(b["entry"].as_array().map_or(0, Vec::len) == 50, "a page of 50");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = server.cpu_seconds() - cpu0;
    lat.sort_by(f64::total_cmp);
    Ok(json!({
        "searches": n,
        "server_cpu_ms_per_search": round(cpu * 1000.0 / n as f64, 2),
        "latency_ms_median": round(lat[n / 2], 2),
        "latency_ms_p95": round(lat[(n * 95 / 100).min(n - 1)], 2),
    }))
}

pub fn run(a: CompartmentArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let work = a.work_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let server = Server::start(&a.bin, &work, "warn")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = rt.block_on(async {
        let (ctx, refresher) = Ctx::connect(&server).await?;
        let patient = json!({"resourceType": "Patient", "identifier": [{"system": "https://fhir.kemkes.go.id/id/nik", "value": "3171054708900001"}],
            "name": [{"family": "Halaman", "given": ["Sri"]}], "gender": "female", "birthDate": "1990-08-07"});
        let r = ctx.client.post(format!("{}/Patient", ctx.fhir)).bearer_auth(&*ctx.token.get()).header("content-type", "application/fhir+json").body(patient.to_string()).send().await?;
        ensure!(r.status() == 201, "creating the patient answered {}", r.status());
        let pid = serde_json::from_slice::<Value>(&r.bytes().await?)?["id"].as_str().context("no id")?.to_string();
        for start in (0..a.observations).step_by(250) {
            let entries: Vec<Value> =
                (start..a.observations.min(start + 250)).map(|i| json!({"resource": observation(&pid, i), "request": {"method": "POST", "url": "Observation"}})).collect();
            let body = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let r = ctx.client.post(&*ctx.fhir).bearer_auth(&*ctx.token.get()).header("content-type", "application/fhir+json").body(body.to_string()).send().await?;
            ensure!(r.status() == 200, "a transaction answered {}", r.status());
        }
        let db = rusqlite::Connection::open(work.join("data").join("brankas.db"))?;
        let (entries, entry_bytes, sealed_bytes): (i64, f64, f64) = db.query_row(
            "SELECT COUNT(*), AVG(LENGTH(e.entry)), AVG(LENGTH(v.sealed)) FROM entries e JOIN current c ON c.rkey = e.rkey JOIN versions v ON v.rowid = c.vrow WHERE c.rtype = 'Observation'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let with = searches(&server, &ctx, &pid, a.searches).await?;
        db.execute("DELETE FROM entries", [])?;
        let without = searches(&server, &ctx, &pid, a.searches).await?;
        refresher.abort();
        Ok::<_, anyhow::Error>(json!({
            "observations": a.observations,
            "query": "Observation?patient=X&_count=50",
            "with_entries": with,
            "whole_records": without,
            "at_rest": {"observations_with_entries": entries, "mean_sealed_entry_bytes": round(entry_bytes, 1), "mean_sealed_resource_bytes": round(sealed_bytes, 1)},
            "machine": machine(&work),
        }))
    })?;
    std::fs::write(&a.out, serde_json::to_vec_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
