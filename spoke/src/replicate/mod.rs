//! Replication: make the local store hold every chunk of a version, fetching only what it
//! lacks, each chunk verified before it is kept, within the region's link budget. Each chunk
//! crosses the link once per region: this spoke fetches over the link only the chunks it owns
//! ([`crate::peers`]), and gets the others from their owners.
//!
//! The missing chunks are computed from the store itself, so a spoke restarted after a crash
//! (or a lost connection) resumes where it stopped: nothing verified is fetched twice. Before a
//! version is reported Ready every chunk this process did not store itself (those found in the
//! store when it started) is read back and checked; a corrupt one is removed and fetched again. Readers come first:
//! while a reader's on-demand fetch is in flight, replication waits before its next request
//! and its next chunk.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_core::budget::{Budget, Lane};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::{Digest, ReplicationMode};
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tonic::transport::Channel;
use tracing::{debug, info, instrument, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::origin::FetchError;
use crate::peers::Owner;
use crate::priority::Priority;
use crate::reader::{Pull, ReadThrough};
use crate::store::{CacheError, ChunkStore};
use aqueduct_proto::Phase;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("the hub refused or failed: {0}")]
    Hub(#[from] tonic::Status),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Fetch(FetchError),
    #[error("{0} chunks could be fetched neither from the region's peers nor over the link")]
    Stalled(usize),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("chunk store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ReplicationError {
    /// The status of a call to the hub that was lost under it or refused it
    /// ([`crate::origin::hub_lost`]): not a failure of the version, which the next session
    /// (with this hub or the next) resumes.
    pub fn lost_hub(&self) -> Option<&tonic::Status> {
        match self {
            ReplicationError::Hub(status) | ReplicationError::Catalog(CatalogError::HubLost { status, .. })
                if crate::origin::hub_lost(status) =>
            {
                Some(status)
            }
            _ => None,
        }
    }

    /// The reason shown in `aq status` after `Failed: `.
    pub fn reason(&self) -> String {
        match self {
            ReplicationError::Cache(CacheError::Full { .. }) => "cache full".to_string(),
            other => other.to_string(),
        }
    }
}

/// How a spoke pulls: streams in flight and chunks per request.
#[derive(Clone, Copy, Debug)]
pub struct PullOptions {
    pub streams: usize,
    pub chunks_per_request: usize,
}

/// Figures of one replication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub corrupt_refetched: u64,
    /// Bytes of the version this spoke holds (its share in region mode), as reported Ready.
    pub held_bytes: u64,
}

/// Where progress reports go: the hub. A report that cannot be sent is logged, not fatal.
#[async_trait]
pub trait Progress: Send + Sync {
    async fn report(&self, report: pb::ProgressReport);
}

#[async_trait]
impl Progress for SpokeClient<Channel> {
    async fn report(&self, report: pb::ProgressReport) {
        if let Err(e) = self.clone().report_progress(report).await {
            warn!(error = %e.message(), "could not report progress to the hub");
        }
    }
}

pub struct Replicator {
    /// Where progress reports go.
    pub progress: Arc<dyn Progress>,
    /// The session of this spoke's open watch, which its reports carry (the hub counts them for
    /// this watch only).
    pub session: String,
    /// Fetches chunks: from their owners in the region, or over the link as their owner.
    pub reader: Arc<ReadThrough>,
    pub catalog: Arc<Catalog>,
    /// Readers' on-demand fetches go first.
    pub priority: Arc<Priority>,
    pub options: PullOptions,
}

/// This spoke's part of a version, as one round of fetches works on it.
#[derive(Clone, Copy)]
struct Part<'a> {
    assignment: &'a pb::Assignment,
    /// How it is held (`every-node`, `region`).
    mode: ReplicationMode,
    /// The bytes of the version each chunk this spoke holds stands for.
    weight: &'a HashMap<Digest, u64>,
    /// The link budget its chunks over the link take from.
    budget: &'a Budget,
}

/// How often a round looks whether the region's members changed (then it ends, and the next
/// is planned with them).
const MEMBERSHIP_CHECK: Duration = Duration::from_millis(200);

/// Rounds in a row that may bring nothing (owners failing, membership changing) before the
/// version fails.
const STALLED_ROUNDS: u32 = 10;

impl Replicator {
    fn store(&self) -> &Arc<dyn ChunkStore> {
        self.reader.store()
    }

    /// Makes this spoke hold its part of the version: all of it (`every-node`), or the chunks
    /// it owns (`region`, among the first `replicas` owners of each). Reports where it stands
    /// as it goes, and Ready at the end.
    #[instrument(skip_all, fields(dataset = %assignment.dataset, version = assignment.version, %mode))]
    pub async fn replicate(
        &self,
        assignment: &pb::Assignment,
        budget: &Budget,
        mode: ReplicationMode,
        replicas: usize,
    ) -> Result<Outcome, ReplicationError> {
        let manifest = self.catalog.manifest(assignment).await?;
        // How many bytes of the version each distinct chunk this spoke holds stands for (it
        // may repeat); in region mode, divided among its holders so that the shares add up.
        let mut weight: HashMap<Digest, u64> = HashMap::new();
        for c in manifest.files.iter().flat_map(|f| &f.chunks) {
            *weight.entry(c.digest).or_default() += u64::from(c.length);
        }
        if mode == ReplicationMode::Region {
            let peers = self.reader.peers();
            let ring = peers.ring();
            weight.retain(|d, _| ring.holds(d, replicas));
            let replicas = replicas.clamp(1, ring.len().max(1)) as u64;
            weight.values_mut().for_each(|w| *w /= replicas);
        }
        let membership = self.reader.peers().membership();
        let report = |phase: Phase, cached: u64| pb::ProgressReport {
            membership: membership.clone(),
            session: self.session.clone(),
            ..progress_report(assignment, self.reader.peers().me(), mode, phase, cached, "", 0)
        };
        let total: u64 = weight.values().sum();
        let mut outcome = Outcome::default();
        // Chunks known good in this run: stored after a digest check, or read back and checked.
        let mut verified: HashSet<Digest> = HashSet::new();
        let (mut stalled, mut corrupt_rounds) = (0, 0);
        loop {
            let missing: Vec<(Digest, u32)> = manifest
                .distinct_chunks()
                .into_iter()
                .filter(|(d, _)| weight.contains_key(d) && !self.store().contains(d))
                .collect();
            let cached = total - missing.iter().map(|(d, _)| weight[d]).sum::<u64>();
            info!(missing = missing.len(), cached, total, "replicating");
            self.reader.metrics().progress(&assignment.dataset, assignment.version, cached, total, false);
            self.progress.report(report(Phase::Transferring, cached)).await;
            if !missing.is_empty() {
                let part = Part { assignment, mode, weight: &weight, budget };
                let planned = self.reader.peers().membership();
                let fetched = self.fetch(&part, &missing, cached, &mut outcome).await?;
                // An empty round is a stall only if nothing arrived by another way meanwhile
                // (a fetch this spoke made for a peer or a reader, still being stored when
                // this round looked; the store is looked at only then), and the round was not
                // cut short by a change of the region's members.
                let replanned = self.reader.peers().membership() != planned;
                if fetched.is_empty() && !replanned && !missing.iter().any(|(d, _)| self.store().contains(d)) {
                    stalled += 1;
                    if stalled >= STALLED_ROUNDS {
                        return Err(ReplicationError::Stalled(missing.len()));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    stalled = 0;
                }
                verified.extend(fetched);
                continue;
            }
            // Read back every chunk this run did not itself check (those that were already in
            // the store) before saying Ready; drop the ones that rotted.
            let store = self.store().clone();
            // Chunks this spoke stored itself since it started were checked on the way in
            // (those of the previous version a delta shares, typically): no read-back.
            let unchecked: Vec<Digest> =
                weight.keys().filter(|d| !verified.contains(d) && !store.known_good(d)).copied().collect();
            let (good, corrupt) = tokio::task::spawn_blocking(move || -> Result<_, CacheError> {
                let (mut good, mut corrupt) = (Vec::new(), Vec::new());
                for d in unchecked {
                    match store.get(&d) {
                        Ok(Some(_)) => good.push(d),
                        Ok(None) => corrupt.push(d),
                        Err(CacheError::Corrupt { .. }) => {
                            store.remove(&d)?;
                            corrupt.push(d);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok((good, corrupt))
            })
            .await??;
            verified.extend(good);
            if corrupt.is_empty() {
                self.progress.report(report(Phase::Ready, total)).await;
                self.reader.metrics().progress(&assignment.dataset, assignment.version, total, total, true);
                outcome.held_bytes = total;
                info!(?outcome, "version ready");
                return Ok(outcome);
            }
            warn!(corrupt = corrupt.len(), "chunks failed verification in the store; fetching them again");
            outcome.corrupt_refetched += corrupt.len() as u64;
            corrupt_rounds += 1;
            if corrupt_rounds >= 3 {
                return Err(ReplicationError::Cache(CacheError::Io {
                    path: "chunk store".into(),
                    source: std::io::Error::other("chunks keep failing verification after being fetched three times"),
                }));
            }
        }
    }

    /// Fetches `missing` once: the chunks this spoke owns over the link (or from a peer that
    /// holds them), the others from their owners. Returns what it stored; a chunk whose owner
    /// failed is left for the next round, when another owner is in line.
    async fn fetch(
        &self,
        part: &Part<'_>,
        missing: &[(Digest, u32)],
        cached: u64,
        outcome: &mut Outcome,
    ) -> Result<Vec<Digest>, ReplicationError> {
        let Part { assignment, mode, weight, budget } = *part;
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut cached = cached;
        let mut stored = Vec::new();
        let per_request = self.options.chunks_per_request.max(1);
        let mut mine = Vec::new();
        let mut theirs: HashMap<String, (pb::Member, Vec<Digest>)> = HashMap::new();
        let ring = self.reader.peers().ring();
        for (d, _) in missing {
            match ring.owner(d) {
                Owner::Me => mine.push(*d),
                Owner::Peer(m) => theirs.entry(m.node.clone()).or_insert_with(|| (m, Vec::new())).1.push(*d),
            }
        }
        // The futures are built up front (not by a closure inside the stream), which keeps the
        // whole future `Send` for any lifetime.
        // Planned for this membership: once it changes (a spoke joined, say the region's first
        // after a hub failover), no batch of the plan starts any more, and the round ends within
        // [`MEMBERSHIP_CHECK`] (what is in flight is dropped, what arrived is kept); the next is
        // planned with the new owners, so that two spokes do not both fetch a chunk over the
        // link as its owner.
        let planned = self.reader.peers().membership();
        let mut membership_check = tokio::time::interval(MEMBERSHIP_CHECK);
        let mut batches = Vec::new();
        for batch in mine.chunks(per_request) {
            let fetch = self.fetch_batch(assignment, batch.to_vec(), None, budget).boxed();
            batches.push(self.unless_changed(&planned, fetch));
        }
        for (member, digests) in theirs.values() {
            for batch in digests.chunks(per_request) {
                let fetch = self.fetch_batch(assignment, batch.to_vec(), Some(member.clone()), budget).boxed();
                batches.push(self.unless_changed(&planned, fetch));
            }
        }
        let mut results = futures::stream::iter(batches).buffer_unordered(self.options.streams.max(1));
        // Reports go out from a task of their own, in order: awaiting one here would stop
        // polling the fetch streams, whose unread data then fills the connection's
        // flow-control window, and the report's answer could never arrive. The task is awaited
        // at the end, so that no late "Transferring" lands after the "Ready" that follows.
        let (progress, mut reports) = tokio::sync::watch::channel(None::<pb::ProgressReport>);
        let sink = self.progress.clone();
        let reporter = tokio::spawn(async move {
            while reports.changed().await.is_ok() {
                let report = reports.borrow_and_update().clone();
                if let Some(report) = report {
                    sink.report(report).await;
                }
            }
        });
        let node = self.reader.peers().me().to_string();
        loop {
            let fetched = tokio::select! {
                next = results.try_next() => match next? {
                    Some(fetched) => fetched,
                    None => break,
                },
                _ = membership_check.tick() => {
                    if self.reader.peers().membership() != planned {
                        info!("the region's members changed: this round ends, the next is planned with them");
                        break;
                    }
                    continue;
                }
            };
            for (digest, len) in fetched {
                outcome.chunks_fetched += 1;
                outcome.bytes_fetched += len;
                cached += weight[&digest];
                stored.push(digest);
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let total = weight.values().sum();
                self.reader.metrics().progress(&assignment.dataset, assignment.version, cached, total, false);
                let rate = (outcome.bytes_fetched as f64 / started.elapsed().as_secs_f64()) as u64;
                let report = pb::ProgressReport {
                    membership: self.reader.peers().membership(),
                    session: self.session.clone(),
                    ..progress_report(assignment, &node, mode, Phase::Transferring, cached, "", rate)
                };
                let _ = progress.send(Some(report));
            }
        }
        // A round cut short drops what it still had in flight (its streams close).
        drop(results);
        drop(progress);
        let _ = reporter.await;
        Ok(stored)
    }

    /// `fetch`, unless the region's membership is no longer `planned` when it starts: then
    /// nothing (its chunks are planned again, with their new owners).
    fn unless_changed<'a>(
        &'a self,
        planned: &str,
        fetch: BoxFuture<'a, Result<Vec<(Digest, u64)>, ReplicationError>>,
    ) -> BoxFuture<'a, Result<Vec<(Digest, u64)>, ReplicationError>> {
        let planned = planned.to_string();
        async move {
            if self.reader.peers().membership() != planned {
                return Ok(Vec::new());
            }
            fetch.await
        }
        .boxed()
    }

    /// Fetches one batch, from its owner `from` or (None) as its owner; returns what it stored.
    /// An owner that fails costs nothing but the round: its chunks are planned again.
    #[instrument(level = "debug", skip_all, fields(from = from.as_ref().map_or("link", |m| m.node.as_str()), chunks = batch.len()))]
    async fn fetch_batch(
        &self,
        assignment: &pb::Assignment,
        batch: Vec<Digest>,
        from: Option<pb::Member>,
        budget: &Budget,
    ) -> Result<Vec<(Digest, u64)>, ReplicationError> {
        self.priority.background_turn().await;
        // A reader may have fetched some of them on demand since the batch was planned.
        let batch: Vec<Digest> = batch.into_iter().filter(|d| !self.store().contains(d)).collect();
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let pull = Pull {
            dataset: &assignment.dataset,
            version: assignment.version,
            budget: None,
            lane: self.lane_now(assignment),
            from_owner: false,
            urgent: false,
            wait_stored: true,
        };
        let pulled = match from {
            None => self.reader.over_link(&Pull { budget: Some(budget), ..pull }, &batch).await,
            Some(member) => {
                let owner = self.reader.origins().peer(&member);
                match self.reader.pull(owner.as_ref(), &Pull { from_owner: true, ..pull }, &batch).await {
                    Err(FetchError::Cache(e)) => return Err(e.into()),
                    Err(e) => {
                        debug!(error = %e, "an owner failed; its chunks wait for the next round");
                        return Ok(Vec::new());
                    }
                    ok => ok,
                }
            }
        };
        let pulled = pulled.map_err(|e| match e {
            FetchError::Hub(status) => ReplicationError::Hub(status),
            FetchError::Cache(e) => ReplicationError::Cache(e),
            other => ReplicationError::Fetch(other),
        })?;
        debug!(asked = batch.len(), got = pulled.got.len(), missing = pulled.missing.len(), "batch done");
        Ok(pulled.got.into_iter().map(|(d, data)| (d, data.len() as u64)).collect())
    }

    /// The lane the version draws in now: its class in the hub's latest assignments (a class
    /// raised while it replicates applies from the next batch).
    fn lane_now(&self, assignment: &pb::Assignment) -> Lane {
        let assignments = self.catalog.assignments();
        let current =
            assignments.assignments.iter().find(|a| a.dataset == assignment.dataset && a.version == assignment.version);
        lane_of(current.unwrap_or(assignment))
    }

    /// Tells the hub where this spoke stands; a failure to report is logged, not fatal.
    pub async fn report(
        &self,
        a: &pb::Assignment,
        mode: ReplicationMode,
        phase: Phase,
        cached: u64,
        reason: &str,
        rate: u64,
    ) {
        let report = pb::ProgressReport {
            membership: self.reader.peers().membership(),
            session: self.session.clone(),
            ..progress_report(a, self.reader.peers().me(), mode, phase, cached, reason, rate)
        };
        self.progress.report(report).await;
    }
}

/// The lane a version's chunks draw in from the spoke's budget: its rollout's class, so that
/// when versions replicate at once an urgent one's chunks pass first.
/// A class this build does not know draws as normal.
pub fn lane_of(assignment: &pb::Assignment) -> Lane {
    Lane::from(aqueduct_proto::domain::class::Class::from_wire(assignment.class).unwrap_or_default())
}

fn progress_report(
    a: &pb::Assignment,
    node: &str,
    mode: ReplicationMode,
    phase: Phase,
    cached: u64,
    reason: &str,
    rate: u64,
) -> pb::ProgressReport {
    pb::ProgressReport {
        node: node.to_string(),
        dataset: a.dataset.clone(),
        version: a.version,
        cached_bytes: cached,
        phase: phase.to_wire(),
        reason: reason.to_string(),
        rate_bytes_per_sec: rate,
        mode: mode.to_wire(),
        membership: String::new(),
        session: String::new(),
    }
}

#[cfg(test)]
mod tests;
