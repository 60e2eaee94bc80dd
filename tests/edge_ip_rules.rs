//! `ip_rules`: allow and deny lists per route and in `defaults:`, on the client address the
//! trusted-proxy logic resolved (IPv4, IPv6, IPv4-mapped), before identification; live
//! reload; validation with places.

mod support;

use std::time::{Duration, Instant};
use support::*;

/// A gateway whose routes (and anything else) are `rest`, over one upstream `up`.
async fn start(rest: &str) -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&body(&up, rest));
    (Gateway::start(cfg, &yaml).await, up)
}

fn body(up: &TestUpstream, rest: &str) -> String {
    format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}",
        up.address()
    )
}

/// GET `path`, with `X-Forwarded-For: xff` when given.
async fn get(gw: &Gateway, path: &str, xff: Option<&str>) -> Answer {
    let mut req = gw.http().get(gw.url(path));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    Answer::read(req.send().await.expect("request failed")).await
}

/// Asserts the refusal: 403 `ip_denied`, saying nothing of which list refused.
fn assert_denied(a: &Answer, what: &str) {
    let body = a.assert_error(403, "ip_denied");
    let message = body["message"].as_str().unwrap_or("");
    assert!(
        !message.contains("list") && !message.contains("deny"),
        "{what}: {message}"
    );
}

#[tokio::test]
async fn deny_and_allow_lists_on_routes() {
    let (gw, _up) = start(
        "routes:
  - {name: denied, path_prefix: /denied, upstream: up, ip_rules: {deny: [127.0.0.1/32]}}
  - {name: only-ten, path_prefix: /only-ten, upstream: up, ip_rules: {allow: [10.0.0.0/8]}}
  - {name: local, path_prefix: /local, upstream: up, ip_rules: {allow: [127.0.0.0/8, '::1'], deny: [127.0.0.2]}}
  - {name: open, path_prefix: /open, upstream: up}
  - {name: closed, path_prefix: /closed, upstream: up, auth: required, ip_rules: {deny: [127.0.0.1]}}
",
    )
    .await;
    assert_denied(&get(&gw, "/denied/x", None).await, "deny");
    assert_denied(&get(&gw, "/only-ten/x", None).await, "allow");
    assert_eq!(get(&gw, "/local/x", None).await.status, 200);
    assert_eq!(get(&gw, "/open/x", None).await.status, 200);
    // Checked before identification: a refused address costs no credential check.
    assert_denied(&get(&gw, "/closed/x", None).await, "before auth");
    // An address without trusted proxies is the peer's: X-Forwarded-For changes nothing.
    assert_denied(&get(&gw, "/denied/x", Some("10.1.2.3")).await, "spoofed");
}

#[tokio::test]
async fn forwarded_client_addresses_ipv4_ipv6_and_mapped() {
    let (gw, _up) = start(
        "auth:
  trusted_proxies: [127.0.0.1/32]
  client_ip_header: x-forwarded-for
routes:
  - {name: v4, path_prefix: /v4, upstream: up, ip_rules: {allow: [10.0.0.0/8], deny: [10.6.0.0/16]}}
  - {name: v6, path_prefix: /v6, upstream: up, ip_rules: {allow: ['2001:db8::/32'], deny: ['2001:db8:bad::/48']}}
",
    )
    .await;
    for (path, xff, admitted) in [
        ("/v4/x", Some("10.1.2.3"), true),
        ("/v4/x", Some("10.6.1.1"), false),
        ("/v4/x", Some("192.0.2.1"), false),
        // An IPv4-mapped IPv6 address is its IPv4 address.
        ("/v4/x", Some("::ffff:10.1.2.3"), true),
        ("/v4/x", Some("::ffff:10.6.0.1"), false),
        // The client is the first untrusted hop from the right.
        ("/v4/x", Some("10.1.2.3, 192.0.2.1"), false),
        ("/v4/x", Some("192.0.2.1, 10.1.2.3"), true),
        // The proxy itself, without a forwarded address.
        ("/v4/x", None, false),
        ("/v6/x", Some("2001:db8:1::1"), true),
        ("/v6/x", Some("[2001:db8:1::1]:4711"), true),
        ("/v6/x", Some("2001:db8:bad::1"), false),
        ("/v6/x", Some("2001:db9::1"), false),
        ("/v6/x", Some("10.1.2.3"), false),
    ] {
        let a = get(&gw, path, xff).await;
        if admitted {
            assert_eq!(a.status, 200, "{path} from {xff:?}: {}", a.text);
        } else {
            assert_denied(&a, &format!("{path} from {xff:?}"));
        }
    }
}

#[tokio::test]
async fn a_server_wide_default_a_route_override_and_false() {
    let (gw, _up) = start(
        "defaults:
  ip_rules: {deny: [127.0.0.1]}
routes:
  - {name: inherits, path_prefix: /inherits, upstream: up}
  - {name: own, path_prefix: /own, upstream: up, ip_rules: {allow: [127.0.0.1]}}
  - {name: own-deny, path_prefix: /own-deny, upstream: up, ip_rules: {deny: [10.0.0.0/8]}}
  - {name: off, path_prefix: /off, upstream: up, ip_rules: false}
",
    )
    .await;
    assert_denied(&get(&gw, "/inherits/x", None).await, "default");
    // A route's own section replaces the default (it does not add to it).
    assert_eq!(get(&gw, "/own/x", None).await.status, 200);
    assert_eq!(get(&gw, "/own-deny/x", None).await.status, 200);
    assert_eq!(get(&gw, "/off/x", None).await.status, 200);
    // Answers made before a route matched are not address-checked (there is no route).
    get(&gw, "/nowhere", None)
        .await
        .assert_error(404, "route_not_found");
}

/// Polls GET `path` until it answers `status`, for up to 5 s.
async fn eventually_status(gw: &Gateway, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = get(gw, path, None).await;
        if a.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {} ({}), not {status}\n{}",
            a.status,
            a.text,
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rules_turn_on_and_off_with_a_live_reload() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let with = |rules: &str| {
        format!(
            "{header}{}",
            body(
                &up,
                &format!("routes:\n  - {{name: r, path_prefix: /, upstream: up{rules}}}\n")
            )
        )
    };
    let gw = Gateway::start(cfg, &with("")).await;
    assert_eq!(get(&gw, "/x", None).await.status, 200);
    gw.rewrite_config(&with(", ip_rules: {deny: ['127.0.0.0/8', '::1']}"));
    eventually_status(&gw, "/x", 403).await;
    assert_denied(&get(&gw, "/x", None).await, "after reload");
    gw.rewrite_config(&with(", ip_rules: {allow: ['127.0.0.1']}"));
    eventually_status(&gw, "/x", 200).await;
    // A bad list is refused as a whole: the running rules stay.
    gw.rewrite_config(&with(", ip_rules: {deny: [127.0.0.1/8]}"));
    assert!(
        gw.wait_for_log("config reload refused", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(get(&gw, "/x", None).await.status, 200);
}

#[tokio::test]
async fn check_reports_each_bad_entry_with_its_place() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        "upstreams:
  - {name: up, targets: [{address: '127.0.0.1:9'}]}
defaults:
  ip_rules: {}
routes:
  - {name: a, path_prefix: /a, upstream: up, ip_rules: {allow: []}}
  - {name: b, path_prefix: /b, upstream: up, ip_rules: {allow: [10.0.0.0/8, 'ten'], deny: ['::1', 1.2.3.4, '2001:db8::1/32', 10.0.0.1/8, 300.1.1.1]}}
  - {name: c, path_prefix: /c, upstream: up, ip_rules: true}
",
    );
    let out = Gateway::check(&yaml).await;
    assert_ne!(out.code, Some(0));
    for expected in [
        "defaults.ip_rules: list addresses in allow, deny or both",
        "routes[0].ip_rules: list addresses in allow, deny or both",
        "routes[1].ip_rules.allow[1]: \"ten\" is not an IP address or a CIDR network",
        "routes[1].ip_rules.deny[2]: \"2001:db8::1/32\" has host bits set: write 2001:db8::/32",
        "routes[1].ip_rules.deny[3]: \"10.0.0.1/8\" has host bits set: write 10.0.0.0/8",
        "routes[1].ip_rules.deny[4]: \"300.1.1.1\" is not an IP address",
        "routes[2].ip_rules: list addresses in allow, deny or both",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stderr
        );
    }
    let unknown = Gateway::check(&cfg.render(
        "upstreams:\n  - {name: up, targets: [{address: '127.0.0.1:9'}]}\nroutes:\n  \
         - {name: a, path_prefix: /a, upstream: up, ip_rules: {alow: [10.0.0.0/8]}}\n",
    ))
    .await;
    assert!(
        unknown.stderr.contains("unknown field `alow`"),
        "{}",
        unknown.stderr
    );
}
