//! The window math of the three algorithms, for the in-process limiter.
//!
//! The Lua scripts in `lua/` do the same computations on Redis, in the same order of
//! floating-point operations, so both limiters decide alike: change both together.
//! Times are milliseconds; `now` may go backwards (wall clocks do), which never
//! refills or rolls a window back.

use super::policy::Algorithm;

/// One window's verdict and standing (also what the Lua script returns per window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The request fits in this window.
    pub allowed: bool,
    /// Units left after this request (before it, when refused or peeking).
    pub remaining: u64,
    /// Until the window is back to its full limit if nothing more is counted.
    pub reset_ms: u64,
    /// When refused: until a request of this cost would fit. Zero when allowed.
    pub retry_ms: u64,
    /// The window the request was counted in (its start), so an undo can find it.
    pub tag: u64,
}

/// A window's stored state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum State {
    /// Fixed and sliding windows: the current window's start and count, and (sliding)
    /// the previous window's count.
    Counter { start: u64, count: u64, prev: u64 },
    /// Token bucket: tokens left after the last request, and when that was.
    Bucket { tokens: f64, updated: u64 },
}

/// What one request does to one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Check {
    pub outcome: Outcome,
    /// The state to store if every window allows (and the request counts).
    pub next: State,
    /// How long `next` matters: after that a missing state means the same thing.
    pub ttl_ms: u64,
}

/// The request as one window sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub now: u64,
    pub limit: u64,
    /// Milliseconds, at least one.
    pub period: u64,
    pub cost: u64,
    /// False for a peek: `remaining` and `reset_ms` then leave `cost` out.
    pub counting: bool,
}

/// Checks `request` against a window of `algorithm` whose state is `state` (`None`:
/// never used, or expired).
pub(crate) fn check(algorithm: Algorithm, state: Option<&State>, request: &Request) -> Check {
    match algorithm {
        Algorithm::FixedWindow => fixed(state, request),
        Algorithm::SlidingWindow => sliding(state, request),
        Algorithm::TokenBucket => token_bucket(state, request),
    }
}

/// Mirrors `fixed_window.check` in lua/fixed_window.lua.
fn fixed(state: Option<&State>, r: &Request) -> Check {
    let mut start = r.now - r.now % r.period;
    let mut count = 0;
    if let Some(&State::Counter {
        start: s, count: c, ..
    }) = state
    {
        // s > start only if the clock went back: stay in the stored window.
        if s >= start {
            start = s;
            count = c;
        }
    }
    let allowed = count.saturating_add(r.cost) <= r.limit;
    let used = if allowed && r.counting {
        count + r.cost
    } else {
        count
    };
    let left = (start + r.period).saturating_sub(r.now);
    Check {
        outcome: Outcome {
            allowed,
            remaining: r.limit.saturating_sub(used),
            reset_ms: if used > 0 { left } else { 0 },
            retry_ms: if allowed { 0 } else { left.max(1) },
            tag: start,
        },
        next: State::Counter {
            start,
            count: used,
            prev: 0,
        },
        ttl_ms: left,
    }
}

/// Mirrors `sliding_window.check` in lua/sliding_window.lua.
fn sliding(state: Option<&State>, r: &Request) -> Check {
    let period = r.period;
    let mut start = r.now - r.now % period;
    let (mut cur, mut prev) = (0, 0);
    if let Some(&State::Counter {
        start: s,
        count: c,
        prev: p,
    }) = state
    {
        if s >= start {
            // s > start only if the clock went back: stay in the stored window.
            start = s;
            cur = c;
            prev = p;
        } else if s + period == start {
            prev = c;
        }
    }
    let elapsed = r.now.saturating_sub(start).min(period);
    let weight = (period - elapsed) as f64 / period as f64;
    let (limit_f, prev_f) = (r.limit as f64, prev as f64);
    let allowed = prev_f * weight + cur as f64 + r.cost as f64 <= limit_f;
    let used = if allowed && r.counting {
        cur + r.cost
    } else {
        cur
    };
    let remaining = (limit_f - (prev_f * weight + used as f64)).floor().max(0.0) as u64;
    let to_roll = (start + period).saturating_sub(r.now);
    let reset_ms = if used > 0 {
        to_roll + period
    } else if prev > 0 {
        to_roll
    } else {
        0
    };
    let retry_ms = if allowed {
        0
    } else if r.cost > r.limit {
        to_roll + period
    } else if cur + r.cost <= r.limit {
        // Wait until the previous window's weight has dropped enough.
        // (prev - slack) > 0 here; multiplying first keeps whole numbers exact.
        let slack = r.limit - cur - r.cost;
        (period as f64 * (prev - slack) as f64 / prev_f - elapsed as f64).ceil() as u64
    } else {
        // Wait for the next window, then until this one (as the previous) weighs little
        // enough.
        to_roll + (period as f64 * (cur - (r.limit - r.cost)) as f64 / cur as f64).ceil() as u64
    };
    Check {
        outcome: Outcome {
            allowed,
            remaining,
            reset_ms,
            retry_ms: if allowed { 0 } else { retry_ms.max(1) },
            tag: start,
        },
        next: State::Counter {
            start,
            count: used,
            prev,
        },
        ttl_ms: to_roll + period,
    }
}

/// Mirrors `token_bucket.check` in lua/token_bucket.lua.
fn token_bucket(state: Option<&State>, r: &Request) -> Check {
    let (limit_f, period_f, cost_f) = (r.limit as f64, r.period as f64, r.cost as f64);
    let (mut tokens, mut updated) = match state {
        Some(&State::Bucket { tokens, updated }) => (tokens, updated),
        _ => (limit_f, r.now),
    };
    // The clock may have gone back: never refill for negative time, never move back.
    let elapsed = r.now.saturating_sub(updated);
    tokens = limit_f.min(tokens + elapsed as f64 * limit_f / period_f);
    updated = updated.max(r.now);
    let allowed = tokens >= cost_f;
    let after = if allowed && r.counting {
        tokens - cost_f
    } else {
        tokens
    };
    let reset_ms = if r.limit > 0 {
        ((limit_f - after) * period_f / limit_f).ceil().max(0.0) as u64
    } else {
        0
    };
    let retry_ms = if allowed {
        0
    } else if r.cost > r.limit {
        r.period
    } else {
        (((cost_f - tokens) * period_f / limit_f).ceil() as u64).max(1)
    };
    Check {
        outcome: Outcome {
            allowed,
            remaining: after.floor().max(0.0) as u64,
            reset_ms,
            retry_ms,
            tag: 0,
        },
        next: State::Bucket {
            tokens: after,
            updated,
        },
        ttl_ms: reset_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `requests` (time, cost) against one window, storing the state as the
    /// limiter would (only when allowed), and returns the outcomes.
    fn run(algorithm: Algorithm, limit: u64, period: u64, requests: &[(u64, u64)]) -> Vec<Outcome> {
        let mut state = None;
        requests
            .iter()
            .map(|&(now, cost)| {
                let request = Request {
                    now,
                    limit,
                    period,
                    cost,
                    counting: true,
                };
                let c = check(algorithm, state.as_ref(), &request);
                if c.outcome.allowed {
                    state = Some(c.next);
                }
                c.outcome
            })
            .collect()
    }

    fn allowed(outcomes: &[Outcome]) -> Vec<bool> {
        outcomes.iter().map(|o| o.allowed).collect()
    }

    #[test]
    fn fixed_window_counts_exactly_and_resets_at_the_boundary() {
        // Window [10_000, 11_000): three fit, the fourth does not, the next window is fresh.
        let out = run(
            Algorithm::FixedWindow,
            3,
            1000,
            &[
                (10_100, 1),
                (10_200, 1),
                (10_300, 1),
                (10_400, 1),
                (11_000, 1),
            ],
        );
        assert_eq!(allowed(&out), [true, true, true, false, true]);
        assert_eq!(out[0].remaining, 2);
        assert_eq!(out[0].reset_ms, 900);
        assert_eq!(out[0].tag, 10_000);
        assert_eq!(out[3].remaining, 0);
        assert_eq!(out[3].retry_ms, 600);
        assert_eq!(out[4].remaining, 2);
        assert_eq!(out[4].tag, 11_000);
    }

    #[test]
    fn fixed_window_refuses_a_cost_that_does_not_fit_without_counting_it() {
        let out = run(Algorithm::FixedWindow, 10, 1000, &[(0, 8), (1, 5), (2, 2)]);
        assert_eq!(allowed(&out), [true, false, true]);
        assert_eq!(out[1].remaining, 2, "the refused request counted nothing");
        assert_eq!(out[2].remaining, 0);
    }

    #[test]
    fn peeking_counts_nothing() {
        let state = State::Counter {
            start: 0,
            count: 4,
            prev: 0,
        };
        let peek = check(
            Algorithm::FixedWindow,
            Some(&state),
            &Request {
                now: 500,
                limit: 10,
                period: 1000,
                cost: 1,
                counting: false,
            },
        );
        assert!(peek.outcome.allowed);
        assert_eq!(peek.outcome.remaining, 6);
        assert_eq!(peek.next, state);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        // 10 in window [0, 1000); at 1250 the previous window still weighs 0.75 → 7.5,
        // so two more fit (9.5), a third does not (10.5).
        let mut requests: Vec<(u64, u64)> = (0..10).map(|i| (i * 10, 1)).collect();
        requests.extend([(1250, 1), (1250, 1), (1250, 1)]);
        let out = run(Algorithm::SlidingWindow, 10, 1000, &requests);
        assert_eq!(allowed(&out[10..]), [true, true, false]);
        assert_eq!(out[10].remaining, 1); // floor(10 - 8.5)
        assert_eq!(out[11].remaining, 0); // floor(10 - 9.5)
                                          // Refused with cur = 2: wait until 10*(1 - e/1000) + 2 + 1 <= 10, e >= 300.
        assert_eq!(out[12].retry_ms, 50);
        // Right after the roll the previous window weighs (almost) fully; near the end
        // of the next window it weighs a tenth: 1 + 8 fits, 1 + 8 + 2 does not.
        let late = run(
            Algorithm::SlidingWindow,
            10,
            1000,
            &[(0, 10), (1000, 1), (1900, 8), (1900, 2)],
        );
        assert_eq!(allowed(&late), [true, false, true, false]);
    }

    #[test]
    fn sliding_window_forgets_windows_older_than_the_previous() {
        let out = run(Algorithm::SlidingWindow, 5, 1000, &[(0, 5), (2000, 5)]);
        assert_eq!(allowed(&out), [true, true]);
        assert_eq!(out[1].reset_ms, 2000);
    }

    #[test]
    fn sliding_window_retry_covers_a_full_current_window() {
        // cur = 5 = limit at 100: wait for the next window (900) and then until 5*(1-e/1000)+1 <= 5 → e >= 200.
        let out = run(Algorithm::SlidingWindow, 5, 1000, &[(100, 5), (100, 1)]);
        assert!(!out[1].allowed);
        assert_eq!(out[1].retry_ms, 900 + 200);
        assert_eq!(out[1].reset_ms, 1900);
    }

    #[test]
    fn token_bucket_refills_at_its_rate_and_caps_at_its_burst() {
        // Burst 4, refill 4 per 1000 ms (one per 250 ms).
        let out = run(
            Algorithm::TokenBucket,
            4,
            1000,
            &[
                (0, 1),
                (0, 1),
                (0, 1),
                (0, 1),
                (0, 1),   // empty
                (249, 1), // 0.996 tokens
                (250, 1), // one token
                (250, 1),
                (100_000, 4), // long idle: full again, but never more than the burst
                (100_000, 1),
            ],
        );
        assert_eq!(
            allowed(&out),
            [true, true, true, true, false, false, true, false, true, false]
        );
        assert_eq!(out[3].remaining, 0);
        assert_eq!(out[3].reset_ms, 1000);
        assert_eq!(out[4].retry_ms, 250);
        // 0.004 tokens short: one millisecond, give or take floating-point rounding.
        assert!((1..=2).contains(&out[5].retry_ms), "{}", out[5].retry_ms);
        assert_eq!(out[0].tag, 0);
    }

    #[test]
    fn token_bucket_with_a_cost_above_the_burst_never_fits() {
        let out = run(Algorithm::TokenBucket, 4, 1000, &[(0, 5)]);
        assert!(!out[0].allowed);
        assert_eq!(out[0].remaining, 4);
        assert_eq!(out[0].retry_ms, 1000);
    }

    #[test]
    fn a_clock_going_back_neither_refills_nor_reopens_a_window() {
        let out = run(Algorithm::FixedWindow, 2, 1000, &[(5500, 2), (4900, 1)]);
        assert_eq!(allowed(&out), [true, false]);
        let out = run(
            Algorithm::TokenBucket,
            2,
            1000,
            &[(5000, 2), (4000, 1), (5000, 1)],
        );
        assert_eq!(allowed(&out), [true, false, false]);
        let out = run(Algorithm::SlidingWindow, 2, 1000, &[(5500, 2), (4900, 1)]);
        assert_eq!(allowed(&out), [true, false]);
    }

    #[test]
    fn a_zero_limit_refuses_everything_but_a_zero_cost() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            let out = run(algorithm, 0, 1000, &[(0, 1), (0, 0)]);
            assert_eq!(allowed(&out), [false, true], "{algorithm:?}");
            assert!(out[0].retry_ms >= 1, "{algorithm:?}");
        }
    }
}
