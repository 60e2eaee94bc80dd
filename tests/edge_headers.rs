//! `headers` (README "headers"), against the real binary over real sockets: request rules as
//! the upstream's echo shows them, variables filled per request, response rules on upstream
//! answers and the gateway's own, server-wide defaults a route replaces or switches off, live
//! reload, and `tollgate check` refusals.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

const PEPPER_ENV: &str = "TG_HEADERS_TEST_PEPPER";
const PEPPER: &str = "pepper-for-the-header-tests";

/// GET `path` with `headers`, read whole.
async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw.http().get(gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Answer::send(req).await
}

/// The headers the upstream received, from its echo.
fn received(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{}", a.text);
    a.json()["headers"].clone()
}

#[tokio::test]
async fn rules_change_both_sides_with_variables_and_defaults_apply_where_not_replaced() {
    let up = TestUpstream::start("up").await;
    let key = tollgate::auth::api_key::generate(&ring::rand::SystemRandom::new()).unwrap();
    let hash = tollgate::auth::api_key::KeyHasher::new(PEPPER.as_bytes())
        .hash(&key.secret)
        .to_hex();
    let cfg = GatewayConfig::new().with_env(PEPPER_ENV, PEPPER);
    let yaml = cfg.render(&format!(
        "auth:\n  api_key: {{pepper_env: {PEPPER_ENV}}}\n\
         consumers:\n  - {{id: alice, keys: [{{id: alice-key, hash: {hash}}}]}}\n\
         upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
         defaults:\n  headers:\n    request: {{set: {{X-From-Default: 'yes'}}}}\n    \
         response: {{set: {{X-Edge: 'route=${{route}}'}}}}\n\
         routes:\n  \
         - name: api\n    path_prefix: /api\n    upstream: up\n    auth: optional\n    headers:\n      \
           request:\n        set: {{X-Caller: '${{consumer_id}}', X-Trace: '${{request_id}}@${{route}}', X-Price: '$$5'}}\n        \
           add: {{X-Tag: gateway}}\n        remove: [Cookie]\n      \
           response:\n        set: {{X-Served-By: '${{route}}', X-Client: '${{client_ip}}'}}\n        \
           add: {{Cache-Control: private}}\n        remove: [X-Upstream]\n  \
         - {{name: closed, path_prefix: /closed, upstream: up, auth: required}}\n  \
         - {{name: open, path_prefix: /open, upstream: up}}\n  \
         - {{name: off, path_prefix: /off, upstream: up, headers: false}}\n",
        up.address()
    ));
    let gw = Gateway::start(cfg, &yaml).await;

    // With an API key: the consumer id, the request id and the route filled in.
    let a = get(
        &gw,
        "/api/x",
        &[
            ("x-api-key", &key.secret),
            ("cookie", "session=1"),
            ("x-tag", "client"),
            ("x-request-id", "rid-headers-1"),
        ],
    )
    .await;
    let seen = received(&a);
    assert_eq!(seen["x-caller"], "alice", "{seen}");
    assert_eq!(seen["x-trace"], "rid-headers-1@api", "{seen}");
    assert_eq!(seen["x-price"], "$5", "{seen}");
    assert_eq!(seen["x-tag"], "client, gateway", "{seen}");
    assert!(seen.get("cookie").is_none(), "{seen}");
    // The route's own section replaces the default one.
    assert!(seen.get("x-from-default").is_none(), "{seen}");
    assert_eq!(a.header("x-served-by"), Some("api"));
    assert_eq!(a.header("x-client"), Some("127.0.0.1"));
    assert_eq!(a.header("x-upstream"), None);
    assert_eq!(a.header("x-edge"), None);
    assert_eq!(a.header_all("cache-control"), ["private"]);
    // Anonymous: the consumer id is empty.
    let anonymous = received(&get(&gw, "/api/x", &[]).await);
    assert_eq!(anonymous["x-caller"], "", "{anonymous}");

    // The default applies where the route says nothing: upstream answers, the gateway's 401
    // and, before any route matched, its 404.
    let open = get(&gw, "/open", &[]).await;
    assert_eq!(received(&open)["x-from-default"], "yes");
    assert_eq!(open.header("x-edge"), Some("route=open"));
    let unauthorized = get(&gw, "/closed", &[]).await;
    unauthorized.assert_error(401, "missing_credentials");
    assert_eq!(unauthorized.header("x-edge"), Some("route=closed"));
    let missing = get(&gw, "/nowhere", &[]).await;
    missing.assert_error(404, "route_not_found");
    assert_eq!(missing.header("x-edge"), Some("route="));
    // Switched off on one route.
    let off = get(&gw, "/off", &[]).await;
    assert!(received(&off).get("x-from-default").is_none());
    assert_eq!(off.header("x-edge"), None);
    assert_eq!(off.header("x-upstream"), Some("up"));
}

#[tokio::test]
async fn the_gateways_own_answers_get_the_response_rules() {
    // Nothing listens on the upstream's port: the gateway answers 502 itself.
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: gone, targets: [{{address: \"127.0.0.1:{}\"}}]}}\n\
         routes:\n  - name: api\n    path_prefix: /api\n    upstream: gone\n    \
         headers: {{response: {{set: {{Cache-Control: 'max-age=5'}}, add: {{X-Note: '${{request_id}}'}}}}}}\n",
        free_port()
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    let failed = get(&gw, "/api", &[]).await;
    failed.assert_error(502, "bad_gateway");
    // The rule replaces the gateway's own `no-store`.
    assert_eq!(failed.header_all("cache-control"), ["max-age=5"]);
    assert_eq!(failed.header("x-note"), failed.header("x-request-id"));
}

#[tokio::test]
async fn editing_the_file_turns_header_rules_on_and_off_live() {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new();
    let routes = |headers: &str| {
        format!(
            "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
             routes:\n  - {{name: api, path_prefix: /api, upstream: up{headers}}}\n",
            up.address()
        )
    };
    let header = cfg.header();
    let gw = Gateway::start(cfg, &format!("{header}{}", routes(""))).await;
    let before = get(&gw, "/api", &[]).await;
    assert!(received(&before).get("x-live").is_none());

    let rules = ", headers: {request: {set: {X-Live: on}}, response: {set: {X-Live: on}}}";
    gw.rewrite_config(&format!("{header}{}", routes(rules)));
    assert!(
        gw.wait_for_log("generation 2", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let on = get(&gw, "/api", &[]).await;
    assert_eq!(received(&on)["x-live"], "on");
    assert_eq!(on.header("x-live"), Some("on"));

    gw.rewrite_config(&format!("{header}{}", routes(", headers: false")));
    assert!(
        gw.wait_for_log("generation 3", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let off = get(&gw, "/api", &[]).await;
    assert!(received(&off).get("x-live").is_none());
    assert_eq!(off.header("x-live"), None);
}

#[tokio::test]
async fn check_refuses_rules_on_headers_the_gateway_owns() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        "auth:\n  identity_headers: {consumer_id: X-Who}\n\
         defaults:\n  headers: {request: {remove: [x_who]}}\n\
         upstreams:\n  - {name: up, targets: [{address: \"127.0.0.1:1\"}]}\n\
         routes:\n  - name: api\n    path_prefix: /api\n    upstream: up\n    headers:\n      \
         request:\n        set: {X-Forwarded-Host: evil, Host: other, X-A: '${who}'}\n        \
         add: {X-Request-Id: mine, X-B: 'costs $5'}\n        remove: [Transfer-Encoding]\n      \
         response:\n        set: {Content-Length: '0', X-Request-Id: fine}\n  \
         - {name: empty, path_prefix: /empty, upstream: up, headers: true}\n  \
         - {name: who, path_prefix: /who, upstream: up, headers: {request: {set: {X-Auth-Method: none}}}}\n",
    );
    let out = Gateway::check(&yaml).await;
    assert_ne!(out.code, Some(0));
    let text = format!("{}{}", out.stdout, out.stderr);
    for place in [
        "defaults.headers.request.remove[0]: x_who cannot be changed here: it is the identity \
         header auth.identity_headers.consumer_id",
        "routes[0].headers.request.set.X-Forwarded-Host: x-forwarded-host cannot be changed here",
        "routes[0].headers.request.set.Host: host cannot be changed here",
        "routes[2].headers.request.set.x-auth-method: x-auth-method cannot be changed here: it is \
         the identity header auth.identity_headers.auth_method",
        "routes[0].headers.request.set.X-A: unknown variable ${who}",
        "routes[0].headers.request.add.X-Request-Id: x-request-id cannot be changed here",
        "routes[0].headers.request.add.X-B: \"costs $5\": `$` starts a variable",
        "routes[0].headers.request.remove[0]: transfer-encoding cannot be changed here",
        "routes[0].headers.response.set.Content-Length: content-length cannot be changed here",
        "routes[1].headers: set request or response rules",
    ] {
        assert!(text.contains(place), "missing {place:?} in:\n{text}");
    }
    assert!(!text.contains("response.set.X-Request-Id"), "{text}");
}
