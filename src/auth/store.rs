//! Where consumers and API keys live, behind one trait: the YAML file now, PostgreSQL later.
//! The proxy always looks up through [`CachedStore`], which keeps found keys for a while and
//! remembers unknown ones briefly, so a flood of random keys never reaches the store.

use super::api_key::KeyHash;
pub use crate::config::CacheSettings;
use async_trait::async_trait;
use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Whether a consumer or key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Disabled,
}

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

/// A store with caches in front. A cache hit costs no store round trip.
pub struct CachedStore {
    store: Arc<dyn CredentialStore>,
    keys: Cache<KeyHash, Arc<KeyRecord>>,
    unknown_keys: Cache<KeyHash, ()>,
    consumers: Cache<String, Option<Arc<Consumer>>>,
}

impl CachedStore {
    /// Caches in front of `store`.
    pub fn new(store: Arc<dyn CredentialStore>, settings: &CacheSettings) -> Self {
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
        }
    }

    /// The key with this hash, from the cache or the store.
    pub async fn find_key(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        if let Some(found) = self.keys.get(hash) {
            return Ok(Some(found));
        }
        if self.unknown_keys.contains_key(hash) {
            return Ok(None);
        }
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
        let cached = CachedStore::new(
            store.clone(),
            &CacheSettings {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
                max_entries: 100,
            },
        );
        let bad = hasher.hash("bad");
        for _ in 0..5 {
            assert!(cached.find_key(&good).await.unwrap().is_some());
            assert!(cached.find_key(&bad).await.unwrap().is_none());
        }
        assert_eq!(store.calls.load(Ordering::Relaxed), 2);
        cached.evict_key(&good);
        assert!(cached.find_key(&good).await.unwrap().is_some());
        assert_eq!(store.calls.load(Ordering::Relaxed), 3);
    }
}
