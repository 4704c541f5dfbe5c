//! The spoke: Aqueduct's regional agent.
//!
//! It connects to the hub with its node's certificate (got by enrolment with a token and
//! renewed before it expires: [`enrol`]; presented through [`tls`], which lets a renewed
//! certificate take over with no connection closed), watches for the versions its region
//! must hold (kept in the [`catalog`]), and makes its chunk store hold every chunk of each,
//! verified: the [`controller`] decides what to replicate, pin and report (a pure
//! [`controller::plan`]), [`replicate`] fetches a version's chunks. It drives read-only FUSE
//! mounts of those versions ([`mounts`]), which the node's FUSE holder serves ([`holder`]: a
//! process of its own, so that mounts outlive the spoke), reading from the store, or through
//! the spoke on a miss, ahead of replication ([`reader`], [`priority`]); the CLI drives them
//! over a unix socket ([`local`]), through which the holder also reads.
//! Chunks come from the hub or from peers through one seam ([`origin`]); every retry follows
//! one policy ([`retry`]). The config file and its validation are [`config`]'s; this file
//! only wires the parts together ([`run`]). Whether the spoke is ready (connected to the hub,
//! its store usable) is [`health`]'s to check.
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
//! With a `[csi]` section in its config, the spoke is also the region's CSI node plugin
//! ([`csi`]): the kubelet asks it to put a dataset version into a pod, as a read-only bind
//! mount of one FUSE mount per version on the node.
//! In Kubernetes, with an `[operator]` section in its config, the spoke also competes for its
//! region's operator lease; the leader turns `AqueductVolume`s into PVCs ([`operator`]) and
//! holds the versions they name in the cache.

pub mod cache;
pub mod catalog;
pub mod config;
pub mod controller;
pub mod csi;
pub mod enrol;
pub mod health;
pub mod holder;
pub mod hubs;
pub mod in_use;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod mounts;
pub mod operator;
pub mod origin;
pub mod peer_service;
pub mod peers;
pub mod priority;
pub mod reader;
pub mod replicate;
pub mod retry;
pub mod store;
pub mod tls;
pub mod trust;

use std::sync::Arc;

use aqueduct_core::budget::Budget;
use aqueduct_core::revocation::RevocationList;
use aqueduct_core::server::revoke::Revocations;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::TieredStore;
use crate::catalog::Catalog;
use crate::config::ConfigError;
use crate::local::LocalService;
use crate::mounts::Mounts;
use crate::operator::region::{Holds, ReadyVersions, SpokeRegion};
use crate::origin::Network;
use crate::peer_service::PeerService;
use crate::peers::Peers;
use crate::priority::Priority;
use crate::reader::ReadThrough;
use crate::store::ChunkStore;

// The crate's entry point takes its config: what `run` needs is found beside it.
pub use crate::config::{Enrolment, Overrides, SpokeConfig, write_enrol_config, write_node_config};

#[derive(Debug, thiserror::Error)]
pub enum SpokeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cache(#[from] store::CacheError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Operator(#[from] operator::OperatorError),
    #[error(transparent)]
    Metrics(#[from] aqueduct_core::metrics::MetricsError),
    #[error(transparent)]
    Mounts(#[from] mounts::MountError),
    #[error("the node's certificate cannot serve the peer API: {0}")]
    Tls(#[from] aqueduct_core::server::TlsSetupError),
    #[error(transparent)]
    Enrol(#[from] enrol::EnrolError),
}

/// Runs the spoke until `shutdown` fires.
pub async fn run(config: SpokeConfig, shutdown: CancellationToken) -> Result<(), SpokeError> {
    let cache = Arc::new(TieredStore::open(&config.data_dir, &config.cache)?);
    let store: Arc<dyn ChunkStore> = cache.clone();
    let endpoint = config.endpoint()?;
    // Every connection to a hub goes through its connector: to the hub in use, or the next.
    let hubs = hubs::Hubs::new(config.hub.0.clone());
    // The node's certificate: kept, given, or got now by enrolment.
    let tls = enrol::credentials(&config).await?;
    let region = tls.current().identity.clone();
    let Some(region_name) = region.region().map(str::to_string) else {
        unreachable!("enrol::credentials gives a node's certificate")
    };
    let renewal = Arc::new(enrol::Renewal::default());
    let renewing = tokio::spawn(enrol::renew(
        config.clone(),
        tls.clone(),
        endpoint.clone(),
        hubs.clone(),
        renewal.clone(),
        shutdown.child_token(),
    ));
    // Found before any task starts: a spoke that cannot reach Kubernetes does not start.
    let kube = match config.operator.as_ref().filter(|o| o.enabled) {
        Some(_) => Some(kube::Client::try_default().await.map_err(operator::OperatorError::Config)?),
        None => None,
    };
    // Readers and manifests go through a channel of their own, connected when first used:
    // the catalog takes manifests (the largest message), readers chunks.
    let hub = SpokeClient::new(endpoint.connect_with_connector_lazy(hubs.connector(tls.connector())))
        .max_decoding_message_size(aqueduct_proto::MAX_CHUNK_MESSAGE_BYTES)
        .max_encoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
    let catalog = Arc::new(Catalog::open(
        &config.data_dir.join("catalog"),
        hub.clone().max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES),
        config.trust.keys.clone(),
    )?);
    // The revocation list the hub last sent (kept with the assignments): enforced by the peer
    // server from the start, before the hub is reached.
    let revocations = Revocations::default();
    follow_revocations(&catalog, &revocations, &shutdown);
    let priority = Arc::new(Priority::default());
    // Its own token: the caller's is not ours to cancel.
    let local_stop = shutdown.child_token();
    // The node's FUSE mounts: the holder serves them (and may have for a while, for an earlier
    // spoke); this spoke adopts them.
    let reach = holder::Reach {
        config: config.mounts.clone(),
        data_dir: config.data_dir.clone(),
        spoke_socket: config.socket(),
        store_on_disk: !config.cache.memory_only,
    };
    let mounts = Arc::new(Mounts::start(reach, &local_stop).await?);
    if !config.cache.memory_only {
        follow_whole_files(cache.clone(), mounts.clone(), config.data_dir.clone(), local_stop.clone());
    }
    let (peers, peer_address, peer_task) = match &config.peer {
        // No share and no server, but it may still ask the region's peers for what it reads.
        None => (Arc::new(Peers::new(&config.node, &region, Some(tls.clone()))), String::new(), None),
        Some(peer) => {
            let listener = tokio::net::TcpListener::bind(peer.listen).await.map_err(|e| ConfigError::Invalid {
                path: "peer.listen".into(),
                message: format!("cannot listen on {}: {e}", peer.listen),
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| ConfigError::Invalid { path: "peer.listen".into(), message: e.to_string() })?;
            let address = peer.advertise.clone().unwrap_or_else(|| bound.to_string());
            let peers = Arc::new(Peers::new(&config.node, &region, Some(tls.clone())));
            (peers, address, Some((listener, tls.server_config()?)))
        }
    };
    let metrics = Arc::new(metrics::SpokeMetrics::default());
    // One budget for every transfer; the rate of each new assignments applies to it at once.
    let budget = Arc::new(Budget::new(u64::MAX));
    // Readiness (the hub session is up, the store usable), checked by one loop; the probes,
    // the local API's gRPC health service and the CSI Probe read what it found.
    let link = Arc::new(health::HubLink::default());
    let health = aqueduct_core::health::Health::new(vec![
        <aqueduct_proto::spoke::v1::local_server::LocalServer<LocalService> as tonic::server::NamedService>::NAME,
    ])
    .await;
    let checks = health::SpokeChecks {
        link: link.clone(),
        store_dir: (!config.cache.memory_only).then(|| config.data_dir.join("tmp")),
        fuse: config.csi.is_some(),
    };
    tokio::spawn(aqueduct_core::health::run(health.clone(), checks, local_stop.clone()));
    if let Some(listen) = &config.metrics {
        let (listener, _) = aqueduct_core::metrics::bind(listen).await?;
        let (m, c, b) = (metrics.clone(), cache.clone(), budget.clone());
        let (held, runtime) = (mounts.clone(), tokio::runtime::Handle::current());
        let exporter = aqueduct_core::metrics::Exporter::with_probes(
            metrics.registry(),
            move || {
                m.refresh(&c, &b);
                // The holder counts the reads of the mounts it serves (render runs on a blocking
                // thread, so waiting for its answer here is fine).
                let asked = runtime.block_on(tokio::time::timeout(std::time::Duration::from_secs(2), held.counters()));
                if let Ok(Ok((reads, whole))) = asked {
                    m.set_fuse_reads(reads);
                    m.set_whole_files(whole);
                }
            },
            health.clone(),
        );
        tokio::spawn(aqueduct_core::metrics::serve(listener, exporter, config.limits.metrics(), local_stop.clone()));
    }
    let origins = Arc::new(Network::new(hub, hubs.clone(), peers.clone()));
    let reader = ReadThrough::new(store.clone(), origins, peers.clone(), priority.clone(), metrics);
    let peer_task = peer_task.map(|(listener, tls)| {
        let limits = &config.limits;
        let per_peer = aqueduct_core::server::KeyedLimit::new(limits.fetch_streams_per_peer, limits.fetch_wait);
        let service = PeerService { region: region_name.clone(), reader: reader.clone(), per_peer };
        info!(address = %peer_address, "serving the region's peers");
        tokio::spawn(peer_service::serve(
            listener,
            tls,
            limits.server(),
            service,
            revocations.clone(),
            local_stop.clone(),
        ))
    });
    let socket = config.socket();
    let sidecars = Arc::new(in_use::Sidecars::default());
    let service = LocalService {
        catalog: catalog.clone(),
        reader: reader.clone(),
        mounts: mounts.clone(),
        sidecars: sidecars.clone(),
    };
    let max_streams = config.limits.max_streams_per_connection;
    let local =
        tokio::spawn(local::serve(socket.clone(), service, health.grpc_service(), max_streams, local_stop.clone()));
    info!(socket = %socket.display(), "local API listening");
    let mut csi = None;
    if let Some(csi_config) = config.csi.as_ref() {
        // Takes back what an earlier spoke published before serving the kubelet.
        let node = csi::node::Node::start(
            csi::node::NodeParts {
                node: config.node.clone(),
                region: region_name.clone(),
                data_dir: config.data_dir.clone(),
                config: csi_config.clone(),
                catalog: catalog.clone(),
                mounts: mounts.clone(),
                store: store.clone(),
            },
            local_stop.child_token(),
        )
        .await;
        let service = csi::service::NodeService { node: node.clone() };
        let (health, probing) = (health.clone(), node.clone());
        let identity = csi::service::IdentityService {
            ready: Arc::new(move || {
                let (store, fuse) = (health.check("store"), health.check("fuse"));
                health::csi_ready(store.as_ref(), fuse.as_ref(), health.alive(), probing.stopping())
            }),
        };
        let task =
            tokio::spawn(csi::serve(csi_config.socket.clone(), identity, service, max_streams, local_stop.clone()));
        info!(socket = %csi_config.socket.display(), driver = csi::DRIVER_NAME, "CSI node plugin listening");
        csi = Some((node, task));
    }
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
    let parts = controller::Parts {
        peer_address,
        reader,
        cache,
        catalog,
        priority,
        holds,
        ready,
        budget,
        link,
        hubs,
        tls: tls.clone(),
        renewal,
        mounts: mounts.clone(),
        csi: csi.as_ref().map(|(node, _)| node.clone()),
        sidecars,
        in_use: Arc::new(in_use::InUse::default()),
    };
    controller::run(&config, endpoint, parts, &shutdown).await;
    // Nothing is unmounted: the pods' binds and the holder's mounts stay for the next spoke.
    if let Some((node, _)) = &csi {
        node.stop().await;
    }
    // The holder keeps serving every mount (unless it runs in this process).
    local_stop.cancel();
    mounts.stop().await;
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
    let _ = renewing.await;
    Ok(())
}

/// Waits for one of the spoke's servers to end, and logs why if it failed.
async fn join_logged<E: std::error::Error + 'static>(task: tokio::task::JoinHandle<Result<(), E>>, what: &str) {
    match task.await {
        Ok(Err(e)) => warn!(error = %chain(&e), "{what} failed"),
        Err(e) => warn!(error = %e, "{what} task failed"),
        Ok(Ok(())) => {}
    }
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text = format!("{text}: {s}");
        cur = s.source();
    }
    text
}

/// How often the spoke asks what the holder's whole copies take on disk.
const WHOLE_FILES_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts the holder's whole copies in the disk quota, for as long as the spoke runs: every
/// [`WHOLE_FILES_EVERY`], the holder is told what the copies may take (what pinned chunks
/// leave of the quota), and what it reports they take (or what is in `DATA_DIR/files`, if
/// more) goes to the store, which leaves the chunks the rest of the quota (evicting unpinned
/// chunks if they no longer fit).
fn follow_whole_files(
    cache: Arc<TieredStore>,
    mounts: Arc<Mounts>,
    data_dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(WHOLE_FILES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => return,
            }
            // A sum over the pinned chunks: off the runtime's threads.
            let c = cache.clone();
            let room = tokio::task::spawn_blocking(move || c.whole_files_room()).await.ok().flatten();
            let asked = match room {
                Some(room) => tokio::time::timeout(WHOLE_FILES_EVERY, mounts.limit_whole_files(room)).await,
                None => tokio::time::timeout(WHOLE_FILES_EVERY, async { Ok(mounts.counters().await?.1) }).await,
            };
            let reported = match asked {
                Ok(Ok(whole)) => whole,
                _ => None,
            };
            let (cache, dir) = (cache.clone(), data_dir.clone());
            let counted = tokio::task::spawn_blocking(move || {
                let bytes = holder::whole_files_on_disk(reported.as_ref(), holder::measure_whole_files(&dir));
                (bytes, (bytes != cache.whole_files()).then(|| cache.set_whole_files(bytes)))
            })
            .await;
            match counted {
                Ok((bytes, Some(Ok(evicted)))) if evicted > 0 => {
                    info!(whole_files = %aqueduct_proto::Size(bytes), evicted, "whole copies grew: evicted chunks to keep the disk quota")
                }
                Ok((_, Some(Err(e)))) => warn!(error = %e, "cannot evict chunks to make room for whole copies"),
                _ => {}
            }
        }
    });
}

/// Puts in force the revocation list of the assignments the catalog holds (those kept on disk
/// first, then each the hub sends), for as long as the spoke runs: the peer server refuses,
/// and closes the connections of, the certificates it revokes. An older list than the one in
/// force (a lower generation) changes nothing.
fn follow_revocations(catalog: &Catalog, revocations: &Revocations, shutdown: &CancellationToken) {
    let list_of = |a: &aqueduct_proto::hub::v1::Assignments| a.revocations.as_ref().map(RevocationList::from);
    if let Some(list) = list_of(&catalog.assignments()) {
        revocations.update(list);
    }
    let (mut changes, revocations, stop) = (catalog.subscribe(), revocations.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            let list = list_of(&changes.borrow_and_update());
            if let Some(list) = list {
                let generation = list.generation;
                if revocations.update(list) {
                    info!(generation, "revocation list updated");
                }
            }
        }
    });
}
