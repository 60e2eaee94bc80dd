//! Ports, readiness polling and HTTP clients.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often readiness loops retry.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Returns a TCP port on 127.0.0.1 that is free right now.
///
/// The kernel picks the port (bind to port 0, read it, close). Ports handed
/// out earlier in this test binary are never handed out again, so tests
/// running in parallel never get the same port. A different process could
/// still take the port before the caller binds it; that race is rare enough
/// for tests.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("bound listener has no local address")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// `127.0.0.1:<port>` as a socket address.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(localhost(port)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "nothing accepted connections on 127.0.0.1:{port} within {timeout:?}: {e}"
                ))
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` is refused right now.
pub async fn port_is_closed(port: u16) -> bool {
    tokio::net::TcpStream::connect(localhost(port))
        .await
        .is_err()
}

/// The defaults every test HTTP client starts from: no proxy from the
/// environment, redirects are returned rather than followed (tests want to
/// see exactly what the gateway sent), and a 30 s overall timeout so a hung
/// request fails the test instead of hanging it.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

/// A plain client built from [`http_client_builder`].
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("cannot build the test HTTP client")
}
