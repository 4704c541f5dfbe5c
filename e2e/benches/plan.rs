//! The ETA benchmark (issue 19): in the network-namespace topology (the hub and the S3 server
//! in the data centre, a region of one node running `aqueduct-spoke`, its uplink shaped with
//! `tc tbf` at 100 Mbit/s, mutual TLS), roll out a 40 MiB version under a 4 MiB/s budget with
//! a deadline, then another under a schedule whose window drops from 8 to 2 MiB/s a few
//! seconds in, and print the ETA the hub gave at start and while each ran, the real finish (the
//! row Ready: every byte across, verified, read back), and their ratio. Printed, never asserted as a timing
//! (the machine is shared). A benchmark (CI builds it, a person runs it):
//!
//! ```sh
//! cargo build --release -p aqueduct-spoke
//! cargo bench -p aqueduct-e2e --bench plan
//! ```
//!
//! Needs root, `ip`, `tc` and `nsenter`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aqueduct_e2e::netns::Topology;
use aqueduct_e2e::{SourceKind, bin, world_at};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

const MIB: u64 = 1 << 20;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    assert!(aqueduct_e2e::netns::available(), "the ETA benchmark needs root, ip, tc and nsenter");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    runtime.block_on(eta_against_the_real_finish());
}

async fn eta_against_the_real_finish() {
    let (model, budget, link) = (40 * MIB, 4 * MIB, 12_500_000);
    let mut net = Topology::build(&[("eu", 1, link)]);
    let hosts: Vec<String> = net.regions.iter().map(|r| r.hub_ip.to_string()).collect();
    let mut w = world_at(SourceKind::S3, "0.0.0.0:0".parse().unwrap(), &hosts).await;
    net.mount_roots.push(w.root.clone());
    let (_spokes, _configs) = w.start_spokes_in(&net, &[budget], &bin("aqueduct-spoke")).await;
    std::fs::write(w.data.join("model.safetensors"), noise(model as usize, 19)).unwrap();
    std::fs::write(w.data.join("config.json"), b"{\"layers\": 32}").unwrap();
    let v1 = w.snapshot().await;

    measure(&mut w, v1.version, "flat 4 MiB/s").await;

    // A second version under a schedule whose window changes a few seconds after the start:
    // 8 MiB/s until the next minute, then 2 MiB/s for a minute (the ETA integrates both).
    std::fs::write(w.data.join("model.safetensors"), noise(model as usize, 20)).unwrap();
    let v2 = w.snapshot().await;
    if (now_ms() / 1000).rem_euclid(60) > 55 {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let now = now_ms() / 1000;
    let boundary = now - now.rem_euclid(60) + 60;
    let hm = |s: i64| format!("{:02}:{:02}", s.rem_euclid(86_400) / 3600, s.rem_euclid(3600) / 60);
    let schedule = format!("daily {}-{} 2MiB/s; 8MiB/s", hm(boundary), hm(boundary + 60));
    let req = pb::UpdateRegionRequest {
        name: "eu".into(),
        schedule: schedule.clone(),
        time_zone: "UTC".into(),
        ..Default::default()
    };
    w.admin.update_region(req).await.unwrap();
    // Start 3 s before the boundary: 24 MiB at 8 MiB/s, then 16 MiB at 2 MiB/s.
    let wait = (boundary - 3) * 1000 - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    measure(&mut w, v2.version, &format!("schedule \"{schedule}\" (UTC)")).await;
}

/// Rolls `version` out to `eu` with a deadline an hour away and prints the ETA at start and
/// while it runs against the real finish.
async fn measure(w: &mut aqueduct_e2e::World, version: u64, what: &str) {
    println!("{what}:");
    let started = Instant::now();
    let t0 = now_ms();
    let req = pb::RolloutRequest {
        dataset: "llama".into(),
        version,
        regions: vec!["eu".into()],
        deadline_unix_ms: t0 + 3_600_000,
        ..Default::default()
    };
    let resp = w.admin.rollout(req).await.unwrap().into_inner();
    let plan = &resp.plans[0];
    let planned = Duration::from_millis((plan.eta_unix_ms - t0).max(0) as u64);
    println!(
        "plan: {:.1} MiB to cross (of {:.1} MiB) at {} MiB/s now: ETA +{:.1}s; a deadline in 1h {}",
        plan.bytes as f64 / MIB as f64,
        plan.version_bytes as f64 / MIB as f64,
        plan.budget_bytes_per_sec / MIB,
        planned.as_secs_f64(),
        if plan.meets_deadline { "is met" } else { "is missed" },
    );

    let mut etas = vec![(0.0, planned.as_secs_f64())];
    let mut last_print = Instant::now();
    let finished = loop {
        let rows = w.status(version).await;
        let row = &rows[0];
        assert_ne!(row.phase(), pb::Phase::Failed, "the rollout failed: {}", row.reason);
        if row.phase() == pb::Phase::Ready {
            break started.elapsed();
        }
        if last_print.elapsed() >= Duration::from_secs(2) && row.eta_unix_ms > 0 {
            last_print = Instant::now();
            let at = started.elapsed().as_secs_f64();
            let eta = (row.eta_unix_ms - t0) as f64 / 1000.0;
            etas.push((at, eta));
            println!(
                "  at +{at:.1}s: {:.1} MiB relayed, {:.1} MiB held; ETA +{eta:.1}s",
                row.relayed_bytes as f64 / MIB as f64,
                row.cached_bytes as f64 / MIB as f64
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let real = finished.as_secs_f64();
    println!("real finish (Ready: every byte across, verified): +{real:.1}s");
    for (at, eta) in &etas {
        println!(
            "  ETA given at +{at:.1}s: +{eta:.1}s; real/ETA = {:.3} ({:+.1}%)",
            real / eta,
            (real / eta - 1.0) * 100.0
        );
    }
    let ratio = real / planned.as_secs_f64();
    println!(
        "ETA at start against the real finish: {ratio:.3} ({} the 15% the issue asks for)",
        if (ratio - 1.0).abs() <= 0.15 { "within" } else { "outside" }
    );
}
