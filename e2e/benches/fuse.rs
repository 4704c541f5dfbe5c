//! Reading a version through a spoke's FUSE mount, against reading the same bytes natively.
//!
//! A hub over an S3 server (s3s-fs on 127.0.0.1, this process) holding a model-shaped
//! version of AQ_BENCH_MIB MiB (default 256) in two shards; two regions with no practical
//! budget, one spoke each, mounts hosted by the spokes. Printed, in one run, as MiB/s and as
//! a ratio to the native read of the same files from this machine's page cache:
//! - warm: a fresh mount of the replicated version (chunks in the spoke's store, none yet in
//!   its memory), after the holder made its whole copies (waited for, and said so), against a
//!   plain read of the same chunk files, with the page cache warm and with it dropped
//!   (`echo 3 > /proc/sys/vm/drop_caches`), side by side;
//! - cold: a fresh mount in the other region, read as soon as its rollout starts
//!   (read-through from the hub, ahead of replication), next to a plain GET of the same
//!   objects from the same S3 server;
//! - cached: the same files again on that mount (the kernel's page cache, kept across opens);
//! - the way people mount S3 today, against the same server: `rclone mount --vfs-cache-mode
//!   full` and `s3fs`, each cold (first read) and again (their caches warm), if installed
//!   (`apt-get install rclone s3fs`; skipped, saying so, otherwise). s3s-fs serves their access
//!   patterns slowly (see TESTBED.md), so they read the first AQ_BENCH_PEER_MIB MiB (default
//!   64) of each file: rates, not totals, are compared.
//!
//! Run: `cargo bench -p aqueduct-e2e --bench fuse` as root (FUSE). AQUEDUCT_LOG=info shows
//! the components' logs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aqueduct_e2e::{SourceKind, local_client, mount_when_known, socket_of, world};
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::{can_mount_fuse, noise};

/// Reads every file under `dir` named in `files` whole, through one 1 MiB buffer; MiB/s.
fn read_all(dir: &Path, files: &[String]) -> f64 {
    read_prefixes(dir, files, u64::MAX)
}

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    if !can_mount_fuse() {
        return;
    }
    let total_mib: usize = std::env::var("AQ_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut w = world(SourceKind::S3).await;
        let half = (total_mib << 20) / 2;
        let mut files = Vec::new();
        for i in 0..2u64 {
            let name = format!("model-0000{i}-of-00002.safetensors");
            let mut bytes = format!("{{\"__metadata__\":{{\"shard\":{i}}}}}").into_bytes();
            bytes.extend(noise(half - bytes.len(), i + 1));
            // Through S3 (not into its folder): s3s-fs then keeps the object's ETag, where it
            // would otherwise hash the whole object again on every ranged GET.
            let path = object_store::path::Path::from(format!("llama/{name}"));
            object_store::ObjectStoreExt::put(&w.s3_client(), &path, bytes.into()).await.unwrap();
            files.push(name);
        }
        w.snapshot().await;
        let native = {
            let (dir, files) = (w.data.clone(), files.clone());
            read_all(&dir, &files); // into the page cache
            tokio::task::spawn_blocking(move || read_all(&dir, &files)).await.unwrap()
        };
        let get = object_store_get(&w, &files).await;

        let mount = |name: &str| {
            let p = w.root.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (cold_dir, warm_dir) = (mount("cold"), mount("warm"));
        // Warm: a region that replicated the version and has read nothing yet (its spoke's
        // memory holds no chunk). A first mount has the holder make its whole copies (verified,
        // passed to the kernel by FUSE passthrough); the bench waits for them, then compares a
        // fresh mount with a plain read of the same chunk files, page cache warm and dropped.
        let config = w.region("warm", 64 << 30).await;
        w.start_spoke(&config);
        let mut warm_local = local_client(&socket_of(&config)).await;
        w.rollout(1, &["warm"]).await;
        w.wait_ready(1).await;
        let store = config.parent().unwrap().join("store");
        let chunks_dir = store.join("chunks");
        mount_when_known(&mut warm_local, "llama", 1, &warm_dir).await.unwrap();
        let waited = Instant::now();
        let whole = wait_for_whole_copies(&store, files.len() as u64).await;
        let made = match &whole {
            Some(h) => format!(
                "whole copies made before the warm reads: {} files, {} MiB, waited {:.1} s for them",
                h.ready,
                h.ready_bytes >> 20,
                waited.elapsed().as_secs_f64()
            ),
            None => "whole copies: none (off, or not made in time): warm reads take the copy route".into(),
        };
        // Page cache warm: the chunk files read twice, the mount's files read once through a
        // first mount; then a fresh mount.
        let dir = chunks_dir.clone();
        let native_chunks_warm = tokio::task::spawn_blocking(move || {
            read_chunk_files(&dir);
            read_chunk_files(&dir)
        })
        .await
        .unwrap();
        blocking_read(&warm_dir, &files).await;
        remount(&mut warm_local, &warm_dir).await;
        let warm = blocking_read(&warm_dir, &files).await;
        let cached = blocking_read(&warm_dir, &files).await;
        let dir = chunks_dir.clone();
        let verified_native = tokio::task::spawn_blocking(move || read_and_hash_chunks(&dir)).await.unwrap();
        // Page cache dropped: the same, each read after `echo 3 > /proc/sys/vm/drop_caches`.
        drop_caches();
        let dir = chunks_dir.clone();
        let native_chunks_dropped = tokio::task::spawn_blocking(move || read_chunk_files(&dir)).await.unwrap();
        remount(&mut warm_local, &warm_dir).await;
        drop_caches();
        let warm_dropped = blocking_read(&warm_dir, &files).await;
        let passed = holder_whole(&store).await.map_or(0, |h| h.passthrough_opens);
        // Cold: another region, read the moment its rollout starts.
        let config = w.region("cold", 64 << 30).await;
        w.start_spoke(&config);
        let mut cold_local = local_client(&socket_of(&config)).await;
        w.rollout(1, &["cold"]).await;
        mount_when_known(&mut cold_local, "llama", 1, &cold_dir).await.unwrap();
        let cold = blocking_read(&cold_dir, &files).await;
        for (local, dir) in [(&mut warm_local, &warm_dir), (&mut cold_local, &cold_dir)] {
            local.unmount(local::UnmountRequest { mountpoint: dir.display().to_string() }).await.unwrap();
        }

        let peer_mib: u64 = std::env::var("AQ_BENCH_PEER_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        let peers = peers(&w, &files, peer_mib << 20).await;

        println!("FUSE read benchmark: {total_mib} MiB in 2 files, S3 = s3s-fs on 127.0.0.1, hub and spoke over mTLS on 127.0.0.1, no link budget");
        println!("{:<48} {:>10} {:>16}", "read", "MiB/s", "/ native read");
        let row = |what: &str, rate: f64| println!("{what:<48} {rate:>10.1} {:>16.3}", rate / native);
        row("native read (page cache)", native);
        row("plain S3 GET from the same server", get);
        row("aqueduct cold (read-through, fresh spoke)", cold);
        row("native read + BLAKE3 of the store's chunk files", verified_native);
        row("aqueduct warm (fresh mount, whole copies made)", warm);
        row("aqueduct cached (same mount, again)", cached);
        for (what, rate) in &peers {
            match rate {
                Ok(rate) => row(what, *rate),
                Err(why) => println!("{what:<48} {why}"),
            }
        }
        println!("aqueduct cold / plain S3 GET: {:.3}", cold / get);
        println!("aqueduct warm / native read + BLAKE3 of the chunk files: {:.3}", warm / verified_native);
        println!();
        println!("Warm read (a fresh mount of the replicated version) / native read of the same chunk files");
        println!("{made}; opens passed through by the holder: {passed}");
        println!("{:<22} {:>20} {:>20} {:>8}", "page cache", "native chunks MiB/s", "aqueduct warm MiB/s", "ratio");
        for (what, native, ours) in
            [("warm", native_chunks_warm, warm), ("dropped (echo 3)", native_chunks_dropped, warm_dropped)]
        {
            println!("{what:<22} {native:>20.1} {ours:>20.1} {:>8.3}", ours / native);
        }
        for (what, rate) in &peers {
            if let Ok(rate) = rate {
                let ours = if what.contains("cold") { cold } else { cached };
                println!("aqueduct {} / {what}: {:.2}", if what.contains("cold") { "cold" } else { "cached" }, ours / rate);
            }
        }
    });
}

async fn blocking_read(dir: &Path, files: &[String]) -> f64 {
    let (dir, files): (PathBuf, Vec<String>) = (dir.to_owned(), files.to_vec());
    tokio::task::spawn_blocking(move || read_all(&dir, &files)).await.unwrap()
}

/// Unmounts `dir` and mounts `llama@v1` there again: a fresh mount (new inodes, nothing of the
/// old mount's page cache).
async fn remount(
    local: &mut aqueduct_proto::spoke::v1::local_client::LocalClient<tonic::transport::Channel>,
    dir: &Path,
) {
    local.unmount(local::UnmountRequest { mountpoint: dir.display().to_string() }).await.unwrap();
    mount_when_known(local, "llama", 1, dir).await.unwrap();
}

/// What the region's holder reports of whole copies (None: off).
async fn holder_whole(store: &Path) -> Option<aqueduct_proto::holder::v1::WholeFiles> {
    let mut holder = aqueduct_spoke::holder::connect(&store.join("holder.sock")).await.ok()?;
    holder.list(local::ListMountsRequest {}).await.ok()?.into_inner().whole
}

/// Waits (up to 10 minutes) until the holder has `files` verified whole copies and none pending.
async fn wait_for_whole_copies(store: &Path, files: u64) -> Option<aqueduct_proto::holder::v1::WholeFiles> {
    let started = Instant::now();
    while started.elapsed().as_secs() < 600 {
        let whole = holder_whole(store).await?;
        if whole.ready >= files && whole.pending == 0 {
            return Some(whole);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    None
}

/// Writes dirty pages out and drops the page cache (root).
fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("dropping the page cache needs root");
}

/// Reads every chunk file of a store's `chunks` directory through one 1 MiB buffer; MiB/s.
fn read_chunk_files(dir: &Path) -> f64 {
    use std::io::Read;
    let started = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        for chunk in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let mut file = std::fs::File::open(chunk.path()).unwrap();
            loop {
                let n = file.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    total as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64()
}

/// MiB/s of plain GETs of the objects from the world's S3 server.
async fn object_store_get(w: &aqueduct_e2e::World, files: &[String]) -> f64 {
    let store = w.s3_client();
    let started = Instant::now();
    let mut total = 0u64;
    for f in files {
        let path = object_store::path::Path::from(format!("llama/{f}"));
        total += object_store::ObjectStoreExt::get(&store, &path).await.unwrap().bytes().await.unwrap().len() as u64;
    }
    total as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64()
}

/// Reads the first `limit` bytes of each file; returns MiB/s.
fn read_prefixes(dir: &Path, files: &[String], limit: u64) -> f64 {
    use std::io::Read;
    let started = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(dir.join(f)).unwrap().take(limit);
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64()
}

/// rclone mount and s3fs over the same S3 server: (label, MiB/s or why not).
async fn peers(w: &aqueduct_e2e::World, files: &[String], limit: u64) -> Vec<(String, Result<f64, String>)> {
    let endpoint = format!("http://{}", w.s3_endpoint());
    let (key, secret) = (aqueduct_testkit::ACCESS_KEY, aqueduct_testkit::SECRET_KEY);
    let mut out = Vec::new();
    let rclone_args = |mnt: &Path, cache: &Path| -> Vec<String> {
        vec![
            "mount".into(),
            ":s3:models".into(),
            mnt.display().to_string(),
            "--s3-provider=Other".into(),
            format!("--s3-endpoint={endpoint}"),
            format!("--s3-access-key-id={key}"),
            format!("--s3-secret-access-key={secret}"),
            "--s3-region=us-east-1".into(),
            "--s3-force-path-style=true".into(),
            "--vfs-cache-mode=full".into(),
            format!("--cache-dir={}", cache.display()),
            "--read-only".into(),
        ]
    };
    let passwd = w.root.join("s3fs-passwd");
    std::fs::write(&passwd, format!("{key}:{secret}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let s3fs_args = |mnt: &Path, cache: &Path| -> Vec<String> {
        vec![
            "models".into(),
            mnt.display().to_string(),
            "-f".into(),
            "-o".into(),
            format!("url={endpoint}"),
            "-o".into(),
            "use_path_request_style".into(),
            "-o".into(),
            format!("passwd_file={}", passwd.display()),
            "-o".into(),
            format!("use_cache={}", cache.display()),
            "-o".into(),
            "ro".into(),
        ]
    };
    type Args<'a> = &'a dyn Fn(&Path, &Path) -> Vec<String>;
    let tools: [(&str, &str, Args); 2] = [("rclone mount", "rclone", &rclone_args), ("s3fs", "s3fs", &s3fs_args)];
    for (label, program, args) in tools {
        let mnt = w.root.join(format!("{program}-mnt"));
        let cache = w.root.join(format!("{program}-cache"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        let child = std::process::Command::new(program)
            .args(args(&mnt, &cache))
            .env_remove("AWS_CA_BUNDLE")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::create(w.root.join(format!("{program}.log")))
                    .map(Into::into)
                    .unwrap_or(std::process::Stdio::null()),
            )
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                out.push((format!("{label} cold"), Err(format!("not run: {e} (apt-get install {program})"))));
                continue;
            }
        };
        let started = Instant::now();
        while !aqueduct_testkit::is_mounted(&mnt) && started.elapsed().as_secs() < 30 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if aqueduct_testkit::is_mounted(&mnt) {
            let dir = mnt.join("llama");
            let names = files.to_vec();
            let (cold, again) = tokio::task::spawn_blocking(move || {
                (read_prefixes(&dir, &names, limit), read_prefixes(&dir, &names, limit))
            })
            .await
            .unwrap();
            out.push((format!("{label} cold (first {} MiB per file)", limit >> 20), Ok(cold)));
            out.push((format!("{label} again (its cache warm)"), Ok(again)));
            let _ = std::process::Command::new("umount").arg(&mnt).status();
        } else {
            out.push((format!("{label} cold"), Err(format!("did not mount in 30 s (see {program}.log)"))));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    out
}

/// Reads and hashes every chunk file of a store, as a verified local read at its simplest
/// would; MiB/s.
fn read_and_hash_chunks(dir: &Path) -> f64 {
    let started = Instant::now();
    let mut total = 0u64;
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        for chunk in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let data = std::fs::read(chunk.path()).unwrap();
            std::hint::black_box(blake3::hash(&data));
            total += data.len() as u64;
        }
    }
    total as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64()
}
