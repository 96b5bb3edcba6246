//! Routes and handlers.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use brankas_auth::Principal;
use brankas_engine::{Admitted, EngineError, EntryOutcome, Page, SearchRequest, Stored, instant, parse_etag};
use serde_json::{Value, json};

use crate::audit::{self, ReqCtx, RequestId, What};
use crate::outcome::ApiError;
use crate::{AppState, FHIR_JSON, capability};

type St = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;
/// The request body's clock (see `server`), absent only when the router is driven without
/// the server.
pub(crate) type Clock = Option<Extension<Arc<crate::server::BodyClock>>>;

/// Marks the body as a streaming upload (bounded by its idle time, not the body deadline).
pub(crate) fn streaming(clock: &Clock) {
    if let Some(Extension(c)) = clock {
        c.streaming();
    }
}

/// Builds the whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/auth/token", post(token))
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/.well-known/smart-configuration", get(smart_config))
        .route("/fhir", post(bundle).fallback(method_not_allowed))
        .route("/fhir/", post(bundle).fallback(method_not_allowed))
        .route("/fhir/{rtype}", get(search_get).post(create).put(conditional_update).delete(conditional_delete).patch(conditional_patch).fallback(method_not_allowed))
        .route("/fhir/{rtype}/_search", post(search_post).fallback(method_not_allowed))
        .route("/fhir/{rtype}/{id}", get(read).put(update).delete(delete).patch(patch).post(type_operation).fallback(method_not_allowed))
        .route("/fhir/{rtype}/{id}/{sub}", get(instance_sub).post(instance_operation).fallback(method_not_allowed))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(vread).fallback(method_not_allowed))
        .merge(crate::admin::routes(state.clone()))
        .merge(crate::audit::routes())
        .merge(crate::guard::routes())
        .merge(crate::dicomweb::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .layer(middleware::from_fn(crate::lang::localize))
        .layer(compression())
        .with_state(state)
}

/// gzip or brotli, when the client accepts one, for JSON answers of more than 1 KiB
/// (searchsets, `$everything`, Bundles, DICOM JSON). Not for attachments, images or DICOM
/// files (already compressed, or served by range), nor small answers such as a token. At a
/// middle level (4): a large searchset shrinks several-fold at a small cost of CPU.
fn compression() -> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{Predicate as _, SizeAbove};
    use tower_http::compression::{CompressionLayer, CompressionLevel};
    fn json(_: StatusCode, _: axum::http::Version, h: &HeaderMap, _: &axum::http::Extensions) -> bool {
        let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        matches!(ct.split(';').next().unwrap_or("").trim(), "application/fhir+json" | "application/json" | "application/dicom+json")
    }
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .quality(CompressionLevel::Precise(4))
        .compress_when(SizeAbove::new(1024).and(json as fn(StatusCode, axum::http::Version, &HeaderMap, &axum::http::Extensions) -> bool))
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Logs method, route template, status and duration: never the raw path, query or body,
/// which can hold identifiers of patients.
async fn access_log(State(st): St, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "(unmatched)".into());
    let rid = brankas_vault::random_id(8).unwrap_or_default();
    req.extensions_mut().insert(RequestId(rid.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    let took = start.elapsed();
    st.metrics.request(&method, &route, resp.status(), took);
    tracing::info!(request_id = %rid, %method, route = %route, status = resp.status().as_u16(), ms = took.as_millis() as u64, "request");
    resp
}

/// Deny by default: everything needs a verified bearer token, except `/health`, the token
/// endpoint and the two public discovery documents. The verified [`Principal`] travels in the request extensions;
/// handlers that touch data take it as an extractor, so a route without this layer could not
/// produce one.
async fn authenticate(State(st): St, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // `/metrics` checks its own credential (the metrics token, see `metrics`).
    let public = matches!(path, "/health" | "/health/ready" | "/metrics" | "/auth/token" | "/fhir/metadata" | "/fhir/.well-known/smart-configuration");
    if public {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from);
    let addr = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let Some(token) = token else { return ApiError::unauthorized().into_response() };
    // Purpose of use (HL7 v3 PurposeOfUse) and, for break-glass (BTG), its reason.
    let purpose = header_text(req.headers(), "x-purpose-of-use");
    let reason = header_text(req.headers(), "x-break-glass-reason");
    // On the runtime thread: a MAC, a parse on a changed registration, and one indexed read
    // of the registration (so that a suspension applies to the very next request) cost a few
    // microseconds, less than a hand-off to the blocking pool and back.
    match st.auth.verify(&token, &st.base_url) {
        Ok(p) => {
            let (client, role) = (p.client_id().to_string(), p.role().as_str());
            // The request the engine's write-ahead audit records name.
            let tag = brankas_auth::RequestTag { request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(), address: addr.map(|a| a.to_string()) };
            match p.with_purpose(purpose.as_deref(), reason.as_deref()).map(|p| p.with_request(tag)) {
                Ok(p) => {
                    // Its connection is no longer expendable while this request runs (see `server`).
                    if let Some(a) = req.extensions().get::<crate::server::Admission>() {
                        a.authenticated();
                    }
                    crate::guard::seen_at(&st, p.client_id(), addr).await;
                    let _inflight = match p.limits() {
                        Some(l) => match st.guard.start(p.client_id(), l) {
                            Ok(f) => Some(f),
                            Err(e) => {
                                st.metrics.throttle();
                                return e.into_response();
                            }
                        },
                        None => None,
                    };
                    req.extensions_mut().insert(p);
                    next.run(req).await
                }
                Err(brankas_auth::PurposeError::Malformed(m)) => ApiError::bad_request(m).into_response(),
                Err(e @ brankas_auth::PurposeError::NotRegistered) => {
                    // A credential claiming a purpose its registration does not list: refused,
                    // audited and alerted (a stolen credential trying to open a consent's exception).
                    let ctx = ReqCtx { request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(), address: addr.map(|a| a.to_string()) };
                    let why = e.to_string();
                    if audit::finish_plain(&st, &client, role, &ctx, What::new("purpose-refused", "E", None), 403, Some(why.clone())).await.is_err() {
                        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the audit log cannot be written").into_response();
                    }
                    crate::guard::raise(&st, "purpose-refused", "medium", Some(&client), json!({"purpose": purpose.as_deref().unwrap_or("").chars().take(32).collect::<String>()}));
                    ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response()
                }
            }
        }
        Err(brankas_auth::AuthError::Store(e)) => {
            tracing::error!(error = %e, "storage failure during authentication");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "storage unavailable").into_response()
        }
        // Bearer tokens are 256-bit MACs: a bad one is a client's bug, not a guess worth
        // locking an address (and its whole NAT) out for; failed logins at the token
        // endpoint are what is counted.
        Err(e) => ApiError::invalid_token(&e).into_response(),
    }
}

fn header_text(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Liveness: the process answers. Says nothing about whether it can serve (see [`ready`]).
async fn health() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#).into_response()
}

/// Readiness: whether this server can serve requests now, without patient data. Each
/// component it needs is named with `ok` or `failing`: the audit log (the last append's
/// outcome, probed again at most once a second while it fails, and its head readable), the
/// main database, and the guard's database. 200 when all are `ok`, else 503 naming the
/// failing ones: a load balancer stops sending requests that would fail.
async fn ready(State(st): St) -> Response {
    let audit = st.audit.ready().await;
    let store = st.store.clone();
    let (head, main, guard) = tokio::task::spawn_blocking(move || {
        (brankas_audit::head(&*store).is_ok(), store.get_meta(brankas_engine::ROOT_META).is_ok_and(|r| r.is_some()), store.guard_usage("readiness-probe", 0, 0).is_ok())
    })
    .await
    .unwrap_or((false, false, false));
    let audit = audit && head;
    let word = |ok: bool| if ok { "ok" } else { "failing" };
    let components = json!({"audit-log": word(audit), "database": word(main), "guard-database": word(guard)});
    let failing: Vec<&str> = [("audit-log", audit), ("database", main), ("guard-database", guard)].iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    let status = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"status": if failing.is_empty() { "ready" } else { "not-ready" }, "failing": failing, "components": components});
    let mut r = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn metadata(State(st): St) -> Response {
    json_response(StatusCode::OK, &capability::capability_statement(&st.base_url, st.cors))
}

async fn smart_config(State(st): St) -> Response {
    let mut r = json_response(StatusCode::OK, &capability::smart_configuration(&st.base_url));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

// ----- OAuth2 -----

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    let mut r = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"brankas\""));
    }
    r
}

async fn token(State(st): St, ctx: ReqCtx, headers: HeaderMap, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, 16 * 1024).await else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "request body too large");
    };
    let addr = ctx.address.as_deref().and_then(|a| a.parse::<std::net::IpAddr>().ok());
    if let Some(secs) = addr.and_then(|a| st.guard.locked(a)) {
        let mut r = oauth_error(StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable", "too many failed authentications from this address; try again later");
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "only client_credentials is supported");
    }
    let scope = field("scope");
    let auth = st.auth.clone();
    let mut claimed = String::new();
    let issued = if let Some(assertion) = field("client_assertion") {
        // SMART Backend Services: private_key_jwt.
        if field("client_assertion_type").as_deref() != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        }
        let audience = capability::token_url(&st.base_url);
        tokio::task::spawn_blocking(move || auth.issue_with_assertion(&assertion, &audience, scope.as_deref()).map(|t| (String::new(), t))).await
    } else {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (id, secret) = s.split_once(':')?;
                // RFC 6749 §2.3.1: both parts are form-urlencoded inside Basic.
                let dec = |x: &str| form_urlencoded::parse(format!("a={x}").as_bytes()).next().map(|(_, v)| v.into_owned());
                Some((dec(id)?, dec(secret)?))
            });
        let (id, secret) = match (basic, field("client_id"), field("client_secret")) {
            (Some(b), _, _) => b,
            (None, Some(i), Some(s)) => (i, s),
            _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication is required"),
        };
        claimed = id.clone();
        tokio::task::spawn_blocking(move || auth.issue(&id, &secret, scope.as_deref()).map(|t| (id, t))).await
    };
    // Token issuance is audited, refused or not (under the client id as claimed).
    let (status, why) = match &issued {
        Ok(Ok(_)) => (200, None),
        Ok(Err(e)) => (if matches!(e, brankas_auth::AuthError::InvalidScope) { 400 } else { 401 }, Some(e.to_string())),
        Err(_) => (500, None),
    };
    let actor = match &issued {
        Ok(Ok((id, t))) if id.is_empty() => t.client_id.clone(),
        Ok(Ok((id, _))) => id.clone(),
        _ => claimed,
    };
    if status == 401 {
        crate::guard::auth_failed(&st, addr);
    }
    if audit::finish_plain(&st, &actor, "", &ctx, What::new("token", "E", None), status, why).await.is_err() {
        return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the audit log cannot be written");
    }
    match issued.map(|r| r.map(|(_, t)| t)) {
        Ok(Ok(t)) => {
            let body = json!({"access_token": t.access_token, "token_type": "Bearer", "expires_in": t.expires_in, "scope": t.scope});
            let mut r = (StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Ok(Err(brankas_auth::AuthError::InvalidScope)) => oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "requested scope is not granted to this client"),
        Ok(Err(brankas_auth::AuthError::Store(_))) => oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "storage unavailable"),
        // The assertion's own faults (expired, replayed, wrong audience) are named: they are
        // about the caller's token, never about whether a client exists.
        Ok(Err(e @ brankas_auth::AuthError::InvalidAssertion(_))) => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &e.to_string()),
        _ => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client credentials"),
    }
}

// ----- helpers -----

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    serialized_response(status, v)
}

/// A FHIR JSON response of any serializable value.
pub(crate) fn serialized_response(status: StatusCode, v: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

/// Runs blocking engine work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, EngineError> + Send + 'static) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error")),
    }
}

fn check_type(rtype: &str) -> Result<(), ApiError> {
    if brankas_fhir::is_resource_type(rtype) { Ok(()) } else { Err(ApiError::new(StatusCode::NOT_FOUND, "not-supported", "unknown resource type")) }
}

fn check_accept(headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let fmt = query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "_format").map(|(_, v)| v.into_owned()));
    let wants_xml = |s: &str| s.contains("xml") && !s.contains("json") && !s.contains("*/*");
    if fmt.as_deref().is_some_and(wants_xml) || headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(wants_xml) {
        return Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", "only application/fhir+json is supported"));
    }
    Ok(())
}

/// Reads a JSON request body within the size limit and checks its content type.
async fn read_json(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/fhir+json" && mime != "application/json" {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", "Content-Type must be application/fhir+json"));
    }
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", format!("request body exceeds the limit of {} bytes", st.limits.max_body_bytes));
    if headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > st.limits.max_body_bytes) {
        return Err(too_large());
    }
    let bytes: Bytes = axum::body::to_bytes(body, st.limits.max_body_bytes).await.map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let why = if e.to_string().contains("recursion limit") { "JSON nested too deeply" } else { "malformed JSON" };
        ApiError::bad_request(format!("{why} (line {}, column {})", e.line(), e.column()))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    Outcome,
}

fn prefer_return(headers: &HeaderMap) -> Return {
    let p = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if p.contains("return=minimal") {
        Return::Minimal
    } else if p.contains("return=OperationOutcome") {
        Return::Outcome
    } else {
        Return::Representation
    }
}

/// `Prefer: handling=strict`: unknown search parameters are an error. Without it they are
/// ignored and reported (R4's lenient handling, which clients such as fhirpy rely on).
fn strict(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).any(|p| p.split([',', ';']).any(|d| d.trim() == "handling=strict"))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => {
            v.to_str().ok().and_then(parse_etag).map(Some).ok_or_else(|| ApiError::new(StatusCode::PRECONDITION_FAILED, "conflict", "If-Match must be an ETag like W/\"3\""))
        }
    }
}

/// Whether the client's copy is current (304): `If-None-Match` names this version, or,
/// without it (RFC 9110 gives it precedence), `If-Modified-Since` is not before the version's
/// time (to the second, the precision of `Last-Modified`). An unparsable date is ignored.
fn not_modified(headers: &HeaderMap, s: &Stored) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        return inm.to_str().ok().and_then(parse_etag) == Some(s.version);
    }
    let since = headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    since.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).is_some_and(|t| s.last_updated_us / 1_000_000 <= t.as_secs() as i64)
}

fn last_modified(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(us / 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc2822).map(|s| s.replace("+0000", "GMT")).unwrap_or_default()
}

fn resource_response(st: &AppState, status: StatusCode, s: &Stored, rtype: &str, ret: Return, location: bool) -> Response {
    let id = s.resource.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut r = match ret {
        Return::Representation => json_response(status, &s.resource),
        Return::Minimal => status.into_response(),
        Return::Outcome => json_response(status, &write_outcome(&s.resource)),
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&s.etag()) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified(s.last_updated_us)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if location && let Ok(v) = HeaderValue::from_str(&format!("{}/{rtype}/{id}/_history/{}", st.base_url, s.version)) {
        h.insert(header::LOCATION, v);
    }
    r
}

/// The OperationOutcome of a write: "ok", and the warnings of its data-quality flags.
fn write_outcome(resource: &Value) -> Value {
    let mut issues = vec![json!({"severity": "information", "code": "informational", "diagnostics": "ok"})];
    issues.extend(quality_warnings(resource));
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// The warnings a written resource carries as data-quality flags (a Patient whose NIK
/// disagrees with its birth date or gender), as OperationOutcome issues. They name the
/// element, never its value.
fn quality_warnings(resource: &Value) -> Vec<Value> {
    let tags = resource.get("meta").and_then(|m| m.get("tag")).and_then(Value::as_array);
    tags.into_iter()
        .flatten()
        .filter(|t| t.get("system").and_then(Value::as_str) == Some(brankas_fhir::DATA_QUALITY_SYSTEM))
        .filter_map(|t| brankas_fhir::NikWarning::from_code(t.get("code").and_then(Value::as_str)?))
        .map(|w| {
            json!({"severity": "warning", "code": "business-rule", "diagnostics": format!("{w}: stored, and flagged for review ({} code {})", brankas_fhir::DATA_QUALITY_SYSTEM, w.code()),
                "expression": ["Patient.identifier", w.expression()]})
        })
        .collect()
}

fn query_pairs(st: &AppState, raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or("");
    if raw.len() > st.limits.max_query_bytes {
        return Err(ApiError::new(StatusCode::URI_TOO_LONG, "too-costly", "query string too long"));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    // Percent-decoding replaces bytes that are not UTF-8 with U+FFFD; searching for that
    // replacement (or for a control character, which no FHIR string holds) would silently
    // answer a different question than the one asked, so such queries are refused.
    let bad = |s: &str| s.chars().any(|c| c == '\u{FFFD}' || (c.is_control() && !matches!(c, '\t' | '\n' | '\r')));
    if pairs.iter().any(|(k, v)| bad(k) || bad(v)) {
        return Err(ApiError::bad_request("query string is not valid UTF-8 or contains control characters"));
    }
    Ok(pairs.into_iter().filter(|(k, _)| k != "_format" && k != "_pretty").collect())
}

// ----- FHIR interactions -----

/// A served Binary: the raw content, or FHIR JSON with `data` inline when asked for.
async fn binary_response(st: &Arc<AppState>, mut s: Stored, headers: &HeaderMap, q: Option<&str>) -> ApiResult {
    let etag_hit = not_modified(headers, &s);
    let mut r = if etag_hit {
        StatusCode::NOT_MODIFIED.into_response()
    } else if crate::attach::wants_json(headers, q) {
        let engine = st.engine.clone();
        s = blocking(move || engine.inline_binary(&mut s).map(|()| s)).await?;
        resource_response(st, StatusCode::OK, &s, "Binary", Return::Representation, false)
    } else {
        crate::attach::download(st, &s, headers).await?
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&s.etag()) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified(s.last_updated_us)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    Ok(r)
}

/// `PATCH [type]/[id]`: JSON Patch (`application/json-patch+json`, an array of operations) or
/// JSON Merge Patch (`application/merge-patch+json`, or a plain JSON object as fhirpy sends).
/// FHIRPath Patch (a `Parameters` body) is refused as not supported.
async fn patch(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path((rtype, id)): Path<(String, String)>, headers: HeaderMap, body: Body) -> ApiResult {
    check_type(&rtype)?;
    not_audit_event(&rtype)?;
    let body = patch_body(&st, &headers, body).await?;
    let im = if_match(&headers)?;
    let engine = st.engine.clone();
    let (t, w, target) = (rtype.clone(), who.clone(), target(&rtype, &id));
    let out = blocking(move || engine.patch(&w, &t, &id, &body, im)).await;
    let out = audit::finish(&st, &who, &ctx, What::new("patch", "U", target), out).await?;
    Ok(resource_response(&st, StatusCode::OK, &out.stored, &rtype, prefer_return(&headers), false))
}

/// `PATCH [type]?[criteria]`: conditional patch of the one resource the criteria match.
async fn conditional_patch(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let criteria = conditional_target(&st, &rtype, q.as_deref(), "PATCH", "patch")?;
    let body = patch_body(&st, &headers, body).await?;
    let im = if_match(&headers)?;
    let engine = st.engine.clone();
    let (t, w) = (rtype.clone(), who.clone());
    let out = blocking(move || engine.conditional_patch(&w, &t, &criteria, &body, im)).await;
    let out = audit::finish(&st, &who, &ctx, What::new("patch", "U", Some(rtype.clone())), out).await?;
    Ok(resource_response(&st, StatusCode::OK, &out.stored, &rtype, prefer_return(&headers), false))
}

/// A PATCH body by its media type (see [`patch`]).
async fn patch_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<brankas_engine::PatchBody, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json_patch = mime == "application/json-patch+json";
    if !json_patch && !matches!(mime.as_str(), "application/merge-patch+json" | "application/json" | "application/fhir+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "PATCH takes application/json-patch+json (JSON Patch) or application/merge-patch+json (JSON Merge Patch)",
        ));
    }
    let mut plain = headers.clone();
    plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let v = read_json(st, &plain, body).await?;
    Ok(if json_patch {
        if !v.is_array() {
            return Err(ApiError::bad_request("a JSON Patch is an array of operations"));
        }
        brankas_engine::PatchBody::Json(
            serde_json::from_value(v).map_err(|_| ApiError::bad_request("the JSON Patch has an operation that is not valid (op, path, value or from)"))?,
        )
    } else if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") && !mime.starts_with("application/merge-patch") {
        brankas_engine::PatchBody::FhirPath(v)
    } else if v.is_object() {
        brankas_engine::PatchBody::Merge(v)
    } else {
        return Err(ApiError::bad_request("a merge patch is a JSON object"));
    })
}

/// The search criteria of a conditional interaction's URL (`Type?criteria`), without the
/// format parameters; `None` when there are none.
fn criteria(st: &AppState, q: Option<&str>) -> Result<Option<String>, ApiError> {
    let pairs = query_pairs(st, q)?;
    if pairs.is_empty() {
        return Ok(None);
    }
    Ok(Some(form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()))
}

/// The criteria of a conditional interaction on a type (`METHOD Type?criteria`), after the
/// checks every interaction on a type gets; without criteria the method is not allowed there.
fn conditional_target(st: &AppState, rtype: &str, q: Option<&str>, method: &str, interaction: &str) -> Result<String, ApiError> {
    check_type(rtype)?;
    not_audit_event(rtype)?;
    criteria(st, q)?
        .ok_or_else(|| ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", format!("{method} takes Type/id, or Type?criteria for a conditional {interaction}")))
}

/// 204 for a delete, with the ETag of the delete marker it wrote (none when there was
/// nothing to delete).
fn deleted_response(marker: Option<Stored>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(s) = marker
        && let Ok(v) = HeaderValue::from_str(&s.etag())
    {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// `PUT [type]?[criteria]`: conditional update.
async fn conditional_update(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let criteria = conditional_target(&st, &rtype, q.as_deref(), "PUT", "update")?;
    let resource = read_json(&st, &headers, body).await?;
    let im = if_match(&headers)?;
    let engine = st.engine.clone();
    let (t, w) = (rtype.clone(), who.clone());
    let out = blocking(move || engine.conditional_update(&w, &t, &criteria, resource, im)).await;
    let out = audit::finish(&st, &who, &ctx, What::new("update", "U", Some(rtype.clone())), out).await?;
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(resource_response(&st, status, &out.stored, &rtype, prefer_return(&headers), true))
}

/// `DELETE [type]?[criteria]`: conditional delete of the one resource the criteria match.
async fn conditional_delete(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(rtype): Path<String>, RawQuery(q): RawQuery, headers: HeaderMap) -> ApiResult {
    let criteria = conditional_target(&st, &rtype, q.as_deref(), "DELETE", "delete")?;
    let im = if_match(&headers)?;
    let engine = st.engine.clone();
    let (t, w) = (rtype.clone(), who.clone());
    let out = blocking(move || engine.conditional_delete(&w, &t, &criteria, im)).await;
    let out = audit::finish(&st, &who, &ctx, What::new("delete", "D", Some(rtype)), out.map(Admitted::nothing)).await?;
    Ok(deleted_response(out))
}

// Each argument is an axum extractor.
#[allow(clippy::too_many_arguments)]
async fn create(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    clock: Clock,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    check_type(&rtype)?;
    not_audit_event(&rtype)?;
    // Criteria in the URL (`POST Type?criteria`, as fhirpy's get_or_create sends) make a
    // conditional create, as If-None-Exist does; never ignored.
    let url_criteria = criteria(&st, q.as_deref())?;
    if rtype == "Binary" && crate::attach::is_raw(&headers) {
        if url_criteria.is_some() {
            return Err(ApiError::bad_request("a raw Binary upload takes no search criteria"));
        }
        streaming(&clock);
        let out = crate::attach::upload(&st, &who, None, None, &headers, body).await;
        let out = audit::finish(&st, &who, &ctx, What::new("create", "C", Some(rtype.clone())), out).await?;
        return Ok(resource_response(&st, StatusCode::CREATED, &out.stored, &rtype, prefer_return(&headers), true));
    }
    let resource = read_json(&st, &headers, body).await?;
    let header_criteria = match headers.get("if-none-exist") {
        Some(v) => Some(v.to_str().map_err(|_| ApiError::bad_request("If-None-Exist is not valid text"))?.trim_start_matches('?').to_string()),
        None => None,
    };
    let ine = match (url_criteria, header_criteria) {
        (Some(u), Some(h)) if criteria(&st, Some(&h))?.as_deref() != Some(u.as_str()) => {
            return Err(ApiError::bad_request("the URL's criteria and If-None-Exist differ; give one"));
        }
        (Some(u), _) => Some(u),
        (None, h) => h,
    };
    let engine = st.engine.clone();
    let (t, w) = (rtype.clone(), who.clone());
    let out = blocking(move || engine.create(&w, &t, resource, ine.as_deref())).await;
    let out = audit::finish(&st, &who, &ctx, What::new("create", "C", Some(rtype.clone())), out).await?;
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(resource_response(&st, status, &out.stored, &rtype, prefer_return(&headers), true))
}

async fn update(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    clock: Clock,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    check_type(&rtype)?;
    not_audit_event(&rtype)?;
    if rtype == "Binary" && crate::attach::is_raw(&headers) {
        streaming(&clock);
        let im = if_match(&headers)?;
        let what = What::new("update", "U", target(&rtype, &id));
        let out = crate::attach::upload(&st, &who, Some(id), im, &headers, body).await;
        let out = audit::finish(&st, &who, &ctx, what, out).await?;
        let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
        return Ok(resource_response(&st, status, &out.stored, &rtype, prefer_return(&headers), out.created));
    }
    let resource = read_json(&st, &headers, body).await?;
    let im = if_match(&headers)?;
    let engine = st.engine.clone();
    let (t, w, target) = (rtype.clone(), who.clone(), target(&rtype, &id));
    let out = blocking(move || engine.update(&w, &t, &id, resource, im)).await;
    let out = audit::finish(&st, &who, &ctx, What::new("update", "U", target), out).await?;
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(resource_response(&st, status, &out.stored, &rtype, prefer_return(&headers), out.created))
}

async fn read(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path((rtype, id)): Path<(String, String)>, RawQuery(q): RawQuery, headers: HeaderMap) -> ApiResult {
    check_type(&rtype)?;
    if id == "_history" {
        return type_history(&st, who, ctx, Some(rtype), q.as_deref(), &headers).await;
    }
    if rtype != "Binary" {
        check_accept(&headers, q.as_deref())?;
    }
    not_audit_event(&rtype)?;
    let (t, target) = (rtype.clone(), target(&rtype, &id));
    let s = audit::served_inline(&st, &who, &ctx, What::new("read", "R", target), |engine, w| engine.read(w, &t, &id)).await?;
    if rtype == "Binary" {
        return binary_response(&st, s, &headers, q.as_deref()).await;
    }
    if not_modified(&headers, &s) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&s.etag()) {
            r.headers_mut().insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&last_modified(s.last_updated_us)) {
            r.headers_mut().insert(header::LAST_MODIFIED, v);
        }
        return Ok(r);
    }
    let mut s = s;
    trim_read(&st, q.as_deref(), &mut s.resource)?;
    Ok(resource_response(&st, StatusCode::OK, &s, &rtype, Return::Representation, false))
}

/// `POST [type]/$validate` (R4 Resource-validate, no mode): the resource (or a Parameters
/// holding it as `resource`) is checked as a create would check it and nothing is stored.
/// The answer is 200 with an OperationOutcome whether or not the resource is valid; its issues
/// name elements, never values.
async fn type_operation(State(st): St, Extension(who): Extension<Principal>, Path((rtype, op)): Path<(String, String)>, headers: HeaderMap, body: Body) -> ApiResult {
    check_type(&rtype)?;
    if op != "$validate" {
        return Err(if op.starts_with('$') {
            ApiError::new(StatusCode::NOT_FOUND, "not-supported", "operation not supported")
        } else {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "POST goes to the type (create) or to the base URL (Bundle)")
        });
    }
    let v = read_json(&st, &headers, body).await?;
    let resource = if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") && rtype != "Parameters" {
        let params = v.get("parameter").and_then(Value::as_array);
        if params.into_iter().flatten().any(|p| p.get("name").and_then(Value::as_str) == Some("mode")) {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not-supported", "$validate modes (create, update, delete) are not supported; validate without a mode"));
        }
        params
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
            .and_then(|p| p.get("resource"))
            .cloned()
            .ok_or_else(|| ApiError::bad_request("Parameters for $validate carry the resource as parameter 'resource'"))?
    } else {
        v
    };
    let engine = st.engine.clone();
    let outcome = match blocking(move || engine.validate_only(&who, &rtype, resource)).await {
        Ok(flagged) => {
            let mut issues = vec![json!({"severity": "information", "code": "informational", "diagnostics": "the resource is valid"})];
            issues.extend(quality_warnings(&flagged));
            json!({"resourceType": "OperationOutcome", "issue": issues})
        }
        // What is wrong with the resource is the answer; anything else (scopes) is an error.
        Err(e) if matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY) => e.to_outcome(),
        Err(e) => return Err(e),
    };
    Ok(json_response(StatusCode::OK, &outcome))
}

/// `POST [type]/[id]/$meta-add` and `$meta-delete` (R4 Resource-meta-add, -delete): a
/// `Parameters` with a `meta` parameter (`valueMeta`); the answer is the resource's meta as
/// it then is. Audited as the patch it is.
async fn instance_operation(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path((rtype, id, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    check_type(&rtype)?;
    not_audit_event(&rtype)?;
    let add = match op.as_str() {
        "$meta-add" => true,
        "$meta-delete" => false,
        o if o.starts_with('$') => return Err(ApiError::new(StatusCode::NOT_FOUND, "not-supported", "operation not supported")),
        _ => return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "POST goes to the type (create) or to the base URL (Bundle)")),
    };
    let v = read_json(&st, &headers, body).await?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::bad_request("$meta-add and $meta-delete take a Parameters resource"));
    }
    let metas: Vec<&Value> = v.get("parameter").and_then(Value::as_array).into_iter().flatten().filter(|p| p.get("name").and_then(Value::as_str) == Some("meta")).collect();
    let meta = match metas.as_slice() {
        [one] => one.get("valueMeta").cloned().ok_or_else(|| ApiError::bad_request("the meta parameter carries a valueMeta"))?,
        _ => return Err(ApiError::bad_request("$meta-add and $meta-delete take exactly one parameter 'meta' (valueMeta)")),
    };
    let engine = st.engine.clone();
    let (t, w, target) = (rtype.clone(), who.clone(), target(&rtype, &id));
    let out = blocking(move || engine.meta_change(&w, &t, &id, &meta, add)).await;
    let s = audit::finish(&st, &who, &ctx, What::new("patch", "U", target), out).await?;
    let meta = s.resource.get("meta").cloned().unwrap_or_else(|| json!({}));
    Ok(json_response(StatusCode::OK, &json!({"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]})))
}

/// `_summary` and `_elements` on a read (R4 §3.1.1.5.8, §3.1.1.5.9): the answer is trimmed
/// (valid R4, marked SUBSETTED) after the whole record was admitted and audited.
fn trim_read(st: &AppState, q: Option<&str>, resource: &mut Value) -> Result<(), ApiError> {
    use brankas_fhir::definitions::Trim;
    let pairs = query_pairs(st, q)?;
    let mut elements: Vec<String> = Vec::new();
    let mut summary: Option<&str> = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "_summary" => summary = Some(v.as_str()),
            "_elements" => elements.extend(v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from)),
            _ => {}
        }
    }
    let how = match summary {
        Some("true") => Trim::Summary,
        Some("text") => Trim::Text,
        Some("data") => Trim::Data,
        Some("false") | None if elements.is_empty() => return Ok(()),
        Some("false") | None => Trim::Elements(&elements),
        Some(_) => return Err(ApiError::bad_request("_summary on a read is true, text, data or false")),
    };
    brankas_fhir::definitions::trim(resource, how);
    Ok(())
}

async fn vread(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    check_type(&rtype)?;
    not_audit_event(&rtype)?;
    let version: u64 = vid.parse().map_err(|_| ApiError::not_found())?;
    let (t, target) = (rtype.clone(), target(&rtype, &id));
    let mut s = audit::served_inline(&st, &who, &ctx, What::new("vread", "R", target), |engine, w| engine.vread(w, &t, &id, version)).await?;
    if rtype == "Binary" {
        return binary_response(&st, s, &headers, q.as_deref()).await;
    }
    trim_read(&st, q.as_deref(), &mut s.resource)?;
    Ok(resource_response(&st, StatusCode::OK, &s, &rtype, Return::Representation, false))
}

async fn delete(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path((rtype, id)): Path<(String, String)>, headers: HeaderMap) -> ApiResult {
    check_type(&rtype)?;
    not_audit_event(&rtype)?;
    let im = if_match(&headers)?;
    let engine = st.engine.clone();
    let (w, target) = (who.clone(), target(&rtype, &id));
    let out = blocking(move || engine.delete(&w, &rtype, &id, im)).await;
    let out = audit::finish(&st, &who, &ctx, What::new("delete", "D", target), out.map(Admitted::nothing)).await?;
    Ok(deleted_response(out))
}

async fn instance_sub(
    State(st): St,
    Extension(who): Extension<Principal>,
    ctx: ReqCtx,
    Path((rtype, id, sub)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    check_type(&rtype)?;
    check_accept(&headers, q.as_deref())?;
    let pairs = query_pairs(&st, q.as_deref())?;
    not_audit_event(&rtype)?;
    if sub == "_history" {
        let what = What::new("history", "R", target(&rtype, &id));
        let (engine, w, at) = (st.engine.clone(), who.clone(), format!("{rtype}/{id}/_history"));
        let page = blocking(move || engine.history_of(&w, Some(&rtype), Some(&id), &pairs, false)).await;
        let page = audit::finish(&st, &who, &ctx, what, page).await?;
        return Ok(json_response(StatusCode::OK, &history_bundle(&st, &at, &page)));
    }
    if rtype == "Patient" && sub == "$everything" {
        let engine = st.engine.clone();
        let (w, target) = (who.clone(), target(&rtype, &id));
        let links = format!("Patient/{id}/$everything");
        let page = if let Some((_, cursor)) = pairs.iter().find(|(k, _)| k == "_page") {
            let c = cursor.clone();
            blocking(move || engine.everything_page(&w, &c)).await
        } else {
            let req = brankas_engine::EverythingRequest::from_query(id, &pairs, strict(&headers))?;
            blocking(move || engine.everything(&w, &req)).await
        };
        let mut page = audit::finish(&st, &who, &ctx, What::new("everything", "R", target), page).await?;
        if pairs.iter().any(|(k, _)| k == "_page") {
            page.used = None;
        }
        return Ok(searchset(&st, &page, Some(&links)));
    }
    if rtype == "Patient" && brankas_fhir::is_resource_type(&sub) {
        let what = What::new("search", "R", target(&rtype, &id)).with_query(&pairs);
        let paged = pairs.iter().any(|(k, _)| k == "_page");
        let engine = st.engine.clone();
        let w = who.clone();
        let page = if let Some((_, cursor)) = pairs.iter().find(|(k, _)| k == "_page") {
            let c = cursor.clone();
            blocking(move || engine.search_page(&w, &c)).await
        } else {
            let pairs = cap_page(&st, &who, pairs);
            let req = SearchRequest { resource_type: sub.clone(), pairs, compartment: Some(id), offset: 0, strict: strict(&headers) };
            blocking(move || engine.search(&w, &req)).await
        };
        let mut page = audit::finish(&st, &who, &ctx, what, page).await?;
        if paged {
            page.used = None;
        }
        return Ok(searchset(&st, &page, Some(&sub)));
    }
    if sub == "$meta" {
        // `[type]/[id]/$meta` (R4 Resource-meta): the resource's meta, read like the resource.
        let (t, target) = (rtype.clone(), target(&rtype, &id));
        let s = audit::served_inline(&st, &who, &ctx, What::new("read", "R", target), |engine, w| engine.read(w, &t, &id)).await?;
        let meta = s.resource.get("meta").cloned().unwrap_or_else(|| json!({}));
        return Ok(json_response(StatusCode::OK, &json!({"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]})));
    }
    if sub.starts_with('$') {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not-supported", "operation not supported"));
    }
    Err(ApiError::not_found())
}

/// One entry of a history Bundle: the version, and the request that wrote it.
fn history_entry(base: &str, s: &Stored) -> Value {
    let rtype = s.resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let id = s.resource.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut e = json!({"fullUrl": format!("{base}/{rtype}/{id}")});
    let (method, status) = if s.deleted {
        ("DELETE", "204 No Content")
    } else if s.version == 1 {
        ("POST", "201 Created")
    } else {
        ("PUT", "200 OK")
    };
    if !s.deleted {
        e["resource"] = s.resource.clone();
    }
    e["request"] = json!({"method": method, "url": if method == "POST" { rtype.to_string() } else { format!("{rtype}/{id}") }});
    e["response"] = json!({"status": status, "etag": s.etag(), "lastModified": instant(s.last_updated_us)});
    e
}

/// `GET [type]/_history` and `GET _history`: one patient's record (named by `patient`, or
/// the caller's own), or a directory type. Audited as what it reads.
async fn type_history(st: &AppState, who: Principal, ctx: ReqCtx, rtype: Option<String>, q: Option<&str>, headers: &HeaderMap) -> ApiResult {
    check_accept(headers, q)?;
    if let Some(t) = &rtype {
        not_audit_event(t)?;
    }
    let pairs = query_pairs(st, q)?;
    let at = rtype.as_deref().map_or_else(|| "_history".to_string(), |t| format!("{t}/_history"));
    let named = pairs.iter().find(|(k, _)| k == "patient").map(|(_, v)| v.strip_prefix("Patient/").unwrap_or(v).to_string());
    let target = match named.as_deref().or_else(|| who.patient().and_then(|p| p.strip_prefix("Patient/"))) {
        Some(pid) => target("Patient", pid),
        None => rtype.clone(),
    };
    let what = What::new(if rtype.is_some() { "history-type" } else { "history-system" }, "R", target).with_query(&pairs);
    let (engine, w, strict) = (st.engine.clone(), who.clone(), strict(headers));
    let page = blocking(move || engine.history_of(&w, rtype.as_deref(), None, &pairs, strict)).await;
    let page = audit::finish(st, &who, &ctx, what, page).await?;
    Ok(json_response(StatusCode::OK, &history_bundle(st, &at, &page)))
}

/// A history Bundle at `at` (`Type/id/_history`, `Type/_history`, `_history`): the self link
/// says which parameters were used; `total` when it is known (one resource's history).
fn history_bundle(st: &AppState, at: &str, page: &brankas_engine::HistoryPage) -> Value {
    let base = &st.base_url;
    let link = |q: &str| if q.is_empty() { format!("{base}/{at}") } else { format!("{base}/{at}?{q}") };
    let mut links = vec![json!({"relation": "self", "url": link(&page.this)})];
    if let Some(next) = &page.next {
        links.push(json!({"relation": "next", "url": link(next)}));
    }
    let entries: Vec<Value> = page.versions.iter().map(|s| history_entry(base, s)).collect();
    let mut b = json!({"resourceType": "Bundle", "type": "history", "link": links, "entry": entries});
    if let Some(total) = page.total {
        b["total"] = json!(total);
    }
    b
}

async fn search_get(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(rtype): Path<String>, RawQuery(q): RawQuery, headers: HeaderMap) -> ApiResult {
    if rtype == "_history" {
        return type_history(&st, who, ctx, None, q.as_deref(), &headers).await;
    }
    check_type(&rtype)?;
    check_accept(&headers, q.as_deref())?;
    let pairs = query_pairs(&st, q.as_deref())?;
    if rtype == "AuditEvent" {
        return audit::search(st.clone(), who, ctx, pairs).await;
    }
    run_search(&st, who, ctx, rtype, pairs, &headers, true).await
}

async fn search_post(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Path(rtype): Path<String>, headers: HeaderMap, body: Body) -> ApiResult {
    check_type(&rtype)?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", "POST _search takes application/x-www-form-urlencoded"));
    }
    let bytes = axum::body::to_bytes(body, st.limits.max_query_bytes).await.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", "search form too large"))?;
    let pairs = query_pairs(&st, Some(&String::from_utf8_lossy(&bytes)))?;
    if rtype == "AuditEvent" {
        return audit::search(st.clone(), who, ctx, pairs).await;
    }
    run_search(&st, who, ctx, rtype, pairs, &headers, false).await
}

/// `_count` within the client's largest page (and the engine's default page when it is larger).
fn cap_page(st: &AppState, who: &Principal, mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let Some(max) = who.limits().map(|l| l.max_page as usize) else { return pairs };
    match pairs.iter_mut().find(|(k, _)| k == "_count") {
        Some((_, v)) if v.parse::<usize>().is_ok_and(|n| n > max) => *v = max.to_string(),
        Some(_) => {}
        None if st.engine.limits().default_count > max => pairs.push(("_count".into(), max.to_string())),
        None => {}
    }
    pairs
}

/// A search; `in_url`: its parameters came in the request's URL (a GET), so its self link may
/// show them again (a POST `_search` form keeps them out of URLs, and so does its answer).
async fn run_search(st: &Arc<AppState>, who: Principal, ctx: ReqCtx, rtype: String, pairs: Vec<(String, String)>, headers: &HeaderMap, in_url: bool) -> ApiResult {
    let pairs = cap_page(st, &who, pairs);
    let what = What::new("search", "R", Some(rtype.clone())).with_query(&pairs);
    let paged = pairs.iter().any(|(k, _)| k == "_page");
    let mut page = if let Some((_, cursor)) = pairs.iter().find(|(k, _)| k == "_page") {
        let c = cursor.clone();
        audit::served(st, &who, &ctx, what, move |engine, w| engine.search_page(w, &c)).await?
    } else {
        let req = SearchRequest { resource_type: rtype.clone(), pairs, compartment: None, offset: 0, strict: strict(headers) };
        if rtype == "Patient" {
            // A Patient search is an exact identity lookup through the blind index (the
            // engine refuses any other): a few index hits, as cheap as a read.
            audit::served_inline(st, &who, &ctx, what, |engine, w| engine.search(w, &req)).await?
        } else {
            audit::served(st, &who, &ctx, what, move |engine, w| engine.search(w, &req)).await?
        }
    };
    if paged || !in_url {
        page.used = None;
    }
    Ok(searchset(st, &page, Some(&rtype)))
}

/// A searchset Bundle. Paging links carry a sealed cursor; the self link also lists the
/// parameters used, except when a value says who a person is (a NIK, a name, a birth date,
/// a phone), which never appears in a link, a proxy log or a browser history. Serialized
/// straight from the page's resources, without copying them into a second JSON tree.
/// `links_at` is the path the paging links go to (`Observation`, `Patient/x/$everything`).
fn searchset(st: &AppState, page: &Page, links_at: Option<&str>) -> Response {
    searchset_with(st, page, links_at, |b| serialized_response(StatusCode::OK, b))
}

#[derive(serde::Serialize)]
struct Link {
    relation: &'static str,
    url: String,
}

#[derive(serde::Serialize)]
struct Mode {
    mode: &'static str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SetEntry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    resource: &'a Value,
    search: Mode,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SearchSet<'a> {
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    total: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<Link>,
    entry: Vec<SetEntry<'a>>,
}

/// Builds the searchset Bundle of `page` (borrowing its resources) and hands it to `f`: to
/// serialize as an answer, or into a Bundle entry's resource.
fn searchset_with<R>(st: &AppState, page: &Page, links_at: Option<&str>, f: impl FnOnce(&SearchSet<'_>) -> R) -> R {
    let base = &st.base_url;
    fn entry_of<'a>(base: &str, s: &'a Stored, mode: &'static str) -> SetEntry<'a> {
        let t = s.resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        let id = s.resource.get("id").and_then(Value::as_str).unwrap_or_default();
        SetEntry { full_url: Some(format!("{base}/{t}/{id}")), resource: &s.resource, search: Mode { mode } }
    }
    let mut entry: Vec<SetEntry<'_>> = page.resources.iter().map(|s| entry_of(base, s, "match")).chain(page.included.iter().map(|s| entry_of(base, s, "include"))).collect();
    // Parameters ignored (lenient handling) are reported by name in an outcome entry: the
    // paging links are sealed cursors and cannot say which parameters were used. So are
    // references an include did not follow.
    let outcome = (!page.ignored.is_empty() || !page.notes.is_empty()).then(|| {
        let issues: Vec<Value> = page
            .ignored
            .iter()
            .map(|p| json!({"severity": "warning", "code": "not-supported", "diagnostics": format!("unknown search parameter '{p}' was ignored (send Prefer: handling=strict to refuse it)")}))
            .chain(page.notes.iter().map(|n| json!({"severity": "information", "code": "informational", "diagnostics": n})))
            .collect();
        json!({"resourceType": "OperationOutcome", "issue": issues})
    });
    if let Some(o) = &outcome {
        entry.push(SetEntry { full_url: None, resource: o, search: Mode { mode: "outcome" } });
    }
    let mut link = Vec::new();
    if let Some(t) = links_at {
        let url = |c: &str| format!("{base}/{t}?_page={c}");
        if !page.this.is_empty() {
            // The parameters used, then the page itself (a request with `_page` is that page).
            let url = match page.used.as_deref() {
                Some(q) if !q.is_empty() => format!("{base}/{t}?{q}&_page={}", page.this),
                _ => url(&page.this),
            };
            link.push(Link { relation: "self", url });
        }
        if let Some(n) = &page.next {
            link.push(Link { relation: "next", url: url(n) });
        }
        if let Some(p) = &page.previous {
            link.push(Link { relation: "previous", url: url(p) });
        }
    }
    f(&SearchSet { resource_type: "Bundle", kind: "searchset", total: page.total, link, entry })
}

async fn bundle(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, headers: HeaderMap, body: Body) -> ApiResult {
    let b = read_json(&st, &headers, body).await?;
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ApiError::bad_request("POST to the base URL takes a transaction or batch Bundle"));
    }
    let kind = match b.get("type").and_then(Value::as_str) {
        Some("transaction") => "transaction",
        Some("batch") => "batch",
        _ => return Err(ApiError::bad_request("Bundle.type must be transaction or batch")),
    };
    let ret = prefer_return(&headers);
    let engine = st.engine.clone();
    let w = who.clone();
    let outcomes = blocking(move || if kind == "transaction" { engine.transaction(&w, &b) } else { engine.batch(&w, &b) }).await;
    let outcomes = audit::finish(&st, &who, &ctx, What::new(kind, "E", None), outcomes).await?;
    let mut entries: Vec<Value> = outcomes.into_iter().map(|o| response_entry(&st, o, ret)).collect();
    // A batch answers 200 whatever its entries did: their errors speak Indonesian when asked,
    // as a request of their own would.
    let indonesian = crate::lang::wants_indonesian(&headers);
    if indonesian {
        for e in &mut entries {
            let failed = e.pointer("/response/status").and_then(Value::as_str).and_then(|s| s.get(..3)).and_then(|c| c.parse::<u16>().ok()).is_some_and(|c| c >= 400);
            if let Some(o) = e.pointer_mut("/response/outcome").filter(|_| failed) {
                crate::lang::localize_outcome(o);
            }
        }
    }
    let mut r = json_response(StatusCode::OK, &json!({"resourceType": "Bundle", "type": format!("{kind}-response"), "entry": entries}));
    if indonesian {
        r.headers_mut().insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("id"));
    }
    Ok(r)
}

fn status_line(code: u16) -> String {
    let reason = StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    format!("{code} {reason}")
}

fn response_entry(st: &AppState, o: EntryOutcome, ret: Return) -> Value {
    if let Some(err) = o.error {
        let e = ApiError::from(err);
        return json!({"response": {"status": status_line(e.status.as_u16()), "outcome": e.to_outcome()}});
    }
    if let Some((page, links)) = &o.page {
        let set = searchset_with(st, page, Some(links), |b| serde_json::to_value(b).unwrap_or(Value::Null));
        return json!({"resource": set, "response": {"status": status_line(o.status)}});
    }
    if let Some((page, at)) = &o.history {
        return json!({"resource": history_bundle(st, at, page), "response": {"status": status_line(o.status)}});
    }
    let mut resp = json!({"status": status_line(o.status)});
    let mut entry = json!({});
    if let Some((t, id)) = &o.location {
        entry["fullUrl"] = json!(format!("{}/{t}/{id}", st.base_url));
        if let Some(s) = &o.stored {
            resp["location"] = json!(format!("{t}/{id}/_history/{}", s.version));
        }
    }
    if let Some(s) = &o.stored {
        resp["etag"] = json!(s.etag());
        resp["lastModified"] = json!(instant(s.last_updated_us));
        if ret == Return::Representation && !s.deleted {
            entry["resource"] = s.resource.clone();
        }
        if ret == Return::Outcome || !quality_warnings(&s.resource).is_empty() {
            resp["outcome"] = write_outcome(&s.resource);
        }
    }
    entry["response"] = resp;
    entry
}

/// `Type/id` of a request URL, for its audit record.
fn target(rtype: &str, id: &str) -> Option<String> {
    Some(format!("{rtype}/{}", id.chars().take(64).collect::<String>()))
}

/// AuditEvent resources come from the audit log only: they are searched, never written or
/// read as stored resources.
fn not_audit_event(rtype: &str) -> Result<(), ApiError> {
    if rtype == "AuditEvent" {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "AuditEvent is written by the server's audit log and read by searching it (GET /fhir/AuditEvent?patient=...)",
        ))
    } else {
        Ok(())
    }
}
