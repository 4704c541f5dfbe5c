//! Every region's link budget as the relay applies it: one [`Budget`] per region, shared by
//! every `FetchChunks` stream of the region, with its rate re-read from the database every
//! [`BUDGET_RECHECK`] and set at once when an admin changes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aqueduct_core::budget::Budget;

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

    /// The region's budget, if it was read less than [`BUDGET_RECHECK`] ago.
    pub fn fresh(&self, region: &str) -> Option<Arc<Budget>> {
        self.lock().get(region).filter(|(_, read)| read.elapsed() < BUDGET_RECHECK).map(|(b, _)| b.clone())
    }

    /// Sets the region's rate (as just read or changed) and returns its budget: streams that
    /// hold it use the new rate from their next chunk.
    pub fn set(&self, region: &str, rate: u64) -> Arc<Budget> {
        let mut regions = self.lock();
        let entry = regions.entry(region.to_string()).or_insert_with(|| (Arc::new(Budget::new(rate)), Instant::now()));
        entry.0.set_rate(rate);
        entry.1 = Instant::now();
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
        let held = budgets.set("eu", 1 << 20);
        assert_eq!((held.rate(), budgets.rate("eu")), (1 << 20, Some(1 << 20)));
        // The admin API sets the new rate: the budget a stream holds follows, no re-read.
        let again = budgets.set("eu", 8 << 20);
        assert!(Arc::ptr_eq(&held, &again), "one budget per region");
        assert_eq!(held.rate(), 8 << 20);
        assert!(budgets.fresh("eu").is_some());
    }
}
