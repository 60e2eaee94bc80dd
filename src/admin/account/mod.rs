//! The account API: end users register, log in, refresh and log out, and manage their
//! own API keys and read their usage. Served by the admin service under `/account/*`
//! (no admin token: its own credentials), and meant to be exposed through the proxy so
//! that it gets the gateway's limits (README "Account API").
//!
//! An account is a user and a consumer of the same id (`usr_…`): its keys and its
//! access tokens identify that consumer at the proxy. Access tokens are short-lived
//! HS256 JWTs ([`tokens`]); refresh tokens are opaque, stored hashed, and rotate on every
//! use, a replayed one revoking its whole family. Logout revokes the refresh family and
//! blocks the access token's `jti` on every instance (`crate::auth::revocation`).

pub mod password;
pub mod tokens;

use crate::admin::error::{AdminError, ErrorBody, Fields};
use crate::admin::keys::{create_key_for, KeyCreate, KeyCreated, KeyOut};
use crate::admin::ops::{consumer_standing, usage_for, LimitsOut, UsageOut, UsageParams};
use crate::admin::throttle::{client_address, client_key, count};
use crate::admin::{created, rfc3339, AdminState, Body, Path, Query};
use crate::auth::jwt::JwtError;
use crate::auth::store::Status;
use crate::config::{AccountSettings, DEFAULT_JWT_LEEWAY};
use crate::db::tokens::{self as refresh, NewRefreshToken, TokenHash};
use crate::db::users::{self, Registration, User};
use crate::db::{consumers, keys, plans, DbError};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The `/account/*` endpoints. Those that take no access token get the CSRF rule (a token
/// or a JSON content type, see `crate::admin::csrf`); the others answer 401 without one.
pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh_tokens))
        .route_layer(axum::middleware::from_fn(
            crate::admin::csrf::require_token_or_json,
        ))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_own_key, list_own_keys))
        .routes(routes!(revoke_own_key))
        .routes(routes!(own_usage))
}

// ------------------------------------------------------------------------------------
// Bodies
// ------------------------------------------------------------------------------------

/// E-mail address and password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// E-mail address (compared case-insensitively): one `@` between two non-empty parts
    /// without spaces or control characters, at most 254 characters.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+$",
        max_length = 254
    )]
    pub email: String,
    /// Password: 8 to 256 characters, not the e-mail address.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

/// A refresh token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

/// What logout revokes besides the access token it is called with.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutBody {
    /// The session's refresh token: it and every token of its family stop working.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// A key the caller creates for itself.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnKeyCreate {
    /// A label (may be empty): at most 128 characters, no control characters.
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 128)]
    pub name: Option<String>,
    /// RFC 3339; absent: never expires.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// An account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountOut {
    /// The account's id, also its consumer id (what the proxy counts and logs).
    pub id: String,
    /// E-mail address.
    pub email: String,
    /// Its plan; `null`: the gateway's default plan.
    pub plan: Option<String>,
    /// `disabled`: an operator has suspended it.
    pub status: Status,
    /// RFC 3339.
    pub created_at: String,
}

/// Tokens of a session.
#[derive(Serialize, ToSchema)]
pub struct TokensOut {
    /// A JWT for `Authorization: Bearer`, at the proxy and here.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchange it at `/account/refresh` for new tokens; it works once.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// Days of the caller's own usage.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnUsageParams {
    /// First day, `YYYY-MM-DD` (default: 30 days before `to`).
    #[param(format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// Last day (default: today). Before `from`: no rows.
    #[param(format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
}

/// The caller's usage, plan and current windows.
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnUsageOut {
    /// The plan and how its windows stand now.
    pub limits: LimitsOut,
    /// Counters per day and route.
    pub usage: UsageOut,
}

// ------------------------------------------------------------------------------------
// The caller
// ------------------------------------------------------------------------------------

/// A caller holding a valid, unrevoked access token of the account issuer.
pub struct AccountCaller {
    /// The account (user and consumer) id, from `sub`.
    pub id: String,
    /// The token's `jti`.
    pub token_id: String,
    /// The token's session (`sid`, its refresh-token family), when it has one.
    pub session_id: Option<String>,
    /// When verification would stop accepting the token: `exp` plus the issuer's leeway
    /// (Unix seconds). A logout blocks it until then.
    pub valid_until: u64,
}

fn unauthenticated(code: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::Unauthenticated {
        code,
        message: message.into(),
    }
}

impl FromRequestParts<AdminState> for AccountCaller {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, AdminError> {
        let runtime = state.live().current();
        let account = settings(&runtime.config.account)?;
        let token = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer_token)
            .ok_or_else(|| {
                unauthenticated(
                    "missing_token",
                    "this endpoint needs `Authorization: Bearer <access token>`",
                )
            })?;
        let identity = runtime
            .auth
            .jwt()
            .verify(token)
            .await
            .map_err(|e| match e {
                JwtError::Expired => unauthenticated("expired_token", e.to_string()),
                other => unauthenticated("invalid_token", other.to_string()),
            })?;
        if identity.issuer != account.issuer {
            return Err(unauthenticated(
                "invalid_token",
                "this is not an access token of the account API",
            ));
        }
        let (Some(token_id), Some(valid_until)) = (&identity.token_id, identity.valid_until) else {
            return Err(unauthenticated(
                "invalid_token",
                "the token lacks jti or exp",
            ));
        };
        if runtime
            .auth
            .revoked_tokens()
            .is_revoked(Some(token_id), identity.session_id.as_deref())
        {
            return Err(unauthenticated(
                "revoked_token",
                JwtError::Revoked.to_string(),
            ));
        }
        Ok(AccountCaller {
            id: identity.subject.clone(),
            token_id: token_id.clone(),
            session_id: identity.session_id.clone(),
            valid_until,
        })
    }
}

/// The account settings, or 404 when the account API is not enabled.
fn settings(account: &Option<AccountSettings>) -> Result<&AccountSettings, AdminError> {
    account.as_ref().ok_or_else(|| {
        AdminError::NotFound("the account API is not enabled (configure `account:`)".into())
    })
}

/// The current account settings.
fn current_settings(state: &AdminState) -> Result<AccountSettings, AdminError> {
    settings(&state.live().current().config.account).cloned()
}

/// The account's consumer, refused with 403 when an operator disabled it.
async fn active_consumer(state: &AdminState, id: &str) -> Result<consumers::Consumer, AdminError> {
    let consumer = consumers::find(state.db()?, id)
        .await?
        .ok_or_else(|| unauthenticated("invalid_token", "the account no longer exists"))?;
    if consumer.status != Status::Active {
        return Err(AdminError::ConsumerDisabled);
    }
    Ok(consumer)
}

fn account_out(user: User, consumer: &consumers::Consumer) -> AccountOut {
    AccountOut {
        id: user.id,
        email: user.email,
        plan: consumer.plan.clone(),
        status: consumer.status,
        created_at: rfc3339(user.created_at),
    }
}

/// The audit actor for a user acting on its own account.
fn actor(id: &str) -> String {
    format!("user:{id}")
}

// ------------------------------------------------------------------------------------
// Sessions
// ------------------------------------------------------------------------------------

/// Create an account: a user and its own consumer on the configured default plan.
#[utoipa::path(post, path = "/account/register", tag = "account", request_body = Credentials,
    responses(
        (status = 201, description = "Created", body = AccountOut),
        (status = 400, description = "Invalid e-mail address or weak password", body = ErrorBody),
        (status = 409, description = "The e-mail address is taken", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address; see Retry-After", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
    Body(body): Body<Credentials>,
) -> Result<Response, AdminError> {
    let account = current_settings(&state)?;
    let client = client_address(&state, peer.ip(), &headers, true);
    count(
        &state,
        "registration",
        &[(
            format!("register:ip:{}", client_key(client)),
            "register_per_ip",
            &account.login_per_ip,
        )],
        None,
    )
    .await?;
    let mut fields = Fields::default();
    // Checked as sent (the documented pattern), stored in lower case.
    fields.check(
        users::is_plausible_email(&body.email),
        "email",
        "must be an e-mail address",
    );
    let email = body.email.to_lowercase();
    if let Some(problem) = password::weakness(&body.password, &email) {
        fields.push("password", problem);
    }
    fields.finish()?;
    let db = state.db()?;
    if let Some(plan) = &account.default_plan {
        plans::get(db, plan).await.map_err(|e| match e {
            DbError::NotFound(_) => AdminError::Internal(format!(
                "account.default_plan {plan:?} is not a database plan (create it with POST /admin/plans)"
            )),
            other => other.into(),
        })?;
    }
    let password_hash = state
        .passwords()
        .hash(body.password)
        .await
        .map_err(password_error)?;
    let id = format!(
        "usr_{}",
        tokens::random_hex(state.rng(), 16).map_err(|e| AdminError::Internal(e.to_string()))?
    );
    let registration = Registration {
        id: id.clone(),
        email,
        password_hash,
        plan: account.default_plan.clone(),
    };
    let user = match users::register(db, &actor(&id), &registration).await {
        Ok(user) => user,
        Err(DbError::Conflict(_)) => {
            return Err(AdminError::Conflict(
                "an account with this e-mail address exists".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let consumer = consumers::get(db, &user.id).await?;
    Ok(created(account_out(user, &consumer)))
}

/// Log in: an access token and a refresh token. Throttled per account and per client
/// address.
#[utoipa::path(post, path = "/account/login", tag = "account", request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = TokensOut),
        (status = 401, description = "Wrong e-mail address or password", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
        (status = 429, description = "Too many attempts; see Retry-After", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
    Body(body): Body<Credentials>,
) -> Result<Json<TokensOut>, AdminError> {
    let account = current_settings(&state)?;
    let email = body.email.trim().to_lowercase();
    let client = client_address(&state, peer.ip(), &headers, true);
    throttle_login(&state, &account, &email, client).await?;
    // No stored password is this long (registration refuses it): no need to hash it.
    if body.password.chars().count() > password::MAX_PASSWORD_CHARS {
        return Err(unauthenticated(
            "invalid_credentials",
            "wrong e-mail address or password",
        ));
    }
    let db = state.db()?;
    let user = users::find_by_email(db, &email).await?;
    let matches = state
        .passwords()
        .verify(
            body.password,
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await
        .map_err(password_error)?;
    let user = match user {
        Some(user) if matches => user,
        _ => {
            log::info!("account: failed login from {client}");
            return Err(unauthenticated(
                "invalid_credentials",
                "wrong e-mail address or password",
            ));
        }
    };
    let consumer = active_consumer(&state, &user.id).await?;
    let refresh_token = tokens::new_refresh_token(state.rng()).map_err(internal)?;
    let stored = refresh::insert(
        db,
        &NewRefreshToken {
            user_id: user.id.clone(),
            family_id: None,
            hash: TokenHash::of(&refresh_token),
            expires_at: SystemTime::now() + account.refresh_token_ttl,
        },
    )
    .await?;
    session(
        &state,
        &account,
        &consumer,
        &stored.family_id,
        refresh_token,
    )
    .map(Json)
}

/// Exchange a refresh token for new tokens. The old refresh token stops working; using
/// it again revokes every token of its session.
#[utoipa::path(post, path = "/account/refresh", tag = "account", request_body = RefreshBody,
    responses(
        (status = 200, description = "New tokens", body = TokensOut),
        (status = 401, description = "Unknown, expired or reused refresh token", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
    ))]
pub async fn refresh_tokens(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
    Body(body): Body<RefreshBody>,
) -> Result<Json<TokensOut>, AdminError> {
    let account = current_settings(&state)?;
    let client = client_address(&state, peer.ip(), &headers, true);
    throttle_session(&state, &account, "refresh", client, None).await?;
    let db = state.db()?;
    let presented = TokenHash::of(&body.refresh_token);
    // A disabled account is refused before its token is used up, so that re-enabling it
    // does not make the next refresh look like a replay.
    let Some(known) = refresh::find_by_hash(db, &presented).await? else {
        return Err(unauthenticated(
            "invalid_refresh_token",
            "unknown refresh token",
        ));
    };
    count(
        &state,
        "refresh",
        &[(
            format!("refresh:s:{}", known.family_id),
            "per_session",
            &account.per_session,
        )],
        None,
    )
    .await?;
    let consumer = active_consumer(&state, &known.user_id).await?;
    let next = tokens::new_refresh_token(state.rng()).map_err(internal)?;
    let rotated = refresh::rotate(
        db,
        &presented,
        &TokenHash::of(&next),
        SystemTime::now() + account.refresh_token_ttl,
    )
    .await;
    let rotated = match rotated {
        Ok(successor) => successor,
        Err(DbError::NotFound(_)) => {
            return Err(unauthenticated(
                "invalid_refresh_token",
                "unknown refresh token",
            ))
        }
        Err(DbError::Invalid(_)) => {
            return Err(unauthenticated(
                "invalid_refresh_token",
                "the refresh token has expired",
            ))
        }
        Err(DbError::Conflict(_)) => {
            // A replay: the session may be stolen, so its access tokens go too.
            end_session(&state, &account, &known.family_id).await;
            return Err(unauthenticated(
                "refresh_token_reused",
                "this refresh token was already used: every token of its session is revoked; log in again",
            ));
        }
        Err(other) => return Err(other.into()),
    };
    session(&state, &account, &consumer, &rotated.family_id, next).map(Json)
}

/// End a session: the access token used for this call stops working at once on every
/// gateway instance, and so does the given refresh token's whole family.
#[utoipa::path(post, path = "/account/logout", tag = "account", request_body = LogoutBody,
    security(("access_token" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 404, description = "The refresh token is not this account's", body = ErrorBody),
        (status = 503, description = "The revocation could not be shared (Redis); the access token still works: retry", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
    caller: AccountCaller,
    body: axum::body::Bytes,
) -> Result<StatusCode, AdminError> {
    let account = current_settings(&state)?;
    let client = client_address(&state, peer.ip(), &headers, true);
    let session = caller.session_id.as_deref().unwrap_or(&caller.token_id);
    throttle_session(&state, &account, "logout", client, Some(session)).await?;
    // The body is optional: nothing (or `{}`) revokes the access token only.
    let body: LogoutBody = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutBody::default()
    } else {
        crate::admin::json_object(&body)?
    };
    let db = state.db()?;
    if let Some(token) = body.refresh_token {
        let found = refresh::find_by_hash(db, &TokenHash::of(&token))
            .await?
            .filter(|t| t.user_id == caller.id)
            .ok_or_else(|| AdminError::NotFound("no such refresh token on this account".into()))?;
        refresh::revoke_family(db, &actor(&caller.id), &found.family_id).await?;
        end_session(&state, &account, &found.family_id).await;
    }
    state
        .revocations()
        .revoke(&caller.token_id, caller.valid_until)
        .await
        .map_err(|e| {
            log::error!("account: logout of {}: {e}", caller.id);
            AdminError::RevocationUnavailable
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// New tokens for `consumer`, with `refresh_token` already stored.
fn session(
    state: &AdminState,
    account: &AccountSettings,
    consumer: &consumers::Consumer,
    session_id: &str,
    refresh_token: String,
) -> Result<TokensOut, AdminError> {
    let access = tokens::issue_access(
        account,
        state.rng(),
        &consumer.id,
        consumer.plan.as_deref(),
        &consumer.scopes,
        session_id,
    )
    .map_err(internal)?;
    Ok(TokensOut {
        access_token: access,
        token_type: "Bearer",
        expires_in: account.access_token_ttl.as_secs(),
        refresh_token,
        refresh_expires_in: account.refresh_token_ttl.as_secs(),
    })
}

/// Blocks every access token of session (refresh family) `session_id` on every instance,
/// until the last one it can have issued expires. Best effort: a failure is logged (the
/// refresh tokens are revoked in PostgreSQL either way).
async fn end_session(state: &AdminState, account: &AccountSettings, session_id: &str) {
    let until = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + account.access_token_ttl.as_secs()
        + DEFAULT_JWT_LEEWAY.as_secs();
    if let Err(e) = state.revocations().revoke_session(session_id, until).await {
        log::error!(
            "account: the access tokens of session {session_id} stay valid until they expire: {e}"
        );
    }
}

/// 503 with `Retry-After` when the hasher is full; 500 when it failed.
fn password_error(e: password::PasswordError) -> AdminError {
    match e {
        password::PasswordError::Busy => {
            log::warn!("account: every password-hashing slot and queue place is taken");
            AdminError::Overloaded {
                retry_after: password::BUSY_RETRY_AFTER,
            }
        }
        other => AdminError::Internal(other.to_string()),
    }
}

fn internal(e: tokens::TokenError) -> AdminError {
    AdminError::Internal(e.to_string())
}

/// Counts a login attempt against the account (by a keyed digest of its address) and the
/// client address; 429 once either is spent.
async fn throttle_login(
    state: &AdminState,
    account: &AccountSettings,
    email: &str,
    client: IpAddr,
) -> Result<(), AdminError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, account.signing_secret.expose());
    let email_digest: String = hmac::sign(&key, email.as_bytes()).as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    count(
        state,
        "login",
        &[
            (
                format!("login:a:{email_digest}"),
                "login_per_account",
                &account.login_per_account,
            ),
            (
                format!("login:ip:{}", client_key(client)),
                "login_per_ip",
                &account.login_per_ip,
            ),
        ],
        None,
    )
    .await
}

/// Counts a refresh or logout (`what`) against the client address and, once known, the
/// session; 429 once either is spent.
async fn throttle_session(
    state: &AdminState,
    account: &AccountSettings,
    what: &str,
    client: IpAddr,
    session: Option<&str>,
) -> Result<(), AdminError> {
    let mut counters = vec![(
        format!("{what}:ip:{}", client_key(client)),
        "session_per_ip",
        &account.login_per_ip,
    )];
    if let Some(session) = session {
        counters.push((
            format!("{what}:s:{session}"),
            "per_session",
            &account.per_session,
        ));
    }
    count(state, what, &counters, None).await
}

// ------------------------------------------------------------------------------------
// The caller's own data
// ------------------------------------------------------------------------------------

/// The caller's account.
#[utoipa::path(get, path = "/account/me", tag = "account", security(("access_token" = [])),
    responses(
        (status = 200, description = "The account", body = AccountOut),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
    ))]
pub async fn me(
    State(state): State<AdminState>,
    caller: AccountCaller,
) -> Result<Json<AccountOut>, AdminError> {
    let consumer = active_consumer(&state, &caller.id).await?;
    let user = users::get(state.db()?, &caller.id).await?;
    Ok(Json(account_out(user, &consumer)))
}

/// Create an API key for the caller; the answer is the only place its secret appears.
#[utoipa::path(post, path = "/account/keys", tag = "account", request_body = OwnKeyCreate,
    security(("access_token" = [])),
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = KeyCreated),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
    ))]
pub async fn create_own_key(
    State(state): State<AdminState>,
    caller: AccountCaller,
    Body(body): Body<OwnKeyCreate>,
) -> Result<Response, AdminError> {
    active_consumer(&state, &caller.id).await?;
    let key = create_key_for(
        &state,
        &actor(&caller.id),
        caller.id.clone(),
        KeyCreate {
            name: body.name,
            scopes: None,
            expires_at: body.expires_at,
        },
    )
    .await?;
    Ok(created(key))
}

/// The caller's API keys (never their secrets).
#[utoipa::path(get, path = "/account/keys", tag = "account", security(("access_token" = [])),
    responses(
        (status = 200, description = "The keys", body = Vec<KeyOut>),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
    ))]
pub async fn list_own_keys(
    State(state): State<AdminState>,
    caller: AccountCaller,
) -> Result<Json<Vec<KeyOut>>, AdminError> {
    active_consumer(&state, &caller.id).await?;
    let keys = keys::list(state.db()?, &caller.id).await?;
    Ok(Json(keys.into_iter().map(KeyOut::from).collect()))
}

/// Revoke one of the caller's keys, at once, on every instance.
#[utoipa::path(post, path = "/account/keys/{key_id}/revoke", tag = "account",
    security(("access_token" = [])),
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The revoked key", body = KeyOut),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
        (status = 404, description = "No such key on this account", body = ErrorBody),
    ))]
pub async fn revoke_own_key(
    State(state): State<AdminState>,
    caller: AccountCaller,
    Path(key_id): Path<String>,
) -> Result<Json<KeyOut>, AdminError> {
    active_consumer(&state, &caller.id).await?;
    let db = state.db()?;
    let not_found = || AdminError::NotFound(format!("no key {key_id:?} on this account"));
    // Another account's key is "not found" too: its existence is none of the caller's business.
    match keys::get(db, &key_id).await {
        Ok(key) if key.consumer_id == caller.id => {}
        Ok(_) | Err(DbError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    }
    Ok(Json(
        keys::revoke(db, &actor(&caller.id), &key_id).await?.into(),
    ))
}

/// The caller's usage per day and route, its plan, and how its windows stand now.
#[utoipa::path(get, path = "/account/usage", tag = "account", params(OwnUsageParams),
    security(("access_token" = [])),
    responses(
        (status = 200, description = "Usage and limits", body = OwnUsageOut),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
    ))]
pub async fn own_usage(
    State(state): State<AdminState>,
    caller: AccountCaller,
    Query(q): Query<OwnUsageParams>,
) -> Result<Json<OwnUsageOut>, AdminError> {
    let consumer = active_consumer(&state, &caller.id).await?;
    let usage = usage_for(
        &state,
        UsageParams {
            consumer: Some(caller.id.clone()),
            key: None,
            route: None,
            from: q.from,
            to: q.to,
        },
    )
    .await?;
    let limits = consumer_standing(&state, consumer).await?;
    Ok(Json(OwnUsageOut { limits, usage }))
}
