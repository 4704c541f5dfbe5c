//! The CSI Identity and Node services: thin handlers that check a request's shape
//! ([`volume`](super::volume)) and hand over to [`Node`]. The calls a node plugin without
//! staging, stats or expansion does not serve answer UNIMPLEMENTED.

use std::sync::Arc;
use std::time::Duration;

use aqueduct_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use super::DRIVER_NAME;
use super::node::Node;
use super::volume::{Publish, ids};

/// Answers `Probe` from `ready`: `Ok(true)` ready, `Ok(false)` still starting, `Err(why)`
/// unhealthy (FAILED_PRECONDITION with why, which the livenessprobe sidecar logs).
pub struct IdentityService {
    pub ready: Arc<dyn Fn() -> Result<bool, String> + Send + Sync>,
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    #[instrument(skip_all)]
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    /// A node plugin only: no controller service, no topology constraints.
    #[instrument(skip_all)]
    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities: Vec::new() }))
    }

    /// Ready when the node can publish: the store is usable and FUSE mounts can be made
    /// (see `crate::health::csi_ready`).
    #[instrument(skip_all)]
    async fn probe(&self, _request: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        match (self.ready)() {
            Ok(ready) => Ok(Response::new(csi::ProbeResponse { ready: Some(ready) })),
            Err(why) => Err(Status::failed_precondition(format!("the node plugin cannot publish: {why}"))),
        }
    }
}

pub struct NodeService {
    pub node: Arc<Node>,
}

/// The deadline a gRPC caller set (header `grpc-timeout`).
fn caller_deadline<T>(request: &Request<T>) -> Option<Duration> {
    parse_grpc_timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: at most 8 digits and a unit, H M S m u n (the gRPC spec). Anything
/// else is no deadline (the config's timeout applies), never an error or a panic.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by the Aqueduct node plugin (it publishes volumes only)"))
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    #[instrument(skip_all, fields(volume_id, target, dataset, version))]
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let deadline = caller_deadline(&request);
        let r = request.into_inner();
        Span::current().record("volume_id", r.volume_id.as_str()).record("target", r.target_path.as_str());
        let publish = Publish::parse(&r)?;
        Span::current()
            .record("dataset", publish.spec.dataset.as_str())
            .record("version", publish.spec.pin.to_string());
        self.node.publish(publish, deadline).await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, fields(volume_id, target))]
    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        Span::current().record("volume_id", r.volume_id.as_str()).record("target", r.target_path.as_str());
        let (volume_id, target) = ids(&r.volume_id, &r.target_path)?;
        self.node.unpublish(volume_id, target).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    #[instrument(skip_all)]
    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    /// Nothing beyond publish and unpublish (no staging, stats or expansion).
    #[instrument(skip_all)]
    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities: Vec::new() }))
    }

    #[instrument(skip_all)]
    async fn node_stage_volume(
        &self,
        _request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(unimplemented("NodeStageVolume"))
    }

    #[instrument(skip_all)]
    async fn node_unstage_volume(
        &self,
        _request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(unimplemented("NodeUnstageVolume"))
    }

    #[instrument(skip_all)]
    async fn node_get_volume_stats(
        &self,
        _request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(unimplemented("NodeGetVolumeStats"))
    }

    #[instrument(skip_all)]
    async fn node_expand_volume(
        &self,
        _request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(unimplemented("NodeExpandVolume"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(fuzz::config(5000))]

        /// Any header value: a deadline that is exactly what it says, or none; never a panic.
        #[test]
        fn fuzz_grpc_timeout(text in "[0-9]{0,10}[HMSmun]?|.{0,10}") {
            if let Some(d) = parse_grpc_timeout(&text) {
                let (digits, unit) = text.split_at(text.len() - 1);
                let n: u64 = digits.parse().unwrap();
                prop_assert!(digits.len() <= 8);
                let nanos = u128::from(n) * match unit { "H" => 3_600_000_000_000, "M" => 60_000_000_000, "S" => 1_000_000_000, "m" => 1_000_000, "u" => 1_000, _ => 1 };
                prop_assert_eq!(d.as_nanos(), nanos);
            }
        }
    }

    #[test]
    fn the_callers_deadline_is_read_from_grpc_timeout() {
        let with = |value: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", value.parse().unwrap());
            caller_deadline(&r)
        };
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(with("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with("x"), None);
        assert_eq!(caller_deadline(&Request::new(())), None);
        assert_eq!(with("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        // More than 8 digits (a u64's worth would overflow the arithmetic after it), no
        // digits, signs, a unit alone or twice: no deadline.
        for bad in ["184467440737095516S", "123456789m", "S", "-1S", "+1S", "1SS", "1 S", "1s", ""] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(parse_grpc_timeout("5\u{e9}"), None);
    }
}
