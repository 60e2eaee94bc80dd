//! What the upstream sees: the rewritten path, `X-Forwarded-*`, the request id; and what
//! the client sees of the upstream's response headers.

use crate::auth::Identity;
use crate::config::{AuthSettings, IdentityHeaders};
use http::header::{HeaderName, CONNECTION};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Facts about the downstream connection that the upstream request carries.
pub struct Downstream<'a> {
    pub client_ip: Option<IpAddr>,
    pub tls: bool,
    /// The host the client asked for (Host header or HTTP/2 authority), with port.
    pub host: Option<&'a str>,
}

/// Sets `X-Forwarded-For` (appending the client to any chain it sent), `X-Forwarded-Proto`
/// and `X-Forwarded-Host`.
pub fn set_forwarded_headers(
    req: &mut RequestHeader,
    downstream: &Downstream,
) -> pingora::Result<()> {
    if let Some(ip) = downstream.client_ip {
        let chain = match req.headers.get(X_FORWARDED_FOR).map(|v| v.to_str()) {
            Some(Ok(existing)) if !existing.trim().is_empty() => {
                format!("{}, {ip}", existing.trim())
            }
            _ => ip.to_string(),
        };
        req.insert_header(X_FORWARDED_FOR, chain)?;
    }
    req.insert_header(
        X_FORWARDED_PROTO,
        if downstream.tls { "https" } else { "http" },
    )?;
    match downstream.host {
        Some(host) => req.insert_header(X_FORWARDED_HOST, host)?,
        None => {
            req.remove_header(X_FORWARDED_HOST);
        }
    }
    Ok(())
}

/// Removes any identity headers the client sent, then sets them from the verified identity,
/// so an upstream can trust them.
pub fn set_identity_headers(
    req: &mut RequestHeader,
    names: &IdentityHeaders,
    forgeable: &[http::HeaderName],
    identity: Option<&Identity>,
) -> pingora::Result<()> {
    for name in forgeable {
        req.remove_header(name);
    }
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

/// Removes the client's credentials (API-key header or query parameter, `Authorization`).
pub fn remove_credentials(req: &mut RequestHeader, settings: &AuthSettings) -> pingora::Result<()> {
    req.remove_header(&settings.api_key_header);
    req.remove_header(&http::header::AUTHORIZATION);
    let Some(param) = settings.api_key_query.as_deref() else {
        return Ok(());
    };
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

/// The host of a request without port: the URI authority (HTTP/2) or the Host header.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    let raw = req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })?;
    Some(strip_port(raw))
}

/// The host with its port, as the client sent it.
pub fn request_authority(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_extend_the_chain() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(X_FORWARDED_FOR, "10.0.0.1").unwrap();
        req.insert_header(X_FORWARDED_HOST, "spoofed").unwrap();
        let d = Downstream {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            tls: true,
            host: Some("api.example.com:8443"),
        };
        set_forwarded_headers(&mut req, &d).unwrap();
        assert_eq!(req.headers[X_FORWARDED_FOR], "10.0.0.1, 192.0.2.7");
        assert_eq!(req.headers[X_FORWARDED_PROTO], "https");
        assert_eq!(req.headers[X_FORWARDED_HOST], "api.example.com:8443");
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

    #[test]
    fn host_loses_its_port() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
    }
}
