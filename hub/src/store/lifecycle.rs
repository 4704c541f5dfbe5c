//! The SQL of the rollout lifecycle (both engines) ([`LifecycleStore`]): rollouts, what
//! regions serve, tags, retention and removals. Each call is one transaction that reads the
//! rows, asks [`crate::rollout`]'s rules what to do, and writes what they say.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::meta::{SqlStore, rollouts_in, row_state, write_row_state, write_serving};
use super::sql::{Tx, args};
use super::{LifecycleStore, RolloutUpdate, StoreError};
use crate::rollout::cutover::{self, CutOver, RegionStep, ServingRecord, Step};
use crate::rollout::retention::{self, Facts, InUse, Reason};
use crate::rollout::{self, RolloutKey, RolloutRecord, TagRecord, VersionId};
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::{Phase, ReplicationMode};

fn refused(e: cutover::Refused) -> StoreError {
    StoreError::Refused(e.0)
}

fn version_exists(tx: &mut Tx<'_>, id: &VersionId) -> Result<bool, StoreError> {
    tx.query_one(
        "SELECT EXISTS(SELECT 1 FROM versions WHERE dataset = ?1 AND number = ?2)",
        args![&id.dataset, id.version],
    )?
    .get(0)
}

fn rows_of(tx: &mut Tx<'_>, id: &VersionId) -> Result<Vec<RolloutRecord>, StoreError> {
    Ok(rollouts_in(tx, Some(&id.dataset))?.into_iter().filter(|r| r.version == id.version).collect())
}

fn serving_in(tx: &mut Tx<'_>, dataset: Option<&str>) -> Result<Vec<ServingRecord>, StoreError> {
    let rows = tx.query(
        "SELECT dataset, region, version, since_ms, previous FROM serving
         WHERE ?1 = '' OR dataset = ?1 ORDER BY dataset, region",
        args![dataset.unwrap_or("")],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ServingRecord {
                dataset: r.get(0)?,
                region: r.get(1)?,
                version: r.get(2)?,
                since_unix_ms: r.get(3)?,
                previous: r.get(4)?,
            })
        })
        .collect()
}

/// Region to the version it serves of `dataset`.
fn served_map(serving: &[ServingRecord]) -> HashMap<String, u64> {
    serving.iter().map(|s| (s.region.clone(), s.version)).collect()
}

/// `region` serves `dataset@version` from `now`; a promotion waiting in the region is over.
fn switch(tx: &mut Tx<'_>, dataset: &str, region: &str, version: u64, now: i64) -> Result<(), StoreError> {
    let current = serving_in(tx, Some(dataset))?.into_iter().find(|s| s.region == region);
    if let Some(next) = cutover::serve(current.as_ref(), dataset, region, version, now) {
        write_serving(tx, &next)?;
    }
    clear_pending(tx, dataset, region)
}

fn clear_pending(tx: &mut Tx<'_>, dataset: &str, region: &str) -> Result<(), StoreError> {
    tx.execute("UPDATE rollouts SET promote_pending = 0 WHERE dataset = ?1 AND region = ?2", args![dataset, region])?;
    Ok(())
}

/// Applies the cut-over of a version whose rows went from `before` to `after`.
fn apply_switches(
    tx: &mut Tx<'_>,
    id: &VersionId,
    before: &[RolloutRecord],
    after: &[RolloutRecord],
    now: i64,
) -> Result<(), StoreError> {
    let served = served_map(&serving_in(tx, Some(&id.dataset))?);
    let (before, after): (Vec<&RolloutRecord>, Vec<&RolloutRecord>) = (before.iter().collect(), after.iter().collect());
    for region in cutover::switches(&before, &after, &served) {
        switch(tx, &id.dataset, &region, id.version, now)?;
    }
    Ok(())
}

fn tags_in(tx: &mut Tx<'_>, dataset: Option<&str>) -> Result<Vec<TagRecord>, StoreError> {
    let rows = tx.query(
        "SELECT dataset, name, version, updated_ms FROM tags WHERE ?1 = '' OR dataset = ?1 ORDER BY dataset, name",
        args![dataset.unwrap_or("")],
    )?;
    rows.iter()
        .map(|r| Ok(TagRecord { dataset: r.get(0)?, name: r.get(1)?, version: r.get(2)?, updated_unix_ms: r.get(3)? }))
        .collect()
}

/// Everything retention is computed from, as stored, with what the spokes report in use.
fn retention_in(tx: &mut Tx<'_>, in_use: &[InUse]) -> Result<BTreeMap<VersionId, Vec<Reason>>, StoreError> {
    let versions: Vec<VersionId> = tx
        .query("SELECT dataset, number FROM versions ORDER BY dataset, number", &[])?
        .iter()
        .map(|r| Ok(VersionId::new(r.get::<String>(0)?, r.get::<u64>(1)?)))
        .collect::<Result<_, StoreError>>()?;
    let keep: HashMap<String, u32> = tx
        .query("SELECT name, keep_versions FROM datasets", &[])?
        .iter()
        .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?.clamp(0, u32::MAX.into()) as u32)))
        .collect::<Result<_, StoreError>>()?;
    let (tags, rollouts, serving) = (tags_in(tx, None)?, rollouts_in(tx, None)?, serving_in(tx, None)?);
    Ok(retention::retained(&Facts {
        versions: &versions,
        keep: &keep,
        tags: &tags,
        rollouts: &rollouts,
        serving: &serving,
        in_use,
    }))
}

fn latest_of(tx: &mut Tx<'_>, dataset: &str) -> Result<u64, StoreError> {
    let n: i64 =
        tx.query_one("SELECT COALESCE(MAX(number), 0) FROM versions WHERE dataset = ?1", args![dataset])?.get(0)?;
    Ok(n as u64)
}

/// Deletes a version and everything that names it (its rows, tags, files).
fn delete_version(tx: &mut Tx<'_>, id: &VersionId) -> Result<(), StoreError> {
    let p = args![&id.dataset, id.version];
    tx.execute("DELETE FROM tags WHERE dataset = ?1 AND version = ?2", p)?;
    tx.execute("DELETE FROM rollouts WHERE dataset = ?1 AND version = ?2", p)?;
    tx.execute("DELETE FROM skipped_objects WHERE dataset = ?1 AND version = ?2", p)?;
    tx.execute("DELETE FROM files WHERE dataset = ?1 AND version = ?2", p)?;
    tx.execute("DELETE FROM versions WHERE dataset = ?1 AND number = ?2", p)?;
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

impl LifecycleStore for SqlStore {
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
        self.db.write(|tx| {
        if !version_exists(tx, version)? {
            return Err(StoreError::NotFound { kind: "version", name: version.to_string() });
        }
        for region in regions {
            let exists: bool =
                tx.query_one("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", args![region])?.get(0)?;
            if !exists {
                return Err(StoreError::NotFound { kind: "region", name: region.clone() });
            }
            tx.execute(
                "INSERT INTO rollouts (dataset, version, region, phase, reason, cached_bytes, relayed_bytes, rate, updated_ms, mode, added_ms, cut_over, class)
                 VALUES (?1, ?2, ?3, ?4, '', 0, 0, 0, ?5, ?6, ?5, ?7, ?8)
                 ON CONFLICT (dataset, version, region) DO UPDATE SET mode = excluded.mode, cut_over = excluded.cut_over, class = excluded.class",
                args![dataset, *number, region, Phase::Pending.as_str(), now, mode.to_string(), cut_over.name(), class.name()],
            )?;
        }
                Ok(())
        })
    }

    fn set_rollout_class(&self, key: &RolloutKey, class: Class) -> Result<Class, StoreError> {
        self.db.write(|tx| {
            let before: Option<String> = tx
                .query_opt(
                    "SELECT class FROM rollouts WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                    args![&key.dataset, key.version, &key.region],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            let Some(before) = before else {
                return Err(StoreError::NotFound { kind: "rollout", name: key.to_string() });
            };
            let before = before.parse().map_err(|e| StoreError::Corrupt(format!("class of rollout {key}: {e}")))?;
            tx.execute(
                "UPDATE rollouts SET class = ?4 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                args![&key.dataset, key.version, &key.region, class.name()],
            )?;
            Ok(before)
        })
    }

    fn update_rollout(&self, u: &RolloutUpdate) -> Result<(), StoreError> {
        self.db.write(|tx| {
            let Some(row) = row_state(tx, &u.key)? else {
                return Err(StoreError::NotFound { kind: "rollout", name: u.key.to_string() });
            };
            let next = rollout::after_report(&row, &u.progress, u.updated_unix_ms);
            let first_ready = row.ready_unix_ms.is_none() && next.ready_unix_ms.is_some();
            let id = VersionId::new(u.key.dataset.clone(), u.key.version);
            let before = if first_ready { rows_of(tx, &id)? } else { Vec::new() };
            write_row_state(tx, &u.key, &next, u.updated_unix_ms)?;
            if first_ready {
                let after = rows_of(tx, &id)?;
                apply_switches(tx, &id, &before, &after, u.updated_unix_ms)?;
            }
            Ok(())
        })
    }

    fn set_keep_versions(&self, dataset: &str, keep: u32) -> Result<(), StoreError> {
        if keep == 0 {
            return Err(StoreError::Refused("a dataset keeps at least its newest version (--keep 1 or more)".into()));
        }
        let changed = self
            .db
            .write(|tx| tx.execute("UPDATE datasets SET keep_versions = ?2 WHERE name = ?1", args![dataset, keep]))?;
        if changed == 0 {
            return Err(StoreError::NotFound { kind: "dataset", name: dataset.to_string() });
        }
        Ok(())
    }

    fn tags(&self, dataset: Option<&str>) -> Result<Vec<TagRecord>, StoreError> {
        self.db.read(|tx| tags_in(tx, dataset))
    }

    fn set_tag(&self, tag: &TagRecord) -> Result<Option<u64>, StoreError> {
        self.db.write(|tx| {
            let id = VersionId::new(tag.dataset.clone(), tag.version);
            if !version_exists(tx, &id)? {
                return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
            }
            let previous: Option<u64> = tx
                .query_opt("SELECT version FROM tags WHERE dataset = ?1 AND name = ?2", args![&tag.dataset, &tag.name])?
                .map(|r| r.get(0))
                .transpose()?;
            tx.execute(
                "INSERT INTO tags (dataset, name, version, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (dataset, name) DO UPDATE SET version = excluded.version, updated_ms = excluded.updated_ms",
                args![&tag.dataset, &tag.name, tag.version, tag.updated_unix_ms],
            )?;
            Ok(previous)
        })
    }

    fn remove_tag(&self, dataset: &str, name: &str) -> Result<Option<u64>, StoreError> {
        self.db.write(|tx| {
            let previous: Option<u64> = tx
                .query_opt("SELECT version FROM tags WHERE dataset = ?1 AND name = ?2", args![dataset, name])?
                .map(|r| r.get(0))
                .transpose()?;
            tx.execute("DELETE FROM tags WHERE dataset = ?1 AND name = ?2", args![dataset, name])?;
            Ok(previous)
        })
    }

    fn serving(&self, dataset: Option<&str>) -> Result<Vec<ServingRecord>, StoreError> {
        self.db.read(|tx| serving_in(tx, dataset))
    }

    fn promote(&self, id: &VersionId, regions: &[String], now: i64) -> Result<Vec<RegionStep>, StoreError> {
        self.db.write(|tx| {
            if !version_exists(tx, id)? {
                return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
            }
            let rows = rows_of(tx, id)?;
            let served = served_map(&serving_in(tx, Some(&id.dataset))?);
            let steps = cutover::promote(&id.dataset, id.version, regions, &rows.iter().collect::<Vec<_>>(), &served)
                .map_err(refused)?;
            for s in &steps {
                match &s.step {
                    Step::Switch => switch(tx, &id.dataset, &s.region, id.version, now)?,
                    Step::Pending { .. } | Step::Rollout { .. } => {
                        clear_pending(tx, &id.dataset, &s.region)?;
                        tx.execute(
                        "UPDATE rollouts SET promote_pending = 1 WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                        args![&id.dataset, id.version, &s.region],
                    )?;
                    }
                    Step::Already => clear_pending(tx, &id.dataset, &s.region)?,
                }
            }
            Ok(steps)
        })
    }

    fn rollback(
        &self,
        dataset: &str,
        to: Option<u64>,
        regions: &[String],
        in_use: &[InUse],
        now: i64,
    ) -> Result<Vec<RegionStep>, StoreError> {
        self.db.write(|tx| {
        let retention = retention_in(tx, in_use)?;
        let mine = retention.iter().filter(|(id, _)| id.dataset == dataset);
        let exists: HashSet<u64> = mine.clone().map(|(id, _)| id.version).collect();
        let retained: HashSet<u64> = mine.filter(|(_, why)| !why.is_empty()).map(|(id, _)| id.version).collect();
        let rows = rollouts_in(tx, Some(dataset))?;
        let serving = serving_in(tx, Some(dataset))?;
        let steps =
            cutover::rollback(dataset, to, regions, &rows.iter().collect::<Vec<_>>(), &serving, &exists, &retained)
                .map_err(refused)?;
        for s in &steps {
            match &s.step {
                Step::Switch => switch(tx, dataset, &s.region, s.to, now)?,
                Step::Already => clear_pending(tx, dataset, &s.region)?,
                Step::Rollout { .. } | Step::Pending { .. } => {
                    clear_pending(tx, dataset, &s.region)?;
                    let key = RolloutKey::new(dataset, s.to, s.region.clone());
                    // Taken up again from the start: a new generation the spokes replicate
                    // anew (fetching only what they lack), served once Ready.
                    let reset = tx.execute(
                        "UPDATE rollouts SET phase = ?4, reason = '', cached_bytes = 0, rate = 0, ready_ms = NULL,
                                added_ms = ?5, updated_ms = ?5, promote_pending = 1
                         WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                        args![&key.dataset, key.version, &key.region, Phase::Pending.as_str(), now],
                    )?;
                    if reset == 0 {
                        let mode = rows
                            .iter()
                            .find(|r| r.region == s.region && r.version == s.from)
                            .map_or(ReplicationMode::Auto, |r| r.mode);
                        tx.execute(
                            "INSERT INTO rollouts (dataset, version, region, phase, reason, cached_bytes, relayed_bytes, rate, updated_ms, mode, added_ms, cut_over, promote_pending)
                             VALUES (?1, ?2, ?3, ?4, '', 0, 0, 0, ?5, ?6, ?5, ?7, 1)",
                            args![&key.dataset, key.version, &key.region, Phase::Pending.as_str(), now, mode.to_string(), CutOver::Manual.name()],
                        )?;
                    }
                }
            }
        }
                Ok(steps)
        })
    }

    fn cancel_rollout(&self, id: &VersionId, regions: &[String], now: i64) -> Result<Vec<String>, StoreError> {
        self.db.write(|tx| {
            if !version_exists(tx, id)? {
                return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
            }
            let before = rows_of(tx, id)?;
            let served = served_map(&serving_in(tx, Some(&id.dataset))?);
            let cancelled =
                cutover::cancel(&id.dataset, id.version, regions, &before.iter().collect::<Vec<_>>(), &served)
                    .map_err(refused)?;
            for region in &cancelled {
                tx.execute(
                    "DELETE FROM rollouts WHERE dataset = ?1 AND version = ?2 AND region = ?3",
                    args![&id.dataset, id.version, region],
                )?;
            }
            // The region that held an all-ready version back may be gone: the others switch.
            let after = rows_of(tx, id)?;
            apply_switches(tx, id, &before, &after, now)?;
            Ok(cancelled)
        })
    }

    fn retention(&self, in_use: &[InUse]) -> Result<BTreeMap<VersionId, Vec<Reason>>, StoreError> {
        self.db.read(|tx| retention_in(tx, in_use))
    }

    fn remove_versions(&self, versions: &[VersionId], in_use: &[InUse], force: bool) -> Result<(), StoreError> {
        self.db.write(|tx| {
            let retention = retention_in(tx, in_use)?;
            for id in versions {
                let Some(reasons) = retention.get(id) else {
                    return Err(StoreError::NotFound { kind: "version", name: id.to_string() });
                };
                retention::removable(id, latest_of(tx, &id.dataset)?, reasons, force).map_err(StoreError::Refused)?;
            }
            for id in versions {
                delete_version(tx, id)?;
            }
            Ok(())
        })
    }

    fn remove_source(&self, name: &str) -> Result<(), StoreError> {
        self.db.write(|tx| {
            let users: Vec<String> = {
                let rows = tx.query("SELECT name FROM datasets WHERE source = ?1 ORDER BY name", args![name])?;
                rows.iter().map(|r| r.get(0)).collect::<Result<_, _>>()?
            };
            if !users.is_empty() {
                return Err(StoreError::Refused(format!(
                    "source {name:?} is used by {} {}: remove them first (aq dataset rm NAME)",
                    if users.len() == 1 { "dataset" } else { "datasets" },
                    listed(&users, 5)
                )));
            }
            if tx.execute("DELETE FROM sources WHERE name = ?1", args![name])? == 0 {
                return Err(StoreError::NotFound { kind: "source", name: name.to_string() });
            }
            Ok(())
        })
    }

    fn remove_dataset(&self, name: &str, force: bool, in_use: &[InUse]) -> Result<String, StoreError> {
        self.db.write(|tx| {
        let exists: bool =
            tx.query_one("SELECT EXISTS(SELECT 1 FROM datasets WHERE name = ?1)", args![name])?.get(0)?;
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
        let rows = rollouts_in(tx, Some(name))?;
        if !rows.is_empty() && !force {
            let named: Vec<String> = rows.iter().map(|r| format!("v{} to {}", r.version, r.region)).collect();
            return Err(StoreError::Refused(format!(
                "dataset {name:?} is rolled out ({}): cancel those rollouts (aq rollout cancel {name}@vN) or use --force",
                listed(&named, 5)
            )));
        }
        let latest = latest_of(tx, name)?;
        let versions: i64 = tx.query_one("SELECT COUNT(*) FROM versions WHERE dataset = ?1", args![name])?.get(0)?;
        let tags = tx.execute("DELETE FROM tags WHERE dataset = ?1", args![name])?;
        tx.execute("DELETE FROM serving WHERE dataset = ?1", args![name])?;
        tx.execute("DELETE FROM rollouts WHERE dataset = ?1", args![name])?;
        tx.execute("DELETE FROM skipped_objects WHERE dataset = ?1", args![name])?;
        tx.execute("DELETE FROM files WHERE dataset = ?1", args![name])?;
        tx.execute("DELETE FROM versions WHERE dataset = ?1", args![name])?;
        tx.execute("DELETE FROM datasets WHERE name = ?1", args![name])?;
        // Its numbers are never cut again under the same name, with other bytes.
        tx.execute(
            "INSERT INTO retired (dataset, last_version) VALUES (?1, ?2)
             ON CONFLICT (dataset) DO UPDATE SET last_version =
                 CASE WHEN retired.last_version > excluded.last_version THEN retired.last_version ELSE excluded.last_version END",
            args![name, latest],
        )?;
                Ok(format!(
            "dataset {name}: {}, {}, {}",
            plural(versions as usize, "version"),
            plural(rows.len(), "rollout row"),
            plural(tags as usize, "tag")
        ))
        })
    }

    fn remove_region(&self, name: &str, force: bool) -> Result<String, StoreError> {
        self.db.write(|tx| {
        let exists: bool =
            tx.query_one("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", args![name])?.get(0)?;
        if !exists {
            return Err(StoreError::NotFound { kind: "region", name: name.to_string() });
        }
        let rows: Vec<String> = rollouts_in(tx, None)?
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
        tx.execute("DELETE FROM serving WHERE region = ?1", args![name])?;
        tx.execute("DELETE FROM rollouts WHERE region = ?1", args![name])?;
        tx.execute("DELETE FROM regions WHERE name = ?1", args![name])?;
                Ok(format!("region {name}: {}", plural(rows.len(), "rollout row")))
        })
    }
}
