//! What `aq status` shows: where each region stands with each rolled-out version, what each
//! region serves, and each region's cache; with `--nodes`, each spoke too (and whether its
//! build differs from the hub's). View structs for `-o json|yaml` (field names in the README,
//! the same conventions as `views`) and the kubectl-style tables for `-o table|wide`.

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Phase, Rate};
use serde::Serialize;

use crate::output::{Listing, Table, bytes, hit_ratio, mode_name, phase_name, rfc3339};
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::domain::cut_over::CutOver;

#[derive(Serialize)]
pub struct StatusView {
    pub rows: Vec<RowView>,
    /// What each region serves of each dataset.
    pub serving: Vec<ServingView>,
    pub caches: Vec<RegionCacheView>,
    /// The hub's build (with `--nodes`, to tell spokes of another build).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_version: Option<String>,
    #[serde(skip)]
    nodes: bool,
}

#[derive(Serialize)]
pub struct RowView {
    pub dataset: String,
    pub version: u64,
    pub region: String,
    /// `every-node`, `region` or `auto`.
    pub mode: String,
    /// `all-ready`, `per-region` or `manual`.
    pub cut_over: String,
    /// `urgent`, `normal` or `background`.
    pub class: String,
    pub total_bytes: u64,
    /// Bytes of the version the region holds, verified.
    pub cached_bytes: u64,
    /// `Pending`, `Transferring`, `Ready` or `Failed`.
    pub phase: String,
    /// The region serves this version (the table's `Active`).
    pub active: bool,
    /// Promoted while not Ready: served once Ready.
    pub promote_pending: bool,
    /// Why, when Failed; null otherwise.
    pub reason: Option<String>,
    pub rate_bytes_per_sec: u64,
    pub budget_bytes_per_sec: u64,
    /// Bytes the hub sent the region for this version, and of them sent more than once.
    pub relayed_bytes: u64,
    pub refetched_bytes: u64,
    pub updated: Option<String>,
    pub updated_unix_ms: i64,
    /// Only with `--nodes`: each live spoke of the region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeView>>,
}

#[derive(Serialize)]
pub struct NodeView {
    pub node: String,
    pub phase: String,
    pub cached_bytes: u64,
    pub reason: Option<String>,
    pub rate_bytes_per_sec: u64,
    /// It counts for the region's readiness (false for a sidecar).
    pub counted: bool,
}

#[derive(Serialize)]
pub struct ServingView {
    pub dataset: String,
    pub region: String,
    pub version: u64,
    pub since: Option<String>,
    pub since_unix_ms: i64,
    /// The version served before, kept for rollback; null: none.
    pub previous: Option<u64>,
}

#[derive(Serialize)]
pub struct RegionCacheView {
    pub region: String,
    /// Spokes that reported their cache.
    pub node_count: usize,
    /// Null: unlimited (a spoke with no disk quota).
    pub capacity_bytes: Option<u64>,
    pub cached_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_peers: u64,
    /// Only with `--nodes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeCacheView>>,
}

#[derive(Serialize)]
pub struct NodeCacheView {
    pub node: String,
    pub memory_only: bool,
    /// What it keeps chunks in (memory when memory-only, disk otherwise); null: unlimited.
    pub capacity_bytes: Option<u64>,
    pub cached_bytes: u64,
    pub memory_quota_bytes: u64,
    pub memory_used_bytes: u64,
    pub disk_quota_bytes: u64,
    pub disk_used_bytes: u64,
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bytes_from_peers: u64,
    pub bytes_to_peers: u64,
    pub corrupt_from_peers: u64,
    /// The spoke's build; null when it has not said.
    pub agent_version: Option<String>,
    /// Its build differs from the hub's (or is unknown); null when the hub's is unknown.
    pub skew: Option<bool>,
}

/// A phase as the table shows it: Active for a served version, with the reason when there is one.
fn phase_cell(phase: &str, active: bool, reason: &Option<String>) -> String {
    match (active, reason) {
        (true, _) => "Active".to_string(),
        (false, None) => phase.to_string(),
        (false, Some(reason)) => format!("{phase}: {reason}"),
    }
}

fn reason(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// `part` of `whole` as a percentage; an empty whole is complete.
pub fn percent(part: u64, whole: u64) -> String {
    let p = if whole == 0 { 100.0 } else { part as f64 * 100.0 / whole as f64 };
    format!("{p:.1}%")
}

impl StatusView {
    /// The hub's status; with `nodes`, each spoke too, marked against `hub_version` (None:
    /// a hub that does not say).
    pub fn new(status: pb::StatusResponse, nodes: bool, hub_version: Option<String>) -> Self {
        let rows = status
            .rows
            .into_iter()
            .map(|r| RowView {
                mode: mode_name(r.mode),
                cut_over: CutOver::wire_name(r.cut_over),
                class: Class::wire_name(r.class),
                phase: phase_name(r.phase),
                active: r.active,
                promote_pending: r.promote_pending,
                reason: reason(r.reason),
                rate_bytes_per_sec: r.rate_bytes_per_sec,
                budget_bytes_per_sec: r.budget_bytes_per_sec,
                relayed_bytes: r.relayed_bytes,
                refetched_bytes: r.refetched_bytes,
                updated: rfc3339(r.updated_unix_ms),
                updated_unix_ms: r.updated_unix_ms,
                total_bytes: r.total_bytes,
                cached_bytes: r.cached_bytes,
                nodes: nodes.then(|| {
                    r.nodes
                        .into_iter()
                        .map(|n| NodeView {
                            phase: phase_name(n.phase),
                            cached_bytes: n.cached_bytes,
                            reason: reason(n.reason),
                            rate_bytes_per_sec: n.rate_bytes_per_sec,
                            counted: n.counted,
                            node: n.node,
                        })
                        .collect()
                }),
                dataset: r.dataset,
                version: r.version,
                region: r.region,
            })
            .collect();
        let serving = status
            .serving
            .into_iter()
            .map(|s| ServingView {
                since: rfc3339(s.since_unix_ms),
                since_unix_ms: s.since_unix_ms,
                previous: (s.previous > 0).then_some(s.previous),
                dataset: s.dataset,
                region: s.region,
                version: s.version,
            })
            .collect();
        let caches = status.caches.into_iter().map(|c| region_cache(c, nodes, hub_version.as_deref())).collect();
        StatusView { rows, serving, caches, hub_version: if nodes { hub_version } else { None }, nodes }
    }

    /// A row the listing shows is Failed (what `--fail-on-failed` exits 3 for), as
    /// `dataset@vN in region: reason`.
    pub fn failed(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| r.phase == Phase::Failed.to_string())
            .map(|r| format!("{}@v{} in {}: {}", r.dataset, r.version, r.region, r.reason.as_deref().unwrap_or("")))
            .collect()
    }
}

fn region_cache(c: pb::RegionCache, nodes: bool, hub_version: Option<&str>) -> RegionCacheView {
    // What a spoke keeps its chunks in: memory in memory-only mode, disk otherwise.
    let kept = |n: &pb::CacheReport| {
        if n.memory_only {
            (Some(n.memory_quota_bytes), n.memory_used_bytes)
        } else {
            ((n.disk_quota_bytes > 0).then_some(n.disk_quota_bytes), n.disk_used_bytes)
        }
    };
    let (mut capacity, mut used, mut hits, mut misses, mut from_peers) = (Some(0u64), 0u64, 0u64, 0u64, 0u64);
    for n in &c.nodes {
        let (quota, held) = kept(n);
        // Spokes' numbers: summed without overflow, whatever they say.
        capacity = capacity.zip(quota).map(|(a, b)| a.saturating_add(b));
        used = held.saturating_add(used);
        hits = n.memory_hits.saturating_add(n.disk_hits).saturating_add(hits);
        misses = n.misses.saturating_add(misses);
        from_peers = n.bytes_from_peers.saturating_add(from_peers);
    }
    RegionCacheView {
        node_count: c.nodes.len(),
        capacity_bytes: capacity,
        cached_bytes: used,
        hits,
        misses,
        bytes_from_peers: from_peers,
        nodes: nodes.then(|| {
            c.nodes
                .into_iter()
                .map(|n| {
                    let (capacity_bytes, cached_bytes) = kept(&n);
                    let agent_version = reason(n.agent_version);
                    NodeCacheView {
                        skew: hub_version.map(|hub| agent_version.as_deref() != Some(hub)),
                        agent_version,
                        capacity_bytes,
                        cached_bytes,
                        node: n.node,
                        memory_only: n.memory_only,
                        memory_quota_bytes: n.memory_quota_bytes,
                        memory_used_bytes: n.memory_used_bytes,
                        disk_quota_bytes: n.disk_quota_bytes,
                        disk_used_bytes: n.disk_used_bytes,
                        memory_hits: n.memory_hits,
                        disk_hits: n.disk_hits,
                        misses: n.misses,
                        evictions: n.evictions,
                        bytes_from_peers: n.bytes_from_peers,
                        bytes_to_peers: n.bytes_to_peers,
                        corrupt_from_peers: n.corrupt_from_peers,
                    }
                })
                .collect()
        }),
        region: c.region,
    }
}

impl Listing for StatusView {
    fn text(&self, wide: bool) -> String {
        let mut parts = vec![self.rows_table(wide)];
        if self.nodes {
            parts.push(self.nodes_table(wide));
        }
        if !self.serving.is_empty() {
            let mut t = Table::new(["DATASET", "REGION", "SERVING", "SINCE", "PREVIOUS"]);
            for s in &self.serving {
                t.row([
                    s.dataset.clone(),
                    s.region.clone(),
                    format!("v{}", s.version),
                    s.since.clone().unwrap_or_else(|| "-".into()),
                    s.previous.map_or("-".into(), |v| format!("v{v}")),
                ]);
            }
            parts.push(t.render());
        }
        if !self.caches.is_empty() {
            parts.push(self.caches_table());
            if self.nodes {
                parts.push(self.node_caches_table());
            }
        }
        parts.join("\n")
    }
}

impl StatusView {
    fn rows_table(&self, wide: bool) -> String {
        let header = ["DATASET", "VERSION", "REGION", "MODE", "TOTAL SIZE", "CACHED", "CACHED %", "PHASE", "RATE"];
        let mut t = Table::new(header);
        let mut w = Table::new([
            "DATASET",
            "VERSION",
            "REGION",
            "MODE",
            "TOTAL SIZE",
            "CACHED",
            "CACHED %",
            "PHASE",
            "RATE",
            "CUT-OVER",
            "CLASS",
            "NODES",
            "RELAYED",
            "REFETCHED",
            "UPDATED",
        ]);
        for r in &self.rows {
            let achieved =
                if r.rate_bytes_per_sec == 0 { "-".to_string() } else { Rate(r.rate_bytes_per_sec).to_string() };
            let mut phase = phase_cell(&r.phase, r.active, &r.reason);
            if r.promote_pending {
                phase.push_str(" (promoted: served once Ready)");
            }
            let cells = [
                r.dataset.clone(),
                format!("v{}", r.version),
                r.region.clone(),
                r.mode.clone(),
                bytes(r.total_bytes),
                bytes(r.cached_bytes),
                percent(r.cached_bytes, r.total_bytes),
                phase,
                format!("{achieved}/{}", Rate(r.budget_bytes_per_sec)),
            ];
            if wide {
                let [a, b, c, d, e, f, g, h, i] = cells;
                w.row([
                    a,
                    b,
                    c,
                    d,
                    e,
                    f,
                    g,
                    h,
                    i,
                    r.cut_over.clone(),
                    r.class.clone(),
                    r.nodes.as_ref().map_or("-".into(), |n| n.len().to_string()),
                    bytes(r.relayed_bytes),
                    bytes(r.refetched_bytes),
                    r.updated.clone().unwrap_or_else(|| "-".into()),
                ]);
            } else {
                t.row(cells);
            }
        }
        if wide { w.render() } else { t.render() }
    }

    fn nodes_table(&self, wide: bool) -> String {
        let mut t = Table::new([
            "DATASET",
            "VERSION",
            "REGION",
            "NODE",
            "CACHED",
            "CACHED %",
            "PHASE",
            if wide { "RATE" } else { "" },
        ]);
        for r in &self.rows {
            for n in r.nodes.iter().flatten() {
                // A sidecar: it reads what its pods ask for and holds no part of the copy.
                let phase = match n.counted {
                    false => "- (no peer share: reads on demand, not counted)".to_string(),
                    true => phase_cell(&n.phase, false, &n.reason),
                };
                let rate = match wide {
                    true if n.rate_bytes_per_sec > 0 => Rate(n.rate_bytes_per_sec).to_string(),
                    true => "-".to_string(),
                    false => String::new(),
                };
                t.row([
                    r.dataset.clone(),
                    format!("v{}", r.version),
                    r.region.clone(),
                    n.node.clone(),
                    bytes(n.cached_bytes),
                    percent(n.cached_bytes, r.total_bytes),
                    phase,
                    rate,
                ]);
            }
        }
        t.render()
    }

    /// Each region's cache: capacity, what it holds, hits.
    fn caches_table(&self) -> String {
        let mut t = Table::new(["REGION", "NODES", "CACHE CAPACITY", "CACHED", "CACHED %", "HIT RATIO", "FROM PEERS"]);
        for c in &self.caches {
            t.row([
                c.region.clone(),
                c.node_count.to_string(),
                c.capacity_bytes.map_or("unlimited".to_string(), bytes),
                bytes(c.cached_bytes),
                c.capacity_bytes.map_or("-".to_string(), |cap| percent(c.cached_bytes, cap)),
                hit_ratio(c.hits, c.misses),
                bytes(c.bytes_from_peers),
            ]);
        }
        t.render()
    }

    /// Each spoke's cache, with its build and whether it differs from the hub's.
    fn node_caches_table(&self) -> String {
        let mut t = Table::new([
            "REGION",
            "NODE",
            "TIER",
            "CAPACITY",
            "CACHED",
            "MEMORY",
            "HIT RATIO",
            "EVICTIONS",
            "FROM PEERS",
            "TO PEERS",
            "BAD FROM PEERS",
            "VERSION",
            "SKEW",
        ]);
        for c in &self.caches {
            for n in c.nodes.iter().flatten() {
                let skew = match (n.skew, &self.hub_version) {
                    (Some(true), Some(hub)) => format!("yes (hub {hub})"),
                    (Some(_), _) => "-".to_string(),
                    (None, _) => "?".to_string(),
                };
                t.row([
                    c.region.clone(),
                    n.node.clone(),
                    if n.memory_only { "memory only" } else { "memory+disk" }.to_string(),
                    n.capacity_bytes.map_or("unlimited".to_string(), bytes),
                    bytes(n.cached_bytes),
                    format!("{}/{}", bytes(n.memory_used_bytes), bytes(n.memory_quota_bytes)),
                    hit_ratio(n.memory_hits.saturating_add(n.disk_hits), n.misses),
                    n.evictions.to_string(),
                    bytes(n.bytes_from_peers),
                    bytes(n.bytes_to_peers),
                    n.corrupt_from_peers.to_string(),
                    n.agent_version.clone().unwrap_or_else(|| "-".into()),
                    skew,
                ]);
            }
        }
        t.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: Phase, reason: &str) -> pb::StatusRow {
        pb::StatusRow {
            dataset: "llama".into(),
            version: 2,
            region: "eu".into(),
            total_bytes: 100,
            cached_bytes: 50,
            phase: phase.to_wire(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn failed_rows_are_named_with_their_reason() {
        let status = pb::StatusResponse {
            rows: vec![row(Phase::Ready, ""), row(Phase::Failed, "source changed")],
            ..Default::default()
        };
        let view = StatusView::new(status, false, None);
        assert_eq!(view.failed(), ["llama@v2 in eu: source changed"]);
        let text = view.text(false);
        assert!(text.contains("Failed: source changed"), "{text}");
    }

    #[test]
    fn a_spoke_of_another_build_is_marked() {
        let cache = |node: &str, version: &str| pb::CacheReport {
            node: node.into(),
            agent_version: version.into(),
            ..Default::default()
        };
        let status = pb::StatusResponse {
            caches: vec![pb::RegionCache {
                region: "eu".into(),
                nodes: vec![cache("a", "0.2.0"), cache("b", "0.1.0")],
            }],
            ..Default::default()
        };
        let view = StatusView::new(status, true, Some("0.2.0".into()));
        let skews: Vec<Option<bool>> = view.caches[0].nodes.iter().flatten().map(|n| n.skew).collect();
        assert_eq!(skews, [Some(false), Some(true)]);
        let text = view.text(false);
        assert!(text.contains("SKEW") && text.contains("yes (hub 0.2.0)"), "{text}");
    }
}
