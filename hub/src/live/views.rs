//! What wakes the spokes' watches, and what they are sent, computed once per region.
//!
//! Two kinds of change: one that may concern every region (a rollout, a tag, a cut-over, a
//! revocation, a budget: [`Changes::notify_waiters`]) and one that concerns one region's
//! watches only (a spoke of the region joined or left: [`Changes::notify_region`]). Each bumps
//! a counter, so that what was computed before it is known to be stale. A watch waits for
//! either kind that concerns it; the other regions' watches sleep through a join.
//!
//! When a change wakes a region's watches, the first computes the region's assignments (from
//! the database) and the others take that view ([`Views::get`]): one read per region and
//! change, not one per watch, however many spokes a region has. A view is also stale once its
//! `until` passed (its budget's next window, or a recheck).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aqueduct_proto::hub::v1 as pb;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The change notices of the hub's state; cheap to clone.
#[derive(Clone, Default)]
pub struct Changes(Arc<ChangesInner>);

#[derive(Default)]
struct ChangesInner {
    /// Bumped by every change that may concern every region.
    all: AtomicU64,
    /// Bumped by those made on this hub (not told by another hub of the database).
    local: AtomicU64,
    notify: Notify,
    /// Per region: its count of its own changes, and its notice.
    regions: Mutex<HashMap<String, Arc<RegionChanges>>>,
}

#[derive(Default)]
struct RegionChanges {
    count: AtomicU64,
    notify: Notify,
}

/// Where the state stood for a region: the changes for all, and the region's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    all: u64,
    region: u64,
}

impl Changes {
    fn region(&self, region: &str) -> Arc<RegionChanges> {
        let mut regions = self.0.regions.lock().unwrap_or_else(|e| e.into_inner());
        regions.entry(region.to_string()).or_default().clone()
    }

    /// Something that may concern every region changed: every watch wakes.
    pub fn notify_waiters(&self) {
        self.0.local.fetch_add(1, Ordering::AcqRel);
        self.0.all.fetch_add(1, Ordering::AcqRel);
        self.0.notify.notify_waiters();
    }

    /// Another hub of the database changed something that may concern every region: every
    /// watch wakes (and this is not told back to the others).
    pub fn notify_from_peer(&self) {
        self.0.all.fetch_add(1, Ordering::AcqRel);
        self.0.notify.notify_waiters();
    }

    /// How many changes for every region were made on this hub so far.
    pub fn local_count(&self) -> u64 {
        self.0.local.load(Ordering::Acquire)
    }

    /// Something that concerns `region`'s watches alone changed (its members): they wake.
    pub fn notify_region(&self, region: &str) {
        let changes = self.region(region);
        changes.count.fetch_add(1, Ordering::AcqRel);
        changes.notify.notify_waiters();
    }

    /// A notice of the next change for every region (register it before reading the state).
    pub fn notified(&self) -> Notified<'_> {
        self.0.notify.notified()
    }

    /// Where the state stands for `region` now.
    pub fn epoch(&self, region: &str) -> Epoch {
        let own = self.region(region).count.load(Ordering::Acquire);
        Epoch { all: self.0.all.load(Ordering::Acquire), region: own }
    }

    /// Returns at the next change that concerns `region` (for all, or its own). Register
    /// before reading the state ([`Changes::epoch`] then compare) so that none is missed: this
    /// future is enabled at once.
    pub async fn changed(&self, region: &str) {
        let own = self.region(region);
        let (all, mine) = (self.0.notify.notified(), own.notify.notified());
        tokio::pin!(all, mine);
        all.as_mut().enable();
        mine.as_mut().enable();
        tokio::select! {
            _ = all => {}
            _ = mine => {}
        }
    }
}

/// A region's assignments as last computed, and until when they hold.
struct View {
    epoch: Epoch,
    until: Instant,
    assignments: Result<Arc<pb::Assignments>, tonic::Status>,
}

/// Each region's last view, shared by its watches.
#[derive(Default)]
pub struct Views {
    regions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<View>>>>>,
}

impl Views {
    /// The region's assignments as of `epoch`: the view another watch of the region computed
    /// for that epoch (and still within its `until`), or `compute`d now (one watch at a time
    /// per region: the others wait for it and take its view). `compute` says until when its
    /// result holds. The view is shared, not copied: a region's watches hold one list of its
    /// members between them, however many they are.
    pub async fn get<F>(
        &self,
        region: &str,
        epoch: Epoch,
        compute: impl FnOnce() -> F,
    ) -> Result<Arc<pb::Assignments>, tonic::Status>
    where
        F: Future<Output = (Result<pb::Assignments, tonic::Status>, Instant)>,
    {
        let slot = {
            let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
            regions.entry(region.to_string()).or_default().clone()
        };
        let mut view = slot.lock().await;
        if let Some(v) = view.as_ref().filter(|v| v.epoch == epoch && Instant::now() < v.until) {
            return v.assignments.clone();
        }
        let (assignments, until) = compute().await;
        let assignments = assignments.map(Arc::new);
        *view = Some(View { epoch, until, assignments: assignments.clone() });
        assignments
    }

    /// Forgets a region's view (its last watch ended), so that the map stays the size of the
    /// regions being watched.
    pub fn forget(&self, region: &str) {
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        if regions.get(region).is_some_and(|slot| Arc::strong_count(slot) == 1) {
            regions.remove(region);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn assigned(budget: u64) -> pb::Assignments {
        pb::Assignments { budget_bytes_per_sec: budget, ..Default::default() }
    }

    #[tokio::test]
    async fn one_computation_per_region_and_change_and_a_region_change_stays_in_its_region() {
        let (changes, views) = (Changes::default(), Views::default());
        let computed = AtomicUsize::new(0);
        let compute = |budget| {
            computed.fetch_add(1, Ordering::SeqCst);
            async move { (Ok(assigned(budget)), Instant::now() + Duration::from_secs(60)) }
        };
        // Ten watches of eu at one epoch: one computation, ten equal views.
        for _ in 0..10 {
            let got = views.get("eu", changes.epoch("eu"), || compute(1)).await.unwrap();
            assert_eq!(got.budget_bytes_per_sec, 1);
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        // A change in us: eu's view holds, us computes.
        changes.notify_region("us");
        assert_eq!(views.get("eu", changes.epoch("eu"), || compute(2)).await.unwrap().budget_bytes_per_sec, 1);
        views.get("us", changes.epoch("us"), || compute(2)).await.unwrap();
        assert_eq!(computed.load(Ordering::SeqCst), 2);
        // A change for all: every region computes again, once.
        changes.notify_waiters();
        for _ in 0..3 {
            assert_eq!(views.get("eu", changes.epoch("eu"), || compute(3)).await.unwrap().budget_bytes_per_sec, 3);
        }
        assert_eq!(computed.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_view_past_its_until_is_computed_again() {
        let (changes, views) = (Changes::default(), Views::default());
        let epoch = changes.epoch("eu");
        views.get("eu", epoch, || async { (Ok(assigned(1)), Instant::now()) }).await.unwrap();
        let again = views.get("eu", epoch, || async { (Ok(assigned(2)), Instant::now()) }).await.unwrap();
        assert_eq!(again.budget_bytes_per_sec, 2, "a view whose window passed was used");
    }

    #[tokio::test]
    async fn a_watch_wakes_for_its_region_and_for_all_but_not_for_another_region() {
        let changes = Changes::default();
        let wakes = |region: &'static str| {
            let changes = changes.clone();
            tokio::spawn(async move { changes.changed(region).await })
        };
        let eu = wakes("eu");
        tokio::time::sleep(Duration::from_millis(20)).await;
        changes.notify_region("us");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!eu.is_finished(), "a join in us woke eu's watch");
        changes.notify_region("eu");
        tokio::time::timeout(Duration::from_secs(5), eu).await.unwrap().unwrap();
        let eu = wakes("eu");
        tokio::time::sleep(Duration::from_millis(20)).await;
        changes.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), eu).await.unwrap().unwrap();
    }

    #[test]
    fn a_region_nobody_watches_is_forgotten() {
        let views = Views::default();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let epoch = Changes::default().epoch("eu");
        runtime.block_on(views.get("eu", epoch, || async { (Ok(assigned(1)), Instant::now()) })).unwrap();
        views.forget("eu");
        assert!(views.regions.lock().unwrap().is_empty());
    }
}
