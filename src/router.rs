//! Route matching: path prefix by whole segments (longest wins), then host specificity
//! (exact, then the longest wildcard, then any host), then method. Routes marked
//! `case_insensitive` match their prefix ignoring ASCII case.
//!
//! Built once per config snapshot. A lookup costs one hash probe per path segment (two when
//! some route is case-insensitive), however many routes there are. Paths and hosts are
//! expected in their canonical form ([`crate::canonical`]).

use crate::config::RouteSpec;
use http::Method;
use std::collections::HashMap;
use std::sync::Arc;

/// What a request matched.
#[derive(Debug)]
pub enum RouteMatch<'a, R> {
    Found(&'a R),
    /// A route matched host and path but not the method; these methods would have matched.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// An immutable routing table over routes of type `R` (the proxy stores its compiled routes).
pub struct Router<R> {
    by_prefix: HashMap<Box<str>, Vec<Candidate<R>>>,
    /// Case-insensitive routes, by their lower-cased prefix.
    by_folded_prefix: HashMap<Box<str>, Vec<Candidate<R>>>,
}

struct Candidate<R> {
    host: HostMatch,
    methods: Option<Vec<Method>>,
    route: Arc<R>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HostMatch {
    /// `api.example.com`
    Exact(Box<str>),
    /// `*.example.com`, stored as `.example.com`
    Suffix(Box<str>),
    Any,
}

impl HostMatch {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.into()),
            None => HostMatch::Exact(pattern.into()),
        }
    }

    /// Higher is more specific.
    fn specificity(&self) -> (u8, usize) {
        match self {
            HostMatch::Exact(_) => (2, 0),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Any => (0, 0),
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(h), Some(host)) => h.eq_ignore_ascii_case(host),
            (HostMatch::Suffix(s), Some(host)) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            (_, None) => false,
        }
    }
}

impl<R> Router<R> {
    /// Builds the table; `routes` pairs each validated spec with what a match should return.
    pub fn new(routes: impl IntoIterator<Item = (RouteSpec, Arc<R>)>) -> Self {
        let mut by_prefix: HashMap<Box<str>, Vec<Candidate<R>>> = HashMap::new();
        let mut by_folded_prefix: HashMap<Box<str>, Vec<Candidate<R>>> = HashMap::new();
        for (spec, route) in routes {
            let key = prefix_key(&spec.path_prefix);
            let hosts: Vec<HostMatch> = if spec.hosts.is_empty() {
                vec![HostMatch::Any]
            } else {
                spec.hosts.iter().map(|h| HostMatch::parse(h)).collect()
            };
            let list = if spec.case_insensitive {
                by_folded_prefix
                    .entry(key.to_ascii_lowercase().into())
                    .or_default()
            } else {
                by_prefix.entry(key.into()).or_default()
            };
            for host in hosts {
                list.push(Candidate {
                    host,
                    methods: spec.methods.clone(),
                    route: route.clone(),
                });
            }
        }
        for list in by_prefix.values_mut().chain(by_folded_prefix.values_mut()) {
            // Stable: among equally specific hosts, the order of the file decides.
            list.sort_by_key(|c| std::cmp::Reverse(c.host.specificity()));
        }
        Router {
            by_prefix,
            by_folded_prefix,
        }
    }

    /// Finds the route for a request. `host` is the request's host without port.
    pub fn find(&self, path: &str, host: Option<&str>, method: &Method) -> RouteMatch<'_, Arc<R>> {
        let mut allowed: Vec<Method> = Vec::new();
        let mut key = path.trim_end_matches('/');
        // Lower-cased once, and only when some route needs it; `key` is always a prefix.
        let folded = if self.by_folded_prefix.is_empty() {
            String::new()
        } else {
            key.to_ascii_lowercase()
        };
        loop {
            let exact = self.by_prefix.get(key);
            let insensitive = match folded.get(..key.len()) {
                Some(k) if !self.by_folded_prefix.is_empty() => self.by_folded_prefix.get(k),
                _ => None,
            };
            let candidates = || {
                exact
                    .into_iter()
                    .chain(insensitive)
                    .flatten()
                    .filter(|c| c.host.matches(host))
            };
            // The most specific host whose methods fit; the first of equals (file order,
            // case-sensitive routes first).
            let found = candidates()
                .filter(|c| c.methods.as_ref().is_none_or(|ms| ms.contains(method)))
                .min_by_key(|c| std::cmp::Reverse(c.host.specificity()));
            if let Some(c) = found {
                return RouteMatch::Found(&c.route);
            }
            for c in candidates() {
                allowed.extend(c.methods.iter().flatten().cloned());
            }
            if key.is_empty() {
                break;
            }
            key = match key.rfind('/') {
                Some(i) => &key[..i],
                None => "",
            };
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            allowed.dedup();
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

/// The root `/` is stored as the empty key so that segment trimming ends on it.
fn prefix_key(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Removes a route's prefix from the request path (and keeps the query).
/// `/api/users?x=1` with prefix `/api` becomes `/users?x=1`; `/api` becomes `/`.
pub fn strip_prefix(path_and_query: &str, prefix: &str) -> String {
    let prefix = prefix_key(prefix);
    let rest = path_and_query.get(prefix.len()..).unwrap_or("");
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteSpec, RouteTimeouts};
    use std::time::Duration;

    fn spec(name: &str, prefix: &str, hosts: &[&str], methods: Option<&[&str]>) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            upstream: Some("u".into()),
            strip_prefix: false,
            timeouts: RouteTimeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_secs(1),
                total: None,
            },
            auth: crate::config::RouteAuth {
                mode: crate::config::AuthMode::None,
                allow_api_key: true,
                allow_jwt: true,
                scopes: vec![],
                forward_credential: false,
            },
            limits: Default::default(),
            case_insensitive: false,
            keep_in_path: Default::default(),
            allow_override_headers: false,
            features: Default::default(),
        }
    }

    fn router(specs: Vec<RouteSpec>) -> Router<String> {
        Router::new(specs.into_iter().map(|s| {
            let name = Arc::new(s.name.clone());
            (s, name)
        }))
    }

    fn find(r: &Router<String>, path: &str, host: Option<&str>, method: &str) -> String {
        match r.find(path, host, &method.parse().unwrap()) {
            RouteMatch::Found(name) => name.to_string(),
            RouteMatch::MethodNotAllowed(ms) => format!("405 {ms:?}"),
            RouteMatch::NotFound => "404".into(),
        }
    }

    #[test]
    fn longest_prefix_wins_by_whole_segments() {
        let r = router(vec![
            spec("root", "/", &[], None),
            spec("api", "/api", &[], None),
            spec("v1", "/api/v1", &[], None),
        ]);
        assert_eq!(find(&r, "/api/v1/users", None, "GET"), "v1");
        assert_eq!(find(&r, "/api/v1", None, "GET"), "v1");
        assert_eq!(find(&r, "/api/v10", None, "GET"), "api");
        assert_eq!(find(&r, "/apix", None, "GET"), "root");
        assert_eq!(find(&r, "/", None, "GET"), "root");
        assert_eq!(find(&r, "/api/", None, "GET"), "api");
    }

    #[test]
    fn prefix_beats_host_and_host_specificity_breaks_ties() {
        let r = router(vec![
            spec("any", "/api", &[], None),
            spec("wild", "/api", &["*.example.com"], None),
            spec("deeper-wild", "/api", &["*.eu.example.com"], None),
            spec("exact", "/api", &["api.example.com"], None),
            spec("long-any", "/api/v2", &[], None),
        ]);
        assert_eq!(find(&r, "/api/x", Some("api.example.com"), "GET"), "exact");
        assert_eq!(find(&r, "/api/x", Some("API.Example.com"), "GET"), "exact");
        assert_eq!(find(&r, "/api/x", Some("b.example.com"), "GET"), "wild");
        assert_eq!(
            find(&r, "/api/x", Some("b.eu.example.com"), "GET"),
            "deeper-wild"
        );
        assert_eq!(find(&r, "/api/x", Some("example.com"), "GET"), "any");
        assert_eq!(find(&r, "/api/x", None, "GET"), "any");
        assert_eq!(
            find(&r, "/api/v2/x", Some("api.example.com"), "GET"),
            "long-any"
        );
    }

    #[test]
    fn method_mismatch_falls_through_then_reports_405() {
        let r = router(vec![
            spec("read", "/items", &[], Some(&["GET", "HEAD"])),
            spec("write", "/items/new", &[], Some(&["POST"])),
        ]);
        assert_eq!(find(&r, "/items/new", None, "GET"), "read");
        assert_eq!(find(&r, "/items/new", None, "POST"), "write");
        assert_eq!(find(&r, "/items/1", None, "DELETE"), "405 [GET, HEAD]");
        assert_eq!(find(&r, "/other", None, "GET"), "404");
    }

    #[test]
    fn case_insensitive_routes_match_any_case() {
        let mut admin = spec("admin", "/Admin", &[], None);
        admin.case_insensitive = true;
        let r = router(vec![
            spec("root", "/", &[], None),
            admin,
            spec("api", "/api", &[], None),
        ]);
        assert_eq!(find(&r, "/admin/users", None, "GET"), "admin");
        assert_eq!(find(&r, "/ADMIN/users", None, "GET"), "admin");
        assert_eq!(find(&r, "/aDmIn", None, "GET"), "admin");
        assert_eq!(
            find(&r, "/API/x", None, "GET"),
            "root",
            "api is case-sensitive"
        );
        assert_eq!(find(&r, "/api/x", None, "GET"), "api");
    }

    #[test]
    fn prefix_stripping_keeps_the_query() {
        assert_eq!(strip_prefix("/api/users?x=1", "/api"), "/users?x=1");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api?x=1", "/api"), "/?x=1");
        assert_eq!(strip_prefix("/x/y", "/"), "/x/y");
    }
}
