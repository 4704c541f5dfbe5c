//! Counts of the reads the holder answers, which the spoke exports as its FUSE read metrics
//! (the holder serves no metrics of its own; the spoke asks `List`).

use std::sync::Mutex;
use std::time::Duration;

use aqueduct_proto::holder::v1 as held;

use crate::mount::ReadObserver;

/// The upper bounds of the latency buckets, in seconds: 50 µs times powers of 4, ten of them
/// (the buckets the spoke's `fuse_read_duration` histogram has always had).
pub fn bucket_bounds() -> Vec<f64> {
    (0..10).map(|i| 0.000_05 * 4f64.powi(i)).collect()
}

#[derive(Default)]
pub struct ReadStats {
    counters: Mutex<held::ReadCounters>,
}

impl ReadStats {
    pub fn new() -> Self {
        let bounds = bucket_bounds();
        let buckets = vec![0; bounds.len() + 1];
        Self {
            counters: Mutex::new(held::ReadCounters {
                bucket_bounds_seconds: bounds,
                bucket_counts: buckets,
                ..Default::default()
            }),
        }
    }

    pub fn snapshot(&self) -> held::ReadCounters {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ReadObserver for ReadStats {
    fn read_done(&self, bytes: usize, elapsed: Duration, ok: bool) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = elapsed.as_secs_f64();
        let bucket =
            c.bucket_bounds_seconds.iter().position(|&b| seconds <= b).unwrap_or(c.bucket_bounds_seconds.len());
        if let Some(n) = c.bucket_counts.get_mut(bucket) {
            *n += 1;
        }
        c.count += 1;
        c.seconds_sum += seconds;
        if ok {
            c.bytes += bytes as u64;
        } else {
            c.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fall_into_their_buckets() {
        let stats = ReadStats::new();
        stats.read_done(10, Duration::from_micros(40), true);
        stats.read_done(20, Duration::from_micros(60), true);
        stats.read_done(0, Duration::from_secs(100), false);
        let c = stats.snapshot();
        assert_eq!((c.count, c.bytes, c.failed), (3, 30, 1));
        assert_eq!(c.bucket_counts.len(), 11);
        assert_eq!((c.bucket_counts[0], c.bucket_counts[1], c.bucket_counts[10]), (1, 1, 1));
    }
}
