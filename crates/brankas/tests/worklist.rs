//! Facility work lists under load, through the HTTP API: a busy facility's writers add to one
//! list at once without conflicts, and a list costs storage in proportion to its visits.

mod common;

use std::collections::BTreeSet;
use std::sync::Barrier;

use common::{Instance, Server, patient};
use serde_json::{Value, json};

/// The default caller's organization (see `common::Instance`).
const ORG: &str = "Organization/test-facility";

/// A visit of `pid` to the facility, starting in the clock hour 01:00 UTC of 30 Nov 2026.
fn visit(pid: &str, minute: usize) -> Value {
    json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")}, "serviceProvider": {"reference": ORG},
        "period": {"start": format!("2026-11-30T08:{:02}:{:02}+07:00", minute % 60, minute / 60 % 60), "end": "2026-11-30T10:00:00+07:00"}})
}

/// A NIK of the district 3171 for a woman born 7 Aug 1990, unique per `n`.
fn nik(n: usize) -> String {
    format!("317105470890{:04}", n + 1)
}

/// Creates `n` patients on `threads` threads; returns their ids.
fn patients(s: &Server, n: usize, threads: usize) -> Vec<String> {
    let per = n.div_ceil(threads);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    (t * per..((t + 1) * per).min(n))
                        .map(|i| {
                            let (st, v) = s.call(&s.token, reqwest::Method::POST, "Patient", Some(&patient(&nik(i), "Lestari")), &[]);
                            assert_eq!(st, 201, "{v}");
                            v["id"].as_str().unwrap().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// The ids the facility's work list of 30 Nov 2026 lists (one page of up to 500).
fn listed(s: &Server) -> BTreeSet<String> {
    let (st, v) = s.get_as(&s.token, &format!("Encounter?service-provider={ORG}&date=2026-11-30&_count=500"));
    assert_eq!(st, 200, "{v}");
    assert!(common::next_link(&v).is_none(), "one page");
    v["entry"].as_array().map(|a| a.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn sixty_four_writers_registering_visits_in_one_facility_hour_never_conflict() {
    let inst = Instance::init();
    // 64 writers from one address are exactly the default per-address connection limit, and
    // the client's pool can hold a connection or two from setup beside them: a refused 65th
    // connection would be the limit working, not a conflict. Room above it keeps this test
    // about work lists.
    let mut s = inst.serve_with(&["--insecure-http", "--max-connections-per-address", "256"]);
    s.token = s.new_token();
    const WRITERS: usize = 64;
    const EACH: usize = 4;
    let pids = patients(&s, WRITERS, 8);
    let start = Barrier::new(WRITERS);
    let results: Vec<(u16, Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = pids
            .iter()
            .enumerate()
            .map(|(t, pid)| {
                let (s, start) = (&s, &start);
                sc.spawn(move || {
                    start.wait();
                    (0..EACH).map(|i| s.call(&s.token, reqwest::Method::POST, "Encounter", Some(&visit(pid, t * EACH + i)), &[])).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<String> = results.iter().filter(|(st, _)| *st != 201).map(|(st, v)| format!("{st}: {}", v["issue"][0]["diagnostics"])).collect();
    assert!(failed.is_empty(), "{} of {} visits were refused, e.g. {:?}", failed.len(), results.len(), &failed[..failed.len().min(3)]);
    let created: BTreeSet<String> = results.iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(created.len(), WRITERS * EACH);
    assert_eq!(listed(&s), created, "every visit is on the facility's work list, once");
}

/// Bytes the work lists take in the database: the sealed list documents of the design that
/// rewrote a list whole (every version kept), and the rows of list entries.
fn worklist_bytes(inst: &Instance) -> i64 {
    let db = rusqlite::Connection::open_with_flags(inst.data_dir().join("brankas.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let documents: i64 = db.query_row("SELECT COALESCE(SUM(length(rkey) + length(sealed)), 0) FROM versions WHERE rtype = 'BrankasWorklist'", [], |r| r.get(0)).unwrap();
    let has_entries: bool = db.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'list_entries')", [], |r| r.get(0)).unwrap();
    let entries: i64 =
        if has_entries { db.query_row("SELECT COALESCE(SUM(length(list) + length(entry) + length(sealed)), 0) FROM list_entries", [], |r| r.get(0)).unwrap() } else { 0 };
    documents + entries
}

#[test]
fn a_work_list_grows_in_proportion_to_its_visits() {
    let inst = Instance::init();
    let s = inst.serve();
    const N: usize = 120;
    let pids = patients(&s, N, 4);
    let post = |range: std::ops::Range<usize>| -> Vec<String> {
        std::thread::scope(|sc| {
            let hs: Vec<_> = range
                .collect::<Vec<_>>()
                .chunks(N / 4)
                .map(|chunk| {
                    let (s, pids) = (&s, &pids);
                    let chunk = chunk.to_vec();
                    sc.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|i| {
                                let (st, v) = s.call(&s.token, reqwest::Method::POST, "Encounter", Some(&visit(&pids[i % N], i)), &[]);
                                assert_eq!(st, 201, "{v}");
                                v["id"].as_str().unwrap().to_string()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    };
    let first = post(0..N);
    let one = worklist_bytes(&inst);
    assert!(one > 0, "the list is stored");
    let second = post(N..2 * N);
    let two = worklist_bytes(&inst);
    // One entry per visit: twice the visits, twice the bytes. (Rewriting a whole list per
    // visit and keeping every version grows with the square: about four times.)
    let ratio = two as f64 / one as f64;
    assert!((1.9..=2.1).contains(&ratio), "{N} visits took {one} bytes, {} took {two} (x{ratio:.2})", 2 * N);
    assert_eq!(listed(&s).len(), 2 * N);
    // Updates that keep a visit in its hour add nothing to the list.
    for id in first.iter().chain(&second).take(20) {
        let (st, mut enc) = s.get_as(&s.token, &format!("Encounter/{id}"));
        assert_eq!(st, 200);
        enc["status"] = json!("cancelled");
        assert_eq!(s.call(&s.token, reqwest::Method::PUT, &format!("Encounter/{id}"), Some(&enc), &[]).0, 200);
    }
    assert_eq!(worklist_bytes(&inst), two, "an update in the same hour is no new entry");
    assert_eq!(listed(&s).len(), 2 * N);
}

/// `brankas verify`: exit status and its JSON.
fn verify(inst: &Instance) -> (i32, Value) {
    let out = inst.cli(&["verify"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("verify prints one JSON object: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

#[test]
fn verify_opens_every_work_list_entry_and_names_one_moved_to_another_list() {
    let inst = Instance::init();
    let s = inst.serve();
    let pids = patients(&s, 3, 1);
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(s.call(&s.token, reqwest::Method::POST, "Encounter", Some(&visit(pid, i)), &[]).0, 201);
    }
    // Another facility-hour: another list.
    let mut other = visit(&pids[0], 0);
    other["period"]["start"] = json!("2026-11-30T12:00:00+07:00");
    other["period"]["end"] = json!("2026-11-30T13:00:00+07:00");
    assert_eq!(s.call(&s.token, reqwest::Method::POST, "Encounter", Some(&other), &[]).0, 201);
    s.stop();
    let (code, v) = verify(&inst);
    assert_eq!((code, v["counts"]["list_entries"].as_u64()), (0, Some(4)), "{v}");
    // An entry moved under the other list's tag (same id, same sealed bytes) does not open.
    let db = rusqlite::Connection::open(inst.data_dir().join("brankas.db")).unwrap();
    let lists: Vec<Vec<u8>> =
        db.prepare("SELECT list FROM list_entries GROUP BY list ORDER BY COUNT(*)").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(lists.len(), 2);
    let entry: Vec<u8> = db.query_row("SELECT entry FROM list_entries WHERE list = ?1 LIMIT 1", [&lists[1]], |r| r.get(0)).unwrap();
    assert_eq!(db.execute("UPDATE list_entries SET list = ?1 WHERE list = ?2 AND entry = ?3", rusqlite::params![lists[0], lists[1], entry]).unwrap(), 1);
    drop(db);
    let (code, v) = verify(&inst);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["problems_total"], 1, "{v}");
    assert_eq!(v["problems"][0]["kind"], "list-entry", "{v}");
}

/// Not a test: a measurement. `BRANKAS_WL_USERS` writers (32) each register
/// `BRANKAS_WL_ITERATIONS` visits (40) at one facility in one hour; prints throughput,
/// latencies, refusals and database bytes as JSON. Run with
/// `cargo test --release -p brankas --test worklist -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_concurrent_registrations_at_one_facility_hour() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (users, iterations) = (env("BRANKAS_WL_USERS", 32), env("BRANKAS_WL_ITERATIONS", 40));
    let inst = Instance::init();
    let s = inst.serve();
    let pids = patients(&s, users, 8);
    let start = Barrier::new(users);
    let t0 = std::time::Instant::now();
    let results: Vec<(u16, f64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = pids
            .iter()
            .enumerate()
            .map(|(u, pid)| {
                let (s, start) = (&s, &start);
                sc.spawn(move || {
                    start.wait();
                    (0..iterations)
                        .map(|i| {
                            let t = std::time::Instant::now();
                            let (st, _) = s.call(&s.token, reqwest::Method::POST, "Encounter", Some(&visit(pid, u * iterations + i)), &[]);
                            (st, t.elapsed().as_secs_f64() * 1000.0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let ok = results.iter().filter(|(st, _)| *st == 201).count();
    let mut ms: Vec<f64> = results.iter().map(|(_, m)| *m).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    let wl = worklist_bytes(&inst);
    s.stop();
    let files: u64 = ["brankas.db", "brankas.db-wal"].iter().filter_map(|f| std::fs::metadata(inst.data_dir().join(f)).ok()).map(|m| m.len()).sum();
    println!(
        "{}",
        json!({"users": users, "iterations": iterations, "seconds": secs, "created": ok, "refused": results.len() - ok,
            "created_per_second": ok as f64 / secs, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "worklist_bytes": wl, "database_bytes": files})
    );
}
