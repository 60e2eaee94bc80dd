//! The live state the proxy serves from: one immutable snapshot per config generation,
//! swapped atomically on reload. A request reads one snapshot at its start and keeps it.

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{Config, RouteSpec};
use crate::router::Router;
use crate::upstream::{Pool, PoolError};
use std::collections::HashMap;
use std::sync::Arc;

/// A route compiled for serving: its spec plus the pool it sends to.
pub struct Route {
    pub spec: RouteSpec,
    pub pool: Arc<Pool>,
}

/// One config generation, ready to serve.
pub struct Runtime {
    pub generation: u64,
    pub config: Config,
    pub router: Router<Route>,
    /// Pools by upstream name, in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Identification and verification of callers.
    pub auth: Authenticator,
}

/// Why a config could not be compiled into a runtime.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
}

impl Runtime {
    /// Compiles `config`. Pools whose spec is unchanged from `previous` are reused as they are,
    /// so they keep their health state; the rest are built fresh.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, BuildError> {
        let old: HashMap<&str, &Arc<Pool>> = previous
            .map(|p| p.pools.iter().map(|pool| (pool.name(), pool)).collect())
            .unwrap_or_default();
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for spec in &config.upstreams {
            let pool = match old.get(spec.name.as_str()) {
                Some(existing) if existing.spec() == spec => Arc::clone(existing),
                _ => Arc::new(Pool::build(spec)?),
            };
            pools.push(pool);
        }
        let by_name: HashMap<&str, &Arc<Pool>> = pools.iter().map(|p| (p.name(), p)).collect();
        let routes = config.routes.iter().map(|spec| {
            // Validation guarantees that every route names an existing upstream.
            let pool = Arc::clone(by_name[spec.upstream.as_str()]);
            let route = Arc::new(Route {
                spec: spec.clone(),
                pool,
            });
            (spec.clone(), route)
        });
        let router = Router::new(routes);
        let auth =
            Authenticator::from_config(&config.auth, &config.consumers, previous.map(|p| &p.auth))?;
        Ok(Runtime {
            generation,
            config,
            router,
            pools,
            auth,
        })
    }
}
