//! Watched datasets ([`WatchStore`]): each watch's cadence and the rollout that follows a new
//! version, as an admin set them, and how its last check went, kept in table `watches`
//! (schema 10) so that a restarted hub knows when it last looked. A watch goes with its
//! dataset (`ON DELETE CASCADE`). Its SQL (both engines) is here too. What a watch means
//! (parsing, when to check, what a check does) is `crate::triggers`'.

use super::StoreError;
use super::meta::SqlStore;
use super::sql::args;
use crate::rollout::cutover::CutOver;
use aqueduct_proto::ReplicationMode;
use aqueduct_proto::domain::class::Class;

/// The rollout that follows a version a watch cut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoRollout {
    /// None: the version is only cut.
    pub regions: Vec<String>,
    pub mode: ReplicationMode,
    pub cut_over: CutOver,
    /// The rollout's class.
    pub class: Class,
}

/// A watch as an admin set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    pub dataset: String,
    /// Milliseconds between checks, or 0 with `cron`.
    pub every_ms: u64,
    /// A cron expression (empty with `every_ms`).
    pub cron: String,
    /// The IANA zone `cron` is read in.
    pub time_zone: String,
    pub rollout: AutoRollout,
}

/// A watch with how its last check went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRecord {
    pub config: WatchConfig,
    /// When the watch was last set.
    pub updated_unix_ms: i64,
    /// When its last check started (`None`: never checked).
    pub last_check_unix_ms: Option<i64>,
    /// What the last check found (`crate::triggers::watch::CheckOutcome`'s text).
    pub last_result: String,
    pub last_failed: bool,
}

pub trait WatchStore {
    /// Sets a dataset's watch (replacing its cadence and rollout; the last check stays).
    /// `NotFound` if there is no such dataset.
    fn set_watch(&self, watch: &WatchConfig, now_unix_ms: i64) -> Result<(), StoreError>;
    /// Stops watching a dataset; false if it was not watched.
    fn remove_watch(&self, dataset: &str) -> Result<bool, StoreError>;
    /// Every watch, by dataset.
    fn watches(&self) -> Result<Vec<WatchRecord>, StoreError>;
    /// Records a check of a watched dataset (nothing if it is no longer watched).
    fn record_check(&self, dataset: &str, at_unix_ms: i64, result: &str, failed: bool) -> Result<(), StoreError>;
}

impl WatchStore for SqlStore {
    fn set_watch(&self, w: &WatchConfig, now_unix_ms: i64) -> Result<(), StoreError> {
        let every = i64::try_from(w.every_ms).unwrap_or(i64::MAX);
        let values = args![
            &w.dataset,
            every,
            &w.cron,
            &w.time_zone,
            w.rollout.regions.join(","),
            w.rollout.mode.to_string(),
            w.rollout.cut_over.name(),
            now_unix_ms,
            w.rollout.class.name()
        ];
        self.db.write(|tx| {
            let exists: i64 =
                tx.query_one("SELECT COUNT(*) FROM datasets WHERE name = ?1", args![&w.dataset])?.get(0)?;
            if exists == 0 {
                return Err(StoreError::NotFound { kind: "dataset", name: w.dataset.clone() });
            }
            let updated = tx.execute(
                "UPDATE watches SET every_ms = ?2, cron = ?3, time_zone = ?4, rollout_regions = ?5,
                     rollout_mode = ?6, rollout_cut_over = ?7, updated_ms = ?8, rollout_class = ?9 WHERE dataset = ?1",
                values,
            )?;
            if updated == 0 {
                tx.execute(
                    "INSERT INTO watches (dataset, every_ms, cron, time_zone, rollout_regions, rollout_mode,
                         rollout_cut_over, updated_ms, last_check_ms, last_result, last_failed, rollout_class)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, '', 0, ?9)",
                    values,
                )?;
            }
            Ok(())
        })
    }

    fn remove_watch(&self, dataset: &str) -> Result<bool, StoreError> {
        Ok(self.db.write(|tx| tx.execute("DELETE FROM watches WHERE dataset = ?1", args![dataset]))? > 0)
    }

    fn watches(&self) -> Result<Vec<WatchRecord>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT dataset, every_ms, cron, time_zone, rollout_regions, rollout_mode, rollout_cut_over,
                        updated_ms, last_check_ms, last_result, last_failed, rollout_class
                 FROM watches ORDER BY dataset",
                &[],
            )
        })?;
        let mut out = Vec::new();
        for r in &rows {
            let dataset: String = r.get(0)?;
            let (every, mode, cut_over, class): (i64, String, String, String) =
                (r.get(1)?, r.get(5)?, r.get(6)?, r.get(11)?);
            let regions: String = r.get(4)?;
            let corrupt = |what: String| StoreError::Corrupt(format!("the watch of dataset {dataset:?}: {what}"));
            let mode: ReplicationMode = mode.parse().map_err(|e| corrupt(format!("mode {mode:?}: {e}")))?;
            let cut_over: CutOver = cut_over.parse().map_err(|e| corrupt(format!("cut-over {cut_over:?}: {e}")))?;
            let class: Class = class.parse().map_err(|e| corrupt(format!("class {class:?}: {e}")))?;
            out.push(WatchRecord {
                config: WatchConfig {
                    every_ms: u64::try_from(every).map_err(|_| corrupt(format!("interval {every}")))?,
                    cron: r.get(2)?,
                    time_zone: r.get(3)?,
                    rollout: AutoRollout {
                        regions: regions.split(',').filter(|r| !r.is_empty()).map(str::to_string).collect(),
                        mode,
                        cut_over,
                        class,
                    },
                    dataset,
                },
                updated_unix_ms: r.get(7)?,
                last_check_unix_ms: r.get(8)?,
                last_result: r.get(9)?,
                last_failed: r.get(10)?,
            });
        }
        Ok(out)
    }

    fn record_check(&self, dataset: &str, at_unix_ms: i64, result: &str, failed: bool) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "UPDATE watches SET last_check_ms = ?2, last_result = ?3, last_failed = ?4 WHERE dataset = ?1",
                args![dataset, at_unix_ms, result, failed],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_engines;
    use crate::store::{DatasetRecord, LifecycleStore, MetaStore, SourceRecord};

    fn store_with(dataset: &str) -> SqlStore {
        let db = crate::store::tests::fresh_store();
        let source = SourceRecord {
            name: "src".into(),
            url: "file:///tmp".into(),
            options: Default::default(),
            created_unix_ms: 1,
        };
        db.add_source(&source).unwrap();
        let d = DatasetRecord {
            name: dataset.into(),
            source: "src".into(),
            prefix: String::new(),
            created_unix_ms: 1,
            latest_version: 0,
            outside_links: Default::default(),
            keep_versions: 0,
        };
        db.add_dataset(&d).unwrap();
        db
    }

    fn config(dataset: &str, every_ms: u64) -> WatchConfig {
        WatchConfig {
            dataset: dataset.into(),
            every_ms,
            cron: String::new(),
            time_zone: String::new(),
            rollout: AutoRollout {
                regions: vec!["eu".into(), "us".into()],
                mode: ReplicationMode::Region,
                cut_over: CutOver::PerRegion,
                class: Class::Urgent,
            },
        }
    }

    on_both_engines! {
        fn a_watch_keeps_its_last_check_across_changes_and_goes_with_its_dataset() {
            let db = store_with("m");
            assert!(matches!(db.set_watch(&config("nope", 1000), 5), Err(StoreError::NotFound { .. })));
            db.set_watch(&config("m", 60_000), 5).unwrap();
            let w = db.watches().unwrap();
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].config, config("m", 60_000));
            assert_eq!((w[0].last_check_unix_ms, w[0].last_result.as_str(), w[0].last_failed), (None, "", false));

            db.record_check("m", 100, "failed: source unreachable", true).unwrap();
            let mut changed = config("m", 0);
            changed.cron = "*/15 * * * *".into();
            changed.time_zone = "Europe/Berlin".into();
            changed.rollout = AutoRollout::default();
            db.set_watch(&changed, 200).unwrap();
            let w = db.watches().unwrap();
            assert_eq!(w[0].config, changed);
            assert_eq!(w[0].updated_unix_ms, 200);
            assert_eq!(w[0].last_check_unix_ms, Some(100), "a restarted hub knows when it last looked");
            assert_eq!((w[0].last_result.as_str(), w[0].last_failed), ("failed: source unreachable", true));

            db.remove_dataset("m", false, &[]).unwrap();
            assert!(db.watches().unwrap().is_empty(), "the watch went with its dataset");
            db.record_check("m", 300, "cut v1", false).unwrap();
            assert!(db.watches().unwrap().is_empty(), "a check of a removed watch writes nothing");
        }
    }

    on_both_engines! {
        fn removing_a_watch_says_whether_there_was_one() {
            let db = store_with("m");
            db.set_watch(&config("m", 60_000), 5).unwrap();
            assert!(db.remove_watch("m").unwrap());
            assert!(!db.remove_watch("m").unwrap());
            assert!(db.watches().unwrap().is_empty());
        }
    }
}
