//! TLS termination: certificates chosen by SNI among a listener's certificates (exact name,
//! then `*.domain` wildcard, then the first certificate as the default), HTTP/2 over ALPN.

use crate::config::{CertificateSpec, ListenerTls};
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::x509::X509;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS settings: {0}")]
    Settings(String),
}

/// A certificate chain and its key.
struct CertifiedKey {
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// Picks a certificate for each handshake from the server name the client sent.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", cert)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Loads every certificate of a listener. `specs` must not be empty (validation checks).
    pub fn load(specs: &[CertificateSpec]) -> Result<Self, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        for spec in specs {
            let ck = Arc::new(load_pair(spec)?);
            let names = if spec.server_names.is_empty() {
                names_in_certificate(&ck.chain[0])
            } else {
                spec.server_names.clone()
            };
            for name in names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_string(), Arc::clone(&ck))),
                    None => {
                        exact.entry(name).or_insert_with(|| Arc::clone(&ck));
                    }
                }
            }
            default.get_or_insert(ck);
        }
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let default = default.ok_or_else(|| TlsError::Settings("no certificate".into()))?;
        Ok(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    fn resolve(&self, server_name: Option<&str>) -> &CertifiedKey {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(ck) = self.exact.get(&name) {
            return ck;
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()) && name.len() > suffix.len())
            .map_or(&self.default, |(_, ck)| ck)
    }
}

#[async_trait]
impl TlsAccept for SniResolver {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let ck = self.resolve(ssl.servername(NameType::HOST_NAME));
        let result = ext::ssl_use_certificate(ssl, &ck.chain[0])
            .and_then(|()| ext::ssl_use_private_key(ssl, &ck.key))
            .and_then(|()| {
                ck.chain[1..]
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = result {
            log::warn!("TLS handshake: cannot use certificate: {e}");
        }
    }
}

/// Pingora TLS settings for a listener.
pub fn settings(tls: &ListenerTls) -> Result<TlsSettings, TlsError> {
    let resolver = SniResolver::load(&tls.certificates)?;
    let mut settings = TlsSettings::with_callbacks(Box::new(resolver))
        .map_err(|e| TlsError::Settings(e.to_string()))?;
    if tls.http2 {
        settings.enable_h2();
    }
    Ok(settings)
}

fn load_pair(spec: &CertificateSpec) -> Result<CertifiedKey, TlsError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let file_err = |path: &std::path::Path, e: &dyn std::fmt::Display| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let chain = X509::stack_from_pem(&read(&spec.cert)?).map_err(|e| file_err(&spec.cert, &e))?;
    if chain.is_empty() {
        return Err(file_err(&spec.cert, &"no PEM certificate in file"));
    }
    let key = PKey::private_key_from_pem(&read(&spec.key)?).map_err(|e| file_err(&spec.key, &e))?;
    let matches = chain[0]
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(file_err(
            &spec.key,
            &"this key does not belong to the certificate",
        ));
    }
    Ok(CertifiedKey { chain, key })
}

/// DNS names from the subject alternative names, else the common name.
fn names_in_certificate(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject_name()
                .entries_by_nid(pingora::tls::nid::Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase())),
        );
    }
    names
}
