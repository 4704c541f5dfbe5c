//! The hub's admin gRPC service: thin handlers over the store, sources and snapshots.
//!
//! The file is long (some 690 lines) because the `Admin` trait's one impl holds every RPC's
//! handler; the calls of a concern past the first ones live in modules of their own
//! ([`lifecycle`], [`trust`]), and the audit log wraps the whole service ([`audit`]).
//!
//! Each handler checks the caller's identity, validates its input, does the work through the
//! modules that own it and maps their errors to statuses in `error.rs`. It shares what the hub
//! keeps in memory with the spokes' API through [`crate::live`] (members, budgets, the relay's
//! ledger, change notices) and reads rollouts by [`crate::rollout`]'s rules; it never calls
//! the spokes' API.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aqueduct_proto::domain::class::Class;
use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{ReplicationMode, domain::signature::VersionSignature, validate_name};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, info, instrument, warn};

pub mod audit;
mod lifecycle;
mod plans;
mod regions;
mod sources;
mod trust;
mod watches;

use crate::auth::require_admin;
use crate::error::{invalid, unknown_dataset};
use crate::live::Live;
use crate::pki::Authority;
use crate::rollout::cutover::CutOver;
use crate::rollout::retention::DEFAULT_KEEP;
use crate::rollout::{RolloutKey, VersionId};
use crate::signing::{self, Signer};
use crate::snapshot::{self, Progress, SnapshotOptions, blocking, now_unix_ms};
use crate::source::{HubFiles, Source, SourceSpec};
use crate::store::{DatasetRecord, MetaStore, RegionRecord, SourceRecord, StoreError, VersionRecord};
use regions::region_to_pb;

/// What the handlers share.
pub struct AdminService {
    db: Arc<dyn MetaStore>,
    /// The hub's CA (regions' spokes trust it).
    authority: Arc<Authority>,
    /// Signs the versions it cuts; its public keys go into region bundles.
    signer: Arc<Signer>,
    snapshot: SnapshotOptions,
    /// Rollout changes (to wake the spokes' watches), relayed bytes not yet written, members.
    live: Live,
    /// Datasets with a snapshot under way: one at a time per dataset.
    running: Arc<Mutex<HashSet<String>>>,
    /// The hub's data directory and keys: no source may hold them, no snapshot reads them.
    hub_files: HubFiles,
    /// Watched datasets: the trigger task's wake-up, its floor, and whether it runs.
    watching: watches::Watching,
}

impl AdminService {
    pub fn new(
        db: Arc<dyn MetaStore>,
        snapshot: SnapshotOptions,
        authority: Arc<Authority>,
        signer: Arc<Signer>,
        live: Live,
        hub_files: HubFiles,
    ) -> Self {
        Self {
            db,
            authority,
            signer,
            snapshot,
            live,
            running: Arc::default(),
            hub_files,
            watching: watches::Watching::default(),
        }
    }

    async fn dataset(&self, name: &str) -> Result<DatasetRecord, Status> {
        validate_name("dataset", name).map_err(invalid)?;
        let owned = name.to_string();
        blocking(&self.db, move |db| db.dataset(&owned)).await?.ok_or_else(|| unknown_dataset(name))
    }

    /// A rollout as `aq rollout` asks for it (the caller checked who asks): validated, stored,
    /// and the spokes' watches woken. The trigger task's rollouts come here too.
    pub(crate) async fn start_rollout(&self, req: pb::RolloutRequest) -> Result<pb::RolloutResponse, Status> {
        let dataset = self.dataset(&req.dataset).await?;
        if req.regions.is_empty() {
            return Err(Status::invalid_argument("a rollout needs at least one region (--to REGION[,REGION...])"));
        }
        for region in &req.regions {
            validate_name("region", region).map_err(invalid)?;
        }
        let version = match req.version {
            0 if dataset.latest_version == 0 => {
                return Err(Status::failed_precondition(format!(
                    "dataset {:?} has no version yet; cut one with `aq snapshot {}`",
                    dataset.name, dataset.name
                )));
            }
            0 => dataset.latest_version,
            n => n,
        };
        Span::current().record("version", version);
        let mode = ReplicationMode::from_wire(req.mode).map_err(invalid)?;
        let cut_over = CutOver::from_wire(req.cut_over).ok_or_else(|| {
            Status::invalid_argument(format!(
                "cut-over {} is not one this hub knows: use all-ready, per-region or manual",
                req.cut_over
            ))
        })?;
        let class = Class::from_wire(req.class).ok_or_else(|| {
            Status::invalid_argument(format!(
                "class {} is not one this hub knows: use urgent, normal or background",
                req.class
            ))
        })?;
        let deadline = plans::deadline(req.deadline_unix_ms, jiff::Timestamp::now())?;
        let not_found = |e| match e {
            StoreError::NotFound { kind: "region", name } => Status::not_found(format!(
                "region {name:?} does not exist; add it with `aq region add {name} --rate RATE`"
            )),
            StoreError::NotFound { kind: "version", .. } => Status::not_found(format!(
                "dataset {:?} has no version v{version}; `aq versions {}` lists them",
                dataset.name, dataset.name
            )),
            other => other.into(),
        };
        let (id, regions) = (VersionId::new(dataset.name.clone(), version), req.regions.clone());
        let plan = self.plan(&id, &regions, class).await.map_err(not_found)?;
        let response = pb::RolloutResponse {
            dataset: dataset.name.clone(),
            version,
            regions: req.regions,
            plans: plan.iter().map(|p| plans::plan_to_pb(p, deadline)).collect(),
            dry_run: req.dry_run,
        };
        if req.dry_run {
            return Ok(response);
        }
        let added = id.clone();
        blocking(&self.db, move |db| db.add_rollout(&added, &regions, mode, cut_over, class, now_unix_ms()))
            .await
            .map_err(not_found)?;
        self.keep_plans(&id, &plan, deadline).await?;
        // The relay's streams of these rows draw in the new class from their next chunk.
        for region in &response.regions {
            self.live.classes.set(&RolloutKey::new(id.dataset.clone(), version, region.clone()), class.into());
        }
        self.live.changes.notify_waiters();
        Ok(response)
    }

    /// What a snapshot of `name` needs, as `aq snapshot` and the trigger task start it: the
    /// dataset, its source opened (never onto the hub's files), and the dataset marked as
    /// being snapshot (refused if it already is) until the guard drops.
    async fn begin_snapshot(&self, name: &str) -> Result<(DatasetRecord, Arc<dyn Source>, RunningGuard), Status> {
        let dataset = self.dataset(name).await?;
        let source_name = dataset.source.clone();
        let source = blocking(&self.db, move |db| db.source(&source_name))
            .await?
            .ok_or_else(|| Status::internal(format!("dataset {name:?} names a source that is gone")))?;
        let source = SourceSpec::parse(&source.url, source.options)?.open_guarded(&self.hub_files)?;

        if !self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string()) {
            return Err(Status::failed_precondition(format!(
                "a snapshot of dataset {name:?} is already running; wait for it to finish"
            )));
        }
        Ok((dataset, source, RunningGuard(self.running.clone(), name.to_string())))
    }
}

fn source_to_pb(s: SourceRecord) -> pb::Source {
    pb::Source {
        name: s.name,
        url: s.url,
        options: s.options.into_iter().collect(),
        created_unix_ms: s.created_unix_ms,
    }
}

fn dataset_to_pb(d: DatasetRecord) -> pb::Dataset {
    pb::Dataset {
        name: d.name,
        source: d.source,
        prefix: d.prefix,
        created_unix_ms: d.created_unix_ms,
        latest_version: d.latest_version,
        outside_links: d.outside_links.to_string(),
        keep_versions: if d.keep_versions == 0 { DEFAULT_KEEP } else { d.keep_versions },
        watch: None,
    }
}

/// A dataset's outside-links policy from the wire: empty is the default (fail).
fn outside_links(text: &str) -> Result<OutsideLinks, Status> {
    if text.is_empty() { Ok(OutsideLinks::default()) } else { text.parse().map_err(Status::invalid_argument) }
}

fn version_to_pb(v: VersionRecord, unchanged: bool, signature: Option<&VersionSignature>) -> pb::VersionSummary {
    pb::VersionSummary {
        dataset: v.dataset,
        version: v.number,
        root: v.root.0.to_vec(),
        files: v.files,
        bytes: v.bytes,
        chunks: v.chunks,
        new_bytes: v.new_bytes,
        bytes_read: v.bytes_read,
        created_unix_ms: v.created_unix_ms,
        unchanged,
        skipped: v.skipped.into_iter().map(|s| pb::SkippedObject { key: s.key, reason: s.reason }).collect(),
        tags: Vec::new(),
        retained_by: Vec::new(),
        signature: signature.map(pb::VersionSignature::from),
    }
}

/// Removes a dataset from the running set when the snapshot ends, however it ends.
struct RunningGuard(Arc<Mutex<HashSet<String>>>, String);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    #[instrument(skip_all, fields(source))]
    async fn add_source(&self, request: Request<pb::AddSourceRequest>) -> Result<Response<pb::Source>, Status> {
        require_admin(&request)?;
        let s = request.into_inner().source.ok_or_else(|| Status::invalid_argument("source is missing"))?;
        Span::current().record("source", s.name.as_str());
        validate_name("source", &s.name).map_err(invalid)?;
        let options: std::collections::BTreeMap<String, String> = s.options.into_iter().collect();
        let spec = SourceSpec::parse(&s.url, options.clone())?;
        spec.check_hub_files(&self.hub_files)?;
        // Check now that the source exists and the credentials work, not at the first snapshot.
        spec.open_guarded(&self.hub_files)?.probe().await?;
        let record = SourceRecord {
            name: s.name,
            url: spec.url.to_string(),
            // As given: the connection options and the read limits.
            options,
            created_unix_ms: now_unix_ms(),
        };
        let stored = record.clone();
        blocking(&self.db, move |db| db.add_source(&stored)).await?;
        Ok(Response::new(source_to_pb(record)))
    }

    #[instrument(skip_all)]
    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        require_admin(&request)?;
        let sources = blocking(&self.db, |db| db.sources()).await?;
        Ok(Response::new(pb::ListSourcesResponse { sources: sources.into_iter().map(source_to_pb).collect() }))
    }

    #[instrument(skip_all, fields(dataset))]
    async fn add_dataset(&self, request: Request<pb::AddDatasetRequest>) -> Result<Response<pb::Dataset>, Status> {
        require_admin(&request)?;
        let d = request.into_inner().dataset.ok_or_else(|| Status::invalid_argument("dataset is missing"))?;
        Span::current().record("dataset", d.name.as_str());
        validate_name("dataset", &d.name).map_err(invalid)?;
        let prefix = d.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            aqueduct_proto::domain::validate_path(&prefix)
                .map_err(|_| Status::invalid_argument(format!("prefix {:?} is not a clean relative path", d.prefix)))?;
        }
        let record = DatasetRecord {
            name: d.name,
            source: d.source,
            prefix,
            created_unix_ms: now_unix_ms(),
            latest_version: 0,
            outside_links: outside_links(&d.outside_links)?,
            keep_versions: d.keep_versions,
        };
        let stored = record.clone();
        blocking(&self.db, move |db| db.add_dataset(&stored)).await.map_err(|e| match e {
            StoreError::NotFound { name, .. } => Status::not_found(format!(
                "source {name:?} does not exist; add it first with `aq source add {name} URL`"
            )),
            other => other.into(),
        })?;
        Ok(Response::new(dataset_to_pb(record)))
    }

    #[instrument(skip_all)]
    async fn list_datasets(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        require_admin(&request)?;
        let (datasets, watches) = blocking(&self.db, |db| Ok((db.datasets()?, db.watches()?))).await?;
        let mut datasets: Vec<pb::Dataset> = datasets.into_iter().map(dataset_to_pb).collect();
        self.watching.fill(&mut datasets, watches, now_unix_ms());
        Ok(Response::new(pb::ListDatasetsResponse { datasets }))
    }

    #[instrument(skip_all, fields(dataset, outside_links))]
    async fn update_dataset(
        &self,
        request: Request<pb::UpdateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        Span::current().record("dataset", req.name.as_str()).record("outside_links", req.outside_links.as_str());
        self.dataset(&req.name).await?;
        // Empty outside-links with a retention change or a watch leaves the policy as it is;
        // alone, it is the default (fail), as it always was.
        let watch_change = req.watch.is_some() || req.unwatch;
        let policy = match (req.outside_links.as_str(), req.keep_versions) {
            ("", Some(_)) => None,
            ("", None) if watch_change => None,
            (text, _) => Some(outside_links(text)?),
        };
        let watch = self.watching.change(&self.db, &req).await?;
        if req.keep_versions == Some(0) {
            return Err(Status::invalid_argument("a dataset keeps at least its newest version: --keep 1 or more"));
        }
        let (name, keep) = (req.name.clone(), req.keep_versions);
        blocking(&self.db, move |db| {
            if let Some(policy) = policy {
                db.set_outside_links(&name, policy)?;
            }
            if let Some(keep) = keep {
                db.set_keep_versions(&name, keep)?;
            }
            watches::apply(db, &name, watch)
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => unknown_dataset(&req.name),
            other => other.into(),
        })?;
        info!(policy = ?policy, keep_versions = ?keep, "dataset's options changed");
        // What the hub retains may have changed.
        self.live.changes.notify_waiters();
        if watch_change {
            self.watching.triggers.wake();
        }
        let mut dataset = vec![dataset_to_pb(self.dataset(&req.name).await?)];
        let watches = blocking(&self.db, |db| db.watches()).await?;
        self.watching.fill(&mut dataset, watches, now_unix_ms());
        Ok(Response::new(dataset.remove(0)))
    }

    type SnapshotStream = EventStream;

    #[instrument(skip_all, fields(dataset))]
    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        require_admin(&request)?;
        let name = request.into_inner().dataset;
        Span::current().record("dataset", name.as_str());
        let (dataset, source, guard) = self.begin_snapshot(&name).await?;

        let (tx, rx) = mpsc::channel(16);
        let progress = Arc::new(Progress::default());
        let (db, options, signer) = (self.db.clone(), self.snapshot, self.signer.clone());
        let span = Span::current();
        // The snapshot runs to its end even if the caller goes away: its result is kept.
        tokio::spawn(
            async move {
                let _guard = guard;
                let work = snapshot::snapshot(&db, &dataset, source, options, progress.clone());
                tokio::pin!(work);
                let mut ticker = tokio::time::interval(Duration::from_millis(250));
                let result = loop {
                    tokio::select! {
                        result = &mut work => break result,
                        _ = ticker.tick() => {
                            let event = pb::snapshot_event::Event::Progress(pb::SnapshotProgress {
                                files_total: progress.files_total.load(Ordering::Relaxed),
                                files_done: progress.files_done.load(Ordering::Relaxed),
                                bytes_total: progress.bytes_total.load(Ordering::Relaxed),
                                bytes_hashed: progress.bytes_hashed.load(Ordering::Relaxed),
                                bytes_reused: progress.bytes_reused.load(Ordering::Relaxed),
                            });
                            // A full channel only means a slow reader: skip this tick.
                            let _ = tx.try_send(Ok(pb::SnapshotEvent { event: Some(event) }));
                        }
                    }
                };
                let last = match signing::signed(&db, &signer, result).await {
                    Ok((o, s)) => Ok(pb::SnapshotEvent {
                        event: Some(pb::snapshot_event::Event::Done(version_to_pb(o.record, o.unchanged, Some(&s)))),
                    }),
                    Err(e) => {
                        warn!(error = %e, "snapshot failed");
                        Err(Status::from(e))
                    }
                };
                let _ = tx.send(last).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(dataset))]
    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        require_admin(&request)?;
        let name = request.into_inner().dataset;
        Span::current().record("dataset", name.as_str());
        self.dataset(&name).await?;
        Ok(Response::new(self.list_versions_of(name).await?))
    }

    #[instrument(skip_all, fields(dataset, version))]
    async fn get_manifest(&self, request: Request<pb::GetManifestRequest>) -> Result<Response<pb::Manifest>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        Span::current().record("dataset", req.dataset.as_str()).record("version", req.version);
        self.dataset(&req.dataset).await?;
        let (name, number) = (req.dataset.clone(), (req.version != 0).then_some(req.version));
        let stored = blocking(&self.db, move |db| db.version(&name, number)).await?.ok_or_else(|| match number {
            Some(n) => Status::not_found(format!(
                "dataset {:?} has no version v{n}; `aq versions {}` lists them",
                req.dataset, req.dataset
            )),
            None => Status::not_found(format!(
                "dataset {:?} has no version yet; cut one with `aq snapshot {}`",
                req.dataset, req.dataset
            )),
        })?;
        let manifest = signing::signed_manifest(&self.db, &self.signer, stored.manifest).await?;
        manifest.check_size().map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::Manifest::from(&manifest)))
    }
    #[instrument(skip_all, fields(region))]
    async fn add_region(
        &self,
        request: Request<pb::AddRegionRequest>,
    ) -> Result<Response<pb::AddRegionResponse>, Status> {
        require_admin(&request)?;
        let r = request.into_inner().region.ok_or_else(|| Status::invalid_argument("region is missing"))?;
        Span::current().record("region", r.name.as_str());
        validate_name("region", &r.name).map_err(invalid)?;
        if r.rate_bytes_per_sec == 0 {
            return Err(Status::invalid_argument("a region's link budget must be above 0 bytes per second"));
        }
        let record =
            RegionRecord { name: r.name, rate: r.rate_bytes_per_sec, created_unix_ms: now_unix_ms(), schedule: None };
        let stored = record.clone();
        blocking(&self.db, move |db| db.add_region(&stored)).await?;
        Ok(Response::new(pb::AddRegionResponse {
            region: Some(region_to_pb(record, Vec::new())),
            ca_pem: self.authority.ca_pem().to_string(),
            signing_keys: self.signer.published().iter().map(|k| k.to_string()).collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn list_regions(
        &self,
        request: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::ListRegionsResponse>, Status> {
        require_admin(&request)?;
        let regions = blocking(&self.db, |db| db.regions()).await?;
        Ok(Response::new(pb::ListRegionsResponse {
            regions: regions
                .into_iter()
                .map(|r| {
                    let members = self.live.members.members(&r.name);
                    region_to_pb(r, members)
                })
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(source))]
    async fn update_source(&self, request: Request<pb::UpdateSourceRequest>) -> Result<Response<pb::Source>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.update_source_call(request.into_inner()).await?))
    }

    #[instrument(skip_all, fields(region, rate, schedule))]
    async fn update_region(&self, request: Request<pb::UpdateRegionRequest>) -> Result<Response<pb::Region>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.update_region_call(request.into_inner()).await?))
    }

    #[instrument(skip_all, fields(dataset, version))]
    async fn rollout(&self, request: Request<pb::RolloutRequest>) -> Result<Response<pb::RolloutResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        Span::current().record("dataset", req.dataset.as_str());
        Ok(Response::new(self.start_rollout(req).await?))
    }

    #[instrument(skip_all, fields(dataset))]
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        require_admin(&request)?;
        let filter = request.into_inner().dataset;
        Span::current().record("dataset", filter.as_str());
        if !filter.is_empty() {
            self.dataset(&filter).await?;
        }
        // Relayed bytes not yet written are added, under the ledger's lock.
        let ledger = self.live.ledger.clone();
        let (rows, serving) = blocking(&self.db, move |db| {
            ledger.with_pending(|pending| {
                let only = (!filter.is_empty()).then_some(filter.as_str());
                let mut rows = db.rollouts(only)?;
                for r in &mut rows {
                    r.relayed_bytes += pending(&r.key());
                }
                Ok((rows, db.serving(only)?))
            })
        })
        .await?;
        let etas = blocking(&self.db, |db| crate::planning::etas(db, jiff::Timestamp::now())).await?;
        let active: HashSet<(&str, &str, u64)> =
            serving.iter().map(|s| (s.dataset.as_str(), s.region.as_str(), s.version)).collect();
        Ok(Response::new(pb::StatusResponse {
            rows: rows
                .into_iter()
                .map(|r| {
                    let key = r.key();
                    let mut row = pb::StatusRow {
                        nodes: self.live.members.nodes(&key),
                        refetched_bytes: self.live.ledger.refetched(&key),
                        mode: r.mode.to_wire(),
                        active: active.contains(&(key.dataset.as_str(), key.region.as_str(), key.version)),
                        dataset: r.dataset,
                        version: r.version,
                        region: r.region,
                        total_bytes: r.total_bytes,
                        cached_bytes: r.cached_bytes,
                        phase: r.phase.to_wire(),
                        reason: r.reason,
                        rate_bytes_per_sec: r.rate,
                        budget_bytes_per_sec: r.budget,
                        updated_unix_ms: r.updated_unix_ms,
                        relayed_bytes: r.relayed_bytes,
                        cut_over: r.cut_over.to_wire(),
                        class: r.class.to_wire(),
                        promote_pending: r.promote_pending,
                        ..Default::default()
                    };
                    plans::fill_row(&mut row, &etas);
                    row
                })
                .collect(),
            caches: self.live.members.caches(),
            serving: serving.iter().map(|s| s.to_pb()).collect(),
        }))
    }

    /// The hub's build and each live spoke's, as its last cache report named it.
    #[instrument(skip_all)]
    async fn info(&self, request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(pb::InfoResponse {
            hub_version: env!("CARGO_PKG_VERSION").to_string(),
            spokes: self.live.members.spokes(),
        }))
    }

    #[instrument(skip_all)]
    async fn tag(&self, request: Request<pb::TagRequest>) -> Result<Response<pb::TagResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.tag_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn promote(&self, request: Request<pb::PromoteRequest>) -> Result<Response<pb::CutOverResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.promote_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Result<Response<pb::CutOverResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.rollback_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn cancel_rollout(
        &self,
        request: Request<pb::CancelRolloutRequest>,
    ) -> Result<Response<pb::CancelRolloutResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.cancel_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn gc(&self, request: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.gc_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn remove_source(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.remove_source_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn remove_dataset(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.remove_dataset_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn remove_region(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.remove_region_call(request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn remove_version(
        &self,
        request: Request<pb::RemoveVersionRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.remove_version_call(request.into_inner()).await?))
    }

    #[instrument(skip_all, fields(region, uses))]
    async fn create_enrol_token(
        &self,
        request: Request<pb::CreateEnrolTokenRequest>,
    ) -> Result<Response<pb::CreateEnrolTokenResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        Span::current().record("region", req.region.as_str()).record("uses", req.uses);
        Ok(Response::new(crate::enrol::make_token(&self.db, &req.region, req.ttl_seconds, req.uses).await?))
    }

    #[instrument(skip_all)]
    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let by = require_admin(&request)?;
        Ok(Response::new(self.revoke_call(by, request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn list_revocations(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::RevocationList>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.list_revocations_call().await?))
    }

    #[instrument(skip_all)]
    async fn add_admin(&self, request: Request<pb::AddAdminRequest>) -> Result<Response<pb::AddAdminResponse>, Status> {
        let by = require_admin(&request)?;
        Ok(Response::new(self.add_admin_call(by, request.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn list_admins(
        &self,
        request: Request<pb::ListAdminsRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.list_admins_call().await?))
    }

    #[instrument(skip_all)]
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.list_audit_call(request.into_inner()).await?))
    }
}
