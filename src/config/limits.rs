//! One validation of rate limits, shared by every place a limit comes from (the file's
//! plans, anonymous and route limits; plans written through the admin API; plans read
//! from the database), and the one conversion of a limit into the limiter's [`Policy`].
//! A limit [`check`] accepts is one the limiter runs: [`policy`] cannot fail on it.

use super::model::{LimitSpec, WindowSpec};
use crate::limit::{Algorithm, Policy, PolicyError, Window, MAX_LIMIT, MAX_PERIOD};
use std::fmt;
use std::time::Duration;

/// The field of a limit a problem is about; each source names it its own way (the file
/// says `limits[0].per`, the admin API `limits[0].per_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitField {
    /// The list of windows as a whole.
    Limits,
    /// `limits[i].requests`.
    Requests(usize),
    /// `limits[i].per` (the file) or `limits[i].per_seconds` (the admin API).
    Per(usize),
    /// `limits[i].burst`.
    Burst(usize),
    /// `concurrency`.
    Concurrency,
    /// `block_for`.
    BlockFor,
}

impl LimitField {
    /// The field's path, with `per` as the name of a window's length.
    pub fn path(&self, per: &str) -> String {
        match self {
            LimitField::Limits => "limits".into(),
            LimitField::Requests(i) => format!("limits[{i}].requests"),
            LimitField::Per(i) => format!("limits[{i}].{per}"),
            LimitField::Burst(i) => format!("limits[{i}].burst"),
            LimitField::Concurrency => "concurrency".into(),
            LimitField::BlockFor => "block_for".into(),
        }
    }
}

/// One problem of a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitProblem {
    /// Where.
    pub field: LimitField,
    /// What is wrong, for the operator.
    pub message: String,
}

impl fmt::Display for LimitProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field.path("per"), self.message)
    }
}

/// Every problem of `spec`, in field order: at least one window or a concurrency cap;
/// per window, `requests` from 1 to 2^53, `per` whole seconds from 1 s to 366 days,
/// `burst` from 1 to 2^53, for a token bucket with a refill period
/// (`per × burst / requests`) of at most 366 days, no two windows of one length (for a
/// token bucket: of one refill period); `concurrency` from 1 to 2^53; `block_for` whole
/// seconds from 1 s to 366 days.
pub fn check(spec: &LimitSpec) -> Vec<LimitProblem> {
    let mut problems = Vec::new();
    let mut push = |field, message: String| problems.push(LimitProblem { field, message });
    if spec.windows.is_empty() && spec.concurrency.is_none() {
        push(
            LimitField::Limits,
            "list at least one window (or a concurrency cap)".into(),
        );
    }
    let mut periods: Vec<Duration> = Vec::with_capacity(spec.windows.len());
    for (i, w) in spec.windows.iter().enumerate() {
        let mut usable = true;
        if let Some(message) = count_problem(w.requests) {
            push(LimitField::Requests(i), message);
            usable = false;
        }
        if w.per < Duration::from_secs(1) || w.per.subsec_nanos() != 0 {
            push(
                LimitField::Per(i),
                "must be a whole number of seconds, at least 1".into(),
            );
            usable = false;
        } else if w.per > MAX_PERIOD {
            push(
                LimitField::Per(i),
                format!("must be at most {} s (366 days)", MAX_PERIOD.as_secs()),
            );
            usable = false;
        }
        // A burst on another algorithm is ignored by the limiter (the file refuses it as
        // a likely mistake, see `config::validate`); stored plans may carry one.
        if let Some(message) = w.burst.and_then(count_problem) {
            push(LimitField::Burst(i), message);
            usable = false;
        }
        if !usable {
            continue;
        }
        let period = window(spec.algorithm, w).period;
        if period > MAX_PERIOD {
            push(
                LimitField::Burst(i),
                format!(
                    "refills over per × burst / requests = {} s, more than {} s: \
                     use a smaller burst or a higher rate",
                    period.as_secs(),
                    MAX_PERIOD.as_secs()
                ),
            );
        } else if periods.contains(&period) {
            push(
                LimitField::Per(i),
                match spec.algorithm {
                    Algorithm::TokenBucket => {
                        "two windows with the same refill period (per × burst / requests)"
                    }
                    _ => "two windows of the same length",
                }
                .into(),
            );
        } else {
            periods.push(period);
        }
    }
    if let Some(message) = spec.concurrency.and_then(count_problem) {
        push(LimitField::Concurrency, message);
    }
    problems.extend(block_problem(spec));
    problems
}

/// Every problem of a plan's limits. A plan with neither windows nor a concurrency cap
/// is an unlimited plan, as in the file: nothing is exceeded, so a `block_for` on it
/// (range-checked still) never applies. Any other plan follows [`check`].
pub fn check_plan(spec: &LimitSpec) -> Vec<LimitProblem> {
    if spec.windows.is_empty() && spec.concurrency.is_none() {
        block_problem(spec).into_iter().collect()
    } else {
        check(spec)
    }
}

/// The problem of `block_for`, if any: whole seconds from 1 s to [`MAX_PERIOD`].
fn block_problem(spec: &LimitSpec) -> Option<LimitProblem> {
    let block = spec.block_for?;
    (block < Duration::from_secs(1) || block.subsec_nanos() != 0 || block > MAX_PERIOD).then(|| {
        LimitProblem {
            field: LimitField::BlockFor,
            message: format!(
                "must be a whole number of seconds from 1 s to {} s (366 days)",
                MAX_PERIOD.as_secs()
            ),
        }
    })
}

/// What is wrong with a count (requests, burst, concurrency): zero, or beyond what the
/// limiter counts exactly.
fn count_problem(n: u64) -> Option<String> {
    match n {
        0 => Some("must be at least 1".into()),
        n if n > MAX_LIMIT => Some(format!("must be at most {MAX_LIMIT}")),
        _ => None,
    }
}

/// Why a limit cannot become a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitSpecError {
    /// The first problem [`check`] reports.
    #[error("{0}")]
    Spec(LimitProblem),
    /// The limiter refuses the policy (its name; a spec that passes [`check`] has limits
    /// the limiter accepts).
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The limiter's policy named `name` for `spec`. A token bucket of `requests` per `per`
/// with `burst` holds `burst` tokens and refills them in `per × burst / requests`.
pub fn policy(name: &str, spec: &LimitSpec) -> Result<Policy, LimitSpecError> {
    if let Some(problem) = check(spec).into_iter().next() {
        return Err(LimitSpecError::Spec(problem));
    }
    let windows = spec
        .windows
        .iter()
        .map(|w| window(spec.algorithm, w))
        .collect();
    let mut policy = Policy::new(name, spec.algorithm, windows);
    if let Some(cap) = spec.concurrency {
        policy = policy.with_concurrency(cap);
    }
    if let Some(block) = spec.block_for {
        policy = policy.with_block_for(block);
    }
    policy.validate()?;
    Ok(policy)
}

/// The limiter's window for `w`.
fn window(algorithm: Algorithm, w: &WindowSpec) -> Window {
    match (algorithm, w.burst) {
        (Algorithm::TokenBucket, Some(burst)) if burst != w.requests => {
            let millis =
                (w.per.as_millis() * u128::from(burst) / u128::from(w.requests.max(1))).max(1);
            Window::new(
                burst,
                Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)),
            )
        }
        _ => Window::new(w.requests, w.per),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithm: Algorithm, windows: &[(u64, u64, Option<u64>)]) -> LimitSpec {
        LimitSpec {
            algorithm,
            windows: windows
                .iter()
                .map(|&(requests, secs, burst)| WindowSpec {
                    requests,
                    per: Duration::from_secs(secs),
                    burst,
                })
                .collect(),
            concurrency: None,
            block_for: None,
        }
    }

    fn fields(spec: &LimitSpec) -> Vec<String> {
        check(spec)
            .iter()
            .map(|p| p.field.path("per_seconds"))
            .collect()
    }

    #[test]
    fn what_the_check_accepts_the_limiter_runs_and_what_it_refuses_it_refuses() {
        use Algorithm::*;
        let cases = [
            (spec(FixedWindow, &[(10, 1, None), (100, 60, None)]), vec![]),
            (spec(TokenBucket, &[(10, 1, Some(50))]), vec![]),
            (
                spec(FixedWindow, &[(10, 60, None), (20, 60, None)]),
                vec!["limits[1].per_seconds"],
            ),
            (
                spec(FixedWindow, &[(10, 400 * 86400, None)]),
                vec!["limits[0].per_seconds"],
            ),
            // Refills 1 token per day, a burst of 1,000 takes 1,000 days.
            (
                spec(TokenBucket, &[(1, 86400, Some(1000))]),
                vec!["limits[0].burst"],
            ),
            // Different rates, one refill period (2 min): one counter in the limiter.
            (
                spec(TokenBucket, &[(10, 60, Some(20)), (5, 120, None)]),
                vec!["limits[1].per_seconds"],
            ),
            (
                spec(FixedWindow, &[(0, 1, None), (1, 0, None), (1, 5, Some(0))]),
                vec![
                    "limits[0].requests",
                    "limits[1].per_seconds",
                    "limits[2].burst",
                ],
            ),
            // Ignored on a fixed window (the file refuses it, see config::validate).
            (spec(FixedWindow, &[(1, 86400, Some(1000))]), vec![]),
            (
                spec(TokenBucket, &[(MAX_LIMIT + 1, 1, Some(0))]),
                vec!["limits[0].requests", "limits[0].burst"],
            ),
            (spec(FixedWindow, &[]), vec!["limits"]),
        ];
        for (spec, expected) in cases {
            assert_eq!(fields(&spec), expected, "{spec:?}");
            assert_eq!(policy("p", &spec).is_ok(), expected.is_empty(), "{spec:?}");
        }
        // The refusals that exist for the limiter's sake are the limiter's own: without
        // the check, the limiter refuses these policies.
        for spec in [
            spec(TokenBucket, &[(1, 86400, Some(1000))]),
            spec(TokenBucket, &[(10, 60, Some(20)), (5, 120, None)]),
            spec(FixedWindow, &[(10, 60, None), (20, 60, None)]),
            spec(FixedWindow, &[(10, 400 * 86400, None)]),
        ] {
            let windows = spec.windows.iter().map(|w| window(spec.algorithm, w));
            let unchecked = Policy::new("p", Algorithm::TokenBucket, windows.collect());
            assert!(unchecked.validate().is_err(), "{spec:?}");
        }
        let mut capped = spec(FixedWindow, &[]);
        capped.concurrency = Some(0);
        assert_eq!(fields(&capped), vec!["concurrency"]);
        capped.concurrency = Some(3);
        assert!(check(&capped).is_empty() && policy("p", &capped).is_ok());
    }
}
