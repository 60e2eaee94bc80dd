//! The limit phase: which subjects a request is counted against, with which policies, and
//! how the limiter's decision becomes headers, a 429, or a caller's standing report.
//!
//! Subjects of one request (all checked in one limiter call; the strictest decides):
//! - the caller under its plan (`c:<consumer>`), or an anonymous caller by IP (`ip:<addr>`)
//!   under `rate_limit.anonymous`;
//! - the route's own per-caller limit (`r:<route>:<caller>`);
//! - the route's global limit (`r:<route>`).

use crate::auth::client_ip::ClientNetwork;
use crate::auth::Identity;
use crate::config::limits::{self, LimitSpecError};
use crate::config::{Config, FailureMode, LimitSpec, PlanSpec, RouteSpec};
use crate::limit::{self, Decision, Policy, Subject, WindowKind};
use serde::Serialize;
use std::collections::HashMap;

/// Policies that do not depend on the route, built once per config snapshot.
pub struct LimitPolicies {
    /// Every known plan; `None`: a plan without limits (its callers are unlimited).
    plans: HashMap<String, Option<Policy>>,
    anonymous: Option<Policy>,
    default_plan: Option<String>,
    failure_mode: limit::FailureMode,
    /// Leading bits of an IPv6 address that count as one anonymous caller.
    ipv6_prefix: u8,
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
    source: LimitSpecError,
}

impl LimitPolicies {
    /// Plans and the anonymous policy from the config.
    pub fn from_config(
        config: &Config,
        stored_plans: &[PlanSpec],
    ) -> Result<Self, LimitSetupError> {
        let settings = &config.rate_limit;
        let mut plans = HashMap::new();
        for plan in &config.plans {
            let policy = plan
                .limits
                .as_ref()
                .map(|spec| plan_policy(&plan.name, spec));
            plans.insert(plan.name.clone(), policy.transpose()?);
        }
        // Plans from the database win over plans of the same name in the file. One that
        // the limiter cannot run (written before its rules were checked on write, or by
        // hand) is skipped: its consumers get the default plan, and the instance serves.
        let mut invalid = 0;
        for plan in stored_plans {
            match plan
                .limits
                .as_ref()
                .map(|spec| plan_policy(&plan.name, spec))
            {
                Some(Err(e)) => {
                    invalid += 1;
                    log::error!("{e} (stored plan skipped; its consumers get the default plan)");
                }
                policy => {
                    plans.insert(plan.name.clone(), policy.transpose()?);
                }
            }
        }
        crate::metrics::INVALID_PLANS.set(invalid);
        Ok(LimitPolicies {
            plans,
            anonymous: settings
                .anonymous
                .as_ref()
                .map(|spec| policy("anonymous", spec, "rate_limit.anonymous"))
                .transpose()?,
            default_plan: settings.default_plan.clone(),
            failure_mode: failure_mode(settings.failure_mode, settings.expected_instances),
            ipv6_prefix: settings.ipv6_prefix,
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

    /// The policy limiting this caller across routes: the anonymous policy for anonymous
    /// callers; for identified ones their plan's, or the default plan's when their plan is
    /// unset or unknown. `None`: unlimited (also a known plan without limits).
    fn caller_policy(&self, identity: &Identity) -> Option<&Policy> {
        if identity.consumer_id().is_none() {
            return self.anonymous.as_ref();
        }
        let plan = identity
            .plan()
            .and_then(|plan| self.plans.get(plan))
            .or_else(|| {
                self.default_plan
                    .as_ref()
                    .and_then(|plan| self.plans.get(plan))
            });
        plan.and_then(Option::as_ref)
    }

    /// `c:<consumer>`, or `ip:<address>` for an anonymous caller (an IPv6 one by its
    /// network, see [`ClientNetwork`]).
    fn caller_key(&self, identity: &Identity) -> String {
        match identity.consumer_id() {
            Some(id) => consumer_subject(id),
            None => format!(
                "ip:{}",
                ClientNetwork::of(identity.client_ip, self.ipv6_prefix)
            ),
        }
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
        let caller = policies.caller_key(identity);
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
            out.keys.push(policies.caller_key(identity));
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

/// The limiter subject of a consumer (shared with the admin API's peek and reset).
pub fn consumer_subject(consumer_id: &str) -> String {
    format!("c:{consumer_id}")
}

/// Every limiter subject of a consumer under `config`: its plan's, and its own on each
/// route with a per-caller limit (what the admin API's reset clears, blocks included).
pub fn consumer_subjects(config: &Config, consumer_id: &str) -> Vec<String> {
    let caller = consumer_subject(consumer_id);
    let per_route = config
        .routes
        .iter()
        .filter(|r| r.limits.per_caller.is_some())
        .map(|r| format!("r:{}:{caller}", r.name));
    let mut subjects: Vec<String> = per_route.collect();
    subjects.insert(0, caller);
    subjects
}

/// The limiter policy of plan `name` with limits `spec`, built exactly as the proxy
/// builds it (the admin API peeks at a consumer's windows with it).
pub fn plan_policy(name: &str, spec: &LimitSpec) -> Result<Policy, LimitSetupError> {
    policy(name, spec, &format!("plan {name}"))
}

/// A limiter policy from a config limit (see [`limits::policy`]).
fn policy(name: &str, spec: &LimitSpec, place: &str) -> Result<Policy, LimitSetupError> {
    limits::policy(name, spec).map_err(|source| LimitSetupError {
        place: place.to_string(),
        source,
    })
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
                WindowKind::Block => "block",
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
