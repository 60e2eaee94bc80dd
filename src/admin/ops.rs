//! Operations: usage counters, a consumer's rate-limit windows, config reload, audit log.

use super::auth::Actor;
use super::error::{AdminError, ErrorBody, Fields};
use super::{rfc3339, AdminState, Path, Query};
use crate::db::audit::{self, AuditEntry, AuditFilter, NewAuditEntry};
use crate::db::plans;
use crate::db::usage::{self, UsageQuery, UsageRow};
use crate::db::{consumers, Day};
use crate::limit::{LimitError, Subject};
use crate::proxy::rate_limit::{plan_policy, window_reports};
use crate::reload::ReloadError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(get_usage))
        .routes(routes!(get_limits, reset_limits))
        .routes(routes!(reload))
        .routes(routes!(list_audit))
}

// ------------------------------------------------------------------------------------
// Usage
// ------------------------------------------------------------------------------------

/// Which usage rows to return. Days are `YYYY-MM-DD` (UTC), inclusive.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only this consumer.
    pub consumer: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only this route.
    pub route: Option<String>,
    /// First day (default: 30 days before `to`).
    #[param(format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// Last day (default: today). Before `from`: no rows.
    #[param(format = Date, pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
}

/// One counter row: requests of a consumer (and key) on a route on a day.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRowOut {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Consumer.
    pub consumer_id: String,
    /// Key; `null`: requests without one.
    pub key_id: Option<String>,
    /// Route.
    pub route: String,
    /// Requests let through.
    pub allowed: u64,
    /// Requests refused by a limit.
    pub limited: u64,
}

/// Usage over a range of days.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageOut {
    /// First day.
    pub from: String,
    /// Last day.
    pub to: String,
    /// The rows, by day, consumer, key and route.
    pub rows: Vec<UsageRowOut>,
}

impl From<UsageRow> for UsageRowOut {
    fn from(r: UsageRow) -> Self {
        UsageRowOut {
            day: r.day.to_string(),
            consumer_id: r.consumer_id,
            key_id: r.key_id,
            route: r.route,
            allowed: r.allowed,
            limited: r.limited,
        }
    }
}

fn parse_day(fields: &mut Fields, field: &str, text: Option<&str>) -> Option<Day> {
    let text = text?;
    match text.parse::<Day>() {
        Ok(d) => Some(d),
        Err(_) => {
            fields.push(field, "must be a day, YYYY-MM-DD");
            None
        }
    }
}

/// Usage counters per day, consumer, key and route.
#[utoipa::path(get, path = "/admin/usage", tag = "usage", params(UsageParams),
    responses(
        (status = 200, description = "The counters", body = UsageOut),
        (status = 400, description = "Invalid query", body = ErrorBody),
    ))]
pub async fn get_usage(
    State(state): State<AdminState>,
    Query(q): Query<UsageParams>,
) -> Result<Json<UsageOut>, AdminError> {
    Ok(Json(usage_for(&state, q).await?))
}

/// Validates `q` and reads the matching counters (shared with the account API, which
/// fixes the consumer to the caller's own).
pub(crate) async fn usage_for(state: &AdminState, q: UsageParams) -> Result<UsageOut, AdminError> {
    let mut fields = Fields::default();
    let from = parse_day(&mut fields, "from", q.from.as_deref());
    let to = parse_day(&mut fields, "to", q.to.as_deref());
    fields.finish()?;
    let to = to.unwrap_or_else(Day::today);
    let from = from.unwrap_or_else(|| to.add_days(-30));
    // An empty range has no rows.
    let rows = if from > to {
        Vec::new()
    } else {
        usage::query(
            state.db()?,
            &UsageQuery {
                from,
                to,
                consumer_id: q.consumer,
                key_id: q.key,
                route: q.route,
            },
        )
        .await?
    };
    Ok(UsageOut {
        from: from.to_string(),
        to: to.to_string(),
        rows: rows.into_iter().map(Into::into).collect(),
    })
}

// ------------------------------------------------------------------------------------
// Limits
// ------------------------------------------------------------------------------------

/// One window (or the concurrency cap) of a consumer's plan, as it stands now.
#[derive(Debug, Serialize, ToSchema)]
pub struct WindowOut {
    /// The plan's name.
    pub policy: String,
    /// `rate`, `concurrency` or `block`.
    pub kind: String,
    /// The limit.
    pub limit: u64,
    /// Used so far.
    pub used: u64,
    /// Left.
    pub remaining: u64,
    /// Seconds until the window is back to full.
    pub reset: u64,
    /// The window's length in seconds.
    pub window: u64,
}

/// A consumer's rate-limit standing under its plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsOut {
    /// The consumer.
    pub consumer: String,
    /// Its plan; `null`: none (no windows).
    pub plan: Option<String>,
    /// The limiter's subject key, `c:<consumer>`.
    pub subject: String,
    /// The windows.
    pub windows: Vec<WindowOut>,
}

/// The admin error for a limiter failure (503 when Redis cannot be reached).
pub(crate) fn limit_error(e: LimitError) -> AdminError {
    match e {
        LimitError::Unavailable => AdminError::LimiterUnavailable,
        other => AdminError::Internal(format!("rate limiter: {other}")),
    }
}

/// The current window state of a consumer (subject `c:<id>`) under its plan.
#[utoipa::path(get, path = "/admin/consumers/{id}/limits", tag = "limits",
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 200, description = "The windows", body = LimitsOut),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 503, description = "No database, or the limiter cannot be reached", body = ErrorBody),
    ))]
pub async fn get_limits(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<LimitsOut>, AdminError> {
    let consumer = consumers::get(state.db()?, &id).await?;
    Ok(Json(consumer_standing(&state, consumer).await?))
}

/// A consumer's windows under its (database) plan, as they stand now; counts nothing
/// (shared with the account API's usage).
pub(crate) async fn consumer_standing(
    state: &AdminState,
    consumer: consumers::Consumer,
) -> Result<LimitsOut, AdminError> {
    let db = state.db()?;
    let subject = crate::proxy::rate_limit::consumer_subject(&consumer.id);
    let mut windows = Vec::new();
    if let Some(plan_name) = &consumer.plan {
        let plan = plans::get(db, plan_name).await?;
        let policy = plan_policy(&plan.name, &crate::persistence::limit_spec(&plan))
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        let decision = state
            .limiter()
            .get()
            .await
            .peek(&[Subject::new(&subject, &policy)])
            .await
            .map_err(limit_error)?;
        windows = window_reports(&decision)
            .into_iter()
            .map(|w| WindowOut {
                policy: w.policy,
                kind: w.kind.to_string(),
                limit: w.limit,
                used: w.used,
                remaining: w.remaining,
                reset: w.reset,
                window: w.window,
            })
            .collect();
    }
    Ok(LimitsOut {
        consumer: consumer.id,
        plan: consumer.plan,
        subject,
        windows,
    })
}

/// Reset every window and block of a consumer: its plan's (subject `c:<id>`) and its
/// own on every route with a per-caller limit; without a database, for the file's
/// consumers.
#[utoipa::path(delete, path = "/admin/consumers/{id}/limits", tag = "limits",
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 204, description = "Reset"),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 503, description = "No database, or the limiter cannot be reached", body = ErrorBody),
    ))]
pub async fn reset_limits(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    // Consumers live in the database when there is one, else in the file.
    let runtime = state.live().current();
    let db = state.db().ok();
    match db {
        Some(db) => drop(consumers::get(db, &id).await?),
        None if runtime.config.consumers.iter().any(|c| c.id == id) => {}
        None => return Err(AdminError::NotFound(format!("consumer {id:?}"))),
    }
    let subjects = crate::proxy::rate_limit::consumer_subjects(&runtime.config, &id);
    let limiter = state.limiter().get().await;
    for subject in &subjects {
        limiter.reset(subject).await.map_err(limit_error)?;
    }
    if let Some(db) = db {
        audit::record(
            db,
            &NewAuditEntry {
                actor: &actor.0,
                action: "limits.reset",
                target_type: "consumer",
                target_id: &id,
                details: &json!({"subject": subjects.first(), "subjects": subjects}),
            },
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------------
// Reload
// ------------------------------------------------------------------------------------

/// What a reload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadOut {
    /// The new config generation.
    pub generation: u64,
    /// Settings that changed but only apply after a restart or graceful upgrade.
    pub restart_needed: Vec<String>,
}

/// Re-read, validate and apply the configuration file.
#[utoipa::path(post, path = "/admin/reload", tag = "config",
    responses(
        (status = 200, description = "Applied", body = ReloadOut),
        (status = 422, description = "Refused; `problems` lists what is wrong", body = ErrorBody),
    ))]
pub async fn reload(
    State(state): State<AdminState>,
    actor: Actor,
) -> Result<Json<ReloadOut>, AdminError> {
    let live = state.live().clone();
    let outcome = tokio::task::spawn_blocking(move || live.reload())
        .await
        .map_err(|e| AdminError::Internal(format!("reload task: {e}")))?;
    let (details, result) = match outcome {
        Ok(report) => (
            json!({"result": "success", "generation": report.generation}),
            Ok(ReloadOut {
                generation: report.generation,
                restart_needed: report
                    .restart_needed
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            }),
        ),
        Err(e) => {
            let problems = match &e {
                ReloadError::Config(c) => c.problems(),
                ReloadError::Build(b) => vec![b.to_string()],
            };
            (
                json!({"result": "failure", "problems": problems}),
                Err(AdminError::InvalidConfig(problems)),
            )
        }
    };
    // The audit row is best effort here: the reload has happened either way.
    if let Ok(db) = state.db() {
        let path = state.live().path().display().to_string();
        if let Err(e) = audit::record(
            db,
            &NewAuditEntry {
                actor: &actor.0,
                action: "config.reload",
                target_type: "config",
                target_id: &path,
                details: &details,
            },
        )
        .await
        {
            log::warn!("admin: cannot audit a config reload: {e}");
        }
    }
    result.map(Json)
}

// ------------------------------------------------------------------------------------
// Audit
// ------------------------------------------------------------------------------------

/// Which audit entries to return, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this kind of target: `plan`, `consumer`, `key`, `config`, ...
    pub target_type: Option<String>,
    /// Only this target.
    pub target_id: Option<String>,
    /// Only changes by this actor.
    pub actor: Option<String>,
    /// Only entries older than this id (the previous page's last id).
    pub before: Option<i64>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One recorded change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditOut {
    /// Increasing with commit order.
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    /// Who: `token:<8 hex>` or `loopback`.
    pub actor: String,
    /// What, e.g. `consumer.create`.
    pub action: String,
    /// The kind of thing changed.
    pub target_type: String,
    /// Which one.
    pub target_id: String,
    /// Particulars (never secrets or hashes).
    #[schema(value_type = Object)]
    pub details: Value,
}

impl From<AuditEntry> for AuditOut {
    fn from(e: AuditEntry) -> Self {
        AuditOut {
            id: e.id,
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            target_type: e.target_type,
            target_id: e.target_id,
            details: e.details,
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "audit", params(AuditParams),
    responses(
        (status = 200, description = "Entries", body = Vec<AuditOut>),
        (status = 400, description = "Invalid query", body = ErrorBody),
    ))]
pub async fn list_audit(
    State(state): State<AdminState>,
    Query(q): Query<AuditParams>,
) -> Result<Json<Vec<AuditOut>>, AdminError> {
    let mut fields = Fields::default();
    if let Some(limit) = q.limit {
        fields.check(
            (1..=1000).contains(&limit),
            "limit",
            "must be between 1 and 1000",
        );
    }
    fields.finish()?;
    let entries = audit::list(
        state.db()?,
        &AuditFilter {
            target_type: q.target_type,
            target_id: q.target_id,
            actor: q.actor,
            before_id: q.before,
            limit: q.limit.unwrap_or(100),
        },
    )
    .await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}
