//! Classes across a window boundary: the rate on the hub's relay and on each spoke, per
//! second, while an urgent and a background rollout share a region whose budget schedule
//! changes a minute or so after the start. Printed, not asserted.
//!
//! The network-namespace topology (see `aqueduct_e2e::netns`): the hub in this process (the
//! data centre), one region of AQ_BENCH_NODES nodes (default 2) behind a 100 Mbit/s `tc`
//! shaped uplink, an `aqueduct-spoke` process on each node, over mutual TLS. The region's
//! budget is a schedule in UTC, `daily HH:MM-HH:MM BEFORE; AFTER`, whose window ends at the
//! first minute boundary at least 30 s away: AQ_BENCH_BEFORE MiB/s (default 8) until then,
//! AQ_BENCH_AFTER MiB/s (default 3) after. A background rollout of AQ_BENCH_BACKGROUND_MIB
//! (default 80) starts 12 s before the boundary and an urgent one of AQ_BENCH_URGENT_MIB
//! (default 48, another dataset) 6 s before it; every spoke holds each whole version
//! (`every-node`: each chunk crosses the link once, the second spoke copies from its peer).
//! Every second until both are Ready it prints the budget in force (the schedule's), the
//! bytes per second the hub relayed to the region per class (urgent, background) and in all,
//! what went down the link (the uplink's counter, TLS included), and what each spoke counted as
//! received from the hub (`aqueduct_spoke_received_class_bytes_total`).
//!
//! Run (as root): `cargo build --release -p aqueduct-spoke && cargo bench -p aqueduct-e2e --bench classes`

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use aqueduct_core::budget::Lane;
use aqueduct_e2e::classes::{HUB_RELAYED, SPOKE_RECEIVED, by_lane};
use aqueduct_e2e::netns::Topology;
use aqueduct_e2e::{Children, SourceKind, bin, scrape, world_at};
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

const MIB: f64 = (1 << 20) as f64;
/// Where each spoke serves its metrics, on its node's address.
const SPOKE_METRICS_PORT: u16 = 9464;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// `HH:MM` of a second of the day.
fn hhmm(second: u64) -> String {
    format!("{:02}:{:02}", second / 3600, second % 3600 / 60)
}

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    if !aqueduct_e2e::netns::available() {
        return;
    }
    let nodes: usize = env("AQ_BENCH_NODES", 2);
    let (before, after): (u64, u64) = (env("AQ_BENCH_BEFORE", 8), env("AQ_BENCH_AFTER", 3));
    let (background_mib, urgent_mib): (usize, usize) =
        (env("AQ_BENCH_BACKGROUND_MIB", 80), env("AQ_BENCH_URGENT_MIB", 48));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut net = Topology::build(&[("eu", nodes, 12_500_000)]);
        let hosts = vec![net.regions[0].hub_ip.to_string()];
        let mut w = world_at(SourceKind::Dir, "0.0.0.0:0".parse().unwrap(), &hosts).await;
        net.mount_roots.push(w.root.clone());
        let hub = w.hub_metrics().await;
        std::fs::write(w.data.join("model.safetensors"), noise(background_mib << 20, 1)).unwrap();
        w.snapshot().await;
        let other = w.add_dataset("mistral").await;
        std::fs::write(other.join("model.safetensors"), noise(urgent_mib << 20, 2)).unwrap();
        w.snapshot_of("mistral").await;

        let configs = w.region_in(&net.regions[0], before << 20).await;
        let mut spokes = Children::default();
        let mut spoke_metrics: Vec<SocketAddr> = Vec::new();
        for (node, config) in net.regions[0].nodes.iter().zip(&configs) {
            let listen = SocketAddr::new(node.ip.into(), SPOKE_METRICS_PORT);
            let mut text = std::fs::read_to_string(config).unwrap();
            text.push_str(&format!("[metrics]\nlisten = \"{listen}\"\n"));
            std::fs::write(config, text).unwrap();
            spokes.0.push(w.start_spoke_in(&net, node, config, &bin("aqueduct-spoke")));
            spoke_metrics.push(listen);
        }
        w.wait_members("eu", nodes).await;

        // The window ends at the first minute boundary at least 30 s away.
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let boundary = (now + 30).div_ceil(60) * 60;
        let (start, end) = ((now / 60) * 60 - 60, boundary);
        assert_eq!(start / 86_400, end / 86_400, "the window would cross midnight UTC: run again in two minutes");
        let schedule = format!("daily {}-{} {before}MiB/s; {after}MiB/s", hhmm(start % 86_400), hhmm(end % 86_400));
        let req = pb::UpdateRegionRequest {
            name: "eu".into(),
            schedule: schedule.clone(),
            time_zone: "UTC".into(),
            ..Default::default()
        };
        w.admin.update_region(req).await.unwrap();
        let at = |second: u64| Instant::now() + Duration::from_secs(second.saturating_sub(now));
        let at_boundary = at(boundary);
        let between = |a: Instant| a.saturating_duration_since(Instant::now());

        println!(
            "classes across a window boundary: region eu, {nodes} spokes (every-node) behind a 100 Mbit/s link, schedule `{schedule}` (UTC): {before} MiB/s, then {after} MiB/s at {} UTC",
            hhmm(boundary % 86_400)
        );
        println!(
            "llama@v1 background {background_mib} MiB from boundary-12 s, mistral@v1 urgent {urgent_mib} MiB from boundary-6 s; source: a local directory on the hub"
        );
        tokio::time::sleep(between(at_boundary - Duration::from_secs(12))).await;
        w.rollout_class("llama", 1, &["eu"], Class::Background).await;
        let started = Instant::now();
        let mut urgent_started = false;
        let mut header = format!(
            "{:>6} {:>8} {:>10} {:>12} {:>12} {:>10}",
            "t(s)", "budget", "hub urgent", "hub backgr.", "hub relayed", "link"
        );
        for i in 1..=nodes {
            header.push_str(&format!(" {:>12}", format!("spoke {i} recv")));
        }
        println!("{header}   (MiB/s; t from the background rollout, the window changes at t=12)");
        let spoke_total = |text: &str| by_lane(text, SPOKE_RECEIVED, "").iter().sum::<f64>();
        let mut last_hub = by_lane(&scrape(hub).await, HUB_RELAYED, "region=\"eu\"");
        let mut last_spokes = Vec::new();
        for m in &spoke_metrics {
            last_spokes.push(spoke_total(&scrape(*m).await));
        }
        let (mut last_link, mut last_t) = (net.sent_to(0), 0.0);
        let mut ready = [None::<f64>; 2];
        for second in 1u64.. {
            if !urgent_started && started.elapsed() >= Duration::from_secs(6) {
                w.rollout_class("mistral", 1, &["eu"], Class::Urgent).await;
                urgent_started = true;
            }
            tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
            let text = scrape(hub).await;
            let counted = by_lane(&text, HUB_RELAYED, "region=\"eu\"");
            let link = net.sent_to(0);
            let t = started.elapsed().as_secs_f64();
            let dt = t - last_t;
            let lane = |l: Lane| (counted[l as usize] - last_hub[l as usize]) / dt / MIB;
            let total = (counted.iter().sum::<f64>() - last_hub.iter().sum::<f64>()) / dt / MIB;
            // The schedule's window in force (the hub's `link_budget` gauge shows the flat rate).
            let budget = if Instant::now() < at_boundary { before } else { after } as f64;
            let mut row = format!(
                "{second:>6} {budget:>8.1} {:>10.2} {:>12.2} {total:>12.2} {:>10.2}",
                lane(Lane::Urgent),
                lane(Lane::Background),
                (link - last_link) as f64 / dt / MIB
            );
            for (i, m) in spoke_metrics.iter().enumerate() {
                let got = spoke_total(&scrape(*m).await);
                row.push_str(&format!(" {:>12.2}", (got - last_spokes[i]) / dt / MIB));
                last_spokes[i] = got;
            }
            for (i, dataset) in ["llama", "mistral"].into_iter().enumerate() {
                if ready[i].is_none() && w.is_ready(dataset, 1).await {
                    ready[i] = Some(t);
                    row.push_str(&format!("   {dataset} Ready"));
                }
            }
            println!("{row}");
            (last_hub, last_link, last_t) = (counted, link, t);
            if ready.iter().all(Option::is_some) || second > 600 {
                break;
            }
        }
        println!(
            "urgent Ready at {:.1} s, background Ready at {:.1} s (t from the background rollout)",
            ready[1].unwrap_or(f64::NAN),
            ready[0].unwrap_or(f64::NAN)
        );
        drop(spokes);
        drop(net);
    });
}
