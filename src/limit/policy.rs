//! What is limited: algorithms, windows, policies, and the subjects they apply to.

use std::sync::Arc;
use std::time::Duration;

/// Largest limit or cost: Lua numbers are doubles, exact for integers up to 2^53.
pub const MAX_LIMIT: u64 = 1 << 53;

/// Longest window: a year is beyond any plan (per day is the usual longest), and keeps
/// every millisecond sum in the scripts far from precision limits.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Longest policy name: it goes into every Redis field name and response header.
pub const MAX_NAME_LEN: usize = 64;

/// How a window counts requests: the one algorithm type of the file, the database, the
/// admin API (`fixed_window`, `sliding_window`, `token_bucket`) and the limiter.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// At most `limit` per window, windows aligned to multiples of `period`. Exact
    /// within a window; a client may spend two limits back to back across a boundary.
    #[default]
    FixedWindow,
    /// Two-window weighted counter (Cloudflare's sliding window): the previous window
    /// counts in proportion to how much of it the sliding period still covers. Smooth,
    /// no boundary bursts; an approximation of a true sliding log.
    SlidingWindow,
    /// A bucket of `limit` tokens (the burst), refilled continuously at `limit` per
    /// `period`; each request takes `cost` tokens.
    TokenBucket,
}

/// A name that is not an algorithm's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown algorithm {0:?} (fixed_window, sliding_window, token_bucket)")]
pub struct UnknownAlgorithm(pub String);

impl std::str::FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Parses the name used in the file, the database and the admin API.
    fn from_str(text: &str) -> Result<Algorithm, UnknownAlgorithm> {
        match text {
            "fixed_window" => Ok(Algorithm::FixedWindow),
            "sliding_window" => Ok(Algorithm::SlidingWindow),
            "token_bucket" => Ok(Algorithm::TokenBucket),
            other => Err(UnknownAlgorithm(other.to_string())),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Algorithm {
    /// The name: `fixed_window`, `sliding_window`, `token_bucket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }

    /// The code the Lua script dispatches on.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "f",
            Algorithm::SlidingWindow => "s",
            Algorithm::TokenBucket => "t",
        }
    }
}

/// One window: `limit` requests per `period` (token bucket: `limit` is the burst,
/// refilled at `limit` per `period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Units allowed per period (token bucket: the burst).
    pub limit: u64,
    /// The window's length; whole milliseconds, at least one.
    pub period: Duration,
}

impl Window {
    /// `limit` per `period`.
    pub fn new(limit: u64, period: Duration) -> Self {
        Window { limit, period }
    }

    /// The period in milliseconds (sub-millisecond parts are rejected by validation).
    pub(crate) fn period_ms(&self) -> u64 {
        // MAX_PERIOD in milliseconds fits in u64 by far; longer periods are rejected
        // by validation before this is used, and saturate rather than wrap anyway.
        u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A named set of windows, plus an optional concurrency cap (requests in flight).
///
/// Build with [`Policy::new`] and check with [`Policy::validate`] when loading config;
/// [`RateLimiter`](super::RateLimiter) refuses to run an invalid policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Names the policy in Redis field names and in the `RateLimit-Policy` header.
    /// Shared (`Arc`) so each decision refers to it without copying.
    pub name: Arc<str>,
    /// How every window of this policy counts.
    pub algorithm: Algorithm,
    /// The windows; a request must fit in all of them.
    pub windows: Vec<Window>,
    /// At most this many requests of one subject in flight at once.
    pub concurrency: Option<u64>,
    /// Once a subject exceeds this policy (one of its windows or its cap refuses a
    /// request), every request of it is refused for this long.
    pub block_for: Option<Duration>,
    /// Its script arguments, built on the first Redis call that uses it (a clone starts
    /// empty, so a clone changed before use builds its own).
    pub(crate) script_args: super::script::PolicyArgs,
}

/// Why a policy (or a cost) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The name is empty, too long, or has characters outside printable ASCII.
    #[error("policy name {0:?} must be 1 to {MAX_NAME_LEN} printable ASCII characters")]
    BadName(String),
    /// Neither a window nor a concurrency cap: the policy would limit nothing.
    #[error("policy {0:?} has no window and no concurrency cap")]
    Empty(String),
    /// A window period is zero, not whole milliseconds, or longer than a year.
    #[error("policy {policy:?}: window period {period:?} must be whole milliseconds between 1 ms and {MAX_PERIOD:?}")]
    BadPeriod {
        /// The policy's name.
        policy: String,
        /// The offending period.
        period: Duration,
    },
    /// Two windows of one policy have the same period (they would share one counter).
    #[error("policy {policy:?} has two windows of {period:?}")]
    DuplicatePeriod {
        /// The policy's name.
        policy: String,
        /// The repeated period.
        period: Duration,
    },
    /// A block duration that is not whole milliseconds from 1 ms to a year.
    #[error("policy {policy:?}: block_for {block_for:?} must be whole milliseconds between 1 ms and {MAX_PERIOD:?}")]
    BadBlock {
        /// The policy's name.
        policy: String,
        /// The offending duration.
        block_for: Duration,
    },
    /// A limit, concurrency cap or cost above 2^53.
    #[error("{what} {value} is above the maximum {MAX_LIMIT}")]
    TooLarge {
        /// What was too large (`limit`, `concurrency` or `cost`).
        what: &'static str,
        /// The value given.
        value: u64,
    },
}

impl Policy {
    /// A policy without a concurrency cap.
    pub fn new(name: impl Into<Arc<str>>, algorithm: Algorithm, windows: Vec<Window>) -> Self {
        Policy {
            name: name.into(),
            algorithm,
            windows,
            concurrency: None,
            block_for: None,
            script_args: super::script::PolicyArgs::default(),
        }
    }

    /// The same policy with at most `cap` requests in flight per subject.
    pub fn with_concurrency(mut self, cap: u64) -> Self {
        self.concurrency = Some(cap);
        self.script_args = super::script::PolicyArgs::default();
        self
    }

    /// The same policy, blocking a subject for `block_for` once it exceeds it.
    pub fn with_block_for(mut self, block_for: Duration) -> Self {
        self.block_for = Some(block_for);
        self.script_args = super::script::PolicyArgs::default();
        self
    }

    /// The block duration in milliseconds; 0 without one.
    pub(crate) fn block_ms(&self) -> u64 {
        self.block_for
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Checks everything the limiter relies on: a printable name, at least one window
    /// or a cap, periods in whole milliseconds (1 ms to a year, no two alike), and
    /// limits no larger than [`MAX_LIMIT`].
    pub fn validate(&self) -> Result<(), PolicyError> {
        let name = &*self.name;
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(PolicyError::BadName(name.to_string()));
        }
        if self.windows.is_empty() && self.concurrency.is_none() {
            return Err(PolicyError::Empty(name.to_string()));
        }
        for (i, window) in self.windows.iter().enumerate() {
            let period = window.period;
            if period < Duration::from_millis(1)
                || period > MAX_PERIOD
                || period.subsec_nanos() % 1_000_000 != 0
            {
                return Err(PolicyError::BadPeriod {
                    policy: name.to_string(),
                    period,
                });
            }
            if self.windows[..i].iter().any(|w| w.period == period) {
                return Err(PolicyError::DuplicatePeriod {
                    policy: name.to_string(),
                    period,
                });
            }
            check_max("limit", window.limit)?;
        }
        if let Some(cap) = self.concurrency {
            check_max("concurrency", cap)?;
        }
        if let Some(block_for) = self.block_for {
            if block_for < Duration::from_millis(1)
                || block_for > MAX_PERIOD
                || block_for.subsec_nanos() % 1_000_000 != 0
            {
                return Err(PolicyError::BadBlock {
                    policy: name.to_string(),
                    block_for,
                });
            }
        }
        Ok(())
    }
}

/// Rejects values the Lua scripts could not count exactly.
pub(crate) fn check_max(what: &'static str, value: u64) -> Result<(), PolicyError> {
    if value > MAX_LIMIT {
        return Err(PolicyError::TooLarge { what, value });
    }
    Ok(())
}

/// Something limited in this request: e.g. key `c:alice` with her plan's policy,
/// `ip:203.0.113.9` for an anonymous caller, `r:orders` for a route-global limit,
/// `r:orders:c:alice` for a per-route-per-caller limit.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Who or what is counted; every window of every policy on this key lives together
    /// (one Redis Cluster slot).
    pub key: &'a str,
    /// The windows and cap that apply to it.
    pub policy: &'a Policy,
}

impl<'a> Subject<'a> {
    /// `key` limited by `policy`.
    pub fn new(key: &'a str, policy: &'a Policy) -> Self {
        Subject { key, policy }
    }

    /// Entries this subject contributes to a decision: its windows, then its cap, then
    /// its block.
    pub(crate) fn entries(&self) -> usize {
        self.policy.windows.len()
            + usize::from(self.policy.concurrency.is_some())
            + usize::from(self.policy.block_for.is_some())
    }
}

/// `limit` shared among `instances` (at least one): rounded up, so a non-zero limit
/// stays non-zero; the instances together may exceed it by at most `instances - 1`.
pub(crate) fn share(limit: u64, instances: u32) -> u64 {
    limit.div_ceil(u64::from(instances.max(1)))
}

/// A duration in whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(windows: &[(u64, u64)]) -> Policy {
        Policy::new(
            "gold",
            Algorithm::FixedWindow,
            windows
                .iter()
                .map(|&(limit, ms)| Window::new(limit, Duration::from_millis(ms)))
                .collect(),
        )
    }

    #[test]
    fn a_plain_policy_is_valid() {
        assert_eq!(policy(&[(10, 1000), (100, 60_000)]).validate(), Ok(()));
        assert_eq!(policy(&[]).with_concurrency(3).validate(), Ok(()));
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert!(matches!(policy(&[]).validate(), Err(PolicyError::Empty(_))));
        assert!(matches!(
            policy(&[(10, 0)]).validate(),
            Err(PolicyError::BadPeriod { .. })
        ));
        let sub_ms = Policy::new(
            "p",
            Algorithm::TokenBucket,
            vec![Window::new(1, Duration::from_micros(1500))],
        );
        assert!(matches!(
            sub_ms.validate(),
            Err(PolicyError::BadPeriod { .. })
        ));
        assert!(matches!(
            policy(&[(10, 1000), (20, 1000)]).validate(),
            Err(PolicyError::DuplicatePeriod { .. })
        ));
        assert!(matches!(
            policy(&[(MAX_LIMIT + 1, 1000)]).validate(),
            Err(PolicyError::TooLarge { .. })
        ));
        for name in ["", "tab\there", "é", &"x".repeat(65)] {
            let mut p = policy(&[(1, 1000)]);
            p.name = name.into();
            assert!(
                matches!(p.validate(), Err(PolicyError::BadName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn shares_round_up_and_never_divide_by_zero() {
        assert_eq!(share(100, 3), 34);
        assert_eq!(share(1, 8), 1);
        assert_eq!(share(0, 8), 0);
        assert_eq!(share(10, 0), 10);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(0)), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }
}
