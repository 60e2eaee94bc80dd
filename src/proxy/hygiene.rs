//! Request-head hygiene, checked once Pingora has parsed a head and before any phase looks
//! at it: an HTTP/1.0 request without `Host` is refused, and `Content-Length` reaches the
//! upstream as exactly one value.
//!
//! Pingora itself already refuses differing `Content-Length` values, `Content-Length` next
//! to `Transfer-Encoding` (it drops the length and closes the connection afterwards), a
//! final transfer coding other than `chunked`, and two `Host` fields.

use crate::api_error::ApiError;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Version};
use pingora::http::RequestHeader;

/// Checks and canonicalises `req` in place. `health_path` (the gateway's own health
/// endpoint) is the one place an HTTP/1.0 request without `Host` is still answered.
pub fn check(req: &mut RequestHeader, health_path: Option<&str>) -> Result<(), ApiError> {
    require_host(req, health_path)?;
    single_content_length(req);
    Ok(())
}

/// An HTTP/1.0 request without `Host` (nor an absolute-form target) could only be forwarded
/// as an HTTP/1.1 request without `Host`, or with a host the client never named, so it is
/// refused, except on the health endpoint, which load balancers probe with bare HTTP/1.0
/// requests. (An HTTP/1.1 one is refused by [`super::target`], RFC 9112 §3.2; HTTP/2
/// carries `:authority`.)
fn require_host(req: &RequestHeader, health_path: Option<&str>) -> Result<(), ApiError> {
    let old_version = matches!(req.version, Version::HTTP_10 | Version::HTTP_09);
    if !old_version || req.headers.contains_key(HOST) || req.uri.authority().is_some() {
        return Ok(());
    }
    if health_path == Some(req.uri.path()) {
        return Ok(());
    }
    Err(ApiError::MissingHost)
}

/// Repeated or comma-listed `Content-Length` values (which Pingora has checked are all the
/// same) become one field with one value, so an upstream never sees two.
fn single_content_length(req: &mut RequestHeader) {
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return;
    };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let Some(token) = first
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .find(|t| !t.is_empty())
    else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(token) else {
        return;
    };
    // insert_header replaces every field of that name.
    let _ = req.insert_header(CONTENT_LENGTH, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_version(version);
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn http10_without_host_reaches_only_the_health_endpoint() {
        let mut req = request(Version::HTTP_10, &[]);
        assert_eq!(check(&mut req, Some("/health")), Err(ApiError::MissingHost));
        assert_eq!(check(&mut req, Some("/x")), Ok(()));
        let mut with_host = request(Version::HTTP_10, &[("host", "a")]);
        assert_eq!(check(&mut with_host, None), Ok(()));
        // HTTP/1.1 is target.rs's to refuse; HTTP/2 has :authority.
        let mut h11 = request(Version::HTTP_11, &[]);
        assert_eq!(check(&mut h11, None), Ok(()));
    }

    #[test]
    fn repeated_content_length_becomes_one_value() {
        let mut req = request(
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("content-length", "5"),
                ("content-length", "5"),
            ],
        );
        check(&mut req, None).unwrap();
        let values: Vec<_> = req.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(values, ["5"]);
        let mut listed = request(
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "7, 7")],
        );
        check(&mut listed, None).unwrap();
        assert_eq!(listed.headers[CONTENT_LENGTH], "7");
    }
}
