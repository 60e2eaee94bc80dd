//! Who is calling: API keys, JWTs and anonymous callers (README "Who is calling" and
//! "Errors"), proven against the real `tollgate` binary over real sockets.
//!
//! Independence: tokens are signed, and their keys generated, by the `openssl` command line;
//! API-key hashes are computed with `openssl dgst -hmac`. The test upstream echoes every
//! request, so each test asserts exactly what the upstream saw. Secrets reach each gateway
//! through its own process environment (`GatewayConfig::with_env`), never the test
//! process's, so the tests run in parallel.

mod support;

use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;
use tempfile::TempDir;

const PEPPER_ENV: &str = "TG_TEST_PEPPER";
const PEPPER: &str = "pepper-for-the-identity-tests";
const JWT_SECRET_ENV: &str = "TG_TEST_JWT_SECRET";
const JWT_SECRET: &str = "a-shared-hs256-secret-of-at-least-32-bytes";
/// Every 401 carries this (README "Refusals").
const REALM: &str = r#"Bearer realm="tollgate""#;
/// The HS256 issuer of [`World`].
const HS_ISSUER: &str = "https://hs.test/";
/// The issuer of the per-algorithm and rejection gateways.
const ISSUER: &str = "https://issuer.test/";

// ----------------------------------------------------------------------------------------
// Requests and answers
// ----------------------------------------------------------------------------------------

/// What the gateway answered.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header the upstream received, from its echo (`None`: it got no such header).
    fn upstream_header(&self, name: &str) -> Option<String> {
        assert_eq!(self.status, 200, "no echo: {}", self.body);
        self.json()["headers"][name].as_str().map(str::to_string)
    }

    /// The path and query the upstream received.
    fn upstream_path(&self) -> String {
        assert_eq!(self.status, 200, "no echo: {}", self.body);
        self.json()["path"].as_str().unwrap().to_string()
    }
}

/// GETs `path` with `headers`.
async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw.http().get(gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts the request reached the upstream carrying exactly this identity
/// (`None`: that identity header is absent).
fn assert_identity(
    a: &Answer,
    method: &str,
    consumer: Option<&str>,
    plan: Option<&str>,
    scopes: Option<&str>,
) {
    assert_eq!(a.status, 200, "refused: {}", a.body);
    let seen = |name| a.upstream_header(name);
    assert_eq!(seen("x-auth-method").as_deref(), Some(method), "{}", a.body);
    assert_eq!(seen("x-consumer-id").as_deref(), consumer, "{}", a.body);
    assert_eq!(seen("x-consumer-plan").as_deref(), plan, "{}", a.body);
    assert_eq!(seen("x-auth-scopes").as_deref(), scopes, "{}", a.body);
}

/// Asserts a refusal in the common error shape (status, `error`, `request_id` equal to the
/// `X-Request-Id` header, JSON content type) and returns the body.
fn assert_refused(a: &Answer, status: u16, code: &str) -> Value {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let body = a.json();
    assert_eq!(body["error"], code, "{body}");
    let id = a.header("x-request-id").expect("no X-Request-Id");
    assert!(!id.is_empty());
    assert_eq!(body["request_id"], id, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    body
}

/// A 401 for an API-key problem: plain `WWW-Authenticate: Bearer realm="tollgate"`.
fn assert_key_refused(a: &Answer, code: &str) {
    assert_refused(a, 401, code);
    assert_eq!(a.header("www-authenticate"), Some(REALM));
}

/// A 401 for a token problem: `WWW-Authenticate` with `error="invalid_token"`.
fn assert_token_refused(a: &Answer, code: &str) -> Value {
    let body = assert_refused(a, 401, code);
    let www = a.header("www-authenticate").unwrap_or("");
    assert!(
        www.starts_with(REALM) && www.contains(r#"error="invalid_token""#),
        "WWW-Authenticate: {www:?}"
    );
    body
}

/// The access-log line (JSON on stdout) of the request with `request_id`; polls, since a
/// dedicated thread writes the log.
async fn access_log_entry(gw: &Gateway, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = gw
            .stdout()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|entry| entry["request_id"] == request_id);
        if let Some(entry) = found {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for request {request_id}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Once the request's access-log line is written, asserts `secret` appears neither in the
/// answer nor anywhere in the gateway's logs.
async fn assert_not_leaked(gw: &Gateway, a: &Answer, secret: &str) {
    access_log_entry(gw, a.header("x-request-id").unwrap()).await;
    assert!(
        !a.body.contains(secret),
        "the answer shows the key: {}",
        a.body
    );
    for (name, value) in &a.headers {
        assert!(
            !value.to_str().unwrap_or("").contains(secret),
            "header {name} shows the key"
        );
    }
    let leaks: Vec<String> = gw
        .logs()
        .lines()
        .filter(|l| l.contains(secret))
        .map(str::to_string)
        .collect();
    assert!(
        leaks.is_empty(),
        "the logs show the key:\n{}",
        leaks.join("\n")
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ----------------------------------------------------------------------------------------
// openssl: keys, signatures, HMAC
// ----------------------------------------------------------------------------------------

/// Runs `openssl args` with `stdin` and returns its stdout; panics with stderr on failure.
fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the openssl command line");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// HMAC-SHA-256(pepper, key) in hex, as `openssl dgst` computes it.
fn hmac_hex(pepper: &str, key: &str) -> String {
    let out = openssl(&["dgst", "-sha256", "-hmac", pepper, "-r"], key.as_bytes());
    let text = String::from_utf8(out).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

/// Base64url without padding (RFC 7515 §2).
fn b64url(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn b64url_decode(text: &str) -> Vec<u8> {
    let mut standard = text.replace('-', "+").replace('_', "/");
    while !standard.len().is_multiple_of(4) {
        standard.push('=');
    }
    openssl::base64::decode_block(&standard).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key pair as PEM text: PKCS#8 private key and SPKI public key.
struct Pem {
    private: String,
    public: String,
}

/// Key pairs made by `openssl genpkey`, once per test run (RSA generation is slow).
struct KeyPems {
    rsa: Pem,
    rsa2: Pem,
    ec: Pem,
    ed: Pem,
}

fn key_pems() -> &'static KeyPems {
    static PEMS: OnceLock<KeyPems> = OnceLock::new();
    PEMS.get_or_init(|| {
        let pair = |genpkey: &[&str]| {
            let mut args = vec!["genpkey", "-quiet"];
            args.extend_from_slice(genpkey);
            let private = String::from_utf8(openssl(&args, b"")).unwrap();
            let public = openssl(&["pkey", "-pubout"], private.as_bytes());
            Pem {
                private,
                public: String::from_utf8(public).unwrap(),
            }
        };
        let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
        KeyPems {
            rsa: pair(&rsa),
            rsa2: pair(&rsa),
            ec: pair(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            ed: pair(&["-algorithm", "ED25519"]),
        }
    })
}

/// The key pairs as files in a temp dir: `<name>.pem` (private, for the openssl command
/// line) and `<name>.pub.pem` (public, for the gateway). Names: rsa, rsa2, ec, ed.
struct Keys {
    dir: TempDir,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-jwt-keys-")
            .tempdir()
            .unwrap();
        let pems = key_pems();
        for (name, pem) in [
            ("rsa", &pems.rsa),
            ("rsa2", &pems.rsa2),
            ("ec", &pems.ec),
            ("ed", &pems.ed),
        ] {
            std::fs::write(dir.path().join(format!("{name}.pem")), &pem.private).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pub.pem")), &pem.public).unwrap();
        }
        Keys { dir }
    }

    fn private(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    fn public(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pub.pem"))
    }

    /// `pem_files: [...]` entry for the public key `name`.
    fn pem_file_yaml(&self, name: &str) -> String {
        format!("{{path: \"{}\"}}", self.public(name).display())
    }
}

/// How a token is signed, by the openssl command line.
enum Signer {
    Hs256(Vec<u8>),
    Rs256(PathBuf),
    Ps256(PathBuf),
    Es256(PathBuf),
    EdDsa(PathBuf),
}

impl Signer {
    fn alg(&self) -> &'static str {
        match self {
            Signer::Hs256(_) => "HS256",
            Signer::Rs256(_) => "RS256",
            Signer::Ps256(_) => "PS256",
            Signer::Es256(_) => "ES256",
            Signer::EdDsa(_) => "EdDSA",
        }
    }

    /// The JWS signature of `input` (RFC 7518 §3 formats).
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        match self {
            Signer::Hs256(secret) => {
                let key = format!("hexkey:{}", hex(secret));
                openssl(
                    &[
                        "dgst", "-sha256", "-mac", "HMAC", "-macopt", &key, "-binary",
                    ],
                    input,
                )
            }
            Signer::Rs256(key) => openssl(&["dgst", "-sha256", "-sign", &path(key)], input),
            Signer::Ps256(key) => openssl(
                &[
                    "dgst",
                    "-sha256",
                    "-sign",
                    &path(key),
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ],
                input,
            ),
            Signer::Es256(key) => {
                // openssl writes an ECDSA-Sig-Value (DER); JWS wants r || s, 32 bytes each.
                let der = openssl(&["dgst", "-sha256", "-sign", &path(key)], input);
                let sig = openssl::ecdsa::EcdsaSig::from_der(&der).unwrap();
                let mut raw = sig.r().to_vec_padded(32).unwrap();
                raw.extend(sig.s().to_vec_padded(32).unwrap());
                raw
            }
            Signer::EdDsa(key) => {
                // `pkeyutl -rawin` needs a file it can size, not a pipe.
                let mut file = tempfile::NamedTempFile::new().unwrap();
                file.write_all(input).unwrap();
                let (key, file) = (path(key), path(file.path()));
                openssl(
                    &["pkeyutl", "-sign", "-rawin", "-inkey", &key, "-in", &file],
                    b"",
                )
            }
        }
    }
}

/// A compact JWS of `claims` with header `{"alg", "typ", "kid"?}`, signed by `signer`.
fn token(signer: &Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": signer.alg(), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    token_with_header(&header, claims, signer)
}

/// A compact JWS with exactly `header`, signed by `signer` whatever the header says.
fn token_with_header(header: &Value, claims: &Value, signer: &Signer) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = b64url(&signer.sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// Claims of a token by `iss` for `sub`, valid for ten minutes, plus `extra`. Each has its
/// own `jti`, so every token is new to the gateway's verified-token cache.
fn claims(iss: &str, sub: &str, extra: Value) -> Value {
    static JTI: AtomicUsize = AtomicUsize::new(0);
    let jti = format!(
        "{}-{}",
        std::process::id(),
        JTI.fetch_add(1, Ordering::SeqCst)
    );
    let mut c = json!({"iss": iss, "sub": sub, "jti": jti, "iat": now(), "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

// ----------------------------------------------------------------------------------------
// Gateways
// ----------------------------------------------------------------------------------------

/// Starts a gateway whose file is the harness header, one upstream `up`, and `rest`
/// (auth, routes, plans, consumers; lines starting `  - ` first add more upstreams). It
/// gets the API-key pepper and the HS256 secret.
async fn start_gateway(rest: &str) -> (Gateway, TestUpstream) {
    start_gateway_with_env(&[], rest).await
}

/// [`start_gateway`], with `env` set for the gateway process too.
async fn start_gateway_with_env(env: &[(&str, &str)], rest: &str) -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("up").await;
    let mut cfg = GatewayConfig::new()
        .with_env(PEPPER_ENV, PEPPER)
        .with_env(JWT_SECRET_ENV, JWT_SECRET);
    for (name, value) in env {
        cfg = cfg.with_env(name, value);
    }
    let yaml = cfg.render(&format!(
        "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\n{rest}",
        up.address()
    ));
    (Gateway::start(cfg, &yaml).await, up)
}

/// An API key and its stored form.
struct ApiKey {
    secret: String,
    hash: String,
}

fn new_api_key() -> ApiKey {
    let key = tollgate::auth::api_key::generate(&ring::rand::SystemRandom::new()).unwrap();
    ApiKey {
        hash: hmac_hex(PEPPER, &key.secret),
        secret: key.secret,
    }
}

/// A gateway whose file has a consumer or key for every API-key outcome, a route for every
/// auth policy, and an HS256 issuer.
struct World {
    gw: Gateway,
    up: TestUpstream,
    /// alice (plan gold, scopes orders:read orders:write): her everyday key.
    alice: ApiKey,
    /// alice's key restricted to orders:read.
    alice_read_only: ApiKey,
    /// alice's key that expired in 2020.
    alice_expired: ApiKey,
    /// alice's disabled key.
    alice_disabled: ApiKey,
    /// alice's key that expires in 2099.
    alice_expiring: ApiKey,
    /// bob (no plan, no scopes).
    bob: ApiKey,
    /// the active key of mallory, a disabled consumer.
    mallory: ApiKey,
}

impl World {
    async fn start() -> Self {
        let [alice, alice_read_only, alice_expired, alice_disabled, alice_expiring, bob, mallory] =
            std::array::from_fn(|_| new_api_key());
        let rest = format!(
            r#"auth:
  api_key: {{query_param: api_key, pepper_env: {PEPPER_ENV}}}
  jwt:
    - issuer: "{HS_ISSUER}"
      audience: any
      algorithms: [HS256]
      secret_env: {JWT_SECRET_ENV}
      plan_claim: plan
plans:
  - name: free
  - name: gold
consumers:
  - id: alice
    plan: gold
    scopes: [orders:read, orders:write]
    keys:
      - {{id: alice-key, hash: {}}}
      - {{id: alice-read-only, hash: {}, scopes: [orders:read]}}
      - {{id: alice-expired, hash: {}, expires_at: "2020-01-01T00:00:00Z"}}
      - {{id: alice-disabled, hash: {}, status: disabled}}
      - {{id: alice-expiring, hash: {}, expires_at: "2099-01-01T00:00:00Z"}}
  - id: bob
    keys:
      - {{id: bob-key, hash: {}}}
  - id: mallory
    status: disabled
    scopes: [orders:read]
    keys:
      - {{id: mallory-key, hash: {}}}
routes:
  - {{name: open, path_prefix: /open, upstream: up}}
  - {{name: maybe, path_prefix: /maybe, upstream: up, auth: optional}}
  - {{name: maybe-scoped, path_prefix: /maybe-scoped, upstream: up, auth: optional, scopes: [orders:read]}}
  - {{name: closed, path_prefix: /closed, upstream: up, auth: required}}
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required, scopes: [orders:read]}}
  - {{name: writes, path_prefix: /writes, upstream: up, auth: required, scopes: [orders:write]}}
  - {{name: forwarded, path_prefix: /forwarded, upstream: up, auth: required, forward_credential: true}}
  - {{name: jwt-only, path_prefix: /jwt-only, upstream: up, auth: required, auth_methods: [jwt]}}
  - {{name: keys-only, path_prefix: /keys-only, upstream: up, auth: required, auth_methods: [api_key]}}
"#,
            alice.hash,
            alice_read_only.hash,
            alice_expired.hash,
            alice_disabled.hash,
            alice_expiring.hash,
            bob.hash,
            mallory.hash,
        );
        let (gw, up) = start_gateway(&rest).await;
        World {
            gw,
            up,
            alice,
            alice_read_only,
            alice_expired,
            alice_disabled,
            alice_expiring,
            bob,
            mallory,
        }
    }

    /// GET `path` presenting `key` in `x-api-key`.
    async fn with_key(&self, path: &str, key: &str) -> Answer {
        get(&self.gw, path, &[("x-api-key", key)]).await
    }

    /// An HS256 token of the world's issuer for `sub`, plus `extra` claims.
    fn hs_token(&self, sub: &str, extra: Value) -> String {
        let signer = Signer::Hs256(JWT_SECRET.as_bytes().to_vec());
        token(&signer, None, &claims(HS_ISSUER, sub, extra))
    }
}

// ----------------------------------------------------------------------------------------
// API keys accepted
// ----------------------------------------------------------------------------------------

#[tokio::test]
async fn api_key_in_header_identifies_the_caller_and_is_not_forwarded() {
    let w = World::start().await;

    let a = w.with_key("/orders/1", &w.alice.secret).await;
    assert_identity(
        &a,
        "api_key",
        Some("alice"),
        Some("gold"),
        Some("orders:read orders:write"),
    );
    assert_eq!(a.upstream_header("x-api-key"), None, "credential forwarded");
    let log = access_log_entry(&w.gw, a.header("x-request-id").unwrap()).await;
    assert_eq!(log["consumer"], "alice", "{log}");
    assert_eq!(log["auth"], "api_key", "{log}");

    // A key with its own scopes grants those, not its consumer's.
    let a = w.with_key("/orders/1", &w.alice_read_only.secret).await;
    assert_identity(
        &a,
        "api_key",
        Some("alice"),
        Some("gold"),
        Some("orders:read"),
    );
}

#[tokio::test]
async fn forward_credential_true_passes_the_api_key_to_the_upstream() {
    let w = World::start().await;
    let a = w.with_key("/forwarded/x", &w.alice.secret).await;
    assert_identity(
        &a,
        "api_key",
        Some("alice"),
        Some("gold"),
        Some("orders:read orders:write"),
    );
    assert_eq!(a.upstream_header("x-api-key"), Some(w.alice.secret.clone()));

    let token = w.hs_token("alice", json!({}));
    let a = get(&w.gw, "/forwarded/x", &[("authorization", &bearer(&token))]).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    assert_eq!(a.upstream_header("authorization"), Some(bearer(&token)));
}

#[tokio::test]
async fn api_key_in_query_parameter_is_accepted_and_removed_from_the_upstream_url() {
    let w = World::start().await;
    let key = &w.alice.secret;

    let a = get(&w.gw, &format!("/orders/1?a=1&api_key={key}&b=2"), &[]).await;
    assert_identity(
        &a,
        "api_key",
        Some("alice"),
        Some("gold"),
        Some("orders:read orders:write"),
    );
    assert_eq!(
        a.upstream_path(),
        "/orders/1?a=1&b=2",
        "other parameters kept"
    );

    let a = get(&w.gw, &format!("/orders/1?api_key={key}"), &[]).await;
    assert_eq!(a.upstream_path(), "/orders/1");
    assert_not_leaked(&w.gw, &a, key).await;
}

#[tokio::test]
async fn api_key_in_query_never_reaches_the_logs_even_when_the_upstream_fails() {
    let key = new_api_key();
    let dead = free_port(); // nothing listens there
    let (gw, _up) = start_gateway(&format!(
        r#"  - {{name: dead, targets: [{{address: "127.0.0.1:{dead}"}}]}}
auth:
  api_key: {{query_param: api_key, pepper_env: {PEPPER_ENV}}}
consumers:
  - id: alice
    keys: [{{id: k1, hash: {}}}]
routes:
  - {{name: r, path_prefix: /, upstream: dead, auth: required}}
"#,
        key.hash
    ))
    .await;
    let a = get(&gw, &format!("/orders?api_key={}&b=2", key.secret), &[]).await;
    assert_refused(&a, 502, "bad_gateway");
    assert_not_leaked(&gw, &a, &key.secret).await;
}

#[tokio::test]
async fn api_key_header_wins_over_query_parameter_and_bearer_token() {
    let w = World::start().await;
    // Header before query parameter: bob's header key decides, alice's query key does not.
    let a = get(
        &w.gw,
        &format!("/closed?api_key={}", w.alice.secret),
        &[("x-api-key", &w.bob.secret)],
    )
    .await;
    assert_identity(&a, "api_key", Some("bob"), None, None);

    // Key before bearer: a garbage bearer token is not looked at when a key is present...
    let a = get(
        &w.gw,
        "/closed",
        &[
            ("x-api-key", &w.bob.secret),
            ("authorization", "Bearer junk"),
        ],
    )
    .await;
    assert_identity(&a, "api_key", Some("bob"), None, None);

    // ...and a valid token does not rescue an unknown key.
    let token = w.hs_token("alice", json!({}));
    let unknown = new_api_key();
    let a = get(
        &w.gw,
        "/closed",
        &[
            ("x-api-key", &unknown.secret),
            ("authorization", &bearer(&token)),
        ],
    )
    .await;
    assert_key_refused(&a, "invalid_api_key");
}

// ----------------------------------------------------------------------------------------
// API-key refusals
// ----------------------------------------------------------------------------------------

#[tokio::test]
async fn no_credential_on_a_required_route_is_401_missing_credentials() {
    let w = World::start().await;
    let a = get(&w.gw, "/orders/1", &[]).await;
    assert_key_refused(&a, "missing_credentials");
}

#[tokio::test]
async fn unknown_key_is_401_invalid_api_key_and_never_shown() {
    let w = World::start().await;
    let unknown = new_api_key();
    let a = w.with_key("/orders/1", &unknown.secret).await;
    assert_key_refused(&a, "invalid_api_key");
    assert_not_leaked(&w.gw, &a, &unknown.secret).await;

    let a = get(&w.gw, &format!("/orders/1?api_key={}", unknown.secret), &[]).await;
    assert_key_refused(&a, "invalid_api_key");
    assert_not_leaked(&w.gw, &a, &unknown.secret).await;
}

#[tokio::test]
async fn malformed_key_is_401_invalid_api_key_and_never_shown() {
    let w = World::start().await;
    for junk in [
        "not-a-key-at-all-SECRET123",
        "tg_short_SECRET123",
        // Right shape but a character outside the alphabet.
        "tg_abcdefgh_0123456789abcdef0123456789abcde-",
        // Right shape, wrong prefix.
        "xx_abcdefgh_0123456789abcdef0123456789abcdef",
    ] {
        let a = w.with_key("/orders/1", junk).await;
        assert_key_refused(&a, "invalid_api_key");
        assert_not_leaked(&w.gw, &a, junk).await;
    }
}

#[tokio::test]
async fn disabled_key_is_403_key_disabled() {
    let w = World::start().await;
    let a = w.with_key("/orders/1", &w.alice_disabled.secret).await;
    assert_refused(&a, 403, "key_disabled");
    assert_not_leaked(&w.gw, &a, &w.alice_disabled.secret).await;
}

#[tokio::test]
async fn key_of_a_disabled_consumer_is_403_consumer_disabled() {
    let w = World::start().await;
    let a = w.with_key("/orders/1", &w.mallory.secret).await;
    assert_refused(&a, 403, "consumer_disabled");
    assert_not_leaked(&w.gw, &a, &w.mallory.secret).await;
}

#[tokio::test]
async fn key_past_its_expires_at_is_403_key_expired() {
    let w = World::start().await;
    let a = w.with_key("/orders/1", &w.alice_expired.secret).await;
    assert_refused(&a, 403, "key_expired");
    assert_not_leaked(&w.gw, &a, &w.alice_expired.secret).await;
    // The control: a key whose expires_at is still ahead works.
    let a = w.with_key("/orders/1", &w.alice_expiring.secret).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn key_without_the_route_scope_is_403_insufficient_scope_naming_it() {
    let w = World::start().await;
    let a = w.with_key("/writes/1", &w.alice_read_only.secret).await;
    let body = assert_refused(&a, 403, "insufficient_scope");
    assert!(
        body["message"].as_str().unwrap().contains("orders:write"),
        "{body}"
    );
    let www = a.header("www-authenticate").unwrap_or("");
    assert!(
        www.contains(r#"error="insufficient_scope""#) && www.contains(r#"scope="orders:write""#),
        "WWW-Authenticate: {www:?}"
    );
    assert_not_leaked(&w.gw, &a, &w.alice_read_only.secret).await;

    // The same key passes where its scope suffices.
    let a = w.with_key("/orders/1", &w.alice_read_only.secret).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn credential_of_a_method_the_route_does_not_accept_is_401_auth_method_not_allowed() {
    let w = World::start().await;
    let a = w.with_key("/jwt-only/x", &w.alice.secret).await;
    assert_key_refused(&a, "auth_method_not_allowed");
    assert_not_leaked(&w.gw, &a, &w.alice.secret).await;

    let token = w.hs_token("alice", json!({}));
    let a = get(&w.gw, "/keys-only/x", &[("authorization", &bearer(&token))]).await;
    assert_refused(&a, 401, "auth_method_not_allowed");
    assert!(a
        .header("www-authenticate")
        .unwrap_or("")
        .starts_with(REALM));

    // Each route still takes its own method.
    let a = get(&w.gw, "/jwt-only/x", &[("authorization", &bearer(&token))]).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    let a = w.with_key("/keys-only/x", &w.alice.secret).await;
    assert_eq!(a.status, 200);
}

// ----------------------------------------------------------------------------------------
// auth: optional and auth: none
// ----------------------------------------------------------------------------------------

#[tokio::test]
async fn optional_auth_admits_anonymous_callers_and_identifies_the_others() {
    let w = World::start().await;
    let a = get(&w.gw, "/maybe/x", &[]).await;
    assert_identity(&a, "anonymous", None, None, None);

    let a = w.with_key("/maybe/x", &w.alice.secret).await;
    assert_identity(
        &a,
        "api_key",
        Some("alice"),
        Some("gold"),
        Some("orders:read orders:write"),
    );
    assert_eq!(a.upstream_header("x-api-key"), None);
}

#[tokio::test]
async fn optional_auth_refuses_a_bad_credential_instead_of_downgrading_it() {
    let w = World::start().await;
    let unknown = new_api_key();
    let a = w.with_key("/maybe/x", &unknown.secret).await;
    assert_key_refused(&a, "invalid_api_key");

    let a = w.with_key("/maybe/x", &w.alice_disabled.secret).await;
    assert_refused(&a, 403, "key_disabled");

    let a = get(&w.gw, "/maybe/x", &[("authorization", "Bearer not.a.jwt")]).await;
    assert_token_refused(&a, "invalid_token");

    let expired = w.hs_token("alice", json!({"exp": now() - 3600}));
    let a = get(&w.gw, "/maybe/x", &[("authorization", &bearer(&expired))]).await;
    assert_token_refused(&a, "expired_token");
}

#[tokio::test]
async fn optional_route_scopes_cannot_be_bypassed_by_sending_no_credential() {
    let w = World::start().await;
    // The controls: a key with the scope passes, a key without it is refused.
    let a = w.with_key("/maybe-scoped/x", &w.alice.secret).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = w.with_key("/maybe-scoped/x", &w.bob.secret).await;
    assert_refused(&a, 403, "insufficient_scope");

    // "scopes: every one is needed": a caller without any credential has none of them, so
    // dropping the under-scoped key must not be the way in.
    let hits = w.up.hits();
    let a = get(&w.gw, "/maybe-scoped/x", &[]).await;
    assert!(
        a.status == 401 || a.status == 403,
        "anonymous caller passed a route that needs orders:read: {} {}",
        a.status,
        a.body
    );
    assert_eq!(w.up.hits(), hits, "the upstream was reached");
}

#[tokio::test]
async fn auth_none_ignores_credentials_and_keeps_the_gateways_api_key_from_the_upstream() {
    let w = World::start().await;
    let unknown = new_api_key();
    let path = format!("/open/x?api_key={}&b=2", unknown.secret);
    let a = get(
        &w.gw,
        &path,
        &[
            ("x-api-key", &unknown.secret),
            ("authorization", "Bearer not.a.jwt"),
        ],
    )
    .await;
    assert_identity(&a, "anonymous", None, None, None);
    // The gateway's key (header and query parameter) is its own: it never reaches the
    // upstream of an open route. Authorization is not the gateway's there and passes.
    assert_eq!(a.upstream_header("x-api-key"), None);
    assert_eq!(
        a.upstream_header("authorization").as_deref(),
        Some("Bearer not.a.jwt")
    );
    assert_eq!(a.upstream_path(), "/open/x?b=2");

    // A valid key is not looked at either: the caller stays anonymous.
    let a = w.with_key("/open/x", &w.alice.secret).await;
    assert_identity(&a, "anonymous", None, None, None);
    assert_eq!(a.upstream_header("x-api-key"), None);
}

// ----------------------------------------------------------------------------------------
// Spoofed identity headers
// ----------------------------------------------------------------------------------------

/// GETs `path` with spoofed identity headers (one of them twice, in another case), plus
/// `credential` if any.
async fn get_spoofed(gw: &Gateway, path: &str, credential: Option<(&str, String)>) -> Answer {
    let mut headers: Vec<(&str, String)> = vec![
        ("x-consumer-id", "admin".into()),
        ("X-Consumer-Id", "root".into()),
        ("x-consumer-plan", "enterprise".into()),
        ("x-auth-method", "api_key".into()),
        ("x-auth-scopes", "admin:all".into()),
    ];
    headers.extend(credential);
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(gw, path, &refs).await
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let w = World::start().await;
    let send = |path, credential| get_spoofed(&w.gw, path, credential);
    let key = |k: &ApiKey| Some(("x-api-key", k.secret.clone()));

    // auth: none, with and without a credential.
    let a = send("/open/x", None).await;
    assert_identity(&a, "anonymous", None, None, None);
    let a = send("/open/x", key(&w.alice)).await;
    assert_identity(&a, "anonymous", None, None, None);

    // auth: optional, anonymous and identified (bob has no plan and no scopes, so nothing
    // may be left of the spoofed plan and scopes).
    let a = send("/maybe/x", None).await;
    assert_identity(&a, "anonymous", None, None, None);
    let a = send("/maybe/x", key(&w.bob)).await;
    assert_identity(&a, "api_key", Some("bob"), None, None);

    // auth: required, by key and by token.
    let a = send("/closed/x", key(&w.bob)).await;
    assert_identity(&a, "api_key", Some("bob"), None, None);
    let a = send("/closed/x", key(&w.alice)).await;
    assert_identity(
        &a,
        "api_key",
        Some("alice"),
        Some("gold"),
        Some("orders:read orders:write"),
    );
    let token = w.hs_token("carol", json!({}));
    let a = send("/closed/x", Some(("authorization", bearer(&token)))).await;
    assert_identity(&a, "jwt", Some("carol"), None, None);
}

// ----------------------------------------------------------------------------------------
// JWTs signed by openssl, one algorithm family each
// ----------------------------------------------------------------------------------------

/// Starts a gateway with one issuer ([`ISSUER`], `algorithms: [alg]`, plan from the `tier`
/// claim, default plan `free`) verifying with `key_yaml`, then checks that tokens signed by
/// `signer` identify their subject, with plan and scopes from either claim form.
async fn assert_tokens_accepted(signer: Signer, key_yaml: &str) {
    let alg = signer.alg();
    let (gw, _up) = start_gateway(&format!(
        r#"auth:
  jwt:
    - issuer: "{ISSUER}"
      audience: any
      algorithms: [{alg}]
      plan_claim: tier
      default_plan: free
      {key_yaml}
plans: [{{name: free}}, {{name: gold}}]
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#
    ))
    .await;

    let with_plan_and_scope = token(
        &signer,
        None,
        &claims(
            ISSUER,
            "alice",
            json!({"tier": "gold", "scope": "orders:read orders:write"}),
        ),
    );
    let a = get(
        &gw,
        "/orders",
        &[("authorization", &bearer(&with_plan_and_scope))],
    )
    .await;
    assert_identity(
        &a,
        "jwt",
        Some("alice"),
        Some("gold"),
        Some("orders:read orders:write"),
    );
    assert_eq!(a.upstream_header("authorization"), None, "token forwarded");

    let default_plan_and_scp = token(
        &signer,
        None,
        &claims(
            ISSUER,
            "bob",
            json!({"scp": ["orders:read", "reports:read"]}),
        ),
    );
    let a = get(
        &gw,
        "/orders",
        &[("authorization", &bearer(&default_plan_and_scp))],
    )
    .await;
    assert_identity(
        &a,
        "jwt",
        Some("bob"),
        Some("free"),
        Some("orders:read reports:read"),
    );
    let log = access_log_entry(&gw, a.header("x-request-id").unwrap()).await;
    assert_eq!(log["consumer"], "bob", "{log}");
    assert_eq!(log["auth"], "jwt", "{log}");
}

#[tokio::test]
async fn hs256_token_signed_by_openssl_is_accepted() {
    let signer = Signer::Hs256(JWT_SECRET.as_bytes().to_vec());
    assert_tokens_accepted(signer, &format!("secret_env: {JWT_SECRET_ENV}")).await;
}

#[tokio::test]
async fn rs256_token_signed_by_openssl_is_accepted() {
    let keys = Keys::new();
    let pem = format!("pem_files: [{}]", keys.pem_file_yaml("rsa"));
    assert_tokens_accepted(Signer::Rs256(keys.private("rsa")), &pem).await;
}

#[tokio::test]
async fn ps256_token_signed_by_openssl_is_accepted() {
    let keys = Keys::new();
    let pem = format!("pem_files: [{}]", keys.pem_file_yaml("rsa"));
    assert_tokens_accepted(Signer::Ps256(keys.private("rsa")), &pem).await;
}

#[tokio::test]
async fn es256_token_signed_by_openssl_is_accepted() {
    let keys = Keys::new();
    let pem = format!("pem_files: [{}]", keys.pem_file_yaml("ec"));
    assert_tokens_accepted(Signer::Es256(keys.private("ec")), &pem).await;
}

#[tokio::test]
async fn eddsa_token_signed_by_openssl_is_accepted() {
    let keys = Keys::new();
    let pem = format!("pem_files: [{}]", keys.pem_file_yaml("ed"));
    assert_tokens_accepted(Signer::EdDsa(keys.private("ed")), &pem).await;
}

#[tokio::test]
async fn token_for_a_consumer_disabled_in_the_file_is_403_consumer_disabled() {
    let w = World::start().await;
    let token = w.hs_token("mallory", json!({"scope": "orders:read"}));
    let a = get(&w.gw, "/orders/1", &[("authorization", &bearer(&token))]).await;
    assert_refused(&a, 403, "consumer_disabled");
}

#[tokio::test]
async fn token_without_the_route_scope_is_403_insufficient_scope() {
    let w = World::start().await;
    let token = w.hs_token("alice", json!({"scope": "orders:read"}));
    let a = get(&w.gw, "/writes/1", &[("authorization", &bearer(&token))]).await;
    assert_refused(&a, 403, "insufficient_scope");
    let a = get(&w.gw, "/orders/1", &[("authorization", &bearer(&token))]).await;
    assert_identity(&a, "jwt", Some("alice"), None, Some("orders:read"));
}

// ----------------------------------------------------------------------------------------
// JWT refusals
// ----------------------------------------------------------------------------------------

/// A gateway with an RS256 issuer ([`ISSUER`], audience `orders-api`), an ES256-only
/// issuer (`https://ec.test/`), an RS256-and-HS256 issuer (`https://mixed.test/`, the same
/// RSA key plus the HS256 secret), and a required route `/orders`.
struct TokenWorld {
    gw: Gateway,
    up: TestUpstream,
    keys: Keys,
}

impl TokenWorld {
    async fn start() -> Self {
        let keys = Keys::new();
        let (gw, up) = start_gateway(&format!(
            r#"auth:
  jwt:
    - issuer: "{ISSUER}"
      audiences: [orders-api]
      algorithms: [RS256]
      pem_files: [{}]
    - issuer: https://ec.test/
      audience: any
      algorithms: [ES256]
      pem_files: [{}]
    - issuer: https://mixed.test/
      audience: any
      algorithms: [RS256, HS256]
      secret_env: {JWT_SECRET_ENV}
      pem_files: [{}]
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#,
            keys.pem_file_yaml("rsa"),
            keys.pem_file_yaml("ec"),
            keys.pem_file_yaml("rsa"),
        ))
        .await;
        TokenWorld { gw, up, keys }
    }

    fn rs256(&self) -> Signer {
        Signer::Rs256(self.keys.private("rsa"))
    }

    /// An RS256 token of [`ISSUER`] for the right audience, plus `extra` claims.
    fn token(&self, extra: Value) -> String {
        let mut c = claims(ISSUER, "alice", json!({"aud": "orders-api"}));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        token(&self.rs256(), None, &c)
    }

    async fn send(&self, token: &str) -> Answer {
        get(&self.gw, "/orders", &[("authorization", &bearer(token))]).await
    }
}

#[tokio::test]
async fn expired_token_is_401_expired_token() {
    let t = TokenWorld::start().await;
    // The control: the same token, unexpired, is accepted.
    assert_identity(
        &t.send(&t.token(json!({}))).await,
        "jwt",
        Some("alice"),
        None,
        None,
    );
    // Within the default 30 s leeway an expired token still passes; beyond it, it fails.
    let a = t.send(&t.token(json!({"exp": now() - 5}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = t.send(&t.token(json!({"exp": now() - 120}))).await;
    assert_token_refused(&a, "expired_token");
}

#[tokio::test]
async fn token_with_nbf_in_the_future_is_401_token_not_yet_valid() {
    let t = TokenWorld::start().await;
    let a = t.send(&t.token(json!({"nbf": now() + 3600}))).await;
    assert_token_refused(&a, "token_not_yet_valid");
    // Within the default 30 s leeway it passes.
    let a = t.send(&t.token(json!({"nbf": now() + 5}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn token_for_another_audience_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let a = t.send(&t.token(json!({"aud": "billing-api"}))).await;
    assert_token_refused(&a, "invalid_token");
    let a = t
        .send(&t.token(json!({"aud": ["billing-api", "admin-api"]})))
        .await;
    assert_token_refused(&a, "invalid_token");
    // The control: an audience list that includes ours is accepted.
    let a = t
        .send(&t.token(json!({"aud": ["billing-api", "orders-api"]})))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn token_from_an_unknown_issuer_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let a = t.send(&t.token(json!({"iss": "https://evil.test/"}))).await;
    assert_token_refused(&a, "invalid_token");
}

#[tokio::test]
async fn alg_none_token_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let c = claims(ISSUER, "alice", json!({"aud": "orders-api"}));
    for alg in ["none", "None", "NONE"] {
        let unsigned = format!(
            "{}.{}.",
            b64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
            b64url(c.to_string().as_bytes())
        );
        assert_token_refused(&t.send(&unsigned).await, "invalid_token");
    }
}

#[tokio::test]
async fn hs256_token_keyed_with_the_issuers_rsa_public_key_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    // The classic key-confusion forgery: the public PEM file's bytes as the HMAC secret.
    let public_pem = std::fs::read(t.keys.public("rsa")).unwrap();
    let c = claims(ISSUER, "alice", json!({"aud": "orders-api"}));
    let forged = token(&Signer::Hs256(public_pem.clone()), None, &c);
    assert_token_refused(&t.send(&forged).await, "invalid_token");
    // Also without the PEM's trailing newline, as some libraries read it.
    let trimmed = public_pem.trim_ascii_end().to_vec();
    let forged = token(&Signer::Hs256(trimmed), None, &c);
    assert_token_refused(&t.send(&forged).await, "invalid_token");

    // Where the issuer does allow HS256 too, only its secret keys HMAC, never the RSA key.
    let mixed = claims("https://mixed.test/", "alice", json!({}));
    let forged = token(&Signer::Hs256(public_pem), None, &mixed);
    assert_token_refused(&t.send(&forged).await, "invalid_token");
    let real = token(&Signer::Hs256(JWT_SECRET.as_bytes().to_vec()), None, &mixed);
    assert_identity(&t.send(&real).await, "jwt", Some("alice"), None, None);
}

#[tokio::test]
async fn token_with_an_altered_signature_or_payload_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let good = t.token(json!({}));
    assert_eq!(t.send(&good).await.status, 200);
    let (input, signature) = good.rsplit_once('.').unwrap();

    // One bit of the signature flipped.
    let mut sig = b64url_decode(signature);
    sig[10] ^= 0x01;
    let altered = format!("{input}.{}", b64url(&sig));
    assert_token_refused(&t.send(&altered).await, "invalid_token");

    // The payload swapped for another subject's, the signature kept.
    let header = input.split('.').next().unwrap();
    let other = claims(ISSUER, "admin", json!({"aud": "orders-api"}));
    let swapped = format!(
        "{header}.{}.{signature}",
        b64url(other.to_string().as_bytes())
    );
    assert_token_refused(&t.send(&swapped).await, "invalid_token");
}

#[tokio::test]
async fn rs256_token_on_an_es256_only_issuer_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let c = claims("https://ec.test/", "alice", json!({}));
    let a = t.send(&token(&t.rs256(), None, &c)).await;
    assert_token_refused(&a, "invalid_token");
    // The control: an ES256 token for that issuer passes.
    let es = token(&Signer::Es256(t.keys.private("ec")), None, &c);
    assert_identity(&t.send(&es).await, "jwt", Some("alice"), None, None);
}

#[tokio::test]
async fn token_signed_by_another_rsa_key_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let c = claims(ISSUER, "alice", json!({"aud": "orders-api"}));
    let stranger = token(&Signer::Rs256(t.keys.private("rsa2")), None, &c);
    assert_token_refused(&t.send(&stranger).await, "invalid_token");
}

#[tokio::test]
async fn token_without_exp_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let c = json!({"iss": ISSUER, "sub": "alice", "aud": "orders-api"});
    let a = t.send(&token(&t.rs256(), None, &c)).await;
    assert_token_refused(&a, "invalid_token");
}

#[tokio::test]
async fn token_without_aud_is_refused_when_the_issuer_lists_audiences() {
    let t = TokenWorld::start().await;
    // No `required_claims` names aud: listing audiences is enough to require it.
    let c = claims(ISSUER, "alice", json!({}));
    let a = t.send(&token(&t.rs256(), None, &c)).await;
    let body = assert_token_refused(&a, "invalid_token");
    assert!(body["message"].as_str().unwrap().contains("aud"), "{body}");
    let c = claims(ISSUER, "alice", json!({"aud": []}));
    assert_token_refused(&t.send(&token(&t.rs256(), None, &c)).await, "invalid_token");
    assert_eq!(t.up.hits(), 0, "a refused token reached the upstream");
}

#[tokio::test]
async fn token_with_a_crit_header_is_401_invalid_token() {
    let t = TokenWorld::start().await;
    let c = claims(ISSUER, "alice", json!({"aud": "orders-api", "b64": false}));
    for crit in [json!(["b64"]), json!(["exp"]), json!([])] {
        let header = json!({"alg": "RS256", "typ": "JWT", "crit": crit, "b64": false});
        let a = t.send(&token_with_header(&header, &c, &t.rs256())).await;
        let body = assert_token_refused(&a, "invalid_token");
        assert!(body["message"].as_str().unwrap().contains("crit"), "{body}");
    }
    assert_eq!(t.up.hits(), 0, "a refused token reached the upstream");
    // The control: the same claims without crit pass.
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let a = t.send(&token_with_header(&header, &c, &t.rs256())).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
}

#[tokio::test]
async fn typ_is_checked_when_the_issuer_configures_it() {
    let keys = Keys::new();
    let (gw, up) = start_gateway(&format!(
        r#"auth:
  jwt:
    - issuer: "{ISSUER}"
      audience: any
      typ: at+jwt
      algorithms: [RS256]
      pem_files: [{}]
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#,
        keys.pem_file_yaml("rsa")
    ))
    .await;
    let signer = Signer::Rs256(keys.private("rsa"));
    let send = |typ: Option<&str>| {
        let mut header = json!({"alg": "RS256"});
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        let t = token_with_header(&header, &claims(ISSUER, "alice", json!({})), &signer);
        let gw = &gw;
        async move { get(gw, "/orders", &[("authorization", &bearer(&t))]).await }
    };
    // RFC 7515 §4.1.9: case-insensitive, and the `application/` prefix may be left out.
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        assert_identity(&send(Some(typ)).await, "jwt", Some("alice"), None, None);
    }
    let hits = up.hits();
    for typ in [Some("JWT"), Some("application/jwt"), Some("at+jwt2"), None] {
        let a = send(typ).await;
        let body = assert_token_refused(&a, "invalid_token");
        assert!(
            body["message"].as_str().unwrap().contains("typ"),
            "{typ:?}: {body}"
        );
    }
    assert_eq!(up.hits(), hits, "a refused token reached the upstream");
}

#[tokio::test]
async fn exp_is_required_even_when_required_claims_leave_it_out() {
    let keys = Keys::new();
    let (gw, up) = start_gateway(&format!(
        r#"auth:
  jwt:
    - issuer: "{ISSUER}"
      audience: any
      required_claims: [sub]
      algorithms: [RS256]
      pem_files: [{}]
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#,
        keys.pem_file_yaml("rsa")
    ))
    .await;
    let signer = Signer::Rs256(keys.private("rsa"));
    let forever = json!({"iss": ISSUER, "sub": "alice"});
    let a = get(
        &gw,
        "/orders",
        &[("authorization", &bearer(&token(&signer, None, &forever)))],
    )
    .await;
    let body = assert_token_refused(&a, "invalid_token");
    assert!(body["message"].as_str().unwrap().contains("exp"), "{body}");
    assert_eq!(up.hits(), 0, "a token without exp reached the upstream");
    let a = get(
        &gw,
        "/orders",
        &[(
            "authorization",
            &bearer(&token(&signer, None, &claims(ISSUER, "alice", json!({})))),
        )],
    )
    .await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
}

/// Runs `tollgate check` on a file with the `auth.jwt` list `issuers` (and a route that
/// accepts JWTs), the process environment holding `env` (values as raw bytes).
async fn check_issuers(issuers: &str, env: &[(&str, &[u8])]) -> CommandOutput {
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{address: \"127.0.0.1:1\"}}]\n\
             upstreams:\n  - {{name: up, targets: [{{address: \"127.0.0.1:9\"}}]}}\n\
             routes:\n  - {{name: r, path_prefix: /, upstream: up, auth: required}}\n\
             auth:\n  jwt:\n{issuers}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["check", "-c"]).arg(&path).current_dir(dir.path());
    for (name, value) in env {
        cmd.env(name, std::ffi::OsString::from_vec(value.to_vec()));
    }
    support::process::run_command(cmd, Duration::from_secs(20))
        .await
        .unwrap()
        .into()
}

/// Asserts that `out` failed and its stderr holds every one of `needles`.
fn assert_refused_config(out: &CommandOutput, needles: &[&str]) {
    assert!(!out.success(), "{out}");
    for needle in needles {
        assert!(out.stderr.contains(needle), "{needle:?} not said\n{out}");
    }
}

#[tokio::test]
async fn issuer_without_audiences_is_refused_unless_audience_any_is_written() {
    let keys = Keys::new();
    let pem = keys.pem_file_yaml("rsa");
    let out = check_issuers(
        &format!(
            "    - {{issuer: a, algorithms: [RS256], pem_files: [{pem}]}}\n\
             \x20   - {{issuer: b, audiences: [], algorithms: [RS256], pem_files: [{pem}]}}\n\
             \x20   - {{issuer: c, audience: all, algorithms: [RS256], pem_files: [{pem}]}}\n\
             \x20   - {{issuer: d, audience: any, audiences: [x], algorithms: [RS256], pem_files: [{pem}]}}\n"
        ),
        &[],
    )
    .await;
    assert_refused_config(
        &out,
        &[
            "auth.jwt[0].audiences: list the accepted audiences, or write `audience: any`",
            "auth.jwt[1].audiences: list the accepted audiences",
            "auth.jwt[2].audience: \"all\": the only value is `any`",
            "auth.jwt[3].audience: `audience: any` and a list of audiences exclude each other",
        ],
    );
    let out = check_issuers(
        &format!(
            "    - {{issuer: a, audience: any, algorithms: [RS256], pem_files: [{pem}]}}\n\
             \x20   - {{issuer: b, audiences: [orders], algorithms: [RS256], pem_files: [{pem}]}}\n"
        ),
        &[],
    )
    .await;
    assert!(out.success(), "{out}");
}

#[tokio::test]
async fn leeway_over_five_minutes_is_refused_naming_the_field() {
    let keys = Keys::new();
    let pem = keys.pem_file_yaml("rsa");
    let out = check_issuers(
        &format!(
            "    - {{issuer: a, audience: any, leeway: 301s, algorithms: [RS256], pem_files: [{pem}]}}\n\
             \x20   - {{issuer: b, audience: any, leeway: 30d, algorithms: [RS256], pem_files: [{pem}]}}\n"
        ),
        &[],
    )
    .await;
    assert_refused_config(
        &out,
        &[
            "auth.jwt[0].leeway: must be at most 5m",
            "auth.jwt[1].leeway: must be at most 5m",
        ],
    );
    let out = check_issuers(
        &format!("    - {{issuer: a, audience: any, leeway: 5m, algorithms: [RS256], pem_files: [{pem}]}}\n"),
        &[],
    )
    .await;
    assert!(out.success(), "{out}");
}

#[tokio::test]
async fn secret_env_with_secret_encoding_base64url_holds_a_binary_hs256_key() {
    // 32 bytes that are not UTF-8 (and hold a NUL, which no environment variable can).
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37) | 0x80)
        .chain([0])
        .collect();
    assert!(std::str::from_utf8(&key).is_err() && key.contains(&0));
    let encoded = b64url(&key);
    let (gw, up) = start_gateway_with_env(
        &[("TG_TEST_BINARY_SECRET", &encoded)],
        &format!(
            r#"auth:
  jwt:
    - issuer: "{ISSUER}"
      audience: any
      algorithms: [HS256]
      secret_env: TG_TEST_BINARY_SECRET
      secret_encoding: base64url
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#
        ),
    )
    .await;
    let c = || claims(ISSUER, "alice", json!({}));
    let good = token(&Signer::Hs256(key.clone()), None, &c());
    let a = get(&gw, "/orders", &[("authorization", &bearer(&good))]).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    // Keyed with the text of the variable instead of the bytes it encodes: refused.
    let hits = up.hits();
    let text_keyed = token(&Signer::Hs256(encoded.clone().into_bytes()), None, &c());
    let a = get(&gw, "/orders", &[("authorization", &bearer(&text_keyed))]).await;
    assert_token_refused(&a, "invalid_token");
    assert_eq!(up.hits(), hits);
    assert!(!gw.logs().contains(&encoded), "the secret was logged");
}

#[tokio::test]
async fn unusable_secret_env_values_say_what_is_wrong_not_that_the_variable_is_unset() {
    let issuer = |i: usize, env: &str, encoding: &str| {
        format!(
            "    - {{issuer: i{i}, audience: any, algorithms: [HS256], secret_env: {env}{encoding}}}\n"
        )
    };
    let issuers = [
        issuer(0, "TG_JWT_SHORT", ""),
        issuer(1, "TG_JWT_EMPTY", ""),
        issuer(2, "TG_JWT_NOT_B64", ", secret_encoding: base64url"),
        issuer(3, "TG_JWT_SHORT_B64", ", secret_encoding: base64url"),
        issuer(4, "TG_JWT_UNSET_ANYWHERE", ""),
        issuer(5, "TG_JWT_SHORT", ", secret_encoding: hex"),
    ]
    .concat();
    let short_b64 = b64url(&[7u8; 16]);
    let out = check_issuers(
        &issuers,
        &[
            ("TG_JWT_SHORT", b"too short"),
            ("TG_JWT_EMPTY", b""),
            ("TG_JWT_NOT_B64", b"not*base64url!"),
            ("TG_JWT_SHORT_B64", short_b64.as_bytes()),
        ],
    )
    .await;
    assert_refused_config(
        &out,
        &[
            "auth.jwt[0].secret_env: $TG_JWT_SHORT must hold at least 32 bytes (it holds 9)",
            "auth.jwt[1].secret_env: $TG_JWT_EMPTY is set but empty",
            "auth.jwt[2].secret_env: $TG_JWT_NOT_B64 is not valid base64url",
            "auth.jwt[3].secret_env: $TG_JWT_SHORT_B64 must hold at least 32 bytes once decoded (it holds 16)",
            "auth.jwt[4].secret_env: $TG_JWT_UNSET_ANYWHERE is not set",
            "auth.jwt[5].secret_encoding: unknown encoding \"hex\" (raw, base64url, base64)",
        ],
    );
    for set in [
        "TG_JWT_SHORT",
        "TG_JWT_EMPTY",
        "TG_JWT_NOT_B64",
        "TG_JWT_SHORT_B64",
    ] {
        assert!(!out.stderr.contains(&format!("${set} is not set")), "{out}");
    }
    assert!(
        !out.stderr.contains("too short") && !out.stderr.contains("not*base64url"),
        "a value was printed\n{out}"
    );

    // A raw value that is not UTF-8 is a key like any other.
    let out = check_issuers(
        &issuer(0, "TG_JWT_RAW_BINARY", ""),
        &[("TG_JWT_RAW_BINARY", &[0xff; 40])],
    )
    .await;
    assert!(out.success(), "{out}");
}

// ----------------------------------------------------------------------------------------
// RFC 7515 appendix A.2
// ----------------------------------------------------------------------------------------

/// RFC 7515 A.2: an RS256 JWS by `joe`, expiring 2011-03-22 (exp 1300819380).
const RFC7515_A2_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
/// The RSA public key of RFC 7515 A.2.1, as the JWK the appendix prints.
const RFC7515_A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const RFC7515_A2_EXP: u64 = 1_300_819_380;

/// Starts a gateway with issuer `joe` (RS256, consumer claim `iss`, plus `settings`) whose
/// key is RFC 7515 A.2's: as a PEM file (`pem: true`, built from the JWK's n and e) or as
/// the JWK itself in a jwks_file.
async fn rfc7515_gateway(pem: bool, settings: &str) -> (Gateway, TestUpstream, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = if pem {
        use openssl::bn::BigNum;
        let n = BigNum::from_slice(&b64url_decode(RFC7515_A2_N)).unwrap();
        let e = BigNum::from_slice(&b64url_decode("AQAB")).unwrap();
        let rsa = openssl::rsa::Rsa::from_public_components(n, e).unwrap();
        let pem = openssl::pkey::PKey::from_rsa(rsa)
            .unwrap()
            .public_key_to_pem()
            .unwrap();
        let path = dir.path().join("rfc7515-a2.pub.pem");
        std::fs::write(&path, pem).unwrap();
        format!("pem_files: [{{path: \"{}\"}}]", path.display())
    } else {
        let set = json!({"keys": [{"kty": "RSA", "n": RFC7515_A2_N, "e": "AQAB"}]});
        let path = dir.path().join("rfc7515-a2.jwks.json");
        std::fs::write(&path, set.to_string()).unwrap();
        format!("jwks_file: \"{}\"", path.display())
    };
    let (gw, up) = start_gateway(&format!(
        r#"auth:
  jwt:
    - issuer: joe
      audience: any
      algorithms: [RS256]
      consumer_claim: iss
      {key}
{settings}routes:
  - {{name: r, path_prefix: /, upstream: up, auth: required}}
"#
    ))
    .await;
    (gw, up, dir)
}

#[tokio::test]
async fn rfc7515_a2_rs256_vector_verifies() {
    // The vector expired in 2011 and the leeway is capped at 5 minutes, so it can only be
    // refused; but claims are checked only once the signature verified, so `expired_token`
    // (not `invalid_token`) proves the signature was good. `iss` names the consumer.
    let (gw, _up, _dir) = rfc7515_gateway(true, "      leeway: 5m\n").await;
    let a = get(&gw, "/x", &[("authorization", &bearer(RFC7515_A2_TOKEN))]).await;
    assert_token_refused(&a, "expired_token");
    assert!(RFC7515_A2_EXP < now());

    // One character less of the signature, and it fails.
    let cut = &RFC7515_A2_TOKEN[..RFC7515_A2_TOKEN.len() - 1];
    assert_token_refused(
        &get(&gw, "/x", &[("authorization", &bearer(cut))]).await,
        "invalid_token",
    );
}

#[tokio::test]
async fn rfc7515_a2_vector_from_a_jwks_file_is_expired_under_the_default_leeway() {
    let (gw, _up, _dir) = rfc7515_gateway(false, "").await;
    let a = get(&gw, "/x", &[("authorization", &bearer(RFC7515_A2_TOKEN))]).await;
    assert_token_refused(&a, "expired_token");
}

/// Replaces `path` with `contents` in one step (as a deploy tool would).
fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn replaced_pem_file_and_jwks_file_take_effect_on_reload() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("issuer.pub.pem");
    let set = dir.path().join("issuer.jwks.json");
    replace_file(&pem, &std::fs::read(keys.public("rsa")).unwrap());
    replace_file(&set, jwks(&[("k1", &keys.public("rsa"))]).as_bytes());
    let (gw, up) = start_gateway(&format!(
        r#"auth:
  jwt:
    - {{issuer: "https://pem.test/", audience: any, algorithms: [RS256], pem_files: [{{path: "{}"}}]}}
    - {{issuer: "https://jwks.test/", audience: any, algorithms: [RS256], jwks_file: "{}"}}
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#,
        pem.display(),
        set.display()
    ))
    .await;
    let status = |iss: &'static str, key: &'static str| {
        let t = token(
            &Signer::Rs256(keys.private(key)),
            Some("k1"),
            &claims(iss, "alice", json!({})),
        );
        let gw = &gw;
        async move {
            get(gw, "/orders", &[("authorization", &bearer(&t))])
                .await
                .status
        }
    };
    for iss in ["https://pem.test/", "https://jwks.test/"] {
        assert_eq!(
            (status(iss, "rsa").await, status(iss, "rsa2").await),
            (200, 401),
            "{iss}"
        );
    }

    // The issuer rotates to rsa2: both files are replaced, then the gateway is reloaded.
    replace_file(&pem, &std::fs::read(keys.public("rsa2")).unwrap());
    replace_file(&set, jwks(&[("k1", &keys.public("rsa2"))]).as_bytes());
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_for_log("generation 2", Duration::from_secs(5))
            .await,
        "no reload\n{}",
        gw.logs()
    );
    let hits = up.hits();
    for iss in ["https://pem.test/", "https://jwks.test/"] {
        assert_eq!(
            (status(iss, "rsa").await, status(iss, "rsa2").await),
            (401, 200),
            "{iss}"
        );
    }
    assert_eq!(
        up.hits(),
        hits + 2,
        "a token of the replaced key reached the upstream"
    );
}

// ----------------------------------------------------------------------------------------
// JWKS from a URL: rotation, refresh, outages
// ----------------------------------------------------------------------------------------

/// What a [`JwksServer`] answers `GET /jwks` with.
#[derive(Clone)]
enum Reply {
    /// 200 with this body.
    Body(String),
    /// 302 to this location.
    Redirect(String),
}

/// The state a [`JwksServer`] shares with its connection tasks.
struct JwksState {
    reply: Mutex<Reply>,
    /// Requests received so far.
    fetches: AtomicUsize,
    /// The next request is answered with this body, once the notify is given.
    held: Mutex<Option<(String, Arc<tokio::sync::Notify>)>>,
}

/// A JWKS endpoint over plain HTTP or TLS: answers `GET /jwks` with the current [`Reply`],
/// each connection in its own task (so a held answer delays no other).
struct JwksServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<JwksState>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        Self::launch(Reply::Body(body), None).await
    }

    /// Serves over TLS with `cert` (clients must trust its CA).
    async fn start_tls(reply: Reply, cert: &LeafCert) -> Self {
        Self::launch(reply, Some(http1_tls_acceptor(cert))).await
    }

    async fn launch(reply: Reply, tls: Option<openssl::ssl::SslAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(JwksState {
            reply: Mutex::new(reply),
            fetches: AtomicUsize::new(0),
            held: Mutex::new(None),
        });
        let shared = Arc::clone(&state);
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                match &tls {
                    None => connections.spawn(answer_jwks(conn, state)),
                    Some(acceptor) => {
                        let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                        connections.spawn(async move {
                            let mut stream = tokio_openssl::SslStream::new(ssl, conn).unwrap();
                            if std::pin::Pin::new(&mut stream).accept().await.is_ok() {
                                answer_jwks(stream, state).await;
                            }
                        })
                    }
                };
            }
        });
        JwksServer {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// Requests received so far.
    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/jwks", self.addr)
    }

    fn serve(&self, body: String) {
        *self.state.reply.lock().unwrap() = Reply::Body(body);
    }

    fn redirect_to(&self, location: &str) {
        *self.state.reply.lock().unwrap() = Reply::Redirect(location.to_string());
    }

    /// The next request gets `body` (whatever is served by then), answered only once the
    /// returned notify is given.
    fn hold_next(&self, body: String) -> Arc<tokio::sync::Notify> {
        let release = Arc::new(tokio::sync::Notify::new());
        *self.state.held.lock().unwrap() = Some((body, Arc::clone(&release)));
        release
    }

    /// Stops listening: fetches are refused from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Reads one request head from `conn` and answers it as [`JwksServer`] says.
async fn answer_jwks<S>(mut conn: S, state: Arc<JwksState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let held = state.held.lock().unwrap().take();
    let reply = match held {
        Some((body, release)) => {
            release.notified().await;
            Reply::Body(body)
        }
        None => state.reply.lock().unwrap().clone(),
    };
    let (status, location, text) = match reply {
        _ if !request.starts_with(b"GET /jwks ") => ("404 Not Found", String::new(), String::new()),
        Reply::Body(text) => ("200 OK", String::new(), text),
        Reply::Redirect(to) => ("302 Found", format!("location: {to}\r\n"), String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{location}\
         content-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// The RSA public key in the PEM file `path` as a JWK (RFC 7517), with `kid` if any.
fn rsa_jwk(kid: Option<&str>, path: &Path) -> Value {
    let pem = std::fs::read(path).unwrap();
    let rsa = openssl::rsa::Rsa::public_key_from_pem(&pem).unwrap();
    let mut jwk = json!({
        "kty": "RSA", "use": "sig", "alg": "RS256",
        "n": b64url(&rsa.n().to_vec()), "e": b64url(&rsa.e().to_vec()),
    });
    if let Some(kid) = kid {
        jwk["kid"] = json!(kid);
    }
    jwk
}

/// A JWKS holding the RSA public keys `(kid, pem file)`.
fn jwks(keys: &[(&str, &Path)]) -> String {
    let keys: Vec<Value> = keys.iter().map(|(kid, p)| rsa_jwk(Some(kid), p)).collect();
    json!({ "keys": keys }).to_string()
}

/// A gateway whose only key source for [`ISSUER`] (RS256) is the plain-http `url`,
/// refreshed after `refresh`, refetched for unknown kids at most every `min_refresh`.
async fn jwks_gateway(url: &str, refresh: &str, min_refresh: &str) -> (Gateway, TestUpstream) {
    let settings = format!(
        "      allow_insecure_jwks: true\n      jwks_refresh: {refresh}\n      jwks_min_refresh: {min_refresh}\n"
    );
    jwks_gateway_with(url, &settings, &[]).await
}

/// A gateway whose only key source for [`ISSUER`] (RS256) is `url`, with `settings` (YAML
/// lines of the issuer) and `env` for the gateway process.
async fn jwks_gateway_with(
    url: &str,
    settings: &str,
    env: &[(&str, &str)],
) -> (Gateway, TestUpstream) {
    start_gateway_with_env(
        env,
        &format!(
            r#"auth:
  jwt:
    - issuer: "{ISSUER}"
      audience: any
      algorithms: [RS256]
      jwks_url: "{url}"
{settings}routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#
        ),
    )
    .await
}

/// A new RS256 token of [`ISSUER`] for alice, signed with key pair `key`, naming `kid`.
fn rs256_token(keys: &Keys, key: &str, kid: Option<&str>) -> String {
    let c = claims(ISSUER, "alice", json!({}));
    token(&Signer::Rs256(keys.private(key)), kid, &c)
}

/// Sends `/orders` with a token from `make` every 50 ms until the gateway answers `status`;
/// panics after 5 s.
async fn wait_for_status(gw: &Gateway, mut make: impl FnMut() -> String, status: u16) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = get(gw, "/orders", &[("authorization", &bearer(&make()))]).await;
        if a.status == status {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {status} after 5 s: {}\n{}",
            a.status,
            a.body,
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_token(gw: &Gateway, token: &str) -> Answer {
    get(gw, "/orders", &[("authorization", &bearer(token))]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_accepts_the_new_kid_at_once_and_drops_the_old_one() {
    let keys = Keys::new();
    let server = JwksServer::start(jwks(&[("k1", &keys.public("rsa"))])).await;
    let (gw, _up) = jwks_gateway(&server.url(), "200ms", "0s").await;

    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    // Before the rotation k2 is not published.
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k2"))).await;
    assert_token_refused(&a, "invalid_token");

    server.serve(jwks(&[("k2", &keys.public("rsa2"))]));
    // An unknown kid triggers a fetch: the first request with k2 passes.
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k2"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    // k1 is gone from the set: tokens signed with it now fail.
    let a = wait_for_status(&gw, || rs256_token(&keys, "rsa", Some("k1")), 401).await;
    assert_token_refused(&a, "invalid_token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_accepted_before_its_key_was_withdrawn_is_refused_after_the_refresh() {
    let keys = Keys::new();
    let server = JwksServer::start(jwks(&[("k1", &keys.public("rsa"))])).await;
    let (gw, _up) = jwks_gateway(&server.url(), "200ms", "0s").await;
    let old = rs256_token(&keys, "rsa", Some("k1"));
    assert_eq!(send_token(&gw, &old).await.status, 200);

    // The issuer withdraws k1 (say, it leaked); a k2 token makes the gateway fetch the new set.
    server.serve(jwks(&[("k2", &keys.public("rsa2"))]));
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k2"))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_token_refused(
        &send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await,
        "invalid_token",
    );
    // The very token accepted before must now fail too, not live on for the token's life.
    let a = wait_for_status(&gw, || old.clone(), 401).await;
    assert_token_refused(&a, "invalid_token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outage_keeps_the_last_good_keys() {
    let keys = Keys::new();
    let server = JwksServer::start(jwks(&[("k1", &keys.public("rsa"))])).await;
    let (gw, _up) = jwks_gateway(&server.url(), "200ms", "0s").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);

    server.stop().await;
    // Keep sending new k1 tokens until a refresh has failed (jwks_refresh is 200 ms); they
    // must pass throughout, and after.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.stderr().contains("fetch failed") {
        let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            Instant::now() < deadline,
            "no failed JWKS fetch logged\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unknown kid forces a fetch, which fails too; the known key still verifies.
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k9"))).await;
    assert_token_refused(&a, "invalid_token");
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_refreshed_in_the_background_after_jwks_refresh() {
    // Tokens without kid: nothing forces a fetch, only the periodic refresh.
    let keys = Keys::new();
    let set = |name: &str| json!({"keys": [rsa_jwk(None, &keys.public(name))]}).to_string();
    let server = JwksServer::start(set("rsa")).await;
    let (gw, _up) = jwks_gateway(&server.url(), "200ms", "0s").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", None)).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);

    server.serve(set("rsa2"));
    let a = wait_for_status(&gw, || rs256_token(&keys, "rsa2", None), 200).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    let a = send_token(&gw, &rs256_token(&keys, "rsa", None)).await;
    assert_token_refused(&a, "invalid_token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_the_jwks_at_most_every_jwks_min_refresh() {
    let keys = Keys::new();
    let server = JwksServer::start(jwks(&[("k1", &keys.public("rsa"))])).await;
    let (gw, _up) = jwks_gateway(&server.url(), "1h", "1h").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    assert_eq!(server.fetches(), 1, "the first token fetches the set");

    // A flood of tokens naming unknown kids does not reach the key server again.
    for i in 0..5 {
        let kid = format!("unknown-{i}");
        let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some(&kid))).await;
        assert_token_refused(&a, "invalid_token");
    }
    assert_eq!(server.fetches(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_offered_by_the_token_jku_or_jwk_header_are_never_used() {
    let keys = Keys::new();
    let (gw, _up) = start_gateway(&format!(
        r#"auth:
  jwt:
    - {{issuer: "{ISSUER}", audience: any, algorithms: [RS256], pem_files: [{}]}}
routes:
  - {{name: orders, path_prefix: /orders, upstream: up, auth: required}}
"#,
        keys.pem_file_yaml("rsa")
    ))
    .await;
    // The attacker's own key set, signed for with the attacker's key (rsa2).
    let evil = JwksServer::start(jwks(&[("evil", &keys.public("rsa2"))])).await;
    let header = json!({
        "alg": "RS256", "typ": "JWT", "kid": "evil",
        "jku": evil.url(), "x5u": evil.url(),
        "jwk": rsa_jwk(Some("evil"), &keys.public("rsa2")),
    });
    let c = claims(ISSUER, "admin", json!({}));
    let forged = token_with_header(&header, &c, &Signer::Rs256(keys.private("rsa2")));
    let a = get(&gw, "/orders", &[("authorization", &bearer(&forged))]).await;
    assert_token_refused(&a, "invalid_token");
    assert_eq!(evil.fetches(), 0, "the gateway fetched the token's jku/x5u");
    evil.stop().await;
}

#[tokio::test]
async fn jwks_url_over_plain_http_is_refused_unless_allow_insecure_jwks() {
    let out = check_issuers(
        "    - {issuer: a, audience: any, algorithms: [RS256], jwks_url: \"http://keys.example/jwks\"}\n\
         \x20   - {issuer: b, audience: any, algorithms: [RS256], jwks_url: \"ftp://keys.example/jwks\"}\n\
         \x20   - {issuer: c, audience: any, algorithms: [RS256], jwks_url: \"https://keys.example/jwks\", allow_insecure_jwks: true, jwks_file: x.json}\n",
        &[],
    )
    .await;
    assert_refused_config(
        &out,
        &[
            "auth.jwt[0].jwks_url: \"http://keys.example/jwks\" is plain http: key sets must be fetched over https (or set allow_insecure_jwks: true)",
            "auth.jwt[1].jwks_url: \"ftp://keys.example/jwks\" is not an https URL",
        ],
    );
    let out = check_issuers(
        "    - {issuer: a, audience: any, algorithms: [RS256], jwks_url: \"http://keys.example/jwks\", allow_insecure_jwks: true}\n\
         \x20   - {issuer: b, audience: any, algorithms: [RS256], jwks_url: \"https://keys.example/jwks\"}\n",
        &[],
    )
    .await;
    assert!(out.success(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_fetched_over_https_and_a_redirect_to_plain_http_is_not_followed() {
    let keys = Keys::new();
    let certs = Certs::new();
    let cert = certs.leaf("jwks", &["127.0.0.1"]);
    let set = jwks(&[("k1", &keys.public("rsa"))]);
    let server = JwksServer::start_tls(Reply::Body(set.clone()), &cert).await;
    let ca = certs.ca_path().to_str().unwrap().to_string();
    let trust = [("SSL_CERT_FILE", ca.as_str())];
    let (gw, up) = jwks_gateway_with(&server.url(), "      jwks_min_refresh: 0s\n", &trust).await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    assert!(server.url().starts_with("https://"));

    // A second https key server that redirects to a plain-http one holding the attacker's key.
    let plain = JwksServer::start(jwks(&[("evil", &keys.public("rsa2"))])).await;
    let redirecting = JwksServer::start_tls(Reply::Redirect(plain.url()), &cert).await;
    let (gw, up2) =
        jwks_gateway_with(&redirecting.url(), "      jwks_min_refresh: 0s\n", &trust).await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("evil"))).await;
    assert_token_refused(&a, "invalid_token");
    assert_eq!(redirecting.fetches(), 1, "{}", gw.logs());
    assert_eq!(plain.fetches(), 0, "the redirect to http was followed");
    assert!(gw.stderr().contains("fetch failed"), "{}", gw.logs());
    assert_eq!((up.hits(), up2.hits()), (1, 0));
    server.stop().await;
    redirecting.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_redirect_to_another_host_is_not_followed() {
    let keys = Keys::new();
    // The other host (`localhost`, not 127.0.0.1) serves the attacker's key.
    let other = JwksServer::start(jwks(&[("evil", &keys.public("rsa2"))])).await;
    let elsewhere = other.url().replace("127.0.0.1", "localhost");
    let server = JwksServer::start(String::new()).await;
    server.redirect_to(&elsewhere);
    let (gw, up) = jwks_gateway_with(
        &server.url(),
        "      allow_insecure_jwks: true\n      jwks_min_refresh: 0s\n",
        &[],
    )
    .await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("evil"))).await;
    assert_token_refused(&a, "invalid_token");
    assert_eq!(server.fetches(), 1);
    assert_eq!(
        other.fetches(),
        0,
        "the redirect to another host was followed"
    );
    assert!(
        gw.stderr().contains("not the same origin as the jwks_url"),
        "{}",
        gw.logs()
    );
    assert_eq!(up.hits(), 0);
    server.stop().await;
    other.stop().await;
}

/// Sends a token naming an unknown kid (a foreground fetch, `jwks_min_refresh: 0s`) and
/// waits until the gateway logs `needle` about it.
async fn force_fetch_and_wait_for_log(gw: &Gateway, keys: &Keys, needle: &str) {
    let a = send_token(gw, &rs256_token(keys, "rsa2", Some("k9"))).await;
    assert_token_refused(&a, "invalid_token");
    assert!(
        gw.wait_for_log(needle, Duration::from_secs(5)).await,
        "no {needle:?} logged\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_answer_over_1_mib_is_a_failed_fetch_that_keeps_the_last_good_keys() {
    let keys = Keys::new();
    let server = JwksServer::start(jwks(&[("k1", &keys.public("rsa"))])).await;
    let (gw, _up) = jwks_gateway(&server.url(), "1h", "0s").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);

    // A well-formed set holding k2 (and k9), padded past 1 MiB.
    let mut big: Value = serde_json::from_str(&jwks(&[
        ("k2", &keys.public("rsa2")),
        ("k9", &keys.public("rsa2")),
    ]))
    .unwrap();
    big["padding"] = json!("x".repeat(1024 * 1024));
    server.serve(big.to_string());
    force_fetch_and_wait_for_log(&gw, &keys, "larger than 1048576 bytes").await;
    // k2 was never taken from it; k1 still works.
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k2"))).await;
    assert_token_refused(&a, "invalid_token");
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_answer_without_a_usable_key_is_a_failed_fetch_that_keeps_the_last_good_keys() {
    let keys = Keys::new();
    let server = JwksServer::start(jwks(&[("k1", &keys.public("rsa"))])).await;
    let (gw, _up) = jwks_gateway(&server.url(), "1h", "0s").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);

    // An HMAC key is no use to an RS256 issuer.
    let oct = json!({"keys": [{"kty": "oct", "kid": "k9", "k": b64url(JWT_SECRET.as_bytes())}]});
    server.serve(oct.to_string());
    force_fetch_and_wait_for_log(&gw, &keys, "none of its 1 keys is usable").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);

    server.serve(json!({"keys": []}).to_string());
    force_fetch_and_wait_for_log(&gw, &keys, "none of its 0 keys is usable").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_older_jwks_fetch_never_replaces_a_newer_key_set() {
    let keys = Keys::new();
    let old_set = jwks(&[("k1", &keys.public("rsa"))]);
    let server = JwksServer::start(old_set.clone()).await;
    let (gw, _up) = jwks_gateway(&server.url(), "1s", "0s").await;
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    assert_eq!(server.fetches(), 1);

    // The next fetch (the background refresh) is answered late, with the old set; by then
    // the issuer has withdrawn k1 and published k2.
    let release = server.hold_next(old_set);
    server.serve(jwks(&[("k2", &keys.public("rsa2"))]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.fetches() < 2 {
        let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            Instant::now() < deadline,
            "no background refresh\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A k2 token fetches in the foreground (started later) and gets the new set at once.
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k2"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    assert_eq!(server.fetches(), 3);

    // Now the old answer arrives: it is discarded, k1 stays withdrawn.
    release.notify_one();
    assert!(
        gw.wait_for_log(
            "discarded the answer of an older fetch",
            Duration::from_secs(5)
        )
        .await,
        "{}",
        gw.logs()
    );
    let a = send_token(&gw, &rs256_token(&keys, "rsa", Some("k1"))).await;
    assert_token_refused(&a, "invalid_token");
    let a = send_token(&gw, &rs256_token(&keys, "rsa2", Some("k2"))).await;
    assert_identity(&a, "jwt", Some("alice"), None, None);
    server.stop().await;
}

// ----------------------------------------------------------------------------------------
// Client IP and trusted proxies
// ----------------------------------------------------------------------------------------

/// The `client_ip` the access log records for a request with `headers`, on a gateway with
/// `trusted_proxies` (`None`: the setting is left out), believed for `x-forwarded-for`, or
/// for `forwarded` when `headers` has one.
async fn logged_client_ip(trusted_proxies: Option<&str>, headers: &[(&str, &str)]) -> String {
    let believed = if headers.iter().any(|(name, _)| *name == "forwarded") {
        "forwarded"
    } else {
        "x-forwarded-for"
    };
    let auth = trusted_proxies.map_or(String::new(), |t| {
        format!("auth:\n  trusted_proxies: {t}\n  client_ip_header: {believed}\n")
    });
    let (gw, _up) = start_gateway(&format!(
        "{auth}routes:\n  - {{name: open, path_prefix: /, upstream: up}}\n"
    ))
    .await;
    let a = get(&gw, "/x", headers).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let entry = access_log_entry(&gw, a.header("x-request-id").unwrap()).await;
    entry["client_ip"].as_str().unwrap_or("<none>").to_string()
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_the_logged_client_ip() {
    let ip = logged_client_ip(
        Some(r#"["127.0.0.1/32"]"#),
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(ip, "198.51.100.7");
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let ip = logged_client_ip(None, &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(ip, "127.0.0.1");
    // Nor believed from a peer outside the trusted networks.
    let ip = logged_client_ip(
        Some(r#"["10.0.0.0/8"]"#),
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(ip, "127.0.0.1");
}

#[tokio::test]
async fn spoofed_leftmost_forwarded_for_entries_are_not_believed() {
    let ip = logged_client_ip(
        Some(r#"["127.0.0.1/32"]"#),
        &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")],
    )
    .await;
    assert_eq!(ip, "198.51.100.7");
    // Trusted hops on the right are walked past; the first untrusted one is the client.
    let ip = logged_client_ip(
        Some(r#"["127.0.0.1/32", "10.0.0.0/8"]"#),
        &[(
            "x-forwarded-for",
            "6.6.6.6, 198.51.100.7, 10.1.2.3, 10.0.0.9",
        )],
    )
    .await;
    assert_eq!(ip, "198.51.100.7");
}

#[tokio::test]
async fn forwarded_header_is_used_when_configured() {
    // A bare address is a /32.
    let ip = logged_client_ip(
        Some(r#"["127.0.0.1"]"#),
        &[("forwarded", "for=198.51.100.9;proto=https")],
    )
    .await;
    assert_eq!(ip, "198.51.100.9");
}

#[tokio::test]
async fn refused_requests_behind_a_trusted_proxy_log_the_forwarded_client_ip() {
    let (gw, _up) = start_gateway(
        "auth:\n  trusted_proxies: [\"127.0.0.1/32\"]\n  client_ip_header: x-forwarded-for\n\
         routes:\n  \
         - {name: open, path_prefix: /open, upstream: up}\n  \
         - {name: closed, path_prefix: /closed, upstream: up, auth: required}\n",
    )
    .await;
    let xff = [("x-forwarded-for", "198.51.100.7")];
    let mut wrong = Vec::new();
    for (path, status) in [("/open", 200), ("/closed", 401), ("/nowhere", 404)] {
        let a = get(&gw, path, &xff).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        let entry = access_log_entry(&gw, a.header("x-request-id").unwrap()).await;
        if entry["client_ip"] != "198.51.100.7" {
            wrong.push(format!("{path} ({status}) logged {}", entry["client_ip"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "the proxy, not the client, was logged: {}",
        wrong.join("; ")
    );
}

// ----------------------------------------------------------------------------------------
// The command line: `tollgate key new`, `tollgate check`
// ----------------------------------------------------------------------------------------

/// Runs the `tollgate` binary with `args` in a temp dir, with `env` set and `unset` removed.
async fn tollgate_cli(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> CommandOutput {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args).current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    support::process::run_command(cmd, Duration::from_secs(20))
        .await
        .unwrap()
        .into()
}

#[tokio::test]
async fn key_new_prints_a_key_whose_hash_is_the_hmac_of_the_pepper_and_it_works() {
    let out = tollgate_cli(
        &["key", "new", "--id", "ci-key", "--pepper-env", PEPPER_ENV],
        &[(PEPPER_ENV, PEPPER)],
        &[],
    )
    .await;
    assert!(out.success(), "{out}");
    let key = out
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tg_"))
        .unwrap_or_else(|| panic!("no key printed\n{out}"))
        .to_string();
    let (public, secret) = key["tg_".len()..].split_once('_').unwrap();
    assert!(
        public.len() == 8
            && secret.len() == 32
            && (public.to_string() + secret)
                .bytes()
                .all(|b| b.is_ascii_alphanumeric()),
        "key shape: {key}"
    );
    let printed_hash = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("hash: "))
        .unwrap_or_else(|| panic!("no hash printed\n{out}"));
    assert_eq!(
        printed_hash,
        hmac_hex(PEPPER, &key),
        "hash is not HMAC(pepper, key)"
    );
    assert!(
        out.stdout.contains(&format!("prefix: tg_{public}")),
        "{out}"
    );

    // The printed lines, pasted under a consumer's `keys:`, make a working key.
    let block: String = out
        .stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("- id:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (gw, _up) = start_gateway(&format!(
        "auth:\n  api_key: {{pepper_env: {PEPPER_ENV}}}\nconsumers:\n  - id: ci\n    keys:\n{block}\
         routes:\n  - {{name: r, path_prefix: /, upstream: up, auth: required}}\n"
    ))
    .await;
    let a = get(&gw, "/x", &[("x-api-key", &key)]).await;
    assert_identity(&a, "api_key", Some("ci"), None, None);

    // Without --id the key's id is its display prefix.
    let out = tollgate_cli(&["key", "new"], &[("TOLLGATE_KEY_PEPPER", PEPPER)], &[]).await;
    assert!(out.success(), "{out}");
    let prefix = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("prefix: "))
        .unwrap_or_else(|| panic!("no prefix printed\n{out}"));
    assert!(out.stdout.contains(&format!("- id: {prefix}\n")), "{out}");
}

#[tokio::test]
async fn key_new_without_the_pepper_fails_with_a_clear_message() {
    let out = tollgate_cli(&["key", "new"], &[], &["TOLLGATE_KEY_PEPPER"]).await;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("TOLLGATE_KEY_PEPPER"), "{out}");
    assert!(
        !out.stdout.contains("tg_"),
        "a key was printed anyway\n{out}"
    );

    // A pepper shorter than 16 bytes is refused the same way.
    let out = tollgate_cli(
        &["key", "new", "--pepper-env", PEPPER_ENV],
        &[(PEPPER_ENV, "short")],
        &[],
    )
    .await;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains(PEPPER_ENV), "{out}");
    assert!(!out.stdout.contains("tg_"), "{out}");
}

#[tokio::test]
async fn check_and_serve_refuse_keys_without_the_pepper_naming_pepper_env() {
    let unset_var = format!("TG_PEPPER_NEVER_SET_{}", std::process::id());
    let key = new_api_key();
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "auth:\n  api_key: {{pepper_env: {unset_var}}}\n\
         upstreams:\n  - {{name: up, targets: [{{address: \"127.0.0.1:9\"}}]}}\n\
         routes:\n  - {{name: r, path_prefix: /, upstream: up, auth: required}}\n\
         consumers:\n  - id: alice\n    keys:\n      - {{id: k1, hash: {}}}\n",
        key.hash
    ));

    let out = Gateway::check(&yaml).await;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("auth.api_key.pepper_env"), "{out}");
    assert!(out.stderr.contains(&unset_var), "{out}");

    let out = Gateway::start_expect_failure(cfg, &yaml).await;
    assert!(!out.success(), "{out}");
    assert!(
        (out.stderr.clone() + &out.stdout).contains("auth.api_key.pepper_env"),
        "{out}"
    );

    // With the variable set, the same file is fine.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = tollgate_cli(
        &["check", "-c", path.to_str().unwrap()],
        &[(&unset_var, PEPPER)],
        &[],
    )
    .await;
    assert!(out.success(), "{out}");
}
