//! Liveness and readiness end to end, with the real binaries: an `aqueduct-hub` process and
//! an `aqueduct-spoke` process, probed the way the kubelet and a gRPC client would.
//!
//! The hub: `/healthz` and `/readyz` answer 200, the gRPC health service says SERVING over
//! its mutual-TLS API; with its S3 source's server stopped, `/readyz` answers 503 naming the
//! source, and 200 again once the server is back. The spoke: not ready while the hub is down
//! (the body says the hub is not connected), ready once it connects, not ready again when the
//! hub stops; `/healthz` 200 throughout; its local API's gRPC health service follows; the CSI
//! `Probe` over the CSI socket says the node can publish (it needs no hub for that). Both
//! expose `*_build_info` with value 1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aqueduct_e2e::{Children, bin, free_port, scrape, socket_of, spawn_logged};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_testkit::S3Server;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Generous: these check what happens, not how fast.
const WITHIN: Duration = Duration::from_secs(90);

/// Polls `check` every 200 ms until it holds, for at most [`WITHIN`]; prints how long it took.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WITHIN, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{what}: after {:?}", started.elapsed());
}

/// `GET path` on a metrics listener: the status code and the body; `None` if nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The gRPC health status of `service` ("" for the whole server), or why there is none.
async fn grpc_health(channel: Channel, service: &str) -> Result<i32, String> {
    let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
    let answer = HealthClient::new(channel).check(request).await.map_err(|s| s.to_string())?;
    Ok(answer.into_inner().status)
}

/// The value of the sample `name` in a scrape (any labels), and its line.
fn sample(text: &str, name: &str) -> Option<(f64, String)> {
    let line = text.lines().find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))?;
    let value = line.rsplit(' ').next()?.parse().ok()?;
    Some((value, line.to_string()))
}

/// A hub binary in `dir`, with its metrics listener; started and stopped by the test.
struct Hub {
    config: PathBuf,
    data: PathBuf,
    url: String,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Hub {
    fn init(dir: &Path) -> Self {
        let (listen, metrics) = (free_port(), free_port());
        let data = dir.join("hub");
        let config = aqueduct_e2e::hub_binary::init(&data, listen, &format!("\n[metrics]\nlisten = \"{metrics}\"\n"));
        let url = format!("https://127.0.0.1:{}", listen.port());
        Self { config, data, url, metrics, log: dir.join("hub.log") }
    }

    fn start(&self) -> std::process::Child {
        spawn_logged(&bin("aqueduct-hub"), &["serve".as_ref(), "--config".as_ref(), self.config.as_os_str()], &self.log)
    }

    /// A channel to the API with the admin bundle (mutual TLS), once the hub answers.
    async fn channel(&self) -> Channel {
        let read = |f: &str| std::fs::read_to_string(self.data.join("admin").join(f)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("admin.pem"), read("admin.key")));
        let endpoint = Endpoint::from_shared(self.url.clone()).unwrap().tls_config(tls).unwrap();
        let mut channel = None;
        eventually("the hub's API answers", async || {
            channel = endpoint.connect().await.ok();
            channel.is_some()
        })
        .await;
        channel.unwrap()
    }
}

/// Stops a process as Kubernetes does (SIGTERM) and waits for it.
fn terminate(child: &mut std::process::Child) {
    aqueduct_e2e::signal(child, "TERM");
    let _ = child.wait();
}

async fn ready_is(addr: SocketAddr, code: u16, needle: &str) -> bool {
    matches!(get(addr, "/readyz").await, Some((c, body)) if c == code && body.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_is_ready_while_its_database_and_sources_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s3_root = root.join("s3");
    std::fs::create_dir_all(s3_root.join("models/llama")).unwrap();
    let s3 = S3Server::start(&s3_root).await.unwrap();
    let s3_addr = s3.addr;
    let hub = Hub::init(root);
    let mut children = Children::default();
    children.0.push(hub.start());
    let channel = hub.channel().await;

    // Up, with no sources yet: alive and ready, and SERVING over the mutual-TLS API.
    eventually("the hub's /readyz says ready", async || ready_is(hub.metrics, 200, "ready").await).await;
    assert_eq!(get(hub.metrics, "/healthz").await, Some((200, "ok\n".into())));
    eventually("the hub's gRPC health is SERVING", async || {
        grpc_health(channel.clone(), "").await == Ok(ServingStatus::Serving as i32)
    })
    .await;
    assert_eq!(grpc_health(channel.clone(), "aqueduct.hub.v1.Spoke").await, Ok(ServingStatus::Serving as i32));
    assert_eq!(grpc_health(channel.clone(), "aqueduct.hub.v1.Admin").await, Ok(ServingStatus::Serving as i32));

    // An S3 source: still ready while its server answers.
    let creds = root.join("s3-credentials");
    s3.write_credentials(&creds).unwrap();
    let source = pb::Source {
        name: "models-s3".into(),
        url: "s3://models".into(),
        options: s3.source_options(&creds).into_iter().collect(),
        created_unix_ms: 0,
    };
    let mut admin = AdminClient::new(channel.clone());
    admin.add_source(pb::AddSourceRequest { source: Some(source) }).await.unwrap();
    tokio::time::sleep(aqueduct_core::health::CHECK_EVERY * 2).await;
    assert_eq!(get(hub.metrics, "/readyz").await, Some((200, "ready\n".into())));

    // The S3 server stops: not ready, and the body names the source; still alive.
    drop(s3);
    eventually("the hub's /readyz names the unreachable source", async || {
        ready_is(hub.metrics, 503, "source models-s3: unreachable").await
    })
    .await;
    let (_, body) = get(hub.metrics, "/readyz").await.unwrap();
    eprintln!("/readyz with the source down:\n{body}");
    assert!(body.starts_with("not ready:\n"), "{body}");
    assert!(!body.contains("database"), "the database is fine: {body}");
    assert_eq!(get(hub.metrics, "/healthz").await, Some((200, "ok\n".into())));
    eventually("the hub's gRPC health is NOT_SERVING", async || {
        grpc_health(channel.clone(), "").await == Ok(ServingStatus::NotServing as i32)
    })
    .await;

    // Back on the same address: ready again.
    let mut back = None;
    eventually("the S3 server serves again on its address", async || {
        back = aqueduct_testkit::S3Server::start_on(&s3_root, s3_addr).await.ok();
        back.is_some()
    })
    .await;
    eventually("the hub's /readyz is 200 again", async || ready_is(hub.metrics, 200, "ready").await).await;
    assert_eq!(grpc_health(channel.clone(), "").await, Ok(ServingStatus::Serving as i32));

    // build_info, value 1, with the version.
    let text = scrape(hub.metrics).await;
    let (value, line) = sample(&text, "aqueduct_hub_build_info").expect("aqueduct_hub_build_info in the scrape");
    assert_eq!(value, 1.0, "{line}");
    assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spoke_is_ready_while_connected_to_the_hub_and_alive_throughout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hub = Hub::init(root);
    // The hub is children.0[0], the spoke [1]: both killed however the test ends.
    let mut children = Children::default();
    children.0.push(hub.start());
    let channel = hub.channel().await;
    let region = pb::Region { name: "eu".into(), rate_bytes_per_sec: 1 << 30, ..Default::default() };
    AdminClient::new(channel).add_region(pb::AddRegionRequest { region: Some(region) }).await.unwrap();
    // The node's certificate from the hub's CA (the spoke starts while the hub is down, so it
    // could not enrol then).
    let ca = aqueduct_hub::pki::Authority::load_issuer(
        &hub.data.join("pki/ca.pem"),
        &hub.data.join("pki/issuer.pem"),
        &hub.data.join("pki/issuer.key"),
    )
    .unwrap();
    let issued = ca.issue_node("eu", "eu-1", Duration::from_secs(3600)).unwrap();
    let signer = aqueduct_hub::signing::Signer::open(&hub.data.join("signing/hub.key")).unwrap();
    let bundle = pb::CredentialsBundle {
        ca_pem: ca.ca_pem().into(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        signing_keys: signer.published().iter().map(|k| k.to_string()).collect(),
    };
    let config = aqueduct_spoke::write_node_config(&root.join("spoke"), &hub.url, "eu-1", &bundle).unwrap();
    let metrics = aqueduct_e2e::with_spoke_metrics(&config);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[csi]\nsocket = \"csi.sock\"\n");
    std::fs::write(&config, text).unwrap();
    let csi_socket = config.parent().unwrap().join("store/csi.sock");
    terminate(&mut children.0[0]);

    // The spoke starts while the hub is down: alive, not ready, and the body says why.
    children.0.push(spawn_logged(
        &bin("aqueduct-spoke"),
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        &root.join("spoke.log"),
    ));
    eventually("the spoke's /readyz says the hub is not connected", async || {
        ready_is(metrics, 503, "hub: not connected").await
    })
    .await;
    let (_, body) = get(metrics, "/readyz").await.unwrap();
    eprintln!("/readyz before the hub is up:\n{body}");
    assert!(!body.contains("store:"), "the store is usable: {body}");
    assert_eq!(get(metrics, "/healthz").await, Some((200, "ok\n".into())));
    let local = local_channel(&socket_of(&config)).await;
    assert_eq!(grpc_health(local.clone(), "").await, Ok(ServingStatus::NotServing as i32));

    // The CSI node plugin can publish without the hub: the store is usable, FUSE is there.
    let csi = local_channel(&csi_socket).await;
    let mut identity = aqueduct_proto::csi::v1::identity_client::IdentityClient::new(csi);
    let probe = identity.probe(aqueduct_proto::csi::v1::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    // The hub comes up: the spoke connects and is ready.
    children.0[0] = hub.start();
    eventually("the spoke's /readyz is 200 once it connects", async || ready_is(metrics, 200, "ready").await).await;
    assert_eq!(grpc_health(local.clone(), "").await, Ok(ServingStatus::Serving as i32));
    assert_eq!(
        grpc_health(local.clone(), "aqueduct.spoke.v1.Local").await,
        Ok(ServingStatus::Serving as i32),
        "the local API's own service"
    );
    assert_eq!(get(metrics, "/healthz").await, Some((200, "ok\n".into())));

    // The hub stops: not ready again, the body says the hub is gone; still alive.
    terminate(&mut children.0[0]);
    eventually("the spoke's /readyz is 503 again without the hub", async || {
        ready_is(metrics, 503, "hub: not connected").await
    })
    .await;
    let (_, body) = get(metrics, "/readyz").await.unwrap();
    eprintln!("/readyz after the hub stopped:\n{body}");
    assert_eq!(get(metrics, "/healthz").await, Some((200, "ok\n".into())));
    assert_eq!(grpc_health(local.clone(), "").await, Ok(ServingStatus::NotServing as i32));
    let probe = identity.probe(aqueduct_proto::csi::v1::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true), "the node plugin still publishes what it knows");

    // build_info, value 1, with the version.
    let text = scrape(metrics).await;
    let (value, line) = sample(&text, "aqueduct_spoke_build_info").expect("aqueduct_spoke_build_info in the scrape");
    assert_eq!(value, 1.0, "{line}");
    assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
}

/// A channel over the unix socket at `path`, once it answers.
async fn local_channel(path: &Path) -> Channel {
    let endpoint = Endpoint::from_shared(format!("unix://{}", path.display())).unwrap();
    let mut channel = None;
    eventually(&format!("{} answers", path.display()), async || {
        channel = endpoint.connect().await.ok();
        channel.is_some()
    })
    .await;
    channel.unwrap()
}
