//! Turns the raw YAML structs into the typed model, collecting every problem with its place
//! in the file (`routes[2].upstream: no upstream named "ordrs"`) so an operator sees all
//! mistakes at once.

use super::model::*;
use super::raw::*;
use crate::features::{headers, redirect, FeatureSet, RawFeatures};
use crate::limit::Algorithm;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::problems::Problems;

/// Validates `raw`; relative file paths inside it are resolved against `base_dir`.
pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<String>> {
    let mut p = Problems::default();
    let server = server_settings(raw.server, &mut p);
    let listeners = listeners(raw.listeners, base_dir, &mut p);
    let metrics_address = raw
        .metrics
        .and_then(|m| socket_addr(&m.address, "metrics.address", &mut p));
    let upstreams = upstreams(raw.upstreams, base_dir, &mut p);
    let plans = plans(raw.plans, &mut p);
    let plan_names: HashSet<&str> = plans.iter().map(|plan| plan.name.as_str()).collect();
    let consumers = consumers(raw.consumers, &plan_names, &mut p);
    let any_keys = consumers.iter().any(|c| !c.keys.is_empty());
    let mut auth = auth(raw.auth, base_dir, &plan_names, any_keys, &mut p);
    let rate_limit = rate_limit(raw.rate_limit, &plan_names, &mut p);
    let database = raw.database.map(|d| database(d, base_dir, &mut p));
    if database.is_some() && !consumers.is_empty() {
        p.push(
            "consumers",
            "with a database configured, consumers and keys live in PostgreSQL (manage them through the admin API)",
        );
    }
    let admin = raw.admin.map(|a| admin(a, base_dir, &mut p));
    let account = raw.account.map(|a| {
        if database.is_none() {
            p.push("account", "the account API needs `database:`");
        }
        match &admin {
            None => p.push(
                "account",
                "the account API is served by the admin service: add `admin:`",
            ),
            // The account API is reached through the proxy, i.e. from loopback: an admin
            // listener open to loopback callers would be open to the Internet.
            Some(a) if a.tokens.is_empty() => p.push(
                "account",
                "the account API shares the admin listener, which is open without admin \
                 tokens: set admin.tokens_env or admin.tokens_file",
            ),
            Some(_) => {}
        }
        let settings = account(a, &mut p);
        if auth.issuers.iter().any(|i| i.issuer == settings.issuer) {
            p.push(
                "account.issuer",
                format!(
                    "{:?} is also an auth.jwt issuer; account tokens need an issuer of their own",
                    settings.issuer
                ),
            );
        }
        auth.issuers.push(account_issuer(&settings));
        settings
    });
    let names: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let routes = routes(raw.routes, &names, &auth, &rate_limit, &mut p);
    let defaults = FeatureSet::validate(raw.defaults, "defaults", &mut p);
    let identity = auth.identity_headers.named();
    headers::refuse_identity_headers(&defaults.headers, &identity, "defaults", &mut p);
    if p.is_empty() {
        Ok(Config {
            server,
            listeners,
            metrics_address,
            upstreams,
            routes,
            defaults,
            auth,
            plans,
            consumers,
            rate_limit,
            database,
            admin,
            account,
        })
    } else {
        Err(p.into_vec())
    }
}

fn server_settings(raw: RawServer, p: &mut Problems) -> ServerSettings {
    let threads = match raw.threads {
        Some(0) => {
            p.push("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let log_level = raw.log_level.and_then(|l| match l.parse() {
        Ok(level) => Some(level),
        Err(_) => {
            p.push(
                "server.log_level",
                format!("unknown level {l:?} (off, error, warn, info, debug, trace)"),
            );
            None
        }
    });
    let health_path = raw.health_path.filter(|path| {
        let ok = path.starts_with('/');
        if !ok {
            p.push(
                "server.health_path",
                "must start with '/' (or be null to disable)",
            );
        }
        ok
    });
    ServerSettings {
        threads,
        grace_period: duration(
            raw.grace_period,
            "server.grace_period",
            DEFAULT_GRACE_PERIOD,
            p,
        ),
        graceful_shutdown_timeout: duration(
            raw.graceful_shutdown_timeout,
            "server.graceful_shutdown_timeout",
            DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
            p,
        ),
        pid_file: PathBuf::from(raw.pid_file.unwrap_or_else(|| "/tmp/tollgate.pid".into())),
        upgrade_sock: PathBuf::from(
            raw.upgrade_sock
                .unwrap_or_else(|| "/tmp/tollgate_upgrade.sock".into()),
        ),
        log_level,
        access_log: raw.access_log.unwrap_or(true),
        health_path,
        watch_config: raw.watch_config.unwrap_or(true),
        watch_interval: duration(
            raw.watch_interval,
            "server.watch_interval",
            DEFAULT_WATCH_INTERVAL,
            p,
        ),
        request_header_timeout: positive_duration(
            raw.request_header_timeout,
            "server.request_header_timeout",
            DEFAULT_REQUEST_HEADER_TIMEOUT,
            p,
        ),
        max_request_header_size: header_size(
            raw.max_request_header_size,
            "server.max_request_header_size",
            DEFAULT_MAX_REQUEST_HEADER_SIZE,
            p,
        ),
        max_connections: at_least_one(
            raw.max_connections,
            "server.max_connections",
            DEFAULT_MAX_CONNECTIONS,
            p,
        ),
        max_connections_per_ip: at_least_one(
            raw.max_connections_per_ip,
            "server.max_connections_per_ip",
            DEFAULT_MAX_CONNECTIONS_PER_IP,
            p,
        ),
    }
}

/// Smallest request-head limit accepted: below this, ordinary requests with a few cookies
/// would be refused.
const MIN_HEADER_SIZE: usize = 1024;
/// Largest request-head limit accepted (Pingora's own parser stops at 1 MiB).
const MAX_HEADER_SIZE: usize = 1024 * 1024 - 1;

/// A header-size limit in bytes, within [`MIN_HEADER_SIZE`]..=[`MAX_HEADER_SIZE`].
fn header_size(raw: Option<usize>, place: &str, default: usize, p: &mut Problems) -> usize {
    match raw {
        None => default,
        Some(n) if (MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&n) => n,
        Some(n) => {
            p.push(
                place,
                format!("{n} bytes is outside {MIN_HEADER_SIZE}..={MAX_HEADER_SIZE}"),
            );
            default
        }
    }
}

/// A count that must be at least 1.
fn at_least_one(raw: Option<usize>, place: &str, default: usize, p: &mut Problems) -> usize {
    match raw {
        Some(0) => {
            p.push(place, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// A duration that must not be zero.
fn positive_duration(
    raw: Option<String>,
    place: &str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    let d = duration(raw, place, default, p);
    if d.is_zero() {
        p.push(place, "must be longer than 0s");
        return default;
    }
    d
}

fn listeners(raw: Vec<RawListener>, base: &Path, p: &mut Problems) -> Vec<Listener> {
    if raw.is_empty() {
        p.push("listeners", "at least one listener is needed");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let place = format!("listeners[{i}]");
        let Some(address) = socket_addr(&l.address, &format!("{place}.address"), p) else {
            continue;
        };
        if !seen.insert(address) {
            p.push(
                format!("{place}.address"),
                format!("{address} is listed twice"),
            );
        }
        let tls = l.tls.map(|t| {
            if t.certificates.is_empty() {
                p.push(
                    format!("{place}.tls.certificates"),
                    "at least one certificate is needed",
                );
            }
            let certificates = t
                .certificates
                .into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let cplace = format!("{place}.tls.certificates[{j}]");
                    CertificateSpec {
                        cert: existing_file(base, &c.cert, &format!("{cplace}.cert"), p),
                        key: existing_file(base, &c.key, &format!("{cplace}.key"), p),
                        server_names: c
                            .server_names
                            .unwrap_or_default()
                            .into_iter()
                            .enumerate()
                            .filter_map(|(k, n)| {
                                host_pattern(&n, &format!("{cplace}.server_names[{k}]"), p)
                            })
                            .collect(),
                    }
                })
                .collect();
            ListenerTls {
                certificates,
                http2: t.http2.unwrap_or(true),
            }
        });
        out.push(Listener { address, tls });
    }
    out
}

fn upstreams(raw: Vec<RawUpstream>, base: &Path, p: &mut Problems) -> Vec<UpstreamSpec> {
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

fn health_check(
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

fn routes(
    raw: Vec<RawRoute>,
    upstreams: &HashSet<&str>,
    auth_settings: &AuthSettings,
    rate_limit: &RateLimitSettings,
    p: &mut Problems,
) -> Vec<RouteSpec> {
    let mut names = HashSet::new();
    let mut matchers = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let place = format!("routes[{i}]");
        check_name(&r.name, &format!("{place}.name"), p);
        if !names.insert(r.name.clone()) {
            p.push(
                format!("{place}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        match (&r.upstream, &r.redirect) {
            (Some(upstream), _) if !upstreams.contains(upstream.as_str()) => p.push(
                format!("{place}.upstream"),
                format!("no upstream named {upstream:?}"),
            ),
            (None, None) => p.push(&place, "set upstream (or redirect)"),
            (None, Some(_)) => redirect_only(&r, &place, p),
            (Some(_), _) => {}
        }
        let path_prefix = path_prefix(&r.path_prefix, &format!("{place}.path_prefix"), p);
        let hosts: Vec<String> = r
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(j, h)| host_pattern(h, &format!("{place}.hosts[{j}]"), p))
            .collect();
        let methods = r.methods.map(|ms| {
            if ms.is_empty() {
                p.push(
                    format!("{place}.methods"),
                    "leave out to allow every method, or list some",
                );
            }
            ms.iter()
                .enumerate()
                .filter_map(|(j, m)| method(m, &format!("{place}.methods[{j}]"), p))
                .collect::<Vec<_>>()
        });
        // Two routes that match exactly the same requests: the second could never be chosen.
        let mut method_key: Vec<String> = methods
            .iter()
            .flatten()
            .map(|m| m.as_str().to_owned())
            .collect();
        method_key.sort();
        let host_keys: Vec<String> = if hosts.is_empty() {
            vec![String::new()]
        } else {
            hosts.clone()
        };
        for host in host_keys {
            if !matchers.insert((host.clone(), path_prefix.clone(), method_key.clone())) {
                p.push(
                    &place,
                    format!(
                        "matches the same requests as an earlier route (host {:?}, path_prefix {:?})",
                        if host.is_empty() { "any" } else { &host },
                        path_prefix
                    ),
                );
            }
        }
        let timeouts = r.timeouts.map_or(
            RouteTimeouts {
                connect: DEFAULT_CONNECT_TIMEOUT,
                read: DEFAULT_READ_TIMEOUT,
                total: None,
            },
            |t| {
                let tplace = format!("{place}.timeouts");
                let connect = duration(
                    t.connect,
                    &format!("{tplace}.connect"),
                    DEFAULT_CONNECT_TIMEOUT,
                    p,
                );
                let read = duration(t.read, &format!("{tplace}.read"), DEFAULT_READ_TIMEOUT, p);
                let total = t
                    .total
                    .map(|s| duration(Some(s), &format!("{tplace}.total"), Duration::ZERO, p));
                for (d, field) in [
                    (Some(connect), "connect"),
                    (Some(read), "read"),
                    (total, "total"),
                ] {
                    if d.is_some_and(|d| d.is_zero()) {
                        p.push(format!("{tplace}.{field}"), "must be greater than zero");
                    }
                }
                RouteTimeouts {
                    connect,
                    read,
                    total,
                }
            },
        );
        let limits = r
            .rate_limit
            .map_or_else(RouteLimits::default, |l| RouteLimits {
                per_caller: l
                    .per_caller
                    .map(|x| limit_spec(x, &format!("{place}.rate_limit.per_caller"), p)),
                global: l
                    .global
                    .map(|x| limit_spec(x, &format!("{place}.rate_limit.global"), p)),
                failure_mode: l.failure_mode.map(|m| {
                    let place = format!("{place}.rate_limit.failure_mode");
                    failure_mode(&m, rate_limit.expected_instances, &place, p)
                }),
            });
        let auth = route_auth(
            r.auth,
            r.auth_methods,
            r.scopes,
            r.forward_credential,
            &place,
            auth_settings,
            p,
        );
        let keep_in_path = keep_in_path(&r.keep_in_path, &format!("{place}.keep_in_path"), p);
        let mut features = FeatureSet::validate(
            RawFeatures {
                size_limits: r.size_limits,
                ip_rules: r.ip_rules,
                rewrite: r.rewrite,
                cors: r.cors,
                headers: r.headers,
                security_headers: r.security_headers,
                compression: r.compression,
            },
            &place,
            p,
        );
        features.redirect = r.redirect.and_then(|raw| {
            let place = format!("{place}.redirect");
            redirect::validate(raw, r.upstream.is_some(), &place, p).map(Arc::new)
        });
        let identity = auth_settings.identity_headers.named();
        headers::refuse_identity_headers(&features.headers, &identity, &place, p);
        out.push(RouteSpec {
            name: r.name,
            hosts,
            path_prefix,
            methods,
            upstream: r.upstream,
            strip_prefix: r.strip_prefix,
            timeouts,
            auth,
            limits,
            case_insensitive: r.case_insensitive,
            keep_in_path,
            allow_override_headers: r.allow_override_headers,
            features,
        });
    }
    out
}

/// Refuses what a route without an upstream would ignore: its requests are answered with
/// a redirect before identification, and never sent anywhere.
fn redirect_only(r: &RawRoute, place: &str, p: &mut Problems) {
    for (set, key) in [
        (r.strip_prefix, "strip_prefix"),
        (r.timeouts.is_some(), "timeouts"),
        (r.auth.is_some(), "auth"),
        (r.auth_methods.is_some(), "auth_methods"),
        (!r.scopes.is_empty(), "scopes"),
        (r.forward_credential, "forward_credential"),
        (r.rate_limit.is_some(), "rate_limit"),
        (r.allow_override_headers, "allow_override_headers"),
        (r.rewrite.is_some(), "rewrite"),
    ] {
        if set {
            p.push(
                format!("{place}.{key}"),
                "has no effect on a route without an upstream (it answers with a redirect)",
            );
        }
    }
}

/// The path characters a route keeps for its upstream.
fn keep_in_path(raw: &[String], place: &str, p: &mut Problems) -> crate::canonical::PathQuirks {
    let mut keep = crate::canonical::PathQuirks::default();
    for (i, name) in raw.iter().enumerate() {
        match name.as_str() {
            "encoded_slash" => keep.encoded_slash = true,
            "backslash" => keep.backslash = true,
            "semicolon" => keep.semicolon = true,
            "encoded_nul" => keep.encoded_nul = true,
            other => p.push(
                format!("{place}[{i}]"),
                format!("unknown {other:?} (encoded_slash, backslash, semicolon, encoded_nul)"),
            ),
        }
    }
    keep
}

fn route_auth(
    mode: Option<String>,
    methods: Option<Vec<String>>,
    scopes: Vec<String>,
    forward_credential: bool,
    place: &str,
    settings: &AuthSettings,
    p: &mut Problems,
) -> RouteAuth {
    let mode = match mode.as_deref().unwrap_or("none") {
        "none" => AuthMode::None,
        "optional" => AuthMode::Optional,
        "required" => AuthMode::Required,
        other => {
            p.push(
                format!("{place}.auth"),
                format!("unknown mode {other:?} (none, optional, required)"),
            );
            AuthMode::None
        }
    };
    let (mut allow_api_key, mut allow_jwt) = (true, true);
    if let Some(methods) = methods {
        (allow_api_key, allow_jwt) = (false, false);
        for (i, m) in methods.iter().enumerate() {
            match m.as_str() {
                "api_key" => allow_api_key = true,
                "jwt" => allow_jwt = true,
                other => p.push(
                    format!("{place}.auth_methods[{i}]"),
                    format!("unknown method {other:?} (api_key, jwt)"),
                ),
            }
        }
        if methods.is_empty() {
            p.push(
                format!("{place}.auth_methods"),
                "leave out to accept both api_key and jwt, or list one",
            );
        }
        if allow_jwt && !allow_api_key && settings.issuers.is_empty() {
            p.push(
                format!("{place}.auth_methods"),
                "jwt needs at least one issuer under auth.jwt",
            );
        }
    }
    if mode == AuthMode::None && !scopes.is_empty() {
        p.push(
            format!("{place}.auth"),
            "scopes need auth: optional or required",
        );
    }
    for (i, scope) in scopes.iter().enumerate() {
        check_scope(scope, &format!("{place}.scopes[{i}]"), p);
    }
    RouteAuth {
        mode,
        allow_api_key,
        allow_jwt,
        scopes,
        forward_credential,
    }
}

fn auth(
    raw: RawAuth,
    base: &Path,
    plans: &HashSet<&str>,
    any_keys: bool,
    p: &mut Problems,
) -> AuthSettings {
    let header = |raw: Option<String>, default: &str, place: &str, p: &mut Problems| {
        let name = raw.unwrap_or_else(|| default.to_string());
        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap_or_else(|_| {
            p.push(place, format!("{name:?} is not a valid header name"));
            http::HeaderName::from_static("x-invalid")
        })
    };
    let api_key_header = header(
        raw.api_key.header,
        DEFAULT_API_KEY_HEADER,
        "auth.api_key.header",
        p,
    );
    let pepper_env = raw
        .api_key
        .pepper_env
        .unwrap_or_else(|| DEFAULT_PEPPER_ENV.to_string());
    let pepper = match std::env::var(&pepper_env) {
        Ok(v) if v.len() >= 16 => Some(Secret::new(v.into_bytes())),
        Ok(_) if any_keys => {
            p.push(
                "auth.api_key.pepper_env",
                format!("${pepper_env} must hold at least 16 bytes"),
            );
            None
        }
        Err(_) if any_keys => {
            p.push(
                "auth.api_key.pepper_env",
                format!("${pepper_env} is not set; API-key hashes cannot be checked without it"),
            );
            None
        }
        _ => None,
    };
    let cache = match raw.cache {
        None => CacheSettings {
            ttl: DEFAULT_CREDENTIAL_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_entries: DEFAULT_CACHE_ENTRIES,
            max_lookups: DEFAULT_MAX_LOOKUPS,
        },
        Some(c) => CacheSettings {
            ttl: duration(c.ttl, "auth.cache.ttl", DEFAULT_CREDENTIAL_TTL, p),
            negative_ttl: duration(
                c.negative_ttl,
                "auth.cache.negative_ttl",
                DEFAULT_NEGATIVE_TTL,
                p,
            ),
            max_entries: c.max_entries.unwrap_or(DEFAULT_CACHE_ENTRIES).max(1),
            max_lookups: match c.max_lookups {
                None => DEFAULT_MAX_LOOKUPS,
                Some(n @ 1..=1024) => n,
                Some(_) => {
                    p.push("auth.cache.max_lookups", "must be between 1 and 1024");
                    DEFAULT_MAX_LOOKUPS
                }
            },
        },
    };
    let key_failures = match raw.key_failures {
        None => KeyFailureSettings {
            max: DEFAULT_KEY_FAILURES,
            per: DEFAULT_KEY_FAILURE_WINDOW,
        },
        Some(f) => {
            if f.max == 0 {
                p.push("auth.key_failures.max", "must be at least 1");
            }
            let per = duration(
                Some(f.per),
                "auth.key_failures.per",
                DEFAULT_KEY_FAILURE_WINDOW,
                p,
            );
            if per < Duration::from_secs(1) || per > Duration::from_secs(86400) {
                p.push("auth.key_failures.per", "must be between 1s and 1d");
            }
            KeyFailureSettings { max: f.max, per }
        }
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, net)| {
            let parsed = net
                .parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            parsed
                .map_err(|_| {
                    p.push(
                        format!("auth.trusted_proxies[{i}]"),
                        format!("{net:?} is not an address or CIDR network"),
                    )
                })
                .ok()
        })
        .collect::<Vec<_>>();
    let client_ip_header = match raw.client_ip_header.as_deref() {
        Some("x-forwarded-for") => ClientIpHeader::XForwardedFor,
        Some("forwarded") => ClientIpHeader::Forwarded,
        Some(other) => {
            p.push(
                "auth.client_ip_header",
                format!("unknown header {other:?} (x-forwarded-for, forwarded)"),
            );
            ClientIpHeader::default()
        }
        None if !trusted_proxies.is_empty() => {
            p.push(
                "auth.client_ip_header",
                "trusted_proxies needs the header they set: x-forwarded-for or forwarded \
                 (only that one is believed, so a client cannot choose its address through \
                 the other)",
            );
            ClientIpHeader::default()
        }
        None => ClientIpHeader::default(),
    };
    let h = raw.identity_headers;
    let identity_headers = IdentityHeaders {
        consumer_id: header(
            h.consumer_id,
            "x-consumer-id",
            "auth.identity_headers.consumer_id",
            p,
        ),
        plan: header(h.plan, "x-consumer-plan", "auth.identity_headers.plan", p),
        auth_method: header(
            h.auth_method,
            "x-auth-method",
            "auth.identity_headers.auth_method",
            p,
        ),
        scopes: header(h.scopes, "x-auth-scopes", "auth.identity_headers.scopes", p),
    };
    let mut seen = HashSet::new();
    let issuers = raw
        .jwt
        .into_iter()
        .enumerate()
        .map(|(i, issuer)| {
            let place = format!("auth.jwt[{i}]");
            if !seen.insert(issuer.issuer.clone()) {
                p.push(
                    format!("{place}.issuer"),
                    format!("issuer {:?} is listed twice", issuer.issuer),
                );
            }
            issuer_spec(issuer, &place, base, plans, p)
        })
        .collect();
    AuthSettings {
        api_key_header,
        api_key_query: raw.api_key.query_param,
        pepper,
        cache,
        key_failures,
        trusted_proxies,
        client_ip_header,
        identity_headers,
        issuers,
    }
}

fn issuer_spec(
    raw: RawIssuer,
    place: &str,
    base: &Path,
    plans: &HashSet<&str>,
    p: &mut Problems,
) -> IssuerSpec {
    use jsonwebtoken::{Algorithm, AlgorithmFamily};
    if raw.issuer.is_empty() {
        p.push(format!("{place}.issuer"), "must not be empty");
    }
    if raw.algorithms.is_empty() {
        p.push(
            format!("{place}.algorithms"),
            "list the accepted algorithms, e.g. [RS256]",
        );
    }
    let algorithms: Vec<Algorithm> = raw
        .algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            a.parse::<Algorithm>()
                .map_err(|_| {
                    p.push(
                        format!("{place}.algorithms[{i}]"),
                        format!("unknown algorithm {a:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
                    )
                })
                .ok()
        })
        .collect();
    let wants_hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let wants_public = algorithms
        .iter()
        .any(|a| a.family() != AlgorithmFamily::Hmac);
    let mut keys = Vec::new();
    if let Some(env) = &raw.secret_env {
        let encoding = secret_encoding(raw.secret_encoding.as_deref(), place, p);
        if let Some(secret) = hmac_secret(env, encoding, &format!("{place}.secret_env"), p) {
            keys.push(JwtKeySource::Secret(secret));
        }
        if !wants_hmac {
            p.push(
                format!("{place}.secret_env"),
                "a secret only verifies HS256/384/512, which algorithms does not list",
            );
        }
    } else {
        if wants_hmac {
            p.push(
                format!("{place}.secret_env"),
                "HS* algorithms need a secret (secret_env)",
            );
        }
        if raw.secret_encoding.is_some() {
            p.push(
                format!("{place}.secret_encoding"),
                "only applies to secret_env, which is not set",
            );
        }
    }
    for (i, pem) in raw.pem_files.iter().enumerate() {
        keys.push(JwtKeySource::PemFile {
            path: existing_file(base, &pem.path, &format!("{place}.pem_files[{i}].path"), p),
            kid: pem.kid.clone(),
        });
    }
    if let Some(f) = &raw.jwks_file {
        keys.push(JwtKeySource::JwksFile(existing_file(
            base,
            f,
            &format!("{place}.jwks_file"),
            p,
        )));
    }
    if let Some(url) = &raw.jwks_url {
        let scheme = url.parse::<http::Uri>().ok().and_then(|u| {
            u.host()?;
            u.scheme_str().map(str::to_ascii_lowercase)
        });
        match scheme.as_deref() {
            Some("https") => {}
            Some("http") if raw.allow_insecure_jwks => {}
            Some("http") => p.push(
                format!("{place}.jwks_url"),
                format!("{url:?} is plain http: key sets must be fetched over https (or set allow_insecure_jwks: true)"),
            ),
            _ => p.push(
                format!("{place}.jwks_url"),
                format!("{url:?} is not an https URL"),
            ),
        }
        keys.push(JwtKeySource::JwksUrl(JwksUrlSpec {
            url: url.clone(),
            refresh: duration(
                raw.jwks_refresh.clone(),
                &format!("{place}.jwks_refresh"),
                DEFAULT_JWKS_REFRESH,
                p,
            ),
            min_refresh: duration(
                raw.jwks_min_refresh.clone(),
                &format!("{place}.jwks_min_refresh"),
                DEFAULT_JWKS_MIN_REFRESH,
                p,
            ),
            allow_insecure: raw.allow_insecure_jwks,
        }));
    } else if raw.allow_insecure_jwks {
        p.push(
            format!("{place}.allow_insecure_jwks"),
            "only applies to jwks_url, which is not set",
        );
    }
    let has_public_source = raw.pem_files.len()
        + usize::from(raw.jwks_file.is_some())
        + usize::from(raw.jwks_url.is_some())
        > 0;
    if wants_public && !has_public_source {
        p.push(
            place,
            "RS/PS/ES/EdDSA algorithms need pem_files, jwks_file or jwks_url",
        );
    }
    if let Some(plan) = raw
        .default_plan
        .as_deref()
        .filter(|plan| !plans.contains(plan))
    {
        p.push(
            format!("{place}.default_plan"),
            format!("no plan named {plan:?}"),
        );
    }
    let leeway = duration(
        raw.leeway,
        &format!("{place}.leeway"),
        DEFAULT_JWT_LEEWAY,
        p,
    );
    if leeway > MAX_JWT_LEEWAY {
        p.push(
            format!("{place}.leeway"),
            format!(
                "must be at most {} (a longer leeway keeps expired tokens working)",
                humantime::format_duration(MAX_JWT_LEEWAY)
            ),
        );
    }
    if raw.typ.as_deref().is_some_and(|t| t.trim().is_empty()) {
        p.push(format!("{place}.typ"), "must not be empty");
    }
    let mut required_claims = raw.required_claims.unwrap_or_default();
    if !required_claims.iter().any(|c| c == "exp") {
        // A token without an expiry would be valid forever.
        required_claims.insert(0, "exp".into());
    }
    IssuerSpec {
        issuer: raw.issuer,
        audiences: audiences(raw.audiences, raw.audience, place, p),
        algorithms,
        leeway,
        required_claims,
        typ: raw.typ,
        consumer_must_exist: false,
        consumer_claim: raw.consumer_claim.unwrap_or_else(|| "sub".into()),
        plan_claim: raw.plan_claim,
        default_plan: raw.default_plan,
        keys,
    }
}

/// `audiences: [..]`, or `audience: any` written out: an issuer never accepts every
/// audience by omission.
fn audiences(listed: Vec<String>, any: Option<String>, place: &str, p: &mut Problems) -> Audiences {
    match (any.as_deref(), listed.is_empty()) {
        (Some("any"), true) => Audiences::Any,
        (Some("any"), false) => {
            p.push(
                format!("{place}.audience"),
                "`audience: any` and a list of audiences exclude each other",
            );
            Audiences::OneOf(listed)
        }
        (Some(other), _) => {
            p.push(
                format!("{place}.audience"),
                format!("{other:?}: the only value is `any`; list accepted values under audiences"),
            );
            Audiences::OneOf(listed)
        }
        (None, true) => {
            p.push(
                format!("{place}.audiences"),
                "list the accepted audiences, or write `audience: any` to accept tokens for every audience",
            );
            Audiences::Any
        }
        (None, false) => {
            for (i, aud) in listed.iter().enumerate() {
                if aud.is_empty() {
                    p.push(format!("{place}.audiences[{i}]"), "must not be empty");
                }
            }
            Audiences::OneOf(listed)
        }
    }
}

/// How a `secret_env` value is turned into key bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SecretEncoding {
    /// The variable's bytes as they are.
    Raw,
    /// Base64url (RFC 4648 §5), padding optional: binary keys such as JWK `k` values.
    Base64Url,
    /// Standard base64 (RFC 4648 §4), padding optional.
    Base64,
}

fn secret_encoding(raw: Option<&str>, place: &str, p: &mut Problems) -> SecretEncoding {
    match raw {
        None | Some("raw") => SecretEncoding::Raw,
        Some("base64url") => SecretEncoding::Base64Url,
        Some("base64") => SecretEncoding::Base64,
        Some(other) => {
            p.push(
                format!("{place}.secret_encoding"),
                format!("unknown encoding {other:?} (raw, base64url, base64)"),
            );
            SecretEncoding::Raw
        }
    }
}

/// The HMAC key in the environment variable `env`, at least 32 bytes once decoded. Each
/// failure says what is wrong with the value (never the value itself).
fn hmac_secret(
    env: &str,
    encoding: SecretEncoding,
    place: &str,
    p: &mut Problems,
) -> Option<Secret> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;
    use std::os::unix::ffi::OsStringExt;
    let Some(value) = std::env::var_os(env) else {
        p.push(place, format!("${env} is not set"));
        return None;
    };
    if value.is_empty() {
        p.push(place, format!("${env} is set but empty"));
        return None;
    }
    let lenient = GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let decoded = match encoding {
        SecretEncoding::Raw => Ok(value.into_vec()),
        SecretEncoding::Base64Url | SecretEncoding::Base64 => {
            let (name, alphabet) = if encoding == SecretEncoding::Base64Url {
                ("base64url", &base64::alphabet::URL_SAFE)
            } else {
                ("base64", &base64::alphabet::STANDARD)
            };
            let text = value.into_vec();
            GeneralPurpose::new(alphabet, lenient)
                .decode(text.trim_ascii())
                // The decoder's own message would quote a character of the secret.
                .map_err(|_| format!("${env} is not valid {name} (secret_encoding: {name})"))
        }
    };
    match decoded {
        Ok(bytes) if bytes.len() >= 32 => Some(Secret::new(bytes)),
        Ok(bytes) => {
            let decoded = if encoding == SecretEncoding::Raw {
                ""
            } else {
                " once decoded"
            };
            p.push(
                place,
                format!(
                    "${env} must hold at least 32 bytes{decoded} (it holds {})",
                    bytes.len()
                ),
            );
            None
        }
        Err(message) => {
            p.push(place, message);
            None
        }
    }
}

fn rate_limit(raw: RawRateLimit, plans: &HashSet<&str>, p: &mut Problems) -> RateLimitSettings {
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

fn database(raw: RawDatabase, base: &Path, p: &mut Problems) -> DatabaseSettings {
    let url = match (raw.url, raw.url_env) {
        (Some(url), None) => url,
        (None, Some(env)) => std::env::var(&env).unwrap_or_else(|_| {
            p.push("database.url_env", format!("${env} is not set"));
            String::new()
        }),
        _ => {
            p.push("database", "set exactly one of url and url_env");
            String::new()
        }
    };
    if !(url.is_empty() || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        p.push("database.url", "must be a postgres:// URL");
    }
    let pool_size = raw.pool_size.unwrap_or(8);
    if !(1..=256).contains(&pool_size) {
        p.push("database.pool_size", "must be between 1 and 256");
    }
    DatabaseSettings {
        url: Secret::new(url.into_bytes()),
        pool_size: pool_size.clamp(1, 256),
        usage_flush_interval: duration(
            raw.usage_flush_interval,
            "database.usage_flush_interval",
            DEFAULT_USAGE_FLUSH_INTERVAL,
            p,
        ),
        statement_timeout: {
            let timeout = duration(
                raw.statement_timeout,
                "database.statement_timeout",
                DEFAULT_STATEMENT_TIMEOUT,
                p,
            );
            if timeout < Duration::from_millis(1) {
                p.push("database.statement_timeout", "must be at least 1ms");
            }
            timeout
        },
        tls: raw
            .tls
            .map(|t| database_tls(t, base, p))
            .unwrap_or_default(),
    }
}

fn database_tls(raw: RawDatabaseTls, base: &Path, p: &mut Problems) -> DatabaseTls {
    let ca_file = raw
        .ca_file
        .map(|f| existing_file(base, &f, "database.tls.ca_file", p));
    let tls = match raw.mode.as_str() {
        "disable" => DatabaseTls::Disable,
        "require" => DatabaseTls::Require,
        "verify_full" => return DatabaseTls::VerifyFull { ca_file },
        other => {
            p.push(
                "database.tls.mode",
                format!("unknown mode {other:?} (disable, require, verify_full)"),
            );
            return DatabaseTls::Disable;
        }
    };
    if ca_file.is_some() {
        p.push(
            "database.tls.ca_file",
            format!("only used with mode verify_full, not {:?}", raw.mode),
        );
    }
    tls
}

fn admin(raw: RawAdmin, base: &Path, p: &mut Problems) -> AdminSettings {
    let address = socket_addr(&raw.address, "admin.address", p)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut tokens = env_tokens(
        raw.tokens_env,
        DEFAULT_ADMIN_TOKENS_ENV,
        "admin.tokens_env",
        p,
    );
    tokens.extend(file_tokens(
        raw.tokens_file.as_deref(),
        base,
        "admin.tokens_file",
        p,
    ));
    let mut read_only_tokens = env_tokens(
        raw.read_only_tokens_env,
        DEFAULT_ADMIN_READ_ONLY_TOKENS_ENV,
        "admin.read_only_tokens_env",
        p,
    );
    read_only_tokens.extend(file_tokens(
        raw.read_only_tokens_file.as_deref(),
        base,
        "admin.read_only_tokens_file",
        p,
    ));
    if tokens.is_empty() && !address.ip().is_loopback() {
        p.push(
            "admin.address",
            format!(
                "{address} is not a loopback address: set admin tokens first (admin.tokens_env)"
            ),
        );
    }
    if tokens.is_empty() && !read_only_tokens.is_empty() {
        p.push(
            "admin.read_only_tokens_env",
            "read-only tokens need full tokens too (admin.tokens_env): without any, every caller is let in",
        );
    }
    let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
    for (i, host) in raw.allowed_hosts.iter().enumerate() {
        let without_port = if host.starts_with('[') {
            host.ends_with(']')
        } else {
            !host.contains(':')
        };
        match crate::canonical::host_only(host) {
            Some(h) if without_port => allowed_hosts.push(h),
            _ => p.push(
                format!("admin.allowed_hosts[{i}]"),
                format!("{host:?} is not a host name or IP address (without port)"),
            ),
        }
    }
    let limits = ListenerLimits {
        header_timeout: positive_duration(
            raw.request_header_timeout,
            "admin.request_header_timeout",
            DEFAULT_ADMIN_HEADER_TIMEOUT,
            p,
        ),
        idle_timeout: positive_duration(
            raw.idle_timeout,
            "admin.idle_timeout",
            DEFAULT_ADMIN_IDLE_TIMEOUT,
            p,
        ),
        max_header_size: header_size(
            raw.max_request_header_size,
            "admin.max_request_header_size",
            DEFAULT_ADMIN_MAX_HEADER_SIZE,
            p,
        ),
        max_connections: at_least_one(
            raw.max_connections,
            "admin.max_connections",
            DEFAULT_ADMIN_MAX_CONNECTIONS,
            p,
        ),
    };
    AdminSettings {
        address,
        tokens,
        read_only_tokens,
        allowed_hosts,
        failed_auth_throttle: window_or(
            raw.failed_auth_throttle,
            "admin.failed_auth_throttle",
            DEFAULT_FAILED_AUTH_PER_MINUTE,
            p,
        ),
        limits,
    }
}

/// Comma-separated tokens from the environment variable `env` (or `default`).
fn env_tokens(env: Option<String>, default: &str, place: &str, p: &mut Problems) -> Vec<Secret> {
    let env = env.unwrap_or_else(|| default.to_string());
    let tokens: Vec<Secret> = std::env::var(&env)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Secret::new(t.as_bytes().to_vec()))
        .collect();
    check_tokens(&tokens, &format!("${env}"), place, p);
    tokens
}

/// Tokens from a file, one per line (blank lines and `#` comments skipped); read again on
/// every reload, so a token can be added or withdrawn without a restart.
fn file_tokens(path: Option<&str>, base: &Path, place: &str, p: &mut Problems) -> Vec<Secret> {
    let Some(path) = path else {
        return Vec::new();
    };
    let path = base.join(path);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            p.push(place, format!("cannot read {}: {e}", path.display()));
            return Vec::new();
        }
    };
    let tokens: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.starts_with('#'))
        .map(|t| Secret::new(t.as_bytes().to_vec()))
        .collect();
    check_tokens(&tokens, &path.display().to_string(), place, p);
    tokens
}

/// Every token must be guess-proof (never says which token, nor anything of it).
fn check_tokens(tokens: &[Secret], source: &str, place: &str, p: &mut Problems) {
    let weak = tokens.iter().filter(|t| !strong_token(t.expose())).count();
    if weak > 0 {
        p.push(
            place,
            format!(
                "{weak} token(s) in {source} are too weak: every admin token needs at least \
                 {MIN_ADMIN_TOKEN_BITS} bits of entropy (32 random bytes), e.g. `openssl rand -hex 32`"
            ),
        );
    }
}

/// Whether `token` has at least [`MIN_ADMIN_TOKEN_BITS`] of estimated entropy: its length
/// times log2 of the alphabet its character classes span (lower case 26, upper case 26,
/// digits 10, other printable ASCII 33, other bytes 128), with at least 10 different
/// characters (so that `aaaa…` or `abab…` does not pass on length alone).
pub fn strong_token(token: &[u8]) -> bool {
    let has = |f: fn(&u8) -> bool| token.iter().any(f);
    let alphabet = [
        (has(u8::is_ascii_lowercase), 26.0),
        (has(u8::is_ascii_uppercase), 26.0),
        (has(u8::is_ascii_digit), 10.0),
        (has(u8::is_ascii_punctuation), 33.0),
        (
            has(|b| !b.is_ascii_alphanumeric() && !b.is_ascii_punctuation()),
            128.0,
        ),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, size)| size)
    .sum::<f64>();
    let distinct = token.iter().collect::<HashSet<_>>().len();
    alphabet > 1.0 && distinct >= 10 && token.len() as f64 * alphabet.log2() >= MIN_ADMIN_TOKEN_BITS
}

/// One window from the file, or `default_requests` per minute.
fn window_or(
    raw: Option<RawWindow>,
    place: &str,
    default_requests: u64,
    p: &mut Problems,
) -> WindowSpec {
    let w = raw.unwrap_or(RawWindow {
        requests: default_requests,
        per: "1m".into(),
        burst: None,
    });
    let raw = RawLimits {
        limits: vec![w],
        ..RawLimits::default()
    };
    let spec = limit_spec(raw, place, p);
    spec.windows.into_iter().next().unwrap_or(WindowSpec {
        requests: default_requests,
        per: Duration::from_secs(60),
        burst: None,
    })
}

fn account(raw: RawAccount, p: &mut Problems) -> AccountSettings {
    let issuer = raw
        .issuer
        .unwrap_or_else(|| DEFAULT_ACCOUNT_ISSUER.to_string());
    if issuer.is_empty() {
        p.push("account.issuer", "must not be empty");
    }
    let env = raw
        .signing_secret_env
        .unwrap_or_else(|| DEFAULT_ACCOUNT_SECRET_ENV.to_string());
    let secret = hmac_secret(&env, SecretEncoding::Raw, "account.signing_secret_env", p)
        .unwrap_or_else(|| Secret::new(Vec::new()));
    let access_token_ttl = duration(
        raw.access_token_ttl,
        "account.access_token_ttl",
        DEFAULT_ACCESS_TOKEN_TTL,
        p,
    );
    if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&access_token_ttl) {
        p.push("account.access_token_ttl", "must be between 10s and 24h");
    }
    let refresh_token_ttl = duration(
        raw.refresh_token_ttl,
        "account.refresh_token_ttl",
        DEFAULT_REFRESH_TOKEN_TTL,
        p,
    );
    if refresh_token_ttl <= access_token_ttl || refresh_token_ttl > Duration::from_secs(366 * 86400)
    {
        p.push(
            "account.refresh_token_ttl",
            "must be longer than access_token_ttl and at most 366d",
        );
    }
    if let Some(plan) = &raw.default_plan {
        check_name(plan, "account.default_plan", p);
    }
    AccountSettings {
        issuer,
        audience: raw.audience,
        signing_secret: secret,
        access_token_ttl,
        refresh_token_ttl,
        default_plan: raw.default_plan,
        login_per_account: window_or(
            raw.login_throttle.per_account,
            "account.login_throttle.per_account",
            5,
            p,
        ),
        login_per_ip: window_or(
            raw.login_throttle.per_ip,
            "account.login_throttle.per_ip",
            30,
            p,
        ),
        per_session: window_or(
            raw.login_throttle.per_session,
            "account.login_throttle.per_session",
            DEFAULT_SESSION_CALLS_PER_MINUTE,
            p,
        ),
    }
}

/// The proxy-side issuer of account access tokens: HS256 under the signing secret, the
/// consumer in `sub`, the plan in `plan`, and a `jti` (logout blocks it). The consumer must
/// exist in the store, so a deleted account's tokens stop working.
fn account_issuer(account: &AccountSettings) -> IssuerSpec {
    IssuerSpec {
        issuer: account.issuer.clone(),
        audiences: match &account.audience {
            Some(aud) => Audiences::OneOf(vec![aud.clone()]),
            None => Audiences::Any,
        },
        algorithms: vec![jsonwebtoken::Algorithm::HS256],
        leeway: DEFAULT_JWT_LEEWAY,
        required_claims: vec!["exp".into(), "sub".into(), "jti".into()],
        typ: None,
        consumer_must_exist: true,
        consumer_claim: "sub".into(),
        plan_claim: Some("plan".into()),
        default_plan: None,
        keys: vec![JwtKeySource::Secret(account.signing_secret.clone())],
    }
}

/// A failure mode by name; `local` divides each limit by `expected_instances`.
fn failure_mode(raw: &str, expected_instances: u32, place: &str, p: &mut Problems) -> FailureMode {
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
fn limit_spec(raw: RawLimits, place: &str, p: &mut Problems) -> LimitSpec {
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
    for problem in super::limits::check(&spec) {
        p.push(
            format!("{place}.{}", problem.field.path("per")),
            problem.message,
        );
    }
    spec
}

fn plans(raw: Vec<RawPlan>, p: &mut Problems) -> Vec<PlanSpec> {
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

fn consumers(raw: Vec<RawConsumer>, plans: &HashSet<&str>, p: &mut Problems) -> Vec<ConsumerSpec> {
    let mut ids = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut hashes = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let place = format!("consumers[{i}]");
            check_identifier(&c.id, &format!("{place}.id"), p);
            if !ids.insert(c.id.clone()) {
                p.push(format!("{place}.id"), format!("duplicate consumer id {:?}", c.id));
            }
            if let Some(plan) = c.plan.as_deref().filter(|plan| !plans.contains(plan)) {
                p.push(format!("{place}.plan"), format!("no plan named {plan:?}"));
            }
            for (j, scope) in c.scopes.iter().enumerate() {
                check_scope(scope, &format!("{place}.scopes[{j}]"), p);
            }
            let keys = c
                .keys
                .into_iter()
                .enumerate()
                .map(|(j, k)| {
                    let kplace = format!("{place}.keys[{j}]");
                    check_identifier(&k.id, &format!("{kplace}.id"), p);
                    if !key_ids.insert(k.id.clone()) {
                        p.push(format!("{kplace}.id"), format!("duplicate key id {:?}", k.id));
                    }
                    let hash = crate::vocab::KeyHash::from_hex(&k.hash).unwrap_or_else(|| {
                        p.push(
                            format!("{kplace}.hash"),
                            "must be the 64 hex digits printed by `tollgate key new` (the key itself never goes in the file)",
                        );
                        crate::vocab::KeyHash([0; 32])
                    });
                    if !hashes.insert(hash) {
                        p.push(format!("{kplace}.hash"), "the same key is listed twice");
                    }
                    if let Some(scopes) = &k.scopes {
                        for (s, scope) in scopes.iter().enumerate() {
                            if !c.scopes.contains(scope) {
                                p.push(
                                    format!("{kplace}.scopes[{s}]"),
                                    format!("{scope:?} is not one of the consumer's scopes"),
                                );
                            }
                        }
                    }
                    let expires_at = k.expires_at.as_deref().and_then(|t| {
                        humantime::parse_rfc3339_weak(t)
                            .map_err(|e| {
                                p.push(format!("{kplace}.expires_at"), format!("{t:?} is not a time like 2027-01-31T00:00:00Z ({e})"))
                            })
                            .ok()
                    });
                    KeySpec {
                        id: k.id,
                        hash,
                        prefix: k.prefix,
                        scopes: k.scopes,
                        status: status(k.status.as_deref(), &format!("{kplace}.status"), p),
                        expires_at,
                    }
                })
                .collect();
            ConsumerSpec {
                id: c.id,
                plan: c.plan,
                status: status(c.status.as_deref(), &format!("{place}.status"), p),
                scopes: c.scopes,
                keys,
            }
        })
        .collect()
}

fn status(raw: Option<&str>, place: &str, p: &mut Problems) -> Status {
    match raw.unwrap_or("active") {
        "active" => Status::Active,
        "disabled" => Status::Disabled,
        other => {
            p.push(
                place,
                format!("unknown status {other:?} (active, disabled)"),
            );
            Status::Disabled
        }
    }
}

/// Consumer and key ids: 1-128 visible ASCII characters without quotes, commas,
/// backslashes or spaces (they travel in headers and logs). The one rule for ids, in the
/// file and in the admin API.
pub fn valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"',\\".contains(&b))
}

/// What [`valid_identifier`] requires, for error messages.
pub const IDENTIFIER_RULE: &str =
    "1-128 visible ASCII characters, no quotes, commas, backslashes or spaces";

fn check_identifier(id: &str, place: &str, p: &mut Problems) {
    if !valid_identifier(id) {
        p.push(
            place,
            format!("{id:?} is not a valid id ({IDENTIFIER_RULE})"),
        );
    }
}

/// Scopes are OAuth scope tokens (RFC 6749 §3.3) without quotes or backslashes, at most
/// 128 bytes: the one rule, in the file and in the admin API.
pub fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 128
        && scope
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
}

/// What [`valid_scope`] requires, for error messages.
pub const SCOPE_RULE: &str = "1-128 visible ASCII characters, no quotes, backslashes or spaces";

fn check_scope(scope: &str, place: &str, p: &mut Problems) {
    if !valid_scope(scope) {
        p.push(
            place,
            format!("{scope:?} is not a valid scope ({SCOPE_RULE})"),
        );
    }
}

/// Names (plans, upstreams, routes) appear in metrics labels, logs and `RateLimit-Policy`
/// headers: 1-64 letters, digits, '-', '_', '.'. The one rule, in the file and in the
/// admin API.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What [`valid_name`] requires, for error messages.
pub const NAME_RULE: &str = "1-64 characters: letters, digits, '-', '_', '.'";

fn check_name(name: &str, place: &str, p: &mut Problems) {
    if !valid_name(name) {
        p.push(place, format!("{name:?} is not a valid name ({NAME_RULE})"));
    }
}

/// `/api/` and `/api` are the same prefix; `/` is the root. Prefixes match whole path segments.
fn path_prefix(raw: &str, place: &str, p: &mut Problems) -> String {
    if !raw.starts_with('/') {
        p.push(place, format!("{raw:?} must start with '/'"));
    } else if raw.contains(['?', '#', '*', ' ']) || raw.contains("//") {
        p.push(
            place,
            format!("{raw:?} is not a plain path prefix (no '?', '#', '*', spaces or '//')"),
        );
    } else if raw.split('/').any(|s| s == "." || s == "..") {
        p.push(
            place,
            format!("{raw:?} must not contain '.' or '..' segments"),
        );
    } else {
        // Requests are matched on their canonical path: a prefix that is not canonical
        // itself could never match.
        match crate::canonical::path(raw) {
            Ok((canonical, quirks)) if canonical == raw && quirks.is_clean() => {}
            Ok((canonical, _)) => p.push(
                place,
                format!(
                    "{raw:?} is not a canonical path (write {canonical:?}; ';', '\\', %2F, %5C \
                     and %00 are not allowed in a prefix)"
                ),
            ),
            Err(e) => p.push(place, format!("{raw:?}: {e}")),
        }
    }
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// `api.example.com` or `*.example.com`, lower-cased; ports are not part of a host pattern.
fn host_pattern(raw: &str, place: &str, p: &mut Problems) -> Option<String> {
    let host = raw.to_ascii_lowercase();
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Some(host)
    } else {
        p.push(
            place,
            format!("{raw:?} is not a host name or '*.domain' wildcard"),
        );
        None
    }
}

fn method(raw: &str, place: &str, p: &mut Problems) -> Option<http::Method> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    let upper = raw.to_ascii_uppercase();
    if KNOWN.contains(&upper.as_str()) {
        http::Method::from_bytes(upper.as_bytes()).ok()
    } else {
        p.push(place, format!("unknown HTTP method {raw:?}"));
        None
    }
}

/// `host:port` or `ip:port`; host names are resolved once, when the file is loaded.
fn socket_addr(raw: &str, place: &str, p: &mut Problems) -> Option<SocketAddr> {
    if let Ok(addr) = raw.parse() {
        return Some(addr);
    }
    let has_port = raw
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        p.push(
            place,
            format!("{raw:?} is not an address of the form host:port"),
        );
        return None;
    }
    match raw.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(addr),
        Ok(None) | Err(_) => {
            p.push(place, format!("{raw:?} does not resolve to an address"));
            None
        }
    }
}

/// Durations are written like `250ms`, `5s`, `1m`.
fn duration(raw: Option<String>, place: &str, default: Duration, p: &mut Problems) -> Duration {
    match raw {
        None => default,
        Some(s) => humantime::parse_duration(s.trim()).unwrap_or_else(|e| {
            p.push(
                place,
                format!("{s:?} is not a duration like 250ms, 5s or 1m ({e})"),
            );
            default
        }),
    }
}

fn existing_file(base: &Path, raw: &str, place: &str, p: &mut Problems) -> PathBuf {
    let path = base.join(raw);
    if !path.is_file() {
        p.push(place, format!("no readable file at {}", path.display()));
    }
    path
}
