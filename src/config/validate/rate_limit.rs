//! `rate_limit:` and `plans:`: Redis, failure modes, anonymous limits, the one rule for windows.

use super::*;

pub(super) fn rate_limit(
    raw: RawRateLimit,
    plans: &HashSet<&str>,
    p: &mut Problems,
) -> RateLimitSettings {
    use crate::limit::{
        DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_LEASE_TTL, DEFAULT_POOL_SIZE,
        DEFAULT_TIMEOUT,
    };
    let expected_instances = raw.expected_instances.unwrap_or(1).max(1);
    let concurrency_lease_ttl = duration(
        raw.concurrency_lease_ttl,
        "rate_limit.concurrency_lease_ttl",
        DEFAULT_LEASE_TTL,
        p,
    );
    let redis = raw.redis.map(|r| {
        if r.urls.is_empty() {
            p.push("rate_limit.redis.urls", "list at least one redis:// URL");
        }
        for (i, url) in r.urls.iter().enumerate() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                p.push(
                    format!("rate_limit.redis.urls[{i}]"),
                    format!("{url:?} is not a redis:// URL"),
                );
            }
        }
        RedisSettings {
            urls: r.urls,
            cluster: r.cluster,
            timeout: duration(r.timeout, "rate_limit.redis.timeout", DEFAULT_TIMEOUT, p),
            pool_size: r.pool_size.unwrap_or(DEFAULT_POOL_SIZE).clamp(1, 64),
            breaker_failures: r
                .breaker_failures
                .unwrap_or(DEFAULT_BREAKER_FAILURES)
                .max(1),
            breaker_cooldown: duration(
                r.breaker_cooldown,
                "rate_limit.redis.breaker_cooldown",
                DEFAULT_BREAKER_COOLDOWN,
                p,
            ),
            concurrency_lease_ttl,
        }
    });
    if let Some(plan) = raw
        .default_plan
        .as_deref()
        .filter(|plan| !plans.contains(plan))
    {
        p.push("rate_limit.default_plan", format!("no plan named {plan:?}"));
    }
    let status_path = raw.status_path.filter(|path| {
        let ok = path.starts_with('/');
        if !ok {
            p.push(
                "rate_limit.status_path",
                "must start with '/' (or be null to disable)",
            );
        }
        ok
    });
    RateLimitSettings {
        redis,
        failure_mode: raw
            .failure_mode
            .map_or(FailureMode::Local { expected_instances }, |m| {
                failure_mode(&m, expected_instances, "rate_limit.failure_mode", p)
            }),
        expected_instances,
        anonymous: raw
            .anonymous
            .map(|a| limit_spec(a, "rate_limit.anonymous", p)),
        default_plan: raw.default_plan,
        status_path,
        concurrency_lease_ttl,
        ipv6_prefix: match raw.ipv6_prefix {
            None => DEFAULT_IPV6_PREFIX,
            Some(bits @ 1..=128) => bits,
            Some(_) => {
                p.push("rate_limit.ipv6_prefix", "must be between 1 and 128");
                DEFAULT_IPV6_PREFIX
            }
        },
    }
}

/// A failure mode by name; `local` divides each limit by `expected_instances`.
pub(super) fn failure_mode(
    raw: &str,
    expected_instances: u32,
    place: &str,
    p: &mut Problems,
) -> FailureMode {
    match raw {
        "local" => FailureMode::Local { expected_instances },
        "open" => FailureMode::Open,
        "closed" => FailureMode::Closed,
        other => {
            p.push(
                place,
                format!("unknown failure mode {other:?} (local, open, closed)"),
            );
            FailureMode::Local { expected_instances }
        }
    }
}

/// Windows of a plan or route limit, checked by the one set of rules for limits.
pub(super) fn limit_spec(raw: RawLimits, place: &str, p: &mut Problems) -> LimitSpec {
    let RawLimits {
        algorithm,
        limits: windows,
        concurrency,
        block_for,
    } = raw;
    let algorithm = algorithm.map_or(Ok(Algorithm::default()), |a| a.parse());
    let algorithm = algorithm.unwrap_or_else(|unknown| {
        p.push(format!("{place}.algorithm"), unknown);
        Algorithm::default()
    });
    let windows = windows
        .into_iter()
        .enumerate()
        .map(|(i, w)| WindowSpec {
            requests: w.requests,
            per: duration(
                Some(w.per),
                &format!("{place}.limits[{i}].per"),
                Duration::from_secs(1),
                p,
            ),
            burst: w.burst,
        })
        .collect();
    let block_for = block_for.map(|b| {
        duration(
            Some(b),
            &format!("{place}.block_for"),
            Duration::from_secs(1),
            p,
        )
    });
    let spec = LimitSpec {
        algorithm,
        windows,
        concurrency,
        block_for,
    };
    // A burst only means something to a token bucket: in the file, one elsewhere is a
    // mistake worth saying (the limiter would ignore it).
    if spec.algorithm != Algorithm::TokenBucket {
        for (i, w) in spec.windows.iter().enumerate() {
            if w.burst.is_some() {
                p.push(
                    format!("{place}.limits[{i}].burst"),
                    "only applies to algorithm: token_bucket",
                );
            }
        }
    }
    for problem in crate::config::limits::check(&spec) {
        p.push(
            format!("{place}.{}", problem.field.path("per")),
            problem.message,
        );
    }
    spec
}

pub(super) fn plans(raw: Vec<RawPlan>, p: &mut Problems) -> Vec<PlanSpec> {
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, plan)| {
            let place = format!("plans[{i}]");
            check_name(&plan.name, &format!("{place}.name"), p);
            if !seen.insert(plan.name.clone()) {
                p.push(
                    format!("{place}.name"),
                    format!("duplicate plan name {:?}", plan.name),
                );
            }
            let has_limits = !plan.limits.is_empty() || plan.concurrency.is_some();
            if !has_limits && plan.algorithm.is_some() {
                p.push(format!("{place}.algorithm"), "an algorithm needs limits");
            }
            if !has_limits && plan.block_for.is_some() {
                p.push(format!("{place}.block_for"), "a block needs limits");
            }
            let raw = RawLimits {
                algorithm: plan.algorithm,
                limits: plan.limits,
                concurrency: plan.concurrency,
                block_for: plan.block_for,
            };
            let limits = has_limits.then(|| limit_spec(raw, &place, p));
            PlanSpec {
                name: plan.name,
                limits,
            }
        })
        .collect()
}
