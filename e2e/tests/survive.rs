//! Mounts outlive the spoke: the node's FUSE holder serves them while the spoke is killed,
//! restarted, or replaced by another binary, and reads in flight stall for the restart and
//! then finish with the right bytes (real FUSE, a real hub over mutual TLS and S3; needs root
//! and /dev/fuse).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aqueduct_e2e::{Children, SourceKind, bin, local_client, mount_when_known, socket_of, spawn_logged, world};
use aqueduct_testkit::{can_mount_fuse, noise};

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

/// Reads through a spoke-hosted mount survive the spoke's SIGKILL and a restart of `next`
/// (the same binary, or a copy of it: an upgrade).
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
    let config = w.region("eu", RATE).await;
    let socket = socket_of(&config);
    let spoke = bin("aqueduct-spoke");
    let log = w.root.join("spoke.log");
    let args = [std::ffi::OsStr::new("run"), "--config".as_ref(), config.as_os_str()];
    let mut spokes = Children(vec![spawn_logged(&spoke, &args, &log)]);
    w.rollout(1, &["eu"]).await;
    let mut local = local_client(&socket).await;

    let mnt = w.root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mount_when_known(&mut local, "llama", 1, &mnt).await.unwrap();
    let before = mounts_under(&w.root);
    assert!(before.iter().any(|(_, p)| p == &mnt), "{before:?}");

    // A reader streams the big file while its chunks come over the slow link.
    let readers = [stream(mnt.join("model.safetensors"))];
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
    // The new spoke lists the mount it adopted.
    let mut local = local_client(&socket).await;
    let listed = local.list_mounts(aqueduct_proto::spoke::v1::ListMountsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        listed.mounts.iter().map(|m| PathBuf::from(&m.mountpoint)).collect::<Vec<_>>(),
        std::slice::from_ref(&mnt)
    );

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
