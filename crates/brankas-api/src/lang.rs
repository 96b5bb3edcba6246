//! Error answers in Indonesian when the client asks for it (`Accept-Language: id`).
//! The failed entries of a batch (answered 200 as a whole) are localized the same way, by
//! the Bundle handler with [`localize_outcome`].
//!
//! A response layer: an error answer (status 400 and above) that is an `OperationOutcome`
//! gets, in each issue, `details.text` in Indonesian saying what kind of error it is (from the
//! issue's code, for every error), and its `diagnostics` in Indonesian where the English text
//! is one of the server's known messages ([`TEMPLATES`]; the parts they carry, such as element
//! names, stay as they are). Otherwise the English diagnostics stay. The answer says
//! `Content-Language: id`. Messages never carry patient data (each error is built so), so
//! nothing is echoed here either: the translation only moves the server's own words.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

/// Largest error body rewritten (larger ones pass as they are).
const MAX_BODY: usize = 256 * 1024;

/// Whether the client prefers Indonesian over English (RFC 9110 `Accept-Language`, q-values).
pub fn wants_indonesian(h: &HeaderMap) -> bool {
    let Some(v) = h.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()) else { return false };
    let mut best: Option<(f32, bool)> = None;
    for item in v.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).unwrap_or(1.0);
        let id = tag == "id" || tag.starts_with("id-") || tag == "in";
        if !(id || tag == "en" || tag.starts_with("en-")) || q <= 0.0 {
            continue;
        }
        if best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, id));
        }
    }
    best.is_some_and(|(_, id)| id)
}

/// The kind of error, by OperationOutcome issue code.
fn category(code: &str) -> &'static str {
    match code {
        "not-found" => "Sumber daya tidak ditemukan.",
        "deleted" => "Sumber daya ini telah dihapus.",
        "forbidden" | "security" => "Akses ditolak: klien ini tidak berhak atas data ini.",
        "login" | "unknown" => "Autentikasi diperlukan: kirim token akses (Bearer) yang sah.",
        "expired" => "Token akses telah kedaluwarsa; minta token baru.",
        "invalid" => "Permintaan atau sumber daya tidak valid.",
        "structure" => "Struktur sumber daya tidak sesuai dengan FHIR R4.",
        "required" => "Elemen wajib tidak ada.",
        "value" => "Nilai tidak valid.",
        "not-supported" => "Tidak didukung oleh server ini.",
        "too-costly" => "Permintaan terlalu besar atau terlalu berat untuk dilayani.",
        "throttled" => "Terlalu banyak permintaan; coba lagi setelah waktu yang disebutkan Retry-After.",
        "conflict" => "Bertentangan dengan keadaan sumber daya saat ini.",
        "duplicate" => "Data ini sudah ada.",
        "processing" => "Permintaan tidak dapat diproses.",
        "business-rule" => "Aturan bisnis dilanggar.",
        "transient" => "Layanan untuk sementara tidak tersedia; coba lagi.",
        "exception" => "Terjadi kesalahan di server.",
        "informational" => "Informasi.",
        _ => "Permintaan tidak dapat dipenuhi.",
    }
}

/// Known English messages (`{}` a part carried over) and their Indonesian; the first that
/// fits a message is used, so general forms come after the particular ones.
const TEMPLATES: &[(&str, &str)] = &[
    ("resource not found", "sumber daya tidak ditemukan"),
    ("resource was deleted", "sumber daya telah dihapus"),
    ("method not allowed on this URL", "metode ini tidak diizinkan pada URL ini"),
    ("a valid bearer access token is required", "diperlukan token akses Bearer yang sah"),
    ("the access token expired; request a new one", "token akses telah kedaluwarsa; minta token baru"),
    ("request rate above {} per second for this client", "laju permintaan melebihi {} per detik untuk klien ini"),
    ("the resource does not conform to FHIR R4", "sumber daya tidak sesuai dengan FHIR R4"),
    ("{} is required (minimum cardinality {})", "{} wajib diisi (kardinalitas minimum {})"),
    ("{} takes one value, of one type; {} were given", "{} hanya menerima satu nilai dengan satu tipe; diberikan {}"),
    ("the code is not in the required ValueSet {}", "kode tidak termasuk dalam ValueSet wajib {}"),
    ("missing required element '{}'", "elemen wajib '{}' tidak ada"),
    ("unknown element '{}'", "elemen '{}' tidak dikenal"),
    (
        "a reference is Type/id (optionally /_history/version), an absolute URL, #contained-id, or urn:uuid:/urn:oid:",
        "referensi harus berbentuk Tipe/id (boleh dengan /_history/versi), URL absolut, #id-contained, atau urn:uuid:/urn:oid:",
    ),
    ("invalid national identity number (NIK): NIK must be exactly 16 digits long", "NIK tidak valid: NIK harus tepat 16 digit"),
    ("invalid national identity number (NIK): NIK must contain only digits", "NIK tidak valid: NIK hanya boleh berisi angka"),
    (
        "invalid national identity number (NIK): NIK region code (province, regency or district) is not valid",
        "NIK tidak valid: kode wilayah (provinsi, kabupaten/kota atau kecamatan) tidak valid",
    ),
    ("invalid national identity number (NIK): NIK birth date part is not a valid date", "NIK tidak valid: bagian tanggal lahir bukan tanggal yang sah"),
    ("invalid national identity number (NIK): NIK serial number is not valid", "NIK tidak valid: nomor urut tidak valid"),
    (
        "a Patient with this NIK already exists: {}; update that Patient instead of creating another",
        "Pasien dengan NIK ini sudah ada: {}; perbarui Pasien tersebut, jangan membuat yang baru",
    ),
    ("version conflict: the resource was changed concurrently", "konflik versi: sumber daya diubah pada saat yang sama oleh permintaan lain"),
    ("precondition failed: {}", "prasyarat tidak terpenuhi: {}"),
    (
        "search not supported: Patient searches must be an exact identity lookup: identifier=system|value, telecom (phone), or name with birthdate (and optionally gender); listing or fuzzy-searching patients is not permitted",
        "pencarian tidak didukung: pencarian Pasien harus berupa pencocokan identitas yang tepat: identifier=system|value, telecom (telepon), atau name dengan birthdate (dan boleh gender); menampilkan daftar atau mencari pasien secara kabur tidak diizinkan",
    ),
    (
        "search not supported: searching {} across patients is not permitted: give exactly one patient (patient=Patient/<id> or subject=Patient/<id>)",
        "pencarian tidak didukung: mencari {} lintas pasien tidak diizinkan: sebutkan tepat satu pasien (patient=Patient/<id> atau subject=Patient/<id>)",
    ),
    ("search not supported: unknown search parameter '{}' for {}", "pencarian tidak didukung: parameter pencarian '{}' tidak dikenal untuk {}"),
    ("search not supported: search parameter `{}` is not supported", "pencarian tidak didukung: parameter pencarian `{}` tidak didukung"),
    ("search not supported: invalid value for search parameter `{}`", "pencarian tidak didukung: nilai tidak valid untuk parameter pencarian `{}`"),
    ("forbidden: a patient client reaches its own patient's record only", "akses ditolak: klien pasien hanya dapat menjangkau rekam medis pasiennya sendiri"),
    ("forbidden: this record carries a sensitive label your client holds no grant for", "akses ditolak: rekam ini berlabel sensitif dan klien Anda tidak memiliki izin untuknya"),
    ("forbidden: the patient's consent does not allow your organization this record", "akses ditolak: persetujuan pasien tidak mengizinkan organisasi Anda mengakses rekam ini"),
    ("the audit log cannot be written; nothing was stored", "log audit tidak dapat ditulis; tidak ada yang disimpan"),
    ("storage unavailable", "penyimpanan tidak tersedia"),
    ("query string too long", "query string terlalu panjang"),
    ("invalid or expired paging link", "tautan halaman tidak valid atau sudah kedaluwarsa"),
    ("{} may be given once", "{} hanya boleh diberikan sekali"),
    ("_count must be a positive whole number", "_count harus bilangan bulat positif"),
    ("{} must be a FHIR date, dateTime or instant", "{} harus berupa date, dateTime atau instant FHIR"),
    ("patient must be a Patient id (or Patient/<id>)", "patient harus berupa id Pasien (atau Patient/<id>)"),
    (
        "search not supported: the history of {} is kept per patient, never across patients: name one patient with patient=<id> (or read Patient/<id>/_history for the Patient alone)",
        "pencarian tidak didukung: riwayat {} disimpan per pasien, tidak pernah lintas pasien: sebutkan satu pasien dengan patient=<id> (atau baca Patient/<id>/_history untuk Pasien itu saja)",
    ),
    (
        "search not supported: system history is kept per patient, never across patients: name one patient with patient=<id> (or read Patient/<id>/_history for the Patient alone)",
        "pencarian tidak didukung: riwayat sistem disimpan per pasien, tidak pernah lintas pasien: sebutkan satu pasien dengan patient=<id> (atau baca Patient/<id>/_history untuk Pasien itu saja)",
    ),
    (
        "{} is not in the Patient compartment: its history is the directory's, without patient",
        "{} tidak termasuk kompartemen Pasien: riwayatnya adalah riwayat direktori, tanpa patient",
    ),
    ("JSON Patch operation {} was not applied: its path does not exist; nothing was changed", "operasi JSON Patch {} tidak diterapkan: path-nya tidak ada; tidak ada yang diubah"),
    ("JSON Patch operation {} was not applied: its test failed; nothing was changed", "operasi JSON Patch {} tidak diterapkan: test-nya gagal; tidak ada yang diubah"),
    ("a patch may not change the resource's type or id", "patch tidak boleh mengubah tipe atau id sumber daya"),
    (
        "part of this resource is hidden from this client; it cannot be patched (update it whole)",
        "sebagian sumber daya ini tersembunyi bagi klien ini; sumber daya ini tidak dapat di-patch (perbarui secara utuh)",
    ),
    ("$meta-add and $meta-delete take exactly one parameter 'meta' (valueMeta)", "$meta-add dan $meta-delete menerima tepat satu parameter 'meta' (valueMeta)"),
    ("$meta-add and $meta-delete change a resource's profile, security and tag only", "$meta-add dan $meta-delete hanya mengubah profile, security dan tag sumber daya"),
    ("frames are numbers from 1, separated by commas", "nomor frame dimulai dari 1, dipisahkan koma"),
    ("between 1 and 1000 frames per request", "antara 1 dan 1000 frame per permintaan"),
    (
        "pixel data in this transfer syntax (JPEG 2000, JPEG-LS or lossless JPEG) is served as stored only: ask for frames with transfer-syntax=*, or retrieve the instance",
        "data piksel dalam transfer syntax ini (JPEG 2000, JPEG-LS atau JPEG lossless) hanya dilayani apa adanya: minta frame dengan transfer-syntax=*, atau ambil instance-nya",
    ),
    (
        "this request is not supported inside a Bundle: reads, version reads, histories, searches and $everything are",
        "permintaan ini tidak didukung di dalam Bundle: yang didukung adalah baca, baca versi, riwayat, pencarian dan $everything",
    ),
    // The general forms last: the first template that fits is used.
    ("search not supported: {}", "pencarian tidak didukung: {}"),
    ("forbidden: {}", "akses ditolak: {}"),
];

/// The Indonesian of one of the server's messages, if it is a known one.
pub fn translate(msg: &str) -> Option<String> {
    TEMPLATES.iter().find_map(|(en, id)| {
        let parts = matches(en, msg)?;
        let mut out = String::new();
        let mut it = parts.into_iter();
        for (i, piece) in id.split("{}").enumerate() {
            if i > 0 {
                out.push_str(it.next().unwrap_or_default());
            }
            out.push_str(piece);
        }
        Some(out)
    })
}

/// The parts `{}` stands for, if `msg` fits `pattern`.
fn matches<'a>(pattern: &str, msg: &'a str) -> Option<Vec<&'a str>> {
    let pieces: Vec<&str> = pattern.split("{}").collect();
    let mut rest = msg.strip_prefix(pieces[0])?;
    let mut caps = Vec::new();
    for (i, piece) in pieces.iter().enumerate().skip(1) {
        if i == pieces.len() - 1 {
            let cap = rest.strip_suffix(piece)?;
            caps.push(cap);
            rest = "";
        } else {
            let at = rest.find(piece).filter(|_| !piece.is_empty())?;
            caps.push(&rest[..at]);
            rest = &rest[at + piece.len()..];
        }
    }
    (rest.is_empty() && caps.iter().all(|c| !c.is_empty())).then_some(caps)
}

/// Rewrites an OperationOutcome in Indonesian (see the module documentation).
pub fn localize_outcome(v: &mut Value) {
    let Some(issues) = v.get_mut("issue").and_then(Value::as_array_mut) else { return };
    for issue in issues {
        let code = issue.get("code").and_then(Value::as_str).unwrap_or_default().to_string();
        if let Some(id) = issue.get("diagnostics").and_then(Value::as_str).and_then(translate) {
            issue["diagnostics"] = json!(id);
        }
        issue["details"] = json!({"text": category(&code)});
    }
}

/// The response layer.
pub async fn localize(req: Request, next: Next) -> Response {
    let indonesian = wants_indonesian(req.headers());
    let resp = next.run(req).await;
    if !indonesian || resp.status().as_u16() < 400 {
        return resp;
    }
    let fhir =
        resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/fhir+json") || ct.starts_with("application/json"));
    // Only whole bodies of known, small size (every error answer is): anything else passes.
    let small = {
        use axum::body::HttpBody as _;
        resp.body().size_hint().exact().is_some_and(|n| n <= MAX_BODY as u64)
    };
    if !fhir || !small {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if v.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return Response::from_parts(parts, Body::from(bytes));
    }
    localize_outcome(&mut v);
    let out = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("id"));
    Response::from_parts(parts, Body::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_is_read_with_its_weights() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_str(v).unwrap());
            wants_indonesian(&m)
        };
        assert!(h("id"));
        assert!(h("id-ID,id;q=0.9,en-US;q=0.8"));
        assert!(h("en;q=0.5, id;q=0.8"));
        assert!(!h("en-US,en;q=0.9,id;q=0.8"));
        assert!(!h("fr, de"));
        assert!(!h("id;q=0"));
        assert!(!wants_indonesian(&HeaderMap::new()));
    }

    #[test]
    fn no_template_is_hidden_by_an_earlier_one() {
        for (en, id) in TEMPLATES {
            let msg = en.replace("{}", "Xy");
            assert_eq!(translate(&msg), Some(id.replace("{}", "Xy")), "{en}");
        }
    }

    #[test]
    fn known_messages_are_translated_with_their_parts() {
        assert_eq!(translate("resource not found").as_deref(), Some("sumber daya tidak ditemukan"));
        assert_eq!(translate("status is required (minimum cardinality 1)").as_deref(), Some("status wajib diisi (kardinalitas minimum 1)"));
        assert_eq!(translate("request rate above 200 per second for this client").as_deref(), Some("laju permintaan melebihi 200 per detik untuk klien ini"));
        assert_eq!(
            translate("search not supported: searching Observation across patients is not permitted: give exactly one patient (patient=Patient/<id> or subject=Patient/<id>)")
                .as_deref(),
            Some("pencarian tidak didukung: mencari Observation lintas pasien tidak diizinkan: sebutkan tepat satu pasien (patient=Patient/<id> atau subject=Patient/<id>)")
        );
        assert_eq!(translate("something else entirely"), None);
        let mut o = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found", "diagnostics": "resource not found"}, {"severity": "error", "code": "value", "diagnostics": "an unknown message"}]});
        localize_outcome(&mut o);
        assert_eq!(o["issue"][0]["diagnostics"], "sumber daya tidak ditemukan");
        assert_eq!(o["issue"][0]["details"]["text"], "Sumber daya tidak ditemukan.");
        assert_eq!(o["issue"][1]["diagnostics"], "an unknown message", "unknown messages stay in English");
        assert_eq!(o["issue"][1]["details"]["text"], "Nilai tidak valid.");
    }
}
