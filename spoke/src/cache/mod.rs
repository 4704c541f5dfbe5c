//! The spoke's chunk cache: a memory tier and a disk tier, each with a quota and high/low
//! watermarks, least-recently-used eviction, and pinned chunks that are never evicted.
//!
//! Chunks are written to the disk tier (or, in memory-only mode, to the memory tier, and no
//! dataset byte ever touches the disk). A chunk read from disk a second time is kept in the
//! memory tier too, so hot chunks (those peers and mounts ask for again and again) are served
//! from memory. When a write takes a tier above its high watermark, the least recently used
//! chunks that are not pinned are evicted until the tier is at its low watermark. The spoke
//! pins the chunks of each dataset's active version and of the versions rolling out
//! ([`TieredStore::set_pinned`]); if pinned chunks alone fill a tier, a write fails with
//! [`CacheError::Full`] rather than evict them.
//!
//! The disk quota (`[cache] disk`) is the spoke's store on the node's disk, chunks and the FUSE
//! holder's whole copies of mounted files (`DATA_DIR/files`) together: the holder reports what
//! its copies take ([`TieredStore::set_whole_files`], asked every few seconds), and the chunks
//! get the rest ([`chunk_capacity`]), the tier evicting unpinned chunks at once when the copies
//! grow past its high watermark. The copies in turn may take only what the pinned chunks
//! leave of the quota ([`whole_files_room`], which the spoke sends the holder): chunks that
//! cannot be evicted are never squeezed over the quota by copies.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use aqueduct_core::lru::Lru;
use aqueduct_proto::{ChunkerParams, Digest, Size};
use serde::Deserialize;

use crate::store::{CacheError, ChunkStore, DiskStore, MemStore};

/// The largest chunk any version has: a tier must hold at least one.
pub const LARGEST_CHUNK: u64 = ChunkerParams::DEFAULT.max_size as u64;

/// The `[cache]` section of the spoke's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The memory tier's quota (`0B`: no memory tier).
    #[serde(deserialize_with = "size")]
    pub memory: Size,
    /// The disk tier's quota; none: as much as the disk holds.
    #[serde(deserialize_with = "optional_size")]
    pub disk: Option<Size>,
    /// Eviction starts when a tier holds more than this fraction of its quota ...
    pub high_watermark: f64,
    /// ... and stops when it is down to this fraction.
    pub low_watermark: f64,
    /// Keep chunks in memory only: no dataset byte is written to disk.
    pub memory_only: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { memory: Size(256 << 20), disk: None, high_watermark: 0.95, low_watermark: 0.85, memory_only: false }
    }
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn optional_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Size>, D::Error> {
    size(d).map(Some)
}

impl CacheConfig {
    /// Checks the section; the message names the key and says what to write instead.
    pub fn validate(&self) -> Result<(), String> {
        let (low, high) = (self.low_watermark, self.high_watermark);
        if !(low > 0.0 && low < high && high <= 1.0) {
            return Err(format!(
                "cache.low_watermark ({low}) and cache.high_watermark ({high}) must satisfy 0 < low < high <= 1, e.g. 0.85 and 0.95"
            ));
        }
        let small = |key: &str, quota: Size| {
            format!(
                "cache.{key} is {quota}, smaller than one chunk (up to {}): give it at least {} (a few GiB in practice)",
                Size(LARGEST_CHUNK),
                Size(LARGEST_CHUNK * 2)
            )
        };
        if self.memory_only {
            if self.memory.0 < LARGEST_CHUNK * 2 {
                return Err(if self.memory.0 == 0 {
                    "cache.memory_only needs a memory tier: set cache.memory, e.g. \"8GiB\"".to_string()
                } else {
                    small("memory", self.memory)
                });
            }
            if self.disk.is_some() {
                return Err("cache.disk cannot be set with cache.memory_only = true: nothing is written to disk".into());
            }
        } else if self.memory.0 != 0 && self.memory.0 < LARGEST_CHUNK * 2 {
            return Err(small("memory", self.memory));
        }
        if let Some(disk) = self.disk
            && disk.0 < LARGEST_CHUNK * 2
        {
            return Err(small("disk", disk));
        }
        Ok(())
    }
}

/// What a tier holds: its chunks in least-recently-used order, each with its size and whether
/// this process checked it against its digest (stored it, see [`ChunkStore::known_good`]),
/// and the bytes of writes under way. The order never evicts by itself: the tier picks
/// victims, skipping pinned chunks, between its watermarks.
struct Held {
    lru: Lru<Digest, bool>,
    /// Bytes of writes under way: counted against the quota before they land, so that
    /// writers at the same time cannot all find the same room.
    reserved: u64,
}

impl Held {
    fn new() -> Self {
        Self { lru: Lru::unbounded(), reserved: 0 }
    }

    /// Bytes of the chunks held.
    fn used(&self) -> u64 {
        self.lru.weight()
    }

    /// Counts a chunk of `len` bytes as held and just used (keeping whether it was checked).
    fn touch(&mut self, digest: Digest, len: u64) {
        let checked = self.lru.peek(&digest).copied().unwrap_or(false);
        self.lru.insert(digest, checked, len);
    }

    /// Marks a held chunk as just used.
    fn refresh(&mut self, digest: &Digest) {
        self.lru.touch(digest);
    }

    fn forget(&mut self, digest: &Digest) {
        self.lru.remove(digest);
    }

    fn checked(&self, digest: &Digest) -> bool {
        self.lru.peek(digest).copied().unwrap_or(false)
    }
}

/// What the chunks of a disk tier may take: the disk quota less what the whole copies of
/// mounted files take on disk (nothing left if they take it all: every write is then full).
pub fn chunk_capacity(quota: u64, whole_files: u64) -> u64 {
    quota.saturating_sub(whole_files)
}

/// What the whole copies of mounted files may take of a disk quota: what the chunks that cannot
/// be evicted (`pinned`, the versions retained and in use) leave of it.
pub fn whole_files_room(quota: u64, pinned: u64) -> u64 {
    quota.saturating_sub(pinned)
}

/// One tier: a store, its quota and what it holds, in use order.
struct Tier<S> {
    store: S,
    quota: Option<u64>,
    /// Bytes of the quota taken by something else (the whole copies, on the disk tier).
    outside: AtomicU64,
    high: f64,
    low: f64,
    lru: Mutex<Held>,
}

impl<S: ChunkStore> Tier<S> {
    fn new(store: S, quota: Option<u64>, config: &CacheConfig) -> Result<Self, CacheError> {
        let mut lru = Held::new();
        for (digest, len) in store.list()? {
            lru.touch(digest, len);
        }
        Ok(Self {
            store,
            quota,
            outside: AtomicU64::new(0),
            high: config.high_watermark,
            low: config.low_watermark,
            lru: Mutex::new(lru),
        })
    }

    /// What the chunks may take: the quota less what is taken outside (none: no quota).
    fn capacity(&self) -> Option<u64> {
        self.quota.map(|q| chunk_capacity(q, self.outside.load(Ordering::Relaxed)))
    }

    /// The unpinned chunks to evict, oldest first, when `used` bytes are above the high
    /// watermark of `capacity`: until down to the low watermark, or no unpinned chunk is
    /// left. Returns them and what is used after.
    fn victims(&self, lru: &Held, capacity: u64, mut used: u64, pinned: &HashSet<Digest>) -> (Vec<Digest>, u64) {
        let mut victims = Vec::new();
        if used as f64 > capacity as f64 * self.high {
            let target = (capacity as f64 * self.low) as u64;
            for (digest, _, weight) in lru.lru.iter() {
                if used <= target {
                    break;
                }
                if !pinned.contains(digest) {
                    used -= weight;
                    victims.push(*digest);
                }
            }
        }
        (victims, used)
    }

    /// Evicts unpinned chunks, oldest first, down to the low watermark if the tier is above
    /// its high watermark (the room left for chunks shrank). Pinned chunks stay, even above
    /// the capacity. Returns what it evicted.
    fn shrink(&self, pinned: &HashSet<Digest>, evictions: &AtomicU64) -> Result<Vec<Digest>, CacheError> {
        let Some(capacity) = self.capacity() else { return Ok(Vec::new()) };
        let victims = {
            let mut lru = self.lru();
            let used = lru.used() + lru.reserved;
            let (victims, _) = self.victims(&lru, capacity, used, pinned);
            for digest in &victims {
                lru.forget(digest);
            }
            victims
        };
        for digest in &victims {
            self.store.remove(digest)?;
            evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(victims)
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Held> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for `len` more bytes and reserves them: above the high watermark, evicts
    /// unpinned chunks, oldest first, down to the low watermark. Fails if pinned chunks leave
    /// no room. Returns what it evicted.
    fn make_room(&self, len: u64, pinned: &HashSet<Digest>, evictions: &AtomicU64) -> Result<Vec<Digest>, CacheError> {
        let victims = {
            let mut lru = self.lru();
            let mut victims = Vec::new();
            if let (Some(quota), Some(capacity)) = (self.quota, self.capacity()) {
                let used;
                (victims, used) = self.victims(&lru, capacity, lru.used() + lru.reserved + len, pinned);
                if used > capacity {
                    let whole = quota - capacity;
                    return Err(CacheError::Full {
                        path: "cache".into(),
                        source: std::io::Error::other(format!(
                            "the quota of {}{} is taken by pinned chunks (the active and rolling-out versions); raise it",
                            Size(quota),
                            if whole > 0 {
                                format!(" (whole copies of mounted files take {} of it)", Size(whole))
                            } else {
                                String::new()
                            }
                        )),
                    });
                }
                // Forgotten now, under the lock: no other writer picks them again.
                for digest in &victims {
                    lru.forget(digest);
                }
            }
            lru.reserved += len;
            victims
        };
        for digest in &victims {
            self.store.remove(digest)?;
            evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(victims)
    }

    /// Stores a chunk its caller checked against its digest; returns what was evicted for it.
    fn put_checked(
        &self,
        digest: &Digest,
        data: &[u8],
        pinned: &HashSet<Digest>,
        evictions: &AtomicU64,
    ) -> Result<Vec<Digest>, CacheError> {
        if self.lru().lru.contains(digest) && self.store.contains(digest) {
            return Ok(Vec::new());
        }
        let len = data.len() as u64;
        let victims = self.make_room(len, pinned, evictions)?;
        let stored = self.store.put_checked(digest, data);
        let mut lru = self.lru();
        lru.reserved -= len;
        if stored.is_ok() {
            lru.touch(*digest, len);
            if let Some(checked) = lru.lru.peek_mut(digest) {
                *checked = true;
            }
        }
        stored.map(|()| victims)
    }

    fn get_unchecked(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        let data = self.store.get_unchecked(digest)?;
        match &data {
            Some(d) => self.lru().touch(*digest, d.len() as u64),
            None => self.lru().forget(digest),
        }
        Ok(data)
    }

    fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        self.store.remove(digest)?;
        self.lru().forget(digest);
        Ok(())
    }
}

impl Tier<MemStore> {
    /// Keeps a copy whose check is its reader's (the memory tier of a disk cache), evicting
    /// whatever it must: nothing there is pinned.
    fn put_copy(&self, digest: &Digest, data: &[u8], evictions: &AtomicU64) {
        let len = data.len() as u64;
        if self.quota.is_some_and(|q| len > q) || self.make_room(len, &HashSet::new(), evictions).is_err() {
            return;
        }
        self.store.put_unchecked(digest, data);
        let mut lru = self.lru();
        lru.reserved -= len;
        lru.touch(*digest, len);
    }
}

/// How a tier is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierUsage {
    pub quota: Option<u64>,
    pub used: u64,
}

/// Counters since the spoke started.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    /// Chunks evicted from each tier (from memory: copies of hot chunks, or in memory-only
    /// mode the chunks themselves).
    pub memory_evictions: AtomicU64,
    pub disk_evictions: AtomicU64,
}

impl CacheStats {
    /// Evictions from both tiers.
    pub fn evictions(&self) -> u64 {
        self.memory_evictions.load(Ordering::Relaxed) + self.disk_evictions.load(Ordering::Relaxed)
    }
}

pub struct TieredStore {
    memory: Option<Tier<MemStore>>,
    disk: Option<Tier<DiskStore>>,
    /// Chunks read from disk once since they were last kept in memory: a second read makes a
    /// chunk hot, and only hot chunks are copied into memory (a reader going through a
    /// version once gains nothing from the copy).
    read_once: Mutex<HashSet<Digest>>,
    pinned: RwLock<HashSet<Digest>>,
    pub stats: CacheStats,
}

impl TieredStore {
    /// Opens the tiers `config` asks for; the disk tier lives in `dir` (and is not opened,
    /// nor created, in memory-only mode).
    pub fn open(dir: &Path, config: &CacheConfig) -> Result<Self, CacheError> {
        let memory =
            (config.memory.0 > 0).then(|| Tier::new(MemStore::default(), Some(config.memory.0), config)).transpose()?;
        let disk = if config.memory_only {
            None
        } else {
            Some(Tier::new(DiskStore::open(dir)?, config.disk.map(|s| s.0), config)?)
        };
        Ok(Self { memory, disk, read_once: Mutex::default(), pinned: RwLock::default(), stats: CacheStats::default() })
    }

    /// Whether a chunk read from disk is hot: read before since it was last in memory.
    fn hot(&self, digest: &Digest) -> bool {
        /// Bounds the set's memory: about 4 MiB of digests.
        const REMEMBERED: usize = 100_000;
        let mut seen = self.read_once.lock().unwrap_or_else(|e| e.into_inner());
        if seen.remove(digest) {
            return true;
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(*digest);
        false
    }

    /// The chunks that must not be evicted: those of the active and rolling-out versions.
    pub fn set_pinned(&self, pinned: HashSet<Digest>) {
        *self.pinned.write().unwrap_or_else(|e| e.into_inner()) = pinned;
    }

    /// The chunks pinned now.
    #[cfg(test)]
    pub(crate) fn pinned(&self) -> HashSet<Digest> {
        self.pinned.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn memory_usage(&self) -> Option<TierUsage> {
        self.memory.as_ref().map(|t| TierUsage { quota: t.quota, used: t.lru().used() })
    }

    pub fn disk_usage(&self) -> Option<TierUsage> {
        self.disk.as_ref().map(|t| TierUsage { quota: t.quota, used: t.lru().used() })
    }

    /// What the FUSE holder's whole copies take on disk now, `bytes`, counted in the disk
    /// quota: the chunks get the rest ([`chunk_capacity`]); if that takes the tier above its
    /// high watermark, unpinned chunks are evicted now, oldest first, down to its low
    /// watermark. Returns how many were evicted. Nothing changes without a disk quota.
    pub fn set_whole_files(&self, bytes: u64) -> Result<usize, CacheError> {
        let Some(disk) = &self.disk else { return Ok(0) };
        disk.outside.store(bytes, Ordering::Relaxed);
        let pinned = self.pinned.read().unwrap_or_else(|e| e.into_inner());
        let evicted = disk.shrink(&pinned, &self.stats.disk_evictions)?;
        if let Some(memory) = &self.memory {
            for digest in &evicted {
                memory.remove(digest)?;
            }
        }
        Ok(evicted.len())
    }

    /// What of the disk quota the whole copies may take now ([`whole_files_room`]): none
    /// without a disk quota. Sums the pinned chunks' sizes (one look-up per pinned chunk).
    pub fn whole_files_room(&self) -> Option<u64> {
        let disk = self.disk.as_ref()?;
        let quota = disk.quota?;
        let pinned = self.pinned.read().unwrap_or_else(|e| e.into_inner());
        let lru = disk.lru();
        let pinned_bytes: u64 = pinned.iter().filter_map(|d| lru.lru.weight_of(d)).sum();
        Some(whole_files_room(quota, pinned_bytes))
    }

    /// What the whole copies take of the disk quota, as last reported.
    pub fn whole_files(&self) -> u64 {
        self.disk.as_ref().map_or(0, |t| t.outside.load(Ordering::Relaxed))
    }

    /// The most bytes a version may have and fit below the high watermark of the tier chunks
    /// are kept in (a disk quota less what whole copies take; a disk tier with no quota: what
    /// the filesystem of `dir` has free, plus what the tier holds).
    pub fn room(&self, dir: &Path) -> u64 {
        let (quota, used, high) = match self.keeping() {
            Keeping::Disk(t) => (t.capacity(), t.lru().used(), t.high),
            Keeping::Memory(t) => (t.capacity(), t.lru().used(), t.high),
        };
        let capacity = quota.unwrap_or_else(|| free_bytes(dir).map_or(u64::MAX, |free| free.saturating_add(used)));
        (capacity as f64 * high) as u64
    }

    /// The tier chunks are kept in: disk, or memory in memory-only mode.
    fn keeping(&self) -> Keeping<'_> {
        match (&self.disk, &self.memory) {
            (Some(disk), _) => Keeping::Disk(disk),
            (None, Some(memory)) => Keeping::Memory(memory),
            (None, None) => unreachable!("memory-only needs a memory tier (checked by CacheConfig::validate)"),
        }
    }
}

/// Bytes free for unprivileged use on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

enum Keeping<'a> {
    Disk(&'a Tier<DiskStore>),
    Memory(&'a Tier<MemStore>),
}

impl ChunkStore for TieredStore {
    fn contains(&self, digest: &Digest) -> bool {
        match self.keeping() {
            Keeping::Disk(t) => t.store.contains(digest),
            Keeping::Memory(t) => t.store.contains(digest),
        }
    }

    fn get_unchecked(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        if let Some(memory) = &self.memory
            && let Some(data) = memory.get_unchecked(digest)?
        {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            // A chunk hot in memory is hot on disk too: it is not the disk's to evict first.
            if let Some(disk) = &self.disk {
                disk.lru().refresh(digest);
            }
            return Ok(Some(data));
        }
        let Some(disk) = &self.disk else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let Some(data) = disk.get_unchecked(digest)? else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        // Hot chunks are served from memory next time; the memory tier of a disk cache holds
        // copies only, so nothing there is pinned. A digest mismatch is the reader's to find
        // (it then discards the chunk from both tiers).
        if let Some(memory) = &self.memory
            && self.hot(digest)
        {
            memory.put_copy(digest, &data, &self.stats.memory_evictions);
        }
        Ok(Some(data))
    }

    fn put_checked(&self, digest: &Digest, data: &[u8]) -> Result<(), CacheError> {
        let pinned = self.pinned.read().unwrap_or_else(|e| e.into_inner());
        match self.keeping() {
            Keeping::Disk(t) => {
                // What leaves the disk leaves memory too: `contains` must not say no while a
                // copy still answers reads.
                for evicted in t.put_checked(digest, data, &pinned, &self.stats.disk_evictions)? {
                    if let Some(memory) = &self.memory {
                        memory.remove(&evicted)?;
                    }
                }
                Ok(())
            }
            Keeping::Memory(t) => t.put_checked(digest, data, &pinned, &self.stats.memory_evictions).map(drop),
        }
    }

    fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        if let Some(memory) = &self.memory {
            memory.remove(digest)?;
        }
        if let Some(disk) = &self.disk {
            disk.remove(digest)?;
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<(Digest, u64)>, CacheError> {
        match self.keeping() {
            Keeping::Disk(t) => t.store.list(),
            Keeping::Memory(t) => t.store.list(),
        }
    }

    fn known_good(&self, digest: &Digest) -> bool {
        match self.keeping() {
            Keeping::Disk(t) => t.lru().checked(digest),
            Keeping::Memory(t) => t.lru().checked(digest),
        }
    }
}

#[cfg(test)]
mod tests;
