//! The chunker against FastCDC's own `cut`, under random inputs, parameters, read sizes, block
//! sizes and pools; memory while workers lag; read errors and panics.

use aqueduct_testkit::noise;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use std::sync::atomic::Ordering;

use aqueduct_proto::Digest;
use crossbeam_channel::unbounded;

use super::walk::{Done, Inject, Reply, Walk};
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

/// Chunker parameters anywhere within FastCDC's bounds and the manifest's chunk bound
/// (`64 <= min <= avg`, `256 <= avg <= max`, `1 KiB <= max <= MAX_CHUNK_BYTES`, all even as
/// FastCDC 2020 asks), not only powers of two; most averages small, for many chunks per input: averages where the scans list
/// candidates (above 1 KiB) and where the walk hashes everything (1 KiB and below).
fn params() -> impl Strategy<Value = ChunkerParams> {
    let top = aqueduct_proto::MAX_CHUNK_BYTES as u32;
    let bits = prop_oneof![3 => 8u32..=13, 1 => 14u32..=21];
    (bits, any::<u32>())
        .prop_flat_map(move |(bits, jitter)| {
            let avg = ((1u32 << bits) + jitter % (1u32 << (bits - 1))).clamp(256, top);
            (Just(avg), (avg / 16).max(64)..=avg, avg.max(1024)..=avg.saturating_mul(8).clamp(1024, top))
        })
        .prop_map(|(avg, min, max)| ChunkerParams { min_size: min & !1, avg_size: avg & !1, max_size: max & !1 })
}

#[test]
fn fuzz_chunks_are_fastcdcs_whatever_the_parameters_workers_reads_and_blocks() {
    let pools = [HashPool::new(0), HashPool::new(1), HashPool::new(2), HashPool::new(8)];
    let sizes =
        (16usize..40_000, 1usize..40_000, 1usize..40_000).prop_map(|(block, scan, batch)| Sizes { block, scan, batch });
    let steps = proptest::collection::vec(1usize..70_000, 1..8);
    let mut runner = TestRunner::new(aqueduct_testkit::fuzz::config(48));
    runner
        .run(&(params(), inputs(), sizes, steps), |(params, data, sizes, steps)| {
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

#[test]
fn a_panicking_scan_or_hash_ends_the_call_with_an_error_not_a_hang() {
    let data = noise(13 << 20, 9);
    let chunker = Chunker::new(ChunkerParams::DEFAULT);
    for workers in [0, 1, 2, 8] {
        let pool = HashPool::new(workers);
        for inject in [Inject::ScanPanics, Inject::HashPanics] {
            let mut walk = Walk::new(chunker, &pool, SIZES);
            walk.inject = inject;
            let outcome = walk.run(&mut Trickle(&data, 1 << 20), &mut |_| {});
            walk.settle(outcome.is_err());
            assert_eq!(walk.outstanding, 0, "{workers} workers, {inject:?}: tasks still out");
            assert_eq!(walk.free_rx.len(), walk.buffers, "{workers} workers, {inject:?}: buffers still held");
            let err = outcome.err().or_else(|| walk.finish().err());
            let err = err.unwrap_or_else(|| panic!("{workers} workers, {inject:?}: chunks returned"));
            assert!(err.to_string().contains("task panicked"), "{workers} workers, {inject:?}: {err}");
        }
        // The pool is still good for the next file.
        let chunks = chunker.chunk_on(&pool, &data[..], |_| {}).unwrap();
        assert_eq!(chunks, reference(ChunkerParams::DEFAULT, &data), "{workers} workers");
    }
}
