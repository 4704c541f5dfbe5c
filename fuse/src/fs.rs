//! A dataset version as a filesystem, with no kernel in sight.
//!
//! Inode 1 is the root; every directory implied by the manifest's paths gets an inode, then
//! every file, in path order, so inode numbers are stable for a version. Reads map a byte
//! range to the chunks that cover it, fetch them from the [`ChunkSource`] (concurrently),
//! check each against its BLAKE3 digest, and cut the asked range out. Nothing is writable:
//! a version is immutable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aqueduct_core::lru::Lru;
use aqueduct_core::singleflight::SingleFlight;
use aqueduct_proto::{ChunkRef, Digest, Manifest};
use async_trait::async_trait;
use futures::future::try_join_all;
use tokio::sync::Semaphore;

pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system: dataset versions are immutable")]
    ReadOnly,
    #[error("no such extended attribute")]
    NoAttribute,
    #[error("chunk {digest} is corrupt (its bytes hash to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("chunk {digest} is unavailable: {reason}")]
    Unavailable { digest: Digest, reason: String },
    /// The chunk's bytes are right (they hash to its digest) but not of the length the
    /// manifest gives it: the manifest is wrong, and no byte of that range can be trusted.
    #[error(
        "chunk {digest} has {found} bytes, not the {expected} the version's manifest says: the manifest is damaged; cut the version again (`aq snapshot`)"
    )]
    WrongLength { digest: Digest, found: usize, expected: u32 },
}

/// Where chunk bytes come from: the spoke's store, a peer, the hub.
#[async_trait]
pub trait ChunkSource: Send + Sync {
    async fn chunk(&self, digest: &Digest, length: u32) -> Result<Vec<u8>, FsError>;

    /// Bytes from [`ChunkSource::chunk`] did not hash to `digest`: drop any copy they came
    /// from, so that asking again fetches good bytes.
    fn discard(&self, _digest: &Digest) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What `getattr` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits; the view is read-only, so write bits are cleared.
    pub perm: u16,
    pub mtime_unix_ms: i64,
    pub nlink: u32,
}

/// What `statfs` answers: the version's size and file count; nothing is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub bytes: u64,
    pub files: u64,
}

/// The extended attributes every entry carries (files also carry [`XATTR_ROOT`]).
pub const XATTR_DATASET: &str = "user.aqueduct.dataset";
pub const XATTR_VERSION: &str = "user.aqueduct.version";
/// For a file, [`aqueduct_proto::FileEntry::root`]; for a directory, the version's root.
pub const XATTR_ROOT: &str = "user.aqueduct.root";

/// Recently read chunks, verified, shared by every version a mount shows (versions share
/// most chunks). Kernel reads are smaller than chunks, so without it a sequential reader
/// would fetch and hash each chunk several times. It also knows the chunks being loaded, so
/// concurrent reads of one chunk (the kernel sends a reader's requests in parallel) load it
/// once, and it bounds the read-ahead in flight.
pub struct ChunkCache {
    /// By bytes, least recently used first.
    chunks: Mutex<Lru<Digest, Arc<[u8]>>>,
    loading: SingleFlight<Digest, Result<Arc<[u8]>, FsError>>,
    readahead_slots: Arc<Semaphore>,
}

/// Chunks loaded ahead of readers at once, per cache.
const READAHEAD_SLOTS: usize = 8;

impl ChunkCache {
    pub fn new(capacity_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            chunks: Mutex::new(Lru::new(capacity_bytes)),
            loading: SingleFlight::new(),
            readahead_slots: Arc::new(Semaphore::new(READAHEAD_SLOTS)),
        })
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, Lru<Digest, Arc<[u8]>>> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        self.chunks().get(digest).cloned()
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.chunks().contains(digest) || self.loading.contains(digest)
    }

    /// Keeps a chunk, evicting the least recently used beyond the capacity (but never the
    /// chunk just kept).
    fn put(&self, digest: Digest, data: Arc<[u8]>) {
        let len = data.len() as u64;
        self.chunks().insert(digest, data, len);
    }

    /// The chunk's bytes, verified: from memory, or from `source` (once, however many ask at
    /// the same time), then kept. Bytes that do not hash to the digest are discarded at the
    /// source and asked for once more; then it is `Corrupt`, never bytes.
    async fn load<S: ChunkSource + 'static>(
        self: &Arc<Self>,
        source: &Arc<S>,
        c: ChunkRef,
    ) -> Result<Arc<[u8]>, FsError> {
        if let Some(data) = self.get(&c.digest) {
            return Ok(data);
        }
        let (cache, source) = (self.clone(), source.clone());
        let load = self.loading.run(c.digest, move || async move {
            let result = fetch_verified(source.as_ref(), &c).await;
            if let Ok(data) = &result {
                cache.put(c.digest, data.clone());
            }
            result
        });
        load.await
    }
}

async fn fetch_verified<S: ChunkSource>(source: &S, c: &ChunkRef) -> Result<Arc<[u8]>, FsError> {
    let mut data = source.chunk(&c.digest, c.length).await?;
    let mut actual = Digest::of(&data);
    if actual != c.digest {
        // A rotten copy (say, on the spoke's disk): drop it and ask once more.
        source.discard(&c.digest);
        data = source.chunk(&c.digest, c.length).await?;
        actual = Digest::of(&data);
        if actual != c.digest {
            return Err(FsError::Corrupt { digest: c.digest, actual });
        }
    }
    Ok(data.into())
}

/// Read-ahead for one open file: when a read starts near where the reads so far reached, the
/// chunks after it are loaded ahead (into the [`ChunkCache`]), over a window that doubles with each sequential read up
/// to [`READAHEAD_MAX`]; a jump resets it. "Near" (within [`NEAR`]) because the kernel sends
/// a sequential reader's requests concurrently, not always in order.
#[derive(Default)]
pub struct ReadPattern {
    next: AtomicU64,
    window: AtomicU64,
    /// Chunks starting before this offset were hinted already.
    hinted: AtomicU64,
}

pub const READAHEAD_MIN: u64 = 1 << 20;
const NEAR: u64 = 1 << 20;
pub const READAHEAD_MAX: u64 = 32 << 20;

impl ReadPattern {
    /// The range of offsets whose chunks to load ahead after a read of `[offset, end)`: empty
    /// for a reader that jumped, and never a chunk hinted before (each is hinted once).
    fn observe(&self, offset: u64, end: u64) -> std::ops::Range<u64> {
        let reached = self.next.fetch_max(end, Ordering::Relaxed);
        if offset != 0 && offset.abs_diff(reached) > NEAR {
            self.next.store(end, Ordering::Relaxed);
            self.window.store(0, Ordering::Relaxed);
            self.hinted.store(end, Ordering::Relaxed);
            return 0..0;
        }
        let window = (self.window.load(Ordering::Relaxed) * 2).clamp(READAHEAD_MIN, READAHEAD_MAX);
        self.window.store(window, Ordering::Relaxed);
        let from = self.hinted.fetch_max(end + window, Ordering::Relaxed).max(end);
        from..end + window
    }
}

struct Node {
    attr: Attr,
    /// For files: the index of the file in the manifest.
    file: Option<usize>,
    /// For directories: children by name.
    children: BTreeMap<String, Ino>,
    parent: Ino,
}

pub struct VersionFs<S> {
    manifest: Arc<Manifest>,
    nodes: Vec<Node>,
    source: Arc<S>,
    cache: Arc<ChunkCache>,
}

impl<S: ChunkSource + 'static> VersionFs<S> {
    /// The view of `manifest` (shared, not copied: a large version's manifest is big).
    pub fn new(manifest: impl Into<Arc<Manifest>>, source: Arc<S>, cache: Arc<ChunkCache>) -> Self {
        let manifest = manifest.into();
        let newest = manifest.files.iter().map(|f| f.mtime_unix_ms).max().unwrap_or(0);
        let dir = |ino, parent| Node {
            attr: Attr { ino, kind: Kind::Dir, size: 0, perm: 0o555, mtime_unix_ms: newest, nlink: 2 },
            file: None,
            children: BTreeMap::new(),
            parent,
        };
        // Index 0 is unused so that `nodes[ino]` works; inode 1 is the root.
        let mut nodes = vec![dir(0, 0), dir(ROOT, ROOT)];
        for (index, file) in manifest.files.iter().enumerate() {
            let mut parent = ROOT;
            let parts: Vec<&str> = file.path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                parent = match nodes[parent as usize].children.get(*part) {
                    Some(&ino) => ino,
                    None => {
                        let ino = nodes.len() as Ino;
                        nodes.push(dir(ino, parent));
                        nodes[parent as usize].children.insert(part.to_string(), ino);
                        nodes[parent as usize].attr.nlink += 1;
                        ino
                    }
                };
            }
            let ino = nodes.len() as Ino;
            nodes.push(Node {
                attr: Attr {
                    ino,
                    kind: Kind::File,
                    size: file.size,
                    perm: (file.mode & 0o555) as u16,
                    mtime_unix_ms: file.mtime_unix_ms,
                    nlink: 1,
                },
                file: Some(index),
                children: BTreeMap::new(),
                parent,
            });
            nodes[parent as usize].children.insert(parts[parts.len() - 1].to_string(), ino);
        }
        Self { manifest, nodes, source, cache }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The highest inode number of this version.
    pub fn max_ino(&self) -> Ino {
        self.nodes.len() as Ino - 1
    }

    fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        self.nodes.get(ino as usize).filter(|_| ino >= ROOT).ok_or(FsError::NotFound)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        Ok(self.node(ino)?.attr.clone())
    }

    /// The manifest's entry of a file.
    pub fn file(&self, ino: Ino) -> Result<&aqueduct_proto::FileEntry, FsError> {
        let index = self.node(ino)?.file.ok_or(FsError::IsDir)?;
        self.manifest.files.get(index).ok_or(FsError::NotFound)
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let node = self.node(parent)?;
        if node.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let ino = match name {
            "." => parent,
            ".." => node.parent,
            _ => *node.children.get(name).ok_or(FsError::NotFound)?,
        };
        self.getattr(ino)
    }

    /// Entries of a directory (with `.` and `..`), from position `offset` on.
    pub fn readdir(&self, ino: Ino, offset: usize) -> Result<Vec<(String, Attr)>, FsError> {
        let node = self.node(ino)?;
        if node.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut entries = vec![(".".to_string(), node.attr.clone()), ("..".to_string(), self.getattr(node.parent)?)];
        for (name, &child) in &node.children {
            entries.push((name.clone(), self.getattr(child)?));
        }
        Ok(entries.into_iter().skip(offset).collect())
    }

    /// The names of the root's entries (what a version switch must invalidate).
    pub fn root_names(&self) -> Vec<String> {
        self.nodes[ROOT as usize].children.keys().cloned().collect()
    }

    pub fn stats(&self) -> Stats {
        Stats { bytes: self.manifest.total_bytes(), files: self.manifest.files.len() as u64 }
    }

    /// The names of an entry's extended attributes.
    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<&'static str>, FsError> {
        self.node(ino)?;
        Ok(vec![XATTR_DATASET, XATTR_VERSION, XATTR_ROOT])
    }

    /// The value of one extended attribute.
    pub fn xattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>, FsError> {
        let node = self.node(ino)?;
        let value = match name {
            XATTR_DATASET => self.manifest.dataset.clone(),
            XATTR_VERSION => self.manifest.version.to_string(),
            XATTR_ROOT => match node.file {
                Some(index) => self.manifest.files[index].root().to_hex(),
                None => self.manifest.root.to_hex(),
            },
            _ => return Err(FsError::NoAttribute),
        };
        Ok(value.into_bytes())
    }

    /// Reads up to `size` bytes at `offset`; short only at the end of the file. With a
    /// `pattern` (one per open file), sequential readers get the following chunks loaded ahead.
    pub async fn read(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
        pattern: Option<&ReadPattern>,
    ) -> Result<Vec<u8>, FsError> {
        let node = self.node(ino)?;
        let index = match node.attr.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File => node.file.expect("files have an index"),
        };
        let file = &self.manifest.files[index];
        // Offsets come from the kernel (or a sidecar's caller): any u64.
        let end = offset.saturating_add(u64::from(size)).min(file.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        // The chunks that cover [offset, end): binary search for the first, then walk.
        let first = file.chunks.partition_point(|c| c.end() <= offset);
        let covering: Vec<&ChunkRef> = file.chunks[first..].iter().take_while(|c| c.offset < end).collect();
        if let Some(range) = pattern.map(|p| p.observe(offset, end)).filter(|r| !r.is_empty()) {
            // Chunks that start inside the range (the one covering its start was hinted before).
            let from = file.chunks.partition_point(|c| c.offset < range.start).max(first + covering.len());
            let ahead: Vec<ChunkRef> = file.chunks[from..]
                .iter()
                .take_while(|c| c.offset < range.end)
                .filter(|c| !self.cache.contains(&c.digest))
                .copied()
                .collect();
            for c in ahead {
                let (cache, source) = (self.cache.clone(), self.source.clone());
                tokio::spawn(async move {
                    let Ok(_slot) = cache.readahead_slots.clone().acquire_owned().await else { return };
                    // A failure here is the read's to report, when it comes.
                    let _ = cache.load(&source, c).await;
                });
            }
        }
        let fetched = try_join_all(covering.iter().map(|c| self.cache.load(&self.source, **c))).await?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (c, data) in covering.iter().zip(&fetched) {
            // A digest names its bytes; the manifest may still give them another length.
            if data.len() != c.length as usize {
                return Err(FsError::WrongLength { digest: c.digest, found: data.len(), expected: c.length });
            }
            let from = offset.max(c.offset) - c.offset;
            let to = end.min(c.end()) - c.offset;
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Any attempt to change the view.
    pub fn write(&self) -> Result<(), FsError> {
        Err(FsError::ReadOnly)
    }
}

pub mod testing;

#[cfg(test)]
mod tests {
    use aqueduct_testkit::noise;

    use super::testing::{MemSource, version};
    use super::*;

    fn tree() -> (VersionFs<MemSource>, Vec<(&'static str, Vec<u8>)>) {
        let files = vec![
            ("config.json", b"{}".to_vec()),
            ("model.safetensors", noise(200_000, 1)),
            ("tok/tokenizer.json", noise(33_333, 2)),
            ("tok/sub/empty", Vec::new()),
        ];
        let (manifest, source) = version(&files);
        (VersionFs::new(manifest, Arc::new(source), ChunkCache::new(1 << 20)), files)
    }

    #[tokio::test]
    async fn reads_at_any_offset_and_length_equal_the_bytes() {
        let (fs, files) = tree();
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (path, bytes) in &files {
            let mut ino = ROOT;
            for part in path.split('/') {
                ino = fs.lookup(ino, part).unwrap().ino;
            }
            assert_eq!(fs.read(ino, 0, bytes.len() as u32 + 10, None).await.unwrap(), *bytes, "{path} whole");
            for _ in 0..200 {
                let offset = next() % (bytes.len() as u64 + 50);
                let size = (next() % 20_000) as u32;
                let got = fs.read(ino, offset, size, None).await.unwrap();
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                assert_eq!(got, bytes[start..end], "{path} at {offset}+{size}");
            }
        }
    }

    #[tokio::test]
    async fn a_read_at_the_end_of_the_offset_range_is_empty() {
        // Found by fuzz_version_fs_against_a_model: offset + size overflowed.
        let (fs, _) = tree();
        let empty = fs.lookup(fs.lookup(fs.lookup(ROOT, "tok").unwrap().ino, "sub").unwrap().ino, "empty").unwrap();
        let model = fs.lookup(ROOT, "model.safetensors").unwrap();
        for ino in [empty.ino, model.ino] {
            assert_eq!(fs.read(ino, u64::MAX, 1, None).await.unwrap(), b"");
            assert_eq!(fs.read(ino, u64::MAX - 5, u32::MAX, None).await.unwrap(), b"");
        }
        assert_eq!(fs.read(model.ino, 199_990, u32::MAX, None).await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_chunk_of_another_length_than_the_manifest_says_is_an_error_never_bytes() {
        // Found by fuzz_version_fs_against_a_model: a manifest that says 2 bytes for a chunk of
        // 1 served that byte as if it were the file, and a read of both panicked.
        let (mut manifest, mut source) = version(&[("a", b"xy".to_vec())]);
        let one = Digest::of(b"y");
        source.insert(one, b"y".to_vec());
        manifest.files[0].chunks[0].digest = one;
        manifest.root = manifest.compute_root();
        manifest.validate().unwrap();
        let fs = VersionFs::new(manifest, Arc::new(source), ChunkCache::new(1 << 20));
        let a = fs.lookup(ROOT, "a").unwrap();
        for size in [1, 2, 100] {
            let err = fs.read(a.ino, 0, size, None).await.unwrap_err();
            assert_eq!(err, FsError::WrongLength { digest: one, found: 1, expected: 2 });
        }
        let message = fs.read(a.ino, 0, 2, None).await.unwrap_err().to_string();
        assert!(message.contains("has 1 bytes, not the 2"), "{message}");
    }

    #[tokio::test]
    async fn tree_attributes_and_errors() {
        let (fs, _) = tree();
        let names: Vec<String> = fs.readdir(ROOT, 0).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, [".", "..", "config.json", "model.safetensors", "tok"]);
        let tok = fs.lookup(ROOT, "tok").unwrap();
        assert_eq!((tok.kind, tok.perm, tok.nlink), (Kind::Dir, 0o555, 3));
        assert_eq!(fs.readdir(tok.ino, 3).unwrap()[0].0, "tokenizer.json");
        assert_eq!(fs.lookup(tok.ino, "..").unwrap().ino, ROOT);
        let model = fs.lookup(ROOT, "model.safetensors").unwrap();
        assert_eq!((model.kind, model.size, model.perm), (Kind::File, 200_000, 0o444));
        assert_eq!(fs.lookup(ROOT, "nope"), Err(FsError::NotFound));
        assert_eq!(fs.lookup(model.ino, "x"), Err(FsError::NotDir));
        assert_eq!(fs.read(tok.ino, 0, 10, None).await, Err(FsError::IsDir));
        assert_eq!(fs.getattr(999), Err(FsError::NotFound));
        assert_eq!(fs.getattr(0), Err(FsError::NotFound));
        assert_eq!(fs.write(), Err(FsError::ReadOnly));
    }

    #[tokio::test]
    async fn corrupt_chunks_are_an_error_never_bytes() {
        let (fs, _) = tree();
        let model = fs.lookup(ROOT, "model.safetensors").unwrap();
        let victim = fs.manifest().file("model.safetensors").unwrap().chunks[2];
        *fs.source.corrupt.lock().unwrap() = Some(victim.digest);
        let err = fs.read(model.ino, victim.offset, 10, None).await.unwrap_err();
        assert!(matches!(err, FsError::Corrupt { digest, .. } if digest == victim.digest));
        // A read that does not touch it still works.
        assert!(fs.read(model.ino, 0, 100, None).await.is_ok());
    }

    #[tokio::test]
    async fn extended_attributes_name_dataset_version_and_content() {
        let (fs, _) = tree();
        let model = fs.lookup(ROOT, "model.safetensors").unwrap();
        let text = |ino, name| String::from_utf8(fs.xattr(ino, name).unwrap()).unwrap();
        assert_eq!(text(model.ino, XATTR_DATASET), "ds");
        assert_eq!(text(model.ino, XATTR_VERSION), "1");
        assert_eq!(text(model.ino, XATTR_ROOT), fs.manifest().file("model.safetensors").unwrap().root().to_hex());
        assert_eq!(text(ROOT, XATTR_ROOT), fs.manifest().root.to_hex());
        assert_eq!(fs.xattr(model.ino, "user.other"), Err(FsError::NoAttribute));
        assert_eq!(fs.xattr_names(ROOT).unwrap().len(), 3);
        assert_eq!(fs.stats(), Stats { bytes: 200_000 + 33_333 + 2, files: 4 });
    }

    #[tokio::test]
    async fn sequential_readers_read_ahead_and_chunks_are_fetched_once() {
        let (fs, files) = tree();
        let model = fs.lookup(ROOT, "model.safetensors").unwrap();
        let chunks = fs.manifest().file("model.safetensors").unwrap().chunks.clone();
        let pattern = ReadPattern::default();
        let mut offset = 0;
        let head = fs.read(model.ino, 0, 700, Some(&pattern)).await.unwrap();
        assert_eq!(head, files[1].1[..700]);
        // Read-ahead loads the next chunks without being asked.
        for _ in 0..100 {
            if fs.source.asked.lock().unwrap().contains(&chunks[3].digest) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(fs.source.asked.lock().unwrap().contains(&chunks[3].digest), "no read-ahead");
        // Concurrent reads of one chunk, and the whole file after, fetch every chunk once.
        let c = chunks[40];
        let reads = (0..4).map(|i| fs.read(model.ino, c.offset + i * 10, 10, None));
        for got in try_join_all(reads).await.unwrap() {
            assert_eq!(got.len(), 10);
        }
        while offset < files[1].1.len() as u64 {
            let got = fs.read(model.ino, offset, 700, Some(&pattern)).await.unwrap();
            assert_eq!(got, files[1].1[offset as usize..][..got.len()]);
            offset += got.len() as u64;
        }
        let asked = fs.source.asked.lock().unwrap().clone();
        let distinct: std::collections::HashSet<_> = asked.iter().collect();
        assert_eq!(distinct.len(), chunks.len());
        assert_eq!(asked.len(), chunks.len(), "a chunk was fetched twice while it was cached or loading");

        // A reader that jumps around gets no read-ahead: only what it reads is fetched.
        let (manifest, source) = version(&[("big", noise(8 << 20, 5))]);
        let fs = VersionFs::new(manifest, Arc::new(source), ChunkCache::new(64 << 20));
        let big = fs.lookup(ROOT, "big").unwrap();
        let pattern = ReadPattern::default();
        for offset in [6 << 20, 1 << 20, 4 << 20, 100_000, 7 << 20] {
            fs.read(big.ino, offset, 100, Some(&pattern)).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(fs.source.asked.lock().unwrap().len() <= 10, "a random reader got read-ahead");
    }

    #[test]
    fn the_chunk_cache_keeps_the_recently_used_within_its_capacity() {
        let cache = ChunkCache::new(250);
        let chunk = |n: u8| (Digest::of(&[n]), Arc::<[u8]>::from(vec![n; 100]));
        for n in 0..3 {
            let (d, data) = chunk(n);
            cache.put(d, data);
            if n == 1 {
                cache.get(&chunk(0).0);
            }
        }
        assert!(cache.contains(&chunk(0).0), "the recently used chunk was evicted");
        assert!(!cache.contains(&chunk(1).0));
        assert!(cache.contains(&chunk(2).0));
    }
}
