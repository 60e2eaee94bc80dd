//! The in-process limiter: the same three algorithms and the same all-or-nothing rule
//! as the Redis script, for a single instance (no Redis configured) or as the fallback
//! while Redis is unavailable (limits then divided by the expected instance count).
//!
//! State lives in [`SHARDS`] mutex-guarded maps keyed by subject, so unrelated
//! subjects rarely contend and there is no global lock. A request locks the shards of
//! its subjects in ascending order (no deadlock), checks every window, and writes only
//! if all allow. Idle subjects are swept incrementally, one shard at a time, so memory
//! stays bounded by the subjects active within their longest window.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::decision::{Lease, LeaseHolder};
use super::policy::{share, Algorithm, Subject};
use super::window::{self, Outcome, Request, State};

/// Shards of the subject map: a few times the core count of a large edge node, so two
/// busy subjects rarely share a lock.
const SHARDS: usize = 64;

/// One shard is swept at most this often, so a full pass takes `SHARDS` times as long
/// (6.4 s): idle subjects linger at most that long past their expiry.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Retry hint for a request refused by a concurrency cap: slots free up whenever a
/// request ends, which nobody can predict.
pub(crate) const CONCURRENCY_RETRY_MS: u64 = 1000;

type Shard = HashMap<Box<str>, SubjectState>;

/// Everything counted for one subject key.
#[derive(Debug, Default)]
struct SubjectState {
    windows: Vec<Slot>,
    /// Lease id → when it was taken (ms).
    leases: HashMap<Box<str>, u64>,
    /// Policy → until when (ms) the subject is blocked under it.
    blocks: Vec<(Arc<str>, u64)>,
    /// After this (ms), the state says nothing that a missing one would not.
    expires: u64,
}

/// One window of one policy on a subject.
#[derive(Debug)]
struct Slot {
    policy: Arc<str>,
    period: u64,
    algorithm: Algorithm,
    state: State,
}

impl SubjectState {
    fn slot(&self, policy: &str, period: u64, algorithm: Algorithm) -> Option<&Slot> {
        self.windows
            .iter()
            .find(|s| s.period == period && s.algorithm == algorithm && *s.policy == *policy)
    }

    fn blocked_until(&self, policy: &str) -> u64 {
        self.blocks
            .iter()
            .find(|(p, _)| **p == *policy)
            .map_or(0, |&(_, until)| until)
    }

    fn in_flight(&self, now: u64, lease_ttl: u64) -> u64 {
        self.leases
            .values()
            .filter(|&&taken| taken.saturating_add(lease_ttl) > now)
            .count() as u64
    }
}

/// What [`LocalLimiter::check`] decided.
#[derive(Debug)]
pub(crate) struct LocalDecision {
    /// One per entry: each subject's windows, then its cap, then its block.
    pub outcomes: Vec<Outcome>,
    /// Present when the request was counted and some subject has a cap.
    pub lease: Option<Lease>,
}

/// The in-process limiter.
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    lease_ttl_ms: u64,
    /// When (ms) the next shard is due for a sweep.
    next_sweep: AtomicU64,
    sweep_cursor: AtomicUsize,
}

impl LocalLimiter {
    /// A limiter whose concurrency leases expire after `lease_ttl` if never released.
    pub(crate) fn new(lease_ttl: Duration) -> Self {
        LocalLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            lease_ttl_ms: u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX),
            next_sweep: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    /// Checks every window of every subject with each limit divided by `instances`;
    /// if `counting` and all allow, counts `cost` in all of them and takes a lease
    /// `lease_id` on every capped subject.
    pub(crate) fn check(
        &self,
        subjects: &[Subject<'_>],
        cost: u64,
        lease_id: &str,
        instances: u32,
        counting: bool,
    ) -> LocalDecision {
        self.check_at(now_ms(), subjects, cost, lease_id, instances, counting)
    }

    /// [`check`](Self::check) at time `now` (ms since the epoch).
    pub(crate) fn check_at(
        &self,
        now: u64,
        subjects: &[Subject<'_>],
        cost: u64,
        lease_id: &str,
        instances: u32,
        counting: bool,
    ) -> LocalDecision {
        if counting {
            self.maybe_sweep(now);
        }
        let shard_of: Vec<usize> = subjects.iter().map(|s| self.shard(s.key)).collect();
        let mut order = shard_of.clone();
        order.sort_unstable();
        order.dedup();
        // Ascending shard order: two requests never wait on each other in a cycle.
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            order.iter().map(|&i| lock(&self.shards[i])).collect();
        // `order` holds every subject's shard, so the search always finds it.
        let guard_of = |shard: usize| order.binary_search(&shard).unwrap_or_default();

        let entries = subjects.iter().map(Subject::entries).sum();
        let mut outcomes = Vec::with_capacity(entries);
        let mut next = Vec::with_capacity(entries);
        // Blocks to write: subject, its shard, until when.
        let mut blocks: Vec<(&Subject<'_>, usize, u64)> = Vec::new();
        for (subject, &shard) in subjects.iter().zip(&shard_of) {
            let state = guards[guard_of(shard)].get(subject.key);
            let policy = subject.policy;
            let first_entry = outcomes.len();
            for window in &policy.windows {
                let period = window.period_ms();
                let stored = state
                    .and_then(|s| s.slot(&policy.name, period, policy.algorithm))
                    .map(|slot| &slot.state);
                let request = Request {
                    now,
                    limit: share(window.limit, instances),
                    period,
                    cost,
                    counting,
                };
                let check = window::check(policy.algorithm, stored, &request);
                outcomes.push(check.outcome);
                next.push((period, check.next, check.ttl_ms));
            }
            if let Some(cap) = policy.concurrency {
                let cap = share(cap, instances);
                let in_flight = state.map_or(0, |s| s.in_flight(now, self.lease_ttl_ms));
                let allowed = in_flight < cap;
                let used = in_flight + u64::from(allowed && counting);
                outcomes.push(Outcome {
                    allowed,
                    remaining: cap.saturating_sub(used),
                    reset_ms: 0,
                    retry_ms: if allowed { 0 } else { CONCURRENCY_RETRY_MS },
                    tag: 0,
                });
            }
            if policy.block_for.is_some() {
                // As in the script: a subject refused by its own windows or cap is
                // blocked, and a blocked one is refused.
                let refused_here = outcomes[first_entry..].iter().any(|o| !o.allowed);
                let mut until = state.map_or(0, |s| s.blocked_until(&policy.name));
                if until <= now && refused_here && counting {
                    until = now.saturating_add(policy.block_ms());
                    blocks.push((subject, shard, until));
                }
                let left = until.saturating_sub(now);
                outcomes.push(Outcome {
                    allowed: left == 0,
                    remaining: u64::from(left == 0),
                    reset_ms: left,
                    retry_ms: left,
                    tag: 0,
                });
            }
        }
        for (subject, shard, until) in blocks {
            let shard = &mut guards[guard_of(shard)];
            let state = match shard.get_mut(subject.key) {
                Some(state) => state,
                None => shard.entry(subject.key.into()).or_default(),
            };
            let name = &subject.policy.name;
            state.blocks.retain(|(p, _)| p != name);
            state.blocks.push((Arc::clone(name), until));
            state.expires = state.expires.max(until);
        }

        let counted = counting && outcomes.iter().all(|o| o.allowed);
        let mut lease_keys = Vec::new();
        if counted {
            let mut next = next.into_iter();
            for (subject, &shard) in subjects.iter().zip(&shard_of) {
                let shard = &mut guards[guard_of(shard)];
                let state = match shard.get_mut(subject.key) {
                    Some(state) => state,
                    None => shard.entry(subject.key.into()).or_default(),
                };
                let policy = subject.policy;
                for (period, new, ttl) in next.by_ref().take(policy.windows.len()) {
                    state.expires = state.expires.max(now.saturating_add(ttl));
                    match state.windows.iter_mut().find(|s| {
                        s.period == period
                            && s.algorithm == policy.algorithm
                            && *s.policy == *policy.name
                    }) {
                        Some(slot) => slot.state = new,
                        None => state.windows.push(Slot {
                            policy: Arc::clone(&policy.name),
                            period,
                            algorithm: policy.algorithm,
                            state: new,
                        }),
                    }
                }
                if policy.concurrency.is_some() {
                    let ttl = self.lease_ttl_ms;
                    state
                        .leases
                        .retain(|_, taken| taken.saturating_add(ttl) > now);
                    state.leases.insert(lease_id.into(), now);
                    state.expires = state.expires.max(now.saturating_add(ttl));
                    lease_keys.push(Box::<str>::from(subject.key));
                }
            }
        }
        LocalDecision {
            outcomes,
            lease: (!lease_keys.is_empty()).then(|| Lease {
                id: lease_id.into(),
                holder: LeaseHolder::Local(lease_keys),
            }),
        }
    }

    /// Gives back lease `id` on each subject of `keys`.
    pub(crate) fn release(&self, id: &str, keys: &[Box<str>]) {
        for key in keys {
            if let Some(state) = lock(&self.shards[self.shard(key)]).get_mut(&**key) {
                state.leases.remove(id);
            }
        }
    }

    /// Forgets everything counted for `key`.
    pub(crate) fn reset(&self, key: &str) {
        lock(&self.shards[self.shard(key)]).remove(key);
    }

    /// Subjects currently held (for tests of the sweep).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    /// Sweeps one shard of idle subjects if one is due. Called before any shard is
    /// locked, so it never waits while holding another shard.
    fn maybe_sweep(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now.saturating_add(SWEEP_EVERY.as_millis() as u64);
        if self
            .next_sweep
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread sweeps this round
        }
        let index = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.sweep_shard(index, now);
    }

    fn sweep_shard(&self, index: usize, now: u64) {
        let ttl = self.lease_ttl_ms;
        lock(&self.shards[index]).retain(|_, state| {
            state
                .leases
                .retain(|_, taken| taken.saturating_add(ttl) > now);
            state.expires > now || !state.leases.is_empty()
        });
    }
}

/// Locks a shard; a panic elsewhere while holding it leaves plain counters behind,
/// which are still fine to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wall-clock milliseconds since the epoch, so fixed windows align as they do on Redis.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::policy::{Policy, Window};

    fn fixed(name: &str, windows: &[(u64, u64)]) -> Policy {
        Policy::new(
            name,
            Algorithm::FixedWindow,
            windows
                .iter()
                .map(|&(limit, ms)| Window::new(limit, Duration::from_millis(ms)))
                .collect(),
        )
    }

    fn allowed(d: &LocalDecision) -> bool {
        d.outcomes.iter().all(|o| o.allowed)
    }

    #[test]
    fn a_refused_request_counts_in_no_window_of_any_subject() {
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let consumer = fixed("plan", &[(2, 1000), (100, 60_000)]);
        let route = fixed("route", &[(100, 60_000)]);
        let subjects = [
            Subject::new("c:alice", &consumer),
            Subject::new("r:orders", &route),
        ];
        for _ in 0..2 {
            assert!(allowed(&limiter.check_at(500, &subjects, 1, "", 1, true)));
        }
        for _ in 0..5 {
            let d = limiter.check_at(600, &subjects, 1, "", 1, true);
            assert!(!allowed(&d));
            assert!(!d.outcomes[0].allowed && d.outcomes[1].allowed && d.outcomes[2].allowed);
        }
        let peek = limiter.check_at(700, &subjects, 1, "", 1, false);
        let remaining: Vec<u64> = peek.outcomes.iter().map(|o| o.remaining).collect();
        assert_eq!(remaining, [0, 98, 98]);
    }

    #[test]
    fn limits_are_divided_among_instances() {
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let policy = fixed("p", &[(10, 60_000)]);
        let subjects = [Subject::new("k", &policy)];
        let admitted = (0..10)
            .filter(|_| allowed(&limiter.check_at(0, &subjects, 1, "", 3, true)))
            .count();
        assert_eq!(admitted, 4); // ceil(10 / 3)
    }

    #[test]
    fn concurrency_cap_holds_until_a_lease_is_released_or_expires() {
        let limiter = LocalLimiter::new(Duration::from_millis(5000));
        let policy = Policy::new("p", Algorithm::FixedWindow, vec![]).with_concurrency(2);
        let subjects = [Subject::new("k", &policy)];
        let first = limiter.check_at(0, &subjects, 1, "r1", 1, true);
        let second = limiter.check_at(0, &subjects, 1, "r2", 1, true);
        assert!(allowed(&first) && allowed(&second));
        assert_eq!(second.outcomes[0].remaining, 0);
        let third = limiter.check_at(0, &subjects, 1, "r3", 1, true);
        assert!(!allowed(&third));
        assert!(third.lease.is_none());
        assert_eq!(third.outcomes[0].retry_ms, CONCURRENCY_RETRY_MS);

        let Some(Lease {
            id,
            holder: LeaseHolder::Local(keys),
        }) = first.lease
        else {
            panic!("expected a local lease, got {:?}", first.lease);
        };
        limiter.release(&id, &keys);
        assert!(allowed(&limiter.check_at(0, &subjects, 1, "r4", 1, true)));
        assert!(!allowed(
            &limiter.check_at(4999, &subjects, 1, "r5", 1, true)
        ));
        // Leases never released stop counting after the ttl.
        assert!(allowed(
            &limiter.check_at(5000, &subjects, 1, "r6", 1, true)
        ));
    }

    #[test]
    fn idle_subjects_are_swept() {
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let policy = fixed("p", &[(10, 1000)]);
        for i in 0..200 {
            let key = format!("ip:{i}");
            limiter.check_at(0, &[Subject::new(&key, &policy)], 1, "", 1, true);
        }
        assert_eq!(limiter.len(), 200);
        for shard in 0..SHARDS {
            limiter.sweep_shard(shard, 999);
        }
        assert_eq!(limiter.len(), 200, "still inside their window");
        for shard in 0..SHARDS {
            limiter.sweep_shard(shard, 1000);
        }
        assert_eq!(limiter.len(), 0);
    }

    #[test]
    fn a_sweep_happens_as_requests_come_in() {
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let policy = fixed("p", &[(10, 1000)]);
        let key = "ip:192.0.2.1";
        limiter.check_at(0, &[Subject::new(key, &policy)], 1, "", 1, true);
        // Each later request sweeps one more shard, 100 ms apart.
        for i in 0..SHARDS as u64 {
            let other = format!("other:{i}");
            limiter.check_at(
                10_000 + i * 100,
                &[Subject::new(&other, &policy)],
                1,
                "",
                1,
                true,
            );
        }
        assert!(lock(&limiter.shards[limiter.shard(key)]).get(key).is_none());
    }

    #[test]
    fn reset_forgets_a_subject() {
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let policy = fixed("p", &[(1, 60_000)]);
        let subjects = [Subject::new("k", &policy)];
        assert!(allowed(&limiter.check_at(0, &subjects, 1, "", 1, true)));
        assert!(!allowed(&limiter.check_at(0, &subjects, 1, "", 1, true)));
        limiter.reset("k");
        assert!(allowed(&limiter.check_at(0, &subjects, 1, "", 1, true)));
    }
}
