//! The node's FUSE mounts as the spoke drives them: through the node's holder
//! ([`aqueduct_fuse::holder`], reached as [`crate::holder`] says), which owns and serves every
//! mount, so that mounts outlive the spoke.
//!
//! A mount shows a fixed version, or follows its dataset's active version in the region, or
//! the version a tag names (the holder asks the spoke's local API, and switches in one step:
//! new opens see the new version, files already open read theirs to the end). The holder reads chunks from the spoke's store
//! on disk and through the local API. A spoke that stops, or is killed, leaves every mount in
//! place; the next spoke finds them in the holder's list, as they are.

use std::path::Path;

use aqueduct_proto::holder::v1 as held;
use aqueduct_proto::holder::v1::holder_client::HolderClient;
use aqueduct_proto::selector::Follows;
use aqueduct_proto::spoke::v1 as local;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::{info, instrument};

use crate::holder::HolderMode;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// What the holder answered (its code and words are passed on as they are).
    #[error("{}", .0.message())]
    Holder(tonic::Status),
    #[error(transparent)]
    Reach(#[from] crate::holder::HolderError),
}

impl From<tonic::Status> for MountError {
    fn from(s: tonic::Status) -> Self {
        MountError::Holder(s)
    }
}

pub struct Mounts {
    reach: crate::holder::Reach,
    /// The holder, once one answers.
    holder: tokio::sync::Mutex<Option<HolderClient<Channel>>>,
    /// The holder's task when it runs in this process (`embedded`).
    embedded: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Woken after a mount or an unmount (what is in use on the node changed).
    pub changed: tokio::sync::Notify,
}

impl Mounts {
    /// Reaches the node's holder if there is one (or runs it, if `[mounts]` says `embedded`)
    /// and adopts what it serves.
    pub async fn start(
        reach: crate::holder::Reach,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, MountError> {
        let (holder, embedded) = reach.existing(shutdown).await?;
        let mounts = Self {
            reach,
            holder: tokio::sync::Mutex::new(holder),
            embedded: std::sync::Mutex::new(embedded),
            changed: tokio::sync::Notify::new(),
        };
        let held = mounts.list().await?;
        if !held.is_empty() {
            let paths: Vec<&str> = held.iter().map(|m| m.mountpoint.as_str()).collect();
            info!(mounts = held.len(), ?paths, "adopted the mounts the holder serves");
        }
        Ok(mounts)
    }

    /// The holder: the one known, one that answers now, or (`spawn`) one started now.
    async fn holder(&self) -> Result<HolderClient<Channel>, MountError> {
        let mut holder = self.holder.lock().await;
        if let Some(h) = holder.as_ref() {
            return Ok(h.clone());
        }
        let h = self.reach.start().await?;
        *holder = Some(h.clone());
        Ok(h)
    }

    /// The holder if one is known or answers now; never starts one.
    async fn existing(&self) -> Option<HolderClient<Channel>> {
        let mut holder = self.holder.lock().await;
        if holder.is_none() {
            *holder = crate::holder::connect(&self.reach.socket()).await.ok();
        }
        holder.clone()
    }

    /// What the holder serves (nothing, if there is no holder yet).
    pub async fn list(&self) -> Result<Vec<local::MountInfo>, MountError> {
        let Some(mut holder) = self.existing().await else { return Ok(Vec::new()) };
        Ok(holder.list(local::ListMountsRequest {}).await?.into_inner().mounts)
    }

    /// The reads the holder answered since it started, and its whole copies (with whole copies
    /// off or no holder yet: none, and no reads).
    pub async fn counters(&self) -> Result<(held::ReadCounters, Option<held::WholeFiles>), MountError> {
        let Some(mut holder) = self.existing().await else { return Ok(Default::default()) };
        let list = holder.list(local::ListMountsRequest {}).await?.into_inner();
        Ok((list.reads.unwrap_or_default(), list.whole))
    }

    /// Tells the holder what its whole copies may take on disk now (`bytes`); answers with its
    /// copies as they are after (none: whole copies off, or no holder yet). A holder older than
    /// the limit is only asked.
    pub async fn limit_whole_files(&self, bytes: u64) -> Result<Option<held::WholeFiles>, MountError> {
        let Some(mut holder) = self.existing().await else { return Ok(None) };
        match holder.limit_whole_files(held::WholeFilesLimit { bytes }).await {
            Ok(answer) => Ok(answer.into_inner().whole),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(self.counters().await?.1),
            Err(s) => Err(s.into()),
        }
    }

    /// Mounts `dataset` on `path`, showing what `follows` says (a version, or following the
    /// active version or a tag). The same mount asked for again is answered with the existing
    /// one.
    #[instrument(skip_all, fields(dataset, %follows, path = %path.display()))]
    pub async fn mount(&self, dataset: &str, follows: &Follows, path: &Path) -> Result<local::MountInfo, MountError> {
        let (version, tag) = follows.to_wire();
        let request =
            local::MountRequest { dataset: dataset.to_string(), version, tag, mountpoint: path.display().to_string() };
        let info = match self.holder().await?.mount(request.clone()).await {
            // The holder went away (it was stopped, or crashed): a spoke that may start one
            // starts a new one, once.
            Err(s) if s.code() == tonic::Code::Unavailable && self.reach.config.holder == HolderMode::Spawn => {
                info!(error = s.message(), "the FUSE holder does not answer; starting another");
                *self.holder.lock().await = None;
                self.holder().await?.mount(request).await?.into_inner()
            }
            answer => answer?.into_inner(),
        };
        self.changed.notify_one();
        // A holder older than tags ignores the tag and mounts the active version: not what
        // was asked for.
        if let Some(tag) = follows.tag()
            && info.tag != tag
        {
            let _ = self.unmount(path, true).await;
            return Err(MountError::Holder(tonic::Status::failed_precondition(format!(
                "the node's FUSE holder does not know tags (it mounted {} instead of following tag {tag}); upgrade aqueduct-fuse on this node",
                if info.follow { "the active version".to_string() } else { format!("v{}", info.version) }
            ))));
        }
        Ok(info)
    }

    /// Unmounts what the holder mounted at `path`; `lazy`: at once, even with files open.
    #[instrument(skip_all, fields(path = %path.display(), lazy))]
    pub async fn unmount(&self, path: &Path, lazy: bool) -> Result<(), MountError> {
        let request = held::UnmountRequest { mountpoint: path.display().to_string(), lazy };
        let Some(mut holder) = self.existing().await else {
            return Err(MountError::Holder(tonic::Status::not_found(format!(
                "nothing is mounted at {}: no FUSE holder runs on this node",
                path.display()
            ))));
        };
        holder.unmount(request).await?;
        self.changed.notify_one();
        Ok(())
    }

    /// Waits for an embedded holder to finish (it unmounts everything when the spoke's
    /// shutdown fires). A holder of its own process is left running, with its mounts.
    pub async fn stop(&self) {
        let task = self.embedded.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
