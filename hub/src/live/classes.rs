//! The lane each rollout's transfers draw in from its region's budget, as the relay applies
//! it: the rollout's class (urgent, normal, background) per (dataset, version, region), read
//! from the database and read again every [`CLASS_RECHECK`], so that a class changed while a
//! rollout runs reaches the streams already open within seconds ([`Classes::set`] applies a
//! change at once). A pod's read that missed is marked by its spoke (`FetchChunksRequest.
//! foreground`) and draws above every class; see `aqueduct_core::budget` for the order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aqueduct_core::budget::Lane;

use crate::rollout::{RolloutKey, RolloutRecord};

/// How long a rollout's class is used before it is read again.
pub const CLASS_RECHECK: Duration = Duration::from_secs(2);

/// The lane a rollout's transfers draw in.
pub fn lane_of(record: &RolloutRecord) -> Lane {
    Lane::from(record.class)
}

/// Every rollout's lane the relay used lately, and when it was read.
#[derive(Default)]
pub struct Classes {
    rows: Mutex<HashMap<RolloutKey, (Lane, Instant)>>,
}

impl Classes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RolloutKey, (Lane, Instant)>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rollout's lane, if it was read less than [`CLASS_RECHECK`] ago.
    pub fn fresh(&self, key: &RolloutKey) -> Option<Lane> {
        self.lock().get(key).filter(|(_, read)| read.elapsed() < CLASS_RECHECK).map(|(lane, _)| *lane)
    }

    /// The rollout's lane, as just read or changed; streams use it from their next chunk.
    pub fn set(&self, key: &RolloutKey, lane: Lane) {
        let mut rows = self.lock();
        // What no stream asked for in a while goes (rollouts that ended).
        rows.retain(|_, (_, read)| read.elapsed() < CLASS_RECHECK * 30);
        rows.insert(key.clone(), (lane, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_is_fresh_until_it_is_read_again() {
        let classes = Classes::default();
        let key = RolloutKey::new("m", 1, "eu");
        assert_eq!(classes.fresh(&key), None);
        classes.set(&key, Lane::Background);
        assert_eq!(classes.fresh(&key), Some(Lane::Background));
        classes.set(&key, Lane::Urgent);
        assert_eq!(classes.fresh(&key), Some(Lane::Urgent), "a change applies at once");
        assert_eq!(classes.fresh(&RolloutKey::new("m", 1, "us")), None, "per region");
    }
}
