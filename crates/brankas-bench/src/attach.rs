//! `brankas-bench attachments`: one large attachment up and down through the HTTP API, next to
//! the machine's floors measured in the same run.
//!
//! - **upload**: `POST /fhir/Binary` of N MiB (default 2048) of pseudo-random bytes, streamed
//!   with a Content-Length, on loopback; then **download** of the same Binary, streamed and
//!   compared byte for byte with the generator's output.
//! - **server memory**: the server's resident set before (idle) and its peak while each
//!   transfer runs (sampled every 10 ms from `/proc/<pid>/status`).
//! - **floors**: AES-256-GCM as `openssl speed -evp aes-256-gcm -bytes 65536` measures it; the
//!   vault's own STREAM sealing of 64 KiB segments (AES-256-GCM-SIV) in this process; and a
//!   plain file copy of the same bytes (`std::fs::copy` + fsync) on the same disk.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{Server, machine, round};

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// The `brankas` binary to measure (build it with `cargo build --release -p brankas`).
    #[arg(long, default_value = "target/release/brankas")]
    bin: PathBuf,
    /// Size of the attachment in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-attachments.json")]
    out: PathBuf,
    /// Directory for the data directory and the copy floor (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Deterministic pseudo-random bytes (SplitMix64), `len` of them.
struct Noise {
    state: u64,
    left: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Noise {
    fn new(len: u64) -> Self {
        Self { state: 0x5EED, left: len, buf: Vec::new(), at: 0 }
    }
    fn refill(&mut self) {
        self.buf.clear();
        self.at = 0;
        for _ in 0..8192 {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            self.buf.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
    }
}

impl Read for Noise {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.at == self.buf.len() {
            self.refill();
        }
        let n = out.len().min(self.buf.len() - self.at).min(self.left as usize);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// Samples the server's resident set while `f` runs; returns `f`'s result and the peak.
fn with_peak_rss<T>(pid: u32, f: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss(pid)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    Ok((r?, peak.load(Ordering::Relaxed)))
}

/// Bytes of the files under `dir`, recursively.
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => tree_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    round(bytes as f64 / (1 << 20) as f64 / secs, 0)
}

/// `openssl speed -evp aes-256-gcm` at 64 KiB blocks, in MiB/s (one core); None without openssl.
fn openssl_aes_gcm() -> Option<f64> {
    let o = Command::new("openssl").args(["speed", "-evp", "aes-256-gcm", "-bytes", "65536", "-seconds", "3"]).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    // The result line: "AES-256-GCM   123456.78k" (thousands of bytes per second).
    let line = text.lines().rev().find(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))?;
    let k: f64 = line.split_whitespace().last()?.trim_end_matches('k').parse().ok()?;
    Some(round(k * 1000.0 / (1 << 20) as f64, 0))
}

/// The vault's STREAM sealing of `mib` MiB in 64 KiB segments, in MiB/s (one core).
fn vault_stream(mib: u64) -> Result<f64> {
    let seg = vec![7u8; brankas_vault::STREAM_SEGMENT as usize];
    let key = brankas_vault::DataKey::generate()?;
    let (mut sealer, _) = key.stream_sealer(b"bench")?;
    let n = mib * (1 << 20) / seg.len() as u64;
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(sealer.seal(&seg, i + 1 == n)?);
    }
    Ok(mib_s(n * seg.len() as u64, start.elapsed().as_secs_f64()))
}

/// A plain copy of `bytes` on the work directory's disk, fsynced, in MiB/s.
fn file_copy(dir: &Path, bytes: u64) -> Result<f64> {
    let src = dir.join("copy-source.bin");
    let dst = dir.join("copy-dest.bin");
    {
        let mut f = std::fs::File::create(&src)?;
        std::io::copy(&mut Noise::new(bytes), &mut f)?;
        f.sync_all()?;
    }
    let start = Instant::now();
    std::fs::copy(&src, &dst)?;
    std::fs::File::open(&dst)?.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Ok(mib_s(bytes, secs))
}

pub fn run(a: AttachArgs) -> Result<()> {
    let bin = std::fs::canonicalize(&a.bin).with_context(|| format!("brankas binary {} not found (cargo build --release -p brankas)", a.bin.display()))?;
    let tmp;
    let work = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("brankas-bench-attach-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bytes = a.size_mib << 20;
    eprintln!("floors: openssl, vault sealing, file copy of {} MiB", a.size_mib);
    let openssl = openssl_aes_gcm();
    let sealing = vault_stream(a.size_mib.min(1024))?;
    let copy = file_copy(&work, bytes)?;

    let server = Server::start(&bin, &work.join("server"), "warn")?;
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(3600)).build()?;
    let token = {
        let r = http.post(format!("{}/auth/token", server.root)).basic_auth(&server.client_id, Some(&server.client_secret)).form(&[("grant_type", "client_credentials")]).send()?;
        ensure!(r.status() == 200, "token: {}", r.status());
        r.json::<Value>()?["access_token"].as_str().context("no token")?.to_string()
    };
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Lampiran", "given": ["Uji"]}], "gender": "female", "birthDate": "1990-08-07"});
    let r = http.post(format!("{}/Patient", server.fhir)).bearer_auth(&token).header("content-type", "application/fhir+json").body(patient.to_string()).send()?;
    ensure!(r.status() == 201, "create patient: {}", r.status());
    let pid = r.json::<Value>()?["id"].as_str().context("patient id")?.to_string();
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss(server.pid);

    eprintln!("upload of {} MiB", a.size_mib);
    let ((id, up_secs), up_peak) = with_peak_rss(server.pid, || {
        let start = Instant::now();
        let r = http
            .post(format!("{}/Binary", server.fhir))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .header("x-security-context", format!("Patient/{pid}"))
            .header("prefer", "return=minimal")
            .body(reqwest::blocking::Body::sized(Noise::new(bytes), bytes))
            .send()?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(r.status() == 201, "upload answered {}", r.status());
        let loc = r.headers().get("location").and_then(|v| v.to_str().ok()).context("no Location")?.to_string();
        let id = loc.split("/Binary/").nth(1).and_then(|x| x.split('/').next()).context("Location")?.to_string();
        Ok((id, secs))
    })?;
    let stored = tree_bytes(&work.join("server").join("data").join("blobs"));

    eprintln!("download of {} MiB", a.size_mib);
    let (down_secs, down_peak) = with_peak_rss(server.pid, || {
        let start = Instant::now();
        let mut r = http.get(format!("{}/Binary/{id}", server.fhir)).bearer_auth(&token).send()?;
        ensure!(r.status() == 200, "download answered {}", r.status());
        let mut expect = Noise::new(bytes);
        let (mut buf, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut got = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            expect.read_exact(&mut want[..n])?;
            ensure!(buf[..n] == want[..n], "download differs at byte {got}");
            got += n as u64;
        }
        ensure!(got == bytes, "download returned {got} of {bytes} bytes");
        Ok(start.elapsed().as_secs_f64())
    })?;
    drop(server);

    let up = mib_s(bytes, up_secs);
    let down = mib_s(bytes, down_secs);
    let ratio = |x: f64, floor: Option<f64>| floor.map(|f| round(x / f, 2));
    let out = json!({
        "command": format!("brankas-bench attachments --size-mib {}", a.size_mib),
        "machine": machine(&work),
        "size_mib": a.size_mib,
        "floors_mib_s": {"openssl_aes_256_gcm_64k": openssl, "vault_stream_sealing": sealing, "file_copy_fsync": copy},
        "upload": {"seconds": round(up_secs, 2), "mib_s": up, "vs_openssl": ratio(up, openssl), "vs_vault_sealing": ratio(up, Some(sealing)), "vs_file_copy": ratio(up, Some(copy)),
                   "server_rss_peak_above_idle_mib": round((up_peak.saturating_sub(idle)) as f64 / (1 << 20) as f64, 1)},
        "download": {"seconds": round(down_secs, 2), "mib_s": down, "vs_openssl": ratio(down, openssl), "vs_vault_sealing": ratio(down, Some(sealing)), "vs_file_copy": ratio(down, Some(copy)),
                     "server_rss_peak_above_idle_mib": round((down_peak.saturating_sub(idle)) as f64 / (1 << 20) as f64, 1)},
        "server_rss_idle_mib": round(idle as f64 / (1 << 20) as f64, 1),
        "stored_bytes": stored,
        "stored_overhead_ratio": round(stored as f64 / bytes as f64, 4),
    });
    std::fs::write(&a.out, serde_json::to_vec_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
