//! Revoked access tokens: a logout blocks its token's `jti` until the token expires, and a
//! revoked session (logout with the refresh token, or a replayed refresh token) blocks
//! every access token carrying that `sid` until the last one it can have expires.
//!
//! The proxy checks every verified token against an in-process set ([`RevokedTokens`]),
//! so the check costs no round trip. With Redis configured the set is shared:
//! [`RevocationBus::revoke`] adds the id to the sorted set `tg:revoked-tokens` (score: the
//! token's expiry) and publishes it on the channel `tollgate:revoked-tokens` in one
//! script call; every instance's [`RevocationBus::follow`] task applies what is published,
//! and reads the whole sorted set again whenever its subscription (re)connects and every
//! [`RESYNC_EVERY`], so a message lost while disconnected is caught up.

use crate::limit::RedisSettings;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::ReconnectPolicy;
use fred::types::{Builder, ClusterHash, CustomCommand, Value};
use moka::sync::Cache;
use moka::Expiry;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The sorted set of revoked token ids (member: `jti`, score: expiry in Unix seconds).
pub const REVOKED_KEY: &str = "tg:revoked-tokens";
/// The channel a revocation is published on (`<jti> <expiry>`).
pub const REVOKED_CHANNEL: &str = "tollgate:revoked-tokens";
/// How often the set is read again in full, in case a message was lost.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// A revocation is answered within this time or fails.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds a token id to the set, drops expired members and publishes the id, atomically.
const REVOKE_SCRIPT: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], tonumber(latest[2]) + 1)
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ARGV[2])
return 1
"#;

/// Why a revocation could not be shared.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// Redis is configured but did not take the revocation.
    #[error("recording the revocation in Redis failed: {0}")]
    Redis(String),
}

/// The ids of revoked tokens and sessions that have not expired yet, in this process.
pub struct RevokedTokens {
    ids: Cache<String, u64>,
    sessions: Cache<String, u64>,
}

/// How a revoked session is named in Redis (token ids are hex, so they never start so).
const SESSION_PREFIX: &str = "sid:";

impl std::fmt::Debug for RevokedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokedTokens")
            .field("entries", &self.ids.entry_count())
            .finish()
    }
}

/// An entry lives until its token expires.
struct UntilTokenExpiry;

impl Expiry<String, u64> for UntilTokenExpiry {
    fn expire_after_create(&self, _: &String, expires_at: &u64, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(expires_at.saturating_sub(unix_now())))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Default for RevokedTokens {
    fn default() -> Self {
        RevokedTokens {
            // No capacity bound: a bounded moka cache may refuse a new entry, and a lost
            // revocation is worse than memory. Entries leave when their token expires, and
            // each needs a login (throttled) to exist.
            ids: Cache::builder().expire_after(UntilTokenExpiry).build(),
            sessions: Cache::builder().expire_after(UntilTokenExpiry).build(),
        }
    }
}

impl RevokedTokens {
    /// Whether the token with id `jti` (of session `sid`) has been revoked, by itself or
    /// with its session.
    pub fn is_revoked(&self, jti: Option<&str>, sid: Option<&str>) -> bool {
        jti.is_some_and(|j| self.ids.contains_key(j))
            || sid.is_some_and(|s| self.sessions.contains_key(s))
    }

    /// Blocks a Redis member (a token id, or `sid:` and a session id) until `until` (Unix
    /// seconds); members already past it are ignored.
    pub fn insert(&self, member: &str, until: u64) {
        if until <= unix_now() {
            return;
        }
        match member.strip_prefix(SESSION_PREFIX) {
            Some(sid) => self.sessions.insert(sid.to_string(), until),
            None => self.ids.insert(member.to_string(), until),
        }
    }
}

/// Shares revocations between instances through Redis (or keeps them in this process
/// when Redis is not configured).
pub struct RevocationBus {
    tokens: Arc<RevokedTokens>,
    redis: Option<RedisSettings>,
    /// For the script call and the full reads; connected on first use.
    client: tokio::sync::OnceCell<Option<Client>>,
}

impl RevocationBus {
    /// A bus feeding `tokens` (the set the proxy checks), over `redis` if configured.
    pub fn new(tokens: Arc<RevokedTokens>, redis: Option<RedisSettings>) -> Self {
        RevocationBus {
            tokens,
            redis,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// Revokes token `jti` until `until` (Unix seconds: when verification would stop
    /// accepting it anyway) on every instance: with Redis, the id is stored and published
    /// first and taken into this process's set only once Redis has it, so a failure leaves
    /// the token valid everywhere and the caller can retry the same logout. Without Redis,
    /// the revocation holds in this process only.
    pub async fn revoke(&self, jti: &str, until: u64) -> Result<(), RevocationError> {
        self.revoke_member(jti, until).await
    }

    /// Revokes every access token of session `sid` until `until` (when the last token the
    /// session can have issued stops verifying), like [`revoke`](Self::revoke).
    pub async fn revoke_session(&self, sid: &str, until: u64) -> Result<(), RevocationError> {
        self.revoke_member(&format!("{SESSION_PREFIX}{sid}"), until)
            .await
    }

    async fn revoke_member(&self, jti: &str, until: u64) -> Result<(), RevocationError> {
        let Some(client) = self.client().await? else {
            self.tokens.insert(jti, until);
            return Ok(());
        };
        let args: Vec<Value> = vec![
            REVOKE_SCRIPT.into(),
            1i64.into(),
            REVOKED_KEY.into(),
            jti.into(),
            to_i64(until).into(),
            to_i64(unix_now()).into(),
            REVOKED_CHANNEL.into(),
        ];
        match tokio::time::timeout(
            REDIS_TIMEOUT,
            client.custom::<Value, Value>(key_command("EVAL"), args),
        )
        .await
        {
            Ok(Ok(_)) => {
                self.tokens.insert(jti, until);
                Ok(())
            }
            Ok(Err(e)) => Err(RevocationError::Redis(e.to_string())),
            Err(_) => Err(RevocationError::Redis(format!(
                "no answer within {REDIS_TIMEOUT:?}"
            ))),
        }
    }

    /// Follows revocations made on other instances until shutdown (returns at once
    /// without Redis).
    pub async fn follow(&self, mut shutdown: ShutdownWatch) {
        let Some(settings) = &self.redis else {
            return;
        };
        let subscriber = match builder(settings)
            .and_then(|b| b.build_subscriber_client().map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                log::error!("token revocation: cannot follow Redis: {e}");
                return;
            }
        };
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let _ = connect(&subscriber).await;
        let _resubscriber = subscriber.manage_subscriptions();
        subscribe(&subscriber).await;
        self.resync().await;
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.tick().await;
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(m) => self.apply(&m.value),
                    // Fell behind: read the whole set instead.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                Ok(_) = reconnects.recv() => self.resync().await,
                _ = resync.tick() => self.resync().await,
                _ = shutdown.changed() => if *shutdown.borrow() { break },
            }
        }
        let _ = subscriber.quit().await;
    }

    /// Applies one published `<jti> <expiry>`.
    fn apply(&self, message: &Value) {
        let Some(text) = message.as_str() else {
            return;
        };
        match text.split_once(' ').map(|(j, e)| (j, e.parse::<u64>())) {
            Some((jti, Ok(expires_at))) if !jti.is_empty() => self.tokens.insert(jti, expires_at),
            _ => log::warn!("token revocation: ignoring a malformed message"),
        }
    }

    /// Reads every still-valid revocation from Redis into the set.
    async fn resync(&self) {
        if let Ok(Some(client)) = self.client().await {
            self.read_all(client).await;
        }
    }

    /// Loads the revocations recorded in Redis before the server starts, on a runtime of
    /// its own (so no token revoked elsewhere is accepted while the follower connects).
    /// Gives up after [`REDIS_TIMEOUT`] with a warning if Redis cannot be reached.
    pub fn preload(&self) {
        let Some(settings) = &self.redis else {
            return;
        };
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            log::warn!("token revocation: no runtime to preload revocations");
            return;
        };
        rt.block_on(async {
            let client = match builder(settings).and_then(|b| b.build().map_err(|e| e.to_string()))
            {
                Ok(client) => client,
                Err(e) => {
                    log::warn!("token revocation: cannot preload: {e}");
                    return;
                }
            };
            if connect(&client).await {
                self.read_all(&client).await;
            }
            let _ = tokio::time::timeout(REDIS_TIMEOUT, client.quit()).await;
        });
    }

    /// Reads every still-valid revocation through `client` into the set.
    async fn read_all(&self, client: &Client) {
        let args: Vec<Value> = vec![
            REVOKED_KEY.into(),
            to_i64(unix_now()).into(),
            "+inf".into(),
            "BYSCORE".into(),
            "WITHSCORES".into(),
        ];
        let reply = tokio::time::timeout(
            REDIS_TIMEOUT,
            client.custom::<Value, Value>(key_command("ZRANGE"), args),
        )
        .await;
        let members = match reply {
            Ok(Ok(Value::Array(members))) => members,
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(e)) => {
                log::warn!("token revocation: reading {REVOKED_KEY} failed: {e}");
                return;
            }
            Err(_) => {
                log::warn!("token revocation: reading {REVOKED_KEY} timed out");
                return;
            }
        };
        for pair in members.chunks(2) {
            if let [jti, score] = pair {
                let expires_at = score
                    .as_f64()
                    .or_else(|| score.as_str().and_then(|s| s.parse::<f64>().ok()));
                if let (Some(jti), Some(expires_at)) = (jti.as_str(), expires_at) {
                    self.tokens.insert(&jti, expires_at as u64);
                }
            }
        }
    }

    /// The command client, connecting it the first time; `Ok(None)` without Redis.
    async fn client(&self) -> Result<Option<&Client>, RevocationError> {
        let client = self
            .client
            .get_or_init(|| async {
                let settings = self.redis.as_ref()?;
                let built = builder(settings).and_then(|b| b.build().map_err(|e| e.to_string()));
                match built {
                    Ok(client) => {
                        let _ = connect(&client).await;
                        Some(client)
                    }
                    Err(e) => {
                        log::error!("token revocation: cannot use Redis: {e}");
                        None
                    }
                }
            })
            .await;
        match (client, &self.redis) {
            (Some(c), _) => Ok(Some(c)),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(RevocationError::Redis(
                "the Redis settings are unusable".into(),
            )),
        }
    }
}

/// Command `name` routed to the slot of [`REVOKED_KEY`] (on a Cluster, `FirstKey` would hash
/// the first argument, which for `EVAL` is the script).
fn key_command(name: &'static str) -> CustomCommand {
    let slot = fred::util::redis_keyslot(REVOKED_KEY.as_bytes());
    CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

/// Subscribes to the revocation channel, retrying until Redis answers.
async fn subscribe(subscriber: &SubscriberClient) {
    let mut wait = Duration::from_millis(100);
    while let Err(e) = subscriber.subscribe(REVOKED_CHANNEL).await {
        log::warn!("token revocation: subscribing to {REVOKED_CHANNEL} failed: {e}; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Starts connecting `client` (it keeps reconnecting in the background for as long as it
/// lives) and waits for the connection at most [`REDIS_TIMEOUT`]; `true` when connected.
async fn connect(client: &impl ClientLike) -> bool {
    drop(client.connect());
    let connected = matches!(
        tokio::time::timeout(REDIS_TIMEOUT, client.wait_for_connect()).await,
        Ok(Ok(()))
    );
    if !connected {
        log::warn!("token revocation: Redis is not reachable yet; retrying in the background");
    }
    connected
}

/// A fred builder for `settings` that reconnects at once, then backs off up to a
/// second, forever.
fn builder(settings: &RedisSettings) -> Result<Builder, String> {
    let config = crate::limit::redis_client_config(settings).map_err(|e| e.to_string())?;
    let mut builder = Builder::from_config(config);
    builder.set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2));
    Ok(builder)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_ids_are_kept_until_they_expire() {
        let set = RevokedTokens::default();
        set.insert("a", unix_now() + 60);
        set.insert("old", unix_now().saturating_sub(1));
        set.insert("sid:fam_1", unix_now() + 60);
        assert!(set.is_revoked(Some("a"), None));
        assert!(!set.is_revoked(Some("old"), None));
        assert!(!set.is_revoked(Some("b"), Some("fam_2")));
        assert!(
            set.is_revoked(Some("b"), Some("fam_1")),
            "revoked with its session"
        );
        assert!(
            !set.is_revoked(Some("fam_1"), None),
            "sessions and ids apart"
        );
    }

    #[test]
    fn published_messages_are_applied() {
        let tokens = Arc::new(RevokedTokens::default());
        let bus = RevocationBus::new(Arc::clone(&tokens), None);
        bus.apply(&Value::from(format!("j1 {}", unix_now() + 60)));
        bus.apply(&Value::from("garbage"));
        bus.apply(&Value::from(" 123"));
        assert!(tokens.is_revoked(Some("j1"), None));
        assert!(!tokens.is_revoked(Some(""), None));
    }
}
