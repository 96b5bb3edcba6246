//! Keeps the benchmark harness working: runs `brankas-bench --smoke` (3 small Synthea
//! Bundles, 1-second phases) against the `brankas` binary of the same build, and checks that
//! every stage produced a figure. It measures nothing; it only proves the pipeline runs.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn corpus() -> PathBuf {
    std::env::var_os("BRANKAS_CORPUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
}

/// The `brankas` binary built beside this one (`cargo test --workspace` builds both).
fn brankas_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BRANKAS_BIN") {
        return Some(PathBuf::from(p));
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_brankas-bench"));
    let p = bench.with_file_name(format!("brankas{}", std::env::consts::EXE_SUFFIX));
    p.is_file().then_some(p)
}

#[test]
fn smoke_run_produces_every_figure() {
    let corpus = corpus();
    if !corpus.join("synthea").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "corpus not found at {} (set BRANKAS_CORPUS)", corpus.display());
        eprintln!("NOTE: corpus not found at {}; skipping (set BRANKAS_CORPUS)", corpus.display());
        return;
    }
    let Some(bin) = brankas_bin() else {
        assert!(std::env::var_os("CI").is_none(), "brankas binary not built: run cargo test --workspace");
        eprintln!("NOTE: the brankas binary is not built next to brankas-bench; skipping (cargo test --workspace, or set BRANKAS_BIN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let o = Command::new(env!("CARGO_BIN_EXE_brankas-bench"))
        .arg("--smoke")
        .arg("--bin")
        .arg(&bin)
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--server-log")
        .arg("warn")
        .output()
        .expect("run brankas-bench");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "brankas-bench --smoke failed:\n{stderr}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| # | measurement |"), "no Markdown table:\n{table}");
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for p in [
        "/floor_sqlite/insert_one_tx_per_bundle/resources_per_s",
        "/floor_sqlite/insert_64_bundles_per_tx/resources_per_s",
        "/floor_sqlite/point_read_1_thread/reads_per_s",
        "/floor_cpu/seal_aws_lc_raw/mb_per_s",
        "/floor_cpu/seal_brankas_vault/mb_per_s",
        "/floor_cpu/json_parse/mb_per_s",
        "/floor_cpu/r4_validate/resources_per_s",
        "/import/resources_per_s",
        "/http_ingest/resources_per_s",
        "/http_floor_health/requests_per_s",
        "/read_by_id/requests_per_s",
        "/read_by_id/latency_ms/p99",
        "/nik_lookup/requests_per_s",
        "/nik_lookup/latency_ms/p50",
        "/nik_lookup_1_client/latency_ms/p99",
        "/ratios/import_vs_sqlite_one_tx_per_bundle",
        "/floor_file_copy/mb_per_s",
        "/compartment_search/requests_per_s",
        "/compartment_search/latency_ms/p99",
        "/everything/requests_per_s",
        "/ratios/import_vs_file_copy_mb_per_s",
    ] {
        let v = r.pointer(p).and_then(Value::as_f64).unwrap_or_else(|| panic!("{p} missing in {r:#}"));
        assert!(v > 0.0, "{p} = {v}");
    }
    assert_eq!(r["import"]["resources"], r["config"]["resources"]);
    assert_eq!(r["http_ingest"]["resources"], r["config"]["resources"]);
    assert_eq!(r["floor_cpu"]["r4_validate"]["invalid"], 0);
}

#[test]
fn scale_smoke_loads_a_tiny_population_and_measures_each_checkpoint() {
    let Some(bin) = brankas_bin() else {
        assert!(std::env::var_os("CI").is_none(), "brankas binary not built: run cargo test --workspace");
        eprintln!("NOTE: the brankas binary is not built next to brankas-bench; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scale.json");
    let o = Command::new(env!("CARGO_BIN_EXE_brankas-bench"))
        .args(["scale", "--patients", "300", "--checkpoints", "120", "--chunk", "100", "--mix", "full"])
        .args(["--duration", "0.5", "--warmup", "0.1", "--sample", "20", "--server-log", "warn", "--bin"])
        .arg(&bin)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run brankas-bench scale");
    assert!(o.status.success(), "brankas-bench scale failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let points = r["checkpoints"].as_array().expect("checkpoints");
    assert_eq!(points.iter().map(|p| p["patients"].as_u64().unwrap()).collect::<Vec<_>>(), [120, 300]);
    for p in points {
        for k in [
            "/load_patients_per_s",
            "/bytes_per_patient",
            "/server_peak_rss_bytes",
            "/nik_lookup_1_client/latency_ms/p99",
            "/nik_lookup/requests_per_s",
            "/read_patient_by_id/requests_per_s",
            "/compartment_search/requests_per_s",
            "/everything/requests_per_s",
        ] {
            let v = p.pointer(k).and_then(Value::as_f64).unwrap_or_else(|| panic!("{k} missing in {p:#}"));
            assert!(v > 0.0, "{k} = {v}");
        }
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("| patients |"), "no Markdown table");
}

#[test]
fn attachment_benchmark_runs() {
    let Some(bin) = brankas_bin() else {
        assert!(std::env::var_os("CI").is_none(), "brankas binary not built: run cargo test --workspace");
        eprintln!("NOTE: the brankas binary is not built next to brankas-bench; skipping (cargo test --workspace, or set BRANKAS_BIN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("attachments.json");
    let o = Command::new(env!("CARGO_BIN_EXE_brankas-bench"))
        .args(["attachments", "--size-mib", "8", "--bin"])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .expect("run brankas-bench attachments");
    assert!(o.status.success(), "brankas-bench attachments failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for (phase, key) in [("upload", "mib_s"), ("download", "mib_s"), ("upload", "server_rss_peak_above_idle_mib"), ("download", "server_rss_peak_above_idle_mib")] {
        assert!(r[phase][key].as_f64().is_some_and(|x| x >= 0.0), "{phase}.{key} missing: {r}");
    }
    assert!(r["floors_mib_s"]["vault_stream_sealing"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    assert!(r["stored_bytes"].as_u64().is_some_and(|b| b > 8 << 20), "the blob was stored sealed, a little larger: {r}");
}
