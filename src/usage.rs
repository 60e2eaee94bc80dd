//! Usage accounting: requests per day, consumer, key, route and outcome, added up in memory
//! and written to PostgreSQL in batches by the supervisor — never one write per request.
//! If the database is down, counts keep accumulating (bounded) and are written when it
//! returns; what cannot be kept is counted in `tollgate_usage_dropped_total`.

use crate::db::usage::UsageDelta;
use crate::db::{Day, Db, DbError};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// A fresh batch id, unique across instances and restarts: the same generator as request
/// ids (a random per-process prefix and a counter).
fn batch_id() -> String {
    let id = crate::request_id::generate();
    String::from_utf8_lossy(id.as_bytes()).into_owned()
}

/// Distinct counter rows held in memory at most; beyond this, new rows are dropped (and
/// counted) until a flush succeeds. A day of traffic rarely has more distinct rows.
const MAX_ROWS: usize = 200_000;
/// Shards, so concurrent requests rarely wait for each other.
const SHARDS: usize = 16;

/// One consumer's rows: few (its keys × routes × days), so a short list scanned in place.
type ConsumerRows = Vec<(Row, Counts)>;

struct Row {
    day: Day,
    key: Option<Box<str>>,
    route: Box<str>,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    allowed: u64,
    limited: u64,
}

#[derive(Default)]
struct Shard {
    consumers: HashMap<Box<str>, ConsumerRows>,
    rows: usize,
}

/// The in-memory counters.
pub struct UsageRecorder {
    shards: Vec<Mutex<Shard>>,
    /// The batch being written: taken out of the counters, kept here under its id until
    /// the database has it. Locking it also serialises flushes.
    batch: tokio::sync::Mutex<Option<Batch>>,
    /// Rows of that batch, for [`pending_rows`](Self::pending_rows) without the lock.
    batch_rows: AtomicUsize,
}

/// Counts on their way to the database, under the id that makes the write idempotent.
struct Batch {
    id: String,
    deltas: Vec<UsageDelta>,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        UsageRecorder {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            batch: tokio::sync::Mutex::new(None),
            batch_rows: AtomicUsize::new(0),
        }
    }
}

impl UsageRecorder {
    /// Counts one request of `consumer` (with API key `key`, if any) on `route`. Allocates
    /// only for the first request of a row.
    pub fn record(&self, consumer: &str, key: Option<&str>, route: &str, limited: bool) {
        self.add(
            Day::today(),
            consumer,
            key,
            route,
            Counts {
                allowed: u64::from(!limited),
                limited: u64::from(limited),
            },
        );
    }

    fn add(&self, day: Day, consumer: &str, key: Option<&str>, route: &str, counts: Counts) {
        let mut shard = self
            .shard(consumer)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let full = shard.rows >= MAX_ROWS / SHARDS;
        if let Some(rows) = shard.consumers.get_mut(consumer) {
            if let Some((_, c)) = rows
                .iter_mut()
                .find(|(r, _)| r.day == day && r.key.as_deref() == key && &*r.route == route)
            {
                c.allowed += counts.allowed;
                c.limited += counts.limited;
                return;
            }
        }
        if full {
            crate::metrics::USAGE_DROPPED.inc_by(counts.allowed + counts.limited);
            return;
        }
        let row = Row {
            day,
            key: key.map(Into::into),
            route: route.into(),
        };
        shard
            .consumers
            .entry(consumer.into())
            .or_default()
            .push((row, counts));
        shard.rows += 1;
    }

    fn shard(&self, consumer: &str) -> &Mutex<Shard> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        consumer.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// A copy of every counter (to write them).
    fn snapshot(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (consumer, rows) in &shard.consumers {
                out.extend(rows.iter().map(|(r, c)| UsageDelta {
                    day: r.day,
                    consumer_id: consumer.to_string(),
                    key_id: r.key.as_deref().map(str::to_string),
                    route: r.route.to_string(),
                    allowed: c.allowed,
                    limited: c.limited,
                }));
            }
        }
        out
    }

    /// Subtracts what was written; rows that reach zero are dropped.
    fn subtract(&self, written: &[UsageDelta]) {
        for d in written {
            let mut shard = self
                .shard(&d.consumer_id)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let Some(rows) = shard.consumers.get_mut(d.consumer_id.as_str()) else {
                continue;
            };
            let before = rows.len();
            rows.retain_mut(|(r, c)| {
                if r.day == d.day && r.key.as_deref() == d.key_id.as_deref() && *r.route == *d.route
                {
                    c.allowed -= d.allowed.min(c.allowed);
                    c.limited -= d.limited.min(c.limited);
                    c.allowed + c.limited > 0
                } else {
                    true
                }
            });
            let removed = before - rows.len();
            if rows.is_empty() {
                shard.consumers.remove(d.consumer_id.as_str());
            }
            shard.rows -= removed;
        }
    }

    /// Writes everything counted so far, exactly once (one transaction per batch). The counts move
    /// from the counters into a batch with a fresh id, which stays until the database has
    /// it: a failed write is retried later with the same id, and a write that committed but
    /// whose answer was lost (or whose flush was cancelled, e.g. at shutdown) is recognised
    /// by its id and not added twice. Flushes run one at a time. Then stamps the keys of the
    /// batch as used at this time (exact to the flush interval); a failure there is only
    /// logged. Returns the rows written.
    pub async fn flush(&self, db: &Db) -> Result<usize, DbError> {
        let mut pending = self.batch.lock().await;
        let mut written = 0;
        // First a batch left by a failed or cancelled flush, then everything counted since:
        // when this returns `Ok`, every request counted before the call is written.
        if let Some(left) = pending.take() {
            written += self.write(db, &mut pending, left).await?;
        }
        let deltas = self.snapshot();
        if deltas.is_empty() {
            return Ok(written);
        }
        self.subtract(&deltas);
        let batch = Batch {
            id: batch_id(),
            deltas,
        };
        written += self.write(db, &mut pending, batch).await?;
        Ok(written)
    }

    /// Writes `batch`, keeping it in `pending` until the database has it (so that a failed
    /// or cancelled write is retried under the same id); then stamps its keys as used.
    async fn write(
        &self,
        db: &Db,
        pending: &mut Option<Batch>,
        batch: Batch,
    ) -> Result<usize, DbError> {
        self.batch_rows.store(batch.deltas.len(), Ordering::Relaxed);
        // Put back first: if this future is dropped mid-write, the batch is still here.
        let batch = pending.insert(batch);
        let now = SystemTime::now();
        match crate::db::usage::record(db, &batch.id, &batch.deltas).await {
            Ok(_) => {}
            // The database refuses this batch for good (a counter out of range, a schema
            // problem): retrying would block every later flush, so it is dropped, counted.
            Err(e @ (DbError::Invalid(_) | DbError::Schema(_))) => {
                let requests: u64 = batch.deltas.iter().map(|d| d.allowed + d.limited).sum();
                crate::metrics::USAGE_DROPPED.inc_by(requests);
                log::error!(
                    "usage: batch {} refused, {requests} requests dropped: {e}",
                    batch.id
                );
                *pending = None;
                self.batch_rows.store(0, Ordering::Relaxed);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        let used: Vec<(String, SystemTime)> = batch
            .deltas
            .iter()
            .filter_map(|d| d.key_id.clone().map(|id| (id, now)))
            .collect();
        let rows = batch.deltas.len();
        *pending = None;
        self.batch_rows.store(0, Ordering::Relaxed);
        if let Err(e) = crate::db::keys::touch_last_used(db, &used).await {
            log::warn!(
                "usage: recording when {} key(s) were last used failed: {e}",
                used.len()
            );
        }
        Ok(rows)
    }

    /// Rows waiting to be written (counters and the batch on its way).
    pub fn pending_rows(&self) -> usize {
        let counters: usize = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).rows)
            .sum();
        counters + self.batch_rows.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_add_up_per_row() {
        let u = UsageRecorder::default();
        for _ in 0..3 {
            u.record("alice", Some("k1"), "orders", false);
        }
        u.record("alice", Some("k1"), "orders", true);
        u.record("alice", None, "orders", false);
        u.record("bob", Some("k2"), "search", false);
        assert_eq!(u.pending_rows(), 3);
        let mut rows = u.snapshot();
        rows.sort_by(|a, b| (&a.consumer_id, &a.key_id).cmp(&(&b.consumer_id, &b.key_id)));
        assert_eq!((rows[1].allowed, rows[1].limited), (3, 1));
        assert_eq!(rows[0].key_id, None);
        u.record("alice", Some("k1"), "orders", false);
        u.subtract(&rows);
        assert_eq!(u.pending_rows(), 1, "what arrived after the snapshot stays");
        assert_eq!(u.snapshot()[0].allowed, 1);
    }
}
