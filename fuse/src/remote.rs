//! Chunks from a spoke's local API, for mounts outside the spoke (`aqueduct-fuse` sidecars).
//!
//! The channel connects lazily and reconnects on every call, so a spoke that goes away makes
//! reads fail at once with EIO (the socket refuses), and a restarted spoke serves the same
//! mount again without the reader remounting.

use aqueduct_proto::Digest;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use async_trait::async_trait;
use tonic::transport::Channel;

use crate::fs::{ChunkSource, FsError};

pub struct RemoteSource {
    pub client: LocalClient<Channel>,
    pub dataset: String,
    pub version: u64,
}

impl RemoteSource {
    fn request(&self, digests: &[Digest]) -> local::ReadChunksRequest {
        local::ReadChunksRequest {
            dataset: self.dataset.clone(),
            version: self.version,
            digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        }
    }
}

#[async_trait]
impl ChunkSource for RemoteSource {
    async fn chunk(&self, digest: &Digest, _length: u32) -> Result<Vec<u8>, FsError> {
        let unavailable = |reason: String| FsError::Unavailable { digest: *digest, reason };
        let mut stream = self
            .client
            .clone()
            .read_chunks(self.request(&[*digest]))
            .await
            .map_err(|s| unavailable(format!("the spoke: {}", s.message())))?
            .into_inner();
        let chunk = stream
            .message()
            .await
            .map_err(|s| unavailable(format!("the spoke: {}", s.message())))?
            .ok_or_else(|| unavailable("the spoke ended the stream without it".into()))?;
        Ok(chunk.data)
    }
}
