//! The version lifecycle on one spoke, with its real parts in process (catalog, tiered store
//! on disk, the FUSE holder with real mounts, the local API on its socket) and the hub's
//! assignments fed by the test as the hub sends them (tags, `retained`, versions removed):
//! the hub's side of tags and removals is built at the same time, so these tests play its
//! part. A mount that follows a tag switches when the tag moves (new opens see the new version,
//! an open file keeps its own) and keeps what it shows while the tag names a version that is
//! not Ready; a version no longer assigned has its chunks, whole copies and manifest deleted,
//! except the chunks a kept version shares and except while a mount shows it. Needs root and
//! /dev/fuse.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_core::budget::Budget;
use aqueduct_core::identity::Identity;
use aqueduct_core::signing::{SigningKey, TrustedKeys};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::local_client::LocalClient;
use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest};
use aqueduct_spoke::cache::{CacheConfig, TieredStore};
use aqueduct_spoke::catalog::Catalog;
use aqueduct_spoke::controller::{self, Parts};
use aqueduct_spoke::holder::{HolderMode, MountsConfig, Reach};
use aqueduct_spoke::in_use::{InUse, Sidecars};
use aqueduct_spoke::local::LocalService;
use aqueduct_spoke::mounts::Mounts;
use aqueduct_spoke::store::ChunkStore;
use aqueduct_testkit::can_mount_fuse;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const CHUNK: usize = 64 << 10;

/// One spoke's parts, in process.
struct Node {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    cache: Arc<TieredStore>,
    catalog: Arc<Catalog>,
    parts: Parts,
    local: LocalClient<Channel>,
    stop: CancellationToken,
}

/// A version of dataset `m`: a file `model` of three chunks, the first shared by every
/// version and the second by versions that share `generation`, and a file `config` alike in
/// every version (one whole copy for all).
fn version(v: u64, generation: u64) -> (Manifest, Vec<Vec<u8>>) {
    let shared = aqueduct_testkit::noise(CHUNK, 1000);
    let family = aqueduct_testkit::noise(CHUNK, 2000 + generation);
    let own = aqueduct_testkit::noise(CHUNK, 3000 + v);
    let config = aqueduct_testkit::noise(CHUNK, 4000);
    let entry = |path: &str, chunks: &[&Vec<u8>]| {
        let mut offset = 0;
        let refs = chunks
            .iter()
            .map(|c| {
                let r = ChunkRef { digest: Digest::of(c), offset, length: c.len() as u32 };
                offset += c.len() as u64;
                r
            })
            .collect();
        FileEntry { path: path.into(), object: path.into(), size: offset, mode: 0o644, mtime_unix_ms: 0, chunks: refs }
    };
    let files = vec![entry("model", &[&shared, &family, &own]), entry("config", &[&config])];
    let mut m = Manifest::new("m".into(), v, ChunkerParams::DEFAULT, files).unwrap();
    signing_key().sign_manifest(&mut m, 1);
    (m, vec![shared, family, own, config])
}

/// The hub's signing key in these tests (the catalog trusts it only).
fn signing_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().unwrap())
}

fn model_bytes(chunks: &[Vec<u8>]) -> Vec<u8> {
    chunks[..3].concat()
}

fn assignment(m: &Manifest, active: bool, ready: bool) -> pb::Assignment {
    pb::Assignment {
        dataset: m.dataset.clone(),
        version: m.version,
        total_bytes: m.files.iter().map(|f| f.size).sum(),
        root: m.root.0.to_vec(),
        active,
        ready,
        retained: true,
        ..Default::default()
    }
}

fn tag(name: &str, version: u64) -> pb::Tag {
    pb::Tag { dataset: "m".into(), name: name.into(), version, updated_unix_ms: 0 }
}

/// A spoke's parts holding `versions` (their chunks in the store, their manifests in the
/// catalog as the hub sent them).
async fn node(versions: &[(Manifest, Vec<Vec<u8>>)]) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let data = root.join("data");
    let cache = Arc::new(TieredStore::open(&data, &CacheConfig::default()).unwrap());
    // No hub: everything is in the store and the catalog.
    let hub = SpokeClient::new(tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy());
    let catalog = Arc::new(
        Catalog::open(&data.join("catalog"), hub.clone(), TrustedKeys::new([signing_key().public().clone()])).unwrap(),
    );
    for (m, chunks) in versions {
        for c in chunks {
            cache.put(&Digest::of(c), c).unwrap();
        }
        let path = data.join(format!("catalog/manifests/m/{}.pb", m.version));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, pb::Manifest::from(m).encode_to_vec()).unwrap();
    }
    let peers = Arc::new(aqueduct_spoke::peers::Peers::new(
        "n1",
        &Identity::Node { region: "eu".into(), node: "n1".into() },
        None,
    ));
    let hubs = aqueduct_spoke::hubs::Hubs::new(vec!["https://127.0.0.1:1".into()]);
    let origins = Arc::new(aqueduct_spoke::origin::Network::new(hub, hubs, peers.clone()));
    let store: Arc<dyn ChunkStore> = cache.clone();
    let priority = Arc::new(aqueduct_spoke::priority::Priority::default());
    let metrics = Arc::new(aqueduct_spoke::metrics::SpokeMetrics::default());
    let reader = aqueduct_spoke::reader::ReadThrough::new(store, origins, peers, priority.clone(), metrics);
    let stop = CancellationToken::new();
    let socket = data.join("spoke.sock");
    let reach = Reach {
        config: MountsConfig { holder: HolderMode::Embedded, ..Default::default() },
        data_dir: data.clone(),
        spoke_socket: socket.clone(),
        store_on_disk: true,
    };
    let mounts = Arc::new(Mounts::start(reach, &stop).await.unwrap());
    let sidecars = Arc::new(Sidecars::default());
    let service = LocalService {
        catalog: catalog.clone(),
        reader: reader.clone(),
        mounts: mounts.clone(),
        sidecars: sidecars.clone(),
    };
    let health = aqueduct_core::health::Health::new(vec![]).await;
    tokio::spawn(aqueduct_spoke::local::serve(socket.clone(), service, health.grpc_service(), 64, stop.clone()));
    let parts = Parts {
        peer_address: String::new(),
        reader,
        cache: cache.clone(),
        catalog: catalog.clone(),
        priority,
        holds: Arc::default(),
        ready: Arc::default(),
        budget: Arc::new(Budget::new(u64::MAX)),
        link: Arc::default(),
        hubs: aqueduct_spoke::hubs::Hubs::new(vec!["https://127.0.0.1:9".into()]),
        tls: {
            let ca = aqueduct_hub::pki::Authority::create("test").unwrap();
            let issued = ca.issue_node("eu", "n1", Duration::from_secs(3600)).unwrap();
            let held = aqueduct_spoke::tls::Held::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
            aqueduct_spoke::tls::NodeTls::new(ca.ca_pem().as_bytes().to_vec(), held).unwrap()
        },
        renewal: Arc::default(),
        mounts,
        csi: None,
        sidecars,
        in_use: Arc::new(InUse::default()),
    };
    let mut local = None;
    for _ in 0..100 {
        if socket.exists() {
            local = Some(aqueduct_fuse::remote::client(&socket).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node { _tmp: tmp, root, data, cache, catalog, parts, local: local.expect("the local API listens"), stop }
}

impl Node {
    async fn mount(&mut self, version: u64, tag: &str, name: &str) -> Result<local::MountInfo, tonic::Status> {
        let path = self.root.join(name);
        std::fs::create_dir_all(&path).unwrap();
        let request = local::MountRequest {
            dataset: "m".into(),
            version,
            tag: tag.into(),
            mountpoint: path.display().to_string(),
        };
        self.local.mount(request).await.map(|r| r.into_inner())
    }

    async fn unmount(&mut self, name: &str) {
        let mountpoint = self.root.join(name).display().to_string();
        self.local.unmount(local::UnmountRequest { mountpoint }).await.unwrap();
    }

    async fn stop(self) {
        let paths: Vec<String> =
            self.parts.mounts.list().await.unwrap_or_default().into_iter().map(|m| m.mountpoint).collect();
        for p in paths {
            let _ = self.parts.mounts.unmount(Path::new(&p), true).await;
        }
        self.stop.cancel();
        self.parts.mounts.stop().await;
    }
}

async fn read(path: PathBuf) -> Vec<u8> {
    tokio::task::spawn_blocking(move || std::fs::read(path).unwrap()).await.unwrap()
}

/// Waits until a new open of `path` reads `expected` (a following mount switches within a few
/// of its holder's follow intervals); the time it took is printed, not asserted.
async fn until_reads(path: &Path, expected: &[u8]) {
    let start = Instant::now();
    for _ in 0..600 {
        if read(path.to_owned()).await == expected {
            println!("{} switched after {:?}", path.display(), start.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never showed the version expected", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_following_a_tag_switches_when_the_tag_moves() {
    if !can_mount_fuse() {
        return;
    }
    let (v1, v2, v3) = (version(1, 1), version(2, 1), version(3, 2));
    let mut node = node(&[v1.clone(), v2.clone(), v3.clone()]).await;
    let mut current = pb::Assignments {
        assignments: vec![
            assignment(&v1.0, true, true),
            assignment(&v2.0, false, true),
            assignment(&v3.0, false, false),
        ],
        tags: vec![tag("stable", 1), tag("next", 3), tag("gone", 9)],
        ..Default::default()
    };
    node.catalog.set_assignments(current.clone()).unwrap();

    let info = node.mount(0, "stable", "stable").await.unwrap();
    assert_eq!((info.version, info.follow, info.tag.as_str()), (1, true, "stable"));
    let model = node.root.join("stable/model");
    assert_eq!(read(model.clone()).await, model_bytes(&v1.1));
    // A new mount of a tag whose version is not Ready here, or not assigned, or of no tag,
    // is refused with what to do.
    let err = node.mount(0, "next", "next").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("m@next names v3") && err.message().contains("not Ready"), "{}", err.message());
    let err = node.mount(0, "gone", "gone").await.unwrap_err();
    assert!(err.message().contains("v9") && err.message().contains("aq rollout m@v9 --to REGION"), "{}", err.message());
    let err = node.mount(0, "prod", "prod").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    assert!(err.message().contains("gone, next, stable"), "{}", err.message());

    // A file open on v1 while the tag moves to v2.
    let open = model.clone();
    let mut held = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(open).unwrap();
        let mut first = vec![0; CHUNK];
        f.read_exact(&mut first).unwrap();
        (f, first)
    })
    .await
    .unwrap();
    current.tags[0].version = 2;
    node.catalog.set_assignments(current.clone()).unwrap();
    until_reads(&model, &model_bytes(&v2.1)).await;
    // The open file reads v1 to its end: nothing mixes.
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        held.0.read_to_end(&mut rest).unwrap();
        held.1.extend(rest);
        held.1
    })
    .await
    .unwrap();
    assert_eq!(rest, model_bytes(&v1.1));
    let listed = node.local.list_mounts(local::ListMountsRequest {}).await.unwrap().into_inner().mounts;
    let shown: Vec<(u64, bool, &str)> = listed.iter().map(|m| (m.version, m.follow, m.tag.as_str())).collect();
    assert_eq!(shown, [(2, true, "stable")]);

    // The tag moves to v3, not Ready yet: the mount keeps v2 (and says why once, in the log);
    // once v3 is Ready, it switches.
    current.tags[0].version = 3;
    node.catalog.set_assignments(current.clone()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(read(model.clone()).await, model_bytes(&v2.1), "switched to a version not Ready");
    current.assignments[2].ready = true;
    node.catalog.set_assignments(current.clone()).unwrap();
    until_reads(&model, &model_bytes(&v3.1)).await;
    node.stop().await;
}

fn has(cache: &TieredStore, chunk: &[u8]) -> bool {
    cache.contains(&Digest::of(chunk))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_version_is_swept_except_shared_chunks_and_while_a_mount_shows_it() {
    if !can_mount_fuse() {
        return;
    }
    // v1 and v2 share their second chunk; v3 shares only the first (and the config file).
    let (v1, v2, v3) = (version(1, 1), version(2, 1), version(3, 2));
    let mut node = node(&[v1.clone(), v2.clone(), v3.clone()]).await;
    let all = pb::Assignments {
        assignments: vec![
            assignment(&v1.0, false, true),
            assignment(&v2.0, false, true),
            assignment(&v3.0, true, true),
        ],
        ..Default::default()
    };
    node.catalog.set_assignments(all.clone()).unwrap();
    node.mount(1, "", "v1").await.unwrap();
    let v1_model = node.root.join("v1/model");
    assert_eq!(read(v1_model.clone()).await, model_bytes(&v1.1));
    // Everything assigned: nothing goes, and the mount is reported in use.
    let kept = controller::keep::retain_once(&node.parts, &node.data, &all.assignments).await;
    assert!(kept.sweep.is_empty() && kept.in_use.is_empty(), "{kept:?}");
    let users: Vec<(String, u64, String)> =
        node.parts.in_use.get().into_iter().map(|u| (u.dataset, u.version, u.user)).collect();
    assert_eq!(users, [("m".to_string(), 1, format!("mount {}", node.root.join("v1").display()))]);

    // The hub removes v1 and v2 (only v3 is assigned): v2 goes, v1 stays while mounted.
    let only_v3 = vec![assignment(&v3.0, true, true)];
    node.catalog.set_assignments(pb::Assignments { assignments: only_v3.clone(), ..Default::default() }).unwrap();
    let removed = controller::keep::retain_once(&node.parts, &node.data, &only_v3).await;
    let key = |v: u64| aqueduct_spoke::controller::plan::VersionKey::new("m", v);
    assert_eq!((removed.sweep, removed.in_use), (vec![key(2)], vec![key(1)]));
    assert!(!has(&node.cache, &v2.1[2]), "v2's own chunk was kept");
    assert!(has(&node.cache, &v2.1[1]), "the chunk v2 shares with v1 (mounted) went");
    assert!(has(&node.cache, &v2.1[0]) && has(&node.cache, &v2.1[3]), "a chunk v3 shares went");
    assert!(v1.1.iter().all(|c| has(&node.cache, c)), "a chunk of the mounted v1 went");
    assert!(node.catalog.kept_manifest("m", 2).is_none() && node.catalog.kept_manifest("m", 1).is_some());
    // The mount of a removed version keeps working, read through the local API too.
    assert_eq!(read(v1_model.clone()).await, model_bytes(&v1.1));
    let copies = node.data.join("files");
    let copy_of =
        |m: &Manifest, path: &str| copies.join(m.files.iter().find(|f| f.path == path).unwrap().root().to_hex());
    println!("v1's model has a whole copy before the sweep: {}", copy_of(&v1.0, "model").exists());

    // Unmounted: v1 goes at the next pass, all but what v3 shares.
    node.unmount("v1").await;
    let removed = controller::keep::retain_once(&node.parts, &node.data, &only_v3).await;
    assert_eq!((removed.sweep, removed.in_use), (vec![key(1)], vec![]));
    assert!(!has(&node.cache, &v1.1[1]) && !has(&node.cache, &v1.1[2]));
    assert!(has(&node.cache, &v1.1[0]) && has(&node.cache, &v1.1[3]), "a chunk v3 shares went");
    assert!(v3.1.iter().all(|c| has(&node.cache, c)));
    assert!(node.parts.in_use.get().is_empty());
    assert_eq!(node.catalog.kept_versions(), [("m".to_string(), 3)]);
    // A whole copy of v1's model (if the holder made one) is gone; the config's, which v3
    // has too, is not.
    assert!(!copy_of(&v1.0, "model").exists());
    let config_copy = copy_of(&v1.0, "config");
    println!("config's whole copy made: {}", config_copy.exists());
    assert_eq!(copy_of(&v1.0, "config"), copy_of(&v3.0, "config"));
    node.stop().await;
}
