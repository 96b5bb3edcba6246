//! Erasure requests under `/admin/erasures`: crypto-shredding a patient's record (see
//! `brankas_engine::erasure`) needs two people.
//!
//! | route | who |
//! |---|---|
//! | `POST /admin/erasures` `{"patient": "Patient/<id>", "reason": "<code>", "note": "..."}` | admin, security-officer: `202 pending_approval` |
//! | `GET /admin/erasures` | admin, security-officer: the requests waiting |
//! | `POST /admin/erasures/{id}/approve` | a security officer other than the requester (and outside its registration lineage): carries it out, `200` |
//! | `POST /admin/erasures/{id}/reject` | admin, security-officer |
//!
//! The request is checked when it is made (the patient exists and is not erased, the reason
//! is a known code and the retention period allows it) and again when it is carried out.
//! Requests wait in the database's meta table, each with a MAC under a vault-derived key, so
//! a request planted or edited in the database (say, naming another requester) is refused.
//! Every step is audited (the `audited` layer of the admin routes) and alerted; the approval
//! writes the erasure's own record into the patient's audit trail (interaction `erase`, the
//! reason, requester and approver) before the key is destroyed.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Router};
use brankas_auth::{Principal, Role};
use brankas_engine::ErasureReason;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::admin::{auth_error, body_json, json_response, require};
use crate::outcome::ApiError;

type St = State<Arc<AppState>>;

const META: &str = "erasure.requests";
/// At most this many requests wait at once.
const MAX_PENDING: usize = 1000;

/// One process changes the list at a time (read, change, write).
static LIST: Mutex<()> = Mutex::new(());

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    patient: String,
    reason: String,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Request {
    id: String,
    patient: String,
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    requested_by: String,
    requested_at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    mac: String,
}

fn mac_of(st: &AppState, r: &Request) -> String {
    let mut unsigned = r.clone();
    unsigned.mac.clear();
    let mut data = b"erasure-request\0".to_vec();
    data.extend_from_slice(&serde_json::to_vec(&unsigned).unwrap_or_default());
    st.engine.vault().registry_mac(&data).iter().map(|b| format!("{b:02x}")).collect()
}

fn unavailable() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "storage unavailable")
}

/// The waiting requests whose MAC holds (others are dropped, and logged).
fn load(st: &AppState) -> Result<Vec<Request>, ApiError> {
    let Some(raw) = st.store.get_meta(META).map_err(|_| unavailable())? else { return Ok(Vec::new()) };
    let all: Vec<Request> = serde_json::from_slice(&raw).unwrap_or_default();
    let (ok, bad): (Vec<Request>, Vec<Request>) = all.into_iter().partition(|r| brankas_vault::ct_eq(mac_of(st, r).as_bytes(), r.mac.as_bytes()));
    if !bad.is_empty() {
        tracing::error!(count = bad.len(), "erasure requests failing their MAC were ignored (edited or planted in the database)");
    }
    Ok(ok)
}

fn save(st: &AppState, list: &[Request]) -> Result<(), ApiError> {
    st.store.put_meta(META, &serde_json::to_vec(list).unwrap_or_default()).map_err(|_| unavailable())
}

fn view(r: &Request) -> serde_json::Value {
    json!({"id": r.id, "patient": r.patient, "reason": r.reason, "requested_by": r.requested_by, "requested_at": r.requested_at,
           "approve": format!("/admin/erasures/{}/approve", r.id)})
}

fn patient_id(p: &str) -> Result<&str, ApiError> {
    p.strip_prefix("Patient/").filter(|i| brankas_fhir::is_valid_id(i)).ok_or_else(|| ApiError::bad_request("patient must be Patient/<id>"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    use axum::routing::{get, post};
    Router::new().route("/admin/erasures", get(list).post(create)).route("/admin/erasures/{id}/approve", post(approve)).route("/admin/erasures/{id}/reject", post(reject))
}

async fn list(State(st): St, Extension(who): Extension<Principal>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    let s = st.clone();
    let all = blocking(move || load(&s)).await?;
    Ok(json_response(StatusCode::OK, &json!({"erasures": all.iter().map(view).collect::<Vec<_>>()})))
}

/// `POST /admin/erasures`: a request, checked now, carried out when a second person approves.
async fn create(State(st): St, Extension(who): Extension<Principal>, body: Body) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    let req: NewRequest = body_json(body).await?;
    let reason = ErasureReason::parse(&req.reason)?;
    let id = patient_id(&req.patient)?.to_string();
    if req.note.as_ref().is_some_and(|n| n.len() > 500 || n.chars().any(char::is_control)) {
        return Err(ApiError::bad_request("note: one line of at most 500 characters"));
    }
    let s = st.clone();
    let by = who.client_id().to_string();
    let r = blocking(move || {
        s.engine.erasure_check(&id, reason)?;
        let _one = LIST.lock().map_err(|_| unavailable())?;
        let mut all = load(&s)?;
        if all.len() >= MAX_PENDING {
            return Err(ApiError::throttled("too many erasure requests are waiting for a security officer", 3_600));
        }
        let mut r = Request {
            id: format!("e-{}", brankas_vault::random_id(12).map_err(|_| unavailable())?),
            patient: format!("Patient/{id}"),
            reason: reason.as_str().into(),
            note: req.note,
            requested_by: by,
            requested_at: brankas_engine::instant(brankas_engine::erasure::now()),
            mac: String::new(),
        };
        r.mac = mac_of(&s, &r);
        all.push(r.clone());
        save(&s, &all)?;
        Ok(r)
    })
    .await?;
    crate::guard::raise(
        &st,
        "erasure-requested",
        "high",
        Some(who.client_id()),
        json!({"erasure": r.id, "reason": r.reason, "approve": format!("/admin/erasures/{}/approve", r.id)}),
    );
    let mut v = view(&r);
    v["status"] = json!("pending_approval");
    Ok(crate::admin::noted(json_response(StatusCode::ACCEPTED, &v), format!("erasure {} requested ({})", r.id, r.reason)))
}

/// `POST /admin/erasures/{id}/approve`: a second security officer carries the erasure out.
async fn approve(State(st): St, Extension(who): Extension<Principal>, Path(eid): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::SecurityOfficer])?;
    let s = st.clone();
    let by = who.clone();
    let r = blocking(move || {
        let _one = LIST.lock().map_err(|_| unavailable())?;
        let r = load(&s)?.into_iter().find(|r| r.id == eid).ok_or_else(ApiError::not_found)?;
        s.auth.second_person(&r.requested_by, &by).map_err(auth_error)?;
        Ok(r)
    })
    .await?;
    let id = patient_id(&r.patient)?.to_string();
    let reason = ErasureReason::parse(&r.reason)?;
    let partition = st.engine.patient_partition(&id);
    let text = |outcome: &str| format!("erasure ({}): {outcome}; requested by {}, approved by {}", r.reason, r.requested_by, who.client_id());
    // The erasure's record in the patient's trail, durable before the key is destroyed.
    record(&st, &who, partition, &id, true, text("approved")).await?;
    let (s, by, pid) = (st.clone(), who.clone(), id.clone());
    let done = blocking(move || Ok(s.engine.erase_patient(&by, &pid, reason)?)).await;
    let report = match done {
        Ok(rep) => rep,
        Err(e) => {
            let _ = record(&st, &who, partition, &id, false, text("failed")).await;
            return Err(e);
        }
    };
    record(&st, &who, partition, &id, true, text(&format!("carried out, ledger entry {}", report.ledger_entry))).await?;
    let (s, rid) = (st.clone(), r.id.clone());
    blocking(move || {
        let _one = LIST.lock().map_err(|_| unavailable())?;
        let all: Vec<Request> = load(&s)?.into_iter().filter(|x| x.id != rid).collect();
        save(&s, &all)
    })
    .await?;
    crate::guard::raise(
        &st,
        "erasure-approved",
        "high",
        Some(who.client_id()),
        json!({"erasure": r.id, "reason": r.reason, "requested_by": r.requested_by, "approved_by": who.client_id()}),
    );
    let v = json!({"status": "erased", "id": r.id, "patient": r.patient, "reason": r.reason, "requested_by": r.requested_by, "approved_by": who.client_id(),
                   "records": report.records, "peers_rewrapped": report.peers, "ledger_entry": report.ledger_entry, "reaches_older_copies": report.reaches_older_copies});
    Ok(crate::admin::noted(json_response(StatusCode::OK, &v), format!("erasure {} approved, requested by {}", r.id, r.requested_by)))
}

async fn reject(State(st): St, Extension(who): Extension<Principal>, Path(eid): Path<String>) -> Result<Response, ApiError> {
    require(&who, &[Role::Admin, Role::SecurityOfficer])?;
    let s = st.clone();
    let r = blocking(move || {
        let _one = LIST.lock().map_err(|_| unavailable())?;
        let (gone, keep): (Vec<Request>, Vec<Request>) = load(&s)?.into_iter().partition(|r| r.id == eid);
        let r = gone.into_iter().next().ok_or_else(ApiError::not_found)?;
        save(&s, &keep)?;
        Ok(r)
    })
    .await?;
    Ok(crate::admin::noted(json_response(StatusCode::OK, &json!({"status": "rejected", "id": r.id})), format!("erasure {} rejected, requested by {}", r.id, r.requested_by)))
}

async fn record(st: &AppState, who: &Principal, partition: brankas_store::PartitionId, id: &str, ok: bool, text: String) -> Result<(), ApiError> {
    let entry = brankas_audit::AuditEntry {
        interaction: "erase".into(),
        action: "D".into(),
        outcome: Some(if ok { brankas_audit::Outcome::Success } else { brankas_audit::Outcome::MinorFailure }),
        outcome_text: Some(text),
        client_id: who.client_id().into(),
        role: who.role().as_str().into(),
        patient: Some(id.to_string()),
        ..Default::default()
    };
    st.audit.record(vec![brankas_audit::NewRecord { partition: Some(partition), client_id: who.client_id().into(), entry }]).await.map_err(|e| {
        tracing::error!(error = %e, "the audit log cannot be written; the erasure was not carried out");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the audit log cannot be written")
    })?;
    Ok(())
}
