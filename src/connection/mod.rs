//! Client connections of the proxy, before and between requests: the caps on open
//! connections ([`limits`]), the bounds on each request head ([`head`]), and the HTTP/1
//! keep-alive loop that ties them to Pingora ([`Front`]).
//!
//! Pingora's own loop (`impl ServerApp for HttpServerApp`) has no place for any of this, so
//! [`Front`] is that loop with three additions: a connection is counted (or refused) before
//! its first byte is read, its stream is a [`head::GuardedStream`], and every HTTP/1
//! session answers pipelined requests in order and finishes its response when the client
//! half-closes its side. HTTP/2 connections are counted, then handed to Pingora unchanged.

pub mod handshakes;
pub mod head;
pub mod hyper_listener;
pub mod limits;

use crate::access_log::{AccessLog, AccessRecord};
use crate::api_error::ApiError;
use crate::metrics;
use crate::reload::LiveConfig;
use crate::request_id;
use async_trait::async_trait;
use handshakes::Handshakes;
use head::{GuardedStream, HeadLimits};
use limits::{ConnectionCounts, Refusal};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub use head::head_received;

/// Pingora keeps an HTTP/1 connection open this long between requests (its default).
const KEEPALIVE_SECONDS: u64 = 60;
/// Longest wait to tell a refused connection why.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The proxy's connection handling around Pingora's HTTP application `A`.
pub struct Front<A> {
    app: Arc<A>,
    live: Arc<LiveConfig>,
    counts: Arc<ConnectionCounts>,
    handshakes: Arc<Handshakes>,
    refused: Arc<Refused>,
}

impl<A> Front<A> {
    /// Serves `app` on connections bounded by the current config of `live`; refusals are
    /// logged to `access_log`.
    pub fn new(app: A, live: Arc<LiveConfig>, access_log: AccessLog) -> Self {
        let counts = Arc::new(ConnectionCounts::default());
        Front {
            app: Arc::new(app),
            refused: Arc::new(Refused {
                live: Arc::clone(&live),
                access_log,
            }),
            handshakes: Arc::new(Handshakes::new(Arc::clone(&counts), Arc::clone(&live))),
            live,
            counts,
        }
    }

    /// Pingora's pre-TLS hook for the TLS listeners: counts a connection in the caps
    /// before its handshake ([`handshakes`]).
    pub fn pre_tls(&self) -> Arc<Handshakes> {
        Arc::clone(&self.handshakes)
    }
}

#[async_trait]
impl<A> ServerApp for Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer_addr = peer_socket(&stream);
        let peer = peer_addr.map(|a| a.ip());
        let http2 = !matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
        let (max, per_address, limits) = {
            let snapshot = self.live.current();
            let server = &snapshot.config.server;
            (
                server.max_connections,
                server.max_connections_per_ip,
                HeadLimits {
                    timeout: server.request_header_timeout,
                    max_size: server.max_request_header_size,
                },
            )
        };
        // A TLS connection took its place before its handshake (a plain one never did,
        // and skips the lock).
        let counted = peer_addr
            .filter(|_| stream.get_ssl().is_some())
            .and_then(|a| self.handshakes.take(a));
        let _permit = match counted.map_or_else(|| self.counts.acquire(peer, max, per_address), Ok)
        {
            Ok(permit) => permit,
            Err(refusal) => {
                self.refuse_connection(stream, refusal, peer, http2).await;
                return None;
            }
        };
        if http2 {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let mut stream: Stream = Box::new(GuardedStream::new(
            stream,
            limits,
            Arc::clone(&self.refused),
        ));
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None if first => {
                    // As Pingora's own loop does for a new connection.
                    let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE_SECONDS);
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
                None => {}
            }
            first = false;
            // Requests sent before the previous answer are answered in order (RFC 9112
            // §9.3.2), and a client that shut its sending side still gets its response.
            session.set_pipelining_enabled(true);
            session.set_abort_on_close(false);
            let reused = self.app.process_new_http(session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            let mut guarded = match next.into_any().downcast::<GuardedStream>() {
                Ok(guarded) => guarded,
                Err(_) => {
                    // Pingora hands back the stream it was given; anything else is a bug.
                    log::error!("a reused client connection lost its guard; closing it");
                    return None;
                }
            };
            guarded.expect_head();
            stream = guarded;
            settings = next_settings;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.app).await;
    }
}

impl<A> Front<A> {
    /// Tells an HTTP/1 client why its connection is closed (best effort), then closes it.
    async fn refuse_connection(
        &self,
        mut stream: Stream,
        refusal: Refusal,
        peer: Option<IpAddr>,
        http2: bool,
    ) {
        metrics::CONNECTIONS_REFUSED
            .with_label_values(&[refusal.reason()])
            .inc();
        log::debug!(
            "connection from {} refused: {} reached",
            peer.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            refusal.reason()
        );
        if !http2 {
            let answer = ApiError::TooManyConnections.http1_response(&request_id::generate());
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                stream.write_all(&answer).await?;
                stream.flush().await
            })
            .await;
        }
        let _ = stream.shutdown().await;
    }
}

/// Records the answers made on a connection before any request was parsed.
pub struct Refused {
    live: Arc<LiveConfig>,
    access_log: AccessLog,
}

impl Refused {
    /// The bytes of the answer to `error` for a client at `peer`, after logging it (error
    /// log, access log, metrics) under a fresh request id.
    pub fn answer(&self, error: &ApiError, peer: Option<IpAddr>) -> Vec<u8> {
        let id = request_id::generate();
        let id_text = id.to_str().unwrap_or("");
        let reason = match error {
            ApiError::HeaderTimeout => "header_timeout",
            ApiError::HeaderTooLarge => "header_too_large",
            _ => "unparsable",
        };
        metrics::CONNECTIONS_REFUSED
            .with_label_values(&[reason])
            .inc();
        let status = error.status();
        metrics::REQUESTS
            .with_label_values(&["none", "OTHER", status_label(status)])
            .inc();
        let client = peer.map(|ip| ip.to_string());
        log::info!(
            "request {id_text} from {} refused before parsing: {status} {}",
            client.as_deref().unwrap_or("-"),
            error.code()
        );
        if self.live.current().config.server.access_log {
            self.access_log.write(&AccessRecord {
                time: std::time::SystemTime::now(),
                request_id: id_text,
                client_ip: peer,
                method: "-",
                path: "-",
                route: None,
                status,
                upstream: None,
                consumer: None,
                auth: None,
                duration_ms: 0.0,
                bytes_in: 0,
                bytes_out: 0,
                error: Some(error.code()),
            });
        }
        error.http1_response(&id)
    }
}

/// The `status` label of a refusal (a fixed set, so no allocation).
fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        405 => "405",
        408 => "408",
        431 => "431",
        _ => "500",
    }
}

/// The peer's inet address and port, if the socket has one.
fn peer_socket(stream: &Stream) -> Option<SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}
