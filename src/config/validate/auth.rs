//! `auth:`: API keys, JWT issuers and their keys, trusted proxies, identity headers.

use super::*;

pub(super) fn auth(
    raw: RawAuth,
    base: &Path,
    plans: &HashSet<&str>,
    any_keys: bool,
    p: &mut Problems,
) -> AuthSettings {
    let header = |raw: Option<String>, default: &str, place: &str, p: &mut Problems| {
        let name = raw.unwrap_or_else(|| default.to_string());
        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap_or_else(|_| {
            p.push(place, format!("{name:?} is not a valid header name"));
            http::HeaderName::from_static("x-invalid")
        })
    };
    let api_key_header = header(
        raw.api_key.header,
        DEFAULT_API_KEY_HEADER,
        "auth.api_key.header",
        p,
    );
    let pepper_env = raw
        .api_key
        .pepper_env
        .unwrap_or_else(|| DEFAULT_PEPPER_ENV.to_string());
    let pepper = match std::env::var(&pepper_env) {
        Ok(v) if v.len() >= 16 => Some(Secret::new(v.into_bytes())),
        Ok(_) if any_keys => {
            p.push(
                "auth.api_key.pepper_env",
                format!("${pepper_env} must hold at least 16 bytes"),
            );
            None
        }
        Err(_) if any_keys => {
            p.push(
                "auth.api_key.pepper_env",
                format!("${pepper_env} is not set; API-key hashes cannot be checked without it"),
            );
            None
        }
        _ => None,
    };
    let cache = match raw.cache {
        None => CacheSettings {
            ttl: DEFAULT_CREDENTIAL_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_entries: DEFAULT_CACHE_ENTRIES,
            max_lookups: DEFAULT_MAX_LOOKUPS,
        },
        Some(c) => CacheSettings {
            ttl: duration(c.ttl, "auth.cache.ttl", DEFAULT_CREDENTIAL_TTL, p),
            negative_ttl: duration(
                c.negative_ttl,
                "auth.cache.negative_ttl",
                DEFAULT_NEGATIVE_TTL,
                p,
            ),
            max_entries: c.max_entries.unwrap_or(DEFAULT_CACHE_ENTRIES).max(1),
            max_lookups: match c.max_lookups {
                None => DEFAULT_MAX_LOOKUPS,
                Some(n @ 1..=1024) => n,
                Some(_) => {
                    p.push("auth.cache.max_lookups", "must be between 1 and 1024");
                    DEFAULT_MAX_LOOKUPS
                }
            },
        },
    };
    let key_failures = match raw.key_failures {
        None => KeyFailureSettings {
            max: DEFAULT_KEY_FAILURES,
            per: DEFAULT_KEY_FAILURE_WINDOW,
        },
        Some(f) => {
            if f.max == 0 {
                p.push("auth.key_failures.max", "must be at least 1");
            }
            let per = duration(
                Some(f.per),
                "auth.key_failures.per",
                DEFAULT_KEY_FAILURE_WINDOW,
                p,
            );
            if per < Duration::from_secs(1) || per > Duration::from_secs(86400) {
                p.push("auth.key_failures.per", "must be between 1s and 1d");
            }
            KeyFailureSettings { max: f.max, per }
        }
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, net)| {
            let parsed = net
                .parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            parsed
                .map_err(|_| {
                    p.push(
                        format!("auth.trusted_proxies[{i}]"),
                        format!("{net:?} is not an address or CIDR network"),
                    )
                })
                .ok()
        })
        .collect::<Vec<_>>();
    let client_ip_header = match raw.client_ip_header.as_deref() {
        Some("x-forwarded-for") => ClientIpHeader::XForwardedFor,
        Some("forwarded") => ClientIpHeader::Forwarded,
        Some(other) => {
            p.push(
                "auth.client_ip_header",
                format!("unknown header {other:?} (x-forwarded-for, forwarded)"),
            );
            ClientIpHeader::default()
        }
        None if !trusted_proxies.is_empty() => {
            p.push(
                "auth.client_ip_header",
                "trusted_proxies needs the header they set: x-forwarded-for or forwarded \
                 (only that one is believed, so a client cannot choose its address through \
                 the other)",
            );
            ClientIpHeader::default()
        }
        None => ClientIpHeader::default(),
    };
    let h = raw.identity_headers;
    let identity_headers = IdentityHeaders {
        consumer_id: header(
            h.consumer_id,
            "x-consumer-id",
            "auth.identity_headers.consumer_id",
            p,
        ),
        plan: header(h.plan, "x-consumer-plan", "auth.identity_headers.plan", p),
        auth_method: header(
            h.auth_method,
            "x-auth-method",
            "auth.identity_headers.auth_method",
            p,
        ),
        scopes: header(h.scopes, "x-auth-scopes", "auth.identity_headers.scopes", p),
    };
    let mut seen = HashSet::new();
    let issuers = raw
        .jwt
        .into_iter()
        .enumerate()
        .map(|(i, issuer)| {
            let place = format!("auth.jwt[{i}]");
            if !seen.insert(issuer.issuer.clone()) {
                p.push(
                    format!("{place}.issuer"),
                    format!("issuer {:?} is listed twice", issuer.issuer),
                );
            }
            issuer_spec(issuer, &place, base, plans, p)
        })
        .collect();
    AuthSettings {
        api_key_header,
        api_key_query: raw.api_key.query_param,
        pepper,
        cache,
        key_failures,
        trusted_proxies,
        client_ip_header,
        identity_headers,
        issuers,
    }
}

pub(super) fn issuer_spec(
    raw: RawIssuer,
    place: &str,
    base: &Path,
    plans: &HashSet<&str>,
    p: &mut Problems,
) -> IssuerSpec {
    use jsonwebtoken::{Algorithm, AlgorithmFamily};
    if raw.issuer.is_empty() {
        p.push(format!("{place}.issuer"), "must not be empty");
    }
    if raw.algorithms.is_empty() {
        p.push(
            format!("{place}.algorithms"),
            "list the accepted algorithms, e.g. [RS256]",
        );
    }
    let algorithms: Vec<Algorithm> = raw
        .algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            a.parse::<Algorithm>()
                .map_err(|_| {
                    p.push(
                        format!("{place}.algorithms[{i}]"),
                        format!("unknown algorithm {a:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
                    )
                })
                .ok()
        })
        .collect();
    let wants_hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let wants_public = algorithms
        .iter()
        .any(|a| a.family() != AlgorithmFamily::Hmac);
    let mut keys = Vec::new();
    if let Some(env) = &raw.secret_env {
        let encoding = secret_encoding(raw.secret_encoding.as_deref(), place, p);
        if let Some(secret) = hmac_secret(env, encoding, &format!("{place}.secret_env"), p) {
            keys.push(JwtKeySource::Secret(secret));
        }
        if !wants_hmac {
            p.push(
                format!("{place}.secret_env"),
                "a secret only verifies HS256/384/512, which algorithms does not list",
            );
        }
    } else {
        if wants_hmac {
            p.push(
                format!("{place}.secret_env"),
                "HS* algorithms need a secret (secret_env)",
            );
        }
        if raw.secret_encoding.is_some() {
            p.push(
                format!("{place}.secret_encoding"),
                "only applies to secret_env, which is not set",
            );
        }
    }
    for (i, pem) in raw.pem_files.iter().enumerate() {
        keys.push(JwtKeySource::PemFile {
            path: existing_file(base, &pem.path, &format!("{place}.pem_files[{i}].path"), p),
            kid: pem.kid.clone(),
        });
    }
    if let Some(f) = &raw.jwks_file {
        keys.push(JwtKeySource::JwksFile(existing_file(
            base,
            f,
            &format!("{place}.jwks_file"),
            p,
        )));
    }
    if let Some(url) = &raw.jwks_url {
        let scheme = url.parse::<http::Uri>().ok().and_then(|u| {
            u.host()?;
            u.scheme_str().map(str::to_ascii_lowercase)
        });
        match scheme.as_deref() {
            Some("https") => {}
            Some("http") if raw.allow_insecure_jwks => {}
            Some("http") => p.push(
                format!("{place}.jwks_url"),
                format!("{url:?} is plain http: key sets must be fetched over https (or set allow_insecure_jwks: true)"),
            ),
            _ => p.push(
                format!("{place}.jwks_url"),
                format!("{url:?} is not an https URL"),
            ),
        }
        keys.push(JwtKeySource::JwksUrl(JwksUrlSpec {
            url: url.clone(),
            refresh: duration(
                raw.jwks_refresh.clone(),
                &format!("{place}.jwks_refresh"),
                DEFAULT_JWKS_REFRESH,
                p,
            ),
            min_refresh: duration(
                raw.jwks_min_refresh.clone(),
                &format!("{place}.jwks_min_refresh"),
                DEFAULT_JWKS_MIN_REFRESH,
                p,
            ),
            allow_insecure: raw.allow_insecure_jwks,
        }));
    } else if raw.allow_insecure_jwks {
        p.push(
            format!("{place}.allow_insecure_jwks"),
            "only applies to jwks_url, which is not set",
        );
    }
    let has_public_source = raw.pem_files.len()
        + usize::from(raw.jwks_file.is_some())
        + usize::from(raw.jwks_url.is_some())
        > 0;
    if wants_public && !has_public_source {
        p.push(
            place,
            "RS/PS/ES/EdDSA algorithms need pem_files, jwks_file or jwks_url",
        );
    }
    if let Some(plan) = raw
        .default_plan
        .as_deref()
        .filter(|plan| !plans.contains(plan))
    {
        p.push(
            format!("{place}.default_plan"),
            format!("no plan named {plan:?}"),
        );
    }
    let leeway = duration(
        raw.leeway,
        &format!("{place}.leeway"),
        DEFAULT_JWT_LEEWAY,
        p,
    );
    if leeway > MAX_JWT_LEEWAY {
        p.push(
            format!("{place}.leeway"),
            format!(
                "must be at most {} (a longer leeway keeps expired tokens working)",
                humantime::format_duration(MAX_JWT_LEEWAY)
            ),
        );
    }
    if raw.typ.as_deref().is_some_and(|t| t.trim().is_empty()) {
        p.push(format!("{place}.typ"), "must not be empty");
    }
    let mut required_claims = raw.required_claims.unwrap_or_default();
    if !required_claims.iter().any(|c| c == "exp") {
        // A token without an expiry would be valid forever.
        required_claims.insert(0, "exp".into());
    }
    IssuerSpec {
        issuer: raw.issuer,
        audiences: audiences(raw.audiences, raw.audience, place, p),
        algorithms,
        leeway,
        required_claims,
        typ: raw.typ,
        consumer_must_exist: false,
        consumer_claim: raw.consumer_claim.unwrap_or_else(|| "sub".into()),
        plan_claim: raw.plan_claim,
        default_plan: raw.default_plan,
        keys,
    }
}

/// `audiences: [..]`, or `audience: any` written out: an issuer never accepts every
/// audience by omission.
pub(super) fn audiences(
    listed: Vec<String>,
    any: Option<String>,
    place: &str,
    p: &mut Problems,
) -> Audiences {
    match (any.as_deref(), listed.is_empty()) {
        (Some("any"), true) => Audiences::Any,
        (Some("any"), false) => {
            p.push(
                format!("{place}.audience"),
                "`audience: any` and a list of audiences exclude each other",
            );
            Audiences::OneOf(listed)
        }
        (Some(other), _) => {
            p.push(
                format!("{place}.audience"),
                format!("{other:?}: the only value is `any`; list accepted values under audiences"),
            );
            Audiences::OneOf(listed)
        }
        (None, true) => {
            p.push(
                format!("{place}.audiences"),
                "list the accepted audiences, or write `audience: any` to accept tokens for every audience",
            );
            Audiences::Any
        }
        (None, false) => {
            for (i, aud) in listed.iter().enumerate() {
                if aud.is_empty() {
                    p.push(format!("{place}.audiences[{i}]"), "must not be empty");
                }
            }
            Audiences::OneOf(listed)
        }
    }
}

/// How a `secret_env` value is turned into key bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum SecretEncoding {
    /// The variable's bytes as they are.
    Raw,
    /// Base64url (RFC 4648 §5), padding optional: binary keys such as JWK `k` values.
    Base64Url,
    /// Standard base64 (RFC 4648 §4), padding optional.
    Base64,
}

pub(super) fn secret_encoding(raw: Option<&str>, place: &str, p: &mut Problems) -> SecretEncoding {
    match raw {
        None | Some("raw") => SecretEncoding::Raw,
        Some("base64url") => SecretEncoding::Base64Url,
        Some("base64") => SecretEncoding::Base64,
        Some(other) => {
            p.push(
                format!("{place}.secret_encoding"),
                format!("unknown encoding {other:?} (raw, base64url, base64)"),
            );
            SecretEncoding::Raw
        }
    }
}

/// The HMAC key in the environment variable `env`, at least 32 bytes once decoded. Each
/// failure says what is wrong with the value (never the value itself).
pub(super) fn hmac_secret(
    env: &str,
    encoding: SecretEncoding,
    place: &str,
    p: &mut Problems,
) -> Option<Secret> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;
    use std::os::unix::ffi::OsStringExt;
    let Some(value) = std::env::var_os(env) else {
        p.push(place, format!("${env} is not set"));
        return None;
    };
    if value.is_empty() {
        p.push(place, format!("${env} is set but empty"));
        return None;
    }
    let lenient = GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let decoded = match encoding {
        SecretEncoding::Raw => Ok(value.into_vec()),
        SecretEncoding::Base64Url | SecretEncoding::Base64 => {
            let (name, alphabet) = if encoding == SecretEncoding::Base64Url {
                ("base64url", &base64::alphabet::URL_SAFE)
            } else {
                ("base64", &base64::alphabet::STANDARD)
            };
            let text = value.into_vec();
            GeneralPurpose::new(alphabet, lenient)
                .decode(text.trim_ascii())
                // The decoder's own message would quote a character of the secret.
                .map_err(|_| format!("${env} is not valid {name} (secret_encoding: {name})"))
        }
    };
    match decoded {
        Ok(bytes) if bytes.len() >= 32 => Some(Secret::new(bytes)),
        Ok(bytes) => {
            let decoded = if encoding == SecretEncoding::Raw {
                ""
            } else {
                " once decoded"
            };
            p.push(
                place,
                format!(
                    "${env} must hold at least 32 bytes{decoded} (it holds {})",
                    bytes.len()
                ),
            );
            None
        }
        Err(message) => {
            p.push(place, message);
            None
        }
    }
}
