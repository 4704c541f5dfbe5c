//! The `AqueductVolume` custom resource (`aqueduct.io/v1alpha1`, short name `aqv`), derived
//! from the Rust types below: the CRD in `deploy/spoke/crds/` is what [`crd_yaml`] prints
//! (the `crdgen` binary), and a test fails when the two differ.
//!
//! A volume names a dataset and a version, a tag to follow, or neither (follow the region's
//! active version); the operator turns it into a PersistentVolumeClaim of the same name that pods
//! mount, and keeps its status current: phase, version served, sizes, lag behind the newest
//! version the hub assigned to the region, and conditions in the standard Kubernetes shape.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use aqueduct_proto::ReplicationMode;

/// What an `AqueductVolume` asks for.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "aqueduct.io",
    version = "v1alpha1",
    kind = "AqueductVolume",
    plural = "aqueductvolumes",
    shortname = "aqv",
    category = "aqueduct",
    doc = "A dataset version served to pods as a read-only PersistentVolumeClaim of the same name",
    namespaced,
    status = "AqueductVolumeStatus",
    printcolumn = r#"{"name":"Dataset","type":"string","jsonPath":".spec.dataset"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Total Size","type":"string","jsonPath":".status.totalSize"}"#,
    printcolumn = r#"{"name":"Cached","type":"string","jsonPath":".status.cached"}"#,
    printcolumn = r#"{"name":"Cached %","type":"string","jsonPath":".status.cachedPercentage"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","priority":1,"jsonPath":".status.versionLag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AqueductVolumeSpec {
    /// The dataset to serve, as the hub names it (rolled out to this region with
    /// `aq rollout DATASET@vN --to REGION`).
    pub dataset: String,
    /// The version to serve (1, 2, ...). Leave it (and `tag`) out to follow the region's
    /// active version: new pods then see each new version once it is Ready in every region of
    /// its rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<u64>,
    /// A tag of the dataset to follow (`stable`, `canary`; set with `aq tag`), instead of a
    /// version: new pods see the version the tag names once it is Ready in the region. Not
    /// with `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// How the node serving a pod holds the version: `auto` (as the rollout says), `region`
    /// (one copy spread over the region's nodes) or `every-node` (the whole version on the
    /// node).
    #[serde(default)]
    pub mode: VolumeMode,
    /// Let pods start before the version is Ready in the region (they read through to the
    /// hub on a miss). Default false: a pod never starts on a partial model.
    #[serde(default)]
    pub start_before_ready: bool,
}

/// The replication modes of `aqueduct_proto::ReplicationMode`, under the same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeMode {
    #[default]
    Auto,
    Region,
    EveryNode,
}

impl From<VolumeMode> for ReplicationMode {
    fn from(mode: VolumeMode) -> Self {
        match mode {
            VolumeMode::Auto => ReplicationMode::Auto,
            VolumeMode::Region => ReplicationMode::Region,
            VolumeMode::EveryNode => ReplicationMode::EveryNode,
        }
    }
}

/// Where a volume stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not looked at yet, or the version has no byte in the region yet.
    #[default]
    Pending,
    /// The region is fetching the version.
    Transferring,
    /// Every chunk of the version is in the region, verified.
    Ready,
    /// The volume cannot be served as asked: see the conditions.
    Failed,
}

/// What the operator last saw of a volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AqueductVolumeStatus {
    pub phase: Phase,
    /// The version the volume serves now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The newest version of the dataset the hub assigned to the region (rolling out or
    /// active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_version: Option<u64>,
    /// How many versions the served one is behind the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_lag: Option<u64>,
    /// Bytes of the version served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Bytes of it in the region's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_bytes: Option<u64>,
    /// The cache's capacity in bytes (absent: no quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_capacity_bytes: Option<u64>,
    /// `totalBytes` for people (`kubectl get aqv`), e.g. `1.5GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<String>,
    /// `cachedBytes` for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<String>,
    /// `cacheCapacityBytes` for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_capacity: Option<String>,
    /// Cached bytes as a share of the total, e.g. `42.0%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_percentage: Option<String>,
    /// The PersistentVolume the claim of the same name is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid` (the spec names a version the region holds), `ClaimApplied` (the claim of the
    /// same name is ours and bound to the volume's PV), `Ready` (the version is Ready in the
    /// region).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML, as `crdgen` prints it and `deploy/spoke/crds/aqueductvolumes.yaml` holds.
pub fn crd_yaml() -> String {
    let crd = AqueductVolume::crd();
    let yaml = serde_saphyr::to_string(&crd).expect("a CRD serializes");
    format!("# Generated by `cargo run -p aqueduct-spoke --bin crdgen`: do not edit.\n---\n{yaml}")
}
