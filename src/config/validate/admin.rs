//! `admin:`: the listener's bounds, tokens and the failed-token throttle.

use super::*;

pub(super) fn admin(raw: RawAdmin, base: &Path, p: &mut Problems) -> AdminSettings {
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
pub(super) fn env_tokens(
    env: Option<String>,
    default: &str,
    place: &str,
    p: &mut Problems,
) -> Vec<Secret> {
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
pub(super) fn file_tokens(
    path: Option<&str>,
    base: &Path,
    place: &str,
    p: &mut Problems,
) -> Vec<Secret> {
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
pub(super) fn check_tokens(tokens: &[Secret], source: &str, place: &str, p: &mut Problems) {
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
pub(super) fn window_or(
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
