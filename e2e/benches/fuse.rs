//! Reading a version through a spoke's FUSE mount, against reading the same bytes natively.
//!
//! A hub over an S3 server (s3s-fs on 127.0.0.1, this process) holding a model-shaped
//! version of AQ_BENCH_MIB MiB (default 256) in two shards; one region with no practical
//! budget and one spoke, mounts hosted by the spoke. Printed, in one run, as MiB/s and as a
//! ratio to the native read of the same files from this machine's page cache:
//! - cold: a fresh mount, read as soon as the rollout starts (read-through from the hub, ahead
//!   of replication), next to a plain GET of the same objects from the same S3 server;
//! - warm: a fresh mount of the replicated version (chunks in the spoke's store);
//! - cached: the same files again on that mount (the kernel's page cache, kept across opens).
//!
//! Run: `cargo bench -p aqueduct-e2e --bench fuse` as root (FUSE). AQUEDUCT_LOG=info shows
//! the components' logs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aqueduct_e2e::{SourceKind, local_client, mount_when_known, world};
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::{can_mount_fuse, noise};

/// Reads every file under `dir` named in `files`; returns MiB/s.
fn read_all(dir: &Path, files: &[String]) -> f64 {
    let started = Instant::now();
    let mut total = 0u64;
    for f in files {
        total += std::fs::read(dir.join(f)).unwrap().len() as u64;
    }
    total as f64 / f64::from(1 << 20) / started.elapsed().as_secs_f64()
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

        let config = w.region("eu", 64 << 30).await;
        w.start_spoke(&config);
        let mut local = local_client(&config.parent().unwrap().join("store/spoke.sock")).await;
        let mount = |name: &str| {
            let p = w.root.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (cold_dir, warm_dir) = (mount("cold"), mount("warm"));
        w.rollout(1, &["eu"]).await;
        mount_when_known(&mut local, "llama", 1, &cold_dir).await.unwrap();
        let cold = blocking_read(&cold_dir, &files).await;
        w.wait_ready(1).await;
        mount_when_known(&mut local, "llama", 1, &warm_dir).await.unwrap();
        let warm = blocking_read(&warm_dir, &files).await;
        let cached = blocking_read(&warm_dir, &files).await;
        for dir in [&cold_dir, &warm_dir] {
            local.unmount(local::UnmountRequest { mountpoint: dir.display().to_string() }).await.unwrap();
        }

        println!("FUSE read benchmark: {total_mib} MiB in 2 files, S3 = s3s-fs on 127.0.0.1, hub and spoke over mTLS on 127.0.0.1, no link budget");
        println!("{:<44} {:>10} {:>16}", "read", "MiB/s", "/ native read");
        let row = |what: &str, rate: f64| println!("{what:<44} {rate:>10.1} {:>16.3}", rate / native);
        row("native read (page cache)", native);
        row("plain S3 GET from the same server", get);
        row("aqueduct cold (read-through, fresh spoke)", cold);
        row("aqueduct warm (chunks in the spoke's store)", warm);
        row("aqueduct cached (same mount, again)", cached);
        println!("aqueduct cold / plain S3 GET: {:.3}", cold / get);
    });
}

async fn blocking_read(dir: &Path, files: &[String]) -> f64 {
    let (dir, files): (PathBuf, Vec<String>) = (dir.to_owned(), files.to_vec());
    tokio::task::spawn_blocking(move || read_all(&dir, &files)).await.unwrap()
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
