//! Mounts outlive the spoke: the node's FUSE holder serves them while the spoke is killed,
//! restarted, or replaced by another binary, and reads in flight stall for the restart and
//! then finish with the right bytes (real FUSE, a real hub over mutual TLS and S3; needs root
//! and /dev/fuse).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aqueduct_e2e::kubelet::{self, unpublish};
use aqueduct_e2e::{Children, SourceKind, World, bin, local_client, mount_when_known, socket_of, spawn_logged, world};
use aqueduct_proto::csi::v1 as csi;
use aqueduct_proto::csi::v1::node_client::NodeClient;
use aqueduct_testkit::{can_mount_fuse, noise};
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
/// The file the readers stream: large against the link, so that a read takes seconds.
const BIG: usize = 24 << 20;
/// The region's link: the big file takes about 8 s to come over it.
const RATE: u64 = 3 * MIB;

/// This process's mounts under `root`: (mount id, mount point), from /proc/self/mountinfo.
fn mounts_under(root: &Path) -> Vec<(String, PathBuf)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found: Vec<(String, PathBuf)> = table
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = PathBuf::from(fields.get(4)?);
            point.starts_with(root).then(|| (fields[0].to_string(), point))
        })
        .collect();
    found.sort();
    found
}

/// The CSI node service on the spoke's socket, once it answers.
async fn csi_node(socket: &Path) -> NodeClient<Channel> {
    for _ in 0..200 {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            return NodeClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no CSI node plugin answers on {}", socket.display());
}

/// A publish of `llama@v1` at `target`, allowed to start before the version is Ready (so that
/// its reads come over the slow link).
fn publish(volume_id: &str, target: &Path) -> csi::NodePublishVolumeRequest {
    kubelet::publish(volume_id, target, &[("dataset", "llama"), ("version", "1"), ("startBeforeReady", "true")])
}

/// The kubelet's target path of volume `pv` for pod `uid`.
fn target_of(w: &World, uid: &str, pv: &str) -> PathBuf {
    w.root.join(format!("kubelet/pods/{uid}/volumes/kubernetes.io~csi/{pv}/mount"))
}

/// A region `eu` behind a link of `rate` whose spoke serves the CSI node plugin.
async fn csi_region(w: &mut World, rate: u64) -> PathBuf {
    let config = w.region("eu", rate).await;
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[csi]\nsocket = \"csi.sock\"\nready_timeout = \"10m\"\n");
    std::fs::write(&config, text).unwrap();
    config
}

/// A reader streaming `path` in 256 KiB steps: its progress, and at the end the BLAKE3 of what
/// it read, or the error it saw.
struct Reader {
    progress: Arc<AtomicU64>,
    done: std::thread::JoinHandle<std::io::Result<(blake3::Hash, u64)>>,
}

fn stream(path: PathBuf) -> Reader {
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let done = std::thread::spawn(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0; 256 << 10];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            seen.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok((hasher.finalize(), seen.load(Ordering::Relaxed)))
    });
    Reader { progress, done }
}

/// Reads through a spoke-hosted mount and through a CSI-published target survive the spoke's
/// SIGKILL and a restart (of the same binary, or of a copy of it: an upgrade).
async fn survive(copy_binary: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("AQUEDUCT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mut w = world(SourceKind::S3).await;
    let big = noise(BIG, 41);
    std::fs::write(w.data.join("model.safetensors"), &big).unwrap();
    std::fs::write(w.data.join("config.json"), b"{\"layers\": 32}").unwrap();
    let want = blake3::hash(&big);
    w.snapshot().await;
    let config = csi_region(&mut w, RATE).await;
    let socket = socket_of(&config);
    let data_dir = config.parent().unwrap().join("store");
    let spoke = bin("aqueduct-spoke");
    let log = w.root.join("spoke.log");
    let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), config.as_os_str()];
    let mut spokes = Children(vec![spawn_logged(&spoke, &args, &log)]);
    w.rollout(1, &["eu"]).await;
    let mut local = local_client(&socket).await;

    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 1, &mnt).await.unwrap();
    let target = target_of(&w, "pod-a", "pv-llama");
    let mut node = csi_node(&data_dir.join("csi.sock")).await;
    node.node_publish_volume(publish("pv-llama", &target)).await.unwrap();
    let before = mounts_under(&w.root);
    for point in [&mnt, &target, &data_dir.join("csi/mounts/llama@v1")] {
        assert!(before.iter().any(|(_, p)| p == point), "{} is not mounted: {before:?}", point.display());
    }

    // Two readers stream the big file, through the spoke-hosted mount and through the pod's
    // CSI target, while its chunks come over the slow link.
    let readers = [stream(mnt.join("model.safetensors")), stream(target.join("model.safetensors"))];
    let started = Instant::now();
    while readers.iter().any(|r| r.progress.load(Ordering::Relaxed) < 2 * MIB) {
        assert!(readers.iter().all(|r| !r.done.is_finished()), "a reader ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The spoke is killed mid-read.
    spokes.0[0].kill().unwrap();
    spokes.0[0].wait().unwrap();
    let at_kill: Vec<u64> = readers.iter().map(|r| r.progress.load(Ordering::Relaxed)).collect();
    println!("spoke SIGKILLed {:?} into the read, readers at {at_kill:?} of {BIG} bytes", started.elapsed());
    assert!(at_kill.iter().all(|&p| p < BIG as u64), "a reader was done before the kill: {at_kill:?}");
    // While it is down, the readers wait: no error.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in &readers {
        assert!(!r.done.is_finished(), "a reader ended while the spoke was down");
    }

    // It starts again: the same binary, or a copy of it (a new version of the spoke).
    let next = if copy_binary {
        let dir = w.root.join("next");
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("aqueduct-spoke");
        std::fs::copy(&spoke, &copy).unwrap();
        copy
    } else {
        spoke.clone()
    };
    let restarted = Instant::now();
    spokes.0[0] = spawn_logged(&next, &args, &log);
    for r in readers {
        let (hash, bytes) =
            tokio::task::spawn_blocking(move || r.done.join().unwrap()).await.unwrap().expect("a reader saw an error");
        assert_eq!(bytes, BIG as u64);
        assert_eq!(hash, want, "a reader read other bytes than the source's");
    }
    println!(
        "readers finished {:?} after the restart, {:?} after they started",
        restarted.elapsed(),
        started.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("adopted the mounts the holder serves"), "the new spoke did not adopt the mounts:\n{text}");
    assert_eq!(mounts_under(&w.root), before, "the mounts changed across the restart");
    // The new spoke lists the mounts it adopted.
    let mut local = local_client(&socket).await;
    let listed = local.list_mounts(aqueduct_proto::spoke::v1::ListMountsRequest {}).await.unwrap().into_inner();
    let mut points: Vec<PathBuf> = listed.mounts.iter().map(|m| PathBuf::from(&m.mountpoint)).collect();
    points.sort();
    assert_eq!(points, [mnt.clone(), data_dir.join("csi/mounts/llama@v1")]);
    // The CSI target reads with no new publish; a repeated publish changes nothing.
    let (dir, want_config) = (target.clone(), b"{\"layers\": 32}".to_vec());
    tokio::task::spawn_blocking(move || assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), want_config))
        .await
        .unwrap();
    let mut node = csi_node(&data_dir.join("csi.sock")).await;
    node.node_publish_volume(publish("pv-llama", &target)).await.unwrap();
    assert_eq!(mounts_under(&w.root), before, "a repeated publish changed the mounts");

    // A spoke's SIGTERM leaves every mount; the holder's SIGTERM takes them all.
    aqueduct_e2e::signal(&spokes.0[0], "TERM");
    spokes.0[0].wait().unwrap();
    assert_eq!(mounts_under(&w.root), before, "a spoke's SIGTERM changed the mounts");
    aqueduct_e2e::holders::stop_holders(&w.root);
    assert_eq!(mounts_under(&w.root), [], "a mount outlived the holder");
    assert!(
        aqueduct_e2e::holders::holder_pids(&w.root).iter().all(|&p| !aqueduct_e2e::holders::running(p)),
        "the holder still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_flight_survive_a_spoke_killed_and_started_again() {
    if can_mount_fuse() {
        survive(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_flight_survive_a_spoke_replaced_by_a_new_binary() {
    if can_mount_fuse() {
        survive(true).await;
    }
}

/// A publication whose pod went while no spoke ran is cleaned up when the next one starts: its
/// bind goes, and so does the share with no user left; a publication whose pod is still there
/// is kept, and one whose bind was lost is bound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_spoke_cleans_up_the_publications_of_pods_that_went() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::S3).await;
    std::fs::write(w.data.join("config.json"), b"{\"layers\": 32}").unwrap();
    std::fs::write(w.data.join("model.safetensors"), noise(1 << 20, 5)).unwrap();
    w.snapshot().await;
    let config = csi_region(&mut w, 1 << 30).await;
    let data_dir = config.parent().unwrap().join("store");
    let spoke = bin("aqueduct-spoke");
    let log = w.root.join("spoke.log");
    let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), config.as_os_str()];
    let mut spokes = Children(vec![spawn_logged(&spoke, &args, &log)]);
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    let mut node = csi_node(&data_dir.join("csi.sock")).await;
    let [gone, kept, lost] = ["gone", "kept", "lost"].map(|uid| target_of(&w, uid, "pv-llama"));
    for t in [&gone, &kept, &lost] {
        node.node_publish_volume(publish("pv-llama", t)).await.unwrap();
    }
    let share = data_dir.join("csi/mounts/llama@v1");
    assert_eq!(mounts_under(&w.root).len(), 4, "{:?}", mounts_under(&w.root));

    // While no spoke runs, one pod goes (the kubelet removes its directory) and another loses
    // its bind.
    spokes.0[0].kill().unwrap();
    spokes.0[0].wait().unwrap();
    for t in [&gone, &lost] {
        assert!(std::process::Command::new("umount").arg("-l").arg(t).status().unwrap().success());
    }
    std::fs::remove_dir_all(w.root.join("kubelet/pods/gone")).unwrap();
    spokes.0[0] = spawn_logged(&spoke, &args, &log);
    let mut node = csi_node(&data_dir.join("csi.sock")).await;

    let points: Vec<PathBuf> = mounts_under(&w.root).into_iter().map(|(_, p)| p).collect();
    assert!(!points.contains(&gone), "the gone pod's target is still mounted");
    for t in [&kept, &lost, &share] {
        assert!(points.contains(t), "{} is not mounted: {points:?}", t.display());
    }
    let recorded = aqueduct_spoke::csi::publications::load(&data_dir.join("csi/publications.json")).unwrap();
    let mut targets: Vec<&Path> = recorded.iter().map(|p| p.target.as_path()).collect();
    targets.sort();
    assert_eq!(targets, [kept.as_path(), lost.as_path()], "the stale publication is still recorded");
    assert_eq!(recorded[0].pod_uid.as_deref(), Some(if targets[0] == kept { "kept" } else { "lost" }));
    let (dir, want) = (lost.clone(), b"{\"layers\": 32}".to_vec());
    tokio::task::spawn_blocking(move || assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), want))
        .await
        .unwrap();

    // The last two pods go the ordinary way: the share goes with the last.
    for t in [&kept, &lost] {
        node.node_unpublish_volume(unpublish("pv-llama", t)).await.unwrap();
    }
    assert_eq!(mounts_under(&w.root), [], "an unpublish after a restart left a mount");

    // Every pod gone while no spoke ran: the share is released at start.
    node.node_publish_volume(publish("pv-llama", &kept)).await.unwrap();
    spokes.0[0].kill().unwrap();
    spokes.0[0].wait().unwrap();
    assert!(std::process::Command::new("umount").arg("-l").arg(&kept).status().unwrap().success());
    std::fs::remove_dir_all(w.root.join("kubelet/pods/kept")).unwrap();
    spokes.0[0] = spawn_logged(&spoke, &args, &log);
    csi_node(&data_dir.join("csi.sock")).await;
    assert_eq!(mounts_under(&w.root), [], "a share with no pod left outlived the restart");
    let text = std::fs::read_to_string(&log).unwrap();
    println!(
        "{}",
        text.lines()
            .filter(|l| l.contains("cleaned up") || l.contains("bound again") || l.contains("released"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(text.contains("its pod is gone: cleaned up"), "no stale publication was cleaned up:\n{text}");
    aqueduct_e2e::holders::stop_holders(&w.root);
}
