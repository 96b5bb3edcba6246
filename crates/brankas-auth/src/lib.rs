//! Clients, client secrets and access tokens.
//!
//! - [`ClientRecord`]: a registered client (stored as a document through the `Store`); only
//!   the SHA-256 of its secret is kept. Secrets are 256-bit random values, so a fast hash is
//!   enough: there is nothing to brute-force.
//! - [`Authority`]: issues OAuth2 `client_credentials` access tokens (compact JWS, HS256 under
//!   a key derived in the vault, at most 300 s) and verifies bearer tokens into a [`Principal`].
//! - [`Scopes`]: SMART on FHIR v2 scopes (`system/Observation.rs`), v1 forms mapped to v2.
//!
//! *Architecture invariant:* a [`Principal`] can only be made by verifying a token, and the
//! client's status is re-read on every verification, so suspending or revoking a client takes
//! effect on its very next request.
//!
//! ```
//! use brankas_auth::Scopes;
//! let s = Scopes::parse("system/Patient.rs system/Observation.read").unwrap();
//! assert!(s.permits("Observation", 's'));
//! assert!(!s.permits("Observation", 'c'));
//! ```

mod jwt;
mod registry;
mod scopes;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use brankas_store::Store;
use brankas_vault::{Vault, ct_eq, random_bytes, random_id, sha256};

pub use jwt::Jwks;
pub use registry::{ClientSpec, ClientUpdate, DIRECTORY_TYPES, OnExceed, PatientBudget, RateLimitSpec, RateLimits, SENSITIVE_CATEGORIES, is_purpose_code};
pub use scopes::{Scope, Scopes};

/// Longest access-token lifetime (SMART Backend Services: at most 5 minutes).
pub const MAX_TOKEN_SECONDS: u64 = 300;
/// Longest bearer token accepted before parsing (bounds work on hostile input).
const MAX_TOKEN_LEN: usize = 4096;

/// Errors of authentication. Messages are safe to show to the caller: they never say whether
/// a client id exists.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid client credentials")]
    InvalidClient,
    #[error("invalid, expired or revoked access token")]
    InvalidToken,
    #[error("requested scope is not granted to this client")]
    InvalidScope,
    #[error("client is not active")]
    Inactive,
    /// A token this server signed, no longer valid (its client suspended, revoked or
    /// narrowed): not a guess.
    #[error("the access token is no longer valid")]
    Stale,
    /// A token that was valid and has expired (ours, or a trusted issuer's with a valid
    /// signature): fetch a new one.
    #[error("the access token expired")]
    Expired,
    #[error("no such client")]
    UnknownClient,
    #[error("a revoked client cannot be changed or reinstated")]
    Revoked,
    #[error("bad client registration: {0}")]
    BadRegistration(&'static str),
    #[error("invalid client assertion: {0}")]
    InvalidAssertion(&'static str),
    #[error("a client registration failed its integrity check")]
    Integrity,
    #[error("storage: {0}")]
    Store(#[from] brankas_store::StoreError),
    #[error("key handling failed")]
    Vault(#[from] brankas_vault::VaultError),
    /// The two-person rule refuses this act (see [`Authority::approve`]).
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    /// A request on this client awaits a security officer's decision.
    #[error("a request on this client is awaiting approval: approve or reject it first")]
    AwaitingApproval,
    #[error("nothing on this client is awaiting approval")]
    NothingPending,
}

/// What a client is for. Access control beyond scopes builds on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    FacilitySystem,
    Clinician,
    Patient,
    SecurityOfficer,
    Researcher,
}

impl Role {
    /// The role's name, as registrations and audit records write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::FacilitySystem => "facility-system",
            Role::Clinician => "clinician",
            Role::Patient => "patient",
            Role::SecurityOfficer => "security-officer",
            Role::Researcher => "researcher",
        }
    }

    /// Whether registering a client of this role, widening it or reinstating it needs a
    /// security officer's approval (the two-person rule, threat model invariant 13): every
    /// role that reaches patient data, the security officers who approve and see identities
    /// in breach reports, and researchers, who will receive exports derived from patient
    /// data. Admins reach the registry and the directory only.
    pub fn needs_approval(self) -> bool {
        !matches!(self, Role::Admin)
    }
}

/// Lifecycle state of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientStatus {
    Active,
    Suspended,
    Revoked,
    /// Registered, but no token until a security officer approves it.
    #[serde(rename = "pending_approval")]
    PendingApproval,
}

/// What a pending request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestKind {
    /// A new client (its status is `pending_approval` until then).
    Registration,
    /// A change that widens what the client reaches (the old registration stays in force).
    Change,
    /// Reinstating a suspended client.
    Reinstatement,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Registration => "registration",
            RequestKind::Change => "change",
            RequestKind::Reinstatement => "reinstatement",
        }
    }
}

/// A request that takes effect only when a security officer other than its requester
/// approves it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PendingRequest {
    pub kind: RequestKind,
    /// The client id of the requester (`local-operator` for the CLI).
    pub requested_by: String,
    /// When, RFC 3339.
    pub requested: String,
    /// The registration as it will be once a change is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ClientSpec>,
}

/// A registered client, as stored. Contains no secret, only its hash. Holds no patient data
/// either, only references (`Patient/<id>` for a patient client), so it may be shown.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    pub role: Role,
    /// Space-separated SMART scopes this client may be granted.
    pub scopes: String,
    pub status: ClientStatus,
    /// Hex SHA-256 of the client secret.
    pub secret_sha256: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Last change of the registration or its status, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    /// `Organization/<id>` the client acts for (facility-system, clinician).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// `Practitioner/<id>` the client acts for (clinician).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    /// The identifier system of the facility's own medical record numbers (facility-system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_number_system: Option<String>,
    /// `Patient/<id>` the client is bound to (patient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Public keys for `private_key_jwt` (a JWK Set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Sensitive categories granted explicitly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// The patient budget set for this client (`None`: its role's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_budget: Option<PatientBudget>,
    /// Request limits set for this client (absent fields: its role's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimitSpec>,
    /// A trusted external identity provider's `iss`, for clients that stand for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Purposes of use it may state besides treatment (see [`ClientSpec::purposes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    /// Who registered the client (its secret was shown to them): a client id, or
    /// `local-operator`. Absent on registrations older than the two-person rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The security officer who approved its registration or its last approved request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// A request awaiting a security officer's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRequest>,
}

impl ClientRecord {
    /// The registration as an administrator sees it: everything but the secret's hash.
    pub fn public_view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("secret_sha256");
            o.insert("patient_budget".into(), serde_json::to_value(self.budget()).unwrap_or_default());
            o.insert("limits".into(), serde_json::to_value(self.rate_limits()).unwrap_or_default());
        }
        v
    }

    /// The request limits in force.
    pub fn rate_limits(&self) -> RateLimits {
        RateLimits::resolve(self.role, self.limits.as_ref())
    }

    /// The patient budget in force: the one set, else the role's default.
    pub fn budget(&self) -> PatientBudget {
        self.patient_budget.unwrap_or_else(|| PatientBudget::default_for(self.role))
    }

    /// Puts a checked registration in force (everything but role, status and provenance).
    fn apply(&mut self, spec: ClientSpec) -> Result<(), AuthError> {
        spec.validate()?;
        self.name = spec.name.trim().into();
        self.scopes = Scopes::parse(&spec.scopes).map_err(|_| AuthError::BadRegistration("invalid scopes"))?.to_string();
        self.organization = spec.organization;
        self.practitioner = spec.practitioner;
        self.record_number_system = spec.record_number_system;
        self.patient = spec.patient;
        self.jwks = spec.jwks;
        self.sensitive = spec.sensitive;
        self.issuer = spec.issuer;
        self.patient_budget = spec.patient_budget;
        self.limits = spec.limits;
        self.purposes = spec.purposes;
        Ok(())
    }

    fn spec(&self) -> ClientSpec {
        ClientSpec {
            name: self.name.clone(),
            role: Some(self.role),
            scopes: self.scopes.clone(),
            organization: self.organization.clone(),
            practitioner: self.practitioner.clone(),
            record_number_system: self.record_number_system.clone(),
            patient: self.patient.clone(),
            jwks: self.jwks.clone(),
            sensitive: self.sensitive.clone(),
            issuer: self.issuer.clone(),
            patient_budget: self.patient_budget,
            limits: self.limits,
            purposes: self.purposes.clone(),
        }
    }
}

/// A newly created client's one-time credentials. The secret is shown once and never stored.
pub struct NewClient {
    pub client_id: String,
    pub client_secret: String,
}

/// The authenticated caller of a request: made only by [`Authority::verify`].
#[derive(Clone)]
pub struct Principal {
    client_id: String,
    role: Role,
    scopes: Scopes,
    token_id: String,
    organization: Option<String>,
    practitioner: Option<String>,
    patient: Option<String>,
    /// The facility's own medical-record-number system, if registered.
    record_number_system: Option<String>,
    /// Purpose of use the request states (`TREAT` when it states none).
    purpose: String,
    /// The stated reason of a break-glass request (purpose `BTG`) or of a request stating
    /// another registered purpose than treatment.
    break_glass_reason: Option<String>,
    /// Purposes of use the client may state besides `TREAT` and `BTG` (its registration's).
    purposes: Vec<String>,
    /// The operator's own tools on the data directory (`brankas import`), not a network client.
    local: bool,
    /// Sensitive categories granted explicitly.
    sensitive: Vec<String>,
    /// The patients (partitions) whose data the request reached or tried to reach, noted by
    /// the engine's gates for the request's audit records. Shared by clones of this principal.
    trail: AccessTrail,
    /// Distinct patients it may receive (none for the operator's local tools).
    budget: Option<PatientBudget>,
    /// Request limits (none for the operator's local tools).
    limits: Option<RateLimits>,
    /// The request this principal acts in (its id and the caller's address), set by the HTTP
    /// layer for the audit records the engine writes ahead of a write.
    request: RequestTag,
}

/// The request a [`Principal`] acts in: what the audit records of its writes name besides
/// the client (empty for the operator's local tools).
#[derive(Clone, Debug, Default)]
pub struct RequestTag {
    pub request_id: String,
    pub address: Option<String>,
}

/// The partitions one request's gates were asked about, in order, without repeats, and the
/// break-glass grants it made.
#[derive(Clone, Default)]
pub struct AccessTrail(std::sync::Arc<std::sync::Mutex<Vec<brankas_vault::PartitionId>>>, std::sync::Arc<std::sync::atomic::AtomicU32>);

impl AccessTrail {
    /// Notes a break-glass grant.
    pub fn note_break_glass(&self) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Break-glass grants made by this request so far; the count is reset.
    pub fn take_break_glass(&self) -> u32 {
        self.1.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes a partition (once).
    pub fn note(&self, p: &brankas_vault::PartitionId) {
        if let Ok(mut v) = self.0.lock()
            && !v.contains(p)
            && v.len() < 100_000
        {
            v.push(*p);
        }
    }

    /// The partitions noted so far; the trail is left empty.
    pub fn take(&self) -> Vec<brankas_vault::PartitionId> {
        self.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }
}

/// Why a request's purpose of use is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PurposeError {
    /// Not a code, or a reason missing or malformed (a 400).
    #[error("{0}")]
    Malformed(&'static str),
    /// A purpose the client's registration does not list (a 403).
    #[error("this client is not registered for the purpose of use it states (only TREAT, BTG and the purposes its registration lists)")]
    NotRegistered,
}

/// Longest break-glass reason kept.
pub const MAX_REASON_CHARS: usize = 500;

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal").field("client_id", &self.client_id).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Principal {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }
    /// The `jti` of the token this principal presented (for audit).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }
    /// `Organization/<id>` the caller acts for, if any.
    pub fn organization(&self) -> Option<&str> {
        self.organization.as_deref()
    }

    /// The identifier system of the facility's own medical record numbers, if its
    /// registration names one (DICOM PatientIDs are looked up in it).
    pub fn record_number_system(&self) -> Option<&str> {
        self.record_number_system.as_deref()
    }
    /// `Practitioner/<id>` the caller acts for, if any.
    pub fn practitioner(&self) -> Option<&str> {
        self.practitioner.as_deref()
    }
    /// `Patient/<id>` a patient caller is bound to.
    pub fn patient(&self) -> Option<&str> {
        self.patient.as_deref()
    }
    /// The purpose of use this request states (HL7 v3 PurposeOfUse code), `TREAT` by default.
    pub fn purpose(&self) -> &str {
        &self.purpose
    }
    /// The reason given, when this request invokes break-glass (purpose `BTG`) or states
    /// another purpose than treatment (which is handled like break-glass).
    pub fn break_glass_reason(&self) -> Option<&str> {
        self.break_glass_reason.as_deref()
    }
    /// Whether this request states a purpose of use other than treatment and break-glass:
    /// one the client's registration lists, honoured only with a reason, time-limited and
    /// alerted like break-glass.
    pub fn states_other_purpose(&self) -> bool {
        self.purpose != "TREAT" && self.purpose != "BTG"
    }
    /// Whether the client holds an explicit grant for a sensitive category (`HIV`, `R`, `PHOTO`...).
    pub fn has_sensitive_grant(&self, category: &str) -> bool {
        self.sensitive.iter().any(|c| c == category)
    }
    /// Whether this is the operator's own tool acting on the data directory.
    pub fn is_local_operator(&self) -> bool {
        self.local
    }
    /// The same caller, for one request that states a purpose of use (and, for anything but
    /// treatment, a reason). A purpose that is not a plain code is refused
    /// ([`PurposeError::Malformed`]); so is one the client's registration does not list
    /// ([`PurposeError::NotRegistered`]; `TREAT` and `BTG` need no listing), and `BTG` or a
    /// registered purpose without a reason ([`PurposeError::Malformed`]).
    pub fn with_purpose(mut self, purpose: Option<&str>, reason: Option<&str>) -> Result<Self, PurposeError> {
        let purpose = purpose.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("TREAT");
        if !registry::is_purpose_code(purpose) {
            return Err(PurposeError::Malformed("the purpose of use must be an HL7 PurposeOfUse code, e.g. TREAT, ETREAT or BTG"));
        }
        let listed = self.local || self.purposes.iter().any(|p| p == purpose);
        if purpose != "TREAT" && purpose != "BTG" && !listed {
            return Err(PurposeError::NotRegistered);
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if purpose == "TREAT" {
            self.break_glass_reason = None;
        } else {
            let r = reason.ok_or(if purpose == "BTG" {
                PurposeError::Malformed("break-glass (purpose of use BTG) needs a reason (X-Break-Glass-Reason)")
            } else {
                PurposeError::Malformed("a purpose of use other than TREAT needs a reason (X-Break-Glass-Reason); it is handled like break-glass")
            })?;
            if r.chars().any(char::is_control) {
                return Err(PurposeError::Malformed("the reason must be one line of text"));
            }
            self.break_glass_reason = Some(r.chars().take(MAX_REASON_CHARS).collect());
        }
        self.purpose = purpose.to_string();
        Ok(self)
    }
    /// The operator's offline tool acting on behalf of a facility (`brankas import
    /// --organization`): what it writes counts as that facility's submission, which gives the
    /// facility a care relationship with the patients imported.
    #[cfg(feature = "operator")]
    pub fn local_operator_for(organization: Option<String>) -> Self {
        Self { organization, ..Self::local_operator() }
    }

    /// A principal for offline tools (`brankas import`) that act with the operator's
    /// authority on the data directory itself, not over the network. Behind the `operator`
    /// feature, which only the `brankas` binary enables.
    #[cfg(feature = "operator")]
    pub fn local_operator() -> Self {
        Self {
            client_id: "local-operator".into(),
            role: Role::Admin,
            scopes: Scopes::parse("system/*.cruds").expect("static scope"),
            token_id: String::new(),
            organization: None,
            practitioner: None,
            patient: None,
            purpose: "TREAT".into(),
            break_glass_reason: None,
            purposes: Vec::new(),
            local: true,
            sensitive: Vec::new(),
            trail: AccessTrail::default(),
            record_number_system: None,
            budget: None,
            limits: None,
            request: RequestTag::default(),
        }
    }

    /// The writer of canaries for `organization`, derived from a verified security officer
    /// (`POST /admin/canaries`): it creates records and looks up identities as a facility
    /// system of that one organization (so the canary sits in the facility's work list and
    /// care, like a real patient it registered), reads nothing else, and is no operator: every
    /// gate applies. `None` for any caller but a security officer's verified token.
    pub fn canary_planter(&self, organization: &str) -> Option<Self> {
        (self.role == Role::SecurityOfficer && !self.local).then(|| Self {
            client_id: format!("canary-planter/{}", self.client_id),
            role: Role::FacilitySystem,
            scopes: Scopes::parse("system/*.cs").expect("static scope"),
            token_id: self.token_id.clone(),
            organization: Some(organization.to_string()),
            practitioner: None,
            patient: None,
            purpose: "TREAT".into(),
            break_glass_reason: None,
            local: false,
            sensitive: Vec::new(),
            purposes: Vec::new(),
            trail: AccessTrail::default(),
            record_number_system: None,
            budget: None,
            limits: None,
            request: self.request.clone(),
        })
    }

    /// The client's request limits (`None`: the operator's own tools).
    pub fn limits(&self) -> Option<RateLimits> {
        self.limits
    }

    /// The patient budget of the client (`None`: unbounded, the operator's own tools).
    pub fn budget(&self) -> Option<PatientBudget> {
        self.budget
    }

    /// The caller a verified token of registered client `rec` stands for (its own token, or
    /// a trusted issuer's naming `practitioner` or `patient`).
    fn of_client(rec: ClientRecord, scopes: Scopes, token_id: String, practitioner: Option<String>, patient: Option<String>) -> Self {
        Self {
            budget: Some(rec.budget()),
            limits: Some(rec.rate_limits()),
            client_id: rec.client_id,
            role: rec.role,
            scopes,
            token_id,
            organization: rec.organization,
            practitioner,
            patient,
            record_number_system: rec.record_number_system,
            purpose: "TREAT".into(),
            break_glass_reason: None,
            purposes: rec.purposes,
            local: false,
            sensitive: rec.sensitive,
            trail: AccessTrail::default(),
            request: RequestTag::default(),
        }
    }

    /// The same caller, acting in one request (its id and the caller's address).
    pub fn with_request(mut self, request: RequestTag) -> Self {
        self.request = request;
        self
    }

    /// The request this principal acts in.
    pub fn request(&self) -> &RequestTag {
        &self.request
    }

    /// The patients this request's gates were asked about (see [`AccessTrail`]).
    pub fn trail(&self) -> &AccessTrail {
        &self.trail
    }
}

/// An issued access token.
pub struct IssuedToken {
    /// The client it was issued to.
    pub client_id: String,
    pub access_token: String,
    pub expires_in: u64,
    pub scope: String,
}

/// Issues and verifies tokens, and manages client registrations.
pub struct Authority {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    token_seconds: u64,
    /// Trusted issuer → client id, rebuilt from the registry on a miss (at most once a second).
    issuers: std::sync::Mutex<(std::collections::HashMap<String, String>, Option<std::time::Instant>)>,
    /// Registrations already verified, by client id: the stored document's exact bytes, and
    /// what they gave (the record, its granted scopes). A token verification still reads the
    /// stored document every time (so a suspension or a narrowing, by this process or any
    /// other, counts from the next request); only when the bytes are those already checked
    /// are the MAC and the parsing skipped.
    verified: std::sync::Mutex<std::collections::HashMap<String, Arc<VerifiedRegistration>>>,
}

/// A stored registration document and what its verification gave.
struct VerifiedRegistration {
    doc: Vec<u8>,
    rec: ClientRecord,
    granted: Scopes,
}

/// Registrations remembered at most (beyond, the memory starts over).
const MAX_VERIFIED: usize = 10_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
}

const JWS_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const ISSUER: &str = "brankas";

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

impl Authority {
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>) -> Self {
        Self {
            store,
            vault,
            token_seconds: MAX_TOKEN_SECONDS,
            issuers: std::sync::Mutex::new((std::collections::HashMap::new(), None)),
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Sets the token lifetime, capped at [`MAX_TOKEN_SECONDS`].
    pub fn with_token_seconds(mut self, s: u64) -> Self {
        self.token_seconds = s.clamp(1, MAX_TOKEN_SECONDS);
        self
    }

    /// Registers a client and returns its credentials (the secret is not kept), active at
    /// once and without approval: for the crate's own tests. Everything else registers
    /// through [`Authority::register`], which applies the two-person rule.
    #[cfg(test)]
    fn create_client(&self, spec: &ClientSpec) -> Result<NewClient, AuthError> {
        self.insert(spec, ClientStatus::Active, None, None).map(|(n, _)| n)
    }

    /// Checks and stores a new registration.
    fn insert(&self, spec: &ClientSpec, status: ClientStatus, created_by: Option<String>, pending: Option<PendingRequest>) -> Result<(NewClient, ClientRecord), AuthError> {
        spec.validate()?;
        if let Some(iss) = &spec.issuer
            && self.list_clients()?.iter().any(|c| c.issuer.as_deref() == Some(iss.as_str()) && c.status != ClientStatus::Revoked)
        {
            return Err(AuthError::BadRegistration("another client already stands for this issuer"));
        }
        let client_id = format!("c-{}", random_id(12)?);
        let mut raw = [0u8; 32];
        random_bytes(&mut raw)?;
        let client_secret = B64.encode(raw);
        let mut rec = ClientRecord {
            client_id: client_id.clone(),
            name: String::new(),
            role: spec.role.ok_or(AuthError::BadRegistration("role is required"))?,
            scopes: String::new(),
            status,
            secret_sha256: hex(&sha256(client_secret.as_bytes())),
            created: rfc3339_now(),
            updated: None,
            organization: None,
            practitioner: None,
            record_number_system: None,
            patient: None,
            jwks: None,
            sensitive: Vec::new(),
            issuer: None,
            patient_budget: None,
            limits: None,
            purposes: Vec::new(),
            created_by,
            approved_by: None,
            pending,
        };
        rec.apply(spec.clone())?;
        self.put_client(&rec)?;
        Ok((NewClient { client_id, client_secret }, rec))
    }

    /// Registers a client on behalf of `by` (an admin, or the operator's CLI). A client of a
    /// role that [needs approval](Role::needs_approval) is stored with status
    /// `pending_approval`: it gets no token until a security officer other than `by`
    /// approves it ([`Authority::approve`]). The one exception is the first security
    /// officer, registered by the operator holding the key file while no active security
    /// officer exists: someone has to be able to approve.
    pub fn register(&self, spec: &ClientSpec, by: &Principal) -> Result<(NewClient, ClientRecord), AuthError> {
        if by.role() != Role::Admin {
            return Err(AuthError::NotAllowed("clients are registered by administrators"));
        }
        let role = spec.role.ok_or(AuthError::BadRegistration("role is required: facility-system, clinician, patient, security-officer, researcher or admin"))?;
        let first_officer =
            by.is_local_operator() && role == Role::SecurityOfficer && !self.list_clients()?.iter().any(|c| c.role == Role::SecurityOfficer && c.status == ClientStatus::Active);
        let by_id = by.client_id().to_string();
        if role.needs_approval() && !first_officer {
            let pending = PendingRequest { kind: RequestKind::Registration, requested_by: by_id.clone(), requested: rfc3339_now(), change: None };
            self.insert(spec, ClientStatus::PendingApproval, Some(by_id), Some(pending))
        } else {
            self.insert(spec, ClientStatus::Active, Some(by_id), None)
        }
    }

    /// Changes a registration on behalf of `by`; the result is checked as a whole like a new
    /// one. A change that only narrows the client (name, fewer scopes or grants, lower budget
    /// or limits, keys removed) applies at once; any other change to a client whose role
    /// [needs approval](Role::needs_approval) is kept as a pending request, and the old
    /// registration stays in force until a security officer other than `by` approves it.
    /// Returns the registration and whether the change is pending. A revoked client cannot
    /// be changed; one with a request awaiting approval neither (decide that one first).
    pub fn request_update(&self, client_id: &str, u: &ClientUpdate, by: &Principal) -> Result<(ClientRecord, bool), AuthError> {
        if by.role() != Role::Admin {
            return Err(AuthError::NotAllowed("registrations are changed by administrators"));
        }
        let mut rec = self.client(client_id)?.ok_or(AuthError::UnknownClient)?;
        if rec.status == ClientStatus::Revoked {
            return Err(AuthError::Revoked);
        }
        if rec.pending.is_some() {
            return Err(AuthError::AwaitingApproval);
        }
        let old = rec.spec();
        let spec = u.applied_to(old.clone());
        spec.validate()?;
        let pending = rec.role.needs_approval() && !spec.only_narrows(&old);
        if pending {
            rec.pending = Some(PendingRequest { kind: RequestKind::Change, requested_by: by.client_id().into(), requested: rfc3339_now(), change: Some(spec) });
        } else {
            rec.apply(spec)?;
        }
        rec.updated = Some(rfc3339_now());
        self.put_client(&rec)?;
        Ok((rec, pending))
    }

    /// Changes a registration at once, without the two-person rule: the crate's own tests.
    #[cfg(test)]
    fn update_client(&self, client_id: &str, u: &ClientUpdate) -> Result<ClientRecord, AuthError> {
        let mut rec = self.client(client_id)?.ok_or(AuthError::UnknownClient)?;
        if rec.status == ClientStatus::Revoked {
            return Err(AuthError::Revoked);
        }
        let spec = u.applied_to(rec.spec());
        rec.apply(spec)?;
        rec.updated = Some(rfc3339_now());
        self.put_client(&rec)?;
        Ok(rec)
    }

    /// Asks to reinstate a suspended client on behalf of `by` (an admin, a security officer
    /// or the operator's CLI). A client whose role [needs approval](Role::needs_approval)
    /// comes back only when a security officer other than `by` approves: a credential the
    /// guard caught (budget, canary) or an officer suspended stays cut off until then.
    /// Returns the registration and whether the reinstatement is pending.
    pub fn request_reinstate(&self, client_id: &str, by: &Principal) -> Result<(ClientRecord, bool), AuthError> {
        if !matches!(by.role(), Role::Admin | Role::SecurityOfficer) {
            return Err(AuthError::NotAllowed("clients are reinstated by administrators and security officers"));
        }
        let mut rec = self.client(client_id)?.ok_or(AuthError::UnknownClient)?;
        match rec.status {
            ClientStatus::Revoked => return Err(AuthError::Revoked),
            ClientStatus::PendingApproval => return Err(AuthError::AwaitingApproval),
            ClientStatus::Active => return Ok((rec, false)),
            ClientStatus::Suspended => {}
        }
        if rec.pending.is_some() {
            return Err(AuthError::AwaitingApproval);
        }
        if rec.role.needs_approval() {
            rec.pending = Some(PendingRequest { kind: RequestKind::Reinstatement, requested_by: by.client_id().into(), requested: rfc3339_now(), change: None });
            rec.updated = Some(rfc3339_now());
            self.put_client(&rec)?;
            return Ok((rec, true));
        }
        Ok((self.set_status(client_id, ClientStatus::Active)?, false))
    }

    /// Approves the request pending on `client_id`: a new client becomes active, a change
    /// is applied, a suspended client reinstated. Only a security officer may approve, and
    /// only someone else's request: not one it made, not one on its own registration, and
    /// not one whose requester shares a registration lineage with it (the requester, or
    /// whoever registered the requester, registered the approver, so it has seen the
    /// approver's secret). The operator's CLI (`local-operator`) is not a lineage: the key
    /// file's holder registers the first security officer and is trusted to hand its secret
    /// to another person. Returns the registration and the request approved.
    pub fn approve(&self, client_id: &str, by: &Principal) -> Result<(ClientRecord, PendingRequest), AuthError> {
        if by.role() != Role::SecurityOfficer || by.is_local_operator() {
            return Err(AuthError::NotAllowed("requests are approved by a security officer"));
        }
        let mut rec = self.client(client_id)?.ok_or(AuthError::UnknownClient)?;
        if rec.status == ClientStatus::Revoked {
            return Err(AuthError::Revoked);
        }
        let req = rec.pending.clone().ok_or(AuthError::NothingPending)?;
        if req.requested_by == by.client_id() {
            return Err(AuthError::NotAllowed("a request is approved by a security officer other than its requester"));
        }
        if rec.client_id == by.client_id() {
            return Err(AuthError::NotAllowed("no client approves a request on its own registration"));
        }
        let mine = self.lineage(by.client_id())?;
        if self.lineage(&req.requested_by)?.iter().any(|c| mine.contains(c)) {
            return Err(AuthError::NotAllowed("the approver was registered by the requester or by whoever registered it: that is not a second person"));
        }
        match req.kind {
            RequestKind::Registration => rec.status = ClientStatus::Active,
            RequestKind::Change => rec.apply(req.change.clone().ok_or(AuthError::Integrity)?)?,
            RequestKind::Reinstatement => {
                if rec.status == ClientStatus::Suspended {
                    rec.status = ClientStatus::Active;
                }
            }
        }
        rec.pending = None;
        rec.approved_by = Some(by.client_id().into());
        rec.updated = Some(rfc3339_now());
        self.put_client(&rec)?;
        Ok((rec, req))
    }

    /// Rejects the request pending on `client_id` (an admin, a security officer or the
    /// operator's CLI): a new client is revoked (its id is never usable), a change or a
    /// reinstatement dropped. Rejecting grants nothing, so no second person is needed.
    pub fn reject(&self, client_id: &str, by: &Principal) -> Result<(ClientRecord, PendingRequest), AuthError> {
        if !matches!(by.role(), Role::Admin | Role::SecurityOfficer) {
            return Err(AuthError::NotAllowed("requests are rejected by administrators and security officers"));
        }
        let mut rec = self.client(client_id)?.ok_or(AuthError::UnknownClient)?;
        let req = rec.pending.take().ok_or(AuthError::NothingPending)?;
        if req.kind == RequestKind::Registration {
            rec.status = ClientStatus::Revoked;
        }
        rec.updated = Some(rfc3339_now());
        self.put_client(&rec)?;
        Ok((rec, req))
    }

    /// Whether `by` counts as a second person for a request `requester` made (an erasure, see
    /// `brankas-api`'s `admin` module): `by` is an active security officer, not the requester,
    /// and shares no registration lineage with it (the rule of [`Authority::approve`]).
    pub fn second_person(&self, requester: &str, by: &Principal) -> Result<(), AuthError> {
        if by.role() != Role::SecurityOfficer || by.is_local_operator() {
            return Err(AuthError::NotAllowed("requests are approved by a security officer"));
        }
        if requester == by.client_id() {
            return Err(AuthError::NotAllowed("a request is approved by a security officer other than its requester"));
        }
        let mine = self.lineage(by.client_id())?;
        if self.lineage(requester)?.iter().any(|c| mine.contains(c)) {
            return Err(AuthError::NotAllowed("the approver was registered by the requester or by whoever registered it: that is not a second person"));
        }
        Ok(())
    }

    /// A client and the chain of clients that registered it (by `created_by`), without
    /// `local-operator`: whoever is in it has seen the client's secret, or the secret of
    /// someone who registered it.
    fn lineage(&self, client_id: &str) -> Result<Vec<String>, AuthError> {
        let mut out = Vec::new();
        let mut next = Some(client_id.to_string());
        while let Some(id) = next.take() {
            if id == "local-operator" || out.contains(&id) || out.len() >= 64 {
                break;
            }
            next = self.client(&id)?.and_then(|r| r.created_by);
            out.push(id);
        }
        Ok(out)
    }

    /// The clients `client_id` registered or approved, and those they registered in turn
    /// (a breach report on an administrator covers what it could have used), itself first.
    pub fn descendants(&self, client_id: &str) -> Result<Vec<String>, AuthError> {
        let all = self.list_clients()?;
        let mut out = vec![client_id.to_string()];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i].clone();
            for c in &all {
                let child = c.created_by.as_deref() == Some(parent.as_str()) || (i == 0 && c.approved_by.as_deref() == Some(parent.as_str()));
                if child && !out.contains(&c.client_id) {
                    out.push(c.client_id.clone());
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// Authenticates a client by its secret (the CLI's approver) into a [`Principal`],
    /// exactly as a token request followed by a verified request would.
    pub fn authenticate(&self, client_id: &str, secret: &str) -> Result<Principal, AuthError> {
        let t = self.issue(client_id, secret, None)?;
        self.verify(&t.access_token, "")
    }

    /// Every registration, in client-id order. A row that fails its integrity check is an
    /// error, never skipped: an administrator must see that something was tampered with.
    pub fn list_clients(&self) -> Result<Vec<ClientRecord>, AuthError> {
        self.store.list_clients()?.iter().map(|id| self.client(id)?.ok_or(AuthError::Integrity)).collect()
    }

    /// A client's registration. A stored document whose MAC does not verify (edited or
    /// planted in the database) is an integrity failure, never a usable client.
    pub fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, AuthError> {
        let Some(doc) = self.store.get_client(client_id)? else { return Ok(None) };
        self.check_registration(client_id, &doc).map(Some)
    }

    /// A stored registration document, checked: its MAC binds it to `client_id`.
    fn check_registration(&self, client_id: &str, doc: &[u8]) -> Result<ClientRecord, AuthError> {
        let corrupt = || AuthError::Integrity;
        let (mac_hex, body) = doc.split_at_checked(64).ok_or_else(corrupt)?;
        let expected = hex(&self.vault.registry_mac(&registry_input(client_id, body)));
        if !ct_eq(mac_hex, expected.as_bytes()) {
            tracing::error!("a client registration failed its integrity check (edited or planted in the database)");
            return Err(corrupt());
        }
        let rec: ClientRecord = serde_json::from_slice(body).map_err(|_| corrupt())?;
        if rec.client_id != client_id {
            return Err(corrupt());
        }
        Ok(rec)
    }

    /// The registration in force for a token's verification: read from the store on every
    /// call; checked again only when its bytes differ from those last checked.
    fn registration_now(&self, client_id: &str) -> Result<Option<Arc<VerifiedRegistration>>, AuthError> {
        let Some(doc) = self.store.get_client(client_id)? else { return Ok(None) };
        if let Ok(m) = self.verified.lock()
            && let Some(v) = m.get(client_id)
            && v.doc == doc
        {
            return Ok(Some(v.clone()));
        }
        let rec = self.check_registration(client_id, &doc)?;
        let granted = Scopes::parse(&rec.scopes).map_err(|_| AuthError::InvalidToken)?;
        let v = Arc::new(VerifiedRegistration { doc, rec, granted });
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= MAX_VERIFIED {
                m.clear();
            }
            m.insert(client_id.to_string(), v.clone());
        }
        Ok(Some(v))
    }

    /// Stores a client's registration, with a MAC binding it to its client id.
    pub fn put_client(&self, rec: &ClientRecord) -> Result<(), AuthError> {
        let body = serde_json::to_vec(rec).map_err(|_| AuthError::BadRegistration("encode"))?;
        let mut doc = hex(&self.vault.registry_mac(&registry_input(&rec.client_id, &body))).into_bytes();
        doc.extend_from_slice(&body);
        self.store.put_client(&rec.client_id, &doc)?;
        Ok(())
    }

    /// Suspends a client: refused from its very next request on (every token verification
    /// re-reads the status), until a reinstatement is approved.
    pub fn suspend(&self, client_id: &str) -> Result<ClientRecord, AuthError> {
        self.set_status(client_id, ClientStatus::Suspended)
    }

    /// Revokes a client for good (a pending request on it is dropped).
    pub fn revoke(&self, client_id: &str) -> Result<ClientRecord, AuthError> {
        self.set_status(client_id, ClientStatus::Revoked)
    }

    /// Sets a client's status. Revocation is final. Takes effect on the client's very next
    /// request. Private: reinstatement goes through [`Authority::request_reinstate`].
    fn set_status(&self, client_id: &str, status: ClientStatus) -> Result<ClientRecord, AuthError> {
        let mut rec = self.client(client_id)?.ok_or(AuthError::UnknownClient)?;
        if rec.status == ClientStatus::Revoked && status != ClientStatus::Revoked {
            return Err(AuthError::Revoked);
        }
        if rec.status == ClientStatus::PendingApproval && status == ClientStatus::Suspended {
            return Err(AuthError::AwaitingApproval);
        }
        if status == ClientStatus::Revoked {
            rec.pending = None;
        }
        rec.status = status;
        rec.updated = Some(rfc3339_now());
        self.put_client(&rec)?;
        Ok(rec)
    }

    /// OAuth2 `client_credentials` with a client secret: checks the secret and issues a
    /// token for `requested` scopes (all of the client's scopes when `None`). Asking for more
    /// than granted fails.
    pub fn issue(&self, client_id: &str, secret: &str, requested: Option<&str>) -> Result<IssuedToken, AuthError> {
        if client_id.len() > 200 || secret.len() > 200 {
            return Err(AuthError::InvalidClient);
        }
        let rec = match self.client(client_id) {
            Ok(r) => r,
            Err(AuthError::Integrity) => None,
            Err(e) => return Err(e),
        };
        // Compare against a dummy hash for unknown clients: same work either way.
        let expected = rec.as_ref().map(|r| r.secret_sha256.clone()).unwrap_or_else(|| "0".repeat(64));
        let given = hex(&sha256(secret.as_bytes()));
        let ok = ct_eq(expected.as_bytes(), given.as_bytes());
        let rec = match rec {
            Some(r) if ok => r,
            _ => return Err(AuthError::InvalidClient),
        };
        self.mint(rec, requested)
    }

    /// SMART Backend Services `private_key_jwt`: the client authenticates with a JWT it
    /// signed (ES384 or RS384; ES256 and RS256 also accepted) with a key it registered.
    /// `iss` and `sub` are the client id, `aud` is this token endpoint (`audience`), `exp`
    /// is at most five minutes ahead, and each `jti` is accepted once: a replayed assertion
    /// fails, on every replica (the record of used ids is in the store).
    pub fn issue_with_assertion(&self, assertion: &str, audience: &str, requested: Option<&str>) -> Result<IssuedToken, AuthError> {
        if assertion.len() > jwt::MAX_JWT_LEN {
            return Err(AuthError::InvalidClient);
        }
        // The issuer named inside the (not yet verified) claims says which keys to try.
        let unverified_iss = assertion
            .split('.')
            .nth(1)
            .and_then(|b| B64.decode(b).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(String::from))
            .ok_or(AuthError::InvalidClient)?;
        if unverified_iss.len() > 200 {
            return Err(AuthError::InvalidClient);
        }
        let rec = match self.client(&unverified_iss) {
            Ok(Some(r)) => r,
            Ok(None) | Err(AuthError::Integrity) => return Err(AuthError::InvalidClient),
            Err(e) => return Err(e),
        };
        let jwks = rec.jwks.as_ref().ok_or(AuthError::InvalidClient).and_then(|j| Jwks::parse(j).map_err(|_| AuthError::InvalidClient))?;
        let claims = jwks.verify(assertion)?;
        let s = |k: &str| claims.get(k).and_then(|v| v.as_str());
        if s("iss") != Some(rec.client_id.as_str()) || s("sub") != Some(rec.client_id.as_str()) {
            return Err(AuthError::InvalidAssertion("iss and sub must both be the client id"));
        }
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == audience,
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::InvalidAssertion("aud must be this token endpoint"));
        }
        let now = now_secs();
        let exp = claims.get("exp").and_then(|v| v.as_u64()).ok_or(AuthError::InvalidAssertion("exp is required"))?;
        if exp <= now {
            return Err(AuthError::InvalidAssertion("the assertion has expired"));
        }
        if exp > now + MAX_TOKEN_SECONDS {
            return Err(AuthError::InvalidAssertion("exp may be at most five minutes ahead"));
        }
        if claims.get("nbf").and_then(|v| v.as_u64()).is_some_and(|nbf| nbf > now + 60) {
            return Err(AuthError::InvalidAssertion("the assertion is not valid yet"));
        }
        let jti = s("jti").filter(|j| !j.is_empty() && j.len() <= 256).ok_or(AuthError::InvalidAssertion("jti is required"))?;
        let mut once = b"client-assertion\0".to_vec();
        once.extend_from_slice(rec.client_id.as_bytes());
        once.push(0);
        once.extend_from_slice(jti.as_bytes());
        // Kept until the assertion's own expiry (plus clock slack): after that it is refused anyway.
        let keep_until_us = ((exp + 60) as i64).saturating_mul(1_000_000);
        if !self.store.use_once(&sha256(&once), keep_until_us)? {
            return Err(AuthError::InvalidAssertion("this assertion was already used (jti replay)"));
        }
        self.mint(rec, requested)
    }

    /// Issues an access token to an authenticated, active client.
    fn mint(&self, rec: ClientRecord, requested: Option<&str>) -> Result<IssuedToken, AuthError> {
        if rec.status != ClientStatus::Active {
            return Err(AuthError::InvalidClient);
        }
        let granted = Scopes::parse(&rec.scopes).map_err(|_| AuthError::InvalidScope)?;
        let scope = match requested {
            None => rec.scopes.clone(),
            Some(req) => {
                let want = Scopes::parse(req).map_err(|_| AuthError::InvalidScope)?;
                if !granted.covers(&want) {
                    return Err(AuthError::InvalidScope);
                }
                want.to_string()
            }
        };
        let iat = now_secs();
        let client_id = rec.client_id.clone();
        let claims = Claims { iss: ISSUER.into(), sub: rec.client_id, scope: scope.clone(), iat, exp: iat + self.token_seconds, jti: random_id(16)? };
        let body = serde_json::to_vec(&claims).map_err(|_| AuthError::InvalidToken)?;
        let signing_input = format!("{}.{}", B64.encode(JWS_HEADER), B64.encode(body));
        let sig = self.vault.token_mac(signing_input.as_bytes());
        Ok(IssuedToken { client_id, access_token: format!("{signing_input}.{}", B64.encode(sig)), expires_in: self.token_seconds, scope })
    }

    /// Verifies a bearer token for the FHIR endpoint `audience`: one of ours (signature,
    /// issuer, expiry), or one of a registered trusted issuer ([`Authority::verify_external`]);
    /// either way its client must still be active and still hold the token's scopes.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::InvalidToken);
        };
        // Our own tokens have one fixed header: no algorithm negotiation ("alg":"none" etc.).
        // Anything else can only be a trusted issuer's, checked against its registered keys.
        if h != B64.encode(JWS_HEADER) {
            return self.verify_external(token, b, audience);
        }
        let sig = B64.decode(s).map_err(|_| AuthError::InvalidToken)?;
        let expected = self.vault.token_mac(format!("{h}.{b}").as_bytes());
        if !ct_eq(&sig, &expected) {
            return Err(AuthError::InvalidToken);
        }
        let claims: Claims = serde_json::from_slice(&B64.decode(b).map_err(|_| AuthError::InvalidToken)?).map_err(|_| AuthError::InvalidToken)?;
        let now = now_secs();
        if claims.iss != ISSUER || claims.iat > now + 60 || claims.exp - claims.iat > MAX_TOKEN_SECONDS {
            return Err(AuthError::InvalidToken);
        }
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        let reg = match self.registration_now(&claims.sub) {
            Ok(Some(r)) => r,
            Ok(None) | Err(AuthError::Integrity) => return Err(AuthError::InvalidToken),
            Err(e) => return Err(e),
        };
        if reg.rec.status != ClientStatus::Active {
            return Err(AuthError::Stale);
        }
        // The token's scopes, but never more than the registration grants now: narrowing a
        // client's scopes takes effect on its next request too.
        let scopes = Scopes::parse(&claims.scope).map_err(|_| AuthError::InvalidToken)?;
        if !reg.granted.covers(&scopes) {
            return Err(AuthError::InvalidToken);
        }
        let rec = reg.rec.clone();
        let (practitioner, patient) = (rec.practitioner.clone(), rec.patient.clone());
        Ok(Principal::of_client(rec, scopes, claims.jti, practitioner, patient))
    }
}

impl Authority {
    /// The client standing for trusted issuer `iss`.
    fn issuer_client(&self, iss: &str) -> Result<Option<String>, AuthError> {
        let mut cache = self.issuers.lock().map_err(|_| AuthError::InvalidToken)?;
        if let Some(id) = cache.0.get(iss) {
            return Ok(Some(id.clone()));
        }
        // A miss rescans the registry, at most once a second (tokens naming unknown issuers
        // must not turn into a registry scan each).
        if cache.1.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return Ok(None);
        }
        let mut map = std::collections::HashMap::new();
        for c in self.list_clients()? {
            if let Some(i) = c.issuer {
                map.insert(i, c.client_id);
            }
        }
        *cache = (map, Some(std::time::Instant::now()));
        Ok(cache.0.get(iss).cloned())
    }

    /// An access token of a trusted external identity provider (a hospital's): signed by a
    /// key its client registered (ES384/RS384, also ES256/RS256), `iss` its issuer, `aud` this
    /// FHIR endpoint, at most 300 s of life (`exp` − `iat`, and `exp` at most 300 s ahead),
    /// `fhirUser` naming the practitioner (clinician) or patient (patient client), `scope`
    /// within the registration's.
    fn verify_external(&self, token: &str, body: &str, audience: &str) -> Result<Principal, AuthError> {
        let unverified: serde_json::Value = B64.decode(body).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(AuthError::InvalidToken)?;
        let iss = unverified.get("iss").and_then(|v| v.as_str()).filter(|i| i.len() <= 200).ok_or(AuthError::InvalidToken)?;
        let client_id = self.issuer_client(iss)?.ok_or(AuthError::InvalidToken)?;
        let rec = match self.client(&client_id) {
            Ok(Some(r)) => r,
            Ok(None) | Err(AuthError::Integrity) => return Err(AuthError::InvalidToken),
            Err(e) => return Err(e),
        };
        if rec.status != ClientStatus::Active || rec.issuer.as_deref() != Some(iss) {
            return Err(AuthError::InvalidToken);
        }
        let jwks = rec.jwks.as_ref().and_then(|j| Jwks::parse(j).ok()).ok_or(AuthError::InvalidToken)?;
        let claims = jwks.verify(token).map_err(|_| AuthError::InvalidToken)?;
        let s = |k: &str| claims.get(k).and_then(|v| v.as_str());
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == audience,
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(audience)),
            _ => false,
        };
        let now = now_secs();
        let exp = claims.get("exp").and_then(|v| v.as_u64()).ok_or(AuthError::InvalidToken)?;
        let iat = claims.get("iat").and_then(|v| v.as_u64()).ok_or(AuthError::InvalidToken)?;
        if s("iss") != Some(iss) || !aud_ok || exp > now + MAX_TOKEN_SECONDS || iat > now + 60 || exp.saturating_sub(iat) > MAX_TOKEN_SECONDS {
            return Err(AuthError::InvalidToken);
        }
        if exp <= now {
            return Err(AuthError::Expired);
        }
        let scopes = Scopes::parse(s("scope").unwrap_or("")).map_err(|_| AuthError::InvalidToken)?;
        let granted = Scopes::parse(&rec.scopes).map_err(|_| AuthError::InvalidToken)?;
        if !granted.covers(&scopes) {
            return Err(AuthError::InvalidToken);
        }
        // fhirUser: a relative reference or an absolute URL ending in one.
        let fhir_user = s("fhirUser").ok_or(AuthError::InvalidToken)?;
        let want = if rec.role == Role::Patient { "Patient" } else { "Practitioner" };
        let mut tail = fhir_user.rsplit('/');
        let (id, ty) = (tail.next().unwrap_or(""), tail.next().unwrap_or(""));
        let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ty != want || !id_ok {
            return Err(AuthError::InvalidToken);
        }
        let user = format!("{want}/{id}");
        let (practitioner, patient) = if rec.role == Role::Patient { (None, Some(user)) } else { (Some(user), None) };
        let token_id = s("jti").unwrap_or("").chars().take(64).collect();
        Ok(Principal::of_client(rec, scopes, token_id, practitioner, patient))
    }
}

fn registry_input(client_id: &str, body: &[u8]) -> Vec<u8> {
    let mut v = (client_id.len() as u64).to_be_bytes().to_vec();
    v.extend_from_slice(client_id.as_bytes());
    v.extend_from_slice(body);
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use brankas_store::SqliteStore;
    use brankas_vault::KeyFile;

    fn authority() -> (tempfile::TempDir, Authority) {
        let d = tempfile::tempdir().unwrap();
        let kf = Arc::new(KeyFile::create(&d.path().join("k.json")).unwrap());
        let (vault, _) = Vault::create(kf).unwrap();
        let store = Arc::new(SqliteStore::open(&d.path().join("db")).unwrap());
        (d, Authority::new(store, Arc::new(vault)))
    }

    impl Authority {
        fn verify_any(&self, t: &str) -> Result<Principal, AuthError> {
            self.verify(t, "https://brankas.example/fhir")
        }
    }

    fn facility(scopes: &str) -> ClientSpec {
        ClientSpec { name: "his".into(), role: Some(Role::FacilitySystem), scopes: scopes.into(), organization: Some("Organization/rs-1".into()), ..Default::default() }
    }

    #[test]
    fn issue_verify_and_revoke() {
        let (_d, a) = authority();
        let c = a.create_client(&facility("system/*.cruds")).unwrap();
        assert!(a.issue(&c.client_id, "wrong", None).is_err());
        assert!(a.issue("nobody", &c.client_secret, None).is_err());
        let t = a.issue(&c.client_id, &c.client_secret, None).unwrap();
        assert!(t.expires_in <= 300);
        let p = a.verify_any(&t.access_token).unwrap();
        assert_eq!(p.client_id(), c.client_id);
        assert!(p.scopes().permits("Patient", 'r'));
        assert_eq!((p.role(), p.organization()), (Role::FacilitySystem, Some("Organization/rs-1")));
        // Narrower request is fine, wider is refused.
        let narrow = a.issue(&c.client_id, &c.client_secret, Some("system/Patient.r")).unwrap();
        assert!(!a.verify_any(&narrow.access_token).unwrap().scopes().permits("Observation", 'r'));
        // Tampering anywhere invalidates.
        let mut forged = t.access_token.clone();
        let mid = forged.len() / 2;
        forged.replace_range(mid..mid + 1, if &forged[mid..mid + 1] == "A" { "B" } else { "A" });
        assert!(a.verify_any(&forged).is_err());
        assert!(a.verify_any("a.b.c").is_err());
        assert!(a.verify_any(&"x".repeat(10_000)).is_err());
        a.set_status(&c.client_id, ClientStatus::Suspended).unwrap();
        assert!(a.verify_any(&t.access_token).is_err(), "suspension takes effect on the next request");
        assert!(a.issue(&c.client_id, &c.client_secret, None).is_err());
        a.set_status(&c.client_id, ClientStatus::Active).unwrap();
        assert!(a.verify_any(&t.access_token).is_ok(), "reinstated");
        // Narrowing the registration narrows tokens already issued.
        a.update_client(&c.client_id, &ClientUpdate { scopes: Some("system/Patient.r".into()), ..Default::default() }).unwrap();
        assert!(a.verify_any(&t.access_token).is_err());
        assert!(a.verify_any(&narrow.access_token).is_ok());
        a.set_status(&c.client_id, ClientStatus::Revoked).unwrap();
        assert!(a.verify_any(&narrow.access_token).is_err());
        assert!(matches!(a.set_status(&c.client_id, ClientStatus::Active), Err(AuthError::Revoked)), "revocation is final");
        assert!(matches!(a.update_client(&c.client_id, &ClientUpdate::default()), Err(AuthError::Revoked)));
        assert!(matches!(a.set_status("c-nobody", ClientStatus::Suspended), Err(AuthError::UnknownClient)));
    }

    #[test]
    fn private_key_jwt_assertions() {
        use jwt::testkeys::Es384;
        use serde_json::json;
        let (_d, a) = authority();
        let key = Es384::generate("k1");
        let mut spec = facility("system/Patient.rs");
        spec.jwks = Some(json!({"keys": [key.jwk()]}));
        let c = a.create_client(&spec).unwrap();
        let aud = "https://brankas.example/auth/token";
        let now = now_secs();
        let claims = |jti: &str, exp: u64| json!({"iss": c.client_id, "sub": c.client_id, "aud": aud, "exp": exp, "jti": jti});
        let t = a.issue_with_assertion(&key.sign(&claims("j1", now + 120)), aud, None).unwrap();
        assert_eq!(a.verify_any(&t.access_token).unwrap().client_id(), c.client_id);
        let replay = a.issue_with_assertion(&key.sign(&claims("j1", now + 120)), aud, None);
        assert!(matches!(replay, Err(AuthError::InvalidAssertion(m)) if m.contains("replay")), "same jti twice");
        assert!(a.issue_with_assertion(&key.sign(&claims("j2", now - 1)), aud, None).is_err(), "expired");
        assert!(a.issue_with_assertion(&key.sign(&claims("j3", now + 600)), aud, None).is_err(), "exp too far ahead");
        assert!(a.issue_with_assertion(&key.sign(&claims("j4", now + 60)), "https://other/token", None).is_err(), "wrong audience");
        let mut no_jti = claims("", now + 60);
        no_jti.as_object_mut().unwrap().remove("jti");
        assert!(a.issue_with_assertion(&key.sign(&no_jti), aud, None).is_err());
        let mut other_sub = claims("j5", now + 60);
        other_sub["sub"] = json!("c-other");
        assert!(a.issue_with_assertion(&key.sign(&other_sub), aud, None).is_err());
        // Signed by a key the client did not register.
        let stranger = Es384::generate("k1");
        assert!(a.issue_with_assertion(&stranger.sign(&claims("j6", now + 60)), aud, None).is_err());
        // Scopes: narrower is fine, wider is refused.
        assert!(a.issue_with_assertion(&key.sign(&claims("j7", now + 60)), aud, Some("system/Patient.r")).is_ok());
        assert!(a.issue_with_assertion(&key.sign(&claims("j8", now + 60)), aud, Some("system/Patient.rs system/Observation.r")).is_err());
        // A suspended client's assertions are refused.
        a.set_status(&c.client_id, ClientStatus::Suspended).unwrap();
        assert!(a.issue_with_assertion(&key.sign(&claims("j9", now + 60)), aud, None).is_err());
        // A client without registered keys cannot use assertions at all.
        let plain = a.create_client(&facility("system/Patient.rs")).unwrap();
        let forged = json!({"iss": plain.client_id, "sub": plain.client_id, "aud": aud, "exp": now + 60, "jti": "x"});
        assert!(a.issue_with_assertion(&key.sign(&forged), aud, None).is_err());
    }

    #[test]
    fn edited_or_planted_client_rows_are_refused() {
        let (d, a) = authority();
        let c = a
            .create_client(&ClientSpec {
                name: "app".into(),
                role: Some(Role::Clinician),
                scopes: "user/Patient.r".into(),
                organization: Some("Organization/rs-1".into()),
                practitioner: Some("Practitioner/dr-1".into()),
                ..Default::default()
            })
            .unwrap();
        let store = SqliteStore::open(&d.path().join("db")).unwrap();
        let doc = store.get_client(&c.client_id).unwrap().unwrap();
        let edited = String::from_utf8(doc.clone()).unwrap().replace("clinician", "admin");
        store.put_client(&c.client_id, edited.as_bytes()).unwrap();
        assert!(a.issue(&c.client_id, &c.client_secret, None).is_err());
        // A row copied under another id does not verify either.
        store.put_client("c-planted", &doc).unwrap();
        assert!(a.client("c-planted").is_err());
        store.put_client(&c.client_id, &doc).unwrap();
        assert!(a.issue(&c.client_id, &c.client_secret, None).is_ok());
    }

    fn officer() -> ClientSpec {
        ClientSpec { name: "csirt".into(), role: Some(Role::SecurityOfficer), scopes: "system/AuditEvent.rs".into(), ..Default::default() }
    }

    #[test]
    fn two_person_rule() {
        let (_d, a) = authority();
        let op = Principal::local_operator();
        let login = |n: &NewClient| a.authenticate(&n.client_id, &n.client_secret).unwrap();
        let not_allowed = |r: Result<(ClientRecord, PendingRequest), AuthError>| matches!(r, Err(AuthError::NotAllowed(_)));
        // The operator's first security officer is active at once; an admin needs no approval.
        let (so1, r) = a.register(&officer(), &op).unwrap();
        assert_eq!(r.status, ClientStatus::Active);
        let so1 = login(&so1);
        let (adm, r) = a.register(&ClientSpec { name: "adm".into(), role: Some(Role::Admin), ..Default::default() }, &op).unwrap();
        assert_eq!(r.status, ClientStatus::Active);
        let adm = login(&adm);
        assert!(matches!(a.register(&officer(), &so1), Err(AuthError::NotAllowed(_))), "officers do not register clients");

        // An admin's facility client is pending: no token until another person approves.
        let (f, r) = a.register(&facility("system/*.rs"), &adm).unwrap();
        assert_eq!(r.status, ClientStatus::PendingApproval);
        assert!(a.issue(&f.client_id, &f.client_secret, None).is_err());
        assert!(not_allowed(a.approve(&f.client_id, &adm)), "an admin cannot approve");
        assert!(not_allowed(a.approve(&f.client_id, &op)), "nor the operator");
        // The admin's own security officer (approved by the real one) cannot approve for it.
        let (so2, r) = a.register(&officer(), &adm).unwrap();
        assert_eq!(r.status, ClientStatus::PendingApproval, "a second officer needs approval too");
        a.approve(&so2.client_id, &so1).unwrap();
        let so2 = login(&so2);
        assert!(not_allowed(a.approve(&f.client_id, &so2)), "registered by the requester: not a second person");
        let (r, req) = a.approve(&f.client_id, &so1).unwrap();
        assert_eq!((r.status, req.kind, r.approved_by.as_deref()), (ClientStatus::Active, RequestKind::Registration, Some(so1.client_id())));
        let t = a.issue(&f.client_id, &f.client_secret, None).unwrap();
        assert!(matches!(a.approve(&f.client_id, &so1), Err(AuthError::NothingPending)));

        // A widening change waits; the old registration stays in force.
        let wider = ClientUpdate { organization: Some(Some("Organization/rs-2".into())), ..Default::default() };
        let (r, pending) = a.request_update(&f.client_id, &wider, &adm).unwrap();
        assert!(pending);
        assert_eq!(a.client(&f.client_id).unwrap().unwrap().organization.as_deref(), Some("Organization/rs-1"));
        assert!(r.pending.is_some());
        let narrower = ClientUpdate { scopes: Some("system/Patient.r".into()), ..Default::default() };
        assert!(matches!(a.request_update(&f.client_id, &narrower, &adm), Err(AuthError::AwaitingApproval)));
        a.reject(&f.client_id, &adm).unwrap();
        assert_eq!(a.client(&f.client_id).unwrap().unwrap().organization.as_deref(), Some("Organization/rs-1"));
        assert!(!a.request_update(&f.client_id, &narrower, &adm).unwrap().1, "narrowing applies at once");
        assert!(a.verify_any(&t.access_token).is_err());

        // A suspended client comes back only with approval, never by its requester.
        a.suspend(&f.client_id).unwrap();
        let (_, pending) = a.request_reinstate(&f.client_id, &so1).unwrap();
        assert!(pending);
        assert!(a.issue(&f.client_id, &f.client_secret, None).is_err());
        assert!(not_allowed(a.approve(&f.client_id, &so1)), "its own request");
        a.reject(&f.client_id, &so1).unwrap();
        a.request_reinstate(&f.client_id, &adm).unwrap();
        a.approve(&f.client_id, &so1).unwrap();
        assert!(a.issue(&f.client_id, &f.client_secret, None).is_ok());
        // A rejected registration is revoked for good.
        let (g, _) = a.register(&facility("system/*.rs"), &adm).unwrap();
        a.reject(&g.client_id, &so1).unwrap();
        assert!(matches!(a.approve(&g.client_id, &so1), Err(AuthError::Revoked)));
        assert_eq!(a.descendants(adm.client_id()).unwrap().len(), 4, "itself, so2, f and g");
    }

    #[test]
    fn token_from_another_server_is_refused() {
        let (_d, a) = authority();
        let (_d2, b) = authority();
        let c = a.create_client(&facility("system/*.cruds")).unwrap();
        let t = a.issue(&c.client_id, &c.client_secret, None).unwrap();
        assert!(b.verify_any(&t.access_token).is_err());
    }
}
