//! Active health checking: one task per pool that has a health check, started when the pool
//! first appears in a config snapshot and stopped when a reload drops it.

use super::Pool;
use crate::metrics;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tokio::task::JoinHandle;

/// The running health-check tasks, keyed by pool identity.
#[derive(Default)]
pub struct HealthChecks {
    tasks: HashMap<usize, (String, JoinHandle<()>)>,
}

impl HealthChecks {
    /// Starts tasks for new pools and stops those of pools that are gone.
    /// Must be called inside a Tokio runtime.
    pub fn reconcile(&mut self, pools: &[Arc<Pool>]) {
        let current: HashMap<usize, &Arc<Pool>> =
            pools.iter().map(|p| (Arc::as_ptr(p) as usize, p)).collect();
        self.tasks.retain(|id, (name, task)| {
            let keep = current.contains_key(id);
            if !keep {
                task.abort();
                if !pools.iter().any(|p| p.name() == name) {
                    metrics::remove_upstream(name);
                }
            }
            keep
        });
        for (id, pool) in current {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let (healthy, total) = pool.health_counts();
            metrics::set_upstream_targets(pool.name(), healthy, total);
            let task = tokio::spawn(check_loop(Arc::downgrade(pool)));
            self.tasks.insert(id, (pool.name().to_string(), task));
        }
    }
}

/// Probes the pool every interval for as long as the pool exists.
async fn check_loop(pool: Weak<Pool>) {
    loop {
        let interval = {
            let Some(pool) = pool.upgrade() else { return };
            let Some(spec) = pool.spec().health_check.as_ref() else {
                return;
            };
            pool.check_health().await;
            let (healthy, total) = pool.health_counts();
            metrics::set_upstream_targets(pool.name(), healthy, total);
            spec.interval
        };
        tokio::time::sleep(interval).await;
    }
}
