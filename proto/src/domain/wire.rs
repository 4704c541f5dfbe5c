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
        manifest.check_size()?;
        Ok(manifest)
    }
}

impl Manifest {
    /// The length of this manifest's wire form (`pb::Manifest`, protobuf-encoded), computed
    /// without building it: what [`Manifest::check_size`] holds against the limit.
    pub fn wire_len(&self) -> usize {
        fn varint(v: u64) -> usize {
            (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
        }
        // Field numbers are below 16: every key is one byte. Proto3 leaves out zero scalars
        // and empty strings and bytes; a nested message is always written.
        let scalar = |v: u64| if v == 0 { 0 } else { 1 + varint(v) };
        let bytes = |len: usize| if len == 0 { 0 } else { 1 + varint(len as u64) + len };
        let message = |body: usize| 1 + varint(body as u64) + body;
        let chunker = scalar(self.chunker.min_size.into())
            + scalar(self.chunker.avg_size.into())
            + scalar(self.chunker.max_size.into());
        let files: usize = self
            .files
            .iter()
            .map(|f| {
                let chunks: usize = f
                    .chunks
                    .iter()
                    .map(|c| message(bytes(Digest::LEN) + scalar(c.offset) + scalar(c.length.into())))
                    .sum();
                message(
                    bytes(f.path.len())
                        + bytes(f.object.len())
                        + scalar(f.size)
                        + scalar(f.mode.into())
                        + scalar(f.mtime_unix_ms as u64)
                        + chunks,
                )
            })
            .sum();
        scalar(MANIFEST_FORMAT.into())
            + bytes(self.dataset.len())
            + scalar(self.version)
            + message(chunker)
            + files
            + bytes(Digest::LEN)
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

/// The manifest's size bound: [`Manifest::wire_len`] is exactly what prost encodes, for any
/// manifest, and a manifest above the bound is refused where it is cut and where it is read.
#[cfg(test)]
mod size_tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    /// A file: its path, object key, mode, mtime, and its chunks as (seed of the digest, length).
    type File = (String, String, u32, i64, Vec<(u64, u32)>);

    fn manifest(files: Vec<File>, version: u64) -> Manifest {
        let files = files
            .into_iter()
            .enumerate()
            .map(|(i, (path, object, mode, mtime, chunks))| {
                let mut offset = 0;
                let chunks: Vec<ChunkRef> = chunks
                    .into_iter()
                    .map(|(seed, length)| {
                        let c = ChunkRef { digest: Digest::of(&seed.to_le_bytes()), offset, length };
                        offset += u64::from(length);
                        c
                    })
                    .collect();
                FileEntry { path: format!("{i}/{path}"), object, size: offset, mode, mtime_unix_ms: mtime, chunks }
            })
            .collect();
        Manifest::new("ds".into(), version, ChunkerParams::DEFAULT, files).unwrap()
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(512))]

        #[test]
        fn fuzz_wire_len_is_the_encoded_length(
            files in proptest::collection::vec(
                ("[a-z]{1,20}", ".{0,40}", any::<u32>(), any::<i64>(),
                 proptest::collection::vec((any::<u64>(), 1..=ChunkerParams::DEFAULT.max_size), 0..6)),
                0..6,
            ),
            version in any::<u64>(),
        ) {
            let m = manifest(files, version);
            prop_assert_eq!(m.wire_len(), pb::Manifest::from(&m).encoded_len());
        }
    }

    #[test]
    fn a_manifest_above_the_bound_is_refused_with_its_size() {
        let m = manifest(vec![("a".into(), "a".into(), 0o644, 1, vec![(1, 100), (2, 100)])], 1);
        let len = m.wire_len();
        assert!(m.check_size_within(len).is_ok());
        let err = m.check_size_within(len - 1).unwrap_err();
        assert!(matches!(err, ManifestError::TooLarge { files: 1, chunks: 2, .. }), "{err}");
        assert!(err.to_string().contains("split the dataset"), "{err}");
        // The real bound holds far more than a small manifest.
        assert!(m.check_size().is_ok());
        // A chunker that allows chunks above what any component moves is refused.
        let mut big = m.clone();
        big.chunker.max_size = crate::MAX_CHUNK_BYTES as u32 + 1;
        assert!(matches!(big.validate(), Err(ManifestError::ChunkerTooLarge { .. })));
    }
}
