//! Certificates for hubs that serve one state side by side.
//!
//! Hubs that share a database share one CA and one signing key, and each presents a server
//! certificate of its own, issued by that CA, naming the address spokes and `aq` reach it at
//! and, if they like, a service name all the hubs share (`hub.aqueduct.internal`, a DNS name
//! with every hub's address, or a load balancer's). [`issue_certificate`] issues one from a
//! hub's issuing CA (`aqueduct-hub certificate`): for another hub, or for this one with more
//! names. The other hub needs besides a copy of the CA's files and the signing keys (the
//! README's "Several hubs" lists them); it never needs the root CA's key.

use std::path::{Path, PathBuf};

use aqueduct_core::identity::Identity;

use crate::config::HubConfig;
use crate::pki::{self, PkiError};

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("a hub certificate must name at least one DNS name or IP address: give --host NAME")]
    NoName,
    #[error("{path} already exists: choose another --out (a key is never written over)")]
    Exists { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// What [`issue_certificate`] wrote.
#[derive(Debug)]
pub struct Issued {
    /// The certificate, followed by the issuer's: `[tls] cert` of the hub that presents it.
    pub cert: PathBuf,
    /// Its key (mode 0600): `[tls] key`.
    pub key: PathBuf,
    /// The DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
}

/// Issues a hub's server certificate valid for exactly `names` (DNS names or IP addresses)
/// from the issuing CA of the hub `config` describes, and writes it and its key into `out`
/// (created; `hub.pem`, `hub.key`). Refuses to replace files there, and a list of no name.
pub fn issue_certificate(config: &HubConfig, names: &[String], out: &Path) -> Result<Issued, CertificateError> {
    let mut unique: Vec<String> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !unique.iter().any(|u| u == name) {
            unique.push(name.to_string());
        }
    }
    if unique.is_empty() {
        return Err(CertificateError::NoName);
    }
    let (cert, key) = (out.join("hub.pem"), out.join("hub.key"));
    for path in [&cert, &key] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(CertificateError::Exists { path: path.clone() });
        }
    }
    aqueduct_core::durable::create_dir_all(out)
        .map_err(|source| CertificateError::Create { path: out.to_owned(), source })?;
    let ca = crate::load_authority(config)?;
    let issued = ca.issue(&Identity::Hub, &unique)?;
    // The key first: a certificate on disk always has its key.
    pki::write_secret(&key, &issued.key_pem)?;
    pki::write_public(&cert, &issued.cert_pem)?;
    Ok(Issued { cert, key, names: pki::server_names(&issued.cert_pem) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second hub's certificate: from the first hub's CA (it verifies against the root every
    /// spoke and admin trusts), naming the given names only, never written over.
    #[test]
    fn a_second_hub_certificate_names_its_hosts_and_chains_to_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let made = crate::init(&dir.path().join("a"), "127.0.0.1:7443".parse().unwrap(), &[]).unwrap();
        let config = HubConfig::load(&made.config_path).unwrap();
        let out = dir.path().join("b");
        let names = ["hub-b.dc1".to_string(), "10.0.0.12".into(), "hub.aqueduct.internal".into(), "hub-b.dc1".into()];
        let issued = issue_certificate(&config, &names, &out).unwrap();
        assert_eq!(issued.names, ["hub-b.dc1", "10.0.0.12", "hub.aqueduct.internal"]);
        let pem = std::fs::read_to_string(&issued.cert).unwrap();
        // The leaf names the hub; the chain verifies against the root CA of hub A.
        let chain: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).map(|p| p.unwrap()).collect();
        assert_eq!(chain.len(), 2, "the leaf and the issuer");
        let leaf = chain[0].parse_x509().unwrap();
        assert_eq!(Identity::from_der(&chain[0].contents), Some(Identity::Hub));
        let issuer = chain[1].parse_x509().unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let root_pem = std::fs::read_to_string(config.resolve(&config.tls.ca)).unwrap();
        let (_, root) = x509_parser::pem::parse_x509_pem(root_pem.as_bytes()).unwrap();
        issuer.verify_signature(Some(root.parse_x509().unwrap().public_key())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&issued.key).unwrap().permissions().mode() & 0o777, 0o600);
        // Never over files already there; never without a name.
        let err = issue_certificate(&config, &names, &out).unwrap_err().to_string();
        assert!(err.contains("hub.pem"), "{err}");
        let err = issue_certificate(&config, &[" ".into()], &dir.path().join("c")).unwrap_err().to_string();
        assert!(err.contains("--host"), "{err}");
    }
}
