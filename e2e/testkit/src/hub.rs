//! A real hub for tests: [`TestHub`] runs `aqueduct-hub init` into a directory and serves the
//! hub in this process over mutual TLS, as `aqueduct-hub serve` would, on an address of
//! 127.0.0.1 (or any address a test names). It gives admin clients (or clients with any
//! certificate, for tests of who may call), adds regions and returns their credentials
//! bundles, and restarts the hub on the same address with the same database (and whatever the
//! test changed in its config). Every test that needs a hub uses this one: the hub's own
//! integration tests, `aq`'s, the spoke's and the whole-system tests of `e2e`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aqueduct_hub::config::HubConfig;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A hub served in this process. Dropping it stops the hub.
pub struct TestHub {
    /// The config it serves with: change it, then [`TestHub::restart`], to serve with another.
    pub config: HubConfig,
    /// Where it listens (as bound: `0.0.0.0:PORT` for a hub on every address).
    pub addr: SocketAddr,
    /// The `aq.toml` that init wrote into the admin bundle (`DIR/admin/aq.toml`).
    pub admin_config: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestHub {
    /// A new hub in `dir` (which must not hold one), on a free port of 127.0.0.1.
    pub async fn init(dir: &Path) -> Self {
        Self::init_with(dir, "127.0.0.1:0".parse().expect("an address"), &[], |_| {}).await
    }

    /// A new hub in `dir`, listening on `listen`, its certificate naming `hosts` too (for
    /// clients in other network namespaces), served with the config init wrote as `configure`
    /// changes it (limits, metrics).
    pub async fn init_with(
        dir: &Path,
        listen: SocketAddr,
        hosts: &[String],
        configure: impl FnOnce(&mut HubConfig),
    ) -> Self {
        let listener = TcpListener::bind(listen).await.expect("binding the hub's address");
        let addr = listener.local_addr().expect("the hub's address");
        let out = aqueduct_hub::init(dir, addr, hosts).expect("aqueduct-hub init");
        let mut config = HubConfig::load(&out.config_path).expect("loading the hub.toml init wrote");
        configure(&mut config);
        let (shutdown, task) = serve(config.clone(), listener);
        Self { config, addr, admin_config: out.admin_config_path, shutdown, task }
    }

    /// Stops the hub (as its shutdown does: relayed counts are written first) and serves it
    /// again on the same address, with the same database and [`TestHub::config`] as it is now.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        (&mut self.task).await.expect("the hub's task");
        let listener = TcpListener::bind(self.addr).await.expect("binding the hub's address again");
        (self.shutdown, self.task) = serve(self.config.clone(), listener);
    }

    /// Asks the hub to stop, as dropping it does (without waiting).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// The URL spokes and clients reach it at: `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// A file of the admin bundle (`ca.pem`, `admin.pem`, `admin.key`), read.
    pub fn admin_file(&self, name: &str) -> String {
        let path = self.config.data_dir.join("admin").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// A channel to the hub that trusts `ca_pem` and presents `cert_pem`.
    pub async fn channel(
        &self,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem));
        Endpoint::from_shared(self.url()).expect("a URL").tls_config(tls)?.connect().await
    }

    /// An admin API client that trusts `ca_pem` and presents `cert_pem`.
    pub async fn client_with(
        &self,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<AdminClient<Channel>, tonic::transport::Error> {
        Ok(AdminClient::new(self.channel(ca_pem, cert_pem, key_pem).await?))
    }

    /// An admin API client with the admin bundle init wrote.
    pub async fn admin(&self) -> AdminClient<Channel> {
        let (ca, cert, key) = (self.admin_file("ca.pem"), self.admin_file("admin.pem"), self.admin_file("admin.key"));
        self.client_with(&ca, &cert, &key).await.expect("connecting to the hub as its admin")
    }

    /// Adds region `name` with a link budget of `rate` bytes per second; returns the
    /// credentials bundle for its spokes.
    pub async fn add_region(&self, name: &str, rate: u64) -> pb::CredentialsBundle {
        let region = pb::Region {
            name: name.into(),
            rate_bytes_per_sec: rate,
            created_unix_ms: 0,
            members: Vec::new(),
            ..Default::default()
        };
        let added = self.admin().await.add_region(pb::AddRegionRequest { region: Some(region) }).await;
        added.unwrap_or_else(|e| panic!("adding region {name}: {e}")).into_inner().bundle.expect("a bundle")
    }
}

/// Serves the hub on `listener` until the returned token is cancelled. A hub that fails fails
/// the test.
fn serve(config: HubConfig, listener: TcpListener) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            if let Err(e) = aqueduct_hub::serve(config, listener, stop).await {
                panic!("the hub failed: {e}");
            }
        }
    });
    (stop, task)
}
