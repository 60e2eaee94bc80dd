//! Request ids: keep a well-formed incoming `X-Request-Id`, otherwise make one that is unique
//! across instances (a random per-process prefix and a counter).

use http::HeaderValue;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// The header that carries the id, in both directions.
pub const HEADER: &str = crate::vocab::gateway_headers::REQUEST_ID;

/// Longest incoming id we keep.
const MAX_LEN: usize = 128;

static PROCESS_PREFIX: LazyLock<u64> = LazyLock::new(|| {
    // RandomState is seeded from the OS; mixing in the pid and time separates restarts.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The id for a request with these headers: the client's (or the gateway's, in front of
/// the admin service) if well formed, else a fresh one.
pub fn assign(headers: &http::HeaderMap) -> HeaderValue {
    match headers.get(HEADER) {
        Some(v) if is_well_formed(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// 32 lower-case hex digits: the process prefix, then the counter.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut text = [0u8; 32];
    for (i, word) in [*PROCESS_PREFIX, n].into_iter().enumerate() {
        for (j, digit) in text[i * 16..(i + 1) * 16].iter_mut().enumerate() {
            *digit = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

/// 1 to 128 characters from a set that is safe in headers, logs and JSON without escaping.
pub fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=~".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_good_ids_and_replaces_bad_ones() {
        let mut headers = http::HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("abc-123_X.y"));
        assert_eq!(assign(&headers), "abc-123_X.y");
        headers.insert(HEADER, HeaderValue::from_static("has space"));
        assert_eq!(assign(&headers).len(), 32);
        headers.insert(HEADER, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        assert_eq!(assign(&headers).len(), 32);
    }

    #[test]
    fn generated_ids_are_unique() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(is_well_formed(a.as_bytes()));
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(
            a[..16],
            format!("{:016x}", *PROCESS_PREFIX),
            "the process prefix"
        );
        let counter = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(counter(b) > counter(a), "then the counter: {a} {b}");
    }
}
