//! The hub database's schema: its tables ([`SCHEMA`]), the version number it carries in table
//! `meta` from the start ([`SCHEMA_VERSION`]), and the steps that bring an older database up
//! to date ([`MIGRATIONS`]), one per version. The SQL sticks to what PostgreSQL also speaks:
//! on PostgreSQL the same tables are made with its types ([`postgres_schema`]); a PostgreSQL
//! database starts at schema [`POSTGRES_FIRST`], and the steps after it apply to both engines.

use super::StoreError;
use super::sql::{Db, Kind, Tx, args};

pub const SCHEMA_VERSION: i64 = 13;

/// The first schema the PostgreSQL engine had: no PostgreSQL database is older.
pub const POSTGRES_FIRST: i64 = 13;

/// The advisory lock hubs take on PostgreSQL while one of them makes or upgrades the tables.
const SCHEMA_LOCK: i64 = 0x6171_0001;

/// The tables schema 5 added (the lifecycle): in the schema, and in the step that brings a
/// schema 4 database up to it.
macro_rules! lifecycle_tables {
    () => {
        "CREATE TABLE IF NOT EXISTS tags (
    dataset TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (dataset, name),
    FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
);
CREATE TABLE IF NOT EXISTS serving (
    dataset TEXT NOT NULL,
    region TEXT NOT NULL REFERENCES regions(name),
    version INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    previous INTEGER NOT NULL,
    PRIMARY KEY (dataset, region)
);
CREATE TABLE IF NOT EXISTS retired (
    dataset TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);"
    };
}

/// The table schema 7 added (enrolment tokens, issue 18): in the schema, and in the step that
/// brings a schema 6 database up to it. Tokens are kept as hashes only.
macro_rules! enrol_tables {
    () => {
        "
CREATE TABLE IF NOT EXISTS enrol_tokens (
    hash TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    uses INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);"
    };
}

/// The table schema 9 added (signed versions): in the schema, and in the step that brings a
/// schema 8 database up to it.
macro_rules! signature_tables {
    () => {
        "
CREATE TABLE IF NOT EXISTS version_signatures (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signed_ms INTEGER NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (dataset, version)
);"
    };
}

/// The table schema 11 added (rollout plans: deadlines, planned bytes, raised classes): in
/// the schema, and in the step that brings a schema 10 database up to it.
macro_rules! plan_tables {
    () => {
        "
CREATE TABLE IF NOT EXISTS rollout_plans (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    region TEXT NOT NULL,
    deadline_ms INTEGER,
    planned_bytes INTEGER NOT NULL,
    raised_ms INTEGER,
    PRIMARY KEY (dataset, version, region)
);"
    };
}

/// The table schema 12 added (watched datasets, issue 19): in the schema, and in the step that
/// brings a schema 11 database up to it. One row per watched dataset: its cadence (an interval
/// or a cron expression in a time zone), the rollout that follows a new version (regions
/// comma-separated; none: '') and how its last check went; it goes with its dataset.
macro_rules! watch_tables {
    () => {
        "
CREATE TABLE IF NOT EXISTS watches (
    dataset TEXT PRIMARY KEY REFERENCES datasets(name) ON DELETE CASCADE,
    every_ms INTEGER NOT NULL,
    cron TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    rollout_regions TEXT NOT NULL,
    rollout_mode TEXT NOT NULL,
    rollout_cut_over TEXT NOT NULL,
    rollout_class TEXT NOT NULL DEFAULT 'normal',
    updated_ms INTEGER NOT NULL,
    last_check_ms INTEGER,
    last_result TEXT NOT NULL,
    last_failed INTEGER NOT NULL
);"
    };
}

/// The tables schema 13 added (what hubs sharing a database tell each other: the leases of
/// the work one hub does, and what the spokes each serves use): in the schema, and in the step
/// that brings a schema 12 database up to it.
macro_rules! lease_tables {
    () => {
        "CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS in_use (
    hub TEXT NOT NULL,
    region TEXT NOT NULL,
    node TEXT NOT NULL,
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    used_by TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS in_use_hub ON in_use (hub);"
    };
}

/// The tables schema 8 added (trust: revocations, named admins, the audit log): in the
/// schema, and in the step that brings a schema 7 database up to it. The revocation list's
/// generation is the `revocations_generation` row of `meta` (absent: 0).
macro_rules! trust_tables {
    () => {
        "CREATE TABLE IF NOT EXISTS revocations (
    prefix TEXT PRIMARY KEY,
    revoked_at_s INTEGER NOT NULL,
    revoked_by TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS admins (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    at_ms INTEGER NOT NULL,
    admin TEXT NOT NULL,
    call TEXT NOT NULL,
    args TEXT NOT NULL,
    result TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);"
    };
}

pub const SCHEMA: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    options TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL REFERENCES sources(name),
    prefix TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    outside_links TEXT NOT NULL DEFAULT 'fail',
    keep_versions INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    dataset TEXT NOT NULL REFERENCES datasets(name),
    number INTEGER NOT NULL,
    root BLOB NOT NULL,
    chunk_min INTEGER NOT NULL,
    chunk_avg INTEGER NOT NULL,
    chunk_max INTEGER NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    bytes_read INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (dataset, number)
);
CREATE TABLE IF NOT EXISTS files (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    object TEXT NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ms INTEGER NOT NULL,
    etag TEXT,
    chunks BLOB NOT NULL,
    PRIMARY KEY (dataset, version, path),
    FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
);
CREATE TABLE IF NOT EXISTS regions (
    name TEXT PRIMARY KEY,
    rate INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    schedule TEXT NOT NULL DEFAULT '',
    time_zone TEXT NOT NULL DEFAULT 'UTC'
);
CREATE TABLE IF NOT EXISTS rollouts (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    region TEXT NOT NULL REFERENCES regions(name),
    phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    cached_bytes INTEGER NOT NULL,
    relayed_bytes INTEGER NOT NULL,
    rate INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    mode TEXT NOT NULL DEFAULT 'auto',
    added_ms INTEGER NOT NULL DEFAULT 0,
    ready_ms INTEGER,
    cut_over TEXT NOT NULL DEFAULT 'all-ready',
    promote_pending INTEGER NOT NULL DEFAULT 0,
    class TEXT NOT NULL DEFAULT 'normal',
    PRIMARY KEY (dataset, version, region),
    FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
);
CREATE TABLE IF NOT EXISTS skipped_objects (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
);
",
    lease_tables!(),
    "\n",
    lifecycle_tables!(),
    enrol_tables!(),
    "\n",
    trust_tables!(),
    "\n",
    signature_tables!(),
    "\n",
    plan_tables!(),
    "\n",
    watch_tables!()
);

/// Steps that bring a database of schema version `from` to `from + 1`, in order. Each runs
/// in one transaction with the version bump; a step is self-contained (it does not rely on
/// `SCHEMA` having run), so steps can be renumbered or added without touching the others.
pub const MIGRATIONS: &[(i64, &str)] = &[
    // Version 1 had no replication mode per rollout: every rollout was every-node then, which
    // `auto` still gives for what fits a spoke.
    (1, "ALTER TABLE rollouts ADD COLUMN mode TEXT NOT NULL DEFAULT 'auto';"),
    // Version 2 followed every link out of a dataset and dropped what it could not name:
    // datasets gain their outside-links policy (failing, as every snapshot now does by
    // default), versions the list of objects they left out.
    (
        2,
        "ALTER TABLE datasets ADD COLUMN outside_links TEXT NOT NULL DEFAULT 'fail';
         CREATE TABLE IF NOT EXISTS skipped_objects (
             dataset TEXT NOT NULL,
             version INTEGER NOT NULL,
             key TEXT NOT NULL,
             reason TEXT NOT NULL,
             FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
         );",
    ),
    // Version 3 recomputed each region's cut-over from its current phase, so a spoke joining
    // later (or a source changed after the fact) could take a region's version away: rollout
    // rows remember when they were added and when the region first held the version whole.
    (
        3,
        "ALTER TABLE rollouts ADD COLUMN added_ms INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE rollouts ADD COLUMN ready_ms INTEGER;
         UPDATE rollouts SET ready_ms = updated_ms WHERE phase = 'Ready';",
    ),
    // Version 4 had no lifecycle: a region's active version was recomputed from the rows by
    // the all-ready rule. Version 5 remembers what each region serves (filled from that rule
    // on the way up: see `prepare`), tags, cut-over policies, retention, and the last number
    // of a removed dataset (so that its name never gets a number again with other bytes).
    (
        4,
        concat!(
            "ALTER TABLE datasets ADD COLUMN keep_versions INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE rollouts ADD COLUMN cut_over TEXT NOT NULL DEFAULT 'all-ready';
         ALTER TABLE rollouts ADD COLUMN promote_pending INTEGER NOT NULL DEFAULT 0;
",
            lifecycle_tables!()
        ),
    ),
    // Version 5 had one flat budget per region: regions gain a weekly budget schedule, in
    // their time zone ('' : the flat rate).
    (
        5,
        "ALTER TABLE regions ADD COLUMN schedule TEXT NOT NULL DEFAULT '';
         ALTER TABLE regions ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';",
    ),
    // Version 6 had no enrolment tokens (issue 18): spokes enrol for a node's certificate.
    (6, enrol_tables!()),
    // Version 7 had one unnamed admin identity, no revocation and no audit log.
    (7, trust_tables!()),
    // Version 8 signed nothing. Version 9 keeps each version's signature by the hub's signing
    // key; the versions of before are signed when the hub starts (`crate::signing`).
    (8, signature_tables!()),
    // Version 9 had one class of rollout: every rollout row gains its class (normal).
    (9, "ALTER TABLE rollouts ADD COLUMN class TEXT NOT NULL DEFAULT 'normal';"),
    // Version 10 had no deadlines: rollout rows gain a plan (deadline, planned bytes, when the
    // hub last raised the row's class), in a table of their own.
    (10, plan_tables!()),
    // Version 11 watched no dataset. Version 12 keeps each watched dataset's watch (issue 19).
    (11, watch_tables!()),
    // Version 12 listed a version's skipped objects in SQLite's row order: they gain their
    // place in the list (PostgreSQL has no row order), the old rows keep theirs. And the
    // leases of work one hub does when several share a database.
    (
        12,
        concat!(
            "ALTER TABLE skipped_objects ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
         UPDATE skipped_objects SET seq = rowid;
",
            lease_tables!()
        ),
    ),
];

/// [`SCHEMA`] in PostgreSQL's types: 64-bit integers, `BYTEA` for blobs, and text that
/// compares byte by byte (collation "C", as SQLite's), so that both engines list in one order.
pub fn postgres_schema() -> String {
    SCHEMA.replace("INTEGER", "BIGINT").replace("BLOB", "BYTEA").replace("TEXT", "TEXT COLLATE \"C\"")
}

/// Creates the tables a new database lacks and brings an older one to [`SCHEMA_VERSION`],
/// step by step, each step in one transaction with its version bump; refuses a database of a
/// newer (or unknown) schema. Returns the version an existing database had (`None`: a new one),
/// for the steps the engine does in Rust. On PostgreSQL one hub at a time does this (an
/// advisory lock), so that hubs started together agree.
pub fn prepare(db: &Db) -> Result<Option<i64>, StoreError> {
    let was = db.write(|tx| {
        lock(tx)?;
        tx.batch("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")?;
        let found = stored_version(tx)?;
        if found.is_none() {
            match tx.kind() {
                Kind::Sqlite => tx.batch(SCHEMA)?,
                Kind::Postgres => tx.batch(&postgres_schema())?,
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                args![SCHEMA_VERSION.to_string()],
            )?;
        }
        Ok(found)
    })?;
    let Some(was) = was else { return Ok(None) };
    let first = if db.kind() == Kind::Postgres { POSTGRES_FIRST } else { 1 };
    if !(first..=SCHEMA_VERSION).contains(&was) {
        return Err(StoreError::Schema { found: was });
    }
    loop {
        let done = db.write(|tx| {
            lock(tx)?;
            // Another hub may have taken steps meanwhile: read the version again.
            let found = stored_version(tx)?.unwrap_or(SCHEMA_VERSION);
            if found >= SCHEMA_VERSION {
                return Ok(true);
            }
            let Some((_, step)) = MIGRATIONS.iter().find(|(from, _)| *from == found) else {
                return Err(StoreError::Schema { found });
            };
            tx.batch(step)?;
            tx.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", args![(found + 1).to_string()])?;
            Ok(false)
        })?;
        if done {
            return Ok(Some(was));
        }
    }
}

fn lock(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    if tx.kind() == Kind::Postgres {
        tx.batch(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))?;
    }
    Ok(())
}

/// The schema version a database records (`None`: a new database); `-1` for one that is not
/// a number.
fn stored_version(tx: &mut Tx<'_>) -> Result<Option<i64>, StoreError> {
    let found = tx.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?;
    found.map(|r| r.get::<String>(0).map(|v| v.parse().unwrap_or(-1))).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_schema_has_only_its_types() {
        let pg = postgres_schema();
        assert!(!pg.contains("INTEGER") && !pg.contains("BLOB"), "{pg}");
        assert_eq!(pg.matches("CREATE TABLE").count(), SCHEMA.matches("CREATE TABLE").count());
    }

    #[test]
    fn every_step_up_to_the_schema_is_there() {
        for from in 1..SCHEMA_VERSION {
            assert!(MIGRATIONS.iter().any(|(f, _)| *f == from), "no step from schema {from}");
        }
    }
}
