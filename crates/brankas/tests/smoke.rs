//! Smoke test of the harness itself: init, serve, token, create, read.
mod common;
use serde_json::{Value, json};

#[test]
fn init_serve_create_read() {
    let inst = common::Instance::init();
    let s = inst.serve();
    let p = s.create(&json!({"resourceType": "Patient", "gender": "male"}));
    let id = p["id"].as_str().unwrap();
    let r = s.get(&format!("Patient/{id}"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    s.stop();
}

/// The README's first command: `brankas demo` seeds a clinic and its patients, prints a token
/// and requests that work. Run here on a free port over plain HTTP, with the banner's token.
#[test]
fn demo_prints_a_token_and_requests_that_answer() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--insecure-http", "--data-dir"])
        .arg(dir.path().join("demo-data"))
        .env("BRANKAS_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its output is read to the end on a thread of its own: a closed pipe would stop the demo.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut base, mut token) = (String::new(), String::new());
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) {
        if let Some(rest) = line.split("running at ").nth(1) {
            base = rest.split_whitespace().next().unwrap().to_string();
        }
        if let Some(t) = line.trim().strip_prefix("TOKEN=") {
            token = t.to_string();
            break;
        }
    }
    assert!(!base.is_empty() && !token.is_empty(), "the demo printed no base URL or token");
    let http = reqwest::blocking::Client::new();
    let found: Value = http.get(format!("{base}/Patient?identifier=https://fhir.kemkes.go.id/id/nik%7C3171054708900003")).bearer_auth(&token).send().unwrap().json().unwrap();
    assert_eq!(found["total"], 1, "{found}");
    let pid = found["entry"][0]["resource"]["id"].as_str().unwrap();
    let all: Value = http.get(format!("{base}/Patient/{pid}/$everything")).bearer_auth(&token).send().unwrap().json().unwrap();
    assert_eq!(all["total"], 3, "Patient, Encounter and Observation: {all}");
    let _ = child.kill();
    let _ = child.wait();
}
