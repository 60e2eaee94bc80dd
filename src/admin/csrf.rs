//! No cross-site request forgery: a browser sends a form or `text/plain` POST to any
//! origin without asking (a "simple" request), but it may not add `Authorization` or a
//! JSON content type without a CORS preflight, which this listener never grants. So a
//! state-changing request (POST, PUT, PATCH, DELETE) needs a bearer token or
//! `Content-Type: application/json`; without either it is refused with 415 before any
//! handler runs (this matters for an admin API without tokens, open to loopback).

use super::error::AdminError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Whether the headers declare a JSON body (`application/json` or `application/*+json`,
/// parameters such as `charset` allowed).
pub fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype
                    .get(subtype.len() - 5..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// Middleware: 415 for a state-changing request with neither `Authorization` nor a JSON
/// content type.
pub async fn require_token_or_json(request: Request, next: Next) -> Response {
    let changes = matches!(
        *request.method(),
        http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE
    );
    if changes
        && !request.headers().contains_key(http::header::AUTHORIZATION)
        && !is_json(request.headers())
    {
        log::warn!(
            "admin: refused {} {} without a token or a JSON content type (CSRF)",
            request.method(),
            request.uri().path()
        );
        return AdminError::UnsupportedMediaType(
            "a request that changes something needs `Authorization: Bearer <token>` or \
             `Content-Type: application/json`"
                .into(),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&headers(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/+json",
            "json",
            "",
        ] {
            assert!(!is_json(&headers(bad)), "{bad}");
        }
        assert!(!is_json(&http::HeaderMap::new()));
    }
}
