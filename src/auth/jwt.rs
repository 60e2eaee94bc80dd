//! Bearer JWT verification. The issuer is looked up from the token's `iss`, and only the
//! algorithms configured for that issuer are accepted: the algorithm is never taken on the
//! token's word, so `alg: none`, an HMAC token signed with an RSA public key, or a token
//! from an unconfigured issuer all fail.
//!
//! Keys come from a secret (environment variable), PEM files, a JWKS file or a JWKS URL. A
//! URL's key set is fetched on first use, refreshed in the background once older than the
//! refresh interval, and fetched again (at most once per `jwks_min_refresh`) when a token
//! names an unknown `kid`; if a fetch fails the last good keys stay.

use crate::config::{IssuerSpec, JwtKeySource};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use moka::sync::Cache;
use moka::Expiry;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a token was refused. Messages name what is wrong, never the token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not accepted here")]
    UnknownIssuer,
    #[error("the token's algorithm is not accepted for its issuer")]
    AlgorithmNotAllowed,
    #[error("no key of the issuer verifies the token's signature")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted here")]
    BadAudience,
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(String),
    #[error("the token has been revoked (logged out)")]
    Revoked,
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIdentity {
    pub issuer: String,
    pub subject: String,
    pub plan: Option<String>,
    pub scopes: Vec<String>,
    pub token_id: Option<String>,
    /// The session (`sid`) the token belongs to, if it says.
    pub session_id: Option<String>,
    /// Seconds since the epoch at which the token expires, if it does.
    pub expires_at: Option<u64>,
    /// `expires_at` plus the issuer's leeway: when verification would start failing.
    pub valid_until: Option<u64>,
}

/// A verification key and the `kid` it is known by, if any.
struct NamedKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// Verifies tokens of every configured issuer.
pub struct JwtVerifier {
    issuers: HashMap<String, Arc<IssuerVerifier>>,
    /// Tokens already verified, until they expire (at most [`VERIFIED_TTL`]): a client
    /// presents the same token many times, and a signature check costs far more than a
    /// lookup. Expiry is still honoured to the second; revocation is checked separately.
    verified: Cache<String, Verified>,
}

/// A cached verification, valid while the issuer's key set is the one it was made under
/// (a key withdrawn from a JWKS invalidates what it verified).
#[derive(Clone)]
struct Verified {
    identity: Arc<TokenIdentity>,
    key_generation: u64,
}

/// Longest time a verified token is trusted without checking its signature again.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Bound on the verified-token cache.
const VERIFIED_ENTRIES: u64 = 100_000;

/// Cache entries live until the token expires (plus leeway), at most [`VERIFIED_TTL`].
struct UntilExpiry;

impl Expiry<String, Verified> for UntilExpiry {
    fn expire_after_create(
        &self,
        _token: &String,
        id: &Verified,
        _now: Instant,
    ) -> Option<Duration> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = id.identity.valid_until.map_or(VERIFIED_TTL, |until| {
            Duration::from_secs(until.saturating_sub(now))
        });
        Some(left.min(VERIFIED_TTL))
    }
}

/// One issuer: its rules and keys.
pub struct IssuerVerifier {
    spec: IssuerSpec,
    static_keys: Vec<NamedKey>,
    jwks: Option<Arc<JwksSource>>,
    validations: HashMap<Algorithm, Validation>,
}

/// Why an issuer's keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("jwt issuer {issuer:?}: {reason}")]
pub struct JwtSetupError {
    pub issuer: String,
    pub reason: String,
}

impl JwtVerifier {
    /// Builds verifiers for `specs`; issuers whose spec is unchanged from `previous` are
    /// reused, so their fetched key sets survive a reload.
    pub fn build(
        specs: &[IssuerSpec],
        previous: Option<&JwtVerifier>,
    ) -> Result<Self, JwtSetupError> {
        let mut issuers = HashMap::new();
        for spec in specs {
            let reused = previous
                .and_then(|p| p.issuers.get(&spec.issuer))
                .filter(|v| v.spec == *spec)
                .cloned();
            let verifier = match reused {
                Some(v) => v,
                None => Arc::new(IssuerVerifier::build(spec)?),
            };
            issuers.insert(spec.issuer.clone(), verifier);
        }
        Ok(JwtVerifier {
            issuers,
            verified: Cache::builder()
                .max_capacity(VERIFIED_ENTRIES)
                .expire_after(UntilExpiry)
                .build(),
        })
    }

    /// `true` when no issuer is configured (bearer tokens are then refused).
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies `token` and extracts the identity it carries.
    pub async fn verify(&self, token: &str) -> Result<Arc<TokenIdentity>, JwtError> {
        if let Some(known) = self.verified.get(token) {
            if let Some(issuer) = self.issuers.get(&known.identity.issuer) {
                // Cache hits must still notice a rotated key set.
                issuer.refresh_if_stale();
                if issuer.key_generation() == known.key_generation {
                    return Ok(known.identity);
                }
            }
        }
        let identity = Arc::new(self.verify_uncached(token).await?);
        let key_generation = self
            .issuers
            .get(&identity.issuer)
            .map_or(0, |i| i.key_generation());
        self.verified.insert(
            token.to_string(),
            Verified {
                identity: Arc::clone(&identity),
                key_generation,
            },
        );
        Ok(identity)
    }

    /// Verifies the signature and claims every time, bypassing the verified-token cache
    /// (what a token costs the first time it is seen).
    pub async fn verify_uncached(&self, token: &str) -> Result<TokenIdentity, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        #[derive(serde::Deserialize)]
        struct IssuerOnly {
            iss: Option<String>,
        }
        let peek: IssuerOnly = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| JwtError::Malformed)?;
        let issuer = peek
            .iss
            .and_then(|iss| self.issuers.get(&iss))
            .ok_or(JwtError::UnknownIssuer)?;
        issuer
            .verify(token, header.alg, header.kid.as_deref())
            .await
    }
}

impl IssuerVerifier {
    fn build(spec: &IssuerSpec) -> Result<Self, JwtSetupError> {
        let err = |reason: String| JwtSetupError {
            issuer: spec.issuer.clone(),
            reason,
        };
        let mut static_keys = Vec::new();
        let mut jwks = None;
        for source in &spec.keys {
            match source {
                JwtKeySource::Secret(secret) => static_keys.push(NamedKey {
                    kid: None,
                    family: AlgorithmFamily::Hmac,
                    key: DecodingKey::from_secret(secret.expose()),
                }),
                JwtKeySource::PemFile { path, kid } => {
                    let pem =
                        std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                    static_keys.push(
                        pem_key(&pem, spec)
                            .map_err(|e| err(format!("{}: {e}", path.display())))?
                            .named(kid.clone()),
                    );
                }
                JwtKeySource::JwksFile(path) => {
                    let text =
                        std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                    let set: JwkSet = serde_json::from_slice(&text)
                        .map_err(|e| err(format!("{}: {e}", path.display())))?;
                    static_keys.extend(keys_of(&set));
                }
                JwtKeySource::JwksUrl {
                    url,
                    refresh,
                    min_refresh,
                } => {
                    jwks = Some(Arc::new(JwksSource::new(
                        url.clone(),
                        *refresh,
                        *min_refresh,
                    )));
                }
            }
        }
        let validations = spec
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.set_issuer(&[spec.issuer.as_str()]);
                if spec.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&spec.audiences);
                }
                v.leeway = spec.leeway.as_secs();
                v.validate_nbf = true;
                v.set_required_spec_claims(&spec.required_claims);
                (*alg, v)
            })
            .collect();
        Ok(IssuerVerifier {
            spec: spec.clone(),
            static_keys,
            jwks,
            validations,
        })
    }

    async fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<TokenIdentity, JwtError> {
        let validation = self
            .validations
            .get(&alg)
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        let family = alg.family();
        let mut outcome = self.try_keys(&self.static_keys, token, family, kid, validation);
        if let (Err(JwtError::BadSignature), Some(jwks)) = (&outcome, &self.jwks) {
            let keys = jwks.current(kid).await;
            outcome = self.try_keys(&keys, token, family, kid, validation);
        }
        let claims = outcome?;
        self.identity(claims)
    }

    /// Changes whenever a fetched key set differs from the previous one (0: static keys).
    fn key_generation(&self) -> u64 {
        self.jwks
            .as_ref()
            .map_or(0, |j| j.generation.load(Ordering::Acquire))
    }

    /// Starts a background fetch when the JWKS is older than its refresh interval.
    fn refresh_if_stale(&self) {
        if let Some(jwks) = &self.jwks {
            if jwks.since_last_attempt().is_some_and(|s| s >= jwks.refresh) {
                jwks.fetch_in_background();
            }
        }
    }

    /// The first key that verifies wins. A `kid` in the token narrows the candidates.
    fn try_keys(
        &self,
        keys: &[NamedKey],
        token: &str,
        family: AlgorithmFamily,
        kid: Option<&str>,
        validation: &Validation,
    ) -> Result<Map<String, Value>, JwtError> {
        use jsonwebtoken::errors::ErrorKind;
        let candidates = keys
            .iter()
            .filter(|k| k.family == family)
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid);
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEcdsaKey => continue,
                    ErrorKind::ExpiredSignature => return Err(JwtError::Expired),
                    ErrorKind::ImmatureSignature => return Err(JwtError::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(JwtError::BadAudience),
                    ErrorKind::InvalidIssuer => return Err(JwtError::UnknownIssuer),
                    ErrorKind::InvalidAlgorithm => return Err(JwtError::AlgorithmNotAllowed),
                    ErrorKind::MissingRequiredClaim(c) => {
                        return Err(JwtError::MissingClaim(c.clone()))
                    }
                    _ => return Err(JwtError::Malformed),
                },
            }
        }
        Err(JwtError::BadSignature)
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<TokenIdentity, JwtError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let subject = text(&self.spec.consumer_claim)
            .ok_or_else(|| JwtError::MissingClaim(self.spec.consumer_claim.clone()))?;
        let plan = self
            .spec
            .plan_claim
            .as_deref()
            .and_then(text)
            .or_else(|| self.spec.default_plan.clone());
        let scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_string).collect(),
            (_, Some(Value::Array(a))) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            (_, Some(Value::String(s))) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(TokenIdentity {
            issuer: self.spec.issuer.clone(),
            subject,
            plan,
            scopes,
            token_id: text("jti"),
            session_id: text("sid"),
            expires_at: claims.get("exp").and_then(Value::as_u64),
            valid_until: claims
                .get("exp")
                .and_then(Value::as_u64)
                .map(|exp| exp.saturating_add(self.spec.leeway.as_secs())),
        })
    }
}

/// A PEM public key of the kind the issuer's algorithms need.
fn pem_key(pem: &[u8], spec: &IssuerSpec) -> Result<Unnamed, String> {
    let families: Vec<AlgorithmFamily> = spec.algorithms.iter().map(|a| a.family()).collect();
    let try_family = |family: AlgorithmFamily| -> Option<DecodingKey> {
        match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem).ok(),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem).ok(),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem).ok(),
            AlgorithmFamily::Hmac => None,
        }
    };
    families
        .into_iter()
        .find_map(|family| try_family(family).map(|key| Unnamed { family, key }))
        .ok_or_else(|| "not a PEM public key for the issuer's algorithms".to_string())
}

struct Unnamed {
    family: AlgorithmFamily,
    key: DecodingKey,
}

impl Unnamed {
    fn named(self, kid: Option<String>) -> NamedKey {
        NamedKey {
            kid,
            family: self.family,
            key: self.key,
        }
    }
}

/// The usable keys of a JWKS (keys of unsupported types are skipped).
fn keys_of(set: &JwkSet) -> Vec<NamedKey> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(NamedKey {
                kid: jwk.common.key_id.clone(),
                family: key.family(),
                key,
            })
        })
        .collect()
}

/// A key set fetched from a URL.
struct JwksSource {
    url: String,
    refresh: Duration,
    min_refresh: Duration,
    client: reqwest::Client,
    keys: ArcSwap<Vec<NamedKey>>,
    /// Milliseconds after `created` at which the last fetch was tried; 0: never.
    last_attempt_ms: AtomicU64,
    created: Instant,
    /// One fetch at a time; waiters reuse its result.
    fetching: tokio::sync::Mutex<()>,
    /// Increases each time a fetch brings a key set different from the last one.
    generation: AtomicU64,
    /// Hash of the last fetched JWKS document.
    last_document: AtomicU64,
}

/// Longest wait for a key-set fetch on the request path.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

impl JwksSource {
    fn new(url: String, refresh: Duration, min_refresh: Duration) -> Self {
        JwksSource {
            url,
            refresh,
            min_refresh,
            client: reqwest::Client::builder()
                .timeout(JWKS_FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            keys: ArcSwap::from_pointee(Vec::new()),
            last_attempt_ms: AtomicU64::new(0),
            created: Instant::now(),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_document: AtomicU64::new(0),
        }
    }

    /// The keys to try for a token with `kid`: fetches now if the set is empty or lacks the
    /// `kid` (rate-limited), and refreshes in the background when the set is old.
    async fn current(self: &Arc<Self>, kid: Option<&str>) -> Arc<Vec<NamedKey>> {
        let keys = self.keys.load_full();
        let missing = keys.is_empty()
            || kid.is_some_and(|k| !keys.iter().any(|n| n.kid.as_deref() == Some(k)));
        let since = self.since_last_attempt();
        if missing && since.is_none_or(|s| s >= self.min_refresh) {
            self.fetch().await;
            return self.keys.load_full();
        }
        if since.is_some_and(|s| s >= self.refresh) {
            // Stale: serve what we have; a fetch runs alongside for the next requests.
            self.fetch_in_background();
        }
        keys
    }

    fn since_last_attempt(&self) -> Option<Duration> {
        match self.last_attempt_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.created
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// Records an attempt now; returns its stamp.
    fn mark_attempt(&self) -> u64 {
        let ms = (self.created.elapsed().as_millis() as u64).max(1);
        self.last_attempt_ms.store(ms, Ordering::Release);
        ms
    }

    fn fetch_in_background(self: &Arc<Self>) {
        // Marked before spawning, so concurrent requests do not each start a fetch.
        self.mark_attempt();
        let this = Arc::clone(self);
        tokio::spawn(async move { this.fetch_now().await });
    }

    /// Fetches unless another fetch completed while this one waited for its turn.
    async fn fetch(&self) {
        let waiting_since = (self.created.elapsed().as_millis() as u64).max(1);
        let _one = self.fetching.lock().await;
        if self.last_attempt_ms.load(Ordering::Acquire) >= waiting_since {
            return;
        }
        self.mark_attempt();
        self.fetch_now().await;
    }

    async fn fetch_now(&self) {
        match fetch_jwks(&self.client, &self.url).await {
            Ok((keys, document_hash)) => {
                if self.last_document.swap(document_hash, Ordering::AcqRel) != document_hash {
                    log::info!("jwks {}: {} keys", self.url, keys.len());
                    self.keys.store(Arc::new(keys));
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(e) => log::warn!(
                "jwks {}: fetch failed, keeping the last good keys: {e}",
                self.url
            ),
        }
    }
}

/// The usable keys of the JWKS at `url`, and a hash of the document (to notice changes).
async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<(Vec<NamedKey>, u64), String> {
    use std::hash::{Hash, Hasher};
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    Ok((keys_of(&set), hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    /// RFC 7515 appendix A.1: an HS256 JWS by `joe`, expired since 2011.
    const RFC7515_A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC7515_A1_KEY_HEX: &str = "0323354b2b0fa5bc837e0665777ba68f5ab328e6f054c928a90f84b2d2502ebfd3fb5a92d20647ef968ab4c377623d223d2e2172052e4f08c0cd9af567d080a3";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn joe(leeway: Duration, algorithms: Vec<Algorithm>) -> JwtVerifier {
        let spec = IssuerSpec {
            issuer: "joe".into(),
            audiences: vec![],
            algorithms,
            leeway,
            required_claims: vec!["exp".into()],
            consumer_claim: "iss".into(),
            plan_claim: None,
            default_plan: Some("free".into()),
            keys: vec![JwtKeySource::Secret(Secret::new(hex(RFC7515_A1_KEY_HEX)))],
        };
        JwtVerifier::build(&[spec], None).unwrap()
    }

    #[tokio::test]
    async fn rfc7515_hs256_vector_verifies() {
        // Leeway spans the years since the vector's expiry.
        let v = joe(
            Duration::from_secs(40 * 365 * 24 * 3600),
            vec![Algorithm::HS256],
        );
        let id = v.verify(RFC7515_A1_TOKEN).await.unwrap();
        assert_eq!(id.subject, "joe");
        assert_eq!(id.plan.as_deref(), Some("free"));
        assert_eq!(id.expires_at, Some(1_300_819_380));
    }

    #[tokio::test]
    async fn a_cached_token_still_expires_on_time() {
        let v = joe(Duration::ZERO, vec![Algorithm::HS256]);
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"iss": "joe", "exp": now + 1});
        let key = jsonwebtoken::EncodingKey::from_secret(&hex(RFC7515_A1_KEY_HEX));
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
                .unwrap();
        assert!(v.verify(&token).await.is_ok());
        assert!(v.verify(&token).await.is_ok(), "second time from the cache");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(v.verify(&token).await, Err(JwtError::Expired));
    }

    #[tokio::test]
    async fn expiry_pinning_and_tampering_are_refused() {
        let v = joe(Duration::from_secs(30), vec![Algorithm::HS256]);
        assert_eq!(v.verify(RFC7515_A1_TOKEN).await, Err(JwtError::Expired));

        let pinned = joe(
            Duration::from_secs(40 * 365 * 24 * 3600),
            vec![Algorithm::HS512],
        );
        assert_eq!(
            pinned.verify(RFC7515_A1_TOKEN).await,
            Err(JwtError::AlgorithmNotAllowed)
        );

        let v = joe(
            Duration::from_secs(40 * 365 * 24 * 3600),
            vec![Algorithm::HS256],
        );
        let mut tampered = RFC7515_A1_TOKEN.to_string();
        tampered.pop();
        tampered.push('Y');
        assert_eq!(v.verify(&tampered).await, Err(JwtError::BadSignature));

        // alg "none": {"alg":"none"} . {"iss":"joe"} . (empty)
        let none = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UifQ.";
        assert_eq!(v.verify(none).await, Err(JwtError::Malformed));
        assert_eq!(v.verify("not a token").await, Err(JwtError::Malformed));
        // {"alg":"HS256"} . {"iss":"mallory"}
        let stranger = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJtYWxsb3J5In0.c2ln";
        assert_eq!(v.verify(stranger).await, Err(JwtError::UnknownIssuer));
    }
}
