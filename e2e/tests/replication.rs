//! Replication end to end, in one process: a hub and spokes of two regions over real mutual
//! TLS on 127.0.0.1, a real S3 server as the source, spokes' chunk stores on disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aqueduct_e2e::{SourceKind, assert_store_holds, world};
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

fn write_model(dir: &Path, header_extra: usize) -> BTreeMap<&'static str, Vec<u8>> {
    let mut model = format!("{{\"__metadata__\":{{\"pad\":\"{}\"}}}}", "x".repeat(header_extra)).into_bytes();
    model.extend(noise(12 << 20, 21));
    let files = BTreeMap::from([
        ("model.safetensors", model),
        ("config.json", b"{\"hidden_size\": 4096}".to_vec()),
        ("tokenizer.json", noise(700 << 10, 22)),
    ]);
    for (path, bytes) in &files {
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_replicate_verified_and_v2_moves_only_new_chunks() {
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 0);
    let v1 = w.snapshot().await;
    let eu = w.region("eu", 1 << 30).await;
    let us = w.region("us", 1 << 30).await;
    w.start_spoke(&eu);
    w.start_spoke(&us);
    w.rollout(1, &["eu", "us"]).await;
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    for row in &rows {
        assert_eq!(row.cached_bytes, v1.bytes);
        assert_eq!(row.relayed_bytes, distinct, "region {} pulled more than the version's chunks", row.region);
    }
    for region in ["eu", "us"] {
        assert_store_holds(&w.root.join(format!("spoke-{region}/store")), &m1, &w.data);
    }

    // v2: the header grows, shifting everything after it, and the config changes.
    write_model(&w.data, 37);
    std::fs::write(w.data.join("config.json"), b"{\"hidden_size\": 8192}").unwrap();
    let v2 = w.snapshot().await;
    assert!(v2.new_bytes < v2.bytes / 4, "v2 should share most chunks: {} new of {}", v2.new_bytes, v2.bytes);
    w.rollout(2, &["eu", "us"]).await;
    let rows = w.wait_ready(2).await;
    let m2 = w.manifest(2).await;
    for row in &rows {
        assert_eq!(row.relayed_bytes, v2.new_bytes, "region {} moved more than v2's new chunks", row.region);
        assert_store_holds(&w.root.join(format!("spoke-{}/store", row.region)), &m2, &w.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_on_disk_is_found_and_fetched_again() {
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 0);
    w.snapshot().await;
    let eu = w.region("eu", 1 << 30).await;
    let spoke = w.start_spoke(&eu);
    w.rollout(1, &["eu"]).await;
    let before = w.wait_ready(1).await[0].relayed_bytes;
    spoke.cancel();

    // Rot one chunk on disk, then restart the spoke: it checks before it says Ready.
    let m1 = w.manifest(1).await;
    let victim = m1.file("model.safetensors").unwrap().chunks[3];
    let path = aqueduct_spoke::store::chunk_path(&w.root.join("spoke-eu/store"), &victim.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_ne!(Digest::of(&bytes), victim.digest);

    w.start_spoke(&eu);
    // Ready again only after the chunk was fetched once more, and nothing else was.
    let mut after = before;
    for _ in 0..600 {
        after = w.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows[0]
            .relayed_bytes;
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = w.wait_ready(1).await;
    assert_eq!(rows[0].relayed_bytes, before + u64::from(victim.length));
    assert_eq!(after, before + u64::from(victim.length));
    // The region stayed Ready (Ready stays Ready); the chunk lands once the spoke's write of
    // it has finished.
    let store = w.root.join("spoke-eu/store");
    for _ in 0..100 {
        if aqueduct_e2e::read_stored(&store, &victim.digest).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_store_holds(&store, &m1, &w.data);
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Unmounts a tmpfs when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_fails_the_rollout_clearly_and_corrupts_nothing() {
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "this test mounts a 4 MiB tmpfs and needs root; run the tests as root");
        eprintln!("skipped: mounting a small tmpfs for the spoke's store needs root");
        return;
    }
    let mut w = world(SourceKind::Dir).await;
    write_model(&w.data, 0);
    w.snapshot().await;
    let eu = w.region("eu", 1 << 30).await;
    let store = w.root.join("spoke-eu/store");
    std::fs::create_dir_all(&store).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&store)
        .status()
        .unwrap();
    assert!(status.success(), "mount -t tmpfs failed");
    let _mounted = Mounted(store.clone());
    w.start_spoke(&eu);
    w.rollout(1, &["eu"]).await;
    let mut row = None;
    for _ in 0..600 {
        let rows = w.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
        if rows[0].phase() == pb::Phase::Failed {
            row = Some(rows[0].clone());
            break;
        }
        assert_ne!(rows[0].phase(), pb::Phase::Ready, "a 13 MiB version fit in a 4 MiB store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = row.expect("the rollout never failed");
    // The region says which spoke failed, and why.
    assert_eq!(row.reason, "eu-1: cache full");
    // Whatever was stored is whole and verified; nothing half-written is left (once writes
    // already under way when the failure came have finished).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0, "a temporary file was left behind");
    let chunks = aqueduct_spoke::store::DiskStore::open(&store).unwrap();
    let manifest = w.manifest(1).await;
    let mut present = 0;
    for (digest, _) in manifest.distinct_chunks() {
        use aqueduct_spoke::store::ChunkStore;
        if chunks.get(&digest).unwrap().is_some() {
            present += 1;
        }
    }
    assert!(present > 0 && present < manifest.distinct_chunks().len(), "{present} chunks present");
}
