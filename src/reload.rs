//! Live reload: the current snapshot, and the three ways to replace it (the file watcher,
//! SIGHUP, and an explicit call). A new file is validated fully and compiled before it is
//! swapped in; if anything fails the running snapshot stays and the failure is logged and
//! counted.

use crate::access_log::AccessLog;
use crate::config::{self, ConfigError};
use crate::metrics;
use crate::persistence::Persistence;
use crate::runtime::Runtime;
use crate::upstream::health::HealthChecks;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] crate::runtime::BuildError),
}

/// What a successful reload did.
#[derive(Debug)]
pub struct ReloadReport {
    pub generation: u64,
    /// Settings that changed in the file but only take effect after a restart or upgrade.
    pub restart_needed: Vec<&'static str>,
}

/// Owns the current snapshot and knows how to replace it.
pub struct LiveConfig {
    path: PathBuf,
    current: ArcSwap<Runtime>,
    /// Serialises reloads so two triggers at once cannot interleave.
    reload_lock: Mutex<()>,
    /// Tells the supervisor that a new snapshot is in place.
    changed: watch::Sender<u64>,
    /// The database, when one is configured.
    persistence: Option<Arc<Persistence>>,
}

impl LiveConfig {
    /// Compiles the first snapshot from `config` (loaded from `path`), with the database's
    /// store and plans when `persistence` is given.
    pub fn new(
        path: &Path,
        config: config::Config,
        persistence: Option<Arc<Persistence>>,
    ) -> Result<Self, ReloadError> {
        let runtime = Runtime::build(config, 1, None, persistence.as_deref())?;
        metrics::CONFIG_GENERATION.set(1);
        Ok(LiveConfig {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(runtime),
            reload_lock: Mutex::new(()),
            changed: watch::channel(1).0,
            persistence,
        })
    }

    /// The database side, when configured.
    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.persistence.as_ref()
    }

    /// Compiles the running config again (after plans changed in the database).
    pub fn refresh(&self) -> Result<u64, ReloadError> {
        let _serial = self
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.current.load_full();
        let generation = old.generation + 1;
        let next = Runtime::build(
            old.config.clone(),
            generation,
            Some(&old),
            self.persistence.as_deref(),
        )?;
        self.current.store(Arc::new(next));
        metrics::CONFIG_GENERATION.set(generation as i64);
        self.changed.send_replace(generation);
        Ok(generation)
    }

    /// The snapshot requests should use now.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The file this config comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; on success the new snapshot serves every request that starts after
    /// this returns. On failure nothing changes.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _serial = self
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outcome = self.try_reload();
        match &outcome {
            Ok(report) => {
                metrics::CONFIG_RELOADS
                    .with_label_values(&["success"])
                    .inc();
                metrics::CONFIG_GENERATION.set(report.generation as i64);
                log::info!(
                    "config reloaded from {}: generation {}",
                    self.path.display(),
                    report.generation
                );
                if !report.restart_needed.is_empty() {
                    log::warn!(
                        "config changes to {} need a restart or graceful upgrade (-u) to apply; the running values stay",
                        report.restart_needed.join(", ")
                    );
                }
            }
            Err(e) => {
                metrics::CONFIG_RELOADS
                    .with_label_values(&["failure"])
                    .inc();
                log::error!("config reload refused, the running config stays:\n{e}");
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let config = config::load_file(&self.path)?;
        let old = self.current.load_full();
        let restart_needed = old.config.restart_needed(&config);
        let generation = old.generation + 1;
        let next = Runtime::build(config, generation, Some(&old), self.persistence.as_deref())?;
        if let Some(level) = next.config.server.log_level {
            if std::env::var_os("RUST_LOG").is_none() {
                log::set_max_level(level);
            }
        }
        self.current.store(Arc::new(next));
        self.changed.send_replace(generation);
        Ok(ReloadReport {
            generation,
            restart_needed,
        })
    }
}

/// Background service: watches the file and SIGHUP, keeps health checks in step with the
/// pools of the current snapshot, and ends the process once a shutdown has drained.
pub struct Supervisor {
    pub live: Arc<LiveConfig>,
    pub access_log: AccessLog,
    /// Connected at start, so the first requests do not wait for Redis.
    pub limiter: Arc<crate::limit::Limiter>,
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let limiter = Arc::clone(&self.limiter);
        tokio::spawn(async move {
            limiter.get().await;
        });
        let mut health = HealthChecks::default();
        health.reconcile(&self.live.current().pools);
        let mut changed = self.live.changed.subscribe();
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload by file change only: {e}");
                None
            }
        };
        let settings = self.live.current().config.server.clone();
        let mut watcher = FileWatcher::new(self.live.path());
        let mut tick =
            tokio::time::interval(settings.watch_interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (stop_database, database_stop) = watch::channel(false);
        let database = self.live.persistence().map(|p| {
            tokio::spawn(maintain_database(
                Arc::clone(&self.live),
                Arc::clone(p),
                database_stop,
            ))
        });
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Let a usage write in progress finish, so no count is lost.
                    stop_database.send_replace(true);
                    if let Some(task) = database {
                        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
                    }
                    self.drain_then_exit(settings.grace_period).await;
                    return;
                }
                Ok(()) = changed.changed() => {
                    health.reconcile(&self.live.current().pools);
                }
                Some(()) = recv_signal(&mut hangup) => {
                    log::info!("SIGHUP received: reloading {}", self.live.path().display());
                    watcher.mark_seen();
                    let _ = self.reload_in_background().await;
                }
                _ = tick.tick(), if settings.watch_config => {
                    if watcher.changed() {
                        log::info!("{} changed: reloading", self.live.path().display());
                        let _ = self.reload_in_background().await;
                    }
                }
            }
        }
    }
}

/// After the drain's gate closes, how long the requests already running may take to finish
/// (within the 3 s Pingora grants after the grace period, which the last usage write needs too).
const FINISH_AFTER_GATE: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Pingora stops accepting on shutdown, then waits out the whole grace period before it
    /// drops unfinished requests. Exit as soon as nothing is in flight instead, so a drain
    /// takes as long as the slowest request and at most the grace period; either way the
    /// usage counted so far is written first.
    async fn drain_then_exit(&self, grace_period: Duration) {
        log::info!("shutting down: draining in-flight requests (at most {grace_period:?})");
        let quiet = |deadline: tokio::time::Instant| async move {
            while crate::drain::in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        quiet(tokio::time::Instant::now() + grace_period).await;
        // From here a new request (a kept-alive connection's next one) is refused, so none
        // can be answered after the last flush. The requests already running are let finish
        // (they are under way; nothing new joins them), within part of the time Pingora
        // leaves after the grace period.
        crate::drain::close();
        quiet(tokio::time::Instant::now() + FINISH_AFTER_GATE).await;
        let left = crate::drain::in_flight();
        if left > 0 {
            // Pingora drops these now; what was counted before is written all the same.
            log::warn!("grace period over with {left} requests still in flight");
        }
        if let Some(p) = self.live.persistence() {
            // A pooled connection may have died with a database restart: the first attempt
            // then fails and drops it; the next one connects afresh.
            for attempt in 1..=3 {
                if flush_usage(p, "at shutdown").await {
                    break;
                }
                if attempt < 3 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        log::info!("drained: exiting");
        let access_log = self.access_log.clone();
        let _ = tokio::task::spawn_blocking(move || access_log.flush(Duration::from_secs(2))).await;
        std::process::exit(0);
    }

    /// Reloading reads a file and may resolve host names: keep it off the async threads.
    async fn reload_in_background(&self) -> Result<ReloadReport, ()> {
        let live = Arc::clone(&self.live);
        match tokio::task::spawn_blocking(move || live.reload()).await {
            Ok(outcome) => outcome.map_err(|_| ()),
            Err(e) => {
                log::error!("config reload task failed: {e}");
                Err(())
            }
        }
    }
}

/// Keeps the gateway in step with the database: evicts cached keys and consumers when they
/// change (PostgreSQL `LISTEN`, reconnecting after a drop; everything cached is dropped
/// after a reconnect, as notifications may have been missed), recompiles the snapshot when
/// plans change, and writes usage counts every flush interval.
async fn maintain_database(
    live: Arc<LiveConfig>,
    persistence: Arc<Persistence>,
    mut stop: watch::Receiver<bool>,
) {
    use crate::db::change::Change;
    use crate::db::listen::spawn_listener;
    let plans_changed = Arc::new(tokio::sync::Notify::new());
    let listener = {
        let (on_change_live, on_resync_live) = (Arc::clone(&live), Arc::clone(&live));
        let (plans_on_change, plans_on_resync) =
            (Arc::clone(&plans_changed), Arc::clone(&plans_changed));
        let (url, tls) = live
            .current()
            .config
            .database
            .as_ref()
            .map(|d| (d.url().to_string(), d.tls.clone()))
            .unwrap_or_default();
        spawn_listener(
            &url,
            &tls,
            move |change| match change {
                Change::Key { hash } => on_change_live.current().auth.store().evict_key(&hash),
                Change::Consumer { id } => {
                    on_change_live.current().auth.store().evict_consumer(&id)
                }
                Change::Plan { .. } => plans_on_change.notify_one(),
            },
            move || {
                on_resync_live.current().auth.store().clear();
                plans_on_resync.notify_one();
            },
        )
    };
    let _listener = match listener {
        Ok(l) => Some(l),
        Err(e) => {
            log::error!("database change listener cannot start: {e}; caches expire by TTL only");
            None
        }
    };
    let mut flush = tokio::time::interval(persistence.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = plans_changed.notified() => {
                match persistence.reload_plans().await {
                    Ok(true) => {
                        let live = Arc::clone(&live);
                        match tokio::task::spawn_blocking(move || live.refresh()).await {
                            Ok(Ok(generation)) => log::info!("plans changed in the database: generation {generation}"),
                            Ok(Err(e)) => log::error!("plans changed in the database but cannot be applied: {e}"),
                            Err(e) => log::error!("plan refresh task failed: {e}"),
                        }
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("cannot read plans from the database: {e}"),
                }
            }
            _ = flush.tick() => {
                flush_usage(&persistence, "periodic").await;
            }
        }
    }
}

/// Writes counted usage; on failure it stays in memory for the next attempt. `true` when
/// everything counted so far is written.
async fn flush_usage(persistence: &Persistence, when: &str) -> bool {
    let written = match persistence.usage.flush(persistence.db()).await {
        Ok(rows) => {
            if rows > 0 {
                log::debug!("usage: {rows} rows written ({when})");
            }
            true
        }
        Err(e) => {
            log::warn!("usage: write failed ({when}), kept for the next attempt: {e}");
            false
        }
    };
    metrics::USAGE_PENDING.set(persistence.usage.pending_rows() as i64);
    written
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Notices changes to the file. A cheap `stat` every tick; the content is read only when
/// size, modification time or inode moved, and a reload happens only if the content really
/// differs. Survives editors and config-map updates that replace the file through a rename.
struct FileWatcher {
    path: PathBuf,
    stat: Option<(u64, std::time::SystemTime, u64)>,
    content_hash: Option<u64>,
}

impl FileWatcher {
    fn new(path: &Path) -> Self {
        let mut w = FileWatcher {
            path: path.to_path_buf(),
            stat: None,
            content_hash: None,
        };
        w.mark_seen();
        w
    }

    fn stat(&self) -> Option<(u64, std::time::SystemTime, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.len(), m.modified().ok()?, m.ino()))
    }

    fn hash(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let content = std::fs::read(&self.path).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut h);
        Some(h.finish())
    }

    /// Records the current content as handled (after a reload triggered another way).
    fn mark_seen(&mut self) {
        self.stat = self.stat();
        self.content_hash = self.hash();
    }

    /// `true` once per change of content. A missing file is not a change: it is usually an
    /// editor between writing and renaming.
    fn changed(&mut self) -> bool {
        let stat = self.stat();
        if stat.is_none() || stat == self.stat {
            return false;
        }
        self.stat = stat;
        let hash = self.hash();
        if hash.is_some() && hash != self.content_hash {
            self.content_hash = hash;
            return true;
        }
        false
    }
}
