//! What a region serves of a dataset, and the rules that move it: the cut-over of a rollout
//! ([`switches`], by its [`CutOver`] policy), [`promote`], [`rollback`] and [`cancel`]. Pure
//! functions over the rows of a version and the regions' [`ServingRecord`]s; the store applies
//! what they say inside the transaction that changes the rows.
//!
//! What a region serves is remembered, not recomputed: it changes only on an event (a row
//! first Ready, a version's last region Ready, a promote, a rollback, a cancelled row), and
//! each change keeps the version served before it for a rollback. So a rollback holds: the
//! version rolled back from stays Ready in the region and is never served again by itself.

use aqueduct_proto::Phase;
use aqueduct_proto::hub::v1 as pb;
use std::collections::{BTreeSet, HashMap, HashSet};

use super::{RolloutRecord, activated_at};

pub use aqueduct_proto::domain::cut_over::CutOver;

/// What a region serves of a dataset, since when, and what it served before (0: nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingRecord {
    pub dataset: String,
    pub region: String,
    pub version: u64,
    pub since_unix_ms: i64,
    pub previous: u64,
}

impl ServingRecord {
    pub fn to_pb(&self) -> pb::Serving {
        pb::Serving {
            dataset: self.dataset.clone(),
            region: self.region.clone(),
            version: self.version,
            since_unix_ms: self.since_unix_ms,
            previous: self.previous,
        }
    }
}

/// A region of `dataset` serving `version` from `now`, after `current` (None: nothing yet).
/// `None` when it serves that version already.
pub fn serve(
    current: Option<&ServingRecord>,
    dataset: &str,
    region: &str,
    version: u64,
    now: i64,
) -> Option<ServingRecord> {
    match current {
        Some(c) if c.version == version => None,
        _ => Some(ServingRecord {
            dataset: dataset.to_string(),
            region: region.to_string(),
            version,
            since_unix_ms: now,
            previous: current.map_or(0, |c| c.version),
        }),
    }
}

/// The regions that switch to a version when its rows change from `before` to `after` (the
/// rows of one version, one per region; a row may come, go, or become Ready), given what each
/// region serves now (`serving`: region to version). Sorted by region.
///
/// - A row promoted while not Ready (`promote_pending`) switches when it becomes Ready,
///   whatever the versions' order (a rollback to a version that had to cross the link again).
/// - `per-region`: a row switches when it becomes Ready, if its version is newer than what the
///   region serves.
/// - `all-ready`: when the version becomes activated ([`activated_at`]: every region its
///   rollout named by then is Ready), every Ready row switches (if newer); a row that becomes
///   Ready after that (a region added later) switches then.
/// - `manual`: only [`promote`].
pub fn switches(before: &[&RolloutRecord], after: &[&RolloutRecord], serving: &HashMap<String, u64>) -> Vec<String> {
    let was_ready: HashSet<&str> =
        before.iter().filter(|r| r.ready_unix_ms.is_some()).map(|r| r.region.as_str()).collect();
    let activated_before = activated_at(before).is_some();
    let activated_now = !activated_before && activated_at(after).is_some();
    let newer = |r: &RolloutRecord| serving.get(&r.region).is_none_or(|&v| v < r.version);
    let mut regions = BTreeSet::new();
    for r in after.iter().filter(|r| r.ready_unix_ms.is_some()) {
        let newly_ready = !was_ready.contains(r.region.as_str());
        let switch = if r.promote_pending {
            newly_ready
        } else {
            match r.cut_over {
                CutOver::PerRegion => newly_ready && newer(r),
                CutOver::AllReady => newer(r) && (activated_now || (newly_ready && activated_before)),
                CutOver::Manual => false,
            }
        };
        if switch && serving.get(&r.region) != Some(&r.version) {
            regions.insert(r.region.clone());
        }
    }
    regions.into_iter().collect()
}

/// What a promote or a rollback does in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The region serves the version at once: it holds it whole (no byte over the link).
    Switch,
    /// The region serves it once its row is Ready (the row is marked `promote_pending`).
    Pending { note: String },
    /// The version must cross the link again: its row is reset (or added) to Pending and
    /// marked `promote_pending`, and the region serves it once Ready.
    Rollout { note: String },
    /// The region serves it already.
    Already,
}

/// One region's part of a promote or a rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStep {
    pub region: String,
    pub from: u64,
    pub to: u64,
    pub step: Step,
}

impl RegionStep {
    pub fn to_pb(&self) -> pb::RegionCutOver {
        let (switched, note) = match &self.step {
            Step::Switch => (true, String::new()),
            Step::Already => (true, format!("serves v{} already", self.to)),
            Step::Pending { note } | Step::Rollout { note } => (false, note.clone()),
        };
        pb::RegionCutOver { region: self.region.clone(), from: self.from, to: self.to, switched, note }
    }
}

/// Why a promote, rollback or cancel is refused; nothing changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Refused(pub String);

/// What `Promote(dataset@version, regions)` does in each region (`regions` empty: every
/// region the version is rolled out to), from the version's rows and what the regions serve.
/// Refused as a whole when a named region has no row of the version, or the row failed.
pub fn promote(
    dataset: &str,
    version: u64,
    regions: &[String],
    rows: &[&RolloutRecord],
    serving: &HashMap<String, u64>,
) -> Result<Vec<RegionStep>, Refused> {
    let regions: Vec<String> =
        if regions.is_empty() { rows.iter().map(|r| r.region.clone()).collect() } else { regions.to_vec() };
    if regions.is_empty() {
        return Err(Refused(format!(
            "{dataset}@v{version} is not rolled out to any region; roll it out first (aq rollout {dataset}@v{version} --to REGION)"
        )));
    }
    let mut steps = Vec::new();
    for region in regions {
        let Some(row) = rows.iter().find(|r| r.region == region) else {
            return Err(Refused(format!(
                "{dataset}@v{version} is not rolled out to {region}; roll it out first (aq rollout {dataset}@v{version} --to {region})"
            )));
        };
        let from = serving.get(&region).copied().unwrap_or(0);
        let step = if from == version {
            Step::Already
        } else if row.ready_unix_ms.is_some() {
            Step::Switch
        } else if row.phase == Phase::Failed {
            return Err(Refused(format!(
                "{dataset}@v{version} failed in {region} ({}); roll it out again (aq rollout {dataset}@v{version} --to {region})",
                row.reason
            )));
        } else {
            Step::Pending { note: format!("v{version} is not Ready in {region} yet: served once Ready") }
        };
        steps.push(RegionStep { region, from, to: version, step });
    }
    Ok(steps)
}

/// What `Rollback(dataset, to, regions)` does in each region (`regions` empty: every region
/// serving the dataset; `to` None: each region's previous version). A region switches at once
/// when the version is Ready there and retained (its chunks were kept: no byte over the
/// link); otherwise the version is rolled out to it again and served once Ready. Refused as a
/// whole when a region serves nothing, has no previous version, or the version is gone.
pub fn rollback(
    dataset: &str,
    to: Option<u64>,
    regions: &[String],
    rows: &[&RolloutRecord],
    serving: &[ServingRecord],
    exists: &HashSet<u64>,
    retained: &HashSet<u64>,
) -> Result<Vec<RegionStep>, Refused> {
    let regions: Vec<String> =
        if regions.is_empty() { serving.iter().map(|s| s.region.clone()).collect() } else { regions.to_vec() };
    if regions.is_empty() {
        return Err(Refused(format!("no region serves {dataset}: there is nothing to roll back")));
    }
    let mut steps = Vec::new();
    for region in regions {
        let Some(current) = serving.iter().find(|s| s.region == region) else {
            return Err(Refused(format!("{region} serves no version of {dataset}: there is nothing to roll back")));
        };
        let target = match to.unwrap_or(current.previous) {
            0 => {
                return Err(Refused(format!(
                    "{region} served no version of {dataset} before v{}; name one with --to vN (aq versions {dataset})",
                    current.version
                )));
            }
            n => n,
        };
        if !exists.contains(&target) {
            return Err(Refused(format!(
                "{dataset}@v{target} no longer exists (removed); name another with --to vN (aq versions {dataset})"
            )));
        }
        let row = rows.iter().find(|r| r.region == region && r.version == target);
        let step = if current.version == target {
            Step::Already
        } else if row.is_some_and(|r| r.ready_unix_ms.is_some()) && retained.contains(&target) {
            Step::Switch
        } else {
            let why = match row {
                None => format!("v{target} was never rolled out to {region}"),
                Some(r) if r.ready_unix_ms.is_none() => format!("v{target} never became Ready in {region}"),
                Some(_) => format!("v{target} was no longer retained, so {region} may have dropped its chunks"),
            };
            Step::Rollout { note: format!("{why}: rolling it out again; served once Ready") }
        };
        steps.push(RegionStep { region, from: current.version, to: target, step });
    }
    Ok(steps)
}

/// The regions a rollout of `dataset@version` is cancelled in (`regions` empty: every region
/// it is rolled out to). Refused where a region serves the version: it must roll back first.
pub fn cancel(
    dataset: &str,
    version: u64,
    regions: &[String],
    rows: &[&RolloutRecord],
    serving: &HashMap<String, u64>,
) -> Result<Vec<String>, Refused> {
    let regions: Vec<String> =
        if regions.is_empty() { rows.iter().map(|r| r.region.clone()).collect() } else { regions.to_vec() };
    if regions.is_empty() {
        return Err(Refused(format!("{dataset}@v{version} is not rolled out to any region")));
    }
    for region in &regions {
        if !rows.iter().any(|r| &r.region == region) {
            return Err(Refused(format!("{dataset}@v{version} is not rolled out to {region}")));
        }
        if serving.get(region) == Some(&version) {
            return Err(Refused(format!(
                "{region} serves {dataset}@v{version}: roll it back first (aq rollback {dataset} --region {region})"
            )));
        }
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::super::tests::timed;
    use super::*;
    use Phase::{Failed, Pending, Ready, Transferring};

    fn with(mut r: RolloutRecord, cut_over: CutOver) -> RolloutRecord {
        r.cut_over = cut_over;
        r
    }

    fn serving(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(r, v)| (r.to_string(), *v)).collect()
    }

    fn refs(rows: &[RolloutRecord]) -> Vec<&RolloutRecord> {
        rows.iter().collect()
    }

    #[test]
    fn all_ready_switches_every_region_when_the_last_one_is_ready() {
        let before = [timed(2, "eu", Ready, 0, Some(10)), timed(2, "us", Transferring, 0, None)];
        let after = [timed(2, "eu", Ready, 0, Some(10)), timed(2, "us", Ready, 0, Some(20))];
        let on_v1 = serving(&[("eu", 1), ("us", 1)]);
        assert_eq!(switches(&refs(&before[..1]), &refs(&before), &on_v1), Vec::<String>::new(), "us is not Ready");
        assert_eq!(switches(&refs(&before), &refs(&after), &on_v1), ["eu", "us"]);
        // A region added later (at 30) switches when it is Ready itself, alone.
        let mut later = after.to_vec();
        later.push(timed(2, "ap", Ready, 30, Some(40)));
        let mut pending = after.to_vec();
        pending.push(timed(2, "ap", Pending, 30, None));
        let now = serving(&[("eu", 2), ("us", 2), ("ap", 1)]);
        assert_eq!(switches(&refs(&pending), &refs(&later), &now), ["ap"]);
        // Never backwards: a region serving a newer version stays on it.
        assert_eq!(switches(&refs(&before), &refs(&after), &serving(&[("eu", 3), ("us", 1)])), ["us"]);
    }

    #[test]
    fn per_region_switches_each_region_when_it_is_ready_and_manual_never() {
        let per = |phase, ready| with(timed(2, "eu", phase, 0, ready), CutOver::PerRegion);
        let us = with(timed(2, "us", Pending, 0, None), CutOver::PerRegion);
        let before = [per(Transferring, None), us.clone()];
        let after = [per(Ready, Some(10)), us];
        assert_eq!(switches(&refs(&before), &refs(&after), &serving(&[("eu", 1)])), ["eu"]);
        // A report of a row Ready already is no event.
        assert_eq!(switches(&refs(&after), &refs(&after), &serving(&[("eu", 1)])), Vec::<String>::new());
        let man = |phase, ready| with(timed(2, "eu", phase, 0, ready), CutOver::Manual);
        assert_eq!(
            switches(&refs(&[man(Pending, None)]), &refs(&[man(Ready, Some(5))]), &HashMap::new()),
            Vec::<String>::new()
        );
        // Promoted while not Ready: switches once Ready, even to an older version.
        let mut promoted = man(Ready, Some(5));
        promoted.promote_pending = true;
        assert_eq!(switches(&refs(&[man(Pending, None)]), &refs(&[promoted]), &serving(&[("eu", 3)])), ["eu"]);
    }

    /// A rollback holds: once a region went back from v2, nothing about v2's rows (a late
    /// report, another region's readiness) makes it serve v2 again by itself.
    #[test]
    fn a_rolled_back_version_is_not_served_again_by_itself() {
        let rows = [timed(2, "eu", Ready, 0, Some(10)), timed(2, "us", Ready, 0, Some(20))];
        let rolled_back = serving(&[("eu", 1), ("us", 2)]);
        assert_eq!(switches(&refs(&rows), &refs(&rows), &rolled_back), Vec::<String>::new());
        // Cancelling a row of another region is no activation either: v2 was activated.
        assert_eq!(switches(&refs(&rows), &refs(&rows[..1]), &rolled_back), Vec::<String>::new());
    }

    #[test]
    fn cancelling_the_region_that_held_a_version_back_activates_it_elsewhere() {
        let rows = [timed(2, "eu", Ready, 0, Some(10)), timed(2, "us", Failed, 0, None)];
        assert_eq!(switches(&refs(&rows), &refs(&rows[..1]), &serving(&[("eu", 1)])), ["eu"]);
    }

    #[test]
    fn serving_keeps_what_came_before() {
        let v1 = serve(None, "m", "eu", 1, 10).unwrap();
        assert_eq!((v1.version, v1.previous, v1.since_unix_ms), (1, 0, 10));
        let v2 = serve(Some(&v1), "m", "eu", 2, 20).unwrap();
        assert_eq!((v2.version, v2.previous), (2, 1));
        assert_eq!(serve(Some(&v2), "m", "eu", 2, 30), None, "the same version is no change");
    }

    #[test]
    fn promote_switches_where_ready_waits_where_not_and_refuses_the_rest() {
        let rows = [timed(3, "eu", Ready, 0, Some(10)), timed(3, "us", Transferring, 0, None)];
        let now = serving(&[("eu", 2), ("us", 2)]);
        let steps = promote("m", 3, &[], &refs(&rows), &now).unwrap();
        assert_eq!(steps[0].step, Step::Switch);
        assert!(matches!(&steps[1].step, Step::Pending { note } if note.contains("not Ready in us")));
        assert_eq!((steps[1].from, steps[1].to), (2, 3));
        let err = promote("m", 3, &["ap".into()], &refs(&rows), &now).unwrap_err();
        assert!(err.0.contains("not rolled out to ap") && err.0.contains("aq rollout m@v3 --to ap"), "{err}");
        let failed = [RolloutRecord { reason: "disk full".into(), ..timed(3, "eu", Failed, 0, None) }];
        let err = promote("m", 3, &[], &refs(&failed), &now).unwrap_err();
        assert!(err.0.contains("failed in eu (disk full)"), "{err}");
        assert_eq!(promote("m", 3, &[], &refs(&rows), &serving(&[("eu", 3)])).unwrap()[0].step, Step::Already);
        assert!(promote("m", 3, &[], &[], &now).is_err());
    }

    fn served(region: &str, version: u64, previous: u64) -> ServingRecord {
        ServingRecord { dataset: "m".into(), region: region.into(), version, since_unix_ms: 0, previous }
    }

    #[test]
    fn rollback_switches_to_a_retained_ready_version_and_rolls_out_the_rest_again() {
        let rows = [
            timed(1, "eu", Ready, 0, Some(5)),
            timed(1, "us", Ready, 0, Some(5)),
            timed(2, "eu", Ready, 0, Some(10)),
            timed(2, "us", Ready, 0, Some(10)),
        ];
        let now = [served("eu", 2, 1), served("us", 2, 1)];
        let all: HashSet<u64> = [1, 2].into();
        let steps = rollback("m", None, &[], &refs(&rows), &now, &all, &all).unwrap();
        assert_eq!(
            steps.iter().map(|s| (s.from, s.to, s.step.clone())).collect::<Vec<_>>(),
            [(2, 1, Step::Switch), (2, 1, Step::Switch)]
        );
        // v1 no longer retained: rolled out again, and said so.
        let steps = rollback("m", None, &["eu".into()], &refs(&rows), &now, &all, &[2].into()).unwrap();
        assert!(matches!(&steps[0].step, Step::Rollout { note } if note.contains("no longer retained")), "{steps:?}");
        // Never rolled out to the region.
        let steps = rollback("m", None, &["us".into()], &refs(&rows[2..]), &now, &all, &all).unwrap();
        assert!(matches!(&steps[0].step, Step::Rollout { note } if note.contains("never rolled out to us")));
        // Refused: nothing before, removed, not served.
        let first = [served("eu", 1, 0)];
        assert!(rollback("m", None, &[], &refs(&rows), &first, &all, &all).unwrap_err().0.contains("--to vN"));
        assert!(
            rollback("m", Some(1), &[], &refs(&rows), &now, &[2].into(), &all)
                .unwrap_err()
                .0
                .contains("no longer exists")
        );
        assert!(
            rollback("m", None, &["ap".into()], &refs(&rows), &now, &all, &all)
                .unwrap_err()
                .0
                .contains("ap serves no version")
        );
        assert!(rollback("m", None, &[], &refs(&rows), &[], &all, &all).is_err());
        assert_eq!(rollback("m", Some(2), &[], &refs(&rows), &now, &all, &all).unwrap()[0].step, Step::Already);
    }

    #[test]
    fn cancel_is_refused_where_the_version_is_served() {
        let rows = [timed(2, "eu", Ready, 0, Some(10)), timed(2, "us", Transferring, 0, None)];
        let err = cancel("m", 2, &[], &refs(&rows), &serving(&[("eu", 2)])).unwrap_err();
        assert!(err.0.contains("eu serves m@v2") && err.0.contains("aq rollback m --region eu"), "{err}");
        assert_eq!(cancel("m", 2, &["us".into()], &refs(&rows), &serving(&[("eu", 2)])).unwrap(), ["us"]);
        assert!(cancel("m", 2, &["ap".into()], &refs(&rows), &HashMap::new()).is_err());
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(512))]

        /// Replaying rows as events (each added at its time, Ready at its time or never)
        /// through [`switches`] under `all-ready` gives what the old recomputation gave
        /// ([`super::super::active_versions`]): the recorded cut-over changed no region's
        /// version for a hub that never promotes or rolls back.
        #[test]
        fn fuzz_recorded_all_ready_cut_over_matches_the_recomputed_one(
            rows in proptest::collection::vec((1u64..5, 0usize..3, 0i64..50, proptest::option::of(1i64..50)), 1..14),
        ) {
            let regions = ["ap", "eu", "us"];
            // One row per (version, region); distinct times (the index breaks ties).
            let mut seen = HashSet::new();
            let mut all: Vec<RolloutRecord> = Vec::new();
            for (i, (version, region, added, ready)) in rows.into_iter().enumerate() {
                if !seen.insert((version, region)) {
                    continue;
                }
                let added = added * 100 + i as i64;
                let ready = ready.map(|d| added + d * 100);
                let phase = if ready.is_some() { Ready } else { Transferring };
                all.push(timed(version, regions[region], phase, added, ready));
            }
            let mut events: Vec<(i64, usize, bool)> = Vec::new();
            for (i, r) in all.iter().enumerate() {
                events.push((r.added_unix_ms, i, false));
                if let Some(t) = r.ready_unix_ms {
                    events.push((t, i, true));
                }
            }
            events.sort();
            let mut now: Vec<Option<RolloutRecord>> = vec![None; all.len()];
            let mut serving: HashMap<String, u64> = HashMap::new();
            for (_, i, ready) in events {
                let version = all[i].version;
                let of_version = |rows: &[Option<RolloutRecord>]| -> Vec<RolloutRecord> {
                    rows.iter().flatten().filter(|r| r.version == version).cloned().collect()
                };
                let before = of_version(&now);
                now[i] = Some(if ready {
                    all[i].clone()
                } else {
                    RolloutRecord { ready_unix_ms: None, phase: Transferring, ..all[i].clone() }
                });
                let after = of_version(&now);
                for region in switches(&refs(&before), &refs(&after), &serving) {
                    serving.insert(region, version);
                }
            }
            let recomputed: HashMap<String, u64> =
                super::super::active_versions(&all).into_iter().map(|k| (k.region, k.version)).collect();
            prop_assert_eq!(serving, recomputed);
        }
    }
}
