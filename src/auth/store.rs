//! Where consumers and API keys live, behind one trait: the YAML file or PostgreSQL.
//! The proxy always looks up through [`CachedStore`], which keeps found keys for a while,
//! remembers unknown ones briefly, and keeps a flood of distinct random keys away from the
//! store: unknown keys count against the caller's network ([`KeyFailures`]; once its
//! budget is spent, uncached keys from it are refused without a lookup), and at most
//! `auth.cache.max_lookups` lookups run at once per process.

use super::api_key::KeyHash;
use super::client_ip::ClientNetwork;
pub use crate::config::{CacheSettings, KeyFailureSettings};
pub use crate::vocab::Status;
use async_trait::async_trait;
use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;

/// How long a lookup waits for one of the `max_lookups` slots before the store counts as
/// unavailable: a store that keeps every slot busy this long is overloaded or down, and
/// the caller is better served by a prompt 503 than by a queue.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// How long a key once found in the store is exempt from its caller's unknown-key budget:
/// after its cache entry expires it is looked up again even from an address that spent
/// its budget, so a flood from a client's own address (a shared NAT) does not lock out
/// its known keys. A day covers any client that uses its key now and then; a guesser
/// cannot know which hashes are in this set.
pub const KNOWN_KEYS_REMEMBERED: Duration = Duration::from_secs(24 * 3600);

/// Someone who calls the API: a customer, an app, a team.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub id: String,
    /// The plan that sets this consumer's limits; `None`: the default plan.
    pub plan: Option<String>,
    pub status: Status,
    pub scopes: Vec<String>,
}

/// What a valid key hash resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Stable identifier of the key (for logs and usage; not secret).
    pub key_id: String,
    /// `tg_` plus the public part of the key, for display.
    pub prefix: String,
    pub consumer: Arc<Consumer>,
    /// The key's own scopes if it has any, else its consumer's.
    pub scopes: Vec<String>,
    pub status: Status,
    pub expires_at: Option<SystemTime>,
}

/// Why a lookup could not be answered (as opposed to "no such key").
#[derive(Debug, thiserror::Error)]
#[error("credential store unavailable: {0}")]
pub struct StoreError(pub String);

/// Why [`CachedStore::find_key`] gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The store failed, or every lookup slot stayed busy for [`LOOKUP_WAIT`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller's network sent too many unknown keys: refused without a lookup.
    #[error("too many unknown API keys from {client}; retry in {retry_after:?}")]
    TooManyFailures {
        /// The network that spent its budget (an address, or an IPv6 prefix).
        client: ClientNetwork,
        /// Until its window ends.
        retry_after: Duration,
    },
}

/// Looks up keys and consumers.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The key with this hash, if any.
    async fn find_key(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError>;
    /// The consumer with this id, if any.
    async fn find_consumer(&self, id: &str) -> Result<Option<Arc<Consumer>>, StoreError>;
}

/// Consumers and keys from the config file.
#[derive(Default)]
pub struct YamlStore {
    keys: HashMap<KeyHash, Arc<KeyRecord>>,
    consumers: HashMap<String, Arc<Consumer>>,
}

impl YamlStore {
    /// A store over `keys` (with their consumers) and `consumers`.
    pub fn new(consumers: Vec<Arc<Consumer>>, keys: Vec<(KeyHash, Arc<KeyRecord>)>) -> Self {
        YamlStore {
            keys: keys.into_iter().collect(),
            consumers: consumers.into_iter().map(|c| (c.id.clone(), c)).collect(),
        }
    }
}

#[async_trait]
impl CredentialStore for YamlStore {
    async fn find_key(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.keys.get(hash).cloned())
    }

    async fn find_consumer(&self, id: &str) -> Result<Option<Arc<Consumer>>, StoreError> {
        Ok(self.consumers.get(id).cloned())
    }
}

/// Unknown API keys per client network, in fixed windows that start at a network's first
/// unknown key. Bounded in memory like the caches; kept across reloads while the settings
/// stay the same.
pub struct KeyFailures {
    settings: KeyFailureSettings,
    windows: Cache<ClientNetwork, Arc<FailureWindow>>,
    /// Keys found in the store lately (see [`KNOWN_KEYS_REMEMBERED`]).
    known: Cache<KeyHash, ()>,
}

struct FailureWindow {
    started: Instant,
    count: AtomicU64,
}

impl KeyFailures {
    /// Budgets of `settings`, for at most `max_entries` networks at once.
    pub fn new(settings: &KeyFailureSettings, max_entries: u64) -> Self {
        KeyFailures {
            settings: settings.clone(),
            windows: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(settings.per)
                .build(),
            known: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(KNOWN_KEYS_REMEMBERED)
                .build(),
        }
    }

    /// The settings these budgets follow.
    pub fn settings(&self) -> &KeyFailureSettings {
        &self.settings
    }

    /// Takes one unit of `client`'s budget for a lookup that may fail (given back with
    /// [`refund`](Self::refund) if the key is found), unless the key is `known` (then
    /// nothing is taken); when the budget is spent, the time until its window ends.
    /// Atomic: requests in flight together cannot overspend it.
    fn reserve_unless(
        &self,
        known: bool,
        client: ClientNetwork,
    ) -> Result<Option<Arc<FailureWindow>>, Duration> {
        if known {
            return Ok(None);
        }
        let window = self.windows.get_with(client, || {
            Arc::new(FailureWindow {
                started: Instant::now(),
                count: AtomicU64::new(0),
            })
        });
        let max = self.settings.max;
        match window
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(_) => Ok(Some(window)),
            Err(_) => Err(self
                .settings
                .per
                .saturating_sub(window.started.elapsed())
                .max(Duration::from_secs(1))),
        }
    }

    /// Gives back a unit taken by [`reserve_unless`](Self::reserve_unless): the key was
    /// known, or the store could not answer.
    fn refund(window: &FailureWindow) {
        // Only ever after a successful reserve, so the count is at least one.
        let _ = window
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// A store with caches in front. A cache hit costs no store round trip.
pub struct CachedStore {
    store: Arc<dyn CredentialStore>,
    keys: Cache<KeyHash, Arc<KeyRecord>>,
    unknown_keys: Cache<KeyHash, ()>,
    consumers: Cache<String, Option<Arc<Consumer>>>,
    /// One permit per store lookup allowed at once.
    lookups: Semaphore,
    failures: Arc<KeyFailures>,
}

impl CachedStore {
    /// Caches in front of `store`; unknown keys counted in `failures`.
    pub fn new(
        store: Arc<dyn CredentialStore>,
        settings: &CacheSettings,
        failures: Arc<KeyFailures>,
    ) -> Self {
        CachedStore {
            store,
            keys: Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .support_invalidation_closures()
                .build(),
            unknown_keys: Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.negative_ttl)
                .build(),
            consumers: Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build(),
            lookups: Semaphore::new(settings.max_lookups),
            failures,
        }
    }

    /// The unknown-key budgets (shared with the next config generation).
    pub fn failures(&self) -> &Arc<KeyFailures> {
        &self.failures
    }

    /// The key with this hash, presented by `client`: from the cache, else (unless
    /// `client` has spent its unknown-key budget) from the store. An unknown key counts
    /// against `client`.
    pub async fn find_key(
        &self,
        hash: &KeyHash,
        client: ClientNetwork,
    ) -> Result<Option<Arc<KeyRecord>>, LookupError> {
        if let Some(found) = self.keys.get(hash) {
            return Ok(Some(found));
        }
        let known = self.failures.known.contains_key(hash);
        let reserved = match self.failures.reserve_unless(known, client) {
            Ok(window) => window,
            Err(retry_after) => {
                crate::metrics::KEY_LOOKUPS
                    .with_label_values(&["refused"])
                    .inc();
                return Err(LookupError::TooManyFailures {
                    client,
                    retry_after,
                });
            }
        };
        let found = match self.unknown_keys.contains_key(hash) {
            true => Ok(None),
            false => self.lookup(hash).await,
        };
        if let Ok(Some(_)) = &found {
            self.failures.known.insert(*hash, ());
        }
        if let (Some(window), false) = (&reserved, matches!(found, Ok(None))) {
            KeyFailures::refund(window);
        }
        Ok(found?)
    }

    /// Asks the store, holding one of the lookup permits; the caches are checked again
    /// once a permit is held (a concurrent lookup of the same key may have answered).
    async fn lookup(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let _permit = match tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                crate::metrics::KEY_LOOKUPS
                    .with_label_values(&["busy"])
                    .inc();
                return Err(StoreError(format!(
                    "every key lookup slot stayed busy for {LOOKUP_WAIT:?}"
                )));
            }
        };
        if let Some(found) = self.keys.get(hash) {
            return Ok(Some(found));
        }
        if self.unknown_keys.contains_key(hash) {
            return Ok(None);
        }
        crate::metrics::KEY_LOOKUPS
            .with_label_values(&["store"])
            .inc();
        let found = self.store.find_key(hash).await?;
        match &found {
            Some(record) => self.keys.insert(*hash, Arc::clone(record)),
            None => self.unknown_keys.insert(*hash, ()),
        }
        Ok(found)
    }

    /// The consumer with this id (absent ones are cached too).
    pub async fn find_consumer(&self, id: &str) -> Result<Option<Arc<Consumer>>, StoreError> {
        if let Some(found) = self.consumers.get(id) {
            return Ok(found);
        }
        let found = self.store.find_consumer(id).await?;
        self.consumers.insert(id.to_string(), found.clone());
        Ok(found)
    }

    /// Forgets one key (after it changed in the store).
    pub fn evict_key(&self, hash: &KeyHash) {
        self.keys.invalidate(hash);
        self.unknown_keys.invalidate(hash);
    }

    /// Forgets one consumer and every cached key of it.
    pub fn evict_consumer(&self, id: &str) {
        self.consumers.invalidate(id);
        let id = id.to_string();
        // Keys are few per consumer; a predicate scan runs in the cache's background.
        let _ = self
            .keys
            .invalidate_entries_if(move |_, record| record.consumer.id == id);
    }

    /// Forgets everything (e.g. when notifications may have been missed).
    pub fn clear(&self) {
        self.keys.invalidate_all();
        self.unknown_keys.invalidate_all();
        self.consumers.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::api_key::KeyHasher;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts how often the store behind the cache is asked.
    struct Counting {
        inner: YamlStore,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl CredentialStore for Counting {
        async fn find_key(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.find_key(hash).await
        }
        async fn find_consumer(&self, id: &str) -> Result<Option<Arc<Consumer>>, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.find_consumer(id).await
        }
    }

    #[tokio::test]
    async fn hits_and_misses_are_cached() {
        let hasher = KeyHasher::new(b"pepper");
        let consumer = Arc::new(Consumer {
            id: "alice".into(),
            plan: None,
            status: Status::Active,
            scopes: vec![],
        });
        let record = Arc::new(KeyRecord {
            key_id: "k1".into(),
            prefix: "tg_abcdefgh".into(),
            consumer: consumer.clone(),
            scopes: vec![],
            status: Status::Active,
            expires_at: None,
        });
        let good = hasher.hash("good");
        let store = Arc::new(Counting {
            inner: YamlStore::new(vec![consumer], vec![(good, record)]),
            calls: AtomicUsize::new(0),
        });
        let cached = CachedStore::new(store.clone(), &settings(), failures(100));
        let bad = hasher.hash("bad");
        for _ in 0..5 {
            assert!(cached
                .find_key(&good, client("10.0.0.1"))
                .await
                .unwrap()
                .is_some());
            assert!(cached
                .find_key(&bad, client("10.0.0.1"))
                .await
                .unwrap()
                .is_none());
        }
        assert_eq!(store.calls.load(Ordering::Relaxed), 2);
        cached.evict_key(&good);
        assert!(cached
            .find_key(&good, client("10.0.0.1"))
            .await
            .unwrap()
            .is_some());
        assert_eq!(store.calls.load(Ordering::Relaxed), 3);
    }

    fn settings() -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            max_entries: 100,
            max_lookups: 4,
        }
    }

    fn failures(max: u64) -> Arc<KeyFailures> {
        let settings = KeyFailureSettings {
            max,
            per: Duration::from_secs(60),
        };
        Arc::new(KeyFailures::new(&settings, 100))
    }

    fn client(ip: &str) -> ClientNetwork {
        ClientNetwork::of(ip.parse().unwrap(), 64)
    }

    #[tokio::test]
    async fn a_network_that_spent_its_unknown_key_budget_is_refused_without_a_lookup() {
        let hasher = KeyHasher::new(b"pepper");
        let consumer = Arc::new(Consumer {
            id: "alice".into(),
            plan: None,
            status: Status::Active,
            scopes: vec![],
        });
        let good = hasher.hash("good");
        let record = Arc::new(KeyRecord {
            key_id: "k1".into(),
            prefix: "tg_abcdefgh".into(),
            consumer: consumer.clone(),
            scopes: vec![],
            status: Status::Active,
            expires_at: None,
        });
        let store = Arc::new(Counting {
            inner: YamlStore::new(vec![consumer], vec![(good, record)]),
            calls: AtomicUsize::new(0),
        });
        let cached = CachedStore::new(store.clone(), &settings(), failures(3));
        assert!(cached
            .find_key(&good, client("10.0.0.9"))
            .await
            .unwrap()
            .is_some());
        let attacker = client("2001:db8:1:2::1");
        for i in 0..3 {
            let random = hasher.hash(&format!("random-{i}"));
            assert!(cached.find_key(&random, attacker).await.unwrap().is_none());
        }
        assert_eq!(store.calls.load(Ordering::Relaxed), 4);
        for i in 3..100 {
            let random = hasher.hash(&format!("random-{i}"));
            // Another address of the same /64 is the same network.
            let err = cached
                .find_key(&random, client(&format!("2001:db8:1:2::{i:x}")))
                .await
                .unwrap_err();
            assert!(
                matches!(err, LookupError::TooManyFailures { retry_after, .. }
                    if retry_after >= Duration::from_secs(1)),
                "{err}"
            );
        }
        assert_eq!(
            store.calls.load(Ordering::Relaxed),
            4,
            "no lookup once spent"
        );
        // A known key still works from the spent network, cached or not (once found, it
        // is exempt from the budget); other networks are not affected.
        assert!(cached.find_key(&good, attacker).await.unwrap().is_some());
        cached.evict_key(&good);
        assert!(cached.find_key(&good, attacker).await.unwrap().is_some());
        assert_eq!(store.calls.load(Ordering::Relaxed), 5, "looked up again");
        let other = hasher.hash("random-other");
        assert!(cached
            .find_key(&other, client("10.0.0.9"))
            .await
            .unwrap()
            .is_none());
    }
}
