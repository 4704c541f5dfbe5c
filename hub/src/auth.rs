//! The checks the hub makes on who is calling (identities: [`aqueduct_core::identity`]).

use aqueduct_core::identity::Identity;
use tonic::{Request, Status};

/// Fails unless the caller holds an admin identity; returns the admin's name.
pub fn require_admin<T>(request: &Request<T>) -> Result<String, Status> {
    match Identity::of_request(request)? {
        Identity::Admin(name) => Ok(name),
        other => Err(Status::permission_denied(format!("this call needs an admin certificate; the caller is {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Authority;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    /// The DER of a node's certificate issued by a CA of ours.
    fn region_der() -> &'static [u8] {
        static DER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        DER.get_or_init(|| {
            let ca = Authority::create("test").unwrap();
            let node = Identity::Node { region: "eu-west".into(), node: "gpu-1".into() };
            let pem = ca.issue(&node, &["localhost".into()]).unwrap().cert_pem;
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
        })
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// A real certificate, damaged (bytes flipped, cut short, bytes inserted): an identity
        /// or none, never a panic; an identity only a certificate of ours names.
        #[test]
        fn fuzz_identity_from_damaged_certificates(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in proptest::option::weighted(0.3, any::<prop::sample::Index>()),
            insert in proptest::option::weighted(0.2, (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..8))),
        ) {
            let mut der = region_der().to_vec();
            for (at, byte) in flips {
                let i = at.index(der.len());
                der[i] = byte;
            }
            if let Some(at) = cut {
                der.truncate(at.index(der.len()));
            }
            if let Some((at, bytes)) = insert {
                let i = at.index(der.len() + 1);
                der.splice(i..i, bytes);
            }
            match Identity::from_der(&der) {
                None | Some(Identity::Node { .. }) => {}
                Some(other) => prop_assert!(false, "a region's certificate, damaged, named {}", other),
            }
        }
    }

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = Authority::create("test").unwrap();
        let node = Identity::Node { region: "eu-west".into(), node: "gpu-1".into() };
        for id in [Identity::Admin("alice".into()), Identity::Hub, node] {
            let issued = ca.issue(&id, &["localhost".into()]).unwrap();
            assert_eq!(Identity::from_pem(&issued.cert_pem), Some(id));
        }
    }
}
