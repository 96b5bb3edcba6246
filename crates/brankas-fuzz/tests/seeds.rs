//! Every seed (and every regression input) of every fuzz target, through the same function
//! the fuzzer calls: a crash once found stays fixed under plain `cargo test`.

use std::path::PathBuf;

#[test]
fn every_seed_of_every_target_runs_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let mut ran = 0;
    for (name, target) in brankas_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten().map(|e| e.path()).collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has seeds");
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            target(&bytes);
            ran += 1;
        }
    }
    assert!(ran >= brankas_fuzz::TARGETS.len());
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target).join(name)).unwrap()
}

/// The seeds reach past the first check of each parser: a fuzzer that starts from inputs
/// refused at the door explores little.
#[test]
fn seeds_are_accepted_inputs() {
    let s = String::from_utf8(seed("jwt", "es384-valid")).unwrap();
    let (jwks, token) = s.split_once('\n').unwrap();
    let set = brankas_auth::Jwks::parse(&serde_json::from_str(jwks).unwrap()).unwrap();
    assert!(set.verify(token).is_ok(), "the valid assertion verifies");

    let mp = seed("multipart", "one-part");
    let split = mp.iter().position(|b| *b == b'\n').unwrap();
    let ct = std::str::from_utf8(&mp[..split]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let parts = rt.block_on(brankas_api::dicomweb::multipart_parts(ct, bytes::Bytes::copy_from_slice(&mp[split + 1..]), 1 << 20)).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].0.as_deref(), Some("application/dicom"));
    assert!(brankas_dicom::parse(&parts[0].1, &brankas_dicom::Limits::default()).is_ok(), "the part is a DICOM file");

    assert!(brankas_dicom::parse(&seed("dicom", "reportsi.dcm"), &brankas_dicom::Limits::default()).is_ok());
    assert!(brankas_media::clean(brankas_media::ImageKind::Jpeg, &seed("jpeg", "Binary-f006.jpg"), &brankas_media::Limits::default()).is_ok());
    for png in ["rgb-4x3", "with-text-and-exif"] {
        let cleaned = brankas_media::clean(brankas_media::ImageKind::Png, &seed("png", png), &brankas_media::Limits::default()).unwrap();
        assert!(!cleaned.windows(7).any(|w| w == b"Lestari"), "{png}: its text chunk is gone");
    }
    for f in ["where", "union", "resolve"] {
        let s = String::from_utf8(seed("fhirpath", f)).unwrap();
        let (expr, json) = s.split_once('\n').unwrap();
        assert!(brankas_search::fuzz_fhirpath(expr, &serde_json::from_str(json).unwrap()), "{f} compiles");
    }
    for f in ["patient-nik", "observation", "chained"] {
        let s = String::from_utf8(seed("search_params", f)).unwrap();
        let (rtype, q) = s.split_once('\n').unwrap();
        let pairs: Vec<(String, String)> = q.split('&').map(|p| p.split_once('=').map(|(k, v)| (k.into(), v.into())).unwrap()).collect();
        let r = brankas_search::Query::parse(brankas_search::Registry::r4(), rtype, &pairs);
        assert!(r.is_ok(), "{f} parses: {:?}", r.err());
    }
    for f in ["Patient-example.json", "Observation-example.json", "Encounter-example.json"] {
        assert!(brankas_fhir::validate_resource(&serde_json::from_slice(&seed("fhir_json", f)).unwrap()).is_ok(), "{f} is valid");
    }
}
