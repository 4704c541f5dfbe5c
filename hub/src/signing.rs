//! The hub's signature on every version it serves.
//!
//! The [`Signer`] holds the key that signs new versions (`[signing] key`, a file of its own
//! under the data directory, mode 0600, apart from the TLS keys) and the public keys the hub
//! publishes: that key's and those of the other `*.key` files beside it (a key made for a
//! rotation, or the one it replaces), so that spokes can trust a new key before the hub signs
//! with it and keep verifying old versions under the old one. A version is signed once, when it
//! is cut; it keeps that signature whatever key signs later ones. Versions of a database from
//! before signatures are signed when the hub starts ([`sign_unsigned`]); a version cut by a
//! hub that stopped before it signed is signed on its first use ([`signature_for`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aqueduct_core::signing::{PublicKey, SigningError, SigningKey};
use aqueduct_proto::domain::signature::VersionSignature;
use aqueduct_proto::{Digest, Manifest};
use tracing::{error, info, warn};

use crate::snapshot::{SnapshotError, SnapshotOutcome, blocking, now_unix_ms};
use crate::store::{MetaStore, StoreError};

/// The hub's signing key and the public keys it publishes.
pub struct Signer {
    key: SigningKey,
    path: PathBuf,
    published: Vec<PublicKey>,
}

impl Signer {
    /// Reads the signing key at `path`, or makes it there (0600) if there is none (a hub of
    /// before signatures gets one on its first start).
    pub fn open_or_create(path: &Path) -> Result<Self, SigningError> {
        if !path.exists() {
            let key = SigningKey::generate()?;
            key.write(path)?;
            info!(path = %path.display(), key_id = %key.id(), public_key = %key.public(), "made a new signing key: spokes must trust its public key");
        }
        Self::open(path)
    }

    /// Reads the signing key at `path` and the keys beside it.
    pub fn open(path: &Path) -> Result<Self, SigningError> {
        let key = SigningKey::load(path)?;
        let mut published = vec![key.public().clone()];
        for other in other_keys(path) {
            match SigningKey::load(&other) {
                Ok(k) if !published.contains(k.public()) => published.push(k.public().clone()),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "a signing key beside the hub's is not published"),
            }
        }
        Ok(Self { key, path: path.to_owned(), published })
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public keys spokes should trust: the signing key's first.
    pub fn published(&self) -> &[PublicKey] {
        &self.published
    }

    /// The published keys as a trust file (what `[trust] signing_keys_file` and `aq verify
    /// --key` read): a comment per key, then the key.
    pub fn trust_file(&self) -> String {
        let mut text = String::from("# Aqueduct hub signing public keys: trust them in the spokes' [trust] section.\n");
        for (i, k) in self.published.iter().enumerate() {
            let role = if i == 0 { "signs new versions" } else { "published beside it (rotation)" };
            text.push_str(&format!("# key id {} ({role})\n{k}\n", k.id()));
        }
        text
    }
}

/// Makes a new signing key beside the one at `current` (`DIR/KEYID.key`), for a rotation;
/// returns its path and the key.
pub fn new_key_beside(current: &Path) -> Result<(PathBuf, SigningKey), SigningError> {
    let key = SigningKey::generate()?;
    let path = current.with_file_name(format!("{}.key", key.id()));
    key.write(&path)?;
    Ok((path, key))
}

/// The other `*.key` files in the signing key's directory.
fn other_keys(path: &Path) -> Vec<PathBuf> {
    let Some(dir) = path.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut keys: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "key") && p.file_name() != path.file_name())
        .collect();
    keys.sort();
    keys
}

/// The signature of `dataset@version` (whose root is `root`): the one stored, or, for a
/// version that has none yet, a new one by the signing key, stored (first use).
pub async fn signature_for(
    db: &Arc<dyn MetaStore>,
    signer: &Arc<Signer>,
    dataset: &str,
    version: u64,
    root: Digest,
) -> Result<VersionSignature, StoreError> {
    let (owned, signer) = (dataset.to_string(), signer.clone());
    blocking(db, move |db| {
        if let Some(signature) = db.signature(&owned, version)? {
            return Ok(signature);
        }
        let signature = signer.key.sign(&owned, version, &root, now_unix_ms());
        let kept = db.add_signature(&owned, version, &signature)?;
        info!(dataset = %owned, version, key_id = %kept.key_id, "signed a version");
        Ok(kept)
    })
    .await
}

/// `manifest` with its signature ([`signature_for`]).
pub async fn signed_manifest(
    db: &Arc<dyn MetaStore>,
    signer: &Arc<Signer>,
    mut manifest: Manifest,
) -> Result<Manifest, StoreError> {
    manifest.signature = Some(signature_for(db, signer, &manifest.dataset, manifest.version, manifest.root).await?);
    Ok(manifest)
}

/// A snapshot's outcome with the signature of the version it cut (or found unchanged): a
/// version is signed as it is cut (a hub that stops in between signs it on its first use, or
/// at its next start).
pub async fn signed(
    db: &Arc<dyn MetaStore>,
    signer: &Arc<Signer>,
    outcome: Result<SnapshotOutcome, SnapshotError>,
) -> Result<(SnapshotOutcome, VersionSignature), SnapshotError> {
    let outcome = outcome?;
    let r = &outcome.record;
    let signature = signature_for(db, signer, &r.dataset, r.number, r.root).await?;
    Ok((outcome, signature))
}

/// Signs every version that has no signature (a database from before signatures), each over
/// the root its stored entries hash to; a version whose entries do not verify is left unsigned
/// (spokes refuse it) and logged. Returns how many it signed.
pub fn sign_unsigned(db: &dyn MetaStore, signer: &Signer) -> Result<usize, StoreError> {
    let mut signed = 0;
    for v in db.unsigned_versions()? {
        match db.version(&v.dataset, Some(v.version)) {
            Ok(Some(stored)) => {
                let signature = signer.key.sign(&v.dataset, v.version, &stored.manifest.root, now_unix_ms());
                db.add_signature(&v.dataset, v.version, &signature)?;
                signed += 1;
            }
            Ok(None) => {}
            Err(e) => {
                error!(dataset = %v.dataset, version = v.version, error = %e, "a version of the database does not verify: left unsigned, spokes refuse it");
            }
        }
    }
    if signed > 0 {
        info!(signed, key_id = %signer.key.id(), "signed the versions of before signatures");
    }
    Ok(signed)
}
