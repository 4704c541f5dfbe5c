//! The replication controller: makes this spoke hold what the hub assigns its region, in the
//! manner of a Kubernetes controller. Each pass observes (the hub's assignments, the region's
//! membership, the versions AqueductVolumes hold and mounts here use, the cache's room), asks
//! the pure [`plan`] what to do, and does it: pins, replicates ([`crate::replicate`]),
//! reports, and deletes what the hub no longer assigns ([`retention`] decides, [`keep`] does);
//! the results are recorded in [`plan::Memory`] for the next pass. A pass runs when the hub
//! sends assignments, when a volume, a mount or a sidecar uses another version, every
//! [`IN_USE_EVERY`], and when a failed version is due again.
//!
//! It connects to the hub with the region's credentials and watches for assignments (a server
//! stream, reconnected with [`Backoff::HUB`]: jittered, so that a hub restart does not bring
//! every spoke back on the same tick). The watch is read by a task of its own
//! ([`follow_watch`]), so that the region's membership and the link budget are current even
//! while a version replicates; the cache is reported every few seconds ([`report_cache`]).
//!
//! The hub gives each watch a session token; the spoke's progress and cache reports carry it,
//! so that they count for this spoke's own watch and no other. A node name is one live watch's
//! at a time: while the hub still holds an earlier watch of this name (a restart before the hub
//! noticed the old connection close), the watch is refused and retried soon.
//!
//! The file is some 640 lines long, a third of them its tests of the whole session against a
//! hub in the test's process; the pure decisions are in its submodules.

pub mod keep;
pub mod plan;
pub mod retention;
pub mod running;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_core::budget::Budget;
use aqueduct_proto::Phase;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use self::plan::{Memory, Observed, Plan, Step, VersionKey};
use self::running::{Done, Running};
use crate::cache::TieredStore;
use crate::catalog::Catalog;
use crate::config::SpokeConfig;
use crate::csi::node::Node;
use crate::health::HubLink;
use crate::in_use::{InUse, Sidecars};
use crate::mounts::Mounts;
use crate::operator::region::{Holds, ReadyVersions};
use crate::peers::Peers;
use crate::priority::Priority;
use crate::reader::ReadThrough;
use crate::replicate::{PullOptions, Replicator};
use crate::retry::{Backoff, Retry};

/// How often to say in the log that the hub cannot be reached.
const COMPLAIN_EVERY: Duration = Duration::from_secs(30);
/// How long to wait at most before asking again for a node name the hub says is live: an
/// earlier watch of this spoke (before a restart) is gone within about 10 s of keepalive.
const NAME_RETRY_MAX: Duration = Duration::from_secs(4);
/// How often the spoke tells the hub how its cache is doing.
const CACHE_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How often a pass runs at the latest, to see what is in use (sidecars' leases end).
const IN_USE_EVERY: Duration = Duration::from_secs(15);

/// What the controller works with.
pub struct Parts {
    /// Where this spoke serves its peers (empty: it does not).
    pub peer_address: String,
    pub reader: Arc<ReadThrough>,
    pub cache: Arc<TieredStore>,
    pub catalog: Arc<Catalog>,
    pub priority: Arc<Priority>,
    /// Versions AqueductVolumes hold (pinned like the active ones), and the versions this
    /// spoke replicated to Ready (for the operator's status).
    pub holds: Arc<Holds>,
    pub ready: Arc<ReadyVersions>,
    /// The link budget every transfer takes from.
    pub budget: Arc<Budget>,
    /// Whether the session with the hub is up (readiness).
    pub link: Arc<HubLink>,
    /// The hubs, and the one in use: the hub's connections go to it, or the next that answers.
    pub hubs: Arc<crate::hubs::Hubs>,
    /// The node's TLS (its current certificate), for the hub's connections.
    pub tls: Arc<crate::tls::NodeTls>,
    /// How the certificate's renewal stands (what to do once it expired).
    pub renewal: Arc<crate::enrol::Renewal>,
    /// What uses versions on this node: the holder's mounts, the CSI node plugin's
    /// publications (if it runs), sidecars' leases; what was last gathered of it.
    pub mounts: Arc<Mounts>,
    pub csi: Option<Arc<Node>>,
    pub sidecars: Arc<Sidecars>,
    pub in_use: Arc<InUse>,
}

/// Why a session with the hub ended.
enum Ended {
    /// The hub could not be reached, or the watch broke.
    Hub(String),
    /// The hub refused the watch: another live watch of the region holds this node's name.
    NameTaken(String),
}

impl From<String> for Ended {
    fn from(reason: String) -> Self {
        Ended::Hub(reason)
    }
}

/// Watches the hub and replicates what it assigns, until `shutdown` fires.
pub async fn run(config: &SpokeConfig, endpoint: Endpoint, parts: Parts, shutdown: &CancellationToken) {
    let controller = Controller { config, parts };
    let mut memory = Memory::default();
    let mut retry = Retry::new(Backoff::HUB);
    let mut last_complaint: Option<Instant> = None;
    let mut failures = 0u64;
    info!(hub = %config.hub, node = %config.node, data_dir = %config.data_dir.display(), "spoke starting");
    loop {
        // Set once the hub answered: the next failure is a new one, retried soon.
        let mut watched = false;
        let ended = tokio::select! {
            outcome = controller.session(&endpoint, &mut memory, &mut watched) => match outcome {
                Err(ended) => ended,
                Ok(never) => match never {},
            },
            _ = shutdown.cancelled() => return,
        };
        if watched {
            retry.reset();
        }
        match &ended {
            Ended::Hub(reason) | Ended::NameTaken(reason) => controller.parts.link.down(reason),
        }
        let complain = last_complaint.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY);
        let wait = match ended {
            Ended::Hub(reason) => {
                failures += 1;
                let wait = retry.failed();
                // Say it once per interval, not once per attempt.
                if complain {
                    warn!(hub = %config.hub, %reason, failures, retry_in = ?wait, "hub unreachable; retrying with backoff");
                    last_complaint = Some(Instant::now());
                }
                wait
            }
            Ended::NameTaken(reason) => {
                // Soon: the usual cause is this spoke's own earlier watch, not yet seen gone.
                let wait = retry.failed_within(NAME_RETRY_MAX);
                if complain {
                    warn!(
                        node = %config.node,
                        %reason,
                        retry_in = ?wait,
                        "the hub refuses this node's name while another watch holds it: waiting for it to close (a restarted spoke's old connection), or give this spoke its own name"
                    );
                    last_complaint = Some(Instant::now());
                }
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

struct Controller<'a> {
    config: &'a SpokeConfig,
    parts: Parts,
}

/// What one session with the hub works with.
struct Session {
    replicator: Replicator,
    /// Woken when a version is Ready: the cache is reported at once.
    cache_changed: Arc<Notify>,
    /// Versions the hub no longer assigns that are kept here for a mount (said once each).
    kept_for_mounts: std::sync::Mutex<HashSet<VersionKey>>,
    /// The hub in use when the session began ([`crate::hubs::Hubs::turn`]).
    turn: u64,
}

impl Controller<'_> {
    /// One session with the hub: watch, and run a pass whenever something changes, until the
    /// watch ends (never with success).
    async fn session(&self, endpoint: &Endpoint, memory: &mut Memory, watched: &mut bool) -> Result<Infallible, Ended> {
        let (config, parts) = (self.config, &self.parts);
        let connector = parts.hubs.connector(parts.tls.connector());
        let channel: Channel = endpoint.connect_with_connector(connector).await.map_err(|e| {
            let error = crate::chain(&e);
            // An expired certificate is refused in TLS: say what to do.
            match parts.renewal.advice(crate::enrol::now_ms()) {
                Some(advice) => format!("{error}; {advice}"),
                None => error,
            }
        })?;
        // The hub in use as this session's calls see it: a refusal moves the spoke on from it.
        let turn = parts.hubs.turn();
        let refused = |s: &tonic::Status| {
            parts.hubs.refused(turn, s);
            s.message().to_string()
        };
        // Assignments (with the region's members) and acks come back; reports go out.
        let client = SpokeClient::new(channel)
            .max_decoding_message_size(aqueduct_proto::MAX_CONTROL_MESSAGE_BYTES)
            .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
        let request = pb::WatchRequest {
            node: config.node.clone(),
            peer_address: parts.peer_address.clone(),
            member_deltas: true,
        };
        let mut watch = match client.clone().watch(request).await {
            Ok(watch) => watch.into_inner(),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Err(Ended::NameTaken(s.message().to_string())),
            Err(s) => return Err(Ended::Hub(refused(&s))),
        };
        // The first message carries the watch's session, which every report carries.
        let first =
            watch.message().await.map_err(|s| refused(&s))?.ok_or_else(|| "the hub closed the watch".to_string())?;
        let token = first.session.clone();
        *watched = true;
        parts.link.up();
        memory.new_session();
        // Assignments queue for the loop below.
        let (updates, mut assigned) = mpsc::channel(16);
        let _watching = AbortOnDrop(tokio::spawn(follow_watch(
            first,
            watch,
            parts.reader.peers().clone(),
            parts.catalog.clone(),
            parts.budget.clone(),
            parts.link.clone(),
            updates,
        )));
        info!(hub = %parts.hubs.current(), "connected to the hub, watching for work");
        // Reported every few seconds, and at once when a version is Ready.
        let cache_changed = Arc::new(Notify::new());
        let _cache_reports = AbortOnDrop(tokio::spawn(report_cache(
            client.clone(),
            token.clone(),
            parts.reader.clone(),
            parts.cache.clone(),
            config.cache.memory_only,
            cache_changed.clone(),
            parts.in_use.clone(),
        )));
        let options = PullOptions {
            streams: config.replication.streams,
            chunks_per_request: config.replication.chunks_per_request,
        };
        let replicator = Replicator {
            progress: Arc::new(client),
            session: token,
            reader: parts.reader.clone(),
            catalog: parts.catalog.clone(),
            priority: parts.priority.clone(),
            options,
        };
        let session = Session { replicator, cache_changed, kept_for_mounts: Default::default(), turn };
        let mut current = pb::Assignments::default();
        // Versions replicate side by side; each pass starts what is not running yet.
        let mut running = Running::default();
        loop {
            let due = memory.retry_at();
            tokio::select! {
                done = running.next(), if !running.is_empty() => {
                    if let Some(done) = done {
                        self.finished(&session, done, memory).await?;
                    }
                }
                update = assigned.recv() => {
                    let ended = || tonic::Status::cancelled("the watch ended");
                    current = update.unwrap_or_else(|| Err(ended())).map_err(|s| refused(&s))?;
                    // Only the newest assignments matter.
                    while let Ok(update) = assigned.try_recv() {
                        current = update.map_err(|s| refused(&s))?;
                    }
                    memory.assignments_arrived();
                }
                _ = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, Into::into)), if due.is_some() => {
                    info!("trying failed versions again");
                }
                // A volume holds another version (or none): pin again (once the hub's
                // assignments are known: before, there is nothing to pin).
                _ = parts.holds.changed.notified(), if memory.arrived() => {}
                // A mount or a sidecar uses another version (or none): pin again, report.
                _ = parts.mounts.changed.notified(), if memory.arrived() => {}
                _ = parts.sidecars.changed.notified(), if memory.arrived() => {}
                _ = tokio::time::sleep(IN_USE_EVERY), if memory.arrived() => {}
            }
            let in_use = keep::in_use(parts, &session.cache_changed).await;
            let observed = keep::observed(parts, &config.data_dir, in_use.as_deref().unwrap_or_default());
            let plan = plan::plan(&current.assignments, &observed, memory);
            // What the hub no longer assigns goes, unless a mount or a volume here uses it;
            // not while what is in use cannot be known (the holder does not answer).
            let kept: Vec<VersionKey> =
                parts.catalog.kept_versions().into_iter().map(|(d, v)| VersionKey::new(&d, v)).collect();
            // Not before the sidecars of an earlier spoke had the time to renew their leases.
            let arrived = memory.arrived() && parts.sidecars.settled(Instant::now());
            let unassigned = retention::unassigned(&current.assignments, &kept, &observed.in_use, arrived);
            let unassigned = if in_use.is_some() { unassigned } else { retention::Unassigned::default() };
            let assigned: HashSet<VersionKey> = current.assignments.iter().map(VersionKey::of).collect();
            running.keep_only(&assigned);
            self.execute(&session, plan, &observed, &unassigned, memory, &mut running).await?;
            keep::sweep(parts, &config.data_dir, &current.assignments, &unassigned, &observed.in_use).await;
        }
    }

    /// Does what `plan` says and records the results in `memory`; replications start in
    /// `running` (urgent versions first) and end in [`Controller::finished`].
    async fn execute<'s>(
        &'s self,
        session: &'s Session,
        plan: Plan,
        observed: &Observed,
        unassigned: &retention::Unassigned,
        memory: &mut Memory,
        running: &mut Running<'s>,
    ) -> Result<(), Ended> {
        let parts = &self.parts;
        if plan.sidecar && !memory.is_sidecar() {
            info!(
                "no peer share, in a region whose spokes have one: holding no part of the region's copy, fetching only what readers ask for"
            );
        }
        if plan.sidecar {
            memory.become_sidecar();
        }
        for key in &plan.forget {
            memory.forget(key);
        }
        self.publish_ready(memory);
        let replicas = self.replicas();
        // Versions the hub removed that a mount here still shows: kept whole, said once.
        {
            let mut told = session.kept_for_mounts.lock().unwrap_or_else(|e| e.into_inner());
            for k in &unassigned.in_use {
                if told.insert(k.clone()) {
                    info!(dataset = %k.dataset, version = k.version, "the hub no longer assigns this version, but a mount or volume on this node uses it: keeping it pinned here until it is unmounted");
                }
            }
            told.retain(|k| unassigned.in_use.contains(k));
        }
        let local: Vec<Arc<aqueduct_proto::Manifest>> =
            unassigned.in_use.iter().filter_map(|k| parts.catalog.kept_manifest(&k.dataset, k.version)).collect();
        keep::pin(&parts.catalog, &parts.cache, parts.reader.peers(), &plan.pin, &local, replicas).await;
        let mut steps = plan.steps;
        steps.sort_by_key(|step| match step {
            Step::ReportReady { .. } => None,
            Step::Replicate { assignment, .. } => Some(crate::replicate::lane_of(assignment)),
        });
        for step in steps {
            match step {
                Step::ReportReady { assignment, mode, bytes } => {
                    session.replicator.report(&assignment, mode, Phase::Ready, bytes, "", 0).await;
                    memory.reported_ready(VersionKey::of(&assignment));
                }
                Step::Replicate { assignment, mode } => {
                    let (replicator, budget) = (&session.replicator, parts.budget.as_ref());
                    running.start(replicator, budget, assignment, mode, replicas, observed.membership.clone());
                }
            }
        }
        self.publish_ready(memory);
        Ok(())
    }

    /// Records how a replication ended. A hub that cannot be reached, or whose connection broke
    /// under the transfer, ends the session (the version is not failed for it).
    async fn finished(&self, session: &Session, done: Done, memory: &mut Memory) -> Result<(), Ended> {
        let Done { assignment: a, mode, membership, result } = done;
        match result {
            Ok(outcome) => {
                memory.replicated(VersionKey::of(&a), mode, &membership, outcome.held_bytes, a.generation);
                self.publish_ready(memory);
                session.cache_changed.notify_one();
            }
            // The hub was lost (not what it answered), or refused: the session ends, and the
            // next one, with this hub or the next, resumes the version from what the store
            // holds. A refusal moves the spoke on to the next hub.
            Err(ref e) if let Some(status) = e.lost_hub() => {
                self.parts.hubs.refused(session.turn, status);
                return Err(Ended::Hub(status.message().to_string()));
            }
            Err(e) => {
                warn!(dataset = %a.dataset, version = a.version, error = %e, "replication failed");
                session.replicator.report(&a, mode, Phase::Failed, 0, &e.reason(), 0).await;
                memory.failed(VersionKey::of(&a), Instant::now(), fastrand::f64());
            }
        }
        Ok(())
    }

    /// In `region` mode, how many spokes hold each chunk.
    fn replicas(&self) -> usize {
        self.config.peer.as_ref().map_or(1, |p| p.replicas)
    }

    /// Tells the operator which versions this spoke holds Ready.
    fn publish_ready(&self, memory: &Memory) {
        self.parts.ready.set(memory.ready().map(|k| (k.dataset.clone(), k.version)));
    }
}

/// Reads the hub's watch (`first`, its first message, already read): keeps the region's
/// members current in `peers`, the link budget in `budget` (transfers under way follow a change
/// at once) and the assignments on disk, and queues them for the controller; ends with the
/// watch, saying why.
async fn follow_watch(
    first: pb::Assignments,
    mut watch: tonic::Streaming<pb::Assignments>,
    peers: Arc<Peers>,
    catalog: Arc<Catalog>,
    budget: Arc<Budget>,
    link: Arc<HubLink>,
    updates: mpsc::Sender<Result<pb::Assignments, tonic::Status>>,
) {
    let mut first = Some(first);
    loop {
        let message = match first.take() {
            Some(first) => Ok(Some(first)),
            None => watch.message().await,
        };
        let update = match message {
            Ok(Some(mut assignments)) => {
                // Members change often and are not the catalog's business; the session is a
                // secret of this watch, never written to disk.
                if assignments.members_delta {
                    let joined = std::mem::take(&mut assignments.members_joined);
                    peers.apply_member_delta(joined, &std::mem::take(&mut assignments.members_left));
                    assignments.members_delta = false;
                } else {
                    peers.set_members(std::mem::take(&mut assignments.members));
                }
                assignments.session = String::new();
                let rate = assignments.budget_bytes_per_sec.max(1);
                if budget.set_rate(rate) {
                    info!(budget_bytes_per_sec = rate, "link budget set");
                }
                if let Err(e) = catalog.set_assignments(assignments.clone()) {
                    warn!(error = %e, "could not keep the assignments on disk");
                }
                Ok(assignments)
            }
            Ok(None) => Err(tonic::Status::cancelled("the hub closed the watch")),
            Err(status) => Err(status),
        };
        let ended = update.is_err();
        if let Err(why) = &update {
            // At once, not when the controller next looks: it may be replicating.
            link.down(why.message());
        }
        if updates.send(update).await.is_err() || ended {
            return;
        }
    }
}

/// Aborts a task when dropped (when the session that started it ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports the cache's usage and counters every [`CACHE_REPORT_EVERY`], and when `changed`.
async fn report_cache(
    mut client: SpokeClient<Channel>,
    session: String,
    reader: Arc<ReadThrough>,
    cache: Arc<TieredStore>,
    memory_only: bool,
    changed: Arc<Notify>,
    in_use: Arc<InUse>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let (memory, disk) = (cache.memory_usage().unwrap_or_default(), cache.disk_usage().unwrap_or_default());
        let peers = &reader.peers().stats;
        let report = pb::CacheReport {
            node: reader.peers().me().to_string(),
            memory_quota_bytes: memory.quota.unwrap_or(0),
            memory_used_bytes: memory.used,
            disk_quota_bytes: disk.quota.unwrap_or(0),
            disk_used_bytes: disk.used,
            memory_only,
            memory_hits: cache.stats.memory_hits.load(Relaxed),
            disk_hits: cache.stats.disk_hits.load(Relaxed),
            misses: cache.stats.misses.load(Relaxed),
            evictions: cache.stats.evictions(),
            bytes_from_peers: peers.from_peers.load(Relaxed),
            bytes_to_peers: peers.to_peers.load(Relaxed),
            corrupt_from_peers: peers.corrupt_from_peers.load(Relaxed),
            session: session.clone(),
            in_use: in_use.get(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if let Err(e) = client.report_cache(report).await {
            warn!(error = %e.message(), "could not report the cache to the hub");
        }
        tokio::select! {
            _ = tokio::time::sleep(CACHE_REPORT_EVERY) => {}
            _ = changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use aqueduct_core::identity::Identity;
    use aqueduct_proto::ReplicationMode;

    use super::*;
    use crate::cache::CacheConfig;
    use crate::operator::region::SpokeRegion;
    use crate::store::ChunkStore;

    fn wire_mode(mode: &str) -> i32 {
        mode.parse::<ReplicationMode>().unwrap().to_wire()
    }

    /// Pins as a pass of the controller does: what the plan says, then the chunks of it.
    async fn pin_as_planned(
        catalog: &Catalog,
        cache: &TieredStore,
        peers: &Peers,
        current: &pb::Assignments,
        replicas: usize,
        held: &HashSet<(String, u64)>,
    ) {
        let observed = Observed {
            now: Instant::now(),
            sharer: true,
            membership: peers.membership(),
            held: held.iter().map(|(d, v)| VersionKey::new(d, *v)).collect(),
            in_use: HashSet::new(),
            room: u64::MAX,
        };
        let plan = plan::plan(&current.assignments, &observed, &Memory::default());
        keep::pin(catalog, cache, peers, &plan.pin, &[], replicas).await;
    }

    #[test]
    fn auto_holds_the_whole_version_when_it_fits_and_a_share_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig { disk: Some(aqueduct_proto::Size(20 << 20)), ..CacheConfig::default() };
        let cache = TieredStore::open(dir.path(), &config).unwrap();
        let effective_mode =
            |a: &pb::Assignment, cache: &TieredStore, dir: &Path| plan::effective_mode(a, cache.room(dir));
        let a = |mib: u64, mode: &str| pb::Assignment {
            total_bytes: mib << 20,
            mode: wire_mode(mode),
            ..Default::default()
        };
        assert_eq!(effective_mode(&a(16, ""), &cache, dir.path()), ReplicationMode::EveryNode);
        assert_eq!(effective_mode(&a(20, "auto"), &cache, dir.path()), ReplicationMode::Region, "above the watermark");
        assert_eq!(effective_mode(&a(64, "every-node"), &cache, dir.path()), ReplicationMode::EveryNode);
        assert_eq!(effective_mode(&a(1, "region"), &cache, dir.path()), ReplicationMode::Region);
        // No quota: what the disk has free decides.
        let unlimited = TieredStore::open(&dir.path().join("u"), &CacheConfig::default()).unwrap();
        assert_eq!(effective_mode(&a(16, ""), &unlimited, dir.path()), ReplicationMode::EveryNode);
        assert_eq!(effective_mode(&a(u64::MAX >> 20, ""), &unlimited, dir.path()), ReplicationMode::Region);
    }

    /// A version older than the active one is pinned only while a volume holds it, and the
    /// operator's view of the region counts the bytes of it the cache holds.
    #[tokio::test]
    async fn held_versions_stay_pinned_and_the_region_view_counts_them() {
        use crate::operator::region::RegionView;
        use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest};
        use prost::Message;

        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(TieredStore::open(dir.path(), &CacheConfig::default()).unwrap());
        let hub = SpokeClient::new(Endpoint::from_static("https://127.0.0.1:1").connect_lazy());
        let catalog =
            Arc::new(Catalog::open(&dir.path().join("catalog"), hub, crate::trust::testing::trust()).unwrap());
        // Two versions of one file of two chunks each, kept in the catalog as the hub sent them.
        let data = |v: u64, i: u64| {
            format!("{v}.{i}").into_bytes().into_iter().chain(std::iter::repeat(b' ')).take(100).collect::<Vec<u8>>()
        };
        let version = |v: u64| {
            // Each chunk's bytes are its name, 100 bytes long.
            let chunks =
                (0..2u64).map(|i| ChunkRef { digest: Digest::of(&data(v, i)), offset: i * 100, length: 100 }).collect();
            let file = FileEntry {
                path: "model".into(),
                object: "model".into(),
                size: 200,
                mode: 0o644,
                mtime_unix_ms: 0,
                chunks,
            };
            let mut m = Manifest::new("m".into(), v, ChunkerParams::DEFAULT, vec![file]).unwrap();
            crate::trust::testing::sign(&mut m);
            let path = dir.path().join(format!("catalog/manifests/m/{v}.pb"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, pb::Manifest::from(&m).encode_to_vec()).unwrap();
            let a = pb::Assignment {
                dataset: "m".into(),
                version: v,
                total_bytes: 200,
                root: m.root.0.to_vec(),
                active: v == 2,
                mode: ReplicationMode::EveryNode.to_wire(),
                ready: v == 2,
                ..Default::default()
            };
            (m, a)
        };
        let ((v1, a1), (v2, a2)) = (version(1), version(2));
        let current = pb::Assignments { assignments: vec![a1, a2], ..Default::default() };
        catalog.set_assignments(current.clone()).unwrap();
        let peers = Peers::new("n", &Identity::Node { region: "r".into(), node: "n".into() }, None);
        let chunks = |m: &Manifest| m.distinct_chunks().into_iter().map(|(d, _)| d).collect::<HashSet<_>>();

        pin_as_planned(&catalog, &cache, &peers, &current, 1, &HashSet::new()).await;
        assert_eq!(cache.pinned(), chunks(&v2), "only the active version");
        let holds = Arc::new(Holds::default());
        holds.hold("ns/old", "m", 1);
        pin_as_planned(&catalog, &cache, &peers, &current, 1, &holds.held()).await;
        assert_eq!(cache.pinned(), &chunks(&v2) | &chunks(&v1), "the held version too");

        let region = SpokeRegion { catalog, cache: cache.clone(), holds, ready: Arc::new(ReadyVersions::default()) };
        let names: Vec<u64> = region.versions("m").iter().map(|v| v.version).collect();
        assert_eq!(names, [1, 2]);
        // v2 is active: Ready. v1: one chunk of two in the cache.
        assert!(region.holding("m", 2).await.ready);
        cache.put(&v1.files[0].chunks[0].digest, &data(1, 0)).unwrap();
        let held = region.holding("m", 1).await;
        assert_eq!((held.cached_bytes, held.ready), (100, false));
        region.ready.set([("m".to_string(), 1)]);
        assert!(region.holding("m", 1).await.ready, "replicated to Ready by this spoke");
        assert_eq!(region.holding("x", 1).await, Default::default());
    }
}
