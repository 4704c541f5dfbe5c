//! The version lifecycle through the admin and spoke APIs, over real mutual TLS: cut-over
//! policies, promote, rollback (at once where the version is whole, as a new rollout where it
//! is not), tags, retention and gc, and the deletes (refused while something uses the object,
//! accepted after; a removed region's credentials stop working at once).

mod common;

use std::time::Duration;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::admin_client::AdminClient;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_testkit::hub::TestHub;
use common::{dataset, expect_err, snapshot, source};
use tonic::Code;
use tonic::transport::Channel;

/// A hub with dataset `llama` (one file, rewritten before each snapshot) and `versions` of it.
async fn hub_with_versions(tmp: &std::path::Path, versions: u64) -> (TestHub, AdminClient<Channel>) {
    let models = tmp.join("models/llama");
    std::fs::create_dir_all(&models).unwrap();
    let hub = TestHub::init(&tmp.join("hub")).await;
    let mut admin = hub.admin().await;
    admin.add_source(source("local", &format!("file://{}", tmp.join("models").display()), &[])).await.unwrap();
    admin.add_dataset(dataset("llama", "local", "llama")).await.unwrap();
    for n in 1..=versions {
        std::fs::write(models.join("weights.bin"), format!("weights of version {n}").repeat(100)).unwrap();
        assert_eq!(snapshot(&mut admin, "llama").await.unwrap().version, n);
    }
    (hub, admin)
}

/// One spoke of a region, with its open watch.
struct Spoke {
    client: SpokeClient<Channel>,
    watch: tonic::Streaming<pb::Assignments>,
    session: String,
    node: String,
}

impl Spoke {
    async fn join(hub: &TestHub, admin: &mut AdminClient<Channel>, region: &str) -> Self {
        let req = pb::AddRegionRequest {
            region: Some(pb::Region { name: region.into(), rate_bytes_per_sec: 1 << 30, ..Default::default() }),
        };
        admin.add_region(req).await.unwrap();
        let node = format!("{region}-1");
        let mut client = hub.node_client(region, &node).await;
        let req = pb::WatchRequest { node: node.clone(), peer_address: String::new(), ..Default::default() };
        let mut watch = client.watch(req).await.unwrap().into_inner();
        let session = watch.message().await.unwrap().unwrap().session;
        Spoke { client, watch, session, node }
    }

    /// A cache report (what the spoke uses: nothing).
    async fn report_cache(&mut self) {
        let cache = pb::CacheReport { node: self.node.clone(), session: self.session.clone(), ..Default::default() };
        self.client.report_cache(cache).await.unwrap();
    }

    async fn ready(&mut self, version: u64) {
        let report = pb::ProgressReport {
            dataset: "llama".into(),
            version,
            cached_bytes: 1,
            phase: pb::Phase::Ready.into(),
            node: self.node.clone(),
            session: self.session.clone(),
            ..Default::default()
        };
        self.client.report_progress(report).await.unwrap();
    }

    /// The next assignments that satisfy `until` (the watch pushes on every change).
    async fn until(&mut self, what: &str, until: impl Fn(&pb::Assignments) -> bool) -> pb::Assignments {
        let wait = async {
            loop {
                let a = self.watch.message().await.unwrap().expect("the watch ended");
                if until(&a) {
                    return a;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap_or_else(|_| panic!("never pushed: {what}"))
    }
}

fn active(a: &pb::Assignments) -> Vec<u64> {
    a.assignments.iter().filter(|a| a.active).map(|a| a.version).collect()
}

async fn rollout(admin: &mut AdminClient<Channel>, version: u64, regions: &[&str], cut_over: pb::CutOver) {
    let req = pb::RolloutRequest {
        dataset: "llama".into(),
        version,
        regions: regions.iter().map(|r| r.to_string()).collect(),
        cut_over: cut_over.into(),
        ..Default::default()
    };
    admin.rollout(req).await.unwrap();
}

/// (region, version, previous) of what each region serves.
async fn serving(admin: &mut AdminClient<Channel>) -> Vec<(String, u64, u64)> {
    let status = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    status.serving.into_iter().map(|s| (s.region, s.version, s.previous)).collect()
}

fn served(list: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    list.iter().map(|(r, v, p)| (r.to_string(), *v, *p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_switches_every_region_back_at_once_and_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_versions(tmp.path(), 2).await;
    let mut eu = Spoke::join(&hub, &mut admin, "eu").await;
    let mut us = Spoke::join(&hub, &mut admin, "us").await;
    for v in [1, 2] {
        rollout(&mut admin, v, &["eu", "us"], pb::CutOver::AllReady).await;
        eu.ready(v).await;
        assert!(!serving(&mut admin).await.iter().any(|s| s.1 == v), "v{v} served before us was Ready");
        us.ready(v).await;
    }
    assert_eq!(serving(&mut admin).await, served(&[("eu", 2, 1), ("us", 2, 1)]));
    eu.until("v2 active", |a| active(a) == [2]).await;

    let back = admin.rollback(pb::RollbackRequest { dataset: "llama".into(), ..Default::default() }).await.unwrap();
    let steps: Vec<_> = back.into_inner().regions.into_iter().map(|r| (r.region, r.from, r.to, r.switched)).collect();
    assert_eq!(steps, [("eu".into(), 2, 1, true), ("us".into(), 2, 1, true)], "both whole: both switch at once");
    assert_eq!(serving(&mut admin).await, served(&[("eu", 1, 2), ("us", 1, 2)]));
    let pushed = eu.until("v1 active again", |a| active(a) == [1]).await;
    assert!(pushed.assignments.iter().all(|a| a.retained), "v1 and v2 are both retained: {pushed:?}");
    // It holds: a late Ready report of v2 does not take the region forward again.
    us.ready(2).await;
    assert_eq!(serving(&mut admin).await, served(&[("eu", 1, 2), ("us", 1, 2)]));
    // Rolling back again goes to what was served before: forward to v2, in eu only.
    let req = pb::RollbackRequest { dataset: "llama".into(), regions: vec!["eu".into()], ..Default::default() };
    admin.rollback(req).await.unwrap();
    assert_eq!(serving(&mut admin).await, served(&[("eu", 2, 1), ("us", 1, 2)]));
    // Nothing to go back to, or a version that does not exist: refused, nothing changes.
    let req = pb::RollbackRequest { dataset: "llama".into(), to: 9, ..Default::default() };
    expect_err(admin.rollback(req).await, Code::FailedPrecondition, &["llama@v9 no longer exists"]);
    let req = pb::RollbackRequest { dataset: "llama".into(), regions: vec!["ap".into()], ..Default::default() };
    expect_err(admin.rollback(req).await, Code::FailedPrecondition, &["ap serves no version of llama"]);
    assert_eq!(serving(&mut admin).await, served(&[("eu", 2, 1), ("us", 1, 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_region_switches_each_region_and_manual_waits_for_promote() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_versions(tmp.path(), 3).await;
    let mut eu = Spoke::join(&hub, &mut admin, "eu").await;
    let mut us = Spoke::join(&hub, &mut admin, "us").await;
    rollout(&mut admin, 1, &["eu", "us"], pb::CutOver::PerRegion).await;
    eu.ready(1).await;
    assert_eq!(serving(&mut admin).await, served(&[("eu", 1, 0)]), "eu switched alone");
    us.ready(1).await;
    assert_eq!(serving(&mut admin).await, served(&[("eu", 1, 0), ("us", 1, 0)]));

    rollout(&mut admin, 2, &["eu", "us"], pb::CutOver::Manual).await;
    eu.ready(2).await;
    us.ready(2).await;
    assert_eq!(serving(&mut admin).await, served(&[("eu", 1, 0), ("us", 1, 0)]), "manual: Ready is not enough");
    let req = pb::PromoteRequest { dataset: "llama".into(), version: 2, regions: vec!["eu".into()] };
    let steps = admin.promote(req).await.unwrap().into_inner().regions;
    assert_eq!((steps[0].switched, steps[0].from, steps[0].to), (true, 1, 2));
    assert_eq!(serving(&mut admin).await, served(&[("eu", 2, 1), ("us", 1, 0)]));
    eu.until("v2 active in eu", |a| active(a) == [2]).await;

    // Promoted before it is Ready: waits, and switches once Ready.
    rollout(&mut admin, 3, &["us"], pb::CutOver::Manual).await;
    let req = pb::PromoteRequest { dataset: "llama".into(), version: 3, regions: Vec::new() };
    let steps = admin.promote(req).await.unwrap().into_inner().regions;
    assert!(!steps[0].switched && steps[0].note.contains("not Ready in us"), "{steps:?}");
    let status = admin.status(pb::StatusRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    let row = status.rows.iter().find(|r| r.version == 3).unwrap();
    assert!(row.promote_pending && row.cut_over() == pb::CutOver::Manual, "{row:?}");
    us.ready(3).await;
    assert_eq!(serving(&mut admin).await, served(&[("eu", 2, 1), ("us", 3, 1)]));
    // Promote names a region the version is not rolled out to: refused.
    let req = pb::PromoteRequest { dataset: "llama".into(), version: 3, regions: vec!["eu".into()] };
    expect_err(
        admin.promote(req).await,
        Code::FailedPrecondition,
        &["not rolled out to eu", "aq rollout llama@v3 --to eu"],
    );
}

/// A rollback to a version the region never held is a rollout of it, served once Ready; the
/// region's spokes see a new generation of the assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_version_the_region_lacks_rolls_it_out_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_versions(tmp.path(), 2).await;
    let mut us = Spoke::join(&hub, &mut admin, "us").await;
    rollout(&mut admin, 2, &["us"], pb::CutOver::AllReady).await;
    us.ready(2).await;
    assert_eq!(serving(&mut admin).await, served(&[("us", 2, 0)]));
    let req = pb::RollbackRequest { dataset: "llama".into(), to: 1, ..Default::default() };
    let steps = admin.rollback(req).await.unwrap().into_inner().regions;
    assert!(!steps[0].switched && steps[0].note.contains("never rolled out to us"), "{steps:?}");
    assert_eq!(serving(&mut admin).await, served(&[("us", 2, 0)]), "not whole: still v2 until v1 is Ready");
    let a = us.until("v1 assigned", |a| a.assignments.iter().any(|a| a.version == 1)).await;
    let v1 = a.assignments.iter().find(|a| a.version == 1).unwrap();
    assert!(!v1.ready && !v1.active && v1.retained && v1.generation > 0, "{v1:?}");
    us.ready(1).await;
    assert_eq!(serving(&mut admin).await, served(&[("us", 1, 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_listed_sent_to_the_regions_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_versions(tmp.path(), 2).await;
    let mut eu = Spoke::join(&hub, &mut admin, "eu").await;
    rollout(&mut admin, 1, &["eu"], pb::CutOver::AllReady).await;
    let tag =
        |name: &str, version| pb::TagRequest { dataset: "llama".into(), name: name.into(), version, remove: false };
    let set = admin.tag(tag("stable", 1)).await.unwrap().into_inner();
    assert_eq!((set.tag.unwrap().version, set.previous_version), (1, 0));
    let pushed = eu.until("the tag", |a| a.tags.iter().any(|t| t.name == "stable")).await;
    assert_eq!(pushed.tags.iter().map(|t| (t.name.as_str(), t.version)).collect::<Vec<_>>(), [("stable", 1)]);
    let moved = admin.tag(tag("stable", 2)).await.unwrap().into_inner();
    assert_eq!(moved.previous_version, 1);
    eu.until("the tag moved", |a| a.tags.iter().any(|t| t.name == "stable" && t.version == 2)).await;
    let list = admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    assert_eq!(list.versions[1].tags, ["stable"]);
    assert!(list.versions[1].retained_by.contains(&"tag stable".to_string()), "{:?}", list.versions[1]);
    for bad in ["v3", "latest", "Stable", "-x"] {
        expect_err(admin.tag(tag(bad, 1)).await, Code::InvalidArgument, &["tag name", bad]);
    }
    expect_err(admin.tag(tag("canary", 7)).await, Code::NotFound, &["llama@v7"]);
    let remove = pb::TagRequest { remove: true, ..tag("stable", 0) };
    assert_eq!(admin.tag(remove.clone()).await.unwrap().into_inner().previous_version, 2);
    expect_err(admin.tag(remove).await, Code::NotFound, &["no tag \"stable\""]);
}

/// keep = 2 of five versions: gc removes what nothing retains (a tag, the newest two, what a
/// region serves and served before, what a spoke reports in use keep theirs), and a dry run
/// says exactly what the real run then removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_only_what_nothing_retains_and_dry_run_says_what_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_versions(tmp.path(), 6).await;
    let update = pb::UpdateDatasetRequest { name: "llama".into(), keep_versions: Some(2), ..Default::default() };
    assert_eq!(admin.update_dataset(update).await.unwrap().into_inner().keep_versions, 2);
    let mut eu = Spoke::join(&hub, &mut admin, "eu").await;
    for v in [1, 2] {
        rollout(&mut admin, v, &["eu"], pb::CutOver::AllReady).await;
        eu.ready(v).await;
    }
    admin
        .tag(pb::TagRequest { dataset: "llama".into(), name: "stable".into(), version: 3, remove: false })
        .await
        .unwrap();
    // A mount on eu-1 uses v4 (rolled out there, failed since: only the mount keeps it).
    rollout(&mut admin, 4, &["eu"], pb::CutOver::AllReady).await;
    let report = pb::ProgressReport {
        dataset: "llama".into(),
        version: 4,
        phase: pb::Phase::Failed.into(),
        reason: "disk full".into(),
        node: eu.node.clone(),
        session: eu.session.clone(),
        ..Default::default()
    };
    eu.client.report_progress(report).await.unwrap();
    let in_use = pb::VersionInUse { dataset: "llama".into(), version: 4, user: "mount /mnt/llama".into() };
    let cache = pb::CacheReport {
        node: eu.node.clone(),
        session: eu.session.clone(),
        in_use: vec![in_use],
        ..Default::default()
    };
    eu.client.report_cache(cache).await.unwrap();

    let list = admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    let why: Vec<(u64, Vec<String>)> = list.versions.iter().map(|v| (v.version, v.retained_by.clone())).collect();
    assert_eq!(
        why,
        [
            (1, vec!["kept for rollback in eu".to_string()]),
            (2, vec!["served in eu".into()]),
            (3, vec!["tag stable".into()]),
            (4, vec!["in use on eu/eu-1: mount /mnt/llama".into()]),
            (5, vec!["newest 2".into()]),
            (6, vec!["newest 2".into()]),
        ]
    );
    // Nothing retains anything else yet: gc has nothing to do.
    let dry = admin.gc(pb::GcRequest { dry_run: true, dataset: String::new() }).await.unwrap().into_inner();
    assert!(dry.versions.is_empty(), "{dry:?}");
    // The mount goes; the tag moves to v6: v3 and v4 go.
    let cache = pb::CacheReport { node: eu.node.clone(), session: eu.session.clone(), ..Default::default() };
    eu.client.report_cache(cache).await.unwrap();
    admin
        .tag(pb::TagRequest { dataset: "llama".into(), name: "stable".into(), version: 6, remove: false })
        .await
        .unwrap();
    let dry = admin.gc(pb::GcRequest { dry_run: true, dataset: "llama".into() }).await.unwrap().into_inner();
    let planned: Vec<u64> = dry.versions.iter().map(|v| v.version).collect();
    assert_eq!(planned, [3, 4]);
    assert!(dry.dry_run && dry.versions.iter().all(|v| v.bytes > 0));
    let freed: Vec<(String, u64)> = dry.regions.iter().map(|r| (r.region.clone(), r.bytes)).collect();
    assert!(freed.len() == 1 && freed[0].0 == "eu" && freed[0].1 > 0, "v4 was rolled out to eu: {freed:?}");
    assert_eq!(
        admin
            .list_versions(pb::ListVersionsRequest { dataset: "llama".into() })
            .await
            .unwrap()
            .into_inner()
            .versions
            .len(),
        6,
        "a dry run removed something"
    );
    let real = admin.gc(pb::GcRequest { dry_run: false, dataset: "llama".into() }).await.unwrap().into_inner();
    assert_eq!(real.versions, dry.versions, "the real run removed something else than the dry run said");
    let left = admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner();
    assert_eq!(left.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 5, 6]);
    // v4 is no longer assigned to eu; its spokes drop it.
    eu.until("v4 gone", |a| !a.assignments.iter().any(|a| a.version == 4)).await;
    expect_err(
        admin.get_manifest(pb::GetManifestRequest { dataset: "llama".into(), version: 4 }).await,
        Code::NotFound,
        &["v4"],
    );
    // A new snapshot gets a new number, never one that was removed.
    std::fs::write(tmp.path().join("models/llama/weights.bin"), b"seven").unwrap();
    assert_eq!(snapshot(&mut admin, "llama").await.unwrap().version, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_refused_while_used_and_name_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut admin) = hub_with_versions(tmp.path(), 3).await;
    let mut eu = Spoke::join(&hub, &mut admin, "eu").await;
    rollout(&mut admin, 1, &["eu"], pb::CutOver::AllReady).await;
    eu.ready(1).await;
    let rm = |name: &str, force| pb::RemoveRequest { name: name.into(), force };
    let rm_version = |version, force| pb::RemoveVersionRequest { dataset: "llama".into(), version, force };

    // Until the spoke said what it uses, nothing that removes versions goes ahead.
    expect_err(admin.remove_version(rm_version(2, true)).await, Code::Unavailable, &["eu/eu-1", "have not reported"]);
    let gc = pb::GcRequest { dry_run: false, dataset: String::new() };
    expect_err(admin.gc(gc).await, Code::Unavailable, &["eu/eu-1"]);
    eu.report_cache().await;
    expect_err(admin.remove_source(rm("local", false)).await, Code::FailedPrecondition, &["used by dataset llama"]);
    expect_err(admin.remove_version(rm_version(3, true)).await, Code::FailedPrecondition, &["newest version"]);
    expect_err(admin.remove_version(rm_version(1, true)).await, Code::FailedPrecondition, &["served in eu"]);
    admin.tag(pb::TagRequest { dataset: "llama".into(), name: "old".into(), version: 2, remove: false }).await.unwrap();
    expect_err(
        admin.remove_version(rm_version(2, false)).await,
        Code::FailedPrecondition,
        &["tag old", "newest 3", "--force"],
    );
    admin.remove_version(rm_version(2, true)).await.unwrap();
    let tags =
        admin.list_versions(pb::ListVersionsRequest { dataset: "llama".into() }).await.unwrap().into_inner().tags;
    assert!(tags.is_empty(), "the tag of a removed version stayed: {tags:?}");

    // A rollout served in a region is not cancelled; one that is not, is.
    let cancel = |version| pb::CancelRolloutRequest { dataset: "llama".into(), version, regions: Vec::new() };
    expect_err(admin.cancel_rollout(cancel(1)).await, Code::FailedPrecondition, &["eu serves llama@v1", "aq rollback"]);
    rollout(&mut admin, 3, &["eu"], pb::CutOver::Manual).await;
    assert_eq!(admin.cancel_rollout(cancel(3)).await.unwrap().into_inner().regions, ["eu"]);

    expect_err(
        admin.remove_dataset(rm("llama", false)).await,
        Code::FailedPrecondition,
        &["rolled out (v1 to eu)", "--force"],
    );
    expect_err(admin.remove_region(rm("eu", false)).await, Code::FailedPrecondition, &["holds llama@v1", "--force"]);

    // The region goes: its open watch ends, and its certificate no longer reads anything.
    let summary = admin.remove_region(rm("eu", true)).await.unwrap().into_inner().summary;
    assert!(summary.contains("region eu"), "{summary}");
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match eu.watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the removed region's watch stayed open");
    let status = ended.expect_err("the watch ended without an error");
    assert!(status.message().contains("was removed"), "{status:?}");
    let req = pb::GetManifestRequest { dataset: "llama".into(), version: 1 };
    assert_eq!(eu.client.get_manifest(req).await.unwrap_err().code(), Code::PermissionDenied);
    let req = pb::WatchRequest { node: "eu-2".into(), peer_address: String::new(), ..Default::default() };
    let again = hub.node_client("eu", "eu-2").await.watch(req).await;
    let refused = match again {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.expect_err("a removed region watched again"),
    };
    assert!(refused.message().contains("was removed"), "{refused:?}");

    let summary = admin.remove_dataset(rm("llama", false)).await.unwrap().into_inner().summary;
    assert!(summary.contains("2 versions"), "{summary}");
    admin.remove_source(rm("local", false)).await.unwrap();
    expect_err(admin.remove_source(rm("local", false)).await, Code::NotFound, &["local"]);
}
