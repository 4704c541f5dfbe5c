//! Rollout classes in the network-namespace topology: a hub in the data centre (this test's
//! namespace), a region behind a `tc`-shaped uplink faster than its budget (so that the budget,
//! not the link, is the limit), a spoke process on its node, real mutual TLS. Needs root, `ip`,
//! `tc` and `nsenter` (under `CI=true` a missing one fails the test).

use std::time::{Duration, Instant};

use aqueduct_core::budget::Lane;
use aqueduct_e2e::classes::{HUB_RELAYED, by_lane};
use aqueduct_e2e::netns::Topology;
use aqueduct_e2e::{SourceKind, bin, scrape, world_at};
use aqueduct_proto::domain::class::Class;
use aqueduct_testkit::noise;

const MIB: u64 = 1 << 20;
/// The region's budget.
const BUDGET: u64 = 4 * MIB;
/// What the budget lets through at once beyond its rate (see `aqueduct_core::budget`).
const BURST: u64 = 2 * MIB;
/// A chunk granted at the end of one second and counted (handed to the transport) in the next.
const CHUNK: u64 = 2 * MIB;
/// 100 Mbit/s: the uplink is far above the budget.
const LINK: u64 = 12_500_000;

fn mib(bytes: f64) -> f64 {
    bytes / MIB as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_urgent_rollout_started_while_a_background_one_fills_the_link_is_ready_first_within_the_budget() {
    if !aqueduct_e2e::netns::available() {
        return;
    }
    let mut net = Topology::build(&[("eu", 1, LINK)]);
    let hosts = vec![net.regions[0].hub_ip.to_string()];
    let mut w = world_at(SourceKind::Dir, "0.0.0.0:0".parse().unwrap(), &hosts).await;
    net.mount_roots.push(w.root.clone());
    let hub = w.hub_metrics().await;
    // Two versions that share no chunk: llama@v1 of 32 MiB (background), mistral@v1 of 24 MiB
    // (urgent).
    std::fs::write(w.data.join("model.safetensors"), noise(32 << 20, 1)).unwrap();
    w.snapshot().await;
    let other = w.add_dataset("mistral").await;
    std::fs::write(other.join("model.safetensors"), noise(24 << 20, 2)).unwrap();
    w.snapshot_of("mistral").await;
    let (_spokes, _configs) = w.start_spokes_in(&net, &[BUDGET], &bin("aqueduct-spoke")).await;

    w.rollout_class("llama", 1, &["eu"], Class::Background).await;
    let started = Instant::now();
    let sent_before = net.sent_to(0);
    // Per second: (t, relayed per lane, bytes down the link).
    let mut samples: Vec<(f64, [f64; 4], u64)> = vec![(0.0, by_lane(&scrape(hub).await, HUB_RELAYED, ""), 0)];
    let (mut urgent_at, mut ready) = (None, [None::<f64>; 2]);
    let mut next_sample = 1u64;
    while ready.iter().any(Option::is_none) {
        assert!(started.elapsed() < Duration::from_secs(240), "the rollouts did not finish: {samples:?}");
        let t = started.elapsed().as_secs_f64();
        for (i, dataset) in ["llama", "mistral"].into_iter().enumerate() {
            if ready[i].is_none() && w.is_ready(dataset, 1).await {
                ready[i] = Some(t);
            }
        }
        if started.elapsed() >= Duration::from_secs(next_sample) {
            let counted = by_lane(&scrape(hub).await, HUB_RELAYED, "region=\"eu\"");
            samples.push((started.elapsed().as_secs_f64(), counted, net.sent_to(0) - sent_before));
            next_sample += 1;
            // The background rollout fills the link: the urgent one starts while it runs.
            if urgent_at.is_none() && counted.iter().sum::<f64>() >= (6 * MIB) as f64 {
                assert!(ready[0].is_none(), "the background rollout finished before the urgent one started");
                w.rollout_class("mistral", 1, &["eu"], Class::Urgent).await;
                urgent_at = Some(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = by_lane(&scrape(hub).await, HUB_RELAYED, "region=\"eu\"");
    samples.push((started.elapsed().as_secs_f64(), last, net.sent_to(0) - sent_before));

    let (background_ready, urgent_ready) = (ready[0].unwrap(), ready[1].unwrap());
    let urgent_at = urgent_at.expect("the urgent rollout was started");
    println!(
        "budget {:.0} MiB/s (burst {:.0} MiB), link 100 Mbit/s; llama@v1 (background) 32 MiB from t=0, mistral@v1 (urgent) 24 MiB from t={urgent_at:.1} s",
        mib(BUDGET as f64),
        mib(BURST as f64)
    );
    println!(
        "{:>6} {:>12} {:>16} {:>16} {:>14} {:>12}",
        "t(s)", "urgent MiB/s", "background MiB/s", "relayed MiB/s", "limit MiB/s", "link MiB/s"
    );
    let mut worst: f64 = 0.0;
    for pair in samples.windows(2) {
        let ((t0, c0, l0), (t1, c1, l1)) = (&pair[0], &pair[1]);
        let dt = t1 - t0;
        let lane = |l: Lane| (c1[l as usize] - c0[l as usize]) / dt;
        let total: f64 = (0..4).map(|i| c1[i] - c0[i]).sum();
        // A limit held, not a timing: what the budget may pass in `dt`, its burst, and one
        // chunk granted in the interval before and counted in this one.
        let limit = BUDGET as f64 * dt + (BURST + CHUNK) as f64;
        println!(
            "{t1:>6.1} {:>12.2} {:>16.2} {:>16.2} {:>14.2} {:>12.2}",
            mib(lane(Lane::Urgent)),
            mib(lane(Lane::Background)),
            mib(total / dt),
            mib(limit / dt),
            mib((l1 - l0) as f64 / dt)
        );
        worst = worst.max(total / limit);
        assert!(
            total <= limit,
            "{:.2} MiB relayed to the region between {t0:.1} s and {t1:.1} s: over the budget ({:.0} MiB/s) and its burst",
            mib(total),
            mib(BUDGET as f64)
        );
    }
    // Over the whole run too: never more than the rate since the start and one burst.
    let (t_end, c_end, _) = samples.last().unwrap();
    let relayed: f64 = c_end.iter().sum();
    println!(
        "relayed {:.1} MiB in {t_end:.1} s ({:.2} MiB/s, budget {:.0}); urgent Ready at {urgent_ready:.1} s, background Ready at {background_ready:.1} s; worst second at {:.0}% of its limit",
        mib(relayed),
        mib(relayed / t_end),
        mib(BUDGET as f64),
        worst * 100.0
    );
    assert!(relayed <= BUDGET as f64 * t_end + (BURST + CHUNK) as f64, "more than the budget over the run");
    assert_eq!(c_end[Lane::Foreground as usize], 0.0, "no pod read anything");
    assert!(c_end[Lane::Urgent as usize] >= (24 * MIB) as f64 && c_end[Lane::Background as usize] >= (32 * MIB) as f64);
    assert!(
        urgent_ready < background_ready,
        "the urgent rollout (Ready at {urgent_ready:.1} s) did not finish before the background one ({background_ready:.1} s)"
    );
}
