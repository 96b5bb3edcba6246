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

/// The README's first command: `brankas demo` seeds a clinic and its patients, and prints on
/// stdout a token and lines that run as pasted: no placeholder to fill in, a lookup, the
/// patient's whole record, a write with the demo client. Run here on a free port over plain
/// HTTP; the lines themselves are run by `sh` where `curl` is installed.
#[test]
fn demo_prints_a_token_and_requests_that_answer() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--insecure-http", "--data-dir"])
        .arg(dir.path().join("demo-data"))
        .env("BRANKAS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its output is read to the end on a thread of its own: a closed pipe would stop the demo.
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) {
        let last = line.starts_with("Health:");
        banner.push(line);
        if last {
            break;
        }
    }
    let text = banner.join("\n");
    let base = text.split("running at ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string();
    let token = banner.iter().find_map(|l| l.strip_prefix("TOKEN=eyJ")).map(|t| format!("eyJ{t}")).unwrap_or_default();
    assert!(!base.is_empty() && !token.is_empty(), "the demo printed no base URL or token: {text}");
    let commands: Vec<&String> = banner.iter().skip_while(|l| !l.starts_with("TOKEN=")).take_while(|l| !l.is_empty()).collect();
    assert!(commands.len() >= 6, "{text}");
    assert!(commands.iter().all(|l| !l.contains('<')), "a line needs a hand edit: {text}");
    let http = reqwest::blocking::Client::new();
    let found: Value = http.get(format!("{base}/Patient?identifier=https://fhir.kemkes.go.id/id/nik%7C3171054708900003")).bearer_auth(&token).send().unwrap().json().unwrap();
    assert_eq!(found["total"], 1, "{found}");
    let pid = found["entry"][0]["resource"]["id"].as_str().unwrap();
    let everything = || -> Value { http.get(format!("{base}/Patient/{pid}/$everything")).bearer_auth(&token).send().unwrap().json().unwrap() };
    assert_eq!(everything()["total"], 3, "Patient, Encounter and Observation");
    // The printed lines, as a user pastes them: the write lands.
    let has_curl = std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    if has_curl {
        let script: String = commands.iter().map(|l| format!("{l}\n")).collect();
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(everything()["total"], 4, "the pasted write added an Observation: {}", String::from_utf8_lossy(&out.stdout));
    } else {
        eprintln!("curl is not installed: the printed lines were checked, not run");
    }
    let _ = child.kill();
    let _ = child.wait();
}
