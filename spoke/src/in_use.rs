//! What on this node uses which version, for the hub (`CacheReport.in_use`: it retains those
//! versions) and for the spoke's own retention (they are pinned and never swept): the versions
//! the node's mounts show (the holder's list: the spoke's own mounts, and the CSI node
//! plugin's shares, named by the pods they are published to), the versions AqueductVolumes
//! hold, and `aqueduct-fuse` sidecars, which hold a lease ([`Sidecars`]) that each `Resolve`
//! they send renews.
//!
//! [`gather`] is pure; [`InUse`] is what the controller last gathered, shared with the cache
//! reports.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::spoke::v1 as local;
use tokio::sync::Notify;

/// How long a sidecar's `Resolve` counts its version as in use (it asks every few seconds).
pub const SIDECAR_LEASE: Duration = Duration::from_secs(60);

/// The leases of the `aqueduct-fuse` sidecars that read through this spoke, by user.
#[derive(Debug)]
pub struct Sidecars {
    leases: Mutex<HashMap<String, (String, u64, Instant)>>,
    /// Woken when a sidecar starts using a version (or another one).
    pub changed: Notify,
    /// When this spoke started counting (a restarted spoke knows no lease yet).
    started: Instant,
}

impl Default for Sidecars {
    fn default() -> Self {
        Self { leases: Mutex::default(), changed: Notify::new(), started: Instant::now() }
    }
}

impl Sidecars {
    /// Whether every sidecar still using a version has renewed its lease since this spoke
    /// started (a lease's length has passed): before, nothing may be swept, since a sidecar of
    /// an earlier spoke may show a version no lease names yet.
    pub fn settled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= SIDECAR_LEASE
    }

    /// `user` uses `dataset@version` as of `now`, for [`SIDECAR_LEASE`].
    pub fn renew(&self, user: &str, dataset: &str, version: u64, now: Instant) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let new = (dataset.to_string(), version);
        let old = leases.insert(user.to_string(), (new.0.clone(), new.1, now));
        if old.is_none_or(|(d, v, _)| (d, v) != new) {
            self.changed.notify_one();
        }
    }

    /// The live leases at `now` (dataset, version, user); expired ones are dropped.
    pub fn current(&self, now: Instant) -> Vec<(String, u64, String)> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.retain(|_, (_, _, at)| now.saturating_duration_since(*at) < SIDECAR_LEASE);
        leases.iter().map(|(user, (d, v, _))| (d.clone(), *v, user.clone())).collect()
    }
}

/// A CSI publication, as [`gather`] needs it: the share (a directory of `csi_shares`) and the
/// pod it is published to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub share: String,
    pub volume_id: String,
    pub pod_uid: Option<String>,
}

/// Every version in use on this node and by what: each mount the holder serves (`mount PATH`;
/// a CSI share under `csi_shares` is named by the pods it is published to, `csi pod UID`),
/// each volume's hold (`volume NS/NAME`), each sidecar's lease. Sorted, without duplicates.
pub fn gather(
    mounts: &[local::MountInfo],
    csi_shares: Option<&Path>,
    published: &[Published],
    holds: &[(String, String, u64)],
    sidecars: &[(String, u64, String)],
) -> Vec<pb::VersionInUse> {
    let mut all: BTreeSet<(String, u64, String)> = BTreeSet::new();
    for m in mounts {
        let share = csi_shares
            .and_then(|root| Path::new(&m.mountpoint).strip_prefix(root).ok())
            .and_then(|rest| rest.to_str())
            .filter(|rest| !rest.is_empty() && !rest.contains('/'));
        match share {
            Some(share) => {
                let pods: Vec<String> = published
                    .iter()
                    .filter(|p| p.share == share)
                    .map(|p| match &p.pod_uid {
                        Some(uid) => format!("csi pod {uid}"),
                        None => format!("csi volume {}", p.volume_id),
                    })
                    .collect();
                if pods.is_empty() {
                    all.insert((m.dataset.clone(), m.version, format!("csi share {share}")));
                }
                all.extend(pods.into_iter().map(|user| (m.dataset.clone(), m.version, user)));
            }
            None => {
                all.insert((m.dataset.clone(), m.version, format!("mount {}", m.mountpoint)));
            }
        }
    }
    for (holder, dataset, version) in holds {
        all.insert((dataset.clone(), *version, format!("volume {holder}")));
    }
    for (dataset, version, user) in sidecars {
        all.insert((dataset.clone(), *version, user.clone()));
    }
    all.into_iter().map(|(dataset, version, user)| pb::VersionInUse { dataset, version, user }).collect()
}

/// What the controller last gathered, for the cache reports.
#[derive(Debug, Default)]
pub struct InUse(Mutex<Vec<pb::VersionInUse>>);

impl InUse {
    /// Records `now`; whether it differs from what was recorded.
    pub fn set(&self, now: Vec<pb::VersionInUse>) -> bool {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *current != now;
        *current = now;
        changed
    }

    pub fn get(&self) -> Vec<pb::VersionInUse> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(path: &str, dataset: &str, version: u64) -> local::MountInfo {
        local::MountInfo { mountpoint: path.into(), dataset: dataset.into(), version, ..Default::default() }
    }

    fn users(found: &[pb::VersionInUse]) -> Vec<(String, u64, String)> {
        found.iter().map(|u| (u.dataset.clone(), u.version, u.user.clone())).collect()
    }

    #[test]
    fn every_user_of_a_version_is_named() {
        let mounts = [
            mount("/mnt/x", "m", 2),
            mount("/data/csi/mounts/m@active", "m", 3),
            mount("/data/csi/mounts/m@v1", "m", 1),
        ];
        let published = [
            Published { share: "m@active".into(), volume_id: "pv-a".into(), pod_uid: Some("uid-1".into()) },
            Published { share: "m@active".into(), volume_id: "pv-b".into(), pod_uid: None },
        ];
        let holds = [("ns/vol".to_string(), "m".to_string(), 1)];
        let sidecars = [("n".to_string(), 4, "sidecar web-0:/data".to_string())];
        let found = gather(&mounts, Some(Path::new("/data/csi/mounts")), &published, &holds, &sidecars);
        let s = |d: &str, v: u64, u: &str| (d.to_string(), v, u.to_string());
        assert_eq!(
            users(&found),
            [
                s("m", 1, "csi share m@v1"),
                s("m", 1, "volume ns/vol"),
                s("m", 2, "mount /mnt/x"),
                s("m", 3, "csi pod uid-1"),
                s("m", 3, "csi volume pv-b"),
                s("n", 4, "sidecar web-0:/data"),
            ]
        );
        // Without a CSI plugin every mount is a mount.
        let found = gather(&mounts[..1], None, &[], &[], &[]);
        assert_eq!(users(&found), [s("m", 2, "mount /mnt/x")]);
    }

    #[test]
    fn a_sidecar_lease_lasts_until_it_is_not_renewed() {
        let sidecars = Sidecars::default();
        let t0 = Instant::now();
        sidecars.renew("sidecar a", "m", 1, t0);
        assert_eq!(sidecars.current(t0 + SIDECAR_LEASE / 2), [("m".to_string(), 1, "sidecar a".to_string())]);
        sidecars.renew("sidecar a", "m", 1, t0 + SIDECAR_LEASE / 2);
        assert_eq!(sidecars.current(t0 + SIDECAR_LEASE).len(), 1, "renewed");
        assert!(sidecars.current(t0 + SIDECAR_LEASE * 2).is_empty(), "expired");
        assert!(!sidecars.settled(t0) && sidecars.settled(t0 + SIDECAR_LEASE * 2));
    }
}
