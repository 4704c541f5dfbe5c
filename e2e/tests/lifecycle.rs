//! The version lifecycle as a region lives it: two regions of two nodes behind shaped links,
//! a mount that follows the dataset with a file held open, and a rollback that completes in
//! every region with no chunk over either link (the uplinks' own counters), the open file
//! reading on in the version it opened and new opens seeing the version rolled back to; for
//! each cut-over policy (all-ready, per-region, manual with promote), and the same through a
//! tag moved back; then retention: after `gc`, a spoke's store holds exactly the chunks of the
//! versions the hub retains. Needs root, `ip`, `tc`, `nsenter` and FUSE (under `CI=true` a
//! missing one fails the test).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_e2e::netns::Topology;
use aqueduct_e2e::{Children, SourceKind, World, bin, local_client, mount_when_known, socket_of, world_at};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::{can_mount_fuse, noise};

const MIB: u64 = 1 << 20;

/// Writes version `seed` of the model: a large file that differs between versions, and a
/// small one that says which version it is.
fn write_model(dir: &Path, seed: u64) -> Vec<u8> {
    let big = noise(6 << 20, seed);
    std::fs::write(dir.join("model.safetensors"), &big).unwrap();
    std::fs::write(dir.join("version.txt"), format!("{seed}")).unwrap();
    big
}

async fn start() -> (Topology, World, Children, Vec<Vec<PathBuf>>) {
    // 8 MiB/s links, budgets above them.
    let mut net = Topology::build(&[("eu", 2, 8 * MIB), ("us", 2, 8 * MIB)]);
    let hosts: Vec<String> = net.regions.iter().map(|r| r.hub_ip.to_string()).collect();
    let mut w = world_at(SourceKind::S3, "0.0.0.0:0".parse().unwrap(), &hosts).await;
    net.mount_roots.push(w.root.clone());
    let (spokes, configs) = w.start_spokes_in(&net, &[1 << 30, 1 << 30], &bin("aqueduct-spoke")).await;
    (net, w, spokes, configs)
}

/// Rolls `version` out to both regions with `cut_over` (promoting it when manual) and waits
/// until both serve it.
async fn roll_forward(w: &mut World, version: u64, cut_over: pb::CutOver) {
    let req = pb::RolloutRequest {
        dataset: "llama".into(),
        version,
        regions: vec!["eu".into(), "us".into()],
        cut_over: cut_over.into(),
        ..Default::default()
    };
    w.admin.rollout(req).await.unwrap();
    w.wait_ready(version).await;
    if cut_over == pb::CutOver::Manual {
        let served = serving(w).await;
        assert!(served.iter().all(|(_, v)| *v != version), "manual: served before a promote: {served:?}");
        let req = pb::PromoteRequest { dataset: "llama".into(), version, regions: Vec::new() };
        let steps = w.admin.promote(req).await.unwrap().into_inner().regions;
        assert!(steps.iter().all(|s| s.switched), "{steps:?}");
    }
    wait_serving(w, version).await;
}

async fn serving(w: &mut World) -> Vec<(String, u64)> {
    let status = w.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    status.serving.into_iter().map(|s| (s.region, s.version)).collect()
}

async fn wait_serving(w: &mut World, version: u64) {
    for _ in 0..600 {
        let served = serving(w).await;
        if served.len() == 2 && served.iter().all(|(_, v)| *v == version) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the regions never both served v{version}: {:?}", serving(w).await);
}

/// Waits until the mount at `mnt` shows `version` to new opens.
async fn wait_shown(mnt: &Path, version: u64) {
    let file = mnt.join("version.txt");
    for _ in 0..600 {
        let f = file.clone();
        if tokio::task::spawn_blocking(move || std::fs::read_to_string(f)).await.unwrap().ok().as_deref()
            == Some(&version.to_string())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never showed v{version} to a new open", mnt.display());
}

fn relayed(rows: &[pb::StatusRow]) -> u64 {
    rows.iter().map(|r| r.relayed_bytes).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_completes_in_every_region_with_no_chunk_over_the_links_for_each_cut_over() {
    if !aqueduct_e2e::netns::available() || !can_mount_fuse() {
        return;
    }
    let (net, mut w, _spokes, configs) = start().await;
    let mut models = vec![Vec::new()];
    models.push(write_model(&w.data, 1));
    w.snapshot().await;
    roll_forward(&mut w, 1, pb::CutOver::AllReady).await;
    // A mount that follows the dataset on the first node of each region.
    let mut mounts = Vec::new();
    for region in &configs {
        let config = &region[0];
        let mut local = local_client(&socket_of(config)).await;
        let mnt = config.parent().unwrap().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        mount_when_known(&mut local, "llama", 0, &mnt).await.unwrap();
        wait_shown(&mnt, 1).await;
        mounts.push(mnt);
    }

    for (forward, cut_over) in [(2, pb::CutOver::AllReady), (3, pb::CutOver::PerRegion), (4, pb::CutOver::Manual)] {
        let back = forward - 1;
        models.push(write_model(&w.data, forward));
        w.snapshot().await;
        roll_forward(&mut w, forward, cut_over).await;
        for mnt in &mounts {
            wait_shown(mnt, forward).await;
        }
        // A reader holds the new version's big file open, part read.
        let held: Vec<(std::fs::File, Vec<u8>)> = mounts
            .iter()
            .map(|mnt| {
                let mut file = std::fs::File::open(mnt.join("model.safetensors")).unwrap();
                let mut first = vec![0u8; MIB as usize];
                file.read_exact(&mut first).unwrap();
                (file, first)
            })
            .collect();

        let before: Vec<u64> = (0..2).map(|r| net.sent_to(r)).collect();
        let relayed_before = relayed(&w.status(back).await) + relayed(&w.status(forward).await);
        let req = pb::RollbackRequest { dataset: "llama".into(), ..Default::default() };
        let steps = w.admin.rollback(req).await.unwrap().into_inner().regions;
        let seen: Vec<(String, u64, u64, bool)> =
            steps.into_iter().map(|s| (s.region, s.from, s.to, s.switched)).collect();
        assert_eq!(
            seen,
            [("eu".into(), forward, back, true), ("us".into(), forward, back, true)],
            "{cut_over:?}: both regions hold v{back} whole"
        );
        wait_serving(&mut w, back).await;
        for mnt in &mounts {
            wait_shown(mnt, back).await;
        }
        // New opens see the version rolled back to, whole and right.
        for mnt in &mounts {
            let got = std::fs::read(mnt.join("model.safetensors")).unwrap();
            assert!(got == models[back as usize], "{cut_over:?}: a new open of {} is not v{back}", mnt.display());
        }
        // The open files read on in the version they opened, to their end.
        for (mut file, first) in held {
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).unwrap();
            let whole = [first, rest].concat();
            assert!(whole == models[forward as usize], "{cut_over:?}: a file held open across the rollback changed");
        }
        let sent: Vec<u64> = (0..2).map(|r| net.sent_to(r) - before[r]).collect();
        let relayed_after = relayed(&w.status(back).await) + relayed(&w.status(forward).await);
        println!("{cut_over:?}: rollback v{forward} -> v{back}: {sent:?} bytes down the links (control traffic only)");
        assert_eq!(relayed_after, relayed_before, "{cut_over:?}: the hub relayed chunks for a rollback");
        // Watches, reports and TLS records only: far below one chunk (the model is 6 MiB).
        for (r, bytes) in sent.iter().enumerate() {
            assert!(*bytes < 256 << 10, "{cut_over:?}: {bytes} bytes went down region {r}'s link for a rollback");
        }
        // Forward again for the next policy.
        let req = pb::PromoteRequest { dataset: "llama".into(), version: forward, regions: Vec::new() };
        w.admin.promote(req).await.unwrap();
        wait_serving(&mut w, forward).await;
    }

    // The same through a tag: mounts that follow `stable` on the second node of each region
    // go back from v4 to v3 when the tag moves, with no chunk over the links.
    let tag = |version| pb::TagRequest { dataset: "llama".into(), name: "stable".into(), version, remove: false };
    w.admin.tag(tag(4)).await.unwrap();
    let mut tagged = Vec::new();
    for region in &configs {
        let config = &region[1];
        let mut local = local_client(&socket_of(config)).await;
        let mnt = config.parent().unwrap().join("mnt-stable");
        std::fs::create_dir_all(&mnt).unwrap();
        let request = aqueduct_proto::spoke::v1::MountRequest {
            dataset: "llama".into(),
            version: 0,
            mountpoint: mnt.display().to_string(),
            tag: "stable".into(),
        };
        let mut mounted = false;
        for _ in 0..300 {
            if local.mount(request.clone()).await.is_ok() {
                mounted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(mounted, "{} never mounted the tag", mnt.display());
        wait_shown(&mnt, 4).await;
        tagged.push(mnt);
    }
    let before: Vec<u64> = (0..2).map(|r| net.sent_to(r)).collect();
    w.admin.tag(tag(3)).await.unwrap();
    for mnt in &tagged {
        wait_shown(mnt, 3).await;
        assert!(std::fs::read(mnt.join("model.safetensors")).unwrap() == models[3], "{}", mnt.display());
    }
    let sent: Vec<u64> = (0..2).map(|r| net.sent_to(r) - before[r]).collect();
    println!("tag stable v4 -> v3: {sent:?} bytes down the links (control traffic only)");
    for (r, bytes) in sent.iter().enumerate() {
        assert!(*bytes < 256 << 10, "{bytes} bytes went down region {r}'s link for a tag move");
    }
    drop(net);
}

/// Per-version chunk sets, for what a store should hold.
fn chunks_of(manifests: &[&aqueduct_proto::Manifest]) -> std::collections::HashSet<aqueduct_proto::Digest> {
    manifests.iter().flat_map(|m| m.distinct_chunks().into_iter().map(|(d, _)| d)).collect()
}

/// keep = 2, five versions rolled out to a spoke that holds each whole, a mount showing v2:
/// `gc --dry-run` says v1 and v3 go, `gc` removes exactly those, and the spoke's store then
/// holds exactly the chunks of the retained versions (v2 for the mount, v4 kept for a
/// rollback, v5 served). The mount keeps reading. A mount that follows a tag switches when
/// the tag moves, through the real hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_gc_a_spoke_holds_exactly_the_retained_versions_and_a_tag_move_switches_its_mount() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = aqueduct_e2e::world(SourceKind::S3).await;
    let configs = w.region_of("eu", 1 << 30, 1).await;
    let _spoke = w.start_spoke(&configs[0]);
    let keep = pb::UpdateDatasetRequest { name: "llama".into(), keep_versions: Some(2), ..Default::default() };
    w.admin.update_dataset(keep).await.unwrap();
    let mut models = vec![Vec::new()];
    let mut manifests = Vec::new();
    for v in 1..=5u64 {
        models.push(write_model(&w.data, 10 + v));
        w.snapshot().await;
        w.rollout_as(v, &["eu"], "every-node").await;
        w.wait_ready(v).await;
        manifests.push(w.manifest(v).await);
    }
    let mut local = local_client(&socket_of(&configs[0])).await;
    let fixed = configs[0].parent().unwrap().join("mnt-v2");
    std::fs::create_dir_all(&fixed).unwrap();
    mount_when_known(&mut local, "llama", 2, &fixed).await.unwrap();
    // The hub hears of the mount with the spoke's next cache report.
    for _ in 0..300 {
        let list = w.admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
        if list.into_inner().versions[1].retained_by.iter().any(|r| r.contains("mount")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dry = w.admin.gc(pb::GcRequest { dry_run: true, dataset: String::new() }).await.unwrap().into_inner();
    assert_eq!(dry.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 3], "{dry:?}");
    let real = w.admin.gc(pb::GcRequest { dry_run: false, dataset: String::new() }).await.unwrap().into_inner();
    assert_eq!(real.versions, dry.versions, "gc removed something else than its dry run said");
    let freed: u64 = real.regions.iter().map(|r| r.bytes).sum();
    println!("gc removed v1 and v3; the region frees {freed} bytes");

    // The spoke sweeps once the removal reaches it (not in its first minute: sidecar leases).
    let store = w.root.join("spoke-eu-1/store");
    let want = chunks_of(&[&manifests[1], &manifests[3], &manifests[4]]);
    let mut held = std::collections::HashSet::new();
    for _ in 0..1200 {
        held = aqueduct_e2e::stored_chunks(&store).into_keys().collect();
        if held == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held.len(), want.len(), "the store holds other chunks than the retained versions'");
    assert!(held == want, "the store holds other chunks than the retained versions'");
    let got = std::fs::read(fixed.join("model.safetensors")).unwrap();
    assert!(got == models[2], "the mount of v2 changed");

    // A mount that follows the tag `stable`.
    let tag = |version| pb::TagRequest { dataset: "llama".into(), name: "stable".into(), version, remove: false };
    w.admin.tag(tag(4)).await.unwrap();
    let follows = configs[0].parent().unwrap().join("mnt-stable");
    std::fs::create_dir_all(&follows).unwrap();
    let request = aqueduct_proto::spoke::v1::MountRequest {
        dataset: "llama".into(),
        version: 0,
        mountpoint: follows.display().to_string(),
        tag: "stable".into(),
    };
    let mut mounted = None;
    for _ in 0..300 {
        match local.mount(request.clone()).await {
            Ok(info) => {
                mounted = Some(info.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let info = mounted.expect("the spoke never mounted the tag");
    assert_eq!((info.version, info.tag.as_str()), (4, "stable"));
    wait_shown(&follows, 14).await;
    w.admin.tag(tag(5)).await.unwrap();
    wait_shown(&follows, 15).await;
    assert!(std::fs::read(follows.join("model.safetensors")).unwrap() == models[5]);
}
