//! API keys: `/admin/consumers/{id}/keys` and `/admin/keys/{key_id}`. A key's secret is
//! generated here, shown in the answer that creates (or rotates) it, and stored nowhere:
//! the database keeps its peppered HMAC and display prefix. No other answer carries the
//! secret or the hash.

use super::auth::Actor;
use super::error::{check_scopes, AdminError, ErrorBody, Fields};
use super::{created, nullable, parse_time, rfc3339, AdminState, Body, Path};
use crate::auth::api_key::{self, KeyHash, KeyHasher};
use crate::db::consumers;
use crate::db::keys::{self, ApiKey, KeyUpdate, NewApiKey, Rotation, MAX_GRACE};
use crate::vocab::Status;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(get_key, update_key))
        .routes(routes!(rotate_key))
        .routes(routes!(revoke_key))
}

/// A key to create.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// A label (may be empty): at most 128 characters, no control characters.
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 128)]
    pub name: Option<String>,
    /// Its own scopes; absent: its consumer's.
    #[serde(default)]
    #[schema(value_type = Option<Vec<super::openapi::Scope>>)]
    pub scopes: Option<Vec<String>>,
    /// RFC 3339; absent: never expires.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A change to a key; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// A new label: at most 128 characters, no control characters.
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 128)]
    pub name: Option<String>,
    /// New scopes; `null`: its consumer's.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<super::openapi::Scope>>)]
    pub scopes: Option<Option<Vec<String>>>,
    /// RFC 3339; `null`: never expires.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// A new status.
    #[serde(default)]
    pub status: Option<Status>,
}

/// How to rotate a key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old key keeps working, in seconds (default 0, at most 365 days).
    #[serde(default)]
    #[schema(maximum = 31536000)]
    pub grace_seconds: u64,
    /// RFC 3339 expiry of the new key; absent: never.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A stored key: never its secret or its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyOut {
    /// Id.
    pub id: String,
    /// Whose key it is.
    pub consumer_id: String,
    /// Label.
    pub name: String,
    /// Display prefix (`tg_` + the public part).
    pub prefix: String,
    /// Own scopes; `null`: its consumer's.
    pub scopes: Option<Vec<String>>,
    /// Status.
    pub status: Status,
    /// RFC 3339; `null`: never.
    pub expires_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; `null`: never used.
    pub last_used_at: Option<String>,
    /// The key this one replaced.
    pub rotated_from: Option<String>,
}

impl From<ApiKey> for KeyOut {
    fn from(k: ApiKey) -> Self {
        KeyOut {
            id: k.id,
            consumer_id: k.consumer_id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            status: k.status,
            expires_at: k.expires_at.map(rfc3339),
            created_at: rfc3339(k.created_at),
            last_used_at: k.last_used_at.map(rfc3339),
            rotated_from: k.rotated_from,
        }
    }
}

/// A new key and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// The stored key.
    pub key: KeyOut,
    /// The whole API key: give it to the client; it cannot be shown again.
    pub secret: String,
}

/// Both sides of a rotation, and the new secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyRotated {
    /// The old key, working until its new `expires_at`.
    pub old: KeyOut,
    /// The new key.
    pub new: KeyOut,
    /// The new key's secret.
    pub secret: String,
}

fn check_label(fields: &mut Fields, name: Option<&str>) {
    if let Some(n) = name {
        fields.check(
            n.chars().count() <= 128,
            "name",
            "must be at most 128 characters long",
        );
        fields.check(
            !n.chars().any(char::is_control),
            "name",
            "must not contain control characters",
        );
    }
}

/// Generates a key and hashes it with the current pepper: (secret, prefix, hash).
fn new_secret(state: &AdminState) -> Result<(String, String, KeyHash), AdminError> {
    let runtime = state.live().current();
    let pepper = runtime
        .config
        .auth
        .pepper
        .as_ref()
        .ok_or(AdminError::NoPepper)?;
    let key = api_key::generate(state.rng())
        .map_err(|_| AdminError::Internal("the system random source failed".into()))?;
    let hash = KeyHasher::new(pepper.expose()).hash(&key.secret);
    Ok((key.secret, key.prefix, hash))
}

/// Create a key for a consumer; the answer is the only place its secret ever appears.
#[utoipa::path(post, path = "/admin/consumers/{id}/keys", tag = "keys", request_body = KeyCreate,
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = KeyCreated),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 503, description = "No database or no pepper configured", body = ErrorBody),
    ))]
pub async fn create_key(
    State(state): State<AdminState>,
    actor: Actor,
    Path(consumer_id): Path<String>,
    Body(body): Body<KeyCreate>,
) -> Result<Response, AdminError> {
    Ok(created(
        create_key_for(&state, &actor.0, consumer_id, body).await?,
    ))
}

/// Validates `body` and creates a key for consumer `consumer_id` (shared with the
/// account API, where users create their own keys).
pub(crate) async fn create_key_for(
    state: &AdminState,
    actor: &str,
    consumer_id: String,
    body: KeyCreate,
) -> Result<KeyCreated, AdminError> {
    let mut fields = Fields::default();
    check_label(&mut fields, body.name.as_deref());
    check_scopes(
        &mut fields,
        "scopes",
        body.scopes.as_deref().unwrap_or_default(),
    );
    let expires_at = body
        .expires_at
        .as_deref()
        .and_then(|t| parse_time(&mut fields, "expires_at", t));
    fields.finish()?;
    let db = state.db()?;
    consumers::get(db, &consumer_id).await?;
    let (secret, prefix, hash) = new_secret(state)?;
    let key = keys::create(
        db,
        actor,
        &NewApiKey {
            id: None,
            consumer_id,
            name: body.name.unwrap_or_default(),
            prefix,
            hash,
            scopes: body.scopes,
            expires_at,
        },
    )
    .await?;
    Ok(KeyCreated {
        key: key.into(),
        secret,
    })
}

/// A consumer's keys, oldest first (no secrets, no hashes).
#[utoipa::path(get, path = "/admin/consumers/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 200, description = "The keys", body = Vec<KeyOut>),
        (status = 404, description = "No such consumer", body = ErrorBody),
    ))]
pub async fn list_keys(
    State(state): State<AdminState>,
    Path(consumer_id): Path<String>,
) -> Result<Json<Vec<KeyOut>>, AdminError> {
    let keys = keys::list(state.db()?, &consumer_id).await?;
    Ok(Json(keys.into_iter().map(KeyOut::from).collect()))
}

/// One key (no secret, no hash).
#[utoipa::path(get, path = "/admin/keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = KeyOut),
        (status = 404, description = "No such key", body = ErrorBody),
    ))]
pub async fn get_key(
    State(state): State<AdminState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyOut>, AdminError> {
    Ok(Json(keys::get(state.db()?, &key_id).await?.into()))
}

/// Change a key's label, scopes, expiry or status.
#[utoipa::path(patch, path = "/admin/keys/{key_id}", tag = "keys", request_body = KeyPatch,
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The changed key", body = KeyOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
    ))]
pub async fn update_key(
    State(state): State<AdminState>,
    actor: Actor,
    Path(key_id): Path<String>,
    Body(body): Body<KeyPatch>,
) -> Result<Json<KeyOut>, AdminError> {
    let mut fields = Fields::default();
    check_label(&mut fields, body.name.as_deref());
    check_scopes(
        &mut fields,
        "scopes",
        body.scopes
            .as_ref()
            .and_then(|s| s.as_deref())
            .unwrap_or_default(),
    );
    let expires_at = match &body.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(t)) => parse_time(&mut fields, "expires_at", t).map(Some),
    };
    fields.finish()?;
    let key = keys::update(
        state.db()?,
        &actor.0,
        &key_id,
        &KeyUpdate {
            name: body.name,
            scopes: body.scopes,
            expires_at,
            status: body.status,
        },
    )
    .await?;
    Ok(Json(key.into()))
}

/// Replace a key with a new one; the old one keeps working for `grace_seconds`.
#[utoipa::path(post, path = "/admin/keys/{key_id}/rotate", tag = "keys", request_body = RotateBody,
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 201, description = "Rotated; `secret` is shown only now", body = KeyRotated),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 409, description = "The key is disabled, expired or already rotated", body = ErrorBody),
    ))]
pub async fn rotate_key(
    State(state): State<AdminState>,
    actor: Actor,
    Path(key_id): Path<String>,
    Body(body): Body<RotateBody>,
) -> Result<Response, AdminError> {
    let mut fields = Fields::default();
    fields.check(
        body.grace_seconds <= MAX_GRACE.as_secs(),
        "grace_seconds",
        format!("must be at most {}", MAX_GRACE.as_secs()),
    );
    let expires_at = body
        .expires_at
        .as_deref()
        .and_then(|t| parse_time(&mut fields, "expires_at", t));
    fields.finish()?;
    let db = state.db()?;
    let (secret, prefix, hash) = new_secret(&state)?;
    let rotated = keys::rotate(
        db,
        &actor.0,
        &key_id,
        &Rotation {
            hash,
            prefix,
            grace: Duration::from_secs(body.grace_seconds),
            expires_at,
        },
    )
    .await?;
    Ok(created(KeyRotated {
        old: rotated.old.into(),
        new: rotated.new.into(),
        secret,
    }))
}

/// Disable a key at once, everywhere.
#[utoipa::path(post, path = "/admin/keys/{key_id}/revoke", tag = "keys",
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The revoked key", body = KeyOut),
        (status = 404, description = "No such key", body = ErrorBody),
    ))]
pub async fn revoke_key(
    State(state): State<AdminState>,
    actor: Actor,
    Path(key_id): Path<String>,
) -> Result<Json<KeyOut>, AdminError> {
    Ok(Json(
        keys::revoke(state.db()?, &actor.0, &key_id).await?.into(),
    ))
}
