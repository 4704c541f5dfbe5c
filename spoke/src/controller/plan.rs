//! The replication controller's decisions, as one pure function: [`plan`] takes the hub's
//! assignments, what the controller observed just now ([`Observed`]) and what it remembers of
//! its earlier passes ([`Memory`]: the results of what it did, fed back), and says what to do
//! ([`Plan`]): which versions to pin and how much of each, which to replicate and how (the
//! whole version, or this spoke's share of the region's copy), which Ready versions to report
//! again, and which to leave until their retry is due. No I/O: the controller
//! ([`super`]) observes, executes the plan and records the results.
//!
//! The rules:
//! - Pinned (never evicted): each assigned version the hub retains (`Assignment.retained`;
//!   the active version always), and any other only while an AqueductVolume holds it or a mount
//!   on this node shows it; all of a version held whole, the owned chunks of a share. What
//!   goes when the hub no longer assigns a version is [`super::retention`]'s.
//! - `auto` holds the whole version when it fits the cache (`room`), a share otherwise.
//! - A version Ready as a share is taken up again when the region's membership changes, so
//!   that the region still holds one copy (newly owned chunks come from the peers that hold
//!   them; the link carries only what died with a spoke). A version held whole stays Ready.
//! - A Ready version is reported once per session with the hub: a restarted hub keeps each
//!   spoke's progress in memory only.
//! - A failed version is tried again after [`Backoff::FAILED_VERSION`] (growing with each
//!   failure in a row, jittered), and at once when the hub sends assignments.
//! - A spoke without a peer share in a region whose spokes have one is a sidecar: it holds,
//!   pins, replicates and reports nothing (its readers fetch what they read), and stays one
//!   while those spokes restart. In a region that never had a spoke with a share, it holds
//!   every version itself, as a lone spoke does.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use aqueduct_proto::ReplicationMode;
use aqueduct_proto::hub::v1 as pb;

use crate::retry::Backoff;

/// A version of a dataset.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionKey {
    pub dataset: String,
    pub version: u64,
}

impl VersionKey {
    pub fn new(dataset: &str, version: u64) -> Self {
        Self { dataset: dataset.to_string(), version }
    }

    pub fn of(a: &pb::Assignment) -> Self {
        Self::new(&a.dataset, a.version)
    }
}

/// What the controller sees when it plans.
#[derive(Clone, Debug)]
pub struct Observed {
    pub now: Instant,
    /// This spoke has a peer share (it serves the region's peers).
    pub sharer: bool,
    /// The region's members with a peer share, sorted and comma-separated
    /// ([`crate::peers::Peers::membership`]): what a share is computed for.
    pub membership: String,
    /// Versions AqueductVolumes hold.
    pub held: HashSet<VersionKey>,
    /// Versions mounts on this node show (and volumes hold): pinned, never swept.
    pub in_use: HashSet<VersionKey>,
    /// The most bytes a version may have for `auto` to hold it whole: below the high
    /// watermark of the tier chunks are kept in ([`crate::cache::TieredStore::room`]).
    pub room: u64,
}

/// How this spoke holds a version it replicated to Ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub mode: ReplicationMode,
    /// The membership a share was computed for.
    pub membership: String,
    /// The bytes it reported Ready with.
    pub bytes: u64,
    /// The assignment's generation it was replicated for (`Assignment.generation`): when the
    /// hub asks the region to take the version up again (a rollback to a version that may no
    /// longer be whole here), the generation changes and the spoke replicates it anew.
    pub generation: i64,
}

/// A version whose replication failed, and when it is due again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Failures in a row.
    pub failures: u32,
    pub retry_at: Instant,
}

/// What the controller remembers between passes: the results of what it did.
#[derive(Debug, Default)]
pub struct Memory {
    ready: HashMap<VersionKey, Held>,
    /// Ready versions reported in this session.
    reported: HashSet<VersionKey>,
    failed: HashMap<VersionKey, Failure>,
    sidecar: bool,
    /// The hub's assignments arrived in this session (before, nothing is swept).
    arrived: bool,
}

impl Memory {
    /// A new session with the hub began: Ready versions are reported again.
    pub fn new_session(&mut self) {
        self.reported.clear();
        self.arrived = false;
    }

    /// The hub sent assignments: failed versions are due at once.
    pub fn assignments_arrived(&mut self) {
        self.failed.clear();
        self.arrived = true;
    }

    /// `key` was replicated to Ready (and reported so), held as `mode` for `membership`, for
    /// the assignment's `generation`.
    pub fn replicated(
        &mut self,
        key: VersionKey,
        mode: ReplicationMode,
        membership: &str,
        bytes: u64,
        generation: i64,
    ) {
        self.failed.remove(&key);
        self.reported.insert(key.clone());
        self.ready.insert(key, Held { mode, membership: membership.to_string(), bytes, generation });
    }

    /// `key` was reported Ready in this session.
    pub fn reported_ready(&mut self, key: VersionKey) {
        self.reported.insert(key);
    }

    /// `key` failed at `now`; it is due again after [`Backoff::FAILED_VERSION`], the wait
    /// shortened by the jitter draw `unit` (in `[0, 1)`).
    pub fn failed(&mut self, key: VersionKey, now: Instant, unit: f64) {
        let failures = self.failed.get(&key).map_or(0, |f| f.failures);
        let retry_at = now + Backoff::FAILED_VERSION.delay(failures, unit);
        self.failed.insert(key, Failure { failures: failures.saturating_add(1), retry_at });
    }

    /// `key` is no longer Ready here (its share was computed for another membership).
    pub fn forget(&mut self, key: &VersionKey) {
        self.ready.remove(key);
    }

    /// This spoke is a sidecar from now on: it holds nothing, and nothing is due.
    pub fn become_sidecar(&mut self) {
        self.sidecar = true;
        self.ready.clear();
        self.failed.clear();
    }

    /// The hub's assignments arrived in this session: what they no longer name may go.
    pub fn arrived(&self) -> bool {
        self.arrived
    }

    pub fn is_sidecar(&self) -> bool {
        self.sidecar
    }

    /// The versions this spoke holds Ready.
    pub fn ready(&self) -> impl Iterator<Item = &VersionKey> {
        self.ready.keys()
    }

    pub fn failure(&self, key: &VersionKey) -> Option<Failure> {
        self.failed.get(key).copied()
    }

    /// When the next failed version is due (None: none failed).
    pub fn retry_at(&self) -> Option<Instant> {
        self.failed.values().map(|f| f.retry_at).min()
    }
}

/// What to do in one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// This spoke is a sidecar: nothing below, and it holds nothing of the region's copy.
    pub sidecar: bool,
    /// Versions no longer Ready here: shares computed for another membership.
    pub forget: Vec<VersionKey>,
    /// The versions eviction must not take, and how much of each this spoke holds: all its
    /// chunks (`every-node`) or those it owns (`region`).
    pub pin: Vec<(pb::Assignment, ReplicationMode)>,
    /// In the assignments' order.
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Tell the hub again that this spoke holds its part of the version.
    ReportReady { assignment: pb::Assignment, mode: ReplicationMode, bytes: u64 },
    /// Make this spoke hold its part of the version (and report as it goes).
    Replicate { assignment: pb::Assignment, mode: ReplicationMode },
}

/// How this spoke holds `a`: as the rollout says, and for `auto`, the whole version when it
/// fits in `room`, a share of the region's one copy otherwise.
pub fn effective_mode(a: &pb::Assignment, room: u64) -> ReplicationMode {
    match ReplicationMode::from_wire(a.mode).unwrap_or_default() {
        ReplicationMode::Auto if a.total_bytes <= room => ReplicationMode::EveryNode,
        ReplicationMode::Auto => ReplicationMode::Region,
        mode => mode,
    }
}

/// Decides one pass of the controller (see the module's rules).
pub fn plan(assignments: &[pb::Assignment], observed: &Observed, memory: &Memory) -> Plan {
    if !observed.sharer && (memory.sidecar || !observed.membership.is_empty()) {
        return Plan { sidecar: true, ..Plan::default() };
    }
    let stale = |h: &Held| h.mode == ReplicationMode::Region && h.membership != observed.membership;
    let mut forget: Vec<VersionKey> = memory.ready.iter().filter(|(_, h)| stale(h)).map(|(k, _)| k.clone()).collect();
    // Taken up again by the hub (a new generation): no longer Ready here until replicated.
    let renewed =
        |a: &pb::Assignment| memory.ready.get(&VersionKey::of(a)).is_some_and(|h| h.generation != a.generation);
    forget.extend(assignments.iter().filter(|a| renewed(a)).map(VersionKey::of));
    forget.sort();
    forget.dedup();
    let mut plan = Plan { forget, ..Plan::default() };
    for a in assignments {
        let key = VersionKey::of(a);
        let mode = effective_mode(a, observed.room);
        if a.retained || a.active || observed.held.contains(&key) || observed.in_use.contains(&key) {
            plan.pin.push((a.clone(), mode));
        }
        match memory.ready.get(&key).filter(|h| !stale(h) && h.generation == a.generation) {
            Some(held) if !memory.reported.contains(&key) => {
                plan.steps.push(Step::ReportReady { assignment: a.clone(), mode: held.mode, bytes: held.bytes });
            }
            Some(_) => {}
            None if memory.failed.get(&key).is_none_or(|f| observed.now >= f.retry_at) => {
                plan.steps.push(Step::Replicate { assignment: a.clone(), mode });
            }
            None => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use ReplicationMode::{EveryNode, Region};

    fn a(dataset: &str, version: u64, active: bool, mode: &str) -> pb::Assignment {
        pb::Assignment {
            dataset: dataset.into(),
            version,
            total_bytes: 100 << 20,
            active,
            mode: mode.parse::<ReplicationMode>().unwrap().to_wire(),
            ..Default::default()
        }
    }

    fn observed(now: Instant) -> Observed {
        Observed {
            now,
            sharer: true,
            membership: "n1,n2".into(),
            held: HashSet::new(),
            in_use: HashSet::new(),
            room: u64::MAX,
        }
    }

    fn key(dataset: &str, version: u64) -> VersionKey {
        VersionKey::new(dataset, version)
    }

    fn pinned(plan: &Plan) -> Vec<(String, u64, ReplicationMode)> {
        plan.pin.iter().map(|(a, m)| (a.dataset.clone(), a.version, *m)).collect()
    }

    fn replicated(plan: &Plan) -> Vec<VersionKey> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Replicate { assignment, .. } => Some(VersionKey::of(assignment)),
                Step::ReportReady { .. } => None,
            })
            .collect()
    }

    fn reported(plan: &Plan) -> Vec<VersionKey> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::ReportReady { assignment, .. } => Some(VersionKey::of(assignment)),
                Step::Replicate { .. } => None,
            })
            .collect()
    }

    #[test]
    fn active_rolling_and_held_versions_are_pinned_older_ones_are_not() {
        let now = Instant::now();
        // What the hub retains: the active version and the ones rolling out (here; with the
        // hub's retention rule, whatever it says).
        let retained = |mut a: pb::Assignment, retained: bool| {
            a.retained = retained;
            a
        };
        let assignments = [
            retained(a("m", 1, false, "every-node"), false),
            retained(a("m", 2, false, "region"), false),
            retained(a("m", 3, true, "every-node"), true),
            retained(a("m", 4, false, "region"), true),
            // Another dataset with no active version yet: everything of it is rolling out.
            retained(a("other", 1, false, "every-node"), true),
        ];
        let p = plan(&assignments, &observed(now), &Memory::default());
        assert_eq!(
            pinned(&p),
            [("m".into(), 3, EveryNode), ("m".into(), 4, Region), ("other".into(), 1, EveryNode)],
            "the active version, the newer one, and what has no active version; v1 and v2 are older"
        );
        // A volume holds v2: pinned too, as a share (its mode).
        let mut seen = observed(now);
        seen.held.insert(key("m", 2));
        let p = plan(&assignments, &seen, &Memory::default());
        assert_eq!(
            pinned(&p),
            [
                ("m".into(), 2, Region),
                ("m".into(), 3, EveryNode),
                ("m".into(), 4, Region),
                ("other".into(), 1, EveryNode)
            ]
        );
        // Pinning does not depend on replication: every version not Ready is replicated.
        assert_eq!(replicated(&p).len(), 5);
        // A mount on this node shows v1: pinned too. The active version is pinned even if
        // the hub (an older one) does not say it retains it.
        let mut seen = observed(now);
        seen.in_use.insert(key("m", 1));
        let mut unsaid = assignments.clone();
        unsaid[2].retained = false;
        let p = plan(&unsaid, &seen, &Memory::default());
        assert_eq!(
            pinned(&p),
            [
                ("m".into(), 1, EveryNode),
                ("m".into(), 3, EveryNode),
                ("m".into(), 4, Region),
                ("other".into(), 1, EveryNode)
            ]
        );
    }

    #[test]
    fn every_version_the_hub_retains_is_pinned_whatever_its_age() {
        let mut old = a("m", 1, false, "every-node");
        old.retained = true;
        let mut dropped = a("m", 2, false, "every-node");
        dropped.retained = false;
        let p = plan(&[old, dropped, a("m", 3, true, "every-node")], &observed(Instant::now()), &Memory::default());
        assert_eq!(pinned(&p), [("m".into(), 1, EveryNode), ("m".into(), 3, EveryNode)]);
    }

    #[test]
    fn a_failed_version_is_retried_after_its_backoff_and_at_once_when_assignments_change() {
        let t0 = Instant::now();
        let assignments = [a("m", 1, false, "every-node"), a("m", 2, false, "every-node")];
        let mut memory = Memory::default();
        memory.failed(key("m", 1), t0, 0.0);
        assert_eq!(memory.retry_at(), Some(t0 + Duration::from_secs(30)));
        // Not before its time; the other version goes ahead.
        let before = plan(&assignments, &observed(t0 + Duration::from_secs(29)), &memory);
        assert_eq!(replicated(&before), [key("m", 2)]);
        let due = plan(&assignments, &observed(t0 + Duration::from_secs(30)), &memory);
        assert_eq!(replicated(&due), [key("m", 1), key("m", 2)]);
        // Failing again waits longer: 60 s, then 120 s, up to 300 s.
        let t1 = t0 + Duration::from_secs(30);
        memory.failed(key("m", 1), t1, 0.0);
        assert_eq!(memory.retry_at(), Some(t1 + Duration::from_secs(60)));
        assert_eq!(memory.failure(&key("m", 1)).map(|f| f.failures), Some(2));
        assert_eq!(replicated(&plan(&assignments, &observed(t1 + Duration::from_secs(59)), &memory)), [key("m", 2)]);
        // The hub sends assignments: tried again at once, and a new failure starts over at 30 s.
        memory.assignments_arrived();
        assert_eq!(memory.retry_at(), None);
        assert_eq!(replicated(&plan(&assignments, &observed(t1), &memory)), [key("m", 1), key("m", 2)]);
        memory.failed(key("m", 1), t1, 0.0);
        assert_eq!(memory.retry_at(), Some(t1 + Duration::from_secs(30)));
        // Jitter only shortens the wait, by up to half.
        let mut jittered = Memory::default();
        jittered.failed(key("m", 1), t0, 0.999);
        let wait = jittered.retry_at().unwrap() - t0;
        assert!((Duration::from_secs(15)..=Duration::from_secs(30)).contains(&wait), "{wait:?}");
        // A version that became Ready is no longer due.
        memory.replicated(key("m", 1), EveryNode, "n1,n2", 1, 0);
        assert_eq!(memory.retry_at(), None);
    }

    #[test]
    fn ready_versions_are_reported_again_once_per_session() {
        let now = Instant::now();
        let assignments = [a("m", 1, true, "every-node"), a("m", 2, false, "region")];
        let mut memory = Memory::default();
        memory.replicated(key("m", 1), EveryNode, "n1,n2", 111, 0);
        memory.replicated(key("m", 2), Region, "n1,n2", 222, 0);
        // Replicated in this session: reported then, not again.
        let p = plan(&assignments, &observed(now), &memory);
        assert!(p.steps.is_empty(), "{p:?}");
        // A new session (the hub may have restarted): each Ready version once, with the mode
        // and the bytes it was Ready with.
        memory.new_session();
        let p = plan(&assignments, &observed(now), &memory);
        assert_eq!(reported(&p), [key("m", 1), key("m", 2)]);
        assert_eq!(
            p.steps,
            [
                Step::ReportReady { assignment: assignments[0].clone(), mode: EveryNode, bytes: 111 },
                Step::ReportReady { assignment: assignments[1].clone(), mode: Region, bytes: 222 },
            ]
        );
        memory.reported_ready(key("m", 1));
        memory.reported_ready(key("m", 2));
        assert!(plan(&assignments, &observed(now), &memory).steps.is_empty());
    }

    #[test]
    fn shares_are_taken_up_again_when_membership_changes_whole_versions_are_not() {
        let now = Instant::now();
        let assignments = [a("m", 1, true, "every-node"), a("m", 2, false, "region")];
        let mut memory = Memory::default();
        memory.replicated(key("m", 1), EveryNode, "n1,n2", 100, 0);
        memory.replicated(key("m", 2), Region, "n1,n2", 50, 0);
        let same = plan(&assignments, &observed(now), &memory);
        assert!(same.forget.is_empty() && same.steps.is_empty(), "{same:?}");
        // n3 joins: the share of v2 is no longer this spoke's part of the region's copy.
        let joined = Observed { membership: "n1,n2,n3".into(), ..observed(now) };
        let p = plan(&assignments, &joined, &memory);
        assert_eq!(p.forget, [key("m", 2)]);
        assert_eq!(p.steps, [Step::Replicate { assignment: assignments[1].clone(), mode: Region }]);
        // Once replicated for the new membership it is Ready again; the whole version never moved.
        memory.forget(&key("m", 2));
        memory.replicated(key("m", 2), Region, "n1,n2,n3", 34, 0);
        let settled = plan(&assignments, &joined, &memory);
        assert!(settled.forget.is_empty() && settled.steps.is_empty(), "{settled:?}");
        let mut ready: Vec<&VersionKey> = memory.ready().collect();
        ready.sort();
        assert_eq!(ready, [&key("m", 1), &key("m", 2)]);
    }

    #[test]
    fn a_sidecar_plans_nothing_in_the_background_and_stays_one() {
        let now = Instant::now();
        let assignments = [a("m", 1, true, "region"), a("m", 2, false, "every-node")];
        let mut memory = Memory::default();
        memory.replicated(key("m", 1), Region, "", 100, 0);
        memory.failed(key("m", 2), now, 0.0);
        // No peer share, in a region whose spokes have one.
        let seen = Observed { sharer: false, ..observed(now) };
        let p = plan(&assignments, &seen, &memory);
        assert_eq!(p, Plan { sidecar: true, ..Plan::default() }, "nothing pinned, replicated or reported");
        memory.become_sidecar();
        assert_eq!((memory.ready().count(), memory.retry_at()), (0, None), "it holds nothing, nothing is due");
        // Those spokes restart (the region has no member with a share for a while): still one.
        let alone = Observed { sharer: false, membership: String::new(), ..observed(now) };
        assert!(plan(&assignments, &alone, &memory).sidecar);
    }

    #[test]
    fn a_spoke_without_a_share_in_a_region_that_never_had_one_holds_every_version() {
        let now = Instant::now();
        let assignments = [a("m", 1, true, "region")];
        let lone = Observed { sharer: false, membership: String::new(), ..observed(now) };
        let p = plan(&assignments, &lone, &Memory::default());
        assert!(!p.sidecar);
        assert_eq!(pinned(&p), [("m".into(), 1, Region)]);
        assert_eq!(replicated(&p), [key("m", 1)]);
    }

    #[test]
    fn auto_holds_the_whole_version_when_it_fits_and_a_share_otherwise() {
        let sized = |mib: u64, mode: &str| pb::Assignment {
            total_bytes: mib << 20,
            mode: mode.parse::<ReplicationMode>().unwrap().to_wire(),
            retained: true,
            ..Default::default()
        };
        let room = 19 << 20;
        assert_eq!(effective_mode(&sized(19, "auto"), room), EveryNode);
        assert_eq!(effective_mode(&sized(19, ""), room), EveryNode, "auto is the default");
        assert_eq!(effective_mode(&sized(20, "auto"), room), Region);
        assert_eq!(effective_mode(&sized(64, "every-node"), room), EveryNode, "asked for: whatever the room");
        assert_eq!(effective_mode(&sized(1, "region"), room), Region);
        // The plan pins and replicates each version the way it fits.
        let assignments = [
            pb::Assignment { dataset: "small".into(), version: 1, ..sized(16, "auto") },
            pb::Assignment { dataset: "large".into(), version: 1, ..sized(64, "auto") },
        ];
        let p = plan(&assignments, &Observed { room, ..observed(Instant::now()) }, &Memory::default());
        assert_eq!(pinned(&p), [("small".into(), 1, EveryNode), ("large".into(), 1, Region)]);
        let modes: Vec<ReplicationMode> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Replicate { mode, .. } | Step::ReportReady { mode, .. } => *mode,
            })
            .collect();
        assert_eq!(modes, [EveryNode, Region]);
    }
}
