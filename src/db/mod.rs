//! The PostgreSQL data layer: a connection pool ([`Db`]), embedded migrations
//! ([`migrate()`]), one repository module per table, change notifications
//! ([`change`], [`listen`]) and the proxy's credential lookups ([`credentials`]). Both the
//! pool and the listener connect over TLS when configured to ([`DatabaseTls`]).
//!
//! Rules every repository follows:
//! - SQL text is constant; values travel as parameters only.
//! - Each mutating call that an operator makes takes an `actor` and runs in its own
//!   transaction, which also appends its [`audit`] row and, for keys, consumers and
//!   plans, sends its [`change::Change`] notification (delivered on commit).
//! - Secrets are never stored: API keys as their HMAC ([`crate::auth::api_key::KeyHash`]),
//!   refresh tokens as their SHA-256 ([`tokens::TokenHash`]).
//! - Failures are [`DbError`]s that say what was being done.

#![warn(missing_docs)]

pub mod audit;
pub mod change;
pub mod consumers;
pub mod credentials;
pub mod day;
pub mod keys;
pub mod listen;
pub mod migrate;
pub mod plans;
mod tls;
pub mod tokens;
pub mod usage;
pub mod users;

use crate::auth::store::Status;
use crate::config::{DatabaseSettings, DatabaseTls};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Transaction,
};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::FromSql;
use tokio_postgres::{NoTls, Row, Socket};

pub use change::Change;
pub use day::Day;
pub use migrate::migrate;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached (connect failure or timeout, connection lost,
    /// pool exhausted for too long). Worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The row the call is about does not exist, e.g. `consumer "alice"`.
    #[error("{0} not found")]
    NotFound(String),
    /// The change collides with existing data: a duplicate, a row still in use, a state
    /// that forbids the change.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input is not acceptable: a malformed field, a reference to a missing row.
    #[error("invalid {0}")]
    Invalid(String),
    /// The database schema does not fit this binary (e.g. it was migrated by a newer one).
    #[error("schema: {0}")]
    Schema(String),
    /// Any other failure of a statement, with what was being done.
    #[error("{context}: {}", describe(.source))]
    Query {
        /// What the call was doing, e.g. `list consumers`.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl DbError {
    /// Classifies a driver error from a statement that inserts or updates. `context` says
    /// what was being done (`create consumer "alice"`).
    pub(crate) fn from_pg(context: impl Into<String>, e: tokio_postgres::Error) -> DbError {
        let context = context.into();
        let Some(db) = e.as_db_error() else {
            // No server answer: the socket failed, closed, or timed out.
            return DbError::Unavailable(format!("{context}: {}", describe(&e)));
        };
        let constraint = db.constraint().unwrap_or("?");
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            DbError::Conflict(format!("{context}: already exists ({constraint})"))
        } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
            let detail = db.detail().unwrap_or(db.message());
            DbError::Invalid(format!("{context}: refers to a missing row: {detail}"))
        } else if *code == SqlState::CHECK_VIOLATION
            || *code == SqlState::NOT_NULL_VIOLATION
            || *code == SqlState::INVALID_TEXT_REPRESENTATION
            || *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
        {
            DbError::Invalid(format!("{context}: {} ({constraint})", db.message()))
        } else if *code == SqlState::UNTRANSLATABLE_CHARACTER
            || *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
        {
            // The only character a Rust string can hold that PostgreSQL text and jsonb refuse.
            DbError::Invalid(format!(
                "{context}: text must not contain the NUL character (\\u0000)"
            ))
        } else if is_unavailable(code) {
            DbError::Unavailable(format!("{context}: {}", describe(&e)))
        } else {
            DbError::Query { context, source: e }
        }
    }

    /// Like [`from_pg`](Self::from_pg) for a statement that deletes: a foreign key that
    /// still points at the row means the row is in use.
    pub(crate) fn from_pg_delete(context: impl Into<String>, e: tokio_postgres::Error) -> DbError {
        let context = context.into();
        match e.as_db_error() {
            Some(db) if *db.code() == SqlState::FOREIGN_KEY_VIOLATION => {
                let by = db.table().unwrap_or("another table");
                DbError::Conflict(format!("{context}: in use (referenced from {by})"))
            }
            _ => DbError::from_pg(context, e),
        }
    }
}

/// A driver error with its cause: the driver's own message names only the kind of failure
/// (`db error`, `error performing TLS handshake`), the cause says what went wrong.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Server errors that mean "cannot serve now" rather than "bad statement".
fn is_unavailable(code: &SqlState) -> bool {
    [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::CONNECTION_FAILURE,
        SqlState::QUERY_CANCELED,
    ]
    .contains(code)
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// This page's rows.
    pub items: Vec<T>,
    /// Pass as the next call's `after` for the following page; `None`: this is the last.
    pub next_after: Option<String>,
}

/// How the pool connects. [`Default`] suits the gateway and the admin service.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Most connections open at once.
    pub pool_size: usize,
    /// Longest wait for one new connection (TCP, TLS handshake if any, authentication).
    pub connect_timeout: Duration,
    /// Longest wait for a free pooled connection before the call fails as unavailable.
    pub wait_timeout: Duration,
    /// Whether and how connections use TLS; [`Default`]: they do not.
    pub tls: DatabaseTls,
    /// Longest a statement may run before the server cancels it (`statement_timeout`);
    /// `None`: the server's own setting (migrations, which may wait on a lock).
    pub statement_timeout: Option<Duration>,
}

pub use crate::config::DEFAULT_STATEMENT_TIMEOUT;

/// Defaults: small pool (the proxy only reads on cache misses; the admin API is light),
/// and timeouts short enough that a request never hangs on a dead database for long.
impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
            tls: DatabaseTls::default(),
            statement_timeout: Some(DEFAULT_STATEMENT_TIMEOUT),
        }
    }
}

/// The configured pool size, TLS and statement timeout, with default connect timeouts.
impl From<&DatabaseSettings> for DbOptions {
    fn from(settings: &DatabaseSettings) -> Self {
        DbOptions {
            pool_size: settings.pool_size,
            tls: settings.tls.clone(),
            statement_timeout: Some(settings.statement_timeout),
            ..DbOptions::default()
        }
    }
}

/// A pool of connections to one PostgreSQL database. Cheap to clone (shared pool).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    /// Never prints the URL (it may hold a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Db")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl Db {
    /// A pool of at most `pool_size` connections to `url` (`postgres://user@host:port/db`),
    /// with default timeouts; fails unless one connection succeeds now.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Db, DbError> {
        Self::connect_with(
            url,
            &DbOptions {
                pool_size,
                ..DbOptions::default()
            },
        )
        .await
    }

    /// A pool with explicit options; fails unless one connection succeeds now.
    pub async fn connect_with(url: &str, options: &DbOptions) -> Result<Db, DbError> {
        let db = Self::lazy(url, options)?;
        db.health_check().await?;
        Ok(db)
    }

    /// A pool that connects on first use (for callers that start while the database is
    /// down). Fails only for a malformed URL or options (TLS settings included).
    pub fn lazy(url: &str, options: &DbOptions) -> Result<Db, DbError> {
        if options.pool_size == 0 {
            return Err(DbError::Invalid("pool size: must be at least 1".into()));
        }
        let mut config = pg_config(url, options.connect_timeout)?;
        if let Some(timeout) = options.statement_timeout {
            // Sent in the startup packet: set on every connection before its first query.
            let ms = timeout.as_millis().max(1);
            let options = match config.get_options() {
                Some(given) if !given.is_empty() => format!("{given} -c statement_timeout={ms}"),
                _ => format!("-c statement_timeout={ms}"),
            };
            config.options(&options);
        }
        let manager = match tls::connector(&mut config, &options.tls)? {
            tls::Connector::Plain => manager(config, NoTls),
            tls::Connector::Tls(connector) => manager(config, connector),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| DbError::Invalid(format!("pool: {e}")))?;
        Ok(Db { pool })
    }

    /// Succeeds when the database answers `SELECT 1`.
    pub async fn health_check(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| DbError::from_pg("health check", e))?;
        Ok(())
    }

    /// Closes the pool: idle connections are dropped, later calls fail as unavailable.
    pub fn close(&self) {
        self.pool.close();
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => DbError::from_pg("connect", e),
            other => DbError::Unavailable(format!("connect: {other}")),
        })
    }
}

/// The pool's connection manager, connecting through `tls`. Generic because `NoTls` and the
/// OpenSSL connector are different types; the manager (and so the pool) is not.
fn manager<T>(config: tokio_postgres::Config, tls: T) -> Manager
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Manager::from_config(
        config,
        tls,
        ManagerConfig {
            // A connection whose socket closed is known as closed without a query.
            recycling_method: RecyclingMethod::Fast,
        },
    )
}

/// Parses a connection URL and sets the connect timeout and TCP keepalives.
pub(crate) fn pg_config(
    url: &str,
    connect_timeout: Duration,
) -> Result<tokio_postgres::Config, DbError> {
    // The driver's message never echoes the URL, so a password cannot leak through it.
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| DbError::Invalid(format!("database URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("tollgate");
    }
    Ok(config)
}

/// Starts a transaction on `client`.
pub(crate) async fn begin<'a>(
    client: &'a mut Object,
    context: &str,
) -> Result<Transaction<'a>, DbError> {
    client
        .transaction()
        .await
        .map_err(|e| DbError::from_pg(format!("{context}: begin"), e))
}

/// Commits `tx`.
pub(crate) async fn commit(tx: Transaction<'_>, context: &str) -> Result<(), DbError> {
    tx.commit()
        .await
        .map_err(|e| DbError::from_pg(format!("{context}: commit"), e))
}

/// How a [`Status`] is stored.
pub(crate) fn status_str(status: Status) -> &'static str {
    match status {
        Status::Active => "active",
        Status::Disabled => "disabled",
    }
}

/// A stored status; anything unknown reads as disabled (the table's check constraint
/// allows only the two values, so this is belt and braces).
pub(crate) fn parse_status(text: &str) -> Status {
    match text {
        "active" => Status::Active,
        _ => Status::Disabled,
    }
}

/// Checks an identifier given by an operator (consumer id, plan name): 1 to 128
/// characters, none of them control characters.
pub(crate) fn check_name(what: &str, value: &str) -> Result<(), DbError> {
    if value.is_empty() || value.chars().count() > 128 {
        return Err(DbError::Invalid(format!(
            "{what}: must be 1 to 128 characters long"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(DbError::Invalid(format!(
            "{what}: must not contain control characters"
        )));
    }
    Ok(())
}

/// Checks the actor named on a mutating call.
pub(crate) fn check_actor(actor: &str) -> Result<(), DbError> {
    check_name("actor", actor)
}

/// Reads column `name` of `row`. A missing column or a type that does not fit means the
/// table is not what this binary expects, hence a schema error rather than a panic.
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, DbError> {
    row.try_get(name)
        .map_err(|e| DbError::Schema(format!("column {name}: {e}")))
}

/// Converts a count for a `bigint` column (saturating: no count reaches 2^63).
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Converts a `bigint` that a check constraint keeps non-negative.
pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("id", "alice").is_ok());
        assert!(matches!(check_name("id", ""), Err(DbError::Invalid(_))));
        assert!(check_name("id", &"x".repeat(129)).is_err());
        assert!(check_name("id", "a\nb").is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [Status::Active, Status::Disabled] {
            assert_eq!(parse_status(status_str(s)), s);
        }
        assert_eq!(parse_status("weird"), Status::Disabled);
    }

    #[test]
    fn urls_are_parsed_without_echoing_them() {
        let e = pg_config("postgres://u:s3cret@/db?bogus=1", Duration::from_secs(1)).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let c = pg_config("postgres://u@127.0.0.1:5/db", Duration::from_secs(2)).unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
    }
}
