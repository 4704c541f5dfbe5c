//! The tiers against their quotas and watermarks: eviction, pinned chunks, memory copies of
//! hot chunks, and the disk quota shared with the holder's whole copies.

use super::*;

const MIB: u64 = 1 << 20;

fn chunk(i: u64) -> (Digest, Vec<u8>) {
    let data = aqueduct_testkit::noise(MIB as usize, i);
    (Digest::of(&data), data)
}

fn config(disk: Option<u64>, memory: u64, memory_only: bool) -> CacheConfig {
    CacheConfig { memory: Size(memory), disk: disk.map(Size), high_watermark: 0.8, low_watermark: 0.5, memory_only }
}

/// Writes 40 chunks of 1 MiB through a tier of 10 MiB with three of them pinned: the
/// tier never holds more than its high watermark after a write, the pinned chunks and
/// the newest ones survive, the oldest unpinned ones go.
fn watermarks_hold(store: &TieredStore, usage: impl Fn(&TieredStore) -> TierUsage) {
    let pinned: HashSet<Digest> = (0..3).map(|i| chunk(i).0).collect();
    store.set_pinned(pinned.clone());
    for i in 0..40 {
        let (d, data) = chunk(i);
        store.put(&d, &data).unwrap();
        let used = usage(store).used;
        assert!(used <= 8 * MIB, "after chunk {i}, {used} bytes are held, above the high watermark");
    }
    for d in &pinned {
        assert!(store.contains(d), "a pinned chunk was evicted");
        assert!(store.get(d).unwrap().is_some());
    }
    assert!(store.contains(&chunk(39).0), "the newest chunk was evicted");
    assert!(!store.contains(&chunk(3).0), "the oldest unpinned chunk is still held");
    assert!(store.stats.evictions() >= 30);
    // Pinned chunks alone above the quota: a write fails as full, nothing pinned goes.
    let mut many: HashSet<Digest> = (0..40).map(|i| chunk(i).0).filter(|d| store.contains(d)).collect();
    store.set_pinned(many.clone());
    let mut full = None;
    for i in 100..120 {
        let (d, data) = chunk(i);
        if let Err(e) = store.put(&d, &data) {
            full = Some(e);
            break;
        }
        many.insert(d);
        store.set_pinned(many.clone());
    }
    assert!(matches!(full, Some(CacheError::Full { .. })), "{full:?}");
    assert!(many.iter().all(|d| store.contains(d)));
}

#[test]
fn disk_tier_evicts_to_its_low_watermark_and_keeps_pinned_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(dir.path(), &config(Some(10 * MIB), 4 * MIB, false)).unwrap();
    watermarks_hold(&store, |s| s.disk_usage().unwrap());
    // The disk agrees with the count.
    let on_disk: u64 = DiskStore::open(dir.path()).unwrap().list().unwrap().iter().map(|(_, l)| l).sum();
    assert_eq!(on_disk, store.disk_usage().unwrap().used);
    // Reopened, the tier knows what it holds.
    let again = TieredStore::open(dir.path(), &config(Some(10 * MIB), 0, false)).unwrap();
    assert_eq!(again.disk_usage().unwrap().used, on_disk);
}

#[test]
fn memory_only_keeps_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&dir.path().join("store"), &config(None, 10 * MIB, true)).unwrap();
    watermarks_hold(&store, |s| s.memory_usage().unwrap());
    assert!(!dir.path().join("store").exists(), "memory-only mode created the disk store");
}

#[test]
fn chunks_stored_by_this_process_are_known_good_and_found_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = chunk(7);
    {
        let store = TieredStore::open(dir.path(), &config(None, 0, false)).unwrap();
        store.put(&d, &data).unwrap();
        assert!(store.known_good(&d));
        store.remove(&d).unwrap();
        assert!(!store.known_good(&d));
        store.put(&d, &data).unwrap();
    }
    // Found on disk by a new process: read back before anyone relies on it.
    let store = TieredStore::open(dir.path(), &config(None, 0, false)).unwrap();
    assert!(store.contains(&d) && !store.known_good(&d));
}

#[test]
fn hot_chunks_are_kept_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(dir.path(), &config(None, 4 * MIB, false)).unwrap();
    let (d, data) = chunk(1);
    store.put(&d, &data).unwrap();
    // Read once: from disk; twice: hot, kept in memory; then served from memory.
    for _ in 0..3 {
        assert_eq!(store.get(&d).unwrap().unwrap(), data);
    }
    assert_eq!(store.stats.disk_hits.load(Ordering::Relaxed), 2);
    assert_eq!(store.stats.memory_hits.load(Ordering::Relaxed), 1);
    // Removing a (corrupt) chunk removes every copy.
    store.remove(&d).unwrap();
    assert_eq!(store.get(&d).unwrap(), None);
}

#[test]
fn chunks_get_the_disk_quota_less_the_whole_copies() {
    assert_eq!(chunk_capacity(200, 16), 184);
    assert_eq!(chunk_capacity(200, 0), 200);
    assert_eq!(chunk_capacity(200, 200), 0);
    assert_eq!(chunk_capacity(200, 300), 0, "copies past the quota leave nothing, never wrap");
    assert_eq!(whole_files_room(200, 150), 50);
    assert_eq!(whole_files_room(200, 250), 0);
}

/// A disk quota of 10 MiB (watermarks 0.8 and 0.5) shared with whole copies: when the
/// copies grow, unpinned chunks go at once, chunks and copies together stay within the
/// quota, pinned chunks stay; writes then keep within what is left; when the copies go,
/// the chunks get the room back.
#[test]
fn whole_copies_take_their_share_of_the_disk_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(dir.path(), &config(Some(10 * MIB), 2 * MIB, false)).unwrap();
    let pinned: HashSet<Digest> = (0..2).map(|i| chunk(i).0).collect();
    store.set_pinned(pinned.clone());
    for i in 0..8 {
        let (d, data) = chunk(i);
        store.put(&d, &data).unwrap();
        // Read twice: a copy in the memory tier, which must go with the disk's.
        store.get(&d).unwrap();
        store.get(&d).unwrap();
    }
    let used = |s: &TieredStore| s.disk_usage().unwrap().used;
    assert_eq!(used(&store), 8 * MIB);
    assert_eq!(store.room(dir.path()), 8 * MIB);
    // The copies may take what the two pinned chunks leave.
    assert_eq!(store.whole_files_room(), Some(8 * MIB));

    let evicted = store.set_whole_files(4 * MIB).unwrap();
    assert_eq!(store.whole_files(), 4 * MIB);
    // 6 MiB left for chunks: down to its low watermark (3 MiB), oldest unpinned first.
    assert_eq!((evicted, used(&store)), (5, 3 * MIB));
    assert!(used(&store) + store.whole_files() <= 10 * MIB);
    assert!(pinned.iter().all(|d| store.contains(d)), "a pinned chunk was evicted");
    assert!(!store.contains(&chunk(2).0) && store.contains(&chunk(7).0));
    assert!(store.get(&chunk(2).0).unwrap().is_none(), "an evicted chunk's memory copy still answers");
    assert_eq!(store.room(dir.path()), (6.0 * MIB as f64 * 0.8) as u64);
    for i in 10..20 {
        let (d, data) = chunk(i);
        store.put(&d, &data).unwrap();
        assert!(used(&store) + store.whole_files() <= 10 * MIB, "after chunk {i}: over the quota");
    }
    // Unchanged or smaller: nothing more goes.
    assert_eq!(store.set_whole_files(4 * MIB).unwrap(), 0);
    assert_eq!(store.set_whole_files(0).unwrap(), 0);
    assert_eq!(store.room(dir.path()), 8 * MIB);

    // Copies that leave pinned chunks no room: what can go goes, writes are refused as
    // full, naming the copies' share.
    store.set_pinned((10..20).map(|i| chunk(i).0).filter(|d| store.contains(d)).collect());
    store.set_whole_files(9 * MIB).unwrap();
    let (d, data) = chunk(30);
    let err = store.put(&d, &data).unwrap_err().to_string();
    assert!(err.contains("whole copies of mounted files take 9MiB"), "{err}");
    // No disk quota: the disk is the limit, the copies change nothing.
    let free = TieredStore::open(dir.path(), &config(None, 0, false)).unwrap();
    assert_eq!(free.set_whole_files(u64::MAX).unwrap(), 0);
    assert_eq!(free.whole_files_room(), None);
}

#[test]
fn bad_quotas_are_refused_with_the_key() {
    let err = config(Some(MIB), 0, false).validate().unwrap_err();
    assert!(err.contains("cache.disk is 1MiB, smaller than one chunk"), "{err}");
    let err = config(None, 0, true).validate().unwrap_err();
    assert!(err.contains("cache.memory_only needs a memory tier"), "{err}");
    let err = config(Some(MIB << 10), 64 * MIB, true).validate().unwrap_err();
    assert!(err.contains("cache.disk cannot be set"), "{err}");
    let mut c = config(None, 0, false);
    c.low_watermark = 0.99;
    assert!(c.validate().unwrap_err().contains("low_watermark"));
    assert!(CacheConfig::default().validate().is_ok());
}
