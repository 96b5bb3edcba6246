//! The crash loop (issue 14): twenty SIGKILLs of a server during concurrent creates, updates
//! and deletes, restarting it each time. At the end every acknowledged write (2xx) is there
//! with the version it was acknowledged with, `brankas audit verify` passes, and every
//! acknowledged write has its audit records: the one written ahead of it naming the version,
//! and its request's outcome record.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Instance, Server, observation, patient};
use serde_json::{Value, json};

const KILLS: usize = 20;
const WRITERS: usize = 4;

/// What a client was told about one Observation.
#[derive(Clone, Debug)]
struct Acked {
    patient: String,
    version: u64,
    deleted: bool,
    /// The value written by the acknowledged version.
    value: u64,
    /// A write to it after the acknowledged one got no answer (it may have been stored).
    uncertain: bool,
}

/// An acknowledged write: the request id the server answered it with, and what it wrote.
struct Ack {
    request_id: String,
    reference: String,
}

#[derive(Default)]
struct Ledger {
    resources: BTreeMap<String, Acked>,
    acks: Vec<Ack>,
}

/// A small deterministic generator per writer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn obs(pid: &str, value: u64) -> Value {
    let mut o = observation(pid);
    o.as_object_mut().unwrap().remove("valueCodeableConcept");
    o["valueQuantity"] = json!({"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"});
    o
}

/// Writes to its patient's Observations until `stop`: creates, updates and deletes, noting
/// every acknowledged one. A resource whose write got no answer is left alone afterwards.
fn writer(base: String, token: String, pid: String, seed: u64, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>, counter: Arc<std::sync::atomic::AtomicU64>) {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut rng = Rng(seed);
    let mut live: Vec<String> = ledger.lock().unwrap().resources.iter().filter(|(_, a)| a.patient == pid && !a.deleted && !a.uncertain).map(|(id, _)| id.clone()).collect();
    while !stop.load(Ordering::Relaxed) {
        let value = counter.fetch_add(1, Ordering::Relaxed);
        let pick = rng.below(10);
        let target = if live.is_empty() || pick < 4 { None } else { Some(rng.below(live.len() as u64) as usize) };
        let (req, reference_of): (reqwest::blocking::RequestBuilder, Option<String>) = match target {
            None => (http.post(format!("{base}/Observation")).json(&obs(&pid, value)), None),
            Some(i) if pick < 8 => {
                let id = &live[i];
                let mut o = obs(&pid, value);
                o["id"] = json!(id);
                (http.put(format!("{base}/Observation/{id}")).json(&o), Some(id.clone()))
            }
            Some(i) => (http.delete(format!("{base}/Observation/{}", live[i])), Some(live[i].clone())),
        };
        let deleting = target.is_some() && pick >= 8;
        let r = req.bearer_auth(&token).header("content-type", "application/fhir+json").send();
        let ok = r.as_ref().is_ok_and(|r| r.status().is_success());
        if !ok {
            // Unanswered or refused: if it names a resource, that resource is left alone now.
            if let Some(id) = reference_of {
                live.retain(|x| *x != id);
                if let Some(a) = ledger.lock().unwrap().resources.get_mut(&id) {
                    a.uncertain = true;
                }
            }
            if r.is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        let r = r.unwrap();
        let request_id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let mut l = ledger.lock().unwrap();
        if deleting {
            let id = reference_of.unwrap();
            let a = l.resources.get_mut(&id).unwrap();
            a.version += 1;
            a.deleted = true;
            let reference = format!("Observation/{id}/_history/{}", a.version);
            l.acks.push(Ack { request_id, reference });
            live.retain(|x| *x != id);
        } else {
            let body: Value = r.json().unwrap();
            let id = body["id"].as_str().unwrap().to_string();
            let version: u64 = body["meta"]["versionId"].as_str().unwrap().parse().unwrap();
            l.resources.insert(id.clone(), Acked { patient: pid.clone(), version, deleted: false, value, uncertain: false });
            l.acks.push(Ack { request_id, reference: format!("Observation/{id}/_history/{version}") });
            if !live.contains(&id) {
                live.push(id);
            }
        }
    }
}

/// Every audit record of one patient, as AuditEvents, following next links.
fn audit_of(s: &Server, officer: &str, pid: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = format!("AuditEvent?patient={pid}&_count=200");
    loop {
        let (st, b) = s.get_as(officer, &path);
        assert_eq!(st, 200, "{b}");
        out.extend(b["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()));
        match common::next_link(&b) {
            Some(next) => path = next.split("/fhir/").nth(1).unwrap().to_string(),
            None => return out,
        }
    }
}

#[test]
fn twenty_kills_during_concurrent_writes_lose_no_acknowledged_write_nor_its_audit() {
    let inst = Instance::init();
    let s = inst.serve();
    let patients: Vec<String> = (0..WRITERS).map(|i| s.create(&patient(&format!("31710547089{:05}", 100 + i), &format!("Crash{i}")))["id"].as_str().unwrap().to_string()).collect();
    drop(s);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("crash loop seeded with {seed}");
    let mut rng = Rng(seed);
    for round in 0..KILLS {
        let s = inst.serve();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = patients
            .iter()
            .enumerate()
            .map(|(i, pid)| {
                let (base, token, pid, ledger, stop, counter) = (s.base.clone(), s.token.clone(), pid.clone(), ledger.clone(), stop.clone(), counter.clone());
                let seed = seed ^ ((round * WRITERS + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                std::thread::spawn(move || writer(base, token, pid, seed, ledger, stop, counter))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + rng.below(900)));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    let l = ledger.lock().unwrap();
    eprintln!("{} acknowledged writes to {} Observations over {KILLS} kills", l.acks.len(), l.resources.len());
    assert!(l.acks.len() >= KILLS * 5, "the writers got too few answers to prove anything: {}", l.acks.len());

    let s = inst.serve();
    for (id, a) in &l.resources {
        let (st, now) = s.get_as(&s.token, &format!("Observation/{id}"));
        if a.deleted {
            assert_eq!(st, 410, "Observation/{id}: acknowledged deleted at version {}: {now}", a.version);
            continue;
        }
        if a.uncertain {
            // A later write got no answer: it may have been stored (an update, or a delete).
            if st == 200 {
                let current: u64 = now["meta"]["versionId"].as_str().unwrap().parse().unwrap();
                assert!(current >= a.version, "Observation/{id}: version {current} behind the acknowledged {}", a.version);
            } else {
                assert_eq!(st, 410, "Observation/{id}: acknowledged at version {}: {now}", a.version);
            }
        } else {
            assert_eq!(st, 200, "Observation/{id}: acknowledged at version {}: {now}", a.version);
            assert_eq!(now["meta"]["versionId"], json!(a.version.to_string()), "Observation/{id}: the acknowledged version is the current one");
        }
        let (st, then) = s.get_as(&s.token, &format!("Observation/{id}/_history/{}", a.version));
        assert_eq!(st, 200, "Observation/{id}/_history/{}: {then}", a.version);
        assert_eq!(then["valueQuantity"]["value"], json!(a.value), "Observation/{id}: the acknowledged version's content");
    }

    let officer = s.token_for(&inst.officer_id, &inst.officer_secret);
    let mut ahead: BTreeSet<String> = BTreeSet::new();
    let mut succeeded: BTreeSet<String> = BTreeSet::new();
    for pid in &patients {
        for e in audit_of(&s, &officer, pid) {
            let entity = e["entity"].as_array().unwrap();
            let rid = entity.iter().find(|x| x["type"]["code"] == "XrequestId").and_then(|x| x["what"]["identifier"]["value"].as_str()).unwrap_or_default().to_string();
            if e.get("outcome").is_none() {
                for x in entity {
                    if let Some(r) = x["what"]["reference"].as_str() {
                        ahead.insert(format!("{rid} {r}"));
                    }
                }
            } else if e["outcome"] == "0" {
                succeeded.insert(rid);
            }
        }
    }
    for a in &l.acks {
        assert!(ahead.contains(&format!("{} {}", a.request_id, a.reference)), "no record written ahead of {} (request {})", a.reference, a.request_id);
        assert!(succeeded.contains(&a.request_id), "no outcome record of the request that wrote {} (request {})", a.reference, a.request_id);
    }
    s.stop();
    let out = inst.cli(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify after {KILLS} kills: {}", String::from_utf8_lossy(&out.stdout));
}
