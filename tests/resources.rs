//! Bounded resources against the real binary: a total deadline on request heads (a
//! slowloris attack of hundreds of connections is cut off while real clients are served),
//! caps on client connections per process and per address, the same kinds of bounds on the
//! admin listener, TLS handshakes counted in those caps, and HTTPS health checks that trust
//! the upstream's `ca_file`.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Polls `check` every 25 ms until it returns true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn gateway(upstream: &TestUpstream, server_extra: &str, rest: &str) -> Gateway {
    let cfg = GatewayConfig::new();
    let yaml = format!(
        "{}{server_extra}{}{}upstreams:\n  - {{name: a, targets: [{{address: \"{}\"}}]}}\n\
         routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n{rest}",
        cfg.server_section(),
        cfg.listeners_section(),
        cfg.metrics_section(),
        upstream.address()
    );
    Gateway::start(cfg, &yaml).await
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// The value of the first metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What became of one slow connection.
struct SlowOutcome {
    answer: String,
    closed: bool,
}

/// Sends the start of a request head, then one byte a second, until the gateway ends the
/// connection (or `give_up` passes); returns what it answered.
async fn slow_client(port: u16, give_up: Duration) -> SlowOutcome {
    let Ok(conn) = TcpStream::connect(("127.0.0.1", port)).await else {
        return SlowOutcome {
            answer: "connect failed".into(),
            closed: false,
        };
    };
    let (mut read, mut write) = conn.into_split();
    let writer = tokio::spawn(async move {
        if write
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(give_up, read.read_to_end(&mut answer))
        .await
        .is_ok();
    writer.abort();
    SlowOutcome {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_cut_at_the_header_deadline_while_real_clients_are_served() {
    const SLOW: usize = 300;
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(
        &upstream,
        "  request_header_timeout: 2s\n  max_connections_per_ip: 2000\n",
        "",
    )
    .await;
    let port = gw.config().proxy_port();
    let rss_before = rss_kib(gw.pid());
    let started = Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slow_client(port, Duration::from_secs(30))))
        .collect();
    // While the attack is on, real requests are answered.
    let metrics_with_attack = loop {
        let text = gw.metrics_text().await;
        if metric(&text, "tollgate_client_connections").unwrap_or(0.0) >= (SLOW as f64) * 0.9 {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slow connections never all opened:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss_during = rss_kib(gw.pid());
    for i in 0..20 {
        let resp = gw
            .http()
            .get(gw.url(&format!("/real/{i}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("a real client was starved: {e}"));
        assert_eq!(resp.status(), 200);
    }
    let mut answered_408 = 0;
    for task in slow {
        let outcome = task.await.unwrap();
        assert!(
            outcome.closed,
            "a slow connection was still open after 30 s: {:?}",
            outcome.answer
        );
        if outcome.answer.starts_with("HTTP/1.1 408") {
            assert!(outcome
                .answer
                .contains("\"error\":\"request_header_timeout\""));
            assert!(outcome
                .answer
                .to_ascii_lowercase()
                .contains("x-request-id: "));
            answered_408 += 1;
        }
    }
    assert!(
        answered_408 >= SLOW * 9 / 10,
        "only {answered_408} of {SLOW} slow connections were told 408"
    );
    assert_eq!(upstream.hits(), 20, "a slow head reached the upstream");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let text = gw.metrics_text().await;
            metric(&text, "tollgate_client_connections").unwrap_or(f64::MAX) <= 2.0
        })
        .await,
        "connections of the attack are still counted"
    );
    let rss_after = rss_kib(gw.pid());
    eprintln!(
        "slowloris: {SLOW} slow connections; gateway RSS {rss_before} KiB before, \
         {rss_during} KiB during, {rss_after} KiB after; refused with 408: {answered_408}\n{}",
        metrics_with_attack
            .lines()
            .filter(|l| l.starts_with("tollgate_connections_refused_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        rss_during.saturating_sub(rss_before) < 64 * 1024,
        "{SLOW} slow connections cost {} KiB",
        rss_during.saturating_sub(rss_before)
    );
}

/// Opens `n` connections that send nothing; the gateway holds them open.
async fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    conns
}

/// Connects and reads whatever the gateway says without sending anything.
async fn refused_answer(port: u16) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn connections_open(gw: &Gateway, n: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        metric(&gw.metrics_text().await, "tollgate_client_connections") == Some(n)
    })
    .await
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_refused_until_one_closes() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "  max_connections_per_ip: 3\n", "").await;
    let port = gw.config().proxy_port();
    let mut held = idle_connections(port, 3).await;
    assert!(connections_open(&gw, 3.0).await, "{}", gw.logs());
    let answer = refused_answer(port).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"error\":\"too_many_connections\""),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    held.pop();
    assert!(connections_open(&gw, 2.0).await);
    let ok = gw.http().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "tollgate_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn connections_beyond_the_process_cap_are_refused() {
    let upstream = TestUpstream::start("a").await;
    let gw = gateway(&upstream, "  max_connections: 2\n", "").await;
    let port = gw.config().proxy_port();
    let held = idle_connections(port, 2).await;
    assert!(connections_open(&gw, 2.0).await, "{}", gw.logs());
    let answer = refused_answer(port).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"error\":\"too_many_connections\""),
        "{answer}"
    );
    drop(held);
    assert!(connections_open(&gw, 0.0).await);
    let ok = gw.http().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// A TLS connection holds its place in the caps from its first byte: a client cannot keep
/// more handshakes open than `max_connections_per_ip` (Pingora alone would wait 60 s on
/// each, however many), another address is still served, and a connection that gives up
/// its handshake frees its place.
#[tokio::test]
async fn tls_handshakes_count_against_the_per_address_cap() {
    let certs = Certs::new();
    let leaf = certs.leaf("api", &["api.test"]);
    let upstream = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new().with_tls(&leaf);
    let yaml = cfg
        .render(&format!(
            "upstreams:\n  - {{name: a, targets: [{{address: \"{}\"}}]}}\n\
             routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
            upstream.address()
        ))
        .replacen(
            "  threads: 1\n",
            "  threads: 1\n  max_connections_per_ip: 3\n",
            1,
        );
    let gw = Gateway::start(cfg, &yaml).await;
    let port = gw.config().tls_port().expect("a TLS listener");
    let https = |from: [u8; 4]| {
        gw.client_builder()
            .local_address(std::net::IpAddr::from(from))
            .resolve("api.test", ([127, 0, 0, 1], port).into())
            .build()
            .unwrap()
    };
    let url = format!("https://api.test:{port}/x");

    // Three connections that never start their handshake hold the address's places.
    let mut held = idle_connections(port, 3).await;
    assert!(connections_open(&gw, 3.0).await, "{}", gw.logs());
    let mut fourth = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth is closed before any handshake: {read:?} {answer:?}"
    );
    assert!(
        https([127, 0, 0, 1]).get(&url).send().await.is_err(),
        "no handshake for this address while its places are held"
    );
    let other = https([127, 0, 0, 2]).get(&url).send().await.unwrap();
    assert_eq!(other.status(), 200, "another address is served");

    // One gives up (closes before its handshake): its place is free again.
    held.pop();
    let client = https([127, 0, 0, 1]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await,
        "{}",
        gw.logs()
    );
    let text = gw.metrics_text().await;
    assert!(
        metric(
            &text,
            "tollgate_connections_refused_total{reason=\"max_connections_per_ip\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
}

#[tokio::test]
async fn the_connection_limits_are_validated() {
    let cfg = GatewayConfig::new();
    let yaml = format!(
        "{}  max_connections: 0\n  request_header_timeout: 0s\n  max_request_header_size: 10\n{}\
         upstreams:\n  - {{name: a, targets: [{{address: \"127.0.0.1:9\"}}]}}\n\
         routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        cfg.server_section(),
        cfg.listeners_section(),
    );
    let out = Gateway::check(&yaml).await;
    assert!(!out.success());
    for field in [
        "server.max_connections",
        "server.request_header_timeout",
        "server.max_request_header_size",
    ] {
        assert!(out.stderr.contains(field), "{field}: {}", out.stderr);
    }
}

/// A gateway whose admin listener has `limits` (YAML under `admin:`); returns its port.
async fn admin_gateway(upstream: &TestUpstream, limits: &str) -> (Gateway, u16) {
    let port = free_port();
    let gw = gateway(
        upstream,
        "",
        &format!("admin:\n  address: 127.0.0.1:{port}\n{limits}"),
    )
    .await;
    wait_for_port(port, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("admin port: {e}\n{}", gw.logs()));
    (gw, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_slow_heads_and_idle_connections() {
    let upstream = TestUpstream::start("a").await;
    let (_gw, port) = admin_gateway(
        &upstream,
        "  request_header_timeout: 1s\n  idle_timeout: 2s\n",
    )
    .await;
    let outcome = slow_client(port, Duration::from_secs(20)).await;
    assert!(outcome.closed, "a slow admin head was never cut off");
    // An idle keep-alive connection is closed too; a prompt request is served.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "an idle admin connection was never closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // A body that stops arriving while the handler reads it (no admin tokens on loopback:
    // the API is open): no head is awaited, so only the idle timeout ends it.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(
        b"POST /admin/consumers HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\"",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a stalled admin body was never cut off");
}

#[tokio::test]
async fn the_admin_listener_caps_its_connections() {
    let upstream = TestUpstream::start("a").await;
    let (gw, port) = admin_gateway(&upstream, "  max_connections: 2\n").await;
    let held = idle_connections(port, 2).await;
    // Both are being served: a third is closed without an answer.
    let mut refused = false;
    for _ in 0..50 {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = conn
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
        if answer.is_empty() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "a third admin connection was served\n{}",
        gw.logs()
    );
    drop(held);
    let client = http_client();
    assert!(
        eventually(Duration::from_secs(10), || async {
            client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await,
        "the admin API did not recover after the held connections closed"
    );
}

fn tls_upstream_yaml(name: &str, upstream: &TestUpstream, sni: &str, ca: &str) -> String {
    format!(
        "  - name: {name}\n    targets: [{{address: \"{}\"}}]\n    health_check: {{kind: http, \
         path: /healthz, interval: 200ms, timeout: 1s, failures_to_eject: 1, \
         successes_to_readmit: 1}}\n    tls: {{sni: {sni}, ca_file: \"{ca}\"}}\n",
        upstream.address()
    )
}

#[tokio::test]
async fn an_https_health_check_trusts_the_upstreams_ca_file() {
    let certs = Certs::new();
    let trusted = TestUpstream::start_tls("trusted", &certs.leaf("up", &["upstream.test"])).await;
    let other_ca = Certs::new();
    let untrusted =
        TestUpstream::start_tls("untrusted", &other_ca.leaf("up", &["upstream.test"])).await;
    let ca = certs.ca_path().display().to_string();
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}{}routes:\n  - {{name: good, path_prefix: /good, upstream: good}}\n  \
         - {{name: bad, path_prefix: /bad, upstream: bad}}\n",
        tls_upstream_yaml("good", &trusted, "upstream.test", &ca),
        tls_upstream_yaml("bad", &untrusted, "upstream.test", &ca),
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    // Probes get through TLS to the upstream signed by the configured CA...
    assert!(
        eventually(Duration::from_secs(10), || async {
            trusted.health_checks() >= 3
        })
        .await,
        "no health check reached the upstream\n{}",
        gw.logs()
    );
    // ...which stays healthy and serves, while the one signed by another CA is ejected.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let text = gw.metrics_text().await;
            metric(
                &text,
                "tollgate_upstream_targets{state=\"healthy\",upstream=\"good\"}",
            ) == Some(1.0)
                && metric(
                    &text,
                    "tollgate_upstream_targets{state=\"healthy\",upstream=\"bad\"}",
                ) == Some(0.0)
        })
        .await,
        "{}",
        gw.metrics_text().await
    );
    let good = gw.http().get(gw.url("/good/x")).send().await.unwrap();
    assert_eq!(good.status(), 200);
    let bad = gw.http().get(gw.url("/bad/x")).send().await.unwrap();
    assert_eq!(bad.status(), 503);
    assert_eq!(untrusted.health_checks(), 0);
}
