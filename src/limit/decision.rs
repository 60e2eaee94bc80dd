//! What the limiter answers: the verdict, every window's standing, and the lease.

use std::sync::Arc;
use std::time::Duration;

use super::policy::{share, Subject};
use super::window::Outcome;

/// Whether an entry of a decision is a rate window or a concurrency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// A window of the policy's algorithm; appears in the rate-limit headers.
    Rate,
    /// The policy's cap on requests in flight; `period` is zero, `reset_after` zero.
    Concurrency,
    /// The policy's block after abuse: `limit` 1, `remaining` 0 while blocked (then
    /// `reset_after` is the time left), `period` the block duration.
    Block,
}

/// One window's (or cap's) standing after the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    /// Index of the subject (in the slice given to `acquire`) this entry belongs to.
    pub subject: usize,
    /// The subject's policy name.
    pub policy: Arc<str>,
    /// Rate window or concurrency cap.
    pub kind: WindowKind,
    /// The limit enforced (divided among instances when the local fallback decided).
    pub limit: u64,
    /// Units left after this request (before it, if it was refused or a peek).
    pub remaining: u64,
    /// Until the window is back to its full limit if nothing more is counted.
    pub reset_after: Duration,
    /// The window's length (zero for a concurrency cap).
    pub period: Duration,
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The shared Redis: exact across instances.
    Redis,
    /// The in-process limiter: the only limiter, or the fallback while Redis is
    /// unavailable (limits then divided by the expected instance count).
    Local,
    /// Nobody: Redis was unavailable and the failure mode is `Open`. Allowed, counted
    /// nowhere, no windows.
    FailOpen,
}

/// The verdict on one request.
#[derive(Debug)]
pub struct Decision {
    /// Every window of every subject allowed it (and it was counted in all of them).
    pub allowed: bool,
    /// Each subject's windows in order, then its concurrency cap and its block if it has
    /// them.
    pub windows: Vec<WindowState>,
    /// When refused: the entry of `windows` that refused it; when several did, the one
    /// that takes longest to allow it again.
    pub refused_by: Option<usize>,
    /// When refused: until a request of the same cost would fit every refusing window
    /// (one second for a concurrency cap, whose slots free up unpredictably).
    pub retry_after: Option<Duration>,
    /// Who decided.
    pub source: Source,
    /// The concurrency slots taken, to give back with
    /// [`RateLimiter::release`](super::RateLimiter::release) when the request ends.
    /// `Some` only when allowed and some policy has a cap.
    pub lease: Option<Lease>,
}

impl Decision {
    /// An allowed request that nobody counted (`FailOpen`, or no subjects).
    pub(crate) fn unlimited(source: Source) -> Self {
        Decision {
            allowed: true,
            windows: Vec::new(),
            refused_by: None,
            retry_after: None,
            source,
            lease: None,
        }
    }

    /// Builds the decision from one outcome per entry (each subject's windows, then
    /// its cap), in subject order. `instances` divides the limits reported (1 unless
    /// the local fallback decided).
    pub(crate) fn assemble(
        subjects: &[Subject<'_>],
        outcomes: &[Outcome],
        instances: u32,
        source: Source,
    ) -> Self {
        let mut windows = Vec::with_capacity(outcomes.len());
        let mut outcome = outcomes.iter();
        let mut refused: Option<(usize, u64)> = None;
        for (index, subject) in subjects.iter().enumerate() {
            let policy = subject.policy;
            let entries = policy
                .windows
                .iter()
                .map(|w| (WindowKind::Rate, w.limit, w.period))
                .chain(
                    policy
                        .concurrency
                        .map(|cap| (WindowKind::Concurrency, cap, Duration::ZERO)),
                )
                .chain(policy.block_for.map(|d| (WindowKind::Block, 1, d)));
            for ((kind, limit, period), o) in entries.zip(outcome.by_ref()) {
                if !o.allowed && refused.is_none_or(|(_, retry)| o.retry_ms > retry) {
                    refused = Some((windows.len(), o.retry_ms));
                }
                // A block is one flag, whatever the instance count.
                let limit = match kind {
                    WindowKind::Block => limit,
                    _ => share(limit, instances),
                };
                windows.push(WindowState {
                    subject: index,
                    policy: Arc::clone(&policy.name),
                    kind,
                    limit,
                    remaining: o.remaining,
                    reset_after: Duration::from_millis(o.reset_ms),
                    period,
                });
            }
        }
        Decision {
            allowed: refused.is_none(),
            windows,
            refused_by: refused.map(|(index, _)| index),
            retry_after: refused.map(|(_, ms)| Duration::from_millis(ms)),
            source,
            lease: None,
        }
    }
}

/// A concurrency slot (or several: one per capped subject) held by an allowed request.
/// Give it back with [`RateLimiter::release`](super::RateLimiter::release) when the
/// request ends; one never given back expires after the configured lease ttl.
#[derive(Debug)]
#[must_use = "a lease holds a concurrency slot until released (or until its ttl)"]
pub struct Lease {
    pub(crate) id: Box<str>,
    pub(crate) holder: LeaseHolder,
}

/// Where a lease's slots are held.
#[derive(Debug)]
pub(crate) enum LeaseHolder {
    /// In Redis: each capped subject's leases key.
    Redis(Vec<String>),
    /// In the in-process limiter: each capped subject's key.
    Local(Vec<Box<str>>),
}

impl Lease {
    /// The lease id given to `acquire`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::policy::{Algorithm, Policy, Window};

    fn outcome(allowed: bool, remaining: u64, retry_ms: u64) -> Outcome {
        Outcome {
            allowed,
            remaining,
            reset_ms: 500,
            retry_ms,
            tag: 0,
        }
    }

    #[test]
    fn the_refusing_window_that_frees_up_last_is_reported() {
        let a = Policy::new(
            "a",
            Algorithm::FixedWindow,
            vec![
                Window::new(10, Duration::from_secs(1)),
                Window::new(100, Duration::from_secs(60)),
            ],
        );
        let b = Policy::new(
            "b",
            Algorithm::TokenBucket,
            vec![Window::new(5, Duration::from_secs(1))],
        )
        .with_concurrency(2);
        let subjects = [Subject::new("c:alice", &a), Subject::new("r:orders", &b)];
        let decision = Decision::assemble(
            &subjects,
            &[
                outcome(false, 0, 300),
                outcome(false, 0, 40_000),
                outcome(true, 4, 0),
                outcome(false, 0, 1000),
            ],
            1,
            Source::Redis,
        );
        assert!(!decision.allowed);
        assert_eq!(decision.refused_by, Some(1));
        assert_eq!(decision.retry_after, Some(Duration::from_secs(40)));
        assert_eq!(decision.windows.len(), 4);
        assert_eq!(decision.windows[2].subject, 1);
        assert_eq!(&*decision.windows[3].policy, "b");
        assert_eq!(decision.windows[3].kind, WindowKind::Concurrency);
        assert_eq!(decision.windows[3].period, Duration::ZERO);
    }

    #[test]
    fn limits_are_reported_as_shared_among_instances() {
        let p = Policy::new(
            "p",
            Algorithm::FixedWindow,
            vec![Window::new(100, Duration::from_secs(60))],
        )
        .with_concurrency(7);
        let decision = Decision::assemble(
            &[Subject::new("k", &p)],
            &[outcome(true, 33, 0), outcome(true, 6, 0)],
            3,
            Source::Local,
        );
        assert!(decision.allowed);
        assert_eq!(decision.refused_by, None);
        assert_eq!(decision.windows[0].limit, 34);
        assert_eq!(decision.windows[1].limit, 3);
    }
}
