//! Hostile clients against the real `aqueduct-hub` binary on 127.0.0.1, within the `[limits]`
//! of its config: thousands of TCP connections that never begin TLS (and more opened all the
//! while), and a flood of calls with one region's certificate over a few connections
//! (FetchChunks streams it never reads, Watch streams, ReportProgress in loops). Meanwhile an
//! admin call succeeds, another region's spoke fetches a real chunk and a real spoke process
//! replicates a version to Ready; every idle connection is closed (by its handshake timeout,
//! or pushed out by newer ones); and the hub's RSS (VmRSS) stays under the bound its limits
//! imply, printed with the figures. A second test shows a region whose FetchChunks streams are
//! all taken at the hub wait its turn without failing its version.
//!
//! No timed assertion: outcomes are polled with deadlines many times what they need.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aqueduct_e2e::{Children, SourceKind, bin, free_port, spawn_logged, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::{Digest, Manifest};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const MIB: u64 = 1 << 20;

/// The hub's `[limits]` in this test: small, so that a flood meets every one of them.
const MAX_CONNECTIONS: u64 = 64;
const MAX_HANDSHAKES: u64 = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
const STREAMS_PER_CONNECTION: u64 = 32;
const FETCH_STREAMS_PER_REGION: u64 = 8;
const RELAY_MEMORY_PER_REGION: u64 = 16 * MIB;
/// Connections the flood comes over, each carrying as many calls as it may: half of them
/// FetchChunks (128 streams: without the region's limits, some 3 MiB each at the hub).
const FLOOD_CONNECTIONS: usize = 8;

fn limits_section() -> String {
    format!(
        "\n[limits]\nmax_connections = {MAX_CONNECTIONS}\nmax_handshakes = {MAX_HANDSHAKES}\n\
         handshake_timeout = \"{}s\"\nmax_streams_per_connection = {STREAMS_PER_CONNECTION}\n\
         fetch_streams_per_region = {FETCH_STREAMS_PER_REGION}\nrelay_memory_per_region = \"{}MiB\"\n\
         fetch_wait = \"2s\"\n",
        HANDSHAKE_TIMEOUT.as_secs(),
        RELAY_MEMORY_PER_REGION / MIB
    )
}

/// What the hub may hold, by its limits, above what it held before the flood: per region
/// relaying (the hostile one and the good spoke's), its relay memory and what each of its
/// streams buffers besides (a chunk in the encoder, the connection's send buffer: 2.5 MiB);
/// per connection and pending handshake, their TLS and HTTP/2 state (256 and 64 KiB, both
/// generous); and 64 MiB for everything else (tasks, allocator slack).
fn rss_bound(baseline: u64) -> u64 {
    let per_region = RELAY_MEMORY_PER_REGION + FETCH_STREAMS_PER_REGION * 5 * MIB / 2;
    baseline + 2 * per_region + MAX_CONNECTIONS * 256 * 1024 + MAX_HANDSHAKES * 64 * 1024 + 64 * MIB
}

/// The resident memory of a process, from /proc/PID/status (VmRSS).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn channel(url: &str, ca: &str, cert: &str, key: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(cert, key));
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fetch_request(digests: &[Digest]) -> pb::FetchChunksRequest {
    pb::FetchChunksRequest {
        dataset: "llama".into(),
        version: 1,
        digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        foreground: false,
    }
}

/// What the flood did.
#[derive(Default)]
struct Flood {
    fetch_streams: AtomicU64,
    fetch_refused: AtomicU64,
    watches: AtomicU64,
    reports: AtomicU64,
    other_errors: AtomicU64,
}

/// One connection's worth of flood with `region`'s certificate: FetchChunks streams that are
/// never read (asked again when refused), Watch streams never read, and ReportProgress in loops,
/// as many calls as the connection may carry, until `stop`.
fn flood(client: SpokeClient<Channel>, c: usize, digests: Vec<Digest>, stats: Arc<Flood>, stop: CancellationToken) {
    let per_kind = STREAMS_PER_CONNECTION as usize / 4;
    for _ in 0..2 * per_kind {
        let (mut client, digests, stats, stop) = (client.clone(), digests.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                match client.fetch_chunks(fetch_request(&digests)).await {
                    Ok(held) => {
                        // A turn freed by the flood's own end is not the flood's.
                        if !stop.is_cancelled() {
                            stats.fetch_streams.fetch_add(1, Ordering::Relaxed);
                        }
                        stop.cancelled().await;
                        drop(held);
                    }
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        stats.fetch_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.other_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    for i in 0..per_kind {
        let (mut client, stats, stop) = (client.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            let node = format!("flood-{c}-{i}");
            match client.watch(pb::WatchRequest { node, peer_address: String::new(), ..Default::default() }).await {
                Ok(held) => {
                    stats.watches.fetch_add(1, Ordering::Relaxed);
                    stop.cancelled().await;
                    drop(held);
                }
                Err(_) => {
                    stats.other_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    for i in 0..per_kind {
        let (mut client, stats, stop) = (client.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let report = pb::ProgressReport {
                    dataset: "llama".into(),
                    version: 1,
                    cached_bytes: i as u64,
                    phase: pb::Phase::Transferring.into(),
                    node: format!("flood-{c}-{i}"),
                    ..Default::default()
                };
                match client.report_progress(report).await {
                    Ok(_) => stats.reports.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.other_errors.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
}

/// Opens `count` TCP connections to `addr` that never begin TLS (in batches, so that the
/// listen backlog keeps up).
async fn open_idle(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(count);
    while idle.len() < count {
        let batch = (count - idle.len()).min(100);
        let opened = futures::future::join_all((0..batch).map(|_| TcpStream::connect(addr))).await;
        idle.extend(opened.into_iter().filter_map(Result::ok));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    idle
}

/// Whether the hub closed `stream` (EOF or a reset) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cannot_exhaust_the_hub() {
    // Thousands of connections need descriptors, here and in the hub (which raises its own).
    let files = aqueduct_core::edge::raise_open_file_limit().unwrap();
    let idle_target = 3000usize.min((files.now as usize).saturating_sub(512) / 2);
    println!("open-file limit {} (was {}): {idle_target} idle connections", files.now, files.was);
    assert!(idle_target >= 1000, "this machine allows too few open files ({}) for the test", files.now);

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let models = root.join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("model.safetensors"), aqueduct_testkit::noise(48 << 20, 3)).unwrap();
    std::fs::write(models.join("config.json"), b"{\"layers\": 32}").unwrap();

    // The real hub binary, with the limits above.
    let listen = free_port();
    let data = root.join("hub");
    let config = aqueduct_e2e::hub_binary::init(&data, listen, &limits_section());
    let log = root.join("hub.log");
    let mut children = Children::default();
    children.0.push(spawn_logged(
        &bin("aqueduct-hub"),
        &["serve".as_ref(), "--config".as_ref(), config.as_os_str()],
        &log,
    ));
    let pid = children.0[0].id();
    let url = format!("https://127.0.0.1:{}", listen.port());
    let read = |f: &str| std::fs::read_to_string(data.join("admin").join(f)).unwrap();
    let (ca, admin_cert, admin_key) = (read("ca.pem"), read("admin.pem"), read("admin.key"));
    let mut admin = None;
    eventually("the hub answers", Duration::from_secs(60), async || {
        admin = channel(&url, &ca, &admin_cert, &admin_key).await.ok().map(AdminClient::new);
        admin.is_some()
    })
    .await;
    let mut admin = admin.unwrap();

    // A dataset of 48 MiB, rolled out to a good region and a hostile one.
    aqueduct_e2e::hub_binary::local_dataset(&mut admin, "src", &root.join("models"), "llama").await;
    let mut bundles = std::collections::HashMap::new();
    for name in ["good", "hostile"] {
        let region = pb::Region { name: name.into(), rate_bytes_per_sec: 1 << 30, ..Default::default() };
        admin.add_region(pb::AddRegionRequest { region: Some(region) }).await.unwrap();
        // The hub's CA issues a node's certificate, as enrolment would.
        let ca = aqueduct_hub::pki::Authority::load_issuer(
            &data.join("pki/ca.pem"),
            &data.join("pki/issuer.pem"),
            &data.join("pki/issuer.key"),
        )
        .unwrap();
        let issued = ca.issue_node(name, &format!("{name}-1"), Duration::from_secs(3600)).unwrap();
        let signer = aqueduct_hub::signing::Signer::open(&data.join("signing/hub.key")).unwrap();
        let bundle = pb::CredentialsBundle {
            ca_pem: ca.ca_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            signing_keys: signer.published().iter().map(|k| k.to_string()).collect(),
        };
        bundles.insert(name, bundle);
    }
    let rollout = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: vec!["good".into(), "hostile".into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(rollout).await.unwrap();
    let wire = admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap();
    let manifest = Manifest::try_from(wire.into_inner()).unwrap();
    let digests: Vec<Digest> = manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect();

    let baseline = rss(pid);
    let bound = rss_bound(baseline);
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = CancellationToken::new();
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // Thousands of idle connections; more keep coming while the rest happens.
    let started = Instant::now();
    let idle = Arc::new(Mutex::new(open_idle(listen, idle_target * 2 / 3).await));
    println!("{} idle connections opened in {:?}", idle.lock().await.len(), started.elapsed());
    let trickle = tokio::spawn({
        let (idle, stop, more) = (idle.clone(), stop.clone(), idle_target - idle_target * 2 / 3);
        async move {
            while !stop.is_cancelled() && idle.lock().await.len() < idle_target {
                let batch = open_idle(listen, 50.min(more)).await;
                idle.lock().await.extend(batch);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // The flood, with the hostile region's certificate over a few connections.
    let hostile = &bundles["hostile"];
    let stats = Arc::new(Flood::default());
    for c in 0..FLOOD_CONNECTIONS {
        let channel = channel(&url, &hostile.ca_pem, &hostile.cert_pem, &hostile.key_pem).await.unwrap();
        flood(SpokeClient::new(channel), c, digests.clone(), stats.clone(), stop.clone());
    }
    eventually(
        "the flood holds every FetchChunks stream of its region and is refused more",
        Duration::from_secs(120),
        async || {
            stats.fetch_streams.load(Ordering::Relaxed) >= FETCH_STREAMS_PER_REGION
                && stats.fetch_refused.load(Ordering::Relaxed) >= 1
        },
    )
    .await;

    // Meanwhile an admin call succeeds, on a connection of its own.
    let mut attempts = 0;
    let mut datasets = Vec::new();
    eventually("an admin call succeeds", Duration::from_secs(120), async || {
        attempts += 1;
        let Ok(channel) = channel(&url, &ca, &admin_cert, &admin_key).await else { return false };
        match AdminClient::new(channel).list_datasets(pb::ListDatasetsRequest {}).await {
            Ok(list) => {
                datasets = list.into_inner().datasets;
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["llama"]);
    println!("admin ListDatasets answered (attempt {attempts})");

    // ... the good region's spoke fetches a real chunk, verified ...
    let good = &bundles["good"];
    let mut fetched = None;
    eventually("a good spoke's fetch succeeds", Duration::from_secs(120), async || {
        let Ok(channel) = channel(&url, &good.ca_pem, &good.cert_pem, &good.key_pem).await else { return false };
        let Ok(stream) = SpokeClient::new(channel).fetch_chunks(fetch_request(&digests[..1])).await else {
            return false;
        };
        fetched = stream.into_inner().message().await.ok().flatten();
        fetched.is_some()
    })
    .await;
    let chunk = fetched.unwrap();
    assert_eq!((chunk.digest.as_slice(), Digest::of(&chunk.data)), (digests[0].0.as_slice(), digests[0]));

    // ... and a real spoke replicates the whole version to Ready.
    let spoke_started = Instant::now();
    let spoke_config = aqueduct_spoke::write_node_config(&root.join("spoke-good"), &url, "good-1", good).unwrap();
    children.0.push(spawn_logged(
        &bin("aqueduct-spoke"),
        &["run".as_ref(), "--config".as_ref(), spoke_config.as_os_str()],
        &root.join("spoke-good.log"),
    ));
    eventually("the good region becomes Ready", Duration::from_secs(300), async || {
        let Ok(status) = admin.status(pb::StatusRequest { dataset: "llama".into() }).await else { return false };
        let rows = status.into_inner().rows;
        let good = rows.iter().find(|r| r.region == "good");
        assert!(good.is_none_or(|r| r.phase() != pb::Phase::Failed), "{good:?}");
        good.is_some_and(|r| r.phase() == pb::Phase::Ready)
    })
    .await;
    println!(
        "the good region's spoke replicated {} MiB to Ready in {:?} during the flood",
        manifest.total_bytes() >> 20,
        spoke_started.elapsed()
    );

    // Every idle connection is closed: pushed out by newer ones, or at its handshake timeout.
    stop.cancel();
    trickle.await.unwrap();
    let mut idle = std::mem::take(&mut *idle.lock().await);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT * 20;
    let mut open = 0;
    for stream in &mut idle {
        if !closed(stream, deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))).await {
            open += 1;
        }
    }
    println!("{} idle connections, {open} still open {:?} after the flood", idle.len(), HANDSHAKE_TIMEOUT * 20);
    assert_eq!(open, 0, "the hub kept idle connections past their handshake timeout");

    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed).max(rss(pid));
    let log_text = std::fs::read_to_string(&log).unwrap();
    println!(
        "flood: {} FetchChunks streams held (region cap {FETCH_STREAMS_PER_REGION}), {} refused with RESOURCE_EXHAUSTED, {} watches, {} progress reports, {} other errors",
        stats.fetch_streams.load(Ordering::Relaxed),
        stats.fetch_refused.load(Ordering::Relaxed),
        stats.watches.load(Ordering::Relaxed),
        stats.reports.load(Ordering::Relaxed),
        stats.other_errors.load(Ordering::Relaxed),
    );
    println!(
        "hub RSS: {} MiB before, {} MiB at most during the flood; bound {} MiB (the limits' relay memory and streams for 2 regions, connections, handshakes, 64 MiB of slack)",
        baseline >> 20,
        peak >> 20,
        bound >> 20
    );
    assert!(peak < bound, "the hub's RSS reached {} MiB, above the bound of {} MiB", peak >> 20, bound >> 20);
    assert!(log_text.contains("limits.max_handshakes"), "the hub did not say it dropped pending handshakes");
    // The flood's streams are never read, so none ends: it held at most its region's cap.
    assert!(stats.fetch_streams.load(Ordering::Relaxed) <= FETCH_STREAMS_PER_REGION);
    drop(children);
}

/// A region whose FetchChunks streams are all taken at the hub (by a client that reads none of
/// them) waits its turn: its spoke replicates the version to Ready once the streams end, and
/// nothing fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_every_stream_taken_waits_its_turn_and_completes() {
    let mut w = world(SourceKind::Dir).await;
    aqueduct_e2e::write_model(&w.data, 8);
    w.set_hub_limits(aqueduct_hub::config::LimitsConfig {
        fetch_streams_per_region: 2,
        fetch_wait: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let v1 = w.snapshot().await;
    let config = w.region("eu", 1 << 30).await;
    w.rollout(v1.version, &["eu"]).await;
    let manifest = w.manifest(v1.version).await;
    let digests: Vec<Digest> = manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect();

    // Someone with the certificate of a node of eu takes both of eu's streams and reads neither.
    let hog = w.hub.node_bundle("eu", "eu-hog");
    let hog = channel(&w.hub_url, &hog.ca_pem, &hog.cert_pem, &hog.key_pem).await.unwrap();
    let mut hog = SpokeClient::new(hog);
    let held = vec![
        hog.fetch_chunks(fetch_request(&digests)).await.unwrap(),
        hog.fetch_chunks(fetch_request(&digests)).await.unwrap(),
    ];
    let status = hog.fetch_chunks(fetch_request(&digests)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // eu's spoke starts: its fetches are refused (busy) and asked again, the version stays
    // Transferring or Pending, never Failed.
    let _spoke = w.start_spoke(&config);
    for _ in 0..30 {
        let rows = w.status(v1.version).await;
        assert!(rows.iter().all(|r| r.phase() != pb::Phase::Failed && r.phase() != pb::Phase::Ready), "{rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    let rows = w.wait_ready(v1.version).await;
    assert_eq!(rows[0].region, "eu");
    aqueduct_e2e::assert_store_holds(&config.parent().unwrap().join("store"), &manifest, &w.data);

    // The spoke's local API bounds its lists of digests too, and says the bound.
    let mut local = aqueduct_e2e::local_client(&aqueduct_e2e::socket_of(&config)).await;
    let many = (0..=aqueduct_proto::MAX_DIGESTS_PER_REQUEST).map(|_| digests[0].0.to_vec()).collect();
    let request = aqueduct_proto::spoke::v1::ReadChunksRequest { dataset: "llama".into(), version: 1, digests: many };
    let status = local.read_chunks(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 256"), "{status:?}");
}
