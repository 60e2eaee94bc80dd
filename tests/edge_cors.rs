//! `cors` (README "cors"), against the real binary over real sockets: preflights answered by
//! the gateway before authentication and rate limiting, CORS headers on upstream answers and
//! on the gateway's own, origins exact, by subdomain and `*`, server-wide defaults a route
//! overrides or switches off, live reload, and `tollgate check` refusals.

mod support;

use reqwest::Method;
use std::time::Duration;
use support::*;

const PEPPER_ENV: &str = "TG_CORS_TEST_PEPPER";
const PEPPER: &str = "pepper-for-the-cors-tests";
const APP: &str = "https://app.example.com";

/// `method path` with `headers`, read whole.
async fn call(gw: &Gateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw.http().request(method, gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Answer::send(req).await
}

/// A browser's preflight from `origin` for `method` with `headers`.
async fn preflight(gw: &Gateway, path: &str, origin: &str, method: &str, headers: &str) -> Answer {
    let mut asked = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        asked.push(("access-control-request-headers", headers));
    }
    call(gw, Method::OPTIONS, path, &asked).await
}

/// Whether the answer's `Vary` fields name `name`.
fn varies_on(a: &Answer, name: &str) -> bool {
    a.header_all("vary")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
}

async fn start(up: &TestUpstream, rest: &str) -> Gateway {
    let cfg = GatewayConfig::new().with_env(PEPPER_ENV, PEPPER);
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}",
        up.address()
    ));
    Gateway::start(cfg, &yaml).await
}

#[tokio::test]
async fn a_preflight_needs_no_credential_and_consumes_no_quota() {
    let up = TestUpstream::start("up").await;
    let key = tollgate::auth::api_key::generate(&ring::rand::SystemRandom::new()).unwrap();
    let hash = tollgate::auth::api_key::KeyHasher::new(PEPPER.as_bytes())
        .hash(&key.secret)
        .to_hex();
    let gw = start(
        &up,
        &format!(
            "auth:\n  api_key: {{pepper_env: {PEPPER_ENV}}}\n\
             consumers:\n  - {{id: alice, keys: [{{id: alice-key, hash: {hash}}}]}}\n\
             routes:\n  - name: api\n    path_prefix: /api\n    upstream: up\n    \
             methods: [GET, PUT, DELETE]\n    auth: required\n    \
             rate_limit: {{global: {{limits: [{{requests: 1, per: 1m}}]}}}}\n    \
             cors:\n      allow_origins: ['{APP}']\n      allow_methods: [GET, PUT]\n      \
             allow_credentials: true\n      max_age: 10m\n"
        ),
    )
    .await;

    // The route lists no OPTIONS: the preflight finds it by the method it asks about.
    for _ in 0..3 {
        let a = preflight(&gw, "/api/orders", APP, "PUT", "x-api-key, content-type").await;
        assert_eq!(a.status, 204, "{}", a.text);
        assert_eq!(a.header("access-control-allow-origin"), Some(APP));
        assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(a.header("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            a.header("access-control-allow-headers"),
            Some("Authorization, Content-Type, X-Api-Key, X-Request-Id")
        );
        assert_eq!(a.header("access-control-max-age"), Some("600"));
        assert!(varies_on(&a, "origin"));
        assert_eq!(a.header("content-length"), None, "RFC 9110 §8.6");
        assert!(a.header("x-ratelimit-remaining").is_none());
    }
    // Refused preflights say which part is not allowed, and carry no CORS grant.
    let origin = preflight(&gw, "/api/orders", "https://evil.example", "PUT", "").await;
    origin.assert_error(403, "cors_rejected");
    assert!(
        origin.text.contains("https://evil.example"),
        "{}",
        origin.text
    );
    assert_eq!(origin.header("access-control-allow-origin"), None);
    let method = preflight(&gw, "/api/orders", APP, "DELETE", "").await;
    assert!(method.assert_error(403, "cors_rejected")["message"]
        .as_str()
        .unwrap()
        .contains("DELETE"));
    let header = preflight(&gw, "/api/orders", APP, "GET", "x-secret").await;
    assert!(header.assert_error(403, "cors_rejected")["message"]
        .as_str()
        .unwrap()
        .contains("x-secret"));
    assert_eq!(up.hits(), 0, "the upstream saw a preflight");

    // The gateway's own 401 carries the CORS headers, so the page can read why.
    let unauthorized = call(&gw, Method::GET, "/api/orders", &[("origin", APP)]).await;
    unauthorized.assert_error(401, "missing_credentials");
    assert_eq!(
        unauthorized.header("access-control-allow-origin"),
        Some(APP)
    );
    assert_eq!(
        unauthorized.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(varies_on(&unauthorized, "origin"));

    // The quota is untouched: the first real request passes, with the headers on the
    // upstream's 200; then the limit answers 429, with them too.
    let with_key = [("origin", APP), ("x-api-key", key.secret.as_str())];
    let ok = call(&gw, Method::GET, "/api/orders", &with_key).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    let exposed = ok.header("access-control-expose-headers").unwrap();
    for name in [
        "x-request-id",
        "ratelimit",
        "x-ratelimit-remaining",
        "retry-after",
    ] {
        assert!(
            exposed.split(", ").any(|e| e == name),
            "{name} not in {exposed}"
        );
    }
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(up.hits(), 1);
    // (A minute boundary between two requests lets one more through.)
    let mut limited = None;
    for _ in 0..3 {
        let a = call(&gw, Method::GET, "/api/orders", &with_key).await;
        if a.status == 429 {
            limited = Some(a);
            break;
        }
    }
    let limited = limited.expect("the limit never refused");
    limited.assert_error(429, "rate_limited");
    assert_eq!(limited.header("access-control-allow-origin"), Some(APP));
    assert!(limited.header("access-control-expose-headers").is_some());
}

#[tokio::test]
async fn origins_by_subdomain_or_any_and_routes_without_cors() {
    let up = TestUpstream::start("up").await;
    let gw = start(
        &up,
        "routes:\n  \
         - {name: sub, path_prefix: /sub, upstream: up, cors: {allow_origins: ['https://*.example.com']}}\n  \
         - {name: any, path_prefix: /any, upstream: up, cors: {allow_origins: '*', allow_headers: '*'}}\n  \
         - {name: plain, path_prefix: /plain, upstream: up, methods: [GET]}\n  \
         - {name: options, path_prefix: /options, upstream: up, methods: [GET, OPTIONS]}\n",
    )
    .await;

    // Any subdomain, at any depth; not the domain itself.
    let a = preflight(&gw, "/sub", "https://a.example.com", "POST", "").await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://a.example.com")
    );
    assert_eq!(a.header("access-control-allow-credentials"), None);
    preflight(&gw, "/sub", "https://example.com", "POST", "")
        .await
        .assert_error(403, "cors_rejected");
    // The upstream's own CORS headers give way to the gateway's; its Vary is kept.
    let theirs = "/sub/x?__header=access-control-allow-origin:*\
                  &__header=access-control-allow-methods:TRACE&__header=vary:accept-encoding";
    let origin = "https://b.c.example.com";
    let a = call(&gw, Method::GET, theirs, &[("origin", origin)]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header_all("access-control-allow-origin"), [origin]);
    assert_eq!(a.header("access-control-allow-methods"), None);
    assert!(
        varies_on(&a, "accept-encoding") && varies_on(&a, "origin"),
        "{:?}",
        a.headers
    );
    // A disallowed origin gets nothing from the upstream either, and the answer still varies.
    let a = call(
        &gw,
        Method::GET,
        theirs,
        &[("origin", "https://example.org")],
    )
    .await;
    assert_eq!(a.header("access-control-allow-origin"), None);
    assert!(varies_on(&a, "origin"));

    // `*`: every origin (or none) gets `*`, the same for all, so nothing varies on Origin;
    // any asked-for header is allowed by echoing the list.
    let a = preflight(
        &gw,
        "/any",
        "https://who.test",
        "PATCH",
        "authorization, x-custom",
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some("authorization, x-custom")
    );
    for headers in [&[("origin", "https://who.test")][..], &[]] {
        let a = call(&gw, Method::GET, "/any/x", headers).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.header("access-control-allow-origin"), Some("*"));
        assert!(!varies_on(&a, "origin"));
    }

    // A route without CORS behaves as before: a preflight is an OPTIONS request.
    let hits = up.hits();
    let a = preflight(&gw, "/plain", "https://a.example.com", "GET", "").await;
    a.assert_error(405, "method_not_allowed");
    assert_eq!(a.header("access-control-allow-origin"), None);
    let a = preflight(&gw, "/options", "https://a.example.com", "GET", "").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["method"], "OPTIONS");
    assert_eq!(up.hits(), hits + 1);
    let a = call(
        &gw,
        Method::GET,
        "/plain",
        &[("origin", "https://a.example.com")],
    )
    .await;
    assert_eq!(a.header("access-control-allow-origin"), None);
    assert!(!varies_on(&a, "origin"));
}

#[tokio::test]
async fn a_server_wide_default_is_overridden_or_switched_off_per_route() {
    let up = TestUpstream::start("up").await;
    let gw = start(
        &up,
        &format!(
            "defaults:\n  cors: {{allow_origins: ['{APP}'], expose_headers: [X-Upstream]}}\n\
             routes:\n  \
             - {{name: inherits, path_prefix: /inherits, upstream: up}}\n  \
             - {{name: own, path_prefix: /own, upstream: up, cors: {{allow_origins: ['https://other.test']}}}}\n  \
             - {{name: off, path_prefix: /off, upstream: up, cors: false}}\n"
        ),
    )
    .await;
    let from = |origin| [("origin", origin)];

    let a = call(&gw, Method::GET, "/inherits", &from(APP)).await;
    assert_eq!(a.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        a.header("access-control-expose-headers"),
        Some("X-Upstream")
    );
    // The route's own section replaces the default one as a whole.
    let a = call(&gw, Method::GET, "/own", &from(APP)).await;
    assert_eq!(a.header("access-control-allow-origin"), None);
    let a = call(&gw, Method::GET, "/own", &from("https://other.test")).await;
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://other.test")
    );
    assert!(a
        .header("access-control-expose-headers")
        .unwrap()
        .contains("x-request-id"));
    let a = call(&gw, Method::GET, "/off", &from(APP)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), None);
    assert!(!varies_on(&a, "origin"));
    // An answer made before any route matched (404) follows the default.
    let a = call(&gw, Method::GET, "/nowhere", &from(APP)).await;
    a.assert_error(404, "route_not_found");
    assert_eq!(a.header("access-control-allow-origin"), Some(APP));
    // A preflight to a route with CORS switched off is proxied as an OPTIONS request.
    let a = preflight(&gw, "/off", APP, "GET", "").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["method"], "OPTIONS");
}

#[tokio::test]
async fn editing_the_file_turns_cors_on_and_off_live() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let routes = |cors: &str| {
        format!(
            "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
             routes:\n  - {{name: api, path_prefix: /api, upstream: up, methods: [GET]{cors}}}\n",
            up.address()
        )
    };
    let header = cfg.header();
    let gw = Gateway::start(cfg, &format!("{header}{}", routes(""))).await;
    let before = preflight(&gw, "/api", APP, "GET", "").await;
    before.assert_error(405, "method_not_allowed");

    gw.rewrite_config(&format!(
        "{header}{}",
        routes(&format!(", cors: {{allow_origins: ['{APP}']}}"))
    ));
    assert!(
        gw.wait_for_log("generation 2", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let on = preflight(&gw, "/api", APP, "GET", "").await;
    assert_eq!(on.status, 204, "{}", on.text);
    let get = call(&gw, Method::GET, "/api", &[("origin", APP)]).await;
    assert_eq!(get.header("access-control-allow-origin"), Some(APP));

    gw.rewrite_config(&format!("{header}{}", routes(", cors: false")));
    assert!(
        gw.wait_for_log("generation 3", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    preflight(&gw, "/api", APP, "GET", "")
        .await
        .assert_error(405, "method_not_allowed");
    let get = call(&gw, Method::GET, "/api", &[("origin", APP)]).await;
    assert_eq!(get.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn check_refuses_bad_cors_sections_with_their_places() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        "defaults:\n  cors: {allow_origins: '*', allow_credentials: true}\n\
         upstreams:\n  - {name: up, targets: [{address: \"127.0.0.1:1\"}]}\n\
         routes:\n  - name: api\n    path_prefix: /api\n    upstream: up\n    cors:\n      \
         allow_origins: ['https://app.test/', 'app.test', 'https://*.ok.test']\n      \
         allow_methods: ['GET', 'NOT A METHOD']\n      allow_headers: ['X Bad']\n      \
         expose_headers: ['x:y']\n      max_age: soon\n  \
         - {name: empty, path_prefix: /empty, upstream: up, cors: true}\n",
    );
    let out = Gateway::check(&yaml).await;
    assert_ne!(out.code, Some(0));
    let text = format!("{}{}", out.stdout, out.stderr);
    for place in [
        "defaults.cors.allow_origins: \"*\" cannot go with allow_credentials",
        "routes[0].cors.allow_origins[0]: \"https://app.test/\" is not an origin",
        "routes[0].cors.allow_origins[1]: \"app.test\" is not an origin",
        "routes[0].cors.allow_methods[1]: \"NOT A METHOD\" is not a method name",
        "routes[0].cors.allow_headers[0]: \"X Bad\" is not a header name",
        "routes[0].cors.expose_headers[0]: \"x:y\" is not a header name",
        "routes[0].cors.max_age: \"soon\" is not a duration",
        "routes[1].cors: set allow_origins",
    ] {
        assert!(text.contains(place), "missing {place:?} in:\n{text}");
    }
    assert!(!text.contains("allow_origins[2]"), "{text}");
}
