//! Canaries that any walk meets (issue 13, finding 5): 120 real patients with visits spread
//! over a year at one facility and 5 canaries planted among them; a stolen facility credential
//! walks the facility's work list newest first, oldest first by weeks, oldest first by days,
//! and by days in random order. Each walk is cut off at its first canary; the figures (real
//! patients taken before the trip, per walk order) are printed for BENCHMARKS.md.

mod common;

use std::collections::BTreeSet;

use common::{Instance, NIK_SYSTEM, Server};
use serde_json::{Value, json};

const DAY_US: i64 = 86_400_000_000;

fn now_us() -> i64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()) as i64
}

/// (year, month, day, hour, minute) of a UTC time in microseconds (civil-from-days).
fn civil(us: i64) -> (i64, i64, i64, i64, i64) {
    let secs = us.div_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60)
}

fn date(us: i64) -> String {
    let (y, m, d, _, _) = civil(us);
    format!("{y:04}-{m:02}-{d:02}")
}

fn instant(us: i64) -> String {
    let (y, m, d, h, mi) = civil(us);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:00Z")
}

/// Walks `windows` (inclusive day ranges, as days before now) in the order given, each sorted
/// by `sort`, ten visits a page; returns the real patients received before the first refusal,
/// and whether the walk was refused at all.
fn walk(s: &Server, token: &str, windows: &[(i64, i64)], sort: &str, canaries: &BTreeSet<String>) -> (usize, bool) {
    let now = now_us();
    let mut got: BTreeSet<String> = BTreeSet::new();
    for (from, to) in windows {
        let mut next = Some(s.url(&format!(
            "Encounter?service-provider=Organization/test-facility&date=ge{}&date=le{}&_sort={sort}&_count=10",
            date(now - from * DAY_US),
            date(now - to * DAY_US)
        )));
        while let Some(url) = next.take() {
            let r = s.http.get(&url).bearer_auth(token).send().unwrap();
            if r.status() != 200 {
                return (got.len(), true);
            }
            let b: Value = r.json().unwrap();
            for e in b["entry"].as_array().into_iter().flatten() {
                let pid = e["resource"]["subject"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_string();
                assert!(!canaries.contains(&pid), "a canary was served");
                got.insert(pid);
            }
            next = common::next_link(&b);
        }
    }
    (got.len(), false)
}

#[test]
fn walks_in_every_order_meet_a_canary_early() {
    let inst = Instance::init();
    let s = inst.serve();
    let now = now_us();
    // 120 patients, one visit each, every third day over the past 360 days.
    for i in 0..120i64 {
        let nik = format!("317105470890{:04}", i + 1);
        let p = s.create(&json!({"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": nik}],
            "name": [{"family": format!("Pasien{i}"), "given": ["Sri"]}], "gender": "female", "birthDate": "1990-08-07"}));
        let start = now - (i * 3 + 1) * DAY_US;
        s.create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{}", p["id"].as_str().unwrap())}, "serviceProvider": {"reference": "Organization/test-facility"},
            "period": {"start": instant(start), "end": instant(start + 1_800_000_000)}}));
    }
    let out = inst.cli(&["canary", "create", "--count", "5", "--organization", "Organization/test-facility"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let planted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let canaries: BTreeSet<String> = planted["canaries"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(canaries.len(), 5);

    let thief = |name: &str| inst.budgeted_facility(&s, name, 100000, 100000, &["--rate-per-second", "100000", "--burst", "100000"]);
    // Days before now: newest first in 92-day windows; oldest first by weeks and by days;
    // by days in a fixed pseudo-random order.
    let newest: Vec<(i64, i64)> = (0..4).map(|k| (k * 92 + 91, k * 92)).collect();
    let weekly: Vec<(i64, i64)> = (0..53).rev().map(|k| (k * 7 + 6, k * 7)).collect();
    let daily: Vec<(i64, i64)> = (0..366).rev().map(|d| (d, d)).collect();
    let mut random = daily.clone();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..random.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut figures = Vec::new();
    for (name, windows, sort) in
        [("newest first", &newest, "-date"), ("oldest first, weekly", &weekly, "date"), ("oldest first, daily", &daily, "date"), ("random days", &random, "date")]
    {
        let t = thief(name);
        let (taken, tripped) = walk(&s, &t.token, windows, sort, &canaries);
        assert!(tripped, "{name}: the walk met no canary");
        figures.push((name, taken));
        let (st, _) = s.get_as(&t.token, "Patient?identifier=x|y");
        assert_eq!(st, 401, "{name}: suspended after the trip");
    }
    println!("real patients taken before a canary tripped (5 canaries among 120 patients over a year): {figures:?}");
    for (name, taken) in &figures {
        // Canaries sit at the oldest and newest visits and every 30 visits between: a walk
        // from either end meets one within its first page; one from anywhere within ~30.
        let bound = if name.starts_with("random") { 60 } else { 10 };
        assert!(*taken <= bound, "{name}: {taken} real patients before the canary");
    }
}
