//! The checks the hub makes on who is calling (identities: [`aqueduct_proto::identity`]).

pub use aqueduct_proto::identity::Identity;
use tonic::{Request, Status};

/// Fails unless the caller holds the admin identity.
pub fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
    match Identity::of_request(request)? {
        Identity::Admin => Ok(()),
        other => {
            Err(Status::permission_denied(format!("this call needs the admin certificate; the caller is {other}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Authority;

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = Authority::create("test").unwrap();
        for id in [Identity::Admin, Identity::Hub, Identity::Region("eu-west".into())] {
            let issued = ca.issue(&id, &["localhost".into()]).unwrap();
            assert_eq!(Identity::from_pem(&issued.cert_pem), Some(id));
        }
    }
}
