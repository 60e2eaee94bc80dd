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
use crate::config::{Config, LimitSpec, PlanSpec, RouteSpec};
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

impl RoutePolicies {
    /// The per-caller limit (subjects `r:<route>:<caller>`).
    pub fn per_caller(&self) -> Option<&Policy> {
        self.per_caller.as_ref()
    }

    /// The global limit (subject `r:<route>`).
    pub fn global(&self) -> Option<&Policy> {
        self.global.as_ref()
    }
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
            failure_mode: settings.failure_mode,
            ipv6_prefix: settings.ipv6_prefix,
        })
    }

    /// What happens when Redis cannot be reached (`rate_limit.failure_mode`).
    pub fn failure_mode(&self) -> limit::FailureMode {
        self.failure_mode
    }

    /// The route's own policies.
    pub fn for_route(&self, route: &RouteSpec) -> Result<RoutePolicies, LimitSetupError> {
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
            failure_mode: route.limits.failure_mode.unwrap_or(self.failure_mode),
        })
    }

    /// The policy limiting this caller across routes: the anonymous policy for anonymous
    /// callers; for identified ones their plan's, or the default plan's when their plan is
    /// unset or unknown. `None`: unlimited (also a known plan without limits).
    fn caller_policy(&self, identity: &Identity) -> Option<&Policy> {
        if identity.consumer_id().is_none() {
            return self.anonymous.as_ref();
        }
        self.plan_policy(identity.plan())
    }

    /// The policy of a consumer on `plan`: that plan's, or the default plan's when `plan`
    /// is unset or unknown. `None`: unlimited (also a known plan without limits).
    pub fn plan_policy(&self, plan: Option<&str>) -> Option<&Policy> {
        plan.and_then(|plan| self.plans.get(plan))
            .or_else(|| {
                self.default_plan
                    .as_ref()
                    .and_then(|plan| self.plans.get(plan))
            })
            .and_then(Option::as_ref)
    }

    /// The policy of anonymous callers (`rate_limit.anonymous`).
    pub fn anonymous(&self) -> Option<&Policy> {
        self.anonymous.as_ref()
    }

    /// The leading bits of an IPv6 address that count as one anonymous caller.
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
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

/// A limiter subject as an operator names it: exactly the keys [`RequestSubjects`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectName {
    /// `c:<consumer>`: a consumer under its plan.
    Consumer(String),
    /// `ip:<address>`: an anonymous caller under `rate_limit.anonymous`; an IPv6 one by
    /// its `rate_limit.ipv6_prefix` network (`ip:2001:db8::/64`).
    Anonymous(ClientNetwork),
    /// `r:<route>:<caller>`: a caller (consumer or anonymous) under a route's per-caller
    /// limit.
    RouteCaller {
        /// The route's name.
        route: String,
        /// `Consumer` or `Anonymous`.
        caller: Box<SubjectName>,
    },
    /// `r:<route>`: a route's global limit.
    RouteGlobal(String),
}

/// Why a subject name is not one the limiter uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectNameError {
    /// Not `c:<consumer>`, `ip:<address>`, `r:<route>` or `r:<route>:<caller>`.
    #[error(
        "must be c:<consumer>, ip:<address>, r:<route> or r:<route>:<c:consumer or ip:address>"
    )]
    Form,
    /// A consumer id that breaks the file's rule.
    #[error("consumer id: {}", crate::config::validate::IDENTIFIER_RULE)]
    Consumer,
    /// A route name that breaks the file's rule.
    #[error("route name: {}", crate::config::validate::NAME_RULE)]
    Route,
    /// Not an IP address, nor an IPv6 network of the configured prefix length.
    #[error("ip: an IPv4 or IPv6 address, or an IPv6 network /{0} (rate_limit.ipv6_prefix)")]
    Address(u8),
}

impl SubjectName {
    /// Parses a subject key; an IPv6 address stands for its network of `ipv6_prefix` bits
    /// (the anonymous caller it is counted as), written with or without that prefix.
    pub fn parse(text: &str, ipv6_prefix: u8) -> Result<SubjectName, SubjectNameError> {
        if let Some(rest) = text.strip_prefix("r:") {
            let (route, caller) = match rest.split_once(':') {
                Some((route, caller)) => (route, Some(caller)),
                None => (rest, None),
            };
            if !crate::config::validate::valid_name(route) {
                return Err(SubjectNameError::Route);
            }
            return Ok(match caller {
                None => SubjectName::RouteGlobal(route.to_string()),
                Some(caller) => match SubjectName::parse(caller, ipv6_prefix)? {
                    c @ (SubjectName::Consumer(_) | SubjectName::Anonymous(_)) => {
                        SubjectName::RouteCaller {
                            route: route.to_string(),
                            caller: Box::new(c),
                        }
                    }
                    _ => return Err(SubjectNameError::Form),
                },
            });
        }
        if let Some(id) = text.strip_prefix("c:") {
            if !crate::config::validate::valid_identifier(id) {
                return Err(SubjectNameError::Consumer);
            }
            return Ok(SubjectName::Consumer(id.to_string()));
        }
        let Some(address) = text.strip_prefix("ip:") else {
            return Err(SubjectNameError::Form);
        };
        let bad = || SubjectNameError::Address(ipv6_prefix);
        let (ip, prefix) = match address.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (address, None),
        };
        let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let network = ClientNetwork::of(ip, ipv6_prefix);
        // A network is only one the limiter counts by when it is the configured one.
        if let Some(prefix) = prefix {
            match network {
                ClientNetwork::V6(net) if prefix == net.prefix_len().to_string() => {}
                _ => return Err(bad()),
            }
        }
        Ok(SubjectName::Anonymous(network))
    }

    /// The route this subject is counted on, if any.
    pub fn route(&self) -> Option<&str> {
        match self {
            SubjectName::RouteCaller { route, .. } | SubjectName::RouteGlobal(route) => Some(route),
            SubjectName::Consumer(_) | SubjectName::Anonymous(_) => None,
        }
    }
}

impl std::fmt::Display for SubjectName {
    /// The limiter's key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectName::Consumer(id) => write!(f, "c:{id}"),
            SubjectName::Anonymous(network) => write!(f, "ip:{network}"),
            SubjectName::RouteCaller { route, caller } => write!(f, "r:{route}:{caller}"),
            SubjectName::RouteGlobal(route) => write!(f, "r:{route}"),
        }
    }
}

/// A limiter policy from a config limit (see [`limits::policy`]).
fn policy(name: &str, spec: &LimitSpec, place: &str) -> Result<Policy, LimitSetupError> {
    limits::policy(name, spec).map_err(|source| LimitSetupError {
        place: place.to_string(),
        source,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_parse_to_the_keys_the_proxy_makes() {
        let ok = [
            ("c:alice", "c:alice"),
            ("c:usr_1:x", "c:usr_1:x"),
            ("ip:192.0.2.7", "ip:192.0.2.7"),
            ("ip:::ffff:192.0.2.7", "ip:192.0.2.7"),
            ("ip:2001:db8::1", "ip:2001:db8::/64"),
            ("ip:2001:db8::/64", "ip:2001:db8::/64"),
            ("r:api", "r:api"),
            ("r:api:c:alice", "r:api:c:alice"),
            ("r:api:ip:2001:db8:0:0:5::9", "r:api:ip:2001:db8::/64"),
        ];
        for (text, key) in ok {
            let name = SubjectName::parse(text, 64).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(name.to_string(), key, "{text}");
            assert_eq!(SubjectName::parse(key, 64).as_ref(), Ok(&name), "{key}");
        }
        // The anonymous key is the proxy's own formatting of the caller's network.
        let ip: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            format!("ip:{}", ClientNetwork::of(ip, 64)),
            SubjectName::parse("ip:2001:db8::1", 64)
                .unwrap()
                .to_string()
        );
        for bad in [
            "",
            "alice",
            "x:1",
            "c:",
            "c:a b",
            "ip:",
            "ip:1.2.3",
            "ip:10.0.0.0/8",
            "ip:2001:db8::/48",
            "r:",
            "r:a b",
            "r:api:r:other",
            "r:api:",
            "r:api:c:",
        ] {
            assert!(SubjectName::parse(bad, 64).is_err(), "{bad:?}");
        }
        assert_eq!(
            SubjectName::parse("r:api:ip:10.0.0.1", 64).unwrap().route(),
            Some("api")
        );
    }
}
