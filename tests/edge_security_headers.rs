//! `security_headers` (README "security_headers"), against the real binary over real
//! sockets, plain HTTP and TLS: the preset from `defaults:`, a route's own values and `false`,
//! the upstream's own headers kept, the gateway's own answers with their CSP, live reload,
//! and `tollgate check` refusals.

mod support;

use std::time::Duration;
use support::*;

const PRESET: [(&str, &str); 3] = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "DENY"),
];
const GATEWAY_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

fn assert_preset(a: &Answer) {
    for (name, value) in PRESET {
        assert_eq!(a.header_all(name), [value], "{name}: {:?}", a.headers);
    }
}

#[tokio::test]
async fn the_preset_over_http_and_tls_on_upstream_and_gateway_answers() {
    let certs = Certs::new();
    let cert = certs.leaf("api", &["api.test"]);
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new().with_tls(&cert);
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
         defaults:\n  security_headers: true\n\
         routes:\n  \
         - {{name: api, path_prefix: /api, upstream: up}}\n  \
         - name: own\n    path_prefix: /own\n    upstream: up\n    security_headers:\n      \
           frame_options: SAMEORIGIN\n      content_type_options: false\n      \
           hsts: {{max_age: 30d, include_subdomains: true, preload: false}}\n  \
         - {{name: off, path_prefix: /off, upstream: up, security_headers: false}}\n",
        up.address()
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    let get = |url: String| Answer::send(gw.http().get(url));

    // Plain HTTP: no HSTS (browsers ignore it there); no CSP on the upstream's answer.
    let plain = get(gw.url("/api")).await;
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_preset(&plain);
    assert_eq!(plain.header("strict-transport-security"), None);
    assert_eq!(plain.header("content-security-policy"), None);
    // TLS: HSTS with its defaults.
    let tls = get(gw.https_url("/api")).await;
    assert_eq!(tls.status, 200, "{}", tls.text);
    assert_preset(&tls);
    assert_eq!(
        tls.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    // The gateway's own 404 also gets the CSP meant for its JSON answers.
    for missing in [
        get(gw.url("/nowhere")).await,
        get(gw.https_url("/nowhere")).await,
    ] {
        missing.assert_error(404, "route_not_found");
        assert_preset(&missing);
        assert_eq!(missing.header("content-security-policy"), Some(GATEWAY_CSP));
    }
    // A header the upstream set itself is kept.
    let theirs = get(
        gw.url("/api?__header=x-frame-options:SAMEORIGIN&__header=referrer-policy:no-referrer")
    )
    .await;
    assert_eq!(theirs.header_all("x-frame-options"), ["SAMEORIGIN"]);
    assert_eq!(theirs.header_all("referrer-policy"), ["no-referrer"]);
    assert_eq!(theirs.header("x-content-type-options"), Some("nosniff"));

    // A route's own values, and a route with the default switched off.
    let own = get(gw.https_url("/own")).await;
    assert_eq!(own.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(own.header("x-content-type-options"), None);
    assert_eq!(
        own.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(
        own.header("strict-transport-security"),
        Some("max-age=2592000; includeSubDomains")
    );
    let off = get(gw.https_url("/off")).await;
    assert_eq!(off.status, 200, "{}", off.text);
    for name in [
        "x-content-type-options",
        "referrer-policy",
        "x-frame-options",
        "strict-transport-security",
    ] {
        assert_eq!(off.header(name), None, "{name}");
    }
}

#[tokio::test]
async fn editing_the_file_turns_security_headers_on_and_off_live() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let file = |defaults: &str| {
        format!(
            "{defaults}upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
             routes:\n  - {{name: api, path_prefix: /api, upstream: up}}\n",
            up.address()
        )
    };
    let header = cfg.header();
    let gw = Gateway::start(cfg, &format!("{header}{}", file(""))).await;
    let before = Answer::send(gw.http().get(gw.url("/api"))).await;
    assert_eq!(before.header("x-content-type-options"), None);

    gw.rewrite_config(&format!(
        "{header}{}",
        file("defaults:\n  security_headers: {referrer_policy: no-referrer}\n")
    ));
    assert!(
        gw.wait_for_log("generation 2", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let on = Answer::send(gw.http().get(gw.url("/api"))).await;
    assert_eq!(on.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(on.header("referrer-policy"), Some("no-referrer"));

    gw.rewrite_config(&format!("{header}{}", file("")));
    assert!(
        gw.wait_for_log("generation 3", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let off = Answer::send(gw.http().get(gw.url("/api"))).await;
    assert_eq!(off.header("x-content-type-options"), None);
    assert_eq!(off.header("referrer-policy"), None);
}

#[tokio::test]
async fn check_refuses_bad_security_header_values_with_their_places() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        "defaults:\n  security_headers: {frame_options: ALLOW-FROM https://a.test}\n\
         upstreams:\n  - {name: up, targets: [{address: \"127.0.0.1:1\"}]}\n\
         routes:\n  - name: api\n    path_prefix: /api\n    upstream: up\n    security_headers:\n      \
         referrer_policy: sometimes\n      content_type_options: sniff\n      \
         content_security_policy: ''\n      hsts: {max_age: 1d, preload: true}\n  \
         - name: none\n    path_prefix: /none\n    upstream: up\n    security_headers:\n      \
         {hsts: false, content_type_options: false, referrer_policy: false, frame_options: false, \
         content_security_policy: false}\n  \
         - {name: age, path_prefix: /age, upstream: up, security_headers: {hsts: {max_age: a while}}}\n",
    );
    let out = Gateway::check(&yaml).await;
    assert_ne!(out.code, Some(0));
    let text = format!("{}{}", out.stdout, out.stderr);
    for place in [
        "defaults.security_headers.frame_options: \"ALLOW-FROM https://a.test\": DENY or SAMEORIGIN",
        "routes[0].security_headers.referrer_policy: \"sometimes\": unknown policy",
        "routes[0].security_headers.content_type_options: \"sniff\": its one value is nosniff",
        "routes[0].security_headers.content_security_policy: \"\": an empty policy",
        "routes[0].security_headers.hsts.preload: preload lists need include_subdomains: true \
         and a max_age of at least 365d",
        "routes[1].security_headers: every header is switched off",
        "routes[2].security_headers.hsts.max_age: \"a while\" is not a duration",
    ] {
        assert!(text.contains(place), "missing {place:?} in:\n{text}");
    }
}
