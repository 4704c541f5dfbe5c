//! A real hub for tests: [`TestHub`] runs `aqueduct-hub init` into a directory and serves the
//! hub in this process over mutual TLS, as `aqueduct-hub serve` would, on an address of
//! 127.0.0.1 (or any address a test names). It gives admin clients (or clients with any
//! certificate, for tests of who may call), adds regions, makes enrolment tokens and issues
//! nodes' credentials from the hub's CA (for tests that are not about enrolment), and restarts the hub on the same address with the same database (and whatever the
//! test changed in its config). Every test that needs a hub uses this one: the hub's own
//! integration tests, `aq`'s, the spoke's and the whole-system tests of `e2e`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aqueduct_hub::config::HubConfig;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
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

    /// Adds region `name` with a link budget of `rate` bytes per second; returns the hub's CA
    /// certificate (what its spokes trust).
    pub async fn add_region(&self, name: &str, rate: u64) -> String {
        let region = pb::Region { name: name.into(), rate_bytes_per_sec: rate, ..Default::default() };
        let added = self.admin().await.add_region(pb::AddRegionRequest { region: Some(region) }).await;
        added.unwrap_or_else(|e| panic!("adding region {name}: {e}")).into_inner().ca_pem
    }

    /// The hub's signing public keys (`ed25519:HEX`), as spokes trust them.
    pub fn signing_keys(&self) -> Vec<String> {
        let signer = aqueduct_hub::signing::Signer::open(&self.config.resolve(&self.config.signing.key))
            .expect("the hub's signing key");
        signer.published().iter().map(|k| k.to_string()).collect()
    }

    /// The credentials of node `node` of `region`, issued from the hub's CA as enrolment would
    /// (valid 30 days), for tests that are not about enrolment.
    pub fn node_bundle(&self, region: &str, node: &str) -> pb::CredentialsBundle {
        self.node_bundle_for(region, node, std::time::Duration::from_secs(30 * 24 * 3600))
    }

    /// [`TestHub::node_bundle`], valid for `lifetime` from now (from a minute ago).
    pub fn node_bundle_for(&self, region: &str, node: &str, lifetime: std::time::Duration) -> pb::CredentialsBundle {
        self.issuer().bundle(region, node, lifetime)
    }

    /// A bootstrap token for `region` with `uses` uses, valid for `ttl`.
    pub async fn enrol_token(&self, region: &str, uses: u32, ttl: std::time::Duration) -> String {
        let request = pb::CreateEnrolTokenRequest { region: region.into(), ttl_seconds: ttl.as_secs(), uses };
        let made = self.admin().await.create_enrol_token(request).await;
        made.unwrap_or_else(|e| panic!("making a token for region {region}: {e}")).into_inner().token
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

/// The spokes' API as the spokes of one region call it, each with its own node's certificate
/// (issued from the hub's CA): `watch`, `report_progress` and `report_cache` go out with the
/// certificate of the node their request names; every other call (through `Deref`) with the
/// certificate of node [`RegionSpokes::FIRST`].
pub struct RegionSpokes {
    issuer: NodeIssuer,
    region: String,
    first: SpokeClient<Channel>,
    nodes: std::collections::HashMap<String, SpokeClient<Channel>>,
}

/// What issues nodes' certificates and connects with them: the hub's config and URL.
#[derive(Clone)]
struct NodeIssuer {
    config: HubConfig,
    url: String,
}

impl NodeIssuer {
    fn bundle(&self, region: &str, node: &str, lifetime: std::time::Duration) -> pb::CredentialsBundle {
        let ca = aqueduct_hub::load_authority(&self.config).expect("the hub's issuing CA");
        let issued = ca.issue_node(region, node, lifetime).expect("a node certificate");
        let signer = aqueduct_hub::signing::Signer::open(&self.config.resolve(&self.config.signing.key))
            .expect("the hub's signing key");
        pb::CredentialsBundle {
            ca_pem: ca.ca_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            signing_keys: signer.published().iter().map(|k| k.to_string()).collect(),
        }
    }

    async fn client(&self, region: &str, node: &str) -> SpokeClient<Channel> {
        let bundle = self.bundle(region, node, std::time::Duration::from_secs(30 * 24 * 3600));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&bundle.ca_pem))
            .identity(Identity::from_pem(&bundle.cert_pem, &bundle.key_pem));
        let endpoint = Endpoint::from_shared(self.url.clone()).expect("a URL").tls_config(tls).expect("TLS settings");
        let channel = endpoint.connect().await;
        SpokeClient::new(channel.unwrap_or_else(|e| panic!("connecting as node {node} of {region}: {e}")))
    }
}

impl RegionSpokes {
    /// The node whose certificate calls that name no node use.
    pub const FIRST: &'static str = "node-1";

    /// The client with `node`'s certificate.
    pub async fn node(&mut self, node: &str) -> &mut SpokeClient<Channel> {
        if node == Self::FIRST {
            return &mut self.first;
        }
        if !self.nodes.contains_key(node) {
            let client = self.issuer.client(&self.region, node).await;
            self.nodes.insert(node.to_string(), client);
        }
        self.nodes.get_mut(node).expect("inserted")
    }

    pub async fn watch(
        &mut self,
        request: pb::WatchRequest,
    ) -> Result<tonic::Response<tonic::Streaming<pb::Assignments>>, tonic::Status> {
        self.node(&request.node.clone()).await.watch(request).await
    }

    pub async fn report_progress(
        &mut self,
        request: pb::ProgressReport,
    ) -> Result<tonic::Response<pb::ProgressAck>, tonic::Status> {
        self.node(&request.node.clone()).await.report_progress(request).await
    }

    pub async fn report_cache(
        &mut self,
        request: pb::CacheReport,
    ) -> Result<tonic::Response<pb::ProgressAck>, tonic::Status> {
        self.node(&request.node.clone()).await.report_cache(request).await
    }
}

impl std::ops::Deref for RegionSpokes {
    type Target = SpokeClient<Channel>;

    fn deref(&self) -> &Self::Target {
        &self.first
    }
}

impl std::ops::DerefMut for RegionSpokes {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.first
    }
}

impl TestHub {
    fn issuer(&self) -> NodeIssuer {
        NodeIssuer { config: self.config.clone(), url: self.url() }
    }

    /// A client of the spokes' API with the certificate of node `node` of `region`.
    pub async fn node_client(&self, region: &str, node: &str) -> SpokeClient<Channel> {
        self.issuer().client(region, node).await
    }

    /// The spokes of `region` (which must exist), each with its node's certificate.
    pub async fn spokes(&self, region: &str) -> RegionSpokes {
        let issuer = self.issuer();
        let first = issuer.client(region, RegionSpokes::FIRST).await;
        RegionSpokes { issuer, region: region.to_string(), first, nodes: Default::default() }
    }
}
