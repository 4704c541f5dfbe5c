//! What the operator knows of its region, behind one trait: [`RegionView`].
//!
//! The spoke implements it with what it already keeps ([`SpokeRegion`]): the hub's
//! assignments in the [`Catalog`] (datasets, versions, which is active, sizes, modes), the
//! versions this spoke replicated to Ready, the chunk cache (what it holds, its quota). Tests
//! use [`MemoryRegion`].
//!
//! Holding a version: the spoke already pins, against eviction, the chunks of every version the
//! hub retains (the controller's pass). A volume that names another version adds a hold
//! ([`Holds`]): the pinning then keeps that version's chunks
//! as well, until the volume goes (the finalizer releases the hold) or names another version.
//! Holds live in the process of the operator that leads the region.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aqueduct_proto::ReplicationMode;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::Notify;

use crate::cache::TieredStore;
use crate::catalog::Catalog;
use crate::store::ChunkStore;

/// One version of a dataset the hub assigned to the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionVersion {
    pub dataset: String,
    pub version: u64,
    pub total_bytes: u64,
    /// The version the region serves to volumes that follow the dataset.
    pub active: bool,
    /// How the rollout holds it in the region.
    pub mode: ReplicationMode,
}

/// How much of a version the region holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    pub cached_bytes: u64,
    /// Every chunk is in the region, verified.
    pub ready: bool,
}

/// The region as the operator sees it. Cheap calls: reconcile asks on every pass.
#[async_trait]
pub trait RegionView: Send + Sync + 'static {
    /// The versions of `dataset` assigned to the region (none: it is not rolled out here).
    fn versions(&self, dataset: &str) -> Vec<RegionVersion>;
    /// The tags of `dataset` (name, version), as the hub sent them. Default: none.
    fn tags(&self, _dataset: &str) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// How much of `dataset@version` the region holds.
    async fn holding(&self, dataset: &str, version: u64) -> Holding;
    /// The cache's capacity in bytes; `None` when it has no quota.
    fn cache_capacity(&self) -> Option<u64>;
    /// The versions volumes hold in the region.
    fn holds(&self) -> &Holds;
    /// Asks the region to keep `dataset@version` for `holder` (one hold per holder: a new
    /// one replaces the old). Idempotent.
    fn hold(&self, holder: &str, dataset: &str, version: u64) {
        self.holds().hold(holder, dataset, version);
    }
    /// Drops `holder`'s hold, if any. Idempotent.
    fn release(&self, holder: &str) {
        self.holds().release(holder);
    }
    /// Drops every hold (this instance stopped leading the region).
    fn release_all(&self) {
        self.holds().release_all();
    }
    /// Fires when what the region holds changes (its assignments): every volume is then
    /// reconciled again. Default: never.
    fn changes(&self) -> BoxStream<'static, ()> {
        futures::stream::pending().boxed()
    }
}

/// The versions volumes hold, by holder (`NAMESPACE/NAME`). `pin()` keeps their chunks.
#[derive(Debug, Default)]
pub struct Holds {
    by_holder: Mutex<HashMap<String, (String, u64)>>,
    /// Woken when the set of held versions changes: the spoke pins again.
    pub changed: Notify,
}

impl Holds {
    pub fn hold(&self, holder: &str, dataset: &str, version: u64) {
        let new = (dataset.to_string(), version);
        let old = self.lock().insert(holder.to_string(), new.clone());
        if old.as_ref() != Some(&new) {
            self.changed.notify_one();
        }
    }

    pub fn release(&self, holder: &str) {
        if self.lock().remove(holder).is_some() {
            self.changed.notify_one();
        }
    }

    pub fn release_all(&self) {
        let mut holds = self.lock();
        if !holds.is_empty() {
            holds.clear();
            self.changed.notify_one();
        }
    }

    /// Every hold: (holder, dataset, version).
    pub fn by_holder(&self) -> Vec<(String, String, u64)> {
        self.lock().iter().map(|(h, (d, v))| (h.clone(), d.clone(), *v)).collect()
    }

    /// Every version some volume holds.
    pub fn held(&self) -> HashSet<(String, u64)> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.by_holder.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The versions this spoke has replicated to Ready (its whole version, or its share of the
/// region's copy), as the replication loop last saw them.
#[derive(Debug, Default)]
pub struct ReadyVersions(Mutex<HashSet<(String, u64)>>);

impl ReadyVersions {
    pub fn set(&self, ready: impl IntoIterator<Item = (String, u64)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ready.into_iter().collect();
    }

    pub fn contains(&self, dataset: &str, version: u64) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(&(dataset.to_string(), version))
    }
}

/// The spoke's region: its catalog, its cache, its holds.
///
/// Readiness: a version is Ready when it is the active one (the hub makes a version active
/// once it is Ready in every region of its rollout) or when this spoke replicated it to
/// Ready. Cached bytes of a version not Ready are those of its chunks this spoke's cache
/// holds: in `region` mode that is this node's share, a lower bound of the region's.
pub struct SpokeRegion {
    pub catalog: Arc<Catalog>,
    pub cache: Arc<TieredStore>,
    pub holds: Arc<Holds>,
    pub ready: Arc<ReadyVersions>,
}

#[async_trait]
impl RegionView for SpokeRegion {
    fn versions(&self, dataset: &str) -> Vec<RegionVersion> {
        self.catalog
            .assignments()
            .assignments
            .into_iter()
            .filter(|a| a.dataset == dataset)
            .map(|a| RegionVersion {
                mode: ReplicationMode::from_wire(a.mode).unwrap_or_default(),
                dataset: a.dataset,
                version: a.version,
                total_bytes: a.total_bytes,
                active: a.active,
            })
            .collect()
    }

    fn tags(&self, dataset: &str) -> Vec<(String, u64)> {
        let tags = self.catalog.assignments().tags;
        tags.into_iter().filter(|t| t.dataset == dataset).map(|t| (t.name, t.version)).collect()
    }

    async fn holding(&self, dataset: &str, version: u64) -> Holding {
        let Ok(a) = self.catalog.resolve(dataset, Some(version)) else { return Holding::default() };
        if a.active || self.ready.contains(dataset, version) {
            return Holding { cached_bytes: a.total_bytes, ready: true };
        }
        // Not Ready: count what the cache holds (the manifest is on disk once replication
        // started; without it nothing is cached yet).
        let cached_bytes = match self.catalog.manifest(&a).await {
            Ok(manifest) => self.cache.held_of(&manifest).0,
            Err(_) => 0,
        };
        Holding { cached_bytes, ready: false }
    }

    fn cache_capacity(&self) -> Option<u64> {
        match self.cache.disk_usage() {
            Some(disk) => disk.quota,
            None => self.cache.memory_usage().and_then(|m| m.quota),
        }
    }

    fn holds(&self) -> &Holds {
        &self.holds
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        futures::stream::unfold(self.catalog.subscribe(), |mut assignments| async move {
            assignments.changed().await.ok().map(|()| ((), assignments))
        })
        .boxed()
    }
}

/// A region in memory, for tests: versions and holdings set by hand, holds recorded.
#[derive(Debug, Default)]
pub struct MemoryRegion {
    pub versions: Mutex<Vec<RegionVersion>>,
    pub holdings: Mutex<HashMap<(String, u64), Holding>>,
    pub capacity: Option<u64>,
    pub holds: Holds,
}

impl MemoryRegion {
    /// Adds a version with `cached_bytes` of it held (Ready when that is all of it).
    pub fn with_version(self, dataset: &str, version: u64, total_bytes: u64, active: bool, cached_bytes: u64) -> Self {
        self.versions.lock().unwrap().push(RegionVersion {
            dataset: dataset.into(),
            version,
            total_bytes,
            active,
            mode: ReplicationMode::Auto,
        });
        self.holdings
            .lock()
            .unwrap()
            .insert((dataset.into(), version), Holding { cached_bytes, ready: cached_bytes >= total_bytes });
        self
    }
}

#[async_trait]
impl RegionView for MemoryRegion {
    fn versions(&self, dataset: &str) -> Vec<RegionVersion> {
        self.versions.lock().unwrap().iter().filter(|v| v.dataset == dataset).cloned().collect()
    }

    async fn holding(&self, dataset: &str, version: u64) -> Holding {
        self.holdings.lock().unwrap().get(&(dataset.to_string(), version)).copied().unwrap_or_default()
    }

    fn cache_capacity(&self) -> Option<u64> {
        self.capacity
    }

    fn holds(&self) -> &Holds {
        &self.holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_replace_per_holder_and_release_idempotently() {
        let holds = Holds::default();
        holds.hold("ns/a", "m", 1);
        holds.hold("ns/b", "m", 1);
        holds.hold("ns/a", "m", 2);
        assert_eq!(holds.held(), HashSet::from([("m".to_string(), 1), ("m".to_string(), 2)]));
        holds.release("ns/a");
        holds.release("ns/a");
        assert_eq!(holds.held(), HashSet::from([("m".to_string(), 1)]));
    }
}
