//! `server:`: threads, timeouts, head and connection limits.

use super::*;

pub(super) fn server_settings(raw: RawServer, p: &mut Problems) -> ServerSettings {
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
