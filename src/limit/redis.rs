//! The Redis side of the limiter: a fred pool (single node or Cluster), the script
//! called with `EVALSHA` (and `EVAL` once after a `NOSCRIPT`, so a Redis restart or a
//! `SCRIPT FLUSH` fails no request), and a deadline on every call.
//!
//! Commands are sent as fred custom commands routed to a slot computed here once per
//! subject (`ClusterHash::Custom`), so no fred command-family feature is needed. Acquires
//! and peeks go through each thread's own client, coalesced with the calls waiting on that
//! thread (`batch`); releases, resets and undos through a shared pool.
//!
//! On a Cluster, subjects are grouped by hash slot and each group is one script call;
//! the groups run concurrently (one round trip of latency). A script is atomic only
//! within its group: when one group refuses (or fails) after another counted, the
//! counted groups are undone by a compensating call that the request does not wait
//! for. Until it lands, those windows are over-counted (a later request may be refused
//! that would have fitted), but nothing is ever over-admitted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::{Pool, WithOptions};
use fred::error::{Error as FredError, ErrorKind as FredErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::{
    ClusterDiscoveryPolicy, Config, Options, ReconnectPolicy, ServerConfig, TcpConfig,
    UnresponsiveConfig,
};
use fred::types::{Builder, ClusterHash, CustomCommand, Value};
use futures::future::join_all;

use super::batch::Lanes;
use super::metrics::{self, ErrorKind};
use super::policy::Subject;
use super::script::{self, Call, Mode, ScriptCall, SubjectKeys};
use super::window::Outcome;
use super::{LimitError, RedisSettings};

/// Time to open a TCP connection: generous next to the per-call timeout, because it
/// happens off the request path (the breaker keeps requests away meanwhile).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `connect` waits for Redis before starting with the breaker open.
const INITIAL_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// A connection that leaves a command unanswered this long is closed and reopened (a
/// half-open TCP connection would otherwise time out every call until the OS notices).
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(2);

/// Reconnection backoff: first retry after 50 ms (a restarted Redis is back quickly),
/// doubling up to 1 s, forever.
const RECONNECT_MIN_MS: u32 = 50;
const RECONNECT_MAX_MS: u32 = 1000;

/// `MOVED`/`ASK` redirections followed per call: a slot moves at most once or twice
/// during a resharding; more means the cluster is in trouble.
const MAX_REDIRECTIONS: u32 = 3;

/// Tries to give a lease back: a slot left behind costs its holder a concurrency unit
/// for the whole lease ttl, so a removal that times out is worth a couple more tries.
const RELEASE_ATTEMPTS: u32 = 3;

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BackendError {
    /// No answer before the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// fred or Redis reported an error.
    #[error("{0}")]
    Redis(#[from] FredError),
    /// The script answered something it never answers.
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

impl BackendError {
    /// The `kind` label of `tollgate_ratelimit_backend_errors_total`.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Timeout(_) => ErrorKind::Timeout,
            BackendError::Reply(_) => ErrorKind::Script,
            BackendError::Redis(e) => {
                // Redis names scripts in every script error: "ERR user_script:3: ...",
                // "NOSCRIPT ...", "BUSY Redis is busy running a script ...".
                if e.details().to_ascii_lowercase().contains("script") {
                    return ErrorKind::Script;
                }
                match e.kind() {
                    FredErrorKind::Timeout => ErrorKind::Timeout,
                    FredErrorKind::IO
                    | FredErrorKind::Canceled
                    | FredErrorKind::Routing
                    | FredErrorKind::Cluster
                    | FredErrorKind::Backpressure
                    | FredErrorKind::Auth => ErrorKind::Connection,
                    FredErrorKind::InvalidArgument
                    | FredErrorKind::InvalidCommand
                    | FredErrorKind::Protocol
                    | FredErrorKind::Parse => ErrorKind::Script,
                    _ => ErrorKind::Other,
                }
            }
        }
    }
}

/// The Redis backend. Cheap to clone (for tasks the request does not wait for).
#[derive(Clone)]
pub(crate) struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    /// For what does not decide a request: releases, undos, resets.
    client: WithOptions<Pool>,
    /// Acquires and peeks: each thread's own client, its calls coalesced.
    lanes: Lanes,
    cluster: bool,
    sender: Sender,
    lease_ttl_ms: u64,
}

/// Sends commands within the call deadline and counts them. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Sender {
    timeout: Duration,
    /// Commands sent to Redis, for tests and diagnostics.
    commands: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("cluster", &self.shared.cluster)
            .field("timeout", &self.shared.sender.timeout)
            .finish_non_exhaustive()
    }
}

/// One script call's share of the subjects: those in one Cluster slot (or all of
/// them, on a single Redis).
struct Group {
    slot: u16,
    /// Indices into the subjects.
    members: Vec<usize>,
}

impl RedisBackend {
    /// Builds the pool and starts connecting. Returns the backend and whether Redis
    /// answered within [`INITIAL_CONNECT_WAIT`]; it keeps reconnecting either way.
    pub(crate) async fn connect(settings: &RedisSettings) -> Result<(Self, bool), LimitError> {
        let config = client_config(settings)?;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = CONNECT_TIMEOUT;
                c.internal_command_timeout = CONNECT_TIMEOUT;
                // A script that was written but not answered may have run: never send it
                // twice (that would count the request twice).
                c.max_command_attempts = 1;
                c.max_redirections = MAX_REDIRECTIONS;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(UNRESPONSIVE_AFTER),
                    interval: UNRESPONSIVE_AFTER / 4,
                };
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .with_performance_config(|p| p.default_command_timeout = settings.timeout)
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                RECONNECT_MIN_MS,
                RECONNECT_MAX_MS,
                2,
            ));
        let pool = builder
            .build_pool(settings.pool_size.max(1))
            .map_err(|e| LimitError::InvalidSettings(e.to_string()))?;
        // The connection tasks run on the current runtime for as long as the pool
        // lives; the handle is not needed.
        drop(pool.connect());
        let connected = matches!(
            tokio::time::timeout(INITIAL_CONNECT_WAIT, pool.wait_for_connect()).await,
            Ok(Ok(()))
        );
        let options = Options {
            timeout: Some(settings.timeout),
            // Not connected: fail at once rather than queue until the deadline.
            fail_fast: true,
            max_attempts: Some(1),
            max_redirections: Some(MAX_REDIRECTIONS),
            ..Options::default()
        };
        let client = pool.with_options(&options);
        let sender = Sender {
            timeout: settings.timeout,
            commands: Arc::new(AtomicU64::new(0)),
        };
        let backend = RedisBackend {
            shared: Arc::new(Shared {
                client,
                lanes: Lanes::new(
                    builder,
                    pool.with_options(&options),
                    options,
                    sender.clone(),
                    settings.cluster,
                ),
                cluster: settings.cluster,
                sender,
                lease_ttl_ms: u64::try_from(settings.concurrency_lease_ttl.as_millis())
                    .unwrap_or(u64::MAX),
            }),
        };
        Ok((backend, connected))
    }

    /// Commands sent to Redis so far.
    pub(crate) fn commands(&self) -> u64 {
        self.shared.sender.commands.load(Ordering::Relaxed)
    }

    /// Runs an acquire (`cost` > 0 or not) or a peek for `subjects`, whose keys are
    /// `keys`: one script call per slot group, concurrently. Returns one outcome per
    /// entry, in subject order. On a Cluster with several groups, an acquire that one
    /// group refuses or fails is undone in the others (without waiting).
    pub(crate) async fn evaluate(
        &self,
        mode: Mode,
        cost: u64,
        lease_id: &str,
        subjects: &[Subject<'_>],
        keys: &[SubjectKeys],
    ) -> Result<Vec<Outcome>, BackendError> {
        let call = Call {
            mode,
            cost,
            lease_id,
            lease_ttl_ms: self.shared.lease_ttl_ms,
        };
        let groups = self.groups(keys);
        if let [group] = groups.as_slice() {
            let key_refs: Vec<&SubjectKeys> = keys.iter().collect();
            let entries = subjects.iter().map(Subject::entries).sum();
            let script_call = ScriptCall::new(&call, subjects, &key_refs, &[]);
            let reply = self
                .shared
                .lanes
                .run(group.slot, script_call, entries)
                .await?;
            return Ok(reply.outcomes);
        }

        // Several slots: one call per group, all at once.
        let group_subjects: Vec<Vec<Subject<'_>>> = groups
            .iter()
            .map(|g| g.members.iter().map(|&i| subjects[i]).collect())
            .collect();
        let calls = groups.iter().zip(&group_subjects).map(|(group, members)| {
            let key_refs: Vec<&SubjectKeys> = group.members.iter().map(|&i| &keys[i]).collect();
            let entries = members.iter().map(Subject::entries).sum();
            let script_call = ScriptCall::new(&call, members, &key_refs, &[]);
            self.shared.lanes.run(group.slot, script_call, entries)
        });
        let replies = join_all(calls).await;

        if mode == Mode::Acquire {
            let every_group_counted = replies
                .iter()
                .all(|r| matches!(r, Ok(reply) if reply.all_allowed));
            if !every_group_counted {
                for ((group, members), reply) in groups.iter().zip(&group_subjects).zip(&replies) {
                    if let Ok(reply) = reply {
                        if reply.all_allowed {
                            self.spawn_undo(&call, group, members, keys, &reply.outcomes);
                        }
                    }
                }
            }
        }

        // Put each group's outcomes back in subject order.
        let mut start = Vec::with_capacity(subjects.len());
        let mut total = 0;
        for subject in subjects {
            start.push(total);
            total += subject.entries();
        }
        let mut outcomes = vec![Outcome::default(); total];
        for (group, reply) in groups.iter().zip(replies) {
            let reply = reply?;
            let mut rest = reply.outcomes.as_slice();
            for &i in &group.members {
                let (mine, others) = rest.split_at(subjects[i].entries().min(rest.len()));
                outcomes[start[i]..start[i] + mine.len()].copy_from_slice(mine);
                rest = others;
            }
        }
        Ok(outcomes)
    }

    /// Gives back lease `id` on every leases key of `keys` (each its own command, as
    /// they may live in different slots). Spawned: never delays the response. A removal
    /// that fails is tried again, up to [`RELEASE_ATTEMPTS`] times in all, one call
    /// deadline apart (a Redis that just timed out may answer again a moment later).
    pub(crate) fn spawn_release(&self, id: Box<str>, keys: Vec<String>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to run it on: the lease expires after its ttl
        };
        let backend = self.clone();
        runtime.spawn(async move {
            let mut left = keys;
            for attempt in 1..=RELEASE_ATTEMPTS {
                left = backend.release_keys(&id, left).await;
                if left.is_empty() {
                    return;
                }
                if attempt < RELEASE_ATTEMPTS {
                    tokio::time::sleep(backend.shared.sender.timeout).await;
                }
            }
            log::debug!("rate limiting: lease {id} not released; it expires after its ttl");
        });
    }

    /// Removes lease `id` from every key at once (one command per key, sent together), so
    /// a released slot is free as soon as this returns.
    pub(crate) async fn release(&self, id: &str, keys: Vec<String>) {
        self.release_keys(id, keys).await;
    }

    /// Removes lease `id` from every key at once; returns the keys where that failed.
    async fn release_keys(&self, id: &str, keys: Vec<String>) -> Vec<String> {
        let removals = keys.iter().map(|key| {
            let slot = fred::util::redis_keyslot(key.as_bytes());
            let args = vec![Value::from(key.as_str()), Value::from(id)];
            self.shared
                .sender
                .command(&self.shared.client, "ZREM", slot, args)
        });
        let outcomes = futures::future::join_all(removals).await;
        keys.into_iter()
            .zip(outcomes)
            .filter_map(|(key, outcome)| {
                let e = outcome.err()?;
                metrics::backend_error(e.kind());
                log::debug!("rate limiting: releasing lease {id} failed: {e}");
                Some(key)
            })
            .collect()
    }

    /// Deletes both keys of a subject.
    pub(crate) async fn reset(&self, keys: &SubjectKeys) -> Result<(), BackendError> {
        let args = vec![
            Value::from(keys.windows.as_str()),
            Value::from(keys.leases.as_str()),
        ];
        self.shared
            .sender
            .command(&self.shared.client, "DEL", keys.slot, args)
            .await
            .map(drop)
    }

    /// The script calls needed for `keys`: one on a single Redis; one per distinct slot
    /// (in order of first appearance) on a Cluster.
    fn groups(&self, keys: &[SubjectKeys]) -> Vec<Group> {
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        if !self.shared.cluster {
            return vec![Group {
                slot: first.slot,
                members: (0..keys.len()).collect(),
            }];
        }
        let mut groups: Vec<Group> = Vec::with_capacity(1);
        for (i, k) in keys.iter().enumerate() {
            match groups.iter_mut().find(|g| g.slot == k.slot) {
                Some(group) => group.members.push(i),
                None => groups.push(Group {
                    slot: k.slot,
                    members: vec![i],
                }),
            }
        }
        groups
    }

    /// Undoes what an acquire counted in `group` (its windows by their tags, and its
    /// leases), in a task the request does not wait for.
    fn spawn_undo(
        &self,
        call: &Call<'_>,
        group: &Group,
        members: &[Subject<'_>],
        keys: &[SubjectKeys],
        outcomes: &[Outcome],
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let undo = Call {
            mode: Mode::Undo,
            ..*call
        };
        let key_refs: Vec<&SubjectKeys> = group.members.iter().map(|&i| &keys[i]).collect();
        let tags = script::window_tags(members, outcomes);
        let script_call = ScriptCall::new(&undo, members, &key_refs, &tags);
        let args = script::batch_arguments(&[&script_call]);
        let (backend, slot) = (self.clone(), group.slot);
        runtime.spawn(async move {
            let shared = &backend.shared;
            if let Err(e) = shared.sender.eval(&shared.client, slot, args).await {
                metrics::backend_error(e.kind());
                log::warn!("rate limiting: undoing a partly counted request failed: {e}");
            }
        });
    }
}

impl Sender {
    /// The deadline of each call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `EVALSHA`, and `EVAL` if Redis no longer has the script, within one deadline.
    /// `args` are [`script::batch_arguments`]: their first (a placeholder) becomes the
    /// script's SHA-1 or source.
    pub(crate) async fn eval<C: ClientLike>(
        &self,
        client: &C,
        slot: u16,
        mut args: Vec<Value>,
    ) -> Result<Value, BackendError> {
        let started = Instant::now();
        let attempt = async {
            let source = args.clone();
            if let Some(first) = args.first_mut() {
                *first = Value::String(script::SHA1.clone());
            }
            match self.send(client, "EVALSHA", slot, args).await {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    // Restarted or flushed: EVAL runs the script and caches it again.
                    let mut with_source = source;
                    if let Some(first) = with_source.first_mut() {
                        *first = Value::String(script::SOURCE_ARG.clone());
                    }
                    self.send(client, "EVAL", slot, with_source).await
                }
                result => result,
            }
        };
        let result = tokio::time::timeout(self.timeout, attempt).await;
        metrics::REDIS_DURATION.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => result.map_err(BackendError::Redis),
            Err(_) => Err(BackendError::Timeout(self.timeout)),
        }
    }

    /// Any other command, within the deadline.
    async fn command<C: ClientLike>(
        &self,
        client: &C,
        name: &'static str,
        slot: u16,
        args: Vec<Value>,
    ) -> Result<Value, BackendError> {
        match tokio::time::timeout(self.timeout, self.send(client, name, slot, args)).await {
            Ok(result) => result.map_err(BackendError::Redis),
            Err(_) => Err(BackendError::Timeout(self.timeout)),
        }
    }

    async fn send<C: ClientLike>(
        &self,
        client: &C,
        name: &'static str,
        slot: u16,
        args: Vec<Value>,
    ) -> Result<Value, FredError> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        let command = CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
        client.custom(command, args).await
    }
}

/// The fred config for `settings`: one node, or a Cluster seeded from every URL.
pub(crate) fn client_config(settings: &RedisSettings) -> Result<Config, LimitError> {
    let invalid = |e: FredError| LimitError::InvalidSettings(e.to_string());
    let Some(first) = settings.urls.first() else {
        return Err(LimitError::InvalidSettings("no Redis URL given".into()));
    };
    let mut config = Config::from_url(first).map_err(invalid)?;
    if settings.cluster {
        let mut hosts = Vec::new();
        for url in &settings.urls {
            match Config::from_url(url).map_err(invalid)?.server {
                ServerConfig::Centralized { server } => hosts.push(server),
                ServerConfig::Clustered { hosts: more, .. } => hosts.extend(more),
                _ => {
                    return Err(LimitError::InvalidSettings(format!(
                        "{url}: expected redis:// or redis-cluster://"
                    )))
                }
            }
        }
        config.server = ServerConfig::Clustered {
            hosts,
            policy: ClusterDiscoveryPolicy::default(),
        };
    } else if settings.urls.len() > 1 {
        return Err(LimitError::InvalidSettings(
            "several Redis URLs given, but cluster is not set".into(),
        ));
    } else if config.server.is_clustered() {
        return Err(LimitError::InvalidSettings(format!(
            "{first} is a cluster URL, but cluster is not set"
        )));
    }
    // Redis down at start is not an error: keep trying in the background.
    config.fail_fast = false;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(urls: &[&str], cluster: bool) -> RedisSettings {
        RedisSettings {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            cluster,
            ..RedisSettings::default()
        }
    }

    #[test]
    fn a_cluster_is_seeded_from_every_url() {
        let config = client_config(&settings(
            &["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"],
            true,
        ))
        .expect("valid cluster settings");
        let ServerConfig::Clustered { hosts, .. } = config.server else {
            panic!("expected a clustered config, got {:?}", config.server);
        };
        let ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();
        assert_eq!(ports, [7000, 7001]);
        assert!(!config.fail_fast);
    }

    #[test]
    fn inconsistent_settings_are_rejected() {
        for s in [
            settings(&[], false),
            settings(&["redis://a:1", "redis://b:2"], false),
            settings(&["not a url"], false),
        ] {
            assert!(
                matches!(client_config(&s), Err(LimitError::InvalidSettings(_))),
                "{:?}",
                s.urls
            );
        }
    }

    #[test]
    fn errors_are_classified_for_the_metric() {
        let redis =
            |kind, details: &str| BackendError::Redis(FredError::new(kind, details.to_string()));
        assert_eq!(
            BackendError::Timeout(Duration::from_millis(50)).kind(),
            ErrorKind::Timeout
        );
        assert_eq!(
            redis(FredErrorKind::Canceled, "Connection closed unexpectedly.").kind(),
            ErrorKind::Connection
        );
        assert_eq!(
            redis(
                FredErrorKind::Unknown,
                "ERR user_script:12: attempt to compare nil"
            )
            .kind(),
            ErrorKind::Script
        );
        assert_eq!(BackendError::Reply("x".into()).kind(), ErrorKind::Script);
        assert_eq!(
            redis(FredErrorKind::Unknown, "ERR something").kind(),
            ErrorKind::Other
        );
    }
}
