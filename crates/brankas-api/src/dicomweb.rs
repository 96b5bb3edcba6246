//! DICOMweb (PS3.18), the subset imaging systems use, under `/dicomweb`:
//!
//! - STOW-RS `POST /dicomweb/studies[/{study}]`: `multipart/related; type="application/dicom"`,
//!   each part one Part 10 instance (at most [`MAX_INSTANCE`] bytes, parsed whole: broken or
//!   truncated files are refused and nothing of them is stored). An instance goes to the
//!   patient named by `?patient=Patient/<id>`, or else to the one patient whose NIK, IHS
//!   number, identifier in the IssuerOfPatientID system (a URI) or in the sending facility's
//!   registered record-number system equals its PatientID; an unknown or ambiguous patient is
//!   refused, never guessed.
//! - WADO-RS `GET /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]`: the instances
//!   as stored (`multipart/related; type="application/dicom"`, streamed segment by segment),
//!   `.../metadata` as DICOM JSON, and for viewers `frames/{n,…}` (native samples, or a
//!   compressed frame's bitstream as stored when asked with `transfer-syntax=*`), `rendered`
//!   (JPEG or PNG) and `thumbnail` (uncompressed, RLE and 8-bit JPEG instances).
//! - QIDO-RS `GET /dicomweb/studies`, `/series`, `/instances`, and within a study or series:
//!   searches within one patient (`PatientID=` matched as NIK or IHS number, or `patient=`),
//!   or of one study (`StudyInstanceUID=`).
//!
//! Every request is authorised (ImagingStudy and Binary scopes, the patient's access rules),
//! audited with the patients it touched, and counted by the guard, like FHIR requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use brankas_auth::Principal;
use brankas_dicom::qido::{self, InstanceRow, Level, SeriesRow, StudyRow};
use brankas_engine::{Admitted, BlobReader, EngineError, SearchRequest, Stored};
use serde_json::{Value, json};

use crate::AppState;
use crate::audit::{self, ReqCtx, What};
use crate::handlers::blocking;
use crate::outcome::ApiError;

type St = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// Largest DICOM instance accepted by STOW-RS (each is parsed whole, in memory).
pub const MAX_INSTANCE: u64 = 512 << 20;
/// Most instances in one STOW-RS request.
const MAX_PARTS: usize = 10_000;
const IDLE: Duration = Duration::from_secs(60);
const DICOM_JSON: &str = "application/dicom+json";
/// Stands for the server's base URL inside stored metadata (bulk data references).
const BASE: &str = "{{brankas-base}}";

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dicomweb/studies", get(qido_studies).post(stow))
        .route("/dicomweb/series", get(qido_series_all))
        .route("/dicomweb/instances", get(qido_instances_all))
        .route("/dicomweb/studies/{study}", get(wado_study).post(stow_into))
        .route("/dicomweb/studies/{study}/metadata", get(meta_study))
        .route("/dicomweb/studies/{study}/series", get(qido_series_of_study))
        .route("/dicomweb/studies/{study}/instances", get(qido_instances_of_study))
        .route("/dicomweb/studies/{study}/series/{series}", get(wado_series))
        .route("/dicomweb/studies/{study}/series/{series}/metadata", get(meta_series))
        .route("/dicomweb/studies/{study}/series/{series}/instances", get(qido_instances_of_series))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}", get(wado_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata", get(meta_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered", get(rendered_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}/thumbnail", get(thumbnail_instance))
        .route("/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", get(frames_instance))
}

fn root(st: &AppState) -> String {
    st.base_url.trim_end_matches("/fhir").to_string() + "/dicomweb"
}

fn dicom_json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
    r
}

fn pairs_of(st: &AppState, q: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = q.unwrap_or("");
    if raw.len() > st.limits.max_query_bytes {
        return Err(ApiError::new(StatusCode::URI_TOO_LONG, "too-costly", "query string too long"));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    if pairs.iter().any(|(k, v)| format!("{k}{v}").chars().any(|c| c == '\u{FFFD}' || c.is_control())) {
        return Err(ApiError::bad_request("query string is not valid UTF-8 or contains control characters"));
    }
    Ok(pairs)
}

fn uid_ok(u: &str) -> Result<(), ApiError> {
    if brankas_dicom::is_valid_uid(u) { Ok(()) } else { Err(ApiError::bad_request("not a DICOM UID")) }
}

// ----- patients -----

/// The patient a DICOM PatientID names: the one Patient that holds it as its NIK, its IHS
/// number, an identifier in the system IssuerOfPatientID names (when that is a URI), or an
/// identifier in the sending facility's registered record-number system (its MRN). Found
/// through the identity lookup (a disclosure, and the caller's own rules); none or more than
/// one is refused, never guessed.
fn patient_by_dicom_id(engine: &brankas_engine::Engine, who: &Principal, pid: &str, issuer: Option<&str>) -> Result<Admitted<Stored>, EngineError> {
    let mut acc = Admitted::nothing(());
    let mut found: Vec<Stored> = Vec::new();
    let issuer = issuer.map(str::trim).filter(|i| (i.contains("://") || i.starts_with("urn:")) && !i.contains('|'));
    let mut systems = vec![brankas_fhir::NIK_SYSTEM, brankas_fhir::IHS_SYSTEM];
    systems.extend(issuer);
    systems.extend(who.record_number_system());
    systems.dedup();
    for system in systems {
        let req = SearchRequest { resource_type: "Patient".into(), pairs: vec![("identifier".into(), format!("{system}|{pid}"))], compartment: None, offset: 0, strict: true };
        for s in acc.take(engine.search(who, &req)?).resources {
            if !found.iter().any(|f| f.resource.get("id") == s.resource.get("id")) {
                found.push(s);
            }
        }
    }
    match found.len() {
        1 => Ok(acc.map(|()| found.remove(0))),
        0 => Err(EngineError::Unprocessable(
            "no patient has this PatientID as NIK, IHS number, in the IssuerOfPatientID system or in the facility's record-number system; name the patient with ?patient=Patient/<id>".into(),
        )),
        _ => Err(EngineError::Unprocessable("more than one patient matches this PatientID; name the patient with ?patient=Patient/<id>".into())),
    }
}

fn patient_hint(pairs: &[(String, String)]) -> Result<Option<String>, ApiError> {
    match pairs.iter().find(|(k, _)| k == "patient") {
        None => Ok(None),
        Some((_, v)) => {
            let id = v.strip_prefix("Patient/").unwrap_or(v);
            if brankas_fhir::is_valid_id(id) { Ok(Some(id.to_string())) } else { Err(ApiError::bad_request("patient must be Patient/<id>")) }
        }
    }
}

// ----- STOW-RS -----

async fn stow(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, clock: crate::handlers::Clock, RawQuery(q): RawQuery, headers: HeaderMap, body: Body) -> ApiResult {
    crate::handlers::streaming(&clock);
    stow_req(st, who, ctx, None, q, headers, body).await
}

#[allow(clippy::too_many_arguments)] // axum extractors
async fn stow_into(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    clock: crate::handlers::Clock,
    Path(study): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    crate::handlers::streaming(&clock);
    uid_ok(&study)?;
    stow_req(st, who, ctx, Some(study), q, headers, body).await
}

/// `multipart/related; type="application/dicom"; boundary=...` → the boundary.
fn boundary(headers: &HeaderMap) -> Result<String, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "multipart/related" {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", "STOW-RS takes multipart/related; type=\"application/dicom\""));
    }
    let mut boundary = None;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else { continue };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "type" if !v.eq_ignore_ascii_case("application/dicom") => {
                return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", "only application/dicom parts are accepted (not DICOM JSON or XML with bulk data)"));
            }
            "boundary" if (1..=70).contains(&v.len()) => boundary = Some(v.to_string()),
            _ => {}
        }
    }
    boundary.ok_or_else(|| ApiError::bad_request("multipart/related without a boundary"))
}

/// A STOW request's patient: named by the caller, or found by PatientID (a disclosure).
enum AdmittedOr {
    Hint(String),
    Found(Admitted<String>),
}

/// What happened to one part.
struct PartResult {
    sop_class: String,
    sop_instance: String,
    /// `None`: stored; else a DICOM failure reason (PS3.4 C.4.2.1.4 / PS3.18 Table I.2-2).
    failure: Option<u16>,
    retrieve: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn stow_req(st: Arc<AppState>, who: Principal, ctx: ReqCtx, study: Option<String>, q: Option<String>, headers: HeaderMap, body: Body) -> ApiResult {
    let what = What::new("dicom-store", "C", Some("ImagingStudy".into()));
    let out = stow_inner(&st, &who, study, q, &headers, body).await;
    let results = audit::finish(&st, &who, &ctx, what, out).await?;
    let stored = results.iter().filter(|r| r.failure.is_none()).count();
    let base = root(&st);
    let mut body = serde_json::Map::new();
    let refd: Vec<Value> = results
        .iter()
        .filter(|r| r.failure.is_none())
        .map(|r| {
            let mut item = json!({
                "00081150": {"vr": "UI", "Value": [r.sop_class]},
                "00081155": {"vr": "UI", "Value": [r.sop_instance]},
            });
            if let Some(u) = &r.retrieve {
                item["00081190"] = json!({"vr": "UR", "Value": [format!("{base}{u}")]});
            }
            item
        })
        .collect();
    let failed: Vec<Value> = results
        .iter()
        .filter_map(|r| {
            let f = r.failure?;
            let mut item = json!({"00081197": {"vr": "US", "Value": [f]}});
            if !r.sop_class.is_empty() {
                item["00081150"] = json!({"vr": "UI", "Value": [r.sop_class]});
            }
            if !r.sop_instance.is_empty() {
                item["00081155"] = json!({"vr": "UI", "Value": [r.sop_instance]});
            }
            Some(item)
        })
        .collect();
    if !refd.is_empty() {
        body.insert("00081199".into(), json!({"vr": "SQ", "Value": refd}));
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    let status = if failed.is_empty() {
        StatusCode::OK
    } else if stored > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CONFLICT
    };
    Ok(dicom_json(status, &Value::Object(body)))
}

/// Reads, parses and stores every part; returns each part's result and the resources written.
async fn stow_inner(st: &Arc<AppState>, who: &Principal, study: Option<String>, q: Option<String>, headers: &HeaderMap, body: Body) -> Result<Admitted<Vec<PartResult>>, ApiError> {
    let pairs = pairs_of(st, q.as_deref())?;
    let hint = patient_hint(&pairs)?;
    let boundary = boundary(headers)?;
    let max = MAX_INSTANCE.min(st.engine.attachment_limits().max_bytes);
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(max));
    let mut mp = multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut results = Vec::new();
    // What the request discloses: the patients found by PatientID, the instances and studies written.
    let mut acc = Admitted::nothing(());
    // Patient per PatientID (or the hint), and instances stored per patient, for the studies.
    let mut patients: HashMap<String, Result<String, u16>> = HashMap::new();
    let mut linked: BTreeMap<String, Vec<(String, brankas_dicom::Instance)>> = BTreeMap::new();
    // (patient, study UID) pairs checked: the study is new or the patient's own.
    let mut known: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    loop {
        let field = match tokio::time::timeout(IDLE, mp.next_field()).await {
            Err(_) => return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the upload stalled")),
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(multipart_error(e, max)),
        };
        if results.len() >= MAX_PARTS {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", format!("at most {MAX_PARTS} instances per request")));
        }
        if let Some(ct) = field.content_type()
            && !ct.essence_str().eq_ignore_ascii_case("application/dicom")
        {
            results.push(PartResult { sop_class: String::new(), sop_instance: String::new(), failure: Some(0xC000), retrieve: None });
            continue;
        }
        let mut field = field;
        let mut bytes: Vec<u8> = Vec::new();
        // The instance is parsed whole: its bytes count against the process's in-memory bound.
        let mut held = crate::inmem::Held::default();
        loop {
            match tokio::time::timeout(IDLE, field.chunk()).await {
                Err(_) => return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the upload stalled")),
                Ok(Ok(Some(c))) => {
                    held.grow(c.len()).await?;
                    bytes.extend_from_slice(&c);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(multipart_error(e, max)),
            }
        }
        let parsed = tokio::task::spawn_blocking(move || {
            let r = brankas_dicom::parse(&bytes, &brankas_dicom::Limits::default());
            (r, bytes)
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?;
        let (parsed, bytes) = parsed;
        let Ok(parsed) = parsed else {
            results.push(PartResult { sop_class: String::new(), sop_instance: String::new(), failure: Some(0xC000), retrieve: None });
            continue;
        };
        let inst = parsed.instance.clone();
        let mut res = PartResult { sop_class: inst.sop_class_uid.clone(), sop_instance: inst.sop_instance_uid.clone(), failure: None, retrieve: None };
        if study.as_ref().is_some_and(|s| *s != inst.study_uid) {
            res.failure = Some(0xA900);
            results.push(res);
            continue;
        }
        // Which patient.
        let issuer = inst.issuer_of_patient_id.clone();
        let key =
            hint.clone().map(|h| format!("hint:{h}")).unwrap_or_else(|| format!("id:{}|{}", issuer.as_deref().unwrap_or_default(), inst.patient_id.clone().unwrap_or_default()));
        if !patients.contains_key(&key) {
            let engine = st.engine.clone();
            let (w, h, dicom_id) = (who.clone(), hint.clone(), inst.patient_id.clone().unwrap_or_default());
            let r = tokio::task::spawn_blocking(move || match h {
                Some(h) => Ok(AdmittedOr::Hint(h)),
                None if dicom_id.trim().is_empty() => Err(EngineError::Unprocessable("no PatientID".into())),
                None => patient_by_dicom_id(&engine, &w, dicom_id.trim(), issuer.as_deref())
                    .map(|p| AdmittedOr::Found(p.map(|p| p.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string()))),
            })
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?;
            let r = match r {
                Ok(AdmittedOr::Hint(h)) => Ok(h),
                Ok(AdmittedOr::Found(a)) => Ok(acc.take(a)),
                Err(e) => Err(failure_of(&e)),
            };
            patients.insert(key.clone(), r);
        }
        let pid = match &patients[&key] {
            Ok(p) => p.clone(),
            Err(code) => {
                res.failure = Some(*code);
                results.push(res);
                continue;
            }
        };
        // A study of another patient is refused here. An instance sent again replaces the
        // stored one in its study (its earlier Binary stays, as stored).
        let sk = (pid.clone(), inst.study_uid.clone());
        if !known.contains(&sk) {
            let engine = st.engine.clone();
            let (p, u) = sk.clone();
            match blocking(move || engine.check_study_patient(&p, &u)).await {
                Ok(()) => {
                    known.insert(sk);
                }
                Err(_) => {
                    res.failure = Some(0x0110);
                    results.push(res);
                    continue;
                }
            }
        }
        let retrieve = format!("/studies/{}/series/{}/instances/{}", inst.study_uid, inst.series_uid, inst.sop_instance_uid);
        res.retrieve = Some(retrieve.clone());
        let engine = st.engine.clone();
        let w = who.clone();
        let (p, i) = (pid.clone(), inst.clone());
        let metadata = parsed.metadata_json(&format!("{BASE}{retrieve}"));
        let stored = tokio::task::spawn_blocking(move || {
            let target = engine.binary_target(&w, &p, None, 'c')?;
            engine.store_instance(&w, &target, &bytes, &i, &metadata)
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?;
        match stored {
            Ok(s) => {
                let s = acc.take(s);
                linked.entry(pid.clone()).or_default().push((s.binary_id, inst.clone()));
                results.push(res);
            }
            Err(e) => {
                res.failure = Some(failure_of(&e));
                res.retrieve = None;
                results.push(res);
            }
        }
    }
    if results.is_empty() {
        return Err(ApiError::bad_request("the request holds no instances"));
    }
    for (pid, items) in linked {
        let engine = st.engine.clone();
        let w = who.clone();
        let studies = blocking(move || engine.link_instances(&w, &pid, &items)).await?;
        acc.take(studies);
    }
    Ok(acc.map(|()| results))
}

fn failure_of(e: &EngineError) -> u16 {
    match e {
        EngineError::Forbidden(_) => 0x0124,
        EngineError::TooLarge(_) => 0xA700,
        _ => 0x0110,
    }
}

/// The parts of a STOW-RS body as [`stow`] reads them (the same Content-Type rule, boundary
/// and per-part limit), each with its content type, without storing anything. For the
/// fuzzer (`brankas-fuzz`) and its regression tests.
#[doc(hidden)]
pub async fn multipart_parts(content_type: &str, body: bytes::Bytes, max: u64) -> Result<Vec<(Option<String>, Vec<u8>)>, String> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_str(content_type).map_err(|e| e.to_string())?);
    let boundary = boundary(&headers).map_err(|e| e.message)?;
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(max));
    let stream = futures_once(body);
    let mut mp = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut out = Vec::new();
    while let Some(mut field) = mp.next_field().await.map_err(|e| multipart_error(e, max).message)? {
        let ct = field.content_type().map(|m| m.essence_str().to_string());
        let mut bytes = Vec::new();
        while let Some(c) = field.chunk().await.map_err(|e| multipart_error(e, max).message)? {
            bytes.extend_from_slice(&c);
        }
        out.push((ct, bytes));
        if out.len() > MAX_PARTS {
            return Err("too many parts".into());
        }
    }
    Ok(out)
}

/// A body of one chunk, as a stream.
fn futures_once(b: bytes::Bytes) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    futures_util::stream::once(async move { Ok(b) })
}

fn multipart_error(e: multer::Error, max: u64) -> ApiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", format!("a DICOM instance exceeds the limit of {max} bytes"))
        }
        _ => ApiError::bad_request("malformed multipart/related body"),
    }
}

// ----- WADO-RS -----

/// The study, with the instances asked for (all, a series', or one).
async fn instances(st: &Arc<AppState>, who: &Principal, study: &str, series: Option<&str>, sop: Option<&str>) -> Result<Admitted<(Stored, Vec<Stored>)>, ApiError> {
    uid_ok(study)?;
    for u in series.iter().chain(sop.iter()) {
        uid_ok(u)?;
    }
    let engine = st.engine.clone();
    let (w, study, series, sop) = (who.clone(), study.to_string(), series.map(String::from), sop.map(String::from));
    let found =
        blocking(move || engine.study_by_uid(&w, &study)?.and_then(|s| engine.study_instances(&w, &s, series.as_deref(), sop.as_deref()).map(|l| l.map(|l| (s, l))))).await?;
    if found.unreleased().1.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(found)
}

fn accepts_multipart_dicom(headers: &HeaderMap) -> bool {
    let a = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("*/*").to_ascii_lowercase();
    a.split(',').any(|m| {
        let m = m.trim();
        m.starts_with("*/*") || m.starts_with("multipart/related") || m.starts_with("multipart/*") || m.starts_with("application/dicom;") || m == "application/dicom"
    })
}

async fn wado(st: Arc<AppState>, who: Principal, ctx: ReqCtx, headers: HeaderMap, study: String, series: Option<String>, sop: Option<String>) -> ApiResult {
    let what = What::new("dicom-retrieve", "R", Some("ImagingStudy".into()));
    let r = async {
        if !accepts_multipart_dicom(&headers) {
            return Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", "instances are served as multipart/related; type=\"application/dicom\""));
        }
        instances(&st, &who, &study, series.as_deref(), sop.as_deref()).await
    }
    .await;
    let (_, list) = audit::finish(&st, &who, &ctx, what, r).await?;
    let engine = st.engine.clone();
    let readers: Vec<Arc<BlobReader>> = blocking(move || {
        let mut out = Vec::with_capacity(list.len());
        for b in &list {
            if let Some(r) = engine.binary_reader(b)? {
                out.push(Arc::new(r));
            }
        }
        Ok(out)
    })
    .await?;
    let boundary = new_boundary()?;
    let len: u64 = readers.iter().map(|r| r.size() + part_head(&boundary).len() as u64 + 2).sum::<u64>() + boundary.len() as u64 + 6;
    let stream = multipart_stream(readers, boundary.clone());
    let mut r = (StatusCode::OK, Body::from_stream(stream)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/related; type=\"application/dicom\"; boundary={boundary}")) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

/// A fresh multipart boundary: 96 random bits, hex.
fn new_boundary() -> Result<String, ApiError> {
    let mut nonce = [0u8; 12];
    brankas_vault::random_bytes(&mut nonce).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?;
    Ok(nonce.iter().map(|b| format!("{b:02x}")).collect())
}

fn part_head(boundary: &str) -> String {
    format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n")
}

/// The instances one after another as multipart parts, each streamed segment by segment.
fn multipart_stream(readers: Vec<Arc<BlobReader>>, boundary: String) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    // State: which instance, where in it (None: its part header is next), done.
    let state = (readers, 0usize, None::<u64>, boundary, false);
    futures_util::stream::unfold(state, |(readers, i, pos, boundary, done)| async move {
        if done {
            return None;
        }
        if i >= readers.len() {
            return Some((Ok(Bytes::from(format!("--{boundary}--\r\n"))), (readers, i, None, boundary, true)));
        }
        match pos {
            None => Some((Ok(Bytes::from(part_head(&boundary))), (readers, i, Some(0), boundary, false))),
            Some(p) if p >= readers[i].size() => Some((Ok(Bytes::from_static(b"\r\n")), (readers, i + 1, None, boundary, false))),
            Some(p) => {
                let r = readers[i].clone();
                match tokio::task::spawn_blocking(move || r.read_span(p, 1 << 20)).await {
                    Ok(Ok(chunk)) if !chunk.is_empty() => {
                        let n = chunk.len() as u64;
                        Some((Ok(Bytes::copy_from_slice(&chunk)), (readers, i, Some(p + n), boundary, false)))
                    }
                    _ => {
                        tracing::error!("integrity failure while streaming a DICOM instance; the response was cut off");
                        Some((Err(std::io::Error::other("integrity")), (readers, i, None, boundary, true)))
                    }
                }
            }
        }
    })
}

async fn wado_study(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(study): Path<String>, headers: HeaderMap) -> ApiResult {
    wado(st, who, ctx, headers, study, None, None).await
}

async fn wado_series(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path((study, series)): Path<(String, String)>, headers: HeaderMap) -> ApiResult {
    wado(st, who, ctx, headers, study, Some(series), None).await
}

async fn wado_instance(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path((study, series, sop)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    wado(st, who, ctx, headers, study, Some(series), Some(sop)).await
}

// ----- frames, rendered, thumbnail -----

/// One instance, read whole (bounded by [`MAX_INSTANCE`]) and parsed, audited as a retrieve.
async fn parsed_instance(st: &Arc<AppState>, who: &Principal, ctx: &ReqCtx, study: String, series: String, sop: String) -> Result<brankas_dicom::Parsed, ApiError> {
    let what = What::new("dicom-retrieve", "R", Some("ImagingStudy".into()));
    let r = instances(st, who, &study, Some(&series), Some(&sop)).await;
    let (_, list) = audit::finish(st, who, ctx, what, r).await?;
    let engine = st.engine.clone();
    blocking(move || {
        let b = list.first().ok_or(EngineError::NotFound)?;
        let reader = engine.binary_reader(b)?.ok_or(EngineError::NotFound)?;
        if reader.size() > MAX_INSTANCE {
            return Err(EngineError::TooLarge("instance too large to render".into()));
        }
        let mut bytes = Vec::with_capacity(reader.size() as usize);
        while (bytes.len() as u64) < reader.size() {
            let chunk = reader.read_span(bytes.len() as u64, 1 << 20)?;
            if chunk.is_empty() {
                return Err(EngineError::Integrity);
            }
            bytes.extend_from_slice(&chunk);
        }
        // It was parsed whole when it was stored: failing now means it changed.
        brankas_dicom::parse(&bytes, &brankas_dicom::Limits::default()).map_err(|_| EngineError::Integrity)
    })
    .await
}

fn render_error(e: brankas_dicom::render::RenderError) -> ApiError {
    use brankas_dicom::render::RenderError as R;
    match e {
        R::NoFrame => ApiError::not_found(),
        R::Unsupported(m) => ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", m),
        R::NoPixels => ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", "the instance has no pixel data to render"),
    }
}

/// `image/png` when the client asks for it (and not for JPEG first), else `image/jpeg` (the
/// default of PS3.18 for rendered single frames).
fn rendered_type(headers: &HeaderMap) -> brankas_media::Encoding {
    let a = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    match (a.find("image/png"), a.find("image/jpeg")) {
        (Some(p), Some(j)) if p < j => brankas_media::Encoding::Png,
        (Some(_), None) => brankas_media::Encoding::Png,
        _ => brankas_media::Encoding::Jpeg,
    }
}

async fn rendered(st: Arc<AppState>, who: Principal, ctx: ReqCtx, headers: HeaderMap, ids: (String, String, String), max_side: Option<u32>) -> ApiResult {
    let parsed = parsed_instance(&st, &who, &ctx, ids.0, ids.1, ids.2).await?;
    let encoding = rendered_type(&headers);
    let image = tokio::task::spawn_blocking(move || {
        let img = brankas_dicom::render::render(&parsed, 1).map_err(render_error)?;
        brankas_media::encode_pixels(img.width, img.height, img.rgb, img.pixels, encoding, max_side)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "rendering failed"))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))??;
    let ct = match encoding {
        brankas_media::Encoding::Png => "image/png",
        brankas_media::Encoding::Jpeg => "image/jpeg",
    };
    let mut r = (StatusCode::OK, image).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(r)
}

/// `.../instances/{sop}/rendered`: the first frame as JPEG (or PNG), windowed as the instance
/// says (uncompressed, RLE and 8-bit JPEG instances).
async fn rendered_instance(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(ids): Path<(String, String, String)>, headers: HeaderMap) -> ApiResult {
    rendered(st, who, ctx, headers, ids, None).await
}

/// `.../instances/{sop}/thumbnail`: the rendered first frame, at most 128 pixels a side.
async fn thumbnail_instance(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(ids): Path<(String, String, String)>, headers: HeaderMap) -> ApiResult {
    rendered(st, who, ctx, headers, ids, Some(128)).await
}

/// Whether a `frames` request accepts the frames of an instance stored in transfer syntax
/// `ts` as stored (compressed): its Accept names `transfer-syntax=*` or `ts` itself, or the
/// bitstream's media type (`image/jpeg`, `image/jls`, `image/jp2`, `image/dicom-rle`)
/// without another transfer syntax; then the media type its parts are labelled with (the
/// accepting range's: `application/octet-stream`, else the bitstream's). Otherwise (`None`)
/// the frames are decoded to native samples, the default of PS3.18 (§8.7.3.5.2:
/// `application/octet-stream`, Explicit VR Little Endian).
fn frames_as_stored(headers: &HeaderMap, ts: &str) -> Option<&'static str> {
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",").to_ascii_lowercase();
    let stored_type = brankas_dicom::render::frame_media_type(ts);
    // Parameters of one media range (`type`, `transfer-syntax`): quoted or not, split on `;`.
    accept.split(',').find_map(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let mut kind = media.to_string();
        let mut syntax: Option<String> = None;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else { continue };
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "type" if media == "multipart/related" => kind = v,
                "transfer-syntax" => syntax = Some(v),
                _ => {}
            }
        }
        let takes = match syntax.as_deref() {
            Some("*") => true,
            Some(t) => t == ts,
            None => kind == stored_type && kind != "application/octet-stream",
        };
        takes.then_some(if kind == "application/octet-stream" { "application/octet-stream" } else { stored_type })
    })
}

/// `.../instances/{sop}/frames/{1,2,…}`: one part per frame
/// (`multipart/related`). Uncompressed instances give their native samples. Compressed ones
/// give the frame's bitstream as stored when the Accept header takes it (a viewer such as
/// OHIF asks `transfer-syntax=*`), else the frame decoded to native samples (RLE and 8-bit
/// JPEG; other codings are 406, naming how to ask).
async fn frames_instance(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path((study, series, sop, frames)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let wanted: Vec<usize> =
        frames.split(',').map(|f| f.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| ApiError::bad_request("frames are numbers from 1, separated by commas"))?;
    if wanted.is_empty() || wanted.len() > 1_000 {
        return Err(ApiError::bad_request("between 1 and 1000 frames per request"));
    }
    let parsed = parsed_instance(&st, &who, &ctx, study, series, sop).await?;
    let ts = parsed.instance.transfer_syntax.clone();
    let stored_as = if brankas_dicom::render::is_native(&parsed) { None } else { frames_as_stored(&headers, &ts) };
    let as_stored = stored_as.is_some();
    let part_type = if let Some(media) = stored_as {
        format!("{media}; transfer-syntax={ts}")
    } else if brankas_dicom::render::is_native(&parsed) {
        "application/octet-stream".to_string()
    } else {
        format!("application/octet-stream; transfer-syntax={}", brankas_dicom::render::EXPLICIT_LE)
    };
    let boundary = new_boundary()?;
    let media = part_type.split(';').next().unwrap_or_default().to_string();
    let ct = format!("multipart/related; type=\"{media}\"; boundary={boundary}");
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::new();
        for n in wanted {
            let f = if as_stored { brankas_dicom::render::stored_frame(&parsed, n) } else { brankas_dicom::render::frame(&parsed, n) }.map_err(render_error)?;
            out.extend_from_slice(format!("--{boundary}\r\nContent-Type: {part_type}\r\n\r\n").as_bytes());
            out.extend_from_slice(&f);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Ok(out)
    });
    let body = body.await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))??;
    let mut r = (StatusCode::OK, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&ct) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(r)
}

async fn metadata(st: Arc<AppState>, who: Principal, ctx: ReqCtx, study: String, series: Option<String>, sop: Option<String>) -> ApiResult {
    let what = What::new("dicom-metadata", "R", Some("ImagingStudy".into()));
    let r = instances(&st, &who, &study, series.as_deref(), sop.as_deref()).await;
    let (_, list) = audit::finish(&st, &who, &ctx, what, r).await?;
    let base = root(&st);
    let mut out: Vec<Value> = Vec::with_capacity(list.len());
    for b in &list {
        let meta = brankas_engine::dicom_metadata(&b.resource).ok_or_else(|| ApiError::from(EngineError::Integrity))?;
        let text = meta.to_string().replace(BASE, &base);
        out.push(serde_json::from_str(&text).unwrap_or(meta));
    }
    Ok(dicom_json(StatusCode::OK, &Value::Array(out)))
}

async fn meta_study(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(study): Path<String>) -> ApiResult {
    metadata(st, who, ctx, study, None, None).await
}

async fn meta_series(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path((study, series)): Path<(String, String)>) -> ApiResult {
    metadata(st, who, ctx, study, Some(series), None).await
}

async fn meta_instance(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path((study, series, sop)): Path<(String, String, String)>) -> ApiResult {
    metadata(st, who, ctx, study, Some(series), Some(sop)).await
}

// ----- QIDO-RS -----

/// The studies a QIDO request covers, with their patient: those of one patient
/// (`PatientID`/`patient`), or the one named by its UID (path or `StudyInstanceUID`).
fn studies_for(engine: &brankas_engine::Engine, who: &Principal, pairs: &[(String, String)], study: Option<&str>) -> Result<Admitted<Vec<(Stored, Stored)>>, EngineError> {
    let mut acc = Admitted::nothing(());
    let patient_of = |s: &Stored| -> Result<Admitted<Stored>, EngineError> {
        let pid = s.resource.pointer("/subject/reference").and_then(Value::as_str).and_then(|r| r.strip_prefix("Patient/")).ok_or(EngineError::Integrity)?;
        engine.read(who, "Patient", pid)
    };
    let uid_param = pairs.iter().find(|(k, _)| k == "StudyInstanceUID" || k == "0020000D").map(|(_, v)| v.clone());
    if let Some(u) = study {
        let s = acc.take(engine.study_by_uid(who, u)?);
        let p = acc.take(patient_of(&s)?);
        return Ok(acc.map(|()| vec![(s, p)]));
    }
    let patient = if let Some(h) = pairs.iter().find(|(k, _)| k == "patient").map(|(_, v)| v.strip_prefix("Patient/").unwrap_or(v).to_string()) {
        Some(acc.take(engine.read(who, "Patient", &h)?))
    } else if let Some(pid) = pairs.iter().find(|(k, _)| k == "PatientID" || k == "00100020").map(|(_, v)| v.clone()) {
        let issuer = pairs.iter().find(|(k, _)| k == "IssuerOfPatientID" || k == "00100021").map(|(_, v)| v.as_str());
        match patient_by_dicom_id(engine, who, pid.trim(), issuer) {
            Ok(p) => Some(acc.take(p)),
            Err(EngineError::Unprocessable(_)) => return Ok(acc.map(|()| Vec::new())),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    match (patient, uid_param) {
        (Some(p), _) => {
            let pid = p.resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let mut out = Vec::new();
            let mut offset = 0;
            loop {
                let req =
                    SearchRequest { resource_type: "ImagingStudy".into(), pairs: vec![("_count".into(), "500".into())], compartment: Some(pid.clone()), offset, strict: true };
                let page = acc.take(engine.search(who, &req)?);
                let n = page.resources.len();
                out.extend(page.resources.into_iter().map(|s| (s, p.clone())));
                offset += n;
                if n == 0 || offset >= page.total {
                    break;
                }
            }
            Ok(acc.map(|()| out))
        }
        (None, Some(uids)) if !uids.contains(',') => match engine.study_by_uid(who, uids.trim()) {
            Ok(s) => {
                let s = acc.take(s);
                let p = acc.take(patient_of(&s)?);
                Ok(acc.map(|()| vec![(s, p)]))
            }
            Err(EngineError::NotFound) => Ok(acc.map(|()| Vec::new())),
            Err(e) => Err(e),
        },
        _ => Err(EngineError::BadRequest("QIDO-RS searches within one patient: give PatientID (NIK or IHS number), patient=Patient/<id>, or one StudyInstanceUID".into())),
    }
}

fn text(v: &Value, p: &str) -> Option<String> {
    v.pointer(p).and_then(Value::as_str).map(String::from)
}

fn patient_facts(p: &Value) -> (Option<String>, Option<String>, Option<String>, Option<String>) {
    let ids = p.get("identifier").and_then(Value::as_array).cloned().unwrap_or_default();
    let id = [brankas_fhir::NIK_SYSTEM, brankas_fhir::IHS_SYSTEM]
        .iter()
        .find_map(|sys| ids.iter().find(|i| i.get("system").and_then(Value::as_str) == Some(sys)).and_then(|i| text(i, "/value")));
    let name = p.pointer("/name/0").map(|n| {
        let family = n.get("family").and_then(Value::as_str).unwrap_or("");
        let given: Vec<&str> = n.get("given").and_then(Value::as_array).map(|g| g.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        format!("{family}^{}", given.join(" "))
    });
    let birth = text(p, "/birthDate").map(|d| d.replace('-', ""));
    let sex = text(p, "/gender").map(|g| match g.as_str() {
        "male" => "M".to_string(),
        "female" => "F".to_string(),
        _ => "O".to_string(),
    });
    (id, name, birth, sex)
}

fn study_row(s: &Value, p: &Value) -> Option<StudyRow> {
    let uid = brankas_engine::study_uid_of(s)?;
    let (patient_id, patient_name, birth, sex) = patient_facts(p);
    let series = s.get("series").and_then(Value::as_array).cloned().unwrap_or_default();
    let accession = s
        .get("identifier")
        .and_then(Value::as_array)
        .and_then(|ids| ids.iter().find(|i| i.pointer("/type/coding/0/code").and_then(Value::as_str) == Some("ACSN")).and_then(|i| text(i, "/value")));
    Some(StudyRow {
        study_uid: uid,
        study_date: text(s, "/started").map(|d| d.get(..10).unwrap_or(&d).replace('-', "")),
        study_time: None,
        accession_number: accession,
        study_id: None,
        study_description: text(s, "/description"),
        referring_physician_name: None,
        patient_id,
        patient_name,
        patient_birth_date: birth,
        patient_sex: sex,
        modalities_in_study: s.get("modality").and_then(Value::as_array).map(|m| m.iter().filter_map(|c| text(c, "/code")).collect()).unwrap_or_default(),
        number_of_series: series.len() as u32,
        number_of_instances: series.iter().map(|x| x.get("numberOfInstances").and_then(Value::as_u64).unwrap_or(0) as u32).sum(),
    })
}

fn series_rows(s: &Value, study_uid: &str) -> Vec<SeriesRow> {
    s.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| {
            Some(SeriesRow {
                study_uid: study_uid.to_string(),
                series_uid: text(x, "/uid")?,
                modality: text(x, "/modality/code"),
                series_number: x.get("number").and_then(Value::as_i64).map(|n| n as i32),
                series_description: text(x, "/description"),
                body_part_examined: None,
                number_of_instances: x.get("numberOfInstances").and_then(Value::as_u64).unwrap_or(0) as u32,
            })
        })
        .collect()
}

fn instance_rows(s: &Value, study_uid: &str, series_uid: Option<&str>) -> Vec<InstanceRow> {
    let mut out = Vec::new();
    for x in s.get("series").and_then(Value::as_array).into_iter().flatten() {
        let Some(su) = text(x, "/uid") else { continue };
        if series_uid.is_some_and(|u| u != su) {
            continue;
        }
        for i in x.get("instance").and_then(Value::as_array).into_iter().flatten() {
            let Some(uid) = text(i, "/uid") else { continue };
            out.push(InstanceRow {
                study_uid: study_uid.to_string(),
                series_uid: su.clone(),
                sop_class_uid: text(i, "/sopClass/code").map(|c| c.trim_start_matches("urn:oid:").to_string()).unwrap_or_default(),
                sop_instance_uid: uid,
                instance_number: i.get("number").and_then(Value::as_i64).map(|n| n as i32),
                number_of_frames: None,
                rows: None,
                columns: None,
            });
        }
    }
    out
}

async fn qido(st: Arc<AppState>, who: Principal, ctx: ReqCtx, q: Option<String>, level: Level, study: Option<String>, series: Option<String>) -> ApiResult {
    let what = What::new("dicom-search", "R", Some("ImagingStudy".into()));
    let r = async {
        let pairs = pairs_of(&st, q.as_deref())?;
        for u in study.iter().chain(series.iter()) {
            uid_ok(u)?;
        }
        // The patient is chosen by `studies_for`; the rest of the query matches attributes.
        let matching: Vec<(String, String)> =
            pairs.iter().filter(|(k, _)| !matches!(k.as_str(), "patient" | "PatientID" | "00100020" | "IssuerOfPatientID" | "00100021")).cloned().collect();
        let query = qido::Query::parse(level, &matching).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let engine = st.engine.clone();
        let (w, p, s) = (who.clone(), pairs.clone(), study.clone());
        let studies = blocking(move || studies_for(&engine, &w, &p, s.as_deref())).await?;
        Ok(studies.map(|st| (st, query)))
    }
    .await;
    let (studies, query) = audit::finish(&st, &who, &ctx, what, r).await?;
    let base = root(&st);
    let mut out: Vec<Value> = Vec::new();
    for (s, p) in &studies {
        let Some(row) = study_row(&s.resource, &p.resource) else { continue };
        match level {
            Level::Study => {
                if query.matches_study(&row) {
                    let url = format!("{base}/studies/{}", row.study_uid);
                    out.push(row.to_json(Some(&url)));
                }
            }
            Level::Series => {
                for sr in series_rows(&s.resource, &row.study_uid) {
                    if series.as_ref().is_some_and(|u| *u != sr.series_uid) {
                        continue;
                    }
                    if query.matches_study(&row) && query.matches_series(&sr) {
                        let url = format!("{base}/studies/{}/series/{}", row.study_uid, sr.series_uid);
                        let mut j = sr.to_json(Some(&url));
                        merge_study(&mut j, &row, study.is_none());
                        out.push(j);
                    }
                }
            }
            Level::Instance => {
                let srs = series_rows(&s.resource, &row.study_uid);
                for ir in instance_rows(&s.resource, &row.study_uid, series.as_deref()) {
                    let sr = srs.iter().find(|x| x.series_uid == ir.series_uid);
                    if query.matches_study(&row) && sr.is_none_or(|sr| query.matches_series(sr)) && query.matches_instance(&ir) {
                        let url = format!("{base}/studies/{}/series/{}/instances/{}", row.study_uid, ir.series_uid, ir.sop_instance_uid);
                        let mut j = ir.to_json(Some(&url));
                        if let Some(sr) = sr {
                            merge(&mut j, &sr.to_json(None));
                        }
                        merge_study(&mut j, &row, study.is_none());
                        out.push(j);
                    }
                }
            }
        }
    }
    let offset = query.offset().min(out.len());
    let out: Vec<Value> = out.into_iter().skip(offset).take(query.limit().unwrap_or(usize::MAX)).collect();
    Ok(dicom_json(StatusCode::OK, &Value::Array(out)))
}

/// Adds the attributes of `from` that `to` lacks.
fn merge(to: &mut Value, from: &Value) {
    if let (Some(t), Some(f)) = (to.as_object_mut(), from.as_object()) {
        for (k, v) in f {
            t.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Series and instances found outside a study URL also carry the study's attributes.
fn merge_study(j: &mut Value, row: &StudyRow, all: bool) {
    let s = row.to_json(None);
    if all {
        merge(j, &s);
    } else if let (Some(t), Some(uid)) = (j.as_object_mut(), s.get("0020000D")) {
        t.entry("0020000D".to_string()).or_insert_with(|| uid.clone());
    }
}

async fn qido_studies(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, RawQuery(q): RawQuery) -> ApiResult {
    qido(st, who, ctx, q, Level::Study, None, None).await
}

async fn qido_series_all(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, RawQuery(q): RawQuery) -> ApiResult {
    qido(st, who, ctx, q, Level::Series, None, None).await
}

async fn qido_instances_all(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, RawQuery(q): RawQuery) -> ApiResult {
    qido(st, who, ctx, q, Level::Instance, None, None).await
}

async fn qido_series_of_study(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(study): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    qido(st, who, ctx, q, Level::Series, Some(study), None).await
}

async fn qido_instances_of_study(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(study): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    qido(st, who, ctx, q, Level::Instance, Some(study), None).await
}

async fn qido_instances_of_series(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path((study, series)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    qido(st, who, ctx, q, Level::Instance, Some(study), Some(series)).await
}
