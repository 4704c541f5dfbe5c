//! Rollout plans ([`PlanStore`]): what the hub keeps of each rollout row's plan beside the row
//! (its deadline from `aq rollout --by`, the bytes the plan said must cross the link, when the
//! hub last raised its class because it fell behind), in a table of their own keyed like the
//! rows. A plan is written whenever a rollout names the row, and read joined with the rows, so
//! that a row cancelled or removed leaves nothing that a later rollout of it would pick up
//! (its plan is written anew). Its SQL (both engines) is here too.

use std::collections::HashMap;

use super::StoreError;
use super::meta::SqlStore;
use super::sql::args;
use crate::rollout::plan::RowPlan;
use crate::rollout::{RolloutKey, VersionId};

/// The plans of a hub's rollout rows.
pub trait PlanStore {
    /// Records the plan of each row `(region, plan)` of `version` (replacing what a plan of it
    /// said before, its last raise included).
    fn set_plans(&self, version: &VersionId, plans: &[(String, RowPlan)]) -> Result<(), StoreError>;
    /// The plan of every row that has one.
    fn plans(&self) -> Result<HashMap<RolloutKey, RowPlan>, StoreError>;
    /// Records that the hub raised the row's class at `now_unix_ms` (the class itself is the
    /// row's, changed by [`super::LifecycleStore`]).
    fn mark_raised(&self, key: &RolloutKey, now_unix_ms: i64) -> Result<(), StoreError>;
}

impl PlanStore for SqlStore {
    fn set_plans(&self, version: &VersionId, plans: &[(String, RowPlan)]) -> Result<(), StoreError> {
        self.db.write(|tx| {
            for (region, plan) in plans {
                tx.execute(
                    "INSERT INTO rollout_plans (dataset, version, region, deadline_ms, planned_bytes, raised_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (dataset, version, region) DO UPDATE SET deadline_ms = excluded.deadline_ms,
                         planned_bytes = excluded.planned_bytes, raised_ms = excluded.raised_ms",
                    args![
                        &version.dataset,
                        version.version,
                        region,
                        plan.deadline_unix_ms,
                        plan.planned_bytes,
                        plan.raised_unix_ms
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn plans(&self) -> Result<HashMap<RolloutKey, RowPlan>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT p.dataset, p.version, p.region, p.deadline_ms, p.planned_bytes, p.raised_ms
                 FROM rollout_plans p
                 JOIN rollouts o ON o.dataset = p.dataset AND o.version = p.version AND o.region = p.region",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok((
                    RolloutKey::new(r.get::<String>(0)?, r.get::<u64>(1)?, r.get::<String>(2)?),
                    RowPlan {
                        deadline_unix_ms: r.get(3)?,
                        planned_bytes: r.get::<i64>(4)?.max(0) as u64,
                        raised_unix_ms: r.get(5)?,
                    },
                ))
            })
            .collect()
    }

    fn mark_raised(&self, key: &RolloutKey, now_unix_ms: i64) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "UPDATE rollout_plans SET raised_ms = ?4 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                args![&key.dataset, key.version, &key.region, now_unix_ms],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest, ReplicationMode};

    use super::*;
    use crate::rollout::cutover::CutOver;
    use crate::store::tests::on_both_engines;
    use crate::store::{LifecycleStore, MetaStore, RegionRecord, VersionCut, meta::SqlStore};

    fn store_with_rollout() -> SqlStore {
        let store = crate::store::tests::store_with_dataset();
        let file = FileEntry {
            path: "a.bin".into(),
            object: "p/a.bin".into(),
            size: 3,
            mode: 0o644,
            mtime_unix_ms: 5,
            chunks: vec![ChunkRef { digest: Digest::of(b"abc"), offset: 0, length: 3 }],
        };
        let manifest = Manifest::new("d".into(), 0, ChunkerParams::DEFAULT, vec![file]).unwrap();
        let cut = VersionCut {
            stamps: BTreeMap::new(),
            new_bytes: 3,
            bytes_read: 3,
            created_unix_ms: 3,
            skipped: Vec::new(),
        };
        store.insert_version(0, &manifest, &cut).unwrap();
        for region in ["eu", "us"] {
            store
                .add_region(&RegionRecord { name: region.into(), rate: 100, created_unix_ms: 4, schedule: None })
                .unwrap();
        }
        let regions = ["eu".to_string(), "us".to_string()];
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &regions,
                ReplicationMode::Auto,
                CutOver::AllReady,
                Default::default(),
                5,
            )
            .unwrap();
        store
    }

    on_both_engines! {
        /// Plans round-trip, are replaced by a later rollout of the row, record a raise, and go
        /// with their row.
        fn plans_round_trip_and_go_with_their_rows() {
            let store = store_with_rollout();
            let v = VersionId::new("d", 1);
            let plan = RowPlan { deadline_unix_ms: Some(9_000), planned_bytes: 3, raised_unix_ms: None };
            store.set_plans(&v, &[("eu".into(), plan.clone()), ("us".into(), RowPlan::default())]).unwrap();
            let (eu, us) = (RolloutKey::of(v.clone(), "eu"), RolloutKey::of(v.clone(), "us"));
            let plans = store.plans().unwrap();
            assert_eq!((plans[&eu].clone(), plans[&us].clone()), (plan.clone(), RowPlan::default()));
            store.mark_raised(&eu, 7_000).unwrap();
            assert_eq!(store.plans().unwrap()[&eu].raised_unix_ms, Some(7_000));
            // Rolled out again without a deadline: the plan is the new one, raise and all.
            store.set_plans(&v, &[("eu".into(), RowPlan { planned_bytes: 1, ..Default::default() })]).unwrap();
            assert_eq!(store.plans().unwrap()[&eu], RowPlan { planned_bytes: 1, ..Default::default() });
            // Cancelled in us: its plan is no longer read.
            store.cancel_rollout(&v, &["us".to_string()], 8).unwrap();
            assert_eq!(store.plans().unwrap().keys().collect::<Vec<_>>(), [&eu]);
        }
    }
}
