//! Rollout classes, for the whole-system tests and benchmarks: a rollout of a given class, and
//! the bytes per class read from a Prometheus scrape of the hub
//! (`aqueduct_hub_relayed_class_bytes_total{region,class}`) or of a spoke
//! (`aqueduct_spoke_received_class_bytes_total{class}`).

use aqueduct_core::budget::Lane;
use aqueduct_proto::domain::class::Class;
use aqueduct_proto::hub::v1 as pb;

use crate::World;

/// The hub's counter of bytes relayed per region and class.
pub const HUB_RELAYED: &str = "aqueduct_hub_relayed_class_bytes_total";
/// A spoke's counter of bytes received over the link per class.
pub const SPOKE_RECEIVED: &str = "aqueduct_spoke_received_class_bytes_total";

impl World {
    /// Rolls out `dataset@version` to `regions` as `class`.
    pub async fn rollout_class(&mut self, dataset: &str, version: u64, regions: &[&str], class: Class) {
        let req = pb::RolloutRequest {
            dataset: dataset.into(),
            version,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            class: class.to_wire(),
            ..Default::default()
        };
        self.admin.rollout(req).await.unwrap();
    }

    /// Whether `dataset@version` is Ready in every region of its rollout; panics if it failed.
    pub async fn is_ready(&mut self, dataset: &str, version: u64) -> bool {
        let rows = self.admin.status(pb::StatusRequest { dataset: dataset.into() }).await.unwrap().into_inner().rows;
        let rows: Vec<_> = rows.into_iter().filter(|r| r.version == version).collect();
        if let Some(failed) = rows.iter().find(|r| r.phase() == pb::Phase::Failed) {
            panic!("{dataset}@v{version} failed in {}: {}", failed.region, failed.reason);
        }
        !rows.is_empty() && rows.iter().all(|r| r.phase() == pb::Phase::Ready)
    }
}

/// Bytes per lane (in [`Lane::ALL`]'s order) of `metric` in a scrape, over the samples whose
/// labels include `filter` (e.g. `region="eu"`; empty: all).
pub fn by_lane(text: &str, metric: &str, filter: &str) -> [f64; 4] {
    let mut out = [0.0; 4];
    for line in text.lines().filter(|l| l.starts_with(metric)) {
        let Some((labels, value)) = line[metric.len()..].rsplit_once(' ') else { continue };
        if !labels.contains(filter) {
            continue;
        }
        for lane in Lane::ALL {
            if labels.contains(&format!("class=\"{}\"", lane.name())) {
                out[lane as usize] += value.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_lane_are_read_from_a_scrape() {
        let text = "# TYPE aqueduct_hub_relayed_class_bytes_total counter\n\
            aqueduct_hub_relayed_class_bytes_total{region=\"eu\",class=\"urgent\"} 10\n\
            aqueduct_hub_relayed_class_bytes_total{region=\"us\",class=\"urgent\"} 5\n\
            aqueduct_hub_relayed_class_bytes_total{region=\"eu\",class=\"background\"} 7\n";
        assert_eq!(by_lane(text, HUB_RELAYED, "region=\"eu\""), [0.0, 10.0, 0.0, 7.0]);
        assert_eq!(by_lane(text, HUB_RELAYED, ""), [0.0, 15.0, 0.0, 7.0]);
    }
}
