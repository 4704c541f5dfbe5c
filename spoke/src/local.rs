//! The spoke's local API on a unix socket: mounts for the CLI (passed to the node's FUSE
//! holder), and version resolution and chunk reads for the holder and `aqueduct-fuse` sidecars.
//!
//! The socket is created with mode 0600: whoever may use it may read every dataset the region
//! holds, as the spoke itself can. Errors become gRPC statuses in [`status`], one place.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::selector::Follows;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_server::{Local, LocalServer};
use aqueduct_proto::{Digest, validate_name};
use futures::{Stream, StreamExt};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use crate::catalog::{Catalog, CatalogError};
use crate::in_use::Sidecars;
use crate::mounts::{MountError, Mounts};
use crate::reader::{ReadError, ReadThrough};

/// Chunks read concurrently for one `ReadChunks` call.
const READ_CONCURRENCY: usize = 4;

pub struct LocalService {
    pub catalog: Arc<Catalog>,
    pub reader: Arc<ReadThrough>,
    pub mounts: Arc<Mounts>,
    /// The leases of sidecars that name themselves in `Resolve`.
    pub sidecars: Arc<Sidecars>,
}

/// The one place errors of the local API become statuses. The holder's answers to mounts
/// keep their code and words.
fn status(e: impl Into<LocalError>) -> Status {
    match e.into() {
        LocalError::Catalog(e) => match e {
            CatalogError::UnknownDataset { .. } | CatalogError::UnknownVersion { .. } => {
                Status::not_found(e.to_string())
            }
            CatalogError::UnknownTag { .. } => Status::not_found(e.to_string()),
            CatalogError::NoActiveVersion { .. }
            | CatalogError::TagNotAssigned { .. }
            | CatalogError::TagNotReady { .. } => Status::failed_precondition(e.to_string()),
            CatalogError::Hub { .. } | CatalogError::HubLost { .. } => Status::unavailable(e.to_string()),
            CatalogError::Untrusted(_) => Status::permission_denied(e.to_string()),
            CatalogError::Manifest { .. } | CatalogError::Io { .. } => Status::internal(e.to_string()),
        },
        LocalError::Mount(MountError::Holder(s)) => s,
        LocalError::Mount(e @ MountError::Reach(_)) => Status::unavailable(e.to_string()),
        LocalError::Invalid(message) => Status::invalid_argument(message),
    }
}

pub enum LocalError {
    Catalog(CatalogError),
    Mount(MountError),
    Invalid(String),
}

impl From<CatalogError> for LocalError {
    fn from(e: CatalogError) -> Self {
        LocalError::Catalog(e)
    }
}
impl From<MountError> for LocalError {
    fn from(e: MountError) -> Self {
        LocalError::Mount(e)
    }
}

fn dataset_name(name: &str) -> Result<(), Status> {
    validate_name("dataset", name).map_err(|e| status(LocalError::Invalid(e.to_string())))
}

/// What a request's `version` and `tag` select.
fn follows(version: u64, tag: &str) -> Result<Follows, Status> {
    Follows::from_wire(version, tag).map_err(|e| status(LocalError::Invalid(e.to_string())))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl Local for LocalService {
    type ReadChunksStream = ChunkStream;

    #[instrument(skip_all, fields(dataset, version, tag, mountpoint))]
    async fn mount(&self, request: Request<local::MountRequest>) -> Result<Response<local::MountInfo>, Status> {
        let r = request.into_inner();
        Span::current()
            .record("dataset", r.dataset.as_str())
            .record("version", r.version)
            .record("tag", r.tag.as_str())
            .record("mountpoint", r.mountpoint.as_str());
        dataset_name(&r.dataset)?;
        let follows = follows(r.version, &r.tag)?;
        let info = self.mounts.mount(&r.dataset, &follows, Path::new(&r.mountpoint)).await.map_err(status)?;
        Ok(Response::new(info))
    }

    #[instrument(skip_all, fields(mountpoint))]
    async fn unmount(
        &self,
        request: Request<local::UnmountRequest>,
    ) -> Result<Response<local::UnmountResponse>, Status> {
        let r = request.into_inner();
        Span::current().record("mountpoint", r.mountpoint.as_str());
        self.mounts.unmount(Path::new(&r.mountpoint), false).await.map_err(status)?;
        Ok(Response::new(local::UnmountResponse {}))
    }

    #[instrument(skip_all)]
    async fn list_mounts(
        &self,
        _request: Request<local::ListMountsRequest>,
    ) -> Result<Response<local::ListMountsResponse>, Status> {
        Ok(Response::new(local::ListMountsResponse { mounts: self.mounts.list().await.map_err(status)? }))
    }

    #[instrument(skip_all, fields(dataset, version, tag))]
    async fn resolve(
        &self,
        request: Request<local::ResolveRequest>,
    ) -> Result<Response<local::ResolveResponse>, Status> {
        let r = request.into_inner();
        Span::current()
            .record("dataset", r.dataset.as_str())
            .record("version", r.version)
            .record("tag", r.tag.as_str());
        dataset_name(&r.dataset)?;
        let follows = follows(r.version, &r.tag)?;
        let assignment = match self.catalog.resolve_follows(&r.dataset, &follows) {
            Ok(a) => a,
            // A version the hub no longer assigns that a sidecar still shows: it stays (the
            // catalog keeps it while it is in use), and so does the sidecar's lease.
            Err(e) => match follows.version().and_then(|v| self.catalog.kept_manifest(&r.dataset, v)) {
                Some(m) if m.root.0.as_slice() == r.known_root.as_slice() => {
                    if !r.user.is_empty() {
                        self.sidecars.renew(&r.user, &r.dataset, m.version, std::time::Instant::now());
                    }
                    return Ok(Response::new(local::ResolveResponse { manifest: None, active: false }));
                }
                _ => {
                    // The sidecar keeps what it shows (a tag's new version is not Ready
                    // yet): that version is still in use.
                    let shown = self
                        .catalog
                        .assignments()
                        .assignments
                        .into_iter()
                        .find(|a| a.dataset == r.dataset && !r.known_root.is_empty() && a.root == r.known_root);
                    if let Some(a) = shown.filter(|_| !r.user.is_empty()) {
                        self.sidecars.renew(&r.user, &a.dataset, a.version, std::time::Instant::now());
                    }
                    return Err(status(e));
                }
            },
        };
        if !r.user.is_empty() {
            self.sidecars.renew(&r.user, &r.dataset, assignment.version, std::time::Instant::now());
        }
        if assignment.root == r.known_root {
            return Ok(Response::new(local::ResolveResponse { manifest: None, active: assignment.active }));
        }
        let manifest = self.catalog.manifest(&assignment).await.map_err(status)?;
        Ok(Response::new(local::ResolveResponse {
            manifest: Some(pb::Manifest::from(manifest.as_ref())),
            active: assignment.active,
        }))
    }

    #[instrument(skip_all, fields(dataset, version, chunks))]
    async fn read_chunks(
        &self,
        request: Request<local::ReadChunksRequest>,
    ) -> Result<Response<Self::ReadChunksStream>, Status> {
        let r = request.into_inner();
        Span::current()
            .record("dataset", r.dataset.as_str())
            .record("version", r.version)
            .record("chunks", r.digests.len());
        aqueduct_proto::check_digest_count(r.digests.len())?;
        // Reads are for versions the region holds, or that a mount here still shows after the
        // hub removed them (the catalog keeps their manifests); the hub checks the rest on a
        // miss.
        if let Err(e) = self.catalog.resolve(&r.dataset, Some(r.version))
            && !self.catalog.holds_manifest(&r.dataset, r.version)
        {
            return Err(status(e));
        }
        let digests = r
            .digests
            .iter()
            .map(|d| Digest::from_slice(d).ok_or_else(|| Status::invalid_argument("a digest is not 32 bytes")))
            .collect::<Result<Vec<Digest>, Status>>()?;
        let (reader, dataset, version) = (self.reader.clone(), r.dataset, r.version);
        let stream = futures::stream::iter(digests)
            .map(move |digest| {
                let (reader, dataset) = (reader.clone(), dataset.clone());
                async move {
                    let unavailable = |e: ReadError| Status::unavailable(e.to_string());
                    let read = reader.read(&dataset, version, digest).await.map_err(unavailable)?;
                    let mut data = read.data;
                    // The store's copy is checked here (fetched bytes were, on arrival): a rotten
                    // copy is replaced, not sent.
                    if !read.checked && Digest::of(&data) != digest {
                        reader.discard(&digest);
                        data = reader.chunk(&dataset, version, digest).await.map_err(unavailable)?;
                        let actual = Digest::of(&data);
                        if actual != digest {
                            // DATA_LOSS: a reader must not wait for these bytes to get better.
                            return Err(Status::data_loss(format!(
                                "chunk {digest} is corrupt (its bytes hash to {actual})"
                            )));
                        }
                    }
                    Ok(pb::ChunkData { digest: digest.0.to_vec(), data })
                }
            })
            .buffered(READ_CONCURRENCY);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the local API on a unix socket at `path` until `shutdown` fires, then removes it,
/// with at most `max_streams` calls at once per connection. A socket left by an earlier spoke
/// is replaced.
pub async fn serve(
    path: PathBuf,
    service: LocalService,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    max_streams: u32,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = bind_socket(&path)?;
    // Requests are small; answers go up to a manifest (`Resolve`).
    let result = aqueduct_core::server::grpc_server(max_streams, aqueduct_core::server::KEEPALIVE)
        .add_service(health)
        .add_service(
            LocalServer::new(service)
                .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
                .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    let _ = std::fs::remove_file(&path);
    result.map_err(std::io::Error::other)
}

/// The private socket at `path` ([`aqueduct_core::socket::bind_private`]) for tokio.
pub(crate) fn bind_socket(path: &std::path::Path) -> std::io::Result<UnixListener> {
    UnixListener::from_std(aqueduct_core::socket::bind_private(path)?)
}
