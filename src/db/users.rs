//! User accounts (people who log in to the admin API or a portal). Passwords are hashed
//! by the caller (argon2id); this module stores the hash as given.

use super::audit::{self, NewAuditEntry};
use super::consumers::{self, NewConsumer};
use super::{begin, check_actor, col, commit, Db, DbError};
use serde_json::json;
use std::fmt;
use std::time::SystemTime;
use tokio_postgres::Row;

/// A stored user.
#[derive(Clone, PartialEq)]
pub struct User {
    /// Its id (`usr_` + 32 hex digits).
    pub id: String,
    /// Lower-cased e-mail address, unique.
    pub email: String,
    /// The password hash (PHC string).
    pub password_hash: String,
    /// The consumer whose credentials this user manages, if any.
    pub consumer_id: Option<String>,
    /// When it was created.
    pub created_at: SystemTime,
}

impl fmt::Debug for User {
    /// Leaves the password hash out, so it never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"<redacted>")
            .field("consumer_id", &self.consumer_id)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A user to create.
#[derive(Clone, PartialEq)]
pub struct NewUser {
    /// E-mail address (stored lower-cased; compared case-insensitively).
    pub email: String,
    /// The password hash (PHC string, e.g. `$argon2id$...`).
    pub password_hash: String,
    /// The consumer this user manages, if any (must exist).
    pub consumer_id: Option<String>,
}

impl fmt::Debug for NewUser {
    /// Leaves the password hash out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("consumer_id", &self.consumer_id)
            .finish_non_exhaustive()
    }
}

/// The columns every query returns: a macro, so each statement is one `concat!`-ed
/// compile-time constant.
macro_rules! columns {
    () => {
        "id, email, password_hash, consumer_id, created_at"
    };
}

/// Creates a user. [`DbError::Conflict`] if the e-mail address is taken (in any case),
/// [`DbError::Invalid`] for a malformed address or a missing consumer.
pub async fn create(db: &Db, actor: &str, user: &NewUser) -> Result<User, DbError> {
    check_actor(actor)?;
    let email = normalize_email(&user.email)?;
    if user.password_hash.is_empty() {
        return Err(DbError::Invalid("password hash: empty".into()));
    }
    let context = format!("create user {email:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let created = insert_in(
        &tx,
        actor,
        "user.create",
        None,
        &email,
        &user.password_hash,
        user.consumer_id.as_deref(),
    )
    .await?;
    commit(tx, &context).await?;
    Ok(created)
}

/// Inserts a user inside `tx` (id `id`, or one the database names) and audits it.
async fn insert_in(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: &str,
    action: &str,
    id: Option<&str>,
    email: &str,
    password_hash: &str,
    consumer_id: Option<&str>,
) -> Result<User, DbError> {
    let row = tx
        .query_one(
            concat!(
                "INSERT INTO users (id, email, password_hash, consumer_id)
                 VALUES (COALESCE($1, tollgate_new_id('usr_')), $2, $3, $4) RETURNING ",
                columns!()
            ),
            &[&id, &email, &password_hash, &consumer_id],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("create user {email:?}"), e))?;
    let created = from_row(&row)?;
    audit::append(
        tx,
        &NewAuditEntry {
            actor,
            action,
            target_type: "user",
            target_id: &created.id,
            details: &json!({"email": created.email, "consumer": created.consumer_id}),
        },
    )
    .await?;
    Ok(created)
}

/// A self-registered account: a user and the consumer it manages, both with id `id`.
#[derive(Clone, PartialEq)]
pub struct Registration {
    /// The id of both rows (`usr_` + 32 hex digits, chosen by the caller).
    pub id: String,
    /// E-mail address (stored lower-cased).
    pub email: String,
    /// The password hash (PHC string).
    pub password_hash: String,
    /// The consumer's plan (must exist); `None`: the default plan.
    pub plan: Option<String>,
}

impl fmt::Debug for Registration {
    /// Leaves the password hash out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Creates a user and its own consumer in one transaction (audited as `actor`, the
/// consumer change notified). [`DbError::Conflict`] if the e-mail address or the id is
/// taken, [`DbError::Invalid`] for a malformed address or a missing plan.
pub async fn register(db: &Db, actor: &str, registration: &Registration) -> Result<User, DbError> {
    let email = normalize_email(&registration.email)?;
    if registration.password_hash.is_empty() {
        return Err(DbError::Invalid("password hash: empty".into()));
    }
    let context = format!("register user {email:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let consumer = NewConsumer {
        plan: registration.plan.clone(),
        ..NewConsumer::new(registration.id.clone())
    };
    consumers::create_in(&tx, actor, &consumer).await?;
    let created = insert_in(
        &tx,
        actor,
        "user.register",
        Some(&registration.id),
        &email,
        &registration.password_hash,
        Some(&registration.id),
    )
    .await?;
    commit(tx, &context).await?;
    Ok(created)
}

/// The user with this e-mail address (any case), if any.
pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<User>, DbError> {
    let email = email.trim().to_lowercase();
    let client = db.client().await?;
    client
        .query_opt(
            concat!("SELECT ", columns!(), " FROM users WHERE email = $1"),
            &[&email],
        )
        .await
        .map_err(|e| DbError::from_pg("find user by e-mail", e))?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The user `id`; [`DbError::NotFound`] if there is none.
pub async fn get(db: &Db, id: &str) -> Result<User, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            concat!("SELECT ", columns!(), " FROM users WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("get user {id:?}"), e))?
        .ok_or_else(|| DbError::NotFound(format!("user {id:?}")))?;
    from_row(&row)
}

/// Whether `email` has the rough shape of an address (`local@domain`, at most 254
/// characters, no spaces or control characters).
pub fn is_plausible_email(email: &str) -> bool {
    email.chars().count() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
}

/// Trims and lower-cases an address and checks its rough shape.
fn normalize_email(email: &str) -> Result<String, DbError> {
    let email = email.trim().to_lowercase();
    if is_plausible_email(&email) {
        Ok(email)
    } else {
        Err(DbError::Invalid(format!("e-mail address {email:?}")))
    }
}

fn from_row(row: &Row) -> Result<User, DbError> {
    Ok(User {
        id: col(row, "id")?,
        email: col(row, "email")?,
        password_hash: col(row, "password_hash")?,
        consumer_id: col(row, "consumer_id")?,
        created_at: col(row, "created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "a b@example.com",
            "a@b@c",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_password_hash() {
        let user = NewUser {
            email: "a@b".into(),
            password_hash: "$argon2id$secret".into(),
            consumer_id: None,
        };
        assert!(!format!("{user:?}").contains("secret"));
    }
}
