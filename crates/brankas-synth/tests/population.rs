//! The generator's promises: determinism, valid NIKs, unique identities, R4-valid resources,
//! well-formed attachments and the documented proportions.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use brankas_synth::files::{adler32, crc32};
use brankas_synth::{Mix, Population};
use serde_json::Value;

fn resources(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"])
}

fn decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn deterministic() {
    for mix in [Mix::Minimal, Mix::Full] {
        let a = Population::new(42, mix);
        let b = Population::new(42, mix);
        let c = Population::new(43, mix);
        for i in [0u64, 1, 7, 999, 123_456, 9_999_999] {
            let x = serde_json::to_string(&a.patient_bundle(i)).unwrap();
            assert_eq!(x, serde_json::to_string(&b.patient_bundle(i)).unwrap());
            assert_ne!(x, serde_json::to_string(&c.patient_bundle(i)).unwrap());
        }
        assert_eq!(serde_json::to_string(&a.directory_bundle()).unwrap(), serde_json::to_string(&b.directory_bundle()).unwrap());
    }
}

#[test]
fn niks_parse_and_match_patients() {
    for mix in [Mix::Minimal, Mix::Full] {
        let pop = Population::new(7, mix);
        for i in 0..2_000 {
            let b = pop.patient_bundle(i);
            let p = resources(&b).next().unwrap();
            assert_eq!(p["resourceType"], "Patient");
            assert_eq!(brankas_fhir::check_patient_nik(p), Ok(vec![]), "patient {i}");
            let id = pop.identity(i);
            let info = brankas_fhir::parse_nik(&id.nik).unwrap();
            assert_eq!(info.female, id.gender == "female");
            assert_eq!(p["identifier"][0]["system"], brankas_fhir::NIK_SYSTEM);
            assert_eq!(p["identifier"][0]["value"], id.nik.as_str());
            assert_eq!(p["identifier"][1]["system"], brankas_fhir::IHS_SYSTEM);
            assert_eq!(p["identifier"][1]["value"], id.ihs.as_str());
            assert_eq!(p["birthDate"], id.birth_date.as_str());
            assert_eq!(p["gender"], id.gender);
            assert_eq!(p["name"][0]["family"], id.family.as_str());
            assert_eq!(p["telecom"][0]["value"], id.phone.as_str());
            assert_eq!(p["address"][0]["state"], id.province);
            assert_eq!(p["address"][0]["city"], id.regency);
            assert!(id.ihs.len() == 12 && id.ihs.starts_with('P'));
            let digits = id.phone.strip_prefix("+62").unwrap();
            assert!(digits.starts_with('8') && (10..=13).contains(&digits.len()), "{}", id.phone);
            let year: u32 = id.birth_date[..4].parse().unwrap();
            assert!((1935..=2024).contains(&year));
        }
    }
}

#[test]
fn identities_unique() {
    let pop = Population::new(1, Mix::Minimal);
    let mut niks = HashSet::new();
    let mut ihs = HashSet::new();
    let mut provinces: HashMap<&str, usize> = HashMap::new();
    let n = 200_000u64;
    for i in 0..n {
        let id = pop.identity(i);
        assert!(niks.insert(id.nik), "duplicate NIK at {i}");
        assert!(ihs.insert(id.ihs), "duplicate IHS at {i}");
        *provinces.entry(id.province).or_default() += 1;
    }
    // Java heavy: Jawa Barat, Jawa Tengah and Jawa Timur hold about 45% of Indonesians.
    let java = ["Jawa Barat", "Jawa Tengah", "Jawa Timur"].iter().map(|p| provinces[p]).sum::<usize>() as f64 / n as f64;
    assert!((0.35..0.55).contains(&java), "{java}");
    assert!(provinces.len() >= 38, "{}", provinces.len());
    // Far indexes stay unique and valid too.
    let far: HashSet<String> = (0..20_000u64).map(|k| pop.identity(10_000_000 - 1 - k * 331).nik).collect();
    assert_eq!(far.len(), 20_000);
    for k in 0..2_000u64 {
        brankas_fhir::parse_nik(&pop.identity(9_999_999 - k).nik).unwrap();
    }
}

#[test]
fn resources_validate_and_reference_their_patient() {
    let pop = Population::new(3, Mix::Full);
    let dir = pop.directory_bundle();
    brankas_fhir::validate_resource(&dir).unwrap();
    for r in resources(&dir) {
        brankas_fhir::validate_resource(r).unwrap_or_else(|e| panic!("{}: {e}", r["resourceType"]));
    }
    let dir_ids: HashSet<String> = resources(&dir).map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect();
    for mix in [Mix::Full, Mix::Minimal] {
        let pop = Population::new(3, mix);
        for i in 0..200 {
            let b = pop.patient_bundle(i);
            let entries = b["entry"].as_array().unwrap();
            let pat_urn = entries[0]["fullUrl"].as_str().unwrap();
            let urns: HashSet<&str> = entries.iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
            assert_eq!(urns.len(), entries.len());
            for e in entries {
                let r = &e["resource"];
                let t = r["resourceType"].as_str().unwrap();
                brankas_fhir::validate_resource(r).unwrap_or_else(|err| panic!("patient {i} {t}: {err}"));
                assert_eq!(e["request"]["method"], "POST");
                assert_eq!(e["request"]["url"], t);
                assert!(e["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
                if t != "Patient" {
                    let subj = r.get("subject").or_else(|| r.get("patient")).unwrap_or_else(|| panic!("{t} without patient"));
                    assert_eq!(subj["reference"], pat_urn, "{t}");
                }
                brankas_fhir::for_each_reference(r, &mut |x| {
                    assert!(urns.contains(x) || dir_ids.contains(x), "{t} references {x}");
                });
            }
            brankas_fhir::validate_resource(&b).unwrap();
        }
    }
}

fn find(pop: &Population, what: &str, from: u64) -> (u64, Value) {
    for i in from..from + 5_000 {
        let b = pop.patient_bundle(i);
        if resources(&b).any(|r| r["resourceType"] == what || (what == "photo" && r.get("photo").is_some())) {
            return (i, b);
        }
    }
    panic!("no {what}");
}

#[test]
fn png_photo_is_valid() {
    let pop = Population::new(5, Mix::Full);
    let (_, b) = find(&pop, "photo", 0);
    let p = resources(&b).next().unwrap();
    assert_eq!(p["photo"][0]["contentType"], "image/png");
    let png = decode(p["photo"][0]["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let mut pos = 8;
    let mut idat = Vec::new();
    let mut kinds = Vec::new();
    let (mut w, mut h) = (0usize, 0usize);
    while pos < png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &png[pos + 4..pos + 8];
        let data = &png[pos + 8..pos + 8 + len];
        let crc = u32::from_be_bytes(png[pos + 8 + len..pos + 12 + len].try_into().unwrap());
        assert_eq!(crc, crc32(&png[pos + 4..pos + 8 + len]), "chunk CRC");
        if kind == b"IHDR" {
            w = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
            h = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
            assert_eq!(&data[8..], &[8, 0, 0, 0, 0]);
        }
        if kind == b"IDAT" {
            idat.extend_from_slice(data);
        }
        kinds.push(String::from_utf8(kind.to_vec()).unwrap());
        pos += 12 + len;
    }
    assert_eq!(pos, png.len());
    assert_eq!(kinds.first().unwrap(), "IHDR");
    assert_eq!(kinds.last().unwrap(), "IEND");
    // zlib: header, stored blocks, Adler-32.
    assert_eq!(((u16::from(idat[0]) << 8) | u16::from(idat[1])) % 31, 0);
    let mut raw = Vec::new();
    let mut z = 2;
    loop {
        let last = idat[z] & 1 == 1;
        assert_eq!(idat[z] >> 1 & 3, 0, "stored block");
        let len = u16::from_le_bytes([idat[z + 1], idat[z + 2]]);
        let nlen = u16::from_le_bytes([idat[z + 3], idat[z + 4]]);
        assert_eq!(len, !nlen);
        raw.extend_from_slice(&idat[z + 5..z + 5 + len as usize]);
        z += 5 + len as usize;
        if last {
            break;
        }
    }
    assert_eq!(u32::from_be_bytes(idat[z..z + 4].try_into().unwrap()), adler32(&raw));
    assert_eq!(z + 4, idat.len());
    assert_eq!(raw.len(), h * (w + 1));
    assert!(raw.chunks(w + 1).all(|row| row[0] == 0));
}

#[test]
fn checksums_match_known_values() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
}

#[test]
fn consent_pdf_is_valid() {
    let pop = Population::new(5, Mix::Full);
    let (i, b) = find(&pop, "Consent", 0);
    let c = resources(&b).find(|r| r["resourceType"] == "Consent").unwrap();
    assert_eq!(c["sourceAttachment"]["contentType"], "application/pdf");
    let pdf = decode(c["sourceAttachment"]["data"].as_str().unwrap());
    assert_eq!(pdf.len() as u64, c["sourceAttachment"]["size"].as_u64().unwrap());
    assert!(pdf.starts_with(b"%PDF-1.4"));
    assert!(pdf.ends_with(b"%%EOF\n"));
    // Byte offsets matter: keep one character per byte.
    let text: String = pdf.iter().map(|&b| if b.is_ascii() { b as char } else { '?' }).collect();
    assert!(text.contains("Surat Pernyataan Isolasi Mandiri"));
    let id = pop.identity(i);
    assert!(text.contains(&id.family), "patient name in the letter");
    let sx = text.rfind("startxref\n").unwrap();
    let xref: usize = text[sx + 10..].lines().next().unwrap().parse().unwrap();
    assert!(text[xref..].starts_with("xref\n0 6\n"));
    let table = &text[xref + "xref\n0 6\n".len()..];
    for (k, line) in table.split_inclusive('\n').take(6).enumerate() {
        assert_eq!(line.len(), 20, "xref entries are 20 bytes");
        if k > 0 {
            let off: usize = line[..10].parse().unwrap();
            assert!(text[off..].starts_with(&format!("{k} 0 obj\n")), "object {k} offset");
        }
    }
    let len_at = text.find("/Length ").unwrap();
    let len: usize = text[len_at + 8..].split(' ').next().unwrap().parse().unwrap();
    let start = text.find("stream\n").unwrap() + 7;
    assert!(text[start + len..].starts_with("endstream"));
}

/// Walks an explicit VR little endian data set; returns (tag, VR, value) in order.
fn dicom_elements(d: &[u8]) -> Vec<(u32, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < d.len() {
        let g = u16::from_le_bytes([d[p], d[p + 1]]);
        let e = u16::from_le_bytes([d[p + 2], d[p + 3]]);
        let vr = String::from_utf8(d[p + 4..p + 6].to_vec()).unwrap();
        let (len, hdr) = if ["OB", "OW", "OF", "SQ", "UT", "UN"].contains(&vr.as_str()) {
            (u32::from_le_bytes(d[p + 8..p + 12].try_into().unwrap()) as usize, 12)
        } else {
            (u16::from_le_bytes([d[p + 6], d[p + 7]]) as usize, 8)
        };
        assert_eq!(len % 2, 0, "even length");
        out.push(((u32::from(g) << 16) | u32::from(e), vr, d[p + hdr..p + hdr + len].to_vec()));
        p += hdr + len;
    }
    assert_eq!(p, d.len());
    out
}

fn text(v: &[u8]) -> String {
    String::from_utf8(v.to_vec()).unwrap().trim_end_matches(['\0', ' ']).to_string()
}

#[test]
fn dicom_files_match_their_imaging_study() {
    let pop = Population::new(5, Mix::Full);
    let mut checked = 0;
    let mut from = 0;
    while checked < 3 {
        let (i, b) = find(&pop, "ImagingStudy", from);
        from = i + 1;
        let study = resources(&b).find(|r| r["resourceType"] == "ImagingStudy").unwrap();
        let study_uid = study["identifier"][0]["value"].as_str().unwrap().strip_prefix("urn:oid:").unwrap();
        let series = &study["series"][0];
        let instances = series["instance"].as_array().unwrap();
        let media: Vec<&Value> = resources(&b).filter(|r| r["resourceType"] == "Media").collect();
        assert_eq!(media.len(), instances.len());
        let study_urn = b["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "ImagingStudy").unwrap()["fullUrl"].clone();
        for (m, inst) in media.iter().zip(instances) {
            assert_eq!(m["partOf"][0]["reference"], study_urn);
            assert_eq!(m["content"]["contentType"], "application/dicom");
            let f = decode(m["content"]["data"].as_str().unwrap());
            assert!(f[..128].iter().all(|&x| x == 0));
            assert_eq!(&f[128..132], b"DICM");
            let all = dicom_elements(&f[132..]);
            let (tag, vr, gl) = &all[0];
            assert_eq!((*tag, vr.as_str()), (0x0002_0000, "UL"));
            let group_len = u32::from_le_bytes(gl[..4].try_into().unwrap()) as usize;
            let meta_bytes: usize = all.iter().skip(1).take_while(|x| x.0 >> 16 == 2).map(|x| x.2.len() + if ["OB", "OW"].contains(&x.1.as_str()) { 12 } else { 8 }).sum();
            assert_eq!(group_len, meta_bytes, "group 0002 length");
            let get = |t: u32| all.iter().find(|x| x.0 == t).map(|x| x.2.clone()).unwrap_or_else(|| panic!("{t:08x}"));
            let u16v = |t: u32| u16::from_le_bytes(get(t)[..2].try_into().unwrap());
            let tags: Vec<u32> = all.iter().map(|x| x.0).collect();
            assert!(tags.windows(2).all(|w| w[0] < w[1]), "ascending tags");
            assert_eq!(text(&get(0x0002_0010)), "1.2.840.10008.1.2.1");
            assert_eq!(text(&get(0x0002_0003)), text(&get(0x0008_0018)));
            assert_eq!(text(&get(0x0008_0018)), inst["uid"].as_str().unwrap());
            assert_eq!(format!("urn:oid:{}", text(&get(0x0008_0016))), inst["sopClass"]["code"].as_str().unwrap());
            assert_eq!(text(&get(0x0002_0002)), text(&get(0x0008_0016)));
            assert_eq!(text(&get(0x0020_000D)), study_uid);
            assert_eq!(text(&get(0x0020_000E)), series["uid"].as_str().unwrap());
            assert_eq!(text(&get(0x0008_0060)), study["modality"][0]["code"].as_str().unwrap());
            assert_eq!(text(&get(0x0010_0020)), pop.identity(i).nik);
            assert!(text(&get(0x0010_0010)).contains(&pop.identity(i).family));
            assert_eq!(text(&get(0x0028_0004)), "MONOCHROME2");
            assert_eq!((u16v(0x0028_0010), u16v(0x0028_0011)), (64, 64));
            assert_eq!((u16v(0x0028_0100), u16v(0x0028_0101), u16v(0x0028_0102), u16v(0x0028_0103), u16v(0x0028_0002)), (16, 12, 11, 0, 1));
            let px = get(0x7FE0_0010);
            assert_eq!(px.len(), 64 * 64 * 2);
            assert!(px.chunks(2).all(|c| u16::from_le_bytes([c[0], c[1]]) < 4096));
        }
        checked += 1;
    }
}

#[test]
fn ekg_has_twelve_leads() {
    let pop = Population::new(5, Mix::Full);
    let mut i = 0;
    let obs = loop {
        let b = pop.patient_bundle(i);
        if let Some(o) = resources(&b).find(|r| r["code"]["coding"][0]["code"] == "11524-6") {
            break o.clone();
        }
        i += 1;
    };
    let comps = obs["component"].as_array().unwrap();
    assert_eq!(comps.len(), 12);
    for c in comps {
        let sd = &c["valueSampledData"];
        assert_eq!(sd["dimensions"], 1);
        assert_eq!(sd["period"], 4);
        let data: Vec<i64> = sd["data"].as_str().unwrap().split(' ').map(|x| x.parse().unwrap()).collect();
        assert_eq!(data.len(), 625);
        let (lo, hi) = (data.iter().min().unwrap(), data.iter().max().unwrap());
        assert!(hi - lo > 200 && hi - lo < 5000, "plausible amplitude {lo}..{hi}");
    }
}

#[test]
fn proportions() {
    let pop = Population::new(11, Mix::Full);
    let n = 2_000u64;
    let mut count: HashMap<String, f64> = HashMap::new();
    let (mut bytes, mut resources_n, mut positive, mut antigen) = (0usize, 0usize, 0, 0);
    for i in 0..n {
        let b = pop.patient_bundle(i);
        bytes += serde_json::to_string(&b).unwrap().len();
        let mut kinds = HashSet::new();
        for r in resources(&b) {
            resources_n += 1;
            let t = r["resourceType"].as_str().unwrap().to_string();
            *count.entry(t.clone()).or_default() += 1.0;
            let code = r["code"]["coding"][0]["code"].as_str().unwrap_or("");
            if code == "97097-0" {
                antigen += 1;
                positive += usize::from(r["valueCodeableConcept"]["coding"][0]["code"] == "10828004");
            }
            kinds.insert(if code == "11524-6" { "ekg".to_string() } else { t });
            if r.get("photo").is_some() {
                kinds.insert("photo".into());
            }
        }
        for k in kinds {
            *count.entry(format!("has {k}")).or_default() += 1.0;
        }
    }
    let nf = n as f64;
    let per = |k: &str| count.get(k).copied().unwrap_or(0.0) / nf;
    let enc = per("Encounter");
    eprintln!("per patient: {:.2} resources, {} bytes; {count:?}", resources_n as f64 / nf, bytes / n as usize);
    assert!((1.9..2.4).contains(&enc), "encounters {enc}");
    assert_eq!(per("Condition"), enc);
    let cbc = per("DiagnosticReport") / enc;
    assert!((0.35..0.45).contains(&cbc), "cbc {cbc}");
    let within = |k: &str, want: f64| {
        let got = per(&format!("has {k}"));
        assert!((got - want).abs() < 0.035, "{k}: {got} vs {want}");
    };
    within("ekg", 0.10);
    within("ServiceRequest", 0.15);
    within("Consent", 0.10);
    within("ImagingStudy", 0.08);
    within("photo", 0.20);
    let ag = antigen as f64 / nf;
    assert!((0.56..0.64).contains(&ag), "antigen {ag}");
    let pos = positive as f64 / antigen as f64;
    assert!((0.07..0.13).contains(&pos), "positive {pos}");
    let media_per_study = per("Media") / per("ImagingStudy");
    assert!((1.3..1.7).contains(&media_per_study), "{media_per_study}");
}
