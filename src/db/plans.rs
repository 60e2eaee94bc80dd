//! Plans: named sets of rate limits that consumers subscribe to.

use super::audit::{self, NewAuditEntry};
use super::change::{self, Change};
use super::{begin, check_actor, check_name, col, commit, Db, DbError};
use crate::config::limits;
use crate::config::{LimitSpec, WindowSpec};
pub use crate::limit::Algorithm;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};
use tokio_postgres::Row;

/// One window of a plan: at most `requests` per `per_seconds` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests allowed per window (at least 1).
    pub requests: u64,
    /// The window's length in seconds (at least 1).
    pub per_seconds: u64,
    /// For token buckets: the bucket size (at least 1); `None`: `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// A stored plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Its unique name, e.g. `gold`.
    pub name: String,
    /// How its windows are counted.
    pub algorithm: Algorithm,
    /// Its windows; all must allow a request.
    pub limits: Vec<Limit>,
    /// Most requests in flight at once per consumer; `None`: unlimited.
    pub concurrency: Option<u32>,
    /// Seconds a consumer that exceeds the plan is then refused for; `None`: no block.
    pub block_for_seconds: Option<u64>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// A plan to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPlan {
    /// Its unique name: 1 to 128 characters, no control characters.
    pub name: String,
    /// How its windows are counted.
    pub algorithm: Algorithm,
    /// Its windows.
    pub limits: Vec<Limit>,
    /// Most requests in flight at once per consumer.
    pub concurrency: Option<u32>,
    /// Seconds a consumer that exceeds the plan is then refused for.
    pub block_for_seconds: Option<u64>,
}

/// A change to a plan; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanUpdate {
    /// A new algorithm.
    pub algorithm: Option<Algorithm>,
    /// New windows (replacing all of them).
    pub limits: Option<Vec<Limit>>,
    /// `Some(None)` removes the concurrency limit.
    pub concurrency: Option<Option<u32>>,
    /// `Some(None)` removes the block.
    pub block_for_seconds: Option<Option<u64>>,
}

/// The columns every query returns: a macro, so each statement is one `concat!`-ed
/// compile-time constant.
macro_rules! columns {
    () => {
        "name, algorithm, limits, concurrency, block_for_seconds, created_at, updated_at"
    };
}

/// The parts of a plan that limit: what [`limit_spec`] and [`check_limits`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits<'a> {
    /// How its windows are counted.
    pub algorithm: Algorithm,
    /// Its windows.
    pub limits: &'a [Limit],
    /// Most requests in flight at once per consumer.
    pub concurrency: Option<u32>,
    /// Seconds a consumer that exceeds the plan is then refused for.
    pub block_for_seconds: Option<u64>,
}

impl Plan {
    /// The parts of this plan that limit.
    pub fn limiting(&self) -> PlanLimits<'_> {
        PlanLimits {
            algorithm: self.algorithm,
            limits: &self.limits,
            concurrency: self.concurrency,
            block_for_seconds: self.block_for_seconds,
        }
    }
}

/// The limits of a plan in config form (no windows and no cap: it limits nothing).
pub fn limit_spec(plan: PlanLimits<'_>) -> LimitSpec {
    let PlanLimits {
        algorithm,
        limits,
        concurrency,
        block_for_seconds,
    } = plan;
    LimitSpec {
        algorithm,
        windows: limits
            .iter()
            .map(|l| WindowSpec {
                requests: l.requests,
                per: Duration::from_secs(l.per_seconds),
                burst: l.burst,
            })
            .collect(),
        concurrency: concurrency.map(u64::from),
        block_for: block_for_seconds.map(Duration::from_secs),
    }
}

/// The admin API's name of a field of a plan (`limits[0].per_seconds`,
/// `block_for_seconds`).
pub fn field_name(field: limits::LimitField) -> String {
    match field {
        limits::LimitField::BlockFor => "block_for_seconds".into(),
        other => other.path("per_seconds"),
    }
}

/// Refuses a plan the limiter would refuse (the rules of [`limits::check_plan`]: no
/// limits at all is an unlimited plan), naming the first field at fault as the admin API
/// names it (`limits[0].per_seconds`).
pub fn check_limits(plan: PlanLimits<'_>) -> Result<(), DbError> {
    match limits::check_plan(&limit_spec(plan)).into_iter().next() {
        Some(problem) => Err(DbError::Invalid(format!(
            "{}: {}",
            field_name(problem.field),
            problem.message
        ))),
        None => Ok(()),
    }
}

/// Creates a plan; [`DbError::Conflict`] if the name is taken, [`DbError::Invalid`] for
/// limits the limiter would refuse.
pub async fn create(db: &Db, actor: &str, plan: &NewPlan) -> Result<Plan, DbError> {
    check_actor(actor)?;
    check_name("plan name", &plan.name)?;
    check_limits(PlanLimits {
        algorithm: plan.algorithm,
        limits: &plan.limits,
        concurrency: plan.concurrency,
        block_for_seconds: plan.block_for_seconds,
    })?;
    let limits = limits_json(&plan.limits)?;
    let concurrency = concurrency_sql(plan.concurrency)?;
    let block_for = block_for_sql(plan.block_for_seconds)?;
    let context = format!("create plan {:?}", plan.name);
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let row = tx
        .query_one(
            concat!(
                "INSERT INTO plans (name, algorithm, limits, concurrency, block_for_seconds)
                 VALUES ($1, $2, $3, $4, $5) RETURNING ",
                columns!()
            ),
            &[
                &plan.name,
                &plan.algorithm.as_str(),
                &limits,
                &concurrency,
                &block_for,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?;
    let created = from_row(&row)?;
    audit::append(
        &tx,
        &NewAuditEntry {
            actor,
            action: "plan.create",
            target_type: "plan",
            target_id: &created.name,
            details: &details(&created),
        },
    )
    .await?;
    change::notify(
        &tx,
        &Change::Plan {
            name: created.name.clone(),
        },
    )
    .await?;
    commit(tx, &context).await?;
    Ok(created)
}

/// Every plan, by name.
pub async fn list(db: &Db) -> Result<Vec<Plan>, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            concat!("SELECT ", columns!(), " FROM plans ORDER BY name"),
            &[],
        )
        .await
        .map_err(|e| DbError::from_pg("list plans", e))?;
    rows.iter().map(from_row).collect()
}

/// The plan named `name`; [`DbError::NotFound`] if there is none.
pub async fn get(db: &Db, name: &str) -> Result<Plan, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            concat!("SELECT ", columns!(), " FROM plans WHERE name = $1"),
            &[&name],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("get plan {name:?}"), e))?
        .ok_or_else(|| not_found(name))?;
    from_row(&row)
}

/// Changes a plan; consumers on it see the change through their next lookup. The changed
/// plan is checked as a whole ([`check_limits`]) before it is committed.
pub async fn update(
    db: &Db,
    actor: &str,
    name: &str,
    update: &PlanUpdate,
) -> Result<Plan, DbError> {
    check_actor(actor)?;
    let limits = update.limits.as_deref().map(limits_json).transpose()?;
    let concurrency = update.concurrency.map(concurrency_sql).transpose()?;
    let block_for = update.block_for_seconds.map(block_for_sql).transpose()?;
    let context = format!("update plan {name:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let row = tx
        .query_opt(
            concat!(
                "UPDATE plans SET
                     algorithm = COALESCE($2::text, algorithm),
                     limits = COALESCE($3::jsonb, limits),
                     concurrency = CASE WHEN $4::bool THEN $5::int4 ELSE concurrency END,
                     block_for_seconds =
                         CASE WHEN $6::bool THEN $7::int4 ELSE block_for_seconds END,
                     updated_at = now()
                 WHERE name = $1
                 RETURNING ",
                columns!()
            ),
            &[
                &name,
                &update.algorithm.map(Algorithm::as_str),
                &limits,
                &concurrency.is_some(),
                &concurrency.flatten(),
                &block_for.is_some(),
                &block_for.flatten(),
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?
        .ok_or_else(|| not_found(name))?;
    let updated = from_row(&row)?;
    // Dropping the transaction on error rolls the change back.
    check_limits(updated.limiting())?;
    audit::append(
        &tx,
        &NewAuditEntry {
            actor,
            action: "plan.update",
            target_type: "plan",
            target_id: name,
            details: &details(&updated),
        },
    )
    .await?;
    change::notify(&tx, &Change::Plan { name: name.into() }).await?;
    commit(tx, &context).await?;
    Ok(updated)
}

/// Deletes a plan; [`DbError::Conflict`] while any consumer is on it.
pub async fn delete(db: &Db, actor: &str, name: &str) -> Result<(), DbError> {
    check_actor(actor)?;
    let context = format!("delete plan {name:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let deleted = tx
        .execute("DELETE FROM plans WHERE name = $1", &[&name])
        .await
        .map_err(|e| DbError::from_pg_delete(&context, e))?;
    if deleted == 0 {
        return Err(not_found(name));
    }
    audit::append(
        &tx,
        &NewAuditEntry {
            actor,
            action: "plan.delete",
            target_type: "plan",
            target_id: name,
            details: &json!({}),
        },
    )
    .await?;
    change::notify(&tx, &Change::Plan { name: name.into() }).await?;
    commit(tx, &context).await
}

fn not_found(name: &str) -> DbError {
    DbError::NotFound(format!("plan {name:?}"))
}

/// Renders the windows for the `limits` column (checked by [`check_limits`]: every
/// value is at most 2^53, which `jsonb` keeps exactly).
fn limits_json(limits: &[Limit]) -> Result<Value, DbError> {
    serde_json::to_value(limits).map_err(|e| DbError::Invalid(format!("limits: {e}")))
}

/// The `concurrency` column's value: positive and within `integer`.
fn concurrency_sql(concurrency: Option<u32>) -> Result<Option<i32>, DbError> {
    concurrency
        .map(|n| match i32::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(DbError::Invalid(format!(
                "concurrency {n}: must be between 1 and {}",
                i32::MAX
            ))),
        })
        .transpose()
}

/// The `block_for_seconds` column's value (checked by [`check_limits`]: at most 366
/// days, far within `integer`).
fn block_for_sql(block_for_seconds: Option<u64>) -> Result<Option<i32>, DbError> {
    block_for_seconds
        .map(|n| {
            i32::try_from(n).map_err(|_| {
                DbError::Invalid(format!(
                    "block_for_seconds {n}: must be at most {}",
                    i32::MAX
                ))
            })
        })
        .transpose()
}

/// What the audit log records about a plan.
fn details(plan: &Plan) -> Value {
    json!({
        "algorithm": plan.algorithm.as_str(),
        "limits": plan.limits,
        "concurrency": plan.concurrency,
        "block_for_seconds": plan.block_for_seconds,
    })
}

fn from_row(row: &Row) -> Result<Plan, DbError> {
    let name: String = col(row, "name")?;
    let algorithm: String = col(row, "algorithm")?;
    let limits: Value = col(row, "limits")?;
    let concurrency: Option<i32> = col(row, "concurrency")?;
    let block_for: Option<i32> = col(row, "block_for_seconds")?;
    let schema = |what: String| DbError::Schema(format!("plan {name:?}: {what}"));
    Ok(Plan {
        algorithm: algorithm
            .parse()
            .map_err(|e: crate::limit::policy::UnknownAlgorithm| schema(e.to_string()))?,
        limits: serde_json::from_value(limits).map_err(|e| schema(format!("limits: {e}")))?,
        concurrency: concurrency.and_then(|n| u32::try_from(n).ok()),
        block_for_seconds: block_for.and_then(|n| u64::try_from(n).ok()),
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_round_trip() {
        for a in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            assert_eq!(a.as_str().parse::<Algorithm>().unwrap(), a);
        }
        assert!("leaky".parse::<Algorithm>().is_err());
    }

    fn bucket(limits: &[Limit]) -> PlanLimits<'_> {
        PlanLimits {
            algorithm: Algorithm::TokenBucket,
            limits,
            concurrency: None,
            block_for_seconds: None,
        }
    }

    #[test]
    fn a_block_is_checked_by_the_file_rules_and_named_as_the_api_names_it() {
        let window = [Limit {
            requests: 10,
            per_seconds: 60,
            burst: None,
        }];
        for (block, ok) in [(Some(600), true), (None, true), (Some(0), false)] {
            let plan = PlanLimits {
                block_for_seconds: block,
                ..bucket(&window)
            };
            assert_eq!(check_limits(plan).is_ok(), ok, "{block:?}");
        }
        let long = PlanLimits {
            block_for_seconds: Some(400 * 86400),
            ..bucket(&window)
        };
        let err = check_limits(long).unwrap_err().to_string();
        assert!(err.contains("block_for_seconds: must be"), "{err}");
        let spec = limit_spec(PlanLimits {
            block_for_seconds: Some(600),
            ..bucket(&window)
        });
        assert_eq!(spec.block_for, Some(Duration::from_secs(600)));
        assert_eq!(block_for_sql(Some(600)).unwrap(), Some(600));
        assert!(block_for_sql(Some(u64::MAX)).is_err());
    }

    #[test]
    fn limits_are_checked_and_rendered() {
        let ok = [Limit {
            requests: 10,
            per_seconds: 1,
            burst: None,
        }];
        assert_eq!(
            limits_json(&ok).unwrap(),
            json!([{"requests": 10, "per_seconds": 1, "burst": null}])
        );
        for bad in [
            Limit {
                requests: 0,
                per_seconds: 1,
                burst: None,
            },
            Limit {
                requests: 1,
                per_seconds: 0,
                burst: None,
            },
            Limit {
                requests: 1,
                per_seconds: 1,
                burst: Some(0),
            },
            Limit {
                requests: u64::MAX,
                per_seconds: 1,
                burst: None,
            },
        ] {
            assert!(matches!(
                check_limits(bucket(&[bad])),
                Err(DbError::Invalid(_))
            ));
        }
        // What the limiter would refuse: a burst refilled over more than a year.
        let slow = Limit {
            requests: 1,
            per_seconds: 86400,
            burst: Some(1000),
        };
        let err = check_limits(bucket(&[slow])).unwrap_err();
        assert!(err.to_string().contains("limits[0].burst"), "{err}");
        let read: Vec<Limit> =
            serde_json::from_value(json!([{"requests": 5, "per_seconds": 60}])).unwrap();
        assert_eq!(read[0].burst, None);
    }

    #[test]
    fn concurrency_must_fit_an_integer() {
        assert_eq!(concurrency_sql(None).unwrap(), None);
        assert_eq!(concurrency_sql(Some(3)).unwrap(), Some(3));
        assert!(concurrency_sql(Some(0)).is_err());
        assert!(concurrency_sql(Some(u32::MAX)).is_err());
    }
}
