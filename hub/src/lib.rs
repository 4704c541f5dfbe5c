//! The Aqueduct hub: the on-prem control plane.
//!
//! It keeps sources (where bytes live), datasets (a name bound to a source prefix) and
//! versions (immutable manifests of content-defined, BLAKE3-named chunks) in an embedded
//! database, and answers for them over gRPC with mutual TLS. The hub never copies the data:
//! a version records, for every chunk, where its bytes are in the source.
//!
//! Modules, from the bottom up: [`source`] (listing and reading sources: directories, S3),
//! [`chunker`] (FastCDC + BLAKE3), [`store`] (the metadata store), [`snapshot`] (cutting a
//! version), [`auth`] and [`pki`] (identities and certificates), [`api`] (the gRPC handlers)
//! [`relay`] (the spokes' API and chunk relay), [`metrics`] (Prometheus) and, here, [`init`] and [`serve`], which the `aqueduct-hub` binary calls.

pub mod api;
pub mod auth;
pub mod chunker;
pub mod config;
mod error;
pub mod members;
pub mod metrics;
pub mod pki;
pub mod relay;
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

use crate::auth::Identity;
use crate::config::{HubConfig, LimitsConfig, SnapshotConfig, TlsConfig};
use crate::pki::{Authority, PkiError};
use crate::snapshot::SnapshotOptions;
use crate::store::{SqliteStore, StoreError};

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
    Metrics(#[from] aqueduct_proto::metrics::MetricsError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the hub's TLS files (tls.cert, tls.key, tls.ca) are not usable: {0}")]
    Tls(#[from] aqueduct_proto::server::TlsSetupError),
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
/// that points `aq` at this hub) and `hub.toml`. Refuses to touch an existing hub.
pub fn init(data_dir: &Path, listen: SocketAddr, hosts: &[String]) -> Result<InitOutcome, HubError> {
    let config_path = data_dir.join("hub.toml");
    // A new CA would invalidate every certificate issued by an existing one.
    for what in ["hub.toml", "pki/ca.key", "hub.db"] {
        if data_dir.join(what).exists() {
            return Err(HubError::AlreadyInitialised { path: data_dir.to_owned(), what: what.into() });
        }
    }
    let pki_dir = data_dir.join("pki");
    let admin_dir = data_dir.join("admin");
    for dir in [data_dir, &pki_dir, &admin_dir] {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let data_dir = data_dir.canonicalize().map_err(io_err("resolve", data_dir))?;

    let ca = Authority::create("Aqueduct CA")?;
    let tls = TlsConfig::default();
    ca.save(&data_dir.join(&tls.ca), &data_dir.join(&tls.ca_key))?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    names.extend(hosts.iter().filter(|h| !names.contains(h)).cloned().collect::<Vec<_>>());
    let hub = ca.issue(&Identity::Hub, &names)?;
    pki::write_public(&data_dir.join(&tls.cert), &hub.cert_pem)?;
    pki::write_secret(&data_dir.join(&tls.key), &hub.key_pem)?;

    let admin = ca.issue(&Identity::Admin, &[])?;
    let admin_dir = data_dir.join("admin");
    pki::write_public(&admin_dir.join("ca.pem"), ca.ca_pem())?;
    pki::write_public(&admin_dir.join("admin.pem"), &admin.cert_pem)?;
    pki::write_secret(&admin_dir.join("admin.key"), &admin.key_pem)?;
    let host = if listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { listen.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let admin_config = admin_dir.join("aq.toml");
    let aq = format!(
        "# aq's connection to this hub (written by `aqueduct-hub init`). Paths are relative to this file.\n\
         hub = \"https://{host}:{port}\"\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n",
        port = listen.port()
    );
    pki::write_secret(&admin_config, &aq)?;

    SqliteStore::open(&data_dir.join("hub.db"))?;
    let config = HubConfig {
        listen,
        data_dir: data_dir.clone(),
        tls,
        snapshot: SnapshotConfig::default(),
        metrics: None,
        limits: LimitsConfig::default(),
    };
    let text =
        format!("# Aqueduct hub configuration; see deploy/hub/hub.example.toml for every key.\n{}", config.to_toml());
    std::fs::write(&config_path, text).map_err(io_err("write", &config_path))?;
    Ok(InitOutcome { config_path: data_dir.join("hub.toml"), admin_config_path: admin_config })
}

/// What no source may hold and no snapshot may read: the hub's data directory (database, PKI,
/// admin bundle) and its keys, wherever the config puts them.
fn hub_files(config: &HubConfig) -> source::HubFiles {
    source::HubFiles::new([
        config.data_dir.clone(),
        config.resolve(&config.tls.ca_key),
        config.resolve(&config.tls.key),
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
    let tls = aqueduct_proto::server::server_config(
        &read(&config.tls.cert)?,
        &read(&config.tls.key)?,
        &read(&config.tls.ca)?,
    )?;
    std::fs::create_dir_all(&config.data_dir).map_err(io_err("create", &config.data_dir))?;
    let db = Arc::new(SqliteStore::open(&config.database_path())?);
    let mut snapshot = SnapshotOptions::default();
    if let Some(p) = config.snapshot.parallelism {
        snapshot.parallelism = p;
    }
    let authority = Arc::new(Authority::load(&config.resolve(&config.tls.ca), &config.resolve(&config.tls.ca_key))?);
    let live = relay::Live {
        stopping: shutdown.clone(),
        relay_limits: Arc::new(relay::RelayLimits::new(&config.limits)),
        ..Default::default()
    };
    let flusher = tokio::spawn(live.ledger.clone().run(db.clone(), shutdown.clone()));
    if let Some(metrics) = &config.metrics {
        let (listener, _) = aqueduct_proto::metrics::bind(metrics).await?;
        let (state, members, hub_metrics) = (db.clone(), live.members.clone(), live.metrics.clone());
        let exporter = aqueduct_proto::metrics::Exporter::new(live.metrics.registry(), move || {
            hub_metrics.refresh(state.as_ref(), &members)
        });
        tokio::spawn(aqueduct_proto::metrics::serve(listener, exporter, config.limits.metrics(), shutdown.clone()));
        tokio::spawn(live.metrics.clone().run(shutdown.clone()));
    }
    // Requests are small; answers go up to a manifest (the largest message there is).
    let admin =
        AdminServer::new(api::AdminService::new(db.clone(), snapshot, authority, live.clone(), hub_files(&config)))
            .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
            .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
    let spoke = SpokeServer::new(relay::SpokeService::new(db.clone(), live.clone()))
        .max_decoding_message_size(aqueduct_proto::MAX_REQUEST_BYTES)
        .max_encoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
    let addr = listener.local_addr().map_err(io_err("inspect", Path::new("listener")))?;
    info!(%addr, data_dir = %config.data_dir.display(), "hub serving");
    let incoming = aqueduct_proto::server::incoming(listener, tls, config.limits.server(), "hub API");
    // A spoke that vanishes without closing its connection stops being a member of its region
    // when its keepalive goes unanswered.
    aqueduct_proto::server::grpc_server(config.limits.max_streams_per_connection, KEEPALIVE)
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
