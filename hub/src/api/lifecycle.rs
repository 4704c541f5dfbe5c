//! The admin calls of the version lifecycle: tags, promote, rollback, cancel, retention
//! (`ListVersions`' reasons, `Gc`) and the deletes. Thin: each validates its input, asks the
//! store (which applies [`crate::rollout`]'s rules in one transaction) and wakes what must
//! hear of the change: the spokes' watches, and the relay's grants when something spokes
//! could read is withdrawn.

use std::collections::{BTreeMap, HashMap, HashSet};

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{validate_name, validate_tag};
use tonic::Status;
use tracing::info;

use super::{AdminService, version_to_pb};
use crate::error::invalid;
use crate::rollout::cutover::Step;
use crate::rollout::retention::{self, InUse};
use crate::rollout::{RolloutKey, TagRecord, VersionId};
use crate::snapshot::{blocking, now_unix_ms};
use crate::store::StoreError;

/// Regions named in a request, each a valid name.
fn region_names(regions: &[String]) -> Result<(), Status> {
    regions.iter().try_for_each(|r| validate_name("region", r).map(drop).map_err(invalid))
}

/// A version number from the wire: above 0.
fn version_number(dataset: &str, n: u64) -> Result<u64, Status> {
    if n == 0 {
        return Err(Status::invalid_argument(format!("name the version: {dataset}@vN (aq versions {dataset})")));
    }
    Ok(n)
}

/// A store error of a lifecycle call as a status that says what to do.
fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { kind: "version", name } => {
            Status::not_found(format!("version {name} does not exist (aq versions lists them)"))
        }
        StoreError::NotFound { kind: "region", name } => {
            Status::not_found(format!("region {name:?} does not exist (aq region list shows the known ones)"))
        }
        other => other.into(),
    }
}

impl AdminService {
    /// What the live spokes report in use now, counted for what rollouts say their regions
    /// have.
    pub(super) async fn in_use(&self) -> Result<Vec<InUse>, Status> {
        // Hubs sharing the database: what the spokes of the regions others serve use too.
        let me = self.live.regions.holder().map(str::to_string);
        let (rollouts, others) = blocking(&self.db, move |db| {
            let others = match me {
                Some(me) => db.shared_in_use(&me, crate::live::regions::IN_USE_FRESH_MS)?,
                None => Vec::new(),
            };
            Ok((db.rollouts(None)?, others))
        })
        .await?;
        let mine = self.live.members.in_use(&rollouts);
        Ok(crate::live::regions::in_use_of_all(mine, others, &rollouts))
    }

    /// What the live spokes use, for a call that removes versions: refused while a live spoke
    /// has not said yet (it just joined, or the hub just restarted), so that nothing a pod
    /// reads is removed for want of a report that comes seconds later.
    async fn in_use_for_removal(&self) -> Result<Vec<InUse>, Status> {
        let unreported = self.live.members.unreported();
        if !unreported.is_empty() {
            return Err(Status::unavailable(format!(
                "spokes {} have not reported what they use since they connected; try again in a few seconds",
                unreported.join(", ")
            )));
        }
        self.in_use().await
    }

    pub(super) async fn list_versions_of(&self, dataset: String) -> Result<pb::ListVersionsResponse, Status> {
        let in_use = self.in_use().await?;
        let name = dataset.clone();
        let (versions, tags, retention, signatures) = blocking(&self.db, move |db| {
            let versions = db.versions(&name)?;
            let signatures: Vec<_> =
                versions.iter().map(|v| db.signature(&v.dataset, v.number)).collect::<Result<_, _>>()?;
            Ok((versions, db.tags(Some(&name))?, db.retention(&in_use)?, signatures))
        })
        .await?;
        let versions = versions
            .into_iter()
            .zip(signatures)
            .map(|(v, signature)| {
                let id = VersionId::new(v.dataset.clone(), v.number);
                let mut summary = version_to_pb(v, false, signature.as_ref());
                summary.tags = tags.iter().filter(|t| t.version == id.version).map(|t| t.name.clone()).collect();
                summary.retained_by =
                    retention.get(&id).map(|r| r.iter().map(|r| r.to_string()).collect()).unwrap_or_default();
                summary
            })
            .collect();
        Ok(pb::ListVersionsResponse { versions, tags: tags.iter().map(|t| t.to_pb()).collect() })
    }

    pub(super) async fn tag_call(&self, req: pb::TagRequest) -> Result<pb::TagResponse, Status> {
        self.dataset(&req.dataset).await?;
        validate_tag(&req.name).map_err(invalid)?;
        let (dataset, name) = (req.dataset.clone(), req.name.clone());
        let response = if req.remove {
            let previous = blocking(&self.db, move |db| db.remove_tag(&dataset, &name)).await?;
            let Some(previous) = previous else {
                return Err(Status::not_found(format!(
                    "{} has no tag {:?} (aq versions {} lists them)",
                    req.dataset, req.name, req.dataset
                )));
            };
            info!(tag = %req.name, version = previous, "tag removed");
            pb::TagResponse { tag: None, previous_version: previous }
        } else {
            let tag = TagRecord {
                dataset: req.dataset.clone(),
                name: req.name.clone(),
                version: version_number(&req.dataset, req.version)?,
                updated_unix_ms: now_unix_ms(),
            };
            let stored = tag.clone();
            let previous = blocking(&self.db, move |db| db.set_tag(&stored)).await.map_err(status)?;
            info!(tag = %tag.name, version = tag.version, previous, "tag set");
            pb::TagResponse { tag: Some(tag.to_pb()), previous_version: previous.unwrap_or(0) }
        };
        // Following mounts switch with the region's next assignments.
        self.live.changes.notify_waiters();
        Ok(response)
    }

    pub(super) async fn promote_call(&self, req: pb::PromoteRequest) -> Result<pb::CutOverResponse, Status> {
        self.dataset(&req.dataset).await?;
        region_names(&req.regions)?;
        let id = VersionId::new(req.dataset.clone(), version_number(&req.dataset, req.version)?);
        let steps = blocking(&self.db, move |db| db.promote(&id, &req.regions, now_unix_ms())).await.map_err(status)?;
        self.live.changes.notify_waiters();
        info!(steps = ?steps, "promoted");
        Ok(pb::CutOverResponse { regions: steps.iter().map(|s| s.to_pb()).collect() })
    }

    pub(super) async fn rollback_call(&self, req: pb::RollbackRequest) -> Result<pb::CutOverResponse, Status> {
        self.dataset(&req.dataset).await?;
        region_names(&req.regions)?;
        let in_use = self.in_use().await?;
        let dataset = req.dataset.clone();
        let to = (req.to != 0).then_some(req.to);
        let steps = blocking(&self.db, move |db| db.rollback(&dataset, to, &req.regions, &in_use, now_unix_ms()))
            .await
            .map_err(status)?;
        for s in steps.iter().filter(|s| matches!(s.step, Step::Rollout { .. })) {
            // Taken up again from the start: the reports of before do not count.
            self.live.members.forget(&RolloutKey::new(req.dataset.clone(), s.to, s.region.clone()));
        }
        self.live.changes.notify_waiters();
        info!(steps = ?steps, "rolled back");
        Ok(pb::CutOverResponse { regions: steps.iter().map(|s| s.to_pb()).collect() })
    }

    pub(super) async fn cancel_call(&self, req: pb::CancelRolloutRequest) -> Result<pb::CancelRolloutResponse, Status> {
        self.dataset(&req.dataset).await?;
        region_names(&req.regions)?;
        let id = VersionId::new(req.dataset.clone(), version_number(&req.dataset, req.version)?);
        let regions =
            blocking(&self.db, move |db| db.cancel_rollout(&id, &req.regions, now_unix_ms())).await.map_err(status)?;
        self.live.withdraw();
        info!(?regions, "rollout cancelled");
        Ok(pb::CancelRolloutResponse { regions })
    }

    pub(super) async fn gc_call(&self, req: pb::GcRequest) -> Result<pb::GcResponse, Status> {
        if !req.dataset.is_empty() {
            self.dataset(&req.dataset).await?;
        }
        let in_use = if req.dry_run { self.in_use().await? } else { self.in_use_for_removal().await? };
        let (filter, used) = (req.dataset.clone(), in_use.clone());
        let (candidates, sizes, rollouts, chunks) = blocking(&self.db, move |db| {
            let candidates: Vec<VersionId> = db
                .retention(&used)?
                .into_iter()
                .filter(|(id, why)| why.is_empty() && (filter.is_empty() || id.dataset == filter))
                .map(|(id, _)| id)
                .collect();
            let mut sizes = HashMap::new();
            for dataset in candidates.iter().map(|c| c.dataset.clone()).collect::<HashSet<_>>() {
                for v in db.versions(&dataset)? {
                    sizes.insert(VersionId::new(dataset.clone(), v.number), v.bytes);
                }
            }
            let rollouts = db.rollouts(None)?;
            // The chunks of every version rolled out to a region that drops one.
            let gone: HashSet<&VersionId> = candidates.iter().collect();
            let regions: HashSet<&str> = rollouts
                .iter()
                .filter(|r| gone.contains(&VersionId::new(r.dataset.clone(), r.version)))
                .map(|r| r.region.as_str())
                .collect();
            let mut chunks = HashMap::new();
            for r in rollouts.iter().filter(|r| regions.contains(r.region.as_str())) {
                let id = VersionId::new(r.dataset.clone(), r.version);
                if chunks.contains_key(&id) {
                    continue;
                }
                if let Some(stored) = db.version(&r.dataset, Some(r.version))? {
                    let list: Vec<_> = stored
                        .manifest
                        .files
                        .iter()
                        .flat_map(|f| f.chunks.iter().map(|c| (c.digest, c.length)))
                        .collect();
                    chunks.insert(id, list);
                }
            }
            Ok((candidates, sizes, rollouts, chunks))
        })
        .await?;
        let freed: BTreeMap<String, u64> = retention::freed_per_region(&candidates, &rollouts, &chunks);
        if !req.dry_run && !candidates.is_empty() {
            let gone = candidates.clone();
            blocking(&self.db, move |db| db.remove_versions(&gone, &in_use, false)).await.map_err(|e| match e {
                StoreError::Refused(why) => {
                    Status::aborted(format!("what is retained changed while gc ran ({why}); run it again"))
                }
                other => other.into(),
            })?;
            self.live.withdraw();
            info!(removed = candidates.len(), "gc removed versions nothing retains");
        }
        Ok(pb::GcResponse {
            versions: candidates
                .iter()
                .map(|id| pb::GcVersion {
                    dataset: id.dataset.clone(),
                    version: id.version,
                    bytes: sizes.get(id).copied().unwrap_or(0),
                })
                .collect(),
            regions: freed.into_iter().map(|(region, bytes)| pb::RegionFreed { region, bytes }).collect(),
            dry_run: req.dry_run,
        })
    }

    pub(super) async fn remove_source_call(&self, req: pb::RemoveRequest) -> Result<pb::RemoveResponse, Status> {
        validate_name("source", &req.name).map_err(invalid)?;
        let name = req.name.clone();
        blocking(&self.db, move |db| db.remove_source(&name)).await.map_err(|e| match e {
            StoreError::NotFound { .. } => {
                Status::not_found(format!("source {:?} does not exist (aq source list shows the known ones)", req.name))
            }
            other => other.into(),
        })?;
        info!(source = %req.name, "source removed");
        Ok(pb::RemoveResponse { summary: format!("source {}", req.name) })
    }

    pub(super) async fn remove_dataset_call(&self, req: pb::RemoveRequest) -> Result<pb::RemoveResponse, Status> {
        self.dataset(&req.name).await?;
        let in_use = self.in_use_for_removal().await?;
        let name = req.name.clone();
        let summary =
            blocking(&self.db, move |db| db.remove_dataset(&name, req.force, &in_use)).await.map_err(status)?;
        self.live.withdraw();
        info!(dataset = %req.name, %summary, "dataset removed");
        Ok(pb::RemoveResponse { summary })
    }

    pub(super) async fn remove_region_call(&self, req: pb::RemoveRequest) -> Result<pb::RemoveResponse, Status> {
        validate_name("region", &req.name).map_err(invalid)?;
        let name = req.name.clone();
        let summary = blocking(&self.db, move |db| db.remove_region(&name, req.force)).await.map_err(status)?;
        // Its spokes' watches end and their grants go: its credentials stop working now.
        self.live.withdraw();
        info!(region = %req.name, %summary, "region removed");
        Ok(pb::RemoveResponse { summary })
    }

    pub(super) async fn remove_version_call(
        &self,
        req: pb::RemoveVersionRequest,
    ) -> Result<pb::RemoveResponse, Status> {
        self.dataset(&req.dataset).await?;
        let id = VersionId::new(req.dataset.clone(), version_number(&req.dataset, req.version)?);
        let in_use = self.in_use_for_removal().await?;
        let gone = id.clone();
        blocking(&self.db, move |db| db.remove_versions(&[gone], &in_use, req.force)).await.map_err(status)?;
        self.live.withdraw();
        info!(version = %id, "version removed");
        Ok(pb::RemoveResponse { summary: format!("version {id}") })
    }
}
