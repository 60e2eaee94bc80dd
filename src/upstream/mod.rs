//! Upstream pools: weighted round-robin over the targets that pass active health checks
//! (pingora-load-balancing), and how a chosen target becomes a Pingora `HttpPeer`.

pub mod health;

use crate::config::{HealthCheckKind, HealthCheckSpec, UpstreamSpec, UpstreamTls};
use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::tls::CaType;
use pingora::tls::x509::X509;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why a pool could not be built from a (validated) spec.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("upstream {upstream:?}: cannot read CA file {path}: {reason}")]
    CaFile {
        upstream: String,
        path: String,
        reason: String,
    },
    #[error("upstream {upstream:?}: {reason}")]
    Build { upstream: String, reason: String },
}

/// A named pool of targets with its selector and health state.
pub struct Pool {
    spec: UpstreamSpec,
    /// This pool's `tollgate_upstream_duration_seconds` series, resolved once.
    upstream_duration: prometheus::Histogram,
    balancer: LoadBalancer<RoundRobin>,
    ca: Option<Arc<CaType>>,
}

impl Pool {
    /// Builds a pool; targets start healthy until a health check says otherwise.
    pub fn build(spec: &UpstreamSpec) -> Result<Self, PoolError> {
        let targets: BTreeSet<Backend> = spec
            .targets
            .iter()
            .map(|t| Backend {
                addr: PeerAddr::Inet(t.address),
                weight: t.weight,
                ext: Default::default(),
            })
            .collect();
        let ca = match spec.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            None => None,
            Some(path) => Some(Arc::new(load_ca(path).map_err(|reason| {
                PoolError::CaFile {
                    upstream: spec.name.clone(),
                    path: path.display().to_string(),
                    reason,
                }
            })?)),
        };
        let mut backends = Backends::new(Static::new(targets));
        if let Some(hc) = &spec.health_check {
            backends.set_health_check(health_check(hc, spec.tls.as_ref(), ca.as_ref()));
        }
        let balancer = LoadBalancer::from_backends(backends);
        // Static discovery never waits, so the first update completes immediately.
        match balancer.update().now_or_never() {
            Some(Ok(())) => {}
            other => {
                return Err(PoolError::Build {
                    upstream: spec.name.clone(),
                    reason: format!(
                        "static discovery did not complete: {:?}",
                        other.map(|r| r.err())
                    ),
                })
            }
        }
        Ok(Pool {
            upstream_duration: crate::metrics::UPSTREAM_DURATION
                .with_label_values(&[spec.name.as_str()]),
            spec: spec.clone(),
            balancer,
            ca,
        })
    }

    /// The spec this pool was built from.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// Where to record how long this pool's targets take to answer.
    pub fn upstream_duration(&self) -> &prometheus::Histogram {
        &self.upstream_duration
    }

    /// The pool's name in the config.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Next healthy target in weighted round-robin order, skipping those in `exclude`.
    pub fn select(&self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        // Enough iterations to visit every weighted slot once.
        let max_iterations = self
            .spec
            .targets
            .iter()
            .map(|t| t.weight)
            .sum::<usize>()
            .max(1);
        self.balancer
            .select_with(b"", max_iterations, |b, healthy| {
                healthy && b.as_inet().is_some_and(|a| !exclude.contains(a))
            })
            .and_then(|b| b.as_inet().copied())
    }

    /// (healthy, total) target counts.
    pub fn health_counts(&self) -> (usize, usize) {
        let targets = self.balancer.backends().get_backend();
        let healthy = targets
            .iter()
            .filter(|b| self.balancer.backends().ready(b))
            .count();
        (healthy, targets.len())
    }

    /// Number of targets.
    pub fn target_count(&self) -> usize {
        self.spec.targets.len()
    }

    /// Runs one round of health checks (all targets in parallel).
    pub async fn check_health(&self) {
        self.balancer.backends().run_health_check(true).await;
    }

    /// The peer for one request to `target`.
    pub fn peer(&self, target: SocketAddr) -> HttpPeer {
        match &self.spec.tls {
            None => HttpPeer::new(target, false, String::new()),
            Some(tls) => {
                let mut peer = HttpPeer::new(target, true, tls.sni.clone());
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer.options.ca = self.ca.clone();
                peer
            }
        }
    }
}

/// The health check of a pool; over TLS it trusts what requests to the pool trust (the
/// upstream's `ca_file`, else the system's roots).
fn health_check(
    spec: &HealthCheckSpec,
    tls: Option<&UpstreamTls>,
    ca: Option<&Arc<CaType>>,
) -> Box<dyn HealthCheck + Send + Sync> {
    match &spec.kind {
        HealthCheckKind::Tcp => {
            let mut check = match tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            check.consecutive_success = spec.successes_to_readmit;
            check.consecutive_failure = spec.failures_to_eject;
            check.peer_template.options.connection_timeout = Some(spec.timeout);
            check.peer_template.options.total_connection_timeout = Some(spec.timeout);
            if let Some(t) = tls {
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
                check.peer_template.options.ca = ca.cloned();
            }
            check
        }
        HealthCheckKind::Http {
            path,
            host,
            expected_status,
        } => {
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            check.consecutive_success = spec.successes_to_readmit;
            check.consecutive_failure = spec.failures_to_eject;
            check.peer_template.options.connection_timeout = Some(spec.timeout);
            check.peer_template.options.total_connection_timeout = Some(spec.timeout);
            check.peer_template.options.read_timeout = Some(spec.timeout);
            if let Some(t) = tls {
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
                check.peer_template.options.ca = ca.cloned();
                // The certificate names the upstream's SNI, not the probe's Host.
                check.peer_template.sni = t.sni.clone();
            }
            check.req.set_uri(
                http::Uri::try_from(path.as_str()).unwrap_or_else(|_| http::Uri::from_static("/")),
            );
            let expected = *expected_status;
            check.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::Custom("unexpected health status"),
                        format!("status {} (expected {expected})", resp.status.as_u16()),
                    )
                }
            }));
            Box::new(check)
        }
    }
}

fn load_ca(path: &std::path::Path) -> Result<CaType, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in file".into());
    }
    Ok(certs.into_boxed_slice())
}
