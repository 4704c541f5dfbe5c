//! Watched datasets: the hub's one trigger task. At each watched dataset's next check
//! ([`watch::next_check`]) it snapshots the dataset (the snapshot lists the prefix and reads
//! only what changed: an unchanged source cuts nothing) and, when a version was cut and the
//! watch names regions, rolls it out to them ([`watch::after_snapshot`]). Both go through
//! [`Checks`], which the admin API implements with the very code `aq snapshot` and `aq
//! rollout` run, so that a trigger does nothing an admin could not.
//!
//! One check at a time per dataset (several datasets may be checked at once); a check that
//! fails (the source unreachable) is recorded with its error and tried again at the next
//! time; nothing a check does ends the task. Each check's start and result are written to the
//! store ([`crate::store::watches`]), so a restarted hub knows when it last looked and does not
//! check again at once. Setting or removing a watch wakes the task ([`Triggers::wake`]).
//!
//! The decisions are pure ([`watch`]); this module holds the loop, so that a leader lease
//! (several hubs, one of which runs the task) can wrap [`run`] as it is.

pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::leader::Leader;
use crate::snapshot::{blocking, now_unix_ms};
use crate::store::MetaStore;
use crate::store::watches::{AutoRollout, WatchRecord};
use watch::{Cadence, CheckOutcome, Snapshot};

/// What a check does in the world: the admin API's snapshot and rollout.
#[async_trait::async_trait]
pub trait Checks: Send + Sync {
    /// Snapshots `dataset` as `aq snapshot` does (refused while another snapshot of it runs);
    /// the error is a sentence for the watch's last result.
    async fn snapshot(&self, dataset: &str) -> Result<Snapshot, String>;
    /// Rolls `dataset@vN` out as `aq rollout` does; returns the regions.
    async fn rollout(&self, dataset: &str, version: u64, rollout: &AutoRollout) -> Result<Vec<String>, String>;
}

/// Wakes the trigger task: a watch was set or removed.
#[derive(Clone, Default)]
pub struct Triggers {
    wake: Arc<Notify>,
}

impl Triggers {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// How long the task sleeps at most between looks at the watches (a clock that jumps, a
/// watch set by another hub sharing the database).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The cadence a stored watch has for the task: an interval under `floor` is taken as
/// `floor` (the floor may have been raised since it was set). `None`: the stored watch no
/// longer parses (logged, skipped).
pub fn cadence_of(w: &WatchRecord, floor: Duration) -> Option<Cadence> {
    let c = &w.config;
    match Cadence::from_parts(c.every_ms, &c.cron, &c.time_zone) {
        Ok(Cadence::Every(d)) => Some(Cadence::Every(d.max(floor))),
        Ok(cadence) => Some(cadence),
        Err(e) => {
            warn!(dataset = c.dataset, error = %e, "a stored watch does not parse; it is not checked");
            None
        }
    }
}

/// Runs the trigger task until `shutdown` fires: checks each watched dataset when it is due.
/// Checks under way when it fires are dropped (a snapshot cut short writes nothing).
pub async fn run(
    db: Arc<dyn MetaStore>,
    checks: Arc<dyn Checks>,
    triggers: Triggers,
    floor: Duration,
    mut leader: Leader,
    shutdown: CancellationToken,
) {
    info!(min_interval = ?floor, "trigger task started");
    // The datasets being checked, by their check's task.
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    // When this task last started a check of each dataset: a check whose record failed to
    // reach the store is not run again at once.
    let mut started: HashMap<String, i64> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        // Another hub of the database checks the watches while it leads; this one waits.
        if !leader.is_leader() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = leader.changed() => {}
            }
            continue;
        }
        let now = now_unix_ms();
        let watches = match blocking(&db, |db| db.watches()).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot read the watches; trying again");
                Vec::new()
            }
        };
        let mut soonest: Option<i64> = None;
        for w in watches {
            if running.values().any(|d| *d == w.config.dataset) {
                continue;
            }
            let Some(cadence) = cadence_of(&w, floor) else { continue };
            let last = w.last_check_unix_ms.max(started.get(&w.config.dataset).copied());
            let Some(next) = watch::next_check(&cadence, last, now) else { continue };
            if next <= now {
                started.insert(w.config.dataset.clone(), now);
                let (db, checks) = (db.clone(), checks.clone());
                let span = info_span!("watch_check", dataset = w.config.dataset.as_str(), %cadence, result = tracing::field::Empty);
                let dataset = w.config.dataset.clone();
                let task = tasks.spawn(check(db, checks, w, now).instrument(span));
                running.insert(task.id(), dataset);
            } else {
                soonest = Some(soonest.map_or(next, |s| s.min(next)));
            }
        }
        let sleep = soonest
            .map(|s| Duration::from_millis(u64::try_from(s - now).unwrap_or(0)))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        debug!(?sleep, running = running.len(), "trigger task waits");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = triggers.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, _)) => id,
                    // A check that panicked: logged; its dataset is checked again at its
                    // next time (from when this check started).
                    Err(e) => {
                        warn!(dataset = running.get(&e.id()).map(String::as_str), error = %e, "a watch check ended abnormally");
                        e.id()
                    }
                };
                running.remove(&id);
            }
        }
    }
    tasks.abort_all();
    info!("trigger task stopped");
}

/// One check of one watched dataset: snapshot, maybe roll out, record.
async fn check(db: Arc<dyn MetaStore>, checks: Arc<dyn Checks>, w: WatchRecord, started: i64) {
    let name = w.config.dataset.clone();
    let auto = &w.config.rollout;
    let outcome = match checks.snapshot(&name).await {
        Err(error) => CheckOutcome::Failed { error },
        Ok(snapshot) => match watch::after_snapshot(&snapshot, &auto.regions) {
            Some(version) => match checks.rollout(&name, version, auto).await {
                Ok(regions) => CheckOutcome::RolledOut { version, regions },
                Err(error) => CheckOutcome::RolloutFailed { version, error },
            },
            None => match snapshot {
                Snapshot::Unchanged { latest } => CheckOutcome::Unchanged { latest },
                Snapshot::Cut { version } => CheckOutcome::Cut { version },
            },
        },
    };
    let result = outcome.to_string();
    Span::current().record("result", result.as_str());
    if outcome.failed() {
        warn!(result, "watched dataset checked");
    } else {
        info!(result, "watched dataset checked");
    }
    let (n, failed) = (name, outcome.failed());
    if let Err(e) = blocking(&db, move |db| db.record_check(&n, started, &result, failed)).await {
        warn!(error = %e, "cannot record the check");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::meta::SqlStore;
    use crate::store::watches::WatchConfig;
    use crate::store::{DatasetRecord, MetaStore, SourceRecord};

    /// Checks that take a while, fail while told to, and count how many run at once.
    #[derive(Default)]
    struct SlowChecks {
        now: AtomicUsize,
        most: AtomicUsize,
        calls: AtomicUsize,
        failing: Mutex<bool>,
        rollouts: Mutex<Vec<(String, u64, Vec<String>)>>,
    }

    #[async_trait::async_trait]
    impl Checks for SlowChecks {
        async fn snapshot(&self, _dataset: &str) -> Result<Snapshot, String> {
            let at_once = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(at_once, Ordering::SeqCst);
            let call = self.calls.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            if *self.failing.lock().unwrap() {
                return Err("source unreachable".into());
            }
            Ok(if call == 1 { Snapshot::Cut { version: 1 } } else { Snapshot::Unchanged { latest: 1 } })
        }

        async fn rollout(&self, dataset: &str, version: u64, rollout: &AutoRollout) -> Result<Vec<String>, String> {
            self.rollouts.lock().unwrap().push((dataset.into(), version, rollout.regions.clone()));
            Ok(rollout.regions.clone())
        }
    }

    fn store() -> Arc<dyn MetaStore> {
        let db = SqlStore::in_memory().unwrap();
        let source =
            SourceRecord { name: "s".into(), url: "file:///x".into(), options: Default::default(), created_unix_ms: 1 };
        db.add_source(&source).unwrap();
        let dataset = DatasetRecord {
            name: "m".into(),
            source: "s".into(),
            prefix: String::new(),
            created_unix_ms: 1,
            latest_version: 0,
            outside_links: Default::default(),
            keep_versions: 0,
        };
        db.add_dataset(&dataset).unwrap();
        Arc::new(db)
    }

    async fn watch_of(db: &Arc<dyn MetaStore>) -> WatchRecord {
        blocking(db, |db| db.watches()).await.unwrap().remove(0)
    }

    /// Waits (generously) for the watch's record to satisfy `done`.
    async fn until(db: &Arc<dyn MetaStore>, done: impl Fn(&WatchRecord) -> bool) -> WatchRecord {
        for _ in 0..500 {
            let w = watch_of(db).await;
            if done(&w) {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the watch never got there: {:?}", watch_of(db).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_one_at_a_time_record_failures_and_go_on() {
        let db = store();
        let checks = Arc::new(SlowChecks::default());
        let (triggers, stop) = (Triggers::default(), CancellationToken::new());
        let floor = Duration::from_millis(10);
        let leader = Leader::alone();
        let task = tokio::spawn(run(db.clone(), checks.clone(), triggers.clone(), floor, leader, stop.clone()));

        // Set while the task sleeps (nothing watched): the wake-up starts the first check.
        let config = WatchConfig {
            dataset: "m".into(),
            every_ms: 20,
            cron: String::new(),
            time_zone: String::new(),
            rollout: AutoRollout { regions: vec!["eu".into()], ..Default::default() },
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        db.set_watch(&config, 1).unwrap();
        triggers.wake();
        until(&db, |w| w.last_result == "cut v1, rolled out to eu").await;
        until(&db, |w| w.last_result == "unchanged (v1)").await;
        assert_eq!(*checks.rollouts.lock().unwrap(), [("m".to_string(), 1, vec!["eu".to_string()])]);

        // A failing source: recorded, and the task goes on checking.
        *checks.failing.lock().unwrap() = true;
        let failed = until(&db, |w| w.last_failed).await;
        assert_eq!(failed.last_result, "failed: source unreachable");
        *checks.failing.lock().unwrap() = false;
        until(&db, |w| !w.last_failed && w.last_check_unix_ms > failed.last_check_unix_ms).await;

        // Checks every 20 ms that take 150 ms each: never two at once for the dataset.
        let calls = checks.calls.load(Ordering::SeqCst);
        println!("{calls} checks");
        assert!(calls >= 4);
        assert_eq!(checks.most.load(Ordering::SeqCst), 1, "one check at a time per dataset");

        stop.cancel();
        task.await.unwrap();
    }

    /// Two hubs on one database: only the one holding the lease checks; when it stops, the
    /// other takes the lease over and checks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_hubs_only_the_leader_checks_and_the_other_takes_over() {
        let db = store();
        let floor = Duration::from_millis(10);
        let (a, b) = (Arc::new(SlowChecks::default()), Arc::new(SlowChecks::default()));
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let lead_a = Leader::lease(db.clone(), "triggers", "hub-a".into(), stop_a.clone());
        for _ in 0..500 {
            if lead_a.is_leader() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(lead_a.is_leader(), "hub-a took the free lease");
        let lead_b = Leader::lease(db.clone(), "triggers", "hub-b".into(), stop_b.clone());
        let (wake_a, wake_b) = (Triggers::default(), Triggers::default());
        let task_a = tokio::spawn(run(db.clone(), a.clone(), wake_a.clone(), floor, lead_a, stop_a.clone()));
        let task_b = tokio::spawn(run(db.clone(), b.clone(), wake_b.clone(), floor, lead_b.clone(), stop_b.clone()));
        let config = WatchConfig {
            dataset: "m".into(),
            every_ms: 20,
            cron: String::new(),
            time_zone: String::new(),
            rollout: AutoRollout::default(),
        };
        // Set through a hub, which wakes its own task, and the other's through the database's
        // change counter (`leader::sync_changes`): both wake, only the leader checks.
        db.set_watch(&config, 1).unwrap();
        wake_a.wake();
        wake_b.wake();
        until(&db, |w| w.last_result.starts_with("cut v1")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.calls.load(Ordering::SeqCst) > 0);
        assert_eq!(b.calls.load(Ordering::SeqCst), 0, "hub-b does not lead: it checks nothing");
        assert!(!lead_b.is_leader());

        // hub-a stops (its lease given up): hub-b takes it at its next renewal and checks.
        stop_a.cancel();
        task_a.await.unwrap();
        let since = std::time::Instant::now();
        while b.calls.load(Ordering::SeqCst) == 0 {
            assert!(since.elapsed() < crate::leader::TTL * 3, "hub-b never took over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("hub-b took over {:?} after hub-a stopped", since.elapsed());
        stop_b.cancel();
        task_b.await.unwrap();
    }
}
