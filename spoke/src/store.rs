//! The spoke's chunk store: content-addressed, verified on the way in and on the way out.
//!
//! [`DiskStore`] keeps one file per chunk, `chunks/AB/ABCDEF...` (the BLAKE3 hex digest),
//! written atomically: to a temporary file in `tmp/`, fsync, rename, fsync the directory
//! ([`aqueduct_core::durable`], as the `FORMAT` file and the `chunks/AB` directories are). A
//! reader never sees half a chunk, and a spoke killed mid-write leaves only a temporary file,
//! removed at the next start. [`MemStore`] keeps chunks in memory (tests, memory-only mode).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aqueduct_core::durable;
use aqueduct_proto::Digest;

/// On-disk layout version, written to `FORMAT` in the store's directory.
pub const STORE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("chunk {digest} is corrupt: its bytes hash to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("the chunk store at {path} is full ({source}); free space or give the spoke a larger disk")]
    Full { path: PathBuf, source: io::Error },
    #[error(
        "the chunk store at {path} has format {found}, this build knows {STORE_FORMAT}; upgrade the spoke or move the directory away"
    )]
    Format { path: PathBuf, found: String },
    #[error("chunk store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What replication and readers need of a chunk store.
pub trait ChunkStore: Send + Sync {
    fn contains(&self, digest: &Digest) -> bool;
    /// Bytes of `manifest`'s distinct chunks this store holds, and their total.
    fn held_of(&self, manifest: &aqueduct_proto::Manifest) -> (u64, u64) {
        manifest.distinct_chunks().into_iter().fold((0, 0), |(held, total), (digest, length)| {
            let length = u64::from(length);
            (held + if self.contains(&digest) { length } else { 0 }, total + length)
        })
    }
    /// The chunk's bytes, checked against `digest`; `Corrupt` if they do not match.
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        let data = self.get_unchecked(digest)?;
        if let Some(data) = &data {
            check(digest, data)?;
        }
        Ok(data)
    }
    /// The chunk's bytes as stored, for a caller that checks them itself (the FUSE view
    /// hashes every chunk it serves; hashing twice would halve its throughput).
    fn get_unchecked(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError>;
    /// Stores `data` as `digest` after checking it; `Corrupt` (and nothing stored) if it does
    /// not match.
    fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), CacheError> {
        check(digest, data)?;
        self.put_checked(digest, data)
    }
    /// Stores `data` as `digest` without hashing it: for bytes this process hashed to `digest`
    /// a moment before (a fetch checks every chunk on arrival; hashing again on the way in
    /// would cost as much as the check itself).
    fn put_checked(&self, digest: &Digest, data: &[u8]) -> Result<(), CacheError>;
    fn remove(&self, digest: &Digest) -> Result<(), CacheError>;
    /// Every chunk held, with its size.
    fn list(&self) -> Result<Vec<(Digest, u64)>, CacheError>;
    /// Whether this process stored the chunk itself (checked against its digest on the way
    /// in) and still holds it: such a chunk needs no read-back before a version is Ready.
    /// Chunks found on disk at start are not known good until read back.
    fn known_good(&self, _digest: &Digest) -> bool {
        false
    }
}

fn check(digest: &Digest, data: &[u8]) -> Result<(), CacheError> {
    let actual = Digest::of(data);
    if &actual != digest {
        return Err(CacheError::Corrupt { digest: *digest, actual });
    }
    Ok(())
}

#[derive(Default)]
pub struct MemStore {
    chunks: Mutex<HashMap<Digest, Vec<u8>>>,
}

impl MemStore {
    /// Keeps a copy whose check is its reader's (see [`ChunkStore::get_unchecked`]).
    pub fn put_unchecked(&self, digest: &Digest, data: &[u8]) {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).insert(*digest, data.to_vec());
    }
}

impl ChunkStore for MemStore {
    fn contains(&self, digest: &Digest) -> bool {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).contains_key(digest)
    }
    fn get_unchecked(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.chunks.lock().unwrap_or_else(|e| e.into_inner()).get(digest).cloned())
    }
    fn put_checked(&self, digest: &Digest, data: &[u8]) -> Result<(), CacheError> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).insert(*digest, data.to_vec());
        Ok(())
    }
    fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).remove(digest);
        Ok(())
    }
    fn list(&self) -> Result<Vec<(Digest, u64)>, CacheError> {
        Ok(self.chunks.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(d, c)| (*d, c.len() as u64)).collect())
    }
}

/// Where a store in `root` keeps a chunk ([`aqueduct_core::layout`], shared with the holder).
pub fn chunk_path(root: &Path, digest: &Digest) -> PathBuf {
    aqueduct_core::layout::chunk_path(root, &digest.to_hex())
}

/// Writes the store's `FORMAT` file (atomically: a crash never leaves it empty).
fn write_format(path: &Path) -> io::Result<()> {
    durable::write_file(path, format!("{STORE_FORMAT}\n").as_bytes(), durable::PUBLIC)
}

pub struct DiskStore {
    root: PathBuf,
    /// Makes temporary names unique: two tasks may store the same chunk at once.
    seq: AtomicU64,
}

impl DiskStore {
    /// Opens (creating if needed) a store in `root`, removing temporary files left by a crash.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        for dir in [root.join(aqueduct_core::layout::CHUNKS_DIR), root.join("tmp")] {
            durable::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let format = root.join("FORMAT");
        match std::fs::read_to_string(&format) {
            Ok(found) if found.trim() == STORE_FORMAT.to_string() => {}
            // Empty: a build that wrote FORMAT in place crashed before its bytes reached the
            // disk. Every build so far wrote format 1 (and only after making the directories).
            Ok(found) if found.trim().is_empty() => write_format(&format).map_err(io(&format))?,
            Ok(found) => return Err(CacheError::Format { path: root.to_owned(), found: found.trim().to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => write_format(&format).map_err(io(&format))?,
            Err(e) => return Err(CacheError::Io { path: format, source: e }),
        }
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self { root: root.to_owned(), seq: AtomicU64::new(0) })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        chunk_path(&self.root, digest)
    }

    fn error(&self, path: PathBuf, source: io::Error) -> CacheError {
        // ENOSPC and EDQUOT: the disk or the quota is full.
        if matches!(source.raw_os_error(), Some(28) | Some(122)) || source.kind() == io::ErrorKind::StorageFull {
            CacheError::Full { path: self.root.clone(), source }
        } else {
            CacheError::Io { path, source }
        }
    }
}

impl ChunkStore for DiskStore {
    fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    fn get_unchecked(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.path(digest);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(path, e)),
        }
    }

    fn put_checked(&self, digest: &Digest, data: &[u8]) -> Result<(), CacheError> {
        let path = self.path(digest);
        // `chunks/AB`: made durable before a chunk is renamed into it.
        let dir = path.parent().unwrap_or(&self.root);
        durable::create_dir_all(dir).map_err(|e| self.error(dir.to_owned(), e))?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{}.{seq}", digest.to_hex(), std::process::id()));
        durable::write_file_via(&tmp, &path, data, durable::PUBLIC).map_err(|e| self.error(path.clone(), e))
    }

    fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(path, e)),
        }
    }

    fn list(&self) -> Result<Vec<(Digest, u64)>, CacheError> {
        let chunks = self.root.join(aqueduct_core::layout::CHUNKS_DIR);
        let read = |dir: &Path| std::fs::read_dir(dir).map_err(|e| self.error(dir.to_owned(), e));
        let mut found = Vec::new();
        for fan in read(&chunks)? {
            let fan = fan.map_err(|e| self.error(chunks.clone(), e))?.path();
            for entry in read(&fan)? {
                let entry = entry.map_err(|e| self.error(fan.clone(), e))?;
                // Anything that is not named by a digest is not ours.
                if let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) {
                    let len = entry.metadata().map_err(|e| self.error(entry.path(), e))?.len();
                    found.push((digest, len));
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(store: &dyn ChunkStore) {
        let data = aqueduct_testkit::noise(300_000, 3);
        let digest = Digest::of(&data);
        assert!(!store.contains(&digest));
        assert_eq!(store.get(&digest).unwrap(), None);
        let wrong = Digest::of(b"other");
        assert!(matches!(store.put(&wrong, &data), Err(CacheError::Corrupt { .. })));
        assert!(!store.contains(&wrong), "unverified bytes were stored");
        store.put(&digest, &data).unwrap();
        assert!(store.contains(&digest));
        assert_eq!(store.list().unwrap(), [(digest, data.len() as u64)]);
        assert_eq!(store.get(&digest).unwrap().unwrap(), data);
        store.put(&digest, &data).unwrap();
        // Two writers of one chunk at once both succeed.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| store.put(&digest, &data).unwrap());
            }
        });
        assert_eq!(store.get(&digest).unwrap().unwrap(), data);
        store.remove(&digest).unwrap();
        assert!(!store.contains(&digest));
        store.remove(&digest).unwrap();
    }

    #[test]
    fn memory_store() {
        suite(&MemStore::default());
    }

    #[test]
    fn disk_store_detects_corruption_and_cleans_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        suite(&store);
        let data = b"some chunk".to_vec();
        let digest = Digest::of(&data);
        store.put(&digest, &data).unwrap();
        std::fs::write(store.path(&digest), b"some chunK").unwrap();
        assert!(matches!(store.get(&digest), Err(CacheError::Corrupt { .. })));

        std::fs::write(dir.path().join("tmp/leftover.1"), b"half").unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.contains(&digest));

        std::fs::write(dir.path().join("FORMAT"), "9\n").unwrap();
        assert!(matches!(DiskStore::open(dir.path()), Err(CacheError::Format { .. })));
    }

    #[test]
    fn an_empty_format_file_left_by_a_crash_is_written_again() {
        // Builds before this one wrote FORMAT in place: a crash could leave it empty, and the
        // spoke would then refuse its own store.
        let dir = tempfile::tempdir().unwrap();
        let data = b"kept".to_vec();
        DiskStore::open(dir.path()).unwrap().put(&Digest::of(&data), &data).unwrap();
        std::fs::write(dir.path().join("FORMAT"), "").unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(), "1\n");
        assert_eq!(store.get(&Digest::of(&data)).unwrap(), Some(data));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !aqueduct_core::durable::is_temporary(n)), "{names:?}");
    }
}
