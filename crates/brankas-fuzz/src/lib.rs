//! Every parser that takes outside bytes, as one function per fuzz target. The cargo-fuzz
//! crate in `fuzz/` calls these unchanged, and `tests/seeds.rs` feeds each target's seed corpus
//! (`fuzz/seeds/<target>/`) through them under `cargo test`, so a crash found by fuzzing stays
//! fixed without cargo-fuzz.
//!
//! A target returns normally on any input: refusing bad bytes with an error is the expected
//! outcome; a panic, an abort or a hang is the bug.

use serde_json::Value;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets, by name (the file names under `fuzz/fuzz_targets/` and `fuzz/seeds/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("fhir_json", fhir_json),
    ("search_params", search_params),
    ("fhirpath", fhirpath),
    ("bundle", bundle),
    ("jwt", jwt),
    ("multipart", multipart),
    ("dicom", dicom),
    ("jpeg", jpeg),
    ("png", png),
];

/// A FHIR resource as the API receives it: JSON, then validation and the reference walk.
pub fn fhir_json(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let _ = brankas_fhir::validate_resource(&v);
    brankas_fhir::for_each_reference(&v, &mut |r: &str| {
        let _ = brankas_fhir::parse_reference(r);
    });
    if v.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        let _ = brankas_fhir::patient_identity_terms(&v);
    }
}

/// A search query string: the first line names the resource type, the rest is the query.
pub fn search_params(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (rtype, query) = text.split_once('\n').unwrap_or(("Patient", &text));
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let _ = brankas_search::Query::parse(brankas_search::Registry::r4(), rtype.trim(), &pairs);
    for s in pairs.iter().map(|(_, v)| v.as_str()) {
        let _ = brankas_search::instant_range(s);
    }
}

/// A FHIRPath expression (first line) evaluated over a JSON resource (the rest).
pub fn fhirpath(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (expr, json) = text.split_once('\n').unwrap_or((&text, "{}"));
    let resource = serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
    brankas_search::fuzz_fhirpath(expr, &resource);
}

/// A Bundle: validated as a resource, then each entry's resource and request as the engine
/// reads them before any storage.
pub fn bundle(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let _ = brankas_fhir::validate_resource(&v);
    for e in v.get("entry").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = e.get("resource") {
            let _ = brankas_fhir::validate_resource(r);
        }
        if let Some(url) = e.pointer("/request/url").and_then(Value::as_str) {
            let _ = brankas_fhir::parse_reference(url);
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            let pairs: Vec<(String, String)> = query.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let _ = brankas_search::Query::parse(brankas_search::Registry::r4(), path, &pairs);
        }
    }
}

/// A JWK Set (first line) and a compact JWT (second line) checked against it: the client
/// assertion path of `private_key_jwt`.
pub fn jwt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (jwks, token) = text.split_once('\n').unwrap_or(("", &text));
    let set = serde_json::from_str::<Value>(jwks).ok().and_then(|v| brankas_auth::Jwks::parse(&v).ok()).unwrap_or_default();
    let _ = set.verify(token.trim());
}

/// A STOW-RS `multipart/related` body: the first line is the Content-Type header.
pub fn multipart(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let ct = String::from_utf8_lossy(&data[..split]).trim().to_string();
    let body = bytes::Bytes::copy_from_slice(data.get(split + 1..).unwrap_or_default());
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else { return };
    let _ = rt.block_on(brankas_api::dicomweb::multipart_parts(&ct, body, 1 << 20));
}

/// A DICOM Part 10 file.
pub fn dicom(data: &[u8]) {
    let limits = brankas_dicom::Limits { max_bytes: 1 << 20, ..Default::default() };
    if let Ok(p) = brankas_dicom::parse(data, &limits) {
        let _ = p.metadata_json("https://example.org/bulk");
    }
}

fn media_limits() -> brankas_media::Limits {
    brankas_media::Limits { max_pixels: 4_000_000, ..Default::default() }
}

/// A JPEG photo cleaned of its metadata.
pub fn jpeg(data: &[u8]) {
    let _ = brankas_media::orientation(brankas_media::ImageKind::Jpeg, data);
    let _ = brankas_media::clean(brankas_media::ImageKind::Jpeg, data, &media_limits());
}

/// A PNG image cleaned of its metadata.
pub fn png(data: &[u8]) {
    let _ = brankas_media::orientation(brankas_media::ImageKind::Png, data);
    let _ = brankas_media::clean(brankas_media::ImageKind::Png, data, &media_limits());
}
