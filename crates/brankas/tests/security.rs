//! Black-box security tests: the invariants of `THREAT-MODEL.md` (1 no plaintext at rest,
//! 3 ciphertext bound to its place, 4 lookups without plaintext, 5/11 deny by default and safe
//! on the wire, 10 nothing trusts input) checked through the binary's public interfaces only:
//! HTTP, the CLI, and the files it writes.
//!
//! Every test carries a positive control, so that it fails if the property breaks instead of
//! passing because it looked in the wrong place.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use common::{Instance, Server};
use reqwest::Method;
use serde_json::{Value, json};

const NIK_SYSTEM: &str = "https://fhir.kemkes.go.id/id/nik";
/// Planted in hostile input: no response body may echo it.
const MARK: &str = "QzMarkEr7731xQ";

// ---------------------------------------------------------------- helpers

/// Status and body text of a response.
fn done(r: reqwest::blocking::Response) -> (u16, String) {
    let st = r.status().as_u16();
    (st, r.text().unwrap_or_default())
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("response is not JSON: {body:.300}"))
}

/// `GET` with query pairs (properly encoded) and the server's token.
fn search(s: &Server, path: &str, pairs: &[(&str, &str)]) -> (u16, String) {
    done(s.http.get(s.url(path)).query(pairs).bearer_auth(&s.token).send().unwrap())
}

/// `GET` of a raw, already encoded path and query (sent as is).
fn get_raw(s: &Server, path_and_query: &str) -> (u16, String) {
    done(s.http.get(format!("{}/{}", s.base, path_and_query)).bearer_auth(&s.token).send().unwrap())
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Byte substring search.
fn find(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        match hay[i..=last].iter().position(|&b| b == needle[0]) {
            None => return false,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return true;
                }
                i = at + 1;
            }
        }
    }
    false
}

fn db(inst: &Instance) -> rusqlite::Connection {
    rusqlite::Connection::open(inst.data_dir().join("brankas.db")).unwrap()
}

/// A response that reports stored data failing its integrity check (500 OperationOutcome)
/// or no longer finds it (404), and carries none of `forbidden`.
fn assert_not_served(what: &str, (status, body): (u16, String), forbidden: &[&str]) {
    assert!(status == 500 || status == 404, "{what}: expected 500 (integrity) or 404, got {status}: {body:.400}");
    let v = parse(&body);
    assert_eq!(v["resourceType"], "OperationOutcome", "{what}: {body:.400}");
    if status == 500 {
        assert!(body.contains("integrity"), "{what}: the 500 must say the integrity check failed: {body:.400}");
    }
    for f in forbidden {
        assert!(!body.contains(f), "{what}: the error body carries {f:?}");
    }
}

// ---------------------------------------------------------------- seeded people

struct Person {
    nik: &'static str,
    given: &'static str,
    family: &'static str,
    gender: &'static str,
    birth: &'static str,
    phone: &'static str,
    line: &'static str,
    city: &'static str,
    /// Chief complaint (Encounter.reasonCode.text).
    anamnesis: &'static str,
    /// Condition.note.
    note: &'static str,
    /// Observation.valueString.
    lab: &'static str,
    /// DocumentReference.content.attachment.title.
    doc_title: &'static str,
}

impl Person {
    fn full_name(&self) -> String {
        format!("{} {}", self.given, self.family)
    }
    /// Every identifying or clinical value of this person, as sent.
    fn values(&self) -> Vec<String> {
        let mut v: Vec<String> = [self.nik, self.given, self.family, self.birth, self.phone, self.line, self.city, self.anamnesis, self.note, self.lab, self.doc_title]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(self.full_name());
        v
    }
    /// Forms the server derives (the phone as the index normalises it, and in national form).
    fn derived(&self) -> Vec<String> {
        let digits: String = self.phone.chars().filter(char::is_ascii_digit).collect();
        vec![digits.clone(), format!("0{}", &digits[2..])]
    }
}

/// Three fictional people with structurally valid NIKs (province 31, DDMMYY of the birth
/// date, +40 on the day for women).
const PEOPLE: [Person; 3] = [
    Person {
        nik: "3171015409870042",
        given: "Wulandari Kusumastuti",
        family: "Prawiradirja",
        gender: "female",
        birth: "1987-09-14",
        phone: "+6281377712345",
        line: "Jalan Kebon Sirih Barat Gang VII No. 23",
        city: "Jakarta Pusat",
        anamnesis: "Batuk berdarah dua minggu disertai keringat malam dan berat badan turun",
        note: "Kontak erat dengan penderita TB paru di rumah kos Menteng Dalam",
        lab: "BTA sputum positif dua plus pada pemeriksaan pagi hari",
        doc_title: "Surat persetujuan isolasi mandiri Wulandari",
    },
    Person {
        nik: "3174020311790117",
        given: "Bambang Trihatmodjo",
        family: "Sastrowardoyo",
        gender: "male",
        birth: "1979-11-03",
        phone: "+6285791234567",
        line: "Komplek Griya Cempaka Putih Blok F2 Nomor 9",
        city: "Jakarta Timur",
        anamnesis: "Nyeri dada kiri menjalar ke lengan sejak subuh tadi",
        note: "Riwayat merokok dua bungkus sehari selama dua puluh tahun",
        lab: "Antibodi HIV reaktif pada skrining ulang laboratorium rujukan",
        doc_title: "Hasil EKG rekaman dua belas sadapan Bambang",
    },
    Person {
        nik: "3173036502010009",
        given: "Ratna Sari Dewi",
        family: "Anggraeniputri",
        gender: "female",
        birth: "2001-02-25",
        phone: "+6287855501234",
        line: "Perumahan Taman Palem Lestari Cluster Anggrek B7",
        city: "Jakarta Barat",
        anamnesis: "Demam tinggi empat hari dengan bintik merah di lengan dan mimisan",
        note: "Hamil trimester kedua dengan riwayat keguguran sebelumnya",
        lab: "Antigen SARS-CoV-2 positif garis tipis pada kaset kedua",
        doc_title: "Rujukan pasien isolasi Ratna ke RSUD",
    },
];

fn patient_json(p: &Person) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NIK_SYSTEM, "value": p.nik}],
        "name": [{"use": "official", "text": p.full_name(), "family": p.family, "given": [p.given]}],
        "telecom": [{"system": "phone", "value": p.phone, "use": "mobile"}],
        "gender": p.gender,
        "birthDate": p.birth,
        "address": [{"use": "home", "line": [p.line], "city": p.city, "country": "ID"}]
    })
}

/// Creates the person's Patient and clinical record; returns everything sent (as stored).
fn seed_person(s: &Server, p: &Person, pdf_b64: &str) -> Vec<Value> {
    let pat = s.create(&patient_json(p));
    let subject = json!({"reference": format!("Patient/{}", id_of(&pat))});
    let enc = s.create(&json!({
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": subject, "reasonCode": [{"text": p.anamnesis}]
    }));
    let cond = s.create(&json!({
        "resourceType": "Condition", "subject": subject,
        "encounter": {"reference": format!("Encounter/{}", id_of(&enc))},
        "code": {"text": p.anamnesis}, "note": [{"text": p.note}]
    }));
    let obs = s.create(&json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "Pemeriksaan laboratorium"},
        "subject": subject, "valueString": p.lab
    }));
    let doc = s.create(&json!({
        "resourceType": "DocumentReference", "status": "current", "subject": subject,
        "content": [{"attachment": {"contentType": "application/pdf", "title": p.doc_title, "data": pdf_b64}}]
    }));
    vec![pat, enc, cond, obs, doc]
}

// ---------------------------------------------------------------- 1. the dump

/// Seeds patients, runs identity lookups and reads, stops the server (gracefully, or with
/// SIGKILL so the WAL stays behind), then searches every byte under the data directory and
/// the server log for every seeded value: zero hits.
fn dump_reveals_nothing(kill9: bool) {
    let inst = Instance::init();
    let s = inst.serve();
    let pdf = std::fs::read(common::corpus().join("attachments/Binary-example.pdf")).expect("corpus PDF");
    let pdf_b64 = B64.encode(&pdf);

    let gif = std::fs::read(common::corpus().join("attachments/Media-example.gif")).expect("corpus GIF");
    let mut sent = Vec::new();
    // Raw attachments (sealed blobs): the corpus PDF and GIF, and a file unique to each person.
    let mut raw_files: Vec<(String, Vec<u8>)> = Vec::new();
    for p in &PEOPLE {
        let created = seed_person(&s, p, &pdf_b64);
        let pid = id_of(&created[0]);
        let unique: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ p.nik.as_bytes()[(i % 16) as usize]).collect();
        for (name, ct, bytes) in [("PDF", "application/pdf", pdf.clone()), ("GIF", "image/gif", gif.clone()), ("unique file", "application/octet-stream", unique)] {
            let r = s
                .http
                .post(format!("{}/Binary", s.base))
                .bearer_auth(&s.token)
                .header("content-type", ct)
                .header("x-security-context", format!("Patient/{pid}"))
                .body(bytes.clone())
                .send()
                .unwrap();
            assert_eq!(r.status(), 201, "raw upload of the {name}");
            let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_string();
            let back = s.http.get(format!("{}/Binary/{id}", s.base)).bearer_auth(&s.token).send().unwrap().bytes().unwrap();
            assert_eq!(back.to_vec(), bytes, "the {name} reads back");
            raw_files.push((format!("{name} of {}", p.family), bytes));
        }
        // Identity lookups through the blind indexes: each finds exactly this patient.
        for pairs in [
            vec![("identifier", format!("{NIK_SYSTEM}|{}", p.nik))],
            vec![("phone", p.phone.to_string())],
            vec![("name", p.family.to_string()), ("birthdate", p.birth.to_string())],
        ] {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (st, body) = search(&s, "Patient", &pairs);
            assert_eq!(st, 200, "lookup {pairs:?}: {body:.300}");
            let b = parse(&body);
            assert_eq!(b["total"], 1, "lookup {pairs:?}");
            assert_eq!(b["entry"][0]["resource"]["id"], pid.as_str());
        }
        // Reads of the clinical record (decrypting it).
        assert_eq!(search(&s, &format!("Patient/{pid}/$everything"), &[]).0, 200);
        let (st, body) = search(&s, "Observation", &[("patient", &format!("Patient/{pid}"))]);
        assert_eq!(st, 200);
        assert!(body.contains(p.lab), "compartment search returns the lab value");
        let (st, body) = get_raw(&s, &format!("DocumentReference/{}", id_of(&created[4])));
        assert_eq!(st, 200);
        assert!(body.contains(&pdf_b64[1000..1100]), "the attachment reads back");
        sent.extend(created);
    }
    if kill9 {
        s.kill9();
        let wal = inst.data_dir().join("brankas.db-wal");
        assert!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0, "kill -9 must leave the WAL behind");
    } else {
        s.stop();
    }

    // The needles: every value raw, lowercased and base64; the PDF by a raw window from its
    // middle and by a window of its base64 form (as it travelled in the JSON).
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for p in &PEOPLE {
        for v in p.values().into_iter().chain(p.derived()) {
            needles.push((format!("{v:?}"), v.as_bytes().to_vec()));
            needles.push((format!("lowercase {v:?}"), v.to_lowercase().into_bytes()));
            needles.push((format!("base64 {v:?}"), B64.encode(v.as_bytes()).into_bytes()));
        }
    }
    let mid = pdf.len() / 2;
    let pdf_window = pdf[mid..mid + 32].to_vec();
    let bmid = pdf_b64.len() / 2;
    let b64_window = pdf_b64.as_bytes()[bmid..bmid + 64].to_vec();
    needles.push(("32 bytes from the middle of the PDF".into(), pdf_window.clone()));
    for (what, bytes) in &raw_files {
        for at in [0, bytes.len() / 2, bytes.len() - 64] {
            needles.push((format!("64 bytes at {at} of the raw {what}"), bytes[at..at + 64].to_vec()));
        }
    }
    needles.push(("64 characters from the middle of the PDF's base64".into(), b64_window.clone()));

    // Controls: every value is really in what was sent and read back (so zero hits below mean
    // something), and the scan does find a value that IS stored in clear (the client id).
    let plain = serde_json::to_vec(&sent).unwrap();
    for p in &PEOPLE {
        for v in p.values() {
            assert!(find(&plain, v.as_bytes()), "control: {v:?} is in the stored resources");
        }
    }
    assert!(find(&plain, &b64_window), "control: the base64 window is in the stored resources");
    assert!(find(&B64.decode(sent[4]["content"][0]["attachment"]["data"].as_str().unwrap()).unwrap(), &pdf_window), "control: the PDF window");

    let files = common::all_files(&inst.data_dir());
    assert!(files.iter().any(|f| f.ends_with("brankas.db")), "the scan covers the database");
    let mut total = 0usize;
    let mut client_id_seen = false;
    let mut hits = Vec::new();
    let log = inst.log_file();
    for f in files.iter().chain(std::iter::once(&log)) {
        let bytes = std::fs::read(f).unwrap();
        total += bytes.len();
        client_id_seen |= find(&bytes, inst.client_id.as_bytes());
        for (what, n) in &needles {
            if find(&bytes, n) {
                hits.push(format!("{what} in {}", f.display()));
            }
        }
    }
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("/fhir/{rtype}"), "control: the debug log was written and scanned");
    assert!(client_id_seen, "control: the scan finds the client id, which is stored in clear");
    assert!(total > 3 * pdf.len(), "control: the three attachments were written somewhere ({total} bytes scanned)");
    assert!(hits.is_empty(), "plaintext found at rest or in the log:\n{}", hits.join("\n"));
}

#[test]
fn dump_after_graceful_stop_reveals_nothing() {
    dump_reveals_nothing(false);
}

#[test]
fn dump_after_kill9_with_wal_reveals_nothing() {
    dump_reveals_nothing(true);
}

// ---------------------------------------------------------------- 2. tampering with rows

struct Row {
    rowid: i64,
    rkey: Vec<u8>,
    partition: Vec<u8>,
}

/// Rows of `rtype` at `version`, in write order.
fn rows(c: &rusqlite::Connection, rtype: &str, version: i64) -> Vec<Row> {
    let mut st = c.prepare("SELECT rowid, rkey, partition FROM versions WHERE rtype = ?1 AND version = ?2 ORDER BY rowid").unwrap();
    st.query_map(rusqlite::params![rtype, version], |r| Ok(Row { rowid: r.get(0)?, rkey: r.get(1)?, partition: r.get(2)? })).unwrap().map(Result::unwrap).collect()
}

fn sealed(c: &rusqlite::Connection, rowid: i64) -> Vec<u8> {
    c.query_row("SELECT sealed FROM versions WHERE rowid = ?1", [rowid], |r| r.get(0)).unwrap()
}

fn set_sealed(c: &rusqlite::Connection, rowid: i64, b: &[u8]) {
    assert_eq!(c.execute("UPDATE versions SET sealed = ?1 WHERE rowid = ?2", rusqlite::params![b, rowid]).unwrap(), 1);
}

/// Nine patients with distinct identities (NIK serials 0101..0109, all born 1990-01-01).
fn tamper_patient(i: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NIK_SYSTEM, "value": format!("317101010190{:04}", 101 + i)}],
        "name": [{"family": format!("Tamperfam{i}x"), "given": [format!("Given{i}q")]}],
        "telecom": [{"system": "phone", "value": format!("+62812555000{i:02}")}],
        "gender": "male",
        "birthDate": "1990-01-01"
    })
}

fn nik(i: usize) -> String {
    format!("317101010190{:04}", 101 + i)
}

#[test]
fn swapped_flipped_moved_and_misindexed_rows_are_never_served() {
    let inst = Instance::init();
    let s = inst.serve();
    let pats: Vec<Value> = (0..9).map(|i| s.create(&tamper_patient(i))).collect();
    let pid: Vec<String> = pats.iter().map(id_of).collect();
    let obs = |i: usize, v: &str| {
        s.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "lab"},
            "subject": {"reference": format!("Patient/{}", pid[i])}, "valueString": v}))
    };
    let o4 = obs(4, "Obsvalue-of-four-Kx81");
    let o5 = obs(5, "Obsvalue-of-five-Jw27");
    // Patient 6 gets a second version with a new name.
    let mut p6 = pats[6].clone();
    p6["name"] = json!([{"family": "Renamedfam6x", "given": ["Given6q"]}]);
    let (st, body) = done(s.put(&format!("Patient/{}", pid[6]), &p6));
    assert_eq!(st, 200, "{body}");
    s.stop();

    {
        let c = db(&inst);
        let p = rows(&c, "Patient", 1);
        let o = rows(&c, "Observation", 1);
        let p6v2 = rows(&c, "Patient", 2);
        assert_eq!((p.len(), o.len(), p6v2.len()), (9, 2, 1), "row layout as written");
        // Sanity of the write-order mapping: each Observation sits in its patient's partition.
        assert_eq!(o[0].partition, p[4].partition);
        assert_eq!(o[1].partition, p[5].partition);
        assert_eq!(p6v2[0].rkey, p[6].rkey);

        // (a) one bit flipped in patient 0's sealed row
        let mut b = sealed(&c, p[0].rowid);
        let m = b.len() / 2;
        b[m] ^= 0x10;
        set_sealed(&c, p[0].rowid, &b);
        // (b) the sealed blobs of patients 1 and 2 swapped
        let (s1, s2) = (sealed(&c, p[1].rowid), sealed(&c, p[2].rowid));
        set_sealed(&c, p[1].rowid, &s2);
        set_sealed(&c, p[2].rowid, &s1);
        // (c) patient 4's Observation moved into patient 5's partition
        assert_eq!(c.execute("UPDATE versions SET partition = ?1 WHERE rowid = ?2", rusqlite::params![p[5].partition, o[0].rowid]).unwrap(), 1);
        assert_eq!(c.execute("UPDATE current SET partition = ?1 WHERE rkey = ?2", rusqlite::params![p[5].partition, o[0].rkey]).unwrap(), 1);
        // (d) patient 6 rolled back: the current pointer names version 1 again
        assert_eq!(c.execute("UPDATE current SET vrow = ?1, version = 1 WHERE rkey = ?2", rusqlite::params![p[6].rowid, p[6].rkey]).unwrap(), 1);
        // (e) patient 7's blind-index terms now point at patient 8
        let n = c.execute("UPDATE blind SET rkey = ?1 WHERE rkey = ?2", rusqlite::params![p[8].rkey, p[7].rkey]).unwrap();
        assert!(n >= 3, "NIK, phone and name+birthdate terms of patient 7 ({n})");
    }

    let s = inst.serve();
    let name = |i: usize| format!("Tamperfam{i}x");
    // (a)
    assert_not_served("bit-flipped patient", get_raw(&s, &format!("Patient/{}", pid[0])), &[&name(0), &nik(0)]);
    assert_not_served("bit-flipped patient history", get_raw(&s, &format!("Patient/{}/_history", pid[0])), &[&name(0)]);
    // (b) neither patient's read returns the other's (or its own) content
    for (i, j) in [(1, 2), (2, 1)] {
        assert_not_served("swapped patient", get_raw(&s, &format!("Patient/{}", pid[i])), &[&name(i), &name(j), &nik(i), &nik(j)]);
    }
    assert_not_served("lookup of a swapped patient", search(&s, "Patient", &[("identifier", &format!("{NIK_SYSTEM}|{}", nik(1)))]), &[&name(2), &nik(2)]);
    // (c) the moved Observation is served neither directly nor in patient 5's compartment
    assert_not_served("moved observation", get_raw(&s, &format!("Observation/{}", id_of(&o4))), &["Obsvalue-of-four"]);
    let (st, body) = search(&s, "Observation", &[("patient", &format!("Patient/{}", pid[5]))]);
    assert!(!body.contains("Obsvalue-of-four"), "patient 5's search must not serve patient 4's moved row ({st})");
    if st != 200 {
        assert_not_served("patient 5 compartment", (st, body), &["Obsvalue-of-four"]);
    }
    let (st, body) = search(&s, &format!("Patient/{}/$everything", pid[5]), &[]);
    assert!(!body.contains("Obsvalue-of-four"), "patient 5's $everything must not serve the moved row ({st})");
    // (d) the rolled-back record is not silently served at its old version
    assert_not_served("rolled-back patient", get_raw(&s, &format!("Patient/{}", pid[6])), &[&name(6)]);
    // (e) a lookup of patient 7 never returns patient 8
    let (st, body) = search(&s, "Patient", &[("identifier", &format!("{NIK_SYSTEM}|{}", nik(7)))]);
    assert!(!body.contains(&pid[8]) && !body.contains(&name(8)), "NIK lookup of patient 7 returned patient 8 ({st}): {body:.400}");
    if st != 200 {
        assert_not_served("misindexed NIK lookup", (st, body), &[&pid[8], &name(8)]);
    } else {
        assert_eq!(parse(&body)["total"], 0);
    }
    let (st, body) = search(&s, "Patient", &[("phone", &format!("+62812555000{:02}", 7))]);
    assert!(!body.contains(&pid[8]), "phone lookup of patient 7 returned patient 8 ({st})");

    // Untouched resources still read, unchanged.
    for i in [3usize, 5, 7, 8] {
        let (st, body) = get_raw(&s, &format!("Patient/{}", pid[i]));
        assert_eq!(st, 200, "untouched patient {i}: {body:.300}");
        assert_eq!(parse(&body), pats[i]);
    }
    let (st, body) = get_raw(&s, &format!("Observation/{}", id_of(&o5)));
    assert_eq!((st, parse(&body)), (200, o5));
    let (st, body) = search(&s, "Patient", &[("identifier", &format!("{NIK_SYSTEM}|{}", nik(8)))]);
    assert_eq!(st, 200);
    let b = parse(&body);
    assert_eq!((b["total"].as_u64(), b["entry"][0]["resource"]["id"].as_str()), (Some(1), Some(pid[8].as_str())));
    // Old versions stay readable explicitly (vread), which is not a rollback.
    assert_eq!(get_raw(&s, &format!("Patient/{}/_history/1", pid[6])).0, 200);
    s.stop();
}

/// Rollback of a whole record (current pointer moved back AND the newer version rows
/// deleted) leaves only authentic, older rows: nothing inside the database can tell, so the
/// count of version rows is anchored outside it (beside the key file) and the server refuses
/// to start on fewer.
#[test]
fn full_rollback_with_deleted_history_is_detected() {
    let inst = Instance::init();
    let s = inst.serve();
    let p = s.create(&tamper_patient(0));
    let id = id_of(&p);
    let mut v2 = p.clone();
    v2["name"] = json!([{"family": "Newname", "given": ["X"]}]);
    assert_eq!(s.put(&format!("Patient/{id}"), &v2).status(), 200);
    s.stop();
    {
        let c = db(&inst);
        let r1 = &rows(&c, "Patient", 1)[0];
        let r2 = &rows(&c, "Patient", 2)[0];
        c.execute("DELETE FROM versions WHERE rowid = ?1", [r2.rowid]).unwrap();
        c.execute("UPDATE current SET vrow = ?1, version = 1 WHERE rkey = ?2", rusqlite::params![r1.rowid, r1.rkey]).unwrap();
    }
    let (mut child, listening) = inst.spawn_serve(&["--insecure-http"]);
    assert!(!child.wait().unwrap().success(), "a rollback with deleted history must not start");
    assert!(listening.is_none());
    let log = std::fs::read_to_string(inst.log_file()).unwrap();
    assert!(log.contains("refusing to start") && log.contains("main database"), "{log:.3000}");
}

// ---------------------------------------------------------------- 3. deny by default

/// The FHIR routes, each with a body where it takes one (so only authentication can fail).
fn fhir_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let pat = json!({"resourceType": "Patient", "id": "x", "name": [{"family": MARK}]});
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient/x"}}]});
    vec![
        (Method::GET, "Patient", None),
        (Method::GET, "Patient/x", None),
        (Method::GET, "Patient/x/_history", None),
        (Method::GET, "Patient/x/_history/1", None),
        (Method::GET, "Patient/x/$everything", None),
        (Method::GET, "Patient/x/Observation", None),
        (Method::POST, "", Some(bundle)),
        (Method::POST, "Patient", Some(pat.clone())),
        (Method::PUT, "Patient/x", Some(pat)),
        (Method::DELETE, "Patient/x", None),
        (Method::POST, "Patient/_search", None),
        (Method::GET, "Nope/1", None),
        (Method::GET, "Patient?identifier=x%7Cy", None),
    ]
}

fn request(s: &Server, m: &Method, path: &str, body: &Option<Value>, auth: Option<&str>) -> reqwest::blocking::RequestBuilder {
    let url = if path.is_empty() { s.base.clone() } else { s.url(path) };
    let mut rb = s.http.request(m.clone(), url);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    match (body, path.ends_with("_search")) {
        (Some(b), _) => rb.header("content-type", "application/fhir+json").body(serde_json::to_vec(b).unwrap()),
        (None, true) => rb.header("content-type", "application/x-www-form-urlencoded").body("name=x&birthdate=1990-01-01"),
        _ => rb,
    }
}

/// Every FHIR route answers 401 + OperationOutcome + WWW-Authenticate with `auth`: a bearer
/// token that was presented gets RFC 6750's `invalid_token` with "not valid"; no token, no
/// error code.
fn assert_all_401(s: &Server, auth: Option<&str>, what: &str) {
    assert_all_401_as(s, auth, what, "The access token is not valid", "login");
}

/// [`assert_all_401`] with the `error_description` and the OperationOutcome issue code a
/// presented token must get.
fn assert_all_401_as(s: &Server, auth: Option<&str>, what: &str, description: &str, code: &str) {
    let presented = auth.and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|t| !t.trim().is_empty());
    for (m, path, body) in fhir_routes() {
        let r = request(s, &m, path, &body, auth).send().unwrap();
        let st = r.status().as_u16();
        let www = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let text = r.text().unwrap();
        assert_eq!(st, 401, "{what}: {m} /fhir/{path}: {text:.300}");
        assert_eq!(parse(&text)["resourceType"], "OperationOutcome", "{what}: {m} /fhir/{path}");
        let www = www.unwrap_or_default();
        if presented {
            assert_eq!(www, format!("Bearer realm=\"brankas\", error=\"invalid_token\", error_description=\"{description}\""), "{what}: {m} /fhir/{path}");
            assert_eq!(parse(&text)["issue"][0]["code"], code, "{what}: {m} /fhir/{path}");
        } else {
            assert_eq!(www, "Bearer realm=\"brankas\"", "{what}: {m} /fhir/{path}: no token, no error code");
        }
        assert!(!text.contains(MARK), "{what}: {m} /fhir/{path} echoes the body");
    }
}

/// With a valid token the same routes do NOT answer 401 (so the 401s above are about the token).
fn assert_none_401(s: &Server, token: &str, what: &str) {
    for (m, path, body) in fhir_routes() {
        let r = request(s, &m, path, &body, Some(&format!("Bearer {token}"))).send().unwrap();
        assert_ne!(r.status().as_u16(), 401, "{what}: {m} /fhir/{path} refuses a valid token");
    }
}

/// Edits one field of a client registration directly in the database, keeping the stored MAC prefix (64 hex
/// characters) as it was. Returns the original document, to put back with `put_client_doc`.
/// The server must refuse the edited client: both because the status is not active and
/// because the registration no longer verifies under its MAC.
fn set_client_field(inst: &Instance, field: &str, value: &str) -> Vec<u8> {
    let c = db(inst);
    let doc: Vec<u8> = c.query_row("SELECT doc FROM clients WHERE client_id = ?1", [&inst.client_id], |r| r.get(0)).unwrap();
    let (mac, body) = doc.split_at(64);
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v[field] = json!(value);
    let mut edited = mac.to_vec();
    edited.extend_from_slice(&serde_json::to_vec(&v).unwrap());
    put_client_doc(inst, &edited);
    doc
}

fn put_client_doc(inst: &Instance, doc: &[u8]) {
    let n = db(inst).execute("UPDATE clients SET doc = ?1 WHERE client_id = ?2", rusqlite::params![doc, inst.client_id]).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn every_fhir_route_requires_a_valid_token() {
    let inst = Instance::init();
    let s = inst.serve();
    // A second instance, with its own keys.
    let other = Instance::init();
    let o = other.serve();

    // Controls: the valid tokens pass everywhere.
    assert_none_401(&s, &s.token, "valid token");
    assert_none_401(&o, &o.token, "valid token of the other instance");

    // (a) no token, (b) garbage
    assert_all_401(&s, None, "no token");
    for g in ["Bearer", "Bearer ", "Bearer garbage", "Bearer a.b.c", "Bearer ....", &format!("Bearer {}", "x".repeat(10_000)), "garbage"] {
        assert_all_401(&s, Some(g), &format!("garbage {:.20}", g));
    }
    // Basic credentials are for /auth/token only.
    let basic = format!("Basic {}", B64.encode(format!("{}:{}", inst.client_id, inst.client_secret)));
    assert_all_401(&s, Some(&basic), "client credentials as Basic");

    // (c) forged: signature changed; claims changed under the old signature; alg none.
    let parts: Vec<&str> = s.token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let flipped = format!("{}.{}.{}", parts[0], parts[1], sig.into_iter().collect::<String>());
    assert_all_401(&s, Some(&format!("Bearer {flipped}")), "signature changed");
    let mut claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    claims["exp"] = json!(claims["exp"].as_u64().unwrap() + 3600);
    claims["scope"] = json!("system/*.cruds user/*.*");
    let edited = format!("{}.{}.{}", parts[0], B64URL.encode(serde_json::to_vec(&claims).unwrap()), parts[2]);
    assert_all_401(&s, Some(&format!("Bearer {edited}")), "claims edited");
    let none = B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#);
    assert_all_401(&s, Some(&format!("Bearer {none}.{}.", parts[1])), "alg none");
    assert_all_401(&s, Some(&format!("Bearer {none}.{}", parts[1])), "alg none, two parts");
    let hs512 = B64URL.encode(r#"{"alg":"HS512","typ":"JWT"}"#);
    assert_all_401(&s, Some(&format!("Bearer {hs512}.{}.{}", parts[1], parts[2])), "other alg");

    // (d) a token of another brankas instance
    assert_all_401(&s, Some(&format!("Bearer {}", o.token)), "token of another instance");

    // (e) expired: the other instance restarted to issue 2-second tokens; one is valid at
    // first and refused once it expires.
    o.stop();
    let mut o = other.serve_with(&["--insecure-http", "--token-seconds", "2"]);
    o.token = o.new_token();
    assert_none_401(&o, &o.new_token(), "valid short token");
    let short = o.new_token();
    let t0 = Instant::now();
    let r = o.http.get(o.url("Patient/x")).bearer_auth(&short).send().unwrap();
    if t0.elapsed() < Duration::from_millis(900) {
        assert_ne!(r.status(), 401, "the fresh short token works");
    }
    let r = o.http.post(format!("{}/auth/token", o.root)).basic_auth(&other.client_id, Some(&other.client_secret)).form(&[("grant_type", "client_credentials")]).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap()["expires_in"], 2, "--token-seconds sets the lifetime");
    std::thread::sleep(Duration::from_millis(3200));
    assert_all_401_as(&o, Some(&format!("Bearer {short}")), "expired token", "The access token expired", "expired");

    // (f) a suspended or revoked client: its unexpired token stops working at once (the
    // status is re-read on every request), and it cannot get a new one. There is no admin
    // API yet, so the status is edited in the store; the registration's MAC then fails too,
    // which is the other property shown here: a client row edited in the database is refused.
    let fresh = s.new_token();
    for (field, status) in [("status", "suspended"), ("status", "revoked"), ("name", "renamed in the database")] {
        let original = set_client_field(&inst, field, status);
        // An edited registration fails its MAC: the token's client is unknown.
        assert_all_401(&s, Some(&format!("Bearer {fresh}")), status);
        let r = s.http.post(format!("{}/auth/token", s.root)).basic_auth(&inst.client_id, Some(&inst.client_secret)).form(&[("grant_type", "client_credentials")]).send().unwrap();
        assert_eq!(r.status(), 401, "{status} client gets no token");
        put_client_doc(&inst, &original);
    }
    assert_none_401(&s, &fresh, "reinstated client");

    // Public: health, metadata, SMART discovery.
    for p in ["/health", "/fhir/metadata", "/fhir/.well-known/smart-configuration"] {
        let r = s.http.get(format!("{}{p}", s.root)).send().unwrap();
        assert_eq!(r.status(), 200, "{p} is public");
    }
    // Path tricks never reach data without a token.
    for p in ["//fhir/Patient/x", "/fhir//Patient/x", "/fhir/metadata/", "/fhir/metadata/../Patient/x", "/fhir/%2e%2e/fhir/Patient", "/FHIR/Patient/x", "/fhirx/Patient"] {
        let mut sock = TcpStream::connect(s.root.trim_start_matches("http://")).unwrap();
        write!(sock, "GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = sock.read_to_string(&mut out);
        let status: u16 = out.get(9..12).and_then(|x| x.parse().ok()).unwrap_or(0);
        assert!(status == 401 || status == 404, "{p}: {out:.300}");
    }

    // The token endpoint: wrong secret, unknown client, unknown grant.
    let tok = |id: &str, secret: &str, grant: &str| {
        let r = s.http.post(format!("{}/auth/token", s.root)).basic_auth(id, Some(secret)).form(&[("grant_type", grant)]).send().unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().unwrap())
    };
    let (st, v) = tok(&inst.client_id, "wrong-secret", "client_credentials");
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_client")));
    let (st, v) = tok("c-nobody", &inst.client_secret, "client_credentials");
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_client")));
    let (st, v) = tok(&other.client_id, &other.client_secret, "client_credentials");
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_client")), "a client of another instance");
    let (st, v) = tok(&inst.client_id, &inst.client_secret, "password");
    assert_eq!((st, v["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (st, _) = tok(&inst.client_id, &inst.client_secret, "client_credentials");
    assert_eq!(st, 200, "control: the right secret works");
    s.stop();
    o.stop();
}

// ---------------------------------------------------------------- 4. hostile input

/// Sends `head` and then a body of `len` bytes (a JSON string full of 'A', with the marker
/// at the start) from a writer thread, while reading the response concurrently: the server
/// may answer (and close) long before the body is complete. Never holds the body in memory.
fn stream_post(addr: &str, head: &str, len: usize, chunked: bool) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut w = sock.try_clone().unwrap();
    let head = head.to_string();
    let writer = std::thread::spawn(move || -> std::io::Result<usize> {
        w.write_all(head.as_bytes())?;
        let prefix = format!("{{\"resourceType\":\"Patient\",\"id\":\"{MARK}\",\"x\":\"{MARK}");
        let chunk = vec![b'A'; 1 << 20];
        let mut sent = 0usize;
        let send = |w: &mut TcpStream, b: &[u8]| -> std::io::Result<()> {
            if chunked {
                w.write_all(format!("{:x}\r\n", b.len()).as_bytes())?;
                w.write_all(b)?;
                w.write_all(b"\r\n")
            } else {
                w.write_all(b)
            }
        };
        send(&mut w, prefix.as_bytes())?;
        sent += prefix.len();
        while sent + 2 < len {
            let n = chunk.len().min(len - 2 - sent);
            send(&mut w, &chunk[..n])?;
            sent += n;
        }
        send(&mut w, b"\"}")?;
        if chunked {
            w.write_all(b"0\r\n\r\n")?;
        }
        Ok(sent + 2)
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // Stop once a complete response (headers + Content-Length body) is in.
                if let Some(h) = find_pos(&out, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&out[..h]).to_ascii_lowercase();
                    let cl = head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
                    if cl.is_some_and(|cl| out.len() >= h + 4 + cl) {
                        break;
                    }
                }
            }
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = find_pos(&out, b"\r\n\r\n").map(|h| String::from_utf8_lossy(&out[h + 4..]).to_string()).unwrap_or_default();
    (status, body)
}

fn find_pos(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A 4xx OperationOutcome that does not echo the marker.
fn assert_rejected(what: &str, (st, body): (u16, String), expect: &[u16]) {
    assert!(expect.contains(&st), "{what}: expected {expect:?}, got {st}: {body:.300}");
    let v = parse(&body);
    assert_eq!(v["resourceType"], "OperationOutcome", "{what}: {body:.300}");
    assert!(!body.to_lowercase().contains(&MARK.to_lowercase()), "{what}: the error echoes the input: {body:.300}");
}

#[test]
fn hostile_input_gets_a_clean_4xx_and_the_server_stays_healthy() {
    let inst = Instance::init();
    let mut s = inst.serve();
    let keep = s.create(&tamper_patient(0));
    let send = |m: Method, path: &str, ct: &str, body: Vec<u8>| -> (u16, String) {
        let url = if path.is_empty() { s.base.clone() } else { s.url(path) };
        done(s.http.request(m, url).bearer_auth(&s.token).header("content-type", ct).body(body).send().unwrap())
    };
    let fj = "application/fhir+json";

    // Bodies
    assert_rejected("malformed JSON", send(Method::POST, "Patient", fj, format!("{{\"resourceType\":\"Patient\",\"name\":[{{\"text\":\"{MARK}\"").into_bytes()), &[400]);
    assert_rejected("trailing garbage", send(Method::POST, "Patient", fj, format!("{{\"resourceType\":\"Patient\"}} {MARK}").into_bytes()), &[400]);
    let deep_arr = format!("{}\"{MARK}\"{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_rejected("100k nested arrays", send(Method::POST, "Patient", fj, deep_arr.clone().into_bytes()), &[400]);
    assert_rejected("100k nested arrays in a bundle", send(Method::POST, "", fj, deep_arr.into_bytes()), &[400]);
    let deep_obj = format!("{}\"{MARK}\"{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert_rejected("100k nested objects", send(Method::POST, "Patient", fj, deep_obj.into_bytes()), &[400]);
    let pat = |extra: Value| {
        let mut v = json!({"resourceType": "Patient", "name": [{"family": MARK}]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&v).unwrap()
    };
    assert_rejected("text/plain", send(Method::POST, "Patient", "text/plain", pat(json!({}))), &[415]);
    assert_rejected("application/xml", send(Method::POST, "Patient", "application/xml", format!("<Patient><name value=\"{MARK}\"/></Patient>").into_bytes()), &[415]);
    assert_rejected("no content type", done(s.http.post(s.url("Patient")).bearer_auth(&s.token).body(pat(json!({}))).send().unwrap()), &[415]);
    assert_rejected("resourceType mismatch", send(Method::POST, "Patient", fj, serde_json::to_vec(&json!({"resourceType": "Observation", "status": MARK})).unwrap()), &[400]);
    assert_rejected("resourceType missing", send(Method::POST, "Patient", fj, serde_json::to_vec(&json!({"name": [{"family": MARK}]})).unwrap()), &[400]);
    assert_rejected("not an object", send(Method::POST, "Patient", fj, serde_json::to_vec(&json!([MARK])).unwrap()), &[400]);
    assert_rejected("invalid gender code", send(Method::POST, "Patient", fj, pat(json!({"gender": MARK}))), &[422]);
    assert_rejected("invalid birthDate", send(Method::POST, "Patient", fj, pat(json!({"birthDate": MARK}))), &[422]);
    assert_rejected("unknown element", send(Method::POST, "Patient", fj, pat(json!({"nickname": MARK}))), &[422]);
    assert_rejected(
        "invalid NIK",
        send(Method::POST, "Patient", fj, pat(json!({"identifier": [{"system": NIK_SYSTEM, "value": "3171019999990000"}], "birthDate": "1990-01-01"}))),
        &[422],
    );

    // Unknown resource type: 404 on every route, consistently.
    for (m, p) in [
        (Method::GET, format!("Nope/{MARK}")),
        (Method::GET, format!("Nope?name={MARK}")),
        (Method::POST, "Nope".into()),
        (Method::PUT, format!("Nope/{MARK}")),
        (Method::DELETE, format!("Nope/{MARK}")),
        (Method::GET, format!("Nope/{MARK}/_history")),
    ] {
        let body = serde_json::to_vec(&json!({"resourceType": "Nope", "id": MARK})).unwrap();
        assert_rejected(&format!("unknown type {m} {p}"), send(m, &p, fj, body), &[404]);
    }

    // Invalid ids in the URL
    let long_id = format!("{}{MARK}", "a".repeat(100));
    assert_rejected("100-char id read", get_raw(&s, &format!("Patient/{long_id}")), &[404]);
    assert_rejected("NUL in id", get_raw(&s, &format!("Patient/ab%00{MARK}")), &[404]);
    assert_rejected("slash-encoded id", get_raw(&s, &format!("Patient/..%2F{MARK}")), &[404]);
    assert_rejected(
        "100-char id update",
        send(Method::PUT, &format!("Patient/{long_id}"), fj, serde_json::to_vec(&json!({"resourceType": "Patient", "id": long_id})).unwrap()),
        &[400],
    );
    assert_rejected(
        "id mismatch",
        send(Method::PUT, &format!("Patient/{}", id_of(&keep)), fj, serde_json::to_vec(&json!({"resourceType": "Patient", "id": MARK})).unwrap()),
        &[400],
    );

    // Hostile query strings
    let obs = format!("Observation?patient=Patient/{}", id_of(&keep));
    assert_rejected("10k-char value", get_raw(&s, &format!("Patient?name={}{MARK}", "a".repeat(10_000))), &[414]);
    let thousand: Vec<String> = (0..1000).map(|i| format!("a{i}=1")).collect();
    assert_rejected("1000 parameters", get_raw(&s, &format!("{obs}&code={MARK}&{}", thousand.join("&"))), &[400, 414]);
    let thousand_or: Vec<String> = (0..1000).map(|i| format!("{i}")).collect();
    assert_rejected("1000 OR values", get_raw(&s, &format!("{obs}&code={MARK},{}", thousand_or.join(","))), &[400]);
    assert_rejected("_count=-1", get_raw(&s, &format!("{obs}&_count=-1&code={MARK}")), &[400]);
    assert_rejected("huge _count", get_raw(&s, &format!("{obs}&_count=99999999999999999999&code={MARK}")), &[400]);
    assert_rejected("garbage date", get_raw(&s, &format!("{obs}&date=ge{MARK}%3Cgarbage%3E")), &[400]);
    assert_rejected("_sort script", get_raw(&s, &format!("{obs}&_sort=%3Cscript%3E{MARK}")), &[400]);
    assert_rejected("NUL in a value", get_raw(&s, &format!("Patient?name=%00{MARK}&birthdate=1990-01-01")), &[400]);
    assert_rejected("invalid UTF-8 in a value", get_raw(&s, &format!("Patient?name=%FF{MARK}&birthdate=1990-01-01")), &[400]);
    assert_rejected("invalid UTF-8 in a name", get_raw(&s, &format!("{obs}&%FFcode={MARK}")), &[400]);
    assert_rejected("chained parameter", get_raw(&s, &format!("Observation?subject.name={MARK}")), &[400]);
    assert_rejected("_has", get_raw(&s, &format!("Patient?_has:Observation:patient:code={MARK}")), &[400]);
    assert_rejected("listing patients", get_raw(&s, &format!("Patient?gender=male&x={MARK}")), &[400]);
    assert_rejected("cross-patient search", get_raw(&s, &format!("Observation?code={MARK}")), &[400]);
    assert_rejected("forged paging cursor", get_raw(&s, &format!("Patient?_page={MARK}")), &[400]);
    assert_rejected(
        "POST _search with invalid UTF-8",
        done(
            s.http
                .post(s.url("Patient/_search"))
                .bearer_auth(&s.token)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("name=%FF{MARK}&birthdate=1990-01-01"))
                .send()
                .unwrap(),
        ),
        &[400],
    );

    // A Bundle with 100,001 entries is refused, quickly.
    let entry = json!({"request": {"method": "GET", "url": format!("Patient/{MARK}")}});
    let big = json!({"resourceType": "Bundle", "type": "batch", "entry": vec![entry; 100_001]});
    let t = Instant::now();
    assert_rejected("100,001-entry bundle", send(Method::POST, "", fj, serde_json::to_vec(&big).unwrap()), &[400, 413, 422]);
    assert!(t.elapsed() < Duration::from_secs(30), "the bundle was refused only after {:?}", t.elapsed());

    // 64 MiB bodies (the documented limit is 32 MiB): declared, and streamed chunked.
    let addr = s.root.trim_start_matches("http://").to_string();
    let len = 64 << 20;
    let head = |te: &str| format!("POST /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/fhir+json\r\n{te}\r\n\r\n", s.token);
    assert_rejected("64 MiB declared", stream_post(&addr, &head(&format!("Content-Length: {len}")), len, false), &[413]);
    assert_rejected("64 MiB chunked", stream_post(&addr, &head("Transfer-Encoding: chunked"), len, true), &[413]);

    // Still healthy, still serving, nothing written by the hostile requests.
    assert!(s.child.try_wait().unwrap().is_none(), "the server is still running");
    assert_eq!(s.http.get(format!("{}/health", s.root)).send().unwrap().status(), 200);
    let (st, body) = get_raw(&s, &format!("Patient/{}", id_of(&keep)));
    assert_eq!((st, parse(&body)), (200, keep));
    let log = std::fs::read_to_string(inst.log_file()).unwrap();
    assert!(!log.contains(MARK), "the log echoes hostile input");
    assert!(!log.contains("panicked"), "a handler panicked");
    s.stop();
}

// ---------------------------------------------------------------- 5. kill -9 durability

#[test]
fn kill9_loses_no_acknowledged_write() {
    let inst = Instance::init();
    let mut acked: Vec<Value> = Vec::new();
    for round in 0..2 {
        let s = inst.serve();
        let pid = s.pid();
        let count = Arc::new(AtomicUsize::new(0));
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as usize;
        let kill_at = 20 + nanos % 160;
        let c = count.clone();
        let killer = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while c.load(Ordering::SeqCst) < kill_at && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        });
        let mut patient: Option<String> = None;
        let mut this_round = 0;
        for i in 0..200 {
            let body = match &patient {
                Some(p) if i % 4 != 0 => json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("round {round} write {i}")},
                    "subject": {"reference": format!("Patient/{p}")}, "valueQuantity": {"value": i, "unit": "mmol/L"}}),
                _ => json!({"resourceType": "Patient", "name": [{"family": format!("Durable{round}x{i}")}], "gender": "female"}),
            };
            let t = body["resourceType"].as_str().unwrap();
            let Ok(r) = s.http.post(s.url(t)).bearer_auth(&s.token).header("content-type", "application/fhir+json").body(serde_json::to_vec(&body).unwrap()).send() else { break };
            if r.status() != 201 {
                break;
            }
            // Acknowledged only once the whole response is in.
            let Ok(v) = r.json::<Value>() else { break };
            if t == "Patient" {
                patient = Some(id_of(&v));
            }
            acked.push(v);
            this_round += 1;
            count.fetch_add(1, Ordering::SeqCst);
        }
        killer.join().unwrap();
        s.kill9();
        assert!(this_round >= kill_at.min(200), "round {round}: {this_round} acknowledged before the kill at {kill_at}");
        assert!(this_round < 200, "round {round}: the kill came after all writes; the test proved nothing");
    }
    let s = inst.serve();
    for v in &acked {
        let (st, body) = get_raw(&s, &format!("{}/{}", v["resourceType"].as_str().unwrap(), id_of(v)));
        assert_eq!(st, 200, "acknowledged {} lost after kill -9", v["resourceType"]);
        assert_eq!(&parse(&body), v, "acknowledged content changed after kill -9");
    }
    s.create(&json!({"resourceType": "Patient", "gender": "male"}));
    s.stop();
}

// ---------------------------------------------------------------- 6. key rotation

fn kek_of(wrapped: &[u8]) -> u32 {
    u32::from_be_bytes(wrapped[..4].try_into().unwrap())
}

#[test]
fn key_rotation_under_a_running_server() {
    let inst = Instance::init();
    let s = inst.serve();
    let mut all: Vec<Value> = Vec::new();
    for i in 0..3 {
        let p = s.create(&tamper_patient(i));
        all.push(s.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", id_of(&p))}, "valueString": format!("before rotation {i}")})));
        all.push(p);
    }
    all.push(s.create(&json!({"resourceType": "Organization", "name": "Puskesmas Menteng"})));
    let deks_before: i64 = db(&inst).query_row("SELECT count(*) FROM deks", [], |r| r.get(0)).unwrap();

    let out = inst.cli(&["keys", "rotate"]);
    assert!(out.status.success(), "rotate failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("rotate prints JSON");
    // Data keys are wrapped under shred keys (KEK id 0 in the row), which the KEK wraps: the
    // rotation rewraps the shred keys, and the data keys stay as they are.
    assert!(report["rewrapped_shred_keys"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["migrated_data_keys"], 0, "no data key was wrapped by the KEK directly: {report}");

    // The running server reads the old and writes new patients (new data keys).
    for v in &all {
        let (st, body) = get_raw(&s, &format!("{}/{}", v["resourceType"].as_str().unwrap(), id_of(v)));
        assert_eq!((st, &parse(&body)), (200, v));
    }
    for i in 3..5 {
        let p = s.create(&tamper_patient(i));
        all.push(s.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", id_of(&p))}, "valueString": format!("after rotation {i}")})));
        all.push(p);
    }
    s.stop();

    let s = inst.serve();
    for v in &all {
        let (st, body) = get_raw(&s, &format!("{}/{}", v["resourceType"].as_str().unwrap(), id_of(v)));
        assert_eq!((st, &parse(&body)), (200, v), "after restart");
    }
    let (st, body) = search(&s, "Patient", &[("identifier", &format!("{NIK_SYSTEM}|{}", nik(4)))]);
    assert_eq!((st, parse(&body)["total"].as_u64()), (200, Some(1)), "blind indexes survive rotation");
    s.stop();

    let kf: Value = serde_json::from_slice(&std::fs::read(inst.key_file()).unwrap()).unwrap();
    assert_eq!(kf["keks"].as_array().unwrap().len(), 2, "the key file holds both KEKs");
    assert_eq!(kf["current"], 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(inst.key_file()).unwrap().permissions().mode() & 0o077, 0, "key file stays private");
    }
    let c = db(&inst);
    let mut st = c.prepare("SELECT wrapped FROM deks").unwrap();
    let keks: Vec<u32> = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap().map(|w| kek_of(&w.unwrap())).collect();
    assert_eq!(keks.len() as i64, deks_before + 2, "two new patients, two new data keys");
    assert!(keks.iter().all(|&k| k == 0), "every data key is under a shred key, also those the running server made after the rotation: {keks:?}");
    let shred: Value = serde_json::from_slice(&std::fs::read(inst.root.path().join("master.key.shred")).unwrap()).unwrap();
    let shred_keks: Vec<u64> = shred["keys"].as_array().unwrap().iter().map(|k| k["k"].as_u64().unwrap()).collect();
    assert!(!shred_keks.is_empty() && shred_keks.iter().all(|&k| k == 2), "every shred key is wrapped by KEK 2, also those made after the rotation");
    let root: Vec<u8> = c.query_row("SELECT value FROM meta WHERE name = 'system-root'", [], |r| r.get(0)).unwrap();
    assert_eq!(kek_of(&root), 2, "the system root is rewrapped too");
}

// ---------------------------------------------------------------- 7. on the wire and on disk

fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth())
}

/// One HTTP/1.1 GET over TLS; `Err` if the handshake fails.
fn tls_get(addr: &str, cfg: Arc<rustls::ClientConfig>, path: &str) -> Result<String, std::io::Error> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&out).to_string())
}

#[test]
fn tls_is_the_default() {
    let inst = Instance::init();
    let (mut child, ev) = inst.spawn_serve(&[]);
    let ev = ev.expect("listening line");
    let url = ev["url"].as_str().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let addr = ev["address"].as_str().unwrap().to_string();
    let fp = ev["tls_fingerprint"].as_str().expect("a fingerprint is printed");

    let cert_path = inst.data_dir().join("tls/cert.pem");
    let pem = std::fs::read(&cert_path).expect("a certificate was generated into the data directory");
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..]).map(Result::unwrap).collect();
    let hex: Vec<String> = brankas_vault::sha256(certs[0].as_ref()).iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(fp, hex.join(":"), "the fingerprint is the certificate's SHA-256");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(inst.data_dir().join("tls/key.sealed")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the sealed TLS private key is private too");
    }
    assert_no_private_key(&inst.data_dir(), None);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs[0].clone()).unwrap();
    let trusted = tls_config(roots);
    // The server needs a moment; retry the first connection briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        match tls_get(&addr, trusted.clone(), "/health") {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => panic!("TLS GET /health: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health:.200}");
    let meta = tls_get(&addr, trusted, "/fhir/metadata").unwrap();
    assert!(meta.starts_with("HTTP/1.1 200") && meta.contains("https://"), "{meta:.200}");
    // Control: a client that does not trust the certificate fails the handshake.
    assert!(tls_get(&addr, tls_config(rustls::RootCertStore::empty()), "/health").is_err(), "an untrusted certificate must fail verification");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut sock = TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/"), "plain HTTP was answered: {:?}", String::from_utf8_lossy(&out));

    let _ = child.kill();
    let _ = child.wait();
}

/// The PKCS#8 DER of an EC P-256 key starts so (SEQUENCE, version 0, id-ecPublicKey).
const EC_PKCS8_PREFIX: &[u8] = &[0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// No file of the data directory holds a private key in the clear: no PEM private key, no
/// EC PKCS#8 DER, and not the bytes of `known` (a key whose DER the test knows).
fn assert_no_private_key(dir: &Path, known: Option<&[u8]>) {
    let files = common::all_files(dir);
    assert!(files.iter().any(|f| f.ends_with("tls/key.sealed")), "control: the sealed key is among the files searched");
    for f in files {
        let b = std::fs::read(&f).unwrap();
        let has = |n: &[u8]| b.windows(n.len()).any(|w| w == n);
        assert!(!has(b"PRIVATE KEY"), "{} holds a PEM private key", f.display());
        assert!(!has(EC_PKCS8_PREFIX), "{} holds an EC PKCS#8 private key", f.display());
        if let Some(k) = known {
            // The private scalar: `ECPrivateKey { version 1, privateKey OCTET STRING (32) }`.
            let at = k.windows(5).position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20]).expect("an EC private key") + 5;
            assert!(!has(&k[at..at + 32]), "{} holds the private key's bytes", f.display());
        }
    }
}

#[test]
fn the_tls_private_key_is_sealed_and_an_old_plaintext_key_is_migrated() {
    let inst = Instance::init();
    // The layout of earlier versions: a plaintext key.pem beside the certificate.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = ck.signing_key.serialize_der();
    let tls = inst.data_dir().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(tls.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let want: Vec<String> = brankas_vault::sha256(ck.cert.der()).iter().map(|b| format!("{b:02X}")).collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let trusted = tls_config(roots);
    // Control: the key's bytes are on disk before the first start.
    assert!(
        std::fs::read(tls.join("key.pem")).unwrap().windows(EC_PKCS8_PREFIX.len()).any(|w| w == EC_PKCS8_PREFIX)
            || std::fs::read_to_string(tls.join("key.pem")).unwrap().contains("PRIVATE KEY")
    );
    for round in 0..2 {
        let (mut child, ev) = inst.spawn_serve(&[]);
        let ev = ev.expect("listening line");
        assert_eq!(ev["tls_fingerprint"].as_str().unwrap(), want.join(":"), "round {round}: the same certificate");
        let addr = ev["address"].as_str().unwrap().to_string();
        // The handshake proves the server still signs with the same key.
        let deadline = Instant::now() + Duration::from_secs(20);
        let health = loop {
            match tls_get(&addr, trusted.clone(), "/health") {
                Ok(r) => break r,
                Err(e) if Instant::now() > deadline => panic!("TLS GET /health: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        assert!(health.starts_with("HTTP/1.1 200"), "{health:.200}");
        let _ = child.kill();
        let _ = child.wait();
        assert!(!tls.join("key.pem").exists(), "the plaintext key was removed");
        assert_no_private_key(&inst.data_dir(), Some(&der));
    }
}

#[test]
fn key_file_placement_and_permissions_are_enforced() {
    let t = tempfile::tempdir().unwrap();
    let init = |data: &Path, key: Option<&Path>| {
        let mut c = std::process::Command::new(common::BIN);
        c.args(["init", "--data-dir"]).arg(data);
        if let Some(k) = key {
            c.arg("--key-file").arg(k);
        }
        c.output().unwrap()
    };
    // Inside the data directory: refused, no key written there.
    let d = t.path().join("d1");
    let out = init(&d, Some(&d.join("master.key")));
    assert!(!out.status.success(), "init accepted a key file inside the data directory");
    assert!(!d.join("master.key").exists());
    // The same through a detour that does not exist yet.
    let d = t.path().join("d2");
    let out = init(&d, Some(&t.path().join("nowhere/../d2/master.key")));
    assert!(!out.status.success(), "init accepted nowhere/../d2/master.key");
    assert!(!d.join("master.key").exists(), "a key file was written inside the data directory");
    let d = t.path().join("d3");
    let out = init(&d, Some(&d.join("./sub/../master.key")));
    assert!(!out.status.success());
    assert!(!d.join("master.key").exists());
    // Control: the default places it beside the data directory.
    let d = t.path().join("d4");
    let out = init(&d, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t.path().join("d4.key").exists());

    // serve refuses a key file readable by others, and starts once it is private again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let inst = Instance::init();
        std::fs::set_permissions(inst.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let (mut child, ev) = inst.spawn_serve(&["--insecure-http"]);
        assert!(ev.is_none(), "serve started with a 0644 key file: {ev:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "serve neither started nor exited");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        assert!(std::fs::read_to_string(inst.log_file()).unwrap().contains("chmod 600"), "the refusal says how to fix it");
        std::fs::set_permissions(inst.key_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
        inst.serve().stop();
    }
}
