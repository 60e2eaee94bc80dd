//! Micro-benchmarks of the per-request hot path: route matching, API-key verification
//! (cache hit and miss), JWT verification per algorithm, and a Redis rate-limit decision
//! (alone, and 64 at once, coalesced) against a `redis-server` the bench starts (skipped
//! when there is none), and an `ip_rules` lookup among 10,000 prefixes. Run with
//! `cargo bench`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use std::fmt::Write;
use std::path::Path;
use tollgate::auth::{Authenticator, Credential};
use tollgate::config::{self, Config};

/// 1,000 routes over 10 hosts, like a large deployment.
fn many_routes() -> Config {
    let mut yaml = String::from("listeners: [{address: '127.0.0.1:1'}]\nupstreams: [{name: u, targets: [{address: '127.0.0.1:2'}]}]\nroutes:\n");
    for i in 0..1000 {
        let _ = writeln!(
            yaml,
            "  - {{name: r{i}, path_prefix: /svc{}/v{}/items{i}, hosts: [h{}.example.com], upstream: u}}",
            i % 50,
            i % 3,
            i % 10
        );
    }
    config::parse(&yaml, Path::new(".")).expect("benchmark config is valid")
}

fn route_match(c: &mut Criterion) {
    let config = many_routes();
    let runtime = tollgate::runtime::Runtime::build(config, 1, None, None).expect("runtime builds");
    let get = http::Method::GET;
    c.bench_function("route_match/1000_routes_hit", |b| {
        b.iter(|| {
            runtime
                .router
                .find("/svc7/v1/items457/orders/9", Some("h7.example.com"), &get)
        })
    });
    c.bench_function("route_match/1000_routes_miss", |b| {
        b.iter(|| {
            runtime
                .router
                .find("/nothing/here/at/all", Some("h7.example.com"), &get)
        })
    });
}

/// A deny list of 10,000 IPv4 /24s and 10,000 IPv6 /48s, none touching another (so none
/// merge): the lookup is a binary search over 10,000 ranges per family.
fn ip_rules(c: &mut Criterion) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = |i: u32| Ipv4Addr::from_bits(0x0B00_0000 + (i << 10));
    let v6 = |i: u128| Ipv6Addr::from_bits((0x2001_0db8 << 96) + (i << 81));
    let mut deny: Vec<String> = (0..10_000).map(|i| format!("{}/24", v4(i))).collect();
    deny.extend((0..10_000).map(|i| format!("{}/48", v6(i))));
    let raw = tollgate::features::ip_rules::RawIpRules {
        allow: Vec::new(),
        deny,
    };
    let mut problems = tollgate::problems::Problems::default();
    let rules = tollgate::features::ip_rules::validate(raw, "bench", &mut problems)
        .expect("benchmark rules are valid");
    let cases: [(&str, IpAddr, bool); 4] = [
        (
            "10000_v4_hit",
            IpAddr::V4(Ipv4Addr::from_bits(v4(6_789).to_bits() + 77)),
            false,
        ),
        (
            "10000_v4_miss",
            IpAddr::V4(Ipv4Addr::from_bits(v4(6_789).to_bits() + 777)),
            true,
        ),
        (
            "10000_v6_hit",
            IpAddr::V6(Ipv6Addr::from_bits(v6(6_789).to_bits() + 77)),
            false,
        ),
        (
            "10000_v6_miss",
            IpAddr::V6(Ipv6Addr::from_bits(v6(6_789).to_bits() + (1 << 80))),
            true,
        ),
    ];
    let mut group = c.benchmark_group("ip_rules");
    for (name, ip, admitted) in cases {
        assert_eq!(rules.admits(ip), admitted, "{name}");
        group.bench_function(name, |b| b.iter(|| rules.admits(std::hint::black_box(ip))));
    }
    group.finish();
}

const PEPPER_ENV: &str = "TOLLGATE_BENCH_PEPPER";

fn authenticator(extra: &str) -> Authenticator {
    let hasher = tollgate::auth::api_key::KeyHasher::new(b"bench-pepper-0123456789");
    let hash = hasher.hash(KEY).to_hex();
    let yaml = format!(
        "listeners: [{{address: '127.0.0.1:1'}}]
auth:
  api_key: {{pepper_env: {PEPPER_ENV}}}
{extra}
consumers:
  - id: alice
    scopes: [read]
    keys: [{{id: k1, hash: {hash}}}]
"
    );
    let config = config::parse(&yaml, Path::new(".")).expect("benchmark config is valid");
    Authenticator::from_config(
        &config.auth,
        &config.consumers,
        None,
        None,
        config.rate_limit.ipv6_prefix,
    )
    .expect("authenticator builds")
}

const KEY: &str = "tg_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn required() -> config::RouteAuth {
    config::RouteAuth {
        mode: config::AuthMode::Required,
        allow_api_key: true,
        allow_jwt: true,
        scopes: vec![],
        forward_credential: false,
    }
}

fn api_key(c: &mut Criterion) {
    std::env::set_var(PEPPER_ENV, "bench-pepper-0123456789");
    let auth = authenticator("");
    let policy = required();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let ip = "127.0.0.1".parse().expect("ip");
    c.bench_function("api_key/hash_and_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            auth.authenticate(Credential::ApiKey(KEY), &policy, ip)
                .await
                .is_ok()
        })
    });
    let unknown = "tg_CCCCCCCC_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
    c.bench_function("api_key/hash_and_cached_miss", |b| {
        b.to_async(&rt).iter(|| async {
            auth.authenticate(Credential::ApiKey(unknown), &policy, ip)
                .await
                .is_err()
        })
    });
}

/// A signing key as PEM (private) and the matching public key PEM.
fn key_pair(alg: Algorithm) -> (EncodingKey, Vec<u8>) {
    let pkey = match alg {
        Algorithm::HS256 => return (EncodingKey::from_secret(SECRET.as_bytes()), Vec::new()),
        Algorithm::RS256 | Algorithm::PS256 => {
            PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey")
        }
        Algorithm::ES256 => PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("p256"))
                .expect("ec"),
        )
        .expect("pkey"),
        Algorithm::ES384 => PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).expect("p384")).expect("ec"),
        )
        .expect("pkey"),
        Algorithm::EdDSA => PKey::generate_ed25519().expect("ed25519"),
        other => panic!("no key for {other:?}"),
    };
    let private = pkey.private_key_to_pem_pkcs8().expect("pem");
    let public = pkey.public_key_to_pem().expect("pem");
    let encoding = match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&private),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
        _ => EncodingKey::from_ec_pem(&private),
    }
    .expect("encoding key");
    (encoding, public)
}

const SECRET: &str = "bench-secret-0123456789-0123456789-abcdef";

fn jwt_verify(c: &mut Criterion) {
    std::env::set_var(PEPPER_ENV, "bench-pepper-0123456789");
    std::env::set_var("TOLLGATE_BENCH_JWT_SECRET", SECRET);
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let policy = required();
    let ip = "127.0.0.1".parse().expect("ip");
    let mut group = c.benchmark_group("jwt_verify");
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let (encoding, public) = key_pair(alg);
        let keys = if alg == Algorithm::HS256 {
            "secret_env: TOLLGATE_BENCH_JWT_SECRET".to_string()
        } else {
            let path = dir.path().join(format!("{alg:?}.pem"));
            std::fs::write(&path, &public).expect("write key");
            format!("pem_files: [{{path: '{}'}}]", path.display())
        };
        let auth = authenticator(&format!(
            "  jwt:\n    - {{issuer: bench, audience: any, algorithms: [{alg:?}], {keys}}}\n"
        ));
        let claims = serde_json::json!({"iss": "bench", "sub": "alice", "exp": 4_000_000_000u64, "scope": "read write"});
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).expect("token");
        assert!(rt
            .block_on(auth.authenticate(Credential::Bearer(&token), &policy, ip))
            .is_ok());
        group.bench_with_input(
            BenchmarkId::new("cached", format!("{alg:?}")),
            &token,
            |b, token| {
                b.to_async(&rt).iter(|| async {
                    auth.authenticate(Credential::Bearer(token), &policy, ip)
                        .await
                        .is_ok()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("first_sight", format!("{alg:?}")),
            &token,
            |b, token| {
                b.to_async(&rt)
                    .iter(|| async { auth.jwt().verify_uncached(token).await.is_ok() })
            },
        );
    }
    group.finish();
}

/// A `redis-server` on a free loopback port, stopped when dropped.
struct BenchRedis {
    child: std::process::Child,
    port: u16,
}

impl BenchRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let redis = BenchRedis { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_limit(c: &mut Criterion) {
    use tollgate::limit::{FailureMode, Policy, RateLimiter, RedisSettings, Subject, Window};
    let Some(redis) = BenchRedis::start() else {
        eprintln!("redis_limit: no redis-server, skipped");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let limiter = rt
        .block_on(RateLimiter::connect(&RedisSettings::single(format!(
            "redis://127.0.0.1:{}",
            redis.port
        ))))
        .expect("limiter");
    // A quota that never refuses: every decision counts.
    let policy = Policy::new(
        "bench",
        tollgate::limit::Algorithm::FixedWindow,
        vec![Window::new(1 << 50, std::time::Duration::from_secs(3600))],
    );
    let subjects = [Subject::new("c:bench", &policy)];
    let acquire = || async {
        limiter
            .acquire(&subjects, 1, &FailureMode::Closed)
            .await
            .is_ok_and(|d| d.allowed)
    };
    assert!(rt.block_on(acquire()), "Redis decides");
    let mut group = c.benchmark_group("redis_limit");
    group.bench_function("acquire_alone", |b| b.to_async(&rt).iter(acquire));
    // 64 requests waiting at once on one worker: one round trip per batch.
    group.throughput(criterion::Throughput::Elements(64));
    group.bench_function("acquire_64_at_once", |b| {
        b.to_async(&rt)
            .iter(|| futures::future::join_all((0..64).map(|_| acquire())))
    });
    group.finish();
}

criterion_group!(
    benches,
    route_match,
    ip_rules,
    api_key,
    jwt_verify,
    redis_limit
);
criterion_main!(benches);
