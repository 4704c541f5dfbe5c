//! Which regions this hub serves, when several hubs share one database. A region's spokes are
//! served by one hub at a time, under a lease (`region:NAME`, [`TTL`]): that
//! hub folds their reports into the region's row (it sees every member) and holds the region's
//! link budget (it relays every byte the region gets), so both stay right however many hubs
//! there are. A spoke that reaches another hub is refused with UNAVAILABLE, saying which hub
//! serves its region, and tries its next hub address; when the serving hub dies, its leases
//! run out and the next hub a spoke reaches takes the region.
//!
//! A hub alone on its database serves every region ([`RegionLeases::alone`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use crate::rollout::RolloutRecord;
use crate::rollout::retention::InUse;
use crate::snapshot::blocking;
use crate::store::MetaStore;
use crate::store::leases::TTL;

/// The regions this hub serves.
#[derive(Default)]
pub struct RegionLeases {
    shared: Option<Shared>,
}

struct Shared {
    db: Arc<dyn MetaStore>,
    holder: String,
    held: Mutex<HashMap<String, Held>>,
}

/// A region whose lease this hub holds.
struct Held {
    /// When the lease was last taken or renewed.
    renewed: Instant,
    /// When a spoke of the region last called.
    used: Instant,
    /// Fires when this hub loses the lease: the region's watches end.
    lost: CancellationToken,
}

/// How long what another hub said its spokes use counts: until well after that hub's region
/// leases ran out and its spokes reported to the hub that took them over.
pub const IN_USE_FRESH_MS: i64 = 3 * TTL.as_millis() as i64;

/// What is in use across the hubs of a database: what this hub's spokes report and what the
/// other hubs said theirs use, each counted where the region has the dataset rolled out, by
/// region, node and version, once.
pub fn in_use_of_all(mine: Vec<InUse>, others: Vec<InUse>, rollouts: &[RolloutRecord]) -> Vec<InUse> {
    let rolled_out: std::collections::HashSet<(&str, &str)> =
        rollouts.iter().map(|r| (r.region.as_str(), r.dataset.as_str())).collect();
    let mut all: Vec<InUse> = mine
        .into_iter()
        .chain(others.into_iter().filter(|u| rolled_out.contains(&(u.region.as_str(), u.version.dataset.as_str()))))
        .collect();
    all.sort_by(|a, b| (&a.region, &a.node, &a.version, &a.user).cmp(&(&b.region, &b.node, &b.version, &b.user)));
    all.dedup();
    all
}

/// The lease's name for a region.
pub fn lease_name(region: &str) -> String {
    format!("region:{region}")
}

impl RegionLeases {
    /// A hub alone on its database: every region is its.
    pub fn alone() -> Self {
        Self::default()
    }

    /// A hub sharing its database with others, known to them as `holder`.
    pub fn shared(db: Arc<dyn MetaStore>, holder: String) -> Self {
        Self { shared: Some(Shared { db, holder, held: Mutex::new(HashMap::new()) }) }
    }

    /// Whether this hub serves `region` now, taking its lease if it is free; the token fires
    /// if the hub loses it later. UNAVAILABLE, naming the hub that serves it, otherwise.
    pub async fn serve(&self, region: &str) -> Result<CancellationToken, Status> {
        let Some(shared) = &self.shared else { return Ok(CancellationToken::new()) };
        let now = Instant::now();
        {
            let mut held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = held.get_mut(region)
                && now.duration_since(h.renewed) < TTL * 2 / 3
            {
                h.used = now;
                return Ok(h.lost.clone());
            }
        }
        let (name, holder) = (lease_name(region), shared.holder.clone());
        let taken = blocking(&shared.db, move |db| db.take_lease(&name, &holder, TTL.as_millis() as i64))
            .await
            .map_err(Status::from)?;
        if !taken {
            let lost = shared.held.lock().unwrap_or_else(|e| e.into_inner()).remove(region);
            if let Some(h) = lost {
                h.lost.cancel();
            }
            let (name, holder) = (lease_name(region), shared.holder.clone());
            let by = blocking(&shared.db, move |db| db.lease_holder(&name)).await.ok().flatten();
            return Err(Status::unavailable(format!(
                "region {region} is served by another hub now ({}); this hub ({holder}) takes it only once that hub stops: try the next hub address",
                by.unwrap_or_else(|| "unknown".into())
            )));
        }
        let mut held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
        let h = held.entry(region.to_string()).or_insert_with(|| {
            info!(region, "this hub serves the region now");
            Held { renewed: now, used: now, lost: CancellationToken::new() }
        });
        h.renewed = now;
        h.used = now;
        Ok(h.lost.clone())
    }

    /// Renews the lease of each region this hub serves that is still in use (a spoke of it
    /// watches, `watched`, or called within [`TTL`]); gives the others up (all of them when
    /// the hub `stopping`). A lease that could not be renewed is lost: the region's watches end.
    pub async fn renew(&self, watched: impl Fn(&str) -> bool, stopping: bool) {
        let Some(shared) = &self.shared else { return };
        let regions: Vec<(String, bool)> = {
            let held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter().map(|(r, h)| (r.clone(), !stopping && (watched(r) || h.used.elapsed() < TTL))).collect()
        };
        for (region, in_use) in regions {
            let (name, holder) = (lease_name(&region), shared.holder.clone());
            let ttl = TTL.as_millis() as i64;
            let kept = if in_use {
                match blocking(&shared.db, move |db| db.take_lease(&name, &holder, ttl)).await {
                    Ok(kept) => kept,
                    Err(e) => {
                        warn!(region, error = %e, "cannot renew the region's lease");
                        // Held until it runs out: another hub cannot take it before then.
                        let held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
                        held.get(&region).is_some_and(|h| h.renewed.elapsed() < TTL * 2 / 3)
                    }
                }
            } else {
                let _ = blocking(&shared.db, move |db| db.release_lease(&name, &holder)).await;
                false
            };
            let mut held = shared.held.lock().unwrap_or_else(|e| e.into_inner());
            if kept {
                if let Some(h) = held.get_mut(&region) {
                    h.renewed = Instant::now();
                }
            } else if let Some(h) = held.remove(&region) {
                info!(region, in_use, "this hub no longer serves the region");
                h.lost.cancel();
            }
        }
    }

    /// Renews leases every [`TTL`] / 3 until `stop`, then gives every lease up.
    pub async fn run(self: Arc<Self>, watched: impl Fn(&str) -> bool, stop: CancellationToken) {
        if self.shared.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(TTL / 3) => {}
            }
            self.renew(&watched, false).await;
        }
        self.renew(|_| false, true).await;
    }

    /// This hub's name among the hubs of its database (`None`: it is alone on it).
    pub fn holder(&self) -> Option<&str> {
        self.shared.as_ref().map(|s| s.holder.as_str())
    }

    /// The regions this hub serves now (sorted).
    pub fn served(&self) -> Vec<String> {
        let Some(shared) = &self.shared else { return Vec::new() };
        let mut regions: Vec<String> = shared.held.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        regions.sort();
        regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::VersionId;

    fn used(region: &str, node: &str, v: u64) -> InUse {
        InUse { region: region.into(), node: node.into(), version: VersionId::new("llama", v), user: "mount /m".into() }
    }

    fn rolled_out(region: &str) -> RolloutRecord {
        crate::rollout::tests::row("llama", 1, region, aqueduct_proto::Phase::Pending)
    }

    #[test]
    fn what_other_hubs_use_counts_where_the_dataset_is_rolled_out_once() {
        let all = in_use_of_all(
            vec![used("eu", "n1", 1)],
            vec![used("us", "n2", 2), used("eu", "n1", 1), used("ap", "n3", 1)],
            &[rolled_out("eu"), rolled_out("us")],
        );
        assert_eq!(all, [used("eu", "n1", 1), used("us", "n2", 2)], "ap has no rollout of llama; eu's use once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_hub_serves_a_region_and_the_next_takes_it_when_it_stops() {
        let db: Arc<dyn MetaStore> = Arc::new(crate::store::meta::SqlStore::in_memory().unwrap());
        let a = RegionLeases::shared(db.clone(), "hub-a".into());
        let b = RegionLeases::shared(db.clone(), "hub-b".into());
        let lost = a.serve("eu").await.unwrap();
        let refused = b.serve("eu").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.message().contains("(hub-a)") && refused.message().contains("next hub address"), "{refused:?}");
        b.serve("us").await.unwrap();
        assert_eq!((a.served(), b.served()), (vec!["eu".to_string()], vec!["us".to_string()]));
        // Renewed while in use; given up when the hub stops: the next takes it, and the
        // region's watches on the first end.
        a.renew(|_| true, false).await;
        assert!(b.serve("eu").await.is_err());
        assert!(!lost.is_cancelled());
        a.renew(|_| true, true).await;
        assert!(lost.is_cancelled());
        b.serve("eu").await.unwrap();
        assert!(a.serve("eu").await.is_err());
        assert!(RegionLeases::alone().serve("eu").await.is_ok(), "a hub alone serves every region");
    }
}
