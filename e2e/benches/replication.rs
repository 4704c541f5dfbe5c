//! Replication under link budgets, and over loopback with no budget against a plain copy.
//!
//! A hub (this process, mutual TLS on 127.0.0.1) over a local directory holding a
//! model-shaped version of AQ_BENCH_MIB MiB (default 512); one region per budget (25, 50 and
//! 100 MiB/s, then one with no practical budget), each with one spoke and its own empty
//! chunk store, rolled out one after the other. For each: time from rollout to Ready,
//! achieved rate / budget, and bytes over the link / bytes needed (distinct chunk bytes).
//! The unbudgeted run is printed next to a plain copy of the same files between two
//! directories of this machine (`std::fs::copy`, page cache warm), in the same run.
//!
//! Run: `cargo bench -p aqueduct-e2e --bench replication`
//! (AQ_BENCH_BUDGETS_MIB=25,50,100,0 picks the budgets, 0 meaning none; AQUEDUCT_LOG=info
//! shows the components' logs.)

use std::time::Instant;

use aqueduct_e2e::{SourceKind, world};
use aqueduct_testkit::noise;

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let budgets: Vec<u64> = std::env::var("AQ_BENCH_BUDGETS_MIB")
        .unwrap_or_else(|_| "25,50,100,0".into())
        .split(',')
        .map(|b| b.trim().parse().expect("AQ_BENCH_BUDGETS_MIB is a comma-separated list of MiB/s, 0 for none"))
        .collect();
    let total_mib: usize = std::env::var("AQ_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut w = world(SourceKind::Dir).await;
        let half = (total_mib << 20) / 2;
        for i in 0..2u64 {
            let mut bytes = format!("{{\"__metadata__\":{{\"shard\":{i}}}}}").into_bytes();
            bytes.extend(noise(half - bytes.len(), i + 1));
            std::fs::write(w.data.join(format!("model-0000{i}-of-00002.safetensors")), bytes).unwrap();
        }
        let v1 = w.snapshot().await;
        let needed: u64 = w.manifest(1).await.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
        let mib = |b: f64| b / f64::from(1 << 20);

        println!("replication benchmark: {} MiB version ({} chunks), source = local directory, hub and spoke over mTLS on 127.0.0.1", total_mib, v1.chunks);
        println!("{:<12} {:>10} {:>10} {:>12} {:>14} {:>16}", "budget", "seconds", "MiB/s", "rate/budget", "link bytes", "link/needed");
        let mut unbudgeted = 0.0;
        for (i, mib_per_s) in budgets.into_iter().enumerate() {
            let (label, rate) = match mib_per_s {
                0 => ("none".to_string(), 64u64 << 30),
                n => (format!("{n}MiB/s"), n << 20),
            };
            let region = format!("r{i}");
            let config = w.region(&region, rate).await;
            w.start_spoke(&config);
            let started = Instant::now();
            w.rollout(1, &[&region]).await;
            let rows = w.wait_ready(1).await;
            let seconds = started.elapsed().as_secs_f64();
            let row = rows.iter().find(|r| r.region == region).unwrap();
            let achieved = row.relayed_bytes as f64 / seconds;
            let vs_budget = if rate > 1 << 30 { "-".to_string() } else { format!("{:.3}", achieved / rate as f64) };
            println!(
                "{label:<12} {seconds:>10.2} {:>10.1} {vs_budget:>12} {:>14} {:>16.4}",
                mib(achieved),
                row.relayed_bytes,
                row.relayed_bytes as f64 / needed as f64
            );
            unbudgeted = mib(achieved);
        }

        let copy_dir = w.root.join("plain-copy");
        std::fs::create_dir_all(&copy_dir).unwrap();
        let started = Instant::now();
        let mut copied = 0;
        for entry in std::fs::read_dir(&w.data).unwrap().flatten() {
            copied += std::fs::copy(entry.path(), copy_dir.join(entry.file_name())).unwrap();
        }
        let copy_rate = mib(copied as f64 / started.elapsed().as_secs_f64());
        println!("plain copy of the same files between two directories: {copy_rate:.1} MiB/s");
        println!("aqueduct with no budget / plain copy: {:.2}", unbudgeted / copy_rate);
    });
}
