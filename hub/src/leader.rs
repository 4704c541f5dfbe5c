//! Hubs that share a database: which one does the work that must happen once, and how they
//! tell each other of changes ([`sync_changes`]).
//!
//! Which hub does the work that must happen once: the trigger task (a watched dataset is cut
//! once, not once per hub) and the deadline watch (a row is raised once). A hub alone on its
//! database (SQLite) always does it. Hubs sharing PostgreSQL hold a lease per kind of work
//! ([`crate::store::leases`]): the holder renews it every [`TTL`] / 3; when it dies, another
//! takes the lease within [`TTL`] of its last renewal. A hub that cannot reach the database
//! stops leading at once (its lease runs out for the others on its own).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::snapshot::blocking;
use crate::store::MetaStore;

pub use crate::store::leases::TTL;

/// Whether this hub does a kind of work now.
#[derive(Clone, Debug)]
pub struct Leader {
    rx: watch::Receiver<bool>,
    /// Kept so that `changed` of a hub that always leads waits forever instead of failing.
    _tx: Option<Arc<watch::Sender<bool>>>,
}

impl Leader {
    /// A hub alone on its database: it always leads.
    pub fn alone() -> Self {
        let (tx, rx) = watch::channel(true);
        Self { rx, _tx: Some(Arc::new(tx)) }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until this hub starts or stops leading.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Holds lease `name` for this hub (as `holder`) while the hub runs, renewing it every
    /// [`TTL`] / 3, and gives it up when `shutdown` fires.
    pub fn lease(db: Arc<dyn MetaStore>, name: &'static str, holder: String, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let ttl_ms = TTL.as_millis() as i64;
            loop {
                let who = holder.clone();
                let held = match blocking(&db, move |db| db.take_lease(name, &who, ttl_ms)).await {
                    Ok(held) => held,
                    Err(e) => {
                        warn!(lease = name, error = %e, "cannot renew the lease; not leading until it is renewed");
                        false
                    }
                };
                if held != *tx.borrow() {
                    info!(lease = name, holder = holder.as_str(), leading = held, "lease changed hands");
                    tx.send_replace(held);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(TTL / 3) => {}
                }
            }
            if *tx.borrow() {
                tx.send_replace(false);
                let who = holder.clone();
                if let Err(e) = blocking(&db, move |db| db.release_lease(name, &who)).await {
                    warn!(lease = name, error = %e, "cannot give the lease up; it runs out on its own");
                }
            }
        });
        Self { rx, _tx: None }
    }
}

/// A name for this hub process among the hubs of one database: its host name and a random part.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut random = [0u8; 6];
    let _ = getrandom::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{random}", host.trim())
}

/// How often a hub sharing its database writes what its spokes use.
pub const SHARE_IN_USE_EVERY: Duration = Duration::from_secs(2);

/// How often a hub sharing its database looks for changes the others made.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// Tells the other hubs of the database of the changes made on this one, and this hub's
/// watches and relay of theirs (a rollout started through another hub reaches this hub's
/// spokes within [`SYNC_EVERY`]): one counter in the database, bumped by a hub that changed
/// something, read by the others. `seen`: the count read before the hub served anything (so
/// that a change another hub makes after it is never missed).
///
/// `on_peer_change` runs after each change another hub made (the trigger task wakes: a watch
/// set through another hub is checked by the leader at its time, not at the leader's next
/// look).
///
/// Every [`SHARE_IN_USE_EVERY`] it also writes what this hub's spokes use, so that the other
/// hubs count it before they remove a version (`aq gc`, `aq version rm`).
pub fn sync_changes(
    db: Arc<dyn MetaStore>,
    live: crate::live::Live,
    holder: String,
    seen: u64,
    on_peer_change: impl Fn() + Send + 'static,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    // Counted now, not when the task first runs: a change made in between is told.
    let told = live.changes.local_count();
    sync_loop(db, live, holder, (told, seen), on_peer_change, stop)
}

async fn sync_loop(
    db: Arc<dyn MetaStore>,
    live: crate::live::Live,
    holder: String,
    (mut told, mut seen): (u64, u64),
    on_peer_change: impl Fn() + Send + 'static,
    stop: CancellationToken,
) {
    let mut shared_at = tokio::time::Instant::now() - SHARE_IN_USE_EVERY;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
        }
        if shared_at.elapsed() >= SHARE_IN_USE_EVERY {
            shared_at = tokio::time::Instant::now();
            let (members, me) = (live.members.clone(), holder.clone());
            let shared = blocking(&db, move |db| {
                let rollouts = db.rollouts(None)?;
                db.share_in_use(&me, &members.in_use(&rollouts))
            });
            if let Err(e) = shared.await {
                warn!(error = %e, "cannot tell the other hubs what this hub's spokes use; trying again");
            }
        }
        let local = live.changes.local_count();
        let result = if local != told {
            blocking(&db, |db| db.bump_changes()).await.map(|count| (count, true))
        } else {
            blocking(&db, |db| db.changes()).await.map(|count| (count, false))
        };
        match result {
            Ok((count, bumped)) => {
                if bumped {
                    told = local;
                    // Our own bump: another hub's change since we last looked would be
                    // below it; wake the watches anyway when the count jumped by more.
                    if count > seen + 1 {
                        live.withdrawn.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        live.changes.notify_from_peer();
                        on_peer_change();
                    }
                } else if seen != count {
                    live.withdrawn.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    live.changes.notify_from_peer();
                    on_peer_change();
                }
                seen = count;
            }
            Err(e) => warn!(error = %e, "cannot read the changes of the other hubs; trying again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::meta::SqlStore;

    /// Two hubs on one database: a change made on one reaches the other's watches and its
    /// `on_peer_change` (the trigger task), and is not told back to the hub that made it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_on_one_hub_wakes_the_others_trigger_task() {
        let db: Arc<dyn MetaStore> = Arc::new(SqlStore::in_memory().unwrap());
        let stop = CancellationToken::new();
        let (a, b) = (crate::live::Live::default(), crate::live::Live::default());
        let (woken_a, woken_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for (live, woken, name) in [(&a, &woken_a, "hub-a"), (&b, &woken_b, "hub-b")] {
            let (woken, seen) = (woken.clone(), db.changes().unwrap());
            let on_peer_change = move || {
                woken.fetch_add(1, Ordering::SeqCst);
            };
            tokio::spawn(sync_changes(db.clone(), live.clone(), name.into(), seen, on_peer_change, stop.clone()));
        }
        a.changes.notify_waiters();
        let since = std::time::Instant::now();
        while woken_b.load(Ordering::SeqCst) == 0 {
            assert!(since.elapsed() < SYNC_EVERY * 20, "hub-b never heard of hub-a's change");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Two more rounds: hub-a's own change does not come back to it.
        tokio::time::sleep(SYNC_EVERY * 2).await;
        assert_eq!(woken_a.load(Ordering::SeqCst), 0, "hub-a was told of its own change");
        assert_eq!(woken_b.load(Ordering::SeqCst), 1);
        stop.cancel();
    }
}
