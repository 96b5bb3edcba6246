//! Cross-origin requests (CORS) for browser applications, from the origins the operator names
//! (`brankas serve --cors-origin https://app.example`) and from no other: exact origins,
//! never `*`. A preflight (`OPTIONS`, which carries no token) is answered before
//! authentication; every other answer, refusals included, carries the CORS headers for an
//! allowed origin, so that a browser application can read its OperationOutcome. Requests
//! still need their bearer token: CORS only lets a browser show the answer to the page.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// An origin that cannot be allowed.
#[derive(Debug, thiserror::Error)]
#[error("a CORS origin is scheme://host[:port] with scheme http or https, nothing after it (not `*`): {0:?}")]
pub struct BadOrigin(pub String);

/// The origin as browsers send it (`https://app.example`, `http://localhost:3000`).
fn origin(o: &str) -> Result<HeaderValue, BadOrigin> {
    let bad = || BadOrigin(o.chars().take(200).collect());
    let trimmed = o.trim().trim_end_matches('/');
    let uri: Uri = trimmed.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
    let authority_ok = uri.authority().is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty());
    let bare = uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
    if !(scheme_ok && authority_ok && bare) {
        return Err(bad());
    }
    HeaderValue::from_str(&trimmed.to_ascii_lowercase()).map_err(|_| bad())
}

/// The CORS layer for `origins`, or `None` when there are none (no CORS headers at all).
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>, BadOrigin> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allowed = origins.iter().map(|o| origin(o)).collect::<Result<Vec<_>, _>>()?;
    let h = HeaderName::from_static;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::ACCEPT_LANGUAGE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                h("prefer"),
                h("if-none-exist"),
                h("x-purpose-of-use"),
                h("x-break-glass-reason"),
            ])
            .expose_headers([header::ETAG, header::LOCATION, header::LAST_MODIFIED, header::CONTENT_LOCATION, header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(Duration::from_secs(600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_web_origins() {
        assert_eq!(origin("https://app.example").unwrap(), "https://app.example");
        assert_eq!(origin("http://localhost:3000/").unwrap(), "http://localhost:3000");
        assert_eq!(origin("HTTPS://App.Example").unwrap(), "https://app.example");
        for bad in ["*", "app.example", "ftp://app.example", "https://app.example/path", "https://app.example?x=1", "https://user@app.example", "https://", ""] {
            assert!(origin(bad).is_err(), "{bad}");
        }
        assert!(layer(&[]).unwrap().is_none());
        assert!(layer(&["https://a.example".into(), "*".into()]).is_err());
    }
}
