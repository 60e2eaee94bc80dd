//! Live reload and config validation: changes apply under load without failing requests,
//! broken files change nothing, and bad files are refused with every problem named.

mod support;

use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Routes for reload step `step`: `/stable` always goes to a; `/v{step}` is added (and the
/// previous step's route removed); `/moving` alternates between upstreams a and b.
fn step_yaml(a: &TestUpstream, b: &TestUpstream, step: usize) -> String {
    let moving = if step.is_multiple_of(2) { "a" } else { "b" };
    format!(
        "upstreams:
  - {{name: a, targets: [{{address: \"{}\"}}]}}
  - {{name: b, targets: [{{address: \"{}\"}}]}}
routes:
  - {{name: stable, path_prefix: /stable, upstream: a}}
  - {{name: moving, path_prefix: /moving, upstream: {moving}}}
  - {{name: v{step}, path_prefix: /v{step}, upstream: b}}
",
        a.address(),
        b.address()
    )
}

async fn upstream_for(client: &reqwest::Client, url: String) -> Option<(u16, String)> {
    let resp = client.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.ok()?;
    Some((status, body["upstream"].as_str().unwrap_or("").to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_change_live_under_load_and_a_broken_file_changes_nothing() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let gw = Gateway::start(cfg, &format!("{header}{}", step_yaml(&a, &b, 0))).await;

    // Continuous load on the route that never changes, from several clients.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, url) = (gw.http().clone(), gw.url("/stable/x"));
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match upstream_for(&client, url.clone()).await {
                    Some((200, up)) if up == "a" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let mut slowest = Duration::ZERO;
    for step in 1..=20 {
        let started = Instant::now();
        gw.rewrite_config(&format!("{header}{}", step_yaml(&a, &b, step)));
        let expected_moving = if step.is_multiple_of(2) { "a" } else { "b" };
        let new_route = gw.url(&format!("/v{step}/x"));
        let old_route = gw.url(&format!("/v{}/x", step - 1));
        loop {
            let new_live =
                upstream_for(gw.http(), new_route.clone()).await == Some((200, "b".into()));
            let old_gone = gw
                .http()
                .get(&old_route)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
                == Some(404);
            let moved = upstream_for(gw.http(), gw.url("/moving/x"))
                .await
                .map(|(_, u)| u)
                == Some(expected_moving.into());
            if new_live && old_gone && moved {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "step {step} not live within 1 s (new {new_live}, old gone {old_gone}, moved {moved})\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(started.elapsed());
    }
    println!("slowest reload to take effect: {slowest:?}");

    // A broken file is refused: nothing changes, and the refusal is counted.
    gw.rewrite_config(&format!(
        "{header}routes:\n  - {{name: broken, path_prefix: nope, upstream: ghost}}\n"
    ));
    assert!(
        gw.wait_for_log("config reload refused", Duration::from_secs(3))
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(
        upstream_for(gw.http(), gw.url("/v20/x")).await,
        Some((200, "b".into()))
    );
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"success\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_config_generation 21"),
        "{metrics}"
    );
    assert!(gw
        .logs()
        .contains("routes[0].upstream: no upstream named \"ghost\""));

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests under reload: {ok} ok, {failed} failed");
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(failed, 0, "requests failed during reloads");
}

#[tokio::test]
async fn sighup_and_reload_command_apply_the_file() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header().replace(
        "health_path: /health\n",
        "health_path: /health\n  watch_config: false\n",
    );
    let gw = Gateway::start(cfg, &format!("{header}{}", step_yaml(&a, &b, 0))).await;

    gw.rewrite_config(&format!("{header}{}", step_yaml(&a, &b, 1)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        upstream_for(gw.http(), gw.url("/moving")).await.unwrap().1,
        "a",
        "watch_config: false ignores the change"
    );
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("generation 2", Duration::from_secs(3))
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(
        upstream_for(gw.http(), gw.url("/moving")).await.unwrap().1,
        "b"
    );

    gw.rewrite_config(&format!("{header}{}", step_yaml(&a, &b, 2)));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["reload", "-c"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        gw.wait_for_log("generation 3", Duration::from_secs(3))
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(
        upstream_for(gw.http(), gw.url("/moving")).await.unwrap().1,
        "a"
    );
}

#[tokio::test]
async fn listener_changes_are_reported_as_needing_an_upgrade() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let port = cfg.proxy_port();
    let gw = Gateway::start(cfg, &format!("{header}{}", step_yaml(&a, &b, 0))).await;
    let moved = header.replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    gw.rewrite_config(&format!("{moved}{}", step_yaml(&a, &b, 1)));
    assert!(
        gw.wait_for_log("need a restart or graceful upgrade", Duration::from_secs(3))
            .await,
        "{}",
        gw.logs()
    );
    // Routes applied; the listener stayed where it was.
    assert_eq!(
        upstream_for(gw.http(), gw.url("/moving")).await.unwrap().1,
        "b"
    );
}

#[tokio::test]
async fn check_reports_every_problem_with_its_place() {
    let yaml = "
listeners:
  - address: 127.0.0.1:99999
upstreams:
  - name: orders
    targets: [{address: '127.0.0.1:9000', weight: 0}]
  - name: orders
    targets: []
routes:
  - {name: r1, path_prefix: /a, upstream: orders}
  - {name: r2, path_prefix: b, upstream: ordrs}
  - {name: r3, path_prefix: /c, upstream: orders, methods: [FETCH], timeouts: {read: soon}}
";
    let out = Gateway::check(yaml).await;
    assert_ne!(out.code, Some(0));
    for expected in [
        "listeners[0].address: \"127.0.0.1:99999\" is not an address of the form host:port",
        "upstreams[0].targets[0].weight: must be at least 1",
        "upstreams[1].name: duplicate upstream name \"orders\"",
        "upstreams[1].targets: an upstream needs at least one target",
        "routes[1].upstream: no upstream named \"ordrs\"",
        "routes[1].path_prefix: \"b\" must start with '/'",
        "routes[2].methods[0]: unknown HTTP method \"FETCH\"",
        "routes[2].timeouts.read: \"soon\" is not a duration",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stderr
        );
    }

    let unknown = Gateway::check(
        "listeners: [{address: '127.0.0.1:1'}]\nroutes:\n  - name: r\n    upstrem: x\n",
    )
    .await;
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown
            .stderr
            .contains("line 4: routes[0]: unknown field `upstrem`"),
        "{}",
        unknown.stderr
    );

    let good = Gateway::check("listeners: [{address: '127.0.0.1:1'}]\n").await;
    assert_eq!(good.code, Some(0), "{}", good.stderr);
}

#[tokio::test]
async fn a_bad_file_at_start_is_refused_with_its_problems() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render("routes:\n  - {name: r, path_prefix: /, upstream: missing}\n");
    let out = Gateway::start_expect_failure(cfg, &yaml).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("routes[0].upstream: no upstream named \"missing\""),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn graceful_upgrade_hands_the_listener_over() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let dir = cfg.dir().to_path_buf();
    let url = format!("http://127.0.0.1:{}/moving", cfg.proxy_port());
    let mut old = Gateway::start(cfg, &format!("{header}{}", step_yaml(&a, &b, 0))).await;

    // The new process waits on the upgrade socket for the old one's listeners.
    std::fs::write(
        dir.join("tollgate.yaml"),
        format!("{header}{}", step_yaml(&a, &b, 1)),
    )
    .unwrap();
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["-u", "-c"])
        .arg(dir.join("tollgate.yaml"))
        .stdout(std::fs::File::create(dir.join("new.stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("new.stderr")).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal(libc::SIGQUIT);
    assert!(
        old.wait_exit(Duration::from_secs(20)).await.is_some(),
        "old instance did not exit"
    );

    let client = http_client();
    let mut served_by_new = false;
    for _ in 0..50 {
        if let Ok(r) = client.get(&url).send().await {
            let body: Value = r.json().await.unwrap_or_default();
            if body["upstream"] == "b" {
                served_by_new = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        served_by_new,
        "new instance did not take over: {}",
        std::fs::read_to_string(dir.join("new.stderr")).unwrap_or_default()
    );
}
