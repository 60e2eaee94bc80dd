//! Operations: usage counters, a consumer's rate-limit windows, config reload, audit log.

use super::auth::Actor;
use super::error::{matches_nothing, AdminError, ErrorBody, Fields};
use super::{rfc3339, AdminState, Body, Path, Query};
use crate::db::audit::{self, AuditEntry, AuditFilter, NewAuditEntry};
use crate::db::plans;
use crate::db::usage::{self, UsageQuery, UsageRow};
use crate::db::{consumers, Day};
use crate::limit::{LimitError, Subject};
use crate::rate_limit::{plan_policy, window_reports, SubjectName, WindowReport};
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
        .routes(routes!(get_limits))
        .routes(routes!(reset_limits))
        .routes(routes!(get_subject_limits))
        .routes(routes!(reset_subject_limits))
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
    // An empty range has no rows, nor does a filter no stored text can match.
    let filters = [q.consumer.as_deref(), q.key.as_deref(), q.route.as_deref()];
    let rows = if from > to || matches_nothing(&filters) {
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

fn window_out(w: WindowReport) -> WindowOut {
    WindowOut {
        policy: w.policy,
        kind: w.kind.to_string(),
        limit: w.limit,
        used: w.used,
        remaining: w.remaining,
        reset: w.reset,
        window: w.window,
    }
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
    let subject = crate::rate_limit::consumer_subject(&consumer.id);
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
            .map(window_out)
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
/// consumers. (A `POST` action rather than a `DELETE`: the standing stays, fresh.)
#[utoipa::path(post, path = "/admin/consumers/{id}/limits/reset", tag = "limits",
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
    let subjects = crate::rate_limit::consumer_subjects(&runtime.config, &id);
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

/// Which limiter subject: `c:<consumer>`, `ip:<address>` (an IPv6 address stands for its
/// `rate_limit.ipv6_prefix` network, also written `ip:2001:db8::/64`), `r:<route>` (a
/// route's global limit) or `r:<route>:<caller>` (a caller on a route's per-caller limit,
/// the caller being `c:<consumer>` or `ip:<address>`).
/// A name that no subject can have names nothing: 404, like an id no consumer can have.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubjectParams {
    /// The subject, e.g. `ip:203.0.113.9`, `r:api`, `r:api:c:alice`.
    #[param(min_length = 3, max_length = 256, pattern = r"^(c|ip|r):[!-~]+$")]
    pub subject: String,
}

/// Which limiter subject to reset (the syntax of [`SubjectParams`]).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    /// The subject, e.g. `ip:203.0.113.9`, `r:api`, `r:api:c:alice`.
    #[schema(min_length = 3, max_length = 256, pattern = r"^(c|ip|r):[!-~]+$")]
    pub subject: String,
}

/// A subject's rate-limit standing under the policy the proxy applies to it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectLimitsOut {
    /// The limiter's key (an IPv6 address is written as its network).
    pub subject: String,
    /// The policy's name; `null`: nothing limits this subject (no windows).
    pub policy: Option<String>,
    /// Its windows, concurrency cap and block (`kind: block`, `remaining: 0` while it
    /// holds).
    pub windows: Vec<WindowOut>,
}

/// Parses `subject` and finds the policy the proxy applies to it under the running config:
/// 404 for a name no subject can have, an unknown route or an unknown consumer. `None`: nothing limits
/// it (a plan without limits, no anonymous limit, a route without that limit).
async fn subject_policy(
    state: &AdminState,
    subject: &str,
) -> Result<(SubjectName, Option<crate::limit::Policy>), AdminError> {
    let runtime = state.live().current();
    let name = SubjectName::parse(subject, runtime.limits.ipv6_prefix())
        .map_err(|e| AdminError::NotFound(format!("limiter subject {subject:?} ({e})")))?;
    let route_limits = match name.route() {
        None => None,
        Some(route) => {
            let spec = runtime
                .config
                .routes
                .iter()
                .find(|r| r.name == route)
                .ok_or_else(|| AdminError::NotFound(format!("route {route:?}")))?;
            let limits = runtime
                .limits
                .for_route(spec)
                .map_err(|e| AdminError::Internal(e.to_string()))?;
            Some(limits)
        }
    };
    let policy = match &name {
        SubjectName::Consumer(id) => {
            let plan = consumer_plan(state, &runtime.config, id).await?;
            runtime.limits.plan_policy(plan.as_deref()).cloned()
        }
        SubjectName::Anonymous(_) => runtime.limits.anonymous().cloned(),
        SubjectName::RouteCaller { .. } => {
            route_limits.as_ref().and_then(|r| r.per_caller()).cloned()
        }
        SubjectName::RouteGlobal(_) => route_limits.as_ref().and_then(|r| r.global()).cloned(),
    };
    Ok((name, policy))
}

/// The plan of consumer `id`: from the database when there is one, else from the file;
/// 404 when it is in neither.
async fn consumer_plan(
    state: &AdminState,
    config: &crate::config::Config,
    id: &str,
) -> Result<Option<String>, AdminError> {
    match state.db() {
        Ok(db) => Ok(consumers::get(db, id).await?.plan),
        Err(_) => config
            .consumers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.plan.clone())
            .ok_or_else(|| AdminError::NotFound(format!("consumer {id:?}"))),
    }
}

/// The current windows and block of any limiter subject (an anonymous caller, a route's
/// global limit, a caller on a route, a consumer), counting nothing. Needs no database.
#[utoipa::path(get, path = "/admin/limits", tag = "limits", params(SubjectParams),
    responses(
        (status = 200, description = "The windows", body = SubjectLimitsOut),
        (status = 404, description = "Not a subject the limiter uses, or no such route or consumer", body = ErrorBody),
        (status = 503, description = "The limiter (Redis) or the database cannot be reached", body = ErrorBody),
    ))]
pub async fn get_subject_limits(
    State(state): State<AdminState>,
    Query(q): Query<SubjectParams>,
) -> Result<Json<SubjectLimitsOut>, AdminError> {
    let (name, policy) = subject_policy(&state, &q.subject).await?;
    let key = name.to_string();
    let windows = match &policy {
        None => Vec::new(),
        Some(policy) => {
            let decision = state
                .limiter()
                .get()
                .await
                .peek(&[Subject::new(&key, policy)])
                .await
                .map_err(limit_error)?;
            window_reports(&decision)
                .into_iter()
                .map(window_out)
                .collect()
        }
    };
    Ok(Json(SubjectLimitsOut {
        subject: key,
        policy: policy.map(|p| p.name.to_string()),
        windows,
    }))
}

/// Reset every window, concurrency slot and block of any limiter subject, on every
/// instance sharing Redis. Needs no database (with one, the reset is audited).
#[utoipa::path(post, path = "/admin/limits/reset", tag = "limits", request_body = SubjectBody,
    responses(
        (status = 204, description = "Reset"),
        (status = 404, description = "Not a subject the limiter uses, or no such route or consumer", body = ErrorBody),
        (status = 503, description = "The limiter (Redis) or the database cannot be reached", body = ErrorBody),
    ))]
pub async fn reset_subject_limits(
    State(state): State<AdminState>,
    actor: Actor,
    Body(q): Body<SubjectBody>,
) -> Result<StatusCode, AdminError> {
    let (name, _) = subject_policy(&state, &q.subject).await?;
    let key = name.to_string();
    state
        .limiter()
        .get()
        .await
        .reset(&key)
        .await
        .map_err(limit_error)?;
    if let Ok(db) = state.db() {
        audit::record(
            db,
            &NewAuditEntry {
                actor: &actor.0,
                action: "limits.reset",
                target_type: "subject",
                target_id: &key,
                details: &json!({"subject": key}),
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
    let filters = [
        q.target_type.as_deref(),
        q.target_id.as_deref(),
        q.actor.as_deref(),
    ];
    if matches_nothing(&filters) {
        return Ok(Json(Vec::new()));
    }
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
