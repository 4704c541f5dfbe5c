//! The read path against scripted origins ([`crate::origin::fake`]), in paused time: shared
//! fetches, owners in line, lying, busy and stalled origins, and readers ahead of background
//! work.

use std::sync::Arc;
use std::time::Duration;

use aqueduct_core::budget::{Budget, Lane};
use aqueduct_core::identity::Identity;
use aqueduct_proto::Digest;

use super::*;
use crate::origin::fake::{Act, FakeRegion, member};
use crate::store::MemStore;

struct Spoke {
    region: Arc<FakeRegion>,
    store: Arc<MemStore>,
    peers: Arc<Peers>,
    reader: Arc<ReadThrough>,
}

/// This spoke (`me`) in a region of `members` (its own name among them or not), with a fake hub
/// and fake peers.
fn spoke(me: &str, members: &[&str]) -> Spoke {
    let peers = Arc::new(Peers::new(
        me,
        &Identity::Node { region: "eu".into(), node: me.into() },
        Some(crate::tls::test_tls("eu", me)),
    ));
    peers.set_members(members.iter().map(|n| member(n)).collect());
    let region = FakeRegion::new();
    region.seen_by(peers.clone());
    let store = Arc::new(MemStore::default());
    let reader =
        ReadThrough::new(store.clone(), region.clone(), peers.clone(), Arc::new(Priority::default()), Arc::default());
    Spoke { region, store, peers, reader }
}

/// Who `peers` asks for `digest`, best first (`me` for this spoke).
fn owners(peers: &Peers, digest: &Digest) -> Vec<String> {
    peers
        .owners(digest)
        .into_iter()
        .map(|o| match o {
            Owner::Me => "me".to_string(),
            Owner::Peer(m) => m.node,
        })
        .collect()
}

/// Bytes of a chunk whose owners, best first, are `order`.
fn chunk_owned_by(peers: &Peers, order: &[&str]) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("chunk {i}").into_bytes())
        .find(|data| owners(peers, &Digest::of(data)) == order)
        .expect("some chunk is owned so")
}

fn pull(urgent: bool, budget: Option<&Budget>, wait_stored: bool) -> Pull<'_> {
    let lane = if urgent { Lane::Foreground } else { Lane::Normal };
    Pull { dataset: "m", version: 1, budget, lane, from_owner: false, urgent, wait_stored }
}

/// The value of a metric sample, as scraped.
fn metric(reader: &ReadThrough, sample: &str) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reader.metrics().registry()).unwrap();
    text.lines().find_map(|l| l.strip_prefix(sample)).map_or_else(|| "absent".into(), |v| v.trim().to_string())
}

/// Lets every task run until all wait (time is paused: it moves only when nothing can run).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_readers_share_one_fetch() {
    let s = spoke("me", &[]);
    let data = b"one chunk, five readers".to_vec();
    let digest = s.region.hub.hold(&data);
    let gate = s.region.hub.gate();
    let readers: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn({
                let r = s.reader.clone();
                async move { r.chunk("m", 1, digest).await }
            })
        })
        .collect();
    settle().await;
    assert_eq!(s.region.hub.calls(), 1, "the readers share the first one's fetch");
    gate.add_permits(1);
    for r in readers {
        assert_eq!(r.await.unwrap(), Ok(data.clone()));
    }
    assert_eq!((s.region.hub.calls(), s.region.hub.sent()), (1, 1), "the chunk crossed the link once");
    settle().await;
    assert!(s.store.contains(&digest), "and was stored");
    // Now the store answers: no fetch, and its copy is the caller's to check.
    let read = s.reader.read("m", 1, digest).await.unwrap();
    assert_eq!((read.data, read.checked), (data, false));
    assert_eq!(s.region.hub.calls(), 1);
    assert_eq!(metric(&s.reader, "aqueduct_spoke_chunks_total{origin=\"local\"}"), "1");
}

#[tokio::test(start_paused = true)]
async fn a_failing_owner_hands_over_to_the_next_in_line() {
    let s = spoke("me", &["a", "b", "me"]);
    let data = chunk_owned_by(&s.peers, &["a", "b", "me"]);
    let (a, b) = (s.region.peer(&member("a")), s.region.peer(&member("b")));
    a.then(Act::Fail);
    let digest = b.hold(&data);
    s.region.hub.hold(&data);

    assert_eq!(s.reader.chunk("m", 1, digest).await, Ok(data.clone()));
    let asked = a.asked();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].fetch_on_miss && asked[0].urgent, "an owner is asked to fetch what it lacks, for a reader");
    assert_eq!((b.calls(), s.region.hub.calls()), (1, 0), "the next owner had it: the link was not used");
    assert_eq!(owners(&s.peers, &digest), ["b", "me"], "the owner that failed is suspected");

    // Every owner ahead fails: this spoke fetches it over the link itself.
    settle().await;
    s.store.remove(&digest).unwrap();
    b.then(Act::Fail);
    let read = s.reader.read("m", 1, digest).await.unwrap();
    assert_eq!((read.data, read.checked), (data, true), "fetched bytes were checked on arrival");
    assert_eq!((b.calls(), s.region.hub.calls()), (2, 1));
    assert_eq!(owners(&s.peers, &digest), ["me"]);
}

#[tokio::test(start_paused = true)]
async fn the_owner_asks_a_peer_that_holds_a_chunk_before_the_link() {
    let s = spoke("me", &["me", "b"]);
    let data = chunk_owned_by(&s.peers, &["me"]);
    let b = s.region.peer(&member("b"));
    let digest = b.hold(&data);
    s.region.hub.hold(&data);
    assert_eq!(s.reader.chunk("m", 1, digest).await, Ok(data));
    assert_eq!((b.calls(), s.region.hub.calls()), (1, 0));
    assert!(!b.asked()[0].fetch_on_miss, "a holder is asked for what it holds only");
    // A holder that fails costs nothing but its ask: the link brings the chunk.
    settle().await;
    s.store.remove(&digest).unwrap();
    b.then(Act::Fail);
    let got = s.reader.over_link(&pull(true, None, true), &[digest]).await.unwrap();
    assert_eq!(got.got.len(), 1);
    assert_eq!((b.calls(), s.region.hub.calls()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_lying_origin_is_refused_counted_and_nothing_of_it_stored() {
    // A lying owner: the reader gets the right bytes from the next in line (the link).
    let s = spoke("me", &["a", "me"]);
    let data = chunk_owned_by(&s.peers, &["a", "me"]);
    let a = s.region.peer(&member("a"));
    let digest = a.hold(&data);
    a.then(Act::Lie);
    s.region.hub.hold(&data);
    assert_eq!(s.reader.chunk("m", 1, digest).await, Ok(data.clone()));
    assert_eq!((a.sent(), s.region.hub.calls()), (1, 1));
    assert_eq!(s.peers.stats.corrupt_from_peers.load(Ordering::Relaxed), 1);
    assert_eq!(metric(&s.reader, "aqueduct_spoke_verification_failures_total{origin=\"peer\"}"), "1");
    assert_eq!(owners(&s.peers, &digest), ["me"], "the liar is suspected");
    settle().await;
    assert_eq!(s.store.get(&digest).unwrap(), Some(data.clone()), "the right bytes were kept");

    // A lying hub: the pull fails with the digest and what the bytes hash to, nothing is kept,
    // and nothing stays in flight (the next pull asks again).
    let s = spoke("me", &[]);
    let digest = s.region.hub.hold(&data);
    s.region.hub.script([Act::Lie]);
    let hub = s.reader.origins().hub();
    match s.reader.pull(hub.as_ref(), &pull(false, None, true), &[digest]).await {
        Err(FetchError::Corrupt { digest: d, actual }) => {
            assert_eq!((d, actual), (digest, Digest::of(&[&data[..], b"!"].concat())))
        }
        other => panic!("expected wrong bytes refused, got {:?}", other.map(|p| p.got.len())),
    }
    assert_eq!(metric(&s.reader, "aqueduct_spoke_verification_failures_total{origin=\"hub\"}"), "1");
    settle().await;
    assert!(!s.store.contains(&digest));
    let again = s.reader.pull(hub.as_ref(), &pull(false, None, true), &[digest]).await.unwrap();
    assert_eq!((again.got.len(), s.region.hub.calls()), (1, 2));
    assert!(s.store.contains(&digest));
}

#[tokio::test(start_paused = true)]
async fn a_busy_server_is_asked_again_by_background_work_and_passed_over_by_a_reader() {
    let s = spoke("me", &["a", "me"]);
    let data = chunk_owned_by(&s.peers, &["a", "me"]);
    let a = s.region.peer(&member("a"));
    let digest = s.region.hub.hold(&data);
    // A reader asks the next owner at once, and does not hold it against the busy one.
    a.script([Act::Busy]);
    assert_eq!(s.reader.chunk("m", 1, digest).await, Ok(data.clone()));
    assert_eq!((a.calls(), s.region.hub.calls()), (1, 1));
    assert_eq!(owners(&s.peers, &digest), ["a", "me"], "a busy peer is not suspected");

    // Background work asks the busy peer again until it answers.
    settle().await;
    s.store.remove(&digest).unwrap();
    a.hold(&data);
    a.script([Act::Busy, Act::Busy, Act::Busy]);
    let from_owner = Pull { from_owner: true, ..pull(false, None, true) };
    let got = s.reader.pull(a.as_ref(), &from_owner, &[digest]).await.unwrap();
    assert_eq!((got.got.len(), a.calls()), (1, 5));
    assert_eq!(owners(&s.peers, &digest), ["a", "me"]);
    // ... for a while: a peer busy for longer is given up (not suspected).
    settle().await;
    s.store.remove(&digest).unwrap();
    a.then(Act::Busy);
    let started = tokio::time::Instant::now();
    let err = s.reader.pull(a.as_ref(), &from_owner, &[digest]).await.err().expect("given up");
    assert!(err.is_busy(), "{err}");
    assert!(started.elapsed() >= FETCH_TIMEOUT, "gave up after {:?}", started.elapsed());
    assert_eq!(owners(&s.peers, &digest), ["a", "me"]);

    // The hub is asked again for as long as it takes (a reader's own deadline aside).
    let only_at_the_hub = s.region.hub.hold(b"only at the hub");
    let budget = Budget::new(u64::MAX);
    s.region.hub.script([Act::Busy; 20]);
    let got = s.reader.over_link(&pull(false, Some(&budget), true), &[only_at_the_hub]).await.unwrap();
    assert_eq!((got.got.len(), s.region.hub.calls()), (1, 22));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_origin_times_out_and_a_cancelled_fetch_frees_its_waiters() {
    let s = spoke("me", &[]);
    let data = b"slow".to_vec();
    let digest = s.region.hub.hold(&data);
    // Nothing comes for as long as a fetch may take: the pull fails, nothing stays in flight.
    s.region.hub.script([Act::Stall]);
    let hub = s.reader.origins().hub();
    match s.reader.pull(hub.as_ref(), &pull(false, None, true), &[digest]).await {
        Err(FetchError::Timeout(t)) => assert_eq!(t, FETCH_TIMEOUT),
        other => panic!("expected a timeout, got {:?}", other.map(|p| p.got.len())),
    }
    assert_eq!(s.reader.chunk("m", 1, digest).await, Ok(data.clone()), "asked again, not joined to a dead fetch");
    assert_eq!(s.region.hub.calls(), 2);

    // A reader gives up while another waits for the same fetch: the other learns at once and
    // fetches for itself, instead of waiting out its deadline for a fetch that is gone.
    settle().await;
    s.store.remove(&digest).unwrap();
    s.region.hub.script([Act::Stall]);
    let first = tokio::spawn({
        let r = s.reader.clone();
        async move { r.chunk("m", 1, digest).await }
    });
    settle().await;
    let joiner = tokio::spawn({
        let r = s.reader.clone();
        async move { r.chunk("m", 1, digest).await }
    });
    settle().await;
    assert_eq!(s.region.hub.calls(), 3, "the second reader joined the first one's fetch");
    first.abort();
    let started = tokio::time::Instant::now();
    assert_eq!(joiner.await.unwrap(), Ok(data));
    assert!(started.elapsed() < FETCH_TIMEOUT, "the joiner waited {:?}", started.elapsed());
    assert_eq!(s.region.hub.calls(), 4);
    // A reader whose deadline passes gets the reason.
    settle().await;
    s.store.remove(&digest).unwrap();
    s.region.hub.then(Act::Stall);
    let err = s.reader.chunk("m", 1, digest).await.unwrap_err();
    assert_eq!(err.digest, digest);
    assert!(
        matches!(&err.reason, Reason::Timeout(_))
            || matches!(&err.reason, Reason::Failed(r) if r.contains("no answer")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_readers_fetch_goes_ahead_of_background_work() {
    let s = spoke("me", &["a", "me"]);
    // The reader's chunk comes from its owner `a`, held back until the test lets it go.
    let wanted = chunk_owned_by(&s.peers, &["a", "me"]);
    let a = s.region.peer(&member("a"));
    let digest = a.hold(&wanted);
    let a_gate = a.gate();
    let background: Vec<Digest> = (0..4u8).map(|i| s.region.hub.hold(&[i; 64])).collect();
    let reading = tokio::spawn({
        let r = s.reader.clone();
        async move { r.chunk("m", 1, digest).await }
    });
    settle().await;
    let replicating = tokio::spawn({
        let (r, chunks) = (s.reader.clone(), background.clone());
        async move {
            let budget = Budget::new(u64::MAX);
            let hub = r.origins().hub();
            r.pull(hub.as_ref(), &pull(false, Some(&budget), true), &chunks).await.map(|p| p.got.len())
        }
    });
    settle().await;
    assert_eq!(s.region.hub.sent(), 1, "background work took one chunk, then waited for the reader");
    assert!(!replicating.is_finished());
    a_gate.add_permits(1);
    assert_eq!(reading.await.unwrap(), Ok(wanted));
    assert_eq!(replicating.await.unwrap().unwrap(), 4, "and went on once the reader had its chunk");
}

#[tokio::test(start_paused = true)]
async fn background_work_a_reader_waits_for_is_not_held_back() {
    let s = spoke("me", &[]);
    let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 64]).collect();
    let digests: Vec<Digest> = chunks.iter().map(|c| s.region.hub.hold(c)).collect();
    let gate = s.region.hub.gate();
    gate.add_permits(1);
    let replicating = tokio::spawn({
        let (r, digests) = (s.reader.clone(), digests.clone());
        async move {
            let budget = Budget::new(u64::MAX);
            let hub = r.origins().hub();
            r.pull(hub.as_ref(), &pull(false, Some(&budget), true), &digests).await.map(|p| p.got.len())
        }
    });
    settle().await;
    // A reader wants the last chunk, which background work is bringing: it joins that fetch,
    // and the fetch must not pause for the reader it serves.
    let reading = tokio::spawn({
        let r = s.reader.clone();
        let last = digests[2];
        async move { r.chunk("m", 1, last).await }
    });
    settle().await;
    gate.add_permits(2);
    let started = tokio::time::Instant::now();
    assert_eq!(reading.await.unwrap(), Ok(chunks[2].clone()));
    assert!(started.elapsed() < FETCH_TIMEOUT, "the reader waited for itself: {:?}", started.elapsed());
    assert_eq!(replicating.await.unwrap().unwrap(), 3);
    assert_eq!(s.region.hub.calls(), 1, "one fetch served both");
}

/// A reader whose fetch lost the hub (not reached, or the connection broke under it) asks once
/// more, which reaches the next hub that answers; a hub lost twice fails the read. What the hub
/// answered is not asked again.
#[tokio::test(start_paused = true)]
async fn a_reader_asks_again_once_when_the_hub_was_lost_under_its_fetch() {
    use crate::origin::hub_lost;
    assert!(hub_lost(&tonic::Status::unavailable("no connection")));
    let broken = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
    assert!(hub_lost(&broken), "a status the transport made: {broken:?}");
    assert!(!hub_lost(&tonic::Status::not_found("no such version")), "an answer of the hub");
    assert!(!hub_lost(&tonic::Status::unknown("an answer of the hub")));

    let s = spoke("me", &[]);
    let data = b"a chunk a pod waits for".to_vec();
    let digest = s.region.hub.hold(&data);
    s.region.hub.script([Act::Fail]);
    assert_eq!(s.reader.chunk("m", 1, digest).await, Ok(data.clone()));
    assert_eq!(s.region.hub.calls(), 2, "asked again after the hub was lost");
    let other = b"another chunk a pod waits for".to_vec();
    let digest = s.region.hub.hold(&other);
    s.region.hub.script([Act::Fail, Act::Fail]);
    let err = s.reader.chunk("m", 1, digest).await.unwrap_err();
    assert_eq!(s.region.hub.calls(), 4, "asked again once, not more");
    assert!(matches!(err.reason, Reason::Failed(_)), "{err}");
}
