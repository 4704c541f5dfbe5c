//! The store's test suite, run on both engines: records round-trip, references and duplicates
//! are refused, rollouts follow the lifecycle rules, two hubs on one PostgreSQL database agree,
//! and every older SQLite schema is migrated.
//!
//! [`on_both_engines!`] runs a test twice, as `NAME::sqlite` (in memory) and `NAME::postgres`
//! (a fresh database on a real PostgreSQL server, `aqueduct_testkit::postgres`); inside it,
//! [`fresh_store`] gives a store of the engine under test.
//!
//! The file is some 650 lines long: one suite, which every engine passes.

use std::cell::{Cell, RefCell};

use std::collections::BTreeMap;

use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest, Phase, ReplicationMode};

use super::meta::SqlStore;
use super::schema::SCHEMA_VERSION;
use super::sql::{Kind, PostgresTarget};
use super::*;
use crate::rollout::cutover::CutOver;
use crate::rollout::{RegionProgress, RolloutKey, VersionId};
use aqueduct_proto::domain::class::Class;

fn manifest(dataset: &str, content: &[u8]) -> Manifest {
    let file = FileEntry {
        path: "a.bin".into(),
        object: "p/a.bin".into(),
        size: content.len() as u64,
        mode: 0o644,
        mtime_unix_ms: 5,
        chunks: vec![ChunkRef { digest: Digest::of(content), offset: 0, length: content.len() as u32 }],
    };
    Manifest::new(dataset.into(), 0, ChunkerParams::DEFAULT, vec![file]).unwrap()
}

fn cut(stamps: BTreeMap<String, SourceStamp>, created_unix_ms: i64) -> VersionCut {
    VersionCut { stamps, new_bytes: 3, bytes_read: 3, created_unix_ms, skipped: Vec::new() }
}

thread_local! {
    /// The engine the test on this thread runs on.
    static ENGINE: Cell<Kind> = const { Cell::new(Kind::Sqlite) };
    /// The PostgreSQL databases of the test on this thread, dropped when it ends.
    static DATABASES: RefCell<Vec<aqueduct_testkit::postgres::TestDatabase>> = const { RefCell::new(Vec::new()) };
}

/// Runs `test` with [`fresh_store`] giving stores of `kind`.
pub(crate) fn on_engine(kind: Kind, test: fn()) {
    ENGINE.set(kind);
    test();
    DATABASES.take();
}

/// Runs a store test on both engines: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_engines {
    ($(#[doc = $doc:literal])* fn $name:ident() $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run() $body

            #[test]
            fn sqlite() {
                $crate::store::tests::on_engine($crate::store::sql::Kind::Sqlite, run);
            }

            #[test]
            fn postgres() {
                $crate::store::tests::on_engine($crate::store::sql::Kind::Postgres, run);
            }
        }
    };
}
pub(crate) use on_both_engines;

/// An empty store of the engine under test (SQLite in memory outside [`on_both_engines!`]).
pub(crate) fn fresh_store() -> SqlStore {
    match ENGINE.get() {
        Kind::Sqlite => SqlStore::in_memory().unwrap(),
        Kind::Postgres => {
            let db = aqueduct_testkit::postgres::database();
            let store = SqlStore::postgres(&target(&db)).unwrap();
            DATABASES.with_borrow_mut(|d| d.push(db));
            store
        }
    }
}

/// Where a test database is, as the hub's config would say it.
fn target(db: &aqueduct_testkit::postgres::TestDatabase) -> PostgresTarget {
    PostgresTarget { url: db.url(), password: Some(db.password().to_string()), connections: 4, ca_pem: None }
}

/// A store (of the engine under test) with source `s` and dataset `d` (prefix `p`): the
/// fixture of every store-backed unit test.
pub(crate) fn store_with_dataset() -> SqlStore {
    with_dataset(fresh_store())
}

/// Source `s` and dataset `d` in `store`.
fn with_dataset(store: SqlStore) -> SqlStore {
    store
        .add_source(&SourceRecord {
            name: "s".into(),
            url: "file:///x".into(),
            options: BTreeMap::new(),
            created_unix_ms: 1,
        })
        .unwrap();
    store
        .add_dataset(&DatasetRecord {
            name: "d".into(),
            source: "s".into(),
            prefix: "p".into(),
            created_unix_ms: 2,
            latest_version: 0,
            outside_links: OutsideLinks::Fail,
            keep_versions: 0,
        })
        .unwrap();
    store
}

on_both_engines! {
    fn versions_round_trip_and_number_up() {
        let store = store_with_dataset();
        let stamps =
            BTreeMap::from([("a.bin".to_string(), SourceStamp { size: 3, mtime_unix_ms: 5, etag: Some("e".into()) })]);
        let v1 = store.insert_version(0, &manifest("d", b"abc"), &cut(stamps.clone(), 10)).unwrap();
        assert_eq!(v1.number, 1);
        let v2 = store.insert_version(1, &manifest("d", b"xyz"), &cut(stamps.clone(), 11)).unwrap();
        assert_eq!(v2.number, 2);
        let latest = store.version("d", None).unwrap().unwrap();
        assert_eq!(latest.record, v2);
        assert_eq!(latest.manifest.version, 2);
        assert_eq!(latest.manifest.root, manifest("d", b"xyz").root);
        assert_eq!(latest.stamps, stamps);
        assert_eq!(store.version("d", Some(1)).unwrap().unwrap().manifest.files[0].chunks[0].digest, Digest::of(b"abc"));
        assert!(store.version("d", Some(3)).unwrap().is_none());
        assert_eq!(store.datasets().unwrap()[0].latest_version, 2);
        assert_eq!(store.versions("d").unwrap().len(), 2);
    }
}

on_both_engines! {
    fn stale_snapshots_conflict_and_leave_nothing() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        let err = store.insert_version(0, &manifest("d", b"xyz"), &cut(BTreeMap::new(), 11)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { latest: 1, .. }), "{err}");
        assert_eq!(store.versions("d").unwrap().len(), 1);
    }
}

on_both_engines! {
    fn duplicates_and_dangling_references_are_refused() {
        let store = store_with_dataset();
        let err = store
            .add_source(&SourceRecord {
                name: "s".into(),
                url: "file:///y".into(),
                options: BTreeMap::new(),
                created_unix_ms: 1,
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { kind: "source", .. }));
        let err = store
            .add_dataset(&DatasetRecord {
                name: "e".into(),
                source: "nope".into(),
                prefix: "".into(),
                created_unix_ms: 2,
                latest_version: 0,
                outside_links: OutsideLinks::Fail,
                keep_versions: 0,
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "source", .. }));
    }
}

on_both_engines! {
    fn rollouts_need_known_regions_and_versions_and_are_idempotent() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        for (name, rate) in [("eu", 100), ("us", 50)] {
            store.add_region(&RegionRecord { name: name.into(), rate, created_unix_ms: 1, schedule: None }).unwrap();
        }
        assert!(matches!(
            store.add_region(&RegionRecord { name: "eu".into(), rate: 1, created_unix_ms: 1, schedule: None }),
            Err(StoreError::AlreadyExists { kind: "region", .. })
        ));
        let err = store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into(), "mars".into()],
                ReplicationMode::Auto,
                CutOver::AllReady,
                Class::Normal,
                20,
            )
            .unwrap_err();
        assert!(matches!(&err, StoreError::NotFound { kind: "region", name } if name == "mars"), "{err}");
        assert!(store.rollouts(None).unwrap().is_empty(), "a failed rollout wrote rows");
        let err = store
            .add_rollout(
                &VersionId::new("d", 2),
                &["eu".into()],
                ReplicationMode::Auto,
                CutOver::AllReady,
                Class::Normal,
                20,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "version", .. }), "{err}");

        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into(), "us".into()],
                ReplicationMode::Auto,
                CutOver::AllReady,
                Class::Normal,
                20,
            )
            .unwrap();
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into()],
                ReplicationMode::Region,
                CutOver::AllReady,
                Class::Normal,
                30,
            )
            .unwrap();
        let rows = store.rollouts(Some("d")).unwrap();
        assert_eq!(rows.len(), 2);
        // Asked again, a region takes the new mode.
        assert_eq!((rows[0].mode, rows[1].mode), (ReplicationMode::Region, ReplicationMode::Auto));
        assert_eq!(
            (rows[0].region.as_str(), rows[0].phase.as_str(), rows[0].total_bytes, rows[0].budget),
            ("eu", "Pending", 3, 100)
        );
        assert_eq!(rows[0].updated_unix_ms, 20, "a repeated rollout reset the region's state");
        assert_eq!(rows[1].budget, 50);
        assert!(store.rollouts(Some("other")).unwrap().is_empty());
        // A region's budget changes in place; an unknown region is NotFound.
        store.set_region_rate("us", 75).unwrap();
        assert_eq!(store.rollouts(Some("d")).unwrap()[1].budget, 75);
        assert_eq!(store.regions().unwrap()[1].rate, 75);
        let err = store.set_region_rate("mars", 1).unwrap_err();
        assert!(matches!(&err, StoreError::NotFound { kind: "region", name } if name == "mars"), "{err}");
        // A schedule is kept with its time zone; a flat rate set later takes its place.
        let schedule =
            RegionSchedule { text: "mon-fri 08:00-20:00 20MiB/s; 200MiB/s".into(), time_zone: "Europe/Berlin".into() };
        store.set_region_schedule("us", &schedule).unwrap();
        assert_eq!(store.regions().unwrap()[1].schedule.as_ref(), Some(&schedule));
        assert_eq!(store.regions().unwrap()[0].schedule, None);
        store.set_region_rate("us", 80).unwrap();
        assert_eq!((store.regions().unwrap()[1].rate, store.regions().unwrap()[1].schedule.clone()), (80, None));
        assert!(matches!(store.set_region_schedule("mars", &schedule), Err(StoreError::NotFound { .. })));
    }
}

#[test]
fn a_schema_1_database_gains_replication_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let store = with_dataset(SqlStore::open(&path).unwrap());
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        store.add_region(&RegionRecord { name: "eu".into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into()],
                ReplicationMode::Region,
                CutOver::AllReady,
                Class::Normal,
                20,
            )
            .unwrap();
        // Back to what schema 1 was.
        store
            .conn()
            .execute_batch(
                "ALTER TABLE rollouts DROP COLUMN mode; DROP TABLE skipped_objects;
                 ALTER TABLE datasets DROP COLUMN outside_links;
                 ALTER TABLE rollouts DROP COLUMN added_ms; ALTER TABLE rollouts DROP COLUMN ready_ms;
                 UPDATE meta SET value = '1' WHERE key = 'schema_version';",
            )
            .unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_10).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_6).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_5).unwrap();
    }
    let store = SqlStore::open(&path).unwrap();
    let rows = store.rollouts(None).unwrap();
    assert_eq!((rows.len(), rows[0].mode), (1, ReplicationMode::Auto));
    let version: String =
        store.conn().query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string(), "migrated step by step to this build's schema");
}

on_both_engines! {
    fn skipped_objects_and_link_policies_are_kept() {
        let store = store_with_dataset();
        assert_eq!(store.dataset("d").unwrap().unwrap().outside_links, OutsideLinks::Fail);
        store.set_outside_links("d", OutsideLinks::Skip).unwrap();
        assert_eq!(store.dataset("d").unwrap().unwrap().outside_links, OutsideLinks::Skip);
        let err = store.set_outside_links("nope", OutsideLinks::Skip).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "dataset", .. }), "{err}");
        let skipped = vec![
            SkippedObject { key: "p/./x".into(), reason: "a '.' segment".into() },
            SkippedObject { key: "p/etc".into(), reason: "outside".into() },
        ];
        let v1 = store
            .insert_version(0, &manifest("d", b"abc"), &VersionCut { skipped: skipped.clone(), ..cut(BTreeMap::new(), 1) })
            .unwrap();
        assert_eq!(v1.skipped, skipped);
        store.insert_version(1, &manifest("d", b"xyz"), &cut(BTreeMap::new(), 2)).unwrap();
        assert_eq!(store.version("d", Some(1)).unwrap().unwrap().record.skipped, skipped);
        assert!(store.version("d", None).unwrap().unwrap().record.skipped.is_empty());
        let versions = store.versions("d").unwrap();
        assert_eq!((versions[0].skipped.len(), versions[1].skipped.len()), (2, 0));
        assert!("sometimes".parse::<OutsideLinks>().unwrap_err().contains("fail or skip"));
    }
}

#[test]
fn a_schema_2_database_gains_link_policies_and_skipped_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let store = with_dataset(SqlStore::open(&path).unwrap());
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        // Back to what schema 2 was.
        store
            .conn()
            .execute_batch(
                "DROP TABLE skipped_objects; ALTER TABLE datasets DROP COLUMN outside_links;
                 ALTER TABLE rollouts DROP COLUMN added_ms; ALTER TABLE rollouts DROP COLUMN ready_ms;
                 UPDATE meta SET value = '2' WHERE key = 'schema_version';",
            )
            .unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_10).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_6).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_5).unwrap();
    }
    let store = SqlStore::open(&path).unwrap();
    let d = store.dataset("d").unwrap().unwrap();
    assert_eq!((d.outside_links, d.latest_version), (OutsideLinks::Fail, 1));
    assert!(store.versions("d").unwrap()[0].skipped.is_empty());
    let skipped = vec![SkippedObject { key: "p/x".into(), reason: "r".into() }];
    let v2 = store
        .insert_version(1, &manifest("d", b"xyz"), &VersionCut { skipped: skipped.clone(), ..cut(BTreeMap::new(), 11) })
        .unwrap();
    assert_eq!(store.version("d", Some(v2.number)).unwrap().unwrap().record.skipped, skipped);
    let version: String =
        store.conn().query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
    // A database from a newer hub is refused, named.
    store.conn().execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
    drop(store);
    let err = SqlStore::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::Schema { found: 99 }), "{err}");
}

/// A schema 3 database (no activation columns) is migrated: a row that was Ready is Ready
/// since its last update, the others never were; new rows record when they were added.
#[test]
fn a_schema_3_database_remembers_which_regions_were_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let store = with_dataset(SqlStore::open(&path).unwrap());
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        for name in ["eu", "us"] {
            store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
        }
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into(), "us".into()],
                ReplicationMode::Auto,
                CutOver::AllReady,
                Class::Normal,
                20,
            )
            .unwrap();
        store.update_rollout(&update("eu", "Ready", 3, 30)).unwrap();
        store.update_rollout(&update("us", "Transferring", 1, 31)).unwrap();
        // Back to what schema 3 was.
        store
            .conn()
            .execute_batch(
                "ALTER TABLE rollouts DROP COLUMN added_ms; ALTER TABLE rollouts DROP COLUMN ready_ms;
                 UPDATE meta SET value = '3' WHERE key = 'schema_version';",
            )
            .unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_13).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_10).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_6).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_5).unwrap();
    }
    let store = SqlStore::open(&path).unwrap();
    let rows = store.rollouts(None).unwrap();
    let seen: Vec<(&str, &str, i64, Option<i64>)> =
        rows.iter().map(|r| (r.region.as_str(), r.phase.as_str(), r.added_unix_ms, r.ready_unix_ms)).collect();
    assert_eq!(seen, [("eu", "Ready", 0, Some(30)), ("us", "Transferring", 0, None)]);
    let version: String =
        store.conn().query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
    // And it works on: us becomes Ready later, and a newer schema is refused.
    store.update_rollout(&update("us", "Ready", 3, 40)).unwrap();
    assert_eq!(store.rollouts(None).unwrap()[1].ready_unix_ms, Some(40));
    store.conn().execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
    drop(store);
    assert!(matches!(SqlStore::open(&path), Err(StoreError::Schema { found: 99 })));
}

/// What schema 10 added, taken away again (to make a database of an earlier schema).
const UNDO_SCHEMA_10: &str = "ALTER TABLE rollouts DROP COLUMN class;";

/// What schema 13 added, taken away again (to make a database of an earlier schema).
const UNDO_SCHEMA_13: &str = "ALTER TABLE skipped_objects DROP COLUMN seq;";

/// What schema 6 added, taken away again (to make a database of an earlier schema).
const UNDO_SCHEMA_6: &str = "ALTER TABLE regions DROP COLUMN schedule; ALTER TABLE regions DROP COLUMN time_zone;";

/// What schema 5 added, taken away again (to make a database of an earlier schema).
const UNDO_SCHEMA_5: &str =
    "ALTER TABLE rollouts DROP COLUMN cut_over; ALTER TABLE rollouts DROP COLUMN promote_pending;
     ALTER TABLE datasets DROP COLUMN keep_versions; DROP TABLE tags; DROP TABLE serving; DROP TABLE retired;";

fn update(region: &str, phase: &str, cached: u64, now: i64) -> RolloutUpdate {
    let phase: Phase = phase.parse().unwrap();
    RolloutUpdate {
        key: RolloutKey::new("d", 1, region),
        progress: RegionProgress {
            phase,
            cached_bytes: cached,
            reason: if phase == Phase::Failed { "a reason".into() } else { String::new() },
            rate: 5,
        },
        updated_unix_ms: now,
    }
}

on_both_engines! {
    /// Ready once, Ready for good: later reports (a spoke that joined, one that failed) and a
    /// source that changed do not take it back; the version fails where it was not whole yet.
    fn a_region_that_was_ready_keeps_the_version_and_only_the_others_fail() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        for name in ["ap", "eu", "us"] {
            store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
        }
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into(), "us".into()],
                ReplicationMode::Auto,
                CutOver::AllReady,
                Class::Normal,
                20,
            )
            .unwrap();
        store.update_rollout(&update("eu", "Ready", 3, 30)).unwrap();
        store.update_rollout(&update("eu", "Transferring", 1, 35)).unwrap();
        store.update_rollout(&update("eu", "Failed", 0, 36)).unwrap();
        store.update_rollout(&update("us", "Transferring", 1, 37)).unwrap();
        // Asked again (another mode): when it was added does not change.
        store
            .add_rollout(
                &VersionId::new("d", 1),
                &["eu".into(), "ap".into()],
                ReplicationMode::Region,
                CutOver::AllReady,
                Class::Normal,
                50,
            )
            .unwrap();
        let rows = store.rollouts(None).unwrap();
        let seen: Vec<(&str, &str, u64, i64, Option<i64>)> = rows
            .iter()
            .map(|r| (r.region.as_str(), r.phase.as_str(), r.cached_bytes, r.added_unix_ms, r.ready_unix_ms))
            .collect();
        assert_eq!(
            seen,
            [("ap", "Pending", 0, 50, None), ("eu", "Ready", 3, 20, Some(30)), ("us", "Transferring", 1, 20, None)]
        );
        let failed = store.fail_version(&VersionId::new("d", 1), "source changed: p/a.bin", 60).unwrap();
        assert_eq!(failed, ["ap", "us"]);
        let rows = store.rollouts(None).unwrap();
        let seen: Vec<(&str, &str, &str)> =
            rows.iter().map(|r| (r.region.as_str(), r.phase.as_str(), r.reason.as_str())).collect();
        assert_eq!(
            seen,
            [("ap", "Failed", "source changed: p/a.bin"), ("eu", "Ready", ""), ("us", "Failed", "source changed: p/a.bin")]
        );
    }
}

#[test]
fn reopening_a_file_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let store = SqlStore::open(&path).unwrap();
        store
            .add_source(&SourceRecord {
                name: "s".into(),
                url: "file:///x".into(),
                options: BTreeMap::new(),
                created_unix_ms: 1,
            })
            .unwrap();
    }
    let store = SqlStore::open(&path).unwrap();
    assert_eq!(store.sources().unwrap().len(), 1);
}

/// A schema 4 database recomputed what each region served from its rows: the upgrade records
/// exactly that, so no region changes what it serves when the hub is upgraded.
#[test]
fn a_schema_4_database_keeps_what_each_region_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let store = with_dataset(SqlStore::open(&path).unwrap());
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        store.insert_version(1, &manifest("d", b"abcd"), &cut(BTreeMap::new(), 11)).unwrap();
        for name in ["eu", "us"] {
            store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
        }
        let regions = ["eu".to_string(), "us".to_string()];
        store
            .add_rollout(&VersionId::new("d", 1), &regions, ReplicationMode::Auto, CutOver::AllReady, Class::Normal, 20)
            .unwrap();
        store
            .add_rollout(&VersionId::new("d", 2), &regions, ReplicationMode::Auto, CutOver::AllReady, Class::Normal, 20)
            .unwrap();
        for (region, version) in [("eu", 1), ("us", 1), ("eu", 2)] {
            let mut u = update(region, "Ready", 3, 30);
            u.key.version = version;
            store.update_rollout(&u).unwrap();
        }
        store
            .conn()
            .execute_batch("DELETE FROM serving; UPDATE meta SET value = '4' WHERE key = 'schema_version';")
            .unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_13).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_10).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_6).unwrap();
        store.conn().execute_batch(UNDO_SCHEMA_5).unwrap();
    }
    let store = SqlStore::open(&path).unwrap();
    let serving: Vec<(String, u64, u64)> =
        store.serving(None).unwrap().into_iter().map(|s| (s.region, s.version, s.previous)).collect();
    assert_eq!(serving, [("eu".to_string(), 1, 0), ("us".to_string(), 1, 0)], "v2 is not Ready in us: v1 everywhere");
    assert!(store.rollouts(None).unwrap().iter().all(|r| r.cut_over == CutOver::AllReady && !r.promote_pending));
}

on_both_engines! {
    /// A rollout's class is kept per region, taken by a region asked again, and changed alone
    /// (a rollout behind its deadline is raised) without touching the row's progress.
    fn a_rollouts_class_is_kept_taken_again_and_raised() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        for name in ["eu", "us"] {
            store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
        }
        let v1 = VersionId::new("d", 1);
        let both = ["eu".to_string(), "us".to_string()];
        store.add_rollout(&v1, &both, ReplicationMode::Auto, CutOver::AllReady, Class::Background, 20).unwrap();
        store.update_rollout(&update("eu", "Transferring", 2, 30)).unwrap();
        let classes = |store: &SqlStore| -> Vec<(String, Class)> {
            store.rollouts(None).unwrap().into_iter().map(|r| (r.region, r.class)).collect()
        };
        assert_eq!(classes(&store), [("eu".into(), Class::Background), ("us".into(), Class::Background)]);

        let before = store.set_rollout_class(&RolloutKey::new("d", 1, "eu"), Class::Normal).unwrap();
        assert_eq!(before, Class::Background);
        assert_eq!(classes(&store), [("eu".into(), Class::Normal), ("us".into(), Class::Background)]);
        let eu = store.rollouts(None).unwrap().into_iter().find(|r| r.region == "eu").unwrap();
        assert_eq!((eu.phase, eu.cached_bytes), (Phase::Transferring, 2), "a raise keeps the row's progress");

        store.add_rollout(&v1, &["us".into()], ReplicationMode::Auto, CutOver::AllReady, Class::Urgent, 40).unwrap();
        assert_eq!(classes(&store), [("eu".into(), Class::Normal), ("us".into(), Class::Urgent)]);

        let missing = store.set_rollout_class(&RolloutKey::new("d", 2, "eu"), Class::Urgent).unwrap_err();
        assert!(matches!(&missing, StoreError::NotFound { kind: "rollout", .. }), "{missing}");
    }
}

/// Two hubs on one PostgreSQL database, each with its own pool, race for the same rows: every
/// call either does its work or says why not (a conflict the transaction saw, never a raw
/// serialization error), and no update is lost.
#[test]
fn two_hubs_on_one_postgres_database_agree() {
    let db = aqueduct_testkit::postgres::database();
    let hubs = [SqlStore::postgres(&target(&db)).unwrap(), SqlStore::postgres(&target(&db)).unwrap()];
    let store = with_dataset(SqlStore::postgres(&target(&db)).unwrap());
    store.add_region(&RegionRecord { name: "eu".into(), rate: 1, created_unix_ms: 1, schedule: None }).unwrap();
    const VERSIONS: u64 = 12;
    const ADDS: u64 = 40;
    std::thread::scope(|scope| {
        for hub in &hubs {
            scope.spawn(move || {
                // Snapshots racing for the next number: each number is cut exactly once.
                loop {
                    let latest = hub.dataset("d").unwrap().unwrap().latest_version;
                    if latest >= VERSIONS {
                        break;
                    }
                    match hub.insert_version(latest, &manifest("d", &latest.to_be_bytes()), &cut(BTreeMap::new(), 1)) {
                        Ok(record) => assert_eq!(record.number, latest + 1),
                        Err(StoreError::Conflict { latest: now, .. }) => assert!(now > latest),
                        Err(e) => panic!("a racing snapshot failed: {e}"),
                    }
                }
            });
        }
    });
    let numbers: Vec<u64> = store.versions("d").unwrap().iter().map(|v| v.number).collect();
    assert_eq!(numbers, (1..=VERSIONS).collect::<Vec<_>>());
    store
        .add_rollout(
            &VersionId::new("d", 1),
            &["eu".into()],
            ReplicationMode::Auto,
            CutOver::AllReady,
            Class::Normal,
            1,
        )
        .unwrap();
    let key = RolloutKey::new("d", 1, "eu".to_string());
    std::thread::scope(|scope| {
        for hub in &hubs {
            let key = &key;
            scope.spawn(move || {
                for _ in 0..ADDS {
                    hub.add_relayed(key, 3).unwrap();
                }
            });
        }
    });
    assert_eq!(store.rollouts(Some("d")).unwrap()[0].relayed_bytes, 2 * ADDS * 3, "no increment was lost");
}
