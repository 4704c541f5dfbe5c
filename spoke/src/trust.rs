//! `[trust]`: the hub signing keys this spoke trusts. Every manifest the spoke replicates,
//! mounts or hands to a sidecar must carry a signature one of them verifies
//! (`aqueduct_core::signing`); the catalog checks it before a byte of the version is fetched or
//! served. Several keys may be trusted at once, so that the hub's key rotates without a flag
//! day.

use std::path::{Path, PathBuf};

use aqueduct_core::signing::{PublicKey, TrustedKeys, parse_public_keys};
use serde::Deserialize;

/// The `[trust]` section of the spoke's config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Public keys (`ed25519:HEX`), as `aqueduct-hub signing-key show` prints them.
    #[serde(default)]
    pub signing_keys: Vec<String>,
    /// A file of public keys, one per line (`#` comments), e.g. the hub's `signing/hub.pub`
    /// or the `signing.pub` of a region bundle; relative to the config file.
    #[serde(default)]
    pub signing_keys_file: Option<PathBuf>,
    /// Both, parsed: filled when the config loads.
    #[serde(skip)]
    pub keys: TrustedKeys,
}

impl TrustConfig {
    /// Reads and checks the keys; the message names the key of the config that is wrong.
    pub fn resolve(&mut self, config_dir: &Path) -> Result<(), String> {
        let mut keys: Vec<PublicKey> = Vec::new();
        for (i, text) in self.signing_keys.iter().enumerate() {
            keys.push(text.parse().map_err(|e| format!("trust.signing_keys[{i}]: {e}"))?);
        }
        if let Some(file) = &mut self.signing_keys_file {
            if file.is_relative() {
                *file = config_dir.join(&*file);
            }
            let text = std::fs::read_to_string(&*file)
                .map_err(|e| format!("trust.signing_keys_file: cannot read {}: {e}", file.display()))?;
            keys.extend(
                parse_public_keys(&text).map_err(|e| format!("trust.signing_keys_file {}: {e}", file.display()))?,
            );
        }
        if keys.is_empty() {
            return Err("trust: no hub signing key is trusted, so no version could be served: add [trust] \
                 signing_keys = [\"ed25519:...\"] or signing_keys_file (`aqueduct-hub signing-key show` prints the \
                 hub's keys; a region bundle of `aq region add` holds them in signing.pub)"
                .into());
        }
        self.keys = TrustedKeys::new(keys);
        Ok(())
    }
}

/// One signing key for the crate's unit tests, and the trust in it.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::OnceLock;

    use aqueduct_core::signing::{SigningKey, TrustedKeys};
    use aqueduct_proto::Manifest;

    pub fn key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().expect("a key"))
    }

    /// Trusts [`key`] only.
    pub fn trust() -> TrustedKeys {
        TrustedKeys::new([key().public().clone()])
    }

    /// Signs `m` with [`key`].
    pub fn sign(m: &mut Manifest) {
        key().sign_manifest(m, 1);
    }
}
