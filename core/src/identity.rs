//! Who is calling: the identities carried in Aqueduct's certificates.
//!
//! Every certificate issued by the hub's CA carries exactly one URI subject alternative name:
//! `spiffe://aqueduct/admin/NAME` for each named operator, `spiffe://aqueduct/hub` for the hub
//! itself and `spiffe://aqueduct/region/REGION/node/NODE` for the spoke of one node of a region
//! (each spoke has its own key and certificate, got by enrolment). A node's certificate also
//! carries its region's peer DNS name ([`Identity::peer_name`]), so that the spokes of a region
//! check "same region" when they connect to each other. TLS proves the certificate was issued
//! by our CA; this module reads which identity it names, and what revocation looks at
//! ([`subject_of`]: every URI and the notBefore).

use std::fmt;

use tonic::{Request, Status};

use crate::revocation::CertSubject;

const PREFIX: &str = "spiffe://aqueduct/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A named operator (`aq admin add NAME`); its name is a valid object name.
    Admin(String),
    Hub,
    /// The spoke of one node of a region (both names valid as [`aqueduct_proto::validate_name`]
    /// says).
    Node {
        region: String,
        node: String,
    },
}

impl Identity {
    pub fn uri(&self) -> String {
        match self {
            Identity::Admin(name) => format!("{PREFIX}admin/{name}"),
            Identity::Hub => format!("{PREFIX}hub"),
            Identity::Node { region, node } => format!("{PREFIX}region/{region}/node/{node}"),
        }
    }

    /// The URI every node certificate of `region` lies below (`spiffe://aqueduct/region/R`):
    /// what revoking a whole region names, and what a region's part of the list is scoped by.
    pub fn region_uri(region: &str) -> String {
        format!("{PREFIX}region/{region}")
    }

    /// The region of a node's identity.
    pub fn region(&self) -> Option<&str> {
        match self {
            Identity::Node { region, .. } => Some(region),
            _ => None,
        }
    }

    /// The DNS name a region's certificate carries besides its URI, so that a spoke can check
    /// that a peer it connects to is of its own region (TLS checks the server's name).
    pub fn peer_name(&self) -> Option<String> {
        match self {
            Identity::Node { region, .. } => Some(format!("{region}.region.aqueduct")),
            _ => None,
        }
    }

    fn from_uri(uri: &str) -> Option<Self> {
        match uri.strip_prefix(PREFIX)? {
            "hub" => Some(Identity::Hub),
            rest => {
                if let Some(name) = rest.strip_prefix("admin/") {
                    return aqueduct_proto::validate_name("admin", name)
                        .is_ok()
                        .then(|| Identity::Admin(name.to_string()));
                }
                let (region, node) = rest.strip_prefix("region/")?.split_once("/node/")?;
                let valid = |what, name| aqueduct_proto::validate_name(what, name).is_ok();
                (valid("region", region) && valid("node", node))
                    .then(|| Identity::Node { region: region.to_string(), node: node.to_string() })
            }
        }
    }

    /// Reads the identity from a DER certificate.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = san.value.general_names.iter().filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::from_uri(uri),
            _ => None,
        });
        let identity = found.next()?;
        // A certificate naming two identities is not one we issued.
        found.next().is_none().then_some(identity)
    }

    /// The admin's name, for an admin.
    pub fn admin_name(&self) -> Option<&str> {
        match self {
            Identity::Admin(name) => Some(name),
            _ => None,
        }
    }

    /// Reads the identity from the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Option<Self> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        Self::from_der(&parsed.contents)
    }

    /// The identity of the peer of a gRPC request (verified by mutual TLS).
    pub fn of_request<T>(request: &Request<T>) -> Result<Self, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate: Aqueduct needs mutual TLS"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        Identity::from_der(leaf.as_ref())
            .ok_or_else(|| Status::permission_denied("the client certificate names no Aqueduct identity"))
    }
}

/// What revocation looks at in a DER certificate: every URI subject alternative name (as
/// written, whether or not it names an identity this build knows) and the notBefore.
pub fn subject_of(der: &[u8]) -> Option<CertSubject> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let uris = match cert.subject_alternative_name().ok()? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Some(CertSubject { uris, not_before_unix_s: cert.validity().not_before.timestamp() })
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin(name) => write!(f, "admin {name}"),
            Identity::Hub => f.write_str("hub"),
            Identity::Node { region, node } => write!(f, "region {region}, node {node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        /// Any bytes a peer presents as its certificate: an identity or none, never a panic.
        #[test]
        fn fuzz_identity_from_der(der in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            // A DER sequence header and then anything: the parser goes deeper.
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(|mut b| { b.splice(0..0, [0x30, 0x82, 0x02, 0x50]); b }),
        ]) {
            let _ = Identity::from_der(&der);
            let _ = Identity::from_pem(&String::from_utf8_lossy(&der));
            let _ = subject_of(&der);
        }

        /// Any URI: an identity whose URI is that text, or none.
        #[test]
        fn fuzz_identity_from_uri(
            uri in "(spiffe://aqueduct/)?(admin/|admin|hub|region/)?.{0,20}(/node/)?.{0,20}(/node/)?.{0,6}",
        ) {
            if let Some(identity) = Identity::from_uri(&uri) {
                prop_assert_eq!(identity.uri(), uri);
                if let Identity::Node { region, node } = &identity {
                    prop_assert!(aqueduct_proto::validate_name("region", region).is_ok());
                    prop_assert!(aqueduct_proto::validate_name("node", node).is_ok());
                    prop_assert_eq!(identity.peer_name(), Some(format!("{region}.region.aqueduct")));
                }
            }
        }

        #[test]
        fn fuzz_identity_uri_round_trip(
            region in "[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?",
            node in "[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?",
        ) {
            let admin = Identity::Admin(node.clone());
            let node = Identity::Node { region, node };
            for identity in [admin, Identity::Hub, node] {
                prop_assert_eq!(Identity::from_uri(&identity.uri()), Some(identity));
            }
        }
    }

    #[test]
    fn unknown_uris_are_no_identity() {
        assert_eq!(Identity::from_uri("spiffe://aqueduct/admin/alice"), Some(Identity::Admin("alice".into())));
        // Before admins had names: not an identity any more (`aqueduct-hub init` issues named ones).
        assert_eq!(Identity::from_uri("spiffe://aqueduct/admin"), None);
        assert_eq!(Identity::from_uri("spiffe://aqueduct/admin/"), None);
        assert_eq!(Identity::from_uri("spiffe://other/admin"), None);
        assert_eq!(Identity::from_uri("spiffe://aqueduct/region/BAD NAME/node/n1"), None);
        // A region alone names no one: every spoke has its node's certificate.
        assert_eq!(Identity::from_uri("spiffe://aqueduct/region/eu"), None);
        assert_eq!(Identity::from_uri("spiffe://aqueduct/region/eu/node/"), None);
        assert_eq!(Identity::from_uri("spiffe://aqueduct/region/eu/node/a/node/b"), None);
        assert_eq!(
            Identity::from_uri("spiffe://aqueduct/region/eu/node/gpu-7"),
            Some(Identity::Node { region: "eu".into(), node: "gpu-7".into() })
        );
        assert_eq!(Identity::from_uri("spiffe://aqueduct/root"), None);
    }
}
