//! Binary content over HTTP: raw uploads (`POST /fhir/Binary`, `PUT /fhir/Binary/{id}` with
//! any content type and `X-Security-Context: Patient/<id>`) sealed as they arrive, and raw
//! downloads (`GET /fhir/Binary/{id}`, its versions) opened one segment at a time, with
//! single `Range` requests. FHIR JSON is served when asked for (`Accept`/`_format`).
//!
//! Neither direction holds more than one body frame plus one 64 KiB segment per request
//! (photos excepted: a JPEG or PNG is cleaned of its metadata in memory, within the photo
//! limit). No blocking thread waits on a slow client: each piece of sealing or opening is its
//! own short blocking task, and a client that sends nothing for a minute is cut off.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use brankas_auth::Principal;
use brankas_engine::{BlobReader, EngineError, Stored, WriteOutcome};

use crate::AppState;
use crate::handlers::blocking;
use crate::outcome::ApiError;

/// How long an upload may send nothing before it is abandoned.
const IDLE: Duration = Duration::from_secs(60);
/// Plaintext handed to one sealing task at most.
const BATCH: usize = 1 << 20;

/// Whether the client asked for FHIR JSON rather than the raw content.
pub(crate) fn wants_json(headers: &HeaderMap, query: Option<&str>) -> bool {
    let fmt = query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "_format").map(|(_, v)| v.into_owned()));
    if fmt.is_some_and(|f| f.contains("json")) {
        return true;
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.split(',').any(|a| {
        let m = a.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        m == "application/fhir+json" || m == "application/json"
    })
}

/// Whether a write to `/fhir/Binary` carries raw content rather than a FHIR JSON Binary.
pub(crate) fn is_raw(headers: &HeaderMap) -> bool {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let m = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    m != "application/fhir+json" && m != "application/json"
}

fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("a raw Binary upload needs a Content-Type"))?;
    if ct.len() > 255 || ct.chars().any(|c| c.is_control()) || !ct.contains('/') {
        return Err(ApiError::bad_request("Content-Type is not a media type"));
    }
    Ok(ct.to_string())
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", format!("the attachment exceeds the limit of {max} bytes"))
}

/// Receives a raw upload and writes the Binary (a new one, or version of `id`). The caller
/// audits the result.
pub(crate) async fn upload(
    st: &Arc<AppState>,
    who: &Principal,
    id: Option<String>,
    if_match: Option<u64>,
    headers: &HeaderMap,
    body: Body,
) -> Result<brankas_engine::Admitted<WriteOutcome>, ApiError> {
    let ct = content_type(headers)?;
    let context = headers
        .get("x-security-context")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", "a raw Binary upload needs X-Security-Context: Patient/<id> (or a resource of the patient's record)")
        })?
        .to_string();
    let limits = st.engine.attachment_limits().clone();
    if headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > limits.max_bytes) {
        return Err(too_large(limits.max_bytes));
    }
    let engine = st.engine.clone();
    let w = who.clone();
    let perm = if id.is_some() { 'u' } else { 'c' };
    let target = blocking(move || {
        let pid = engine.attachment_patient(&w, &context)?;
        engine.binary_target(&w, &pid, id.as_deref(), perm)
    })
    .await?;
    let target = Arc::new(target);

    let mut body = body.into_data_stream();
    let mut first = Vec::new();
    let mut ended = false;
    // Enough of the start to recognise a photo by its magic number.
    while first.len() < 16 {
        match next_chunk(&mut body).await? {
            Some(b) => first.extend_from_slice(&b),
            None => {
                ended = true;
                break;
            }
        }
    }
    let handling = brankas_media::classify(&ct, &first);
    if matches!(handling, brankas_media::Handling::Refuse) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "images of this type can carry location and camera metadata that cannot be removed here: send JPEG or PNG",
        ));
    }
    let engine = st.engine.clone();
    let t = target.clone();
    let mut sink = blocking(move || engine.blob_sink(&t)).await?;
    if let brankas_media::Handling::Clean(kind) = handling {
        // Photos are cleaned whole, in memory, within the photo limit and the process's
        // in-memory bound.
        let max = limits.photo.max_bytes;
        let mut held = crate::inmem::Held::default();
        held.grow(first.len()).await?;
        while !ended {
            match next_chunk(&mut body).await? {
                Some(b) => {
                    if first.len() + b.len() > max {
                        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", format!("images are limited to {max} bytes")));
                    }
                    held.grow(b.len()).await?;
                    first.extend_from_slice(&b);
                }
                None => ended = true,
            }
        }
        let photo = limits.photo.clone();
        sink = blocking(move || {
            let clean = brankas_media::clean(kind, &first, &photo).map_err(|e| match e {
                brankas_media::MediaError::TooLarge | brankas_media::MediaError::TooManyPixels | brankas_media::MediaError::TooMuchMemory => {
                    EngineError::TooLarge(format!("the image exceeds the photo limits: {e}"))
                }
                e => EngineError::Unprocessable(format!("the image cannot be read: {e}")),
            })?;
            sink.write(&clean)?;
            Ok(sink)
        })
        .await?;
    } else {
        let mut pending = first;
        loop {
            if pending.len() >= BATCH || (ended && !pending.is_empty()) {
                let batch = std::mem::take(&mut pending);
                sink = blocking(move || sink.write(&batch).map(|()| sink)).await?;
            }
            if ended {
                break;
            }
            match next_chunk(&mut body).await? {
                Some(b) => pending.extend_from_slice(&b),
                None => ended = true,
            }
        }
    }
    let blob = blocking(move || sink.finish()).await?;
    let engine = st.engine.clone();
    let w = who.clone();
    blocking(move || engine.binary_commit(&w, &target, &ct, blob, if_match)).await
}

async fn next_chunk(body: &mut axum::body::BodyDataStream) -> Result<Option<Bytes>, ApiError> {
    use futures_util::StreamExt;
    match tokio::time::timeout(IDLE, body.next()).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the upload stalled")),
        Ok(None) => Ok(None),
        Ok(Some(Ok(b))) => Ok(Some(b)),
        Ok(Some(Err(_))) => Err(ApiError::bad_request("the upload was interrupted")),
    }
}

/// One byte range of a download (inclusive start, exclusive end).
#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range (RFC 9110 §14.1.2); anything else (several ranges, other units,
/// bad syntax, an `If-Range`) is served whole, which the RFC allows.
fn parse_range(headers: &HeaderMap, size: u64) -> Range {
    if headers.contains_key(header::IF_RANGE) {
        return Range::Whole;
    }
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Whole };
    let num = |s: &str| if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || s.len() > 19 { None } else { s.parse::<u64>().ok() };
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part(size.saturating_sub(n), size),
            None => Range::Whole,
        },
        (s, "") => match num(s) {
            Some(s) if s < size => Range::Part(s, size),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (s, e) => match (num(s), num(e)) {
            (Some(s), Some(e)) if s <= e && s < size => Range::Part(s, e.min(size - 1) + 1),
            (Some(s), Some(e)) if s <= e => Range::Unsatisfiable,
            _ => Range::Whole,
        },
    }
}

/// The raw response for a served Binary: its content type, the patient as
/// `X-Security-Context`, `Accept-Ranges`, and the bytes streamed segment by segment.
pub(crate) async fn download(st: &Arc<AppState>, s: &Stored, headers: &HeaderMap) -> Result<Response, ApiError> {
    let engine = st.engine.clone();
    let stored = s.clone();
    let reader = blocking(move || engine.binary_reader(&stored)).await?;
    let ct = s.resource.get("contentType").and_then(|v| v.as_str()).unwrap_or("application/octet-stream").to_string();
    let size = reader.as_ref().map(BlobReader::size).unwrap_or(0);
    let range = parse_range(headers, size);
    let (status, start, end) = match range {
        Range::Whole => (StatusCode::OK, 0, size),
        Range::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        Range::Unsatisfiable => {
            let mut r = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "invalid", "the requested range is outside the content").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let body = match reader {
        None => Body::empty(),
        Some(reader) => {
            // The first piece is opened before the status is sent, so a blob that fails its
            // integrity check at the start gets an error response, not a broken body.
            let reader = Arc::new(reader);
            let r = reader.clone();
            let first = if start < end { Some(blocking(move || r.read_span(start, 1)).await?) } else { None };
            let first = first.map(|f| Bytes::copy_from_slice(&f[..f.len().min((end - start) as usize)]));
            let state = (reader, start + first.as_ref().map(|f| f.len() as u64).unwrap_or(0), end, first);
            Body::from_stream(futures_util::stream::unfold(state, |(reader, pos, end, first)| async move {
                if let Some(f) = first {
                    return Some((Ok::<Bytes, std::io::Error>(f), (reader, pos, end, None)));
                }
                if pos >= end {
                    return None;
                }
                let r = reader.clone();
                match tokio::task::spawn_blocking(move || r.read_span(pos, BATCH)).await {
                    Ok(Ok(chunk)) if !chunk.is_empty() => {
                        let take = chunk.len().min((end - pos) as usize);
                        Some((Ok(Bytes::copy_from_slice(&chunk[..take])), (reader, pos + take as u64, end, None)))
                    }
                    _ => {
                        // Headers are gone: the only honest signal left is to break the body.
                        tracing::error!("integrity failure while streaming an attachment; the response was cut off");
                        Some((Err(std::io::Error::other("integrity")), (reader, end, end, None)))
                    }
                }
            }))
        }
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ct) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content from clients is never run as part of this origin.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Some(sc) = s.resource.get("securityContext").and_then(|c| c.get("reference")).and_then(|v| v.as_str())
        && let Ok(v) = HeaderValue::from_str(sc)
    {
        h.insert("x-security-context", v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Range {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        parse_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Range::Part(0, 10));
        assert_eq!(range("bytes=90-200", 100), Range::Part(90, 100));
        assert_eq!(range("bytes=90-", 100), Range::Part(90, 100));
        assert_eq!(range("bytes=-10", 100), Range::Part(90, 100));
        assert_eq!(range("bytes=-1000", 100), Range::Part(0, 100));
        assert_eq!(range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=5-1", 100), Range::Whole);
        assert_eq!(range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(range("items=0-1", 100), Range::Whole);
        assert_eq!(range("bytes=a-b", 100), Range::Whole);
        assert_eq!(range("bytes=99999999999999999999-", 100), Range::Whole);
        assert_eq!(range("bytes=0-0", 0), Range::Unsatisfiable);
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        h.insert(header::IF_RANGE, HeaderValue::from_static("W/\"1\""));
        assert_eq!(parse_range(&h, 100), Range::Whole);
    }
}
