//! A hub served for real on 127.0.0.1 with mutual TLS, and helpers to drive it.
#![allow(dead_code)]

use std::path::Path;

use aqueduct_hub::config::HubConfig;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

pub struct Hub {
    pub config: HubConfig,
    pub addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Hub {
    pub async fn init(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let out = aqueduct_hub::init(dir, listener.local_addr().unwrap(), &[]).unwrap();
        let config = HubConfig::load(&out.config_path).unwrap();
        Self::start(config, listener).await
    }

    pub async fn start(config: HubConfig, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(aqueduct_hub::serve(config.clone(), listener, shutdown.clone()).map_ok_unit());
        Self { config, addr, shutdown, task }
    }

    pub async fn restart(self) -> Self {
        self.shutdown.cancel();
        self.task.await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start(self.config, listener).await
    }

    pub async fn channel(
        &self,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(TlsIdentity::from_pem(cert_pem, key_pem));
        Endpoint::from_shared(format!("https://{}", self.addr)).unwrap().tls_config(tls)?.connect().await
    }

    pub async fn client_with(
        &self,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<AdminClient<Channel>, tonic::transport::Error> {
        Ok(AdminClient::new(self.channel(ca_pem, cert_pem, key_pem).await?))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        let read = |f: &str| std::fs::read_to_string(self.config.data_dir.join("admin").join(f)).unwrap();
        self.client_with(&read("ca.pem"), &read("admin.pem"), &read("admin.key")).await.unwrap()
    }
}

trait MapOkUnit {
    fn map_ok_unit(self) -> impl std::future::Future<Output = ()> + Send;
}

impl<F: std::future::Future<Output = Result<(), aqueduct_hub::HubError>> + Send> MapOkUnit for F {
    async fn map_ok_unit(self) {
        self.await.expect("hub failed");
    }
}

pub fn source(name: &str, url: &str, options: &[(&str, String)]) -> pb::AddSourceRequest {
    source_with(name, url, options.iter().map(|(k, v)| (k.to_string(), v.clone())))
}

pub fn source_with(name: &str, url: &str, options: impl IntoIterator<Item = (String, String)>) -> pb::AddSourceRequest {
    pb::AddSourceRequest {
        source: Some(pb::Source {
            name: name.into(),
            url: url.into(),
            options: options.into_iter().collect(),
            created_unix_ms: 0,
        }),
    }
}

pub fn dataset(name: &str, source: &str, prefix: &str) -> pb::AddDatasetRequest {
    pb::AddDatasetRequest {
        dataset: Some(pb::Dataset {
            name: name.into(),
            source: source.into(),
            prefix: prefix.into(),
            created_unix_ms: 0,
            latest_version: 0,
            outside_links: String::new(),
        }),
    }
}

pub async fn snapshot(client: &mut AdminClient<Channel>, name: &str) -> Result<pb::VersionSummary, tonic::Status> {
    let mut events = client.snapshot(pb::SnapshotRequest { dataset: name.into() }).await?.into_inner();
    while let Some(event) = events.message().await? {
        if let Some(pb::snapshot_event::Event::Done(summary)) = event.event {
            return Ok(summary);
        }
    }
    panic!("snapshot stream ended without a result");
}

pub fn expect_err<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, words: &[&str]) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    for w in words {
        assert!(status.message().contains(w), "{:?} lacks {w:?}", status.message());
    }
}
