//! What the controller does to keep what is in use and let go of what the hub no longer
//! assigns, as [`super::retention`] decides it: gathering what uses versions on this node
//! ([`in_use`]), pinning ([`pin`]), and deleting chunks, whole copies and manifests of removed
//! versions ([`sweep`], with a span and the `swept` metrics).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Manifest, ReplicationMode};
use tokio::sync::Notify;
use tracing::{info, instrument, warn};

use super::Parts;
use super::plan::{self, Memory, Observed, VersionKey};
use super::retention;
use crate::cache::TieredStore;
use crate::catalog::Catalog;
use crate::in_use::Published;
use crate::peers::Peers;
use crate::store::ChunkStore;

/// One round of what a pass does to keep and let go, with `assignments` as if they had just
/// arrived from the hub: gathers what is in use, pins what the hub retains and what is in
/// use, sweeps what is no longer assigned (for tests that feed assignments themselves; a
/// session does the same in each pass). Returns what became of the unassigned versions.
pub async fn retain_once(parts: &Parts, data_dir: &Path, assignments: &[pb::Assignment]) -> retention::Unassigned {
    let in_use = in_use(parts, &Notify::new()).await;
    let observed = observed(parts, data_dir, in_use.as_deref().unwrap_or_default());
    let mut memory = Memory::default();
    memory.assignments_arrived();
    let plan = plan::plan(assignments, &observed, &memory);
    let kept: Vec<VersionKey> =
        parts.catalog.kept_versions().into_iter().map(|(d, v)| VersionKey::new(&d, v)).collect();
    let unassigned = match in_use {
        Some(_) => retention::unassigned(assignments, &kept, &observed.in_use, true),
        None => retention::Unassigned::default(),
    };
    let local: Vec<Arc<Manifest>> =
        unassigned.in_use.iter().filter_map(|k| parts.catalog.kept_manifest(&k.dataset, k.version)).collect();
    pin(&parts.catalog, &parts.cache, parts.reader.peers(), &plan.pin, &local, 1).await;
    sweep(parts, data_dir, assignments, &unassigned, &observed.in_use).await;
    unassigned
}

/// What the plan looks at, now: `in_use` and the volumes' holds both count as in use.
pub(super) fn observed(parts: &Parts, data_dir: &Path, in_use: &[pb::VersionInUse]) -> Observed {
    let held: HashSet<VersionKey> =
        parts.holds.held().into_iter().map(|(dataset, version)| VersionKey { dataset, version }).collect();
    Observed {
        now: Instant::now(),
        sharer: !parts.peer_address.is_empty(),
        membership: parts.reader.peers().membership(),
        in_use: in_use.iter().map(|u| VersionKey::new(&u.dataset, u.version)).chain(held.iter().cloned()).collect(),
        held,
        room: parts.cache.room(data_dir),
    }
}

/// What uses versions on this node now (and, when it changed, a cache report at once);
/// `None` when the holder cannot be asked (then nothing is swept).
pub(super) async fn in_use(parts: &Parts, changed: &Notify) -> Option<Vec<pb::VersionInUse>> {
    let mounts = match parts.mounts.list().await {
        Ok(mounts) => mounts,
        Err(e) => {
            warn!(error = %e, "cannot ask the FUSE holder what is mounted; sweeping nothing until it answers");
            return None;
        }
    };
    let (shares, published) = match &parts.csi {
        Some(node) => {
            let (root, published) = node.published().await;
            let published = published
                .into_iter()
                .map(|p| Published { share: p.share, volume_id: p.volume_id, pod_uid: p.pod_uid })
                .collect();
            (Some(root), published)
        }
        None => (None, Vec::new()),
    };
    let found = crate::in_use::gather(
        &mounts,
        shares.as_deref(),
        &published,
        &parts.holds.by_holder(),
        &parts.sidecars.current(Instant::now()),
    );
    if parts.in_use.set(found.clone()) {
        changed.notify_one();
    }
    Some(found)
}

/// Deletes what the hub no longer assigns and nothing here uses: the chunks no kept
/// version shares (both tiers), whole copies, manifests (see [`retention`]).
#[instrument(skip_all, fields(versions = unassigned.sweep.len()))]
pub(super) async fn sweep(
    parts: &Parts,
    data_dir: &Path,
    assignments: &[pb::Assignment],
    unassigned: &retention::Unassigned,
    in_use: &HashSet<VersionKey>,
) {
    if unassigned.sweep.is_empty() {
        return;
    }
    let catalog = &parts.catalog;
    let removed: Vec<Arc<Manifest>> =
        unassigned.sweep.iter().filter_map(|k| catalog.kept_manifest(&k.dataset, k.version)).collect();
    // Every version kept: if one's manifest cannot be had, nothing goes this time.
    let mut keep = Vec::new();
    for a in assignments {
        match catalog.manifest(a).await {
            Ok(m) => keep.push(m),
            Err(e) => {
                warn!(dataset = %a.dataset, version = a.version, error = %e, "cannot sweep removed versions without the manifests of the assigned ones; trying again later");
                return;
            }
        }
    }
    keep.extend(in_use.iter().filter_map(|k| catalog.kept_manifest(&k.dataset, k.version)));
    let removed_refs: Vec<&Manifest> = removed.iter().map(Arc::as_ref).collect();
    let keep_refs: Vec<&Manifest> = keep.iter().map(Arc::as_ref).collect();
    let plan = retention::sweep(&removed_refs, &keep_refs);
    let (mut chunks, mut bytes) = (0u64, 0u64);
    for (digest, length) in &plan.chunks {
        if !parts.cache.contains(digest) {
            continue;
        }
        match parts.cache.remove(digest) {
            Ok(()) => {
                chunks += 1;
                bytes += u64::from(*length);
            }
            Err(e) => warn!(%digest, error = %e, "could not delete a chunk of a removed version"),
        }
    }
    let files = data_dir.join("files");
    let mut copies = 0;
    for key in &plan.copies {
        match std::fs::remove_file(files.join(key)) {
            Ok(()) => copies += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(copy = %key, error = %e, "could not delete a whole copy of a removed version"),
        }
    }
    for k in &unassigned.sweep {
        if let Err(e) = catalog.forget_manifest(&k.dataset, k.version) {
            warn!(dataset = %k.dataset, version = k.version, error = %e, "could not forget a removed version");
        }
    }
    parts.reader.metrics().swept(chunks, bytes);
    let versions: Vec<String> = unassigned.sweep.iter().map(|k| format!("{}@v{}", k.dataset, k.version)).collect();
    info!(?versions, chunks, bytes, copies, "deleted what the hub no longer assigns (chunks no kept version shares)");
}

/// Pins what the plan says eviction must never take: all the chunks of a version held whole,
/// the owned ones (among the first `replicas` owners) of a share; and all the chunks of the
/// versions no longer assigned that are kept for mounts here (`local`).
pub(super) async fn pin(
    catalog: &Catalog,
    cache: &TieredStore,
    peers: &Peers,
    versions: &[(pb::Assignment, ReplicationMode)],
    local: &[Arc<Manifest>],
    replicas: usize,
) {
    let mut pinned: HashSet<aqueduct_proto::Digest> =
        local.iter().flat_map(|m| m.distinct_chunks()).map(|(d, _)| d).collect();
    let ring = peers.ring();
    for (a, mode) in versions {
        let share = *mode == ReplicationMode::Region;
        match catalog.manifest(a).await {
            Ok(manifest) => pinned.extend(
                manifest
                    .files
                    .iter()
                    .flat_map(|f| f.chunks.iter().map(|c| c.digest))
                    .filter(|d| !share || ring.holds(d, replicas)),
            ),
            Err(e) => warn!(dataset = %a.dataset, version = a.version, error = %e, "cannot pin a version's chunks"),
        }
    }
    cache.set_pinned(pinned);
}
