//! The guard (invariant 7): before a response discloses patients, canaries and the client's
//! patient budget are checked, in state shared through the store (so every replica enforces
//! one budget). Touching a canary, or exceeding the budget, refuses the response, suspends
//! the client (effective on its very next request, on every replica: each request re-reads
//! the registration) and raises an alert. Also `GET /admin/alerts`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use brankas_auth::{OnExceed, Principal, Role};
use brankas_store::AlertRow;
use serde_json::{Value, json};

use crate::AppState;
use crate::outcome::ApiError;

/// Break-glass grants a client may make in a day before its alerts become `high`.
pub const BREAK_GLASS_PER_DAY: u32 = 3;
/// Failed authentications from one address within [`FAILURE_WINDOW`] that lock the address
/// out of the token endpoint.
pub const FAILURES_TO_LOCK: u32 = 10;
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// The first lockout; each further one doubles, up to an hour.
const FIRST_LOCKOUT: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_LOCKOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Addresses tracked at most (failures); beyond, stale entries are dropped.
const MAX_TRACKED: usize = 100_000;

/// Per-replica state of the guard: failed authentications per address (and lockouts), and
/// the (client, address) pairs already recorded in the store.
#[derive(Default)]
pub struct GuardState {
    failures: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Failures>>,
    seen: std::sync::Mutex<std::collections::HashSet<(String, std::net::IpAddr)>>,
    /// Per client: token bucket (tokens, last refill) and requests in progress.
    rates: std::sync::Mutex<std::collections::HashMap<String, Rate>>,
    /// The (client, patient) pairs this replica had admitted in the current clock hour (the
    /// hour it holds): counted in the shared store for this hour and day, and checked
    /// against the canaries, when first admitted.
    admitted: std::sync::Mutex<(i64, std::collections::HashSet<(String, brankas_store::PartitionId)>)>,
}

struct Rate {
    tokens: f64,
    at: std::time::Instant,
    inflight: u32,
}

/// A request in progress; dropping it frees its concurrency slot.
pub(crate) struct InFlight<'a> {
    state: &'a GuardState,
    client: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.state.rates.lock()
            && let Some(r) = m.get_mut(&self.client)
        {
            r.inflight = r.inflight.saturating_sub(1);
        }
    }
}

impl GuardState {
    /// Admits one request of `client` under its limits, or says how long to wait.
    pub(crate) fn start(&self, client: &str, l: brankas_auth::RateLimits) -> Result<InFlight<'_>, ApiError> {
        let mut m = self.rates.lock().map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "busy"))?;
        let now = std::time::Instant::now();
        if m.len() >= MAX_TRACKED {
            m.retain(|_, r| r.inflight > 0);
        }
        let r = m.entry(client.to_string()).or_insert(Rate { tokens: f64::from(l.burst), at: now, inflight: 0 });
        r.tokens = (r.tokens + (now - r.at).as_secs_f64() * f64::from(l.requests_per_second)).min(f64::from(l.burst));
        r.at = now;
        if r.inflight >= l.max_concurrent {
            return Err(ApiError::throttled(format!("more than {} requests at once for this client", l.max_concurrent), 1));
        }
        if r.tokens < 1.0 {
            let wait = ((1.0 - r.tokens) / f64::from(l.requests_per_second.max(1))).ceil().max(1.0);
            return Err(ApiError::throttled(format!("request rate above {} per second for this client", l.requests_per_second), wait as u64));
        }
        r.tokens -= 1.0;
        r.inflight += 1;
        Ok(InFlight { state: self, client: client.to_string() })
    }
}

struct Failures {
    count: u32,
    since: std::time::Instant,
    locked_until: Option<std::time::Instant>,
    lockouts: u32,
}

impl GuardState {
    /// Seconds an address is still locked out of the token endpoint.
    pub(crate) fn locked(&self, addr: std::net::IpAddr) -> Option<u64> {
        let map = self.failures.lock().ok()?;
        let until = map.get(&addr)?.locked_until?;
        let now = std::time::Instant::now();
        (until > now).then(|| (until - now).as_secs().max(1))
    }

    /// Counts a failed authentication; returns the lockout it started, if any.
    pub(crate) fn failed(&self, addr: std::net::IpAddr) -> Option<(u32, std::time::Duration)> {
        let mut map = self.failures.lock().ok()?;
        let now = std::time::Instant::now();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now - f.since < FAILURE_WINDOW);
        }
        let f = map.entry(addr).or_insert(Failures { count: 0, since: now, locked_until: None, lockouts: 0 });
        if now - f.since >= FAILURE_WINDOW {
            f.count = 0;
            f.since = now;
        }
        f.count += 1;
        if f.count >= FAILURES_TO_LOCK && f.locked_until.is_none_or(|u| u <= now) {
            let lock = (FIRST_LOCKOUT * 2u32.saturating_pow(f.lockouts.min(12))).min(MAX_LOCKOUT);
            f.locked_until = Some(now + lock);
            f.lockouts += 1;
            let n = f.count;
            f.count = 0;
            f.since = now;
            return Some((n, lock));
        }
        None
    }
}

/// A failed authentication from `addr`: counted, and a lockout raises an alert.
pub(crate) fn auth_failed(st: &AppState, addr: Option<std::net::IpAddr>) {
    let Some(addr) = addr else { return };
    if let Some((n, lock)) = st.guard.failed(addr) {
        raise(st, "auth-failures", "high", None, json!({"address": addr.to_string(), "failures": n, "window_seconds": FAILURE_WINDOW.as_secs(), "locked_seconds": lock.as_secs()}));
    }
}

/// A client seen at an address: the first time at a new one (after others) raises an alert.
pub(crate) async fn seen_at(st: &AppState, client_id: &str, addr: Option<std::net::IpAddr>) {
    let Some(addr) = addr else { return };
    let key = (client_id.to_string(), addr);
    if st.guard.seen.lock().is_ok_and(|s| s.contains(&key)) {
        return;
    }
    let store = st.store.clone();
    let (c, a) = (client_id.to_string(), addr.to_string());
    let r = tokio::task::spawn_blocking(move || store.guard_address(&c, &a, now_us())).await;
    if let Ok(Ok((new, others))) = r {
        if new && others > 0 {
            raise(st, "new-address", "medium", Some(client_id), json!({"address": addr.to_string(), "addresses_seen_before": others}));
        }
        if let Ok(mut s) = st.guard.seen.lock() {
            if s.len() >= MAX_TRACKED {
                s.clear();
            }
            s.insert(key);
        }
    }
}

/// Break-glass grants of a request (and grants for a registered purpose of use other than
/// treatment, handled alike): each raises an alert, `high` past the daily threshold.
pub(crate) async fn break_glass(st: &AppState, who: &Principal) {
    let grants = who.trail().take_break_glass();
    if grants == 0 {
        return;
    }
    let store = st.store.clone();
    let c = who.client_id().to_string();
    let (_, day) = windows();
    let mut n = 0;
    for _ in 0..grants {
        let (store, c) = (store.clone(), c.clone());
        n = tokio::task::spawn_blocking(move || store.guard_bump(&c, "break-glass", day)).await.ok().and_then(Result::ok).unwrap_or(n + 1);
    }
    break_glass_alert(st, who, n);
}

/// [`break_glass`] on a blocking thread.
pub(crate) fn break_glass_blocking(st: &AppState, who: &Principal) {
    let grants = who.trail().take_break_glass();
    if grants == 0 {
        return;
    }
    let (_, day) = windows();
    let mut n = 0;
    for _ in 0..grants {
        n = st.store.guard_bump(who.client_id(), "break-glass", day).unwrap_or(n + 1);
    }
    break_glass_alert(st, who, n);
}

/// The alert of a request's break-glass grants: `high` once the client's grants today pass
/// the threshold.
fn break_glass_alert(st: &AppState, who: &Principal, n: u32) {
    let severity = if n > BREAK_GLASS_PER_DAY { "high" } else { "medium" };
    raise(
        st,
        "break-glass",
        severity,
        Some(who.client_id()),
        json!({"grants_today": n, "threshold": BREAK_GLASS_PER_DAY, "reason_given": who.break_glass_reason().is_some(), "purpose": who.purpose()}),
    );
}

const US_PER_HOUR: i64 = 3_600_000_000;
const US_PER_DAY: i64 = 86_400_000_000;

/// The budget windows now: (clock hour, UTC day), as the store counts them.
pub(crate) fn windows() -> (i64, i64) {
    let now = now_us();
    (now.div_euclid(US_PER_HOUR), now.div_euclid(US_PER_DAY))
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Proof that the guard admitted a response's disclosure: the audit records of a served
/// answer are made only with one (see `audit::finish`). Only [`admit`] makes it.
pub(crate) struct Cleared {
    _private: (),
}

fn suspended_error() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "security", "this credential has been suspended; contact the data protection officer")
}

/// Raises an alert: stored, and logged without patient data.
pub(crate) fn raise(st: &AppState, kind: &str, severity: &str, client_id: Option<&str>, detail: Value) {
    tracing::warn!(alert = kind, severity, client_id = client_id.unwrap_or(""), "security alert");
    st.metrics.alert(kind);
    let row = AlertRow { id: 0, time_us: now_us(), kind: kind.into(), severity: severity.into(), client_id: client_id.map(String::from), detail: detail.to_string() };
    let id = match st.store.alert_add(&row) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(error = %e, alert = kind, "an alert could not be stored");
            None
        }
    };
    if let Some(w) = &st.webhook {
        w.send(json!({"id": id, "time": brankas_engine::instant(row.time_us), "kind": kind, "severity": severity, "client_id": client_id, "detail": detail}));
    }
}

/// Checks what a response would disclose (the engine's disclosure: every patient the access
/// checks admitted into the answer, however it is later trimmed or counted). `Err` replaces
/// the response. From async code; [`admit_blocking`] is the same on a blocking thread.
pub(crate) async fn admit(st: &AppState, who: &Principal, disclosure: &brankas_engine::Disclosure) -> Result<Cleared, ApiError> {
    if already_admitted(st, who, disclosure) {
        return Ok(Cleared { _private: () });
    }
    let parts = disclosure.partitions();
    let Some(budget) = who.budget() else { return no_budget() };
    let (store, auth, client, p) = (st.store.clone(), st.auth.clone(), who.client_id().to_string(), parts.clone());
    let (hour, day) = windows();
    let verdict = tokio::task::spawn_blocking(move || verdict_of(&*store, &auth, &client, &p, budget, hour, day))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?;
    conclude(st, who, verdict, parts, hour)
}

/// [`admit`] on a blocking thread (the request's one blocking task).
pub(crate) fn admit_blocking(st: &AppState, who: &Principal, disclosure: &brankas_engine::Disclosure) -> Result<Cleared, ApiError> {
    if already_admitted(st, who, disclosure) {
        return Ok(Cleared { _private: () });
    }
    let parts = disclosure.partitions();
    let Some(budget) = who.budget() else { return no_budget() };
    let (hour, day) = windows();
    let verdict = verdict_of(&*st.store, &st.auth, who.client_id(), &parts, budget, hour, day);
    conclude(st, who, verdict, parts, hour)
}

/// Clients without a budget reach no patient data; a disclosure for one is refused.
fn no_budget() -> Result<Cleared, ApiError> {
    tracing::error!("a disclosure for a client without a patient budget was refused");
    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this client reaches no patient data"))
}

/// Whether every patient of `disclosure` was admitted for this client by this replica in the
/// current hour: then nothing can change. Each was counted in the shared store for this hour
/// and its day when first admitted (a patient already counted adds nothing to either count,
/// so no budget can be exceeded by it), and was not a canary then; a canary is always a new
/// patient, marked before it exists, so a patient admitted once never becomes one. Suspension
/// is not the guard's to check here: a suspended client's token is refused before any work.
fn already_admitted(st: &AppState, who: &Principal, disclosure: &brankas_engine::Disclosure) -> bool {
    let parts = disclosure.partitions();
    if parts.is_empty() {
        return true;
    }
    if who.budget().is_none() {
        return false;
    }
    let (hour, _) = windows();
    let Ok(cache) = st.guard.admitted.lock() else { return false };
    cache.0 == hour && parts.iter().all(|p| cache.1.contains(&(who.client_id().to_string(), *p)))
}

type Verdict = Result<Option<(&'static str, Value, bool)>, brankas_store::StoreError>;

/// The shared state's verdict on disclosing `parts` to `client` (store reads and writes:
/// blocking): `None` admitted, or why not (and whether the client was suspended).
fn verdict_of(
    store: &dyn brankas_store::Store,
    auth: &brankas_auth::Authority,
    client: &str,
    parts: &[brankas_store::PartitionId],
    budget: brankas_auth::PatientBudget,
    hour: i64,
    day: i64,
) -> Verdict {
    let canaries = store.canaries_among(parts)?;
    if !canaries.is_empty() {
        let _ = auth.suspend(client);
        return Ok(Some(("canary", json!({"canaries_touched": canaries.len(), "action": "suspended"}), true)));
    }
    let a = store.guard_admit(client, hour, day, parts, budget.per_hour, budget.per_day)?;
    if a.admitted {
        return Ok(None);
    }
    let suspend = budget.on_exceed == OnExceed::Suspend;
    if suspend {
        let _ = auth.suspend(client);
    }
    Ok(Some((
        "patient-budget",
        json!({"per_hour": budget.per_hour, "per_day": budget.per_day, "would_be_hour": a.hour, "would_be_day": a.day,
               "action": if suspend { "suspended" } else { "throttled" }}),
        suspend,
    )))
}

/// Acts on a verdict: remembers what was admitted (see [`already_admitted`]), or raises the
/// alert and refuses.
fn conclude(st: &AppState, who: &Principal, verdict: Verdict, parts: Vec<brankas_store::PartitionId>, hour: i64) -> Result<Cleared, ApiError> {
    let verdict = verdict.map_err(|e| {
        tracing::error!(error = %e, "guard state unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "security state unavailable; nothing was served")
    })?;
    match verdict {
        None => {
            if !parts.is_empty()
                && let Ok(mut cache) = st.guard.admitted.lock()
            {
                if cache.0 != hour || cache.1.len() >= MAX_TRACKED {
                    *cache = (hour, Default::default());
                }
                let client = who.client_id().to_string();
                cache.1.extend(parts.into_iter().map(|p| (client.clone(), p)));
            }
            Ok(Cleared { _private: () })
        }
        Some(("canary", detail, _)) => {
            st.metrics.suspension();
            raise(st, "canary", "critical", Some(who.client_id()), detail);
            Err(suspended_error())
        }
        Some((kind, detail, suspended)) => {
            // The hour's budget comes back at the next clock hour, the day's at the next UTC day.
            let day_spent = detail["would_be_day"].as_u64() > detail["per_day"].as_u64();
            let secs = (now_us() / 1_000_000).max(0) as u64;
            let (period, until) = if day_spent { ("UTC day", 86_400 - secs % 86_400) } else { ("hour", 3_600 - secs % 3_600) };
            raise(st, kind, "high", Some(who.client_id()), detail);
            if suspended {
                st.metrics.suspension();
                Err(ApiError::throttled("patient budget exceeded: nothing was served and this credential has been suspended until a security officer reinstates it", until))
            } else {
                Err(ApiError::throttled(format!("patient budget exceeded: nothing was served; try again in the next {period}"), until))
            }
        }
    }
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/admin/alerts", get(alerts)).route("/admin/canaries", axum::routing::post(canaries))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryRequest {
    count: usize,
    organization: Option<String>,
}

/// `POST /admin/canaries` `{"count", "organization"}` (security officers): plants canaries;
/// answers with how many were planted (their ids go to the audit log only).
async fn canaries(State(st): State<Arc<AppState>>, Extension(who): Extension<Principal>, ctx: crate::audit::ReqCtx, body: axum::body::Body) -> Result<Response, ApiError> {
    let r = async {
        if who.role() != Role::SecurityOfficer {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "canaries are planted by security officers"));
        }
        let bytes = axum::body::to_bytes(body, 4096).await.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", "request body too large"))?;
        let q: CanaryRequest = serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request("the body is {\"count\": N, \"organization\": \"Organization/<id>\"}"))?;
        // Planted as the facility's writer, derived from this officer's verified token.
        let org = q.organization.clone().ok_or_else(|| ApiError::bad_request("name the facility: {\"count\": N, \"organization\": \"Organization/<id>\"}"))?;
        let planter = who.canary_planter(&org).ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "forbidden", "canaries are planted by security officers"))?;
        let s = st.clone();
        let ids = tokio::task::spawn_blocking(move || crate::canary::plant(&s.engine, &*s.store, q.count, Some(&org), &planter, &planter))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
            .map_err(ApiError::from)?;
        Ok(ids)
    }
    .await;
    let (status, why) = match &r {
        Ok(_) => (201, None),
        Err(e) => (e.status.as_u16(), Some(e.message.clone())),
    };
    let what = crate::audit::What::new("canary-create", "C", Some(format!("{} canaries", r.as_ref().map_or(0, Vec::len))));
    crate::audit::finish_by(&st, &who, &ctx, what, status, why).await?;
    let ids = r?;
    let mut resp = (StatusCode::CREATED, serde_json::to_vec(&json!({"planted": ids.len()})).unwrap_or_default()).into_response();
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[derive(serde::Deserialize)]
struct AlertQuery {
    before: Option<u64>,
    #[serde(rename = "_count")]
    count: Option<usize>,
}

/// `GET /admin/alerts`: newest first (`_count`, `before=<id>` for the next page).
async fn alerts(State(st): State<Arc<AppState>>, Extension(who): Extension<Principal>, ctx: crate::audit::ReqCtx, Query(q): Query<AlertQuery>) -> Result<Response, ApiError> {
    let r = async {
        if who.role() != Role::SecurityOfficer {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "alerts are for security officers"));
        }
        let s = st.store.clone();
        let rows = tokio::task::spawn_blocking(move || s.alerts(q.before, q.count.unwrap_or(100).clamp(1, 1000)))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal error"))?
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "security state unavailable"))?;
        let items: Vec<Value> = rows
            .iter()
            .map(|a| {
                json!({"id": a.id, "time": brankas_engine::instant(a.time_us), "kind": a.kind, "severity": a.severity, "client_id": a.client_id,
                       "detail": serde_json::from_str::<Value>(&a.detail).unwrap_or(Value::Null)})
            })
            .collect();
        let mut body = json!({"alerts": items});
        if rows.len() >= q.count.unwrap_or(100).clamp(1, 1000)
            && let Some(last) = rows.last()
        {
            body["next"] = json!(format!("/admin/alerts?before={}", last.id));
        }
        let mut resp = (StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()).into_response();
        resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
        Ok(resp)
    }
    .await;
    let (status, why) = match &r {
        Ok(_) => (200, None),
        Err(e) => (e.status.as_u16(), Some(e.message.clone())),
    };
    crate::audit::finish_by(&st, &who, &ctx, crate::audit::What::new("alerts-read", "R", None), status, why).await?;
    r
}
