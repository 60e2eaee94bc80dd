//! One canonical form of what a request names: its path (RFC 3986 §6.2.2) and its host
//! (RFC 9110 §4.2, RFC 3986 §3.2.2). Computed once per request; the canonical path is what
//! is routed, authorised, limited, logged and sent upstream, so those can never disagree.
//!
//! Pure functions over strings: used by the proxy for every request and by config
//! validation for route prefixes.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("the path has a '%' that is not followed by two hex digits")]
    BadPercentEncoding,
    /// `..` segments climb above the root.
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    /// The path does not start with `/`.
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

/// Characters that a canonical path may still hold but that upstreams read in ways the
/// gateway does not: refused unless the matched route opts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathQuirks {
    /// `%2F` or `%5C`: an escaped `/` or `\`, which some upstreams decode into a separator.
    pub encoded_slash: bool,
    /// A literal `\`, which Windows and IIS upstreams read as `/`.
    pub backslash: bool,
    /// A `;`, which servlet containers read as the start of path parameters.
    pub semicolon: bool,
    /// `%00`, which C-based upstreams read as the end of the path.
    pub encoded_nul: bool,
    /// A `.` or `..` piece hidden behind one of the above (`..%2F`, `..;`, `..\`): an
    /// upstream that decodes it would climb out of the route. Never allowed.
    pub hidden_dot_segment: bool,
}

impl PathQuirks {
    /// `true` when nothing needs a route's permission.
    pub fn is_clean(&self) -> bool {
        *self == PathQuirks::default()
    }
}

/// The canonical form of `path` (the path component of a request target, without query):
/// unreserved characters percent-decoded, other escapes upper-cased, empty segments merged,
/// `.` and `..` resolved. Borrows when `path` is already canonical (the common case).
pub fn path(path: &str) -> Result<(Cow<'_, str>, PathQuirks), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let needs_work = bytes.iter().any(|b| matches!(b, b'%' | b'\\' | b';'))
        || path.contains("//")
        || path.contains("/.");
    if !needs_work {
        return Ok((Cow::Borrowed(path), PathQuirks::default()));
    }
    let mut quirks = PathQuirks::default();
    let decoded = decode_unreserved(path, &mut quirks)?;
    let resolved = remove_dot_segments(&decoded)?;
    if quirks.encoded_slash || quirks.backslash || quirks.semicolon {
        quirks.hidden_dot_segment = has_hidden_dot_segment(&resolved);
    }
    if resolved == path {
        return Ok((Cow::Borrowed(path), quirks));
    }
    Ok((Cow::Owned(resolved), quirks))
}

/// RFC 3986 unreserved characters: decoding them never changes what a path means.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of every other escape, and
/// notes the quirks it passes.
fn decode_unreserved(path: &str, quirks: &mut PathQuirks) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => match (hex_value(h), hex_value(l)) {
                        (Some(h), Some(l)) => h << 4 | l,
                        _ => return Err(PathError::BadPercentEncoding),
                    },
                    _ => return Err(PathError::BadPercentEncoding),
                };
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    match value {
                        b'/' | b'\\' => quirks.encoded_slash = true,
                        0 => quirks.encoded_nul = true,
                        _ => {}
                    }
                    out.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(value >> 4)],
                        HEX[usize::from(value & 15)],
                    ]);
                }
                i += 3;
                continue;
            }
            b'\\' => quirks.backslash = true,
            b';' => quirks.semicolon = true,
            _ => {}
        }
        out.push(b);
        i += 1;
    }
    // Only ASCII was decoded (unreserved characters), and the input was a `str`.
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Merges empty segments and resolves `.` and `..` (RFC 3986 §5.2.4); a path that ends in
/// `/`, `/.` or `/..` keeps a trailing `/`. Climbing above the root is an error, as in nginx.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first piece is the empty string before the leading '/'.
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `true` when a segment, cut further at escaped slashes, backslashes and `;`, has a `.` or
/// `..` piece: what an upstream that decodes those would resolve.
fn has_hidden_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let mut rest = segment;
        loop {
            let cut = [
                rest.find("%2F"),
                rest.find("%5C"),
                rest.find('\\'),
                rest.find(';'),
            ]
            .into_iter()
            .flatten()
            .min();
            let (piece, next) = match cut {
                Some(at) => {
                    let width = if rest[at..].starts_with('%') { 3 } else { 1 };
                    (&rest[..at], Some(&rest[at + width..]))
                }
                None => (rest, None),
            };
            if piece == "." || piece == ".." {
                return true;
            }
            match next {
                Some(next) => rest = next,
                None => return false,
            }
        }
    })
}

/// Why a host has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Not `host[:port]`: stray brackets, several colons, a port that is not a number, a
    /// character no host name has.
    #[error("the Host is not a valid host[:port]")]
    Malformed,
}

/// A request's authority, canonical: the host lower-cased without one trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    /// A DNS name or IPv4 address, or an IPv6 literal in brackets (`[::1]`).
    pub host: Cow<'a, str>,
    /// The port, when one was given.
    pub port: Option<u16>,
}

/// Longest host name we accept (RFC 1035 limits names to 253 characters; brackets and a
/// trailing dot fit in the margin).
const MAX_HOST_LEN: usize = 255;

/// Parses `host[:port]` (a Host header or a URI authority) into its canonical form.
/// An empty value is `Ok(None)`: RFC 9112 §3.2 allows an empty Host.
pub fn authority(raw: &str) -> Result<Option<Authority<'_>>, HostError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(HostError::Malformed)?;
        literal
            .parse::<Ipv6Addr>()
            .map_err(|_| HostError::Malformed)?;
        let host = &raw[..literal.len() + 2];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(HostError::Malformed)?),
        };
        (host, port)
    } else {
        match raw.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    let port = match port {
        // `host:` with an empty port is allowed by RFC 3986 §3.2.3 and means no port.
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| HostError::Malformed)?)
        }
        Some(_) => return Err(HostError::Malformed),
    };
    if host.starts_with('[') {
        return Ok(Some(Authority {
            host: lowercase(host),
            port,
        }));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && !host.starts_with('.')
        && !host.ends_with('.')
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(HostError::Malformed);
    }
    Ok(Some(Authority {
        host: lowercase(host),
        port,
    }))
}

/// The canonical host of a `host[:port]` value without its port; `None` when it is empty
/// or malformed.
pub fn host_only(raw: &str) -> Option<String> {
    authority(raw).ok().flatten().map(|a| a.host.into_owned())
}

fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, PathError> {
        path(p).map(|(c, _)| c.into_owned())
    }

    fn quirks(p: &str) -> PathQuirks {
        path(p).map(|(_, q)| q).unwrap_or_default()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/a/.well-known/x", "/a/...", "/a/b.c"] {
            let (c, q) = path(p).unwrap();
            assert!(matches!(c, Cow::Borrowed(_)), "{p}");
            assert_eq!(c, p);
            assert!(q.is_clean(), "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(canon("/%61dmin/users").unwrap(), "/admin/users");
        assert_eq!(canon("/%7euser/%2e").unwrap(), "/~user/");
        assert_eq!(canon("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
        assert_eq!(canon("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(canon("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(canon("/a%4"), Err(PathError::BadPercentEncoding));
        assert_eq!(canon("/a%zz"), Err(PathError::BadPercentEncoding));
    }

    #[test]
    fn empty_and_dot_segments_are_resolved() {
        assert_eq!(canon("//admin/users").unwrap(), "/admin/users");
        assert_eq!(canon("/a//b///").unwrap(), "/a/b/");
        assert_eq!(canon("/a/./b").unwrap(), "/a/b");
        assert_eq!(canon("/a/../b").unwrap(), "/b");
        assert_eq!(canon("/api/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(canon("/api/.%2e/admin").unwrap(), "/admin");
        assert_eq!(canon("/a/b/..").unwrap(), "/a/");
        assert_eq!(canon("/a/.").unwrap(), "/a/");
        assert_eq!(canon("/.."), Err(PathError::AboveRoot));
        assert_eq!(canon("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(canon("x:/admin"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn quirks_are_reported() {
        assert!(quirks("/admin%2Fusers").encoded_slash);
        assert!(quirks("/admin%5cusers").encoded_slash);
        assert!(quirks("/a\\b").backslash);
        assert!(quirks("/admin;x/users").semicolon);
        assert!(quirks("/a%00").encoded_nul);
        assert!(!quirks("/a%2Fb").hidden_dot_segment);
        for hidden in [
            "/api/..%2fadmin",
            "/api/%2e%2e%2fadmin",
            "/api/.%2e%2fadmin",
            "/api/..;/admin",
            "/api/..\\admin",
            "/api/x%5C..%5Cadmin",
        ] {
            assert!(quirks(hidden).hidden_dot_segment, "{hidden}");
        }
    }

    fn host(raw: &str) -> Result<Option<(String, Option<u16>)>, HostError> {
        authority(raw).map(|a| a.map(|a| (a.host.into_owned(), a.port)))
    }

    #[test]
    fn hosts_are_canonical() {
        assert_eq!(
            host("API.Example.com"),
            Ok(Some(("api.example.com".into(), None)))
        );
        assert_eq!(
            host("example.com.:8080"),
            Ok(Some(("example.com".into(), Some(8080))))
        );
        assert_eq!(host("[::1]:80"), Ok(Some(("[::1]".into(), Some(80)))));
        assert_eq!(
            host("[2001:DB8::1]"),
            Ok(Some(("[2001:db8::1]".into(), None)))
        );
        assert_eq!(host("127.0.0.1:"), Ok(Some(("127.0.0.1".into(), None))));
        assert_eq!(host("[::1]:"), Ok(Some(("[::1]".into(), None))));
        assert_eq!(host(""), Ok(None));
        for bad in [
            "[",
            "[::1",
            "[::1]x",
            "[zz]",
            "a:80:80",
            "a:x",
            "a:99999",
            "a b",
            "a/b",
            ".",
            "..",
            "a..b",
            ".a",
            "a:-1",
            "a@b",
            "a..",
            "1.2.3.4..",
        ] {
            assert_eq!(host(bad), Err(HostError::Malformed), "{bad}");
        }
    }
}
