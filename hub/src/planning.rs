//! Plans and deadlines at the hub (issue 19): reads what [`crate::rollout::plan`]'s rules need
//! from the store (rollout rows, their plans, the regions' budget schedules, manifests) and
//! applies them: a rollout's plan per region before it starts (`aq rollout --by`, `--dry-run`),
//! the ETA of every row under way (`aq status`), and the deadline watch ([`watch`]), which
//! raises the class of a row whose ETA passed its deadline. The rules are pure and tested
//! there; this module is the I/O around them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aqueduct_core::schedule::Schedule;
use aqueduct_proto::Digest;
use aqueduct_proto::domain::class::Class;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tracing::{info, warn};

use crate::leader::Leader;
use crate::live::Live;
use crate::live::budgets::schedule_of;
use crate::rollout::plan::{self, Crossing, Queued, RowPlan};
use crate::rollout::{RolloutKey, RolloutRecord, VersionId};
use crate::snapshot::blocking;
use crate::store::{MetaStore, StoreError};

/// A rollout's plan in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    pub region: String,
    pub crossing: Crossing,
    /// Bytes of the region's other rollouts under way that go first or share the link.
    pub ahead_bytes: u64,
    /// `None`: not within the planning horizon.
    pub eta: Option<Timestamp>,
    /// The budget in force now.
    pub budget: u64,
}

/// The plan of rolling `version` out to `regions` at `now`, in class `class`:
/// per region, what must cross its link (its distinct chunks the region does not hold) and
/// when it will have, behind the region's rollouts under way. `NotFound` for a version or a
/// region that does not exist.
pub fn plan_rollout(
    db: &dyn MetaStore,
    version: &VersionId,
    regions: &[String],
    class: Class,
    now: Timestamp,
) -> Result<Vec<RegionPlan>, StoreError> {
    let stored = db
        .version(&version.dataset, Some(version.version))?
        .ok_or_else(|| StoreError::NotFound { kind: "version", name: version.to_string() })?;
    let chunks = stored.manifest.distinct_chunks();
    drop(stored);
    let known: HashMap<String, (Schedule, TimeZone)> =
        db.regions()?.into_iter().map(|r| (r.name.clone(), schedule_of(&r))).collect();
    let rows = db.rollouts(None)?;
    let plans = db.plans()?;
    let queues = plan::queues(&rows, &plans);
    let mut manifests: HashMap<VersionId, Vec<Digest>> = HashMap::new();
    let mut out = Vec::with_capacity(regions.len());
    for region in regions {
        let (schedule, zone) =
            known.get(region).ok_or_else(|| StoreError::NotFound { kind: "region", name: region.clone() })?;
        let mut held = HashSet::new();
        for v in plan::held_versions(&rows, region) {
            if !manifests.contains_key(&v) {
                let digests = match db.version(&v.dataset, Some(v.version))? {
                    Some(s) => s.manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect(),
                    None => Vec::new(),
                };
                manifests.insert(v.clone(), digests);
            }
            held.extend(manifests[&v].iter().copied());
        }
        let crossing = plan::crossing(&chunks, &held);
        let me = Queued { key: RolloutKey::of(version.clone(), region.clone()), class, remaining: crossing.bytes };
        let queue = queues.get(region).map_or(&[][..], Vec::as_slice);
        let until_done = plan::bytes_until_done(queue, &me);
        out.push(RegionPlan {
            region: region.clone(),
            crossing,
            ahead_bytes: until_done - crossing.bytes,
            eta: plan::eta(until_done, now, schedule, zone),
            budget: schedule.in_force(now, zone).rate,
        });
    }
    Ok(out)
}

/// Every row's plan, and the ETA of every row under way (`None` inside: beyond the planning
/// horizon), at `now`.
pub struct Etas {
    pub rows: Vec<RolloutRecord>,
    pub plans: HashMap<RolloutKey, RowPlan>,
    pub etas: HashMap<RolloutKey, Option<Timestamp>>,
}

pub fn etas(db: &dyn MetaStore, now: Timestamp) -> Result<Etas, StoreError> {
    let schedules: HashMap<String, (Schedule, TimeZone)> =
        db.regions()?.into_iter().map(|r| (r.name.clone(), schedule_of(&r))).collect();
    let rows = db.rollouts(None)?;
    let plans = db.plans()?;
    let etas = plan::etas(&rows, &plans, &schedules, now);
    Ok(Etas { rows, plans, etas })
}

/// How often the deadline watch looks at the rows with a deadline.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The deadline watch: every `every`, until the hub stops, raises the class of each row under
/// way whose ETA passed its deadline ([`check`]), and wakes the watches so that the region
/// gets the new class.
/// Only the hub that leads ([`Leader`]) raises rows.
pub async fn watch(db: Arc<dyn MetaStore>, live: Live, every: Duration, leader: Leader) {
    loop {
        tokio::select! {
            _ = live.stopping.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !leader.is_leader() {
            continue;
        }
        match blocking(&db, |db| check(db, Timestamp::now())).await {
            Ok(raised) if !raised.is_empty() => live.changes.notify_waiters(),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the deadline watch could not read the rollouts; it tries again"),
        }
    }
}

/// Raises, one step, the class of every row under way whose ETA at `now` passed its deadline
/// ([`plan::raise`]): stored (the region's watch sends the new class), recorded with the row's
/// plan (`aq status` shows when) and in a tracing event. Returns the rows raised.
pub fn check(db: &dyn MetaStore, now: Timestamp) -> Result<Vec<RolloutKey>, StoreError> {
    let Etas { rows, plans, etas } = etas(db, now)?;
    let mut raised = Vec::new();
    for row in &rows {
        let key = row.key();
        let Some(eta) = etas.get(&key) else { continue };
        let deadline = plans.get(&key).and_then(|p| p.deadline_unix_ms);
        let Some(class) = plan::raise(row.class, *eta, deadline) else { continue };
        match db.set_rollout_class(&key, class) {
            Ok(before) => {
                db.mark_raised(&key, now.as_millisecond())?;
                info!(
                    rollout = %key,
                    from = %before,
                    to = %class,
                    eta_unix_ms = eta.map(|t| t.as_millisecond()),
                    deadline_unix_ms = deadline,
                    "rollout behind its deadline: class raised"
                );
                raised.push(key);
            }
            // Cancelled meanwhile.
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aqueduct_proto::{ChunkRef, ChunkerParams, FileEntry, Manifest, Phase, ReplicationMode};

    use super::*;
    use crate::rollout::RegionProgress;
    use crate::rollout::cutover::CutOver;
    use crate::store::meta::SqlStore;
    use crate::store::plans::PlanStore;
    use crate::store::{LifecycleStore, RegionRecord, RolloutUpdate, VersionCut};

    const KIB: u64 = 1 << 10;

    /// A version of `d` whose one file has a chunk of `len` bytes per name.
    fn version(store: &SqlStore, previous: u64, chunks: &[(&[u8], u32)]) {
        let mut offset = 0;
        let refs = chunks
            .iter()
            .map(|(name, len)| {
                let r = ChunkRef { digest: Digest::of(name), offset, length: *len };
                offset += u64::from(*len);
                r
            })
            .collect();
        let file = FileEntry {
            path: "model.bin".into(),
            object: "p/model.bin".into(),
            size: offset,
            mode: 0o644,
            mtime_unix_ms: 1,
            chunks: refs,
        };
        let manifest = Manifest::new("d".into(), 0, ChunkerParams::DEFAULT, vec![file]).unwrap();
        let cut =
            VersionCut { stamps: BTreeMap::new(), new_bytes: 0, bytes_read: 0, created_unix_ms: 1, skipped: vec![] };
        store.insert_version(previous, &manifest, &cut).unwrap();
    }

    fn store() -> SqlStore {
        let store = crate::store::tests::store_with_dataset();
        // v1: a, b, c (30 KiB); v2: a, b again and d (a duplicate chunk counted once); v3: e.
        let m = KIB as u32;
        version(&store, 0, &[(b"a", 10 * m), (b"b", 10 * m), (b"c", 10 * m)]);
        version(&store, 1, &[(b"a", 10 * m), (b"b", 10 * m), (b"d", 5 * m), (b"d", 5 * m)]);
        version(&store, 2, &[(b"e", 20 * m)]);
        for (name, rate) in [("eu", KIB), ("us", 2 * KIB)] {
            store.add_region(&RegionRecord { name: name.into(), rate, created_unix_ms: 1, schedule: None }).unwrap();
        }
        store
    }

    fn rollout(store: &SqlStore, version: u64, region: &str) {
        let id = VersionId::new("d", version);
        store
            .add_rollout(&id, &[region.to_string()], ReplicationMode::Auto, CutOver::AllReady, Class::Normal, 2)
            .unwrap();
    }

    fn ready(store: &SqlStore, version: u64, region: &str) {
        let progress = RegionProgress { phase: Phase::Ready, cached_bytes: 30 * KIB, reason: String::new(), rate: 0 };
        let key = RolloutKey::new("d", version, region);
        store.update_rollout(&RolloutUpdate { key, progress, updated_unix_ms: 3 }).unwrap();
    }

    /// The plan counts what the region lacks (chunks of a version Ready there are held; a
    /// chunk twice in the version crosses once), queues behind the region's rollouts under way,
    /// and says when under the region's budget.
    #[test]
    fn a_plan_counts_what_the_region_lacks_behind_what_is_under_way() {
        let store = store();
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let regions = ["eu".to_string(), "us".to_string()];
        let fresh = plan_rollout(&store, &VersionId::new("d", 2), &regions, Class::Normal, now).unwrap();
        assert_eq!(fresh[0].crossing, Crossing { version_bytes: 25 * KIB, held_bytes: 0, bytes: 25 * KIB });
        assert_eq!(fresh[0].eta, Some("2026-11-30T12:00:25Z".parse().unwrap()), "25 KiB at 1 KiB/s");
        assert_eq!(fresh[1].eta, Some("2026-11-30T12:00:12.5Z".parse().unwrap()), "25 KiB at 2 KiB/s");
        assert_eq!((fresh[0].budget, fresh[0].ahead_bytes), (KIB, 0));

        // v1 Ready in eu: v2 needs only d there.
        rollout(&store, 1, "eu");
        ready(&store, 1, "eu");
        let held = plan_rollout(&store, &VersionId::new("d", 2), &regions, Class::Normal, now).unwrap();
        assert_eq!(held[0].crossing, Crossing { version_bytes: 25 * KIB, held_bytes: 20 * KIB, bytes: 5 * KIB });
        assert_eq!(held[1].crossing.bytes, 25 * KIB, "us holds nothing");

        // v3 under way in eu (20 KiB left, same class): v2's 5 KiB share the link with 5 of them.
        rollout(&store, 3, "eu");
        let queued = plan_rollout(&store, &VersionId::new("d", 2), &regions, Class::Normal, now).unwrap();
        assert_eq!((queued[0].ahead_bytes, queued[0].eta), (5 * KIB, Some("2026-11-30T12:00:10Z".parse().unwrap())));
        // As urgent, nothing is ahead; as background, all of v3 is.
        assert_eq!(
            plan_rollout(&store, &VersionId::new("d", 2), &regions, Class::Urgent, now).unwrap()[0].ahead_bytes,
            0
        );
        assert_eq!(
            plan_rollout(&store, &VersionId::new("d", 2), &regions, Class::Background, now).unwrap()[0].ahead_bytes,
            20 * KIB
        );

        let missing = plan_rollout(&store, &VersionId::new("d", 9), &regions, Class::Normal, now).unwrap_err();
        assert!(matches!(missing, StoreError::NotFound { kind: "version", .. }), "{missing:?}");
        let nowhere =
            plan_rollout(&store, &VersionId::new("d", 2), &["mars".to_string()], Class::Normal, now).unwrap_err();
        assert!(matches!(nowhere, StoreError::NotFound { kind: "region", .. }), "{nowhere:?}");
    }

    /// The deadline watch's look: a row behind its deadline goes up a step per look, stored
    /// with when; one on time, without a deadline or Ready stays.
    #[test]
    fn rows_behind_their_deadline_go_up_a_class_per_look() {
        let store = store();
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let deadline = |ms: i64| RowPlan { deadline_unix_ms: Some(ms), ..Default::default() };
        let id = |v| VersionId::new("d", v);
        let bg = Class::Background;
        store.add_rollout(&id(1), &["eu".to_string()], ReplicationMode::Auto, CutOver::AllReady, bg, 2).unwrap();
        store.add_rollout(&id(2), &["eu".to_string()], ReplicationMode::Auto, CutOver::AllReady, bg, 2).unwrap();
        rollout(&store, 3, "us");
        // v1 (30 KiB at 1 KiB/s, sharing with v2's 25 KiB) needs 55 s: a deadline in 10 s is missed.
        let soon = now.as_millisecond() + 10_000;
        store.set_plans(&id(1), &[("eu".into(), deadline(soon))]).unwrap();
        // v2 has a day; v3 no deadline.
        store.set_plans(&id(2), &[("eu".into(), deadline(now.as_millisecond() + 86_400_000))]).unwrap();
        let class = |v, region: &str| {
            store.rollouts(None).unwrap().into_iter().find(|r| r.version == v && r.region == region).unwrap().class
        };
        assert_eq!(check(&store, now).unwrap(), [RolloutKey::new("d", 1, "eu")]);
        assert_eq!((class(1, "eu"), class(2, "eu"), class(3, "us")), (Class::Normal, bg, Class::Normal));
        assert_eq!(store.plans().unwrap()[&RolloutKey::new("d", 1, "eu")].raised_unix_ms, Some(now.as_millisecond()));
        // Still behind: urgent at the next look, and there it stays.
        assert_eq!(check(&store, now).unwrap().len(), 1);
        assert_eq!(class(1, "eu"), Class::Urgent);
        assert!(check(&store, now).unwrap().is_empty());
        // Ready rows are not looked at.
        ready(&store, 2, "eu");
        store.set_plans(&id(2), &[("eu".into(), deadline(1))]).unwrap();
        assert!(check(&store, now).unwrap().is_empty());
    }

    /// Status ETAs: each row under way, from its bytes left and the region's queue.
    #[test]
    fn rows_under_way_have_etas() {
        let store = store();
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        rollout(&store, 1, "eu");
        rollout(&store, 3, "us");
        store
            .set_plans(
                &VersionId::new("d", 3),
                &[("us".into(), RowPlan { deadline_unix_ms: Some(1), planned_bytes: 20 * KIB, raised_unix_ms: None })],
            )
            .unwrap();
        let e = etas(&store, now).unwrap();
        assert_eq!(e.etas[&RolloutKey::new("d", 1, "eu")], Some("2026-11-30T12:00:30Z".parse().unwrap()));
        assert_eq!(e.etas[&RolloutKey::new("d", 3, "us")], Some("2026-11-30T12:00:10Z".parse().unwrap()));
        assert_eq!(e.plans[&RolloutKey::new("d", 3, "us")].deadline_unix_ms, Some(1));
        ready(&store, 1, "eu");
        assert!(!etas(&store, now).unwrap().etas.contains_key(&RolloutKey::new("d", 1, "eu")), "Ready: no ETA");
    }
}
