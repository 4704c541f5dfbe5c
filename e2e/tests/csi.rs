//! The CSI node plugin, called as the kubelet calls it: gRPC over the spoke's CSI unix socket,
//! with real FUSE and bind mounts, a real hub over mutual TLS and S3 (needs root and
//! /dev/fuse).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aqueduct_e2e::kubelet::{publish, unpublish};
use aqueduct_e2e::{SourceKind, World, io, local_client, socket_of, world, write_model};
use aqueduct_proto::csi::v1 as csi;
use aqueduct_proto::csi::v1::identity_client::IdentityClient;
use aqueduct_proto::csi::v1::node_client::NodeClient;
use aqueduct_proto::csi::v1::volume_capability::access_mode::Mode;
use aqueduct_proto::csi::v1::volume_capability::{AccessMode, AccessType};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_testkit::can_mount_fuse;
use tonic::Code;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;

/// Every file of `files` under `dir` equals its source.
async fn assert_shows(dir: &Path, files: &[(String, Vec<u8>)]) {
    let (dir, files) = (dir.to_owned(), files.to_vec());
    io(move || {
        for (path, bytes) in &files {
            let p = dir.join(path);
            assert!(std::fs::read(&p).unwrap() == *bytes, "{} differs from the source", p.display());
        }
    })
    .await
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
struct MountLine {
    device: String,
    point: PathBuf,
    options: String,
    fstype: String,
}

fn mountinfo() -> Vec<MountLine> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountLine {
                device: fields[2].to_string(),
                point: PathBuf::from(fields[4].replace("\\040", " ")),
                options: fields[5].to_string(),
                fstype: fields[dash + 1].to_string(),
            })
        })
        .collect()
}

/// The mounts at `path` (a path can hold several, stacked).
fn mounts_at(path: &Path) -> Vec<MountLine> {
    mountinfo().into_iter().filter(|m| m.point == path).collect()
}

/// The node-level FUSE mounts the plugin made (under `DATA_DIR/csi/mounts`).
fn shares(data_dir: &Path) -> Vec<MountLine> {
    let root = data_dir.join("csi/mounts");
    mountinfo().into_iter().filter(|m| m.point.starts_with(&root)).collect()
}

/// Detaches whatever the test mounted, however it ends (before the spoke that serves it
/// stops: declare it after the world).
struct Unmount(Vec<PathBuf>, PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let left = self.0.iter().cloned().chain(shares(&self.1).into_iter().map(|m| m.point));
        for path in left.collect::<Vec<_>>() {
            while !mounts_at(&path).is_empty() {
                if !std::process::Command::new("umount").arg("-l").arg(&path).status().is_ok_and(|s| s.success()) {
                    break;
                }
            }
        }
    }
}

struct Clients {
    identity: IdentityClient<Channel>,
    node: NodeClient<Channel>,
}

/// The CSI services on the unix socket at `socket`, once it answers.
async fn csi_clients(socket: &Path) -> Clients {
    for _ in 0..100 {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            return Clients { identity: IdentityClient::new(channel.clone()), node: NodeClient::new(channel) };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no CSI node plugin answers on {}", socket.display());
}

/// A region `eu` with one spoke that serves the CSI node plugin; returns its config and the
/// spoke's data directory.
async fn csi_region(w: &mut World, rate: u64) -> (PathBuf, PathBuf) {
    let config = w.region("eu", rate).await;
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[csi]\nsocket = \"csi.sock\"\nready_timeout = \"10m\"\n");
    std::fs::write(&config, text).unwrap();
    let data_dir = config.parent().unwrap().join("store");
    (config, data_dir)
}

/// A request the caller gives up on after `deadline` (as the kubelet does).
fn within<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, words: &[&str]) {
    let s = r.unwrap_err();
    eprintln!("{:?}: {}", s.code(), s.message());
    assert_eq!(s.code(), code, "{}", s.message());
    for w in words {
        assert!(s.message().contains(w), "{:?} lacks {w:?}", s.message());
    }
}

/// Waits until the spoke has heard of `dataset@vVERSION` from the hub.
async fn wait_assigned(config: &Path, dataset: &str, version: u64) {
    let mut local = local_client(&socket_of(config)).await;
    let request = local::ResolveRequest { dataset: dataset.into(), version, ..Default::default() };
    for _ in 0..300 {
        if local.resolve(request.clone()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the spoke never heard of {dataset}@v{version}");
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("AQUEDUCT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_on_a_node_share_one_fuse_mount_and_the_last_unpublish_removes_it() {
    if !can_mount_fuse() {
        return;
    }
    init_tracing();
    let mut w = world(SourceKind::S3).await;
    let files = write_model(&w.data, 1);
    w.snapshot().await;
    let (config, data_dir) = csi_region(&mut w, 1 << 30).await;
    let pods = w.root.join("kubelet/pods");
    let [a, b, c] = ["a", "b", "c"].map(|pod| pods.join(pod).join("volumes/kubernetes.io~csi/pv-llama/mount"));
    let _unmount = Unmount(vec![a.clone(), b.clone(), c.clone()], data_dir.clone());
    let spoke = w.start_spoke(&config);
    let mut clients = csi_clients(&data_dir.join("csi.sock")).await;
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    wait_assigned(&config, "llama", 1).await;

    // Identity: the driver name the PersistentVolumes use.
    let info = clients.identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.name.as_str(), info.vendor_version.is_empty()), ("csi.aqueduct.io", false));
    assert_eq!(clients.identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
    let caps = clients.identity.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap();
    assert!(caps.into_inner().capabilities.is_empty(), "a node plugin only: no controller service");
    let node_info = clients.node.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(node_info.node_id, "eu-1");
    let caps = clients.node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap();
    assert!(caps.into_inner().capabilities.is_empty(), "no staging");
    let staged = clients.node.node_stage_volume(csi::NodeStageVolumeRequest::default()).await;
    expect_err(staged, Code::Unimplemented, &["NodeStageVolume"]);

    // Two pods publish the same volume at once: one FUSE mount, bound read-only into both.
    let v1 = [("dataset", "llama"), ("version", "1")];
    let (mut node_a, mut node_b) = (clients.node.clone(), clients.node.clone());
    let (at_a, at_b) = tokio::join!(
        node_a.node_publish_volume(publish("pv-llama", &a, &v1)),
        node_b.node_publish_volume(publish("pv-llama", &b, &v1)),
    );
    at_a.unwrap();
    at_b.unwrap();
    let fuse = shares(&data_dir);
    assert_eq!(fuse.len(), 1, "one FUSE mount per version on the node: {fuse:?}");
    assert_eq!(fuse[0].point, data_dir.join("csi/mounts/llama@v1"));
    assert!(fuse[0].fstype.starts_with("fuse"), "{fuse:?}");
    for target in [&a, &b] {
        let bound = mounts_at(target);
        assert_eq!(bound.len(), 1, "{}: {bound:?}", target.display());
        assert_eq!(bound[0].device, fuse[0].device, "{} is not bound from the node's mount", target.display());
        assert!(bound[0].options.split(',').any(|o| o == "ro"), "{} is not read-only: {bound:?}", target.display());
        assert_shows(target, &files).await;
    }
    let t = a.clone();
    let written = io(move || std::fs::write(t.join("config.json"), b"{}")).await;
    assert!(written.is_err(), "a pod wrote into its volume");

    // Publishing again is idempotent: nothing is mounted twice.
    clients.node.node_publish_volume(publish("pv-llama", &a, &v1)).await.unwrap();
    assert_eq!(mounts_at(&a).len(), 1, "a repeated publish mounted again");
    assert_eq!(shares(&data_dir).len(), 1);
    // Another volume at a target in use is refused.
    let other = clients.node.node_publish_volume(publish("pv-other", &a, &v1)).await;
    expect_err(other, Code::AlreadyExists, &["pv-llama", "unpublish it first"]);

    // A volume that follows the region's active version is a mount of its own.
    let active = [("dataset", "llama"), ("version", "active")];
    clients.node.node_publish_volume(publish("pv-active", &c, &active)).await.unwrap();
    assert_eq!(shares(&data_dir).len(), 2);
    assert!(shares(&data_dir).iter().any(|m| m.point == data_dir.join("csi/mounts/llama@active")));
    assert_shows(&c, &files).await;
    clients.node.node_unpublish_volume(unpublish("pv-active", &c)).await.unwrap();
    assert_eq!(shares(&data_dir).len(), 1, "the active share outlived its last user");

    // One pod goes: the other still reads.
    clients.node.node_unpublish_volume(unpublish("pv-llama", &a)).await.unwrap();
    assert!(mounts_at(&a).is_empty() && !a.exists(), "the target is still there");
    assert_eq!(shares(&data_dir).len(), 1, "the node's mount went with a user left");
    assert_shows(&b, &files).await;
    // Unpublishing what is not published succeeds.
    clients.node.node_unpublish_volume(unpublish("pv-llama", &a)).await.unwrap();
    clients.node.node_unpublish_volume(unpublish("pv-never", &pods.join("x/mount"))).await.unwrap();

    // The last one goes: so does the node's mount.
    clients.node.node_unpublish_volume(unpublish("pv-llama", &b)).await.unwrap();
    assert!(mounts_at(&b).is_empty() && !b.exists());
    assert!(shares(&data_dir).is_empty(), "the last unpublish left the FUSE mount: {:?}", shares(&data_dir));
    assert!(!data_dir.join("csi/mounts/llama@v1").exists());
    // And it comes back for the next pod.
    clients.node.node_publish_volume(publish("pv-llama", &b, &v1)).await.unwrap();
    assert_shows(&b, &files).await;

    // A spoke that stops leaves the pod's bind mount and its share: the holder serves it.
    spoke.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mounts_at(&b).len(), 1, "a stopped spoke took a pod's bind mount");
    assert_eq!(shares(&data_dir).len(), 1, "a stopped spoke took its share: {:?}", shares(&data_dir));
    assert_shows(&b, &files).await;
    // The next spoke knows the publication: the kubelet's unpublish takes down the bind, then
    // the share with its last user.
    let _next = w.start_spoke(&config);
    let mut clients = csi_clients(&data_dir.join("csi.sock")).await;
    clients.node.node_unpublish_volume(unpublish("pv-llama", &b)).await.unwrap();
    assert!(mounts_at(&b).is_empty() && !b.exists(), "an unpublish after a restart left the bind");
    assert!(shares(&data_dir).is_empty(), "an unpublish after a restart left the share: {:?}", shares(&data_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_invalid_argument_saying_what_is_expected() {
    if !can_mount_fuse() {
        return;
    }
    init_tracing();
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 2);
    w.snapshot().await;
    let (config, data_dir) = csi_region(&mut w, 1 << 30).await;
    let target = w.root.join("kubelet/pods/a/volumes/kubernetes.io~csi/pv/mount");
    let _unmount = Unmount(vec![target.clone()], data_dir.clone());
    let _spoke = w.start_spoke(&config);
    let mut node = csi_clients(&data_dir.join("csi.sock")).await.node;
    w.rollout(1, &["eu"]).await;
    wait_assigned(&config, "llama", 1).await;

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&[("version", "1")], &["volume attribute dataset", "missing"]),
        (&[("dataset", "Llama")], &["volume attribute dataset"]),
        // (A lowercase word is a tag name now: `Newest` is neither a version nor a tag.)
        (&[("dataset", "llama"), ("version", "Newest")], &["volume attribute version", "version number", "active"]),
        (&[("dataset", "llama"), ("mode", "all")], &["volume attribute mode", "auto, region, every-node"]),
        (&[("dataset", "llama"), ("startBeforeReady", "1")], &["volume attribute startBeforeReady"]),
        (&[("dataset", "llama"), ("dataSet", "x")], &["unknown volume attribute \"dataSet\""]),
    ];
    for (attributes, words) in cases {
        expect_err(node.node_publish_volume(publish("pv", &target, attributes)).await, Code::InvalidArgument, words);
    }
    let good = [("dataset", "llama"), ("version", "1")];
    let mut writer = publish("pv", &target, &good);
    writer.readonly = false;
    writer.volume_capability.as_mut().unwrap().access_mode = Some(AccessMode { mode: Mode::SingleNodeWriter as i32 });
    expect_err(node.node_publish_volume(writer).await, Code::InvalidArgument, &["read-only", "ReadOnlyMany"]);
    let mut block = publish("pv", &target, &good);
    block.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(Default::default()));
    expect_err(node.node_publish_volume(block).await, Code::InvalidArgument, &["access type block"]);
    let relative = publish("pv", Path::new("pods/a/mount"), &good);
    expect_err(node.node_publish_volume(relative).await, Code::InvalidArgument, &["target_path", "absolute"]);
    expect_err(node.node_unpublish_volume(unpublish("", &target)).await, Code::InvalidArgument, &["volume_id"]);
    // Nothing was mounted by any of them.
    assert!(mounts_at(&target).is_empty() && shares(&data_dir).is_empty());

    // A dataset the region does not hold: NotFound once the wait is over, saying what to do.
    let unknown = publish("pv", &target, &[("dataset", "mistral"), ("version", "1")]);
    let r = node.node_publish_volume(within(unknown, Duration::from_secs(2))).await;
    expect_err(r, Code::NotFound, &["mistral", "not rolled out", "aq rollout mistral@vN"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_waits_until_its_version_is_ready_in_the_region() {
    if !can_mount_fuse() {
        return;
    }
    init_tracing();
    let mut w = world(SourceKind::S3).await;
    let files = write_model(&w.data, 3);
    w.snapshot().await;
    // A slow link: the version (6 MiB) takes at least 6 s to be Ready.
    let (config, data_dir) = csi_region(&mut w, MIB).await;
    let pods = w.root.join("kubelet/pods");
    let [early, waiting] = ["early", "waiting"].map(|pod| pods.join(pod).join("volumes/kubernetes.io~csi/pv/mount"));
    let _unmount = Unmount(vec![early.clone(), waiting.clone()], data_dir.clone());
    let _spoke = w.start_spoke(&config);
    let mut node = csi_clients(&data_dir.join("csi.sock")).await.node;
    w.rollout(1, &["eu"]).await;
    wait_assigned(&config, "llama", 1).await;

    // A volume that may start before Ready does not wait: its reads will fetch what is not
    // here yet. (The link cannot have delivered 6 MiB yet.)
    let eager = [("dataset", "llama"), ("version", "1"), ("startBeforeReady", "true")];
    node.node_publish_volume(publish("pv", &early, &eager)).await.unwrap();
    assert_ne!(
        w.status(1).await[0].phase(),
        pb::Phase::Ready,
        "the version was Ready already: the test proves nothing"
    );

    // A caller that gives up after two seconds gets the reason before its deadline: which
    // version, which region, how far this node is, and what to do.
    let v1 = [("dataset", "llama"), ("version", "1")];
    let r = node.node_publish_volume(within(publish("pv", &waiting, &v1), Duration::from_secs(2))).await;
    expect_err(
        r,
        Code::FailedPrecondition,
        &["llama@v1 is not Ready in region eu", "this node holds", "aq status llama", "startBeforeReady"],
    );
    assert!(mounts_at(&waiting).is_empty(), "a failed publish left a mount");
    assert_eq!(shares(&data_dir).len(), 1, "only the early volume's share is mounted");

    // Without a deadline of its own, a publish waits (up to ready_timeout) until the version
    // is Ready in the region, then mounts.
    node.node_publish_volume(publish("pv", &waiting, &v1)).await.unwrap();
    let rows = w.status(1).await;
    assert_eq!(rows[0].phase(), pb::Phase::Ready, "published before the version was Ready in the region");
    assert_shows(&waiting, &files).await;
    assert_shows(&early, &files).await;
    assert_eq!(shares(&data_dir).len(), 1, "both volumes share the node's mount of llama@v1");

    for target in [&early, &waiting] {
        node.node_unpublish_volume(unpublish("pv", target)).await.unwrap();
    }
    assert!(shares(&data_dir).is_empty());
}
