//! Chunks for readers: from the store, or fetched on demand (read-through) ahead of
//! background replication.
//!
//! A miss is fetched from the hub (peers come with the regional cache), checked against its
//! digest, stored and served; two readers missing the same chunk share one fetch. While any
//! such fetch is in flight, replication holds back before its next request and its next chunk
//! ([`Priority`]), so a reader waits for one chunk's transfer, not for the version's. Chunks a
//! sequential reader will reach soon are prefetched the same way, a few at a time.

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
use tokio::sync::{Notify, Semaphore};
use tonic::transport::Channel;
use tracing::{Instrument, debug, info_span, warn};

use crate::store::{CacheError, ChunkStore};

/// How long one on-demand fetch may take before the reader gets EIO.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Prefetches in flight at once, over all readers.
const PREFETCH_SLOTS: usize = 8;

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
    prefetch_slots: Arc<Semaphore>,
}

impl ReadThrough {
    pub fn new(store: Arc<dyn ChunkStore>, hub: SpokeClient<Channel>, priority: Arc<Priority>) -> Arc<Self> {
        Arc::new(Self {
            store,
            hub,
            priority,
            inflight: Mutex::default(),
            prefetch_slots: Arc::new(Semaphore::new(PREFETCH_SLOTS)),
        })
    }

    /// The chunk's bytes, verified: from the store, or fetched through the hub and stored (in
    /// the background: the reader does not wait for the store's fsyncs, and gets the bytes
    /// even if the store is full).
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

    /// The chunk from the store, `None` if absent; a corrupt copy is removed and is a miss.
    async fn local(&self, digest: Digest) -> Result<Option<Vec<u8>>, FsError> {
        let store = self.store.clone();
        let unavailable = |reason: String| FsError::Unavailable { digest, reason };
        let got = tokio::task::spawn_blocking(move || match store.get(&digest) {
            Err(CacheError::Corrupt { .. }) => {
                warn!(%digest, "a chunk in the store is corrupt; removing it and fetching it again");
                store.remove(&digest).map(|()| None)
            }
            other => other,
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        got.map_err(|e| unavailable(e.to_string()))
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

    /// Starts fetching chunks the store lacks, a few at a time, without waiting.
    pub fn prefetch(self: &Arc<Self>, dataset: &str, version: u64, chunks: &[(Digest, u32)]) {
        for &(digest, _) in chunks {
            // The store is asked in the task, not here: this runs in a reader's path.
            if self.inflight.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&digest) {
                continue;
            }
            let (this, dataset) = (self.clone(), dataset.to_string());
            tokio::spawn(async move {
                let Ok(_slot) = this.prefetch_slots.clone().acquire_owned().await else { return };
                let store = this.store.clone();
                if tokio::task::spawn_blocking(move || store.contains(&digest)).await.unwrap_or(true) {
                    return;
                }
                if let Err(e) = this.fetch(&dataset, version, digest).await {
                    debug!(%digest, error = %e, "prefetch failed; the read will try again");
                }
            });
        }
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

    fn prefetch(&self, chunks: &[(Digest, u32)]) {
        self.reader.prefetch(&self.dataset, self.version, chunks);
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
