//! Embedded, numbered SQL migrations (`migrations/NNNN_name.sql` at the repository root).
//!
//! [`migrate`] applies the pending ones in order, all in one transaction that first takes a
//! transaction-scoped advisory lock: instances starting at once queue on the lock, and
//! each later one finds the work done. A database that records a migration this binary
//! does not know (it was migrated by a newer release) is refused and left untouched.

use super::{begin, commit, Db, DbError};

/// One schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number; applied in increasing order.
    pub version: i32,
    /// A short name, recorded next to the version.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration this binary knows, in order. Append only: a released migration is
/// never edited, a new file with the next number changes the schema.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "batches_and_expiry",
        sql: include_str!("../../migrations/0002_batches_and_expiry.sql"),
    },
    Migration {
        version: 3,
        name: "plan_block_for",
        sql: include_str!("../../migrations/0003_plan_block_for.sql"),
    },
];

/// The advisory lock key: the bytes of "tollgate" read as a big-endian integer, so it
/// will not collide with another application's lock in the same database by accident.
pub const LOCK_KEY: i64 = 0x746f_6c6c_6761_7465;

/// What a [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order (empty: the schema was current).
    pub applied: Vec<i32>,
    /// The schema version afterwards.
    pub current: i32,
}

/// Brings the schema up to date. Safe to call from many instances at once.
pub async fn migrate(db: &Db) -> Result<MigrationReport, DbError> {
    migrate_with(db, MIGRATIONS).await
}

/// [`migrate`] with an explicit list (tests use it to simulate other releases).
pub async fn migrate_with(db: &Db, migrations: &[Migration]) -> Result<MigrationReport, DbError> {
    check_order(migrations)?;
    let mut client = db.client().await?;
    let tx = begin(&mut client, "migrate").await?;
    let q = |what: &'static str| move |e| DbError::from_pg(format!("migrate: {what}"), e);
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(q("take the advisory lock"))?;
    // Created under the lock, so concurrent first starts cannot race on it.
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer primary key,
             name       text not null,
             applied_at timestamptz not null default now()
         )",
    )
    .await
    .map_err(q("create schema_migrations"))?;
    let rows = tx
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(q("read schema_migrations"))?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = row.get(0);
        let name: String = row.get(1);
        match migrations.iter().find(|m| m.version == version) {
            None => {
                return Err(DbError::Schema(format!(
                    "the database has migration {version} ({name}), which this binary does \
                     not know: it was migrated by a newer release; run that release or newer"
                )))
            }
            Some(m) if m.name != name => {
                return Err(DbError::Schema(format!(
                    "migration {version} is recorded as {name:?} but this binary calls it {:?}",
                    m.name
                )))
            }
            Some(_) => recorded.push(version),
        }
    }
    let mut applied = Vec::new();
    for m in migrations.iter().filter(|m| !recorded.contains(&m.version)) {
        tx.batch_execute(m.sql).await.map_err(|e| {
            DbError::Schema(format!(
                "migration {} ({}) failed: {}",
                m.version,
                m.name,
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.to_string())
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(q("record a migration"))?;
        log::info!("applied database migration {} ({})", m.version, m.name);
        applied.push(m.version);
    }
    commit(tx, "migrate").await?;
    Ok(MigrationReport {
        applied,
        current: migrations.last().map_or(0, |m| m.version),
    })
}

/// Versions must be positive and strictly increasing.
fn check_order(migrations: &[Migration]) -> Result<(), DbError> {
    let mut previous = 0;
    for m in migrations {
        if m.version <= previous {
            return Err(DbError::Schema(format!(
                "migration {} ({}) is out of order",
                m.version, m.name
            )));
        }
        previous = m.version;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_in_order() {
        assert!(check_order(MIGRATIONS).is_ok());
        assert_eq!(MIGRATIONS[0].version, 1);
        assert!(MIGRATIONS[0].sql.contains("create table api_keys"));
    }

    #[test]
    fn out_of_order_lists_are_refused() {
        let m = |version| Migration {
            version,
            name: "x",
            sql: "",
        };
        assert!(check_order(&[m(1), m(1)]).is_err());
        assert!(check_order(&[m(2), m(1)]).is_err());
        assert!(check_order(&[m(0)]).is_err());
        assert!(check_order(&[m(1), m(3)]).is_ok());
    }

    #[test]
    fn lock_key_spells_tollgate() {
        assert_eq!(&LOCK_KEY.to_be_bytes(), b"tollgate");
    }
}
