//! The client stream of an HTTP/1 connection, watched while a request head is expected.
//!
//! Pingora 0.9 bounds each read of a request head (60 s) but not the whole head, lets a
//! head grow to 1 MiB, and answers a head it cannot parse with an empty `400` before any
//! `ProxyHttp` phase runs. [`GuardedStream`] sits under Pingora's HTTP/1 session and, from
//! the moment a head is expected until the proxy has it ([`head_received`]):
//! - ends the head after `server.request_header_timeout` in total (408 once bytes came);
//! - refuses a head larger than `server.max_request_header_size` (431);
//! - replaces any answer Pingora writes in that phase (its parse refusals) with the
//!   gateway's JSON error, with an `X-Request-Id`.
//!
//! Outside that phase every read and write goes straight through.

use super::Refused;
use crate::api_error::ApiError;
use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bounds on a request head, read from the config when the connection is accepted.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Total time for one head.
    pub timeout: Duration,
    /// Largest head, in bytes.
    pub max_size: usize,
}

/// A client stream that bounds request heads (see the module docs).
pub struct GuardedStream {
    inner: Stream,
    limits: HeadLimits,
    refused: Arc<Refused>,
    /// Set by the proxy (through [`head_received`]) once Pingora parsed the head.
    received: AtomicBool,
    watch: Watch,
}

/// State while a head is expected.
struct Watch {
    /// A head is expected and the proxy has not said it got it.
    active: bool,
    /// When the head must be complete; `None` until the clock starts.
    deadline: Option<Instant>,
    /// Wakes a pending read at the deadline.
    timer: Pin<Box<Sleep>>,
    /// Head bytes seen so far.
    bytes: usize,
    /// The head's end (an empty line) has been seen.
    ended: bool,
    /// A non-empty line has begun (empty lines before the request line do not end a head).
    started: bool,
    /// The last byte that was not `\r` was `\n`.
    after_newline: bool,
    /// The answer being written instead of Pingora's, or after a refusal.
    answer: Option<Answer>,
}

/// The gateway's own answer on this connection; the connection closes after it.
struct Answer {
    bytes: Vec<u8>,
    written: usize,
    /// Why reads fail from now on.
    kind: io::ErrorKind,
}

impl GuardedStream {
    /// Wraps a freshly accepted stream; the clock of its first head starts now.
    pub fn new(inner: Stream, limits: HeadLimits, refused: Arc<Refused>) -> Self {
        let deadline = Instant::now() + limits.timeout;
        GuardedStream {
            inner,
            limits,
            refused,
            received: AtomicBool::new(false),
            watch: Watch {
                active: true,
                deadline: Some(deadline),
                timer: Box::pin(tokio::time::sleep_until(deadline)),
                bytes: 0,
                ended: false,
                started: false,
                after_newline: false,
                answer: None,
            },
        }
    }

    /// A reused keep-alive connection now waits for its next head; that head's clock starts
    /// with its first byte (the idle time before it is Pingora's keep-alive timeout).
    pub fn expect_head(&mut self) {
        self.received.store(false, Ordering::Release);
        let w = &mut self.watch;
        w.active = true;
        w.deadline = None;
        w.bytes = 0;
        w.ended = false;
        w.started = false;
        w.after_newline = false;
    }

    /// Whether the head phase is on; turns it off once the proxy has the head.
    fn watching(&mut self) -> bool {
        if self.watch.active && self.received.load(Ordering::Acquire) {
            self.watch.active = false;
        }
        self.watch.active
    }

    /// Counts `bytes` read while a head is expected. `Err` when the head grew too large.
    fn observe(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        if bytes.is_empty() || self.watch.ended {
            return Ok(());
        }
        if self.watch.deadline.is_none() {
            let deadline = Instant::now() + self.limits.timeout;
            self.watch.deadline = Some(deadline);
            self.watch.timer.as_mut().reset(deadline);
        }
        let w = &mut self.watch;
        let mut head_len = bytes.len();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if w.started && w.after_newline => {
                    w.ended = true;
                    head_len = i + 1;
                    break;
                }
                b'\n' => w.after_newline = w.started,
                b'\r' => {}
                _ => {
                    w.started = true;
                    w.after_newline = false;
                }
            }
        }
        w.bytes += head_len;
        if w.bytes > self.limits.max_size {
            return Err(ApiError::HeaderTooLarge);
        }
        Ok(())
    }

    /// Starts answering `error` (and closing the connection after it).
    fn refuse(&mut self, error: ApiError, kind: io::ErrorKind) {
        let bytes = self.refused.answer(&error, self.peer());
        self.watch.answer = Some(Answer {
            bytes,
            written: 0,
            kind,
        });
    }

    /// Writes what the socket takes of the answer right now. The peer of a refused head may
    /// well not read: a refusal never waits for it.
    fn push_answer(&mut self, cx: &mut Context<'_>) {
        let Some(answer) = self.watch.answer.as_mut() else {
            return;
        };
        while answer.written < answer.bytes.len() {
            let rest = &answer.bytes[answer.written..];
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(n)) if n > 0 => answer.written += n,
                _ => {
                    // Pending, closed or failed: give up on the rest.
                    answer.written = answer.bytes.len();
                    return;
                }
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
    }

    fn peer(&self) -> Option<std::net::IpAddr> {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
    }
}

/// Tells the connection under `session` that the proxy has its request head, which ends the
/// head's clock and size count. Free for any other kind of session.
pub fn head_received(session: &ServerSession) {
    if let Some(stream) = session.stream() {
        if let Some(guarded) = (**stream).as_any().downcast_ref::<GuardedStream>() {
            guarded.received.store(true, Ordering::Release);
        }
    }
}

/// Whether `buf` starts a response head (`HTTP/1.x NNN`), and its status.
fn response_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let digits = rest.get(2..5)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(answer) = &this.watch.answer {
            let kind = answer.kind;
            this.push_answer(cx);
            return Poll::Ready(Err(io::Error::new(kind, "request head refused")));
        }
        if !this.watching() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.watch.deadline.is_some_and(|d| Instant::now() >= d) {
            return this.time_out(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let observed = this.observe(&buf.filled()[before..]);
                match observed {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(error) => {
                        buf.set_filled(before);
                        this.refuse(error, io::ErrorKind::InvalidData);
                        this.push_answer(cx);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "request head too large",
                        )))
                    }
                }
            }
            Poll::Pending => {
                if this.watch.deadline.is_some() && this.watch.timer.as_mut().poll(cx).is_ready() {
                    return this.time_out(cx);
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl GuardedStream {
    /// The head's time is up: answer 408 when part of it came, else just close.
    fn time_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.watch.bytes == 0 {
            // Nothing was sent: end of stream, which Pingora takes as a quiet close.
            self.watch.active = false;
            self.watch.answer = Some(Answer {
                bytes: Vec::new(),
                written: 0,
                kind: io::ErrorKind::TimedOut,
            });
            return Poll::Ready(Ok(()));
        }
        self.refuse(ApiError::HeaderTimeout, io::ErrorKind::TimedOut);
        self.push_answer(cx);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head timed out",
        )))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.answer.is_some() {
            // The gateway's answer replaced whatever Pingora writes now.
            this.push_answer(cx);
            return Poll::Ready(Ok(buf.len()));
        }
        if this.watching() {
            if let Some(status) = response_status(buf) {
                // Only Pingora answers before the proxy has the head: it refused the head.
                let error = match status {
                    405 => ApiError::ConnectNotSupported,
                    _ => ApiError::BadRequest,
                };
                this.refuse(error, io::ErrorKind::InvalidData);
                this.push_answer(cx);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.push_answer(cx);
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.answer.is_some() || this.watching() {
            // Rare (a refusal in progress): go through poll_write one slice at a time.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_is_recognised_with_its_status() {
        assert_eq!(response_status(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(response_status(b"HTTP/1.0 405 x"), Some(405));
        assert_eq!(response_status(b"HTTP/1.1 4x0"), None);
        assert_eq!(response_status(b"{\"a\":1}"), None);
        assert_eq!(response_status(b"HTTP/1.1"), None);
    }
}
