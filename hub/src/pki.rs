//! The hub's certificate authority: creates the CA, the hub's server certificate and client
//! certificates whose identity (a URI subject alternative name, see [`crate::auth`]) says who
//! holds them. Everything speaks mutual TLS; only certificates issued here are accepted.
//!
//! Keys are written with mode 0600; certificates are PEM. Both are written atomically and
//! fsynced ([`aqueduct_core::durable`]): a crash leaves a file whole or absent, never half a
//! key. Nothing here is ever logged.

use std::fs;
use std::path::{Path, PathBuf};

use aqueduct_core::durable;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use aqueduct_core::identity::Identity;

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
    #[error(
        "the CA certificate {cert} was not made with the CA key {key}: they belong to two CAs; restore the pair from a backup (or, for a new hub, use an empty --data-dir)"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
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
        let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "the CA".into(), source })?;
        Self::with_key(name, key)
    }

    /// A CA certificate made anew for an existing CA key. Certificates the key signed still
    /// verify against it: they name the same subject and carry the key's identifier.
    pub fn with_key(name: &str, key: KeyPair) -> Result<Self, PkiError> {
        let gen_err = |source| PkiError::Generate { what: "the CA".into(), source };
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

    /// Reads a CA key written by [`Authority::save`].
    pub fn load_key(key_path: &Path) -> Result<KeyPair, PkiError> {
        let key_pem =
            fs::read_to_string(key_path).map_err(|source| PkiError::Read { path: key_path.to_owned(), source })?;
        KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Parse {
            path: key_path.to_owned(),
            what: "CA key",
            source,
        })
    }

    /// Loads a CA written by [`Authority::save`]; the certificate must be the key's.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert_pem =
            fs::read_to_string(cert_path).map_err(|source| PkiError::Read { path: cert_path.to_owned(), source })?;
        let key = Self::load_key(key_path)?;
        let parse_err = |source| PkiError::Parse { path: cert_path.to_owned(), what: "CA certificate", source };
        let spki = public_key_of(&cert_pem).ok_or_else(|| parse_err(rcgen::Error::CouldNotParseCertificate))?;
        if spki != key.public_key_raw() {
            return Err(PkiError::KeyMismatch { cert: cert_path.to_owned(), key: key_path.to_owned() });
        }
        let key_pem = key.serialize_pem();
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(parse_err)?;
        Ok(Self { issuer, ca: CertifiedKey { cert_pem, key_pem } })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Writes the key, then the certificate: a certificate on disk always has its key.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        self.save_key(key_path)?;
        self.save_cert(cert_path)
    }

    /// Writes the CA's key (mode 0600).
    pub fn save_key(&self, key_path: &Path) -> Result<(), PkiError> {
        write_secret(key_path, &self.ca.key_pem)
    }

    /// Writes the CA's certificate.
    pub fn save_cert(&self, cert_path: &Path) -> Result<(), PkiError> {
        write_public(cert_path, &self.ca.cert_pem)
    }

    /// Issues a certificate for `identity`, usable as TLS server and client certificate.
    /// `hosts` are DNS names or IP addresses the holder serves on (for a server).
    pub fn issue(&self, identity: &Identity, hosts: &[String]) -> Result<CertifiedKey, PkiError> {
        self.issue_until(identity, hosts, rcgen::date_time_ymd(2100, 1, 1))
    }

    /// [`Authority::issue`], valid until `not_after`. Every certificate is valid from the time
    /// it is issued (its notBefore), which revocation compares with the time of a revocation
    /// ([`aqueduct_core::revocation`]): one issued after a revocation is not refused by it.
    pub fn issue_until(
        &self,
        identity: &Identity,
        hosts: &[String],
        not_after: time::OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        let what = identity.to_string();
        let gen_err = |source| PkiError::Generate { what: what.clone(), source };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen_err)?;
        let uri = identity.uri().try_into().map_err(gen_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.distinguished_name.push(DnType::CommonName, identity.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::now_utc();
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The raw public key a PEM certificate carries.
fn public_key_of(cert_pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.tbs_certificate.subject_pki.subject_public_key.data.to_vec())
}

/// Writes a certificate (world-readable), atomically.
pub fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    durable::write_file(path, contents.as_bytes(), durable::PUBLIC)
        .map_err(|source| PkiError::Write { path: path.to_owned(), source })
}

/// Writes a private key, readable by its owner only, atomically: the file is made with mode
/// 0600 and replaces any earlier one (whatever its mode was).
pub fn write_secret(path: &Path, contents: &str) -> Result<(), PkiError> {
    durable::write_file(path, contents.as_bytes(), durable::SECRET)
        .map_err(|source| PkiError::Write { path: path.to_owned(), source })
}
