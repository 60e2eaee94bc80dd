//! `size_limits` against the real binary: a declared body over the limit is refused before
//! the upstream sees anything, a chunked body is cut off with 413 while it streams, a long
//! request-target gets 414, and the server-wide default applies, is overridden, is switched
//! off per route and changes live with the file.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn routes(upstream: &TestUpstream, defaults: &str) -> String {
    format!(
        "{defaults}upstreams:
  - {{name: a, targets: [{{address: \"{}\"}}]}}
routes:
  - name: small
    path_prefix: /small
    upstream: a
    size_limits: {{max_body: 1 KiB, max_url: 100}}
  - {{name: inherits, path_prefix: /inherits, upstream: a}}
  - {{name: free, path_prefix: /free, upstream: a, size_limits: false}}
",
        upstream.address()
    )
}

const DEFAULTS: &str = "defaults:\n  size_limits: {max_body: 4096}\n";

async fn post(gw: &Gateway, path: &str, bytes: usize) -> Answer {
    let resp = gw
        .http()
        .post(gw.url(path))
        .body(vec![b'x'; bytes])
        .send()
        .await
        .expect("request");
    Answer::read(resp).await
}

/// Sends a chunked body in 512-byte chunks, up to `total` bytes, without the final chunk,
/// and returns the status line and the rest of what the gateway answered.
async fn chunked_upload(port: u16, path: &str, total: usize) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("200\r\n{}\r\n", "y".repeat(512));
    let mut sent = 0;
    while sent < total {
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 512;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&answer).contains("request_id")
        {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_urls_over_the_limit_are_refused_per_route_and_by_default() {
    let upstream = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let gw = Gateway::start(cfg, &format!("{header}{}", routes(&upstream, DEFAULTS))).await;

    // Declared length over the route's limit: refused before anything reaches upstream.
    upstream.reset_hits();
    let refused = post(&gw, "/small/upload", 2048).await;
    let body = refused.assert_error(413, "request_body_too_large");
    assert!(body["message"].as_str().unwrap().contains("1024"), "{body}");
    assert_eq!(upstream.hits(), 0, "a refused body reached the upstream");

    let fits = post(&gw, "/small/upload", 1024).await;
    assert_eq!(fits.status, 200, "{}", fits.text);
    assert_eq!(fits.json()["body_bytes"], 1024);

    // The request-target, query included, is measured.
    let long = format!("/small/{}", "p".repeat(60));
    let ok = Answer::read(gw.http().get(gw.url(&long)).send().await.unwrap()).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let too_long = format!("{long}?q={}", "v".repeat(40));
    let answer = Answer::read(gw.http().get(gw.url(&too_long)).send().await.unwrap()).await;
    answer.assert_error(414, "uri_too_long");

    // The server-wide default, and a route that switched it off.
    assert_eq!(post(&gw, "/inherits/x", 4096).await.status, 200);
    post(&gw, "/inherits/x", 4097)
        .await
        .assert_error(413, "request_body_too_large");
    assert_eq!(post(&gw, "/free/x", 64 * 1024).await.status, 200);

    // A chunked body (no Content-Length) is cut off while it streams, with the error shape.
    let answer = chunked_upload(gw.config().proxy_port(), "/small/stream", 8 * 1024).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a chunked body over the limit was not cut off with 413: {answer:?}"
    );
    assert!(answer.contains("request_body_too_large"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id:"),
        "{answer}"
    );

    // Editing the file takes the default away, live.
    gw.rewrite_config(&format!("{header}{}", routes(&upstream, "")));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = post(&gw, "/inherits/x", 8192).await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 413);
        assert!(Instant::now() < deadline, "the reload never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The route's own limit stays.
    post(&gw, "/small/upload", 2048)
        .await
        .assert_error(413, "request_body_too_large");
}

#[tokio::test]
async fn bad_size_limits_are_refused_with_their_places() {
    let out = Gateway::check(
        "upstreams: [{name: a, targets: [{address: '127.0.0.1:1'}]}]
defaults:
  size_limits: {}
routes:
  - {name: r, path_prefix: /, upstream: a, size_limits: {max_url: 0}}
",
    )
    .await;
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("defaults.size_limits: set max_body"), "{all}");
    assert!(
        all.contains("routes[0].size_limits.max_url: must be at least 1 byte"),
        "{all}"
    );

    let out = Gateway::check(
        "upstreams: [{name: a, targets: [{address: '127.0.0.1:1'}]}]
routes:
  - {name: r, path_prefix: /, upstream: a, size_limits: {max_body: lots}}
",
    )
    .await;
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("max_body"), "{all}");
}
