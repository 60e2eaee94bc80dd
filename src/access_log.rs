//! One JSON line per request on standard output, written in batches by a dedicated thread
//! so that a slow terminal or pipe never blocks a request, and logging costs a request no
//! system call and no wake-up of another thread.
//!
//! A request serialises its line into a buffer its worker thread reuses, then appends it
//! to the pending batch under a short lock. The writer thread takes the whole batch every
//! [`FLUSH_INTERVAL`] (sooner when it passes [`BATCH_BYTES`], or at once when the writer
//! was idle), writes it with one `write` and flushes. When the writer falls behind by more
//! than [`MAX_PENDING_BYTES`], lines are dropped and counted
//! (`tollgate_access_log_dropped_total`) rather than queued without bound.

use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Longest a line waits in the batch while requests keep coming.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// A batch this large is written without waiting for the interval.
const BATCH_BYTES: usize = 64 * 1024;

/// Bytes waiting for the writer before new lines are dropped.
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// A reused line buffer that grew past this (one huge line) is given back to the allocator.
const LINE_BUFFER_KEEP: usize = 16 * 1024;

/// One access-log record.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    /// When the request ended (RFC 3339, UTC, milliseconds).
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub consumer: Option<&'a str>,
    pub auth: Option<&'static str>,
    pub duration_ms: f64,
    pub bytes_in: usize,
    pub bytes_out: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// `2026-11-23T13:24:47.123Z`, formatted straight into the line.
fn rfc3339_millis<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// Lines waiting for the writer, and who waits for them to be written.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Answered once everything queued before them is written.
    flush_waiters: Vec<std::sync::mpsc::Sender<()>>,
    /// The writer waits for a first line (rather than for the interval to pass).
    writer_idle: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Shared {
    /// The batch; a writer that panicked while holding it left it intact (it never holds
    /// the lock while writing), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

thread_local! {
    /// Each worker thread's line buffer, reused from request to request.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Starts the writer thread, writing to standard output.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_batches(&writer, &mut std::io::stdout()))?;
        Ok(AccessLog { shared })
    }

    /// Queues one record; never blocks on output.
    pub fn write(&self, record: &AccessRecord) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            if let Err(e) = serde_json::to_writer(&mut *line, record) {
                log::warn!("cannot encode access-log record: {e}");
                return;
            }
            line.push(b'\n');
            self.append(line);
            if line.capacity() > LINE_BUFFER_KEEP {
                *line = Vec::with_capacity(512);
            }
        });
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        if pending.bytes.len() + line.len() > MAX_PENDING_BYTES {
            drop(pending);
            crate::metrics::ACCESS_LOG_DROPPED.inc();
            return;
        }
        let before = pending.bytes.len();
        pending.bytes.extend_from_slice(line);
        let wake = std::mem::take(&mut pending.writer_idle)
            || (before < BATCH_BYTES && pending.bytes.len() >= BATCH_BYTES);
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Waits (up to `timeout`) until every line queued so far is written out.
    pub fn flush(&self, timeout: Duration) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.shared.lock().flush_waiters.push(done_tx);
        self.shared.wake.notify_one();
        let _ = done_rx.recv_timeout(timeout);
    }
}

/// The writer thread: takes the batch, writes it, answers flush waiters, forever.
fn write_batches(shared: &Shared, out: &mut impl Write) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && pending.flush_waiters.is_empty() {
            pending.writer_idle = true;
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        pending.writer_idle = false;
        if pending.bytes.len() < BATCH_BYTES && pending.flush_waiters.is_empty() {
            // Let the batch fill for a moment; a full batch or a flush cuts this short.
            pending = shared
                .wake
                .wait_timeout(pending, FLUSH_INTERVAL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut pending.bytes, &mut batch);
        let waiters = std::mem::take(&mut pending.flush_waiters);
        drop(pending);
        // Nothing useful can be done when standard output fails; the lines are lost.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 4 * BATCH_BYTES {
            batch = Vec::with_capacity(BATCH_BYTES);
        }
        for done in waiters {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> AccessRecord<'_> {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: id,
            client_ip: Some("2001:db8::1".parse().unwrap()),
            method: "GET",
            path: "/a\"b",
            route: Some("r"),
            status: 200,
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            consumer: None,
            auth: Some("api_key"),
            duration_ms: 1.5,
            bytes_in: 0,
            bytes_out: 2,
            error: None,
        }
    }

    #[test]
    fn a_record_is_one_json_line_with_the_fields_in_their_text_forms() {
        let line = serde_json::to_value(record("id-1")).unwrap();
        assert_eq!(line["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(line["client_ip"], "2001:db8::1");
        assert_eq!(line["upstream"], "127.0.0.1:9000");
        assert_eq!(line["path"], "/a\"b");
        assert!(line.get("error").is_none());
    }

    #[test]
    fn lines_are_written_in_order_and_flush_waits_for_them() {
        /// Standard output stand-in that the test can read.
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let sink = Sink::default();
        let (writer, mut out) = (Arc::clone(&shared), sink.clone());
        std::thread::spawn(move || write_batches(&writer, &mut out));
        let log = AccessLog { shared };
        let ids: Vec<String> = (0..2000).map(|i| format!("id-{i}")).collect();
        for id in &ids {
            log.write(&record(id));
        }
        log.flush(Duration::from_secs(10));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let written: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string()
            })
            .map(|id| id.trim_matches('"').to_owned())
            .collect();
        assert_eq!(written, ids);
    }
}
