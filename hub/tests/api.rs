//! The hub's admin API, served for real over mutual TLS on 127.0.0.1, with certificates
//! from the hub's own CA (and from a stranger's).

mod common;

use aqueduct_core::identity::Identity;
use aqueduct_hub::pki::Authority;
use aqueduct_proto::Manifest;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::{S3Server, noise};
use common::{dataset, expect_err, snapshot, source, source_with};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flow_over_mtls_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(models.join("llama")).unwrap();
    std::fs::write(models.join("llama/model.safetensors"), noise(3 << 20, 5)).unwrap();
    std::fs::write(models.join("llama/config.json"), b"{}").unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    let url = format!("file://{}", models.display());

    admin.add_source(source("local", &url, &[])).await.unwrap();
    expect_err(admin.add_source(source("local", &url, &[])).await, Code::AlreadyExists, &["local"]);
    admin.add_dataset(dataset("llama", "local", "llama/")).await.unwrap();
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    assert_eq!((v1.version, v1.files, v1.bytes), (1, 2, (3 << 20) + 2));
    let again = snapshot(&mut admin, "llama").await.unwrap();
    assert!(again.unchanged);
    assert_eq!(again.root, v1.root);
    assert_eq!(again.bytes_read, 0);

    let wire =
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 0 }).await.unwrap().into_inner();
    let manifest = Manifest::try_from(wire).unwrap();
    assert_eq!(manifest.root.0.to_vec(), v1.root);
    assert_eq!(
        manifest.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["config.json", "model.safetensors"]
    );

    // A restarted hub has everything it had.
    let mut hub = hub;
    hub.restart().await;
    let mut admin = hub.admin().await;
    let datasets = admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap().into_inner().datasets;
    assert_eq!(datasets.len(), 1);
    assert_eq!(datasets[0].latest_version, 1);
    let versions =
        admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner().versions;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].root, v1.root);
    let wire =
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner();
    assert_eq!(Manifest::try_from(wire).unwrap(), manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("models/empty")).unwrap();
    let s3 = S3Server::start(&tmp.path().join("s3")).await.unwrap();
    std::fs::create_dir_all(tmp.path().join("s3/models")).unwrap();
    let bad_creds = tmp.path().join("bad-credentials");
    std::fs::write(
        &bad_creds,
        "[default]\naws_access_key_id = aqueduct-test\naws_secret_access_key = not-the-secret\n",
    )
    .unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;

    expect_err(admin.add_source(source("x", "s3:/models", &[])).await, Code::InvalidArgument, &["malformed", "s3://"]);
    expect_err(admin.add_source(source("x", "ftp://models", &[])).await, Code::InvalidArgument, &["ftp"]);
    expect_err(admin.add_source(source("Bad Name", "file:///tmp", &[])).await, Code::InvalidArgument, &["source name"]);
    expect_err(
        admin.add_source(source("x", "file:///no/such/dir", &[])).await,
        Code::NotFound,
        &["does not exist", "/no/such/dir"],
    );
    expect_err(
        admin.add_source(source_with("x", "s3://models", s3.source_options(&bad_creds))).await,
        Code::PermissionDenied,
        &["denied access", "credentials"],
    );
    let good = tmp.path().join("good");
    s3.write_credentials(&good).unwrap();
    expect_err(
        admin.add_source(source_with("x", "s3://nope", s3.source_options(&good))).await,
        Code::NotFound,
        &["does not exist"],
    );
    expect_err(
        admin.add_source(source("x", "s3://models", &[("secret_access_key", "hunter2".into())])).await,
        Code::InvalidArgument,
        &["secret_access_key_env"],
    );
    assert!(admin.list_sources(pb::ListSourcesRequest {}).await.unwrap().into_inner().sources.is_empty());

    expect_err(
        admin.add_dataset(dataset("d", "nope", "")).await,
        Code::NotFound,
        &["source \"nope\"", "aq source add"],
    );
    let url = format!("file://{}", tmp.path().join("models").display());
    admin.add_source(source("local", &url, &[])).await.unwrap();
    admin.add_dataset(dataset("empty", "local", "empty")).await.unwrap();
    expect_err(admin.add_dataset(dataset("e", "local", "../etc")).await, Code::InvalidArgument, &["prefix"]);

    let err = snapshot(&mut admin, "unknown").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("dataset \"unknown\" does not exist"), "{}", err.message());
    let err = snapshot(&mut admin, "empty").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no objects"), "{}", err.message());
    assert!(
        admin
            .list_versions(pb::ListVersionsRequest { dataset: "empty".into() })
            .await
            .unwrap()
            .into_inner()
            .versions
            .is_empty()
    );
    expect_err(
        admin.get_manifest(pb::GetManifestRequest { dataset: "empty".into(), version: 0 }).await,
        Code::NotFound,
        &["no version yet", "aq snapshot empty"],
    );
    expect_err(
        admin.list_versions(pb::ListVersionsRequest { dataset: "ghost".into() }).await,
        Code::NotFound,
        &["ghost"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_of_this_ca_get_in() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let pki = hub.config.data_dir.join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();

    // A certificate of another CA: the TLS handshake or the first call fails.
    let stranger = Authority::create("stranger").unwrap();
    let admin_of_other = stranger.issue(&Identity::Admin("admin".into()), &[]).unwrap();
    let refused = match hub.client_with(&ca_pem, &admin_of_other.cert_pem, &admin_of_other.key_pem).await {
        Err(_) => true,
        Ok(mut client) => client.list_datasets(pb::ListDatasetsRequest {}).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");

    // Our CA, but a node's identity: authenticated, not allowed.
    let ours = aqueduct_hub::load_authority(&hub.config).unwrap();
    let region = ours.issue(&Identity::Node { region: "eu-west".into(), node: "gpu-1".into() }, &[]).unwrap();
    let mut client = hub.client_with(&ca_pem, &region.cert_pem, &region.key_pem).await.unwrap();
    expect_err(
        client.list_datasets(pb::ListDatasetsRequest {}).await,
        Code::PermissionDenied,
        &["admin", "region eu-west"],
    );

    // And the hub's certificate is not trusted by a client that trusts another CA.
    let other_ca = stranger.ca_pem().to_string();
    let admin_dir = hub.config.data_dir.join("admin");
    let cert = std::fs::read_to_string(admin_dir.join("admin.pem")).unwrap();
    let key = std::fs::read_to_string(admin_dir.join("admin.key")).unwrap();
    let refused = match hub.client_with(&other_ca, &cert, &key).await {
        Err(_) => true,
        Ok(mut client) => client.list_datasets(pb::ListDatasetsRequest {}).await.is_err(),
    };
    assert!(refused, "the client trusted a hub certificate of another CA");
}

#[test]
fn init_refuses_to_overwrite_a_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = "127.0.0.1:7443".parse().unwrap();
    aqueduct_hub::init(tmp.path(), addr, &["hub.example".into()]).unwrap();
    let ca_before = std::fs::read(tmp.path().join("pki/ca.pem")).unwrap();
    let err = aqueduct_hub::init(tmp.path(), addr, &[]).unwrap_err();
    assert!(err.to_string().contains("already holds a hub"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("pki/ca.pem")).unwrap(), ca_before);
    use std::os::unix::fs::PermissionsExt;
    for key in ["keep-offline/root-ca.key", "pki/issuer.key", "pki/hub.key", "admin/admin.key"] {
        let mode = std::fs::metadata(tmp.path().join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} is readable by others");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_get_credentials_and_rollouts_show_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(models.join("llama")).unwrap();
    std::fs::write(models.join("llama/model.safetensors"), noise(1 << 20, 8)).unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", models.display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();

    let region = |name: &str, rate| pb::AddRegionRequest {
        region: Some(pb::Region {
            name: name.into(),
            rate_bytes_per_sec: rate,
            created_unix_ms: 0,
            members: Vec::new(),
            ..Default::default()
        }),
    };
    let eu = admin.add_region(region("eu-west", 100 << 20)).await.unwrap().into_inner();
    admin.add_region(region("us-east", 25 << 20)).await.unwrap();
    expect_err(admin.add_region(region("eu-west", 1)).await, Code::AlreadyExists, &["eu-west"]);
    expect_err(admin.add_region(region("zero", 0)).await, Code::InvalidArgument, &["above 0"]);

    // The region's spokes trust the hub's CA; a node's certificate (enrolment issues them from
    // that CA) names its region and node.
    assert_eq!(eu.ca_pem, std::fs::read_to_string(hub.config.data_dir.join("pki/ca.pem")).unwrap());
    let bundle = hub.node_bundle("eu-west", "gpu-1");
    assert_eq!(
        Identity::from_pem(&bundle.cert_pem),
        Some(Identity::Node { region: "eu-west".into(), node: "gpu-1".into() })
    );
    assert_eq!(bundle.ca_pem, eu.ca_pem);
    // ... and it gets through TLS, but is no admin.
    let mut spoke = hub.client_with(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await.unwrap();
    expect_err(spoke.list_regions(pb::ListRegionsRequest {}).await, Code::PermissionDenied, &["region eu-west"]);

    let rollout = |version, regions: &[&str]| pb::RolloutRequest {
        dataset: "llama".into(),
        version,
        regions: regions.iter().map(|r| r.to_string()).collect(),
        mode: Default::default(),
        ..Default::default()
    };
    expect_err(admin.rollout(rollout(0, &["eu-west"])).await, Code::FailedPrecondition, &["no version yet"]);
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    expect_err(
        admin.rollout(rollout(0, &["eu-west", "mars"])).await,
        Code::NotFound,
        &["region \"mars\"", "aq region add mars"],
    );
    expect_err(admin.rollout(rollout(7, &["eu-west"])).await, Code::NotFound, &["no version v7"]);
    expect_err(admin.rollout(rollout(0, &[])).await, Code::InvalidArgument, &["at least one region"]);
    let unknown_class = pb::RolloutRequest { class: 9, ..rollout(0, &["eu-west"]) };
    expect_err(admin.rollout(unknown_class).await, Code::InvalidArgument, &["class 9", "urgent, normal or background"]);
    assert!(admin.status(pb::StatusRequest { dataset: String::new() }).await.unwrap().into_inner().rows.is_empty());
    let done = admin.rollout(rollout(0, &["eu-west", "us-east"])).await.unwrap().into_inner();
    assert_eq!(done.version, 1);
    // Asked again for one region, urgent: that region takes the class, the other keeps normal.
    let urgent = pb::RolloutRequest { class: pb::RolloutClass::Urgent.into(), ..rollout(0, &["us-east"]) };
    admin.rollout(urgent).await.unwrap();

    let rows = admin.status(pb::StatusRequest { dataset: String::new() }).await.unwrap().into_inner().rows;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            (r.region.as_str(), r.version, r.phase(), r.total_bytes, r.cached_bytes, r.budget_bytes_per_sec, r.class())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("eu-west", 1, pb::Phase::Pending, v1.bytes, 0, 100 << 20, pb::RolloutClass::Normal),
            ("us-east", 1, pb::Phase::Pending, v1.bytes, 0, 25 << 20, pb::RolloutClass::Urgent)
        ]
    );
    expect_err(admin.status(pb::StatusRequest { dataset: "ghost".into() }).await, Code::NotFound, &["ghost"]);
}
