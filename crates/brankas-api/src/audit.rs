//! Audit at the HTTP boundary: every request that reaches patient data, every denial, token
//! issuance and client administration becomes audit records (one per patient touched), made
//! durable **before** the response is released; if they cannot be written the request fails
//! with 503 and its data is dropped (fail closed). Also `GET /fhir/AuditEvent` (BALP-shaped
//! AuditEvent for security officers, and a patient's own access history in plain words) and
//! the log's checkpoint and proofs under `/admin/audit`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use brankas_audit::{AuditEntry, NewRecord, Outcome};
use brankas_auth::{Principal, Role};
use brankas_engine::{Admitted, Disclosure};
use brankas_store::PartitionId;
use serde_json::{Value, json};

use crate::AppState;
use crate::outcome::ApiError;

type St = State<Arc<AppState>>;

/// The id of the request, set before any handler runs, returned in `X-Request-Id` and written
/// into its audit records.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub String);

/// Who is asking from where: the request id and the peer address.
#[derive(Clone, Debug)]
pub(crate) struct ReqCtx {
    pub request_id: String,
    pub address: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ReqCtx {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ReqCtx {
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
            address: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()),
        })
    }
}

/// What kind of request is being audited.
pub(crate) struct What {
    pub interaction: &'static str,
    pub action: &'static str,
    /// `Type` or `Type/id` of the URL.
    pub target: Option<String>,
    /// Names of query parameters (never values).
    pub query: Vec<String>,
    /// Patient ids the request names (URL, `patient`/`subject` parameters): a record whose
    /// patient is known only by partition (a denial) gets the id that maps to that partition.
    candidates: Vec<String>,
}

impl What {
    pub fn new(interaction: &'static str, action: &'static str, target: Option<String>) -> Self {
        let candidates = target.as_deref().and_then(|t| t.strip_prefix("Patient/")).map(|id| vec![id.to_string()]).unwrap_or_default();
        Self { interaction, action, target, query: Vec::new(), candidates }
    }
    pub fn with_query(mut self, pairs: &[(String, String)]) -> Self {
        for (k, v) in pairs {
            let name = k.split(':').next().unwrap_or_default();
            if matches!(name, "patient" | "subject" | "_id") {
                for id in v.split(',').take(10) {
                    let id = id.rsplit('/').next().unwrap_or_default();
                    if brankas_fhir::is_valid_id(id) {
                        self.candidates.push(id.to_string());
                    }
                }
            }
        }
        let mut names: Vec<String> = pairs.iter().map(|(k, _)| k.chars().take(64).collect()).collect();
        names.sort();
        names.dedup();
        names.truncate(50);
        self.query = names;
        self
    }
}

/// The base entry for a request, before patients and outcome are known.
fn base_entry(who: &Principal, ctx: &ReqCtx, what: &What) -> AuditEntry {
    AuditEntry {
        interaction: what.interaction.into(),
        action: what.action.into(),
        client_id: who.client_id().into(),
        role: who.role().as_str().into(),
        organization: who.organization().map(String::from),
        practitioner: who.practitioner().map(String::from),
        acting_patient: who.patient().map(String::from),
        address: ctx.address.clone(),
        request_id: ctx.request_id.clone(),
        purpose: Some(who.purpose().to_string()),
        break_glass: who.break_glass_reason().map(String::from),
        target: what.target.clone(),
        query: what.query.clone(),
        ..Default::default()
    }
}

/// The audit records of one finished request: one per patient whose resources were served
/// or written (`served`), one per further patient the request's gates were asked about (a
/// denial, an empty compartment search), and one without a patient when there was none.
pub(crate) fn records(st: &AppState, who: &Principal, ctx: &ReqCtx, what: &What, status: u16, why: Option<&ApiError>, served: &[&Value]) -> Vec<NewRecord> {
    let base = base_entry(who, ctx, what);
    let mut by_patient: BTreeMap<[u8; 32], (PartitionId, AuditEntry)> = BTreeMap::new();
    for r in served {
        let Some((pid, partition)) = st.engine.audit_subject(r) else { continue };
        let e = &mut by_patient.entry(partition.0).or_insert_with(|| (partition, base.clone())).1;
        e.patient = Some(pid);
        let t = r.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
        e.add_resource(format!("{t}/{id}"));
        for c in brankas_audit::breach::category_of(r) {
            e.add_category(c);
        }
    }
    // Denials carry their reason (fixed phrases); other failures their issue code.
    let text = why.map(|e| if e.status == StatusCode::FORBIDDEN { e.message.clone() } else { e.code.to_string() });
    complete(st, who, what, base, by_patient, status, text)
}

/// The records of a request, once those of the patients it served are in `by_patient`: one
/// per further patient its gates were asked about (a denial names its patient too), one
/// without a patient when there was none, each with the request's outcome.
fn complete(
    st: &AppState,
    who: &Principal,
    what: &What,
    base: AuditEntry,
    mut by_patient: BTreeMap<[u8; 32], (PartitionId, AuditEntry)>,
    status: u16,
    text: Option<String>,
) -> Vec<NewRecord> {
    for p in who.trail().take() {
        let e = &mut by_patient.entry(p.0).or_insert_with(|| (p, base.clone())).1;
        if e.patient.is_none() {
            // Only an id that maps to this very partition: never a value the caller typed
            // that is not this patient's id.
            e.patient = what.candidates.iter().find(|c| st.engine.patient_partition(c) == p).cloned();
        }
    }
    let finish = |mut e: AuditEntry| {
        e.status = status;
        e.outcome = Some(Outcome::of_status(status));
        e.outcome_text = text.clone();
        e
    };
    if by_patient.is_empty() {
        return vec![NewRecord { partition: None, client_id: who.client_id().into(), entry: finish(base) }];
    }
    by_patient.into_values().map(|(p, e)| NewRecord { partition: Some(p), client_id: who.client_id().into(), entry: finish(e) }).collect()
}

/// The audit records of a request whose engine call succeeded: one per patient it discloses
/// (from the engine's [`Disclosure`], decided where the gates admitted the records, never
/// from the trimmed answer), one per further patient its gates were asked about, one without
/// a patient when there was none. Records of a success need the guard's [`Cleared`]: only
/// what the guard admitted is recorded as served.
fn disclosed_records(st: &AppState, who: &Principal, ctx: &ReqCtx, what: &What, d: &Disclosure, outcome: Served) -> Vec<NewRecord> {
    let base = base_entry(who, ctx, what);
    let mut by_patient: BTreeMap<[u8; 32], (PartitionId, AuditEntry)> = BTreeMap::new();
    for (partition, p) in d.patients() {
        let e = &mut by_patient.entry(partition.0).or_insert_with(|| (*partition, base.clone())).1;
        e.disclosed = matches!(outcome, Served::Cleared(_));
        e.patient = p.patient_id.clone().or_else(|| what.candidates.iter().find(|c| st.engine.patient_partition(c) == *partition).cloned());
        for r in &p.records {
            e.add_resource(r.clone());
        }
        for c in &p.categories {
            e.add_category(c);
        }
    }
    let (status, text) = match &outcome {
        Served::Cleared(_) => (200, None),
        Served::Refused(e) => (e.status.as_u16(), Some(e.message.clone())),
    };
    complete(st, who, what, base, by_patient, status, text)
}

/// How a disclosure went: admitted by the guard, or refused by it.
enum Served<'a> {
    Cleared(crate::guard::Cleared),
    Refused(&'a ApiError),
}

/// Makes the records durable; on failure the caller's answer is replaced by 503.
pub(crate) async fn commit(st: &AppState, records: Vec<NewRecord>) -> Result<(), ApiError> {
    let (n, start) = (records.len(), std::time::Instant::now());
    appended(st, n, start, st.audit.record(records).await).map(drop)
}

/// An append's outcome, counted in the metrics; a failure is the 503 that replaces the answer.
fn appended<T>(st: &AppState, n: usize, start: std::time::Instant, r: Result<T, brankas_audit::AuditError>) -> Result<T, ApiError> {
    st.metrics.audit_append(n, start.elapsed(), r.is_ok());
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            tracing::error!(error = %e, "audit records could not be written; the request fails");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the audit log cannot be written; nothing was served"))
        }
    }
}

/// Guards, audits and then releases a finished request's result. What it discloses (the
/// engine's [`Admitted`] value, decided by the access checks) passes the guard (canaries, the
/// client's patient budget) or nothing leaves; its records become durable or the answer is a
/// 503; and only the audit log's [`brankas_audit::Receipt`] for those records releases the
/// result, so no answer can skip this step and still be serialized.
pub(crate) async fn finish<T>(st: &AppState, who: &Principal, ctx: &ReqCtx, what: What, result: Result<Admitted<T>, ApiError>) -> Result<T, ApiError> {
    let admitted = match result {
        Ok(a) => a,
        Err(e) => {
            commit(st, records(st, who, ctx, &what, e.status.as_u16(), Some(&e), &[])).await?;
            crate::guard::break_glass(st, who).await;
            return Err(e);
        }
    };
    match crate::guard::admit(st, who, admitted.disclosure()).await {
        Ok(cleared) => {
            let recs = disclosed_records(st, who, ctx, &what, admitted.disclosure(), Served::Cleared(cleared));
            let (n, start) = (recs.len(), std::time::Instant::now());
            let receipt = appended(st, n, start, st.audit.record_receipt(recs).await)?;
            crate::guard::break_glass(st, who).await;
            admitted.release(&receipt).map_err(|e| {
                tracing::error!(error = %e, "an answer's audit did not cover what it discloses; nothing was served");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error")
            })
        }
        Err(e) => {
            commit(st, disclosed_records(st, who, ctx, &what, admitted.disclosure(), Served::Refused(&e))).await?;
            crate::guard::break_glass(st, who).await;
            Err(e)
        }
    }
}

/// [`commit`] on a blocking thread, leading its own group commit.
pub(crate) fn commit_blocking(st: &AppState, records: Vec<NewRecord>) -> Result<(), ApiError> {
    let (n, start) = (records.len(), std::time::Instant::now());
    appended(st, n, start, st.audit.record_blocking(records)).map(drop)
}

/// [`finish`] on a blocking thread: the same guard, durable records and release, with the
/// request's records appended in a group commit this thread leads itself (see
/// [`brankas_audit::AuditLog::record_blocking`]).
pub(crate) fn finish_blocking<T>(st: &AppState, who: &Principal, ctx: &ReqCtx, what: What, result: Result<Admitted<T>, ApiError>) -> Result<T, ApiError> {
    let admitted = match result {
        Ok(a) => a,
        Err(e) => {
            commit_blocking(st, records(st, who, ctx, &what, e.status.as_u16(), Some(&e), &[]))?;
            crate::guard::break_glass_blocking(st, who);
            return Err(e);
        }
    };
    match crate::guard::admit_blocking(st, who, admitted.disclosure()) {
        Ok(cleared) => {
            let recs = disclosed_records(st, who, ctx, &what, admitted.disclosure(), Served::Cleared(cleared));
            let (n, start) = (recs.len(), std::time::Instant::now());
            let receipt = appended(st, n, start, st.audit.record_receipt_blocking(recs))?;
            crate::guard::break_glass_blocking(st, who);
            admitted.release(&receipt).map_err(|e| {
                tracing::error!(error = %e, "an answer's audit did not cover what it discloses; nothing was served");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error")
            })
        }
        Err(e) => {
            commit_blocking(st, disclosed_records(st, who, ctx, &what, admitted.disclosure(), Served::Refused(&e)))?;
            crate::guard::break_glass_blocking(st, who);
            Err(e)
        }
    }
}

/// A request's engine work, guard and audit in one blocking task: `work` runs, then
/// [`finish_blocking`]; one hand-off from the async runtime and back per request.
pub(crate) async fn served<T: Send + 'static>(
    st: &Arc<AppState>,
    who: &Principal,
    ctx: &ReqCtx,
    what: What,
    work: impl FnOnce(&brankas_engine::Engine, &Principal) -> Result<Admitted<T>, brankas_engine::EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let (s, w, c) = (st.clone(), who.clone(), ctx.clone());
    match tokio::task::spawn_blocking(move || {
        let r = work(&s.engine, &w).map_err(ApiError::from);
        finish_blocking(&s, &w, &c, what, r)
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error")),
    }
}

/// A point read's engine work on the runtime thread, then [`finish`]: the work is a few
/// indexed reads and one AEAD open, cheaper than a hand-off to the blocking pool and back.
/// The guard blocks this thread only for a patient it has not admitted this hour; the audit
/// append only when the log is idle (see [`brankas_audit::AuditLog::record`]).
pub(crate) async fn served_inline<T>(
    st: &Arc<AppState>,
    who: &Principal,
    ctx: &ReqCtx,
    what: What,
    work: impl FnOnce(&brankas_engine::Engine, &Principal) -> Result<Admitted<T>, brankas_engine::EngineError>,
) -> Result<T, ApiError> {
    let r = work(&st.engine, who).map_err(ApiError::from);
    finish(st, who, ctx, what, r).await
}

/// Audits a request of an authenticated client that touches no patient.
pub(crate) async fn finish_by(st: &AppState, who: &Principal, ctx: &ReqCtx, what: What, status: u16, why: Option<String>) -> Result<(), ApiError> {
    finish_plain(st, who.client_id(), who.role().as_str(), ctx, what, status, why).await
}

/// Audits a request that touches no patient (token issuance, client administration).
pub(crate) async fn finish_plain(st: &AppState, client_id: &str, role: &str, ctx: &ReqCtx, what: What, status: u16, why: Option<String>) -> Result<(), ApiError> {
    let entry = AuditEntry {
        interaction: what.interaction.into(),
        action: what.action.into(),
        outcome: Some(Outcome::of_status(status)),
        outcome_text: why,
        status,
        client_id: client_id.chars().take(128).collect(),
        role: role.into(),
        address: ctx.address.clone(),
        request_id: ctx.request_id.clone(),
        target: what.target,
        ..Default::default()
    };
    commit(st, vec![NewRecord { partition: None, client_id: client_id.chars().take(128).collect(), entry }]).await
}

// ----- reading the log -----

const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 200;
/// Records examined at most for one page of a filtered search.
const MAX_SCAN: usize = 20_000;

/// `GET /fhir/AuditEvent`: security officers search the whole log; a patient's client sees
/// its own patient's accesses, in plain words.
pub(crate) async fn search(st: Arc<AppState>, who: Principal, ctx: ReqCtx, pairs: Vec<(String, String)>) -> Result<Response, ApiError> {
    let what = What::new("audit-read", "E", Some("AuditEvent".into())).with_query(&pairs);
    let result = search_inner(&st, &who, &pairs).await;
    // Reading the log is itself audited: one record per patient whose accesses were shown.
    let shown: Vec<Value> = match &result {
        Ok((_, patients)) => patients.iter().map(|p| json!({"resourceType": "Patient", "id": p})).collect(),
        Err(_) => Vec::new(),
    };
    let recs = match &result {
        Ok(_) => records(&st, &who, &ctx, &what, 200, None, &shown.iter().collect::<Vec<_>>()),
        Err(e) => records(&st, &who, &ctx, &what, e.status.as_u16(), Some(e), &[]),
    };
    commit(&st, recs).await?;
    let (bundle, _) = result?;
    Ok(crate::handlers::json_response(StatusCode::OK, &bundle))
}

struct Filter {
    since: Option<i64>,
    until: Option<i64>,
    action: Option<String>,
    outcome: Option<String>,
    subtype: Option<String>,
    agent: Option<String>,
    /// `Type/id` of a record touched.
    entity: Option<String>,
}

impl Filter {
    fn keeps(&self, o: &brankas_audit::Opened) -> bool {
        self.since.is_none_or(|s| o.time_us >= s)
            && self.until.is_none_or(|u| o.time_us < u)
            && self.action.as_ref().is_none_or(|a| *a == o.entry.action)
            && self.outcome.as_ref().is_none_or(|c| o.entry.outcome.is_some_and(|x| x.code() == c))
            && self.subtype.as_ref().is_none_or(|s| *s == o.entry.interaction)
            && self.agent.as_ref().is_none_or(|a| *a == o.entry.client_id)
            && self.entity.as_ref().is_none_or(|r| {
                // A write-ahead record names the version written (`Type/id/_history/v`).
                let version_of = |x: &String| x.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with("/_history/"));
                o.entry.resources.iter().any(|x| x == r || version_of(x))
                    || o.entry.target.as_ref() == Some(r)
                    || o.entry.patient.as_ref().is_some_and(|p| *r == format!("Patient/{p}"))
            })
    }
}

/// Parses a FHIR date(time) search value with a prefix into a bound in microseconds.
fn date_bound(v: &str) -> Result<(String, i64, i64), ApiError> {
    let bad = || ApiError::bad_request("date must be a FHIR date or dateTime with an optional prefix (ge, gt, le, lt, eq)");
    let (prefix, rest) = match v.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p.to_string(), &v[2..]),
        _ => ("eq".to_string(), v),
    };
    // A date covers its whole (UTC) day; a dateTime the one microsecond it names.
    let start = brankas_audit::breach::parse_time(rest).ok_or_else(bad)?;
    let end = if rest.len() == 10 { start + 86_400_000_000 } else { start + 1 };
    Ok((prefix, start, end))
}

/// The search parameters of the audit log's own AuditEvent search (besides `_count` and the
/// `_before` of its paging links); the CapabilityStatement lists these.
pub(crate) const SEARCH_PARAMS: [&str; 7] = ["patient", "agent", "entity", "date", "action", "outcome", "subtype"];

async fn search_inner(st: &Arc<AppState>, who: &Principal, pairs: &[(String, String)]) -> Result<(Value, Vec<String>), ApiError> {
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !SEARCH_PARAMS.contains(&k.as_str()) && !matches!(k.as_str(), "_count" | "_before")) {
        return Err(ApiError::bad_request(format!("AuditEvent search does not support the parameter {}", k.chars().take(40).collect::<String>())));
    }
    let patient = param("patient").map(|p| p.strip_prefix("Patient/").unwrap_or(&p).to_string());
    let plain = match who.role() {
        Role::SecurityOfficer => false,
        Role::Patient => {
            let own = who.patient().and_then(|p| p.strip_prefix("Patient/")).map(String::from);
            if patient.is_none() || patient != own {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "a patient's client reads the access history of its own patient only (patient=<own id>)"));
            }
            true
        }
        _ => return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the audit log is read by security officers, and by patients for their own record")),
    };
    if !who.scopes().permits("AuditEvent", 's') && !who.scopes().permits("AuditEvent", 'r') {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "no scope grants search on AuditEvent"));
    }
    if let Some(p) = &patient
        && !brankas_fhir::is_valid_id(p)
    {
        return Err(ApiError::bad_request("patient must be a Patient id"));
    }
    let mut f = Filter { since: None, until: None, action: param("action"), outcome: param("outcome"), subtype: param("subtype"), agent: None, entity: param("entity") };
    for (k, v) in pairs.iter().filter(|(k, _)| k == "date") {
        let _ = k;
        let (prefix, start, end) = date_bound(v)?;
        match prefix.as_str() {
            "ge" => f.since = Some(start),
            "gt" => f.since = Some(end),
            "le" => f.until = Some(end),
            "lt" => f.until = Some(start),
            _ => {
                f.since = Some(start);
                f.until = Some(end);
            }
        }
    }
    let agent = param("agent");
    if patient.is_some() {
        f.agent = agent.clone();
    }
    let count = param("_count").and_then(|c| c.parse::<usize>().ok()).unwrap_or(DEFAULT_COUNT).clamp(1, MAX_COUNT);
    let mut before = match param("_before") {
        Some(b) => Some(b.parse::<u64>().map_err(|_| ApiError::bad_request("_before must be a position from a next link"))?),
        None => None,
    };
    let st2 = st.clone();
    let since = f.since;
    let partition = patient.as_ref().map(|p| st.engine.patient_partition(p));
    let (found, next) = tokio::task::spawn_blocking(move || -> Result<(Vec<brankas_audit::Opened>, Option<u64>), brankas_audit::AuditError> {
        let mut out = Vec::new();
        let mut scanned = 0;
        loop {
            let page = match (&partition, &agent) {
                (Some(p), _) => st2.audit.by_partition(p, before, 500)?,
                (None, Some(a)) => st2.audit.by_client(a, before, 500)?,
                (None, None) => st2.audit.latest(before, 500)?,
            };
            let done = page.len() < 500;
            for o in page {
                before = Some(o.seq);
                scanned += 1;
                if f.since.is_some_and(|s| o.time_us < s) {
                    return Ok((out, None));
                }
                if f.keeps(&o) {
                    out.push(o);
                    if out.len() == count {
                        return Ok((out, before.filter(|b| *b > 0)));
                    }
                }
            }
            if done {
                return Ok((out, None));
            }
            if scanned >= MAX_SCAN {
                return Ok((out, before));
            }
        }
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
    .map_err(|e| {
        tracing::error!(error = %e, "reading the audit log failed");
        match e {
            brankas_audit::AuditError::Integrity => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "an audit record failed its integrity check"),
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the audit log cannot be read"),
        }
    })?;
    let mut names = Names::default();
    let mut patients: Vec<String> = Vec::new();
    let base = &st.base_url;
    let entries: Vec<Value> = found
        .iter()
        .map(|o| {
            if let Some(p) = &o.entry.patient
                && !patients.contains(p)
            {
                patients.push(p.clone());
            }
            let mut ev = render(o, patient.as_deref());
            if plain {
                ev["text"] = json!({"status": "generated", "div": plain_words(o, &mut names, st)});
            }
            json!({"fullUrl": format!("{base}/AuditEvent/{}", o.seq), "resource": ev, "search": {"mode": "match"}})
        })
        .collect();
    if let Some(p) = &patient
        && !patients.contains(p)
        && !found.is_empty()
    {
        patients.push(p.clone());
    }
    let mut links = Vec::new();
    if let Some(n) = next {
        let mut q: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_before").cloned().collect();
        q.push(("_before".into(), n.to_string()));
        let qs = form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish();
        links.push(json!({"relation": "next", "url": format!("{base}/AuditEvent?{qs}")}));
    }
    let mut entries = entries;
    // The search reached the oldest held record: say that older ones were archived.
    if next.is_none() {
        let s = st.clone();
        let held = tokio::task::spawn_blocking(move || s.audit.held_from()).await.ok().and_then(Result::ok).flatten();
        if let Some((first, t)) = held.filter(|(_, t)| since.is_none_or(|since| since < *t)) {
            let text = format!("audit records before position {first} (written before {}) are archived (brankas audit archive) and were not searched", instant(t));
            entries.push(json!({"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": text}]}, "search": {"mode": "outcome"}}));
        }
    }
    let mut b = json!({"resourceType": "Bundle", "type": "searchset", "entry": entries});
    if !links.is_empty() {
        b["link"] = Value::Array(links);
    }
    Ok((b, patients))
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn instant(us: i64) -> String {
    brankas_engine::instant(us)
}

/// One record as a FHIR R4 AuditEvent following IHE Basic Audit Log Patterns.
fn render(o: &brankas_audit::Opened, queried_patient: Option<&str>) -> Value {
    let e = &o.entry;
    let (subtype, profile) = match e.interaction.as_str() {
        "read" => ("read", Some("PatientRead")),
        "vread" => ("vread", Some("PatientRead")),
        "history" => ("history-instance", Some("PatientRead")),
        "search" | "lookup" | "worklist" => ("search-type", Some("PatientQuery")),
        "everything" => ("operation", Some("PatientRead")),
        "create" => ("create", Some("PatientCreate")),
        "update" => ("update", Some("PatientUpdate")),
        "patch" => ("patch", Some("PatientUpdate")),
        "delete" => ("delete", Some("PatientDelete")),
        "transaction" => ("transaction", None),
        "batch" => ("batch", None),
        other => (other, None),
    };
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": o.seq.to_string(),
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful Operation"),
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": e.action,
        "recorded": instant(o.time_us),
        "source": {
            "observer": {"display": "Brankas"},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")]
        },
    });
    if let Some(p) = profile.filter(|_| e.patient.is_some() || queried_patient.is_some()) {
        ev["meta"] = json!({"profile": [format!("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.{p}")]});
    }
    // A record written ahead of a write has no outcome yet (its request's own record follows).
    if let Some(x) = e.outcome {
        ev["outcome"] = json!(x.code());
    }
    if let Some(t) = &e.outcome_text {
        ev["outcomeDesc"] = json!(t);
    }
    if let Some(p) = &e.purpose {
        ev["purposeOfEvent"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}]}]);
    }
    let mut client = json!({
        "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")]},
        "who": {"identifier": {"system": "urn:brankas:client", "value": e.client_id}},
        "requestor": true,
        "role": [{"text": e.role}],
    });
    if let Some(a) = &e.address {
        client["network"] = json!({"address": a, "type": "2"});
    }
    let mut agents = vec![client];
    if let Some(p) = &e.practitioner {
        agents.push(json!({"type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "AUT", "author (originator)")]}, "who": {"reference": p}, "requestor": true}));
    }
    if let Some(p) = &e.acting_patient {
        agents.push(json!({"who": {"reference": p}, "requestor": true, "role": [{"text": "the patient"}]}));
    }
    if let Some(org) = &e.organization {
        agents.push(json!({"type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV", "healthcare provider")]}, "who": {"reference": org}, "requestor": false}));
    }
    if let Some(r) = &e.break_glass {
        agents[0]["purposeOfUse"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass"}], "text": r}]);
    }
    ev["agent"] = Value::Array(agents);
    let mut entities = Vec::new();
    if let Some(p) = e.patient.as_deref().or(if o.partition.is_some() { queried_patient } else { None }) {
        entities.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
        }));
    }
    for r in &e.resources {
        // The patient is named above; a version of the Patient written is named here.
        if r.starts_with("Patient/") && !r.contains("/_history/") {
            continue;
        }
        entities.push(json!({
            "what": {"reference": r},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"),
        }));
    }
    if !e.query.is_empty() {
        entities.push(json!({
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query"),
            "description": format!("search parameters: {}", e.query.join(", ")),
        }));
    }
    entities.push(json!({
        "what": {"identifier": {"value": e.request_id}},
        "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
    }));
    ev["entity"] = Value::Array(entities);
    ev
}

/// Facility names, looked up once per page.
#[derive(Default)]
struct Names(BTreeMap<String, String>);

impl Names {
    fn of(&mut self, st: &AppState, org: &str) -> String {
        if let Some(n) = self.0.get(org) {
            return n.clone();
        }
        let name = org
            .strip_prefix("Organization/")
            .and_then(|id| st.engine.directory_entry("Organization", id).ok().flatten())
            .and_then(|s| s.resource.get("name").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| org.to_string());
        self.0.insert(org.to_string(), name.clone());
        name
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Categories of data in words a person understands: (Indonesian, English).
fn category(resource_type: &str) -> (&'static str, &'static str) {
    match resource_type {
        "Patient" | "RelatedPerson" => ("identitas dan kontak", "identity and contact details"),
        "Encounter" | "EpisodeOfCare" | "Appointment" => ("kunjungan", "visits"),
        "Condition" | "AllergyIntolerance" | "ClinicalImpression" => ("keluhan dan diagnosis", "complaints and diagnoses"),
        "Observation" | "DiagnosticReport" | "Specimen" => ("hasil pemeriksaan (laboratorium, antigen, EKG)", "test results (laboratory, antigen, EKG)"),
        "ImagingStudy" | "Media" => ("gambar medis dan foto", "medical images and photos"),
        "DocumentReference" | "Binary" | "Composition" => ("dokumen", "documents"),
        "Consent" => ("persetujuan", "consents"),
        "ServiceRequest" | "ReferralRequest" => ("rujukan dan permintaan pemeriksaan", "referrals and orders"),
        "MedicationRequest" | "MedicationStatement" | "MedicationAdministration" | "MedicationDispense" | "Immunization" => ("obat dan imunisasi", "medicines and immunisations"),
        "Procedure" => ("tindakan", "procedures"),
        _ => ("catatan medis lainnya", "other medical records"),
    }
}

/// A patient's view of one access: who (kind of professional, facility), when, what kind of
/// data, why, break-glass, and whether it was refused.
fn plain_words(o: &brankas_audit::Opened, names: &mut Names, st: &AppState) -> String {
    let e = &o.entry;
    let when = instant(o.time_us);
    let (who_id, who_en) = match e.role.as_str() {
        "clinician" => ("Seorang tenaga kesehatan", "A health professional"),
        "facility-system" => ("Sistem informasi", "The information system"),
        "patient" => ("Anda (aplikasi pasien)", "You (your patient app)"),
        "security-officer" => ("Petugas keamanan data", "A data security officer"),
        _ => ("Sebuah layanan", "A service"),
    };
    let place = e.organization.as_deref().map(|o| names.of(st, o));
    let (verb_id, verb_en) = match e.action.as_str() {
        "C" => ("menambahkan", "added"),
        "U" => ("mengubah", "changed"),
        "D" => ("menghapus", "deleted"),
        "E" if e.interaction == "audit-read" => ("melihat riwayat akses", "viewed the access history of"),
        _ => ("melihat", "viewed"),
    };
    let mut types: Vec<&str> = e.resource_types();
    if types.is_empty()
        && let Some(t) = e.target.as_deref().and_then(|t| t.split('/').next())
    {
        types.push(t);
    }
    let mut cats: Vec<(&str, &str)> = types.iter().map(|t| category(t)).collect();
    cats.sort();
    cats.dedup();
    let what_id = cats.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
    let what_en = cats.iter().map(|c| c.1).collect::<Vec<_>>().join(", ");
    let at_id = place.as_ref().map(|p| format!(" di {}", escape(p))).unwrap_or_default();
    let at_en = place.as_ref().map(|p| format!(" at {}", escape(p))).unwrap_or_default();
    let ahead = e.outcome.is_none();
    let refused = !ahead && e.outcome != Some(Outcome::Success);
    let mut id = format!("{when}: {who_id}{at_id} {}{verb_id} data Anda: {}.", if refused { "mencoba " } else { "" }, escape(&what_id));
    let mut en = format!("{when}: {who_en}{at_en} {}{verb_en} your {}.", if refused { "tried to have " } else { "" }, escape(&what_en));
    if ahead {
        id.push_str(" (Dicatat sebelum perubahan disimpan.)");
        en.push_str(" (Recorded before the change was stored.)");
    }
    if refused {
        id.push_str(" Akses ini ditolak.");
        en.push_str(" This access was refused.");
    }
    if let Some(r) = &e.break_glass {
        id.push_str(&format!(" Akses darurat (break-glass) dengan alasan: \u{201c}{}\u{201d}.", escape(r)));
        en.push_str(&format!(" Emergency access (break-glass), reason given: \u{201c}{}\u{201d}.", escape(r)));
    } else if let Some(p) = &e.purpose {
        let (pid, pen) = match p.as_str() {
            "TREAT" => ("untuk perawatan", "for treatment"),
            "ETREAT" => ("untuk perawatan darurat", "for emergency treatment"),
            "PATRQT" => ("atas permintaan Anda", "at your request"),
            _ => ("", ""),
        };
        if !pid.is_empty() {
            id = format!("{} {pid}.", id.trim_end_matches('.'));
            en = format!("{} {pen}.", en.trim_end_matches('.'));
        }
    }
    format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p lang=\"id\">{id}</p><p lang=\"en\">{en}</p></div>")
}

// ----- checkpoint and proofs -----

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/audit/checkpoint", get(checkpoint))
        .route("/admin/audit/proof", get(proof))
        .route("/admin/audit/consistency", get(consistency))
        .route("/admin/breach-report", get(breach_report))
}

#[derive(serde::Deserialize)]
struct BreachParams {
    client: Option<String>,
    /// An administrator (or any client): the clients it registered or approved.
    admin: Option<String>,
    address: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
    lang: Option<String>,
    contact: Option<String>,
}

/// `GET /admin/breach-report?client=ID|admin=ID|address=IP&since=T[&until=T][&format=json|csv][&lang=id|en][&contact=TEXT]`:
/// "who was hit?", for security officers. `admin=ID` covers the clients that administrator
/// registered or approved (and those they registered in turn). The report reveals
/// identities, so each patient in it is an audited disclosure to the officer, counted against
/// the officer's own patient budget like any other (past it: 429 and suspension) and
/// alerted (`breach-report`).
async fn breach_report(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Query(q): Query<BreachParams>) -> Result<Response, ApiError> {
    use brankas_audit::breach::{self, BreachQuery, Identity, Suspect};
    let what = What::new("breach-report", "E", None);
    let r = async {
        if who.role() != Role::SecurityOfficer {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "breach reports are for security officers"));
        }
        let suspect = match (&q.client, &q.address, &q.admin) {
            (Some(c), None, None) => Suspect::Client(c.chars().take(128).collect()),
            (None, Some(a), None) => Suspect::Address(a.chars().take(64).collect()),
            (None, None, Some(a)) => {
                let a: String = a.chars().take(128).collect();
                let (auth, id) = (st.auth.clone(), a.clone());
                let ids = tokio::task::spawn_blocking(move || auth.descendants(&id))
                    .await
                    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
                    .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the client registry cannot be read"))?;
                Suspect::Clients { label: format!("administrator {a} and the clients it registered or approved"), ids }
            }
            _ => return Err(ApiError::bad_request("give exactly one of client, admin and address")),
        };
        let since_us = q.since.as_deref().and_then(breach::parse_time).ok_or_else(|| ApiError::bad_request("since is required: RFC 3339 or YYYY-MM-DD"))?;
        let until_us = match q.until.as_deref() {
            Some(u) => Some(breach::parse_time(u).ok_or_else(|| ApiError::bad_request("until must be RFC 3339 or YYYY-MM-DD"))?),
            None => None,
        };
        let format = q.format.clone().unwrap_or_else(|| "json".into());
        let lang = q.lang.clone().unwrap_or_else(|| "id".into());
        if !matches!(format.as_str(), "json" | "csv") || !matches!(lang.as_str(), "id" | "en") {
            return Err(ApiError::bad_request("format is json or csv, lang is id or en"));
        }
        let contact = q.contact.clone().unwrap_or_else(|| "the data protection officer of the health facility".into()).chars().take(500).collect();
        let bq = BreachQuery { suspect, since_us, until_us, contact };
        let (s, officer) = (st.clone(), who.clone());
        let report = tokio::task::spawn_blocking(move || {
            // Each identity the report reveals is a disclosure to the officer: gathered here,
            // it passes the guard (the officer's own patient budget, suspension past it) and
            // the audit like any other before the report is released.
            let revealed = std::cell::RefCell::new(brankas_engine::Admitted::nothing(()));
            let report = breach::breach_report(
                &s.audit,
                &bq,
                |id| {
                    let a = s.engine.breach_identity(&officer, id).ok().flatten()?;
                    let identity = Identity::from_patient(&a.unreleased().resource);
                    revealed.borrow_mut().take(a);
                    Some(identity)
                },
                |id| s.store.canaries_among(&[s.engine.patient_partition(id)]).is_ok_and(|c| !c.is_empty()),
            );
            report.map(|r| revealed.into_inner().map(|()| r))
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
        .map_err(audit_error)?;
        Ok(report.map(|r| (r, format, lang)))
    }
    .await;
    let (report, format, lang) = finish(&st, &who, &ctx, what, r).await?;
    if !report.patients.is_empty() {
        let detail = json!({"officer": who.client_id(), "patients_revealed": report.patients.len(), "suspect": report.suspect});
        crate::guard::raise(&st, "breach-report", "medium", Some(who.client_id()), detail);
    }
    if format == "csv" {
        let mut resp = (StatusCode::OK, report.to_csv(&lang)).into_response();
        resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("text/csv; charset=utf-8"));
        return Ok(resp);
    }
    Ok(plain_json(&serde_json::to_value(&report).unwrap_or_default()))
}

fn officer(who: &Principal) -> Result<(), ApiError> {
    if matches!(who.role(), Role::SecurityOfficer | Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the audit log's checkpoints and proofs are for security officers and administrators"))
    }
}

fn b64(h: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

fn audit_error(e: brankas_audit::AuditError) -> ApiError {
    match e {
        brankas_audit::AuditError::OutOfRange => ApiError::bad_request("no such position or tree size in the audit log"),
        brankas_audit::AuditError::Integrity => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "the audit log failed an integrity check"),
        brankas_audit::AuditError::Archived { first } => ApiError::new(
            StatusCode::GONE,
            "not-found",
            format!("the audit records before position {first} are archived (brankas audit archive); proofs that need them are made from the archive"),
        ),
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the audit log cannot be read"),
    }
}

fn plain_json(v: &Value) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    r
}

/// `GET /admin/audit/checkpoint`: the newest signed checkpoint, to publish elsewhere.
async fn checkpoint(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx) -> Result<Response, ApiError> {
    let r = async {
        officer(&who)?;
        let s = st.clone();
        let cp = tokio::task::spawn_blocking(move || s.audit.latest_checkpoint()).await.map_err(|_| ApiError::not_found())?.map_err(audit_error)?;
        let cp = cp.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not-found", "no checkpoint has been signed yet"))?;
        Ok::<_, ApiError>(plain_json(&json!({
            "origin": st.audit.origin(), "size": cp.size, "recorded": instant(cp.time_us), "note": cp.note,
            "verifier_key": brankas_audit::note::verifier_key(st.audit.origin(), &st.audit.public_key()),
        })))
    }
    .await;
    admin_audited(&st, &who, &ctx, "audit-checkpoint", r).await
}

#[derive(serde::Deserialize)]
struct ProofQuery {
    seq: Option<u64>,
    size: Option<u64>,
    from: Option<u64>,
    to: Option<u64>,
}

/// `GET /admin/audit/proof?seq=N&size=M`: the inclusion proof of record N in the tree of size M.
async fn proof(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Query(q): Query<ProofQuery>) -> Result<Response, ApiError> {
    let r = async {
        officer(&who)?;
        let (seq, size) = (q.seq.ok_or_else(|| ApiError::bad_request("seq is required"))?, q.size.ok_or_else(|| ApiError::bad_request("size is required"))?);
        let s = st.clone();
        let (leaf, p, root) =
            tokio::task::spawn_blocking(move || Ok::<_, brankas_audit::AuditError>((s.audit.leaf_hash(seq)?, s.audit.inclusion_proof(seq, size)?, s.audit.root(size)?)))
                .await
                .map_err(|_| ApiError::not_found())?
                .map_err(audit_error)?;
        Ok(plain_json(&json!({"seq": seq, "size": size, "leaf_hash": b64(&leaf), "root": b64(&root), "proof": p.hashes.iter().map(|h| b64(h)).collect::<Vec<_>>()})))
    }
    .await;
    admin_audited(&st, &who, &ctx, "audit-proof", r).await
}

/// `GET /admin/audit/consistency?from=M&to=N`: the consistency proof between two tree sizes.
async fn consistency(State(st): St, Extension(who): Extension<Principal>, ctx: ReqCtx, Query(q): Query<ProofQuery>) -> Result<Response, ApiError> {
    let r = async {
        officer(&who)?;
        let (from, to) = (q.from.ok_or_else(|| ApiError::bad_request("from is required"))?, q.to.ok_or_else(|| ApiError::bad_request("to is required"))?);
        let s = st.clone();
        let (p, old, new) = tokio::task::spawn_blocking(move || Ok::<_, brankas_audit::AuditError>((s.audit.consistency_proof(from, to)?, s.audit.root(from)?, s.audit.root(to)?)))
            .await
            .map_err(|_| ApiError::not_found())?
            .map_err(audit_error)?;
        Ok(plain_json(&json!({"from": from, "to": to, "from_root": b64(&old), "to_root": b64(&new), "proof": p.hashes.iter().map(|h| b64(h)).collect::<Vec<_>>()})))
    }
    .await;
    admin_audited(&st, &who, &ctx, "audit-proof", r).await
}

async fn admin_audited(st: &AppState, who: &Principal, ctx: &ReqCtx, interaction: &'static str, r: Result<Response, ApiError>) -> Result<Response, ApiError> {
    let (status, why) = match &r {
        Ok(_) => (200, None),
        Err(e) => (e.status.as_u16(), Some(e.message.clone())),
    };
    finish_by(st, who, ctx, What::new(interaction, "R", None), status, why).await?;
    r
}
