//! A link budget changed mid-transfer (`aq region set`, through the admin API): how soon the
//! achieved rate follows, seen from both ends' Prometheus counters.
//!
//! A hub (this process, mutual TLS on 127.0.0.1) over a local directory holding one file of
//! AQ_BENCH_MIB MiB (default 80); one region with one spoke (in this process, empty store),
//! both with their metrics endpoints on. The rollout starts under the first budget of
//! AQ_BENCH_SCHEDULE (default `0:4,4:16,7:2`: at second 0 4 MiB/s, at second 4 16 MiB/s, at
//! second 7 2 MiB/s) and the budget is set again at each later second of it. Every second
//! until Ready it prints the budget in force, the bytes per second the spoke counted as
//! received from the hub (`aqueduct_spoke_received_bytes_total`), the hub counted as relayed
//! (`aqueduct_hub_relayed_bytes_total`), and the hub's own `achieved_rate` gauge. Printed, not
//! asserted: a change shows in the next second's row (each limiter starts the new rate with a
//! burst of 2 MiB).
//!
//! Run: `cargo bench -p aqueduct-e2e --bench budget` (AQUEDUCT_LOG=info shows the logs).

use std::time::{Duration, Instant};

use aqueduct_e2e::{SourceKind, scrape, with_spoke_metrics, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let total_mib: usize = std::env::var("AQ_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(80);
    let schedule: Vec<(u64, u64)> = std::env::var("AQ_BENCH_SCHEDULE")
        .unwrap_or_else(|_| "0:4,4:16,7:2".into())
        .split(',')
        .map(|step| {
            let (at, mib) = step.split_once(':').expect("AQ_BENCH_SCHEDULE is SECOND:MIB_PER_S,...");
            (at.trim().parse().expect("a second"), mib.trim().parse::<u64>().expect("MiB/s") << 20)
        })
        .collect();
    assert_eq!(schedule.first().map(|s| s.0), Some(0), "AQ_BENCH_SCHEDULE starts at second 0");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut w = world(SourceKind::Dir).await;
        let hub = w.hub_metrics().await;
        std::fs::write(w.data.join("model.safetensors"), noise(total_mib << 20, 7)).unwrap();
        w.snapshot().await;
        let config = w.region("bench", schedule[0].1).await;
        let spoke = with_spoke_metrics(&config);
        w.start_spoke(&config);
        w.wait_members("bench", 1).await;
        let mib = |b: f64| b / f64::from(1 << 20);

        println!(
            "budget change benchmark: {total_mib} MiB version, source = local directory, hub and spoke over mTLS on 127.0.0.1"
        );
        println!(
            "{:>4} {:>14} {:>18} {:>18} {:>18}",
            "t(s)", "budget MiB/s", "spoke recv MiB/s", "hub relayed MiB/s", "hub gauge MiB/s"
        );
        let started = Instant::now();
        w.rollout(1, &["bench"]).await;
        let (mut last_hub, mut last_spoke, mut last_t) = (0.0, 0.0, 0.0);
        let mut budget = schedule[0].1;
        for second in 1u64.. {
            tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
            let (h, s) = (counters(hub, &scrape(hub).await), counters(spoke, &scrape(spoke).await));
            let t = started.elapsed().as_secs_f64();
            let dt = t - last_t;
            println!(
                "{second:>4} {:>14.1} {:>18.2} {:>18.2} {:>18.2}",
                mib(budget as f64),
                mib((s.0 - last_spoke) / dt),
                mib((h.0 - last_hub) / dt),
                mib(h.1)
            );
            (last_hub, last_spoke, last_t) = (h.0, s.0, t);
            if w.status(1).await.iter().all(|r| r.phase() == pb::Phase::Ready) {
                println!("Ready after {t:.1} s; relayed {:.1} MiB, received {:.1} MiB", mib(h.0), mib(s.0));
                break;
            }
            if let Some(&(_, rate)) = schedule.iter().find(|(at, _)| *at == second) {
                let req = pb::UpdateRegionRequest { name: "bench".into(), rate_bytes_per_sec: rate, ..Default::default() };
                w.admin.update_region(req).await.unwrap();
                budget = rate;
                println!("     `aq region set bench --rate {:.0}MiB/s` at {:.2} s", mib(rate as f64), started.elapsed().as_secs_f64());
            }
        }
    });
}

/// From a scrape of `addr`: the bytes counted for the region (hub: relayed; spoke: received
/// from the hub) and, for the hub, its achieved-rate gauge.
fn counters(addr: std::net::SocketAddr, text: &str) -> (f64, f64) {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str| {
        scrape.samples.iter().find(|s| s.metric == name).map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} on {addr} is not a number"),
        })
    };
    if text.contains("aqueduct_hub_") {
        (value("aqueduct_hub_relayed_bytes_total"), value("aqueduct_hub_achieved_rate_bytes_per_second"))
    } else {
        (value("aqueduct_spoke_received_bytes_total"), 0.0)
    }
}
