//! Scale-out, measured: three gateway instances share a 3-node Redis Cluster and one
//! PostgreSQL, as a deployment would. Load goes through all three at once. A plan quota
//! admits exactly N of N across the three; a key revoked through one instance's admin API is
//! refused on all three within a second; the usage rows in PostgreSQL equal the requests
//! admitted; and stopping one instance mid-load loses no admitted request's usage while the
//! others keep serving. The figures are printed.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tollgate::db::{self, Db};

const PEPPER: &str = "scale-out-test-pepper-0123456789";
/// The plan's quota: requests per hour for one consumer, across every instance.
const QUOTA: u64 = 150;

async fn status(client: &reqwest::Client, url: &str, key: &str) -> u16 {
    client
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Allowed requests of `consumer` in PostgreSQL today.
async fn usage(pg: &Postgres, consumer: &str) -> u64 {
    let db = Db::connect(&pg.url(), 1).await.unwrap();
    let today = db::Day::today();
    let mut query = db::usage::UsageQuery::days(today.add_days(-1), today.add_days(1));
    query.consumer_id = Some(consumer.into());
    let rows = db::usage::query(&db, &query).await.unwrap();
    rows.iter().map(|r| r.allowed).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_one_quota_one_revocation_and_exact_usage() {
    let pg = Postgres::start().await;
    let cluster = RedisCluster::start(3).await;
    let upstream = TestUpstream::start("a").await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let admin_port = free_port();
    let rest = format!(
        "database: {{url: \"{}\", usage_flush_interval: 300ms}}
auth: {{api_key: {{pepper_env: TG_SCALE_PEPPER}}}}
rate_limit:
  failure_mode: closed
  redis: {{urls: [{}], cluster: true, timeout: 5s, breaker_failures: 1000}}
upstreams: [{{name: a, targets: [{{address: \"{}\"}}]}}]
routes:
  - {{name: api, path_prefix: /, upstream: a, auth: required}}
",
        pg.url(),
        urls.join(", "),
        upstream.address()
    );
    let mut gateways = Vec::new();
    for i in 0..3 {
        let cfg = GatewayConfig::new().with_env("TG_SCALE_PEPPER", PEPPER);
        let admin = if i == 0 {
            format!("admin: {{address: \"127.0.0.1:{admin_port}\"}}\n")
        } else {
            String::new()
        };
        let yaml = cfg.render(&format!("{rest}{admin}"));
        gateways.push(Gateway::start(cfg, &yaml).await);
    }
    wait_for_port(admin_port, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("admin port: {e}\n{}", gateways[0].logs()));
    let db = Db::connect(&pg.url(), 2).await.unwrap();
    hourly_plan(&db, "metered", QUOTA).await;
    let metered = consumer_with_key(&db, PEPPER, "metered", Some("metered")).await;
    hourly_plan(&db, "roomy", 1_000_000).await;
    let steady = consumer_with_key(&db, PEPPER, "steady", Some("roomy")).await;
    let probe = consumer_with_key(&db, PEPPER, "probe", Some("roomy")).await;
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/x")).collect();
    let client = http_client();
    // Every instance knows both plans before the load starts (plans arrive by NOTIFY).
    let deadline = Instant::now() + Duration::from_secs(10);
    for url in &urls {
        while status(&client, url, &probe).await != 200 {
            assert!(Instant::now() < deadline, "the probe never passed on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // 1. One quota across three instances: 2 × QUOTA requests from 12 concurrent clients,
    //    round-robin over the instances, admit exactly QUOTA.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..12usize {
        let (client, urls, key) = (client.clone(), urls.clone(), metered.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut other) = (0u64, 0u64, 0u64);
            for r in 0..(2 * QUOTA as usize / 12) {
                match status(&client, &urls[(c + r) % 3], &key).await {
                    200 => ok += 1,
                    429 => limited += 1,
                    _ => other += 1,
                }
            }
            (ok, limited, other)
        }));
    }
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for t in tasks {
        let (o, l, x) = t.await.unwrap();
        ok += o;
        limited += l;
        other += x;
    }
    println!(
        "quota: {ok} admitted, {limited} refused, {other} other, of {} in {:?} through 3 instances",
        2 * QUOTA,
        started.elapsed()
    );
    assert_eq!(other, 0);
    assert_eq!(
        ok, QUOTA,
        "the plan admitted {ok} of its {QUOTA} across three instances"
    );
    assert_eq!(limited, QUOTA);

    // 2. A key revoked through the admin API of instance 0 is refused on all three.
    let victim = consumer_with_key(&db, PEPPER, "victim", Some("roomy")).await;
    for url in &urls {
        assert_eq!(status(&client, url, &victim).await, 200);
    }
    let revoke = client
        .post(format!(
            "http://127.0.0.1:{admin_port}/admin/keys/victim-key/revoke"
        ))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("admin API");
    assert!(revoke.status().is_success(), "{}", revoke.status());
    let revoked_at = Instant::now();
    let mut refused = [false; 3];
    while refused.contains(&false) && revoked_at.elapsed() < Duration::from_secs(3) {
        for (i, url) in urls.iter().enumerate() {
            refused[i] = refused[i] || status(&client, url, &victim).await == 403;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = revoked_at.elapsed();
    println!("revocation: refused on all three instances after {took:?}");
    assert_eq!(refused, [true; 3], "the revoked key still works somewhere");
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");

    // 3. Load on all three; instance 2 is stopped (SIGTERM) in the middle. The others keep
    //    serving, and every admitted request is counted in PostgreSQL.
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let failed_on_survivors = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for c in 0..6usize {
        let (client, urls, key) = (client.clone(), urls.clone(), steady.clone());
        let (stop, admitted, failed) =
            (stop.clone(), admitted.clone(), failed_on_survivors.clone());
        load.push(tokio::spawn(async move {
            let mut r = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let instance = (c + r) % 3;
                r += 1;
                match status(&client, &urls[instance], &key).await {
                    200 => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    // Instance 2 refuses connections once it is gone.
                    _ if instance == 2 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_stop = admitted.load(Ordering::Relaxed);
    gateways[2].signal(libc::SIGTERM);
    assert!(
        gateways[2]
            .wait_exit(Duration::from_secs(20))
            .await
            .is_some(),
        "instance 2 did not exit"
    );
    let at_stop = admitted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let after_stop = admitted.load(Ordering::Relaxed) - at_stop;
    // The survivors' last counts reach the database on their own SIGTERM.
    for gw in gateways.iter_mut().take(2) {
        gw.signal(libc::SIGTERM);
        assert!(gw.wait_exit(Duration::from_secs(20)).await.is_some());
    }
    let total = admitted.load(Ordering::Relaxed);
    let counted = usage(&pg, "steady").await;
    println!(
        "stop mid-load: {total} admitted ({before_stop} before the stop, {after_stop} after it, on the \
         two survivors); {} failed on the survivors; usage rows count {counted}",
        failed_on_survivors.load(Ordering::Relaxed)
    );
    assert_eq!(failed_on_survivors.load(Ordering::Relaxed), 0);
    assert!(
        after_stop > 0,
        "the survivors served nothing after the stop"
    );
    assert_eq!(
        counted, total,
        "usage rows differ from the requests admitted"
    );
    assert_eq!(usage(&pg, "metered").await, QUOTA);
}
