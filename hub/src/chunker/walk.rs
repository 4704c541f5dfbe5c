//! One [`Chunker::chunk_on`] on its calling thread: reading blocks, submitting scans and hashes
//! to the pool, walking the candidates in file order to cut chunks, and putting the digests back
//! in order; settling every task before it returns, whatever happened.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aqueduct_proto::{ChunkRef, Digest};
use crossbeam_channel::{Receiver, Sender, never, select, unbounded};

use super::pool::HashPool;
use super::scan::scan;
use super::{Block, Chunker, GEAR, Sizes, slices, step};

/// What a task sends back; every task sends exactly one.
pub(super) enum Done {
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
pub(super) struct Reply(pub(super) Option<Sender<Done>>);

impl Reply {
    pub(super) fn send(mut self, done: Done) {
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
pub(super) struct Walk<'a> {
    chunker: Chunker,
    sizes: Sizes,
    gear: &'static [u64; 256],
    pool: &'a HashPool,
    cancel: Arc<AtomicBool>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    /// Tasks submitted and not yet answered.
    pub(super) outstanding: usize,
    free_tx: Sender<Vec<u8>>,
    pub(super) free_rx: Receiver<Vec<u8>>,
    /// Buffers allocated so far, at most `max_buffers`.
    pub(super) buffers: usize,
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
    /// Tests only: a kind of task that panics, as a bug in it would.
    #[cfg(test)]
    pub(super) inject: Inject,
}

/// Tests only: which tasks of a [`Walk`] panic.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Inject {
    Nothing,
    ScanPanics,
    HashPanics,
}

impl<'a> Walk<'a> {
    pub(super) fn new(chunker: Chunker, pool: &'a HashPool, sizes: Sizes) -> Self {
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
            #[cfg(test)]
            inject: Inject::Nothing,
        }
    }

    pub(super) fn run(&mut self, reader: &mut impl Read, progress: &mut impl FnMut(u64)) -> io::Result<()> {
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
                #[cfg(test)]
                let inject = self.inject;
                self.pool.submit(
                    true,
                    Box::new(move || {
                        #[cfg(test)]
                        assert_ne!(inject, Inject::ScanPanics, "a scan task panics (injected)");
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
        #[cfg(test)]
        let inject = self.inject;
        self.pool.submit(
            false,
            Box::new(move || {
                #[cfg(test)]
                assert_ne!(inject, Inject::HashPanics, "a hash task panics (injected)");
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
    pub(super) fn settle(&mut self, cancel: bool) {
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

    pub(super) fn finish(self) -> io::Result<Vec<ChunkRef>> {
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
