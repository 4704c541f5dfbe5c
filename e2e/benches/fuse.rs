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
//! - cold read / budget: a pod reading a file of AQ_BENCH_COLD_MIB MiB (default 512) of a version
//!   just rolled out (nothing on the node), in a region whose link budget is each of
//!   AQ_BENCH_BUDGETS MiB/s (default `40,400`), against the budget, from garage (else s3s-fs)
//!   and from a local directory; the CPU the cold read cost (this process and the holder) per
//!   MiB, and the rate two cores would carry at that cost; then the cached read (the same file
//!   again on the same mount, chunks on the node) against a native read of the same bytes from
//!   the page cache;
//! - random 4 KiB reads per second (AQ_BENCH_RANDOM_READS, default 20000, fixed seed) over a file
//!   of AQ_BENCH_RANDOM_MIB MiB (default 1024) whose chunks are on the node, against the same
//!   reads of a plain file holding the same bytes, with the page cache dropped before each run
//!   and warm (the same pattern again); the bytes read are compared;
//! - peers on a production-grade S3 server: garage (`AQ_GARAGE` or `PATH`) holding the same
//!   bytes, read by `rclone mount --vfs-cache-mode full` and `s3fs` (sequential cold, cached,
//!   random 4 KiB reads after one whole read warmed their caches) and by Aqueduct with garage as
//!   the hub's source (cold, cached; no budget), so the three read the same server, named in
//!   the output. A missing tool skips its rows, saying what to install (`scripts/bench-peers`).
//!
//! AQ_BENCH_ROWS picks sections (comma-separated, default all): `warm` (the rows above on
//! s3s-fs, with its peers), `budget`, `random`, `garage`.
//!
//! Run: `cargo build --release -p aqueduct-fuse && cargo bench -p aqueduct-e2e --bench fuse` as
//! root (FUSE). AQUEDUCT_LOG=info shows the components' logs.
//!
//! The file is some 720 lines long because every row of the one run the issue asks for
//! (warm, cold, cached, budget, random reads, the peers) is set up and printed here, beside its
//! baseline; starting the peers and garage lives in `aqueduct_e2e::peers`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aqueduct_e2e::peers::garage::Garage;
use aqueduct_e2e::peers::{Server, Tool};
use aqueduct_e2e::{SourceKind, World, io, local_client, mount_when_known, socket_of, world};
use aqueduct_proto::hub::v1 as pb;
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
    let sections = std::env::var("AQ_BENCH_ROWS").unwrap_or_else(|_| "warm,budget,random,garage".into());
    let wants = |s: &str| sections.split(',').any(|x| x.trim() == s);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut w = world(SourceKind::S3).await;
        if wants("warm") {
            warm_cold_and_peers(&mut w).await;
        }
        if wants("budget") || wants("random") || wants("garage") {
            let cold_mib: usize = env("AQ_BENCH_COLD_MIB", 512);
            let random_mib: usize = env("AQ_BENCH_RANDOM_MIB", 1024);
            put_dataset(&mut w, "cold", noise(cold_mib << 20, 11)).await;
            put_dataset(&mut w, "rand", noise(random_mib << 20, 12)).await;
            println!();
            // garage serves the budget rows too when it is there: s3s-fs reads files through
            // tokio's blocking pool a few KiB at a time and cannot feed a 400 MiB/s budget here.
            let garage = if wants("budget") || wants("garage") { garage_source(&mut w).await } else { None };
            if wants("budget") {
                budget_rows(&mut w, cold_mib, garage.as_ref()).await;
            }
            if wants("random") {
                random_rows(&mut w, random_mib).await;
            }
            if let (true, Some(garage)) = (wants("garage"), &garage) {
                garage_rows(&mut w, garage).await;
            }
        }
    });
}

/// The rows on s3s-fs: warm, cold and cached reads of AQ_BENCH_MIB MiB in two files, and the
/// peers on the same server.
async fn warm_cold_and_peers(w: &mut World) {
    let total_mib: usize = env("AQ_BENCH_MIB", 256);
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
    let get = object_store_get(w, &files).await;

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
    let peers = peers(w, &files, peer_mib << 20).await;

    println!(
        "FUSE read benchmark: {total_mib} MiB in 2 files, S3 = s3s-fs on 127.0.0.1, hub and spoke over mTLS on 127.0.0.1, no link budget"
    );
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
async fn object_store_get(w: &World, files: &[String]) -> f64 {
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
async fn peers(w: &World, files: &[String], limit: u64) -> Vec<(String, Result<f64, String>)> {
    let server = Server {
        endpoint: format!("http://{}", w.s3_endpoint()),
        access_key: aqueduct_testkit::ACCESS_KEY.into(),
        secret_key: aqueduct_testkit::SECRET_KEY.into(),
        region: "us-east-1".into(),
        bucket: "models".into(),
    };
    let mut out = Vec::new();
    for tool in [Tool::RcloneMount, Tool::S3fs] {
        let label = tool.label();
        match aqueduct_e2e::peers::mount(tool, &server, &w.root).await {
            Ok(mounted) => {
                let dir = mounted.dir.join("llama");
                let names = files.to_vec();
                let (cold, again) =
                    aqueduct_e2e::io(move || (read_prefixes(&dir, &names, limit), read_prefixes(&dir, &names, limit)))
                        .await;
                out.push((format!("{label} cold (first {} MiB per file)", limit >> 20), Ok(cold)));
                out.push((format!("{label} again (its cache warm)"), Ok(again)));
            }
            Err(why) => out.push((format!("{label} cold"), Err(why))),
        }
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

/// `name` from the environment, parsed, or `default`.
fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// The one file of the benchmark's extra datasets.
const FILE: &str = "model.safetensors";

/// Puts `bytes` as `NAME/model.safetensors` on the world's S3 server (through S3: s3s-fs keeps
/// the ETag), binds dataset `name` to it and cuts its v1.
async fn put_dataset(w: &mut World, name: &str, bytes: Vec<u8>) {
    w.add_dataset(name).await;
    let path = object_store::path::Path::from(format!("{name}/{FILE}"));
    object_store::ObjectStoreExt::put(&w.s3_client(), &path, bytes.into()).await.unwrap();
    w.snapshot_of(name).await;
}

/// The plain file s3s-fs keeps for dataset `name`'s file: the same bytes, natively.
fn plain_file(w: &World, name: &str) -> PathBuf {
    w.data.parent().unwrap().join(name).join(FILE)
}

/// Waits (generously: completion, not speed) until every region of `dataset@version` is Ready.
async fn wait_ready_of(w: &mut World, dataset: &str, version: u64) {
    for _ in 0..6000 {
        let rows = w.admin.status(pb::StatusRequest { dataset: dataset.into() }).await.unwrap().into_inner().rows;
        let rows: Vec<_> = rows.into_iter().filter(|r| r.version == version).collect();
        if let Some(failed) = rows.iter().find(|r| r.phase() == pb::Phase::Failed) {
            panic!("region {} failed: {}", failed.region, failed.reason);
        }
        if !rows.is_empty() && rows.iter().all(|r| r.phase() == pb::Phase::Ready) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{dataset}@v{version} did not become Ready");
}

/// A region `name` with budget `rate` (bytes/s) and its spoke (in this process), `dataset@v1`
/// rolled out to it, mounted at `ROOT/name` as soon as the spoke knows the version (nothing on
/// the node yet). Returns the mount point, the spoke's local client and its stop token.
async fn cold_mount(
    w: &mut World,
    name: &str,
    rate: u64,
    dataset: &str,
) -> (
    PathBuf,
    aqueduct_proto::spoke::v1::local_client::LocalClient<tonic::transport::Channel>,
    tokio_util::sync::CancellationToken,
) {
    let config = w.region(name, rate).await;
    let stop = w.start_spoke(&config);
    let mut local = local_client(&socket_of(&config)).await;
    w.rollout_of(dataset, 1, &[name], "").await;
    let dir = w.root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    mount_when_known(&mut local, dataset, 1, &dir).await.unwrap();
    (dir, local, stop)
}

/// Unmounts `dir` and stops the spoke; then frees the disk its store took (its chunks and
/// whole copies: this benchmark's regions together would fill a small disk).
async fn stop_region(
    mut local: aqueduct_proto::spoke::v1::local_client::LocalClient<tonic::transport::Channel>,
    dir: &Path,
    stop: tokio_util::sync::CancellationToken,
) {
    local.unmount(local::UnmountRequest { mountpoint: dir.display().to_string() }).await.unwrap();
    stop.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let store =
        dir.parent().unwrap().join(format!("spoke-{}", dir.file_name().unwrap().to_str().unwrap())).join("store");
    for what in ["chunks", "files"] {
        let _ = std::fs::remove_dir_all(store.join(what));
    }
}

/// Cold read / budget and cached read, per budget of AQ_BENCH_BUDGETS (MiB/s), per source of
/// the same bytes: garage when it runs (dataset `gcold`), else s3s-fs (`cold`); and a local
/// directory (`file://`, dataset `fcold`: the plain files, in the page cache), which shows what
/// the path from the hub to the pod costs with a source that costs next to nothing.
async fn budget_rows(w: &mut World, cold_mib: usize, garage: Option<&Garage>) {
    let budgets: Vec<u64> = std::env::var("AQ_BENCH_BUDGETS")
        .unwrap_or_else(|_| "40,400".into())
        .split(',')
        .map(|b| b.trim().parse().unwrap_or_else(|_| panic!("AQ_BENCH_BUDGETS: {b:?} is not a number of MiB/s")))
        .collect();
    let plain = plain_file(w, "cold");
    let native = io(move || {
        read_file(&plain);
        read_file(&plain)
    })
    .await;
    let path = object_store::path::Path::from(format!("cold/{FILE}"));
    let s3 = match garage {
        Some(g) => ("gcold", format!("{} on {}", g.version, g.addr), get_rate(&g.client(), &path).await),
        None => ("cold", "s3s-fs on 127.0.0.1 (garage not run)".to_string(), get_rate(&w.s3_client(), &path).await),
    };
    let dir = ("fcold", "a local directory (file://, page cache)".to_string(), local_dir_source(w).await);
    println!("Cold read: a pod reads a {cold_mib} MiB file of a version just rolled out (nothing on the node)");
    println!("cached: the same file again on the same mount; native: a plain read of the same bytes (page cache)");
    println!(
        "cold CPU: what the cold read cost this process (hub, spoke, reader) and the node's holder, per MiB read; \
         2 cores carry: the rate two cores would give at that cost, were nothing else to run"
    );
    for (dataset, server, get) in [s3, dir] {
        println!("source: {server}; a plain read of the file from it: {get:.1} MiB/s");
        println!(
            "{:>14} {:>12} {:>9} {:>14} {:>14} {:>10} {:>18}",
            "budget MiB/s",
            "cold MiB/s",
            "/ budget",
            "cold CPU ms/MiB",
            "cached MiB/s",
            "/ native",
            "2 cores carry MiB/s"
        );
        for &budget in &budgets {
            let name = format!("budget-{budget}-{dataset}");
            let (dir, local, stop) = cold_mount(w, &name, budget << 20, dataset).await;
            let file = dir.join(FILE);
            let holder = std::fs::read_to_string(w.root.join(format!("spoke-{name}")).join("holder.pid")).ok();
            let cpu = move || cpu_seconds("self") + holder.as_deref().map_or(0.0, |pid| cpu_seconds(pid.trim()));
            let (cold, cpu_ms_per_mib, cached) = io(move || {
                let before = cpu();
                let cold = read_file(&file);
                let used = cpu() - before;
                (cold, used * 1000.0 / (cold_mib as f64), read_file(&file))
            })
            .await;
            stop_region(local, &dir, stop).await;
            println!(
                "{budget:>14} {cold:>12.1} {:>9.3} {cpu_ms_per_mib:>14.2} {cached:>14.1} {:>10.3} {:>18.0}",
                cold / budget as f64,
                cached / native,
                2000.0 / cpu_ms_per_mib
            );
        }
    }
    println!();
}

/// CPU seconds (user and system) process `pid` (or `self`) has used, from `/proc/PID/stat`
/// (in USER_HZ ticks, 100 per second on Linux); 0 when it cannot be read.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The hub's source `local`: the directory s3s-fs keeps its objects in, as plain files
/// (`file://`), with dataset `fcold` (prefix `cold`) cut. Returns the MiB/s of a plain read of
/// the file.
async fn local_dir_source(w: &mut World) -> f64 {
    let root = plain_file(w, "cold").parent().unwrap().parent().unwrap().to_owned();
    let source = pb::Source {
        name: "local".into(),
        url: format!("file://{}", root.display()),
        options: Default::default(),
        created_unix_ms: 0,
    };
    add_cold_dataset(w, source, "fcold").await;
    let plain = plain_file(w, "cold");
    io(move || read_file(&plain)).await
}

/// Random 4 KiB reads per second over the `rand` dataset's file, its chunks on the node (and
/// the holder's whole copy made), against the same reads of the plain file.
async fn random_rows(w: &mut World, random_mib: usize) {
    let reads: usize = env("AQ_BENCH_RANDOM_READS", 20000);
    let config = w.region("random", 64 << 30).await;
    let stop = w.start_spoke(&config);
    let mut local = local_client(&socket_of(&config)).await;
    w.rollout_of("rand", 1, &["random"], "").await;
    wait_ready_of(w, "rand", 1).await;
    let dir = w.root.join("random");
    std::fs::create_dir_all(&dir).unwrap();
    mount_when_known(&mut local, "rand", 1, &dir).await.unwrap();
    // An open offers the file for a whole copy; wait for it, as a warm node has it.
    let file = dir.join(FILE);
    io(move || std::fs::File::open(&file).map(drop)).await.unwrap();
    let store = config.parent().unwrap().join("store");
    let made = wait_for_whole_copies(&store, 1).await.is_some();
    let plain = plain_file(w, "rand");
    drop_caches();
    let native = io(move || [random_reads(&plain, reads), random_reads(&plain, reads)]).await;
    local.unmount(local::UnmountRequest { mountpoint: dir.display().to_string() }).await.unwrap();
    mount_when_known(&mut local, "rand", 1, &dir).await.unwrap();
    drop_caches();
    let file = dir.join(FILE);
    let ours = io(move || [random_reads(&file, reads), random_reads(&file, reads)]).await;
    let passed = holder_whole(&store).await.map_or(0, |h| h.passthrough_opens);
    stop_region(local, &dir, stop).await;
    println!(
        "Random 4 KiB reads: {reads} reads (seed 42) over a {random_mib} MiB file whose chunks are on the node \
         (whole copy {}; opens passed through: {passed}), vs the same reads of a plain file of the same bytes",
        if made { "made" } else { "not made in time" }
    );
    println!("{:<22} {:>18} {:>20} {:>8}", "page cache", "native reads/s", "aqueduct reads/s", "ratio");
    for (i, what) in ["dropped (echo 3)", "warm (same reads again)"].into_iter().enumerate() {
        let ((n, n_digest), (a, a_digest)) = (native[i], ours[i]);
        assert_eq!(n_digest, a_digest, "random reads through the mount returned other bytes than the plain file");
        println!("{what:<22} {n:>18.0} {a:>20.0} {:>8.3}", a / n);
    }
    println!();
}

/// garage on 127.0.0.1 holding the same bytes as the s3s-fs datasets `cold` and `rand` (same
/// keys), as the hub's source `garage` with dataset `gcold` (prefix `cold`) cut; None (said
/// why) when garage cannot run.
async fn garage_source(w: &mut World) -> Option<Garage> {
    let garage = match Garage::start(&w.root.join("garage-server")) {
        Ok(g) => g,
        Err(why) => {
            println!("garage: not run: {why}");
            return None;
        }
    };
    let client = garage.client();
    for name in ["cold", "rand"] {
        let bytes = std::fs::read(plain_file(w, name)).unwrap();
        let path = object_store::path::Path::from(format!("{name}/{FILE}"));
        object_store::ObjectStoreExt::put(&client, &path, bytes.into()).await.unwrap();
    }
    let options = garage.source_options(&w.root.join("garage-credentials")).into_iter().collect();
    let source = pb::Source { name: "garage".into(), url: "s3://models".into(), options, created_unix_ms: 0 };
    add_cold_dataset(w, source, "gcold").await;
    Some(garage)
}

/// Adds `source` to the hub and dataset `name` over its prefix `cold` (the `cold` dataset's
/// bytes), and cuts its first version.
async fn add_cold_dataset(w: &mut World, source: pb::Source, name: &str) {
    let dataset = pb::Dataset {
        name: name.into(),
        source: source.name.clone(),
        prefix: "cold".into(),
        created_unix_ms: 0,
        latest_version: 0,
        outside_links: String::new(),
        keep_versions: 0,
        watch: None,
    };
    w.admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    w.admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    w.snapshot_of(name).await;
}

/// MiB/s of a plain GET of `path`.
async fn get_rate(store: &object_store::aws::AmazonS3, path: &object_store::path::Path) -> f64 {
    let started = Instant::now();
    let n = object_store::ObjectStoreExt::get(store, path).await.unwrap().bytes().await.unwrap().len();
    n as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64()
}

/// Aqueduct, rclone mount and s3fs reading the same bytes from one garage server.
async fn garage_rows(w: &mut World, garage: &Garage) {
    let reads: usize = env("AQ_BENCH_RANDOM_READS", 20000);
    let (dir, local, stop) = cold_mount(w, "from-garage", 64 << 30, "gcold").await;
    let file = dir.join(FILE);
    let (cold, cached) = io(move || (read_file(&file), read_file(&file))).await;
    stop_region(local, &dir, stop).await;
    let mut columns = vec![("aqueduct".to_string(), Ok([cold, cached, f64::NAN, f64::NAN]))];

    let server = Server {
        endpoint: garage.endpoint(),
        access_key: aqueduct_e2e::peers::garage::ACCESS_KEY.into(),
        secret_key: aqueduct_e2e::peers::garage::SECRET_KEY.into(),
        region: aqueduct_e2e::peers::garage::REGION.into(),
        bucket: aqueduct_e2e::peers::garage::BUCKET.into(),
    };
    let work = w.root.join("garage-peers");
    std::fs::create_dir_all(&work).unwrap();
    for tool in [Tool::RcloneMount, Tool::S3fs] {
        let rates = match aqueduct_e2e::peers::mount(tool, &server, &work).await {
            Ok(mounted) => {
                let (cold, rand) = (mounted.dir.join("cold").join(FILE), mounted.dir.join("rand").join(FILE));
                let (cold, cached, dropped, warm) = io(move || {
                    let (cold, cached) = (read_file(&cold), read_file(&cold));
                    read_file(&rand); // into its cache, as chunks on the node
                    drop_caches();
                    (cold, cached, random_reads(&rand, reads), random_reads(&rand, reads))
                })
                .await;
                let expected = random_reads(&plain_file(w, "rand"), reads).1;
                assert_eq!(dropped.1, expected, "{} returned other bytes than the source", tool.label());
                Ok([cold, cached, dropped.0, warm.0])
            }
            Err(why) => Err(why),
        };
        columns.push((tool.label().to_string(), rates));
    }
    let get = get_rate(&garage.client(), &object_store::path::Path::from(format!("cold/{FILE}"))).await;
    println!(
        "Peers, server: {} on {} (one node, lmdb), holding the same bytes; Aqueduct with garage as the hub's source, no budget",
        garage.version, garage.addr
    );
    println!("a plain S3 GET of the cold file from it: {get:.1} MiB/s");
    println!(
        "(aqueduct's random reads: the row above, chunks on the node; the peers' after one whole read filled their caches)"
    );
    let labels = [
        "cold read MiB/s",
        "cached read MiB/s",
        "random 4 KiB reads/s, page cache dropped",
        "random 4 KiB reads/s, warm",
    ];
    print!("{:<42}", "read");
    for (name, _) in &columns {
        print!(" {name:>14}");
    }
    println!();
    for (i, label) in labels.iter().enumerate() {
        print!("{label:<42}");
        for (_, rates) in &columns {
            match rates {
                Ok(r) if r[i].is_nan() => print!(" {:>14}", "(above)"),
                Ok(r) => print!(" {:>14.1}", r[i]),
                Err(_) => print!(" {:>14}", "-"),
            }
        }
        println!();
    }
    for (name, rates) in &columns[1..] {
        match rates {
            Ok(r) => println!("aqueduct / {name}: cold {:.2}, cached {:.2}", cold / r[0], cached / r[1]),
            Err(why) => println!("{name}: skipped: {why}"),
        }
    }
}

/// Reads `path` whole through one 1 MiB buffer; MiB/s.
fn read_file(path: &Path) -> f64 {
    let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap().to_str().unwrap().to_string());
    read_all(dir, &[name])
}

/// `reads` reads of 4 KiB at 4 KiB-aligned offsets of `path` drawn from a fixed seed (42);
/// reads per second, and a digest of the bytes read (to compare two files' answers).
fn random_reads(path: &Path, reads: usize) -> (f64, blake3::Hash) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let blocks = (file.metadata().unwrap().len() / 4096).max(1);
    let mut x: u64 = 42u64.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut read = vec![0u8; reads * 4096];
    let started = Instant::now();
    for buf in read.chunks_mut(4096) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = file.read_at(buf, (x % blocks) * 4096).unwrap();
        buf[n..].fill(0);
    }
    let rate = reads as f64 / started.elapsed().as_secs_f64();
    (rate, blake3::hash(&read))
}
