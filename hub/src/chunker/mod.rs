//! Content-defined chunking (FastCDC 2020) and BLAKE3 naming of a stream of bytes, on every core.
//!
//! [`Chunker::chunk_on`] reads any [`Read`] once, on the calling thread, into blocks of a fixed
//! size, and hands the work on those bytes to a [`HashPool`]: workers scan each block for
//! candidate cut points, the calling thread walks the candidates in file order and cuts chunks,
//! and workers hash the chunks with BLAKE3. Results are put back in file order. Blocks come from
//! a few buffers that are recycled when the last task using one is done, so a file of any size
//! is chunked in a memory of a few blocks per file (see [`Chunker::memory`]), whatever the
//! number of workers or the speed of the reader.
//!
//! Why cut points can be found in parallel and still be exactly FastCDC's: FastCDC's gear hash
//! shifts by one bit per byte and its masks only test bits below 48, so whether a position
//! passes a mask depends only on the `W` bytes that end there (`W` = 1 + the masks' highest
//! bit). Workers therefore scan any range of the file on their own (starting `W` bytes early)
//! for the positions that could pass either of FastCDC's two masks; the walk then applies
//! FastCDC's rules to them: a chunk starting at `s` ends at the first position at least
//! `min_size` in that passes the stricter mask before `avg_size`, the looser one after, or at
//! `max_size`. Only the first `W` positions after `min_size` are special (FastCDC's hash starts
//! from zero there, so it has seen fewer than `W` bytes): the walk hashes those itself. A
//! range where candidates come too often to list (long runs of one byte value, say) is
//! left to the walk, which then hashes it itself as FastCDC would. Cut points depend neither on
//! how the input is split into reads nor on the number of workers; the tests compare them with
//! FastCDC's own `cut` over the whole input.
//!
//! Inside: `walk` is one call on its calling thread (reading, walking, ordering results,
//! settling every task before it returns), `scan` the candidate search a worker runs over a
//! range, [`pool`] the threads; the block and the gear hash they share are here.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use aqueduct_proto::{ChunkRef, ChunkerParams};
use crossbeam_channel::Sender;
use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};

use pool::HashPool;
use walk::Walk;

pub mod pool;
mod scan;
mod walk;

/// How [`Chunker::chunk_on`] divides its work (smaller in tests, to cross every boundary).
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Bytes read from the source per block.
    block: usize,
    /// Positions one scan task covers (a block is scanned by several workers at once).
    scan: usize,
    /// A hash task gathers consecutive chunks until they hold this many bytes.
    batch: usize,
}

const SIZES: Sizes = Sizes { block: 4 << 20, scan: 1 << 20, batch: 1 << 20 };

/// FastCDC's gear table (the one its `cut` uses), copied once.
static GEAR: LazyLock<[u64; 256]> = LazyLock::new(|| {
    let mut gear = [0u64; 256];
    gear.copy_from_slice(&get_gear_with_seed(0).0);
    gear
});

#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    /// Bytes that decide whether a position passes a mask: 1 + the masks' highest bit.
    window: usize,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        let window = (u64::BITS - (mask_s | mask_l).leading_zeros()) as usize;
        Self { params, mask_s, mask_l, window }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// What a scan looks for: the bits both masks test, so that a position passing either
    /// mask is a candidate (FastCDC's masks for small averages are not nested).
    fn scan_mask(&self) -> u64 {
        self.mask_s & self.mask_l
    }

    /// Whether workers list candidates: not when the masks share so few bits that every few
    /// positions would be one (averages of 1 KiB and below); the walk then hashes everything.
    fn scans(&self) -> bool {
        self.scan_mask().count_ones() >= 8
    }

    /// The most block buffers one [`Chunker::chunk_on`] holds at once, for a pool of `workers`
    /// threads and blocks of `block` bytes: enough for the walk to reach `max_size` past any chunk start while one more block is
    /// read, plus one block of read-ahead per two workers to keep them busy.
    fn buffers_of(&self, block: usize, workers: usize) -> usize {
        (self.params.max_size as usize).div_ceil(block) + 2 + workers.div_ceil(2)
    }

    /// The memory one [`Chunker::chunk_on`] holds for bytes at most, for a pool of `workers`
    /// threads, however large the input: its buffers (16 MiB for 2 workers with the default
    /// parameters; the candidates the scans list add at most 1/32 of that).
    pub fn memory(&self, workers: usize) -> usize {
        self.buffers_of(SIZES.block, workers) * (SIZES.block + self.window)
    }

    /// Chunks and hashes everything `reader` yields, on a pool of one worker per core that
    /// lives for this call (its threads are joined before it returns). See
    /// [`Chunker::chunk_on`].
    pub fn chunk(&self, reader: impl Read, progress: impl FnMut(u64)) -> io::Result<Vec<ChunkRef>> {
        self.chunk_on(&HashPool::per_core(), reader, progress)
    }

    /// Chunks and hashes everything `reader` yields, the scanning and hashing done by `pool`
    /// (which other calls may share). `progress` is called with the number of bytes newly read
    /// after each block. Returns the chunks, tiling the input. On a read error, returns that
    /// error once every task of this call has finished or been dropped: nothing of this call
    /// is left in the pool when it returns, and every buffer is back.
    pub fn chunk_on(&self, pool: &HashPool, reader: impl Read, progress: impl FnMut(u64)) -> io::Result<Vec<ChunkRef>> {
        self.chunk_sized(pool, SIZES, reader, progress)
    }

    fn chunk_sized(
        &self,
        pool: &HashPool,
        sizes: Sizes,
        mut reader: impl Read,
        mut progress: impl FnMut(u64),
    ) -> io::Result<Vec<ChunkRef>> {
        let mut walk = Walk::new(*self, pool, sizes);
        let outcome = walk.run(&mut reader, &mut progress);
        walk.settle(outcome.is_err());
        outcome?;
        walk.finish()
    }
}

/// Bytes of the file from `start`, after `lookback` bytes copied from before it (for the scan
/// of its first positions). Its buffer goes back to the walk's free list when the last task
/// holding it is done.
struct Block {
    start: u64,
    lookback: usize,
    len: usize,
    data: Vec<u8>,
    free: Sender<Vec<u8>>,
}

impl Block {
    fn bytes(&self) -> &[u8] {
        &self.data[self.lookback..self.lookback + self.len]
    }

    fn end(&self) -> u64 {
        self.start + self.len as u64
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let _ = self.free.send(std::mem::take(&mut self.data));
    }
}

/// The slices of `blocks` (consecutive, in file order) that hold the file's bytes `range`.
fn slices<'a>(blocks: impl IntoIterator<Item = &'a Arc<Block>>, range: Range<u64>) -> impl Iterator<Item = &'a [u8]> {
    blocks.into_iter().filter_map(move |b| {
        let (from, to) = (range.start.max(b.start), range.end.min(b.end()));
        (from < to).then(|| &b.bytes()[(from - b.start) as usize..(to - b.start) as usize])
    })
}

/// One step of FastCDC's gear hash.
#[inline(always)]
fn step(gear: &[u64; 256], hash: u64, byte: u8) -> u64 {
    (hash << 1).wrapping_add(gear[byte as usize])
}

#[cfg(test)]
mod tests;
