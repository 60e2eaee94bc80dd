//! `/admin/consumers`: who calls the API, on which plan, with which scopes.

use super::auth::Actor;
use super::error::{check_id, check_name, check_scopes, AdminError, ErrorBody, Fields};
use super::{created, nullable, rfc3339, AdminState, Body, Path, Query};
use crate::db::consumers::{self, Consumer, ConsumerFilter, ConsumerUpdate, NewConsumer};
use crate::db::{plans, Db, DbError};
use crate::vocab::Status;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create_consumer, list_consumers))
        .routes(routes!(get_consumer, update_consumer, delete_consumer))
}

/// A consumer to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerCreate {
    /// Unique id: 1 to 128 visible ASCII characters, no quotes, commas, backslashes or
    /// spaces (the file's rule).
    #[schema(pattern = r"^[!#-&(-+\--\[\]-~]+$", min_length = 1, max_length = 128)]
    pub id: String,
    /// Its plan (must exist).
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", min_length = 1, max_length = 64)]
    pub plan: Option<String>,
    /// Default `active`.
    #[serde(default)]
    pub status: Option<Status>,
    /// Scopes granted to its keys.
    #[serde(default)]
    #[schema(value_type = Vec<super::openapi::Scope>)]
    pub scopes: Vec<String>,
    /// A JSON object; default `{}`. No key or string may contain U+0000.
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::Metadata>)]
    pub metadata: Option<Value>,
}

/// A change to a consumer; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPatch {
    /// A new plan; `null` takes it off its plan.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9._-]+$", min_length = 1, max_length = 64)]
    pub plan: Option<Option<String>>,
    /// A new status.
    #[serde(default)]
    pub status: Option<Status>,
    /// New scopes (replacing all).
    #[serde(default)]
    #[schema(value_type = Option<Vec<super::openapi::Scope>>)]
    pub scopes: Option<Vec<String>>,
    /// New metadata (a JSON object; no key or string may contain U+0000).
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::Metadata>)]
    pub metadata: Option<Value>,
}

/// A stored consumer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerOut {
    /// Id.
    pub id: String,
    /// Plan.
    pub plan: Option<String>,
    /// Status.
    pub status: Status,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Metadata.
    #[schema(value_type = super::openapi::Metadata)]
    pub metadata: Value,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<Consumer> for ConsumerOut {
    fn from(c: Consumer) -> Self {
        ConsumerOut {
            id: c.id,
            plan: c.plan,
            status: c.status,
            scopes: c.scopes,
            metadata: c.metadata,
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
        }
    }
}

/// One page of consumers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerPage {
    /// This page, in order of id.
    pub items: Vec<ConsumerOut>,
    /// Pass as `after` for the next page; `null`: this is the last.
    pub next_after: Option<String>,
}

/// Filters and paging of the consumer list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsumerListQuery {
    /// Only consumers on this plan.
    pub plan: Option<String>,
    /// Only consumers with this status.
    pub status: Option<Status>,
    /// Only ids after this one (the previous page's `next_after`; read up to a U+0000,
    /// which no id holds).
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

fn check_metadata(fields: &mut Fields, metadata: Option<&Value>) {
    if let Some(m) = metadata {
        fields.check(m.is_object(), "metadata", "must be a JSON object");
        if let Some(path) = nul_in(m, "metadata".into()) {
            fields.push(path, "must not contain U+0000 (PostgreSQL cannot store it)");
        }
    }
}

/// The path (`metadata.a[2]`) of the first key or string inside `value` that contains
/// U+0000, if any.
fn nul_in(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = format!("{path}.{}", k.escape_default());
            if k.contains('\0') {
                Some(here)
            } else {
                nul_in(v, here)
            }
        }),
        _ => None,
    }
}

/// 409 when the plan does not exist (yet): the input is well formed, the stored state
/// lacks what it names.
async fn check_plan(db: &Db, plan: Option<&str>) -> Result<(), AdminError> {
    let Some(plan) = plan else { return Ok(()) };
    match plans::get(db, plan).await {
        Ok(_) => Ok(()),
        Err(DbError::NotFound(_)) => Err(AdminError::Conflict(format!(
            "plan: no plan named {plan:?} (create it first)"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Create a consumer.
#[utoipa::path(post, path = "/admin/consumers", tag = "consumers", request_body = ConsumerCreate,
    responses(
        (status = 201, description = "Created", body = ConsumerOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 409, description = "The id is taken, or the plan named does not exist", body = ErrorBody),
    ))]
pub async fn create_consumer(
    State(state): State<AdminState>,
    actor: Actor,
    Body(body): Body<ConsumerCreate>,
) -> Result<Response, AdminError> {
    let mut fields = Fields::default();
    check_id(&mut fields, "id", &body.id);
    if let Some(plan) = &body.plan {
        check_name(&mut fields, "plan", plan);
    }
    check_scopes(&mut fields, "scopes", &body.scopes);
    check_metadata(&mut fields, body.metadata.as_ref());
    fields.finish()?;
    let db = state.db()?;
    check_plan(db, body.plan.as_deref()).await?;
    let consumer = consumers::create(
        db,
        &actor.0,
        &NewConsumer {
            id: body.id,
            plan: body.plan,
            status: body.status.unwrap_or(Status::Active),
            scopes: body.scopes,
            metadata: body.metadata.unwrap_or_else(|| serde_json::json!({})),
        },
    )
    .await?;
    Ok(created(ConsumerOut::from(consumer)))
}

/// List consumers, in order of id, a page at a time.
#[utoipa::path(get, path = "/admin/consumers", tag = "consumers", params(ConsumerListQuery),
    responses(
        (status = 200, description = "One page", body = ConsumerPage),
        (status = 400, description = "Invalid query", body = ErrorBody),
    ))]
pub async fn list_consumers(
    State(state): State<AdminState>,
    Query(q): Query<ConsumerListQuery>,
) -> Result<Json<ConsumerPage>, AdminError> {
    let mut fields = Fields::default();
    if let Some(limit) = q.limit {
        fields.check(
            (1..=1000).contains(&limit),
            "limit",
            "must be between 1 and 1000",
        );
    }
    fields.finish()?;
    if super::error::matches_nothing(&[q.plan.as_deref()]) {
        return Ok(Json(ConsumerPage {
            items: Vec::new(),
            next_after: None,
        }));
    }
    let page = consumers::list(
        state.db()?,
        &ConsumerFilter {
            plan: q.plan,
            status: q.status,
            // No id holds U+0000, so ids after `a\0…` are the ids after `a`.
            after: q.after.map(|mut after| {
                after.truncate(after.find('\0').unwrap_or(after.len()));
                after
            }),
            limit: q.limit.unwrap_or(100),
        },
    )
    .await?;
    Ok(Json(ConsumerPage {
        items: page.items.into_iter().map(ConsumerOut::from).collect(),
        next_after: page.next_after,
    }))
}

/// One consumer.
#[utoipa::path(get, path = "/admin/consumers/{id}", tag = "consumers",
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 200, description = "The consumer", body = ConsumerOut),
        (status = 404, description = "No such consumer", body = ErrorBody),
    ))]
pub async fn get_consumer(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<ConsumerOut>, AdminError> {
    Ok(Json(consumers::get(state.db()?, &id).await?.into()))
}

/// Change a consumer.
#[utoipa::path(patch, path = "/admin/consumers/{id}", tag = "consumers", request_body = ConsumerPatch,
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 200, description = "The changed consumer", body = ConsumerOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 409, description = "The plan named does not exist", body = ErrorBody),
    ))]
pub async fn update_consumer(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<String>,
    Body(body): Body<ConsumerPatch>,
) -> Result<Json<ConsumerOut>, AdminError> {
    let mut fields = Fields::default();
    if let Some(Some(plan)) = &body.plan {
        check_name(&mut fields, "plan", plan);
    }
    if let Some(scopes) = &body.scopes {
        check_scopes(&mut fields, "scopes", scopes);
    }
    check_metadata(&mut fields, body.metadata.as_ref());
    fields.finish()?;
    let db = state.db()?;
    check_plan(db, body.plan.as_ref().and_then(|p| p.as_deref())).await?;
    let consumer = consumers::update(
        db,
        &actor.0,
        &id,
        &ConsumerUpdate {
            plan: body.plan,
            status: body.status,
            scopes: body.scopes,
            metadata: body.metadata,
        },
    )
    .await?;
    Ok(Json(consumer.into()))
}

/// Delete a consumer and its keys.
#[utoipa::path(delete, path = "/admin/consumers/{id}", tag = "consumers",
    params(("id" = String, Path, description = "Consumer id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 409, description = "A user account is linked to it", body = ErrorBody),
    ))]
pub async fn delete_consumer(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    consumers::delete(state.db()?, &actor.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
