//! The CSI node plugin: how the kubelet puts a dataset version into a pod.
//!
//! The kubelet calls the plugin over a unix socket (gRPC, the CSI v1 spec vendored in
//! `proto/csi/v1/csi.proto`). The operator turns an AqueductVolume into a PersistentVolume of
//! driver [`DRIVER_NAME`] whose volume attributes name the dataset, the version (a number,
//! `active` to follow the region's active version, or a tag to follow) and the replication
//! mode ([`volume`]).
//! When a pod that uses it is scheduled here, `NodePublishVolume` waits until the version is
//! Ready in the region (so a pod never starts on a partial model; a volume attribute or the
//! config may allow an earlier start), makes sure the node has one FUSE mount of that version
//! under `DATA_DIR/csi/mounts/` (through the spoke's [`Mounts`](crate::mounts::Mounts), shared
//! by every pod of the node that uses it, reference-counted) and bind-mounts it read-only at
//! the pod's target path. `NodeUnpublishVolume` removes the bind mount and, with the last
//! user, the FUSE mount ([`node`]).
//!
//! The handlers in [`service`] are thin: they check the request's shape and hand over to
//! [`node::Node`], which owns the state. Errors are [`CsiError`], turned into gRPC statuses in
//! one place (`From<CsiError> for tonic::Status`) with the codes the CSI spec asks for.
//!
//! The FUSE mounts are the node's holder's (see [`crate::holder`]) and outlive the spoke, as
//! the pods' bind mounts do; what is published where is on disk ([`publications`]), so a
//! restarted spoke takes every publication back and the kubelet never has to publish again.

pub mod node;
pub mod publications;
pub mod service;
pub mod volume;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_proto::csi::v1::identity_server::IdentityServer;
use aqueduct_proto::csi::v1::node_server::NodeServer;
use serde::Deserialize;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::catalog::CatalogError;
use crate::mounts::MountError;

/// The driver's name, as PersistentVolumes (`spec.csi.driver`) and the CSIDriver object name it.
pub const DRIVER_NAME: &str = "csi.aqueduct.io";

/// Where the CSI socket is unless the config says: inside the data directory.
const DEFAULT_SOCKET: &str = "csi.sock";

/// How long a publish waits for its version to be Ready unless the config says. Below the
/// kubelet's own deadline for the call (2 minutes), so that the pod's events show why; the
/// kubelet calls again (with backoff), so a pod waits as long as its version takes.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The `[csi]` section of the spoke's config: serve the CSI node plugin.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsiConfig {
    /// The unix socket the kubelet calls (in Kubernetes:
    /// `/var/lib/kubelet/plugins/csi.aqueduct.io/csi.sock`); relative paths are inside
    /// `data_dir`. Default `DATA_DIR/csi.sock`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// How long a publish waits for its version to be Ready in the region before it fails
    /// (the kubelet then calls again): `90s`, `2m`, `1m30s`. A call whose own deadline is
    /// shorter waits for three quarters of that instead.
    #[serde(default = "default_ready_timeout", deserialize_with = "duration")]
    pub ready_timeout: Duration,
    /// Let pods start on a version before it is Ready in the region (their reads fetch what is
    /// not here yet, ahead of replication). A volume may say so itself (`startBeforeReady`).
    #[serde(default)]
    pub start_before_ready: bool,
}

impl Default for CsiConfig {
    fn default() -> Self {
        Self { socket: default_socket(), ready_timeout: DEFAULT_READY_TIMEOUT, start_before_ready: false }
    }
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}

fn default_ready_timeout() -> Duration {
    DEFAULT_READY_TIMEOUT
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => aqueduct_proto::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

impl CsiConfig {
    /// Resolves a relative socket path inside `data_dir`.
    pub fn resolve(&mut self, data_dir: &Path) {
        if self.socket.is_relative() {
            self.socket = data_dir.join(&self.socket);
        }
    }
}

/// What can go wrong in the node plugin. Messages are shown to people as pod events.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A request or a volume attribute is malformed; the message names it and says what is
    /// expected.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{what} is not Ready in region {region} after {waited:?}: {progress}. The pod starts once it is Ready (the kubelet asks again); see `aq status {dataset}`, or let pods start before Ready with the volume attribute startBeforeReady=\"true\" (reads then fetch what is missing)"
    )]
    NotReady { what: String, dataset: String, region: String, waited: Duration, progress: String },
    #[error("{source} (waited {waited:?} for it)")]
    NotAssigned { source: CatalogError, waited: Duration },
    #[error("target path {target} is already used by volume {volume_id} ({what}); unpublish it first")]
    TargetInUse { target: PathBuf, volume_id: String, what: String },
    #[error("volume {volume_id} is not published at {target} (volume {published} is)")]
    OtherVolume { target: PathBuf, volume_id: String, published: String },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{action} at {path} failed: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the spoke is shutting down; the kubelet will ask again")]
    ShuttingDown,
}

/// The one place node plugin errors become statuses. Codes follow the CSI spec: a failure
/// that leaves nothing mounted is final (FAILED_PRECONDITION, NOT_FOUND, ...), so the kubelet
/// knows no cleanup is due; it retries publishing with backoff either way.
impl From<CsiError> for Status {
    fn from(e: CsiError) -> Self {
        let message = e.to_string();
        match e {
            CsiError::Invalid(_) => Status::invalid_argument(message),
            CsiError::NotReady { .. } => Status::failed_precondition(message),
            CsiError::NotAssigned { source, .. } => match source {
                CatalogError::UnknownDataset { .. } | CatalogError::UnknownVersion { .. } => Status::not_found(message),
                CatalogError::UnknownTag { .. } => Status::not_found(message),
                CatalogError::NoActiveVersion { .. }
                | CatalogError::TagNotAssigned { .. }
                | CatalogError::TagNotReady { .. } => Status::failed_precondition(message),
                CatalogError::Hub { .. } | CatalogError::HubLost { .. } => Status::unavailable(message),
                CatalogError::Untrusted(_) => Status::permission_denied(message),
                CatalogError::Manifest { .. } | CatalogError::Io { .. } => Status::internal(message),
            },
            CsiError::TargetInUse { .. } => Status::already_exists(message),
            CsiError::OtherVolume { .. } => Status::not_found(message),
            // The holder's answer keeps its code (busy and no FUSE: FAILED_PRECONDITION; the
            // hub away while resolving: UNAVAILABLE).
            CsiError::Mount(MountError::Holder(s)) => Status::new(s.code(), message),
            CsiError::Mount(MountError::Reach(_)) => Status::unavailable(message),
            CsiError::Io { .. } => Status::internal(message),
            CsiError::ShuttingDown => Status::unavailable(message),
        }
    }
}

/// Serves the Identity and Node services on a unix socket at `path` until `shutdown` fires,
/// then removes it, with at most `max_streams` calls at once per connection. A socket left by
/// an earlier spoke is replaced.
pub async fn serve(
    path: PathBuf,
    identity: service::IdentityService,
    node: service::NodeService,
    max_streams: u32,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = crate::local::bind_socket(&path)?;
    // The kubelet's requests and our answers are a few KiB (volume attributes, paths).
    let size = aqueduct_proto::MAX_REQUEST_BYTES;
    let result = aqueduct_core::server::grpc_server(max_streams, aqueduct_core::server::KEEPALIVE)
        .add_service(IdentityServer::new(identity).max_decoding_message_size(size).max_encoding_message_size(size))
        .add_service(NodeServer::new(node).max_decoding_message_size(size).max_encoding_message_size(size))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;
    let _ = std::fs::remove_file(&path);
    result.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_timeouts_take_seconds_or_durations_with_units() {
        let config: CsiConfig = toml::from_str("ready_timeout = 30").unwrap();
        assert_eq!(config.ready_timeout, Duration::from_secs(30));
        let err = toml::from_str::<CsiConfig>("ready_timeout = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
        let err = toml::from_str::<CsiConfig>("sockett = \"x\"").unwrap_err().to_string();
        assert!(err.contains("sockett"), "{err}");
    }
}
