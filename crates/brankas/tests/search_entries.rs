//! Searches inside one patient decide on sealed search entries and open whole only the
//! records they return: same answers (results, totals, paging, `_sort`, labels) with entries
//! and without them (records written before entries existed), a page costs its own records,
//! and an entry that was altered, swapped or replayed fails the search instead of deciding it.

mod common;

use common::{Caller, Instance, Server, next_link, patient};
use rusqlite::{Connection, params};
use serde_json::{Value, json};

fn scrape(s: &Server, token: &str) -> String {
    s.http.get(format!("{}/metrics", s.root)).bearer_auth(token).send().unwrap().text().unwrap()
}

fn opened(text: &str, kind: &str) -> u64 {
    let name = format!("brankas_records_opened_total{{kind=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&name)).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// An Observation of `pid` that varies with `i`: code, status, value, time, labels.
fn obs(pid: &str, i: usize) -> Value {
    let codes = ["94558-4", "8310-5", "8867-4", "2345-7", "718-7"];
    let statuses = ["final", "amended", "preliminary"];
    let mut o = json!({
        "resourceType": "Observation", "status": statuses[i % 3],
        "code": {"coding": [{"system": "http://loinc.org", "code": codes[i % 5]}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": format!("2021-{:02}-{:02}T09:{:02}:00+07:00", 1 + i % 12, 1 + (i * 7) % 28, i % 60),
        "valueQuantity": {"value": (i * 37 % 200) as f64 / 10.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        "note": [{"text": format!("note {i} that no search parameter reads")}],
    });
    if i % 7 == 3 {
        o["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]});
    }
    if i % 11 == 5 {
        o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]);
    }
    o
}

/// Creates `n` Observations of `pid` in transactions of at most 250.
fn seed(s: &Server, pid: &str, n: usize) {
    for start in (0..n).step_by(250) {
        let entries: Vec<Value> = (start..n.min(start + 250)).map(|i| json!({"resource": obs(pid, i), "request": {"method": "POST", "url": "Observation"}})).collect();
        let r = s.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}));
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }
}

/// Every page of a search as `(total, ids in order)`, following the `next` links.
fn all_pages(s: &Server, token: &str, path: &str) -> Vec<(Value, Vec<String>)> {
    let (st, mut b) = s.get_as(token, path);
    assert_eq!(st, 200, "{path}: {b}");
    let mut out = Vec::new();
    loop {
        let ids = b["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap_or("?").to_string()).collect();
        out.push((b["total"].clone(), ids));
        let Some(next) = next_link(&b) else { break };
        let r = s.http.get(&next).bearer_auth(token).send().unwrap();
        assert_eq!(r.status(), 200);
        b = r.json().unwrap();
    }
    out
}

fn queries(pid: &str) -> Vec<String> {
    [
        format!("Observation?patient={pid}"),
        format!("Observation?patient={pid}&_count=7"),
        format!("Patient/{pid}/Observation?_count=9&_sort=date"),
        format!("Observation?patient={pid}&_sort=-date,_lastUpdated&_count=10"),
        format!("Observation?patient={pid}&_sort=-_lastUpdated&_count=13"),
        format!("Observation?patient={pid}&code=http://loinc.org|8310-5&_count=4"),
        format!("Observation?patient={pid}&status=final,amended&date=ge2021-06-01&_count=6"),
        format!("Observation?patient={pid}&value-quantity=gt10&_sort=_id"),
        format!("Observation?patient={pid}&category=laboratory"),
        format!("Observation?patient={pid}&_security=HIV"),
        format!("Observation?patient={pid}&_summary=count"),
        format!("Observation?patient={pid}&_elements=status&_count=5"),
        format!("Observation?patient={pid}&_lastUpdated=gt2000-01-01&_count=20"),
    ]
    .into()
}

fn answers(s: &Server, callers: &[&str], pid: &str) -> Vec<Vec<(Value, Vec<String>)>> {
    let mut out = Vec::new();
    for t in callers {
        for q in queries(pid) {
            out.push(all_pages(s, t, &q));
        }
        let (st, all) = s.get_as(t, &format!("Patient/{pid}/$everything"));
        assert_eq!(st, 200);
        out.push(vec![(all["total"].clone(), all["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect())]);
    }
    out
}

fn no_grants(inst: &Instance, s: &Server) -> Caller {
    // The default facility's organization, without the sensitive grants.
    inst.caller(s, &["--name", "general", "--role", "facility-system", "--organization", "Organization/test-facility", "--scopes", "system/*.cruds"])
}

#[test]
fn searches_answer_the_same_with_entries_and_without() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient("3171054708900011", "Entries"))["id"].as_str().unwrap().to_string();
    let n = 120;
    seed(&s, &pid, n);
    let general = no_grants(&inst, &s);
    // Another facility writes three records of the patient: with no care relationship it
    // reaches only those (its writer stamp, kept in the entries, decides).
    let other = inst.caller(&s, &["--name", "rs-b", "--role", "facility-system", "--organization", "Organization/rs-b", "--scopes", "system/*.cruds", "--sensitive", "HIV"]);
    for i in 0..3 {
        let (st, v) = s.call(&other.token, reqwest::Method::POST, "Observation", Some(&obs(&pid, 1000 + i)), &[]);
        assert_eq!(st, 201, "{v}");
    }

    let with = answers(&s, &[&s.token, &general.token, &other.token], &pid);
    // Labels hide records from a client without the grant, and its totals do not count them.
    let hidden = (0..n).filter(|i| i % 7 == 3).count();
    let (_, count) = s.get_as(&general.token, &format!("Observation?patient={pid}&_summary=count"));
    assert_eq!(count["total"], (n + 3 - hidden) as u64, "{count}");
    let (_, count) = s.get_as(&s.token, &format!("Observation?patient={pid}&_summary=count"));
    assert_eq!(count["total"], (n + 3) as u64);
    let (_, theirs) = s.get_as(&other.token, &format!("Observation?patient={pid}&_count=2"));
    assert_eq!(theirs["total"], 3, "a facility outside the patient's care reaches what it wrote: {theirs}");
    let (_, labelled) = s.get_as(&general.token, &format!("Observation?patient={pid}&_security=HIV"));
    assert_eq!(labelled["total"], 0);

    // The same records without their entries (as written before entries existed): every
    // answer is the same, decided on the whole records.
    let db = Connection::open(inst.data_dir().join("brankas.db")).unwrap();
    let removed = db.execute("DELETE FROM entries", []).unwrap();
    assert!(removed > n, "the records had entries ({removed})");
    let without = answers(&s, &[&s.token, &general.token, &other.token], &pid);
    assert_eq!(with.len(), without.len());
    for (i, (a, b)) in with.iter().zip(&without).enumerate() {
        assert_eq!(a, b, "answer {i} differs without entries");
    }
    assert!(with.iter().flatten().any(|(_, ids)| ids.len() > 1), "the answers are not empty");
    // A record written again gets its entry back.
    let (_, one) = s.get_as(&s.token, &format!("Observation?patient={pid}&_count=1"));
    let mut r = one["entry"][0]["resource"].clone();
    let id = r["id"].as_str().unwrap().to_string();
    r["status"] = json!("cancelled");
    assert_eq!(s.put(&format!("Observation/{id}"), &r).status(), 200);
    assert_eq!(db.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
    let (_, found) = s.get_as(&s.token, &format!("Observation?patient={pid}&status=cancelled"));
    assert_eq!(found["entry"][0]["resource"]["id"], id.as_str());
}

#[test]
fn a_compartment_search_opens_only_the_records_of_its_page() {
    let inst = Instance::init();
    let token_file = inst.root.path().join("metrics.token");
    let metrics = "scraper-token-7a2e91c0";
    std::fs::write(&token_file, format!("{metrics}\n")).unwrap();
    let mut s = inst.serve_with(&["--insecure-http", "--metrics-token-file", token_file.to_str().unwrap()]);
    s.token = s.new_token();
    let pid = s.create(&patient("3171054708900012", "Halaman"))["id"].as_str().unwrap().to_string();
    seed(&s, &pid, 500);
    let general = no_grants(&inst, &s);
    // Warm the gate (care record, data key) so that what is counted is the search.
    assert_eq!(s.get_as(&general.token, &format!("Observation?patient={pid}&_count=1")).0, 200);

    // Searches that name only the patient (and sort by `_lastUpdated`, the default) are decided
    // on entries: only the page is opened whole (for a count, whose disclosure names each
    // counted record's category, the records counted). Others (criteria or sort keys an entry
    // does not hold) open the records whole.
    for (who, path, page, on_entries) in [
        (&s.token, format!("Observation?patient={pid}&_count=10"), 10, true),
        (&general.token, format!("Observation?patient={pid}&_count=10&_sort=-_lastUpdated"), 10, true),
        (&general.token, format!("Patient/{pid}/Observation?_count=10"), 10, true),
        (&general.token, format!("Observation?patient={pid}&_count=10&_sort=-date"), 10, false),
        (&s.token, format!("Patient/{pid}/Observation?_count=10&code=http://loinc.org|8310-5"), 10, false),
        (&general.token, format!("Observation?patient={pid}&_summary=count"), 0, true),
    ] {
        let before = scrape(&s, metrics);
        let (st, b) = s.get_as(who, &path);
        let after = scrape(&s, metrics);
        assert_eq!(st, 200, "{b}");
        assert_eq!(b["entry"].as_array().map_or(0, Vec::len), page, "{path}");
        assert!(b["total"].as_u64().unwrap() >= 100, "{path}: {}", b["total"]);
        let records = opened(&after, "record") - opened(&before, "record");
        let entries = opened(&after, "entry") - opened(&before, "entry");
        if on_entries {
            // The page's records (a count's: those counted), and at most a few of the patient's
            // own (care, consents).
            let served = if page == 0 { b["total"].as_u64().unwrap() } else { page as u64 };
            assert!(records <= served + 2, "{path}: {records} whole records opened for {served} served or counted");
            assert!(entries >= 500, "{path}: decided on the entries ({entries})");
        } else {
            assert!(records >= 500, "{path}: {records} whole records opened");
        }
    }
}

#[test]
fn an_altered_swapped_or_replayed_entry_fails_the_search() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient("3171054708900013", "Segel"))["id"].as_str().unwrap().to_string();
    seed(&s, &pid, 4);
    let search = format!("Observation?patient={pid}&_count=2");
    assert_eq!(s.get_as(&s.token, &search).0, 200);
    let db = Connection::open(inst.data_dir().join("brankas.db")).unwrap();
    let rows: Vec<(Vec<u8>, i64, Vec<u8>)> = {
        let mut q = db.prepare("SELECT e.rkey, e.version, e.entry FROM entries e JOIN current c ON c.rkey = e.rkey WHERE c.rtype = 'Observation' ORDER BY e.rkey").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(rows.len(), 4);
    let put = |k: &[u8], v: i64, e: &[u8]| db.execute("UPDATE entries SET version = ?2, entry = ?3 WHERE rkey = ?1", params![k, v, e]).unwrap();
    let failed = |what: &str| {
        let (st, b) = s.get_as(&s.token, &search);
        assert_eq!(st, 500, "{what}: {b}");
        assert!(b.to_string().contains("integrity"), "{what}: {b}");
    };

    // One bit flipped.
    let mut flipped = rows[0].2.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    put(&rows[0].0, rows[0].1, &flipped);
    failed("a flipped bit");
    put(&rows[0].0, rows[0].1, &rows[0].2);
    assert_eq!(s.get_as(&s.token, &search).0, 200);

    // Another record's entry (same patient, same key): it does not open under this record.
    put(&rows[0].0, rows[0].1, &rows[1].2);
    failed("a swapped entry");
    put(&rows[0].0, rows[0].1, &rows[0].2);

    // The record is updated; its old entry is put back as the new version's.
    let (_, page) = s.get_as(&s.token, &format!("Observation?patient={pid}&_count=10"));
    let ids: Vec<String> = page["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    let (old_rkey, old_entry): (Vec<u8>, Vec<u8>) = {
        let mut r = s.get(&format!("Observation/{}", ids[0])).json::<Value>().unwrap();
        let before: Vec<(Vec<u8>, Vec<u8>)> =
            db.prepare("SELECT rkey, entry FROM entries").unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
        r["status"] = json!("entered-in-error");
        assert_eq!(s.put(&format!("Observation/{}", ids[0]), &r).status(), 200);
        let after: Vec<(Vec<u8>, Vec<u8>)> =
            db.prepare("SELECT rkey, entry FROM entries").unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
        before.into_iter().find(|b| after.iter().any(|a| a.0 == b.0 && a.1 != b.1)).expect("the updated record's entry changed")
    };
    db.execute("UPDATE entries SET entry = ?2 WHERE rkey = ?1", params![old_rkey, old_entry]).unwrap();
    failed("a replayed entry of an older version");

    // `brankas verify` finds it too.
    s.stop();
    let out = inst.cli(&["verify"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["problems"].to_string().contains("search-entry"), "{report}");
    assert!(report["counts"]["search_entries"].as_u64().unwrap() >= 5, "{report}");
}
