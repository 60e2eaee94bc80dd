//! The gateway as a plain reverse proxy: routing, balancing, health, errors, streaming,
//! TLS, metrics, shutdown. Every test runs the real binary against real upstreams.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

/// Sends GET `path` and returns (status, JSON body).
async fn get_json(gw: &Gateway, path: &str) -> (u16, Value) {
    let resp = gw
        .http()
        .get(gw.url(path))
        .send()
        .await
        .expect("request failed");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Sends `request` as written over a fresh connection and returns the whole answer.
async fn raw_request(gw: &Gateway, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", gw.config().proxy_port()))
        .await
        .unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn upstream_yaml(name: &str, targets: &[(&TestUpstream, u32)]) -> String {
    let mut y = format!("  - name: {name}\n    targets:\n");
    for (u, w) in targets {
        y.push_str(&format!(
            "      - {{address: \"{}\", weight: {w}}}\n",
            u.address()
        ));
    }
    y
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
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
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn routes_by_longest_prefix_then_host_then_method() {
    let (a, b, c, d) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
        TestUpstream::start("d").await,
    );
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}{}{}{}routes:
  - {{name: root, path_prefix: /, upstream: a}}
  - {{name: api, path_prefix: /api, upstream: b}}
  - {{name: api-exact-host, path_prefix: /api, hosts: [shop.example.com], upstream: c}}
  - {{name: api-v2-writes, path_prefix: /api/v2, methods: [POST], upstream: d, strip_prefix: true}}
",
        upstream_yaml("a", &[(&a, 1)]),
        upstream_yaml("b", &[(&b, 1)]),
        upstream_yaml("c", &[(&c, 1)]),
        upstream_yaml("d", &[(&d, 1)]),
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    let upstream_of = |resp: Value| resp["upstream"].as_str().unwrap_or("?").to_string();

    assert_eq!(upstream_of(get_json(&gw, "/other").await.1), "a");
    assert_eq!(upstream_of(get_json(&gw, "/api/users").await.1), "b");
    assert_eq!(
        upstream_of(get_json(&gw, "/apix").await.1),
        "a",
        "prefixes match whole segments"
    );
    let with_host = gw
        .http()
        .get(gw.url("/api/users"))
        .header("host", "Shop.Example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(
        upstream_of(with_host.json().await.unwrap()),
        "c",
        "exact host wins on equal prefix"
    );
    // GET /api/v2/x does not match the POST-only route and falls back to /api.
    assert_eq!(upstream_of(get_json(&gw, "/api/v2/x").await.1), "b");
    let post = gw
        .http()
        .post(gw.url("/api/v2/orders?id=7"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let body: Value = post.json().await.unwrap();
    assert_eq!(body["upstream"], "d");
    assert_eq!(body["path"], "/orders?id=7", "prefix stripped, query kept");
    assert_eq!(body["body_bytes"], 2);
}

#[tokio::test]
async fn method_mismatch_is_405_with_allow_and_unknown_path_is_404() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: ro, path_prefix: /ro, methods: [GET, HEAD], upstream: a}}\n",
        upstream_yaml("a", &[(&a, 1)])
    ));
    let gw = Gateway::start(cfg, &yaml).await;

    let resp = gw.http().delete(gw.url("/ro/1")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
    assert_eq!(body["request_id"], id.as_str());

    let (status, body) = get_json(&gw, "/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "route_not_found");
    assert!(body["message"].is_string());

    // Sent raw: HTTP clients normalise dot segments away before sending. Dot segments are
    // resolved (tests/boundary.rs); climbing above the root is refused.
    let raw = raw_request(
        &gw,
        "GET /ro/%2e%2e/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"error\":\"invalid_path\""), "{raw}");
}

#[tokio::test]
async fn weights_three_to_one_split_traffic_three_to_one() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: pool}}\n",
        upstream_yaml("pool", &[(&a, 3), (&b, 1)])
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    for _ in 0..400 {
        assert_eq!(get_json(&gw, "/x").await.0, 200);
    }
    let (ha, hb) = (a.hits() as i64, b.hits() as i64);
    assert_eq!(ha + hb, 400);
    assert!(
        (ha - 300).abs() <= 30 && (hb - 100).abs() <= 10,
        "a={ha} b={hb}"
    );
}

#[tokio::test]
async fn unhealthy_target_is_ejected_and_readmitted() {
    let a = TestUpstream::start("a").await;
    let mut b = TestUpstream::start("b").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}    health_check: {{kind: http, path: /healthz, interval: 100ms, timeout: 100ms, failures_to_eject: 2, successes_to_readmit: 1}}\nroutes:\n  - {{name: r, path_prefix: /, upstream: pool}}\n",
        upstream_yaml("pool", &[(&a, 1), (&b, 1)])
    ));
    let gw = Gateway::start(cfg, &yaml).await;

    // A failing health endpoint ejects b although it still serves requests.
    b.set_healthy(false);
    let ejected = eventually(Duration::from_secs(5), || async {
        get_json(&gw, "/health").await.1["upstreams"]["pool"]["healthy"] == 1
    })
    .await;
    assert!(ejected, "b was not ejected");
    let (status, health) = get_json(&gw, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "degraded");
    b.reset_hits();
    for _ in 0..20 {
        assert_eq!(get_json(&gw, "/x").await.1["upstream"], "a");
    }
    assert_eq!(b.hits(), 0);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("tollgate_upstream_targets{state=\"unhealthy\",upstream=\"pool\"} 1"),
        "{metrics}"
    );

    b.set_healthy(true);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_json(&gw, "/health").await.1["status"] == "ok"
        })
        .await,
        "b was not readmitted"
    );

    // A target that stops accepting connections is ejected too, then readmitted on restart.
    b.stop().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_json(&gw, "/health").await.1["upstreams"]["pool"]["healthy"] == 1
        })
        .await
    );
    b.start_again().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_json(&gw, "/health").await.1["upstreams"]["pool"]["healthy"] == 2
        })
        .await
    );
    b.reset_hits();
    for _ in 0..10 {
        get_json(&gw, "/x").await;
    }
    assert!(b.hits() >= 4, "readmitted target gets traffic again");
}

#[tokio::test]
async fn upstream_failures_answer_502_503_504_in_one_json_shape() {
    let slow = TestUpstream::start("slow").await;
    let mut down = TestUpstream::start("down").await;
    let closed_port = free_port();
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:
  - {{name: refused, targets: [{{address: \"127.0.0.1:{closed_port}\"}}]}}
{}{}    health_check: {{kind: tcp, interval: 100ms, timeout: 100ms, failures_to_eject: 1, successes_to_readmit: 1}}
routes:
  - {{name: refused, path_prefix: /refused, upstream: refused}}
  - {{name: slow, path_prefix: /slow, upstream: slow, strip_prefix: true, timeouts: {{read: 300ms}}}}
  - {{name: total, path_prefix: /total, upstream: slow, strip_prefix: true, timeouts: {{read: 10s, total: 300ms}}}}
  - {{name: down, path_prefix: /down, upstream: down}}
",
        upstream_yaml("slow", &[(&slow, 1)]),
        upstream_yaml("down", &[(&down, 1)]),
    ));
    let gw = Gateway::start(cfg, &yaml).await;

    let check = |status: u16, body: &Value, code: &str| {
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["request_id"].as_str().is_some_and(|m| !m.is_empty()));
        status
    };
    let (s, b) = get_json(&gw, "/refused").await;
    assert_eq!(check(s, &b, "bad_gateway"), 502);
    let (s, b) = get_json(&gw, "/slow/__sleep/3000").await;
    assert_eq!(check(s, &b, "upstream_timeout"), 504);
    let (s, b) = get_json(&gw, "/total/__sleep/3000").await;
    assert_eq!(
        check(s, &b, "upstream_timeout"),
        504,
        "total timeout bounds the wait"
    );

    down.stop().await;
    let ejected = eventually(Duration::from_secs(5), || async {
        get_json(&gw, "/down").await.0 == 503
    })
    .await;
    assert!(ejected, "no 503 once the only target is unhealthy");
    let (s, b) = get_json(&gw, "/down").await;
    assert_eq!(check(s, &b, "no_healthy_upstream"), 503);
}

#[tokio::test]
async fn idempotent_request_is_retried_once_on_another_target() {
    let a = TestUpstream::start("a").await;
    let closed_port = free_port();
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:
  - name: pool
    targets: [{{address: \"127.0.0.1:{closed_port}\"}}, {{address: \"{}\"}}]
routes:
  - {{name: r, path_prefix: /, upstream: pool}}
",
        a.address()
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    for _ in 0..10 {
        assert_eq!(
            get_json(&gw, "/x").await.0,
            200,
            "GET must be retried on the live target"
        );
    }
    let mut statuses = HashMap::new();
    for _ in 0..10 {
        let s = gw
            .http()
            .post(gw.url("/x"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        *statuses.entry(s).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&502).is_some_and(|n| *n > 0),
        "POST is not retried: {statuses:?}"
    );
}

#[tokio::test]
async fn request_id_and_forwarded_headers_reach_the_upstream() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        upstream_yaml("a", &[(&a, 1)])
    ));
    let gw = Gateway::start(cfg, &yaml).await;

    let resp = gw
        .http()
        .get(gw.url("/x"))
        .header("x-request-id", "client-id-1")
        .header("x-forwarded-for", "198.51.100.1")
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id-1");
    let body: Value = resp.json().await.unwrap();
    let h = &body["headers"];
    assert_eq!(h["x-request-id"], "client-id-1");
    // The client's own chain is dropped: the peer is not a trusted proxy.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");

    let resp = gw
        .http()
        .get(gw.url("/x"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], id.as_str());

    // One JSON access-log line per request, carrying the request id.
    let logged = eventually(Duration::from_secs(3), || async {
        gw.stdout().lines().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["request_id"] == "client-id-1"
                    && v["route"] == "r"
                    && v["status"] == 200
                    && v["upstream"] == a.address().as_str()
            })
        })
    })
    .await;
    assert!(logged, "no access-log line: {}", gw.stdout());
}

#[tokio::test]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        upstream_yaml("a", &[(&a, 1)])
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    const SIZE: usize = 200 * 1024 * 1024;

    // Upload 200 MB generated on the fly.
    let chunk = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
    let stream =
        futures::stream::iter((0..200).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = gw
        .http()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["body_bytes"].as_u64(), Some(SIZE as u64));

    // Download 200 MB.
    let mut resp = gw
        .http()
        .get(gw.url(&format!("/__stream/{SIZE}?chunk=65536")))
        .send()
        .await
        .unwrap();
    let mut received = 0usize;
    while let Some(c) = resp.chunk().await.unwrap() {
        received += c.len();
    }
    assert_eq!(received, SIZE);

    // Peak memory stays far below the body size: nothing was buffered whole.
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let hwm_kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(hwm_kb < 100 * 1024, "peak RSS {hwm_kb} kB");
}

#[tokio::test]
async fn tls_listener_picks_certificate_by_sni_and_speaks_http2() {
    let certs = Certs::new();
    let api = certs.leaf("api", &["api.test"]);
    let other = certs.leaf("other", &["other.test", "*.wild.test"]);
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new().with_tls(&api);
    let mut yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        upstream_yaml("a", &[(&a, 1)])
    ));
    // A second certificate on the same listener, chosen by SNI.
    yaml = yaml.replace(
        "      certificates:\n",
        &format!(
            "      certificates:\n        - cert: \"{}\"\n          key: \"{}\"\n",
            other.cert_path.display(),
            other.key_path.display()
        ),
    );
    let gw = Gateway::start(cfg, &yaml).await;
    let port = gw.config().tls_port().unwrap();
    let client = gw
        .client_builder()
        .tls_info(true)
        .resolve("other.test", ([127, 0, 0, 1], port).into())
        .resolve("x.wild.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();

    for (host, expected_cn) in [
        ("api.test", "api.test"),
        ("other.test", "other.test"),
        ("x.wild.test", "other.test"),
    ] {
        let resp = client
            .get(format!("https://{host}:{port}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "{host}");
        let info = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .expect("tls info");
        let cert = openssl::x509::X509::from_der(info.peer_certificate().unwrap()).unwrap();
        let names: Vec<String> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert!(
            names.contains(&expected_cn.to_string()),
            "{host} got {names:?}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    }
}

#[tokio::test]
async fn upstream_tls_with_sni_and_verification() {
    let certs = Certs::new();
    let leaf = certs.leaf("up", &["backend.test"]);
    let secure = TestUpstream::start_tls("secure", &leaf).await;
    let cfg = GatewayConfig::new();
    let ca = certs.ca_path().display().to_string();
    let yaml = cfg.render(&format!(
        "upstreams:
  - name: good
    targets: [{{address: \"{addr}\"}}]
    tls: {{sni: backend.test, ca_file: \"{ca}\"}}
  - name: wrong-name
    targets: [{{address: \"{addr}\"}}]
    tls: {{sni: evil.test, ca_file: \"{ca}\"}}
routes:
  - {{name: good, path_prefix: /good, upstream: good}}
  - {{name: bad, path_prefix: /bad, upstream: wrong-name}}
",
        addr = secure.address()
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    let (s, b) = get_json(&gw, "/good").await;
    assert_eq!(s, 200);
    assert_eq!(b["upstream"], "secure");
    let (s, b) = get_json(&gw, "/bad").await;
    assert_eq!(s, 502, "a certificate for another name is refused: {b}");
}

#[tokio::test]
async fn metrics_cover_requests_and_pass_promtool() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        upstream_yaml("a", &[(&a, 1)])
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    get_json(&gw, "/x").await;
    gw.http().post(gw.url("/y")).send().await.unwrap();
    let needles = [
        "tollgate_requests_total{method=\"GET\",route=\"r\",status=\"200\"} 1",
        "tollgate_requests_total{method=\"POST\",route=\"r\",status=\"200\"} 1",
        "tollgate_request_duration_seconds_count{route=\"r\"} 2",
        "tollgate_upstream_duration_seconds_count{upstream=\"a\"} 2",
        "tollgate_upstream_targets{state=\"healthy\",upstream=\"a\"} 1",
        "tollgate_requests_in_flight 0",
        "tollgate_config_reloads_total{result=\"success\"} 0",
        "tollgate_config_generation 1",
    ];
    // Counters are updated in the logging phase, just after the response went out.
    let complete = eventually(Duration::from_secs(3), || async {
        let text = gw.metrics_text().await;
        needles.iter().all(|n| text.contains(n))
    })
    .await;
    let text = gw.metrics_text().await;
    for needle in needles {
        assert!(
            complete && text.contains(needle),
            "missing {needle:?} in\n{text}"
        );
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by `make test` (Debian package prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n",
        upstream_yaml("a", &[(&a, 1)])
    ));
    // The grace period is the most a drain may take; the gateway exits once idle.
    let yaml = yaml.replace("grace_period: 0s", "grace_period: 20s");
    let mut gw = Gateway::start(cfg, &yaml).await;
    let client = gw.http().clone();
    let url = gw.url("/__sleep/1000");
    let in_flight =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    assert!(eventually(Duration::from_secs(5), || async { a.hits() >= 1 }).await);
    gw.signal(libc::SIGTERM);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "in-flight request finished"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("gateway did not exit once drained, well before the grace period ended");
    assert!(status.success(), "{status:?}");
}
