//! Distributed rate limiting (README "Rate limits: plans, anonymous callers, routes"),
//! proven end to end: the real `tollgate` binary, real `redis-server`s (one, or a
//! 3-node Cluster), real upstreams, real sockets.
//!
//! Assertions count outcomes (statuses, standings, Redis counters, metrics); time only
//! enters as polling with deadlines, and as [`wait_for_fresh_windows`], which makes sure
//! a test that counts within one window never straddles a window boundary (windows are
//! aligned to the epoch on Redis's clock, which is this machine's clock).
//!
//! Tests about counting give Redis a patient `timeout` and a breaker that never opens
//! ([`redis_yaml`]): on a loaded 2-core test machine a 50 ms deadline can expire, and the
//! documented fallback (the in-process limiter) would then decide instead of Redis.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use serde_json::Value;
use support::*;

const PEPPER_ENV: &str = "TG_RL_TEST_PEPPER";
const PEPPER: &str = "pepper-for-the-rate-limit-tests";
const STATUS_PATH: &str = "/_tollgate/limits";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ----------------------------------------------------------------------------------------
// Keys, config, gateways
// ----------------------------------------------------------------------------------------

/// An API key and its stored form.
struct ApiKey {
    secret: String,
    hash: String,
}

fn new_key() -> ApiKey {
    let key =
        tollgate::auth::api_key::generate(&ring::rand::SystemRandom::new()).expect("random key");
    let hash = tollgate::auth::api_key::KeyHasher::new(PEPPER.as_bytes())
        .hash(&key.secret)
        .to_hex();
    ApiKey {
        secret: key.secret,
        hash,
    }
}

/// One `consumers:` entry: `id` on `plan` with one key.
fn consumer(id: &str, plan: &str, key: &ApiKey) -> String {
    format!(
        "  - {{id: {id}, plan: {plan}, keys: [{{id: {id}-key, hash: {}}}]}}\n",
        key.hash
    )
}

/// `rate_limit.redis` for tests about counting: every decision comes from Redis.
fn redis_yaml(urls: &[String], cluster: bool) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "  redis: {{urls: [{}], cluster: {cluster}, timeout: 5s, breaker_failures: 1000}}\n",
        urls.join(", ")
    )
}

/// The `auth:` section every gateway here gets (the API-key pepper).
fn auth_yaml() -> String {
    format!("auth:\n  api_key: {{pepper_env: {PEPPER_ENV}}}\n")
}

/// Starts a gateway whose file is the harness header, upstream `up` (named `up`), and
/// `rest`; the gateway process gets the API-key pepper.
async fn start_gateway(up: &TestUpstream, rest: &str) -> Gateway {
    let cfg = GatewayConfig::new().with_env(PEPPER_ENV, PEPPER);
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}",
        up.address()
    ));
    Gateway::start(cfg, &yaml).await
}

/// Where the counters live, for reading them back.
enum Store<'a> {
    Single(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

impl Store<'_> {
    fn yaml(&self) -> String {
        match self {
            Store::Single(r) => redis_yaml(&[r.url()], false),
            Store::Cluster(c) => redis_yaml(&c.urls(), true),
        }
    }

    /// `args` on the node that holds `args[1]` (a Cluster node that does not answers
    /// `MOVED`; the next one is asked).
    async fn command(&self, args: &[&str]) -> Resp {
        let nodes: Vec<&RedisServer> = match self {
            Store::Single(r) => vec![r],
            Store::Cluster(c) => c.nodes().iter().collect(),
        };
        for node in nodes {
            match node.command(args).await {
                Resp::Error(e) if e.starts_with("MOVED") => continue,
                reply => return reply,
            }
        }
        panic!("no node holds the key of {args:?}")
    }

    /// A field of a subject's window hash `tg:{<subject>}:w`.
    async fn counter(&self, subject: &str, field: &str) -> Option<String> {
        let key = format!("tg:{{{subject}}}:w");
        match self.command(&["HGET", &key, field]).await {
            Resp::Bulk(v) => v,
            other => panic!("HGET {key} {field}: {other:?}"),
        }
    }
}

// ----------------------------------------------------------------------------------------
// Requests and answers
// ----------------------------------------------------------------------------------------

/// What the gateway answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("visible ASCII header"))
    }

    fn header_u64(&self, name: &str) -> u64 {
        let text = self
            .header(name)
            .unwrap_or_else(|| panic!("no {name} header on {} {}", self.status, self.body));
        text.parse()
            .unwrap_or_else(|_| panic!("{name}: {text:?} is not an integer"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

async fn try_get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, reqwest::Error> {
    let mut req = client.get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// GETs `path` on `gw` with `headers`; panics if no answer comes.
async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    try_get(gw.http(), &gw.url(path), headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// GETs `path` with `key` in `x-api-key`.
async fn get_as(gw: &Gateway, path: &str, key: &ApiKey) -> Answer {
    get(gw, path, &[("x-api-key", &key.secret)]).await
}

/// `GET /_tollgate/limits` with `headers`; must answer 200 JSON.
async fn standing(gw: &Gateway, headers: &[(&str, &str)]) -> Value {
    let a = get(gw, STATUS_PATH, headers).await;
    assert_eq!(a.status, 200, "standing: {}", a.body);
    a.json()
}

async fn standing_of(gw: &Gateway, key: &ApiKey) -> Value {
    standing(gw, &[("x-api-key", &key.secret)]).await
}

/// The rate window of `policy` with length `window` seconds in a standing report.
fn window<'a>(standing: &'a Value, policy: &str, window: u64) -> &'a Value {
    standing["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .find(|w| w["policy"] == policy && w["kind"] == "rate" && w["window"] == window)
        .unwrap_or_else(|| panic!("no {policy} window of {window} s in {standing}"))
}

/// `used` of that window.
fn used(standing: &Value, policy: &str, window_secs: u64) -> u64 {
    let w = window(standing, policy, window_secs);
    let (used, limit, remaining) = (
        w["used"].as_u64().unwrap(),
        w["limit"].as_u64().unwrap(),
        w["remaining"].as_u64().unwrap(),
    );
    assert_eq!(used + remaining, limit, "used + remaining = limit: {w}");
    used
}

/// Asserts `a` is the documented 429 (README "What callers see"): `Retry-After` of at
/// least 1 s, and `{"error": "rate_limited", "message", "policy", "retry_after",
/// "request_id"}` agreeing with the headers. Returns `Retry-After`.
fn assert_rate_limited(a: &Answer, policy: &str) -> u64 {
    assert_eq!(a.status, 429, "expected a 429: {}", a.body);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let body = a.json();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(body["policy"], policy, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let id = a.header("x-request-id").expect("X-Request-Id");
    assert!(!id.is_empty());
    assert_eq!(body["request_id"], id, "{body}");
    let retry = a.header_u64("retry-after");
    assert!(retry >= 1, "Retry-After: {retry}");
    assert_eq!(
        body["retry_after"], retry,
        "body and header disagree: {body}"
    );
    retry
}

/// The member name of the `RateLimit` header (which window the headers describe).
fn ratelimit_member(a: &Answer) -> String {
    let value = a.header("ratelimit").expect("RateLimit header");
    let list = sfv::Parser::parse_list(value.as_bytes())
        .unwrap_or_else(|e| panic!("RateLimit {value:?} is not an sf-list: {e}"));
    let [sfv::ListEntry::Item(item)] = list.as_slice() else {
        panic!("RateLimit {value:?}: expected one item")
    };
    item.bare_item.as_str().expect("a string name").to_string()
}

/// How many answers had each status.
fn statuses(answers: &[Answer]) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for a in answers {
        *out.entry(a.status).or_default() += 1;
    }
    out
}

// ----------------------------------------------------------------------------------------
// Time, polling, metrics
// ----------------------------------------------------------------------------------------

/// Waits until, for each `(period in seconds, needed)`, at least `needed` is left of the
/// current window of that period, so the counting that follows stays in one window.
async fn wait_for_fresh_windows(periods: &[(u64, Duration)]) {
    loop {
        let now = now_ms();
        let wait = periods
            .iter()
            .map(|&(period, needed)| {
                let period = period * 1000;
                let left = period - now % period;
                if left < needed.as_millis() as u64 {
                    left + 10
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        if wait == 0 {
            return;
        }
        tokio::time::sleep(ms(wait)).await;
    }
}

/// Polls `check` every 50 ms until it holds; panics after `limit` (a hang guard).
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(ms(50)).await;
    }
}

async fn fallback_active(gw: &Gateway) -> Option<f64> {
    metric(
        &gw.metrics_text().await,
        "tollgate_ratelimit_fallback_active",
        &[],
    )
}

async fn decisions(gw: &Gateway, route: &str, decision: &str) -> f64 {
    let text = gw.metrics_text().await;
    metric(
        &text,
        "tollgate_ratelimit_decisions_total",
        &[("route", route), ("decision", decision)],
    )
    .unwrap_or(0.0)
}

// ----------------------------------------------------------------------------------------
// 1. Exactness across instances
// ----------------------------------------------------------------------------------------

/// Two gateways with the same file share `store`; alice's plan allows 50 per minute and
/// the route `api` has a global limit far above that (a second subject: on a Cluster in
/// another slot). 200 requests at once, alternating between the gateways: exactly 50
/// pass, on both gateways together; both then see the quota used up.
async fn plan_quota_is_exact_across_two_gateways(store: Store<'_>) {
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 50, per: 1m}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - name: api\n    path_prefix: /\n    upstream: up\n    auth: required\n    \
         rate_limit: {{global: {{limits: [{{requests: 1000, per: 1m}}]}}}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = store.yaml(),
    );
    let (a, b) = (
        start_gateway(&up, &rest).await,
        start_gateway(&up, &rest).await,
    );
    let gateways = [&a, &b];

    wait_for_fresh_windows(&[(60, secs(15))]).await;
    let key = &alice;
    let answers = join_all((0..200).map(|i| {
        let gw = gateways[i % 2];
        async move { (i % 2, get_as(gw, &format!("/burst/{i}"), key).await) }
    }))
    .await;
    let per_gateway: Vec<usize> = (0..2)
        .map(|g| {
            answers
                .iter()
                .filter(|(n, a)| *n == g && a.status == 200)
                .count()
        })
        .collect();
    let answers: Vec<Answer> = answers.into_iter().map(|(_, a)| a).collect();
    assert_eq!(
        statuses(&answers),
        BTreeMap::from([(200, 50), (429, 150)]),
        "admitted per gateway: {per_gateway:?}"
    );
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_rate_limited(a, "gold");
    }
    assert_eq!(up.hits(), 50, "only admitted requests reach the upstream");

    // Both gateways see the same, used-up quota.
    for gw in gateways {
        let s = standing_of(gw, &alice).await;
        assert_eq!(used(&s, "gold", 60), 50, "{s}");
        assert_rate_limited(&get_as(gw, "/after", &alice).await, "gold");
    }
    assert_eq!(
        store.counter("c:alice", "gold:60000:c").await.as_deref(),
        Some("50")
    );
    // The route's global window counted exactly the admitted requests (on a Cluster the
    // refused ones it counted first are given back in the background).
    eventually(
        "the route's global counter settles at the admitted count",
        secs(10),
        || async {
            store
                .counter("r:api", "route:api:all:60000:c")
                .await
                .as_deref()
                == Some("50")
        },
    )
    .await;
}

#[tokio::test]
async fn a_plan_quota_is_exact_across_two_gateways_sharing_one_redis() {
    let redis = RedisServer::start().await;
    plan_quota_is_exact_across_two_gateways(Store::Single(&redis)).await;
}

#[tokio::test]
async fn a_plan_quota_is_exact_across_two_gateways_sharing_a_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    plan_quota_is_exact_across_two_gateways(Store::Cluster(&cluster)).await;
}

// ----------------------------------------------------------------------------------------
// 2. Several windows
// ----------------------------------------------------------------------------------------

/// Plan gold: 3 per 2 s and 4 per hour. The short window refuses the 4th request
/// (counted in neither window), rolls over after `Retry-After`, and the hour window then
/// refuses a request without it counting in the short window. The standing endpoint
/// consumes nothing.
#[tokio::test]
async fn a_request_refused_by_one_window_counts_in_no_other_and_windows_roll_over() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 3, per: 2s}}, {{requests: 4, per: 1h}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;
    // Connects the limiter and caches the key, so the counting below is quick.
    standing_of(&gw, &alice).await;

    wait_for_fresh_windows(&[(2, ms(1600)), (3600, secs(30))]).await;
    // Asking for the standing, however often, consumes nothing.
    for _ in 0..5 {
        let s = standing_of(&gw, &alice).await;
        assert_eq!(s["consumer"], "alice", "{s}");
        assert_eq!(s["plan"], "gold", "{s}");
        assert_eq!(s["auth"], "api_key", "{s}");
        assert_eq!(used(&s, "gold", 2), 0, "{s}");
        assert_eq!(used(&s, "gold", 3600), 0, "{s}");
    }
    for i in 0..3 {
        let a = get_as(&gw, "/x", &alice).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.header_u64("x-ratelimit-remaining"), 2 - i);
    }
    let refused = get_as(&gw, "/x", &alice).await;
    let retry = assert_rate_limited(&refused, "gold");
    assert_eq!(
        ratelimit_member(&refused),
        "gold-2s",
        "the short window refused"
    );
    assert!(retry <= 2, "Retry-After {retry} beyond a 2 s window");
    let s = standing_of(&gw, &alice).await;
    assert_eq!(used(&s, "gold", 2), 3, "{s}");
    assert_eq!(
        used(&s, "gold", 3600),
        3,
        "the refused request counted: {s}"
    );

    // The short window rolls over: once Retry-After has passed, a request passes.
    // (Refused attempts while polling count nowhere.)
    let deadline = Instant::now() + secs(retry + 5);
    let admitted_at = loop {
        let before = now_ms();
        let a = get_as(&gw, "/x", &alice).await;
        if a.status == 200 {
            break before;
        }
        assert_rate_limited(&a, "gold");
        assert!(
            Instant::now() < deadline,
            "the 2 s window did not roll over within Retry-After ({retry} s) + 5 s"
        );
        tokio::time::sleep(ms(50)).await;
    };
    // That was the 4th admitted request: the hour window is used up, and refuses.
    let refused = get_as(&gw, "/x", &alice).await;
    let retry = assert_rate_limited(&refused, "gold");
    assert_eq!(ratelimit_member(&refused), "gold-hour", "the hour refused");
    assert!(retry > 2, "Retry-After {retry} is not the hour window's");
    let s = standing_of(&gw, &alice).await;
    let asked_at = now_ms();
    assert_eq!(used(&s, "gold", 3600), 4, "{s}");
    // Redis holds, per window, what admitted requests wrote: the short window has the
    // one request admitted since it rolled over, not the refused one after it.
    assert_eq!(
        store.counter("c:alice", "gold:2000:c").await.as_deref(),
        Some("1")
    );
    if admitted_at / 2000 == asked_at / 2000 {
        assert_eq!(
            used(&s, "gold", 2),
            1,
            "refused by the hour but counted: {s}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// 3. Refused requests count nowhere
// ----------------------------------------------------------------------------------------

/// The route's per-caller limit (3) refuses; the plan (100) would allow. After the
/// refusals the plan's `used` is the admitted count, not admitted + refused.
#[tokio::test]
async fn refused_requests_are_not_counted_in_any_window() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 100, per: 1h}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - name: narrow\n    path_prefix: /\n    upstream: up\n    auth: required\n    \
         rate_limit: {{per_caller: {{limits: [{{requests: 3, per: 1h}}]}}}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    for _ in 0..3 {
        assert_eq!(get_as(&gw, "/x", &alice).await.status, 200);
    }
    let refused = join_all((0..10).map(|_| get_as(&gw, "/x", &alice))).await;
    for a in &refused {
        assert_rate_limited(a, "route:narrow");
    }
    for _ in 0..10 {
        assert_rate_limited(&get_as(&gw, "/x", &alice).await, "route:narrow");
    }
    let s = standing_of(&gw, &alice).await;
    assert_eq!(
        used(&s, "gold", 3600),
        3,
        "refused requests were counted: {s}"
    );
    assert_eq!(window(&s, "gold", 3600)["remaining"], 97, "{s}");
    assert_eq!(
        store.counter("c:alice", "gold:3600000:c").await.as_deref(),
        Some("3")
    );
    assert_eq!(
        store
            .counter("r:narrow:c:alice", "route:narrow:3600000:c")
            .await
            .as_deref(),
        Some("3")
    );
    assert_eq!(up.hits(), 3);
}

// ----------------------------------------------------------------------------------------
// 4. Anonymous callers, per IP
// ----------------------------------------------------------------------------------------

/// Behind a trusted proxy (127.0.0.1), each `X-Forwarded-For` client has its own
/// anonymous quota of 3 per hour, IPv4 and IPv6 alike.
#[tokio::test]
async fn anonymous_callers_each_get_their_own_quota_per_forwarded_ip() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let rest = format!(
        "{auth}  trusted_proxies: [\"127.0.0.1/32\"]\n  client_ip_header: x-forwarded-for\n\
         rate_limit:\n{redis}  anonymous: {{limits: [{{requests: 3, per: 1h}}]}}\n\
         routes:\n  - {{name: api, path_prefix: /, upstream: up}}\n",
        auth = auth_yaml(),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;
    let clients = ["203.0.113.7", "198.51.100.23", "2001:db8::1"];

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    for ip in &clients[..2] {
        let xff = [("x-forwarded-for", *ip)];
        for i in 0..3 {
            let a = get(&gw, "/x", &xff).await;
            assert_eq!(a.status, 200, "{ip} request {i}: {}", a.body);
            assert_eq!(a.header_u64("x-ratelimit-remaining"), 2 - i, "{ip}");
        }
        assert_rate_limited(&get(&gw, "/x", &xff).await, "anonymous");
        let s = standing(&gw, &xff).await;
        assert_eq!(s["auth"], "anonymous", "{s}");
        assert_eq!(s["consumer"], Value::Null, "{s}");
        assert_eq!(used(&s, "anonymous", 3600), 3, "{ip}: {s}");
    }
    // A third client, and the proxy itself, are untouched by the first two.
    let third = [("x-forwarded-for", clients[2])];
    assert_eq!(used(&standing(&gw, &third).await, "anonymous", 3600), 0);
    assert_eq!(used(&standing(&gw, &[]).await, "anonymous", 3600), 0);
    let a = get(&gw, "/x", &third).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header_u64("x-ratelimit-remaining"), 2);
    // A forwarded chain is walked from the right: the client is the last untrusted hop;
    // an IPv4-mapped IPv6 address is the same client as the IPv4 one.
    for xff in ["10.9.9.9, 203.0.113.7", "::ffff:203.0.113.7"] {
        let a = get(&gw, "/x", &[("x-forwarded-for", xff)]).await;
        assert_rate_limited(&a, "anonymous");
    }

    // An IPv6 caller is counted by its /64.
    let subjects = [clients[0], clients[1], "2001:db8::/64"];
    for (ip, count) in [(subjects[0], "3"), (subjects[1], "3"), (subjects[2], "1")] {
        assert_eq!(
            store
                .counter(&format!("ip:{ip}"), "anonymous:3600000:c")
                .await
                .as_deref(),
            Some(count),
            "{ip}"
        );
    }
    assert_eq!(up.hits(), 7);
}

/// An anonymous IPv6 caller is limited by its /64 (`rate_limit.ipv6_prefix`): rotating
/// through addresses of one /64 buys no fresh quota, another /64 has its own.
#[tokio::test]
async fn rotating_ipv6_addresses_inside_one_64_buys_no_fresh_anonymous_quota() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let rest = format!(
        "{auth}  trusted_proxies: [\"127.0.0.1/32\"]\n  client_ip_header: x-forwarded-for\n\
         rate_limit:\n{redis}  anonymous: {{limits: [{{requests: 3, per: 1h}}]}}\n\
         routes:\n  - {{name: api, path_prefix: /, upstream: up}}\n",
        auth = auth_yaml(),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    let rotated = [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
        "2001:db8:1:2:1234::9",
        "[2001:db8:1:2::77]:443",
    ];
    let mut answers = Vec::new();
    for ip in rotated {
        answers.push(get(&gw, "/x", &[("x-forwarded-for", ip)]).await);
    }
    assert_eq!(statuses(&answers), BTreeMap::from([(200, 3), (429, 2)]));
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_rate_limited(a, "anonymous");
    }
    let other = get(&gw, "/x", &[("x-forwarded-for", "2001:db8:1:3::1")]).await;
    assert_eq!(other.status, 200, "another /64: {}", other.body);
    let s = standing(&gw, &[("x-forwarded-for", "2001:db8:1:2::abcd")]).await;
    assert_eq!(used(&s, "anonymous", 3600), 3, "{s}");
    assert_eq!(
        store
            .counter("ip:2001:db8:1:2::/64", "anonymous:3600000:c")
            .await
            .as_deref(),
        Some("3")
    );
    assert_eq!(up.hits(), 4, "the refused requests reached no upstream");
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` is not believed: a client
/// cannot buy a fresh anonymous quota by inventing addresses.
#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_buys_no_fresh_anonymous_quota() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let rest = format!(
        "{auth}  trusted_proxies: [\"10.0.0.0/8\"]\n  client_ip_header: x-forwarded-for\n\
         rate_limit:\n{redis}  anonymous: {{limits: [{{requests: 3, per: 1h}}]}}\n\
         routes:\n  - {{name: api, path_prefix: /, upstream: up}}\n",
        auth = auth_yaml(),
        redis = redis_yaml(&[redis.url()], false),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    let invented = [
        "1.1.1.1",
        "2.2.2.2",
        "3.3.3.3",
        "4.4.4.4",
        "2001:db8::7",
        "5.5.5.5",
    ];
    let mut answers = Vec::new();
    for ip in invented {
        answers.push(get(&gw, "/x", &[("x-forwarded-for", ip)]).await);
    }
    assert_eq!(statuses(&answers), BTreeMap::from([(200, 3), (429, 3)]));
    assert_eq!(
        redis.command(&["KEYS", "tg:*"]).await,
        Resp::Array(Some(vec![Resp::Bulk(Some("tg:{ip:127.0.0.1}:w".into()))])),
        "only the peer's address is a subject"
    );
}

// ----------------------------------------------------------------------------------------
// 5. Route limits
// ----------------------------------------------------------------------------------------

/// Route `shared` allows 10 per hour in all; three consumers on a generous plan send 30
/// requests at once: exactly 10 pass, the rest are refused by `route:shared:all`, and
/// each consumer's plan counted only its admitted requests.
#[tokio::test]
async fn a_route_global_limit_is_shared_exactly_by_all_consumers() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let keys = [new_key(), new_key(), new_key()];
    let names = ["alice", "bob", "carol"];
    let consumers: String = names
        .iter()
        .zip(&keys)
        .map(|(name, key)| consumer(name, "gold", key))
        .collect();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 100, per: 1h}}]}}\n\
         consumers:\n{consumers}rate_limit:\n{redis}\
         routes:\n  - name: shared\n    path_prefix: /\n    upstream: up\n    auth: required\n    \
         rate_limit: {{global: {{limits: [{{requests: 10, per: 1h}}]}}}}\n",
        auth = auth_yaml(),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    let answers = join_all((0..30).map(|i| get_as(&gw, "/x", &keys[i % 3]))).await;
    assert_eq!(statuses(&answers), BTreeMap::from([(200, 10), (429, 20)]));
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_rate_limited(a, "route:shared:all");
    }
    let mut plan_total = 0;
    for (name, key) in names.iter().zip(&keys) {
        assert_rate_limited(&get_as(&gw, "/y", key).await, "route:shared:all");
        let s = standing_of(&gw, key).await;
        assert_eq!(s["consumer"], *name);
        plan_total += used(&s, "gold", 3600);
    }
    assert_eq!(plan_total, 10, "plans counted refused requests");
    assert_eq!(
        store
            .counter("r:shared", "route:shared:all:3600000:c")
            .await
            .as_deref(),
        Some("10")
    );
    assert_eq!(up.hits(), 10);
}

/// Route `narrow` allows each caller 2 per hour on top of the plan. Alice (gold, 5 per
/// hour) is refused by the route after 2; bob (bronze, 1 per hour) by his plan after 1.
/// The plan still counts across routes: alice has 3 left elsewhere, then gold refuses.
#[tokio::test]
async fn a_route_per_caller_limit_applies_on_top_of_the_plan_and_the_strictest_decides() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let (alice, bob) = (new_key(), new_key());
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 5, per: 1h}}]}}\n  \
         - {{name: bronze, limits: [{{requests: 1, per: 1h}}]}}\n\
         consumers:\n{alice}{bob}rate_limit:\n{redis}\
         routes:\n  - name: narrow\n    path_prefix: /narrow\n    upstream: up\n    auth: required\n    \
         rate_limit: {{per_caller: {{limits: [{{requests: 2, per: 1h}}]}}}}\n  \
         - {{name: wide, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        bob = consumer("bob", "bronze", &bob),
        redis = redis_yaml(&[redis.url()], false),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    for _ in 0..2 {
        assert_eq!(get_as(&gw, "/narrow/a", &alice).await.status, 200);
    }
    let refused = get_as(&gw, "/narrow/a", &alice).await;
    assert_rate_limited(&refused, "route:narrow");
    assert_eq!(ratelimit_member(&refused), "route:narrow-hour");
    assert_eq!(refused.header_u64("x-ratelimit-limit"), 2);

    assert_eq!(get_as(&gw, "/narrow/b", &bob).await.status, 200);
    let refused = get_as(&gw, "/narrow/b", &bob).await;
    assert_rate_limited(&refused, "bronze");
    assert_eq!(ratelimit_member(&refused), "bronze-hour");
    assert_eq!(refused.header_u64("x-ratelimit-limit"), 1);

    // Alice's plan counted her 2 on `narrow`: 3 more anywhere else, then gold refuses.
    for i in 0..3 {
        let a = get_as(&gw, "/elsewhere", &alice).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.header_u64("x-ratelimit-remaining"), 2 - i);
    }
    assert_rate_limited(&get_as(&gw, "/elsewhere", &alice).await, "gold");
    assert_eq!(used(&standing_of(&gw, &alice).await, "gold", 3600), 5);
    assert_eq!(up.hits(), 6);
}

// ----------------------------------------------------------------------------------------
// 6. Concurrency cap
// ----------------------------------------------------------------------------------------

/// Plan `solo` has `concurrency: 1`: while one request is in flight the next is refused;
/// once it has finished, its slot is given back and a new request passes.
#[tokio::test]
async fn a_concurrency_cap_refuses_a_second_request_in_flight_and_frees_the_slot_after() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: solo, concurrency: 1}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "solo", &alice),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;

    let first = async {
        let a = get_as(&gw, "/__sleep/800", &alice).await;
        (a, Instant::now())
    };
    let second = async {
        // Only once the first is at the upstream (holding the slot).
        eventually(
            "the first request reaches the upstream",
            secs(10),
            || async { up.hits() == 1 },
        )
        .await;
        let a = get_as(&gw, "/__sleep/800", &alice).await;
        (a, Instant::now())
    };
    let ((first, first_done), (second, second_done)) = tokio::join!(first, second);
    assert_eq!(first.status, 200, "{}", first.body);
    let retry = assert_rate_limited(&second, "solo");
    assert_eq!(retry, 1, "a concurrency refusal says Retry-After: 1");
    assert!(
        second_done < first_done,
        "the second request was answered only after the first finished"
    );
    assert_eq!(up.hits(), 1, "the refused request reached the upstream");

    // The slot is given back once the first request has ended (in the background).
    eventually("a new request passes", secs(10), || async {
        let a = get_as(&gw, "/quick", &alice).await;
        if a.status != 200 {
            assert_rate_limited(&a, "solo");
        }
        a.status == 200
    })
    .await;
    eventually("no lease is left in Redis", secs(10), || async {
        store.command(&["ZCARD", "tg:{c:alice}:l"]).await == Resp::Integer(0)
    })
    .await;
    let s = standing_of(&gw, &alice).await;
    let cap = s["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "concurrency")
        .unwrap_or_else(|| panic!("no concurrency entry: {s}"));
    assert_eq!(cap["limit"], 1, "{s}");
    assert_eq!(cap["used"], 0, "{s}");
}

/// A client that waits for each answer before sending its next request never has two
/// requests in flight, so no concurrency cap may refuse it: the slot of a finished
/// request is free for the next one. Here the plan and the route each cap at 1.
#[tokio::test]
async fn one_request_at_a_time_is_never_refused_by_a_concurrency_cap() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: solo, concurrency: 1}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - name: api\n    path_prefix: /\n    upstream: up\n    auth: required\n    \
         rate_limit: {{global: {{concurrency: 1}}}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "solo", &alice),
        redis = redis_yaml(&[redis.url()], false),
    );
    let gw = start_gateway(&up, &rest).await;

    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..100 {
        let a = get_as(&gw, &format!("/one/{i}"), &alice).await;
        if a.status != 200 {
            let policy = a.json()["policy"].as_str().unwrap_or("?").to_string();
            *refused.entry(format!("{} {policy}", a.status)).or_default() += 1;
        }
    }
    assert!(
        refused.is_empty(),
        "100 strictly sequential requests, refused: {refused:?}"
    );
}

/// The lease id of a concurrency slot is the gateway's own, never the client's
/// `X-Request-Id`: six requests in flight at once, all sending one `X-Request-Id`, against
/// a cap of 2, on Redis and on the in-process limiter: exactly two are admitted (under
/// that id as lease, all six would pass, and any caller who learnt the id could free the
/// slot).
#[tokio::test]
async fn one_x_request_id_on_many_requests_buys_no_extra_concurrency_slot() {
    let redis = RedisServer::start().await;
    for store in [Some(redis_yaml(&[redis.url()], false)), None] {
        let up = TestUpstream::start("up").await;
        let alice = new_key();
        let rest = format!(
            "{auth}plans:\n  - {{name: pair, concurrency: 2}}\n\
             consumers:\n{alice}rate_limit:\n{redis}  concurrency_lease_ttl: 1h\n\
             routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
            auth = auth_yaml(),
            alice = consumer("alice", "pair", &alice),
            redis = store.clone().unwrap_or_default(),
        );
        let gw = start_gateway(&up, &rest).await;
        let headers = [
            ("x-api-key", alice.secret.as_str()),
            ("x-request-id", "same-id-for-all"),
        ];
        let answers = join_all((0..6).map(|_| get(&gw, "/__sleep/3000", &headers))).await;
        assert_eq!(
            statuses(&answers),
            BTreeMap::from([(200, 2), (429, 4)]),
            "redis: {}",
            store.is_some()
        );
        for a in answers.iter().filter(|a| a.status == 429) {
            assert_rate_limited(a, "pair");
        }
        assert_eq!(
            up.hits(),
            2,
            "only the admitted requests reached the upstream"
        );
        if store.is_some() {
            eventually("both leases are given back", secs(10), || async {
                redis.command(&["ZCARD", "tg:{c:alice}:l"]).await == Resp::Integer(0)
            })
            .await;
        }
    }
}

/// Without Redis, `rate_limit.concurrency_lease_ttl` applies too: a slot held longer
/// than the ttl (1 s) stops counting, so a second request passes while the first is still
/// at the upstream. A reload that changes the ttl is reported as needing a restart.
#[tokio::test]
async fn without_redis_the_concurrency_lease_ttl_is_honoured_and_a_change_needs_a_restart() {
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = |ttl: &str| {
        format!(
            "{auth}plans:\n  - {{name: solo, concurrency: 1}}\n\
             consumers:\n{alice}rate_limit:\n  concurrency_lease_ttl: {ttl}\n\
             routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
            auth = auth_yaml(),
            alice = consumer("alice", "solo", &alice),
        )
    };
    let gw = start_gateway(&up, &rest("1s")).await;

    let first = async {
        let a = get_as(&gw, "/__sleep/8000", &alice).await;
        (a, Instant::now())
    };
    let second = async {
        eventually(
            "the first request reaches the upstream",
            secs(5),
            || async { up.hits() == 1 },
        )
        .await;
        eventually("the expired lease frees the slot", secs(6), || async {
            let a = get_as(&gw, "/quick", &alice).await;
            if a.status != 200 {
                assert_rate_limited(&a, "solo");
            }
            a.status == 200
        })
        .await;
        Instant::now()
    };
    let ((first, first_done), second_done) = tokio::join!(first, second);
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        second_done < first_done,
        "the second request passed only after the first had finished"
    );

    let yaml = std::fs::read_to_string(gw.config_path()).expect("config");
    gw.rewrite_config(&yaml.replace("concurrency_lease_ttl: 1s", "concurrency_lease_ttl: 2s"));
    assert!(
        gw.wait_for_log("rate_limit.concurrency_lease_ttl need a restart", secs(10))
            .await,
        "{}",
        gw.logs()
    );
}

/// A plan without limits means unlimited, and `rate_limit.default_plan` applies only to
/// callers whose plan is unset: alice on `free` (no limits) is never limited, bob (no
/// plan) gets the default plan `basic`.
#[tokio::test]
async fn a_plan_without_limits_is_unlimited_and_the_default_plan_applies_only_without_a_plan() {
    let up = TestUpstream::start("up").await;
    let (alice, bob) = (new_key(), new_key());
    let rest = format!(
        "{auth}plans:\n  - {{name: free}}\n  - {{name: basic, limits: [{{requests: 2, per: 1h}}]}}\n\
         consumers:\n{alice}  - {{id: bob, keys: [{{id: bob-key, hash: {bob}}}]}}\n\
         rate_limit:\n  default_plan: basic\n\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "free", &alice),
        bob = bob.hash,
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    for i in 0..10 {
        let a = get_as(&gw, "/x", &alice).await;
        assert_eq!(a.status, 200, "alice request {i}: {}", a.body);
        assert_eq!(a.header("x-ratelimit-limit"), None, "alice is not limited");
    }
    let s = standing_of(&gw, &alice).await;
    assert_eq!(s["plan"], "free", "{s}");
    assert_eq!(s["windows"], Value::Array(vec![]), "{s}");
    for _ in 0..2 {
        assert_eq!(get_as(&gw, "/x", &bob).await.status, 200);
    }
    assert_rate_limited(&get_as(&gw, "/x", &bob).await, "basic");
    assert_eq!(up.hits(), 12);
}

/// `block_for` on a plan: once alice exceeds `strict` (2 per 2 s) she is refused on every
/// instance sharing the Redis for 10 minutes, also after her window has rolled over; the
/// block shows in her standing (kind `block`) and the admin API's reset clears it on
/// every instance. The upstream sees only the admitted requests.
#[tokio::test]
async fn a_block_after_abuse_holds_on_every_instance_and_the_admin_reset_clears_it() {
    const ADMIN_TOKEN: &str = "admin-token-for-the-block-test-7f3a9c1e5b2d8f4a6c0e9b1d3f5a7c9e";
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: strict, limits: [{{requests: 2, per: 2s}}], block_for: 10m}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "strict", &alice),
        redis = redis_yaml(&[redis.url()], false),
    );
    let admin_port = free_port();
    let cfg = GatewayConfig::new()
        .with_env(PEPPER_ENV, PEPPER)
        .with_env("TOLLGATE_ADMIN_TOKENS", ADMIN_TOKEN);
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}\
         admin:\n  address: 127.0.0.1:{admin_port}\n",
        up.address()
    ));
    let one = Gateway::start(cfg, &yaml).await;
    let two = start_gateway(&up, &rest).await;
    wait_for_port(admin_port, secs(20))
        .await
        .expect("admin port");

    wait_for_fresh_windows(&[(2, ms(1500))]).await;
    assert_eq!(get_as(&one, "/a", &alice).await.status, 200);
    assert_eq!(get_as(&two, "/b", &alice).await.status, 200);
    let retry = assert_rate_limited(&get_as(&one, "/c", &alice).await, "strict");
    assert!(retry > 500, "the block's Retry-After: {retry}");

    // Her 2 s window rolls over; she is still refused on both instances.
    eventually("the rate window rolls over", secs(10), || async {
        used(&standing_of(&two, &alice).await, "strict", 2) == 0
    })
    .await;
    for gw in [&one, &two] {
        let retry = assert_rate_limited(&get_as(gw, "/d", &alice).await, "strict");
        assert!(retry > 500, "Retry-After {retry}");
    }
    let s = standing_of(&two, &alice).await;
    let block = s["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "block")
        .unwrap_or_else(|| panic!("no block entry: {s}"));
    assert_eq!(block["remaining"], 0, "{s}");
    assert_eq!(block["window"], 600, "{s}");
    assert!(block["reset"].as_u64().unwrap() > 500, "{s}");
    assert_eq!(up.hits(), 2);

    // The admin API's reset ends the block everywhere.
    let reset = one
        .http()
        .post(format!(
            "http://127.0.0.1:{admin_port}/admin/consumers/alice/limits/reset"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status().as_u16(), 204);
    assert_eq!(get_as(&two, "/e", &alice).await.status, 200);
    assert_eq!(get_as(&one, "/f", &alice).await.status, 200);
    let s = standing_of(&one, &alice).await;
    assert!(
        s["windows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "block" && w["remaining"] == 1),
        "{s}"
    );
    assert_eq!(up.hits(), 4);
}

/// Blocks of subjects that are not consumers, through the admin API's `/admin/limits`: an
/// anonymous caller (`ip:<address>`, IPv6 by its /64) blocked under `rate_limit.anonymous`
/// and a route's global limit (`r:<route>`) blocked under its own `block_for` show as
/// `kind: block` entries, and `POST /admin/limits/reset` clears each on every instance
/// (with `redis`: two gateways sharing it; else the one gateway's in-process limiter).
/// Resetting one subject leaves the others blocked. No database is needed.
async fn anonymous_and_route_blocks_are_visible_and_reset_by_the_admin_api(
    redis: Option<&RedisServer>,
) {
    const ADMIN_TOKEN: &str = "admin-token-for-the-subject-test-0b9d7f5e3c1a8e6d4b2f0a9c7e5d3b";
    let up = TestUpstream::start("up").await;
    let redis_yaml = redis.map_or(String::new(), |r| redis_yaml(&[r.url()], false));
    let rest = format!(
        "{auth}  trusted_proxies: [\"127.0.0.1/32\"]\n  client_ip_header: x-forwarded-for\n\
         rate_limit:\n{redis_yaml}  anonymous: {{limits: [{{requests: 2, per: 1h}}], block_for: 10m}}\n\
         routes:\n  - name: shared\n    path_prefix: /shared\n    upstream: up\n    \
         rate_limit: {{global: {{limits: [{{requests: 1, per: 1h}}], block_for: 5m}}}}\n  \
         - {{name: api, path_prefix: /, upstream: up}}\n",
        auth = auth_yaml(),
    );
    let admin_port = free_port();
    let cfg = GatewayConfig::new()
        .with_env(PEPPER_ENV, PEPPER)
        .with_env("TOLLGATE_ADMIN_TOKENS", ADMIN_TOKEN);
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}\
         admin:\n  address: 127.0.0.1:{admin_port}\n",
        up.address()
    ));
    let one = Gateway::start(cfg, &yaml).await;
    let two = match redis {
        Some(_) => Some(start_gateway(&up, &rest).await),
        None => None,
    };
    let others: Vec<&Gateway> = two.iter().collect();
    wait_for_port(admin_port, secs(20))
        .await
        .expect("admin port");
    let admin = |method: reqwest::Method, path: &str| {
        one.http()
            .request(method, format!("http://127.0.0.1:{admin_port}{path}"))
            .bearer_auth(ADMIN_TOKEN)
    };
    let subject_standing = |subject: &'static str| async move {
        // `:` and `/` need no escape in a query.
        let resp = admin(
            reqwest::Method::GET,
            &format!("/admin/limits?subject={subject}"),
        )
        .send()
        .await
        .expect("GET /admin/limits");
        assert_eq!(resp.status().as_u16(), 200, "{subject}");
        resp.json::<Value>().await.expect("JSON")
    };
    let block_of = |standing: &Value| -> Value {
        standing["windows"]
            .as_array()
            .expect("windows")
            .iter()
            .find(|w| w["kind"] == "block")
            .cloned()
            .unwrap_or_else(|| panic!("no block entry: {standing}"))
    };
    let reset = |subject: &'static str| async move {
        let resp = admin(reqwest::Method::POST, "/admin/limits/reset")
            .json(&serde_json::json!({ "subject": subject }))
            .send()
            .await
            .expect("POST /admin/limits/reset");
        assert_eq!(resp.status().as_u16(), 204, "reset {subject}");
    };
    let caller = [("x-forwarded-for", "2001:db8::1")];
    let neighbour = [("x-forwarded-for", "2001:db8::2")];
    let stranger = [("x-forwarded-for", "198.51.100.9")];
    let every: Vec<&Gateway> = std::iter::once(&one)
        .chain(others.iter().copied())
        .collect();
    let last = *every.last().expect("a gateway");

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    // The anonymous caller spends its 2 and is blocked; its /64 neighbour with it.
    assert_eq!(get(&one, "/a", &caller).await.status, 200);
    assert_eq!(get(last, "/b", &caller).await.status, 200);
    assert_rate_limited(&get(&one, "/c", &caller).await, "anonymous");
    for gw in &every {
        let retry = assert_rate_limited(&get(gw, "/d", &neighbour).await, "anonymous");
        assert!(retry > 500, "the anonymous block's Retry-After: {retry}");
    }
    // The route's global limit: one request, then a block for everyone on it.
    assert_eq!(get(last, "/shared/x", &stranger).await.status, 200);
    assert_rate_limited(&get(&one, "/shared/y", &stranger).await, "route:shared:all");
    let retry = assert_rate_limited(
        &get(last, "/shared/z", &[("x-forwarded-for", "192.0.2.1")]).await,
        "route:shared:all",
    );
    assert!(retry > 200, "the route block's Retry-After: {retry}");

    // Both blocks are visible; an address stands for its /64.
    let anon = subject_standing("ip:2001:db8::77").await;
    assert_eq!(anon["subject"], "ip:2001:db8::/64", "{anon}");
    assert_eq!(anon["policy"], "anonymous", "{anon}");
    let block = block_of(&anon);
    assert_eq!(block["remaining"], 0, "{anon}");
    assert_eq!(block["window"], 600, "{anon}");
    let route = subject_standing("r:shared").await;
    assert_eq!(route["policy"], "route:shared:all", "{route}");
    let block = block_of(&route);
    assert_eq!(block["remaining"], 0, "{route}");
    assert_eq!(block["window"], 300, "{route}");

    // Resetting the anonymous caller frees it everywhere and leaves the route blocked.
    reset("ip:2001:db8::/64").await;
    assert_eq!(
        block_of(&subject_standing("ip:2001:db8::1").await)["remaining"],
        1
    );
    for gw in &every {
        assert_eq!(get(gw, "/e", &neighbour).await.status, 200);
    }
    assert_rate_limited(&get(last, "/shared/w", &stranger).await, "route:shared:all");
    reset("r:shared").await;
    assert_eq!(
        block_of(&subject_standing("r:shared").await)["remaining"],
        1
    );
    assert_eq!(get(last, "/shared/v", &stranger).await.status, 200);

    // A name no subject has, and a route that does not exist, are 404.
    for bad in ["ip:not-an-address", "r:nope", "x"] {
        let resp = admin(
            reqwest::Method::GET,
            &format!("/admin/limits?subject={bad}"),
        )
        .send()
        .await
        .expect("GET /admin/limits");
        assert_eq!(resp.status().as_u16(), 404, "{bad}");
    }
    // The caller's 2, the shared route's 1 before and 1 after its reset, and the
    // neighbour's one per gateway after the anonymous reset.
    assert_eq!(up.hits(), 4 + every.len() as u64);
}

#[tokio::test]
async fn anonymous_and_route_blocks_are_reset_on_every_instance_sharing_redis() {
    let redis = RedisServer::start().await;
    anonymous_and_route_blocks_are_visible_and_reset_by_the_admin_api(Some(&redis)).await;
}

#[tokio::test]
async fn anonymous_and_route_blocks_are_reset_without_redis() {
    anonymous_and_route_blocks_are_visible_and_reset_by_the_admin_api(None).await;
}

/// `tollgate check` finds whatever start would refuse in a limit, with the same rules the
/// admin API applies: a token bucket whose burst refills over more than a year, and two
/// token-bucket windows with one refill period (one counter in the limiter).
#[tokio::test]
async fn tollgate_check_refuses_limits_the_limiter_would_refuse_naming_the_field() {
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(
        "upstreams:\n  - {name: up, targets: [{address: \"127.0.0.1:9\"}]}\n\
         plans:\n  - {name: slow, algorithm: token_bucket, \
         limits: [{requests: 1, per: 1d, burst: 1000}]}\n\
         rate_limit:\n  anonymous: {algorithm: token_bucket, \
         limits: [{requests: 10, per: 1m, burst: 20}, {requests: 5, per: 2m}]}\n\
         routes:\n  - {name: api, path_prefix: /, upstream: up}\n",
    );
    let out = Gateway::check(&yaml).await;
    assert!(!out.success(), "{out:?}");
    for expected in [
        "plans[0].limits[0].burst: refills over",
        "rate_limit.anonymous.limits[1].per: two windows with the same refill period",
    ] {
        assert!(
            out.stderr.contains(expected),
            "no {expected:?} in {}",
            out.stderr
        );
    }
    let refused = Gateway::start_expect_failure(cfg, &yaml).await;
    assert!(
        refused.stderr.contains("plans[0].limits[0].burst"),
        "{}",
        refused.stderr
    );
}

// ----------------------------------------------------------------------------------------
// 7. Redis dies
// ----------------------------------------------------------------------------------------

/// Three routes, each with a global limit: `/local` (12 per hour, fallback `local`
/// override, 3 expected instances: 4 locally), `/open` (2 per hour, override `open`),
/// `/closed` (inherits the top-level `closed`). With Redis killed, `/local` keeps
/// limiting at 4, `/open` allows everything, `/closed` answers 503; nothing hangs; the
/// fallback gauge is 1. After Redis is back, Redis decides again.
#[tokio::test]
async fn when_redis_dies_each_failure_mode_applies_without_hanging_and_redis_takes_over_again() {
    let mut redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let rest = format!(
        "{auth}rate_limit:\n  redis: {{urls: [\"{url}\"], timeout: 500ms, breaker_failures: 2, \
         breaker_cooldown: 1s}}\n  failure_mode: closed\n  expected_instances: 3\n\
         routes:\n  - name: local\n    path_prefix: /local\n    upstream: up\n    \
         rate_limit: {{global: {{limits: [{{requests: 12, per: 1h}}]}}, failure_mode: local}}\n  \
         - name: open\n    path_prefix: /open\n    upstream: up\n    \
         rate_limit: {{global: {{limits: [{{requests: 2, per: 1h}}]}}, failure_mode: open}}\n  \
         - name: closed\n    path_prefix: /closed\n    upstream: up\n    \
         rate_limit: {{global: {{limits: [{{requests: 100, per: 1h}}]}}}}\n",
        auth = auth_yaml(),
        url = redis.url(),
    );
    let gw = start_gateway(&up, &rest).await;
    // Every request must be answered within this; none may time out.
    let client = gw
        .client_builder()
        .timeout(secs(3))
        .build()
        .expect("client");
    let send = |path: &'static str| {
        let (client, url) = (&client, gw.url(path));
        async move { try_get(client, &url, &[]).await }
    };

    wait_for_fresh_windows(&[(3600, secs(20))]).await;
    // Redis decides.
    for path in ["/local", "/local", "/open", "/open", "/closed"] {
        let a = send(path).await.expect("answered");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    assert_rate_limited(&send("/open").await.expect("answered"), "route:open:all");
    let local_key = "tg:{r:local}:w";
    assert_eq!(
        redis.command(&["EXISTS", local_key]).await,
        Resp::Integer(1)
    );
    assert_eq!(fallback_active(&gw).await, Some(0.0));

    redis.kill();
    let mut answers = Vec::new();
    let mut timeouts = 0;
    for path in std::iter::repeat_n(["/local", "/open", "/closed"], 8).flatten() {
        match send(path).await {
            Ok(a) => answers.push((path, a)),
            Err(e) if e.is_timeout() => timeouts += 1,
            Err(e) => panic!("{path}: {e}"),
        }
    }
    assert_eq!(timeouts, 0, "requests hung while Redis was down");
    let of = |path: &str| -> Vec<&Answer> {
        answers
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, a)| a)
            .collect()
    };
    // local: 12 / 3 instances = 4, counted from scratch in this process.
    let local = of("/local");
    let admitted: Vec<_> = local.iter().filter(|a| a.status == 200).collect();
    assert_eq!(admitted.len(), 4, "local fallback: {local:#?}");
    for a in &admitted {
        assert_eq!(a.header_u64("x-ratelimit-limit"), 4, "the limit divided");
    }
    for a in local.iter().filter(|a| a.status != 200) {
        assert_rate_limited(a, "route:local:all");
    }
    // open: everything passes, although Redis had used up its quota.
    for a in of("/open") {
        assert_eq!(a.status, 200, "open fallback: {}", a.body);
    }
    // closed: 503 rate_limit_unavailable.
    for a in of("/closed") {
        assert_eq!(a.status, 503, "closed fallback: {}", a.body);
        let body = a.json();
        assert_eq!(body["error"], "rate_limit_unavailable", "{body}");
        assert_eq!(body["request_id"], a.header("x-request-id").unwrap());
    }
    assert_eq!(fallback_active(&gw).await, Some(1.0), "breaker open");
    assert_eq!(decisions(&gw, "closed", "unavailable").await, 8.0);

    // Redis comes back (empty): after a cool-down one request probes it and Redis decides
    // again. Until then `/closed` keeps answering 503, promptly.
    redis.start_again().await;
    eventually("the breaker closes", secs(20), || async {
        let a = send("/closed").await.expect("answered promptly");
        assert!(a.status == 200 || a.status == 503, "{}", a.body);
        a.status == 200
    })
    .await;
    eventually("the fallback gauge returns to 0", secs(5), || async {
        fallback_active(&gw).await == Some(0.0)
    })
    .await;
    // The local limiter has used up `/local`'s 4; Redis, fresh, has not.
    let a = send("/local").await.expect("answered");
    assert_eq!(a.status, 200, "Redis did not take over again: {}", a.body);
    assert_eq!(a.header_u64("x-ratelimit-limit"), 12);
    assert_eq!(
        redis
            .command(&["HGET", local_key, "route:local:all:3600000:c"])
            .await,
        Resp::Bulk(Some("1".into()))
    );
}

/// Redis stops answering without dying (`CLIENT PAUSE`): each call costs at most the
/// per-call timeout, the breaker opens, the `closed` route answers 503 promptly, and once
/// Redis answers again it decides again.
#[tokio::test]
async fn a_stalled_redis_hangs_no_request_and_decides_again_when_it_answers() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let rest = format!(
        "{auth}rate_limit:\n  redis: {{urls: [\"{url}\"], timeout: 100ms, breaker_failures: 2, \
         breaker_cooldown: 1s}}\n  failure_mode: closed\n\
         routes:\n  - name: api\n    path_prefix: /\n    upstream: up\n    \
         rate_limit: {{global: {{limits: [{{requests: 1000, per: 1h}}]}}}}\n",
        auth = auth_yaml(),
        url = redis.url(),
    );
    let gw = start_gateway(&up, &rest).await;
    let client = gw
        .client_builder()
        .timeout(secs(3))
        .build()
        .expect("client");

    for _ in 0..3 {
        let a = try_get(&client, &gw.url("/x"), &[])
            .await
            .expect("answered");
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "4000", "ALL"]).await,
        Resp::Simple("OK".into())
    );
    let mut answered = Vec::new();
    let mut timeouts = 0;
    for _ in 0..10 {
        match try_get(&client, &gw.url("/x"), &[]).await {
            Ok(a) => answered.push(a),
            Err(e) if e.is_timeout() => timeouts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(timeouts, 0, "requests hung on a stalled Redis");
    for a in &answered {
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.json()["error"], "rate_limit_unavailable");
    }
    assert_eq!(fallback_active(&gw).await, Some(1.0));
    eventually("Redis decides again", secs(20), || async {
        let a = try_get(&client, &gw.url("/x"), &[])
            .await
            .expect("answered promptly");
        assert!(a.status == 200 || a.status == 503, "{}", a.body);
        a.status == 200
    })
    .await;
    eventually("the fallback gauge returns to 0", secs(5), || async {
        fallback_active(&gw).await == Some(0.0)
    })
    .await;
}

/// A Redis latency spike does not lock a consumer out for the lease ttl: Redis is paused
/// (`CLIENT PAUSE`) while a capped request is decided, the call times out and the
/// in-process fallback admits it, and when Redis runs the queued script (taking the slot)
/// the gateway's best-effort release gives the slot back. Without it the slot would stay
/// taken for the whole `concurrency_lease_ttl` (1 h here) and refuse every request.
#[tokio::test]
async fn a_lease_whose_redis_reply_timed_out_is_given_back() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: solo, concurrency: 1}}\n\
         consumers:\n{alice}rate_limit:\n  redis: {{urls: [\"{url}\"], timeout: 200ms, \
         pool_size: 1, breaker_failures: 1000}}\n  failure_mode: local\n  \
         concurrency_lease_ttl: 1h\n\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "solo", &alice),
        url = redis.url(),
    );
    let gw = start_gateway(&up, &rest).await;
    assert_eq!(get_as(&gw, "/warm", &alice).await.status, 200);

    assert_eq!(
        redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]).await,
        Resp::Simple("OK".into())
    );
    let during = get_as(&gw, "/during-the-spike", &alice).await;
    assert_eq!(
        during.status, 200,
        "the fallback admits it: {}",
        during.body
    );
    // Once Redis runs again it has run the timed-out script, and then the release.
    eventually("the timed-out lease is released", secs(10), || async {
        redis.command(&["ZCARD", "tg:{c:alice}:l"]).await == Resp::Integer(0)
    })
    .await;
    let after = get_as(&gw, "/after", &alice).await;
    assert_eq!(after.status, 200, "the slot is free: {}", after.body);
    assert_eq!(up.hits(), 3);
}

/// Redis is unreachable when the gateway starts: that is an outage like any other (the
/// `closed` route answers 503, the gauge is 1), and Redis decides once it is up.
#[tokio::test]
async fn redis_unreachable_at_start_is_an_outage_until_it_answers() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let up = TestUpstream::start("up").await;
    let rest = format!(
        "{auth}rate_limit:\n  redis: {{urls: [\"{url}\"], timeout: 500ms, breaker_cooldown: 1s}}\n  \
         failure_mode: closed\n\
         routes:\n  - name: api\n    path_prefix: /\n    upstream: up\n    \
         rate_limit: {{global: {{limits: [{{requests: 1000, per: 1h}}]}}}}\n",
        auth = auth_yaml(),
        url = redis.url(),
    );
    let gw = start_gateway(&up, &rest).await;
    let client = gw
        .client_builder()
        .timeout(secs(5))
        .build()
        .expect("client");
    for _ in 0..3 {
        let a = try_get(&client, &gw.url("/x"), &[])
            .await
            .expect("answered without hanging");
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.json()["error"], "rate_limit_unavailable");
    }
    assert_eq!(fallback_active(&gw).await, Some(1.0));

    redis.start_again().await;
    eventually("Redis decides once it is up", secs(20), || async {
        let a = try_get(&client, &gw.url("/x"), &[])
            .await
            .expect("answered promptly");
        assert!(a.status == 200 || a.status == 503, "{}", a.body);
        a.status == 200
    })
    .await;
    assert_eq!(fallback_active(&gw).await, Some(0.0));
    assert_eq!(
        redis.command(&["EXISTS", "tg:{r:api}:w"]).await,
        Resp::Integer(1)
    );
}

// ----------------------------------------------------------------------------------------
// 8. SCRIPT FLUSH
// ----------------------------------------------------------------------------------------

/// `SCRIPT FLUSH` between requests: the script is reloaded transparently; no request
/// fails, no request falls back, and counts stay exact (10 per hour).
#[tokio::test]
async fn script_flush_mid_traffic_fails_no_request_and_keeps_counts_exact() {
    let redis = RedisServer::start().await;
    let store = Store::Single(&redis);
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 10, per: 1h}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = store.yaml(),
    );
    let gw = start_gateway(&up, &rest).await;
    let flush = || async {
        assert_eq!(
            redis.command(&["SCRIPT", "FLUSH"]).await.as_str(),
            Some("OK")
        )
    };

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    for _ in 0..4 {
        assert_eq!(get_as(&gw, "/x", &alice).await.status, 200);
    }
    flush().await;
    // Every one of these finds the script gone.
    let answers = join_all((0..10).map(|_| get_as(&gw, "/x", &alice))).await;
    assert_eq!(statuses(&answers), BTreeMap::from([(200, 6), (429, 4)]));
    flush().await;
    assert_eq!(used(&standing_of(&gw, &alice).await, "gold", 3600), 10);
    flush().await;
    assert_rate_limited(&get_as(&gw, "/x", &alice).await, "gold");
    assert_eq!(
        store.counter("c:alice", "gold:3600000:c").await.as_deref(),
        Some("10")
    );
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "tollgate_ratelimit_fallback_active", &[]),
        Some(0.0)
    );
    for kind in ["timeout", "connection", "script", "other"] {
        assert_eq!(
            metric(
                &text,
                "tollgate_ratelimit_backend_errors_total",
                &[("kind", kind)]
            ),
            Some(0.0),
            "backend errors of kind {kind}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// 9. Headers
// ----------------------------------------------------------------------------------------

/// Plan gold: 4 per hour and 100 per day. Each response carries `RateLimit-Policy`
/// (both windows), `RateLimit` and `X-RateLimit-*` (the hour window, closest to
/// exhaustion), parseable as structured fields, agreeing with each other and counting
/// down exactly; the 429 adds `Retry-After` and the JSON body.
#[tokio::test]
async fn every_response_on_a_limited_route_carries_parseable_headers_that_count_down() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 4, per: 1h}}, {{requests: 100, per: 1d}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = redis_yaml(&[redis.url()], false),
    );
    let gw = start_gateway(&up, &rest).await;

    /// Checks every rate-limit header of `a`; returns RateLimit's (r, t).
    fn check_headers(a: &Answer) -> (u64, u64) {
        let policy = a.header("ratelimit-policy").expect("RateLimit-Policy");
        let list = sfv::Parser::parse_list(policy.as_bytes())
            .unwrap_or_else(|e| panic!("RateLimit-Policy {policy:?}: {e}"));
        let members: Vec<(String, i64, i64)> = list
            .iter()
            .map(|entry| {
                let sfv::ListEntry::Item(item) = entry else {
                    panic!("RateLimit-Policy {policy:?}: an inner list")
                };
                let param = |p: &str| item.params.get(p).and_then(|v| v.as_int()).unwrap();
                let name = item.bare_item.as_str().expect("a string").to_string();
                (name, param("q"), param("w"))
            })
            .collect();
        assert_eq!(
            members,
            [
                ("gold-hour".to_string(), 4, 3600),
                ("gold-day".to_string(), 100, 86400)
            ],
            "RateLimit-Policy: {policy}"
        );

        let current = a.header("ratelimit").expect("RateLimit");
        let list = sfv::Parser::parse_list(current.as_bytes())
            .unwrap_or_else(|e| panic!("RateLimit {current:?}: {e}"));
        let [sfv::ListEntry::Item(item)] = list.as_slice() else {
            panic!("RateLimit {current:?}: expected one item")
        };
        assert_eq!(item.bare_item.as_str(), Some("gold-hour"), "{current}");
        let param = |p: &str| -> u64 {
            let v = item.params.get(p).and_then(|v| v.as_int());
            u64::try_from(v.unwrap_or_else(|| panic!("RateLimit {current:?}: no {p}"))).unwrap()
        };
        let (r, t) = (param("r"), param("t"));
        assert!((1..=3600).contains(&t), "RateLimit t={t}");
        assert_eq!(a.header_u64("x-ratelimit-limit"), 4);
        assert_eq!(a.header_u64("x-ratelimit-remaining"), r);
        assert_eq!(a.header_u64("x-ratelimit-reset"), t);
        (r, t)
    }

    wait_for_fresh_windows(&[(3600, secs(30)), (86400, secs(30))]).await;
    for i in 0..4 {
        let a = get_as(&gw, "/x", &alice).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-upstream"), Some("up"), "from the upstream");
        assert_eq!(a.header("retry-after"), None);
        let (remaining, _) = check_headers(&a);
        assert_eq!(remaining, 3 - i, "Remaining counts down by one");
    }
    let refused = get_as(&gw, "/x", &alice).await;
    let retry = assert_rate_limited(&refused, "gold");
    let (remaining, reset) = check_headers(&refused);
    assert_eq!(remaining, 0);
    assert!(
        retry <= 3600 && retry == reset,
        "Retry-After {retry}, reset {reset}"
    );
    // The refused request counted in neither window.
    let s = standing_of(&gw, &alice).await;
    assert_eq!(used(&s, "gold", 3600), 4, "{s}");
    assert_eq!(used(&s, "gold", 86400), 4, "{s}");
}

/// A request that was counted and then failed at the upstream (502, 504) is still a
/// response on a limited route: the gateway's own error answer carries the headers too.
#[tokio::test]
async fn gateway_errors_after_a_counted_request_carry_the_rate_limit_headers() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let dead = free_port();
    let rest = format!(
        "  - {{name: dead, targets: [{{address: \"127.0.0.1:{dead}\"}}]}}\n\
         {auth}plans:\n  - {{name: gold, limits: [{{requests: 5, per: 1h}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}\
         routes:\n  - {{name: dead, path_prefix: /dead, upstream: dead, auth: required}}\n  \
         - name: slow\n    path_prefix: /slow\n    upstream: up\n    auth: required\n    \
         timeouts: {{read: 200ms}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = redis_yaml(&[redis.url()], false),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    let mut missing = Vec::new();
    for (i, (path, status, code)) in [
        ("/dead/x", 502, "bad_gateway"),
        ("/slow/__sleep/2000", 504, "upstream_timeout"),
    ]
    .into_iter()
    .enumerate()
    {
        let a = get_as(&gw, path, &alice).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert_eq!(a.json()["error"], code, "{path}");
        // It was counted.
        let s = standing_of(&gw, &alice).await;
        assert_eq!(used(&s, "gold", 3600), i as u64 + 1, "{s}");
        match (a.header("ratelimit"), a.header("x-ratelimit-remaining")) {
            (Some(_), Some(remaining)) => {
                assert_eq!(ratelimit_member(&a), "gold-hour", "{path}");
                assert_eq!(remaining, (4 - i).to_string(), "{path}");
                assert!(a.header("ratelimit-policy").is_some(), "{path}");
            }
            _ => missing.push(format!("{status} {path}: {:?}", a.headers)),
        }
    }
    assert!(
        missing.is_empty(),
        "counted requests answered without rate-limit headers:\n{}",
        missing.join("\n")
    );
}

// ----------------------------------------------------------------------------------------
// 10. Metrics
// ----------------------------------------------------------------------------------------

/// `tollgate_ratelimit_decisions_total{route, decision}` counts each limited request
/// once, per route; the standing endpoint and the health check count nowhere.
#[tokio::test]
async fn decision_metrics_count_allowed_and_limited_exactly_per_route() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 3, per: 1h}}]}}\n\
         consumers:\n{alice}rate_limit:\n{redis}  anonymous: {{limits: [{{requests: 2, per: 1h}}]}}\n\
         routes:\n  - {{name: keyed, path_prefix: /keyed, upstream: up, auth: required}}\n  \
         - {{name: open, path_prefix: /, upstream: up}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
        redis = redis_yaml(&[redis.url()], false),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(3600, secs(30))]).await;
    let keyed = join_all((0..8).map(|_| get_as(&gw, "/keyed/x", &alice))).await;
    assert_eq!(statuses(&keyed), BTreeMap::from([(200, 3), (429, 5)]));
    for _ in 0..4 {
        get(&gw, "/anon", &[]).await;
    }
    for _ in 0..3 {
        standing_of(&gw, &alice).await;
        standing(&gw, &[]).await;
        assert_eq!(get(&gw, "/health", &[]).await.status, 200);
    }
    // A missing credential is refused before limiting: not a decision.
    assert_eq!(get(&gw, "/keyed/x", &[]).await.status, 401);

    let expected = [
        ("keyed", "allowed", 3.0),
        ("keyed", "limited", 5.0),
        ("keyed", "unavailable", 0.0),
        ("open", "allowed", 2.0),
        ("open", "limited", 2.0),
        ("open", "unavailable", 0.0),
    ];
    for (route, decision, count) in expected {
        assert_eq!(
            decisions(&gw, route, decision).await,
            count,
            "decisions{{route={route}, decision={decision}}}\n{}",
            gw.metrics_text().await
        );
    }
}

// ----------------------------------------------------------------------------------------
// 11. Without Redis
// ----------------------------------------------------------------------------------------

/// No `rate_limit.redis`: the in-process limiter enforces the plan (50 per minute)
/// exactly on one instance, 200 requests at once; `expected_instances` (meant for the
/// fallback) does not divide it.
#[tokio::test]
async fn without_redis_the_in_process_limiter_enforces_the_plan_exactly() {
    let up = TestUpstream::start("up").await;
    let alice = new_key();
    let rest = format!(
        "{auth}plans:\n  - {{name: gold, limits: [{{requests: 50, per: 1m}}]}}\n\
         consumers:\n{alice}rate_limit:\n  expected_instances: 3\n\
         routes:\n  - {{name: api, path_prefix: /, upstream: up, auth: required}}\n",
        auth = auth_yaml(),
        alice = consumer("alice", "gold", &alice),
    );
    let gw = start_gateway(&up, &rest).await;

    wait_for_fresh_windows(&[(60, secs(15))]).await;
    let (gw_ref, key) = (&gw, &alice);
    let answers = join_all(
        (0..200).map(|i| async move { get_as(gw_ref, &format!("/burst/{i}"), key).await }),
    )
    .await;
    assert_eq!(statuses(&answers), BTreeMap::from([(200, 50), (429, 150)]));
    for a in &answers {
        assert_eq!(a.header_u64("x-ratelimit-limit"), 50, "{}", a.body);
    }
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_rate_limited(a, "gold");
    }
    let s = standing_of(&gw, &alice).await;
    assert_eq!(used(&s, "gold", 60), 50, "{s}");
    assert_rate_limited(&get_as(&gw, "/after", &alice).await, "gold");
    assert_eq!(up.hits(), 50);
}
