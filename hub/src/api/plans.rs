//! The admin API's part of plans and deadlines: a rollout's deadline checked, its plan per
//! region computed ([`crate::planning`]) and shown, kept with the rows it started, and the ETA
//! and deadline of each row in `Status`.

use aqueduct_proto::domain::class::Class;
use aqueduct_proto::hub::v1 as pb;
use jiff::Timestamp;
use tonic::Status;
use tracing::info;

use super::AdminService;
use crate::planning::{self, RegionPlan};
use crate::rollout::VersionId;
use crate::rollout::plan::{RowPlan, Verdict};
use crate::snapshot::blocking;
use crate::store::StoreError;

/// A request's deadline: none for 0; refused when it is already past.
pub(super) fn deadline(unix_ms: i64, now: Timestamp) -> Result<Option<i64>, Status> {
    match unix_ms {
        0 => Ok(None),
        ms if ms <= now.as_millisecond() => {
            let at = Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string());
            Err(Status::invalid_argument(format!(
                "the deadline {at} is already past (the hub's clock says {now}); give a later time, e.g. --by +2h"
            )))
        }
        ms => Ok(Some(ms)),
    }
}

impl AdminService {
    /// The plan of rolling `version` out to `regions` now.
    pub(super) async fn plan(
        &self,
        version: &VersionId,
        regions: &[String],
        class: Class,
    ) -> Result<Vec<RegionPlan>, StoreError> {
        let (version, regions) = (version.clone(), regions.to_vec());
        blocking(&self.db, move |db| planning::plan_rollout(db, &version, &regions, class, Timestamp::now())).await
    }

    /// Keeps each region's plan with the row the rollout started (or named again).
    pub(super) async fn keep_plans(
        &self,
        version: &VersionId,
        plans: &[RegionPlan],
        deadline: Option<i64>,
    ) -> Result<(), StoreError> {
        let rows: Vec<(String, RowPlan)> = plans
            .iter()
            .map(|p| {
                let plan =
                    RowPlan { deadline_unix_ms: deadline, planned_bytes: p.crossing.bytes, raised_unix_ms: None };
                (p.region.clone(), plan)
            })
            .collect();
        for p in plans {
            info!(
                region = p.region,
                bytes = p.crossing.bytes,
                held_bytes = p.crossing.held_bytes,
                ahead_bytes = p.ahead_bytes,
                eta_unix_ms = p.eta.map(|t| t.as_millisecond()),
                deadline_unix_ms = deadline,
                "rollout planned"
            );
        }
        let version = version.clone();
        blocking(&self.db, move |db| db.set_plans(&version, &rows)).await
    }
}

pub(super) fn plan_to_pb(p: &RegionPlan, deadline: Option<i64>) -> pb::RegionPlan {
    pb::RegionPlan {
        region: p.region.clone(),
        version_bytes: p.crossing.version_bytes,
        held_bytes: p.crossing.held_bytes,
        bytes: p.crossing.bytes,
        ahead_bytes: p.ahead_bytes,
        eta_unix_ms: p.eta.map_or(0, |t| t.as_millisecond()),
        budget_bytes_per_sec: p.budget,
        deadline_unix_ms: deadline.unwrap_or(0),
        meets_deadline: deadline.is_some_and(|d| Verdict::of(p.eta, d).meets()),
    }
}

/// Fills a status row's ETA, deadline and last raise from the plans.
pub(super) fn fill_row(row: &mut pb::StatusRow, etas: &planning::Etas) {
    let key = crate::rollout::RolloutKey::new(row.dataset.clone(), row.version, row.region.clone());
    if let Some(plan) = etas.plans.get(&key) {
        row.deadline_unix_ms = plan.deadline_unix_ms.unwrap_or(0);
        row.class_raised_unix_ms = plan.raised_unix_ms.unwrap_or(0);
    }
    match etas.etas.get(&key) {
        Some(Some(t)) => row.eta_unix_ms = t.as_millisecond(),
        Some(None) => row.eta_beyond_horizon = true,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_past_deadline_is_refused_and_none_is_none() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        assert_eq!(deadline(0, now).unwrap(), None);
        let later = now.as_millisecond() + 1_000;
        assert_eq!(deadline(later, now).unwrap(), Some(later));
        let err = deadline(now.as_millisecond() - 60_000, now).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("2026-11-30T11:59:00Z is already past"), "{}", err.message());
    }
}
