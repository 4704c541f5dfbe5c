//! The peer API's limits, served for real over mutual TLS: a peer has at most
//! `limits.fetch_streams_per_peer` FetchChunks streams at once (past it, RESOURCE_EXHAUSTED
//! naming the key), a busy peer is not suspected by the spoke that asked, a stream that ends
//! gives its turn back, and lists of digests are bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct_core::budget::Lane;
use aqueduct_core::identity::Identity;
use aqueduct_core::server::{KeyedLimit, ServerLimits};
use aqueduct_hub::pki::Authority;
use aqueduct_proto::Digest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::spoke::v1 as spb;
use aqueduct_spoke::origin::{FetchError, Network, PeerOrigin};
use aqueduct_spoke::peer_service::{self, PeerService};
use aqueduct_spoke::peers::{PeerError, Peers};
use aqueduct_spoke::priority::Priority;
use aqueduct_spoke::reader::{Pull, ReadThrough};
use aqueduct_spoke::store::{ChunkStore, MemStore};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

fn request(digests: &[Digest], urgent: bool) -> spb::PeerFetchRequest {
    spb::PeerFetchRequest {
        dataset: "llama".into(),
        version: 1,
        digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        fetch_on_miss: false,
        urgent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_has_its_share_of_streams_and_a_busy_peer_is_not_suspected() {
    let ca = Authority::create("test CA").unwrap();
    let region = Identity::Node { region: "eu".into(), node: "asker".into() };
    let day = Duration::from_secs(24 * 3600);
    let (server, client) = (ca.issue_node("eu", "server", day).unwrap(), ca.issue_node("eu", "asker", day).unwrap());

    // The serving spoke holds 24 MiB of chunks: more than the asker's HTTP/2 windows take
    // (8 MiB per stream), so that an unread stream keeps the server's sends waiting.
    let store = Arc::new(MemStore::default());
    let chunks: Vec<Vec<u8>> = (0..24u64).map(|i| aqueduct_testkit::noise(1 << 20, i)).collect();
    let digests: Vec<Digest> = chunks.iter().map(|c| Digest::of(c)).collect();
    for (d, c) in digests.iter().zip(&chunks) {
        store.put(d, c).unwrap();
    }
    let nowhere = SpokeClient::new(Endpoint::from_static("https://127.0.0.1:1").connect_lazy());
    let reader = |store: Arc<dyn ChunkStore>, peers: Arc<Peers>| {
        let hubs = aqueduct_spoke::hubs::Hubs::new(vec!["https://127.0.0.1:1".into()]);
        let origins = Arc::new(Network::new(nowhere.clone(), hubs, peers.clone()));
        ReadThrough::new(store, origins, peers, Arc::new(Priority::default()), Arc::default())
    };
    let pull = |urgent: bool| Pull {
        dataset: "llama",
        version: 1,
        budget: None,
        lane: if urgent { Lane::Foreground } else { Lane::Normal },
        from_owner: false,
        urgent,
        wait_stored: true,
    };
    let service = PeerService {
        region: "eu".into(),
        reader: reader(store.clone(), Arc::new(Peers::new("server", &region, None))),
        per_peer: KeyedLimit::new(1, Duration::from_millis(200)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = aqueduct_core::server::server_config(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        ca.ca_pem().as_bytes(),
        &Default::default(),
    )
    .unwrap();
    let limits = ServerLimits {
        max_connections: 16,
        max_handshakes: 16,
        handshake_timeout: Duration::from_secs(10),
        max_streams_per_connection: 16,
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(peer_service::serve(listener, tls, limits, service, Default::default(), stop.clone()));

    // The asking spoke knows the server as a live member of the region.
    let held = aqueduct_spoke::tls::Held::from_pem(&client.cert_pem, &client.key_pem).unwrap();
    let client_tls = aqueduct_spoke::tls::NodeTls::new(ca.ca_pem().as_bytes().to_vec(), held).unwrap();
    let peers = Arc::new(Peers::new("asker", &region, Some(client_tls)));
    let member = pb::Member { node: "server".into(), peer_address: addr.to_string() };
    peers.set_members(vec![member.clone(), pb::Member { node: "asker".into(), peer_address: "127.0.0.1:9".into() }]);
    assert_eq!(peers.ring().len(), 2);

    // One stream, unread: the server's sends wait, and the asker's one turn is taken.
    let held = peers.fetch(&member, request(&digests, false)).await.unwrap();
    let busy = peers.fetch(&member, request(&digests[..1], false)).await.unwrap_err();
    assert!(matches!(busy, PeerError::Busy { .. }), "{busy}");
    assert!(busy.to_string().contains("limits.fetch_streams_per_peer"), "{busy}");
    // A reader (urgent) that finds the peer busy is told at once, and does not suspect it.
    let asker = reader(Arc::new(MemStore::default()), peers.clone());
    let origin = PeerOrigin::new(peers.clone(), member.clone());
    match asker.pull(&origin, &pull(true), &digests[..1]).await {
        Err(FetchError::Peer(PeerError::Busy { .. })) => {}
        other => panic!("expected a busy peer, got {:?}", other.map(|p| p.got.len())),
    }
    assert_eq!(peers.ring().len(), 2, "a busy peer was suspected");

    // Background work asks a busy peer again: started while the turn is taken, it gets every
    // chunk once the stream that held it ends.
    let started = Instant::now();
    let background = tokio::spawn({
        let (asker, origin, digests) = (asker.clone(), PeerOrigin::new(peers.clone(), member.clone()), digests.clone());
        async move { asker.pull(&origin, &pull(false), &digests).await.map(|p| p.got.len()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    let got = background.await.unwrap().unwrap_or_else(|e| panic!("background work gave up on a busy peer: {e}"));
    assert_eq!(got, digests.len());
    assert_eq!(peers.ring().len(), 2, "a busy peer was suspected");
    println!("background pull, started while the peer was busy, done in {:?}", started.elapsed());

    // A list of digests is bounded, and the refusal says the bound.
    let many: Vec<Digest> =
        (0..=aqueduct_proto::MAX_DIGESTS_PER_REQUEST as u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
    match peers.fetch(&member, request(&many, false)).await {
        Err(PeerError::Unavailable { reason, .. }) => assert!(reason.contains("at most 256"), "{reason}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }

    stop.cancel();
    serving.await.unwrap().unwrap();
}
