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

use aqueduct_e2e::holders::StopHolders;
use aqueduct_e2e::{
    Children, SourceKind, assert_store_holds, bin, free_port, scrape, spawn_logged, stored_bytes, with_spoke_metrics,
    world,
};
use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use tonic::transport::Channel;

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
        aqueduct_e2e::hub_binary::admin(&self.url, &data.join("admin"), &self.log, WITHIN).await
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

/// Hub A (a process on 127.0.0.1) rolling a 24 MiB version out to region `eu` over a 4 MiB/s
/// budget, to one spoke process that lists A then B; B (127.0.0.2, a certificate of its own
/// from A's CA, naming only that address) is configured, not started. Returned once the spoke
/// holds a third of the version.
struct TwoHubs {
    _holders: StopHolders,
    root: PathBuf,
    children: Children,
    b: HubProcess,
    /// A's data directory, and the one B serves (the same, or a copy).
    data: PathBuf,
    data_b: PathBuf,
    manifest: Manifest,
    store: PathBuf,
    spoke_log: PathBuf,
    metrics: SocketAddr,
    _tmp: tempfile::TempDir,
}

impl TwoHubs {
    /// `b_copies`: B serves a copy of A's data directory (made by the test) instead of A's own.
    async fn start(b_copies: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        // The FUSE holder the spoke starts goes with the test, however it ends.
        let holders = StopHolders(root.clone());
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
        aqueduct_e2e::hub_binary::local_dataset(&mut admin, "local", &root.join("models"), "llama").await;
        // A slow link (4 MiB/s for 24 MiB), so that the hub is lost mid-transfer.
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
        let data_b = if b_copies { root.join("hub-copy") } else { data.clone() };
        let text = std::fs::read_to_string(&a.config).unwrap();
        let text = text
            .replace(&format!("listen = \"{listen_a}\""), &format!("listen = \"{listen_b}\""))
            .replace(&format!("data_dir = \"{}\"", data.display()), &format!("data_dir = \"{}\"", data_b.display()))
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
        let rollout = pb::RolloutRequest {
            dataset: "llama".into(),
            version: 1,
            regions: vec!["eu".into()],
            ..Default::default()
        };
        admin.rollout(rollout).await.unwrap();
        let manifest = Manifest::try_from(
            admin
                .get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 })
                .await
                .unwrap()
                .into_inner(),
        )
        .unwrap();
        let store = dir.join("store");
        let started = Instant::now();
        while stored_bytes(&store) < distinct(&manifest) / 3 {
            assert!(started.elapsed() < WITHIN, "the spoke stored nothing: {}", log(&spoke_log));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { _holders: holders, root, children, b, data, data_b, manifest, store, spoke_log, metrics, _tmp: tmp }
    }

    /// Starts B, waits until the version is Ready through it, and checks what the spoke holds
    /// and got: every chunk, verified; from the hubs, A and B together, the version's distinct
    /// bytes once (nothing it had verified was fetched again); the switch said in its log; the
    /// version never failed for the lost hub. Returns the bytes held when A was lost and how
    /// long after `lost` the version was Ready.
    async fn finish_through_b(&mut self, lost: Instant, held_then: u64) -> Duration {
        let total = distinct(&self.manifest);
        assert!(held_then < total, "the transfer finished before hub A was lost");
        self.children.0.push(self.b.start());
        let mut admin = self.b.admin(&self.data_b).await;
        let mut row = status(&mut admin).await;
        while row.phase() != pb::Phase::Ready {
            assert!(lost.elapsed() < WITHIN, "not Ready through hub B: {row:?}\n{}", log(&self.spoke_log));
            assert_ne!(row.phase(), pb::Phase::Failed, "{row:?}\n{}", log(&self.spoke_log));
            tokio::time::sleep(Duration::from_millis(100)).await;
            row = status(&mut admin).await;
        }
        let after = lost.elapsed();
        assert_store_holds(&self.store, &self.manifest, &self.root.join("models/llama"));
        let scraped = scrape(self.metrics).await;
        let from_hubs = sum_of(&scraped, "aqueduct_spoke_received_bytes_total", "origin=\"hub\"");
        assert_eq!(from_hubs, total, "bytes from the hubs against the version's distinct bytes:\n{scraped}");
        let spoke = log(&self.spoke_log);
        assert!(
            spoke.contains(&format!("switched to hub {}", self.b.url)),
            "the spoke's log does not say it switched:\n{spoke}"
        );
        // Losing a hub is not a failure of the version: it was never reported Failed.
        assert!(!spoke.contains("replication failed"), "{spoke}");
        println!(
            "hub A lost with {held_then} of {total} bytes held; Ready through hub B {after:?} later; {from_hubs} bytes from the hubs in all"
        );
        after
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_whose_hub_is_killed_mid_transfer_continues_from_the_next_hub() {
    let mut hubs = TwoHubs::start(false).await;
    // A dies (SIGKILL), mid-transfer; B starts on the same state.
    hubs.children.0[0].kill().unwrap();
    hubs.children.0[0].wait().unwrap();
    let killed = Instant::now();
    let held = stored_bytes(&hubs.store);
    hubs.finish_through_b(killed, held).await;
}

/// A hub that goes silent (its process stopped: connections stay open, nothing answers, no
/// reset ever comes, as when its machine or network dies) is left: the spoke's keepalive
/// pings go unanswered, its connections to A are dropped, a new connection to A gets no TLS
/// handshake within the connect timeout, and the spoke goes on with B, which serves a copy of
/// A's state taken while A was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_whose_hub_goes_silent_mid_transfer_moves_to_the_next_hub() {
    let mut hubs = TwoHubs::start(true).await;
    aqueduct_e2e::signal(&hubs.children.0[0], "STOP");
    let stopped = Instant::now();
    let held = stored_bytes(&hubs.store);
    let copied = std::process::Command::new("cp").arg("-a").arg(&hubs.data).arg(&hubs.data_b).status().unwrap();
    assert!(copied.success());
    let after = hubs.finish_through_b(stopped, held).await;
    println!("a silent hub left for the next {after:?} after it stopped answering");
    // A is still there, stopped (the test's end kills it).
    assert!(aqueduct_e2e::holders::running(hubs.children.0[0].id()));
}
