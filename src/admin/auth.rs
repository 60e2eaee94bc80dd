//! Bearer-token authentication of the admin API. Tokens are compared as SHA-256 digests in
//! constant time, so neither their length nor a common prefix leaks through timing. A
//! token is either full (any call) or read-only (`GET` and `HEAD`; anything else is 403).

use super::error::AdminError;
use crate::config::Secret;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest::{digest, SHA256};
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
/// (ring's `verify_slices_are_equal` is deprecated.)
fn equal_digests(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

fn label(digest: &[u8; 32]) -> String {
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

impl AdminAuth {
    /// Accepts `tokens` (full) and `read_only` tokens; with no full tokens, every caller is
    /// let in as `loopback` (configuration validation allows that only on a loopback
    /// address, and only without read-only tokens).
    pub fn new(tokens: &[Secret], read_only: &[Secret]) -> Self {
        let full = tokens.iter().map(|t| (sha256(t.expose()), Role::Full));
        let reader = read_only
            .iter()
            .map(|t| (sha256(t.expose()), Role::ReadOnly));
        AdminAuth {
            digests: Arc::new(full.chain(reader).collect()),
        }
    }

    /// Checks an `Authorization` header value: who calls, and what it may do.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(Actor, Role), AdminError> {
        if self.digests.is_empty() {
            return Ok((Actor("loopback".into()), Role::Full));
        }
        let header = authorization.ok_or(AdminError::Unauthorized)?;
        let token = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| header[7..].trim_ascii())
            .filter(|t| !t.is_empty())
            .ok_or(AdminError::Unauthorized)?;
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
            .ok_or(AdminError::Unauthorized)
    }
}

/// Middleware: 401 unless the request carries an accepted token, 403 when a read-only
/// token attempts a change; puts the [`Actor`] into the request's extensions.
pub async fn require_token(
    State(auth): State<AdminAuth>,
    mut request: Request,
    next: Next,
) -> Response {
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
        Err(e) => e.into_response(),
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
            assert!(
                matches!(a.check(bad), Err(AdminError::Unauthorized)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_without_tokens() {
        assert_eq!(
            AdminAuth::new(&[], &[]).check(None).unwrap(),
            (Actor("loopback".into()), Role::Full)
        );
    }
}
