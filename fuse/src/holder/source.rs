//! Where a held mount's chunks come from: the spoke's chunk store on this node's disk first
//! (read directly, in the layout [`aqueduct_core::layout`] defines), then the spoke's local API
//! ([`RemoteSource`]: read-through, fetching from the region's peers or the hub, and waiting for
//! a spoke that is away).
//!
//! Every chunk is verified: [`crate::fs::VersionFs`] hashes what any source returns against its
//! BLAKE3 digest before a byte is served, once per load. A chunk from the store that does not
//! verify is [discarded](ChunkSource::discard): the next attempt skips the store and asks the
//! spoke, which replaces its rotten copy; the rotten bytes are never served.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use aqueduct_proto::Digest;
use async_trait::async_trait;
use tracing::debug;

use crate::fs::{ChunkSource, FsError};
use crate::remote::RemoteSource;

pub struct HeldSource {
    /// The spoke's store (`--store`), if it has one on disk.
    pub store: Option<PathBuf>,
    pub remote: RemoteSource,
    /// Chunks whose stored copy did not verify: asked of the spoke next time.
    rotten: Mutex<HashSet<Digest>>,
}

impl HeldSource {
    pub fn new(store: Option<PathBuf>, remote: RemoteSource) -> Self {
        Self { store, remote, rotten: Mutex::default() }
    }

    fn rotten(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.rotten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored copy, if there is one of the right length (a file being replaced or cut
    /// short is not one).
    async fn stored(&self, digest: &Digest, length: u32) -> Option<Vec<u8>> {
        let root = self.store.as_ref()?;
        if self.rotten().remove(digest) {
            return None;
        }
        let path = aqueduct_core::layout::chunk_path(root, &digest.to_hex());
        match tokio::fs::read(&path).await {
            Ok(data) if data.len() == length as usize => Some(data),
            Ok(data) => {
                debug!(%digest, found = data.len(), expected = length, "stored chunk has the wrong length; asking the spoke");
                None
            }
            Err(_) => None,
        }
    }
}

#[async_trait]
impl ChunkSource for HeldSource {
    async fn chunk(&self, digest: &Digest, length: u32) -> Result<Vec<u8>, FsError> {
        if let Some(data) = self.stored(digest, length).await {
            return Ok(data);
        }
        self.remote.chunk(digest, length).await
    }

    fn discard(&self, digest: &Digest) {
        self.rotten().insert(*digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_chunks_are_read_and_rotten_ones_skipped_after_a_discard() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"chunk bytes".to_vec();
        let digest = Digest::of(&data);
        let path = aqueduct_core::layout::chunk_path(dir.path(), &digest.to_hex());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        let remote = RemoteSource {
            client: crate::remote::client(&dir.path().join("none.sock")).unwrap(),
            dataset: "d".into(),
            version: 1,
        };
        let source = HeldSource::new(Some(dir.path().to_owned()), remote);
        assert_eq!(source.stored(&digest, data.len() as u32).await, Some(data.clone()));
        // A copy of another length is not used.
        assert_eq!(source.stored(&digest, 3).await, None);
        // Discarded: the next read skips the store once.
        source.discard(&digest);
        assert_eq!(source.stored(&digest, data.len() as u32).await, None);
        assert_eq!(source.stored(&digest, data.len() as u32).await, Some(data));
    }
}
