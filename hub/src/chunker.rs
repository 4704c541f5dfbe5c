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

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;

use aqueduct_proto::{ChunkRef, ChunkerParams, Digest};
use crossbeam_channel::{Receiver, Sender, never, select, unbounded};
use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};
use tracing::warn;

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

/// A scan that finds more than one candidate per this many positions leaves its range to the
/// walk instead of listing them (bounds the lists' memory to 1/32 of the bytes scanned).
const DENSE: usize = 256;

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

/// A pool of threads that scan and hash for [`Chunker::chunk_on`]. A snapshot shares one
/// among all the files it reads at once, so that every core is busy however many files there
/// are (one huge file included) and the machine is not oversubscribed: the threads calling
/// `chunk_on` only read and walk; the heavy work runs here, on as many threads as cores.
/// Scans come before hashes (the walk waits for scans). Dropping the pool joins its threads.
pub struct HashPool {
    urgent: Option<Sender<Task>>,
    normal: Option<Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

type Task = Box<dyn FnOnce() + Send>;

impl HashPool {
    /// A pool of `workers` threads. With 0 (or if no thread can be started), tasks run on the
    /// thread that submits them.
    pub fn new(workers: usize) -> Self {
        let (urgent, urgent_rx) = unbounded::<Task>();
        let (normal, normal_rx) = unbounded::<Task>();
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (urgent_rx, normal_rx) = (urgent_rx.clone(), normal_rx.clone());
            match std::thread::Builder::new().name(format!("aq-hash-{i}")).spawn(move || work(urgent_rx, normal_rx)) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    warn!(error = %e, started = threads.len(), wanted = workers, "could not start a hashing thread");
                    break;
                }
            }
        }
        Self { urgent: Some(urgent), normal: Some(normal), threads }
    }

    /// A pool of one worker per core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The number of threads (0: tasks run on the submitting thread).
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    fn submit(&self, urgent: bool, task: Task) {
        let queue = if urgent { &self.urgent } else { &self.normal };
        match queue {
            Some(queue) if !self.threads.is_empty() => {
                if let Err(e) = queue.send(task) {
                    (e.into_inner())();
                }
            }
            _ => task(),
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.urgent.take();
        self.normal.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A worker: urgent tasks first, until both queues are closed. A task that panics is dropped
/// (its reply then says so), and the worker goes on.
fn work(urgent: Receiver<Task>, normal: Receiver<Task>) {
    let run = |task: Task| drop(std::panic::catch_unwind(AssertUnwindSafe(task)));
    let closed = never();
    let (mut urgent_open, mut normal_open) = (true, true);
    while urgent_open || normal_open {
        if let Ok(task) = urgent.try_recv() {
            run(task);
            continue;
        }
        select! {
            recv(if urgent_open { &urgent } else { &closed }) -> task => match task {
                Ok(task) => run(task),
                Err(_) => urgent_open = false,
            },
            recv(if normal_open { &normal } else { &closed }) -> task => match task {
                Ok(task) => run(task),
                Err(_) => normal_open = false,
            },
        }
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

/// What a task sends back; every task sends exactly one.
enum Done {
    /// Candidates of scan `seq` (file positions, in order), or `None`: too many, left to the walk.
    Scanned { seq: u64, found: Option<Vec<u64>> },
    /// Digests of the chunks `first..` (in order).
    Hashed { first: usize, digests: Vec<Digest> },
    /// Not done: the call was cancelled.
    Skipped,
    /// The task panicked.
    Lost,
}

/// Sends a task's [`Done`]; sends [`Done::Lost`] if the task ends without sending (it panicked).
struct Reply(Option<Sender<Done>>);

impl Reply {
    fn send(mut self, done: Done) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(done);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Done::Lost);
        }
    }
}

/// A scanned range of the file (from the previous one's end) and what its scan found.
struct Scanned {
    end: u64,
    /// Candidates in order, or `None`: the walk hashes this range itself.
    found: Option<VecDeque<u64>>,
}

/// Chunks cut and not yet sent to be hashed, with the blocks that hold them.
#[derive(Default)]
struct Batch {
    blocks: Vec<Arc<Block>>,
    chunks: Vec<(u64, u32)>,
    first: usize,
    bytes: usize,
}

/// The state of one [`Chunker::chunk_on`]: reading, walking, and the tasks in flight.
struct Walk<'a> {
    chunker: Chunker,
    sizes: Sizes,
    gear: &'static [u64; 256],
    pool: &'a HashPool,
    cancel: Arc<AtomicBool>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    /// Tasks submitted and not yet answered.
    outstanding: usize,
    free_tx: Sender<Vec<u8>>,
    free_rx: Receiver<Vec<u8>>,
    /// Buffers allocated so far, at most `max_buffers`.
    buffers: usize,
    max_buffers: usize,
    /// Blocks that hold bytes from the next chunk's start on, in file order.
    blocks: VecDeque<Arc<Block>>,
    read_to: u64,
    eof: bool,
    /// The last bytes read (the next block's lookback).
    tail: Vec<u8>,
    /// Scans submitted and not yet applied: the end of each, in order.
    scan_ends: VecDeque<u64>,
    next_scan: u64,
    /// Scans answered ahead of an earlier one.
    early: BTreeMap<u64, Option<Vec<u64>>>,
    /// Scanned ranges, in order, from where the next chunk's search starts.
    scanned: VecDeque<Scanned>,
    scanned_to: u64,
    /// Start of the next chunk.
    at: u64,
    chunks: Vec<(u64, u32)>,
    digests: Vec<Option<Digest>>,
    batch: Batch,
    lost: bool,
}

impl<'a> Walk<'a> {
    fn new(chunker: Chunker, pool: &'a HashPool, sizes: Sizes) -> Self {
        let (done_tx, done_rx) = unbounded();
        let max_buffers = chunker.buffers_of(sizes.block, pool.workers());
        let (free_tx, free_rx) = crossbeam_channel::bounded(max_buffers);
        Self {
            chunker,
            sizes,
            gear: &GEAR,
            pool,
            cancel: Arc::new(AtomicBool::new(false)),
            done_tx,
            done_rx,
            outstanding: 0,
            free_tx,
            free_rx,
            buffers: 0,
            max_buffers,
            blocks: VecDeque::new(),
            read_to: 0,
            eof: false,
            tail: Vec::new(),
            scan_ends: VecDeque::new(),
            next_scan: 0,
            early: BTreeMap::new(),
            scanned: VecDeque::new(),
            scanned_to: 0,
            at: 0,
            chunks: Vec::new(),
            digests: Vec::new(),
            batch: Batch::default(),
            lost: false,
        }
    }

    fn run(&mut self, reader: &mut impl Read, progress: &mut impl FnMut(u64)) -> io::Result<()> {
        loop {
            while let Ok(done) = self.done_rx.try_recv() {
                self.apply(done);
            }
            if self.lost {
                return Err(lost());
            }
            if self.eof && self.at == self.read_to {
                self.flush();
                return Ok(());
            }
            if let Some(n) = self.try_cut() {
                self.emit(n);
                continue;
            }
            // Nothing to cut before more bytes are read or scanned: hand the workers what is
            // cut so far, then read ahead if a buffer is at hand, else wait for one or a result.
            self.flush();
            let can_read = !self.eof && self.blocks.len() < self.max_buffers;
            if can_read && let Some(buf) = self.spare_buffer() {
                self.read_block(buf, reader, progress)?;
                continue;
            }
            let (done, free) = (self.done_rx.clone(), if can_read { self.free_rx.clone() } else { never() });
            select! {
                // `done_tx` is held by `self`: that channel never closes here.
                recv(done) -> done => if let Ok(done) = done {
                    self.apply(done);
                },
                recv(free) -> buf => if let Ok(buf) = buf {
                    self.read_block(buf, reader, progress)?;
                },
            }
        }
    }

    /// A free buffer, or a new one while fewer than `max_buffers` exist.
    fn spare_buffer(&mut self) -> Option<Vec<u8>> {
        if let Ok(buf) = self.free_rx.try_recv() {
            return Some(buf);
        }
        (self.buffers < self.max_buffers).then(|| {
            self.buffers += 1;
            vec![0u8; self.chunker.window + self.sizes.block]
        })
    }

    /// Fills `buf` from `reader` (until full or the end of the input) and submits its scans.
    fn read_block(
        &mut self,
        mut buf: Vec<u8>,
        reader: &mut impl Read,
        progress: &mut impl FnMut(u64),
    ) -> io::Result<()> {
        let (lookback, block) = (self.tail.len(), self.sizes.block);
        buf.resize(lookback + block, 0);
        buf[..lookback].copy_from_slice(&self.tail);
        let mut len = 0;
        while len < block {
            match reader.read(&mut buf[lookback + len..lookback + block]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = self.free_tx.send(buf);
                    return Err(e);
                }
            }
        }
        progress(len as u64);
        if len == 0 {
            let _ = self.free_tx.send(buf);
            return Ok(());
        }
        let keep = self.chunker.window.min(lookback + len);
        self.tail.clear();
        self.tail.extend_from_slice(&buf[lookback + len - keep..lookback + len]);
        let block = Arc::new(Block { start: self.read_to, lookback, len, data: buf, free: self.free_tx.clone() });
        self.read_to = block.end();
        self.blocks.push_back(block.clone());
        let mut from = 0;
        while from < len {
            let to = (from + self.sizes.scan).min(len);
            let end = block.start + to as u64;
            if self.chunker.scans() {
                self.scan_ends.push_back(end);
                let (seq, block, chunker) = (self.next_scan, block.clone(), self.chunker);
                let (reply, cancel) = (self.reply(), self.cancel.clone());
                self.next_scan += 1;
                self.outstanding += 1;
                self.pool.submit(
                    true,
                    Box::new(move || {
                        let found = (!cancel.load(Ordering::Relaxed))
                            .then(|| scan(&block, from..to, chunker.window, chunker.scan_mask()));
                        drop(block); // the buffer is free before the walk hears of it
                        reply.send(match found {
                            Some(found) => Done::Scanned { seq, found },
                            None => Done::Skipped,
                        });
                    }),
                );
            } else {
                self.scanned.push_back(Scanned { end, found: None });
                self.scanned_to = end;
            }
            from = to;
        }
        Ok(())
    }

    fn reply(&self) -> Reply {
        Reply(Some(self.done_tx.clone()))
    }

    fn apply(&mut self, done: Done) {
        self.outstanding = self.outstanding.saturating_sub(1);
        match done {
            Done::Scanned { seq, found } => {
                self.early.insert(seq, found);
                loop {
                    let next = self.next_scan - self.scan_ends.len() as u64;
                    let Some(found) = self.early.remove(&next) else { break };
                    let Some(end) = self.scan_ends.pop_front() else { break };
                    self.scanned.push_back(Scanned { end, found: found.map(VecDeque::from) });
                    self.scanned_to = end;
                }
            }
            Done::Hashed { first, digests } => {
                for (slot, digest) in self.digests.iter_mut().skip(first).zip(digests) {
                    *slot = Some(digest);
                }
            }
            Done::Skipped => {}
            Done::Lost => self.lost = true,
        }
    }

    /// The length of the chunk at `self.at`, once everything it depends on is read and
    /// scanned: what FastCDC 2020's `cut` returns over the bytes from `self.at` (see the
    /// module's comment), at least 1.
    fn try_cut(&mut self) -> Option<usize> {
        let p = self.chunker.params;
        let (min, avg, max) = (p.min_size as usize, p.avg_size as usize, p.max_size as usize);
        let len = usize::try_from(self.read_to - self.at).unwrap_or(usize::MAX);
        if len == 0 || (len < max && !self.eof) {
            return None;
        }
        if len <= min {
            return Some(len);
        }
        let remaining = len.min(max);
        if self.scanned_to < self.at + remaining as u64 {
            return None;
        }
        let center = if remaining < avg { remaining } else { avg };
        // FastCDC tests positions two by two from `min`: odd bounds are rounded down.
        let (start, strict_end, end) = (min / 2 * 2, center / 2 * 2, remaining / 2 * 2);
        let (mask_s, mask_l, window) = (self.chunker.mask_s, self.chunker.mask_l, self.chunker.window);
        let scan_mask = self.chunker.scan_mask();
        let mask = |i: usize| if i < strict_end { mask_s } else { mask_l };
        // The first positions: FastCDC's hash starts from zero at `start`.
        let head_end = (start + window).min(end);
        let mut hash = 0u64;
        let mut i = start;
        for bytes in slices(&self.blocks, self.at + start as u64..self.at + head_end as u64) {
            for &b in bytes {
                hash = step(self.gear, hash, b);
                if hash & mask(i) == 0 {
                    return Some(i.max(1));
                }
                i += 1;
            }
        }
        // The rest: what the scans found, or hashed here where they left a range to the walk.
        let (from, to) = (self.at + head_end as u64, self.at + end as u64);
        while self.scanned.front().is_some_and(|s| s.end <= from) {
            self.scanned.pop_front();
        }
        let mut range_start = from;
        for range in &mut self.scanned {
            if range_start >= to {
                break;
            }
            let range_end = range.end.min(to);
            match &mut range.found {
                Some(found) => {
                    while found.front().is_some_and(|&c| c < from) {
                        found.pop_front();
                    }
                    for &c in found.iter().take_while(|&&c| c < range_end) {
                        let i = (c - self.at) as usize;
                        let m = mask(i);
                        if m == scan_mask || window_hash(self.gear, &self.blocks, c, window) & m == 0 {
                            return Some(i.max(1));
                        }
                    }
                }
                None => {
                    // Hashed from `window` bytes before, so that every position tested has
                    // seen `window` bytes, as in the scans.
                    let mut hash = 0u64;
                    let mut pos = range_start - window as u64;
                    for bytes in slices(&self.blocks, pos..range_end) {
                        for &b in bytes {
                            hash = step(self.gear, hash, b);
                            if pos >= range_start {
                                let i = (pos - self.at) as usize;
                                if hash & mask(i) == 0 {
                                    return Some(i.max(1));
                                }
                            }
                            pos += 1;
                        }
                    }
                }
            }
            range_start = range_end;
        }
        Some(remaining)
    }

    /// Records the chunk of `n` bytes at `self.at` and adds it to the batch to hash.
    fn emit(&mut self, n: usize) {
        let (offset, end) = (self.at, self.at + n as u64);
        self.chunks.push((offset, n as u32));
        self.digests.push(None);
        if self.batch.chunks.is_empty() {
            self.batch.first = self.chunks.len() - 1;
        }
        self.batch.chunks.push((offset, n as u32));
        self.batch.bytes += n;
        for block in self.blocks.iter().filter(|b| b.start < end && b.end() > offset) {
            if !self.batch.blocks.last().is_some_and(|last| Arc::ptr_eq(last, block)) {
                self.batch.blocks.push(block.clone());
            }
        }
        self.at = end;
        while self.blocks.front().is_some_and(|b| b.end() <= self.at) {
            self.blocks.pop_front();
        }
        if self.batch.bytes >= self.sizes.batch {
            self.flush();
        }
    }

    /// Submits the chunks cut so far to be hashed.
    fn flush(&mut self) {
        if self.batch.chunks.is_empty() {
            return;
        }
        let Batch { blocks, chunks, first, .. } = std::mem::take(&mut self.batch);
        let (reply, cancel) = (self.reply(), self.cancel.clone());
        self.outstanding += 1;
        self.pool.submit(
            false,
            Box::new(move || {
                let digests = (!cancel.load(Ordering::Relaxed)).then(|| {
                    chunks.iter().map(|&(offset, len)| hash(slices(&blocks, offset..offset + u64::from(len)))).collect()
                });
                drop(blocks); // the buffers are free before the walk hears of it
                reply.send(match digests {
                    Some(digests) => Done::Hashed { first, digests },
                    None => Done::Skipped,
                });
            }),
        );
    }

    /// Waits until every task submitted has answered; after an error, tells them to stop
    /// first. Every buffer is then back.
    fn settle(&mut self, cancel: bool) {
        if cancel {
            self.cancel.store(true, Ordering::Relaxed);
            self.batch = Batch::default();
        }
        self.blocks.clear();
        while self.outstanding > 0 {
            match self.done_rx.recv() {
                Ok(done) => self.apply(done),
                Err(_) => break,
            }
        }
    }

    fn finish(self) -> io::Result<Vec<ChunkRef>> {
        if self.lost {
            return Err(lost());
        }
        self.chunks
            .iter()
            .zip(&self.digests)
            .map(|(&(offset, length), digest)| Ok(ChunkRef { digest: digest.ok_or_else(lost)?, offset, length }))
            .collect()
    }
}

fn lost() -> io::Error {
    io::Error::other("a chunking task panicked, so the chunk list is incomplete (a bug: please report it)")
}

/// BLAKE3 of bytes given in pieces (a chunk across blocks): the same digest as of them whole.
fn hash<'a>(mut parts: impl Iterator<Item = &'a [u8]>) -> Digest {
    match (parts.next(), parts.next()) {
        (Some(whole), None) => Digest::from(blake3::hash(whole)),
        (first, second) => {
            let mut hasher = blake3::Hasher::new();
            for part in first.into_iter().chain(second).chain(parts) {
                hasher.update(part);
            }
            Digest::from(hasher.finalize())
        }
    }
}

/// The gear hash of the `window` bytes that end at file position `at` (inclusive): its bits
/// below `window` are those of FastCDC's hash at `at` for a chunk whose hashing started at
/// least `window` bytes earlier.
fn window_hash(gear: &[u64; 256], blocks: &VecDeque<Arc<Block>>, at: u64, window: usize) -> u64 {
    let from = (at + 1).saturating_sub(window as u64);
    slices(blocks, from..at + 1).flatten().fold(0u64, |hash, &b| step(gear, hash, b))
}

/// One step of FastCDC's gear hash.
#[inline(always)]
fn step(gear: &[u64; 256], hash: u64, byte: u8) -> u64 {
    (hash << 1).wrapping_add(gear[byte as usize])
}

/// Lanes of [`scan`], and the bytes each steps at a time.
const LANES: usize = 2;
const GROUP: usize = 4;

/// A range is split into lanes only if each is at least this long.
const LANE_MIN: usize = 256;

/// The file positions in `range` (of `block`'s bytes) where the gear hash of the `window`
/// bytes ending there passes `mask`, in order; `None` if there are more than one per [`DENSE`]
/// positions. The range is cut in [`LANES`] parts hashed side by side (see [`lanes`]).
fn scan(block: &Block, range: Range<usize>, window: usize, mask: u64) -> Option<Vec<u64>> {
    let gear: &[u64; 256] = &GEAR;
    let limit = range.len() / DENSE + 1;
    // Indices into `block.data`, which holds `block.lookback` bytes before position 0.
    let (from, to) = (block.lookback + range.start, block.lookback + range.end);
    let data = &block.data[..to];
    let position = |index: usize| block.start + (index - block.lookback) as u64;
    let warm = |at: usize| data[at.saturating_sub(window)..at].iter().fold(0u64, |h, &b| step(gear, h, b));
    let mut found: [Vec<u64>; LANES] = Default::default();
    let mut count = 0;
    // Lanes of a multiple of `GROUP` bytes.
    let part = if to - from >= LANES * LANE_MIN { (to - from) / (LANES * GROUP) * GROUP } else { 0 };
    let starts: [usize; LANES] = std::array::from_fn(|lane| from + lane * part);
    let mut hashes = starts.map(warm);
    if part > 0 {
        let parts = starts.map(|start| &data[start..start + part]);
        let mut i = 0;
        loop {
            i = lanes(&GEARS, parts, &mut hashes, mask, i);
            if i >= part {
                break;
            }
            // A lane passes at `i`: record every lane that does, then go on one byte at a
            // time to the next group, where `lanes` takes over again.
            let shift = (GROUP - 1 - i % GROUP) as u32;
            for hash in &mut hashes {
                *hash >>= shift;
            }
            loop {
                for (lane, hash) in hashes.iter().enumerate() {
                    if hash & mask == 0 {
                        found[lane].push(position(starts[lane] + i));
                        count += 1;
                    }
                }
                if count > limit {
                    return None;
                }
                i += 1;
                if i % GROUP == 0 {
                    break;
                }
                for (hash, part) in hashes.iter_mut().zip(parts) {
                    *hash = step(gear, *hash, part[i]);
                }
            }
        }
    }
    // The last lane goes on alone over what the lanes leave (all of a short range).
    let rest = from + LANES * part;
    let mut hash = hashes[LANES - 1];
    for (i, &b) in data[rest..to].iter().enumerate() {
        hash = step(gear, hash, b);
        if hash & mask == 0 {
            found[LANES - 1].push(position(rest + i));
            count += 1;
            if count > limit {
                return None;
            }
        }
    }
    let mut found = found.into_iter();
    let mut all = found.next().unwrap_or_default();
    all.reserve(count - all.len());
    found.for_each(|lane| all.extend(lane));
    Some(all)
}

/// FastCDC's gear table shifted left by 0 to `GROUP - 1` bits.
static GEARS: LazyLock<[[u64; 256]; GROUP]> = LazyLock::new(|| std::array::from_fn(|k| GEAR.map(|g| g << k)));

/// Steps one gear hash per lane (lanes of one length, a multiple of [`GROUP`]), side by side,
/// from index `i` (a multiple of `GROUP`) until one passes `mask` at some index (returned) or
/// the lanes end (their length is returned). Side by side, because each hash is a chain of
/// dependent additions and independent chains keep the core busy; a group of bytes at a time,
/// to shift once per group: each byte's entry is added already shifted, so after the `j`-th
/// byte of a group the hashes hold the hash shifted left by `GROUP - 1 - j`, tested against
/// the mask shifted alike, and that is how they are left at a returned index (bits shifted out
/// are above every mask). Kept apart from [`scan`] so that its variables stay in registers,
/// and written out plainly so that test builds (not optimised) run it fast enough.
#[inline(never)]
fn lanes(
    gears: &[[u64; 256]; GROUP],
    parts: [&[u8]; LANES],
    hashes: &mut [u64; LANES],
    mask: u64,
    mut i: usize,
) -> usize {
    let [a, b] = parts;
    let n = a.len().min(b.len()) / GROUP * GROUP;
    let [g0, g1, g2, g3] = gears;
    let (m1, m2, m3) = (mask << 1, mask << 2, mask << 3);
    let [mut x, mut y] = *hashes;
    let groups = a[i.min(n)..n].chunks_exact(GROUP).zip(b[i.min(n)..n].chunks_exact(GROUP));
    for (ga, gb) in groups {
        x = (x << 4).wrapping_add(g3[ga[0] as usize]);
        y = (y << 4).wrapping_add(g3[gb[0] as usize]);
        if (x & m3 == 0) | (y & m3 == 0) {
            break;
        }
        x = x.wrapping_add(g2[ga[1] as usize]);
        y = y.wrapping_add(g2[gb[1] as usize]);
        if (x & m2 == 0) | (y & m2 == 0) {
            i += 1;
            break;
        }
        x = x.wrapping_add(g1[ga[2] as usize]);
        y = y.wrapping_add(g1[gb[2] as usize]);
        if (x & m1 == 0) | (y & m1 == 0) {
            i += 2;
            break;
        }
        x = x.wrapping_add(g0[ga[3] as usize]);
        y = y.wrapping_add(g0[gb[3] as usize]);
        if (x & mask == 0) | (y & mask == 0) {
            i += 3;
            break;
        }
        i += GROUP;
    }
    *hashes = [x, y];
    i
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::noise;
    use proptest::prelude::*;
    use proptest::test_runner::TestRunner;

    use super::*;

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunks_tile_and_name_the_input_whatever_the_read_sizes() {
        let data = noise(40 << 20, 7);
        let chunker = Chunker::new(ChunkerParams::DEFAULT);
        let mut seen = 0;
        let whole = chunker.chunk(&data[..], |n| seen += n).unwrap();
        assert_eq!(seen, data.len() as u64);
        let trickled = chunker.chunk(Trickle(&data, 77_777), |_| {}).unwrap();
        assert_eq!(whole, trickled);
        let mut offset = 0;
        for c in &whole {
            assert_eq!(c.offset, offset);
            let bytes = &data[c.offset as usize..c.end() as usize];
            assert_eq!(c.digest, Digest::of(bytes));
            assert!(c.length <= ChunkerParams::DEFAULT.max_size);
            offset = c.end();
        }
        assert_eq!(offset, data.len() as u64);
        let avg = data.len() / whole.len();
        assert!((200 << 10..2 << 20).contains(&avg), "average chunk {avg}");
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let chunker = Chunker::new(ChunkerParams::DEFAULT);
        assert!(chunker.chunk(&[][..], |_| {}).unwrap().is_empty());
        let one = chunker.chunk(&b"x"[..], |_| {}).unwrap();
        assert_eq!(one, vec![ChunkRef { digest: Digest::of(b"x"), offset: 0, length: 1 }]);
    }

    #[test]
    fn read_errors_surface() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err = Chunker::new(ChunkerParams::DEFAULT).chunk(Broken, |_| {}).unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
    }

    /// The chunks FastCDC's own `cut` finds over the whole input, as the hub cut them before
    /// they were found in parallel.
    fn reference(params: ChunkerParams, data: &[u8]) -> Vec<ChunkRef> {
        let (min, avg, max) = (params.min_size as usize, params.avg_size as usize, params.max_size as usize);
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            let (_, n) = fastcdc::v2020::cut(rest, min, avg, max, mask_s, mask_l, mask_s << 1, mask_l << 1);
            let n = n.max(1).min(rest.len());
            chunks.push(ChunkRef { digest: Digest::of(&rest[..n]), offset: at as u64, length: n as u32 });
            at += n;
        }
        chunks
    }

    /// A reader that returns the sizes of `steps` in turn (at most what is asked).
    struct Steps<'a> {
        data: &'a [u8],
        steps: &'a [usize],
        next: usize,
    }
    impl Read for Steps<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let step = self.steps[self.next % self.steps.len()];
            self.next += 1;
            let n = self.data.len().min(buf.len()).min(step);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Random bytes, runs of one byte and short repeated patterns, end to end: inputs where the
    /// scans list candidates, and where they leave ranges to the walk.
    fn inputs() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            (1usize..20_000, any::<u64>()).prop_map(|(n, seed)| noise(n, seed)),
            (1usize..20_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            (1usize..20_000, proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(n, pattern)| pattern
                .iter()
                .cycle()
                .take(n)
                .copied()
                .collect()),
        ];
        proptest::collection::vec(part, 0..12).prop_map(|parts| parts.concat())
    }

    /// Small chunks, for many of them: averages where the scans list candidates (2 and 4 KiB)
    /// and where the walk hashes everything (256 B and 1 KiB).
    fn small_params() -> impl Strategy<Value = ChunkerParams> {
        prop_oneof![
            Just(ChunkerParams { min_size: 512, avg_size: 2048, max_size: 8192 }),
            Just(ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384 }),
            Just(ChunkerParams { min_size: 64, avg_size: 256, max_size: 1024 }),
            Just(ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 }),
        ]
    }

    #[test]
    fn fuzz_chunks_are_fastcdcs_whatever_the_workers_reads_and_blocks() {
        let pools = [HashPool::new(0), HashPool::new(1), HashPool::new(2), HashPool::new(8)];
        let sizes = (16usize..40_000, 1usize..40_000, 1usize..40_000).prop_map(|(block, scan, batch)| Sizes {
            block,
            scan,
            batch,
        });
        let steps = proptest::collection::vec(1usize..70_000, 1..8);
        let mut runner = TestRunner::new(aqueduct_testkit::fuzz::config(48));
        runner
            .run(&(small_params(), inputs(), sizes, steps), |(params, data, sizes, steps)| {
                let chunker = Chunker::new(params);
                let expected = reference(params, &data);
                for pool in &pools {
                    let reader = Steps { data: &data, steps: &steps, next: 0 };
                    let mut seen = 0;
                    let chunks = chunker.chunk_sized(pool, sizes, reader, |n| seen += n).unwrap();
                    prop_assert_eq!(seen, data.len() as u64);
                    prop_assert_eq!(&chunks, &expected, "{} workers, {:?}, {:?}", pool.workers(), params, sizes);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn default_chunks_are_fastcdcs_over_noise_zeros_and_patterns() {
        let mut data = noise(24 << 20, 11);
        data[3 << 20..7 << 20].fill(0);
        let pattern = b"\x00\x01\x02\x03\xff";
        for (i, b) in data[12 << 20..15 << 20].iter_mut().enumerate() {
            *b = pattern[i % pattern.len()];
        }
        let chunker = Chunker::new(ChunkerParams::DEFAULT);
        let expected = reference(ChunkerParams::DEFAULT, &data);
        for workers in [0, 1, 2, 8] {
            let chunks = chunker.chunk_on(&HashPool::new(workers), Trickle(&data, 1 << 20), |_| {}).unwrap();
            assert_eq!(chunks, expected, "{workers} workers");
        }
    }

    /// Noise, made as it is read: a large input that is never in memory at once.
    struct Generated {
        left: u64,
        state: u64,
        read: Arc<std::sync::atomic::AtomicU64>,
    }
    impl Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX)) / 8 * 8;
            for word in buf[..n].chunks_exact_mut(8) {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                word.copy_from_slice(&self.state.to_le_bytes());
            }
            self.left -= n as u64;
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    #[test]
    fn memory_stays_bounded_while_the_workers_lag() {
        let pool = HashPool::new(1);
        // Hold the only worker, so that nothing read is scanned or hashed.
        let (open, gate) = crossbeam_channel::bounded::<()>(0);
        pool.submit(
            true,
            Box::new(move || {
                let _ = gate.recv();
            }),
        );
        let chunker = Chunker::new(ChunkerParams::DEFAULT);
        let bound = chunker.memory(1) as u64;
        let total = 64 << 20;
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = Generated { left: total, state: 0x9e37_79b9_7f4a_7c15, read: read.clone() };
        std::thread::scope(|s| {
            let chunking = s.spawn(|| chunker.chunk_on(&pool, reader, |_| {}));
            // Wait until reading stops: the walk is out of buffers (or give up waiting).
            let mut last = u64::MAX;
            for _ in 0..100 {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let now = read.load(Ordering::Relaxed);
                if now == last {
                    break;
                }
                last = now;
            }
            let held = read.load(Ordering::Relaxed);
            println!("read {} MiB of {} MiB while no worker ran; bound {} MiB", held >> 20, total >> 20, bound >> 20);
            assert!(held <= bound, "read {held} bytes ahead of the workers, above the bound of {bound}");
            drop(open);
            let chunks = chunking.join().unwrap().unwrap();
            assert_eq!(chunks.last().map(ChunkRef::end), Some(total));
        });
    }

    /// Yields `data`, then fails.
    struct FailsAfter<'a>(&'a [u8]);
    impl Read for FailsAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "source went away"));
            }
            let n = self.0.len().min(buf.len()).min(300_000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_mid_file_is_returned_once_every_task_is_done() {
        let data = noise(21 << 20, 5);
        let chunker = Chunker::new(ChunkerParams::DEFAULT);
        for workers in [0, 1, 2, 8] {
            let pool = HashPool::new(workers);
            let mut walk = Walk::new(chunker, &pool, SIZES);
            let err = walk.run(&mut FailsAfter(&data), &mut |_| {}).unwrap_err();
            assert_eq!((err.kind(), err.to_string()), (io::ErrorKind::ConnectionReset, "source went away".to_string()));
            walk.settle(true);
            assert_eq!(walk.outstanding, 0, "{workers} workers: tasks still out");
            assert!(walk.buffers > 0);
            assert_eq!(walk.free_rx.len(), walk.buffers, "{workers} workers: buffers still held");
        }
        // Through the public calls: the same error; the pool of `chunk` is joined on return.
        let err = chunker.chunk(FailsAfter(&data), |_| {}).unwrap_err();
        assert_eq!((err.kind(), err.to_string()), (io::ErrorKind::ConnectionReset, "source went away".to_string()));
        let pool = HashPool::new(2);
        let err = chunker.chunk_on(&pool, FailsAfter(&data), |_| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // The pool is still good for the next file.
        assert_eq!(chunker.chunk_on(&pool, &data[..], |_| {}).unwrap(), reference(ChunkerParams::DEFAULT, &data));
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_worker_goes_on() {
        let pool = HashPool::new(1);
        let (tx, rx) = unbounded();
        let reply = Reply(Some(tx.clone()));
        pool.submit(
            false,
            Box::new(move || {
                let _reply = reply;
                panic!("a bug");
            }),
        );
        assert!(matches!(rx.recv().unwrap(), Done::Lost));
        let reply = Reply(Some(tx));
        pool.submit(false, Box::new(move || reply.send(Done::Skipped)));
        assert!(matches!(rx.recv().unwrap(), Done::Skipped));
    }
}
