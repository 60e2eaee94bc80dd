//! The validated, typed configuration. Nothing in here touches serde: the YAML surface is
//! [`super::raw`], and [`super::validate`] is the only way to build these values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How many leading bits of an IPv6 client address identify the client, by default: one
/// host (or one customer of an ISP) usually holds a whole /64, and is free to rotate its
/// address inside it, so limiting single IPv6 addresses would limit nothing.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Where `GET /health` answers when the file does not say.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Pingora keeps serving this long after SIGTERM before it stops accepting; long enough for a
/// load balancer to notice the instance is going away.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Upper bound for in-flight requests to finish once shutdown has begun.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the config file is checked for changes: a change is live well within a second.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A client gets this long to send a whole request head (nginx's `client_header_timeout`
/// is 60 s; a real client sends its head in one packet, so 10 s only cuts slowloris).
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (431 beyond): nginx's largest default buffers hold 4 x 8 KiB,
/// which fits every browser and SDK; cookies-heavy sites may need more.
pub const DEFAULT_MAX_REQUEST_HEADER_SIZE: usize = 32 * 1024;
/// Client connections one process serves at once: about 160 MiB of read buffers, far below a
/// file-descriptor limit of 65,536; raise it (and `ulimit -n`) on bigger machines.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Client connections from one address (an IPv6 /64 counts as one): a browser opens 6 per
/// host, and a NAT a few hundred; behind a load balancer, raise it to the proxy's pool size.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Admin listener: a request head must arrive within this (also bounds an idle keep-alive).
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin listener: a connection that neither sends nor receives a byte this long is closed.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Admin listener: largest request head accepted.
pub const DEFAULT_ADMIN_MAX_HEADER_SIZE: usize = 32 * 1024;
/// Admin listener: connections served at once (operators and scripts, not the Internet).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
/// Connecting to an upstream on a healthy network takes far less; a dead host fails fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence tolerated while reading an upstream response.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Health checks: one probe per target per interval.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// A probe that takes longer than this counts as failed.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive failed probes before a target stops receiving traffic.
pub const DEFAULT_FAILURES_TO_EJECT: usize = 3;
/// Consecutive good probes before an ejected target receives traffic again.
pub const DEFAULT_SUCCESSES_TO_READMIT: usize = 2;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub metrics_address: Option<SocketAddr>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// Server-wide defaults of the edge features (`defaults:`).
    pub defaults: crate::features::FeatureSet,
    pub auth: AuthSettings,
    pub plans: Vec<PlanSpec>,
    pub consumers: Vec<ConsumerSpec>,
    pub rate_limit: RateLimitSettings,
    /// `None`: consumers, keys and plans come from this file only.
    pub database: Option<DatabaseSettings>,
    /// `None`: no admin service.
    pub admin: Option<AdminSettings>,
    /// `None`: no account API.
    pub account: Option<AccountSettings>,
}

/// Counts of requests are written to the database this often (never per request).
pub const DEFAULT_USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// The environment variable holding admin tokens (comma-separated) by default.
pub const DEFAULT_ADMIN_TOKENS_ENV: &str = "TOLLGATE_ADMIN_TOKENS";
/// The environment variable holding read-only admin tokens (comma-separated) by default.
pub const DEFAULT_ADMIN_READ_ONLY_TOKENS_ENV: &str = "TOLLGATE_ADMIN_READ_ONLY_TOKENS";
/// Estimated entropy every admin token must have, in bits (32 random bytes): out of reach
/// of any guessing, even unthrottled.
pub const MIN_ADMIN_TOKEN_BITS: f64 = 256.0;
/// Failed admin-token attempts allowed per client address and minute by default: enough
/// for an operator's typos, nothing for a guesser.
pub const DEFAULT_FAILED_AUTH_PER_MINUTE: u64 = 10;
/// Refresh and logout calls allowed per session and minute by default: a client refreshes
/// once per access-token lifetime, so a burst of them is a replay or a loop.
pub const DEFAULT_SESSION_CALLS_PER_MINUTE: u64 = 10;

/// The PostgreSQL database.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/db`; secret because it may hold a password.
    pub url: Secret,
    pub pool_size: usize,
    pub usage_flush_interval: Duration,
    /// Longest a statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
    /// How connections to the database are secured.
    pub tls: DatabaseTls,
}

/// TLS on the connections to PostgreSQL (`database.tls`); the modes mirror libpq's
/// `sslmode` of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DatabaseTls {
    /// Plain connections (no `tls:` section, or `mode: disable`).
    #[default]
    Disable,
    /// Encrypted, but the server's certificate is not verified (`sslmode=require`).
    Require,
    /// Encrypted, with the server's certificate chain and host name verified
    /// (`sslmode=verify-full`).
    VerifyFull {
        /// The CA certificates (PEM) to trust, and only those; `None`: the system's roots.
        ca_file: Option<PathBuf>,
    },
}

impl DatabaseSettings {
    /// The URL as text, for the one place that connects.
    pub fn url(&self) -> &str {
        std::str::from_utf8(self.url.expose()).unwrap_or("")
    }
}

/// The admin service.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    pub address: SocketAddr,
    /// Accepted bearer tokens (from the environment); empty only on a loopback address.
    pub tokens: Vec<Secret>,
    /// Tokens that may only read (`GET`); any change they attempt is refused with 403.
    pub read_only_tokens: Vec<Secret>,
    /// Host names (lower case, no port) the admin listener answers besides the loopback
    /// literals; any other `Host` is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Failed admin-token attempts allowed per client address before 429.
    pub failed_auth_throttle: WindowSpec,
    /// How the admin listener bounds its clients.
    pub limits: ListenerLimits,
}

/// Resource bounds of a listener served by hyper (the admin API).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerLimits {
    /// A request head must arrive within this, counted from when the server waits for it
    /// (so it also bounds an idle keep-alive connection).
    pub header_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_size: usize,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

/// The account API: end users register, log in and manage their own keys. Its access
/// tokens are JWTs (HS256) that the proxy verifies like any configured issuer's.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSettings {
    /// `iss` of the access tokens (also added to the proxy's JWT issuers).
    pub issuer: String,
    /// `aud` of the access tokens, if any (the proxy then requires it).
    pub audience: Option<String>,
    /// The HS256 signing key, from the environment.
    pub signing_secret: Secret,
    /// Lifetime of an access token.
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one).
    pub refresh_token_ttl: Duration,
    /// The plan of a newly registered account (a database plan); `None`: the default.
    pub default_plan: Option<String>,
    /// Login attempts allowed per account (e-mail address).
    pub login_per_account: WindowSpec,
    /// Login attempts allowed per client address (also the separate refresh, logout and
    /// registration counters per address).
    pub login_per_ip: WindowSpec,
    /// Refresh and logout calls allowed per session (refresh-token family).
    pub per_session: WindowSpec,
}

/// The `iss` of account access tokens when the file does not say.
pub const DEFAULT_ACCOUNT_ISSUER: &str = "tollgate";
/// The environment variable holding the account token signing key by default.
pub const DEFAULT_ACCOUNT_SECRET_ENV: &str = "TOLLGATE_ACCOUNT_SECRET";
/// Access tokens live this long by default: short, since only logout revokes them.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Refresh tokens live this long by default.
pub const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where API keys are read from when the file does not say.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// The environment variable holding the pepper API keys are hashed with.
pub const DEFAULT_PEPPER_ENV: &str = "TOLLGATE_KEY_PEPPER";
/// A found key is trusted this long before the store is asked again; a change made in the
/// store reaches every instance within this time even if its notification is lost.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(30);
/// Unknown keys are remembered this long: a flood of random keys costs one store lookup
/// per distinct key per interval, and a key created meanwhile works after at most this.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Bound on each credential cache.
pub const DEFAULT_CACHE_ENTRIES: u64 = 100_000;
/// Store lookups of API keys running at once per process: as many as a default database
/// pool holds connections, so a flood of uncached keys queues here, not in the pool that
/// the admin API and usage writes need too.
pub const DEFAULT_MAX_LOOKUPS: usize = 8;
/// Unknown API keys a client network may present per [`DEFAULT_KEY_FAILURE_WINDOW`] before
/// its uncached keys are refused (429) without a store lookup: far above what a client with
/// a mistyped or revoked key sends, far below what guessing needs.
pub const DEFAULT_KEY_FAILURES: u64 = 20;
/// The window of [`DEFAULT_KEY_FAILURES`].
pub const DEFAULT_KEY_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest `leeway` the file may set: clocks that disagree by more are broken, and a
/// larger leeway would keep expired tokens working.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);
/// The largest JWKS document fetched from a `jwks_url`: real key sets are a few KiB; a
/// bigger answer is refused (a failed fetch) rather than read into memory.
pub const JWKS_MAX_BYTES: usize = 1024 * 1024;
/// A JWKS URL is fetched again in the background when its keys are older than this.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// A token with an unknown `kid` triggers a fetch at most this often per issuer.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// Default statement timeout: every query of the gateway and the admin API is an indexed
/// lookup or a small write taking milliseconds; one that runs for seconds is stuck, and
/// holding a pooled connection for it would starve the others.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Identification and verification settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub api_key_header: http::HeaderName,
    pub api_key_query: Option<String>,
    /// HMAC key for API-key hashes; `None` when no key is configured and none is set.
    pub pepper: Option<Secret>,
    pub cache: CacheSettings,
    /// Unknown API keys per client network before uncached keys are refused unlooked-up.
    pub key_failures: KeyFailureSettings,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which forwarding header a trusted proxy is believed for.
    pub client_ip_header: ClientIpHeader,
    pub identity_headers: IdentityHeaders,
    pub issuers: Vec<IssuerSpec>,
}

/// The forwarding header that names the client when the peer is a trusted proxy. Only
/// one is believed, so a client cannot pick its own address through the one its proxy
/// does not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, ...`
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// Credential cache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
    /// Store lookups at once per process.
    pub max_lookups: usize,
}

/// How many unknown API keys a client network may present (`auth.key_failures`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFailureSettings {
    /// Unknown keys per window.
    pub max: u64,
    /// The window, starting at the network's first unknown key.
    pub per: Duration,
}

/// Header names that carry the caller's identity to the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityHeaders {
    pub consumer_id: http::HeaderName,
    pub plan: http::HeaderName,
    pub auth_method: http::HeaderName,
    pub scopes: http::HeaderName,
}

impl IdentityHeaders {
    /// Each header with its key under `auth.identity_headers`.
    pub fn named(&self) -> [(&http::HeaderName, &'static str); 4] {
        [
            (&self.consumer_id, "consumer_id"),
            (&self.plan, "plan"),
            (&self.auth_method, "auth_method"),
            (&self.scopes, "scopes"),
        ]
    }
}

/// A value read from the environment that must never be printed.
#[derive(Clone, PartialEq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The bytes, for the one place that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A JWT issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSpec {
    pub issuer: String,
    /// Which `aud` values are accepted.
    pub audiences: Audiences,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`; at most [`MAX_JWT_LEEWAY`].
    pub leeway: Duration,
    /// Registered claims a token must carry; always includes `exp` (and `aud` when
    /// audiences are listed).
    pub required_claims: Vec<String>,
    /// The `typ` header a token must carry (compared case-insensitively, an
    /// `application/` prefix ignored); `None`: not checked.
    pub typ: Option<String>,
    /// A token is refused unless the credential store knows its consumer (the account
    /// issuer: a deleted account's tokens stop working).
    pub consumer_must_exist: bool,
    pub consumer_claim: String,
    pub plan_claim: Option<String>,
    pub default_plan: Option<String>,
    pub keys: Vec<JwtKeySource>,
}

/// Which `aud` values an issuer's tokens may carry.
#[derive(Debug, Clone, PartialEq)]
pub enum Audiences {
    /// `audience: any`: the audience is not checked.
    Any,
    /// A token must carry `aud` naming at least one of these (never empty).
    OneOf(Vec<String>),
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeySource {
    /// An HMAC key (from `secret_env`, decoded as `secret_encoding` says).
    Secret(Secret),
    /// A PEM public key file, read again on every reload.
    PemFile { path: PathBuf, kid: Option<String> },
    /// A JWKS file, read again on every reload.
    JwksFile(PathBuf),
    /// A JWKS fetched over the network.
    JwksUrl(JwksUrlSpec),
}

/// A JWKS URL and how it is fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct JwksUrlSpec {
    /// `https://` unless `allow_insecure` (then `http://` too).
    pub url: String,
    /// Background refresh once the keys are older than this.
    pub refresh: Duration,
    /// A token naming an unknown `kid` fetches at most this often.
    pub min_refresh: Duration,
    /// `allow_insecure_jwks: true`: plain `http://` URLs are allowed.
    pub allow_insecure: bool,
}

/// A plan: the limits of the consumers on it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSpec {
    pub name: String,
    /// `None`: no limits.
    pub limits: Option<LimitSpec>,
}

/// Where the caller's standing is answered when the file does not say.
pub const DEFAULT_LIMIT_STATUS_PATH: &str = "/_tollgate/limits";

/// One window: `requests` per `per` (token bucket: refill rate, with `burst` capacity).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub requests: u64,
    pub per: Duration,
    pub burst: Option<u64>,
}

/// A set of windows checked together, plus an optional cap on requests in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    pub algorithm: crate::limit::Algorithm,
    pub windows: Vec<WindowSpec>,
    pub concurrency: Option<u64>,
    /// Once a caller exceeds these limits, every request of it is refused this long.
    pub block_for: Option<Duration>,
}

/// What happens when the shared counters cannot be reached (the limiter's own type).
pub use crate::limit::FailureMode;

/// Rate-limiting settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    /// `None`: the in-process limiter is the limiter (single instance).
    pub redis: Option<RedisSettings>,
    pub failure_mode: FailureMode,
    pub expected_instances: u32,
    /// Limits per client IP for anonymous callers; `None`: unlimited.
    pub anonymous: Option<LimitSpec>,
    /// Plan for identified callers that name none.
    pub default_plan: Option<String>,
    /// Where callers ask for their own standing; `None`: disabled.
    pub status_path: Option<String>,
    pub concurrency_lease_ttl: Duration,
    /// Leading bits of an IPv6 address that count as one client for anonymous limits and
    /// the unknown-API-key budget.
    pub ipv6_prefix: u8,
}

/// How to reach the shared Redis (the limiter's own settings type).
pub use crate::limit::RedisSettings;

/// A route's own limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteLimits {
    /// Applied to each caller on this route, on top of their plan.
    pub per_caller: Option<LimitSpec>,
    /// Applied to all callers of this route together.
    pub global: Option<LimitSpec>,
    /// Overrides the global failure mode for this route.
    pub failure_mode: Option<FailureMode>,
}

/// Whether a consumer or key may be used.
pub use crate::vocab::Status;

/// A consumer from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    pub id: String,
    pub plan: Option<String>,
    pub status: Status,
    pub scopes: Vec<String>,
    pub keys: Vec<KeySpec>,
}

/// An API key from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub id: String,
    pub hash: crate::vocab::KeyHash,
    pub prefix: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub status: Status,
    pub expires_at: Option<std::time::SystemTime>,
}

/// Whether a route needs callers to identify themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Credentials are not looked at; every caller is anonymous (limited by IP).
    None,
    /// A credential is verified if present (a bad one is refused); without one the caller is anonymous.
    Optional,
    /// A valid credential is needed.
    Required,
}

/// A route's access policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteAuth {
    pub mode: AuthMode,
    pub allow_api_key: bool,
    pub allow_jwt: bool,
    /// Every one of these scopes is needed.
    pub scopes: Vec<String>,
    /// Pass the client's API key or Authorization header on to the upstream.
    pub forward_credential: bool,
}

/// Process-wide settings (most need a restart to change; see [`Config::restart_needed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub log_level: Option<log::LevelFilter>,
    pub access_log: bool,
    pub health_path: Option<String>,
    pub watch_config: bool,
    pub watch_interval: Duration,
    /// Total time a client has to send a request head (not per read).
    pub request_header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_request_header_size: usize,
    /// Client connections served at once by this process.
    pub max_connections: usize,
    /// Client connections served at once for one address (IPv6: one /64).
    pub max_connections_per_ip: usize,
}

/// A proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub certificates: Vec<CertificateSpec>,
    pub http2: bool,
}

/// A certificate file pair and the names it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Lower-case names; `*.example.com` wildcards allowed. Empty: names from the certificate.
    pub server_names: Vec<String>,
}

/// A named upstream pool. Two equal specs describe the same pool, which is how a reload
/// knows to keep a pool (its health state and connections) rather than rebuild it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub name: String,
    pub targets: Vec<TargetSpec>,
    pub health_check: Option<HealthCheckSpec>,
    pub tls: Option<UpstreamTls>,
}

/// One target of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub address: SocketAddr,
    pub weight: usize,
}

/// How targets are probed.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSpec {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures_to_eject: usize,
    pub successes_to_readmit: usize,
}

/// The probe itself.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// A TCP connect (plus TLS handshake for a TLS upstream).
    Tcp,
    /// `GET path` with a `Host` header, expecting one status.
    Http {
        path: String,
        host: String,
        expected_status: u16,
    },
}

/// TLS from the gateway to the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    pub ca_file: Option<PathBuf>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    /// Lower-case hosts, exact (`api.example.com`) or wildcard (`*.example.com`); empty: any.
    pub hosts: Vec<String>,
    /// Normalised: starts with `/`, no trailing `/` except for the root `/`.
    pub path_prefix: String,
    /// Upper-case method names; `None`: every method.
    pub methods: Option<Vec<http::Method>>,
    /// The upstream pool; `None` on a route that only redirects (`features.redirect`).
    pub upstream: Option<String>,
    pub strip_prefix: bool,
    pub timeouts: RouteTimeouts,
    pub auth: RouteAuth,
    pub limits: RouteLimits,
    /// Match `path_prefix` ignoring ASCII case (for case-insensitive upstreams).
    pub case_insensitive: bool,
    /// Path characters this route lets through to its upstream (refused by default).
    pub keep_in_path: crate::canonical::PathQuirks,
    /// Method and URL override headers reach the upstream (stripped by default).
    pub allow_override_headers: bool,
    /// The route's own edge-feature settings (`defaults:` fills what it leaves out).
    pub features: crate::features::FeatureSet,
}

/// Upstream timeouts of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTimeouts {
    pub connect: Duration,
    pub read: Duration,
    /// Upper bound on the whole upstream exchange, from choosing a target to the last byte.
    pub total: Option<Duration>,
}

impl Config {
    /// What differs between `self` (running) and `next` that a live reload cannot apply.
    /// Each entry names a setting; applying it needs a restart or a graceful upgrade (`-u`).
    pub fn restart_needed(&self, next: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listeners != next.listeners {
            changed.push("listeners");
        }
        if self.metrics_address != next.metrics_address {
            changed.push("metrics.address");
        }
        if self.rate_limit.redis != next.rate_limit.redis {
            changed.push("rate_limit.redis");
        }
        if self.rate_limit.concurrency_lease_ttl != next.rate_limit.concurrency_lease_ttl {
            // Leases already taken keep the ttl they were taken with; the limiter is
            // built once per process.
            changed.push("rate_limit.concurrency_lease_ttl");
        }
        if self.database != next.database {
            changed.push("database");
        }
        // Tokens, allowed hosts and the throttle apply live; only the address needs a restart.
        if self.admin.as_ref().map(|a| a.address) != next.admin.as_ref().map(|a| a.address) {
            changed.push("admin.address");
        }
        let (a, b) = (&self.server, &next.server);
        if a.threads != b.threads {
            changed.push("server.threads");
        }
        if a.pid_file != b.pid_file || a.upgrade_sock != b.upgrade_sock {
            changed.push("server.pid_file/upgrade_sock");
        }
        if a.grace_period != b.grace_period
            || a.graceful_shutdown_timeout != b.graceful_shutdown_timeout
        {
            changed.push("server.grace_period/graceful_shutdown_timeout");
        }
        changed
    }
}
