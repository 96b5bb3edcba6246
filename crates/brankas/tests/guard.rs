//! A stolen credential reads a handful of patients, then stops, and we can name every one:
//! patient budgets, canaries, suspension, alerts and the breach report, through the API and
//! the CLI.

mod common;

use std::collections::BTreeSet;

use common::{Caller, Instance, NIK_SYSTEM, Server, next_link, report_ids};
use serde_json::{Value, json};

fn admin(s: &Server, token: &str, path: &str) -> (u16, Value) {
    let r = s.http.get(format!("{}{path}", s.root)).bearer_auth(token).send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

/// `n` patients with NIKs of women born on 7 Aug 1990 in one district, each with a recent
/// encounter at `Organization/test-facility` (written by the instance's facility client).
fn population(s: &Server, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let nik = format!("317105470890{:04}", i + 1);
            let p = s.create(&json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
                "name": [{"family": format!("Pasien{i}"), "given": ["Sri"]}], "gender": "female", "birthDate": "1990-08-07"}));
            let id = p["id"].as_str().unwrap().to_string();
            s.create(&json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{id}")}, "serviceProvider": {"reference": "Organization/test-facility"},
                "period": {"start": "2026-11-29T08:00:00+07:00", "end": "2026-11-29T08:30:00+07:00"}}));
            (id, nik)
        })
        .collect()
}

fn alerts(s: &Server, officer: &Caller) -> Vec<Value> {
    let (st, v) = admin(s, &officer.token, "/admin/alerts");
    assert_eq!(st, 200, "{v}");
    v["alerts"].as_array().unwrap().clone()
}

fn breach(s: &Server, officer: &Caller, client: &str) -> Value {
    s.breach_report(&officer.token, client)
}

#[test]
fn a_stolen_credential_is_cut_off_at_its_budget_and_the_report_names_every_patient() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 12);
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    // The facility's clinician app, with a budget of 5 patients an hour.
    let stolen = inst.caller(
        &s,
        &[
            "--name",
            "ward app",
            "--role",
            "clinician",
            "--organization",
            "Organization/test-facility",
            "--practitioner",
            "Practitioner/x",
            "--scopes",
            "user/*.rs",
            "--budget-per-hour",
            "5",
            "--budget-per-day",
            "50",
        ],
    );

    // The thief's script, as fast as it can: identity enumeration (NIK lookups), then each
    // patient's record. Its own record of what it received:
    let mut received: BTreeSet<String> = BTreeSet::new();
    let mut codes = Vec::new();
    for (id, nik) in &people {
        let (st, b) = s.get_as(&stolen.token, &format!("Patient?identifier={NIK_SYSTEM}|{nik}"));
        codes.push(st);
        if st == 200 {
            for e in b["entry"].as_array().into_iter().flatten() {
                received.insert(e["resource"]["id"].as_str().unwrap().to_string());
            }
        }
        let (st, b) = s.get_as(&stolen.token, &format!("Patient/{id}"));
        codes.push(st);
        if st == 200 {
            received.insert(b["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(received.len(), 5, "at most the budget, and all of it: {codes:?}");
    assert!(codes.contains(&429), "the request past the budget is refused: {codes:?}");
    let first_refusal = codes.iter().position(|c| *c == 429).unwrap();
    assert!(codes[first_refusal + 1..].iter().all(|c| *c == 401), "suspended from the next request on: {codes:?}");
    // The registry says so, with the budget and its use; an alert names the client.
    let (st, v) = admin(&s, &officer.token, &format!("/admin/clients/{}", stolen.id));
    assert_eq!(st, 200);
    assert_eq!(v["status"], "suspended");
    assert_eq!(v["patient_budget"], json!({"per_hour": 5, "per_day": 50, "on_exceed": "suspend"}));
    assert_eq!(v["patient_budget_use"]["this_hour"], 5);
    let al = alerts(&s, &officer);
    assert!(al.iter().any(|a| a["kind"] == "patient-budget" && a["client_id"] == stolen.id.as_str() && a["detail"]["action"] == "suspended"), "{al:?}");
    // The breach report names exactly the patients the script received.
    let report = breach(&s, &officer, &stolen.id);
    assert_eq!(report_ids(&report, "patients"), received, "{report}");
    assert!(report["refused_attempts"].as_u64().unwrap() >= 1);
    // The CLI agrees.
    let o = inst.cli(&["breach-report", "--client", &stolen.id, "--since", "2020-01-01"]);
    assert!(o.status.success());
    assert_eq!(report_ids(&serde_json::from_slice(&o.stdout).unwrap(), "patients"), received);

    // A stolen facility credential (its information system) walks the facility's work list
    // page by page, then tries identity enumeration.
    let sys = inst.budgeted_facility(&s, "simrs", 5, 50, &["--on-exceed", "suspend"]);
    let mut got: BTreeSet<String> = BTreeSet::new();
    let mut codes = Vec::new();
    let mut next = Some(s.url("Encounter?service-provider=Organization/test-facility&date=ge2026-11-01&date=le2026-12-31&_count=2"));
    while let Some(url) = next.take() {
        let r = s.http.get(&url).bearer_auth(&sys.token).send().unwrap();
        codes.push(r.status().as_u16());
        if r.status() != 200 {
            let body = r.text().unwrap();
            assert!(!body.contains("Pasien") && !body.contains("Patient/"), "a refused page discloses nothing: {body}");
            break;
        }
        let b: Value = r.json().unwrap();
        for e in b["entry"].as_array().into_iter().flatten() {
            got.insert(e["resource"]["subject"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_string());
        }
        next = next_link(&b);
    }
    for (_, nik) in &people {
        let (st, b) = s.get_as(&sys.token, &format!("Patient?identifier={NIK_SYSTEM}|{nik}"));
        codes.push(st);
        for e in b["entry"].as_array().into_iter().flatten() {
            got.insert(e["resource"]["id"].as_str().unwrap().to_string());
        }
    }
    assert!(got.len() <= 5, "never more than the budget: {} ({codes:?})", got.len());
    assert_eq!(got.len(), 4, "two pages of two; the third would pass the budget: {codes:?}");
    assert_eq!(codes[..3], [200, 200, 429], "{codes:?}");
    assert!(codes[3..].iter().all(|c| *c == 401), "suspended from the next request on: {codes:?}");
    let (_, v) = admin(&s, &officer.token, &format!("/admin/clients/{}", sys.id));
    assert_eq!(v["status"], "suspended");
    assert!(alerts(&s, &officer).iter().any(|a| a["kind"] == "patient-budget" && a["client_id"] == sys.id.as_str()));
    assert_eq!(report_ids(&breach(&s, &officer, &sys.id), "patients"), got, "the report names exactly what the walk received");

    // Throttle instead of suspend: refused past the budget, still served within it.
    let slow = inst.budgeted_facility(&s, "kiosk", 2, 2, &["--on-exceed", "throttle"]);
    assert_eq!(s.get_as(&slow.token, &format!("Patient/{}", people[0].0)).0, 200);
    assert_eq!(s.get_as(&slow.token, &format!("Patient/{}", people[1].0)).0, 200);
    // The day's budget (2) is spent too: the answer says to come back at the next UTC day.
    let r = s.http.get(s.url(&format!("Patient/{}", people[2].0))).bearer_auth(&slow.token).send().unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(wait.abs_diff(to_midnight) <= 5, "Retry-After {wait} s, next UTC day in {to_midnight} s");
    assert!(r.text().unwrap().contains("next UTC day"));
    assert_eq!(s.get_as(&slow.token, &format!("Patient/{}", people[0].0)).0, 200, "patients already counted stay readable");
}

#[test]
fn the_first_touch_of_a_canary_suspends_and_nothing_real_follows() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 4);
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    // Planted by the CLI among the facility's patients, and by an officer over HTTP.
    let o = inst.cli(&["canary", "create", "--count", "3", "--organization", "Organization/test-facility"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let planted: Value = serde_json::from_slice(&o.stdout).unwrap();
    let canaries: Vec<(String, String)> =
        planted["canaries"].as_array().unwrap().iter().map(|v| (v["id"].as_str().unwrap().to_string(), v["nik"].as_str().unwrap().to_string())).collect();
    assert_eq!(canaries.len(), 3);
    assert!(canaries.iter().all(|(id, nik)| id.len() == 32 && nik.len() == 16), "ids like any server-assigned id, 16-digit NIKs");
    let r = s.http.post(format!("{}/admin/canaries", s.root)).bearer_auth(&officer.token).json(&json!({"count": 2, "organization": "Organization/test-facility"})).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["planted"], 2);
    let r = s.http.post(format!("{}/admin/canaries", s.root)).bearer_auth(&s.token).json(&json!({"count": 2})).send().unwrap();
    assert_eq!(r.status(), 403, "only officers plant canaries");

    let walker = inst.budgeted_facility(&s, "walker", 1000, 1000, &[]);
    // The walk: the facility's recent encounters, newest first, then each patient.
    let (st, b) = s.get_as(&walker.token, "Encounter?service-provider=Organization/test-facility&date=ge2026-11-20&date=le2026-12-31");
    assert_eq!(st, 403, "the work list holds canaries: the page is refused and the client suspended: {b}");
    assert!(!b.to_string().contains("Pasien"), "no real patient in the refusal: {b}");
    for (id, _) in &people {
        assert_eq!(s.get_as(&walker.token, &format!("Patient/{id}")).0, 401, "zero real patients after the canary");
    }
    // The refusal says why, per RFC 6750: the token is no longer valid (not that it expired).
    let r = s.http.get(s.url(&format!("Patient/{}", people[0].0))).bearer_auth(&walker.token).send().unwrap();
    assert_eq!(r.headers()["www-authenticate"].to_str().unwrap(), "Bearer realm=\"brankas\", error=\"invalid_token\", error_description=\"The access token is no longer valid\"");
    let al = alerts(&s, &officer);
    assert!(al.iter().any(|a| a["kind"] == "canary" && a["severity"] == "critical" && a["client_id"] == walker.id.as_str()), "{al:?}");

    // An identity lookup that hits a canary trips just the same, at any facility.
    let prober = inst.caller(&s, &["--name", "prober", "--role", "facility-system", "--organization", "Organization/rs-lain", "--scopes", "system/*.rs"]);
    assert_eq!(s.get_as(&prober.token, &format!("Patient?identifier={NIK_SYSTEM}|{}", people[1].1)).0, 200, "a real lookup is served");
    let (st, b) = s.get_as(&prober.token, &format!("Patient?identifier={NIK_SYSTEM}|{}", canaries[1].1));
    assert_eq!(st, 403, "{b}");
    assert_eq!(s.get_as(&prober.token, &format!("Patient?identifier={NIK_SYSTEM}|{}", people[0].1)).0, 401);
    // The breach report keeps canaries apart: trip-wires, not people to notify. (The refused
    // canary page disclosed nothing, so a report lists only what was served.)
    let report = breach(&s, &officer, &prober.id);
    assert_eq!(report_ids(&report, "patients"), BTreeSet::from([people[1].0.clone()]), "{report}");
    // Even the facility's own client trips on a canary read by id.
    let (st, _) = s.get_as(&s.token, &format!("Patient/{}", canaries[0].0));
    assert_eq!(st, 403);
    assert_eq!(s.get_as(&s.token, &format!("Patient/{}", people[0].0)).0, 401);
}

#[test]
fn two_servers_on_one_database_enforce_one_budget() {
    let inst = Instance::init();
    let a = inst.serve();
    let b = inst.serve();
    let people = population(&a, 8);
    let thief = inst.register(&[
        "--name",
        "ward app",
        "--role",
        "clinician",
        "--organization",
        "Organization/test-facility",
        "--practitioner",
        "Practitioner/x",
        "--scopes",
        "user/*.rs",
        "--budget-per-hour",
        "4",
        "--budget-per-day",
        "40",
    ]);
    let (id, secret) = (thief["client_id"].as_str().unwrap(), thief["client_secret"].as_str().unwrap());
    let (ta, tb) = (a.token_for(id, secret), b.token_for(id, secret));
    // Requests alternate between the two replicas.
    let mut received = 0;
    let mut codes = Vec::new();
    for (i, (pid, _)) in people.iter().enumerate() {
        let (s, t) = if i % 2 == 0 { (&a, &ta) } else { (&b, &tb) };
        let (st, _) = s.get_as(t, &format!("Patient/{pid}"));
        codes.push(st);
        if st == 200 {
            received += 1;
        }
    }
    assert_eq!(received, 4, "one budget across both replicas, not two: {codes:?}");
    assert_eq!(codes[4], 429);
    assert!(codes[5..].iter().all(|c| *c == 401), "suspended on both replicas: {codes:?}");
    a.stop();
    b.stop();
    let out = inst.cli(&["audit", "verify"]);
    assert!(out.status.success(), "two appenders, one intact log: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn failed_logins_lock_an_address_out_and_new_addresses_and_break_glass_raise_alerts() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 5);
    let officer = inst.caller(&s, &["--name", "officer", "--role", "security-officer", "--scopes", "system/AuditEvent.rs"]);
    let er = inst.caller(&s, &["--name", "igd", "--role", "facility-system", "--organization", "Organization/rs-lain", "--scopes", "system/*.rs"]);
    // Break-glass on four patients in one day: each an alert, the fourth above the threshold.
    for (id, _) in people.iter().take(4) {
        let r = s
            .http
            .get(s.url(&format!("Patient/{id}")))
            .bearer_auth(&er.token)
            .header("X-Purpose-Of-Use", "BTG")
            .header("X-Break-Glass-Reason", "unconscious, no ID")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let al = alerts(&s, &officer);
    let btg: Vec<&Value> = al.iter().filter(|a| a["kind"] == "break-glass" && a["client_id"] == er.id.as_str()).collect();
    assert_eq!(btg.len(), 4, "{al:?}");
    assert_eq!(btg.iter().filter(|a| a["severity"] == "high").count(), 1, "only the grant past the threshold of 3 is high");
    // The same credential from another address.
    let other = reqwest::blocking::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let r = other.get(s.url(&format!("Patient/{}", people[0].0))).bearer_auth(&er.token).send().unwrap();
    assert_eq!(r.status(), 200, "still within the break-glass grant");
    let al = alerts(&s, &officer);
    assert!(al.iter().any(|a| a["kind"] == "new-address" && a["client_id"] == er.id.as_str() && a["detail"]["address"] == "127.0.0.2"), "{al:?}");
    // Guessing a secret from one address: after 10 failures the token endpoint refuses that
    // address, right secret or not, for a while; other addresses are unaffected.
    for _ in 0..10 {
        let r = s.http.post(format!("{}/auth/token", s.root)).basic_auth(&er.id, Some("guess")).form(&[("grant_type", "client_credentials")]).send().unwrap();
        assert_eq!(r.status(), 401);
    }
    let (st, _) = {
        let r = s.http.post(format!("{}/auth/token", s.root)).basic_auth(&s.client_id, Some(&s.client_secret)).form(&[("grant_type", "client_credentials")]).send().unwrap();
        (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()))
    };
    assert_eq!(st, 429, "locked out");
    let r = other.post(format!("{}/auth/token", s.root)).basic_auth(&s.client_id, Some(&s.client_secret)).form(&[("grant_type", "client_credentials")]).send().unwrap();
    assert_eq!(r.status(), 200, "another address is not locked out");
    // Tokens already issued still work from the locked address (guessing is what stops).
    assert_eq!(s.get(&format!("Patient/{}", people[1].0)).status(), 200);
    let al = alerts(&s, &officer);
    assert!(al.iter().any(|a| a["kind"] == "auth-failures" && a["detail"]["address"] == "127.0.0.1" && a["detail"]["locked_seconds"] == 60), "{al:?}");
}

#[test]
fn request_rate_and_page_size_are_bounded_per_client() {
    let inst = Instance::init();
    let s = inst.serve();
    let people = population(&s, 5);
    let c = inst.caller(
        &s,
        &[
            "--name",
            "kiosk",
            "--role",
            "facility-system",
            "--organization",
            "Organization/test-facility",
            "--scopes",
            "system/*.rs",
            "--rate-per-second",
            "1",
            "--burst",
            "3",
            "--max-page",
            "2",
        ],
    );
    let codes: Vec<u16> = (0..4).map(|i| s.http.get(s.url(&format!("Patient/{}", people[i].0))).bearer_auth(&c.token).send().unwrap().status().as_u16()).collect();
    assert_eq!(codes, vec![200, 200, 200, 429], "a burst of 3, then 1 a second");
    let r = s.http.get(s.url(&format!("Patient/{}", people[0].0))).bearer_auth(&c.token).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some(), "429 says when to come back");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // A page never larger than the client's largest page, asked for or not.
    let (st, b) = s.get_as(&c.token, "Encounter?service-provider=Organization/test-facility&date=ge2026-11-01&date=le2026-12-31&_count=50");
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    assert!(b["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"), "the rest is a page away");
    let (st, v) = admin(&s, &s.token_for(&inst.admin_id, &inst.admin_secret), &format!("/admin/clients/{}", c.id));
    assert_eq!(st, 200);
    assert_eq!(v["limits"], json!({"requests_per_second": 1, "burst": 3, "max_page": 2, "max_concurrent": 64}));
}

/// A webhook receiver on loopback: answers 500 to the first request, 200 after; keeps every
/// request (signature header and body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

fn receiver() -> (u16, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut len, mut sig) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-brankas-signature:") {
                    sig = line.split_once(':').unwrap().1.trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            g.lock().unwrap().push((sig, body));
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = conn.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (port, got)
}

#[test]
fn alerts_are_pushed_to_a_signed_webhook_and_retried() {
    let inst = Instance::init();
    let (port, got) = receiver();
    let secret_file = inst.root.path().join("webhook.secret");
    std::fs::write(&secret_file, "a-webhook-secret-of-the-siem\n").unwrap();
    let mut s = inst.serve_with(&["--insecure-http", "--alert-webhook", &format!("http://127.0.0.1:{port}/alerts"), "--alert-webhook-secret-file", secret_file.to_str().unwrap()]);
    s.token = s.new_token();
    let people = population(&s, 3);
    let c = inst.budgeted_facility(&s, "kiosk", 1, 1, &[]);
    assert_eq!(s.get_as(&c.token, &format!("Patient/{}", people[0].0)).0, 200);
    assert_eq!(s.get_as(&c.token, &format!("Patient/{}", people[1].0)).0, 429);
    // Delivered: refused once (500), delivered on the retry a second later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one failed delivery and its retry");
    assert_eq!(got[0], got[1], "the retry sends the same signed body");
    let (sig, body) = &got[1];
    let alert: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(alert["kind"], "patient-budget");
    assert_eq!(alert["client_id"], c.id.as_str());
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"a-webhook-secret-of-the-siem");
    let want: String = aws_lc_rs::hmac::sign(&key, body).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sig, &format!("sha256={want}"), "HMAC-SHA256 of the exact body with the shared secret");
    assert!(!String::from_utf8_lossy(body).contains("Pasien"), "no patient data in alerts");
}
