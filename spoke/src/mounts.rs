//! The FUSE mounts the spoke hosts: read-only views of dataset versions over its chunk store.
//!
//! A mount shows a fixed version, or follows its dataset's active version in the region: when
//! the hub's assignments name another active version, the view switches in one step (new
//! opens see the new version; files already open read theirs to the end). Every mount shares
//! one [`ChunkCache`] of recently read chunks. Mounts end with the spoke.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aqueduct_fuse::fs::{ChunkCache, VersionFs};
use aqueduct_fuse::mount::{Mounted, UnmountError};
use aqueduct_fuse::view::View;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::reader::{ReadThrough, VersionSource};

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

/// What is mounted exactly at `path`, from /proc/self/mountinfo.
pub fn mounted_at(path: &Path) -> Option<String> {
    let target = path.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = fields.get(4)?.replace("\\040", " ");
        if Path::new(&point) != target {
            return None;
        }
        let dash = fields.iter().position(|f| *f == "-")?;
        Some(format!("{} ({})", fields.get(dash + 2)?, fields.get(dash + 1)?))
    })
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
