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
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), issues: Vec::new(), retry_after: None }
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
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"brankas\""));
        }
        r
    }
}
