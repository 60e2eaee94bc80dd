//! Prometheus metrics (default registry) and the listener that exposes them.

use async_trait::async_trait;
use http::Method;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, TextEncoder,
};
use std::sync::{LazyLock, OnceLock};

/// Request latency buckets: from sub-millisecond gateway answers to slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registering a well-formed metric on the default registry fails only on a duplicate name,
/// which is a programming error caught by the first test that touches the metrics.
macro_rules! metric {
    ($e:expr) => {
        LazyLock::new(|| $e.expect("metric definitions are unique and well-formed"))
    };
}

/// Requests answered, by route (`none` when no route matched), method and status.
pub static REQUESTS: LazyLock<IntCounterVec> = metric!(register_int_counter_vec!(
    "tollgate_requests_total",
    "Requests answered by the proxy, by route, method and status.",
    &["route", "method", "status"]
));

/// Time from the first byte of the request to the end of the response, by route.
pub static REQUEST_DURATION: LazyLock<HistogramVec> = metric!(register_histogram_vec!(
    "tollgate_request_duration_seconds",
    "Time from receiving a request to finishing its response, by route.",
    &["route"],
    LATENCY_BUCKETS.to_vec()
));

/// Time from choosing an upstream target to receiving its response header, by upstream.
pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = metric!(register_histogram_vec!(
    "tollgate_upstream_duration_seconds",
    "Time from choosing an upstream target to receiving its response header, by upstream.",
    &["upstream"],
    LATENCY_BUCKETS.to_vec()
));

/// Targets per upstream and state (`healthy` or `unhealthy`).
pub static UPSTREAM_TARGETS: LazyLock<IntGaugeVec> = metric!(register_int_gauge_vec!(
    "tollgate_upstream_targets",
    "Upstream targets by upstream and health state.",
    &["upstream", "state"]
));

/// Requests being processed right now.
pub static IN_FLIGHT: LazyLock<IntGauge> = metric!(register_int_gauge!(
    "tollgate_requests_in_flight",
    "Requests currently being processed by the proxy."
));

/// Config reload attempts by result (`success` or `failure`).
pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = metric!(register_int_counter_vec!(
    "tollgate_config_reloads_total",
    "Configuration reload attempts, by result.",
    &["result"]
));

/// Generation of the config snapshot in use (1 at start, +1 per successful reload).
pub static CONFIG_GENERATION: LazyLock<IntGauge> = metric!(register_int_gauge!(
    "tollgate_config_generation",
    "Generation of the configuration in use; increases by one per successful reload."
));

/// Rate-limit decisions by route and outcome (`allowed`, `limited`, `unavailable`).
pub static RATELIMIT_DECISIONS: LazyLock<IntCounterVec> = metric!(register_int_counter_vec!(
    "tollgate_ratelimit_decisions_total",
    "Rate-limit decisions, by route and outcome (allowed, limited, unavailable).",
    &["route", "decision"]
));

/// Usage counts that could not be kept (too many distinct rows while the database was down).
pub static USAGE_DROPPED: LazyLock<IntCounter> = metric!(register_int_counter!(
    "tollgate_usage_dropped_total",
    "Requests whose usage count was dropped because too many rows were waiting for the database."
));

/// Counter rows waiting to be written to the database.
pub static USAGE_PENDING: LazyLock<IntGauge> = metric!(register_int_gauge!(
    "tollgate_usage_pending_rows",
    "Usage counter rows waiting to be written to the database."
));

/// Access-log lines dropped because the writer could not keep up.
pub static ACCESS_LOG_DROPPED: LazyLock<IntCounter> = metric!(register_int_counter!(
    "tollgate_access_log_dropped_total",
    "Access-log lines dropped because the log writer could not keep up."
));

/// API-key lookups that missed the cache, by outcome: `store` (the store was asked),
/// `refused` (the caller's network had spent its unknown-key budget; not asked), `busy`
/// (no lookup slot came free in time; not asked).
pub static KEY_LOOKUPS: LazyLock<IntCounterVec> = metric!(register_int_counter_vec!(
    "tollgate_key_lookups_total",
    "API-key lookups that missed the cache, by outcome (store, refused, busy).",
    &["outcome"]
));

/// Plans stored in the database that the running config skipped as invalid.
pub static INVALID_PLANS: LazyLock<IntGauge> = metric!(register_int_gauge!(
    "tollgate_invalid_plans",
    "Plans stored in the database that the running configuration skipped because the limiter cannot run them."
));

/// Methods with a label of their own; any other method counts as `OTHER` (the last).
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// Statuses whose `tollgate_requests_total` series a route keeps a handle to; others are
/// looked up by label (rare statuses, so rarely).
const COMMON_STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429,
    431, 500, 502, 503, 504,
];

/// One route's request metrics, resolved once per config snapshot so that counting a
/// request looks up no label set: the duration histogram, the rate-limit decision
/// counters, and `tollgate_requests_total` handles per method and common status (each
/// made on first use, so that no series appears before a request of its kind).
pub struct RouteMetrics {
    route: Box<str>,
    /// `tollgate_request_duration_seconds{route}`.
    pub duration: Histogram,
    requests: [[OnceLock<IntCounter>; COMMON_STATUSES.len()]; METHODS.len() + 1],
    decisions: [OnceLock<IntCounter>; 3],
}

/// A rate-limit decision, as `tollgate_ratelimit_decisions_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitOutcome {
    /// Admitted.
    Allowed,
    /// Refused by a limit.
    Limited,
    /// The limiter could not decide and the route's failure mode refused.
    Unavailable,
}

impl LimitOutcome {
    fn label(self) -> &'static str {
        match self {
            LimitOutcome::Allowed => "allowed",
            LimitOutcome::Limited => "limited",
            LimitOutcome::Unavailable => "unavailable",
        }
    }
}

impl RouteMetrics {
    /// The handles of route `route` (`none` for requests that matched no route).
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: route.into(),
            duration: REQUEST_DURATION.with_label_values(&[route]),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            decisions: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts one answered request in `tollgate_requests_total` (`status` 0: no answer).
    pub fn count_request(&self, method: &Method, status: u16) {
        let m = METHODS
            .iter()
            .position(|known| known == method)
            .unwrap_or(METHODS.len());
        // Only on a series' first use, or for an uncommon status.
        let series = || {
            let method = METHODS.get(m).map_or("OTHER", Method::as_str);
            let status = http::StatusCode::from_u16(status)
                .map_or_else(|_| "0".to_owned(), |code| code.as_str().to_owned());
            REQUESTS.with_label_values(&[&self.route, method, &status])
        };
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(s) => self.requests[m][s].get_or_init(series).inc(),
            None => series().inc(),
        }
    }

    /// Counts one rate-limit decision in `tollgate_ratelimit_decisions_total`.
    pub fn count_decision(&self, outcome: LimitOutcome) {
        self.decisions[outcome as usize]
            .get_or_init(|| RATELIMIT_DECISIONS.with_label_values(&[&self.route, outcome.label()]))
            .inc();
    }
}

/// The metrics of requests that matched no route.
pub static NO_ROUTE: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new("none"));

/// Records a pool's target counts.
pub fn set_upstream_targets(upstream: &str, healthy: usize, total: usize) {
    UPSTREAM_TARGETS
        .with_label_values(&[upstream, "healthy"])
        .set(healthy as i64);
    UPSTREAM_TARGETS
        .with_label_values(&[upstream, "unhealthy"])
        .set((total - healthy) as i64);
}

/// Client connections of the proxy open right now (HTTP/1 and HTTP/2).
pub static CLIENT_CONNECTIONS: LazyLock<IntGauge> = metric!(register_int_gauge!(
    "tollgate_client_connections",
    "Client connections the proxy is serving right now."
));

/// Client connections or request heads refused before any request was parsed, by reason
/// (`max_connections`, `max_connections_per_ip`, `header_timeout`, `header_too_large`,
/// `unparsable`).
pub static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = metric!(register_int_counter_vec!(
    "tollgate_connections_refused_total",
    "Client connections or request heads refused before a request was parsed, by reason.",
    &["reason"]
));

/// Forgets a pool that is no longer configured.
pub fn remove_upstream(upstream: &str) {
    for state in ["healthy", "unhealthy"] {
        let _ = UPSTREAM_TARGETS.remove_label_values(&[upstream, state]);
    }
}

/// Touches every metric so that each appears in the exposition from the start.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&UPSTREAM_TARGETS);
    LazyLock::force(&IN_FLIGHT);
    for result in ["success", "failure"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    LazyLock::force(&CONFIG_GENERATION);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    // Without a database these stay 0; with one, the first drop is then visible to `rate()`.
    LazyLock::force(&USAGE_DROPPED);
    LazyLock::force(&USAGE_PENDING);
    LazyLock::force(&INVALID_PLANS);
    for outcome in ["store", "refused", "busy"] {
        KEY_LOOKUPS.with_label_values(&[outcome]);
    }
    LazyLock::force(&CLIENT_CONNECTIONS);
    for reason in [
        "max_connections",
        "max_connections_per_ip",
        "header_timeout",
        "header_too_large",
        "unparsable",
    ] {
        CONNECTIONS_REFUSED.with_label_values(&[reason]);
    }
    crate::limit::metrics::init();
}

/// The `/metrics` endpoint (any path answers) in Prometheus text format.
pub struct MetricsApp;

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut body = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        let (status, content_type) = match encoder.encode(&prometheus::gather(), &mut body) {
            Ok(()) => (200, encoder.format_type().to_string()),
            Err(e) => {
                log::error!("cannot encode metrics: {e}");
                body = format!("cannot encode metrics: {e}\n").into_bytes();
                (500, "text/plain".to_string())
            }
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static status and header names are valid")
    }
}
