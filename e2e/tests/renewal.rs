//! Certificates renew under load: with 20 s node certificates (renewed at about 2/3 of their
//! lifetime), two spokes of a region replicate a version over a slow link, for longer than a
//! certificate lives, while a pod's FUSE mount reads it through one of them. Each spoke renews
//! its certificate (a new key, the same node) during the transfer, and nothing is interrupted:
//! the transfer completes, every read returns the right bytes, the spokes stay members of
//! their region throughout, and the link carries each chunk once.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use aqueduct_core::identity::Identity;
use aqueduct_e2e::{SourceKind, io, local_client, mount_when_known, socket_of, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::{can_mount_fuse, noise};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_renew_during_a_transfer_and_a_mount_with_nothing_interrupted() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::Dir).await;
    w.hub.config.enrol.node_certificate_lifetime = Duration::from_secs(20);
    w.hub.restart().await;
    let model = noise(40 * MIB, 17);
    std::fs::write(w.data.join("model.safetensors"), &model).unwrap();
    std::fs::write(w.data.join("config.json"), b"{\"layers\": 32}").unwrap();
    w.snapshot().await;
    // 40 MiB at 1.5 MiB/s: the transfer outlives a certificate.
    let configs = w.region_of("eu", 3 * MIB as u64 / 2, 2).await;
    let _spokes: Vec<_> = configs.iter().map(|c| w.start_spoke(c)).collect();
    w.wait_members("eu", 2).await;
    let kept: Vec<_> = configs.iter().map(|c| c.parent().unwrap().join("store/identity.pem")).collect();
    let enrolled: Vec<String> = kept.iter().map(|k| std::fs::read_to_string(k).unwrap()).collect();

    w.rollout(1, &["eu"]).await;
    let mut client = local_client(&socket_of(&configs[0])).await;
    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut client, "llama", 1, &mnt).await.unwrap();

    let started = Instant::now();
    let (mut reads, mut renewed_at) = (0usize, vec![None; kept.len()]);
    loop {
        // A range of the model and the config, through the mount: the right bytes, every time.
        let offset = (reads * 7 * MIB) % (model.len() - MIB);
        let (path, cfg) = (mnt.join("model.safetensors"), mnt.join("config.json"));
        let (range, config) = io(move || {
            let mut file = std::fs::File::open(path).unwrap();
            file.seek(SeekFrom::Start(offset as u64)).unwrap();
            let mut range = vec![0; MIB];
            file.read_exact(&mut range).unwrap();
            (range, std::fs::read(cfg).unwrap())
        })
        .await;
        assert!(range == model[offset..offset + MIB], "read {reads} at {offset} returned other bytes");
        assert_eq!(config, b"{\"layers\": 32}");
        reads += 1;
        for (i, k) in kept.iter().enumerate() {
            if renewed_at[i].is_none() && std::fs::read_to_string(k).unwrap() != enrolled[i] {
                renewed_at[i] = Some(started.elapsed());
            }
        }
        let regions = w.admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
        let members = regions.iter().find(|r| r.name == "eu").map_or(0, |r| r.members.len());
        assert_eq!(members, 2, "a spoke left its region (its session was interrupted) after {:?}", started.elapsed());
        let rows = w.status(1).await;
        assert_ne!(rows[0].phase(), pb::Phase::Failed, "{}", rows[0].reason);
        if rows[0].phase() == pb::Phase::Ready {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the transfer never completed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();
    let rows = w.status(1).await;
    println!(
        "transfer done in {took:?} with {reads} reads through the mount; certificates renewed at {renewed_at:?}; relayed {} B, refetched {} B",
        rows[0].relayed_bytes, rows[0].refetched_bytes
    );
    for (i, at) in renewed_at.iter().enumerate() {
        assert!(at.is_some(), "spoke {i}'s certificate was not renewed during the transfer ({took:?})");
        let text = std::fs::read_to_string(&kept[i]).unwrap();
        let node = Identity::Node { region: "eu".into(), node: format!("eu-{}", i + 1) };
        assert_eq!(Identity::from_pem(&text), Some(node), "renewed for the same node");
    }
    // The whole file, through the mount, once more.
    let path = mnt.join("model.safetensors");
    assert!(io(move || std::fs::read(path).unwrap()).await == model, "the mount's file differs");
    client.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}
