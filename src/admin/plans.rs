//! `/admin/plans`: named sets of rate-limit windows that consumers are put on.

use super::auth::Actor;
use super::error::{check_name, AdminError, ErrorBody, Fields};
use super::{created, nullable, rfc3339, AdminState, Body, Path};
use crate::config::limits;
use crate::db::plans::{self, Algorithm, Limit, NewPlan, Plan, PlanLimits, PlanUpdate};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<super::AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create_plan, list_plans))
        .routes(routes!(get_plan, update_plan, delete_plan))
}

/// One window: at most `requests` per `per_seconds` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// Requests allowed per window (at least 1).
    #[schema(minimum = 1, maximum = 9007199254740992_u64)]
    pub requests: u64,
    /// The window's length in seconds, 1 to 31,622,400 (366 days, the limiter's longest
    /// period).
    #[schema(minimum = 1, maximum = 31622400)]
    pub per_seconds: u64,
    /// Token buckets: the bucket size (at least 1); default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 9007199254740992_u64)]
    pub burst: Option<u64>,
}

/// A plan to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCreate {
    /// Unique name: 1 to 64 letters, digits, '-', '_', '.' (the file's rule).
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", min_length = 1, max_length = 64)]
    pub name: String,
    /// Default `fixed_window`.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// The windows; none and no `concurrency` cap: an unlimited plan.
    pub limits: Vec<LimitBody>,
    /// Most requests in flight at once per consumer.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub concurrency: Option<u32>,
    /// Seconds a consumer that exceeds the plan is then refused for, on every instance
    /// sharing Redis (1 to 31,622,400: 366 days); absent: no block.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31622400)]
    pub block_for_seconds: Option<u64>,
}

/// A change to a plan; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    /// A new algorithm.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// New windows (replacing all); none and no `concurrency` cap: an unlimited plan.
    #[serde(default)]
    pub limits: Option<Vec<LimitBody>>,
    /// `null` removes the concurrency cap.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2147483647)]
    pub concurrency: Option<Option<u32>>,
    /// A new block duration in seconds (1 to 31,622,400); `null` removes the block.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 31622400)]
    pub block_for_seconds: Option<Option<u64>>,
}

/// A stored plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanOut {
    /// Name.
    pub name: String,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Windows.
    pub limits: Vec<LimitBody>,
    /// Concurrency cap; `null`: none.
    pub concurrency: Option<u32>,
    /// Block after abuse, in seconds; `null`: none.
    pub block_for_seconds: Option<u64>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<Plan> for PlanOut {
    fn from(p: Plan) -> Self {
        PlanOut {
            name: p.name,
            algorithm: p.algorithm,
            limits: p
                .limits
                .into_iter()
                .map(|l| LimitBody {
                    requests: l.requests,
                    per_seconds: l.per_seconds,
                    burst: l.burst,
                })
                .collect(),
            concurrency: p.concurrency,
            block_for_seconds: p.block_for_seconds,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

/// Checks a whole plan as the limiter will run it ([`plans::check_limits`]'s rules, every
/// problem named by its field), then the `concurrency` column's range.
fn check_plan(fields: &mut Fields, plan: PlanLimits<'_>) {
    for problem in limits::check_plan(&plans::limit_spec(plan)) {
        fields.push(plans::field_name(problem.field), problem.message);
    }
    if let Some(n) = plan.concurrency {
        fields.check(
            n <= i32::MAX as u32,
            "concurrency",
            format!("must be at most {}", i32::MAX),
        );
    }
}

fn to_limits(limits: &[LimitBody]) -> Vec<Limit> {
    limits
        .iter()
        .map(|l| Limit {
            requests: l.requests,
            per_seconds: l.per_seconds,
            burst: l.burst,
        })
        .collect()
}

/// Create a plan.
#[utoipa::path(post, path = "/admin/plans", tag = "plans", request_body = PlanCreate,
    responses(
        (status = 201, description = "Created", body = PlanOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 503, description = "No database", body = ErrorBody),
    ))]
pub async fn create_plan(
    State(state): State<AdminState>,
    actor: Actor,
    Body(body): Body<PlanCreate>,
) -> Result<Response, AdminError> {
    let mut fields = Fields::default();
    check_name(&mut fields, "name", &body.name);
    let algorithm = body.algorithm.unwrap_or_default();
    let limits = to_limits(&body.limits);
    check_plan(
        &mut fields,
        PlanLimits {
            algorithm,
            limits: &limits,
            concurrency: body.concurrency,
            block_for_seconds: body.block_for_seconds,
        },
    );
    fields.finish()?;
    let plan = plans::create(
        state.db()?,
        &actor.0,
        &NewPlan {
            name: body.name,
            algorithm,
            limits,
            concurrency: body.concurrency,
            block_for_seconds: body.block_for_seconds,
        },
    )
    .await?;
    Ok(created(PlanOut::from(plan)))
}

/// Every plan, by name.
#[utoipa::path(get, path = "/admin/plans", tag = "plans",
    responses(
        (status = 200, description = "The plans", body = Vec<PlanOut>),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
    ))]
pub async fn list_plans(State(state): State<AdminState>) -> Result<Json<Vec<PlanOut>>, AdminError> {
    let plans = plans::list(state.db()?).await?;
    Ok(Json(plans.into_iter().map(PlanOut::from).collect()))
}

/// One plan.
#[utoipa::path(get, path = "/admin/plans/{name}", tag = "plans",
    params(("name" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan", body = PlanOut),
        (status = 404, description = "No such plan", body = ErrorBody),
    ))]
pub async fn get_plan(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<PlanOut>, AdminError> {
    Ok(Json(plans::get(state.db()?, &name).await?.into()))
}

/// Change a plan.
#[utoipa::path(patch, path = "/admin/plans/{name}", tag = "plans", request_body = PlanPatch,
    params(("name" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The changed plan", body = PlanOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody),
    ))]
pub async fn update_plan(
    State(state): State<AdminState>,
    actor: Actor,
    Path(name): Path<String>,
    Body(body): Body<PlanPatch>,
) -> Result<Json<PlanOut>, AdminError> {
    // The plan as it will be, checked as a whole: a change of algorithm alone can make
    // the stored windows unusable (a burst on a fixed window). The database checks the
    // same again inside its transaction.
    let db = state.db()?;
    let current = plans::get(db, &name).await?;
    let limits = body.limits.as_deref().map(to_limits);
    let mut fields = Fields::default();
    check_plan(
        &mut fields,
        PlanLimits {
            algorithm: body.algorithm.unwrap_or(current.algorithm),
            limits: limits.as_deref().unwrap_or(&current.limits),
            concurrency: body.concurrency.unwrap_or(current.concurrency),
            block_for_seconds: body.block_for_seconds.unwrap_or(current.block_for_seconds),
        },
    );
    fields.finish()?;
    let plan = plans::update(
        db,
        &actor.0,
        &name,
        &PlanUpdate {
            algorithm: body.algorithm,
            limits,
            concurrency: body.concurrency,
            block_for_seconds: body.block_for_seconds,
        },
    )
    .await?;
    Ok(Json(plan.into()))
}

/// Delete a plan (409 while a consumer is on it).
#[utoipa::path(delete, path = "/admin/plans/{name}", tag = "plans",
    params(("name" = String, Path, description = "Plan name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 409, description = "Consumers are on it", body = ErrorBody),
    ))]
pub async fn delete_plan(
    State(state): State<AdminState>,
    actor: Actor,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    plans::delete(state.db()?, &actor.0, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
