//! Attempt throttles of the admin and account APIs (failed admin tokens, logins, refreshes,
//! logouts, registrations), counted in the gateway's rate limiter so that every instance
//! sharing a Redis shares the counts.

use super::error::AdminError;
use super::AdminState;
use crate::admin::ops::limit_error;
use crate::auth::client_ip::{ClientNetwork, TrustedProxies, DEFAULT_IPV6_PREFIX};
use crate::config::{ClientIpHeader, WindowSpec};
use crate::limit::{Algorithm, FailureMode, Policy, Subject, Window};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One counter: its limiter key, the policy name reported in logs and `Retry-After`
/// answers, and its window.
pub(crate) type Counter<'a> = (String, &'a str, &'a WindowSpec);

fn policies(limits: &[Counter<'_>]) -> Vec<Policy> {
    limits
        .iter()
        .map(|(_, name, w)| {
            Policy::new(
                *name,
                Algorithm::FixedWindow,
                vec![Window::new(w.requests, w.per)],
            )
        })
        .collect()
}

fn refused(what: &str, decision: &crate::limit::Decision) -> AdminError {
    let (policy, retry_after) = crate::rate_limit::refusal(decision);
    log::warn!("admin: {what} throttled ({policy})");
    AdminError::TooManyRequests {
        message: format!("too many {what} attempts ({policy}); retry later"),
        retry_after,
    }
}

/// Counts one attempt of `what` against each counter; 429 once any is spent. Redis
/// trouble is handled by `on_failure` (the configured `rate_limit.failure_mode` when
/// `None`).
pub(crate) async fn count(
    state: &AdminState,
    what: &str,
    limits: &[Counter<'_>],
    on_failure: Option<FailureMode>,
) -> Result<(), AdminError> {
    let policies = policies(limits);
    let subjects: Vec<Subject<'_>> = limits
        .iter()
        .zip(&policies)
        .map(|((key, _, _), policy)| Subject::new(key, policy))
        .collect();
    let failure_mode = on_failure.unwrap_or_else(|| state.live().current().limits.failure_mode());
    let decision = state
        .limiter()
        .get()
        .await
        .acquire(&subjects, 1, &failure_mode)
        .await
        .map_err(limit_error)?;
    if decision.allowed {
        Ok(())
    } else {
        Err(refused(what, &decision))
    }
}

/// 429 when a counter is spent already, counting nothing. A limiter that cannot answer
/// lets the attempt through (the count that follows a failure still falls back).
pub(crate) async fn check_spent(
    state: &AdminState,
    what: &str,
    limits: &[Counter<'_>],
) -> Result<(), AdminError> {
    let policies = policies(limits);
    let subjects: Vec<Subject<'_>> = limits
        .iter()
        .zip(&policies)
        .map(|((key, _, _), policy)| Subject::new(key, policy))
        .collect();
    match state.limiter().get().await.peek(&subjects).await {
        Ok(decision) if !decision.allowed => Err(refused(what, &decision)),
        Ok(_) => Ok(()),
        Err(e) => {
            log::warn!("admin: cannot read the {what} throttle: {e}");
            Ok(())
        }
    }
}

/// The client's address: the peer, or the forwarding chain when the peer is a configured
/// trusted proxy or, with `through_gateway` (the account API, meant to be reached through
/// the proxy), the gateway itself (loopback). The admin API does not believe loopback
/// peers' chains: a local caller could otherwise pick a fresh address for every attempt.
pub(crate) fn client_address(
    state: &AdminState,
    peer: IpAddr,
    headers: &http::HeaderMap,
    through_gateway: bool,
) -> IpAddr {
    let runtime = state.live().current();
    let auth = &runtime.config.auth;
    let mut trusted = auth.trusted_proxies.clone();
    // The gateway in front always writes X-Forwarded-For (src/proxy/forward.rs); behind
    // other proxies, the header they are believed for.
    let header = if through_gateway {
        ClientIpHeader::XForwardedFor
    } else {
        auth.client_ip_header
    };
    if through_gateway {
        trusted.extend(
            [
                ipnet::Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).map(IpNet::V4),
                ipnet::Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).map(IpNet::V6),
            ]
            .into_iter()
            .flatten(),
        );
    }
    TrustedProxies::new(trusted, header).client_ip(peer, headers)
}

/// The throttling key of a client address: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64, so single addresses are free to rotate); the same grouping as the
/// proxy's anonymous limits ([`ClientNetwork`]).
pub(crate) fn client_key(ip: IpAddr) -> String {
    ClientNetwork::of(ip, DEFAULT_IPV6_PREFIX).to_string()
}
