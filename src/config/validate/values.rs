//! Values every section shares: names, ids, scopes, durations, sizes, addresses and files, each with its rule.

use super::*;

/// Smallest request-head limit accepted: below this, ordinary requests with a few cookies
/// would be refused.
pub(super) const MIN_HEADER_SIZE: usize = 1024;

/// Largest request-head limit accepted (Pingora's own parser stops at 1 MiB).
pub(super) const MAX_HEADER_SIZE: usize = 1024 * 1024 - 1;

/// A header-size limit in bytes, within [`MIN_HEADER_SIZE`]..=[`MAX_HEADER_SIZE`].
pub(super) fn header_size(
    raw: Option<usize>,
    place: &str,
    default: usize,
    p: &mut Problems,
) -> usize {
    match raw {
        None => default,
        Some(n) if (MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&n) => n,
        Some(n) => {
            p.push(
                place,
                format!("{n} bytes is outside {MIN_HEADER_SIZE}..={MAX_HEADER_SIZE}"),
            );
            default
        }
    }
}

/// A count that must be at least 1.
pub(super) fn at_least_one(
    raw: Option<usize>,
    place: &str,
    default: usize,
    p: &mut Problems,
) -> usize {
    match raw {
        Some(0) => {
            p.push(place, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// A duration that must not be zero.
pub(super) fn positive_duration(
    raw: Option<String>,
    place: &str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    let d = duration(raw, place, default, p);
    if d.is_zero() {
        p.push(place, "must be longer than 0s");
        return default;
    }
    d
}

/// Consumer and key ids: 1-128 visible ASCII characters without quotes, commas,
/// backslashes or spaces (they travel in headers and logs). The one rule for ids, in the
/// file and in the admin API.
pub fn valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"',\\".contains(&b))
}

/// What [`valid_identifier`] requires, for error messages.
pub const IDENTIFIER_RULE: &str =
    "1-128 visible ASCII characters, no quotes, commas, backslashes or spaces";

pub(super) fn check_identifier(id: &str, place: &str, p: &mut Problems) {
    if !valid_identifier(id) {
        p.push(
            place,
            format!("{id:?} is not a valid id ({IDENTIFIER_RULE})"),
        );
    }
}

/// Scopes are OAuth scope tokens (RFC 6749 §3.3) without quotes or backslashes, at most
/// 128 bytes: the one rule, in the file and in the admin API.
pub fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 128
        && scope
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
}

/// What [`valid_scope`] requires, for error messages.
pub const SCOPE_RULE: &str = "1-128 visible ASCII characters, no quotes, backslashes or spaces";

pub(super) fn check_scope(scope: &str, place: &str, p: &mut Problems) {
    if !valid_scope(scope) {
        p.push(
            place,
            format!("{scope:?} is not a valid scope ({SCOPE_RULE})"),
        );
    }
}

/// Names (plans, upstreams, routes) appear in metrics labels, logs and `RateLimit-Policy`
/// headers: 1-64 letters, digits, '-', '_', '.'. The one rule, in the file and in the
/// admin API.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What [`valid_name`] requires, for error messages.
pub const NAME_RULE: &str = "1-64 characters: letters, digits, '-', '_', '.'";

pub(super) fn check_name(name: &str, place: &str, p: &mut Problems) {
    if !valid_name(name) {
        p.push(place, format!("{name:?} is not a valid name ({NAME_RULE})"));
    }
}

/// `host:port` or `ip:port`; host names are resolved once, when the file is loaded.
pub(super) fn socket_addr(raw: &str, place: &str, p: &mut Problems) -> Option<SocketAddr> {
    if let Ok(addr) = raw.parse() {
        return Some(addr);
    }
    let has_port = raw
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        p.push(
            place,
            format!("{raw:?} is not an address of the form host:port"),
        );
        return None;
    }
    match raw.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(addr),
        Ok(None) | Err(_) => {
            p.push(place, format!("{raw:?} does not resolve to an address"));
            None
        }
    }
}

/// Durations are written like `250ms`, `5s`, `1m`.
pub(super) fn duration(
    raw: Option<String>,
    place: &str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    match raw {
        None => default,
        Some(s) => humantime::parse_duration(s.trim()).unwrap_or_else(|e| {
            p.push(
                place,
                format!("{s:?} is not a duration like 250ms, 5s or 1m ({e})"),
            );
            default
        }),
    }
}

pub(super) fn existing_file(base: &Path, raw: &str, place: &str, p: &mut Problems) -> PathBuf {
    let path = base.join(raw);
    if !path.is_file() {
        p.push(place, format!("no readable file at {}", path.display()));
    }
    path
}
