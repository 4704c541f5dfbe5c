//! The SQLite engine of the [`MetaStore`]: one file under the hub's data directory (or
//! memory, for tests), opened in WAL mode with every commit synced. One connection behind a
//! lock: each call is one short transaction, so rows change atomically and the rollout rules
//! ([`rollout::after_report`], [`rollout::after_source_changed`]) see and write a row in the
//! same transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::{ChunkerParams, Digest, FileEntry, Manifest, Phase};
use rusqlite::{Connection, OptionalExtension, params};

use super::chunk_list::{decode_chunks, encode_chunks};
use super::schema;
use super::{
    DatasetRecord, MetaStore, RegionRecord, RegionSchedule, SkippedObject, SourceRecord, SourceStamp, StoreError,
    StoredVersion, VersionCut, VersionRecord,
};
use crate::rollout::cutover::ServingRecord;
use crate::rollout::{self, RolloutKey, RolloutRecord, RowState, VersionId};

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// Writes a consistent copy of the database at `db` (in use by a running hub or not) to
    /// `out`, which must not exist: SQLite's `VACUUM INTO`, read-only on `db`.
    pub fn copy_into(db: &Path, out: &Path) -> Result<(), StoreError> {
        let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])?;
        Ok(())
    }

    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        if schema::prepare(&conn)?.is_some_and(|was| was < 5) {
            // What each region serves was recomputed from the rows before schema 5: start
            // from what that gave, so that no region changes what it serves on the upgrade.
            let rows = rollouts_in(&conn, None)?;
            let tx = conn.unchecked_transaction()?;
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            for s in rollout::serving_from_rows(&rows, now) {
                write_serving(&tx, &s)?;
            }
            tx.commit()?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
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
            "SELECT d.name, d.source, d.prefix, d.created_ms,
                    MAX(COALESCE(MAX(v.number), 0), COALESCE((SELECT last_version FROM retired WHERE dataset = d.name), 0)),
                    d.outside_links, d.keep_versions
             FROM datasets d LEFT JOIN versions v ON v.dataset = d.name
             GROUP BY d.name, d.source, d.prefix, d.created_ms, d.outside_links, d.keep_versions ORDER BY d.name",
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
                    keep_versions: r.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
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
        let manifest = Manifest {
            dataset: dataset.to_string(),
            version: record.number,
            chunker,
            files,
            root: record.root,
            signature: None,
        };
        manifest.validate().map_err(|e| StoreError::Corrupt(format!("{dataset}@v{}: {e}", record.number)))?;
        Ok(Some(StoredVersion { record, manifest, stamps }))
    }

    fn insert_version(&self, previous: u64, m: &Manifest, cut: &VersionCut) -> Result<VersionRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let latest: i64 = tx.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(number) FROM versions WHERE dataset = ?1), 0),
                        COALESCE((SELECT last_version FROM retired WHERE dataset = ?1), 0))",
            [&m.dataset],
            |r| r.get(0),
        )?;
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
        let (schedule, time_zone) =
            r.schedule.as_ref().map_or(("", "UTC"), |s| (s.text.as_str(), s.time_zone.as_str()));
        self.conn()
            .execute(
                "INSERT INTO regions (name, rate, created_ms, schedule, time_zone) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.name, r.rate as i64, r.created_unix_ms, schedule, time_zone],
            )
            .map_err(map_constraint("region", &r.name))?;
        Ok(())
    }

    fn regions(&self) -> Result<Vec<RegionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, rate, created_ms, schedule, time_zone FROM regions ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            let (text, time_zone): (String, String) = (r.get(3)?, r.get(4)?);
            Ok(RegionRecord {
                name: r.get(0)?,
                rate: r.get::<_, i64>(1)? as u64,
                created_unix_ms: r.get(2)?,
                schedule: (!text.is_empty()).then_some(RegionSchedule { text, time_zone }),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_region_rate(&self, name: &str, rate: u64) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE regions SET rate = ?2, schedule = '', time_zone = 'UTC' WHERE name = ?1",
            params![name, rate as i64],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        Ok(())
    }

    fn set_region_schedule(&self, name: &str, schedule: &RegionSchedule) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE regions SET schedule = ?2, time_zone = ?3 WHERE name = ?1",
            params![name, schedule.text, schedule.time_zone],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        Ok(())
    }

    fn rollouts(&self, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
        rollouts_in(&self.conn(), dataset)
    }

    fn add_relayed(&self, key: &RolloutKey, bytes: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE rollouts SET relayed_bytes = relayed_bytes + ?4 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
            params![key.dataset, key.version as i64, key.region, bytes as i64],
        )?;
        Ok(())
    }

    fn fail_version(&self, version: &VersionId, reason: &str, now: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let regions: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT region FROM rollouts WHERE dataset = ?1 AND version = ?2 ORDER BY region")?;
            let rows = stmt.query_map(params![version.dataset, version.version as i64], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut failed = Vec::new();
        for region in regions {
            let key = RolloutKey::of(version.clone(), region);
            let Some(row) = row_state(&tx, &key)? else { continue };
            if let Some(next) = rollout::after_source_changed(&row, reason) {
                write_row_state(&tx, &key, &next, now)?;
                failed.push(key.region);
            }
        }
        tx.commit()?;
        Ok(failed)
    }
}

/// A stored phase: its text name (see [`Phase::as_str`]), the one conversion both ways.
pub(super) fn phase_of(key: &RolloutKey, text: &str) -> Result<Phase, StoreError> {
    text.parse().map_err(|e| StoreError::Corrupt(format!("phase of rollout {key}: {e}")))
}

/// What the lifecycle rules change of a rollout's row, as stored (`None`: no such row).
pub(super) fn row_state(tx: &rusqlite::Transaction<'_>, key: &RolloutKey) -> Result<Option<RowState>, StoreError> {
    let found = tx
        .query_row(
            "SELECT phase, cached_bytes, reason, rate, ready_ms FROM rollouts
             WHERE dataset = ?1 AND version = ?2 AND region = ?3",
            params![key.dataset, key.version as i64, key.region],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, Option<i64>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((phase, cached_bytes, reason, rate, ready_unix_ms)) = found else { return Ok(None) };
    Ok(Some(RowState { phase: phase_of(key, &phase)?, cached_bytes, reason, rate, ready_unix_ms }))
}

pub(super) fn write_row_state(
    tx: &rusqlite::Transaction<'_>,
    key: &RolloutKey,
    row: &RowState,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE rollouts SET phase = ?4, cached_bytes = ?5, reason = ?6, rate = ?7, ready_ms = ?8, updated_ms = ?9
         WHERE dataset = ?1 AND version = ?2 AND region = ?3",
        params![
            key.dataset,
            key.version as i64,
            key.region,
            row.phase.as_str(),
            row.cached_bytes as i64,
            row.reason,
            row.rate as i64,
            row.ready_unix_ms,
            now
        ],
    )?;
    Ok(())
}

pub(super) fn map_constraint(kind: &'static str, name: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
    let name = name.to_string();
    move |e| if is_constraint(&e) { StoreError::AlreadyExists { kind, name } } else { e.into() }
}

/// Every rollout row (of one dataset, or of all), by dataset, version and region.
pub(super) fn rollouts_in(conn: &Connection, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT o.dataset, o.version, o.region, v.bytes, o.cached_bytes, o.phase, o.reason, o.rate, r.rate, o.updated_ms, o.relayed_bytes, v.root, o.mode, o.added_ms, o.ready_ms, o.cut_over, o.promote_pending, o.class
         FROM rollouts o
         JOIN versions v ON v.dataset = o.dataset AND v.number = o.version
         JOIN regions r ON r.name = o.region
         WHERE ?1 IS NULL OR o.dataset = ?1
         ORDER BY o.dataset, o.version, o.region",
    )?;
    let rows = stmt.query_map([dataset], |r| {
        Ok((
            RolloutRecord {
                dataset: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                region: r.get(2)?,
                total_bytes: r.get::<_, i64>(3)? as u64,
                cached_bytes: r.get::<_, i64>(4)? as u64,
                phase: Phase::Pending,
                reason: r.get(6)?,
                rate: r.get::<_, i64>(7)? as u64,
                budget: r.get::<_, i64>(8)? as u64,
                updated_unix_ms: r.get(9)?,
                relayed_bytes: r.get::<_, i64>(10)? as u64,
                root: Digest::from_slice(&r.get::<_, Vec<u8>>(11)?).unwrap_or(Digest([0; 32])),
                mode: r.get::<_, String>(12)?.parse().unwrap_or_default(),
                added_unix_ms: r.get(13)?,
                ready_unix_ms: r.get(14)?,
                cut_over: Default::default(),
                promote_pending: r.get::<_, i64>(16)? != 0,
                class: Default::default(),
            },
            (r.get::<_, String>(5)?, r.get::<_, String>(15)?, r.get::<_, String>(17)?),
        ))
    })?;
    rows.map(|row| {
        let (mut record, (phase, cut_over, class)) = row?;
        record.phase = phase_of(&record.key(), &phase)?;
        record.cut_over =
            cut_over.parse().map_err(|e| StoreError::Corrupt(format!("cut-over of rollout {}: {e}", record.key())))?;
        record.class =
            class.parse().map_err(|e| StoreError::Corrupt(format!("class of rollout {}: {e}", record.key())))?;
        Ok(record)
    })
    .collect()
}

/// Records what a region serves (replacing what it served).
pub(super) fn write_serving(conn: &Connection, s: &ServingRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO serving (dataset, region, version, since_ms, previous) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (dataset, region) DO UPDATE SET version = excluded.version, since_ms = excluded.since_ms, previous = excluded.previous",
        params![s.dataset, s.region, s.version as i64, s.since_unix_ms, s.previous as i64],
    )?;
    Ok(())
}
