//! Words every layer shares, from the configuration file to the database and the admin
//! API: whether a consumer or key may be used, the stored form of an API key, and the
//! headers the gateway owns on the way upstream.

use std::fmt;

/// Whether a consumer or key may be used.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Usable.
    Active,
    /// Refused.
    Disabled,
}

/// The HMAC-SHA-256 of a key under the pepper: what stores hold and caches are keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Lower-case hex, as written in the config file and the database.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    /// Short, so that a hash never floods a log; it is not a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

/// Request headers the gateway sets for the upstream itself, which upstreams trust it for:
/// the forwarding headers and the request id (`src/forward.rs`, `src/request_id.rs`). A
/// client's are replaced or removed under any spelling ([`same_header_name`]); header rules
/// (`src/features/headers.rs`) may not change them.
pub mod gateway_headers {
    /// `X-Forwarded-For`.
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
    /// `X-Forwarded-Proto`.
    pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
    /// `X-Forwarded-Host`.
    pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
    /// `X-Forwarded-Port`.
    pub const X_FORWARDED_PORT: &str = "x-forwarded-port";
    /// `X-Forwarded-Prefix`.
    pub const X_FORWARDED_PREFIX: &str = "x-forwarded-prefix";
    /// `X-Real-IP`.
    pub const X_REAL_IP: &str = "x-real-ip";
    /// `Forwarded` (RFC 7239), which the gateway removes.
    pub const FORWARDED: &str = "forwarded";
    /// `X-Request-Id`, in both directions.
    pub const REQUEST_ID: &str = "x-request-id";

    /// Every one of them, and `X-Request-Start`, which no client may send an upstream under
    /// another spelling either.
    pub const ALL: [&str; 9] = [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        X_FORWARDED_PORT,
        X_FORWARDED_PREFIX,
        X_REAL_IP,
        FORWARDED,
        REQUEST_ID,
        "x-request-start",
    ];
}

/// `true` when two lower-case header names are the same with `_` and `-` taken as one (CGI,
/// WSGI and PHP upstreams read them as one name).
pub fn same_header_name(a: &str, b: &str) -> bool {
    let norm = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_one_character_in_header_names() {
        assert!(same_header_name("x-consumer_id", "x-consumer-id"));
        assert!(same_header_name("x_consumer_id", "x-consumer-id"));
        assert!(!same_header_name("x-consumer-idx", "x-consumer-id"));
        assert!(!same_header_name("x-consumerid", "x-consumer-id"));
    }
}
