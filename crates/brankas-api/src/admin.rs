//! The administration API under `/admin`: the client registry.
//!
//! | route | who |
//! |---|---|
//! | `GET /admin/clients`, `GET /admin/clients/{id}` | admin, security-officer |
//! | `POST /admin/clients`, `PATCH /admin/clients/{id}`, `POST /admin/clients/{id}/revoke` | admin |
//! | `POST /admin/clients/{id}/suspend`, `POST /admin/clients/{id}/reinstate` | admin, security-officer |
//! | `POST /admin/clients/{id}/approve` | security-officer (not the requester's) |
//! | `POST /admin/clients/{id}/reject` | admin, security-officer |
//! | `/admin/erasures…` | erasure requests (two people): see the `erasure` module |
//!
//! Bodies and answers are plain JSON; errors are OperationOutcome like everywhere else. A new
//! client's secret appears once, in the answer to its creation, and is never stored.
//!
//! The two-person rule (threat model invariant 13, adversary A7): registering a client of a
//! role that reaches patient data (or approves, or will receive exports), widening one, or
//! reinstating one answers `202` with `"status": "pending_approval"` and takes effect only
//! when a security officer other than the requester approves it (`Authority::approve` says
//! who counts as another person). Each step is audited (the records of an approval or a
//! rejection name the requester) and raises an alert (`approval-requested`, `approved`,
//! `rejected`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use brankas_auth::{AuthError, ClientRecord, ClientSpec, ClientStatus, ClientUpdate, PendingRequest, Principal, RequestKind, Role};
use serde_json::{Value, json};

use crate::AppState;
use crate::outcome::ApiError;

type St = State<Arc<AppState>>;

/// Largest admin request body (a registration with a JWK Set of ten RSA keys fits easily).
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/clients", get(list).post(create))
        .route("/admin/clients/{id}", get(show).patch(update))
        .route("/admin/clients/{id}/suspend", post(suspend))
        .route("/admin/clients/{id}/reinstate", post(reinstate))
        .route("/admin/clients/{id}/revoke", post(revoke))
        .route("/admin/clients/{id}/approve", post(approve))
        .route("/admin/clients/{id}/reject", post(reject))
        .merge(crate::erasure::routes())
        .route_layer(axum::middleware::from_fn_with_state(state, audited))
}

/// Client administration is audited (who changed or looked at which registration, and how it
/// went) before the answer leaves; if the record cannot be written the answer is a 503.
async fn audited(State(st): St, ctx: crate::audit::ReqCtx, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(who) = req.extensions().get::<Principal>().cloned() else { return next.run(req).await };
    let action = match *req.method() {
        axum::http::Method::GET => "R",
        axum::http::Method::PATCH => "U",
        _ if req.uri().path() == "/admin/clients" => "C",
        _ => "U",
    };
    let mut target: String = req.uri().path().chars().take(128).collect();
    let resp = next.run(req).await;
    if let Some(AuditNote(note)) = resp.extensions().get::<AuditNote>() {
        target.push_str("; ");
        target.extend(note.chars().take(120));
    }
    let status = resp.status().as_u16();
    let why = (status >= 400).then(|| resp.status().canonical_reason().unwrap_or("failed").to_string());
    let kind = if target.starts_with("/admin/erasures") { "erasure-admin" } else { "client-admin" };
    let what = crate::audit::What::new(kind, action, Some(target));
    match crate::audit::finish_by(&st, &who, &ctx, what, status, why).await {
        Ok(()) => resp,
        Err(e) => e.into_response(),
    }
}

/// What the audit record of a client-administration request adds to its target: the request
/// made pending, or whose request was approved or rejected.
#[derive(Clone)]
struct AuditNote(String);

pub(crate) fn noted(mut r: Response, note: String) -> Response {
    r.extensions_mut().insert(AuditNote(note));
    r
}

/// The answer to a request that waits for a security officer.
fn pending_answer(st: &AppState, rec: &ClientRecord) -> Value {
    let kind = rec.pending.as_ref().map_or("registration", |p| p.kind.as_str());
    json!({"status": "pending_approval", "client_id": rec.client_id, "request": kind,
           "requested_by": rec.pending.as_ref().map(|p| p.requested_by.clone()), "client": view(&*st.store, rec)})
}

/// Alerts the officers to a request waiting for one of them, and notes it for the audit.
fn requested(st: &AppState, who: &Principal, rec: &ClientRecord, r: Response) -> Response {
    let kind = rec.pending.as_ref().map_or("registration", |p| p.kind.as_str());
    let detail = json!({"request": kind, "role": rec.role.as_str(), "requested_by": who.client_id(), "approve": format!("/admin/clients/{}/approve", rec.client_id)});
    crate::guard::raise(st, "approval-requested", "medium", Some(&rec.client_id), detail);
    noted(r, format!("pending approval ({kind})"))
}

/// Alerts and notes a decision on a request.
fn decided(st: &AppState, who: &Principal, rec: &ClientRecord, req: &PendingRequest, kind: &str, severity: &str) -> Response {
    let by = if kind == "approved" { "approved_by" } else { "rejected_by" };
    let detail = json!({"request": req.kind.as_str(), "role": rec.role.as_str(), "requested_by": req.requested_by, by: who.client_id()});
    crate::guard::raise(st, kind, severity, Some(&rec.client_id), detail);
    noted(json(StatusCode::OK, &view(&*st.store, rec)), format!("{kind} {} requested by {}", req.kind.as_str(), req.requested_by))
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    json(status, v)
}

fn json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn require(who: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&who.role()) {
        Ok(())
    } else {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this needs the role {}", names.join(" or "))))
    }
}

pub(crate) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::BadRegistration(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("bad client registration: {m}")),
        AuthError::UnknownClient => ApiError::not_found(),
        AuthError::Revoked | AuthError::AwaitingApproval | AuthError::NothingPending => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        AuthError::NotAllowed(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
        AuthError::Integrity => {
            tracing::error!("a client registration failed its integrity check");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "a client registration failed its integrity check")
        }
        AuthError::Store(ref inner) => {
            tracing::error!(error = %inner, "storage failure");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "storage unavailable")
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid", other.to_string()),
    }
}

pub(crate) async fn body_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_ADMIN_BODY)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", format!("request body larger than {MAX_ADMIN_BODY} bytes")))?;
    // serde_json's own recursion limit (128) bounds nesting.
    serde_json::from_slice(&bytes).map_err(|e| {
        // The message names the field or position only; registrations carry no patient data.
        ApiError::bad_request(format!("not a valid client registration: {}", e.to_string().split(" at line").next().unwrap_or("invalid JSON")))
    })
}

async fn run<T: Send + 'static>(f: impl FnOnce() -> Result<T, AuthError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?.map_err(auth_error)
}

/// Client ids are `c-` and base32-ish characters; anything else cannot name a client.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') { Ok(()) } else { Err(ApiError::not_found()) }
}

async fn list(State(st): St, Extension(who): Extension<Principal>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    let auth = st.auth.clone();
    let store = st.store.clone();
    let clients = run(move || Ok(auth.list_clients()?.iter().map(|c| view(&*store, c)).collect::<Vec<_>>())).await?;
    Ok(json(StatusCode::OK, &json!({"clients": clients})))
}

/// A registration as shown: without secrets, with its patient budget and current use.
fn view(store: &dyn brankas_store::Store, c: &brankas_auth::ClientRecord) -> Value {
    let mut v = c.public_view();
    let (hour, day) = crate::guard::windows();
    if let Ok((h, d)) = store.guard_usage(&c.client_id, hour, day) {
        v["patient_budget_use"] = json!({"this_hour": h, "today": d});
    }
    v
}

async fn show(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    check_id(&id)?;
    let auth = st.auth.clone();
    let rec = run(move || auth.client(&id)).await?.ok_or_else(ApiError::not_found)?;
    Ok(json(StatusCode::OK, &view(&*st.store, &rec)))
}

async fn create(State(st): St, Extension(who): Extension<Principal>, body: Body) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin])?;
    let spec: ClientSpec = body_json(body).await?;
    let auth = st.auth.clone();
    let by = who.clone();
    let (new, rec) = run(move || auth.register(&spec, &by)).await?;
    let pending = rec.status == ClientStatus::PendingApproval;
    let mut v = if pending { pending_answer(&st, &rec) } else { rec.public_view() };
    v["client_secret"] = json!(new.client_secret);
    let mut r = json(if pending { StatusCode::ACCEPTED } else { StatusCode::CREATED }, &v);
    if let Ok(loc) = HeaderValue::from_str(&format!("/admin/clients/{}", new.client_id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(if pending { requested(&st, &who, &rec, r) } else { r })
}

async fn update(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>, body: Body) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin])?;
    check_id(&id)?;
    let u: ClientUpdate = body_json(body).await?;
    let auth = st.auth.clone();
    let by = who.clone();
    let (rec, pending) = run(move || auth.request_update(&id, &u, &by)).await?;
    if pending {
        return Ok(requested(&st, &who, &rec, json(StatusCode::ACCEPTED, &pending_answer(&st, &rec))));
    }
    Ok(json(StatusCode::OK, &rec.public_view()))
}

fn not_itself(who: &Principal, id: &str) -> Result<(), ApiError> {
    if id == who.client_id() {
        return Err(ApiError::new(StatusCode::CONFLICT, "business-rule", "a client cannot suspend or revoke itself"));
    }
    Ok(())
}

async fn suspend(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    check_id(&id)?;
    not_itself(&who, &id)?;
    let auth = st.auth.clone();
    let rec = run(move || auth.suspend(&id)).await?;
    Ok(json(StatusCode::OK, &rec.public_view()))
}

/// `POST /admin/clients/{id}/reinstate`: for a client whose role needs approval, a request
/// (202) that a security officer other than the requester must approve.
async fn reinstate(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    check_id(&id)?;
    let auth = st.auth.clone();
    let by = who.clone();
    let (rec, pending) = run(move || auth.request_reinstate(&id, &by)).await?;
    if pending {
        return Ok(requested(&st, &who, &rec, json(StatusCode::ACCEPTED, &pending_answer(&st, &rec))));
    }
    Ok(json(StatusCode::OK, &rec.public_view()))
}

async fn revoke(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin])?;
    check_id(&id)?;
    not_itself(&who, &id)?;
    let auth = st.auth.clone();
    let rec = run(move || auth.revoke(&id)).await?;
    Ok(json(StatusCode::OK, &rec.public_view()))
}

/// `POST /admin/clients/{id}/approve`: a security officer other than the requester puts the
/// pending request in force.
async fn approve(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::SecurityOfficer])?;
    check_id(&id)?;
    let auth = st.auth.clone();
    let by = who.clone();
    let (rec, req) = run(move || auth.approve(&id, &by)).await?;
    Ok(decided(&st, &who, &rec, &req, "approved", if req.kind == RequestKind::Reinstatement { "high" } else { "medium" }))
}

/// `POST /admin/clients/{id}/reject`: drops the pending request (a pending new client is
/// revoked).
async fn reject(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    check_id(&id)?;
    let auth = st.auth.clone();
    let by = who.clone();
    let (rec, req) = run(move || auth.reject(&id, &by)).await?;
    Ok(decided(&st, &who, &rec, &req, "rejected", "low"))
}
