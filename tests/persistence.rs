//! The proxy on PostgreSQL: keys stored in the database work at the proxy, a revoked key
//! stops working on every instance within a second (LISTEN/NOTIFY), plans come from the
//! database, and usage counts written in batches add up exactly — across a database
//! restart and a SIGTERM; keys managed through the admin API (rotation grace, revocation).

mod support;

use std::time::{Duration, Instant};
use support::*;
use tollgate::auth::api_key::{generate, KeyHasher};
use tollgate::db::{self, Db};

const PEPPER: &str = "persistence-test-pepper-0123456789";

/// Creates consumer `id` on `plan` with one key in the database; returns the key.
async fn consumer_with_key(db: &Db, id: &str, plan: Option<&str>) -> String {
    let mut consumer = db::consumers::NewConsumer::new(id);
    consumer.plan = plan.map(str::to_string);
    db::consumers::create(db, "test", &consumer)
        .await
        .expect("consumer");
    let key = generate(&ring::rand::SystemRandom::new()).expect("random");
    db::keys::create(
        db,
        "test",
        &db::keys::NewApiKey {
            id: Some(format!("{id}-key")),
            consumer_id: id.to_string(),
            name: "test".into(),
            prefix: key.prefix.clone(),
            hash: KeyHasher::new(PEPPER.as_bytes()).hash(&key.secret),
            scopes: None,
            expires_at: None,
        },
    )
    .await
    .expect("key");
    key.secret
}

fn yaml(cfg: &GatewayConfig, pg: &Postgres, upstream: &TestUpstream, flush: &str) -> String {
    cfg.render(&format!(
        "database: {{url: \"{}\", usage_flush_interval: {flush}}}
auth: {{api_key: {{pepper_env: TG_PERSISTENCE_PEPPER}}}}
upstreams: [{{name: a, targets: [{{address: \"{}\"}}]}}]
routes:
  - {{name: api, path_prefix: /, upstream: a, auth: required}}
",
        pg.url(),
        upstream.address()
    ))
}

async fn start_gateway(pg: &Postgres, upstream: &TestUpstream, flush: &str) -> Gateway {
    let cfg = GatewayConfig::new().with_env("TG_PERSISTENCE_PEPPER", PEPPER);
    let text = yaml(&cfg, pg, upstream, flush);
    Gateway::start(cfg, &text).await
}

async fn status(gw: &Gateway, key: &str) -> u16 {
    gw.http()
        .get(gw.url("/x"))
        .header("x-api-key", key)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_on_every_instance_within_a_second() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    // The first gateway migrates the empty database at start.
    let one = start_gateway(&pg, &upstream, "1s").await;
    let two = start_gateway(&pg, &upstream, "1s").await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let key = consumer_with_key(&db, "alice", None).await;

    // Valid on both, and now cached on both.
    assert_eq!(status(&one, &key).await, 200, "{}", one.logs());
    assert_eq!(status(&two, &key).await, 200);
    assert_eq!(
        status(&one, "tg_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB").await,
        401
    );

    db::keys::revoke(&db, "test", "alice-key").await.unwrap();
    let revoked_at = Instant::now();
    let mut refused = [false, false];
    while refused.contains(&false) && revoked_at.elapsed() < Duration::from_secs(5) {
        for (i, gw) in [&one, &two].into_iter().enumerate() {
            if !refused[i] && status(gw, &key).await == 403 {
                refused[i] = true;
                println!("instance {i}: refused after {:?}", revoked_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused,
        [true, true],
        "the revoked key still works somewhere"
    );
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "revocation took {:?} to reach both instances",
        revoked_at.elapsed()
    );

    // A disabled consumer is refused everywhere too.
    let key_b = consumer_with_key(&db, "bob", None).await;
    assert_eq!(status(&two, &key_b).await, 200);
    let disable = db::consumers::ConsumerUpdate {
        status: Some(tollgate::auth::store::Status::Disabled),
        ..Default::default()
    };
    db::consumers::update(&db, "test", "bob", &disable)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while status(&two, &key_b).await != 403 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&two, &key_b).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_from_the_database_limit_and_follow_changes() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let gw = start_gateway(&pg, &upstream, "1s").await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    db::plans::create(
        &db,
        "test",
        &db::plans::NewPlan {
            name: "tiny".into(),
            algorithm: db::plans::Algorithm::FixedWindow,
            limits: vec![db::plans::Limit {
                requests: 2,
                per_seconds: 3600,
                burst: None,
            }],
            concurrency: None,
        },
    )
    .await
    .unwrap();
    let key = consumer_with_key(&db, "carol", Some("tiny")).await;
    // The plan reaches the gateway by notification.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut statuses = Vec::new();
    while Instant::now() < deadline {
        statuses.clear();
        for _ in 0..3 {
            statuses.push(status(&gw, &key).await);
        }
        if statuses.contains(&429) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "plan never applied: {statuses:?}\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_across_a_database_restart_and_a_sigterm() {
    let mut pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let mut gw = start_gateway(&pg, &upstream, "300ms").await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let key = consumer_with_key(&db, "dave", None).await;

    let mut sent = 0u64;
    for _ in 0..40 {
        assert_eq!(status(&gw, &key).await, 200);
        sent += 1;
    }
    // Stop the database: counts wait in memory. The key is cached, so requests still pass.
    pg.stop().await;
    for _ in 0..30 {
        assert_eq!(status(&gw, &key).await, 200);
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    pg.start_again().await;
    for _ in 0..30 {
        assert_eq!(status(&gw, &key).await, 200);
        sent += 1;
    }
    // SIGTERM: the last counts are written before the process exits.
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(20)).await.is_some(),
        "gateway did not exit"
    );

    let db = Db::connect(&pg.url(), 1).await.unwrap();
    let today = db::Day::today();
    let mut query = db::usage::UsageQuery::days(today.add_days(-1), today.add_days(1));
    query.consumer_id = Some("dave".into());
    let rows = db::usage::query(&db, &query).await.unwrap();
    let counted: u64 = rows.iter().map(|r| r.allowed).sum();
    assert_eq!(counted, sent, "usage rows: {rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.key_id.as_deref() == Some("dave-key") && r.route == "api"));
}

/// A key made through the admin API works at the proxy; rotation keeps the old key working
/// for the grace period only; revocation through the API stops the key on two running
/// instances within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_managed_through_the_admin_api_work_and_revoke_everywhere() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let admin_port = free_port();
    let cfg = GatewayConfig::new().with_env("TG_PERSISTENCE_PEPPER", PEPPER);
    let text = format!(
        "{}admin: {{address: \"127.0.0.1:{admin_port}\"}}\n",
        yaml(&cfg, &pg, &upstream, "1s")
    );
    let one = Gateway::start(cfg, &text).await;
    let two = start_gateway(&pg, &upstream, "1s").await;
    wait_for_port(admin_port, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("admin port: {e}\n{}", one.logs()));
    let admin = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        let request = one
            .http()
            .request(method, format!("http://127.0.0.1:{admin_port}{path}"))
            .json(&body);
        async move {
            let resp = request.send().await.expect("admin API");
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<serde_json::Value>().await.expect("JSON")
        }
    };

    admin(
        reqwest::Method::POST,
        "/admin/consumers",
        serde_json::json!({"id": "erin"}),
    )
    .await;
    let created = admin(
        reqwest::Method::POST,
        "/admin/consumers/erin/keys",
        serde_json::json!({"name": "ci"}),
    )
    .await;
    let first = created["secret"].as_str().unwrap().to_string();
    let first_id = created["key"]["id"].as_str().unwrap().to_string();
    assert_eq!(status(&one, &first).await, 200, "{}", one.logs());
    assert_eq!(status(&two, &first).await, 200);

    // Rotation with a 2 s grace: both keys work, then only the new one.
    let rotated = admin(
        reqwest::Method::POST,
        &format!("/admin/keys/{first_id}/rotate"),
        serde_json::json!({"grace_seconds": 2}),
    )
    .await;
    let second = rotated["secret"].as_str().unwrap().to_string();
    let second_id = rotated["new"]["id"].as_str().unwrap().to_string();
    for gw in [&one, &two] {
        assert_eq!(status(gw, &first).await, 200, "within the grace period");
        assert_eq!(status(gw, &second).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&two, &first).await != 403 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(&two, &first).await,
        403,
        "the old key outlived its grace"
    );
    assert_eq!(status(&one, &first).await, 403);
    assert_eq!(status(&one, &second).await, 200);

    // Revocation through the API reaches both instances within a second.
    admin(
        reqwest::Method::POST,
        &format!("/admin/keys/{second_id}/revoke"),
        serde_json::json!({}),
    )
    .await;
    let revoked_at = Instant::now();
    let mut refused = [false, false];
    while refused.contains(&false) && revoked_at.elapsed() < Duration::from_secs(3) {
        for (i, gw) in [&one, &two].into_iter().enumerate() {
            refused[i] = refused[i] || status(gw, &second).await == 403;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "revocation reached both instances after {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(
        refused,
        [true, true],
        "the revoked key still works somewhere"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
}
