//! The administration API under `/admin`: the client registry.
//!
//! | route | who |
//! |---|---|
//! | `GET /admin/clients`, `GET /admin/clients/{id}` | admin, security-officer |
//! | `POST /admin/clients`, `PATCH /admin/clients/{id}`, `POST /admin/clients/{id}/revoke` | admin |
//! | `POST /admin/clients/{id}/suspend`, `POST /admin/clients/{id}/reinstate` | admin, security-officer |
//!
//! Bodies and answers are plain JSON; errors are OperationOutcome like everywhere else. A new
//! client's secret appears once, in the answer to its creation, and is never stored.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use brankas_auth::{AuthError, ClientSpec, ClientStatus, ClientUpdate, Principal, Role};
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
    let target: String = req.uri().path().chars().take(128).collect();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let why = (status >= 400).then(|| resp.status().canonical_reason().unwrap_or("failed").to_string());
    let what = crate::audit::What::new("client-admin", action, Some(target));
    match crate::audit::finish_by(&st, &who, &ctx, what, status, why).await {
        Ok(()) => resp,
        Err(e) => e.into_response(),
    }
}

fn json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn require(who: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&who.role()) {
        Ok(())
    } else {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this needs the role {}", names.join(" or "))))
    }
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::BadRegistration(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("bad client registration: {m}")),
        AuthError::UnknownClient => ApiError::not_found(),
        AuthError::Revoked => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
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

async fn body_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
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
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
        .map_err(auth_error)
}

/// Client ids are `c-` and base32-ish characters; anything else cannot name a client.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
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
    let (new, rec) = run(move || {
        let new = auth.create_client(&spec)?;
        let rec = auth.client(&new.client_id)?.ok_or(AuthError::Integrity)?;
        Ok((new, rec))
    })
    .await?;
    let mut v = rec.public_view();
    v["client_secret"] = json!(new.client_secret);
    let mut r = json(StatusCode::CREATED, &v);
    if let Ok(loc) = HeaderValue::from_str(&format!("/admin/clients/{}", new.client_id)) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(r)
}

async fn update(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>, body: Body) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin])?;
    check_id(&id)?;
    let u: ClientUpdate = body_json(body).await?;
    let auth = st.auth.clone();
    let rec = run(move || auth.update_client(&id, &u)).await?;
    Ok(json(StatusCode::OK, &rec.public_view()))
}

async fn set_status(st: Arc<AppState>, who: Principal, id: String, status: ClientStatus, roles: &[Role]) -> Result<Response, ApiError> {
    require(&who, roles)?;
    check_id(&id)?;
    if id == who.client_id() && status != ClientStatus::Active {
        return Err(ApiError::new(StatusCode::CONFLICT, "business-rule", "a client cannot suspend or revoke itself"));
    }
    let auth = st.auth.clone();
    let rec = run(move || auth.set_status(&id, status)).await?;
    Ok(json(StatusCode::OK, &rec.public_view()))
}

async fn suspend(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    set_status(st, who, id, ClientStatus::Suspended, &[Role::Admin, Role::SecurityOfficer]).await
}

async fn reinstate(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    set_status(st, who, id, ClientStatus::Active, &[Role::Admin, Role::SecurityOfficer]).await
}

async fn revoke(State(st): St, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Response, ApiError> {
    set_status(st, who, id, ClientStatus::Revoked, &[Role::Admin]).await
}
