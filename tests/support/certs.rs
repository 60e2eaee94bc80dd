//! A throw-away certificate authority and leaf certificates for TLS tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A test CA whose files live in their own temp dir (removed on drop).
///
/// Each `Certs` has a fresh CA, so two of them give a trusted and an
/// untrusted CA for negative tests.
pub struct Certs {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
}

/// A leaf certificate signed by a [`Certs`] CA, with its key, as PEM files.
#[derive(Debug, Clone)]
pub struct LeafCert {
    /// Subject alternative names: DNS names, or IP addresses such as `127.0.0.1`.
    pub names: Vec<String>,
    /// The leaf certificate (PEM).
    pub cert_path: PathBuf,
    /// The leaf's private key (PKCS#8 PEM).
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    /// The PEM of the CA that signed this leaf, for clients to trust.
    pub ca_pem: String,
}

impl Certs {
    /// Creates a new CA and writes `ca.pem` into a fresh temp dir.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-certs-")
            .tempdir()
            .expect("cannot create temp dir for certificates");

        let mut params = CertificateParams::new(Vec::<String>::new())
            .expect("CA parameters without names are valid");
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("cannot generate the CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("cannot self-sign the CA");

        let ca_path = dir.path().join("ca.pem");
        write_file(&ca_path, &ca.pem());
        Self { dir, ca, ca_path }
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Path of the CA certificate PEM file.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The temp dir holding all files of this CA.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a leaf certificate for `names` (DNS names or IP addresses),
    /// usable for both server and client authentication, and writes it to
    /// `<file_stem>.pem` and `<file_stem>.key`.
    pub fn leaf(&self, file_stem: &str, names: &[&str]) -> LeafCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())
            .unwrap_or_else(|e| panic!("invalid certificate names {names:?}: {e}"));
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("cannot generate a leaf key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("cannot sign the leaf certificate");

        let cert_path = self.dir.path().join(format!("{file_stem}.pem"));
        let key_path = self.dir.path().join(format!("{file_stem}.key"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        write_file(&cert_path, &cert_pem);
        write_file(&key_path, &key_pem);
        LeafCert {
            names,
            cert_path,
            key_path,
            cert_pem,
            key_pem,
            ca_pem: self.ca_pem(),
        }
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
