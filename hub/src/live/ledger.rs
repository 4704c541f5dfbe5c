//! The relay's ledger: bytes relayed per rollout row, counted in memory as the relay hands
//! each chunk to the transport and written to the database in batches, and the bytes a region
//! got more than once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aqueduct_proto::Digest;
use tracing::warn;

use crate::rollout::RolloutKey;
use crate::store::MetaStore;

/// Bytes relayed per rollout row: counted in memory as each chunk is handed to the transport
/// and written to the database in one go every [`LEDGER_FLUSH`] (and when the hub stops), so
/// that a stream of one chunk (a reader's miss) costs no database write. The admin API's
/// status adds what is not written yet, under the same lock as the flush, so it never counts
/// twice.
///
/// It also keeps which chunks each region got of each version, in memory until the region is
/// Ready, to count the bytes of chunks sent to a region more than once ([`Ledger::refetched`]):
/// the measure of how well the region's spokes kept to "once per region" (a spoke that died
/// with chunks no other held costs that much again). Counts start over when the hub restarts.
#[derive(Default)]
pub struct Ledger {
    entries: Mutex<HashMap<RolloutKey, Sent>>,
}

#[derive(Default)]
struct Sent {
    /// Relayed bytes not written to the database yet.
    pending: u64,
    /// Chunks sent, until the region is Ready.
    chunks: HashSet<Digest>,
    refetched: u64,
}

pub const LEDGER_FLUSH: Duration = Duration::from_secs(1);

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RolloutKey, Sent>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `digest` as handed to the transport for `key`'s region, and as refetched if it
    /// went there before.
    pub fn sent(&self, key: &RolloutKey, digest: Digest, bytes: u64) {
        let mut entries = self.lock();
        let entry = match entries.get_mut(key) {
            Some(entry) => entry,
            None => entries.entry(key.clone()).or_default(),
        };
        entry.pending += bytes;
        if !entry.chunks.insert(digest) {
            entry.refetched += bytes;
        }
    }

    /// Bytes of chunks of `dataset@version` sent to `region` more than once.
    pub fn refetched(&self, key: &RolloutKey) -> u64 {
        self.lock().get(key).map_or(0, |s| s.refetched)
    }

    /// The region is Ready with the version: forget which chunks it got, keep the count.
    pub fn settle(&self, key: &RolloutKey) {
        if let Some(s) = self.lock().get_mut(key) {
            s.chunks = HashSet::new();
        }
    }

    /// Writes what is pending. Blocking: call from a blocking task.
    pub fn flush(&self, db: &dyn MetaStore) {
        for (key, entry) in self.lock().iter_mut().filter(|(_, e)| e.pending > 0) {
            match db.add_relayed(key, entry.pending) {
                Ok(()) => entry.pending = 0,
                Err(e) => warn!(error = %e, "could not record relayed bytes; will try again"),
            }
        }
    }

    /// Runs `read` (a database read of rollouts) with the pending bytes it must add per
    /// rollout, under the flush's lock so that nothing counts twice.
    pub fn with_pending<T>(&self, read: impl FnOnce(&dyn Fn(&RolloutKey) -> u64) -> T) -> T {
        let entries = self.lock();
        read(&|key| entries.get(key).map_or(0, |e| e.pending))
    }

    /// Flushes every [`LEDGER_FLUSH`] until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, db: Arc<dyn MetaStore>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(LEDGER_FLUSH) => false,
                _ = shutdown.cancelled() => true,
            };
            let (ledger, db) = (self.clone(), db.clone());
            let _ = tokio::task::spawn_blocking(move || ledger.flush(db.as_ref())).await;
            if stop {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aqueduct_proto::{ChunkRef, ChunkerParams, FileEntry, Manifest, ReplicationMode};

    use super::*;
    use crate::rollout::VersionId;
    use crate::rollout::cutover::CutOver;
    use crate::store::LifecycleStore;
    use crate::store::meta::SqlStore;
    use aqueduct_proto::domain::class::Class;
    use aqueduct_proto::domain::modes::OutsideLinks;

    use crate::store::{DatasetRecord, RegionRecord, SourceRecord, VersionCut};

    /// A store with `d@v1` (3 bytes) rolled out to eu and us.
    fn store() -> SqlStore {
        let store = SqlStore::in_memory().unwrap();
        let source =
            SourceRecord { name: "s".into(), url: "file:///x".into(), options: BTreeMap::new(), created_unix_ms: 1 };
        store.add_source(&source).unwrap();
        let dataset = DatasetRecord {
            name: "d".into(),
            source: "s".into(),
            prefix: "p".into(),
            created_unix_ms: 2,
            latest_version: 0,
            outside_links: OutsideLinks::Fail,
            keep_versions: 0,
        };
        store.add_dataset(&dataset).unwrap();
        let file = FileEntry {
            path: "a".into(),
            object: "p/a".into(),
            size: 3,
            mode: 0o644,
            mtime_unix_ms: 5,
            chunks: vec![ChunkRef { digest: Digest::of(b"abc"), offset: 0, length: 3 }],
        };
        let manifest = Manifest::new("d".into(), 0, ChunkerParams::DEFAULT, vec![file]).unwrap();
        store.insert_version(0, &manifest, &VersionCut::default()).unwrap();
        for name in ["eu", "us"] {
            store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
        }
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into(), "us".into()],
                ReplicationMode::Auto,
                CutOver::AllReady,
                Class::Normal,
                3,
            )
            .unwrap();
        store
    }

    fn relayed(store: &SqlStore) -> Vec<(String, u64)> {
        store.rollouts(None).unwrap().into_iter().map(|r| (r.region, r.relayed_bytes)).collect()
    }

    /// Relayed bytes are counted per row, added to a status read until they are written, and
    /// written once: a read after the flush finds them in the database and nothing pending.
    #[test]
    fn relayed_bytes_are_written_once_and_counted_once() {
        let (ledger, store) = (Ledger::default(), store());
        let (eu, us) = (RolloutKey::new("d", 1, "eu"), RolloutKey::new("d", 1, "us"));
        ledger.sent(&eu, Digest::of(b"a"), 100);
        ledger.sent(&eu, Digest::of(b"b"), 50);
        ledger.sent(&us, Digest::of(b"a"), 100);
        let pending =
            ledger.with_pending(|pending| [pending(&eu), pending(&us), pending(&RolloutKey::new("d", 2, "eu"))]);
        assert_eq!(pending, [150, 100, 0]);
        ledger.flush(&store);
        assert_eq!(relayed(&store), [("eu".to_string(), 150), ("us".to_string(), 100)]);
        assert_eq!(ledger.with_pending(|pending| pending(&eu)), 0, "written bytes still pending");
        ledger.flush(&store);
        assert_eq!(relayed(&store), [("eu".to_string(), 150), ("us".to_string(), 100)], "written twice");
    }

    /// A chunk sent to a region again counts as refetched, per region; once the region is
    /// Ready its chunks are forgotten (the count stays), so a later reader's miss is not.
    #[test]
    fn a_chunk_sent_to_a_region_twice_is_refetched_until_the_region_is_ready() {
        let ledger = Ledger::default();
        let (eu, us) = (RolloutKey::new("d", 1, "eu"), RolloutKey::new("d", 1, "us"));
        ledger.sent(&eu, Digest::of(b"a"), 100);
        ledger.sent(&us, Digest::of(b"a"), 100);
        assert_eq!((ledger.refetched(&eu), ledger.refetched(&us)), (0, 0), "another region's chunk counted");
        ledger.sent(&eu, Digest::of(b"a"), 100);
        assert_eq!(ledger.refetched(&eu), 100);
        ledger.settle(&eu);
        ledger.sent(&eu, Digest::of(b"a"), 100);
        assert_eq!(ledger.refetched(&eu), 100, "counted after the region was Ready");
        assert_eq!(ledger.refetched(&RolloutKey::new("d", 9, "eu")), 0);
    }
}
