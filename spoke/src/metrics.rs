//! The spoke's Prometheus metrics (`[metrics]` in its config; see `aqueduct_core::metrics`
//! for the endpoint).
//!
//! Counted as things happen, in [`SpokeMetrics`]: bytes received over the link (from the hub)
//! and from the region's peers, per dataset; chunks by where they came from (`hub`, `peer`,
//! or `local`: a read the store answered); chunks that failed verification, by origin;
//! replication progress per version. Read at each scrape ([`SpokeMetrics::refresh`]): each
//! cache tier's usage, quota and evictions, the link budget the spoke applies, and the FUSE
//! reads the node's holder answered (their latency, bytes and errors: the holder, which serves
//! the mounts, counts them, and the spoke asks it; [`SpokeMetrics::set_fuse_reads`]), and the
//! holder's whole copies and FUSE passthrough ([`SpokeMetrics::set_whole_files`]): a read the
//! kernel passes through to a whole copy reaches no process, so only the opens are counted,
//! never their bytes (those are not in `fuse_read`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use aqueduct_proto::holder::v1::{ReadCounters, WholeFiles};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use aqueduct_core::budget::Budget;

use crate::cache::TieredStore;

/// Where a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Over the link, from the hub's relay.
    Hub,
    /// From a peer of the region.
    Peer,
    /// From this spoke's store.
    Local,
}

impl Origin {
    fn label(self) -> &'static str {
        match self {
            Origin::Hub => "hub",
            Origin::Peer => "peer",
            Origin::Local => "local",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub origin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceivedLabels {
    pub origin: &'static str,
    pub dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// foreground (a reader's), urgent, normal, background (the version's class).
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub dataset: String,
    pub version: String,
}

#[derive(Default)]
pub struct SpokeMetrics {
    received_bytes: Family<ReceivedLabels, Counter>,
    received_class: Family<ClassLabels, Counter>,
    chunks: Family<OriginLabels, Counter>,
    verification_failures: Family<OriginLabels, Counter>,
    cache_used: Family<TierLabels, Gauge>,
    cache_capacity: Family<TierLabels, Gauge>,
    evictions: Family<TierLabels, Counter>,
    replication_cached: Family<VersionLabels, Gauge>,
    replication_size: Family<VersionLabels, Gauge>,
    replication_ready: Family<VersionLabels, Gauge>,
    budget: Gauge,
    fuse_reads: HeldReads,
    whole_files: HeldWhole,
    whole_files_disk: Gauge,
    swept_chunks: Counter,
    swept_bytes: Counter,
}

impl SpokeMetrics {
    /// A registry (prefix `aqueduct_spoke`) holding every metric.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("aqueduct_spoke");
        r.register(
            "build_info",
            "1, labelled with the spoke's version (and git commit when the build knew it)",
            aqueduct_core::metrics::build_info(env!("CARGO_PKG_VERSION")),
        );
        r.register_with_unit(
            "received",
            "Bytes of chunks received, verified, per origin (hub: over the link; peer) and dataset",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        r.register_with_unit(
            "received_class",
            "Bytes of chunks received over the link (from the hub), verified, per lane: foreground (a reader waits), urgent, normal, background (the version's class)",
            Unit::Bytes,
            self.received_class.clone(),
        );
        r.register(
            "chunks",
            "Chunks got, per origin: hub (over the link), peer, local (the store answered a read)",
            self.chunks.clone(),
        );
        r.register(
            "verification_failures",
            "Chunks whose bytes did not match their digest, per origin (hub, peer, local store)",
            self.verification_failures.clone(),
        );
        r.register_with_unit("cache_used", "Bytes a cache tier holds", Unit::Bytes, self.cache_used.clone());
        r.register_with_unit(
            "cache_capacity",
            "A cache tier's quota (0: none, as much as the disk holds)",
            Unit::Bytes,
            self.cache_capacity.clone(),
        );
        r.register(
            "cache_evictions",
            "Chunks evicted from a cache tier since the spoke started",
            self.evictions.clone(),
        );
        r.register_with_unit(
            "replication_cached",
            "Bytes of a version this spoke holds (its share in region mode), verified",
            Unit::Bytes,
            self.replication_cached.clone(),
        );
        r.register_with_unit(
            "replication_size",
            "Bytes of a version this spoke must hold (its share in region mode)",
            Unit::Bytes,
            self.replication_size.clone(),
        );
        r.register(
            "replication_ready",
            "1 once this spoke holds its part of a version",
            self.replication_ready.clone(),
        );
        r.register_with_unit(
            "link_budget",
            "The region's link budget this spoke applies (from the hub's assignments)",
            Unit::Other("bytes_per_second".into()),
            self.budget.clone(),
        );
        r.register_with_unit(
            "fuse_read_duration",
            "Time from a FUSE read request to its answer",
            Unit::Seconds,
            self.fuse_reads.part(Part::Latency),
        );
        r.register_with_unit(
            "fuse_read",
            "Bytes answered to FUSE reads",
            Unit::Bytes,
            self.fuse_reads.part(Part::Bytes),
        );
        r.register("fuse_read_errors", "FUSE reads answered with an error", self.fuse_reads.part(Part::Errors));
        r.register(
            "passthrough_opens",
            "Opens of mounted files the holder answered by FUSE passthrough to a verified whole copy: the kernel serves their reads, whose bytes are not counted in fuse_read",
            self.whole_files.part(WholePart::PassthroughOpens),
        );
        r.register(
            "passthrough_unavailable",
            "1 if FUSE passthrough is not available on this node (the kernel or the holder cannot do it): reads take the copy route and are counted in fuse_read",
            self.whole_files.part(WholePart::Unavailable),
        );
        r.register(
            "whole_files_ready",
            "Whole copies of mounted files the holder verified, ready for passthrough",
            self.whole_files.part(WholePart::Ready),
        );
        r.register_with_unit(
            "whole_files_ready",
            "Bytes of the whole copies ready for passthrough",
            Unit::Bytes,
            self.whole_files.part(WholePart::ReadyBytes),
        );
        r.register(
            "whole_files_pending",
            "Whole copies being made or verified",
            self.whole_files.part(WholePart::Pending),
        );
        r.register(
            "whole_files_rejected",
            "Whole copies left by an earlier holder that did not verify (removed, never passed through)",
            self.whole_files.part(WholePart::Rejected),
        );
        r.register_with_unit(
            "whole_files_disk",
            "Bytes the whole copies take on the node's disk (ready, not verified yet, being written), counted in the disk tier's quota: chunks get the quota less these",
            Unit::Bytes,
            self.whole_files_disk.clone(),
        );
        r.register(
            "swept_chunks",
            "Chunks deleted from the store because the hub no longer assigns any version that has them",
            self.swept_chunks.clone(),
        );
        r.register_with_unit(
            "swept",
            "Bytes of chunks deleted from the store because the hub no longer assigns any version that has them",
            Unit::Bytes,
            self.swept_bytes.clone(),
        );
        r
    }

    /// A chunk of `dataset` arrived from `origin` (hub or peer), verified.
    pub fn received(&self, origin: Origin, dataset: &str, bytes: u64) {
        let labels = ReceivedLabels { origin: origin.label(), dataset: dataset.to_string() };
        self.received_bytes.get_or_create(&labels).inc_by(bytes);
        self.chunk(origin);
    }

    /// A chunk of `bytes` came over the link in `lane`.
    pub fn received_in(&self, lane: aqueduct_core::budget::Lane, bytes: u64) {
        self.received_class.get_or_create(&ClassLabels { class: lane.name() }).inc_by(bytes);
    }

    /// A chunk was got from `origin`.
    /// Chunks of versions no longer assigned were deleted.
    pub fn swept(&self, chunks: u64, bytes: u64) {
        self.swept_chunks.inc_by(chunks);
        self.swept_bytes.inc_by(bytes);
    }

    pub fn chunk(&self, origin: Origin) {
        self.chunks.get_or_create(&OriginLabels { origin: origin.label() }).inc();
    }

    /// A chunk from `origin` failed verification.
    pub fn verification_failed(&self, origin: Origin) {
        self.verification_failures.get_or_create(&OriginLabels { origin: origin.label() }).inc();
    }

    /// Where this spoke stands with a version.
    pub fn progress(&self, dataset: &str, version: u64, cached: u64, total: u64, ready: bool) {
        let labels = VersionLabels { dataset: dataset.to_string(), version: version.to_string() };
        self.replication_cached.get_or_create(&labels).set(cached as i64);
        self.replication_size.get_or_create(&labels).set(total as i64);
        self.replication_ready.get_or_create(&labels).set(i64::from(ready));
    }

    /// Brings the gauges read from state up to date (cheap: counters and in-memory sums).
    pub fn refresh(&self, cache: &TieredStore, budget: &Budget) {
        let tiers = [
            ("memory", cache.memory_usage(), &cache.stats.memory_evictions),
            ("disk", cache.disk_usage(), &cache.stats.disk_evictions),
        ];
        for (tier, usage, evictions) in tiers {
            let Some(usage) = usage else { continue };
            let labels = TierLabels { tier };
            self.cache_used.get_or_create(&labels).set(usage.used as i64);
            self.cache_capacity.get_or_create(&labels).set(usage.quota.unwrap_or(0) as i64);
            // The store counts; the counter follows it.
            let counter = self.evictions.get_or_create(&labels);
            counter.inc_by(evictions.load(Ordering::Relaxed).saturating_sub(counter.get()));
        }
        self.whole_files_disk.set(cache.whole_files().min(i64::MAX as u64) as i64);
        // Before the first assignments the budget is unlimited: shown as 0.
        let rate = budget.rate();
        self.budget.set(if rate == u64::MAX { 0 } else { rate.min(i64::MAX as u64) as i64 });
    }
}

/// The FUSE reads the node's holder answered, as it last reported them (it counts since it
/// started; a holder that restarts starts again from zero, as a process's counters do).
#[derive(Clone, Debug, Default)]
struct HeldReads {
    counters: Arc<Mutex<ReadCounters>>,
    part: Part,
}

/// Which metric of [`HeldReads`] one registration shows.
#[derive(Clone, Copy, Debug, Default)]
enum Part {
    /// A histogram of read latencies, seconds: 50 µs to about 13 s.
    #[default]
    Latency,
    Bytes,
    Errors,
}

impl HeldReads {
    fn part(&self, part: Part) -> Self {
        Self { counters: self.counters.clone(), part }
    }
}

impl EncodeMetric for HeldReads {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self.part {
            Part::Latency => {
                // Bounds as the holder sent them, +Inf last; counts per bucket.
                let bounds = c.bucket_bounds_seconds.iter().copied().chain([f64::MAX]);
                let buckets: Vec<(f64, u64)> = bounds.zip(c.bucket_counts.iter().copied()).collect();
                encoder.encode_histogram::<NoLabelSet>(c.seconds_sum, c.count, &buckets, None)
            }
            Part::Bytes => encoder.encode_counter::<NoLabelSet, u64, u64>(&c.bytes, None),
            Part::Errors => encoder.encode_counter::<NoLabelSet, u64, u64>(&c.failed, None),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.part {
            Part::Latency => MetricType::Histogram,
            Part::Bytes | Part::Errors => MetricType::Counter,
        }
    }
}

impl SpokeMetrics {
    /// The holder's read counters, as it reported them.
    pub fn set_fuse_reads(&self, counters: ReadCounters) {
        *self.fuse_reads.counters.lock().unwrap_or_else(|e| e.into_inner()) = counters;
    }

    /// The holder's whole copies and passthrough, as it reported them (none: whole copies off,
    /// or no holder; every one of these metrics is then 0).
    pub fn set_whole_files(&self, whole: Option<WholeFiles>) {
        *self.whole_files.counters.lock().unwrap_or_else(|e| e.into_inner()) = whole.unwrap_or_default();
    }
}

/// The holder's whole copies and passthrough, as it last reported them (counted since it
/// started, as [`HeldReads`]).
#[derive(Clone, Debug, Default)]
struct HeldWhole {
    counters: Arc<Mutex<WholeFiles>>,
    part: WholePart,
}

/// Which metric of [`HeldWhole`] one registration shows.
#[derive(Clone, Copy, Debug, Default)]
enum WholePart {
    #[default]
    PassthroughOpens,
    Unavailable,
    Ready,
    ReadyBytes,
    Pending,
    Rejected,
}

impl HeldWhole {
    fn part(&self, part: WholePart) -> Self {
        Self { counters: self.counters.clone(), part }
    }
}

impl EncodeMetric for HeldWhole {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let w = *self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match self.part {
            WholePart::PassthroughOpens => encoder.encode_counter::<NoLabelSet, u64, u64>(&w.passthrough_opens, None),
            WholePart::Rejected => encoder.encode_counter::<NoLabelSet, u64, u64>(&w.rejected, None),
            WholePart::Unavailable => encoder.encode_gauge(&u64::from(w.passthrough_unavailable)),
            WholePart::Ready => encoder.encode_gauge(&w.ready),
            WholePart::ReadyBytes => encoder.encode_gauge(&w.ready_bytes),
            WholePart::Pending => encoder.encode_gauge(&w.pending),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.part {
            WholePart::PassthroughOpens | WholePart::Rejected => MetricType::Counter,
            _ => MetricType::Gauge,
        }
    }
}
