//! Replication against scripted origins ([`crate::origin::fake`]), in paused time: what is
//! fetched and from whom, resume, corrupt copies, failing, stalled and lying owners, readers
//! first.

use std::sync::Mutex;

use aqueduct_core::identity::Identity;
use aqueduct_proto::{ChunkRef, ChunkerParams, FileEntry, Manifest};
use prost::Message;
use tonic::transport::Endpoint;

use super::*;
use crate::origin::fake::{Act, FakeRegion, member};
use crate::peers::Peers;
use crate::store::MemStore;

/// Progress reports, as the hub would get them.
#[derive(Default)]
struct Reports(Mutex<Vec<pb::ProgressReport>>);

#[async_trait]
impl Progress for Reports {
    async fn report(&self, report: pb::ProgressReport) {
        self.0.lock().unwrap().push(report);
    }
}

impl Reports {
    fn phases(&self) -> Vec<(Phase, u64)> {
        self.0.lock().unwrap().iter().map(|r| (Phase::from_wire(r.phase).unwrap(), r.cached_bytes)).collect()
    }
}

struct Spoke {
    _dir: tempfile::TempDir,
    region: Arc<FakeRegion>,
    store: Arc<MemStore>,
    peers: Arc<Peers>,
    priority: Arc<Priority>,
    reports: Arc<Reports>,
    replicator: Replicator,
    assignment: pb::Assignment,
    /// The version's chunks, in file order, and their digests.
    chunks: Vec<Vec<u8>>,
    digests: Vec<Digest>,
}

const CHUNKS: u64 = 12;
const CHUNK: u64 = 100;

/// This spoke (`me`) in a region of `members`, assigned `m@v1` (one file of [`CHUNKS`]
/// distinct chunks of [`CHUNK`] bytes) in `mode`; the hub holds every chunk.
async fn spoke(me: &str, members: &[&str], mode: &str) -> Spoke {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Vec<u8>> =
        (0..CHUNKS).map(|i| format!("{i:>width$}", width = CHUNK as usize).into_bytes()).collect();
    let digests: Vec<Digest> = chunks.iter().map(|c| Digest::of(c)).collect();
    let refs = digests.iter().enumerate().map(|(i, d)| ChunkRef {
        digest: *d,
        offset: i as u64 * CHUNK,
        length: CHUNK as u32,
    });
    let file = FileEntry {
        path: "model".into(),
        object: "model".into(),
        size: CHUNKS * CHUNK,
        mode: 0o644,
        mtime_unix_ms: 0,
        chunks: refs.collect(),
    };
    let mut manifest = Manifest::new("m".into(), 1, ChunkerParams::DEFAULT, vec![file]).unwrap();
    crate::trust::testing::sign(&mut manifest);
    let path = dir.path().join("catalog/manifests/m/1.pb");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, pb::Manifest::from(&manifest).encode_to_vec()).unwrap();
    let nowhere = SpokeClient::new(Endpoint::from_static("https://127.0.0.1:1").connect_lazy());
    let catalog =
        Arc::new(Catalog::open(&dir.path().join("catalog"), nowhere, crate::trust::testing::trust()).unwrap());
    let assignment = pb::Assignment {
        dataset: "m".into(),
        version: 1,
        total_bytes: CHUNKS * CHUNK,
        root: manifest.root.0.to_vec(),
        mode: mode.parse::<ReplicationMode>().unwrap().to_wire(),
        ..Default::default()
    };

    let peers = Arc::new(Peers::new(
        me,
        &Identity::Node { region: "eu".into(), node: me.into() },
        Some(crate::tls::test_tls("eu", me)),
    ));
    peers.set_members(members.iter().map(|n| member(n)).collect());
    let region = FakeRegion::new();
    region.seen_by(peers.clone());
    for c in &chunks {
        region.hub.hold(c);
    }
    let store = Arc::new(MemStore::default());
    let priority = Arc::new(Priority::default());
    let reader = ReadThrough::new(store.clone(), region.clone(), peers.clone(), priority.clone(), Arc::default());
    let reports = Arc::new(Reports::default());
    let replicator = Replicator {
        progress: reports.clone(),
        session: "session-1".into(),
        reader,
        catalog,
        priority: priority.clone(),
        options: PullOptions { streams: 2, chunks_per_request: 2 },
    };
    Spoke { _dir: dir, region, store, peers, priority, reports, replicator, assignment, chunks, digests }
}

impl Spoke {
    async fn replicate(&self, mode: ReplicationMode) -> Result<Outcome, ReplicationError> {
        let budget = Budget::new(u64::MAX);
        self.replicator.replicate(&self.assignment, &budget, mode, 1).await
    }

    /// The digests `origin` was asked for, over all its calls.
    fn asked_of(&self, origin: &crate::origin::fake::FakeOrigin) -> Vec<Digest> {
        let mut asked: Vec<Digest> = origin.asked().into_iter().flat_map(|r| r.digests).collect();
        asked.sort();
        asked
    }

    /// The chunks of the version whose first owner is `node` (`me`: this spoke).
    fn owned_by(&self, node: &str) -> Vec<Digest> {
        let ring = self.peers.ring();
        let mut owned: Vec<Digest> = self
            .digests
            .iter()
            .filter(|d| match ring.owner(d) {
                Owner::Me => node == "me",
                Owner::Peer(m) => m.node == node,
            })
            .copied()
            .collect();
        owned.sort();
        owned
    }
}

fn sorted(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort();
    digests
}

#[tokio::test(start_paused = true)]
async fn a_version_resumes_from_the_store_and_is_reported_ready() {
    let s = spoke("me", &[], "every-node").await;
    // Held from before a restart: read back, not fetched again.
    s.store.put(&s.digests[0], &s.chunks[0]).unwrap();
    let outcome = s.replicate(ReplicationMode::EveryNode).await.unwrap();
    assert_eq!(
        outcome,
        Outcome {
            chunks_fetched: CHUNKS - 1,
            bytes_fetched: (CHUNKS - 1) * CHUNK,
            corrupt_refetched: 0,
            held_bytes: CHUNKS * CHUNK
        }
    );
    assert_eq!(s.asked_of(&s.region.hub), sorted(s.digests[1..].to_vec()), "each missing chunk asked once");
    assert!(s.digests.iter().all(|d| s.store.contains(d)));
    let phases = s.reports.phases();
    assert_eq!(phases.first(), Some(&(Phase::Transferring, CHUNK)), "{phases:?}");
    assert_eq!(phases.last(), Some(&(Phase::Ready, CHUNKS * CHUNK)), "{phases:?}");
    let reports = s.reports.0.lock().unwrap();
    assert!(
        reports
            .iter()
            .all(|r| r.session == "session-1" && r.mode == ReplicationMode::EveryNode.to_wire() && r.node == "me")
    );
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_copy_in_the_store_is_fetched_again_before_ready() {
    let s = spoke("me", &[], "every-node").await;
    s.store.put_unchecked(&s.digests[3], b"rotten");
    let outcome = s.replicate(ReplicationMode::EveryNode).await.unwrap();
    assert_eq!((outcome.corrupt_refetched, outcome.chunks_fetched), (1, CHUNKS));
    assert_eq!(s.store.get(&s.digests[3]).unwrap(), Some(s.chunks[3].clone()));
    assert_eq!(s.reports.phases().last(), Some(&(Phase::Ready, CHUNKS * CHUNK)));
}

#[tokio::test(start_paused = true)]
async fn owned_chunks_come_over_the_link_the_others_from_their_owners() {
    // Every node holds the whole version: what `a` owns comes from `a` (which fetches what it
    // lacks), the rest over the link.
    let s = spoke("me", &["a", "me"], "every-node").await;
    let a = s.region.peer(&member("a"));
    let (theirs, mine) = (s.owned_by("a"), s.owned_by("me"));
    for (d, c) in s.digests.iter().zip(&s.chunks).filter(|(d, _)| theirs.contains(d)) {
        assert_eq!(a.hold(c), *d);
    }
    assert!(!theirs.is_empty() && !mine.is_empty(), "both own some of {CHUNKS} chunks");
    let outcome = s.replicate(ReplicationMode::EveryNode).await.unwrap();
    assert_eq!(outcome.held_bytes, CHUNKS * CHUNK);
    assert_eq!(s.asked_of(&a), theirs);
    assert!(a.asked().iter().all(|r| r.fetch_on_miss && !r.urgent), "asked of an owner, as background work");
    assert_eq!(s.asked_of(&s.region.hub), mine);

    // A share of the region's one copy: only what this spoke owns, over the link.
    let s = spoke("me", &["a", "me"], "region").await;
    let mine = s.owned_by("me");
    let outcome = s.replicate(ReplicationMode::Region).await.unwrap();
    assert_eq!(outcome.held_bytes, mine.len() as u64 * CHUNK);
    assert_eq!(s.asked_of(&s.region.hub), mine);
    assert_eq!(s.region.peer(&member("a")).calls(), 0);
    assert_eq!(s.reports.phases().last(), Some(&(Phase::Ready, mine.len() as u64 * CHUNK)));
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_fails_hands_its_chunks_to_the_next_round() {
    let s = spoke("me", &["a", "me"], "every-node").await;
    let a = s.region.peer(&member("a"));
    a.then(Act::Fail);
    let theirs = s.owned_by("a");
    s.replicate(ReplicationMode::EveryNode).await.unwrap();
    assert!(a.calls() >= 1);
    assert!(s.digests.iter().all(|d| s.store.contains(d)));
    // Suspected, `a` owns nothing for now: its chunks came over the link in the next round.
    assert_eq!(s.owned_by("a"), []);
    assert_eq!(s.asked_of(&s.region.hub), sorted(s.digests.clone()));
    assert!(!theirs.is_empty());
}

#[tokio::test(start_paused = true)]
async fn rounds_that_bring_nothing_fail_the_version_as_stalled() {
    // The owner answers and then sends nothing, round after round (a stall is not its fault:
    // it stays the owner).
    let s = spoke("me", &["a", "me"], "every-node").await;
    let a = s.region.peer(&member("a"));
    a.then(Act::Stall);
    let theirs = s.owned_by("a");
    let started = tokio::time::Instant::now();
    match s.replicate(ReplicationMode::EveryNode).await {
        Err(ReplicationError::Stalled(n)) => assert_eq!(n, theirs.len()),
        other => panic!("expected a stall, got {other:?}"),
    }
    println!("stalled after {:?} of paused time", started.elapsed());
    assert!(s.owned_by("me").iter().all(|d| s.store.contains(d)), "what came did stay");
    assert!(theirs.iter().all(|d| !s.store.contains(d)));
    // One ask per batch per round: the first round (which brought this spoke's own chunks),
    // then as many empty ones as make a stall.
    let batches = theirs.len().div_ceil(2);
    assert_eq!(a.asked().len(), batches * (1 + STALLED_ROUNDS as usize));
}

#[tokio::test(start_paused = true)]
async fn a_lying_owner_is_refused_and_the_link_brings_the_right_bytes() {
    let s = spoke("me", &["a", "me"], "every-node").await;
    let a = s.region.peer(&member("a"));
    for c in &s.chunks {
        a.hold(c);
    }
    a.then(Act::Lie);
    s.replicate(ReplicationMode::EveryNode).await.unwrap();
    assert!(s.peers.stats.corrupt_from_peers.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(s.owned_by("a"), [], "the liar is suspected");
    for (d, c) in s.digests.iter().zip(&s.chunks) {
        assert_eq!(s.store.get(d).unwrap().as_ref(), Some(c), "only right bytes are kept");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lying_hub_fails_the_version_and_nothing_wrong_is_kept() {
    let s = spoke("me", &[], "every-node").await;
    s.region.hub.then(Act::Lie);
    match s.replicate(ReplicationMode::EveryNode).await {
        Err(ReplicationError::Fetch(FetchError::Corrupt { digest, .. })) => assert!(s.digests.contains(&digest)),
        other => panic!("expected wrong bytes refused, got {other:?}"),
    }
    assert!(s.digests.iter().all(|d| !s.store.contains(d)));
    assert!(s.reports.phases().iter().all(|(phase, _)| *phase != Phase::Ready));
}

#[tokio::test(start_paused = true)]
async fn replication_waits_while_a_reader_fetches() {
    let s = Arc::new(spoke("me", &[], "every-node").await);
    let reading = s.priority.foreground();
    let replicating = tokio::spawn({
        let s = s.clone();
        async move { s.replicate(ReplicationMode::EveryNode).await.map(|o| o.held_bytes) }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.region.hub.calls(), 0, "replication asked the hub while a reader waited");
    drop(reading);
    assert_eq!(replicating.await.unwrap().unwrap(), CHUNKS * CHUNK);
}

/// A spoke alone in its region plans every chunk as its owner; when another spoke joins while
/// the round runs (the region's spokes coming back one by one after a hub failover), the round
/// ends: the next fetches over the link only what this spoke owns among the two, and the rest
/// from the other's share.
#[tokio::test(start_paused = true)]
async fn a_round_ends_when_the_membership_changes() {
    let s = spoke("me", &["me"], "every-node").await;
    let gate = s.region.hub.gate();
    let change = async {
        while s.region.hub.calls() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = s.asked_of(&s.region.hub);
        s.peers.set_members(vec![member("a"), member("me")]);
        let a = s.region.peer(&member("a"));
        let theirs = s.owned_by("a");
        gate.add_permits(1000);
        // The other spoke fetches its share over its link meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (d, c) in s.digests.iter().zip(&s.chunks).filter(|(d, _)| theirs.contains(d)) {
            assert_eq!(a.hold(c), *d);
        }
        (first, a, theirs)
    };
    let (outcome, (first, a, theirs)) = tokio::join!(s.replicate(ReplicationMode::EveryNode), change);
    assert_eq!(outcome.unwrap().held_bytes, CHUNKS * CHUNK);
    assert_eq!(first.len(), 4, "two batches of two in flight when the member joined");
    let mine = s.owned_by("me");
    let over_the_link: Vec<Digest> = s.asked_of(&s.region.hub).into_iter().filter(|d| !first.contains(d)).collect();
    assert!(
        over_the_link.iter().all(|d| mine.contains(d)),
        "after the join only this spoke's chunks came over the link"
    );
    let from_a: Vec<Digest> = theirs.iter().filter(|d| !first.contains(d)).copied().collect();
    assert!(!from_a.is_empty(), "the other spoke owns some of what was not in flight");
    let asked_of_a = s.asked_of(&a);
    assert!(from_a.iter().all(|d| asked_of_a.contains(d)), "the rest came from the other spoke's share");
}
