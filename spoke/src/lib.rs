//! The spoke: Aqueduct's regional agent.
//!
//! It connects to the hub with its region's credentials, watches for the versions its region
//! must hold (a server stream, reconnected with backoff; kept in the [`catalog`]), and makes
//! its chunk store hold every chunk of each, verified ([`replicate`]). It hosts read-only FUSE
//! mounts of those versions ([`mounts`]) that read from the store, or through it on a miss,
//! ahead of replication ([`reader`]), driven over a unix socket ([`local`]).
//!
//! The spokes of a region act as one cache: the hub tells each who the region's live members
//! are, each chunk has an owner among them ([`peers`]), only the owner fetches it over the
//! link, and the others get it from a peer over mutual TLS ([`peer_service`]). A spoke without
//! a peer share (no `[peer]` section: a sidecar) in a region whose other spokes have one holds
//! no part of the region's copy: it replicates nothing, pins nothing and reports no progress
//! (and stays so while those spokes restart); its readers' misses come from the chunks'
//! owners (or the link). In a region that never had a spoke with a share, it holds every
//! version itself, as a lone spoke does.
//!
//! The hub gives each watch a session token; the spoke's progress and cache reports carry it,
//! so that they count for this spoke's own watch and no other. A node name is one live watch's
//! at a time: while the hub still holds an earlier watch of this name (a restart before the hub
//! noticed the old connection close), the watch is refused and retried soon.
//!
//! With a `[csi]` section in its config, the spoke is also the region's CSI node plugin
//! ([`csi`]): the kubelet asks it to put a dataset version into a pod, as a read-only bind
//! mount of one FUSE mount per version on the node.
//! In Kubernetes, with an `[operator]` section in its config, the spoke also competes for its
//! region's operator lease; the leader turns `AqueductVolume`s into PVCs ([`operator`]) and
//! holds the versions they name in the cache.

pub mod cache;
pub mod catalog;
pub mod csi;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod mounts;
pub mod operator;
pub mod peer_service;
pub mod peers;
pub mod reader;
pub mod replicate;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_core::budget::Budget;
use aqueduct_core::identity::Identity;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tracing::{info, warn};

use crate::cache::{CacheConfig, TieredStore};
use crate::catalog::Catalog;
use crate::local::LocalService;
use crate::mounts::Mounts;
use crate::operator::OperatorConfig;
use crate::operator::region::{Holds, ReadyVersions, SpokeRegion};
use crate::peer_service::PeerService;
use crate::peers::Peers;
use crate::reader::{Priority, ReadThrough};
use crate::replicate::{PullOptions, Replicator};
use crate::store::ChunkStore;
use aqueduct_proto::ReplicationMode;

#[derive(Debug, thiserror::Error)]
pub enum SpokeError {
    #[error("cannot read spoke config {path}: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("spoke config {path} is invalid: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot read {what} {path}: {source}")]
    Credentials { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cache(#[from] store::CacheError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Operator(#[from] operator::OperatorError),
    #[error(transparent)]
    Metrics(#[from] aqueduct_core::metrics::MetricsError),
    #[error("the region's credentials (tls.cert, tls.key, tls.ca) cannot serve the peer API: {0}")]
    Tls(#[from] aqueduct_core::server::TlsSetupError),
}

/// Where the local API listens unless the config says: inside the data directory.
const DEFAULT_SOCKET: &str = "spoke.sock";

/// The spoke's configuration file (TOML). Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeConfig {
    /// The hub's address, https://HOST:PORT.
    pub hub: String,
    /// This node's name, for the hub's log and the region's peers. May be left out of the file
    /// when the command line gives it ([`Overrides::node`]: `--node`, `AQUEDUCT_NODE`).
    #[serde(default)]
    pub node: String,
    /// Where the chunk store lives.
    pub data_dir: PathBuf,
    /// The region's credentials bundle (`aq region add` writes it).
    pub tls: TlsFiles,
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// The local API's unix socket (mounts, sidecars); default `DATA_DIR/spoke.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Peer exchange with the other spokes of the region (a *peer share*). Without it this
    /// spoke serves no peers and owns no chunk: in a region whose other spokes have a share it
    /// is a sidecar (replicates nothing, does not count for readiness, asks the owners for
    /// what it reads); alone, it holds every version itself, over the link.
    #[serde(default)]
    pub peer: Option<PeerConfig>,
    /// The chunk cache's tiers and quotas.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Serve the CSI node plugin (in Kubernetes). Without it the spoke serves none.
    #[serde(default)]
    pub csi: Option<csi::CsiConfig>,
    /// The Kubernetes operator (AqueductVolumes into PVCs). Without it, none runs here.
    #[serde(default)]
    pub operator: Option<OperatorConfig>,
    /// The Prometheus endpoint (`GET /metrics`); without this section, none.
    #[serde(default)]
    pub metrics: Option<aqueduct_core::metrics::MetricsConfig>,
    /// What the spoke's servers take on at once.
    #[serde(default)]
    pub limits: limits::LimitsConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Where to serve the region's peers, `IP:PORT` (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// The `HOST:PORT` the other spokes reach this one at; default: `listen` (which then must
    /// name an address, not 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    /// In `region` mode, how many spokes hold each chunk (its first owners). Default 1.
    #[serde(default = "one")]
    pub replicas: usize,
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Fetch streams in flight at once.
    pub streams: usize,
    /// Chunks asked for per stream.
    pub chunks_per_request: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self { streams: 4, chunks_per_request: 8 }
    }
}

/// Values given on the command line (or in the environment) that replace the config file's.
///
/// What one file cannot know when many nodes share it: in Kubernetes the spoke's config is one
/// ConfigMap for the whole DaemonSet, while the node's name and the pod's address come from
/// the downward API, through `AQUEDUCT_NODE` and `AQUEDUCT_PEER_ADVERTISE`.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces `node`.
    pub node: Option<String>,
    /// Replaces `[peer] advertise` (the config must have a `[peer]` section).
    pub advertise: Option<String>,
}

impl SpokeConfig {
    pub fn load(path: &Path) -> Result<Self, SpokeError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Loads the file, replaces what `overrides` gives, then validates the result.
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self, SpokeError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpokeError::ReadConfig { path: path.to_owned(), source })?;
        Self::parse_with(&text, path, overrides)
    }

    /// [`SpokeConfig::load_with`] on the text of the file at `path`.
    pub fn parse_with(text: &str, path: &Path, overrides: &Overrides) -> Result<Self, SpokeError> {
        let invalid = |message: String| SpokeError::Config { path: path.to_owned(), message };
        let mut config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(node) = &overrides.node {
            config.node = node.clone();
        }
        if let Some(advertise) = &overrides.advertise {
            let Some(peer) = &mut config.peer else {
                return Err(invalid(format!(
                    "--advertise (AQUEDUCT_PEER_ADVERTISE) is {advertise:?} but the config has no [peer] section: add one or leave the address out"
                )));
            };
            peer.advertise = Some(advertise.clone());
        }
        if !config.hub.starts_with("https://") {
            return Err(invalid(format!("hub {:?} must be an https:// URL", config.hub)));
        }
        if config.node.is_empty() {
            return Err(invalid("node is missing: set `node` in the config or pass --node (AQUEDUCT_NODE)".into()));
        }
        aqueduct_proto::validate_name("node", &config.node).map_err(|e| invalid(format!("node: {e}")))?;
        if let Some(peer) = &config.peer
            && peer.advertise.is_none()
            && peer.listen.ip().is_unspecified()
        {
            return Err(invalid(format!(
                "peer.listen is {}, which other spokes cannot reach: set peer.advertise to this node's HOST:PORT",
                peer.listen
            )));
        }
        config.cache.validate().map_err(invalid)?;
        if let Some(op) = &config.operator {
            if op.lease_name.is_empty() {
                return Err(invalid("operator.lease_name must not be empty".into()));
            }
            if op.namespace.as_deref() == Some("") {
                return Err(invalid("operator.namespace is empty: leave it out to watch every namespace".into()));
            }
        }
        if config.peer.as_ref().is_some_and(|p| p.replicas == 0) {
            return Err(invalid("peer.replicas must be at least 1".into()));
        }
        if config.replication.streams == 0 || config.replication.chunks_per_request == 0 {
            return Err(invalid("replication.streams and replication.chunks_per_request must be at least 1".into()));
        }
        if config.replication.chunks_per_request > aqueduct_proto::MAX_DIGESTS_PER_REQUEST {
            return Err(invalid(format!(
                "replication.chunks_per_request is {}; servers take at most {} digests per request",
                config.replication.chunks_per_request,
                aqueduct_proto::MAX_DIGESTS_PER_REQUEST
            )));
        }
        config.limits.validate().map_err(invalid)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.data_dir, &mut config.tls.ca, &mut config.tls.cert, &mut config.tls.key] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        let socket = config.socket.take().unwrap_or_else(|| DEFAULT_SOCKET.into());
        config.socket = Some(if socket.is_relative() { config.data_dir.join(socket) } else { socket });
        if let Some(csi) = &mut config.csi {
            csi.resolve(&config.data_dir);
            if csi.ready_timeout.is_zero() {
                return Err(invalid("csi.ready_timeout must be more than 0s".into()));
            }
        }
        Ok(config)
    }

    /// The local API's socket: `socket`, or `DATA_DIR/spoke.sock`.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.data_dir.join(DEFAULT_SOCKET))
    }

    fn read(&self, what: &'static str, path: &Path) -> Result<Vec<u8>, SpokeError> {
        std::fs::read(path).map_err(|source| SpokeError::Credentials { what, path: path.to_owned(), source })
    }

    /// The region this spoke's certificate names.
    fn region(&self) -> Result<Identity, SpokeError> {
        let pem = self.read("region certificate", &self.tls.cert)?;
        match Identity::from_pem(&String::from_utf8_lossy(&pem)) {
            Some(region @ Identity::Region(_)) => Ok(region),
            _ => Err(SpokeError::Config {
                path: self.tls.cert.clone(),
                message: "this certificate names no region: use the bundle `aq region add` wrote".into(),
            }),
        }
    }

    /// The region's client TLS settings: the hub's CA and the region's certificate.
    fn client_tls(&self) -> Result<ClientTlsConfig, SpokeError> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("CA certificate", &self.tls.ca)?))
            .identity(TlsIdentity::from_pem(
                self.read("region certificate", &self.tls.cert)?,
                self.read("region key", &self.tls.key)?,
            )))
    }

    fn endpoint(&self) -> Result<Endpoint, SpokeError> {
        let bad = |e: tonic::transport::Error| SpokeError::Config { path: "hub".into(), message: e.to_string() };
        Ok(Endpoint::from_shared(self.hub.clone())
            .map_err(bad)?
            .tls_config(self.client_tls()?)
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(5))
            .initial_stream_window_size(aqueduct_proto::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(aqueduct_proto::CONNECTION_WINDOW_BYTES))
    }
}

/// Writes a region's credentials bundle into `dir` (`ca.pem`, `cert.pem`, `key.pem` with mode
/// 0600) and a `spoke.toml` for one node that uses it, with its store in `dir/store`. Returns
/// the config's path. For tests, the quickstart and scripted installs.
pub fn write_node_config(
    dir: &Path,
    hub: &str,
    node: &str,
    bundle: &pb::CredentialsBundle,
) -> std::io::Result<PathBuf> {
    use aqueduct_core::durable::{self, PUBLIC, SECRET};
    durable::create_dir_all(dir)?;
    durable::write_file(&dir.join("ca.pem"), bundle.ca_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("cert.pem"), bundle.cert_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("key.pem"), bundle.key_pem.as_bytes(), SECRET)?;
    let config = dir.join("spoke.toml");
    let text = format!(
        "hub = \"{hub}\"\nnode = \"{node}\"\ndata_dir = \"store\"\n[tls]\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
    );
    durable::write_file(&config, text.as_bytes(), PUBLIC)?;
    Ok(config)
}

/// How long to wait before reconnecting, and how often to say so in the log.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const COMPLAIN_EVERY: Duration = Duration::from_secs(30);
/// How long to wait at most before asking again for a node name the hub says is live: an
/// earlier watch of this spoke (before a restart) is gone within about 10 s of keepalive.
const NAME_RETRY_MAX: Duration = Duration::from_secs(4);

/// Why a session with the hub ended.
enum Ended {
    /// The hub could not be reached, or the watch broke.
    Hub(String),
    /// The hub refused the watch: another live watch of the region holds this node's name.
    NameTaken(String),
}

impl From<String> for Ended {
    fn from(reason: String) -> Self {
        Ended::Hub(reason)
    }
}
/// When a failed version is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Runs the spoke until `shutdown` fires.
pub async fn run(config: SpokeConfig, shutdown: CancellationToken) -> Result<(), SpokeError> {
    let cache = Arc::new(TieredStore::open(&config.data_dir, &config.cache)?);
    let store: Arc<dyn ChunkStore> = cache.clone();
    let endpoint = config.endpoint()?;
    let region = config.region()?;
    // Found before any task starts: a spoke that cannot reach Kubernetes does not start.
    let kube = match config.operator.as_ref().filter(|o| o.enabled) {
        Some(_) => Some(kube::Client::try_default().await.map_err(operator::OperatorError::Config)?),
        None => None,
    };
    // Readers and manifests go through a channel of their own, connected when first used:
    // the catalog takes manifests (the largest message), readers chunks.
    let hub = SpokeClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(aqueduct_proto::MAX_CHUNK_MESSAGE_BYTES)
        .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
    let catalog = Arc::new(Catalog::open(
        &config.data_dir.join("catalog"),
        hub.clone().max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES),
    )?);
    let priority = Arc::new(Priority::default());
    // Its own token: the caller's is not ours to cancel.
    let local_stop = shutdown.child_token();
    let (peers, peer_address, peer_task) = match &config.peer {
        // No share and no server, but it may still ask the region's peers for what it reads.
        None => (Arc::new(Peers::new(&config.node, &region, Some(config.client_tls()?))), String::new(), None),
        Some(peer) => {
            let listener = tokio::net::TcpListener::bind(peer.listen).await.map_err(|e| SpokeError::Config {
                path: "peer.listen".into(),
                message: format!("cannot listen on {}: {e}", peer.listen),
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| SpokeError::Config { path: "peer.listen".into(), message: e.to_string() })?;
            let address = peer.advertise.clone().unwrap_or_else(|| bound.to_string());
            let peers = Arc::new(Peers::new(&config.node, &region, Some(config.client_tls()?)));
            let tls = aqueduct_core::server::server_config(
                &config.read("region certificate", &config.tls.cert)?,
                &config.read("region key", &config.tls.key)?,
                &config.read("CA certificate", &config.tls.ca)?,
            )?;
            (peers, address, Some((listener, tls)))
        }
    };
    let metrics = Arc::new(metrics::SpokeMetrics::default());
    // One budget for every transfer; the rate of each new assignments applies to it at once.
    let budget = Arc::new(Budget::new(u64::MAX));
    if let Some(listen) = &config.metrics {
        let (listener, _) = aqueduct_core::metrics::bind(listen).await?;
        let (m, c, b) = (metrics.clone(), cache.clone(), budget.clone());
        let exporter = aqueduct_core::metrics::Exporter::new(metrics.registry(), move || m.refresh(&c, &b));
        tokio::spawn(aqueduct_core::metrics::serve(listener, exporter, config.limits.metrics(), local_stop.clone()));
    }
    let reader = ReadThrough::new(store.clone(), hub, peers.clone(), priority.clone(), metrics);
    let peer_task = peer_task.map(|(listener, tls)| {
        let Identity::Region(name) = &region else { unreachable!("checked by SpokeConfig::region") };
        let limits = &config.limits;
        let per_peer = aqueduct_core::server::KeyedLimit::new(limits.fetch_streams_per_peer, limits.fetch_wait);
        let service = PeerService { region: name.clone(), reader: reader.clone(), per_peer };
        info!(address = %peer_address, "serving the region's peers");
        tokio::spawn(peer_service::serve(listener, tls, limits.server(), service, local_stop.clone()))
    });
    let mounts = Mounts::new(catalog.clone(), reader.clone());
    let socket = config.socket();
    let service = LocalService { catalog: catalog.clone(), reader: reader.clone(), mounts: mounts.clone() };
    let max_streams = config.limits.max_streams_per_connection;
    let local = tokio::spawn(local::serve(socket.clone(), service, max_streams, local_stop.clone()));
    info!(socket = %socket.display(), "local API listening");
    let csi = config.csi.as_ref().map(|csi_config| {
        let Identity::Region(region) = &region else { unreachable!("checked by SpokeConfig::region") };
        let node = csi::node::Node::new(
            csi::node::NodeParts {
                node: config.node.clone(),
                region: region.clone(),
                data_dir: config.data_dir.clone(),
                config: csi_config.clone(),
                catalog: catalog.clone(),
                mounts: mounts.clone(),
                store: store.clone(),
            },
            local_stop.child_token(),
        );
        let service = csi::service::NodeService { node: node.clone() };
        let task = tokio::spawn(csi::serve(
            csi_config.socket.clone(),
            csi::service::IdentityService,
            service,
            max_streams,
            local_stop.clone(),
        ));
        info!(socket = %csi_config.socket.display(), driver = csi::DRIVER_NAME, "CSI node plugin listening");
        (node, task)
    });
    let holds = Arc::new(Holds::default());
    let ready = Arc::new(ReadyVersions::default());
    let operator = match (config.operator.clone(), kube) {
        (Some(op), Some(client)) => {
            let region: Arc<dyn operator::region::RegionView> = Arc::new(SpokeRegion {
                catalog: catalog.clone(),
                cache: cache.clone(),
                holds: holds.clone(),
                ready: ready.clone(),
            });
            let node = config.node.clone();
            let stop = local_stop.clone();
            Some(tokio::spawn(async move { operator::run(client, op, &node, region, stop).await }))
        }
        _ => None,
    };
    let parts = Parts { peer_address, reader, cache, catalog, priority, holds, ready, budget };
    let outcome = replicate_until(&config, endpoint, parts, &shutdown).await;
    // Pods' bind mounts go before the FUSE mounts they show.
    if let Some((node, _)) = &csi {
        node.stop().await;
    }
    mounts.unmount_all().await;
    local_stop.cancel();
    if let Some((_, task)) = csi {
        join_logged(task, "CSI node plugin").await;
    }
    if let Some(task) = operator {
        join_logged(task, "operator").await;
    }
    join_logged(local, "local API").await;
    if let Some(task) = peer_task {
        join_logged(task, "peer API").await;
    }
    outcome
}

/// What the replication loop works with.
struct Parts {
    /// Where this spoke serves its peers (empty: it does not).
    peer_address: String,
    reader: Arc<ReadThrough>,
    cache: Arc<TieredStore>,
    catalog: Arc<Catalog>,
    priority: Arc<Priority>,
    /// Versions AqueductVolumes hold (pinned like the active ones), and the versions this
    /// spoke replicated to Ready (for the operator's status).
    holds: Arc<Holds>,
    ready: Arc<ReadyVersions>,
    /// The link budget every transfer takes from.
    budget: Arc<Budget>,
}

/// Watches the hub and replicates what it assigns, until `shutdown` fires.
async fn replicate_until(
    config: &SpokeConfig,
    endpoint: Endpoint,
    parts: Parts,
    shutdown: &CancellationToken,
) -> Result<(), SpokeError> {
    let Parts { peer_address, reader, cache, catalog, priority, holds, ready: ready_versions, budget } = &parts;
    let options =
        PullOptions { streams: config.replication.streams, chunks_per_request: config.replication.chunks_per_request };
    // Versions this spoke holds its part of: how, and the bytes it reported Ready with.
    let mut ready: HashMap<(String, u64), (ReplicationMode, u64)> = HashMap::new();
    let mut members = String::new();
    const BACKOFF_FIRST: Duration = Duration::from_millis(500);
    let mut backoff = BACKOFF_FIRST;
    let mut last_complaint: Option<Instant> = None;
    let mut failures = 0u64;
    // A spoke with a peer share holds its part of every version; one without holds nothing
    // once the region has had spokes with one (it is a sidecar: it stays one while they
    // restart, as the hub counts it), every version otherwise.
    let sharer = !peer_address.is_empty();
    let mut was_reader = false;
    info!(hub = %config.hub, node = %config.node, data_dir = %config.data_dir.display(), "spoke starting");
    loop {
        // Set once the hub answered: the next failure is a new one, retried soon.
        let mut watched = false;
        let session = async {
            let channel: Channel = endpoint.connect().await.map_err(|e| chain(&e))?;
            // Assignments (with the region's members) and acks come back; reports go out.
            let client = SpokeClient::new(channel)
                .max_decoding_message_size(aqueduct_proto::MAX_CONTROL_MESSAGE_BYTES)
                .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
            let request = pb::WatchRequest { node: config.node.clone(), peer_address: peer_address.clone() };
            let mut watch = match client.clone().watch(request).await {
                Ok(watch) => watch.into_inner(),
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    return Err(Ended::NameTaken(s.message().to_string()));
                }
                Err(s) => return Err(Ended::Hub(s.message().to_string())),
            };
            // The first message carries the watch's session, which every report carries.
            let first = watch
                .message()
                .await
                .map_err(|s| s.message().to_string())?
                .ok_or_else(|| "the hub closed the watch".to_string())?;
            let session = first.session.clone();
            watched = true;
            // The watch is read by a task of its own, so that the region's membership is
            // current even while a version replicates; assignments queue for the loop below.
            let (updates, mut assigned) = tokio::sync::mpsc::channel(16);
            let _watching = AbortOnDrop(tokio::spawn(follow_watch(
                first,
                watch,
                reader.peers().clone(),
                catalog.clone(),
                budget.clone(),
                updates,
            )));
            info!("connected to the hub, watching for work");
            // Reported every few seconds, and at once when a version is Ready.
            let cache_changed = Arc::new(tokio::sync::Notify::new());
            let _cache_reports = AbortOnDrop(tokio::spawn(report_cache(
                client.clone(),
                session.clone(),
                reader.clone(),
                cache.clone(),
                config.cache.memory_only,
                cache_changed.clone(),
            )));
            let replicator = Replicator {
                client,
                session,
                reader: reader.clone(),
                catalog: catalog.clone(),
                priority: priority.clone(),
                options,
            };
            let mut current = pb::Assignments::default();
            // Versions already Ready are reported again once per session: a restarted hub
            // keeps each spoke's progress in memory only.
            let mut reported: HashSet<(String, u64)> = HashSet::new();
            // Failed versions are tried again after this long (doubling up to RETRY_MAX), and
            // at once when the assignments change.
            let mut retry: Option<Duration> = None;
            loop {
                tokio::select! {
                    update = assigned.recv() => {
                        current = update.unwrap_or_else(|| Err::<_, String>("the watch ended".into()))?;
                        retry = None;
                        // Only the newest assignments matter.
                        while let Ok(update) = assigned.try_recv() {
                            current = update?;
                        }
                    }
                    _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {
                        info!("trying failed versions again");
                    }
                    // A volume holds another version (or none): pin again (once the hub's
                    // assignments are known: before, there is nothing to pin).
                    _ = holds.changed.notified(), if !current.assignments.is_empty() => {}
                }
                // Who owns what changed: the versions held as shares are taken up again, so
                // that the region still holds one copy of each (newly owned chunks come from
                // the peers that hold them, the link only for what died with a spoke).
                let now_members = reader.peers().membership();
                if now_members != members {
                    ready.retain(|_, (mode, _)| *mode != ReplicationMode::Region);
                    members = now_members;
                }
                // Without a share, in a region whose other spokes have one: a sidecar. It
                // holds, pins and reports nothing; its readers fetch what they read.
                let reader_only = !sharer && (was_reader || !members.is_empty());
                if reader_only && !was_reader {
                    info!(
                        "no peer share, in a region whose spokes have one: holding no part of the region's copy, fetching only what readers ask for"
                    );
                    was_reader = true;
                }
                if reader_only {
                    ready.clear();
                    ready_versions.set(ready.keys().cloned());
                    cache.set_pinned(HashSet::new());
                    retry = None;
                    continue;
                }
                let replicas = config.peer.as_ref().map_or(1, |p| p.replicas);
                let modes: HashMap<(String, u64), ReplicationMode> = current
                    .assignments
                    .iter()
                    .map(|a| ((a.dataset.clone(), a.version), effective_mode(a, cache, &config.data_dir)))
                    .collect();
                pin(catalog, cache, reader.peers(), &current, &modes, replicas, &holds.held()).await;
                let mut failed = false;
                for a in &current.assignments {
                    let key = (a.dataset.clone(), a.version);
                    let mode = modes[&key];
                    if let Some(&(held, total)) = ready.get(&key) {
                        if reported.insert(key) {
                            replicator.report(a, held, aqueduct_proto::Phase::Ready, total, "", 0).await;
                        }
                        continue;
                    }
                    match replicator.replicate(a, budget.as_ref(), mode, replicas).await {
                        Ok(outcome) => {
                            ready.insert(key.clone(), (mode, outcome.held_bytes));
                            ready_versions.set(ready.keys().cloned());
                            reported.insert(key);
                            cache_changed.notify_one();
                        }
                        Err(replicate::ReplicationError::Hub(status)) if status.code() == tonic::Code::Unavailable => {
                            return Err(Ended::Hub(status.message().to_string()));
                        }
                        Err(e) => {
                            warn!(dataset = %a.dataset, version = a.version, error = %e, "replication failed");
                            replicator.report(a, mode, aqueduct_proto::Phase::Failed, 0, &e.reason(), 0).await;
                            failed = true;
                        }
                    }
                }
                ready_versions.set(ready.keys().cloned());
                retry = failed.then(|| retry.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX)));
            }
        };
        let outcome: Result<(), Ended> = tokio::select! {
            outcome = session => outcome,
            _ = shutdown.cancelled() => return Ok(()),
        };
        if watched {
            backoff = BACKOFF_FIRST;
        }
        let mut wait = backoff;
        match outcome {
            Ok(()) => {}
            Err(Ended::Hub(reason)) => {
                failures += 1;
                // Say it once per interval, not once per attempt.
                if last_complaint.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
                    warn!(hub = %config.hub, %reason, failures, retry_in = ?backoff, "hub unreachable; retrying with backoff");
                    last_complaint = Some(Instant::now());
                }
            }
            Err(Ended::NameTaken(reason)) => {
                // Soon: the usual cause is this spoke's own earlier watch, not yet seen gone.
                wait = backoff.min(NAME_RETRY_MAX);
                if last_complaint.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
                    warn!(
                        node = %config.node,
                        %reason,
                        retry_in = ?wait,
                        "the hub refuses this node's name while another watch holds it: waiting for it to close (a restarted spoke's old connection), or give this spoke its own name"
                    );
                    last_complaint = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads the hub's watch (`first`, its first message, already read): keeps the region's
/// members current in `peers`, the link budget in `budget` (transfers under way follow a change
/// at once) and the assignments on disk, and queues them for the replication loop; ends with
/// the watch, saying why.
async fn follow_watch(
    first: pb::Assignments,
    mut watch: tonic::Streaming<pb::Assignments>,
    peers: Arc<Peers>,
    catalog: Arc<Catalog>,
    budget: Arc<Budget>,
    updates: tokio::sync::mpsc::Sender<Result<pb::Assignments, String>>,
) {
    let mut first = Some(first);
    loop {
        let message = match first.take() {
            Some(first) => Ok(Some(first)),
            None => watch.message().await,
        };
        let update = match message {
            Ok(Some(mut assignments)) => {
                // Members change often and are not the catalog's business; the session is a
                // secret of this watch, never written to disk.
                peers.set_members(std::mem::take(&mut assignments.members));
                assignments.session = String::new();
                let rate = assignments.budget_bytes_per_sec.max(1);
                if budget.set_rate(rate) {
                    info!(budget_bytes_per_sec = rate, "link budget set");
                }
                if let Err(e) = catalog.set_assignments(assignments.clone()) {
                    warn!(error = %e, "could not keep the assignments on disk");
                }
                Ok(assignments)
            }
            Ok(None) => Err("the hub closed the watch".to_string()),
            Err(status) => Err(status.message().to_string()),
        };
        let ended = update.is_err();
        if updates.send(update).await.is_err() || ended {
            return;
        }
    }
}

/// How often the spoke tells the hub how its cache is doing.
const CACHE_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Aborts a task when dropped (when the session that started it ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports the cache's usage and counters every [`CACHE_REPORT_EVERY`].
async fn report_cache(
    mut client: SpokeClient<Channel>,
    session: String,
    reader: Arc<ReadThrough>,
    cache: Arc<TieredStore>,
    memory_only: bool,
    changed: Arc<tokio::sync::Notify>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let (memory, disk) = (cache.memory_usage().unwrap_or_default(), cache.disk_usage().unwrap_or_default());
        let peers = &reader.peers().stats;
        let report = pb::CacheReport {
            node: reader.peers().me().to_string(),
            memory_quota_bytes: memory.quota.unwrap_or(0),
            memory_used_bytes: memory.used,
            disk_quota_bytes: disk.quota.unwrap_or(0),
            disk_used_bytes: disk.used,
            memory_only,
            memory_hits: cache.stats.memory_hits.load(Relaxed),
            disk_hits: cache.stats.disk_hits.load(Relaxed),
            misses: cache.stats.misses.load(Relaxed),
            evictions: cache.stats.evictions(),
            bytes_from_peers: peers.from_peers.load(Relaxed),
            bytes_to_peers: peers.to_peers.load(Relaxed),
            corrupt_from_peers: peers.corrupt_from_peers.load(Relaxed),
            session: session.clone(),
        };
        if let Err(e) = client.report_cache(report).await {
            warn!(error = %e.message(), "could not report the cache to the hub");
        }
        tokio::select! {
            _ = tokio::time::sleep(CACHE_REPORT_EVERY) => {}
            _ = changed.notified() => {}
        }
    }
}

/// How this spoke holds `a`: as the rollout says, and for `auto`, the whole version when it
/// fits the cache (below the high watermark of the tier chunks are kept in), a share of the
/// region's one copy otherwise.
fn effective_mode(a: &pb::Assignment, cache: &TieredStore, data_dir: &Path) -> ReplicationMode {
    match ReplicationMode::from_wire(a.mode).unwrap_or_default() {
        ReplicationMode::Auto if cache.fits(a.total_bytes, data_dir) => ReplicationMode::EveryNode,
        ReplicationMode::Auto => ReplicationMode::Region,
        mode => mode,
    }
}

/// Pins what eviction must never take: the chunks this spoke holds of each dataset's active
/// version, of the versions rolling out (those newer than the active one) and of the older
/// versions AqueductVolumes hold (`held`): all of them for a version held whole, the owned
/// ones for a share.
async fn pin(
    catalog: &Catalog,
    cache: &TieredStore,
    peers: &Peers,
    current: &pb::Assignments,
    modes: &HashMap<(String, u64), ReplicationMode>,
    replicas: usize,
    held: &HashSet<(String, u64)>,
) {
    let mut active: HashMap<&str, u64> = HashMap::new();
    for a in current.assignments.iter().filter(|a| a.active) {
        active.insert(&a.dataset, a.version);
    }
    let mut pinned = HashSet::new();
    let ring = peers.ring();
    for a in &current.assignments {
        if active.get(a.dataset.as_str()).is_some_and(|&v| a.version < v)
            && !held.contains(&(a.dataset.clone(), a.version))
        {
            continue;
        }
        let share = modes.get(&(a.dataset.clone(), a.version)) == Some(&ReplicationMode::Region);
        match catalog.manifest(a).await {
            Ok(manifest) => pinned.extend(
                manifest
                    .files
                    .iter()
                    .flat_map(|f| f.chunks.iter().map(|c| c.digest))
                    .filter(|d| !share || ring.holds(d, replicas)),
            ),
            Err(e) => warn!(dataset = %a.dataset, version = a.version, error = %e, "cannot pin a version's chunks"),
        }
    }
    cache.set_pinned(pinned);
}

/// Waits for one of the spoke's servers to end, and logs why if it failed.
async fn join_logged<E: std::error::Error + 'static>(task: tokio::task::JoinHandle<Result<(), E>>, what: &str) {
    match task.await {
        Ok(Err(e)) => warn!(error = %chain(&e), "{what} failed"),
        Err(e) => warn!(error = %e, "{what} task failed"),
        Ok(Ok(())) => {}
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text = format!("{text}: {s}");
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_holds_the_whole_version_when_it_fits_and_a_share_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig { disk: Some(aqueduct_proto::Size(20 << 20)), ..CacheConfig::default() };
        let cache = TieredStore::open(dir.path(), &config).unwrap();
        let a = |mib: u64, mode: &str| pb::Assignment {
            total_bytes: mib << 20,
            mode: mode.parse::<ReplicationMode>().unwrap().to_wire(),
            ..Default::default()
        };
        assert_eq!(effective_mode(&a(16, ""), &cache, dir.path()), ReplicationMode::EveryNode);
        assert_eq!(effective_mode(&a(20, "auto"), &cache, dir.path()), ReplicationMode::Region, "above the watermark");
        assert_eq!(effective_mode(&a(64, "every-node"), &cache, dir.path()), ReplicationMode::EveryNode);
        assert_eq!(effective_mode(&a(1, "region"), &cache, dir.path()), ReplicationMode::Region);
        // No quota: what the disk has free decides.
        let unlimited = TieredStore::open(&dir.path().join("u"), &CacheConfig::default()).unwrap();
        assert_eq!(effective_mode(&a(16, ""), &unlimited, dir.path()), ReplicationMode::EveryNode);
        assert_eq!(effective_mode(&a(u64::MAX >> 20, ""), &unlimited, dir.path()), ReplicationMode::Region);
    }

    /// A version older than the active one is pinned only while a volume holds it, and the
    /// operator's view of the region counts the bytes of it the cache holds.
    #[tokio::test]
    async fn held_versions_stay_pinned_and_the_region_view_counts_them() {
        use crate::operator::region::RegionView;
        use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest};
        use prost::Message;

        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(TieredStore::open(dir.path(), &CacheConfig::default()).unwrap());
        let hub = SpokeClient::new(Endpoint::from_static("https://127.0.0.1:1").connect_lazy());
        let catalog = Arc::new(Catalog::open(&dir.path().join("catalog"), hub).unwrap());
        // Two versions of one file of two chunks each, kept in the catalog as the hub sent them.
        let data = |v: u64, i: u64| {
            format!("{v}.{i}").into_bytes().into_iter().chain(std::iter::repeat(b' ')).take(100).collect::<Vec<u8>>()
        };
        let version = |v: u64| {
            // Each chunk's bytes are its name, 100 bytes long.
            let chunks =
                (0..2u64).map(|i| ChunkRef { digest: Digest::of(&data(v, i)), offset: i * 100, length: 100 }).collect();
            let file = FileEntry {
                path: "model".into(),
                object: "model".into(),
                size: 200,
                mode: 0o644,
                mtime_unix_ms: 0,
                chunks,
            };
            let m = Manifest::new("m".into(), v, ChunkerParams::DEFAULT, vec![file]).unwrap();
            let path = dir.path().join(format!("catalog/manifests/m/{v}.pb"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, pb::Manifest::from(&m).encode_to_vec()).unwrap();
            let a = pb::Assignment {
                dataset: "m".into(),
                version: v,
                total_bytes: 200,
                root: m.root.0.to_vec(),
                active: v == 2,
                mode: ReplicationMode::EveryNode.to_wire(),
                ready: v == 2,
            };
            (m, a)
        };
        let ((v1, a1), (v2, a2)) = (version(1), version(2));
        let current = pb::Assignments { assignments: vec![a1, a2], ..Default::default() };
        catalog.set_assignments(current.clone()).unwrap();
        let modes =
            current.assignments.iter().map(|a| ((a.dataset.clone(), a.version), ReplicationMode::EveryNode)).collect();
        let peers = Peers::new("n", &Identity::Region("r".into()), None);
        let chunks = |m: &Manifest| m.distinct_chunks().into_iter().map(|(d, _)| d).collect::<HashSet<_>>();

        pin(&catalog, &cache, &peers, &current, &modes, 1, &HashSet::new()).await;
        assert_eq!(cache.pinned(), chunks(&v2), "only the active version");
        let holds = Arc::new(Holds::default());
        holds.hold("ns/old", "m", 1);
        pin(&catalog, &cache, &peers, &current, &modes, 1, &holds.held()).await;
        assert_eq!(cache.pinned(), &chunks(&v2) | &chunks(&v1), "the held version too");

        let region = SpokeRegion { catalog, cache: cache.clone(), holds, ready: Arc::new(ReadyVersions::default()) };
        let names: Vec<u64> = region.versions("m").iter().map(|v| v.version).collect();
        assert_eq!(names, [1, 2]);
        // v2 is active: Ready. v1: one chunk of two in the cache.
        assert!(region.holding("m", 2).await.ready);
        cache.put(&v1.files[0].chunks[0].digest, &data(1, 0)).unwrap();
        let held = region.holding("m", 1).await;
        assert_eq!((held.cached_bytes, held.ready), (100, false));
        region.ready.set([("m".to_string(), 1)]);
        assert!(region.holding("m", 1).await.ready, "replicated to Ready by this spoke");
        assert_eq!(region.holding("x", 1).await, Default::default());
    }

    #[test]
    fn example_config_parses_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        std::fs::write(&path, include_str!("../../deploy/spoke/spoke.example.toml")).unwrap();
        let config = SpokeConfig::load(&path).unwrap();
        assert_eq!(config.tls.ca, dir.path().join("credentials/ca.pem"));
        assert_eq!(config.replication.streams, 4);
        assert_eq!(config.metrics.as_ref().map(|m| m.listen.port()), Some(9464));
        assert_eq!(config.socket.as_deref(), Some(Path::new("/var/lib/aqueduct-spoke/spoke.sock")));
        let peer = config.peer.as_ref().unwrap();
        assert_eq!((peer.listen.port(), peer.advertise.as_deref()), (7444, Some("10.0.3.17:7444")));
        assert_eq!((config.cache.memory.0, config.cache.disk.map(|d| d.0)), (4 << 30, Some(200 << 30)));
        let csi = config.csi.as_ref().unwrap();
        assert_eq!(csi.socket, Path::new("/var/lib/kubelet/plugins/csi.aqueduct.io/csi.sock"));
        assert_eq!((csi.ready_timeout, csi.start_before_ready), (Duration::from_secs(90), false));
        let text = include_str!("../../deploy/spoke/spoke.example.toml")
            .replace("ready_timeout = \"90s\"", "ready_timeout = \"0s\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("csi.ready_timeout must be more than 0s"), "{err}");
        let op = config.operator.as_ref().unwrap();
        assert_eq!(
            (op.enabled, op.namespace.as_deref(), op.lease_name.as_str()),
            (false, Some("inference"), "aqueduct-operator")
        );
        // Unknown keys of the operator's section are errors too.
        let text = include_str!("../../deploy/spoke/spoke.example.toml").replace("lease_name =", "lease =");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("lease"), "{err}");
        // A quota below one chunk is refused, naming the key.
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("disk = \"200GiB\"", "disk = \"1MiB\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("cache.disk is 1MiB, smaller than one chunk"), "{err}");
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("disk = \"200GiB\"", "disk = \"lots\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"lots\" is not a size"), "{err}");
        // Peers must be reachable: 0.0.0.0 needs an address to advertise.
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("advertise = \"10.0.3.17:7444\"\n", "");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("peer.advertise"), "{err}");

        std::fs::write(&path, "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\nstreems = 3\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n").unwrap();
        let err = SpokeConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("streems"), "{err}");
        // Without `socket`, the socket is in the data directory.
        std::fs::write(
            &path,
            "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        assert_eq!(SpokeConfig::load(&path).unwrap().socket, Some(dir.path().join("d/spoke.sock")));
        assert!(SpokeConfig::load(&path).unwrap().csi.is_none(), "no [csi]: no node plugin");
        assert!(SpokeConfig::load(&path).unwrap().metrics.is_none(), "no [metrics]: no endpoint");
        // A [csi] section with nothing in it: the socket is in the data directory too.
        std::fs::write(
            &path,
            "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[csi]\n",
        )
        .unwrap();
        let csi = SpokeConfig::load(&path).unwrap().csi.unwrap();
        assert_eq!((csi.socket, csi.ready_timeout), (dir.path().join("d/csi.sock"), Duration::from_secs(90)));
        std::fs::write(
            &path,
            "hub = \"http://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        assert!(SpokeConfig::load(&path).unwrap_err().to_string().contains("https://"));
    }

    /// The spoke config inside the sidecar example's ConfigMap loads: memory-only, its socket
    /// where the `aqueduct-fuse` sidecar looks for it.
    #[test]
    fn sidecar_example_config_loads() {
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(include_str!("../../deploy/spoke/examples/sidecar-pod.yaml")).unwrap();
        let toml = docs[0]["data"]["spoke.toml"].as_str().expect("the ConfigMap holds spoke.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        std::fs::write(&path, toml).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("AQUEDUCT_NODE"), "the pod's name comes from the environment: {err}");
        let pod = Overrides { node: Some("llama-server".into()), advertise: None };
        let config = SpokeConfig::load_with(&path, &pod).unwrap();
        assert_eq!(config.node, "llama-server");
        assert!(config.cache.memory_only && config.peer.is_none());
        assert_eq!(config.socket, Some(PathBuf::from("/run/aqueduct/spoke.sock")));
        let sidecars = &docs[1]["spec"]["initContainers"];
        assert_eq!(sidecars[0]["env"][0]["name"], "AQUEDUCT_NODE");
        let fuse_args = sidecars[1]["args"].to_string();
        assert!(fuse_args.contains("/run/aqueduct/spoke.sock"), "{fuse_args}");
    }

    /// The command line's node name and peer address replace the file's, and are validated
    /// like them; a file without `node` needs one from the command line.
    #[test]
    fn overrides_replace_node_and_advertise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        let base = "hub = \"https://h:1\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let with_peer = format!("{base}[peer]\nlisten = \"0.0.0.0:7444\"\n");
        let overrides = |node: Option<&str>, advertise: Option<&str>| Overrides {
            node: node.map(Into::into),
            advertise: advertise.map(Into::into),
        };

        std::fs::write(&path, &with_peer).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("node is missing") && err.contains("AQUEDUCT_NODE"), "{err}");
        let config = SpokeConfig::load_with(&path, &overrides(Some("gpu-node-7"), Some("10.0.3.17:7444"))).unwrap();
        assert_eq!(config.node, "gpu-node-7");
        assert_eq!(config.peer.unwrap().advertise.as_deref(), Some("10.0.3.17:7444"));
        // Without the address, 0.0.0.0 is still refused.
        let err = SpokeConfig::load_with(&path, &overrides(Some("n"), None)).unwrap_err().to_string();
        assert!(err.contains("peer.advertise"), "{err}");
        // The name from the command line is checked like the file's.
        let err = SpokeConfig::load_with(&path, &overrides(Some("Bad Name"), Some("h:1"))).unwrap_err().to_string();
        assert!(err.contains("node:"), "{err}");

        // The command line wins over the file.
        std::fs::write(&path, format!("node = \"from-file\"\n{with_peer}advertise = \"f:1\"\n")).unwrap();
        assert_eq!(SpokeConfig::load(&path).unwrap().node, "from-file");
        let config = SpokeConfig::load_with(&path, &overrides(Some("from-env"), Some("10.1.2.3:7444"))).unwrap();
        assert_eq!(
            (config.node.as_str(), config.peer.unwrap().advertise.as_deref()),
            ("from-env", Some("10.1.2.3:7444"))
        );

        // An address with nowhere to go is an error, not silently dropped.
        std::fs::write(&path, format!("node = \"n\"\n{base}")).unwrap();
        let err = SpokeConfig::load_with(&path, &overrides(None, Some("10.1.2.3:7444"))).unwrap_err().to_string();
        assert!(err.contains("no [peer] section"), "{err}");
    }
}
