//! What the spoke keeps of versions and what it deletes, as pure functions the controller
//! ([`super`]) executes: which versions no longer assigned to the region go
//! ([`unassigned`]), and which of their chunks and whole copies go with them ([`sweep`]).
//!
//! The rules:
//! - Pinned (never evicted, see [`super::plan`]): every assigned version the hub retains
//!   (`Assignment.retained`; the active one always), every version an AqueductVolume holds or a
//!   mount on this node shows.
//! - A version the catalog keeps that is no longer assigned at all (the hub removed it: `aq
//!   gc`, `aq version rm`, a cancelled rollout) is swept: its chunks that no assigned version
//!   and no version in use shares leave the store (both tiers), its whole copies
//!   (`DATA_DIR/files`) that no such version has go, and the catalog forgets its manifest.
//! - Never before this session's first assignments arrived (the catalog's remembered ones may
//!   be old), nor in the spoke's first minute (sidecars renew their leases,
//!   [`crate::in_use::SIDECAR_LEASE`]), and never a version a mount on this node shows or a
//!   volume holds: that one is pinned locally and keeps working.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Manifest};

use super::plan::VersionKey;

/// What becomes of the versions the catalog keeps that the hub no longer assigns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unassigned {
    /// Swept: chunks, whole copies, manifest.
    pub sweep: Vec<VersionKey>,
    /// Kept and pinned here, because a mount or a volume on this node uses them.
    pub in_use: Vec<VersionKey>,
}

/// Decides what becomes of the versions the catalog keeps (`kept`) that `assignments` no
/// longer name: nothing before this session's first assignments `arrived`; kept while in
/// `in_use`; swept otherwise.
pub fn unassigned(
    assignments: &[pb::Assignment],
    kept: &[VersionKey],
    in_use: &HashSet<VersionKey>,
    arrived: bool,
) -> Unassigned {
    if !arrived {
        return Unassigned::default();
    }
    let assigned: HashSet<VersionKey> = assignments.iter().map(VersionKey::of).collect();
    let gone: BTreeSet<&VersionKey> = kept.iter().filter(|k| !assigned.contains(k)).collect();
    let (used, unused): (Vec<&VersionKey>, Vec<&VersionKey>) = gone.into_iter().partition(|k| in_use.contains(k));
    Unassigned { sweep: unused.into_iter().cloned().collect(), in_use: used.into_iter().cloned().collect() }
}

/// What a sweep deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Chunks, with their lengths.
    pub chunks: BTreeMap<Digest, u32>,
    /// Whole copies, by their name in `DATA_DIR/files` (the file's root, in hex).
    pub copies: BTreeSet<String>,
}

/// The chunks and whole copies of the `removed` versions that none of the versions kept
/// (`keep`: every assigned version, every version in use) has.
pub fn sweep(removed: &[&Manifest], keep: &[&Manifest]) -> Sweep {
    let kept_chunks: HashSet<Digest> = keep.iter().flat_map(|m| m.distinct_chunks()).map(|(d, _)| d).collect();
    let kept_files: HashSet<String> = keep.iter().flat_map(|m| m.files.iter().map(|f| f.root().to_hex())).collect();
    let mut out = Sweep::default();
    for m in removed {
        out.chunks.extend(m.distinct_chunks().into_iter().filter(|(d, _)| !kept_chunks.contains(d)));
        out.copies.extend(m.files.iter().map(|f| f.root().to_hex()).filter(|k| !kept_files.contains(k)));
    }
    out
}

#[cfg(test)]
mod tests {
    use aqueduct_proto::{ChunkRef, ChunkerParams, FileEntry};

    use super::*;

    fn key(dataset: &str, version: u64) -> VersionKey {
        VersionKey::new(dataset, version)
    }

    fn assigned(dataset: &str, version: u64) -> pb::Assignment {
        pb::Assignment { dataset: dataset.into(), version, retained: true, ..Default::default() }
    }

    /// A version of one file per name, each of the chunks named (a chunk's bytes: its name).
    fn version(v: u64, files: &[(&str, &[&str])]) -> Manifest {
        let entries = files
            .iter()
            .map(|(path, chunks)| {
                let mut offset = 0;
                let chunks = chunks
                    .iter()
                    .map(|c| {
                        let r = ChunkRef { digest: Digest::of(c.as_bytes()), offset, length: c.len() as u32 };
                        offset += c.len() as u64;
                        r
                    })
                    .collect();
                FileEntry {
                    path: path.to_string(),
                    object: path.to_string(),
                    size: offset,
                    mode: 0o644,
                    mtime_unix_ms: 0,
                    chunks,
                }
            })
            .collect();
        Manifest::new("m".into(), v, ChunkerParams::DEFAULT, entries).unwrap()
    }

    #[test]
    fn nothing_is_swept_before_the_sessions_first_assignments() {
        let kept = [key("m", 1), key("m", 2)];
        let assignments = [assigned("m", 2)];
        assert_eq!(unassigned(&assignments, &kept, &HashSet::new(), false), Unassigned::default());
        assert_eq!(unassigned(&[], &kept, &HashSet::new(), false), Unassigned::default(), "not even with none");
        let after = unassigned(&assignments, &kept, &HashSet::new(), true);
        assert_eq!(after, Unassigned { sweep: vec![key("m", 1)], in_use: vec![] });
    }

    #[test]
    fn a_removed_version_a_mount_or_volume_uses_stays_the_rest_goes() {
        let kept = [key("m", 1), key("m", 2), key("m", 3), key("n", 1)];
        let assignments = [assigned("m", 3)];
        let in_use: HashSet<VersionKey> = [key("m", 2)].into();
        let u = unassigned(&assignments, &kept, &in_use, true);
        assert_eq!(u.sweep, [key("m", 1), key("n", 1)]);
        assert_eq!(u.in_use, [key("m", 2)]);
        // The mount goes: v2 is swept at the next pass.
        let u = unassigned(&assignments, &kept, &HashSet::new(), true);
        assert_eq!(u.sweep, [key("m", 1), key("m", 2), key("n", 1)]);
    }

    #[test]
    fn chunks_and_copies_a_kept_version_shares_stay() {
        let removed = version(1, &[("model", &["a", "shared"]), ("config", &["c1"])]);
        let retained = version(2, &[("model", &["b", "shared"]), ("config", &["c1"])]);
        let used = version(3, &[("extra", &["u"]), ("more", &["a"])]);
        // v1 goes, v2 is assigned: "shared" and the identical config stay.
        let s = sweep(&[&removed], &[&retained]);
        let names: BTreeSet<Digest> = ["a"].iter().map(|c| Digest::of(c.as_bytes())).collect();
        assert_eq!(s.chunks.keys().copied().collect::<BTreeSet<_>>(), names);
        assert_eq!(s.chunks.values().copied().collect::<Vec<_>>(), [1]);
        let model = removed.files.iter().find(|f| f.path == "model").unwrap().root().to_hex();
        assert_eq!(s.copies, [model].into(), "the config is the same file in v2: its copy stays");
        // A version in use by a mount (kept too) keeps "a".
        let s = sweep(&[&removed], &[&retained, &used]);
        assert!(s.chunks.is_empty(), "{s:?}");
        // Nothing removed, nothing swept.
        assert_eq!(sweep(&[], &[&retained]), Sweep::default());
    }
}
