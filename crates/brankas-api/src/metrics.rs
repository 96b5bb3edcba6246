//! `/metrics`: operational figures in the Prometheus text format, for a scraper holding the
//! metrics token (`--metrics-token-file`), compared in constant time. Without a configured
//! token the endpoint does not exist (404).
//!
//! *Invariant:* no label carries patient data, an id, a query value or a secret: labels are
//! HTTP methods, route *templates* (`/fhir/{rtype}/{id}`), status classes (`2xx`), alert kinds
//! and database file names, all fixed by the code. Figures are counters and gauges only.
//! (Test: `crates/brankas/tests/metrics.rs`.)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram: counts per bucket (not cumulative), count and sum.
#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_us: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_us += d.as_micros() as u64;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, n) in BUCKETS.iter().zip(self.buckets) {
            cum += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The figures this process counts, and how `/metrics` is reached.
#[derive(Default)]
pub struct Metrics {
    /// SHA-256 of the metrics token; `None` disables `/metrics`.
    token_digest: Option<[u8; 32]>,
    /// The data directory whose files are measured.
    data_dir: Option<PathBuf>,
    /// By (method, route template, status class).
    requests: Mutex<BTreeMap<(&'static str, String, &'static str), Histogram>>,
    audit_records: AtomicU64,
    audit_failures: AtomicU64,
    audit_latency: Mutex<Histogram>,
    /// Alerts raised, by kind (a fixed word of the code).
    alerts: Mutex<BTreeMap<String, u64>>,
    suspensions: AtomicU64,
    throttled: AtomicU64,
}

impl Metrics {
    /// `/metrics` open to holders of `token`, measuring the files of `data_dir`.
    pub fn new(token: Option<&str>, data_dir: Option<PathBuf>) -> Self {
        Self { token_digest: token.map(|t| brankas_vault::sha256(t.trim().as_bytes())), data_dir, ..Default::default() }
    }

    pub(crate) fn request(&self, method: &axum::http::Method, route: &str, status: StatusCode, took: Duration) {
        let method = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "HEAD" => "HEAD",
            "PATCH" => "PATCH",
            _ => "other",
        };
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        if let Ok(mut m) = self.requests.lock() {
            m.entry((method, route.to_string(), class)).or_default().observe(took);
        }
    }

    pub(crate) fn audit_append(&self, records: usize, took: Duration, ok: bool) {
        if ok {
            self.audit_records.fetch_add(records as u64, Ordering::Relaxed);
            if let Ok(mut h) = self.audit_latency.lock() {
                h.observe(took);
            }
        } else {
            self.audit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn alert(&self, kind: &str) {
        if let Ok(mut m) = self.alerts.lock() {
            *m.entry(kind.to_string()).or_default() += 1;
        }
    }

    pub(crate) fn suspension(&self) {
        self.suspensions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn throttle(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    fn admits(&self, headers: &HeaderMap) -> Option<bool> {
        let want = self.token_digest.as_ref()?;
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        Some(given.is_some_and(|g| brankas_vault::ct_eq(&brankas_vault::sha256(g.trim().as_bytes()), want)))
    }
}

/// Escapes a label value (the text format's three escapes).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Sizes of the data directory's databases (with their WAL files) and of its blobs.
fn storage(out: &mut String, dir: &std::path::Path) {
    head(out, "brankas_db_bytes", "gauge", "Size of each database file of the data directory.");
    let mut wal = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir).map(|r| r.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect()).unwrap_or_default();
    names.sort();
    for n in names.iter().filter(|n| n.ends_with(".db")) {
        let len = |p: &str| std::fs::metadata(dir.join(p)).map(|m| m.len()).ok();
        if let Some(l) = len(n) {
            let _ = writeln!(out, "brankas_db_bytes{{file=\"{}\"}} {l}", esc(n));
        }
        wal.push((n.clone(), len(&format!("{n}-wal")).unwrap_or(0)));
    }
    head(out, "brankas_db_wal_bytes", "gauge", "Size of each database's write-ahead log.");
    for (n, l) in wal {
        let _ = writeln!(out, "brankas_db_wal_bytes{{file=\"{}\"}} {l}", esc(&n));
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    let root = dir.join("blobs");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() && e.path() != root.join("tmp") => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    files += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    head(out, "brankas_blob_bytes", "gauge", "Bytes of sealed attachments stored.");
    let _ = writeln!(out, "brankas_blob_bytes {bytes}");
    head(out, "brankas_blobs", "gauge", "Sealed attachments stored.");
    let _ = writeln!(out, "brankas_blobs {files}");
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let m = &st.metrics;
    match m.admits(&headers) {
        None => return crate::outcome::ApiError::not_found().into_response(),
        Some(false) => return crate::outcome::ApiError::unauthorized().into_response(),
        Some(true) => {}
    }
    let mut out = String::new();
    head(&mut out, "brankas_http_requests_total", "counter", "HTTP requests by method, route template and status class.");
    let requests = m.requests.lock().map(|r| r.iter().map(|(k, h)| (k.clone(), h.count)).collect::<Vec<_>>()).unwrap_or_default();
    for ((method, route, class), n) in &requests {
        let _ = writeln!(out, "brankas_http_requests_total{{method=\"{method}\",route=\"{}\",class=\"{class}\"}} {n}", esc(route));
    }
    head(&mut out, "brankas_http_request_duration_seconds", "histogram", "HTTP request latency by method, route template and status class.");
    if let Ok(r) = m.requests.lock() {
        for ((method, route, class), h) in r.iter() {
            h.write(&mut out, "brankas_http_request_duration_seconds", &format!("method=\"{method}\",route=\"{}\",class=\"{class}\"", esc(route)));
        }
    }
    head(&mut out, "brankas_audit_records_appended_total", "counter", "Audit records made durable by this process.");
    let _ = writeln!(out, "brankas_audit_records_appended_total {}", m.audit_records.load(Ordering::Relaxed));
    head(&mut out, "brankas_audit_append_failures_total", "counter", "Audit appends that failed (the request got 503).");
    let _ = writeln!(out, "brankas_audit_append_failures_total {}", m.audit_failures.load(Ordering::Relaxed));
    head(&mut out, "brankas_audit_append_duration_seconds", "histogram", "Time from submitting audit records to their being durable.");
    if let Ok(h) = m.audit_latency.lock() {
        h.write(&mut out, "brankas_audit_append_duration_seconds", "");
    }
    head(&mut out, "brankas_guard_alerts_total", "counter", "Security alerts raised, by kind.");
    if let Ok(a) = m.alerts.lock() {
        for (k, n) in a.iter() {
            let _ = writeln!(out, "brankas_guard_alerts_total{{kind=\"{}\"}} {n}", esc(k));
        }
    }
    head(&mut out, "brankas_guard_canary_hits_total", "counter", "Responses refused because they touched a canary record.");
    let _ = writeln!(out, "brankas_guard_canary_hits_total {}", m.alerts.lock().ok().and_then(|a| a.get("canary").copied()).unwrap_or(0));
    head(&mut out, "brankas_guard_budget_refusals_total", "counter", "Responses refused by a client's patient budget.");
    let _ = writeln!(out, "brankas_guard_budget_refusals_total {}", m.alerts.lock().ok().and_then(|a| a.get("patient-budget").copied()).unwrap_or(0));
    head(&mut out, "brankas_guard_suspensions_total", "counter", "Credentials suspended by the guard (canary, budget).");
    let _ = writeln!(out, "brankas_guard_suspensions_total {}", m.suspensions.load(Ordering::Relaxed));
    head(&mut out, "brankas_guard_throttled_total", "counter", "Requests refused by a client's rate or concurrency limit.");
    let _ = writeln!(out, "brankas_guard_throttled_total {}", m.throttled.load(Ordering::Relaxed));
    let (hits, misses) = st.engine.key_cache_counts();
    head(&mut out, "brankas_key_cache_hits_total", "counter", "Data-key lookups served from the cache of unwrapped keys.");
    let _ = writeln!(out, "brankas_key_cache_hits_total {hits}");
    head(&mut out, "brankas_key_cache_misses_total", "counter", "Data-key lookups that read and unwrapped the key.");
    let _ = writeln!(out, "brankas_key_cache_misses_total {misses}");
    let (records, entries) = st.engine.open_counts();
    head(&mut out, "brankas_records_opened_total", "counter", "Sealed records decrypted: whole resources (kind=record) and search entries (kind=entry).");
    let _ = writeln!(out, "brankas_records_opened_total{{kind=\"record\"}} {records}");
    let _ = writeln!(out, "brankas_records_opened_total{{kind=\"entry\"}} {entries}");

    let store = st.store.clone();
    let audit = st.audit.clone();
    let dir = m.data_dir.clone();
    let tail = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        head(&mut out, "brankas_audit_tree_size", "gauge", "Records in the audit log (its Merkle tree's size).");
        match brankas_audit::head(&*store) {
            Ok((size, _)) => {
                let _ = writeln!(out, "brankas_audit_tree_size {size}");
            }
            Err(e) => tracing::warn!(error = %e, "metrics: the audit head could not be read"),
        }
        head(&mut out, "brankas_audit_checkpoint_age_seconds", "gauge", "Seconds since the newest signed audit checkpoint.");
        if let Ok(Some(c)) = audit.latest_checkpoint() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64;
            let _ = writeln!(out, "brankas_audit_checkpoint_age_seconds {}", (now - c.time_us).max(0) as f64 / 1e6);
        }
        if let Some(d) = dir {
            storage(&mut out, &d);
        }
        out
    })
    .await
    .unwrap_or_default();
    out.push_str(&tail);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.write(&mut out, "x", "route=\"a\"");
        assert!(out.contains("x_bucket{route=\"a\",le=\"0.001\"} 0\n"));
        assert!(out.contains("x_bucket{route=\"a\",le=\"0.005\"} 1\n"));
        assert!(out.contains("x_bucket{route=\"a\",le=\"10\"} 1\n"));
        assert!(out.contains("x_bucket{route=\"a\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("x_count{route=\"a\"} 2\n"));
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn only_the_configured_token_opens_metrics() {
        let m = Metrics::new(Some("s3cret-token-of-the-scraper\n"), None);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(m.admits(&with("Bearer s3cret-token-of-the-scraper")), Some(true));
        assert_eq!(m.admits(&with("Bearer s3cret-token-of-the-scrapeR")), Some(false));
        assert_eq!(m.admits(&HeaderMap::new()), Some(false));
        assert_eq!(Metrics::default().admits(&with("Bearer x")), None, "no token configured: no endpoint");
    }
}
