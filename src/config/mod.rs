//! Configuration: the YAML file ([`raw`]), its validation ([`validate`]) and the typed model
//! ([`model`]) the rest of the gateway runs on; [`limits`] is the one validation of rate
//! limits, wherever they come from.

pub mod limits;
pub mod model;
pub mod raw;
pub mod validate;

pub use model::*;
use std::path::{Path, PathBuf};

/// Why a configuration file was refused. Every problem is listed, each with its place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {}", path.display(), problems.join(&format!("\n{}: ", path.display())))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// Each problem as one line, without the file name (for JSON answers and metrics logs).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { source, .. } => vec![format!("cannot read: {source}")],
            ConfigError::Invalid { problems, .. } => problems.clone(),
        }
    }
}

/// Reads and validates the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Parses and validates YAML text; relative paths in it are taken from `base_dir`.
pub fn parse(text: &str, base_dir: &Path) -> Result<Config, Vec<String>> {
    let raw: raw::RawConfig = serde_yaml::from_str(text).map_err(|e| vec![yaml_error(&e)])?;
    validate::validate(raw, base_dir)
}

/// serde_yaml says `routes[1]: unknown field ...at line 7 column 5`; keep that, phrased as
/// `line 7: routes[1]: unknown field ...` so the place comes first like every other problem.
fn yaml_error(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let message = text.strip_suffix(&suffix).unwrap_or(&text);
            format!("line {}: {message}", loc.line())
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
listeners: [{address: '127.0.0.1:8080'}]
upstreams:
  - name: orders
    targets: [{address: '127.0.0.1:9000', weight: 3}, {address: '127.0.0.1:9001'}]
routes:
  - {name: orders, path_prefix: /orders/, upstream: orders, methods: [get, POST]}
";

    #[test]
    fn valid_file_becomes_typed_model() {
        let c = parse(BASE, Path::new(".")).unwrap();
        assert_eq!(c.upstreams[0].targets[0].weight, 3);
        assert_eq!(c.upstreams[0].targets[1].weight, 1);
        assert_eq!(c.routes[0].path_prefix, "/orders");
        assert_eq!(
            c.routes[0].methods,
            Some(vec![http::Method::GET, http::Method::POST])
        );
        assert_eq!(c.server.health_path.as_deref(), Some("/health"));
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = "
listeners: [{address: 'nope'}]
upstreams:
  - name: a
    targets: [{address: '127.0.0.1:1', weight: 0}]
  - name: a
    targets: []
routes:
  - {name: r, path_prefix: api, upstream: ordrs}
  - {name: r, path_prefix: /x, upstream: a, methods: [FETCH], timeouts: {read: soon}}
";
        let problems = parse(text, Path::new(".")).unwrap_err();
        let expect = [
            "listeners[0].address: \"nope\" is not an address of the form host:port",
            "upstreams[0].targets[0].weight: must be at least 1",
            "upstreams[1].name: duplicate upstream name \"a\"",
            "upstreams[1].targets: an upstream needs at least one target",
            "routes[0].upstream: no upstream named \"ordrs\"",
            "routes[0].path_prefix: \"api\" must start with '/'",
            "routes[1].name: duplicate route name \"r\"",
            "routes[1].methods[0]: unknown HTTP method \"FETCH\"",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p == e),
                "missing {e:?} in {problems:#?}"
            );
        }
        assert!(problems
            .iter()
            .any(|p| p.starts_with("routes[1].timeouts.read:")));
    }

    #[test]
    fn unknown_field_names_line_and_path() {
        let text =
            "listeners: [{address: '127.0.0.1:8080'}]\nroutes:\n  - name: r\n    upstrem: a\n";
        let problems = parse(text, Path::new(".")).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("line 4: routes[0]: unknown field `upstrem`"),
            "{problems:?}"
        );
    }

    #[test]
    fn plans_and_route_limits_are_typed() {
        let text = format!(
            "{BASE}  - name: limited
    path_prefix: /limited
    upstream: orders
    rate_limit:
      global: {{limits: [{{requests: 5, per: 1s}}]}}
      failure_mode: closed
plans:
  - name: gold
    algorithm: token_bucket
    limits: [{{requests: 10, per: 1s, burst: 20}}, {{requests: 1000, per: 1h}}]
    concurrency: 4
  - name: free
rate_limit:
  anonymous: {{limits: [{{requests: 60, per: 1m}}]}}
  default_plan: free
"
        );
        let c = parse(&text, Path::new(".")).unwrap();
        let gold = c.plans[0].limits.as_ref().unwrap();
        assert_eq!(gold.algorithm, crate::limit::Algorithm::TokenBucket);
        assert_eq!(gold.windows[0].burst, Some(20));
        assert_eq!(gold.windows[1].per, std::time::Duration::from_secs(3600));
        assert_eq!(gold.concurrency, Some(4));
        assert!(c.plans[1].limits.is_none());
        assert_eq!(
            c.rate_limit.failure_mode,
            FailureMode::Local {
                expected_instances: 1
            }
        );
        assert_eq!(
            c.rate_limit.status_path.as_deref(),
            Some(DEFAULT_LIMIT_STATUS_PATH)
        );
        assert_eq!(c.routes[1].limits.failure_mode, Some(FailureMode::Closed));
        assert_eq!(
            c.routes[1].limits.global.as_ref().unwrap().windows[0].requests,
            5
        );
    }

    #[test]
    fn bad_limits_are_reported() {
        let text = format!(
            "{BASE}plans:
  - {{name: p, algorithm: leaky, limits: [{{requests: 0, per: 500ms, burst: 3}}]}}
rate_limit: {{default_plan: nope, failure_mode: maybe}}
"
        );
        let problems = parse(&text, Path::new(".")).unwrap_err();
        for expected in [
            "plans[0].algorithm: unknown algorithm \"leaky\"",
            "plans[0].limits[0].per: must be a whole number of seconds",
            "plans[0].limits[0].requests: must be at least 1",
            "rate_limit.default_plan: no plan named \"nope\"",
            "rate_limit.failure_mode: unknown failure mode \"maybe\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn database_tls_is_typed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg-ca.pem"), "").unwrap();
        let with_tls = |tls: &str| {
            let text = format!("{BASE}database:\n  url: postgres://u@db/tollgate\n{tls}");
            parse(&text, dir.path())
        };
        let tls_of = |tls: &str| with_tls(tls).unwrap().database.unwrap().tls;
        assert_eq!(tls_of(""), DatabaseTls::Disable);
        assert_eq!(tls_of("  tls: {mode: disable}\n"), DatabaseTls::Disable);
        assert_eq!(tls_of("  tls: {mode: require}\n"), DatabaseTls::Require);
        assert_eq!(
            tls_of("  tls: {mode: verify_full}\n"),
            DatabaseTls::VerifyFull { ca_file: None }
        );
        assert_eq!(
            tls_of("  tls: {mode: verify_full, ca_file: pg-ca.pem}\n"),
            DatabaseTls::VerifyFull {
                ca_file: Some(dir.path().join("pg-ca.pem"))
            }
        );

        for (tls, expected) in [
            (
                "  tls: {mode: verify-full}\n",
                "database.tls.mode: unknown mode \"verify-full\" (disable, require, verify_full)"
                    .to_string(),
            ),
            (
                "  tls: {mode: verify_full, ca_file: nope.pem}\n",
                format!(
                    "database.tls.ca_file: no readable file at {}",
                    dir.path().join("nope.pem").display()
                ),
            ),
            (
                "  tls: {mode: require, ca_file: pg-ca.pem}\n",
                "database.tls.ca_file: only used with mode verify_full, not \"require\""
                    .to_string(),
            ),
        ] {
            assert_eq!(with_tls(tls).unwrap_err(), vec![expected], "{tls}");
        }
        let problems = with_tls("  tls: {ca_file: pg-ca.pem}\n").unwrap_err();
        assert!(problems[0].contains("missing field `mode`"), "{problems:?}");
        let problems = with_tls("  tls: {mode: require, sslmode: on}\n").unwrap_err();
        assert!(
            problems[0].contains("unknown field `sslmode`"),
            "{problems:?}"
        );
    }

    #[test]
    fn listener_changes_need_a_restart_but_routes_do_not() {
        let a = parse(BASE, Path::new(".")).unwrap();
        let mut b = a.clone();
        b.routes[0].strip_prefix = true;
        assert!(a.restart_needed(&b).is_empty());
        b.listeners[0].address = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(a.restart_needed(&b), vec!["listeners"]);
    }

    #[test]
    fn admin_tokens_need_256_bits() {
        use validate::strong_token;
        for strong in [
            // openssl rand -hex 32, openssl rand -base64 32
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V70pqAkJbE=",
            "admin-token-one-7f3a9c1e5b2d8f4a6c0e9b1d3f5a7c9e2b4d6f8a1c3e5",
        ] {
            assert!(strong_token(strong.as_bytes()), "{strong}");
        }
        for weak in [
            "admin-token-0123456789",
            // openssl rand -hex 16: 128 bits
            "9f86d081884c7d659a2feaa0c55ad015",
            &"a".repeat(100),
            &"ab".repeat(60),
            "",
        ] {
            assert!(!strong_token(weak.as_bytes()), "{weak}");
        }
    }
}
