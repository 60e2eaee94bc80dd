//! Assembles the Pingora server: the proxy service on its listeners, the metrics listener,
//! the supervisor (config reload and health checks) and, when configured, the admin API
//! and the follower of token revocations.

use crate::access_log::AccessLog;
use crate::admin::AdminService;
use crate::auth::revocation::RevocationBus;
use crate::config::Config;
use crate::connection::Front;
use crate::limit::Limiter;
use crate::limit::RedisSettings;
use crate::metrics::{self, MetricsApp};
use crate::persistence::Persistence;
use crate::proxy::Gateway;
use crate::reload::{LiveConfig, ReloadError, Supervisor};
use crate::runtime::Runtime;
use crate::tls::{self, TlsError};
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;

/// Read buffer per client connection: none (Pingora's default is 64 KiB). Pingora reads a
/// request head into its own buffer (4 KiB, growing) and bodies into theirs, so a second
/// buffer in front of the socket saves no read on a request and costs every idle
/// keep-alive connection its whole size.
const LISTENER_READ_BUFFER: usize = 0;

/// Time left after the drain for the last usage write before Pingora stops every task.
const SHUTDOWN_FLUSH_RESERVE: std::time::Duration = std::time::Duration::from_secs(3);

/// Idle keep-alive connections to upstreams kept per process (the bare Pingora reference in
/// `make bench` keeps 512; a gateway instance may serve more clients at once).
const UPSTREAM_KEEPALIVE_POOL: usize = 1024;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ReloadError),
    #[error("listener {address}: {source}")]
    Tls { address: String, source: TlsError },
    #[error("cannot start the access-log writer: {0}")]
    AccessLog(std::io::Error),
    #[error("database: {0}")]
    Database(crate::db::DbError),
    #[error("admin service: {0}")]
    Admin(crate::db::DbError),
    #[error("the config has no `admin:` section")]
    NoAdmin,
    #[error("cannot write pid file {path}: {source}")]
    PidFile {
        path: String,
        source: std::io::Error,
    },
}

/// Loads the config at `path` and serves until a shutdown signal. With `upgrade`, takes the
/// listening sockets over from a running instance (Pingora graceful upgrade).
pub fn run(path: &Path, upgrade: bool) -> Result<(), StartError> {
    let config = crate::config::load_file(path).map_err(ReloadError::from)?;
    let persistence = match &config.database {
        None => None,
        Some(settings) => {
            let (persistence, report) =
                Persistence::start(settings).map_err(StartError::Database)?;
            if !report.applied.is_empty() {
                log::info!("database migrated to version {}", report.current);
            }
            Some(Arc::new(persistence))
        }
    };
    let live = Arc::new(LiveConfig::new(path, config, persistence)?);
    let snapshot = live.current();
    let config = &snapshot.config;
    metrics::init();

    let mut conf = ServerConf {
        threads: config.server.threads,
        pid_file: config.server.pid_file.display().to_string(),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        // The supervisor drains for `grace_period`, writes the usage counted, then exits;
        // Pingora's own grace period (after which it drops every task) must outlast both.
        grace_period_seconds: Some(
            (config.server.grace_period + SHUTDOWN_FLUSH_RESERVE)
                .as_secs_f64()
                .ceil() as u64,
        ),
        graceful_shutdown_timeout_seconds: Some(
            config.server.graceful_shutdown_timeout.as_secs_f64().ceil() as u64,
        ),
        // Idle upstream connections kept for reuse: Pingora's default (128) is below the
        // concurrency one instance serves, so busier moments would open and close upstream
        // connections all the time.
        upstream_keepalive_pool_size: UPSTREAM_KEEPALIVE_POOL,
        ..ServerConf::default()
    };
    // Pingora retries a request at most this often; our fail_to_connect allows one retry.
    conf.max_retries = 2;
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let access_log = AccessLog::start().map_err(StartError::AccessLog)?;
    let redis = config.rate_limit.redis.as_ref();
    let limiter = Arc::new(Limiter::new(
        redis.cloned(),
        config.rate_limit.concurrency_lease_ttl,
    ));
    let gateway = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(Arc::clone(&live), access_log.clone(), Arc::clone(&limiter)),
    );
    // Connection caps and request-head bounds around Pingora's HTTP loop (src/connection).
    let front = Front::new(gateway, Arc::clone(&live), access_log.clone());
    let pre_tls = front.pre_tls();
    let mut proxy = Service::new("tollgate proxy".to_string(), front);
    // A TLS connection counts in the connection caps from before its handshake.
    proxy.endpoints().set_pre_tls_callback(pre_tls);
    // Unbuffered reads ([`LISTENER_READ_BUFFER`]); writes keep Pingora's small buffer.
    let buffers = L4BufferSettings::new(LISTENER_READ_BUFFER, DEFAULT_L4_WRITE_BUFFER_SIZE);
    for listener in &config.listeners {
        let address = listener.address.to_string();
        let endpoint = ListenerConfig::tcp(address.clone()).l4_buffer(buffers);
        let endpoint = match &listener.tls {
            None => endpoint,
            Some(t) => endpoint.tls(tls::settings(t).map_err(|source| StartError::Tls {
                address: address.clone(),
                source,
            })?),
        };
        proxy.add_listener(endpoint);
    }
    server.add_service(proxy);

    if let Some(address) = config.metrics_address {
        let mut service = Service::new("tollgate metrics".to_string(), MetricsApp);
        service.add_tcp(&address.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "tollgate supervisor",
        Supervisor {
            live: Arc::clone(&live),
            access_log: access_log.clone(),
            limiter: Arc::clone(&limiter),
        },
    ));

    let revocations = revocation_bus(&snapshot, redis.cloned());
    if let Some(follower) = revocation_follower(&revocations, config) {
        server.add_service(follower);
    }
    if let Some(admin) =
        AdminService::from_config(Arc::clone(&live), Arc::clone(&limiter), revocations)
            .map_err(StartError::Admin)?
    {
        server.add_service(background_service("tollgate admin", admin));
    }

    let pid_file = &config.server.pid_file;
    std::fs::write(pid_file, format!("{}\n", std::process::id())).map_err(|source| {
        StartError::PidFile {
            path: pid_file.display().to_string(),
            source,
        }
    })?;
    log::info!(
        "tollgate {} serving {} (config generation {})",
        env!("CARGO_PKG_VERSION"),
        config
            .listeners
            .iter()
            .map(|l| format!(
                "{}{}",
                l.address,
                if l.tls.is_some() { " (tls)" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        snapshot.generation
    );
    drop(snapshot);
    server.run(RunArgs::default());
    // Every service has stopped: write what is still counted, then let the process end.
    if let Some(persistence) = live.persistence() {
        final_usage_flush(persistence);
    }
    access_log.flush(std::time::Duration::from_secs(2));
    Ok(())
}

/// Writes the remaining usage counts at exit (a few attempts: a connection may have died
/// with a database restart and is replaced on the next try).
fn final_usage_flush(persistence: &Persistence) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        log::error!("usage: no runtime to write the last counts");
        return;
    };
    rt.block_on(async {
        for attempt in 1..=3 {
            match persistence.usage.flush(persistence.db()).await {
                Ok(_) => return,
                Err(e) if attempt == 3 => {
                    log::error!(
                        "usage: {} rows not written at exit: {e}",
                        persistence.usage.pending_rows()
                    )
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
            }
        }
    });
}

/// Runs only the admin API (`tollgate admin`): a Pingora server with the admin service
/// and nothing else, until a shutdown signal.
pub fn run_admin(path: &Path) -> Result<(), StartError> {
    let config = crate::config::load_file(path).map_err(ReloadError::from)?;
    let live = Arc::new(LiveConfig::new(path, config, None)?);
    let snapshot = live.current();
    let config = &snapshot.config;
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(config.server.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(
            config.server.graceful_shutdown_timeout.as_secs_f64().ceil() as u64,
        ),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let redis = config.rate_limit.redis.as_ref();
    let limiter = Arc::new(Limiter::new(
        redis.cloned(),
        config.rate_limit.concurrency_lease_ttl,
    ));
    let revocations = revocation_bus(&snapshot, redis.cloned());
    if let Some(follower) = revocation_follower(&revocations, config) {
        server.add_service(follower);
    }
    let admin = AdminService::from_config(Arc::clone(&live), limiter, revocations)
        .map_err(StartError::Admin)?
        .ok_or(StartError::NoAdmin)?;
    server.add_service(background_service("tollgate admin", admin));
    log::info!(
        "tollgate {} admin API only (config generation {})",
        env!("CARGO_PKG_VERSION"),
        snapshot.generation
    );
    drop(snapshot);
    server.run_forever()
}

/// The bus that shares logouts, feeding the revoked-token set the proxy checks.
fn revocation_bus(snapshot: &Runtime, redis: Option<RedisSettings>) -> Arc<RevocationBus> {
    Arc::new(RevocationBus::new(
        Arc::clone(snapshot.auth.revoked_tokens()),
        redis,
    ))
}

/// Follows logouts made on other instances whenever Redis is configured (the account API
/// may be enabled by a reload, or run in another process); without Redis, logouts are made
/// and checked in one process only. Loads what is already revoked before returning.
fn revocation_follower(
    bus: &Arc<RevocationBus>,
    config: &Config,
) -> Option<GenBackgroundService<RevocationFollower>> {
    config.rate_limit.redis.is_some().then(|| {
        bus.preload();
        background_service(
            "tollgate token revocations",
            RevocationFollower(Arc::clone(bus)),
        )
    })
}

/// Runs [`RevocationBus::follow`] as a Pingora background service.
pub struct RevocationFollower(Arc<RevocationBus>);

#[async_trait::async_trait]
impl BackgroundService for RevocationFollower {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.follow(shutdown).await;
    }
}
