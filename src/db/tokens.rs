//! Refresh tokens, stored as their SHA-256 ([`TokenHash`]), in rotation families.
//!
//! Each use of a refresh token replaces it ([`rotate`]): the old row is marked revoked and
//! points at its successor. A token presented again after it was replaced means it leaked
//! (the thief or the owner holds a copy), so the whole family is revoked at once (the
//! reuse detection of the OAuth 2.0 Security BCP).

use super::audit::{self, NewAuditEntry};
use super::{begin, check_actor, col, commit, Db, DbError};
use ring::digest;
use serde_json::json;
use std::fmt;
use std::time::SystemTime;
use tokio_postgres::Row;

/// The SHA-256 of a refresh token: what is stored and looked up. Tokens carry enough
/// entropy that an unkeyed hash suffices (nothing to brute-force).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> TokenHash {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenHash(out)
    }
}

impl fmt::Debug for TokenHash {
    /// A short prefix only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A stored refresh token (without its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshToken {
    /// Its id (`rt_` + 32 hex digits).
    pub id: String,
    /// The user it was issued to.
    pub user_id: String,
    /// Shared by every token descending from one login.
    pub family_id: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// When it stops working.
    pub expires_at: SystemTime,
    /// When it was used up or revoked; `None`: still usable (until it expires).
    pub revoked_at: Option<SystemTime>,
    /// Its successor, when it was used up by [`rotate`].
    pub replaced_by: Option<String>,
}

impl RefreshToken {
    /// Whether it may be exchanged at `now`.
    pub fn is_usable(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A refresh token to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRefreshToken {
    /// The user it is for (must exist).
    pub user_id: String,
    /// `None`: a new family (a fresh login); the database names it (`fam_` + 32 hex).
    pub family_id: Option<String>,
    /// The token's hash.
    pub hash: TokenHash,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// The columns every query returns: a macro, so each statement is one `concat!`-ed
/// compile-time constant.
macro_rules! columns {
    () => {
        "id, user_id, family_id, issued_at, expires_at, revoked_at, replaced_by"
    };
}

/// Stores a token (at login), and deletes up to 100 tokens that expired over a day ago (so
/// the table does not only grow). [`DbError::Invalid`] if the user does not exist,
/// [`DbError::Conflict`] if the hash is already stored.
pub async fn insert(db: &Db, token: &NewRefreshToken) -> Result<RefreshToken, DbError> {
    let client = db.client().await?;
    client
        .execute(
            "DELETE FROM refresh_tokens WHERE id IN (
                 SELECT id FROM refresh_tokens
                 WHERE expires_at < now() - interval '1 day' LIMIT 100)",
            &[],
        )
        .await
        .map_err(|e| DbError::from_pg("delete expired refresh tokens", e))?;
    let row = client
        .query_one(
            concat!(
                "INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
                 VALUES ($1, COALESCE($2, tollgate_new_id('fam_')), $3, $4)
                 RETURNING ",
                columns!()
            ),
            &[
                &token.user_id,
                &token.family_id,
                &token.hash.0.as_slice(),
                &token.expires_at,
            ],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("store refresh token of {:?}", token.user_id), e))?;
    from_row(&row)
}

/// The token with this hash (usable or not), if any.
pub async fn find_by_hash(db: &Db, hash: &TokenHash) -> Result<Option<RefreshToken>, DbError> {
    let client = db.client().await?;
    client
        .query_opt(
            concat!(
                "SELECT ",
                columns!(),
                " FROM refresh_tokens WHERE token_hash = $1"
            ),
            &[&hash.0.as_slice()],
        )
        .await
        .map_err(|e| DbError::from_pg("find refresh token", e))?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Exchanges the token hashed `old` for a new one hashed `new` in the same family, in one
/// transaction: the old row gets `revoked_at` and `replaced_by`. Errors:
/// [`DbError::NotFound`] for an unknown token, [`DbError::Invalid`] for an expired one,
/// and [`DbError::Conflict`] for one already used or revoked, in which case the whole
/// family has been revoked (committed) before the error returns.
pub async fn rotate(
    db: &Db,
    old: &TokenHash,
    new: &TokenHash,
    expires_at: SystemTime,
) -> Result<RefreshToken, DbError> {
    let context = "rotate refresh token";
    let q = |e| DbError::from_pg(context, e);
    let mut client = db.client().await?;
    let tx = begin(&mut client, context).await?;
    // The row lock makes two concurrent uses of one token queue: the second sees it used.
    let current = tx
        .query_opt(
            "SELECT id, user_id, family_id, revoked_at IS NOT NULL AS revoked,
                    expires_at <= now() AS expired
             FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            &[&old.0.as_slice()],
        )
        .await
        .map_err(q)?
        .ok_or_else(|| DbError::NotFound("refresh token".into()))?;
    let id: String = col(&current, "id")?;
    let family: String = col(&current, "family_id")?;
    if col::<bool>(&current, "revoked")? {
        let revoked = revoke_family_in(&tx, "system", &family, "token.reuse_detected").await?;
        commit(tx, context).await?;
        // Only the first replay revokes anything; later ones (e.g. a flood of one stolen
        // token) are neither audited nor logged again.
        if revoked > 0 {
            log::warn!(
                "refresh token {id} of family {family} was presented after it had been used \
                 or revoked; revoked {revoked} more token(s) of the family"
            );
        }
        return Err(DbError::Conflict(format!(
            "refresh token {id} was already used or revoked; its family {family} is revoked"
        )));
    }
    if col::<bool>(&current, "expired")? {
        return Err(DbError::Invalid(format!("refresh token {id}: expired")));
    }
    let user: String = col(&current, "user_id")?;
    let row = tx
        .query_one(
            concat!(
                "INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
                 VALUES ($1, $2, $3, $4) RETURNING ",
                columns!()
            ),
            &[&user, &family, &new.0.as_slice(), &expires_at],
        )
        .await
        .map_err(q)?;
    let successor = from_row(&row)?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = now(), replaced_by = $2 WHERE id = $1",
        &[&id, &successor.id],
    )
    .await
    .map_err(q)?;
    commit(tx, context).await?;
    Ok(successor)
}

/// Revokes every still-usable token of family `family_id` (a logout, or a suspected
/// theft). Returns how many were revoked; [`DbError::NotFound`] for an unknown family.
pub async fn revoke_family(db: &Db, actor: &str, family_id: &str) -> Result<u64, DbError> {
    check_actor(actor)?;
    let context = format!("revoke token family {family_id:?}");
    let mut client = db.client().await?;
    let tx = begin(&mut client, &context).await?;
    let known = tx
        .query_opt(
            "SELECT 1 FROM refresh_tokens WHERE family_id = $1 LIMIT 1",
            &[&family_id],
        )
        .await
        .map_err(|e| DbError::from_pg(&context, e))?;
    if known.is_none() {
        return Err(DbError::NotFound(format!("token family {family_id:?}")));
    }
    let revoked = revoke_family_in(&tx, actor, family_id, "token.revoke_family").await?;
    commit(tx, &context).await?;
    Ok(revoked)
}

/// Revokes a family's usable tokens inside `tx` and, if there were any, audits it as
/// `action`.
async fn revoke_family_in(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: &str,
    family_id: &str,
    action: &str,
) -> Result<u64, DbError> {
    let revoked = tx
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now()
             WHERE family_id = $1 AND revoked_at IS NULL",
            &[&family_id],
        )
        .await
        .map_err(|e| DbError::from_pg(format!("revoke token family {family_id:?}"), e))?;
    if revoked == 0 {
        return Ok(0);
    }
    audit::append(
        tx,
        &NewAuditEntry {
            actor,
            action,
            target_type: "token_family",
            target_id: family_id,
            details: &json!({"revoked": revoked}),
        },
    )
    .await?;
    Ok(revoked)
}

fn from_row(row: &Row) -> Result<RefreshToken, DbError> {
    Ok(RefreshToken {
        id: col(row, "id")?,
        user_id: col(row, "user_id")?,
        family_id: col(row, "family_id")?,
        issued_at: col(row, "issued_at")?,
        expires_at: col(row, "expires_at")?,
        revoked_at: col(row, "revoked_at")?,
        replaced_by: col(row, "replaced_by")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256() {
        // FIPS 180-2 example: SHA-256("abc").
        let h = TokenHash::of("abc");
        assert_eq!(
            h.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
        assert_eq!(format!("{h:?}"), "TokenHash(ba7816bf8f01…)");
    }

    #[test]
    fn usability() {
        let now = SystemTime::now();
        let mut t = RefreshToken {
            id: "rt_1".into(),
            user_id: "usr_1".into(),
            family_id: "fam_1".into(),
            issued_at: now,
            expires_at: now + std::time::Duration::from_secs(60),
            revoked_at: None,
            replaced_by: None,
        };
        assert!(t.is_usable(now));
        assert!(!t.is_usable(now + std::time::Duration::from_secs(61)));
        t.revoked_at = Some(now);
        assert!(!t.is_usable(now));
    }
}
