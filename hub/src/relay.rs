//! The spokes' API: work assignments, manifests and the chunk relay.
//!
//! A spoke proves its region and its node with its certificate and may read only versions
//! rolled out to that region; it watches and reports only as its certificate's node, and a
//! report counts only with the session of that node's open watch ([`crate::live::members`]). `FetchChunks` reads each asked chunk's byte range from the
//! source, checks its BLAKE3 against the version (a source that changed after the snapshot
//! fails the version in the regions where it is not whole yet, and no wrong byte is sent), and
//! streams it within the region's link budget, shared by every stream of the region, and
//! within the region's [`RelayLimits`]. Assignments are pushed on every rollout
//! change ([`crate::live::Changes`]) and re-checked every [`WATCH_RECHECK`]. The rules this
//! service applies (how reports fold into a region's row, which version a region serves, what
//! a changed source fails) are [`crate::rollout`]'s; what it keeps in memory is
//! [`crate::live`]'s.
//!
//! The file is some 730 lines long because it is the one `Spoke` service: its handlers share
//! the grants, indexes and per-region limits kept here, and splitting them would spread that
//! state over modules that reach into each other.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aqueduct_core::budget::{Budget, Lane};
use aqueduct_core::lru::Lru;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Manifest, Phase, ReplicationMode};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, debug, info, instrument, warn};

use crate::config::LimitsConfig;
use crate::enrol::Issuer;
use crate::error::invalid;
use crate::live::Live;
use crate::live::budgets::{Budgets, budget_at};
use crate::live::classes::{Classes, lane_of};
use crate::live::members::{Members, Proof};
use crate::live::reads::{ChunkAt, ReadFailure};
use crate::rollout::{NodeReport, RegionProgress, RolloutKey, VersionId, assignments_of};
use crate::signing::{Signer, signature_for};
use crate::snapshot::{blocking, now_unix_ms};
use crate::source::{HubFiles, ReadLimits, Source, SourceSpec};
use crate::store::{MetaStore, RolloutUpdate, StoreError};
use aqueduct_core::identity::Identity;
use aqueduct_core::server::revoke::{Revocations, list_to_pb};

/// How often a watch re-reads its region's assignments even without a change notice.
pub const WATCH_RECHECK: Duration = Duration::from_secs(30);

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
    /// Bytes (estimated) of versions' indexes kept: `limits.index_cache`.
    index_cache: u64,
}

impl RelayLimits {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            streams: aqueduct_core::server::KeyedLimit::new(limits.fetch_streams_per_region, limits.fetch_wait),
            memory: aqueduct_core::server::KeyedLimit::new(
                (limits.relay_memory_per_region.0 >> 10) as usize,
                limits.fetch_wait,
            ),
            index_cache: limits.index_cache.0,
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
        Self::new(&LimitsConfig::default())
    }
}

/// Where each chunk of a version is in its source.
struct VersionIndex {
    manifest: Manifest,
    source: Arc<dyn Source>,
    /// The source's name and how hard replication may read it.
    source_name: String,
    limits: ReadLimits,
    locations: HashMap<Digest, (usize, u64, u32)>,
}

impl VersionIndex {
    /// An estimate of the bytes it holds: each chunk's reference in the manifest and its entry
    /// in `locations` (about 200 bytes), each file's path and metadata.
    fn weight(&self) -> u64 {
        let files: u64 = self.manifest.files.iter().map(|f| 128 + f.path.len() as u64 + f.object.len() as u64).sum();
        files + 200 * self.locations.len() as u64
    }
}

pub struct SpokeService {
    db: Arc<dyn MetaStore>,
    live: Live,
    /// How much `FetchChunks` work each region may have at once.
    limits: Arc<RelayLimits>,
    /// Versions' indexes, least recently used first out past `limits.index_cache` (by
    /// [`VersionIndex::weight`]).
    indexes: Mutex<Lru<VersionId, Arc<VersionIndex>>>,
    /// Rows found rolled out, as of a count of withdrawals ([`Live::withdraw`]): checked
    /// again after one.
    granted: Mutex<(u64, HashSet<RolloutKey>)>,
    /// The hub's own files: no source read may reach them, whatever a link says.
    hub_files: HubFiles,
    /// Renews nodes' certificates.
    issuer: Arc<Issuer>,
    /// Signs a version served before it was signed (see [`crate::signing`]).
    signer: Arc<Signer>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;
type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::Assignments, Status>> + Send>>;

/// The caller's region and node, from its certificate.
fn node_of<T>(request: &Request<T>) -> Result<(String, String), Status> {
    match Identity::of_request(request)? {
        Identity::Node { region, node } => Ok((region, node)),
        other => Err(Status::permission_denied(format!(
            "this call is for spokes (a node's certificate); the caller is {other}"
        ))),
    }
}

/// The caller's region, from its certificate.
fn region_of<T>(request: &Request<T>) -> Result<String, Status> {
    node_of(request).map(|(region, _)| region)
}

/// `now` as a message to a watch (of `session`) that was sent `before`: its members as what
/// changed since. Every field is named, so that one the message gains is not forgotten here,
/// and the member list is not copied to be dropped.
fn with_member_delta(before: &pb::Assignments, now: &pb::Assignments, session: &str) -> pb::Assignments {
    let (members_joined, members_left) = aqueduct_proto::domain::members::delta(&before.members, &now.members);
    pb::Assignments {
        assignments: now.assignments.clone(),
        budget_bytes_per_sec: now.budget_bytes_per_sec,
        members: Vec::new(),
        session: session.to_string(),
        tags: now.tags.clone(),
        revocations: now.revocations.clone(),
        budget_next_change_unix_ms: now.budget_next_change_unix_ms,
        members_delta: true,
        members_joined,
        members_left,
    }
}

/// Until when a region's view holds: its budget's next window, or [`WATCH_RECHECK`] from now.
fn view_until(view: &Result<pb::Assignments, Status>) -> Instant {
    let now = Instant::now();
    let next = view.as_ref().map_or(0, |a| a.budget_next_change_unix_ms);
    let recheck = now + WATCH_RECHECK;
    if next == 0 {
        return recheck;
    }
    let left = (next - jiff::Timestamp::now().as_millisecond()).max(0) as u64;
    recheck.min(now + Duration::from_millis(left))
}

/// Fails unless `named` (the node a call says it is for) is the certificate's node.
fn same_node(region: &str, certified: &str, named: &str) -> Result<(), Status> {
    if named == certified {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "this call names node {named:?}, but the caller's certificate is node {certified:?}'s of region {region}: \
         a spoke watches and reports only as its own node (its `node` must be the one it enrolled as); nothing changed"
    )))
}

impl SpokeService {
    pub fn new(
        db: Arc<dyn MetaStore>,
        live: Live,
        limits: RelayLimits,
        hub_files: HubFiles,
        issuer: Arc<Issuer>,
        signer: Arc<Signer>,
    ) -> Self {
        Self {
            db,
            live,
            indexes: Mutex::new(Lru::new(limits.index_cache)),
            limits: Arc::new(limits),
            granted: Mutex::default(),
            hub_files,
            issuer,
            signer,
        }
    }

    /// Fails unless the key's version is rolled out to its region.
    async fn authorize(&self, key: &RolloutKey) -> Result<(), Status> {
        let epoch = self.live.withdrawn.load(Ordering::Acquire);
        {
            let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
            if granted.0 != epoch {
                *granted = (epoch, HashSet::new());
                let mut indexes = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
                while indexes.pop_oldest().is_some() {}
            }
            if granted.1.contains(key) {
                return Ok(());
            }
        }
        let owned = key.dataset.clone();
        let rollouts = blocking(&self.db, move |db| db.rollouts(Some(&owned))).await?;
        if rollouts.iter().any(|r| r.version == key.version && r.region == key.region) {
            let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
            if granted.0 == epoch {
                granted.1.insert(key.clone());
            }
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{}@v{} is not rolled out to region {}",
                key.dataset, key.version, key.region
            )))
        }
    }

    /// The region's budget (see [`region_budget`]).
    async fn budget(&self, region: &str) -> Result<Arc<Budget>, Status> {
        region_budget(&self.db, &self.live.budgets, region).await
    }

    async fn index(&self, key: &VersionId) -> Result<Arc<VersionIndex>, Status> {
        if let Some(index) = self.indexes.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(index.clone());
        }
        let (dataset, version) = (key.dataset.as_str(), key.version);
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
        let source_name = source.name.clone();
        let spec = SourceSpec::parse(&source.url, source.options)?;
        let limits = spec.limits;
        let source = spec.open_guarded(&self.hub_files)?;
        let mut locations = HashMap::new();
        for (i, file) in stored.manifest.files.iter().enumerate() {
            for c in &file.chunks {
                locations.entry(c.digest).or_insert((i, c.offset, c.length));
            }
        }
        let index = Arc::new(VersionIndex { manifest: stored.manifest, source, source_name, limits, locations });
        let weight = index.weight();
        self.indexes.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), index.clone(), weight);
        Ok(index)
    }

    /// What `region` must hold now; refused once the region was removed (its credentials
    /// no longer work: the watch ends).
    async fn assignments(
        db: &Arc<dyn MetaStore>,
        members: &Arc<Members>,
        revocations: &Revocations,
        region: &str,
        hub: Option<&str>,
    ) -> Result<pb::Assignments, Status> {
        let (owned, live, me) = (region.to_string(), members.clone(), hub.map(str::to_string));
        let (rollouts, regions, serving, tags, retention) = blocking(db, move |db| {
            let rollouts = db.rollouts(None)?;
            let others = match me {
                Some(me) => db.shared_in_use(&me, crate::live::regions::IN_USE_FRESH_MS)?,
                None => Vec::new(),
            };
            let in_use = crate::live::regions::in_use_of_all(live.in_use(&rollouts), others, &rollouts);
            let retention = db.retention(&in_use)?;
            let datasets: HashSet<&str> =
                rollouts.iter().filter(|r| r.region == owned).map(|r| r.dataset.as_str()).collect();
            let tags: Vec<_> = db.tags(None)?.into_iter().filter(|t| datasets.contains(t.dataset.as_str())).collect();
            Ok((rollouts.clone(), db.regions()?, db.serving(None)?, tags, retention))
        })
        .await?;
        let Some(budget) = regions.iter().find(|r| r.name == region).map(|r| budget_at(r, jiff::Timestamp::now()))
        else {
            return Err(Status::permission_denied(format!(
                "region {region} was removed from the hub: its credentials no longer work"
            )));
        };
        let retained: HashSet<VersionId> =
            retention.into_iter().filter(|(_, why)| !why.is_empty()).map(|(id, _)| id).collect();
        Ok(pb::Assignments {
            assignments: assignments_of(rollouts, &serving, &retained, region),
            budget_bytes_per_sec: budget.rate,
            budget_next_change_unix_ms: budget.next.map_or(0, |(at, _)| at.as_millisecond()),
            members: members.members(region),
            session: String::new(),
            tags: tags.iter().map(|t| t.to_pb()).collect(),
            // What concerns the region's certificates (bounded: see `store::trust`).
            revocations: Some(list_to_pb(&revocations.current().scoped(&Identity::region_uri(region)))),
            // The whole list: deltas are per watch (see `with_member_delta`).
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl pb::spoke_server::Spoke for SpokeService {
    type WatchStream = AssignmentStream;

    #[instrument(skip_all, fields(region, node))]
    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (region, certified) = node_of(&request)?;
        let pb::WatchRequest { node, peer_address, member_deltas } = request.into_inner();
        // Empty: the certificate's node.
        let node = if node.is_empty() { certified.clone() } else { node };
        Span::current().record("region", region.as_str()).record("node", node.as_str());
        aqueduct_proto::validate_name("node", &node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        same_node(&region, &certified, &node).inspect_err(|e| warn!(error = %e.message(), "refused a watch"))?;
        // Another hub of the database may serve the region: the spoke tries its next address.
        let lost =
            self.live.regions.serve(&region).await.inspect_err(|e| info!(error = %e.message(), "refused a watch"))?;
        let (tx, rx) = mpsc::channel(4);
        let (db, live) = (self.db.clone(), self.live.clone());
        let membership = live.members.join(&region, &node, &peer_address).map_err(|e| {
            warn!(%peer_address, error = %e, "refused a watch: its node name is live already");
            Status::from(e)
        })?;
        // Only this watch's stream carries it.
        let session = membership.session().to_string();
        info!(%peer_address, "spoke joined its region");
        // The region's other spokes learn of the new member (the other regions' do not wake).
        live.changes.notify_region(&region);
        tokio::spawn(
            async move {
                // What this watch last sent, as the region's shared view (not a copy).
                let mut last: Option<Arc<pb::Assignments>> = None;
                loop {
                    // Register for the next change before reading, so that none is missed.
                    let changes = live.changes.clone();
                    let notified = changes.changed(&region);
                    tokio::pin!(notified);
                    // Polled once: registered for both notices from here on.
                    let _ = futures::poll!(notified.as_mut());
                    let epoch = live.changes.epoch(&region);
                    let current = live
                        .views
                        .get(&region, epoch, || async {
                            let view = Self::assignments(&db, &live.members, &live.revocations, &region, live.regions.holder()).await;
                            let until = view_until(&view);
                            (view, until)
                        })
                        .await;
                    let send = match &current {
                        Ok(a) => last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, a) && l != a),
                        Err(_) => true,
                    };
                    if send {
                        // After the first message, a spoke that asked gets who joined and left.
                        let outgoing = match (&current, &last) {
                            (Ok(now), Some(before)) if member_deltas => Ok(with_member_delta(before, now, &session)),
                            (Ok(now), _) => Ok(pb::Assignments { session: session.clone(), ..(**now).clone() }),
                            (Err(e), _) => Err(e.clone()),
                        };
                        if let Ok(a) = current {
                            last = Some(a);
                        }
                        let failed = outgoing.is_err();
                        if tx.send(outgoing).await.is_err() || failed {
                            break;
                        }
                    }
                    // Woken at the budget's next window too, to send the new budget.
                    let next_change = last.as_ref().map_or(0, |a| a.budget_next_change_unix_ms);
                    let wait = match next_change {
                        0 => WATCH_RECHECK,
                        at => Duration::from_millis((at - jiff::Timestamp::now().as_millisecond()).max(0) as u64)
                            .min(WATCH_RECHECK),
                    };
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => break,
                        // Another hub took the region (this one could not renew its lease):
                        // the spoke reconnects, to it.
                        _ = lost.cancelled() => {
                            let gone = Status::unavailable(format!("this hub no longer serves region {region}: reconnect"));
                            let _ = tx.send(Err(gone)).await;
                            break;
                        }
                        // The spokes reconnect to the next hub and report again.
                        _ = live.stopping.cancelled() => return,
                    }
                }
                info!("spoke left its region");
                let changed = live.members.leave(membership);
                // Rows rewritten may move what other regions serve (a cut-over): then every
                // watch looks; otherwise only the region's.
                if changed.is_empty() {
                    live.changes.notify_region(&region);
                } else {
                    write_region_rows(&db, &region, changed).await;
                    live.changes.notify_waiters();
                }
                live.views.forget(&region);
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
        self.live.regions.serve(&region).await?;
        let key = RolloutKey::new(req.dataset, req.version, region);
        self.authorize(&key).await?;
        let index = self.index(&VersionId::new(key.dataset, key.version)).await?;
        // Cut by a hub without the bound: refused with the reason, not sent to fail below.
        index.manifest.check_size().map_err(|e| Status::failed_precondition(e.to_string()))?;
        let m = &index.manifest;
        let signature = signature_for(&self.db, &self.signer, &m.dataset, m.version, m.root).await?;
        let mut wire = pb::Manifest::from(m);
        wire.signature = Some(pb::VersionSignature::from(&signature));
        Ok(Response::new(wire))
    }

    type FetchChunksStream = ChunkStream;

    #[instrument(skip_all, fields(region, dataset, version, chunks, foreground))]
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
            .record("chunks", req.digests.len())
            .record("foreground", req.foreground);
        let foreground = req.foreground;
        aqueduct_proto::check_digest_count(req.digests.len())?;
        let digests = req
            .digests
            .iter()
            .map(|d| {
                Digest::from_slice(d)
                    .ok_or_else(|| Status::invalid_argument(format!("a digest has {} bytes, not 32", d.len())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The region's budget is held by the one hub that serves it.
        self.live.regions.serve(&region).await?;
        let key = RolloutKey::new(req.dataset, req.version, region);
        self.authorize(&key).await?;
        let index = self.index(&VersionId::new(key.dataset.clone(), key.version)).await?;
        let region = key.region.clone();
        let budget = self.budget(&region).await?;
        let limits = self.limits.clone();
        // Held until the stream ends.
        let turn = limits.streams.enter(&region).await.map_err(|busy| {
            Status::resource_exhausted(format!(
                "region {region} has {} FetchChunks streams open at the hub, the most it may (limits.fetch_streams_per_region), and none ended within {:?}; try again shortly",
                busy.held, busy.waited
            ))
        })?;
        debug!(streams = limits.streams.held(&region), "stream turn taken");
        let (tx, rx) = mpsc::channel(2);
        let (db, ledger) = (self.db.clone(), self.live.ledger.clone());
        let (metrics, source_reads) = (self.live.metrics.clone(), self.live.reads.clone());
        let (classes, budgets) = (self.live.classes.clone(), self.live.budgets.clone());
        // Each chunk's share of the region's relay memory, in the order the chunks are sent,
        // given back when the connection takes the chunk.
        let memory = Arc::new(Mutex::new(std::collections::VecDeque::<tokio::sync::OwnedSemaphorePermit>::new()));
        let (held_memory, stream_region, gone) = (memory.clone(), region.clone(), tx.clone());
        let mut relay = tokio::spawn(
            async move {
                // Each chunk counts for the key's row (ledger, metrics) as it is handed to the
                // transport.
                let reads = futures::stream::iter(digests)
                    .map(|digest| {
                        let (index, limits, region) = (index.clone(), limits.clone(), stream_region.clone());
                        let reads = source_reads.clone();
                        async move {
                            let &(file, offset, length) = index.locations.get(&digest).ok_or_else(|| {
                                Status::not_found(format!("chunk {digest} is not part of {}@v{}", index.manifest.dataset, index.manifest.version))
                            })?;
                            let held = limits.memory.wait_many(&region, (length as usize).div_ceil(1024)).await;
                            let object = index.manifest.files[file].object.clone();
                            let at = ChunkAt {
                                source: index.source.clone(),
                                source_name: index.source_name.clone(),
                                object: object.clone(),
                                offset,
                                length,
                            };
                            let data = reads.read(digest, at, index.limits).await;
                            Ok::<_, Status>((digest, object, offset, data, held))
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
                    let data = match data {
                        Ok(data) => data,
                        Err(ReadFailure::Source(code, message)) => {
                            let _ = tx.send(Err(Status::new(code, message))).await;
                            return;
                        }
                        Err(ReadFailure::Changed) => Bytes::new(),
                    };
                    if data.is_empty() {
                        let reason = format!(
                            "source changed: {object} at offset {offset} no longer holds chunk {}; snapshot the dataset again",
                            digest.short()
                        );
                        metrics.verification_failed(&key.dataset);
                        let (version, r) = (VersionId::new(key.dataset.clone(), key.version), reason.clone());
                        // Regions that hold the version whole keep it; it fails where it is not.
                        match blocking(&db, move |db| db.fail_version(&version, &r, now_unix_ms())).await {
                            Ok(failed) => warn!(%reason, ?failed, "version failed in the regions where it was not whole"),
                            Err(e) => warn!(%reason, error = %e, "could not record the version's failure"),
                        }
                        let _ = tx.send(Err(Status::data_loss(reason))).await;
                        return;
                    }
                    // The rate read again once stale (a schedule's window that changed while the
                    // stream runs): the region's one budget follows.
                    if budgets.fresh(&key.region).is_none()
                        && let Err(e) = region_budget(&db, &budgets, &key.region).await
                    {
                        debug!(error = %e.message(), "could not read the region's budget again; the last rate holds");
                    }
                    // A pod's read first, then the rollout's class (read again as it changes).
                    let lane = if foreground { Lane::Foreground } else { lane_now(&db, &classes, &key).await };
                    budget.take_in(lane, data.len()).await;
                    debug!(digest = %digest.short(), len = data.len(), lane = lane.name(), "chunk relayed");
                    let len = data.len() as u64;
                    held_memory.lock().unwrap_or_else(|e| e.into_inner()).push_back(held);
                    if tx.send(Ok(pb::ChunkData { digest: digest.0.to_vec(), data: data.to_vec() })).await.is_err() {
                        return;
                    }
                    ledger.sent(&key, digest, len);
                    metrics.relayed(&key.region, &key.dataset, len);
                    metrics.relayed_in(&key.region, lane, len);
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
        let (region, certified) = node_of(&request)?;
        let r = request.into_inner();
        Span::current()
            .record("region", region.as_str())
            .record("node", r.node.as_str())
            .record("dataset", r.dataset.as_str())
            .record("version", r.version);
        same_node(&region, &certified, &r.node).inspect_err(|e| warn!(error = %e.message(), "refused a report"))?;
        let phase = Phase::from_wire(r.phase).map_err(invalid)?;
        Span::current().record("phase", phase.as_str());
        self.live.regions.serve(&region).await?;
        let report = NodeReport {
            phase,
            cached_bytes: r.cached_bytes,
            reason: r.reason,
            rate: r.rate_bytes_per_sec,
            // A mode this hub does not know holds no share, as an unknown text did.
            share: ReplicationMode::from_wire(r.mode) == Ok(ReplicationMode::Region),
            membership: r.membership,
        };
        let key = RolloutKey::new(r.dataset, r.version, region);
        // A report about a version that is not rolled out to the region is refused before it
        // is kept, and so is one that does not speak for its node's open watch.
        self.authorize(&key).await?;
        let row = self.live.members.report(key.clone(), &r.node, Proof::Session(&r.session), report).map_err(|e| {
            warn!(error = %e, "refused a progress report");
            Status::from(e)
        })?;
        let Some(row) = row else {
            return Ok(Response::new(pb::ProgressAck {}));
        };
        let ready = row.phase == Phase::Ready;
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
        let (region, certified) = node_of(&request)?;
        let mut report = request.into_inner();
        Span::current().record("region", region.as_str()).record("node", report.node.as_str());
        same_node(&region, &certified, &report.node)
            .inspect_err(|e| warn!(error = %e.message(), "refused a cache report"))?;
        let session = std::mem::take(&mut report.session);
        self.live.regions.serve(&region).await?;
        crate::rollout::retention::check_in_use(&report.in_use).map_err(|e| {
            warn!(error = %e, "refused a cache report");
            Status::invalid_argument(format!("{e}; nothing changed"))
        })?;
        self.live.members.report_cache(&region, Proof::Session(&session), report).map_err(|e| {
            warn!(error = %e, "refused a cache report");
            Status::from(e)
        })?;
        Ok(Response::new(pb::ProgressAck {}))
    }

    #[instrument(skip_all, fields(region, node))]
    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::NodeCertificate>, Status> {
        let (region, node) = node_of(&request)?;
        Span::current().record("region", region.as_str()).record("node", node.as_str());
        // A removed region's spokes get no new certificate.
        let known = blocking(&self.db, |db| db.regions()).await?.iter().any(|r| r.name == region);
        if !known {
            return Err(Status::permission_denied(format!(
                "region {region} was removed from the hub: its spokes' certificates are not renewed"
            )));
        }
        let csr = request.into_inner().csr_der;
        Ok(Response::new(self.issuer.renew(&region, &node, &csr)?))
    }
}

/// Writes a region's row, folded from its members' reports.
async fn write_region_row(db: &Arc<dyn MetaStore>, key: RolloutKey, progress: RegionProgress) -> Result<(), Status> {
    let update = RolloutUpdate { key, progress, updated_unix_ms: now_unix_ms() };
    blocking(db, move |db| db.update_rollout(&update)).await.map_err(|e| match e {
        StoreError::NotFound { name, .. } => Status::permission_denied(format!("{name} is not a rollout")),
        other => other.into(),
    })
}

/// Writes the rows that changed when a member left; failures are logged.
async fn write_region_rows(db: &Arc<dyn MetaStore>, region: &str, rows: Vec<(RolloutKey, RegionProgress)>) {
    for (key, row) in rows {
        if let Err(e) = write_region_row(db, key, row).await {
            warn!(region, error = %e.message(), "could not update the region's progress");
        }
    }
}

/// The lane `key`'s transfers draw in now: its rollout's class, as [`Classes`] last read it or
/// read again from the database. A rollout that cannot be read draws as normal.
async fn lane_now(db: &Arc<dyn MetaStore>, classes: &Classes, key: &RolloutKey) -> Lane {
    if let Some(lane) = classes.fresh(key) {
        return lane;
    }
    let dataset = key.dataset.clone();
    let lane = match blocking(db, move |db| db.rollouts(Some(&dataset))).await {
        Ok(rows) => {
            rows.iter().find(|r| r.version == key.version && r.region == key.region).map_or(Lane::Normal, lane_of)
        }
        Err(e) => {
            warn!(error = %e, "could not read the rollout's class; relaying as normal");
            Lane::Normal
        }
    };
    classes.set(key, lane);
    lane
}

/// The region's budget; its rate is read again every
/// [`crate::live::budgets::BUDGET_RECHECK`] and at its schedule's next change, by new streams
/// and by the chunks of running ones (the admin API sets a changed rate at once, see
/// [`Budgets::set`]).
async fn region_budget(db: &Arc<dyn MetaStore>, budgets: &Budgets, region: &str) -> Result<Arc<Budget>, Status> {
    if let Some(budget) = budgets.fresh(region) {
        return Ok(budget);
    }
    let regions = blocking(db, |db| db.regions()).await?;
    let record = regions
        .iter()
        .find(|r| r.name == region)
        .ok_or_else(|| Status::permission_denied(format!("region {region} is not known to this hub")))?;
    let now = jiff::Timestamp::now();
    let budget = budget_at(record, now);
    let until = budget.next.map(|(at, _)| at.duration_since(now).unsigned_abs());
    debug!(region, rate = budget.rate, ?until, "the region's budget read again");
    Ok(budgets.set(region, budget.rate, until))
}
