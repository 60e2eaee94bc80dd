//! The process's one rate limiter, connected lazily.

use super::{RateLimiter, RedisSettings};
use std::time::Duration;

/// The rate limiter, connected on first use so that its Redis connections live on the
/// runtime of its first user (normally the proxy's). Shared by the proxy and the admin
/// service.
pub struct Limiter {
    redis: Option<RedisSettings>,
    /// How long an unreleased concurrency slot counts (`rate_limit.concurrency_lease_ttl`).
    lease_ttl: Duration,
    cell: tokio::sync::OnceCell<RateLimiter>,
}

impl Limiter {
    /// A limiter on `redis`, or purely in-process without it; concurrency leases expire
    /// after `lease_ttl` either way.
    pub fn new(redis: Option<RedisSettings>, lease_ttl: Duration) -> Self {
        Limiter {
            redis,
            lease_ttl,
            cell: tokio::sync::OnceCell::new(),
        }
    }

    /// The limiter, connecting it the first time.
    pub async fn get(&self) -> &RateLimiter {
        self.cell
            .get_or_init(|| async {
                let local = || RateLimiter::local_with_lease_ttl(self.lease_ttl);
                match &self.redis {
                    None => local(),
                    Some(settings) => RateLimiter::connect(settings).await.unwrap_or_else(|e| {
                        log::error!("rate limiting: {e}; using the in-process limiter");
                        local()
                    }),
                }
            })
            .await
    }
}
