//! Chunk reads from the sources, shared by every region: the on-prem storage is read once for
//! a chunk however many regions want it at the same time.
//!
//! A read is one flight per chunk digest ([`aqueduct_core::singleflight`]): regions asking for
//! a chunk while it is being read wait for that read. What was read, and verified against its
//! digest, stays in a bounded cache (a weighted LRU, `limits.relay_cache` bytes) for regions
//! that ask a little later, so rollouts to several regions at once cost the source one read
//! of each chunk as long as the regions are within the cache's size of each other. A chunk
//! whose bytes do not match its digest is never cached; every region asking for it is told
//! the source changed. The cache is keyed by digest alone: bytes are the same whichever
//! dataset or source they came from, and who may read what is checked before a read
//! (`relay::SpokeService::authorize`), never here.
//!
//! A source may bound how hard replication reads it, over all regions together (its
//! `read_rate` and `max_reads` options): each read takes a turn among the source's reads at
//! once, then waits for the source's budget, so that the on-prem storage never serves
//! replication faster than it was told, however many regions roll out. `aq source set`
//! changes those limits while the hub runs ([`SourceReads::set_limits`]): reads from then on
//! take the new ones.
//!
//! What the source was asked for, and what the cache spared it, is counted in the hub's
//! metrics (`aqueduct_hub_source_read_bytes`, `aqueduct_hub_source_reads`,
//! `aqueduct_hub_relay_cache_hits`).

use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use aqueduct_core::budget::Budget;
use aqueduct_core::lru::Lru;
use aqueduct_core::singleflight::SingleFlight;
use aqueduct_proto::Digest;
use bytes::Bytes;
use tracing::debug;

use crate::metrics::HubMetrics;
use crate::source::{ReadLimits, Source, read_range};
use tokio::sync::Semaphore;

/// Why a chunk could not be read.
#[derive(Clone, Debug)]
pub enum ReadFailure {
    /// The source did not give the bytes: its error, as the status the caller gets.
    Source(tonic::Code, String),
    /// The source gave bytes that are not the chunk: it changed after the snapshot.
    Changed,
}

/// Where a chunk is: a byte range of an object of a source.
pub struct ChunkAt {
    pub source: Arc<dyn Source>,
    pub source_name: String,
    pub object: String,
    pub offset: u64,
    pub length: u32,
}

/// What a read brings: the chunk's bytes, verified, or why not.
type Read = Result<Bytes, ReadFailure>;

/// What one source may be asked for, over all regions: its read budget and reads at once.
struct SourceLimiter {
    limits: ReadLimits,
    budget: Option<Budget>,
    reads: Option<Arc<Semaphore>>,
}

impl SourceLimiter {
    fn new(limits: ReadLimits) -> Self {
        Self {
            limits,
            budget: limits.rate.map(Budget::new),
            reads: limits.concurrent.map(|n| Arc::new(Semaphore::new(n))),
        }
    }
}

/// The shared reads and their cache.
pub struct SourceReads {
    flights: SingleFlight<Digest, Read>,
    /// Per source name.
    limiters: Mutex<HashMap<String, Arc<SourceLimiter>>>,
    cache: Arc<Mutex<Lru<Digest, Bytes>>>,
    /// Limits set while the hub runs (`aq source set`), per source name: they replace the ones
    /// the caller read with the version's index.
    changed: Mutex<HashMap<String, ReadLimits>>,
    metrics: Arc<HubMetrics>,
}

impl Default for SourceReads {
    fn default() -> Self {
        Self::new(crate::config::LimitsConfig::default().relay_cache.0, Arc::default())
    }
}

impl SourceReads {
    /// Reads shared, with a cache of up to `capacity` bytes (0: flights only, no cache),
    /// counted in `metrics`.
    pub fn new(capacity: u64, metrics: Arc<HubMetrics>) -> Self {
        Self {
            flights: SingleFlight::new(),
            limiters: Mutex::default(),
            cache: Arc::new(Mutex::new(Lru::new(capacity))),
            changed: Mutex::default(),
            metrics,
        }
    }

    /// Source `name`'s limits are `limits` from now on (`aq source set`): the next read of it
    /// takes them; reads under way finish under the old ones.
    pub fn set_limits(&self, name: &str, limits: ReadLimits) {
        self.changed.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), limits);
    }

    /// The limiter of source `name`, made anew when its limits changed (reads under way keep
    /// the one they took).
    fn limiter(&self, name: &str, limits: ReadLimits) -> Arc<SourceLimiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        match limiters.get(name) {
            Some(l) if l.limits == limits => l.clone(),
            _ => {
                let made = Arc::new(SourceLimiter::new(limits));
                limiters.insert(name.to_string(), made.clone());
                made
            }
        }
    }

    /// The bytes of chunk `digest` at `at`: from the cache, from a read under way, or read now
    /// (within the source's `limits`, and verified) for everyone.
    pub async fn read(&self, digest: Digest, at: ChunkAt, limits: ReadLimits) -> Read {
        if let Some(data) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&digest).cloned() {
            self.metrics.relay_cache_hit();
            return Ok(data);
        }
        let limits =
            self.changed.lock().unwrap_or_else(|e| e.into_inner()).get(&at.source_name).copied().unwrap_or(limits);
        let (cache, metrics) = (self.cache.clone(), self.metrics.clone());
        let limiter = self.limiter(&at.source_name, limits);
        self.flights
            .run(digest, move || {
                async move {
                    // The source's own limits, over every region: a turn, then its budget.
                    let _turn = match &limiter.reads {
                        Some(reads) => reads.clone().acquire_owned().await.ok(),
                        None => None,
                    };
                    if let Some(budget) = &limiter.budget {
                        budget.take(at.length as usize).await;
                    }
                    let range = at.offset..at.offset + u64::from(at.length);
                    let data = read_range(at.source.as_ref(), &at.object, range).await.map_err(|e| {
                        let status = tonic::Status::from(e);
                        ReadFailure::Source(status.code(), status.message().to_string())
                    })?;
                    metrics.source_read(&at.source_name, data.len() as u64);
                    if Digest::of(&data) != digest {
                        return Err(ReadFailure::Changed);
                    }
                    let data = Bytes::from(data);
                    let weight = data.len() as u64;
                    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(digest, data.clone(), weight);
                    debug!(digest = %digest.short(), len = weight, "chunk read from the source");
                    Ok(data)
                }
            })
            .await
    }
}
