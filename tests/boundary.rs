//! The auth boundary, tried as an attacker would: request-target and path tricks, malformed
//! hosts, forged headers. Each request is sent as raw bytes (HTTP clients normalise most of
//! these away) to the real binary, and the test checks both what the gateway answered and
//! what the upstream received.

mod support;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEPPER_ENV: &str = "TOLLGATE_TEST_PEPPER";

/// A raw answer: status and JSON body (the upstream's echo or the gateway's error).
struct Raw {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    /// Asserts the gateway's own error answer with `code`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.body);
        assert_eq!(self.body["error"], code, "{}\n{}", self.head, self.body);
        assert!(
            self.head.to_ascii_lowercase().contains("x-request-id:"),
            "{}",
            self.head
        );
    }

    /// The path the upstream received (the echo's `path`).
    fn upstream_path(&self) -> &str {
        assert_eq!(self.status, 200, "{}\n{}", self.head, self.body);
        self.body["path"].as_str().unwrap_or("<none>")
    }

    fn upstream_header(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }
}

/// Sends `head` (request line and headers, without the blank line) over a new connection,
/// adding `Connection: close`, and reads the whole answer.
async fn send_raw(gw: &Gateway, head: &[u8]) -> Raw {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", gw.config().proxy_port()))
        .await
        .unwrap();
    let mut request = head.to_vec();
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    conn.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_string(),
        body: serde_json::from_str(body.trim()).unwrap_or(Value::String(body.to_string())),
    }
}

async fn get(gw: &Gateway, target: &str, headers: &str) -> Raw {
    let mut head = format!("GET {target} HTTP/1.1");
    if !headers.is_empty() {
        head.push_str("\r\n");
        head.push_str(headers);
    }
    send_raw(gw, head.as_bytes()).await
}

/// `/` open, `/admin` protected (case-insensitively), `/api` open and stripped, `/legacy`
/// open and keeping `;` and escaped slashes.
async fn gateway() -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("up").await;
    let cfg = GatewayConfig::new().with_env(PEPPER_ENV, "boundary-test-pepper-0123456789");
    let yaml = cfg.render(&format!(
        "auth:\n  api_key:\n    pepper_env: {PEPPER_ENV}\n    query_param: api_key\n\
         upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
         routes:\n  - {{name: root, path_prefix: /, upstream: up}}\n  \
         - {{name: admin, path_prefix: /admin, upstream: up, auth: required, case_insensitive: true}}\n  \
         - {{name: api, path_prefix: /api, upstream: up, strip_prefix: true}}\n  \
         - {{name: legacy, path_prefix: /legacy, upstream: up, keep_in_path: [semicolon, encoded_slash]}}\n  \
         - {{name: overrides, path_prefix: /overrides, upstream: up, allow_override_headers: true}}\n  \
         - {{name: keyed, path_prefix: /keyed, upstream: up, forward_credential: true}}\n",
        up.address()
    ));
    (Gateway::start(cfg, &yaml).await, up)
}

#[tokio::test]
async fn request_target_and_path_tricks_never_reach_a_protected_route_anonymously() {
    let (gw, up) = gateway().await;
    let host = "Host: gw.test";

    // A target that is neither origin-form nor an http(s) URL.
    for target in [
        "x:/admin/users",
        "*",
        "ftp://gw.test/admin/users",
        "admin/users",
    ] {
        get(&gw, target, host)
            .await
            .assert_error(400, "invalid_request_target");
    }
    // Spellings of /admin that upstreams normalise: routed as /admin, so refused.
    for target in [
        "/admin/users",
        "/%61dmin/users",
        "//admin/users",
        "/Admin/users",
        "/ADMIN/users",
        "/api/../admin/users",
        "/api/%2e%2e/admin/users",
        "/./admin/users",
        "http://gw.test/admin/users",
    ] {
        get(&gw, target, host)
            .await
            .assert_error(401, "missing_credentials");
    }
    // Escapes and separators an upstream may decode into a way out: refused by default.
    for target in [
        "/admin;x/users",
        "/admin%2Fusers",
        "/admin%2fusers",
        "/admin%5Cusers",
        "/admin\\users",
        "/x%00",
        "/api/..%2fadmin",
        "/api/%2e%2e%2fadmin",
        "/api/.%2e%2fadmin",
        "/legacy/..;/admin",
        "/legacy/..%2Fadmin",
    ] {
        get(&gw, target, host)
            .await
            .assert_error(400, "invalid_path");
    }
    for target in ["/..", "/a/../../admin", "/bad%zz"] {
        get(&gw, target, host)
            .await
            .assert_error(400, "invalid_path");
    }
    // Not UTF-8 (Pingora's parser refuses it before the gateway sees it).
    let raw = send_raw(&gw, b"GET /caf\xe9 HTTP/1.1\r\nHost: gw.test").await;
    assert_eq!(raw.status, 400, "{}", raw.head);
    assert_eq!(up.hits(), 0, "the upstream received a refused request");
}

#[tokio::test]
async fn the_upstream_receives_exactly_the_canonical_path_that_was_routed() {
    let (gw, _up) = gateway().await;
    let host = "Host: gw.test";
    for (target, received) in [
        ("/%7Euser//a/./b?q=%2F", "/~user/a/b?q=%2F"),
        ("/a/b/../c/", "/a/c/"),
        ("/%c3%a9t%c3%a9", "/%C3%A9t%C3%A9"),
        ("http://gw.test/plain?x=1", "/plain?x=1"),
        // strip_prefix works on the canonical path.
        ("/api//v1/./users?x=1", "/v1/users?x=1"),
        ("/API/x", "/API/x"),
        // A route that opts in keeps `;` and escaped slashes.
        ("/legacy/a;b/c%2fd", "/legacy/a;b/c%2Fd"),
    ] {
        let raw = get(&gw, target, host).await;
        assert_eq!(raw.upstream_path(), received, "{target}");
    }
    let raw = get(&gw, "/api/x", host).await;
    assert_eq!(raw.upstream_header("x-forwarded-prefix"), Some("/api"));
}

#[tokio::test]
async fn malformed_hosts_are_refused_and_never_panic() {
    let (gw, up) = gateway().await;
    for host in ["[", "[::1", "a:80:80", "a:x", "a b", "a:99999", ".."] {
        get(&gw, "/", &format!("Host: {host}"))
            .await
            .assert_error(400, "invalid_host");
    }
    get(&gw, "/", "").await.assert_error(400, "missing_host");
    // Two Host headers: refused (Pingora refuses them while parsing).
    let two = get(&gw, "/", "Host: a.test\r\nHost: b.test").await;
    assert_eq!(two.status, 400, "{}", two.head);
    assert_eq!(up.hits(), 0);
    // Canonical hosts: lower-cased, one trailing dot removed.
    let raw = get(&gw, "/", "Host: GW.Test.:8080").await;
    assert_eq!(
        raw.upstream_header("x-forwarded-host"),
        Some("gw.test:8080")
    );
    assert!(
        !gw.logs().contains("panicked"),
        "a request panicked:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn forged_identity_forwarding_and_override_headers_are_stripped() {
    let (gw, _up) = gateway().await;
    let forged = "Host: gw.test\r\nx-consumer_id: admin\r\nX_Consumer_Id: admin\r\n\
                  x-consumer-id: admin\r\nx-consumer-plan: gold\r\nx_auth_method: api_key\r\n\
                  x-auth-scopes: admin\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
                  X-Forwarded-For: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n\
                  X-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\n\
                  X-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\n\
                  X-Original-URL: /admin\r\nX_Rewrite_URL: /admin";
    let raw = get(&gw, "/x", forged).await;
    let headers = raw.body["headers"].as_object().unwrap();
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|k| {
            let k = k.replace('_', "-");
            k.starts_with("x-consumer")
                || k == "x-auth-scopes"
                || (k.starts_with("x-auth") && k != "x-auth-method")
                || k.contains("override")
                || k == "x-original-url"
                || k == "x-rewrite-url"
                || k == "forwarded"
                || k == "x-forwarded-prefix"
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "forged headers reached the upstream: {leaked:?}"
    );
    assert_eq!(raw.upstream_header("x-auth-method"), Some("anonymous"));
    assert_eq!(raw.upstream_header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(raw.upstream_header("x-real-ip"), Some("127.0.0.1"));
    assert!(headers.get("x_forwarded_for").is_none());
    assert_eq!(
        raw.upstream_header("x-forwarded-port"),
        Some(gw.config().proxy_port().to_string().as_str())
    );
    // A route that allows overrides passes them on.
    let raw = get(&gw, "/overrides/x", forged).await;
    assert_eq!(
        raw.upstream_header("x-http-method-override"),
        Some("DELETE")
    );
    assert!(raw.upstream_header("x-consumer-id").is_none());
}

#[tokio::test]
async fn the_gateways_api_key_never_reaches_an_open_routes_upstream() {
    let (gw, _up) = gateway().await;
    let key = "Host: gw.test\r\nx-api-key: tg_secret\r\nX_Api_Key: tg_secret";
    let raw = get(&gw, "/x?api_key=tg_secret&keep=1", key).await;
    assert_eq!(raw.upstream_path(), "/x?keep=1");
    assert!(raw.upstream_header("x-api-key").is_none());
    assert!(raw.upstream_header("x_api_key").is_none());
    // A route with forward_credential passes them on (auth: none never checks them).
    let raw = get(&gw, "/keyed/x?api_key=tg_secret", key).await;
    assert_eq!(raw.upstream_path(), "/keyed/x?api_key=tg_secret");
    assert_eq!(raw.upstream_header("x-api-key"), Some("tg_secret"));
}

#[tokio::test]
async fn trusted_proxies_are_believed_for_one_configured_header_only() {
    let up = TestUpstream::start("up").await;
    let routes = format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n\
         routes:\n  - {{name: root, path_prefix: /, upstream: up}}\n",
        up.address()
    );
    // Trusting proxies without naming their header is refused.
    let cfg = GatewayConfig::new();
    let out =
        Gateway::check(&cfg.render(&format!("auth:\n  trusted_proxies: [127.0.0.1]\n{routes}")))
            .await;
    assert_ne!(out.code, Some(0));
    assert!(out.stdout.contains("client_ip_header") || out.stderr.contains("client_ip_header"));

    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "auth:\n  trusted_proxies: [127.0.0.1]\n  client_ip_header: forwarded\n{routes}"
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    // Behind a proxy that sets only Forwarded, a client's own X-Forwarded-For is not believed
    // (nor passed on as a chain the upstream would believe).
    let raw = get(
        &gw,
        "/x",
        "Host: gw.test\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=198.51.100.7",
    )
    .await;
    assert_eq!(raw.upstream_header("x-real-ip"), Some("198.51.100.7"));
    assert_eq!(
        raw.upstream_header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
}
