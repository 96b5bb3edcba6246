//! The deployment on PostgreSQL (`--database`): `init`, the CLI and `serve` on one database;
//! a second server with a directory of its own answers from the same store; a dump of the
//! database holds no patient's data in the clear. Needs `BRANKAS_TEST_DATABASE_URL` (`.ci/run`
//! starts a server, and sets `BRANKAS_REQUIRE_POSTGRES` so that these tests cannot skip).

mod common;

use common::{Instance, NIK_SYSTEM, observation, patient};
use serde_json::Value;

/// The test database and a schema of this test's own, or `None` (with a note) when none is
/// given and none is required.
fn database(name: &str) -> Option<(String, String)> {
    let Ok(url) = std::env::var("BRANKAS_TEST_DATABASE_URL") else {
        assert!(std::env::var_os("BRANKAS_REQUIRE_POSTGRES").is_none(), "BRANKAS_REQUIRE_POSTGRES is set but BRANKAS_TEST_DATABASE_URL is not");
        eprintln!("scale-out: BRANKAS_TEST_DATABASE_URL not set; skipped");
        return None;
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    Some((url, format!("{name}_{}_{}", std::process::id(), stamp % 1_000_000_000)))
}

fn drop_schema(url: &str, schema: &str) {
    let out = std::process::Command::new("psql").args([url, "-q", "-c", &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_deployment_on_postgres_serves_from_any_server_and_its_dump_holds_no_plaintext() {
    let Some((url, schema)) = database("deploy") else { return };
    let inst = Instance::init_with(&["--database", &url, "--database-schema", &schema]);
    // The store is in the database: the data directory holds no database file.
    assert!(!inst.data_dir().join("brankas.db").exists());
    // Initialising it twice is refused.
    let again = std::process::Command::new(common::BIN)
        .args(["init", "--data-dir"])
        .arg(inst.root.path().join("other"))
        .arg("--key-file")
        .arg(inst.key_file())
        .args(["--database", &url, "--database-schema", &schema])
        .output()
        .unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already initialised"));

    let a = inst.serve();
    let nik = "3171054708900003";
    let mut p = patient(nik, "Sulistyowati");
    p["telecom"] = serde_json::json!([{"system": "phone", "value": "+62 812-7777-1234"}]);
    let pid = a.create(&p)["id"].as_str().unwrap().to_string();
    let mut o = observation(&pid);
    o["valueCodeableConcept"] = serde_json::json!({"text": "Reaktif HIV rapid test"});
    let oid = a.create(&o)["id"].as_str().unwrap().to_string();

    // A second server, with a directory of its own, answers from the same store.
    let other = inst.root.path().join("server-b");
    let b = inst.serve_in(&other, &["--insecure-http"]);
    let (st, got) = b.get_as(&b.new_token(), &format!("Observation/{oid}"));
    assert_eq!((st, got["valueCodeableConcept"]["text"].as_str()), (200, Some("Reaktif HIV rapid test")), "{got}");
    let token = b.new_token();
    let (st, found) = b.get_as(&token, &format!("Patient?identifier={NIK_SYSTEM}|{nik}"));
    assert_eq!((st, found["total"].as_u64()), (200, Some(1)), "{found}");
    // A NIK held on one server is held on all of them.
    let (st, dup) = b.call(&token, reqwest::Method::POST, "Patient", Some(&patient(nik, "Lain")), &[]);
    assert_eq!(st, 409, "{dup}");
    // A budget is one budget, whichever server a request reaches: a client allowed two
    // patients an hour reads one on each server, and the third, on either, is refused.
    let mut ids = Vec::new();
    for (n, family) in [("3171054708900011", "Wibowo"), ("3171054708900029", "Santoso"), ("3171054708900037", "Halim")] {
        let mut q = patient(n, family);
        q["managingOrganization"] = serde_json::json!({"reference": "Organization/test-facility"});
        ids.push(a.create(&q)["id"].as_str().unwrap().to_string());
    }
    let budgeted = inst.budgeted_facility(&a, "reader", 2, 100, &["--on-exceed", "throttle"]);
    // A token from one server is good on the other (both sign with the deployment's keys).
    let token_b = budgeted.token.clone();
    assert_eq!(a.get_as(&budgeted.token, &format!("Patient/{}", ids[0])).0, 200);
    assert_eq!(b.get_as(&token_b, &format!("Patient/{}", ids[1])).0, 200);
    assert_eq!(a.get_as(&budgeted.token, &format!("Patient/{}", ids[2])).0, 429);
    assert_eq!(b.get_as(&token_b, &format!("Patient/{}", ids[2])).0, 429);
    // Both servers append one audit log.
    let out = inst.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    a.stop();
    b.stop();

    // The dump of the deployment's schema: no identity, no clinical text, in the clear.
    let dump = std::process::Command::new("pg_dump").args([&url, "--schema", &schema, "--no-owner"]).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let text = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(text.contains("CREATE TABLE") && text.len() > 10_000, "the dump holds the tables");
    for secret in [nik, "Sulistyowati", "812-7777-1234", "8127771234", "Reaktif HIV", "1990-08-07", "94558-4"] {
        assert!(!text.contains(secret), "the dump holds {secret:?} in the clear");
    }
    // Nor do the servers' own directories.
    for f in common::all_files(inst.root.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for secret in [nik, "Sulistyowati", "Reaktif HIV"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} holds {secret:?}", f.display());
        }
    }

    // Restarted, the first server reads what both wrote.
    let a = inst.serve();
    let (st, v): (u16, Value) = a.get_as(&a.new_token(), &format!("Patient/{pid}"));
    assert_eq!((st, v["name"][0]["family"].as_str()), (200, Some("Sulistyowati")));
    a.stop();
    // Commands that work on the embedded store's files say so.
    let out = inst.cli(&["verify"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pg_dump"), "{}", String::from_utf8_lossy(&out.stderr));
    drop_schema(&url, &schema);
}
