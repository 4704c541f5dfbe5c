//! The spoke's local API as seen from a mount outside the spoke (the `aqueduct-fuse` sidecar
//! and the holder): resolve a dataset reference to its manifest, follow the region's active
//! version, and read chunks through the spoke ([`RemoteSource`]).
//!
//! The channel connects lazily and reconnects on every call. A read that cannot reach the
//! spoke (it is restarting, or was killed) waits and tries again with backoff until the spoke
//! is back: the kernel's request stays pending, the reader sees neither EIO nor ENOTCONN, and
//! a restarted spoke serves the same mount without the reader remounting. Only an answer that
//! says the data is wrong (the chunk is corrupt, the version is not known) ends a read with an
//! error ([`after`] decides which).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aqueduct_core::signing::TrustedKeys;
use aqueduct_proto::selector::Follows;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use aqueduct_proto::{Digest, Manifest};
use async_trait::async_trait;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::fs::{ChunkSource, FsError, VersionFs};
use crate::mount::Mounted;

/// A client of the spoke's local API on `socket`, connected when first used (so a spoke that
/// is not up yet is no error here).
pub fn client(socket: &Path) -> Result<LocalClient<Channel>, RemoteError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .map_err(|e| RemoteError::Socket { socket: socket.display().to_string(), reason: e.to_string() })?;
    // Manifests (the largest message) and chunks come back; requests are small.
    Ok(LocalClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES))
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{socket} is not a usable socket path: {reason}")]
    Socket { socket: String, reason: String },
    /// What the spoke answered (its code and message are kept: callers pass them on).
    #[error("{}", .0.message())]
    Spoke(tonic::Status),
    #[error("the spoke sent a damaged manifest: {0}")]
    Manifest(String),
    /// The manifest's signature does not verify under the keys this mount trusts.
    #[error("{0}")]
    Untrusted(aqueduct_core::signing::VerifyError),
}

/// What to do after a failed call to the spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// The spoke is away or busy (not reachable, restarting, overloaded, the call was cut):
    /// wait and ask again.
    Retry,
    /// The spoke answered that the data is wrong or not there to have: give up.
    Fail,
}

/// Whether a failed call is worth repeating: only answers that are about the data itself
/// (corrupt, unknown version, a malformed request) are final.
pub fn after(code: Code) -> After {
    match code {
        Code::DataLoss | Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::PermissionDenied => {
            After::Fail
        }
        _ => After::Retry,
    }
}

/// Waits between attempts: 50 ms doubling to 2 s.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    /// The next wait.
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }
}

/// The manifest of the version `follows` means at the spoke now (a version, the active one,
/// a tag's), or `None` if it is the one whose root is `known` (the one shown). `user` names a
/// mount the spoke does not host (a sidecar's), for which the spoke counts the version in use
/// (empty: none). With `trust` (a sidecar's), a manifest is refused unless its signature
/// verifies under one of those keys; the holder passes none (its spoke checked).
pub async fn resolve(
    client: &mut LocalClient<Channel>,
    dataset: &str,
    follows: &Follows,
    known: Option<Digest>,
    user: &str,
    trust: Option<&TrustedKeys>,
) -> Result<Option<Manifest>, RemoteError> {
    let known_root = known.map(|d| d.0.to_vec()).unwrap_or_default();
    let (version, tag) = follows.to_wire();
    let user = user.to_string();
    let response = client
        .resolve(local::ResolveRequest { dataset: dataset.to_string(), version, known_root, tag, user })
        .await
        .map_err(RemoteError::Spoke)?
        .into_inner();
    let manifest =
        response.manifest.map(Manifest::try_from).transpose().map_err(|e| RemoteError::Manifest(e.to_string()))?;
    if let (Some(m), Some(trust)) = (&manifest, trust) {
        trust.verify(m).map_err(RemoteError::Untrusted)?;
    }
    Ok(manifest)
}

/// Keeps `mounted` on the version `follows` names (the active version of its dataset, or a
/// tag's): asks the spoke every `every` and switches when the answer is another version. Runs
/// until dropped (abort its task). A spoke that cannot be asked, or that refuses (the tag's
/// version is not Ready in the region), leaves the mount on the version it shows, and says why
/// once. With a `user` (a sidecar's mount), each call also renews the spoke's lease on the
/// version shown: a sidecar runs this for a fixed version too.
pub async fn follow<S: ChunkSource + 'static>(
    mounted: Arc<Mounted<S>>,
    follows: Follows,
    user: String,
    trust: Option<Arc<TrustedKeys>>,
    mut client: LocalClient<Channel>,
    every: Duration,
    fs: impl Fn(Manifest) -> VersionFs<S>,
) {
    let name = mounted.view().current().manifest().dataset.clone();
    let mut complained = false;
    loop {
        tokio::time::sleep(every).await;
        let shown = mounted.view().current().manifest().root;
        match resolve(&mut client, &name, &follows, Some(shown), &user, trust.as_deref()).await {
            Ok(None) => complained = false,
            Ok(Some(manifest)) => {
                complained = false;
                let version = manifest.version;
                let (m, next) = (mounted.clone(), fs(manifest));
                if tokio::task::spawn_blocking(move || m.switch(next)).await.unwrap_or(false) {
                    info!(dataset = %name, version, %follows, mountpoint = %mounted.mountpoint().display(), "switched to the version it follows");
                }
            }
            Err(e) if !complained => {
                let shown = mounted.view().current().manifest().version;
                warn!(dataset = %name, %follows, shown, error = %e, "cannot follow: keeping the version shown");
                complained = true;
            }
            Err(_) => {}
        }
    }
}

/// One version's chunks, read through the spoke's local API.
pub struct RemoteSource {
    pub client: LocalClient<Channel>,
    pub dataset: String,
    pub version: u64,
}

impl RemoteSource {
    fn request(&self, digests: &[Digest]) -> local::ReadChunksRequest {
        local::ReadChunksRequest {
            dataset: self.dataset.clone(),
            version: self.version,
            digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        }
    }

    async fn once(&self, digest: &Digest) -> Result<Vec<u8>, tonic::Status> {
        let mut stream = self.client.clone().read_chunks(self.request(&[*digest])).await?.into_inner();
        let chunk = stream.message().await?.ok_or_else(|| tonic::Status::unavailable("the stream ended without it"))?;
        Ok(chunk.data)
    }
}

#[async_trait]
impl ChunkSource for RemoteSource {
    /// Asks the spoke until it answers: a spoke that is away is waited for (with backoff),
    /// an answer that the data is wrong is an error.
    async fn chunk(&self, digest: &Digest, _length: u32) -> Result<Vec<u8>, FsError> {
        let mut backoff = Backoff::default();
        let mut waited = Duration::ZERO;
        loop {
            match self.once(digest).await {
                Ok(data) => {
                    if !waited.is_zero() {
                        info!(%digest, ?waited, "the spoke answered again; the read goes on");
                    }
                    return Ok(data);
                }
                Err(s) if after(s.code()) == After::Fail => {
                    return Err(FsError::Unavailable {
                        digest: *digest,
                        reason: format!("the spoke: {}", s.message()),
                    });
                }
                Err(s) => {
                    if waited.is_zero() {
                        warn!(%digest, dataset = %self.dataset, version = self.version, error = s.message(), "cannot read through the spoke; the read waits for it");
                    } else {
                        debug!(%digest, ?waited, error = s.message(), "still waiting for the spoke");
                    }
                    let pause = backoff.step();
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_about_the_data_end_a_read() {
        for code in [Code::Unavailable, Code::Unknown, Code::Cancelled, Code::DeadlineExceeded, Code::Internal] {
            assert_eq!(after(code), After::Retry, "{code:?}");
        }
        for code in [Code::DataLoss, Code::NotFound, Code::InvalidArgument, Code::FailedPrecondition] {
            assert_eq!(after(code), After::Fail, "{code:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[tokio::test]
    async fn a_read_waits_for_a_spoke_that_is_not_there_yet() {
        // Nothing listens on the socket: the read does not fail, it waits.
        let dir = tempfile::tempdir().unwrap();
        let source =
            RemoteSource { client: client(&dir.path().join("spoke.sock")).unwrap(), dataset: "d".into(), version: 1 };
        let read = tokio::time::timeout(Duration::from_millis(500), source.chunk(&Digest::of(b"x"), 1)).await;
        assert!(read.is_err(), "a read with no spoke ended: {read:?}");
    }
}
