//! `upstreams:`: targets, weights, health checks and TLS to targets.

use super::*;

pub(super) fn upstreams(raw: Vec<RawUpstream>, base: &Path, p: &mut Problems) -> Vec<UpstreamSpec> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, u) in raw.into_iter().enumerate() {
        let place = format!("upstreams[{i}]");
        check_name(&u.name, &format!("{place}.name"), p);
        if !seen.insert(u.name.clone()) {
            p.push(
                format!("{place}.name"),
                format!("duplicate upstream name {:?}", u.name),
            );
        }
        if u.targets.is_empty() {
            p.push(
                format!("{place}.targets"),
                "an upstream needs at least one target",
            );
        }
        let mut addrs = HashSet::new();
        let targets = u
            .targets
            .into_iter()
            .enumerate()
            .filter_map(|(j, t)| {
                let tplace = format!("{place}.targets[{j}]");
                let address = socket_addr(&t.address, &format!("{tplace}.address"), p)?;
                if !addrs.insert(address) {
                    p.push(
                        format!("{tplace}.address"),
                        format!("{address} is listed twice"),
                    );
                }
                let weight = match t.weight.unwrap_or(1) {
                    w if w < 1 => {
                        p.push(format!("{tplace}.weight"), "must be at least 1");
                        return None;
                    }
                    w if w > 1000 => {
                        p.push(format!("{tplace}.weight"), "must be at most 1000");
                        return None;
                    }
                    w => w as usize,
                };
                Some(TargetSpec { address, weight })
            })
            .collect();
        let tls = u.tls.map(|t| {
            let sni = t.sni.unwrap_or_default();
            let verify = t.verify.unwrap_or(true);
            if verify && sni.is_empty() {
                p.push(
                    format!("{place}.tls.sni"),
                    "needed to verify the upstream certificate (or set verify: false)",
                );
            }
            UpstreamTls {
                sni,
                verify,
                ca_file: t
                    .ca_file
                    .map(|f| existing_file(base, &f, &format!("{place}.tls.ca_file"), p)),
            }
        });
        let health_check = u
            .health_check
            .map(|h| health_check(h, &format!("{place}.health_check"), tls.as_ref(), p));
        out.push(UpstreamSpec {
            name: u.name,
            targets,
            health_check,
            tls,
        });
    }
    out
}

pub(super) fn health_check(
    h: RawHealthCheck,
    place: &str,
    tls: Option<&UpstreamTls>,
    p: &mut Problems,
) -> HealthCheckSpec {
    let kind = match h.kind.as_deref().unwrap_or("http") {
        "tcp" => {
            for (set, field) in [
                (h.path.is_some(), "path"),
                (h.host.is_some(), "host"),
                (h.expected_status.is_some(), "expected_status"),
            ] {
                if set {
                    p.push(format!("{place}.{field}"), "only applies to kind: http");
                }
            }
            HealthCheckKind::Tcp
        }
        "http" => {
            let path = h.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                p.push(format!("{place}.path"), "must start with '/'");
            }
            let expected_status = h.expected_status.unwrap_or(200);
            if !(100..=599).contains(&expected_status) {
                p.push(
                    format!("{place}.expected_status"),
                    "must be an HTTP status (100-599)",
                );
            }
            let host = h
                .host
                .or_else(|| tls.map(|t| t.sni.clone()).filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "localhost".into());
            HealthCheckKind::Http {
                path,
                host,
                expected_status,
            }
        }
        other => {
            p.push(
                format!("{place}.kind"),
                format!("unknown kind {other:?} (http, tcp)"),
            );
            HealthCheckKind::Tcp
        }
    };
    let count = |v: Option<usize>, field: &str, default: usize, p: &mut Problems| match v {
        Some(0) => {
            p.push(format!("{place}.{field}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let interval = duration(
        h.interval,
        &format!("{place}.interval"),
        DEFAULT_HEALTH_INTERVAL,
        p,
    );
    let timeout = duration(
        h.timeout,
        &format!("{place}.timeout"),
        DEFAULT_HEALTH_TIMEOUT,
        p,
    );
    if interval.is_zero() {
        p.push(format!("{place}.interval"), "must be greater than zero");
    }
    HealthCheckSpec {
        kind,
        interval,
        timeout,
        failures_to_eject: count(
            h.failures_to_eject,
            "failures_to_eject",
            DEFAULT_FAILURES_TO_EJECT,
            p,
        ),
        successes_to_readmit: count(
            h.successes_to_readmit,
            "successes_to_readmit",
            DEFAULT_SUCCESSES_TO_READMIT,
            p,
        ),
    }
}
