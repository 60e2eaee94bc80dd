//! The YAML surface of the configuration file: plain serde structs that mirror the file.
//!
//! Nothing here is validated beyond what serde checks (types and unknown fields); see
//! [`super::validate`] for the conversion into the typed model used at run time.

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
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    pub timeouts: Option<RawTimeouts>,
}

/// Per-route upstream timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub read: Option<String>,
    pub total: Option<String>,
}
