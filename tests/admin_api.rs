//! The admin API (README "Admin API"), against the real `tollgate` binary and a real
//! PostgreSQL: every endpoint's success and failure paths, authentication, the audit trail,
//! the one-time display of key secrets, config reload, and the OpenAPI document.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const PEPPER: &str = "pepper-for-the-admin-api-tests";
const TOKEN: &str = "admin-token-one-0123456789";
const OTHER_TOKEN: &str = "admin-token-two-9876543210";
const READER_TOKEN: &str = "admin-reader-token-5555555555";

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
        let port = free_port();
        let mut cfg = GatewayConfig::new()
            .with_env("TOLLGATE_ADMIN_TOKENS", &format!("{TOKEN}, {OTHER_TOKEN}"))
            .with_env("TOLLGATE_ADMIN_READ_ONLY_TOKENS", READER_TOKEN);
        if pepper {
            cfg = cfg.with_env("TOLLGATE_KEY_PEPPER", PEPPER);
        }
        let database = pg
            .map(|pg| format!("database: {{url: \"{}\"}}\n", pg.url()))
            .unwrap_or_default();
        let yaml = base_yaml(
            &cfg,
            &format!("{database}admin:\n  address: 127.0.0.1:{port}\n"),
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
        "must be at least 1"
    );
    assert_eq!(body["fields"]["limits[1].burst"], "must be at least 1");
    assert_eq!(body["fields"]["name"], "must be 1 to 128 bytes long");
    assert!(body["fields"]["concurrency"].is_string(), "{body}");
    let body = admin
        .post("/admin/plans", json!({"name": "empty", "limits": []}))
        .await
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["limits"].is_string());

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
    let body = admin
        .post("/admin/consumers", json!({"id": "c9", "plan": "nope"}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(body["fields"]["plan"], "no plan named \"nope\"");
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
        .assert_error(400, "invalid_request");
    assert!(body["fields"]["plan"].is_string());
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
    admin
        .get("/admin/usage?from=2026-02-01&to=2026-01-01")
        .await
        .assert_error(400, "invalid_request");
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
    let a = admin.delete("/admin/consumers/acme/limits").await;
    assert_eq!(a.status, 204, "{}", a.text);
    admin
        .delete("/admin/consumers/ghost/limits")
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
        "DELETE /admin/consumers/{id}/limits",
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
