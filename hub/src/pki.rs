//! The hub's certificate authority: creates the CA, the hub's server certificate and client
//! certificates whose identity (a URI subject alternative name, see [`crate::auth`]) says who
//! holds them. Everything speaks mutual TLS; only certificates issued here are accepted.
//!
//! Keys are written with mode 0600; certificates are PEM. Nothing here is ever logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::auth::Identity;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot create certificate for {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a usable {what}: {source}; was it written by `aqueduct-hub init`?")]
    Parse { path: PathBuf, what: &'static str, source: rcgen::Error },
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// The CA that signs every Aqueduct certificate of one installation.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca: CertifiedKey,
}

impl Authority {
    /// Creates a new CA with a fresh key.
    pub fn create(name: &str) -> Result<Self, PkiError> {
        let gen_err = |source| PkiError::Generate { what: "the CA".into(), source };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let ca = CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Self { issuer: Issuer::new(params, key), ca })
    }

    /// Loads a CA written by [`Authority::save`].
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let read =
            |path: &Path| fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_owned(), source });
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Parse {
            path: key_path.to_owned(),
            what: "CA key",
            source,
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| PkiError::Parse {
            path: cert_path.to_owned(),
            what: "CA certificate",
            source,
        })?;
        Ok(Self { issuer, ca: CertifiedKey { cert_pem, key_pem } })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_public(cert_path, &self.ca.cert_pem)?;
        write_secret(key_path, &self.ca.key_pem)
    }

    /// Issues a certificate for `identity`, usable as TLS server and client certificate.
    /// `hosts` are DNS names or IP addresses the holder serves on (for a server).
    pub fn issue(&self, identity: &Identity, hosts: &[String]) -> Result<CertifiedKey, PkiError> {
        let what = identity.to_string();
        let gen_err = |source| PkiError::Generate { what: what.clone(), source };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen_err)?;
        let uri = identity.uri().try_into().map_err(gen_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.distinguished_name.push(DnType::CommonName, identity.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes a certificate (world-readable).
pub fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(|source| PkiError::Write { path: path.to_owned(), source })
}

/// Writes a private key, readable by its owner only.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), PkiError> {
    let err = |source| PkiError::Write { path: path.to_owned(), source };
    use std::os::unix::fs::PermissionsExt;
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(err)?;
    // `mode` applies only to a new file: tighten an existing one too.
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}
