//! The hub's metadata: sources, datasets and versions, behind the [`MetaStore`] trait.
//!
//! One implementation, [`SqliteStore`], keeps everything in one SQLite file under the hub's
//! data directory (or in memory, for tests). Its SQL sticks to what PostgreSQL also speaks
//! (INTEGER, TEXT, BLOB/BYTEA, plain SELECT/INSERT in transactions), so that a PostgreSQL
//! backend for a highly available hub can implement the same trait with the same statements.
//!
//! A version is written in one transaction with all its files, so a failed or interrupted
//! snapshot leaves nothing behind. Each file's chunk list is one blob: for each chunk, its
//! 32-byte digest and its length as a little-endian u32 (format 1; offsets follow from the
//! lengths). The schema carries a version number in table `meta` from the start; older
//! databases are brought up to date by [`MIGRATIONS`], one step per version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry, Manifest, ReplicationMode};
use rusqlite::{Connection, OptionalExtension, params};

pub const SCHEMA_VERSION: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("dataset {dataset:?} got a new version while this snapshot ran (now v{latest}); snapshot again")]
    Conflict { dataset: String, latest: u64 },
    #[error("the hub database has schema version {found}, this build knows {SCHEMA_VERSION}; upgrade the hub")]
    Schema { found: i64 },
    #[error("a hub task failed: {0}")]
    Task(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("hub database error: {0}")]
    Db(#[from] rusqlite::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub name: String,
    pub url: String,
    pub options: BTreeMap<String, String>,
    pub created_unix_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetRecord {
    pub name: String,
    pub source: String,
    pub prefix: String,
    pub created_unix_ms: i64,
    /// Newest version number, 0 if none.
    pub latest_version: u64,
    /// What a snapshot does with symbolic links that lead outside the prefix.
    pub outside_links: OutsideLinks,
}

/// An object under a dataset's prefix that is not in a version, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedObject {
    /// Its key in the source.
    pub key: String,
    pub reason: String,
}

/// Figures of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub dataset: String,
    pub number: u64,
    pub root: Digest,
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub new_bytes: u64,
    pub bytes_read: u64,
    pub created_unix_ms: i64,
    /// Objects under the prefix that the snapshot left out, with why.
    pub skipped: Vec<SkippedObject>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionRecord {
    pub name: String,
    /// Link budget, bytes per second.
    pub rate: u64,
    pub created_unix_ms: i64,
}

/// Where a region stands with one version of a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    pub dataset: String,
    pub version: u64,
    pub region: String,
    pub total_bytes: u64,
    pub cached_bytes: u64,
    /// `Pending`, `Transferring`, `Ready` or `Failed`.
    pub phase: String,
    pub reason: String,
    /// Achieved rate, bytes per second, as last reported.
    pub rate: u64,
    pub budget: u64,
    /// Bytes the hub relayed to the region for this version.
    pub relayed_bytes: u64,
    /// The version's root.
    pub root: Digest,
    pub updated_unix_ms: i64,
    pub mode: ReplicationMode,
    /// When the region was asked to hold the version (0: before schema 3 kept it).
    pub added_unix_ms: i64,
    /// When the region first held the version whole and verified (Ready); never again unset.
    /// What the cut-over and a changed source go by (see `relay::active_versions`).
    pub ready_unix_ms: Option<i64>,
}

/// What identifies the state of a source object when a version was cut: if the object still
/// has the same stamp, its chunk list can be reused without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStamp {
    pub size: u64,
    pub mtime_unix_ms: i64,
    pub etag: Option<String>,
}

/// A version as stored: its figures, its manifest and each file's source stamp (by path).
#[derive(Clone, Debug)]
pub struct StoredVersion {
    pub record: VersionRecord,
    pub manifest: Manifest,
    pub stamps: BTreeMap<String, SourceStamp>,
}

/// The hub's metadata store. Every method is short and synchronous; callers on the async
/// runtime go through `spawn_blocking`.
pub trait MetaStore: Send + Sync {
    fn add_source(&self, source: &SourceRecord) -> Result<(), StoreError>;
    fn source(&self, name: &str) -> Result<Option<SourceRecord>, StoreError>;
    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError>;
    /// Fails with `NotFound` if the dataset's source does not exist.
    fn add_dataset(&self, dataset: &DatasetRecord) -> Result<(), StoreError>;
    fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, StoreError>;
    fn datasets(&self) -> Result<Vec<DatasetRecord>, StoreError>;
    /// Sets what snapshots of a dataset do with links outside its prefix; `NotFound` if there
    /// is no such dataset.
    fn set_outside_links(&self, dataset: &str, policy: OutsideLinks) -> Result<(), StoreError>;
    fn versions(&self, dataset: &str) -> Result<Vec<VersionRecord>, StoreError>;
    /// One version, or the newest with `None`.
    fn version(&self, dataset: &str, number: Option<u64>) -> Result<Option<StoredVersion>, StoreError>;
    /// Records `manifest` as version `previous + 1` of its dataset, with the objects it left
    /// out, atomically; fails with `Conflict` if the newest version is no longer `previous`.
    /// The manifest's version number is ignored and the assigned one returned.
    fn insert_version(&self, previous: u64, manifest: &Manifest, cut: &VersionCut)
    -> Result<VersionRecord, StoreError>;
    fn add_region(&self, region: &RegionRecord) -> Result<(), StoreError>;
    fn regions(&self) -> Result<Vec<RegionRecord>, StoreError>;
    /// Sets a region's link budget; fails with `NotFound` if there is no such region.
    fn set_region_rate(&self, name: &str, rate: u64) -> Result<(), StoreError>;
    /// Asks `regions` to hold a version; regions that already have it keep their state.
    /// Fails with `NotFound` naming the first unknown region or version, writing nothing.
    /// Asks `regions` to hold the version in `mode`; a region asked again gets the new mode.
    fn add_rollout(
        &self,
        dataset: &str,
        version: u64,
        regions: &[String],
        mode: ReplicationMode,
        now_unix_ms: i64,
    ) -> Result<(), StoreError>;
    /// Every rollout (of one dataset, or of all), by dataset, version and region.
    fn rollouts(&self, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError>;
    /// Records what a region reported about a version it was asked to hold. A row that was
    /// Ready once stays Ready (with its cached bytes): a spoke that joins the region later, or
    /// fails, shows per node, not in the region's row.
    fn update_rollout(&self, update: &RolloutUpdate) -> Result<(), StoreError>;
    /// Adds to the bytes relayed to a region for a version.
    fn add_relayed(&self, dataset: &str, version: u64, region: &str, bytes: u64) -> Result<(), StoreError>;
    /// Marks a version failed, with `reason`, in every region that was asked to hold it and
    /// never held it whole; the regions that did keep it. Returns the regions it failed in.
    fn fail_version(
        &self,
        dataset: &str,
        version: u64,
        reason: &str,
        now_unix_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
}

/// What a snapshot adds to a manifest when it records a version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionCut {
    /// Each file's source stamp, by path.
    pub stamps: BTreeMap<String, SourceStamp>,
    pub new_bytes: u64,
    pub bytes_read: u64,
    pub created_unix_ms: i64,
    pub skipped: Vec<SkippedObject>,
}

/// A region's report on one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutUpdate {
    pub dataset: String,
    pub version: u64,
    pub region: String,
    pub cached_bytes: u64,
    pub phase: String,
    pub reason: String,
    pub rate: u64,
    pub updated_unix_ms: i64,
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
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
    outside_links TEXT NOT NULL DEFAULT 'fail'
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
    created_ms INTEGER NOT NULL
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
    PRIMARY KEY (dataset, version, region),
    FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
);
CREATE TABLE IF NOT EXISTS skipped_objects (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    FOREIGN KEY (dataset, version) REFERENCES versions(dataset, number)
);
";

/// Steps that bring a database of schema version `from` to `from + 1`, in order. Each runs
/// in one transaction with the version bump; a step is self-contained (it does not rely on
/// `SCHEMA` having run), so steps can be renumbered or added without touching the others.
const MIGRATIONS: &[(i64, &str)] = &[
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
];

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        let found: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).optional()?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(v) => {
                let mut found: i64 = v.parse().unwrap_or(-1);
                if !(1..=SCHEMA_VERSION).contains(&found) {
                    return Err(StoreError::Schema { found });
                }
                while found < SCHEMA_VERSION {
                    let Some((_, step)) = MIGRATIONS.iter().find(|(from, _)| *from == found) else {
                        return Err(StoreError::Schema { found });
                    };
                    conn.execute_batch(&format!(
                        "BEGIN;\n{step}\nUPDATE meta SET value = '{}' WHERE key = 'schema_version';\nCOMMIT;",
                        found + 1
                    ))?;
                    found += 1;
                }
            }
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bytes per chunk in a file's chunk list: the digest, and the length as a little-endian u32.
const CHUNK_RECORD: usize = Digest::LEN + 4;

fn encode_chunks(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * CHUNK_RECORD);
    for c in chunks {
        out.extend_from_slice(c.digest.as_bytes());
        out.extend_from_slice(&c.length.to_le_bytes());
    }
    out
}

/// The chunks of the file at `path` from their blob (see the module's doc); damaged bytes
/// are `Corrupt`, never a panic.
fn decode_chunks(path: &str, blob: &[u8]) -> Result<Vec<ChunkRef>, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("chunk list of {path:?} {what}"));
    if !blob.len().is_multiple_of(CHUNK_RECORD) {
        return Err(corrupt(format!("has {} bytes, not a multiple of {CHUNK_RECORD}", blob.len())));
    }
    let mut offset = 0u64;
    let mut chunks = Vec::with_capacity(blob.len() / CHUNK_RECORD);
    for record in blob.chunks_exact(CHUNK_RECORD) {
        let (digest, length) = record.split_at(Digest::LEN);
        let (Some(digest), Ok(length)) = (Digest::from_slice(digest), <[u8; 4]>::try_from(length)) else {
            return Err(corrupt("has a record of the wrong size".into()));
        };
        let length = u32::from_le_bytes(length);
        chunks.push(ChunkRef { digest, offset, length });
        offset = offset.checked_add(u64::from(length)).ok_or_else(|| corrupt("is longer than a file can be".into()))?;
    }
    Ok(chunks)
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn version_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(VersionRecord, ChunkerParams)> {
    let root: Vec<u8> = row.get(2)?;
    Ok((
        VersionRecord {
            dataset: row.get(0)?,
            number: row.get::<_, i64>(1)? as u64,
            root: Digest::from_slice(&root).unwrap_or(Digest([0; 32])),
            files: row.get::<_, i64>(6)? as u64,
            bytes: row.get::<_, i64>(7)? as u64,
            chunks: row.get::<_, i64>(8)? as u64,
            new_bytes: row.get::<_, i64>(9)? as u64,
            bytes_read: row.get::<_, i64>(10)? as u64,
            created_unix_ms: row.get(11)?,
            skipped: Vec::new(),
        },
        ChunkerParams { min_size: row.get(3)?, avg_size: row.get(4)?, max_size: row.get(5)? },
    ))
}

const VERSION_COLUMNS: &str =
    "dataset, number, root, chunk_min, chunk_avg, chunk_max, files, bytes, chunks, new_bytes, bytes_read, created_ms";

impl MetaStore for SqliteStore {
    fn add_source(&self, s: &SourceRecord) -> Result<(), StoreError> {
        let options = serde_json::to_string(&s.options).expect("a string map serialises");
        self.conn()
            .execute(
                "INSERT INTO sources (name, url, options, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![s.name, s.url, options, s.created_unix_ms],
            )
            .map_err(map_constraint("source", &s.name))?;
        Ok(())
    }

    fn source(&self, name: &str) -> Result<Option<SourceRecord>, StoreError> {
        Ok(self.sources()?.into_iter().find(|s| s.name == name))
    }

    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, url, options, created_ms FROM sources ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        rows.map(|row| {
            let (name, url, options, created_unix_ms) = row?;
            let options = serde_json::from_str(&options)
                .map_err(|e| StoreError::Corrupt(format!("options of source {name:?}: {e}")))?;
            Ok(SourceRecord { name, url, options, created_unix_ms })
        })
        .collect()
    }

    fn add_dataset(&self, d: &DatasetRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let source_exists: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM sources WHERE name = ?1)", [&d.source], |r| r.get(0))?;
        if !source_exists {
            return Err(StoreError::NotFound { kind: "source", name: d.source.clone() });
        }
        tx.execute(
            "INSERT INTO datasets (name, source, prefix, created_ms, outside_links) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![d.name, d.source, d.prefix, d.created_unix_ms, d.outside_links.to_string()],
        )
        .map_err(map_constraint("dataset", &d.name))?;
        tx.commit()?;
        Ok(())
    }

    fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, StoreError> {
        Ok(self.datasets()?.into_iter().find(|d| d.name == name))
    }

    fn datasets(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT d.name, d.source, d.prefix, d.created_ms, COALESCE(MAX(v.number), 0), d.outside_links
             FROM datasets d LEFT JOIN versions v ON v.dataset = d.name
             GROUP BY d.name, d.source, d.prefix, d.created_ms, d.outside_links ORDER BY d.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                DatasetRecord {
                    name: r.get(0)?,
                    source: r.get(1)?,
                    prefix: r.get(2)?,
                    created_unix_ms: r.get(3)?,
                    latest_version: r.get::<_, i64>(4)? as u64,
                    outside_links: OutsideLinks::Fail,
                },
                r.get::<_, String>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (mut d, policy) = row?;
            d.outside_links = policy
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("outside_links of dataset {:?}: {e}", d.name)))?;
            Ok(d)
        })
        .collect()
    }

    fn set_outside_links(&self, dataset: &str, policy: OutsideLinks) -> Result<(), StoreError> {
        let changed = self
            .conn()
            .execute("UPDATE datasets SET outside_links = ?2 WHERE name = ?1", params![dataset, policy.to_string()])?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "dataset", name: dataset.to_string() });
        }
        Ok(())
    }

    fn versions(&self, dataset: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1 ORDER BY number"))?;
        let rows = stmt.query_map([dataset], version_record)?;
        let mut versions: Vec<VersionRecord> = rows.map(|r| r.map(|(v, _)| v)).collect::<Result<_, _>>()?;
        let mut stmt =
            conn.prepare("SELECT version, key, reason FROM skipped_objects WHERE dataset = ?1 ORDER BY rowid")?;
        let mut rows = stmt.query([dataset])?;
        while let Some(r) = rows.next()? {
            let number = r.get::<_, i64>(0)? as u64;
            if let Some(v) = versions.iter_mut().find(|v| v.number == number) {
                v.skipped.push(SkippedObject { key: r.get(1)?, reason: r.get(2)? });
            }
        }
        Ok(versions)
    }

    fn version(&self, dataset: &str, number: Option<u64>) -> Result<Option<StoredVersion>, StoreError> {
        let conn = self.conn();
        let found = match number {
            Some(n) => conn
                .query_row(
                    &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1 AND number = ?2"),
                    params![dataset, n as i64],
                    version_record,
                )
                .optional()?,
            None => conn
                .query_row(
                    &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1 ORDER BY number DESC LIMIT 1"),
                    [dataset],
                    version_record,
                )
                .optional()?,
        };
        let Some((mut record, chunker)) = found else { return Ok(None) };
        let mut stmt =
            conn.prepare("SELECT key, reason FROM skipped_objects WHERE dataset = ?1 AND version = ?2 ORDER BY rowid")?;
        record.skipped = stmt
            .query_map(params![dataset, record.number as i64], |r| {
                Ok(SkippedObject { key: r.get(0)?, reason: r.get(1)? })
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT path, object, size, mode, mtime_ms, etag, chunks FROM files
             WHERE dataset = ?1 AND version = ?2 ORDER BY path",
        )?;
        let mut files = Vec::new();
        let mut stamps = BTreeMap::new();
        let mut rows = stmt.query(params![dataset, record.number as i64])?;
        while let Some(r) = rows.next()? {
            let path: String = r.get(0)?;
            let size = r.get::<_, i64>(2)? as u64;
            let mtime_unix_ms: i64 = r.get(4)?;
            let chunks = decode_chunks(&path, &r.get::<_, Vec<u8>>(6)?)?;
            stamps.insert(path.clone(), SourceStamp { size, mtime_unix_ms, etag: r.get(5)? });
            files.push(FileEntry { path, object: r.get(1)?, size, mode: r.get(3)?, mtime_unix_ms, chunks });
        }
        let manifest =
            Manifest { dataset: dataset.to_string(), version: record.number, chunker, files, root: record.root };
        manifest.validate().map_err(|e| StoreError::Corrupt(format!("{dataset}@v{}: {e}", record.number)))?;
        Ok(Some(StoredVersion { record, manifest, stamps }))
    }

    fn insert_version(&self, previous: u64, m: &Manifest, cut: &VersionCut) -> Result<VersionRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let latest: i64 =
            tx.query_row("SELECT COALESCE(MAX(number), 0) FROM versions WHERE dataset = ?1", [&m.dataset], |r| {
                r.get(0)
            })?;
        if latest as u64 != previous {
            return Err(StoreError::Conflict { dataset: m.dataset.clone(), latest: latest as u64 });
        }
        let record = VersionRecord {
            dataset: m.dataset.clone(),
            number: previous + 1,
            root: m.root,
            files: m.files.len() as u64,
            bytes: m.total_bytes(),
            chunks: m.chunk_count(),
            new_bytes: cut.new_bytes,
            bytes_read: cut.bytes_read,
            created_unix_ms: cut.created_unix_ms,
            skipped: cut.skipped.clone(),
        };
        tx.execute(
            &format!(
                "INSERT INTO versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ),
            params![
                record.dataset,
                record.number as i64,
                record.root.as_bytes().as_slice(),
                m.chunker.min_size,
                m.chunker.avg_size,
                m.chunker.max_size,
                record.files as i64,
                record.bytes as i64,
                record.chunks as i64,
                record.new_bytes as i64,
                record.bytes_read as i64,
                record.created_unix_ms,
            ],
        )?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO files (dataset, version, path, object, size, mode, mtime_ms, etag, chunks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for f in &m.files {
                let etag = cut.stamps.get(&f.path).and_then(|s| s.etag.clone());
                stmt.execute(params![
                    m.dataset,
                    record.number as i64,
                    f.path,
                    f.object,
                    f.size as i64,
                    f.mode,
                    f.mtime_unix_ms,
                    etag,
                    encode_chunks(&f.chunks),
                ])?;
            }
            let mut stmt =
                tx.prepare("INSERT INTO skipped_objects (dataset, version, key, reason) VALUES (?1, ?2, ?3, ?4)")?;
            for skipped in &cut.skipped {
                stmt.execute(params![m.dataset, record.number as i64, skipped.key, skipped.reason])?;
            }
        }
        tx.commit()?;
        Ok(record)
    }

    fn add_region(&self, r: &RegionRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO regions (name, rate, created_ms) VALUES (?1, ?2, ?3)",
                params![r.name, r.rate as i64, r.created_unix_ms],
            )
            .map_err(map_constraint("region", &r.name))?;
        Ok(())
    }

    fn regions(&self) -> Result<Vec<RegionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, rate, created_ms FROM regions ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(RegionRecord { name: r.get(0)?, rate: r.get::<_, i64>(1)? as u64, created_unix_ms: r.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_region_rate(&self, name: &str, rate: u64) -> Result<(), StoreError> {
        let changed =
            self.conn().execute("UPDATE regions SET rate = ?2 WHERE name = ?1", params![name, rate as i64])?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        Ok(())
    }

    fn add_rollout(
        &self,
        dataset: &str,
        version: u64,
        regions: &[String],
        mode: ReplicationMode,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let version_exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM versions WHERE dataset = ?1 AND number = ?2)",
            params![dataset, version as i64],
            |r| r.get(0),
        )?;
        if !version_exists {
            return Err(StoreError::NotFound { kind: "version", name: format!("{dataset}@v{version}") });
        }
        for region in regions {
            let exists: bool =
                tx.query_row("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", [region], |r| r.get(0))?;
            if !exists {
                return Err(StoreError::NotFound { kind: "region", name: region.clone() });
            }
            tx.execute(
                "INSERT INTO rollouts (dataset, version, region, phase, reason, cached_bytes, relayed_bytes, rate, updated_ms, mode, added_ms)
                 VALUES (?1, ?2, ?3, 'Pending', '', 0, 0, 0, ?4, ?5, ?4)
                 ON CONFLICT (dataset, version, region) DO UPDATE SET mode = excluded.mode",
                params![dataset, version as i64, region, now, mode.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn rollouts(&self, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT o.dataset, o.version, o.region, v.bytes, o.cached_bytes, o.phase, o.reason, o.rate, r.rate, o.updated_ms, o.relayed_bytes, v.root, o.mode, o.added_ms, o.ready_ms
             FROM rollouts o
             JOIN versions v ON v.dataset = o.dataset AND v.number = o.version
             JOIN regions r ON r.name = o.region
             WHERE ?1 IS NULL OR o.dataset = ?1
             ORDER BY o.dataset, o.version, o.region",
        )?;
        let rows = stmt.query_map([dataset], |r| {
            Ok(RolloutRecord {
                dataset: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                region: r.get(2)?,
                total_bytes: r.get::<_, i64>(3)? as u64,
                cached_bytes: r.get::<_, i64>(4)? as u64,
                phase: r.get(5)?,
                reason: r.get(6)?,
                rate: r.get::<_, i64>(7)? as u64,
                budget: r.get::<_, i64>(8)? as u64,
                updated_unix_ms: r.get(9)?,
                relayed_bytes: r.get::<_, i64>(10)? as u64,
                root: Digest::from_slice(&r.get::<_, Vec<u8>>(11)?).unwrap_or(Digest([0; 32])),
                mode: r.get::<_, String>(12)?.parse().unwrap_or_default(),
                added_unix_ms: r.get(13)?,
                ready_unix_ms: r.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn update_rollout(&self, u: &RolloutUpdate) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            // Ready stays Ready: a spoke joining the region later does not take a version the
            // region serves back to Transferring. The first Ready is remembered.
            "UPDATE rollouts SET
                cached_bytes = CASE WHEN ready_ms IS NOT NULL THEN cached_bytes ELSE ?4 END,
                phase = CASE WHEN ready_ms IS NOT NULL THEN 'Ready' ELSE ?5 END,
                reason = CASE WHEN ready_ms IS NOT NULL THEN '' ELSE ?6 END,
                ready_ms = CASE WHEN ready_ms IS NULL AND ?5 = 'Ready' THEN ?8 ELSE ready_ms END,
                rate = ?7, updated_ms = ?8
             WHERE dataset = ?1 AND version = ?2 AND region = ?3",
            params![
                u.dataset,
                u.version as i64,
                u.region,
                u.cached_bytes as i64,
                u.phase,
                u.reason,
                u.rate as i64,
                u.updated_unix_ms
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                kind: "rollout",
                name: format!("{}@v{} to {}", u.dataset, u.version, u.region),
            });
        }
        Ok(())
    }

    fn add_relayed(&self, dataset: &str, version: u64, region: &str, bytes: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE rollouts SET relayed_bytes = relayed_bytes + ?4 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
            params![dataset, version as i64, region, bytes as i64],
        )?;
        Ok(())
    }

    fn fail_version(&self, dataset: &str, version: u64, reason: &str, now: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let failed = {
            let mut stmt = tx.prepare(
                "UPDATE rollouts SET phase = 'Failed', reason = ?3, rate = 0, updated_ms = ?4
                 WHERE dataset = ?1 AND version = ?2 AND ready_ms IS NULL
                 RETURNING region",
            )?;
            let rows = stmt.query_map(params![dataset, version as i64, reason, now], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        tx.commit()?;
        let mut failed = failed;
        failed.sort();
        Ok(failed)
    }
}

fn map_constraint(kind: &'static str, name: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let name = name.to_string();
    move |e| if is_constraint(&e) { StoreError::AlreadyExists { kind, name } } else { e.into() }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        /// A chunk list read from the database, damaged or not: the chunks it holds (tiling
        /// from 0) or `Corrupt`, never a panic; what decodes encodes to the same bytes.
        #[test]
        fn fuzz_chunk_list_blob_from_any_bytes(blob in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|r| r.repeat(36)),
        ]) {
            match decode_chunks("f", &blob) {
                Ok(chunks) => {
                    prop_assert_eq!(chunks.len() * CHUNK_RECORD, blob.len());
                    let mut offset = 0;
                    for c in &chunks {
                        prop_assert_eq!(c.offset, offset);
                        offset += u64::from(c.length);
                    }
                    prop_assert_eq!(encode_chunks(&chunks), blob);
                }
                Err(e) => {
                    prop_assert!(!blob.len().is_multiple_of(CHUNK_RECORD));
                    prop_assert!(e.to_string().contains("chunk list of \"f\""), "{}", e);
                }
            }
        }

        #[test]
        fn fuzz_chunk_list_blob_round_trip(chunks in proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..20)) {
            let mut offset = 0;
            let chunks: Vec<ChunkRef> = chunks
                .into_iter()
                .map(|(d, length)| {
                    let c = ChunkRef { digest: Digest(d), offset, length };
                    offset += u64::from(length);
                    c
                })
                .collect();
            prop_assert_eq!(decode_chunks("f", &encode_chunks(&chunks)).unwrap(), chunks);
        }
    }

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

    fn store_with_dataset() -> SqliteStore {
        with_dataset(SqliteStore::in_memory().unwrap())
    }

    /// Source `s` and dataset `d` in `store`.
    fn with_dataset(store: SqliteStore) -> SqliteStore {
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
            })
            .unwrap();
        store
    }

    #[test]
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
        assert_eq!(
            store.version("d", Some(1)).unwrap().unwrap().manifest.files[0].chunks[0].digest,
            Digest::of(b"abc")
        );
        assert!(store.version("d", Some(3)).unwrap().is_none());
        assert_eq!(store.datasets().unwrap()[0].latest_version, 2);
        assert_eq!(store.versions("d").unwrap().len(), 2);
    }

    #[test]
    fn stale_snapshots_conflict_and_leave_nothing() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        let err = store.insert_version(0, &manifest("d", b"xyz"), &cut(BTreeMap::new(), 11)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { latest: 1, .. }), "{err}");
        assert_eq!(store.versions("d").unwrap().len(), 1);
    }

    #[test]
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
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "source", .. }));
    }

    #[test]
    fn rollouts_need_known_regions_and_versions_and_are_idempotent() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        for (name, rate) in [("eu", 100), ("us", 50)] {
            store.add_region(&RegionRecord { name: name.into(), rate, created_unix_ms: 1 }).unwrap();
        }
        assert!(matches!(
            store.add_region(&RegionRecord { name: "eu".into(), rate: 1, created_unix_ms: 1 }),
            Err(StoreError::AlreadyExists { kind: "region", .. })
        ));
        let err = store.add_rollout("d", 1, &["eu".into(), "mars".into()], ReplicationMode::Auto, 20).unwrap_err();
        assert!(matches!(&err, StoreError::NotFound { kind: "region", name } if name == "mars"), "{err}");
        assert!(store.rollouts(None).unwrap().is_empty(), "a failed rollout wrote rows");
        let err = store.add_rollout("d", 2, &["eu".into()], ReplicationMode::Auto, 20).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "version", .. }), "{err}");

        store.add_rollout("d", 1, &["eu".into(), "us".into()], ReplicationMode::Auto, 20).unwrap();
        store.add_rollout("d", 1, &["eu".into()], ReplicationMode::Region, 30).unwrap();
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
    }

    #[test]
    fn a_schema_1_database_gains_replication_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let store = with_dataset(SqliteStore::open(&path).unwrap());
            store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
            store.add_region(&RegionRecord { name: "eu".into(), rate: 1, created_unix_ms: 1 }).unwrap();
            store.add_rollout("d", 1, &["eu".into()], ReplicationMode::Region, 20).unwrap();
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
        }
        let store = SqliteStore::open(&path).unwrap();
        let rows = store.rollouts(None).unwrap();
        assert_eq!((rows.len(), rows[0].mode), (1, ReplicationMode::Auto));
        let version: String =
            store.conn().query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string(), "migrated step by step to this build's schema");
    }

    #[test]
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
            .insert_version(
                0,
                &manifest("d", b"abc"),
                &VersionCut { skipped: skipped.clone(), ..cut(BTreeMap::new(), 1) },
            )
            .unwrap();
        assert_eq!(v1.skipped, skipped);
        store.insert_version(1, &manifest("d", b"xyz"), &cut(BTreeMap::new(), 2)).unwrap();
        assert_eq!(store.version("d", Some(1)).unwrap().unwrap().record.skipped, skipped);
        assert!(store.version("d", None).unwrap().unwrap().record.skipped.is_empty());
        let versions = store.versions("d").unwrap();
        assert_eq!((versions[0].skipped.len(), versions[1].skipped.len()), (2, 0));
        assert!("sometimes".parse::<OutsideLinks>().unwrap_err().contains("fail or skip"));
    }

    #[test]
    fn a_schema_2_database_gains_link_policies_and_skipped_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let store = with_dataset(SqliteStore::open(&path).unwrap());
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
        }
        let store = SqliteStore::open(&path).unwrap();
        let d = store.dataset("d").unwrap().unwrap();
        assert_eq!((d.outside_links, d.latest_version), (OutsideLinks::Fail, 1));
        assert!(store.versions("d").unwrap()[0].skipped.is_empty());
        let skipped = vec![SkippedObject { key: "p/x".into(), reason: "r".into() }];
        let v2 = store
            .insert_version(
                1,
                &manifest("d", b"xyz"),
                &VersionCut { skipped: skipped.clone(), ..cut(BTreeMap::new(), 11) },
            )
            .unwrap();
        assert_eq!(store.version("d", Some(v2.number)).unwrap().unwrap().record.skipped, skipped);
        let version: String =
            store.conn().query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        // A database from a newer hub is refused, named.
        store.conn().execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
        drop(store);
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Schema { found: 99 }), "{err}");
    }

    /// A schema 3 database (no activation columns) is migrated: a row that was Ready is Ready
    /// since its last update, the others never were; new rows record when they were added.
    #[test]
    fn a_schema_3_database_remembers_which_regions_were_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let store = with_dataset(SqliteStore::open(&path).unwrap());
            store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
            for name in ["eu", "us"] {
                store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1 }).unwrap();
            }
            store.add_rollout("d", 1, &["eu".into(), "us".into()], ReplicationMode::Auto, 20).unwrap();
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
        }
        let store = SqliteStore::open(&path).unwrap();
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
        assert!(matches!(SqliteStore::open(&path), Err(StoreError::Schema { found: 99 })));
    }

    fn update(region: &str, phase: &str, cached: u64, now: i64) -> RolloutUpdate {
        RolloutUpdate {
            dataset: "d".into(),
            version: 1,
            region: region.into(),
            cached_bytes: cached,
            phase: phase.into(),
            reason: if phase == "Failed" { "a reason".into() } else { String::new() },
            rate: 5,
            updated_unix_ms: now,
        }
    }

    /// Ready once, Ready for good: later reports (a spoke that joined, one that failed) and a
    /// source that changed do not take it back; the version fails where it was not whole yet.
    #[test]
    fn a_region_that_was_ready_keeps_the_version_and_only_the_others_fail() {
        let store = store_with_dataset();
        store.insert_version(0, &manifest("d", b"abc"), &cut(BTreeMap::new(), 10)).unwrap();
        for name in ["ap", "eu", "us"] {
            store.add_region(&RegionRecord { name: name.into(), rate: 1, created_unix_ms: 1 }).unwrap();
        }
        store.add_rollout("d", 1, &["eu".into(), "us".into()], ReplicationMode::Auto, 20).unwrap();
        store.update_rollout(&update("eu", "Ready", 3, 30)).unwrap();
        store.update_rollout(&update("eu", "Transferring", 1, 35)).unwrap();
        store.update_rollout(&update("eu", "Failed", 0, 36)).unwrap();
        store.update_rollout(&update("us", "Transferring", 1, 37)).unwrap();
        // Asked again (another mode): when it was added does not change.
        store.add_rollout("d", 1, &["eu".into(), "ap".into()], ReplicationMode::Region, 50).unwrap();
        let rows = store.rollouts(None).unwrap();
        let seen: Vec<(&str, &str, u64, i64, Option<i64>)> = rows
            .iter()
            .map(|r| (r.region.as_str(), r.phase.as_str(), r.cached_bytes, r.added_unix_ms, r.ready_unix_ms))
            .collect();
        assert_eq!(
            seen,
            [("ap", "Pending", 0, 50, None), ("eu", "Ready", 3, 20, Some(30)), ("us", "Transferring", 1, 20, None)]
        );
        let failed = store.fail_version("d", 1, "source changed: p/a.bin", 60).unwrap();
        assert_eq!(failed, ["ap", "us"]);
        let rows = store.rollouts(None).unwrap();
        let seen: Vec<(&str, &str, &str)> =
            rows.iter().map(|r| (r.region.as_str(), r.phase.as_str(), r.reason.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("ap", "Failed", "source changed: p/a.bin"),
                ("eu", "Ready", ""),
                ("us", "Failed", "source changed: p/a.bin")
            ]
        );
    }

    #[test]
    fn reopening_a_file_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .add_source(&SourceRecord {
                    name: "s".into(),
                    url: "file:///x".into(),
                    options: BTreeMap::new(),
                    created_unix_ms: 1,
                })
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.sources().unwrap().len(), 1);
    }
}
