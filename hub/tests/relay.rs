//! The spokes' API over real mutual TLS: a region reads exactly what is rolled out to it,
//! every chunk verified, and a source that changed fails the version without a wrong byte.
//!
//! The file is some 640 lines long: every test of the relay shares its few helpers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::{Digest, Manifest};
use aqueduct_testkit::hub::{RegionSpokes, TestHub};
use aqueduct_testkit::noise;
use common::{dataset, expect_err, snapshot, source};
use tonic::Code;
use tonic::transport::Channel;

/// Adds `region`; returns its spokes, each with its own node's certificate.
async fn spoke_of(
    hub: &TestHub,
    admin: &mut pb::admin_client::AdminClient<Channel>,
    region: &str,
    rate: u64,
) -> RegionSpokes {
    let req = pb::AddRegionRequest {
        region: Some(pb::Region {
            name: region.into(),
            rate_bytes_per_sec: rate,
            created_unix_ms: 0,
            members: Vec::new(),
            ..Default::default()
        }),
    };
    admin.add_region(req).await.unwrap();
    hub.spokes(region).await
}

/// A hub whose dataset `llama` is the folder `MODELS/llama` with `files` in it, snapshotted as
/// v1; with its admin client and v1's summary.
async fn hub_with(
    tmp: &std::path::Path,
    files: &[(&str, &[u8])],
) -> (TestHub, pb::admin_client::AdminClient<Channel>, pb::VersionSummary) {
    let models = tmp.join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    for (path, bytes) in files {
        std::fs::write(models.join(path), bytes).unwrap();
    }
    let hub = TestHub::init(&tmp.join("hub")).await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", tmp.join("models").display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    (hub, admin, v1)
}

async fn fetch(
    spoke: &mut SpokeClient<Channel>,
    dataset: &str,
    version: u64,
    digests: &[Digest],
) -> (Vec<pb::ChunkData>, Option<tonic::Status>) {
    let req = pb::FetchChunksRequest {
        dataset: dataset.into(),
        version,
        digests: digests.iter().map(|d| d.0.to_vec()).collect(),
        foreground: false,
    };
    let mut stream = match spoke.fetch_chunks(req).await {
        Ok(s) => s.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut got = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => got.push(chunk),
            Ok(None) => return (got, None),
            Err(status) => return (got, Some(status)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_read_what_is_rolled_out_to_them_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let mut originals = BTreeMap::new();
    originals.insert("model.safetensors".to_string(), noise(4 << 20, 11));
    originals.insert("config.json".to_string(), b"{\"layers\": 32}".to_vec());
    let files: Vec<(&str, &[u8])> = originals.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
    let (hub, mut admin, v1) = hub_with(tmp.path(), &files).await;
    let models = tmp.path().join("models/llama");
    let mut eu = spoke_of(&hub, &mut admin, "eu", 1 << 30).await;
    let mut us = spoke_of(&hub, &mut admin, "us", 1 << 30).await;
    let rollout = |version, region: &str| pb::RolloutRequest {
        dataset: "llama".into(),
        version,
        regions: vec![region.into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(rollout(1, "eu")).await.unwrap();

    // The watch says what eu must hold, and its budget.
    let watch_as = |node: &str| pb::WatchRequest {
        node: node.into(),
        peer_address: format!("{node}.test:7443"),
        ..Default::default()
    };
    let mut watch = eu.watch(watch_as("node-1")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.budget_bytes_per_sec, 1 << 30);
    // The watch makes the spoke a live member of its region.
    assert_eq!(first.members, [pb::Member { node: "node-1".into(), peer_address: "node-1.test:7443".into() }]);
    assert_eq!(first.assignments.len(), 1);
    assert_eq!((first.assignments[0].version, first.assignments[0].total_bytes), (1, v1.bytes));
    assert_eq!(first.assignments[0].root, v1.root);
    // The watch's session, which node-1's reports carry.
    let session = first.session.clone();
    assert_eq!(session.len(), 32, "a 128-bit token");

    // The manifest verifies, and every chunk arrives with the right bytes.
    let wire =
        eu.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner();
    let manifest = Manifest::try_from(wire).unwrap();
    let digests: Vec<Digest> = manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect();
    let (chunks, err) = fetch(&mut eu, "llama", 1, &digests).await;
    assert!(err.is_none(), "{err:?}");
    let by_digest: BTreeMap<Vec<u8>, Vec<u8>> = chunks.into_iter().map(|c| (c.digest, c.data)).collect();
    for file in &manifest.files {
        let mut rebuilt = Vec::new();
        for c in &file.chunks {
            let data = &by_digest[&c.digest.0.to_vec()];
            assert_eq!(Digest::of(data), c.digest);
            rebuilt.extend_from_slice(data);
        }
        assert_eq!(rebuilt, originals[&file.path], "{}", file.path);
    }

    // us has no rollout of v1: refused, manifest and bytes alike.
    expect_err(
        us.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await,
        Code::PermissionDenied,
        &["not rolled out to region us"],
    );
    let (got, err) = fetch(&mut us, "llama", 1, &digests).await;
    assert!(got.is_empty());
    assert_eq!(err.unwrap().code(), Code::PermissionDenied);
    // The admin certificate is no region's.
    let admin_dir = hub.config.data_dir.join("admin");
    let read = |f: &str| std::fs::read_to_string(admin_dir.join(f)).unwrap();
    let mut as_admin =
        SpokeClient::new(hub.channel(&read("ca.pem"), &read("admin.pem"), &read("admin.key")).await.unwrap());
    expect_err(
        as_admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await,
        Code::PermissionDenied,
        &["spokes"],
    );

    // A region certificate from another CA does not get in.
    let stranger = aqueduct_hub::pki::Authority::create("stranger").unwrap();
    let forged = stranger.issue_node("eu", "node-1", Duration::from_secs(3600)).unwrap();
    let refused = match hub.channel(&read("ca.pem"), &forged.cert_pem, &forged.key_pem).await {
        Err(_) => true,
        Ok(channel) => SpokeClient::new(channel)
            .get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 })
            .await
            .is_err(),
    };
    assert!(refused, "a certificate of another CA was accepted");

    // Asking for what is not in the version, or is no digest.
    let (_, err) = fetch(&mut eu, "llama", 1, &[Digest::of(b"not a chunk")]).await;
    assert_eq!(err.unwrap().code(), Code::NotFound);
    let bad =
        pb::FetchChunksRequest { dataset: "llama".into(), version: 1, digests: vec![vec![1, 2, 3]], foreground: false };
    expect_err(eu.fetch_chunks(bad).await, Code::InvalidArgument, &["not 32"]);

    // Progress shows in the admin's status; a region cannot report on what it was not given.
    let report = |phase: pb::Phase, cached| pb::ProgressReport {
        dataset: "llama".into(),
        version: 1,
        cached_bytes: cached,
        phase: phase.into(),
        reason: String::new(),
        rate_bytes_per_sec: 1000,
        node: "node-1".into(),
        mode: Default::default(),
        membership: String::new(),
        session: session.clone(),
    };
    eu.report_progress(report(pb::Phase::Transferring, 1234)).await.unwrap();
    let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    assert_eq!(
        (rows[0].phase(), rows[0].cached_bytes, rows[0].rate_bytes_per_sec),
        (pb::Phase::Transferring, 1234, 1000)
    );
    // A phase the contract does not name, or none.
    let done = pb::ProgressReport { phase: 99, ..report(pb::Phase::Ready, 1) };
    expect_err(eu.report_progress(done).await, Code::InvalidArgument, &["Ready"]);
    let none = pb::ProgressReport { phase: pb::Phase::Unspecified.into(), ..report(pb::Phase::Ready, 1) };
    expect_err(eu.report_progress(none).await, Code::InvalidArgument, &["Ready"]);
    expect_err(
        us.report_progress(report(pb::Phase::Ready, 1)).await,
        Code::PermissionDenied,
        &["not rolled out to region us"],
    );

    // A new rollout reaches the open watch.
    std::fs::write(models.join("config.json"), b"{\"layers\": 40}").unwrap();
    snapshot(&mut admin, "llama").await.unwrap();
    admin.rollout(rollout(2, "eu")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("no assignment update")
        .unwrap()
        .unwrap();
    assert_eq!(next.assignments.iter().map(|a| a.version).collect::<Vec<_>>(), [1, 2]);
    assert!(next.assignments.iter().all(|a| !a.active && !a.ready), "a version was active before it was Ready");

    // Ready makes v1 the region's active version, pushed to the watch and shown in status.
    eu.report_progress(report(pb::Phase::Ready, v1.bytes)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("no assignment update after Ready")
        .unwrap()
        .unwrap();
    let active: Vec<(u64, bool, bool)> = next.assignments.iter().map(|a| (a.version, a.active, a.ready)).collect();
    assert_eq!(active, [(1, true, true), (2, false, false)]);
    let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    assert_eq!(rows.iter().map(|r| r.active).collect::<Vec<_>>(), [true, false]);

    // A second spoke of eu joins: the first hears of it, and v2 is Ready in eu only once both
    // reported Ready; each spoke's report shows in the status.
    let mut watch2 = eu.watch(watch_as("node-2")).await.unwrap().into_inner();
    let members = |a: &pb::Assignments| a.members.iter().map(|m| m.node.clone()).collect::<Vec<_>>();
    let first2 = watch2.message().await.unwrap().unwrap();
    assert_eq!(members(&first2), ["node-1", "node-2"]);
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(members(&next), ["node-1", "node-2"]);
    let sessions = BTreeMap::from([("node-1", session.clone()), ("node-2", first2.session.clone())]);
    let v2 = |phase: pb::Phase, node: &str| pb::ProgressReport {
        version: 2,
        node: node.into(),
        session: sessions[node].clone(),
        ..report(phase, 10)
    };
    eu.report_progress(v2(pb::Phase::Ready, "node-1")).await.unwrap();
    eu.report_progress(v2(pb::Phase::Transferring, "node-2")).await.unwrap();
    let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    assert_eq!(rows[1].phase(), pb::Phase::Transferring);
    let nodes: Vec<(&str, pb::Phase)> = rows[1].nodes.iter().map(|n| (n.node.as_str(), n.phase())).collect();
    assert_eq!(nodes, [("node-1", pb::Phase::Ready), ("node-2", pb::Phase::Transferring)]);
    // node-2 goes away: it no longer holds the region back.
    drop(watch2);
    let mut phase = pb::Phase::Unspecified;
    for _ in 0..100 {
        let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
        phase = rows[1].phase();
        if phase == pb::Phase::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(phase, pb::Phase::Ready, "a spoke that left still held its region back");
}

/// The CSI node plugin starts pods once a version is Ready in its own region: the hub tells a
/// region's watches as soon as it is, before the version is active (Ready everywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_hears_at_once_that_a_version_is_ready_in_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin, v1) = hub_with(tmp.path(), &[("config.json", b"{}")]).await;
    let mut eu = spoke_of(&hub, &mut admin, "eu", 1 << 30).await;
    let _us = spoke_of(&hub, &mut admin, "us", 1 << 30).await;
    let rollout = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: vec!["eu".into(), "us".into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(rollout).await.unwrap();
    let watch = pb::WatchRequest { node: "node-1".into(), peer_address: String::new(), ..Default::default() };
    let mut watch = eu.watch(watch).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.assignments.iter().map(|a| (a.ready, a.active)).collect::<Vec<_>>(), [(false, false)]);
    let ready = pb::ProgressReport {
        dataset: "llama".into(),
        version: 1,
        cached_bytes: v1.bytes,
        phase: pb::Phase::Ready.into(),
        node: "node-1".into(),
        session: first.session.clone(),
        ..Default::default()
    };
    eu.report_progress(ready).await.unwrap();
    // Pushed on the change (the watch's periodic re-check comes only after 30 s).
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("no assignment update after Ready in the region")
        .unwrap()
        .unwrap();
    let flags: Vec<(bool, bool)> = next.assignments.iter().map(|a| (a.ready, a.active)).collect();
    assert_eq!(flags, [(true, false)], "Ready in eu, not active while us is not Ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_fails_the_version_and_sends_no_wrong_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let model = noise(3 << 20, 12);
    let (hub, mut admin, _) = hub_with(tmp.path(), &[("model.safetensors", &model)]).await;
    let models = tmp.path().join("models/llama");
    let mut eu = spoke_of(&hub, &mut admin, "eu", 1 << 30).await;
    admin
        .rollout(pb::RolloutRequest {
            dataset: "llama".into(),
            version: 1,
            regions: vec!["eu".into()],
            mode: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap();
    let wire =
        eu.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner();
    let manifest = Manifest::try_from(wire).unwrap();

    // Same size, other bytes, after the snapshot: the second half of the file changes.
    let mut changed = model.clone();
    changed[2 << 20..].copy_from_slice(&noise(1 << 20, 99));
    std::fs::write(models.join("model.safetensors"), &changed).unwrap();

    let digests: Vec<Digest> = manifest.files[0].chunks.iter().map(|c| c.digest).collect();
    let (got, err) = fetch(&mut eu, "llama", 1, &digests).await;
    let err = err.expect("a changed source must fail the fetch");
    assert_eq!(err.code(), Code::DataLoss);
    assert!(
        err.message().contains("source changed") && err.message().contains("snapshot the dataset again"),
        "{}",
        err.message()
    );
    for chunk in &got {
        assert_eq!(Digest::of(&chunk.data).0.to_vec(), chunk.digest, "a wrong byte was served");
    }
    assert!(got.len() < digests.len());
    let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    assert_eq!(rows[0].phase(), pb::Phase::Failed);
    assert!(rows[0].reason.contains("source changed"), "{}", rows[0].reason);
}

/// `aq region set`: a region's new link budget reaches its open watch in the next push, and the
/// relay's limiter uses it for the streams that follow (the old one would hold them for minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_budget_is_pushed_to_the_region_and_used_by_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let model = noise(8 << 20, 5);
    let (hub, mut admin, _) = hub_with(tmp.path(), &[("model.safetensors", &model), ("config.json", b"{}")]).await;
    let slow = 64 << 10;
    let mut eu = spoke_of(&hub, &mut admin, "eu", slow).await;
    let req = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: vec!["eu".into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(req).await.unwrap();
    let mut watch = eu
        .watch(pb::WatchRequest { node: "node-1".into(), peer_address: String::new(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().budget_bytes_per_sec, slow);
    let wire =
        eu.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner();
    let manifest = Manifest::try_from(wire).unwrap();
    let config = manifest.files.iter().find(|f| f.path == "config.json").unwrap().chunks[0].digest;
    // A first stream makes the relay hold eu's budget, at the slow rate.
    let (got, err) = fetch(&mut eu, "llama", 1, &[config]).await;
    assert!(err.is_none() && got.len() == 1, "{err:?}");

    // Unknown regions, a zero rate and a caller that is not the admin are refused.
    let set = |name: &str, rate| pb::UpdateRegionRequest {
        name: name.into(),
        rate_bytes_per_sec: rate,
        ..Default::default()
    };
    expect_err(admin.update_region(set("mars", 1 << 20)).await, Code::NotFound, &["mars", "aq region add"]);
    expect_err(admin.update_region(set("eu", 0)).await, Code::InvalidArgument, &["above 0"]);
    let fast = 256 << 20;
    let region = admin.update_region(set("eu", fast)).await.unwrap().into_inner();
    assert_eq!((region.name.as_str(), region.rate_bytes_per_sec), ("eu", fast));
    assert_eq!(region.members.len(), 1, "the live spoke is listed");
    let listed = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    assert_eq!(listed[0].rate_bytes_per_sec, fast, "stored");

    // Pushed to the open watch (its periodic re-check comes only after 30 s).
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.budget_bytes_per_sec, fast);
    assert_eq!(next.assignments.len(), 1);

    // The next stream runs at the new rate: 8 MiB at 64 KiB/s would take over 90 s.
    let digests: Vec<Digest> = manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect();
    let started = std::time::Instant::now();
    let (got, err) = fetch(&mut eu, "llama", 1, &digests).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), digests.len());
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "the relay still used the old budget: {:?}",
        started.elapsed()
    );
}

/// The region's certificate is not enough to speak for a node: a report counts only with the
/// session of that node's open watch, and a second watch cannot take a live name. Refused
/// calls change nothing in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_counts_only_for_its_own_open_watch() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin, v1) = hub_with(tmp.path(), &[("config.json", b"{}")]).await;
    let mut eu = spoke_of(&hub, &mut admin, "eu", 1 << 30).await;
    let req = pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: vec!["eu".into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(req).await.unwrap();
    let watch_as = |node: &str| pb::WatchRequest {
        node: node.into(),
        peer_address: format!("{node}.test:7443"),
        ..Default::default()
    };
    let mut watch = eu.watch(watch_as("node-1")).await.unwrap().into_inner();
    let session = watch.message().await.unwrap().unwrap().session;

    // A second watch in node-1's name, from the same region's certificate: refused, and the
    // first keeps the name.
    expect_err(
        eu.watch(watch_as("node-1")).await,
        Code::AlreadyExists,
        &["\"node-1\" is already a live member", "--node"],
    );
    let regions = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    assert_eq!(regions[0].members, [pb::Member { node: "node-1".into(), peer_address: "node-1.test:7443".into() }]);

    let status = |admin: &mut pb::admin_client::AdminClient<Channel>| {
        let mut admin = admin.clone();
        async move { admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner() }
    };
    let before = status(&mut admin).await;
    let ready = |node: &str, session: &str| pb::ProgressReport {
        dataset: "llama".into(),
        version: 1,
        cached_bytes: v1.bytes,
        phase: pb::Phase::Ready.into(),
        node: node.into(),
        session: session.into(),
        ..Default::default()
    };
    // No session, a made-up one, the live node's for a node that does not exist.
    expect_err(eu.report_progress(ready("node-1", "")).await, Code::PermissionDenied, &["session", "nothing changed"]);
    let forged = "0".repeat(32);
    expect_err(eu.report_progress(ready("node-1", &forged)).await, Code::PermissionDenied, &["session"]);
    expect_err(
        eu.report_progress(ready("ghost", &session)).await,
        Code::PermissionDenied,
        &["\"ghost\" is not a live member"],
    );
    let cache = pb::CacheReport { node: "node-1".into(), memory_used_bytes: 1, ..Default::default() };
    expect_err(eu.report_cache(cache.clone()).await, Code::PermissionDenied, &["session"]);
    let after = status(&mut admin).await;
    assert_eq!(after.rows[0].phase(), pb::Phase::Pending);
    assert_eq!(
        (after.rows[0].phase(), after.rows[0].cached_bytes, after.rows[0].active, &after.rows[0].nodes),
        (before.rows[0].phase(), before.rows[0].cached_bytes, before.rows[0].active, &before.rows[0].nodes),
        "a refused report changed the status"
    );
    assert!(after.caches.is_empty());

    // With its session, node-1's reports count.
    eu.report_cache(pb::CacheReport { session: session.clone(), ..cache }).await.unwrap();
    eu.report_progress(pb::ProgressReport {
        phase: pb::Phase::Transferring.into(),
        cached_bytes: 1,
        ..ready("node-1", &session)
    })
    .await
    .unwrap();
    let now = status(&mut admin).await;
    assert_eq!((now.rows[0].phase(), now.caches.len()), (pb::Phase::Transferring, 1));

    // The watch ends: node-1's session is worth nothing any more, its reports are forgotten.
    drop(watch);
    for _ in 0..100 {
        let regions = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
        if regions[0].members.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_err(eu.report_progress(ready("node-1", &session)).await, Code::PermissionDenied, &["not a live member"]);
    let now = status(&mut admin).await;
    assert_ne!(now.rows[0].phase(), pb::Phase::Ready, "a stale report made the region Ready");
    assert!(now.caches.is_empty(), "a member that left still shows its cache");
}

/// The source changes after eu holds v1 whole (Ready, active): eu keeps v1 and serves it, a
/// spoke that joins eu later does not take it back, and the version fails only in us, where
/// it was not whole yet, with the reason naming the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_fails_the_version_only_where_it_is_not_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let model = noise(3 << 20, 21);
    let (hub, mut admin, v1) = hub_with(tmp.path(), &[("model.safetensors", &model)]).await;
    let models = tmp.path().join("models/llama");
    let mut eu = spoke_of(&hub, &mut admin, "eu", 1 << 30).await;
    let mut us = spoke_of(&hub, &mut admin, "us", 1 << 30).await;
    let rollout = |region: &str| pb::RolloutRequest {
        dataset: "llama".into(),
        version: 1,
        regions: vec![region.into()],
        mode: Default::default(),
        ..Default::default()
    };
    admin.rollout(rollout("eu")).await.unwrap();
    let watch_as = |node: &str| pb::WatchRequest {
        node: node.into(),
        peer_address: format!("{node}.test:7443"),
        ..Default::default()
    };
    let mut watch = eu.watch(watch_as("eu-1")).await.unwrap().into_inner();
    let session = watch.message().await.unwrap().unwrap().session;
    let report = |node: &str, session: &str, phase: pb::Phase| pb::ProgressReport {
        dataset: "llama".into(),
        version: 1,
        cached_bytes: if phase == pb::Phase::Ready { v1.bytes } else { 0 },
        phase: phase.into(),
        node: node.into(),
        session: session.into(),
        ..Default::default()
    };
    eu.report_progress(report("eu-1", &session, pb::Phase::Ready)).await.unwrap();
    let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    assert_eq!((rows[0].phase(), rows[0].active), (pb::Phase::Ready, true));

    // The file changes in place; us is asked for v1 and reads it.
    let mut changed = model.clone();
    changed[1 << 20..].copy_from_slice(&noise(2 << 20, 77));
    std::fs::write(models.join("model.safetensors"), &changed).unwrap();
    admin.rollout(rollout("us")).await.unwrap();
    let wire =
        us.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 1 }).await.unwrap().into_inner();
    let digests: Vec<Digest> =
        Manifest::try_from(wire).unwrap().distinct_chunks().into_iter().map(|(d, _)| d).collect();
    let (_, err) = fetch(&mut us, "llama", 1, &digests).await;
    assert_eq!(err.expect("the changed source fails the fetch").code(), Code::DataLoss);

    // A second spoke joins eu and is still on its way.
    let mut watch2 = eu.watch(watch_as("eu-2")).await.unwrap().into_inner();
    let session2 = watch2.message().await.unwrap().unwrap().session;
    eu.report_progress(report("eu-2", &session2, pb::Phase::Transferring)).await.unwrap();
    eu.report_progress(pb::ProgressReport {
        reason: "source changed".into(),
        ..report("eu-2", &session2, pb::Phase::Failed)
    })
    .await
    .unwrap();

    let rows = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner().rows;
    let seen: Vec<(&str, pb::Phase, bool)> = rows.iter().map(|r| (r.region.as_str(), r.phase(), r.active)).collect();
    assert_eq!(seen, [("eu", pb::Phase::Ready, true), ("us", pb::Phase::Failed, false)]);
    assert_eq!(rows[0].cached_bytes, v1.bytes, "eu's row moved");
    assert!(
        rows[1].reason.contains("source changed") && rows[1].reason.contains("llama/model.safetensors"),
        "the reason names the object: {}",
        rows[1].reason
    );
    let nodes: Vec<(&str, pb::Phase)> = rows[0].nodes.iter().map(|n| (n.node.as_str(), n.phase())).collect();
    assert_eq!(
        nodes,
        [("eu-1", pb::Phase::Ready), ("eu-2", pb::Phase::Failed)],
        "each spoke's own progress shows per node"
    );
    // eu's spokes are still told to serve v1 (a spoke that watches now hears it first thing).
    let mut watch3 = eu.watch(watch_as("eu-3")).await.unwrap().into_inner();
    let first = watch3.message().await.unwrap().unwrap();
    let flags: Vec<(u64, bool, bool)> = first.assignments.iter().map(|a| (a.version, a.ready, a.active)).collect();
    assert_eq!(flags, [(1, true, true)]);
    let regions = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    assert_eq!(regions.iter().find(|r| r.name == "eu").unwrap().members.len(), 3);
    drop(watch2);
    drop(watch);
}

/// The relay keeps versions' indexes within `limits.index_cache`: with room for about one,
/// regions reading two versions in turn get every chunk, each index read again from the
/// database when it was let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_past_the_index_cache_are_indexed_again_not_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("a.bin"), noise(3 << 20, 1)).unwrap();
    let hub = TestHub::init_with(&tmp.path().join("hub"), "127.0.0.1:0".parse().unwrap(), &[], |c| {
        c.limits.index_cache = aqueduct_proto::Size(2048);
    })
    .await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", tmp.path().join("models").display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();
    snapshot(&mut admin, "llama").await.unwrap();
    // v2 adds a file (v1's bytes stay readable in the source).
    std::fs::write(models.join("b.bin"), noise(3 << 20, 2)).unwrap();
    snapshot(&mut admin, "llama").await.unwrap();
    let mut eu = spoke_of(&hub, &mut admin, "eu", 1 << 30).await;
    for version in [1, 2] {
        let rollout =
            pb::RolloutRequest { dataset: "llama".into(), version, regions: vec!["eu".into()], ..Default::default() };
        admin.rollout(rollout).await.unwrap();
    }
    let mut digests = BTreeMap::new();
    for version in [1u64, 2] {
        let wire = admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version }).await.unwrap();
        let manifest = Manifest::try_from(wire.into_inner()).unwrap();
        digests.insert(version, manifest.distinct_chunks().into_iter().map(|(d, _)| d).collect::<Vec<_>>());
    }
    for version in [1u64, 2, 1, 2] {
        let (got, error) = fetch(&mut eu, "llama", version, &digests[&version]).await;
        assert!(error.is_none(), "v{version}: {error:?}");
        assert_eq!(got.len(), digests[&version].len());
        assert!(got.iter().all(|c| Digest::of(&c.data).0.to_vec() == c.digest), "v{version}: a chunk not its digest");
    }
}
