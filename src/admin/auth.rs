//! Bearer-token authentication of the admin API. Tokens are compared as SHA-256 digests in
//! constant time, so neither their length nor a common prefix leaks through timing.

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

/// The accepted admin tokens, as digests.
#[derive(Clone)]
pub struct AdminAuth {
    digests: Arc<Vec<[u8; 32]>>,
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
    /// Accepts `tokens`; with none, every caller is let in as `loopback` (configuration
    /// validation allows no tokens only on a loopback address).
    pub fn new(tokens: &[Secret]) -> Self {
        AdminAuth {
            digests: Arc::new(tokens.iter().map(|t| sha256(t.expose())).collect()),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Actor, AdminError> {
        if self.digests.is_empty() {
            return Ok(Actor("loopback".into()));
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
        for d in self.digests.iter() {
            if equal_digests(d, &given) {
                found = Some(d);
            }
        }
        found
            .map(|d| Actor(label(d)))
            .ok_or(AdminError::Unauthorized)
    }
}

/// Middleware: 401 unless the request carries an accepted token; puts the [`Actor`] into
/// the request's extensions.
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
        Ok(actor) => {
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
        AdminAuth::new(&[
            Secret::new(b"first-admin-token-0123".to_vec()),
            Secret::new(b"second-admin-token-456".to_vec()),
        ])
    }

    #[test]
    fn accepts_only_configured_tokens() {
        let a = auth();
        let actor = a.check(Some(b"Bearer second-admin-token-456")).unwrap();
        assert!(
            actor.0.starts_with("token:") && actor.0.len() == 14,
            "{actor:?}"
        );
        assert_eq!(
            a.check(Some(b"bearer first-admin-token-0123")).unwrap().0,
            label(&sha256(b"first-admin-token-0123"))
        );
        for bad in [
            None,
            Some(&b"Bearer nope"[..]),
            Some(b"Basic first-admin-token-0123"),
            Some(b"Bearer "),
            Some(b"first-admin-token-0123"),
        ] {
            assert_eq!(a.check(bad), Err(AdminError::Unauthorized), "{bad:?}");
        }
    }

    #[test]
    fn open_without_tokens() {
        assert_eq!(AdminAuth::new(&[]).check(None).unwrap().0, "loopback");
    }
}
