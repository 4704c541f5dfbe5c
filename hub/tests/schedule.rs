//! A region's budget over the week, over real mutual TLS: a schedule set at run time is
//! checked (a clear error for a bad one), the budget in force and its next change show in
//! `ListRegions`, and the region's watch is sent the new budget when the window changes.

mod common;

use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_testkit::hub::TestHub;
use common::expect_err;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_is_checked_shown_and_pushed_when_its_window_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::init(&tmp.path().join("hub")).await;
    let mut admin = hub.admin().await;
    hub.add_region("eu", 5 * MIB).await;
    let set = |schedule: &str, time_zone: &str| pb::UpdateRegionRequest {
        name: "eu".into(),
        schedule: schedule.into(),
        time_zone: time_zone.into(),
        ..Default::default()
    };

    // Bad schedules are refused with what was wrong, and change nothing.
    expect_err(
        admin.update_region(set("mon-fri 08:00-20:00 1MiB/s", "")).await,
        Code::InvalidArgument,
        &["must end with a rate alone"],
    );
    expect_err(
        admin.update_region(set("someday 1MiB/s; 2MiB/s", "")).await,
        Code::InvalidArgument,
        &["\"someday\" is not a day"],
    );
    expect_err(
        admin.update_region(set("2MiB/s", "Mars/Olympus")).await,
        Code::InvalidArgument,
        &["not a time zone", "IANA"],
    );
    let both = pb::UpdateRegionRequest { rate_bytes_per_sec: MIB, ..set("2MiB/s", "") };
    expect_err(admin.update_region(both).await, Code::InvalidArgument, &["not both"]);
    let listed = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    assert_eq!((listed[0].budget_now_bytes_per_sec, listed[0].schedule.as_str()), (5 * MIB, ""));

    // A window that opens at the next minute (UTC): 7 MiB/s until then, 3 MiB/s from then.
    if now_ms() % 60_000 > 55_000 {
        tokio::time::sleep(Duration::from_millis((61_000 - now_ms() % 60_000) as u64)).await;
    }
    let boundary = now_ms() / 60_000 * 60_000 + 60_000;
    let minute = |ms: i64| format!("{:02}:{:02}", ms / 3_600_000 % 24, ms / 60_000 % 60);
    let window = format!("daily {}-{} 3MiB/s; 7MiB/s", minute(boundary), minute(boundary + 60_000));
    let region = admin.update_region(set(&window, "UTC")).await.unwrap().into_inner();
    assert_eq!(region.time_zone, "UTC");
    assert_eq!(region.budget_now_bytes_per_sec, 7 * MIB);
    assert_eq!((region.next_change_unix_ms, region.next_budget_bytes_per_sec), (boundary, 3 * MIB));
    let listed = admin.list_regions(pb::ListRegionsRequest {}).await.unwrap().into_inner().regions;
    assert_eq!(listed[0].schedule, region.schedule, "kept as the hub read it: {}", region.schedule);

    // The region's watch: the budget in force, then the next window's when it opens.
    let mut spoke = hub.node_client("eu", "node-1").await;
    let watch = pb::WatchRequest { node: "node-1".into(), peer_address: String::new(), ..Default::default() };
    let mut watch = spoke.watch(watch).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!((first.budget_bytes_per_sec, first.budget_next_change_unix_ms), (7 * MIB, boundary));
    let next = tokio::time::timeout(Duration::from_secs(120), watch.message()).await.unwrap().unwrap().unwrap();
    let at = now_ms();
    println!("the window opened at {boundary}; the watch was sent its budget at {at} ({} ms after)", at - boundary);
    assert!(at >= boundary, "the new budget came before its window");
    assert_eq!(next.budget_bytes_per_sec, 3 * MIB);
    assert_eq!(next.budget_next_change_unix_ms, boundary + 60_000);

    // A flat rate replaces the schedule.
    let flat = pb::UpdateRegionRequest { name: "eu".into(), rate_bytes_per_sec: 9 * MIB, ..Default::default() };
    let region = admin.update_region(flat).await.unwrap().into_inner();
    assert_eq!(
        (region.budget_now_bytes_per_sec, region.schedule.as_str(), region.next_change_unix_ms),
        (9 * MIB, "", 0)
    );
}
