//! Leases ([`LeaseStore`]): which hub does the work that must happen once (the trigger task,
//! the deadline watch, serving a region's spokes) when several hubs share one database. A lease is a row: its holder and
//! when it runs out, by the database's clock (so that hubs whose clocks differ still agree).
//! The holder renews it well before then; another hub takes it only once it ran out.

use super::StoreError;
use super::meta::SqlStore;
use super::sql::{Kind, Tx, args};
use crate::rollout::VersionId;
use crate::rollout::retention::InUse;

/// How long a lease lasts without being renewed; holders renew every third of it.
pub const TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Rows of what a hub's spokes use that were not refreshed for this long are removed.
const STALE_IN_USE_MS: i64 = 24 * 3600 * 1000;

/// Leases of a hub's database.
pub trait LeaseStore {
    /// Takes or renews lease `name` for `holder` for `ttl_ms` from now, unless another holder
    /// has it and it has not run out; returns whether `holder` has it now.
    fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError>;
    /// Gives lease `name` up if `holder` has it (a hub that stops), so that another takes it
    /// at once.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Who holds lease `name` now (`None`: no one, or it ran out).
    fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Counts a change the other hubs of the database must hear of; returns the new count.
    fn bump_changes(&self) -> Result<u64, StoreError>;
    /// The count of changes (0: none yet).
    fn changes(&self) -> Result<u64, StoreError>;
    /// Replaces what hub `hub` says its spokes use (it serves their regions).
    fn share_in_use(&self, hub: &str, in_use: &[InUse]) -> Result<(), StoreError>;
    /// What the other hubs said their spokes use, within the last `fresh_ms` (a hub that died
    /// stops counting then: its regions' spokes report to the hub that took them over).
    fn shared_in_use(&self, except_hub: &str, fresh_ms: i64) -> Result<Vec<InUse>, StoreError>;
}

/// Whether `holder` may take a lease whose row says `current` (holder, runs out at) at `now`.
pub fn may_take(current: Option<(&str, i64)>, holder: &str, now_ms: i64) -> bool {
    match current {
        None => true,
        Some((held_by, expires_ms)) => held_by == holder || expires_ms <= now_ms,
    }
}

/// The database's clock, in unix milliseconds.
fn db_now_ms(tx: &mut Tx<'_>) -> Result<i64, StoreError> {
    let sql = match tx.kind() {
        Kind::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        Kind::Postgres => "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    };
    tx.query_one(sql, &[])?.get(0)
}

fn changes_in(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let Some(r) = tx.query_opt("SELECT value FROM meta WHERE key = 'changes'", &[])? else { return Ok(0) };
    let text: String = r.get(0)?;
    text.parse().map_err(|_| StoreError::Corrupt(format!("the change count is {text:?}")))
}

impl LeaseStore for SqlStore {
    fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        self.db.write(|tx| {
            let now = db_now_ms(tx)?;
            let current = tx.query_opt("SELECT holder, expires_ms FROM leases WHERE name = ?1", args![name])?;
            let current = current.map(|r| Ok::<_, StoreError>((r.get::<String>(0)?, r.get::<i64>(1)?))).transpose()?;
            if !may_take(current.as_ref().map(|(h, e)| (h.as_str(), *e)), holder, now) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms",
                args![name, holder, now.saturating_add(ttl_ms)],
            )?;
            Ok(true)
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.db.write(|tx| tx.execute("DELETE FROM leases WHERE name = ?1 AND holder = ?2", args![name, holder]))?;
        Ok(())
    }

    fn bump_changes(&self) -> Result<u64, StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('changes', '1')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)",
                &[],
            )?;
            changes_in(tx)
        })
    }

    fn changes(&self) -> Result<u64, StoreError> {
        self.db.read(changes_in)
    }

    fn share_in_use(&self, hub: &str, in_use: &[InUse]) -> Result<(), StoreError> {
        self.db.write(|tx| {
            let now = db_now_ms(tx)?;
            tx.execute("DELETE FROM in_use WHERE hub = ?1", args![hub])?;
            for u in in_use {
                tx.execute(
                    "INSERT INTO in_use (hub, region, node, dataset, version, used_by, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    args![hub, &u.region, &u.node, &u.version.dataset, u.version.version, &u.user, now],
                )?;
            }
            // Rows of hubs long gone: nobody reads them any more.
            tx.execute("DELETE FROM in_use WHERE updated_ms < ?1", args![now - STALE_IN_USE_MS])?;
            Ok(())
        })
    }

    fn shared_in_use(&self, except_hub: &str, fresh_ms: i64) -> Result<Vec<InUse>, StoreError> {
        let rows = self.db.read(|tx| {
            let now = db_now_ms(tx)?;
            tx.query(
                "SELECT region, node, dataset, version, used_by FROM in_use WHERE hub <> ?1 AND updated_ms >= ?2
                 ORDER BY region, node, dataset, version",
                args![except_hub, now - fresh_ms],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(InUse {
                    region: r.get(0)?,
                    node: r.get(1)?,
                    version: VersionId::new(r.get::<String>(2)?, r.get::<u64>(3)?),
                    user: r.get(4)?,
                })
            })
            .collect()
    }

    fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.db.read(|tx| {
            let now = db_now_ms(tx)?;
            let Some(r) = tx.query_opt("SELECT holder, expires_ms FROM leases WHERE name = ?1", args![name])? else {
                return Ok(None);
            };
            (r.get::<i64>(1)? > now).then(|| r.get(0)).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_engines;

    #[test]
    fn a_lease_is_taken_only_when_free_run_out_or_already_held() {
        assert!(may_take(None, "a", 10));
        assert!(may_take(Some(("a", 100)), "a", 10), "renewed by its holder");
        assert!(!may_take(Some(("b", 100)), "a", 10), "held by another");
        assert!(may_take(Some(("b", 100)), "a", 100), "run out");
    }

    on_both_engines! {
        /// One holder at a time; a lease given up or run out is taken by the next.
        fn one_hub_holds_a_lease_at_a_time() {
            let db = crate::store::tests::fresh_store();
            assert_eq!(db.lease_holder("triggers").unwrap(), None);
            assert!(db.take_lease("triggers", "hub-a", 60_000).unwrap());
            assert!(!db.take_lease("triggers", "hub-b", 60_000).unwrap(), "hub-a holds it");
            assert_eq!(db.lease_holder("triggers").unwrap().as_deref(), Some("hub-a"));
            assert!(db.take_lease("deadlines", "hub-b", 60_000).unwrap(), "another lease is free");
            assert!(db.take_lease("triggers", "hub-a", 60_000).unwrap(), "its holder renews it");
            db.release_lease("triggers", "hub-b").unwrap();
            assert!(!db.take_lease("triggers", "hub-b", 60_000).unwrap(), "only its holder gives it up");
            db.release_lease("triggers", "hub-a").unwrap();
            assert!(db.take_lease("triggers", "hub-b", 1).unwrap(), "given up: taken at once");
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(db.lease_holder("triggers").unwrap(), None, "run out");
            assert!(db.take_lease("triggers", "hub-a", 60_000).unwrap(), "run out: taken by the next");
        }
    }

    on_both_engines! {
        /// The change count hubs tell each other by.
        fn changes_are_counted() {
            let db = crate::store::tests::fresh_store();
            assert_eq!(db.changes().unwrap(), 0);
            assert_eq!((db.bump_changes().unwrap(), db.bump_changes().unwrap()), (1, 2));
            assert_eq!(db.changes().unwrap(), 2);
        }
    }

    on_both_engines! {
        /// What each hub's spokes use, as the other hubs read it: a hub's own rows are not
        /// read back, a hub's new list replaces its old one, stale rows do not count.
        fn in_use_is_shared_between_hubs() {
            let db = crate::store::tests::fresh_store();
            let used = |node: &str, v: u64| InUse {
                region: "eu".into(),
                node: node.into(),
                version: VersionId::new("llama", v),
                user: "mount /m".into(),
            };
            db.share_in_use("hub-a", &[used("n1", 1), used("n2", 2)]).unwrap();
            db.share_in_use("hub-b", &[used("n3", 3)]).unwrap();
            assert_eq!(db.shared_in_use("hub-b", 60_000).unwrap(), [used("n1", 1), used("n2", 2)]);
            assert_eq!(db.shared_in_use("hub-a", 60_000).unwrap(), [used("n3", 3)]);
            db.share_in_use("hub-a", &[used("n2", 2)]).unwrap();
            assert_eq!(db.shared_in_use("hub-b", 60_000).unwrap(), [used("n2", 2)]);
            std::thread::sleep(std::time::Duration::from_millis(30));
            assert_eq!(db.shared_in_use("hub-b", 10).unwrap(), [], "stale");
        }
    }
}
