//! Every answer of the admin API that is not a success has the gateway's error shape
//! (`{"error", "message", "request_id"}`, see `crate::api_error`), plus `fields` for
//! invalid input and `problems` for a refused config reload.

use crate::config::validate::{
    valid_identifier, valid_name, valid_scope, IDENTIFIER_RULE, NAME_RULE, SCOPE_RULE,
};
use crate::db::DbError;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being handled (set by the request-id middleware).
    pub(crate) static REQUEST_ID: String;
}

/// The request id of the current request, or empty outside of one.
pub(crate) fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Why the admin API refused or failed a request.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminError {
    /// 400 `invalid_request`: the input is not acceptable; `fields` names each bad field
    /// (`limits[0].requests`) with what is wrong with it.
    Invalid {
        /// Summary.
        message: String,
        /// Field path → problem; may be empty.
        fields: BTreeMap<String, String>,
    },
    /// 401 `unauthorized`: no or an unknown admin token.
    Unauthorized,
    /// 401 for the account API; `code` says why (`invalid_credentials`,
    /// `missing_token`, `invalid_token`, `expired_token`, `revoked_token`,
    /// `invalid_refresh_token`, `refresh_token_reused`).
    Unauthenticated {
        /// Machine-readable reason.
        code: &'static str,
        /// What went wrong, for a human.
        message: String,
    },
    /// 403 `forbidden`: the caller may not do this (a read-only admin token).
    Forbidden(String),
    /// 403 `consumer_disabled`: the account (consumer) was disabled by an operator; the
    /// proxy answers the same.
    ConsumerDisabled,
    /// 404 `not_found`: the thing named in the path does not exist.
    NotFound(String),
    /// 404 `route_not_found`: no such endpoint.
    RouteNotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 409 `conflict`: a duplicate, or a row still in use.
    Conflict(String),
    /// 429 `rate_limited`: too many attempts; retry after `retry_after` seconds.
    TooManyRequests {
        /// What was limited.
        message: String,
        /// Seconds until an attempt can succeed (`Retry-After`).
        retry_after: u64,
    },
    /// 413 `payload_too_large`: the body is over the 2 MB limit.
    PayloadTooLarge,
    /// 421 `misdirected_request`: the `Host` is neither a loopback literal nor one of
    /// `admin.allowed_hosts` (DNS rebinding).
    MisdirectedRequest,
    /// 503 `overloaded`: every password-hashing slot and queue place is taken; retry after
    /// `retry_after` seconds.
    Overloaded {
        /// Seconds (`Retry-After`).
        retry_after: u64,
    },
    /// 415 `unsupported_media_type`: the body is not `application/json`.
    UnsupportedMediaType(String),
    /// 422 `invalid_config`: a reload was refused; the running config stays.
    InvalidConfig(Vec<String>),
    /// 503 `no_database`: the endpoint needs PostgreSQL and none is configured.
    NoDatabase,
    /// 503 `no_pepper`: keys cannot be hashed without the configured pepper.
    NoPepper,
    /// 503 `database_unavailable`.
    DatabaseUnavailable(String),
    /// 503 `rate_limit_unavailable`: the limiter (Redis) cannot be reached.
    LimiterUnavailable,
    /// 503 `revocation_unavailable`: a logout could not be shared through Redis.
    RevocationUnavailable,
    /// 500 `internal_error` (details are logged, not returned).
    Internal(String),
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_request`, `not_found`.
    pub error: String,
    /// What went wrong, for a human.
    pub message: String,
    /// The request's `X-Request-Id`.
    pub request_id: String,
    /// For `invalid_request`: each bad field and its problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
    /// For `invalid_config`: every problem of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

impl AdminError {
    /// A 400 about the whole request (no field).
    pub fn invalid(message: impl Into<String>) -> Self {
        AdminError::Invalid {
            message: message.into(),
            fields: BTreeMap::new(),
        }
    }

    /// A 400 about one field.
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let (field, problem) = (field.into(), problem.into());
        AdminError::Invalid {
            message: format!("{field}: {problem}"),
            fields: BTreeMap::from([(field, problem)]),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized | AdminError::Unauthenticated { .. } => {
                StatusCode::UNAUTHORIZED
            }
            AdminError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Forbidden(_) | AdminError::ConsumerDisabled => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) | AdminError::RouteNotFound => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AdminError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            AdminError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::NoDatabase
            | AdminError::NoPepper
            | AdminError::DatabaseUnavailable(_)
            | AdminError::LimiterUnavailable
            | AdminError::Overloaded { .. }
            | AdminError::RevocationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Invalid { .. } => "invalid_request",
            AdminError::Unauthorized => "unauthorized",
            AdminError::Unauthenticated { code, .. } => code,
            AdminError::TooManyRequests { .. } => "rate_limited",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::ConsumerDisabled => "consumer_disabled",
            AdminError::NotFound(_) => "not_found",
            AdminError::RouteNotFound => "route_not_found",
            AdminError::MethodNotAllowed => "method_not_allowed",
            AdminError::Conflict(_) => "conflict",
            AdminError::UnsupportedMediaType(_) => "unsupported_media_type",
            AdminError::MisdirectedRequest => "misdirected_request",
            AdminError::PayloadTooLarge => "payload_too_large",
            AdminError::Overloaded { .. } => "overloaded",
            AdminError::InvalidConfig(_) => "invalid_config",
            AdminError::NoDatabase => "no_database",
            AdminError::NoPepper => "no_pepper",
            AdminError::DatabaseUnavailable(_) => "database_unavailable",
            AdminError::LimiterUnavailable => "rate_limit_unavailable",
            AdminError::RevocationUnavailable => "revocation_unavailable",
            AdminError::Internal(_) => "internal_error",
        }
    }

    /// The `message`; never secrets, never internal details.
    pub fn message(&self) -> String {
        match self {
            AdminError::Invalid { message, .. } => message.clone(),
            AdminError::Unauthorized => {
                "this endpoint needs `Authorization: Bearer <admin token>`".into()
            }
            AdminError::Unauthenticated { message, .. }
            | AdminError::TooManyRequests { message, .. } => message.clone(),
            AdminError::ConsumerDisabled => "this account is disabled".into(),
            AdminError::Forbidden(m)
            | AdminError::NotFound(m)
            | AdminError::Conflict(m)
            | AdminError::UnsupportedMediaType(m) => m.clone(),
            AdminError::RouteNotFound => "no such admin endpoint".into(),
            AdminError::PayloadTooLarge => "the body is larger than 2 MB".into(),
            AdminError::MisdirectedRequest => {
                "this listener does not serve that host (admin.allowed_hosts)".into()
            }
            AdminError::Overloaded { .. } => {
                "too many password checks are in progress; retry later".into()
            }
            AdminError::MethodNotAllowed => "this endpoint does not accept this method".into(),
            AdminError::InvalidConfig(_) => {
                "the configuration file was refused; the running config stays".into()
            }
            AdminError::NoDatabase => "no database is configured (set `database:`)".into(),
            AdminError::NoPepper => {
                "no API-key pepper is configured (auth.api_key.pepper_env)".into()
            }
            AdminError::DatabaseUnavailable(_) => "the database cannot be reached".into(),
            AdminError::LimiterUnavailable => "the rate limiter cannot be reached".into(),
            AdminError::RevocationUnavailable => {
                "the logout could not be shared with the other gateway instances; the token \
                 still works: retry"
                    .into()
            }
            AdminError::Internal(_) => "the admin service failed to handle the request".into(),
        }
    }

    /// The JSON body, for the current request.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().to_string(),
            message: self.message(),
            request_id: current_request_id(),
            fields: match self {
                AdminError::Invalid { fields, .. } if !fields.is_empty() => Some(fields.clone()),
                _ => None,
            },
            problems: match self {
                AdminError::InvalidConfig(p) => Some(p.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match &self {
            AdminError::Internal(detail) | AdminError::DatabaseUnavailable(detail) => {
                log::error!("admin request {}: {detail}", current_request_id());
            }
            _ => {}
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            AdminError::Unauthorized => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static(r#"Bearer realm="tollgate-admin""#),
                );
            }
            AdminError::Unauthenticated { code, .. } => {
                let value = format!(r#"Bearer realm="tollgate-account", error="{code}""#);
                if let Ok(value) = http::HeaderValue::try_from(value) {
                    headers.insert(http::header::WWW_AUTHENTICATE, value);
                }
            }
            AdminError::TooManyRequests { retry_after, .. }
            | AdminError::Overloaded { retry_after } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(*retry_after),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<DbError> for AdminError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(what) => AdminError::NotFound(format!("{what} not found")),
            DbError::Conflict(m) => AdminError::Conflict(m),
            DbError::Invalid(m) => AdminError::invalid(m),
            DbError::Unavailable(m) => AdminError::DatabaseUnavailable(m),
            other => AdminError::Internal(other.to_string()),
        }
    }
}

impl From<BytesRejection> for AdminError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AdminError::PayloadTooLarge
        } else {
            AdminError::invalid(format!("cannot read the body: {}", r.body_text()))
        }
    }
}

impl From<QueryRejection> for AdminError {
    fn from(r: QueryRejection) -> Self {
        AdminError::invalid(format!("malformed query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for AdminError {
    fn from(r: PathRejection) -> Self {
        AdminError::invalid(format!("malformed path: {}", r.body_text()))
    }
}

/// Collects field problems; [`finish`](Self::finish) fails if there are any.
#[derive(Debug, Default)]
pub struct Fields(BTreeMap<String, String>);

impl Fields {
    /// Records `problem` for `field` unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, problem: impl Into<String>) {
        if !ok {
            self.0.entry(field.into()).or_insert_with(|| problem.into());
        }
    }

    /// Records `problem` for `field`.
    pub fn push(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.check(false, field, problem);
    }

    /// `Ok` when nothing was recorded, else a 400 naming every field.
    pub fn finish(self) -> Result<(), AdminError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let message = self
            .0
            .iter()
            .map(|(f, p)| format!("{f}: {p}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(AdminError::Invalid {
            message,
            fields: self.0,
        })
    }
}

/// Checks every scope of the list in `field` by the file's rule (`scopes[2]: ...`).
pub fn check_scopes(fields: &mut Fields, field: &str, scopes: &[String]) {
    for (i, s) in scopes.iter().enumerate() {
        fields.check(valid_scope(s), format!("{field}[{i}]"), SCOPE_RULE);
    }
}

/// Whether any of these filter values holds U+0000: no stored text can (PostgreSQL refuses
/// it), so a filter holding it matches nothing and the query need not run.
pub fn matches_nothing(filters: &[Option<&str>]) -> bool {
    filters.iter().flatten().any(|f| f.contains('\0'))
}

/// Checks a plan name by the file's rule.
pub fn check_name(fields: &mut Fields, field: &str, value: &str) {
    fields.check(valid_name(value), field, NAME_RULE);
}

/// Checks a consumer or key id by the file's rule (ids travel in identity headers).
pub fn check_id(fields: &mut Fields, field: &str, value: &str) {
    fields.check(valid_identifier(value), field, IDENTIFIER_RULE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_errors_map_to_statuses() {
        let cases = [
            (DbError::NotFound("plan \"x\"".into()), 404),
            (DbError::Conflict("dup".into()), 409),
            (DbError::Invalid("bad".into()), 400),
            (DbError::Unavailable("down".into()), 503),
            (DbError::Schema("odd".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(AdminError::from(e).status().as_u16(), status);
        }
    }

    #[test]
    fn fields_collect_every_problem() {
        let mut f = Fields::default();
        f.check(true, "a", "fine");
        f.push("limits[0].requests", "must be at least 1");
        f.push("name", "must be 1 to 128 bytes long");
        let AdminError::Invalid { fields, message } = f.finish().unwrap_err() else {
            panic!()
        };
        assert_eq!(fields.len(), 2);
        assert!(message.contains("limits[0].requests: must be at least 1"));
    }
}
