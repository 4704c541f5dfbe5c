//! Deadlines and plans through the hub's admin API, served for real over mutual TLS: a plan
//! per region at once (a deadline a second away is missed, a day away met), `dry_run` writes
//! nothing, the deadline and ETA show in the status, and the hub's deadline watch raises the
//! class of a rollout behind its deadline (outcomes, never timings).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use aqueduct_testkit::noise;
use common::{dataset, expect_err, snapshot, source};
use tonic::Code;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_planned_at_once_kept_shown_and_raises_the_class_when_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(models.join("llama")).unwrap();
    // 6 MiB at 1 MiB/s: some 6 s, with no spoke to fetch it (the plan does not need one).
    std::fs::write(models.join("llama/model.safetensors"), noise(6 << 20, 9)).unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", models.display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama/")).await.unwrap();
    let v1 = snapshot(&mut admin, "llama").await.unwrap();
    let region = pb::Region { name: "eu".into(), rate_bytes_per_sec: 1 << 20, ..Default::default() };
    admin.add_region(pb::AddRegionRequest { region: Some(region) }).await.unwrap();
    let rollout = |deadline: i64, dry_run: bool| pb::RolloutRequest {
        dataset: "llama".into(),
        regions: vec!["eu".into()],
        deadline_unix_ms: deadline,
        dry_run,
        ..Default::default()
    };
    let status = |rows: Vec<pb::StatusRow>| rows.into_iter().next();

    // A dry run: the plan, and nothing written.
    let plan = admin.rollout(rollout(now_ms() + 1_000, true)).await.unwrap().into_inner();
    assert!(plan.dry_run);
    let eu = &plan.plans[0];
    assert_eq!((eu.region.as_str(), eu.version_bytes, eu.held_bytes, eu.bytes), ("eu", v1.bytes, 0, v1.bytes));
    assert_eq!(eu.budget_bytes_per_sec, 1 << 20);
    assert!(!eu.meets_deadline, "6 MiB at 1 MiB/s met a deadline a second away: {eu:?}");
    let rows = admin.status(pb::StatusRequest::default()).await.unwrap().into_inner().rows;
    assert!(rows.is_empty(), "a dry run started a rollout: {rows:?}");
    let day = now_ms() + 86_400_000;
    let plan = admin.rollout(rollout(day, true)).await.unwrap().into_inner();
    assert!(plan.plans[0].meets_deadline, "a day away was missed: {:?}", plan.plans[0]);
    assert!(plan.plans[0].eta_unix_ms > now_ms(), "{:?}", plan.plans[0]);

    expect_err(admin.rollout(rollout(now_ms() - 60_000, false)).await, Code::InvalidArgument, &["already past"]);

    // Started with a deadline a day away: it is kept, and the ETA shows while under way.
    let started = admin.rollout(rollout(day, false)).await.unwrap().into_inner();
    assert!(!started.dry_run && started.plans[0].meets_deadline);
    let row = status(admin.status(pb::StatusRequest::default()).await.unwrap().into_inner().rows).unwrap();
    assert_eq!(row.deadline_unix_ms, day);
    assert!(row.eta_unix_ms > 0 && row.eta_unix_ms < day, "{row:?}");
    assert_eq!((row.class(), row.class_raised_unix_ms), (pb::RolloutClass::Normal, 0));

    // Again, as background, a second away: reported as missed at start, the rollout starts
    // anyway, and the deadline watch raises its class a step at a time (to urgent) once its
    // ETA is past the deadline.
    let mut again = rollout(now_ms() + 1_000, false);
    again.class = pb::RolloutClass::Background.into();
    let started = admin.rollout(again).await.unwrap().into_inner();
    assert!(!started.plans[0].meets_deadline, "{:?}", started.plans[0]);
    let mut row = None;
    for _ in 0..300 {
        let now = status(admin.status(pb::StatusRequest::default()).await.unwrap().into_inner().rows).unwrap();
        if now.class() == pb::RolloutClass::Urgent {
            row = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = row.expect("the deadline watch never raised the rollout to urgent");
    assert!(row.class_raised_unix_ms > 0, "{row:?}");
    assert!(row.eta_unix_ms > row.deadline_unix_ms, "raised while on time: {row:?}");
}
