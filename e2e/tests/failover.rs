//! Spokes that know several hubs (`hub = [..]` in spoke.toml): one whose first hub is dead
//! enrols, joins and replicates through the next; one whose hub is killed mid-transfer
//! continues from another hub serving the same state, fetching only what it lacked.
//!
//! Two hubs on one state need the shared database (PostgreSQL) of issue 20; until then the
//! second "hub" here is the same hub's data directory served again, on another address (after
//! the first was killed: one SQLite writer at a time), with a certificate of its own issued by
//! `aqueduct-hub certificate` from the same CA. What the spoke sees is what it would see of
//! two hubs: a hub that stops answering, and another, at another address with another
//! certificate, that serves the same regions, versions and rollouts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aqueduct_e2e::{
    Children, SourceKind, assert_store_holds, bin, free_port, scrape, spawn_logged, stored_bytes, with_spoke_metrics,
    world,
};
use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Generous: these check what happens, not how fast.
const WITHIN: Duration = Duration::from_secs(120);

/// An address nothing listens on (bound, then let go): connections to it are refused.
fn dead_url() -> String {
    format!("https://127.0.0.1:{}", free_port().port())
}

/// Makes the spoke config at `config` list `hubs` (in that order) instead of its one hub.
fn list_hubs(config: &Path, hubs: &[String]) {
    let text = std::fs::read_to_string(config).unwrap();
    let list = hubs.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
    let text: Vec<String> =
        text.lines().map(|l| if l.starts_with("hub = ") { format!("hub = [{list}]") } else { l.to_string() }).collect();
    std::fs::write(config, text.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_whose_first_hub_is_dead_enrols_joins_and_replicates_through_the_next() {
    let mut w = world(SourceKind::Dir).await;
    aqueduct_e2e::write_model(&w.data, 1);
    w.snapshot().await;
    let config = w.region("eu", 1 << 30).await;
    let (dead, live) = (dead_url(), w.hub_url.clone());
    list_hubs(&config, &[dead.clone(), live.clone()]);
    let started = Instant::now();
    w.start_spoke(&config);
    w.wait_members("eu", 1).await;
    println!("enrolled and joined through the second hub in {:?}", started.elapsed());
    w.rollout(1, &["eu"]).await;
    let rows = w.wait_ready(1).await;
    let m1 = w.manifest(1).await;
    assert_eq!(rows[0].relayed_bytes, distinct(&m1), "the version crossed the link once");
    assert_store_holds(&config.parent().unwrap().join("store"), &m1, &w.data);
    println!("v1 Ready through the second hub {:?} after the spoke started", started.elapsed());
}

fn distinct(m: &Manifest) -> u64 {
    m.distinct_chunks().iter().map(|(_, l)| u64::from(*l)).sum()
}

/// A hub process: `aqueduct-hub serve` with `config`, at `url`.
struct HubProcess {
    url: String,
    config: PathBuf,
    log: PathBuf,
}

impl HubProcess {
    fn start(&self) -> std::process::Child {
        spawn_logged(&bin("aqueduct-hub"), &["serve".as_ref(), "--config".as_ref(), self.config.as_os_str()], &self.log)
    }

    /// An admin client (the admin bundle of `data`), once the hub answers.
    async fn admin(&self, data: &Path) -> AdminClient<Channel> {
        let read = |f: &str| std::fs::read_to_string(data.join("admin").join(f)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("admin.pem"), read("admin.key")));
        let endpoint = Endpoint::from_shared(self.url.clone()).unwrap().tls_config(tls).unwrap();
        let started = Instant::now();
        loop {
            if let Ok(channel) = endpoint.connect().await {
                return AdminClient::new(channel).max_decoding_message_size(aqueduct_proto::MAX_MESSAGE_BYTES);
            }
            assert!(started.elapsed() < WITHIN, "the hub at {} never answered: {}", self.url, log(&self.log));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Stops the FUSE holders started under a directory when dropped.
struct StopHolders<'a>(&'a Path);

impl Drop for StopHolders<'_> {
    fn drop(&mut self) {
        aqueduct_e2e::holders::stop_holders(self.0);
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn status(admin: &mut AdminClient<Channel>) -> pb::StatusRow {
    admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows.remove(0)
}

/// The sum of the samples of `name` whose labels contain `label` in a scrape.
fn sum_of(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_whose_hub_is_killed_mid_transfer_continues_from_the_next_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The FUSE holder the spoke starts goes with the test, however it ends.
    let _holders = StopHolders(root);
    std::fs::create_dir_all(root.join("models/llama")).unwrap();
    std::fs::write(root.join("models/llama/model.safetensors"), aqueduct_testkit::noise(24 << 20, 7)).unwrap();
    let mut children = Children::default();

    // Hub A on 127.0.0.1, its certificate from init.
    let data = root.join("hub");
    let listen_a = free_port();
    let config_a = aqueduct_e2e::hub_binary::init(&data, listen_a, "");
    let a = HubProcess {
        url: format!("https://127.0.0.1:{}", listen_a.port()),
        config: config_a,
        log: root.join("hub-a.log"),
    };
    children.0.push(a.start());
    let mut admin = a.admin(&data).await;
    let source = pb::Source {
        name: "local".into(),
        url: format!("file://{}", root.join("models").display()),
        options: Default::default(),
        created_unix_ms: 0,
    };
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    let dataset =
        pb::Dataset { name: "llama".into(), source: "local".into(), prefix: "llama".into(), ..Default::default() };
    admin.add_dataset(pb::AddDatasetRequest { dataset: Some(dataset) }).await.unwrap();
    let mut events = admin.snapshot(pb::SnapshotRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    while events.message().await.unwrap().is_some() {}
    // A slow link (4 MiB/s for 24 MiB), so that the kill lands mid-transfer.
    let region = pb::Region { name: "eu".into(), rate_bytes_per_sec: 4 << 20, ..Default::default() };
    let ca = admin.add_region(pb::AddRegionRequest { region: Some(region) }).await.unwrap().into_inner();
    let token = admin
        .create_enrol_token(pb::CreateEnrolTokenRequest { region: "eu".into(), ttl_seconds: 3600, uses: 1 })
        .await
        .unwrap()
        .into_inner()
        .token;

    // Hub B: the same state, on 127.0.0.2, with a certificate of its own from the same CA
    // naming only that address.
    let listen_b: SocketAddr = {
        let port = std::net::TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
        format!("127.0.0.2:{port}").parse().unwrap()
    };
    let issued = std::process::Command::new(bin("aqueduct-hub"))
        .args(["certificate", "--config"])
        .arg(&a.config)
        .args(["--host", "127.0.0.2", "--out"])
        .arg(root.join("hub-b"))
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let printed = String::from_utf8_lossy(&issued.stdout);
    assert!(printed.contains("issuer.key") && printed.contains("signing"), "{printed}");
    let text = std::fs::read_to_string(&a.config).unwrap();
    let text = text
        .replace(&format!("listen = \"{listen_a}\""), &format!("listen = \"{listen_b}\""))
        .replace("cert = \"pki/hub.pem\"", &format!("cert = \"{}\"", root.join("hub-b/hub.pem").display()))
        .replace("key = \"pki/hub.key\"", &format!("key = \"{}\"", root.join("hub-b/hub.key").display()));
    let config_b = root.join("hub-b.toml");
    std::fs::write(&config_b, text).unwrap();
    let b = HubProcess { url: format!("https://{listen_b}"), config: config_b, log: root.join("hub-b.log") };

    // The spoke knows both, A first; it enrols with A.
    let keys = aqueduct_hub::signing::Signer::open(&data.join("signing/hub.key")).unwrap();
    let keys: Vec<String> = keys.published().iter().map(|k| k.to_string()).collect();
    let given = aqueduct_spoke::Enrolment { ca_pem: &ca.ca_pem, signing_keys: &keys, token: &token };
    let dir = root.join("spoke");
    let config = aqueduct_spoke::write_enrol_config(&dir, &a.url, "eu-1", &given).unwrap();
    let config = aqueduct_e2e::holders::with_holder_binary(config);
    list_hubs(&config, &[a.url.clone(), b.url.clone()]);
    let metrics = with_spoke_metrics(&config);
    let spoke_log = root.join("spoke.log");
    children.0.push(spawn_logged(
        &bin("aqueduct-spoke"),
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        &spoke_log,
    ));
    admin
        .rollout(pb::RolloutRequest {
            dataset: "llama".into(),
            version: 1,
            regions: vec!["eu".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let manifest = Manifest::try_from(
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner(),
    )
    .unwrap();
    let total = distinct(&manifest);
    let store = dir.join("store");
    let started = Instant::now();
    while stored_bytes(&store) < total / 3 {
        assert!(started.elapsed() < WITHIN, "the spoke stored nothing: {}", log(&spoke_log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A dies (SIGKILL), mid-transfer; B starts on the same state.
    children.0[0].kill().unwrap();
    children.0[0].wait().unwrap();
    let killed = Instant::now();
    let held_at_kill = stored_bytes(&store);
    assert!(held_at_kill < total, "the transfer finished before the kill");
    children.0.push(b.start());
    let mut admin = b.admin(&data).await;
    let mut row = status(&mut admin).await;
    while row.phase() != pb::Phase::Ready {
        assert!(killed.elapsed() < WITHIN, "not Ready through hub B: {row:?}\n{}", log(&spoke_log));
        assert_ne!(row.phase(), pb::Phase::Failed, "{row:?}\n{}", log(&spoke_log));
        tokio::time::sleep(Duration::from_millis(100)).await;
        row = status(&mut admin).await;
    }
    let after = killed.elapsed();
    assert_store_holds(&store, &manifest, &root.join("models/llama"));
    // Every byte the spoke got from the hubs, over A and B together, is the version's once:
    // nothing it had verified was fetched again from B.
    let scraped = scrape(metrics).await;
    let from_hubs = sum_of(&scraped, "aqueduct_spoke_received_bytes_total", "origin=\"hub\"");
    assert_eq!(from_hubs, total, "bytes from the hubs against the version's distinct bytes:\n{scraped}");
    let spoke = log(&spoke_log);
    assert!(
        spoke.contains(&format!("switched to hub {}", b.url)),
        "the spoke's log does not say it switched:\n{spoke}"
    );
    // Losing a hub is not a failure of the version: it was never reported Failed.
    assert!(!spoke.contains("replication failed"), "{spoke}");
    println!(
        "hub A killed with {held_at_kill} of {total} bytes held; Ready through hub B {after:?} later; {from_hubs} bytes from the hubs in all"
    );
}
