//! Chunks for readers: from the store, or fetched on demand (read-through) ahead of
//! background replication.
//!
//! A miss is asked of the chunk's owner in the region ([`crate::peers`]), which gets it over
//! the link if no peer holds it; the owner itself asks the peers that hold it first, then the
//! hub. Every chunk is checked against its digest as it arrives, handed to whoever waits for
//! it, and stored. One primitive does all of it, [`ReadThrough::pull`]: readers, replication
//! and peers' requests that want the same chunk at the same time share one fetch
//! ([`inflight`]). While a reader's fetch is in flight, replication holds back before its next
//! request and its next chunk ([`Priority`]), so a reader waits for one chunk's transfer, not
//! for the version's. The FUSE view's read-ahead asks for the chunks a sequential reader will
//! reach soon the same way.
//!
//! Where the bytes come from is behind [`crate::origin`]; what to make of an origin's answer
//! is decided here: wrong bytes are refused, counted and never stored (and a peer that sent
//! them suspected), a busy server is asked again as [`crate::retry`] says, a peer that fails
//! is suspected and the next owner asked. A reader's failure is a [`ReadError`] (the digest
//! and why), which the FUSE view maps to its own error in one place (`crate::mounts`).

mod inflight;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aqueduct_core::budget::{Budget, Lane};
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use futures::StreamExt;
use tracing::{Instrument, debug, info_span, warn};

use aqueduct_core::singleflight::Role;

use self::inflight::{Fetch, Flights, Leader, Registered, cancelled, join};
use crate::metrics::{self, SpokeMetrics};
use crate::origin::{ChunkOrigin, ChunkStream, FetchError, FetchRequest, OriginKind, Origins};
use crate::peers::{Owner, PeerError, Peers};
use crate::priority::Priority;
use crate::retry::{Backoff, Retry, ask_busy_again};
use crate::store::{CacheError, ChunkStore};

/// How long one on-demand fetch may take before the reader gets EIO.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A chunk's bytes as a reader gets them.
#[derive(Debug)]
pub struct Read {
    pub data: Vec<u8>,
    /// Hashed to their digest on the way here (a fetch checks every chunk on arrival); `false`:
    /// the store's copy as stored, which the caller checks (and [`ReadThrough::discard`]s).
    pub checked: bool,
}

/// A chunk a reader asked for could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chunk {digest} is unavailable: {reason}")]
pub struct ReadError {
    pub digest: Digest,
    pub reason: Reason,
}

/// Why a chunk could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// No owner, peer or the hub brought it within the reader's deadline.
    #[error("not found in the region in {0:?}")]
    Timeout(Duration),
    /// Every owner was asked; none sent it.
    #[error("neither the region nor the hub sent it")]
    NotSent,
    /// The fetch it waited for was cancelled (its reader gave up, or a batch beside it failed).
    #[error("the fetch was cancelled")]
    Cancelled,
    /// The origin asked left it out.
    #[error("the origin does not hold it")]
    NotHeld,
    /// The fetch failed, or the store could not be read: what it said.
    #[error("{0}")]
    Failed(String),
}

/// What a pull is for, which decides how it shares, waits and yields.
#[derive(Clone, Copy)]
pub struct Pull<'a> {
    pub dataset: &'a str,
    pub version: u64,
    /// Background work over the link: takes from this budget for every chunk and yields to
    /// readers between chunks (unless a reader waits for what it brings).
    pub budget: Option<&'a Budget>,
    /// The lane its chunks draw in from `budget` (replication: the version's class), and are
    /// counted in (`aqueduct_spoke_received_class_bytes_total`).
    pub lane: Lane,
    /// Asked of the chunks' owner in the region, which fetches what it lacks.
    pub from_owner: bool,
    /// Someone waits for it (a reader, or a peer's reader): a busy peer is not waited for, and
    /// background fetches it joins stop yielding.
    pub urgent: bool,
    /// Returns once the chunks are stored, not as soon as they arrived.
    pub wait_stored: bool,
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
    origins: Arc<dyn Origins>,
    peers: Arc<Peers>,
    priority: Arc<Priority>,
    /// Chunks coming over the link, or from a peer that holds them.
    link: Flights,
    /// Chunks asked of their owner (which may fetch them over the link).
    asked: Flights,
    metrics: Arc<SpokeMetrics>,
}

impl ReadThrough {
    /// A reader that keeps what it fetches in `store`, asks `origins` for what it lacks (the
    /// owners `peers` names), and lets background work run when no reader waits (`priority`).
    pub fn new(
        store: Arc<dyn ChunkStore>,
        origins: Arc<dyn Origins>,
        peers: Arc<Peers>,
        priority: Arc<Priority>,
        metrics: Arc<SpokeMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self { store, origins, peers, priority, link: Flights::new(), asked: Flights::new(), metrics })
    }

    /// What the spoke counts for Prometheus.
    pub fn metrics(&self) -> &Arc<SpokeMetrics> {
        &self.metrics
    }

    /// Chunks in flight over the link (or from a peer that holds them), or asked of owners.
    fn inflight(&self, link: bool) -> &Flights {
        if link { &self.link } else { &self.asked }
    }

    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    pub fn origins(&self) -> &Arc<dyn Origins> {
        &self.origins
    }

    /// The chunk's bytes: from the store as stored (the caller checks them, see
    /// [`ReadThrough::discard`]), or fetched, checked, and stored in the background (the
    /// reader does not wait for the store's fsyncs, and gets the bytes even if the store is
    /// full). A miss is asked of the chunk's owners in the region, best first; this spoke
    /// fetches it over the link itself when it is the owner or every owner before it failed.
    pub async fn chunk(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Result<Vec<u8>, ReadError> {
        self.read(dataset, version, digest).await.map(|read| read.data)
    }

    /// [`ReadThrough::chunk`], saying whether the bytes were checked on the way (fetched: the
    /// fetch hashed them on arrival) or are the store's as stored (the caller checks them).
    pub async fn read(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Result<Read, ReadError> {
        let span = info_span!("read_through", %digest, dataset, version);
        let _foreground = self.priority.foreground();
        tokio::time::timeout(FETCH_TIMEOUT, self.chunk_now(dataset, version, digest).instrument(span))
            .await
            .unwrap_or(Err(ReadError { digest, reason: Reason::Timeout(FETCH_TIMEOUT) }))
    }

    async fn chunk_now(self: &Arc<Self>, dataset: &str, version: u64, digest: Digest) -> Result<Read, ReadError> {
        let joined =
            self.link.follow(&digest).or_else(|| self.asked.follow(&digest)).map(|f| join(f, true, &self.priority));
        if let Some(Ok(data)) = match joined {
            Some(fetch) => Some(fetch.await),
            None => None,
        } {
            return Ok(Read { data: data.as_ref().clone(), checked: true });
        }
        if let Some(data) = self.local(digest).await? {
            self.metrics.chunk(metrics::Origin::Local);
            return Ok(Read { data, checked: false });
        }
        let failed = |e: FetchError| ReadError { digest, reason: Reason::Failed(e.to_string()) };
        let pull = Pull {
            dataset,
            version,
            budget: None,
            lane: Lane::Foreground,
            from_owner: true,
            urgent: true,
            wait_stored: false,
        };
        for owner in self.peers.owners(&digest) {
            let pulled = match owner {
                Owner::Peer(member) => match self.pull(self.origins.peer(&member).as_ref(), &pull, &[digest]).await {
                    Ok(pulled) => pulled,
                    Err(e) => {
                        debug!(error = %e, "an owner failed; asking the next");
                        continue;
                    }
                },
                Owner::Me => {
                    let own = Pull { from_owner: false, ..pull };
                    match self.over_link(&own, &[digest]).await {
                        // The hub was lost under the fetch: once more, which reaches the next hub
                        // that answers (crate::hubs) within the reader's deadline.
                        Err(e) if e.hub_lost() => {
                            debug!(error = %e, "the hub was lost under a reader's fetch; asking again");
                            self.over_link(&own, &[digest]).await.map_err(failed)?
                        }
                        pulled => pulled.map_err(failed)?,
                    }
                }
            };
            if let Some((_, data)) = pulled.got.into_iter().find(|(d, _)| *d == digest) {
                return Ok(Read { data: Arc::unwrap_or_clone(data), checked: true });
            }
        }
        Err(ReadError { digest, reason: Reason::NotSent })
    }

    /// The chunk from the store as stored (`None` if absent): the FUSE view checks it, and
    /// [`ReadThrough::discard`]s a corrupt copy.
    async fn local(&self, digest: Digest) -> Result<Option<Vec<u8>>, ReadError> {
        let store = self.store.clone();
        let failed = |reason: String| ReadError { digest, reason: Reason::Failed(reason) };
        let got = tokio::task::spawn_blocking(move || store.get_unchecked(&digest))
            .await
            .map_err(|e| failed(e.to_string()))?;
        got.map_err(|e| failed(e.to_string()))
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
    /// chunk a live peer holds never crosses the link again), the rest from the hub. Only the
    /// hub's chunks take from the pull's budget.
    pub async fn over_link(self: &Arc<Self>, pull: &Pull<'_>, digests: &[Digest]) -> Result<Pulled, FetchError> {
        let _foreground = pull.urgent.then(|| self.priority.foreground());
        // Every caller has just found them missing from the store; a chunk stored since is
        // caught by `pull`, under its lock.
        let mut by_holder: HashMap<String, (pb::Member, Vec<Digest>)> = HashMap::new();
        let holders = self.origins.holders(digests).await;
        let mut rest = Vec::new();
        for &d in digests {
            match holders.get(&d) {
                Some(m) => by_holder.entry(m.node.clone()).or_insert_with(|| (m.clone(), Vec::new())).1.push(d),
                None => rest.push(d),
            }
        }
        let mut pulled = Pulled::default();
        let from_holder = Pull { budget: None, from_owner: false, ..*pull };
        for (_, (member, digests)) in by_holder {
            match self.pull(self.origins.peer(&member).as_ref(), &from_holder, &digests).await {
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
            let p = self.pull(self.origins.hub().as_ref(), &Pull { from_owner: false, ..*pull }, &rest).await?;
            if let Some(d) = p.missing.first() {
                return Err(FetchError::Missing(*d));
            }
            pulled.got.extend(p.got);
        }
        Ok(pulled)
    }

    /// Fetches `digests` from `origin`, once however many ask at the same time: those already
    /// coming (asked of an owner, or over the link and from holders, as `pull.from_owner`
    /// says) are waited for instead. Each chunk is checked against its digest as it arrives,
    /// handed to everyone waiting for it, and stored (the call waits for the store only if
    /// `pull.wait_stored`). An origin that sends wrong bytes is refused (a peer suspected);
    /// what it did not send is returned as missing.
    pub async fn pull(
        self: &Arc<Self>,
        origin: &dyn ChunkOrigin,
        pull: &Pull<'_>,
        digests: &[Digest],
    ) -> Result<Pulled, FetchError> {
        let map = self.inflight(!pull.from_owner);
        let mut registered = Registered::default();
        let mut joined: Vec<(Digest, Fetch)> = Vec::new();
        let mut stored = Vec::new();
        let mut stored_leading: Vec<(Digest, Leader)> = Vec::new();
        let background = pull.budget.is_some();
        let wanted = Arc::new(AtomicBool::new(false));
        let mut seen = HashSet::new();
        for &d in digests.iter().filter(|d| seen.insert(**d)) {
            if let Some(f) = map.follow(&d) {
                joined.push((d, join(f, !background, &self.priority)));
            } else if self.store.contains(&d) {
                // Stored since the caller looked: nothing to fetch.
                stored.push(d);
            } else {
                match map.lead_or_follow(d, wanted.clone(), cancelled(d)) {
                    Role::Follow(f) => joined.push((d, join(f, !background, &self.priority))),
                    // A flight lets go of its chunk only once the store has it: one that ended
                    // just now left it there.
                    Role::Lead(leader) if self.store.contains(&d) => stored_leading.push((d, leader)),
                    Role::Lead(leader) => {
                        registered.leaders.insert(d, leader);
                    }
                }
            }
        }
        let mut pulled = Pulled::default();
        // Those who follow a chunk found in the store get it before the origin is asked.
        for (d, mut leader) in stored_leading {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.get(&d)).await {
                Ok(Ok(Some(data))) => {
                    let data = Arc::new(data);
                    leader.deliver(Ok(data.clone()));
                    pulled.got.push((d, data));
                }
                _ => {
                    leader.deliver(Err(ReadError { digest: d, reason: Reason::NotHeld }));
                    pulled.missing.push(d);
                }
            }
        }
        let asked: Vec<Digest> = digests.iter().filter(|d| registered.leaders.contains_key(d)).copied().collect();
        let outcome = if asked.is_empty() {
            Ok(())
        } else {
            let transfer = Transfer { reader: self, origin, pull, wanted: &wanted };
            transfer.stream_in(&asked, &mut registered.leaders, &mut pulled).await
        };
        // What did not arrive is no longer in flight; its waiters learn why.
        let reason = match &outcome {
            Ok(()) => Reason::NotHeld,
            Err(e) => Reason::Failed(e.to_string()),
        };
        pulled.missing.extend(registered.release(reason));
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
}

/// One ask of one origin: chunks stream in, are checked, handed to their waiters and stored.
struct Transfer<'a> {
    reader: &'a Arc<ReadThrough>,
    origin: &'a dyn ChunkOrigin,
    pull: &'a Pull<'a>,
    /// Set when someone in the foreground waits for what this transfer brings.
    wanted: &'a AtomicBool,
}

impl Transfer<'_> {
    /// Asks the origin for `asked` (this pull leads each one's flight: `leaders`); puts what
    /// arrives in `pulled`. Ends when the origin has sent what it will; fails on the first
    /// wrong chunk.
    async fn stream_in(
        &self,
        asked: &[Digest],
        leaders: &mut HashMap<Digest, Leader>,
        pulled: &mut Pulled,
    ) -> Result<(), FetchError> {
        let (reader, pull) = (self.reader, self.pull);
        let kind = self.origin.kind();
        let from = match kind {
            OriginKind::Hub => metrics::Origin::Hub,
            OriginKind::Peer(_) => metrics::Origin::Peer,
        };
        let request = FetchRequest {
            dataset: pull.dataset.to_string(),
            version: pull.version,
            digests: asked.to_vec(),
            fetch_on_miss: pull.from_owner,
            urgent: pull.urgent,
        };
        let mut stream = self.open(&request).await?;
        let mut stores = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(FETCH_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    self.blame(&e);
                    return Err(e);
                }
                Ok(None) => break,
                Err(_) => return Err(FetchError::Timeout(FETCH_TIMEOUT)),
            };
            let Some(digest) = Digest::from_slice(&chunk.digest).filter(|d| leaders.contains_key(d)) else {
                return Err(FetchError::Unexpected(format!("{:02x?}", &chunk.digest[..chunk.digest.len().min(8)])));
            };
            let actual = Digest::of(&chunk.data);
            if actual != digest {
                reader.metrics.verification_failed(from);
                let e = match kind {
                    OriginKind::Hub => FetchError::Corrupt { digest, actual },
                    OriginKind::Peer(m) => {
                        reader.peers.stats.corrupt_from_peers.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %m.node, %digest, %actual, "a peer sent wrong bytes; reporting it and asking elsewhere");
                        FetchError::Peer(PeerError::Corrupt { node: m.node.clone(), digest, actual })
                    }
                };
                self.blame(&e);
                return Err(e);
            }
            if let Some(budget) = pull.budget {
                budget.take_in(pull.lane, chunk.data.len()).await;
            }
            if from == metrics::Origin::Hub {
                reader.metrics.received_in(pull.lane, chunk.data.len() as u64);
            }
            if from == metrics::Origin::Peer {
                reader.peers.stats.from_peers.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            }
            reader.metrics.received(from, pull.dataset, chunk.data.len() as u64);
            let data = Arc::new(chunk.data);
            let mut leader = leaders.remove(&digest);
            if let Some(leader) = &mut leader {
                leader.deliver(Ok(data.clone()));
            }
            // Background work yields to readers, unless one of them waits for what it brings.
            if pull.budget.is_some() {
                reader.priority.background_turn_unless(self.wanted).await;
            }
            pulled.got.push((digest, data.clone()));
            // Until the store has it, the finished flight stays (its leader held) and answers at
            // once, so nobody fetches it again meanwhile.
            let store = reader.store.clone();
            stores.push(tokio::task::spawn_blocking(move || {
                // Hashed above, on arrival.
                let stored = store.put_checked(&digest, &data);
                drop(leader);
                stored
            }));
        }
        if pull.wait_stored {
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

    /// Opens the origin's stream. A busy server is asked again as [`ask_busy_again`] says:
    /// the hub for as long as it takes (a version does not fail for it; a reader waits within
    /// its own deadline), a peer by background work for a while (a reader asks the next owner
    /// at once). A peer that refuses otherwise is suspected.
    async fn open(&self, request: &FetchRequest) -> Result<ChunkStream, FetchError> {
        let mut retry = Retry::new(Backoff::BUSY);
        // Tokio's clock: paused in tests.
        let started = tokio::time::Instant::now();
        let server = self.origin.kind().server();
        loop {
            match self.origin.fetch(request).await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.is_busy() && ask_busy_again(server, self.pull.urgent, started.elapsed(), FETCH_TIMEOUT) => {
                    debug!(error = %e, "the server is busy; asking again");
                    tokio::time::sleep(retry.failed()).await;
                }
                Err(e) => {
                    self.blame(&e);
                    return Err(e);
                }
            }
        }
    }

    /// Leaves a peer that failed or lied out of ownership for a while.
    fn blame(&self, e: &FetchError) {
        if let Some(member) = self.origin.kind().peer()
            && e.blames_peer()
        {
            self.reader.peers.suspect(&member.node, &e.to_string());
        }
    }
}

#[cfg(test)]
mod tests;
