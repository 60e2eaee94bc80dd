//! The YAML surface of the configuration file: plain serde structs that mirror the file.
//!
//! Nothing here is validated beyond what serde checks (types and unknown fields); see
//! [`super::validate`] for the conversion into the typed model used at run time.

use crate::features::switch::Switch;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Server-wide defaults of the edge features; a route's own section replaces one.
    #[serde(default)]
    pub defaults: crate::features::RawFeatures,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub plans: Vec<RawPlan>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    pub database: Option<RawDatabase>,
    pub admin: Option<RawAdmin>,
    pub account: Option<RawAccount>,
}

/// The PostgreSQL database for consumers, keys, plans, users and usage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub pool_size: Option<usize>,
    pub usage_flush_interval: Option<String>,
    pub statement_timeout: Option<String>,
    pub tls: Option<RawDatabaseTls>,
}

/// TLS towards PostgreSQL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabaseTls {
    /// `disable`, `require` or `verify_full`.
    pub mode: String,
    /// CA certificates (PEM) trusted by `verify_full`; default: the system's roots.
    pub ca_file: Option<String>,
}

/// The admin service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
    pub request_header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_request_header_size: Option<usize>,
    pub max_connections: Option<usize>,
    pub tokens_env: Option<String>,
    pub read_only_tokens_env: Option<String>,
    pub tokens_file: Option<String>,
    pub read_only_tokens_file: Option<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    pub failed_auth_throttle: Option<RawWindow>,
}

/// The account API (self-service users), served by the admin service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub signing_secret_env: Option<String>,
    pub access_token_ttl: Option<String>,
    pub refresh_token_ttl: Option<String>,
    pub default_plan: Option<String>,
    #[serde(default)]
    pub login_throttle: RawLoginThrottle,
}

/// How many login attempts are allowed per account and per client address.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoginThrottle {
    pub per_account: Option<RawWindow>,
    pub per_ip: Option<RawWindow>,
    pub per_session: Option<RawWindow>,
}

/// How callers are identified and verified.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub api_key: RawApiKey,
    pub cache: Option<RawCredentialCache>,
    pub key_failures: Option<RawKeyFailures>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `x-forwarded-for` or `forwarded`: the header trusted proxies set.
    pub client_ip_header: Option<String>,
    #[serde(default)]
    pub identity_headers: RawIdentityHeaders,
    #[serde(default)]
    pub jwt: Vec<RawIssuer>,
}

/// Where API keys are read from, and the pepper they are hashed with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub header: Option<String>,
    pub query_param: Option<String>,
    pub pepper_env: Option<String>,
}

/// The credential cache in front of the store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentialCache {
    pub ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub max_entries: Option<u64>,
    pub max_lookups: Option<usize>,
}

/// Unknown API keys per client network before uncached keys are refused unlooked-up.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyFailures {
    pub max: u64,
    pub per: String,
}

/// Names of the headers that tell the upstream who called.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityHeaders {
    pub consumer_id: Option<String>,
    pub plan: Option<String>,
    pub auth_method: Option<String>,
    pub scopes: Option<String>,
}

/// A JWT issuer and how to verify its tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `any`: accept every audience (the only value; otherwise list `audiences`).
    pub audience: Option<String>,
    pub algorithms: Vec<String>,
    pub leeway: Option<String>,
    pub required_claims: Option<Vec<String>>,
    /// The `typ` header tokens must carry, e.g. `at+jwt`.
    pub typ: Option<String>,
    pub consumer_claim: Option<String>,
    pub plan_claim: Option<String>,
    pub default_plan: Option<String>,
    pub secret_env: Option<String>,
    /// How the value of `secret_env` is read: `raw` (default), `base64url` or `base64`.
    pub secret_encoding: Option<String>,
    #[serde(default)]
    pub pem_files: Vec<RawPemFile>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Option<String>,
    pub jwks_min_refresh: Option<String>,
    /// Allows a plain `http://` `jwks_url`.
    #[serde(default)]
    pub allow_insecure_jwks: bool,
}

/// A PEM public key file, optionally known by a `kid`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPemFile {
    pub path: String,
    pub kid: Option<String>,
}

/// A plan: what a consumer on it may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub name: String,
    pub algorithm: Option<String>,
    #[serde(default)]
    pub limits: Vec<RawWindow>,
    pub concurrency: Option<u64>,
    pub block_for: Option<String>,
}

/// Windows of a rate limit, and an optional concurrency cap.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub algorithm: Option<String>,
    #[serde(default)]
    pub limits: Vec<RawWindow>,
    pub concurrency: Option<u64>,
    pub block_for: Option<String>,
}

/// `requests` per `per`; `burst` is the bucket size for token_bucket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub requests: u64,
    pub per: String,
    pub burst: Option<u64>,
}

/// Rate limiting: where counters live and what happens when they cannot be reached.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub redis: Option<RawRedis>,
    pub failure_mode: Option<String>,
    pub expected_instances: Option<u32>,
    pub anonymous: Option<RawLimits>,
    pub default_plan: Option<String>,
    #[serde(default = "default_status_path")]
    pub status_path: Option<String>,
    pub concurrency_lease_ttl: Option<String>,
    pub ipv6_prefix: Option<u8>,
}

fn default_status_path() -> Option<String> {
    Some(crate::config::model::DEFAULT_LIMIT_STATUS_PATH.to_string())
}

/// The shared Redis (or Redis Cluster).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub urls: Vec<String>,
    #[serde(default)]
    pub cluster: bool,
    pub timeout: Option<String>,
    pub pool_size: Option<usize>,
    pub breaker_failures: Option<u32>,
    pub breaker_cooldown: Option<String>,
}

/// A route's own limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimits {
    pub per_caller: Option<RawLimits>,
    pub global: Option<RawLimits>,
    pub failure_mode: Option<String>,
}

/// A consumer defined in the file, with its keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub id: String,
    pub plan: Option<String>,
    pub status: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

/// An API key, by its hash (`tollgate key new` prints one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub hash: String,
    pub prefix: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub status: Option<String>,
    pub expires_at: Option<String>,
}

/// Process-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub grace_period: Option<String>,
    pub graceful_shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub log_level: Option<String>,
    pub access_log: Option<bool>,
    /// `null` disables the endpoint; absent means the default path.
    #[serde(default = "default_health_path")]
    pub health_path: Option<String>,
    pub watch_config: Option<bool>,
    pub watch_interval: Option<String>,
    pub request_header_timeout: Option<String>,
    pub max_request_header_size: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
}

fn default_health_path() -> Option<String> {
    Some(crate::config::model::DEFAULT_HEALTH_PATH.to_string())
}

impl Default for RawServer {
    /// An absent `server:` section behaves like an empty one.
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("an empty map is a valid server section")
    }
}

/// One listening socket of the proxy service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub tls: Option<RawListenerTls>,
}

/// TLS termination settings of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificates: Vec<RawCertificate>,
    pub http2: Option<bool>,
}

/// A certificate and key pair; chosen by SNI among the listener's certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// Names this certificate answers for; defaults to the names in the certificate.
    pub server_names: Option<Vec<String>>,
}

/// The Prometheus listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub address: String,
}

/// A named pool of upstream targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub health_check: Option<RawHealthCheck>,
    pub tls: Option<RawUpstreamTls>,
}

/// One server in a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub address: String,
    pub weight: Option<i64>,
}

/// Active health checking of a pool's targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expected_status: Option<u16>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub failures_to_eject: Option<usize>,
    pub successes_to_readmit: Option<usize>,
}

/// TLS towards the upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca_file: Option<String>,
}

/// A route: which requests go to which upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
    /// The upstream pool; absent on a route that answers with `redirect.location`.
    pub upstream: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub timeouts: Option<RawTimeouts>,
    pub auth: Option<String>,
    pub auth_methods: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub forward_credential: bool,
    pub rate_limit: Option<RawRouteLimits>,
    /// Match `path_prefix` ignoring ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Path characters kept for upstreams that need them: `encoded_slash`, `backslash`,
    /// `semicolon`, `encoded_nul`.
    #[serde(default)]
    pub keep_in_path: Vec<String>,
    /// Let `X-HTTP-Method-Override`, `X-Original-URL` and their kin reach the upstream.
    #[serde(default)]
    pub allow_override_headers: bool,
    // The edge features (`crate::features`), each its own section.
    pub size_limits: Option<Switch<crate::features::size_limits::RawSizeLimits>>,
    pub ip_rules: Option<Switch<crate::features::ip_rules::RawIpRules>>,
    pub rewrite: Option<Switch<crate::features::rewrite::RawRewrite>>,
    /// Per route only (not in `defaults:`): a redirect instead of, or (`https: true`)
    /// besides, the upstream.
    pub redirect: Option<crate::features::redirect::RawRedirect>,
    pub cors: Option<Switch<crate::features::cors::RawCors>>,
    pub headers: Option<Switch<crate::features::headers::RawHeaders>>,
    pub security_headers: Option<Switch<crate::features::security_headers::RawSecurityHeaders>>,
    pub compression: Option<Switch<crate::features::compression::RawCompression>>,
}

/// Per-route upstream timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub read: Option<String>,
    pub total: Option<String>,
}
