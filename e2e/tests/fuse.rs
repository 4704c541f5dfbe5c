//! A region's pods read versions through FUSE mounts its spoke hosts (and through the
//! `aqueduct-fuse` sidecar), with real mounts, a real hub over mutual TLS and S3 (needs root
//! and /dev/fuse).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aqueduct_e2e::{
    SourceKind, bin, io, local_client, mount_when_known, scrape, socket_of, spawn_logged, with_spoke_metrics, world,
    write_model,
};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::{can_mount_fuse, is_mounted, xattr};
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, words: &[&str]) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), code, "{}", s.message());
    for w in words {
        assert!(s.message().contains(w), "{:?} lacks {w:?}", s.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_reads_its_versions_through_fuse_before_and_after_they_arrive() {
    if !can_mount_fuse() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("AQUEDUCT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mut w = world(SourceKind::S3).await;
    let v1_files = write_model(&w.data, 1);
    w.snapshot().await;
    // A slow link: the version takes seconds to replicate, reads fetch ahead of it.
    let config = w.region("eu", MIB).await;
    // The copy route (reads served by the holder, each chunk verified when loaded), which the
    // rotten-chunk check below needs: a whole copy would serve those reads without the store.
    aqueduct_e2e::holders::without_whole_files(&config);
    let metrics = with_spoke_metrics(&config);
    let spoke = w.start_spoke(&config);
    let socket = socket_of(&config);
    let mut local = local_client(&socket).await;
    w.rollout(1, &["eu"]).await;

    let pinned = w.root.join("pinned");
    let follow = w.root.join("follow");
    for d in [&pinned, &follow] {
        std::fs::create_dir_all(d).unwrap();
    }
    let info = mount_when_known(&mut local, "llama", 1, &pinned).await.unwrap();
    assert_eq!((info.version, info.follow), (1, false));

    // A file not yet replicated reads correctly (read-through), before the version is Ready.
    let (dir, expected) = (pinned.clone(), v1_files[2].1.clone());
    let expected_len = expected.len();
    assert_eq!(io(move || std::fs::read(dir.join("tok/tokenizer.json")).unwrap()).await, expected);
    let rows = w.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    assert_ne!(rows[0].phase(), pb::Phase::Ready, "the version was Ready already: the read did not read through");
    // The spoke's metrics saw the reads: their bytes and their latencies.
    let text = scrape(metrics).await;
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("aqueduct_spoke_fuse_read_bytes_total") >= expected_len as f64, "{text}");
    assert!(value("aqueduct_spoke_fuse_read_duration_seconds_count") >= 1.0, "{text}");

    // Following needs an active version; until v1 is Ready there is none.
    let request = |version, path: &Path| local::MountRequest {
        dataset: "llama".into(),
        version,
        mountpoint: path.display().to_string(),
        tag: String::new(),
    };
    expect_err(local.mount(request(0, &follow)).await, Code::FailedPrecondition, &["no active version", "llama@vN"])
        .await;
    // Bad requests say what is wrong.
    expect_err(local.mount(request(1, &w.root.join("nowhere"))).await, Code::InvalidArgument, &["does not exist"])
        .await;
    expect_err(local.mount(request(1, Path::new("rel/dir"))).await, Code::InvalidArgument, &["absolute"]).await;
    expect_err(local.mount(request(9, &follow)).await, Code::NotFound, &["llama@v9", "v1"]).await;
    let mut other = request(1, &follow);
    other.dataset = "mistral".into();
    expect_err(local.mount(other).await, Code::NotFound, &["not rolled out", "aq rollout mistral@vN"]).await;
    expect_err(local.mount(request(2, &pinned)).await, Code::FailedPrecondition, &["busy", "llama@v1"]).await;
    assert_eq!(local.mount(request(1, &pinned)).await.unwrap().into_inner().version, 1, "a repeated mount failed");

    w.wait_ready(1).await;
    let info = mount_when_known(&mut local, "llama", 0, &follow).await.unwrap();
    assert_eq!((info.version, info.follow), (1, true));

    // A chunk that rots on the spoke's disk is dropped and fetched again on read, never served.
    let model = w.manifest(1).await.file("model.safetensors").unwrap().clone();
    let victim = model.chunks[3];
    let store_dir = config.parent().unwrap().join("store");
    let chunk_file = aqueduct_spoke::store::chunk_path(&store_dir, &victim.digest);
    let mut rotten = std::fs::read(&chunk_file).unwrap();
    rotten[7] ^= 0x40;
    std::fs::write(&chunk_file, &rotten).unwrap();
    let (dir, want) = (pinned.clone(), v1_files[1].1[victim.offset as usize..victim.end() as usize].to_vec());
    let got = io(move || {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(dir.join("model.safetensors")).unwrap();
        f.seek(SeekFrom::Start(victim.offset)).unwrap();
        let mut buf = vec![0; victim.length as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    })
    .await;
    assert!(got == want, "the read did not return the source's bytes over a rotten chunk");
    let mut repaired = false;
    for _ in 0..50 {
        if std::fs::read(&chunk_file).is_ok_and(|b| aqueduct_proto::Digest::of(&b) == victim.digest) {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(repaired, "the rotten chunk was not replaced in the store");

    // Every file of both mounts equals the source; readdir, stat and xattrs match.
    for mnt in [pinned.clone(), follow.clone()] {
        let files = v1_files.clone();
        io(move || {
            for (path, bytes) in &files {
                let p = mnt.join(path);
                assert_eq!(std::fs::read(&p).unwrap(), *bytes, "{}", p.display());
                assert_eq!(std::fs::metadata(&p).unwrap().len(), bytes.len() as u64);
            }
            let mut names: Vec<String> =
                std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            assert_eq!(names, ["config.json", "model.safetensors", "tok"]);
            let err = std::fs::write(mnt.join("config.json"), b"x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(30), "a write was not refused with EROFS");
        })
        .await;
    }
    let (dir, root) = (follow.clone(), w.manifest(1).await.file("config.json").unwrap().root().to_hex());
    io(move || {
        assert_eq!(xattr(&dir.join("config.json"), "user.aqueduct.version").as_deref(), Some("1"));
        assert_eq!(xattr(&dir.join("config.json"), "user.aqueduct.root"), Some(root));
    })
    .await;

    // v2 changes the model. A file held open on the following mount reads v1 to the end; new
    // opens see v2 once it is active; the pinned mount stays on v1.
    let (dir, held_bytes) = (follow.clone(), v1_files[1].1.clone());
    let mut held = io(move || {
        let mut f = std::fs::File::open(dir.join("model.safetensors")).unwrap();
        let mut head = vec![0; 4096];
        f.read_exact(&mut head).unwrap();
        assert_eq!(head, held_bytes[..4096]);
        f
    })
    .await;
    let v2_files = write_model(&w.data, 2);
    w.snapshot().await;
    w.rollout(2, &["eu"]).await;
    w.wait_ready(2).await;
    let (dir, want) = (follow.clone(), v2_files[1].1.clone());
    let switched = io(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if std::fs::read(dir.join("model.safetensors")).unwrap() == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })
    .await;
    assert!(switched, "the following mount never showed the active v2");
    let expected = v1_files[1].1.clone();
    held = io(move || {
        let mut rest = Vec::new();
        held.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, expected[4096..], "a file open across the switch did not read its version to the end");
        held
    })
    .await;
    let (dir, want) = (pinned.clone(), v1_files[1].1.clone());
    io(move || assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), want)).await;

    let mut mounts = local.list_mounts(local::ListMountsRequest {}).await.unwrap().into_inner().mounts;
    mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    let listed: Vec<(PathBuf, u64, bool)> =
        mounts.iter().map(|m| (PathBuf::from(&m.mountpoint), m.version, m.follow)).collect();
    assert_eq!(listed, [(follow.clone(), 2, true), (pinned.clone(), 1, false)]);

    // Busy while a file is open; then unmounted for good.
    let unmount = |path: &Path| local::UnmountRequest { mountpoint: path.display().to_string() };
    expect_err(local.unmount(unmount(&follow)).await, Code::FailedPrecondition, &["busy"]).await;
    drop(held);
    for mnt in [&follow, &pinned] {
        local.unmount(unmount(mnt)).await.unwrap();
        assert!(!is_mounted(mnt), "{} is still mounted", mnt.display());
    }
    expect_err(local.unmount(unmount(&pinned)).await, Code::NotFound, &["nothing is mounted"]).await;

    // A spoke that stops leaves its mounts to the holder, which goes on serving them; the
    // holder stopped (SIGTERM) takes them with it.
    let last = w.root.join("last");
    std::fs::create_dir_all(&last).unwrap();
    mount_when_known(&mut local, "llama", 2, &last).await.unwrap();
    spoke.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(is_mounted(&last), "a stopped spoke took its mount with it");
    let (dir, want) = (last.clone(), v2_files[1].1.clone());
    io(move || assert!(std::fs::read(dir.join("model.safetensors")).unwrap() == want, "the held mount misread")).await;
    aqueduct_e2e::holders::stop_holders(&w.root);
    assert!(!is_mounted(&last), "a stopped holder left its mount behind");
}

/// Child processes killed, and a mountpoint detached, however the test ends.
struct Cleanup {
    children: Vec<std::process::Child>,
    mountpoint: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_mount_waits_while_its_spoke_is_dead_and_reads_on_when_it_returns() {
    if !can_mount_fuse() {
        return;
    }
    let mut w = world(SourceKind::S3).await;
    let files = write_model(&w.data, 5);
    w.snapshot().await;
    let config = w.region("eu", 200 * MIB).await;
    let socket = socket_of(&config);
    let mnt = w.root.join("sidecar");
    std::fs::create_dir_all(&mnt).unwrap();
    let spoke_log = w.root.join("spoke.log");
    let spoke_args = [std::ffi::OsStr::new("run"), "--config".as_ref(), config.as_os_str()];
    let mut cleanup = Cleanup {
        children: vec![spawn_logged(&bin("aqueduct-spoke"), &spoke_args, &spoke_log)],
        mountpoint: mnt.clone(),
    };
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    local_client(&socket).await;

    // The sidecar trusts the hub's signing keys, as the region's bundle gives them.
    let trust = config.parent().unwrap().join("signing.pub");
    let sidecar_args = [
        std::ffi::OsStr::new("mount"),
        "llama@v1".as_ref(),
        mnt.as_os_str(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--trust".as_ref(),
        trust.as_os_str(),
    ];
    let sidecar_log = w.root.join("sidecar.log");
    cleanup.children.push(spawn_logged(&bin("aqueduct-fuse"), &sidecar_args, &sidecar_log));
    let started = Instant::now();
    while !is_mounted(&mnt) {
        assert!(started.elapsed() < Duration::from_secs(20), "{}", std::fs::read_to_string(&sidecar_log).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (dir, want) = (mnt.clone(), files[0].1.clone());
    io(move || assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), want)).await;

    // The spoke dies: a read that needs it waits (no EIO, no ENOTCONN) ...
    cleanup.children[0].kill().unwrap();
    cleanup.children[0].wait().unwrap();
    let dir = mnt.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(dir.join("model.safetensors")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    if read.is_finished() {
        panic!("a read ended while the spoke was dead: {:?}", read.await.unwrap().map(|b| b.len()));
    }
    assert!(std::fs::read_to_string(&sidecar_log).unwrap().contains("the read waits for it"), "no logged reason");

    // ... and the spoke comes back: the same read ends with the right bytes, nobody remounted.
    cleanup.children[0] = spawn_logged(&bin("aqueduct-spoke"), &spoke_args, &spoke_log);
    local_client(&socket).await;
    let started = Instant::now();
    let got = read.await.unwrap().expect("the read that waited for the spoke failed");
    println!("the read that waited ended {:?} after the spoke restarted", started.elapsed());
    assert!(got == files[1].1, "the read that waited for the spoke returned other bytes");
    let (dir, want) = (mnt.clone(), files[1].1.clone());
    io(move || assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), want)).await;

    // The spoke's CLI mounts, lists and unmounts through the same socket.
    let hosted = w.root.join("hosted");
    std::fs::create_dir_all(&hosted).unwrap();
    let cli = |args: &[&std::ffi::OsStr]| {
        let out =
            std::process::Command::new(bin("aqueduct-spoke")).args(args).arg("--socket").arg(&socket).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = cli(&["mount".as_ref(), "llama@v1".as_ref(), hosted.as_os_str()]);
    assert!(ok && text.contains("llama@v1 mounted at"), "{text}");
    let (ok, text) = cli(&["mounts".as_ref()]);
    assert!(ok && text.contains(hosted.to_str().unwrap()) && text.contains("v1"), "{text}");
    let (dir, want) = (hosted.clone(), files[2].1.clone());
    io(move || assert_eq!(std::fs::read(dir.join("tok/tokenizer.json")).unwrap(), want)).await;
    let (ok, text) = cli(&["mount".as_ref(), "llama@v7".as_ref(), w.root.join("x").as_os_str()]);
    assert!(!ok && text.contains("does not exist"), "{text}");
    let (ok, text) = cli(&["unmount".as_ref(), hosted.as_os_str()]);
    assert!(ok, "{text}");
    assert!(!is_mounted(&hosted));

    // SIGTERM: the sidecar unmounts and exits.
    let pid = cleanup.children[1].id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = cleanup.children[1].wait().unwrap();
    assert!(status.success(), "{}", std::fs::read_to_string(&sidecar_log).unwrap());
    assert!(!is_mounted(&mnt), "the sidecar left its mount behind");
}
