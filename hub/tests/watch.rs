//! The spokes' watch at fleet size: a spoke that asks for member deltas gets the region's whole
//! member list once, then only who joined and who left, and what it puts together is the list
//! a spoke without deltas is sent whole.

use std::time::Duration;

use aqueduct_proto::domain::members;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use tonic::Streaming;

async fn next(watch: &mut Streaming<pb::Assignments>) -> pb::Assignments {
    tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the hub sent nothing within 30 s")
        .unwrap()
        .expect("the watch ended")
}

fn nodes(list: &[pb::Member]) -> Vec<&str> {
    list.iter().map(|m| m.node.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_deltas_add_up_to_the_whole_list() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(tmp.path()).await;
    hub.add_region("eu", 1 << 20).await;
    let mut spokes = hub.spokes("eu").await;
    let watch = |node: &str, member_deltas| pb::WatchRequest {
        node: node.into(),
        peer_address: format!("{node}.test:7443"),
        member_deltas,
    };

    let mut one = spokes.watch(watch("node-1", true)).await.unwrap().into_inner();
    let first = next(&mut one).await;
    assert!(!first.members_delta, "the first message is whole");
    assert_eq!(nodes(&first.members), ["node-1"]);
    let mut seen = first.members;

    let mut two = spokes.watch(watch("node-2", false)).await.unwrap().into_inner();
    assert_eq!(nodes(&next(&mut two).await.members), ["node-1", "node-2"]);
    let delta = next(&mut one).await;
    assert!(delta.members_delta && delta.members.is_empty());
    assert_eq!((nodes(&delta.members_joined), delta.members_left.clone()), (vec!["node-2"], vec![]));
    seen = members::apply(seen, delta.members_joined, &delta.members_left);

    let mut three = spokes.watch(watch("node-3", true)).await.unwrap().into_inner();
    let whole = next(&mut three).await.members;
    assert_eq!(nodes(&next(&mut two).await.members), ["node-1", "node-2", "node-3"], "no delta unasked");
    let delta = next(&mut one).await;
    seen = members::apply(seen, delta.members_joined, &delta.members_left);
    assert_eq!(seen, whole);

    // node-2 leaves: the others hear it.
    drop(two);
    let delta = next(&mut one).await;
    assert_eq!((delta.members_joined.len(), delta.members_left.clone()), (0, vec!["node-2".to_string()]));
    seen = members::apply(seen, delta.members_joined, &delta.members_left);
    let at_three = next(&mut three).await;
    assert!(at_three.members_delta);
    let whole = members::apply(whole, at_three.members_joined, &at_three.members_left);
    assert_eq!(nodes(&seen), ["node-1", "node-3"]);
    assert_eq!(seen, whole);
    // The rest of a delta message is the whole state (the budget here).
    assert_eq!(delta.budget_bytes_per_sec, 1 << 20);
}
