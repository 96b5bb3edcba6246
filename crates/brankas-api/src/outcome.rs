//! Errors at the HTTP boundary: every failure becomes a FHIR OperationOutcome with the right
//! status, and none of them carries patient data (engine and validation messages are built
//! from element and parameter names only).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use brankas_engine::EngineError;
use serde_json::{Value, json};

/// An HTTP error response, rendered as OperationOutcome.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub issues: Vec<(String, &'static str, String)>,
    /// Seconds for a `Retry-After` header (429, 503). Every 429 has one (1 s unless set).
    pub retry_after: Option<u64>,
    /// The RFC 6750 `error_description` of a 401 for a bearer token that was presented but
    /// not accepted (sent with `error="invalid_token"`); none when no token was presented.
    pub invalid_token: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), issues: Vec::new(), retry_after: None, invalid_token: None }
    }
    /// 429 with the seconds after which a retry may succeed.
    pub fn throttled(message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after.max(1)), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message) }
    }
    /// 401 for a bearer token that was presented and not accepted (RFC 6750 `invalid_token`):
    /// expired (FHIR issue `expired`: fetch a new token) or otherwise not valid.
    pub fn invalid_token(e: &brankas_auth::AuthError) -> Self {
        let (code, description, message) = match e {
            brankas_auth::AuthError::Expired => ("expired", "The access token expired", "the access token expired; request a new one"),
            brankas_auth::AuthError::Stale => {
                ("login", "The access token is no longer valid", "the access token is no longer valid (its client was suspended, revoked or narrowed)")
            }
            _ => ("login", "The access token is not valid", "the bearer access token is not valid"),
        };
        Self { invalid_token: Some(description), ..Self::new(StatusCode::UNAUTHORIZED, code, message) }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", m)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "login", "a valid bearer access token is required")
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "resource not found")
    }
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", "method not allowed on this URL")
    }

    pub fn to_outcome(&self) -> Value {
        let mut issues: Vec<Value> = vec![json!({"severity": "error", "code": self.code, "diagnostics": self.message})];
        for (path, code, msg) in &self.issues {
            issues.push(json!({"severity": "error", "code": code, "diagnostics": msg, "expression": [path]}));
        }
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use StatusCode as S;
        match e {
            EngineError::NotFound => Self::not_found(),
            EngineError::Gone => Self::new(S::GONE, "deleted", "resource was deleted"),
            EngineError::Conflict => Self::new(S::CONFLICT, "conflict", e.to_string()),
            EngineError::PreconditionFailed(_) => Self::new(S::PRECONDITION_FAILED, "conflict", e.to_string()),
            EngineError::Invalid(issues) => {
                let mut err = Self::new(S::UNPROCESSABLE_ENTITY, "invalid", "the resource does not conform to FHIR R4");
                err.issues = issues.into_iter().map(|i| (i.path, i.code.as_fhir_code(), i.message)).collect();
                err
            }
            EngineError::Nik(_) => Self::new(S::UNPROCESSABLE_ENTITY, "value", e.to_string()),
            EngineError::NikHeld(_) => Self::new(S::CONFLICT, "duplicate", e.to_string()),
            EngineError::BadRequest(_) => Self::new(S::BAD_REQUEST, "invalid", e.to_string()),
            EngineError::Unprocessable(_) => Self::new(S::UNPROCESSABLE_ENTITY, "processing", e.to_string()),
            EngineError::Search(_) => Self::new(S::BAD_REQUEST, "not-supported", e.to_string()),
            EngineError::TooLarge(_) => Self::new(S::PAYLOAD_TOO_LARGE, "too-costly", e.to_string()),
            EngineError::UnsupportedMedia(_) => Self::new(S::UNSUPPORTED_MEDIA_TYPE, "not-supported", e.to_string()),
            EngineError::Forbidden(_) => Self::new(S::FORBIDDEN, "forbidden", e.to_string()),
            EngineError::Integrity => {
                tracing::error!("integrity failure: stored data failed authentication");
                Self::new(S::INTERNAL_SERVER_ERROR, "exception", "stored data failed its integrity check; it was not served")
            }
            EngineError::Store(ref inner) => {
                tracing::error!(error = %inner, "storage failure");
                Self::new(S::SERVICE_UNAVAILABLE, "transient", "storage unavailable")
            }
            EngineError::Vault(ref inner) => {
                tracing::error!(error = %inner, "key failure");
                Self::new(S::SERVICE_UNAVAILABLE, "transient", "key provider unavailable")
            }
            EngineError::AuditUnavailable => Self::new(S::SERVICE_UNAVAILABLE, "transient", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_outcome()).unwrap_or_default();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::FHIR_JSON));
        let retry_after = self.retry_after.or((self.status == StatusCode::TOO_MANY_REQUESTS).then_some(1));
        if let Some(s) = retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = match self.invalid_token {
                Some(d) => HeaderValue::from_str(&format!("Bearer realm=\"brankas\", error=\"invalid_token\", error_description=\"{d}\"")).ok(),
                None => None,
            };
            r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.unwrap_or(HeaderValue::from_static("Bearer realm=\"brankas\"")));
        }
        r
    }
}
