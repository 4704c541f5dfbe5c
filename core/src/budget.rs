//! A link budget: bytes per second, shared by every stream that crosses one link.
//!
//! The hub holds one per region (its relay waits on it before sending a chunk) and each spoke
//! one of its own (its background fetches wait on it after receiving one), so that a region
//! stays within its budget from both ends. The rate can change while streams use it
//! ([`Budget::set_rate`], `aq region set`): each stream's next chunk waits under the new rate.
//!
//! Cells are KiB; the burst is a tenth of a second, and at least one whole chunk (2 MiB).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The largest burst a budget allows at any rate, in KiB: one whole chunk of the largest size.
const MIN_BURST_KIB: u32 = 2048;

pub struct Budget {
    current: Mutex<(u64, Arc<DefaultDirectRateLimiter>)>,
}

fn limiter(rate_bytes: u64) -> Arc<DefaultDirectRateLimiter> {
    let kib = u32::try_from((rate_bytes / 1024).max(1)).unwrap_or(u32::MAX);
    let quota = Quota::per_second(NonZeroU32::new(kib).expect("at least 1"))
        .allow_burst(NonZeroU32::new((kib / 10).max(MIN_BURST_KIB)).expect("at least 2048"));
    Arc::new(RateLimiter::direct(quota))
}

impl Budget {
    pub fn new(rate_bytes: u64) -> Self {
        Self { current: Mutex::new((rate_bytes, limiter(rate_bytes))) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Arc<DefaultDirectRateLimiter>)> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.lock().0
    }

    /// Uses `rate_bytes` from the next chunk on (a new rate starts with a full burst);
    /// returns whether the rate changed.
    pub fn set_rate(&self, rate_bytes: u64) -> bool {
        let mut current = self.lock();
        let changed = current.0 != rate_bytes;
        if changed {
            *current = (rate_bytes, limiter(rate_bytes));
        }
        changed
    }

    /// Waits until `bytes` may pass; more than a burst waits as its parts would.
    pub async fn take(&self, bytes: usize) {
        let limiter = self.lock().1.clone();
        let mut left = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        while left > 0 {
            let n = left.min(MIN_BURST_KIB);
            let _ = limiter.until_n_ready(NonZeroU32::new(n).expect("n > 0")).await;
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_rate_replaces_the_limiter_only_when_it_changes() {
        let budget = Budget::new(1 << 20);
        let before = budget.lock().1.clone();
        assert!(!budget.set_rate(1 << 20), "the same rate keeps the limiter (and what it counted)");
        assert!(Arc::ptr_eq(&before, &budget.lock().1));
        assert!(budget.set_rate(4 << 20));
        assert_eq!(budget.rate(), 4 << 20);
        assert!(!Arc::ptr_eq(&before, &budget.lock().1));
    }
}
