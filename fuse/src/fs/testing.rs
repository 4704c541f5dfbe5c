//! A chunk source in memory and a way to cut files into a version, for tests (here and of
//! the mount adapter).

use std::collections::HashMap;
use std::sync::Mutex;

use aqueduct_proto::{ChunkRef, ChunkerParams, FileEntry};

use super::*;

/// Chunks from memory, with an optional digest whose bytes are served wrong.
#[derive(Default)]
pub struct MemSource {
    chunks: HashMap<Digest, Vec<u8>>,
    pub corrupt: Mutex<Option<Digest>>,
    /// Every chunk asked for, in order.
    pub asked: Mutex<Vec<Digest>>,
}

#[async_trait]
impl ChunkSource for MemSource {
    async fn chunk(&self, digest: &Digest, _: u32) -> Result<Vec<u8>, FsError> {
        self.asked.lock().unwrap().push(*digest);
        let mut data = self
            .chunks
            .get(digest)
            .cloned()
            .ok_or(FsError::Unavailable { digest: *digest, reason: "absent".into() })?;
        if *self.corrupt.lock().unwrap() == Some(*digest) {
            data[0] ^= 1;
        }
        Ok(data)
    }
}

impl MemSource {
    /// Serves `data` as `digest` (whether it hashes to it or not).
    pub fn insert(&mut self, digest: Digest, data: Vec<u8>) {
        self.chunks.insert(digest, data);
    }
}

/// A version of `files` cut into uneven fixed pieces (the view does not care how).
pub fn version(files: &[(&str, Vec<u8>)]) -> (Manifest, MemSource) {
    let mut source = MemSource::default();
    let mut entries = Vec::new();
    for (i, (path, bytes)) in files.iter().enumerate() {
        let mut chunks = Vec::new();
        let mut offset = 0;
        let mut step = 1000 + i * 777;
        while offset < bytes.len() {
            let end = (offset + step).min(bytes.len());
            let piece = bytes[offset..end].to_vec();
            let digest = Digest::of(&piece);
            chunks.push(ChunkRef { digest, offset: offset as u64, length: piece.len() as u32 });
            source.chunks.insert(digest, piece);
            offset = end;
            step = step * 3 % 5000 + 500;
        }
        entries.push(FileEntry {
            path: path.to_string(),
            object: path.to_string(),
            size: bytes.len() as u64,
            mode: 0o644,
            mtime_unix_ms: 9,
            chunks,
        });
    }
    (Manifest::new("ds".into(), 1, ChunkerParams::DEFAULT, entries).unwrap(), source)
}
