//! What a mount shows: one version, or the version a region has active, switched in one step.
//!
//! A [`View`] holds every version it has shown. Inode numbers carry the version's slot in
//! their high bits (`slot << 40 | inode in the version`), except the root, which is always
//! inode 1 and always answers for the current version. A path is resolved from the root one
//! name at a time, so once its first component is looked up, the whole walk stays inside one
//! version: a reader sees one whole version, never a mix. After [`View::switch`], new lookups
//! from the root find the new version, while an inode the kernel already holds (an open file,
//! a working directory) keeps answering from the version it came from, to the end.

use std::sync::{Arc, RwLock};

use crate::fs::{Attr, ChunkSource, FsError, Ino, ROOT, ReadPattern, Stats, VersionFs};

const SLOT_SHIFT: u32 = 40;
const LOCAL_MASK: u64 = (1 << SLOT_SHIFT) - 1;

pub struct View<S> {
    inner: RwLock<Inner<S>>,
}

struct Inner<S> {
    versions: Vec<Arc<VersionFs<S>>>,
    current: usize,
}

impl<S: ChunkSource + 'static> View<S> {
    pub fn new(fs: VersionFs<S>) -> Self {
        Self { inner: RwLock::new(Inner { versions: vec![Arc::new(fs)], current: 0 }) }
    }

    /// The version new opens see.
    pub fn current(&self) -> Arc<VersionFs<S>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.versions[inner.current].clone()
    }

    /// Makes `fs` the version new lookups see. Returns the root names whose kernel cache
    /// entries must be dropped (those of the old and the new version), or `None` if `fs` is
    /// the version already shown.
    pub fn switch(&self, fs: VersionFs<S>) -> Option<Vec<String>> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = inner.versions[inner.current].clone();
        let same =
            |v: &VersionFs<S>| v.manifest().version == fs.manifest().version && v.manifest().root == fs.manifest().root;
        if same(&old) {
            return None;
        }
        let mut names = old.root_names();
        names.extend(fs.root_names());
        names.sort();
        names.dedup();
        // A version shown before gets its old slot back: the kernel may still hold its inodes.
        let existing = inner.versions.iter().position(|v| same(v));
        inner.current = match existing {
            Some(slot) => slot,
            None => {
                inner.versions.push(Arc::new(fs));
                inner.versions.len() - 1
            }
        };
        Some(names)
    }

    /// The version an inode belongs to and its number inside that version.
    fn resolve(&self, ino: Ino) -> Result<(usize, Arc<VersionFs<S>>, Ino), FsError> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let (slot, local) =
            if ino == ROOT { (inner.current, ROOT) } else { ((ino >> SLOT_SHIFT) as usize, ino & LOCAL_MASK) };
        let fs = inner.versions.get(slot).ok_or(FsError::NotFound)?.clone();
        Ok((slot, fs, local))
    }

    fn outward(slot: usize, mut attr: Attr) -> Attr {
        if attr.ino != ROOT {
            attr.ino |= (slot as u64) << SLOT_SHIFT;
        }
        attr
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        let (slot, fs, local) = self.resolve(ino)?;
        fs.getattr(local).map(|a| Self::outward(slot, a))
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let (slot, fs, local) = self.resolve(parent)?;
        fs.lookup(local, name).map(|a| Self::outward(slot, a))
    }

    pub fn readdir(&self, ino: Ino, offset: usize) -> Result<Vec<(String, Attr)>, FsError> {
        let (slot, fs, local) = self.resolve(ino)?;
        Ok(fs.readdir(local, offset)?.into_iter().map(|(n, a)| (n, Self::outward(slot, a))).collect())
    }

    /// `f` of the manifest's entry of a file.
    pub fn with_file<R>(&self, ino: Ino, f: impl FnOnce(&aqueduct_proto::FileEntry) -> R) -> Result<R, FsError> {
        let (_, fs, local) = self.resolve(ino)?;
        fs.file(local).map(f)
    }

    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<&'static str>, FsError> {
        let (_, fs, local) = self.resolve(ino)?;
        fs.xattr_names(local)
    }

    pub fn xattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>, FsError> {
        let (_, fs, local) = self.resolve(ino)?;
        fs.xattr(local, name)
    }

    pub fn stats(&self) -> Stats {
        self.current().stats()
    }

    pub async fn read(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
        pattern: Option<&ReadPattern>,
    ) -> Result<Vec<u8>, FsError> {
        let (_, fs, local) = self.resolve(ino)?;
        fs.read(local, offset, size, pattern).await
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::noise;

    use super::*;
    use crate::fs::testing::MemSource;
    use crate::fs::testing::version;
    use crate::fs::{ChunkCache, Kind};

    fn fs(files: &[(&str, Vec<u8>)], number: u64) -> VersionFs<MemSource> {
        let (mut manifest, source) = version(files);
        manifest.version = number;
        VersionFs::new(manifest, Arc::new(source), ChunkCache::new(1 << 20))
    }

    fn walk(view: &View<MemSource>, path: &str) -> Attr {
        let mut attr = view.getattr(ROOT).unwrap();
        for part in path.split('/') {
            attr = view.lookup(attr.ino, part).unwrap();
        }
        attr
    }

    #[tokio::test]
    async fn a_switch_changes_new_lookups_and_leaves_held_inodes_on_their_version() {
        let v1 = vec![("model.bin", noise(30_000, 1)), ("d/a.json", b"one".to_vec())];
        let v2 = vec![("model.bin", noise(40_000, 2)), ("d/b.json", b"two".to_vec())];
        let view = View::new(fs(&v1, 1));
        let held = walk(&view, "model.bin");
        let held_dir = walk(&view, "d");

        assert!(view.switch(fs(&v1, 1)).is_none(), "switching to the shown version is not a switch");
        let names = view.switch(fs(&v2, 2)).unwrap();
        assert_eq!(names, ["d", "model.bin"]);

        // The held file still reads v1, whole; a fresh walk reads v2.
        assert_eq!(view.read(held.ino, 0, 50_000, None).await.unwrap(), v1[0].1);
        assert_eq!(view.getattr(held.ino).unwrap().size, 30_000);
        let fresh = walk(&view, "model.bin");
        assert_ne!(fresh.ino, held.ino);
        assert_eq!(view.read(fresh.ino, 0, 50_000, None).await.unwrap(), v2[0].1);
        // A directory held from v1 lists v1; the root lists v2.
        let old_names: Vec<String> = view.readdir(held_dir.ino, 2).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(old_names, ["a.json"]);
        assert_eq!(view.lookup(held_dir.ino, "b.json"), Err(FsError::NotFound));
        assert_eq!(walk(&view, "d/b.json").kind, Kind::File);
        assert_eq!(String::from_utf8(view.xattr(fresh.ino, crate::fs::XATTR_VERSION).unwrap()).unwrap(), "2");
        assert_eq!(String::from_utf8(view.xattr(held.ino, crate::fs::XATTR_VERSION).unwrap()).unwrap(), "1");

        // Back to v1: its old slot, so inodes the kernel kept are still right.
        view.switch(fs(&v1, 1)).unwrap();
        assert_eq!(walk(&view, "model.bin").ino, held.ino);
        assert_eq!(view.getattr(7 << SLOT_SHIFT | 2), Err(FsError::NotFound));
    }
}
