//! `database:`: the PostgreSQL URL, pool and TLS.

use super::*;

pub(super) fn database(raw: RawDatabase, base: &Path, p: &mut Problems) -> DatabaseSettings {
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

pub(super) fn database_tls(raw: RawDatabaseTls, base: &Path, p: &mut Problems) -> DatabaseTls {
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
