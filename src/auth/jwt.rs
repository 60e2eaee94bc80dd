//! Bearer JWT verification. The issuer is looked up from the token's `iss`, and only the
//! algorithms configured for that issuer are accepted: the algorithm is never taken on the
//! token's word, so `alg: none`, an HMAC token signed with an RSA public key, or a token
//! from an unconfigured issuer all fail.
//!
//! Beyond the signature, a token must carry `exp`, an accepted `aud` when the issuer lists
//! audiences, the configured `typ` if any, and no `crit` header (no extension is understood).
//!
//! Keys come from a secret (environment variable), PEM files, a JWKS file or a JWKS URL; the
//! files are read again whenever the verifier is rebuilt (every reload). A URL's key set is
//! fetched on first use, refreshed in the background once older than the refresh interval,
//! and fetched again (at most once per `jwks_min_refresh`) when a token names an unknown
//! `kid`. A fetch that fails (including an answer over [`JWKS_MAX_BYTES`], a redirect to
//! another origin, or a set with no key usable for the issuer's algorithms) keeps the last
//! good keys, and a fetch that started before the one whose keys are in use is discarded.

use crate::config::{Audiences, IssuerSpec, JwksUrlSpec, JwtKeySource, JWKS_MAX_BYTES};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use moka::sync::Cache;
use moka::Expiry;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    #[error("the token names critical header extensions (crit), which are not supported")]
    CriticalHeader,
    #[error("the token's type (typ header) is not accepted here")]
    BadType,
    #[error("the token's consumer is not known here")]
    UnknownConsumer,
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
            let previous_jwks = previous
                .and_then(|p| p.issuers.get(&spec.issuer))
                .and_then(|v| v.jwks.as_ref());
            let verifier = IssuerVerifier::build(spec, previous_jwks)?;
            issuers.insert(spec.issuer.clone(), Arc::new(verifier));
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

    /// `true` when tokens of `issuer` are refused unless the store knows their consumer.
    pub fn requires_known_consumer(&self, issuer: &str) -> bool {
        self.issuers
            .get(issuer)
            .is_some_and(|v| v.spec.consumer_must_exist)
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
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions the recipient does not understand make it invalid.
            return Err(JwtError::CriticalHeader);
        }
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
        issuer.verify(token, &header).await
    }
}

impl IssuerVerifier {
    /// Reads the issuer's key files now; a URL's fetched key set is taken over from
    /// `previous_jwks` when it is the same URL fetched the same way.
    fn build(
        spec: &IssuerSpec,
        previous_jwks: Option<&Arc<JwksSource>>,
    ) -> Result<Self, JwtSetupError> {
        let err = |reason: String| JwtSetupError {
            issuer: spec.issuer.clone(),
            reason,
        };
        let families = families_of(spec);
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
                        pem_key(&pem, &families)
                            .map_err(|e| err(format!("{}: {e}", path.display())))?
                            .named(kid.clone()),
                    );
                }
                JwtKeySource::JwksFile(path) => {
                    let text =
                        std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                    let set: JwkSet = serde_json::from_slice(&text)
                        .map_err(|e| err(format!("{}: {e}", path.display())))?;
                    let keys = keys_of(&set, &families);
                    if keys.is_empty() {
                        return Err(err(format!(
                            "{}: no key usable for the issuer's algorithms",
                            path.display()
                        )));
                    }
                    static_keys.extend(keys);
                }
                JwtKeySource::JwksUrl(url) => {
                    let reused = previous_jwks
                        .filter(|j| j.spec == *url && j.families == families)
                        .cloned();
                    jwks = Some(match reused {
                        Some(j) => j,
                        None => Arc::new(
                            JwksSource::new(url.clone(), families.clone())
                                .map_err(|e| err(format!("jwks client for {}: {e}", url.url)))?,
                        ),
                    });
                }
            }
        }
        let validations = spec
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.set_issuer(&[spec.issuer.as_str()]);
                let mut required = spec.required_claims.clone();
                // A token without an expiry would be valid forever.
                required.push("exp".into());
                match &spec.audiences {
                    Audiences::Any => v.validate_aud = false,
                    Audiences::OneOf(audiences) => {
                        v.set_audience(audiences);
                        // The library checks `aud` only when present: absent is refused too.
                        required.push("aud".into());
                    }
                }
                v.leeway = spec.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&required);
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
        header: &jsonwebtoken::Header,
    ) -> Result<TokenIdentity, JwtError> {
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        if let Some(expected) = &self.spec.typ {
            if !header
                .typ
                .as_deref()
                .is_some_and(|typ| same_media_type(expected, typ))
            {
                return Err(JwtError::BadType);
            }
        }
        let kid = header.kid.as_deref();
        let family = header.alg.family();
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
            if jwks
                .since_last_attempt()
                .is_some_and(|s| s >= jwks.spec.refresh)
            {
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

/// RFC 7515 §4.1.9: `typ` is a media type, compared case-insensitively, and its
/// `application/` prefix may be left out.
fn same_media_type(expected: &str, got: &str) -> bool {
    fn short(t: &str) -> &str {
        match (t.get(..12), t.get(12..)) {
            (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("application/") => rest,
            _ => t,
        }
    }
    short(expected.trim()).eq_ignore_ascii_case(short(got.trim()))
}

/// The key families the issuer's algorithms use.
fn families_of(spec: &IssuerSpec) -> Vec<AlgorithmFamily> {
    let mut families: Vec<AlgorithmFamily> = Vec::new();
    for family in spec.algorithms.iter().map(|a| a.family()) {
        if !families.contains(&family) {
            families.push(family);
        }
    }
    families
}

/// A PEM public key of one of `families` (those of the issuer's algorithms).
fn pem_key(pem: &[u8], families: &[AlgorithmFamily]) -> Result<Unnamed, String> {
    let try_family = |family: AlgorithmFamily| -> Option<DecodingKey> {
        match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem).ok(),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem).ok(),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem).ok(),
            AlgorithmFamily::Hmac => None,
        }
    };
    families
        .iter()
        .find_map(|&family| try_family(family).map(|key| Unnamed { family, key }))
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

/// The keys of a JWKS usable for `families` (keys of other or unsupported types are skipped).
fn keys_of(set: &JwkSet, families: &[AlgorithmFamily]) -> Vec<NamedKey> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            families.contains(&key.family()).then(|| NamedKey {
                kid: jwk.common.key_id.clone(),
                family: key.family(),
                key,
            })
        })
        .collect()
}

/// A key set fetched from a URL.
struct JwksSource {
    spec: JwksUrlSpec,
    /// Only keys of these families are kept (those of the issuer's algorithms).
    families: Vec<AlgorithmFamily>,
    client: reqwest::Client,
    keys: ArcSwap<Vec<NamedKey>>,
    /// Milliseconds after `created` at which the last fetch was tried; 0: never.
    last_attempt_ms: AtomicU64,
    created: Instant,
    /// One foreground fetch at a time; waiters reuse its result.
    fetching: tokio::sync::Mutex<()>,
    /// Increases each time a fetch brings a key set different from the last one.
    generation: AtomicU64,
    /// Numbers fetches (background and foreground) in the order they start.
    started: AtomicU64,
    /// Which fetch the keys in use came from; held only to compare and store, never
    /// across an await.
    applied: Mutex<Applied>,
}

/// The fetch whose key set is in use.
#[derive(Default)]
struct Applied {
    /// Its number in [`JwksSource::started`] order; 0: none yet.
    fetch: u64,
    /// Hash of its JWKS document.
    document: u64,
}

/// Longest wait for a key-set fetch on the request path.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Redirects followed per fetch (each within the URL's origin).
const JWKS_MAX_REDIRECTS: usize = 3;

/// Why a JWKS fetch failed (the last good keys stay).
#[derive(Debug, thiserror::Error)]
enum JwksFetchError {
    /// reqwest's message leaves out its causes (e.g. why a redirect was refused): say them.
    #[error("{}", with_causes(.0))]
    Request(#[from] reqwest::Error),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("the answer is larger than {JWKS_MAX_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("none of its {0} keys is usable for the issuer's algorithms")]
    NoUsableKey(usize),
}

/// `error: cause: cause...`, each cause said once.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    text
}

/// The client that fetches a key set: bounded in time, https only unless the file allows
/// http, following redirects only within the URL's origin (scheme, host and port).
fn jwks_client(spec: &JwksUrlSpec) -> Result<reqwest::Client, reqwest::Error> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > JWKS_MAX_REDIRECTS {
            attempt.error(format!("more than {JWKS_MAX_REDIRECTS} redirects"))
        } else if !same_origin {
            let refused = format!(
                "redirect to {} refused: not the same origin as the jwks_url",
                attempt.url()
            );
            attempt.error(refused)
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(JWKS_FETCH_TIMEOUT)
        .https_only(!spec.allow_insecure)
        .redirect(redirects)
        .build()
}

impl JwksSource {
    fn new(spec: JwksUrlSpec, families: Vec<AlgorithmFamily>) -> Result<Self, reqwest::Error> {
        Ok(JwksSource {
            client: jwks_client(&spec)?,
            spec,
            families,
            keys: ArcSwap::from_pointee(Vec::new()),
            last_attempt_ms: AtomicU64::new(0),
            created: Instant::now(),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            started: AtomicU64::new(0),
            applied: Mutex::new(Applied::default()),
        })
    }

    /// The keys to try for a token with `kid`: fetches now if the set is empty or lacks the
    /// `kid` (rate-limited), and refreshes in the background when the set is old.
    async fn current(self: &Arc<Self>, kid: Option<&str>) -> Arc<Vec<NamedKey>> {
        let keys = self.keys.load_full();
        let missing = keys.is_empty()
            || kid.is_some_and(|k| !keys.iter().any(|n| n.kid.as_deref() == Some(k)));
        let since = self.since_last_attempt();
        if missing && since.is_none_or(|s| s >= self.spec.min_refresh) {
            self.fetch().await;
            return self.keys.load_full();
        }
        if since.is_some_and(|s| s >= self.spec.refresh) {
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
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        match fetch_jwks(&self.client, &self.spec.url, &self.families).await {
            Ok((keys, document)) => self.apply(number, keys, document),
            Err(e) => log::warn!(
                "jwks {}: fetch failed, keeping the last good keys: {e}",
                self.spec.url
            ),
        }
    }

    /// Puts the key set of fetch `number` in use, unless a fetch that started later has
    /// already put its own in place (a slow older answer never replaces a newer one).
    fn apply(&self, number: u64, keys: Vec<NamedKey>, document: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        if number < applied.fetch {
            log::info!(
                "jwks {}: discarded the answer of an older fetch (a newer key set is in use)",
                self.spec.url
            );
            return;
        }
        applied.fetch = number;
        if applied.document != document {
            applied.document = document;
            log::info!("jwks {}: {} keys", self.spec.url, keys.len());
            self.keys.store(Arc::new(keys));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The keys of the JWKS at `url` usable for `families`, and a hash of the document (to
/// notice changes). The body is read up to [`JWKS_MAX_BYTES`].
async fn fetch_jwks(
    client: &reqwest::Client,
    url: &str,
    families: &[AlgorithmFamily],
) -> Result<(Vec<NamedKey>, u64), JwksFetchError> {
    use std::hash::{Hash, Hasher};
    let mut resp = client.get(url).send().await?;
    if !resp.status().is_success() {
        return Err(JwksFetchError::Status(resp.status()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
    {
        return Err(JwksFetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > JWKS_MAX_BYTES {
            return Err(JwksFetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let set: JwkSet = serde_json::from_slice(&body)?;
    let keys = keys_of(&set, families);
    if keys.is_empty() {
        return Err(JwksFetchError::NoUsableKey(set.keys.len()));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    Ok((keys, hasher.finish()))
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
            audiences: Audiences::Any,
            algorithms,
            leeway,
            required_claims: vec!["exp".into()],
            typ: None,
            consumer_must_exist: false,
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

    #[test]
    fn typ_is_a_media_type_compared_without_case_or_application_prefix() {
        assert!(same_media_type("at+jwt", "AT+JWT"));
        assert!(same_media_type("at+jwt", "application/at+jwt"));
        assert!(same_media_type("application/at+jwt", "at+jwt"));
        assert!(!same_media_type("at+jwt", "jwt"));
        assert!(!same_media_type("at+jwt", "application/"));
        assert!(!same_media_type("at+jwt", "é"));
    }

    fn fetched(kid: &str) -> Vec<NamedKey> {
        vec![NamedKey {
            kid: Some(kid.into()),
            family: AlgorithmFamily::Hmac,
            key: DecodingKey::from_secret(b"k"),
        }]
    }

    fn kids(source: &JwksSource) -> Vec<Option<String>> {
        source.keys.load().iter().map(|k| k.kid.clone()).collect()
    }

    #[test]
    fn an_older_fetch_never_replaces_the_key_set_of_a_newer_one() {
        let spec = JwksUrlSpec {
            url: "https://keys.test/jwks".into(),
            refresh: Duration::from_secs(60),
            min_refresh: Duration::ZERO,
            allow_insecure: false,
        };
        let source = JwksSource::new(spec, vec![AlgorithmFamily::Hmac]).unwrap();
        source.apply(2, fetched("new"), 2);
        assert_eq!(kids(&source), [Some("new".to_string())]);
        let generation = source.generation.load(Ordering::Acquire);
        source.apply(1, fetched("old"), 1);
        assert_eq!(kids(&source), [Some("new".to_string())]);
        assert_eq!(source.generation.load(Ordering::Acquire), generation);
        source.apply(3, fetched("newer"), 3);
        assert_eq!(kids(&source), [Some("newer".to_string())]);
    }
}
