//! The live state the proxy serves from: one immutable snapshot per config generation,
//! swapped atomically on reload. A request reads one snapshot at its start and keeps it.

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{Config, RouteSpec};
use crate::forward::Scrubber;
use crate::persistence::Persistence;
use crate::pipeline::Pipeline;
use crate::rate_limit::{LimitPolicies, LimitSetupError, RoutePolicies};
use crate::router::Router;
use crate::upstream::{Pool, PoolError};
use std::collections::HashMap;
use std::sync::Arc;

/// A route compiled for serving: its spec, the pool it sends to, its own limits.
pub struct Route {
    pub spec: RouteSpec,
    /// `None` on a route that only redirects (its pipeline answers every request).
    pub pool: Option<Arc<Pool>>,
    pub limits: RoutePolicies,
    /// This route's metric series, resolved once per snapshot.
    pub metrics: crate::metrics::RouteMetrics,
    /// The route's edge-feature steps (its own sections over `defaults:`).
    pub pipeline: Pipeline,
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
    /// Plan and anonymous rate-limit policies.
    pub limits: LimitPolicies,
    /// Removes what clients must not send upstream.
    pub scrubber: Scrubber,
    /// The `defaults:` steps, for answers made before a route matched (404, 400, health).
    pub pipeline: Pipeline,
}

/// Why a config could not be compiled into a runtime.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Limits(#[from] LimitSetupError),
}

impl Runtime {
    /// Compiles `config`. Pools whose spec is unchanged from `previous` are reused as they are,
    /// so they keep their health state; the rest are built fresh.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Runtime>,
        persistence: Option<&Persistence>,
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
        let stored_plans = persistence.map(|p| p.plans()).unwrap_or_default();
        let limits = LimitPolicies::from_config(&config, &stored_plans)?;
        let mut routes = Vec::with_capacity(config.routes.len());
        for spec in &config.routes {
            // Validation guarantees that a route's upstream exists.
            let pool = spec
                .upstream
                .as_deref()
                .map(|name| Arc::clone(by_name[name]));
            let route = Arc::new(Route {
                spec: spec.clone(),
                pool,
                limits: limits.for_route(spec)?,
                metrics: crate::metrics::RouteMetrics::new(&spec.name),
                pipeline: crate::features::pipeline(&spec.features, &config.defaults),
            });
            routes.push((spec.clone(), route));
        }
        let router = Router::new(routes);
        let auth = Authenticator::from_config(
            &config.auth,
            &config.consumers,
            previous.map(|p| &p.auth),
            persistence.map(|p| p.store()),
            config.rate_limit.ipv6_prefix,
        )?;
        Ok(Runtime {
            generation,
            pipeline: crate::features::pipeline(&Default::default(), &config.defaults),
            scrubber: Scrubber::new(&config.auth),
            config,
            router,
            pools,
            auth,
            limits,
        })
    }
}
