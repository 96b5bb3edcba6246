//! `/metrics`: Prometheus figures for the operator's scraper, behind the metrics token, that
//! move with the traffic and never name a patient, an id, a query value or a credential.

mod common;

use common::{Instance, NIK_SYSTEM, patient};

const NIK: &str = "3171054708900777";
const FAMILY: &str = "Wirasantosa";

fn scrape(s: &common::Server, token: Option<&str>) -> (u16, String) {
    let mut r = s.http.get(format!("{}/metrics", s.root));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// The value of the sample `name` (with its labels, exactly as written), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[test]
fn metrics_move_with_traffic_behind_their_token_and_name_no_patient() {
    let inst = Instance::init();
    let token_file = inst.root.path().join("metrics.token");
    let metrics_token = "scraper-token-4f1c2a9b7d";
    std::fs::write(&token_file, format!("{metrics_token}\n")).unwrap();
    let mut s = inst.serve_with(&["--insecure-http", "--metrics-token-file", token_file.to_str().unwrap()]);
    s.token = s.new_token();

    // Unauthenticated, a wrong token, or a client's own access token: 401.
    assert_eq!(scrape(&s, None).0, 401);
    assert_eq!(scrape(&s, Some("scraper-token-4f1c2a9b7e")).0, 401);
    assert_eq!(scrape(&s, Some(&s.token)).0, 401, "an access token is not the metrics credential");

    let (st, before) = scrape(&s, Some(metrics_token));
    assert_eq!(st, 200, "{before}");
    let created = s.create(&patient(NIK, FAMILY));
    let pid = created["id"].as_str().unwrap().to_string();
    assert_eq!(s.get(&format!("Patient/{pid}")).status(), 200);
    assert_eq!(s.get(&format!("Patient?identifier={NIK_SYSTEM}|{NIK}&family={FAMILY}")).status(), 200);
    assert_eq!(s.get("Patient/no-such-patient-id-123").status(), 404);

    let (st, after) = scrape(&s, Some(metrics_token));
    assert_eq!(st, 200);
    let count = |t: &str, route: &str, method: &str, class: &str| {
        sample(t, &format!("brankas_http_requests_total{{method=\"{method}\",route=\"{route}\",class=\"{class}\"}}")).unwrap_or(0.0)
    };
    assert_eq!(count(&after, "/fhir/{rtype}", "POST", "2xx") - count(&before, "/fhir/{rtype}", "POST", "2xx"), 1.0, "{after}");
    assert_eq!(count(&after, "/fhir/{rtype}/{id}", "GET", "2xx") - count(&before, "/fhir/{rtype}/{id}", "GET", "2xx"), 1.0);
    assert_eq!(count(&after, "/fhir/{rtype}/{id}", "GET", "4xx") - count(&before, "/fhir/{rtype}/{id}", "GET", "4xx"), 1.0);
    assert_eq!(count(&after, "/fhir/{rtype}", "GET", "2xx") - count(&before, "/fhir/{rtype}", "GET", "2xx"), 1.0);
    assert!(after.contains("brankas_http_request_duration_seconds_bucket{method=\"GET\",route=\"/fhir/{rtype}/{id}\",class=\"2xx\",le=\"+Inf\"} 1"), "{after}");
    let moved = |name: &str| sample(&after, name).unwrap_or(0.0) > sample(&before, name).unwrap_or(0.0);
    assert!(moved("brankas_audit_records_appended_total"), "audit appends counted");
    assert!(moved("brankas_audit_append_duration_seconds_count"));
    assert!(moved("brankas_audit_tree_size"), "the log grew");
    assert_eq!(sample(&after, "brankas_audit_append_failures_total"), Some(0.0));
    let keys = |t: &str| sample(t, "brankas_key_cache_hits_total").unwrap_or(0.0) + sample(t, "brankas_key_cache_misses_total").unwrap_or(0.0);
    assert!(keys(&after) > keys(&before), "data-key lookups counted");
    assert!(sample(&after, "brankas_db_bytes{file=\"brankas.db\"}").unwrap() > 0.0, "{after}");
    assert!(after.contains("brankas_db_wal_bytes{file=\"brankas.db\"}"));
    assert!(after.contains("brankas_blob_bytes "));
    assert!(after.contains("brankas_guard_suspensions_total 0"));

    // Nothing of the requests reaches a label or a value: not the patient's id, NIK or name,
    // not a query value, not a client id, secret or token.
    for secret in [pid.as_str(), NIK, FAMILY, "no-such-patient-id-123", &inst.client_id, &inst.client_secret, &s.token, metrics_token, &inst.admin_id] {
        assert!(!after.contains(secret), "the scrape names {secret}");
    }
    for l in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(l.starts_with("brankas_"), "{l}");
    }
    s.stop();
}

#[test]
fn without_a_metrics_token_there_is_no_metrics_endpoint() {
    let inst = Instance::init();
    let s = inst.serve();
    assert_eq!(scrape(&s, None).0, 404);
    assert_eq!(scrape(&s, Some(&s.token)).0, 404);
    s.stop();
}
