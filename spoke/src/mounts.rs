//! The FUSE mounts the spoke hosts: read-only views of dataset versions over its chunk store.
//!
//! A mount shows a fixed version, or follows its dataset's active version in the region: when
//! the hub's assignments name another active version, the view switches in one step (new
//! opens see the new version; files already open read theirs to the end). Every mount shares
//! one [`ChunkCache`] of recently read chunks. Mounts end with the spoke.
//!
//! This is where the spoke's read path meets the FUSE crate: [`VersionSource`] serves a view's
//! chunks through the [`ReadThrough`], and [`fs_error`] is the one place a reader's error
//! becomes the view's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aqueduct_fuse::fs::{ChunkCache, ChunkSource, FsError, VersionFs};
use aqueduct_fuse::mount::{Mounted, UnmountError};
use aqueduct_fuse::view::View;
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use async_trait::async_trait;
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::reader::{ReadError, ReadThrough};

/// One version's chunks for a FUSE view hosted by the spoke.
pub struct VersionSource {
    pub reader: Arc<ReadThrough>,
    pub dataset: String,
    pub version: u64,
}

#[async_trait]
impl ChunkSource for VersionSource {
    async fn chunk(&self, digest: &Digest, _length: u32) -> Result<Vec<u8>, FsError> {
        self.reader.chunk(&self.dataset, self.version, *digest).await.map_err(fs_error)
    }

    fn discard(&self, digest: &Digest) {
        self.reader.discard(digest);
    }
}

/// A reader's error as the FUSE view sees it: the chunk is unavailable (EIO), and why.
pub fn fs_error(e: ReadError) -> FsError {
    FsError::Unavailable { digest: e.digest, reason: e.reason.to_string() }
}

/// Memory for recently read chunks, shared by every mount.
const CHUNK_CACHE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("mountpoint {0} must be an absolute path")]
    Relative(PathBuf),
    #[error("mountpoint {0} does not exist or is not a directory; create it (mkdir -p) first")]
    Missing(PathBuf),
    #[error("mountpoint {path} is busy: {what} is mounted there; unmount it or choose another directory")]
    Busy { path: PathBuf, what: String },
    #[error("nothing is mounted by this spoke at {0} (see `aqueduct-spoke mounts`)")]
    NotMounted(PathBuf),
    #[error("FUSE is not available to the spoke: {0}")]
    NoFuse(String),
    #[error("mounting at {path} failed: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Unmount(#[from] UnmountError),
}

struct Entry {
    info: local::MountInfo,
    mounted: Arc<Mounted<VersionSource>>,
    follower: Option<JoinHandle<()>>,
}

pub struct Mounts {
    catalog: Arc<Catalog>,
    reader: Arc<ReadThrough>,
    cache: Arc<ChunkCache>,
    table: Mutex<BTreeMap<PathBuf, Entry>>,
}

impl Mounts {
    pub fn new(catalog: Arc<Catalog>, reader: Arc<ReadThrough>) -> Arc<Self> {
        Arc::new(Self { catalog, reader, cache: ChunkCache::new(CHUNK_CACHE_BYTES), table: Mutex::default() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<local::MountInfo> {
        self.table().values().map(|e| e.info.clone()).collect()
    }

    async fn version_fs(&self, dataset: &str, version: Option<u64>) -> Result<VersionFs<VersionSource>, MountError> {
        self.assigned_fs(&self.catalog.resolve(dataset, version)?).await
    }

    async fn assigned_fs(&self, assignment: &pb::Assignment) -> Result<VersionFs<VersionSource>, MountError> {
        let manifest = self.catalog.manifest(assignment).await?;
        let source = VersionSource {
            reader: self.reader.clone(),
            dataset: assignment.dataset.clone(),
            version: assignment.version,
        };
        Ok(VersionFs::new(manifest, Arc::new(source), self.cache.clone()))
    }

    /// Mounts `dataset` at `version` (`None`: follow the active version) on `path`. The same
    /// mount asked for again is answered with the existing one.
    #[instrument(skip_all, fields(dataset, ?version, path = %path.display()))]
    pub async fn mount(
        self: &Arc<Self>,
        dataset: &str,
        version: Option<u64>,
        path: &Path,
    ) -> Result<local::MountInfo, MountError> {
        if !path.is_absolute() {
            return Err(MountError::Relative(path.to_owned()));
        }
        if let Some(e) = self.table().get(path) {
            let same = e.info.dataset == dataset
                && (e.info.follow && version.is_none() || Some(e.info.version) == version && !e.info.follow);
            if same {
                return Ok(e.info.clone());
            }
            return Err(MountError::Busy { path: path.to_owned(), what: describe(&e.info) });
        }
        if !path.is_dir() {
            return Err(MountError::Missing(path.to_owned()));
        }
        if let Some(what) = mounted_at(path) {
            return Err(MountError::Busy { path: path.to_owned(), what });
        }
        aqueduct_fuse::mount::check_available().map_err(MountError::NoFuse)?;
        let fs = self.version_fs(dataset, version).await?;
        let shown = fs.manifest().version;
        let view = Arc::new(View::new(fs));
        let runtime = tokio::runtime::Handle::current();
        let at = path.to_owned();
        let observer: Arc<dyn aqueduct_fuse::mount::ReadObserver> = self.reader.metrics().clone();
        let mounted = tokio::task::spawn_blocking(move || {
            aqueduct_fuse::mount::mount_observed(view, &at, runtime, Some(observer))
        })
        .await
        .map_err(|e| MountError::Mount { path: path.to_owned(), source: std::io::Error::other(e) })?
        .map_err(|source| MountError::Mount { path: path.to_owned(), source })?;
        let mounted = Arc::new(mounted);
        let info = local::MountInfo {
            mountpoint: path.display().to_string(),
            dataset: dataset.to_string(),
            version: shown,
            follow: version.is_none(),
            mounted_unix_ms: now_unix_ms(),
        };
        let follower = version.is_none().then(|| tokio::spawn(self.clone().follow(path.to_owned(), mounted.clone())));
        info!(version = shown, follow = info.follow, "mounted");
        self.table().insert(path.to_owned(), Entry { info: info.clone(), mounted, follower });
        Ok(info)
    }

    /// Switches a following mount whenever the region's active version changes.
    async fn follow(self: Arc<Self>, path: PathBuf, mounted: Arc<Mounted<VersionSource>>) {
        let mut changes = self.catalog.subscribe();
        let dataset = mounted.view().current().manifest().dataset.clone();
        while changes.changed().await.is_ok() {
            // Most changes of the assignments are not a new active version of this dataset.
            let shown = mounted.view().current().manifest().root;
            let fs = match self.catalog.resolve(&dataset, None) {
                Ok(a) if a.root.as_slice() == shown.0.as_slice() => continue,
                Ok(a) => self.assigned_fs(&a).await,
                Err(e) => Err(e.into()),
            };
            let fs = match fs {
                Ok(fs) => fs,
                // No active version any more (say, the rollout was withdrawn): keep showing
                // the last one rather than pull files from under readers.
                Err(e) => {
                    warn!(%dataset, error = %e, "cannot follow the active version; the mount keeps its version");
                    continue;
                }
            };
            let version = fs.manifest().version;
            let m = mounted.clone();
            if tokio::task::spawn_blocking(move || m.switch(fs)).await.unwrap_or(false) {
                info!(%dataset, version, path = %path.display(), "mount switched to the active version");
                if let Some(e) = self.table().get_mut(&path) {
                    e.info.version = version;
                }
            }
        }
    }

    /// Unmounts what this spoke mounted at `path`; see [`Mounted::unmount`] for `lazy`.
    #[instrument(skip_all, fields(path = %path.display(), lazy))]
    pub async fn unmount(&self, path: &Path, lazy: bool) -> Result<(), MountError> {
        let mounted = match self.table().get(path) {
            Some(e) => e.mounted.clone(),
            None => return Err(MountError::NotMounted(path.to_owned())),
        };
        let m = mounted.clone();
        tokio::task::spawn_blocking(move || m.unmount(lazy))
            .await
            .map_err(|e| MountError::Mount { path: path.to_owned(), source: std::io::Error::other(e) })??;
        if let Some(follower) = self.table().remove(path).and_then(|e| e.follower) {
            follower.abort();
        }
        info!("unmounted");
        Ok(())
    }

    /// Unmounts everything (lazily: the spoke is going away); for shutdown.
    pub async fn unmount_all(&self) {
        let paths: Vec<PathBuf> = self.table().keys().cloned().collect();
        for path in paths {
            if let Err(e) = self.unmount(&path, true).await {
                warn!(path = %path.display(), error = %e, "could not unmount");
            }
        }
    }
}

fn describe(info: &local::MountInfo) -> String {
    if info.follow {
        format!("{} (following its active version)", info.dataset)
    } else {
        format!("{}@v{}", info.dataset, info.version)
    }
}

/// What is mounted exactly at `path` ("SOURCE (FSTYPE)"), from /proc/self/mountinfo.
pub fn mounted_at(path: &Path) -> Option<String> {
    let target = path.canonicalize().ok()?;
    let table = std::fs::read("/proc/self/mountinfo").ok()?;
    // The last mount at a point is the one on top.
    parse_mountinfo(&table)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target)
        .map(|m| format!("{} ({})", m.source, m.fs_type))
}

/// One line of a mountinfo table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// The lines of a mountinfo table (proc(5)): `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`, space-separated, with the kernel's octal
/// escapes (`\040` for a space, `\011`, `\012`, `\134`) undone. The mount point is bytes, as
/// the kernel has it (a path need not be UTF-8). A line of another shape is skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountLine> {
    use std::os::unix::ffi::OsStringExt;
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let point = fields.get(4)?;
            // Optional fields run from the sixth to a lone `-`.
            let dash = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
            let (fs_type, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
            let text = |field: &[u8]| String::from_utf8_lossy(&unescape(field)).into_owned();
            Some(MountLine {
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(point))),
                fs_type: text(fs_type),
                source: text(source),
            })
        })
        .collect()
}

/// Undoes the kernel's escapes: a backslash and three octal digits are that byte; anything
/// else stays as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'))) {
            Some(byte) if byte <= 0xff => {
                out.push(byte as u8);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    /// What the kernel writes for a field: space, tab, newline and backslash as octal escapes.
    fn escape(field: &[u8]) -> Vec<u8> {
        field
            .iter()
            .flat_map(|&b| match b {
                b' ' | b'\t' | b'\n' | b'\\' => format!("\\{b:03o}").into_bytes(),
                _ => vec![b],
            })
            .collect()
    }

    #[test]
    fn mountinfo_lines_and_escapes() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
            36 35 98:0 /mnt1 /mnt/my\\040models\\134x rw,noatime master:1 propagation:x - fuse.aqueduct aqueduct\\040llama rw\n\
            bad line\n\
            40 35 0:50 / /no/dash rw\n\
            41 35 0:51 / /odd\\77\\400\\ rw - tmpfs tmpfs rw";
        let lines = parse_mountinfo(text);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[1].mount_point, Path::new("/mnt/my models\\x"));
        assert_eq!((lines[1].fs_type.as_str(), lines[1].source.as_str()), ("fuse.aqueduct", "aqueduct llama"));
        // Not escapes: fewer than three octal digits, beyond a byte, a lone backslash.
        assert_eq!(lines[2].mount_point, Path::new("/odd\\77\\400\\"));
        // This process's own table has its root.
        let own = parse_mountinfo(&std::fs::read("/proc/self/mountinfo").unwrap());
        assert!(own.iter().any(|m| m.mount_point == Path::new("/")), "{own:?}");
        assert!(mounted_at(Path::new("/proc")).is_some_and(|m| m.contains("proc")));
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// Any bytes as a table: lines or nothing, never a panic.
        #[test]
        fn fuzz_mountinfo_from_any_bytes(text in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "([0-9 :/\\\\a-z-]|\\\\[0-7]{0,3}|\n){0,80}".prop_map(String::into_bytes),
        ]) {
            let lines = parse_mountinfo(&text);
            prop_assert!(lines.len() <= text.split(|&b| b == b'\n').count());
        }

        /// Mount points of any bytes (spaces, tabs, newlines, backslashes, what looks like an
        /// escape, bytes that are not UTF-8) read back exactly as they were mounted.
        #[test]
        fn fuzz_mountinfo_round_trip(
            entries in proptest::collection::vec((
                proptest::collection::vec(prop_oneof![any::<u8>(), Just(b' '), Just(b'\\'), Just(b'\n'), Just(b'-')], 0..24),
                "[a-z.]{1,12}",
                "([ a-z0-9/-]|\\\\){1,12}",
                proptest::collection::vec("[a-z]{1,6}:[0-9]{1,3}", 0..3),
            ), 0..6),
        ) {
            let mut table = Vec::new();
            for (i, (point, fs_type, source, optional)) in entries.iter().enumerate() {
                let point = [b"/".as_slice(), point].concat();
                table.extend(format!("{} 1 0:{i} / ", 20 + i).into_bytes());
                table.extend(escape(&point));
                table.extend(b" rw,relatime");
                for o in optional {
                    table.extend(format!(" {o}").into_bytes());
                }
                table.extend(b" - ");
                table.extend(escape(fs_type.as_bytes()));
                table.push(b' ');
                table.extend(escape(source.as_bytes()));
                table.extend(b" rw\n");
            }
            let lines = parse_mountinfo(&table);
            prop_assert_eq!(lines.len(), entries.len());
            for (line, (point, fs_type, source, _)) in lines.iter().zip(&entries) {
                let want = [b"/".as_slice(), point].concat();
                prop_assert_eq!(line.mount_point.as_os_str().as_bytes(), want.as_slice());
                prop_assert_eq!(&line.fs_type, fs_type);
                prop_assert_eq!(&line.source, source);
            }
        }
    }
}
