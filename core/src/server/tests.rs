//! The accept path's limits, against real TLS connections.

use super::*;

#[test]
fn a_handshake_past_the_bound_pushes_out_the_oldest() {
    let mut h = Handshakes::new(2);
    let (a, ta, none) = h.admit();
    assert!(none.is_none());
    let (b, _tb, none) = h.admit();
    assert!(none.is_none());
    assert_eq!(h.len(), 2);
    let (c, _tc, evicted) = h.admit();
    let evicted = evicted.expect("the bound was reached");
    evicted.cancel();
    assert!(ta.is_cancelled(), "the oldest (a) is the one pushed out");
    assert_eq!(h.len(), 2);
    // A handshake that ends leaves room: the next one pushes nobody out.
    h.done(b);
    let (_, _, none) = h.admit();
    assert!(none.is_none());
    // Ending one that was pushed out already changes nothing.
    h.done(a);
    assert_eq!(h.len(), 2);
    assert!(a < b && b < c);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (PEM), as the hub's
/// PKI makes them.
fn pki() -> (String, (String, String), (String, String)) {
    let (ca, server, mut clients) = pki_with(&["spiffe://aqueduct/region/eu"]);
    (ca, server, clients.remove(0))
}

/// A CA, a server certificate and one client certificate per URI.
#[allow(clippy::type_complexity)]
fn pki_with(uris: &[&str]) -> (String, (String, String), Vec<(String, String)>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let issue = |names: Vec<String>, uri: Option<&str>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let clients = uris.iter().map(|uri| issue(vec!["client.test".into()], Some(uri))).collect();
    let server = issue(vec!["127.0.0.1".into(), "localhost".into()], Some("spiffe://aqueduct/region/eu/node/server"));
    (ca_pem.clone(), server, clients)
}

/// Answers `Has` with whether the caller's certificate reached the handler.
struct SeesCerts;

#[tonic::async_trait]
impl aqueduct_proto::spoke::v1::peer_server::Peer for SeesCerts {
    async fn has(
        &self,
        request: tonic::Request<aqueduct_proto::spoke::v1::HasRequest>,
    ) -> Result<tonic::Response<aqueduct_proto::spoke::v1::HasResponse>, tonic::Status> {
        let certs = request.peer_certs().is_some_and(|c| !c.is_empty());
        Ok(tonic::Response::new(aqueduct_proto::spoke::v1::HasResponse { held: vec![certs] }))
    }

    type FetchChunksStream = tokio_stream::Empty<Result<aqueduct_proto::hub::v1::ChunkData, tonic::Status>>;

    async fn fetch_chunks(
        &self,
        _request: tonic::Request<aqueduct_proto::spoke::v1::PeerFetchRequest>,
    ) -> Result<tonic::Response<Self::FetchChunksStream>, tonic::Status> {
        Ok(tonic::Response::new(tokio_stream::empty()))
    }
}

async fn client(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<aqueduct_proto::spoke::v1::peer_client::PeerClient<tonic::transport::Channel>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(aqueduct_proto::spoke::v1::peer_client::PeerClient::new(channel))
}

async fn has(
    client: &mut aqueduct_proto::spoke::v1::peer_client::PeerClient<tonic::transport::Channel>,
) -> Result<Vec<bool>, tonic::Status> {
    Ok(client.has(aqueduct_proto::spoke::v1::HasRequest { digests: vec![] }).await?.into_inner().held)
}

/// Polls `check` every 20 ms until it holds, for at most 20 s (a bound only a broken
/// server reaches: this checks outcomes, not speed).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_capped_and_handshakes_bounded_in_time_and_number() {
    use tokio::io::AsyncReadExt;
    let (ca, server, user) = pki();
    let tls = server_config(server.0.as_bytes(), server.1.as_bytes(), ca.as_bytes(), &Revocations::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits {
        max_connections: 1,
        max_handshakes: 4,
        handshake_timeout: Duration::from_millis(500),
        max_streams_per_connection: 8,
    };
    let incoming = incoming(listener, tls, limits, "test");
    let stats = incoming.stats.clone();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        grpc_server(limits.max_streams_per_connection, KEEPALIVE)
            .add_service(aqueduct_proto::spoke::v1::peer_server::PeerServer::new(SeesCerts))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );

    // The handler sees the caller's certificate through the permit-holding stream.
    let mut first = client(addr, &ca, Some(&user)).await.unwrap();
    assert_eq!(has(&mut first).await.unwrap(), [true]);
    assert_eq!(stats.open.load(Ordering::Relaxed), 1);

    // The cap is one connection: a second is closed, whatever it tries.
    let refused = match client(addr, &ca, Some(&user)).await {
        Err(_) => true,
        Ok(mut second) => has(&mut second).await.is_err(),
    };
    assert!(refused, "a connection past the cap was served");
    assert!(stats.refused.load(Ordering::Relaxed) >= 1);

    // Once the first is gone, a new one is served.
    drop(first);
    eventually("a connection served after the first ended", async || match client(addr, &ca, Some(&user)).await {
        Ok(mut c) => has(&mut c).await.is_ok(),
        Err(_) => false,
    })
    .await;

    // Ten connections that never begin TLS (once the served one is gone: at the cap they
    // would be refused at once): six push out older ones, the last four time out; every
    // one is closed.
    eventually("the served connection closed", async || stats.open.load(Ordering::Relaxed) == 0).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for stream in &mut idle {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an idle connection was kept: {read:?}");
    }
    // (Counted just after each connection is closed.)
    eventually("idle handshakes counted, none left", async || {
        stats.evicted.load(Ordering::Relaxed) >= 6
            && stats.timed_out.load(Ordering::Relaxed) >= 1
            && stats.handshaking.load(Ordering::Relaxed) == 0
    })
    .await;

    // A client without a certificate fails its handshake.
    let anonymous = match client(addr, &ca, None).await {
        Err(_) => true,
        Ok(mut c) => has(&mut c).await.is_err(),
    };
    assert!(anonymous, "a client without a certificate was served");
    eventually("the failed handshake counted", async || stats.failed.load(Ordering::Relaxed) >= 1).await;

    stop.cancel();
    server.await.unwrap().unwrap();
    // The port is free as soon as the server stopped: a restarted one binds it again.
    TcpListener::bind(addr).await.expect("the listener was not closed with the server");
}

/// A revoked certificate: refused on new connections, and the connections it holds open are
/// closed; other certificates are served on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_and_their_open_connections_closed() {
    use crate::revocation::{Revocation, RevocationList};
    let (ca, server, clients) = pki_with(&["spiffe://aqueduct/region/eu/node/n1", "spiffe://aqueduct/region/eu-west"]);
    let revocations = Revocations::default();
    let tls = server_config(server.0.as_bytes(), server.1.as_bytes(), ca.as_bytes(), &revocations).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits {
        max_connections: 8,
        max_handshakes: 4,
        handshake_timeout: Duration::from_secs(5),
        max_streams_per_connection: 8,
    };
    let incoming = incoming(listener, tls, limits, "test").revoking(&revocations);
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        grpc_server(limits.max_streams_per_connection, KEEPALIVE)
            .add_service(aqueduct_proto::spoke::v1::peer_server::PeerServer::new(SeesCerts))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );
    let mut n1 = client(addr, &ca, Some(&clients[0])).await.unwrap();
    let mut west = client(addr, &ca, Some(&clients[1])).await.unwrap();
    assert_eq!(has(&mut n1).await.unwrap(), [true]);
    assert_eq!(has(&mut west).await.unwrap(), [true]);

    // The whole region `eu` is revoked (its node n1 with it, not `eu-west`).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let entry = Revocation {
        prefix: "spiffe://aqueduct/region/eu".into(),
        revoked_at_unix_s: now,
        by: "admin".into(),
        reason: "test".into(),
    };
    let started = Instant::now();
    assert!(revocations.update(RevocationList { generation: 1, entries: vec![entry] }));
    eventually("the open connection of the revoked certificate fails", async || has(&mut n1).await.is_err()).await;
    println!("open connection closed {:?} after the revocation", started.elapsed());
    let refused = match client(addr, &ca, Some(&clients[0])).await {
        Err(_) => true,
        Ok(mut again) => has(&mut again).await.is_err(),
    };
    assert!(refused, "a revoked certificate was served on a new connection");
    assert_eq!(has(&mut west).await.unwrap(), [true], "another region's connection was closed");
    // An older list changes nothing.
    assert!(!revocations.update(RevocationList { generation: 1, entries: vec![] }));

    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A peer client refuses a server whose certificate is revoked (new connections; open ones
/// are the server's to close when it learns the list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_clients_refuse_a_revoked_server() {
    use crate::revocation::{Revocation, RevocationList};
    use revoke::{PeerConnector, peer_client_config};
    let (ca, server, clients) = pki_with(&["spiffe://aqueduct/region/eu/node/client"]);
    let tls = server_config(server.0.as_bytes(), server.1.as_bytes(), ca.as_bytes(), &Revocations::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits {
        max_connections: 8,
        max_handshakes: 4,
        handshake_timeout: Duration::from_secs(5),
        max_streams_per_connection: 8,
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(
        grpc_server(limits.max_streams_per_connection, KEEPALIVE)
            .add_service(aqueduct_proto::spoke::v1::peer_server::PeerServer::new(SeesCerts))
            .serve_with_incoming_shutdown(incoming(listener, tls, limits, "test"), stop.clone().cancelled_owned()),
    );
    let revocations = Revocations::default();
    let config =
        peer_client_config(ca.as_bytes(), clients[0].0.as_bytes(), clients[0].1.as_bytes(), &revocations).unwrap();
    let connect = async || {
        let connector = PeerConnector { config: config.clone(), server_name: "localhost".try_into().unwrap() };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut client = aqueduct_proto::spoke::v1::peer_client::PeerClient::new(channel);
        has(&mut client).await.map_err(|e| format!("{e:?}"))
    };
    assert_eq!(connect().await.unwrap(), [true], "served before the revocation");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let entry = Revocation {
        prefix: "spiffe://aqueduct/region/eu/node/server".into(),
        revoked_at_unix_s: now,
        by: "admin".into(),
        reason: "test".into(),
    };
    revocations.update(RevocationList { generation: 1, entries: vec![entry] });
    let refused = connect().await.unwrap_err();
    assert!(refused.to_lowercase().contains("revoked"), "{refused}");
    stop.cancel();
    serving.await.unwrap().unwrap();
}
