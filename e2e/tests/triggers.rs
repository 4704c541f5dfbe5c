//! Watched datasets end to end: a hub watching an S3 source every second, spokes of two regions
//! over real mutual TLS. A new object in the source becomes a new version and reaches Ready in
//! both regions with no command typed (no snapshot or rollout call in the audit log); an
//! unchanged source cuts nothing.

use std::time::{Duration, Instant};

use aqueduct_e2e::{SourceKind, assert_store_holds, world};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::noise;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_object_in_a_watched_source_reaches_ready_with_no_command_typed() {
    let mut w = world(SourceKind::S3).await;
    w.hub.config.triggers.min_interval = Duration::from_secs(1);
    w.restart_hub().await;
    std::fs::write(w.data.join("config.json"), b"{\"hidden_size\": 4096}").unwrap();
    std::fs::write(w.data.join("model.safetensors"), noise(6 << 20, 31)).unwrap();
    let eu = w.region("eu", 1 << 30).await;
    let us = w.region("us", 1 << 30).await;
    w.start_spoke(&eu);
    w.start_spoke(&us);

    let started = Instant::now();
    let watch = pb::DatasetWatch {
        every_ms: 1000,
        rollout_regions: vec!["eu".into(), "us".into()],
        rollout_cut_over: pb::CutOver::PerRegion.into(),
        rollout_class: pb::RolloutClass::Background.into(),
        ..Default::default()
    };
    let set = pb::UpdateDatasetRequest { name: "llama".into(), watch: Some(watch), ..Default::default() };
    w.admin.update_dataset(set).await.unwrap();
    let rows = w.wait_ready(1).await;
    println!("v1 cut and Ready in {:?} after the watch was set", started.elapsed());
    assert_eq!(rows.iter().map(|r| r.region.as_str()).collect::<Vec<_>>(), ["eu", "us"]);
    assert!(rows.iter().all(|r| r.cut_over() == pb::CutOver::PerRegion), "the watch's cut-over: {rows:?}");
    assert!(rows.iter().all(|r| r.class() == pb::RolloutClass::Background), "the watch's class: {rows:?}");

    // Unchanged: the checks that follow cut nothing.
    let watched = |w: &mut aqueduct_e2e::World| {
        let mut admin = w.admin.clone();
        async move {
            let list = admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap().into_inner();
            list.datasets.into_iter().find(|d| d.name == "llama").unwrap().watch.unwrap()
        }
    };
    let first = watched(&mut w).await;
    let mut later = first.clone();
    for _ in 0..600 {
        later = watched(&mut w).await;
        if later.last_check_unix_ms > first.last_check_unix_ms && later.last_result.starts_with("unchanged") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(later.last_result, "unchanged (v1)");
    let versions = w.admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap();
    assert_eq!(versions.into_inner().versions.len(), 1, "an unchanged source cuts nothing");

    // A new object: v2, rolled out and Ready in both regions.
    let added = Instant::now();
    std::fs::write(w.data.join("tokenizer.json"), noise(500 << 10, 32)).unwrap();
    let rows = w.wait_ready(2).await;
    println!("v2 (a new object) cut and Ready in {:?} after the object was written", added.elapsed());
    assert_eq!(rows.len(), 2);
    let m2 = w.manifest(2).await;
    assert!(m2.files.iter().any(|f| f.path == "tokenizer.json"), "v2 holds the new object");
    for region in ["eu", "us"] {
        assert_store_holds(&w.root.join(format!("spoke-{region}/store")), &m2, &w.data);
    }
    let now = watched(&mut w).await;
    assert!(
        ["cut v2, rolled out to eu,us", "unchanged (v2)"].contains(&now.last_result.as_str()),
        "{}",
        now.last_result
    );

    // No one typed a snapshot or a rollout.
    let audit = w.admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    let calls: Vec<&str> = audit.iter().map(|e| e.call.as_str()).collect();
    let set = audit.iter().find(|e| e.call == "UpdateDataset").expect("the watch was set by an admin");
    assert!(set.args.contains("watch: every_ms=1000") && set.args.contains("\"eu\", \"us\""), "{}", set.args);
    assert!(!calls.iter().any(|c| *c == "Snapshot" || *c == "Rollout"), "{calls:?}");
}
