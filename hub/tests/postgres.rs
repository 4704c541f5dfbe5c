//! Hubs on PostgreSQL, over real mutual TLS, on a real PostgreSQL server (a fresh database of
//! `aqueduct_testkit::postgres`): a hub configured with `[database] url` and a password file
//! keeps its state there (a restarted hub finds it), and two hubs on one database serve one
//! state: what one cuts and rolls out, the other lists, and each cuts the next number; a
//! region is served by one hub at a time, which tells the others what its spokes use.

mod common;

use aqueduct_hub::config::DatabaseConfig;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::postgres::TestDatabase;
use common::{dataset, snapshot, source};

fn on(db: &TestDatabase) -> impl FnOnce(&mut aqueduct_hub::config::HubConfig) + use<> {
    let database = DatabaseConfig {
        url: Some(db.url()),
        password_file: Some(db.password_file().to_owned()),
        password_env: None,
        connections: Some(4),
        ca_file: None,
    };
    move |c| c.database = database
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_postgres_database_serve_one_state() {
    let db = aqueduct_testkit::postgres::database();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    std::fs::create_dir_all(root.join("llama")).unwrap();
    std::fs::write(root.join("llama/weights.bin"), vec![7u8; 300_000]).unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let mut a = TestHub::init_with(&tmp.path().join("hub-a"), listen, &[], on(&db)).await;
    let b = TestHub::init_with(&tmp.path().join("hub-b"), listen, &[], on(&db)).await;
    let (mut admin_a, mut admin_b) = (a.admin().await, b.admin().await);

    admin_a.add_source(source("local", &format!("file://{}", root.display()), &[])).await.unwrap();
    admin_a.add_dataset(dataset("llama", "local", "llama")).await.unwrap();
    let v1 = snapshot(&mut admin_a, "llama").await.unwrap();
    assert_eq!(v1.version, 1);
    b.add_region("eu", 1 << 20).await;
    let rollout =
        pb::RolloutRequest { dataset: "llama".into(), version: 1, regions: vec!["eu".into()], ..Default::default() };
    admin_b.rollout(rollout).await.unwrap();

    // Each hub sees what the other wrote.
    let datasets = admin_b.list_datasets(pb::ListDatasetsRequest {}).await.unwrap().into_inner().datasets;
    assert_eq!(datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["llama"]);
    let status = admin_a.status(pb::StatusRequest::default()).await.unwrap().into_inner();
    assert_eq!(status.rows.iter().map(|r| (r.region.as_str(), r.version)).collect::<Vec<_>>(), [("eu", 1)]);
    // A manifest cut by one hub is served whole by the other.
    let manifest = |v| pb::GetManifestRequest { dataset: "llama".into(), version: v };
    let from_b = admin_b.get_manifest(manifest(1)).await.unwrap().into_inner();
    let from_a = admin_a.get_manifest(manifest(1)).await.unwrap().into_inner();
    assert_eq!(from_a, from_b);

    // The next number is the database's: the other hub cuts v2 of a changed folder.
    std::fs::write(root.join("llama/extra.json"), b"{}").unwrap();
    assert_eq!(snapshot(&mut admin_b, "llama").await.unwrap().version, 2);
    let versions = |v: pb::ListVersionsResponse| v.versions.iter().map(|v| v.version).collect::<Vec<_>>();
    let listed = admin_a.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
    assert_eq!(versions(listed.into_inner()), [1, 2]);

    // A restarted hub finds it all where it was.
    a.restart().await;
    let mut admin_a = a.admin().await;
    let listed = admin_a.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
    assert_eq!(versions(listed.into_inner()), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_address_is_said_at_start() {
    let db = aqueduct_testkit::postgres::database();
    let tmp = tempfile::tempdir().unwrap();
    let out = aqueduct_hub::init(&tmp.path().join("hub"), "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
    let mut config = aqueduct_hub::config::HubConfig::load(&out.config_path).unwrap();
    let wrong = tmp.path().join("wrong.pw");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    config.database = DatabaseConfig { url: Some(db.url()), password_file: Some(wrong), ..Default::default() };
    let err = aqueduct_hub::database::open(&config).err().expect("a wrong password is refused").to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("not-the-password"), "the password is never shown: {err}");

    config.database.password_file = Some(tmp.path().join("missing.pw"));
    let err = aqueduct_hub::database::open(&config).err().unwrap().to_string();
    assert!(err.contains("cannot read database.password_file") && err.contains("missing.pw"), "{err}");

    config.database = DatabaseConfig {
        url: Some("postgres://aqueduct@127.0.0.1:1/none?connect_timeout=2".into()),
        password_env: Some("AQ_TEST_NO_SUCH_VARIABLE".into()),
        ..Default::default()
    };
    let err = aqueduct_hub::database::open(&config).err().unwrap().to_string();
    assert!(err.contains("AQ_TEST_NO_SUCH_VARIABLE") && err.contains("not set"), "{err}");
    config.database.password_env = None;
    let err = aqueduct_hub::database::open(&config).err().unwrap().to_string();
    assert!(err.contains("PostgreSQL"), "{err}");
}

/// Two hubs on one database: a region's spokes are served by one hub at a time (the one that
/// took the region's lease: it folds their reports and holds the region's budget); a spoke of
/// the region that reaches the other hub is refused with UNAVAILABLE, naming the hub that
/// serves it. A rollout started through either hub reaches the region's watches (the hubs tell
/// each other of changes through the database), and when the serving hub stops, the other
/// takes the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_is_served_by_one_hub_at_a_time_and_hears_of_every_hubs_changes() {
    let db = aqueduct_testkit::postgres::database();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    std::fs::create_dir_all(root.join("llama")).unwrap();
    std::fs::write(root.join("llama/weights.bin"), vec![7u8; 100_000]).unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let a = TestHub::init_with(&tmp.path().join("hub-a"), listen, &[], on(&db)).await;
    let b = TestHub::init_with(&tmp.path().join("hub-b"), listen, &[], on(&db)).await;
    let mut admin_a = a.admin().await;
    admin_a.add_source(source("local", &format!("file://{}", root.display()), &[])).await.unwrap();
    admin_a.add_dataset(dataset("llama", "local", "llama")).await.unwrap();
    snapshot(&mut admin_a, "llama").await.unwrap();
    a.add_region("eu", 1 << 20).await;

    // A spoke of eu watches through hub B: B serves eu from now on.
    let watch = |node: &str| pb::WatchRequest {
        node: node.into(),
        peer_address: format!("{node}.test:7443"),
        member_deltas: true,
    };
    let mut on_b = b.spokes("eu").await;
    let mut stream = on_b.watch(watch("node-1")).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.assignments.is_empty());
    // Another spoke of eu reaching hub A is sent on, with why.
    let mut on_a = a.spokes("eu").await;
    let refused = on_a.watch(watch("node-2")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("region eu is served by another hub"), "{}", refused.message());
    let fetch = pb::FetchChunksRequest { dataset: "llama".into(), version: 1, ..Default::default() };
    assert_eq!(on_a.fetch_chunks(fetch).await.unwrap_err().code(), tonic::Code::Unavailable);

    // A rollout started through hub A reaches the watch on hub B.
    let rollout =
        pb::RolloutRequest { dataset: "llama".into(), version: 1, regions: vec!["eu".into()], ..Default::default() };
    let started = std::time::Instant::now();
    admin_a.rollout(rollout).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message()).await;
    let next = next.expect("the rollout reached hub B's watch").unwrap().unwrap();
    assert_eq!(next.assignments.iter().map(|a| (a.dataset.as_str(), a.version)).collect::<Vec<_>>(), [("llama", 1)]);
    println!("a rollout made through hub A reached the watch on hub B in {:?}", started.elapsed());

    // What a spoke of eu uses, reported to hub B, holds the version on hub A too (gc and
    // removals there count it).
    let in_use = pb::VersionInUse { dataset: "llama".into(), version: 1, user: "mount /mnt/llama".into() };
    let cache = pb::CacheReport {
        node: "node-1".into(),
        session: first.session.clone(),
        in_use: vec![in_use],
        ..Default::default()
    };
    on_b.report_cache(cache).await.unwrap();
    let since = std::time::Instant::now();
    loop {
        let list = admin_a.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
        let why = list.into_inner().versions[0].retained_by.clone();
        if why.iter().any(|w| w == "in use on eu/node-1: mount /mnt/llama") {
            break;
        }
        assert!(since.elapsed() < std::time::Duration::from_secs(20), "hub A never heard of the mount: {why:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!("hub A counted a mount reported to hub B after {:?}", since.elapsed());

    // Hub B stops (giving its leases up): the region's spokes are served by hub A.
    drop(stream);
    b.stop();
    let since = std::time::Instant::now();
    let mut stream = loop {
        match on_a.watch(watch("node-2")).await {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable && since.elapsed() < std::time::Duration::from_secs(30) => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("hub A never took region eu: {e:?}"),
        }
    };
    println!("hub A served region eu {:?} after hub B stopped", since.elapsed());
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.assignments.len(), 1);
}

/// TLS to PostgreSQL: a hub given the CA of the server's certificate speaks only TLS to it (the
/// server lists every connection of the hub's as SSL), one given another CA is refused by its
/// own check of the certificate, and a URL that asks for TLS without a CA is said at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_speaks_tls_to_postgres_and_checks_the_servers_certificate() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let db = aqueduct_testkit::postgres::database();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = aqueduct_hub::pki::Authority::create("Test database CA").unwrap();
    let server = ca.issue(&aqueduct_core::identity::Identity::Hub, &["127.0.0.1".into()]).unwrap();
    // The server reads its certificate and key as its own user (the owner of its data).
    let admin = db.connect().await.unwrap();
    let data: String = admin.query_one("SHOW data_directory", &[]).await.unwrap().get(0);
    let owner = std::fs::metadata(&data).map(|m| (m.uid(), m.gid())).unwrap_or((0, 0));
    let (cert, key) = (tmp.path().join("server.pem"), tmp.path().join("server.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key, Some(owner.0), Some(owner.1)).unwrap();
    std::os::unix::fs::chown(&cert, Some(owner.0), Some(owner.1)).unwrap();
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let out = aqueduct_hub::init(&tmp.path().join("hub"), "127.0.0.1:0".parse().unwrap(), &[]).unwrap();
    let mut config = aqueduct_hub::config::HubConfig::load(&out.config_path).unwrap();
    let ca_file = tmp.path().join("db-ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    config.database = DatabaseConfig {
        url: Some(db.url()),
        password_file: Some(db.password_file().to_owned()),
        ca_file: Some(ca_file.clone()),
        ..Default::default()
    };
    let store = tokio::task::block_in_place(|| aqueduct_hub::database::open(&config)).unwrap();
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
            &[&db.name()],
        )
        .await
        .unwrap();
    drop(store);
    let ssl: (i64, i64) = (row.get(0), row.get(1));
    assert!(ssl.1 > 0, "the hub holds connections to its database");
    assert_eq!(ssl.0, ssl.1, "every connection of the hub's is TLS: {ssl:?}");

    // Another CA: the hub refuses the server.
    let other = aqueduct_hub::pki::Authority::create("Another CA").unwrap();
    std::fs::write(&ca_file, other.ca_pem()).unwrap();
    let err = tokio::task::block_in_place(|| aqueduct_hub::database::open(&config)).err().unwrap().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // TLS asked for in the URL, with no CA to check the server by.
    config.database.ca_file = None;
    config.database.url = Some(format!("{}?sslmode=require", db.url()));
    let err = tokio::task::block_in_place(|| aqueduct_hub::database::open(&config)).err().unwrap().to_string();
    assert!(err.contains("sslmode=require") && err.contains("database.ca_file"), "{err}");

    for sql in [
        "ALTER SYSTEM RESET ssl",
        "ALTER SYSTEM RESET ssl_cert_file",
        "ALTER SYSTEM RESET ssl_key_file",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
}
