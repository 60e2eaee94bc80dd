//! JSON Schema's `integer` includes `5.0` and `5e0`, which serde refuses for an integer
//! field. [`normalise`] rewrites every number written with a fraction or an exponent that
//! is exactly a whole number in `i64`/`u64` range as plain digits, deciding from the
//! number's text, never from a rounded `f64` (`9007199254740992.5` stays a fraction and is
//! refused, where its `f64` would look whole).

/// `body` with every exactly whole number in integer range written as an integer; other
/// bytes unchanged. `body` must already be known to be valid JSON.
pub fn normalise(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let end = string_end(body, i);
                out.extend_from_slice(&body[i..end]);
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let end = body[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(body.len(), |n| i + n);
                let token = &body[i..end];
                match whole(token) {
                    Some(digits) => out.extend_from_slice(digits.as_bytes()),
                    None => out.extend_from_slice(token),
                }
                i = end;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The index just past the string starting at `start` (its opening quote).
fn string_end(body: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    body.len()
}

/// Longest exponent considered: beyond it a number that is not zero is out of any
/// integer's range, or not whole.
const MAX_EXPONENT_DIGITS: usize = 4;

/// The integer a number token with a fraction or exponent denotes exactly, if it is
/// whole and fits `i64` (negative) or `u64`; `None` for plain integers (left as they are)
/// and for everything else.
fn whole(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    if !text.contains(['.', 'e', 'E']) {
        return None;
    }
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, "0"),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
        return Some("0".into());
    }
    let exponent_digits = exponent
        .trim_start_matches(['+', '-'])
        .trim_start_matches('0');
    if exponent_digits.len() > MAX_EXPONENT_DIGITS {
        return None;
    }
    let exponent: i64 = exponent.parse().ok()?;
    // value = digits × 10^shift
    let shift = exponent - frac.len() as i64;
    let integer = if shift >= 0 {
        let significant = digits.trim_start_matches('0');
        if significant.is_empty() {
            "0".to_string()
        } else if significant.len() as i64 + shift > 20 {
            return None;
        } else {
            format!("{significant}{}", "0".repeat(shift as usize))
        }
    } else {
        let dropped = usize::try_from(-shift).ok()?;
        let keep = digits.len().saturating_sub(dropped);
        // The dropped digits (and any implied zeros beyond the text) must all be zero.
        if digits[keep..].bytes().any(|b| b != b'0') {
            return None;
        }
        let kept = digits[..keep].trim_start_matches('0');
        if kept.is_empty() {
            "0".to_string()
        } else {
            kept.to_string()
        }
    };
    if negative && integer != "0" {
        let signed = format!("-{integer}");
        signed.parse::<i64>().ok().map(|_| signed)
    } else {
        integer.parse::<u64>().ok().map(|_| integer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(s: &str) -> String {
        String::from_utf8(normalise(s.as_bytes())).unwrap()
    }

    #[test]
    fn whole_numbers_in_any_form_become_integers() {
        assert_eq!(norm(r#"{"a": 5.0, "b": 7}"#), r#"{"a": 5, "b": 7}"#);
        assert_eq!(
            norm("[5e0, 5E+2, 1.50e1, 0.0, -0.0, -3.00, 1200e-2]"),
            "[5, 500, 15, 0, 0, -3, 12]"
        );
        assert_eq!(
            norm("[0e99999, 18446744073709551615.0]"),
            "[0, 18446744073709551615]"
        );
    }

    #[test]
    fn fractions_and_out_of_range_numbers_stay_as_written() {
        for s in [
            "9007199254740992.5",
            "9007199254740993.0000000001",
            "5.5",
            "1e-1",
            "18446744073709551616.0",
            "-9223372036854775809.0",
            "1e400",
            "1e99999",
        ] {
            assert_eq!(norm(s), s);
        }
        assert_eq!(norm("9007199254740993.0"), "9007199254740993");
    }

    #[test]
    fn strings_are_never_touched() {
        assert_eq!(
            norm(r#"{"5.0": "1.0e3 \"2.0\"", "n": 2.0}"#),
            r#"{"5.0": "1.0e3 \"2.0\"", "n": 2}"#
        );
    }

    proptest! {
        /// Whatever number serde_json writes, the normalised text parses to the value the
        /// original text parses to, and to an integer only when the number was whole.
        #[test]
        fn normalising_keeps_every_value(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let text = serde_json::to_string(&x).unwrap();
            let before: serde_json::Value = serde_json::from_str(&text).unwrap();
            let after: serde_json::Value = serde_json::from_slice(&normalise(text.as_bytes())).unwrap();
            prop_assert_eq!(after.as_f64(), before.as_f64());
            if after.is_i64() || after.is_u64() {
                prop_assert_eq!(x.fract(), 0.0);
            }
        }

        /// Any body: never a panic, and valid JSON stays valid.
        #[test]
        fn never_panics(body in ".{0,64}") {
            let out = normalise(body.as_bytes());
            if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            }
        }
    }
}
