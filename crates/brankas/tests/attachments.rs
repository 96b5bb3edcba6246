//! Attachments over the HTTP API: raw Binary upload and download (streamed, ranged,
//! versioned), FHIR JSON Binaries, photos stripped of their metadata, limits and refusals,
//! tampering with stored blobs, and attachments counted by the guard.

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Instance, NIK_SYSTEM, Server, patient};
use reqwest::blocking::Response;
use serde_json::{Value, json};

const NIK: &str = "3171054708900003";

fn attachment(name: &str) -> Vec<u8> {
    std::fs::read(common::corpus().join("attachments").join(name)).unwrap_or_else(|e| panic!("corpus attachment {name}: {e}"))
}

/// `(file, content type)` of the corpus attachments, from its index.
fn corpus_attachments() -> Vec<(String, String)> {
    let index = std::fs::read_to_string(common::corpus().join("attachments/INDEX.tsv")).expect("attachments/INDEX.tsv");
    let rows: Vec<(String, String)> = index
        .lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c.len() >= 3).then(|| (c[0].to_string(), c[2].to_string()))
        })
        .collect();
    assert_eq!(rows.len(), 4, "the corpus has four attachments");
    rows
}

/// Deterministic bytes that occur nowhere else (a 64-bit LCG seeded by `seed`).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn upload(s: &Server, token: &str, content_type: Option<&str>, context: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut r = s.http.post(s.url("Binary")).bearer_auth(token);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    if let Some(c) = context {
        r = r.header("x-security-context", c);
    }
    let r = r.body(body).send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn raw_get(s: &Server, token: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut r = s.http.get(s.url(path)).bearer_auth(token);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().unwrap()
}

fn body_of(r: Response) -> Vec<u8> {
    r.bytes().expect("whole body").to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn new_patient(s: &Server) -> String {
    s.create(&patient(NIK, "Lestari"))["id"].as_str().unwrap().to_string()
}

fn blob_files(inst: &Instance) -> Vec<PathBuf> {
    let root = inst.data_dir().join("blobs");
    common::all_files(&root).into_iter().filter(|p| !p.strip_prefix(&root).unwrap().starts_with("tmp")).collect()
}

#[test]
fn binaries_round_trip_byte_exact_with_ranges_and_versions() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = new_patient(&s);
    let ctx = format!("Patient/{pid}");

    // Every corpus attachment but the photo (cleaned, see below) comes back byte for byte.
    for (file, ct) in corpus_attachments() {
        let bytes = attachment(&file);
        let (st, b) = upload(&s, &s.token, Some(&ct), Some(&ctx), bytes.clone());
        assert_eq!(st, 201, "{file}: {b}");
        assert_eq!(b["resourceType"], "Binary");
        assert_eq!(b["contentType"], ct.as_str());
        assert_eq!(b["securityContext"]["reference"], ctx.as_str());
        let id = b["id"].as_str().unwrap();
        let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[]);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], ct.as_str());
        assert_eq!(r.headers()["x-security-context"], ctx.as_str());
        assert_eq!(r.headers()["etag"], "W/\"1\"");
        let got = body_of(r);
        if ct == "image/jpeg" {
            assert_ne!(got, bytes, "{file}: the photo is cleaned");
        } else {
            assert_eq!(got, bytes, "{file} round-trips byte for byte");
        }
        // As FHIR JSON, the same content inline.
        let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[("accept", "application/fhir+json")]);
        assert_eq!(r.status(), 200);
        let j: Value = r.json().unwrap();
        assert_eq!(B64.decode(j["data"].as_str().unwrap()).unwrap(), got, "{file}: JSON data equals the raw content");
    }

    // A large attachment: several segments, ranges inside and across segment boundaries.
    let big = noise(3 * 1024 * 1024 + 123, 7);
    let (st, b) = upload(&s, &s.token, Some("application/octet-stream"), Some(&ctx), big.clone());
    assert_eq!(st, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(body_of(raw_get(&s, &s.token, &format!("Binary/{id}"), &[])), big);
    for (range, a, e) in [
        ("bytes=0-0", 0usize, 1usize),
        ("bytes=65530-65545", 65530, 65546),
        ("bytes=131072-", 131072, big.len()),
        ("bytes=-100", big.len() - 100, big.len()),
        ("bytes=3000000-99999999", 3_000_000, big.len()),
    ] {
        let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[("range", range)]);
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes {a}-{}/{}", e - 1, big.len()), "{range}");
        assert_eq!(body_of(r), &big[a..e], "{range}");
    }
    let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[("range", "bytes=99999999-")]);
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes */{}", big.len()));
    // Too large to inline as JSON? No: 3 MiB is within the inline limit; its JSON is whole.
    let r = raw_get(&s, &s.token, &format!("Binary/{id}?_format=json"), &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(B64.decode(r.json::<Value>().unwrap()["data"].as_str().unwrap()).unwrap(), big);

    // A new version by raw PUT; the old one stays readable by vread.
    let v2 = noise(70_000, 8);
    let r = s
        .http
        .put(s.url(&format!("Binary/{id}")))
        .bearer_auth(&s.token)
        .header("content-type", "text/plain")
        .header("x-security-context", &ctx)
        .header("if-match", "W/\"1\"")
        .body(v2.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[]);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(body_of(r), v2);
    assert_eq!(body_of(raw_get(&s, &s.token, &format!("Binary/{id}/_history/1"), &[])), big);
    assert_eq!(raw_get(&s, &s.token, &format!("Binary/{id}"), &[("if-none-match", "W/\"2\"")]).status(), 304);
    let stale = s
        .http
        .put(s.url(&format!("Binary/{id}")))
        .bearer_auth(&s.token)
        .header("content-type", "text/plain")
        .header("x-security-context", &ctx)
        .header("if-match", "W/\"1\"")
        .body(b"x".to_vec())
        .send()
        .unwrap();
    assert_eq!(stale.status(), 412, "a stale If-Match is refused");

    // FHIR JSON Binary with inline data; and a DocumentReference pointing at a Binary, whose
    // own reference then serves as a Binary's security context.
    let pdf = attachment("Binary-example.pdf");
    let jb = s.create(&json!({"resourceType": "Binary", "contentType": "application/pdf", "securityContext": {"reference": ctx}, "data": B64.encode(&pdf)}));
    assert!(jb.get("data").is_none(), "the stored Binary names its blob instead of carrying the data");
    let jid = jb["id"].as_str().unwrap();
    assert_eq!(body_of(raw_get(&s, &s.token, &format!("Binary/{jid}"), &[])), pdf);
    let doc = s.create(&json!({"resourceType": "DocumentReference", "status": "current", "subject": {"reference": ctx},
        "type": {"text": "Surat persetujuan isolasi"},
        "content": [{"attachment": {"contentType": "application/pdf", "url": format!("Binary/{jid}"), "title": "consent.pdf"}}]}));
    let did = doc["id"].as_str().unwrap();
    let (st, b) = upload(&s, &s.token, Some("application/pdf"), Some(&format!("DocumentReference/{did}")), pdf.clone());
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["securityContext"]["reference"], ctx.as_str(), "the document's patient owns the Binary");
    // In a transaction, next to a new patient named by its urn:uuid.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b5b6f4e-37a4-4f51-9d4c-6c2ab0c2f001", "resource": patient("3171054708900005", "Purnama"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:0b5b6f4e-37a4-4f51-9d4c-6c2ab0c2f002", "resource": {"resourceType": "Binary", "contentType": "application/pdf",
            "securityContext": {"reference": "urn:uuid:0b5b6f4e-37a4-4f51-9d4c-6c2ab0c2f001"}, "data": B64.encode(&pdf)}, "request": {"method": "POST", "url": "Binary"}}]});
    let r = s.post("", &bundle);
    assert_eq!(r.status(), 200);
    let out: Value = r.json().unwrap();
    let loc = out["entry"][1]["response"]["location"].as_str().unwrap();
    let bid = loc.split('/').nth(1).unwrap();
    let new_pid = out["entry"][0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    let r = raw_get(&s, &s.token, &format!("Binary/{bid}"), &[]);
    assert_eq!(r.headers()["x-security-context"].to_str().unwrap(), format!("Patient/{new_pid}"));
    assert_eq!(body_of(r), pdf, "a Binary written in a transaction");
    // A Binary with no securityContext belongs to the patient of the DocumentReference in the
    // same transaction that points at it.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b5b6f4e-37a4-4f51-9d4c-6c2ab0c2f003", "resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": B64.encode(b"%PDF-1.4 rujukan")},
         "request": {"method": "POST", "url": "Binary"}},
        {"resource": {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": ctx},
            "content": [{"attachment": {"contentType": "application/pdf", "url": "urn:uuid:0b5b6f4e-37a4-4f51-9d4c-6c2ab0c2f003"}}]},
         "request": {"method": "POST", "url": "DocumentReference"}}]});
    let r = s.post("", &bundle);
    assert_eq!(r.status(), 200);
    let out: Value = r.json().unwrap();
    let bid = out["entry"][0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    let (_, doc2) = s.get_as(&s.token, out["entry"][1]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap());
    assert_eq!(doc2["content"][0]["attachment"]["url"], format!("Binary/{bid}"), "the urn became the Binary's id");
    let r = raw_get(&s, &s.token, &format!("Binary/{bid}"), &[]);
    assert_eq!(r.headers()["x-security-context"].to_str().unwrap(), ctx.as_str());
    assert_eq!(body_of(r), b"%PDF-1.4 rujukan");
    let via_doc = s.create(
        &json!({"resourceType": "Binary", "contentType": "text/plain", "securityContext": {"reference": format!("DocumentReference/{did}")}, "data": B64.encode(b"surat")}),
    );
    assert_eq!(via_doc["securityContext"]["reference"], ctx.as_str());
    s.stop();
}

#[test]
fn photos_lose_their_metadata() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = new_patient(&s);
    let ctx = format!("Patient/{pid}");
    let jpg = attachment("Binary-f006.jpg");
    // Control: the corpus photo really carries EXIF with a GPS position.
    assert!(find(&jpg, b"Exif\0\0"), "control: the photo has an EXIF block");
    assert!(find(&jpg, &[0x88, 0x25]) || find(&jpg, &[0x25, 0x88]), "control: the EXIF block has a GPS IFD pointer (tag 0x8825)");

    let check = |bytes: &[u8], what: &str| {
        assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "{what}: still a JPEG");
        assert!(!find(bytes, b"Exif\0\0"), "{what}: no EXIF left");
        assert!(!find(bytes, b"GPS"), "{what}: no GPS text left");
        assert!(bytes.len() > 1000, "{what}: the picture itself is kept");
    };
    // Raw, declared as a JPEG; and raw, declared as something else (sniffed by its magic).
    for ct in ["image/jpeg", "application/octet-stream"] {
        let (st, b) = upload(&s, &s.token, Some(ct), Some(&ctx), jpg.clone());
        assert_eq!(st, 201, "{b}");
        let got = body_of(raw_get(&s, &s.token, &format!("Binary/{}", b["id"].as_str().unwrap()), &[]));
        check(&got, ct);
    }
    // FHIR JSON Binary, and a Patient photo inline.
    let jb = s.create(&json!({"resourceType": "Binary", "contentType": "image/jpeg", "securityContext": {"reference": ctx}, "data": B64.encode(&jpg)}));
    check(&body_of(raw_get(&s, &s.token, &format!("Binary/{}", jb["id"].as_str().unwrap()), &[])), "JSON Binary");
    let mut p = patient("3171054708900004", "Wulandari");
    p["photo"] = json!([{"contentType": "image/jpeg", "data": B64.encode(&jpg)}]);
    let created = s.create(&p);
    let (st, read) = s.get_as(&s.token, &format!("Patient/{}", created["id"].as_str().unwrap()));
    assert_eq!(st, 200);
    check(&B64.decode(read["photo"][0]["data"].as_str().unwrap()).unwrap(), "Patient.photo");

    // Image types whose metadata cannot be removed here are refused; a broken JPEG too.
    let (st, b) = upload(&s, &s.token, Some("image/heic"), Some(&ctx), b"\0\0\0\x18ftypheic".to_vec());
    assert_eq!((st, b["resourceType"].as_str()), (415, Some("OperationOutcome")), "{b}");
    let (st, b) = upload(&s, &s.token, Some("image/jpeg"), Some(&ctx), jpg[..jpg.len() / 2].to_vec());
    assert_eq!((st, b["resourceType"].as_str()), (422, Some("OperationOutcome")), "a truncated JPEG: {b}");
    s.stop();
}

#[test]
fn attachment_limits_and_refusals() {
    let inst = Instance::init();
    let mut s = inst.serve_with(&["--insecure-http", "--max-attachment-bytes", "1048576"]);
    s.token = s.new_token();
    let pid = new_patient(&s);
    let ctx = format!("Patient/{pid}");
    let before = blob_files(&inst).len();

    // Over the limit: announced by Content-Length, or found while streaming (chunked).
    let (st, b) = upload(&s, &s.token, Some("application/pdf"), Some(&ctx), noise(2 << 20, 1));
    assert_eq!((st, b["resourceType"].as_str()), (413, Some("OperationOutcome")), "{b}");
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(noise(2 << 20, 2)));
    let r = s.http.post(s.url("Binary")).bearer_auth(&s.token).header("content-type", "application/pdf").header("x-security-context", &ctx).body(chunked).send().unwrap();
    assert_eq!(r.status(), 413);
    // Exactly at the limit is fine.
    let (st, _) = upload(&s, &s.token, Some("application/pdf"), Some(&ctx), noise(1 << 20, 3));
    assert_eq!(st, 201);
    assert_eq!(blob_files(&inst).len(), before + 1, "refused uploads left no blob behind");

    // Whose attachment is it?
    let (st, b) = upload(&s, &s.token, Some("application/pdf"), None, b"%PDF-1.4".to_vec());
    assert_eq!(st, 422, "no X-Security-Context: {b}");
    let (st, b) = upload(&s, &s.token, Some("application/pdf"), Some("Patient/does-not-exist"), b"%PDF-1.4".to_vec());
    assert_eq!(st, 422, "unknown patient: {b}");
    let (st, b) = upload(&s, &s.token, Some("application/pdf"), Some("Organization/x"), b"%PDF-1.4".to_vec());
    assert_eq!(st, 422, "not a patient's record: {b}");
    let (st, b) = upload(&s, &s.token, None, Some(&ctx), b"%PDF-1.4".to_vec());
    assert_eq!(st, 400, "no Content-Type: {b}");
    let r = s.post("Binary", &json!({"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0="}));
    assert_eq!(r.status(), 422, "a JSON Binary without securityContext");
    let r = s.post("Binary", &json!({"resourceType": "Binary", "contentType": "application/pdf", "securityContext": {"reference": ctx}, "data": "not base64!"}));
    assert_eq!(r.status(), 400, "bad base64");
    // A client-made blob reference does not open another Binary's content.
    let (_, real) = upload(&s, &s.token, Some("text/plain"), Some(&ctx), b"secret letter".to_vec());
    let mut forged = real.clone();
    forged.as_object_mut().unwrap().remove("id");
    forged.as_object_mut().unwrap().remove("meta");
    let r = s.post("Binary", &forged);
    assert_eq!(r.status(), 422, "a blob reference copied into another Binary is refused");

    // Another facility's client without a care relationship cannot read it; the
    // administrator (clients and keys, no patient data) cannot upload.
    let other = inst.caller(&s, &["--name", "other", "--role", "facility-system", "--organization", "Organization/other", "--scopes", "system/*.cruds"]);
    let r = raw_get(&s, &other.token, &format!("Binary/{}", real["id"].as_str().unwrap()), &[]);
    assert_eq!(r.status(), 403);
    let text = r.text().unwrap();
    assert!(!text.contains("secret letter"));
    let admin = s.token_for(&inst.admin_id, &inst.admin_secret);
    let (st, _) = upload(&s, &admin, Some("text/plain"), Some(&ctx), b"x".to_vec());
    assert_eq!(st, 403);
    // Without a token at all.
    assert_eq!(s.http.get(s.url(&format!("Binary/{}", real["id"].as_str().unwrap()))).send().unwrap().status(), 401);
    s.stop();
}

#[test]
fn tampered_blobs_are_detected_on_download() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = new_patient(&s);
    // 3 full 64 KiB segments and a short last one.
    let data = noise(3 * 65536 + 5000, 11);
    let (st, b) = upload(&s, &s.token, Some("application/octet-stream"), Some(&format!("Patient/{pid}")), data.clone());
    assert_eq!(st, 201);
    let id = b["id"].as_str().unwrap().to_string();
    let files = blob_files(&inst);
    assert_eq!(files.len(), 1);
    let path = files[0].clone();
    let original = std::fs::read(&path).unwrap();
    let (header, seg) = (15usize, 65536 + 16);
    assert_eq!(original.len(), header + 3 * seg + 5000 + 16, "header, three full segments and the last");

    let whole = |what: &str| -> bool {
        let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[]);
        if r.status() != 200 {
            return false;
        }
        match r.bytes() {
            Ok(b) => {
                assert_ne!(b.to_vec(), data, "{what}: altered content served as if intact");
                false
            }
            Err(_) => false,
        }
    };
    assert_eq!(body_of(raw_get(&s, &s.token, &format!("Binary/{id}"), &[])), data, "control: intact");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped bit in segment 2", {
            let mut b = original.clone();
            b[header + seg + 100] ^= 1;
            b
        }),
        ("segments 1 and 2 swapped", {
            let mut b = original.clone();
            let (s1, s2) = (original[header..header + seg].to_vec(), original[header + seg..header + 2 * seg].to_vec());
            b[header..header + seg].copy_from_slice(&s2);
            b[header + seg..header + 2 * seg].copy_from_slice(&s1);
            b
        }),
        ("the last segment cut off", original[..header + 3 * seg].to_vec()),
        ("cut inside the last segment", original[..original.len() - 10].to_vec()),
        ("segment 3 repeated in place of the last", {
            let mut b = original[..header + 3 * seg].to_vec();
            b.extend_from_slice(&original[header + 2 * seg..header + 3 * seg]);
            b
        }),
        ("a changed header", {
            let mut b = original.clone();
            b[10] ^= 0x40;
            b
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        assert!(!whole(what), "{what}: the download must fail");
    }
    // A range in an untouched segment still opens while another segment is bad.
    let mut b = original.clone();
    b[header + 2 * seg + 7] ^= 0x80;
    std::fs::write(&path, &b).unwrap();
    let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[("range", "bytes=0-99")]);
    assert_eq!(r.status(), 206);
    assert_eq!(body_of(r), &data[..100]);
    let r = raw_get(&s, &s.token, &format!("Binary/{id}"), &[("range", "bytes=140000-140010")]);
    assert_eq!(r.status(), 500, "the range inside the bad segment is refused before any byte is sent");
    let e: Value = r.json().unwrap();
    assert_eq!(e["resourceType"], "OperationOutcome");
    std::fs::write(&path, &original).unwrap();
    assert_eq!(body_of(raw_get(&s, &s.token, &format!("Binary/{id}"), &[])), data, "restored: intact again");
    s.stop();
}

#[test]
fn attachment_reads_are_counted_by_the_guard() {
    let inst = Instance::init();
    let s = inst.serve();
    let mut ids = Vec::new();
    for (nik, family) in [(NIK, "Lestari"), ("3171054708900004", "Wulandari")] {
        let pid = s.create(&patient(nik, family))["id"].as_str().unwrap().to_string();
        let (st, b) = upload(&s, &s.token, Some("text/plain"), Some(&format!("Patient/{pid}")), format!("catatan {family}").into_bytes());
        assert_eq!(st, 201);
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    // A second client of the same facility (same care relationships), allowed one patient.
    let c = inst.budgeted_facility(&s, "ward pc", 1, 10, &[]);
    let r = raw_get(&s, &c.token, &format!("Binary/{}", ids[0]), &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "catatan Lestari");
    let r = raw_get(&s, &c.token, &format!("Binary/{}", ids[1]), &[]);
    assert_eq!(r.status(), 429, "the second patient's attachment is past the budget");
    assert!(!r.text().unwrap().contains("Wulandari"));
    // Suspended: even the first patient's attachment is refused now.
    assert_eq!(raw_get(&s, &c.token, &format!("Binary/{}", ids[0]), &[]).status(), 401);
    let (st, found) = s.get_as(&s.token, &format!("Patient?identifier={NIK_SYSTEM}|{NIK}"));
    assert_eq!((st, &found["total"]), (200, &json!(1)));
    s.stop();
}

/// A request body fed through a channel: the test decides when each part leaves.
struct Fed {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl std::io::Read for Fed {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(next) => (self.buf, self.at) = (next, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Bytes the server has written to temporary files of uploads in flight.
fn in_flight_bytes(inst: &Instance) -> u64 {
    common::all_files(&inst.data_dir().join("blobs/tmp"))
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn uploads_in_flight_survive_commands_and_a_second_server() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = new_patient(&s);
    let ctx = format!("Patient/{pid}");
    let big = noise(6 * 1024 * 1024 + 17, 11);
    let (tx, rx) = std::sync::mpsc::channel();
    let body = reqwest::blocking::Body::new(Fed { rx, buf: Vec::new(), at: 0 });
    let req = s.http.post(s.url("Binary")).bearer_auth(&s.token).header("content-type", "application/octet-stream").header("x-security-context", &ctx).body(body);
    let uploading = std::thread::spawn(move || {
        let r = req.send().unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().unwrap_or(Value::Null))
    });
    let half = big.len() / 2;
    for c in big[..half].chunks(256 * 1024) {
        tx.send(c.to_vec()).unwrap();
    }
    // Wait until the server has written part of the body to its temporary file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while in_flight_bytes(&inst) < 1024 * 1024 {
        assert!(std::time::Instant::now() < deadline, "the upload never reached the blob store");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Neighbours open the data directory meanwhile: a CLI command, and a second server.
    let out = inst.cli(&["clients", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = inst.serve();
    assert!(in_flight_bytes(&inst) >= 1024 * 1024, "the upload's temporary file is still there");
    second.stop();

    for c in big[half..].chunks(256 * 1024) {
        tx.send(c.to_vec()).unwrap();
    }
    drop(tx);
    let (st, b) = uploading.join().unwrap();
    assert_eq!(st, 201, "the upload completes: {b}");
    let id = b["id"].as_str().unwrap();
    assert_eq!(body_of(raw_get(&s, &s.token, &format!("Binary/{id}"), &[])), big, "and reads back whole");
    s.stop();
    // The servers' temporary directories went with them.
    assert_eq!(in_flight_bytes(&inst), 0);
}
