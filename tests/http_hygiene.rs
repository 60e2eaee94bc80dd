//! HTTP/1 hygiene at the proxy, driven with raw sockets against the real binary: pipelined
//! requests, requests without `Host`, repeated `Content-Length`, heads Pingora refuses while
//! parsing, and a client that half-closes after sending. In every refusal the upstream
//! receives nothing.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
struct RawResponse {
    status: u16,
    /// Lower-cased header names with their values, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The gateway's error shape, with an `X-Request-Id` that matches the body.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "{:?} {}",
            self.headers,
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        let id = self.header("x-request-id").expect("X-Request-Id");
        assert!(!id.is_empty());
        assert_eq!(body["request_id"], id, "{body}");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// Reads responses (framed by `Content-Length`) from a connection, keeping what follows.
struct Reader {
    conn: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(conn: TcpStream) -> Self {
        Reader {
            conn,
            buf: Vec::new(),
        }
    }

    /// The next response, or `None` when the connection closed before one began.
    async fn next(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a response head: {}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        self.buf.drain(..head_end + 4);
        while self.buf.len() < length {
            assert!(self.fill().await, "connection closed inside a body");
        }
        let body = self.buf.drain(..length).collect();
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Reads more; `false` at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(20), self.conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer within 20 s"),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(("127.0.0.1", gw.config().proxy_port()))
        .await
        .expect("connect to the gateway")
}

/// Sends `request` on a new connection and reads the one answer.
async fn exchange(gw: &Gateway, request: &[u8]) -> RawResponse {
    let mut conn = connect(gw).await;
    conn.write_all(request).await.unwrap();
    Reader::new(conn)
        .next()
        .await
        .expect("the connection closed without an answer")
}

async fn gateway(upstream: &TestUpstream, server_extra: &str) -> Gateway {
    let cfg = GatewayConfig::new();
    let yaml = format!(
        "{}{server_extra}{}{}upstreams:\n  - {{name: a, targets: [{{address: \"{}\"}}]}}\n\
         routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        cfg.server_section(),
        cfg.listeners_section(),
        cfg.metrics_section(),
        upstream.address()
    );
    Gateway::start(cfg, &yaml).await
}

#[tokio::test]
async fn a_hundred_pipelined_requests_are_all_answered_in_order() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    let mut batch = String::new();
    for i in 0..100 {
        batch.push_str(&format!("GET /p/{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    // With bodies too: a POST in the middle of the batch.
    batch.push_str("POST /p/post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    batch.push_str("GET /p/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut conn = connect(&gw).await;
    conn.write_all(batch.as_bytes()).await.unwrap();
    let mut reader = Reader::new(conn);
    for i in 0..100 {
        let resp = reader
            .next()
            .await
            .unwrap_or_else(|| panic!("request {i} was dropped\n{}", gw.logs()));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.json()["path"],
            format!("/p/{i}"),
            "answers out of order"
        );
    }
    let post = reader.next().await.expect("the POST was dropped");
    assert_eq!(post.json()["path"], "/p/post");
    assert_eq!(post.json()["body_bytes"], 5);
    let last = reader.next().await.expect("the last request was dropped");
    assert_eq!(last.json()["path"], "/p/last");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(
        reader.next().await.is_none(),
        "nothing after Connection: close"
    );
    assert_eq!(upstream.hits(), 102);
}

#[tokio::test]
async fn an_http11_request_without_host_is_refused_and_never_forwarded() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    let resp = exchange(&gw, b"GET /x HTTP/1.1\r\n\r\n").await;
    resp.assert_error(400, "missing_host");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn an_http10_request_without_host_is_refused_but_the_health_endpoint_answers() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    let resp = exchange(&gw, b"GET /x HTTP/1.0\r\n\r\n").await;
    resp.assert_error(400, "missing_host");
    assert_eq!(upstream.hits(), 0, "forwarded as HTTP/1.1 without Host");
    let health = exchange(&gw, b"GET /health HTTP/1.0\r\n\r\n").await;
    assert_eq!(health.status, 200);
    // With Host, HTTP/1.0 is proxied, and the upstream sees that Host.
    let with_host = exchange(&gw, b"GET /x HTTP/1.0\r\nHost: api.test\r\n\r\n").await;
    assert_eq!(with_host.status, 200);
    assert_eq!(with_host.json()["headers"]["host"], "api.test");
}

#[tokio::test]
async fn identical_content_lengths_reach_the_upstream_as_one_and_differing_ones_are_refused() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    let twice = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(twice.status, 200);
    // The test upstream joins repeated fields with ", ".
    assert_eq!(twice.json()["headers"]["content-length"], "5");
    assert_eq!(twice.json()["body_bytes"], 5);
    let listed = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(listed.json()["headers"]["content-length"], "5");
    upstream.reset_hits();
    let differing = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    differing.assert_error(400, "bad_request");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn heads_pingora_refuses_get_the_json_error_shape_and_a_request_id() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    let many_headers: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "too many headers",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
        ),
        (
            "a header name with a space",
            b"GET / HTTP/1.1\r\nHost: x\r\nbad name: v\r\n\r\n".to_vec(),
        ),
        (
            "a final transfer coding that is not chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "two Host fields",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        ),
        (
            "a malformed request line",
            b"GET  HTTP/1.1 x\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in cases {
        let resp = exchange(&gw, &request).await;
        assert!(resp.status == 400, "{what}: {}", resp.status);
        resp.assert_error(400, "bad_request");
    }
    // A request line longer than the whole head may be: 431.
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(40 * 1024));
    exchange(&gw, long_line.as_bytes())
        .await
        .assert_error(431, "request_header_too_large");
    // CONNECT is not proxied.
    exchange(&gw, b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")
        .await
        .assert_error(405, "method_not_allowed");
    assert_eq!(upstream.hits(), 0, "a refused head reached the upstream");
    // Each refusal has an access-log line with its status (written by the log thread).
    for line in [
        "\"status\":431",
        "\"error\":\"bad_request\"",
        "\"status\":405",
    ] {
        assert!(
            gw.wait_for_log(line, Duration::from_secs(10)).await,
            "no access-log line with {line}\n{}",
            gw.logs()
        );
    }
}

#[tokio::test]
async fn a_bad_chunked_body_gets_the_json_error_shape() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    let resp = exchange(
        &gw,
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    resp.assert_error(400, "bad_request");
}

#[tokio::test]
async fn a_head_larger_than_the_limit_is_431_and_never_forwarded() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "  max_request_header_size: 4096\n").await;
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(6000)
    );
    exchange(&gw, big.as_bytes())
        .await
        .assert_error(431, "request_header_too_large");
    // Just below the limit is fine.
    let fits = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(3500)
    );
    assert_eq!(exchange(&gw, fits.as_bytes()).await.status, 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn a_client_that_half_closes_after_sending_still_gets_its_response() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "").await;
    for request in [
        "GET /__sleep/300 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /__sleep/300 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let mut conn = connect(&gw).await;
        conn.write_all(request.as_bytes()).await.unwrap();
        conn.shutdown().await.unwrap(); // FIN: nothing more will be sent
        let resp = Reader::new(conn)
            .next()
            .await
            .unwrap_or_else(|| panic!("no response after a half-close\n{}", gw.logs()));
        assert_eq!(resp.status, 200, "{request}");
        assert_eq!(resp.json()["upstream"], "a");
    }
}
