//! Aqueduct against the way people copy models today, through the same slow links.
//!
//! Two regions of two nodes, each node a network namespace, each region behind its own uplink
//! shaped with `tc tbf` to AQ_BENCH_LINK_MBIT Mbit/s (default 100); the hub and the S3 server
//! (s3s-fs) in the data centre. A model of AQ_BENCH_MIB MiB (default 256; 1024 for the 1 GiB
//! of the issue) is cut as v1, then v2 grows its safetensors header by 37 bytes (shifting
//! everything after it) and rewrites 2% of the tensors. Measured side by side, one phase at a
//! time, bytes over each link read from the uplink's interface counters:
//! - Aqueduct: roll v1, then v2, out to both regions (every spoke holds the whole version,
//!   peers share chunks inside the region); time until the region is Ready.
//! - The ways people do it today, chosen with AQ_BENCH_BASELINES (comma-separated; default
//!   `copy,rclone-mount`; `none` for Aqueduct alone), each only if installed:
//!   - `copy`: every node runs `rclone copy` of the model from the same S3 server through the
//!     same link, v1 into an empty directory, then v2 over it;
//!   - `rclone-mount` and `s3fs`: every node mounts the bucket (`rclone mount --vfs-cache-mode
//!     full`, or `s3fs`) with a fresh cache and reads every file of the version once through
//!     the mount, as an inference pod would on first start; the bytes read are hashed and
//!     checked against the source.
//!
//!   The time counts until every node of the region is done, mounting included.
//!
//! Printed: per phase and region, bytes over the link, the version's bytes, seconds,
//! achieved rate / link rate, and the lower bound (bytes the region must receive / link
//! rate); then rclone / Aqueduct for bytes and time.
//!
//! Run as root, after building the spoke in release:
//! `cargo build --release -p aqueduct-spoke && cargo bench -p aqueduct-e2e --bench topology`

use std::path::{Path, PathBuf};
use std::time::Instant;

use aqueduct_e2e::netns::Topology;
use aqueduct_e2e::{SourceKind, World, world_at};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

const MIB: f64 = (1 << 20) as f64;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// The release spoke binary, beside this benchmark's directory.
fn spoke_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("aqueduct-spoke");
    path.exists().then_some(path)
}

fn tx_bytes(interface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/statistics/tx_bytes"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// v1: a header and `size` bytes of tensors. v2: the header grows by 37 bytes and 2% of the
/// tensors change. Written through S3 (not into its folder): s3s-fs then keeps the object's
/// ETag, where it would otherwise hash the whole object again on every ranged GET.
async fn write_model(w: &World, size: usize, v2: bool) {
    let header = format!("{{\"__metadata__\":{{\"pad\":\"{}\"}}}}", "x".repeat(if v2 { 64 + 37 } else { 64 }));
    let mut model = header.into_bytes();
    let mut tensors = noise(size, 1);
    if v2 {
        let changed = size / 50;
        let at = size / 3;
        tensors[at..at + changed].copy_from_slice(&noise(changed, 2));
    }
    model.extend(tensors);
    let config = if v2 { "{\"v\": 2}" } else { "{\"v\": 1}" };
    for (name, bytes) in [("model.safetensors", model), ("config.json", config.as_bytes().to_vec())] {
        let path = object_store::path::Path::from(format!("llama/{name}"));
        object_store::ObjectStoreExt::put(&w.s3_client(), &path, bytes.into()).await.unwrap();
    }
}

struct Row {
    what: String,
    region: String,
    link_bytes: u64,
    version_bytes: u64,
    seconds: f64,
    bound_bytes: u64,
}

/// Rolls `version` out to every region and times each until Ready.
async fn aqueduct(w: &mut World, net: &Topology, version: u64, label: &str, bound_bytes: u64) -> Vec<Row> {
    let regions: Vec<&str> = net.regions.iter().map(|r| r.name.as_str()).collect();
    let before: Vec<u64> = net.regions.iter().map(|r| tx_bytes(&r.uplink)).collect();
    let started = Instant::now();
    w.rollout(version, &regions).await;
    let mut done: Vec<Option<f64>> = vec![None; regions.len()];
    while done.iter().any(Option::is_none) {
        for row in w.status(version).await {
            assert_ne!(row.phase(), pb::Phase::Failed, "{}: {}", row.region, row.reason);
            let i = regions.iter().position(|r| *r == row.region).unwrap();
            if row.phase() == pb::Phase::Ready && done[i].is_none() {
                done[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let total = w.manifest(version).await.total_bytes();
    let done: Vec<f64> = done.into_iter().map(Option::unwrap).collect();
    rows(net, label, &before, &done, total, bound_bytes)
}

/// One row per region: what crossed its link since `before`, in `done` seconds.
fn rows(net: &Topology, what: &str, before: &[u64], done: &[f64], version_bytes: u64, bound_bytes: u64) -> Vec<Row> {
    net.regions
        .iter()
        .enumerate()
        .map(|(i, r)| Row {
            what: what.to_string(),
            region: r.name.clone(),
            link_bytes: tx_bytes(&r.uplink) - before[i],
            version_bytes,
            seconds: done[i],
            bound_bytes,
        })
        .collect()
}

/// The ways people move models today that this benchmark can run.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Baseline {
    Copy,
    RcloneMount,
    S3fs,
}

impl Baseline {
    fn parse(list: &str) -> Vec<Baseline> {
        list.split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty() && *b != "none")
            .map(|b| match b {
                "copy" => Baseline::Copy,
                "rclone-mount" => Baseline::RcloneMount,
                "s3fs" => Baseline::S3fs,
                other => panic!("AQ_BENCH_BASELINES: unknown baseline {other:?}; use copy, rclone-mount, s3fs or none"),
            })
            .collect()
    }

    fn label(self, version: u64) -> String {
        match self {
            Baseline::Copy => format!("rclone copy v{version}"),
            Baseline::RcloneMount => format!("rclone mnt v{version}"),
            Baseline::S3fs => format!("s3fs v{version}"),
        }
    }

    fn program(self) -> &'static str {
        match self {
            Baseline::Copy | Baseline::RcloneMount => "rclone",
            Baseline::S3fs => "s3fs",
        }
    }

    fn run(
        self,
        w: &World,
        net: &Topology,
        version: u64,
        version_bytes: u64,
        bound_bytes: u64,
    ) -> Result<Vec<Row>, String> {
        let program = self.program();
        if std::process::Command::new(program).arg("--version").output().is_err() {
            return Err(format!("{program} is not installed (apt-get install {program})"));
        }
        match self {
            Baseline::Copy => rclone_copy(w, net, &self.label(version), version_bytes, bound_bytes),
            _ => first_read(self, w, net, version, version_bytes, bound_bytes),
        }
    }
}

/// The S3 options rclone needs for the test server as `region` sees it.
fn rclone_s3(cmd: &mut std::process::Command, w: &World, region: &aqueduct_e2e::netns::RegionNet) {
    cmd.arg("--s3-provider=Other")
        .arg(format!("--s3-endpoint=http://{}:{}", region.hub_ip, w.s3_endpoint().port()))
        .arg(format!("--s3-access-key-id={}", aqueduct_testkit::ACCESS_KEY))
        .arg(format!("--s3-secret-access-key={}", aqueduct_testkit::SECRET_KEY))
        .args(["--s3-region=us-east-1", "--s3-force-path-style=true"])
        .env_remove("AWS_CA_BUNDLE");
}

/// Every node runs `rclone copy` of the model into its own directory; times each region
/// until all its nodes are done.
fn rclone_copy(
    w: &World,
    net: &Topology,
    label: &str,
    version_bytes: u64,
    bound_bytes: u64,
) -> Result<Vec<Row>, String> {
    let before: Vec<u64> = net.regions.iter().map(|r| tx_bytes(&r.uplink)).collect();
    let started = Instant::now();
    let mut children = Vec::new();
    for (i, region) in net.regions.iter().enumerate() {
        for node in &region.nodes {
            let dest = w.root.join(format!("rclone-{}", node.name));
            let mut cmd = net.command(node, Path::new("rclone"));
            cmd.args(["copy", ":s3:models", &dest.display().to_string(), "--include", "llama/**"]);
            rclone_s3(&mut cmd, w, region);
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(w.root.join(format!("rclone-{}.log", node.name))).unwrap());
            children.push((i, cmd.spawn().map_err(|e| format!("rclone: {e}"))?));
        }
    }
    let mut done = vec![0.0f64; net.regions.len()];
    for (i, mut child) in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("rclone copy failed: see {}", w.root.display()));
        }
        done[i] = done[i].max(started.elapsed().as_secs_f64());
    }
    Ok(rows(net, label, &before, &done, version_bytes, bound_bytes))
}

/// BLAKE3 of every file of the dataset as the source holds it now, by path.
fn source_hashes(w: &World) -> Vec<(String, blake3::Hash)> {
    let mut files: Vec<(String, blake3::Hash)> = std::fs::read_dir(&w.data)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), blake3::hash(&std::fs::read(e.path()).unwrap())))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// Every node mounts the bucket with `tool` (a fresh cache each) and reads every file of the
/// dataset once through its mount, hashing what it reads; times each region until all its
/// nodes are done, mounting included.
fn first_read(
    tool: Baseline,
    w: &World,
    net: &Topology,
    version: u64,
    version_bytes: u64,
    bound_bytes: u64,
) -> Result<Vec<Row>, String> {
    let expected = source_hashes(w);
    let before: Vec<u64> = net.regions.iter().map(|r| tx_bytes(&r.uplink)).collect();
    let started = Instant::now();
    let mut mounts = aqueduct_e2e::Children::default();
    let mut readers = Vec::new();
    let mut dirs = Vec::new();
    for (i, region) in net.regions.iter().enumerate() {
        for node in &region.nodes {
            let name = format!("{tool:?}-v{version}-{}", node.name).to_lowercase();
            let dir = w.root.join(format!("mnt-{name}"));
            let cache = w.root.join(format!("cache-{name}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::create_dir_all(&cache).unwrap();
            dirs.push(dir.clone());
            let mut cmd = net.command(node, Path::new(tool.program()));
            if tool == Baseline::RcloneMount {
                cmd.args(["mount", ":s3:models"]).arg(&dir).args(["--read-only", "--vfs-cache-mode", "full"]);
                cmd.arg("--cache-dir").arg(&cache);
                rclone_s3(&mut cmd, w, region);
            } else {
                let passwd = w.root.join(format!("s3fs-{name}.passwd"));
                std::fs::write(&passwd, format!("{}:{}", aqueduct_testkit::ACCESS_KEY, aqueduct_testkit::SECRET_KEY))
                    .unwrap();
                std::fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
                cmd.arg("models").arg(&dir).args([
                    "-f",
                    "-o",
                    "ro",
                    "-o",
                    "use_path_request_style",
                    "-o",
                    "endpoint=us-east-1",
                ]);
                cmd.arg("-o").arg(format!("url=http://{}:{}", region.hub_ip, w.s3_endpoint().port()));
                cmd.arg("-o").arg(format!("passwd_file={}", passwd.display()));
            }
            mounts.0.push(aqueduct_e2e::spawn_command(cmd, &w.root.join(format!("{name}.log"))));
            let expected = expected.clone();
            readers.push((
                i,
                std::thread::spawn(move || -> Result<(), String> {
                    let files = dir.join("llama");
                    let deadline = Instant::now() + std::time::Duration::from_secs(120);
                    while !files.join(&expected[0].0).exists() {
                        if Instant::now() > deadline {
                            return Err(format!("{} did not show the dataset within 120 s", dir.display()));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    for (file, hash) in &expected {
                        let mut hasher = blake3::Hasher::new();
                        let mut reader = std::fs::File::open(files.join(file)).map_err(|e| format!("{file}: {e}"))?;
                        std::io::copy(&mut reader, &mut hasher).map_err(|e| format!("reading {file}: {e}"))?;
                        if hasher.finalize() != *hash {
                            return Err(format!("{file} read through {} differs from the source", dir.display()));
                        }
                    }
                    Ok(())
                }),
            ));
        }
    }
    let mut done = vec![0.0f64; net.regions.len()];
    let mut failed = None;
    for (i, reader) in readers {
        match reader.join().unwrap() {
            Ok(()) => done[i] = done[i].max(started.elapsed().as_secs_f64()),
            Err(e) => failed = Some(e),
        }
    }
    let rows = rows(net, &tool.label(version), &before, &done, version_bytes, bound_bytes);
    dirs.iter().for_each(|dir| aqueduct_e2e::netns::unmount_under(dir));
    drop(mounts);
    match failed {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

fn main() {
    if let Some(why) = aqueduct_e2e::netns::missing() {
        println!("topology benchmark not run: {why}");
        return;
    }
    let Some(spoke) = spoke_binary() else {
        println!("topology benchmark not run: build the spoke first: cargo build --release -p aqueduct-spoke");
        return;
    };
    let size_mib: usize = env("AQ_BENCH_MIB", 256);
    let link_mbit: u64 = env("AQ_BENCH_LINK_MBIT", 100);
    let link = link_mbit * 1_000_000 / 8;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut net = Topology::build(&[("eu", 2, link), ("us", 2, link)]);
        let hosts: Vec<String> = net.regions.iter().map(|r| r.hub_ip.to_string()).collect();
        let mut w = world_at(SourceKind::S3, "0.0.0.0:0".parse().unwrap(), &hosts).await;
        net.mount_roots.push(w.root.clone());
        write_model(&w, size_mib << 20, false).await;
        let v1 = w.snapshot().await;
        let budgets = vec![1 << 30; net.regions.len()];
        let (spokes, _configs) = w.start_spokes_in(&net, &budgets, &spoke).await;

        let baselines = Baseline::parse(&std::env::var("AQ_BENCH_BASELINES").unwrap_or("copy,rclone-mount".into()));
        let mut rows = aqueduct(&mut w, &net, 1, "aqueduct v1", v1.bytes).await;
        // Each baseline's rows, or why it did not run.
        let mut baseline_rows: Vec<(Baseline, Result<Vec<Row>, String>)> =
            baselines.iter().map(|&b| (b, b.run(&w, &net, 1, v1.bytes, v1.bytes))).collect();
        write_model(&w, size_mib << 20, true).await;
        let v2 = w.snapshot().await;
        rows.extend(aqueduct(&mut w, &net, 2, "aqueduct v2", v2.new_bytes).await);
        for (b, result) in &mut baseline_rows {
            if let Ok(v1_rows) = result {
                match b.run(&w, &net, 2, v2.bytes, v2.new_bytes) {
                    Ok(v2_rows) => v1_rows.extend(v2_rows),
                    Err(e) => *result = Err(e),
                }
            }
        }

        println!(
            "topology benchmark: 2 regions x 2 nodes, each region behind a {link_mbit} Mbit/s tbf link; \
             model {size_mib} MiB; v2 = header +37 B and 2% of tensors rewritten ({:.1} MiB new); S3 = s3s-fs",
            v2.new_bytes as f64 / MIB
        );
        println!(
            "{:<16} {:<6} {:>14} {:>14} {:>9} {:>12} {:>11} {:>12}",
            "run", "region", "link bytes", "version bytes", "seconds", "rate/link", "bound (s)", "vs bound"
        );
        let print = |r: &Row| {
            let bound = r.bound_bytes as f64 / link as f64;
            println!(
                "{:<16} {:<6} {:>14} {:>14} {:>9.2} {:>12.3} {:>11.2} {:>12.2}",
                r.what,
                r.region,
                r.link_bytes,
                r.version_bytes,
                r.seconds,
                r.link_bytes as f64 / r.seconds / link as f64,
                bound,
                r.seconds / bound
            );
        };
        rows.iter().for_each(print);
        for (b, result) in &baseline_rows {
            match result {
                Ok(baseline) => baseline.iter().for_each(print),
                Err(why) => println!("{} not run: {why}", b.label(1)),
            }
        }
        for region in ["eu", "us"] {
            let find = |rows: &[Row], what: &str| {
                rows.iter().find(|r| r.what == what && r.region == region).map(|r| (r.link_bytes, r.seconds))
            };
            let Some(ours) = find(&rows, "aqueduct v2") else { continue };
            println!(
                "{region}: aqueduct v2 link bytes / new bytes {:.3}, time / bound {:.2}",
                ours.0 as f64 / v2.new_bytes as f64,
                ours.1 / (v2.new_bytes as f64 / link as f64)
            );
            for (b, result) in &baseline_rows {
                if let Some(theirs) = result.as_ref().ok().and_then(|rows| find(rows, &b.label(2))) {
                    println!(
                        "{region}: v2 {} / aqueduct: link bytes {:.1}x, time {:.1}x",
                        b.label(2).trim_end_matches(" v2"),
                        theirs.0 as f64 / ours.0 as f64,
                        theirs.1 / ours.1
                    );
                }
            }
        }
        drop(spokes);
        drop(w);
        drop(net);
    });
}
