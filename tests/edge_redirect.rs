//! Redirect routes: a fixed location filled from the path (captures, query, HEAD), the
//! HTTPS upgrade on the plain listener (proxied on TLS when the route has an upstream),
//! before identification and after `ip_rules`; live reload; validation.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

fn upstreams(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n",
        up.address()
    )
}

async fn send(gw: &Gateway, method: reqwest::Method, url: &str, host: Option<&str>) -> Answer {
    let mut req = gw.http().request(method, url);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    Answer::read(req.send().await.expect("request failed")).await
}

/// GET `path` on the plain listener.
async fn get(gw: &Gateway, path: &str) -> Answer {
    send(gw, reqwest::Method::GET, &gw.url(path), None).await
}

/// Asserts a redirect: its status, its Location, and no body.
fn assert_redirect(a: &Answer, status: u16, location: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(
        a.headers.get("location").and_then(|l| l.to_str().ok()),
        Some(location),
        "{:?}",
        a.headers
    );
    assert_eq!(a.text, "");
}

#[tokio::test]
async fn fixed_locations_with_captures_query_and_head() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        r#"{}routes:
  - name: docs
    path_prefix: /docs
    redirect: {{location: "https://docs.example.com/v2/${{page}}", pattern: "^/docs/(?P<page>.+)$", status: 301}}
  - {{name: old, path_prefix: /old, redirect: {{location: "/new?from=old"}}}}
  - {{name: gone, path_prefix: /gone, redirect: {{location: "/", keep_query: false, status: 308}}}}
  - {{name: moved, path_prefix: /moved, redirect: {{location: "/$1", pattern: "^/moved(.*)$", status: 307}}}}
  - {{name: walled, path_prefix: /walled, ip_rules: {{deny: [127.0.0.1]}}, redirect: {{location: /}}}}
  - {{name: api, path_prefix: /api, upstream: up, auth: required}}
"#,
        upstreams(&up)
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    assert_redirect(
        &get(&gw, "/docs/guide/intro?lang=en&v=2").await,
        301,
        "https://docs.example.com/v2/guide/intro?lang=en&v=2",
    );
    let head = send(&gw, reqwest::Method::HEAD, &gw.url("/docs/a?b"), None).await;
    assert_redirect(&head, 301, "https://docs.example.com/v2/a?b");
    assert_eq!(head.headers["content-length"], "0");
    // The canonical path fills the location; request text is escaped into it.
    assert_redirect(
        &get(&gw, "/docs//a/%7Eb/%22c%22").await,
        301,
        "https://docs.example.com/v2/a/~b/%22c%22",
    );
    // The pattern does not match: nothing to answer with.
    get(&gw, "/docs").await.assert_error(404, "route_not_found");
    // The default status is 302; the location's own query comes first.
    assert_redirect(&get(&gw, "/old/x?y=1").await, 302, "/new?from=old&y=1");
    assert_redirect(&get(&gw, "/old").await, 302, "/new?from=old");
    assert_redirect(&get(&gw, "/gone/x?y=1").await, 308, "/");
    // A group cannot turn a path location into another host (`//evil.test`).
    assert_redirect(&get(&gw, "/moved//evil.test/x").await, 307, "/evil.test/x");
    assert_redirect(&get(&gw, "/moved/a").await, 307, "/a");
    // ip_rules come before the redirect.
    get(&gw, "/walled").await.assert_error(403, "ip_denied");
    // Routes with an upstream are untouched.
    get(&gw, "/api/x")
        .await
        .assert_error(401, "missing_credentials");
}

#[tokio::test]
async fn https_upgrade_on_the_plain_listener_and_proxying_on_tls() {
    let certs = Certs::new();
    let leaf = certs.leaf("api", &["api.test"]);
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new().with_tls(&leaf);
    let tls_port = cfg.tls_port().unwrap();
    let yaml = cfg.render(&format!(
        "{}routes:
  - {{name: app, path_prefix: /app, upstream: up, redirect: {{https: true, https_port: {tls_port}}}}}
  - {{name: site, path_prefix: /, redirect: {{https: true, status: 301}}}}
",
        upstreams(&up)
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    let plain_host = format!("API.test:{}", gw.config().proxy_port());
    let a = send(
        &gw,
        reqwest::Method::GET,
        &gw.url("/app/a/./b?q=1&r"),
        Some(&plain_host),
    )
    .await;
    let location = format!("https://api.test:{tls_port}/app/a/b?q=1&r");
    assert_redirect(&a, 308, &location);
    let head = send(
        &gw,
        reqwest::Method::HEAD,
        &gw.url("/app"),
        Some(&plain_host),
    )
    .await;
    assert_redirect(&head, 308, &format!("https://api.test:{tls_port}/app"));
    // Following it: on TLS the route proxies to its upstream.
    let followed = send(&gw, reqwest::Method::GET, &location, None).await;
    assert_eq!(followed.status, 200, "{}", followed.text);
    let echo: Value = followed.json();
    assert_eq!(echo["path"], "/app/a/b?q=1&r");
    // Without https_port the URL names no port (443); without an upstream, a TLS request
    // has nowhere to go.
    assert_redirect(
        &send(
            &gw,
            reqwest::Method::GET,
            &gw.url("/x?y"),
            Some(&plain_host),
        )
        .await,
        301,
        "https://api.test/x?y",
    );
    send(&gw, reqwest::Method::GET, &gw.https_url("/x"), None)
        .await
        .assert_error(404, "route_not_found");
}

#[tokio::test]
async fn a_route_becomes_a_redirect_and_back_with_a_live_reload() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let ups = upstreams(&up);
    let with =
        |target: &str| format!("{header}{ups}routes:\n  - {{name: r, path_prefix: /, {target}}}\n");
    let proxied = "upstream: up";
    let gw = Gateway::start(cfg, &with(proxied)).await;
    let eventually = |status: u16| {
        let gw = &gw;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let a = send(gw, reqwest::Method::GET, &gw.url("/p?q"), None).await;
                if a.status == status {
                    return a;
                }
                assert!(Instant::now() < deadline, "not {status}\n{}", gw.logs());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(eventually(200).await.json()["path"], "/p?q");
    gw.rewrite_config(&with(
        "redirect: {location: 'https://elsewhere.test/moved$0', status: 301}",
    ));
    assert_redirect(
        &eventually(301).await,
        301,
        "https://elsewhere.test/moved/p?q",
    );
    gw.rewrite_config(&with(proxied));
    eventually(200).await;
}

#[tokio::test]
async fn check_reports_bad_redirects_with_their_place() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        r#"upstreams:
  - {name: up, targets: [{address: '127.0.0.1:9'}]}
routes:
  - {name: a, path_prefix: /a, upstream: up, redirect: {location: /x}}
  - {name: b, path_prefix: /b}
  - {name: c, path_prefix: /c, redirect: {location: /x, status: 303}}
  - {name: d, path_prefix: /d, redirect: {location: "https://$1.example.com/", pattern: "^/d/(.*)$"}}
  - {name: e, path_prefix: /e, redirect: {location: "/$2", pattern: "^/e/(.*)$"}}
  - {name: f, path_prefix: /f, redirect: {location: "//evil.test/"}}
  - {name: g, path_prefix: /g, auth: required, strip_prefix: true, redirect: {location: /x}}
  - {name: h, path_prefix: /h, redirect: {https: true, location: /x}}
  - {name: i, path_prefix: /i, redirect: {location: "/x", pattern: "^/("}}
"#,
    );
    let out = Gateway::check(&yaml).await;
    assert_ne!(out.code, Some(0));
    for expected in [
        "routes[0].redirect.location: a route that redirects every request has no upstream",
        "routes[1]: set upstream (or redirect)",
        "routes[2].redirect.status: must be 301, 302, 307 or 308",
        "routes[3].redirect.location: a group may only follow the host",
        "routes[4].redirect.location: names the group \"2\"",
        "routes[5].redirect.location: must be an http(s)://host/... URL or a path",
        "routes[6].strip_prefix: has no effect on a route without an upstream",
        "routes[6].auth: has no effect on a route without an upstream",
        "routes[7].redirect: set location (a fixed target) or https: true (an HTTPS upgrade), not both",
        "routes[8].redirect.pattern: not a valid regex",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stderr
        );
    }
    // Per route only: `defaults:` has no redirect.
    let defaults = Gateway::check(&cfg.render(
        "upstreams:\n  - {name: up, targets: [{address: '127.0.0.1:9'}]}\n\
         defaults:\n  redirect: {https: true}\n",
    ))
    .await;
    assert_ne!(defaults.code, Some(0));
    assert!(
        defaults.stderr.contains("unknown field `redirect`"),
        "{}",
        defaults.stderr
    );
}
