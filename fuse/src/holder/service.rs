//! The holder's gRPC API (`aqueduct.holder.v1`) on a unix socket: thin handlers over
//! [`Holder`], and the one place the holder's errors become statuses ([`status`]). A version
//! the spoke could not resolve keeps the spoke's own status, so that the spoke's callers see
//! its words.

use std::path::Path;
use std::sync::Arc;

use aqueduct_proto::holder::v1 as held;
use aqueduct_proto::holder::v1::holder_server::{Holder as HolderApi, HolderServer};
use aqueduct_proto::spoke::v1 as local;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use super::{Holder, HolderError, request};
use crate::mount::UnmountError;
use crate::remote::RemoteError;

/// The one place the holder's errors become statuses.
pub fn status(e: HolderError) -> Status {
    let message = e.to_string();
    match e {
        HolderError::Invalid(_) | HolderError::Missing(_) => Status::invalid_argument(message),
        HolderError::Busy { .. } | HolderError::Unmount(UnmountError::Busy(_)) | HolderError::NoFuse(_) => {
            Status::failed_precondition(message)
        }
        HolderError::NotMounted(_) => Status::not_found(message),
        HolderError::Spoke(RemoteError::Spoke(s)) => s,
        HolderError::Spoke(RemoteError::Socket { .. }) => Status::unavailable(message),
        HolderError::Spoke(RemoteError::Untrusted(_)) => Status::permission_denied(message),
        HolderError::Spoke(RemoteError::Manifest(_))
        | HolderError::Mount { .. }
        | HolderError::Unmount(UnmountError::Io(_))
        | HolderError::Socket { .. } => Status::internal(message),
    }
}

pub struct HolderService {
    pub holder: Arc<Holder>,
}

#[tonic::async_trait]
impl HolderApi for HolderService {
    #[instrument(skip_all, fields(dataset, version, mountpoint))]
    async fn mount(&self, request: Request<local::MountRequest>) -> Result<Response<local::MountInfo>, Status> {
        let r = request.into_inner();
        Span::current()
            .record("dataset", r.dataset.as_str())
            .record("version", r.version)
            .record("mountpoint", r.mountpoint.as_str());
        let spec = request::mount_spec(&r).map_err(|e| status(e.into()))?;
        Ok(Response::new(self.holder.mount(spec).await.map_err(status)?))
    }

    #[instrument(skip_all, fields(mountpoint, lazy))]
    async fn unmount(
        &self,
        request: Request<held::UnmountRequest>,
    ) -> Result<Response<local::UnmountResponse>, Status> {
        let r = request.into_inner();
        Span::current().record("mountpoint", r.mountpoint.as_str()).record("lazy", r.lazy);
        let path = request::mountpoint(&r.mountpoint).map_err(|e| status(e.into()))?;
        self.holder.unmount(&path, r.lazy).await.map_err(status)?;
        Ok(Response::new(local::UnmountResponse {}))
    }

    #[instrument(skip_all)]
    async fn list(&self, _request: Request<local::ListMountsRequest>) -> Result<Response<held::ListResponse>, Status> {
        Ok(Response::new(held::ListResponse {
            mounts: self.holder.list().await,
            pid: std::process::id(),
            reads: Some(self.holder.reads()),
            whole: self.holder.whole(),
        }))
    }

    #[instrument(skip_all, fields(bytes))]
    async fn limit_whole_files(
        &self,
        request: Request<held::WholeFilesLimit>,
    ) -> Result<Response<held::WholeFilesLimited>, Status> {
        let bytes = request.into_inner().bytes;
        Span::current().record("bytes", bytes);
        Ok(Response::new(held::WholeFilesLimited { whole: self.holder.limit_whole_files(bytes).await }))
    }
}

/// Listens on the holder's private socket at `path` ([`aqueduct_core::socket::bind_private`]),
/// replacing one an earlier holder left there.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    UnixListener::from_std(aqueduct_core::socket::bind_private(path)?)
}

/// Serves the API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: UnixListener,
    holder: Arc<Holder>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let size = aqueduct_proto::MAX_REQUEST_BYTES;
    tonic::transport::Server::builder()
        .add_service(
            HolderServer::new(HolderService { holder }).max_decoding_message_size(size).max_encoding_message_size(size),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await
}
