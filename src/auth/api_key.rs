//! API keys: `tg_<8-character public prefix>_<32-character secret>`, base62. The prefix is
//! for people (listings, logs); the secret carries about 190 bits of entropy. Only a keyed
//! hash of the whole key (HMAC-SHA-256 with a server-side pepper) is ever stored or compared.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

pub use crate::vocab::KeyHash;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "tg_";
const PUBLIC_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Hashes presented keys; holds the pepper.
#[derive(Clone)]
pub struct KeyHasher {
    key: hmac::Key,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<pepper>)")
    }
}

impl KeyHasher {
    /// A hasher with `pepper` as the HMAC key.
    pub fn new(pepper: &[u8]) -> Self {
        KeyHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        }
    }

    /// The stored form of `api_key`.
    pub fn hash(&self, api_key: &str) -> KeyHash {
        let tag = hmac::sign(&self.key, api_key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        KeyHash(out)
    }
}

/// A freshly generated key. `secret` is shown once and never stored.
pub struct NewKey {
    /// The whole key, to hand to the client.
    pub secret: String,
    /// `tg_` plus the public part: safe to display and log.
    pub prefix: String,
}

/// Generates a key from the operating system's random source.
pub fn generate(rng: &SystemRandom) -> Result<NewKey, ring::error::Unspecified> {
    // Rejection sampling: bytes >= 248 (4 × 62) are redrawn, so every character is uniform.
    let mut chars = String::with_capacity(PUBLIC_LEN + SECRET_LEN);
    let mut buf = [0u8; 64];
    while chars.len() < PUBLIC_LEN + SECRET_LEN {
        rng.fill(&mut buf)?;
        for b in buf.iter().filter(|b| **b < 248) {
            if chars.len() < PUBLIC_LEN + SECRET_LEN {
                chars.push(ALPHABET[(*b % 62) as usize] as char);
            }
        }
    }
    let (public, secret) = chars.split_at(PUBLIC_LEN);
    Ok(NewKey {
        secret: format!("{KEY_PREFIX}{public}_{secret}"),
        prefix: format!("{KEY_PREFIX}{public}"),
    })
}

/// The display prefix of a presented key (`tg_` + public part), if it has our shape.
pub fn display_prefix(api_key: &str) -> Option<&str> {
    let rest = api_key.strip_prefix(KEY_PREFIX)?;
    let (public, secret) = rest.split_once('_')?;
    let ok = public.len() == PUBLIC_LEN
        && secret.len() == SECRET_LEN
        && public
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_alphanumeric());
    ok.then(|| &api_key[..KEY_PREFIX.len() + PUBLIC_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let rng = SystemRandom::new();
        let k = generate(&rng).unwrap();
        assert_eq!(k.secret.len(), 3 + 8 + 1 + 32);
        assert_eq!(display_prefix(&k.secret), Some(k.prefix.as_str()));
        assert_ne!(generate(&rng).unwrap().secret, k.secret);
    }

    #[test]
    fn hash_is_hmac_sha256_under_the_pepper() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let h = KeyHasher::new(b"Jefe").hash("what do ya want for nothing?");
        assert_eq!(
            h.to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_ne!(
            KeyHasher::new(b"other").hash("what do ya want for nothing?"),
            h
        );
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert_eq!(display_prefix("tg_short_x"), None);
        assert_eq!(display_prefix("nope"), None);
        assert_eq!(KeyHash::from_hex("zz"), None);
    }
}
