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
//! - `rclone copy` (if installed): every node copies the model from the same S3 server through
//!   the same link, v1 into an empty directory, then v2 over it; time until every node of the
//!   region is done.
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
            assert_ne!(row.phase, "Failed", "{}: {}", row.region, row.reason);
            let i = regions.iter().position(|r| *r == row.region).unwrap();
            if row.phase == "Ready" && done[i].is_none() {
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

/// Every node runs `rclone copy` of the model into its own directory; times each region
/// until all its nodes are done.
fn rclone(w: &World, net: &Topology, label: &str, version_bytes: u64, bound_bytes: u64) -> Result<Vec<Row>, String> {
    if std::process::Command::new("rclone").arg("version").output().is_err() {
        return Err("rclone is not installed (apt-get install rclone)".into());
    }
    let port = w.s3_endpoint().port();
    let before: Vec<u64> = net.regions.iter().map(|r| tx_bytes(&r.uplink)).collect();
    let started = Instant::now();
    let mut children = Vec::new();
    for (i, region) in net.regions.iter().enumerate() {
        for node in &region.nodes {
            let dest = w.root.join(format!("rclone-{}", node.name));
            let mut cmd = net.command(node, Path::new("rclone"));
            cmd.args(["copy", ":s3:models", &dest.display().to_string(), "--include", "llama/**"])
                .arg("--s3-provider=Other")
                .arg(format!("--s3-endpoint=http://{}:{port}", region.hub_ip))
                .arg(format!("--s3-access-key-id={}", aqueduct_testkit::ACCESS_KEY))
                .arg(format!("--s3-secret-access-key={}", aqueduct_testkit::SECRET_KEY))
                .args(["--s3-region=us-east-1", "--s3-force-path-style=true"])
                .env_remove("AWS_CA_BUNDLE")
                .stdout(std::process::Stdio::null())
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

        let mut rows = aqueduct(&mut w, &net, 1, "aqueduct v1", v1.bytes).await;
        let rclone_v1 = rclone(&w, &net, "rclone copy v1", v1.bytes, v1.bytes);
        write_model(&w, size_mib << 20, true).await;
        let v2 = w.snapshot().await;
        rows.extend(aqueduct(&mut w, &net, 2, "aqueduct v2", v2.new_bytes).await);
        let rclone_v2 = rclone_v1.and_then(|mut v1_rows| {
            v1_rows.extend(rclone(&w, &net, "rclone copy v2", v2.bytes, v2.new_bytes)?);
            Ok(v1_rows)
        });

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
        match &rclone_v2 {
            Ok(baseline) => {
                baseline.iter().for_each(print);
                for region in ["eu", "us"] {
                    let find = |rows: &[Row], what: &str| {
                        rows.iter().find(|r| r.what == what && r.region == region).map(|r| (r.link_bytes, r.seconds))
                    };
                    let (Some(a), Some(b)) = (find(&rows, "aqueduct v2"), find(baseline, "rclone copy v2")) else {
                        continue;
                    };
                    println!(
                        "{region}: v2 rclone / aqueduct: link bytes {:.1}x, time {:.1}x; aqueduct v2 link bytes / new bytes {:.3}",
                        b.0 as f64 / a.0 as f64,
                        b.1 / a.1,
                        a.0 as f64 / v2.new_bytes as f64
                    );
                }
            }
            Err(why) => println!("rclone copy not run: {why}"),
        }
        drop(spokes);
        drop(w);
        drop(net);
    });
}
