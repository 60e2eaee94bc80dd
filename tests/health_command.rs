//! `tollgate health`, the probe the container image uses instead of curl: exit 0 on a 2xx from
//! the gateway's health endpoint, 1 with the reason otherwise.

mod support;

use std::process::Command;
use support::*;

fn health(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["health", "--timeout", "2s", "--url", url])
        .output()
        .expect("run tollgate health");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test]
async fn health_exits_0_on_a_healthy_gateway_and_1_with_the_reason_otherwise() {
    let upstream = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: a, targets: [{{address: \"{}\"}}]}}\n\
         routes:\n  - {{name: r, path_prefix: /api, upstream: a}}\n",
        upstream.address()
    ));
    let gw = Gateway::start(cfg, &yaml).await;

    let (ok, said) = tokio::task::spawn_blocking({
        let url = gw.url("/health");
        move || health(&url)
    })
    .await
    .unwrap();
    assert!(ok, "{said}");
    assert!(said.contains(": 200"), "{said}");

    let (ok, said) = tokio::task::spawn_blocking({
        let url = gw.url("/nothing-here");
        move || health(&url)
    })
    .await
    .unwrap();
    assert!(!ok, "{said}");
    assert!(said.contains("answered 404"), "{said}");

    let closed = free_port();
    let (ok, said) =
        tokio::task::spawn_blocking(move || health(&format!("http://127.0.0.1:{closed}/health")))
            .await
            .unwrap();
    assert!(!ok, "{said}");
    assert!(said.contains("cannot connect"), "{said}");

    let (ok, said) = health("https://127.0.0.1/health");
    assert!(!ok && said.contains("not an http://"), "{said}");
}
