//! `brankas-bench scale`: a synthetic population loaded into the embedded default, measured
//! at checkpoints (e.g. 10 thousand, 1 million and 6 million patients).
//!
//! The population comes from `brankas-synth` (deterministic from its seed). It is generated
//! in chunks of NDJSON (one patient transaction Bundle per line), each chunk imported with
//! `brankas import` and deleted, so the disk holds the database and one chunk at a time. At
//! each checkpoint the server is started on the data directory and measured: NIK lookups of
//! patients drawn uniformly from the whole population so far (1 and N clients), then read by
//! id, compartment search and `$everything` over a sample of those patients; bytes on disk per
//! patient; the server's resident memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use brankas_synth::{Mix, Population};
use clap::Args as ClapArgs;
use serde_json::{Value, json};

use crate::{Config, Ctx, Server, SplitMix, Target, brankas, children_cpu_seconds, dir_bytes, group, init, load, machine, round};

#[derive(ClapArgs, Debug)]
pub struct ScaleArgs {
    /// The `brankas` binary to measure.
    #[arg(long, default_value = "target/release/brankas")]
    bin: PathBuf,
    /// Patients in all.
    #[arg(long, default_value_t = 6_000_000)]
    patients: u64,
    /// Patient counts at which to measure (comma-separated); the total is always one.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000,6000000")]
    checkpoints: Vec<u64>,
    /// Seed of the population.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `minimal` (identity, one encounter, one antigen result) or `full` (the whole data mix).
    #[arg(long, default_value = "minimal")]
    mix: String,
    /// Patients per generated NDJSON chunk (one `brankas import` each).
    #[arg(long, default_value_t = 100_000)]
    chunk: u64,
    /// Directory for the data directory and the chunks (must have room: about 3 KB per
    /// minimal patient). Kept afterwards, so a run can be inspected.
    #[arg(long)]
    work_dir: PathBuf,
    /// Concurrent clients of the load phases (each lookup phase is also run with 1 client).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Measured seconds of each load phase.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Warm-up seconds before each load phase.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Patients resolved by NIK before the read, compartment and $everything phases.
    #[arg(long, default_value_t = 2000)]
    sample: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "scale-results.json")]
    out: PathBuf,
    /// BRANKAS_LOG of the measured server.
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Go on with an interrupted run: the data directory in `--work-dir` already holds the
    /// directory and patients `0 .. N` (an import commits whole groups in file order, so an
    /// interrupted chunk leaves a prefix; count the Patient rows to find N). The harness checks
    /// that patient N-1 is found and patient N is not, registers a new facility client and
    /// loads from patient N on. Load figures then cover only the patients loaded after the
    /// resumption; checkpoints at or below N are skipped.
    #[arg(long)]
    resume_from: Option<u64>,
    /// With `--resume-from` on a baseline build from before the client registry (whose
    /// bootstrap admin secret is not kept): a newer `brankas` whose `clients create`
    /// registers the load's client on the data directory.
    #[arg(long)]
    registry_bin: Option<PathBuf>,
}

pub fn run(a: ScaleArgs) -> Result<()> {
    let bin = std::fs::canonicalize(&a.bin).with_context(|| format!("brankas binary {} not found", a.bin.display()))?;
    ensure!(a.patients > 0 && a.chunk > 0, "--patients and --chunk must be positive");
    let mut checkpoints: Vec<u64> = a.checkpoints.iter().copied().filter(|&c| c > 0 && c < a.patients).collect();
    checkpoints.push(a.patients);
    let resume_from = a.resume_from.unwrap_or(0);
    ensure!(resume_from < a.patients, "--resume-from must be below --patients");
    checkpoints.retain(|&c| c > resume_from);
    checkpoints.sort_unstable();
    checkpoints.dedup();
    std::fs::create_dir_all(&a.work_dir)?;
    let work = std::fs::canonicalize(&a.work_dir)?;
    let mix: Mix = a.mix.parse().map_err(|_| anyhow::anyhow!("--mix is minimal or full"))?;
    let pop = Arc::new(Population::new(a.seed, mix));
    let cfg = Config { duration: Duration::from_secs_f64(a.duration), warmup: Duration::from_secs_f64(a.warmup), nik_patients: 0, point_reads: 0 };
    let started = Instant::now();
    let mut out = json!({
        "machine": machine(&work),
        "config": {"bin": bin.display().to_string(), "patients": a.patients, "checkpoints": checkpoints, "seed": a.seed,
                   "mix": a.mix, "chunk": a.chunk, "clients": a.clients, "duration_s": a.duration,
                   "warmup_s": a.warmup, "sample": a.sample, "server_log": a.server_log, "resumed_from": a.resume_from},
    });

    let chunk_file = work.join("chunk.ndjson");
    let (data, key, creds) = if resume_from > 0 {
        resume(&bin, &work, &a, pop.clone(), resume_from)?
    } else {
        let (data, key, creds) = init(&bin, &work.join("run"))?;
        // The directory (facilities, practitioners) first.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&chunk_file)?);
        serde_json::to_writer(&mut f, &pop.directory_bundle())?;
        f.write_all(b"\n")?;
        f.flush()?;
        drop(f);
        import_chunk(&bin, &data, &key, &chunk_file, 1)?;
        (data, key, creds)
    };

    let mut loaded = resume_from;
    let (mut gen_secs, mut import_secs, mut import_cpu, mut gen_bytes, mut resources) = (0.0f64, 0.0f64, 0.0f64, 0u64, 0u64);
    let mut points = Vec::new();
    for &cp in &checkpoints {
        while loaded < cp {
            let n = a.chunk.min(cp - loaded);
            let t = Instant::now();
            let bytes = write_chunk(&pop, loaded, n, &chunk_file)?;
            gen_secs += t.elapsed().as_secs_f64();
            gen_bytes += bytes;
            let cpu0 = children_cpu_seconds();
            let t = Instant::now();
            let stats = import_chunk(&bin, &data, &key, &chunk_file, n)?;
            let secs = t.elapsed().as_secs_f64();
            import_secs += secs;
            import_cpu += children_cpu_seconds() - cpu0;
            resources += stats["resources"].as_u64().unwrap_or(0);
            loaded += n;
            eprintln!(
                "  {} patients loaded ({:.0} patients/s in this chunk, {:.0} overall; {:.1} GB on disk; {:.0} s so far)",
                group(loaded as i64),
                n as f64 / secs,
                (loaded - resume_from) as f64 / import_secs,
                dir_bytes(&data) as f64 / 1e9,
                started.elapsed().as_secs_f64()
            );
        }
        std::fs::remove_file(&chunk_file).ok();
        eprintln!("checkpoint at {} patients", group(cp as i64));
        let mut point = json!({
            "patients": cp, "resources": resources, "loaded_in_this_run": cp - resume_from,
            "load_seconds": round(import_secs, 1), "load_patients_per_s": round((cp - resume_from) as f64 / import_secs, 0),
            "load_resources_per_s": round(resources as f64 / import_secs, 0), "load_cpu_cores": round(import_cpu / import_secs, 2),
            "generate_seconds": round(gen_secs, 1), "generated_bytes": gen_bytes,
            "data_dir_bytes": dir_bytes(&data), "bytes_per_patient": round(dir_bytes(&data) as f64 / cp as f64, 0),
        });
        let measured = measure(&bin, &data, &key, &creds, &work, &a, &cfg, pop.clone(), cp)?;
        for (k, v) in measured.as_object().into_iter().flatten() {
            point[k] = v.clone();
        }
        eprintln!("{}", serde_json::to_string(&point)?);
        points.push(point);
        out["checkpoints"] = Value::Array(points.clone());
        out["wall_seconds"] = json!(round(started.elapsed().as_secs_f64(), 0));
        std::fs::write(&a.out, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    out["machine"]["loadavg_at_end"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("{}", markdown(&out));
    eprintln!("results written to {}", a.out.display());
    Ok(())
}

/// Picks up the data directory of an interrupted run holding patients `0 .. n`.
fn resume(bin: &Path, work: &Path, a: &ScaleArgs, pop: Arc<Population>, n: u64) -> Result<(PathBuf, PathBuf, Value)> {
    let (data, key) = (work.join("run").join("data"), work.join("run").join("master.key"));
    ensure!(data.join("brankas.db").is_file() && key.is_file(), "--resume-from: no data directory and key in {}", work.join("run").display());
    let registry = a.registry_bin.as_deref().unwrap_or(bin);
    ensure!(crate::has_access_control(registry), "--resume-from on a build without `brankas clients`: give --registry-bin");
    let creds = crate::facility_client(registry, &data, &key)?;
    let server = Server::start_existing(bin, &data, &key, &creds, &work.join(format!("server-resume-{n}.log")), &a.server_log)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (ctx, refresher) = Ctx::connect(&server).await?;
        crate::resolve_nik(&ctx, &pop.identity(n - 1).nik).await.context("--resume-from: patient N-1 is not loaded")?;
        let next = crate::lookup_nik(&ctx, &pop.identity(n).nik).await?;
        ensure!(next.is_empty(), "--resume-from: patient N is already loaded");
        refresher.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    drop(server);
    eprintln!("resuming after {} patients", group(n as i64));
    Ok((data, key, creds))
}

/// Patients `first .. first + n` as NDJSON lines; returns the bytes written.
fn write_chunk(pop: &Population, first: u64, n: u64, path: &Path) -> Result<u64> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut bytes = 0u64;
    let mut line = Vec::new();
    for i in first..first + n {
        line.clear();
        serde_json::to_writer(&mut line, &pop.patient_bundle(i))?;
        line.push(b'\n');
        f.write_all(&line)?;
        bytes += line.len() as u64;
    }
    f.flush()?;
    Ok(bytes)
}

fn import_chunk(bin: &Path, data: &Path, key: &Path, file: &Path, units: u64) -> Result<Value> {
    let mut cmd = brankas(bin, "warn");
    cmd.arg("import").arg("--data-dir").arg(data).arg("--key-file").arg(key).arg("--quiet");
    if crate::has_access_control(bin) {
        cmd.arg("--organization").arg("Organization/fac-0001");
    }
    let o = cmd.arg(file).output()?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stats: Value = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    ensure!(o.status.success(), "brankas import failed ({}): {stdout} {}", o.status, String::from_utf8_lossy(&o.stderr));
    ensure!(stats["failed"] == 0 && stats["units"].as_u64() == Some(units), "import of {units} units: {stats}");
    Ok(stats)
}

/// Resident memory of a process: (VmRSS, VmHWM) in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[allow(clippy::too_many_arguments)]
fn measure(bin: &Path, data: &Path, key: &Path, creds: &Value, work: &Path, a: &ScaleArgs, cfg: &Config, pop: Arc<Population>, n: u64) -> Result<Value> {
    let server = Server::start_existing(bin, data, key, creds, &work.join(format!("server-{n}.log")), &a.server_log)?;
    let rss_start = rss(server.pid);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let r = rt.block_on(async {
        let (ctx, refresher) = Ctx::connect(&server).await?;
        let mut o = json!({});
        let population = Target::Population(pop.clone(), n);
        o["nik_lookup_1_client"] = load(&server, &ctx, population.clone(), 1, cfg).await?;
        o["nik_lookup"] = load(&server, &ctx, population, a.clients, cfg).await?;
        // Resolve a sample of patients (uniform over the population) to their ids.
        let mut rng = SplitMix(a.seed ^ n);
        let mut ids = Vec::with_capacity(a.sample);
        for _ in 0..a.sample.max(1) {
            let i = rng.next() % n;
            ids.push(crate::resolve_nik(&ctx, &pop.identity(i).nik).await?);
        }
        let ids = Arc::new(ids);
        let reads: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("Patient/{id}")).collect());
        o["read_patient_by_id"] = load(&server, &ctx, Target::Read(reads), a.clients, cfg).await?;
        o["compartment_search"] = load(&server, &ctx, Target::Compartment(ids.clone()), a.clients, cfg).await?;
        o["everything"] = load(&server, &ctx, Target::Everything(ids), a.clients, cfg).await?;
        refresher.abort();
        Ok::<_, anyhow::Error>(o)
    });
    let rss_end = rss(server.pid);
    drop(server);
    let mut o = r?;
    o["server_rss_bytes_at_start"] = json!(rss_start.0);
    o["server_rss_bytes_after_load"] = json!(rss_end.0);
    o["server_peak_rss_bytes"] = json!(rss_end.1);
    Ok(o)
}

fn markdown(o: &Value) -> String {
    let c = &o["config"];
    let mut t = format!(
        "Population: seed {}, mix {}, {} patients; load phases {} s after {} s warm-up, {} clients.\n\n",
        c["seed"],
        c["mix"].as_str().unwrap_or(""),
        c["patients"],
        c["duration_s"],
        c["warmup_s"],
        c["clients"]
    );
    t.push_str("| patients | load time | load rate | bytes on disk / patient | server RSS | NIK lookup, 1 client p50 / p99 | NIK lookup, N clients req/s, p50 / p99 | read by id req/s | compartment search req/s, p99 | $everything req/s, p99 |\n");
    t.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for p in o["checkpoints"].as_array().into_iter().flatten() {
        let f = |ptr: &str| p.pointer(ptr).and_then(Value::as_f64).unwrap_or(f64::NAN);
        t.push_str(&format!(
            "| {} | {:.0} s | {:.0} patients/s ({:.0} resources/s, {:.2} cores) | {:.0} B | {:.0} MB | {} / {} ms | {:.0}, {} / {} ms | {:.0} | {:.0}, {} ms | {:.0}, {} ms |\n",
            group(f("/patients") as i64),
            f("/load_seconds"),
            f("/load_patients_per_s"),
            f("/load_resources_per_s"),
            f("/load_cpu_cores"),
            f("/bytes_per_patient"),
            f("/server_peak_rss_bytes") / 1e6,
            f("/nik_lookup_1_client/latency_ms/p50"),
            f("/nik_lookup_1_client/latency_ms/p99"),
            f("/nik_lookup/requests_per_s"),
            f("/nik_lookup/latency_ms/p50"),
            f("/nik_lookup/latency_ms/p99"),
            f("/read_patient_by_id/requests_per_s"),
            f("/compartment_search/requests_per_s"),
            f("/compartment_search/latency_ms/p99"),
            f("/everything/requests_per_s"),
            f("/everything/latency_ms/p99"),
        ));
    }
    t
}
