//! The change listener: one dedicated connection (outside the pool) that `LISTEN`s on
//! [`CHANNEL`] and hands each [`Change`] to a callback, so every gateway instance can evict
//! what it cached.
//!
//! Notifications sent while no connection listens are lost, so after every (re)connect the
//! listener calls `on_resync` (the caller clears its caches) once `LISTEN` is in place:
//! whatever changed before is then re-read, whatever changes after is notified. A lost
//! connection is retried with exponential backoff (capped, jittered); a silent one is
//! caught by a periodic ping. Bad payloads are logged and skipped, and a panicking
//! callback is logged and survived: the listener itself never stops on its own.

use super::change::{Change, CHANNEL};
use super::tls::{self, Connector};
use super::{describe, pg_config, DbError};
use crate::config::DatabaseTls;
use futures::StreamExt;
use ring::rand::{SecureRandom, SystemRandom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Notification, Socket};

/// Timing of the listener. [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// First wait after a failure; doubled after each failed attempt.
    pub min_backoff: Duration,
    /// Longest wait between attempts: a few seconds, so invalidation resumes soon after
    /// the database is back, without hammering it while it is down.
    pub max_backoff: Duration,
    /// How often an idle connection is checked, so a silently dead one (no FIN, e.g. a
    /// dropped NAT entry) is noticed within about this long plus `ping_timeout`.
    pub ping_interval: Duration,
    /// How long a ping may take.
    pub ping_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A running listener; dropping it (or [`stop`](Self::stop)) ends it and closes its
/// connection.
#[must_use = "the listener stops when this handle is dropped"]
#[derive(Debug)]
pub struct Listener {
    task: JoinHandle<()>,
}

impl Listener {
    /// Stops listening.
    pub fn stop(self) {
        // Drop aborts the task.
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts listening on `url` (connecting with `tls`) with default options. See
/// [`spawn_listener_with`].
pub fn spawn_listener(
    url: &str,
    tls: &DatabaseTls,
    on_change: impl Fn(Change) + Send + Sync + 'static,
    on_resync: impl Fn() + Send + Sync + 'static,
) -> Result<Listener, DbError> {
    spawn_listener_with(url, tls, ListenerOptions::default(), on_change, on_resync)
}

/// Starts a task that listens for changes on `url`, connecting with `tls`, calling
/// `on_change` for each one and `on_resync` after every successful (re)connect, the first
/// included. Fails only for a malformed URL or TLS settings or outside a Tokio runtime; an
/// unreachable database is retried.
pub fn spawn_listener_with(
    url: &str,
    tls: &DatabaseTls,
    options: ListenerOptions,
    on_change: impl Fn(Change) + Send + Sync + 'static,
    on_resync: impl Fn() + Send + Sync + 'static,
) -> Result<Listener, DbError> {
    let mut config = pg_config(url, options.connect_timeout)?;
    let connector = tls::connector(&mut config, tls)?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| DbError::Invalid(format!("change listener: {e}")))?;
    let callbacks = Callbacks {
        on_change: Arc::new(on_change),
        on_resync: Arc::new(on_resync),
    };
    let task = runtime.spawn(run(config, connector, options, callbacks));
    Ok(Listener { task })
}

/// The caller's callbacks.
struct Callbacks {
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
    on_resync: Arc<dyn Fn() + Send + Sync>,
}

impl Callbacks {
    fn change(&self, change: Change) {
        let f = &self.on_change;
        if catch_unwind(AssertUnwindSafe(|| f(change))).is_err() {
            log::error!("change listener: the change callback panicked; continuing");
        }
    }

    fn resync(&self) {
        let f = &self.on_resync;
        if catch_unwind(AssertUnwindSafe(|| f())).is_err() {
            log::error!("change listener: the resync callback panicked; continuing");
        }
    }
}

/// Connects, listens, and reconnects forever.
async fn run(
    config: tokio_postgres::Config,
    connector: Connector,
    options: ListenerOptions,
    callbacks: Callbacks,
) {
    let rng = SystemRandom::new();
    let mut backoff = options.min_backoff;
    loop {
        let (listened, why) = session(&config, &connector, &options, &callbacks).await;
        if listened {
            backoff = options.min_backoff;
        }
        let wait = jitter(&rng, backoff);
        log::warn!("change listener: {why}; reconnecting in {wait:?}");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// One connection's life. Returns whether `LISTEN` succeeded, and why it ended.
async fn session(
    config: &tokio_postgres::Config,
    connector: &Connector,
    options: &ListenerOptions,
    callbacks: &Callbacks,
) -> (bool, String) {
    let (sender, mut messages) = mpsc::unbounded_channel();
    let opened = match connector {
        Connector::Plain => open(config, NoTls, options.connect_timeout, sender).await,
        Connector::Tls(tls) => open(config, tls.clone(), options.connect_timeout, sender).await,
    };
    let (client, _driver) = match opened {
        Ok(pair) => pair,
        Err(why) => return (false, why),
    };
    if let Err(why) = listen(&client, options.ping_timeout).await {
        return (false, why);
    }
    log::info!("change listener: listening on {CHANNEL}");
    callbacks.resync();
    let mut ping = tokio::time::interval(options.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(Ok(n)) => handle(&n, callbacks),
                Some(Err(e)) => return (true, format!("connection failed: {e}")),
                None => return (true, "connection closed".into()),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(options.ping_timeout, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return (true, format!("ping failed: {e}")),
                    Err(_) => return (true, "ping timed out".into()),
                }
            }
        }
    }
}

/// Connects through `tls` and starts driving the connection (see [`drive`]); the driver
/// stops when the returned guard is dropped.
async fn open<T>(
    config: &tokio_postgres::Config,
    tls: T,
    timeout: Duration,
    sender: mpsc::UnboundedSender<Result<Notification, tokio_postgres::Error>>,
) -> Result<(Client, AbortOnDrop), String>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    match tokio::time::timeout(timeout, config.connect(tls)).await {
        Ok(Ok((client, connection))) => {
            Ok((client, AbortOnDrop(tokio::spawn(drive(connection, sender)))))
        }
        Ok(Err(e)) => Err(format!("cannot connect: {}", describe(&e))),
        Err(_) => Err("connecting timed out".into()),
    }
}

/// The statement that subscribes to [`CHANNEL`] (a literal: identifiers cannot be
/// parameters; a unit test keeps the two in step).
const LISTEN: &str = "LISTEN tollgate_changes";

/// Sends `LISTEN` on the channel.
async fn listen(client: &Client, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, client.batch_execute(LISTEN)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("LISTEN failed: {e}")),
        Err(_) => Err("LISTEN timed out".into()),
    }
}

/// Parses one notification and hands it on; bad payloads are logged and skipped.
fn handle(notification: &Notification, callbacks: &Callbacks) {
    if notification.channel() != CHANNEL {
        return;
    }
    match Change::parse(notification.payload()) {
        Ok(change) => callbacks.change(change),
        Err(e) => log::warn!(
            "change listener: skipping notification from backend {}: {e}",
            notification.process_id()
        ),
    }
}

/// Polls the connection (which also carries our queries) and forwards notifications and
/// the final error; ends when the connection does.
async fn drive<S>(
    mut connection: Connection<Socket, S>,
    sender: mpsc::UnboundedSender<Result<Notification, tokio_postgres::Error>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = stream.next().await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                if sender.send(Ok(n)).is_err() {
                    return;
                }
            }
            Ok(AsyncMessage::Notice(notice)) => {
                log::debug!("change listener: server notice: {}", notice.message());
            }
            Ok(_) => {}
            Err(e) => {
                let _ = sender.send(Err(e));
                return;
            }
        }
    }
}

/// Aborts a task when dropped (the connection driver of a session that ended).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Between half of `backoff` and all of it, so many instances do not reconnect in step.
fn jitter(rng: &SystemRandom, backoff: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let fraction = match rng.fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    backoff.mul_f64(0.5 + 0.5 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_statement_names_the_channel() {
        assert_eq!(LISTEN, format!("LISTEN {CHANNEL}"));
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        let rng = SystemRandom::new();
        let backoff = Duration::from_millis(800);
        for _ in 0..200 {
            let wait = jitter(&rng, backoff);
            assert!(wait >= backoff / 2 && wait <= backoff, "{wait:?}");
        }
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error_not_a_panic() {
        let plain = &DatabaseTls::Disable;
        let result = spawn_listener("postgres://u@127.0.0.1:1/db", plain, |_| {}, || {});
        assert!(matches!(result, Err(DbError::Invalid(_))));
        assert!(spawn_listener("not a url", plain, |_| {}, || {}).is_err());
    }
}
