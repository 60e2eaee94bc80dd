//! What the upstream sees: the canonical path, `X-Forwarded-*`, the request id, the
//! verified identity, and nothing the client made up; and what the client sees of the
//! upstream's response headers.

use crate::auth::client_ip::TrustedProxies;
use crate::auth::Identity;
use crate::config::{AuthSettings, ClientIpHeader, IdentityHeaders};
use crate::vocab::gateway_headers::{
    self, FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PREFIX,
    X_FORWARDED_PROTO, X_REAL_IP,
};
use crate::vocab::same_header_name;
use http::header::{HeaderName, CONNECTION};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Headers that ask an upstream to use another method or URL than the request line says;
/// stripped unless the route allows them.
const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Facts about the downstream connection that the upstream request carries.
pub struct Downstream<'a> {
    /// The connection's peer address.
    pub peer: Option<IpAddr>,
    /// The client, as the trusted-proxy logic resolved it.
    pub client_ip: Option<IpAddr>,
    /// Whose forwarding headers are believed.
    pub trusted: &'a TrustedProxies,
    pub tls: bool,
    /// The canonical host the client asked for, with its port when it gave one.
    pub host: Option<String>,
    /// The port of the listener the request came in on.
    pub port: Option<u16>,
    /// The path prefix the route stripped, if it did.
    pub prefix: Option<&'a str>,
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `-Prefix` and `X-Real-IP`, and
/// removes `Forwarded`. A client's own `X-Forwarded-For` is kept (and extended) only when the
/// peer is a trusted proxy believed for that header.
pub fn set_forwarded_headers(
    req: &mut RequestHeader,
    downstream: &Downstream,
) -> pingora::Result<()> {
    if let Some(peer) = downstream.peer {
        let trusted = downstream.trusted.trusts(peer);
        let existing = req
            .headers
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let chain = match (trusted, downstream.trusted.header(), existing) {
            (true, ClientIpHeader::XForwardedFor, Some(existing)) => format!("{existing}, {peer}"),
            // Believed through `Forwarded`: pass on what was resolved, in the header the
            // upstream (and the account API) reads.
            (true, ClientIpHeader::Forwarded, _) => match downstream.client_ip {
                Some(client) if client != peer => format!("{client}, {peer}"),
                _ => peer.to_string(),
            },
            _ => peer.to_string(),
        };
        req.insert_header(X_FORWARDED_FOR, chain)?;
    } else {
        req.remove_header(X_FORWARDED_FOR);
    }
    match downstream.client_ip {
        Some(ip) => req.insert_header(X_REAL_IP, ip.to_string())?,
        None => {
            req.remove_header(X_REAL_IP);
        }
    }
    req.remove_header(FORWARDED);
    req.insert_header(
        X_FORWARDED_PROTO,
        if downstream.tls { "https" } else { "http" },
    )?;
    match &downstream.host {
        Some(host) => req.insert_header(X_FORWARDED_HOST, host.as_str())?,
        None => {
            req.remove_header(X_FORWARDED_HOST);
        }
    }
    match downstream.port {
        Some(port) => req.insert_header(X_FORWARDED_PORT, port.to_string())?,
        None => {
            req.remove_header(X_FORWARDED_PORT);
        }
    }
    match downstream.prefix {
        Some(prefix) => req.insert_header(X_FORWARDED_PREFIX, prefix)?,
        None => {
            req.remove_header(X_FORWARDED_PREFIX);
        }
    }
    Ok(())
}

/// Finds what a client must not send upstream under any spelling. Built once per config
/// snapshot.
pub struct Scrubber {
    /// The identity header names, in their `-` spelling.
    identity: Vec<HeaderName>,
    api_key_header: HeaderName,
    api_key_query: Option<String>,
}

/// What a route lets through that is scrubbed by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep {
    /// Method and URL override headers.
    pub overrides: bool,
    /// The gateway's API-key header and query parameter.
    pub api_key: bool,
}

impl Scrubber {
    /// The scrubber for these settings.
    pub fn new(settings: &AuthSettings) -> Self {
        let names = settings.identity_headers.named();
        Scrubber {
            identity: names.into_iter().map(|(name, _)| name.clone()).collect(),
            api_key_header: settings.api_key_header.clone(),
            api_key_query: settings.api_key_query.clone(),
        }
    }

    /// Removes identity headers under every spelling (`_` and `-` as one character), the
    /// `_` spellings of the gateway's forwarding headers, override headers and the API key
    /// unless `keep` says otherwise.
    pub fn scrub(&self, req: &mut RequestHeader, keep: Keep) -> pingora::Result<()> {
        let doomed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|name| self.is_forbidden(name.as_str(), keep))
            .cloned()
            .collect();
        for name in &doomed {
            req.remove_header(name);
        }
        if !keep.api_key {
            if let Some(param) = &self.api_key_query {
                remove_query_param(req, param)?;
            }
        }
        Ok(())
    }

    fn is_forbidden(&self, name: &str, keep: Keep) -> bool {
        let spelled_otherwise = |canonical: &str| same_header_name(name, canonical);
        self.identity.iter().any(|n| spelled_otherwise(n.as_str()))
            || (name.contains('_') && gateway_headers::ALL.iter().any(|n| spelled_otherwise(n)))
            || (!keep.overrides && OVERRIDE_HEADERS.iter().any(|n| spelled_otherwise(n)))
            || (!keep.api_key && spelled_otherwise(self.api_key_header.as_str()))
    }
}

/// Sets the identity headers from the verified identity (forged ones were scrubbed), so an
/// upstream can trust them.
pub fn set_identity_headers(
    req: &mut RequestHeader,
    names: &IdentityHeaders,
    identity: Option<&Identity>,
) -> pingora::Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    req.insert_header(names.auth_method.clone(), identity.method().as_str())?;
    if let Some(id) = identity.consumer_id() {
        req.insert_header(names.consumer_id.clone(), id)?;
    }
    if let Some(plan) = identity.plan() {
        req.insert_header(names.plan.clone(), plan)?;
    }
    if !identity.scopes().is_empty() {
        req.insert_header(names.scopes.clone(), identity.scopes().join(" "))?;
    }
    Ok(())
}

/// Removes `Authorization` (the bearer token the gateway verified).
pub fn remove_authorization(req: &mut RequestHeader) {
    req.remove_header(&http::header::AUTHORIZATION);
}

/// Removes query parameter `param` (every occurrence) from the request's URI.
fn remove_query_param(req: &mut RequestHeader, param: &str) -> pingora::Result<()> {
    let Some(pq) = req.uri.path_and_query() else {
        return Ok(());
    };
    let Some(query) = pq.query() else {
        return Ok(());
    };
    if crate::auth::query_param(query, param).is_none() {
        return Ok(());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(param))
        .collect();
    let rewritten = if kept.is_empty() {
        pq.path().to_string()
    } else {
        format!("{}?{}", pq.path(), kept.join("&"))
    };
    let uri = http::Uri::try_from(rewritten).or_else(|e| {
        pingora::Error::e_explain(
            pingora::ErrorType::InvalidHTTPHeader,
            format!("rewritten query: {e}"),
        )
    })?;
    req.set_uri(uri);
    Ok(())
}

/// Hop-by-hop response fields (RFC 9110 §7.6.1) that describe the upstream connection, not
/// the response: they must not reach the client. Pingora frames the downstream side itself.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    let nominated: Vec<HeaderName> = resp
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        resp.remove_header(&name);
    }
    for name in ["keep-alive", "proxy-connection", "te", "proxy-authenticate"] {
        resp.remove_header(name);
    }
    // An upgrade response (101) needs its Connection/Upgrade to reach the client.
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.remove_header(&CONNECTION);
        resp.remove_header("upgrade");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downstream(trusted: &TrustedProxies) -> Downstream<'_> {
        Downstream {
            peer: Some("192.0.2.7".parse().unwrap()),
            client_ip: Some("192.0.2.7".parse().unwrap()),
            trusted,
            tls: true,
            host: Some("api.example.com:8443".into()),
            port: Some(8443),
            prefix: None,
        }
    }

    fn forged() -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            (X_FORWARDED_FOR, "10.0.0.1"),
            (X_FORWARDED_HOST, "spoofed"),
            (X_REAL_IP, "6.6.6.6"),
            (FORWARDED, "for=6.6.6.6"),
            (X_FORWARDED_PORT, "1"),
            (X_FORWARDED_PREFIX, "/evil"),
        ] {
            req.insert_header(k, v).unwrap();
        }
        req
    }

    #[test]
    fn an_untrusted_peer_cannot_set_forwarding_headers() {
        let mut req = forged();
        let trusted = TrustedProxies::default();
        set_forwarded_headers(&mut req, &downstream(&trusted)).unwrap();
        assert_eq!(req.headers[X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(req.headers[X_REAL_IP], "192.0.2.7");
        assert_eq!(req.headers[X_FORWARDED_PROTO], "https");
        assert_eq!(req.headers[X_FORWARDED_HOST], "api.example.com:8443");
        assert_eq!(req.headers[X_FORWARDED_PORT], "8443");
        assert!(req.headers.get(X_FORWARDED_PREFIX).is_none());
        assert!(req.headers.get(FORWARDED).is_none());
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended() {
        let mut req = forged();
        let trusted = TrustedProxies::new(
            vec!["192.0.2.0/24".parse().unwrap()],
            ClientIpHeader::XForwardedFor,
        );
        set_forwarded_headers(&mut req, &downstream(&trusted)).unwrap();
        assert_eq!(req.headers[X_FORWARDED_FOR], "10.0.0.1, 192.0.2.7");
    }

    #[test]
    fn hop_by_hop_response_headers_are_dropped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "close, x-internal")
            .unwrap();
        resp.insert_header("x-internal", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_hop_by_hop_response(&mut resp);
        assert!(resp.headers.get("x-internal").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
        assert_eq!(resp.headers["x-kept"], "1");
    }
}
