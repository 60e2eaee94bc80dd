//! The proxy service: a Pingora `ProxyHttp` whose phases each delegate to one module.
//!
//! `request_filter` runs, in order: request id, request-target and host check with the
//! canonical path ([`target`]), health endpoint, route match, the route pipeline's request
//! hooks (`crate::pipeline`: IP rules, size limits, redirects, CORS preflights), identify,
//! verify, limit. Then `upstream_peer` picks a healthy target by weighted round-robin,
//! `upstream_request_filter` rewrites what the upstream sees (then the pipeline's
//! upstream-request hooks), `request_body_filter` runs the body hooks, `response_filter`
//! shapes what the client sees (then the response hooks), and `logging` records metrics and
//! the access log. Every answer the gateway makes itself goes through [`respond::respond`].

pub mod health_endpoint;
pub mod hygiene;
pub mod respond;
pub mod target;

use crate::access_log::{AccessLog, AccessRecord};
use crate::api_error::ApiError;
use crate::auth::{AuthError, Identity};
use crate::config::{AuthMode, RouteAuth};
use crate::features::compression;
use crate::features::cors;
use crate::forward;
use crate::limit::{self, Decision, Limiter};
use crate::metrics::{self, LimitOutcome};
use crate::pipeline::{Answer, Facts};
use crate::rate_limit::{self, RequestSubjects};
use crate::reload::LiveConfig;
use crate::request_id;
use crate::router::{self, RouteMatch};
use crate::runtime::{Route, Runtime};
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use respond::{respond, Reply};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    live: Arc<LiveConfig>,
    access_log: AccessLog,
    limiter: Arc<Limiter>,
}

impl Gateway {
    /// A gateway serving from `live`, logging accesses to `access_log`, limiting with
    /// `limiter`.
    pub fn new(live: Arc<LiveConfig>, access_log: AccessLog, limiter: Arc<Limiter>) -> Self {
        Gateway {
            live,
            access_log,
            limiter,
        }
    }
}

/// Counts a request in `tollgate_requests_in_flight` and in the shutdown drain
/// ([`crate::drain`]) for as long as it lives, however it ends (a panic in a phase included).
struct InFlight {
    /// The drain's gate was open when the request started (else it is refused).
    admitted: bool,
}

impl InFlight {
    fn start() -> Self {
        metrics::IN_FLIGHT.inc();
        InFlight {
            admitted: crate::drain::started(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::IN_FLIGHT.dec();
        crate::drain::finished();
    }
}

/// Per-request state shared by the phases.
pub struct RequestCtx {
    in_flight: InFlight,
    started: Instant,
    /// The config snapshot this request runs on, from start to end.
    runtime: Arc<Runtime>,
    request_id: HeaderValue,
    /// The canonical path when it differs from the path the client sent.
    canonical_path: Option<Box<str>>,
    /// The upstream gets another request-target than the client sent (canonical path,
    /// origin-form).
    rewrite_target: bool,
    route: Option<Arc<Route>>,
    /// The client's address (forwarding headers believed only from trusted proxies).
    client_ip: Option<std::net::IpAddr>,
    /// The client connection is TLS.
    tls: bool,
    /// Request-body bytes received so far (counted only when a step inspects the body).
    body_received: u64,
    /// Who is calling, once verified.
    identity: Option<Identity>,
    /// The rate limiter's verdict, when the request was limited.
    limit: Option<Decision>,
    /// Targets already tried (a failed connect is retried once on another target).
    tried: Vec<SocketAddr>,
    /// When the first upstream target was chosen.
    upstream_started: Option<Instant>,
    /// The gateway's own answer, when it made one (for the access log).
    error: Option<ApiError>,
}

impl RequestCtx {
    /// What the pipeline's steps may read about this request.
    fn facts(&self) -> Facts<'_> {
        Facts {
            request_id: &self.request_id,
            client_ip: self.client_ip,
            consumer: self.identity.as_ref().and_then(Identity::consumer_id),
            route: self.route.as_ref().map_or("", |r| r.spec.name.as_str()),
            tls: self.tls,
        }
    }

    fn deadline_passed(&self) -> bool {
        match (&self.route, self.upstream_started) {
            (Some(route), Some(started)) => route
                .spec
                .timeouts
                .total
                .is_some_and(|total| started.elapsed() > total),
            _ => false,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            in_flight: InFlight::start(),
            started: Instant::now(),
            runtime: self.live.current(),
            request_id: HeaderValue::from_static(""),
            canonical_path: None,
            rewrite_target: false,
            route: None,
            client_ip: None,
            tls: false,
            body_received: 0,
            identity: None,
            limit: None,
            tried: Vec::new(),
            upstream_started: None,
            error: None,
        }
    }

    /// Response compression in place of Pingora's default module (the same, switched off,
    /// plus the end of brotli streams): a route's `compression` step turns it on per request.
    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        modules.add_module(Box::new(compression::CompressionModuleBuilder));
    }

    /// Runs first, right after Pingora parsed the head: ends the connection's head clock and
    /// applies [`hygiene`] (a refusal is answered by `fail_to_proxy`).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        crate::connection::head_received(session);
        let health_path = ctx.runtime.config.server.health_path.as_deref();
        if let Err(e) = hygiene::check(session.req_header_mut(), health_path) {
            ctx.request_id = request_id::assign(&session.req_header().headers);
            let why = e.message();
            ctx.error = Some(e);
            return Error::e_explain(ErrorType::HTTPStatus(400), why);
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        // A bug must cost one request a 500, not the connection its access-log line.
        match AssertUnwindSafe(self.filter_request(session, ctx))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(_) => {
                log::error!(
                    "request {}: the request phase panicked",
                    ctx.request_id.to_str().unwrap_or("")
                );
                if session.response_written().is_some() {
                    return Error::e_explain(ErrorType::InternalError, "request phase panicked");
                }
                reject(session, ctx, ApiError::Internal).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.as_ref() else {
            // request_filter answers every request that has no route.
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let Some(pool) = route.pool.as_ref() else {
            // A route without an upstream answers every request in its request hook.
            return Error::e_explain(ErrorType::InternalError, "route has no upstream");
        };
        let Some(target) = pool.select(&ctx.tried) else {
            ctx.error = Some(ApiError::NoHealthyTarget);
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy target in upstream {}", pool.name()),
            );
        };
        ctx.tried.push(target);
        let started = *ctx.upstream_started.get_or_insert_with(Instant::now);
        let timeouts = &route.spec.timeouts;
        let mut peer = pool.peer(target);
        // A total timeout also bounds the wait for each read, so a silent upstream cannot
        // outlast it; response_body_filter enforces it between body chunks.
        let read = match timeouts.total {
            Some(total) => timeouts.read.min(
                total
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1)),
            ),
            None => timeouts.read,
        };
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(read);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Retry an idempotent request once, on another target, when one is available.
        let can_retry = ctx.tried.len() < 2
            && session.req_header().method.is_idempotent()
            && ctx
                .route
                .as_ref()
                .and_then(|r| r.pool.as_ref())
                .is_some_and(|pool| pool.target_count() > ctx.tried.len());
        e.set_retry(can_retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let spec = &route.spec;
        // What was routed is what is sent: the canonical path, prefix stripped if asked.
        if ctx.rewrite_target || spec.strip_prefix {
            let path = ctx
                .canonical_path
                .as_deref()
                .unwrap_or(session.req_header().uri.path());
            let mut target = if spec.strip_prefix {
                router::strip_prefix(path, &spec.path_prefix)
            } else {
                path.to_string()
            };
            if let Some(query) = session.req_header().uri.query() {
                target.push('?');
                target.push_str(query);
            }
            let uri = http::Uri::try_from(target).or_else(|e| {
                Error::e_explain(ErrorType::InvalidHTTPHeader, format!("rewritten path: {e}"))
            })?;
            upstream.set_uri(uri);
        }
        let runtime = &ctx.runtime;
        let settings = runtime.auth.settings();
        runtime.scrubber.scrub(
            upstream,
            forward::Keep {
                overrides: spec.allow_override_headers,
                api_key: spec.auth.forward_credential,
            },
        )?;
        if spec.auth.mode != AuthMode::None && !spec.auth.forward_credential {
            forward::remove_authorization(upstream);
        }
        let host = target::parse(session.req_header())
            .ok()
            .and_then(|t| t.authority)
            .map(|a| match a.port {
                Some(port) => format!("{}:{port}", a.host),
                None => a.host.into_owned(),
            });
        let downstream = forward::Downstream {
            peer: client_ip(session),
            client_ip: ctx.client_ip,
            trusted: runtime.auth.trusted_proxies(),
            tls: is_tls(session),
            host,
            port: session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
            prefix: spec.strip_prefix.then_some(spec.path_prefix.as_str()),
        };
        forward::set_forwarded_headers(upstream, &downstream)?;
        upstream.insert_header(request_id::HEADER, ctx.request_id.clone())?;
        forward::set_identity_headers(upstream, &settings.identity_headers, ctx.identity.as_ref())?;
        route
            .pipeline
            .upstream_request(session.req_header(), upstream, &ctx.facts())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(route) = ctx
            .route
            .as_ref()
            .filter(|r| r.pipeline.inspects_request_body())
        else {
            return Ok(());
        };
        ctx.body_received += body.as_ref().map_or(0, |b| b.len() as u64);
        if let Err(refusal) = route
            .pipeline
            .request_body(ctx.body_received, end_of_stream)
        {
            let status = refusal.status;
            ctx.error = Some(ApiError::Refused(refusal));
            return Error::e_explain(ErrorType::HTTPStatus(status), "request body refused");
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let pool = ctx.route.as_ref().and_then(|r| r.pool.as_ref());
        if let (Some(pool), Some(started)) = (pool, ctx.upstream_started) {
            pool.upstream_duration()
                .observe(started.elapsed().as_secs_f64());
        }
        forward::strip_hop_by_hop_response(upstream_response);
        if let Some(route) = &ctx.route {
            route
                .pipeline
                .upstream_response(upstream_response, &ctx.facts());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        response.insert_header(request_id::HEADER, ctx.request_id.clone())?;
        if let Some(decision) = &ctx.limit {
            for (name, value) in limit::rate_limit_headers(decision) {
                response.insert_header(name, value)?;
            }
        }
        match &ctx.route {
            Some(route) => route
                .pipeline
                .response(session, response, &ctx.facts(), false),
            None => Ok(()),
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        if ctx.deadline_passed() {
            return Error::e_explain(ErrorType::ReadTimedout, "route total timeout exceeded");
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = ctx.error.take().or_else(|| ApiError::from_proxy_error(e));
        // Pingora closes the client connection after a proxying failure: say
        // `Connection: close` so the client does not send its next request on it.
        session.set_keepalive(None);
        let code = match &error {
            Some(err) if session.response_written().is_none() => {
                let headers = ctx
                    .limit
                    .as_ref()
                    .map(limit::rate_limit_headers)
                    .unwrap_or_default();
                if let Err(write_err) = respond(session, ctx, Reply::Error(err, headers)).await {
                    log::debug!("cannot send error response: {write_err}");
                }
                err.status()
            }
            Some(err) => err.status(),
            None => 0,
        };
        ctx.error = error;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What Pingora's own error and retry logs say about a request: method, path and host,
    /// never the query (it may carry an API key).
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri.host());
        format!(
            "{} {}, Host: {}",
            req.method,
            req.uri.path(),
            host.unwrap_or("-")
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // The response has gone out: free the concurrency slot before this connection's
        // next request is read.
        if let Some(lease) = ctx.limit.as_mut().and_then(|d| d.lease.take()) {
            self.limiter.get().await.release_now(lease).await;
        }
        let req = session.req_header();
        let status = session.response_written().map_or_else(
            || ctx.error.as_ref().map_or(0, ApiError::status),
            |r| r.status.as_u16(),
        );
        let route = ctx.route.as_ref().map(|r| r.spec.name.as_str());
        let elapsed = ctx.started.elapsed();
        let route_metrics = ctx
            .route
            .as_ref()
            .map_or(&*metrics::NO_ROUTE, |r| &r.metrics);
        route_metrics.count_request(&req.method, status);
        route_metrics.duration.observe(elapsed.as_secs_f64());
        if let (Some(persistence), Some(identity)) = (self.live.persistence(), &ctx.identity) {
            if let Some(consumer) = identity.consumer_id() {
                let limited = matches!(ctx.error, Some(ApiError::RateLimited { .. }));
                persistence.usage.record(
                    consumer,
                    identity.key_id(),
                    route.unwrap_or("none"),
                    limited,
                );
            }
        }
        if let Some(e) = e {
            log::debug!(
                "request {} failed: {e}",
                ctx.request_id.to_str().unwrap_or("")
            );
        }
        if ctx.runtime.config.server.access_log {
            self.access_log.write(&AccessRecord {
                time: std::time::SystemTime::now(),
                request_id: ctx.request_id.to_str().unwrap_or(""),
                client_ip: ctx.client_ip,
                method: req.method.as_str(),
                path: ctx.canonical_path.as_deref().unwrap_or(req.uri.path()),
                route,
                status,
                upstream: ctx.tried.last().copied(),
                consumer: ctx.identity.as_ref().and_then(Identity::consumer_id),
                auth: ctx.identity.as_ref().map(|i| i.method().as_str()),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                error: ctx.error.as_ref().map(ApiError::code),
            });
        }
    }
}

impl Gateway {
    /// `request_filter`'s work: request id, target, route, identity, limits.
    async fn filter_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.request_id = request_id::assign(&session.req_header().headers);
        if !ctx.in_flight.admitted {
            // The drain has begun: answered, not served, so no count can miss the last flush.
            session.set_keepalive(None);
            return reject(session, ctx, ApiError::ShuttingDown).await;
        }
        ctx.tls = is_tls(session);
        let req = session.req_header();
        ctx.client_ip = client_ip(session).map(|peer| ctx.runtime.auth.client_ip(peer, req));
        let target = match target::parse(req) {
            Ok(target) => target,
            Err(e) => return reject(session, ctx, e).await,
        };
        let path: &str = &target.path;
        if ctx.runtime.config.server.health_path.as_deref() == Some(path)
            && matches!(req.method, Method::GET | Method::HEAD)
        {
            respond_health(session, ctx).await?;
            return Ok(true);
        }
        if ctx.runtime.config.rate_limit.status_path.as_deref() == Some(path)
            && req.method == Method::GET
        {
            return self.respond_standing(session, ctx).await;
        }
        let host = target.authority.as_ref().map(|a| a.host.as_ref());
        let router = &ctx.runtime.router;
        // A CORS preflight is routed as the request it asks about, if that route answers it.
        let preflight = cors::route_method(req);
        let mut matched = router.find(path, host, preflight.as_ref().unwrap_or(&req.method));
        if preflight.is_some()
            && !matches!(matched, RouteMatch::Found(r) if cors::answers_preflights(&r.pipeline))
        {
            matched = router.find(path, host, &req.method);
        }
        let found = match matched {
            RouteMatch::Found(route) => {
                target::refused_quirk(&target.quirks, &route.spec.keep_in_path)
                    .map_or_else(|| Ok(Arc::clone(route)), |why| Err(ApiError::BadPath(why)))
            }
            RouteMatch::MethodNotAllowed(allowed) => Err(ApiError::MethodNotAllowed(allowed)),
            RouteMatch::NotFound => Err(ApiError::NoRoute),
        };
        ctx.rewrite_target = target.rewritten();
        if let std::borrow::Cow::Owned(canonical) = target.path {
            ctx.canonical_path = Some(canonical.into_boxed_str());
        }
        let route = match found {
            Ok(route) => route,
            Err(e) => return reject(session, ctx, e).await,
        };
        ctx.route = Some(Arc::clone(&route));
        // The route's steps that may answer first (IP rules, size limits, CORS preflight,
        // redirects): before identification, so they cost no credential check or quota.
        if let Err(answer) = route.pipeline.request(session, &ctx.facts()) {
            return answer_with(session, ctx, answer).await;
        }
        let verified = identify(session, ctx, &route.spec.auth).await;
        let identity = match verified {
            Ok(identity) => identity,
            Err(e) => return reject(session, ctx, ApiError::Auth(e)).await,
        };
        let limited = self.limit(ctx, &route, &identity).await;
        ctx.identity = Some(identity);
        match limited {
            Ok(decision) => {
                ctx.limit = decision;
                Ok(false)
            }
            Err((e, headers)) => {
                respond(session, ctx, Reply::Error(&e, headers)).await?;
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    /// The limit phase: counts the request against every subject that applies, or says
    /// why it is refused (with the headers the refusal carries). `Ok(None)`: not limited.
    async fn limit(
        &self,
        ctx: &RequestCtx,
        route: &Route,
        identity: &Identity,
    ) -> Result<Option<Decision>, (ApiError, Vec<(http::HeaderName, HeaderValue)>)> {
        let subjects = RequestSubjects::new(
            &ctx.runtime.limits,
            &route.limits,
            &route.spec.name,
            identity,
        );
        if subjects.is_empty() {
            return Ok(None);
        }
        let limiter = self.limiter.get().await;
        let outcome = limiter
            .acquire(&subjects.subjects(), 1, &subjects.failure_mode)
            .await;
        let count = |outcome| route.metrics.count_decision(outcome);
        match outcome {
            Ok(decision) if decision.allowed => {
                count(LimitOutcome::Allowed);
                Ok(Some(decision))
            }
            Ok(decision) => {
                count(LimitOutcome::Limited);
                let (policy, retry_after) = rate_limit::refusal(&decision);
                Err((
                    ApiError::RateLimited {
                        policy,
                        retry_after,
                    },
                    limit::rate_limit_headers(&decision),
                ))
            }
            Err(e) => {
                count(LimitOutcome::Unavailable);
                log::debug!("rate limiting on route {}: {e}", route.spec.name);
                Err((ApiError::LimiterUnavailable, Vec::new()))
            }
        }
    }

    /// `GET <status_path>`: the caller's own windows, without consuming quota.
    async fn respond_standing(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let optional = RouteAuth {
            mode: AuthMode::Optional,
            allow_api_key: true,
            allow_jwt: true,
            scopes: Vec::new(),
            forward_credential: false,
        };
        let identity = match identify(session, ctx, &optional).await {
            Ok(identity) => identity,
            Err(e) => return reject(session, ctx, ApiError::Auth(e)).await,
        };
        let subjects = RequestSubjects::caller_only(&ctx.runtime.limits, &identity);
        let windows = if subjects.is_empty() {
            Vec::new()
        } else {
            match self.limiter.get().await.peek(&subjects.subjects()).await {
                Ok(decision) => rate_limit::window_reports(&decision),
                Err(_) => return reject(session, ctx, ApiError::LimiterUnavailable).await,
            }
        };
        let standing = rate_limit::Standing {
            consumer: identity.consumer_id(),
            plan: identity.plan(),
            auth: identity.method().as_str(),
            windows,
        };
        let mut body = serde_json::to_vec(&standing).unwrap_or_default();
        body.push(b'\n');
        respond(session, ctx, Reply::Json(200, Bytes::from(body))).await?;
        ctx.identity = Some(identity);
        Ok(true)
    }
}

/// The identify and verify phases: who is calling, and may they use this route.
async fn identify(
    session: &Session,
    ctx: &RequestCtx,
    policy: &RouteAuth,
) -> Result<Identity, AuthError> {
    let auth = &ctx.runtime.auth;
    let client_ip = ctx
        .client_ip
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    auth.authenticate(auth.credential(session.req_header()), policy, client_ip)
        .await
}

/// Answers with `err` and ends the request.
async fn reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: ApiError,
) -> pingora::Result<bool> {
    respond(session, ctx, Reply::Error(&err, Vec::new())).await?;
    ctx.error = Some(err);
    Ok(true)
}

/// Answers with a pipeline step's `answer` and ends the request.
async fn answer_with(
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: Answer,
) -> pingora::Result<bool> {
    match answer {
        Answer::Refuse(refusal) => reject(session, ctx, ApiError::Refused(refusal)).await,
        _ => {
            respond(session, ctx, Reply::Step(&answer)).await?;
            Ok(true)
        }
    }
}

async fn respond_health(session: &mut Session, ctx: &RequestCtx) -> pingora::Result<()> {
    let body = health_endpoint::body(&ctx.runtime);
    respond(session, ctx, Reply::Json(200, body)).await
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose task panics leaves `tollgate_requests_in_flight` as it found it
    /// (before, a panic leaked one for good and every later graceful shutdown waited out
    /// its whole grace period).
    #[test]
    fn a_panicking_request_leaves_the_in_flight_gauge_right() {
        let before = metrics::IN_FLIGHT.get();
        let result = std::panic::catch_unwind(|| {
            let _in_flight = InFlight::start();
            assert_eq!(metrics::IN_FLIGHT.get(), before + 1);
            panic!("a bug in a phase");
        });
        assert!(result.is_err());
        assert_eq!(metrics::IN_FLIGHT.get(), before);
    }
}
