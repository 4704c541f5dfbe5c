//! Domain types shared by every Aqueduct component.
//!
//! A dataset version is a [`Manifest`]: every file with its size, mode, mtime and the ordered,
//! content-defined chunks that tile it, each named by its BLAKE3 [`Digest`]. The manifest's
//! root hash covers the file tree's content (paths, metadata, chunk digests and lengths), not
//! the dataset's name, the version number or where the bytes sit in the source, so the same
//! tree always has the same root. Wire conversions and their validation live in [`wire`].
//!
//! The file is some 600 lines long: the shared types and their unit and property tests stand together.

use std::fmt;
use std::str::FromStr;

pub mod class;
pub mod cut_over;
pub mod modes;
pub mod rollout;
pub mod signature;
pub mod tag;
pub mod units;
pub mod wire;

pub use rollout::{ModeError, Phase, PhaseError, ReplicationMode};
pub use units::{DurationError, Rate, RateError, Size, SizeError, format_duration, parse_duration};

/// Version of the manifest format and of the root-hash rules below. Bumped on any change.
pub const MANIFEST_FORMAT: u32 = 1;

/// BLAKE3 hash of a chunk's bytes (or of a manifest's canonical encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub const LEN: usize = 32;

    /// Hashes `bytes` with BLAKE3.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits (what [`Digest::to_hex`] writes).
    pub fn from_hex(hex: &str) -> Option<Self> {
        blake3::Hash::from_hex(hex).ok().map(|h| Self(*h.as_bytes()))
    }

    /// The first 12 hex digits, for logs and tables.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s).map(Self::from).map_err(|_| ManifestError::BadDigest { what: s.to_string() })
    }
}

/// FastCDC parameters. Versions of a dataset must be cut with the same parameters for their
/// chunks to be shared, so they are recorded in every manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB: small enough that an edit moves little, large enough that
    /// per-chunk overheads (a database row, a gRPC message, a file) stay small.
    pub const DEFAULT: Self = Self { min_size: 128 << 10, avg_size: 512 << 10, max_size: 2 << 20 };
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One chunk of a file: its digest and where it sits in the file (and in the source object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub digest: Digest,
    pub offset: u64,
    pub length: u32,
}

impl ChunkRef {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }
}

/// One file of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative, `/`-separated path inside the dataset.
    pub path: String,
    /// Key of the source object holding the bytes.
    pub object: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_unix_ms: i64,
    pub chunks: Vec<ChunkRef>,
}

impl FileEntry {
    /// The file's root: BLAKE3 over its size and its chunks' digests and lengths, in order.
    /// Names the file's content independently of its path and of the version it is in; the
    /// FUSE view shows it as the `user.aqueduct.root` extended attribute.
    pub fn root(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"aqueduct-file");
        h.update(&MANIFEST_FORMAT.to_le_bytes());
        h.update(&self.size.to_le_bytes());
        for chunk in &self.chunks {
            h.update(chunk.digest.as_bytes());
            h.update(&chunk.length.to_le_bytes());
        }
        h.finalize().into()
    }
}

/// An immutable version of a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub dataset: String,
    pub version: u64,
    pub chunker: ChunkerParams,
    /// Sorted by path, paths unique.
    pub files: Vec<FileEntry>,
    pub root: Digest,
    /// The hub's signature over (dataset, version, root); `None` until the hub signed it.
    /// Not covered by the root: it covers the root.
    pub signature: Option<signature::VersionSignature>,
}

impl Manifest {
    /// Builds a manifest from files in any order: sorts them and computes the root.
    pub fn new(
        dataset: String,
        version: u64,
        chunker: ChunkerParams,
        mut files: Vec<FileEntry>,
    ) -> Result<Self, ManifestError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let root = compute_root(chunker, &files);
        let manifest = Self { dataset, version, chunker, files, root, signature: None };
        manifest.validate()?;
        manifest.check_size()?;
        Ok(manifest)
    }

    /// Refuses a manifest whose wire form is above [`crate::MAX_MANIFEST_BYTES`]: no
    /// component could send or accept it. The hub checks it when it cuts a version and
    /// before it serves one; spokes when they decode one.
    pub fn check_size(&self) -> Result<(), ManifestError> {
        self.check_size_within(crate::MAX_MANIFEST_BYTES)
    }

    pub(crate) fn check_size_within(&self, limit: usize) -> Result<(), ManifestError> {
        let (bytes, limit) = (self.wire_len() as u64, limit as u64);
        if bytes > limit {
            return Err(ManifestError::TooLarge {
                bytes,
                limit,
                files: self.files.len() as u64,
                chunks: self.chunk_count(),
            });
        }
        Ok(())
    }

    /// The root over the canonical encoding of the file tree. Covers (format, chunker
    /// parameters, and for each file in path order: path, size, mode, mtime, and each chunk's
    /// digest and length). Offsets follow from the lengths; the object key is a location, not
    /// content, and is left out.
    pub fn compute_root(&self) -> Digest {
        compute_root(self.chunker, &self.files)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn chunk_count(&self) -> u64 {
        self.files.iter().map(|f| f.chunks.len() as u64).sum()
    }

    /// Every distinct chunk of the version, with its length, in first-seen order.
    pub fn distinct_chunks(&self) -> Vec<(Digest, u32)> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter(|c| seen.insert(c.digest))
            .map(|c| (c.digest, c.length))
            .collect()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.binary_search_by(|f| f.path.as_str().cmp(path)).ok().map(|i| &self.files[i])
    }

    /// Checks the invariants every reader relies on: valid unique sorted paths, chunks that
    /// tile each file exactly, chunk lengths within the chunker's maximum, and the root.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.chunker.max_size as usize > crate::MAX_CHUNK_BYTES {
            return Err(ManifestError::ChunkerTooLarge { max_size: self.chunker.max_size });
        }
        let mut previous: Option<&str> = None;
        // Sorted, so a file's directories come before it: none of them may be a file.
        let mut seen = std::collections::HashSet::with_capacity(self.files.len());
        for file in &self.files {
            validate_path(&file.path)?;
            if let Some(prev) = previous
                && prev >= file.path.as_str()
            {
                return Err(ManifestError::Unsorted { path: file.path.clone() });
            }
            previous = Some(&file.path);
            if let Some(dir) = file.path.match_indices('/').map(|(i, _)| &file.path[..i]).find(|d| seen.contains(d)) {
                return Err(ManifestError::FileIsDirectory { path: dir.to_string(), inside: file.path.clone() });
            }
            seen.insert(file.path.as_str());
            let mut offset = 0u64;
            for (index, chunk) in file.chunks.iter().enumerate() {
                if chunk.offset != offset || chunk.length == 0 || chunk.length > self.chunker.max_size {
                    return Err(ManifestError::ChunksDoNotTile { path: file.path.clone(), index });
                }
                offset = offset
                    .checked_add(u64::from(chunk.length))
                    .ok_or(ManifestError::ChunksDoNotTile { path: file.path.clone(), index })?;
            }
            if offset != file.size {
                return Err(ManifestError::ChunksDoNotTile { path: file.path.clone(), index: file.chunks.len() });
            }
        }
        let computed = self.compute_root();
        if computed != self.root {
            return Err(ManifestError::RootMismatch { expected: self.root, computed });
        }
        Ok(())
    }
}

fn compute_root(chunker: ChunkerParams, files: &[FileEntry]) -> Digest {
    fn put_str(h: &mut blake3::Hasher, s: &str) {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    let mut h = blake3::Hasher::new();
    h.update(b"aqueduct-manifest");
    h.update(&MANIFEST_FORMAT.to_le_bytes());
    for v in [chunker.min_size, chunker.avg_size, chunker.max_size] {
        h.update(&v.to_le_bytes());
    }
    h.update(&(files.len() as u64).to_le_bytes());
    for file in files {
        put_str(&mut h, &file.path);
        h.update(&file.size.to_le_bytes());
        h.update(&file.mode.to_le_bytes());
        h.update(&file.mtime_unix_ms.to_le_bytes());
        h.update(&(file.chunks.len() as u64).to_le_bytes());
        for chunk in &file.chunks {
            h.update(chunk.digest.as_bytes());
            h.update(&chunk.length.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// Checks a path inside a dataset: relative, `/`-separated, no empty, `.` or `..` parts.
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(ManifestError::BadPath { path: path.to_string() });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error(
        "manifest format {found} is not supported (this build reads format {MANIFEST_FORMAT}); upgrade this component"
    )]
    UnsupportedFormat { found: u32 },
    #[error("{what:?} is not a BLAKE3 digest (64 hex digits or 32 bytes)")]
    BadDigest { what: String },
    #[error("file path {path:?} is not a clean relative path")]
    BadPath { path: String },
    #[error("file {path:?} is out of order or duplicated in the manifest")]
    Unsorted { path: String },
    #[error(
        "{path:?} is both a file and a directory in the manifest (it holds {inside:?}): a path names one or the other"
    )]
    FileIsDirectory { path: String, inside: String },
    #[error("the chunks of file {path:?} do not tile it (at chunk {index})")]
    ChunksDoNotTile { path: String, index: usize },
    #[error("manifest root mismatch: it says {expected} but its content hashes to {computed}")]
    RootMismatch { expected: Digest, computed: Digest },
    #[error("the manifest's signature cannot be read: {0}")]
    BadSignature(signature::SignatureError),
    #[error("manifest field {field} is missing")]
    Missing { field: &'static str },
    #[error(
        "the manifest allows chunks of up to {max_size} bytes, more than the {} any component moves",
        crate::MAX_CHUNK_BYTES
    )]
    ChunkerTooLarge { max_size: u32 },
    #[error(
        "the manifest of this version would be {} ({files} files, {chunks} chunks), above Aqueduct's limit of {} per manifest: split the dataset into smaller ones (one per model, or by prefix)",
        units::Size(*bytes), units::Size(*limit)
    )]
    TooLarge { bytes: u64, limit: u64, files: u64, chunks: u64 },
}

/// Checks a source or dataset name: 1 to 63 characters of `a-z`, `0-9`, `-`, `.` and `_`,
/// starting and ending with a letter or digit (so it can name Kubernetes objects too).
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c);
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(ok_char)
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        return Err(NameError { kind, name: name.to_string() });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{kind} name {name:?} is not valid: use 1 to 63 characters of a-z, 0-9, '-', '.' and '_', starting and ending with a letter or digit"
)]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
}

/// `DATASET`, `DATASET@latest`, `DATASET@v3` or `DATASET@3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRef {
    pub dataset: String,
    /// `None` means the newest version.
    pub version: Option<u64>,
}

impl FromStr for VersionRef {
    type Err = VersionRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (dataset, version) = match s.split_once('@') {
            None => (s, None),
            Some((d, "latest")) => (d, None),
            Some((d, v)) => {
                let n = v.strip_prefix('v').unwrap_or(v);
                match n.parse::<u64>() {
                    Ok(n) if n > 0 => (d, Some(n)),
                    _ => return Err(VersionRefError::BadVersion { input: s.to_string() }),
                }
            }
        };
        validate_name("dataset", dataset).map_err(VersionRefError::Name)?;
        Ok(Self { dataset: dataset.to_string(), version })
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@v{v}", self.dataset),
            None => write!(f, "{}@latest", self.dataset),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionRefError {
    #[error("{input:?} has no valid version: write DATASET@vN (e.g. llama@v3) or DATASET@latest")]
    BadVersion { input: String },
    #[error(transparent)]
    Name(NameError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, lengths: &[u32]) -> FileEntry {
        let mut offset = 0;
        let chunks = lengths
            .iter()
            .enumerate()
            .map(|(i, &length)| {
                let c = ChunkRef { digest: Digest::of(format!("{path}{i}").as_bytes()), offset, length };
                offset += u64::from(length);
                c
            })
            .collect();
        FileEntry {
            path: path.into(),
            object: format!("pre/{path}"),
            size: offset,
            mode: 0o644,
            mtime_unix_ms: 7,
            chunks,
        }
    }

    #[test]
    fn root_ignores_order_name_and_location_but_not_content() {
        let a =
            Manifest::new("a".into(), 1, ChunkerParams::DEFAULT, vec![file("x", &[3, 4]), file("d/y", &[5])]).unwrap();
        let b =
            Manifest::new("b".into(), 9, ChunkerParams::DEFAULT, vec![file("d/y", &[5]), file("x", &[3, 4])]).unwrap();
        assert_eq!(a.root, b.root);
        assert_eq!(a.files[0].path, "d/y");

        let mut moved = a.clone();
        moved.files[1].object = "elsewhere/x".into();
        assert_eq!(moved.compute_root(), a.root);

        let mut changed = a.clone();
        changed.files[1].mode = 0o755;
        assert_ne!(changed.compute_root(), a.root);
        assert!(matches!(changed.validate(), Err(ManifestError::RootMismatch { .. })));

        // A file's root follows its content, not its path or metadata.
        let (x, mut renamed) = (a.file("x").unwrap(), a.file("x").unwrap().clone());
        renamed.path = "z".into();
        renamed.mode = 0o600;
        assert_eq!(renamed.root(), x.root());
        assert_ne!(a.file("d/y").unwrap().root(), x.root());
    }

    #[test]
    fn validate_rejects_gaps_and_bad_paths() {
        let mut m = Manifest::new("a".into(), 1, ChunkerParams::DEFAULT, vec![file("x", &[3, 4])]).unwrap();
        m.files[0].chunks[1].offset = 4;
        m.root = m.compute_root();
        assert_eq!(m.validate(), Err(ManifestError::ChunksDoNotTile { path: "x".into(), index: 1 }));

        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/"] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }

        // Found by fuzz_every_file_of_a_valid_manifest_is_reachable: a file where another
        // file's directory is was accepted, and the view showed only one of them.
        for paths in [&["b", "b/a"][..], &["a", "a!", "a/x/y"], &["t", "t/u/v"]] {
            let files = paths.iter().map(|p| file(p, &[1])).collect();
            let err = Manifest::new("a".into(), 1, ChunkerParams::DEFAULT, files).unwrap_err();
            assert!(
                matches!(&err, ManifestError::FileIsDirectory { path, .. } if paths.contains(&path.as_str())),
                "{err}"
            );
        }
        let files = ["a", "a!", "a.b/c", "ab/c"].iter().map(|p| file(p, &[1])).collect();
        Manifest::new("a".into(), 1, ChunkerParams::DEFAULT, files).unwrap();
        assert!(validate_path("models/llama/model.safetensors").is_ok());
    }

    #[test]
    fn names_and_version_refs() {
        assert!(validate_name("dataset", "llama-3-8b").is_ok());
        for bad in ["", "Llama", "-x", "x-", "a b", &"a".repeat(64)] {
            assert!(validate_name("dataset", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!("llama@v3".parse::<VersionRef>().unwrap(), VersionRef { dataset: "llama".into(), version: Some(3) });
        assert_eq!("llama@3".parse::<VersionRef>().unwrap().version, Some(3));
        assert_eq!("llama".parse::<VersionRef>().unwrap().version, None);
        assert_eq!("llama@latest".parse::<VersionRef>().unwrap().version, None);
        assert!(matches!("llama@v0".parse::<VersionRef>(), Err(VersionRefError::BadVersion { .. })));
        assert!(matches!("llama@x".parse::<VersionRef>(), Err(VersionRefError::BadVersion { .. })));
    }

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    /// The rule a name must follow, written out plainly.
    fn is_name(name: &str) -> bool {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = name.as_bytes();
        (1..=63).contains(&bytes.len())
            && bytes.iter().all(|&b| alnum(b) || b"-._".contains(&b))
            && alnum(bytes[0])
            && alnum(bytes[bytes.len() - 1])
    }

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        #[test]
        fn fuzz_names(name in "[a-z0-9._-]{0,66}|.{0,20}|[a-zA-Z0-9]{1,3}") {
            let checked = validate_name("dataset", &name);
            prop_assert_eq!(checked.is_ok(), is_name(&name), "{:?}", name);
            if let Err(e) = checked {
                prop_assert!(e.to_string().contains(&format!("{name:?}")), "{}", e);
            }
        }

        /// Any text: a reference or an error, never a panic; what parses prints as text that
        /// parses to the same reference.
        #[test]
        fn fuzz_version_refs_from_text(text in "[a-z0-9-]{0,8}(@(v?[0-9]{0,22}|latest|.{0,4}))?|.{0,24}") {
            if let Ok(r) = text.parse::<VersionRef>() {
                prop_assert!(is_name(&r.dataset));
                prop_assert!(r.version != Some(0));
                prop_assert_eq!(r.to_string().parse::<VersionRef>(), Ok(r.clone()));
                prop_assert!(text.starts_with(&r.dataset));
            }
        }

        #[test]
        fn fuzz_version_refs_round_trip(dataset in "[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?", version in proptest::option::of(1u64..)) {
            let r = VersionRef { dataset, version };
            prop_assert_eq!(r.to_string().parse::<VersionRef>(), Ok(r.clone()));
            if let Some(v) = version {
                prop_assert_eq!(format!("{}@{v}", r.dataset).parse::<VersionRef>(), Ok(r.clone()));
            }
        }

        #[test]
        fn fuzz_digests_from_text(text in "[0-9a-fA-F]{62,66}|.{0,70}") {
            if let Ok(d) = text.parse::<Digest>() {
                prop_assert_eq!(d.to_hex(), text.to_ascii_lowercase());
                prop_assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
            }
        }
    }

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
