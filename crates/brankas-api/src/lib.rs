//! The HTTP boundary of Brankas.
//!
//! - [`router`]: the FHIR REST API at `/fhir` (JSON only), the OAuth2 token endpoint
//!   `/auth/token` (client secret or `private_key_jwt`), SMART discovery, `/health` (liveness),
//!   `/health/ready` (readiness: the audit log and the databases, by name), and the
//!   administration API under `/admin` (the client registry).
//! - [`serve`]: the connection lifecycle (HTTPS by default, plain HTTP on request): admission
//!   under global and per-address caps, handshake, idle and body clocks, graceful shutdown,
//!   all in one place.
//! - [`outcome::ApiError`]: the only place errors become OperationOutcome and HTTP statuses.
//!
//! *Architecture invariant:* this is the only crate that knows HTTP and the FHIR wire format
//! of responses (Bundles, OperationOutcome, CapabilityStatement). Handlers never log query
//! strings, bodies or ids of patients: only method, route template, status and time.
//!
//! *API boundary:* every route but `/health`, `/health/ready`, `/auth/token`, `/fhir/metadata` and
//! `/fhir/.well-known/smart-configuration` requires a bearer token, verified on each request
//! (so suspension and revocation are immediate).

mod admin;
mod attach;
mod audit;
pub mod canary;
mod capability;
pub mod cors;
pub mod dicomweb;
mod erasure;
pub mod guard;
mod handlers;
mod inmem;
mod lang;
pub mod metrics;
pub mod outcome;
mod server;
pub mod tls;
pub mod webhook;

use std::sync::Arc;

use brankas_auth::Authority;
use brankas_engine::Engine;

pub use handlers::router;
pub use server::{ServeConfig, serve};

/// Content type of every FHIR response.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Documented request limits of the HTTP API.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Longest query string accepted (414 beyond).
    pub max_query_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_body_bytes: 32 * 1024 * 1024, max_query_bytes: 8 * 1024 }
    }
}

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authority>,
    /// Absolute base URL of the FHIR endpoint, e.g. `https://host:8443/fhir`.
    pub base_url: String,
    pub limits: HttpLimits,
    /// The audit log: every response waits for its records (see the `audit` module).
    pub audit: Arc<brankas_audit::AuditLog>,
    /// The store, for the guard's shared state (budgets, canaries, alerts).
    pub store: Arc<dyn brankas_store::Store>,
    /// The guard's per-replica state (failed authentications, addresses seen).
    pub guard: guard::GuardState,
    /// Where alerts are pushed, if configured.
    pub webhook: Option<webhook::Webhook>,
    /// The figures `/metrics` serves, and who may read them.
    pub metrics: metrics::Metrics,
    /// Whether browser origins are allowed (`cors::layer`), for the CapabilityStatement.
    pub cors: bool,
}
