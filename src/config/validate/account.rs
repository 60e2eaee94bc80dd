//! `account:`: the self-service account API and its token issuer.

use super::*;

pub(super) fn account(raw: RawAccount, p: &mut Problems) -> AccountSettings {
    let issuer = raw
        .issuer
        .unwrap_or_else(|| DEFAULT_ACCOUNT_ISSUER.to_string());
    if issuer.is_empty() {
        p.push("account.issuer", "must not be empty");
    }
    let env = raw
        .signing_secret_env
        .unwrap_or_else(|| DEFAULT_ACCOUNT_SECRET_ENV.to_string());
    let secret = hmac_secret(&env, SecretEncoding::Raw, "account.signing_secret_env", p)
        .unwrap_or_else(|| Secret::new(Vec::new()));
    let access_token_ttl = duration(
        raw.access_token_ttl,
        "account.access_token_ttl",
        DEFAULT_ACCESS_TOKEN_TTL,
        p,
    );
    if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&access_token_ttl) {
        p.push("account.access_token_ttl", "must be between 10s and 24h");
    }
    let refresh_token_ttl = duration(
        raw.refresh_token_ttl,
        "account.refresh_token_ttl",
        DEFAULT_REFRESH_TOKEN_TTL,
        p,
    );
    if refresh_token_ttl <= access_token_ttl || refresh_token_ttl > Duration::from_secs(366 * 86400)
    {
        p.push(
            "account.refresh_token_ttl",
            "must be longer than access_token_ttl and at most 366d",
        );
    }
    if let Some(plan) = &raw.default_plan {
        check_name(plan, "account.default_plan", p);
    }
    AccountSettings {
        issuer,
        audience: raw.audience,
        signing_secret: secret,
        access_token_ttl,
        refresh_token_ttl,
        default_plan: raw.default_plan,
        login_per_account: window_or(
            raw.login_throttle.per_account,
            "account.login_throttle.per_account",
            5,
            p,
        ),
        login_per_ip: window_or(
            raw.login_throttle.per_ip,
            "account.login_throttle.per_ip",
            30,
            p,
        ),
        per_session: window_or(
            raw.login_throttle.per_session,
            "account.login_throttle.per_session",
            DEFAULT_SESSION_CALLS_PER_MINUTE,
            p,
        ),
    }
}

/// The proxy-side issuer of account access tokens: HS256 under the signing secret, the
/// consumer in `sub`, the plan in `plan`, and a `jti` (logout blocks it). The consumer must
/// exist in the store, so a deleted account's tokens stop working.
pub(super) fn account_issuer(account: &AccountSettings) -> IssuerSpec {
    IssuerSpec {
        issuer: account.issuer.clone(),
        audiences: match &account.audience {
            Some(aud) => Audiences::OneOf(vec![aud.clone()]),
            None => Audiences::Any,
        },
        algorithms: vec![jsonwebtoken::Algorithm::HS256],
        leeway: DEFAULT_JWT_LEEWAY,
        required_claims: vec!["exp".into(), "sub".into(), "jti".into()],
        typ: None,
        consumer_must_exist: true,
        consumer_claim: "sub".into(),
        plan_claim: Some("plan".into()),
        default_plan: None,
        keys: vec![JwtKeySource::Secret(account.signing_secret.clone())],
    }
}
