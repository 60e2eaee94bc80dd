//! Bearer-token authentication of the admin API. Tokens are compared as SHA-256 digests in
//! constant time, so neither their length nor a common prefix leaks through timing. A
//! token is either full (any call) or read-only (`GET` and `HEAD`; anything else is 403).

use super::error::AdminError;
use super::throttle::{check_spent, client_address, client_key, count};
use super::AdminState;
use crate::config::{AdminSettings, Secret};
use crate::limit::FailureMode;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest::{digest, SHA256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Who made an admin call, as the audit log records it: `token:<first 8 hex digits of the
/// token's SHA-256>` or `loopback` (no tokens configured). Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every call.
    Full,
    /// Reads only.
    ReadOnly,
}

/// The accepted admin tokens, as digests, with their roles.
#[derive(Clone)]
pub struct AdminAuth {
    digests: Arc<Vec<([u8; 32], Role)>>,
    /// Nobody is let in.
    closed: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Compares two digests in constant time: every byte is looked at, whatever differs.
fn equal_digests(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]))
}

fn label(digest: &[u8; 32]) -> String {
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

/// Why a request was not let in (logged; never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    NotBearer,
    /// A bearer token that is none of the configured ones.
    Unknown,
    /// The admin section is gone from the running config (a reload removed it): nobody is
    /// let in until a restart.
    Closed,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => "no Authorization header",
            AuthFailure::NotBearer => "not a Bearer token",
            AuthFailure::Unknown => "an unknown token",
            AuthFailure::Closed => "the admin section was removed from the config",
        })
    }
}

impl AdminAuth {
    /// Accepts `tokens` (full) and `read_only` tokens; with no full tokens, every caller is
    /// let in as `loopback` (configuration validation allows that only on a loopback
    /// address, without read-only tokens, and without the account API).
    pub fn new(tokens: &[Secret], read_only: &[Secret]) -> Self {
        let full = tokens.iter().map(|t| (sha256(t.expose()), Role::Full));
        let reader = read_only
            .iter()
            .map(|t| (sha256(t.expose()), Role::ReadOnly));
        AdminAuth {
            digests: Arc::new(full.chain(reader).collect()),
            closed: false,
        }
    }

    /// The tokens of the running config's `admin:` section; without one, nobody.
    pub fn current(admin: Option<&AdminSettings>) -> Self {
        match admin {
            Some(a) => AdminAuth::new(&a.tokens, &a.read_only_tokens),
            None => AdminAuth {
                digests: Arc::new(Vec::new()),
                closed: true,
            },
        }
    }

    /// Whether any token is configured (without, the API is open to loopback callers).
    pub fn has_tokens(&self) -> bool {
        self.closed || !self.digests.is_empty()
    }

    /// Checks an `Authorization` header value: who calls, and what it may do.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(Actor, Role), AuthFailure> {
        if self.closed {
            return Err(AuthFailure::Closed);
        }
        if self.digests.is_empty() {
            return Ok((Actor("loopback".into()), Role::Full));
        }
        let header = authorization.ok_or(AuthFailure::Missing)?;
        let token = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| header.get(7..))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::NotBearer)?;
        let given = sha256(token);
        // Compare against every token, without stopping at the first match.
        let mut found = None;
        for (d, role) in self.digests.iter() {
            if equal_digests(d, &given) {
                found = Some((d, *role));
            }
        }
        found
            .map(|(d, role)| (Actor(label(d)), role))
            .ok_or(AuthFailure::Unknown)
    }
}

/// Middleware: 401 unless the request carries an accepted token of the running config
/// (tokens are re-read on every reload), 403 when a read-only token attempts a change;
/// puts the [`Actor`] into the request's extensions. Failed attempts are logged (never
/// the token) and counted per client address: once `admin.failed_auth_throttle` is spent,
/// every attempt from that address is 429 before its token is even looked at, so a
/// guesser cannot tell a right guess from a wrong one.
pub async fn require_token(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let runtime = state.live().current();
    let admin = runtime.config.admin.as_ref();
    let auth = AdminAuth::current(admin);
    let throttle = admin.map(|a| a.failed_auth_throttle.clone());
    drop(runtime);
    let counter = match (&throttle, auth.has_tokens()) {
        (Some(window), true) => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            let client = client_address(&state, peer, request.headers(), false);
            Some((
                client,
                vec![(
                    format!("admin-auth:ip:{}", client_key(client)),
                    "admin_failed_auth_per_ip",
                    window,
                )],
            ))
        }
        _ => None,
    };
    if let Some((_, counters)) = &counter {
        if let Err(e) = check_spent(&state, "admin token", counters).await {
            return e.into_response();
        }
    }
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match auth.check(header) {
        Ok((_, Role::ReadOnly))
            if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) =>
        {
            AdminError::Forbidden("this admin token may only read (GET)".into()).into_response()
        }
        Ok((actor, _)) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(failure) => {
            let Some((client, counters)) = counter else {
                return AdminError::Unauthorized.into_response();
            };
            log::warn!(
                "admin: refused {} {} from {client}: {failure}",
                request.method(),
                request.uri().path()
            );
            // Throttle failures even when Redis is down: the local limiter takes over.
            let local = FailureMode::default();
            match count(&state, "admin token", &counters, Some(local)).await {
                Err(e @ AdminError::TooManyRequests { .. }) => e.into_response(),
                _ => AdminError::Unauthorized.into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        AdminAuth::new(
            &[
                Secret::new(b"first-admin-token-0123".to_vec()),
                Secret::new(b"second-admin-token-456".to_vec()),
            ],
            &[Secret::new(b"reader-admin-token-789".to_vec())],
        )
    }

    #[test]
    fn accepts_only_configured_tokens() {
        let a = auth();
        let (actor, role) = a.check(Some(b"Bearer second-admin-token-456")).unwrap();
        assert_eq!(role, Role::Full);
        let (_, role) = a.check(Some(b"Bearer reader-admin-token-789")).unwrap();
        assert_eq!(role, Role::ReadOnly);
        assert!(
            actor.0.starts_with("token:") && actor.0.len() == 14,
            "{actor:?}"
        );
        assert_eq!(
            a.check(Some(b"bearer first-admin-token-0123"))
                .unwrap()
                .0
                 .0,
            label(&sha256(b"first-admin-token-0123"))
        );
        for bad in [
            None,
            Some(&b"Bearer nope"[..]),
            Some(b"Basic first-admin-token-0123"),
            Some(b"Bearer "),
            Some(b"first-admin-token-0123"),
        ] {
            assert!(a.check(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn closed_without_an_admin_section() {
        assert_eq!(
            AdminAuth::current(None).check(None),
            Err(AuthFailure::Closed)
        );
    }

    #[test]
    fn open_without_tokens() {
        assert_eq!(
            AdminAuth::new(&[], &[]).check(None).unwrap(),
            (Actor("loopback".into()), Role::Full)
        );
    }
}
