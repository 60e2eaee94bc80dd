//! The proxy on PostgreSQL: keys stored in the database work at the proxy, a revoked key
//! stops working on every instance within a second (LISTEN/NOTIFY), plans come from the
//! database, and usage counts written in batches add up exactly — across a database
//! restart and a SIGTERM; keys managed through the admin API (rotation grace, revocation).

mod support;

use std::time::{Duration, Instant};
use support::*;
use tollgate::auth::api_key::generate;
use tollgate::db::{self, Db};

const PEPPER: &str = "persistence-test-pepper-0123456789";

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
    let key = consumer_with_key(&db, PEPPER, "alice", None).await;

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
    let key_b = consumer_with_key(&db, PEPPER, "bob", None).await;
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
            block_for_seconds: None,
        },
    )
    .await
    .unwrap();
    let key = consumer_with_key(&db, PEPPER, "carol", Some("tiny")).await;
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

/// `block_for_seconds` on a database plan: the admin API accepts it with the file's rules
/// (1 s to 366 days, a 400 naming the field otherwise) and returns it; a consumer on the
/// plan that exceeds it is then refused for the block's length (Retry-After well past its
/// 2 s window), the block shows in the consumer's standing, and the reset clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_plan_blocks_a_consumer_for_its_block_for_seconds() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let admin_port = free_port();
    let cfg = GatewayConfig::new().with_env("TG_PERSISTENCE_PEPPER", PEPPER);
    let text = format!(
        "{}admin: {{address: \"127.0.0.1:{admin_port}\"}}\n",
        yaml(&cfg, &pg, &upstream, "1s")
    );
    let gw = Gateway::start(cfg, &text).await;
    wait_for_port(admin_port, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("admin port: {e}\n{}", gw.logs()));
    let admin = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut request = gw
            .http()
            .request(method, format!("http://127.0.0.1:{admin_port}{path}"))
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let resp = request.send().await.expect("admin API");
            let code = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (
                code,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            )
        }
    };
    let window = serde_json::json!([{"requests": 2, "per_seconds": 2}]);
    for bad in [0, 31_622_401] {
        let (code, error) = admin(
            reqwest::Method::POST,
            "/admin/plans",
            Some(serde_json::json!({"name": "bad", "limits": window, "block_for_seconds": bad})),
        )
        .await;
        assert_eq!(code, 400, "{bad}: {error}");
        assert!(
            error["fields"]["block_for_seconds"].is_string(),
            "{bad}: {error}"
        );
    }
    let (code, plan) = admin(
        reqwest::Method::POST,
        "/admin/plans",
        Some(serde_json::json!({"name": "strict", "limits": window, "block_for_seconds": 600})),
    )
    .await;
    assert_eq!(code, 201, "{plan}");
    assert_eq!(plan["block_for_seconds"], 600, "{plan}");
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let key = consumer_with_key(&db, PEPPER, "frank", Some("strict")).await;

    // Two pass, the third is refused by the window and starts the block.
    let mut passed = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let resp = gw
            .http()
            .get(gw.url("/x"))
            .header("x-api-key", &key)
            .send()
            .await
            .expect("proxy");
        match resp.status().as_u16() {
            200 => passed += 1,
            429 => {
                let retry = resp.headers()["retry-after"].to_str().unwrap().to_string();
                break retry.parse::<u64>().unwrap();
            }
            other => panic!("status {other}"),
        }
        assert!(Instant::now() < deadline, "never refused");
    };
    assert!(passed >= 2, "{passed}");
    assert!(retry > 500, "the block's Retry-After: {retry}");
    let (_, standing) = admin(reqwest::Method::GET, "/admin/consumers/frank/limits", None).await;
    let block = standing["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "block")
        .cloned()
        .unwrap_or_else(|| panic!("no block: {standing}"));
    assert_eq!(block["remaining"], 0, "{standing}");
    assert_eq!(block["window"], 600, "{standing}");
    assert_eq!(status(&gw, &key).await, 429);

    // The reset ends it; a PATCH can remove the block.
    let (code, _) = admin(
        reqwest::Method::POST,
        "/admin/consumers/frank/limits/reset",
        None,
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(status(&gw, &key).await, 200);
    let (code, plan) = admin(
        reqwest::Method::PATCH,
        "/admin/plans/strict",
        Some(serde_json::json!({"block_for_seconds": null})),
    )
    .await;
    assert_eq!(code, 200, "{plan}");
    assert_eq!(plan["block_for_seconds"], serde_json::Value::Null, "{plan}");
    assert_eq!(
        pg.psql(
            "SELECT coalesce(block_for_seconds::text, 'null') FROM plans WHERE name = 'strict'"
        )
        .await,
        "null"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_across_a_database_restart_and_a_sigterm() {
    let mut pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let mut gw = start_gateway(&pg, &upstream, "300ms").await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let key = consumer_with_key(&db, PEPPER, "dave", None).await;

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

/// Store lookups of API keys so far (`tollgate_key_lookups_total{outcome}`).
async fn key_lookups(gw: &Gateway, outcome: &str) -> f64 {
    metric(
        &gw.metrics_text().await,
        "tollgate_key_lookups_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Transactions PostgreSQL has finished in the `tollgate` database (every store lookup is
/// one); the statistics lag by up to a second.
async fn transactions(pg: &Postgres) -> u64 {
    pg.psql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'tollgate'")
        .await
        .parse()
        .expect("a count")
}

/// What a flood of random keys got: statuses, and store lookups made meanwhile.
struct Flood {
    statuses: std::collections::BTreeMap<u16, u64>,
    known_key_statuses: std::collections::BTreeMap<u16, u64>,
    sent: u64,
    elapsed: Duration,
}

/// Sends `per_second` distinct, well-formed random API keys per second for `seconds`,
/// open loop (each 10 ms tick starts its requests whatever the earlier ones are doing, at
/// most 128 in flight: below the gateway's 256 connections per client address, so a slow
/// machine cannot turn the flood into connection refusals), and the known key `known` once
/// per tick.
async fn flood(gw: &Gateway, known: &str, per_second: u64, seconds: u64) -> Flood {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let rng = ring::rand::SystemRandom::new();
    let client = gw.http().clone();
    let url = gw.url("/x");
    let per_tick = (per_second / 100).max(1);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(128));
    let statuses = Arc::new(Mutex::new(BTreeMap::new()));
    let known_key_statuses = Arc::new(Mutex::new(BTreeMap::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    for _ in 0..seconds * 100 {
        ticks.tick().await;
        let keys = (0..per_tick).map(|_| (generate(&rng).expect("random").secret, &statuses));
        let known_one = std::iter::once((known.to_string(), &known_key_statuses));
        for (key, into) in keys.chain(known_one) {
            let permit = Arc::clone(&in_flight).acquire_owned().await.expect("open");
            let (client, url, into) = (client.clone(), url.clone(), Arc::clone(into));
            tasks.push(tokio::spawn(async move {
                let status = client
                    .get(url)
                    .header("x-api-key", key)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                *into.lock().unwrap().entry(status).or_insert(0) += 1;
                drop(permit);
            }));
        }
        sent += per_tick;
    }
    futures::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    let take = |m: &Arc<Mutex<BTreeMap<u16, u64>>>| m.lock().unwrap().clone();
    Flood {
        statuses: take(&statuses),
        known_key_statuses: take(&known_key_statuses),
        sent,
        elapsed,
    }
}

/// A flood of distinct random API keys from one address reaches the store only for the
/// address's unknown-key budget (`auth.key_failures`, 20 per minute here): after that its
/// keys are refused with 429 `too_many_key_failures` without a lookup, while a known key
/// keeps working from the same address, also when its cache entry (1 s here) expires and
/// it is looked up again; another address still has its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_api_keys_reaches_the_store_only_for_the_address_budget() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new().with_env("TG_PERSISTENCE_PEPPER", PEPPER);
    let text = yaml(&cfg, &pg, &upstream, "1s").replace(
        "auth: {api_key: {pepper_env: TG_PERSISTENCE_PEPPER}}",
        "auth: {api_key: {pepper_env: TG_PERSISTENCE_PEPPER}, \
         cache: {ttl: 1s}, key_failures: {max: 20, per: 1m}, \
         trusted_proxies: [\"127.0.0.1/32\"], client_ip_header: x-forwarded-for}",
    );
    let gw = Gateway::start(cfg, &text).await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let alice = consumer_with_key(&db, PEPPER, "alice", None).await;
    assert_eq!(status(&gw, &alice).await, 200, "{}", gw.logs());
    let before = key_lookups(&gw, "store").await;
    let refused_before = key_lookups(&gw, "refused").await;

    // 1,000 random keys over 2 s.
    let flood = flood(&gw, &alice, 500, 2).await;
    assert_eq!(
        flood.statuses,
        std::collections::BTreeMap::from([(401, 20), (429, flood.sent - 20)]),
        "20 unknown keys are looked up and refused, the rest refused unlooked-up"
    );
    assert_eq!(
        flood.known_key_statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "the known key kept working: {:?}",
        flood.known_key_statuses
    );
    // Every 429 was answered without a lookup; the store saw the 20 unknown keys and the
    // known key's lookups once its cache entry had expired.
    assert_eq!(
        key_lookups(&gw, "refused").await - refused_before,
        (flood.sent - 20) as f64
    );
    let lookups = key_lookups(&gw, "store").await - before;
    let known_requests: u64 = flood.known_key_statuses.values().sum();
    assert!(
        lookups >= 20.0 && lookups - 20.0 <= known_requests as f64,
        "{lookups} store lookups for 20 unknown keys and {known_requests} known-key requests"
    );
    assert_eq!(upstream.hits(), 1 + flood.known_key_statuses[&200]);

    // The answer is the documented 429, and says when to come back.
    let refused = gw
        .http()
        .get(gw.url("/x"))
        .header("x-api-key", "tg_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")
        .send()
        .await
        .unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    Answer::read(refused)
        .await
        .assert_error(429, "too_many_key_failures");

    // Another client address (behind the trusted proxy) is looked up as usual.
    let other = gw
        .http()
        .get(gw.url("/x"))
        .header("x-api-key", "tg_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    Answer::read(other)
        .await
        .assert_error(401, "invalid_api_key");
}

/// The report figure: 5,000 random keys per second for 10 s at one gateway on
/// PostgreSQL, while a known key is used 100 times a second. Prints what PostgreSQL saw.
/// Run with `cargo test --test persistence -- --ignored --nocapture flood_measurement`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the README, not a check: ~50,000 requests"]
async fn flood_measurement() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let gw = start_gateway(&pg, &upstream, "1s").await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let alice = consumer_with_key(&db, PEPPER, "alice", None).await;
    assert_eq!(status(&gw, &alice).await, 200, "{}", gw.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (lookups, xacts) = (key_lookups(&gw, "store").await, transactions(&pg).await);
    let flood = flood(&gw, &alice, 5000, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (lookups_after, xacts_after) = (key_lookups(&gw, "store").await, transactions(&pg).await);
    let secs = flood.elapsed.as_secs_f64();
    println!(
        "sent {} random keys in {secs:.1} s ({:.0}/s): {:?}; known key: {:?}; \
         store lookups {}; PostgreSQL transactions {} ({:.1}/s, usage flushes included)",
        flood.sent,
        flood.sent as f64 / secs,
        flood.statuses,
        flood.known_key_statuses,
        lookups_after - lookups,
        xacts_after - xacts,
        (xacts_after - xacts) as f64 / secs,
    );
}

/// A plan stored in the database that the limiter cannot run (written behind the admin
/// API's back: a token bucket refilling its burst over 1,000 days) neither stops an
/// instance from starting nor a plan change from applying: it is skipped with an error
/// log and `tollgate_invalid_plans`, and its consumers get the default plan (none here:
/// unlimited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_stored_plan_is_skipped_at_start_and_on_reload() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let first = start_gateway(&pg, &upstream, "1s").await;
    pg.psql(
        "INSERT INTO plans (name, algorithm, limits) VALUES ('broken', 'token_bucket', \
         '[{\"requests\": 1, \"per_seconds\": 86400, \"burst\": 1000}]')",
    )
    .await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let dave = consumer_with_key(&db, PEPPER, "dave", Some("broken")).await;

    // A valid plan change still applies on the running instance.
    db::plans::create(
        &db,
        "test",
        &db::plans::NewPlan {
            name: "tiny".into(),
            algorithm: db::plans::Algorithm::FixedWindow,
            limits: vec![db::plans::Limit {
                requests: 1,
                per_seconds: 3600,
                burst: None,
            }],
            concurrency: None,
            block_for_seconds: None,
        },
    )
    .await
    .unwrap();
    let carol = consumer_with_key(&db, PEPPER, "carol", Some("tiny")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&first, &carol).await != 429 {
        assert!(
            Instant::now() < deadline,
            "plan tiny never applied\n{}",
            first.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        first.logs().contains("stored plan skipped"),
        "{}",
        first.logs()
    );

    // A new instance starts, and serves dave (unlimited) and carol (limited).
    let second = start_gateway(&pg, &upstream, "1s").await;
    for _ in 0..5 {
        assert_eq!(status(&second, &dave).await, 200, "{}", second.logs());
    }
    assert_eq!(status(&second, &carol).await, 200);
    assert_eq!(status(&second, &carol).await, 429);
    assert!(second.logs().contains("plan broken"), "{}", second.logs());
    assert_eq!(
        metric(&second.metrics_text().await, "tollgate_invalid_plans", &[]),
        Some(1.0)
    );
}

/// The pool's statement timeout (`database.statement_timeout`) cancels a query stuck on a
/// lock: while a transaction holds `api_keys` locked for 8 s, an uncached key's lookup is
/// cancelled after 300 ms and answered 503 `credential_store_unavailable` (without the
/// timeout it would wait for the lock and pass); once the lock is gone the key works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_query_stuck_on_a_lock_is_cancelled_by_the_statement_timeout() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new().with_env("TG_PERSISTENCE_PEPPER", PEPPER);
    let text = yaml(&cfg, &pg, &upstream, "1s").replace(
        "usage_flush_interval: 1s}",
        "usage_flush_interval: 1s, statement_timeout: 300ms}",
    );
    let gw = Gateway::start(cfg, &text).await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let alice = consumer_with_key(&db, PEPPER, "alice", None).await;

    let lock =
        pg.psql("BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT;");
    let during = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while pg
            .psql(
                "SELECT count(*) FROM pg_locks WHERE relation = 'api_keys'::regclass \
                 AND mode = 'AccessExclusiveLock' AND granted",
            )
            .await
            != "1"
        {
            assert!(Instant::now() < deadline, "the lock was never taken");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = gw
            .http()
            .get(gw.url("/x"))
            .header("x-api-key", &alice)
            .send()
            .await
            .expect("answered");
        Answer::read(resp).await
    };
    let (_, during) = tokio::join!(lock, during);
    during.assert_error(503, "credential_store_unavailable");
    assert_eq!(status(&gw, &alice).await, 200, "{}", gw.logs());
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counted_before_a_drain_timeout_is_still_written() {
    let pg = Postgres::start().await;
    let upstream = TestUpstream::start("a").await;
    // A long flush interval: only the shutdown flush can write these counts. A grace
    // period that a slow request outlasts.
    let cfg = GatewayConfig::new().with_env("TG_PERSISTENCE_PEPPER", PEPPER);
    let text = yaml(&cfg, &pg, &upstream, "1h").replace("grace_period: 0s", "grace_period: 1s");
    let mut gw = Gateway::start(cfg, &text).await;
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    let key = consumer_with_key(&db, PEPPER, "erin", None).await;
    let sent = 25u64;
    for _ in 0..sent {
        assert_eq!(status(&gw, &key).await, 200);
    }
    // A request still in flight when the grace period ends.
    let slow = {
        let client = gw.http().clone();
        let url = gw.url("/__sleep/30000");
        let key = key.clone();
        tokio::spawn(async move { client.get(url).header("x-api-key", key).send().await })
    };
    let started = Instant::now();
    while upstream.hits() < sent + 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(20)).await.is_some(),
        "gateway did not exit"
    );
    assert!(
        gw.stderr().contains("still in flight") || gw.stdout().contains("still in flight"),
        "the drain did not time out: {}",
        gw.logs()
    );
    slow.abort();
    let db = Db::connect(&pg.url(), 1).await.unwrap();
    let today = db::Day::today();
    let mut query = db::usage::UsageQuery::days(today.add_days(-1), today.add_days(1));
    query.consumer_id = Some("erin".into());
    let rows = db::usage::query(&db, &query).await.unwrap();
    let counted: u64 = rows.iter().map(|r| r.allowed).sum();
    assert_eq!(counted, sent, "usage rows: {rows:?}\n{}", gw.logs());
}
