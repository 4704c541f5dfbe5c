//! A region of several spokes acts as one cache: each chunk crosses the region's link once,
//! to its owner, and the other spokes get it from their peers over mutual TLS. Real hub, real
//! S3 server, spokes in this process or as processes on 127.0.0.1.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use aqueduct_e2e::{
    Children, SourceKind, assert_reads, assert_store_has, assert_store_holds, bin, local_client, signal, socket_of,
    spawn_logged, stored_bytes, stored_chunks, world,
};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::spoke::v1::peer_client::PeerClient;
use aqueduct_testkit::noise;

const MIB: u64 = 1 << 20;

fn write_model(dir: &Path, size: usize, header_extra: usize) {
    let mut model = format!("{{\"__metadata__\":{{\"pad\":\"{}\"}}}}", "x".repeat(header_extra)).into_bytes();
    model.extend(noise(size, 31));
    std::fs::write(dir.join("model.safetensors"), model).unwrap();
    std::fs::write(dir.join("config.json"), format!("{{\"pad\": {header_extra}}}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_spokes_of_a_region_move_each_chunk_over_the_link_once() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("AQUEDUCT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 16 << 20, 0);
    let v1 = w.snapshot().await;
    let configs = w.region_of("eu", 1 << 30, 3).await;
    for c in &configs {
        w.start_spoke(c);
    }
    w.wait_members("eu", 3).await;
    w.rollout(1, &["eu"]).await;
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    let row = &rows[0];
    assert_eq!(row.relayed_bytes, distinct, "the link carried more than one copy of the version");
    assert_eq!(row.refetched_bytes, 0);
    // Ready means every spoke holds the whole version (every-node), each verified.
    let nodes: Vec<(&str, pb::Phase, u64)> =
        row.nodes.iter().map(|n| (n.node.as_str(), n.phase(), n.cached_bytes)).collect();
    let ready = pb::Phase::Ready;
    assert_eq!(nodes, [("eu-1", ready, v1.bytes), ("eu-2", ready, v1.bytes), ("eu-3", ready, v1.bytes)]);
    for i in 1..=3 {
        assert_store_holds(&w.root.join(format!("spoke-eu-{i}/store")), &m1, &w.data);
    }
    // `aq status --nodes` shows each spoke's progress and cache once they reported it.
    let mut text = String::new();
    for _ in 0..100 {
        let out = std::process::Command::new(bin("aq"))
            .args(["status", "--nodes"])
            .env("AQ_CONFIG", w.root.join("hub/admin/aq.toml"))
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        if text.lines().any(|l| l.starts_with("eu ") && l.contains("48.0 MiB")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The region's three spokes hold 16 MiB each; each got about two thirds from its peers.
    let region = text.lines().find(|l| l.starts_with("eu ") && l.contains("unlimited")).unwrap_or_default();
    assert!(region.contains(" 3 ") && region.contains("48.0 MiB"), "no region line with 3 spokes and 48 MiB:\n{text}");
    for i in 1..=3 {
        let node = text.lines().find(|l| l.starts_with(&format!("eu       eu-{i}")) && l.contains("memory+disk"));
        assert!(node.is_some_and(|l| l.contains("16.0 MiB")), "no cache line for eu-{i}:\n{text}");
    }
    println!("{text}");

    // v2: a grown header shifts the rest; only the new chunks cross the link, once.
    write_model(&w.data, 16 << 20, 41);
    let v2 = w.snapshot().await;
    w.rollout(2, &["eu"]).await;
    let rows = w.wait_ready(2).await;
    let m2 = w.manifest(2).await;
    assert_eq!(rows[0].relayed_bytes, v2.new_bytes, "v2 moved more than its new chunks");
    for i in 1..=3 {
        assert_store_holds(&w.root.join(format!("spoke-eu-{i}/store")), &m2, &w.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_killed_mid_rollout_costs_only_what_died_with_it() {
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 40 << 20, 0);
    w.snapshot().await;
    // A slow link, so that the rollout is well under way when the owner dies.
    let configs = w.region_of("eu", 8 * MIB, 3).await;
    let mut spokes = Children::default();
    for (i, config) in configs.iter().enumerate() {
        let mut text = std::fs::read_to_string(config).unwrap();
        text.push_str("[replication]\nstreams = 2\nchunks_per_request = 2\n");
        std::fs::write(config, text).unwrap();
        let log = w.root.join(format!("spoke-eu-{}.log", i + 1));
        spokes.0.push(spawn_logged(
            &bin("aqueduct-spoke"),
            &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
            &log,
        ));
    }
    w.wait_members("eu", 3).await;
    w.rollout(1, &["eu"]).await;
    let m1 = w.manifest(1).await;
    let total = m1.total_bytes();

    // Once eu-2 holds a third of the version: freeze everyone, note who holds what, kill eu-2.
    for _ in 0..600 {
        let rows = w.status(1).await;
        if rows[0].nodes.iter().any(|n| n.node == "eu-2" && n.cached_bytes >= total / 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &spokes.0 {
        signal(s, "STOP");
    }
    let victim = stored_chunks(&w.root.join("spoke-eu-2/store"));
    let live: HashSet<_> =
        [1, 3].iter().flat_map(|i| stored_chunks(&w.root.join(format!("spoke-eu-{i}/store"))).into_keys()).collect();
    signal(&spokes.0[1], "KILL");
    signal(&spokes.0[0], "CONT");
    signal(&spokes.0[2], "CONT");
    let lost: u64 = victim.iter().filter(|(d, _)| !live.contains(d)).map(|(_, len)| len).sum();
    assert!(victim.len() > 3, "eu-2 held too little to test anything");

    let rows = w.wait_ready(1).await;
    let row = &rows[0];
    for i in [1, 3] {
        assert_store_holds(&w.root.join(format!("spoke-eu-{i}/store")), &m1, &w.data);
    }
    assert_eq!(row.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), ["eu-1", "eu-3"]);
    // What crossed the link again is at most what only eu-2 held, plus what was on its way to
    // eu-2 when it died (a few chunks of its streams); never what a live peer held.
    let in_flight = 8 * MIB;
    println!(
        "refetched {} bytes; eu-2 alone held {lost} bytes; relayed {} of {total}",
        row.refetched_bytes, row.relayed_bytes
    );
    assert!(
        row.refetched_bytes <= lost + in_flight,
        "{} bytes crossed the link again, but only {lost} bytes died with eu-2",
        row.refetched_bytes
    );
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    assert_eq!(row.relayed_bytes, distinct + row.refetched_bytes);
}

/// A peer that claims to hold everything and sends garbage.
struct Liar;

#[tonic::async_trait]
impl aqueduct_proto::spoke::v1::peer_server::Peer for Liar {
    async fn has(
        &self,
        request: tonic::Request<local::HasRequest>,
    ) -> Result<tonic::Response<local::HasResponse>, tonic::Status> {
        let held = vec![true; request.into_inner().digests.len()];
        Ok(tonic::Response::new(local::HasResponse { held }))
    }

    type FetchChunksStream = futures::stream::BoxStream<'static, Result<pb::ChunkData, tonic::Status>>;

    async fn fetch_chunks(
        &self,
        request: tonic::Request<local::PeerFetchRequest>,
    ) -> Result<tonic::Response<Self::FetchChunksStream>, tonic::Status> {
        let chunks: Vec<_> = request
            .into_inner()
            .digests
            .into_iter()
            .map(|digest| Ok(pb::ChunkData { digest, data: b"not the chunk you asked for".to_vec() }))
            .collect();
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// Serves [`Liar`] on 127.0.0.1 with the certificate in `dir` (a spoke config's directory).
async fn serve_liar(dir: &Path) -> std::net::SocketAddr {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("cert.pem"), read("key.pem")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(aqueduct_proto::spoke::v1::peer_server::PeerServer::new(Liar))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

/// A client over mutual TLS with the credentials in `dir`, checking the server's name.
async fn channel(url: &str, dir: &Path, server_name: &str) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("cert.pem"), read("key.pem")))
        .domain_name(server_name);
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_that_lie_or_belong_to_another_region_are_caught_and_cost_no_link_bytes() {
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 8 << 20, 0);
    w.snapshot().await;
    let eu = w.region_of("eu", 1 << 30, 1).await;
    w.region_of("us", 1 << 30, 1).await;
    // Nodes' credentials issued from the hub's CA, each in a directory of its own.
    let creds = |region: &str, node: &str| {
        let dir = w.root.join(format!("creds-{node}"));
        let bundle = w.hub.node_bundle(region, node);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in [("ca.pem", &bundle.ca_pem), ("cert.pem", &bundle.cert_pem), ("key.pem", &bundle.key_pem)] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    };
    let us_dir = creds("us", "us-2");

    // Two members of eu that are not what they say: one sends wrong bytes for every chunk,
    // one presents the certificate of region us. Both join eu through the hub with eu's
    // credentials, as a stolen or misconfigured node would.
    let liar = serve_liar(&creds("eu", "eu-liar")).await;
    let alien = serve_liar(&us_dir).await;
    let mut watches = Vec::new();
    for (node, addr) in [("eu-liar", liar), ("eu-alien", alien)] {
        let hub = channel(&w.hub_url, &creds("eu", node), "localhost").await.unwrap();
        let watch = pb::WatchRequest { node: node.into(), peer_address: addr.to_string(), ..Default::default() };
        watches.push(SpokeClient::new(hub).watch(watch).await.unwrap().into_inner());
    }
    let log = w.root.join("spoke-eu-1.log");
    let _spoke = Children(vec![spawn_logged(
        &bin("aqueduct-spoke"),
        &["run".as_ref(), "--config".as_ref(), eu[0].as_os_str()],
        &log,
    )]);
    w.wait_members("eu", 3).await;
    w.rollout(1, &["eu"]).await;

    // eu-1 gets every chunk right: the liar's bytes fail verification, the alien's certificate
    // fails the TLS name check, and eu-1 fetches those chunks over the link instead.
    let m1 = w.manifest(1).await;
    let mut ready = false;
    for _ in 0..600 {
        let rows = w.status(1).await;
        if rows[0].nodes.iter().any(|n| n.node == "eu-1" && n.phase() == pb::Phase::Ready) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(ready, "eu-1 never became Ready:\n{text}");
    assert_store_holds(&w.root.join("spoke-eu-1/store"), &m1, &w.data);
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    assert_eq!(w.status(1).await[0].relayed_bytes, distinct, "a lying peer made the link carry a chunk twice");
    for line in text.lines().filter(|l| l.contains("eu-liar") || l.contains("eu-alien")).take(4) {
        println!("{line}");
    }
    // The liar is reported by name, with what it did.
    assert!(text.lines().any(|l| l.contains("eu-liar") && l.contains("wrong bytes")), "liar not reported:\n{text}");
    assert!(text.lines().any(|l| l.contains("eu-alien") && l.contains("peer failed")), "alien not reported:\n{text}");

    // The other way round: a spoke of us that calls eu-1's peer API is refused, even when it
    // accepts eu-1's certificate.
    let regions = w.admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    let eu1 = regions.iter().find(|r| r.name == "eu").unwrap().members.iter().find(|m| m.node == "eu-1").unwrap();
    let url = format!("https://{}", eu1.peer_address);
    let err = channel(&url, &us_dir, "us.region.aqueduct").await.unwrap_err();
    assert!(err.contains("NotValidForName") || err.contains("certificate"), "{err}");
    let mut as_us = PeerClient::new(channel(&url, &us_dir, "eu.region.aqueduct").await.unwrap());
    let status = as_us.has(local::HasRequest { digests: vec![vec![0; 32]] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("serves the peers of region eu; the caller is region us"),
        "{}",
        status.message()
    );
    drop(watches);
}

/// Appends `section` to a spoke's config.
fn configure(config: &Path, section: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(section);
    std::fs::write(config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_quota_holds_its_watermarks_and_never_evicts_the_versions_in_use() {
    let mut w = world(SourceKind::S3).await;
    let configs = w.region_of("eu", 1 << 30, 1).await;
    // 40 MiB with watermarks at 90% and 60%, for versions of 10 MiB that share nothing, and a
    // dataset that keeps only its newest version: what the hub retains while a version rolls
    // out (the one served, the one before it for a rollback, and the one rolling out) fits, a
    // fourth does not.
    configure(&configs[0], "[cache]\ndisk = \"40MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.6\n");
    let keep = pb::UpdateDatasetRequest { name: "llama".into(), keep_versions: Some(1), ..Default::default() };
    w.admin.update_dataset(keep).await.unwrap();
    w.start_spoke(&configs[0]);
    let store = w.root.join("spoke-eu-1/store");
    let mut manifests = Vec::new();
    for (version, seed) in [(1, 100), (2, 200), (3, 300), (4, 400)] {
        std::fs::write(w.data.join("model.safetensors"), noise(10 << 20, seed)).unwrap();
        w.snapshot().await;
        w.rollout(version, &["eu"]).await;
        w.wait_ready(version).await;
        manifests.push(w.manifest(version).await);
        let used = stored_bytes(&store);
        assert!(used <= 36 * MIB, "after v{version}, {used} bytes on disk: above the high watermark");
    }
    // v4 (rolling out, now active), v3 (active while v4 rolled out) and v2 (kept for a
    // rollback meanwhile) were pinned: whole.
    assert_store_has(&store, &manifests[1]);
    assert_store_has(&store, &manifests[2]);
    assert_store_holds(&store, &manifests[3], &w.data);
    // v1, no longer retained, gave way.
    let held = stored_chunks(&store);
    assert!(manifests[0].distinct_chunks().iter().any(|(d, _)| !held.contains_key(d)), "v1 was not evicted");

    // Reading all of v1 again brings it back through the cache; what gives way is what is no
    // longer retained (v2, now that v4 is active and v3 is kept for a rollback, and v1's own
    // older chunks), never v4.
    let mut local = local_client(&socket_of(&configs[0])).await;
    std::fs::write(w.data.join("model.safetensors"), noise(10 << 20, 100)).unwrap();
    assert_reads(&mut local, &manifests[0], &w.data).await;
    assert!(stored_bytes(&store) <= 36 * MIB);
    assert_store_has(&store, &manifests[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_only_mode_leaves_no_dataset_byte_on_disk() {
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 8 << 20, 0);
    w.snapshot().await;
    let configs = w.region_of("eu", 1 << 30, 1).await;
    configure(&configs[0], "[cache]\nmemory_only = true\nmemory = \"64MiB\"\n");
    w.start_spoke(&configs[0]);
    w.rollout(1, &["eu"]).await;
    w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    let mut local = local_client(&socket_of(&configs[0])).await;
    assert_reads(&mut local, &m1, &w.data).await;

    // Nothing under the spoke's directory holds any piece of the model: look for 64-byte
    // samples from all over it in every file there.
    let model = std::fs::read(w.data.join("model.safetensors")).unwrap();
    let samples: Vec<&[u8]> = (0..64).map(|i| &model[i * (model.len() - 64) / 63..][..64]).collect();
    let mut files = 0;
    let mut dirs = vec![configs[0].parent().unwrap().to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                for s in &samples {
                    assert!(!bytes.windows(64).any(|w| w == *s), "{} holds model bytes", path.display());
                }
            }
        }
    }
    assert!(files > 0);
    assert!(!configs[0].parent().unwrap().join("store/chunks").exists(), "a chunk directory was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_region_mode_the_region_holds_one_copy_and_every_spoke_reads_all_of_it() {
    let mut w = world(SourceKind::S3).await;
    write_model(&w.data, 16 << 20, 0);
    let v1 = w.snapshot().await;
    let configs = w.region_of("eu", 1 << 30, 3).await;
    let stops: Vec<_> = configs.iter().map(|c| w.start_spoke(c)).collect();
    w.wait_members("eu", 3).await;
    w.rollout_as(1, &["eu"], "region").await;
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    let distinct: u64 = m1.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum();
    assert_eq!(
        (rows[0].mode(), rows[0].cached_bytes),
        (pb::ReplicationMode::Region, v1.bytes),
        "the shares do not add up"
    );
    assert_eq!(rows[0].relayed_bytes, distinct);
    // One copy in the region: every chunk on exactly one spoke, each spoke a fair share.
    let stores: Vec<_> = (1..=3).map(|i| stored_chunks(&w.root.join(format!("spoke-eu-{i}/store")))).collect();
    for (d, _) in m1.distinct_chunks() {
        assert_eq!(stores.iter().filter(|s| s.contains_key(&d)).count(), 1, "chunk {d} is not held exactly once");
    }
    for (i, s) in stores.iter().enumerate() {
        assert!(s.len() * 6 >= m1.distinct_chunks().len(), "eu-{} holds only {} chunks", i + 1, s.len());
    }
    // Every spoke reads the whole version, from its peers: not one more byte over the link.
    for config in &configs {
        let mut local = local_client(&socket_of(config)).await;
        assert_reads(&mut local, &m1, &w.data).await;
    }
    assert_eq!(w.status(1).await[0].relayed_bytes, distinct, "reads went over the link");

    // eu-2 leaves: the others take up its share from the copies they read, not the link.
    stops[1].cancel();
    w.wait_members("eu", 2).await;
    for config in [&configs[0], &configs[2]] {
        let mut local = local_client(&socket_of(config)).await;
        assert_reads(&mut local, &m1, &w.data).await;
    }
    let row = &w.wait_ready(1).await[0];
    assert_eq!((row.relayed_bytes, row.refetched_bytes), (distinct, 0));
}
