//! Rate limiting: quotas that hold exactly across every gateway instance sharing one
//! Redis (or Redis Cluster), with one Redis round trip per request and no hang when
//! Redis misbehaves.
//!
//! A request names its [`Subject`]s (consumer, client IP, route...), each with a
//! [`Policy`] of windows and an optional concurrency cap. [`RateLimiter::acquire`]
//! checks every window of every subject and counts the request in all of them only if
//! all allow (one Lua script, atomic on Redis). The [`Decision`] says who decided and
//! how each window stands, and [`headers`] turns it into response headers.
//!
//! When Redis fails or is slow (per-call timeout), a circuit breaker stops calling it
//! for a cool-down and the request's [`FailureMode`] decides: an in-process limiter
//! with each limit divided by the expected instance count, allow, or refuse.
//!
//! Modules: [`policy`] (what is limited), `window` (the algorithms, mirrored by the
//! scripts in `lua/`), `script` (key layout and the script's calling convention),
//! `redis` (the fred client), `local` (the in-process limiter), `breaker`,
//! [`decision`], [`headers`], [`metrics`].

#![warn(missing_docs)]

mod batch;
mod breaker;
pub mod decision;
pub mod headers;
mod local;
pub mod metrics;
pub mod policy;
mod redis;
mod script;
mod shared;
mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use breaker::{Breaker, Permit};
use decision::LeaseHolder;
use local::LocalLimiter;
use redis::RedisBackend;
use script::{Mode, SubjectKeys};

pub use decision::{Decision, Lease, Source, WindowKind, WindowState};
pub use headers::{insert_headers, rate_limit_headers};
pub use policy::{Algorithm, Policy, PolicyError, Subject, Window, MAX_LIMIT, MAX_PERIOD};
pub(crate) use redis::client_config as redis_client_config;
pub use shared::Limiter;

/// Per-call Redis timeout: a healthy Redis answers in well under a millisecond, so
/// 50 ms only ever cuts off a sick one, and bounds what limiting adds to a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Shared connections to Redis (per node on a Cluster) for releases, resets and Cluster
/// undos, which are pipelined; request decisions use each thread's own connection.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Consecutive failures that open the breaker: enough that one lost packet does not
/// switch every instance to the fallback, few enough to react within a fraction of a
/// second under load.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;

/// How long the breaker stays open (keeping requests off Redis) before one request probes
/// Redis again.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(2);

/// How long a concurrency slot counts if never given back (its instance crashed):
/// longer than any sane request (streams included), short enough that a crash does not
/// lock a client out for long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);

/// How to reach Redis and how patient to be with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; one for a single Redis, one or more
    /// seed nodes for a Cluster.
    pub urls: Vec<String>,
    /// The URLs are Redis Cluster nodes.
    pub cluster: bool,
    /// Deadline of each call (see [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Shared connections (per node on a Cluster), see [`DEFAULT_POOL_SIZE`].
    pub pool_size: usize,
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes again.
    pub breaker_cooldown: Duration,
    /// How long a concurrency slot counts if never released.
    pub concurrency_lease_ttl: Duration,
}

impl Default for RedisSettings {
    /// No URL (set one), and every other field at its `DEFAULT_*`.
    fn default() -> Self {
        RedisSettings {
            urls: Vec::new(),
            cluster: false,
            timeout: DEFAULT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            concurrency_lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl RedisSettings {
    /// One Redis at `url`, defaults otherwise.
    pub fn single(url: impl Into<String>) -> Self {
        RedisSettings {
            urls: vec![url.into()],
            ..RedisSettings::default()
        }
    }

    /// A Redis Cluster seeded from `urls`, defaults otherwise.
    pub fn cluster<I: IntoIterator<Item = S>, S: Into<String>>(urls: I) -> Self {
        RedisSettings {
            urls: urls.into_iter().map(Into::into).collect(),
            cluster: true,
            ..RedisSettings::default()
        }
    }
}

/// What happens when Redis is unavailable (breaker open, error or timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// The in-process limiter decides, with every limit divided by
    /// `expected_instances` (at least 1; rounded up, so no limit drops to zero).
    Local {
        /// Gateway instances expected to share the traffic.
        expected_instances: u32,
    },
    /// Allow the request, counted nowhere ([`Source::FailOpen`]).
    Open,
    /// Refuse to decide: [`LimitError::Unavailable`] (the proxy answers 503).
    Closed,
}

impl Default for FailureMode {
    /// `Local` on a single instance.
    fn default() -> Self {
        FailureMode::Local {
            expected_instances: 1,
        }
    }
}

/// Why the limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// Redis is unavailable and nothing else may decide: `FailureMode::Closed` on an
    /// acquire, or a peek or reset (which have no fallback).
    #[error("rate limiting is unavailable: Redis cannot be reached")]
    Unavailable,
    /// A subject's policy (or the cost) cannot be used.
    #[error(transparent)]
    InvalidPolicy(#[from] PolicyError),
    /// The Redis settings are unusable (bad URL, inconsistent cluster flag).
    #[error("invalid Redis settings: {0}")]
    InvalidSettings(String),
}

/// The limiter the proxy holds; cheap to clone (shared state). Without Redis it is
/// purely local.
///
/// Create it on the runtime that will use it, or one that outlives it: the Redis
/// connections are driven by tasks spawned on the runtime current at
/// [`connect`](Self::connect).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The limiter when there is no Redis; the `Local` fallback when there is.
    local: LocalLimiter,
    remote: Option<Remote>,
    /// Where concurrency lease ids come from.
    lease_ids: LeaseIds,
}

/// Lease ids unique across every instance sharing one Redis: a random per-process prefix
/// and a counter. The limiter makes them itself, so no caller can choose one (a client's
/// `X-Request-Id` as lease id would let one client hold many slots under one id, or free
/// another client's slot).
#[derive(Debug)]
struct LeaseIds {
    prefix: u64,
    next: AtomicU64,
}

impl LeaseIds {
    fn new() -> Self {
        let prefix = ring::rand::generate::<[u8; 8]>(&ring::rand::SystemRandom::new())
            .map(|bytes| u64::from_be_bytes(bytes.expose()))
            // No system randomness (it does not happen on Linux): the process id and the
            // start time still tell instances apart.
            .unwrap_or_else(|_| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ (u64::from(std::process::id()) << 32)
            });
        LeaseIds {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    /// A fresh id.
    fn next(&self) -> Box<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.prefix).into_boxed_str()
    }
}

/// Why Redis did not decide.
enum Unanswered {
    /// Nothing was sent (the breaker is open).
    NotSent,
    /// The call failed or timed out: Redis may still have run it.
    Failed,
}

#[derive(Debug)]
struct Remote {
    backend: RedisBackend,
    breaker: Breaker,
}

impl RateLimiter {
    /// A purely in-process limiter (one instance, no Redis) whose leases expire after
    /// [`DEFAULT_LEASE_TTL`].
    pub fn local() -> Self {
        Self::local_with_lease_ttl(DEFAULT_LEASE_TTL)
    }

    /// A purely in-process limiter whose concurrency leases expire after `lease_ttl` if
    /// never released.
    pub fn local_with_lease_ttl(lease_ttl: Duration) -> Self {
        RateLimiter {
            inner: Arc::new(Inner {
                local: LocalLimiter::new(lease_ttl),
                remote: None,
                lease_ids: LeaseIds::new(),
            }),
        }
    }

    /// A limiter on Redis. Fails only on unusable settings: if Redis is down at start,
    /// the limiter starts with its breaker open and connects in the background.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, LimitError> {
        let (backend, connected) = RedisBackend::connect(settings).await?;
        let breaker = Breaker::new(settings.breaker_failures, settings.breaker_cooldown);
        if !connected {
            breaker.open(breaker.now_ms(), &"not reachable at start");
        }
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                local: LocalLimiter::new(settings.concurrency_lease_ttl),
                remote: Some(Remote { backend, breaker }),
                lease_ids: LeaseIds::new(),
            }),
        })
    }

    /// Checks every window of every subject; if all allow, counts `cost` in all of
    /// them (and takes a concurrency slot where a policy has a cap), atomically. Refused
    /// requests are counted nowhere. One Redis round trip: a single script call on a
    /// single Redis or when all subjects share a Cluster slot, else one call per slot,
    /// concurrently (see the `redis` module on over-counting).
    ///
    /// The lease of the slots gets an id made here, unique among every instance. When
    /// Redis is unavailable, `on_failure` decides; when the call failed after it was sent
    /// (a timeout), the slots Redis may still have taken are given back in the background
    /// (best effort), so a latency spike does not hold them for the lease ttl.
    pub async fn acquire(
        &self,
        subjects: &[Subject<'_>],
        cost: u64,
        on_failure: &FailureMode,
    ) -> Result<Decision, LimitError> {
        validate(subjects, cost)?;
        let capped = subjects.iter().any(|s| s.policy.concurrency.is_some());
        let lease_id = if capped {
            self.inner.lease_ids.next()
        } else {
            Box::default()
        };
        let Some(remote) = &self.inner.remote else {
            return Ok(self.local_decision(subjects, cost, &lease_id, 1, true));
        };
        if subjects.is_empty() {
            return Ok(Decision::unlimited(Source::Redis));
        }
        let keys: Vec<SubjectKeys> = subjects.iter().map(|s| SubjectKeys::new(s.key)).collect();
        let lease_keys = |keys: Vec<SubjectKeys>| -> Vec<String> {
            subjects
                .iter()
                .zip(keys)
                .filter(|(s, _)| s.policy.concurrency.is_some())
                .map(|(_, k)| k.leases)
                .collect()
        };
        match remote
            .call(Mode::Acquire, cost, &lease_id, subjects, &keys)
            .await
        {
            Ok(outcomes) => {
                let mut decision = Decision::assemble(subjects, &outcomes, 1, Source::Redis);
                if decision.allowed && capped {
                    decision.lease = Some(Lease {
                        id: lease_id,
                        holder: LeaseHolder::Redis(lease_keys(keys)),
                    });
                }
                return Ok(decision);
            }
            Err(Unanswered::Failed) if capped => {
                remote
                    .backend
                    .spawn_release(lease_id.clone(), lease_keys(keys));
            }
            Err(_) => {}
        }
        match *on_failure {
            FailureMode::Local { expected_instances } => {
                Ok(self.local_decision(subjects, cost, &lease_id, expected_instances.max(1), true))
            }
            FailureMode::Open => Ok(Decision::unlimited(Source::FailOpen)),
            FailureMode::Closed => Err(LimitError::Unavailable),
        }
    }

    /// The current standing of the subjects, counting nothing: `allowed` says whether a
    /// request of cost 1 would be allowed now. With Redis configured, Redis answers or
    /// the peek fails with [`LimitError::Unavailable`].
    pub async fn peek(&self, subjects: &[Subject<'_>]) -> Result<Decision, LimitError> {
        validate(subjects, 1)?;
        let Some(remote) = &self.inner.remote else {
            return Ok(self.local_decision(subjects, 1, "", 1, false));
        };
        if subjects.is_empty() {
            return Ok(Decision::unlimited(Source::Redis));
        }
        let keys: Vec<SubjectKeys> = subjects.iter().map(|s| SubjectKeys::new(s.key)).collect();
        match remote.call(Mode::Peek, 1, "", subjects, &keys).await {
            Ok(outcomes) => Ok(Decision::assemble(subjects, &outcomes, 1, Source::Redis)),
            Err(_) => Err(LimitError::Unavailable),
        }
    }

    /// Gives a concurrency slot back. Fire-and-forget: on Redis the removal runs in a
    /// spawned task (skipped while the breaker is open: the lease then expires after
    /// its ttl), so this never blocks the response.
    pub fn release(&self, lease: Lease) {
        match lease.holder {
            LeaseHolder::Local(keys) => self.inner.local.release(&lease.id, &keys),
            LeaseHolder::Redis(keys) => {
                if let Some(remote) = &self.inner.remote {
                    if !remote.breaker.is_open() {
                        remote.backend.spawn_release(lease.id, keys);
                    }
                }
            }
        }
    }

    /// Gives a concurrency slot back and waits until it is free (one Redis round trip, all
    /// keys at once). For callers that have already answered the client, so that its next
    /// request finds the slot free.
    pub async fn release_now(&self, lease: Lease) {
        match lease.holder {
            LeaseHolder::Local(keys) => self.inner.local.release(&lease.id, &keys),
            LeaseHolder::Redis(keys) => {
                if let Some(remote) = &self.inner.remote {
                    if !remote.breaker.is_open() {
                        remote.backend.release(&lease.id, keys).await;
                    }
                }
            }
        }
    }

    /// Forgets every counter and lease of subject `key`, on Redis and in the local
    /// limiter (operator reset).
    pub async fn reset(&self, key: &str) -> Result<(), LimitError> {
        self.inner.local.reset(key);
        let Some(remote) = &self.inner.remote else {
            return Ok(());
        };
        if remote.breaker.is_open() {
            return Err(LimitError::Unavailable);
        }
        remote
            .backend
            .reset(&SubjectKeys::new(key))
            .await
            .map_err(|e| {
                metrics::backend_error(e.kind());
                log::warn!("rate limiting: resetting {key:?} on Redis failed: {e}");
                LimitError::Unavailable
            })
    }

    /// Whether Redis is configured (else the limiter is purely local).
    pub fn is_distributed(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// Whether the breaker is open: Redis is not being called, the failure mode
    /// decides (except for the one probe per cool-down).
    pub fn breaker_open(&self) -> bool {
        self.inner
            .remote
            .as_ref()
            .is_some_and(|r| r.breaker.is_open())
    }

    /// Commands sent to Redis so far (script calls, reloads, releases, resets): for
    /// tests and diagnostics.
    pub fn redis_commands(&self) -> u64 {
        self.inner
            .remote
            .as_ref()
            .map_or(0, |r| r.backend.commands())
    }

    fn local_decision(
        &self,
        subjects: &[Subject<'_>],
        cost: u64,
        lease_id: &str,
        instances: u32,
        counting: bool,
    ) -> Decision {
        let local = self
            .inner
            .local
            .check(subjects, cost, lease_id, instances, counting);
        let mut decision = Decision::assemble(subjects, &local.outcomes, instances, Source::Local);
        decision.lease = local.lease;
        decision
    }
}

impl Remote {
    /// Calls Redis unless the breaker says not to; reports the result to the breaker
    /// and the metrics.
    async fn call(
        &self,
        mode: Mode,
        cost: u64,
        lease_id: &str,
        subjects: &[Subject<'_>],
        keys: &[SubjectKeys],
    ) -> Result<Vec<window::Outcome>, Unanswered> {
        let permit = self.breaker.permit();
        if matches!(permit, Permit::Denied) {
            return Err(Unanswered::NotSent);
        }
        let result = self
            .backend
            .evaluate(mode, cost, lease_id, subjects, keys)
            .await;
        match (&result, permit) {
            (Ok(_), Permit::Probe(probe)) => probe.success(),
            (Ok(_), _) => self.breaker.success(),
            (Err(e), permit) => {
                metrics::backend_error(e.kind());
                log::debug!("rate limiting: Redis call failed: {e}");
                match permit {
                    Permit::Probe(probe) => probe.failure(e),
                    _ => self.breaker.failure(e),
                }
            }
        }
        result.map_err(|_| Unanswered::Failed)
    }
}

/// Rejects invalid policies and costs before anything is counted.
fn validate(subjects: &[Subject<'_>], cost: u64) -> Result<(), PolicyError> {
    policy::check_max("cost", cost)?;
    for subject in subjects {
        subject.policy.validate()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Pingora's phases are `Send` futures: the limiter's must be too.
    #[test]
    fn futures_are_send_and_the_limiter_is_shareable() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<RateLimiter>();
        let limiter = RateLimiter::local();
        let p = Policy::new("p", Algorithm::FixedWindow, vec![]).with_concurrency(1);
        let subjects = [Subject::new("k", &p)];
        let acquire = limiter.acquire(&subjects, 1, &FailureMode::Open);
        assert_send(&acquire);
        assert_send(&limiter.peek(&subjects));
        assert_send(&limiter.reset("k"));
        drop(acquire);
    }

    #[tokio::test]
    async fn without_redis_the_limiter_is_local() {
        let limiter = RateLimiter::local();
        assert!(!limiter.is_distributed());
        assert!(!limiter.breaker_open());
        assert_eq!(limiter.redis_commands(), 0);
        let p = Policy::new(
            "p",
            Algorithm::FixedWindow,
            vec![Window::new(1, Duration::from_secs(3600))],
        );
        let subjects = [Subject::new("k", &p)];
        let first = limiter
            .acquire(&subjects, 1, &FailureMode::Closed)
            .await
            .expect("local decides");
        assert_eq!(first.source, Source::Local);
        let empty = limiter
            .acquire(&[], 1, &FailureMode::Closed)
            .await
            .expect("nothing to limit");
        assert!(empty.allowed && empty.windows.is_empty());
    }
}
