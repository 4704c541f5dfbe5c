//! Every region's link budget as the relay applies it: one [`Budget`] per region, shared by
//! every `FetchChunks` stream of the region, with its rate re-read from the database every
//! [`BUDGET_RECHECK`] (and at once when its schedule's window changes) and set at once when an
//! admin changes it. What rate is in force for a region, flat or scheduled, is [`budget_at`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aqueduct_core::budget::Budget;
use aqueduct_core::schedule::{InForce, Schedule, time_zone};
use jiff::tz::TimeZone;

use crate::store::RegionRecord;

/// The budget a region has at `now`: its schedule's window in force (and what comes next), or
/// its flat rate. A stored schedule that no longer reads (it was checked when set) falls back
/// to the flat rate.
pub fn budget_at(region: &RegionRecord, now: jiff::Timestamp) -> InForce {
    let (schedule, zone) = schedule_of(region);
    schedule.in_force(now, &zone)
}

/// A region's budget as a schedule in its time zone: its weekly schedule, or its flat rate at
/// all times (also when a stored schedule no longer reads).
pub fn schedule_of(region: &RegionRecord) -> (Schedule, TimeZone) {
    let flat = || (Schedule::flat(region.rate), TimeZone::UTC);
    let Some(schedule) = &region.schedule else { return flat() };
    match (Schedule::parse(&schedule.text), time_zone(&schedule.time_zone)) {
        (Ok(s), Ok(zone)) => (s, zone),
        _ => flat(),
    }
}

/// How long a region's budget is used before its rate is read again.
pub const BUDGET_RECHECK: Duration = Duration::from_secs(5);

/// Every region's budget, and when its rate was last read from the database. Shared by the
/// relay (which takes from them) and the admin API (which changes a rate at once).
#[derive(Default)]
pub struct Budgets {
    regions: Mutex<HashMap<String, (Arc<Budget>, Instant)>>,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Budget>, Instant)>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The region's budget, if its rate was read less than [`BUDGET_RECHECK`] ago and its
    /// window has not changed since.
    pub fn fresh(&self, region: &str) -> Option<Arc<Budget>> {
        self.lock().get(region).filter(|(_, stale)| Instant::now() < *stale).map(|(b, _)| b.clone())
    }

    /// Sets the region's rate (as just read or changed) and returns its budget: streams that
    /// hold it use the new rate from their next chunk. `until`: how long the rate holds (the
    /// schedule's next change), if less than [`BUDGET_RECHECK`].
    pub fn set(&self, region: &str, rate: u64, until: Option<Duration>) -> Arc<Budget> {
        let stale = Instant::now() + until.map_or(BUDGET_RECHECK, |u| u.min(BUDGET_RECHECK));
        let mut regions = self.lock();
        let entry = regions.entry(region.to_string()).or_insert_with(|| (Arc::new(Budget::new(rate)), stale));
        entry.0.set_rate(rate);
        entry.1 = stale;
        entry.0.clone()
    }

    /// The rate the relay's limiter uses for `region`, if it relayed anything to it yet.
    pub fn rate(&self, region: &str) -> Option<u64> {
        self.lock().get(region).map(|(b, _)| b.rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_rate_applies_to_the_budget_streams_already_hold() {
        let budgets = Budgets::default();
        assert_eq!(budgets.rate("eu"), None);
        let held = budgets.set("eu", 1 << 20, None);
        assert_eq!((held.rate(), budgets.rate("eu")), (1 << 20, Some(1 << 20)));
        // The admin API sets the new rate: the budget a stream holds follows, no re-read.
        let again = budgets.set("eu", 8 << 20, None);
        assert!(Arc::ptr_eq(&held, &again), "one budget per region");
        assert_eq!(held.rate(), 8 << 20);
        assert!(budgets.fresh("eu").is_some());
        // A window that changes now: read again at once.
        budgets.set("eu", 8 << 20, Some(Duration::ZERO));
        assert!(budgets.fresh("eu").is_none());
    }

    #[test]
    fn a_region_has_its_flat_rate_or_its_schedules_window() {
        let mut region = RegionRecord { name: "eu".into(), rate: 7, created_unix_ms: 0, schedule: None };
        let now: jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        assert_eq!(budget_at(&region, now), InForce { rate: 7, next: None });
        region.schedule = Some(crate::store::RegionSchedule {
            text: "daily 08:00-20:00 1MiB/s; 100MiB/s".into(),
            time_zone: "Asia/Tokyo".into(),
        });
        // 21:00 in Tokyo: the night's rate, until 08:00 there (23:00 UTC).
        let at = budget_at(&region, now);
        assert_eq!(at.rate, 100 << 20);
        assert_eq!(at.next, Some(("2026-11-30T23:00:00Z".parse().unwrap(), 1 << 20)));
    }
}
