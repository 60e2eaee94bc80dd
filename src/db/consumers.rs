//! Consumers: the callers of the API (customers, apps, teams), each on a plan.

use super::audit::{self, NewAuditEntry};
use super::change::{self, Change};
use super::{
    begin, check_actor, check_name, col, commit, parse_status, status_str, Db, DbError, Page,
};
use crate::auth::store::{self, Status};
use serde_json::{json, Value};
use std::time::SystemTime;
use tokio_postgres::Row;

/// A stored consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// Its unique id, chosen by the operator (e.g. `alice`).
    pub id: String,
    /// Its plan; `None`: the default plan.
    pub plan: Option<String>,
    /// Whether its keys and tokens work.
    pub status: Status,
    /// Scopes its credentials carry (a key may narrow them).
    pub scopes: Vec<String>,
    /// Free-form JSON object for the operator (contact, tier, notes).
    pub metadata: Value,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

impl Consumer {
    /// What the proxy needs of it.
    pub fn to_auth(&self) -> store::Consumer {
        store::Consumer {
            id: self.id.clone(),
            plan: self.plan.clone(),
            status: self.status,
            scopes: self.scopes.clone(),
        }
    }
}

/// A consumer to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConsumer {
    /// Its unique id: 1 to 128 characters, no control characters.
    pub id: String,
    /// Its plan, which must exist.
    pub plan: Option<String>,
    /// Usually [`Status::Active`].
    pub status: Status,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// A JSON object (`{}` when there is nothing to say).
    pub metadata: Value,
}

impl NewConsumer {
    /// An active consumer with no plan, scopes or metadata.
    pub fn new(id: impl Into<String>) -> Self {
        NewConsumer {
            id: id.into(),
            plan: None,
            status: Status::Active,
            scopes: Vec::new(),
            metadata: json!({}),
        }
    }
}

/// A change to a consumer; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerUpdate {
    /// `Some(None)` moves it to the default plan.
    pub plan: Option<Option<String>>,
    /// A new status.
    pub status: Option<Status>,
    /// New scopes (replacing all of them).
    pub scopes: Option<Vec<String>>,
    /// New metadata (replacing all of it; a JSON object).
    pub metadata: Option<Value>,
}

/// Which consumers [`list`] returns, in order of id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerFilter {
    /// Only consumers on this plan.
    pub plan: Option<String>,
    /// Only consumers with this status.
    pub status: Option<Status>,
    /// Only ids after this one: the previous page's [`Page::next_after`].
    pub after: Option<String>,
    /// Page size (capped at 1000; 0 means 100).
    pub limit: u32,
}

/// The columns every query returns: a macro, so each statement is one `concat!`-ed
/// compile-time constant.
macro_rules! columns {
    () => {
        "id, plan, status, scopes, metadata, created_at, updated_at"
    };
}

/// Creates a consumer. [`DbError::Conflict`] if the id is taken, [`DbError::Invalid`] if
/// the plan does not exist.
pub async fn create(db: &Db, actor: &str, consumer: &NewConsumer) -> Result<Consumer, DbError> {
    let context = format!("create consumer {:?}", consumer.id);
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let created = create_in(&tx, actor, consumer).await?;
    commit(tx, &context).await?;
    Ok(created)
}

/// [`create`] inside the caller's transaction (audited, and notified on commit).
pub(crate) async fn create_in(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: &str,
    consumer: &NewConsumer,
) -> Result<Consumer, DbError> {
    check_actor(actor)?;
    check_name("consumer id", &consumer.id)?;
    check_scopes(&consumer.scopes)?;
    check_metadata(&consumer.metadata)?;
    let context = format!("create consumer {:?}", consumer.id);
    let row = tx
        .query_one(
            concat!(
                "INSERT INTO consumers (id, plan, status, scopes, metadata)
                 VALUES ($1, $2, $3, $4, $5) RETURNING ",
                columns!()
            ),
            &[
                &consumer.id,
                &consumer.plan,
                &status_str(consumer.status),
                &consumer.scopes,
                &consumer.metadata,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?;
    let created = from_row(&row)?;
    audit::append(
        tx,
        &NewAuditEntry {
            actor,
            action: "consumer.create",
            target_type: "consumer",
            target_id: &created.id,
            details: &details(&created),
        },
    )
    .await?;
    change::notify(
        tx,
        &Change::Consumer {
            id: created.id.clone(),
        },
    )
    .await?;
    Ok(created)
}

/// One page of consumers matching `filter`, in order of id (stable across pages: a
/// consumer created meanwhile appears on a later page or not at all, never twice).
pub async fn list(db: &Db, filter: &ConsumerFilter) -> Result<Page<Consumer>, DbError> {
    let limit = match filter.limit {
        0 => 100,
        n => n.min(1000),
    };
    let client = db.client().await?;
    let rows = client
        .query(
            concat!(
                "SELECT ",
                columns!(),
                " FROM consumers
                 WHERE ($1::text IS NULL OR plan = $1)
                   AND ($2::text IS NULL OR status = $2)
                   AND ($3::text IS NULL OR id > $3)
                 ORDER BY id
                 LIMIT $4"
            ),
            &[
                &filter.plan,
                &filter.status.map(status_str),
                &filter.after,
                // One more than asked: whether a next page exists.
                &(i64::from(limit) + 1),
            ],
        )
        .await
        .map_err(|e| DbError::from_pg("list consumers", e))?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_after = more.then(|| items.last().map(|c| c.id.clone())).flatten();
    Ok(Page { items, next_after })
}

/// The consumer `id`; [`DbError::NotFound`] if there is none.
pub async fn get(db: &Db, id: &str) -> Result<Consumer, DbError> {
    find(db, id).await?.ok_or_else(|| not_found(id))
}

/// The consumer `id`, if it exists.
pub async fn find(db: &Db, id: &str) -> Result<Option<Consumer>, DbError> {
    let client = db.client().await?;
    client
        .query_opt(
            concat!("SELECT ", columns!(), " FROM consumers WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("get consumer {id:?}"), e))?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Changes a consumer. [`DbError::NotFound`] if it does not exist, [`DbError::Invalid`]
/// if the new plan does not.
pub async fn update(
    db: &Db,
    actor: &str,
    id: &str,
    update: &ConsumerUpdate,
) -> Result<Consumer, DbError> {
    check_actor(actor)?;
    if let Some(scopes) = &update.scopes {
        check_scopes(scopes)?;
    }
    if let Some(metadata) = &update.metadata {
        check_metadata(metadata)?;
    }
    let context = format!("update consumer {id:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let row = tx
        .query_opt(
            concat!(
                "UPDATE consumers SET
                     plan = CASE WHEN $2::bool THEN $3::text ELSE plan END,
                     status = COALESCE($4::text, status),
                     scopes = COALESCE($5::text[], scopes),
                     metadata = COALESCE($6::jsonb, metadata),
                     updated_at = now()
                 WHERE id = $1
                 RETURNING ",
                columns!()
            ),
            &[
                &id,
                &update.plan.is_some(),
                &update.plan.clone().flatten(),
                &update.status.map(status_str),
                &update.scopes,
                &update.metadata,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?
        .ok_or_else(|| not_found(id))?;
    let updated = from_row(&row)?;
    audit::append(
        &tx,
        &NewAuditEntry {
            actor,
            action: "consumer.update",
            target_type: "consumer",
            target_id: id,
            details: &details(&updated),
        },
    )
    .await?;
    change::notify(&tx, &Change::Consumer { id: id.into() }).await?;
    commit(tx, &context).await?;
    Ok(updated)
}

/// Deletes a consumer and its API keys. [`DbError::Conflict`] while a user account is
/// linked to it.
pub async fn delete(db: &Db, actor: &str, id: &str) -> Result<(), DbError> {
    check_actor(actor)?;
    let context = format!("delete consumer {id:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let deleted = tx
        .execute("DELETE FROM consumers WHERE id = $1", &[&id])
        .await
        .map_err(|e| DbError::from_pg_delete(&context, e))?;
    if deleted == 0 {
        return Err(not_found(id));
    }
    audit::append(
        &tx,
        &NewAuditEntry {
            actor,
            action: "consumer.delete",
            target_type: "consumer",
            target_id: id,
            details: &json!({}),
        },
    )
    .await?;
    // Listeners evict the consumer and every cached key of it.
    change::notify(&tx, &Change::Consumer { id: id.into() }).await?;
    commit(tx, &context).await
}

fn not_found(id: &str) -> DbError {
    DbError::NotFound(format!("consumer {id:?}"))
}

/// Scopes are names: 1 to 128 characters, no control characters.
pub(crate) fn check_scopes(scopes: &[String]) -> Result<(), DbError> {
    scopes.iter().try_for_each(|s| check_name("scope", s))
}

fn check_metadata(metadata: &Value) -> Result<(), DbError> {
    if metadata.is_object() {
        Ok(())
    } else {
        Err(DbError::Invalid("metadata: must be a JSON object".into()))
    }
}

/// What the audit log records about a consumer.
fn details(c: &Consumer) -> Value {
    json!({
        "plan": c.plan,
        "status": status_str(c.status),
        "scopes": c.scopes,
        "metadata": c.metadata,
    })
}

fn from_row(row: &Row) -> Result<Consumer, DbError> {
    Ok(Consumer {
        id: col(row, "id")?,
        plan: col(row, "plan")?,
        status: parse_status(col(row, "status")?),
        scopes: col(row, "scopes")?,
        metadata: col(row, "metadata")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}
