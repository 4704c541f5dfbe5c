//! Snapshot throughput against plain BLAKE3 hashing of the same bytes, in the same run.
//!
//! Writes a model-shaped dataset (AQ_BENCH_MIB MiB in all, default 1024, in four files),
//! reads it once to warm the page cache, then times, each AQ_BENCH_ROUNDS times (default 3,
//! best kept):
//! - plain BLAKE3 of every file on one thread (16 MiB reads, `Hasher::update`);
//! - plain BLAKE3 with one thread per file, up to the number of cores;
//! - a hub snapshot of the dataset from a `file://` source (FastCDC + BLAKE3 per chunk,
//!   objects in parallel, manifest written to an in-memory SQLite store).
//!
//! Run: `cargo bench -p aqueduct-e2e --bench snapshot`

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_hub::snapshot::{Progress, SnapshotOptions, snapshot};
use aqueduct_hub::source::SourceSpec;
use aqueduct_hub::store::sqlite::SqliteStore;
use aqueduct_hub::store::{DatasetRecord, MetaStore, SourceRecord};
use aqueduct_testkit::noise;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn hash_file(path: &Path) -> blake3::Hash {
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finalize();
        }
        hasher.update(&buf[..n]);
    }
}

fn best<F: FnMut()>(rounds: usize, mut f: F) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let total_mib = env_usize("AQ_BENCH_MIB", 1024);
    let rounds = env_usize("AQ_BENCH_ROUNDS", 3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let per_file = (total_mib << 20) / 4;
    let mut files: Vec<PathBuf> = Vec::new();
    for i in 0..4 {
        let path = dir.join(format!("model-{i:05}-of-00004.safetensors"));
        let mut bytes = format!("{{\"__metadata__\":{{\"shard\":{i}}}}}").into_bytes();
        bytes.extend(noise(per_file - bytes.len(), i as u64 + 1));
        std::fs::write(&path, bytes).unwrap();
        files.push(path);
    }
    let bytes = (per_file * 4) as f64;
    for f in &files {
        hash_file(f); // warm the page cache
    }

    let single = best(rounds, || {
        for f in &files {
            std::hint::black_box(hash_file(f));
        }
    });
    let parallel = best(rounds, || {
        std::thread::scope(|s| {
            for group in files.chunks(files.len().div_ceil(cores)) {
                s.spawn(move || {
                    group.iter().for_each(|f| {
                        std::hint::black_box(hash_file(f));
                    })
                });
            }
        });
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let url = format!("file://{}", tmp.path().display());
    let source = SourceSpec::parse(&url, BTreeMap::new()).unwrap().open().unwrap();
    let mut chunks = 0;
    let snap = best(rounds, || {
        // A fresh store each round, so every round reads and hashes everything.
        let db: Arc<dyn MetaStore> = Arc::new(SqliteStore::in_memory().unwrap());
        db.add_source(&SourceRecord {
            name: "s".into(),
            url: url.clone(),
            options: BTreeMap::new(),
            created_unix_ms: 0,
        })
        .unwrap();
        let dataset = DatasetRecord {
            name: "m".into(),
            source: "s".into(),
            prefix: "model".into(),
            created_unix_ms: 0,
            latest_version: 0,
            outside_links: Default::default(),
        };
        db.add_dataset(&dataset).unwrap();
        let outcome = runtime
            .block_on(snapshot(
                &db,
                &dataset,
                source.clone(),
                SnapshotOptions::default(),
                Arc::new(Progress::default()),
            ))
            .unwrap();
        chunks = outcome.record.chunks;
    });

    let rate = |d: Duration| bytes / d.as_secs_f64() / (1 << 20) as f64;
    println!("snapshot benchmark: {} MiB in 4 files, page cache warm, {cores} cores, best of {rounds}", total_mib);
    println!("{:<44} {:>10} {:>10}", "", "MiB/s", "vs plain");
    println!("{:<44} {:>10.0} {:>10.2}", "plain BLAKE3, 1 thread", rate(single), 1.0);
    println!(
        "{:<44} {:>10.0} {:>10.2}",
        format!("plain BLAKE3, {} threads", cores.min(4)),
        rate(parallel),
        rate(parallel) / rate(single)
    );
    println!(
        "{:<44} {:>10.0} {:>10.2}",
        format!("aqueduct snapshot ({chunks} chunks)"),
        rate(snap),
        rate(snap) / rate(single)
    );
    println!("snapshot / plain BLAKE3 (1 thread): {:.2}", rate(snap) / rate(single));
    println!("snapshot / plain BLAKE3 ({} threads): {:.2}", cores.min(4), rate(snap) / rate(parallel));
}
