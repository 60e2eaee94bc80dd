//! `TestUpstream`: a real HTTP server the gateway proxies to.
//!
//! Behaviour by path (any method; the request body is always read, streaming,
//! and its size reported). The `/__...` markers are found anywhere in the
//! path, so they still work behind a route prefix the gateway does not strip
//! (`/api/__sleep/100` sleeps too):
//!
//! | path | response |
//! | --- | --- |
//! | `.../__status/{code}` | status `code`, echo JSON body |
//! | `.../__sleep/{ms}` | sleeps `ms` milliseconds, then 200 echo JSON |
//! | `.../__stream/{n}[?chunk=B&delay_ms=D]` | 200, `n` body bytes sent in chunks of `B` (default 1024) bytes, `D` ms apart (default 0), chunked encoding, `a..z` repeating |
//! | `.../__gzip` | 200 echo JSON, gzip-compressed, with `Content-Encoding: gzip` |
//! | `/healthz` (or any path ending in `/healthz`) | 200 `ok`, or 503 `unhealthy` after `set_healthy(false)` |
//! | anything else | 200 echo JSON |
//!
//! Any response also carries each header named in the query as `__header=name:value`
//! (repeatable; no percent-decoding), e.g. `?__header=vary:accept-encoding`.
//!
//! The echo JSON is
//! `{"upstream", "method", "path", "version", "headers", "body_bytes"}` where
//! `path` is the path and query as received and `headers` maps lowercased
//! names to values (repeated headers joined with `", "`). Every response
//! carries an `x-upstream: <name>` header, and the `Content-Type` given as
//! `?content_type=<type>` (taken verbatim) when the query has one.
//!
//! The server runs on its own single-worker Tokio runtime, so it keeps
//! serving whatever the test's runtime is doing, and works under any
//! `#[tokio::test]` flavour.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use openssl::ssl::{self, AlpnError, Ssl, SslAcceptor, SslAcceptorBuilder, SslMethod};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::certs::LeafCert;
use super::net::localhost;

type ResponseBody = BoxBody<Bytes, Infallible>;

/// A real HTTP/1.1 (and HTTP/2) server on 127.0.0.1, plain or TLS.
/// Stopped, with all its connections closed, when dropped.
pub struct TestUpstream {
    shared: Arc<Shared>,
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
    /// The accept loop while the server is running; `None` while stopped.
    server: Option<JoinHandle<()>>,
}

/// State shared between the handle and the server tasks.
struct Shared {
    name: String,
    tls: Option<SslAcceptor>,
    healthy: AtomicBool,
    hits: AtomicU64,
    health_checks: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicUsize,
}

impl TestUpstream {
    /// Starts a plain-HTTP upstream called `name` on a free port.
    pub async fn start(name: &str) -> Self {
        Self::launch(name, None)
    }

    /// Starts an HTTPS upstream called `name` presenting `cert`.
    /// It offers ALPN `h2` and `http/1.1`.
    pub async fn start_tls(name: &str, cert: &LeafCert) -> Self {
        Self::launch(name, Some(tls_acceptor(cert)))
    }

    fn launch(name: &str, tls: Option<SslAcceptor>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("upstream-{name}"))
            .enable_all()
            .build()
            .expect("cannot build the upstream's runtime");
        let listener = std::net::TcpListener::bind(localhost(0))
            .expect("cannot bind a port for the test upstream");
        let port = listener
            .local_addr()
            .expect("bound listener has no local address")
            .port();
        let mut upstream = Self {
            shared: Arc::new(Shared {
                name: name.to_string(),
                tls,
                healthy: AtomicBool::new(true),
                hits: AtomicU64::new(0),
                health_checks: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                open_connections: AtomicUsize::new(0),
            }),
            port,
            runtime: Some(runtime),
            server: None,
        };
        upstream.serve(listener);
        upstream
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("cannot make the upstream listener non-blocking");
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        let shared = self.shared.clone();
        self.server = Some(runtime.spawn(accept_loop(listener, shared)));
    }

    /// The name given at start; echoed as `"upstream"`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The port it listens on (the same across `stop`/`start_again`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as written in gateway YAML.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The socket address it listens on.
    pub fn socket_addr(&self) -> SocketAddr {
        localhost(self.port)
    }

    /// A direct URL to this upstream (bypassing the gateway), `path` starting with `/`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Requests received, not counting `/healthz` probes.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// `/healthz` requests received.
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// TCP connections accepted (useful for connection-reuse tests).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Resets [`hits`](Self::hits) and [`health_checks`](Self::health_checks) to zero.
    pub fn reset_hits(&self) {
        self.shared.hits.store(0, Ordering::SeqCst);
        self.shared.health_checks.store(0, Ordering::SeqCst);
    }

    /// Makes `/healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Whether the server is currently accepting connections.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Closes the listener and every open connection; new connections are
    /// refused until [`start_again`](Self::start_again).
    pub async fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.abort();
        // Once the aborted task has finished, its listener is closed.
        let _ = server.await;
        // Its connection tasks are being aborted; wait until all are closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.open_connections.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "upstream {}: connections still open 5 s after stop()",
                self.name()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Listens again on the same port after [`stop`](Self::stop).
    pub async fn start_again(&mut self) {
        if self.is_running() {
            return;
        }
        // Another process may briefly hold the port; retry for a while.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(localhost(self.port)) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "upstream {}: cannot re-bind port {}: {e}",
                        self.name(),
                        self.port
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        };
        self.serve(listener);
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        // Drops every task (listener and connections) without blocking; safe
        // to call from inside the test's own runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn tls_acceptor(cert: &LeafCert) -> SslAcceptor {
    let mut builder = acceptor_builder(cert);
    builder.set_alpn_select_callback(|_, offered| {
        ssl::select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    builder.build()
}

/// An OpenSSL acceptor presenting `cert` that negotiates no ALPN protocol (clients speak
/// HTTP/1.1), for test servers other than [`TestUpstream`] that speak TLS.
pub fn http1_tls_acceptor(cert: &LeafCert) -> SslAcceptor {
    acceptor_builder(cert).build()
}

fn acceptor_builder(cert: &LeafCert) -> SslAcceptorBuilder {
    let key = openssl::pkey::PKey::private_key_from_pem(cert.key_pem.as_bytes())
        .expect("cannot parse the upstream's private key");
    let leaf = openssl::x509::X509::from_pem(cert.cert_pem.as_bytes())
        .expect("cannot parse the upstream's certificate");
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .expect("cannot create an OpenSSL acceptor");
    builder
        .set_private_key(&key)
        .expect("cannot use the upstream's private key");
    builder
        .set_certificate(&leaf)
        .expect("cannot use the upstream's certificate");
    builder
        .check_private_key()
        .expect("the upstream's key does not match its certificate");
    builder
}

/// Accepts connections until aborted. Aborting drops the listener and the
/// `JoinSet`, which aborts every connection task.
async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("cannot register the upstream listener");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _peer)) = accepted {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Decrements the open-connection count when the connection task ends or is
/// dropped.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    // Declared first so it is dropped last, after the socket is closed.
    let _open = OpenConnection(shared.clone());
    let _ = stream.set_nodelay(true);
    let handler = shared.clone();
    let service = hyper::service::service_fn(move |req| handle(req, handler.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    match &shared.tls {
        None => {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        Some(acceptor) => {
            let Ok(ssl) = Ssl::new(acceptor.context()) else {
                return;
            };
            let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, stream) else {
                return;
            };
            if Pin::new(&mut tls).accept().await.is_err() {
                return;
            }
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let is_health_check = path.ends_with("/healthz");
    if is_health_check {
        shared.health_checks.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.hits.fetch_add(1, Ordering::SeqCst);
    }
    let body_bytes = count_body_bytes(body).await;
    let echo = echo_json(&shared.name, &parts, body_bytes);

    let mut response = if is_health_check {
        if shared.healthy.load(Ordering::SeqCst) {
            text(StatusCode::OK, "ok")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        }
    } else if let Some(code) = after_marker(&path, "/__status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => json_response(status, &echo),
            None => text(StatusCode::BAD_REQUEST, "bad status code"),
        }
    } else if let Some(ms) = after_marker(&path, "/__sleep/") {
        match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_response(StatusCode::OK, &echo)
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "bad sleep duration"),
        }
    } else if let Some(n) = after_marker(&path, "/__stream/") {
        match n.parse::<u64>() {
            Ok(n) => stream_response(n, parts.uri.query().unwrap_or("")),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad stream length"),
        }
    } else if path.contains("/__gzip") {
        gzip_json_response(&echo)
    } else {
        json_response(StatusCode::OK, &echo)
    };
    if let Ok(name) = HeaderValue::from_str(&shared.name) {
        response.headers_mut().insert("x-upstream", name);
    }
    let asked = parts.uri.query().unwrap_or("").split('&');
    for (name, value) in asked.filter_map(|p| p.strip_prefix("__header=")?.split_once(':')) {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    let content_type = parts.uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("content_type="))
    });
    if let Some(value) = content_type.and_then(|v| HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    Ok(response)
}

/// The path segment right after `marker` (e.g. `"/__sleep/"`), wherever
/// the marker appears in `path`.
fn after_marker<'a>(path: &'a str, marker: &str) -> Option<&'a str> {
    let start = path.find(marker)? + marker.len();
    path[start..].split('/').next()
}

/// Reads the request body frame by frame, keeping only the byte count.
async fn count_body_bytes(mut body: Incoming) -> u64 {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    total
}

fn echo_json(name: &str, parts: &hyper::http::request::Parts, body_bytes: u64) -> Value {
    let mut headers = Map::new();
    for key in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(key)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(key.as_str().to_string(), Value::String(values.join(", ")));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    })
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The echo JSON as a gzip-compressed body (an upstream that compresses itself).
fn gzip_json_response(value: &Value) -> Response<ResponseBody> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(value.to_string().as_bytes())
        .expect("gzip into memory");
    let body = encoder.finish().expect("gzip into memory");
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn full(body: String) -> ResponseBody {
    Full::new(Bytes::from(body)).boxed()
}

fn stream_response(total: u64, query: &str) -> Response<ResponseBody> {
    let mut chunk = 1024;
    let mut delay = Duration::ZERO;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("chunk", v)) => chunk = v.parse().unwrap_or(chunk).max(1),
            Some(("delay_ms", v)) => delay = Duration::from_millis(v.parse().unwrap_or(0)),
            _ => {}
        }
    }
    let body = PatternBody {
        sent: 0,
        total,
        chunk,
        delay,
        timer: None,
    };
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A response body produced chunk by chunk (`a..z` repeating), never held
/// whole in memory. It has no size hint, so HTTP/1.1 uses chunked encoding.
struct PatternBody {
    sent: u64,
    total: u64,
    chunk: usize,
    delay: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.total {
            return Poll::Ready(None);
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
        }
        let len = (self.total - self.sent).min(self.chunk as u64);
        let start = self.sent;
        let data: Vec<u8> = (start..start + len)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        self.sent += len;
        if !self.delay.is_zero() && self.sent < self.total {
            self.timer = Some(Box::pin(tokio::time::sleep(self.delay)));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.total
    }
}
