//! Who a report speaks for, who counts for a region, and what a changed source fails: real
//! spokes and a real hub over mutual TLS on 127.0.0.1.
//!
//! Every spoke holds its own node's certificate; a holder of the keys of several nodes (or of a
//! node's stolen key) can call the hub as each of them. These tests show that it still cannot
//! make a region Ready for a node it does not run, take a live node's name, that a sidecar without a peer share never
//! holds its region back or fails it, and that a source changed after a region held a version
//! whole fails that version only where it was not whole yet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_e2e::{
    Children, SourceKind, World, bin, io, local_client, mount_when_known, socket_of, spawn_logged, stored_chunks, world,
};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::hub::RegionSpokes;
use aqueduct_testkit::{can_mount_fuse, noise};
use tonic::Code;

const MIB: u64 = 1 << 20;

/// Raw clients of the hub's spokes' API with the keys of every node of `region` (each call
/// with the certificate of the node it names), as anyone holding those keys could make.
async fn as_region(w: &World, region: &str) -> RegionSpokes {
    w.hub.spokes(region).await
}

/// Writes a config for a spoke named `node` of region eu in `dir`, with a certificate of that
/// node issued from the hub's CA (as enrolment would); returns its path.
fn spoke_like(w: &World, dir: &Path, node: &str) -> PathBuf {
    let bundle = w.hub.node_bundle("eu", node);
    aqueduct_e2e::holders::with_holder_binary(
        aqueduct_spoke::write_node_config(dir, &w.hub_url, node, &bundle).unwrap(),
    )
}

fn append(config: &Path, section: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(section);
    std::fs::write(config, text).unwrap();
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, words: &[&str]) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), code, "{}", s.message());
    for w in words {
        assert!(s.message().contains(w), "{:?} lacks {w:?}", s.message());
    }
}

/// Waits until `done` holds for the status row of v`version` in `region`; returns it.
async fn wait_row(
    w: &mut World,
    version: u64,
    region: &str,
    what: &str,
    done: impl Fn(&pb::StatusRow) -> bool,
) -> pb::StatusRow {
    let mut last = None;
    for _ in 0..1200 {
        let rows = w.status(version).await;
        if let Some(row) = rows.into_iter().find(|r| r.region == region) {
            if done(&row) {
                return row;
            }
            last = Some(row);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("v{version} in {region}: {what} never happened; last row {last:?}");
}

/// With the region's key, forged reports (no session, a made-up one, another live spoke's, for
/// a node that is not live) and a watch in the live node's name change nothing: the region is
/// not Ready while its only spoke holds a part of the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_reports_with_the_regions_key_change_nothing() {
    let mut w = world(SourceKind::Dir).await;
    std::fs::write(w.data.join("model.safetensors"), noise(12 << 20, 1)).unwrap();
    let v1 = w.snapshot().await;
    // A slow link: the version takes seconds, the forgeries milliseconds.
    let config = w.region("eu", MIB).await;
    let spoke = w.start_spoke(&config);
    w.wait_members("eu", 1).await;
    w.rollout(1, &["eu"]).await;
    let row = wait_row(&mut w, 1, "eu", "eu-1 started", |r| r.nodes.iter().any(|n| n.cached_bytes > 0)).await;
    println!("eu-1 holds {} of {} bytes when the forgeries start", row.nodes[0].cached_bytes, v1.bytes);

    let mut forger = as_region(&w, "eu").await;
    let ready = |node: &str, session: &str| pb::ProgressReport {
        dataset: "llama".into(),
        version: 1,
        cached_bytes: v1.bytes,
        phase: pb::Phase::Ready.into(),
        node: node.into(),
        session: session.into(),
        mode: aqueduct_proto::ReplicationMode::EveryNode.to_wire(),
        ..Default::default()
    };
    expect_err(
        forger.report_progress(ready("eu-1", "")).await,
        Code::PermissionDenied,
        &["session", "nothing changed"],
    );
    expect_err(forger.report_progress(ready("eu-1", &"ab".repeat(16))).await, Code::PermissionDenied, &["session"]);
    expect_err(
        forger.report_progress(ready("ghost", &"ab".repeat(16))).await,
        Code::PermissionDenied,
        &["\"ghost\" is not a live member"],
    );
    let cache = pb::CacheReport { node: "eu-1".into(), memory_used_bytes: 1 << 40, ..Default::default() };
    expect_err(forger.report_cache(cache).await, Code::PermissionDenied, &["session"]);
    // A watch in eu-1's name: refused, eu-1 keeps it.
    let watch = |node: &str| pb::WatchRequest { node: node.into(), peer_address: String::new(), ..Default::default() };
    expect_err(forger.watch(watch("eu-1")).await, Code::AlreadyExists, &["already a live member"]);
    // A watch of its own makes the forger a member with a session, which speaks for it alone.
    let mut ghost = forger.watch(watch("ghost")).await.unwrap().into_inner();
    let session = ghost.message().await.unwrap().unwrap().session;
    expect_err(forger.report_progress(ready("eu-1", &session)).await, Code::PermissionDenied, &["session"]);
    forger.report_progress(ready("ghost", &session)).await.unwrap();

    let row = w.status(1).await.remove(0);
    let nodes: Vec<(&str, pb::Phase)> = row.nodes.iter().map(|n| (n.node.as_str(), n.phase())).collect();
    println!(
        "after the forgeries: {:?} {} of {} bytes, nodes {nodes:?}",
        row.phase(),
        row.cached_bytes,
        row.total_bytes
    );
    assert_ne!(row.phase(), pb::Phase::Ready, "a forged report made the region Ready");
    assert!(!row.active, "a forged report made the version active");
    assert!(row.cached_bytes < v1.bytes, "the region's row claims more than eu-1 holds");
    assert_eq!(nodes, [("eu-1", pb::Phase::Transferring), ("ghost", pb::Phase::Ready)]);
    let caches = w.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().caches;
    assert!(caches.iter().flat_map(|c| &c.nodes).all(|n| n.memory_used_bytes != 1 << 40), "a forged cache report");

    // The forger goes: what it said goes with it, and eu-1 finishes on its own.
    drop(ghost);
    w.wait_members("eu", 1).await;
    w.admin
        .update_region(pb::UpdateRegionRequest { name: "eu".into(), rate_bytes_per_sec: 1 << 30, ..Default::default() })
        .await
        .unwrap();
    let rows = w.wait_ready(1).await;
    assert_eq!(rows[0].nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), ["eu-1"]);
    assert!(rows[0].active);
    spoke.cancel();
}

/// A second spoke that claims the name of a live one is refused, says why in its log and keeps
/// asking; the first keeps the name. Once the first is gone, the second gets in (as a spoke
/// restarted before the hub saw its old connection close does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_spoke_claiming_a_live_name_is_refused_and_the_first_keeps_it() {
    let mut w = world(SourceKind::Dir).await;
    std::fs::write(w.data.join("config.json"), b"{}").unwrap();
    w.snapshot().await;
    let first = w.region_of("eu", 1 << 30, 1).await.remove(0);
    let second = spoke_like(&w, &w.root.join("spoke-eu-1-again"), "eu-1");
    append(&second, "[peer]\nlisten = \"127.0.0.1:0\"\n");
    let stop_first = w.start_spoke(&first);
    w.wait_members("eu", 1).await;
    let members = |w: &mut World| {
        let mut admin = w.admin.clone();
        async move {
            let regions = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
            regions.into_iter().find(|r| r.name == "eu").unwrap().members
        }
    };
    let held = members(&mut w).await;

    let log = w.root.join("spoke-eu-1-again.log");
    let _second = Children(vec![spawn_logged(
        &bin("aqueduct-spoke"),
        &["run".as_ref(), "--config".as_ref(), second.as_os_str()],
        &log,
    )]);
    let mut text = String::new();
    for _ in 0..600 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("refuses this node's name") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = text.lines().find(|l| l.contains("refuses this node's name")).unwrap_or_else(|| panic!("{text}"));
    println!("{line}");
    assert!(line.contains("already a live member of region eu") && line.contains("--node"), "{line}");
    assert_eq!(members(&mut w).await, held, "the first spoke lost its name");
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    assert_eq!(members(&mut w).await, held);

    // The first goes away: the second, still asking, gets the name.
    stop_first.cancel();
    let mut now = Vec::new();
    for _ in 0..600 {
        now = members(&mut w).await;
        if now.len() == 1 && now != held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].peer_address, held[0].peer_address, "the second spoke never got in:\n{text}");
    assert_eq!(now[0].node, "eu-1");
}

/// A memory-only sidecar without a peer share, in a region rolled out in `region` mode beside a
/// node spoke, with a version larger than its memory: it takes no share (the region becomes
/// Ready through the node spoke alone, the sidecar never fails it) and its pod reads every
/// file through a mount, byte-equal, from the chunks' owner rather than the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_without_a_peer_share_never_fails_the_region_and_reads_its_files() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::Dir).await;
    let files = [("model.safetensors", noise(16 << 20, 7)), ("config.json", b"{\"layers\": 2}".to_vec())];
    for (path, bytes) in &files {
        std::fs::write(w.data.join(path), bytes).unwrap();
    }
    let v1 = w.snapshot().await;
    let node = w.region_of("eu", 1 << 30, 1).await.remove(0);
    let sidecar = spoke_like(&w, &w.root.join("spoke-pod-sidecar"), "pod-sidecar");
    // As deploy/spoke/examples/sidecar-pod.yaml: memory only, no [peer]; 4 MiB for 16 MiB.
    append(&sidecar, "[cache]\nmemory_only = true\nmemory = \"4MiB\"\n");
    let stops = [w.start_spoke(&node), w.start_spoke(&sidecar)];
    w.wait_members("eu", 2).await;
    w.rollout_as(1, &["eu"], "region").await;
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    let nodes: Vec<(&str, pb::Phase, bool)> =
        rows[0].nodes.iter().map(|n| (n.node.as_str(), n.phase(), n.counted)).collect();
    println!("region row: {:?} {} of {} bytes; nodes {nodes:?}", rows[0].phase(), rows[0].cached_bytes, v1.bytes);
    assert_eq!(nodes, [("eu-1", pb::Phase::Ready, true), ("pod-sidecar", pb::Phase::Pending, false)]);
    assert_eq!(rows[0].cached_bytes, v1.bytes, "the one copy is eu-1's");
    assert!(rows[0].active);
    assert_eq!(stored_chunks(&w.root.join("spoke-eu-1/store")).len(), m1.distinct_chunks().len());

    // The pod reads its files through the sidecar's mount (following the active version).
    let mountpoint = w.root.join("models");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mut sidecar_api = local_client(&socket_of(&sidecar)).await;
    let info = mount_when_known(&mut sidecar_api, "llama", 0, &mountpoint).await.unwrap();
    assert_eq!((info.version, info.follow), (1, true));
    for (path, bytes) in &files {
        let file = mountpoint.join(path);
        let read = io(move || std::fs::read(file).unwrap()).await;
        assert!(read == *bytes, "{path} read wrong through the sidecar's mount");
    }
    sidecar_api.unmount(local::UnmountRequest { mountpoint: mountpoint.display().to_string() }).await.unwrap();
    let row = w.status(1).await.remove(0);
    println!("relayed {} bytes for {distinct} distinct after the sidecar read every file", row.relayed_bytes);
    assert_eq!(row.relayed_bytes, distinct, "the sidecar read over the link what the region's owner held");
    assert_eq!((row.phase(), row.active), (pb::Phase::Ready, true));
    // Memory only: nothing on the sidecar's disk.
    assert!(!w.root.join("spoke-pod-sidecar/store/chunks").exists());

    // The node spoke restarts while v2 rolls out: meanwhile the sidecar is the region's only
    // live spoke, and still takes nothing on (it would not fit) and does not count.
    let [node_stop, sidecar_stop] = stops;
    node_stop.cancel();
    w.wait_members("eu", 1).await;
    std::fs::write(w.data.join("model.safetensors"), noise(16 << 20, 8)).unwrap();
    w.snapshot().await;
    w.rollout_as(2, &["eu"], "region").await;
    // Time for a sidecar that took the version on to start on it (nothing is timed).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = w.status(2).await.remove(0);
    assert_ne!(row.phase(), pb::Phase::Failed, "{}", row.reason);
    let node_stop = w.start_spoke(&node);
    let rows = w.wait_ready(2).await;
    let nodes: Vec<(&str, pb::Phase, bool)> =
        rows[0].nodes.iter().map(|n| (n.node.as_str(), n.phase(), n.counted)).collect();
    assert_eq!(
        nodes,
        [("eu-1", pb::Phase::Ready, true), ("pod-sidecar", pb::Phase::Pending, false)],
        "the sidecar took v2 on"
    );
    node_stop.cancel();
    sidecar_stop.cancel();
}

/// The source changes in place after eu holds v1 whole and serves it: a spoke that joins eu
/// then gets v1 from its peer and eu keeps serving it (a mount reads the bytes of v1), while
/// us, asked for v1 only now, fails it with the reason naming the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_changed_after_a_region_became_active_fails_only_where_it_is_incomplete() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::Dir).await;
    // No relay cache: us must read the changed source, not the bytes eu's reads left in the
    // hub's memory (those would be the version's, verified: us would be served them whole).
    w.hub.config.limits.relay_cache = aqueduct_proto::Size(0);
    w.hub.restart().await;
    let model = noise(8 << 20, 3);
    std::fs::write(w.data.join("model.safetensors"), &model).unwrap();
    std::fs::write(w.data.join("config.json"), b"{}").unwrap();
    w.snapshot().await;
    let eu = w.region_of("eu", 1 << 30, 2).await;
    let us = w.region("us", 1 << 30).await;
    let eu1 = w.start_spoke(&eu[0]);
    w.wait_members("eu", 1).await;
    w.rollout(1, &["eu"]).await;
    let rows = w.wait_ready(1).await;
    assert!(rows[0].active);

    // The file changes in place, same size.
    let mut changed = model.clone();
    changed[3 << 20..5 << 20].copy_from_slice(&noise(2 << 20, 99));
    std::fs::write(w.data.join("model.safetensors"), &changed).unwrap();

    // A spoke joins eu: it gets v1 from eu-1, and eu stays Ready and active throughout.
    let eu2 = w.start_spoke(&eu[1]);
    w.wait_members("eu", 2).await;
    let row = wait_row(&mut w, 1, "eu", "eu-2 Ready", |r| {
        r.nodes.iter().any(|n| n.node == "eu-2" && (n.phase() == pb::Phase::Ready || n.phase() == pb::Phase::Failed))
    })
    .await;
    let nodes: Vec<(&str, pb::Phase)> = row.nodes.iter().map(|n| (n.node.as_str(), n.phase())).collect();
    assert_eq!(nodes, [("eu-1", pb::Phase::Ready), ("eu-2", pb::Phase::Ready)], "eu-2 did not get v1 from its peer");
    assert_eq!((row.phase(), row.active), (pb::Phase::Ready, true));

    // us is asked for v1 now: the relay finds the source changed, and v1 fails in us only.
    let us1 = w.start_spoke(&us);
    w.rollout(1, &["us"]).await;
    let failed = wait_row(&mut w, 1, "us", "us Failed", |r| r.phase() == pb::Phase::Failed).await;
    println!("us: Failed: {}", failed.reason);
    assert!(
        failed.reason.contains("source changed") && failed.reason.contains("llama/model.safetensors"),
        "the reason names the object: {}",
        failed.reason
    );
    assert!(!failed.active);
    let row = w.status(1).await.into_iter().find(|r| r.region == "eu").unwrap();
    assert_eq!((row.phase(), row.active, row.reason.as_str()), (pb::Phase::Ready, true, ""), "eu lost v1");

    // eu serves v1 still: a mount that follows the region's active version reads v1's bytes.
    let mountpoint = w.root.join("eu-models");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mut api = local_client(&socket_of(&eu[1])).await;
    let info = mount_when_known(&mut api, "llama", 0, &mountpoint).await.unwrap();
    assert_eq!((info.version, info.follow), (1, true));
    let file = mountpoint.join("model.safetensors");
    let read = io(move || std::fs::read(file).unwrap()).await;
    assert!(read == model, "eu's mount did not read v1's bytes");
    api.unmount(local::UnmountRequest { mountpoint: mountpoint.display().to_string() }).await.unwrap();
    for stop in [eu1, eu2, us1] {
        stop.cancel();
    }
}

/// A spoke whose connection went silent (frozen here; a crash behind a cut link looks the
/// same to the hub) keeps its name until the hub's keepalive gives up on it; a spoke claiming
/// the name meanwhile says why it waits, and gets in soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_held_by_a_silent_watch_is_free_once_keepalive_gives_up() {
    let mut w = world(SourceKind::Dir).await;
    std::fs::write(w.data.join("config.json"), b"{}").unwrap();
    w.snapshot().await;
    let old = w.region_of("eu", 1 << 30, 1).await.remove(0);
    let new = spoke_like(&w, &w.root.join("spoke-eu-1-restarted"), "eu-1");
    append(&new, "[peer]\nlisten = \"127.0.0.1:0\"\n");
    let root = w.root.clone();
    let run = |config: &Path, log: &str| {
        spawn_logged(
            &bin("aqueduct-spoke"),
            &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
            &root.join(log),
        )
    };
    let mut spokes = Children(vec![run(&old, "old.log")]);
    w.wait_members("eu", 1).await;
    let held = w.admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions[0].members.clone();

    aqueduct_e2e::signal(&spokes.0[0], "STOP");
    let frozen = std::time::Instant::now();
    spokes.0.push(run(&new, "new.log"));
    let mut admitted = None;
    for _ in 0..600 {
        let regions = w.admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
        if regions[0].members.len() == 1 && regions[0].members != held {
            admitted = Some(frozen.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(w.root.join("new.log")).unwrap();
    let admitted = admitted.unwrap_or_else(|| panic!("the new spoke never got the name:\n{log}"));
    println!("the name was free again {admitted:?} after the old spoke went silent");
    assert!(log.contains("refuses this node's name"), "the new spoke did not say why it waited:\n{log}");
    aqueduct_e2e::signal(&spokes.0[0], "KILL");
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
}
