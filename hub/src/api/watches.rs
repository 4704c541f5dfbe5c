//! Watched datasets in the admin API: `UpdateDataset`'s `watch`/`unwatch` (validated here:
//! an interval under the hub's floor, a cron expression or time zone that does not parse, a
//! region that does not exist are refused with why), each listed dataset's watch with its last
//! and next check, and the [`Checks`] the trigger task runs: the snapshot and the rollout of
//! `aq snapshot` and `aq rollout`, the same code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aqueduct_proto::domain::class::Class;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{ReplicationMode, validate_name};
use tonic::Status;

use super::AdminService;
use crate::error::invalid;
use crate::rollout::cutover::CutOver;
use crate::snapshot::{self, blocking, now_unix_ms};
use crate::store::watches::{AutoRollout, WatchConfig, WatchRecord};
use crate::store::{MetaStore, StoreError};
use crate::triggers::watch::{self, Cadence, Snapshot};
use crate::triggers::{Checks, Triggers, cadence_of};

/// What the admin API knows of the trigger task.
#[derive(Clone)]
pub(crate) struct Watching {
    pub triggers: Triggers,
    /// The shortest interval a watch may have.
    pub floor: Duration,
    /// Whether the task runs (`[triggers] enabled`): without it, no check is ever due.
    pub on: bool,
}

impl Default for Watching {
    fn default() -> Self {
        Self { triggers: Triggers::default(), floor: watch::DEFAULT_FLOOR, on: false }
    }
}

/// A change to a dataset's watch.
pub(crate) enum WatchChange {
    Set(WatchConfig),
    Remove,
}

impl AdminService {
    /// The trigger task this API wakes when a watch changes, the floor it holds intervals to,
    /// and whether it runs.
    pub fn with_triggers(mut self, triggers: Triggers, floor: Duration, on: bool) -> Self {
        self.watching = Watching { triggers, floor, on };
        self
    }
}

impl Watching {
    /// The watch change a request asks for, validated; `None`: none.
    pub(crate) async fn change(
        &self,
        db: &Arc<dyn MetaStore>,
        req: &pb::UpdateDatasetRequest,
    ) -> Result<Option<WatchChange>, Status> {
        let w = match (&req.watch, req.unwatch) {
            (Some(_), true) => {
                return Err(Status::invalid_argument("a request sets a watch or removes it (--watch off), not both"));
            }
            (None, true) => return Ok(Some(WatchChange::Remove)),
            (None, false) => return Ok(None),
            (Some(w), false) => w,
        };
        let cadence = Cadence::from_parts(w.every_ms, &w.cron, &w.time_zone)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        watch::check_floor(&cadence, self.floor).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut regions: Vec<String> = Vec::new();
        for region in &w.rollout_regions {
            validate_name("region", region).map_err(invalid)?;
            if !regions.contains(region) {
                regions.push(region.clone());
            }
        }
        if !regions.is_empty() {
            let known = blocking(db, |db| db.regions()).await?;
            if let Some(missing) = regions.iter().find(|r| !known.iter().any(|k| &k.name == *r)) {
                return Err(Status::not_found(format!(
                    "region {missing:?} does not exist; add it with `aq region add {missing} --rate RATE`"
                )));
            }
        }
        let mode = ReplicationMode::from_wire(w.rollout_mode).map_err(invalid)?;
        let cut_over = CutOver::from_wire(w.rollout_cut_over).ok_or_else(|| {
            Status::invalid_argument(format!(
                "cut-over {} is not one this hub knows: use all-ready, per-region or manual",
                w.rollout_cut_over
            ))
        })?;
        let class = Class::from_wire(w.rollout_class).ok_or_else(|| {
            Status::invalid_argument(format!(
                "class {} is not one this hub knows: use urgent, normal or background",
                w.rollout_class
            ))
        })?;
        let (every_ms, cron, time_zone) = match &cadence {
            Cadence::Every(d) => (u64::try_from(d.as_millis()).unwrap_or(u64::MAX), String::new(), String::new()),
            Cadence::Cron(c) => (0, c.text().to_string(), c.zone_name().to_string()),
        };
        Ok(Some(WatchChange::Set(WatchConfig {
            dataset: req.name.clone(),
            every_ms,
            cron,
            time_zone,
            rollout: AutoRollout { regions, mode, cut_over, class },
        })))
    }

    /// Puts each watched dataset's watch, with its last and next check, in `datasets`.
    pub(crate) fn fill(&self, datasets: &mut [pb::Dataset], watches: Vec<WatchRecord>, now_ms: i64) {
        let mut by_name: HashMap<String, WatchRecord> =
            watches.into_iter().map(|w| (w.config.dataset.clone(), w)).collect();
        for d in datasets {
            if let Some(w) = by_name.remove(&d.name) {
                d.watch = Some(self.to_pb(w, now_ms));
            }
        }
    }

    fn to_pb(&self, w: WatchRecord, now_ms: i64) -> pb::DatasetWatch {
        let next = match self.on {
            true => cadence_of(&w, self.floor).and_then(|c| watch::next_check(&c, w.last_check_unix_ms, now_ms)),
            false => None,
        };
        let c = w.config;
        pb::DatasetWatch {
            every_ms: c.every_ms,
            cron: c.cron,
            time_zone: c.time_zone,
            rollout_regions: c.rollout.regions,
            rollout_mode: c.rollout.mode.to_wire(),
            rollout_cut_over: c.rollout.cut_over.to_wire(),
            rollout_class: c.rollout.class.to_wire(),
            last_check_unix_ms: w.last_check_unix_ms.unwrap_or(0),
            last_result: w.last_result,
            last_failed: w.last_failed,
            next_check_unix_ms: next.unwrap_or(0),
        }
    }
}

/// Writes a watch change (inside `UpdateDataset`'s store call).
pub(crate) fn apply(db: &dyn MetaStore, dataset: &str, change: Option<WatchChange>) -> Result<(), StoreError> {
    match change {
        None => Ok(()),
        Some(WatchChange::Set(config)) => db.set_watch(&config, now_unix_ms()),
        Some(WatchChange::Remove) => db.remove_watch(dataset).map(|_| ()),
    }
}

/// The trigger task's snapshot and rollout: the admin API's own.
#[async_trait::async_trait]
impl Checks for AdminService {
    async fn snapshot(&self, dataset: &str) -> Result<Snapshot, String> {
        let (dataset, source, _guard) = self.begin_snapshot(dataset).await.map_err(|s| s.message().to_string())?;
        let result = snapshot::snapshot(&self.db, &dataset, source, self.snapshot, Arc::default()).await;
        let (outcome, _) = crate::signing::signed(&self.db, &self.signer, result)
            .await
            .map_err(|e| Status::from(e).message().to_string())?;
        let number = outcome.record.number;
        Ok(if outcome.unchanged { Snapshot::Unchanged { latest: number } } else { Snapshot::Cut { version: number } })
    }

    async fn rollout(&self, dataset: &str, version: u64, rollout: &AutoRollout) -> Result<Vec<String>, String> {
        // Fields the request gains later take their defaults, as from an old `aq`; no deadline.
        let req = pb::RolloutRequest {
            dataset: dataset.to_string(),
            version,
            regions: rollout.regions.clone(),
            mode: rollout.mode.to_wire(),
            cut_over: rollout.cut_over.to_wire(),
            class: rollout.class.to_wire(),
            ..Default::default()
        };
        self.start_rollout(req).await.map(|r| r.regions).map_err(|s| s.message().to_string())
    }
}
