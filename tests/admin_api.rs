//! The admin API (README "Admin API"), against the real `tollgate` binary and a real
//! PostgreSQL: every endpoint's success and failure paths, authentication, the audit trail,
//! the one-time display of key secrets, config reload, and the OpenAPI document.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const PEPPER: &str = "pepper-for-the-admin-api-tests";
const TOKEN: &str = "admin-token-one-7f3a9c1e5b2d8f4a6c0e9b1d3f5a7c9e2b4d6f8a1c3e5";
const OTHER_TOKEN: &str = "admin-token-two-0b9d7f5e3c1a8e6d4b2f0a9c7e5d3b1f8a6c4e2d0b9f7";
const READER_TOKEN: &str = "admin-reader-token-5e1c9a7f3d5b0e8c2a6f4d9b7e1c3a5f0d8b6e2c4a9f";

/// A gateway with the admin API on PostgreSQL (or without a database).
struct Admin {
    gw: Gateway,
    port: u16,
}

fn base_yaml(cfg: &GatewayConfig, rest: &str) -> String {
    cfg.render(&format!(
        "upstreams:\n  - {{name: a, targets: [{{address: \"127.0.0.1:9\"}}]}}\n\
         routes:\n  - {{name: r, path_prefix: /, upstream: a}}\n{rest}"
    ))
}

impl Admin {
    async fn start(pg: Option<&Postgres>) -> Admin {
        Self::start_with(pg, true).await
    }

    async fn start_with(pg: Option<&Postgres>, pepper: bool) -> Admin {
        Self::start_full(pg, pepper, true, "").await
    }

    /// `tokens`: the three test tokens, else none (open to loopback); `admin_extra`: more
    /// lines of the `admin:` section, each indented by two spaces.
    async fn start_full(
        pg: Option<&Postgres>,
        pepper: bool,
        tokens: bool,
        admin_extra: &str,
    ) -> Admin {
        let port = free_port();
        let mut cfg = GatewayConfig::new();
        if tokens {
            cfg = cfg
                .with_env("TOLLGATE_ADMIN_TOKENS", &format!("{TOKEN}, {OTHER_TOKEN}"))
                .with_env("TOLLGATE_ADMIN_READ_ONLY_TOKENS", READER_TOKEN);
        }
        if pepper {
            cfg = cfg.with_env("TOLLGATE_KEY_PEPPER", PEPPER);
        }
        let database = pg
            .map(|pg| format!("database: {{url: \"{}\"}}\n", pg.url()))
            .unwrap_or_default();
        let yaml = base_yaml(
            &cfg,
            &format!("{database}admin:\n  address: 127.0.0.1:{port}\n{admin_extra}"),
        );
        let gw = Gateway::start(cfg, &yaml).await;
        wait_for_port(port, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("admin port: {e}\n{}", gw.logs()));
        Admin { gw, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.gw.http().request(method.clone(), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        Answer::read(resp).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Some(TOKEN), None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(TOKEN), Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> Answer {
        self.send(Method::PATCH, path, Some(TOKEN), Some(body))
            .await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, Some(TOKEN), None).await
    }

    /// `POST` expecting `status`, returning the JSON body.
    async fn post_ok(&self, path: &str, body: Value, status: u16) -> Value {
        let a = self.post(path, body).await;
        assert_eq!(a.status, status, "POST {path}: {}", a.text);
        a.json()
    }
}

/// The audit label of a token: `token:` + the first 8 hex digits of its SHA-256.
fn actor_of(token: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{token}' | openssl dgst -sha256 -r"))
        .output()
        .expect("openssl");
    let hex = String::from_utf8(out.stdout).unwrap();
    format!("token:{}", &hex[..8])
}

#[tokio::test]
async fn authentication_is_required_on_admin_endpoints_only() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;

    for token in [None, Some("wrong-token-but-long-enough")] {
        let a = admin.send(Method::GET, "/admin/plans", token, None).await;
        a.assert_error(401, "unauthorized");
        assert!(a.headers.contains_key("www-authenticate"));
        let a = admin
            .send(
                Method::POST,
                "/admin/consumers",
                token,
                Some(json!({"id": "x"})),
            )
            .await;
        a.assert_error(401, "unauthorized");
    }
    // A non-bearer scheme with a right token is refused too.
    let a = admin
        .gw
        .http()
        .get(admin.url("/admin/plans"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 401);

    // Both configured tokens work.
    for token in [TOKEN, OTHER_TOKEN] {
        let a = admin
            .send(Method::GET, "/admin/plans", Some(token), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json(), json!([]));
    }

    // A read-only token reads, and is refused (403) any change.
    let a = admin
        .send(Method::GET, "/admin/plans", Some(READER_TOKEN), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    for (method, path) in [
        (Method::POST, "/admin/plans"),
        (Method::PATCH, "/admin/consumers/x"),
        (Method::DELETE, "/admin/plans/x"),
        (Method::POST, "/admin/reload"),
    ] {
        admin
            .send(method, path, Some(READER_TOKEN), Some(json!({"name": "p"})))
            .await
            .assert_error(403, "forbidden");
    }
    assert_eq!(admin.get("/admin/plans").await.json(), json!([]));

    // /health and /openapi.json are open.
    let a = admin.send(Method::GET, "/health", None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "ok");
    let a = admin.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(a.status, 200);

    // Unknown endpoints and methods answer in the same JSON shape.
    admin
        .get("/admin/nothing-here")
        .await
        .assert_error(404, "route_not_found");
    admin
        .send(Method::PUT, "/admin/plans", Some(TOKEN), Some(json!({})))
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn plans_crud_validation_and_conflicts() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;

    let gold = admin
        .post_ok(
            "/admin/plans",
            json!({"name": "gold", "algorithm": "sliding_window",
                   "limits": [{"requests": 100, "per_seconds": 60}], "concurrency": 5}),
            201,
        )
        .await;
    assert_eq!(gold["name"], "gold");
    assert_eq!(gold["algorithm"], "sliding_window");
    assert_eq!(
        gold["limits"],
        json!([{"requests": 100, "per_seconds": 60}])
    );
    assert_eq!(gold["concurrency"], 5);
    let created = gold["created_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");

    // Duplicate: 409.
    admin
        .post(
            "/admin/plans",
            json!({"name": "gold", "limits": [{"requests": 1, "per_seconds": 1}]}),
        )
        .await
        .assert_error(409, "conflict");

    // Field-level messages.
    let body = admin
        .post(
            "/admin/plans",
            json!({"name": "", "limits": [{"requests": 0, "per_seconds": 1},
                                          {"requests": 5, "per_seconds": 0, "burst": 0}],
                   "concurrency": 0}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(body["fields"]["limits[0].requests"], "must be at least 1");
    assert_eq!(
        body["fields"]["limits[1].per_seconds"],
        "must be a whole number of seconds, at least 1"
    );
    assert_eq!(body["fields"]["limits[1].burst"], "must be at least 1");
    assert_eq!(
        body["fields"]["name"],
        "1-64 characters: letters, digits, '-', '_', '.'"
    );
    assert!(body["fields"]["concurrency"].is_string(), "{body}");
    // No windows and no cap: an unlimited plan, as in the file (also after a change
    // that removes them, and with a block that then never applies).
    let created = admin
        .post("/admin/plans", json!({"name": "empty", "limits": []}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let changed = admin
        .patch(
            "/admin/plans/empty",
            json!({"limits": [], "concurrency": null, "block_for_seconds": 60}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let body = admin
        .post(
            "/admin/plans",
            json!({"name": "empty2", "limits": [], "block_for_seconds": 0}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["block_for_seconds"].is_string(), "{body}");
    assert_eq!(admin.delete("/admin/plans/empty").await.status, 204);

    // Malformed JSON, unknown fields, wrong types and a wrong content type: same shape.
    let a = admin
        .gw
        .http()
        .post(admin.url("/admin/plans"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = a.status().as_u16();
    let headers = a.headers().clone();
    let text = a.text().await.unwrap();
    Answer {
        status,
        headers,
        text,
    }
    .assert_error(400, "invalid_request");
    admin
        .post(
            "/admin/plans",
            json!({"name": "x", "limits": [], "bogus": true}),
        )
        .await
        .assert_error(400, "invalid_request");
    admin
        .post("/admin/plans", json!({"name": "x", "limits": "many"}))
        .await
        .assert_error(400, "invalid_request");
    let a = admin
        .gw
        .http()
        .post(admin.url("/admin/plans"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"name":"x","limits":[]}"#)
        .send()
        .await
        .unwrap();
    let status = a.status().as_u16();
    let headers = a.headers().clone();
    let text = a.text().await.unwrap();
    Answer {
        status,
        headers,
        text,
    }
    .assert_error(415, "unsupported_media_type");

    // List, get, 404.
    admin
        .post_ok(
            "/admin/plans",
            json!({"name": "bronze", "limits": [{"requests": 10, "per_seconds": 1}]}),
            201,
        )
        .await;
    let list = admin.get("/admin/plans").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bronze", "gold"]);
    let bronze = admin.get("/admin/plans/bronze").await.json();
    assert_eq!(bronze["algorithm"], "fixed_window");
    assert_eq!(bronze["concurrency"], Value::Null);
    admin
        .get("/admin/plans/silver")
        .await
        .assert_error(404, "not_found");

    // Patch: change windows, remove the cap; bad patch: 400; missing plan: 404.
    let a = admin
        .patch(
            "/admin/plans/gold",
            json!({"limits": [{"requests": 7, "per_seconds": 2}], "concurrency": null}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let gold = a.json();
    assert_eq!(gold["limits"], json!([{"requests": 7, "per_seconds": 2}]));
    assert_eq!(gold["concurrency"], Value::Null);
    assert_eq!(gold["algorithm"], "sliding_window");
    let body = admin
        .patch(
            "/admin/plans/gold",
            json!({"limits": [{"requests": 0, "per_seconds": 2}]}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(body["fields"]["limits[0].requests"], "must be at least 1");
    admin
        .patch("/admin/plans/silver", json!({"concurrency": 3}))
        .await
        .assert_error(404, "not_found");

    // Delete: 409 while a consumer is on it, 204 after, 404 then.
    admin
        .post_ok(
            "/admin/consumers",
            json!({"id": "acme", "plan": "gold"}),
            201,
        )
        .await;
    admin
        .delete("/admin/plans/gold")
        .await
        .assert_error(409, "conflict");
    admin
        .patch("/admin/consumers/acme", json!({"plan": null}))
        .await;
    let a = admin.delete("/admin/plans/gold").await;
    assert_eq!(a.status, 204, "{}", a.text);
    admin
        .delete("/admin/plans/gold")
        .await
        .assert_error(404, "not_found");
}

/// A plan the limiter would refuse is refused by the admin API with a 400 naming the
/// field, on create and on a patch that makes the stored windows unusable; the database
/// keeps the plan as it was. The rules are the ones the file's plans follow.
#[tokio::test]
async fn plans_the_limiter_would_refuse_are_refused_naming_the_field() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    for (body, field, message) in [
        (
            json!({"name": "dup", "limits": [{"requests": 1, "per_seconds": 60},
                                             {"requests": 9, "per_seconds": 60}]}),
            "limits[1].per_seconds",
            "two windows of the same length",
        ),
        (
            json!({"name": "long", "limits": [{"requests": 1, "per_seconds": 400 * 86400}]}),
            "limits[0].per_seconds",
            "must be at most 31622400 s (366 days)",
        ),
        (
            json!({"name": "slow", "algorithm": "token_bucket",
                   "limits": [{"requests": 1, "per_seconds": 86400, "burst": 1000}]}),
            "limits[0].burst",
            "refills over",
        ),
        (
            json!({"name": "same-refill", "algorithm": "token_bucket",
                   "limits": [{"requests": 10, "per_seconds": 60, "burst": 20},
                              {"requests": 5, "per_seconds": 120}]}),
            "limits[1].per_seconds",
            "two windows with the same refill period",
        ),
    ] {
        let name = body["name"].clone();
        let error = admin
            .post("/admin/plans", body)
            .await
            .assert_error(400, "invalid_request");
        let said = error["fields"][field].as_str().unwrap_or_else(|| {
            panic!("{name}: no problem named {field}: {error}");
        });
        assert!(said.starts_with(message), "{name}: {said}");
        admin
            .get(&format!("/admin/plans/{}", name.as_str().unwrap()))
            .await
            .assert_error(404, "not_found");
    }

    // A fixed window ignores its burst; switching it to a token bucket would make the
    // burst refill over 1,000 days: refused, and the plan stays as it was.
    admin
        .post_ok(
            "/admin/plans",
            json!({"name": "daily",
                   "limits": [{"requests": 1, "per_seconds": 86400, "burst": 1000}]}),
            201,
        )
        .await;
    let error = admin
        .patch("/admin/plans/daily", json!({"algorithm": "token_bucket"}))
        .await
        .assert_error(400, "invalid_request");
    let said = error["fields"]["limits[0].burst"]
        .as_str()
        .unwrap_or_default();
    assert!(said.starts_with("refills over"), "{error}");
    let kept = admin.get("/admin/plans/daily").await.json();
    assert_eq!(kept["algorithm"], "fixed_window", "{kept}");
}

#[tokio::test]
async fn consumers_crud_filters_and_paging() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    admin
        .post_ok(
            "/admin/plans",
            json!({"name": "basic", "limits": [{"requests": 5, "per_seconds": 1}]}),
            201,
        )
        .await;

    let c = admin
        .post_ok(
            "/admin/consumers",
            json!({"id": "c1", "plan": "basic", "scopes": ["read"], "metadata": {"team": "x"}}),
            201,
        )
        .await;
    assert_eq!(c["id"], "c1");
    assert_eq!(c["plan"], "basic");
    assert_eq!(c["status"], "active");
    assert_eq!(c["scopes"], json!(["read"]));
    assert_eq!(c["metadata"], json!({"team": "x"}));
    for id in ["c2", "c3", "c4"] {
        admin
            .post_ok("/admin/consumers", json!({"id": id}), 201)
            .await;
    }
    admin
        .post_ok(
            "/admin/consumers",
            json!({"id": "c5", "status": "disabled", "plan": "basic"}),
            201,
        )
        .await;

    // Failures: duplicate, unknown plan, bad fields, bad status.
    admin
        .post("/admin/consumers", json!({"id": "c1"}))
        .await
        .assert_error(409, "conflict");
    // A plan that does not exist (yet) is a conflict with the stored state, not bad input.
    let body = admin
        .post("/admin/consumers", json!({"id": "c9", "plan": "nope"}))
        .await
        .assert_error(409, "conflict");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no plan named \"nope\""),
        "{body}"
    );
    let body = admin
        .post(
            "/admin/consumers",
            json!({"id": "", "scopes": ["ok", ""], "metadata": [1]}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["id"].is_string(), "{body}");
    assert!(body["fields"]["scopes[1]"].is_string(), "{body}");
    assert_eq!(body["fields"]["metadata"], "must be a JSON object");
    admin
        .post("/admin/consumers", json!({"id": "c9", "status": "sleepy"}))
        .await
        .assert_error(400, "invalid_request");

    // Paging: stable order, cursor.
    let page = admin.get("/admin/consumers?limit=2").await.json();
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&page), ["c1", "c2"]);
    assert_eq!(page["next_after"], "c2");
    let page = admin.get("/admin/consumers?limit=2&after=c2").await.json();
    assert_eq!(ids(&page), ["c3", "c4"]);
    let page = admin.get("/admin/consumers?limit=2&after=c4").await.json();
    assert_eq!(ids(&page), ["c5"]);
    assert_eq!(page["next_after"], Value::Null);
    // Filters.
    let page = admin.get("/admin/consumers?plan=basic").await.json();
    assert_eq!(ids(&page), ["c1", "c5"]);
    let page = admin
        .get("/admin/consumers?plan=basic&status=active")
        .await
        .json();
    assert_eq!(ids(&page), ["c1"]);
    admin
        .get("/admin/consumers?limit=0")
        .await
        .assert_error(400, "invalid_request");
    admin
        .get("/admin/consumers?limit=many")
        .await
        .assert_error(400, "invalid_request");

    // Get, patch, delete.
    assert_eq!(
        admin.get("/admin/consumers/c2").await.json()["plan"],
        Value::Null
    );
    admin
        .get("/admin/consumers/zz")
        .await
        .assert_error(404, "not_found");
    let a = admin
        .patch(
            "/admin/consumers/c2",
            json!({"plan": "basic", "status": "disabled", "scopes": ["a", "b"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let c2 = a.json();
    assert_eq!(c2["plan"], "basic");
    assert_eq!(c2["status"], "disabled");
    assert_eq!(c2["scopes"], json!(["a", "b"]));
    let body = admin
        .patch("/admin/consumers/c2", json!({"plan": "nope"}))
        .await
        .assert_error(409, "conflict");
    assert!(
        body["message"].as_str().unwrap().starts_with("plan: "),
        "{body}"
    );
    admin
        .patch("/admin/consumers/zz", json!({"status": "active"}))
        .await
        .assert_error(404, "not_found");
    assert_eq!(admin.delete("/admin/consumers/c2").await.status, 204);
    admin
        .delete("/admin/consumers/c2")
        .await
        .assert_error(404, "not_found");
    admin
        .get("/admin/consumers/c2")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn keys_show_their_secret_once_and_never_again() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    admin
        .post_ok("/admin/consumers", json!({"id": "acme"}), 201)
        .await;

    let created = admin
        .post_ok(
            "/admin/consumers/acme/keys",
            json!({"name": "ci", "scopes": ["read"], "expires_at": "2099-01-01T00:00:00Z"}),
            201,
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    let key = &created["key"];
    let key_id = key["id"].as_str().unwrap().to_string();
    let prefix = key["prefix"].as_str().unwrap();
    assert!(
        secret.starts_with("tg_") && secret.starts_with(prefix),
        "{created}"
    );
    assert_ne!(secret, prefix);
    assert_eq!(key["consumer_id"], "acme");
    assert_eq!(key["name"], "ci");
    assert_eq!(key["scopes"], json!(["read"]));
    assert_eq!(key["status"], "active");
    assert_eq!(key["expires_at"], "2099-01-01T00:00:00Z");
    assert!(key.get("hash").is_none(), "{created}");
    // The database stores the peppered HMAC of the secret, not the secret.
    let hash = tollgate::auth::api_key::KeyHasher::new(PEPPER.as_bytes())
        .hash(&secret)
        .to_hex();
    let stored = pg
        .psql(&format!(
            "SELECT encode(hash, 'hex') FROM api_keys WHERE id = '{key_id}'"
        ))
        .await;
    assert_eq!(stored, hash);

    // Never again: list, get, patch, audit.
    let never = |a: &Answer| {
        assert!(!a.text.contains(&secret), "secret leaked: {}", a.text);
        assert!(!a.text.contains(&hash), "hash leaked: {}", a.text);
        assert!(!a.text.contains("\"hash\""), "hash field: {}", a.text);
    };
    let list = admin.get("/admin/consumers/acme/keys").await;
    assert_eq!(list.status, 200);
    never(&list);
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    assert_eq!(list.json()[0]["id"], key_id.as_str());
    let got = admin.get(&format!("/admin/keys/{key_id}")).await;
    assert_eq!(got.status, 200);
    never(&got);
    assert_eq!(got.json()["prefix"], prefix);

    // Patch.
    let a = admin
        .patch(
            &format!("/admin/keys/{key_id}"),
            json!({"name": "deploy", "scopes": null, "expires_at": null}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    never(&a);
    let k = a.json();
    assert_eq!(k["name"], "deploy");
    assert_eq!(k["scopes"], Value::Null);
    assert_eq!(k["expires_at"], Value::Null);
    let body = admin
        .patch(
            &format!("/admin/keys/{key_id}"),
            json!({"expires_at": "next tuesday"}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["expires_at"].is_string());
    admin
        .patch("/admin/keys/key_nope", json!({"name": "x"}))
        .await
        .assert_error(404, "not_found");

    // Rotate: new secret once; the old key gets an expiry; a second rotation: 409.
    let rotated = admin
        .post_ok(
            &format!("/admin/keys/{key_id}/rotate"),
            json!({"grace_seconds": 3600}),
            201,
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("tg_") && new_secret != secret);
    assert_eq!(rotated["new"]["rotated_from"], key_id.as_str());
    assert!(rotated["old"]["expires_at"].is_string(), "{rotated}");
    let new_id = rotated["new"]["id"].as_str().unwrap().to_string();
    admin
        .post(&format!("/admin/keys/{key_id}/rotate"), json!({}))
        .await
        .assert_error(409, "conflict");
    let body = admin
        .post(
            &format!("/admin/keys/{new_id}/rotate"),
            json!({"grace_seconds": 999_999_999u64}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["grace_seconds"].is_string());
    admin
        .post("/admin/keys/key_nope/rotate", json!({}))
        .await
        .assert_error(404, "not_found");
    let list = admin.get("/admin/consumers/acme/keys").await;
    assert!(!list.text.contains(new_secret));
    assert_eq!(list.json().as_array().unwrap().len(), 2);

    // Revoke.
    let a = admin
        .send(
            Method::POST,
            &format!("/admin/keys/{new_id}/revoke"),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["status"], "disabled");
    admin
        .send(
            Method::POST,
            "/admin/keys/key_nope/revoke",
            Some(TOKEN),
            None,
        )
        .await
        .assert_error(404, "not_found");

    // Keys of a missing consumer; bad input.
    admin
        .post("/admin/consumers/ghost/keys", json!({}))
        .await
        .assert_error(404, "not_found");
    admin
        .get("/admin/consumers/ghost/keys")
        .await
        .assert_error(404, "not_found");
    let body = admin
        .post(
            "/admin/consumers/acme/keys",
            json!({"scopes": [""], "expires_at": "soon"}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["scopes[0]"].is_string());
    assert!(body["fields"]["expires_at"].is_string());
    admin
        .get("/admin/keys/key_nope")
        .await
        .assert_error(404, "not_found");

    // The audit log has every key change, with its actor, and no secret or hash.
    let audit = admin.get("/admin/audit?target_type=key").await;
    never(&audit);
    assert!(!audit.text.contains(new_secret));
    let actions: Vec<String> = audit
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    for action in ["key.create", "key.update", "key.rotate", "key.revoke"] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    let actor = actor_of(TOKEN);
    assert!(
        audit
            .json()
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == actor.as_str()),
        "{}",
        audit.text
    );
}

#[tokio::test]
async fn keys_need_a_pepper() {
    let pg = Postgres::start().await;
    let admin = Admin::start_with(Some(&pg), false).await;
    admin
        .post_ok("/admin/consumers", json!({"id": "acme"}), 201)
        .await;
    admin
        .post("/admin/consumers/acme/keys", json!({}))
        .await
        .assert_error(503, "no_pepper");
}

#[tokio::test]
async fn without_a_database_data_endpoints_answer_503() {
    let admin = Admin::start(None).await;
    for path in [
        "/admin/plans",
        "/admin/consumers",
        "/admin/audit",
        "/admin/usage",
    ] {
        admin.get(path).await.assert_error(503, "no_database");
    }
    admin
        .post("/admin/consumers", json!({"id": "x"}))
        .await
        .assert_error(503, "no_database");
    // Reload does not need the database.
    let a = admin
        .send(Method::POST, "/admin/reload", Some(TOKEN), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn audit_usage_and_limits() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    admin
        .post_ok(
            "/admin/plans",
            json!({"name": "p", "limits": [{"requests": 10, "per_seconds": 60},
                                           {"requests": 100, "per_seconds": 3600}]}),
            201,
        )
        .await;
    admin
        .post_ok("/admin/consumers", json!({"id": "acme", "plan": "p"}), 201)
        .await;
    let a = admin
        .send(
            Method::PATCH,
            "/admin/consumers/acme",
            Some(OTHER_TOKEN),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    admin
        .post_ok("/admin/consumers", json!({"id": "bob"}), 201)
        .await;

    // Who changed what: newest first, with each token's label as the actor.
    let entries = admin
        .get("/admin/audit?target_type=consumer&target_id=acme")
        .await
        .json();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["action"], "consumer.update");
    assert_eq!(entries[0]["actor"], actor_of(OTHER_TOKEN).as_str());
    assert_eq!(entries[1]["action"], "consumer.create");
    assert_eq!(entries[1]["actor"], actor_of(TOKEN).as_str());
    assert!(humantime::parse_rfc3339(entries[0]["at"].as_str().unwrap()).is_ok());
    assert!(!entries[0]["actor"].as_str().unwrap().contains(OTHER_TOKEN));
    let plan_entries = admin.get("/admin/audit?target_type=plan").await.json();
    assert_eq!(plan_entries[0]["action"], "plan.create");
    assert_eq!(plan_entries[0]["target_id"], "p");
    let limited = admin.get("/admin/audit?limit=1").await.json();
    assert_eq!(limited.as_array().unwrap().len(), 1);
    assert_eq!(limited[0]["target_id"], "bob");
    admin
        .get("/admin/audit?limit=0")
        .await
        .assert_error(400, "invalid_request");

    // Usage: rows written by the gateway's flusher (here: directly), filtered.
    pg.psql(
        "INSERT INTO usage (day, consumer_id, key_id, route, allowed, limited) VALUES
         ('2026-01-01', 'acme', 'k1', 'orders', 10, 1),
         ('2026-01-02', 'acme', '', 'orders', 5, 0),
         ('2026-01-02', 'bob', 'k2', 'users', 7, 2)",
    )
    .await;
    let usage = admin
        .get("/admin/usage?from=2026-01-01&to=2026-01-31")
        .await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    let usage = usage.json();
    assert_eq!(usage["from"], "2026-01-01");
    assert_eq!(usage["rows"].as_array().unwrap().len(), 3);
    assert_eq!(
        usage["rows"][0],
        json!({"day": "2026-01-01", "consumer_id": "acme", "key_id": "k1",
               "route": "orders", "allowed": 10, "limited": 1})
    );
    assert_eq!(usage["rows"][1]["key_id"], Value::Null);
    let acme = admin
        .get("/admin/usage?consumer=acme&from=2026-01-02&to=2026-01-02")
        .await
        .json();
    assert_eq!(acme["rows"].as_array().unwrap().len(), 1);
    let by_key = admin
        .get("/admin/usage?key=k2&route=users&from=2026-01-01&to=2026-01-31")
        .await
        .json();
    assert_eq!(by_key["rows"][0]["consumer_id"], "bob");
    let body = admin
        .get("/admin/usage?from=January")
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["from"].is_string());
    // A range that ends before it starts is empty.
    let empty = admin
        .get("/admin/usage?from=2026-02-01&to=2026-01-01")
        .await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert_eq!(empty.json()["rows"], json!([]));
    assert_eq!(admin.get("/admin/usage").await.status, 200);

    // Limits: the consumer's windows under its plan, untouched: full.
    let limits = admin.get("/admin/consumers/acme/limits").await;
    assert_eq!(limits.status, 200, "{}", limits.text);
    let limits = limits.json();
    assert_eq!(limits["plan"], "p");
    assert_eq!(limits["subject"], "c:acme");
    let windows = limits["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{limits}");
    assert_eq!(windows[0]["limit"], 10);
    assert_eq!(windows[0]["remaining"], 10);
    assert_eq!(windows[0]["window"], 60);
    assert_eq!(windows[1]["limit"], 100);
    let bob = admin.get("/admin/consumers/bob/limits").await.json();
    assert_eq!(bob["plan"], Value::Null);
    assert_eq!(bob["windows"], json!([]));
    admin
        .get("/admin/consumers/ghost/limits")
        .await
        .assert_error(404, "not_found");
    let reset = |path: &'static str| admin.send(Method::POST, path, Some(TOKEN), None);
    let a = reset("/admin/consumers/acme/limits/reset").await;
    assert_eq!(a.status, 204, "{}", a.text);
    reset("/admin/consumers/ghost/limits/reset")
        .await
        .assert_error(404, "not_found");
    let reset = admin
        .get("/admin/audit?target_type=consumer&target_id=acme&limit=1")
        .await
        .json();
    assert_eq!(reset[0]["action"], "limits.reset");
}

#[tokio::test]
async fn reload_applies_a_good_file_and_refuses_a_bad_one() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;

    let a = admin
        .send(Method::POST, "/admin/reload", Some(TOKEN), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let report = a.json();
    assert_eq!(report["generation"], 2);
    assert_eq!(report["restart_needed"], json!([]));

    let good = std::fs::read_to_string(admin.gw.config_path()).unwrap();
    admin
        .gw
        .rewrite_config(&good.replace("upstream: a}", "upstream: missing}"));
    let a = admin
        .send(Method::POST, "/admin/reload", Some(TOKEN), None)
        .await;
    let body = a.assert_error(422, "invalid_config");
    let problems = body["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("missing")),
        "{body}"
    );
    admin
        .send(Method::POST, "/admin/reload", None, None)
        .await
        .assert_error(401, "unauthorized");

    let audit = admin.get("/admin/audit?target_type=config").await.json();
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["details"]["result"], "failure");
    assert_eq!(audit[1]["details"]["result"], "success");
    assert_eq!(audit[1]["actor"], actor_of(TOKEN).as_str());
}

/// The OpenAPI document parses, and every operation in it is served: each path (with its
/// parameters filled in) and method reaches a handler rather than the router's 404/405.
/// The document is generated from the same router (utoipa-axum), so the routes it serves
/// are exactly the ones listed (checked by the unit test in `src/admin/mod.rs`).
#[tokio::test]
async fn openapi_document_lists_every_served_route() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    let doc = admin
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut served = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "patch", "delete", "put"] {
            let Some(op) = item.get(method) else { continue };
            assert!(op["responses"].is_object(), "{method} {path}");
            let concrete = path
                .replace("{name}", "nope")
                .replace("{id}", "nope")
                .replace("{key_id}", "nope");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = matches!(method, "post" | "patch").then(|| json!({}));
            let a = admin.send(m, &concrete, Some(TOKEN), body).await;
            let code = serde_json::from_str::<Value>(&a.text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string));
            assert!(
                !matches!(
                    code.as_deref(),
                    Some("route_not_found" | "method_not_allowed")
                ),
                "{method} {path} is documented but not served: {}",
                a.text
            );
            served.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    served.sort();
    let mut expected = vec![
        "POST /admin/plans",
        "GET /admin/plans",
        "GET /admin/plans/{name}",
        "PATCH /admin/plans/{name}",
        "DELETE /admin/plans/{name}",
        "POST /admin/consumers",
        "GET /admin/consumers",
        "GET /admin/consumers/{id}",
        "PATCH /admin/consumers/{id}",
        "DELETE /admin/consumers/{id}",
        "POST /admin/consumers/{id}/keys",
        "GET /admin/consumers/{id}/keys",
        "GET /admin/keys/{key_id}",
        "PATCH /admin/keys/{key_id}",
        "POST /admin/keys/{key_id}/rotate",
        "POST /admin/keys/{key_id}/revoke",
        "GET /admin/usage",
        "GET /admin/consumers/{id}/limits",
        "POST /admin/consumers/{id}/limits/reset",
        "GET /admin/limits",
        "POST /admin/limits/reset",
        "POST /admin/reload",
        "GET /admin/audit",
        // The account API (answering 404 here: no `account:` section).
        "POST /account/register",
        "POST /account/login",
        "POST /account/refresh",
        "POST /account/logout",
        "GET /account/me",
        "POST /account/keys",
        "GET /account/keys",
        "POST /account/keys/{key_id}/revoke",
        "GET /account/usage",
    ];
    expected.sort();
    assert_eq!(served, expected);
    // Every admin operation needs the admin token; the schemas are there.
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["schemas"]["PlanCreate"].is_object());
}

/// `tollgate admin -c FILE` serves only the admin API.
#[tokio::test]
async fn admin_subcommand_serves_only_the_admin_api() {
    let pg = Postgres::start().await;
    let port = free_port();
    let cfg = GatewayConfig::new();
    let yaml = base_yaml(
        &cfg,
        &format!(
            "database: {{url: \"{}\"}}\nadmin:\n  address: 127.0.0.1:{port}\n",
            pg.url()
        ),
    );
    let path = cfg.dir().join("admin.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("admin")
        .arg("-c")
        .arg(&path)
        .env("TOLLGATE_ADMIN_TOKENS", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_for_port(port, Duration::from_secs(20)).await;
    let proxy_closed = port_is_closed(cfg.proxy_port()).await;
    let answer = http_client()
        .post(format!("http://127.0.0.1:{port}/admin/consumers"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "solo"}))
        .send()
        .await;
    // SIGTERM: a graceful stop.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ready.unwrap();
    assert!(proxy_closed, "the proxy listener must not be opened");
    assert_eq!(answer.unwrap().status(), 201);
    assert!(exited.is_some(), "tollgate admin did not stop on SIGTERM");
}

/// A raw request to the admin listener with the given headers and body.
async fn raw(
    admin: &Admin,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut req = admin.gw.http().request(method.clone(), admin.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Answer::read(resp).await
}

/// DNS rebinding: a page on `evil.example` re-pointed at 127.0.0.1 sends its own name as
/// `Host`; the admin listener refuses it (421) before anything runs, also with a valid
/// token, while loopback literals (any port) and `admin.allowed_hosts` are served.
#[tokio::test]
async fn dns_rebinding_host_is_refused_with_421() {
    let pg = Postgres::start().await;
    let admin = Admin::start_full(
        Some(&pg),
        true,
        true,
        "  allowed_hosts: [Admin.Internal.]\n",
    )
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let json = ("content-type", "application/json");
    for host in [
        "evil.example",
        "evil.example:9080",
        "127.0.0.1.nip.io",
        "[",
        "a:80:80",
        "10.0.0.1",
    ] {
        let a = raw(
            &admin,
            Method::POST,
            "/admin/consumers",
            &[("host", host), ("authorization", &bearer), json],
            Some(r#"{"id": "rebound"}"#),
        )
        .await;
        a.assert_error(421, "misdirected_request");
        for path in ["/health", "/openapi.json", "/account/login"] {
            raw(&admin, Method::GET, path, &[("host", host)], None)
                .await
                .assert_error(421, "misdirected_request");
        }
    }
    // Nothing was created by the refused requests.
    admin
        .get("/admin/consumers/rebound")
        .await
        .assert_error(404, "not_found");
    let port = admin.port.to_string();
    for host in [
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
        format!("LocalHost.:{port}"),
        format!("[::1]:{port}"),
        "127.9.9.9".to_string(),
        "admin.internal".to_string(),
        format!("ADMIN.internal:{port}"),
    ] {
        let a = raw(
            &admin,
            Method::GET,
            "/admin/plans",
            &[("host", &host), ("authorization", &bearer)],
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{host}: {}", a.text);
    }
    assert!(admin
        .gw
        .stderr()
        .contains("admin: refused a request for host \"evil.example\""));
}

/// No CSRF by a simple form: without a token (an admin API open to loopback), a
/// state-changing request needs a JSON content type; a form or text/plain POST is 415
/// and changes nothing.
#[tokio::test]
async fn simple_form_posts_without_a_token_are_refused_415() {
    let pg = Postgres::start().await;
    let admin = Admin::start_full(Some(&pg), true, false, "").await;
    for content_type in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        for (method, path, body) in [
            (Method::POST, "/admin/consumers", r#"{"id": "forged"}"#),
            (Method::POST, "/admin/reload", ""),
            (Method::DELETE, "/admin/plans/gold", ""),
            (
                Method::POST,
                "/account/register",
                r#"{"email":"a@b.c","password":"long enough pw"}"#,
            ),
        ] {
            raw(
                &admin,
                method,
                path,
                &[("content-type", content_type)],
                Some(body),
            )
            .await
            .assert_error(415, "unsupported_media_type");
        }
    }
    // No content type at all is refused too.
    raw(&admin, Method::POST, "/admin/reload", &[], None)
        .await
        .assert_error(415, "unsupported_media_type");
    admin
        .send(Method::GET, "/admin/consumers/forged", None, None)
        .await
        .assert_error(404, "not_found");
    let audit = admin.send(Method::GET, "/admin/audit", None, None).await;
    assert_eq!(
        audit.json(),
        json!([]),
        "a refused request changed something"
    );
    // With a JSON content type the open API works as before.
    let a = raw(
        &admin,
        Method::POST,
        "/admin/reload",
        &[("content-type", "application/json")],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = admin
        .send(
            Method::POST,
            "/admin/consumers",
            None,
            Some(json!({"id": "real"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
}

/// Failed admin-token attempts are logged without the token and counted per client
/// address; once spent, even the right token is 429 (a guesser cannot tell), and a forged
/// `X-Forwarded-For` from the same peer does not start a fresh count.
#[tokio::test]
async fn failed_admin_tokens_are_logged_and_throttled() {
    let pg = Postgres::start().await;
    let admin = Admin::start_full(
        Some(&pg),
        true,
        true,
        "  failed_auth_throttle: {requests: 3, per: 1m}\n",
    )
    .await;
    let guess = "guessed-token-3b8e1f0c6a4d2e9b7f5c3a1d0e8b6f4c2a9d7e5b3f1c";
    for _ in 0..3 {
        admin
            .send(Method::GET, "/admin/plans", Some(guess), None)
            .await
            .assert_error(401, "unauthorized");
    }
    let a = admin
        .send(Method::GET, "/admin/plans", Some(guess), None)
        .await;
    a.assert_error(429, "rate_limited");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The right token from the same address: refused as well, before it is looked at.
    admin
        .send(Method::GET, "/admin/plans", Some(TOKEN), None)
        .await
        .assert_error(429, "rate_limited");
    let spoofed = raw(
        &admin,
        Method::GET,
        "/admin/plans",
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-forwarded-for", "203.0.113.77"),
        ],
        None,
    )
    .await;
    spoofed.assert_error(429, "rate_limited");
    let logs = admin.gw.logs();
    assert!(
        logs.contains("admin: refused GET /admin/plans from 127.0.0.1: an unknown token"),
        "{logs}"
    );
    assert!(!logs.contains(guess), "a token reached the logs");
    assert!(!logs.contains(TOKEN), "a token reached the logs");
}

/// Admin tokens need 256 bits of estimated entropy: a weaker one is refused by `check`,
/// at start and by a reload (which keeps the running tokens); tokens from
/// `admin.tokens_file` are read again on every reload.
#[tokio::test]
async fn admin_tokens_need_entropy_and_are_reread_on_reload() {
    let pg = Postgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let weak = "admin-token-0123456789"; // 22 characters: about 134 bits
    std::fs::write(&file, format!("# operators\n{weak}\n")).unwrap();
    let section = |port: u16| {
        format!(
            "database: {{url: \"{}\"}}\nadmin:\n  address: 127.0.0.1:{port}\n  tokens_file: \"{}\"\n",
            pg.url(),
            file.display()
        )
    };
    let cfg = GatewayConfig::new();
    let out = Gateway::check(&base_yaml(&cfg, &section(free_port()))).await;
    assert!(!out.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("admin.tokens_file: 1 token(s) in")
            && out.stderr.contains("at least 256 bits of entropy"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(weak), "the weak token was printed");
    for low in ["a".repeat(64), "ab".repeat(40)] {
        std::fs::write(&file, &low).unwrap();
        let out = Gateway::check(&base_yaml(&cfg, &section(free_port()))).await;
        assert!(!out.success(), "{low} passed");
    }
    let port = free_port();
    let yaml = base_yaml(&cfg, &section(port));
    std::fs::write(&file, weak).unwrap();
    let failed = Gateway::start_expect_failure(GatewayConfig::new(), &yaml).await;
    assert_ne!(failed.code, Some(0));
    assert!(
        failed.stderr.contains("admin.tokens_file"),
        "{}",
        failed.stderr
    );

    // Start with TOKEN, switch the file to OTHER_TOKEN, reload: only OTHER_TOKEN works.
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let admin_cfg = GatewayConfig::new();
    let yaml = base_yaml(&admin_cfg, &section(port));
    let gw = Gateway::start(admin_cfg, &yaml).await;
    wait_for_port(port, Duration::from_secs(20)).await.unwrap();
    let admin = Admin { gw, port };
    assert_eq!(admin.get("/admin/plans").await.status, 200);
    std::fs::write(&file, format!("{OTHER_TOKEN}\n")).unwrap();
    let a = admin
        .send(Method::POST, "/admin/reload", Some(TOKEN), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["restart_needed"], json!([]));
    admin
        .send(Method::GET, "/admin/plans", Some(TOKEN), None)
        .await
        .assert_error(401, "unauthorized");
    let a = admin
        .send(Method::GET, "/admin/plans", Some(OTHER_TOKEN), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    // A weak token in the file: the reload is refused and OTHER_TOKEN stays.
    std::fs::write(&file, format!("{weak}\n")).unwrap();
    let a = admin
        .send(Method::POST, "/admin/reload", Some(OTHER_TOKEN), None)
        .await;
    let body = a.assert_error(422, "invalid_config");
    assert!(body.to_string().contains("admin.tokens_file"), "{body}");
    assert!(!body.to_string().contains(weak), "{body}");
    let a = admin
        .send(Method::GET, "/admin/plans", Some(OTHER_TOKEN), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    admin
        .send(Method::GET, "/admin/plans", Some(weak), None)
        .await
        .assert_error(401, "unauthorized");
}

/// Ids, plan names and scopes accepted by the admin API follow the file's rules: a
/// consumer id with spaces, commas or quotes (which would travel upstream as
/// `x-consumer-id: q"x, admin`) is 400 naming the field, and nothing is stored.
#[tokio::test]
async fn ids_follow_the_file_rules() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    for id in [
        "q\"x, admin",
        "a b",
        "a,b",
        "it's",
        "back\\slash",
        "tab\t",
        "é",
        "",
    ] {
        let body = admin
            .post("/admin/consumers", json!({"id": id}))
            .await
            .assert_error(400, "invalid_request");
        assert!(body["fields"]["id"].is_string(), "{id:?}: {body}");
    }
    let body = admin
        .post(
            "/admin/plans",
            json!({"name": "gold plan, x=\"1\"", "limits": [{"requests": 1, "per_seconds": 1}]}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["name"].is_string(), "{body}");
    let body = admin
        .post(
            "/admin/consumers",
            json!({"id": "fine", "plan": "no such, plan", "scopes": ["ok", "bad\"scope", "a b"]}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["plan"].is_string(), "{body}");
    assert!(body["fields"]["scopes[1]"].is_string(), "{body}");
    assert!(body["fields"]["scopes[2]"].is_string(), "{body}");
    let page = admin.get("/admin/consumers").await.json();
    assert_eq!(page["items"], json!([]), "{page}");
    // What the file accepts, the API accepts.
    admin
        .post_ok("/admin/consumers", json!({"id": "team-7_a.b:c/d@e"}), 201)
        .await;
}

/// Bodies must be one JSON object: an array (serde would fill the struct's fields from
/// it), `null`, a number or a string is 400, and nothing is created.
#[tokio::test]
async fn admin_bodies_must_be_json_objects() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    let bearer = format!("Bearer {TOKEN}");
    for body in [r#"["arr", null]"#, "null", "1", r#""x""#, " [] ", ""] {
        for path in ["/admin/consumers", "/admin/plans"] {
            let a = raw(
                &admin,
                Method::POST,
                path,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                Some(body),
            )
            .await;
            a.assert_error(400, "invalid_request");
        }
    }
    let page = admin.get("/admin/consumers").await.json();
    assert_eq!(page["items"], json!([]), "{page}");
    assert_eq!(admin.get("/admin/plans").await.json(), json!([]));
}

/// PostgreSQL's `jsonb` cannot store U+0000: metadata holding it, in a key or a string at
/// any depth, is a 400 naming the place (never a 500 or the database's message), on create
/// and on change; the document says so (the metadata schema's strings exclude it).
/// Metadata numbers at the edges of f64 are stored and read back (PostgreSQL prints
/// `-1.7976931348623157e308` as 309 digits, which serde_json's default float parser read as
/// out of range: a 500 that schemathesis found).
#[tokio::test]
async fn metadata_numbers_at_the_edges_of_f64_round_trip() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    let metadata = json!({"min": f64::MIN, "max": f64::MAX, "tiny": 5e-324, "big": 1e300});
    let created = admin
        .post_ok(
            "/admin/consumers",
            json!({"id": "edges", "metadata": metadata}),
            201,
        )
        .await;
    assert_eq!(created["metadata"], metadata);
    let read = admin.get("/admin/consumers/edges").await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json()["metadata"], metadata);
}

#[tokio::test]
async fn metadata_with_a_nul_character_is_refused_naming_the_field() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    for (metadata, field) in [
        (json!({"team": "a\u{0}b"}), "metadata.team"),
        (
            json!({"deep": {"list": [1, "ok", "x\u{0}"]}}),
            "metadata.deep.list[2]",
        ),
        (json!({"k\u{0}": 1}), "metadata.k\\u{0}"),
    ] {
        let error = admin
            .post(
                "/admin/consumers",
                json!({"id": "nul", "metadata": metadata}),
            )
            .await
            .assert_error(400, "invalid_request");
        assert!(error["fields"][field].is_string(), "{field}: {error}");
    }
    admin
        .post_ok("/admin/consumers", json!({"id": "nul"}), 201)
        .await;
    let error = admin
        .patch(
            "/admin/consumers/nul",
            json!({"metadata": {"a": ["\u{0}"]}}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert!(error["fields"]["metadata.a[0]"].is_string(), "{error}");
    assert_eq!(
        admin.get("/admin/consumers/nul").await.json()["metadata"],
        json!({})
    );
    let doc = admin
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .json();
    let value = &doc["components"]["schemas"]["MetadataValue"];
    assert!(value.to_string().contains("u0000"), "{value}");
}

/// A filter holding U+0000 (which no stored text can hold) matches nothing: an empty
/// answer, not the database driver's refusal as a 400.
#[tokio::test]
async fn filters_holding_a_nul_character_match_nothing() {
    let pg = Postgres::start().await;
    let admin = Admin::start(Some(&pg)).await;
    admin
        .post_ok("/admin/consumers", json!({"id": "acme"}), 201)
        .await;
    for (path, empty) in [
        ("/admin/audit?actor=a%00b", json!([])),
        ("/admin/audit?target_type=consumer&target_id=%00", json!([])),
        (
            "/admin/consumers?plan=p%00",
            json!({"items": [], "next_after": null}),
        ),
    ] {
        let a = admin.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        assert_eq!(a.json(), empty, "{path}");
    }
    let usage = admin.get("/admin/usage?consumer=%00").await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    assert_eq!(usage.json()["rows"], json!([]));
    // Without the NUL the same filters find what is there.
    let audit = admin.get("/admin/audit?target_type=consumer").await.json();
    assert_eq!(audit[0]["target_id"], "acme", "{audit}");
    // A paging cursor is read up to its NUL: the ids after `ab\0z` are the ids after `ab`.
    let page = admin.get("/admin/consumers?after=ab%00z").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.json()["items"][0]["id"], "acme", "{}", page.text);
    let page = admin.get("/admin/consumers?after=acme%00").await.json();
    assert_eq!(page["items"], json!([]), "{page}");
}
