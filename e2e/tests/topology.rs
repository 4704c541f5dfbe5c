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

/// A topology of `regions` (name, nodes, link rate), a hub that every region reaches over its
/// uplink, and a spoke process on every node. Returns the configs per region.
async fn start(regions: &[(&str, usize, u64)]) -> (Topology, World, Children, Vec<Vec<PathBuf>>) {
    let mut net = Topology::build(regions);
    let hosts: Vec<String> = net.regions.iter().map(|r| r.hub_ip.to_string()).collect();
    let mut w = world_at(SourceKind::S3, "0.0.0.0:0".parse().unwrap(), &hosts).await;
    net.mount_roots.push(w.root.clone());
    let mut spokes = Children::default();
    let mut configs = Vec::new();
    for (r, &(_, _, rate)) in regions.iter().enumerate() {
        let region_configs = w.region_in(&net.regions[r], rate).await;
        for (node, config) in net.regions[r].nodes.iter().zip(&region_configs) {
            let log = w.root.join(format!("{}.log", node.name));
            let mut cmd = net.command(node, &bin("aqueduct-spoke"));
            cmd.args(["run", "--config"]).arg(config);
            spokes.0.push(spawn_in(cmd, &log));
        }
        configs.push(region_configs);
    }
    for &(name, nodes, _) in regions {
        w.wait_members(name, nodes).await;
    }
    (net, w, spokes, configs)
}

fn spawn_in(mut cmd: std::process::Command, log: &Path) -> std::process::Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    cmd.env("AQUEDUCT_LOG", "info").stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap()
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
        let (net, mut w, _spokes, configs) = start(&[("eu", 2, 12_500_000), ("us", 2, 6_250_000)]).await;
        namespaces = net.namespaces();
        assert_eq!(namespaces.len(), 6, "{namespaces:?}");
        let files = write_model(&w.data, 1);
        w.snapshot().await;
        w.rollout(1, &["eu", "us"]).await;
        let rows = w.wait_ready_settled(1).await;
        let m1 = w.manifest(1).await;
        for row in &rows {
            assert_eq!(row.relayed_bytes, distinct(&m1), "region {} pulled more than one copy", row.region);
            assert_eq!(row.nodes.iter().filter(|n| n.phase == "Ready").count(), 2, "{row:?}");
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
    let (net, mut w, _spokes, configs) = start(&[("eu", 2, 4 * MIB)]).await;
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
    assert_ne!(w.status(1).await[0].phase, "Ready", "the rollout finished before the link was cut");
    net.restore(0);
    let rows = w.wait_ready_settled(1).await;
    let m1 = w.manifest(1).await;
    assert_eq!((rows[0].relayed_bytes, rows[0].refetched_bytes), (distinct(&m1), 0), "a chunk crossed the link twice");
    assert_fuse_view(&configs[0][1], &files).await;
    drop(net);
}
