//! Content-defined chunking (FastCDC 2020) and BLAKE3 naming of a stream of bytes.
//!
//! [`Chunker::chunk`] reads any [`Read`] through one buffer of a fixed size, finds cut points
//! with FastCDC and hashes each chunk with BLAKE3 as soon as it is cut, so a file of any size
//! is chunked in constant memory and read exactly once. A cut is only searched where at least
//! `max_size` bytes are buffered (or the input has ended), so cut points do not depend on how
//! the input happened to be split into reads.

use std::io::{self, Read};

use aqueduct_proto::{ChunkRef, ChunkerParams, Digest};
use fastcdc::v2020::{Normalization, cut, select_masks};

/// Bytes read from the source per refill. A multiple of the maximum chunk size, so most
/// chunks are cut and hashed straight out of the buffer.
const BUFFER: usize = 16 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        Self { params, mask_s, mask_l }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data`, where `data` is either at least `max_size` long or
    /// everything that is left of the input.
    fn cut(&self, data: &[u8]) -> usize {
        let p = self.params;
        let (_, n) = cut(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n.max(1).min(data.len())
    }

    /// Chunks and hashes everything `reader` yields. `progress` is called with the number of
    /// bytes newly consumed after each refill. Returns the chunks, tiling the input.
    pub fn chunk(&self, mut reader: impl Read, mut progress: impl FnMut(u64)) -> io::Result<Vec<ChunkRef>> {
        let max = self.params.max_size as usize;
        let mut buf = vec![0u8; BUFFER.max(2 * max)];
        let (mut start, mut end, mut offset, mut eof) = (0usize, 0usize, 0u64, false);
        let mut chunks = Vec::new();
        loop {
            // Refill: move the unconsumed tail to the front, then read until full or EOF.
            if !eof {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                let before = end;
                while end < buf.len() {
                    match reader.read(&mut buf[end..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                progress((end - before) as u64);
            }
            while end - start >= max || (eof && start < end) {
                let n = self.cut(&buf[start..end]);
                let digest = Digest::from(blake3::hash(&buf[start..start + n]));
                chunks.push(ChunkRef { digest, offset, length: n as u32 });
                offset += n as u64;
                start += n;
            }
            if eof {
                return Ok(chunks);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::noise;

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
}
