//! `cors`: Cross-Origin Resource Sharing, answered by the gateway for the route.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered in
//! the request hook, before identification and rate limiting: `204` when its origin, method
//! and headers are allowed (it needs no credential and consumes no quota), `403 cors_rejected`
//! saying which one is not. The proxy routes a preflight by the method it asks for
//! ([`route_method`]), so a route need not list `OPTIONS` in its `methods:`.
//!
//! Every other answer of the route, the upstream's and the gateway's own (401, 404, 429,
//! 5xx), gets `Access-Control-Allow-Origin` (the caller's origin, or `*`),
//! `-Allow-Credentials` and `-Expose-Headers` when its `Origin` is allowed, and `Vary: Origin`
//! whenever the answer depends on the origin. The gateway is the authority: the upstream's
//! own `Access-Control-*` headers are removed.

use crate::pipeline::{Answer, Facts, Hooks, Pipeline, Refusal, Step};
use crate::problems::Problems;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// The step's name in the phase chart.
const NAME: &str = "cors";

/// Methods a preflight may ask for when `allow_methods` is not set.
const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Request headers a preflight may ask for when `allow_headers` is not set.
const DEFAULT_ALLOW_HEADERS: [&str; 4] =
    ["Authorization", "Content-Type", "X-Api-Key", "X-Request-Id"];

/// The `cors:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins that may call the route: exact (`https://app.example.com`), any subdomain
    /// (`https://*.example.com`), or `"*"` for every origin. Required.
    pub allow_origins: Option<Names>,
    /// Methods a preflight may ask for; default GET, HEAD, POST, PUT, PATCH, DELETE.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for, or `"*"` for any; default Authorization,
    /// Content-Type, X-Api-Key, X-Request-Id.
    pub allow_headers: Option<Names>,
    /// Response headers scripts may read; default X-Request-Id and the rate-limit headers.
    pub expose_headers: Option<Vec<String>>,
    /// Browsers may send cookies and credentials (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`10m`), sent in whole seconds; unset,
    /// the browser's own default applies.
    pub max_age: Option<String>,
}

/// A list of names as written, or `"*"` for any.
#[derive(Debug, PartialEq)]
pub enum Names {
    /// `"*"`.
    Any,
    /// A list; `"*"` in it is read as [`Names::Any`] when alone.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamesVisitor;

        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = Names;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list, or \"*\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                if v == "*" {
                    Ok(Names::Any)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Names, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Names::List)
            }
        }

        deserializer.deserialize_any(NamesVisitor)
    }
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq)]
enum OriginPattern {
    /// An origin exactly, as browsers serialise it (`https://app.example.com`).
    Exact(Box<str>),
    /// `scheme://*.domain[:port]`: any subdomain of `domain`, at any depth.
    Subdomains {
        /// `https://`.
        scheme: Box<str>,
        /// `.example.com:8443`.
        suffix: Box<str>,
    },
}

impl OriginPattern {
    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact.as_bytes()),
            OriginPattern::Subdomains { scheme, suffix } => {
                let (scheme, suffix) = (scheme.as_bytes(), suffix.as_bytes());
                if origin.len() <= scheme.len() + suffix.len()
                    || !origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    || !origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                {
                    return false;
                }
                let labels = &origin[scheme.len()..origin.len() - suffix.len()];
                labels
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && labels.first() != Some(&b'.')
                    && labels.last() != Some(&b'.')
            }
        }
    }
}

/// Which origins are allowed.
#[derive(Debug, Clone, PartialEq)]
enum Origins {
    /// Every origin, answered with `*` (never with credentials).
    Any,
    /// These, each answered with itself.
    Listed(Box<[OriginPattern]>),
}

/// Which request headers a preflight may ask for.
#[derive(Debug, Clone, PartialEq)]
enum AllowedHeaders {
    /// Any: the preflight's own list is echoed (`*` would not cover `Authorization`).
    Any,
    /// These names, and their `Access-Control-Allow-Headers` value.
    Listed(Box<[HeaderName]>, HeaderValue),
}

/// A route's CORS policy, with its header values built once.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    origins: Origins,
    methods: Box<[Method]>,
    /// `Access-Control-Allow-Methods`.
    methods_value: HeaderValue,
    headers: AllowedHeaders,
    /// `Access-Control-Expose-Headers`; `None` when the list is empty.
    expose: Option<HeaderValue>,
    credentials: bool,
    /// `Access-Control-Max-Age`, in seconds.
    max_age: Option<HeaderValue>,
}

/// Validates the section at `place`.
pub fn validate(raw: RawCors, place: &str, p: &mut Problems) -> Option<Cors> {
    let origins = origins(raw.allow_origins, raw.allow_credentials, place, p);
    let method_names: Vec<String> = match raw.allow_methods {
        Some(list) => list.iter().map(|m| m.to_ascii_uppercase()).collect(),
        None => to_strings(&DEFAULT_METHODS),
    };
    let methods = methods(&method_names, &format!("{place}.allow_methods"), p);
    let headers = match raw.allow_headers {
        Some(Names::Any) => Some(AllowedHeaders::Any),
        Some(Names::List(list)) if list.len() == 1 && list[0] == "*" => Some(AllowedHeaders::Any),
        Some(Names::List(list)) => listed_headers(&list, &format!("{place}.allow_headers"), p),
        None => listed_headers(&to_strings(&DEFAULT_ALLOW_HEADERS), place, p),
    };
    let expose = match raw.expose_headers {
        Some(list) => header_list(&list, &format!("{place}.expose_headers"), p),
        None => header_list(&default_expose_headers(), place, p),
    };
    let max_age = match raw.max_age {
        Some(m) => Some(super::whole_seconds(&m, &format!("{place}.max_age"), p)?),
        None => None,
    };
    let (names, expose) = expose?;
    Some(Cors {
        origins: origins?,
        methods: methods?,
        methods_value: joined(&method_names)?,
        headers: headers?,
        expose: (!names.is_empty()).then_some(expose),
        credentials: raw.allow_credentials,
        max_age: max_age.map(HeaderValue::from),
    })
}

/// Response headers scripts may read when `expose_headers` is not set: the request id and
/// every rate-limit header the gateway sends (`crate::limit::headers`).
fn default_expose_headers() -> Vec<String> {
    use crate::limit::headers::{
        RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
    };
    let rate_limit = [
        RATELIMIT_POLICY,
        RATELIMIT,
        X_RATELIMIT_LIMIT,
        X_RATELIMIT_REMAINING,
        X_RATELIMIT_RESET,
        header::RETRY_AFTER,
    ];
    std::iter::once(crate::vocab::gateway_headers::REQUEST_ID.to_string())
        .chain(rate_limit.iter().map(|h| h.as_str().to_string()))
        .collect()
}

fn to_strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// `names` joined with `, ` as a header value (names are tokens, so always valid).
fn joined(names: &[String]) -> Option<HeaderValue> {
    HeaderValue::from_str(&names.join(", ")).ok()
}

fn origins(
    raw: Option<Names>,
    credentials: bool,
    place: &str,
    p: &mut Problems,
) -> Option<Origins> {
    let list = match raw {
        None => {
            p.push(
                place,
                "set allow_origins: the origins that may call this route (or \"*\")",
            );
            return None;
        }
        Some(Names::Any) => Vec::from(["*".to_string()]),
        Some(Names::List(list)) => list,
    };
    let place = format!("{place}.allow_origins");
    if list.is_empty() {
        p.push(&place, "list at least one origin (or \"*\")");
        return None;
    }
    if list.iter().any(|o| o == "*") {
        if list.len() > 1 {
            p.push(&place, "\"*\" allows every origin: list it alone");
            return None;
        }
        if credentials {
            p.push(
                &place,
                "\"*\" cannot go with allow_credentials: true (browsers refuse credentials \
                 for a wildcard origin): list the origins",
            );
            return None;
        }
        return Some(Origins::Any);
    }
    let patterns: Vec<OriginPattern> = list
        .iter()
        .enumerate()
        .filter_map(|(i, o)| origin(o, &format!("{place}[{i}]"), p))
        .collect();
    (patterns.len() == list.len()).then(|| Origins::Listed(patterns.into()))
}

/// One origin or subdomain pattern, normalised as browsers send origins (lower-case host,
/// punycode, no default port).
fn origin(raw: &str, place: &str, p: &mut Problems) -> Option<OriginPattern> {
    const SHAPE: &str = "scheme://host[:port], no path, e.g. https://app.example.com or \
                         https://*.example.com";
    let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
    // A wildcard is only a whole first label; parse a stand-in label in its place.
    let (wildcard, rest) = match rest.strip_prefix("*.") {
        Some(domain) => (true, format!("x.{domain}")),
        None => (false, rest.to_string()),
    };
    let parsed = url::Url::parse(&format!("{scheme}://{rest}"));
    let url = match parsed {
        Ok(url)
            if !rest.contains(['*', '/', '?', '#', '@'])
                && matches!(url.scheme(), "http" | "https")
                && url.host().is_some() =>
        {
            url
        }
        _ => {
            p.push(place, format!("{raw:?} is not an origin ({SHAPE})"));
            return None;
        }
    };
    let serialized = url.origin().ascii_serialization();
    if !wildcard {
        return Some(OriginPattern::Exact(serialized.into()));
    }
    let scheme = format!("{}://", url.scheme());
    // The serialisation starts with `scheme://x.`; keep what follows the stand-in label.
    let suffix = &serialized[scheme.len() + 1..];
    Some(OriginPattern::Subdomains {
        scheme: scheme.into(),
        suffix: suffix.into(),
    })
}

fn methods(raw: &[String], place: &str, p: &mut Problems) -> Option<Box<[Method]>> {
    if raw.is_empty() {
        p.push(place, "list at least one method");
        return None;
    }
    let methods: Vec<Method> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match Method::from_bytes(m.as_bytes()) {
            Ok(method) => Some(method),
            _ => {
                p.push(
                    format!("{place}[{i}]"),
                    format!("{m:?} is not a method name"),
                );
                None
            }
        })
        .collect();
    (methods.len() == raw.len()).then(|| methods.into())
}

/// Header names as written at `place`, and their list as a header value.
fn header_list(
    raw: &[String],
    place: &str,
    p: &mut Problems,
) -> Option<(Box<[HeaderName]>, HeaderValue)> {
    let names: Vec<HeaderName> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, h)| match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                p.push(
                    format!("{place}[{i}]"),
                    format!("{h:?} is not a header name"),
                );
                None
            }
        })
        .collect();
    if names.len() < raw.len() {
        return None;
    }
    Some((names.into(), joined(raw)?))
}

fn listed_headers(raw: &[String], place: &str, p: &mut Problems) -> Option<AllowedHeaders> {
    header_list(raw, place, p).map(|(names, value)| AllowedHeaders::Listed(names, value))
}

/// The method a request is routed by: for a CORS preflight, the method it asks about (the
/// route of the actual request answers it, whatever its `methods:` say about `OPTIONS`);
/// `None` for every other request. When the route found that way has no CORS
/// ([`answers_preflights`]), the proxy routes the request as `OPTIONS`, as before.
pub fn route_method(req: &RequestHeader) -> Option<Method> {
    Preflight::of(req).and_then(|pre| Method::from_bytes(pre.method.as_bytes()).ok())
}

/// Whether a route with this pipeline answers CORS preflights.
pub fn answers_preflights(pipeline: &Pipeline) -> bool {
    pipeline.names().contains(&NAME)
}

/// The CORS headers of a preflight request.
struct Preflight<'a> {
    origin: &'a HeaderValue,
    method: &'a HeaderValue,
    headers: Option<&'a HeaderValue>,
}

impl<'a> Preflight<'a> {
    fn of(req: &'a RequestHeader) -> Option<Self> {
        if req.method != Method::OPTIONS {
            return None;
        }
        Some(Preflight {
            origin: req.headers.get(header::ORIGIN)?,
            method: req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?,
            headers: req.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        })
    }
}

fn rejected(message: String) -> Answer {
    Answer::Refuse(Refusal {
        status: 403,
        code: "cors_rejected",
        message,
    })
}

impl Cors {
    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(patterns) => patterns.iter().any(|p| p.matches(origin.as_bytes())),
        }
    }

    /// `Err(204)` for an allowed preflight, `Err(403)` for a refused one, `Ok` for every
    /// other request.
    fn answer_preflight(&self, req: &RequestHeader) -> Result<(), Answer> {
        let Some(pre) = Preflight::of(req) else {
            return Ok(());
        };
        let lossy = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        if !self.allows_origin(pre.origin) {
            return Err(rejected(format!(
                "origin {} may not call this route",
                lossy(pre.origin)
            )));
        }
        let method = pre.method.as_bytes();
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(rejected(format!(
                "method {} is not allowed here (allowed: {})",
                lossy(pre.method),
                lossy(&self.methods_value)
            )));
        }
        if let (AllowedHeaders::Listed(names, value), Some(asked)) = (&self.headers, pre.headers) {
            let refused = asked
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .find(|h| {
                    !h.is_empty()
                        && !names
                            .iter()
                            .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(h))
                });
            if let Some(header) = refused {
                return Err(rejected(format!(
                    "request header {} is not allowed here (allowed: {})",
                    String::from_utf8_lossy(header),
                    lossy(value)
                )));
            }
        }
        Err(Answer::Empty { status: 204 })
    }

    /// Puts the CORS headers on an answer to `req`.
    fn decorate(
        &self,
        req: &RequestHeader,
        response: &mut ResponseHeader,
        made_by_gateway: bool,
    ) -> pingora::Result<()> {
        if !made_by_gateway {
            strip_access_control(response);
        }
        let origin = req.headers.get(header::ORIGIN);
        let allow_origin = match (&self.origins, origin) {
            (Origins::Any, _) => HeaderValue::from_static("*"),
            (Origins::Listed(_), origin) => {
                vary(response, "origin")?;
                match origin {
                    Some(origin) if self.allows_origin(origin) => origin.clone(),
                    _ => return Ok(()),
                }
            }
        };
        response.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin)?;
        if self.credentials {
            response.insert_header(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            )?;
        }
        match Preflight::of(req) {
            // The gateway's own 204 to an allowed preflight (a refused one gets no more).
            Some(pre) if made_by_gateway && response.status == StatusCode::NO_CONTENT => {
                response.insert_header(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    self.methods_value.clone(),
                )?;
                match (&self.headers, pre.headers) {
                    (AllowedHeaders::Listed(_, value), _) => response
                        .insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, value.clone())?,
                    (AllowedHeaders::Any, asked) => {
                        vary(response, "access-control-request-headers")?;
                        if let Some(asked) = asked {
                            response.insert_header(
                                header::ACCESS_CONTROL_ALLOW_HEADERS,
                                asked.clone(),
                            )?;
                        }
                    }
                }
                if let Some(max_age) = &self.max_age {
                    response.insert_header(header::ACCESS_CONTROL_MAX_AGE, max_age.clone())?;
                }
            }
            Some(_) => {}
            None => {
                if let Some(expose) = &self.expose {
                    response
                        .insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone())?;
                }
            }
        }
        Ok(())
    }
}

/// Removes the upstream's `Access-Control-*` headers.
fn strip_access_control(response: &mut ResponseHeader) {
    // Empty (no allocation) unless the upstream sent some.
    let theirs: Vec<HeaderName> = response
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in &theirs {
        response.remove_header(name);
    }
}

/// Adds `name` to `Vary` unless it (or `*`) is already there; the upstream's `Vary` is kept.
fn vary(response: &mut ResponseHeader, name: &'static str) -> pingora::Result<()> {
    let listed = response
        .headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| t == b"*" || t.eq_ignore_ascii_case(name.as_bytes()));
    if !listed {
        response.append_header(header::VARY, HeaderValue::from_static(name))?;
    }
    Ok(())
}

impl Step for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: true,
            ..Hooks::default()
        }
    }

    fn request(&self, session: &mut Session, _facts: &Facts) -> Result<(), Answer> {
        self.answer_preflight(session.req_header())
    }

    fn response(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        _facts: &Facts,
        made_by_gateway: bool,
    ) -> pingora::Result<()> {
        self.decorate(session.req_header(), response, made_by_gateway)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Cors {
        let raw: RawCors = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let cors = validate(raw, "routes[0].cors", &mut p);
        assert!(p.is_empty(), "{:?}", p.into_vec());
        cors.unwrap()
    }

    fn problems(yaml: &str) -> Vec<String> {
        let raw: RawCors = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        assert!(validate(raw, "routes[2].cors", &mut p).is_none());
        p.into_vec()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> RequestHeader {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        h.extend(headers.map(|v| ("access-control-request-headers", v)));
        request("OPTIONS", &h)
    }

    fn header<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        resp.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn refusal(answer: Result<(), Answer>) -> String {
        match answer {
            Err(Answer::Refuse(r)) if r.status == 403 && r.code == "cors_rejected" => r.message,
            other => panic!("not a CORS refusal: {other:?}"),
        }
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let c = cors("{allow_origins: ['https://App.example.com:443', 'https://*.example.org', 'http://*.dev.test:8080']}");
        let allowed = |o: &str| c.allows_origin(&HeaderValue::from_str(o).unwrap());
        assert!(allowed("https://app.example.com"));
        assert!(!allowed("http://app.example.com"));
        assert!(!allowed("https://app.example.com.evil.test"));
        assert!(allowed("https://a.example.org"));
        assert!(allowed("https://a.b.example.org"));
        assert!(!allowed("https://example.org"));
        assert!(!allowed("https://evilexample.org"));
        assert!(!allowed("https://x.example.org:444"));
        assert!(!allowed("https://x/.example.org"));
        assert!(allowed("http://api.dev.test:8080"));
        assert!(!allowed("http://api.dev.test"));
        let any = cors("{allow_origins: '*'}");
        assert!(any.allows_origin(&HeaderValue::from_static("https://anything.test")));
        assert_eq!(cors("{allow_origins: ['*']}").origins, Origins::Any);
    }

    #[test]
    fn preflights_are_answered_or_refused_saying_why() {
        let c = cors("{allow_origins: ['https://app.test'], allow_methods: [GET, PUT]}");
        let ok = c.answer_preflight(&preflight(
            "https://app.test",
            "PUT",
            Some("content-type, x-api-key"),
        ));
        assert_eq!(ok, Err(Answer::Empty { status: 204 }));
        let origin = refusal(c.answer_preflight(&preflight("https://evil.test", "PUT", None)));
        assert!(origin.contains("origin https://evil.test"), "{origin}");
        let method = refusal(c.answer_preflight(&preflight("https://app.test", "DELETE", None)));
        assert!(
            method.contains("method DELETE") && method.contains("GET, PUT"),
            "{method}"
        );
        let header = refusal(c.answer_preflight(&preflight(
            "https://app.test",
            "GET",
            Some("x-api-key,x-secret"),
        )));
        assert!(header.contains("request header x-secret"), "{header}");
        // Not a preflight: an OPTIONS without the request-method header, or a GET.
        assert_eq!(
            c.answer_preflight(&request("OPTIONS", &[("origin", "https://app.test")])),
            Ok(())
        );
        assert_eq!(
            c.answer_preflight(&request("GET", &[("origin", "https://app.test")])),
            Ok(())
        );
    }

    #[test]
    fn a_preflight_answer_carries_the_preflight_headers() {
        let c = cors(
            "{allow_origins: ['https://app.test'], allow_credentials: true, max_age: 10m, \
             allow_headers: [X-Api-Key, Content-Type]}",
        );
        let mut resp = ResponseHeader::build(204, None).unwrap();
        c.decorate(
            &preflight("https://app.test", "POST", None),
            &mut resp,
            true,
        )
        .unwrap();
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            Some("https://app.test")
        );
        assert_eq!(
            header(&resp, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            header(&resp, "access-control-allow-methods"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE")
        );
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            Some("X-Api-Key, Content-Type")
        );
        assert_eq!(header(&resp, "access-control-max-age"), Some("600"));
        assert_eq!(header(&resp, "vary"), Some("origin"));
        assert_eq!(header(&resp, "access-control-expose-headers"), None);

        // Any header: the preflight's own list is echoed, and the answer varies on it.
        let any = cors("{allow_origins: '*', allow_headers: '*'}");
        let mut resp = ResponseHeader::build(204, None).unwrap();
        any.decorate(
            &preflight("https://x.test", "GET", Some("authorization")),
            &mut resp,
            true,
        )
        .unwrap();
        assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            Some("authorization")
        );
        assert_eq!(
            header(&resp, "vary"),
            Some("access-control-request-headers")
        );
        assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    }

    #[test]
    fn actual_answers_get_the_origin_and_lose_the_upstreams_cors_headers() {
        let c = cors("{allow_origins: ['https://app.test']}");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-origin", "*")
            .unwrap();
        resp.insert_header("access-control-allow-methods", "TRACE")
            .unwrap();
        resp.insert_header("vary", "Accept-Encoding").unwrap();
        c.decorate(
            &request("GET", &[("origin", "https://app.test")]),
            &mut resp,
            false,
        )
        .unwrap();
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            Some("https://app.test")
        );
        assert_eq!(header(&resp, "access-control-allow-methods"), None);
        let expose = header(&resp, "access-control-expose-headers").unwrap();
        assert!(
            expose.starts_with("x-request-id, ratelimit-policy, ratelimit"),
            "{expose}"
        );
        let vary: Vec<&str> = resp
            .headers
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(vary, ["Accept-Encoding", "origin"]);

        // A disallowed origin, or none: no CORS headers, but the answer still varies.
        for req in [
            request("GET", &[("origin", "https://evil.test")]),
            request("GET", &[]),
        ] {
            let mut resp = ResponseHeader::build(401, None).unwrap();
            resp.insert_header("vary", "Origin").unwrap();
            c.decorate(&req, &mut resp, true).unwrap();
            assert_eq!(header(&resp, "access-control-allow-origin"), None);
            assert_eq!(resp.headers.get_all("vary").iter().count(), 1);
        }
    }

    #[test]
    fn preflights_are_routed_by_the_method_they_ask_for() {
        assert_eq!(
            route_method(&preflight("https://a.test", "PUT", None)),
            Some(Method::PUT)
        );
        assert_eq!(
            route_method(&request("OPTIONS", &[("origin", "https://a.test")])),
            None
        );
        assert_eq!(
            route_method(&request("GET", &[("access-control-request-method", "PUT")])),
            None
        );
        let steps: Vec<std::sync::Arc<dyn Step>> =
            vec![std::sync::Arc::new(cors("{allow_origins: '*'}"))];
        assert!(answers_preflights(&Pipeline::new(steps)));
        assert!(!answers_preflights(&Pipeline::default()));
    }

    #[test]
    fn bad_sections_are_refused_with_their_places() {
        let p = problems("{allow_origins: '*', allow_credentials: true}");
        assert!(
            p[0].starts_with(
                "routes[2].cors.allow_origins: \"*\" cannot go with allow_credentials"
            ),
            "{p:?}"
        );
        let p = problems("{allow_credentials: true}");
        assert!(
            p[0].starts_with("routes[2].cors: set allow_origins"),
            "{p:?}"
        );
        let p = problems(
            "{allow_origins: ['https://a.test/', 'a.test', 'ftp://a.test', 'https://a.test/x', \
             'https://*.a.test', 'https://a*.test', 'https://*.1.2.3.4', 'https://u@a.test']}",
        );
        for i in [0, 1, 2, 3, 5, 6, 7] {
            assert!(
                p.iter().any(
                    |m| m.starts_with(&format!("routes[2].cors.allow_origins[{i}]: "))
                        && m.contains("is not an origin")
                ),
                "{i}: {p:?}"
            );
        }
        assert!(
            !p.iter()
                .any(|m| m.starts_with("routes[2].cors.allow_origins[4]")),
            "{p:?}"
        );
        let p = problems("{allow_origins: ['*', 'https://a.test']}");
        assert!(p[0].contains("list it alone"), "{p:?}");
        let p = problems(
            "{allow_origins: ['https://a.test'], allow_methods: [GET, 'BAD METHOD'], \
             allow_headers: [X-Ok, 'Bad Header'], expose_headers: ['x:y'], max_age: soon}",
        );
        let want = [
            "routes[2].cors.allow_methods[1]: \"BAD METHOD\" is not a method name",
            "routes[2].cors.allow_headers[1]: \"Bad Header\" is not a header name",
            "routes[2].cors.expose_headers[0]: \"x:y\" is not a header name",
        ];
        for w in want {
            assert!(p.iter().any(|m| m == w), "missing {w:?} in {p:?}");
        }
        assert!(
            p.iter()
                .any(|m| m.starts_with("routes[2].cors.max_age: \"soon\"")),
            "{p:?}"
        );
        let p = problems("{allow_origins: ['https://a.test'], allow_methods: [], max_age: 1500ms}");
        assert!(
            p.iter()
                .any(|m| m == "routes[2].cors.allow_methods: list at least one method"),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with(
                "routes[2].cors.max_age: \"1500ms\" is not a whole number of seconds"
            )),
            "{p:?}"
        );
        let wrong =
            serde_yaml::from_str::<RawCors>("{allow_origins: 'https://a.test'}").unwrap_err();
        assert!(wrong.to_string().contains("a list, or \"*\""), "{wrong}");
    }
}
