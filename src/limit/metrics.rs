//! Rate-limiter metrics on the Prometheus default registry. (Decisions per route are
//! counted by the proxy, which knows the route.)

use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, Histogram, IntCounterVec,
    IntGauge,
};
use std::sync::LazyLock;

/// Redis round-trip buckets: a healthy call takes well under a millisecond on a LAN;
/// the top buckets catch calls near the per-call timeout (50 ms by default).
const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Registering a well-formed metric on the default registry fails only on a duplicate
/// name, which is a programming error caught by the first test that touches it.
macro_rules! metric {
    ($e:expr) => {
        LazyLock::new(|| $e.expect("metric definitions are unique and well-formed"))
    };
}

/// Failed Redis calls by kind: `timeout`, `connection`, `script` (Redis ran or refused
/// the script and answered with an error, or answered something unexpected), `other`.
pub static BACKEND_ERRORS: LazyLock<IntCounterVec> = metric!(register_int_counter_vec!(
    "tollgate_ratelimit_backend_errors_total",
    "Failed Redis calls of the rate limiter, by kind (timeout, connection, script, other).",
    &["kind"]
));

/// 1 while the circuit breaker is open (the failure mode decides instead of Redis).
pub static FALLBACK_ACTIVE: LazyLock<IntGauge> = metric!(register_int_gauge!(
    "tollgate_ratelimit_fallback_active",
    "1 while Redis is considered unavailable and the failure mode decides, else 0."
));

/// Round trip of each rate-limit script call to Redis (successful or not).
pub static REDIS_DURATION: LazyLock<Histogram> = metric!(register_histogram!(
    "tollgate_ratelimit_redis_duration_seconds",
    "Round trip of each rate-limit script call (EVALSHA) to Redis.",
    REDIS_BUCKETS.to_vec()
));

/// Script calls coalesced into one `EVALSHA` (1: a lone call), bounded by the batch size.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Calls decided by each rate-limit script call: above 1, requests waiting on one worker
/// at the same moment went to Redis together (see `limit::batch`).
pub static BATCH_SIZE: LazyLock<Histogram> = metric!(register_histogram!(
    "tollgate_ratelimit_batch_size",
    "Rate-limit decisions made by each script call to Redis (requests coalesced into one EVALSHA).",
    BATCH_BUCKETS.to_vec()
));

/// Kinds of Redis failure, the values of the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer within the per-call timeout.
    Timeout,
    /// Not connected, connection lost, cluster unavailable.
    Connection,
    /// The script failed or answered something unexpected.
    Script,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Script => "script",
            ErrorKind::Other => "other",
        }
    }
}

/// Counts one failed Redis call.
pub(crate) fn backend_error(kind: ErrorKind) {
    BACKEND_ERRORS.with_label_values(&[kind.as_str()]).inc();
}

/// Touches every metric so that each appears in the exposition from the start.
pub fn init() {
    for kind in [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::Script,
        ErrorKind::Other,
    ] {
        BACKEND_ERRORS.with_label_values(&[kind.as_str()]);
    }
    LazyLock::force(&FALLBACK_ACTIVE);
    LazyLock::force(&REDIS_DURATION);
    LazyLock::force(&BATCH_SIZE);
}
