//! `brankas-bench`: a reproducible benchmark of Brankas against the shared corpus.
//!
//! Every figure is measured in one run on one machine, next to the floor it should be read
//! against:
//!
//! - **floors** (in this process, no Brankas code but the sealing primitive): the same JSON
//!   bytes of the Synthea resources inserted into a plain SQLite table with the store's pragmas
//!   (WAL, `synchronous=FULL`), one transaction per Bundle (what `brankas import` does for
//!   Bundle files) and 64 Bundles per transaction (the importer's NDJSON group); SQLite point
//!   reads; AES-256-GCM-SIV sealing with aws-lc-rs, raw and through `brankas_vault::DataKey`;
//!   JSON parsing and R4 schema validation on one core.
//! - **offline import**: `brankas init` + `brankas import` of the Synthea directory.
//! - **HTTP ingest**: `brankas serve --insecure-http` on loopback, the Bundles POSTed as
//!   transactions by N concurrent clients.
//! - **read-by-id**: GET of random ingested resources by 1 and by 16 concurrent clients for a
//!   fixed time after a warm-up, next to `GET /health` (the HTTP floor).
//! - **NIK lookup**: patients with synthetic, valid NIKs are created over HTTP, then found by
//!   `Patient?identifier=<NIK system>|<NIK>` (each answer checked: exactly that patient).
//!
//! Output: a JSON document (`--out`) and a Markdown table on stdout; progress on stderr.
//! Everything talks to 127.0.0.1 only, and every loop is bounded in count or time.
//! `--smoke` runs the whole pipeline on 3 small Bundles with 1-second phases, so that a test
//! can keep the harness working.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};

mod attach;
mod compartment;
mod scale;

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Load a synthetic population (brankas-synth) in chunks and measure at checkpoints.
    Scale(scale::ScaleArgs),
    /// Upload and download one large attachment; the machine's AEAD and file-copy floors.
    Attachments(attach::AttachArgs),
    /// One page of a search inside a patient with many records (search entries or not).
    Compartment(compartment::CompartmentArgs),
}

#[derive(Parser, Debug)]
#[command(name = "brankas-bench", about = "Benchmark Brankas against the shared corpus (loopback only)")]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The `brankas` binary to measure (build it with `cargo build --release -p brankas`).
    #[arg(long, default_value = "target/release/brankas")]
    bin: PathBuf,
    /// The corpus root (the directory holding `synthea/`). Default: $BRANKAS_CORPUS, else
    /// `../shared/corpus` beside the repository.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Seconds: 3 small Bundles, 1-second phases, 50 NIK patients. Checks the harness, not speed.
    #[arg(long)]
    smoke: bool,
    /// Use only the first N Bundles (by file name).
    #[arg(long)]
    bundles: Option<usize>,
    /// Concurrent clients of the HTTP ingest.
    #[arg(long, default_value_t = 4)]
    ingest_clients: usize,
    /// Concurrent clients of the read and lookup phases (each is also run with 1 client).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Measured seconds of each load phase (default 15; 1 with --smoke).
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up seconds before each load phase (default 3; 0.3 with --smoke).
    #[arg(long)]
    warmup: Option<f64>,
    /// Patients with a NIK to create and look up (default 1000; 50 with --smoke; at most 9999).
    #[arg(long)]
    nik_patients: Option<usize>,
    /// Directory for the databases (default: a fresh temporary directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// BRANKAS_LOG of the measured server (`info` logs one line per request, as in production).
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Worker threads of the load generator (it shares the machine with the server).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
}

struct Config {
    duration: Duration,
    warmup: Duration,
    nik_patients: usize,
    point_reads: usize,
}

/// One Synthea Bundle: its file bytes, and the compact JSON bytes of each entry's resource.
struct Bundle {
    name: String,
    bytes: Vec<u8>,
    resources: Vec<(String, Vec<u8>)>,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    match args.cmd.take() {
        Some(Cmd::Scale(a)) => return scale::run(a),
        Some(Cmd::Compartment(a)) => return compartment::run(a),
        Some(Cmd::Attachments(a)) => return attach::run(a),
        None => {}
    }
    let cfg = Config {
        duration: Duration::from_secs_f64(args.duration.unwrap_or(if args.smoke { 1.0 } else { 15.0 })),
        warmup: Duration::from_secs_f64(args.warmup.unwrap_or(if args.smoke { 0.3 } else { 3.0 })),
        nik_patients: args.nik_patients.unwrap_or(if args.smoke { 50 } else { 1000 }).clamp(1, 9999),
        point_reads: if args.smoke { 2_000 } else { 200_000 },
    };
    let bin = std::fs::canonicalize(&args.bin).with_context(|| format!("brankas binary {} not found (cargo build --release -p brankas)", args.bin.display()))?;
    let corpus = find_corpus(args.corpus.as_deref())?;
    let synthea = corpus.join("synthea");
    let tmp;
    let work = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("brankas-bench-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let started = Instant::now();

    // ----- corpus -----
    let (files, all) = select_bundles(&synthea, args.smoke, args.bundles)?;
    let bundles = load_bundles(&files)?;
    let n_res: usize = bundles.iter().map(|b| b.resources.len()).sum();
    let file_bytes: usize = bundles.iter().map(|b| b.bytes.len()).sum();
    let res_bytes: usize = bundles.iter().flat_map(|b| b.resources.iter().map(|r| r.1.len())).sum();
    eprintln!("corpus: {} bundles, {n_res} resources, {:.1} MB of files, {:.1} MB of resource JSON", bundles.len(), mb(file_bytes), mb(res_bytes));
    let mut out = json!({
        "machine": machine(&work),
        "config": {
            "smoke": args.smoke, "bin": bin.display().to_string(), "corpus": synthea.display().to_string(),
            "bundles": bundles.len(), "resources": n_res, "bundle_file_bytes": file_bytes, "resource_json_bytes": res_bytes,
            "ingest_clients": args.ingest_clients, "clients": args.clients, "client_threads": args.client_threads,
            "duration_s": cfg.duration.as_secs_f64(), "warmup_s": cfg.warmup.as_secs_f64(), "nik_patients": cfg.nik_patients,
            "server_log": args.server_log,
        },
    });

    // ----- floors -----
    eprintln!("(a) raw SQLite floor");
    let floor_db = work.join("floor");
    std::fs::create_dir_all(&floor_db)?;
    let reps = if args.smoke { 1 } else { 3 };
    let per_bundle = median_of(reps, "resources_per_s", |i| sqlite_floor(&floor_db.join(format!("per-bundle-{i}.db")), &bundles, 1))?;
    let grouped = median_of(reps, "resources_per_s", |i| sqlite_floor(&floor_db.join(format!("grouped-{i}.db")), &bundles, 64))?;
    let point = median_of(reps, "reads_per_s", |_| sqlite_point_reads(&floor_db.join("grouped-0.db"), n_res, cfg.point_reads))?;
    out["floor_sqlite"] = json!({
        "insert_one_tx_per_bundle": per_bundle, "insert_64_bundles_per_tx": grouped, "point_read_1_thread": point,
    });
    eprintln!("(b) sealing, parsing and validation on one core");
    out["floor_cpu"] = json!({
        "seal_aws_lc_raw": median_of(reps, "resources_per_s", |_| seal_raw(&bundles))?,
        "seal_brankas_vault": median_of(reps, "resources_per_s", |_| seal_vault(&bundles))?,
        "json_parse": median_of(reps, "resources_per_s", |_| json_parse(&bundles))?,
        "r4_validate": median_of(reps, "resources_per_s", |_| validate(&bundles))?,
    });
    out["floor_file_copy"] = median_of(reps, "mb_per_s", |i| file_copy(&files, &floor_db.join(format!("copy-{i}"))))?;

    // ----- offline import -----
    eprintln!("(c) brankas import");
    let input = if all { synthea.clone() } else { copy_inputs(&files, &work.join("input"))? };
    out["import"] = import(&bin, &work.join("import"), &input, n_res)?;

    // ----- HTTP -----
    eprintln!("(d-f) HTTP");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads.max(1)).enable_all().build()?;
    let bundles = Arc::new(bundles);
    let server = Server::start(&bin, &work.join("http"), &args.server_log)?;
    let http = rt.block_on(http_phases(&server, bundles.clone(), &args, &cfg));
    let server_log = server.log.clone();
    drop(server);
    let http = http.with_context(|| format!("HTTP phases failed (server log: {})", server_log.display()))?;
    for (k, v) in http.as_object().into_iter().flatten() {
        out[k] = v.clone();
    }
    // Every request of the HTTP phases left audit records (on a build that keeps an audit
    // log): verify the whole log, as an operator would.
    if has_audit_log(&bin) {
        eprintln!("(h) brankas audit verify");
        out["audit_verify"] = audit_verify(&bin, &work.join("http"))?;
    }
    out["ratios"] = ratios(&out);
    out["wall_seconds"] = json!(round(started.elapsed().as_secs_f64(), 1));
    out["machine"]["loadavg_at_end"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());

    let text = serde_json::to_string_pretty(&out)?;
    std::fs::write(&args.out, text + "\n").with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", markdown(&out));
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

/// Runs a floor `n` times and keeps the run with the median `key` (the floors take well under
/// a second each, so one run is at the mercy of a noisy neighbour); records every run's figure.
fn median_of(n: usize, key: &str, mut f: impl FnMut(usize) -> Result<Value>) -> Result<Value> {
    let mut runs = (0..n.max(1)).map(&mut f).collect::<Result<Vec<Value>>>()?;
    runs.sort_by(|a, b| a[key].as_f64().unwrap_or(0.0).total_cmp(&b[key].as_f64().unwrap_or(0.0)));
    let all: Vec<Value> = runs.iter().map(|r| r[key].clone()).collect();
    let mut m = runs.swap_remove(runs.len() / 2);
    m["runs"] = json!(all.len());
    m[format!("{key}_of_each_run")] = Value::Array(all);
    Ok(m)
}

// ----- corpus -----

fn find_corpus(arg: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match arg {
        Some(p) => vec![p.to_path_buf()],
        None => {
            let mut v = Vec::new();
            if let Some(e) = std::env::var_os("BRANKAS_CORPUS") {
                v.push(PathBuf::from(e));
            }
            v.push(PathBuf::from("../shared/corpus"));
            v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
            v
        }
    };
    for c in &candidates {
        if c.join("synthea").is_dir() {
            return Ok(std::fs::canonicalize(c)?);
        }
    }
    bail!("no corpus with a synthea/ directory at {candidates:?}: pass --corpus or set BRANKAS_CORPUS")
}

/// The Bundle files to use, and whether that is the whole directory.
fn select_bundles(dir: &Path, smoke: bool, limit: Option<usize>) -> Result<(Vec<PathBuf>, bool)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    ensure!(!files.is_empty(), "no *.json Bundles in {}", dir.display());
    let total = files.len();
    if smoke {
        // The three smallest patient Bundles: a few hundred resources, deterministic.
        let mut by_size: Vec<(u64, PathBuf)> = files
            .iter()
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('_')))
            .map(|p| Ok((std::fs::metadata(p)?.len(), p.clone())))
            .collect::<Result<_>>()?;
        by_size.sort();
        files = by_size.into_iter().take(limit.unwrap_or(3)).map(|x| x.1).collect();
        files.sort();
    } else if let Some(n) = limit {
        files.truncate(n);
    }
    let all = files.len() == total;
    Ok((files, all))
}

fn load_bundles(files: &[PathBuf]) -> Result<Vec<Bundle>> {
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f)?;
            let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("{}", f.display()))?;
            ensure!(v["resourceType"] == "Bundle" && v["type"] == "transaction", "{} is not a transaction Bundle", f.display());
            let resources = v["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let r = &e["resource"];
                    Ok((r["resourceType"].as_str().unwrap_or_default().to_string(), serde_json::to_vec(r)?))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Bundle { name: f.file_name().unwrap_or_default().to_string_lossy().into_owned(), bytes, resources })
        })
        .collect()
}

fn copy_inputs(files: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for f in files {
        std::fs::copy(f, dir.join(f.file_name().unwrap_or_default()))?;
    }
    Ok(dir.to_path_buf())
}

// ----- floors -----

fn sqlite_floor(path: &Path, bundles: &[Bundle], group: usize) -> Result<Value> {
    let mut c = rusqlite::Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536;
         CREATE TABLE raw (id INTEGER PRIMARY KEY, rtype TEXT NOT NULL, body BLOB NOT NULL);",
    )?;
    let start = Instant::now();
    let mut rows = 0u64;
    let mut commits = 0u64;
    for chunk in bundles.chunks(group) {
        let tx = c.transaction()?;
        {
            let mut ins = tx.prepare_cached("INSERT INTO raw (rtype, body) VALUES (?1, ?2)")?;
            for b in chunk {
                for (t, body) in &b.resources {
                    ins.execute(rusqlite::params![t, body])?;
                    rows += 1;
                }
            }
        }
        tx.commit()?;
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(c);
    Ok(json!({
        "bundles_per_tx": group, "rows": rows, "commits": commits, "seconds": round(secs, 3),
        "resources_per_s": round(rows as f64 / secs, 0), "db_bytes": dir_bytes_matching(path),
    }))
}

fn sqlite_point_reads(path: &Path, rows: usize, n: usize) -> Result<Value> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut q = c.prepare("SELECT body FROM raw WHERE id = ?1")?;
    let mut rng = SplitMix(7);
    let mut bytes = 0usize;
    let start = Instant::now();
    for _ in 0..n {
        let id = 1 + (rng.next() % rows.max(1) as u64) as i64;
        let b: Vec<u8> = q.query_row([id], |r| r.get(0))?;
        bytes += b.len();
    }
    let secs = start.elapsed().as_secs_f64();
    ensure!(bytes > 0, "point reads returned nothing");
    Ok(json!({"reads": n, "seconds": round(secs, 3), "reads_per_s": round(n as f64 / secs, 0)}))
}

/// Copies the Bundle files into `dir` and fsyncs each: the disk's own write floor.
fn file_copy(files: &[PathBuf], dir: &Path) -> Result<Value> {
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    let mut bytes = 0u64;
    for f in files {
        let dst = dir.join(f.file_name().unwrap_or_default());
        bytes += std::fs::copy(f, &dst)?;
        std::fs::File::open(&dst)?.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir)?;
    Ok(json!({"files": files.len(), "bytes": bytes, "seconds": round(secs, 3), "mb_per_s": round(bytes as f64 / 1e6 / secs, 1)}))
}

/// Sum of the sizes of `path` and its SQLite companions (`-wal`, `-shm`).
fn dir_bytes_matching(path: &Path) -> u64 {
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with(&name)).filter_map(|e| e.metadata().ok().map(|m| m.len())).sum())
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn cpu_figure(start: Instant, resources: usize, bytes: usize) -> Value {
    let secs = start.elapsed().as_secs_f64();
    json!({"seconds": round(secs, 3), "resources_per_s": round(resources as f64 / secs, 0), "mb_per_s": round(mb(bytes) / secs, 1)})
}

fn seal_raw(bundles: &[Bundle]) -> Result<Value> {
    use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, &[0x42; 32]).map_err(|_| anyhow::anyhow!("aws-lc key"))?);
    let (mut n, mut bytes, mut counter) = (0usize, 0usize, 0u64);
    let start = Instant::now();
    for b in bundles {
        for (_, r) in &b.resources {
            let mut buf = r.clone();
            counter += 1;
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..8].copy_from_slice(&counter.to_le_bytes());
            key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(b"record"), &mut buf).map_err(|_| anyhow::anyhow!("seal failed"))?;
            n += 1;
            bytes += r.len();
        }
    }
    Ok(cpu_figure(start, n, bytes))
}

fn seal_vault(bundles: &[Bundle]) -> Result<Value> {
    use brankas_vault::{DataKey, PartitionId, RecordAad, RecordKey};
    let key = DataKey::generate()?;
    let (record, partition) = (RecordKey([1; 32]), PartitionId([2; 32]));
    let (mut n, mut bytes) = (0usize, 0usize);
    let start = Instant::now();
    for b in bundles {
        for (t, r) in &b.resources {
            let aad = RecordAad { resource_type: t, record: &record, version: 1, partition: &partition, dek_version: 1 };
            let sealed = key.seal(&aad, r)?;
            std::hint::black_box(sealed);
            n += 1;
            bytes += r.len();
        }
    }
    Ok(cpu_figure(start, n, bytes))
}

fn json_parse(bundles: &[Bundle]) -> Result<Value> {
    let (mut n, mut bytes) = (0usize, 0usize);
    let start = Instant::now();
    for b in bundles {
        let v: Value = serde_json::from_slice(&b.bytes)?;
        n += v["entry"].as_array().map_or(0, Vec::len);
        bytes += b.bytes.len();
        std::hint::black_box(v);
    }
    Ok(cpu_figure(start, n, bytes))
}

fn validate(bundles: &[Bundle]) -> Result<Value> {
    // The R4 schema is compiled lazily on first use: pay that before the clock starts.
    let _ = brankas_fhir::validate_resource(&json!({"resourceType": "Basic", "code": {"text": "warm-up"}}));
    let (mut n, mut bytes, mut invalid) = (0usize, 0usize, 0usize);
    let mut spent = Duration::ZERO;
    for b in bundles {
        let values: Vec<Value> = b.resources.iter().map(|(_, r)| serde_json::from_slice(r)).collect::<Result<_, _>>()?;
        let t = Instant::now();
        for v in &values {
            if brankas_fhir::validate_resource(v).is_err() {
                invalid += 1;
            }
        }
        spent += t.elapsed();
        n += values.len();
        bytes += b.resources.iter().map(|r| r.1.len()).sum::<usize>();
    }
    let secs = spent.as_secs_f64();
    Ok(json!({"seconds": round(secs, 3), "resources_per_s": round(n as f64 / secs, 0), "mb_per_s": round(mb(bytes) / secs, 1), "invalid": invalid}))
}

// ----- offline import -----

fn brankas(bin: &Path, log: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("BRANKAS_LOG", log).stdin(Stdio::null());
    c
}

/// Whether `bin` is a build with access control (it imports on behalf of an organization), as
/// opposed to a baseline build from before it, measured for comparison.
pub(crate) fn has_access_control(bin: &Path) -> bool {
    brankas(bin, "warn").args(["import", "--help"]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--organization"))
}

/// Whether the build has patient budgets (`clients create --budget-per-hour`).
pub(crate) fn has_budgets(bin: &Path) -> bool {
    brankas(bin, "warn").args(["clients", "create", "--help"]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--budget-per-hour"))
}

/// Whether the build has per-client request limits (`clients create --rate-per-second`).
pub(crate) fn has_rate_limits(bin: &Path) -> bool {
    brankas(bin, "warn").args(["clients", "create", "--help"]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--rate-per-second"))
}

/// Whether the build keeps an audit log (`brankas audit verify`).
pub(crate) fn has_audit_log(bin: &Path) -> bool {
    brankas(bin, "warn").args(["audit", "verify", "--help"]).output().is_ok_and(|o| o.status.success())
}

/// `brankas audit verify` on the data directory `init` made in `dir`: its time per record.
fn audit_verify(bin: &Path, dir: &Path) -> Result<Value> {
    let start = Instant::now();
    let o = brankas(bin, "warn").args(["audit", "verify", "--data-dir"]).arg(dir.join("data")).arg("--key-file").arg(dir.join("master.key")).output()?;
    let wall = start.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    ensure!(o.status.success() && report["intact"] == true, "audit verify failed: {} {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let records = report["records"].as_u64().unwrap_or(0);
    Ok(json!({
        "records": records, "checkpoints": report["checkpoints"], "wall_seconds": round(wall, 2),
        "verify_seconds": report["seconds"], "seconds_per_million_records": round(report["seconds"].as_f64().unwrap_or(wall) * 1e6 / records.max(1) as f64, 1),
        "audit_file_bytes": std::fs::metadata(dir.join("data").join("brankas.audit.db")).map(|m| m.len()).unwrap_or(0),
    }))
}

fn init(bin: &Path, dir: &Path) -> Result<(PathBuf, PathBuf, Value)> {
    std::fs::create_dir_all(dir)?;
    let (data, key) = (dir.join("data"), dir.join("master.key"));
    let o = brankas(bin, "warn").arg("init").arg("--data-dir").arg(&data).arg("--key-file").arg(&key).output()?;
    ensure!(o.status.success(), "brankas init failed: {}", String::from_utf8_lossy(&o.stderr));
    let admin: Value = serde_json::from_slice(&o.stdout).context("brankas init printed no JSON")?;
    if !has_access_control(bin) {
        // A build from before access control (a baseline): its bootstrap admin reads everything.
        return Ok((data, key, admin));
    }
    let creds = facility_client(bin, &data, &key)?;
    Ok((data, key, creds))
}

/// The bootstrap admin reaches no patient data: the load comes from a facility's system,
/// registered offline on the data directory.
fn facility_client(bin: &Path, data: &Path, key: &Path) -> Result<Value> {
    let o = brankas(bin, "warn")
        .args(["clients", "create", "--name", "benchmark facility", "--role", "facility-system", "--organization", "Organization/fac-0001", "--scopes", "system/*.cruds"])
        // A load generator is a legitimate system reading every patient: no patient budget
        // in its way (on builds that have budgets).
        .args(if has_budgets(bin) { &["--budget-per-hour", "100000000", "--budget-per-day", "100000000"][..] } else { &[][..] })
        .args(if has_rate_limits(bin) { &["--rate-per-second", "1000000", "--burst", "1000000", "--max-concurrent", "100000"][..] } else { &[][..] })
        .arg("--data-dir")
        .arg(data)
        .arg("--key-file")
        .arg(key)
        .output()?;
    ensure!(o.status.success(), "brankas clients create failed: {}", String::from_utf8_lossy(&o.stderr));
    let creds: Value = serde_json::from_slice(&o.stdout).context("brankas clients create printed no JSON")?;
    if creds["status"] == "pending_approval" {
        approve(bin, data, key, creds["client_id"].as_str().unwrap_or_default())?;
    }
    Ok(creds)
}

/// On builds with the two-person rule a facility client waits for a security officer: the
/// harness registers the first one (active at once) and approves with it.
fn approve(bin: &Path, data: &Path, key: &Path, client_id: &str) -> Result<()> {
    let with_dir = |c: &mut std::process::Command| {
        c.arg("--data-dir").arg(data).arg("--key-file").arg(key);
    };
    let mut c = brankas(bin, "warn");
    c.args(["clients", "create", "--name", "benchmark officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    with_dir(&mut c);
    let o = c.output()?;
    ensure!(o.status.success(), "brankas clients create (officer) failed: {}", String::from_utf8_lossy(&o.stderr));
    let officer: Value = serde_json::from_slice(&o.stdout).context("brankas clients create printed no JSON")?;
    let secret_file = data.with_extension("officer-secret");
    std::fs::write(&secret_file, officer["client_secret"].as_str().unwrap_or_default())?;
    let mut c = brankas(bin, "warn");
    c.args(["clients", "approve", client_id, "--approver-id", officer["client_id"].as_str().unwrap_or_default(), "--approver-secret-file"]).arg(&secret_file);
    with_dir(&mut c);
    let o = c.output()?;
    ensure!(o.status.success(), "brankas clients approve failed: {}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}

fn import(bin: &Path, dir: &Path, input: &Path, expected: usize) -> Result<Value> {
    let (data, key, _) = init(bin, dir)?;
    let children0 = children_cpu_seconds();
    let start = Instant::now();
    let mut cmd = brankas(bin, "warn");
    cmd.arg("import").arg("--data-dir").arg(&data).arg("--key-file").arg(&key).arg("--quiet");
    if has_access_control(bin) {
        cmd.arg("--organization").arg("Organization/fac-0001");
    }
    let o = cmd.arg(input).output()?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = children_cpu_seconds() - children0;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stats: Value = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    ensure!(o.status.success(), "brankas import failed ({}): {stdout} {}", o.status, String::from_utf8_lossy(&o.stderr));
    let resources = stats["resources"].as_u64().unwrap_or(0);
    ensure!(resources as usize == expected, "brankas import wrote {resources} resources, expected {expected}: {stats}");
    Ok(json!({
        "command": format!("brankas import --data-dir D --key-file K --quiet {}", input.display()),
        "tool_stats": stats, "wall_seconds": round(wall, 3), "resources": resources,
        "resources_per_s": round(resources as f64 / wall, 0), "data_dir_bytes": dir_bytes(&data),
        "cpu_seconds": round(cpu, 2), "cpu_cores": round(cpu / wall, 2),
        "cpu_us_per_resource": round(cpu * 1e6 / resources.max(1) as f64, 0),
    }))
}

// ----- the HTTP server -----

struct Server {
    child: Child,
    pid: u32,
    fhir: String,
    root: String,
    client_id: String,
    client_secret: String,
    log: PathBuf,
}

impl Server {
    fn start(bin: &Path, dir: &Path, log_level: &str) -> Result<Self> {
        let (data, key, creds) = init(bin, dir)?;
        Self::start_existing(bin, &data, &key, &creds, &dir.join("server.log"), log_level)
    }

    /// Serves an existing data directory; `creds` are the ones `brankas init` printed.
    fn start_existing(bin: &Path, data: &Path, key: &Path, creds: &Value, log: &Path, log_level: &str) -> Result<Self> {
        let log = log.to_path_buf();
        let mut child = brankas(bin, log_level)
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .arg("--key-file")
            .arg(key)
            .args(["--listen", "127.0.0.1:0", "--insecure-http"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["event"] == "listening"
                {
                    let _ = tx.send(v);
                }
            }
        });
        let listening = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("brankas serve did not report listening within 60 s: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        let fhir = listening["url"].as_str().context("listening line without url")?.to_string();
        let root = fhir.trim_end_matches("/fhir").to_string();
        Ok(Self {
            child,
            pid,
            fhir,
            root,
            client_id: creds["client_id"].as_str().unwrap_or_default().into(),
            client_secret: creds["client_secret"].as_str().unwrap_or_default().into(),
            log,
        })
    }

    /// CPU seconds (user + system) the server process has used so far.
    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.pid))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a /proc/<pid>/stat file, in seconds (Linux clock ticks of 1/100 s).
fn proc_cpu_seconds(stat: &str) -> f64 {
    let s = std::fs::read_to_string(stat).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used by this process's waited-for children (cutime + cstime).
fn children_cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}

/// A bearer token, refreshed in the background before it expires (tokens live 300 s).
struct Token {
    value: RwLock<Arc<str>>,
}

impl Token {
    fn get(&self) -> Arc<str> {
        self.value.read().map(|v| v.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

async fn fetch_token(client: &reqwest::Client, root: &str, id: &str, secret: &str) -> Result<String> {
    let r = client
        .post(format!("{root}/auth/token"))
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await?;
    ensure!(r.status() == 200, "token endpoint answered {}", r.status());
    let v: Value = serde_json::from_slice(&r.bytes().await?)?;
    Ok(v["access_token"].as_str().context("no access_token")?.to_string())
}

#[derive(Clone)]
struct Ctx {
    client: reqwest::Client,
    fhir: Arc<str>,
    root: Arc<str>,
    token: Arc<Token>,
}

impl Ctx {
    /// An HTTP client with a token for `server`, and the task that refreshes the token before
    /// it expires (abort it when done).
    async fn connect(server: &Server) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        let client = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(256).timeout(Duration::from_secs(120)).build()?;
        let first = fetch_token(&client, &server.root, &server.client_id, &server.client_secret).await?;
        let token = Arc::new(Token { value: RwLock::new(first.into()) });
        let refresher = {
            let (client, token) = (client.clone(), token.clone());
            let (root, id, secret) = (server.root.clone(), server.client_id.clone(), server.client_secret.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    if let Ok(t) = fetch_token(&client, &root, &id, &secret).await
                        && let Ok(mut v) = token.value.write()
                    {
                        *v = t.into();
                    }
                }
            })
        };
        Ok((Self { client, fhir: server.fhir.as_str().into(), root: server.root.as_str().into(), token }, refresher))
    }
}

async fn http_phases(server: &Server, bundles: Arc<Vec<Bundle>>, args: &Args, cfg: &Config) -> Result<Value> {
    let (ctx, refresher) = Ctx::connect(server).await?;
    let r = http_inner(server, &ctx, bundles, args, cfg).await;
    refresher.abort();
    r
}

async fn http_inner(server: &Server, ctx: &Ctx, bundles: Arc<Vec<Bundle>>, args: &Args, cfg: &Config) -> Result<Value> {
    let mut out = json!({});
    eprintln!("  GET /health x{} clients", args.clients);
    out["http_floor_health"] = load(server, ctx, Target::Health, args.clients, cfg).await?;

    eprintln!("(d) HTTP ingest, {} clients", args.ingest_clients);
    let (ingest, ids) = ingest(server, ctx, bundles, args.ingest_clients).await?;
    out["http_ingest"] = ingest;
    let ids = Arc::new(ids);

    eprintln!("(e) read-by-id");
    // Sanity: a read returns the resource asked for.
    let probe = &ids[0];
    let v: Value = serde_json::from_slice(&ctx.client.get(format!("{}/{probe}", ctx.fhir)).bearer_auth(&*ctx.token.get()).send().await?.bytes().await?)?;
    ensure!(format!("{}/{}", v["resourceType"].as_str().unwrap_or(""), v["id"].as_str().unwrap_or("")) == *probe, "read of {probe} returned something else");
    out["read_by_id_1_client"] = load(server, ctx, Target::Read(ids.clone()), 1, cfg).await?;
    out["read_by_id"] = load(server, ctx, Target::Read(ids.clone()), args.clients, cfg).await?;

    let patients: Arc<Vec<String>> = Arc::new(ids.iter().filter_map(|x| x.strip_prefix("Patient/")).map(str::to_string).collect());
    ensure!(!patients.is_empty(), "no Patient among the ingested resources");
    eprintln!("(g) compartment search and $everything over {} patients", patients.len());
    out["compartment_search"] = load(server, ctx, Target::Compartment(patients.clone()), args.clients, cfg).await?;
    out["everything"] = load(server, ctx, Target::Everything(patients), args.clients, cfg).await?;

    eprintln!("(f) NIK lookup: creating {} patients", cfg.nik_patients);
    let (create, pats) = create_nik_patients(server, ctx, cfg.nik_patients).await?;
    out["nik_create"] = create;
    let pats = Arc::new(pats);
    out["nik_lookup_1_client"] = load(server, ctx, Target::Nik(pats.clone()), 1, cfg).await?;
    out["nik_lookup"] = load(server, ctx, Target::Nik(pats), args.clients, cfg).await?;
    Ok(out)
}

/// POSTs every Bundle as a transaction; returns the figures and the `Type/id` of every
/// resource created.
async fn ingest(server: &Server, ctx: &Ctx, bundles: Arc<Vec<Bundle>>, clients: usize) -> Result<(Value, Vec<String>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = server.cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (ctx, bundles, next) = (ctx.clone(), bundles.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut lat = Vec::new();
            let mut resources = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = bundles.get(i) else { break };
                let t0 = Instant::now();
                let r = ctx
                    .client
                    .post(&*ctx.fhir)
                    .bearer_auth(&*ctx.token.get())
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(b.bytes.clone())
                    .send()
                    .await?;
                let status = r.status();
                let body = r.bytes().await?;
                ensure!(status == 200, "transaction {} answered {status}: {}", b.name, String::from_utf8_lossy(&body[..body.len().min(500)]));
                lat.push(t0.elapsed().as_micros() as u64);
                let v: Value = serde_json::from_slice(&body)?;
                let entries = v["entry"].as_array().context("transaction-response without entries")?;
                ensure!(entries.len() == b.resources.len(), "transaction {}: {} entries answered, {} sent", b.name, entries.len(), b.resources.len());
                for e in entries {
                    let loc = e["response"]["location"].as_str().context("entry without location")?;
                    ids.push(loc.split("/_history").next().unwrap_or(loc).to_string());
                }
                resources += entries.len();
            }
            Ok::<_, anyhow::Error>((ids, lat, resources))
        }));
    }
    let (mut ids, mut lat, mut resources) = (Vec::new(), Vec::new(), 0usize);
    for t in tasks {
        let (i, l, n) = t.await??;
        ids.extend(i);
        lat.extend(l);
        resources += n;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds() - cpu0;
    ids.sort();
    lat.sort_unstable();
    Ok((
        json!({
            "clients": clients, "bundles": bundles.len(), "resources": resources, "seconds": round(secs, 3),
            "resources_per_s": round(resources as f64 / secs, 0), "bundles_per_s": round(bundles.len() as f64 / secs, 1),
            "bundle_latency_ms": {"p50": ms(pct(&lat, 0.50)), "p99": ms(pct(&lat, 0.99)), "max": ms(lat.last().copied().unwrap_or(0))},
            "server_cpu_seconds": round(cpu, 2), "server_cpu_cores": round(cpu / secs, 2),
            "server_cpu_us_per_resource": round(cpu * 1e6 / resources.max(1) as f64, 0),
        }),
        ids,
    ))
}

/// A valid, synthetic NIK and a Patient that agrees with it (birth date, gender).
fn nik_patient(i: usize) -> (String, Value) {
    const PROVINCES: [u32; 34] = [11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 31, 32, 33, 34, 35, 36, 51, 52, 53, 61, 62, 63, 64, 65, 71, 72, 73, 74, 75, 76, 81, 82, 91, 94];
    let i32 = i as u32;
    let province = PROVINCES[i % PROVINCES.len()];
    let regency = 1 + (i32 / 7) % 70;
    let district = 1 + (i32 / 3) % 40;
    let year = 1940 + (i32 * 7) % 80;
    let month = 1 + i32 % 12;
    let day = 1 + (i32 * 5) % 28;
    let female = i % 2 == 1;
    let serial = 1 + i32 % 9999;
    let nik = format!("{province:02}{regency:02}{district:02}{:02}{month:02}{:02}{serial:04}", day + if female { 40 } else { 0 }, year % 100);
    let p = json!({
        "resourceType": "Patient",
        "identifier": [{"system": brankas_fhir::NIK_SYSTEM, "value": nik}],
        "name": [{"family": format!("Uji{i}"), "given": ["Pasien"]}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("{year}-{month:02}-{day:02}"),
    });
    (nik, p)
}

async fn create_nik_patients(server: &Server, ctx: &Ctx, n: usize) -> Result<(Value, Vec<(String, String)>)> {
    let cpu0 = server.cpu_seconds();
    let start = Instant::now();
    let mut out = Vec::with_capacity(n);
    let all: Vec<(String, Value)> = (0..n).map(nik_patient).collect();
    for chunk in all.chunks(250) {
        let entries: Vec<Value> = chunk.iter().map(|(_, p)| json!({"resource": p, "request": {"method": "POST", "url": "Patient"}})).collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = ctx
            .client
            .post(&*ctx.fhir)
            .bearer_auth(&*ctx.token.get())
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .body(serde_json::to_vec(&bundle)?)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        ensure!(status == 200, "creating NIK patients: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
        let v: Value = serde_json::from_slice(&body)?;
        let entries = v["entry"].as_array().context("no entries")?;
        ensure!(entries.len() == chunk.len(), "NIK patients: {} answered of {}", entries.len(), chunk.len());
        for ((nik, _), e) in chunk.iter().zip(entries) {
            let loc = e["response"]["location"].as_str().context("no location")?;
            let id = loc.split('/').nth(1).context("bad location")?;
            out.push((nik.clone(), id.to_string()));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((
        json!({"patients": n, "per_transaction": 250, "seconds": round(secs, 3), "patients_per_s": round(n as f64 / secs, 0),
               "server_cpu_seconds": round(server.cpu_seconds() - cpu0, 2)}),
        out,
    ))
}

#[derive(Clone)]
enum Target {
    Health,
    Read(Arc<Vec<String>>),
    Nik(Arc<Vec<(String, String)>>),
    /// `Patient/{id}/Observation` (compartment search, first page), over patient ids.
    Compartment(Arc<Vec<String>>),
    /// `Patient/{id}/$everything` (first page), over patient ids.
    Everything(Arc<Vec<String>>),
    /// NIK lookup of patient `rnd % n` of a synthetic population: exactly one patient, with that NIK.
    Population(Arc<brankas_synth::Population>, u64),
}

async fn one(ctx: &Ctx, target: &Target, rnd: u64) -> Result<()> {
    match target {
        Target::Health => {
            let r = ctx.client.get(format!("{}/health", ctx.root)).send().await?;
            ensure!(r.status() == 200, "health: {}", r.status());
            r.bytes().await?;
        }
        Target::Read(ids) => {
            let id = &ids[(rnd % ids.len() as u64) as usize];
            let r = ctx.client.get(format!("{}/{id}", ctx.fhir)).bearer_auth(&*ctx.token.get()).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            ensure!(status == 200 && !body.is_empty(), "read {id}: {status}");
        }
        Target::Nik(pats) => {
            let (nik, id) = &pats[(rnd % pats.len() as u64) as usize];
            let found = resolve_nik(ctx, nik).await?;
            ensure!(found == *id, "NIK lookup found another patient");
        }
        Target::Population(pop, n) => {
            let nik = pop.identity(rnd % n).nik;
            resolve_nik(ctx, &nik).await?;
        }
        Target::Compartment(ids) | Target::Everything(ids) => {
            let id = &ids[(rnd % ids.len() as u64) as usize];
            let url = match target {
                Target::Compartment(_) => format!("{}/Patient/{id}/Observation?_count=50", ctx.fhir),
                _ => format!("{}/Patient/{id}/$everything", ctx.fhir),
            };
            let r = ctx.client.get(url).bearer_auth(&*ctx.token.get()).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            ensure!(status == 200, "patient {id} search: {status}");
            let v: Value = serde_json::from_slice(&body)?;
            ensure!(v["resourceType"] == "Bundle" && v["type"] == "searchset", "patient search did not answer a searchset");
        }
    }
    Ok(())
}

/// Finds the one patient with this NIK and returns its id; anything but exactly one patient
/// carrying that NIK is an error.
async fn resolve_nik(ctx: &Ctx, nik: &str) -> Result<String> {
    let e = lookup_nik(ctx, nik).await?;
    ensure!(e.len() == 1, "NIK lookup found {} patients, not exactly one", e.len());
    let p = &e[0]["resource"];
    let has = p["identifier"].as_array().into_iter().flatten().any(|i| i["value"] == nik);
    ensure!(has, "NIK lookup answered a patient without that NIK");
    p["id"].as_str().map(str::to_string).context("patient without id")
}

/// The entries of a NIK lookup's searchset.
async fn lookup_nik(ctx: &Ctx, nik: &str) -> Result<Vec<Value>> {
    let r = ctx.client.get(format!("{}/Patient?identifier=https%3A%2F%2Ffhir.kemkes.go.id%2Fid%2Fnik%7C{nik}", ctx.fhir)).bearer_auth(&*ctx.token.get()).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    ensure!(status == 200, "NIK lookup: {status}");
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["entry"].as_array().cloned().unwrap_or_default())
}

/// `clients` concurrent loops of `target` for warm-up + duration; figures over the measured part.
async fn load(server: &Server, ctx: &Ctx, target: Target, clients: usize, cfg: &Config) -> Result<Value> {
    let start = tokio::time::Instant::now();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (ctx, target) = (ctx.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix(0x5eed ^ (c as u64) << 32);
            let mut lat: Vec<u64> = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let t0 = tokio::time::Instant::now();
                if t0 >= end {
                    break;
                }
                let r = one(&ctx, &target, rng.next()).await;
                match r {
                    Ok(()) if t0 >= warm_end => lat.push(t0.elapsed().as_micros() as u64),
                    Ok(()) => {}
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        if errors > 100 {
                            break;
                        }
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    tokio::time::sleep_until(warm_end).await;
    let (cpu0, own0, t0) = (server.cpu_seconds(), proc_cpu_seconds("/proc/self/stat"), Instant::now());
    tokio::time::sleep_until(end).await;
    let (cpu1, own1, secs) = (server.cpu_seconds(), proc_cpu_seconds("/proc/self/stat"), t0.elapsed().as_secs_f64());
    let (mut lat, mut errors, mut first_error) = (Vec::new(), 0u64, None);
    for t in tasks {
        let (l, e, f) = t.await?;
        lat.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    ensure!(errors == 0, "{errors} failed requests; first: {}", first_error.unwrap_or_default());
    ensure!(!lat.is_empty(), "no request completed in the measured window");
    lat.sort_unstable();
    let n = lat.len();
    Ok(json!({
        "clients": clients, "requests": n, "seconds": round(secs, 2), "requests_per_s": round(n as f64 / secs, 0),
        "latency_ms": {"p50": ms(pct(&lat, 0.50)), "p95": ms(pct(&lat, 0.95)), "p99": ms(pct(&lat, 0.99)), "max": ms(lat[n - 1])},
        "server_cpu_cores": round((cpu1 - cpu0) / secs, 2), "server_cpu_us_per_request": round((cpu1 - cpu0) * 1e6 / n as f64, 0),
        "loadgen_cpu_cores": round((own1 - own0) / secs, 2),
    }))
}

// ----- reporting -----

fn ratios(o: &Value) -> Value {
    let f = |p: &str| o.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let r = |a: f64, b: f64| if b > 0.0 && a.is_finite() { json!(round(a / b, 3)) } else { Value::Null };
    let import = f("/import/resources_per_s");
    let ingest = f("/http_ingest/resources_per_s");
    json!({
        "import_vs_sqlite_one_tx_per_bundle": r(import, f("/floor_sqlite/insert_one_tx_per_bundle/resources_per_s")),
        "import_vs_sqlite_64_bundles_per_tx": r(import, f("/floor_sqlite/insert_64_bundles_per_tx/resources_per_s")),
        "http_ingest_vs_sqlite_one_tx_per_bundle": r(ingest, f("/floor_sqlite/insert_one_tx_per_bundle/resources_per_s")),
        "http_ingest_vs_import": r(ingest, import),
        "read_by_id_vs_health": r(f("/read_by_id/requests_per_s"), f("/http_floor_health/requests_per_s")),
        "nik_lookup_vs_read_by_id": r(f("/nik_lookup/requests_per_s"), f("/read_by_id/requests_per_s")),
        "compartment_vs_read_by_id": r(f("/compartment_search/requests_per_s"), f("/read_by_id/requests_per_s")),
        "everything_vs_read_by_id": r(f("/everything/requests_per_s"), f("/read_by_id/requests_per_s")),
        "import_vs_file_copy_mb_per_s": r(f("/config/bundle_file_bytes") / f("/import/wall_seconds") / 1e6, f("/floor_file_copy/mb_per_s")),
        "import_data_dir_vs_sqlite_floor_bytes": r(f("/import/data_dir_bytes"), f("/floor_sqlite/insert_64_bundles_per_tx/db_bytes")),
    })
}

fn markdown(o: &Value) -> String {
    let s = |p: &str| match o.pointer(p) {
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 && x.abs() >= 1.0 { group(x as i64) } else { format!("{x}") }
        }
        Some(v) if !v.is_null() => v.to_string(),
        _ => "–".into(),
    };
    let x = |p: &str| match o.pointer(p).and_then(Value::as_f64) {
        Some(v) => format!("{v}×"),
        None => "–".into(),
    };
    let lat = |k: &str| format!("p50 {} / p95 {} / p99 {} ms", s(&format!("/{k}/latency_ms/p50")), s(&format!("/{k}/latency_ms/p95")), s(&format!("/{k}/latency_ms/p99")));
    let cpu = |k: &str| format!("{} cores, {} µs/req", s(&format!("/{k}/server_cpu_cores")), s(&format!("/{k}/server_cpu_us_per_request")));
    let c = &o["config"];
    let mut t = String::new();
    t.push_str(&format!(
        "Corpus: {} Synthea bundles, {} resources, {:.1} MB. Load phases: {} s after {} s warm-up. Server log level: {}. Load average at start / end: {} / {}.\n\n",
        c["bundles"],
        c["resources"],
        mb(c["bundle_file_bytes"].as_u64().unwrap_or(0) as usize),
        c["duration_s"],
        c["warmup_s"],
        c["server_log"].as_str().unwrap_or(""),
        o["machine"]["loadavg_at_start"].as_str().unwrap_or("?"),
        o["machine"]["loadavg_at_end"].as_str().unwrap_or("?")
    ));
    t.push_str("| # | measurement | result | latency | server CPU | vs floor |\n|---|---|---|---|---|---|\n");
    let rows: Vec<[String; 6]> = vec![
        [
            "a".into(),
            "raw SQLite insert, 1 tx per bundle (floor)".into(),
            format!("{} resources/s", s("/floor_sqlite/insert_one_tx_per_bundle/resources_per_s")),
            "".into(),
            "".into(),
            "1×".into(),
        ],
        [
            "a".into(),
            "raw SQLite insert, 64 bundles per tx (floor)".into(),
            format!("{} resources/s", s("/floor_sqlite/insert_64_bundles_per_tx/resources_per_s")),
            "".into(),
            "".into(),
            "1×".into(),
        ],
        ["a".into(), "raw SQLite point read by key, 1 thread".into(), format!("{} reads/s", s("/floor_sqlite/point_read_1_thread/reads_per_s")), "".into(), "".into(), "".into()],
        ["a".into(), "plain file copy of the bundle files, fsync per file".into(), format!("{} MB/s", s("/floor_file_copy/mb_per_s")), "".into(), "".into(), "".into()],
        [
            "b".into(),
            "AES-256-GCM-SIV seal, aws-lc-rs, 1 core".into(),
            format!("{} MB/s ({} resources/s)", s("/floor_cpu/seal_aws_lc_raw/mb_per_s"), s("/floor_cpu/seal_aws_lc_raw/resources_per_s")),
            "".into(),
            "".into(),
            "".into(),
        ],
        [
            "b".into(),
            "seal via brankas-vault DataKey (random nonce, AAD), 1 core".into(),
            format!("{} MB/s ({} resources/s)", s("/floor_cpu/seal_brankas_vault/mb_per_s"), s("/floor_cpu/seal_brankas_vault/resources_per_s")),
            "".into(),
            "".into(),
            "".into(),
        ],
        [
            "b".into(),
            "JSON parse of the bundles, 1 core".into(),
            format!("{} MB/s ({} resources/s)", s("/floor_cpu/json_parse/mb_per_s"), s("/floor_cpu/json_parse/resources_per_s")),
            "".into(),
            "".into(),
            "".into(),
        ],
        ["b".into(), "R4 schema validation, 1 core".into(), format!("{} resources/s", s("/floor_cpu/r4_validate/resources_per_s")), "".into(), "".into(), "".into()],
        [
            "c".into(),
            "`brankas import` (offline, all cores)".into(),
            format!("{} resources/s", s("/import/resources_per_s")),
            format!("{} s wall", s("/import/wall_seconds")),
            format!("{} cores, {} µs/resource", s("/import/cpu_cores"), s("/import/cpu_us_per_resource")),
            format!("{} of (a) 1 tx/bundle; {} of (a) 64/tx", x("/ratios/import_vs_sqlite_one_tx_per_bundle"), x("/ratios/import_vs_sqlite_64_bundles_per_tx")),
        ],
        [
            "d".into(),
            format!("HTTP ingest, transactions, {} clients", s("/http_ingest/clients")),
            format!("{} resources/s", s("/http_ingest/resources_per_s")),
            format!("bundle p50 {} / p99 {} ms", s("/http_ingest/bundle_latency_ms/p50"), s("/http_ingest/bundle_latency_ms/p99")),
            format!("{} cores, {} µs/resource", s("/http_ingest/server_cpu_cores"), s("/http_ingest/server_cpu_us_per_resource")),
            format!("{} of (a) 1 tx/bundle; {} of (c)", x("/ratios/http_ingest_vs_sqlite_one_tx_per_bundle"), x("/ratios/http_ingest_vs_import")),
        ],
        [
            "e".into(),
            format!("GET /health, {} clients (HTTP floor)", s("/http_floor_health/clients")),
            format!("{} req/s", s("/http_floor_health/requests_per_s")),
            lat("http_floor_health"),
            cpu("http_floor_health"),
            "1×".into(),
        ],
        [
            "e".into(),
            "read by id, 1 client".into(),
            format!("{} req/s", s("/read_by_id_1_client/requests_per_s")),
            lat("read_by_id_1_client"),
            cpu("read_by_id_1_client"),
            "".into(),
        ],
        [
            "e".into(),
            format!("read by id, {} clients", s("/read_by_id/clients")),
            format!("{} req/s", s("/read_by_id/requests_per_s")),
            lat("read_by_id"),
            cpu("read_by_id"),
            format!("{} of /health", x("/ratios/read_by_id_vs_health")),
        ],
        [
            "g".into(),
            format!("compartment search Patient/{{id}}/Observation, {} clients", s("/compartment_search/clients")),
            format!("{} req/s", s("/compartment_search/requests_per_s")),
            lat("compartment_search"),
            cpu("compartment_search"),
            format!("{} of read by id", x("/ratios/compartment_vs_read_by_id")),
        ],
        [
            "g".into(),
            format!("Patient/{{id}}/$everything, {} clients", s("/everything/clients")),
            format!("{} req/s", s("/everything/requests_per_s")),
            lat("everything"),
            cpu("everything"),
            format!("{} of read by id", x("/ratios/everything_vs_read_by_id")),
        ],
        ["f".into(), "create patients with NIK (transactions of 250)".into(), format!("{} patients/s", s("/nik_create/patients_per_s")), "".into(), "".into(), "".into()],
        [
            "f".into(),
            "NIK lookup, 1 client".into(),
            format!("{} req/s", s("/nik_lookup_1_client/requests_per_s")),
            lat("nik_lookup_1_client"),
            cpu("nik_lookup_1_client"),
            "".into(),
        ],
        [
            "f".into(),
            format!("NIK lookup, {} clients", s("/nik_lookup/clients")),
            format!("{} req/s", s("/nik_lookup/requests_per_s")),
            lat("nik_lookup"),
            cpu("nik_lookup"),
            format!("{} of read by id", x("/ratios/nik_lookup_vs_read_by_id")),
        ],
        [
            "h".into(),
            "`brankas audit verify` of the log the HTTP phases wrote".into(),
            format!("{} records in {} s", s("/audit_verify/records"), s("/audit_verify/verify_seconds")),
            "".into(),
            format!("{} s per million records", s("/audit_verify/seconds_per_million_records")),
            "".into(),
        ],
    ];
    for r in rows {
        t.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    t.push_str(&format!(
        "\nOn disk: raw SQLite floor {:.1} MB, Brankas data directory after import {:.1} MB ({} of the floor).",
        mb(o.pointer("/floor_sqlite/insert_64_bundles_per_tx/db_bytes").and_then(Value::as_u64).unwrap_or(0) as usize),
        mb(o.pointer("/import/data_dir_bytes").and_then(Value::as_u64).unwrap_or(0) as usize),
        x("/ratios/import_data_dir_vs_sqlite_floor_bytes")
    ));
    t
}

fn machine(work: &Path) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|x| x.1.trim().to_string());
    let mem_kb = read("/proc/meminfo").lines().find(|l| l.starts_with("MemTotal")).and_then(|l| l.split_whitespace().nth(1)).and_then(|x| x.parse::<u64>().ok());
    let df = Command::new("df").arg("-PT").arg(work).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu, "mem_gib": mem_kb.map(|k| round(k as f64 / 1048576.0, 1)),
        "kernel": read("/proc/sys/kernel/osrelease").trim(), "work_dir_filesystem": df,
        "loadavg_at_start": read("/proc/loadavg").trim(),
    })
}

// ----- small helpers -----

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0, 2)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn group(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_niks_are_valid_unique_and_agree_with_the_patient() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..9999 {
            let (nik, p) = nik_patient(i);
            brankas_fhir::parse_nik(&nik).unwrap_or_else(|e| panic!("{nik}: {e}"));
            assert_eq!(brankas_fhir::check_patient_nik(&p), Ok(vec![]), "{nik}");
            assert!(seen.insert(nik), "duplicate NIK at {i}");
        }
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 0.5), 50);
        assert_eq!(pct(&v, 0.99), 99);
        assert_eq!(pct(&v, 1.0), 100);
        assert_eq!(pct(&[], 0.5), 0);
        assert_eq!(group(1234567), "1,234,567");
    }
}
