//! The admin service: a JSON REST API for operators (plans, consumers, API keys, usage,
//! rate-limit state, config reload, audit log) on PostgreSQL, with an OpenAPI 3 document
//! generated from the code at `GET /openapi.json`.
//!
//! It is a Pingora background service ([`AdminService`]) that serves an axum router on
//! `admin.address` until the server shuts down. Every `/admin/*` endpoint needs
//! `Authorization: Bearer <token>` (see [`auth`]); every error has the gateway's JSON shape
//! (see [`error`]); every answer carries `X-Request-Id`.

pub mod account;
pub mod auth;
pub mod consumers;
pub mod csrf;
pub mod error;
pub mod host;
pub mod keys;
pub mod openapi;
pub mod ops;
pub mod plans;
pub mod throttle;
mod whole_numbers;

use crate::admin::account::password::Passwords;
use crate::auth::revocation::RevocationBus;
use crate::db::{self, Db, DbOptions};
use crate::limit::Limiter;
use crate::reload::LiveConfig;
use crate::request_id;
use async_trait::async_trait;
use auth::Actor;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use error::{AdminError, ErrorBody, REQUEST_ID};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use ring::rand::SystemRandom;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<StateInner>,
}

struct StateInner {
    db: Option<Db>,
    live: Arc<LiveConfig>,
    limiter: Arc<Limiter>,
    revocations: Arc<RevocationBus>,
    passwords: Passwords,
    rng: SystemRandom,
}

impl AdminState {
    /// State over `db` (`None`: the data endpoints answer 503 `no_database`), the live
    /// config (reload, pepper), the shared limiter and the token revocation bus.
    pub fn new(
        db: Option<Db>,
        live: Arc<LiveConfig>,
        limiter: Arc<Limiter>,
        revocations: Arc<RevocationBus>,
    ) -> Self {
        AdminState {
            inner: Arc::new(StateInner {
                db,
                live,
                limiter,
                revocations,
                passwords: Passwords::default(),
                rng: SystemRandom::new(),
            }),
        }
    }

    /// The database, or 503 `no_database`.
    pub(crate) fn db(&self) -> Result<&Db, AdminError> {
        self.inner.db.as_ref().ok_or(AdminError::NoDatabase)
    }

    pub(crate) fn live(&self) -> &Arc<LiveConfig> {
        &self.inner.live
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    pub(crate) fn rng(&self) -> &SystemRandom {
        &self.inner.rng
    }

    pub(crate) fn revocations(&self) -> &RevocationBus {
        &self.inner.revocations
    }

    pub(crate) fn passwords(&self) -> &Passwords {
        &self.inner.passwords
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate admin API",
        description = "Operator API of the tollgate gateway (plans, consumers, API keys, usage, limits, reload, audit; admin token) and the account API (register, log in, own keys and usage; access token)."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            components.add_security_scheme(
                "access_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

/// The `/admin/*` endpoints with their OpenAPI description (no auth layer yet).
pub fn admin_routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(plans::routes())
        .merge(consumers::routes())
        .merge(keys::routes())
        .merge(ops::routes())
}

/// The whole admin application and its OpenAPI document: the authenticated `/admin/*`
/// endpoints, `GET /openapi.json` and `GET /health` (both open), JSON 404/405 fallbacks,
/// and `X-Request-Id` on every answer. Every request must name an allowed host
/// ([`host`]) and, when it changes something, carry a token or a JSON body ([`csrf`]).
pub fn app(state: AdminState) -> (axum::Router, OpenApiDoc) {
    // The token check comes first, so that a request without one is 401 whatever its
    // content type; the CSRF rule then matters where no token is needed.
    let (admin, mut doc) = admin_routes()
        .route_layer(middleware::from_fn(csrf::require_token_or_json))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .merge(crate::admin::account::routes())
        .split_for_parts();
    doc.paths
        .paths
        .iter_mut()
        .filter(|(path, _)| path.starts_with("/admin/"))
        .for_each(|(_, item)| {
            for (_, op) in openapi::operations_mut(item) {
                op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                    "admin_token",
                    Vec::<String>::new(),
                )]);
            }
        });
    openapi::document_common_errors(&mut doc);
    openapi::document_plan_rules(&mut doc);
    let document = Arc::new(doc.clone());
    let router = admin
        .route(
            "/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move { axum::Json(document.as_ref().clone()) }
            }),
        )
        .route("/health", get(health))
        .fallback(|| async { AdminError::RouteNotFound })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            Arc::clone(state.live()),
            host::require_known_host,
        ))
        .layer(middleware::from_fn(with_request_id));
    (router, doc)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Takes the request id (the caller's, e.g. the gateway's when the account API is reached
/// through the proxy, if well formed; else a fresh one), makes it visible to error bodies
/// and adds the header.
async fn with_request_id(request: Request, next: Next) -> Response {
    let id = request_id::assign(request.headers());
    let text = id.to_str().unwrap_or_default().to_string();
    let mut response = REQUEST_ID.scope(text, next.run(request)).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

/// The admin service: serves [`app`] on the configured address until shutdown.
pub struct AdminService {
    address: SocketAddr,
    limits: crate::config::ListenerLimits,
    state: AdminState,
}

impl AdminService {
    /// The service for the current config of `live`; `None` when it has no `admin:`
    /// section. Fails for an unusable database URL, pool size or TLS setting.
    pub fn from_config(
        live: Arc<LiveConfig>,
        limiter: Arc<Limiter>,
        revocations: Arc<RevocationBus>,
    ) -> Result<Option<Self>, db::DbError> {
        let snapshot = live.current();
        let Some(admin) = snapshot.config.admin.clone() else {
            return Ok(None);
        };
        let db = match &snapshot.config.database {
            None => None,
            Some(settings) => Some(Db::lazy(settings.url(), &DbOptions::from(settings))?),
        };
        drop(snapshot);
        Ok(Some(AdminService {
            address: admin.address,
            limits: admin.limits.clone(),
            state: AdminState::new(db, live, limiter, revocations),
        }))
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.state.live().current().config.account.is_some() {
            drop(tokio::task::spawn_blocking(
                crate::admin::account::password::warm_up,
            ));
        }
        if let Ok(db) = self.state.db() {
            match db::migrate(db).await {
                Ok(_) => {}
                Err(e) => log::error!("admin: database migrations failed: {e}"),
            }
        }
        // Binding may fail while an old process (graceful upgrade) still holds the port:
        // retry until it is free or the server shuts down.
        let listener = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(l) => break l,
                Err(e) => {
                    log::error!("admin: cannot listen on {}: {e}; retrying", self.address);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => if *shutdown.borrow() { return },
                    }
                }
            }
        };
        log::info!("admin API listening on {}", self.address);
        let (router, _) = app(self.state.clone());
        // Bounded clients: header deadline, idle timeout, head size, connection cap.
        crate::connection::hyper_listener::serve(listener, router, self.limits.clone(), shutdown)
            .await;
    }
}

// ------------------------------------------------------------------------------------
// Extractors whose rejections have the admin error shape
// ------------------------------------------------------------------------------------

/// A JSON object body: another content type is 415, anything but one JSON object
/// (an array, `null`, a number, malformed JSON) is 400.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AdminError> {
        if !csrf::is_json(req.headers()) {
            return Err(AdminError::UnsupportedMediaType(
                "the body must be JSON with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state).await?;
        json_object(&bytes).map(Body)
    }
}

/// Parses a body that must be one JSON object (serde would read a struct from an array
/// too: `[null, null]` would fill its first two fields), whose whole numbers may be
/// written `5.0` or `5e0`, as JSON Schema's `integer` allows ([`whole_numbers`]).
pub(crate) fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AdminError::invalid("the body must be a JSON object"));
    }
    let malformed = |e: serde_json::Error| AdminError::invalid(format!("malformed JSON body: {e}"));
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(malformed)?;
    serde_json::from_slice(&whole_numbers::normalise(bytes)).map_err(malformed)
}

/// A query string.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// The caller, as the auth middleware recorded it.
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AdminError> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or(AdminError::Unauthorized)
    }
}

// ------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------

/// RFC 3339, UTC, whole seconds (any time, also before 1970).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time (any offset, as the OpenAPI `date-time` format allows) given
/// in `field`.
pub(crate) fn parse_time(
    fields: &mut error::Fields,
    field: &str,
    text: &str,
) -> Option<SystemTime> {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Some(SystemTime::from(t)),
        Err(_) => {
            fields.push(field, "must be an RFC 3339 time, e.g. 2030-01-31T12:00:00Z");
            None
        }
    }
}

/// For PATCH fields that may be set to `null`: absent → `None`, `null` → `Some(None)`.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `201 Created` with a JSON body.
pub(crate) fn created<T: serde::Serialize>(body: T) -> Response {
    (http::StatusCode::CREATED, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Two {
        a: Option<u64>,
        b: Option<u32>,
    }

    #[test]
    fn bodies_are_json_objects_with_whole_numbers() {
        for bad in [
            "[null,null]",
            "[1,2]",
            "null",
            "1",
            "\"x\"",
            "",
            "  ",
            "{\"c\": 1}",
        ] {
            assert!(json_object::<Two>(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            json_object::<Two>(br#" {"a": 5.0, "b": 7}"#).unwrap(),
            Two {
                a: Some(5),
                b: Some(7)
            }
        );
        assert!(json_object::<Two>(br#"{"a": 5.5}"#).is_err());
        assert!(json_object::<Two>(br#"{"a": -1.0}"#).is_err());
        // Decided from the text: its f64 (2^53) would look whole.
        assert!(json_object::<Two>(br#"{"a": 9007199254740992.5}"#).is_err());
        assert_eq!(
            json_object::<Two>(br#"{"a": 9.007199254740993e15}"#)
                .unwrap()
                .a,
            Some(9_007_199_254_740_993)
        );
    }

    /// The document states the limiter's real maxima (`MAX_PERIOD`, `MAX_LIMIT`) for every
    /// limited number of a plan, so a client reading it cannot send what the server refuses.
    #[test]
    fn the_document_states_the_limiters_maxima() {
        let (_, doc) = admin_routes().split_for_parts();
        let doc = serde_json::to_value(&doc).expect("a document");
        let schemas = &doc["components"]["schemas"];
        let period = crate::limit::MAX_PERIOD.as_secs();
        let count = crate::limit::MAX_LIMIT;
        let window = &schemas["LimitBody"]["properties"];
        assert_eq!(window["per_seconds"]["maximum"], period, "{window}");
        assert_eq!(window["requests"]["maximum"], count, "{window}");
        assert_eq!(window["burst"]["maximum"], count, "{window}");
        for plan in ["PlanCreate", "PlanPatch"] {
            let block = &schemas[plan]["properties"]["block_for_seconds"];
            assert_eq!(block["maximum"], period, "{plan}: {block}");
            assert_eq!(block["minimum"], 1, "{plan}: {block}");
        }
    }

    /// Every route of the router is in the document: the document is built from the same
    /// `OpenApiRouter`, so this checks the expected list against it.
    #[test]
    fn the_document_lists_every_admin_route() {
        let (_, doc) = admin_routes().split_for_parts();
        let mut listed: Vec<String> = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
                ("PUT", &item.put),
            ] {
                if op.is_some() {
                    listed.push(format!("{method} {path}"));
                }
            }
        }
        listed.sort();
        let mut expected = vec![
            "POST /admin/plans",
            "GET /admin/plans",
            "GET /admin/plans/{name}",
            "PATCH /admin/plans/{name}",
            "DELETE /admin/plans/{name}",
            "POST /admin/consumers",
            "GET /admin/consumers",
            "GET /admin/consumers/{id}",
            "PATCH /admin/consumers/{id}",
            "DELETE /admin/consumers/{id}",
            "POST /admin/consumers/{id}/keys",
            "GET /admin/consumers/{id}/keys",
            "GET /admin/keys/{key_id}",
            "PATCH /admin/keys/{key_id}",
            "POST /admin/keys/{key_id}/rotate",
            "POST /admin/keys/{key_id}/revoke",
            "GET /admin/usage",
            "GET /admin/consumers/{id}/limits",
            "POST /admin/consumers/{id}/limits/reset",
            "GET /admin/limits",
            "POST /admin/limits/reset",
            "POST /admin/reload",
            "GET /admin/audit",
        ];
        expected.sort();
        assert_eq!(listed, expected);
    }
}
