//! The whole system the way it runs for real: the hub and the S3 server in the data centre
//! (this test's network namespace), two regions of two nodes, each node a network namespace
//! running `aqueduct-spoke`, each region behind its own uplink shaped with `tc tbf`. Needs
//! root, `ip`, `tc`, `nsenter` and FUSE (under `CI=true` a missing one fails the test).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_e2e::netns::Topology;
use std::collections::HashSet;

use aqueduct_e2e::{
    Children, SourceKind, World, bin, local_client, mount_when_known, socket_of, stored_chunks, world_at,
};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Manifest};
use aqueduct_testkit::{can_mount_fuse, noise};

const MIB: u64 = 1 << 20;

fn write_model(dir: &Path, seed: u64) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("config.json".to_string(), format!("{{\"seed\": {seed}}}").into_bytes()),
        ("model.safetensors".to_string(), noise(12 << 20, seed)),
        ("tokenizer.json".to_string(), noise(300_000, seed + 1)),
    ];
    for (path, bytes) in &files {
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    files
}

/// A region of a test: name, nodes, link rate and link budget (bytes per second).
type Region<'a> = (&'a str, usize, u64, u64);

/// A budget far above any link here: the link is the limit.
const OPEN: u64 = 1 << 30;

/// A topology of `regions`, a hub that every region reaches over its uplink, and a spoke
/// process on every node. Returns the configs per region.
async fn start(regions: &[Region<'_>]) -> (Topology, World, Children, Vec<Vec<PathBuf>>) {
    let links: Vec<(&str, usize, u64)> = regions.iter().map(|&(name, nodes, link, _)| (name, nodes, link)).collect();
    let mut net = Topology::build(&links);
    let hosts: Vec<String> = net.regions.iter().map(|r| r.hub_ip.to_string()).collect();
    let mut w = world_at(SourceKind::S3, "0.0.0.0:0".parse().unwrap(), &hosts).await;
    net.mount_roots.push(w.root.clone());
    let budgets: Vec<u64> = regions.iter().map(|r| r.3).collect();
    let (spokes, configs) = w.start_spokes_in(&net, &budgets, &bin("aqueduct-spoke")).await;
    (net, w, spokes, configs)
}

/// Mounts `dataset` (following the region's active version) on the spoke of `config` and
/// checks every file read through FUSE equals `files`.
async fn assert_fuse_view(config: &Path, files: &[(String, Vec<u8>)]) {
    let mut local = local_client(&socket_of(config)).await;
    let mnt = config.parent().unwrap().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 0, &mnt).await.unwrap();
    for (path, want) in files {
        let (file, want) = (mnt.join(path), want.clone());
        let got = tokio::task::spawn_blocking(move || std::fs::read(&file).unwrap()).await.unwrap();
        assert!(got == want, "{} read through {} differs from the source", path, mnt.display());
    }
}

fn distinct(m: &Manifest) -> u64 {
    m.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_regions_behind_shaped_links_serve_the_source_on_every_node() {
    if !aqueduct_e2e::netns::available() || !can_mount_fuse() {
        return;
    }
    let namespaces;
    {
        // 100 Mbit/s and 50 Mbit/s links.
        let (net, mut w, _spokes, configs) = start(&[("eu", 2, 12_500_000, OPEN), ("us", 2, 6_250_000, OPEN)]).await;
        namespaces = net.namespaces();
        assert_eq!(namespaces.len(), 6, "{namespaces:?}");
        let files = write_model(&w.data, 1);
        w.snapshot().await;
        w.rollout(1, &["eu", "us"]).await;
        let rows = w.wait_ready(1).await;
        let m1 = w.manifest(1).await;
        for row in &rows {
            assert_eq!(row.relayed_bytes, distinct(&m1), "region {} pulled more than one copy", row.region);
            assert_eq!(row.nodes.iter().filter(|n| n.phase() == pb::Phase::Ready).count(), 2, "{row:?}");
        }
        for config in configs.iter().flatten() {
            assert_fuse_view(config, &files).await;
        }
    }
    // Dropped: no namespace and no mount of this test is left.
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout;
    let left = String::from_utf8_lossy(&left);
    for ns in &namespaces {
        assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(ns)), "{ns} was left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_link_that_goes_down_mid_transfer_and_comes_back_completes_without_refetching() {
    if !aqueduct_e2e::netns::available() || !can_mount_fuse() {
        return;
    }
    // 4 MiB/s: the 12 MiB model takes about three seconds.
    let (net, mut w, _spokes, configs) = start(&[("eu", 2, 4 * MIB, OPEN)]).await;
    let files = write_model(&w.data, 2);
    w.snapshot().await;
    w.rollout(1, &["eu"]).await;
    let total = w.manifest(1).await.total_bytes();
    for _ in 0..400 {
        if w.status(1).await[0].nodes.iter().any(|n| n.cached_bytes >= total / 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    net.cut(0);
    // What the region holds (distinct chunks over both nodes' stores) stops growing: nothing
    // crosses a cut link (the spokes may still copy from each other inside the region).
    let held = |w: &World| -> HashSet<Digest> {
        (1..=2).flat_map(|i| stored_chunks(&w.root.join(format!("spoke-eu-{i}/store"))).into_keys()).collect()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = held(&w);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = held(&w);
    assert_eq!(before.len(), after.len(), "chunks crossed a cut link");
    assert_ne!(w.status(1).await[0].phase(), pb::Phase::Ready, "the rollout finished before the link was cut");
    net.restore(0);
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    assert_eq!((rows[0].relayed_bytes, rows[0].refetched_bytes), (distinct(&m1), 0), "a chunk crossed the link twice");
    assert_fuse_view(&configs[0][1], &files).await;
    drop(net);
}

/// Waits until some spoke of the first region's row holds `part` of the version.
async fn wait_progress(w: &mut World, part: f64) {
    let total = w.manifest(1).await.total_bytes() as f64;
    for _ in 0..800 {
        if w.status(1).await[0].nodes.iter().any(|n| n.cached_bytes as f64 >= total * part) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the rollout never reached {part} of the version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_restarted_mid_rollout_and_a_spoke_killed_and_restarted_still_complete() {
    if !aqueduct_e2e::netns::available() || !can_mount_fuse() {
        return;
    }
    let (net, mut w, mut spokes, configs) = start(&[("eu", 2, 4 * MIB, OPEN)]).await;
    let files = write_model(&w.data, 3);
    w.snapshot().await;
    w.rollout(1, &["eu"]).await;
    wait_progress(&mut w, 0.2).await;
    w.restart_hub().await;
    wait_progress(&mut w, 0.5).await;
    // eu-1 dies with SIGKILL and comes back on the same store.
    spokes.0[0].kill().unwrap();
    spokes.0[0].wait().unwrap();
    spokes.0[0] = w.start_spoke_in(&net, &net.regions[0].nodes[0], &configs[0][0], &bin("aqueduct-spoke"));
    // The region is Ready as soon as its live spokes are; a spoke still reconnecting to the
    // restarted hub reports in when it is back.
    w.wait_ready(1).await;
    let mut rows = Vec::new();
    for _ in 0..600 {
        rows = w.status(1).await;
        if rows[0].nodes.iter().filter(|n| n.phase() == pb::Phase::Ready).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows[0].nodes.iter().filter(|n| n.phase() == pb::Phase::Ready).count(), 2, "{:?}", rows[0].nodes);
    let m1 = w.manifest(1).await;
    println!(
        "relayed {} bytes for {} distinct after a hub restart and a spoke kill",
        rows[0].relayed_bytes,
        distinct(&m1)
    );
    for config in &configs[0] {
        assert_fuse_view(config, &files).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_holds_a_budget_below_its_link_and_fills_a_link_below_its_budget() {
    if !aqueduct_e2e::netns::available() || !can_mount_fuse() {
        return;
    }
    // Both links carry 8 MiB/s; "held" may pull 2 MiB/s, "open" 64 MiB/s.
    let (_net, mut w, _spokes, _configs) =
        start(&[("held", 1, 8 * MIB, 2 * MIB), ("open", 1, 8 * MIB, 64 * MIB)]).await;
    write_model(&w.data, 4);
    w.snapshot().await;
    let total = w.manifest(1).await.total_bytes();
    let started = std::time::Instant::now();
    w.rollout(1, &["held", "open"]).await;
    let mut ready: Vec<(String, f64)> = Vec::new();
    while ready.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "the rollout did not finish: {ready:?}");
        for row in w.status(1).await {
            assert_ne!(row.phase(), pb::Phase::Failed, "{}: {}", row.region, row.reason);
            if row.phase() == pb::Phase::Ready && !ready.iter().any(|(r, _)| *r == row.region) {
                ready.push((row.region.clone(), started.elapsed().as_secs_f64()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = |region: &str| ready.iter().find(|(r, _)| r == region).unwrap().1;
    let mib = total as f64 / MIB as f64;
    println!(
        "{mib:.1} MiB: held (2 MiB/s budget, 8 MiB/s link) {:.2} s = {:.2} MiB/s; open (64 MiB/s budget, 8 MiB/s link) {:.2} s = {:.2} MiB/s",
        seconds("held"),
        mib / seconds("held"),
        seconds("open"),
        mib / seconds("open")
    );
    // The budget is a limit: past the first burst (2 MiB), no faster than 2 MiB/s.
    let floor = (mib - 2.0) / 2.0;
    assert!(seconds("held") >= floor * 0.95, "held pulled {mib:.1} MiB in {:.2} s: over its budget", seconds("held"));
    // The open region was held by its link, not by a budget like held's.
    assert_eq!(ready[0].0, "open", "the region with the open budget was not the first done: {ready:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_datasets_rolled_out_at_once_share_their_region_s_budget() {
    if !aqueduct_e2e::netns::available() || !can_mount_fuse() {
        return;
    }
    // A 16 MiB/s link with a 3 MiB/s budget, and two models of about 12 MiB each.
    let (_net, mut w, _spokes, configs) = start(&[("eu", 1, 16 * MIB, 3 * MIB)]).await;
    let llama = write_model(&w.data, 5);
    let mistral_dir = w.add_dataset("mistral").await;
    write_model(&mistral_dir, 6);
    let (a, b) = (w.snapshot().await, w.snapshot_of("mistral").await);
    let started = std::time::Instant::now();
    w.rollout_of("llama", 1, &["eu"], "").await;
    w.rollout_of("mistral", 1, &["eu"], "").await;
    loop {
        let rows = w.admin.status(pb::StatusRequest::default()).await.unwrap().into_inner().rows;
        if let Some(failed) = rows.iter().find(|r| r.phase() == pb::Phase::Failed) {
            panic!("{}: {}", failed.dataset, failed.reason);
        }
        if rows.len() == 2 && rows.iter().all(|r| r.phase() == pb::Phase::Ready) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the rollouts did not finish: {rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mib = (a.bytes + b.bytes) as f64 / MIB as f64;
    println!(
        "two datasets, {mib:.1} MiB together, under one 3 MiB/s budget: {seconds:.2} s = {:.2} MiB/s",
        mib / seconds
    );
    // One budget for the region, not one per dataset: past the first burst, 3 MiB/s together.
    let floor = (mib - 2.0) / 3.0;
    assert!(seconds >= floor * 0.95, "{mib:.1} MiB in {seconds:.2} s: the datasets did not share the budget");
    assert_fuse_view(&configs[0][0], &llama).await;
}
