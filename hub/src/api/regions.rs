//! The admin calls that change a region's link budget: a flat rate or a weekly schedule
//! ([`aqueduct_core::schedule`]), checked, stored, and applied at once to the relay and the
//! region's watches; and how a region is shown, with the budget in force and its next change.

use aqueduct_core::schedule::{self, Schedule};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::validate_name;
use tonic::Status;
use tracing::{Span, info};

use super::AdminService;
use crate::error::invalid;
use crate::live::budgets::budget_at;
use crate::snapshot::blocking;
use crate::store::{RegionRecord, RegionSchedule, StoreError};

impl AdminService {
    /// Gives a region a flat budget or a weekly schedule, checked; applies it at once.
    pub(super) async fn update_region_call(&self, req: pb::UpdateRegionRequest) -> Result<pb::Region, Status> {
        let pb::UpdateRegionRequest { name, rate_bytes_per_sec: rate, schedule, time_zone } = req;
        Span::current().record("region", name.as_str()).record("rate", rate).record("schedule", schedule.as_str());
        validate_name("region", &name).map_err(invalid)?;
        let change = match (rate, schedule.trim()) {
            (0, "") => {
                return Err(Status::invalid_argument(
                    "give a region a link budget above 0 bytes per second (--rate), or a schedule (--schedule)",
                ));
            }
            (_, text) if rate > 0 && !text.is_empty() => {
                return Err(Status::invalid_argument(
                    "give a region either a flat budget (--rate) or a schedule (--schedule), not both: a schedule's last rule is the rate for all other times",
                ));
            }
            (rate, "") => Err(rate),
            (_, text) => {
                let time_zone = if time_zone.is_empty() { "UTC".to_string() } else { time_zone };
                let parsed = Schedule::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))?;
                schedule::time_zone(&time_zone).map_err(|e| Status::invalid_argument(e.to_string()))?;
                Ok(RegionSchedule { text: parsed.to_string(), time_zone })
            }
        };
        let owned = name.clone();
        blocking(&self.db, move |db| match &change {
            Err(rate) => db.set_region_rate(&owned, *rate),
            Ok(schedule) => db.set_region_schedule(&owned, schedule),
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => Status::not_found(format!(
                "region {name:?} does not exist; `aq region list` shows the known ones, `aq region add {name} --rate RATE` adds it"
            )),
            other => other.into(),
        })?;
        let region = blocking(&self.db, |db| db.regions())
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Status::not_found(format!("region {name:?} was removed meanwhile")))?;
        // The relay's streams use the new rate from their next chunk; the region's spokes get
        // it with the assignments the watches push now.
        let now = jiff::Timestamp::now();
        let budget = budget_at(&region, now);
        self.live.budgets.set(&name, budget.rate, budget.next.map(|(at, _)| at.duration_since(now).unsigned_abs()));
        self.live.changes.notify_waiters();
        info!(rate_bytes_per_sec = budget.rate, "region's link budget changed");
        let members = self.live.members.members(&region.name);
        Ok(region_to_pb(region, members))
    }
}

/// A region as the admin API shows it: with the budget in force now and its next change.
pub(super) fn region_to_pb(r: RegionRecord, members: Vec<pb::Member>) -> pb::Region {
    let budget = budget_at(&r, jiff::Timestamp::now());
    let (schedule, time_zone) = r.schedule.map_or((String::new(), String::new()), |s| (s.text, s.time_zone));
    pb::Region {
        name: r.name,
        rate_bytes_per_sec: r.rate,
        created_unix_ms: r.created_unix_ms,
        members,
        schedule,
        time_zone,
        budget_now_bytes_per_sec: budget.rate,
        next_change_unix_ms: budget.next.map_or(0, |(at, _)| at.as_millisecond()),
        next_budget_bytes_per_sec: budget.next.map_or(0, |(_, rate)| rate),
    }
}
