//! The audit log: who changed what, appended in the same transaction as the change, so a
//! change without its audit row (or the reverse) cannot be committed.

use super::{check_actor, col, Db, DbError};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use std::time::SystemTime;
use tokio_postgres::Row;

/// One recorded change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Increasing with time of commit order (a `bigserial`).
    pub id: i64,
    /// When the change was made (the transaction's start).
    pub at: SystemTime,
    /// Who made it (an admin user, an API token's name, `system`).
    pub actor: String,
    /// What was done, e.g. `consumer.create`, `key.rotate`.
    pub action: String,
    /// The kind of thing changed: `plan`, `consumer`, `key`, `user`, `token_family`.
    pub target_type: String,
    /// Which one.
    pub target_id: String,
    /// Particulars (never secrets or hashes).
    pub details: Value,
}

/// An entry to append.
#[derive(Debug, Clone, Copy)]
pub struct NewAuditEntry<'a> {
    /// Who.
    pub actor: &'a str,
    /// What, e.g. `consumer.update`.
    pub action: &'a str,
    /// The kind of thing changed.
    pub target_type: &'a str,
    /// Which one.
    pub target_id: &'a str,
    /// Particulars.
    pub details: &'a Value,
}

/// Which entries [`list`] returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this kind of target.
    pub target_type: Option<String>,
    /// Only this target (with `target_type`).
    pub target_id: Option<String>,
    /// Only changes by this actor.
    pub actor: Option<String>,
    /// Only entries older than this id (the previous page's last id).
    pub before_id: Option<i64>,
    /// At most this many (capped at 1000; 0 means 100).
    pub limit: u32,
}

/// Appends `entry` through `client`: pass the transaction that makes the change.
pub async fn append(client: &impl GenericClient, entry: &NewAuditEntry<'_>) -> Result<(), DbError> {
    check_actor(entry.actor)?;
    client
        .execute(
            "INSERT INTO audit_log (actor, action, target_type, target_id, details)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &entry.actor,
                &entry.action,
                &entry.target_type,
                &entry.target_id,
                entry.details,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("audit {}", entry.action), e))?;
    Ok(())
}

/// Appends one entry on its own, for actions that change nothing in this database (e.g.
/// a config reload).
pub async fn record(db: &Db, entry: &NewAuditEntry<'_>) -> Result<(), DbError> {
    let client = db.client().await?;
    append(&client, entry).await
}

/// Entries matching `filter`, newest first.
pub async fn list(db: &Db, filter: &AuditFilter) -> Result<Vec<AuditEntry>, DbError> {
    let limit = i64::from(match filter.limit {
        0 => 100,
        n => n.min(1000),
    });
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT id, at, actor, action, target_type, target_id, details
             FROM audit_log
             WHERE ($1::text IS NULL OR target_type = $1)
               AND ($2::text IS NULL OR target_id = $2)
               AND ($3::text IS NULL OR actor = $3)
               AND ($4::int8 IS NULL OR id < $4)
             ORDER BY id DESC
             LIMIT $5",
            &[
                &filter.target_type,
                &filter.target_id,
                &filter.actor,
                &filter.before_id,
                &limit,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg("list audit entries", e))?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &Row) -> Result<AuditEntry, DbError> {
    Ok(AuditEntry {
        id: col(row, "id")?,
        at: col(row, "at")?,
        actor: col(row, "actor")?,
        action: col(row, "action")?,
        target_type: col(row, "target_type")?,
        target_id: col(row, "target_id")?,
        details: col(row, "details")?,
    })
}
