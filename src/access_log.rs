//! One JSON line per request on standard output, written by a dedicated thread so that a
//! slow terminal or pipe never blocks a request. When the writer falls behind, lines are
//! dropped and counted (`tollgate_access_log_dropped_total`) rather than queued without bound.

use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// One access-log record.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<String>,
    pub consumer: Option<&'a str>,
    pub auth: Option<&'static str>,
    pub duration_ms: f64,
    pub bytes_in: usize,
    pub bytes_out: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// What the writer thread is asked to do.
enum Message {
    Line(Vec<u8>),
    /// Write out everything queued before this, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Message>,
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Message>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                while let Ok(first) = rx.recv() {
                    // Write a burst in one go, then flush so lines appear promptly.
                    for message in std::iter::once(first).chain(rx.try_iter()) {
                        match message {
                            Message::Line(line) => {
                                let _ = out.write_all(&line);
                            }
                            Message::Flush(done) => {
                                let _ = out.flush();
                                let _ = done.send(());
                            }
                        }
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { tx })
    }

    /// Queues one record; never blocks.
    pub fn write(&self, record: &AccessRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                log::warn!("cannot encode access-log record: {e}");
                return;
            }
        };
        line.push(b'\n');
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                crate::metrics::ACCESS_LOG_DROPPED.inc();
            }
        }
    }

    /// Waits (up to `timeout`) until every line queued so far is written out.
    pub fn flush(&self, timeout: std::time::Duration) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-23T13:24:47.123Z`.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
