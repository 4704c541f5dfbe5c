//! Chunks for readers: from the store, or fetched on demand (read-through) ahead of
//! background replication.
//!
//! A miss is asked of the chunk's owner in the region ([`crate::peers`]), which gets it over
//! the link if no peer holds it; the owner itself asks the peers that hold it first, then the
//! hub. Every chunk is checked against its digest as it arrives, handed to whoever waits for
//! it, and stored. One primitive does all of it, [`ReadThrough::pull`]: readers, replication
//! and peers' requests that want the same chunk at the same time share one fetch. While a
//! reader's fetch is in flight, replication holds back before its next request and its next
//! chunk ([`Priority`]), so a reader waits for one chunk's transfer, not for the version's.
//! The FUSE view's read-ahead asks for the chunks a sequential reader will reach soon the same
//! way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aqueduct_fuse::fs::{ChunkSource, FsError};
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::spoke::v1 as spb;
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::{Notify, oneshot};
use tonic::transport::Channel;
use tracing::{Instrument, debug, info_span, warn};

use crate::metrics::{self, SpokeMetrics};
use crate::peers::{Owner, PeerError, Peers};
use crate::store::{CacheError, ChunkStore};
use aqueduct_core::budget::Budget;

/// How long one on-demand fetch may take before the reader gets EIO.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits between asks of a server that is busy (RESOURCE_EXHAUSTED: the hub serves the region,
/// or a peer this spoke, as many `FetchChunks` streams as it allows): doubling from
/// [`Backoff::FIRST`] up to [`Backoff::MAX`], each shortened by up to a quarter so that the
/// spokes of a region do not all ask again at once.
struct Backoff {
    started: std::time::Instant,
    attempt: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { started: std::time::Instant::now(), attempt: 0 }
    }

    /// The wait before ask number `attempt + 2`, before jitter.
    fn delay(attempt: u32) -> Duration {
        Self::FIRST.saturating_mul(1u32 << attempt.min(16)).min(Self::MAX)
    }

    /// How long since the first ask.
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    async fn wait(&mut self) {
        let delay = Self::delay(self.attempt);
        self.attempt += 1;
        // Jitter from the clock: a few bits that differ between spokes and attempts.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let jitter = delay.mul_f64(f64::from(nanos % 1000) / 4000.0);
        tokio::time::sleep(delay - jitter).await;
    }
}

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
        self.background_turn_unless(&AtomicBool::new(false)).await;
    }

    /// Returns when no foreground fetch is in flight, or as soon as `wanted` is set (someone
    /// in the foreground waits for what this background work brings: pausing it would make
    /// them wait for themselves). Whoever sets `wanted` calls [`Priority::wake`].
    pub async fn background_turn_unless(&self, wanted: &AtomicBool) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.foreground.load(Ordering::Acquire) == 0 || wanted.load(Ordering::Acquire) {
                return;
            }
            idle.await;
        }
    }

    /// Wakes background work that waits for its turn, to look again.
    fn wake(&self) {
        self.idle.notify_waiters();
    }
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, FsError>>>;

/// A chunk on its way, and whether someone who must not wait for background work (a reader,
/// a peer) waits for it: then the pull bringing it does not yield to readers.
#[derive(Clone)]
struct InFlight {
    fetch: Fetch,
    wanted: Arc<AtomicBool>,
}

impl InFlight {
    /// The chunk, when it comes. An `urgent` joiner (one that holds up a reader or a peer)
    /// stops the pull bringing it from yielding to readers.
    fn join(&self, urgent: bool, priority: &Priority) -> Fetch {
        if urgent && !self.wanted.swap(true, Ordering::AcqRel) {
            priority.wake();
        }
        self.fetch.clone()
    }
}

/// Chunks a pull registered as in flight and has not delivered yet. However the pull ends,
/// even cancelled (a reader's timeout, a failed batch next to it), they leave the in-flight
/// map and their waiters learn why, so that nobody waits for, or joins, a fetch that is gone.
struct Registered<'a> {
    inflight: &'a Mutex<HashMap<Digest, InFlight>>,
    waiters: HashMap<Digest, Waiter>,
}

impl Registered<'_> {
    /// Fails the undelivered chunks with `reason`; returns them.
    fn release(&mut self, reason: &str) -> Vec<Digest> {
        let mut inflight = lock(self.inflight);
        let mut released = Vec::new();
        for (d, tx) in self.waiters.drain() {
            inflight.remove(&d);
            let _ = tx.send(Err(FsError::Unavailable { digest: d, reason: reason.to_string() }));
            released.push(d);
        }
        released
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if !self.waiters.is_empty() {
            self.release("the fetch was cancelled");
        }
    }
}
type Waiter = oneshot::Sender<Result<Arc<Vec<u8>>, FsError>>;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the hub: {}", .0.message())]
    Hub(tonic::Status),
    #[error("the hub sent wrong bytes for chunk {digest} (their hash is {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the hub sent chunk {0}, which was not asked for")]
    Unexpected(String),
    #[error("chunk {0} did not arrive")]
    Missing(Digest),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
}

/// Where a pull gets its chunks.
pub enum Origin<'a> {
    /// Over the link. Background work passes its budget: it takes from it for every chunk and
    /// yields to readers between chunks.
    Hub { background: Option<&'a Budget> },
    /// From a peer of the region; with `fetch_on_miss` the peer gets what it lacks.
    Peer { member: pb::Member, fetch_on_miss: bool, urgent: bool },
}

/// What a pull brought: the chunks (including those another pull was already fetching), and
/// those the origin did not send (a peer that does not hold them).
#[derive(Default)]
pub struct Pulled {
    pub got: Vec<(Digest, Arc<Vec<u8>>)>,
    pub missing: Vec<Digest>,
}

pub struct ReadThrough {
    store: Arc<dyn ChunkStore>,
    hub: SpokeClient<Channel>,
    peers: Arc<Peers>,
    priority: Arc<Priority>,
    /// Chunks coming over the link, or from a peer that holds them.
    link: Mutex<HashMap<Digest, InFlight>>,
    /// Chunks asked of their owner (which may fetch them over the link).
    asked: Mutex<HashMap<Digest, InFlight>>,
    metrics: Arc<SpokeMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReadThrough {
    pub fn new(
        store: Arc<dyn ChunkStore>,
        hub: SpokeClient<Channel>,
        peers: Arc<Peers>,
        priority: Arc<Priority>,
        metrics: Arc<SpokeMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self { store, hub, peers, priority, link: Mutex::default(), asked: Mutex::default(), metrics })
    }

    /// What the spoke counts for Prometheus.
    pub fn metrics(&self) -> &Arc<SpokeMetrics> {
        &self.metrics
    }

    /// Chunks in flight over the link (or from a peer that holds them), or asked of owners.
    fn inflight(&self, link: bool) -> &Mutex<HashMap<Digest, InFlight>> {
        if link { &self.link } else { &self.asked }
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The chunk's bytes: from the store as stored (the caller checks them, see
    /// [`ReadThrough::discard`]), or fetched, checked, and stored in the background (the
    /// reader does not wait for the store's fsyncs, and gets the bytes even if the store is
    /// full). A miss is asked of the chunk's owners in the region, best first; this spoke
    /// fetches it over the link itself when it is the owner or every owner before it failed.
    pub async fn chunk(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Result<Vec<u8>, FsError> {
        let span = info_span!("read_through", %digest, dataset, version);
        let _foreground = self.priority.foreground();
        tokio::time::timeout(FETCH_TIMEOUT, self.chunk_now(dataset, version, digest).instrument(span))
            .await
            .unwrap_or_else(|_| {
                Err(FsError::Unavailable { digest, reason: format!("not found in the region in {FETCH_TIMEOUT:?}") })
            })
    }

    async fn chunk_now(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Result<Vec<u8>, FsError> {
        let joined = lock(&self.link)
            .get(&digest)
            .map(|f| f.join(true, &self.priority))
            .or_else(|| lock(&self.asked).get(&digest).map(|f| f.join(true, &self.priority)));
        if let Some(Ok(data)) = match joined {
            Some(fetch) => Some(fetch.await),
            None => None,
        } {
            return Ok(data.as_ref().clone());
        }
        if let Some(data) = self.local(digest).await? {
            self.metrics.chunk(metrics::Origin::Local);
            return Ok(data);
        }
        let unavailable = |e: FetchError| FsError::Unavailable { digest, reason: e.to_string() };
        for owner in self.peers.owners(&digest) {
            let pulled = match owner {
                Owner::Peer(member) => {
                    let origin = Origin::Peer { member, fetch_on_miss: true, urgent: true };
                    match self.pull(dataset, version, &[digest], origin, false).await {
                        Ok(pulled) => pulled,
                        Err(e) => {
                            debug!(error = %e, "an owner failed; asking the next");
                            continue;
                        }
                    }
                }
                Owner::Me => {
                    self.over_link(dataset, version, &[digest], None, true, false).await.map_err(unavailable)?
                }
            };
            if let Some((_, data)) = pulled.got.into_iter().find(|(d, _)| *d == digest) {
                return Ok(data.as_ref().clone());
            }
        }
        Err(FsError::Unavailable { digest, reason: "neither the region nor the hub sent it".into() })
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
        self.metrics.verification_failed(metrics::Origin::Local);
        if let Err(e) = self.store.remove(digest) {
            warn!(%digest, error = %e, "could not remove a corrupt chunk");
        }
    }

    /// Fetches `digests` as their owner: from peers that hold them (asked first, so that a
    /// chunk a live peer holds never crosses the link again), the rest from the hub.
    /// `background` work takes from its budget; `urgent` work is a reader's, ahead of it.
    pub async fn over_link(
        self: &Arc<Self>,
        dataset: &str,
        version: u64,
        digests: &[Digest],
        background: Option<&Budget>,
        urgent: bool,
        wait_stored: bool,
    ) -> Result<Pulled, FetchError> {
        let _foreground = urgent.then(|| self.priority.foreground());
        // Every caller has just found them missing from the store; a chunk stored since is
        // caught by `pull`, under its lock.
        let wanted = digests;
        let mut by_holder: HashMap<String, (pb::Member, Vec<Digest>)> = HashMap::new();
        let holders = self.peers.holders(wanted).await;
        let mut rest = Vec::new();
        for &d in wanted {
            match holders.get(&d) {
                Some(m) => by_holder.entry(m.node.clone()).or_insert_with(|| (m.clone(), Vec::new())).1.push(d),
                None => rest.push(d),
            }
        }
        let mut pulled = Pulled::default();
        for (_, (member, digests)) in by_holder {
            let origin = Origin::Peer { member, fetch_on_miss: false, urgent };
            match self.pull(dataset, version, &digests, origin, wait_stored).await {
                Ok(p) => {
                    pulled.got.extend(p.got);
                    rest.extend(p.missing);
                }
                Err(FetchError::Cache(e)) => return Err(e.into()),
                Err(_) => {
                    let have: HashSet<Digest> = pulled.got.iter().map(|(d, _)| *d).collect();
                    rest.extend(digests.into_iter().filter(|d| !have.contains(d) && !self.store.contains(d)));
                }
            }
        }
        if !rest.is_empty() {
            let p = self.pull(dataset, version, &rest, Origin::Hub { background }, wait_stored).await?;
            if let Some(d) = p.missing.first() {
                return Err(FetchError::Missing(*d));
            }
            pulled.got.extend(p.got);
        }
        Ok(pulled)
    }

    /// Fetches `digests` from `origin`, once however many ask at the same time: those already
    /// coming (from an origin of the same kind) are waited for instead. Each chunk is checked
    /// against its digest as it arrives, handed to everyone waiting for it, and stored (the
    /// call waits for the store only if `wait_stored`). A peer that sends wrong bytes is
    /// suspected and its stream dropped; what it did not send is returned as missing.
    pub async fn pull(
        self: &Arc<Self>,
        dataset: &str,
        version: u64,
        digests: &[Digest],
        origin: Origin<'_>,
        wait_stored: bool,
    ) -> Result<Pulled, FetchError> {
        let link = !matches!(origin, Origin::Peer { fetch_on_miss: true, .. });
        let map = self.inflight(link);
        let mut registered = Registered { inflight: map, waiters: HashMap::new() };
        let mut joined: Vec<(Digest, Fetch)> = Vec::new();
        let mut stored = Vec::new();
        let background = matches!(origin, Origin::Hub { background: Some(_) });
        let wanted = Arc::new(AtomicBool::new(false));
        {
            let mut inflight = lock(map);
            let mut seen = HashSet::new();
            for &d in digests.iter().filter(|d| seen.insert(**d)) {
                if let Some(f) = inflight.get(&d) {
                    joined.push((d, f.join(!background, &self.priority)));
                } else if self.store.contains(&d) {
                    // Stored since the caller looked (a fetch leaves `inflight` only once the
                    // store has the chunk, under this lock): nothing to fetch.
                    stored.push(d);
                } else {
                    let (tx, rx) = oneshot::channel();
                    let fetch = rx
                        .map(move |r| {
                            r.unwrap_or_else(|_| {
                                Err(FsError::Unavailable { digest: d, reason: "the fetch was dropped".into() })
                            })
                        })
                        .boxed()
                        .shared();
                    inflight.insert(d, InFlight { fetch, wanted: wanted.clone() });
                    registered.waiters.insert(d, tx);
                }
            }
        }
        let mut pulled = Pulled::default();
        let asked: Vec<Digest> = digests.iter().filter(|d| registered.waiters.contains_key(d)).copied().collect();
        let outcome = if asked.is_empty() {
            Ok(())
        } else {
            self.stream_in(
                dataset,
                version,
                &asked,
                &origin,
                &wanted,
                &mut registered.waiters,
                &mut pulled,
                wait_stored,
            )
            .await
        };
        // What did not arrive is no longer in flight; its waiters learn why.
        let reason = match &outcome {
            Ok(()) => "the origin does not hold it".to_string(),
            Err(e) => e.to_string(),
        };
        pulled.missing.extend(registered.release(&reason));
        outcome?;
        for d in stored {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.get(&d)).await {
                Ok(Ok(Some(data))) => pulled.got.push((d, Arc::new(data))),
                _ => pulled.missing.push(d),
            }
        }
        for (d, fetch) in joined {
            match fetch.await {
                Ok(data) => pulled.got.push((d, data)),
                Err(_) => pulled.missing.push(d),
            }
        }
        Ok(pulled)
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_in(
        self: &Arc<Self>,
        dataset: &str,
        version: u64,
        asked: &[Digest],
        origin: &Origin<'_>,
        wanted: &AtomicBool,
        waiters: &mut HashMap<Digest, Waiter>,
        pulled: &mut Pulled,
        wait_stored: bool,
    ) -> Result<(), FetchError> {
        let link = !matches!(origin, Origin::Peer { fetch_on_miss: true, .. });
        let digests = asked.iter().map(|d| d.0.to_vec()).collect();
        let mut backoff = Backoff::new();
        let (mut stream, peer) = match origin {
            Origin::Hub { .. } => {
                let request = pb::FetchChunksRequest { dataset: dataset.to_string(), version, digests };
                // A region whose streams are all taken at the hub waits its turn: background
                // work for as long as it takes (a version does not fail for it), a reader
                // within its own deadline.
                loop {
                    match self.hub.clone().fetch_chunks(request.clone()).await {
                        Ok(stream) => break (stream.into_inner(), None),
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            debug!(reason = status.message(), "the hub is busy with this region; asking again");
                            backoff.wait().await;
                        }
                        Err(status) => return Err(FetchError::Hub(status)),
                    }
                }
            }
            Origin::Peer { member, fetch_on_miss, urgent } => {
                let request = spb::PeerFetchRequest {
                    dataset: dataset.to_string(),
                    version,
                    digests,
                    fetch_on_miss: *fetch_on_miss,
                    urgent: *urgent,
                };
                loop {
                    match self.peers.fetch(member, request.clone()).await {
                        Ok(stream) => break (stream, Some(member)),
                        // A busy peer is not at fault: background work asks it again for a
                        // while, a reader asks the next owner at once.
                        Err(e @ PeerError::Busy { .. }) => {
                            if *urgent || backoff.elapsed() >= FETCH_TIMEOUT {
                                return Err(e.into());
                            }
                            debug!(error = %e, "asking again");
                            backoff.wait().await;
                        }
                        Err(e) => {
                            self.peers.suspect(&member.node, &e.to_string());
                            return Err(e.into());
                        }
                    }
                }
            }
        };
        let mut stores = Vec::new();
        loop {
            let next = match tokio::time::timeout(FETCH_TIMEOUT, stream.message()).await {
                Ok(Ok(next)) => next,
                Ok(Err(status)) => {
                    return Err(match peer {
                        None => FetchError::Hub(status),
                        Some(m) => {
                            let e = PeerError::Unavailable {
                                node: m.node.clone(),
                                address: m.peer_address.clone(),
                                reason: status.message().to_string(),
                            };
                            // A peer that could not get a chunk over the link, or is busy, is
                            // not at fault.
                            if !matches!(status.code(), tonic::Code::Aborted | tonic::Code::ResourceExhausted) {
                                self.peers.suspect(&m.node, &e.to_string());
                            }
                            e.into()
                        }
                    });
                }
                Err(_) => return Err(FetchError::Timeout(FETCH_TIMEOUT)),
            };
            let Some(chunk) = next else { break };
            let Some(digest) = Digest::from_slice(&chunk.digest).filter(|d| waiters.contains_key(d)) else {
                return Err(FetchError::Unexpected(format!("{:02x?}", &chunk.digest[..chunk.digest.len().min(8)])));
            };
            let actual = Digest::of(&chunk.data);
            let from = if peer.is_some() { metrics::Origin::Peer } else { metrics::Origin::Hub };
            if actual != digest {
                self.metrics.verification_failed(from);
                return Err(match peer {
                    None => FetchError::Corrupt { digest, actual },
                    Some(m) => {
                        self.peers.stats.corrupt_from_peers.fetch_add(1, Ordering::Relaxed);
                        let e = PeerError::Corrupt { node: m.node.clone(), digest, actual };
                        warn!(peer = %m.node, %digest, %actual, "a peer sent wrong bytes; reporting it and asking elsewhere");
                        self.peers.suspect(&m.node, &e.to_string());
                        e.into()
                    }
                });
            }
            if let Origin::Hub { background: Some(budget) } = origin {
                budget.take(chunk.data.len()).await;
            }
            if peer.is_some() {
                self.peers.stats.from_peers.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            }
            self.metrics.received(from, dataset, chunk.data.len() as u64);
            let data = Arc::new(chunk.data);
            if let Some(tx) = waiters.remove(&digest) {
                let _ = tx.send(Ok(data.clone()));
            }
            // Background work yields to readers, unless one of them waits for what it brings.
            if matches!(origin, Origin::Hub { background: Some(_) }) {
                self.priority.background_turn_unless(wanted).await;
            }
            pulled.got.push((digest, data.clone()));
            // Until the store has it, the finished fetch stays in flight and answers at once,
            // so nobody fetches it again meanwhile.
            let this = self.clone();
            stores.push(tokio::task::spawn_blocking(move || {
                let stored = this.store.put(&digest, &data);
                lock(this.inflight(link)).remove(&digest);
                stored
            }));
        }
        if wait_stored {
            for stored in stores {
                stored.await.map_err(|e| {
                    FetchError::Cache(CacheError::Io {
                        path: "chunk store".into(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })??;
            }
        } else {
            tokio::spawn(async move {
                for stored in stores {
                    if let Ok(Err(e)) = stored.await {
                        warn!(error = %e, "could not keep a fetched chunk");
                    }
                }
            });
        }
        Ok(())
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

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn asks_of_a_busy_server_back_off_doubling_up_to_a_bound() {
        let delays: Vec<u64> = (0..8).map(|a| Backoff::delay(a).as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(Backoff::delay(u32::MAX), Backoff::MAX, "no overflow however long it waits");
    }
}
