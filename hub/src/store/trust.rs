//! The SQL of trust (both engines) ([`TrustStore`]): the revocation list (compacted on every
//! change, its generation in `meta`), the named admins and the audit log of admin calls.

use super::meta::SqlStore;
use super::sql::{Tx, args};
use super::{StoreError, TrustStore};
use aqueduct_core::revocation::{self, Revocation, RevocationList};

/// At most this many revocation entries (after compaction): every spoke gets its region's
/// part with its assignments, and each TLS handshake is checked against the list. Past it a
/// revocation is refused; `aq region revoke-all` makes one entry of a region's.
pub const MAX_REVOCATIONS: usize = 1024;

/// An audit listing returns at most this many rows (the newest).
pub const MAX_AUDIT_ROWS: u32 = 10_000;

/// A named admin (`aq admin add`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRecord {
    pub name: String,
    pub created_unix_ms: i64,
    /// When its certificate expires.
    pub expires_unix_ms: i64,
    /// The admin who added it (`init` for the first).
    pub created_by: String,
}

/// One admin call: who, what, with which arguments (never a secret), how it ended, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub at_unix_ms: i64,
    /// The caller's admin name (or what else its certificate named).
    pub admin: String,
    /// The RPC's name (`AddRegion`).
    pub call: String,
    pub args: String,
    /// `ok`, or the status code's name.
    pub result: String,
    /// The status message of a failure.
    pub message: String,
}

fn read_list(tx: &mut Tx<'_>) -> Result<RevocationList, StoreError> {
    let generation = match tx.query_opt("SELECT value FROM meta WHERE key = 'revocations_generation'", &[])? {
        None => 0,
        Some(r) => {
            let g: String = r.get(0)?;
            g.parse().map_err(|_| StoreError::Corrupt(format!("revocations_generation is {g:?}")))?
        }
    };
    let entries = tx
        .query("SELECT prefix, revoked_at_s, revoked_by, reason FROM revocations ORDER BY prefix", &[])?
        .iter()
        .map(|r| Ok(Revocation { prefix: r.get(0)?, revoked_at_unix_s: r.get(1)?, by: r.get(2)?, reason: r.get(3)? }))
        .collect::<Result<_, StoreError>>()?;
    Ok(RevocationList { generation, entries })
}

impl TrustStore for SqlStore {
    fn revocations(&self) -> Result<RevocationList, StoreError> {
        self.db.read(read_list)
    }

    fn revoke(&self, entry: &Revocation) -> Result<RevocationList, StoreError> {
        revocation::validate_prefix(&entry.prefix).map_err(StoreError::Refused)?;
        self.db.write(|tx| {
            let before = read_list(tx)?;
            // The list is kept compact: an entry another one supersedes changes nothing, and a
            // new entry takes the place of those it supersedes (the same prefix revoked earlier
            // among them: its time only moves later).
            if before.entries.iter().any(|e| e.supersedes(entry)) {
                return Ok(before);
            }
            let dropped: Vec<&Revocation> = before.entries.iter().filter(|e| entry.supersedes(e)).collect();
            if before.entries.len() - dropped.len() + 1 > MAX_REVOCATIONS {
                return Err(StoreError::Refused(format!(
                    "the revocation list holds {MAX_REVOCATIONS} entries, its bound: revoke whole regions (`aq region revoke-all REGION`) to make one entry of their nodes'"
                )));
            }
            for e in dropped {
                tx.execute("DELETE FROM revocations WHERE prefix = ?1", args![&e.prefix])?;
            }
            tx.execute(
                "INSERT INTO revocations (prefix, revoked_at_s, revoked_by, reason) VALUES (?1, ?2, ?3, ?4)",
                args![&entry.prefix, entry.revoked_at_unix_s, &entry.by, &entry.reason],
            )?;
            tx.execute("DELETE FROM meta WHERE key = 'revocations_generation'", &[])?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('revocations_generation', ?1)",
                args![(before.generation + 1).to_string()],
            )?;
            read_list(tx)
        })
    }

    fn put_admin(&self, admin: &AdminRecord) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute("DELETE FROM admins WHERE name = ?1", args![&admin.name])?;
            tx.execute(
                "INSERT INTO admins (name, created_ms, expires_ms, created_by) VALUES (?1, ?2, ?3, ?4)",
                args![&admin.name, admin.created_unix_ms, admin.expires_unix_ms, &admin.created_by],
            )?;
            Ok(())
        })
    }

    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        let rows = self
            .db
            .read(|tx| tx.query("SELECT name, created_ms, expires_ms, created_by FROM admins ORDER BY name", &[]))?;
        rows.iter()
            .map(|r| {
                Ok(AdminRecord {
                    name: r.get(0)?,
                    created_unix_ms: r.get(1)?,
                    expires_unix_ms: r.get(2)?,
                    created_by: r.get(3)?,
                })
            })
            .collect()
    }

    fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO audit (at_ms, admin, call, args, result, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                args![record.at_unix_ms, &record.admin, &record.call, &record.args, &record.result, &record.message],
            )
        })?;
        Ok(())
    }

    fn audit(&self, since_unix_ms: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT at_ms, admin, call, args, result, message FROM audit WHERE at_ms >= ?1
                 ORDER BY at_ms DESC LIMIT ?2",
                args![since_unix_ms, limit.min(MAX_AUDIT_ROWS)],
            )
        })?;
        let mut rows: Vec<AuditRecord> = rows
            .iter()
            .map(|r| {
                Ok(AuditRecord {
                    at_unix_ms: r.get(0)?,
                    admin: r.get(1)?,
                    call: r.get(2)?,
                    args: r.get(3)?,
                    result: r.get(4)?,
                    message: r.get(5)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        rows.reverse();
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_engines;

    fn entry(prefix: &str, at: i64) -> Revocation {
        Revocation { prefix: prefix.into(), revoked_at_unix_s: at, by: "alice".into(), reason: "lost".into() }
    }

    on_both_engines! {
        fn revocations_are_kept_compacted_with_a_growing_generation() {
            let db = crate::store::tests::fresh_store();
            assert_eq!(db.revocations().unwrap(), RevocationList::default());
            let list = db.revoke(&entry("spiffe://aqueduct/region/eu/node/n1", 10)).unwrap();
            assert_eq!((list.generation, list.entries.len()), (1, 1));
            // Revoked again, earlier: the later time stays, nothing changes.
            let list = db.revoke(&entry("spiffe://aqueduct/region/eu/node/n1", 5)).unwrap();
            assert_eq!((list.generation, list.entries[0].revoked_at_unix_s), (1, 10));
            // Again, later: the time moves.
            let list = db.revoke(&entry("spiffe://aqueduct/region/eu/node/n1", 15)).unwrap();
            assert_eq!((list.generation, list.entries.len(), list.entries[0].revoked_at_unix_s), (2, 1, 15));
            // The whole region, later: one entry is left.
            let list = db.revoke(&entry("spiffe://aqueduct/region/eu", 20)).unwrap();
            assert_eq!(list.entries, vec![entry("spiffe://aqueduct/region/eu", 20)]);
            assert_eq!((list.generation, db.revocations().unwrap()), (3, list.clone()));
            assert!(matches!(db.revoke(&entry("spiffe://aqueduct/", 1)), Err(StoreError::Refused(_))));
        }
    }

    on_both_engines! {
        fn the_list_is_bounded() {
            let db = crate::store::tests::fresh_store();
            for i in 0..MAX_REVOCATIONS {
                db.revoke(&entry(&format!("spiffe://aqueduct/region/eu/node/n{i}"), 1)).unwrap();
            }
            let refused = db.revoke(&entry("spiffe://aqueduct/region/eu/node/past", 1)).unwrap_err();
            assert!(refused.to_string().contains("revoke-all"), "{refused}");
            // One entry for the region takes the place of all of them.
            let list = db.revoke(&entry("spiffe://aqueduct/region/eu", 2)).unwrap();
            assert_eq!(list.entries.len(), 1);
        }
    }

    on_both_engines! {
        fn audit_rows_are_listed_oldest_first_since_a_time_and_bounded() {
            let db = crate::store::tests::fresh_store();
            for at in 0..5 {
                db.record_audit(&AuditRecord {
                    at_unix_ms: at,
                    admin: "bob".into(),
                    call: format!("Call{at}"),
                    args: String::new(),
                    result: "ok".into(),
                    message: String::new(),
                })
                .unwrap();
            }
            let calls = |rows: Vec<AuditRecord>| rows.into_iter().map(|r| r.call).collect::<Vec<_>>();
            assert_eq!(calls(db.audit(2, 100).unwrap()), ["Call2", "Call3", "Call4"]);
            assert_eq!(calls(db.audit(0, 2).unwrap()), ["Call3", "Call4"], "the newest within the limit");
        }
    }
}
