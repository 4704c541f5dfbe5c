//! The SQLite engine's part of the rollout lifecycle ([`LifecycleStore`]): rollouts, what
//! regions serve, tags, retention and removals. Each call is one transaction that reads the
//! rows, asks [`crate::rollout`]'s rules what to do, and writes what they say.

use std::collections::{BTreeMap, HashMap, HashSet};

use aqueduct_proto::domain::class::Class;
use aqueduct_proto::{Phase, ReplicationMode};
use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite::{SqliteStore, rollouts_in, row_state, write_row_state, write_serving};
use super::{LifecycleStore, RolloutUpdate, StoreError};
use crate::rollout::cutover::{self, CutOver, RegionStep, ServingRecord, Step};
use crate::rollout::retention::{self, Facts, InUse, Reason};
use crate::rollout::{self, RolloutKey, RolloutRecord, TagRecord, VersionId};

fn refused(e: cutover::Refused) -> StoreError {
    StoreError::Refused(e.0)
}

fn version_exists(conn: &Connection, id: &VersionId) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM versions WHERE dataset = ?1 AND number = ?2)",
        params![id.dataset, id.version as i64],
        |r| r.get(0),
    )?)
}

fn rows_of(conn: &Connection, id: &VersionId) -> Result<Vec<RolloutRecord>, StoreError> {
    Ok(rollouts_in(conn, Some(&id.dataset))?.into_iter().filter(|r| r.version == id.version).collect())
}

fn serving_in(conn: &Connection, dataset: Option<&str>) -> Result<Vec<ServingRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT dataset, region, version, since_ms, previous FROM serving
         WHERE ?1 IS NULL OR dataset = ?1 ORDER BY dataset, region",
    )?;
    let rows = stmt.query_map([dataset], |r| {
        Ok(ServingRecord {
            dataset: r.get(0)?,
            region: r.get(1)?,
            version: r.get::<_, i64>(2)? as u64,
            since_unix_ms: r.get(3)?,
            previous: r.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Region to the version it serves of `dataset`.
fn served_map(serving: &[ServingRecord]) -> HashMap<String, u64> {
    serving.iter().map(|s| (s.region.clone(), s.version)).collect()
}

/// `region` serves `dataset@version` from `now`; a promotion waiting in the region is over.
fn switch(conn: &Connection, dataset: &str, region: &str, version: u64, now: i64) -> Result<(), StoreError> {
    let current = serving_in(conn, Some(dataset))?.into_iter().find(|s| s.region == region);
    if let Some(next) = cutover::serve(current.as_ref(), dataset, region, version, now) {
        write_serving(conn, &next)?;
    }
    clear_pending(conn, dataset, region)
}

fn clear_pending(conn: &Connection, dataset: &str, region: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET promote_pending = 0 WHERE dataset = ?1 AND region = ?2",
        params![dataset, region],
    )?;
    Ok(())
}

/// Applies the cut-over of a version whose rows went from `before` to `after`.
fn apply_switches(
    conn: &Connection,
    id: &VersionId,
    before: &[RolloutRecord],
    after: &[RolloutRecord],
    now: i64,
) -> Result<(), StoreError> {
    let served = served_map(&serving_in(conn, Some(&id.dataset))?);
    let (before, after): (Vec<&RolloutRecord>, Vec<&RolloutRecord>) = (before.iter().collect(), after.iter().collect());
    for region in cutover::switches(&before, &after, &served) {
        switch(conn, &id.dataset, &region, id.version, now)?;
    }
    Ok(())
}

fn tags_in(conn: &Connection, dataset: Option<&str>) -> Result<Vec<TagRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT dataset, name, version, updated_ms FROM tags WHERE ?1 IS NULL OR dataset = ?1 ORDER BY dataset, name",
    )?;
    let rows = stmt.query_map([dataset], |r| {
        Ok(TagRecord {
            dataset: r.get(0)?,
            name: r.get(1)?,
            version: r.get::<_, i64>(2)? as u64,
            updated_unix_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Everything retention is computed from, as stored, with what the spokes report in use.
fn retention_in(conn: &Connection, in_use: &[InUse]) -> Result<BTreeMap<VersionId, Vec<Reason>>, StoreError> {
    let versions: Vec<VersionId> = {
        let mut stmt = conn.prepare("SELECT dataset, number FROM versions ORDER BY dataset, number")?;
        let rows = stmt.query_map([], |r| Ok(VersionId::new(r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect::<Result<_, _>>()?
    };
    let keep: HashMap<String, u32> = {
        let mut stmt = conn.prepare("SELECT name, keep_versions FROM datasets")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.clamp(0, u32::MAX.into()) as u32)))?;
        rows.collect::<Result<_, _>>()?
    };
    let (tags, rollouts, serving) = (tags_in(conn, None)?, rollouts_in(conn, None)?, serving_in(conn, None)?);
    Ok(retention::retained(&Facts {
        versions: &versions,
        keep: &keep,
        tags: &tags,
        rollouts: &rollouts,
        serving: &serving,
        in_use,
    }))
}

fn latest_of(conn: &Connection, dataset: &str) -> Result<u64, StoreError> {
    let n: i64 =
        conn.query_row("SELECT COALESCE(MAX(number), 0) FROM versions WHERE dataset = ?1", [dataset], |r| r.get(0))?;
    Ok(n as u64)
}

/// Deletes a version and everything that names it (its rows, tags, files).
fn delete_version(conn: &Connection, id: &VersionId) -> Result<(), StoreError> {
    let p = params![id.dataset, id.version as i64];
    conn.execute("DELETE FROM tags WHERE dataset = ?1 AND version = ?2", p)?;
    conn.execute("DELETE FROM rollouts WHERE dataset = ?1 AND version = ?2", p)?;
    conn.execute("DELETE FROM skipped_objects WHERE dataset = ?1 AND version = ?2", p)?;
    conn.execute("DELETE FROM files WHERE dataset = ?1 AND version = ?2", p)?;
    conn.execute("DELETE FROM versions WHERE dataset = ?1 AND number = ?2", p)?;
    Ok(())
}

/// `things`, comma-separated, at most `n` named and a count of the rest.
fn listed(things: &[String], n: usize) -> String {
    let mut out = things.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if things.len() > n {
        out.push_str(&format!(" and {} more", things.len() - n));
    }
    out
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {one}s") }
}

impl LifecycleStore for SqliteStore {
    fn add_rollout(
        &self,
        version: &VersionId,
        regions: &[String],
        mode: ReplicationMode,
        cut_over: CutOver,
        class: Class,
        now: i64,
    ) -> Result<(), StoreError> {
        let VersionId { dataset, version: number } = version;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if !version_exists(&tx, version)? {
            return Err(StoreError::NotFound { kind: "version", name: version.to_string() });
        }
        for region in regions {
            let exists: bool =
                tx.query_row("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", [region], |r| r.get(0))?;
            if !exists {
                return Err(StoreError::NotFound { kind: "region", name: region.clone() });
            }
            tx.execute(
                "INSERT INTO rollouts (dataset, version, region, phase, reason, cached_bytes, relayed_bytes, rate, updated_ms, mode, added_ms, cut_over, class)
                 VALUES (?1, ?2, ?3, ?4, '', 0, 0, 0, ?5, ?6, ?5, ?7, ?8)
                 ON CONFLICT (dataset, version, region) DO UPDATE SET mode = excluded.mode, cut_over = excluded.cut_over, class = excluded.class",
                params![dataset, *number as i64, region, Phase::Pending.as_str(), now, mode.to_string(), cut_over.name(), class.name()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_rollout_class(&self, key: &RolloutKey, class: Class) -> Result<Class, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before: Option<String> = tx
            .query_row(
                "SELECT class FROM rollouts WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                params![key.dataset, key.version as i64, key.region],
                |r| r.get(0),
            )
            .optional()?;
        let Some(before) = before else {
            return Err(StoreError::NotFound { kind: "rollout", name: key.to_string() });
        };
        let before = before.parse().map_err(|e| StoreError::Corrupt(format!("class of rollout {key}: {e}")))?;
        tx.execute(
            "UPDATE rollouts SET class = ?4 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
            params![key.dataset, key.version as i64, key.region, class.name()],
        )?;
        tx.commit()?;
        Ok(before)
    }

    fn update_rollout(&self, u: &RolloutUpdate) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(row) = row_state(&tx, &u.key)? else {
            return Err(StoreError::NotFound { kind: "rollout", name: u.key.to_string() });
        };
        let next = rollout::after_report(&row, &u.progress, u.updated_unix_ms);
        let first_ready = row.ready_unix_ms.is_none() && next.ready_unix_ms.is_some();
        let id = VersionId::new(u.key.dataset.clone(), u.key.version);
        let before = if first_ready { rows_of(&tx, &id)? } else { Vec::new() };
        write_row_state(&tx, &u.key, &next, u.updated_unix_ms)?;
        if first_ready {
            let after = rows_of(&tx, &id)?;
            apply_switches(&tx, &id, &before, &after, u.updated_unix_ms)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_keep_versions(&self, dataset: &str, keep: u32) -> Result<(), StoreError> {
        if keep == 0 {
            return Err(StoreError::Refused("a dataset keeps at least its newest version (--keep 1 or more)".into()));
        }
        let changed =
            self.conn().execute("UPDATE datasets SET keep_versions = ?2 WHERE name = ?1", params![dataset, keep])?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "dataset", name: dataset.to_string() });
        }
        Ok(())
    }

    fn tags(&self, dataset: Option<&str>) -> Result<Vec<TagRecord>, StoreError> {
        tags_in(&self.conn(), dataset)
    }

    fn set_tag(&self, tag: &TagRecord) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id = VersionId::new(tag.dataset.clone(), tag.version);
        if !version_exists(&tx, &id)? {
            return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
        }
        let previous: Option<i64> = tx
            .query_row(
                "SELECT version FROM tags WHERE dataset = ?1 AND name = ?2",
                params![tag.dataset, tag.name],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "INSERT INTO tags (dataset, name, version, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (dataset, name) DO UPDATE SET version = excluded.version, updated_ms = excluded.updated_ms",
            params![tag.dataset, tag.name, tag.version as i64, tag.updated_unix_ms],
        )?;
        tx.commit()?;
        Ok(previous.map(|v| v as u64))
    }

    fn remove_tag(&self, dataset: &str, name: &str) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let previous: Option<i64> = tx
            .query_row("SELECT version FROM tags WHERE dataset = ?1 AND name = ?2", params![dataset, name], |r| {
                r.get(0)
            })
            .optional()?;
        tx.execute("DELETE FROM tags WHERE dataset = ?1 AND name = ?2", params![dataset, name])?;
        tx.commit()?;
        Ok(previous.map(|v| v as u64))
    }

    fn serving(&self, dataset: Option<&str>) -> Result<Vec<ServingRecord>, StoreError> {
        serving_in(&self.conn(), dataset)
    }

    fn promote(&self, id: &VersionId, regions: &[String], now: i64) -> Result<Vec<RegionStep>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if !version_exists(&tx, id)? {
            return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
        }
        let rows = rows_of(&tx, id)?;
        let served = served_map(&serving_in(&tx, Some(&id.dataset))?);
        let steps = cutover::promote(&id.dataset, id.version, regions, &rows.iter().collect::<Vec<_>>(), &served)
            .map_err(refused)?;
        for s in &steps {
            match &s.step {
                Step::Switch => switch(&tx, &id.dataset, &s.region, id.version, now)?,
                Step::Pending { .. } | Step::Rollout { .. } => {
                    clear_pending(&tx, &id.dataset, &s.region)?;
                    tx.execute(
                        "UPDATE rollouts SET promote_pending = 1 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                        params![id.dataset, id.version as i64, s.region],
                    )?;
                }
                Step::Already => clear_pending(&tx, &id.dataset, &s.region)?,
            }
        }
        tx.commit()?;
        Ok(steps)
    }

    fn rollback(
        &self,
        dataset: &str,
        to: Option<u64>,
        regions: &[String],
        in_use: &[InUse],
        now: i64,
    ) -> Result<Vec<RegionStep>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let retention = retention_in(&tx, in_use)?;
        let mine = retention.iter().filter(|(id, _)| id.dataset == dataset);
        let exists: HashSet<u64> = mine.clone().map(|(id, _)| id.version).collect();
        let retained: HashSet<u64> = mine.filter(|(_, why)| !why.is_empty()).map(|(id, _)| id.version).collect();
        let rows = rollouts_in(&tx, Some(dataset))?;
        let serving = serving_in(&tx, Some(dataset))?;
        let steps =
            cutover::rollback(dataset, to, regions, &rows.iter().collect::<Vec<_>>(), &serving, &exists, &retained)
                .map_err(refused)?;
        for s in &steps {
            match &s.step {
                Step::Switch => switch(&tx, dataset, &s.region, s.to, now)?,
                Step::Already => clear_pending(&tx, dataset, &s.region)?,
                Step::Rollout { .. } | Step::Pending { .. } => {
                    clear_pending(&tx, dataset, &s.region)?;
                    let key = RolloutKey::new(dataset, s.to, s.region.clone());
                    // Taken up again from the start: a new generation the spokes replicate
                    // anew (fetching only what they lack), served once Ready.
                    let reset = tx.execute(
                        "UPDATE rollouts SET phase = ?4, reason = '', cached_bytes = 0, rate = 0, ready_ms = NULL,
                                added_ms = ?5, updated_ms = ?5, promote_pending = 1
                         WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                        params![key.dataset, key.version as i64, key.region, Phase::Pending.as_str(), now],
                    )?;
                    if reset == 0 {
                        let mode = rows
                            .iter()
                            .find(|r| r.region == s.region && r.version == s.from)
                            .map_or(ReplicationMode::Auto, |r| r.mode);
                        tx.execute(
                            "INSERT INTO rollouts (dataset, version, region, phase, reason, cached_bytes, relayed_bytes, rate, updated_ms, mode, added_ms, cut_over, promote_pending)
                             VALUES (?1, ?2, ?3, ?4, '', 0, 0, 0, ?5, ?6, ?5, ?7, 1)",
                            params![
                                key.dataset,
                                key.version as i64,
                                key.region,
                                Phase::Pending.as_str(),
                                now,
                                mode.to_string(),
                                CutOver::Manual.name()
                            ],
                        )?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(steps)
    }

    fn cancel_rollout(&self, id: &VersionId, regions: &[String], now: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if !version_exists(&tx, id)? {
            return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
        }
        let before = rows_of(&tx, id)?;
        let served = served_map(&serving_in(&tx, Some(&id.dataset))?);
        let cancelled = cutover::cancel(&id.dataset, id.version, regions, &before.iter().collect::<Vec<_>>(), &served)
            .map_err(refused)?;
        for region in &cancelled {
            tx.execute(
                "DELETE FROM rollouts WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                params![id.dataset, id.version as i64, region],
            )?;
        }
        // The region that held an all-ready version back may be gone: the others switch.
        let after = rows_of(&tx, id)?;
        apply_switches(&tx, id, &before, &after, now)?;
        tx.commit()?;
        Ok(cancelled)
    }

    fn retention(&self, in_use: &[InUse]) -> Result<BTreeMap<VersionId, Vec<Reason>>, StoreError> {
        retention_in(&self.conn(), in_use)
    }

    fn remove_versions(&self, versions: &[VersionId], in_use: &[InUse], force: bool) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let retention = retention_in(&tx, in_use)?;
        for id in versions {
            let Some(reasons) = retention.get(id) else {
                return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
            };
            retention::removable(id, latest_of(&tx, &id.dataset)?, reasons, force).map_err(StoreError::Refused)?;
        }
        for id in versions {
            delete_version(&tx, id)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_source(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let users: Vec<String> = {
            let mut stmt = tx.prepare("SELECT name FROM datasets WHERE source = ?1 ORDER BY name")?;
            let rows = stmt.query_map([name], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if !users.is_empty() {
            return Err(StoreError::Refused(format!(
                "source {name:?} is used by {} {}: remove them first (aq dataset rm NAME)",
                if users.len() == 1 { "dataset" } else { "datasets" },
                listed(&users, 5)
            )));
        }
        if tx.execute("DELETE FROM sources WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound { kind: "source", name: name.to_string() });
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_dataset(&self, name: &str, force: bool, in_use: &[InUse]) -> Result<String, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM datasets WHERE name = ?1)", [name], |r| r.get(0))?;
        if !exists {
            return Err(StoreError::NotFound { kind: "dataset", name: name.to_string() });
        }
        let users: Vec<String> = in_use
            .iter()
            .filter(|u| u.version.dataset == name)
            .map(|u| format!("v{} on {}/{}: {}", u.version.version, u.region, u.node, u.user))
            .collect();
        if !users.is_empty() {
            return Err(StoreError::Refused(format!(
                "dataset {name:?} is in use ({}): unmount it first; --force does not take a dataset from pods",
                listed(&users, 5)
            )));
        }
        let rows = rollouts_in(&tx, Some(name))?;
        if !rows.is_empty() && !force {
            let named: Vec<String> = rows.iter().map(|r| format!("v{} to {}", r.version, r.region)).collect();
            return Err(StoreError::Refused(format!(
                "dataset {name:?} is rolled out ({}): cancel those rollouts (aq rollout cancel {name}@vN) or use --force",
                listed(&named, 5)
            )));
        }
        let latest = latest_of(&tx, name)?;
        let versions: i64 = tx.query_row("SELECT COUNT(*) FROM versions WHERE dataset = ?1", [name], |r| r.get(0))?;
        let tags = tx.execute("DELETE FROM tags WHERE dataset = ?1", [name])?;
        tx.execute("DELETE FROM serving WHERE dataset = ?1", [name])?;
        tx.execute("DELETE FROM rollouts WHERE dataset = ?1", [name])?;
        tx.execute("DELETE FROM skipped_objects WHERE dataset = ?1", [name])?;
        tx.execute("DELETE FROM files WHERE dataset = ?1", [name])?;
        tx.execute("DELETE FROM versions WHERE dataset = ?1", [name])?;
        tx.execute("DELETE FROM datasets WHERE name = ?1", [name])?;
        // Its numbers are never cut again under the same name, with other bytes.
        tx.execute(
            "INSERT INTO retired (dataset, last_version) VALUES (?1, ?2)
             ON CONFLICT (dataset) DO UPDATE SET last_version = MAX(last_version, excluded.last_version)",
            params![name, latest as i64],
        )?;
        tx.commit()?;
        Ok(format!(
            "dataset {name}: {}, {}, {}",
            plural(versions as usize, "version"),
            plural(rows.len(), "rollout row"),
            plural(tags, "tag")
        ))
    }

    fn remove_region(&self, name: &str, force: bool) -> Result<String, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool =
            tx.query_row("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", [name], |r| r.get(0))?;
        if !exists {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        let rows: Vec<String> = rollouts_in(&tx, None)?
            .into_iter()
            .filter(|r| r.region == name)
            .map(|r| format!("{}@v{}", r.dataset, r.version))
            .collect();
        if !rows.is_empty() && !force {
            return Err(StoreError::Refused(format!(
                "region {name:?} holds {}: cancel those rollouts (aq rollout cancel DATASET@vN --region {name}) or use --force",
                listed(&rows, 5)
            )));
        }
        tx.execute("DELETE FROM serving WHERE region = ?1", [name])?;
        tx.execute("DELETE FROM rollouts WHERE region = ?1", [name])?;
        tx.execute("DELETE FROM regions WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(format!("region {name}: {}", plural(rows.len(), "rollout row")))
    }
}
