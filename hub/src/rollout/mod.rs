//! The rollout lifecycle: the rules by which a version moves through a region, as pure
//! functions over the rollout's rows. No I/O here; the live state (`live`), the store and the
//! two APIs apply these rules and nothing else decides them.
//!
//! A rollout asks regions to hold `dataset@version`; each (dataset, version, region) is one
//! row ([`RolloutRecord`], named by a [`RolloutKey`]), which moves `Pending -> Transferring ->
//! Ready`, or to `Failed` ([`Phase`]). The rules, in the order a version meets them:
//! - which of a region's live spokes count for its readiness ([`counted`], [`sharers`]), and
//!   how their reports fold into the region's row ([`fold`]);
//! - what a row becomes when the fold changes ([`after_report`]: Ready once, Ready for good)
//!   and when the version's source changed under it ([`after_source_changed`]: it fails where
//!   it is not whole yet);
//! - when a version becomes a region's *active* one ([`activated_at`], [`active_versions`]:
//!   remembered from when each region was added and first Ready, never recomputed from the
//!   phases of the moment);
//! - what a region is assigned ([`assignments_of`]);
//! - what a region serves, and how cut-over policies, promote, rollback and cancel move it
//!   ([`cutover`]);
//! - what the hub retains, and why, and what a removal may take ([`retention`]);
//! - what a rollout must move over a region's link, and when it will have moved it ([`plan`]).
//!
//! The file is some 600 lines long, half of it the unit tests of these rules.

pub mod cutover;
pub mod plan;
pub mod retention;

use std::collections::{HashMap, HashSet};
use std::fmt;

use aqueduct_proto::domain::class::Class;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Phase, ReplicationMode};

use cutover::{CutOver, ServingRecord};

/// A version of a dataset: `dataset@vN`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId {
    pub dataset: String,
    pub version: u64,
}

impl VersionId {
    pub fn new(dataset: impl Into<String>, version: u64) -> Self {
        Self { dataset: dataset.into(), version }
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@v{}", self.dataset, self.version)
    }
}

/// One row of a rollout: a version of a dataset in one region. Ordered by dataset, version,
/// region (the order `aq status` lists rows in).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RolloutKey {
    pub dataset: String,
    pub version: u64,
    pub region: String,
}

impl RolloutKey {
    pub fn new(dataset: impl Into<String>, version: u64, region: impl Into<String>) -> Self {
        Self { dataset: dataset.into(), version, region: region.into() }
    }

    /// `version` in `region`.
    pub fn of(version: VersionId, region: impl Into<String>) -> Self {
        Self { dataset: version.dataset, version: version.version, region: region.into() }
    }
}

impl fmt::Display for RolloutKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@v{} to {}", self.dataset, self.version, self.region)
    }
}

/// Where a region stands with one version of a dataset (a rollout's row, as stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    pub dataset: String,
    pub version: u64,
    pub region: String,
    pub total_bytes: u64,
    pub cached_bytes: u64,
    pub phase: Phase,
    pub reason: String,
    /// Achieved rate, bytes per second, as last reported.
    pub rate: u64,
    pub budget: u64,
    /// Bytes the hub relayed to the region for this version.
    pub relayed_bytes: u64,
    /// The version's root.
    pub root: Digest,
    pub updated_unix_ms: i64,
    pub mode: ReplicationMode,
    /// When the region was asked to hold the version (0: before schema 3 kept it).
    pub added_unix_ms: i64,
    /// When the region first held the version whole and verified (Ready); never again unset.
    /// What the cut-over and a changed source go by ([`active_versions`],
    /// [`after_source_changed`]).
    pub ready_unix_ms: Option<i64>,
    /// When the regions start serving the version ([`cutover::switches`]).
    pub cut_over: CutOver,
    /// Promoted (or rolled back to) while not Ready: the region serves it once Ready.
    pub promote_pending: bool,
    /// Which rollouts get the region's link first.
    pub class: Class,
}

/// A tag: a name for one version of a dataset (`stable`, `canary`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRecord {
    pub dataset: String,
    pub name: String,
    pub version: u64,
    pub updated_unix_ms: i64,
}

impl TagRecord {
    pub fn to_pb(&self) -> pb::Tag {
        pb::Tag {
            dataset: self.dataset.clone(),
            name: self.name.clone(),
            version: self.version,
            updated_unix_ms: self.updated_unix_ms,
        }
    }
}

impl RolloutRecord {
    pub fn key(&self) -> RolloutKey {
        RolloutKey::new(self.dataset.clone(), self.version, self.region.clone())
    }

    /// What the lifecycle rules change of this row.
    pub fn state(&self) -> RowState {
        RowState {
            phase: self.phase,
            cached_bytes: self.cached_bytes,
            reason: self.reason.clone(),
            rate: self.rate,
            ready_unix_ms: self.ready_unix_ms,
        }
    }
}

/// Where one spoke stands with one version, as it last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReport {
    pub phase: Phase,
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
    pub phase: Phase,
    pub cached_bytes: u64,
    pub reason: String,
    /// The sum of the members' rates.
    pub rate: u64,
}

/// The part of a region's row that reports and failures change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowState {
    pub phase: Phase,
    pub cached_bytes: u64,
    pub reason: String,
    pub rate: u64,
    /// When the region first held the version whole (see [`RolloutRecord::ready_unix_ms`]).
    pub ready_unix_ms: Option<i64>,
}

/// The live members that count for a region's readiness, from (node, peer address) pairs:
/// those with a peer share (an address); in a region where none has one and none had one
/// (`shared`: since the hub started), all of them (lone spokes, each holding every version
/// itself). A spoke without a share in a region of shares (a sidecar) holds no part of the
/// region's copy, so it never holds the region back nor fails it, even while the spokes with
/// shares are away (the spokes keep to the same rule).
pub fn counted<'a>(members: impl Iterator<Item = (&'a str, &'a str)> + Clone, shared: bool) -> Vec<&'a str> {
    let shares = shared || members.clone().any(|(_, address)| !address.is_empty());
    members.filter(|(_, address)| !shares || !address.is_empty()).map(|(node, _)| node).collect()
}

/// The members with a peer share, sorted and comma-separated: what a share in region mode is
/// computed for (the spokes' `Peers::membership` says the same).
pub fn sharers(members: &[(&str, &str)]) -> String {
    let mut names: Vec<&str> =
        members.iter().filter(|(_, address)| !address.is_empty()).map(|(node, _)| *node).collect();
    names.sort_unstable();
    names.join(",")
}

/// A region's row from the reports of its counted live members (`None` for one that has not
/// reported in its current watch); `None` when no member counts (every spoke gone: the row
/// stays as it was). Failed when one failed (with each one's reason), Ready once every one
/// reported Ready, Transferring once one reported anything past Pending; its cached bytes are
/// the least any of them holds (the sum of the shares in region mode). A share counts as Ready
/// only if it was computed for the region's current `membership`: when a spoke comes or goes,
/// the others' shares change, and the region is Ready again once they hold their new ones.
pub fn fold(counted: &[(&str, Option<&NodeReport>)], membership: &str) -> Option<RegionProgress> {
    if counted.is_empty() {
        return None;
    }
    let rate = counted.iter().filter_map(|(_, r)| r.map(|r| r.rate)).fold(0u64, u64::saturating_add);
    let shares = counted.iter().any(|(_, r)| r.is_some_and(|r| r.share));
    let held = counted.iter().map(|(_, r)| r.map_or(0, |r| r.cached_bytes));
    let cached_bytes = if shares { held.fold(0u64, u64::saturating_add) } else { held.min().unwrap_or(0) };
    let failed: Vec<String> = counted
        .iter()
        .filter_map(|(n, r)| r.filter(|r| r.phase == Phase::Failed).map(|r| format!("{n}: {}", r.reason)))
        .collect();
    let phase = if !failed.is_empty() {
        Phase::Failed
    } else if counted
        .iter()
        .all(|(_, r)| r.is_some_and(|r| r.phase == Phase::Ready && (!r.share || r.membership == membership)))
    {
        Phase::Ready
    } else if counted.iter().any(|(_, r)| r.is_some_and(|r| r.phase != Phase::Pending)) {
        Phase::Transferring
    } else {
        Phase::Pending
    };
    Some(RegionProgress { phase, cached_bytes, reason: failed.join("; "), rate })
}

/// A region's row once its members' reports fold to `progress` at `now`. Ready once, Ready
/// for good: a row that was Ready keeps its phase and cached bytes (a spoke that joins the
/// region later, or fails, shows per node, not in the region's row) and only its rate
/// follows; the first Ready is remembered.
pub fn after_report(row: &RowState, progress: &RegionProgress, now_unix_ms: i64) -> RowState {
    match row.ready_unix_ms {
        Some(_) => RowState { phase: Phase::Ready, reason: String::new(), rate: progress.rate, ..row.clone() },
        None => RowState {
            phase: progress.phase,
            cached_bytes: progress.cached_bytes,
            reason: progress.reason.clone(),
            rate: progress.rate,
            ready_unix_ms: (progress.phase == Phase::Ready).then_some(now_unix_ms),
        },
    }
}

/// A region's row once the version's source no longer holds its bytes (found by the relay as
/// it read a chunk): the version fails, with `reason`, where the region never held it whole;
/// `None` where it did (Ready once): that region keeps it and serves it from its spokes.
pub fn after_source_changed(row: &RowState, reason: &str) -> Option<RowState> {
    match row.ready_unix_ms {
        Some(_) => None,
        None => Some(RowState { phase: Phase::Failed, reason: reason.to_string(), rate: 0, ..row.clone() }),
    }
}

/// What `region` must hold, from the rollout rows: its versions, which of them it serves
/// (`serving`, see [`cutover`]), which are Ready in it (ever: Ready stays Ready) and which the
/// hub retains (`retained`: the spokes keep their chunks).
pub fn assignments_of(
    rollouts: Vec<RolloutRecord>,
    serving: &[ServingRecord],
    retained: &HashSet<VersionId>,
    region: &str,
) -> Vec<pb::Assignment> {
    let served: HashSet<(&str, u64)> =
        serving.iter().filter(|s| s.region == region).map(|s| (s.dataset.as_str(), s.version)).collect();
    rollouts
        .into_iter()
        .filter(|r| r.region == region)
        .map(|r| pb::Assignment {
            active: served.contains(&(r.dataset.as_str(), r.version)),
            retained: retained.contains(&VersionId::new(r.dataset.clone(), r.version)),
            ready: r.ready_unix_ms.is_some(),
            generation: r.added_unix_ms,
            class: r.class.to_wire(),
            dataset: r.dataset,
            version: r.version,
            total_bytes: r.total_bytes,
            root: r.root.0.to_vec(),
            mode: r.mode.to_wire(),
        })
        .collect()
}

/// The rows a region serves under the `all-ready` cut-over alone, recomputed from the rows:
/// what a hub database from before what a region serves was recorded (schema 5) starts from.
/// Per dataset and region, the newest version that is *activated*
/// (see [`activated_at`]) and became Ready in that region.
///
/// Activation is remembered, not recomputed from the phases of the moment: it follows from
/// when each row was added and first became Ready, which the store keeps. So a spoke that joins
/// a region later, a region added to the rollout later, or a source that changed after the
/// region held the version whole never takes back a version a region serves. A version that
/// failed (or is not Ready yet) in a region its rollout named never becomes active, so every
/// region stays on the version before it.
pub fn active_versions(rollouts: &[RolloutRecord]) -> HashSet<RolloutKey> {
    let mut rows: HashMap<(&str, u64), Vec<&RolloutRecord>> = HashMap::new();
    for r in rollouts {
        rows.entry((&r.dataset, r.version)).or_default().push(r);
    }
    let activated: HashSet<(&str, u64)> =
        rows.iter().filter(|(_, rows)| activated_at(rows).is_some()).map(|(k, _)| *k).collect();
    let mut newest: HashMap<(&str, &str), u64> = HashMap::new();
    for r in
        rollouts.iter().filter(|r| r.ready_unix_ms.is_some() && activated.contains(&(r.dataset.as_str(), r.version)))
    {
        let v = newest.entry((&r.dataset, &r.region)).or_insert(r.version);
        *v = (*v).max(r.version);
    }
    newest.into_iter().map(|((d, region), v)| RolloutKey::new(d, v, region)).collect()
}

/// What each region serves, recomputed from the rows by the `all-ready` rule alone
/// ([`active_versions`]), since `now`, with no previous version: where a hub database from
/// before schema 5 starts from.
pub fn serving_from_rows(rollouts: &[RolloutRecord], now: i64) -> Vec<ServingRecord> {
    let mut serving: Vec<ServingRecord> = active_versions(rollouts)
        .into_iter()
        .map(|k| ServingRecord {
            dataset: k.dataset,
            region: k.region,
            version: k.version,
            since_unix_ms: now,
            previous: 0,
        })
        .collect();
    serving.sort_by(|a, b| (&a.dataset, &a.region).cmp(&(&b.dataset, &b.region)));
    serving
}

/// When a version (its rows, one per region) became active: the first moment at which every
/// region its rollout named by then had been Ready (the `all-ready` cut-over). `None` while
/// some region named is not Ready yet, or failed. Regions added after that moment do not take
/// it back; they serve the version once Ready themselves.
pub fn activated_at(rows: &[&RolloutRecord]) -> Option<i64> {
    let mut candidates: Vec<i64> = rows.iter().filter_map(|r| r.ready_unix_ms).collect();
    candidates.sort_unstable();
    candidates.into_iter().find(|&t| {
        rows.iter().filter(|r| r.added_unix_ms <= t).all(|r| r.ready_unix_ms.is_some_and(|ready| ready <= t))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row added at 0 and, if `phase` is Ready, Ready since 1.
    pub(crate) fn row(dataset: &str, version: u64, region: &str, phase: Phase) -> RolloutRecord {
        RolloutRecord {
            added_unix_ms: 0,
            ready_unix_ms: (phase == Phase::Ready).then_some(1),
            dataset: dataset.into(),
            version,
            region: region.into(),
            phase,
            total_bytes: 0,
            cached_bytes: 0,
            reason: String::new(),
            rate: 0,
            budget: 0,
            updated_unix_ms: 0,
            mode: Default::default(),
            relayed_bytes: 0,
            root: Digest([0; 32]),
            cut_over: CutOver::AllReady,
            promote_pending: false,
            class: Class::Normal,
        }
    }

    use Phase::{Failed, Pending, Ready, Transferring};

    #[test]
    fn a_version_is_active_once_ready_in_every_region_of_its_rollout() {
        let active = |rows: &[RolloutRecord]| {
            let mut a: Vec<_> = active_versions(rows).into_iter().collect();
            a.sort();
            a
        };
        let t = |d: &str, v, r: &str| RolloutKey::new(d, v, r);
        let mut rows = vec![row("m", 1, "eu", Ready), row("m", 1, "us", Transferring)];
        assert!(active(&rows).is_empty(), "active before every region was ready");
        rows[1] = row("m", 1, "us", Ready);
        assert_eq!(active(&rows), [t("m", 1, "eu"), t("m", 1, "us")]);
        // v2 ready in one region only: both stay on v1, in one step later.
        rows.extend([row("m", 2, "eu", Ready), row("m", 2, "us", Transferring), row("x", 4, "eu", Ready)]);
        assert_eq!(active(&rows), [t("m", 1, "eu"), t("m", 1, "us"), t("x", 4, "eu")]);
        rows[3] = row("m", 2, "us", Ready);
        assert_eq!(active(&rows), [t("m", 2, "eu"), t("m", 2, "us"), t("x", 4, "eu")]);
        // A failed v3 never becomes active anywhere.
        rows.extend([row("m", 3, "eu", Ready), row("m", 3, "us", Failed)]);
        assert_eq!(active(&rows)[..2], [t("m", 2, "eu"), t("m", 2, "us")]);
    }

    #[test]
    fn a_version_is_ready_in_a_region_before_it_is_active_everywhere() {
        let rows = vec![row("m", 1, "eu", Ready), row("m", 1, "us", Transferring), row("m", 2, "eu", Pending)];
        let flags = |region: &str| {
            assignments_of(rows.clone(), &serving_from_rows(&rows, 0), &HashSet::new(), region)
                .iter()
                .map(|a| (a.version, a.ready, a.active))
                .collect::<Vec<_>>()
        };
        assert_eq!(flags("eu"), [(1, true, false), (2, false, false)], "Ready in eu waits for no other region");
        assert_eq!(flags("us"), [(1, false, false)]);
        let mut all = rows.clone();
        all[1] = row("m", 1, "us", Ready);
        let serving = serving_from_rows(&all, 0);
        let eu: Vec<_> = assignments_of(all, &serving, &HashSet::new(), "eu")
            .iter()
            .map(|a| (a.version, a.ready, a.active))
            .collect();
        assert_eq!(eu, [(1, true, true), (2, false, false)]);
    }

    /// An assignment carries what the region needs of its row: the version's size, root and
    /// mode, and nothing of the other regions' rows.
    #[test]
    fn an_assignment_carries_the_rows_size_root_and_mode() {
        let mut eu = row("m", 1, "eu", Transferring);
        eu.total_bytes = 300;
        eu.root = Digest([7; 32]);
        eu.mode = ReplicationMode::Region;
        let mut us = row("m", 1, "us", Ready);
        us.mode = ReplicationMode::EveryNode;
        let a = assignments_of(vec![eu, us], &[], &HashSet::new(), "eu");
        assert_eq!(a.len(), 1, "another region's row was assigned: {a:?}");
        assert_eq!((a[0].dataset.as_str(), a[0].version, a[0].total_bytes), ("m", 1, 300));
        assert_eq!((a[0].root.as_slice(), a[0].mode()), (&[7u8; 32][..], pb::ReplicationMode::Region));
        assert!(assignments_of(Vec::new(), &[], &HashSet::new(), "eu").is_empty());
    }

    /// A row with its times: added at `added`, Ready since `ready`, in `phase` now.
    pub(super) fn timed(version: u64, region: &str, phase: Phase, added: i64, ready: Option<i64>) -> RolloutRecord {
        RolloutRecord { added_unix_ms: added, ready_unix_ms: ready, ..row("m", version, region, phase) }
    }

    /// Activation is remembered: a region added to the rollout later, a spoke that joined (the
    /// row's phase moved on) or a version that failed later where it was not whole do not
    /// take back what a region serves; the late region serves it once Ready itself.
    #[test]
    fn activation_is_remembered_not_recomputed() {
        let active = |rows: &[RolloutRecord]| {
            let mut a: Vec<_> = active_versions(rows).into_iter().map(|k| (k.version, k.region)).collect();
            a.sort();
            a
        };
        let v = |version: u64, region: &str| (version, region.to_string());
        // v1 in eu and us, Ready in both by 20: active in both since 20.
        let mut rows = vec![timed(1, "eu", Ready, 0, Some(10)), timed(1, "us", Ready, 0, Some(20))];
        let refs: Vec<&RolloutRecord> = rows.iter().collect();
        assert_eq!(activated_at(&refs), Some(20));
        assert_eq!(active(&rows), [v(1, "eu"), v(1, "us")]);
        // ap is asked for v1 at 30 and fails (the source changed): eu and us keep serving v1.
        rows.push(timed(1, "ap", Failed, 30, None));
        assert_eq!(active(&rows), [v(1, "eu"), v(1, "us")]);
        // v2 was Ready in eu at 40 and then eu's phase moved on (a late spoke's report): still
        // Ready since 40. us never got there and failed: v2 is active nowhere.
        rows.extend([timed(2, "eu", Transferring, 35, Some(40)), timed(2, "us", Failed, 35, None)]);
        assert_eq!(active(&rows), [v(1, "eu"), v(1, "us")], "a version failed in a region it named became active");
        // v3 for eu only, Ready at 60: active in eu; us was added at 70 and is Ready at 80.
        rows.extend([timed(3, "eu", Ready, 50, Some(60)), timed(3, "us", Transferring, 70, None)]);
        assert_eq!(active(&rows), [v(1, "us"), v(3, "eu")], "a region added later took the version back");
        rows.pop();
        rows.push(timed(3, "us", Ready, 70, Some(80)));
        assert_eq!(active(&rows), [v(3, "eu"), v(3, "us")]);
        // A region added while the others were still on their way is waited for.
        let rows = [timed(4, "eu", Ready, 0, Some(10)), timed(4, "us", Ready, 5, Some(20))];
        let refs: Vec<&RolloutRecord> = rows.iter().collect();
        assert_eq!(activated_at(&refs), Some(20));
        let rows = [timed(4, "eu", Ready, 0, Some(10)), timed(4, "us", Pending, 5, None)];
        let refs: Vec<&RolloutRecord> = rows.iter().collect();
        assert_eq!(activated_at(&refs), None);
    }

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

    #[test]
    fn a_region_without_members_keeps_its_row_and_sums_do_not_overflow() {
        assert_eq!(fold(&[], ""), None);
        let big = NodeReport { share: true, rate: u64::MAX, ..report(Transferring, u64::MAX) };
        let row = fold(&[("a", Some(&big)), ("b", Some(&big))], "a,b").unwrap();
        assert_eq!((row.cached_bytes, row.rate), (u64::MAX, u64::MAX));
    }

    /// The fold, phase by phase: Pending until someone reports past it, Transferring until
    /// every counted member is Ready, Failed as soon as one failed (naming each), the least any
    /// holds without shares and the sum with them.
    #[test]
    fn the_fold_takes_the_slowest_member_and_fails_with_each_reason() {
        let (a, b) = (report(Pending, 0), report(Pending, 0));
        let row = fold(&[("a", Some(&a)), ("b", None)], "").unwrap();
        assert_eq!((row.phase, row.cached_bytes, row.rate), (Pending, 0, 10));
        let a = report(Transferring, 40);
        assert_eq!(fold(&[("a", Some(&a)), ("b", Some(&b))], "").unwrap().phase, Transferring);
        let (a, b) = (report(Ready, 100), report(Transferring, 60));
        let row = fold(&[("a", Some(&a)), ("b", Some(&b))], "").unwrap();
        assert_eq!((row.phase, row.cached_bytes, row.rate), (Transferring, 60, 20), "the least any holds");
        let b = report(Ready, 100);
        assert_eq!(fold(&[("a", Some(&a)), ("b", Some(&b))], "").unwrap().phase, Ready);
        let broken = |reason: &str| NodeReport { reason: reason.into(), ..report(Failed, 0) };
        let (x, y) = (broken("disk full"), broken("source changed"));
        let row = fold(&[("a", Some(&a)), ("x", Some(&x)), ("y", Some(&y))], "").unwrap();
        assert_eq!((row.phase, row.reason.as_str()), (Failed, "x: disk full; y: source changed"));
        // Shares add up, and count as Ready only for the membership they were computed for.
        let share = |cached, membership: &str| NodeReport {
            share: true,
            membership: membership.into(),
            ..report(Ready, cached)
        };
        let (a, b) = (share(60, "a,b"), share(40, "a,b"));
        let row = fold(&[("a", Some(&a)), ("b", Some(&b))], "a,b").unwrap();
        assert_eq!((row.phase, row.cached_bytes), (Ready, 100));
        assert_eq!(fold(&[("a", Some(&a)), ("b", Some(&b))], "a,b,c").unwrap().phase, Transferring);
    }

    /// What a share is computed for: the members with a peer address, sorted, whatever order
    /// they come in (the spokes compute the same string). Who counts is tested with the
    /// members (`live::members`).
    #[test]
    fn a_share_is_for_the_sorted_members_with_an_address() {
        assert_eq!(sharers(&[("c", "h:3"), ("a", "h:1"), ("b", "")]), "a,c");
        assert_eq!(sharers(&[("b", "")]), "");
        assert_eq!(counted([("a", "h:1"), ("b", "")].into_iter(), false), ["a"]);
    }

    fn state(phase: Phase, cached: u64, ready: Option<i64>) -> RowState {
        RowState { phase, cached_bytes: cached, reason: String::new(), rate: 0, ready_unix_ms: ready }
    }

    fn progress(phase: Phase, cached: u64) -> RegionProgress {
        let reason = if phase == Failed { "a: cache full".to_string() } else { String::new() };
        RegionProgress { phase, cached_bytes: cached, reason, rate: 5 }
    }

    /// A row follows its fold until it is Ready, and from then on is Ready with what it held
    /// then, whatever the fold says (a late spoke, a failed one); the first Ready is kept.
    #[test]
    fn ready_once_is_ready_for_good() {
        let row = after_report(&state(Pending, 0, None), &progress(Transferring, 10), 30);
        assert_eq!(row, RowState { rate: 5, ..state(Transferring, 10, None) });
        let row = after_report(&row, &progress(Failed, 0), 31);
        assert_eq!((row.phase, row.reason.as_str(), row.ready_unix_ms), (Failed, "a: cache full", None));
        let row = after_report(&row, &progress(Ready, 300), 40);
        assert_eq!(row, RowState { rate: 5, ..state(Ready, 300, Some(40)) });
        for later in [progress(Transferring, 10), progress(Failed, 0), progress(Pending, 0), progress(Ready, 500)] {
            let after = after_report(&row, &later, 50);
            assert_eq!(after, RowState { rate: 5, ..state(Ready, 300, Some(40)) }, "after {later:?}");
        }
    }

    /// A changed source fails the version where the region never held it whole (whatever its
    /// phase) and leaves the regions that did.
    #[test]
    fn a_changed_source_fails_the_version_only_where_it_was_never_whole() {
        for phase in [Pending, Transferring, Failed] {
            let failed = after_source_changed(&RowState { rate: 9, ..state(phase, 7, None) }, "source changed: p/a");
            assert_eq!(
                failed,
                Some(RowState { reason: "source changed: p/a".into(), ..state(Failed, 7, None) }),
                "from {phase}"
            );
        }
        assert_eq!(after_source_changed(&state(Ready, 300, Some(40)), "source changed"), None);
        // Ready once and moved on since (a late spoke's report): still kept.
        assert_eq!(after_source_changed(&state(Transferring, 300, Some(40)), "source changed"), None);
    }

    #[test]
    fn keys_name_what_they_stand_for() {
        let key = RolloutKey::of(VersionId::new("llama", 3), "eu");
        assert_eq!(key, RolloutKey::new("llama", 3, "eu"));
        assert_eq!(
            (key.to_string(), VersionId::new("llama", 3).to_string()),
            ("llama@v3 to eu".into(), "llama@v3".into())
        );
        let mut keys = [RolloutKey::new("m", 2, "eu"), RolloutKey::new("m", 10, "ap"), RolloutKey::new("a", 9, "us")];
        keys.sort();
        assert_eq!(
            keys.map(|k| k.to_string()),
            ["a@v9 to us", "m@v2 to eu", "m@v10 to ap"],
            "by dataset, version, region"
        );
    }
}
