//! The [`MetaStore`] on SQL: [`SqlStore`] keeps the hub's metadata in SQLite (one file under
//! the hub's data directory, or memory, for tests; WAL mode, every commit synced) or in
//! PostgreSQL (shared by several hubs), through one layer ([`super::sql`]). Each call is one
//! transaction, so rows change atomically and the rollout rules ([`rollout::after_report`],
//! [`rollout::after_source_changed`]) see and write a row in the same transaction.

use std::collections::BTreeMap;
use std::path::Path;

use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::{ChunkerParams, Digest, FileEntry, Manifest, Phase};
use rusqlite::Connection;

use super::chunk_list::{decode_chunks, encode_chunks};
use super::schema;
use super::sql::{Db, PostgresTarget, Row, Tx, args, is_constraint};
use super::{
    DatasetRecord, MetaStore, RegionRecord, RegionSchedule, SkippedObject, SourceRecord, SourceStamp, StoreError,
    StoredVersion, VersionCut, VersionRecord,
};
use crate::rollout::cutover::ServingRecord;
use crate::rollout::{self, RolloutKey, RolloutRecord, RowState, VersionId};

pub struct SqlStore {
    pub(super) db: Db,
}

impl SqlStore {
    /// Opens (creating if needed) the SQLite database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::init(Db::sqlite(conn))
    }

    /// Writes a consistent copy of the SQLite database at `db` (in use by a running hub or not)
    /// to `out`, which must not exist: SQLite's `VACUUM INTO`, read-only on `db`.
    pub fn copy_into(db: &Path, out: &Path) -> Result<(), StoreError> {
        let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])?;
        Ok(())
    }

    /// A SQLite database in memory (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Self::init(Db::sqlite(conn))
    }

    /// Connects to PostgreSQL, creating the tables (or bringing them up to date) as one hub at
    /// a time.
    pub fn postgres(target: &PostgresTarget) -> Result<Self, StoreError> {
        Self::init(Db::postgres(target)?)
    }

    fn init(db: Db) -> Result<Self, StoreError> {
        if schema::prepare(&db)?.is_some_and(|was| was < 5) {
            // What each region serves was recomputed from the rows before schema 5: start
            // from what that gave, so that no region changes what it serves on the upgrade.
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            db.write(|tx| {
                let rows = rollouts_in(tx, None)?;
                for s in rollout::serving_from_rows(&rows, now) {
                    write_serving(tx, &s)?;
                }
                Ok(())
            })?;
        }
        Ok(Self { db })
    }

    /// The SQLite connection, for tests that rewind a database to an old schema.
    #[cfg(test)]
    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.sqlite_conn().expect("a SQLite store")
    }
}

fn version_record(row: &Row) -> Result<(VersionRecord, ChunkerParams), StoreError> {
    let root: Vec<u8> = row.get(2)?;
    Ok((
        VersionRecord {
            dataset: row.get(0)?,
            number: row.get(1)?,
            root: Digest::from_slice(&root).unwrap_or(Digest([0; 32])),
            files: row.get(6)?,
            bytes: row.get(7)?,
            chunks: row.get(8)?,
            new_bytes: row.get(9)?,
            bytes_read: row.get(10)?,
            created_unix_ms: row.get(11)?,
            skipped: Vec::new(),
        },
        ChunkerParams { min_size: row.get(3)?, avg_size: row.get(4)?, max_size: row.get(5)? },
    ))
}

const VERSION_COLUMNS: &str =
    "dataset, number, root, chunk_min, chunk_avg, chunk_max, files, bytes, chunks, new_bytes, bytes_read, created_ms";

/// The newest number a dataset has had: its newest version's, or the last of a removed
/// dataset of that name.
fn latest_number(tx: &mut Tx<'_>, dataset: &str) -> Result<u64, StoreError> {
    let row = tx.query_one(
        "SELECT COALESCE((SELECT MAX(number) FROM versions WHERE dataset = ?1), 0),
                COALESCE((SELECT last_version FROM retired WHERE dataset = ?1), 0)",
        args![dataset],
    )?;
    Ok(row.get::<u64>(0)?.max(row.get(1)?))
}

impl MetaStore for SqlStore {
    fn add_source(&self, s: &SourceRecord) -> Result<(), StoreError> {
        let options = serde_json::to_string(&s.options).expect("a string map serialises");
        self.db
            .write(|tx| {
                tx.execute(
                    "INSERT INTO sources (name, url, options, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    args![&s.name, &s.url, &options, s.created_unix_ms],
                )
            })
            .map_err(map_constraint("source", &s.name))?;
        Ok(())
    }

    fn set_source_options(&self, name: &str, options: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let options = serde_json::to_string(options).expect("a string map serialises");
        let changed =
            self.db.write(|tx| tx.execute("UPDATE sources SET options = ?2 WHERE name = ?1", args![name, &options]))?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "source", name: name.to_string() });
        }
        Ok(())
    }

    fn source(&self, name: &str) -> Result<Option<SourceRecord>, StoreError> {
        Ok(self.sources()?.into_iter().find(|s| s.name == name))
    }

    fn sources(&self) -> Result<Vec<SourceRecord>, StoreError> {
        let rows =
            self.db.read(|tx| tx.query("SELECT name, url, options, created_ms FROM sources ORDER BY name", &[]))?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0)?;
                let options = serde_json::from_str(&r.get::<String>(2)?)
                    .map_err(|e| StoreError::Corrupt(format!("options of source {name:?}: {e}")))?;
                Ok(SourceRecord { name, url: r.get(1)?, options, created_unix_ms: r.get(3)? })
            })
            .collect()
    }

    fn add_dataset(&self, d: &DatasetRecord) -> Result<(), StoreError> {
        self.db.write(|tx| {
            let source_exists: bool =
                tx.query_one("SELECT EXISTS(SELECT 1 FROM sources WHERE name = ?1)", args![&d.source])?.get(0)?;
            if !source_exists {
                return Err(StoreError::NotFound { kind: "source", name: d.source.clone() });
            }
            tx.execute(
                "INSERT INTO datasets (name, source, prefix, created_ms, outside_links) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![&d.name, &d.source, &d.prefix, d.created_unix_ms, d.outside_links.to_string()],
            )
            .map_err(map_constraint("dataset", &d.name))?;
            Ok(())
        })
    }

    fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>, StoreError> {
        Ok(self.datasets()?.into_iter().find(|d| d.name == name))
    }

    fn datasets(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query(
                "SELECT d.name, d.source, d.prefix, d.created_ms, COALESCE(MAX(v.number), 0),
                        d.outside_links, d.keep_versions, COALESCE((SELECT last_version FROM retired WHERE dataset = d.name), 0)
                 FROM datasets d LEFT JOIN versions v ON v.dataset = d.name
                 GROUP BY d.name, d.source, d.prefix, d.created_ms, d.outside_links, d.keep_versions ORDER BY d.name",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0)?;
                let outside_links = r
                    .get::<String>(5)?
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("outside_links of dataset {name:?}: {e}")))?;
                Ok(DatasetRecord {
                    name,
                    source: r.get(1)?,
                    prefix: r.get(2)?,
                    created_unix_ms: r.get(3)?,
                    latest_version: r.get::<u64>(4)?.max(r.get(7)?),
                    outside_links,
                    keep_versions: r.get::<i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
                })
            })
            .collect()
    }

    fn set_outside_links(&self, dataset: &str, policy: OutsideLinks) -> Result<(), StoreError> {
        let changed = self.db.write(|tx| {
            tx.execute("UPDATE datasets SET outside_links = ?2 WHERE name = ?1", args![dataset, policy.to_string()])
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "dataset", name: dataset.to_string() });
        }
        Ok(())
    }

    fn versions(&self, dataset: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let (versions, skipped) = self.db.read(|tx| {
            let versions = tx.query(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1 ORDER BY number"),
                args![dataset],
            )?;
            let skipped = tx.query(
                "SELECT version, key, reason FROM skipped_objects WHERE dataset = ?1 ORDER BY version, seq",
                args![dataset],
            )?;
            Ok((versions, skipped))
        })?;
        let mut versions: Vec<VersionRecord> =
            versions.iter().map(|r| version_record(r).map(|(v, _)| v)).collect::<Result<_, _>>()?;
        for r in &skipped {
            let number: u64 = r.get(0)?;
            if let Some(v) = versions.iter_mut().find(|v| v.number == number) {
                v.skipped.push(SkippedObject { key: r.get(1)?, reason: r.get(2)? });
            }
        }
        Ok(versions)
    }

    fn version(&self, dataset: &str, number: Option<u64>) -> Result<Option<StoredVersion>, StoreError> {
        let found = self.db.read(|tx| {
            let found = match number {
                Some(n) => tx.query_opt(
                    &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1 AND number = ?2"),
                    args![dataset, n],
                )?,
                None => tx.query_opt(
                    &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE dataset = ?1 ORDER BY number DESC LIMIT 1"),
                    args![dataset],
                )?,
            };
            let Some(found) = found else { return Ok(None) };
            let number: u64 = found.get(1)?;
            let skipped = tx.query(
                "SELECT key, reason FROM skipped_objects WHERE dataset = ?1 AND version = ?2 ORDER BY seq",
                args![dataset, number],
            )?;
            let files = tx.query(
                "SELECT path, object, size, mode, mtime_ms, etag, chunks FROM files
                 WHERE dataset = ?1 AND version = ?2 ORDER BY path",
                args![dataset, number],
            )?;
            Ok(Some((found, skipped, files)))
        })?;
        let Some((found, skipped, rows)) = found else { return Ok(None) };
        let (mut record, chunker) = version_record(&found)?;
        record.skipped = skipped
            .iter()
            .map(|r| Ok(SkippedObject { key: r.get(0)?, reason: r.get(1)? }))
            .collect::<Result<_, StoreError>>()?;
        let mut files = Vec::new();
        let mut stamps = BTreeMap::new();
        for r in &rows {
            let path: String = r.get(0)?;
            let size: u64 = r.get(2)?;
            let mtime_unix_ms: i64 = r.get(4)?;
            let chunks = decode_chunks(&path, &r.get::<Vec<u8>>(6)?)?;
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
        let chunk_lists: Vec<Vec<u8>> = m.files.iter().map(|f| encode_chunks(&f.chunks)).collect();
        self.db.write(|tx| {
            let latest = latest_number(tx, &m.dataset)?;
            if latest != previous {
                return Err(StoreError::Conflict { dataset: m.dataset.clone(), latest });
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
                args![
                    &record.dataset,
                    record.number,
                    record.root.as_bytes().as_slice(),
                    m.chunker.min_size,
                    m.chunker.avg_size,
                    m.chunker.max_size,
                    record.files,
                    record.bytes,
                    record.chunks,
                    record.new_bytes,
                    record.bytes_read,
                    record.created_unix_ms,
                ],
            )?;
            for (f, chunks) in m.files.iter().zip(&chunk_lists) {
                let etag = cut.stamps.get(&f.path).and_then(|s| s.etag.clone());
                tx.execute(
                    "INSERT INTO files (dataset, version, path, object, size, mode, mtime_ms, etag, chunks)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    args![&m.dataset, record.number, &f.path, &f.object, f.size, f.mode, f.mtime_unix_ms, etag, chunks.as_slice()],
                )?;
            }
            for (seq, skipped) in cut.skipped.iter().enumerate() {
                tx.execute(
                    "INSERT INTO skipped_objects (dataset, version, key, reason, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![&m.dataset, record.number, &skipped.key, &skipped.reason, seq as u64],
                )?;
            }
            Ok(record)
        })
    }

    fn add_region(&self, r: &RegionRecord) -> Result<(), StoreError> {
        let (schedule, time_zone) =
            r.schedule.as_ref().map_or(("", "UTC"), |s| (s.text.as_str(), s.time_zone.as_str()));
        self.db
            .write(|tx| {
                tx.execute(
                    "INSERT INTO regions (name, rate, created_ms, schedule, time_zone) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![&r.name, r.rate, r.created_unix_ms, schedule, time_zone],
                )
            })
            .map_err(map_constraint("region", &r.name))?;
        Ok(())
    }

    fn regions(&self) -> Result<Vec<RegionRecord>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.query("SELECT name, rate, created_ms, schedule, time_zone FROM regions ORDER BY name", &[])
        })?;
        rows.iter()
            .map(|r| {
                let (text, time_zone): (String, String) = (r.get(3)?, r.get(4)?);
                Ok(RegionRecord {
                    name: r.get(0)?,
                    rate: r.get(1)?,
                    created_unix_ms: r.get(2)?,
                    schedule: (!text.is_empty()).then_some(RegionSchedule { text, time_zone }),
                })
            })
            .collect()
    }

    fn set_region_rate(&self, name: &str, rate: u64) -> Result<(), StoreError> {
        let changed = self.db.write(|tx| {
            tx.execute(
                "UPDATE regions SET rate = ?2, schedule = '', time_zone = 'UTC' WHERE name = ?1",
                args![name, rate],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        Ok(())
    }

    fn set_region_schedule(&self, name: &str, schedule: &RegionSchedule) -> Result<(), StoreError> {
        let changed = self.db.write(|tx| {
            tx.execute(
                "UPDATE regions SET schedule = ?2, time_zone = ?3 WHERE name = ?1",
                args![name, &schedule.text, &schedule.time_zone],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        Ok(())
    }

    fn rollouts(&self, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
        self.db.read(|tx| rollouts_in(tx, dataset))
    }

    fn add_relayed(&self, key: &RolloutKey, bytes: u64) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.execute(
                "UPDATE rollouts SET relayed_bytes = relayed_bytes + ?4 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                args![&key.dataset, key.version, &key.region, bytes],
            )
        })?;
        Ok(())
    }

    fn fail_version(&self, version: &VersionId, reason: &str, now: i64) -> Result<Vec<String>, StoreError> {
        self.db.write(|tx| {
            let regions = tx.query(
                "SELECT region FROM rollouts WHERE dataset = ?1 AND version = ?2 ORDER BY region",
                args![&version.dataset, version.version],
            )?;
            let mut failed = Vec::new();
            for region in &regions {
                let key = RolloutKey::of(version.clone(), region.get::<String>(0)?);
                let Some(row) = row_state(tx, &key)? else { continue };
                if let Some(next) = rollout::after_source_changed(&row, reason) {
                    write_row_state(tx, &key, &next, now)?;
                    failed.push(key.region);
                }
            }
            Ok(failed)
        })
    }
}

/// A stored phase: its text name (see [`Phase::as_str`]), the one conversion both ways.
pub(super) fn phase_of(key: &RolloutKey, text: &str) -> Result<Phase, StoreError> {
    text.parse().map_err(|e| StoreError::Corrupt(format!("phase of rollout {key}: {e}")))
}

/// What the lifecycle rules change of a rollout's row, as stored (`None`: no such row).
pub(super) fn row_state(tx: &mut Tx<'_>, key: &RolloutKey) -> Result<Option<RowState>, StoreError> {
    let Some(r) = tx.query_opt(
        "SELECT phase, cached_bytes, reason, rate, ready_ms FROM rollouts
         WHERE dataset = ?1 AND version = ?2 AND region = ?3",
        args![&key.dataset, key.version, &key.region],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(RowState {
        phase: phase_of(key, &r.get::<String>(0)?)?,
        cached_bytes: r.get(1)?,
        reason: r.get(2)?,
        rate: r.get(3)?,
        ready_unix_ms: r.get(4)?,
    }))
}

pub(super) fn write_row_state(tx: &mut Tx<'_>, key: &RolloutKey, row: &RowState, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE rollouts SET phase = ?4, cached_bytes = ?5, reason = ?6, rate = ?7, ready_ms = ?8, updated_ms = ?9
         WHERE dataset = ?1 AND version = ?2 AND region = ?3",
        args![
            &key.dataset,
            key.version,
            &key.region,
            row.phase.as_str(),
            row.cached_bytes,
            &row.reason,
            row.rate,
            row.ready_unix_ms,
            now
        ],
    )?;
    Ok(())
}

/// A unique-key violation as `AlreadyExists` (of `kind` `name`); other errors as they are.
pub(super) fn map_constraint(kind: &'static str, name: &str) -> impl FnOnce(StoreError) -> StoreError + use<> {
    let name = name.to_string();
    move |e| if is_constraint(&e) { StoreError::AlreadyExists { kind, name } } else { e }
}

/// Every rollout row (of one dataset, or of all), by dataset, version and region.
pub(super) fn rollouts_in(tx: &mut Tx<'_>, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
    let rows = tx.query(
        "SELECT o.dataset, o.version, o.region, v.bytes, o.cached_bytes, o.phase, o.reason, o.rate, r.rate, o.updated_ms, o.relayed_bytes, v.root, o.mode, o.added_ms, o.ready_ms, o.cut_over, o.promote_pending, o.class
         FROM rollouts o
         JOIN versions v ON v.dataset = o.dataset AND v.number = o.version
         JOIN regions r ON r.name = o.region
         WHERE ?1 = '' OR o.dataset = ?1
         ORDER BY o.dataset, o.version, o.region",
        args![dataset.unwrap_or("")],
    )?;
    rows.iter()
        .map(|r| {
            let mut record = RolloutRecord {
                dataset: r.get(0)?,
                version: r.get(1)?,
                region: r.get(2)?,
                total_bytes: r.get(3)?,
                cached_bytes: r.get(4)?,
                phase: Phase::Pending,
                reason: r.get(6)?,
                rate: r.get(7)?,
                budget: r.get(8)?,
                updated_unix_ms: r.get(9)?,
                relayed_bytes: r.get(10)?,
                root: Digest::from_slice(&r.get::<Vec<u8>>(11)?).unwrap_or(Digest([0; 32])),
                mode: r.get::<String>(12)?.parse().unwrap_or_default(),
                added_unix_ms: r.get(13)?,
                ready_unix_ms: r.get(14)?,
                cut_over: Default::default(),
                promote_pending: r.get(16)?,
                class: Default::default(),
            };
            record.phase = phase_of(&record.key(), &r.get::<String>(5)?)?;
            record.cut_over = r
                .get::<String>(15)?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("cut-over of rollout {}: {e}", record.key())))?;
            record.class = r
                .get::<String>(17)?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("class of rollout {}: {e}", record.key())))?;
            Ok(record)
        })
        .collect()
}

/// Records what a region serves (replacing what it served).
pub(super) fn write_serving(tx: &mut Tx<'_>, s: &ServingRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO serving (dataset, region, version, since_ms, previous) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (dataset, region) DO UPDATE SET version = excluded.version, since_ms = excluded.since_ms, previous = excluded.previous",
        args![&s.dataset, &s.region, s.version, s.since_unix_ms, s.previous],
    )?;
    Ok(())
}
