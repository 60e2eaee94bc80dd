//! `size_limits`: the largest request body (413) and the longest request-target (414) a
//! route accepts. A declared `Content-Length` is checked before anything is sent upstream;
//! a body without one (chunked, or HTTP/2) is counted while it streams, never buffered, and
//! cut off with 413 as soon as it passes the limit.

use crate::pipeline::{Answer, Facts, Hooks, Refusal, Step};
use crate::problems::Problems;
use bytesize::ByteSize;
use pingora::proxy::Session;
use serde::Deserialize;

/// The `size_limits:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSizeLimits {
    /// Largest request body: a number of bytes, or text such as `10 MiB` or `500 kB`.
    pub max_body: Option<ByteSize>,
    /// Longest request-target (path and query) in bytes, or text such as `8 KiB`.
    pub max_url: Option<ByteSize>,
}

/// A route's size limits.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeLimits {
    max_body: Option<u64>,
    max_url: Option<u64>,
}

/// Validates the section at `place`.
pub fn validate(raw: RawSizeLimits, place: &str, p: &mut Problems) -> Option<SizeLimits> {
    if raw.max_body.is_none() && raw.max_url.is_none() {
        p.push(
            place,
            "set max_body, max_url or both (or `false` to switch the server-wide default off)",
        );
        return None;
    }
    if raw.max_url.is_some_and(|u| u.as_u64() == 0) {
        p.push(format!("{place}.max_url"), "must be at least 1 byte");
        return None;
    }
    Some(SizeLimits {
        max_body: raw.max_body.map(|b| b.as_u64()),
        max_url: raw.max_url.map(|u| u.as_u64()),
    })
}

impl SizeLimits {
    fn body_too_large(max: u64) -> Refusal {
        Refusal {
            status: 413,
            code: "request_body_too_large",
            message: format!("the request body is larger than this route's limit of {max} bytes"),
        }
    }
}

impl Step for SizeLimits {
    fn name(&self) -> &'static str {
        "size_limits"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            request_body: self.max_body.is_some(),
            ..Hooks::default()
        }
    }

    fn request(&self, session: &mut Session, _facts: &Facts) -> Result<(), Answer> {
        let req = session.req_header();
        if let Some(max) = self.max_url {
            if req.raw_path().len() as u64 > max {
                return Err(Answer::Refuse(Refusal {
                    status: 414,
                    code: "uri_too_long",
                    message: format!(
                        "the request-target is longer than this route's limit of {max} bytes"
                    ),
                }));
            }
        }
        if let Some(max) = self.max_body {
            // Hygiene has refused a Content-Length that is not one decimal number.
            let declared = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|len| len > max) {
                return Err(Answer::Refuse(Self::body_too_large(max)));
            }
        }
        Ok(())
    }

    fn request_body(&self, received: u64, _end: bool) -> Result<(), Refusal> {
        match self.max_body {
            Some(max) if received > max => Err(Self::body_too_large(max)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sizes_as_numbers_or_text() {
        let raw: RawSizeLimits = serde_yaml::from_str("{max_body: 10 MiB, max_url: 2048}").unwrap();
        let mut p = Problems::default();
        let limits = validate(raw, "routes[0].size_limits", &mut p).unwrap();
        assert!(p.is_empty());
        assert_eq!(limits.max_body, Some(10 * 1024 * 1024));
        assert_eq!(limits.max_url, Some(2048));
        assert!(limits.request_body(10 * 1024 * 1024, false).is_ok());
        let cut = limits
            .request_body(10 * 1024 * 1024 + 1, false)
            .unwrap_err();
        assert_eq!(cut.status, 413);
    }

    #[test]
    fn an_empty_section_or_a_zero_url_is_refused_with_its_place() {
        let mut p = Problems::default();
        assert!(validate(RawSizeLimits::default(), "defaults.size_limits", &mut p).is_none());
        let raw: RawSizeLimits = serde_yaml::from_str("{max_url: 0}").unwrap();
        assert!(validate(raw, "routes[1].size_limits", &mut p).is_none());
        let problems = p.into_vec();
        assert!(
            problems[0].starts_with("defaults.size_limits: "),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("routes[1].size_limits.max_url: "),
            "{problems:?}"
        );
    }
}
