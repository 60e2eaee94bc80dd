//! Usage counters per UTC day, consumer, key and route. The gateway adds up requests in
//! memory and [`record`]s a batch now and then: one statement per batch, never one per
//! request.

use super::{begin, col, commit, to_i64, to_u64, Day, Db, DbError};
use tokio_postgres::Row;

/// Counts to add to one counter row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The UTC day the requests happened on.
    pub day: Day,
    /// The consumer.
    pub consumer_id: String,
    /// The key used; `None` for requests without one (JWTs).
    pub key_id: Option<String>,
    /// The route's name.
    pub route: String,
    /// Requests let through.
    pub allowed: u64,
    /// Requests refused by a limit.
    pub limited: u64,
}

/// One counter row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The UTC day.
    pub day: Day,
    /// The consumer.
    pub consumer_id: String,
    /// The key; `None`: requests without one.
    pub key_id: Option<String>,
    /// The route.
    pub route: String,
    /// Requests let through.
    pub allowed: u64,
    /// Requests refused by a limit.
    pub limited: u64,
}

/// Which rows [`query`] returns. Days are inclusive on both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// First day.
    pub from: Day,
    /// Last day.
    pub to: Day,
    /// Only this consumer.
    pub consumer_id: Option<String>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only this route.
    pub route: Option<String>,
}

impl UsageQuery {
    /// Every row from `from` to `to`.
    pub fn days(from: Day, to: Day) -> Self {
        UsageQuery {
            from,
            to,
            consumer_id: None,
            key_id: None,
            route: None,
        }
    }
}

/// Applies batch `batch_id` exactly once: in one transaction, records the id and adds
/// every delta to its counter row, creating missing rows. If the id is already recorded
/// (an earlier attempt committed but its answer was lost), nothing is added and `Ok(0)`
/// returns. The deltas travel as arrays that `unnest` turns back into rows; deltas for the
/// same row are summed first (one `INSERT ... ON CONFLICT` cannot touch a row twice).
/// Returns how many counter rows were written.
pub async fn record(db: &Db, batch_id: &str, deltas: &[UsageDelta]) -> Result<u64, DbError> {
    if deltas.is_empty() {
        return Ok(0);
    }
    let days: Vec<Day> = deltas.iter().map(|d| d.day).collect();
    let consumers: Vec<&str> = deltas.iter().map(|d| d.consumer_id.as_str()).collect();
    let keys: Vec<&str> = deltas
        .iter()
        .map(|d| d.key_id.as_deref().unwrap_or(""))
        .collect();
    let routes: Vec<&str> = deltas.iter().map(|d| d.route.as_str()).collect();
    let allowed: Vec<i64> = deltas.iter().map(|d| to_i64(d.allowed)).collect();
    let limited: Vec<i64> = deltas.iter().map(|d| to_i64(d.limited)).collect();
    let context = format!("record usage batch {batch_id} ({} rows)", deltas.len());
    let q = |e| DbError::from_pg(&context, e);
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let fresh = tx
        .execute(
            "INSERT INTO usage_batches (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&batch_id],
        )
        .await
        .map_err(q)?;
    if fresh == 0 {
        commit(tx, &context).await?;
        return Ok(0);
    }
    let written = tx
        .execute(
            "INSERT INTO usage AS u (day, consumer_id, key_id, route, allowed, limited)
             SELECT day, consumer_id, key_id, route, sum(allowed), sum(limited)
             FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
                  AS t(day, consumer_id, key_id, route, allowed, limited)
             GROUP BY day, consumer_id, key_id, route
             ON CONFLICT (day, consumer_id, key_id, route) DO UPDATE
             SET allowed = u.allowed + excluded.allowed,
                 limited = u.limited + excluded.limited",
            &[&days, &consumers, &keys, &routes, &allowed, &limited],
        )
        .await
        .map_err(q)?;
    // A retry comes within seconds or minutes; a day of ids is plenty.
    tx.execute(
        "DELETE FROM usage_batches WHERE applied_at < now() - interval '1 day'",
        &[],
    )
    .await
    .map_err(q)?;
    commit(tx, &context).await?;
    Ok(written)
}

/// Counter rows matching `query`, by day, consumer, key and route.
pub async fn query(db: &Db, query: &UsageQuery) -> Result<Vec<UsageRow>, DbError> {
    if query.from > query.to {
        return Err(DbError::Invalid(format!(
            "day range: {} is after {}",
            query.from, query.to
        )));
    }
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT day, consumer_id, key_id, route, allowed, limited
             FROM usage
             WHERE day BETWEEN $1 AND $2
               AND ($3::text IS NULL OR consumer_id = $3)
               AND ($4::text IS NULL OR key_id = $4)
               AND ($5::text IS NULL OR route = $5)
             ORDER BY day, consumer_id, key_id, route",
            &[
                &query.from,
                &query.to,
                &query.consumer_id,
                &query.key_id,
                &query.route,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg("query usage", e))?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &Row) -> Result<UsageRow, DbError> {
    let key_id: String = col(row, "key_id")?;
    Ok(UsageRow {
        day: col(row, "day")?,
        consumer_id: col(row, "consumer_id")?,
        key_id: (!key_id.is_empty()).then_some(key_id),
        route: col(row, "route")?,
        allowed: to_u64(col(row, "allowed")?),
        limited: to_u64(col(row, "limited")?),
    })
}
