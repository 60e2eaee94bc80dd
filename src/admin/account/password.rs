//! Account passwords: argon2id (the argon2 crate's defaults, OWASP's recommended 19 MiB,
//! 2 passes, 1 lane), stored as PHC strings. Hashing is deliberately slow, so it runs on
//! the blocking pool, at most [`CONCURRENT_HASHES`] at a time (each holds 19 MiB), with
//! at most [`QUEUED_HASHES`] more waiting, each for at most [`MAX_QUEUE_WAIT`]: beyond
//! that a caller is told to come back ([`PasswordError::Busy`]), never left waiting.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Password hashes computed at once, per process.
pub const CONCURRENT_HASHES: usize = 4;
/// Hashes allowed to wait for a slot: about one second of work on four cores. More
/// waiting would only make every caller slower, and hold their connections.
pub const QUEUED_HASHES: usize = 16;
/// The longest a hash waits for a slot before its caller is told to retry.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// `Retry-After` when the hasher is full, in seconds.
pub const BUSY_RETRY_AFTER: u64 = 1;
/// Shortest accepted password, in characters (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes (bounds the hashing work a request can ask for).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Why a password could not be hashed or checked (never says anything about the password).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hasher failed (a malformed stored hash, or no randomness).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// Every slot and every queue place is taken, or the wait was too long: retry later.
    #[error("every password-hashing slot is busy")]
    Busy,
}

/// Hashes and verifies passwords off the async runtime.
pub struct Passwords {
    slots: Arc<Semaphore>,
    /// Places for hashes running or waiting: `CONCURRENT_HASHES + QUEUED_HASHES`.
    places: Arc<Semaphore>,
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords {
            slots: Arc::new(Semaphore::new(CONCURRENT_HASHES)),
            places: Arc::new(Semaphore::new(CONCURRENT_HASHES + QUEUED_HASHES)),
        }
    }
}

/// What is wrong with a proposed password, if anything.
pub fn weakness(password: &str, email: &str) -> Option<&'static str> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        Some("must be at least 8 characters long")
    } else if password.chars().count() > MAX_PASSWORD_CHARS {
        Some("must be at most 256 characters long")
    } else if password.trim().eq_ignore_ascii_case(email.trim()) {
        Some("must not be the e-mail address")
    } else {
        None
    }
}

impl Passwords {
    /// The PHC string of `password` under a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.blocking(move || hash_with_fresh_salt(password.as_bytes()))
            .await
    }

    /// Whether `password` matches the PHC string `stored`. With `stored = None` (no such
    /// account) a dummy hash is checked instead, so both cases take the same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.blocking(move || {
            let known = stored.is_some();
            let stored = stored.as_deref().unwrap_or_else(|| dummy_hash());
            let parsed =
                PasswordHash::new(stored).map_err(|e| PasswordError::Hashing(e.to_string()))?;
            let matches = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(matches && known)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        // A place in the queue, or no wait at all.
        let place = Arc::clone(&self.places)
            .try_acquire_owned()
            .map_err(|_| PasswordError::Busy)?;
        // The slot moves into the blocking job: a client that hangs up drops this future,
        // but the hash runs on, and keeps its slot until it is done.
        let slot = tokio::time::timeout(MAX_QUEUE_WAIT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Hashing("the hasher is shut down".into()))?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            drop(place);
            result
        })
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))?
    }
}

/// The argon2id PHC string of `password` under 16 fresh random bytes of salt.
fn hash_with_fresh_salt(password: &[u8]) -> Result<String, PasswordError> {
    let failed = |e: String| PasswordError::Hashing(e);
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| failed("the system random source failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| failed(e.to_string()))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| failed(e.to_string()))
}

/// Makes the dummy hash now (blocking, about one hash's time), so the first login for an
/// unknown address costs no more than any other.
pub fn warm_up() {
    dummy_hash();
}

/// A hash of a random password, made once: what an unknown account is checked against.
/// (If it cannot be made, the empty string fails to parse, which fails the login.)
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut random = [0u8; 32];
        let _ = SystemRandom::new().fill(&mut random);
        hash_with_fresh_salt(&random).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_argon2id() {
        let p = Passwords::default();
        let hash = p.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(p
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!p.verify("wrong horse".into(), Some(hash)).await.unwrap());
        // An unknown account never matches, whatever the password.
        assert!(!p.verify("anything".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let p = Passwords::default();
        // Take every place as a flood of logins would.
        let _held = Arc::clone(&p.places)
            .acquire_many_owned((CONCURRENT_HASHES + QUEUED_HASHES) as u32)
            .await
            .unwrap();
        assert!(matches!(
            p.verify("anything".into(), None).await,
            Err(PasswordError::Busy)
        ));
    }

    #[test]
    fn weak_passwords_are_named() {
        assert!(weakness("short", "a@b.c").is_some());
        assert!(weakness("ann@example.com", "Ann@Example.com").is_some());
        assert!(weakness(&"x".repeat(300), "a@b.c").is_some());
        assert_eq!(weakness("long enough pass", "a@b.c"), None);
    }
}
