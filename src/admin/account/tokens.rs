//! What the account API hands out: short-lived access JWTs (HS256, signed with
//! `account.signing_secret`, verified at the proxy like any issuer's) and opaque refresh
//! tokens (stored only as their SHA-256, see `crate::db::tokens`).

use crate::config::AccountSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of refresh tokens, so a leaked one is recognisable (e.g. by secret scanners).
pub const REFRESH_TOKEN_PREFIX: &str = "tgr_";

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// Signing failed.
    #[error("signing the access token failed: {0}")]
    Signing(String),
}

/// The claims of an access token.
#[derive(Debug, Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    /// The account's consumer id (also its user id).
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The session (refresh family) the token belongs to: revoking it revokes the token.
    sid: &'a str,
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(rng: &SystemRandom, n: usize) -> Result<String, TokenError> {
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes).map_err(|_| TokenError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh refresh token: the prefix and 256 random bits.
pub fn new_refresh_token(rng: &SystemRandom) -> Result<String, TokenError> {
    Ok(format!("{REFRESH_TOKEN_PREFIX}{}", random_hex(rng, 32)?))
}

/// Signs an access token (compact JWS) for consumer `subject` on `plan` with `scopes`, in
/// session `session_id`.
pub fn issue_access(
    settings: &AccountSettings,
    rng: &SystemRandom,
    subject: &str,
    plan: Option<&str>,
    scopes: &[String],
    session_id: &str,
) -> Result<String, TokenError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let id = random_hex(rng, 16)?;
    let expires_at = now + settings.access_token_ttl.as_secs();
    let claims = AccessClaims {
        iss: &settings.issuer,
        sub: subject,
        aud: settings.audience.as_deref(),
        iat: now,
        nbf: now,
        exp: expires_at,
        jti: &id,
        plan,
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        sid: session_id,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(settings.signing_secret.expose()),
    )
    .map_err(|e| TokenError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::JwtVerifier;
    use crate::config::{Secret, WindowSpec};
    use std::time::Duration;

    fn settings() -> AccountSettings {
        AccountSettings {
            issuer: "tollgate-test".into(),
            audience: Some("api".into()),
            signing_secret: Secret::new(b"an-account-signing-secret-of-32-bytes".to_vec()),
            access_token_ttl: Duration::from_secs(600),
            refresh_token_ttl: Duration::from_secs(86400),
            default_plan: None,
            login_per_account: WindowSpec {
                requests: 5,
                per: Duration::from_secs(60),
                burst: None,
            },
            login_per_ip: WindowSpec {
                requests: 5,
                per: Duration::from_secs(60),
                burst: None,
            },
            per_session: WindowSpec {
                requests: 5,
                per: Duration::from_secs(60),
                burst: None,
            },
        }
    }

    /// An issued token verifies through the proxy's JWT machinery, configured by the
    /// same issuer spec the config validation adds.
    #[tokio::test]
    async fn issued_tokens_verify_at_the_proxy() {
        let settings = settings();
        let rng = SystemRandom::new();
        let access = issue_access(
            &settings,
            &rng,
            "usr_1",
            Some("gold"),
            &["read".into()],
            "fam_1",
        )
        .unwrap();
        let yaml = "listeners: [{address: \"127.0.0.1:1\"}]\n\
                    account: {issuer: tollgate-test, audience: api, signing_secret_env: TG_TOKENS_TEST_SECRET}\n\
                    database: {url: \"postgres://localhost/x\"}\n\
                    admin: {address: \"127.0.0.1:1\", tokens_env: TG_TOKENS_TEST_ADMIN}\n";
        std::env::set_var(
            "TG_TOKENS_TEST_SECRET",
            "an-account-signing-secret-of-32-bytes",
        );
        std::env::set_var(
            "TG_TOKENS_TEST_ADMIN",
            "4f0c2a9e7d5b3f1c8a6e4d2b0f9c7a5e3d1b8f6c4a2e0d9b7f5c3a1e8d6b4f2c",
        );
        let config = crate::config::parse(yaml, std::path::Path::new(".")).unwrap();
        let verifier = JwtVerifier::build(&config.auth.issuers, None).unwrap();
        let identity = verifier.verify(&access).await.unwrap();
        assert_eq!(identity.subject, "usr_1");
        assert_eq!(identity.plan.as_deref(), Some("gold"));
        assert_eq!(identity.scopes, vec!["read".to_string()]);
        assert_eq!(identity.token_id.as_ref().map(String::len), Some(32));
        assert_eq!(identity.session_id.as_deref(), Some("fam_1"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = identity.expires_at.unwrap();
        assert!((now + 599..=now + 601).contains(&exp), "{exp} vs {now}");
    }

    #[test]
    fn refresh_tokens_are_prefixed_and_random() {
        let rng = SystemRandom::new();
        let a = new_refresh_token(&rng).unwrap();
        let b = new_refresh_token(&rng).unwrap();
        assert!(a.starts_with("tgr_") && a.len() == 4 + 64, "{a}");
        assert_ne!(a, b);
    }
}
