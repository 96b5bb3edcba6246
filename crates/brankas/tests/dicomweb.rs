//! DICOMweb against the real DICOM files shipped in PyPI's `pydicom` package (installed by
//! `tests/python/venv.sh`, which `./test.sh` runs): STOW-RS, WADO-RS byte for byte, the
//! ImagingStudy it builds checked against pydicom's own reading of the files, QIDO-RS,
//! metadata, patient linking by NIK or IHS number, broken files refused with nothing stored,
//! access control, and no plaintext of any instance at rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Instance, NIK_SYSTEM, Server, patient};
use serde_json::{Value, json};

const NIK: &str = "3171054708900003";
const IHS_SYSTEM: &str = "https://fhir.kemkes.go.id/id/ihs-number";

fn venv() -> PathBuf {
    std::env::var_os("BRANKAS_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ci-venv"))
}

fn python() -> PathBuf {
    venv().join("bin/python")
}

/// pydicom's test files.
fn dicom_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BRANKAS_DICOM_FILES") {
        return PathBuf::from(d);
    }
    let lib = venv().join("lib");
    let found = std::fs::read_dir(&lib).ok().into_iter().flatten().flatten().map(|e| e.path().join("site-packages/pydicom/data/test_files")).find(|p| p.is_dir());
    found.unwrap_or_else(|| panic!("pydicom's test files are not in {}: run tests/python/venv.sh (./test.sh does), or set BRANKAS_DICOM_FILES", lib.display()))
}

fn dcm(name: &str) -> PathBuf {
    dicom_dir().join(name)
}

/// What pydicom (an independent DICOM toolkit) reads from each file: the oracle.
fn oracle(files: &[PathBuf]) -> Vec<Value> {
    let script = r#"
import json, sys, pydicom
out = []
for f in sys.argv[1:]:
    d = pydicom.dcmread(f, stop_before_pixels=True)
    g = lambda k: (str(d.get(k)) if d.get(k) is not None else None)
    out.append({"study": g("StudyInstanceUID"), "series": g("SeriesInstanceUID"), "sop": g("SOPInstanceUID"),
                "sop_class": g("SOPClassUID"), "patient_id": g("PatientID"), "modality": g("Modality"),
                "series_number": (int(d.SeriesNumber) if d.get("SeriesNumber") not in (None, "") else None),
                "instance_number": (int(d.InstanceNumber) if d.get("InstanceNumber") not in (None, "") else None)})
print(json.dumps(out))
"#;
    let out = Command::new(python()).arg("-c").arg(script).args(files).output().expect("run the venv's python");
    assert!(out.status.success(), "pydicom oracle: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A copy of `src` with another PatientID (and, if given, other study/series/instance UIDs),
/// written by pydicom.
fn rewrite(src: &Path, dst: &Path, patient_id: &str, new_uids: bool) {
    let script = r#"
import sys, pydicom
from pydicom.uid import generate_uid
d = pydicom.dcmread(sys.argv[1])
d.PatientID = sys.argv[3]
if sys.argv[4] == "1":
    d.StudyInstanceUID = generate_uid(); d.SeriesInstanceUID = generate_uid()
    u = generate_uid(); d.SOPInstanceUID = u; d.file_meta.MediaStorageSOPInstanceUID = u
d.save_as(sys.argv[2])
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(src).arg(dst).arg(patient_id).arg(if new_uids { "1" } else { "0" }).output().unwrap();
    assert!(out.status.success(), "pydicom rewrite: {}", String::from_utf8_lossy(&out.stderr));
}

const BOUNDARY: &str = "brankas-test-3f1c9a";

fn multipart(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        b.extend_from_slice(p);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn stow(s: &Server, token: &str, query: &str, parts: &[Vec<u8>]) -> (u16, Value) {
    let r = s
        .http
        .post(format!("{}/dicomweb/studies{query}", s.root))
        .bearer_auth(token)
        .header("content-type", format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"))
        .header("accept", "application/dicom+json")
        .body(multipart(parts))
        .send()
        .unwrap();
    let st = r.status().as_u16();
    (st, serde_json::from_slice(&r.bytes().unwrap()).unwrap_or(Value::Null))
}

fn dget(s: &Server, token: &str, path: &str) -> reqwest::blocking::Response {
    s.http.get(format!("{}/dicomweb{path}", s.root)).bearer_auth(token).send().unwrap()
}

fn djson(s: &Server, token: &str, path: &str) -> (u16, Value) {
    let r = dget(s, token, path);
    let st = r.status().as_u16();
    (st, serde_json::from_slice(&r.bytes().unwrap()).unwrap_or(Value::Null))
}

/// The parts of a `multipart/related` response.
fn parts_of(r: reqwest::blocking::Response) -> Vec<Vec<u8>> {
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("multipart/related") && ct.contains("application/dicom"), "{ct}");
    let boundary = ct.split("boundary=").nth(1).unwrap().trim_matches('"').to_string();
    let body = r.bytes().unwrap().to_vec();
    let delim = format!("--{boundary}").into_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + delim.len() <= body.len() {
        if body[i..].starts_with(&delim) && (i == 0 || body[..i].ends_with(b"\r\n")) {
            starts.push(i);
            i += delim.len();
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for w in starts.windows(2) {
        let part = &body[w[0] + delim.len() + 2..w[1] - 2];
        let sep = part.windows(4).position(|x| x == b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8_lossy(&part[..sep]).to_ascii_lowercase();
        assert!(head.contains("content-type: application/dicom"), "{head}");
        out.push(part[sep + 4..].to_vec());
    }
    assert!(body[*starts.last().unwrap()..].starts_with(format!("--{boundary}--").as_bytes()), "closing delimiter");
    out
}

fn uid_value(v: &Value, tag: &str) -> Option<String> {
    v.get(tag)?.get("Value")?.get(0)?.as_str().map(String::from)
}

/// Files the server must accept: native and compressed transfer syntaxes (explicit and
/// implicit little endian, big endian, deflate, JPEG baseline and lossy, JPEG 2000, JPEG-LS,
/// RLE), multi-frame, a 12-lead ECG waveform, a structured report.
const GOOD: &[&str] = &[
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle_2frame.dcm",
    "waveform_ecg.dcm",
    "test-SR.dcm",
];

#[test]
fn stow_then_wado_returns_every_file_byte_for_byte_and_the_study_matches_pydicom() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient(NIK, "Lestari"))["id"].as_str().unwrap().to_string();
    let files: Vec<PathBuf> = GOOD.iter().map(|f| dcm(f)).collect();
    let truth = oracle(&files);
    let mut last_by_sop: std::collections::BTreeMap<String, (usize, Vec<u8>)> = Default::default();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let (st, body) = stow(&s, &s.token, &format!("?patient=Patient/{pid}"), std::slice::from_ref(&bytes));
        assert_eq!(st, 200, "{}: {body}", GOOD[i]);
        let t = &truth[i];
        let refd = &body["00081199"]["Value"][0];
        assert_eq!(uid_value(refd, "00081155").as_deref(), t["sop"].as_str(), "{}", GOOD[i]);
        assert_eq!(uid_value(refd, "00081150").as_deref(), t["sop_class"].as_str(), "{}", GOOD[i]);
        let url = uid_value(refd, "00081190").unwrap();
        assert!(url.ends_with(&format!("/studies/{}/series/{}/instances/{}", t["study"].as_str().unwrap(), t["series"].as_str().unwrap(), t["sop"].as_str().unwrap())), "{url}");
        // WADO-RS of the instance: the very bytes sent.
        let path = format!("/studies/{}/series/{}/instances/{}", t["study"].as_str().unwrap(), t["series"].as_str().unwrap(), t["sop"].as_str().unwrap());
        let got = parts_of(dget(&s, &s.token, &path));
        assert_eq!(got.len(), 1);
        assert!(got[0] == bytes, "{}: WADO-RS returned other bytes ({} vs {})", GOOD[i], got[0].len(), bytes.len());
        last_by_sop.insert(t["sop"].as_str().unwrap().to_string(), (i, bytes));
    }
    // Several instances in one request.
    let three: Vec<Vec<u8>> = ["CT_small.dcm", "waveform_ecg.dcm", "JPEG2000.dcm"].iter().map(|f| std::fs::read(dcm(f)).unwrap()).collect();
    let (st, body) = stow(&s, &s.token, &format!("?patient=Patient/{pid}"), &three);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["00081199"]["Value"].as_array().unwrap().len(), 3);
    for (f, b) in ["CT_small.dcm", "waveform_ecg.dcm", "JPEG2000.dcm"].iter().zip(&three) {
        let i = GOOD.iter().position(|g| g == f).unwrap();
        last_by_sop.insert(truth[i]["sop"].as_str().unwrap().to_string(), (i, b.clone()));
    }

    // The ImagingStudies, as FHIR, against pydicom's reading.
    let (st, bundle) = s.get_as(&s.token, &format!("ImagingStudy?patient=Patient/{pid}&_count=100"));
    assert_eq!(st, 200);
    let studies: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let study_uids: std::collections::BTreeSet<&str> = truth.iter().map(|t| t["study"].as_str().unwrap()).collect();
    assert_eq!(studies.len(), study_uids.len(), "one ImagingStudy per study UID");
    for (sop, (i, _)) in &last_by_sop {
        let t = &truth[*i];
        let study = studies
            .iter()
            .find(|st| st["identifier"].as_array().unwrap().iter().any(|id| id["system"] == "urn:dicom:uid" && id["value"] == format!("urn:oid:{}", t["study"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{}: no ImagingStudy for its study", GOOD[*i]));
        assert_eq!(study["subject"]["reference"], format!("Patient/{pid}"));
        assert_eq!(study["status"], "available");
        let series = study["series"].as_array().unwrap().iter().find(|x| x["uid"] == t["series"]).unwrap_or_else(|| panic!("{}: series", GOOD[*i]));
        if let Some(m) = t["modality"].as_str() {
            assert_eq!(series["modality"]["code"], m, "{}", GOOD[*i]);
            assert!(study["modality"].as_array().unwrap().iter().any(|c| c["code"] == m));
        }
        if let Some(n) = t["series_number"].as_i64() {
            assert_eq!(series["number"], n, "{}", GOOD[*i]);
        }
        let instance = series["instance"].as_array().unwrap().iter().find(|x| x["uid"] == sop.as_str()).unwrap();
        assert_eq!(instance["sopClass"]["code"], format!("urn:oid:{}", t["sop_class"].as_str().unwrap()), "{}", GOOD[*i]);
        if let Some(n) = t["instance_number"].as_i64() {
            assert_eq!(instance["number"], n, "{}", GOOD[*i]);
        }
        let n: usize = study["series"].as_array().unwrap().iter().map(|x| x["instance"].as_array().unwrap().len()).sum();
        assert_eq!(study["numberOfInstances"], n);
        assert_eq!(study["numberOfSeries"], study["series"].as_array().unwrap().len());
    }
    // Each study retrieved whole: every instance, as last sent.
    for uid in &study_uids {
        let parts = parts_of(dget(&s, &s.token, &format!("/studies/{uid}")));
        let expected: Vec<&Vec<u8>> = last_by_sop.iter().filter(|(_, (i, _))| truth[*i]["study"] == *uid).map(|(_, (_, b))| b).collect();
        assert_eq!(parts.len(), expected.len(), "study {uid}");
        for e in expected {
            assert!(parts.contains(e), "study {uid}: an instance is missing or altered");
        }
    }

    // No plaintext of any instance at rest: distinctive 64-byte windows (at least 24 different
    // byte values, so not padding or blank pixels) from the pixel end of each file.
    s.stop();
    let mut needles = Vec::new();
    for f in &files {
        let b = std::fs::read(f).unwrap();
        let found: Vec<usize> = (132..b.len() - 64).rev().step_by(61).filter(|&at| b[at..at + 64].iter().collect::<std::collections::BTreeSet<_>>().len() >= 24).take(2).collect();
        for at in found {
            needles.push((format!("{} at {at}", f.display()), b[at..at + 64].to_vec()));
        }
    }
    assert_eq!(needles.len(), 2 * files.len(), "control: two distinctive windows in every file");
    let mut scanned = 0usize;
    for f in common::all_files(&inst.data_dir()) {
        let bytes = std::fs::read(&f).unwrap();
        scanned += bytes.len();
        for (what, n) in &needles {
            assert!(!bytes.windows(64).any(|w| w == n.as_slice()), "{what} found in the clear in {}", f.display());
        }
    }
    let total: usize = files.iter().map(|f| std::fs::metadata(f).unwrap().len() as usize).sum();
    assert!(scanned > total, "control: the instances were written somewhere ({scanned} bytes scanned)");
}

/// pydicom's deliberately broken or non-Part-10 files.
const BROKEN: &[&str] = &["MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "meta_missing_tsyntax.dcm"];

#[test]
fn broken_dicom_is_refused_and_nothing_is_stored() {
    let inst = Instance::init();
    let s = inst.serve();
    let pid = s.create(&patient(NIK, "Lestari"))["id"].as_str().unwrap().to_string();
    let blobs = || common::all_files(&inst.data_dir().join("blobs")).len();
    let before = blobs();
    for f in BROKEN {
        let bytes = std::fs::read(dcm(f)).unwrap();
        let (st, body) = stow(&s, &s.token, &format!("?patient=Patient/{pid}"), &[bytes]);
        assert_eq!(st, 409, "{f}: {body}");
        assert_eq!(body["00081198"]["Value"][0]["00081197"]["Value"][0], 0xC000, "{f}: cannot understand");
        assert!(body.get("00081199").is_none(), "{f}");
    }
    // Cut anywhere: a good file truncated at several places is refused too.
    let ct = std::fs::read(dcm("CT_small.dcm")).unwrap();
    for cut in [10, 131, 400, ct.len() / 2, ct.len() - 1] {
        let (st, body) = stow(&s, &s.token, &format!("?patient=Patient/{pid}"), &[ct[..cut].to_vec()]);
        assert_eq!(st, 409, "CT_small cut at {cut}: {body}");
    }
    // Random bytes; a broken multipart body; the wrong media types.
    let (st, _) = stow(&s, &s.token, &format!("?patient=Patient/{pid}"), &[vec![0x42; 5000]]);
    assert_eq!(st, 409);
    let r = s
        .http
        .post(format!("{}/dicomweb/studies", s.root))
        .bearer_auth(&s.token)
        .header("content-type", format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"))
        .body(format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nabc"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s.http.post(format!("{}/dicomweb/studies", s.root)).bearer_auth(&s.token).header("content-type", "application/dicom").body(ct.clone()).send().unwrap();
    assert_eq!(r.status(), 415);
    let e: Value = r.json().unwrap();
    assert_eq!(e["resourceType"], "OperationOutcome");
    assert_eq!(blobs(), before, "nothing stored");
    let (_, b) = s.get_as(&s.token, &format!("ImagingStudy?patient=Patient/{pid}"));
    assert_eq!(b["total"], 0);
    // A mix: the good instance is stored (202), the broken one is listed as failed.
    let (st, body) = stow(&s, &s.token, &format!("?patient=Patient/{pid}"), &[ct.clone(), ct[..ct.len() / 2].to_vec()]);
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["00081199"]["Value"].as_array().unwrap().len(), 1);
    assert_eq!(body["00081198"]["Value"].as_array().unwrap().len(), 1);
}

#[test]
fn instances_find_their_patient_by_nik_or_ihs_number_never_by_guess() {
    let inst = Instance::init();
    let s = inst.serve();
    let tmp = tempfile::tempdir().unwrap();
    let a = s.create(&patient(NIK, "Lestari"))["id"].as_str().unwrap().to_string();
    let mut pb = patient("3171054708900004", "Wulandari");
    pb["identifier"].as_array_mut().unwrap().push(json!({"system": IHS_SYSTEM, "value": "P02478375538"}));
    let b = s.create(&pb)["id"].as_str().unwrap().to_string();

    // PatientID = NIK of A.
    let f1 = tmp.path().join("ct-nik.dcm");
    rewrite(&dcm("CT_small.dcm"), &f1, NIK, true);
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&f1).unwrap()]);
    assert_eq!(st, 200, "{body}");
    let t1 = &oracle(std::slice::from_ref(&f1))[0];
    let (_, sa) = s.get_as(&s.token, &format!("ImagingStudy?patient=Patient/{a}"));
    assert_eq!(sa["total"], 1);
    assert_eq!(sa["entry"][0]["resource"]["identifier"][0]["value"], format!("urn:oid:{}", t1["study"].as_str().unwrap()));
    // PatientID = IHS number of B.
    let f2 = tmp.path().join("mr-ihs.dcm");
    rewrite(&dcm("MR_small.dcm"), &f2, "P02478375538", true);
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&f2).unwrap()]);
    assert_eq!(st, 200, "{body}");
    let (_, sb) = s.get_as(&s.token, &format!("ImagingStudy?patient=Patient/{b}"));
    assert_eq!(sb["total"], 1);
    // Unknown PatientID: refused, not guessed; nothing stored.
    let f3 = tmp.path().join("unknown.dcm");
    rewrite(&dcm("CT_small.dcm"), &f3, "3171050000000009", true);
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&f3).unwrap()]);
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["00081198"]["Value"][0]["00081197"]["Value"][0], 0x0110);
    // A's study sent again for B: refused (a study belongs to one patient).
    let (st, body) = stow(&s, &s.token, &format!("?patient=Patient/{b}"), &[std::fs::read(&f1).unwrap()]);
    assert_eq!(st, 409, "{body}");
    let (_, sb) = s.get_as(&s.token, &format!("ImagingStudy?patient=Patient/{b}"));
    assert_eq!(sb["total"], 1, "B still has only its own study");
    // Into a study by URL: an instance of another study is refused.
    let (st, _) = {
        let r = s
            .http
            .post(format!("{}/dicomweb/studies/1.2.3.4", s.root))
            .bearer_auth(&s.token)
            .header("content-type", format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"))
            .body(multipart(&[std::fs::read(&f1).unwrap()]))
            .send()
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(st, 409);
}

/// A copy of `src` with new UIDs, this PatientID and this IssuerOfPatientID, written by pydicom.
fn rewrite_issuer(src: &Path, dst: &Path, patient_id: &str, issuer: &str) {
    let script = r#"
import sys, pydicom
from pydicom.uid import generate_uid
d = pydicom.dcmread(sys.argv[1])
d.PatientID = sys.argv[3]
d.IssuerOfPatientID = sys.argv[4]
d.StudyInstanceUID = generate_uid(); d.SeriesInstanceUID = generate_uid()
u = generate_uid(); d.SOPInstanceUID = u; d.file_meta.MediaStorageSOPInstanceUID = u
d.save_as(sys.argv[2])
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(src).arg(dst).arg(patient_id).arg(issuer).output().unwrap();
    assert!(out.status.success(), "pydicom rewrite: {}", String::from_utf8_lossy(&out.stderr));
}

/// A modality sends the hospital's own record number: linked through the facility's
/// registered record-number system, or the IssuerOfPatientID system; never guessed.
#[test]
fn hospital_record_numbers_link_instances_to_their_patient() {
    let inst = Instance::init();
    let s = inst.serve();
    let tmp = tempfile::tempdir().unwrap();
    const MRN: &str = "http://sys-ids.kemkes.go.id/mrn/rs-a";
    let pacs =
        inst.caller(&s, &["--name", "pacs", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.cruds", "--record-number-system", MRN]);
    let mut pc = patient(NIK, "Lestari");
    pc["identifier"].as_array_mut().unwrap().push(json!({"system": MRN, "value": "RM-000123"}));
    let (st, v) = s.call(&pacs.token, reqwest::Method::POST, "Patient", Some(&pc), &[]);
    assert_eq!(st, 201, "{v}");
    let c = v["id"].as_str().unwrap().to_string();
    let f = tmp.path().join("mrn.dcm");
    rewrite(&dcm("CT_small.dcm"), &f, "RM-000123", true);
    let (st, body) = stow(&s, &pacs.token, "", &[std::fs::read(&f).unwrap()]);
    assert_eq!(st, 200, "{body}");
    let (_, studies) = s.get_as(&pacs.token, &format!("ImagingStudy?patient=Patient/{c}"));
    assert_eq!(studies["total"], 1, "{studies}");
    // QIDO by the record number finds it.
    let (st, found) = djson(&s, &pacs.token, "/studies?PatientID=RM-000123");
    assert_eq!((st, found.as_array().map(Vec::len)), (200, Some(1)), "{found}");
    // The facility's imaging work list: the studies its modalities sent, by study date
    // (CT_small was taken on 19 Jan 2004); another facility's list does not hold them, and
    // another facility cannot read this one's.
    let list = "ImagingStudy?performer=Organization/rs-a&started=ge2004-01-01&started=le2004-01-31";
    let (st, wl) = s.get_as(&pacs.token, list);
    assert_eq!((st, wl["total"].as_u64()), (200, Some(1)), "{wl}");
    assert_eq!(wl["entry"][0]["resource"]["subject"]["reference"], format!("Patient/{c}"));
    let (_, other) = s.get_as(&pacs.token, "ImagingStudy?performer=Organization/rs-a&started=ge2004-02-01&started=le2004-02-28");
    assert_eq!(other["total"], 0);
    let rs_b = inst.caller(&s, &["--name", "rs-b", "--role", "facility-system", "--organization", "Organization/rs-b", "--scopes", "system/*.rs"]);
    assert_eq!(s.get_as(&rs_b.token, list).0, 403);
    let (_, b_list) = s.get_as(&rs_b.token, "ImagingStudy?performer=Organization/rs-b&started=ge2004-01-01&started=le2004-01-31");
    assert_eq!(b_list["total"], 0);
    // A client without that registration cannot link by it: refused, nothing stored.
    let f2 = tmp.path().join("mrn2.dcm");
    rewrite(&dcm("CT_small.dcm"), &f2, "RM-000123", true);
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&f2).unwrap()]);
    assert_eq!(st, 409, "{body}");
    // IssuerOfPatientID naming the identifier system (a URI) links for anyone.
    let mut pd = patient("3171054708900004", "Wulandari");
    pd["identifier"].as_array_mut().unwrap().push(json!({"system": "urn:oid:1.2.360.1.99", "value": "RM-000456"}));
    let d = s.create(&pd)["id"].as_str().unwrap().to_string();
    let f3 = tmp.path().join("issuer.dcm");
    rewrite_issuer(&dcm("MR_small.dcm"), &f3, "RM-000456", "urn:oid:1.2.360.1.99");
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&f3).unwrap()]);
    assert_eq!(st, 200, "{body}");
    let (_, studies) = s.get_as(&s.token, &format!("ImagingStudy?patient=Patient/{d}"));
    assert_eq!(studies["total"], 1, "{studies}");
    // A local issuer name is no system: not guessed.
    let f4 = tmp.path().join("local-issuer.dcm");
    rewrite_issuer(&dcm("MR_small.dcm"), &f4, "RM-000456", "RSA");
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&f4).unwrap()]);
    assert_eq!(st, 409, "{body}");
    // Registration: an absolute URI, for facility systems only.
    for bad in [
        vec!["--name", "x", "--role", "facility-system", "--organization", "Organization/rs-a", "--scopes", "system/*.rs", "--record-number-system", "not a uri"],
        vec![
            "--name",
            "x",
            "--role",
            "clinician",
            "--organization",
            "Organization/rs-a",
            "--practitioner",
            "Practitioner/p",
            "--scopes",
            "user/*.rs",
            "--record-number-system",
            MRN,
        ],
    ] {
        let mut args = vec!["clients", "create"];
        args.extend(bad);
        let out = inst.cli(&args);
        assert!(!out.status.success(), "{args:?}");
    }
}

#[test]
fn qido_and_metadata_within_one_patient_and_access_control() {
    let inst = Instance::init();
    let s = inst.serve();
    let tmp = tempfile::tempdir().unwrap();
    let pid = s.create(&patient(NIK, "Lestari"))["id"].as_str().unwrap().to_string();
    let ct = tmp.path().join("ct.dcm");
    rewrite(&dcm("CT_small.dcm"), &ct, NIK, false);
    let ecg = tmp.path().join("ecg.dcm");
    rewrite(&dcm("waveform_ecg.dcm"), &ecg, NIK, false);
    let t = oracle(&[ct.clone(), ecg.clone()]);
    let (st, body) = stow(&s, &s.token, "", &[std::fs::read(&ct).unwrap(), std::fs::read(&ecg).unwrap()]);
    assert_eq!(st, 200, "{body}");
    let (ct_study, ecg_study) = (t[0]["study"].as_str().unwrap(), t[1]["study"].as_str().unwrap());

    // Studies of the patient, by NIK.
    let (st, studies) = djson(&s, &s.token, &format!("/studies?PatientID={NIK}"));
    assert_eq!(st, 200, "{studies}");
    let uids: Vec<String> = studies.as_array().unwrap().iter().filter_map(|x| uid_value(x, "0020000D")).collect();
    assert!(uids.contains(&ct_study.to_string()) && uids.contains(&ecg_study.to_string()), "{uids:?}");
    for x in studies.as_array().unwrap() {
        assert_eq!(uid_value(x, "00100020").as_deref(), Some(NIK));
        assert!(uid_value(x, "00081190").unwrap().starts_with(&s.root));
    }
    // Matching attributes.
    let (_, only_ct) = djson(&s, &s.token, &format!("/studies?PatientID={NIK}&ModalitiesInStudy=CT"));
    assert_eq!(only_ct.as_array().unwrap().len(), 1);
    assert_eq!(uid_value(&only_ct[0], "0020000D").as_deref(), Some(ct_study));
    let (_, none) = djson(&s, &s.token, &format!("/studies?PatientID={NIK}&ModalitiesInStudy=MR"));
    assert_eq!(none.as_array().unwrap().len(), 0);
    let (_, by_uid) = djson(&s, &s.token, &format!("/studies?StudyInstanceUID={ecg_study}"));
    assert_eq!(by_uid.as_array().unwrap().len(), 1);
    let (_, limited) = djson(&s, &s.token, &format!("/studies?PatientID={NIK}&limit=1"));
    assert_eq!(limited.as_array().unwrap().len(), 1);
    // Series and instances within the study.
    let (st, series) = djson(&s, &s.token, &format!("/studies/{ct_study}/series"));
    assert_eq!(st, 200);
    assert_eq!(uid_value(&series[0], "0020000E").as_deref(), t[0]["series"].as_str());
    assert_eq!(uid_value(&series[0], "00080060").as_deref(), Some("CT"));
    let (_, insts) = djson(&s, &s.token, &format!("/studies/{ct_study}/series/{}/instances", t[0]["series"].as_str().unwrap()));
    assert_eq!(uid_value(&insts[0], "00080018").as_deref(), t[0]["sop"].as_str());
    assert_eq!(uid_value(&insts[0], "00080016").as_deref(), t[0]["sop_class"].as_str());
    let (_, all_series) = djson(&s, &s.token, &format!("/series?PatientID={NIK}"));
    assert_eq!(all_series.as_array().unwrap().len(), 2);
    // Across patients there is no QIDO: one patient (or one study) must be named.
    let (st, e) = djson(&s, &s.token, "/studies?ModalitiesInStudy=CT");
    assert_eq!((st, e["resourceType"].as_str()), (400, Some("OperationOutcome")), "{e}");
    let (st, e) = djson(&s, &s.token, &format!("/studies?PatientID={NIK}&NoSuchAttribute=1"));
    assert_eq!(st, 400, "{e}");

    // Metadata: DICOM JSON, pixel and waveform data by reference only.
    let (st, meta) = djson(&s, &s.token, &format!("/studies/{ct_study}/metadata"));
    assert_eq!(st, 200);
    let m = &meta[0];
    assert_eq!(m["00100020"]["Value"][0], NIK);
    assert_eq!(m["0020000D"]["Value"][0], ct_study);
    let px = &m["7FE00010"];
    assert!(px["BulkDataURI"].as_str().unwrap().starts_with(&format!("{}/dicomweb/studies/{ct_study}", s.root)), "{px}");
    assert!(px.get("InlineBinary").is_none() && px.get("Value").is_none());
    let (_, emeta) = djson(&s, &s.token, &format!("/studies/{ecg_study}/series/{}/instances/{}/metadata", t[1]["series"].as_str().unwrap(), t[1]["sop"].as_str().unwrap()));
    let wave = &emeta[0]["54000100"]["Value"][0]["54001010"];
    assert!(wave["BulkDataURI"].is_string(), "the 12-lead ECG's waveform data is bulk data: {wave}");
    // Unknown study: 404.
    assert_eq!(dget(&s, &s.token, "/studies/1.2.3.4.5/metadata").status(), 404);

    // Another facility without a care relationship sees nothing.
    let other = inst.caller(&s, &["--name", "other", "--role", "facility-system", "--organization", "Organization/other", "--scopes", "system/*.rs"]);
    assert_eq!(dget(&s, &other.token, &format!("/studies/{ct_study}")).status(), 403);
    assert_eq!(dget(&s, &other.token, &format!("/studies/{ct_study}/metadata")).status(), 403);
    let (st, _) = djson(&s, &other.token, &format!("/studies?StudyInstanceUID={ct_study}"));
    assert_eq!(st, 403);
    let (st, _) = stow(&s, &other.token, &format!("?patient=Patient/{pid}"), &[std::fs::read(&ct).unwrap()]);
    assert_eq!(st, 409, "refused per instance");
    // No token.
    assert_eq!(s.http.get(format!("{}/dicomweb/studies/{ct_study}", s.root)).send().unwrap().status(), 401);
    let _ = NIK_SYSTEM;
}
