//! API keys, stored as their HMAC ([`KeyHash`]): this module never sees a key's secret.

use super::audit::{self, NewAuditEntry};
use super::change::{self, Change};
use super::consumers::check_scopes;
use super::{begin, check_actor, check_name, col, commit, parse_status, status_str, Db, DbError};
use crate::auth::api_key::KeyHash;
use crate::auth::store::{self, KeyRecord, Status};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_postgres::Row;

/// The longest grace period a rotation may give the old key.
pub const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A stored API key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// Its id (not secret; shown in listings, logs and usage).
    pub id: String,
    /// Whose key it is.
    pub consumer_id: String,
    /// A label chosen by the operator (may be empty).
    pub name: String,
    /// `tg_` plus the public part of the key, for display.
    pub prefix: String,
    /// The HMAC of the key under the gateway's pepper.
    pub hash: KeyHash,
    /// Its own scopes; `None`: its consumer's.
    pub scopes: Option<Vec<String>>,
    /// Whether it works.
    pub status: Status,
    /// When it stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was last seen (written in batches, so a little behind).
    pub last_used_at: Option<SystemTime>,
    /// The key this one replaced, when it was made by [`rotate`].
    pub rotated_from: Option<String>,
}

impl ApiKey {
    /// What the proxy needs of it, given its consumer.
    pub fn to_record(&self, consumer: Arc<store::Consumer>) -> KeyRecord {
        KeyRecord {
            key_id: self.id.clone(),
            prefix: self.prefix.clone(),
            scopes: self
                .scopes
                .clone()
                .unwrap_or_else(|| consumer.scopes.clone()),
            consumer,
            status: self.status,
            expires_at: self.expires_at,
        }
    }
}

/// A key to store. Generate it with [`crate::auth::api_key::generate`], hash it with the
/// gateway's [`crate::auth::api_key::KeyHasher`], show the secret once and pass only the
/// hash and prefix here.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    /// Its id; `None`: the database makes one (`key_` + 32 hex digits).
    pub id: Option<String>,
    /// Whose key it is (must exist).
    pub consumer_id: String,
    /// A label (may be empty).
    pub name: String,
    /// The display prefix.
    pub prefix: String,
    /// The HMAC of the key.
    pub hash: KeyHash,
    /// Its own scopes; `None`: its consumer's.
    pub scopes: Option<Vec<String>>,
    /// When it stops working, if ever.
    pub expires_at: Option<SystemTime>,
}

/// A change to a key; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyUpdate {
    /// A new label.
    pub name: Option<String>,
    /// `Some(None)`: use the consumer's scopes.
    pub scopes: Option<Option<Vec<String>>>,
    /// `Some(None)`: never expires.
    pub expires_at: Option<Option<SystemTime>>,
    /// A new status.
    pub status: Option<Status>,
}

/// How to rotate a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    /// The new key's HMAC.
    pub hash: KeyHash,
    /// The new key's display prefix.
    pub prefix: String,
    /// How long the old key keeps working (from the database's clock); at most
    /// [`MAX_GRACE`]. An old key that already expires sooner keeps its earlier expiry.
    pub grace: Duration,
    /// When the new key expires, if ever.
    pub expires_at: Option<SystemTime>,
}

/// Both sides of a rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotated {
    /// The old key, now expiring at the end of the grace period.
    pub old: ApiKey,
    /// The new key, linked to the old by `rotated_from`.
    pub new: ApiKey,
}

/// The columns every query returns: a macro, so each statement is one `concat!`-ed
/// compile-time constant.
macro_rules! columns {
    () => {
        "id, consumer_id, name, prefix, hash, scopes, status, expires_at, created_at, \
         last_used_at, rotated_from"
    };
}

/// Stores a key. [`DbError::Conflict`] if its id or hash is taken, [`DbError::Invalid`] if
/// the consumer does not exist.
pub async fn create(db: &Db, actor: &str, key: &NewApiKey) -> Result<ApiKey, DbError> {
    check_actor(actor)?;
    if let Some(id) = &key.id {
        check_name("key id", id)?;
    }
    check_label(&key.name)?;
    check_name("key prefix", &key.prefix)?;
    if let Some(scopes) = &key.scopes {
        check_scopes(scopes)?;
    }
    let context = format!("create key for consumer {:?}", key.consumer_id);
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let row = tx
        .query_one(
            concat!(
                "INSERT INTO api_keys (id, consumer_id, name, prefix, hash, scopes, expires_at)
                 VALUES (COALESCE($1, tollgate_new_id('key_')), $2, $3, $4, $5, $6, $7)
                 RETURNING ",
                columns!()
            ),
            &[
                &key.id,
                &key.consumer_id,
                &key.name,
                &key.prefix,
                &key.hash.0.as_slice(),
                &key.scopes,
                &key.expires_at,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?;
    let created = from_row(&row)?;
    audit::append(
        &tx,
        &entry(actor, "key.create", &created, &details(&created)),
    )
    .await?;
    // The hash may sit in a negative cache (someone tried it before it existed).
    change::notify(&tx, &Change::Key { hash: created.hash }).await?;
    commit(tx, &context).await?;
    Ok(created)
}

/// The keys of consumer `consumer_id`, oldest first; [`DbError::NotFound`] if there is
/// no such consumer.
pub async fn list(db: &Db, consumer_id: &str) -> Result<Vec<ApiKey>, DbError> {
    let client = db.client().await?;
    let context = || format!("list keys of consumer {consumer_id:?}");
    let rows = client
        .query(
            concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE consumer_id = $1 ORDER BY created_at, id"
            ),
            &[&consumer_id],
        )
        .await
        .map_err(|e| DbError::from_pg(context(), e))?;
    if rows.is_empty() {
        let exists = client
            .query_opt("SELECT 1 FROM consumers WHERE id = $1", &[&consumer_id])
            .await
            .map_err(|e| DbError::from_pg(context(), e))?;
        if exists.is_none() {
            return Err(DbError::NotFound(format!("consumer {consumer_id:?}")));
        }
    }
    rows.iter().map(from_row).collect()
}

/// The key `id`; [`DbError::NotFound`] if there is none.
pub async fn get(db: &Db, id: &str) -> Result<ApiKey, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            concat!("SELECT ", columns!(), " FROM api_keys WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("get key {id:?}"), e))?
        .ok_or_else(|| not_found(id))?;
    from_row(&row)
}

/// Changes a key's label, scopes, expiry or status.
pub async fn update(db: &Db, actor: &str, id: &str, update: &KeyUpdate) -> Result<ApiKey, DbError> {
    check_actor(actor)?;
    if let Some(name) = &update.name {
        check_label(name)?;
    }
    if let Some(Some(scopes)) = &update.scopes {
        check_scopes(scopes)?;
    }
    let context = format!("update key {id:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let row = tx
        .query_opt(
            concat!(
                "UPDATE api_keys SET
                     name = COALESCE($2::text, name),
                     scopes = CASE WHEN $3::bool THEN $4::text[] ELSE scopes END,
                     expires_at = CASE WHEN $5::bool THEN $6::timestamptz ELSE expires_at END,
                     status = COALESCE($7::text, status)
                 WHERE id = $1
                 RETURNING ",
                columns!()
            ),
            &[
                &id,
                &update.name,
                &update.scopes.is_some(),
                &update.scopes.clone().flatten(),
                &update.expires_at.is_some(),
                &update.expires_at.flatten(),
                &update.status.map(status_str),
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?
        .ok_or_else(|| not_found(id))?;
    let updated = from_row(&row)?;
    audit::append(
        &tx,
        &entry(actor, "key.update", &updated, &details(&updated)),
    )
    .await?;
    change::notify(&tx, &Change::Key { hash: updated.hash }).await?;
    commit(tx, &context).await?;
    Ok(updated)
}

/// Replaces key `id` with a new one: the new row gets the old one's consumer, label and
/// scopes, and `rotated_from = id`; the old one keeps working until `grace` from now.
/// [`DbError::Conflict`] if the old key is disabled, expired, or already rotated; all in
/// one transaction.
pub async fn rotate(
    db: &Db,
    actor: &str,
    id: &str,
    rotation: &Rotation,
) -> Result<Rotated, DbError> {
    check_actor(actor)?;
    check_name("key prefix", &rotation.prefix)?;
    if rotation.grace > MAX_GRACE {
        return Err(DbError::Invalid(format!(
            "grace: at most {} days",
            MAX_GRACE.as_secs() / 86_400
        )));
    }
    let context = format!("rotate key {id:?}");
    let conflict = |why: &str| DbError::Conflict(format!("{context}: {why}"));
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    // The row lock serialises concurrent rotations of one key; the row read is its
    // newest version even after waiting for the lock.
    let state = tx
        .query_opt(
            "SELECT status, expires_at IS NOT NULL AND expires_at <= now() AS expired
             FROM api_keys WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?
        .ok_or_else(|| not_found(id))?;
    if parse_status(col(&state, "status")?) != Status::Active {
        return Err(conflict("the key is disabled"));
    }
    if col::<bool>(&state, "expired")? {
        return Err(conflict("the key has expired"));
    }
    // A separate statement, so its snapshot (taken after the lock was granted) sees a
    // successor committed by a rotation that held the lock before us.
    let rotated: bool = col(
        &tx.query_one(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE rotated_from = $1) AS rotated",
            &[&id],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?,
        "rotated",
    )?;
    if rotated {
        return Err(conflict("the key was already rotated"));
    }
    let new = tx
        .query_one(
            concat!(
                "INSERT INTO api_keys
                     (consumer_id, name, prefix, hash, scopes, expires_at, rotated_from)
                 SELECT consumer_id, name, $2, $3, scopes, $4, id FROM api_keys WHERE id = $1
                 RETURNING ",
                columns!()
            ),
            &[
                &id,
                &rotation.prefix,
                &rotation.hash.0.as_slice(),
                &rotation.expires_at,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?;
    let new = from_row(&new)?;
    let old = tx
        .query_one(
            concat!(
                "UPDATE api_keys
                 SET expires_at = LEAST(COALESCE(expires_at, 'infinity'),
                                        now() + make_interval(secs => $2::float8))
                 WHERE id = $1
                 RETURNING ",
                columns!()
            ),
            &[&id, &rotation.grace.as_secs_f64()],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?;
    let old = from_row(&old)?;
    let details = json!({
        "new_key": new.id,
        "new_prefix": new.prefix,
        "grace_seconds": rotation.grace.as_secs(),
    });
    audit::append(&tx, &entry(actor, "key.rotate", &old, &details)).await?;
    change::notify(&tx, &Change::Key { hash: old.hash }).await?;
    change::notify(&tx, &Change::Key { hash: new.hash }).await?;
    commit(tx, &context).await?;
    Ok(Rotated { old, new })
}

/// Disables key `id` at once, everywhere (listeners evict it from their caches).
pub async fn revoke(db: &Db, actor: &str, id: &str) -> Result<ApiKey, DbError> {
    let context = format!("revoke key {id:?}");
    check_actor(actor)?;
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let row = tx
        .query_opt(
            concat!(
                "UPDATE api_keys SET status = 'disabled' WHERE id = $1 RETURNING ",
                columns!()
            ),
            &[&id],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?
        .ok_or_else(|| not_found(id))?;
    let revoked = from_row(&row)?;
    audit::append(&tx, &entry(actor, "key.revoke", &revoked, &json!({}))).await?;
    change::notify(&tx, &Change::Key { hash: revoked.hash }).await?;
    commit(tx, &context).await?;
    Ok(revoked)
}

/// Records when keys were last used, in one statement for the whole batch (the usage
/// flusher calls this; nothing writes per request). A key listed twice keeps its latest
/// time; a time older than the stored one is ignored; unknown ids are skipped. Returns
/// how many keys changed.
pub async fn touch_last_used(db: &Db, seen: &[(String, SystemTime)]) -> Result<u64, DbError> {
    if seen.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let times: Vec<SystemTime> = seen.iter().map(|(_, at)| *at).collect();
    let client = db.client().await?;
    client
        .execute(
            "UPDATE api_keys AS k SET last_used_at = v.at
             FROM (SELECT id, max(at) AS at
                   FROM unnest($1::text[], $2::timestamptz[]) AS t(id, at)
                   GROUP BY id) AS v
             WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)",
            &[&ids, &times],
        )
        .await
        .map_err(|e| DbError::from_pg("record key use", e))
}

fn not_found(id: &str) -> DbError {
    DbError::NotFound(format!("key {id:?}"))
}

/// Labels: at most 128 bytes, no control characters; empty is fine.
fn check_label(name: &str) -> Result<(), DbError> {
    if name.is_empty() {
        Ok(())
    } else {
        check_name("key name", name)
    }
}

fn entry<'a>(
    actor: &'a str,
    action: &'a str,
    key: &'a ApiKey,
    details: &'a Value,
) -> NewAuditEntry<'a> {
    NewAuditEntry {
        actor,
        action,
        target_type: "key",
        target_id: &key.id,
        details,
    }
}

/// What the audit log records about a key: never its hash.
fn details(k: &ApiKey) -> Value {
    json!({
        "consumer": k.consumer_id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": k.scopes,
        "status": status_str(k.status),
        "expires_at": k.expires_at.map(unix_seconds),
    })
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Reads a stored 32-byte hash.
pub(crate) fn key_hash(bytes: &[u8]) -> Result<KeyHash, DbError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| DbError::Schema(format!("key hash of {} bytes, not 32", bytes.len())))?;
    Ok(KeyHash(array))
}

fn from_row(row: &Row) -> Result<ApiKey, DbError> {
    Ok(ApiKey {
        id: col(row, "id")?,
        consumer_id: col(row, "consumer_id")?,
        name: col(row, "name")?,
        prefix: col(row, "prefix")?,
        hash: key_hash(col(row, "hash")?)?,
        scopes: col(row, "scopes")?,
        status: parse_status(col(row, "status")?),
        expires_at: col(row, "expires_at")?,
        created_at: col(row, "created_at")?,
        last_used_at: col(row, "last_used_at")?,
        rotated_from: col(row, "rotated_from")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_records_fall_back_to_consumer_scopes() {
        let consumer = Arc::new(store::Consumer {
            id: "alice".into(),
            plan: None,
            status: Status::Active,
            scopes: vec!["read".into()],
        });
        let mut key = ApiKey {
            id: "k1".into(),
            consumer_id: "alice".into(),
            name: String::new(),
            prefix: "tg_abcdefgh".into(),
            hash: KeyHash([1; 32]),
            scopes: None,
            status: Status::Active,
            expires_at: None,
            created_at: SystemTime::UNIX_EPOCH,
            last_used_at: None,
            rotated_from: None,
        };
        assert_eq!(key.to_record(consumer.clone()).scopes, vec!["read"]);
        key.scopes = Some(vec![]);
        assert!(key.to_record(consumer).scopes.is_empty());
    }

    #[test]
    fn stored_hashes_must_be_32_bytes() {
        assert_eq!(key_hash(&[7; 32]).unwrap(), KeyHash([7; 32]));
        assert!(matches!(key_hash(&[7; 31]), Err(DbError::Schema(_))));
    }
}
