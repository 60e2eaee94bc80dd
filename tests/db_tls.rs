//! TLS to PostgreSQL (`database.tls`) against a real server that accepts TLS connections
//! only (`Postgres::start_with_tls`): the pool in each mode, the change listener, and the
//! `tollgate` binary end to end. Each test starts its own server and CA.

mod support;
use support::*;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tollgate::config::DatabaseTls;
use tollgate::db::listen::{spawn_listener_with, ListenerOptions};
use tollgate::db::plans::{self, Algorithm, Limit, NewPlan};
use tollgate::db::{migrate, Change, Db, DbError, DbOptions};

/// Whether the connections the pools opened (application name `tollgate`) use TLS, one
/// line per connection.
const POOL_SSL: &str = "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                        WHERE a.application_name = 'tollgate'";

/// One connection at most, so the server shows exactly the one the pool opened.
fn options(tls: DatabaseTls) -> DbOptions {
    DbOptions {
        pool_size: 1,
        tls,
        ..DbOptions::default()
    }
}

/// `verify_full` trusting the CA of `certs` only.
fn verify_full(certs: &Certs) -> DatabaseTls {
    DatabaseTls::VerifyFull {
        ca_file: Some(certs.ca_path().to_path_buf()),
    }
}

#[tokio::test]
async fn require_encrypts_without_verifying_the_certificate() {
    // A certificate from a CA nobody trusts, for a name that is not the host.
    let certs = Certs::new();
    let pg = Postgres::start_with_tls(&certs.leaf("pg", &["pg.example.test"])).await;

    let db = Db::connect_with(&pg.url(), &options(DatabaseTls::Require))
        .await
        .expect("require connects");
    db.health_check().await.expect("health check");
    assert_eq!(pg.psql(POOL_SSL).await, "t", "the pool's connection is TLS");
    db.close();

    // Without TLS the server refuses (pg_hba.conf has `hostssl` lines only).
    let e = Db::connect_with(&pg.url(), &options(DatabaseTls::Disable))
        .await
        .expect_err("a plain connection is refused");
    assert!(e.to_string().contains("no encryption"), "{e}");
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name() {
    // The certificate names `localhost` only, not 127.0.0.1.
    let certs = Certs::new();
    let pg = Postgres::start_with_tls(&certs.leaf("pg", &["localhost"])).await;
    let by_name = pg.url().replace("127.0.0.1", "localhost");

    let db = Db::connect_with(&by_name, &options(verify_full(&certs)))
        .await
        .expect("verify_full with the CA connects");
    assert_eq!(pg.psql(POOL_SSL).await, "t", "the pool's connection is TLS");
    db.close();

    // The system's roots do not hold the test CA, nor does another CA's file: refused,
    // as an error (the pool cannot connect), not a panic.
    let other = Certs::new();
    for (tls, why) in [
        (DatabaseTls::VerifyFull { ca_file: None }, "system roots"),
        (verify_full(&other), "another CA"),
    ] {
        let e = Db::connect_with(&by_name, &options(tls))
            .await
            .expect_err(why);
        assert!(matches!(e, DbError::Unavailable(_)), "{why}: {e}");
        assert!(
            e.to_string().contains("certificate verify failed"),
            "{why}: {e}"
        );
    }

    // The right CA, but an address the certificate does not name.
    let e = Db::connect_with(&pg.url(), &options(verify_full(&certs)))
        .await
        .expect_err("127.0.0.1 is not in the certificate");
    assert!(e.to_string().contains("mismatch"), "{e}");
}

#[tokio::test]
async fn the_change_listener_connects_over_tls() {
    let certs = Certs::new();
    let pg = Postgres::start_with_tls(&certs.leaf("pg", &["localhost", "127.0.0.1"])).await;
    let tls = verify_full(&certs);
    let db = Db::connect_with(&pg.url(), &options(tls.clone()))
        .await
        .expect("connect");
    migrate(&db).await.expect("migrate");

    let (changed, mut changes) = mpsc::unbounded_channel();
    let (resynced, mut resyncs) = mpsc::unbounded_channel();
    let _listener = spawn_listener_with(
        &pg.url(),
        &tls,
        ListenerOptions::default(),
        move |change| {
            let _ = changed.send(change);
        },
        move || {
            let _ = resynced.send(());
        },
    )
    .expect("spawn listener");
    tokio::time::timeout(Duration::from_secs(10), resyncs.recv())
        .await
        .expect("the listener did not connect within 10 s");

    let plan = NewPlan {
        name: "gold".into(),
        algorithm: Algorithm::FixedWindow,
        limits: vec![Limit {
            requests: 10,
            per_seconds: 1,
            burst: None,
        }],
        concurrency: None,
        block_for_seconds: None,
    };
    plans::create(&db, "test", &plan).await.expect("plan");
    let change = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("no notification within 5 s");
    assert_eq!(
        change,
        Some(Change::Plan {
            name: "gold".into()
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_on_a_tls_only_database() {
    const TOKEN: &str = "db-tls-admin-token-8c6e4a2f0d9b7c5e3a1d8f6b4c2e0a9d7b5f3c1e";
    let certs = Certs::new();
    let pg = Postgres::start_with_tls(&certs.leaf("pg", &["localhost", "127.0.0.1"])).await;
    let upstream = TestUpstream::start("a").await;
    let admin_port = free_port();
    let cfg = GatewayConfig::new()
        .with_env("TG_DB_TLS_PEPPER", "db-tls-test-pepper-0123456789")
        .with_env("TOLLGATE_ADMIN_TOKENS", TOKEN);
    let yaml = cfg.render(&format!(
        "database:
  url: \"{}\"
  tls: {{mode: verify_full, ca_file: \"{}\"}}
auth: {{api_key: {{pepper_env: TG_DB_TLS_PEPPER}}}}
upstreams: [{{name: a, targets: [{{address: \"{}\"}}]}}]
routes:
  - {{name: api, path_prefix: /, upstream: a, auth: required}}
admin:
  address: 127.0.0.1:{admin_port}
",
        pg.url(),
        certs.ca_path().display(),
        upstream.address()
    ));
    // The gateway migrates at start, so it has connected by the time it serves.
    let gw = Gateway::start(cfg, &yaml).await;
    wait_for_port(admin_port, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("admin port: {e}\n{}", gw.logs()));
    let admin = |path: &str| {
        gw.http()
            .post(format!("http://127.0.0.1:{admin_port}{path}"))
            .bearer_auth(TOKEN)
    };

    // The admin API's pool.
    let plans = gw
        .http()
        .get(format!("http://127.0.0.1:{admin_port}/admin/plans"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /admin/plans");
    assert_eq!(plans.status(), 200, "{}", gw.logs());
    let created = admin("/admin/consumers")
        .json(&json!({"id": "alice"}))
        .send()
        .await
        .expect("create consumer");
    assert_eq!(created.status(), 201, "{}", gw.logs());
    let key: Value = admin("/admin/consumers/alice/keys")
        .json(&json!({}))
        .send()
        .await
        .expect("create key")
        .json()
        .await
        .expect("key JSON");
    let secret = key["secret"].as_str().expect("secret").to_string();
    let key_id = key["key"]["id"].as_str().expect("key id").to_string();

    // The proxy's pool: the key is looked up in the database (and then cached).
    let status = || async {
        gw.http()
            .get(gw.url("/x"))
            .header("x-api-key", &secret)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(status().await, 200, "{}", gw.logs());

    // The change listener: the revocation evicts the cached key within a second or so
    // (without the notification the cache would keep it for 30 s).
    let revoked = admin(&format!("/admin/keys/{key_id}/revoke"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status().await != 403 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status().await, 403, "{}", gw.logs());

    let ssl = pg.psql(POOL_SSL).await;
    assert!(
        !ssl.is_empty() && ssl.lines().all(|line| line == "t"),
        "{ssl}"
    );
}
