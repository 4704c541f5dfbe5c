//! Revocation, named admins and the audit log, over real mutual TLS: a revoked region's watch
//! (open before the revocation) ends and its new connections are refused; a second admin works
//! with its own bundle and is named in the audit log; a revoked admin is cut off; every admin
//! call leaves one audit row.

use std::time::{Duration, Instant};

use aqueduct_hub::api::audit::ADMIN_CALLS;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_testkit::hub::TestHub;
use tonic::Code;
use tonic::transport::Channel;

/// Polls `check` until it holds, for at most 30 s (a bound only a broken hub reaches: the
/// tests check outcomes, not speed).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn audit(admin: &mut AdminClient<Channel>) -> Vec<pb::AuditEntry> {
    admin.list_audit(pb::ListAuditRequest { since_unix_ms: 0, limit: 0 }).await.unwrap().into_inner().entries
}

/// The bundle of the node that `uri` (`spiffe://aqueduct/region/R/node/N`) names, issued by
/// the hub's CA as enrolment would.
fn node_bundle(hub: &TestHub, uri: &str) -> pb::CredentialsBundle {
    let rest = uri.strip_prefix("spiffe://aqueduct/region/").expect("a node's URI");
    let (region, node) = rest.split_once("/node/").expect("a node's URI");
    hub.node_bundle(region, node)
}

/// TLS let the caller in: the handler answers (PERMISSION_DENIED: a node certificate names no
/// identity this build's spokes' API serves yet).
async fn reaches_handler(client: &mut SpokeClient<Channel>) -> bool {
    match client.get_manifest(pb::GetManifestRequest::default()).await {
        Ok(_) => true,
        Err(status) => status.code() == Code::PermissionDenied,
    }
}

fn revoke_region(region: &str) -> pb::RevokeRequest {
    pb::RevokeRequest { region: region.into(), node: String::new(), admin: String::new(), reason: "test".into() }
}

fn revoke_admin(name: &str) -> pb::RevokeRequest {
    pb::RevokeRequest { region: String::new(), node: String::new(), admin: name.into(), reason: "left".into() }
}

/// A spoke's client with a node's bundle; `None` when the hub refuses the connection.
async fn spoke(hub: &TestHub, bundle: &pb::CredentialsBundle) -> Option<SpokeClient<Channel>> {
    hub.channel(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await.ok().map(SpokeClient::new)
}

async fn watch(
    client: &mut SpokeClient<Channel>,
    node: &str,
) -> Result<tonic::Streaming<pb::Assignments>, tonic::Status> {
    let req = pb::WatchRequest { node: node.into(), peer_address: String::new() };
    Ok(client.watch(req).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_region_is_cut_off_on_open_and_new_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    hub.add_region("eu", 1 << 20).await;
    hub.add_region("us", 1 << 20).await;
    let (eu, us) = (hub.node_bundle("eu", "n1"), hub.node_bundle("us", "n1"));

    let mut eu_client = spoke(&hub, &eu).await.expect("eu connects");
    let mut eu_watch = watch(&mut eu_client, "n1").await.unwrap();
    let first = eu_watch.message().await.unwrap().expect("first assignments");
    assert_eq!(first.revocations.unwrap_or_default().entries, vec![]);
    let mut us_client = spoke(&hub, &us).await.expect("us connects");
    let mut us_watch = watch(&mut us_client, "n1").await.unwrap();
    us_watch.message().await.unwrap().expect("first assignments");

    // A node's certificate (as enrolment will issue them): TLS lets it in, the handler answers.
    let n7 = node_bundle(&hub, "spiffe://aqueduct/region/eu/node/n7");
    let mut n7_client = spoke(&hub, &n7).await.expect("n7 connects before its revocation");
    assert!(reaches_handler(&mut n7_client).await);

    // A node's revocation reaches the region's spokes with their assignments (not another
    // region's); the region's own certificate is not covered: eu still works.
    let node =
        pb::RevokeRequest { region: "eu".into(), node: "n7".into(), admin: String::new(), reason: "lost".into() };
    let started = Instant::now();
    let revoked = admin.revoke(node).await.unwrap().into_inner();
    assert_eq!(revoked.revocation.unwrap().prefix, "spiffe://aqueduct/region/eu/node/n7");
    let next = eu_watch.message().await.unwrap().expect("assignments with the list");
    let list = next.revocations.expect("a list");
    assert_eq!((list.generation, list.entries.len()), (1, 1));
    assert_eq!(list.entries[0].prefix, "spiffe://aqueduct/region/eu/node/n7");
    assert_eq!(list.entries[0].by, "admin");
    // The hub closed n7's open connection and refuses new ones.
    let took = eventually("n7's open connection refused", async || !reaches_handler(&mut n7_client).await).await;
    println!(
        "the revoked node's open connection failed {:?} after the revocation ({took:?} polling)",
        started.elapsed()
    );
    let refused = match spoke(&hub, &n7).await {
        None => true,
        Some(mut again) => !reaches_handler(&mut again).await,
    };
    assert!(refused, "a revoked node's certificate was served on a new connection");

    // The whole region: its open watch ends, its connections are refused; us is served on.
    let started = Instant::now();
    admin.revoke(revoke_region("eu")).await.unwrap();
    while let Ok(Some(_)) = eu_watch.message().await {}
    println!("the revoked region's open watch ended {:?} after the revocation", started.elapsed());
    assert!(eu_client.get_manifest(pb::GetManifestRequest::default()).await.is_err());
    let refused = match spoke(&hub, &eu).await {
        None => true,
        Some(mut again) => watch(&mut again, "n2").await.is_err(),
    };
    assert!(refused, "a revoked region's certificate was served on a new connection");
    let us_call = us_client.get_manifest(pb::GetManifestRequest { dataset: "none".into(), version: 1 }).await;
    assert_ne!(us_call.unwrap_err().code(), Code::Unavailable, "another region was cut off");

    // The list survives a restart: still refused.
    let list = admin.list_revocations(pb::ListRevocationsRequest {}).await.unwrap().into_inner();
    assert_eq!(list.entries.iter().map(|e| e.prefix.as_str()).collect::<Vec<_>>(), ["spiffe://aqueduct/region/eu"]);
    let mut hub = hub;
    drop((admin, eu_client, us_client));
    hub.restart().await;
    let refused = match spoke(&hub, &eu).await {
        None => true,
        Some(mut again) => watch(&mut again, "n2").await.is_err(),
    };
    assert!(refused, "a restarted hub served a revoked region");
    let mut admin = hub.admin().await;
    let after = admin.list_revocations(pb::ListRevocationsRequest {}).await.unwrap().into_inner();
    assert_eq!(after, list);
    expect_code(admin.revoke(revoke_region("mars")).await, Code::NotFound);
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_admin_works_with_its_own_bundle_until_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    hub.add_region("eu", 1 << 20).await;

    // The last admin whose certificate works cannot be revoked.
    let last = expect_code(admin.revoke(revoke_admin("admin")).await, Code::FailedPrecondition);
    assert!(last.message().contains("aq admin add"), "{last:?}");

    let added =
        admin.add_admin(pb::AddAdminRequest { name: "bob".into(), valid_for_secs: 3600 }).await.unwrap().into_inner();
    let info = added.admin.unwrap();
    assert_eq!((info.name.as_str(), info.created_by.as_str(), info.revoked), ("bob", "admin", false));
    assert!(info.expires_unix_ms - info.created_unix_ms <= 3_600_000);
    let bundle = added.bundle.unwrap();
    expect_code(
        admin.add_admin(pb::AddAdminRequest { name: "bob".into(), valid_for_secs: 0 }).await,
        Code::AlreadyExists,
    );

    // Bob revokes a region with his own bundle; the audit row names him.
    let mut bob = hub.client_with(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await.unwrap();
    let revoked = bob.revoke(revoke_region("eu")).await.unwrap().into_inner();
    assert_eq!(revoked.revocation.unwrap().by, "bob");
    eventually("bob's revocation in the audit log", async || {
        audit(&mut admin)
            .await
            .iter()
            .any(|e| e.admin == "bob" && e.call == "Revoke" && e.result == "ok" && e.args.contains("region=\"eu\""))
    })
    .await;
    let admins = admin.list_admins(pb::ListAdminsRequest {}).await.unwrap().into_inner().admins;
    assert_eq!(
        admins.iter().map(|a| (a.name.as_str(), a.revoked)).collect::<Vec<_>>(),
        [("admin", false), ("bob", false)]
    );

    // Bob revoked: his open connection is closed, a new one refused.
    admin.revoke(revoke_admin("bob")).await.unwrap();
    let took = eventually("bob's open connection refused", async || {
        bob.list_regions(pb::ListRegionsRequest {}).await.is_err()
    })
    .await;
    println!("the revoked admin's open connection failed {took:?} after the revocation");
    let refused = match hub.client_with(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await {
        Err(_) => true,
        Ok(mut again) => again.list_regions(pb::ListRegionsRequest {}).await.is_err(),
    };
    assert!(refused, "a revoked admin was served on a new connection");
    let admins = admin.list_admins(pb::ListAdminsRequest {}).await.unwrap().into_inner().admins;
    assert_eq!(
        admins.iter().map(|a| (a.name.as_str(), a.revoked)).collect::<Vec<_>>(),
        [("admin", false), ("bob", true)]
    );
    // And bob can be issued anew: a certificate issued after the revocation works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again =
        admin.add_admin(pb::AddAdminRequest { name: "bob".into(), valid_for_secs: 0 }).await.unwrap().into_inner();
    let bundle = again.bundle.unwrap();
    let mut bob = hub.client_with(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await.unwrap();
    bob.list_regions(pb::ListRegionsRequest {}).await.expect("bob's new bundle works");
}

/// Every RPC of the admin service (called with empty requests: most fail, which is recorded
/// too) leaves exactly one audit row, naming its caller, its call and its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_call_leaves_one_audit_row() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut a = hub.admin().await;
    let _ = a.add_source(pb::AddSourceRequest::default()).await;
    let _ = a.list_sources(pb::ListSourcesRequest::default()).await;
    let _ = a.add_dataset(pb::AddDatasetRequest::default()).await;
    let _ = a.list_datasets(pb::ListDatasetsRequest::default()).await;
    let _ = a.update_dataset(pb::UpdateDatasetRequest::default()).await;
    if let Ok(stream) = a.snapshot(pb::SnapshotRequest::default()).await {
        let mut stream = stream.into_inner();
        while let Ok(Some(_)) = stream.message().await {}
    }
    let _ = a.list_versions(pb::ListVersionsRequest::default()).await;
    let _ = a.get_manifest(pb::GetManifestRequest::default()).await;
    let _ = a.add_region(pb::AddRegionRequest::default()).await;
    let _ = a.list_regions(pb::ListRegionsRequest::default()).await;
    let _ = a.update_region(pb::UpdateRegionRequest::default()).await;
    let _ = a.update_source(pb::UpdateSourceRequest::default()).await;
    let _ = a.rollout(pb::RolloutRequest::default()).await;
    let _ = a.status(pb::StatusRequest::default()).await;
    let _ = a.info(pb::InfoRequest::default()).await;
    let _ = a.tag(pb::TagRequest::default()).await;
    let _ = a.promote(pb::PromoteRequest::default()).await;
    let _ = a.rollback(pb::RollbackRequest::default()).await;
    let _ = a.cancel_rollout(pb::CancelRolloutRequest::default()).await;
    let _ = a.gc(pb::GcRequest { dry_run: true, dataset: String::new() }).await;
    let _ = a.remove_source(pb::RemoveRequest::default()).await;
    let _ = a.remove_dataset(pb::RemoveRequest::default()).await;
    let _ = a.remove_region(pb::RemoveRequest::default()).await;
    let _ = a.remove_version(pb::RemoveVersionRequest::default()).await;
    let _ = a.create_enrol_token(pb::CreateEnrolTokenRequest::default()).await;
    let _ = a.revoke(pb::RevokeRequest::default()).await;
    let _ = a.list_revocations(pb::ListRevocationsRequest::default()).await;
    let _ = a.add_admin(pb::AddAdminRequest::default()).await;
    let _ = a.list_admins(pb::ListAdminsRequest::default()).await;
    let _ = a.list_audit(pb::ListAuditRequest::default()).await;

    let mut rows = Vec::new();
    eventually("a row for every call", async || {
        rows = audit(&mut a).await;
        ADMIN_CALLS.iter().all(|call| rows.iter().any(|r| r.call == *call))
    })
    .await;
    for call in ADMIN_CALLS {
        let mine: Vec<_> = rows.iter().filter(|r| r.call == *call).collect();
        // ListAudit is also the call that read the rows (once or more, while polling).
        if *call != "ListAudit" {
            assert_eq!(mine.len(), 1, "{call}: {mine:?}");
        }
        assert!(mine.iter().all(|r| r.admin == "admin" && !r.result.is_empty()), "{call}: {mine:?}");
    }
    let row = |call: &str| rows.iter().find(|r| r.call == call).unwrap().clone();
    assert_eq!(row("ListRegions").result, "ok");
    assert_eq!(row("AddRegion").result, "InvalidArgument");
    assert!(!row("AddRegion").message.is_empty());
    assert_eq!(row("Gc").args, "dataset=\"\" dry_run=true");
    assert!(rows.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms), "oldest first");

    // --since: only what came after.
    let later = rows.last().unwrap().at_unix_ms + 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = a.list_audit(pb::ListAuditRequest { since_unix_ms: later, limit: 0 }).await.unwrap().into_inner();
    assert!(since.entries.iter().all(|r| r.at_unix_ms >= later && r.call == "ListAudit"), "{since:?}");
    let bounded = a.list_audit(pb::ListAuditRequest { since_unix_ms: 0, limit: 3 }).await.unwrap().into_inner();
    assert_eq!(bounded.entries.len(), 3);
    assert!(bounded.truncated);

    // A caller that is not an admin is refused, and recorded under what its certificate names.
    hub.add_region("eu", 1 << 20).await;
    let eu = hub.node_bundle("eu", "n1");
    let mut intruder = hub.client_with(&eu.ca_pem, &eu.cert_pem, &eu.key_pem).await.unwrap();
    expect_code(intruder.list_regions(pb::ListRegionsRequest {}).await, Code::PermissionDenied);
    eventually("the refused call recorded", async || {
        audit(&mut a)
            .await
            .iter()
            .any(|r| r.admin == "region eu, node n1" && r.call == "ListRegions" && r.result == "PermissionDenied")
    })
    .await;
}
