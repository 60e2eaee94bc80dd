//! Smoke tests of the integration-test harness in `tests/support`: each
//! helper starts a real server, answers over a real socket, and cleans up.
//!
//! `gateway_proxies_to_upstream` exercises the real `tollgate` binary; it
//! fails until the gateway in `src/` can proxy.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokio::io::AsyncReadExt;

/// Whether a process with this pid exists (zombies count as existing).
fn process_exists(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "free_port repeated a port");
    for port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} from free_port() is not bindable: {e}"));
    }
}

#[tokio::test]
async fn upstream_echoes_the_request() {
    let upstream = TestUpstream::start("a").await;
    let response = http_client()
        .post(upstream.url("/some/path?x=1&y=2"))
        .header("x-custom", "one")
        .header("x-repeated", "first")
        .header("x-repeated", "second")
        .body(vec![7u8; 100_000])
        .send()
        .await
        .expect("POST to the upstream");

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-upstream"], "a");
    let echo: Value = response.json().await.expect("echo JSON");
    assert_eq!(echo["upstream"], "a");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/some/path?x=1&y=2");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["headers"]["x-custom"], "one");
    assert_eq!(echo["headers"]["x-repeated"], "first, second");
    assert_eq!(echo["body_bytes"], 100_000);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn upstream_special_paths() {
    let upstream = TestUpstream::start("b").await;
    let client = http_client();

    let response = client
        // Markers work behind a prefix too, and with any method.
        .delete(upstream.url("/api/__status/503"))
        .send()
        .await
        .expect("DELETE /api/__status/503");
    assert_eq!(response.status(), 503);
    let echo: Value = response.json().await.expect("echo JSON");
    assert_eq!(echo["upstream"], "b");

    let started = Instant::now();
    let response = client
        .get(upstream.url("/__sleep/300"))
        .send()
        .await
        .expect("GET /__sleep/300");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let mut response = client
        .get(upstream.url("/__stream/100000?chunk=1000&delay_ms=1"))
        .send()
        .await
        .expect("GET /__stream/100000");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = response.chunk().await.expect("read a stream chunk") {
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert_eq!(body.len(), 100_000);
    assert!(chunks > 1, "the body arrived in one piece");
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));

    let health = client
        .get(upstream.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("health body"), "ok");
    upstream.set_healthy(false);
    let health = client
        .get(upstream.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 503);

    assert_eq!(upstream.hits(), 3, "health checks are not hits");
    assert_eq!(upstream.health_checks(), 2);
}

#[tokio::test]
async fn upstream_stops_and_starts_again_on_the_same_port() {
    let mut upstream = TestUpstream::start("c").await;
    let port = upstream.port();
    let client = http_client();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await }
    };
    assert_eq!(
        get(upstream.url("/1"))
            .await
            .expect("GET before stop")
            .status(),
        200
    );

    // An idle connection that stop() must close.
    let mut idle = tokio::net::TcpStream::connect(upstream.socket_addr())
        .await
        .expect("connect to the upstream");

    upstream.stop().await;
    assert!(
        port_is_closed(port).await,
        "port still accepts after stop()"
    );
    assert!(
        get(upstream.url("/2")).await.is_err(),
        "request succeeded after stop()"
    );
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("stop() left an open connection");
    assert!(matches!(read, Ok(0) | Err(_)), "idle connection still open");

    upstream.start_again().await;
    assert_eq!(upstream.port(), port);
    let response = get(upstream.url("/3"))
        .await
        .expect("GET after start_again");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn tls_upstream_with_test_ca_speaks_http1_and_http2() {
    let certs = Certs::new();
    let leaf = certs.leaf("upstream", &["upstream.test", "127.0.0.1"]);
    assert!(leaf.cert_path.is_file() && leaf.key_path.is_file());
    assert!(certs.ca_path().is_file());
    let upstream = TestUpstream::start_tls("tls", &leaf).await;
    let url = format!("https://upstream.test:{}/tls-path", upstream.port());
    let trusting = || {
        let ca = reqwest::Certificate::from_pem(certs.ca_pem().as_bytes()).expect("parse CA");
        http_client_builder()
            .add_root_certificate(ca)
            .resolve("upstream.test", upstream.socket_addr())
    };

    let response = trusting()
        .build()
        .expect("client")
        .get(&url)
        .send()
        .await
        .expect("HTTPS GET");
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN did not pick h2"
    );
    let echo: Value = response.json().await.expect("echo JSON");
    assert_eq!(echo["path"], "/tls-path");
    assert_eq!(echo["version"], "HTTP/2.0");

    let response = trusting()
        .http1_only()
        .build()
        .expect("client")
        .get(upstream.url("/by-ip"))
        .send()
        .await
        .expect("HTTPS GET by IP over HTTP/1.1");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    let other_ca = Certs::new();
    let untrusting = http_client_builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(other_ca.ca_pem().as_bytes()).expect("parse CA"),
        )
        .resolve("upstream.test", upstream.socket_addr())
        .build()
        .expect("client");
    assert!(
        untrusting.get(&url).send().await.is_err(),
        "a certificate from an unknown CA was accepted"
    );
}

#[tokio::test]
async fn redis_server_answers_and_restarts() {
    let mut redis = RedisServer::start().await;
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(
        redis.command(&["SET", "k", "v"]).await,
        Resp::Simple("OK".into())
    );
    assert_eq!(redis.command(&["GET", "k"]).await.as_str(), Some("v"));
    assert_eq!(redis.command(&["INCRBY", "n", "5"]).await.as_int(), Some(5));

    let pid = redis.pid().expect("running");
    redis.kill();
    assert!(!process_exists(pid));
    assert!(port_is_closed(redis.port()).await);
    assert!(redis.try_command(&["PING"]).await.is_err());

    redis.restart().await;
    assert_eq!(
        redis.command(&["GET", "k"]).await,
        Resp::Bulk(None),
        "data survived a kill"
    );

    let pid = redis.pid().expect("running");
    let port = redis.port();
    drop(redis);
    assert!(!process_exists(pid), "redis-server survived drop");
    assert!(port_is_closed(port).await);
}

#[tokio::test]
async fn redis_cluster_forms() {
    let cluster = RedisCluster::start(3).await;
    assert_eq!(cluster.urls().len(), 3);
    for node in cluster.nodes() {
        let info = node.command(&["CLUSTER", "INFO"]).await;
        let info = info.as_str().expect("CLUSTER INFO is a bulk string");
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    // Every key lives on exactly one node; the others redirect.
    let mut stored = 0;
    for node in cluster.nodes() {
        match node.command(&["SET", "some-key", "v"]).await {
            Resp::Simple(ok) if ok == "OK" => stored += 1,
            Resp::Error(e) if e.starts_with("MOVED") => {}
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn postgres_starts_with_a_database_and_restarts() {
    let mut postgres = Postgres::start().await;
    assert_eq!(
        postgres.url(),
        format!("postgres://postgres@127.0.0.1:{}/tollgate", postgres.port())
    );
    assert_eq!(postgres.psql("SELECT current_database()").await, "tollgate");
    postgres
        .psql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .await;

    postgres.stop().await;
    assert!(port_is_closed(postgres.port()).await);
    postgres.start_again().await;
    assert_eq!(
        postgres.psql("SELECT v FROM t").await,
        "42",
        "data lost on restart"
    );

    postgres.restart().await;
    let pid = postgres.pid().expect("running");
    let port = postgres.port();
    drop(postgres);
    assert!(!process_exists(pid), "postgres survived drop");
    assert!(port_is_closed(port).await);
}

#[tokio::test]
async fn servers_are_cleaned_up_when_a_test_panics() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let panicking_test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let redis = RedisServer::start().await;
            let upstream = TestUpstream::start("doomed").await;
            sender
                .send((redis.pid().expect("running"), redis.port(), upstream.port()))
                .expect("send");
            panic!("deliberate panic: testing that the harness cleans up");
        });
    });
    assert!(
        panicking_test.join().is_err(),
        "the thread should have panicked"
    );
    let (redis_pid, redis_port, upstream_port) = receiver.recv().expect("ports");
    assert!(
        !process_exists(redis_pid),
        "redis-server survived the panic"
    );
    assert!(port_is_closed(redis_port).await);
    assert!(port_is_closed(upstream_port).await);
}

/// Needs the real gateway from `src/`: fails until tollgate can proxy.
#[tokio::test]
async fn gateway_proxies_to_upstream() {
    let upstream = TestUpstream::start("a").await;
    let config = GatewayConfig::new();
    let yaml = config.render(&format!(
        "\
upstreams:
  - name: a
    targets:
      - address: {}
        weight: 1
routes:
  - name: r1
    path_prefix: /
    upstream: a
",
        upstream.address()
    ));
    let gateway = Gateway::start(config, &yaml).await;

    let response = gateway
        .http()
        .get(gateway.url("/hello"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET through the gateway failed: {e}\n{}", gateway.logs()));
    assert_eq!(response.status(), 200, "{}", gateway.logs());
    let echo: Value = response.json().await.expect("echo JSON");
    assert_eq!(echo["upstream"], "a");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(upstream.hits(), 1);
}
