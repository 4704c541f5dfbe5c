//! Two hubs on one PostgreSQL database, and the loss of one mid-rollout (issue 20), the way it
//! runs for real: two `aqueduct-hub` processes in the data centre (this test's network
//! namespace) on one database of a real PostgreSQL server (`aqueduct_testkit::postgres`), the
//! second hub's certificate from `aqueduct-hub certificate` and its CA, issuer and signing keys
//! copied from the first as the README says; two regions of one node each, the node a network
//! namespace running `aqueduct-spoke` with `hub = [A, B]`, each region behind its own uplink
//! shaped with `tc tbf` (faster than the region's budget, so that the budget is the limit).
//!
//! One node per region, so that the bytes from the hubs can be held to exactly the version's:
//! with two, the spokes of a region rejoin hub B a few hundred milliseconds apart, and the
//! first plans its next round with itself as the region's only member. A round now ends when
//! the members change (`spoke/src/replicate`), and the next is planned with them: measured with
//! two nodes per region, 1.09 times the version's bytes came from the hubs (what the first had
//! in flight when the second joined), against 1.54 before rounds ended so.
//! Needs root, `ip`, `tc`, `nsenter` and PostgreSQL's binaries (under `CI=true` a missing one
//! fails the test).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aqueduct_e2e::holders::StopHolders;
use aqueduct_e2e::netns::Topology;
use aqueduct_e2e::{Children, bin, free_port, scrape, spawn_command, spawn_logged, stored_bytes};
use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
/// Each region's budget.
const BUDGET: u64 = 4 * MIB;
/// What a budget lets through at once beyond its rate (see `aqueduct_core::budget`).
const BURST: u64 = 2 * MIB;
/// A chunk granted at the end of one second and sent in the next.
const CHUNK: u64 = 2 * MIB;
/// 100 Mbit/s: each uplink is far above its budget.
const LINK: u64 = 12_500_000;
/// Ethernet, IP, TCP, TLS and HTTP/2 framing on top of the chunks' bytes (the uplink's
/// counter counts frames): 1514-byte frames carry 1448 bytes, about 4.6% more.
const FRAMING: f64 = 1.06;
/// Generous: these check what happens, not how fast.
const WITHIN: Duration = Duration::from_secs(240);

fn mib(bytes: f64) -> f64 {
    bytes / MIB as f64
}

fn distinct(m: &Manifest) -> u64 {
    m.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum()
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A hub process: `aqueduct-hub serve` with `config`, listening on every address at `port`.
struct Hub {
    port: u16,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Hub {
    /// Hub `name`'s files under `root` (`NAME/`, `NAME/hub.toml`, `NAME.log`), on a free port.
    fn under(root: &Path, name: &str) -> Self {
        let data = root.join(name);
        let config = data.join("hub.toml");
        Self { port: free_port().port(), data, config, log: root.join(format!("{name}.log")) }
    }

    fn start(&self) -> std::process::Child {
        spawn_logged(&bin("aqueduct-hub"), &["serve".as_ref(), "--config".as_ref(), self.config.as_os_str()], &self.log)
    }

    /// Its address as `host` reaches it.
    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    /// An admin client (the admin bundle of hub A's data directory), once the hub answers.
    async fn admin(&self, bundle: &Path) -> AdminClient<Channel> {
        aqueduct_e2e::hub_binary::admin(&self.url("127.0.0.1"), bundle, &self.log, WITHIN).await
    }
}

/// `aq --hub HUBS status llama -o json` (the real binary, hub A's admin bundle): each
/// region's phase, or what aq said when it failed.
fn aq_status(bundle: &Path, hubs: &[String]) -> Result<Vec<(String, String)>, String> {
    let out = std::process::Command::new(bin("aq"))
        .env("AQ_CONFIG", bundle.join("aq.toml"))
        .args(["--hub", &hubs.join(","), "status", "llama", "-o", "json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!("aq --hub {} status failed: {}", hubs.join(","), String::from_utf8_lossy(&out.stderr)));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("aq's JSON: {e}"))?;
    let rows = json["rows"].as_array().cloned().unwrap_or_default();
    Ok(rows
        .iter()
        .map(|r| (r["region"].as_str().unwrap_or("").to_string(), r["phase"].as_str().unwrap_or("").to_string()))
        .collect())
}

/// Copies `from` (a file or a directory) to `to`, as `cp -a`.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let copied = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(copied.success(), "cp -a {} {}", from.display(), to.display());
}

/// The sum of the samples of `name` whose labels contain `label` in a scrape.
fn sum_of(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_serving_two_regions_is_killed_mid_rollout_and_the_other_finishes_it() {
    if !aqueduct_e2e::netns::available() {
        return;
    }
    let db = aqueduct_testkit::postgres::database();
    let mut net = Topology::build(&[("eu", 1, LINK), ("us", 1, LINK)]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    net.mount_roots.push(root.clone());
    // The FUSE holders the spokes start go with the test, however it ends.
    let _holders = StopHolders(root.clone());
    std::fs::create_dir_all(root.join("models/llama")).unwrap();
    std::fs::write(root.join("models/llama/model.safetensors"), aqueduct_testkit::noise(24 << 20, 20)).unwrap();
    let mut children = Children::default();
    let hosts: Vec<String> = net.regions.iter().map(|r| r.hub_ip.to_string()).collect();

    // Hub A: init (its certificate names the hub's address in each region), then PostgreSQL.
    let a = Hub::under(&root, "hub-a");
    let mut init = std::process::Command::new(bin("aqueduct-hub"));
    init.args(["init", "--data-dir"]).arg(&a.data).args(["--listen", &format!("0.0.0.0:{}", a.port)]);
    for host in &hosts {
        init.args(["--host", host]);
    }
    let out = init.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut text = std::fs::read_to_string(&a.config).unwrap();
    text.push_str(&format!(
        "\n[database]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        db.url(),
        db.password_file().display()
    ));
    std::fs::write(&a.config, &text).unwrap();
    let bundle = a.data.join("admin");

    // Hub B: a certificate from A's issuing CA naming B's addresses, and what the README says
    // to copy; its hub.toml is A's with its own `listen` and data directory, the same database.
    let b = Hub::under(&root, "hub-b");
    let mut certificate = std::process::Command::new(bin("aqueduct-hub"));
    certificate.args(["certificate", "--config"]).arg(&a.config).args(["--host", "127.0.0.1"]);
    for host in &hosts {
        certificate.args(["--host", host]);
    }
    let out = certificate.arg("--out").arg(root.join("hub-b-certificate")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["pki/ca.pem", "pki/issuer.pem", "pki/issuer.key", "signing"] {
        copy(&a.data.join(file), &b.data.join(file));
    }
    copy(&root.join("hub-b-certificate/hub.pem"), &b.data.join("pki/hub.pem"));
    copy(&root.join("hub-b-certificate/hub.key"), &b.data.join("pki/hub.key"));
    let text = text
        .replace(&format!("listen = \"0.0.0.0:{}\"", a.port), &format!("listen = \"0.0.0.0:{}\"", b.port))
        .replace(&format!("data_dir = \"{}\"", a.data.display()), &format!("data_dir = \"{}\"", b.data.display()));
    assert!(text.contains(&format!("0.0.0.0:{}", b.port)) && text.contains(&b.data.display().to_string()), "{text}");
    std::fs::write(&b.config, text).unwrap();

    children.0.push(a.start());
    let mut admin = a.admin(&bundle).await;
    children.0.push(b.start());
    b.admin(&bundle).await;
    aqueduct_e2e::hub_binary::local_dataset(&mut admin, "local", &root.join("models"), "llama").await;
    let manifest = Manifest::try_from(
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner(),
    )
    .unwrap();
    let total = distinct(&manifest);

    // The spokes: each node enrols with A and knows A then B, at their addresses as its
    // region sees them; it serves its peers and its metrics on its node's address.
    let keys = aqueduct_hub::signing::Signer::open(&a.data.join("signing/hub.key")).unwrap();
    let keys: Vec<String> = keys.published().iter().map(|k| k.to_string()).collect();
    let mut stores: Vec<Vec<PathBuf>> = Vec::new();
    let mut metrics: Vec<Vec<std::net::SocketAddr>> = Vec::new();
    let mut spoke_logs = Vec::new();
    for region in &net.regions {
        let added = pb::Region { name: region.name.clone(), rate_bytes_per_sec: BUDGET, ..Default::default() };
        let ca = admin.add_region(pb::AddRegionRequest { region: Some(added) }).await.unwrap().into_inner();
        let token = admin
            .create_enrol_token(pb::CreateEnrolTokenRequest {
                region: region.name.clone(),
                ttl_seconds: 3600,
                uses: region.nodes.len() as u32,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let given = aqueduct_spoke::Enrolment { ca_pem: &ca.ca_pem, signing_keys: &keys, token: &token };
        let host = region.hub_ip.to_string();
        let (mut region_stores, mut region_metrics) = (Vec::new(), Vec::new());
        for node in &region.nodes {
            let dir = root.join(format!("spoke-{}", node.name));
            let config = aqueduct_spoke::write_enrol_config(&dir, &a.url(&host), &node.name, &given).unwrap();
            let metrics_at: std::net::SocketAddr = format!("{}:9464", node.ip).parse().unwrap();
            let text: Vec<String> = std::fs::read_to_string(&config)
                .unwrap()
                .lines()
                .map(|l| match l.starts_with("hub = ") {
                    true => format!("hub = [\"{}\", \"{}\"]", a.url(&host), b.url(&host)),
                    false => l.to_string(),
                })
                .collect();
            let text = text.join("\n")
                + &format!("\n[peer]\nlisten = \"{}:7444\"\n[metrics]\nlisten = \"{metrics_at}\"\n", node.ip);
            std::fs::write(&config, text).unwrap();
            let config = aqueduct_e2e::holders::with_holder_binary(config);
            let mut cmd = net.command(node, &bin("aqueduct-spoke"));
            cmd.args(["run", "--config"]).arg(&config);
            let spoke_log = root.join(format!("{}.log", node.name));
            children.0.push(spawn_command(cmd, &spoke_log));
            spoke_logs.push(spoke_log);
            region_stores.push(dir.join("store"));
            region_metrics.push(metrics_at);
        }
        stores.push(region_stores);
        metrics.push(region_metrics);
    }
    let since = Instant::now();
    loop {
        let regions = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
        if net.regions.iter().all(|n| regions.iter().any(|r| r.name == n.name && r.members.len() == n.nodes.len())) {
            break;
        }
        assert!(since.elapsed() < WITHIN, "the spokes never joined through hub A: {regions:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The rollout, through A (which serves both regions: every spoke lists it first).
    let rollout = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: net.regions.iter().map(|r| r.name.clone()).collect(),
        ..Default::default()
    };
    let sent_before: Vec<u64> = (0..2).map(|r| net.sent_to(r)).collect();
    let started = Instant::now();
    admin.rollout(rollout).await.unwrap();
    let held = |r: usize| stores[r].iter().map(|s| stored_bytes(s)).sum::<u64>();
    // Per sample: (t, bytes down each uplink since the rollout, bytes held in each region).
    let mut samples: Vec<(f64, [u64; 2], [u64; 2])> = vec![(0.0, [0, 0], [0, 0])];
    let sample = |samples: &mut Vec<(f64, [u64; 2], [u64; 2])>| {
        let t = started.elapsed().as_secs_f64();
        let sent = [net.sent_to(0) - sent_before[0], net.sent_to(1) - sent_before[1]];
        samples.push((t, sent, [held(0), held(1)]));
    };
    while (0..2).any(|r| held(r) < total / 3) {
        assert!(started.elapsed() < WITHIN, "the regions stored nothing: {samples:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed().as_secs_f64() >= samples.last().unwrap().0 + 1.0 {
            sample(&mut samples);
        }
    }

    // A dies (SIGKILL) mid-rollout: its leases run out, B takes the regions.
    children.0[0].kill().unwrap();
    children.0[0].wait().unwrap();
    let killed = Instant::now();
    sample(&mut samples);
    let held_then = [held(0), held(1)];
    assert!(held_then.iter().all(|&h| h < total), "a region finished before hub A was killed: {held_then:?}");
    let hubs = [a.url("127.0.0.1"), b.url("127.0.0.1")];
    let (mut ready_after, mut resumed_after): ([Option<Duration>; 2], [Option<Duration>; 2]) = ([None; 2], [None; 2]);
    let mut aq_calls = 0;
    while ready_after.iter().any(Option::is_none) {
        assert!(killed.elapsed() < WITHIN, "not Ready through hub B: {samples:?}\n{}", log(&b.log));
        // aq, with both addresses, answers throughout (through B while A is dead).
        let rows = aq_status(&bundle, &hubs).unwrap_or_else(|e| panic!("{e}"));
        aq_calls += 1;
        for (r, region) in net.regions.iter().enumerate() {
            let phase = rows.iter().find(|(name, _)| *name == region.name).map(|(_, p)| p.as_str()).unwrap_or("");
            assert_ne!(phase, "Failed", "{rows:?}");
            if phase == "Ready" && ready_after[r].is_none() {
                ready_after[r] = Some(killed.elapsed());
            }
            if resumed_after[r].is_none() && held(r) > held_then[r] {
                resumed_after[r] = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if started.elapsed().as_secs_f64() >= samples.last().unwrap().0 + 1.0 {
            sample(&mut samples);
        }
    }
    sample(&mut samples);

    // Budgets held: past each second's burst, no more down a link than the budget lets through
    // (with framing), under A and then under B.
    println!("{:>6} {:>12} {:>12} {:>10} {:>10}", "t(s)", "eu MiB/s", "us MiB/s", "eu held", "us held");
    let mut worst: f64 = 0.0;
    for pair in samples.windows(2) {
        let ((t0, s0, _), (t1, s1, h1)) = (&pair[0], &pair[1]);
        let dt = t1 - t0;
        let limit = BUDGET as f64 * dt * FRAMING + (BURST + CHUNK) as f64;
        println!(
            "{t1:>6.1} {:>12.2} {:>12.2} {:>9.0}% {:>9.0}%",
            mib((s1[0] - s0[0]) as f64 / dt),
            mib((s1[1] - s0[1]) as f64 / dt),
            100.0 * h1[0] as f64 / total as f64,
            100.0 * h1[1] as f64 / total as f64
        );
        for r in 0..2 {
            let bytes = (s1[r] - s0[r]) as f64;
            worst = worst.max(bytes / limit);
            assert!(bytes <= limit, "{:.2} MiB down region {r}'s link in {dt:.1} s: over its budget", mib(bytes));
        }
    }
    // Nothing verified crossed a link twice: each region's spokes got the version's distinct
    // bytes from the hubs (A and B together) once; the uplinks carried those bytes, their
    // framing, and what A had in flight when it died.
    let mut sent_total = [0u64; 2];
    for (r, region) in net.regions.iter().enumerate() {
        let mut from_hubs = 0;
        for at in &metrics[r] {
            let got = sum_of(&scrape(*at).await, "aqueduct_spoke_received_bytes_total", "origin=\"hub\"");
            println!("spoke at {at}: {got} bytes from the hubs");
            from_hubs += got;
        }
        sent_total[r] = net.sent_to(r) - sent_before[r];
        println!(
            "region {}: {from_hubs} bytes from the hubs for {total} distinct; {} bytes down its uplink ({:.3}x)",
            region.name,
            sent_total[r],
            sent_total[r] as f64 / total as f64
        );
        assert_eq!(
            from_hubs, total,
            "region {}: bytes from the hubs against the version's distinct bytes",
            region.name
        );
        assert!(
            (sent_total[r] as f64) < total as f64 * FRAMING + (BURST + CHUNK) as f64,
            "region {}: {} bytes down the uplink for {total} distinct",
            region.name,
            sent_total[r]
        );
    }
    let spokes: String = spoke_logs.iter().map(|l| log(l)).collect();
    let refused = spokes.matches("refused this spoke").count();
    let switched = spokes.matches("switched to hub").count();
    assert!(!spokes.contains("replication failed"), "a version failed for the lost hub:\n{spokes}");
    println!(
        "{} MiB rolled out to 2 regions (a node each, {} MiB/s budget each, 100 Mbit/s links); hub A SIGKILLed with {:.0}% and {:.0}% held; transfers resumed through hub B after {resumed_after:?}, Ready after {ready_after:?}; aq (--hub A,B) answered {aq_calls} times in a row meanwhile; spokes refused by hub B while A's leases ran: {refused}; switches said in the spokes' logs: {switched}; worst second at {:.0}% of its limit",
        mib(total as f64),
        mib(BUDGET as f64),
        100.0 * held_then[0] as f64 / total as f64,
        100.0 * held_then[1] as f64 / total as f64,
        worst * 100.0
    );

    // A, restarted, rejoins: it answers aq, and aq through it shows both regions Ready.
    children.0.push(a.start());
    let since = Instant::now();
    let rows = loop {
        match aq_status(&bundle, &hubs[..1]) {
            Ok(rows) => break rows,
            Err(e) => assert!(since.elapsed() < WITHIN, "restarted hub A never answered: {e}\n{}", log(&a.log)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("hub A, restarted, answered aq after {:?}: {rows:?}", since.elapsed());
    for region in &net.regions {
        assert!(rows.contains(&(region.name.clone(), "Ready".to_string())), "{rows:?}");
    }
    drop(children);
}
