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
//! (identities and certificates), [`enrol`] (tokens, enrolment and renewal of nodes'
//! certificates), [`metrics`] (Prometheus), [`health`] (what readiness
//! checks: the database and the sources), [`live`] (what the hub keeps in
//! memory: live members and their reports, budgets, the relay's ledger, change notices),
//! [`triggers`] (watched datasets: the task that snapshots them and rolls out what it cut,
//! through the admin API's own calls), then
//! the two services, siblings that share `live` and never call each other: [`api`] (the
//! admin API) and [`relay`] (the spokes' API and chunk relay). Here: [`init`] (its steps,
//! crash-safe, in `setup`) and [`serve`], which the `aqueduct-hub` binary calls, and
//! [`admins`] (an admin bundle issued on the hub's machine).

pub mod admins;
pub mod api;
pub mod auth;
pub mod backup;
pub mod chunker;
pub mod config;
pub mod database;
pub mod enrol;
mod error;
pub mod health;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod pki;
pub mod planning;
pub mod relay;
pub mod rollout;
mod setup;
pub mod siblings;
pub mod signing;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod triggers;

pub use setup::{RotateOutcome, rotate_issuer};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aqueduct_proto::hub::v1::admin_server::AdminServer;
use aqueduct_proto::hub::v1::enrol_server::EnrolServer;
use aqueduct_proto::hub::v1::spoke_server::SpokeServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::HubConfig;
use crate::pki::{Authority, PkiError};
use crate::snapshot::SnapshotOptions;
use crate::store::leases::LeaseStore;
use crate::store::{StoreError, TrustStore};

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
    #[error(
        "{cert} is written but its key {key} is not there: init needs the root CA's key to finish; pass --root-key-out with where it is, or start again with an empty --data-dir"
    )]
    RootKeyMissing { cert: PathBuf, key: PathBuf },
    #[error("--admin: {0}")]
    BadAdminName(String),
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
    /// Where the root CA's key is, if init wrote it in this run (to be moved offline).
    pub root_key_path: Option<PathBuf>,
}

/// Creates a hub's data directory: the CA, the hub's certificate (valid for `hosts` plus
/// localhost), an admin bundle (`admin/`: CA, admin certificate and key, and an `aq.toml`
/// that points `aq` at this hub) and `hub.toml`. Refuses a directory that holds `hub.toml`;
/// completes one that an interrupted init left, keeping its CA (see `setup`).
pub fn init(data_dir: &Path, listen: SocketAddr, hosts: &[String]) -> Result<InitOutcome, HubError> {
    init_named(data_dir, listen, hosts, DEFAULT_ADMIN)
}

/// The first admin's name unless `init --admin` names it.
pub const DEFAULT_ADMIN: &str = "admin";

/// [`init`], with the first admin named `admin` (its certificate names
/// `spiffe://aqueduct/admin/NAME`).
pub fn init_named(data_dir: &Path, listen: SocketAddr, hosts: &[String], admin: &str) -> Result<InitOutcome, HubError> {
    init_with_options(data_dir, listen, hosts, &InitOptions { admin: admin.to_string(), root_key_out: None })
}

/// What `init` may be told besides where the hub lives.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The first admin's name.
    pub admin: String,
    /// Where to write the root CA's key (relative: to the data directory) instead of
    /// `keep-offline/root-ca.key`: a removable disk, say. The hub never reads it.
    pub root_key_out: Option<PathBuf>,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self { admin: DEFAULT_ADMIN.to_string(), root_key_out: None }
    }
}

/// [`init`] with [`InitOptions`].
pub fn init_with_options(
    data_dir: &Path,
    listen: SocketAddr,
    hosts: &[String],
    options: &InitOptions,
) -> Result<InitOutcome, HubError> {
    setup::init_with(data_dir, listen, hosts, &options.admin, options.root_key_out.as_deref(), &mut |_| Ok(()))
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

/// The CA the hub issues with: its issuer (the root's key stays offline) or, for a hub of one
/// level, its CA.
pub fn load_authority(config: &HubConfig) -> Result<Authority, PkiError> {
    let (ca, key) = (config.resolve(&config.tls.ca), config.resolve(&config.tls.ca_key));
    match &config.tls.issuer {
        Some(issuer) => {
            let issuer = config.resolve(issuer);
            let one_level = config.resolve(Path::new("pki/ca.key"));
            if !issuer.exists() && !key.exists() && one_level.exists() {
                return Err(PkiError::OneLevel { issuer, key: one_level });
            }
            Authority::load_issuer(&ca, &issuer, &key)
        }
        None => Authority::load(&ca, &key),
    }
}

/// How often the hub pings an idle connection, and how long it waits for the answer.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the hub's API on `listener` until `shutdown` fires.
pub async fn serve(config: HubConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), HubError> {
    let read = |p: &Path| {
        let path = config.resolve(p);
        std::fs::read(&path).map_err(|source| HubError::Pki(PkiError::Read { path, source }))
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io_err("create", &config.data_dir))?;
    let db = Arc::new(database::open(&config)?);
    // Revoked certificates are refused from the first handshake on.
    let metrics = Arc::new(metrics::HubMetrics::default());
    // Hubs that share PostgreSQL know each other by a name of their own (in their leases).
    let shared = config.database.url.is_some();
    let holder = leader::holder_name();
    let live = live::Live {
        stopping: shutdown.clone(),
        reads: Arc::new(live::reads::SourceReads::new(config.limits.relay_cache.0, metrics.clone())),
        metrics,
        regions: Arc::new(match shared {
            false => live::regions::RegionLeases::alone(),
            true => live::regions::RegionLeases::shared(db.clone(), holder.clone()),
        }),
        ..Default::default()
    };
    // Watched datasets: one task checks them, through the admin API's own snapshot and rollout.
    let triggers = triggers::Triggers::default();
    if shared {
        info!(hub = holder.as_str(), "this hub shares its database with other hubs");
        let members = live.members.clone();
        let watched = move |region: &str| !members.members(region).is_empty();
        tokio::spawn(live.regions.clone().run(watched, shutdown.clone()));
        let seen = db.changes()?;
        let wake = triggers.clone();
        let on_peer_change = move || wake.wake();
        tokio::spawn(leader::sync_changes(
            db.clone(),
            live.clone(),
            holder.clone(),
            seen,
            on_peer_change,
            shutdown.clone(),
        ));
    }
    live.revocations.update(db.revocations()?);
    // Clients without a certificate get through TLS for `Enrol` alone: every other handler
    // refuses a caller without one (`Identity::of_request`).
    let tls = aqueduct_core::server::server_config_with(
        &read(&config.tls.cert)?,
        &read(&config.tls.key)?,
        &read(&config.tls.ca)?,
        aqueduct_core::server::ClientCerts::Optional,
        &live.revocations,
    )?;
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
    let authority = Arc::new(load_authority(&config)?);
    let flusher = tokio::spawn(live.ledger.clone().run(db.clone(), shutdown.clone()));
    // Rollouts behind their deadline go up a class.
    // Work that must happen once: a hub alone on its SQLite file always does it; hubs that
    // share PostgreSQL hold a lease for it, one at a time.
    let leader = |work: &'static str| match shared {
        false => leader::Leader::alone(),
        true => leader::Leader::lease(db.clone(), work, holder.clone(), shutdown.clone()),
    };
    tokio::spawn(planning::watch(db.clone(), live.clone(), planning::WATCH_EVERY, leader("deadlines")));
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
            move || {
                hub_metrics.refresh(
                    state.as_ref(),
                    |region| members.members(region).len(),
                    |region| live::budgets::budget_at(region, jiff::Timestamp::now()).rate,
                )
            },
            health.clone(),
        );
        tokio::spawn(aqueduct_core::metrics::serve(listener, exporter, config.limits.metrics(), shutdown.clone()));
        tokio::spawn(live.metrics.clone().run(shutdown.clone()));
    }
    let admin_service = Arc::new(
        api::AdminService::new(
            db.clone(),
            snapshot,
            authority.clone(),
            signer.clone(),
            live.clone(),
            hub_files(&config),
        )
        .with_triggers(triggers.clone(), config.triggers.min_interval, config.triggers.enabled),
    );
    if config.triggers.enabled {
        let checks: Arc<dyn triggers::Checks> = admin_service.clone();
        let floor = config.triggers.min_interval;
        tokio::spawn(triggers::run(db.clone(), checks, triggers, floor, leader("triggers"), shutdown.clone()));
    }
    // Requests are small; answers go up to a manifest (the largest message there is).
    let admin = AdminServer::from_arc(admin_service)
        .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
        .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
    let issuer = Arc::new(enrol::Issuer {
        db: db.clone(),
        authority: authority.clone(),
        lifetime: config.enrol.node_certificate_lifetime,
    });
    let enrolment = EnrolServer::new(enrol::EnrolService { issuer: issuer.clone() })
        .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES);
    let relay_limits = relay::RelayLimits::new(&config.limits);
    let spoke = SpokeServer::new(relay::SpokeService::new(
        db.clone(),
        live.clone(),
        relay_limits,
        hub_files(&config),
        issuer,
        signer,
    ))
    .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
    .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
    let addr = listener.local_addr().map_err(io_err("inspect", Path::new("listener")))?;
    info!(%addr, data_dir = %config.data_dir.display(), "hub serving");
    let incoming =
        aqueduct_core::server::incoming(listener, tls, config.limits.server(), "hub API").revoking(&live.revocations);
    // A spoke that vanishes without closing its connection stops being a member of its region
    // when its keepalive goes unanswered.
    aqueduct_core::server::grpc_server(config.limits.max_streams_per_connection, KEEPALIVE)
        .add_service(health.grpc_service())
        .add_service(api::audit::Audited::new(admin, db.clone()))
        .add_service(spoke)
        .add_service(enrolment)
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
