//! What the kubelet sends a CSI node plugin, for the tests that drive one over its socket.

use std::path::Path;

use aqueduct_proto::csi::v1 as csi;
use aqueduct_proto::csi::v1::volume_capability::access_mode::Mode;
use aqueduct_proto::csi::v1::volume_capability::{AccessMode, AccessType};

/// A read-only, many-node publish of `volume_id` at `target` with these volume attributes
/// (`dataset`, `version`, ...), as the kubelet sends it for an ephemeral or bound volume.
pub fn publish(volume_id: &str, target: &Path, attributes: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_mode: Some(AccessMode { mode: Mode::MultiNodeReaderOnly as i32 }),
            access_type: Some(AccessType::Mount(Default::default())),
        }),
        readonly: true,
        volume_context: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

pub fn unpublish(volume_id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest { volume_id: volume_id.into(), target_path: target.display().to_string() }
}
