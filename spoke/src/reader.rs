//! Chunks for readers: from the store, or fetched on demand (read-through) ahead of
//! background replication.
//!
//! A miss is fetched from the hub (peers come with the regional cache), checked against its
//! digest, stored and served; two readers missing the same chunk share one fetch. While any
//! such fetch is in flight, replication holds back before its next request and its next chunk
//! ([`Priority`]), so a reader waits for one chunk's transfer, not for the version's. The FUSE
//! view's read-ahead asks for the chunks a sequential reader will reach soon the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aqueduct_fuse::fs::{ChunkSource, FsError};
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info_span, warn};

use crate::store::ChunkStore;

/// How long one on-demand fetch may take before the reader gets EIO.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Foreground (reader) fetches first: background work waits while any is in flight.
#[derive(Default)]
pub struct Priority {
    foreground: AtomicUsize,
    idle: Notify,
}

/// Held while a foreground fetch is in flight.
pub struct Foreground<'a>(&'a Priority);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Priority {
    pub fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::AcqRel);
        Foreground(self)
    }

    /// Returns when no foreground fetch is in flight.
    pub async fn background_turn(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.foreground.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, FsError>>>;

pub struct ReadThrough {
    store: Arc<dyn ChunkStore>,
    hub: SpokeClient<Channel>,
    priority: Arc<Priority>,
    inflight: Mutex<HashMap<Digest, Fetch>>,
}

impl ReadThrough {
    pub fn new(store: Arc<dyn ChunkStore>, hub: SpokeClient<Channel>, priority: Arc<Priority>) -> Arc<Self> {
        Arc::new(Self { store, hub, priority, inflight: Mutex::default() })
    }

    /// The chunk's bytes: from the store as stored (the caller checks them, see
    /// [`ReadThrough::discard`]), or fetched through the hub, checked, and stored in the
    /// background (the reader does not wait for the store's fsyncs, and gets the bytes even if
    /// the store is full).
    pub async fn chunk(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Result<Vec<u8>, FsError> {
        let fetched = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).get(&digest).cloned();
        if let Some(fetch) = fetched {
            return fetch.await.map(|data| data.as_ref().clone());
        }
        if let Some(data) = self.local(digest).await? {
            return Ok(data);
        }
        self.fetch(dataset, version, digest).await.map(|data| data.as_ref().clone())
    }

    /// The chunk from the store as stored (`None` if absent): the FUSE view checks it, and
    /// [`ReadThrough::discard`]s a corrupt copy.
    async fn local(&self, digest: Digest) -> Result<Option<Vec<u8>>, FsError> {
        let store = self.store.clone();
        let unavailable = |reason: String| FsError::Unavailable { digest, reason };
        let got = tokio::task::spawn_blocking(move || store.get_unchecked(&digest))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        got.map_err(|e| unavailable(e.to_string()))
    }

    /// Removes a copy that failed its check, so that the next read fetches it again.
    pub fn discard(&self, digest: &Digest) {
        warn!(%digest, "a chunk in the store is corrupt; removing it, the read fetches it again");
        if let Err(e) = self.store.remove(digest) {
            warn!(%digest, error = %e, "could not remove a corrupt chunk");
        }
    }

    /// Fetches a chunk through the hub, once however many readers ask at the same time.
    fn fetch(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Fetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fetch) = inflight.get(&digest) {
            return fetch.clone();
        }
        let this = self.clone();
        let span = info_span!("read_through", %digest, dataset, version);
        let (dataset, version) = (dataset.to_string(), version);
        let fetch = async move {
            let result = {
                let _foreground = this.priority.foreground();
                tokio::time::timeout(FETCH_TIMEOUT, this.fetch_now(&dataset, version, digest)).await.unwrap_or_else(
                    |_| {
                        Err(FsError::Unavailable {
                            digest,
                            reason: format!("no answer from the hub in {FETCH_TIMEOUT:?}"),
                        })
                    },
                )
            };
            match &result {
                // The store keeps it in the background; until it has, the finished fetch stays
                // in `inflight` and answers at once, so nobody fetches it again meanwhile.
                Ok(data) => {
                    let (this, stored) = (this.clone(), data.clone());
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = this.store.put(&digest, &stored) {
                            warn!(%digest, error = %e, "could not keep a chunk fetched on demand");
                        }
                        this.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest);
                    });
                }
                Err(_) => {
                    this.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest);
                }
            }
            result
        }
        .instrument(span)
        .boxed()
        .shared();
        inflight.insert(digest, fetch.clone());
        fetch
    }

    async fn fetch_now(&self, dataset: &str, version: u64, digest: Digest) -> Result<Arc<Vec<u8>>, FsError> {
        let unavailable = |reason: String| FsError::Unavailable { digest, reason };
        let started = std::time::Instant::now();
        let request =
            pb::FetchChunksRequest { dataset: dataset.to_string(), version, digests: vec![digest.0.to_vec()] };
        let mut stream = self
            .hub
            .clone()
            .fetch_chunks(request)
            .await
            .map_err(|s| unavailable(format!("the hub: {}", s.message())))?
            .into_inner();
        let chunk = stream
            .message()
            .await
            .map_err(|s| unavailable(format!("the hub: {}", s.message())))?
            .ok_or_else(|| unavailable("the hub ended the stream without it".into()))?;
        let actual = Digest::of(&chunk.data);
        if actual != digest {
            return Err(FsError::Corrupt { digest, actual });
        }
        debug!(bytes = chunk.data.len(), elapsed = ?started.elapsed(), "fetched on demand");
        Ok(Arc::new(chunk.data))
    }
}

/// One version's chunks for a FUSE view hosted by the spoke.
pub struct VersionSource {
    pub reader: Arc<ReadThrough>,
    pub dataset: String,
    pub version: u64,
}

#[async_trait]
impl ChunkSource for VersionSource {
    async fn chunk(&self, digest: &Digest, _length: u32) -> Result<Vec<u8>, FsError> {
        self.reader.chunk(&self.dataset, self.version, *digest).await
    }

    fn discard(&self, digest: &Digest) {
        self.reader.discard(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_waits_for_foreground_fetches() {
        let priority = Arc::new(Priority::default());
        priority.background_turn().await;
        let guard = priority.foreground();
        let p = priority.clone();
        let waiting = tokio::spawn(async move { p.background_turn().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "background work ran while a reader waited");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
