//! The gateway's side of PostgreSQL: keys and consumers looked up through the credential
//! cache, plans merged into the limit policies, cache eviction on change notifications,
//! and usage counts written in batches.

use crate::auth::store::CredentialStore;
use crate::config::{DatabaseSettings, LimitSpec, PlanSpec};
use crate::db::credentials::PgCredentialStore;
use crate::db::migrate::{migrate, MigrationReport};
use crate::db::plans::{self, Plan};
use crate::db::{Db, DbError, DbOptions};
use crate::usage::UsageRecorder;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// The database and what the gateway keeps of it.
pub struct Persistence {
    db: Db,
    store: Arc<dyn CredentialStore>,
    plans: ArcSwap<Vec<PlanSpec>>,
    /// Requests counted since the last write.
    pub usage: UsageRecorder,
    /// How often usage is written.
    pub flush_interval: Duration,
}

impl Persistence {
    /// Applies pending migrations and reads the plans, then keeps a lazily connecting pool
    /// for serving. Runs before the server starts (it blocks on a short-lived runtime, whose
    /// connections it closes, so the serving pool connects on the runtimes that use it).
    pub fn start(settings: &DatabaseSettings) -> Result<(Self, MigrationReport), DbError> {
        let options = DbOptions::from(settings);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DbError::Unavailable(format!("startup runtime: {e}")))?;
        let (report, plans) = rt.block_on(async {
            let setup = Db::connect_with(
                settings.url(),
                &DbOptions {
                    pool_size: 1,
                    // Migrations may wait on the advisory lock, and build indexes.
                    statement_timeout: None,
                    ..options.clone()
                },
            )
            .await?;
            let report = migrate(&setup).await?;
            let plans = plans::list(&setup).await?;
            setup.close();
            Ok::<_, DbError>((report, plans))
        })?;
        let db = Db::lazy(settings.url(), &options)?;
        Ok((
            Persistence {
                store: Arc::new(PgCredentialStore::new(db.clone())),
                db,
                plans: ArcSwap::from_pointee(plans.iter().map(plan_spec).collect()),
                usage: UsageRecorder::default(),
                flush_interval: settings.usage_flush_interval,
            },
            report,
        ))
    }

    /// The pool.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The credential store the proxy looks keys up in (behind its cache).
    pub fn store(&self) -> Arc<dyn CredentialStore> {
        Arc::clone(&self.store)
    }

    /// The plans last read from the database.
    pub fn plans(&self) -> Arc<Vec<PlanSpec>> {
        self.plans.load_full()
    }

    /// Reads the plans again; `true` when they changed.
    pub async fn reload_plans(&self) -> Result<bool, DbError> {
        let fresh: Vec<PlanSpec> = plans::list(&self.db).await?.iter().map(plan_spec).collect();
        let changed = *self.plans.load_full() != fresh;
        if changed {
            self.plans.store(Arc::new(fresh));
        }
        Ok(changed)
    }
}

/// A database plan as a config plan (same validation rules are enforced on write).
pub fn plan_spec(plan: &Plan) -> PlanSpec {
    let limits = limit_spec(plan);
    PlanSpec {
        name: plan.name.clone(),
        limits: (!limits.windows.is_empty() || limits.concurrency.is_some()).then_some(limits),
    }
}

/// The limits of a database plan in config form (empty when it limits nothing).
pub fn limit_spec(plan: &Plan) -> LimitSpec {
    plans::limit_spec(plan.limiting())
}
