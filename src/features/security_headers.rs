//! `security_headers`: a preset of browser security headers on every answer of the route.
//!
//! `true` sends `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! strict-origin-when-cross-origin`, `X-Frame-Options: DENY`, `Strict-Transport-Security:
//! max-age=31536000; includeSubDomains` (only to clients on TLS: browsers ignore it over
//! plain HTTP), and on the gateway's own answers only `Content-Security-Policy: default-src
//! 'none'; frame-ancestors 'none'` (an upstream's pages need a policy of their own). A map
//! changes a value or switches a header off (`false`). A header already on the answer (the
//! upstream's own, or one a `headers:` rule set) is kept.

use super::switch::Switch;
use crate::pipeline::{Facts, Hooks, Step};
use crate::problems::Problems;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// One year, the HSTS `max-age` browsers' preload lists ask for.
const YEAR_SECS: u64 = 31_536_000;

/// The `Referrer-Policy` tokens (W3C Referrer Policy).
const REFERRER_POLICIES: [&str; 8] = [
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

/// The `security_headers:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityHeaders {
    /// `Strict-Transport-Security` (TLS clients only): `true`, `false`, or
    /// `{max_age, include_subdomains, preload}`.
    pub hsts: Option<Switch<RawHsts>>,
    /// `X-Content-Type-Options`: `true` (`nosniff`, its one value) or `false`.
    pub content_type_options: Option<Toggle>,
    /// `Referrer-Policy`: `true` (`strict-origin-when-cross-origin`), `false`, or a policy.
    pub referrer_policy: Option<Toggle>,
    /// `X-Frame-Options`: `true` (`DENY`), `false`, or `DENY` / `SAMEORIGIN`.
    pub frame_options: Option<Toggle>,
    /// `Content-Security-Policy` on the gateway's own answers: `true` (`default-src 'none';
    /// frame-ancestors 'none'`), `false`, or a policy.
    pub content_security_policy: Option<Toggle>,
}

/// The `hsts:` map.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    /// How long browsers remember to use HTTPS only (`365d`); default one year.
    pub max_age: Option<String>,
    /// The rule covers every subdomain too (`includeSubDomains`); default true.
    pub include_subdomains: Option<bool>,
    /// Ask to be on the browsers' preload lists (`preload`); default false.
    #[serde(default)]
    pub preload: bool,
}

/// A header's setting as written: `true` (its default value), `false`, or a value.
#[derive(Debug, PartialEq)]
pub enum Toggle {
    /// `false`.
    Off,
    /// `true`.
    Default,
    /// A value of its own.
    Value(String),
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ToggleVisitor;

        impl Visitor<'_> for ToggleVisitor {
            type Value = Toggle;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a header value")
            }

            fn visit_bool<E: de::Error>(self, on: bool) -> Result<Toggle, E> {
                Ok(if on { Toggle::Default } else { Toggle::Off })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Toggle, E> {
                Ok(Toggle::Value(v.to_string()))
            }
        }

        deserializer.deserialize_any(ToggleVisitor)
    }
}

/// A route's security headers, their values built once.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityHeaders {
    /// Sent on every answer.
    everywhere: Box<[(HeaderName, HeaderValue)]>,
    /// `Strict-Transport-Security`, to TLS clients.
    hsts: Option<HeaderValue>,
    /// `Content-Security-Policy`, on the gateway's own answers.
    gateway_csp: Option<HeaderValue>,
}

/// Validates the section at `place`.
pub fn validate(raw: RawSecurityHeaders, place: &str, p: &mut Problems) -> Option<SecurityHeaders> {
    let nosniff = value(
        raw.content_type_options,
        "nosniff",
        &format!("{place}.content_type_options"),
        p,
        |v| {
            v.eq_ignore_ascii_case("nosniff")
                .then(|| "nosniff".to_string())
                .ok_or("its one value is nosniff (or write false)".to_string())
        },
    );
    let referrer = value(
        raw.referrer_policy,
        "strict-origin-when-cross-origin",
        &format!("{place}.referrer_policy"),
        p,
        |v| match v
            .split(',')
            .map(str::trim)
            .find(|t| !REFERRER_POLICIES.contains(t))
        {
            None => Ok(v.trim().to_string()),
            Some(t) => Err(format!(
                "unknown policy {t:?} (known: {})",
                REFERRER_POLICIES.join(", ")
            )),
        },
    );
    let frames = value(
        raw.frame_options,
        "DENY",
        &format!("{place}.frame_options"),
        p,
        |v| {
            let upper = v.trim().to_ascii_uppercase();
            matches!(upper.as_str(), "DENY" | "SAMEORIGIN")
                .then_some(upper)
                .ok_or("DENY or SAMEORIGIN (or write false)".to_string())
        },
    );
    let csp = value(
        raw.content_security_policy,
        "default-src 'none'; frame-ancestors 'none'",
        &format!("{place}.content_security_policy"),
        p,
        |v| {
            (!v.trim().is_empty())
                .then(|| v.trim().to_string())
                .ok_or("an empty policy (write false to send none)".to_string())
        },
    );
    let hsts = match raw.hsts {
        Some(Switch::Off) => Some(None),
        Some(Switch::On(raw)) => hsts(raw, &format!("{place}.hsts"), p).map(Some),
        None => hsts(RawHsts::default(), place, p).map(Some),
    };
    let (nosniff, referrer, frames, csp, hsts) = (nosniff?, referrer?, frames?, csp?, hsts?);
    let everywhere: Vec<(HeaderName, HeaderValue)> = [
        (header::X_CONTENT_TYPE_OPTIONS, nosniff),
        (header::REFERRER_POLICY, referrer),
        (header::X_FRAME_OPTIONS, frames),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    if everywhere.is_empty() && hsts.is_none() && csp.is_none() {
        p.push(
            place,
            "every header is switched off: write `security_headers: false` instead",
        );
        return None;
    }
    Some(SecurityHeaders {
        everywhere: everywhere.into(),
        hsts,
        gateway_csp: csp,
    })
}

/// A header's value: `Some(None)` when switched off, `None` after a problem. `check`
/// normalises a value of the operator's own or says what is wrong with it.
fn value(
    raw: Option<Toggle>,
    default: &'static str,
    place: &str,
    p: &mut Problems,
    check: impl FnOnce(&str) -> Result<String, String>,
) -> Option<Option<HeaderValue>> {
    let own = match raw {
        Some(Toggle::Off) => return Some(None),
        None | Some(Toggle::Default) => return Some(Some(HeaderValue::from_static(default))),
        Some(Toggle::Value(own)) => own,
    };
    match check(&own).map(|v| HeaderValue::from_str(&v)) {
        Ok(Ok(value)) => Some(Some(value)),
        Ok(Err(_)) => {
            p.push(place, format!("{own:?} is not a valid header value"));
            None
        }
        Err(why) => {
            p.push(place, format!("{own:?}: {why}"));
            None
        }
    }
}

fn hsts(raw: RawHsts, place: &str, p: &mut Problems) -> Option<HeaderValue> {
    let max_age = match &raw.max_age {
        Some(m) => super::whole_seconds(m, &format!("{place}.max_age"), p)?,
        None => YEAR_SECS,
    };
    let subdomains = raw.include_subdomains.unwrap_or(true);
    if raw.preload && (!subdomains || max_age < YEAR_SECS) {
        p.push(
            format!("{place}.preload"),
            "preload lists need include_subdomains: true and a max_age of at least 365d",
        );
        return None;
    }
    let mut value = format!("max-age={max_age}");
    if subdomains {
        value.push_str("; includeSubDomains");
    }
    if raw.preload {
        value.push_str("; preload");
    }
    HeaderValue::from_str(&value).ok()
}

/// Inserts `name: value` unless the answer already has `name`.
fn add_absent(
    response: &mut ResponseHeader,
    name: &HeaderName,
    value: &HeaderValue,
) -> pingora::Result<()> {
    if response.headers.contains_key(name) {
        return Ok(());
    }
    response.insert_header(name, value.clone())
}

impl SecurityHeaders {
    fn decorate(
        &self,
        response: &mut ResponseHeader,
        tls: bool,
        made_by_gateway: bool,
    ) -> pingora::Result<()> {
        for (name, value) in self.everywhere.iter() {
            add_absent(response, name, value)?;
        }
        if let (true, Some(hsts)) = (tls, &self.hsts) {
            add_absent(response, &header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
        if let (true, Some(csp)) = (made_by_gateway, &self.gateway_csp) {
            add_absent(response, &header::CONTENT_SECURITY_POLICY, csp)?;
        }
        Ok(())
    }
}

impl Step for SecurityHeaders {
    fn name(&self) -> &'static str {
        "security_headers"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            response: true,
            ..Hooks::default()
        }
    }

    fn response(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        facts: &Facts,
        made_by_gateway: bool,
    ) -> pingora::Result<()> {
        self.decorate(response, facts.tls, made_by_gateway)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(yaml: &str) -> SecurityHeaders {
        let raw: Switch<RawSecurityHeaders> = serde_yaml::from_str(yaml).unwrap();
        let Switch::On(raw) = raw else {
            panic!("switched off")
        };
        let mut p = Problems::default();
        let s = validate(raw, "defaults.security_headers", &mut p);
        assert!(p.is_empty(), "{:?}", p.into_vec());
        s.unwrap()
    }

    fn problems(yaml: &str) -> Vec<String> {
        let raw: RawSecurityHeaders = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        assert!(validate(raw, "routes[3].security_headers", &mut p).is_none());
        p.into_vec()
    }

    fn header<'a>(resp: &'a ResponseHeader, name: &HeaderName) -> Option<&'a str> {
        resp.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn the_preset_depends_on_tls_and_on_who_made_the_answer() {
        let s = preset("true");
        let mut upstream = ResponseHeader::build(200, None).unwrap();
        upstream
            .insert_header(header::X_FRAME_OPTIONS, "SAMEORIGIN")
            .unwrap();
        s.decorate(&mut upstream, false, false).unwrap();
        assert_eq!(
            header(&upstream, &header::X_FRAME_OPTIONS),
            Some("SAMEORIGIN")
        );
        assert_eq!(
            header(&upstream, &header::X_CONTENT_TYPE_OPTIONS),
            Some("nosniff")
        );
        assert_eq!(
            header(&upstream, &header::REFERRER_POLICY),
            Some("strict-origin-when-cross-origin")
        );
        assert_eq!(header(&upstream, &header::STRICT_TRANSPORT_SECURITY), None);
        assert_eq!(header(&upstream, &header::CONTENT_SECURITY_POLICY), None);

        let mut own = ResponseHeader::build(404, None).unwrap();
        s.decorate(&mut own, true, true).unwrap();
        assert_eq!(
            header(&own, &header::STRICT_TRANSPORT_SECURITY),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(
            header(&own, &header::CONTENT_SECURITY_POLICY),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        assert_eq!(header(&own, &header::X_FRAME_OPTIONS), Some("DENY"));
    }

    #[test]
    fn a_map_changes_or_switches_off_each_header() {
        let s = preset(
            "{hsts: {max_age: 30d, include_subdomains: false}, frame_options: sameorigin, \
             referrer_policy: 'no-referrer, same-origin', content_type_options: false, \
             content_security_policy: false}",
        );
        assert_eq!(s.hsts, Some(HeaderValue::from_static("max-age=2592000")));
        assert_eq!(s.gateway_csp, None);
        assert_eq!(
            &*s.everywhere,
            [
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer, same-origin")
                ),
                (
                    header::X_FRAME_OPTIONS,
                    HeaderValue::from_static("SAMEORIGIN")
                ),
            ]
        );
        let preload = preset("{hsts: {max_age: 730d, preload: true}}");
        assert_eq!(
            preload.hsts,
            Some(HeaderValue::from_static(
                "max-age=63072000; includeSubDomains; preload"
            ))
        );
        assert_eq!(preset("{hsts: false}").hsts, None);
    }

    #[test]
    fn bad_values_are_refused_with_their_places() {
        let p = problems(
            "{frame_options: ALLOW-FROM x, referrer_policy: everywhere, \
             content_type_options: sniff, content_security_policy: ' ', \
             hsts: {max_age: 30d, preload: true}}",
        );
        let want = [
            "routes[3].security_headers.frame_options: \"ALLOW-FROM x\": DENY or SAMEORIGIN",
            "routes[3].security_headers.referrer_policy: \"everywhere\": unknown policy",
            "routes[3].security_headers.content_type_options: \"sniff\": its one value is nosniff",
            "routes[3].security_headers.content_security_policy: \" \": an empty policy",
            "routes[3].security_headers.hsts.preload: preload lists need",
        ];
        for w in want {
            assert!(
                p.iter().any(|m| m.starts_with(w)),
                "missing {w:?} in {p:#?}"
            );
        }
        let p = problems("{hsts: {max_age: often}}");
        assert!(
            p[0].starts_with("routes[3].security_headers.hsts.max_age: \"often\""),
            "{p:?}"
        );
        let p = problems(
            "{hsts: false, content_type_options: false, referrer_policy: false, \
             frame_options: false, content_security_policy: false}",
        );
        assert!(p[0].contains("write `security_headers: false`"), "{p:?}");
        let wrong =
            serde_yaml::from_str::<RawSecurityHeaders>("{frame_options: [DENY]}").unwrap_err();
        assert!(
            wrong.to_string().contains("true, false or a header value"),
            "{wrong}"
        );
    }
}
