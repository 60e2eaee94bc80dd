//! The limit phase: which subjects a request is counted against, with which policies, and
//! how the limiter's decision becomes headers, a 429, or a caller's standing report.
//!
//! Subjects of one request (all checked in one limiter call; the strictest decides):
//! - the caller under its plan (`c:<consumer>`), or an anonymous caller by IP (`ip:<addr>`)
//!   under `rate_limit.anonymous`;
//! - the route's own per-caller limit (`r:<route>:<caller>`);
//! - the route's global limit (`r:<route>`).

use crate::auth::Identity;
use crate::config::{Config, FailureMode, LimitAlgorithm, LimitSpec, PlanSpec, RouteSpec};
use crate::limit::{self, Algorithm, Decision, Policy, PolicyError, Subject, Window, WindowKind};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Policies that do not depend on the route, built once per config snapshot.
pub struct LimitPolicies {
    plans: HashMap<String, Policy>,
    anonymous: Option<Policy>,
    default_plan: Option<String>,
    failure_mode: limit::FailureMode,
}

/// A route's own policies.
pub struct RoutePolicies {
    per_caller: Option<Policy>,
    global: Option<Policy>,
    failure_mode: limit::FailureMode,
}

/// Why the config's limits cannot be used (the reload is refused).
#[derive(Debug, thiserror::Error)]
#[error("rate limit {place}: {source}")]
pub struct LimitSetupError {
    place: String,
    source: PolicyError,
}

impl LimitPolicies {
    /// Plans and the anonymous policy from the config.
    pub fn from_config(
        config: &Config,
        stored_plans: &[PlanSpec],
    ) -> Result<Self, LimitSetupError> {
        let settings = &config.rate_limit;
        let mut plans = HashMap::new();
        // Plans from the database win over plans of the same name in the file.
        for plan in config.plans.iter().chain(stored_plans) {
            if let Some(spec) = &plan.limits {
                plans.insert(
                    plan.name.clone(),
                    policy(&plan.name, spec, &format!("plan {}", plan.name))?,
                );
            }
        }
        Ok(LimitPolicies {
            plans,
            anonymous: settings
                .anonymous
                .as_ref()
                .map(|spec| policy("anonymous", spec, "rate_limit.anonymous"))
                .transpose()?,
            default_plan: settings.default_plan.clone(),
            failure_mode: failure_mode(settings.failure_mode, settings.expected_instances),
        })
    }

    /// What happens when Redis cannot be reached (`rate_limit.failure_mode`).
    pub fn failure_mode(&self) -> limit::FailureMode {
        self.failure_mode
    }

    /// The route's own policies.
    pub fn for_route(
        &self,
        route: &RouteSpec,
        config: &Config,
    ) -> Result<RoutePolicies, LimitSetupError> {
        let place = format!("route {}", route.name);
        Ok(RoutePolicies {
            per_caller: route
                .limits
                .per_caller
                .as_ref()
                .map(|spec| policy(&format!("route:{}", route.name), spec, &place))
                .transpose()?,
            global: route
                .limits
                .global
                .as_ref()
                .map(|spec| policy(&format!("route:{}:all", route.name), spec, &place))
                .transpose()?,
            failure_mode: route.limits.failure_mode.map_or(self.failure_mode, |m| {
                failure_mode(m, config.rate_limit.expected_instances)
            }),
        })
    }

    /// The policy limiting this caller across routes: its plan's (or the default plan's)
    /// for identified callers, the anonymous policy otherwise.
    fn caller_policy(&self, identity: &Identity) -> Option<&Policy> {
        if identity.consumer_id().is_none() {
            return self.anonymous.as_ref();
        }
        identity
            .plan()
            .and_then(|plan| self.plans.get(plan))
            .or_else(|| {
                self.default_plan
                    .as_ref()
                    .and_then(|plan| self.plans.get(plan))
            })
    }
}

/// The subject keys of one request, kept alive while the limiter borrows them.
pub struct RequestSubjects<'a> {
    keys: Vec<String>,
    policies: Vec<&'a Policy>,
    pub failure_mode: limit::FailureMode,
}

impl<'a> RequestSubjects<'a> {
    /// Everything `identity` is counted against on `route` (empty: nothing to limit).
    pub fn new(
        policies: &'a LimitPolicies,
        route: &'a RoutePolicies,
        route_name: &str,
        identity: &Identity,
    ) -> Self {
        let caller_policy = policies.caller_policy(identity);
        let mut out = RequestSubjects {
            keys: Vec::new(),
            policies: Vec::new(),
            failure_mode: route.failure_mode,
        };
        // Nothing is allocated for a request that no limit applies to.
        if caller_policy.is_none() && route.per_caller.is_none() && route.global.is_none() {
            return out;
        }
        let caller = caller_key(identity);
        if let Some(p) = &route.per_caller {
            out.keys.push(format!("r:{route_name}:{caller}"));
            out.policies.push(p);
        }
        if let Some(p) = caller_policy {
            out.keys.push(caller);
            out.policies.push(p);
        }
        if let Some(p) = &route.global {
            out.keys.push(format!("r:{route_name}"));
            out.policies.push(p);
        }
        out
    }

    /// The caller's own subjects only (for the standing report).
    pub fn caller_only(policies: &'a LimitPolicies, identity: &Identity) -> Self {
        let mut out = RequestSubjects {
            keys: Vec::with_capacity(1),
            policies: Vec::with_capacity(1),
            failure_mode: policies.failure_mode,
        };
        if let Some(p) = policies.caller_policy(identity) {
            out.keys.push(caller_key(identity));
            out.policies.push(p);
        }
        out
    }

    /// `true` when nothing limits this request.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The subjects, as the limiter takes them.
    pub fn subjects(&self) -> Vec<Subject<'_>> {
        self.keys
            .iter()
            .zip(&self.policies)
            .map(|(key, policy)| Subject::new(key, policy))
            .collect()
    }
}

/// `c:<consumer>` or `ip:<address>`.
fn caller_key(identity: &Identity) -> String {
    match identity.consumer_id() {
        Some(id) => consumer_subject(id),
        None => format!("ip:{}", identity.client_ip),
    }
}

/// The limiter subject of a consumer (shared with the admin API's peek and reset).
pub fn consumer_subject(consumer_id: &str) -> String {
    format!("c:{consumer_id}")
}

/// The limiter policy of plan `name` with limits `spec`, built exactly as the proxy
/// builds it (the admin API peeks at a consumer's windows with it).
pub fn plan_policy(name: &str, spec: &LimitSpec) -> Result<Policy, LimitSetupError> {
    policy(name, spec, &format!("plan {name}"))
}

/// A limiter policy from a config limit. A token bucket of `requests` per `per` with
/// `burst` holds `burst` tokens and refills `burst` of them in `per × burst / requests`.
fn policy(name: &str, spec: &LimitSpec, place: &str) -> Result<Policy, LimitSetupError> {
    let algorithm = match spec.algorithm {
        LimitAlgorithm::FixedWindow => Algorithm::FixedWindow,
        LimitAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
        LimitAlgorithm::TokenBucket => Algorithm::TokenBucket,
    };
    let windows = spec
        .windows
        .iter()
        .map(|w| match (spec.algorithm, w.burst) {
            (LimitAlgorithm::TokenBucket, Some(burst)) if burst != w.requests => {
                let millis = (w.per.as_millis() * burst as u128 / w.requests.max(1) as u128).max(1);
                Window::new(burst, Duration::from_millis(millis as u64))
            }
            _ => Window::new(w.requests, w.per),
        })
        .collect();
    let mut policy = Policy::new(name, algorithm, windows);
    if let Some(cap) = spec.concurrency {
        policy = policy.with_concurrency(cap);
    }
    policy.validate().map_err(|source| LimitSetupError {
        place: place.to_string(),
        source,
    })?;
    Ok(policy)
}

fn failure_mode(mode: FailureMode, expected_instances: u32) -> limit::FailureMode {
    match mode {
        FailureMode::Local => limit::FailureMode::Local { expected_instances },
        FailureMode::Open => limit::FailureMode::Open,
        FailureMode::Closed => limit::FailureMode::Closed,
    }
}

/// A caller's standing, as `GET <status_path>` answers it.
#[derive(Serialize)]
pub struct Standing<'a> {
    pub consumer: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub auth: &'static str,
    pub windows: Vec<WindowReport>,
}

/// One window of a standing report.
#[derive(Serialize)]
pub struct WindowReport {
    pub policy: String,
    /// `rate` or `concurrency`.
    pub kind: &'static str,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// Seconds until the window resets (rate windows).
    pub reset: u64,
    /// The window's length in seconds (rate windows).
    pub window: u64,
}

/// The windows of a peek, for the report.
pub fn window_reports(decision: &Decision) -> Vec<WindowReport> {
    decision
        .windows
        .iter()
        .map(|w| WindowReport {
            policy: w.policy.to_string(),
            kind: match w.kind {
                WindowKind::Rate => "rate",
                WindowKind::Concurrency => "concurrency",
            },
            limit: w.limit,
            used: w.limit.saturating_sub(w.remaining),
            remaining: w.remaining,
            reset: w.reset_after.as_secs_f64().ceil() as u64,
            window: w.period.as_secs_f64().ceil() as u64,
        })
        .collect()
}

/// The policy that refused a request, and when to come back (seconds, at least 1).
pub fn refusal(decision: &Decision) -> (String, u64) {
    let policy = decision
        .refused_by
        .and_then(|i| decision.windows.get(i))
        .map_or_else(|| "unknown".to_string(), |w| w.policy.to_string());
    let retry = decision
        .retry_after
        .map_or(1, |d| d.as_secs_f64().ceil() as u64)
        .max(1);
    (policy, retry)
}
