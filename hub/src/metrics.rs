//! The hub's Prometheus metrics (`[metrics]` in its config; see `aqueduct_core::metrics` for
//! the endpoint).
//!
//! Counted as things happen, in [`HubMetrics`]: bytes and chunks relayed per region and
//! dataset (and bytes per region and class), chunks whose source bytes failed verification, and
//! what replication asked of each source (bytes and reads) and what the relay cache answered
//! instead. Read from the hub's state at
//! each scrape ([`HubMetrics::refresh`]): each region's link budget and live spokes, each
//! rollout's progress and phase, the version each region serves and how far behind it is.
//! The achieved rate per region is measured from the relayed bytes every [`RATE_EVERY`].
//!
//! Version lag, per dataset and region: the newest version rolled out to the region minus the
//! version the region serves (0 when it serves none yet counts as version 0). It is above 0
//! while a rollout is under way and falls to 0 when the region serves the newest version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aqueduct_proto::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::rollout::active_versions;
use crate::store::{MetaStore, StoreError};

/// How often the achieved rate per region is measured.
pub const RATE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatasetLabels {
    pub dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionDatasetLabels {
    pub region: String,
    pub dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionClassLabels {
    pub region: String,
    /// The lane the bytes drew in: foreground (a pod's read), urgent, normal, background.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub dataset: String,
    pub version: String,
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub dataset: String,
    pub version: String,
    pub region: String,
    pub phase: String,
}

/// Every metric of the hub. Cheap to update from the relay's hot path (atomics under a
/// family's read lock); the gauges read from state are refreshed before each scrape.
#[derive(Default)]
pub struct HubMetrics {
    relayed_bytes: Family<RegionDatasetLabels, Counter>,
    relayed_chunks: Family<RegionDatasetLabels, Counter>,
    relayed_class: Family<RegionClassLabels, Counter>,
    verification_failures: Family<DatasetLabels, Counter>,
    source_read_bytes: Family<SourceLabels, Counter>,
    source_reads: Family<SourceLabels, Counter>,
    relay_cache_hits: Counter,
    budget: Family<RegionLabels, Gauge>,
    achieved: Family<RegionLabels, Gauge>,
    spokes: Family<RegionLabels, Gauge>,
    rollout_cached: Family<RolloutLabels, Gauge>,
    rollout_size: Family<RolloutLabels, Gauge>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    version_newest: Family<DatasetLabels, Gauge>,
    version_served: Family<RegionDatasetLabels, Gauge>,
    version_lag: Family<RegionDatasetLabels, Gauge>,
    /// Bytes relayed per region since the hub started, and the last measurement of them.
    per_region: Mutex<HashMap<String, u64>>,
    last: Mutex<Option<(Instant, HashMap<String, u64>)>>,
}

impl HubMetrics {
    /// A registry (prefix `aqueduct_hub`) holding every metric.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("aqueduct_hub");
        r.register(
            "build_info",
            "1, labelled with the hub's version (and git commit when the build knew it)",
            aqueduct_core::metrics::build_info(env!("CARGO_PKG_VERSION")),
        );
        let rate = || Unit::Other("bytes_per_second".into());
        r.register_with_unit(
            "relayed",
            "Bytes the relay sent to a region's spokes, per region and dataset (what crossed the link)",
            Unit::Bytes,
            self.relayed_bytes.clone(),
        );
        r.register("relayed_chunks", "Chunks the relay sent, per region and dataset", self.relayed_chunks.clone());
        r.register_with_unit(
            "relayed_class",
            "Bytes the relay sent to a region, per region and the lane they drew in from its budget (foreground: a pod's read; urgent, normal, background: the rollout's class)",
            Unit::Bytes,
            self.relayed_class.clone(),
        );
        r.register(
            "source_verification_failures",
            "Chunks whose bytes read from the source did not match their digest (the source changed)",
            self.verification_failures.clone(),
        );
        r.register_with_unit(
            "source_read",
            "Bytes the relay read from a source, per source (each chunk once however many regions want it, \
             while the relay cache holds it)",
            Unit::Bytes,
            self.source_read_bytes.clone(),
        );
        r.register("source_reads", "Chunk reads the relay made from a source, per source", self.source_reads.clone());
        r.register(
            "relay_cache_hits",
            "Chunks the relay sent from its cache of chunks read for other regions, with no source read",
            self.relay_cache_hits.clone(),
        );
        r.register_with_unit(
            "link_budget",
            "A region's link budget in force (its schedule's window, or its flat rate)",
            rate(),
            self.budget.clone(),
        );
        r.register_with_unit(
            "achieved_rate",
            "Bytes per second relayed to a region, measured over the last second",
            rate(),
            self.achieved.clone(),
        );
        r.register("spokes", "Live spokes of a region (their watch is open)", self.spokes.clone());
        r.register_with_unit(
            "rollout_cached",
            "Bytes of a version a region holds, verified",
            Unit::Bytes,
            self.rollout_cached.clone(),
        );
        r.register_with_unit("rollout_size", "Bytes of a version rolled out", Unit::Bytes, self.rollout_size.clone());
        r.register(
            "rollout_phase",
            "1 for the phase a version is in, in a region (Pending, Transferring, Ready, Failed), 0 for the others",
            self.rollout_phase.clone(),
        );
        r.register("version_newest", "The newest version of a dataset", self.version_newest.clone());
        r.register(
            "version_served",
            "The version of a dataset a region serves (active: Ready in every region of its rollout); 0: none",
            self.version_served.clone(),
        );
        r.register(
            "version_lag",
            "Versions a region is behind: the newest version rolled out to it minus the one it serves",
            self.version_lag.clone(),
        );
        r
    }

    /// A chunk of `len` bytes of `dataset` was handed to the transport for `region`.
    pub fn relayed(&self, region: &str, dataset: &str, len: u64) {
        let labels = RegionDatasetLabels { region: region.to_string(), dataset: dataset.to_string() };
        self.relayed_bytes.get_or_create(&labels).inc_by(len);
        self.relayed_chunks.get_or_create(&labels).inc();
        *self.per_region.lock().unwrap_or_else(|e| e.into_inner()).entry(region.to_string()).or_default() += len;
    }

    /// A chunk of `len` bytes drew in `lane` from `region`'s budget.
    pub fn relayed_in(&self, region: &str, lane: aqueduct_core::budget::Lane, len: u64) {
        let labels = RegionClassLabels { region: region.to_string(), class: lane.name() };
        self.relayed_class.get_or_create(&labels).inc_by(len);
    }

    /// A chunk read from `dataset`'s source did not match its digest.
    pub fn verification_failed(&self, dataset: &str) {
        self.verification_failures.get_or_create(&DatasetLabels { dataset: dataset.to_string() }).inc();
    }

    /// `len` bytes of a chunk were read from `source`.
    pub fn source_read(&self, source: &str, len: u64) {
        let labels = SourceLabels { source: source.to_string() };
        self.source_read_bytes.get_or_create(&labels).inc_by(len);
        self.source_reads.get_or_create(&labels).inc();
    }

    /// A chunk was sent from the relay cache, with no source read.
    pub fn relay_cache_hit(&self) {
        self.relay_cache_hits.inc();
    }

    /// Sets the achieved rate of every region from the bytes relayed since the last call.
    pub fn measure_rates(&self) {
        let now = Instant::now();
        let totals = self.per_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, before)) = last.as_ref() {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            for (region, total) in &totals {
                let delta = total - before.get(region).copied().unwrap_or(0);
                self.achieved.get_or_create(&RegionLabels { region: region.clone() }).set((delta as f64 / secs) as i64);
            }
        }
        *last = Some((now, totals));
    }

    /// Measures the achieved rates every [`RATE_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(RATE_EVERY);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.measure_rates(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Brings the gauges read from state up to date, with `spokes` telling how many live
    /// spokes a region has and `budget` the budget in force for a region (its schedule's
    /// window, or its flat rate). Blocking (reads the database).
    pub fn refresh(
        &self,
        db: &dyn MetaStore,
        spokes: impl Fn(&str) -> usize,
        budget: impl Fn(&crate::store::RegionRecord) -> u64,
    ) {
        let read = (|| Ok::<_, StoreError>((db.regions()?, db.datasets()?, db.rollouts(None)?)))();
        let (regions, datasets, rollouts) = match read {
            Ok(read) => read,
            Err(e) => return warn!(error = %e, "could not read the hub's state for metrics"),
        };
        self.budget.clear();
        self.spokes.clear();
        for r in &regions {
            let labels = RegionLabels { region: r.name.clone() };
            self.budget.get_or_create(&labels).set(i64::try_from(budget(r)).unwrap_or(i64::MAX));
            self.spokes.get_or_create(&labels).set(spokes(&r.name) as i64);
        }
        self.version_newest.clear();
        for d in &datasets {
            self.version_newest.get_or_create(&DatasetLabels { dataset: d.name.clone() }).set(d.latest_version as i64);
        }
        self.rollout_cached.clear();
        self.rollout_size.clear();
        self.rollout_phase.clear();
        let mut newest: HashMap<RegionDatasetLabels, u64> = HashMap::new();
        for r in &rollouts {
            let labels =
                RolloutLabels { dataset: r.dataset.clone(), version: r.version.to_string(), region: r.region.clone() };
            // Reported by spokes: any u64, shown as the most a gauge holds rather than negative.
            self.rollout_cached.get_or_create(&labels).set(i64::try_from(r.cached_bytes).unwrap_or(i64::MAX));
            self.rollout_size.get_or_create(&labels).set(r.total_bytes as i64);
            for phase in Phase::ALL {
                let labels = PhaseLabels {
                    dataset: r.dataset.clone(),
                    version: r.version.to_string(),
                    region: r.region.clone(),
                    phase: phase.to_string(),
                };
                self.rollout_phase.get_or_create(&labels).set(i64::from(r.phase == phase));
            }
            let v = newest
                .entry(RegionDatasetLabels { region: r.region.clone(), dataset: r.dataset.clone() })
                .or_insert(r.version);
            *v = (*v).max(r.version);
        }
        let mut served: HashMap<RegionDatasetLabels, u64> = HashMap::new();
        for key in active_versions(&rollouts) {
            served.insert(RegionDatasetLabels { region: key.region, dataset: key.dataset }, key.version);
        }
        self.version_served.clear();
        self.version_lag.clear();
        for (labels, newest) in newest {
            let served = served.get(&labels).copied().unwrap_or(0);
            self.version_served.get_or_create(&labels).set(served as i64);
            self.version_lag.get_or_create(&labels).set(newest.saturating_sub(served) as i64);
        }
    }
}
