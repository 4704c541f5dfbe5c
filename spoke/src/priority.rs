//! Readers first: while a reader's on-demand fetch is in flight (a foreground fetch),
//! background work (replication) waits before its next request and its next chunk, so that a
//! reader waits for one chunk's transfer, not for a version's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Foreground (reader) fetches first: background work waits while any is in flight.
#[derive(Default)]
pub struct Priority {
    foreground: AtomicUsize,
    idle: Notify,
}

/// Held while a foreground fetch is in flight.
pub struct Foreground<'a>(&'a Priority);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Priority {
    pub fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::AcqRel);
        Foreground(self)
    }

    /// Returns when no foreground fetch is in flight.
    pub async fn background_turn(&self) {
        self.background_turn_unless(&AtomicBool::new(false)).await;
    }

    /// Returns when no foreground fetch is in flight, or as soon as `wanted` is set (someone
    /// in the foreground waits for what this background work brings: pausing it would make
    /// them wait for themselves). Whoever sets `wanted` calls [`Priority::wake`].
    pub async fn background_turn_unless(&self, wanted: &AtomicBool) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.foreground.load(Ordering::Acquire) == 0 || wanted.load(Ordering::Acquire) {
                return;
            }
            idle.await;
        }
    }

    /// Wakes background work that waits for its turn, to look again.
    pub fn wake(&self) {
        self.idle.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn background_work_waits_for_foreground_fetches() {
        let priority = Arc::new(Priority::default());
        priority.background_turn().await;
        let guard = priority.foreground();
        let p = priority.clone();
        let waiting = tokio::spawn(async move { p.background_turn().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "background work ran while a reader waited");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
