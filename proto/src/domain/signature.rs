//! The hub's signature over a version, as data: which key signed ([`KeyId`]), when, the 64
//! signature bytes, and the one message every signer and verifier signs
//! ([`signed_message`]). The cryptography (Ed25519 through aws-lc-rs) is in
//! `aqueduct_core::signing`; this module owns only the encodings, so that the wire boundary
//! ([`super::wire`]) can decode a signature without linking a crypto library.

use std::fmt;
use std::str::FromStr;

use crate::Digest;
use crate::hub::v1 as pb;

/// What the message starts with: no other message Aqueduct signs or hashes starts so.
pub const SIGNED_MESSAGE_DOMAIN: &[u8] = b"aqueduct-version-signature\x00v1\x00";

/// The length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A signing key's id: the first 8 bytes of the SHA-256 of its public key, as 16 lowercase
/// hex digits. Short enough for a table, long enough that two keys of one hub never share it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub const HEX_LEN: usize = 16;

    /// The id of a key whose public key hashes (SHA-256) to `sha256`.
    pub fn from_sha256(sha256: &[u8]) -> Self {
        Self(sha256.iter().take(Self::HEX_LEN / 2).map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == Self::HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_string()))
        } else {
            Err(SignatureError::BadKeyId { found: s.chars().take(40).collect() })
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// The hub's signature over one version.
#[derive(Clone, PartialEq, Eq)]
pub struct VersionSignature {
    pub key_id: KeyId,
    pub signed_unix_ms: i64,
    pub signature: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for VersionSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionSignature(key {}, at {} ms)", self.key_id, self.signed_unix_ms)
    }
}

/// The canonical, domain-separated message a version's signature covers: the domain, then
/// the dataset (length-prefixed), the version number, the manifest's root, the signing time
/// and the key id (length-prefixed), integers little-endian. Two different tuples never give
/// the same message (every variable part carries its length).
pub fn signed_message(dataset: &str, version: u64, root: &Digest, signed_unix_ms: i64, key_id: &KeyId) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_MESSAGE_DOMAIN.len() + 8 + dataset.len() + 8 + 32 + 8 + 8 + 16);
    m.extend_from_slice(SIGNED_MESSAGE_DOMAIN);
    m.extend_from_slice(&(dataset.len() as u64).to_le_bytes());
    m.extend_from_slice(dataset.as_bytes());
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(root.as_bytes());
    m.extend_from_slice(&signed_unix_ms.to_le_bytes());
    m.extend_from_slice(&(key_id.0.len() as u64).to_le_bytes());
    m.extend_from_slice(key_id.0.as_bytes());
    m
}

/// A signature that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signing key id {found:?} is not 16 hex digits")]
    BadKeyId { found: String },
    #[error("a signature has {found} bytes, an Ed25519 signature {SIGNATURE_LEN}")]
    BadLength { found: usize },
}

impl From<&VersionSignature> for pb::VersionSignature {
    fn from(s: &VersionSignature) -> Self {
        Self { key_id: s.key_id.0.clone(), signed_unix_ms: s.signed_unix_ms, signature: s.signature.to_vec() }
    }
}

impl TryFrom<&pb::VersionSignature> for VersionSignature {
    type Error = SignatureError;

    fn try_from(s: &pb::VersionSignature) -> Result<Self, Self::Error> {
        let key_id = s.key_id.parse()?;
        let signature = <[u8; SIGNATURE_LEN]>::try_from(s.signature.as_slice())
            .map_err(|_| SignatureError::BadLength { found: s.signature.len() })?;
        Ok(Self { key_id, signed_unix_ms: s.signed_unix_ms, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    fn id(s: &str) -> KeyId {
        s.parse().unwrap()
    }

    #[test]
    fn key_ids_are_sixteen_lowercase_hex_digits() {
        assert_eq!(KeyId::from_sha256(&[0xab; 32]).as_str(), "abababababababab");
        assert!("0123456789abcdef".parse::<KeyId>().is_ok());
        for bad in ["", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg"] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_part_of_the_tuple_changes_the_message() {
        let root = Digest([7; 32]);
        let base = signed_message("ds", 2, &root, 5, &id("0000000000000001"));
        assert!(base.starts_with(SIGNED_MESSAGE_DOMAIN));
        for other in [
            signed_message("dt", 2, &root, 5, &id("0000000000000001")),
            signed_message("ds", 3, &root, 5, &id("0000000000000001")),
            signed_message("ds", 2, &Digest([8; 32]), 5, &id("0000000000000001")),
            signed_message("ds", 2, &root, 6, &id("0000000000000001")),
            signed_message("ds", 2, &root, 5, &id("0000000000000002")),
        ] {
            assert_ne!(base, other);
        }
    }

    proptest! {
        #![proptest_config(fuzz::config(512))]

        /// Distinct tuples give distinct messages (the encoding is injective), and the
        /// message is a pure function of the tuple.
        #[test]
        fn fuzz_signed_message_is_injective(
            a in ("[a-z.-]{0,6}", any::<u64>(), any::<[u8; 32]>(), any::<i64>(), "[0-9a-f]{16}"),
            b in ("[a-z.-]{0,6}", any::<u64>(), any::<[u8; 32]>(), any::<i64>(), "[0-9a-f]{16}"),
        ) {
            let m = |t: &(String, u64, [u8; 32], i64, String)| signed_message(&t.0, t.1, &Digest(t.2), t.3, &id(&t.4));
            prop_assert_eq!(m(&a) == m(&b), a == b);
        }

        /// Any wire signature decodes or is refused without a panic; what decodes encodes back
        /// to the same wire form.
        #[test]
        fn fuzz_wire_signatures_decode_or_are_refused(
            key_id in prop_oneof!["[0-9a-f]{16}", ".{0,20}"],
            signed_unix_ms in any::<i64>(),
            signature in prop::collection::vec(any::<u8>(), 0..80),
        ) {
            let wire = pb::VersionSignature { key_id, signed_unix_ms, signature };
            match VersionSignature::try_from(&wire) {
                Ok(s) => prop_assert_eq!(pb::VersionSignature::from(&s), wire),
                Err(_) => prop_assert!(wire.signature.len() != SIGNATURE_LEN || wire.key_id.parse::<KeyId>().is_err()),
            }
        }
    }
}
