//! Whole-system tests and benchmarks of Aqueduct, and the harness they share.
//!
//! [`World`] runs a hub (in this process, mutual TLS on 127.0.0.1) over a real source (an S3
//! server from `e2e/testkit`, or a local directory), adds regions and writes configs whose
//! spokes enrol with tokens, starts spokes (and stops their FUSE [`holders`]), rolls versions out and waits for them.
//! [`netns`] puts regions in network namespaces behind shaped links, with spokes as processes
//! on their nodes. `tests/` holds the scenarios, `benches/` the benchmarks.
//!
//! The file is some 620 lines long: the world's helpers are one type's methods, which every
//! scenario uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use aqueduct_testkit::S3Server;
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::memory::MemoryS3Server;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Where the dataset's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// An S3 server (s3s-fs) on 127.0.0.1.
    S3,
    /// A local directory (`file://`).
    Dir,
    /// An S3 server over a map in memory (`aqueduct_testkit::memory`): it holds any key. The
    /// world's directory `data` is a staging area, uploaded whole (bucket `models`, keys the
    /// files' paths) before each snapshot.
    MemoryS3,
}

pub mod classes;
pub mod holders;
pub mod hub_binary;
pub mod kubelet;
pub mod netns;
pub mod peers;

pub struct World {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub hub_url: String,
    pub admin: AdminClient<Channel>,
    _s3: Option<S3Server>,
    memory_s3: Option<MemoryS3Server>,
    pub data: PathBuf,
    pub shutdown: CancellationToken,
    /// The running hub.
    pub hub: TestHub,
}

impl Drop for World {
    /// Stops the hub. With `AQ_KEEP=1` in the environment the world's directory (hub, stores,
    /// every process's log) is kept for inspection and its path printed.
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.hub.stop();
        holders::stop_holders(&self.root);
        if std::env::var_os("AQ_KEEP").is_some_and(|v| v == "1") {
            let tmp = std::mem::replace(&mut self._tmp, tempfile::TempDir::new().unwrap());
            eprintln!("AQ_KEEP=1: kept {}", tmp.keep().display());
        }
    }
}

/// A hub with dataset `llama` bound to `data` (empty until the caller writes files).
pub async fn world(kind: SourceKind) -> World {
    world_at(kind, "127.0.0.1:0".parse().unwrap(), &[]).await
}

/// Like [`world`], with the hub listening on `listen` and its certificate naming `hosts` too
/// (for spokes in other network namespaces, see [`netns`]).
pub async fn world_at(kind: SourceKind, listen: std::net::SocketAddr, hosts: &[String]) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    // Where the hub listens on every address, so does the S3 server (for baselines run from
    // other network namespaces).
    let s3_listen = std::net::SocketAddr::new(listen.ip(), 0);
    let (s3, memory_s3, data) = match kind {
        SourceKind::S3 => {
            (Some(S3Server::start_on(&root.join("s3"), s3_listen).await.unwrap()), None, root.join("s3/models/llama"))
        }
        SourceKind::Dir => (None, None, root.join("dir/llama")),
        SourceKind::MemoryS3 => {
            let server = MemoryS3Server::start_on(s3_listen).await.unwrap();
            server.store.create_bucket("models");
            (None, Some(server), root.join("memory/llama"))
        }
    };
    std::fs::create_dir_all(&data).unwrap();
    let hub = TestHub::init_with(&root.join("hub"), listen, hosts, |_| {}).await;
    let shutdown = CancellationToken::new();
    let hub_url = hub.url();
    let mut admin = hub.admin().await;

    let creds = root.join("s3-credentials");
    let source = match (&s3, &memory_s3) {
        (Some(s3), _) => {
            s3.write_credentials(&creds).unwrap();
            let options = s3.source_options(&creds).into_iter().collect();
            pb::Source { name: "src".into(), url: "s3://models".into(), options, created_unix_ms: 0 }
        }
        (None, Some(memory)) => {
            memory.write_credentials(&creds).unwrap();
            let options = memory.source_options(&creds).into_iter().collect();
            pb::Source { name: "src".into(), url: "s3://models".into(), options, created_unix_ms: 0 }
        }
        (None, None) => pb::Source {
            name: "src".into(),
            url: format!("file://{}", root.join("dir").display()),
            options: Default::default(),
            created_unix_ms: 0,
        },
    };
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    let dataset = pb::Dataset {
        name: "llama".into(),
        source: "src".into(),
        prefix: "llama".into(),
        created_unix_ms: 0,
        latest_version: 0,
        outside_links: String::new(),
        keep_versions: 0,
        watch: None,
    };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    World { _tmp: tmp, root, hub_url, admin, _s3: s3, memory_s3, data, shutdown, hub }
}

impl World {
    /// Stops the hub (as its shutdown does: relayed counts are written first) and starts it
    /// again on the same address, with the same database.
    pub async fn restart_hub(&mut self) {
        self.hub.restart().await;
    }

    /// Restarts the hub with `limits` as its `[limits]`.
    pub async fn set_hub_limits(&mut self, limits: aqueduct_hub::config::LimitsConfig) {
        self.hub.config.limits = limits;
        self.restart_hub().await;
    }

    /// Serves the hub's metrics on a free port of 127.0.0.1 (the hub restarts with a
    /// `[metrics]` section); returns the endpoint's address.
    pub async fn hub_metrics(&mut self) -> std::net::SocketAddr {
        let listen = free_port();
        self.hub.config.metrics = Some(aqueduct_core::metrics::MetricsConfig { listen });
        self.restart_hub().await;
        listen
    }

    /// The S3 server's address (an S3 world).
    pub fn s3_endpoint(&self) -> std::net::SocketAddr {
        self._s3.as_ref().expect("an S3 world").addr
    }

    /// A plain S3 client of the world's S3 server (bucket `models`), for baselines.
    pub fn s3_client(&self) -> object_store::aws::AmazonS3 {
        let s3 = self._s3.as_ref().expect("an S3 world");
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(s3.endpoint())
            .with_allow_http(true)
            .with_bucket_name("models")
            .with_region("us-east-1")
            .with_access_key_id(aqueduct_testkit::ACCESS_KEY)
            .with_secret_access_key(aqueduct_testkit::SECRET_KEY)
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap()
    }

    pub async fn snapshot(&mut self) -> pb::VersionSummary {
        self.snapshot_of("llama").await
    }

    /// Binds dataset `name` to prefix `name` of the world's source; returns the directory its
    /// files go in.
    pub async fn add_dataset(&mut self, name: &str) -> PathBuf {
        let dir = self.data.parent().unwrap().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let dataset = pb::Dataset {
            name: name.into(),
            source: "src".into(),
            prefix: name.into(),
            created_unix_ms: 0,
            latest_version: 0,
            outside_links: String::new(),
            keep_versions: 0,
            watch: None,
        };
        self.admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
        dir
    }

    /// The in-memory S3 server of a [`SourceKind::MemoryS3`] world.
    pub fn memory_s3(&self) -> &MemoryS3Server {
        self.memory_s3.as_ref().expect("a MemoryS3 world")
    }

    /// A [`SourceKind::MemoryS3`] world: uploads the staging directory whole into bucket
    /// `models` (replacing what it held). Other worlds: nothing.
    pub fn upload(&self) {
        let Some(memory) = &self.memory_s3 else { return };
        let staging = self.data.parent().unwrap();
        memory.store.clear("models");
        let mut dirs = vec![staging.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let key = path.strip_prefix(staging).unwrap().to_str().expect("a UTF-8 path").to_string();
                    memory.store.put("models", &key, std::fs::read(&path).unwrap());
                }
            }
        }
    }

    pub async fn snapshot_of(&mut self, dataset: &str) -> pb::VersionSummary {
        self.upload();
        let mut events =
            self.admin.snapshot(pb::SnapshotRequest { dataset: dataset.into() }).await.unwrap().into_inner();
        while let Some(e) = events.message().await.unwrap() {
            if let Some(pb::snapshot_event::Event::Done(v)) = e.event {
                return v;
            }
        }
        panic!("no snapshot result");
    }

    /// Adds a region and writes a spoke config for one node of it, which enrols with a token
    /// at its first start; returns the config path.
    pub async fn region(&mut self, name: &str, rate: u64) -> PathBuf {
        let ca = self.hub.add_region(name, rate).await;
        let token = self.hub.enrol_token(name, 1, Duration::from_secs(3600)).await;
        let keys = self.hub.signing_keys();
        let given = aqueduct_spoke::Enrolment { ca_pem: &ca, signing_keys: &keys, token: &token };
        let (dir, node) = (self.root.join(format!("spoke-{name}")), format!("{name}-1"));
        holders::with_holder_binary(aqueduct_spoke::write_enrol_config(&dir, &self.hub_url, &node, &given).unwrap())
    }

    /// Adds a region and writes configs for `nodes` spokes of it (`NAME-1`, ..., each in
    /// `spoke-NAME-I/`) that exchange chunks as peers on 127.0.0.1; returns the config paths.
    pub async fn region_of(&mut self, name: &str, rate: u64, nodes: usize) -> Vec<PathBuf> {
        let ca = self.hub.add_region(name, rate).await;
        // One token for the region's nodes, as a DaemonSet's Secret holds.
        let token = self.hub.enrol_token(name, nodes as u32, Duration::from_secs(3600)).await;
        let keys = self.hub.signing_keys();
        let given = aqueduct_spoke::Enrolment { ca_pem: &ca, signing_keys: &keys, token: &token };
        (1..=nodes)
            .map(|i| {
                let dir = self.root.join(format!("spoke-{name}-{i}"));
                let node = format!("{name}-{i}");
                let config = aqueduct_spoke::write_enrol_config(&dir, &self.hub_url, &node, &given).unwrap();
                let mut text = std::fs::read_to_string(&config).unwrap();
                text.push_str("[peer]\nlisten = \"127.0.0.1:0\"\n");
                std::fs::write(&config, text).unwrap();
                holders::with_holder_binary(config)
            })
            .collect()
    }

    /// Adds a region for `net` (a region of a [`netns::Topology`]) and writes a config for
    /// each of its nodes: the hub at its address as the region sees it, peers on the node's
    /// address. Returns the config paths.
    pub async fn region_in(&mut self, net: &netns::RegionNet, rate: u64) -> Vec<PathBuf> {
        let ca = self.hub.add_region(&net.name, rate).await;
        let token = self.hub.enrol_token(&net.name, net.nodes.len() as u32, Duration::from_secs(3600)).await;
        let keys = self.hub.signing_keys();
        let given = aqueduct_spoke::Enrolment { ca_pem: &ca, signing_keys: &keys, token: &token };
        let port = self.hub_url.rsplit(':').next().unwrap().to_string();
        let hub = format!("https://{}:{port}", net.hub_ip);
        net.nodes
            .iter()
            .map(|node| {
                let dir = self.root.join(format!("spoke-{}", node.name));
                let config = aqueduct_spoke::write_enrol_config(&dir, &hub, &node.name, &given).unwrap();
                let mut text = std::fs::read_to_string(&config).unwrap();
                text.push_str(&format!("[peer]\nlisten = \"{}:7444\"\n", node.ip));
                std::fs::write(&config, text).unwrap();
                holders::with_holder_binary(config)
            })
            .collect()
    }

    /// Adds every region of `net` with its budget (`budgets[r]`), starts `spoke` (the
    /// `aqueduct-spoke` binary) on every node, logging to `ROOT/NODE.log`, and waits until the
    /// hub counts them all. Returns the processes and the configs per region.
    pub async fn start_spokes_in(
        &mut self,
        net: &netns::Topology,
        budgets: &[u64],
        spoke: &Path,
    ) -> (Children, Vec<Vec<PathBuf>>) {
        let mut spokes = Children::default();
        let mut configs = Vec::new();
        for (region, &budget) in net.regions.iter().zip(budgets) {
            let region_configs = self.region_in(region, budget).await;
            for (node, config) in region.nodes.iter().zip(&region_configs) {
                spokes.0.push(self.start_spoke_in(net, node, config, spoke));
            }
            configs.push(region_configs);
        }
        for region in &net.regions {
            self.wait_members(&region.name, region.nodes.len()).await;
        }
        (spokes, configs)
    }

    /// Starts `spoke` with `config` in `node`'s network namespace, logging to `ROOT/NODE.log`.
    pub fn start_spoke_in(
        &self,
        net: &netns::Topology,
        node: &netns::Node,
        config: &Path,
        spoke: &Path,
    ) -> std::process::Child {
        let mut cmd = net.command(node, spoke);
        cmd.args(["run", "--config"]).arg(config);
        spawn_command(cmd, &self.root.join(format!("{}.log", node.name)))
    }

    /// Waits until the hub counts `nodes` live spokes in `region`.
    pub async fn wait_members(&mut self, region: &str, nodes: usize) {
        for _ in 0..300 {
            let regions = self.admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
            if regions.iter().any(|r| r.name == region && r.members.len() == nodes) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("region {region} did not reach {nodes} live spokes");
    }

    /// The status rows of `version`.
    pub async fn status(&mut self, version: u64) -> Vec<pb::StatusRow> {
        let rows = self.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
        rows.into_iter().filter(|r| r.version == version).collect()
    }

    pub fn start_spoke(&self, config: &Path) -> CancellationToken {
        let config = aqueduct_spoke::SpokeConfig::load(config).unwrap();
        let stop = self.shutdown.child_token();
        tokio::spawn(aqueduct_spoke::run(config, stop.clone()));
        stop
    }

    pub async fn rollout(&mut self, version: u64, regions: &[&str]) {
        self.rollout_as(version, regions, "").await;
    }

    /// Rolls out with a replication mode (`auto`, `region`, `every-node`).
    pub async fn rollout_as(&mut self, version: u64, regions: &[&str], mode: &str) {
        self.rollout_of("llama", version, regions, mode).await;
    }

    pub async fn rollout_of(&mut self, dataset: &str, version: u64, regions: &[&str], mode: &str) {
        let req = pb::RolloutRequest {
            dataset: dataset.into(),
            version,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            mode: mode.parse::<aqueduct_proto::ReplicationMode>().unwrap().to_wire(),
            cut_over: 0,
            class: 0,
            ..Default::default()
        };
        self.admin.rollout(req).await.unwrap();
    }

    /// Waits (up to a generous limit: this checks completion, not speed) until every region
    /// of `version` is Ready; returns the status rows.
    pub async fn wait_ready(&mut self, version: u64) -> Vec<pb::StatusRow> {
        for _ in 0..1200 {
            let rows = self.status(version).await;
            if let Some(failed) = rows.iter().find(|r| r.phase() == pb::Phase::Failed) {
                panic!("region {} failed: {}", failed.region, failed.reason);
            }
            if !rows.is_empty() && rows.iter().all(|r| r.phase() == pb::Phase::Ready) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("v{version} did not become Ready");
    }

    pub async fn manifest(&mut self, version: u64) -> Manifest {
        let wire = self
            .admin
            .get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version })
            .await
            .unwrap()
            .into_inner();
        Manifest::try_from(wire).unwrap()
    }
}

/// A port of 127.0.0.1 free now (bound, then let go), for a config that needs one in advance.
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Adds a `[metrics]` section on a free port of 127.0.0.1 to a spoke's config; returns the
/// endpoint's address.
pub fn with_spoke_metrics(config: &Path) -> std::net::SocketAddr {
    let listen = free_port();
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!("[metrics]\nlisten = \"{listen}\"\n"));
    std::fs::write(config, text).unwrap();
    listen
}

/// `GET /metrics` of a hub or spoke: the body, in the Prometheus text format.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut last = None;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut stream) => {
                let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).await.unwrap();
                let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body.to_string();
            }
            // The endpoint may not be up yet (a spoke starting).
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no metrics endpoint answers on {addr}: {last:?}");
}

/// The local API socket of the spoke configured by `config`.
pub fn socket_of(config: &Path) -> PathBuf {
    aqueduct_spoke::SpokeConfig::load(config).unwrap().socket()
}

/// A client of a spoke's local API on its unix socket, once the socket answers.
pub async fn local_client(socket: &Path) -> LocalClient<Channel> {
    for _ in 0..100 {
        if let Ok(channel) = Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap().connect().await {
            return LocalClient::new(channel).max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no spoke answers on {}", socket.display());
}

/// Asks the spoke to mount, retrying while the spoke has not yet heard of the version (its
/// watch may not have delivered the assignment); any other error is returned.
pub async fn mount_when_known(
    local: &mut LocalClient<Channel>,
    dataset: &str,
    version: u64,
    mountpoint: &Path,
) -> Result<local::MountInfo, tonic::Status> {
    let (dataset, mountpoint) = (dataset.into(), mountpoint.display().to_string());
    let request = local::MountRequest { dataset, version, mountpoint, tag: String::new() };
    let mut last = None;
    for _ in 0..300 {
        match local.mount(request.clone()).await {
            Ok(info) => return Ok(info.into_inner()),
            Err(s)
                if s.code() == tonic::Code::NotFound
                    || s.code() == tonic::Code::FailedPrecondition && s.message().contains("no active version") =>
            {
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s),
        }
    }
    Err(last.expect("tried"))
}

/// A spoke's store holds every chunk of `manifest`, each matching its digest.
pub fn assert_store_has(store_dir: &Path, manifest: &Manifest) {
    for (digest, _) in manifest.distinct_chunks() {
        assert!(
            read_stored(store_dir, &digest).is_some(),
            "{} lacks chunk {digest} of v{}",
            store_dir.display(),
            manifest.version
        );
    }
}

/// Every file of `manifest`, rebuilt from a spoke's store, equals the source.
pub fn assert_store_holds(store_dir: &Path, manifest: &Manifest, source_dir: &Path) {
    for file in &manifest.files {
        let mut rebuilt = Vec::new();
        for c in &file.chunks {
            rebuilt.extend(
                read_stored(store_dir, &c.digest)
                    .unwrap_or_else(|| panic!("{} lacks chunk {}", store_dir.display(), c.digest)),
            );
        }
        assert_eq!(rebuilt, std::fs::read(source_dir.join(&file.path)).unwrap(), "{}", file.path);
    }
}

/// A binary of the workspace, built beside the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --workspace --bins` first", path.display());
    path
}

/// Starts `program` with its output appended to `log`, logging at info.
pub fn spawn_logged(program: &Path, args: &[&std::ffi::OsStr], log: &Path) -> std::process::Child {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    spawn_command(cmd, log)
}

/// Starts `cmd` with its output appended to `log`, logging at info.
pub fn spawn_command(mut cmd: std::process::Command, log: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let filter = std::env::var("AQUEDUCT_LOG").unwrap_or_else(|_| "info".into());
    cmd.env("AQUEDUCT_LOG", filter).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap()
}

/// Child processes, killed however the test ends.
#[derive(Default)]
pub struct Children(pub Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, `TERM`) to a process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(ok.success(), "kill -{signal} {} failed", child.id());
}

/// A chunk from a spoke's store directory if it is there and matches its digest. Read-only:
/// opening the store (`DiskStore::open`) would clear the temporary files of a running spoke.
pub fn read_stored(store_dir: &Path, digest: &aqueduct_proto::Digest) -> Option<Vec<u8>> {
    let data = std::fs::read(aqueduct_spoke::store::chunk_path(store_dir, digest)).ok()?;
    (aqueduct_proto::Digest::of(&data) == *digest).then_some(data)
}

/// The digests a spoke's store holds, with their sizes (read from its directory, read-only).
pub fn stored_chunks(store_dir: &Path) -> std::collections::HashMap<aqueduct_proto::Digest, u64> {
    let mut found = std::collections::HashMap::new();
    let Ok(fans) = std::fs::read_dir(store_dir.join("chunks")) else { return found };
    for fan in fans.flatten() {
        for entry in std::fs::read_dir(fan.path()).unwrap().flatten() {
            if let Some(d) = entry.file_name().to_str().and_then(aqueduct_proto::Digest::from_hex) {
                found.insert(d, entry.metadata().unwrap().len());
            }
        }
    }
    found
}

/// Reads every file of `manifest` through a spoke's local API (`ReadChunks`, verified by the
/// spoke) and checks it equals the file in `source_dir`.
pub async fn assert_reads(local: &mut LocalClient<Channel>, manifest: &Manifest, source_dir: &Path) {
    for file in &manifest.files {
        let mut read = Vec::new();
        // As many digests per request as the spoke takes.
        for chunks in file.chunks.chunks(aqueduct_proto::MAX_DIGESTS_PER_REQUEST) {
            let request = local::ReadChunksRequest {
                dataset: manifest.dataset.clone(),
                version: manifest.version,
                digests: chunks.iter().map(|c| c.digest.0.to_vec()).collect(),
            };
            let mut stream = local.read_chunks(request).await.unwrap().into_inner();
            while let Some(chunk) = stream.message().await.unwrap() {
                read.extend(chunk.data);
            }
        }
        assert!(read == std::fs::read(source_dir.join(&file.path)).unwrap(), "{} read wrong", file.path);
    }
}

/// Bytes of the chunk files in a spoke's store directory.
pub fn stored_bytes(store_dir: &Path) -> u64 {
    stored_chunks(store_dir).values().sum()
}

/// Writes a small model into `dir` (a config, 6 MiB of tensors, a tokenizer in a folder), its
/// bytes derived from `seed`; returns each file's path and bytes.
pub fn write_model(dir: &Path, seed: u64) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("config.json".to_string(), format!("{{\"seed\": {seed}}}").into_bytes()),
        ("model.safetensors".to_string(), aqueduct_testkit::noise(6 << 20, seed)),
        ("tok/tokenizer.json".to_string(), aqueduct_testkit::noise(100_000, seed + 1)),
    ];
    for (path, bytes) in &files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    files
}

/// Runs blocking file I/O off the runtime (FUSE mounts served in-process are served from it).
pub async fn io<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
