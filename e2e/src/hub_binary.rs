//! The real `aqueduct-hub` binary for tests that run it as a process (limits, health,
//! failover): its data directory made by `aqueduct-hub init`, with config sections a test adds;
//! an admin client once it answers; a dataset over a local directory, cut.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::bin;

/// Runs `aqueduct-hub init --data-dir DATA --listen LISTEN`, appends `extra` (TOML sections) to
/// the config it wrote, and returns that config's path.
pub fn init(data: &Path, listen: SocketAddr, extra: &str) -> PathBuf {
    let init = std::process::Command::new(bin("aqueduct-hub"))
        .args(["init", "--data-dir"])
        .arg(data)
        .args(["--listen", &listen.to_string()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let config = data.join("hub.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    config
}

/// An admin client of the hub at `url` with the admin bundle in `bundle` (`ca.pem`,
/// `admin.pem`, `admin.key`), once the hub answers; fails after `within`, showing the hub's
/// log at `log`.
pub async fn admin(url: &str, bundle: &Path, log: &Path, within: Duration) -> AdminClient<Channel> {
    let read = |f: &str| std::fs::read_to_string(bundle.join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("admin.pem"), read("admin.key")));
    let endpoint = Endpoint::from_shared(url.to_string()).unwrap().tls_config(tls).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(channel) = endpoint.connect().await {
            return AdminClient::new(channel).max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
        }
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(started.elapsed() < within, "the hub at {url} never answered: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds source `source` over the local directory `dir` (`file://`) and dataset `dataset` of it
/// (prefix: the dataset's name), and cuts its first version.
pub async fn local_dataset(admin: &mut AdminClient<Channel>, source: &str, dir: &Path, dataset: &str) {
    let url = format!("file://{}", dir.display());
    let source = pb::Source { name: source.into(), url, options: Default::default(), created_unix_ms: 0 };
    let name = source.name.clone();
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    let dataset = pb::Dataset { name: dataset.into(), source: name, prefix: dataset.into(), ..Default::default() };
    let snapshot = pb::SnapshotRequest { dataset: dataset.name.clone() };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    let mut events = admin.snapshot(snapshot).await.unwrap().into_inner();
    while events.message().await.unwrap().is_some() {}
}
