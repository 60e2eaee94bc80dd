//! [`PgCredentialStore`]: the proxy's key and consumer lookups, from PostgreSQL.
//!
//! It sits behind [`crate::auth::store::CachedStore`], so it is asked only on cache misses;
//! each lookup is one indexed query on a prepared statement kept per connection. It
//! writes nothing: `last_used_at` is updated in batches by [`super::keys::touch_last_used`].

use super::{col, parse_status, Db, DbError};
use crate::auth::api_key::KeyHash;
use crate::auth::store::{Consumer, CredentialStore, KeyRecord, StoreError};
use async_trait::async_trait;
use std::sync::Arc;
use tokio_postgres::Row;

/// Finds a key with its consumer (one row via the unique hash index).
const FIND_KEY: &str = "SELECT k.id, k.prefix, k.scopes AS key_scopes, k.status AS key_status,
        k.expires_at, c.id AS consumer_id, c.plan, c.status AS consumer_status,
        c.scopes AS consumer_scopes
 FROM api_keys k JOIN consumers c ON c.id = k.consumer_id
 WHERE k.hash = $1";

/// Finds a consumer by id.
const FIND_CONSUMER: &str = "SELECT id AS consumer_id, plan, status AS consumer_status,
        scopes AS consumer_scopes
 FROM consumers WHERE id = $1";

/// Keys and consumers from the database, for the proxy.
#[derive(Debug, Clone)]
pub struct PgCredentialStore {
    db: Db,
}

impl PgCredentialStore {
    /// A store reading through `db`.
    pub fn new(db: Db) -> Self {
        PgCredentialStore { db }
    }

    /// The key with this hash, as a [`DbError`] result.
    pub async fn key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, DbError> {
        let client = self.db.client().await?;
        let statement = client
            .prepare_cached(FIND_KEY)
            .await
            .map_err(|e| DbError::from_pg("prepare key lookup", e))?;
        let row = client
            .query_opt(&statement, &[&hash.0.as_slice()])
            .await
            .map_err(|e| DbError::from_pg("look up key", e))?;
        row.as_ref().map(key_record).transpose()
    }

    /// The consumer `id`, as a [`DbError`] result.
    pub async fn consumer(&self, id: &str) -> Result<Option<Consumer>, DbError> {
        let client = self.db.client().await?;
        let statement = client
            .prepare_cached(FIND_CONSUMER)
            .await
            .map_err(|e| DbError::from_pg("prepare consumer lookup", e))?;
        let row = client
            .query_opt(&statement, &[&id])
            .await
            .map_err(|e| DbError::from_pg("look up consumer", e))?;
        row.as_ref().map(consumer).transpose()
    }
}

#[async_trait]
impl CredentialStore for PgCredentialStore {
    async fn find_key(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self.key(hash).await {
            Ok(found) => Ok(found.map(Arc::new)),
            Err(e) => Err(StoreError(e.to_string())),
        }
    }

    async fn find_consumer(&self, id: &str) -> Result<Option<Arc<Consumer>>, StoreError> {
        match self.consumer(id).await {
            Ok(found) => Ok(found.map(Arc::new)),
            Err(e) => Err(StoreError(e.to_string())),
        }
    }
}

fn consumer(row: &Row) -> Result<Consumer, DbError> {
    Ok(Consumer {
        id: col(row, "consumer_id")?,
        plan: col(row, "plan")?,
        status: parse_status(col(row, "consumer_status")?),
        scopes: col(row, "consumer_scopes")?,
    })
}

fn key_record(row: &Row) -> Result<KeyRecord, DbError> {
    let consumer = Arc::new(consumer(row)?);
    // The key's own scopes if it has any, else its consumer's (as the YAML store does).
    let scopes: Option<Vec<String>> = col(row, "key_scopes")?;
    Ok(KeyRecord {
        key_id: col(row, "id")?,
        prefix: col(row, "prefix")?,
        scopes: scopes.unwrap_or_else(|| consumer.scopes.clone()),
        consumer,
        status: parse_status(col(row, "key_status")?),
        expires_at: col(row, "expires_at")?,
    })
}
