//! `GET /health` on the proxy listener: the gateway's own liveness, with per-upstream target
//! counts so an operator sees at a glance which pools are degraded.

use crate::runtime::Runtime;
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct Health<'a> {
    /// `ok` when every target of every upstream is healthy, else `degraded`.
    status: &'static str,
    config_generation: u64,
    upstreams: BTreeMap<&'a str, UpstreamHealth>,
}

#[derive(Serialize)]
struct UpstreamHealth {
    healthy: usize,
    total: usize,
}

/// The JSON body for the current snapshot.
pub fn body(runtime: &Runtime) -> Bytes {
    let upstreams: BTreeMap<&str, UpstreamHealth> = runtime
        .pools
        .iter()
        .map(|p| {
            let (healthy, total) = p.health_counts();
            (p.name(), UpstreamHealth { healthy, total })
        })
        .collect();
    let degraded = upstreams.values().any(|u| u.healthy < u.total);
    let health = Health {
        status: if degraded { "degraded" } else { "ok" },
        config_generation: runtime.generation,
        upstreams,
    };
    let mut body = serde_json::to_vec(&health).unwrap_or_default();
    body.push(b'\n');
    Bytes::from(body)
}
