//! The Aqueduct hub: the on-prem control plane.
//!
//! It keeps sources (where bytes live), datasets (a name bound to a source prefix) and
//! versions (immutable manifests of content-defined, BLAKE3-named chunks) in an embedded
//! database, and answers for them over gRPC with mutual TLS. The hub never copies the data:
//! a version records, for every chunk, where its bytes are in the source.
//!
//! Modules, from the bottom up: [`source`] (listing and reading sources: directories, S3),
//! [`chunker`] (FastCDC + BLAKE3), [`rollout`] (the rollout lifecycle's rules, pure),
//! [`store`] (the metadata store), [`snapshot`] (cutting a version), [`auth`] and [`pki`]
//! (identities and certificates), [`metrics`] (Prometheus), [`health`] (what readiness
//! checks: the database and the sources), [`live`] (what the hub keeps in
//! memory: live members and their reports, budgets, the relay's ledger, change notices), then
//! the two services, siblings that share `live` and never call each other: [`api`] (the
//! admin API) and [`relay`] (the spokes' API and chunk relay). Here: [`init`] (its steps,
//! crash-safe, in `setup`) and [`serve`], which the `aqueduct-hub` binary calls.

pub mod api;
pub mod auth;
pub mod chunker;
pub mod config;
mod error;
pub mod health;
pub mod live;
pub mod metrics;
pub mod pki;
pub mod relay;
pub mod rollout;
mod setup;
pub mod signing;
pub mod snapshot;
pub mod source;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aqueduct_proto::hub::v1::admin_server::AdminServer;
use aqueduct_proto::hub::v1::spoke_server::SpokeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::HubConfig;
use crate::pki::{Authority, PkiError};
use crate::snapshot::SnapshotOptions;
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path} already holds a hub ({what} exists); use another --data-dir or remove it")]
    AlreadyInitialised { path: PathBuf, what: String },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] aqueduct_core::metrics::MetricsError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the hub's signing key (signing.key): {0}")]
    Signing(#[from] aqueduct_core::signing::SigningError),
    #[error("the hub's TLS files (tls.cert, tls.key, tls.ca) are not usable: {0}")]
    Tls(#[from] aqueduct_core::server::TlsSetupError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HubError + use<> {
    let path = path.to_owned();
    move |source| HubError::Io { action, path, source }
}

/// What `init` wrote.
#[derive(Debug)]
pub struct InitOutcome {
    pub config_path: PathBuf,
    pub admin_config_path: PathBuf,
}

/// Creates a hub's data directory: the CA, the hub's certificate (valid for `hosts` plus
/// localhost), an admin bundle (`admin/`: CA, admin certificate and key, and an `aq.toml`
/// that points `aq` at this hub) and `hub.toml`. Refuses a directory that holds `hub.toml`;
/// completes one that an interrupted init left, keeping its CA (see `setup`).
pub fn init(data_dir: &Path, listen: SocketAddr, hosts: &[String]) -> Result<InitOutcome, HubError> {
    setup::init_with(data_dir, listen, hosts, &mut |_| Ok(()))
}

/// What no source may hold and no snapshot may read: the hub's data directory (database, PKI,
/// admin bundle) and its keys, wherever the config puts them.
fn hub_files(config: &HubConfig) -> source::HubFiles {
    source::HubFiles::new([
        config.data_dir.clone(),
        config.resolve(&config.tls.ca_key),
        config.resolve(&config.tls.key),
        config.resolve(&config.signing.key),
    ])
}

/// How often the hub pings an idle connection, and how long it waits for the answer.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the hub's API on `listener` until `shutdown` fires.
pub async fn serve(config: HubConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), HubError> {
    let read = |p: &Path| {
        let path = config.resolve(p);
        std::fs::read(&path).map_err(|source| HubError::Pki(PkiError::Read { path, source }))
    };
    let tls = aqueduct_core::server::server_config(
        &read(&config.tls.cert)?,
        &read(&config.tls.key)?,
        &read(&config.tls.ca)?,
    )?;
    std::fs::create_dir_all(&config.data_dir).map_err(io_err("create", &config.data_dir))?;
    let db = Arc::new(SqliteStore::open(&config.database_path())?);
    let signer = Arc::new(signing::Signer::open_or_create(&config.resolve(&config.signing.key))?);
    {
        let (db, signer) = (db.clone(), signer.clone());
        tokio::task::spawn_blocking(move || signing::sign_unsigned(db.as_ref(), &signer))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
    }
    let mut snapshot = SnapshotOptions::default();
    if let Some(p) = config.snapshot.parallelism {
        snapshot.parallelism = p;
    }
    let authority = Arc::new(Authority::load(&config.resolve(&config.tls.ca), &config.resolve(&config.tls.ca_key))?);
    let live = live::Live { stopping: shutdown.clone(), ..Default::default() };
    let flusher = tokio::spawn(live.ledger.clone().run(db.clone(), shutdown.clone()));
    // Readiness (the database answers, the sources are reachable), checked by one loop; the
    // probes and the gRPC health service read what it found.
    let health = aqueduct_core::health::Health::new(vec![
        <AdminServer<api::AdminService> as tonic::server::NamedService>::NAME,
        <SpokeServer<relay::SpokeService> as tonic::server::NamedService>::NAME,
    ])
    .await;
    let checks = health::HubChecks::new(db.clone(), hub_files(&config));
    tokio::spawn(aqueduct_core::health::run(health.clone(), checks, shutdown.clone()));
    if let Some(metrics) = &config.metrics {
        let (listener, _) = aqueduct_core::metrics::bind(metrics).await?;
        let (state, members, hub_metrics) = (db.clone(), live.members.clone(), live.metrics.clone());
        let exporter = aqueduct_core::metrics::Exporter::with_probes(
            live.metrics.registry(),
            move || hub_metrics.refresh(state.as_ref(), |region| members.members(region).len()),
            health.clone(),
        );
        tokio::spawn(aqueduct_core::metrics::serve(listener, exporter, config.limits.metrics(), shutdown.clone()));
        tokio::spawn(live.metrics.clone().run(shutdown.clone()));
    }
    // Requests are small; answers go up to a manifest (the largest message there is).
    let admin = AdminServer::new(api::AdminService::new(
        db.clone(),
        snapshot,
        authority,
        signer.clone(),
        live.clone(),
        hub_files(&config),
    ))
    .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
    .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
    let relay_limits = relay::RelayLimits::new(&config.limits);
    let spoke =
        SpokeServer::new(relay::SpokeService::new(db.clone(), live.clone(), relay_limits, hub_files(&config), signer))
            .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
            .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
    let addr = listener.local_addr().map_err(io_err("inspect", Path::new("listener")))?;
    info!(%addr, data_dir = %config.data_dir.display(), "hub serving");
    let incoming = aqueduct_core::server::incoming(listener, tls, config.limits.server(), "hub API");
    // A spoke that vanishes without closing its connection stops being a member of its region
    // when its keepalive goes unanswered.
    aqueduct_core::server::grpc_server(config.limits.max_streams_per_connection, KEEPALIVE)
        .add_service(health.grpc_service())
        .add_service(admin)
        .add_service(spoke)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    // The last relayed bytes reach the database before the hub says it stopped: once more
    // after the server has let go of its streams (each counts its bytes as it ends).
    let _ = flusher.await;
    let (ledger, db) = (live.ledger.clone(), db.clone());
    let _ = tokio::task::spawn_blocking(move || ledger.flush(db.as_ref())).await;
    info!("hub stopped");
    Ok(())
}
