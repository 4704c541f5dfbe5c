//! The live spokes of each region, who may report for them, and where each of them stands with
//! each version.
//!
//! A spoke is a live member of its region while its watch is open: the hub learns of a spoke
//! that stops or loses its connection as soon as the connection closes (HTTP/2 keepalive
//! catches a silent one within seconds). Members are pushed to every spoke of the region with
//! its assignments; the spokes pick each chunk's owner among them. A node name belongs to one
//! open watch at a time: a second watch that claims a live name is refused ([`Members::join`]),
//! and the first keeps it.
//!
//! Each spoke's certificate names its node, and the spokes' API lets a caller watch and report
//! only as that node (`crate::relay` checks it before it comes here). Each watch also gets a
//! random session token, which only its own stream carries; a report counts only with the
//! token of the open watch of the node it names ([`Proof`]), so that a report sent on an
//! earlier connection of the same node is not taken for its current watch, and a member's
//! reports are forgotten when its watch ends.
//!
//! A region's row (what `aq status` and the cut-over read) is folded from the reports of its
//! members in their current watches, by the rules of [`crate::rollout`] ([`counted`],
//! [`fold`]). The reports live in memory only: after a hub restart the spokes report again
//! when they reconnect.
//!
//! The file is some 750 lines long for its tests: more than half of it are the membership
//! rules' unit tests and a property test of who may report, over arbitrary joins, leaves and
//! reports. The views of the cache reports (caches, what is in use, builds, who has not
//! reported) read the same state under the same lock, so they stay here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aqueduct_proto::Phase;
use aqueduct_proto::hub::v1 as pb;

use crate::rollout::retention::InUse;
use crate::rollout::{NodeReport, RegionProgress, RolloutKey, RolloutRecord, VersionId, counted, fold, sharers};

/// What a caller shows to speak for its node's current watch (its certificate has shown which
/// node it is): the session token of the node's open watch.
#[derive(Clone, Copy, Debug)]
pub enum Proof<'a> {
    Session(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error(
        "node {node:?} is already a live member of region {region} (its watch has been open for {}s): \
         every spoke of a region needs its own name (`node` in its config, --node or AQUEDUCT_NODE); \
         if this is that spoke restarted, it gets in once the hub sees its old connection close \
         (within about 10 s)",
        since.as_secs()
    )]
    NameTaken { region: String, node: String, since: Duration },
    #[error(
        "node {node:?} is not a live member of region {region}: a spoke reports only while its watch \
         is open (it reports again when it reconnects); nothing changed"
    )]
    NotLive { region: String, node: String },
    #[error(
        "this report does not carry the session of the open watch of node {node:?} in region {region} \
         (one of an earlier watch, of another spoke, or none): refused, nothing changed"
    )]
    WrongSession { region: String, node: String },
}

#[derive(Default)]
pub struct Members {
    inner: Mutex<Inner>,
}

/// A live member: the watch that made it one.
struct LiveMember {
    watch: u64,
    session: String,
    peer_address: String,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    /// Per region, per node.
    live: HashMap<String, BTreeMap<String, LiveMember>>,
    /// Per (dataset, version, region), per node: the watch the report came through, and it.
    reports: HashMap<RolloutKey, BTreeMap<String, (u64, NodeReport)>>,
    /// Per region, per node: its cache as last reported.
    caches: HashMap<String, BTreeMap<String, pb::CacheReport>>,
    /// Regions that have had a member with a peer share since the hub started: their spokes
    /// without one are sidecars, even while every spoke with a share is away (restarting).
    shared: std::collections::HashSet<String>,
    next_watch: u64,
}

/// Proof of membership, given to a watch; [`Members::leave`] takes it back.
#[derive(Debug)]
pub struct Membership {
    region: String,
    node: String,
    watch: u64,
    session: String,
}

impl Membership {
    /// The token only this watch's stream carries (`Assignments.session`).
    pub fn session(&self) -> &str {
        &self.session
    }
}

/// A fresh session token: 128 random bits, hex.
fn new_session() -> String {
    let mut bytes = [0u8; 16];
    // The OS's generator does not fail on Linux once the system booted; a token of zeros
    // would still be unique per watch together with the watch number, but not secret.
    if let Err(e) = getrandom::fill(&mut bytes) {
        tracing::error!(error = %e, "no randomness for a session token");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two tokens in time that does not depend on where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` of `region` is live, serving peers at `peer_address` (maybe empty). Refused while
    /// another watch holds the name.
    pub fn join(&self, region: &str, node: &str, peer_address: &str) -> Result<Membership, MembersError> {
        let mut inner = self.lock();
        if let Some(held) = inner.live.get(region).and_then(|nodes| nodes.get(node)) {
            return Err(MembersError::NameTaken {
                region: region.to_string(),
                node: node.to_string(),
                since: held.since.elapsed(),
            });
        }
        inner.next_watch += 1;
        let watch = inner.next_watch;
        let session = new_session();
        let member = LiveMember {
            watch,
            session: session.clone(),
            peer_address: peer_address.to_string(),
            since: Instant::now(),
        };
        inner.live.entry(region.to_string()).or_default().insert(node.to_string(), member);
        if !peer_address.is_empty() {
            inner.shared.insert(region.to_string());
        }
        Ok(Membership { region: region.to_string(), node: node.to_string(), watch, session })
    }

    /// The watch behind `membership` ended: the node is no longer live and what it reported is
    /// forgotten. Returns the regions' rows that change (to be written by the caller).
    pub fn leave(&self, membership: Membership) -> Vec<(RolloutKey, RegionProgress)> {
        let mut inner = self.lock();
        let Membership { region, node, watch, .. } = membership;
        let Some(nodes) = inner.live.get_mut(&region) else { return Vec::new() };
        if nodes.get(&node).is_none_or(|m| m.watch != watch) {
            return Vec::new();
        }
        nodes.remove(&node);
        if nodes.is_empty() {
            inner.live.remove(&region);
        }
        if let Some(caches) = inner.caches.get_mut(&region) {
            caches.remove(&node);
        }
        let keys: Vec<RolloutKey> = inner.reports.keys().filter(|k| k.region == region).cloned().collect();
        for k in &keys {
            if let Some(reports) = inner.reports.get_mut(k) {
                reports.remove(&node);
            }
        }
        inner.reports.retain(|_, reports| !reports.is_empty());
        keys.into_iter().filter_map(|k| inner.fold(&k).map(|p| (k, p))).collect()
    }

    pub fn members(&self, region: &str) -> Vec<pb::Member> {
        self.lock().live.get(region).map_or_else(Vec::new, |nodes| {
            nodes
                .iter()
                .map(|(node, m)| pb::Member { node: node.clone(), peer_address: m.peer_address.clone() })
                .collect()
        })
    }

    /// Records a node's report if `proof` speaks for the node's open watch; returns the
    /// region's row, folded anew (None when no counted member is live: the row stays as it
    /// is). A refused report changes nothing.
    pub fn report(
        &self,
        key: RolloutKey,
        node: &str,
        proof: Proof<'_>,
        report: NodeReport,
    ) -> Result<Option<RegionProgress>, MembersError> {
        let mut inner = self.lock();
        let watch = inner.check(&key.region, node, proof)?;
        inner.reports.entry(key.clone()).or_default().insert(node.to_string(), (watch, report));
        Ok(inner.fold(&key))
    }

    /// The region's row as the live members' reports make it now (None: no counted member).
    pub fn progress(&self, key: &RolloutKey) -> Option<RegionProgress> {
        self.lock().fold(key)
    }

    /// Keeps a live member's cache report, if `proof` speaks for the node's open watch.
    pub fn report_cache(&self, region: &str, proof: Proof<'_>, report: pb::CacheReport) -> Result<(), MembersError> {
        let mut inner = self.lock();
        inner.check(region, &report.node, proof)?;
        let mut report = report;
        report.session = String::new();
        inner.caches.entry(region.to_string()).or_default().insert(report.node.clone(), report);
        Ok(())
    }

    /// The versions live members report in use (in their last cache reports), each counted
    /// only for a dataset rolled out to the member's region (`rollouts`): a spoke cannot
    /// retain another region's versions.
    pub fn in_use(&self, rollouts: &[RolloutRecord]) -> Vec<InUse> {
        let rolled_out: HashSet<(&str, &str)> =
            rollouts.iter().map(|r| (r.region.as_str(), r.dataset.as_str())).collect();
        let inner = self.lock();
        let mut out = Vec::new();
        for (region, nodes) in &inner.caches {
            for (node, report) in nodes {
                for u in report.in_use.iter().filter(|u| rolled_out.contains(&(region.as_str(), u.dataset.as_str()))) {
                    out.push(InUse {
                        region: region.clone(),
                        node: node.clone(),
                        version: VersionId::new(u.dataset.clone(), u.version),
                        user: u.user.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.region, &a.node, &a.version).cmp(&(&b.region, &b.node, &b.version)));
        out
    }

    /// Forgets every report about `key`: the region takes the version up again from the
    /// start (a rollback to a version that was not whole), so reports of before do not count.
    pub fn forget(&self, key: &RolloutKey) {
        self.lock().reports.remove(key);
    }

    /// The live spokes (`region/node`, sorted) that have sent no cache report in their current
    /// watch: what they use is not known yet (right after they joined, or after a hub restart).
    pub fn unreported(&self) -> Vec<String> {
        let inner = self.lock();
        let mut out: Vec<String> = inner
            .live
            .iter()
            .flat_map(|(region, nodes)| {
                let caches = inner.caches.get(region);
                nodes
                    .keys()
                    .filter(move |node| caches.is_none_or(|c| !c.contains_key(*node)))
                    .map(move |node| format!("{region}/{node}"))
            })
            .collect();
        out.sort();
        out
    }

    /// Every live spoke, by region and node, with the build its last cache report named
    /// (empty until it sends one, or for a spoke that does not say): what `aq version` shows.
    pub fn spokes(&self) -> Vec<pb::SpokeInfo> {
        let inner = self.lock();
        let mut spokes: Vec<pb::SpokeInfo> = inner
            .live
            .iter()
            .flat_map(|(region, nodes)| {
                let caches = inner.caches.get(region);
                nodes.keys().map(move |node| pb::SpokeInfo {
                    region: region.clone(),
                    node: node.clone(),
                    agent_version: caches
                        .and_then(|c| c.get(node))
                        .map(|r| r.agent_version.clone())
                        .unwrap_or_default(),
                })
            })
            .collect();
        spokes.sort_by(|a, b| (&a.region, &a.node).cmp(&(&b.region, &b.node)));
        spokes
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

    /// What each live member of the region last reported for the version (in its current
    /// watch), and whether it counts for the region's readiness.
    pub fn nodes(&self, key: &RolloutKey) -> Vec<pb::NodeProgress> {
        let inner = self.lock();
        let reports = inner.reports.get(key);
        let Some(nodes) = inner.live.get(&key.region) else { return Vec::new() };
        let shared = inner.shared.contains(&key.region);
        let counted = counted(nodes.iter().map(|(n, m)| (n.as_str(), m.peer_address.as_str())), shared);
        nodes
            .iter()
            .map(|(node, m)| {
                let counts = counted.contains(&node.as_str());
                match reports.and_then(|r| r.get(node)).filter(|(watch, _)| *watch == m.watch) {
                    Some((_, r)) => pb::NodeProgress {
                        node: node.clone(),
                        phase: r.phase.to_wire(),
                        cached_bytes: r.cached_bytes,
                        reason: r.reason.clone(),
                        rate_bytes_per_sec: r.rate,
                        counted: counts,
                    },
                    None => pb::NodeProgress {
                        node: node.clone(),
                        phase: Phase::Pending.to_wire(),
                        counted: counts,
                        ..Default::default()
                    },
                }
            })
            .collect()
    }
}

impl Inner {
    /// The watch `proof` speaks for, if it is the open watch of `node` in `region`.
    fn check(&self, region: &str, node: &str, proof: Proof<'_>) -> Result<u64, MembersError> {
        let member = self
            .live
            .get(region)
            .and_then(|nodes| nodes.get(node))
            .ok_or_else(|| MembersError::NotLive { region: region.to_string(), node: node.to_string() })?;
        match proof {
            Proof::Session(token) if same_token(token, &member.session) => Ok(member.watch),
            Proof::Session(_) => Err(MembersError::WrongSession { region: region.to_string(), node: node.to_string() }),
        }
    }

    fn fold(&self, key: &RolloutKey) -> Option<RegionProgress> {
        let nodes = self.live.get(&key.region)?;
        let reports = self.reports.get(key);
        let members: Vec<(&str, &str)> = nodes.iter().map(|(n, m)| (n.as_str(), m.peer_address.as_str())).collect();
        let membership = sharers(&members);
        let counted: Vec<(&str, Option<&NodeReport>)> =
            counted(members.iter().copied(), self.shared.contains(&key.region))
                .into_iter()
                .map(|node| {
                    let watch = nodes.get(node).map(|m| m.watch);
                    let report = reports.and_then(|r| r.get(node)).filter(|(w, _)| Some(*w) == watch).map(|(_, r)| r);
                    (node, report)
                })
                .collect();
        fold(&counted, &membership)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(phase: Phase, cached: u64) -> NodeReport {
        NodeReport {
            phase,
            cached_bytes: cached,
            reason: String::new(),
            rate: 10,
            share: false,
            membership: String::new(),
        }
    }

    fn key() -> RolloutKey {
        RolloutKey::new("llama", 1, "eu")
    }

    /// Reports as `m`'s own spoke.
    fn as_member<'a>(m: &'a Membership) -> Proof<'a> {
        Proof::Session(m.session())
    }

    #[test]
    fn spokes_are_the_live_members_with_the_build_they_reported() {
        let members = Members::default();
        let a = members.join("eu", "a", "10.0.0.1:1").unwrap();
        let _b = members.join("eu", "b", "").unwrap();
        let c = members.join("ap", "c", "").unwrap();
        let cache = |node: &str, session: &str| pb::CacheReport {
            node: node.into(),
            session: session.into(),
            agent_version: "0.4.0".into(),
            ..Default::default()
        };
        members.report_cache("eu", as_member(&a), cache("a", a.session())).unwrap();
        members.report_cache("ap", as_member(&c), cache("c", c.session())).unwrap();
        let listed = |m: &Members| {
            m.spokes().into_iter().map(|s| format!("{}/{}={}", s.region, s.node, s.agent_version)).collect::<Vec<_>>()
        };
        assert_eq!(listed(&members), ["ap/c=0.4.0", "eu/a=0.4.0", "eu/b="]);
        // A spoke that leaves is no longer listed, nor its build.
        members.leave(a);
        assert_eq!(listed(&members), ["ap/c=0.4.0", "eu/b="]);
    }

    #[test]
    fn a_region_is_ready_once_every_live_member_is() {
        let members = Members::default();
        let a = members.join("eu", "a", "10.0.0.1:1").unwrap();
        let b = members.join("eu", "b", "10.0.0.2:1").unwrap();
        let row = members.report(key(), "a", as_member(&a), report(Phase::Ready, 100)).unwrap().unwrap();
        assert_eq!((row.phase, row.cached_bytes), (Phase::Transferring, 0), "b has not reported");
        let row = members.report(key(), "b", as_member(&b), report(Phase::Transferring, 40)).unwrap().unwrap();
        assert_eq!((row.phase, row.cached_bytes, row.rate), (Phase::Transferring, 40, 20));
        let row = members.report(key(), "b", as_member(&b), report(Phase::Ready, 100)).unwrap().unwrap();
        assert_eq!((row.phase, row.cached_bytes), (Phase::Ready, 100));
        assert_eq!(members.nodes(&key()).len(), 2);

        // A member that leaves no longer holds the region back.
        let c = members.join("eu", "c", "10.0.0.3:1").unwrap();
        let row = members.report(key(), "c", as_member(&c), report(Phase::Transferring, 5)).unwrap().unwrap();
        assert_eq!(row.phase, Phase::Transferring);
        let changed = members.leave(c);
        assert_eq!(
            changed,
            vec![(key(), RegionProgress { phase: Phase::Ready, cached_bytes: 100, reason: String::new(), rate: 20 })]
        );
        assert_eq!(members.members("eu").iter().map(|m| m.node.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn in_region_mode_the_shares_add_up() {
        let members = Members::default();
        let (a, b) = (members.join("eu", "a", "x:1").unwrap(), members.join("eu", "b", "x:2").unwrap());
        let share = |phase: Phase, cached, membership: &str| NodeReport {
            share: true,
            membership: membership.into(),
            ..report(phase, cached)
        };
        members.report(key(), "a", as_member(&a), share(Phase::Ready, 60, "a,b")).unwrap();
        let row = members.report(key(), "b", as_member(&b), share(Phase::Ready, 40, "a,b")).unwrap().unwrap();
        assert_eq!((row.phase, row.cached_bytes), (Phase::Ready, 100));
        // c joins: the shares computed for a and b alone no longer make the region Ready.
        let c = members.join("eu", "c", "x:3").unwrap();
        let row = members.report(key(), "c", as_member(&c), share(Phase::Ready, 0, "a,b,c")).unwrap().unwrap();
        assert_eq!(row.phase, Phase::Transferring, "old shares counted after the members changed");
        members.report(key(), "a", as_member(&a), share(Phase::Ready, 40, "a,b,c")).unwrap();
        members.report(key(), "b", as_member(&b), share(Phase::Ready, 30, "a,b,c")).unwrap();
        let row = members.report(key(), "c", as_member(&c), share(Phase::Ready, 30, "a,b,c")).unwrap().unwrap();
        assert_eq!((row.phase, row.cached_bytes), (Phase::Ready, 100));
    }

    #[test]
    fn a_failed_member_fails_the_region_with_its_reason() {
        let members = Members::default();
        let a = members.join("eu", "a", "").unwrap();
        let mut failed = report(Phase::Failed, 0);
        failed.reason = "cache full".into();
        let row = members.report(key(), "a", as_member(&a), failed).unwrap().unwrap();
        assert_eq!((row.phase, row.reason.as_str()), (Phase::Failed, "a: cache full"));
    }

    /// A second spoke that claims a live name is refused and the first keeps it; once the
    /// first's watch ends (a restarted spoke whose old connection closed), the name is free.
    #[test]
    fn a_live_name_is_refused_to_a_second_watch_until_the_first_ends() {
        let members = Members::default();
        let first = members.join("eu", "a", "10.0.0.1:1").unwrap();
        let err = members.join("eu", "a", "10.0.0.9:1").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, MembersError::NameTaken { .. }), "{text}");
        assert!(
            text.contains("\"a\" is already a live member of region eu") && text.contains("--node"),
            "the message says what and what to do: {text}"
        );
        assert_eq!(members.members("eu"), vec![pb::Member { node: "a".into(), peer_address: "10.0.0.1:1".into() }]);
        // The same name in another region is another node.
        let _us = members.join("us", "a", "").unwrap();
        members.leave(first);
        let second = members.join("eu", "a", "10.0.0.9:1").unwrap();
        assert_eq!(members.members("eu"), vec![pb::Member { node: "a".into(), peer_address: "10.0.0.9:1".into() }]);
        assert_ne!(second.session(), "", "a session is given");
    }

    /// Reports that do not carry the open watch's session change nothing: none at all, a made
    /// up one, another live member's, one for a node that is not live.
    #[test]
    fn forged_reports_are_refused_and_change_nothing() {
        let members = Members::default();
        let a = members.join("eu", "a", "x:1").unwrap();
        let b = members.join("eu", "b", "x:2").unwrap();
        members.report(key(), "a", as_member(&a), report(Phase::Transferring, 10)).unwrap();
        members.report(key(), "b", as_member(&b), report(Phase::Transferring, 20)).unwrap();
        let before = (members.progress(&key()), members.nodes(&key()));
        assert_eq!(before.0.as_ref().unwrap().phase, Phase::Transferring);

        for (node, proof) in [
            ("a", Proof::Session("")),
            ("a", Proof::Session("0123456789abcdef0123456789abcdef")),
            // b's token in a's name: b cannot speak for a.
            ("a", as_member(&b)),
        ] {
            let err = members.report(key(), node, proof, report(Phase::Ready, 1000)).unwrap_err();
            assert!(matches!(err, MembersError::WrongSession { .. }), "{err}");
            assert!(err.to_string().contains("nothing changed"), "{err}");
        }
        // A node that is not live, with any token.
        let err = members.report(key(), "ghost", as_member(&a), report(Phase::Ready, 1000)).unwrap_err();
        assert!(matches!(&err, MembersError::NotLive { node, .. } if node == "ghost"), "{err}");
        let err =
            members.report_cache("eu", Proof::Session(""), pb::CacheReport { node: "a".into(), ..Default::default() });
        assert!(matches!(err, Err(MembersError::WrongSession { .. })));
        assert!(members.caches().is_empty());
        assert_eq!((members.progress(&key()), members.nodes(&key())), before, "a refused report changed something");
        assert!(members.nodes(&key()).iter().all(|n| n.node != "ghost"));
    }

    /// A report of an earlier watch, or of a member that left, never makes the region Ready.
    #[test]
    fn stale_reports_never_make_a_region_ready() {
        let members = Members::default();
        let a = members.join("eu", "a", "x:1").unwrap();
        let old = a.session().to_string();
        members.report(key(), "a", as_member(&a), report(Phase::Ready, 100)).unwrap();
        // a's watch ends (its connection broke) and it watches again: its Ready is forgotten.
        members.leave(a);
        assert_eq!(members.progress(&key()), None, "no member: the row stays as it was");
        let a = members.join("eu", "a", "x:1").unwrap();
        assert_eq!(members.progress(&key()).unwrap().phase, Phase::Pending, "a Ready of the earlier watch counted");
        let err = members.report(key(), "a", Proof::Session(&old), report(Phase::Ready, 100)).unwrap_err();
        assert!(matches!(err, MembersError::WrongSession { .. }), "{err}");
        assert_eq!(members.progress(&key()).unwrap().phase, Phase::Pending);

        // b reports Ready and leaves; a is not Ready: the region is not.
        let b = members.join("eu", "b", "x:2").unwrap();
        members.report(key(), "b", as_member(&b), report(Phase::Ready, 100)).unwrap();
        let b_token = b.session().to_string();
        members.leave(b);
        let row = members.report(key(), "a", as_member(&a), report(Phase::Transferring, 50)).unwrap().unwrap();
        assert_eq!(row.phase, Phase::Transferring);
        let err = members.report(key(), "b", Proof::Session(&b_token), report(Phase::Ready, 100)).unwrap_err();
        assert!(matches!(err, MembersError::NotLive { .. }), "{err}");
        assert_eq!(members.nodes(&key()).len(), 1, "a member that left still shows");
    }

    /// A spoke without a peer share (a sidecar) in a region with shares neither holds the region
    /// back nor fails it; in a region of lone spokes (no shares at all) every spoke counts.
    #[test]
    fn a_spoke_without_a_peer_share_counts_only_in_a_region_without_shares() {
        let members = Members::default();
        let node = members.join("eu", "node", "10.0.0.1:7444").unwrap();
        let sidecar = members.join("eu", "pod-sidecar", "").unwrap();
        let mut full = report(Phase::Failed, 0);
        full.reason = "cache full".into();
        let row = members.report(key(), "pod-sidecar", as_member(&sidecar), full.clone()).unwrap().unwrap();
        assert_eq!(row.phase, Phase::Pending, "the sidecar failed the region");
        let share = NodeReport { share: true, membership: "node".into(), ..report(Phase::Ready, 100) };
        let row = members.report(key(), "node", as_member(&node), share).unwrap().unwrap();
        assert_eq!((row.phase, row.cached_bytes), (Phase::Ready, 100));
        let nodes: Vec<(String, bool)> = members.nodes(&key()).into_iter().map(|n| (n.node, n.counted)).collect();
        assert_eq!(nodes, [("node".to_string(), true), ("pod-sidecar".to_string(), false)]);

        // Lone spokes without shares: each counts.
        let members = Members::default();
        let a = members.join("us", "a", "").unwrap();
        let _b = members.join("us", "b", "").unwrap();
        let us = RolloutKey::new("llama", 1, "us");
        let row = members.report(us, "a", as_member(&a), report(Phase::Ready, 100)).unwrap().unwrap();
        assert_eq!(row.phase, Phase::Transferring, "b counts and has not reported");
        assert_eq!(counted([("a", ""), ("b", "h:1"), ("c", "")].into_iter(), false), ["b"]);
        assert_eq!(counted([("a", ""), ("c", "")].into_iter(), false), ["a", "c"]);
        assert!(counted([("a", ""), ("c", "")].into_iter(), true).is_empty(), "sidecars counted in a region of shares");

        // In a region of shares, the node spoke away (restarting): the sidecar still does not
        // count, and the row stays as it was rather than follow the sidecar.
        let members = Members::default();
        let node = members.join("eu", "node", "10.0.0.1:7444").unwrap();
        let sidecar = members.join("eu", "pod-sidecar", "").unwrap();
        members.report(key(), "node", as_member(&node), report(Phase::Transferring, 40)).unwrap();
        members.leave(node);
        assert_eq!(members.progress(&key()), None);
        let row = members.report(
            key(),
            "pod-sidecar",
            as_member(&sidecar),
            NodeReport { reason: "cache full".into(), ..report(Phase::Failed, 0) },
        );
        assert_eq!(row.unwrap(), None, "a sidecar's report moved the row");
        assert!(!members.nodes(&key())[0].counted);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Which token a report carries.
        #[derive(Clone, Debug)]
        enum Token {
            /// The open watch's of the node it names.
            Current,
            /// The one an earlier watch of that node had.
            Earlier,
            /// Another live node's.
            Other(usize),
            /// Made up.
            Forged,
        }

        #[derive(Clone, Debug)]
        enum Op {
            Join { node: usize, share: bool },
            Leave { node: usize },
            Report { node: usize, token: Token, phase: usize, share: bool, current_membership: bool, cached: u64 },
        }

        fn op() -> impl Strategy<Value = Op> {
            let token = prop_oneof![
                4 => Just(Token::Current),
                1 => Just(Token::Earlier),
                1 => (0..4usize).prop_map(Token::Other),
                1 => Just(Token::Forged),
            ];
            prop_oneof![
                2 => (0..4usize, any::<bool>()).prop_map(|(node, share)| Op::Join { node, share }),
                1 => (0..4usize).prop_map(|node| Op::Leave { node }),
                6 => (0..5usize, token, 0..4usize, any::<bool>(), any::<bool>(), 0..1000u64).prop_map(
                    |(node, token, phase, share, current_membership, cached)| Op::Report {
                        node,
                        token,
                        phase,
                        share,
                        current_membership,
                        cached
                    }
                ),
            ]
        }

        /// The model: per live node, whether it has a share, and what it reported in its
        /// current watch.
        #[derive(Default)]
        struct Model {
            live: BTreeMap<usize, (bool, Option<NodeReport>)>,
            /// A member with a share was live once.
            shared: bool,
        }

        impl Model {
            fn sharers(&self) -> String {
                let names: Vec<String> =
                    self.live.iter().filter(|(_, (s, _))| *s).map(|(n, _)| format!("n{n}")).collect();
                names.join(",")
            }

            /// Every counted live member reported Ready in its current watch (a share for the
            /// current membership).
            fn ready(&self) -> bool {
                let any_share = self.shared || self.live.values().any(|(s, _)| *s);
                let counted: Vec<&Option<NodeReport>> =
                    self.live.values().filter(|(s, _)| !any_share || *s).map(|(_, r)| r).collect();
                let membership = self.sharers();
                !counted.is_empty()
                    && counted.iter().all(|r| {
                        r.as_ref().is_some_and(|r| r.phase == Phase::Ready && (!r.share || r.membership == membership))
                    })
            }
        }

        proptest! {
            #![proptest_config(aqueduct_testkit::fuzz::config(512))]

            /// Arbitrary joins, leaves and reports (with good and bad tokens): the region is
            /// Ready exactly when every counted live member reported Ready with its current
            /// token, and a refused report changes nothing.
            #[test]
            fn fuzz_no_report_but_a_current_ones_makes_a_region_ready(ops in proptest::collection::vec(op(), 1..60)) {
                let members = Members::default();
                let mut model = Model::default();
                let mut watches: BTreeMap<usize, Membership> = BTreeMap::new();
                let mut earlier: BTreeMap<usize, String> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Join { node, share } => {
                            let address = if share { format!("10.0.0.{node}:7444") } else { String::new() };
                            let joined = members.join("eu", &format!("n{node}"), &address);
                            match watches.entry(node) {
                                std::collections::btree_map::Entry::Occupied(_) => {
                                    let taken = matches!(joined, Err(MembersError::NameTaken { .. }));
                                    prop_assert!(taken, "a live name was given to a second watch");
                                }
                                std::collections::btree_map::Entry::Vacant(slot) => {
                                    slot.insert(joined.unwrap());
                                    model.live.insert(node, (share, None));
                                    model.shared |= share;
                                }
                            }
                        }
                        Op::Leave { node } => {
                            if let Some(m) = watches.remove(&node) {
                                earlier.insert(node, m.session().to_string());
                                members.leave(m);
                                model.live.remove(&node);
                            }
                        }
                        Op::Report { node, token, phase, share, current_membership, cached } => {
                            let token = match &token {
                                Token::Current => watches.get(&node).map(|m| m.session().to_string()),
                                Token::Earlier => earlier.get(&node).cloned(),
                                Token::Other(other) => watches.get(other).map(|m| m.session().to_string()),
                                Token::Forged => Some("f".repeat(32)),
                            }
                            .unwrap_or_default();
                            let membership = if current_membership { model.sharers() } else { "stale".to_string() };
                            let report = NodeReport {
                                phase: Phase::ALL[phase],
                                cached_bytes: cached,
                                reason: String::new(),
                                rate: 1,
                                share,
                                membership,
                            };
                            let good = watches.get(&node).is_some_and(|m| m.session() == token);
                            let before = (members.progress(&key()), members.nodes(&key()));
                            let outcome = members.report(key(), &format!("n{node}"), Proof::Session(&token), report.clone());
                            if good {
                                prop_assert!(outcome.is_ok());
                                if let Some(entry) = model.live.get_mut(&node) {
                                    entry.1 = Some(report);
                                }
                            } else {
                                prop_assert!(outcome.is_err(), "a report with a bad token was taken");
                                prop_assert_eq!((members.progress(&key()), members.nodes(&key())), before);
                            }
                        }
                    }
                    let ready = members.progress(&key()).is_some_and(|row| row.phase == Phase::Ready);
                    prop_assert_eq!(ready, model.ready(), "the row's phase disagrees with the reports that count");
                }
            }
        }
    }
}
