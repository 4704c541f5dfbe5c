//! The node plugin's state: which node-level FUSE mounts exist, and which pods' target paths
//! are bind-mounted from each.
//!
//! One FUSE mount per volume share (`DATASET@vN` or `DATASET@active`) lives at
//! `DATA_DIR/csi/mounts/SHARE`, made through the spoke's [`Mounts`] (so `aqueduct-spoke mounts`
//! lists it, and an `active` share switches versions as the region does). Each publication
//! bind-mounts it read-only at a target path; the share counts its targets and is unmounted
//! with the last. The FUSE mounts are the node's holder's and outlive the spoke, and so do the
//! binds; what is published where is kept on disk ([`super::publications`]), so a restarted
//! spoke knows every target: it keeps what is still bound, binds again a target whose pod is
//! still there, and cleans up the publications of pods that are gone ([`Node::start`]). A
//! spoke that stops unmounts nothing.
//!
//! Publish and unpublish change the state under one lock, in a task of their own: a caller
//! that gives up (the kubelet's deadline) never leaves a mount made and not recorded. Waiting
//! for a version to be Ready happens before, outside the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aqueduct_proto::ReplicationMode;
use aqueduct_proto::hub::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, info, instrument, warn};

use super::publications::{self, Action, Facts, Publication};
use super::volume::{Publish, VolumeSpec};
use super::{CsiConfig, CsiError};
use crate::catalog::{Catalog, CatalogError};
use crate::mounts::{MountError, Mounts};
use crate::store::ChunkStore;

/// What the node plugin works with.
pub struct NodeParts {
    /// This node's name (the CSI node id).
    pub node: String,
    /// The region this spoke serves.
    pub region: String,
    pub data_dir: PathBuf,
    pub config: CsiConfig,
    pub catalog: Arc<Catalog>,
    pub mounts: Arc<Mounts>,
    /// For the progress a publish that timed out reports.
    pub store: Arc<dyn ChunkStore>,
}

pub struct Node {
    parts: NodeParts,
    /// Where the node-level FUSE mounts live.
    root: PathBuf,
    state: tokio::sync::Mutex<State>,
    /// Where the publications are kept (`DATA_DIR/csi/publications.json`).
    file: PathBuf,
    /// Fired when the spoke stops: waiting publishes give up, new ones are refused.
    stopping: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Per share name: the FUSE mount and the target paths bound from it.
    shares: BTreeMap<String, Share>,
    /// Per target path: what is published there.
    targets: BTreeMap<PathBuf, Publication>,
}

struct Share {
    path: PathBuf,
    targets: BTreeSet<PathBuf>,
}

/// Why a wait for a version ended without it.
#[derive(Debug)]
pub enum Unready {
    /// The region holds the version, not Ready yet.
    NotReady(pb::Assignment),
    /// The region does not hold it (or, for `active`, has no active version).
    Missing(CatalogError),
    Stopping,
}

/// What a wait "forever" lasts: far beyond any pod's patience, well inside the clock's range.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Waits until the version `spec` names is assigned to the region and Ready there (or only
/// assigned, with `early`), up to `timeout`; returns its assignment.
pub async fn wait_until_ready(
    catalog: &Catalog,
    spec: &VolumeSpec,
    early: bool,
    timeout: Duration,
    stopping: &CancellationToken,
) -> Result<pb::Assignment, Unready> {
    // A timeout beyond the clock's range (the config allows any) waits as long as it can.
    let now = Instant::now();
    let deadline = now.checked_add(timeout).unwrap_or_else(|| now + FOREVER);
    // Subscribed before reading, so that no change between the two is missed.
    let mut changes = catalog.subscribe();
    loop {
        let unready = match catalog.resolve_follows(&spec.dataset, &spec.pin.follows()) {
            // Active means Ready in every region of the rollout, this one included.
            Ok(a) if a.ready || a.active || early => return Ok(a),
            Ok(a) => Unready::NotReady(a),
            Err(e) => Unready::Missing(e),
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Err(Unready::Stopping) },
            _ = tokio::time::sleep_until(deadline) => return Err(unready),
            _ = stopping.cancelled() => return Err(Unready::Stopping),
        }
    }
}

impl Node {
    /// Whether the node is stopping (it takes no new publishes).
    pub fn stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// The node plugin, with the publications an earlier spoke left (see [`Node::recover`]).
    pub async fn start(parts: NodeParts, stopping: CancellationToken) -> Arc<Self> {
        let root = parts.data_dir.join("csi/mounts");
        let file = parts.data_dir.join(publications::FILE);
        let node = Arc::new(Self { parts, root, state: tokio::sync::Mutex::default(), file, stopping });
        node.recover().await;
        node
    }

    /// Takes back the publications on disk: keeps each target still bound, binds again one
    /// whose pod is still there, cleans up the rest (unbind, forget, release the share when no
    /// target uses it); releases shares no publication uses.
    #[instrument(skip_all)]
    async fn recover(&self) {
        let mut state = self.state.lock().await;
        let found = match publications::load(&self.file) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "starting with no publications");
                if matches!(e, publications::PublicationsError::Damaged { .. }) {
                    let _ = std::fs::rename(&self.file, self.file.with_extension("json.bad"));
                }
                Vec::new()
            }
        };
        let table = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
        let points: BTreeSet<PathBuf> =
            aqueduct_fuse::mountinfo::parse_mountinfo(&table).into_iter().map(|m| m.mount_point).collect();
        for p in found {
            let facts = Facts {
                bound: points.contains(&p.target),
                pod_exists: publications::owner_dir(&p.target).is_some_and(|d| d.is_dir()),
            };
            let action = publications::reconcile(facts);
            let (volume_id, target) = (p.volume_id.as_str(), p.target.display());
            match action {
                Action::Keep => info!(volume_id, %target, "still published; kept"),
                Action::Rebind => match self.rebind(&mut state, &p).await {
                    Ok(()) => info!(volume_id, %target, "its bind was gone: bound again"),
                    // Kept all the same: the kubelet's unpublish will find it.
                    Err(e) => warn!(volume_id, %target, error = %e, "could not bind it again"),
                },
                Action::CleanUp => {
                    if facts.bound
                        && let Err(e) = unbind(&p.target, true)
                    {
                        warn!(volume_id, %target, error = %e, "could not unmount a stale publication");
                    }
                    let _ = std::fs::remove_dir(&p.target);
                    info!(volume_id, %target, "its pod is gone: cleaned up");
                    continue;
                }
            }
            let share = state
                .shares
                .entry(p.share.clone())
                .or_insert_with(|| Share { path: self.root.join(&p.share), targets: BTreeSet::new() });
            share.targets.insert(p.target.clone());
            state.targets.insert(p.target.clone(), p);
        }
        // Shares no publication uses any more (their pods went while no spoke ran).
        let used: BTreeSet<PathBuf> = state.shares.values().map(|s| s.path.clone()).collect();
        let held = self.parts.mounts.list().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot ask the holder what it serves");
            Vec::new()
        });
        for m in held {
            let path = PathBuf::from(&m.mountpoint);
            if path.starts_with(&self.root) && !used.contains(&path) {
                match self.parts.mounts.unmount(&path, true).await {
                    Ok(()) => info!(path = %path.display(), "released a share no pod uses"),
                    Err(e) => warn!(path = %path.display(), error = %e, "could not release a share no pod uses"),
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if !used.contains(&entry.path()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        self.persist(&state);
    }

    /// Binds a publication's target again, mounting its share first if the holder has not.
    async fn rebind(&self, state: &mut State, p: &Publication) -> Result<(), CsiError> {
        let path = self.root.join(&p.share);
        if !state.shares.contains_key(&p.share) {
            std::fs::create_dir_all(&path).map_err(|source| CsiError::Io {
                action: "creating the node's mount point",
                path: path.clone(),
                source,
            })?;
            // The holder answers a share it serves already as it is.
            self.parts.mounts.mount(&p.dataset, &p.follows(), &path).await?;
        }
        let (source, target) = (path, p.target.clone());
        tokio::task::spawn_blocking(move || bind_read_only(&source, &target)).await.unwrap_or_else(|e| {
            Err(CsiError::Io { action: "bind-mounting", path: p.target.clone(), source: std::io::Error::other(e) })
        })
    }

    /// Writes what is published where (a failure is logged: the publication itself stands).
    fn persist(&self, state: &State) {
        let all: Vec<Publication> = state.targets.values().cloned().collect();
        if let Err(e) = publications::save(&self.file, &all) {
            warn!(file = %self.file.display(), error = %e, "could not record the CSI publications; a restarted spoke will not know them");
        }
    }

    /// Where the shares are mounted (`DATA_DIR/csi/mounts`), and what is published from them.
    pub async fn published(&self) -> (PathBuf, Vec<Publication>) {
        (self.root.clone(), self.state.lock().await.targets.values().cloned().collect())
    }

    pub fn node_id(&self) -> &str {
        &self.parts.node
    }

    pub fn region(&self) -> &str {
        &self.parts.region
    }

    /// Publishes a volume at its target path: waits for its version to be Ready (unless it
    /// may start before), makes sure the share is mounted, bind-mounts it read-only. Publishing
    /// what is already published there succeeds and changes nothing. `deadline`: the caller's
    /// own (the gRPC timeout), if it set one.
    #[instrument(skip_all, fields(volume_id = %p.volume_id, target = %p.target.display(), share = %p.spec.share_name()))]
    pub async fn publish(self: &Arc<Self>, p: Publish, deadline: Option<Duration>) -> Result<(), CsiError> {
        if self.state.lock().await.published(&p)? {
            info!("already published");
            return Ok(());
        }
        let config = &self.parts.config;
        let early = p.spec.start_before_ready.unwrap_or(config.start_before_ready);
        let timeout = deadline.map_or(config.ready_timeout, |d| config.ready_timeout.min(d / 4 * 3));
        let assignment = match wait_until_ready(&self.parts.catalog, &p.spec, early, timeout, &self.stopping).await {
            Ok(a) => a,
            Err(Unready::Stopping) => return Err(CsiError::ShuttingDown),
            Err(Unready::Missing(source)) => return Err(CsiError::NotAssigned { source, waited: timeout }),
            Err(Unready::NotReady(a)) => return Err(self.not_ready(&a, timeout).await),
        };
        if let Some(mode) = p.spec.mode
            && assignment.mode() != pb::ReplicationMode::Unspecified
            && let Ok(rollout_mode) = ReplicationMode::from_wire(assignment.mode)
            && mode != rollout_mode
        {
            info!(volume_mode = %mode, %rollout_mode, "the region holds the version as its rollout says, not as the volume does");
        }
        let node = self.clone();
        tokio::spawn(async move { node.attach(p).await }.instrument(Span::current())).await.unwrap_or_else(|e| {
            Err(CsiError::Io { action: "publishing", path: PathBuf::new(), source: std::io::Error::other(e) })
        })
    }

    async fn attach(&self, p: Publish) -> Result<(), CsiError> {
        let mut state = self.state.lock().await;
        if self.stopping.is_cancelled() {
            return Err(CsiError::ShuttingDown);
        }
        // Another call may have published it while this one waited.
        if state.published(&p)? {
            return Ok(());
        }
        let name = p.spec.share_name();
        let path = self.root.join(&name);
        if !state.shares.contains_key(&name) {
            std::fs::create_dir_all(&path).map_err(|source| CsiError::Io {
                action: "creating the node's mount point",
                path: path.clone(),
                source,
            })?;
            if let Err(e) = self.parts.mounts.mount(&p.spec.dataset, &p.spec.pin.follows(), &path).await {
                let _ = std::fs::remove_dir(&path);
                return Err(e.into());
            }
            state.shares.insert(name.clone(), Share { path: path.clone(), targets: BTreeSet::new() });
            info!(path = %path.display(), "the node's mount of this share is up");
        }
        let (source, target) = (path.clone(), p.target.clone());
        let bound = tokio::task::spawn_blocking(move || bind_read_only(&source, &target)).await.unwrap_or_else(|e| {
            Err(CsiError::Io { action: "bind-mounting", path: p.target.clone(), source: std::io::Error::other(e) })
        });
        if let Err(e) = bound {
            if state.shares.get(&name).is_some_and(|s| s.targets.is_empty()) {
                self.release_share(&mut state, &name).await;
            }
            return Err(e);
        }
        state.shares.get_mut(&name).expect("inserted above").targets.insert(p.target.clone());
        let pod_uid = publications::pod_dir(&p.target).map(|(_, uid)| uid);
        let publication = Publication {
            volume_id: p.volume_id.clone(),
            target: p.target.clone(),
            share: name,
            dataset: p.spec.dataset.clone(),
            version: p.spec.pin.version(),
            tag: p.spec.pin.tag().map(str::to_string),
            pod_uid,
        };
        state.targets.insert(p.target.clone(), publication);
        self.persist(&state);
        info!("published");
        Ok(())
    }

    /// Removes the bind mount at `target` (and the directory), and with the last user the
    /// share's FUSE mount. Unpublishing what is not published succeeds.
    #[instrument(skip_all, fields(volume_id, target = %target.display()))]
    pub async fn unpublish(self: &Arc<Self>, volume_id: String, target: PathBuf) -> Result<(), CsiError> {
        let node = self.clone();
        tokio::spawn(async move { node.detach(&volume_id, &target).await }.instrument(Span::current()))
            .await
            .unwrap_or_else(|e| {
                Err(CsiError::Io { action: "unpublishing", path: PathBuf::new(), source: std::io::Error::other(e) })
            })
    }

    async fn detach(&self, volume_id: &str, target: &Path) -> Result<(), CsiError> {
        let mut state = self.state.lock().await;
        let share = match state.targets.get(target) {
            Some(p) if p.volume_id != volume_id => {
                return Err(CsiError::OtherVolume {
                    target: target.to_owned(),
                    volume_id: volume_id.to_string(),
                    published: p.volume_id.clone(),
                });
            }
            Some(p) => Some(p.share.clone()),
            // Not published (or no longer): a mount left there is detached all the same.
            None => None,
        };
        let t = target.to_owned();
        let lazy = share.is_none();
        tokio::task::spawn_blocking(move || unbind(&t, lazy)).await.unwrap_or_else(|e| {
            Err(CsiError::Io { action: "unmounting", path: target.to_owned(), source: std::io::Error::other(e) })
        })?;
        match std::fs::remove_dir(target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                warn!(error = %e, "could not remove the target directory");
            }
            _ => {}
        }
        let Some(name) = share else {
            info!("was not published; nothing left there");
            return Ok(());
        };
        state.targets.remove(target);
        self.persist(&state);
        let last = state.shares.get_mut(&name).is_some_and(|s| {
            s.targets.remove(target);
            s.targets.is_empty()
        });
        if last {
            self.release_share(&mut state, &name).await;
        }
        info!(last, "unpublished");
        Ok(())
    }

    /// Unmounts a share's FUSE mount and forgets it. Lazily: a pod's bind that had to be
    /// detached lazily (files still open) keeps the FUSE connection alive until those files
    /// close, and nothing here waits for that.
    async fn release_share(&self, state: &mut State, name: &str) {
        let Some(share) = state.shares.remove(name) else { return };
        match self.parts.mounts.unmount(&share.path, true).await {
            Ok(()) => {}
            Err(MountError::Holder(s)) if s.code() == tonic::Code::NotFound => {}
            Err(e) => warn!(path = %share.path.display(), error = %e, "could not unmount the node's mount"),
        }
        let _ = std::fs::remove_dir(&share.path);
        info!(share = name, "the node's mount of this share is gone");
    }

    /// Stops: waiting publishes give up, new ones are refused; a publish or unpublish under
    /// way finishes. Nothing is unmounted: the pods' binds and the holder's shares stay, and
    /// the next spoke takes them back from the publications on disk.
    pub async fn stop(&self) {
        self.stopping.cancel();
        let _settled = self.state.lock().await;
    }

    /// The error of a publish whose version did not become Ready in time, with how far this
    /// node is.
    async fn not_ready(&self, a: &pb::Assignment, waited: Duration) -> CsiError {
        let progress = match self.parts.catalog.manifest(a).await {
            Ok(manifest) => {
                let (held, total) = self.parts.store.held_of(&manifest);
                let region = a.mode() == pb::ReplicationMode::Region;
                let share = if region { " (in region mode a node holds its share only)" } else { "" };
                format!(
                    "the region's spokes are still replicating it; this node holds {} of {}{share}",
                    mib(held),
                    mib(total)
                )
            }
            Err(e) => format!("the region's spokes are still replicating it ({e})"),
        };
        CsiError::NotReady {
            what: format!("{}@v{}", a.dataset, a.version),
            dataset: a.dataset.clone(),
            region: self.parts.region.clone(),
            waited,
            progress,
        }
    }
}

impl State {
    /// Whether `p` is published already (then nothing is to be done); an error if its target
    /// holds another volume.
    fn published(&self, p: &Publish) -> Result<bool, CsiError> {
        match self.targets.get(&p.target) {
            None => Ok(false),
            Some(there) if there.volume_id == p.volume_id && there.share == p.spec.share_name() => Ok(true),
            Some(there) => Err(CsiError::TargetInUse {
                target: p.target.clone(),
                volume_id: there.volume_id.clone(),
                what: there.share.clone(),
            }),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn c_path(path: &Path) -> Result<std::ffi::CString, CsiError> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| CsiError::Invalid(format!("path {} has a NUL byte: {e}", path.display())))
}

/// Bind-mounts `source` at `target` (created if missing) and makes the bind read-only.
fn bind_read_only(source: &Path, target: &Path) -> Result<(), CsiError> {
    std::fs::create_dir_all(target).map_err(|e| CsiError::Io {
        action: "creating the target directory",
        path: target.to_owned(),
        source: e,
    })?;
    let (src, dst) = (c_path(source)?, c_path(target)?);
    let io = |action: &'static str| CsiError::Io {
        action,
        path: target.to_owned(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: NUL-terminated paths; no filesystem type or data for a bind mount.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
        return Err(io("bind-mounting the node's mount"));
    }
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: as above; a remount of the bind just made.
    if unsafe { libc::mount(std::ptr::null(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()) } != 0 {
        let e = io("making the bind mount read-only");
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        return Err(e);
    }
    Ok(())
}

/// Unmounts whatever is mounted at `path` (lazily if asked, or if it is busy). Returns whether
/// something was; nothing mounted there is no error.
fn unmount(path: &Path, lazy: bool) -> Result<bool, CsiError> {
    let p = c_path(path)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), flags) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not a mount point, or no such path.
        Some(libc::EINVAL | libc::ENOENT) => Ok(false),
        // SAFETY: as above.
        Some(libc::EBUSY) if !lazy => match unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } {
            0 => Ok(true),
            _ => Err(CsiError::Io {
                action: "unmounting",
                path: path.to_owned(),
                source: std::io::Error::last_os_error(),
            }),
        },
        _ => Err(CsiError::Io { action: "unmounting", path: path.to_owned(), source: e }),
    }
}

/// Removes the bind mount at `target`, if any.
fn unbind(target: &Path, lazy: bool) -> Result<(), CsiError> {
    unmount(target, lazy).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume::Pin;
    use aqueduct_proto::hub::v1::spoke_client::SpokeClient;

    fn catalog(dir: &Path) -> Catalog {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Catalog::open(dir, SpokeClient::new(channel), crate::trust::testing::trust()).unwrap()
    }

    fn assignments(list: &[(u64, bool)]) -> pb::Assignments {
        pb::Assignments {
            assignments: list
                .iter()
                .map(|&(version, ready)| pb::Assignment {
                    dataset: "llama".into(),
                    version,
                    ready,
                    root: vec![0; 32],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn spec(pin: Pin) -> VolumeSpec {
        VolumeSpec { dataset: "llama".into(), pin, mode: None, start_before_ready: None }
    }

    #[tokio::test]
    async fn a_publish_waits_for_ready_and_gives_up_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(catalog(dir.path()));
        let stopping = CancellationToken::new();
        let long = Duration::from_secs(3600);
        // Not assigned yet, then assigned, then Ready: the wait ends only then.
        let waiting = tokio::spawn({
            let (catalog, stopping) = (catalog.clone(), stopping.clone());
            async move { wait_until_ready(&catalog, &spec(Pin::Version(2)), false, long, &stopping).await }
        });
        catalog.set_assignments(assignments(&[(2, false)])).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "returned before the version was Ready");
        catalog.set_assignments(assignments(&[(2, true)])).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap().version, 2);

        // Not Ready within the timeout: says what it saw last.
        catalog.set_assignments(assignments(&[(2, true), (3, false)])).unwrap();
        let short = Duration::from_millis(50);
        match wait_until_ready(&catalog, &spec(Pin::Version(3)), false, short, &stopping).await {
            Err(Unready::NotReady(a)) => assert_eq!(a.version, 3),
            other => panic!("{other:?}"),
        }
        // Allowed to start early: assigned is enough.
        assert_eq!(
            wait_until_ready(&catalog, &spec(Pin::Version(3)), true, short, &stopping).await.unwrap().version,
            3
        );
        // Never assigned, or no active version: the catalog's reason.
        match wait_until_ready(&catalog, &spec(Pin::Version(9)), true, short, &stopping).await {
            Err(Unready::Missing(CatalogError::UnknownVersion { version: 9, .. })) => {}
            other => panic!("{other:?}"),
        }
        match wait_until_ready(&catalog, &spec(Pin::Active), false, short, &stopping).await {
            Err(Unready::Missing(CatalogError::NoActiveVersion { .. })) => {}
            other => panic!("{other:?}"),
        }
        // A timeout beyond the clock's range (a config may say so) waits, never panics.
        assert_eq!(
            wait_until_ready(&catalog, &spec(Pin::Version(2)), false, Duration::MAX, &stopping).await.unwrap().version,
            2
        );
        // The spoke stopping ends a wait at once.
        stopping.cancel();
        match wait_until_ready(&catalog, &spec(Pin::Version(3)), false, long, &stopping).await {
            Err(Unready::Stopping) => {}
            other => panic!("{other:?}"),
        }
    }
}
