//! The pure steps of reconcile: validate a volume against what the region holds, build the
//! PersistentVolume and PersistentVolumeClaim it becomes, and compute its status. No client,
//! no clock (the caller passes the time): tested on YAML fixtures in
//! `spoke/tests/fixtures/operator/`.
//!
//! What a volume becomes:
//! - a PersistentVolume `aqv-<uid>` (cluster-scoped, so named after the volume's uid),
//!   `ReadOnlyMany`, served by the CSI driver [`DRIVER`] with the volume attributes
//!   `dataset`, `version` (a number, `active` for a volume that follows the region's active
//!   version, or the tag a volume follows), `mode` and `startBeforeReady`; its `claimRef` reserves it for the claim below.
//!   Reclaim policy `Retain`: there is no CSI controller to delete anything, the operator
//!   deletes the PV itself when the volume goes. A PV's source is immutable in Kubernetes, so
//!   the attributes name what the spec says (not the version `active` resolves to today).
//! - a PersistentVolumeClaim with the volume's name and namespace, bound to that PV
//!   (`volumeName`, `storageClassName: ""` so that no provisioner acts on it), owned by the
//!   volume.
//!
//! Sizes on both are nominal (as Fluid does): the bytes that count are in the volume's status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::{Resource, ResourceExt};

use aqueduct_proto::Size;

use super::crd::{AqueductVolume, AqueductVolumeStatus, Phase, VolumeMode};
use super::region::{Holding, RegionVersion};

/// The CSI driver that serves Aqueduct volumes (the spoke's node plugin registers it).
pub const DRIVER: &str = "csi.aqueduct.io";
/// The one field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "aqueduct-operator";
/// Keeps a volume until its PV and PVC are gone and its hold released.
pub const FINALIZER: &str = "aqueduct.io/cleanup";
/// The capacity on the PV and the PVC's request: nominal, the same on both so they bind.
pub const NOMINAL_CAPACITY: &str = "100Pi";
/// Labels on what the operator makes: who made it, for which volume.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_NAMESPACE: &str = "aqueduct.io/volume-namespace";
pub const LABEL_NAME: &str = "aqueduct.io/volume-name";
/// The `version` attribute of a volume that follows the region's active version.
pub const FOLLOW_ACTIVE: &str = "active";

/// Condition types on a volume's status.
pub const VALID: &str = "Valid";
pub const CLAIM: &str = "ClaimApplied";
pub const READY: &str = "Ready";

/// Why a volume's spec cannot be served as it stands. Each is a condition, never a crash.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("spec.{field}: {message}")]
    Spec { field: &'static str, message: String },
    #[error(
        "dataset {dataset:?} is not rolled out to this region; roll it out with `aq rollout {dataset}@vN --to REGION`, or fix spec.dataset"
    )]
    UnknownDataset { dataset: String },
    #[error(
        "{dataset}@v{version} is not rolled out to this region (it holds {held}); roll it out with `aq rollout {dataset}@v{version} --to REGION`, or fix spec.version"
    )]
    UnknownVersion { dataset: String, version: u64, held: String },
    #[error(
        "{dataset} has no active version in this region yet (a version becomes active when it is Ready in every region of its rollout); wait, or name a version in spec.version"
    )]
    NoActiveVersion { dataset: String },
    #[error(
        "{dataset} has no tag {tag:?} (its tags: {known}); tag a version with `aq tag {dataset} {tag} vN`, or fix spec.tag"
    )]
    UnknownTag { dataset: String, tag: String, known: String },
    #[error(
        "{dataset}@{tag} names v{version}, which is not rolled out to this region; roll it out with `aq rollout {dataset}@v{version} --to REGION`, or move the tag"
    )]
    TagNotAssigned { dataset: String, tag: String, version: u64 },
}

impl Invalid {
    /// The condition's reason (CamelCase, as Kubernetes wants it).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Spec { .. } => "InvalidSpec",
            Self::UnknownDataset { .. } => "UnknownDataset",
            Self::UnknownVersion { .. } => "UnknownVersion",
            Self::NoActiveVersion { .. } => "NoActiveVersion",
            Self::UnknownTag { .. } => "UnknownTag",
            Self::TagNotAssigned { .. } => "TagNotAssigned",
        }
    }
}

/// A volume that cannot be built at all: its metadata lacks what the API server always sets.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("AqueductVolume {name:?} has no {what}; only objects read from the API server can be built")]
    Metadata { name: String, what: &'static str },
}

/// The version a valid volume serves, and the newest one the region was assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub version: RegionVersion,
    pub newest: u64,
}

/// Why the claim was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimProblem {
    #[error(
        "PersistentVolumeClaim {namespace}/{name} already exists and is not owned by this AqueductVolume; nothing was changed: delete or rename that claim, or give the AqueductVolume another name"
    )]
    Conflict { namespace: String, name: String },
    #[error(
        "PersistentVolume {pv} was made for {was}, and a PersistentVolume's source cannot change; the volume still serves it: to serve {now}, create a new AqueductVolume (or delete and recreate this one)"
    )]
    Immutable { pv: String, was: String, now: String },
}

impl ClaimProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "ClaimConflict",
            Self::Immutable { .. } => "SpecImmutable",
        }
    }
}

/// Checks the spec and resolves the version it means among the region's versions of its
/// dataset (for a volume that names no tag).
pub fn validate(aqv: &AqueductVolume, versions: &[RegionVersion]) -> Result<Resolved, Invalid> {
    validate_tagged(aqv, versions, &[])
}

/// Checks the spec and resolves the version it means among the region's versions of its
/// dataset and the dataset's `tags` (name, version): a tag means its version while that is
/// assigned to the region (the node plugin shows it to pods once it is Ready there).
pub fn validate_tagged(
    aqv: &AqueductVolume,
    versions: &[RegionVersion],
    tags: &[(String, u64)],
) -> Result<Resolved, Invalid> {
    let spec = &aqv.spec;
    aqueduct_proto::validate_name("dataset", &spec.dataset)
        .map_err(|e| Invalid::Spec { field: "dataset", message: e.to_string() })?;
    if spec.version == Some(0) {
        return Err(Invalid::Spec { field: "version", message: "versions count from 1 (v1, v2, ...)".into() });
    }
    if let Some(tag) = &spec.tag {
        if spec.version.is_some() {
            return Err(Invalid::Spec { field: "tag", message: "give a version or a tag to follow, not both".into() });
        }
        aqueduct_proto::validate_tag(tag).map_err(|e| Invalid::Spec { field: "tag", message: e.to_string() })?;
    }
    let of: Vec<&RegionVersion> = versions.iter().filter(|v| v.dataset == spec.dataset).collect();
    let newest =
        of.iter().map(|v| v.version).max().ok_or_else(|| Invalid::UnknownDataset { dataset: spec.dataset.clone() })?;
    if let Some(tag) = &spec.tag {
        let (dataset, tag) = (spec.dataset.clone(), tag.clone());
        let Some(&(_, version)) = tags.iter().find(|(name, _)| *name == tag) else {
            let mut known: Vec<&str> = tags.iter().map(|(name, _)| name.as_str()).collect();
            known.sort_unstable();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(Invalid::UnknownTag { dataset, tag, known });
        };
        return match of.iter().find(|v| v.version == version) {
            Some(v) => Ok(Resolved { version: (*v).clone(), newest }),
            None => Err(Invalid::TagNotAssigned { dataset, tag, version }),
        };
    }
    let found = match spec.version {
        Some(n) => of.iter().find(|v| v.version == n),
        None => of.iter().find(|v| v.active),
    };
    match (found, spec.version) {
        (Some(v), _) => Ok(Resolved { version: (*v).clone(), newest }),
        (None, Some(version)) => {
            let mut held: Vec<u64> = of.iter().map(|v| v.version).collect();
            held.sort_unstable();
            Err(Invalid::UnknownVersion {
                dataset: spec.dataset.clone(),
                version,
                held: held.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", "),
            })
        }
        (None, None) => Err(Invalid::NoActiveVersion { dataset: spec.dataset.clone() }),
    }
}

/// The PV's name: cluster-wide unique, from the volume's uid.
pub fn pv_name(aqv: &AqueductVolume) -> Result<String, BuildError> {
    Ok(format!("aqv-{}", required(aqv, "metadata.uid", aqv.meta().uid.as_deref())?))
}

/// Who holds the version in the region: `NAMESPACE/NAME`.
pub fn holder(aqv: &AqueductVolume) -> String {
    format!("{}/{}", aqv.namespace().unwrap_or_default(), aqv.name_any())
}

fn required<'a>(aqv: &AqueductVolume, what: &'static str, value: Option<&'a str>) -> Result<&'a str, BuildError> {
    value.filter(|v| !v.is_empty()).ok_or_else(|| BuildError::Metadata { name: aqv.name_any(), what })
}

/// The CSI volume attributes of a volume: what the node plugin mounts.
pub fn volume_attributes(aqv: &AqueductVolume) -> BTreeMap<String, String> {
    let spec = &aqv.spec;
    let mode = match spec.mode {
        VolumeMode::Auto => "auto",
        VolumeMode::Region => "region",
        VolumeMode::EveryNode => "every-node",
    };
    BTreeMap::from([
        ("dataset".to_string(), spec.dataset.clone()),
        (
            "version".to_string(),
            match (&spec.tag, spec.version) {
                (Some(tag), _) => tag.clone(),
                (None, Some(v)) => v.to_string(),
                (None, None) => FOLLOW_ACTIVE.to_string(),
            },
        ),
        ("mode".to_string(), mode.to_string()),
        ("startBeforeReady".to_string(), spec.start_before_ready.to_string()),
    ])
}

fn labels(aqv: &AqueductVolume, namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_NAMESPACE.to_string(), namespace.to_string()),
        (LABEL_NAME.to_string(), aqv.name_any()),
    ])
}

/// The PersistentVolume and the PersistentVolumeClaim a volume becomes.
pub fn build(aqv: &AqueductVolume) -> Result<(PersistentVolume, PersistentVolumeClaim), BuildError> {
    let name = aqv.name_any();
    let namespace = required(aqv, "metadata.namespace", aqv.meta().namespace.as_deref())?.to_string();
    let pv_name = pv_name(aqv)?;
    let owner =
        aqv.controller_owner_ref(&()).ok_or_else(|| BuildError::Metadata { name: name.clone(), what: "uid" })?;
    let capacity = BTreeMap::from([("storage".to_string(), Quantity(NOMINAL_CAPACITY.into()))]);
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            labels: Some(labels(aqv, &namespace)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            capacity: Some(capacity.clone()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: DRIVER.into(),
                volume_handle: format!("{namespace}.{name}"),
                read_only: Some(true),
                volume_attributes: Some(volume_attributes(aqv)),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".into()),
            ..Default::default()
        }),
        status: None,
    };
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.clone()),
            labels: Some(labels(aqv, &namespace)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            resources: Some(VolumeResourceRequirements { requests: Some(capacity), ..Default::default() }),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".into()),
            volume_name: Some(pv_name),
            ..Default::default()
        }),
        status: None,
    };
    Ok((pv, pvc))
}

/// Whether `pvc` is the one this volume made (this volume is its controller).
pub fn owns(aqv: &AqueductVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(uid) = aqv.meta().uid.as_deref() else { return false };
    pvc.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Whether an existing PV of this volume was made for other attributes than the spec's now.
pub fn changed_source(aqv: &AqueductVolume, existing: &PersistentVolume) -> Option<ClaimProblem> {
    let was = existing.spec.as_ref()?.csi.as_ref()?.volume_attributes.clone().unwrap_or_default();
    let now = volume_attributes(aqv);
    (was != now).then(|| ClaimProblem::Immutable { pv: existing.name_any(), was: describe(&was), now: describe(&now) })
}

fn describe(attributes: &BTreeMap<String, String>) -> String {
    attributes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// What reconcile saw, for [`status`].
#[derive(Clone, Debug)]
pub struct Observation {
    pub resolved: Result<Resolved, Invalid>,
    pub holding: Holding,
    pub capacity: Option<u64>,
    /// `None` when the PV and PVC were applied.
    pub claim: Option<ClaimProblem>,
}

/// The status a volume should have after `seen`, at `now`. Conditions keep their
/// `lastTransitionTime` while their status stays the same.
pub fn status(aqv: &AqueductVolume, seen: &Observation, now: &Time) -> AqueductVolumeStatus {
    let previous = aqv.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = aqv.meta().generation;
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let mut out = AqueductVolumeStatus { observed_generation: generation, ..Default::default() };
    let resolved = match &seen.resolved {
        Err(invalid) => {
            out.phase = Phase::Failed;
            out.conditions = vec![
                condition(VALID, false, invalid.reason(), invalid.to_string()),
                condition(READY, false, invalid.reason(), "the spec cannot be served; see the Valid condition".into()),
            ];
            return out;
        }
        Ok(resolved) => resolved,
    };
    let v = &resolved.version;
    let total = v.total_bytes;
    let cached = seen.holding.cached_bytes.min(total);
    out.version = Some(v.version);
    out.newest_version = Some(resolved.newest);
    out.version_lag = Some(resolved.newest.saturating_sub(v.version));
    out.total_bytes = Some(total);
    out.cached_bytes = Some(cached);
    out.cache_capacity_bytes = seen.capacity;
    out.total_size = Some(Size(total).to_string());
    out.cached = Some(Size(cached).to_string());
    out.cache_capacity = seen.capacity.map(|c| Size(c).to_string());
    let percent = if total == 0 { 100.0 } else { cached as f64 * 100.0 / total as f64 };
    out.cached_percentage = Some(format!("{percent:.1}%"));
    let which = match (&aqv.spec.tag, aqv.spec.version) {
        (Some(tag), _) => format!(" (tag {tag})"),
        (None, None) => " (the region's active version)".to_string(),
        (None, Some(_)) => String::new(),
    };
    let valid = condition(VALID, true, "Resolved", format!("serves {}@v{}{which}", v.dataset, v.version));
    match &seen.claim {
        Some(problem) => {
            // The PVC is not ours, or the PV cannot change: what runs keeps running, but the
            // volume does not serve what it says.
            out.phase = Phase::Failed;
            out.conditions = vec![
                valid,
                condition(CLAIM, false, problem.reason(), problem.to_string()),
                condition(READY, false, problem.reason(), "see the ClaimApplied condition".into()),
            ];
        }
        None => {
            out.volume_name = pv_name(aqv).ok();
            let claim = condition(
                CLAIM,
                true,
                "Applied",
                format!(
                    "PersistentVolumeClaim {} is bound to PersistentVolume {}",
                    aqv.name_any(),
                    out.volume_name.as_deref().unwrap_or_default()
                ),
            );
            let ready = if seen.holding.ready {
                out.phase = Phase::Ready;
                condition(READY, true, "Ready", format!("{}@v{} is in the region, verified", v.dataset, v.version))
            } else {
                out.phase = if cached > 0 { Phase::Transferring } else { Phase::Pending };
                let pods = if aqv.spec.start_before_ready {
                    "pods may start and read through to the hub"
                } else {
                    "pods that mount it wait until it is Ready"
                };
                condition(
                    READY,
                    false,
                    if cached > 0 { "Transferring" } else { "Pending" },
                    format!("{}@v{}: {} of {} in the region; {pods}", v.dataset, v.version, Size(cached), Size(total)),
                )
            };
            out.conditions = vec![valid, claim, ready];
        }
    }
    out
}
