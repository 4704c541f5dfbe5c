//! The holder (`aqueduct-fuse hold`): a small long-lived process that owns every FUSE mount of
//! a node and serves it, so that mounts outlive the spoke.
//!
//! fuser cannot take over a FUSE connection that another process initialised (its session
//! does the INIT handshake itself), and requests a dead server had read from `/dev/fuse` would
//! be lost without `FUSE_NOTIFY_RESEND`; so rather than hand the connection to the next spoke,
//! the connection never belongs to the spoke. The holder keeps each mount's session and answers
//! the kernel itself, reading chunks from the spoke's store on disk, or through the spoke's
//! local API ([`source`]); while the spoke is away (killed, restarting, upgraded) a read that
//! needs it waits, and goes on when the spoke is back. The spoke is the holder's controller and
//! chunk supplier: it asks the holder to mount and unmount ([`service`], the
//! `aqueduct.holder.v1` API on a unix socket), and at its start asks what is mounted and adopts
//! it. The holder is only stopped on purpose (a node drain, its own upgrade): on SIGTERM it
//! unmounts everything.
//!
//! [`Holder`] is the mount table; [`request`] holds the decisions about a request (pure);
//! [`stats`] counts the reads answered, which the spoke exports as its metrics; [`whole`]
//! makes verified whole copies of mounted files, which mounts pass to the kernel (FUSE
//! passthrough) so that warm reads run at the speed of a local file.

pub mod request;
pub mod service;
pub mod source;
pub mod stats;
pub mod whole;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aqueduct_proto::Manifest;
use aqueduct_proto::selector::Follows;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::{info, instrument, warn};

use self::request::{Decision, MountSpec, Shown};
use self::source::HeldSource;
use self::stats::ReadStats;
use self::whole::WholeFiles;
use crate::fs::{ChunkCache, VersionFs};
use crate::mount::{Mounted, UnmountError};
use crate::remote::{RemoteError, RemoteSource};
use crate::view::View;

/// What the holder is started with (the `hold` subcommand's flags).
#[derive(Clone, Debug)]
pub struct HolderConfig {
    /// The holder's own API socket.
    pub socket: PathBuf,
    /// The spoke's chunk store on disk (its data directory), read directly.
    pub store: Option<PathBuf>,
    /// The spoke's local API socket.
    pub spoke_socket: PathBuf,
    /// Memory for recently read chunks, shared by every mount.
    pub cache_bytes: u64,
    /// How often a following mount asks the spoke for the version it follows.
    pub follow_every: Duration,
    /// Disk for whole copies of mounted files (`STORE/files`); 0, or no store: none.
    pub whole_files_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error(transparent)]
    Invalid(#[from] request::Invalid),
    #[error("mountpoint {0} does not exist or is not a directory; create it (mkdir -p) first")]
    Missing(PathBuf),
    #[error("mountpoint {path} is busy: {what} is mounted there; unmount it or choose another directory")]
    Busy { path: PathBuf, what: String },
    #[error("nothing is mounted by the holder at {0} (see `aqueduct-spoke mounts`)")]
    NotMounted(PathBuf),
    #[error("FUSE is not available to the holder: {0}")]
    NoFuse(String),
    /// The spoke could not resolve the version (its answer is passed on as it is).
    #[error(transparent)]
    Spoke(#[from] RemoteError),
    #[error("mounting at {path} failed: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Unmount(#[from] UnmountError),
    #[error("the holder's socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
}

struct Entry {
    dataset: String,
    follows: Follows,
    mounted: Arc<Mounted<HeldSource>>,
    follower: Option<JoinHandle<()>>,
    mounted_unix_ms: i64,
}

impl Entry {
    fn shown(&self) -> Shown {
        Shown { dataset: self.dataset.clone(), follows: self.follows.clone(), version: self.version() }
    }

    fn version(&self) -> u64 {
        self.mounted.view().current().manifest().version
    }

    fn info(&self, path: &Path) -> local::MountInfo {
        local::MountInfo {
            mountpoint: path.display().to_string(),
            dataset: self.dataset.clone(),
            version: self.version(),
            follow: self.follows.moves(),
            mounted_unix_ms: self.mounted_unix_ms,
            tag: self.follows.tag().unwrap_or_default().to_string(),
        }
    }
}

/// The node's FUSE mounts, served by this process.
pub struct Holder {
    config: HolderConfig,
    spoke: LocalClient<Channel>,
    cache: Arc<ChunkCache>,
    stats: Arc<ReadStats>,
    whole: Option<Arc<WholeFiles>>,
    /// Mount and unmount change it one at a time (a mount resolves its version under it).
    table: tokio::sync::Mutex<BTreeMap<PathBuf, Entry>>,
}

impl Holder {
    pub fn new(config: HolderConfig) -> Result<Arc<Self>, HolderError> {
        let spoke = crate::remote::client(&config.spoke_socket)?;
        Ok(Arc::new(Self {
            cache: ChunkCache::new(config.cache_bytes),
            stats: Arc::new(ReadStats::new()),
            whole: config.store.as_deref().and_then(|store| WholeFiles::start(store, config.whole_files_bytes)),
            table: tokio::sync::Mutex::default(),
            spoke,
            config,
        }))
    }

    /// The view of a version a mount shows (now, or after a switch); its files are offered
    /// for whole copies.
    fn version_fs(&self, manifest: Manifest) -> VersionFs<HeldSource> {
        let manifest = Arc::new(manifest);
        if let Some(whole) = &self.whole {
            whole.offer(manifest.clone());
        }
        let remote =
            RemoteSource { client: self.spoke.clone(), dataset: manifest.dataset.clone(), version: manifest.version };
        VersionFs::new(manifest, Arc::new(HeldSource::new(self.config.store.clone(), remote)), self.cache.clone())
    }

    pub async fn list(&self) -> Vec<local::MountInfo> {
        self.table.lock().await.iter().map(|(path, e)| e.info(path)).collect()
    }

    pub fn reads(&self) -> aqueduct_proto::holder::v1::ReadCounters {
        self.stats.snapshot()
    }

    /// Whole copies and passthrough, if whole copies are on.
    pub fn whole(&self) -> Option<aqueduct_proto::holder::v1::WholeFiles> {
        self.whole.as_ref().map(|w| w.counters())
    }

    /// Limits what the whole copies may take on disk to `bytes` (below the budget), removing
    /// copies past it; then as [`Holder::whole`].
    pub async fn limit_whole_files(&self, bytes: u64) -> Option<aqueduct_proto::holder::v1::WholeFiles> {
        let whole = self.whole.clone()?;
        // Removing files: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            whole.limit(bytes);
            whole.counters()
        })
        .await
        .ok()
    }

    /// Mounts what `spec` asks for, or answers with the same mount already there.
    #[instrument(skip_all, fields(dataset = %spec.dataset, follows = %spec.follows, path = %spec.mountpoint.display()))]
    pub async fn mount(self: &Arc<Self>, spec: MountSpec) -> Result<local::MountInfo, HolderError> {
        let mut table = self.table.lock().await;
        let path = spec.mountpoint.clone();
        match request::decide(table.get(&path).map(Entry::shown).as_ref(), &spec) {
            Decision::Existing => return Ok(table[&path].info(&path)),
            Decision::Busy(what) => return Err(HolderError::Busy { path, what }),
            Decision::New => {}
        }
        if !path.is_dir() {
            return Err(HolderError::Missing(path));
        }
        if let Some(what) = crate::mountinfo::mounted_at(&path) {
            return Err(HolderError::Busy { path, what });
        }
        crate::mount::check_available().map_err(HolderError::NoFuse)?;
        let mut spoke = self.spoke.clone();
        let manifest = crate::remote::resolve(&mut spoke, &spec.dataset, &spec.follows, None, "", None)
            .await?
            .ok_or_else(|| RemoteError::Manifest("the spoke sent no manifest".into()))?;
        let view = Arc::new(View::new(self.version_fs(manifest)));
        let (at, runtime) = (path.clone(), tokio::runtime::Handle::current());
        let observer: Arc<dyn crate::mount::ReadObserver> = self.stats.clone();
        let backing = self.whole.clone().map(|w| w as Arc<dyn crate::mount::Backing>);
        let mounted = tokio::task::spawn_blocking(move || {
            crate::mount::mount_observed(view, &at, runtime, Some(observer), backing)
        })
        .await
        .map_err(|e| HolderError::Mount { path: path.clone(), source: std::io::Error::other(e) })?
        .map_err(|source| HolderError::Mount { path: path.clone(), source })?;
        let mounted = Arc::new(mounted);
        let follows = spec.follows.clone();
        let follower = follows.moves().then(|| {
            let holder = self.clone();
            let fs = move |m: Manifest| holder.version_fs(m);
            let (spoke, every) = (self.spoke.clone(), self.config.follow_every);
            // The spoke knows the holder's mounts (it asks for the list): no lease.
            tokio::spawn(crate::remote::follow(mounted.clone(), follows.clone(), String::new(), None, spoke, every, fs))
        });
        let entry = Entry { dataset: spec.dataset, follows, mounted, follower, mounted_unix_ms: now_unix_ms() };
        let info = entry.info(&path);
        info!(version = info.version, follows = %entry.follows, "mounted");
        table.insert(path, entry);
        Ok(info)
    }

    /// Unmounts what the holder mounted at `path`; see [`Mounted::unmount`] for `lazy`.
    #[instrument(skip_all, fields(path = %path.display(), lazy))]
    pub async fn unmount(&self, path: &Path, lazy: bool) -> Result<(), HolderError> {
        let mut table = self.table.lock().await;
        let mounted = match table.get(path) {
            Some(e) => e.mounted.clone(),
            None => return Err(HolderError::NotMounted(path.to_owned())),
        };
        tokio::task::spawn_blocking(move || mounted.unmount(lazy))
            .await
            .map_err(|e| HolderError::Mount { path: path.to_owned(), source: std::io::Error::other(e) })??;
        if let Some(follower) = table.remove(path).and_then(|e| e.follower) {
            follower.abort();
        }
        info!("unmounted");
        Ok(())
    }

    /// Unmounts everything (lazily: the holder is going away).
    pub async fn unmount_all(&self) {
        let paths: Vec<PathBuf> = self.table.lock().await.keys().cloned().collect();
        for path in paths {
            if let Err(e) = self.unmount(&path, true).await {
                warn!(path = %path.display(), error = %e, "could not unmount");
            }
        }
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Serves the holder's API on `config.socket` until `shutdown` fires, then unmounts everything
/// and removes the socket. A socket an earlier holder left is replaced.
pub async fn run(config: HolderConfig, shutdown: tokio_util::sync::CancellationToken) -> Result<(), HolderError> {
    let socket = config.socket.clone();
    let holder = Holder::new(config)?;
    let listener = service::bind(&socket).map_err(|source| HolderError::Socket { path: socket.clone(), source })?;
    info!(socket = %socket.display(), pid = std::process::id(), "holding the node's FUSE mounts");
    let served = service::serve(listener, holder.clone(), shutdown).await;
    holder.unmount_all().await;
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| HolderError::Socket { path: socket, source: std::io::Error::other(e) })
}
