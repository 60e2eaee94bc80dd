//! The first thing the proxy does with a request: what it names, in canonical form, or why
//! it is refused. Only origin-form (`/path`) and `http(s)` absolute-form targets are served;
//! the host comes from the HTTP/2 authority, the absolute-form target or `Host`, in that
//! order (RFC 9112 §3.2.2), and must be a well-formed `host[:port]`.

use crate::api_error::ApiError;
use crate::canonical::{self, Authority, PathQuirks};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;
use std::borrow::Cow;

/// What a request names, canonical; borrowed from the request where it already was.
#[derive(Debug)]
pub struct Target<'a> {
    /// The canonical path, without query.
    pub path: Cow<'a, str>,
    /// Path characters that need the route's permission.
    pub quirks: PathQuirks,
    /// The request's host, when it names one.
    pub authority: Option<Authority<'a>>,
    /// `false` when the client sent an absolute-form target (rewritten to origin-form
    /// upstream).
    pub origin_form: bool,
}

impl Target<'_> {
    /// `true` when the upstream must get another request-target than the client sent.
    pub fn rewritten(&self) -> bool {
        !self.origin_form || matches!(self.path, Cow::Owned(_))
    }
}

/// Reads and checks the request-target and host of `req`.
pub fn parse(req: &RequestHeader) -> Result<Target<'_>, ApiError> {
    let raw = req.raw_path();
    if !req.raw_path_is_utf8() {
        return Err(ApiError::BadPath("the path is not valid UTF-8"));
    }
    let (origin_form, target_authority) = if raw.first() == Some(&b'/') {
        (true, None)
    } else {
        match raw_target_authority(raw) {
            RawTargetAuthority::Absolute {
                scheme, authority, ..
            } if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https") => {
                (false, Some(authority))
            }
            _ => return Err(ApiError::BadRequestTarget),
        }
    };
    let (path, quirks) = canonical::path(req.uri.path()).map_err(|e| {
        ApiError::BadPath(match e {
            canonical::PathError::BadPercentEncoding => "the path has a malformed %-escape",
            canonical::PathError::AboveRoot => "the path climbs above the root with '..'",
            canonical::PathError::NotAbsolute => "the path does not start with '/'",
        })
    })?;
    let authority = authority(req, target_authority)?;
    Ok(Target {
        path,
        quirks,
        authority,
        origin_form,
    })
}

/// The canonical host of `req`. `target_authority`: the authority of an absolute-form
/// target (Pingora has already checked that a `Host` beside it is the same).
fn authority<'a>(
    req: &'a RequestHeader,
    target_authority: Option<&'a [u8]>,
) -> Result<Option<Authority<'a>>, ApiError> {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused, an absolute-form one too.
    if req.version == http::Version::HTTP_11 && req.headers.get(http::header::HOST).is_none() {
        return Err(ApiError::MissingHost);
    }
    let raw: Option<&str> = match (req.uri.authority(), target_authority) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(a)) => Some(std::str::from_utf8(a).map_err(|_| ApiError::BadHost)?),
        (None, None) => match req.headers.get(http::header::HOST) {
            Some(h) => Some(h.to_str().map_err(|_| ApiError::BadHost)?),
            None => None,
        },
    };
    match raw {
        Some(raw) => canonical::authority(raw).map_err(|_| ApiError::BadHost),
        None => Ok(None),
    }
}

/// The first quirk of `found` that `allowed` does not permit, by name; `None` when the path
/// may pass. A dot segment hidden behind an escape never passes.
pub fn refused_quirk(found: &PathQuirks, allowed: &PathQuirks) -> Option<&'static str> {
    if found.hidden_dot_segment {
        return Some("a '.' or '..' segment hidden behind an escape, '\\' or ';'");
    }
    [
        (
            found.encoded_slash && !allowed.encoded_slash,
            "an escaped '/' or '\\' (%2F, %5C)",
        ),
        (found.backslash && !allowed.backslash, "a '\\'"),
        (
            found.semicolon && !allowed.semicolon,
            "a ';' (path parameters)",
        ),
        (
            found.encoded_nul && !allowed.encoded_nul,
            "an escaped NUL (%00)",
        ),
    ]
    .into_iter()
    .find_map(|(refused, what)| refused.then_some(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_origin_and_http_absolute_forms_are_served() {
        let ok = req(b"/a", &[("host", "x")]);
        assert!(parse(&ok).unwrap().origin_form);
        let abs = req(
            b"http://Api.Example.com:8080/a/../b?q=1",
            &[("host", "Api.Example.com:8080")],
        );
        let t = parse(&abs).unwrap();
        assert!(!t.origin_form && t.rewritten());
        assert_eq!(t.path, "/b");
        assert_eq!(t.authority.as_ref().unwrap().host, "api.example.com");
        assert_eq!(t.authority.unwrap().port, Some(8080));
        for bad in [&b"x:/admin/users"[..], b"*", b"ftp://h/admin", b"admin"] {
            let r = req(bad, &[("host", "x")]);
            assert_eq!(
                parse(&r).unwrap_err(),
                ApiError::BadRequestTarget,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hosts_are_checked() {
        for bad in ["[", "a:80:80", "a:x", "a b"] {
            let r = req(b"/", &[("host", bad)]);
            assert_eq!(parse(&r).unwrap_err(), ApiError::BadHost, "{bad}");
        }
        let mut r = req(b"/", &[]);
        assert_eq!(parse(&r).unwrap_err(), ApiError::MissingHost);
        let abs = req(b"http://a.test/", &[]);
        assert_eq!(parse(&abs).unwrap_err(), ApiError::MissingHost);
        r.set_version(http::Version::HTTP_10);
        assert!(parse(&r).unwrap().authority.is_none());
    }

    #[test]
    fn quirks_need_permission() {
        let found = PathQuirks {
            semicolon: true,
            ..Default::default()
        };
        assert!(refused_quirk(&found, &PathQuirks::default()).is_some());
        assert!(refused_quirk(&found, &found).is_none());
        let hidden = PathQuirks {
            semicolon: true,
            hidden_dot_segment: true,
            ..Default::default()
        };
        assert!(refused_quirk(&hidden, &hidden).is_some());
    }
}
