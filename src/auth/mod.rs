//! Who is calling: the identify and verify phases of the request pipeline.
//!
//! Order: an API key (configured header, or query parameter if enabled), else an
//! `Authorization: Bearer` JWT, else anonymous by client IP. A credential that is present
//! but invalid is refused, never downgraded to anonymous.

pub mod api_key;
pub mod client_ip;
pub mod jwt;
pub mod revocation;
pub mod store;

use crate::config::{AuthMode, AuthSettings, ConsumerSpec, RouteAuth};
use api_key::{KeyHash, KeyHasher};
use client_ip::ClientNetwork;
use client_ip::TrustedProxies;
use jwt::{JwtError, JwtVerifier, TokenIdentity};
use pingora::http::RequestHeader;
use revocation::RevokedTokens;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;
use store::{
    CachedStore, Consumer, CredentialStore, KeyFailures, KeyRecord, LookupError, Status, YamlStore,
};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Anonymous,
}

impl AuthMethod {
    /// As sent upstream and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// The verified caller.
#[derive(Debug, Clone)]
pub enum Caller {
    Key(Arc<KeyRecord>),
    Token(Arc<TokenIdentity>),
    Anonymous,
}

/// Who is calling, for the limiter, the upstream and the logs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub caller: Caller,
    pub client_ip: IpAddr,
}

impl Identity {
    /// How the caller authenticated.
    pub fn method(&self) -> AuthMethod {
        match self.caller {
            Caller::Key(_) => AuthMethod::ApiKey,
            Caller::Token(_) => AuthMethod::Jwt,
            Caller::Anonymous => AuthMethod::Anonymous,
        }
    }

    /// The consumer id; `None` for anonymous callers.
    pub fn consumer_id(&self) -> Option<&str> {
        match &self.caller {
            Caller::Key(k) => Some(&k.consumer.id),
            Caller::Token(t) => Some(&t.subject),
            Caller::Anonymous => None,
        }
    }

    /// The plan named for this caller, if any.
    pub fn plan(&self) -> Option<&str> {
        match &self.caller {
            Caller::Key(k) => k.consumer.plan.as_deref(),
            Caller::Token(t) => t.plan.as_deref(),
            Caller::Anonymous => None,
        }
    }

    /// Scopes granted to this caller.
    pub fn scopes(&self) -> &[String] {
        match &self.caller {
            Caller::Key(k) => &k.scopes,
            Caller::Token(t) => &t.scopes,
            Caller::Anonymous => &[],
        }
    }

    /// The API key's id, when a key was used.
    pub fn key_id(&self) -> Option<&str> {
        match &self.caller {
            Caller::Key(k) => Some(&k.key_id),
            _ => None,
        }
    }
}

/// Why a caller was refused. Each maps to a status and a machine-readable code.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    MissingCredentials,
    InvalidApiKey,
    InvalidToken(JwtError),
    MethodNotAllowed(AuthMethod),
    ConsumerDisabled,
    KeyDisabled,
    KeyExpired,
    InsufficientScope(Vec<String>),
    StoreUnavailable,
    /// The caller's network presented too many unknown API keys; seconds until it may
    /// try again.
    TooManyKeyFailures(u64),
}

/// The credential a request presents.
#[derive(Debug, PartialEq)]
pub enum Credential<'a> {
    ApiKey(&'a str),
    Bearer(&'a str),
    None,
}

/// Everything the identify and verify phases need, built once per config snapshot.
pub struct Authenticator {
    settings: AuthSettings,
    hasher: Option<KeyHasher>,
    store: CachedStore,
    jwt: JwtVerifier,
    /// Token ids revoked by a logout; shared by every config generation.
    revoked: Arc<RevokedTokens>,
    trusted: TrustedProxies,
    /// Leading bits of an IPv6 address that count as one client (`rate_limit.ipv6_prefix`).
    ipv6_prefix: u8,
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Jwt(#[from] jwt::JwtSetupError),
}

impl Authenticator {
    /// Builds from the file's settings and consumers; issuers unchanged from `previous` keep
    /// their fetched keys, and unknown-key budgets their counts. IPv6 callers are counted
    /// by their `ipv6_prefix` network.
    pub fn from_config(
        settings: &AuthSettings,
        consumers: &[ConsumerSpec],
        previous: Option<&Authenticator>,
        external_store: Option<Arc<dyn CredentialStore>>,
        ipv6_prefix: u8,
    ) -> Result<Self, AuthSetupError> {
        let store = external_store.unwrap_or_else(|| Arc::new(yaml_store(consumers)));
        let failures = previous
            .map(|p| p.store.failures())
            .filter(|f| *f.settings() == settings.key_failures)
            .map_or_else(
                || {
                    Arc::new(KeyFailures::new(
                        &settings.key_failures,
                        settings.cache.max_entries,
                    ))
                },
                Arc::clone,
            );
        Ok(Authenticator {
            hasher: settings.pepper.as_ref().map(|p| KeyHasher::new(p.expose())),
            store: CachedStore::new(store, &settings.cache, failures),
            ipv6_prefix,
            jwt: JwtVerifier::build(&settings.issuers, previous.map(|p| &p.jwt))?,
            revoked: previous.map_or_else(Default::default, |p| Arc::clone(&p.revoked)),
            trusted: TrustedProxies::new(
                settings.trusted_proxies.clone(),
                settings.client_ip_header,
            ),
            settings: settings.clone(),
        })
    }

    /// The credential cache (to evict what changed in the store).
    pub fn store(&self) -> &CachedStore {
        &self.store
    }

    /// The JWT verifier (for benchmarks of the uncached path).
    pub fn jwt(&self) -> &JwtVerifier {
        &self.jwt
    }

    /// The revoked token ids this checks (the same set across reloads).
    pub fn revoked_tokens(&self) -> &Arc<RevokedTokens> {
        &self.revoked
    }

    /// The settings this was built from.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The client's address, believing forwarding headers only from trusted proxies.
    pub fn client_ip(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        self.trusted.client_ip(peer, &req.headers)
    }

    /// The trusted proxies (to decide whose forwarding headers are passed on).
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// The credential the request presents: API key first, then bearer token.
    pub fn credential<'a>(&self, req: &'a RequestHeader) -> Credential<'a> {
        if let Some(key) = req
            .headers
            .get(&self.settings.api_key_header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            return Credential::ApiKey(key);
        }
        if let Some(key) = self
            .settings
            .api_key_query
            .as_deref()
            .and_then(|name| query_param(req.uri.query()?, name))
        {
            return Credential::ApiKey(key);
        }
        match req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
        {
            Some(token) => Credential::Bearer(token),
            None => Credential::None,
        }
    }

    /// Identifies and verifies the caller under `policy`, then checks the route's scopes.
    pub async fn authenticate(
        &self,
        credential: Credential<'_>,
        policy: &RouteAuth,
        client_ip: IpAddr,
    ) -> Result<Identity, AuthError> {
        let anonymous = Identity {
            caller: Caller::Anonymous,
            client_ip,
        };
        if policy.mode == AuthMode::None {
            return Ok(anonymous);
        }
        let caller = match credential {
            Credential::None if policy.mode == AuthMode::Required => {
                return Err(AuthError::MissingCredentials)
            }
            // Scopes belong to identified callers: an anonymous caller has none.
            Credential::None if !policy.scopes.is_empty() => {
                return Err(AuthError::MissingCredentials)
            }
            Credential::None => return Ok(anonymous),
            Credential::ApiKey(_) if !policy.allow_api_key => {
                return Err(AuthError::MethodNotAllowed(AuthMethod::ApiKey))
            }
            Credential::Bearer(_) if !policy.allow_jwt => {
                return Err(AuthError::MethodNotAllowed(AuthMethod::Jwt))
            }
            Credential::ApiKey(key) => Caller::Key(self.verify_key(key, client_ip).await?),
            Credential::Bearer(token) => Caller::Token(self.verify_token(token).await?),
        };
        let identity = Identity { caller, client_ip };
        let missing: Vec<String> = policy
            .scopes
            .iter()
            .filter(|s| !identity.scopes().contains(s))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(identity)
        } else {
            Err(AuthError::InsufficientScope(missing))
        }
    }

    async fn verify_key(&self, key: &str, client_ip: IpAddr) -> Result<Arc<KeyRecord>, AuthError> {
        // Without a pepper no key can match; the shape check spares the hash for junk.
        let hasher = self.hasher.as_ref().ok_or(AuthError::InvalidApiKey)?;
        if api_key::display_prefix(key).is_none() {
            return Err(AuthError::InvalidApiKey);
        }
        let hash: KeyHash = hasher.hash(key);
        let client = ClientNetwork::of(client_ip, self.ipv6_prefix);
        let record = self
            .store
            .find_key(&hash, client)
            .await
            .map_err(|e| match e {
                LookupError::TooManyFailures { retry_after, .. } => {
                    log::debug!("{e}");
                    AuthError::TooManyKeyFailures(retry_after.as_secs_f64().ceil() as u64)
                }
                LookupError::Store(e) => {
                    log::warn!("{e}");
                    AuthError::StoreUnavailable
                }
            })?
            .ok_or(AuthError::InvalidApiKey)?;
        if record.consumer.status != Status::Active {
            return Err(AuthError::ConsumerDisabled);
        }
        if record.status != Status::Active {
            return Err(AuthError::KeyDisabled);
        }
        if record.expires_at.is_some_and(|t| t <= SystemTime::now()) {
            return Err(AuthError::KeyExpired);
        }
        Ok(record)
    }

    async fn verify_token(&self, token: &str) -> Result<Arc<TokenIdentity>, AuthError> {
        let identity = self
            .jwt
            .verify(token)
            .await
            .map_err(AuthError::InvalidToken)?;
        if self
            .revoked
            .is_revoked(identity.token_id.as_deref(), identity.session_id.as_deref())
        {
            return Err(AuthError::InvalidToken(JwtError::Revoked));
        }
        // A token for a consumer the store knows is subject to that consumer's status; for
        // an issuer whose consumers must exist (the account API's), an unknown one is refused.
        let known = self
            .store
            .find_consumer(&identity.subject)
            .await
            .map_err(|e| {
                log::warn!("{e}");
                AuthError::StoreUnavailable
            })?;
        match known {
            None if self.jwt.requires_known_consumer(&identity.issuer) => {
                Err(AuthError::InvalidToken(JwtError::UnknownConsumer))
            }
            Some(c) if c.status != Status::Active => Err(AuthError::ConsumerDisabled),
            _ => Ok(identity),
        }
    }
}

/// The store of the file's consumers and keys.
fn yaml_store(consumers: &[ConsumerSpec]) -> YamlStore {
    let mut all_consumers = Vec::new();
    let mut keys = Vec::new();
    for c in consumers {
        let consumer = Arc::new(Consumer {
            id: c.id.clone(),
            plan: c.plan.clone(),
            status: c.status,
            scopes: c.scopes.clone(),
        });
        for k in &c.keys {
            keys.push((
                k.hash,
                Arc::new(KeyRecord {
                    key_id: k.id.clone(),
                    prefix: k.prefix.clone().unwrap_or_default(),
                    consumer: Arc::clone(&consumer),
                    scopes: k.scopes.clone().unwrap_or_else(|| c.scopes.clone()),
                    status: k.status,
                    expires_at: k.expires_at,
                }),
            ));
        }
        all_consumers.push(consumer);
    }
    YamlStore::new(all_consumers, keys)
}

/// `Bearer <token>` (scheme case-insensitive).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The raw value of `name` in a query string (keys are URL-safe, so no decoding).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_query_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(query_param("a=1&api_key=tg_x&b=2", "api_key"), Some("tg_x"));
        assert_eq!(query_param("api_key=", "api_key"), None);
    }
}
