//! The hub's PKI kept apart and its state kept safe: `aqueduct-hub backup` taken while the hub
//! serves, restored into a new directory, gives a hub that serves the same versions to the
//! same identities; a damaged backup restores nothing; the issuing CA rotates with the root's
//! key brought back, and what the old issuer signed keeps working.

mod common;

use std::path::Path;

use aqueduct_hub::config::HubConfig;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_testkit::hub::TestHub;
use common::{dataset, snapshot, source};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Serves the hub of `config_path` on a free port; returns it as a TestHub-like handle.
async fn serve(config_path: &Path) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let config = HubConfig::load(config_path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { aqueduct_hub::serve(config, listener, stop).await.unwrap() }
    });
    (url, stop, task)
}

async fn channel(url: &str, ca: &str, cert: &str, key: &str) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(cert, key));
    Endpoint::from_shared(url.to_string()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_the_hub_serves_restores_the_same_versions_and_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    std::fs::create_dir_all(files.join("m")).unwrap();
    std::fs::write(files.join("m/weights.bin"), vec![7u8; 300_000]).unwrap();
    let hub = TestHub::init(&tmp.path().join("a")).await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", files.display()), &[])).await.unwrap();
    admin.add_dataset(dataset("model", "local", "m")).await.unwrap();
    let v1 = snapshot(&mut admin, "model").await.unwrap();
    hub.add_region("eu", 1 << 20).await;
    let bundle = hub.node_bundle("eu", "node-1");
    let rollout =
        pb::RolloutRequest { dataset: "model".into(), version: 1, regions: vec!["eu".into()], ..Default::default() };
    admin.rollout(rollout).await.unwrap();
    let manifest = |bundle: pb::CredentialsBundle, url: String| async move {
        let mut spoke = SpokeClient::new(channel(&url, &bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await);
        spoke.get_manifest(pb::GetManifestRequest { dataset: "model".into(), version: 1 }).await
    };
    let original = manifest(bundle.clone(), hub.url()).await.unwrap().into_inner();

    let backup = tmp.path().join("backup");
    let made = aqueduct_hub::backup::backup(&hub.config.data_dir.join("hub.toml"), &backup).unwrap();
    let listed: Vec<&str> = made.files.iter().map(|f| f.path.as_str()).collect();
    for expected in
        ["hub.db", "hub.toml", "pki/ca.pem", "pki/issuer.key", "pki/issuer.pem", "pki/hub.key", "admin/admin.key"]
    {
        assert!(listed.contains(&expected), "{expected} is not in the backup: {listed:?}");
    }
    assert!(hub.config.data_dir.join("keep-offline/root-ca.key").exists());
    assert!(!listed.iter().any(|p| p.contains("root")), "the root CA's key went into the backup: {listed:?}");
    assert!(!backup.join("keep-offline").exists());
    // What happens after the backup is not in it.
    std::fs::write(files.join("m/weights.bin"), vec![8u8; 300_000]).unwrap();
    assert_eq!(snapshot(&mut admin, "model").await.unwrap().version, 2);
    hub.stop();

    // A damaged backup: nothing is written.
    let damaged = tmp.path().join("damaged");
    copy_dir(&backup, &damaged);
    let mut key = std::fs::read(damaged.join("pki/issuer.key")).unwrap();
    key[40] ^= 1;
    std::fs::write(damaged.join("pki/issuer.key"), key).unwrap();
    let err = aqueduct_hub::backup::restore(&damaged, &tmp.path().join("d")).unwrap_err().to_string();
    assert!(err.contains("pki/issuer.key does not match its checksum"), "{err}");
    assert!(!tmp.path().join("d").exists(), "a damaged backup wrote something");
    let mut incomplete = damaged.clone();
    incomplete.push("pki");
    let err = aqueduct_hub::backup::restore(&incomplete, &tmp.path().join("d")).unwrap_err().to_string();
    assert!(err.contains("is not an Aqueduct hub backup"), "{err}");

    let restored = tmp.path().join("c");
    let config = aqueduct_hub::backup::restore(&backup, &restored).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for secret in ["pki/issuer.key", "pki/hub.key", "admin/admin.key"] {
        let mode = std::fs::metadata(restored.join(secret)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret} restored readable by others");
    }
    let err = aqueduct_hub::backup::restore(&backup, &restored).unwrap_err().to_string();
    assert!(err.contains("already holds a hub"), "{err}");

    let (url, stop, task) = serve(&config).await;
    let read = |f: &str| std::fs::read_to_string(hub.config.data_dir.join("admin").join(f)).unwrap();
    // The first hub's admin bundle and node certificate are the restored hub's too.
    let mut admin = pb::admin_client::AdminClient::new(
        channel(&url, &read("ca.pem"), &read("admin.pem"), &read("admin.key")).await,
    );
    let versions = admin.list_versions(pb::ListVersionsRequest { dataset: "model".into() }).await.unwrap().into_inner();
    assert_eq!(
        versions.versions.iter().map(|v| (v.version, v.root.clone())).collect::<Vec<_>>(),
        [(1, v1.root.clone())]
    );
    assert_eq!(manifest(bundle, url.clone()).await.unwrap().into_inner(), original);
    // And it goes on: a new version is cut from the same source.
    assert_eq!(snapshot(&mut admin, "model").await.unwrap().version, 2);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_rotates_with_the_root_key_and_what_the_old_one_signed_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = TestHub::init(&tmp.path().join("hub")).await;
    let config_path = hub.config.data_dir.join("hub.toml");
    hub.add_region("eu", 1 << 20).await;
    let old_region = hub.node_bundle("eu", "node-1");
    let old_issuer = std::fs::read_to_string(hub.config.data_dir.join("pki/issuer.pem")).unwrap();

    // The wrong root key: refused, nothing changes.
    let other = tmp.path().join("other");
    aqueduct_hub::init(&other, "127.0.0.1:7443".parse().unwrap(), &[]).unwrap();
    let before = std::fs::read(&config_path).unwrap();
    let err = aqueduct_hub::rotate_issuer(&config_path, &other.join("keep-offline/root-ca.key"), 30).unwrap_err();
    assert!(err.to_string().contains("was not made with the CA key"), "{err}");
    assert_eq!(std::fs::read(&config_path).unwrap(), before);

    let root_key = hub.config.data_dir.join("keep-offline/root-ca.key");
    let rotated = aqueduct_hub::rotate_issuer(&config_path, &root_key, 30).unwrap();
    let new_issuer = std::fs::read_to_string(&rotated.issuer).unwrap();
    assert_ne!(new_issuer, old_issuer);
    // The root's key goes back offline: the hub needs only its new issuer.
    std::fs::remove_file(&root_key).unwrap();
    hub.config = HubConfig::load(&config_path).unwrap();
    hub.restart().await;

    // The admin bundle and the region certificate of the old issuer still work.
    hub.admin().await.list_regions(pb::ListRegionsRequest {}).await.unwrap();
    let call = |bundle: pb::CredentialsBundle, url: String| async move {
        let mut spoke = SpokeClient::new(channel(&url, &bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem).await);
        spoke.get_manifest(pb::GetManifestRequest { dataset: "none".into(), version: 1 }).await.unwrap_err()
    };
    assert_eq!(call(old_region, hub.url()).await.code(), Code::PermissionDenied);
    // New certificates come from the new issuer.
    hub.add_region("us", 1 << 20).await;
    let new_region = hub.node_bundle("us", "node-1");
    assert!(new_region.cert_pem.ends_with(&new_issuer), "a new certificate's chain ends with the new issuer");
    assert_eq!(call(new_region, hub.url()).await.code(), Code::PermissionDenied);
    let hub_cert = std::fs::read_to_string(&rotated.hub_cert).unwrap();
    assert!(hub_cert.ends_with(&new_issuer));
    assert!(aqueduct_hub::pki::server_names(&hub_cert).contains(&"localhost".to_string()));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
