//! The hub's metadata: sources, datasets, versions, regions and rollouts, behind the
//! [`MetaStore`] trait, with the records it reads and writes.
//!
//! One engine, [`meta::SqlStore`], keeps everything in one SQLite file under the hub's
//! data directory (or in memory, for tests). Its SQL sticks to what PostgreSQL also speaks
//! (INTEGER, TEXT, BLOB/BYTEA, plain SELECT/INSERT in transactions), so that a PostgreSQL
//! engine for a highly available hub can implement the same trait with the same statements;
//! `store/tests.rs` is the suite every engine passes. An engine decides nothing about
//! rollouts: it applies [`crate::rollout`]'s rules to a row inside the transaction that writes
//! it, and keeps phases and modes as their text names (`Ready`, `every-node`).
//!
//! A version is written in one transaction with all its files, so a failed or interrupted
//! snapshot leaves nothing behind. Each file's chunk list is one blob ([`chunk_list`]). The
//! schema carries a version number from the start; older databases are brought up to date
//! step by step ([`schema`]).

pub mod chunk_list;
pub mod enrol;
pub mod leases;
pub mod lifecycle;
pub mod meta;
pub mod pg_tls;
pub mod plans;
pub mod schema;
pub mod signing;
pub mod sql;
#[cfg(test)]
pub(crate) mod tests;
pub mod trust;
pub mod watches;

use std::collections::BTreeMap;

use aqueduct_proto::domain::class::Class;
use aqueduct_proto::domain::modes::OutsideLinks;
use aqueduct_proto::{Digest, Manifest, ReplicationMode};

use crate::rollout::cutover::{CutOver, RegionStep, ServingRecord};
use crate::rollout::retention::{InUse, Reason};
use crate::rollout::{RegionProgress, RolloutKey, RolloutRecord, TagRecord, VersionId};
use aqueduct_core::revocation::{Revocation, RevocationList};
use schema::SCHEMA_VERSION;
use trust::{AdminRecord, AuditRecord};

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
    /// A lifecycle rule refused the change (it says why and what to do); nothing changed.
    #[error("{0}")]
    Refused(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("hub database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", sql::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    #[error("{0}")]
    Config(String),
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
    /// Retention: its newest `keep_versions` are always retained (0: the default).
    pub keep_versions: u32,
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
    /// Link budget, bytes per second (when it has no schedule).
    pub rate: u64,
    pub created_unix_ms: i64,
    /// Its budget over the week, when it has one (the text checked by
    /// [`aqueduct_core::schedule::Schedule::parse`]).
    pub schedule: Option<RegionSchedule>,
}

/// A region's weekly budget schedule and the time zone its windows are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionSchedule {
    pub text: String,
    /// An IANA name (`Europe/Berlin`).
    pub time_zone: String,
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
/// runtime go through `spawn_blocking`. The rollout lifecycle's calls are in
/// [`LifecycleStore`].
pub trait MetaStore:
    LifecycleStore
    + enrol::EnrolStore
    + TrustStore
    + signing::SigningStore
    + plans::PlanStore
    + watches::WatchStore
    + leases::LeaseStore
    + Send
    + Sync
{
    fn add_source(&self, source: &SourceRecord) -> Result<(), StoreError>;
    /// Replaces a source's options (its read limits changed); `NotFound` for an unknown name.
    fn set_source_options(&self, name: &str, options: &BTreeMap<String, String>) -> Result<(), StoreError>;
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
    /// Gives the region a flat budget (its schedule, if any, goes).
    fn set_region_rate(&self, name: &str, rate: u64) -> Result<(), StoreError>;
    /// Gives the region a weekly budget schedule.
    fn set_region_schedule(&self, name: &str, schedule: &RegionSchedule) -> Result<(), StoreError>;
    /// Every rollout (of one dataset, or of all), by dataset, version and region.
    fn rollouts(&self, dataset: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError>;
    /// Adds to the bytes relayed to a region for a version.
    fn add_relayed(&self, key: &RolloutKey, bytes: u64) -> Result<(), StoreError>;
    /// The version's source changed: fails it, with `reason`, in every region that was asked
    /// to hold it, as [`crate::rollout::after_source_changed`] says (where it was never whole; the
    /// regions that held it keep it). Returns the regions it failed in, sorted.
    fn fail_version(&self, version: &VersionId, reason: &str, now_unix_ms: i64) -> Result<Vec<String>, StoreError>;
}

/// Trust: the revocation list, named admins, the audit log of admin calls ([`trust`]).
pub trait TrustStore {
    /// The revocation list, with its generation (0: nothing was ever revoked).
    fn revocations(&self) -> Result<RevocationList, StoreError>;
    /// Adds an entry (a prefix revoked again keeps the later time), compacts the list and
    /// bumps its generation; returns the new list. `Refused` for a prefix that is not an
    /// identity URI's, or past [`trust::MAX_REVOCATIONS`] entries.
    fn revoke(&self, entry: &Revocation) -> Result<RevocationList, StoreError>;
    /// Records an admin (replacing one of that name: a re-issued bundle).
    fn put_admin(&self, admin: &AdminRecord) -> Result<(), StoreError>;
    fn admins(&self) -> Result<Vec<AdminRecord>, StoreError>;
    fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// The audit rows at or after `since_unix_ms`, oldest first: the newest `limit` of them
    /// (at most [`trust::MAX_AUDIT_ROWS`]).
    fn audit(&self, since_unix_ms: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
}

/// The rollout lifecycle: rollouts, what regions serve, tags, retention and removals. Each
/// call is one transaction that applies [`crate::rollout`]'s rules to what it reads, so that
/// a rule never acts on rows another call changed meanwhile; a refusal
/// ([`StoreError::Refused`]) changes nothing.
pub trait LifecycleStore {
    /// Asks `regions` to hold a version in `mode`, of `class`; regions that already have it keep
    /// their state and take the new mode, cut-over and class. Fails with `NotFound` naming the first unknown region or
    /// version, writing nothing.
    fn add_rollout(
        &self,
        version: &VersionId,
        regions: &[String],
        mode: ReplicationMode,
        cut_over: CutOver,
        class: Class,
        now_unix_ms: i64,
    ) -> Result<(), StoreError>;
    /// Changes the class of a rollout in a region (a rollout behind its deadline is raised);
    /// returns the class it had. `NotFound` if the version was not rolled out to the region.
    fn set_rollout_class(&self, key: &RolloutKey, class: Class) -> Result<Class, StoreError>;
    /// Records what a region's members reported about a version it was asked to hold, as
    /// [`crate::rollout::after_report`] says (a row that was Ready once stays Ready, with its cached
    /// bytes: a spoke that joins the region later, or fails, shows per node, not in the
    /// region's row). When the row first becomes Ready, the regions that switch to the version
    /// by its cut-over ([`crate::rollout::cutover::switches`]) serve it, in the same
    /// transaction. `NotFound` if the version was not rolled out to the region.
    fn update_rollout(&self, update: &RolloutUpdate) -> Result<(), StoreError>;
    /// Sets a dataset's retention (`keep` newest versions, at least 1).
    fn set_keep_versions(&self, dataset: &str, keep: u32) -> Result<(), StoreError>;
    /// Tags of one dataset or of all, by dataset and name.
    fn tags(&self, dataset: Option<&str>) -> Result<Vec<TagRecord>, StoreError>;
    /// Sets or moves a tag; returns the version it named before. `NotFound` for a version
    /// that does not exist.
    fn set_tag(&self, tag: &TagRecord) -> Result<Option<u64>, StoreError>;
    /// Removes a tag; returns the version it named (`None`: there was no such tag).
    fn remove_tag(&self, dataset: &str, name: &str) -> Result<Option<u64>, StoreError>;
    /// What each region serves (of one dataset, or of all), by dataset and region.
    fn serving(&self, dataset: Option<&str>) -> Result<Vec<ServingRecord>, StoreError>;
    /// Makes regions serve a version ([`crate::rollout::cutover::promote`]).
    fn promote(&self, version: &VersionId, regions: &[String], now_unix_ms: i64)
    -> Result<Vec<RegionStep>, StoreError>;
    /// Makes regions serve an earlier version ([`crate::rollout::cutover::rollback`]): where
    /// it is not whole, its row is reset (or added) and served once Ready. `in_use`: what the
    /// spokes report (it counts for what is retained, so for what is whole).
    fn rollback(
        &self,
        dataset: &str,
        to: Option<u64>,
        regions: &[String],
        in_use: &[InUse],
        now_unix_ms: i64,
    ) -> Result<Vec<RegionStep>, StoreError>;
    /// Removes a version's rows from regions ([`crate::rollout::cutover::cancel`]); returns
    /// the regions.
    fn cancel_rollout(
        &self,
        version: &VersionId,
        regions: &[String],
        now_unix_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
    /// Every version, with the reasons it is retained
    /// ([`crate::rollout::retention::retained`]).
    fn retention(&self, in_use: &[InUse]) -> Result<BTreeMap<VersionId, Vec<Reason>>, StoreError>;
    /// Removes versions (their files, rows and tags), each only if
    /// [`crate::rollout::retention::removable`] allows it at this moment; refused as a whole
    /// otherwise.
    fn remove_versions(&self, versions: &[VersionId], in_use: &[InUse], force: bool) -> Result<(), StoreError>;
    /// Removes a source; refused while a dataset uses it.
    fn remove_source(&self, name: &str) -> Result<(), StoreError>;
    /// Removes a dataset; refused while it is rolled out (unless `force`: its rollouts go
    /// too) or in use. Returns what went.
    fn remove_dataset(&self, name: &str, force: bool, in_use: &[InUse]) -> Result<String, StoreError>;
    /// Removes a region; refused while versions are rolled out to it (unless `force`: its
    /// rows and what it serves go too). Returns what went.
    fn remove_region(&self, name: &str, force: bool) -> Result<String, StoreError>;
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

/// A region's report on one version: its row as its members' reports fold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutUpdate {
    pub key: RolloutKey,
    pub progress: RegionProgress,
    pub updated_unix_ms: i64,
}
