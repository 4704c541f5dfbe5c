//! Watched datasets over real mutual TLS, with a `file://` source: a watch is validated when
//! set, checked with no command typed (a new object cuts a version, an unchanged source cuts
//! nothing), a source that fails is recorded and the next check succeeds once it is back, and
//! a restarted hub knows the last check (it does not check again at once).

mod common;

use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use common::{dataset, expect_err, source};
use tonic::Code;
use tonic::transport::Channel;

type Admin = pb::admin_client::AdminClient<Channel>;

fn watch_every(ms: u64) -> pb::UpdateDatasetRequest {
    pb::UpdateDatasetRequest {
        name: "llama".into(),
        watch: Some(pb::DatasetWatch { every_ms: ms, ..Default::default() }),
        ..Default::default()
    }
}

async fn watch_of(admin: &mut Admin) -> pb::DatasetWatch {
    let list = admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap().into_inner();
    list.datasets.into_iter().find(|d| d.name == "llama").unwrap().watch.expect("llama is watched")
}

async fn versions(admin: &mut Admin) -> usize {
    let req = pb::ListVersionsRequest { dataset: "llama".into() };
    admin.list_versions(req).await.unwrap().into_inner().versions.len()
}

/// Waits (generously: this checks what happens, not how soon) for a check after `after`
/// (unix ms) whose result satisfies `done`; returns the watch.
async fn check_after(admin: &mut Admin, after: i64, done: impl Fn(&pb::DatasetWatch) -> bool) -> pb::DatasetWatch {
    let mut last = None;
    for _ in 0..1200 {
        let w = watch_of(admin).await;
        if w.last_check_unix_ms > after && done(&w) {
            return w;
        }
        last = Some(w);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no check as expected; the last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_dataset_is_checked_with_no_command_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    let files = root.join("llama");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("config.json"), b"{}").unwrap();
    // The floor lowered so that the test can check every second.
    let mut hub = TestHub::init_with(&tmp.path().join("hub"), "127.0.0.1:0".parse().unwrap(), &[], |c| {
        c.triggers.min_interval = Duration::from_secs(1);
    })
    .await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", root.display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();

    // Refused, with why; nothing is set.
    expect_err(admin.update_dataset(watch_every(500)).await, Code::InvalidArgument, &["at most every 1s"]);
    let cron = |text: &str, zone: &str| pb::UpdateDatasetRequest {
        name: "llama".into(),
        watch: Some(pb::DatasetWatch { cron: text.into(), time_zone: zone.into(), ..Default::default() }),
        ..Default::default()
    };
    expect_err(admin.update_dataset(cron("0 0 * 13 *", "")).await, Code::InvalidArgument, &["month field \"13\""]);
    expect_err(admin.update_dataset(cron("0 0 30 2 *", "")).await, Code::InvalidArgument, &["never matches"]);
    expect_err(admin.update_dataset(cron("@daily", "Nowhere/City")).await, Code::InvalidArgument, &["IANA"]);
    let both = pb::UpdateDatasetRequest {
        watch: Some(pb::DatasetWatch { every_ms: 5000, cron: "* * * * *".into(), ..Default::default() }),
        ..watch_every(0)
    };
    expect_err(admin.update_dataset(both).await, Code::InvalidArgument, &["not both"]);
    let mut to_nowhere = watch_every(1000);
    to_nowhere.watch.as_mut().unwrap().rollout_regions = vec!["nowhere".into()];
    expect_err(admin.update_dataset(to_nowhere).await, Code::NotFound, &["region \"nowhere\" does not exist"]);
    let list = admin.list_datasets(pb::ListDatasetsRequest {}).await.unwrap().into_inner();
    assert!(list.datasets[0].watch.is_none());

    // Watched every second: the first check cuts v1 at once.
    let set = admin.update_dataset(watch_every(1000)).await.unwrap().into_inner();
    let w = set.watch.expect("the answer shows the watch");
    assert_eq!((w.every_ms, w.last_check_unix_ms), (1000, 0));
    assert_eq!(set.outside_links, "fail", "a watch leaves the other options as they are");
    let first = check_after(&mut admin, 0, |w| w.last_result == "cut v1").await;
    assert!(!first.last_failed);

    // Unchanged: later checks cut nothing.
    let w = check_after(&mut admin, first.last_check_unix_ms, |_| true).await;
    assert_eq!(w.last_result, "unchanged (v1)");
    assert_eq!(versions(&mut admin).await, 1, "an unchanged source cuts nothing");

    // A new object: a new version.
    std::fs::write(files.join("model.safetensors"), vec![7u8; 200_000]).unwrap();
    let cut = check_after(&mut admin, w.last_check_unix_ms, |w| w.last_result != "unchanged (v1)").await;
    assert_eq!(cut.last_result, "cut v2");
    assert_eq!(versions(&mut admin).await, 2);

    // The source goes away: the failure is recorded, and the next check once it is back
    // succeeds.
    let away = tmp.path().join("models.away");
    std::fs::rename(&root, &away).unwrap();
    let failed = check_after(&mut admin, cut.last_check_unix_ms, |w| w.last_failed).await;
    println!("while the source was away: {}", failed.last_result);
    assert!(failed.last_result.starts_with("failed: ") && failed.last_result.contains("models"), "{failed:?}");
    std::fs::rename(&away, &root).unwrap();
    let back = check_after(&mut admin, failed.last_check_unix_ms, |w| !w.last_failed).await;
    assert_eq!(back.last_result, "unchanged (v2)");
    assert_eq!(versions(&mut admin).await, 2);

    // Checked every hour from now on: a restarted hub knows the last check and waits an hour
    // from it, rather than checking at once.
    admin.update_dataset(watch_every(3_600_000)).await.unwrap();
    // A check that was under way as the watch changed records itself first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hourly = watch_of(&mut admin).await;
    let last = hourly.last_check_unix_ms;
    assert!(last >= back.last_check_unix_ms);
    hub.restart().await;
    let mut admin = hub.admin().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = watch_of(&mut admin).await;
    assert_eq!(after.last_check_unix_ms, last, "no check right after the restart");
    assert_eq!(after.next_check_unix_ms, last + 3_600_000);
    assert_eq!(after.last_result, hourly.last_result);

    // No watch.
    let off = pb::UpdateDatasetRequest { name: "llama".into(), unwatch: true, ..Default::default() };
    assert!(admin.update_dataset(off).await.unwrap().into_inner().watch.is_none());
}
