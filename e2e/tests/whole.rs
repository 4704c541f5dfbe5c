//! Warm reads by FUSE passthrough: the holder assembles verified whole copies of a mounted
//! version's files (`DATA_DIR/files`) and hands them to the kernel; a copy that does not verify
//! is never passed through; with whole copies off, the copy route serves (real FUSE, a real hub
//! over mutual TLS and S3; needs root and /dev/fuse).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_e2e::{World, io, local_client, mount_when_known, socket_of, world};
use aqueduct_proto::holder::v1 as held;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::{can_mount_fuse, noise};

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("AQUEDUCT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A version of three files, two of them the same bytes (one whole copy for both).
async fn model(w: &mut World) -> Vec<(String, Vec<u8>)> {
    let big = noise(12 << 20, 7);
    let files = vec![
        ("config.json".to_string(), b"{\"layers\": 32}".to_vec()),
        ("model.safetensors".to_string(), big.clone()),
        ("same/model.safetensors".to_string(), big),
    ];
    for (path, bytes) in &files {
        let p = w.data.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    w.snapshot().await;
    files
}

/// The holder's List answer (what it reports of whole copies and passthrough).
async fn holder_list(data_dir: &Path) -> held::ListResponse {
    let mut holder = aqueduct_spoke::holder::connect(&data_dir.join("holder.sock")).await.unwrap();
    holder.list(local::ListMountsRequest {}).await.unwrap().into_inner()
}

/// Waits until the holder has `ready` verified whole copies and nothing pending.
async fn wait_for_copies(data_dir: &Path, ready: u64) -> held::WholeFiles {
    for _ in 0..600 {
        if let Some(whole) = holder_list(data_dir).await.whole
            && whole.ready >= ready
            && whole.pending == 0
        {
            return whole;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the holder made no {ready} whole copies in 60 s: {:?}", holder_list(data_dir).await.whole);
}

async fn assert_read(mnt: &Path, files: &[(String, Vec<u8>)]) {
    for (path, bytes) in files {
        let p = mnt.join(path);
        let read = io(move || std::fs::read(p)).await.unwrap();
        assert!(&read == bytes, "{path} read through the mount differs from the source");
    }
}

fn copies(data_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(data_dir.join("files")).unwrap().flatten().map(|e| e.path()).collect();
    found.sort();
    found
}

/// A world with [`model`] as v1, a region `eu` behind a link of `rate` (whole copies off
/// unless `whole`), its spoke, and v1 mounted at `ROOT/mnt` (after v1 is Ready, or while it
/// still crosses the link when `before_ready`).
struct Mounted {
    w: World,
    files: Vec<(String, Vec<u8>)>,
    data_dir: PathBuf,
    _spoke: tokio_util::sync::CancellationToken,
    local: aqueduct_proto::spoke::v1::local_client::LocalClient<tonic::transport::Channel>,
    mnt: PathBuf,
}

async fn mounted(rate: u64, whole: bool, before_ready: bool) -> Mounted {
    let mut w = world(aqueduct_e2e::SourceKind::S3).await;
    let files = model(&mut w).await;
    let config = w.region("eu", rate).await;
    if !whole {
        aqueduct_e2e::holders::without_whole_files(&config);
    }
    let data_dir = config.parent().unwrap().join("store");
    let spoke = w.start_spoke(&config);
    let mut local = local_client(&socket_of(&config)).await;
    w.rollout(1, &["eu"]).await;
    if !before_ready {
        w.wait_ready(1).await;
    }
    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 1, &mnt).await.unwrap();
    Mounted { w, files, data_dir, _spoke: spoke, local, mnt }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_reads_pass_through_to_verified_whole_copies_and_never_to_a_corrupt_one() {
    if !can_mount_fuse() {
        return;
    }
    logs();
    let Mounted { w, files, data_dir, _spoke, mut local, mnt } = mounted(64 << 30, true, false).await;

    // Two copies for three files (two share their bytes), read-only, byte-equal.
    let whole = wait_for_copies(&data_dir, 2).await;
    assert_eq!((whole.ready, whole.rejected), (2, 0), "{whole:?}");
    assert!(!whole.passthrough_unavailable, "this kernel (6.9+) and root can pass through: {whole:?}");
    let on_disk = copies(&data_dir);
    assert_eq!(on_disk.len(), 2, "{on_disk:?}");
    for copy in &on_disk {
        assert_eq!(std::fs::metadata(copy).unwrap().permissions().mode() & 0o777, 0o444, "{}", copy.display());
    }
    assert_read(&mnt, &files).await;
    let whole = holder_list(&data_dir).await.whole.unwrap();
    assert!(whole.passthrough_opens >= 3, "the reads were not passed through: {whole:?}");

    // A new holder with a flipped byte in the big file's copy: the copy is checked before any
    // passthrough, so every read returns the source's bytes; the rotten copy is replaced.
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
    aqueduct_e2e::holders::stop_holders(&w.root);
    let big = on_disk.iter().find(|p| std::fs::metadata(p).unwrap().len() == 12 << 20).unwrap().clone();
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[5 << 20] ^= 0x40;
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&big, &bytes).unwrap();
    mount_when_known(&mut local, "llama", 1, &mnt).await.unwrap();
    assert_read(&mnt, &files).await;
    let whole = wait_for_copies(&data_dir, 2).await;
    assert_eq!(whole.rejected, 1, "the corrupt copy was not caught: {whole:?}");
    assert_read(&mnt, &files).await;
    assert!(std::fs::read(&big).unwrap() == files[1].1, "the rotten copy was not made again from the store");
    let whole = holder_list(&data_dir).await.whole.unwrap();
    println!("after the corrupt copy: {whole:?}");
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_whole_copies_off_reads_take_the_copy_route() {
    if !can_mount_fuse() {
        return;
    }
    logs();
    let Mounted { w: _w, files, data_dir, _spoke, mut local, mnt } = mounted(64 << 30, false, false).await;
    assert_read(&mnt, &files).await;
    let list = holder_list(&data_dir).await;
    assert!(list.whole.is_none(), "whole copies are off: {:?}", list.whole);
    assert!(list.reads.unwrap().bytes >= 24 << 20, "the reads did not go through the holder");
    assert!(!data_dir.join("files").exists());
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_made_before_its_chunks_arrived_gets_whole_copies_once_they_are_here() {
    if !can_mount_fuse() {
        return;
    }
    logs();
    // A slow link: the mount is made while the version is still crossing it, so the offer the
    // mount makes finds no file whole.
    let Mounted { mut w, files, data_dir, _spoke, mut local, mnt } = mounted(4 << 20, true, true).await;
    println!("at the mount: {:?}", holder_list(&data_dir).await.whole);
    w.wait_ready(1).await;

    // Opening the files now that their chunks are here offers them: copies are made, and the
    // next opens pass through, byte-equal to the source.
    assert_read(&mnt, &files).await;
    let whole = wait_for_copies(&data_dir, 2).await;
    assert_eq!((whole.ready, whole.rejected), (2, 0), "{whole:?}");
    let before = whole.passthrough_opens;
    assert_read(&mnt, &files).await;
    let whole = holder_list(&data_dir).await.whole.unwrap();
    assert!(whole.passthrough_opens >= before + 2, "the opens after the copies were not passed through: {whole:?}");
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}

/// Bytes of every file under `dir` (recursively; 0 if there is none).
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m)))
        .map(|(p, m)| if m.is_dir() { du(&p) } else { m.len() })
        .sum()
}

/// Sets a spoke's disk quota (watermarks 0.9 and 0.6) and its whole copies' budget.
fn with_quota(config: &Path, disk: &str, whole_files: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let line = format!("whole_files = \"{whole_files}\"\n");
    let text = if text.contains("[mounts]\n") {
        text.replacen("[mounts]\n", &format!("[mounts]\n{line}"), 1)
    } else {
        format!("{text}[mounts]\n{line}")
    };
    let cache = format!("[cache]\ndisk = \"{disk}\"\nhigh_watermark = 0.9\nlow_watermark = 0.6\n");
    std::fs::write(config, format!("{text}{cache}")).unwrap();
}

/// What the spoke's store takes on disk: its chunks (and chunk writes under way) and the
/// holder's whole copies.
fn store_on_disk(data_dir: &Path) -> (u64, u64) {
    (du(&data_dir.join("chunks")) + du(&data_dir.join("tmp")), du(&data_dir.join("files")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_copies_count_in_the_disk_quota_and_passthrough_opens_in_the_metrics() {
    if !can_mount_fuse() {
        return;
    }
    logs();
    const MIB: u64 = 1 << 20;
    const QUOTA: u64 = 30 * MIB;
    let mut w = world(aqueduct_e2e::SourceKind::S3).await;
    let config = w.region("eu", 64 << 30).await;
    // A disk quota of 30 MiB (watermarks 0.9 and 0.6) of which whole copies may take 12 MiB,
    // for versions of one 8 MiB file that share nothing, of a dataset that keeps only its
    // newest version: v1, v2, v3 (24 MiB of chunks) fit below the high watermark; once v3
    // is active, v1 is no longer retained. A whole copy of v3's file (8 MiB) on top of them
    // would take the store to 32 MiB, over the quota, unless chunks make room.
    with_quota(&config, "30MiB", "12MiB");
    let metrics = aqueduct_e2e::with_spoke_metrics(&config);
    let keep = aqueduct_proto::hub::v1::UpdateDatasetRequest {
        name: "llama".into(),
        keep_versions: Some(1),
        ..Default::default()
    };
    w.admin.update_dataset(keep).await.unwrap();
    let data_dir = config.parent().unwrap().join("store");
    let _spoke = w.start_spoke(&config);
    let mut local = local_client(&socket_of(&config)).await;
    let mut manifests = Vec::new();
    let mut last = Vec::new();
    for (version, seed) in [(1, 101), (2, 202), (3, 303)] {
        last = noise(8 << 20, seed);
        std::fs::write(w.data.join("model.safetensors"), &last).unwrap();
        w.snapshot().await;
        w.rollout(version, &["eu"]).await;
        w.wait_ready(version).await;
        manifests.push(w.manifest(version).await);
    }
    let held = aqueduct_e2e::stored_chunks(&data_dir);
    let all_held = |m: &aqueduct_proto::Manifest, held: &std::collections::HashMap<_, _>| {
        m.distinct_chunks().iter().all(|(d, _)| held.contains_key(d))
    };
    assert!(manifests.iter().all(|m| all_held(m, &held)), "a version gave way before any whole copy was made");
    let (chunks, files) = store_on_disk(&data_dir);
    println!("before the mount: chunks {chunks} bytes, whole copies {files} bytes");
    assert!(chunks >= 24 * MIB && chunks + files <= QUOTA, "chunks {chunks}, whole copies {files}");

    // Mount v3: its file gets a whole copy, which counts in the quota: v1's chunks (not
    // retained) make room; v2's (kept for a rollback) and v3's (active) stay.
    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 3, &mnt).await.unwrap();
    let whole = wait_for_copies(&data_dir, 1).await;
    assert_eq!(whole.ready_bytes, 8 * MIB, "{whole:?}");
    let mut within = None;
    for _ in 0..300 {
        let (chunks, files) = store_on_disk(&data_dir);
        if files >= 8 * MIB && chunks + files <= QUOTA {
            within = Some((chunks, files));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (chunks, files) = store_on_disk(&data_dir);
    let Some((chunks, files)) = within else {
        panic!("chunks {chunks} and whole copies {files} bytes stay above the disk quota of {QUOTA}")
    };
    println!("after the whole copy: chunks {chunks} bytes, whole copies {files} bytes, quota {QUOTA}");
    let held = aqueduct_e2e::stored_chunks(&data_dir);
    assert!(all_held(&manifests[1], &held) && all_held(&manifests[2], &held), "a retained version was evicted");
    assert!(!all_held(&manifests[0], &held), "v1 did not give way to the whole copy");

    // Reads through the mount pass through to the copy, byte-equal; the spoke's metrics
    // count the opens, the copy and what it takes of the quota.
    let files = vec![("model.safetensors".to_string(), last)];
    assert_read(&mnt, &files).await;
    assert_read(&mnt, &files).await;
    let body = aqueduct_e2e::scrape(metrics).await;
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in the spoke's metrics:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    };
    let opens = value("aqueduct_spoke_passthrough_opens_total");
    println!(
        "metrics: passthrough opens {opens}, whole copies ready {} ({} bytes), on disk {} bytes, passthrough unavailable {}",
        value("aqueduct_spoke_whole_files_ready"),
        value("aqueduct_spoke_whole_files_ready_bytes"),
        value("aqueduct_spoke_whole_files_disk_bytes"),
        value("aqueduct_spoke_passthrough_unavailable")
    );
    assert!(opens >= 2.0, "the passthrough opens are not in the metrics:\n{body}");
    assert_eq!(value("aqueduct_spoke_whole_files_ready"), 1.0);
    assert_eq!(value("aqueduct_spoke_whole_files_ready_bytes"), (8 * MIB) as f64);
    assert_eq!(value("aqueduct_spoke_whole_files_disk_bytes"), (8 * MIB) as f64);
    assert_eq!(value("aqueduct_spoke_passthrough_unavailable"), 0.0);
    assert_eq!(value("aqueduct_spoke_whole_files_rejected_total"), 0.0);
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_copies_take_only_what_pinned_chunks_leave_of_the_disk_quota() {
    if !can_mount_fuse() {
        return;
    }
    logs();
    const MIB: u64 = 1 << 20;
    const QUOTA: u64 = 20 * MIB;
    let mut w = world(aqueduct_e2e::SourceKind::S3).await;
    let config = w.region("eu", 64 << 30).await;
    // A 12 MiB version, pinned (active, mounted), in a 20 MiB quota whose whole copies may
    // take 12 MiB: a copy of its file would take the store to 24 MiB, and its chunks cannot
    // make room. The copies get only what the pinned chunks leave (8 MiB): none is kept.
    with_quota(&config, "20MiB", "12MiB");
    let bytes = noise(12 << 20, 11);
    std::fs::write(w.data.join("model.safetensors"), &bytes).unwrap();
    w.snapshot().await;
    let data_dir = config.parent().unwrap().join("store");
    let _spoke = w.start_spoke(&config);
    let mut local = local_client(&socket_of(&config)).await;
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 1, &mnt).await.unwrap();
    let files = vec![("model.safetensors".to_string(), bytes)];
    // The holder may start a copy before the spoke's first limit reaches it: the copy then
    // goes at the next one. Waits for a settled holder (nothing pending, no copy ready).
    let mut settled = None;
    for _ in 0..300 {
        assert_read(&mnt, &files).await;
        let whole = holder_list(&data_dir).await.whole.unwrap();
        let (chunks, copies) = store_on_disk(&data_dir);
        if whole.pending == 0 && whole.ready == 0 && chunks + copies <= QUOTA {
            settled = Some((whole, chunks, copies));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((whole, chunks, copies)) = settled else {
        panic!(
            "the store stays above its quota: {:?}, {:?}",
            store_on_disk(&data_dir),
            holder_list(&data_dir).await.whole
        )
    };
    println!("settled: chunks {chunks} bytes, whole copies {copies} bytes, quota {QUOTA}: {whole:?}");
    assert!(chunks >= 12 * MIB, "the pinned version gave way");
    // Opens keep the copy route (none passed through), and read the source's bytes.
    assert_read(&mnt, &files).await;
    let after = holder_list(&data_dir).await.whole.unwrap();
    assert_eq!(after.passthrough_opens, whole.passthrough_opens, "an open passed through to a copy past the limit");
    assert_eq!(after.ready, 0, "a copy past what the pinned chunks leave was kept");
    let (chunks, copies) = store_on_disk(&data_dir);
    assert!(chunks + copies <= QUOTA, "chunks {chunks}, whole copies {copies}");
    local.unmount(local::UnmountRequest { mountpoint: mnt.display().to_string() }).await.unwrap();
}
