//! The account API (README "Account API") through the real gateway, on a real PostgreSQL
//! and a real Redis: register, login, refresh rotation and reuse detection, logout that
//! blocks the access token on every instance, the caller's own keys and usage, login
//! throttling, and disabled accounts.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

const PEPPER: &str = "pepper-for-the-account-api-tests";
const SECRET: &str = "account-signing-secret-for-the-tests-0123456789";
const ADMIN_TOKEN: &str = "account-tests-admin-token-4d2b8f6a0e9c7d5b3a1f8e6c4d2b0a9f7e5c3d1b";

/// One gateway instance: the proxy (with `/account` routed to its own admin listener and
/// `/api` to a test upstream), and its admin listener.
struct Instance {
    gw: Gateway,
    admin_port: u16,
}

/// Shared servers of a test.
struct Stack {
    pg: Postgres,
    redis: RedisServer,
    upstream: TestUpstream,
}

impl Stack {
    async fn start() -> Stack {
        let (pg, redis, upstream) = tokio::join!(
            Postgres::start(),
            RedisServer::start(),
            TestUpstream::start("api")
        );
        Stack {
            pg,
            redis,
            upstream,
        }
    }

    /// A gateway instance; `throttle` is the `login_throttle` section.
    async fn instance_with(&self, throttle: &str) -> Instance {
        let admin_port = free_port();
        let cfg = GatewayConfig::new()
            .with_env("TG_ACCOUNT_PEPPER", PEPPER)
            .with_env("TG_ACCOUNT_SECRET", SECRET)
            .with_env("TOLLGATE_ADMIN_TOKENS", ADMIN_TOKEN);
        let yaml = cfg.render(&format!(
            "database: {{url: \"{pg}\", usage_flush_interval: 300ms}}
admin: {{address: \"127.0.0.1:{admin_port}\"}}
account:
  issuer: tollgate-accounts
  signing_secret_env: TG_ACCOUNT_SECRET
  access_token_ttl: 5m
  default_plan: starter
  login_throttle: {throttle}
auth: {{api_key: {{pepper_env: TG_ACCOUNT_PEPPER}}}}
rate_limit: {{redis: {{urls: [\"{redis}\"]}}}}
upstreams:
  - {{name: api, targets: [{{address: \"{upstream}\"}}]}}
  - {{name: account, targets: [{{address: \"127.0.0.1:{admin_port}\"}}]}}
routes:
  - {{name: account, path_prefix: /account, upstream: account, auth: optional, forward_credential: true}}
  - {{name: api, path_prefix: /api, upstream: api, auth: required}}
",
            pg = self.pg.url(),
            redis = self.redis.url(),
            upstream = self.upstream.address(),
        ));
        let gw = Gateway::start(cfg, &yaml).await;
        wait_for_port(admin_port, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("admin port: {e}\n{}", gw.logs()));
        let instance = Instance { gw, admin_port };
        instance.ensure_plan().await;
        instance
    }

    async fn instance(&self) -> Instance {
        self.instance_with(
            "{per_account: {requests: 50, per: 1m}, per_ip: {requests: 500, per: 1m}}",
        )
        .await
    }
}

impl Instance {
    /// Sends a request to the proxy (`/account/...`, `/api/...`) or, with `direct`, to
    /// the admin listener.
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
        direct: bool,
    ) -> Answer {
        let url = if direct {
            format!("http://127.0.0.1:{}{path}", self.admin_port)
        } else {
            self.gw.url(path)
        };
        let mut req = self.gw.http().request(method.clone(), url);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        Answer::read(resp).await
    }

    /// Through the proxy.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.send(method, path, bearer, body, &[], false).await
    }

    /// The operator API, with the admin token.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.send(method, path, Some(ADMIN_TOKEN), body, &[], true)
            .await
    }

    /// The plan new accounts are put on (created once per database).
    async fn ensure_plan(&self) {
        let a = self
            .admin(
                Method::POST,
                "/admin/plans",
                Some(json!({"name": "starter", "limits": [{"requests": 1000, "per_seconds": 60}]})),
            )
            .await;
        assert!(a.status == 201 || a.status == 409, "{}", a.text);
    }

    async fn register(&self, email: &str, password: &str) -> Answer {
        self.call(
            Method::POST,
            "/account/register",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    async fn login(&self, email: &str, password: &str) -> Answer {
        self.call(
            Method::POST,
            "/account/login",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    async fn refresh(&self, token: &str) -> Answer {
        self.call(
            Method::POST,
            "/account/refresh",
            None,
            Some(json!({"refresh_token": token})),
        )
        .await
    }

    /// Registers and logs in; returns (account id, access token, refresh token).
    async fn signed_up(&self, email: &str) -> (String, String, String) {
        let a = self.register(email, "a long enough password").await;
        assert_eq!(a.status, 201, "{}", a.text);
        let id = a.json()["id"].as_str().unwrap().to_string();
        let a = self.login(email, "a long enough password").await;
        assert_eq!(a.status, 200, "{}", a.text);
        let t = a.json();
        (
            id,
            t["access_token"].as_str().unwrap().to_string(),
            t["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    /// The status of `GET /api/x` with a bearer token.
    async fn api_with_token(&self, token: &str) -> u16 {
        self.call(Method::GET, "/api/x", Some(token), None)
            .await
            .status
    }

    /// The status of `GET /api/x` with an API key.
    async fn api_with_key(&self, key: &str) -> u16 {
        self.send(
            Method::GET,
            "/api/x",
            None,
            None,
            &[("x-api-key", key)],
            false,
        )
        .await
        .status
    }
}

/// Polls `f` until it returns `want` or `within` passes; returns how long it took.
async fn eventually<F, Fut>(within: Duration, want: u16, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_use_the_api_through_the_proxy() {
    let stack = Stack::start().await;
    let one = stack.instance().await;

    // Registration: validated field by field, addresses are case-insensitive and unique.
    let a = one
        .register("Ann@Example.com", "correct horse battery")
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let account = a.json();
    let id = account["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("usr_"), "{account}");
    assert_eq!(account["email"], "ann@example.com");
    assert_eq!(account["plan"], "starter");
    assert_eq!(account["status"], "active");
    assert!(!a.text.contains("correct horse"));
    // Through the proxy too, the error's request id is the one in the header: the account
    // API takes the gateway's id.
    one.register("ann@example.COM", "another password!")
        .await
        .assert_error(409, "conflict");
    let bad = one.register("not-an-address", "short").await;
    let body = bad.assert_error(400, "invalid_request");
    assert!(body["fields"]["email"].is_string(), "{body}");
    assert!(body["fields"]["password"].is_string(), "{body}");
    one.register("ann2@example.com", "ann2@example.com")
        .await
        .assert_error(400, "invalid_request");
    let a = one
        .call(
            Method::POST,
            "/account/register",
            None,
            Some(json!({"email": "x@y.z"})),
        )
        .await;
    a.assert_error(400, "invalid_request");
    let a = one
        .send(
            Method::POST,
            "/account/register",
            None,
            None,
            &[("content-type", "text/plain")],
            false,
        )
        .await;
    a.assert_error(415, "unsupported_media_type");

    // The password is stored as an argon2id hash, never in clear.
    let stored = stack
        .pg
        .psql("SELECT password_hash FROM users WHERE email = 'ann@example.com'")
        .await;
    assert!(stored.contains("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));

    // Login: a wrong password and an unknown address are the same 401.
    one.login("ann@example.com", "wrong password!!")
        .await
        .assert_error(401, "invalid_credentials");
    one.login("nobody@example.com", "correct horse battery")
        .await
        .assert_error(401, "invalid_credentials");
    // An oversized password is refused without hashing it.
    one.login("ann@example.com", &"x".repeat(100_000))
        .await
        .assert_error(401, "invalid_credentials");
    let a = one.login("ANN@example.com", "correct horse battery").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let tokens = a.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    assert!(tokens["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("tgr_"));
    // Only the hash of the refresh token is stored.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let rows = stack
        .pg
        .psql("SELECT encode(token_hash, 'hex') FROM refresh_tokens")
        .await;
    assert!(
        !rows.contains(refresh) && !rows.contains(&refresh[4..]),
        "{rows}"
    );

    // The access token verifies at the proxy, which names the account upstream.
    let a = one
        .call(Method::GET, "/api/hello", Some(&access), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let seen = a.json();
    assert_eq!(seen["headers"]["x-consumer-id"], id.as_str(), "{seen}");
    assert_eq!(seen["headers"]["x-consumer-plan"], "starter", "{seen}");
    assert_eq!(seen["headers"]["x-auth-method"], "jwt", "{seen}");

    // /account/me, through the proxy and directly.
    let a = one
        .call(Method::GET, "/account/me", Some(&access), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["email"], "ann@example.com");
    assert_eq!(a.json()["id"], id.as_str());
    let a = one
        .send(Method::GET, "/account/me", None, None, &[], true)
        .await;
    a.assert_error(401, "missing_token");
    assert!(a.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("missing_token"));
    // A garbage token is refused by the proxy before it reaches the account API, and by
    // the account API itself when called directly.
    one.call(Method::GET, "/account/me", Some("not.a.jwt"), None)
        .await
        .assert_error(401, "invalid_token");
    one.send(
        Method::GET,
        "/account/me",
        Some("not.a.jwt"),
        None,
        &[],
        true,
    )
    .await
    .assert_error(401, "invalid_token");
    // An admin token is not an account token.
    one.send(
        Method::GET,
        "/account/me",
        Some(ADMIN_TOKEN),
        None,
        &[],
        true,
    )
    .await
    .assert_error(401, "invalid_token");

    // The OpenAPI document describes the account endpoints.
    let doc = one
        .send(Method::GET, "/openapi.json", None, None, &[], true)
        .await
        .json();
    for path in [
        "/account/register",
        "/account/login",
        "/account/refresh",
        "/account/logout",
        "/account/me",
        "/account/keys",
        "/account/keys/{key_id}/revoke",
        "/account/usage",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["paths"]["/account/login"]["post"]["security"].is_null());
    assert!(doc["paths"]["/account/me"]["get"]["security"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_keys_and_usage() {
    let stack = Stack::start().await;
    let one = stack.instance().await;
    let (id, access, _) = one.signed_up("kim@example.com").await;
    let (_, other_access, _) = one.signed_up("lee@example.com").await;

    // Create: the secret is in this answer only.
    let a = one
        .call(
            Method::POST,
            "/account/keys",
            Some(&access),
            Some(json!({"name": "laptop"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let created = a.json();
    let secret = created["secret"].as_str().unwrap().to_string();
    let key_id = created["key"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["key"]["consumer_id"], id.as_str());
    assert_eq!(created["key"]["name"], "laptop");
    one.call(
        Method::POST,
        "/account/keys",
        Some(&access),
        Some(json!({"name": "x", "scopes": ["admin"]})),
    )
    .await
    .assert_error(400, "invalid_request");
    one.call(
        Method::POST,
        "/account/keys",
        Some(&access),
        Some(json!({"expires_at": "tomorrow"})),
    )
    .await
    .assert_error(400, "invalid_request");

    // The key works at the proxy as the account.
    let a = one
        .send(
            Method::GET,
            "/api/k",
            None,
            None,
            &[("x-api-key", &secret)],
            false,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["headers"]["x-consumer-id"], id.as_str());

    // Listed without its secret; nobody else sees it.
    let a = one
        .call(Method::GET, "/account/keys", Some(&access), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json().as_array().unwrap().len(), 1);
    assert!(!a.text.contains(&secret));
    let a = one
        .call(Method::GET, "/account/keys", Some(&other_access), None)
        .await;
    assert_eq!(a.json(), json!([]));

    // Another account cannot revoke it, and learns nothing about it.
    one.call(
        Method::POST,
        &format!("/account/keys/{key_id}/revoke"),
        Some(&other_access),
        None,
    )
    .await
    .assert_error(404, "not_found");
    one.call(
        Method::POST,
        "/account/keys/key_nope/revoke",
        Some(&access),
        None,
    )
    .await
    .assert_error(404, "not_found");

    // Usage: requests sent with the key and with the token are counted for the account.
    for _ in 0..7 {
        assert_eq!(one.api_with_key(&secret).await, 200);
    }
    for _ in 0..3 {
        assert_eq!(one.api_with_token(&access).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let a = one
            .call(Method::GET, "/account/usage", Some(&access), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        let body = a.json();
        let api: u64 = body["usage"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["route"] == "api")
            .map(|r| r["allowed"].as_u64().unwrap())
            .sum();
        // 1 (the check above) + 7 + 3 requests to the api route.
        if api == 11 || Instant::now() > deadline {
            assert_eq!(api, 11, "{body}");
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(usage["usage"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["consumer_id"] == id.as_str()));
    assert_eq!(usage["limits"]["plan"], "starter");
    // The flush that wrote the counts also stamped the key as used.
    let a = one
        .call(Method::GET, "/account/keys", Some(&access), None)
        .await;
    let listed = a.json();
    assert!(listed[0]["last_used_at"].is_string(), "{listed}");
    let window = &usage["limits"]["windows"][0];
    assert_eq!(window["limit"], 1000, "{usage}");
    assert!(window["used"].as_u64().unwrap() >= 11, "{usage}");
    one.call(
        Method::GET,
        "/account/usage?from=yesterday",
        Some(&access),
        None,
    )
    .await
    .assert_error(400, "invalid_request");

    // Revoke: the key stops working within a second.
    let a = one
        .call(
            Method::POST,
            &format!("/account/keys/{key_id}/revoke"),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["status"], "disabled");
    let took = eventually(Duration::from_secs(1), 403, || one.api_with_key(&secret)).await;
    assert!(took.is_some(), "the revoked key still works");

    // The audit log names the account as the actor.
    let a = one
        .admin(
            Method::GET,
            &format!("/admin/audit?target_id={key_id}"),
            None,
        )
        .await;
    assert!(a.text.contains(&format!("user:{id}")), "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_reused_token_revokes_the_session() {
    let stack = Stack::start().await;
    let one = stack.instance().await;
    let (_, _, first) = one.signed_up("rae@example.com").await;
    let a = one.refresh(&first).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let second = a.json()["refresh_token"].as_str().unwrap().to_string();
    let access = a.json()["access_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(one.api_with_token(&access).await, 200);

    // The first token was used up: presenting it again revokes the whole family, and the
    // session's access tokens with it (the session may be in a thief's hands).
    one.refresh(&first)
        .await
        .assert_error(401, "refresh_token_reused");
    let took = eventually(Duration::from_secs(1), 401, || one.api_with_token(&access)).await;
    assert!(
        took.is_some(),
        "the replayed session's access token still works"
    );
    one.call(Method::GET, "/api/x", Some(&access), None)
        .await
        .assert_error(401, "revoked_token");
    one.refresh(&second)
        .await
        .assert_error(401, "refresh_token_reused");
    one.refresh("tgr_unknown")
        .await
        .assert_error(401, "invalid_refresh_token");
    one.call(Method::POST, "/account/refresh", None, Some(json!({})))
        .await
        .assert_error(400, "invalid_request");

    // A new login starts a new, working family.
    let a = one.login("rae@example.com", "a long enough password").await;
    let third = a.json()["refresh_token"].as_str().unwrap().to_string();
    let fresh_access = a.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(one.refresh(&third).await.status, 200);
    assert_eq!(one.api_with_token(&fresh_access).await, 200);

    // Expired refresh tokens are refused.
    let a = one.login("rae@example.com", "a long enough password").await;
    let old = a.json()["refresh_token"].as_str().unwrap().to_string();
    stack
        .pg
        .psql("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE revoked_at IS NULL")
        .await;
    one.refresh(&old)
        .await
        .assert_error(401, "invalid_refresh_token");

    // Tokens that expired over a day ago are deleted by the next login.
    stack
        .pg
        .psql("UPDATE refresh_tokens SET expires_at = now() - interval '2 days'")
        .await;
    assert_eq!(
        one.login("rae@example.com", "a long enough password")
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .pg
            .psql("SELECT count(*) FROM refresh_tokens WHERE expires_at < now()")
            .await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_blocks_the_access_token_on_every_instance_within_a_second() {
    let stack = Stack::start().await;
    let one = stack.instance().await;
    let two = stack.instance().await;
    let (_, access, refresh) = one.signed_up("max@example.com").await;

    // Valid (and cached as verified) on both instances.
    assert_eq!(one.api_with_token(&access).await, 200);
    assert_eq!(two.api_with_token(&access).await, 200);

    // A refresh token of another account cannot be revoked by this one.
    let (_, other_access, other_refresh) = one.signed_up("ned@example.com").await;
    one.call(
        Method::POST,
        "/account/logout",
        Some(&access),
        Some(json!({"refresh_token": other_refresh})),
    )
    .await
    .assert_error(404, "not_found");

    one.send(Method::POST, "/account/logout", None, None, &[], true)
        .await
        .assert_error(401, "missing_token");
    let a = one
        .call(
            Method::POST,
            "/account/logout",
            Some(&access),
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.text);
    let logged_out = Instant::now();
    let (a, b) = tokio::join!(
        eventually(Duration::from_secs(2), 401, || one.api_with_token(&access)),
        eventually(Duration::from_secs(2), 401, || two.api_with_token(&access)),
    );
    println!("refused on instance one after {a:?}, on two after {b:?}");
    assert!(
        a.is_some() && b.is_some(),
        "the logged-out token still works"
    );
    assert!(
        logged_out.elapsed() < Duration::from_secs(1),
        "logout took {:?} to reach both instances",
        logged_out.elapsed()
    );
    let a = two.call(Method::GET, "/api/x", Some(&access), None).await;
    a.assert_error(401, "revoked_token");
    one.send(Method::GET, "/account/me", Some(&access), None, &[], true)
        .await
        .assert_error(401, "revoked_token");
    // The refresh token's family is revoked too.
    one.refresh(&refresh)
        .await
        .assert_error(401, "refresh_token_reused");

    // An instance started after the logout learns it from Redis at start.
    let three = stack.instance().await;
    assert_eq!(three.api_with_token(&access).await, 401);
    // Other sessions are untouched; a logout without a body revokes the token only.
    assert_eq!(three.api_with_token(&other_access).await, 200);
    let a = two
        .call(Method::POST, "/account/logout", Some(&other_access), None)
        .await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert!(eventually(Duration::from_secs(2), 401, || one
        .api_with_token(&other_access))
    .await
    .is_some());
    let redis_members = stack
        .redis
        .command(&["ZCARD", "tg:revoked-tokens"])
        .await
        .as_int();
    // Two access tokens, and the session of the first logout (it named its refresh token).
    assert_eq!(redis_members, Some(3));
    // A fresh login works.
    let a = one.login("max@example.com", "a long enough password").await;
    let fresh = a.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(two.api_with_token(&fresh).await, 200);
}

/// Redis down: a logout cannot be shared, so it says so (503) and changes nothing for the
/// access token, which the client can log out again later; once Redis is back, instances
/// have resubscribed and the retried logout reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_across_a_redis_outage() {
    let mut stack = Stack::start().await;
    let one = stack.instance().await;
    let two = stack.instance().await;
    let (_, access, _) = one.signed_up("ola@example.com").await;
    assert_eq!(two.api_with_token(&access).await, 200);

    stack.redis.kill();
    let a = one
        .send(
            Method::POST,
            "/account/logout",
            Some(&access),
            None,
            &[],
            true,
        )
        .await;
    a.assert_error(503, "revocation_unavailable");
    let a = one
        .send(Method::GET, "/account/me", Some(&access), None, &[], true)
        .await;
    assert_eq!(a.status, 200, "a failed logout changes nothing: {}", a.text);

    stack.redis.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = one
            .send(
                Method::POST,
                "/account/logout",
                Some(&access),
                None,
                &[],
                true,
            )
            .await;
        if a.status == 204 {
            break;
        }
        a.assert_error(503, "revocation_unavailable");
        assert!(Instant::now() < deadline, "logout never succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Resubscribing can lag the command connection a little; the periodic resync is the
    // backstop, so allow for either.
    let took = eventually(Duration::from_secs(35), 401, || two.api_with_token(&access)).await;
    println!("the logout reached the other instance after {took:?}");
    assert!(
        took.is_some(),
        "the logout never reached the other instance"
    );
    assert_eq!(one.api_with_token(&access).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_throttled_per_account_and_per_address() {
    let stack = Stack::start().await;
    let one = stack
        .instance_with("{per_account: {requests: 3, per: 1m}, per_ip: {requests: 5, per: 1m}}")
        .await;
    for email in ["ida@example.com", "joe@example.com", "ken@example.com"] {
        assert_eq!(
            one.register(email, "a long enough password").await.status,
            201
        );
    }
    // Logins straight to the admin listener, as if forwarded for a given client address.
    let login = |email: &'static str, password: &'static str, client: &'static str| {
        let one = &one;
        async move {
            one.send(
                Method::POST,
                "/account/login",
                None,
                Some(json!({"email": email, "password": password})),
                &[("x-forwarded-for", client)],
                true,
            )
            .await
        }
    };

    // Per account: three attempts, then 429 even with the right password, from anywhere.
    for _ in 0..3 {
        login("ida@example.com", "wrong password!!", "198.51.100.1")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let a = login("ida@example.com", "a long enough password", "198.51.100.2").await;
    a.assert_error(429, "rate_limited");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Per address: 198.51.100.1 has made 3 attempts; 2 more are allowed, for any account.
    assert_eq!(
        login("joe@example.com", "a long enough password", "198.51.100.1")
            .await
            .status,
        200
    );
    login("ken@example.com", "wrong password!!", "198.51.100.1")
        .await
        .assert_error(401, "invalid_credentials");
    login("ken@example.com", "a long enough password", "198.51.100.1")
        .await
        .assert_error(429, "rate_limited");
    // Another address may still log in to that account.
    assert_eq!(
        login("ken@example.com", "a long enough password", "203.0.113.9")
            .await
            .status,
        200
    );
    // Registration is throttled per address too (the per_ip window).
    for i in 0..6 {
        let a = one
            .send(
                Method::POST,
                "/account/register",
                None,
                Some(json!({"email": format!("r{i}@example.com"), "password": "a long enough password"})),
                &[("x-forwarded-for", "192.0.2.77")],
                true,
            )
            .await;
        if i < 5 {
            assert_eq!(a.status, 201, "{}", a.text);
        } else {
            a.assert_error(429, "rate_limited");
        }
    }
    // The counters live in the shared Redis.
    let keys = stack.redis.command(&["KEYS", "tg:{login:*"]).await;
    assert!(
        format!("{keys:?}").contains("login:ip:198.51.100.1"),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_is_forbidden() {
    let stack = Stack::start().await;
    let one = stack.instance().await;
    let (id, access, refresh) = one.signed_up("zed@example.com").await;
    assert_eq!(one.api_with_token(&access).await, 200);

    let a = one
        .admin(
            Method::PATCH,
            &format!("/admin/consumers/{id}"),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);

    one.login("zed@example.com", "a long enough password")
        .await
        .assert_error(403, "consumer_disabled");
    one.call(Method::GET, "/account/me", Some(&access), None)
        .await
        .assert_error(403, "consumer_disabled");
    one.refresh(&refresh)
        .await
        .assert_error(403, "consumer_disabled");
    let took = eventually(Duration::from_secs(1), 403, || one.api_with_token(&access)).await;
    assert!(took.is_some(), "a disabled account's token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_accounts_token_is_refused() {
    let stack = Stack::start().await;
    let one = stack.instance().await;
    let (id, access, _refresh) = one.signed_up("gone@example.com").await;
    assert_eq!(one.api_with_token(&access).await, 200);

    // The account and its consumer are removed from the database, announced on the change
    // channel as the admin API announces a deleted consumer.
    stack
        .pg
        .psql(&format!(
            "BEGIN; DELETE FROM users WHERE consumer_id = '{id}'; \
             DELETE FROM consumers WHERE id = '{id}'; \
             SELECT pg_notify('tollgate_changes', '{{\"kind\":\"consumer\",\"id\":\"{id}\"}}'); \
             COMMIT;"
        ))
        .await;
    let took = eventually(Duration::from_secs(5), 401, || one.api_with_token(&access)).await;
    assert!(took.is_some(), "a deleted account's token still works");
    let hits = stack.upstream.hits();
    one.call(Method::GET, "/api/x", Some(&access), None)
        .await
        .assert_error(401, "invalid_token");
    // An instance that never saw the account refuses the token too.
    let two = stack.instance().await;
    two.call(Method::GET, "/api/x", Some(&access), None)
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(
        stack.upstream.hits(),
        hits,
        "the upstream got a request with a deleted account's token"
    );
}

#[tokio::test]
async fn the_account_section_is_validated() {
    let out = Gateway::check(
        "listeners: [{address: \"127.0.0.1:1\"}]\naccount: {signing_secret_env: TG_NOT_SET_ANYWHERE}\n",
    )
    .await;
    assert!(!out.success(), "{}", out.stderr);
    for needle in [
        "account: the account API needs `database:`",
        "account: the account API is served by the admin service",
        "account.signing_secret_env: $TG_NOT_SET_ANYWHERE is not set",
    ] {
        assert!(out.stderr.contains(needle), "{needle}\n{}", out.stderr);
    }
}

/// The documented example (`conf/examples/platform.yaml`) passes `tollgate check`.
#[tokio::test]
async fn the_platform_example_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c"])
        .arg(root.join("conf/examples/platform.yaml"))
        .env(
            "TOLLGATE_DATABASE_URL",
            "postgres://tollgate@127.0.0.1:5432/tollgate",
        )
        .env("TOLLGATE_KEY_PEPPER", PEPPER)
        .env("TOLLGATE_ACCOUNT_SECRET", SECRET)
        .env("TOLLGATE_ADMIN_TOKENS", ADMIN_TOKEN)
        .output()
        .expect("run tollgate check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Many logins at once: the argon2 hasher runs 4 and queues 16; the rest are told at once
/// to retry (503 `overloaded` with `Retry-After`), and every request gets an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_logins_get_503_with_retry_after_and_no_hang() {
    let stack = Stack::start().await;
    let one = stack
        .instance_with(
            "{per_account: {requests: 1000, per: 1m}, per_ip: {requests: 1000, per: 1m}}",
        )
        .await;
    assert_eq!(
        one.register("busy@example.com", "a long enough password")
            .await
            .status,
        201
    );
    let logins = (0..80).map(|_| {
        one.send(
            Method::POST,
            "/account/login",
            None,
            Some(json!({"email": "busy@example.com", "password": "a long enough password"})),
            &[],
            true,
        )
    });
    // A bound on the whole burst only to turn a hang into a failure, not a timing claim.
    let answers = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(logins))
        .await
        .expect("logins hung: the hashing queue is not bounded");
    let mut busy = 0;
    for a in &answers {
        match a.status {
            200 => {}
            503 => {
                a.assert_error(503, "overloaded");
                assert_eq!(a.headers["retry-after"], "1");
                busy += 1;
            }
            other => panic!("unexpected {other}: {}", a.text),
        }
    }
    assert!(busy > 0, "80 concurrent logins and none was told to retry");
    assert!(busy < answers.len(), "no login got through");
    // Afterwards the hasher is free again.
    assert_eq!(
        one.login("busy@example.com", "a long enough password")
            .await
            .status,
        200
    );
}

/// Refresh and logout are counted per session (refresh-token family) and per client
/// address: a session's third refresh within the window is 429, so is its third logout
/// (with successive access tokens of one session), and so is the address's fifth refresh
/// attempt with made-up tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_logout_are_throttled_per_session_and_address() {
    let stack = Stack::start().await;
    let one = stack
        .instance_with(
            "{per_account: {requests: 50, per: 1m}, per_ip: {requests: 4, per: 1m}, per_session: {requests: 2, per: 1m}}",
        )
        .await;
    let (_, a1, r1) = one.signed_up("sess@example.com").await;
    let t = one.refresh(&r1).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let (a2, r2) = (
        t.json()["access_token"].as_str().unwrap().to_string(),
        t.json()["refresh_token"].as_str().unwrap().to_string(),
    );
    let t = one.refresh(&r2).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let (a3, r3) = (
        t.json()["access_token"].as_str().unwrap().to_string(),
        t.json()["refresh_token"].as_str().unwrap().to_string(),
    );
    let a = one.refresh(&r3).await;
    a.assert_error(429, "rate_limited");
    assert!(a.text.contains("per_session"), "{}", a.text);
    assert!(a.headers.contains_key("retry-after"));
    // Logout: two per session, then 429; the third access token still works.
    for token in [&a1, &a2] {
        let a = one
            .call(Method::POST, "/account/logout", Some(token), None)
            .await;
        assert_eq!(a.status, 204, "{}", a.text);
    }
    let a = one
        .call(Method::POST, "/account/logout", Some(&a3), None)
        .await;
    a.assert_error(429, "rate_limited");

    // Per address: the refreshes above made 3 of 4; made-up tokens: one more 401, then 429.
    one.refresh("tgr_made-up-token")
        .await
        .assert_error(401, "invalid_refresh_token");
    one.refresh("tgr_made-up-token")
        .await
        .assert_error(429, "rate_limited");
}

/// The account API shares the admin listener, which the proxy reaches from loopback:
/// without admin tokens that listener would be open to every caller of the proxy, so the
/// combination is refused by `check` (and so at start and on reload).
#[tokio::test]
async fn the_account_api_needs_admin_tokens() {
    let out = Gateway::check(
        "listeners: [{address: \"127.0.0.1:1\"}]\ndatabase: {url: \"postgres://x@127.0.0.1:1/x\"}\n\
         admin: {address: \"127.0.0.1:2\", tokens_env: TG_NO_ADMIN_TOKENS_HERE}\n\
         account: {signing_secret_env: TG_NOT_SET_ANYWHERE}\n",
    )
    .await;
    assert!(!out.success(), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("account: the account API shares the admin listener, which is open without admin tokens"),
        "{}",
        out.stderr
    );
}

/// `[null, null]` posted to `POST /account/keys` used to create a key (serde reads a
/// struct from an array); bodies must be one JSON object, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_bodies_must_be_json_objects() {
    let stack = Stack::start().await;
    let one = stack.instance().await;
    let (_, access, _) = one.signed_up("obj@example.com").await;
    for body in ["[null,null]", "null", "[]", "7"] {
        let a = one
            .gw
            .http()
            .post(one.gw.url("/account/keys"))
            .bearer_auth(&access)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        Answer::read(a).await.assert_error(400, "invalid_request");
    }
    let a = one
        .gw
        .http()
        .post(one.gw.url("/account/register"))
        .header("content-type", "application/json")
        .body(r#"["new@example.com", "a long enough password"]"#)
        .send()
        .await
        .unwrap();
    Answer::read(a).await.assert_error(400, "invalid_request");
    let keys = one
        .call(Method::GET, "/account/keys", Some(&access), None)
        .await;
    assert_eq!(keys.json(), json!([]), "{}", keys.text);
    one.login("new@example.com", "a long enough password")
        .await
        .assert_error(401, "invalid_credentials");
}
