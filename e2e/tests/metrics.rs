//! Metrics end to end: a hub and a spoke with their Prometheus endpoints on 127.0.0.1, a real
//! S3 server as the source, two rollouts. Scraped during and after each, parsed with a
//! Prometheus text parser: the relayed bytes the hub counts for the region are the bytes the
//! spoke counts as received from the hub, and the version's distinct bytes; the version lag
//! is above 0 while v2 rolls out behind an active v1, and 0 once the region serves v2.

use std::path::Path;
use std::time::{Duration, Instant};

use aqueduct_e2e::{SourceKind, scrape, with_spoke_metrics, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

/// Generous: these check what happens, not how fast.
const DEADLINE: Duration = Duration::from_secs(120);

struct Metrics(prometheus_parse::Scrape);

impl Metrics {
    async fn of(addr: std::net::SocketAddr) -> Self {
        let text = scrape(addr).await;
        Self(prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap())
    }

    /// The value of `name` with `labels` (each label given must match), if there is one.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
            |s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is not a number: {other:?}"),
            },
        )
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
    }
}

fn write_version(dir: &Path, seed: u64) {
    std::fs::write(dir.join("model.safetensors"), noise(6 << 20, seed)).unwrap();
    std::fs::write(dir.join("config.json"), format!("{{\"seed\": {seed}}}")).unwrap();
}

const HUB_RELAYED: &str = "aqueduct_hub_relayed_bytes_total";
const SPOKE_RECEIVED: &str = "aqueduct_spoke_received_bytes_total";
const LAG: &str = "aqueduct_hub_version_lag";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_add_up_and_the_version_lag_falls_to_zero() {
    let mut w = world(SourceKind::S3).await;
    let hub = w.hub_metrics().await;
    write_version(&w.data, 1);
    let v1 = w.snapshot().await;
    let config = w.region("eu", 1 << 30).await;
    let spoke = with_spoke_metrics(&config);
    w.start_spoke(&config);
    w.wait_members("eu", 1).await;
    let eu = [("region", "eu"), ("dataset", "llama")];
    let from_hub = [("origin", "hub"), ("dataset", "llama")];

    // v1 into an empty cache: each byte of the version's distinct chunks crosses once.
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    let distinct1: u64 = w.manifest(1).await.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    let (h, s) = wait_for(hub, spoke, |h, s| {
        h.get(LAG, &eu) == Some(0.0) && s.get(SPOKE_RECEIVED, &from_hub) == Some(distinct1 as f64)
    })
    .await;
    assert_eq!(h.value(HUB_RELAYED, &eu), distinct1 as f64, "hub relayed vs the version's distinct bytes");
    // One region, nothing cached before: each relayed chunk was read from the source once.
    let src = [("source", "src")];
    assert_eq!(h.value("aqueduct_hub_source_read_bytes_total", &src), distinct1 as f64, "bytes read from the source");
    assert_eq!(h.value("aqueduct_hub_source_reads_total", &src), h.value("aqueduct_hub_relayed_chunks_total", &eu));
    assert_eq!(s.value(SPOKE_RECEIVED, &from_hub), distinct1 as f64, "spoke received from the hub");
    assert_eq!(
        h.value("aqueduct_hub_relayed_chunks_total", &eu),
        s.value("aqueduct_spoke_chunks_total", &[("origin", "hub")])
    );
    assert_eq!(h.value("aqueduct_hub_version_served", &eu), 1.0);
    assert_eq!(h.value("aqueduct_hub_rollout_cached_bytes", &[("version", "1"), ("region", "eu")]), v1.bytes as f64);
    assert_eq!(h.value("aqueduct_hub_rollout_phase", &[("version", "1"), ("region", "eu"), ("phase", "Ready")]), 1.0);
    assert_eq!(h.value("aqueduct_hub_spokes", &[("region", "eu")]), 1.0);
    assert_eq!(s.value("aqueduct_spoke_replication_ready", &[("dataset", "llama"), ("version", "1")]), 1.0);
    assert!(s.value("aqueduct_spoke_cache_used_bytes", &[("tier", "disk")]) >= distinct1 as f64);
    assert_eq!(h.get("aqueduct_hub_source_verification_failures_total", &[]), None, "none failed");

    // v2 behind a slow link, so that it is caught in flight: `aq region set` first, which
    // both ends apply.
    let slow = 1 << 20;
    w.admin
        .update_region(pb::UpdateRegionRequest { name: "eu".into(), rate_bytes_per_sec: slow, ..Default::default() })
        .await
        .unwrap();
    wait_for(hub, spoke, |h, s| {
        h.get("aqueduct_hub_link_budget_bytes_per_second", &[("region", "eu")]) == Some(slow as f64)
            && s.get("aqueduct_spoke_link_budget_bytes_per_second", &[]) == Some(slow as f64)
    })
    .await;
    write_version(&w.data, 2);
    let v2 = w.snapshot().await;
    w.rollout(2, &["eu"]).await;
    // Before the region has v2 Ready, it serves v1: one version behind.
    let (h, _) = wait_for(hub, spoke, |h, _| {
        h.get("aqueduct_hub_rollout_phase", &[("version", "2"), ("region", "eu"), ("phase", "Ready")]).is_some()
    })
    .await;
    let ready = h.value("aqueduct_hub_rollout_phase", &[("version", "2"), ("region", "eu"), ("phase", "Ready")]);
    assert_eq!(ready, 0.0, "v2 was Ready at the first scrape, over a 1 MiB/s link");
    assert_eq!(h.value(LAG, &eu), 1.0, "v2 rolling out while v1 is served");
    assert_eq!(h.value("aqueduct_hub_version_served", &eu), 1.0);
    // During the transfer: what the hub counted so far never exceeds what the version needs.
    let during = h.value(HUB_RELAYED, &eu);
    assert!(during <= (distinct1 + v2.new_bytes) as f64, "{during}");
    w.wait_ready(2).await;
    if std::env::var_os("AQ_SHOW_METRICS").is_some() {
        eprintln!("{}\n{}", scrape(hub).await, scrape(spoke).await);
    }
    let (h, s) = wait_for(hub, spoke, |h, s| {
        h.get(LAG, &eu) == Some(0.0) && s.get(SPOKE_RECEIVED, &from_hub) == h.get(HUB_RELAYED, &eu)
    })
    .await;
    assert_eq!(h.value("aqueduct_hub_version_served", &eu), 2.0);
    assert_eq!(h.value("aqueduct_hub_version_newest", &[("dataset", "llama")]), 2.0);
    // v2 moved only its new chunks.
    let total = (distinct1 + v2.new_bytes) as f64;
    assert_eq!(h.value(HUB_RELAYED, &eu), total);
    assert_eq!(s.value(SPOKE_RECEIVED, &from_hub), total);
    assert_eq!(s.value("aqueduct_spoke_replication_ready", &[("dataset", "llama"), ("version", "2")]), 1.0);
}

/// Scrapes both endpoints until `done` holds (or the deadline passes); returns the last scrapes.
async fn wait_for(
    hub: std::net::SocketAddr,
    spoke: std::net::SocketAddr,
    done: impl Fn(&Metrics, &Metrics) -> bool,
) -> (Metrics, Metrics) {
    let started = Instant::now();
    loop {
        let (h, s) = (Metrics::of(hub).await, Metrics::of(spoke).await);
        if done(&h, &s) {
            return (h, s);
        }
        assert!(started.elapsed() < DEADLINE, "the metrics never got there; last hub scrape: {:?}", h.0.samples);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
