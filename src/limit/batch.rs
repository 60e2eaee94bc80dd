//! Coalescing: the script calls waiting on one worker thread at the same moment go to
//! Redis as one `EVALSHA`, whose script decides each of them in turn (in arrival order)
//! and answers each, so Redis still decides every request exactly, in fewer round trips
//! and syscalls.
//!
//! Each thread that calls the limiter has its own [`Lane`]: its own fred client (so its
//! connections are driven by tasks on that thread's runtime, and a request wakes no
//! other thread), a queue, and at most one round in flight. Natural batching: a call
//! that finds its lane idle starts a driver task at once (no timer delay for a lone
//! request); calls that arrive while a round is in flight wait in the queue and go out
//! together as soon as it returns, at most [`MAX_BATCH`] per script call. On a Cluster,
//! a round is one script call per slot, concurrently. While a lane's connection is being
//! opened (its thread's first call) or reopened, its calls go alone through the shared
//! pool, as every call did before lanes.
//!
//! Every call keeps its own deadline from the moment it is queued: one that gives up
//! before its round is sent is left out of it (never counted); one that gives up after
//! is handled as any call that timed out after it was sent.

use std::sync::{Arc, Mutex, MutexGuard};

use fred::clients::{Client, Pool, WithOptions};
use fred::error::{Error as FredError, ErrorKind as FredErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::Options;
use fred::types::{Builder, Value};
use futures::future::join_all;
use thread_local::ThreadLocal;
use tokio::sync::oneshot;

use super::metrics;
use super::redis::{BackendError, Sender};
use super::script::{self, Reply, ScriptCall};

/// Calls decided by one script call at most: a batch runs atomically, so this bounds how
/// long one script call holds Redis (a few microseconds per call).
pub(crate) const MAX_BATCH: usize = 64;

/// Every thread's lane, and how to open one.
pub(crate) struct Lanes {
    lanes: ThreadLocal<Arc<Lane>>,
    /// The client settings every lane's client is built from.
    builder: Builder,
    /// For a call whose lane is not connected (yet, or again): sent alone.
    pool: WithOptions<Pool>,
    options: Options,
    sender: Sender,
    cluster: bool,
}

/// One thread's client, queue and round state.
struct Lane {
    client: WithOptions<Client>,
    queue: Mutex<Queue>,
    sender: Sender,
    cluster: bool,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A driver task is running (it empties the queue before it ends).
    driving: bool,
}

/// One queued script call and where its answer goes.
struct Job {
    slot: u16,
    call: ScriptCall,
    /// Entries its reply must have.
    entries: usize,
    reply: oneshot::Sender<Result<Reply, BackendError>>,
}

impl Lanes {
    /// Lanes whose clients are built from `builder`, sending with `options`.
    pub(crate) fn new(
        builder: Builder,
        pool: WithOptions<Pool>,
        options: Options,
        sender: Sender,
        cluster: bool,
    ) -> Self {
        Lanes {
            lanes: ThreadLocal::new(),
            builder,
            pool,
            options,
            sender,
            cluster,
        }
    }

    /// Runs `call` in `slot` with the calls queued on this thread at the same moment, and
    /// reads its reply of `entries` entries; within the call deadline from now.
    pub(crate) async fn run(
        &self,
        slot: u16,
        call: ScriptCall,
        entries: usize,
    ) -> Result<Reply, BackendError> {
        let lane = self.lanes.get_or_try(|| self.open())?;
        if !lane.client.is_connected() {
            // Its connection is being opened (the thread's first call) or reopened: the
            // shared pool has one already, or fails at once as this one would.
            return self.alone(slot, &call, entries).await;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            slot,
            call,
            entries,
            reply,
        };
        let start = {
            let mut queue = lane.lock();
            queue.jobs.push(job);
            !std::mem::replace(&mut queue.driving, true)
        };
        if start {
            tokio::spawn(Arc::clone(lane).drive());
        }
        let timeout = self.sender.timeout();
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            // The driver is gone (its runtime is shutting down).
            Ok(Err(_)) => Err(BackendError::Redis(FredError::new(
                FredErrorKind::Canceled,
                "the rate-limit batch was dropped",
            ))),
            Err(_) => Err(BackendError::Timeout(timeout)),
        }
    }

    /// `call` on its own through the shared pool.
    async fn alone(
        &self,
        slot: u16,
        call: &ScriptCall,
        entries: usize,
    ) -> Result<Reply, BackendError> {
        metrics::BATCH_SIZE.observe(1.0);
        let value = self
            .sender
            .eval(&self.pool, slot, script::batch_arguments(&[call]))
            .await?;
        let mut replies = script::split_batch_reply(value, 1).map_err(BackendError::Reply)?;
        let value = replies.pop().unwrap_or(Value::Null);
        script::parse_reply(value, entries).map_err(BackendError::Reply)
    }

    /// This thread's lane: a client of its own, its connection tasks spawned on this
    /// thread's runtime.
    fn open(&self) -> Result<Arc<Lane>, BackendError> {
        let client = self.builder.build()?;
        // The connection task lives as long as the client; the handle is not needed.
        drop(client.connect());
        Ok(Arc::new(Lane {
            client: client.with_options(&self.options),
            queue: Mutex::new(Queue::default()),
            sender: self.sender.clone(),
            cluster: self.cluster,
        }))
    }
}

/// Marks the lane idle if its driver ends early (its task dropped), so the next call
/// starts a new one.
struct Driving<'a> {
    lane: &'a Lane,
    /// Still to be marked: the driver has not found the queue empty.
    armed: bool,
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.lane.lock().driving = false;
        }
    }
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a queue that is still consistent.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends rounds until the queue is empty.
    async fn drive(self: Arc<Self>) {
        let mut driving = Driving {
            lane: &self,
            armed: true,
        };
        let mut round = Vec::new();
        while self.take(&mut round) {
            // Calls that gave up waiting are never sent.
            round.retain(|job: &Job| !job.reply.is_closed());
            if self.cluster {
                self.send_per_slot(&mut round).await;
            } else if let Some(first) = round.first() {
                let slot = first.slot;
                self.send(slot, &mut round).await;
            }
            round.clear();
        }
        // `take` marked the lane idle under the lock.
        driving.armed = false;
    }

    /// Moves the next round's calls (at most [`MAX_BATCH`], the oldest first) into the
    /// empty `round`; with none queued, marks the lane idle and returns `false`.
    fn take(&self, round: &mut Vec<Job>) -> bool {
        let mut queue = self.lock();
        if queue.jobs.is_empty() {
            queue.driving = false;
            return false;
        }
        if queue.jobs.len() <= MAX_BATCH {
            // Swapped, not moved: both vectors keep their capacity from round to round.
            std::mem::swap(&mut queue.jobs, round);
        } else {
            round.extend(queue.jobs.drain(..MAX_BATCH));
        }
        true
    }

    /// One script call per slot among `jobs`, all at once, each slot's calls in arrival
    /// order.
    async fn send_per_slot(&self, jobs: &mut Vec<Job>) {
        let mut groups: Vec<(u16, Vec<Job>)> = Vec::new();
        for job in jobs.drain(..) {
            match groups.iter_mut().find(|(slot, _)| *slot == job.slot) {
                Some((_, group)) => group.push(job),
                None => groups.push((job.slot, vec![job])),
            }
        }
        join_all(
            groups
                .iter_mut()
                .map(|(slot, group)| self.send(*slot, group)),
        )
        .await;
    }

    /// Sends `jobs` (all in `slot`) as one script call and answers each.
    async fn send(&self, slot: u16, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        metrics::BATCH_SIZE.observe(jobs.len() as f64);
        let calls: Vec<&ScriptCall> = jobs.iter().map(|job| &job.call).collect();
        let args = script::batch_arguments(&calls);
        let result = self
            .sender
            .eval(&self.client, slot, args)
            .await
            .and_then(|value| {
                script::split_batch_reply(value, jobs.len()).map_err(BackendError::Reply)
            });
        match result {
            Ok(replies) => {
                for (job, value) in jobs.drain(..).zip(replies) {
                    let reply =
                        script::parse_reply(value, job.entries).map_err(BackendError::Reply);
                    // The caller may have given up meanwhile: nobody to tell.
                    let _ = job.reply.send(reply);
                }
            }
            Err(e) => {
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
