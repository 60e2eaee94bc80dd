//! Redirect routes. A route with `redirect: {location: ...}` answers every request it
//! matches with a redirect instead of proxying it: to a fixed URL or path, which may carry
//! the groups of a regex over the canonical path (`$1`, `${name}`). A route with
//! `redirect: {https: true}` sends plain-HTTP requests to the same host and path over
//! HTTPS; with an upstream as well, requests on TLS listeners are proxied as usual.
//!
//! Redirects are answered in the request hook, before identification, and are set per
//! route only (they replace the route's upstream; `defaults:` has no `redirect`).
//!
//! The Location is built so that the client cannot choose where it points: a fixed
//! location's scheme and host are checked at load and no group may stand before the end of
//! its host; the request's text (groups, path, query) is percent-escaped into it, so it is
//! always a valid URI and a valid header value; a path location never starts with `//`.
//! The HTTPS upgrade's host is the request's canonical host (`crate::canonical`), which the
//! proxy validated before routing.

use super::path_template::{escape_into, PathTemplate, TemplateError};
use crate::canonical;
use crate::pipeline::{Answer, Facts, Hooks, Refusal, Step};
use crate::problems::Problems;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;
use std::fmt::Write;

/// The `redirect:` section of a route as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// Where clients are sent: an `http(s)://host[:port]/...` URL or a path starting with
    /// `/`, with the groups of `pattern` (`$1`, `${name}`, `$0` the whole match, `$$` a `$`).
    pub location: Option<String>,
    /// A regex over the request's canonical path (without the query); default `^.*$`,
    /// the whole path as `$0`.
    pub pattern: Option<String>,
    /// 301, 302, 307 or 308; default 302 for `location`, 308 for `https`.
    pub status: Option<u16>,
    /// Append the request's query to the location; default `true`.
    pub keep_query: Option<bool>,
    /// Redirect plain-HTTP requests to `https://<host><path>?<query>`.
    #[serde(default)]
    pub https: bool,
    /// The port of the HTTPS URL; default none (443).
    pub https_port: Option<u16>,
}

/// A route's compiled redirect.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    to: To,
    status: u16,
    keep_query: bool,
}

/// Where a redirect points.
#[derive(Debug, Clone, PartialEq)]
enum To {
    /// A location filled from the path.
    Location {
        template: PathTemplate,
        /// A path (`/...`) rather than an absolute URL.
        relative: bool,
        /// The template has a query of its own: the request's is appended with `&`.
        has_query: bool,
    },
    /// The same host and path over HTTPS.
    Https {
        port: Option<u16>,
        /// The route also has an upstream: TLS requests are proxied to it.
        upstream: bool,
    },
}

/// The statuses a redirect may have.
const STATUSES: [u16; 4] = [301, 302, 307, 308];

/// Validates the route's section at `place` (`routes[2].redirect`); `upstream`: the route
/// also names an upstream.
pub fn validate(
    raw: RawRedirect,
    upstream: bool,
    place: &str,
    p: &mut Problems,
) -> Option<Redirect> {
    let status_ok = raw.status.is_none_or(|s| STATUSES.contains(&s));
    if !status_ok {
        p.push(format!("{place}.status"), "must be 301, 302, 307 or 308");
    }
    let to = match (raw.location, raw.https) {
        (Some(_), true) => {
            p.push(
                place,
                "set location (a fixed target) or https: true (an HTTPS upgrade), not both",
            );
            None
        }
        (None, false) => {
            p.push(
                place,
                "set location (a fixed target) or https: true (an HTTPS upgrade)",
            );
            None
        }
        (Some(location), false) => {
            if upstream {
                p.push(
                    format!("{place}.location"),
                    "a route that redirects every request has no upstream: leave out \
                     upstream (only https: true combines with one)",
                );
            }
            if raw.https_port.is_some() {
                p.push(format!("{place}.https_port"), "applies to https: true only");
            }
            let pattern = raw.pattern.as_deref().unwrap_or("^.*$");
            location_target(pattern, &location, place, p)
                .filter(|_| !upstream && raw.https_port.is_none())
        }
        (None, true) => {
            if raw.pattern.is_some() {
                p.push(format!("{place}.pattern"), "applies to location only");
            }
            if raw.https_port == Some(0) {
                p.push(
                    format!("{place}.https_port"),
                    "must be a port from 1 to 65535",
                );
            }
            (raw.pattern.is_none() && raw.https_port != Some(0)).then_some(To::Https {
                port: raw.https_port.filter(|&port| port != 443),
                upstream,
            })
        }
    };
    let to = to.filter(|_| status_ok)?;
    let default_status = match to {
        To::Location { .. } => 302,
        To::Https { .. } => 308,
    };
    Some(Redirect {
        to,
        status: raw.status.unwrap_or(default_status),
        keep_query: raw.keep_query.unwrap_or(true),
    })
}

/// The compiled `location` of `place`, filled from `pattern`.
fn location_target(pattern: &str, location: &str, place: &str, p: &mut Problems) -> Option<To> {
    let template = match PathTemplate::new(pattern, location) {
        Ok(template) => template,
        Err(e @ TemplateError::Pattern(_)) => {
            p.push(format!("{place}.pattern"), e);
            return None;
        }
        Err(e) => {
            p.push(format!("{place}.location"), e);
            return None;
        }
    };
    let place = format!("{place}.location");
    if template.text_contains('#') {
        p.push(place, "a fragment ('#') is not supported");
        return None;
    }
    let lead = template.leading_text();
    let after_scheme = ["https://", "http://"].into_iter().find_map(|scheme| {
        lead.get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &lead[scheme.len()..])
    });
    let relative = match after_scheme {
        Some(rest) => {
            let end = rest.find(['/', '?']);
            if end.is_none() && template.has_groups() {
                p.push(
                    place,
                    "a group may only follow the host, never choose it: write \
                     https://host/$1",
                );
                return None;
            }
            let authority = &rest[..end.unwrap_or(rest.len())];
            if !matches!(canonical::authority(authority), Ok(Some(_))) {
                p.push(
                    place,
                    format!("{authority:?} is not a host[:port] (nor may it hold user info)"),
                );
                return None;
            }
            false
        }
        None if lead.starts_with('/') && !lead.starts_with("//") => true,
        None => {
            p.push(
                place,
                "must be an http(s)://host/... URL or a path starting with one '/'",
            );
            return None;
        }
    };
    Some(To::Location {
        has_query: template.text_contains('?'),
        template,
        relative,
    })
}

/// A refusal of this step.
fn refusal(status: u16, code: &'static str, message: &str) -> Answer {
    Answer::Refuse(Refusal {
        status,
        code,
        message: message.into(),
    })
}

/// The answer when there is nothing to redirect to (the pattern does not match, or an
/// HTTPS upgrade without an upstream is asked over TLS): as if no route matched.
fn not_found() -> Answer {
    refusal(
        404,
        "route_not_found",
        "no route matches this host and path",
    )
}

/// The request's canonical host: from the HTTP/2 or absolute-form authority, else `Host`
/// (the order the proxy's routing read it in, and had already checked).
fn canonical_host(req: &RequestHeader) -> Option<canonical::Authority<'_>> {
    let raw = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    canonical::authority(raw).ok().flatten()
}

impl Redirect {
    /// Where the request `req` is sent, or the answer instead (a TLS request on an HTTPS
    /// upgrade: proxied when the route has an upstream, else not found). `Ok(None)`: proxy.
    fn location(&self, req: &RequestHeader, tls: bool) -> Result<Option<String>, Answer> {
        if let To::Https { upstream, .. } = self.to {
            if tls {
                return if upstream { Ok(None) } else { Err(not_found()) };
            }
        }
        // The canonical path the request was routed by (routing refused any without one).
        let (path, _) = canonical::path(req.uri.path())
            .map_err(|e| refusal(400, "invalid_path", &format!("the path is refused: {e}")))?;
        let mut location = String::with_capacity(64 + path.len());
        let has_query = match &self.to {
            To::Https { port, .. } => {
                let authority = canonical_host(req).ok_or_else(|| {
                    refusal(
                        400,
                        "missing_host",
                        "an HTTPS redirect needs the request's host",
                    )
                })?;
                location.push_str("https://");
                location.push_str(&authority.host);
                if let Some(port) = port {
                    // Writing into a String cannot fail.
                    let _ = write!(location, ":{port}");
                }
                escape_into(&path, &mut location);
                false
            }
            To::Location {
                template,
                relative,
                has_query,
            } => {
                if !template.fill(&path, &mut location, escape_into) {
                    return Err(not_found());
                }
                // `/$1` with a group starting with '/' would point at another host.
                let slashes = location.len() - location.trim_start_matches('/').len();
                if *relative && slashes > 1 {
                    location.drain(..slashes - 1);
                }
                *has_query
            }
        };
        if let Some(query) = req.uri.query().filter(|q| self.keep_query && !q.is_empty()) {
            location.push(if has_query { '&' } else { '?' });
            escape_into(query, &mut location);
        }
        Ok(Some(location))
    }
}

impl Step for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::default()
        }
    }

    fn request(&self, session: &mut Session, facts: &Facts) -> Result<(), Answer> {
        match self.location(session.req_header(), facts.tls)? {
            Some(location) => Err(Answer::Redirect {
                status: self.status,
                location,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str, upstream: bool) -> Result<Redirect, Vec<String>> {
        let raw: RawRedirect = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        validate(raw, upstream, "routes[2].redirect", &mut p).ok_or_else(|| p.into_vec())
    }

    fn req(target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some(host) = host {
            r.insert_header("host", host).unwrap();
        }
        r
    }

    fn location(r: &Redirect, target: &str, tls: bool) -> Result<Option<String>, Answer> {
        r.location(&req(target, Some("API.Example.com:8080")), tls)
    }

    #[test]
    fn locations_are_filled_from_the_path_with_the_query_kept() {
        let r = redirect(
            r#"{location: "https://docs.example.com/$1", pattern: "^/docs/(.*)$", status: 301}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(
            location(&r, "/docs/a/b?x=1", false).unwrap().unwrap(),
            "https://docs.example.com/a/b?x=1"
        );
        // The canonical path is what fills it.
        assert_eq!(
            location(&r, "/docs/a/../c/%7Euser", true).unwrap().unwrap(),
            "https://docs.example.com/c/~user"
        );
        // No match: not found.
        let miss = location(&r, "/other", false).unwrap_err();
        assert!(matches!(miss, Answer::Refuse(Refusal { status: 404, .. })));
        let fixed = redirect(r#"{location: "/new?from=old", keep_query: true}"#, false).unwrap();
        assert_eq!(fixed.status, 302);
        assert_eq!(
            location(&fixed, "/x?y=2", false).unwrap().unwrap(),
            "/new?from=old&y=2"
        );
        let dropped = redirect(
            r#"{location: "https://a.test$0", keep_query: false}"#,
            false,
        );
        assert!(dropped.is_err(), "a group right after the host is refused");
        let whole = redirect(
            r#"{location: "https://a.test/moved$0", keep_query: false}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            location(&whole, "/p?q", false).unwrap().unwrap(),
            "https://a.test/moved/p"
        );
    }

    #[test]
    fn request_text_cannot_break_out_of_the_location() {
        let r = redirect(r#"{location: "/$1", pattern: "^/old(.*)$"}"#, false).unwrap();
        // A group starting with '/' does not make a network-path reference (//host).
        assert_eq!(
            location(&r, "/old//evil.test/x", false).unwrap().unwrap(),
            "/evil.test/x"
        );
        assert_eq!(
            location(&r, "/old/evil.test", false).unwrap().unwrap(),
            "/evil.test"
        );
        // What a valid request-target may still hold that a Location should not.
        let quoted = location(&r, "/old/\"a\"{b}|\u{e9}?q=a|b\\c^", false)
            .unwrap()
            .unwrap();
        assert_eq!(quoted, "/%22a%22%7Bb%7D%7C%C3%A9?q=a%7Cb%5Cc%5E");
        assert!(http::HeaderValue::from_str(&quoted).is_ok());
    }

    #[test]
    fn https_upgrades_plain_requests_and_leaves_tls_to_the_upstream() {
        let r = redirect("{https: true, https_port: 8443}", true).unwrap();
        assert_eq!(r.status, 308);
        assert_eq!(
            location(&r, "/a/./b?q=1", false).unwrap().unwrap(),
            "https://api.example.com:8443/a/b?q=1"
        );
        assert_eq!(location(&r, "/a", true).unwrap(), None);
        let default_port = redirect("{https: true, https_port: 443, status: 301}", false).unwrap();
        assert_eq!(
            location(&default_port, "/a", false).unwrap().unwrap(),
            "https://api.example.com/a"
        );
        // Without an upstream there is nothing to serve on TLS.
        let on_tls = location(&default_port, "/a", true).unwrap_err();
        assert!(matches!(
            on_tls,
            Answer::Refuse(Refusal { status: 404, .. })
        ));
        // An HTTP/1.0 request without Host has no host to send it to.
        let mut no_host = req("/a", None);
        no_host.set_version(http::Version::HTTP_10);
        let refused = default_port.location(&no_host, false).unwrap_err();
        assert!(matches!(
            refused,
            Answer::Refuse(Refusal { status: 400, .. })
        ));
    }

    #[test]
    fn bad_sections_are_refused_with_their_place() {
        let problems = |yaml, upstream| redirect(yaml, upstream).unwrap_err();
        for (yaml, upstream, expected) in [
            ("{status: 302}", false, "routes[2].redirect: set location"),
            (
                "{location: /a, https: true}",
                false,
                "routes[2].redirect: set location",
            ),
            (
                "{location: /a}",
                true,
                "routes[2].redirect.location: a route that redirects",
            ),
            (
                "{location: /a, status: 303}",
                false,
                "routes[2].redirect.status: must be",
            ),
            (
                "{location: /a, https_port: 8443}",
                false,
                "routes[2].redirect.https_port: ",
            ),
            (
                "{https: true, pattern: ^/}",
                false,
                "routes[2].redirect.pattern: applies",
            ),
            (
                "{https: true, https_port: 0}",
                false,
                "routes[2].redirect.https_port: must",
            ),
            (
                "{location: /$2, pattern: ^/(a)$}",
                false,
                "routes[2].redirect.location: names",
            ),
            (
                "{location: /a, pattern: ^/(}",
                false,
                "routes[2].redirect.pattern: not a valid",
            ),
            (
                "{location: 'https://$1/', pattern: ^/(.*)$}",
                false,
                "routes[2].redirect.location: a group may only follow",
            ),
            (
                "{location: 'https://u@h.test/'}",
                false,
                "routes[2].redirect.location: \"u@h.test\" is not",
            ),
            (
                "{location: 'ftp://h.test/'}",
                false,
                "routes[2].redirect.location: must be",
            ),
            (
                "{location: '//h.test/'}",
                false,
                "routes[2].redirect.location: must be",
            ),
            (
                "{location: '$0'}",
                false,
                "routes[2].redirect.location: must be",
            ),
            (
                "{location: '/a#top'}",
                false,
                "routes[2].redirect.location: a fragment",
            ),
            (
                "{location: '/a\\b'}",
                false,
                "routes[2].redirect.location: '\\\\' cannot",
            ),
        ] {
            let found = problems(yaml, upstream);
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{yaml}: {found:#?}"
            );
        }
    }
}
