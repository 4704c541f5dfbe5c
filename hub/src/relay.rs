//! The spokes' API: work assignments, manifests and the chunk relay.
//!
//! A spoke proves its region with its certificate and may read only versions rolled out to
//! that region; it speaks for its node with the session of its open watch ([`crate::members`]).
//! [`SpokeService::fetch_chunks`] reads each asked chunk's byte range from the
//! source, checks its BLAKE3 against the version (a source that changed after the snapshot
//! fails the version in the regions where it is not whole yet, and no wrong byte is sent), and
//! streams it within the region's link budget, shared by every stream of the region.
//! Assignments are pushed on every rollout change ([`Changes`]) and re-checked every
//! [`WATCH_RECHECK`]. Which version a region serves is decided by [`active_versions`], from
//! when each region of a rollout was added and first became Ready.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aqueduct_core::budget::Budget;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Manifest};
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, debug, info, instrument, warn};

use crate::members::{Members, NodeReport, Proof, RegionProgress};
use crate::snapshot::{blocking, now_unix_ms};
use crate::source::{HubFiles, Source, SourceSpec, read_range};
use crate::store::{MetaStore, RolloutRecord, RolloutUpdate};
use aqueduct_core::identity::Identity;

/// How often a watch re-reads its region's assignments even without a change notice.
pub const WATCH_RECHECK: Duration = Duration::from_secs(30);

/// Rollout changes: the admin API notifies, watches wake up.
pub type Changes = Arc<Notify>;

/// What the hub keeps in memory, shared by its services.
#[derive(Clone, Default)]
pub struct Live {
    pub changes: Changes,
    pub ledger: Arc<Ledger>,
    pub members: Arc<Members>,
    /// Each region's link budget, as the relay applies it.
    pub budgets: Arc<Budgets>,
    /// What the hub counts for Prometheus.
    pub metrics: Arc<crate::metrics::HubMetrics>,
    /// Fires when the hub stops: watches end, so that the server's graceful shutdown is not
    /// held up by streams that never finish on their own.
    pub stopping: tokio_util::sync::CancellationToken,
    /// How much `FetchChunks` work each region may have at once.
    pub relay_limits: Arc<RelayLimits>,
}

/// `FetchChunks` work per region, bounded so that one region's certificate cannot make the
/// hub hold more than a known amount of memory: at most `limits.fetch_streams_per_region`
/// streams (a call past it waits up to `limits.fetch_wait` for one to end, then is refused
/// with RESOURCE_EXHAUSTED), and at most `limits.relay_memory_per_region` of chunk bytes read
/// from the source and not yet taken by the connection (a stream waits for room before it
/// reads). What one region's streams hold besides is bounded per stream (one chunk in the
/// encoder, the connection's send buffer), so a region costs the hub at most about
/// `relay_memory_per_region + fetch_streams_per_region x 2.5 MiB`.
pub struct RelayLimits {
    streams: aqueduct_core::server::KeyedLimit,
    /// In KiB.
    memory: aqueduct_core::server::KeyedLimit,
}

impl RelayLimits {
    pub fn new(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            streams: aqueduct_core::server::KeyedLimit::new(limits.fetch_streams_per_region, limits.fetch_wait),
            memory: aqueduct_core::server::KeyedLimit::new(
                (limits.relay_memory_per_region.0 >> 10) as usize,
                limits.fetch_wait,
            ),
        }
    }

    /// `FetchChunks` streams of `region` open now.
    pub fn streams_of(&self, region: &str) -> usize {
        self.streams.held(region)
    }

    /// Bytes the relay holds for `region` now (read and not yet taken by the connection).
    pub fn memory_of(&self, region: &str) -> u64 {
        (self.memory.held(region) as u64) << 10
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self::new(&crate::config::LimitsConfig::default())
    }
}

/// Every region's budget, and when its rate was last read from the database. Shared by the
/// relay (which takes from them) and the admin API (which changes a rate at once).
#[derive(Default)]
pub struct Budgets {
    regions: Mutex<HashMap<String, (Arc<Budget>, Instant)>>,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Budget>, Instant)>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The region's budget, if it was read less than [`BUDGET_RECHECK`] ago.
    fn fresh(&self, region: &str) -> Option<Arc<Budget>> {
        self.lock().get(region).filter(|(_, read)| read.elapsed() < BUDGET_RECHECK).map(|(b, _)| b.clone())
    }

    /// Sets the region's rate (as just read or changed) and returns its budget: streams that
    /// hold it use the new rate from their next chunk.
    pub fn set(&self, region: &str, rate: u64) -> Arc<Budget> {
        let mut regions = self.lock();
        let entry = regions.entry(region.to_string()).or_insert_with(|| (Arc::new(Budget::new(rate)), Instant::now()));
        entry.0.set_rate(rate);
        entry.1 = Instant::now();
        entry.0.clone()
    }

    /// The rate the relay's limiter uses for `region`, if it relayed anything to it yet.
    pub fn rate(&self, region: &str) -> Option<u64> {
        self.lock().get(region).map(|(b, _)| b.rate())
    }
}

/// Bytes relayed per (dataset, version, region): counted in memory as each chunk is handed to
/// the transport and written to the database in one go every [`LEDGER_FLUSH`] (and when the
/// hub stops), so that a stream of one chunk (a reader's miss) costs no database write. The admin API's status adds
/// what is not written yet, under the same lock as the flush, so it never counts twice.
///
/// It also keeps which chunks each region got of each version, in memory until the region is
/// Ready, to count the bytes of chunks sent to a region more than once ([`Ledger::refetched`]):
/// the measure of how well the region's spokes kept to "once per region" (a spoke that died
/// with chunks no other held costs that much again). Counts start over when the hub restarts.
#[derive(Default)]
pub struct Ledger {
    entries: Mutex<HashMap<RolloutKey, Sent>>,
}

/// (dataset, version, region).
pub type RolloutKey = (String, u64, String);

#[derive(Default)]
struct Sent {
    /// Relayed bytes not written to the database yet.
    pending: u64,
    /// Chunks sent, until the region is Ready.
    chunks: HashSet<Digest>,
    refetched: u64,
}

pub const LEDGER_FLUSH: Duration = Duration::from_secs(1);

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RolloutKey, Sent>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `digest` as handed to the transport for `key`'s region, and as refetched if it
    /// went there before.
    fn sent(&self, key: &RolloutKey, digest: Digest, bytes: u64) {
        let mut entries = self.lock();
        let entry = match entries.get_mut(key) {
            Some(entry) => entry,
            None => entries.entry(key.clone()).or_default(),
        };
        entry.pending += bytes;
        if !entry.chunks.insert(digest) {
            entry.refetched += bytes;
        }
    }

    /// Bytes of chunks of `dataset@version` sent to `region` more than once.
    pub fn refetched(&self, key: &RolloutKey) -> u64 {
        self.lock().get(key).map_or(0, |s| s.refetched)
    }

    /// The region is Ready with the version: forget which chunks it got, keep the count.
    fn settle(&self, key: &RolloutKey) {
        if let Some(s) = self.lock().get_mut(key) {
            s.chunks = HashSet::new();
        }
    }

    /// Writes what is pending. Blocking: call from a blocking task.
    pub fn flush(&self, db: &dyn MetaStore) {
        for ((dataset, version, region), entry) in self.lock().iter_mut().filter(|(_, e)| e.pending > 0) {
            match db.add_relayed(dataset, *version, region, entry.pending) {
                Ok(()) => entry.pending = 0,
                Err(e) => warn!(error = %e, "could not record relayed bytes; will try again"),
            }
        }
    }

    /// Runs `read` (a database read of rollouts) with the pending bytes it must add per
    /// rollout, under the flush's lock so that nothing counts twice.
    pub fn with_pending<T>(&self, read: impl FnOnce(&dyn Fn(&RolloutKey) -> u64) -> T) -> T {
        let entries = self.lock();
        read(&|key| entries.get(key).map_or(0, |e| e.pending))
    }

    /// Flushes every [`LEDGER_FLUSH`] until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, db: Arc<dyn MetaStore>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(LEDGER_FLUSH) => false,
                _ = shutdown.cancelled() => true,
            };
            let (ledger, db) = (self.clone(), db.clone());
            let _ = tokio::task::spawn_blocking(move || ledger.flush(db.as_ref())).await;
            if stop {
                return;
            }
        }
    }
}

/// How long a region's budget is used before its rate is read again.
const BUDGET_RECHECK: Duration = Duration::from_secs(5);

/// Where each chunk of a version is in its source.
struct VersionIndex {
    manifest: Manifest,
    source: Arc<dyn Source>,
    locations: HashMap<Digest, (usize, u64, u32)>,
}

pub struct SpokeService {
    db: Arc<dyn MetaStore>,
    live: Live,
    indexes: Mutex<HashMap<(String, u64), Arc<VersionIndex>>>,
    /// (region, dataset, version) found rolled out; rollouts are never withdrawn.
    granted: Mutex<HashSet<(String, String, u64)>>,
    /// The hub's own files: no source read may reach them, whatever a link says.
    hub_files: HubFiles,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;
type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::Assignments, Status>> + Send>>;

fn region_of<T>(request: &Request<T>) -> Result<String, Status> {
    match Identity::of_request(request)? {
        Identity::Region(name) => Ok(name),
        other => Err(Status::permission_denied(format!(
            "this call is for spokes (a region's certificate); the caller is {other}"
        ))),
    }
}

impl SpokeService {
    pub fn new(db: Arc<dyn MetaStore>, live: Live, hub_files: HubFiles) -> Self {
        Self { db, live, indexes: Mutex::default(), granted: Mutex::default(), hub_files }
    }

    /// Fails unless `dataset@version` is rolled out to `region`.
    async fn authorize(&self, region: &str, dataset: &str, version: u64) -> Result<(), Status> {
        let key = (region.to_string(), dataset.to_string(), version);
        if self.granted.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
            return Ok(());
        }
        let owned = dataset.to_string();
        let rollouts = blocking(&self.db, move |db| db.rollouts(Some(&owned))).await?;
        if rollouts.iter().any(|r| r.version == version && r.region == region) {
            self.granted.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
            Ok(())
        } else {
            Err(Status::permission_denied(format!("{dataset}@v{version} is not rolled out to region {region}")))
        }
    }

    /// The region's budget; its rate is read again every [`BUDGET_RECHECK`] (the admin API
    /// sets a changed rate at once, see [`Budgets::set`]).
    async fn budget(&self, region: &str) -> Result<Arc<Budget>, Status> {
        if let Some(budget) = self.live.budgets.fresh(region) {
            return Ok(budget);
        }
        let regions = blocking(&self.db, |db| db.regions()).await?;
        let rate = regions
            .iter()
            .find(|r| r.name == region)
            .map(|r| r.rate)
            .ok_or_else(|| Status::permission_denied(format!("region {region} is not known to this hub")))?;
        Ok(self.live.budgets.set(region, rate))
    }

    async fn index(&self, dataset: &str, version: u64) -> Result<Arc<VersionIndex>, Status> {
        let key = (dataset.to_string(), version);
        if let Some(index) = self.indexes.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(index.clone());
        }
        let owned = dataset.to_string();
        let stored = blocking(&self.db, move |db| db.version(&owned, Some(version)))
            .await?
            .ok_or_else(|| Status::not_found(format!("{dataset}@v{version} does not exist")))?;
        let owned = dataset.to_string();
        let record = blocking(&self.db, move |db| db.dataset(&owned))
            .await?
            .ok_or_else(|| Status::not_found(dataset.to_string()))?;
        let source_name = record.source.clone();
        let source = blocking(&self.db, move |db| db.source(&source_name))
            .await?
            .ok_or_else(|| Status::internal(format!("dataset {dataset} names a source that is gone")))?;
        let source = SourceSpec::parse(&source.url, source.options)?.open_guarded(&self.hub_files)?;
        let mut locations = HashMap::new();
        for (i, file) in stored.manifest.files.iter().enumerate() {
            for c in &file.chunks {
                locations.entry(c.digest).or_insert((i, c.offset, c.length));
            }
        }
        let index = Arc::new(VersionIndex { manifest: stored.manifest, source, locations });
        self.indexes.lock().unwrap_or_else(|e| e.into_inner()).insert(key, index.clone());
        Ok(index)
    }

    async fn assignments(db: &Arc<dyn MetaStore>, members: &Members, region: &str) -> Result<pb::Assignments, Status> {
        let (rollouts, regions) = blocking(db, |db| Ok((db.rollouts(None)?, db.regions()?))).await?;
        let budget = regions.iter().find(|r| r.name == region).map_or(0, |r| r.rate);
        let assignments = assignments_of(rollouts, region);
        Ok(pb::Assignments {
            assignments,
            budget_bytes_per_sec: budget,
            members: members.members(region),
            session: String::new(),
        })
    }
}

/// What `region` must hold, from every region's rollout rows: its versions, which of them it
/// serves (see [`active_versions`]) and which are Ready in it (ever: Ready stays Ready).
pub fn assignments_of(rollouts: Vec<RolloutRecord>, region: &str) -> Vec<pb::Assignment> {
    let active = active_versions(&rollouts);
    rollouts
        .into_iter()
        .filter(|r| r.region == region)
        .map(|r| pb::Assignment {
            active: active.contains(&(r.dataset.clone(), r.version, r.region.clone())),
            ready: r.ready_unix_ms.is_some(),
            dataset: r.dataset,
            version: r.version,
            total_bytes: r.total_bytes,
            root: r.root.0.to_vec(),
            mode: r.mode.to_string(),
        })
        .collect()
}

/// The (dataset, version, region) triples a region serves: per dataset and region, the newest
/// version that is *activated* (see [`activated_at`]) and became Ready in that region.
///
/// Activation is remembered, not recomputed from the phases of the moment: it follows from
/// when each row was added and first became Ready, which the store keeps. So a spoke that joins
/// a region later, a region added to the rollout later, or a source that changed after the
/// region held the version whole never takes back a version a region serves. A version that
/// failed (or is not Ready yet) in a region its rollout named never becomes active, so every
/// region stays on the version before it.
pub fn active_versions(rollouts: &[RolloutRecord]) -> HashSet<(String, u64, String)> {
    let mut rows: HashMap<(&str, u64), Vec<&RolloutRecord>> = HashMap::new();
    for r in rollouts {
        rows.entry((&r.dataset, r.version)).or_default().push(r);
    }
    let activated: HashSet<(&str, u64)> =
        rows.iter().filter(|(_, rows)| activated_at(rows).is_some()).map(|(k, _)| *k).collect();
    let mut newest: HashMap<(&str, &str), u64> = HashMap::new();
    for r in
        rollouts.iter().filter(|r| r.ready_unix_ms.is_some() && activated.contains(&(r.dataset.as_str(), r.version)))
    {
        let v = newest.entry((&r.dataset, &r.region)).or_insert(r.version);
        *v = (*v).max(r.version);
    }
    newest.into_iter().map(|((d, region), v)| (d.to_string(), v, region.to_string())).collect()
}

/// When a version (its rows, one per region) became active: the first moment at which every
/// region its rollout named by then had been Ready (the `all-ready` cut-over). `None` while
/// some region named is not Ready yet, or failed. Regions added after that moment do not take
/// it back; they serve the version once Ready themselves.
pub fn activated_at(rows: &[&RolloutRecord]) -> Option<i64> {
    let mut candidates: Vec<i64> = rows.iter().filter_map(|r| r.ready_unix_ms).collect();
    candidates.sort_unstable();
    candidates.into_iter().find(|&t| {
        rows.iter().filter(|r| r.added_unix_ms <= t).all(|r| r.ready_unix_ms.is_some_and(|ready| ready <= t))
    })
}

#[tonic::async_trait]
impl pb::spoke_server::Spoke for SpokeService {
    type WatchStream = AssignmentStream;

    #[instrument(skip_all, fields(region, node))]
    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let region = region_of(&request)?;
        let pb::WatchRequest { node, peer_address } = request.into_inner();
        Span::current().record("region", region.as_str()).record("node", node.as_str());
        aqueduct_proto::validate_name("node", &node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        let (db, live) = (self.db.clone(), self.live.clone());
        let membership = live.members.join(&region, &node, &peer_address).map_err(|e| {
            warn!(%peer_address, error = %e, "refused a watch: its node name is live already");
            Status::from(e)
        })?;
        // Only this watch's stream carries it.
        let session = membership.session().to_string();
        info!(%peer_address, "spoke joined its region");
        // The region's other spokes learn of the new member.
        live.changes.notify_waiters();
        tokio::spawn(
            async move {
                let mut last: Option<pb::Assignments> = None;
                loop {
                    // Register for the next change before reading, so that none is missed.
                    let notified = live.changes.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let current = Self::assignments(&db, &live.members, &region)
                        .await
                        .map(|a| pb::Assignments { session: session.clone(), ..a });
                    let send = match &current {
                        Ok(a) => last.as_ref() != Some(a),
                        Err(_) => true,
                    };
                    if send {
                        if let Ok(a) = &current {
                            last = Some(a.clone());
                        }
                        let failed = current.is_err();
                        if tx.send(current).await.is_err() || failed {
                            break;
                        }
                    }
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(WATCH_RECHECK) => {}
                        _ = tx.closed() => break,
                        // The spokes reconnect to the next hub and report again.
                        _ = live.stopping.cancelled() => return,
                    }
                }
                info!("spoke left its region");
                let changed = live.members.leave(membership);
                write_region_rows(&db, &region, changed).await;
                live.changes.notify_waiters();
            }
            .instrument(Span::current()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(region, dataset, version))]
    async fn get_manifest(&self, request: Request<pb::GetManifestRequest>) -> Result<Response<pb::Manifest>, Status> {
        let region = region_of(&request)?;
        let req = request.into_inner();
        Span::current()
            .record("region", region.as_str())
            .record("dataset", req.dataset.as_str())
            .record("version", req.version);
        self.authorize(&region, &req.dataset, req.version).await?;
        let index = self.index(&req.dataset, req.version).await?;
        // Cut by a hub without the bound: refused with the reason, not sent to fail below.
        index.manifest.check_size().map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::Manifest::from(&index.manifest)))
    }

    type FetchChunksStream = ChunkStream;

    #[instrument(skip_all, fields(region, dataset, version, chunks))]
    async fn fetch_chunks(
        &self,
        request: Request<pb::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        let region = region_of(&request)?;
        let req = request.into_inner();
        Span::current()
            .record("region", region.as_str())
            .record("dataset", req.dataset.as_str())
            .record("version", req.version)
            .record("chunks", req.digests.len());
        aqueduct_proto::check_digest_count(req.digests.len())?;
        let digests = req
            .digests
            .iter()
            .map(|d| {
                Digest::from_slice(d)
                    .ok_or_else(|| Status::invalid_argument(format!("a digest has {} bytes, not 32", d.len())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.authorize(&region, &req.dataset, req.version).await?;
        let index = self.index(&req.dataset, req.version).await?;
        let budget = self.budget(&region).await?;
        let limits = self.live.relay_limits.clone();
        // Held until the stream ends.
        let turn = limits.streams.enter(&region).await.map_err(|busy| {
            Status::resource_exhausted(format!(
                "region {region} has {} FetchChunks streams open at the hub, the most it may (limits.fetch_streams_per_region), and none ended within {:?}; try again shortly",
                busy.held, busy.waited
            ))
        })?;
        debug!(streams = limits.streams.held(&region), "stream turn taken");
        let (tx, rx) = mpsc::channel(2);
        let (db, ledger, dataset, version) = (self.db.clone(), self.live.ledger.clone(), req.dataset, req.version);
        let metrics = self.live.metrics.clone();
        // Each chunk's share of the region's relay memory, in the order the chunks are sent,
        // given back when the connection takes the chunk.
        let memory = Arc::new(Mutex::new(std::collections::VecDeque::<tokio::sync::OwnedSemaphorePermit>::new()));
        let (held_memory, stream_region, gone) = (memory.clone(), region.clone(), tx.clone());
        let mut relay = tokio::spawn(
            async move {
                // Counted as chunks are handed to the transport, recorded when the stream ends.
                let key = (dataset.clone(), version, region);
                let reads = futures::stream::iter(digests)
                    .map(|digest| {
                        let (index, limits, region) = (index.clone(), limits.clone(), stream_region.clone());
                        async move {
                            let &(file, offset, length) = index.locations.get(&digest).ok_or_else(|| {
                                Status::not_found(format!("chunk {digest} is not part of {}@v{}", index.manifest.dataset, index.manifest.version))
                            })?;
                            let held = limits.memory.wait_many(&region, (length as usize).div_ceil(1024)).await;
                            let object = &index.manifest.files[file].object;
                            let data = read_range(index.source.as_ref(), object, offset..offset + u64::from(length)).await?;
                            Ok::<_, Status>((digest, object.clone(), offset, data, held))
                        }
                    })
                    .buffered(2);
                tokio::pin!(reads);
                while let Some(read) = reads.next().await {
                    let (digest, object, offset, data, held) = match read {
                        Ok(read) => read,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    if Digest::of(&data) != digest {
                        let reason = format!(
                            "source changed: {object} at offset {offset} no longer holds chunk {}; snapshot the dataset again",
                            digest.short()
                        );
                        metrics.verification_failed(&dataset);
                        let (d, r) = (dataset.clone(), reason.clone());
                        // Regions that hold the version whole keep it; it fails where it is not.
                        match blocking(&db, move |db| db.fail_version(&d, version, &r, now_unix_ms())).await {
                            Ok(failed) => warn!(%reason, ?failed, "version failed in the regions where it was not whole"),
                            Err(e) => warn!(%reason, error = %e, "could not record the version's failure"),
                        }
                        let _ = tx.send(Err(Status::data_loss(reason))).await;
                        return;
                    }
                    budget.take(data.len()).await;
                    debug!(digest = %digest.short(), len = data.len(), "chunk relayed");
                    let len = data.len() as u64;
                    held_memory.lock().unwrap_or_else(|e| e.into_inner()).push_back(held);
                    if tx.send(Ok(pb::ChunkData { digest: digest.0.to_vec(), data })).await.is_err() {
                        return;
                    }
                    ledger.sent(&key, digest, len);
                    metrics.relayed(&key.2, &key.0, len);
                }
            }
            .instrument(Span::current()),
        );
        // The stream keeps its turn while it relays; a caller that goes away ends it at once
        // (its turn and memory given back), even while it waits for room or budget.
        tokio::spawn(
            async move {
                let _turn = turn;
                tokio::select! {
                    _ = &mut relay => debug!("stream ended"),
                    _ = gone.closed() => {
                        relay.abort();
                        debug!("the caller went away");
                    }
                }
            }
            .instrument(Span::current()),
        );
        let chunks = ReceiverStream::new(rx).map(move |chunk| {
            if chunk.is_ok() {
                memory.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            }
            chunk
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    #[instrument(skip_all, fields(region, node, dataset, version, phase))]
    async fn report_progress(&self, request: Request<pb::ProgressReport>) -> Result<Response<pb::ProgressAck>, Status> {
        let region = region_of(&request)?;
        let r = request.into_inner();
        Span::current()
            .record("region", region.as_str())
            .record("node", r.node.as_str())
            .record("dataset", r.dataset.as_str())
            .record("version", r.version)
            .record("phase", r.phase.as_str());
        if !["Pending", "Transferring", "Ready", "Failed"].contains(&r.phase.as_str()) {
            return Err(Status::invalid_argument(format!(
                "phase {:?} is not one of Pending, Transferring, Ready, Failed",
                r.phase
            )));
        }
        let report = NodeReport {
            phase: r.phase,
            cached_bytes: r.cached_bytes,
            reason: r.reason,
            rate: r.rate_bytes_per_sec,
            share: r.mode == "region",
            membership: r.membership,
        };
        let key = (r.dataset, r.version, region);
        // A report about a version that is not rolled out to the region is refused before it
        // is kept, and so is one that does not speak for its node's open watch.
        self.authorize(&key.2, &key.0, key.1).await?;
        let row = self.live.members.report(key.clone(), &r.node, Proof::Session(&r.session), report).map_err(|e| {
            warn!(error = %e, "refused a progress report");
            Status::from(e)
        })?;
        let Some(row) = row else {
            return Ok(Response::new(pb::ProgressAck {}));
        };
        let ready = row.phase == "Ready";
        if ready {
            self.live.ledger.settle(&key);
        }
        write_region_row(&self.db, key, row).await?;
        if ready {
            // A version Ready everywhere becomes active: tell the watches.
            self.live.changes.notify_waiters();
        }
        Ok(Response::new(pb::ProgressAck {}))
    }

    #[instrument(skip_all, fields(region, node))]
    async fn report_cache(&self, request: Request<pb::CacheReport>) -> Result<Response<pb::ProgressAck>, Status> {
        let region = region_of(&request)?;
        let mut report = request.into_inner();
        Span::current().record("region", region.as_str()).record("node", report.node.as_str());
        let session = std::mem::take(&mut report.session);
        self.live.members.report_cache(&region, Proof::Session(&session), report).map_err(|e| {
            warn!(error = %e, "refused a cache report");
            Status::from(e)
        })?;
        Ok(Response::new(pb::ProgressAck {}))
    }
}

/// Writes a region's row, folded from its members' reports.
async fn write_region_row(
    db: &Arc<dyn MetaStore>,
    key: (String, u64, String),
    row: RegionProgress,
) -> Result<(), Status> {
    let (dataset, version, region) = key;
    let update = RolloutUpdate {
        dataset,
        version,
        region,
        cached_bytes: row.cached_bytes,
        phase: row.phase,
        reason: row.reason,
        rate: row.rate,
        updated_unix_ms: now_unix_ms(),
    };
    blocking(db, move |db| db.update_rollout(&update)).await.map_err(|e| match e {
        crate::store::StoreError::NotFound { name, .. } => {
            Status::permission_denied(format!("{name} is not a rollout"))
        }
        other => other.into(),
    })
}

/// Writes the rows that changed when a member left; failures are logged.
async fn write_region_rows(db: &Arc<dyn MetaStore>, region: &str, rows: Vec<((String, u64, String), RegionProgress)>) {
    for (key, row) in rows {
        if let Err(e) = write_region_row(db, key, row).await {
            warn!(region, error = %e.message(), "could not update the region's progress");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row added at 0 and, if `phase` is Ready, Ready since 1.
    fn row(dataset: &str, version: u64, region: &str, phase: &str) -> RolloutRecord {
        RolloutRecord {
            added_unix_ms: 0,
            ready_unix_ms: (phase == "Ready").then_some(1),
            dataset: dataset.into(),
            version,
            region: region.into(),
            phase: phase.into(),
            total_bytes: 0,
            cached_bytes: 0,
            reason: String::new(),
            rate: 0,
            budget: 0,
            updated_unix_ms: 0,
            mode: Default::default(),
            relayed_bytes: 0,
            root: Digest([0; 32]),
        }
    }

    #[test]
    fn a_changed_rate_applies_to_the_budget_streams_already_hold() {
        let budgets = Budgets::default();
        assert_eq!(budgets.rate("eu"), None);
        let held = budgets.set("eu", 1 << 20);
        assert_eq!((held.rate(), budgets.rate("eu")), (1 << 20, Some(1 << 20)));
        // The admin API sets the new rate: the budget a stream holds follows, no re-read.
        let again = budgets.set("eu", 8 << 20);
        assert!(Arc::ptr_eq(&held, &again), "one budget per region");
        assert_eq!(held.rate(), 8 << 20);
        assert!(budgets.fresh("eu").is_some());
    }

    #[test]
    fn a_version_is_active_once_ready_in_every_region_of_its_rollout() {
        let active = |rows: &[RolloutRecord]| {
            let mut a: Vec<_> = active_versions(rows).into_iter().collect();
            a.sort();
            a
        };
        let t = |d: &str, v, r: &str| (d.to_string(), v, r.to_string());
        let mut rows = vec![row("m", 1, "eu", "Ready"), row("m", 1, "us", "Transferring")];
        assert!(active(&rows).is_empty(), "active before every region was ready");
        rows[1] = row("m", 1, "us", "Ready");
        assert_eq!(active(&rows), [t("m", 1, "eu"), t("m", 1, "us")]);
        // v2 ready in one region only: both stay on v1, in one step later.
        rows.extend([row("m", 2, "eu", "Ready"), row("m", 2, "us", "Transferring"), row("x", 4, "eu", "Ready")]);
        assert_eq!(active(&rows), [t("m", 1, "eu"), t("m", 1, "us"), t("x", 4, "eu")]);
        rows[3] = row("m", 2, "us", "Ready");
        assert_eq!(active(&rows), [t("m", 2, "eu"), t("m", 2, "us"), t("x", 4, "eu")]);
        // A failed v3 never becomes active anywhere.
        rows.extend([row("m", 3, "eu", "Ready"), row("m", 3, "us", "Failed")]);
        assert_eq!(active(&rows)[..2], [t("m", 2, "eu"), t("m", 2, "us")]);
    }

    #[test]
    fn a_version_is_ready_in_a_region_before_it_is_active_everywhere() {
        let rows = vec![row("m", 1, "eu", "Ready"), row("m", 1, "us", "Transferring"), row("m", 2, "eu", "Pending")];
        let flags = |region: &str| {
            assignments_of(rows.clone(), region).iter().map(|a| (a.version, a.ready, a.active)).collect::<Vec<_>>()
        };
        assert_eq!(flags("eu"), [(1, true, false), (2, false, false)], "Ready in eu waits for no other region");
        assert_eq!(flags("us"), [(1, false, false)]);
        let mut all = rows.clone();
        all[1] = row("m", 1, "us", "Ready");
        let eu: Vec<_> = assignments_of(all, "eu").iter().map(|a| (a.version, a.ready, a.active)).collect();
        assert_eq!(eu, [(1, true, true), (2, false, false)]);
    }

    /// A row with its times: added at `added`, Ready since `ready`, in `phase` now.
    fn timed(version: u64, region: &str, phase: &str, added: i64, ready: Option<i64>) -> RolloutRecord {
        RolloutRecord { added_unix_ms: added, ready_unix_ms: ready, ..row("m", version, region, phase) }
    }

    /// Activation is remembered: a region added to the rollout later, a spoke that joined (the
    /// row's phase moved on) or a version that failed later where it was not whole do not
    /// take back what a region serves; the late region serves it once Ready itself.
    #[test]
    fn activation_is_remembered_not_recomputed() {
        let active = |rows: &[RolloutRecord]| {
            let mut a: Vec<_> = active_versions(rows).into_iter().map(|(_, v, r)| (v, r)).collect();
            a.sort();
            a
        };
        let v = |version: u64, region: &str| (version, region.to_string());
        // v1 in eu and us, Ready in both by 20: active in both since 20.
        let mut rows = vec![timed(1, "eu", "Ready", 0, Some(10)), timed(1, "us", "Ready", 0, Some(20))];
        let refs: Vec<&RolloutRecord> = rows.iter().collect();
        assert_eq!(activated_at(&refs), Some(20));
        assert_eq!(active(&rows), [v(1, "eu"), v(1, "us")]);
        // ap is asked for v1 at 30 and fails (the source changed): eu and us keep serving v1.
        rows.push(timed(1, "ap", "Failed", 30, None));
        assert_eq!(active(&rows), [v(1, "eu"), v(1, "us")]);
        // v2 was Ready in eu at 40 and then eu's phase moved on (a late spoke's report): still
        // Ready since 40. us never got there and failed: v2 is active nowhere.
        rows.extend([timed(2, "eu", "Transferring", 35, Some(40)), timed(2, "us", "Failed", 35, None)]);
        assert_eq!(active(&rows), [v(1, "eu"), v(1, "us")], "a version failed in a region it named became active");
        // v3 for eu only, Ready at 60: active in eu; us was added at 70 and is Ready at 80.
        rows.extend([timed(3, "eu", "Ready", 50, Some(60)), timed(3, "us", "Transferring", 70, None)]);
        assert_eq!(active(&rows), [v(1, "us"), v(3, "eu")], "a region added later took the version back");
        rows.pop();
        rows.push(timed(3, "us", "Ready", 70, Some(80)));
        assert_eq!(active(&rows), [v(3, "eu"), v(3, "us")]);
        // A region added while the others were still on their way is waited for.
        let rows = [timed(4, "eu", "Ready", 0, Some(10)), timed(4, "us", "Ready", 5, Some(20))];
        let refs: Vec<&RolloutRecord> = rows.iter().collect();
        assert_eq!(activated_at(&refs), Some(20));
        let rows = [timed(4, "eu", "Ready", 0, Some(10)), timed(4, "us", "Pending", 5, None)];
        let refs: Vec<&RolloutRecord> = rows.iter().collect();
        assert_eq!(activated_at(&refs), None);
    }
}
