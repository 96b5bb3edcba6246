//! Test harness: runs the real `brankas` binary in a temporary directory and talks to it over
//! HTTP on 127.0.0.1, as a hospital system would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_brankas");

/// The shared corpus (FHIR examples, Synthea bundles, attachments).
pub fn corpus() -> PathBuf {
    std::env::var_os("BRANKAS_CORPUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
}

/// A data directory with its key file, created by `brankas init`.
pub struct Instance {
    pub root: tempfile::TempDir,
    /// A facility-system client (`Organization/test-facility`, `system/*.cruds`, every
    /// sensitive category granted), registered after init: the default caller of the tests.
    pub client_id: String,
    pub client_secret: String,
    /// The bootstrap admin `brankas init` created (clients, keys, directory; no patient data).
    pub admin_id: String,
    pub admin_secret: String,
    /// The first security officer, registered with the CLI after init (active at once): it
    /// approves every registration the tests make through [`Instance::register`].
    pub officer_id: String,
    pub officer_secret: String,
    /// Options every command of this instance takes (e.g. `--database URL`).
    pub extra: Vec<String>,
}

impl Instance {
    pub fn init() -> Self {
        Self::init_with(&[])
    }

    /// [`Instance::init`] with options every command of the instance then takes (the
    /// scale-out tests' `--database URL --database-schema S`).
    pub fn init_with(extra: &[&str]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let out = Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(root.path().join("data"))
            .arg("--key-file")
            .arg(root.path().join("master.key"))
            .args(extra)
            .output()
            .expect("run brankas init");
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let admin: Value = serde_json::from_slice(&out.stdout).expect("init prints JSON");
        let mut inst = Self {
            client_id: String::new(),
            client_secret: String::new(),
            admin_id: admin["client_id"].as_str().unwrap().into(),
            admin_secret: admin["client_secret"].as_str().unwrap().into(),
            officer_id: String::new(),
            officer_secret: String::new(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            root,
        };
        let officer = inst.register_pending(&["--name", "harness officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
        assert_eq!(officer["status"], "active", "the first security officer is active at once: {officer}");
        inst.officer_id = officer["client_id"].as_str().unwrap().into();
        inst.officer_secret = officer["client_secret"].as_str().unwrap().into();
        std::fs::write(inst.officer_secret_file(), &inst.officer_secret).unwrap();
        // Every sensitive category granted: the API and fidelity tests read back exactly what
        // they wrote (the access tests register narrower clients of their own).
        let creds = inst.register(&[
            "--name",
            "test facility",
            "--role",
            "facility-system",
            "--organization",
            "Organization/test-facility",
            "--scopes",
            "system/*.cruds",
            "--sensitive",
            "HIV,PSY,ETH,SDV,STD,SUD,SICKLE,GDIS,R,V,PHOTO",
            "--budget-per-hour",
            "1000000",
            "--budget-per-day",
            "10000000",
            "--rate-per-second",
            "1000000",
            "--burst",
            "1000000",
            "--max-page",
            "1000",
            "--max-concurrent",
            "10000",
        ]);
        inst.client_id = creds["client_id"].as_str().unwrap().into();
        inst.client_secret = creds["client_secret"].as_str().unwrap().into();
        inst
    }
    /// Registers a client with `brankas clients create <args>` and, if it awaits approval,
    /// approves it as the harness's security officer; returns its id and secret.
    pub fn register(&self, args: &[&str]) -> Value {
        let c = self.register_pending(args);
        if c["status"] == "pending_approval" {
            self.approve(c["client_id"].as_str().unwrap());
        }
        c
    }
    /// `brankas clients create <args>` only: the client may await approval.
    pub fn register_pending(&self, args: &[&str]) -> Value {
        let mut all = vec!["clients", "create"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(out.status.success(), "clients create failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("clients create prints JSON")
    }
    /// Approves the request pending on `client_id` as the harness's security officer (CLI).
    pub fn approve(&self, client_id: &str) {
        let f = self.officer_secret_file();
        let out = self.cli(&["clients", "approve", client_id, "--approver-id", &self.officer_id, "--approver-secret-file", f.to_str().unwrap()]);
        assert!(out.status.success(), "clients approve failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    pub fn officer_secret_file(&self) -> PathBuf {
        self.root.path().join("officer.secret")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }
    pub fn key_file(&self) -> PathBuf {
        self.root.path().join("master.key")
    }
    pub fn log_file(&self) -> PathBuf {
        self.root.path().join("server.log")
    }
    /// Runs a CLI subcommand against this instance's data directory and key file.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).args(args).arg("--data-dir").arg(self.data_dir()).arg("--key-file").arg(self.key_file()).args(&self.extra).output().expect("run brankas")
    }
    /// Starts `brankas serve --insecure-http` on a free loopback port.
    pub fn serve(&self) -> Server {
        self.serve_with(&["--insecure-http"])
    }
    pub fn serve_with(&self, extra: &[&str]) -> Server {
        self.serve_in(&self.data_dir(), extra)
    }

    /// A server of this instance with `data_dir` as its own directory (a second server of a
    /// deployment whose store is elsewhere).
    pub fn serve_in(&self, data_dir: &Path, extra: &[&str]) -> Server {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file()).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--key-file")
            .arg(self.key_file())
            .args(extra)
            .args(&self.extra)
            .env("BRANKAS_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn brankas serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("listening line");
        let ev: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("unexpected first line: {line}"));
        let url = ev["url"].as_str().unwrap().to_string();
        let root = url.trim_end_matches("/fhir").to_string();
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let s = Server {
            child,
            base: url,
            root,
            http,
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            token: String::new(),
            fingerprint: ev["tls_fingerprint"].as_str().map(String::from),
        };
        s.wait_healthy();
        let mut s = s;
        if !extra.iter().any(|a| *a != "--insecure-http") {
            s.token = s.new_token();
        }
        s
    }
}

/// A running server.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT/fhir`
    pub base: String,
    /// `http://127.0.0.1:PORT`
    pub root: String,
    pub http: reqwest::blocking::Client,
    pub client_id: String,
    pub client_secret: String,
    /// A bearer token of the instance's facility-system client.
    pub token: String,
    pub fingerprint: Option<String>,
}

impl Server {
    fn wait_healthy(&self) {
        if !self.root.starts_with("http://") {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.http.get(format!("{}/health", self.root)).send().is_ok_and(|r| r.status() == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become healthy");
    }

    pub fn new_token(&self) -> String {
        self.token_for(&self.client_id, &self.client_secret)
    }

    /// A token for any client, by its secret.
    pub fn token_for(&self, client_id: &str, secret: &str) -> String {
        let r = self.http.post(format!("{}/auth/token", self.root)).basic_auth(client_id, Some(secret)).form(&[("grant_type", "client_credentials")]).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()["access_token"].as_str().unwrap().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http.get(self.url(path)).bearer_auth(&self.token).send().unwrap()
    }

    pub fn send_json(&self, method: reqwest::Method, path: &str, body: &Value) -> reqwest::blocking::Response {
        self.http.request(method, self.url(path)).bearer_auth(&self.token).header("content-type", "application/fhir+json").body(serde_json::to_vec(body).unwrap()).send().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        self.send_json(reqwest::Method::POST, path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        self.send_json(reqwest::Method::PUT, path, body)
    }

    pub fn delete(&self, path: &str) -> reqwest::blocking::Response {
        self.http.delete(self.url(path)).bearer_auth(&self.token).send().unwrap()
    }

    /// Creates a resource and returns it as stored.
    pub fn create(&self, body: &Value) -> Value {
        let t = body["resourceType"].as_str().unwrap();
        let r = self.post(t, body);
        let status = r.status();
        let v: Value = r.json().unwrap();
        assert_eq!(status, 201, "create {t}: {v}");
        v
    }

    /// SIGTERM and wait (graceful).
    pub fn stop(mut self) {
        unsafe_kill(self.child.id(), 15);
        let _ = self.child.wait();
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Every file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The extension with which the server stamps who wrote a patient's record.
pub const WRITTEN_BY: &str = "https://brankas.id/fhir/StructureDefinition/written-by";

/// `resource` without server-managed `meta.versionId` / `meta.lastUpdated` and writer stamps
/// (and an emptied meta).
pub fn without_server_meta(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if let Some(ext) = meta.get_mut("extension").and_then(Value::as_array_mut) {
            ext.retain(|e| e["url"] != WRITTEN_BY);
            if ext.is_empty() {
                meta.remove("extension");
            }
        }
        if meta.is_empty() {
            v.as_object_mut().unwrap().remove("meta");
        }
    }
    v
}

// ----- helpers added for security.rs -----

impl Instance {
    /// Starts `brankas serve --listen 127.0.0.1:0` with exactly `extra` and returns the child
    /// with its parsed listening line (`None` if the process printed none, e.g. because it
    /// refused to start). Unlike [`Instance::serve_with`] it neither waits for health nor
    /// fetches a token, so it also works for HTTPS and for start-up failures.
    pub fn spawn_serve(&self, extra: &[&str]) -> (Child, Option<Value>) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file()).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir())
            .arg("--key-file")
            .arg(self.key_file())
            .args(extra)
            .env("BRANKAS_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn brankas serve");
        let mut line = String::new();
        let n = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap_or(0);
        let ev = if n == 0 { None } else { serde_json::from_str(&line).ok() };
        (child, ev)
    }
}

impl Server {
    /// Process id of the server (to SIGKILL it from another thread).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The NIK identifier system.
pub const NIK_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik";

/// A registered client and a token of it.
pub struct Caller {
    pub id: String,
    pub token: String,
}

impl Instance {
    /// A `facility-system` client of `Organization/test-facility` (scopes `system/*.rs`) with a
    /// patient budget of `per_hour` an hour and `per_day` a day, and `extra` options.
    pub fn budgeted_facility(&self, s: &Server, name: &str, per_hour: u32, per_day: u32, extra: &[&str]) -> Caller {
        let (h, d) = (per_hour.to_string(), per_day.to_string());
        let mut args = vec!["--name", name, "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/*.rs"];
        args.extend(["--budget-per-hour", &h, "--budget-per-day", &d]);
        args.extend_from_slice(extra);
        self.caller(s, &args)
    }

    /// Registers a client (`brankas clients create <args>`) and gets it a token from `s`.
    pub fn caller(&self, s: &Server, args: &[&str]) -> Caller {
        let c = self.register(args);
        let id = c["client_id"].as_str().unwrap().to_string();
        Caller { token: s.token_for(&id, c["client_secret"].as_str().unwrap()), id }
    }
}

impl Server {
    /// A FHIR request with `token`: status and JSON body (`Null` if none).
    pub fn call(&self, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(token);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/fhir+json").body(serde_json::to_vec(b).unwrap());
        }
        let r = r.send().unwrap();
        let st = r.status().as_u16();
        let text = r.text().unwrap();
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET` with `token`.
    pub fn get_as(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(token, reqwest::Method::GET, path, None, &[])
    }
}

/// A woman born on 7 Aug 1990 with this NIK (which must agree) and family name.
pub fn patient(nik: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
           "name": [{"family": family, "given": ["Sri"]}], "gender": "female", "birthDate": "1990-08-07"})
}

/// A positive COVID-19 antigen result of patient `pid`.
pub fn observation(pid: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "94558-4"}]},
           "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2021-07-14T09:10:00+07:00",
           "valueCodeableConcept": {"text": "Positive"}})
}

/// The `next` link of a searchset Bundle, if any.
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(String::from)
}

/// The `id`s listed under `key` (`patients`, `canaries`) of a breach report.
pub fn report_ids(report: &Value, key: &str) -> std::collections::BTreeSet<String> {
    report[key].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

impl Server {
    /// `GET /admin/breach-report?client=...&since=2020-01-01` with an officer's token; must answer 200.
    pub fn breach_report(&self, officer_token: &str, client: &str) -> Value {
        let r = self.http.get(format!("{}/admin/breach-report", self.root)).bearer_auth(officer_token).query(&[("client", client), ("since", "2020-01-01")]).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    }
}

/// Copies the files (not the subdirectories) of `from` into `to`, creating it.
pub fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
