//! The hub's certificate authority: creates the CA, the hub's server certificate and client
//! certificates whose identity (a URI subject alternative name, see [`crate::auth`]) says who
//! holds them. Everything speaks mutual TLS; only certificates issued here are accepted.
//!
//! Two levels, so that the key everyone's trust rests on can stay offline: a root CA (the
//! trust anchor every party holds as `ca.pem`, its key written once by `aqueduct-hub init`
//! for safekeeping and never read by the hub) signs an intermediate, the *issuer*, whose key
//! the hub keeps and issues with. Certificates the hub issues carry the issuer's certificate
//! after their own, so that anyone who trusts the root verifies them. Rotating the issuer
//! ([`Authority::intermediate`] again, with the root key brought back for the moment) leaves
//! every certificate the old issuer signed valid until it expires. A hub made before this had
//! one level, its CA issuing directly: it still loads ([`Authority::load`]).
//!
//! A node's certificate ([`Authority::sign_node_request`]) is issued for the public key of a
//! certificate request the node made (its key never leaves the node) and lives a bounded time;
//! every other field of the certificate is set here, whatever the request asked for.
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
    #[error(
        "the issuing certificate {issuer} was not signed by the root CA {root}: make a new issuer with `aqueduct-hub issuer rotate --root-key ...` (the root key kept offline), or restore the pair from a backup"
    )]
    NotSignedByRoot { issuer: PathBuf, root: PathBuf },
    #[error(
        "{issuer} does not exist but {key} does: this hub was made before issuing CAs; either name its CA in hub.toml (`[tls] ca_key = \"pki/ca.key\"`, no `issuer`), or make an issuer with `aqueduct-hub issuer rotate --root-key {key}` and then keep that key offline"
    )]
    OneLevel { issuer: PathBuf, key: PathBuf },
}

/// Why a node's certificate request was not signed.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error(
        "the certificate request is not a PKCS#10 request signed by its own key ({0}); the spoke makes it, with a key it generates on the node"
    )]
    Invalid(rcgen::Error),
    #[error("the certificate request is {0} bytes; at most {MAX_CSR_BYTES} are taken")]
    TooLarge(usize),
    #[error("cannot issue the certificate of {what}: {source}")]
    Sign { what: String, source: rcgen::Error },
}

/// The largest certificate request taken (a request for one key is a few hundred bytes).
pub const MAX_CSR_BYTES: usize = 16 << 10;

/// A node's certificate as issued: PEM, and when it stops being valid.
#[derive(Clone, Debug)]
pub struct NodeCertificate {
    pub cert_pem: String,
    pub not_after_unix_ms: i64,
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

/// The CA that signs every Aqueduct certificate of one installation: the root (when it
/// issues itself, as a hub of one level does) or an intermediate signed by the root.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The issuing CA's certificate and key.
    ca: CertifiedKey,
    /// The trust anchor (the root's certificate): `ca.cert_pem` itself for a one-level CA.
    anchor_pem: String,
}

/// How long a root CA is valid: it outlives every issuer it signs.
pub const ROOT_DAYS: u32 = 20 * 365;
/// How long an issuer (intermediate) is valid by default; rotate it before then.
pub const ISSUER_DAYS: u32 = 3 * 365;

impl Authority {
    /// Creates a new CA of one level (it issues certificates itself) with a fresh key: a hub
    /// made before issuing CAs, and the strangers' CAs of tests.
    pub fn create(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "the CA".into(), source })?;
        let usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let until = (rcgen::date_time_ymd(1975, 1, 1), rcgen::date_time_ymd(2100, 1, 1));
        Self::self_signed("the CA", name, key, BasicConstraints::Unconstrained, usages, until)
    }

    /// Creates a new root CA with a fresh key, valid for [`ROOT_DAYS`]: it signs issuers
    /// (one level below it) and nothing else.
    pub fn root(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(|source| PkiError::Generate { what: "the root CA".into(), source })?;
        Self::root_with_key(name, key)
    }

    /// A root CA certificate made anew for an existing root key (an init cut short after
    /// writing the key).
    pub fn root_with_key(name: &str, key: KeyPair) -> Result<Self, PkiError> {
        let usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self::self_signed("the root CA", name, key, BasicConstraints::Constrained(1), usages, validity(ROOT_DAYS))
    }

    /// A self-signed CA certificate for `key`: the trust anchor and the issuer at once.
    fn self_signed(
        what: &str,
        name: &str,
        key: KeyPair,
        constraints: BasicConstraints,
        usages: Vec<KeyUsagePurpose>,
        (not_before, not_after): (time::OffsetDateTime, time::OffsetDateTime),
    ) -> Result<Self, PkiError> {
        let gen_err = |source| PkiError::Generate { what: what.into(), source };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.is_ca = IsCa::Ca(constraints);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = usages;
        (params.not_before, params.not_after) = (not_before, not_after);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let ca = CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Self { issuer: Issuer::new(params, key), anchor_pem: ca.cert_pem.clone(), ca })
    }

    /// Makes a new issuer (an intermediate CA with a fresh key, valid for `days`) signed by
    /// this root. The hub issues with it; this root's key can then go offline.
    pub fn intermediate(&self, name: &str, days: u32) -> Result<Self, PkiError> {
        let gen_err = |source| PkiError::Generate { what: "the issuing CA".into(), source };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = validity(days);
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let ca = CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Self { issuer: Issuer::new(params, key), anchor_pem: self.anchor_pem.clone(), ca })
    }

    /// Loads an issuer: the root's certificate (the anchor), the issuer's certificate and its
    /// key. The hub needs no more to issue; the root's key stays offline.
    pub fn load_issuer(root_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let mut authority = Self::load(cert_path, key_path)?;
        let anchor_pem =
            fs::read_to_string(root_path).map_err(|source| PkiError::Read { path: root_path.to_owned(), source })?;
        let mismatch = || PkiError::NotSignedByRoot { issuer: cert_path.to_owned(), root: root_path.to_owned() };
        if !signed_by(&authority.ca.cert_pem, &anchor_pem).ok_or_else(mismatch)? {
            return Err(mismatch());
        }
        authority.anchor_pem = anchor_pem;
        Ok(authority)
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
        Ok(Self { issuer, anchor_pem: cert_pem.clone(), ca: CertifiedKey { cert_pem, key_pem } })
    }

    /// The trust anchor every party holds (the root's certificate).
    pub fn ca_pem(&self) -> &str {
        &self.anchor_pem
    }

    /// The issuing CA's certificate (the anchor's for a one-level CA).
    pub fn issuer_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Whether the hub issues with an intermediate (the root's key is elsewhere).
    fn is_intermediate(&self) -> bool {
        self.anchor_pem != self.ca.cert_pem
    }

    /// A certificate the hub issued, followed by the issuer's own when that is an
    /// intermediate: the chain a holder presents, which verifies against the root alone.
    pub fn chained(&self, leaf_pem: String) -> String {
        if self.is_intermediate() {
            let mut chain = leaf_pem;
            if !chain.ends_with('\n') {
                chain.push('\n');
            }
            chain.push_str(&self.ca.cert_pem);
            chain
        } else {
            leaf_pem
        }
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
    /// `hosts` are DNS names or IP addresses the holder serves on (for a server); a node's
    /// certificate names its region's peer name besides. Valid until 2100: for the hub and the
    /// admin (a node's certificate has a bounded lifetime: [`Authority::issue_node`]).
    pub fn issue(&self, identity: &Identity, hosts: &[String]) -> Result<CertifiedKey, PkiError> {
        self.issue_until(identity, hosts, rcgen::date_time_ymd(2100, 1, 1))
    }

    /// A key and a certificate for the spoke of `node` in `region`, valid for `lifetime` from
    /// a minute ago (clocks differ a little): what enrolment gives a node, without the node
    /// making its key (for tests and scripted installs; a spoke enrols with a token instead).
    pub fn issue_node(
        &self,
        region: &str,
        node: &str,
        lifetime: std::time::Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let identity = Identity::Node { region: region.into(), node: node.into() };
        let now = now_unix_ms();
        let mut params = self.leaf(&identity, &[])?;
        set_validity(&mut params, now.saturating_sub(60_000), now.saturating_add(millis(lifetime)));
        self.sign_leaf(&identity, params)
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
        let mut params = self.leaf(identity, hosts)?;
        params.not_before = time::OffsetDateTime::now_utc();
        params.not_after = not_after;
        self.sign_leaf(identity, params)
    }

    fn leaf(&self, identity: &Identity, hosts: &[String]) -> Result<CertificateParams, PkiError> {
        leaf_params(identity, hosts).map_err(|source| PkiError::Generate { what: identity.to_string(), source })
    }

    /// Signs `params` for a fresh key: the key and the certificate with its chain.
    fn sign_leaf(&self, identity: &Identity, params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        let what = identity.to_string();
        let gen_err = |source| PkiError::Generate { what: what.clone(), source };
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(CertifiedKey { cert_pem: self.chained(cert.pem()), key_pem: key.serialize_pem() })
    }

    /// Signs a node's certificate request (DER): a certificate for `Node { region, node }`,
    /// valid from a minute ago (clocks differ a little) for `lifetime`. Only the public key
    /// comes from the request (whose signature must verify: the node holds the key); every
    /// other field is the hub's.
    pub fn sign_node_request(
        &self,
        csr_der: &[u8],
        region: &str,
        node: &str,
        lifetime: std::time::Duration,
    ) -> Result<NodeCertificate, CsrError> {
        if csr_der.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(csr_der.len()));
        }
        let request = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(CsrError::Invalid)?;
        let identity = Identity::Node { region: region.into(), node: node.into() };
        let what = identity.to_string();
        let sign_err = |source| CsrError::Sign { what: what.clone(), source };
        let mut params = leaf_params(&identity, &[]).map_err(sign_err)?;
        let now = now_unix_ms();
        let not_after_unix_ms = now.saturating_add(millis(lifetime));
        set_validity(&mut params, now.saturating_sub(60_000), not_after_unix_ms);
        let cert = params.signed_by(&request.public_key, &self.issuer).map_err(sign_err)?;
        Ok(NodeCertificate { cert_pem: self.chained(cert.pem()), not_after_unix_ms })
    }
}

/// The fields of a certificate for `identity` (a node's names its region's peer name too).
fn leaf_params(identity: &Identity, hosts: &[String]) -> Result<CertificateParams, rcgen::Error> {
    let mut hosts = hosts.to_vec();
    if let Some(peer) = identity.peer_name()
        && !hosts.contains(&peer)
    {
        hosts.push(peer);
    }
    let mut params = CertificateParams::new(hosts)?;
    params.subject_alt_names.push(SanType::URI(identity.uri().try_into()?));
    params.distinguished_name.push(DnType::CommonName, identity.to_string());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Makes `params` valid from one unix time in ms until another (clamped to what X.509 says).
fn set_validity(params: &mut CertificateParams, from_ms: i64, until_ms: i64) {
    let at = |ms: i64| {
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_millis(ms.clamp(0, 4_000_000_000_000) as u64)
    };
    params.not_before = at(from_ms);
    params.not_after = at(until_ms);
}

/// From an hour ago (clocks differ a little) to `days` from now.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::days(i64::from(days)))
}

/// Whether the first certificate of `cert_pem` was signed by the first of `issuer_pem`
/// (`None`: one of them is not a certificate).
fn signed_by(cert_pem: &str, issuer_pem: &str) -> Option<bool> {
    let (_, cert) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let (_, issuer) = x509_parser::pem::parse_x509_pem(issuer_pem.as_bytes()).ok()?;
    let (cert, issuer) = (cert.parse_x509().ok()?, issuer.parse_x509().ok()?);
    Some(cert.verify_signature(Some(issuer.public_key())).is_ok())
}

/// The raw public key a PEM certificate carries.
fn public_key_of(cert_pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.tbs_certificate.subject_pki.subject_public_key.data.to_vec())
}

/// The DNS names and IP addresses a PEM certificate is valid for (none for a text that is not
/// one).
pub fn server_names(cert_pem: &str) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return Vec::new() };
    let Ok(cert) = pem.parse_x509() else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*ip).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::time::Duration;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    fn authority() -> &'static Authority {
        static CA: OnceLock<Authority> = OnceLock::new();
        CA.get_or_init(|| Authority::create("test").unwrap())
    }

    /// A real request (DER), asking for an admin's identity and a CA's powers.
    fn request() -> &'static [u8] {
        static DER: OnceLock<Vec<u8>> = OnceLock::new();
        DER.get_or_init(|| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["hub.example".to_string()]).unwrap();
            params.subject_alt_names.push(SanType::URI("spiffe://aqueduct/admin".try_into().unwrap()));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.serialize_request(&key).unwrap().der().to_vec()
        })
    }

    /// What a signed certificate says: its identity, and whether it is a CA.
    fn read(pem: &str) -> (Option<Identity>, bool) {
        let (_, pem_block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem_block.parse_x509().unwrap();
        (Identity::from_pem(pem), cert.is_ca())
    }

    #[test]
    fn a_request_gives_only_its_public_key() {
        let issued = authority().sign_node_request(request(), "eu", "gpu-1", Duration::from_secs(60)).unwrap();
        let node = Identity::Node { region: "eu".into(), node: "gpu-1".into() };
        assert_eq!(read(&issued.cert_pem), (Some(node), false));
        assert!(matches!(
            authority().sign_node_request(&vec![0x30; MAX_CSR_BYTES + 1], "eu", "n", Duration::from_secs(1)),
            Err(CsrError::TooLarge(_))
        ));
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// Any bytes as a certificate request, or a real one damaged: an error, or a certificate
        /// for exactly the node asked for (never a CA, never another identity); never a panic.
        #[test]
        fn fuzz_sign_node_request_on_hostile_bytes(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..400),
                (proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                 proptest::option::of(any::<prop::sample::Index>()))
                    .prop_map(|(flips, cut)| {
                        let mut der = request().to_vec();
                        for (at, byte) in flips {
                            let i = at.index(der.len());
                            der[i] = byte;
                        }
                        if let Some(at) = cut {
                            der.truncate(at.index(der.len()));
                        }
                        der
                    }),
            ],
        ) {
            if let Ok(issued) = authority().sign_node_request(&bytes, "eu", "gpu-1", Duration::from_secs(60)) {
                let node = Identity::Node { region: "eu".into(), node: "gpu-1".into() };
                prop_assert_eq!(read(&issued.cert_pem), (Some(node), false));
            }
        }
    }
}
