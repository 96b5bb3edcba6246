//! Smoke test of the harness itself: init, serve, token, create, read.
mod common;
use serde_json::json;

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
