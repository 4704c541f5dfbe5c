//! Enrolment over real mutual TLS: a node enrols with a bootstrap token for a certificate of
//! its own (only its public key comes from its request), a reused, expired or unknown token is
//! refused saying what to do, a node cannot watch or report as another, a certificate renews
//! for the same node, an expired one is refused by TLS, and every call but `Enrol` refuses a
//! caller without a certificate.

mod common;

use std::time::Duration;

use aqueduct_core::identity::Identity;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::hub::v1::enrol_client::EnrolClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_testkit::hub::TestHub;
use common::expect_err;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A channel to the hub that trusts its CA and presents no certificate.
async fn anonymous(hub: &TestHub) -> Channel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(hub.admin_file("ca.pem")));
    Endpoint::from_shared(hub.url()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

/// A new key and a certificate request for it that asks for far more than a node gets: the
/// admin's identity, another node's, a CA's powers.
fn greedy_request() -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["hub.example".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI("spiffe://aqueduct/admin".try_into().unwrap()));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.der().to_vec())
}

async fn enrol(hub: &TestHub, token: &str, node: &str, csr_der: Vec<u8>) -> Result<pb::NodeCertificate, tonic::Status> {
    let request = pb::EnrolRequest { token: token.into(), node: node.into(), csr_der };
    EnrolClient::new(anonymous(hub).await).enrol(request).await.map(|r| r.into_inner())
}

/// A client of the spokes' API with `cert` and `key`.
async fn as_node(hub: &TestHub, cert: &str, key: &str) -> SpokeClient<Channel> {
    SpokeClient::new(hub.channel(&hub.admin_file("ca.pem"), cert, key).await.unwrap())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_enrols_with_a_token_for_a_certificate_of_its_own_and_a_token_is_used_once() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    hub.add_region("eu", 1 << 30).await;
    let token = hub.enrol_token("eu", 1, Duration::from_secs(3600)).await;

    // A request the hub cannot use costs no use of the token.
    expect_err(
        EnrolClient::new(anonymous(&hub).await)
            .enrol(pb::EnrolRequest { token: token.clone(), node: "gpu-1".into(), csr_der: b"not a CSR".to_vec() })
            .await,
        Code::InvalidArgument,
        &["certificate request"],
    );

    let (key, csr) = greedy_request();
    let issued = enrol(&hub, &token, "gpu-1", csr).await.unwrap();
    let node = Identity::Node { region: "eu".into(), node: "gpu-1".into() };
    assert_eq!(Identity::from_pem(&issued.cert_pem), Some(node.clone()), "the hub set the identity, not the request");
    assert_eq!((issued.region.as_str(), issued.node.as_str()), ("eu", "gpu-1"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    assert!(!cert.is_ca(), "a node's certificate is no CA, whatever its request asked");
    let names = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(!names.contains("hub.example") && !names.contains("spiffe://aqueduct/admin"), "{names}");
    assert!(names.contains("eu.region.aqueduct"), "the region's peer name: {names}");
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw(), "the node's own key");
    let days = (issued.not_after_unix_ms - now_ms()) / (24 * 3600 * 1000);
    assert!((29..=30).contains(&days), "the default lifetime is 30 days, not {days}");

    // The certificate and the key made on the node get in, as that node only.
    let mut spoke = as_node(&hub, &issued.cert_pem, &key.serialize_pem()).await;
    let mut watch = spoke
        .watch(pb::WatchRequest { node: "gpu-1".into(), peer_address: String::new(), ..Default::default() })
        .await
        .unwrap();
    let session = watch.get_mut().message().await.unwrap().unwrap().session;
    expect_err(
        spoke.watch(pb::WatchRequest { node: "gpu-2".into(), peer_address: String::new(), ..Default::default() }).await,
        Code::PermissionDenied,
        &["\"gpu-2\"", "only as its own node"],
    );
    let report = |node: &str| pb::CacheReport { node: node.into(), session: session.clone(), ..Default::default() };
    expect_err(spoke.report_cache(report("gpu-2")).await, Code::PermissionDenied, &["only as its own node"]);
    let progress = pb::ProgressReport { node: "gpu-2".into(), session: session.clone(), ..Default::default() };
    expect_err(spoke.report_progress(progress).await, Code::PermissionDenied, &["only as its own node"]);
    spoke.report_cache(report("gpu-1")).await.unwrap();

    // The token was for one node: used up now, and the message says what to do.
    let (_, csr) = greedy_request();
    let used = enrol(&hub, &token, "gpu-2", csr.clone()).await.unwrap_err();
    assert_eq!(used.code(), Code::PermissionDenied);
    assert!(used.message().contains("used up") && used.message().contains("aq region token eu"), "{used:?}");
    let unknown = enrol(&hub, &format!("aqt1_{}", "0".repeat(64)), "gpu-2", csr.clone()).await.unwrap_err();
    assert!(unknown.message().contains("not known") && unknown.message().contains("aq region token"), "{unknown:?}");
    let bad = enrol(&hub, "let me in", "gpu-2", csr.clone()).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(!bad.message().contains("let me in"), "a token is never echoed: {bad:?}");

    // A token for many nodes (a DaemonSet's), then one that expires.
    let shared = hub.enrol_token("eu", 2, Duration::from_secs(3600)).await;
    for node in ["gpu-2", "gpu-3"] {
        enrol(&hub, &shared, node, greedy_request().1).await.unwrap();
    }
    assert!(enrol(&hub, &shared, "gpu-4", csr.clone()).await.unwrap_err().message().contains("used up"));
    let brief = hub.enrol_token("eu", 5, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = enrol(&hub, &brief, "gpu-5", csr).await.unwrap_err();
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert!(expired.message().contains("expired") && expired.message().contains("aq region token eu"), "{expired:?}");
    // An admin asks for tokens; a node may not.
    let mut admin_as_node =
        AdminClient::new(hub.channel(&hub.admin_file("ca.pem"), &issued.cert_pem, &key.serialize_pem()).await.unwrap());
    let ask = pb::CreateEnrolTokenRequest { region: "eu".into(), ttl_seconds: 60, uses: 1 };
    expect_err(admin_as_node.create_enrol_token(ask).await, Code::PermissionDenied, &["admin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_certificate_are_refused_everywhere_but_enrolment() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let channel = anonymous(&hub).await;
    let mut admin = AdminClient::new(channel.clone());
    let mut spoke = SpokeClient::new(channel.clone());
    let mut refused = Vec::new();
    let mut check = |call: &str, result: Result<(), tonic::Status>| {
        let status = result.expect_err(call);
        assert_eq!(status.code(), Code::Unauthenticated, "{call}: {status:?}");
        assert!(status.message().contains("no client certificate"), "{call}: {status:?}");
        refused.push(call.to_string());
    };
    macro_rules! call {
        ($client:ident . $rpc:ident, $request:ty) => {
            check(stringify!($rpc), $client.$rpc(<$request>::default()).await.map(|_| ()))
        };
    }
    call!(admin.add_source, pb::AddSourceRequest);
    call!(admin.list_sources, pb::ListSourcesRequest);
    call!(admin.add_dataset, pb::AddDatasetRequest);
    call!(admin.list_datasets, pb::ListDatasetsRequest);
    call!(admin.update_dataset, pb::UpdateDatasetRequest);
    call!(admin.snapshot, pb::SnapshotRequest);
    call!(admin.list_versions, pb::ListVersionsRequest);
    call!(admin.get_manifest, pb::GetManifestRequest);
    call!(admin.add_region, pb::AddRegionRequest);
    call!(admin.list_regions, pb::ListRegionsRequest);
    call!(admin.update_region, pb::UpdateRegionRequest);
    call!(admin.rollout, pb::RolloutRequest);
    call!(admin.status, pb::StatusRequest);
    call!(admin.info, pb::InfoRequest);
    call!(admin.tag, pb::TagRequest);
    call!(admin.promote, pb::PromoteRequest);
    call!(admin.rollback, pb::RollbackRequest);
    call!(admin.cancel_rollout, pb::CancelRolloutRequest);
    call!(admin.gc, pb::GcRequest);
    call!(admin.remove_source, pb::RemoveRequest);
    call!(admin.remove_dataset, pb::RemoveRequest);
    call!(admin.remove_region, pb::RemoveRequest);
    call!(admin.remove_version, pb::RemoveVersionRequest);
    call!(admin.create_enrol_token, pb::CreateEnrolTokenRequest);
    call!(spoke.watch, pb::WatchRequest);
    call!(spoke.get_manifest, pb::GetManifestRequest);
    call!(spoke.fetch_chunks, pb::FetchChunksRequest);
    call!(spoke.report_progress, pb::ProgressReport);
    call!(spoke.report_cache, pb::CacheReport);
    call!(spoke.renew_certificate, pb::RenewCertificateRequest);
    println!("refused without a certificate: {}", refused.join(", "));
    assert_eq!(refused.len(), 30);
    // Enrolment answers (here: a token that is not one).
    let status = EnrolClient::new(channel).enrol(pb::EnrolRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renews_for_the_same_node_and_an_expired_one_is_refused_by_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let hub = TestHub::init_with(&tmp.path().join("hub"), listen, &[], |c| {
        c.enrol.node_certificate_lifetime = Duration::from_secs(20);
    })
    .await;
    hub.add_region("eu", 1 << 30).await;
    let token = hub.enrol_token("eu", 1, Duration::from_secs(60)).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec();
    let first = enrol(&hub, &token, "gpu-1", csr).await.unwrap();
    let left = first.not_after_unix_ms - now_ms();
    assert!(left <= 20_000 && left > 0, "the hub's lifetime applies: {left} ms left");

    // Renewed over the current certificate: a new key, the same node, a later end.
    let mut spoke = as_node(&hub, &first.cert_pem, &key.serialize_pem()).await;
    let new_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&new_key).unwrap().der().to_vec();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renewed = spoke.renew_certificate(pb::RenewCertificateRequest { csr_der: csr }).await.unwrap().into_inner();
    assert_eq!(
        Identity::from_pem(&renewed.cert_pem),
        Some(Identity::Node { region: "eu".into(), node: "gpu-1".into() })
    );
    assert!(renewed.not_after_unix_ms > first.not_after_unix_ms);
    let mut again = as_node(&hub, &renewed.cert_pem, &new_key.serialize_pem()).await;
    again
        .watch(pb::WatchRequest { node: "gpu-1".into(), peer_address: String::new(), ..Default::default() })
        .await
        .unwrap();
    expect_err(
        spoke.renew_certificate(pb::RenewCertificateRequest { csr_der: b"junk".to_vec() }).await,
        Code::InvalidArgument,
        &["certificate request"],
    );
    // The admin is no node: it gets no node's certificate this way.
    let mut admin = SpokeClient::new(
        hub.channel(&hub.admin_file("ca.pem"), &hub.admin_file("admin.pem"), &hub.admin_file("admin.key"))
            .await
            .unwrap(),
    );
    expect_err(
        admin.renew_certificate(pb::RenewCertificateRequest { csr_der: Vec::new() }).await,
        Code::PermissionDenied,
        &["node's certificate"],
    );

    // An expired certificate does not get through TLS.
    let expired = hub.node_bundle_for("eu", "gpu-9", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = match hub.channel(&expired.ca_pem, &expired.cert_pem, &expired.key_pem).await {
        Err(e) => format!("{e:?}"),
        Ok(channel) => {
            let call = SpokeClient::new(channel)
                .watch(pb::WatchRequest { node: "gpu-9".into(), peer_address: String::new(), ..Default::default() })
                .await;
            format!("{:?}", call.expect_err("an expired certificate was taken"))
        }
    };
    // (TLS 1.3: the client learns only that the connection closed; the hub's log says why.)
    println!("an expired certificate: {refused}");
}
