//! The live spokes of each region, and where each of them stands with each version.
//!
//! A spoke is a live member of its region while its watch is open: the hub learns of a spoke
//! that stops or loses its connection as soon as the connection closes (HTTP/2 keepalive
//! catches a silent one within seconds). Members are pushed to every spoke of the region with
//! its assignments; the spokes pick each chunk's owner among them.
//!
//! Progress is reported per spoke. A region's row (what `aq status` and the cut-over read) is
//! folded from its live members' reports by [`fold`]: Ready once every live member is Ready,
//! Failed when one failed, Transferring otherwise; its cached bytes are the least any live
//! member holds. The per-spoke reports live in memory only: after a hub restart the spokes
//! report again when they reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use aqueduct_proto::hub::v1 as pb;

/// Where one spoke stands with one version, as it last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport {
    pub phase: String,
    pub cached_bytes: u64,
    pub reason: String,
    pub rate: u64,
    /// The spoke holds a share of the region's one copy (`region` mode): the region's cached
    /// bytes are the sum of the shares, not the least any spoke holds.
    pub share: bool,
    /// For a share: the members it was computed for (see `ProgressReport.membership`).
    pub membership: String,
}

/// A region's row, folded from its members' reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionProgress {
    pub phase: String,
    pub cached_bytes: u64,
    pub reason: String,
    /// The sum of the members' rates.
    pub rate: u64,
}

type VersionKey = (String, u64, String);

#[derive(Default)]
pub struct Members {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per region, per node: the watch that made it a member, and its peer address.
    live: HashMap<String, BTreeMap<String, (u64, String)>>,
    /// Per (dataset, version, region), per node.
    reports: HashMap<VersionKey, BTreeMap<String, NodeReport>>,
    /// Per region, per node: its cache as last reported.
    caches: HashMap<String, BTreeMap<String, pb::CacheReport>>,
    next_watch: u64,
}

/// Proof of membership, given to a watch; [`Members::leave`] takes it back.
#[derive(Debug)]
pub struct Membership {
    region: String,
    node: String,
    watch: u64,
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` of `region` is live, serving peers at `peer_address` (maybe empty). A node that
    /// watches again replaces its older watch.
    pub fn join(&self, region: &str, node: &str, peer_address: &str) -> Membership {
        let mut inner = self.lock();
        inner.next_watch += 1;
        let watch = inner.next_watch;
        inner.live.entry(region.to_string()).or_default().insert(node.to_string(), (watch, peer_address.to_string()));
        Membership { region: region.to_string(), node: node.to_string(), watch }
    }

    /// The watch behind `membership` ended. Returns the regions' rows that change because the
    /// node no longer counts (to be written by the caller).
    pub fn leave(&self, membership: Membership) -> Vec<(VersionKey, RegionProgress)> {
        let mut inner = self.lock();
        let Membership { region, node, watch } = membership;
        let Some(nodes) = inner.live.get_mut(&region) else { return Vec::new() };
        if nodes.get(&node).is_none_or(|(w, _)| *w != watch) {
            return Vec::new();
        }
        nodes.remove(&node);
        if let Some(caches) = inner.caches.get_mut(&region) {
            caches.remove(&node);
        }
        let keys: Vec<VersionKey> = inner.reports.keys().filter(|k| k.2 == region).cloned().collect();
        keys.into_iter().filter_map(|k| inner.fold(&k).map(|p| (k, p))).collect()
    }

    pub fn members(&self, region: &str) -> Vec<pb::Member> {
        self.lock().live.get(region).map_or_else(Vec::new, |nodes| {
            nodes
                .iter()
                .map(|(node, (_, address))| pb::Member { node: node.clone(), peer_address: address.clone() })
                .collect()
        })
    }

    /// Records a node's report; returns the region's row, folded anew.
    pub fn report(&self, key: VersionKey, node: &str, report: NodeReport) -> Option<RegionProgress> {
        let mut inner = self.lock();
        inner.reports.entry(key.clone()).or_default().insert(node.to_string(), report);
        inner.fold(&key)
    }

    /// Keeps a live member's cache report (one from a node that is not a member is dropped).
    pub fn report_cache(&self, region: &str, report: pb::CacheReport) {
        let mut inner = self.lock();
        if inner.live.get(region).is_some_and(|n| n.contains_key(&report.node)) {
            inner.caches.entry(region.to_string()).or_default().insert(report.node.clone(), report);
        }
    }

    /// Every region's cache, by what its live members last reported.
    pub fn caches(&self) -> Vec<pb::RegionCache> {
        let inner = self.lock();
        let mut caches: Vec<pb::RegionCache> = inner
            .caches
            .iter()
            .filter(|(_, nodes)| !nodes.is_empty())
            .map(|(region, nodes)| pb::RegionCache { region: region.clone(), nodes: nodes.values().cloned().collect() })
            .collect();
        caches.sort_by(|a, b| a.region.cmp(&b.region));
        caches
    }

    /// What each live member of the region last reported for the version.
    pub fn nodes(&self, key: &VersionKey) -> Vec<pb::NodeProgress> {
        let inner = self.lock();
        let reports = inner.reports.get(key);
        inner.live.get(&key.2).map_or_else(Vec::new, |nodes| {
            nodes
                .keys()
                .map(|node| match reports.and_then(|r| r.get(node)) {
                    Some(r) => pb::NodeProgress {
                        node: node.clone(),
                        phase: r.phase.clone(),
                        cached_bytes: r.cached_bytes,
                        reason: r.reason.clone(),
                        rate_bytes_per_sec: r.rate,
                    },
                    None => pb::NodeProgress { node: node.clone(), phase: "Pending".into(), ..Default::default() },
                })
                .collect()
        })
    }
}

impl Inner {
    fn fold(&self, key: &VersionKey) -> Option<RegionProgress> {
        let reports = self.reports.get(key)?;
        let nodes = self.live.get(&key.2);
        let live: Vec<&String> = nodes.map(|n| n.keys().collect()).unwrap_or_default();
        let membership = nodes.map_or_else(String::new, |n| {
            n.iter()
                .filter(|(_, (_, address))| !address.is_empty())
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
        Some(fold(&live, &membership, reports))
    }
}

/// A region's row from its live members' reports. With no live member (every spoke gone),
/// the reports that are left speak for the region. A share (region mode) counts as Ready only
/// if it was computed for the region's current `membership`: when a spoke comes or goes, the
/// others' shares change, and the region is Ready again once they hold their new ones.
pub fn fold(live: &[&String], membership: &str, reports: &BTreeMap<String, NodeReport>) -> RegionProgress {
    let counted: Vec<(&String, Option<&NodeReport>)> = if live.is_empty() {
        reports.iter().map(|(n, r)| (n, Some(r))).collect()
    } else {
        live.iter().map(|n| (*n, reports.get(*n))).collect()
    };
    // Numbers from spokes: summed without overflow, whatever they say.
    let rate = counted.iter().filter_map(|(_, r)| r.map(|r| r.rate)).fold(0, u64::saturating_add);
    let shares = counted.iter().any(|(_, r)| r.is_some_and(|r| r.share));
    let held = counted.iter().map(|(_, r)| r.map_or(0, |r| r.cached_bytes));
    let cached_bytes = if shares { held.fold(0, u64::saturating_add) } else { held.min().unwrap_or(0) };
    let failed: Vec<String> = counted
        .iter()
        .filter_map(|(n, r)| r.filter(|r| r.phase == "Failed").map(|r| format!("{n}: {}", r.reason)))
        .collect();
    let phase = if !failed.is_empty() {
        "Failed"
    } else if counted.iter().all(|(_, r)| {
        r.is_some_and(|r| r.phase == "Ready" && (!r.share || live.is_empty() || r.membership == membership))
    }) {
        "Ready"
    } else if counted.iter().any(|(_, r)| r.is_some_and(|r| r.phase != "Pending")) {
        "Transferring"
    } else {
        "Pending"
    };
    RegionProgress { phase: phase.into(), cached_bytes, reason: failed.join("; "), rate }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(phase: &str, cached: u64) -> NodeReport {
        NodeReport {
            phase: phase.into(),
            cached_bytes: cached,
            reason: String::new(),
            rate: 10,
            share: false,
            membership: String::new(),
        }
    }

    fn key() -> VersionKey {
        ("llama".into(), 1, "eu".into())
    }

    #[test]
    fn a_region_is_ready_once_every_live_member_is() {
        let members = Members::default();
        let a = members.join("eu", "a", "10.0.0.1:1");
        let _b = members.join("eu", "b", "10.0.0.2:1");
        let row = members.report(key(), "a", report("Ready", 100)).unwrap();
        assert_eq!((row.phase.as_str(), row.cached_bytes), ("Transferring", 0), "b has not reported");
        let row = members.report(key(), "b", report("Transferring", 40)).unwrap();
        assert_eq!((row.phase.as_str(), row.cached_bytes, row.rate), ("Transferring", 40, 20));
        let row = members.report(key(), "b", report("Ready", 100)).unwrap();
        assert_eq!((row.phase.as_str(), row.cached_bytes), ("Ready", 100));
        assert_eq!(members.nodes(&key()).len(), 2);

        // A member that leaves no longer holds the region back.
        let c = members.join("eu", "c", "10.0.0.3:1");
        assert_eq!(members.report(key(), "c", report("Transferring", 5)).unwrap().phase, "Transferring");
        let changed = members.leave(c);
        assert_eq!(
            changed,
            vec![(key(), RegionProgress { phase: "Ready".into(), cached_bytes: 100, reason: String::new(), rate: 20 })]
        );
        assert_eq!(members.members("eu").iter().map(|m| m.node.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        drop(a);
    }

    #[test]
    fn in_region_mode_the_shares_add_up() {
        let members = Members::default();
        let (_a, _b) = (members.join("eu", "a", "x:1"), members.join("eu", "b", "x:2"));
        let share = |phase: &str, cached, membership: &str| NodeReport {
            share: true,
            membership: membership.into(),
            ..report(phase, cached)
        };
        members.report(key(), "a", share("Ready", 60, "a,b"));
        let row = members.report(key(), "b", share("Ready", 40, "a,b")).unwrap();
        assert_eq!((row.phase.as_str(), row.cached_bytes), ("Ready", 100));
        // c joins: the shares computed for a and b alone no longer make the region Ready.
        let _c = members.join("eu", "c", "x:3");
        let row = members.report(key(), "c", share("Ready", 0, "a,b,c")).unwrap();
        assert_eq!(row.phase, "Transferring", "old shares counted after the members changed");
        members.report(key(), "a", share("Ready", 40, "a,b,c"));
        members.report(key(), "b", share("Ready", 30, "a,b,c"));
        let row = members.report(key(), "c", share("Ready", 30, "a,b,c")).unwrap();
        assert_eq!((row.phase.as_str(), row.cached_bytes), ("Ready", 100));
    }

    #[test]
    fn sums_of_reported_numbers_saturate() {
        let members = Members::default();
        let (_a, _b) = (members.join("eu", "a", "x:1"), members.join("eu", "b", "x:2"));
        let huge = NodeReport { share: true, rate: u64::MAX, membership: "a,b".into(), ..report("Ready", u64::MAX) };
        members.report(key(), "a", huge.clone());
        let row = members.report(key(), "b", huge).unwrap();
        assert_eq!((row.cached_bytes, row.rate), (u64::MAX, u64::MAX));
    }

    #[test]
    fn a_failed_member_fails_the_region_with_its_reason() {
        let members = Members::default();
        let _a = members.join("eu", "a", "");
        let mut failed = report("Failed", 0);
        failed.reason = "cache full".into();
        let row = members.report(key(), "a", failed).unwrap();
        assert_eq!((row.phase.as_str(), row.reason.as_str()), ("Failed", "a: cache full"));
    }

    #[test]
    fn an_old_watch_ending_does_not_remove_the_node_that_watches_again() {
        let members = Members::default();
        let old = members.join("eu", "a", "10.0.0.1:1");
        let _new = members.join("eu", "a", "10.0.0.1:2");
        members.leave(old);
        assert_eq!(members.members("eu"), vec![pb::Member { node: "a".into(), peer_address: "10.0.0.1:2".into() }]);
    }
}
