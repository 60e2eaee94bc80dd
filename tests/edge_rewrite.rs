//! `rewrite`: the path the upstream receives (its echo JSON's `path`), after
//! canonicalisation and `strip_prefix`, the query kept; per route and in `defaults:`; a
//! result that is not a path answered in the error shape; live reload; validation.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

fn body(up: &TestUpstream, rest: &str) -> String {
    format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}",
        up.address()
    )
}

async fn start(rest: &str) -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&body(&up, rest));
    (Gateway::start(cfg, &yaml).await, up)
}

async fn get(gw: &Gateway, path: &str) -> Answer {
    Answer::read(
        gw.http()
            .get(gw.url(path))
            .send()
            .await
            .expect("request failed"),
    )
    .await
}

/// The path and query the upstream received for GET `path`.
async fn upstream_path(gw: &Gateway, path: &str) -> String {
    let a = get(gw, path).await;
    assert_eq!(a.status, 200, "{path}: {}", a.text);
    let echo: Value = a.json();
    echo["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn routes_rewrite_the_upstream_path_and_keep_the_query() {
    let (gw, _up) = start(
        r#"routes:
  - {name: api, path_prefix: /api, upstream: up, rewrite: {pattern: "^/api/v1/(.*)$", replace: "/v2/$1"}}
  - name: svc
    path_prefix: /svc
    strip_prefix: true
    upstream: up
    rewrite: {pattern: "^/(?P<kind>users|teams)/(?P<id>[0-9]+)$", replace: "/internal/${kind}/by-id/${id}"}
  - {name: bad, path_prefix: /bad, upstream: up, rewrite: {pattern: "^/bad/(.*)$", replace: "$1"}}
"#,
    )
    .await;
    for (sent, received) in [
        ("/api/v1/users?x=1&y=%20", "/v2/users?x=1&y=%20"),
        ("/api/v1/", "/v2/"),
        // No match: unchanged.
        ("/api/v3/users?x=1", "/api/v3/users?x=1"),
        // The canonical path is what is matched (the client would resolve dot segments).
        ("/api//v1//users/7", "/v2/users/7"),
        ("/api/v1/%7Euser", "/v2/~user"),
        // After strip_prefix.
        ("/svc/users/42?full=1", "/internal/users/by-id/42?full=1"),
        ("/svc/teams/7", "/internal/teams/by-id/7"),
        ("/svc/users/me", "/users/me"),
    ] {
        assert_eq!(upstream_path(&gw, sent).await, received, "{sent}");
    }
    // A result that is not a path is the gateway's failure, in the error shape.
    get(&gw, "/bad/x").await.assert_error(500, "internal_error");
    // The route's other requests still pass.
    assert_eq!(upstream_path(&gw, "/bad").await, "/bad");
}

#[tokio::test]
async fn a_server_wide_default_a_route_override_and_false() {
    let (gw, _up) = start(
        r#"defaults:
  rewrite: {pattern: "^/(.*)$", replace: "/default/$1"}
routes:
  - {name: inherits, path_prefix: /inherits, upstream: up}
  - {name: own, path_prefix: /own, upstream: up, rewrite: {pattern: "^/own/(.*)$", replace: "/mine/$1"}}
  - {name: off, path_prefix: /off, upstream: up, rewrite: false}
"#,
    )
    .await;
    assert_eq!(
        upstream_path(&gw, "/inherits/a?q").await,
        "/default/inherits/a?q"
    );
    assert_eq!(upstream_path(&gw, "/own/a?q").await, "/mine/a?q");
    assert_eq!(upstream_path(&gw, "/off/a?q").await, "/off/a?q");
}

#[tokio::test]
async fn a_rewrite_turns_on_and_off_with_a_live_reload() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let with = |rewrite: &str| {
        format!(
            "{header}{}",
            body(
                &up,
                &format!("routes:\n  - {{name: r, path_prefix: /, upstream: up{rewrite}}}\n")
            )
        )
    };
    let gw = Gateway::start(cfg, &with("")).await;
    assert_eq!(upstream_path(&gw, "/old/x").await, "/old/x");
    let eventually = |expected: &'static str| {
        let gw = &gw;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while upstream_path(gw, "/old/x?k=v").await != expected {
                assert!(Instant::now() < deadline, "not {expected}\n{}", gw.logs());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    gw.rewrite_config(&with(
        r#", rewrite: {pattern: "^/old/(.*)$", replace: "/new/$1"}"#,
    ));
    eventually("/new/x?k=v").await;
    gw.rewrite_config(&with(""));
    eventually("/old/x?k=v").await;
}

#[tokio::test]
async fn check_reports_bad_rewrites_with_their_place() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        r#"upstreams:
  - {name: up, targets: [{address: '127.0.0.1:9'}]}
defaults:
  rewrite: {pattern: "^/("}
routes:
  - {name: a, path_prefix: /a, upstream: up, rewrite: {pattern: "^/(", replace: "/x"}}
  - {name: b, path_prefix: /b, upstream: up, rewrite: {pattern: "^/b/(.*)$", replace: "/v2/$2"}}
  - {name: c, path_prefix: /c, upstream: up, rewrite: {pattern: "^/c/(?P<rest>.*)$", replace: "/v2/${other}"}}
  - {name: d, path_prefix: /d, upstream: up, rewrite: {pattern: "^/d/(.*)$", replace: "v2/$1"}}
  - {name: e, path_prefix: /e, upstream: up, rewrite: {pattern: "^/e$", replace: "/x?y=1"}}
  - {name: f, path_prefix: /f, upstream: up, rewrite: {pattern: "^/f$", replace: "/$"}}
"#,
    );
    let out = Gateway::check(&yaml).await;
    assert_ne!(out.code, Some(0));
    for expected in [
        "defaults.rewrite: set both pattern and replace",
        "routes[0].rewrite.pattern: not a valid regex",
        "routes[1].rewrite.replace: names the group \"2\", which the pattern does not have",
        "routes[2].rewrite.replace: names the group \"other\", which the pattern does not have",
        "routes[3].rewrite.replace: must start with '/'",
        "routes[4].rewrite.replace: is a path: the query is kept",
        "routes[5].rewrite.replace: a '$' must name a group",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stderr
        );
    }
}
