//! TLS on the connections to PostgreSQL: the connector for a [`DatabaseTls`] mode, and
//! the driver's `sslmode` that goes with it.
//!
//! `tls:` in the config is the way to turn TLS on; an `sslmode` in the URL is left
//! alone unless it contradicts the mode, which is refused rather than silently overridden.

use super::DbError;
use crate::config::DatabaseTls;
use openssl::error::ErrorStack;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use std::path::Path;
use tokio_postgres::config::SslMode;

/// How a connection is opened.
pub(crate) enum Connector {
    /// Without TLS.
    Plain,
    /// Through OpenSSL, verifying what the mode asks for.
    Tls(MakeTlsConnector),
}

/// Sets the `sslmode` of `config` (parsed from the URL) for `tls` and returns the
/// connector to use with it. Reads the CA file now, so a bad one fails here.
///
/// With TLS on, `sslmode` becomes `require`: the driver's default, `prefer`, would fall
/// back to a plain connection when the server does not offer TLS.
pub(crate) fn connector(
    config: &mut tokio_postgres::Config,
    tls: &DatabaseTls,
) -> Result<Connector, DbError> {
    let url_mode = config.get_ssl_mode();
    let connector = match tls {
        DatabaseTls::Disable if url_mode == SslMode::Require => {
            return Err(invalid(
                "the URL has sslmode=require: set database.tls.mode (require or verify_full) instead",
            ));
        }
        DatabaseTls::Disable => return Ok(Connector::Plain),
        DatabaseTls::Require => unverified()?,
        DatabaseTls::VerifyFull { ca_file } => {
            MakeTlsConnector::new(verifying(ca_file.as_deref())?.build())
        }
    };
    if url_mode == SslMode::Disable {
        return Err(invalid(
            "the URL has sslmode=disable, which contradicts database.tls.mode: remove it from the URL",
        ));
    }
    config.ssl_mode(SslMode::Require);
    Ok(Connector::Tls(connector))
}

/// Encrypts without checking the server's certificate.
fn unverified() -> Result<MakeTlsConnector, DbError> {
    let mut builder = builder()?;
    builder.set_verify(SslVerifyMode::NONE);
    let mut connector = MakeTlsConnector::new(builder.build());
    connector.set_callback(|connection, _| {
        connection.set_verify_hostname(false);
        Ok(())
    });
    Ok(connector)
}

/// Verifies the chain against the CAs of `ca_file` (the system's roots if `None`) and,
/// per connection, that the certificate names the URL's host (name or IP address).
fn verifying(ca_file: Option<&Path>) -> Result<SslConnectorBuilder, DbError> {
    let mut builder = builder()?;
    match ca_file {
        Some(path) => builder.set_cert_store(ca_store(path)?),
        None => add_system_roots(&mut builder)?,
    }
    Ok(builder)
}

/// Adds the system's CA certificates, found as `native-tls` finds them (`SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, else the usual places such as `/etc/ssl/certs`): the OpenSSL that Pingora
/// builds in looks only under its own prefix (`/usr/local/ssl`).
fn add_system_roots(builder: &mut SslConnectorBuilder) -> Result<(), DbError> {
    let found = openssl_probe::probe();
    // `load_verify_locations` panics on a path that is not UTF-8: such a path is skipped.
    let file = found.cert_file.filter(|p| p.to_str().is_some());
    let dirs: Vec<_> = found
        .cert_dir
        .into_iter()
        .filter(|p| p.to_str().is_some())
        .collect();
    if file.is_none() && dirs.is_empty() {
        return Err(invalid(
            "no system CA certificates found: set database.tls.ca_file",
        ));
    }
    let failed = |path: &Path, e: ErrorStack| {
        invalid(format!("system CA certificates at {}: {e}", path.display()))
    };
    if let Some(file) = &file {
        builder
            .load_verify_locations(Some(file), None)
            .map_err(|e| failed(file, e))?;
    }
    for dir in &dirs {
        builder
            .load_verify_locations(None, Some(dir))
            .map_err(|e| failed(dir, e))?;
    }
    Ok(())
}

/// OpenSSL's client defaults (peer verification on, weak ciphers off).
fn builder() -> Result<SslConnectorBuilder, DbError> {
    SslConnector::builder(SslMethod::tls()).map_err(|e| invalid(format!("OpenSSL setup: {e}")))
}

/// A certificate store holding exactly the certificates of the PEM file at `path`.
fn ca_store(path: &Path) -> Result<X509Store, DbError> {
    let place = path.display();
    let pem = std::fs::read(path).map_err(|e| invalid(format!("CA file {place}: {e}")))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| invalid(format!("CA file {place}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(format!("CA file {place}: no certificate in it")));
    }
    let mut store =
        X509StoreBuilder::new().map_err(|e| invalid(format!("CA file {place}: {e}")))?;
    for cert in certs {
        store
            .add_cert(cert)
            .map_err(|e| invalid(format!("CA file {place}: {e}")))?;
    }
    Ok(store.build())
}

fn invalid(message: impl std::fmt::Display) -> DbError {
    DbError::Invalid(format!("database TLS: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn config(url: &str) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(url).unwrap()
    }

    #[test]
    fn tls_modes_insist_on_tls() {
        for tls in [
            DatabaseTls::Require,
            DatabaseTls::VerifyFull { ca_file: None },
        ] {
            for url in ["postgres://u@h/db", "postgres://u@h/db?sslmode=require"] {
                let mut c = config(url);
                let connector = connector(&mut c, &tls).unwrap();
                assert!(matches!(connector, Connector::Tls(_)), "{tls:?} {url}");
                assert_eq!(c.get_ssl_mode(), SslMode::Require, "{tls:?} {url}");
            }
        }
        let mut c = config("postgres://u@h/db");
        let plain = connector(&mut c, &DatabaseTls::Disable).unwrap();
        assert!(matches!(plain, Connector::Plain));
        assert_eq!(c.get_ssl_mode(), SslMode::Prefer, "left as the URL says");
    }

    #[test]
    fn a_url_sslmode_that_contradicts_the_mode_is_refused() {
        let e = connector(
            &mut config("postgres://u@h/db?sslmode=disable"),
            &DatabaseTls::Require,
        )
        .err()
        .unwrap();
        assert!(matches!(e, DbError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("sslmode=disable"), "{e}");
        let e = connector(
            &mut config("postgres://u@h/db?sslmode=require"),
            &DatabaseTls::Disable,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("database.tls.mode"), "{e}");
    }

    #[test]
    fn verify_full_without_a_ca_file_trusts_the_systems_roots() {
        // cargo exports SSL_CERT_FILE and SSL_CERT_DIR to what it runs, and OpenSSL's own
        // lookup honours them, which would hide a missing lookup of ours: the gateway gets no
        // such help. So the check runs again in a child process without them.
        const NAME: &str = "db::tls::tests::verify_full_without_a_ca_file_trusts_the_systems_roots";
        const CHILD: &str = "TOLLGATE_TEST_SYSTEM_ROOTS_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env_remove("SSL_CERT_FILE")
                .env_remove("SSL_CERT_DIR")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success() && text.contains("1 passed"),
                "{text}"
            );
            return;
        }
        let Some(bundle) = openssl_probe::probe().cert_file else {
            eprintln!("no system CA bundle on this machine: nothing to compare with");
            return;
        };
        let system = X509::stack_from_pem(&std::fs::read(&bundle).unwrap()).unwrap();
        let connector = verifying(None).unwrap().build();
        let loaded = connector.context().cert_store().all_certificates();
        assert!(
            !system.is_empty() && loaded.len() >= system.len(),
            "{} of the {} roots in {} loaded",
            loaded.len(),
            system.len(),
            bundle.display()
        );
    }

    #[test]
    fn a_bad_ca_file_is_an_invalid_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let broken = "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n";
        for (path, needle) in [
            (dir.path().join("missing.pem"), "missing.pem: No such file"),
            (file("empty.pem", "hello"), "no certificate in it"),
            (file("broken.pem", broken), "not PEM certificates"),
        ] {
            let tls = DatabaseTls::VerifyFull {
                ca_file: Some(path),
            };
            let e = connector(&mut config("postgres://u@h/db"), &tls)
                .err()
                .unwrap();
            assert!(matches!(e, DbError::Invalid(_)), "{e}");
            assert!(
                e.to_string().starts_with("invalid database TLS: CA file"),
                "{e}"
            );
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
}
