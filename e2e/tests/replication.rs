//! Replication end to end, in one process: a hub and spokes of two regions over real mutual
//! TLS on 127.0.0.1, a real S3 server as the source, spokes' chunk stores on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::{Digest, Manifest};
use aqueduct_spoke::store::{ChunkStore, DiskStore};
use aqueduct_testkit::{S3Server, noise};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    hub_url: String,
    admin: AdminClient<Channel>,
    _s3: S3Server,
    data: PathBuf,
    shutdown: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let s3 = S3Server::start(&root.join("s3")).await.unwrap();
    let creds = root.join("s3-credentials");
    s3.write_credentials(&creds).unwrap();
    let data = root.join("s3/models/llama");
    std::fs::create_dir_all(&data).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let out = aqueduct_hub::init(&root.join("hub"), addr, &[]).unwrap();
    let config = aqueduct_hub::config::HubConfig::load(&out.config_path).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(aqueduct_hub::serve(config, listener, shutdown.clone()));
    let admin_dir = root.join("hub/admin");
    let read = |f: &str| std::fs::read_to_string(admin_dir.join(f)).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem"))).identity(Identity::from_pem(read("admin.pem"), read("admin.key")));
    let hub_url = format!("https://{addr}");
    let channel = Endpoint::from_shared(hub_url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut admin = AdminClient::new(channel);

    let options = [("endpoint", s3.endpoint()), ("allow_http", "true".to_string()), ("credentials_file", creds.display().to_string())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let source = pb::Source { name: "s3".into(), url: "s3://models".into(), options, created_unix_ms: 0 };
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    let dataset = pb::Dataset { name: "llama".into(), source: "s3".into(), prefix: "llama".into(), created_unix_ms: 0, latest_version: 0 };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    World { _tmp: tmp, root, hub_url, admin, _s3: s3, data, shutdown }
}

impl World {
    async fn snapshot(&mut self) -> pb::VersionSummary {
        let mut events = self.admin.snapshot(pb::SnapshotRequest { dataset: "llama".into() }).await.unwrap().into_inner();
        while let Some(e) = events.message().await.unwrap() {
            if let Some(pb::snapshot_event::Event::Done(v)) = e.event {
                return v;
            }
        }
        panic!("no snapshot result");
    }

    /// Adds a region and writes a spoke config for one node of it; returns the config path.
    async fn region(&mut self, name: &str, rate: u64) -> PathBuf {
        let req = pb::AddRegionRequest { region: Some(pb::Region { name: name.into(), rate_bytes_per_sec: rate, created_unix_ms: 0 }) };
        let bundle = self.admin.add_region(req).await.unwrap().into_inner().bundle.unwrap();
        let dir = self.root.join(format!("spoke-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), bundle.ca_pem).unwrap();
        std::fs::write(dir.join("cert.pem"), bundle.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), bundle.key_pem).unwrap();
        let config = dir.join("spoke.toml");
        std::fs::write(
            &config,
            format!(
                "hub = \"{}\"\nnode = \"{name}-1\"\ndata_dir = \"store\"\n[tls]\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                self.hub_url
            ),
        )
        .unwrap();
        config
    }

    fn start_spoke(&self, config: &Path) -> CancellationToken {
        let config = aqueduct_spoke::SpokeConfig::load(config).unwrap();
        let stop = self.shutdown.child_token();
        tokio::spawn(aqueduct_spoke::run(config, stop.clone()));
        stop
    }

    async fn rollout(&mut self, version: u64, regions: &[&str]) {
        let req = pb::RolloutRequest { dataset: "llama".into(), version, regions: regions.iter().map(|r| r.to_string()).collect() };
        self.admin.rollout(req).await.unwrap();
    }

    /// Waits (up to a generous limit: this checks completion, not speed) until every region
    /// of `version` is Ready; returns the status rows.
    async fn wait_ready(&mut self, version: u64) -> Vec<pb::StatusRow> {
        for _ in 0..600 {
            let rows: Vec<pb::StatusRow> =
                self.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows.into_iter().filter(|r| r.version == version).collect();
            if let Some(failed) = rows.iter().find(|r| r.phase == "Failed") {
                panic!("region {} failed: {}", failed.region, failed.reason);
            }
            if !rows.is_empty() && rows.iter().all(|r| r.phase == "Ready") {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("v{version} did not become Ready");
    }

    async fn manifest(&mut self, version: u64) -> Manifest {
        let wire = self.admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version }).await.unwrap().into_inner();
        Manifest::try_from(wire).unwrap()
    }
}

/// Every file of `manifest`, rebuilt from a spoke's store, equals the source.
fn assert_store_holds(store_dir: &Path, manifest: &Manifest, source_dir: &Path) {
    let store = DiskStore::open(store_dir).unwrap();
    for file in &manifest.files {
        let mut rebuilt = Vec::new();
        for c in &file.chunks {
            rebuilt.extend(store.get(&c.digest).unwrap().unwrap_or_else(|| panic!("{} lacks chunk {}", store_dir.display(), c.digest)));
        }
        assert_eq!(rebuilt, std::fs::read(source_dir.join(&file.path)).unwrap(), "{}", file.path);
    }
}

fn write_model(dir: &Path, header_extra: usize) -> BTreeMap<&'static str, Vec<u8>> {
    let mut model = format!("{{\"__metadata__\":{{\"pad\":\"{}\"}}}}", "x".repeat(header_extra)).into_bytes();
    model.extend(noise(12 << 20, 21));
    let files = BTreeMap::from([
        ("model.safetensors", model),
        ("config.json", b"{\"hidden_size\": 4096}".to_vec()),
        ("tokenizer.json", noise(700 << 10, 22)),
    ]);
    for (path, bytes) in &files {
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_replicate_verified_and_v2_moves_only_new_chunks() {
    let mut w = world().await;
    write_model(&w.data, 0);
    let v1 = w.snapshot().await;
    let eu = w.region("eu", 1 << 30).await;
    let us = w.region("us", 1 << 30).await;
    w.start_spoke(&eu);
    w.start_spoke(&us);
    w.rollout(1, &["eu", "us"]).await;
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    for row in &rows {
        assert_eq!(row.cached_bytes, v1.bytes);
        assert_eq!(row.relayed_bytes, distinct, "region {} pulled more than the version's chunks", row.region);
    }
    for region in ["eu", "us"] {
        assert_store_holds(&w.root.join(format!("spoke-{region}/store")), &m1, &w.data);
    }

    // v2: the header grows, shifting everything after it, and the config changes.
    write_model(&w.data, 37);
    std::fs::write(w.data.join("config.json"), b"{\"hidden_size\": 8192}").unwrap();
    let v2 = w.snapshot().await;
    assert!(v2.new_bytes < v2.bytes / 4, "v2 should share most chunks: {} new of {}", v2.new_bytes, v2.bytes);
    w.rollout(2, &["eu", "us"]).await;
    let rows = w.wait_ready(2).await;
    let m2 = w.manifest(2).await;
    for row in &rows {
        assert_eq!(row.relayed_bytes, v2.new_bytes, "region {} moved more than v2's new chunks", row.region);
        assert_store_holds(&w.root.join(format!("spoke-{}/store", row.region)), &m2, &w.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_on_disk_is_found_and_fetched_again() {
    let mut w = world().await;
    write_model(&w.data, 0);
    w.snapshot().await;
    let eu = w.region("eu", 1 << 30).await;
    let spoke = w.start_spoke(&eu);
    w.rollout(1, &["eu"]).await;
    let before = w.wait_ready(1).await[0].relayed_bytes;
    spoke.cancel();

    // Rot one chunk on disk, then restart the spoke: it checks before it says Ready.
    let m1 = w.manifest(1).await;
    let victim = m1.file("model.safetensors").unwrap().chunks[3];
    let hex = victim.digest.to_hex();
    let path = w.root.join(format!("spoke-eu/store/chunks/{}/{hex}", &hex[..2]));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_ne!(Digest::of(&bytes), victim.digest);

    w.start_spoke(&eu);
    // Ready again only after the chunk was fetched once more, and nothing else was.
    let mut after = before;
    for _ in 0..600 {
        after = w.admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows[0].relayed_bytes;
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = w.wait_ready(1).await;
    assert_eq!(rows[0].relayed_bytes, before + u64::from(victim.length));
    assert_eq!(after, before + u64::from(victim.length));
    assert_store_holds(&w.root.join("spoke-eu/store"), &m1, &w.data);
}
