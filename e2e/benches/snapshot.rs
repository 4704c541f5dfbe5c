//! Snapshot throughput against plain BLAKE3 hashing of the same bytes, in the same run.
//!
//! Two datasets of AQ_BENCH_MIB MiB each (default 1024): a model-shaped one in four files, and
//! one single file (a model that is one big safetensors file). Both are read once to warm the
//! page cache, then each row is timed AQ_BENCH_ROUNDS times (default 3; best and worst printed,
//! ratios from the best):
//! - plain BLAKE3 on one thread (16 MiB reads, `Hasher::update`);
//! - four files: plain BLAKE3 with one thread per file, up to the number of cores;
//! - one file: plain BLAKE3 of the file split into one contiguous part per core, each part
//!   hashed on its own thread (what multi-core BLAKE3 of one file can do at best);
//! - the cut-point search alone (FastCDC 2020 over the bytes in memory, one thread), and the
//!   hub's chunker over the bytes in memory (cut points and BLAKE3, on one thread, then on a
//!   pool of a worker per core), to show what chunking costs beyond hashing;
//! - a hub snapshot of the dataset from a `file://` source (FastCDC + BLAKE3 per chunk,
//!   manifest written to an in-memory SQLite store).
//!
//! Run: `cargo bench -p aqueduct-e2e --bench snapshot`

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_hub::chunker::Chunker;
use aqueduct_hub::chunker::pool::HashPool;
use aqueduct_hub::snapshot::{Progress, SnapshotOptions, snapshot};
use aqueduct_hub::source::SourceSpec;
use aqueduct_hub::store::meta::SqlStore;
use aqueduct_hub::store::{DatasetRecord, MetaStore, SourceRecord};
use aqueduct_proto::ChunkerParams;
use aqueduct_testkit::noise;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// BLAKE3 of `len` bytes of `path` from `offset`, read in 16 MiB pieces.
fn hash_range(path: &Path, offset: u64, len: u64) -> blake3::Hash {
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut file = file.take(len);
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

fn hash_file(path: &Path) -> blake3::Hash {
    hash_range(path, 0, u64::MAX)
}

/// The best and the worst of `rounds` runs.
fn time<F: FnMut()>(rounds: usize, mut f: F) -> (Duration, Duration) {
    let runs: Vec<Duration> = (0..rounds.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    (*runs.iter().min().unwrap(), *runs.iter().max().unwrap())
}

/// The cut points of FastCDC 2020 with the hub's default parameters, over bytes in memory.
fn cut_all(data: &[u8]) -> usize {
    use fastcdc::v2020::{Normalization, cut, select_masks};
    let p = ChunkerParams::DEFAULT;
    let (mask_s, mask_l) = select_masks(p.avg_size as usize, Normalization::Level1);
    let (mut at, mut chunks) = (0, 0);
    while at < data.len() {
        let (min, avg, max) = (p.min_size as usize, p.avg_size as usize, p.max_size as usize);
        let (_, n) = cut(&data[at..], min, avg, max, mask_s, mask_l, mask_s << 1, mask_l << 1);
        at += n.max(1);
        chunks += 1;
    }
    chunks
}

struct Dataset {
    root: PathBuf,
    prefix: &'static str,
    files: Vec<PathBuf>,
    bytes: u64,
}

fn write_dataset(root: &Path, prefix: &'static str, files: usize, total: usize) -> Dataset {
    let dir = root.join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let per_file = total / files;
    let mut paths = Vec::new();
    for i in 0..files {
        let path = dir.join(format!("model-{:05}-of-{files:05}.safetensors", i + 1));
        let mut bytes = format!("{{\"__metadata__\":{{\"shard\":{i}}}}}").into_bytes();
        bytes.extend(noise(per_file - bytes.len(), (prefix.len() * 100 + i) as u64 + 1));
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    for p in &paths {
        hash_file(p); // warm the page cache
    }
    Dataset { root: root.to_path_buf(), prefix, files: paths, bytes: (per_file * files) as u64 }
}

/// Times a hub snapshot of `dataset`: a fresh store each round, so every round reads and
/// hashes everything. Returns the times and the number of chunks.
fn time_snapshot(runtime: &tokio::runtime::Runtime, dataset: &Dataset, rounds: usize) -> ((Duration, Duration), u64) {
    let url = format!("file://{}", dataset.root.display());
    let source = SourceSpec::parse(&url, BTreeMap::new()).unwrap().open().unwrap();
    let mut chunks = 0;
    let times = time(rounds, || {
        let db: Arc<dyn MetaStore> = Arc::new(SqlStore::in_memory().unwrap());
        db.add_source(&SourceRecord {
            name: "s".into(),
            url: url.clone(),
            options: BTreeMap::new(),
            created_unix_ms: 0,
        })
        .unwrap();
        let record = DatasetRecord {
            name: "m".into(),
            source: "s".into(),
            prefix: dataset.prefix.into(),
            created_unix_ms: 0,
            latest_version: 0,
            outside_links: Default::default(),
            keep_versions: 0,
        };
        db.add_dataset(&record).unwrap();
        let outcome = runtime
            .block_on(snapshot(&db, &record, source.clone(), SnapshotOptions::default(), Arc::new(Progress::default())))
            .unwrap();
        chunks = outcome.record.chunks;
    });
    (times, chunks)
}

fn main() {
    let total_mib = env_usize("AQ_BENCH_MIB", 1024);
    let rounds = env_usize("AQ_BENCH_ROUNDS", 3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rate = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / (1 << 20) as f64;

    println!(
        "snapshot benchmark: {total_mib} MiB per dataset, page cache warm, {cores} cores, {rounds} rounds \
         (load average at start: {})",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("{:<58} {:>10} {:>10} {:>10}", "", "MiB/s", "worst", "vs plain");

    // Four files.
    let four = write_dataset(tmp.path(), "model", 4, total_mib << 20);
    let single = time(rounds, || {
        for f in &four.files {
            std::hint::black_box(hash_file(f));
        }
    });
    let parallel = time(rounds, || {
        std::thread::scope(|s| {
            for group in four.files.chunks(four.files.len().div_ceil(cores)) {
                s.spawn(move || {
                    group.iter().for_each(|f| {
                        std::hint::black_box(hash_file(f));
                    })
                });
            }
        });
    });
    let (snap, chunks) = time_snapshot(&runtime, &four, rounds);
    let threads = cores.min(four.files.len());
    let row = |name: String, bytes: u64, (best, worst): (Duration, Duration), base: Duration| {
        println!(
            "{name:<58} {:>10.0} {:>10.0} {:>10.2}",
            rate(bytes, best),
            rate(bytes, worst),
            rate(bytes, best) / rate(bytes, base)
        );
    };
    row("4 files: plain BLAKE3, 1 thread".into(), four.bytes, single, single.0);
    row(format!("4 files: plain BLAKE3, {threads} threads (one per file)"), four.bytes, parallel, single.0);
    row(format!("4 files: aqueduct snapshot ({chunks} chunks)"), four.bytes, snap, single.0);
    let four_ratio = rate(four.bytes, snap.0) / rate(four.bytes, parallel.0);

    // One file.
    let one = write_dataset(tmp.path(), "one", 1, total_mib << 20);
    let file = &one.files[0];
    let single1 = time(rounds, || {
        std::hint::black_box(hash_file(file));
    });
    let part = one.bytes.div_ceil(cores as u64);
    let split = time(rounds, || {
        std::thread::scope(|s| {
            for i in 0..cores as u64 {
                s.spawn(move || std::hint::black_box(hash_range(file, i * part, part)));
            }
        });
    });
    let bytes = std::fs::read(file).unwrap();
    let cut = time(rounds, || {
        std::hint::black_box(cut_all(&bytes));
    });
    let hash_mem = time(rounds, || {
        std::hint::black_box(blake3::hash(&bytes));
    });
    let chunker = Chunker::new(ChunkerParams::DEFAULT);
    let inline = HashPool::new(0);
    let chunk_one = time(rounds, || {
        std::hint::black_box(chunker.chunk_on(&inline, &bytes[..], |_| {}).unwrap());
    });
    let pool = HashPool::per_core();
    let chunk_all = time(rounds, || {
        std::hint::black_box(chunker.chunk_on(&pool, &bytes[..], |_| {}).unwrap());
    });
    drop(bytes);
    let (snap1, chunks1) = time_snapshot(&runtime, &one, rounds);
    row("1 file: plain BLAKE3, 1 thread".into(), one.bytes, single1, single1.0);
    row(format!("1 file: plain BLAKE3, split in {cores} parts, {cores} threads"), one.bytes, split, single1.0);
    row("1 file: BLAKE3 in memory, 1 thread (no read)".into(), one.bytes, hash_mem, single1.0);
    row("1 file: FastCDC cut-point search in memory, 1 thread".into(), one.bytes, cut, single1.0);
    row("1 file: aqueduct chunker in memory, 1 thread".into(), one.bytes, chunk_one, single1.0);
    row(format!("1 file: aqueduct chunker in memory, {} workers", pool.workers()), one.bytes, chunk_all, single1.0);
    row(format!("1 file: aqueduct snapshot ({chunks1} chunks)"), one.bytes, snap1, single1.0);
    let one_ratio = rate(one.bytes, snap1.0) / rate(one.bytes, split.0);

    println!("4 files: snapshot / plain BLAKE3 ({threads} threads, one per file): {four_ratio:.2}");
    println!(
        "1 file:  snapshot / multi-core BLAKE3 of the same bytes (one part per core, {cores} threads): {one_ratio:.2}"
    );
    // On every core, the chunker does the work of its single thread: it cannot get closer to
    // BLAKE3 on every core than its single thread gets to BLAKE3 on one.
    println!(
        "bound on this machine (aqueduct chunker in memory, 1 thread / plain BLAKE3, 1 thread): {:.2}",
        rate(one.bytes, chunk_one.0) / rate(one.bytes, single1.0)
    );
}
