//! Response headers from a decision, per the IETF httpapi rate-limit headers draft
//! (structured fields), plus the common `X-RateLimit-*` trio and `Retry-After`:
//!
//! ```text
//! RateLimit-Policy: "gold-second";q=10;w=1, "gold-hour";q=1000;w=3600
//! RateLimit: "gold-second";r=0;t=1
//! X-RateLimit-Limit: 10
//! X-RateLimit-Remaining: 0
//! X-RateLimit-Reset: 1
//! Retry-After: 1
//! ```
//!
//! Each rate window is one `RateLimit-Policy` member, named `<policy>-<period>`
//! (`second`, `minute`, `hour`, `day`, else e.g. `10s` or `1500ms`); identical members
//! (the same policy on two subjects) appear once. `RateLimit` and the `X-RateLimit-*`
//! headers describe one window: the one that refused the request, else the one
//! closest to exhaustion (lowest remaining/limit). Times are seconds, rounded up.
//! Concurrency caps have no header of their own; a request they refuse gets
//! `Retry-After: 1`. A decision without windows (fail-open) gets no headers.

use std::fmt::Write;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::decision::{Decision, WindowKind, WindowState};
use super::policy::ceil_secs;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The headers for `decision`, in a fixed order (at most six).
pub fn rate_limit_headers(decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(6);
    if let Some(shown) = shown_window(decision) {
        let mut policy = String::with_capacity(32 * decision.windows.len());
        let mut seen: Vec<&WindowState> = Vec::with_capacity(decision.windows.len());
        for w in decision
            .windows
            .iter()
            .filter(|w| w.kind == WindowKind::Rate)
        {
            if seen.iter().any(|s| same_member(s, w)) {
                continue;
            }
            seen.push(w);
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            write_name(&mut policy, w);
            // Writing to a String cannot fail.
            let _ = write!(policy, ";q={};w={}", w.limit, ceil_secs(w.period).max(1));
        }
        let mut current = String::with_capacity(48);
        write_name(&mut current, shown);
        let reset = ceil_secs(shown.reset_after);
        let _ = write!(current, ";r={};t={reset}", shown.remaining);

        push(&mut out, RATELIMIT_POLICY, policy);
        push(&mut out, RATELIMIT, current);
        out.push((X_RATELIMIT_LIMIT, HeaderValue::from(shown.limit)));
        out.push((X_RATELIMIT_REMAINING, HeaderValue::from(shown.remaining)));
        out.push((X_RATELIMIT_RESET, HeaderValue::from(reset)));
    }
    if !decision.allowed {
        let retry = decision.retry_after.map_or(1, ceil_secs).max(1);
        out.push((RETRY_AFTER, HeaderValue::from(retry)));
    }
    out
}

/// Inserts the headers for `decision` into `headers`, replacing any of the same name.
pub fn insert_headers(decision: &Decision, headers: &mut HeaderMap) {
    for (name, value) in rate_limit_headers(decision) {
        headers.insert(name, value);
    }
}

/// The window the single-window headers describe: the refusing rate window, else the
/// rate window with the lowest remaining/limit (the first on ties).
fn shown_window(decision: &Decision) -> Option<&WindowState> {
    if let Some(refusing) = decision.refused_by.and_then(|i| decision.windows.get(i)) {
        if refusing.kind == WindowKind::Rate {
            return Some(refusing);
        }
    }
    decision
        .windows
        .iter()
        .filter(|w| w.kind == WindowKind::Rate)
        .reduce(|best, w| if ratio_below(w, best) { w } else { best })
}

/// Whether `a.remaining / a.limit < b.remaining / b.limit` (a zero limit is ratio 0).
fn ratio_below(a: &WindowState, b: &WindowState) -> bool {
    let ratio = |w: &WindowState| {
        if w.limit == 0 {
            (0, 1)
        } else {
            (u128::from(w.remaining), u128::from(w.limit))
        }
    };
    let ((ar, al), (br, bl)) = (ratio(a), ratio(b));
    ar * bl < br * al
}

fn same_member(a: &WindowState, b: &WindowState) -> bool {
    a.policy == b.policy && a.period == b.period && a.limit == b.limit
}

/// Writes the member name `"<policy>-<period>"` as a structured-field string.
fn write_name(out: &mut String, w: &WindowState) {
    out.push('"');
    for c in w.policy.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            // Validated policy names are printable ASCII; keep the header valid anyway.
            _ => out.push('_'),
        }
    }
    out.push('-');
    let ms = w.period.as_millis();
    let _ = match ms {
        1_000 => write!(out, "second"),
        60_000 => write!(out, "minute"),
        3_600_000 => write!(out, "hour"),
        86_400_000 => write!(out, "day"),
        ms if ms % 1000 == 0 => write!(out, "{}s", ms / 1000),
        ms => write!(out, "{ms}ms"),
    };
    out.push('"');
}

fn push(out: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, value: String) {
    // Only printable ASCII is written above, so the value is always valid.
    if let Ok(value) = HeaderValue::try_from(value) {
        out.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::decision::Source;
    use std::sync::Arc;
    use std::time::Duration;

    fn window(
        policy: &str,
        limit: u64,
        remaining: u64,
        period_ms: u64,
        reset_ms: u64,
    ) -> WindowState {
        WindowState {
            subject: 0,
            policy: Arc::from(policy),
            kind: WindowKind::Rate,
            limit,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            period: Duration::from_millis(period_ms),
        }
    }

    fn decision(
        windows: Vec<WindowState>,
        refused_by: Option<usize>,
        retry_ms: Option<u64>,
    ) -> Decision {
        Decision {
            allowed: refused_by.is_none() && retry_ms.is_none(),
            windows,
            refused_by,
            retry_after: retry_ms.map(Duration::from_millis),
            source: Source::Redis,
            lease: None,
        }
    }

    fn text(headers: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().expect("visible ASCII").to_string(),
                )
            })
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allowed_request_describes_the_window_closest_to_exhaustion() {
        let d = decision(
            vec![
                window("gold", 10, 7, 1000, 400),                // 0.7
                window("gold", 1000, 100, 3_600_000, 1_800_000), // 0.1
                window("route", 500, 400, 60_000, 30_500),       // 0.8
            ],
            None,
            None,
        );
        assert_eq!(
            text(&rate_limit_headers(&d)),
            pairs(&[
                (
                    "ratelimit-policy",
                    r#""gold-second";q=10;w=1, "gold-hour";q=1000;w=3600, "route-minute";q=500;w=60"#
                ),
                ("ratelimit", r#""gold-hour";r=100;t=1800"#),
                ("x-ratelimit-limit", "1000"),
                ("x-ratelimit-remaining", "100"),
                ("x-ratelimit-reset", "1800"),
            ])
        );
    }

    #[test]
    fn refused_request_describes_the_refusing_window_and_says_when_to_retry() {
        let d = decision(
            vec![
                window("gold", 10, 0, 1000, 1000),
                window("gold", 1000, 0, 3_600_000, 2_000_001),
            ],
            Some(0),
            Some(250),
        );
        let headers = text(&rate_limit_headers(&d));
        assert_eq!(
            headers[1],
            pairs(&[("ratelimit", r#""gold-second";r=0;t=1"#)])[0]
        );
        assert_eq!(
            headers.last(),
            Some(&("retry-after".to_string(), "1".to_string()))
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        let d = decision(vec![window("p", 5, 0, 10_000, 9_001)], Some(0), Some(9_001));
        let headers = text(&rate_limit_headers(&d));
        assert_eq!(headers[0].1, r#""p-10s";q=5;w=10"#);
        assert_eq!(headers[4].1, "10");
        assert_eq!(headers[5], ("retry-after".to_string(), "10".to_string()));
    }

    #[test]
    fn odd_periods_and_names_are_still_valid_structured_fields() {
        let d = decision(vec![window(r#"we"ird\name"#, 3, 3, 1500, 0)], None, None);
        let headers = text(&rate_limit_headers(&d));
        assert_eq!(headers[0].1, r#""we\"ird\\name-1500ms";q=3;w=2"#);
        let parsed = sfv::Parser::parse_list(headers[0].1.as_bytes()).expect("a valid sf-list");
        let sfv::ListEntry::Item(item) = &parsed[0] else {
            panic!("expected an item")
        };
        assert_eq!(item.bare_item.as_str(), Some(r#"we"ird\name-1500ms"#));
    }

    #[test]
    fn the_same_policy_on_two_subjects_is_listed_once() {
        let mut second = window("gold", 10, 9, 1000, 900);
        second.subject = 1;
        let d = decision(vec![window("gold", 10, 5, 1000, 900), second], None, None);
        assert_eq!(
            text(&rate_limit_headers(&d))[0].1,
            r#""gold-second";q=10;w=1"#
        );
    }

    #[test]
    fn a_concurrency_refusal_gets_only_retry_after_beyond_the_rate_windows() {
        let mut cap = window("gold", 2, 0, 0, 0);
        cap.kind = WindowKind::Concurrency;
        let d = decision(
            vec![window("gold", 10, 9, 1000, 900), cap],
            Some(1),
            Some(1000),
        );
        let headers = text(&rate_limit_headers(&d));
        assert_eq!(headers[0].1, r#""gold-second";q=10;w=1"#);
        assert_eq!(headers[1].1, r#""gold-second";r=9;t=1"#);
        assert_eq!(headers[5], ("retry-after".to_string(), "1".to_string()));
    }

    #[test]
    fn fail_open_gets_no_headers() {
        let d = Decision::unlimited(Source::FailOpen);
        assert!(rate_limit_headers(&d).is_empty());
    }

    #[test]
    fn headers_can_be_written_into_a_header_map() {
        let d = decision(vec![window("p", 5, 4, 60_000, 60_000)], None, None);
        let mut map = HeaderMap::new();
        map.insert(X_RATELIMIT_LIMIT, HeaderValue::from_static("stale"));
        insert_headers(&d, &mut map);
        assert_eq!(map.len(), 5);
        assert_eq!(map[X_RATELIMIT_LIMIT], "5");
        assert_eq!(map[RATELIMIT], r#""p-minute";r=4;t=60"#);
    }
}
