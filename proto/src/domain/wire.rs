//! Conversions between the domain types and their wire forms: the one place where what comes
//! off the network is checked (digest lengths, paths, tiling, root; phases and modes the
//! contract names) before anything uses it.

use super::{
    ChunkRef, ChunkerParams, Digest, FileEntry, MANIFEST_FORMAT, Manifest, ManifestError, ModeError, Phase, PhaseError,
    ReplicationMode,
};
use crate::hub::v1 as pb;

impl From<Phase> for pb::Phase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Pending => pb::Phase::Pending,
            Phase::Transferring => pb::Phase::Transferring,
            Phase::Ready => pb::Phase::Ready,
            Phase::Failed => pb::Phase::Failed,
        }
    }
}

impl TryFrom<pb::Phase> for Phase {
    type Error = PhaseError;

    /// `UNSPECIFIED` is no phase: refused.
    fn try_from(p: pb::Phase) -> Result<Self, Self::Error> {
        match p {
            pb::Phase::Unspecified => Err(PhaseError("UNSPECIFIED (none given)".into())),
            pb::Phase::Pending => Ok(Phase::Pending),
            pb::Phase::Transferring => Ok(Phase::Transferring),
            pb::Phase::Ready => Ok(Phase::Ready),
            pb::Phase::Failed => Ok(Phase::Failed),
        }
    }
}

impl Phase {
    /// The value a message's `phase` field holds.
    pub fn to_wire(self) -> i32 {
        pb::Phase::from(self).into()
    }

    /// The phase a message's `phase` field names; unspecified or unknown values are refused.
    pub fn from_wire(value: i32) -> Result<Self, PhaseError> {
        pb::Phase::try_from(value).map_err(|_| PhaseError(format!("{value} (not in the contract)")))?.try_into()
    }
}

impl From<ReplicationMode> for pb::ReplicationMode {
    fn from(m: ReplicationMode) -> Self {
        match m {
            ReplicationMode::Auto => pb::ReplicationMode::Auto,
            ReplicationMode::Region => pb::ReplicationMode::Region,
            ReplicationMode::EveryNode => pb::ReplicationMode::EveryNode,
        }
    }
}

impl From<pb::ReplicationMode> for ReplicationMode {
    /// `UNSPECIFIED` is the default: auto.
    fn from(m: pb::ReplicationMode) -> Self {
        match m {
            pb::ReplicationMode::Unspecified | pb::ReplicationMode::Auto => ReplicationMode::Auto,
            pb::ReplicationMode::Region => ReplicationMode::Region,
            pb::ReplicationMode::EveryNode => ReplicationMode::EveryNode,
        }
    }
}

impl ReplicationMode {
    /// The value a message's `mode` field holds.
    pub fn to_wire(self) -> i32 {
        pb::ReplicationMode::from(self).into()
    }

    /// The mode a message's `mode` field names (unspecified: auto); unknown values are refused.
    pub fn from_wire(value: i32) -> Result<Self, ModeError> {
        pb::ReplicationMode::try_from(value).map(Self::from).map_err(|_| ModeError(value.to_string()))
    }
}

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
            signature: m.signature.as_ref().map(pb::VersionSignature::from),
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
            signature: m
                .signature
                .as_ref()
                .map(super::signature::VersionSignature::try_from)
                .transpose()
                .map_err(ManifestError::BadSignature)?,
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
            + self.signature.as_ref().map_or(0, |s| {
                message(
                    bytes(s.key_id.as_str().len())
                        + scalar(s.signed_unix_ms as u64)
                        + bytes(super::signature::SIGNATURE_LEN),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;
    use prost::Message;

    /// A valid manifest: a few files of clean paths, each tiled by chunks.
    pub(crate) fn manifest() -> impl Strategy<Value = Manifest> {
        let file = (
            proptest::collection::vec("[a-c]{1,3}|[^/\u{0}]{1,6}", 1..4),
            proptest::collection::vec((any::<[u8; 32]>(), 1u32..=(crate::MAX_CHUNK_BYTES as u32)), 0..5),
            any::<u32>(),
            any::<i64>(),
        );
        let signature = proptest::option::of(("[0-9a-f]{16}", any::<i64>(), any::<[u8; 32]>()));
        (".{0,12}", any::<u64>(), proptest::collection::vec(file, 0..6), signature).prop_map(
            |(dataset, version, files, signature)| {
                let mut by_path = std::collections::BTreeMap::new();
                for (parts, chunks, mode, mtime) in files {
                    let path = parts.join("/");
                    if super::super::validate_path(&path).is_err() {
                        continue;
                    }
                    let mut offset = 0;
                    let chunks: Vec<ChunkRef> = chunks
                        .into_iter()
                        .map(|(d, length)| {
                            let c = ChunkRef { digest: Digest(d), offset, length };
                            offset += u64::from(length);
                            c
                        })
                        .collect();
                    let object = format!("prefix/{path}");
                    by_path.insert(
                        path.clone(),
                        FileEntry { path, object, size: offset, mode, mtime_unix_ms: mtime, chunks },
                    );
                }
                // No file where another file's directory is.
                let dirs: std::collections::HashSet<String> = by_path
                    .keys()
                    .flat_map(|p| p.match_indices('/').map(|(i, _)| p[..i].to_string()).collect::<Vec<_>>())
                    .collect();
                let files = by_path.into_values().filter(|f| !dirs.contains(&f.path)).collect();
                let chunker = ChunkerParams { min_size: 1, avg_size: 1 << 20, max_size: crate::MAX_CHUNK_BYTES as u32 };
                let mut m = Manifest::new(dataset, version, chunker, files).expect("valid by construction");
                m.signature =
                    signature.map(|(key_id, signed_unix_ms, half)| super::super::signature::VersionSignature {
                        key_id: key_id.parse().expect("16 hex digits"),
                        signed_unix_ms,
                        signature: [half, half].concat().try_into().expect("64 bytes"),
                    });
                m
            },
        )
    }

    /// One change to a manifest's wire form, as a corrupting link or a forger would make it.
    #[derive(Clone, Debug)]
    enum Change {
        Format(u32),
        Dataset(String),
        Chunker(Option<(u32, u32, u32)>),
        Path(usize, String),
        Size(usize, u64),
        Digest(usize, usize, Vec<u8>),
        Offset(usize, usize, u64),
        Length(usize, usize, u32),
        DropChunk(usize, usize),
        DuplicateFile(usize),
        SwapFiles(usize, usize),
        Root(Vec<u8>),
    }

    fn change() -> impl Strategy<Value = Change> {
        let i = || 0usize..8;
        prop_oneof![
            any::<u32>().prop_map(Change::Format),
            ".{0,8}".prop_map(Change::Dataset),
            proptest::option::of(any::<(u32, u32, u32)>()).prop_map(Change::Chunker),
            (i(), "([a-c./]|[^\u{0}]){0,8}").prop_map(|(f, p)| Change::Path(f, p)),
            (i(), any::<u64>()).prop_map(|(f, s)| Change::Size(f, s)),
            (i(), i(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(f, c, d)| Change::Digest(f, c, d)),
            (i(), i(), any::<u64>()).prop_map(|(f, c, o)| Change::Offset(f, c, o)),
            (i(), i(), any::<u32>()).prop_map(|(f, c, l)| Change::Length(f, c, l)),
            (i(), i()).prop_map(|(f, c)| Change::DropChunk(f, c)),
            i().prop_map(Change::DuplicateFile),
            (i(), i()).prop_map(|(a, b)| Change::SwapFiles(a, b)),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Change::Root),
        ]
    }

    fn apply(m: &mut pb::Manifest, change: Change) {
        let n = m.files.len().max(1);
        fn chunk(m: &mut pb::Manifest, f: usize, c: usize) -> Option<&mut pb::ChunkRef> {
            let n = m.files.len().max(1);
            let file = m.files.get_mut(f % n)?;
            let len = file.chunks.len().max(1);
            file.chunks.get_mut(c % len)
        }
        match change {
            Change::Format(f) => m.format = f,
            Change::Dataset(d) => m.dataset = d,
            Change::Chunker(c) => {
                m.chunker = c.map(|(min_size, avg_size, max_size)| pb::ChunkerParams { min_size, avg_size, max_size })
            }
            Change::Path(f, p) => m.files.get_mut(f % n).into_iter().for_each(|file| file.path = p.clone()),
            Change::Size(f, s) => m.files.get_mut(f % n).into_iter().for_each(|file| file.size = s),
            Change::Digest(f, c, d) => chunk(m, f, c).into_iter().for_each(|c| c.digest = d.clone()),
            Change::Offset(f, c, o) => chunk(m, f, c).into_iter().for_each(|c| c.offset = o),
            Change::Length(f, c, l) => chunk(m, f, c).into_iter().for_each(|c| c.length = l),
            Change::DropChunk(f, c) => {
                if let Some(file) = m.files.get_mut(f % n)
                    && !file.chunks.is_empty()
                {
                    let len = file.chunks.len();
                    file.chunks.remove(c % len);
                }
            }
            Change::DuplicateFile(f) => {
                if let Some(file) = m.files.get(f % n).cloned() {
                    m.files.insert(f % n, file);
                }
            }
            Change::SwapFiles(a, b) => {
                if !m.files.is_empty() {
                    m.files.swap(a % n, b % n);
                }
            }
            Change::Root(r) => m.root = r,
        }
    }

    /// The root a forger would compute for `m` (when its digests have the right length).
    fn forged_root(m: &pb::Manifest) -> Option<Vec<u8>> {
        let c = m.chunker.unwrap_or_default();
        let files = m
            .files
            .iter()
            .map(|f| {
                let chunks = f
                    .chunks
                    .iter()
                    .map(|c| {
                        Some(ChunkRef { digest: Digest::from_slice(&c.digest)?, offset: c.offset, length: c.length })
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(FileEntry {
                    path: f.path.clone(),
                    object: f.object.clone(),
                    size: f.size,
                    mode: f.mode,
                    mtime_unix_ms: f.mtime_unix_ms,
                    chunks,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let chunker = ChunkerParams { min_size: c.min_size, avg_size: c.avg_size, max_size: c.max_size };
        let unchecked =
            Manifest { dataset: String::new(), version: 0, chunker, files, root: Digest([0; 32]), signature: None };
        Some(unchecked.compute_root().0.to_vec())
    }

    /// What every decoded manifest must be: valid, and the same after another trip.
    fn accepted(wire: pb::Manifest) -> Result<(), TestCaseError> {
        if let Ok(m) = Manifest::try_from(wire) {
            prop_assert_eq!(m.validate(), Ok(()));
            let again = pb::Manifest::from(&m);
            let bytes = again.encode_to_vec();
            let decoded = pb::Manifest::decode(bytes.as_slice());
            prop_assert_eq!(decoded.ok(), Some(again.clone()));
            prop_assert_eq!(Manifest::try_from(again), Ok(m));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// Any bytes off the wire: decoded or refused, never a panic; what is accepted is valid.
        #[test]
        fn fuzz_manifest_from_wire_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(wire) = pb::Manifest::decode(bytes.as_slice()) {
                accepted(wire)?;
            }
        }

        /// A valid manifest's encoding, cut short or with bytes flipped.
        #[test]
        fn fuzz_manifest_from_damaged_encodings(
            m in manifest(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        ) {
            let mut bytes = pb::Manifest::from(&m).encode_to_vec();
            for (at, mask) in flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
            }
            if !bytes.is_empty() && cut.index(4) == 0 {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(wire) = pb::Manifest::decode(bytes.as_slice()) {
                accepted(wire)?;
            }
        }

        /// Arbitrary field values, each change alone or with the root recomputed (a forger):
        /// refused or valid, never a panic.
        #[test]
        fn fuzz_manifest_from_wire_fields(
            m in manifest(),
            changes in proptest::collection::vec(change(), 1..4),
            forge in any::<bool>(),
        ) {
            let mut wire = pb::Manifest::from(&m);
            for c in changes {
                apply(&mut wire, c);
            }
            if forge && let Some(root) = forged_root(&wire) {
                wire.root = root;
            }
            accepted(wire)?;
        }

        /// Every valid manifest crosses the wire unchanged.
        #[test]
        fn fuzz_manifest_round_trips(m in manifest()) {
            let wire = pb::Manifest::from(&m);
            let decoded = pb::Manifest::decode(wire.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(Manifest::try_from(decoded), Ok(m));
        }
    }

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
            let mut m = manifest(files, version);
            prop_assert_eq!(m.wire_len(), pb::Manifest::from(&m).encoded_len());
            m.signature = Some(super::super::signature::VersionSignature {
                key_id: "00ff00ff00ff00ff".parse().expect("16 hex digits"),
                signed_unix_ms: version as i64,
                signature: [9; 64],
            });
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

#[cfg(test)]
mod enum_tests {
    use super::*;

    /// Phases and modes cross the wire as the contract's enums: every one round-trips, a
    /// report without a phase or with one the contract does not name is refused, and a mode
    /// left unspecified is auto (what an empty mode meant).
    #[test]
    fn phases_and_modes_cross_the_wire_as_enums() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_wire(phase.to_wire()), Ok(phase));
        }
        assert_eq!(Phase::Ready.to_wire(), pb::Phase::Ready as i32);
        for value in [pb::Phase::Unspecified as i32, 99, -1] {
            let err = Phase::from_wire(value).unwrap_err();
            assert!(err.to_string().contains("is not one of Pending, Transferring, Ready, Failed"), "{err}");
        }
        for mode in [ReplicationMode::Auto, ReplicationMode::Region, ReplicationMode::EveryNode] {
            assert_eq!(ReplicationMode::from_wire(mode.to_wire()), Ok(mode));
        }
        assert_eq!(ReplicationMode::from_wire(pb::ReplicationMode::Unspecified as i32), Ok(ReplicationMode::Auto));
        assert_eq!(ReplicationMode::from_wire(7), Err(ModeError("7".into())));
        // A message's getter and the domain agree.
        let report = pb::ProgressReport {
            phase: Phase::Transferring.to_wire(),
            mode: ReplicationMode::Region.to_wire(),
            ..Default::default()
        };
        assert_eq!((report.phase(), report.mode()), (pb::Phase::Transferring, pb::ReplicationMode::Region));
    }
}
