//! The rate-limiting library (`tollgate::limit`) against real `redis-server`s (single
//! and Cluster) and the in-process limiter. Semantics tests run the same assertions on
//! both (`on_redis` / `locally`). Assertions are about counts and states; time only
//! enters as generous margins (a token takes a second to refill) and as polling.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use support::*;
use tollgate::limit::*;

const LOCAL: FailureMode = FailureMode::Local {
    expected_instances: 1,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn policy(name: &str, algorithm: Algorithm, windows: &[(u64, Duration)]) -> Policy {
    Policy::new(
        name,
        algorithm,
        windows.iter().map(|&(l, p)| Window::new(l, p)).collect(),
    )
}

/// Settings for tests about counting, not about failures: a timeout that a loaded test
/// machine never hits, so every decision comes from Redis.
fn patient(urls: Vec<String>, cluster: bool) -> RedisSettings {
    RedisSettings {
        urls,
        cluster,
        timeout: secs(5),
        breaker_failures: 1000,
        ..RedisSettings::default()
    }
}

async fn connect(settings: &RedisSettings) -> RateLimiter {
    RateLimiter::connect(settings)
        .await
        .expect("settings are valid")
}

/// A limiter under test: on a fresh Redis, or purely local.
struct Bench {
    limiter: RateLimiter,
    source: Source,
    _redis: Option<RedisServer>,
}

impl Bench {
    async fn redis() -> Self {
        let redis = RedisServer::start().await;
        let limiter = connect(&patient(vec![redis.url()], false)).await;
        Bench {
            limiter,
            source: Source::Redis,
            _redis: Some(redis),
        }
    }

    fn local() -> Self {
        Bench {
            limiter: RateLimiter::local(),
            source: Source::Local,
            _redis: None,
        }
    }

    async fn acquire(&self, subjects: &[Subject<'_>], cost: u64) -> Decision {
        let decision = self
            .limiter
            .acquire(subjects, cost, &LOCAL)
            .await
            .expect("the limiter decides");
        assert_eq!(decision.source, self.source);
        decision
    }

    async fn peek(&self, subjects: &[Subject<'_>]) -> Decision {
        let decision = self
            .limiter
            .peek(subjects)
            .await
            .expect("the limiter answers");
        assert_eq!(decision.source, self.source);
        decision
    }

    /// Acquires until the first refusal; returns how many were allowed.
    async fn burst(&self, subjects: &[Subject<'_>], max: usize) -> usize {
        for n in 0..max {
            if !self.acquire(subjects, 1).await.allowed {
                return n;
            }
        }
        max
    }

    async fn remaining(&self, subjects: &[Subject<'_>]) -> Vec<u64> {
        remaining(&self.peek(subjects).await)
    }
}

/// Runs a semantics test on Redis and on the local limiter.
macro_rules! on_both {
    ($test:ident) => {
        mod $test {
            #[tokio::test]
            async fn on_redis() {
                super::$test(&super::Bench::redis().await).await;
            }

            #[tokio::test]
            async fn locally() {
                super::$test(&super::Bench::local()).await;
            }
        }
    };
}

fn remaining(decision: &Decision) -> Vec<u64> {
    decision.windows.iter().map(|w| w.remaining).collect()
}

/// Polls `check` every 20 ms until it holds; panics after `limit` (a hang guard, not a
/// measurement).
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(ms(20)).await;
    }
}

/// Fails the test if `call` does not return within 2 s (the limiter must never hang).
async fn promptly<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(secs(2), call)
        .await
        .expect("the limiter hung")
}

/// If less than `needed` is left of the current window of `period` (windows aligned
/// to the epoch; Redis's TIME is this machine's clock), waits for the next one, so a
/// test that counts within one window never straddles two.
async fn at_window_start(period: Duration, needed: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let period = period.as_millis() as u64;
    let left = period - now % period;
    if left < needed.as_millis() as u64 {
        tokio::time::sleep(ms(left + 10)).await;
    }
}

/// `calls` acquires of one unit, spread over `limiters`, all at once (each its own
/// task); returns how many were allowed. Every decision must come from Redis.
async fn stampede(
    limiters: &[RateLimiter],
    subjects: Vec<(String, Arc<Policy>)>,
    calls: usize,
) -> usize {
    let subjects = Arc::new(subjects);
    let tasks = (0..calls).map(|i| {
        let limiter = limiters[i % limiters.len()].clone();
        let subjects = Arc::clone(&subjects);
        tokio::spawn(async move {
            let subjects: Vec<Subject<'_>> = subjects
                .iter()
                .map(|(key, policy)| Subject::new(key, policy))
                .collect();
            let decision = limiter
                .acquire(&subjects, 1, &FailureMode::Closed)
                .await
                .expect("Redis decides");
            assert_eq!(decision.source, Source::Redis);
            decision.allowed
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .filter(|&allowed| allowed)
        .count()
}

/// The value of `name` in `INFO commandstats` `calls=` for `cmdstat_<command>`.
async fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).await;
    let text = info.as_str().expect("INFO answers text");
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a number of calls"))
}

// ---------------------------------------------------------------------------------
// Exactness across instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_admit_exactly_the_quota() {
    let redis = RedisServer::start().await;
    let settings = patient(vec![redis.url()], false);
    let instances = [connect(&settings).await, connect(&settings).await];
    let consumer = Arc::new(policy("gold", Algorithm::FixedWindow, &[(50, secs(60))]));
    let route = Arc::new(policy("route", Algorithm::FixedWindow, &[(1000, secs(60))]));

    // Load the script once, so the count below is pure EVALSHA.
    let warm = policy("warm", Algorithm::FixedWindow, &[(1, secs(60))]);
    for limiter in &instances {
        limiter
            .acquire(&[Subject::new("warm", &warm)], 1, &LOCAL)
            .await
            .expect("warm-up");
    }
    let before = instances
        .iter()
        .map(RateLimiter::redis_commands)
        .sum::<u64>();
    let evalsha_before = command_calls(&redis, "evalsha").await;

    at_window_start(secs(60), secs(10)).await;
    let subjects = vec![
        ("c:alice".to_string(), Arc::clone(&consumer)),
        ("r:orders".to_string(), Arc::clone(&route)),
    ];
    let allowed = stampede(&instances, subjects, 200).await;
    assert_eq!(allowed, 50);

    // At most one script call per acquire, though each names two subjects (fewer when
    // acquires waiting at the same moment were coalesced), and nothing else.
    let sent = instances
        .iter()
        .map(RateLimiter::redis_commands)
        .sum::<u64>()
        - before;
    assert!((1..=200).contains(&sent), "sent {sent}");
    assert_eq!(
        command_calls(&redis, "evalsha").await - evalsha_before,
        sent
    );

    let standing = instances[1]
        .peek(&[
            Subject::new("c:alice", &consumer),
            Subject::new("r:orders", &route),
        ])
        .await
        .expect("peek");
    assert_eq!(
        remaining(&standing),
        [0, 950],
        "refused requests count nowhere"
    );
}

// ---------------------------------------------------------------------------------
// Coalescing: acquires waiting at the same moment go to Redis as one script call

/// Makes Redis hold every script call for `hold` (`CLIENT PAUSE ... WRITE`), so acquires
/// started meanwhile queue behind the round in flight and go out as batches.
async fn hold_scripts(redis: &RedisServer, hold: Duration) {
    let ms = hold.as_millis().to_string();
    redis.command(&["CLIENT", "PAUSE", &ms, "WRITE"]).await;
}

/// Runs zero-cost acquires on the runtime's worker threads until each of `limiters` has its
/// own open connection to `redis` on every one of the two workers (`INFO clients`), so that
/// the calls a test starts next are coalesced from the first. (A thread's first calls go
/// alone through the shared pool while its own connection opens.)
async fn open_every_lane(redis: &RedisServer, limiters: &[RateLimiter]) {
    let p = Arc::new(policy("lanes", Algorithm::FixedWindow, &[(1, secs(60))]));
    let expected = limiters.len() * (DEFAULT_POOL_SIZE + 2);
    eventually("every worker has its connection", secs(10), || async {
        let calls = (0..20).map(|i| {
            let (limiter, p) = (limiters[i % limiters.len()].clone(), Arc::clone(&p));
            tokio::spawn(async move {
                let subjects = [Subject::new("lanes", &p)];
                limiter.acquire(&subjects, 0, &LOCAL).await.is_ok()
            })
        });
        join_all(calls).await;
        let info = redis.command(&["INFO", "clients"]).await;
        let text = info.as_str().expect("INFO answers text");
        let clients: usize = text
            .lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .map_or(0, |n| n.trim().parse().expect("a number"));
        // The INFO connection itself counts too.
        clients > expected
    })
    .await;
}

/// Calls decided beyond one per script call so far, by every limiter in this process.
fn coalesced_so_far() -> f64 {
    let batches = &metrics::BATCH_SIZE;
    batches.get_sample_sum() - batches.get_sample_count() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_acquires_on_two_instances_admit_exactly_the_quota() {
    let redis = RedisServer::start().await;
    let settings = patient(vec![redis.url()], false);
    let instances = [connect(&settings).await, connect(&settings).await];
    let consumer = Arc::new(policy("gold", Algorithm::FixedWindow, &[(50, secs(60))]));
    let route = Arc::new(policy("route", Algorithm::FixedWindow, &[(1000, secs(60))]));
    open_every_lane(&redis, &instances).await;
    let evalsha_before = command_calls(&redis, "evalsha").await;
    let coalesced_before = coalesced_so_far();

    at_window_start(secs(60), secs(10)).await;
    hold_scripts(&redis, ms(500)).await;
    let subjects = vec![
        ("c:alice".to_string(), Arc::clone(&consumer)),
        ("r:orders".to_string(), Arc::clone(&route)),
    ];
    let allowed = stampede(&instances, subjects, 200).await;
    assert_eq!(allowed, 50);

    // Batches happened: fewer script calls than acquires, and the metric says so.
    let evalsha = command_calls(&redis, "evalsha").await - evalsha_before;
    assert!(evalsha < 200, "{evalsha} script calls for 200 acquires");
    assert!(coalesced_so_far() > coalesced_before);
    let standing = instances[0]
        .peek(&[
            Subject::new("c:alice", &consumer),
            Subject::new("r:orders", &route),
        ])
        .await
        .expect("peek");
    assert_eq!(remaining(&standing), [0, 950], "each counted exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_batch_decides_each_subject_and_policy_exactly() {
    let redis = RedisServer::start().await;
    let limiter = connect(&patient(vec![redis.url()], false)).await;
    let fixed = Arc::new(policy("fixed", Algorithm::FixedWindow, &[(5, secs(60))]));
    let sliding = Arc::new(policy(
        "sliding",
        Algorithm::SlidingWindow,
        &[(7, secs(60))],
    ));
    let capped = Arc::new(policy("capped", Algorithm::FixedWindow, &[]).with_concurrency(3));
    let shared = Arc::new(policy(
        "shared",
        Algorithm::FixedWindow,
        &[(1000, secs(60))],
    ));
    open_every_lane(&redis, std::slice::from_ref(&limiter)).await;
    let evalsha_before = command_calls(&redis, "evalsha").await;

    at_window_start(secs(60), secs(10)).await;
    hold_scripts(&redis, ms(500)).await;
    // Interleaved: alice (fixed + shared), bob (sliding + shared), carol (a cap).
    let tasks = (0..60).map(|i| {
        let limiter = limiter.clone();
        let (key, own) = match i % 3 {
            0 => ("c:alice", Arc::clone(&fixed)),
            1 => ("c:bob", Arc::clone(&sliding)),
            _ => ("c:carol", Arc::clone(&capped)),
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let own_subject = Subject::new(key, &own);
            let shared_subject = Subject::new("r:mixed", &shared);
            let subjects: Vec<Subject<'_>> = if key == "c:carol" {
                vec![own_subject]
            } else {
                vec![own_subject, shared_subject]
            };
            let decision = limiter
                .acquire(&subjects, 1, &FailureMode::Closed)
                .await
                .expect("Redis decides");
            assert_eq!(decision.source, Source::Redis);
            (key, decision)
        })
    });
    let decisions: Vec<(&str, Decision)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let admitted = |who: &str| {
        decisions
            .iter()
            .filter(|(key, d)| *key == who && d.allowed)
            .count()
    };
    assert_eq!(
        (admitted("c:alice"), admitted("c:bob"), admitted("c:carol")),
        (5, 7, 3)
    );
    assert!(command_calls(&redis, "evalsha").await - evalsha_before < 60);

    let standing = limiter
        .peek(&[
            Subject::new("c:alice", &fixed),
            Subject::new("c:bob", &sliding),
            Subject::new("c:carol", &capped),
            Subject::new("r:mixed", &shared),
        ])
        .await
        .expect("peek");
    assert_eq!(remaining(&standing), [0, 0, 0, 1000 - 12]);

    // The leases taken in a batch are given back like any other.
    for (_, decision) in decisions {
        if let Some(lease) = decision.lease {
            limiter.release_now(lease).await;
        }
    }
    let again = limiter
        .acquire(&[Subject::new("c:carol", &capped)], 1, &FailureMode::Closed)
        .await
        .expect("Redis decides");
    assert!(again.allowed);
}

#[tokio::test]
async fn the_first_calls_on_a_new_thread_are_decided_by_redis() {
    let redis = RedisServer::start().await;
    let limiter = connect(&patient(vec![redis.url()], false)).await;
    let p = Arc::new(policy("fresh", Algorithm::FixedWindow, &[(3, secs(3600))]));
    at_window_start(secs(3600), secs(10)).await;
    // A thread (and runtime) the limiter has never run on: its first calls go out while
    // its own connection is still opening, and are decided by Redis all the same.
    let (limiter2, p2) = (limiter.clone(), Arc::clone(&p));
    let decisions = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let subjects = [Subject::new("c:fresh", &p2)];
            let calls = (0..5).map(|_| limiter2.acquire(&subjects, 1, &FailureMode::Closed));
            join_all(calls).await
        })
    })
    .await
    .expect("thread");
    let allowed = decisions
        .into_iter()
        .map(|d| d.expect("Redis decides"))
        .inspect(|d| assert_eq!(d.source, Source::Redis))
        .filter(|d| d.allowed)
        .count();
    assert_eq!(allowed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_times_out_fails_every_member_per_its_failure_mode() {
    let redis = RedisServer::start().await;
    let settings = RedisSettings {
        timeout: ms(300),
        breaker_failures: 1000,
        ..RedisSettings::single(redis.url())
    };
    let limiter = connect(&settings).await;
    let p = Arc::new(policy(
        "slow",
        Algorithm::FixedWindow,
        &[(1000, secs(3600))],
    ));
    let modes = [FailureMode::Closed, FailureMode::Open, LOCAL];
    // Every worker thread's connection is open before Redis stalls.
    open_every_lane(&redis, std::slice::from_ref(&limiter)).await;

    hold_scripts(&redis, secs(3)).await;
    let calls = (0..30).map(|i| {
        let (limiter, p) = (limiter.clone(), Arc::clone(&p));
        let mode = modes[i % modes.len()];
        tokio::spawn(async move {
            let subjects = [Subject::new("c:slow", &p)];
            let result = promptly(limiter.acquire(&subjects, 1, &mode)).await;
            (mode, result)
        })
    });
    for result in join_all(calls).await {
        let (mode, result) = result.expect("task");
        match (mode, result) {
            (FailureMode::Closed, Err(LimitError::Unavailable)) => {}
            (FailureMode::Open, Ok(d)) => assert_eq!(d.source, Source::FailOpen),
            (FailureMode::Local { .. }, Ok(d)) => assert_eq!(d.source, Source::Local),
            (mode, other) => panic!("{mode:?}: {other:?}"),
        }
    }
    eventually("Redis decides again", secs(10), || async {
        matches!(
            limiter.acquire(&[Subject::new("c:slow", &p)], 1, &LOCAL).await,
            Ok(d) if d.source == Source::Redis
        )
    })
    .await;
}

/// Two subject keys whose slots are served by different nodes of `cluster`.
async fn keys_on_different_nodes(cluster: &RedisCluster) -> (String, String) {
    let node = &cluster.nodes()[0];
    let slot = |key: String| async move {
        let reply = node.command(&["CLUSTER", "KEYSLOT", &key]).await;
        reply.as_int().expect("CLUSTER KEYSLOT answers a number")
    };
    // redis-cli gives 3 masters the slots 0-5460, 5461-10922 and 10923-16383.
    let mut low = None;
    let mut high = None;
    for i in 0.. {
        let key = format!("c:user{i}");
        let s = slot(format!("tg:{{{key}}}:w")).await;
        if s < 5000 && low.is_none() {
            low = Some(key);
        } else if s > 11_000 && high.is_none() {
            high = Some(key);
        }
        if let (Some(low), Some(high)) = (&low, &high) {
            return (low.clone(), high.clone());
        }
    }
    unreachable!("the loop returns")
}

/// Which node of `cluster` holds `key` (the others answer MOVED).
async fn node_holding(cluster: &RedisCluster, key: &str) -> usize {
    for (i, node) in cluster.nodes().iter().enumerate() {
        if node.command(&["EXISTS", key]).await == Resp::Integer(1) {
            return i;
        }
    }
    panic!("no node holds {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_admit_exactly_the_quota_across_slots() {
    let cluster = RedisCluster::start(3).await;
    let settings = patient(cluster.urls(), true);
    let instances = [connect(&settings).await, connect(&settings).await];
    let (consumer_key, route_key) = keys_on_different_nodes(&cluster).await;
    let consumer = Arc::new(policy("gold", Algorithm::FixedWindow, &[(50, secs(60))]));
    let route = Arc::new(policy("route", Algorithm::FixedWindow, &[(1000, secs(60))]));
    let both = || {
        [
            Subject::new(&consumer_key, &consumer),
            Subject::new(&route_key, &route),
        ]
    };
    for limiter in &instances {
        limiter.acquire(&both(), 0, &LOCAL).await.expect("warm-up");
    }
    let before = instances
        .iter()
        .map(RateLimiter::redis_commands)
        .sum::<u64>();

    at_window_start(secs(60), secs(10)).await;
    let subjects = vec![
        (consumer_key.clone(), Arc::clone(&consumer)),
        (route_key.clone(), Arc::clone(&route)),
    ];
    let allowed = stampede(&instances, subjects, 200).await;
    assert_eq!(allowed, 50);

    // Requests the consumer refused were counted on the route's node and undone there
    // in the background: the route settles at exactly the admitted count. (Peeks from
    // a third instance, so that the command counts below are the two instances' own.)
    let observer = connect(&settings).await;
    eventually("the route counter settles", secs(10), || async {
        remaining(&observer.peek(&both()).await.expect("peek")) == [0, 950]
    })
    .await;
    // At most one script call per slot on the request path (two slots; fewer when
    // acquires were coalesced), plus one undo, off the request path, for each of the
    // 150 requests the consumer refused.
    let sent = instances
        .iter()
        .map(RateLimiter::redis_commands)
        .sum::<u64>()
        - before;
    assert!((150 + 2..=200 * 2 + 150).contains(&sent), "sent {sent}");
    assert_ne!(
        node_holding(&cluster, &format!("tg:{{{consumer_key}}}:w")).await,
        node_holding(&cluster, &format!("tg:{{{route_key}}}:w")).await,
        "the two subjects live on different nodes"
    );

    // Subjects sharing a slot (here: one key, two policies) still take one call.
    let before = instances[0].redis_commands();
    let one_slot = [
        Subject::new(&consumer_key, &route),
        Subject::new(&consumer_key, &route),
    ];
    instances[0]
        .acquire(&one_slot, 1, &LOCAL)
        .await
        .expect("acquire");
    assert_eq!(instances[0].redis_commands() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_counted_requests_on_a_cluster_are_undone_and_never_over_admitted() {
    let cluster = RedisCluster::start(3).await;
    let settings = patient(cluster.urls(), true);
    let instances = [connect(&settings).await, connect(&settings).await];
    let (consumer_key, route_key) = keys_on_different_nodes(&cluster).await;
    // Both limits bind: each node refuses some requests the other counted.
    let consumer = Arc::new(policy("gold", Algorithm::FixedWindow, &[(50, secs(60))]));
    let route = Arc::new(
        policy("route", Algorithm::SlidingWindow, &[(30, secs(60))]).with_concurrency(1000),
    );

    at_window_start(secs(60), secs(10)).await;
    let subjects = vec![
        (consumer_key.clone(), Arc::clone(&consumer)),
        (route_key.clone(), Arc::clone(&route)),
    ];
    let allowed = stampede(&instances, subjects, 200).await as u64;
    assert!((1..=30).contains(&allowed), "allowed {allowed}");

    let both = [
        Subject::new(&consumer_key, &consumer),
        Subject::new(&route_key, &route),
    ];
    // Each counter, and the leases, settle at exactly what was admitted (the admitted
    // requests' leases are still held: nobody released them).
    eventually(
        "every counter settles at the admitted count",
        secs(10),
        || async {
            let standing = instances[1].peek(&both).await.expect("peek");
            remaining(&standing) == [50 - allowed, 30 - allowed, 1000 - allowed]
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------
// Semantics, on Redis and locally

async fn a_request_refused_by_one_window_counts_in_none(b: &Bench) {
    let consumer = policy(
        "gold",
        Algorithm::FixedWindow,
        &[(2, secs(10)), (100, secs(3600))],
    );
    let route = policy("route", Algorithm::TokenBucket, &[(100, secs(3600))]);
    let subjects = [
        Subject::new("c:alice", &consumer),
        Subject::new("r:orders", &route),
    ];
    at_window_start(secs(3600), secs(2)).await;
    at_window_start(secs(10), secs(2)).await;
    assert!(b.acquire(&subjects, 1).await.allowed);
    assert!(b.acquire(&subjects, 1).await.allowed);
    for _ in 0..5 {
        let refused = b.acquire(&subjects, 1).await;
        assert!(!refused.allowed);
        assert_eq!(refused.refused_by, Some(0));
        assert!(refused.lease.is_none());
        let retry = refused.retry_after.expect("a refusal says when to retry");
        assert!(retry > Duration::ZERO && retry <= secs(10), "{retry:?}");
    }
    assert_eq!(b.remaining(&subjects).await, [0, 98, 98]);
}
on_both!(a_request_refused_by_one_window_counts_in_none);

async fn a_refused_cost_is_not_counted(b: &Bench) {
    let p = policy("bulk", Algorithm::FixedWindow, &[(10, secs(3600))]);
    let subjects = [Subject::new("c:bulk", &p)];
    at_window_start(secs(3600), secs(2)).await;
    assert!(b.acquire(&subjects, 8).await.allowed);
    let refused = b.acquire(&subjects, 5).await;
    assert!(!refused.allowed);
    assert_eq!(remaining(&refused), [2]);
    assert!(b.acquire(&subjects, 2).await.allowed);
    assert_eq!(b.remaining(&subjects).await, [0]);
}
on_both!(a_refused_cost_is_not_counted);

async fn fixed_windows_roll_over(b: &Bench) {
    let p = policy("fixed", Algorithm::FixedWindow, &[(3, secs(2))]);
    let subjects = [Subject::new("c:roll", &p)];
    assert_eq!(
        b.remaining(&subjects).await,
        [3],
        "an unused subject has it all"
    );
    at_window_start(secs(2), secs(1)).await;
    assert_eq!(b.burst(&subjects, 10).await, 3);
    eventually("the window rolls over", secs(5), || async {
        b.remaining(&subjects).await == [3]
    })
    .await;
    assert_eq!(b.burst(&subjects, 10).await, 3);
}
on_both!(fixed_windows_roll_over);

async fn sliding_window_weights_the_previous_window(b: &Bench) {
    let period = secs(2);
    let p = policy("slide", Algorithm::SlidingWindow, &[(10, period)]);
    let subjects = [Subject::new("c:slide", &p)];
    at_window_start(period, ms(1500)).await;
    assert_eq!(b.burst(&subjects, 20).await, 10);
    // Full restore is more than a period away while the current window holds counts,
    // and at most a period away once they are in the previous window.
    eventually("the window rolls over", secs(5), || async {
        b.peek(&subjects).await.windows[0].reset_after <= period
    })
    .await;
    let left = b.remaining(&subjects).await[0];
    assert!(
        left < 10,
        "the previous window still weighs (remaining {left})"
    );
    // The weight only falls as time passes, and stays above zero within this window.
    let admitted = b.burst(&subjects, 20).await as u64;
    assert!(
        (left..=9).contains(&admitted),
        "remaining {left}, admitted {admitted}"
    );
}
on_both!(sliding_window_weights_the_previous_window);

async fn token_bucket_refills_at_its_rate_and_caps_at_its_burst(b: &Bench) {
    // Burst 5, one token per second: a second is the margin of every count below.
    let p = policy("bucket", Algorithm::TokenBucket, &[(5, secs(5))]);
    let subjects = [Subject::new("c:bucket", &p)];
    assert_eq!(b.burst(&subjects, 10).await, 5);
    let refused = b.acquire(&subjects, 1).await;
    assert!(!refused.allowed);
    let retry = refused.retry_after.expect("retry");
    assert!(
        retry > Duration::ZERO && retry <= secs(1),
        "one token away: {retry:?}"
    );

    eventually("a token is back", secs(3), || async {
        b.remaining(&subjects).await == [1]
    })
    .await;
    assert_eq!(b.burst(&subjects, 10).await, 1, "one token, one request");

    eventually("the bucket is full", secs(8), || async {
        b.remaining(&subjects).await == [5]
    })
    .await;
    // Idle long enough for more than a burst's worth; the bucket still holds five.
    tokio::time::sleep(ms(1500)).await;
    assert_eq!(b.remaining(&subjects).await, [5]);
    assert_eq!(b.burst(&subjects, 10).await, 5);
}
on_both!(token_bucket_refills_at_its_rate_and_caps_at_its_burst);

async fn concurrency_cap_holds_until_a_lease_is_released(b: &Bench) {
    let p = policy("conc", Algorithm::FixedWindow, &[(1000, secs(3600))]).with_concurrency(2);
    let subjects = [Subject::new("c:conc", &p)];
    let first = b
        .limiter
        .acquire(&subjects, 1, &LOCAL)
        .await
        .expect("acquire");
    let second = b
        .limiter
        .acquire(&subjects, 1, &LOCAL)
        .await
        .expect("acquire");
    assert!(first.allowed && second.allowed);
    assert_eq!(remaining(&second)[1], 0);
    let third = b
        .limiter
        .acquire(&subjects, 1, &LOCAL)
        .await
        .expect("acquire");
    assert!(!third.allowed);
    assert_eq!(third.refused_by, Some(1));
    assert_eq!(third.windows[1].kind, WindowKind::Concurrency);
    assert_eq!(third.retry_after, Some(secs(1)));
    assert!(third.lease.is_none());

    let lease = first
        .lease
        .expect("an allowed capped request holds a lease");
    let second_lease = second.lease.as_ref().expect("a lease");
    assert!(!lease.id().is_empty(), "the limiter names every lease");
    assert_ne!(lease.id(), second_lease.id(), "each lease has its own id");
    b.limiter.release(lease);
    // Release is fire-and-forget on Redis: wait for it to land.
    eventually("the slot is free again", secs(5), || async {
        b.remaining(&subjects).await[1] == 1
    })
    .await;
    let fourth = b
        .limiter
        .acquire(&subjects, 1, &LOCAL)
        .await
        .expect("acquire");
    assert!(fourth.allowed);
    // Two admitted and one refused before, one now: the window counted three.
    assert_eq!(remaining(&fourth), [1000 - 3, 0]);
}
on_both!(concurrency_cap_holds_until_a_lease_is_released);

async fn reset_forgets_a_subject(b: &Bench) {
    let p = policy("reset", Algorithm::SlidingWindow, &[(3, secs(3600))]).with_concurrency(1);
    let subjects = [Subject::new("c:reset", &p)];
    assert!(b.acquire(&subjects, 3).await.allowed);
    assert_eq!(b.remaining(&subjects).await, [0, 0]);
    b.limiter.reset("c:reset").await.expect("reset");
    assert_eq!(b.remaining(&subjects).await, [3, 1]);
}
on_both!(reset_forgets_a_subject);

async fn headers_agree_with_the_decision(b: &Bench) {
    let p = policy(
        "gold",
        Algorithm::FixedWindow,
        &[(5, secs(60)), (100, secs(3600))],
    );
    let subjects = [Subject::new("c:headers", &p)];
    at_window_start(secs(3600), secs(2)).await;
    at_window_start(secs(60), secs(2)).await;
    let mut last = None;
    for _ in 0..5 {
        last = Some(b.acquire(&subjects, 1).await);
    }
    let fifth = last.expect("five acquires");
    let header = |d: &Decision, name: &str| -> Option<String> {
        headers::rate_limit_headers(d)
            .into_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().expect("ASCII").to_string())
    };
    let minute_reset = fifth.windows[0].reset_after.as_secs_f64().ceil() as u64;
    assert_eq!(
        header(&fifth, "ratelimit-policy").as_deref(),
        Some(r#""gold-minute";q=5;w=60, "gold-hour";q=100;w=3600"#)
    );
    assert_eq!(
        header(&fifth, "ratelimit"),
        Some(format!(r#""gold-minute";r=0;t={minute_reset}"#))
    );
    assert_eq!(header(&fifth, "x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(
        header(&fifth, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&fifth, "x-ratelimit-reset"),
        Some(minute_reset.to_string())
    );
    assert_eq!(header(&fifth, "retry-after"), None);

    // Both parse as structured-field lists whose numbers are the decision's.
    let policy_list = sfv::Parser::parse_list(
        header(&fifth, "ratelimit-policy")
            .expect("policy header")
            .as_bytes(),
    )
    .expect("RateLimit-Policy is an sf-list");
    let members: Vec<(String, i64, i64)> = policy_list
        .iter()
        .map(|entry| {
            let sfv::ListEntry::Item(item) = entry else {
                panic!("expected items, got {entry:?}")
            };
            (
                item.bare_item.as_str().expect("sf-string").to_string(),
                item.params["q"].as_int().expect("q"),
                item.params["w"].as_int().expect("w"),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("gold-minute".to_string(), 5, 60),
            ("gold-hour".to_string(), 100, 3600)
        ]
    );
    let current =
        sfv::Parser::parse_list(header(&fifth, "ratelimit").expect("ratelimit").as_bytes())
            .expect("RateLimit is an sf-list");
    let sfv::ListEntry::Item(item) = &current[0] else {
        panic!("expected an item")
    };
    assert_eq!(
        item.params["r"].as_int(),
        Some(fifth.windows[0].remaining as i64)
    );
    assert_eq!(item.params["t"].as_int(), Some(minute_reset as i64));

    let refused = b.acquire(&subjects, 1).await;
    assert!(!refused.allowed);
    let retry = refused
        .retry_after
        .expect("retry")
        .as_secs_f64()
        .ceil()
        .max(1.0) as u64;
    assert_eq!(header(&refused, "retry-after"), Some(retry.to_string()));
    assert_eq!(
        header(&refused, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert!(header(&refused, "ratelimit")
        .expect("ratelimit")
        .starts_with(r#""gold-minute";r=0;"#));
}
on_both!(headers_agree_with_the_decision);

// ---------------------------------------------------------------------------------
// Redis failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_and_restart_fail_no_request() {
    let mut redis = RedisServer::start().await;
    let limiter = connect(&patient(vec![redis.url()], false)).await;
    let p = policy("flush", Algorithm::FixedWindow, &[(100_000, secs(3600))]);
    let subjects = [Subject::new("c:flush", &p)];
    at_window_start(secs(3600), secs(10)).await;

    let ok = |d: Result<Decision, LimitError>| {
        let d = d.expect("no call fails");
        assert_eq!(d.source, Source::Redis);
        assert!(d.allowed);
    };
    ok(limiter.acquire(&subjects, 1, &FailureMode::Closed).await);
    redis.command(&["SCRIPT", "FLUSH"]).await;
    let before = limiter.redis_commands();
    ok(limiter.acquire(&subjects, 1, &FailureMode::Closed).await);
    assert_eq!(
        limiter.redis_commands() - before,
        2,
        "EVALSHA, NOSCRIPT, then EVAL"
    );

    // Flushes while requests are in flight.
    let flusher = async {
        for _ in 0..40 {
            redis.command(&["SCRIPT", "FLUSH"]).await;
            tokio::time::sleep(ms(3)).await;
        }
    };
    let requests = async {
        for _ in 0..30 {
            let batch = (0..10).map(|_| {
                let subjects = &subjects;
                let limiter = &limiter;
                async move { limiter.acquire(subjects, 1, &FailureMode::Closed).await }
            });
            join_all(batch).await.into_iter().for_each(ok);
        }
    };
    tokio::join!(flusher, requests);
    // Each request counted exactly once, reloads included.
    let standing = limiter.peek(&subjects).await.expect("peek");
    assert_eq!(remaining(&standing), [100_000 - 302]);

    // A restart loses scripts and data alike; the next calls reload the script.
    redis.restart().await;
    eventually("the limiter reconnects", secs(10), || async {
        matches!(
            limiter.acquire(&subjects, 1, &FailureMode::Closed).await,
            Ok(d) if d.source == Source::Redis
        )
    })
    .await;
}

/// Settings for failure tests: a breaker that opens after three failures and stays
/// open for `cooldown`; a 500 ms timeout (not 50 ms), so that a loaded test machine
/// does not make a healthy Redis look down.
fn fragile(url: String, cooldown: Duration) -> RedisSettings {
    RedisSettings {
        timeout: ms(500),
        breaker_failures: 3,
        breaker_cooldown: cooldown,
        ..RedisSettings::single(url)
    }
}

#[tokio::test]
async fn with_redis_down_each_failure_mode_answers_at_once_without_calling_redis() {
    let mut redis = RedisServer::start().await;
    let limiter = connect(&fragile(redis.url(), secs(3600))).await;
    let p = policy("down", Algorithm::FixedWindow, &[(10, secs(3600))]);
    let subjects = [Subject::new("c:down", &p)];
    let first = promptly(limiter.acquire(&subjects, 1, &LOCAL)).await;
    assert_eq!(first.expect("acquire").source, Source::Redis);

    redis.kill();
    // Failures (errors or timeouts) until the breaker opens; each still decides.
    let mut failures = 0;
    while !limiter.breaker_open() {
        let d = promptly(limiter.acquire(&subjects, 0, &LOCAL)).await;
        assert_eq!(d.expect("the local limiter decides").source, Source::Local);
        failures += 1;
        assert!(failures <= 3, "the breaker opens after three failures");
    }

    let commands = limiter.redis_commands();
    at_window_start(secs(3600), secs(2)).await;
    // Local: the limit divided among the expected two instances.
    let two = FailureMode::Local {
        expected_instances: 2,
    };
    let mut admitted = 0;
    for _ in 0..8 {
        let d = promptly(limiter.acquire(&subjects, 1, &two))
            .await
            .expect("the local limiter decides");
        assert_eq!(d.source, Source::Local);
        assert_eq!(d.windows[0].limit, 5);
        admitted += usize::from(d.allowed);
    }
    assert_eq!(admitted, 5);
    for _ in 0..5 {
        let open = promptly(limiter.acquire(&subjects, 1, &FailureMode::Open))
            .await
            .expect("fail-open allows");
        assert!(open.allowed);
        assert_eq!(open.source, Source::FailOpen);
        assert!(open.windows.is_empty());
        let closed = promptly(limiter.acquire(&subjects, 1, &FailureMode::Closed)).await;
        assert!(matches!(closed, Err(LimitError::Unavailable)), "{closed:?}");
    }
    assert!(matches!(
        promptly(limiter.peek(&subjects)).await,
        Err(LimitError::Unavailable)
    ));
    assert_eq!(
        limiter.redis_commands(),
        commands,
        "nothing is sent to Redis while the breaker is open"
    );
}

#[tokio::test]
async fn limiting_goes_back_to_redis_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let limiter = connect(&fragile(redis.url(), ms(100))).await;
    let p = policy("back", Algorithm::FixedWindow, &[(1000, secs(3600))]);
    let subjects = [Subject::new("c:back", &p)];
    redis.kill();
    eventually("the breaker opens", secs(10), || async {
        let d = promptly(limiter.acquire(&subjects, 1, &LOCAL)).await;
        assert_eq!(d.expect("decides").source, Source::Local);
        limiter.breaker_open()
    })
    .await;
    redis.start_again().await;
    eventually("limiting is back on Redis", secs(10), || async {
        let d = promptly(limiter.acquire(&subjects, 1, &LOCAL)).await;
        d.expect("decides").source == Source::Redis
    })
    .await;
    assert!(!limiter.breaker_open());
}

#[tokio::test]
async fn redis_down_at_start_is_not_an_error() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let limiter = connect(&fragile(redis.url(), ms(100))).await;
    assert!(limiter.breaker_open());
    let p = policy("start", Algorithm::TokenBucket, &[(10, secs(60))]);
    let subjects = [Subject::new("c:start", &p)];
    let d = promptly(limiter.acquire(&subjects, 1, &LOCAL)).await;
    assert_eq!(d.expect("decides").source, Source::Local);

    redis.start_again().await;
    eventually("limiting moves to Redis", secs(10), || async {
        let d = promptly(limiter.acquire(&subjects, 1, &LOCAL)).await;
        d.expect("decides").source == Source::Redis
    })
    .await;
}

/// A policy with a block: once the subject exceeds it (its window refuses), every
/// request is refused for the block's duration, even after the window has rolled over;
/// a peek shows the block; the block ends by itself, or at once on reset. A request
/// refused by another subject blocks nobody.
async fn a_block_refuses_every_request_until_it_ends_or_is_reset(b: &Bench) {
    let strict = policy("strict", Algorithm::FixedWindow, &[(2, secs(1))]).with_block_for(secs(3));
    let subjects = [Subject::new("c:abuser", &strict)];
    at_window_start(secs(1), ms(600)).await;
    assert!(b.acquire(&subjects, 1).await.allowed);
    assert!(b.acquire(&subjects, 1).await.allowed);
    let refused = b.acquire(&subjects, 1).await;
    assert!(!refused.allowed);
    assert_eq!(refused.windows.len(), 2, "the rate window, then the block");
    assert_eq!(refused.windows[1].kind, WindowKind::Block);
    assert_eq!(refused.refused_by, Some(1), "the block outlasts the window");
    assert!(refused.retry_after.unwrap() > secs(2), "{refused:?}");

    // The window rolls over; the block still refuses, and a peek shows it.
    tokio::time::sleep(ms(1100)).await;
    let peek = b.peek(&subjects).await;
    assert_eq!(peek.windows[0].remaining, 2, "a fresh window");
    assert_eq!(peek.windows[1].remaining, 0, "still blocked");
    assert!(peek.windows[1].reset_after > Duration::ZERO);
    assert!(!b.acquire(&subjects, 1).await.allowed);

    // It ends by itself.
    eventually("the block ends", secs(10), || async {
        b.remaining(&subjects).await[1] == 1
    })
    .await;
    assert!(b.acquire(&subjects, 1).await.allowed);

    // A new block is cleared by a reset.
    at_window_start(secs(1), ms(600)).await;
    while b.acquire(&subjects, 1).await.allowed {}
    assert_eq!(b.remaining(&subjects).await[1], 0);
    b.limiter.reset("c:abuser").await.expect("reset");
    assert!(b.acquire(&subjects, 1).await.allowed);

    // Refused by another subject (the route), the blocking policy's subject is not blocked.
    let tight_route = policy("tight", Algorithm::FixedWindow, &[(0, secs(3600))]);
    let other =
        policy("other", Algorithm::FixedWindow, &[(100, secs(3600))]).with_block_for(secs(60));
    let both = [
        Subject::new("c:innocent", &other),
        Subject::new("r:closed", &tight_route),
    ];
    assert!(!b.acquire(&both, 1).await.allowed);
    let innocent = [Subject::new("c:innocent", &other)];
    assert_eq!(b.remaining(&innocent).await, [100, 1], "not blocked");
}
on_both!(a_block_refuses_every_request_until_it_ends_or_is_reset);

#[tokio::test]
async fn leases_of_a_crashed_instance_expire() {
    let redis = RedisServer::start().await;
    let settings = RedisSettings {
        concurrency_lease_ttl: secs(1),
        ..patient(vec![redis.url()], false)
    };
    let crashed = connect(&settings).await;
    let survivor = connect(&settings).await;
    let p = Policy::new("crash", Algorithm::FixedWindow, vec![]).with_concurrency(2);
    let subjects = [Subject::new("c:crash", &p)];
    for _ in 0..2 {
        let d = crashed
            .acquire(&subjects, 1, &LOCAL)
            .await
            .expect("acquire");
        assert!(d.allowed);
        // Never released: the instance "crashes" holding the leases.
        drop(d.lease);
    }
    drop(crashed);
    let refused = survivor
        .acquire(&subjects, 1, &LOCAL)
        .await
        .expect("acquire");
    assert!(!refused.allowed);
    eventually("the crashed instance's leases expire", secs(5), || async {
        survivor
            .acquire(&subjects, 1, &LOCAL)
            .await
            .expect("acquire")
            .allowed
    })
    .await;
}

#[tokio::test]
async fn invalid_policies_and_settings_are_rejected() {
    let limiter = RateLimiter::local();
    let bad = policy("bad", Algorithm::FixedWindow, &[(1, Duration::ZERO)]);
    let result = limiter.acquire(&[Subject::new("k", &bad)], 1, &LOCAL).await;
    assert!(
        matches!(result, Err(LimitError::InvalidPolicy(_))),
        "{result:?}"
    );
    let settings = RedisSettings {
        urls: vec!["redis://127.0.0.1:1".into(), "redis://127.0.0.1:2".into()],
        ..RedisSettings::default()
    };
    assert!(matches!(
        RateLimiter::connect(&settings).await,
        Err(LimitError::InvalidSettings(_))
    ));
}
