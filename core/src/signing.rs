//! The hub's signing keys and the spokes' trust in them: Ed25519 (aws-lc-rs, already in the
//! tree through rustls) over the message `aqueduct_proto::domain::signature::signed_message`
//! defines.
//!
//! A [`SigningKey`] lives in its own file (`signing/hub.key` or `signing/KEYID.key` under the
//! hub's data directory, mode 0600, apart from the TLS keys), in a versioned text format:
//! comment lines, then `aqueduct-signing-key-v1 HEX` (the key's PKCS#8 document). Its [`PublicKey`] is written as
//! `ed25519:HEX` (64 hex digits), the form configs, key files and `aq verify --trust` take. A
//! [`TrustedKeys`] set (the spoke's `[trust]`, a sidecar's `--trust`) verifies a manifest:
//! signed, by a key it trusts, over the root its entries hash to. Several keys may be trusted
//! at once, so that the hub's key rotates without a flag day.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aqueduct_proto::domain::signature::{KeyId, SIGNATURE_LEN, VersionSignature, signed_message};
use aqueduct_proto::{Digest, Manifest};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// The first word of a signing key file's key line: the format's version.
pub const KEY_FILE_TAG: &str = "aqueduct-signing-key-v1";
/// How a public key is written: `ed25519:` and 64 hex digits.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// A key or key file that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFormatError {
    #[error("{found:?} is not a public signing key: write ed25519: and 64 hex digits")]
    PublicKey { found: String },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("it holds no key line ({KEY_FILE_TAG} HEX)")]
    NoKey,
    #[error("it holds more than one key line")]
    SeveralKeys,
    #[error("its key is not an Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
}

/// A signing key that cannot be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read signing key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write signing key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("signing key file {path} is not valid: {source}")]
    Format { path: PathBuf, source: KeyFormatError },
    #[error(
        "signing key file {path} may be read by every user (mode {mode:o}): it is a secret; `chmod 600 {}` and check who read it",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot make an Ed25519 key: {0}")]
    Crypto(String),
}

/// Why a manifest's signature is refused. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(
        "{dataset}@v{version} is not signed: every version a hub serves is signed by it, so this manifest did not come from a hub of this build (upgrade the hub) or was stripped of its signature; refused, nothing of it is served"
    )]
    Unsigned { dataset: String, version: u64 },
    #[error(
        "{dataset}@v{version} is signed by key {key_id}, which this node does not trust (it trusts {trusted}): if the hub rotated its key, add its new public key (`aqueduct-hub signing-key show`) to [trust] signing_keys; otherwise someone else signed it; refused, nothing of it is served"
    )]
    UnknownKey { dataset: String, version: u64, key_id: KeyId, trusted: String },
    #[error(
        "the signature of {dataset}@v{version} (key {key_id}) does not verify: its dataset, number or root were changed after the hub signed it, or the signature was forged; refused, nothing of it is served (check the hub's database)"
    )]
    BadSignature { dataset: String, version: u64, key_id: KeyId },
    #[error(
        "the manifest of {dataset}@v{version} says its root is {expected} but its entries hash to {computed}: it was changed; refused, nothing of it is served"
    )]
    RootMismatch { dataset: String, version: u64, expected: Digest, computed: Digest },
}

/// An Ed25519 public key, with its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    id: KeyId,
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        Self { bytes, id: KeyId::from_sha256(sha.as_ref()) }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes).verify(message, signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", hex(&self.bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl FromStr for PublicKey {
    type Err = KeyFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyFormatError::PublicKey { found: s.chars().take(80).collect() };
        let hex = s.trim().strip_prefix(PUBLIC_KEY_PREFIX).ok_or_else(bad)?;
        let bytes = unhex(hex).ok_or_else(bad)?;
        Ok(Self::from_bytes(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| bad())?))
    }
}

/// Parses a list of public keys, one per line, as a key file holds them: blank lines and
/// lines starting with `#` are skipped.
pub fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, KeyFormatError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            l.parse().map_err(|e: KeyFormatError| KeyFormatError::Line { line: i + 1, reason: e.to_string() })
        })
        .collect()
}

/// The hub's private signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.id)
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, SigningError> {
        let crypto = |e: aws_lc_rs::error::Unspecified| SigningError::Crypto(e.to_string());
        let pair = Ed25519KeyPair::generate().map_err(crypto)?;
        let pkcs8 = pair.to_pkcs8().map_err(crypto)?.as_ref().to_vec();
        Self::from_pkcs8(&pkcs8).map_err(|e| SigningError::Crypto(e.to_string()))
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyFormatError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyFormatError::BadKey(e.to_string()))?;
        let bytes = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .map_err(|_| KeyFormatError::BadKey("its public key is not 32 bytes".into()))?;
        Ok(Self { pair, pkcs8: pkcs8.to_vec(), public: PublicKey::from_bytes(bytes) })
    }

    /// Reads a key from the text of its file.
    pub fn from_text(text: &str) -> Result<Self, KeyFormatError> {
        let mut found = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(hex) = line.strip_prefix(KEY_FILE_TAG).and_then(|r| r.strip_prefix(' ')) else {
                return Err(KeyFormatError::Line {
                    line: i + 1,
                    reason: format!("expected `{KEY_FILE_TAG} HEX` or a # comment"),
                });
            };
            if found.is_some() {
                return Err(KeyFormatError::SeveralKeys);
            }
            found = Some(
                unhex(hex.trim())
                    .ok_or_else(|| KeyFormatError::Line { line: i + 1, reason: "the key is not hex digits".into() })?,
            );
        }
        Self::from_pkcs8(&found.ok_or(KeyFormatError::NoKey)?)
    }

    /// The text of its file (what [`SigningKey::from_text`] reads).
    pub fn to_text(&self) -> String {
        format!(
            "# Aqueduct hub signing key (Ed25519, PKCS#8 as hex). Secret: keep it mode 0600, never copy it.\n\
             # Key id {}; public key (what spokes trust): {}\n{KEY_FILE_TAG} {}\n",
            self.public.id,
            self.public,
            hex(&self.pkcs8)
        )
    }

    /// Reads the key file at `path`; refuses one that every user may read or write (group
    /// bits are let be: Kubernetes' fsGroup adds them to every file of a volume).
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let read = |source| SigningError::Read { path: path.to_owned(), source };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(SigningError::Exposed { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::from_text(&text).map_err(|source| SigningError::Format { path: path.to_owned(), source })
    }

    /// Writes the key to `path` (atomically, mode 0600).
    pub fn write(&self, path: &Path) -> Result<(), SigningError> {
        let write = |source| SigningError::Write { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            crate::durable::create_dir_all(dir).map_err(write)?;
        }
        crate::durable::write_file(path, self.to_text().as_bytes(), crate::durable::SECRET).map_err(write)
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> &KeyId {
        &self.public.id
    }

    /// Signs version `version` of `dataset`, whose manifest's root is `root`, at `signed_unix_ms`.
    pub fn sign(&self, dataset: &str, version: u64, root: &Digest, signed_unix_ms: i64) -> VersionSignature {
        let message = signed_message(dataset, version, root, signed_unix_ms, &self.public.id);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(self.pair.sign(&message).as_ref());
        VersionSignature { key_id: self.public.id.clone(), signed_unix_ms, signature }
    }

    /// Signs `manifest` (its dataset, number and root) in place.
    pub fn sign_manifest(&self, manifest: &mut Manifest, signed_unix_ms: i64) {
        manifest.signature = Some(self.sign(&manifest.dataset, manifest.version, &manifest.root, signed_unix_ms));
    }
}

/// The hub signing keys a node trusts, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self { keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys' ids, comma-separated (for messages and logs).
    pub fn ids(&self) -> String {
        if self.keys.is_empty() {
            return "no key".into();
        }
        self.keys.keys().map(KeyId::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Checks `manifest`: its entries hash to its root, and its signature is a trusted key's
    /// over its dataset, number and root. Returns the signature that verified.
    pub fn verify<'m>(&self, manifest: &'m Manifest) -> Result<&'m VersionSignature, VerifyError> {
        let (dataset, version) = (manifest.dataset.clone(), manifest.version);
        let computed = manifest.compute_root();
        if computed != manifest.root {
            return Err(VerifyError::RootMismatch { dataset, version, expected: manifest.root, computed });
        }
        let Some(signature) = manifest.signature.as_ref() else {
            return Err(VerifyError::Unsigned { dataset, version });
        };
        let Some(key) = self.keys.get(&signature.key_id) else {
            return Err(VerifyError::UnknownKey {
                dataset,
                version,
                key_id: signature.key_id.clone(),
                trusted: self.ids(),
            });
        };
        let message =
            signed_message(&manifest.dataset, manifest.version, &manifest.root, signature.signed_unix_ms, &key.id);
        if !key.verifies(&message, &signature.signature) {
            return Err(VerifyError::BadSignature { dataset, version, key_id: signature.key_id.clone() });
        }
        Ok(signature)
    }
}

/// Lowercase hex of any bytes (keys, signatures), as key files and manifests write them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex text (either case); `None` for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use aqueduct_proto::{ChunkRef, ChunkerParams, FileEntry};
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    fn manifest() -> Manifest {
        let chunk = ChunkRef { digest: Digest::of(b"abc"), offset: 0, length: 3 };
        let file = FileEntry {
            path: "a".into(),
            object: "p/a".into(),
            size: 3,
            mode: 0o644,
            mtime_unix_ms: 1,
            chunks: vec![chunk],
        };
        Manifest::new("ds".into(), 2, ChunkerParams::DEFAULT, vec![file]).unwrap()
    }

    #[test]
    fn a_signed_manifest_verifies_under_its_key_only() {
        let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let mut m = manifest();
        let both = TrustedKeys::new([old.public().clone(), new.public().clone()]);
        assert_eq!(both.verify(&m), Err(VerifyError::Unsigned { dataset: "ds".into(), version: 2 }));
        old.sign_manifest(&mut m, 1_700_000_000_000);
        assert_eq!(both.verify(&m).unwrap().key_id, *old.id());
        let only_new = TrustedKeys::new([new.public().clone()]);
        let err = only_new.verify(&m).unwrap_err();
        assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains(new.id().as_str()), "{err}");
    }

    #[test]
    fn a_changed_manifest_does_not_verify() {
        let key = SigningKey::generate().unwrap();
        let trust = TrustedKeys::new([key.public().clone()]);
        let mut m = manifest();
        key.sign_manifest(&mut m, 5);
        let mut renamed = m.clone();
        renamed.dataset = "other".into();
        assert!(matches!(trust.verify(&renamed), Err(VerifyError::BadSignature { .. })));
        let mut renumbered = m.clone();
        renumbered.version = 3;
        assert!(matches!(trust.verify(&renumbered), Err(VerifyError::BadSignature { .. })));
        let mut retimed = m.clone();
        retimed.signature.as_mut().unwrap().signed_unix_ms = 6;
        assert!(matches!(trust.verify(&retimed), Err(VerifyError::BadSignature { .. })));
        // A changed entry with the root recomputed: the signature covers the old root.
        let mut forged = m.clone();
        forged.files[0].mode = 0o755;
        forged.root = forged.compute_root();
        assert!(matches!(trust.verify(&forged), Err(VerifyError::BadSignature { .. })));
        // A changed entry under the old root.
        let mut changed = m.clone();
        changed.files[0].mode = 0o755;
        assert!(matches!(trust.verify(&changed), Err(VerifyError::RootMismatch { .. })));
    }

    #[test]
    fn key_files_round_trip_and_exposed_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing/k.key");
        let key = SigningKey::generate().unwrap();
        key.write(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = SigningKey::load(&path).unwrap();
        assert_eq!(again.public(), key.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let public: PublicKey = key.public().to_string().parse().unwrap();
        assert_eq!(&public, key.public());
        assert_eq!(parse_public_keys(&format!("# hub\n\n{public}\n")).unwrap(), vec![public]);
    }

    proptest! {
        #![proptest_config(fuzz::config(256))]

        /// Any text is a public key or refused, never a panic; what parses prints back as itself
        /// (hex digits in lower case).
        #[test]
        fn fuzz_public_keys_parse_or_are_refused(
            text in prop_oneof!["ed25519:[0-9a-f]{64}", "ed25519:[0-9a-fA-F]{0,70}", ".{0,80}"],
        ) {
            if let Ok(key) = text.parse::<PublicKey>() {
                prop_assert_eq!(key.to_string(), text.trim().to_ascii_lowercase());
                prop_assert_eq!(key.id().as_str().len(), KeyId::HEX_LEN);
            }
            let _ = parse_public_keys(&text);
        }

        /// Any text is a signing key file or refused, never a panic; a real key's file with
        /// bytes changed either reads back as some valid key or is refused.
        #[test]
        fn fuzz_key_files_parse_or_are_refused(
            text in prop_oneof![
                ".{0,120}",
                "aqueduct-signing-key-v1 [0-9a-f]{0,200}",
                "#[^\n]{0,20}\naqueduct-signing-key-v1 [0-9a-z]{0,100}\n",
            ],
            flip in any::<prop::sample::Index>(),
        ) {
            let _ = SigningKey::from_text(&text);
            let key = SigningKey::generate().unwrap();
            let mut bytes = key.to_text().into_bytes();
            let i = flip.index(bytes.len());
            bytes[i] = bytes[i].wrapping_add(1);
            if let Ok(changed) = String::from_utf8(bytes)
                && let Ok(read) = SigningKey::from_text(&changed)
            {
                let mut m = manifest();
                read.sign_manifest(&mut m, 1);
                prop_assert!(TrustedKeys::new([read.public().clone()]).verify(&m).is_ok());
            }
        }

        /// A signature verifies exactly when nothing it covers changed.
        #[test]
        fn fuzz_signatures_verify_only_what_was_signed(
            dataset in "[a-z]{1,8}", version in any::<u64>(), other_version in any::<u64>(),
            at in any::<i64>(), flip in 0usize..SIGNATURE_LEN, mask in 1u8..=255,
        ) {
            let key = SigningKey::generate().unwrap();
            let trust = TrustedKeys::new([key.public().clone()]);
            let mut m = manifest();
            m.dataset = dataset;
            m.version = version;
            key.sign_manifest(&mut m, at);
            prop_assert!(trust.verify(&m).is_ok());
            let mut renumbered = m.clone();
            renumbered.version = other_version;
            prop_assert_eq!(trust.verify(&renumbered).is_ok(), other_version == version);
            let mut flipped = m.clone();
            flipped.signature.as_mut().unwrap().signature[flip] ^= mask;
            prop_assert!(trust.verify(&flipped).is_err());
        }
    }
}
