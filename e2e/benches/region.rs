//! One region of 1, 2, 4 and 8 spokes behind one link: what crosses the link, and how long
//! until every spoke holds the version.
//!
//! A hub (this process, mutual TLS on 127.0.0.1) over a local directory holding a
//! model-shaped version of AQ_BENCH_MIB MiB (default 64); for each region size a new region
//! whose link budget is AQ_BENCH_LINK_MIB MiB/s (default 16), whose spokes (in this process)
//! exchange chunks as peers over mutual TLS on 127.0.0.1, a region network much faster than
//! the link. Every spoke holds the whole version before the region is Ready (`every-node`).
//! For each size: bytes over the link / bytes of the version (aim: 1.0 to 1.02 whatever the
//! size), time from rollout until every spoke is Ready, and that time relative to one spoke
//! (aim: under 1.5 at 8). The lower bound (version bytes / link rate) is printed beside.
//!
//! Run: `cargo bench -p aqueduct-e2e --bench region`
//! (AQ_BENCH_NODES=1,2,4,8 picks the sizes; AQUEDUCT_LOG=info shows the components' logs.)

use std::time::Instant;

use aqueduct_e2e::{SourceKind, world};
use aqueduct_testkit::noise;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let sizes: Vec<usize> = std::env::var("AQ_BENCH_NODES")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .map(|n| n.trim().parse().expect("AQ_BENCH_NODES is a comma-separated list of node counts"))
        .collect();
    let total_mib: usize = env("AQ_BENCH_MIB", 64);
    let link_mib: u64 = env("AQ_BENCH_LINK_MIB", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut w = world(SourceKind::Dir).await;
        let mut bytes = b"{\"__metadata__\":{\"format\":\"pt\"}}".to_vec();
        bytes.extend(noise((total_mib << 20) - bytes.len(), 7));
        std::fs::write(w.data.join("model.safetensors"), bytes).unwrap();
        let v1 = w.snapshot().await;
        let link = link_mib << 20;
        let bound = v1.bytes as f64 / link as f64;
        println!(
            "regional cache benchmark: {total_mib} MiB version ({} chunks), link budget {link_mib} MiB/s per region, \
             spokes and peers over mTLS on 127.0.0.1, every-node replication",
            v1.chunks
        );
        println!("lower bound (version bytes / link rate): {bound:.2} s");
        println!(
            "{:>6} {:>14} {:>14} {:>12} {:>10} {:>12} {:>10}",
            "nodes", "link bytes", "version bytes", "link/version", "seconds", "vs 1 node", "vs bound"
        );
        let mut one = None;
        for (i, n) in sizes.into_iter().enumerate() {
            let region = format!("r{i}");
            let configs = w.region_of(&region, link, n).await;
            let stops: Vec<_> = configs.iter().map(|c| w.start_spoke(c)).collect();
            w.wait_members(&region, n).await;
            let started = Instant::now();
            w.rollout(1, &[&region]).await;
            // Ready in the region means every live spoke holds the version, verified.
            let rows = w.wait_ready(1).await;
            let seconds = started.elapsed().as_secs_f64();
            let rows = rows.into_iter().filter(|r| r.region == region).collect::<Vec<_>>();
            let row = &rows[0];
            let base = *one.get_or_insert(seconds);
            println!(
                "{n:>6} {:>14} {:>14} {:>12.4} {seconds:>10.2} {:>12.2} {:>10.2}",
                row.relayed_bytes,
                v1.bytes,
                row.relayed_bytes as f64 / v1.bytes as f64,
                seconds / base,
                seconds / bound
            );
            for stop in stops {
                stop.cancel();
            }
        }
    });
}
