//! `routes:`: matching (prefix, hosts, methods), timeouts, auth, limits and the route's edge features.

use super::*;

pub(super) fn routes(
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
pub(super) fn redirect_only(r: &RawRoute, place: &str, p: &mut Problems) {
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
pub(super) fn keep_in_path(
    raw: &[String],
    place: &str,
    p: &mut Problems,
) -> crate::canonical::PathQuirks {
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

pub(super) fn route_auth(
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

/// `/api/` and `/api` are the same prefix; `/` is the root. Prefixes match whole path segments.
pub(super) fn path_prefix(raw: &str, place: &str, p: &mut Problems) -> String {
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
pub(super) fn host_pattern(raw: &str, place: &str, p: &mut Problems) -> Option<String> {
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

pub(super) fn method(raw: &str, place: &str, p: &mut Problems) -> Option<http::Method> {
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
