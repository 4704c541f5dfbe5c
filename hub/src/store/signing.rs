//! The versions' signatures ([`SigningStore`]), kept beside the versions in their own table
//! (`version_signatures`, schema 6), and their SQL (both engines). A signature is
//! written once: a version keeps the signature it got, whatever key signs later ones.

use super::StoreError;
use super::meta::SqlStore;
use super::sql::args;
use aqueduct_proto::Digest;
use aqueduct_proto::domain::signature::{SIGNATURE_LEN, VersionSignature};

/// A version of the database with no signature yet: what the hub signs at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedVersion {
    pub dataset: String,
    pub version: u64,
    pub root: Digest,
}

/// Signatures of versions.
pub trait SigningStore {
    /// The signature of `dataset@version`, if it has one.
    fn signature(&self, dataset: &str, version: u64) -> Result<Option<VersionSignature>, StoreError>;
    /// Records the signature of a version unless it has one already; returns the one it has
    /// after the call (the first written wins).
    fn add_signature(
        &self,
        dataset: &str,
        version: u64,
        signature: &VersionSignature,
    ) -> Result<VersionSignature, StoreError>;
    /// Every version without a signature, by dataset and number.
    fn unsigned_versions(&self) -> Result<Vec<UnsignedVersion>, StoreError>;
}

fn decode(
    dataset: &str,
    version: u64,
    key_id: String,
    at: i64,
    bytes: Vec<u8>,
) -> Result<VersionSignature, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("the signature of {dataset}@v{version}: {what}"));
    Ok(VersionSignature {
        key_id: key_id
            .parse()
            .map_err(|e: aqueduct_proto::domain::signature::SignatureError| corrupt(e.to_string()))?,
        signed_unix_ms: at,
        signature: <[u8; SIGNATURE_LEN]>::try_from(bytes.as_slice())
            .map_err(|_| corrupt(format!("{} bytes, not {SIGNATURE_LEN}", bytes.len())))?,
    })
}

impl SigningStore for SqlStore {
    fn signature(&self, dataset: &str, version: u64) -> Result<Option<VersionSignature>, StoreError> {
        let row = self.db.read(|tx| {
            tx.query_opt(
                "SELECT key_id, signed_ms, signature FROM version_signatures WHERE dataset = ?1 AND version = ?2",
                args![dataset, version],
            )
        })?;
        row.map(|r| decode(dataset, version, r.get(0)?, r.get(1)?, r.get(2)?)).transpose()
    }

    fn add_signature(
        &self,
        dataset: &str,
        version: u64,
        signature: &VersionSignature,
    ) -> Result<VersionSignature, StoreError> {
        let r = self.db.write(|tx| {
            tx.execute(
                "INSERT INTO version_signatures (dataset, version, key_id, signed_ms, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dataset, version) DO NOTHING",
                args![
                    dataset,
                    version,
                    signature.key_id.as_str(),
                    signature.signed_unix_ms,
                    signature.signature.as_slice()
                ],
            )?;
            tx.query_one(
                "SELECT key_id, signed_ms, signature FROM version_signatures WHERE dataset = ?1 AND version = ?2",
                args![dataset, version],
            )
        })?;
        decode(dataset, version, r.get(0)?, r.get(1)?, r.get(2)?)
    }

    fn unsigned_versions(&self) -> Result<Vec<UnsignedVersion>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT v.dataset, v.number, v.root FROM versions v
                 WHERE NOT EXISTS (SELECT 1 FROM version_signatures s WHERE s.dataset = v.dataset AND s.version = v.number)
                 ORDER BY v.dataset, v.number",
                &[],
            )
        })?;
        let mut unsigned = Vec::new();
        for r in &rows {
            let (dataset, version): (String, u64) = (r.get(0)?, r.get(1)?);
            let root = Digest::from_slice(&r.get::<Vec<u8>>(2)?)
                .ok_or_else(|| StoreError::Corrupt(format!("the root of {dataset}@v{version} is not 32 bytes")))?;
            unsigned.push(UnsignedVersion { dataset, version, root });
        }
        Ok(unsigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_engines;

    fn signature(byte: u8) -> VersionSignature {
        VersionSignature { key_id: "0123456789abcdef".parse().unwrap(), signed_unix_ms: 7, signature: [byte; 64] }
    }

    on_both_engines! {
        fn a_version_keeps_the_first_signature_it_got() {
            let db = crate::store::tests::fresh_store();
            assert_eq!(db.signature("d", 1).unwrap(), None);
            assert_eq!(db.add_signature("d", 1, &signature(1)).unwrap(), signature(1));
            assert_eq!(db.add_signature("d", 1, &signature(2)).unwrap(), signature(1));
            assert_eq!(db.signature("d", 1).unwrap(), Some(signature(1)));
            assert_eq!(db.signature("d", 2).unwrap(), None);
        }
    }
}
