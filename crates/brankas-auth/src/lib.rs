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

mod scopes;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use brankas_store::Store;
use brankas_vault::{Vault, ct_eq, random_bytes, random_id, sha256};

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
    #[error("bad client registration: {0}")]
    BadRegistration(&'static str),
    #[error("a client registration failed its integrity check")]
    Integrity,
    #[error("storage: {0}")]
    Store(#[from] brankas_store::StoreError),
    #[error("key handling failed")]
    Vault(#[from] brankas_vault::VaultError),
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

/// Lifecycle state of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientStatus {
    Active,
    Suspended,
    Revoked,
}

/// A registered client, as stored. Contains no secret, only its hash.
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
}

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
    /// A principal for offline tools (`brankas import`) that act with the operator's
    /// authority on the data directory itself, not over the network.
    pub fn local_operator() -> Self {
        Self {
            client_id: "local-operator".into(),
            role: Role::Admin,
            scopes: Scopes::parse("system/*.cruds").expect("static scope"),
            token_id: String::new(),
        }
    }
}

/// An issued access token.
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: String,
}

/// Issues and verifies tokens, and manages client registrations.
pub struct Authority {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    token_seconds: u64,
}

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
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

impl Authority {
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>) -> Self {
        Self { store, vault, token_seconds: MAX_TOKEN_SECONDS }
    }

    /// Sets the token lifetime, capped at [`MAX_TOKEN_SECONDS`].
    pub fn with_token_seconds(mut self, s: u64) -> Self {
        self.token_seconds = s.clamp(1, MAX_TOKEN_SECONDS);
        self
    }

    /// Registers a client and returns its credentials (the secret is not kept).
    pub fn create_client(&self, name: &str, role: Role, scopes: &str) -> Result<NewClient, AuthError> {
        Scopes::parse(scopes).map_err(|_| AuthError::BadRegistration("invalid scopes"))?;
        if name.is_empty() || name.len() > 200 {
            return Err(AuthError::BadRegistration("name must be 1 to 200 characters"));
        }
        let client_id = format!("c-{}", random_id(12)?);
        let mut raw = [0u8; 32];
        random_bytes(&mut raw)?;
        let client_secret = B64.encode(raw);
        let rec = ClientRecord {
            client_id: client_id.clone(),
            name: name.into(),
            role,
            scopes: scopes.into(),
            status: ClientStatus::Active,
            secret_sha256: hex(&sha256(client_secret.as_bytes())),
            created: rfc3339_now(),
        };
        self.put_client(&rec)?;
        Ok(NewClient { client_id, client_secret })
    }

    /// A client's registration. A stored document whose MAC does not verify (edited or
    /// planted in the database) is an integrity failure, never a usable client.
    pub fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, AuthError> {
        let Some(doc) = self.store.get_client(client_id)? else { return Ok(None) };
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
        Ok(Some(rec))
    }

    /// Stores a client's registration, with a MAC binding it to its client id.
    pub fn put_client(&self, rec: &ClientRecord) -> Result<(), AuthError> {
        let body = serde_json::to_vec(rec).map_err(|_| AuthError::BadRegistration("encode"))?;
        let mut doc = hex(&self.vault.registry_mac(&registry_input(&rec.client_id, &body))).into_bytes();
        doc.extend_from_slice(&body);
        self.store.put_client(&rec.client_id, &doc)?;
        Ok(())
    }

    /// Sets a client's status (suspend, reinstate, revoke).
    pub fn set_status(&self, client_id: &str, status: ClientStatus) -> Result<(), AuthError> {
        let mut rec = self.client(client_id)?.ok_or(AuthError::InvalidClient)?;
        rec.status = status;
        self.put_client(&rec)
    }

    /// OAuth2 `client_credentials`: checks the secret and issues a token for `requested`
    /// scopes (all of the client's scopes when `None`). Asking for more than granted fails.
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
        let claims = Claims { iss: ISSUER.into(), sub: rec.client_id, scope: scope.clone(), iat, exp: iat + self.token_seconds, jti: random_id(16)? };
        let body = serde_json::to_vec(&claims).map_err(|_| AuthError::InvalidToken)?;
        let signing_input = format!("{}.{}", B64.encode(JWS_HEADER), B64.encode(body));
        let sig = self.vault.token_mac(signing_input.as_bytes());
        Ok(IssuedToken { access_token: format!("{signing_input}.{}", B64.encode(sig)), expires_in: self.token_seconds, scope })
    }

    /// Verifies a bearer token: signature, issuer, expiry, and that its client is still active.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::InvalidToken);
        };
        // Only our own fixed header is accepted: no algorithm negotiation ("alg":"none" etc.).
        if h != B64.encode(JWS_HEADER) {
            return Err(AuthError::InvalidToken);
        }
        let sig = B64.decode(s).map_err(|_| AuthError::InvalidToken)?;
        let expected = self.vault.token_mac(format!("{h}.{b}").as_bytes());
        if !ct_eq(&sig, &expected) {
            return Err(AuthError::InvalidToken);
        }
        let claims: Claims = serde_json::from_slice(&B64.decode(b).map_err(|_| AuthError::InvalidToken)?).map_err(|_| AuthError::InvalidToken)?;
        let now = now_secs();
        if claims.iss != ISSUER || claims.exp <= now || claims.iat > now + 60 || claims.exp - claims.iat > MAX_TOKEN_SECONDS {
            return Err(AuthError::InvalidToken);
        }
        let rec = match self.client(&claims.sub) {
            Ok(Some(r)) => r,
            Ok(None) | Err(AuthError::Integrity) => return Err(AuthError::InvalidToken),
            Err(e) => return Err(e),
        };
        if rec.status != ClientStatus::Active {
            return Err(AuthError::InvalidToken);
        }
        let scopes = Scopes::parse(&claims.scope).map_err(|_| AuthError::InvalidToken)?;
        Ok(Principal { client_id: rec.client_id, role: rec.role, scopes, token_id: claims.jti })
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

    #[test]
    fn issue_verify_and_revoke() {
        let (_d, a) = authority();
        let c = a.create_client("his", Role::Admin, "system/*.cruds").unwrap();
        assert!(a.issue(&c.client_id, "wrong", None).is_err());
        assert!(a.issue("nobody", &c.client_secret, None).is_err());
        let t = a.issue(&c.client_id, &c.client_secret, None).unwrap();
        assert!(t.expires_in <= 300);
        let p = a.verify(&t.access_token).unwrap();
        assert_eq!(p.client_id(), c.client_id);
        assert!(p.scopes().permits("Patient", 'r'));
        // Narrower request is fine, wider is refused.
        let narrow = a.issue(&c.client_id, &c.client_secret, Some("system/Patient.r")).unwrap();
        assert!(!a.verify(&narrow.access_token).unwrap().scopes().permits("Observation", 'r'));
        // Tampering anywhere invalidates.
        let mut forged = t.access_token.clone();
        let mid = forged.len() / 2;
        forged.replace_range(mid..mid + 1, if &forged[mid..mid + 1] == "A" { "B" } else { "A" });
        assert!(a.verify(&forged).is_err());
        assert!(a.verify("a.b.c").is_err());
        assert!(a.verify(&"x".repeat(10_000)).is_err());
        a.set_status(&c.client_id, ClientStatus::Suspended).unwrap();
        assert!(a.verify(&t.access_token).is_err(), "suspension takes effect on the next request");
        assert!(a.issue(&c.client_id, &c.client_secret, None).is_err());
    }

    #[test]
    fn edited_or_planted_client_rows_are_refused() {
        let (d, a) = authority();
        let c = a.create_client("his", Role::Clinician, "system/Patient.r").unwrap();
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

    #[test]
    fn token_from_another_server_is_refused() {
        let (_d, a) = authority();
        let (_d2, b) = authority();
        let c = a.create_client("his", Role::Admin, "system/*.cruds").unwrap();
        let t = a.issue(&c.client_id, &c.client_secret, None).unwrap();
        assert!(b.verify(&t.access_token).is_err());
    }
}
