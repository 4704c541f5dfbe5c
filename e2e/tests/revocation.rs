//! Revocation reaches the region: a real spoke gets the revocation list with its assignments
//! from a real hub and its peer server refuses the revoked certificate, on a connection opened
//! before the revocation and on new ones, within seconds; the spoke itself is served on.
//!
//! The revoked certificate names a node (`spiffe://aqueduct/region/eu/node/n9`), issued by the
//! hub's CA for the test; the region's spoke (`eu-1`) has a certificate of its own, which a
//! node's entry must not touch.

use std::time::{Duration, Instant};

use aqueduct_e2e::{SourceKind, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1::HasRequest;
use aqueduct_proto::spoke::v1::peer_client::PeerClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The certificate and key of the node that `uri` (`spiffe://aqueduct/region/R/node/N`)
/// names, issued by the hub's CA as enrolment would.
fn issue(hub: &aqueduct_testkit::hub::TestHub, uri: &str) -> (String, String) {
    let rest = uri.strip_prefix("spiffe://aqueduct/region/").expect("a node's URI");
    let (region, node) = rest.split_once("/node/").expect("a node's URI");
    let bundle = hub.node_bundle(region, node);
    (bundle.cert_pem, bundle.key_pem)
}

/// A peer client of the spoke at `address` presenting `cert`; `Err` when TLS refuses it.
async fn peer(address: &str, ca: &str, cert: &(String, String)) -> Result<PeerClient<Channel>, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&cert.0, &cert.1))
        .domain_name("eu.region.aqueduct");
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(PeerClient::new(channel))
}

/// What the spoke's peer server says to a `Has`: the handler's answer (PERMISSION_DENIED: the
/// certificate names no region identity it serves) means TLS let the caller in.
async fn reaches_handler(client: &mut PeerClient<Channel>) -> bool {
    match client.has(HasRequest { digests: vec![] }).await {
        Ok(_) => true,
        Err(status) => status.code() == Code::PermissionDenied,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_by_the_regions_peers_on_open_and_new_connections() {
    let mut w = world(SourceKind::Dir).await;
    let config = w.region_of("eu", 1 << 30, 1).await.remove(0);
    let spoke = w.start_spoke(&config);
    w.wait_members("eu", 1).await;
    let regions = w.admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    let address = regions.iter().find(|r| r.name == "eu").unwrap().members[0].peer_address.clone();
    let ca = std::fs::read_to_string(w.hub.config.resolve(&w.hub.config.tls.ca)).unwrap();
    let n9 = issue(&w.hub, "spiffe://aqueduct/region/eu/node/n9");

    // Before the revocation, TLS lets n9 in (the handler answers).
    let mut open = peer(&address, &ca, &n9).await.expect("n9 connects before its revocation");
    assert!(reaches_handler(&mut open).await);

    let started = Instant::now();
    let node =
        pb::RevokeRequest { region: "eu".into(), node: "n9".into(), admin: String::new(), reason: "stolen".into() };
    w.admin.revoke(node).await.unwrap();
    // The spoke gets the list with its assignments and closes n9's open connection.
    loop {
        if !reaches_handler(&mut open).await {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the open connection of a revoked node was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the peer closed the revoked node's open connection {:?} after the revocation", started.elapsed());
    // New connections are refused at the TLS handshake.
    let refused = match peer(&address, &ca, &n9).await {
        Err(_) => true,
        Ok(mut again) => !reaches_handler(&mut again).await,
    };
    assert!(refused, "a revoked node's certificate was let in by a peer on a new connection");
    // Another node of the region is let in; the spoke (the region's certificate) is served on.
    let n8 = issue(&w.hub, "spiffe://aqueduct/region/eu/node/n8");
    let mut other = peer(&address, &ca, &n8).await.expect("n8 connects");
    assert!(reaches_handler(&mut other).await);
    w.wait_members("eu", 1).await;

    // A spoke restarted while the hub is down enforces the list it kept, before it reaches
    // the hub.
    spoke.cancel();
    w.hub.stop();
    drop((open, other));
    let text = std::fs::read_to_string(&config).unwrap().replace("127.0.0.1:0", &address);
    std::fs::write(&config, text).unwrap();
    let mut restarted = None;
    for _ in 0..100 {
        // The port is free once the stopped spoke let go of it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::net::TcpListener::bind(&address).is_ok() {
            restarted = Some(w.start_spoke(&config));
            break;
        }
    }
    let _restarted = restarted.expect("the stopped spoke's peer port was never free");
    let mut n8_again = None;
    for _ in 0..300 {
        if let Ok(client) = peer(&address, &ca, &n8).await {
            n8_again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut n8_again = n8_again.expect("the restarted spoke's peer server never answered");
    assert!(reaches_handler(&mut n8_again).await, "the restarted spoke refused a node that is not revoked");
    let refused = match peer(&address, &ca, &n9).await {
        Err(_) => true,
        Ok(mut again) => !reaches_handler(&mut again).await,
    };
    assert!(refused, "a spoke restarted without its hub let a revoked node in");
}
