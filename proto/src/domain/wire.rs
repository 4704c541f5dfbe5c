//! Conversions between the domain types and their wire forms: the one place where what comes
//! off the network is checked (digest lengths, paths, tiling, root) before anything uses it.

use super::{ChunkRef, ChunkerParams, Digest, FileEntry, MANIFEST_FORMAT, Manifest, ManifestError};
use crate::hub::v1 as pb;

impl From<ChunkerParams> for pb::ChunkerParams {
    fn from(p: ChunkerParams) -> Self {
        Self { min_size: p.min_size, avg_size: p.avg_size, max_size: p.max_size }
    }
}

impl From<&Manifest> for pb::Manifest {
    fn from(m: &Manifest) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            dataset: m.dataset.clone(),
            version: m.version,
            chunker: Some(m.chunker.into()),
            files: m
                .files
                .iter()
                .map(|f| pb::FileEntry {
                    path: f.path.clone(),
                    object: f.object.clone(),
                    size: f.size,
                    mode: f.mode,
                    mtime_unix_ms: f.mtime_unix_ms,
                    chunks: f
                        .chunks
                        .iter()
                        .map(|c| pb::ChunkRef { digest: c.digest.0.to_vec(), offset: c.offset, length: c.length })
                        .collect(),
                })
                .collect(),
            root: m.root.0.to_vec(),
        }
    }
}

impl TryFrom<pb::Manifest> for Manifest {
    type Error = ManifestError;

    fn try_from(m: pb::Manifest) -> Result<Self, Self::Error> {
        if m.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat { found: m.format });
        }
        let chunker = m.chunker.ok_or(ManifestError::Missing { field: "chunker" })?;
        let digest = |bytes: &[u8]| {
            Digest::from_slice(bytes).ok_or_else(|| ManifestError::BadDigest { what: format!("{} bytes", bytes.len()) })
        };
        let files = m
            .files
            .into_iter()
            .map(|f| {
                let chunks = f
                    .chunks
                    .iter()
                    .map(|c| Ok(ChunkRef { digest: digest(&c.digest)?, offset: c.offset, length: c.length }))
                    .collect::<Result<_, ManifestError>>()?;
                Ok(FileEntry {
                    path: f.path,
                    object: f.object,
                    size: f.size,
                    mode: f.mode,
                    mtime_unix_ms: f.mtime_unix_ms,
                    chunks,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        let manifest = Manifest {
            dataset: m.dataset,
            version: m.version,
            chunker: ChunkerParams {
                min_size: chunker.min_size,
                avg_size: chunker.avg_size,
                max_size: chunker.max_size,
            },
            files,
            root: digest(&m.root)?,
        };
        manifest.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let data = b"0123456789";
        let file = FileEntry {
            path: "a/b.bin".into(),
            object: "p/a/b.bin".into(),
            size: 10,
            mode: 0o644,
            mtime_unix_ms: 1,
            chunks: vec![
                ChunkRef { digest: Digest::of(&data[..4]), offset: 0, length: 4 },
                ChunkRef { digest: Digest::of(&data[4..]), offset: 4, length: 6 },
            ],
        };
        let m = Manifest::new("ds".into(), 2, ChunkerParams::DEFAULT, vec![file]).unwrap();
        let wire = pb::Manifest::from(&m);
        assert_eq!(Manifest::try_from(wire.clone()).unwrap(), m);

        let mut tampered = wire.clone();
        tampered.files[0].size = 11;
        assert!(Manifest::try_from(tampered).is_err());
        let mut tampered = wire.clone();
        tampered.files[0].chunks[0].digest[0] ^= 1;
        assert!(matches!(Manifest::try_from(tampered), Err(ManifestError::RootMismatch { .. })));
        let mut tampered = wire;
        tampered.files[0].chunks[0].digest.pop();
        assert!(matches!(Manifest::try_from(tampered), Err(ManifestError::BadDigest { .. })));
    }
}
