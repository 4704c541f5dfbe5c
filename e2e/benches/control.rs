//! The control plane at fleet size (issue 20): how the hub bears many watching spokes.
//!
//! The real `aqueduct-hub` binary (release build, its own process, so that its memory and CPU
//! are its own) serves a file:// source of one small dataset and AQ_BENCH_REGIONS regions
//! (default 10). For each count of AQ_BENCH_SPOKES (default `100,300,1000`), a fresh hub and
//! that many simulated spokes in this process, spread over the regions: each its own node
//! certificate (issued from the hub's CA, as enrolment would), its own mutual-TLS connection
//! and one `Watch` stream, the real protocol; nothing else of a spoke runs (no store, no
//! fetch). It prints, per count:
//! - hub RSS before any spoke, with every watch open, and per watch; how long joining took
//!   and how many assignment messages the joins made the hub push (membership changes);
//! - publish-to-all-notified: from the `Rollout` call to each spoke's watch receiving the new
//!   version, p50, p99 and the last;
//! - the fold: every spoke reports the version Ready (`ReportProgress`, every-node mode); time
//!   until every report is acknowledged and until `Status` shows every region Ready;
//! - the hub's CPU seconds over joining, the publish and the fold;
//! - beside the simulated spokes, AQ_BENCH_REAL_SPOKES (default 3) real `aqueduct-spoke`
//!   processes, each alone in a region of its own (a simulated peer serves no chunk), enrolled
//!   with a token as a new node is: they join while the others watch and replicate the version
//!   after the publish; printed is when each held it whole (the fold's "all Ready" waits for
//!   their regions too).
//!
//! Printed, not asserted. Run: `cargo build --release -p aqueduct-hub -p aqueduct-spoke &&
//! cargo bench -p aqueduct-e2e --bench control` (AQ_BENCH_SPOKES=1000 AQ_BENCH_REGIONS=1 puts
//! every spoke in one region).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aqueduct_e2e::{Children, bin, free_port, hub_binary, spawn_logged};
use aqueduct_hub::config::HubConfig;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const DATASET: &str = "model";

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name} is a list of counts, e.g. {default}")))
        .collect()
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// CPU seconds (user + system) process `pid` used so far.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the state field here.
    (ticks(11) + ticks(12)) / 100.0
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A hub process with its data directory and admin client.
struct Hub {
    child: Children,
    pid: u32,
    config: HubConfig,
    data: PathBuf,
    url: String,
}

impl Hub {
    async fn start(dir: &Path) -> Self {
        let data = dir.join("hub");
        let listen = free_port();
        let config_path = hub_binary::init(&data, listen, "");
        let config = HubConfig::load(&config_path).expect("the hub.toml init wrote");
        let child = spawn_logged(
            &bin("aqueduct-hub"),
            &["serve".as_ref(), "--config".as_ref(), config_path.as_os_str()],
            &dir.join("hub.log"),
        );
        let pid = child.id();
        Self { child: Children(vec![child]), pid, config, data, url: format!("https://127.0.0.1:{}", listen.port()) }
    }

    async fn admin(&self) -> AdminClient<Channel> {
        let read = |f: &str| std::fs::read_to_string(self.data.join("admin").join(f)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("admin.pem"), read("admin.key")));
        let endpoint = Endpoint::from_shared(self.url.clone()).unwrap().tls_config(tls).unwrap();
        let started = Instant::now();
        loop {
            if let Ok(channel) = endpoint.connect().await {
                return AdminClient::new(channel);
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the hub never answered; see hub.log");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One simulated spoke: its client, and what its watch saw.
struct Spoke {
    region: String,
    node: String,
    client: SpokeClient<Channel>,
    session: String,
}

/// What each watch reports to the bench: (spoke index, versions of DATASET it was assigned).
type Seen = mpsc::UnboundedSender<(usize, Vec<u64>)>;

/// Opens `spoke`'s watch and forwards what each message assigns; returns its session.
async fn watch(index: usize, spoke: &mut SpokeClient<Channel>, node: &str, seen: Seen) -> String {
    let request = pb::WatchRequest {
        node: node.into(),
        peer_address: format!("10.0.{}.{}:7443", index / 250, index % 250),
        member_deltas: true,
    };
    let mut stream = spoke.watch(request).await.unwrap_or_else(|e| panic!("watch of {node}: {e}")).into_inner();
    let first = stream.message().await.unwrap().expect("a first assignment");
    let session = first.session.clone();
    let versions = |a: &pb::Assignments| -> Vec<u64> {
        a.assignments.iter().filter(|x| x.dataset == DATASET).map(|x| x.version).collect()
    };
    let _ = seen.send((index, versions(&first)));
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if seen.send((index, versions(&message))).is_err() {
                        return;
                    }
                }
                // The watch ended: say so (an empty list of one version 0), so that a spoke
                // never notified is told apart from one whose watch the hub closed.
                Ok(None) | Err(_) => {
                    let _ = seen.send((index, vec![0]));
                    return;
                }
            }
        }
    });
    session
}

async fn run(count: usize, regions: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::start(tmp.path()).await;
    let mut admin = hub.admin().await;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join(DATASET)).unwrap();
    std::fs::write(src.join(DATASET).join("weights.bin"), aqueduct_testkit::noise(1 << 20, 7)).unwrap();
    let source = pb::Source { name: "src".into(), url: format!("file://{}", src.display()), ..Default::default() };
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    let dataset =
        pb::Dataset { name: DATASET.into(), source: "src".into(), prefix: DATASET.into(), ..Default::default() };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    let mut events = admin.snapshot(pb::SnapshotRequest { dataset: DATASET.into() }).await.unwrap().into_inner();
    let mut version = None;
    while let Some(event) = events.message().await.unwrap() {
        if let Some(pb::snapshot_event::Event::Done(done)) = event.event {
            version = Some(done);
        }
    }
    let version = version.expect("a version");
    let names: Vec<String> = (0..regions).map(|r| format!("region-{r}")).collect();
    let mut region_ca = String::new();
    for name in &names {
        let region = pb::Region { name: name.clone(), rate_bytes_per_sec: 100 << 20, ..Default::default() };
        region_ca = admin.add_region(pb::AddRegionRequest { region: Some(region) }).await.unwrap().into_inner().ca_pem;
    }
    let idle = rss(hub.pid);
    let cpu_start = cpu(hub.pid);

    // Certificates, as enrolment would issue them (not timed).
    let ca = aqueduct_hub::load_authority(&hub.config).expect("the hub's issuing CA");
    let ca_pem = ca.ca_pem().to_string();
    let mut spokes = Vec::with_capacity(count);
    for i in 0..count {
        let region = names[i % regions].clone();
        let node = format!("sim-{i}");
        let issued = ca.issue_node(&region, &node, Duration::from_secs(3600)).expect("a node certificate");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
        let endpoint = Endpoint::from_shared(hub.url.clone()).unwrap().tls_config(tls).unwrap();
        spokes.push((region, node, endpoint));
    }

    // Join: every spoke connects and opens its watch, 32 at a time.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let joined = Instant::now();
    let spokes: Vec<Spoke> = futures::stream::iter(spokes.into_iter().enumerate())
        .map(|(i, (region, node, endpoint))| {
            let seen = seen_tx.clone();
            async move {
                let channel = endpoint.connect().await.unwrap_or_else(|e| panic!("{node} connecting: {e}"));
                let mut client = SpokeClient::new(channel);
                let session = watch(i, &mut client, &node, seen).await;
                Spoke { region, node, client, session }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let join_took = joined.elapsed();
    // The real spokes join too (enrolled with a token each, as new nodes are).
    let real_count = env_list("AQ_BENCH_REAL_SPOKES", "3")[0];
    let signing = aqueduct_hub::signing::Signer::open(&hub.config.resolve(&hub.config.signing.key)).unwrap();
    let keys: Vec<String> = signing.published().iter().map(|k| k.to_string()).collect();
    let mut real = Vec::new();
    let real_regions: Vec<String> = (0..real_count).map(|r| format!("real-{r}")).collect();
    for (r, region) in real_regions.iter().enumerate() {
        let add = pb::Region { name: region.clone(), rate_bytes_per_sec: 100 << 20, ..Default::default() };
        admin.add_region(pb::AddRegionRequest { region: Some(add) }).await.unwrap();
        let request = pb::CreateEnrolTokenRequest { region: region.clone(), ttl_seconds: 3600, uses: 1 };
        let token = admin.create_enrol_token(request).await.unwrap().into_inner().token;
        let given = aqueduct_spoke::Enrolment { ca_pem: &region_ca, signing_keys: &keys, token: &token };
        let node = format!("real-{r}");
        let dir = tmp.path().join(&node);
        let config = aqueduct_spoke::write_enrol_config(&dir, &hub.url, &node, &given).unwrap();
        let args = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];
        real.push((region.clone(), node, spawn_logged(&bin("aqueduct-spoke"), &args, &dir.join("spoke.log"))));
    }
    let real_nodes: Vec<(String, String)> = real.iter().map(|(r, n, _)| (r.clone(), n.clone())).collect();
    let _real = Children(real.into_iter().map(|(_, _, child)| child).collect());
    let members_of = |info: &pb::InfoResponse| -> usize {
        real_nodes.iter().filter(|(_, n)| info.spokes.iter().any(|s| s.node == *n)).count()
    };
    let since = Instant::now();
    while members_of(&admin.info(pb::InfoRequest {}).await.unwrap().into_inner()) < real_nodes.len() {
        assert!(since.elapsed() < Duration::from_secs(60), "the real spokes never joined; see real-*/spoke.log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the membership pushes of the last joins settle, then drain what they brought.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut pushes_while_joining = 0usize;
    while seen_rx.try_recv().is_ok() {
        pushes_while_joining += 1;
    }
    let watching = rss(hub.pid);
    let cpu_joined = cpu(hub.pid);

    // Publish: roll the version out to every region; each watch must see it.
    let published = Instant::now();
    let rollout = pb::RolloutRequest {
        dataset: DATASET.into(),
        version: version.version,
        regions: names.iter().chain(&real_regions).cloned().collect(),
        mode: pb::ReplicationMode::EveryNode.into(),
        ..Default::default()
    };
    admin.rollout(rollout).await.unwrap();
    let mut notified: HashMap<usize, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while notified.len() < count && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), seen_rx.recv()).await {
            Ok(Some((i, versions))) if versions.contains(&version.version) => {
                notified.entry(i).or_insert_with(|| published.elapsed());
            }
            Ok(Some((i, versions))) if versions == [0] => eprintln!("the watch of spoke {i} ended"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if notified.len() < count {
        let missing: Vec<usize> = (0..count).filter(|i| !notified.contains_key(i)).collect();
        eprintln!("not notified within 5 s of the last notice: spokes {missing:?}");
    }
    let mut latencies: Vec<Duration> = notified.values().copied().collect();
    latencies.sort();
    let cpu_published = cpu(hub.pid);
    // The real spokes: when each held the version whole (as its region's row shows it).
    let mut real_ready: HashMap<String, Duration> = HashMap::new();
    while real_ready.len() < real_nodes.len() && published.elapsed() < Duration::from_secs(120) {
        let rows = admin.status(pb::StatusRequest { dataset: DATASET.into() }).await.unwrap().into_inner().rows;
        for (region, node) in &real_nodes {
            let row = rows.iter().find(|r| r.region == *region && r.version == version.version);
            let ready = row.is_some_and(|r| r.nodes.iter().any(|n| n.node == *node && n.phase() == pb::Phase::Ready));
            if ready {
                real_ready.entry(node.clone()).or_insert_with(|| published.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut real_ready: Vec<Duration> = real_ready.into_values().collect();
    real_ready.sort();

    // Fold: every spoke reports the version Ready.
    let folding = Instant::now();
    let total = version.bytes;
    let reports: Vec<_> = {
        spokes
            .iter()
            .map(|s| {
                let report = pb::ProgressReport {
                    dataset: DATASET.into(),
                    version: version.version,
                    cached_bytes: total,
                    phase: pb::Phase::Ready.into(),
                    node: s.node.clone(),
                    mode: pb::ReplicationMode::EveryNode.into(),
                    session: s.session.clone(),
                    ..Default::default()
                };
                (s.client.clone(), report, s.region.clone())
            })
            .collect()
    };
    let acked = futures::stream::iter(reports)
        .map(|(mut client, report, region)| async move {
            client.report_progress(report).await.unwrap_or_else(|e| panic!("a report from {region}: {e}"));
        })
        .buffer_unordered(64)
        .count()
        .await;
    let acks_took = folding.elapsed();
    let mut all_ready = None;
    while folding.elapsed() < Duration::from_secs(120) {
        let rows = admin.status(pb::StatusRequest { dataset: DATASET.into() }).await.unwrap().into_inner().rows;
        if rows.len() == regions + real_count && rows.iter().all(|r| r.phase() == pb::Phase::Ready) {
            all_ready = Some(folding.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_folded = cpu(hub.pid);
    let folded = rss(hub.pid);

    println!(
        "{count:>6} {regions:>7} {:>9} {:>11} {:>10} {:>9.2} {pushes_while_joining:>11} {:>9} {:>9} {:>9} {:>6}/{count} {:>9} {:>9} {:>9.2} {:>8.2} {:>7.2} {:>6.2} {:>4}/{} {}",
        mib(idle),
        mib(watching),
        format!("{:.0}", watching.saturating_sub(idle) as f64 / count as f64 / 1024.0),
        join_took.as_secs_f64(),
        format!("{:.0?}", percentile(&latencies, 0.50)),
        format!("{:.0?}", percentile(&latencies, 0.99)),
        format!("{:.0?}", latencies.last().copied().unwrap_or_default()),
        notified.len(),
        format!("{:.0?}", acks_took),
        all_ready.map_or("never".into(), |d| format!("{d:.0?}")),
        cpu_joined - cpu_start,
        cpu_published - cpu_joined,
        cpu_folded - cpu_published,
        folded as f64 / f64::from(1 << 20),
        real_ready.len(),
        real_nodes.len(),
        real_ready.iter().map(|d| format!("{d:.0?}")).collect::<Vec<_>>().join(","),
    );
    assert_eq!(acked, count);
    drop(hub.child);
}

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AQUEDUCT_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let counts = env_list("AQ_BENCH_SPOKES", "100,300,1000");
    let regions = env_list("AQ_BENCH_REGIONS", "10")[0].max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("control plane: simulated spokes (one TLS connection and one watch each) against the hub binary");
    println!(
        "{:>6} {:>7} {:>9} {:>11} {:>10} {:>9} {:>11} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6} real Ready (from the publish)",
        "spokes",
        "regions",
        "rss idle",
        "rss watched",
        "KiB/watch",
        "join s",
        "join pushes",
        "notify50",
        "notify99",
        "last",
        "notified",
        "acks",
        "all Ready",
        "cpu join",
        "cpu pub",
        "cpu fold",
        "rss end",
    );
    for count in counts {
        runtime.block_on(run(count, regions.min(count)));
    }
}
