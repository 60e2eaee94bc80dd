//! `headers`: header rules on the request the upstream receives (`request:`) and on the
//! response the client receives (`response:`, upstream responses and the gateway's own
//! answers alike). Each side removes (`remove`), replaces (`set`) and appends (`add`), in
//! that order.
//!
//! Values are templates parsed once per config snapshot: `${request_id}`, `${client_ip}`,
//! `${consumer_id}` (empty for anonymous callers) and `${route}` are filled per request, `$$`
//! is a `$`. A value without variables is a ready header value, cloned per request.
//!
//! Request rules run after the gateway's own forwarding and identity headers, so they
//! cannot touch what upstreams trust the gateway for: those headers, like the hop-by-hop and
//! framing ones, are refused at validation.

use crate::pipeline::{Facts, Hooks, Step};
use crate::problems::Problems;
use crate::vocab::{gateway_headers, same_header_name as same_name};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Hop-by-hop and framing headers: they describe one connection or one message's framing,
/// which the gateway manages on each side itself.
const CONNECTION_HEADERS: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "transfer-encoding",
];

/// The `headers:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// Rules on the request the upstream receives.
    pub request: Option<RawRules>,
    /// Rules on the response the client receives.
    pub response: Option<RawRules>,
}

/// One side's rules as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Header name → value template; replaces every value of that header.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Header name → value template; appended to the values already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A variable of a value template.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    RequestId,
    ClientIp,
    ConsumerId,
    Route,
}

impl Var {
    const NAMES: &'static str = "request_id, client_ip, consumer_id, route";

    fn named(name: &str) -> Option<Var> {
        match name {
            "request_id" => Some(Var::RequestId),
            "client_ip" => Some(Var::ClientIp),
            "consumer_id" => Some(Var::ConsumerId),
            "route" => Some(Var::Route),
            _ => None,
        }
    }

    fn write(self, out: &mut Vec<u8>, facts: &Facts) {
        match self {
            Var::RequestId => out.extend_from_slice(facts.request_id.as_bytes()),
            Var::ClientIp => {
                if let Some(ip) = facts.client_ip {
                    // Writing to a Vec cannot fail.
                    let _ = write!(out, "{ip}");
                }
            }
            Var::ConsumerId => out.extend_from_slice(facts.consumer.unwrap_or("").as_bytes()),
            Var::Route => out.extend_from_slice(facts.route.as_bytes()),
        }
    }
}

/// A piece of a value template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(Box<str>),
    Var(Var),
}

/// A header value, fixed or filled per request.
#[derive(Debug, Clone, PartialEq)]
enum Template {
    Fixed(HeaderValue),
    Parts(Box<[Part]>),
}

impl Template {
    /// The value for this request; `None` if a variable's value cannot be in a header.
    fn render(&self, facts: &Facts) -> Option<HeaderValue> {
        let parts = match self {
            Template::Fixed(value) => return Some(value.clone()),
            Template::Parts(parts) => parts,
        };
        let mut out = Vec::with_capacity(64);
        for part in parts.iter() {
            match part {
                Part::Text(text) => out.extend_from_slice(text.as_bytes()),
                Part::Var(var) => var.write(&mut out, facts),
            }
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }
}

/// Parses the template `raw` written at `place`.
fn template(raw: &str, place: &str, p: &mut Problems) -> Option<Template> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            text.push('$');
            rest = more;
            continue;
        }
        let Some((name, more)) = after.strip_prefix('{').and_then(|v| v.split_once('}')) else {
            p.push(
                place,
                format!("{raw:?}: `$` starts a variable like ${{request_id}}; write $$ for a `$`"),
            );
            return None;
        };
        let Some(var) = Var::named(name) else {
            p.push(
                place,
                format!("unknown variable ${{{name}}} (known: {})", Var::NAMES),
            );
            return None;
        };
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text).into()));
        }
        parts.push(Part::Var(var));
        rest = more;
    }
    text.push_str(rest);
    let literal_ok = |t: &str| HeaderValue::from_str(t).is_ok();
    let texts_ok = literal_ok(&text)
        && parts.iter().all(|part| match part {
            Part::Text(t) => literal_ok(t),
            Part::Var(_) => true,
        });
    if !texts_ok {
        p.push(
            place,
            format!(
                "{raw:?} holds characters a header value cannot (control characters, non-ASCII)"
            ),
        );
        return None;
    }
    if parts.is_empty() {
        return HeaderValue::from_str(&text).ok().map(Template::Fixed);
    }
    if !text.is_empty() {
        parts.push(Part::Text(text.into()));
    }
    Some(Template::Parts(parts.into()))
}

/// Which message a side's rules change.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Request,
    Response,
}

impl Side {
    /// Why a rule on `name` is refused on this side, if it is.
    fn refuses(self, name: &str) -> Option<&'static str> {
        if CONNECTION_HEADERS.contains(&name) {
            return Some(
                "is a hop-by-hop or framing header: the gateway manages those for each \
                 connection",
            );
        }
        if self == Side::Response {
            return None;
        }
        if name == "host" {
            return Some("the upstream gets the host the client asked for");
        }
        let forwarding = name.len() > 12 && same_name(&name[..12], "x-forwarded-");
        if forwarding || gateway_headers::ALL.iter().any(|g| same_name(name, g)) {
            return Some(
                "the gateway sets the forwarding headers and X-Request-Id itself, so that \
                 upstreams can trust them",
            );
        }
        None
    }
}

/// One side's validated rules, applied in this order.
#[derive(Debug, Clone, PartialEq, Default)]
struct Rules {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Template)]>,
    add: Box<[(HeaderName, Template)]>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Every header name with a rule, and where it is written (relative to the side).
    fn names(&self) -> impl Iterator<Item = (&HeaderName, String)> {
        let remove = self
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| (n, format!("remove[{i}]")));
        let set = self.set.iter().map(|(n, _)| (n, format!("set.{n}")));
        let add = self.add.iter().map(|(n, _)| (n, format!("add.{n}")));
        remove.chain(set).chain(add)
    }

    fn apply(&self, head: &mut impl Head, facts: &Facts) -> pingora::Result<()> {
        for name in self.remove.iter() {
            head.remove(name);
        }
        for (name, template) in self.set.iter() {
            if let Some(value) = rendered(name, template, facts) {
                head.insert(name, value)?;
            }
        }
        for (name, template) in self.add.iter() {
            if let Some(value) = rendered(name, template, facts) {
                head.append(name, value)?;
            }
        }
        Ok(())
    }
}

/// `template`'s value, or `None` (logged) when a variable's value cannot be in a header.
fn rendered(name: &HeaderName, template: &Template, facts: &Facts) -> Option<HeaderValue> {
    let value = template.render(facts);
    if value.is_none() {
        log::debug!("header rule {name}: the value is not a valid header value; skipped");
    }
    value
}

/// A request or response head, changed through Pingora's methods (which keep the header
/// case map in step).
trait Head {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
}

/// Pingora's request and response heads have the same header methods but no shared trait.
macro_rules! impl_head {
    ($($head:ty),*) => {$(
        impl Head for $head {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name, value).map(drop)
            }
        }
    )*};
}

impl_head!(RequestHeader, ResponseHeader);

/// A route's header rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Headers {
    request: Rules,
    response: Rules,
}

/// Validates the section at `place`.
pub fn validate(raw: RawHeaders, place: &str, p: &mut Problems) -> Option<Headers> {
    let mut of_side = |raw: Option<RawRules>, side: Side, name: &str| match raw {
        None => Some(Rules::default()),
        Some(raw) => rules(raw, side, &format!("{place}.{name}"), p),
    };
    let request = of_side(raw.request, Side::Request, "request");
    let response = of_side(raw.response, Side::Response, "response");
    let headers = Headers {
        request: request?,
        response: response?,
    };
    if headers.request.is_empty() && headers.response.is_empty() {
        p.push(
            place,
            "set request or response rules (or `false` to switch the server-wide default off)",
        );
        return None;
    }
    Some(headers)
}

fn rules(raw: RawRules, side: Side, place: &str, p: &mut Problems) -> Option<Rules> {
    let mut seen: Vec<HeaderName> = Vec::new();
    let mut ok = true;
    let mut name = |written: &str, place: &str, p: &mut Problems| {
        let Ok(name) = HeaderName::from_bytes(written.as_bytes()) else {
            p.push(place, format!("{written:?} is not a header name"));
            return None;
        };
        if let Some(why) = side.refuses(name.as_str()) {
            p.push(place, format!("{name} cannot be changed here: {why}"));
            return None;
        }
        if seen.contains(&name) {
            p.push(
                place,
                format!(
                    "{name} has another rule on this side (one of set, add or remove per header)"
                ),
            );
            return None;
        }
        seen.push(name.clone());
        Some(name)
    };
    let mut remove = Vec::with_capacity(raw.remove.len());
    for (i, written) in raw.remove.iter().enumerate() {
        match name(written, &format!("{place}.remove[{i}]"), p) {
            Some(n) => remove.push(n),
            None => ok = false,
        }
    }
    let mut templates = |map: &BTreeMap<String, String>, kind: &str, p: &mut Problems| {
        let mut out = Vec::with_capacity(map.len());
        for (written, value) in map {
            let place = format!("{place}.{kind}.{written}");
            let named = name(written, &place, p);
            match (named, template(value, &place, p)) {
                (Some(n), Some(t)) => out.push((n, t)),
                _ => ok = false,
            }
        }
        out
    };
    let set = templates(&raw.set, "set", p);
    let add = templates(&raw.add, "add", p);
    ok.then(|| Rules {
        remove: remove.into(),
        set: set.into(),
        add: add.into(),
    })
}

/// Refuses request rules on the identity headers, under any spelling: upstreams trust the
/// gateway for them. `identity` names each header and its key under `auth.identity_headers`;
/// `setting` is the `headers:` section at `place` (`routes[2]`, `defaults`). The config
/// calls this once the `auth:` section is known.
pub fn refuse_identity_headers(
    setting: &super::Setting<Headers>,
    identity: &[(&HeaderName, &str)],
    place: &str,
    p: &mut Problems,
) {
    let super::Setting::On(headers) = setting else {
        return;
    };
    for (name, at) in headers.request.names() {
        let owned = identity
            .iter()
            .find(|(o, _)| same_name(name.as_str(), o.as_str()));
        if let Some((_, key)) = owned {
            p.push(
                format!("{place}.headers.request.{at}"),
                format!(
                    "{name} cannot be changed here: it is the identity header \
                     auth.identity_headers.{key}, which the gateway sets from the verified \
                     caller"
                ),
            );
        }
    }
}

impl Step for Headers {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            upstream_request: !self.request.is_empty(),
            response: !self.response.is_empty(),
            ..Hooks::default()
        }
    }

    fn upstream_request(
        &self,
        _client: &RequestHeader,
        upstream: &mut RequestHeader,
        facts: &Facts,
    ) -> pingora::Result<()> {
        self.request.apply(upstream, facts)
    }

    fn response(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        facts: &Facts,
        _made_by_gateway: bool,
    ) -> pingora::Result<()> {
        self.response.apply(response, facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(yaml: &str) -> Headers {
        let raw: RawHeaders = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let h = validate(raw, "routes[0].headers", &mut p);
        assert!(p.is_empty(), "{:?}", p.into_vec());
        h.unwrap()
    }

    fn problems(yaml: &str) -> Vec<String> {
        let raw: RawHeaders = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        assert!(validate(raw, "routes[1].headers", &mut p).is_none());
        p.into_vec()
    }

    fn facts<'a>(id: &'a HeaderValue, consumer: Option<&'a str>) -> Facts<'a> {
        Facts {
            request_id: id,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            consumer,
            route: "orders",
            tls: false,
        }
    }

    #[test]
    fn templates_fill_variables_and_keep_dollars() {
        let id = HeaderValue::from_static("rid-1");
        let mut p = Problems::default();
        let t = template(
            "${route}/${consumer_id}@${client_ip} $$5 ${request_id}",
            "x",
            &mut p,
        )
        .unwrap();
        assert_eq!(
            t.render(&facts(&id, Some("alice"))).unwrap(),
            "orders/alice@192.0.2.7 $5 rid-1"
        );
        assert_eq!(
            t.render(&facts(&id, None)).unwrap(),
            "orders/@192.0.2.7 $5 rid-1"
        );
        let fixed = template("costs $$3", "x", &mut p).unwrap();
        assert_eq!(fixed, Template::Fixed(HeaderValue::from_static("costs $3")));
        assert!(p.is_empty());
    }

    #[test]
    fn rules_remove_then_set_then_add() {
        let h = headers(
            "{request: {set: {X-Route: '${route}'}, add: {X-Tag: b}, remove: [Cookie]}, \
             response: {set: {Server: tollgate}}}",
        );
        assert_eq!(
            h.hooks(),
            Hooks {
                upstream_request: true,
                response: true,
                ..Hooks::default()
            }
        );
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cookie", "s=1").unwrap();
        req.insert_header("x-route", "forged").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        let id = HeaderValue::from_static("rid");
        h.request.apply(&mut req, &facts(&id, None)).unwrap();
        assert!(req.headers.get("cookie").is_none());
        assert_eq!(req.headers["x-route"], "orders");
        let tags: Vec<_> = req.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        let only_response = headers("{response: {remove: [Server]}}");
        assert!(!only_response.hooks().upstream_request);
    }

    #[test]
    fn bad_rules_are_refused_with_their_places() {
        let p = problems(
            "{request: {set: {X-Forwarded-For: x, Host: h, X-A: '${nope}', 'Bad Name': v, \
             X-B: '$5', X-C: '${route'}, add: {x_request_id: r, X-D: \"a\\u0001\"}, \
             remove: [Connection, X-E, x-e]}, response: {set: {Content-Length: '1', \
             X-Request-Id: ok}}}",
        );
        let want = [
            (
                "routes[1].headers.request.set.X-Forwarded-For: ",
                "forwarding headers",
            ),
            (
                "routes[1].headers.request.set.Host: ",
                "host the client asked for",
            ),
            (
                "routes[1].headers.request.set.X-A: ",
                "unknown variable ${nope}",
            ),
            (
                "routes[1].headers.request.set.Bad Name: ",
                "not a header name",
            ),
            ("routes[1].headers.request.set.X-B: ", "write $$"),
            ("routes[1].headers.request.set.X-C: ", "write $$"),
            (
                "routes[1].headers.request.add.x_request_id: ",
                "X-Request-Id",
            ),
            ("routes[1].headers.request.add.X-D: ", "control characters"),
            ("routes[1].headers.request.remove[0]: ", "hop-by-hop"),
            ("routes[1].headers.request.remove[2]: ", "another rule"),
            ("routes[1].headers.response.set.Content-Length: ", "framing"),
        ];
        for (place, what) in want {
            assert!(
                p.iter().any(|m| m.starts_with(place) && m.contains(what)),
                "missing {place}{what} in {p:#?}"
            );
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
        let empty = problems("{request: {}}");
        assert!(
            empty[0].starts_with("routes[1].headers: set request or response"),
            "{empty:?}"
        );
    }

    #[test]
    fn identity_headers_are_refused_under_any_spelling() {
        let names = [
            "x-consumer-id",
            "x-consumer-plan",
            "x-auth-method",
            "x-auth-scopes",
        ]
        .map(HeaderName::from_static);
        let keys = ["consumer_id", "plan", "auth_method", "scopes"];
        let identity: Vec<(&HeaderName, &str)> = names.iter().zip(keys).collect();
        let setting = super::super::Setting::On(std::sync::Arc::new(headers(
            "{request: {set: {X-Consumer_Id: x}, remove: [X-Other, x-auth-scopes]}, \
             response: {remove: [x-consumer-plan]}}",
        )));
        let mut p = Problems::default();
        refuse_identity_headers(&setting, &identity, "defaults", &mut p);
        let p = p.into_vec();
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[0].starts_with("defaults.headers.request.remove[1]: ")
                && p[0].contains("identity_headers.scopes"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("defaults.headers.request.set.x-consumer_id: ")
                && p[1].contains("identity_headers.consumer_id"),
            "{p:?}"
        );
    }
}
