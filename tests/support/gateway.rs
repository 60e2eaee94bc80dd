//! `Gateway`: the real `tollgate` binary, run from a YAML config in a temp dir.
//!
//! ```ignore
//! let upstream = TestUpstream::start("a").await;
//! let config = GatewayConfig::new();
//! let yaml = config.render(&format!(
//!     "upstreams:\n  - name: a\n    targets:\n      - address: {}\n\
//!      routes:\n  - name: r1\n    path_prefix: /\n    upstream: a\n",
//!     upstream.address()
//! ));
//! let gateway = Gateway::start(config, &yaml).await;
//! let response = gateway.http().get(gateway.url("/hello")).send().await?;
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::LeafCert;
use super::net::{free_port, http_client_builder, localhost, POLL_INTERVAL};
use super::process::{log_file, read_log, run_command, ChildProcess, CommandOutput};

/// The binary under test: the one cargo built for integration tests, or
/// `$TOLLGATE_BIN` (a measurement against an optimised build, e.g. the
/// ignored `flood_measurement` with the `dist` binary).
fn tollgate_bin() -> String {
    std::env::var("TOLLGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tollgate").into())
}

/// How long the gateway may take to start accepting connections, or to
/// fail, before the test gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A gateway's temp dir and ports, chosen before the YAML is written so the
/// test can put them into it.
///
/// [`header`](Self::header) renders the `server:`, `listeners:` and
/// `metrics:` sections; the test appends `upstreams:` and `routes:`
/// (or uses [`render`](Self::render)).
pub struct GatewayConfig {
    dir: TempDir,
    proxy_port: u16,
    metrics_port: u16,
    tls: Option<TlsListener>,
    log_level: String,
    env: Vec<(String, String)>,
}

struct TlsListener {
    port: u16,
    cert: LeafCert,
}

impl GatewayConfig {
    /// A fresh temp dir, a free proxy port and a free metrics port.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("tollgate-gateway-")
                .tempdir()
                .expect("cannot create the gateway's temp dir"),
            proxy_port: free_port(),
            metrics_port: free_port(),
            tls: None,
            log_level: "info".to_string(),
            env: Vec::new(),
        }
    }

    /// Adds a TLS listener (HTTP/2 enabled) on a free port, serving `cert`.
    /// The gateway's [`http`](Gateway::http) client then trusts the cert's
    /// CA and resolves the cert's DNS names to 127.0.0.1.
    pub fn with_tls(mut self, cert: &LeafCert) -> Self {
        self.tls = Some(TlsListener {
            port: free_port(),
            cert: cert.clone(),
        });
        self
    }

    /// Sets `server.log_level` (default `info`).
    pub fn with_log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Sets the environment variable `name` to `value` for the gateway process
    /// only (e.g. the API-key pepper or a JWT secret), so tests running in
    /// parallel never touch the test process's own environment.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The gateway's temp dir (config, pid file, upgrade socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Port of the plain-HTTP proxy listener.
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port
    }

    /// Port of the TLS listener, if [`with_tls`](Self::with_tls) was used.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|tls| tls.port)
    }

    /// Port of the metrics endpoint.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The `server:` section.
    pub fn server_section(&self) -> String {
        let dir = self.dir().display();
        format!(
            "server:\n  threads: 1\n  grace_period: 0s\n  graceful_shutdown_timeout: 5s\n  \
             pid_file: \"{dir}/tollgate.pid\"\n  upgrade_sock: \"{dir}/upgrade.sock\"\n  \
             log_level: {}\n  access_log: true\n  health_path: /health\n",
            self.log_level
        )
    }

    /// The `listeners:` section: the proxy listener, plus the TLS one if any.
    pub fn listeners_section(&self) -> String {
        let mut yaml = format!("listeners:\n  - address: 127.0.0.1:{}\n", self.proxy_port);
        if let Some(tls) = &self.tls {
            yaml.push_str(&format!(
                "  - address: 127.0.0.1:{}\n    tls:\n      http2: true\n      certificates:\n        \
                 - cert: \"{}\"\n          key: \"{}\"\n",
                tls.port,
                tls.cert.cert_path.display(),
                tls.cert.key_path.display()
            ));
        }
        yaml
    }

    /// The `metrics:` section.
    pub fn metrics_section(&self) -> String {
        format!("metrics:\n  address: 127.0.0.1:{}\n", self.metrics_port)
    }

    /// `server:`, `listeners:` and `metrics:` sections together.
    pub fn header(&self) -> String {
        format!(
            "{}{}{}",
            self.server_section(),
            self.listeners_section(),
            self.metrics_section()
        )
    }

    /// The header followed by `rest` (usually `upstreams:` and `routes:`).
    pub fn render(&self, rest: &str) -> String {
        format!("{}{}", self.header(), rest)
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("tollgate.yaml")
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `tollgate` process. Dropping it kills the process (SIGKILL) and
/// removes its temp dir; if the test is panicking, its logs are printed first.
pub struct Gateway {
    config: GatewayConfig,
    child: ChildProcess,
    client: reqwest::Client,
}

impl Gateway {
    /// Writes `yaml` to `<dir>/tollgate.yaml`, runs `tollgate -c <file>` and
    /// waits until its proxy (and TLS) listener accepts TCP connections.
    /// Panics with the captured logs if it exits or is not ready in 20 s.
    pub async fn start(config: GatewayConfig, yaml: &str) -> Self {
        write_atomically(&config.config_path(), yaml);
        let mut child = spawn_gateway(&config);

        let mut ports = vec![config.proxy_port];
        ports.extend(config.tls_port());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for port in ports {
            loop {
                if let Some(status) = child.try_wait() {
                    panic!(
                        "tollgate exited during startup ({status}).\n{}",
                        logs_of(&config, yaml)
                    );
                }
                if tokio::net::TcpStream::connect(localhost(port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() >= deadline {
                    child.kill();
                    panic!(
                        "tollgate did not accept connections on 127.0.0.1:{port} within \
                         {STARTUP_TIMEOUT:?}.\n{}",
                        logs_of(&config, yaml)
                    );
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }

        let client = client_for(&config);
        Self {
            config,
            child,
            client,
        }
    }

    /// Runs the gateway with `yaml` expecting it to exit on its own (a bad
    /// config) within 20 s, and returns its exit code and output. Panics if
    /// it is still running then.
    pub async fn start_expect_failure(config: GatewayConfig, yaml: &str) -> CommandOutput {
        write_atomically(&config.config_path(), yaml);
        let mut child = spawn_gateway(&config);
        match child.wait_timeout(STARTUP_TIMEOUT).await {
            Some(status) => CommandOutput {
                code: status.code(),
                stdout: read_log(&config.dir().join("stdout.log")),
                stderr: read_log(&config.dir().join("stderr.log")),
            },
            None => {
                child.kill();
                panic!(
                    "tollgate was expected to fail but still runs after {STARTUP_TIMEOUT:?}.\n{}",
                    logs_of(&config, yaml)
                );
            }
        }
    }

    /// Runs `tollgate check -c <file>` on `yaml` and returns its exit code
    /// and output.
    pub async fn check(yaml: &str) -> CommandOutput {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-check-")
            .tempdir()
            .expect("cannot create a temp dir for `tollgate check`");
        let path = dir.path().join("tollgate.yaml");
        write_atomically(&path, yaml);
        let mut cmd = Command::new(tollgate_bin());
        cmd.arg("check")
            .arg("-c")
            .arg(&path)
            .current_dir(dir.path());
        run_command(cmd, STARTUP_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("cannot run `tollgate check`: {e}"))
            .into()
    }

    /// `http://127.0.0.1:<proxy port><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.config.proxy_port)
    }

    /// `https://<first name of the TLS cert>:<tls port><path>`; use with
    /// [`http`](Self::http), which resolves that name to 127.0.0.1.
    /// Panics if the config has no TLS listener.
    pub fn https_url(&self, path: &str) -> String {
        let tls = self
            .config
            .tls
            .as_ref()
            .expect("https_url needs GatewayConfig::with_tls");
        let host = tls.cert.names.first().map_or("127.0.0.1", |n| n.as_str());
        format!("https://{host}:{}{path}", tls.port)
    }

    /// A client for this gateway: no proxy, no redirects followed, 30 s
    /// timeout, and (with TLS) the test CA trusted and cert names resolved
    /// to 127.0.0.1. See [`client_builder`](Self::client_builder) to change
    /// options.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// The builder behind [`http`](Self::http), for tests that need e.g.
    /// `http2_prior_knowledge()` or `http1_only()`.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        client_builder_for(&self.config)
    }

    /// GETs `http://<metrics address>/metrics` and returns the body. Retries
    /// refused connections for up to 5 s (the metrics listener may start a
    /// little after the proxy); panics with the logs on any other failure.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.config.metrics_port);
        let deadline = Instant::now() + Duration::from_secs(5);
        let response = loop {
            match self.client.get(&url).send().await {
                Ok(response) => break response,
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(POLL_INTERVAL).await
                }
                Err(e) => panic!("GET {url} failed: {e}\n{}", self.logs()),
            }
        };
        let status = response.status();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("cannot read the body of GET {url}: {e}"));
        assert!(
            status.is_success(),
            "GET {url} returned {status}: {body}\n{}",
            self.logs()
        );
        body
    }

    /// Replaces the config file atomically (write a temp file, rename it over).
    /// Send `SIGHUP` with [`signal`](Self::signal) to make the gateway reload it.
    pub fn rewrite_config(&self, yaml: &str) {
        write_atomically(&self.config.config_path(), yaml);
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`, `libc::SIGTERM`) to the gateway.
    pub fn signal(&self, signal: libc::c_int) {
        self.child
            .signal(signal)
            .unwrap_or_else(|e| panic!("cannot send signal {signal} to tollgate: {e}"));
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits up to `timeout` for the gateway to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(timeout).await
    }

    /// Polls the logs (stdout and stderr) until one contains `needle`;
    /// returns whether it appeared within `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Everything the gateway wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_log(&self.config.dir().join("stdout.log"))
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_log(&self.config.dir().join("stderr.log"))
    }

    /// Both logs, labelled, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "--- tollgate stdout ---\n{}\n--- tollgate stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// The config, ports and temp dir this gateway was started with.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Path of the config file the gateway reads.
    pub fn config_path(&self) -> PathBuf {
        self.config.config_path()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.child.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn spawn_gateway(config: &GatewayConfig) -> ChildProcess {
    let dir = config.dir();
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("-c")
        .arg(config.config_path())
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .stdout(log_file(&dir.join("stdout.log")))
        .stderr(log_file(&dir.join("stderr.log")));
    ChildProcess::spawn(&mut cmd, "tollgate")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tollgate_bin()))
}

/// The logs and config of a gateway that failed, for panic messages.
fn logs_of(config: &GatewayConfig, yaml: &str) -> String {
    format!(
        "--- tollgate.yaml ---\n{yaml}\n--- tollgate stdout ---\n{}\n--- tollgate stderr ---\n{}",
        read_log(&config.dir().join("stdout.log")),
        read_log(&config.dir().join("stderr.log"))
    )
}

fn client_builder_for(config: &GatewayConfig) -> reqwest::ClientBuilder {
    let mut builder = http_client_builder();
    if let Some(tls) = &config.tls {
        let ca = reqwest::Certificate::from_pem(tls.cert.ca_pem.as_bytes())
            .expect("cannot parse the test CA");
        builder = builder.add_root_certificate(ca);
        for name in &tls.cert.names {
            if name.parse::<IpAddr>().is_err() {
                // The port comes from the URL; reqwest ignores this one.
                builder = builder.resolve(name, SocketAddr::from(([127, 0, 0, 1], tls.port)));
            }
        }
    }
    builder
}

fn client_for(config: &GatewayConfig) -> reqwest::Client {
    client_builder_for(config)
        .build()
        .expect("cannot build the gateway's HTTP client")
}

/// Writes `contents` next to `path` and renames it over `path`, so a reader
/// never sees a half-written file.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), path.display()));
}

/// The value of the sample `name{labels}` (labels in any order; exactly these).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(&str, &str)> = labels.to_vec();
    want.sort_unstable();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let mut found: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect::<Option<_>>()?;
            found.sort_unstable();
            (found == want).then(|| value.parse().ok()).flatten()
        })
}
