//! The admin listener answers only requests addressed to it by a name it knows: the
//! loopback literals (`127.0.0.1` and the rest of 127/8, `[::1]`, `localhost`, any port)
//! and the configured `admin.allowed_hosts`. A page on `evil.example` whose name an attacker
//! re-points at 127.0.0.1 (DNS rebinding) sends `Host: evil.example`, and is refused with
//! 421 before any handler runs.

use super::error::AdminError;
use crate::reload::LiveConfig;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// Whether a canonical host is a loopback literal.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    literal.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a request with this `Host` (or HTTP/2 authority) may be answered.
pub fn allowed(raw: Option<&str>, allowed_hosts: &[String]) -> bool {
    raw.and_then(crate::canonical::host_only)
        .is_some_and(|host| is_loopback(&host) || allowed_hosts.contains(&host))
}

/// Middleware: 421 `misdirected_request` unless the request names an allowed host.
pub async fn require_known_host(
    State(live): State<Arc<LiveConfig>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let runtime = live.current();
    let allowed_hosts = runtime
        .config
        .admin
        .as_ref()
        .map_or(&[][..], |a| &a.allowed_hosts);
    if allowed(host, allowed_hosts) {
        drop(runtime);
        return next.run(request).await;
    }
    log::warn!(
        "admin: refused a request for host {:?} (not loopback nor in admin.allowed_hosts)",
        host.unwrap_or("")
    );
    AdminError::MisdirectedRequest.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_literals_pass_with_any_port() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:9080",
            "localhost",
            "LOCALHOST:80",
            "localhost.",
        ] {
            assert!(allowed(Some(host), &[]), "{host}");
        }
    }

    #[test]
    fn other_hosts_are_refused_unless_configured() {
        for host in [
            "evil.example",
            "evil.example:9080",
            "10.0.0.1",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[",
            "a:80:80",
            "a:x",
            "user@127.0.0.1",
            "",
            "[::1",
            "[::2]",
        ] {
            assert!(!allowed(Some(host), &[]), "{host}");
        }
        assert!(!allowed(None, &[]));
        let configured = vec!["admin.internal".to_string()];
        assert!(allowed(Some("Admin.Internal.:9080"), &configured));
        assert!(!allowed(Some("other.internal"), &configured));
    }

    #[test]
    fn canonical_hosts() {
        assert_eq!(
            crate::canonical::host_only("Api.Example.COM."),
            Some("api.example.com".into())
        );
        assert_eq!(
            crate::canonical::host_only("[::1]:80"),
            Some("[::1]".into())
        );
        assert_eq!(crate::canonical::host_only("host:"), Some("host".into()));
        assert_eq!(crate::canonical::host_only("a b"), None);
        assert_eq!(crate::canonical::host_only("[::1]x"), None);
    }
}
