//! What the hub retains, region-wide, and why: [`retained`] gives every version the reasons
//! that keep it ([`Reason`]); a version without one is what `aq gc` removes, and what the
//! regions' spokes may evict. Pure: the facts come from the store and from what the spokes
//! report in use; the store applies [`removable`] again inside the transaction that removes.
//!
//! The rule, per dataset: the newest `keep` versions; every version a tag names; in each
//! region, the version it serves and the one it served before (for a rollback); every version
//! rolling out (a row not Ready that has not failed, or one promoted while not Ready); every
//! version a spoke reports in use (a mount, a CSI volume, an AqueductVolume).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, Phase};

use super::cutover::ServingRecord;
use super::{RolloutRecord, TagRecord, VersionId};

/// How many of a dataset's newest versions are always retained when it does not say.
pub const DEFAULT_KEEP: u32 = 3;

/// A version a spoke reports in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUse {
    pub region: String,
    pub node: String,
    pub version: VersionId,
    /// What uses it ("mount /mnt/llama").
    pub user: String,
}

/// Why a version is retained.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Among its dataset's newest `keep`.
    Newest {
        keep: u32,
    },
    Tag(String),
    Served {
        region: String,
    },
    /// Served before the current version: kept for a rollback.
    Previous {
        region: String,
    },
    RollingOut {
        region: String,
    },
    InUse {
        region: String,
        node: String,
        user: String,
    },
}

impl Reason {
    /// `--force` may remove a version retained only for such reasons (its tags go with it);
    /// never one served, kept for rollback, rolling out or in use.
    pub fn forceable(&self) -> bool {
        matches!(self, Reason::Newest { .. } | Reason::Tag(_))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest { keep } => write!(f, "newest {keep}"),
            Reason::Tag(name) => write!(f, "tag {name}"),
            Reason::Served { region } => write!(f, "served in {region}"),
            Reason::Previous { region } => write!(f, "kept for rollback in {region}"),
            Reason::RollingOut { region } => write!(f, "rolling out to {region}"),
            Reason::InUse { region, node, user } => write!(f, "in use on {region}/{node}: {user}"),
        }
    }
}

/// The most versions one spoke may report in use, and the longest `user` text: a report past
/// them is refused (a spoke cannot make the hub hold, show or log without bound).
pub const MAX_IN_USE: usize = 1024;
pub const MAX_USER_CHARS: usize = 256;

/// Checks what a spoke reports in use (`CacheReport.in_use`): at most [`MAX_IN_USE`] entries,
/// each a valid dataset name, a version above 0 and a `user` of at most [`MAX_USER_CHARS`]
/// printable characters (it is shown by `aq` and written to logs).
pub fn check_in_use(list: &[pb::VersionInUse]) -> Result<(), String> {
    if list.len() > MAX_IN_USE {
        return Err(format!("{} versions reported in use: at most {MAX_IN_USE}", list.len()));
    }
    for u in list {
        aqueduct_proto::validate_name("dataset", &u.dataset).map_err(|e| format!("a version in use: {e}"))?;
        if u.version == 0 {
            return Err(format!("a version in use of {} has no number", u.dataset));
        }
        if u.user.chars().count() > MAX_USER_CHARS || u.user.chars().any(char::is_control) {
            return Err(format!(
                "the user of {}@v{} is not {MAX_USER_CHARS} printable characters at most",
                u.dataset, u.version
            ));
        }
    }
    Ok(())
}

/// What retention is computed from.
pub struct Facts<'a> {
    /// Every version that exists.
    pub versions: &'a [VersionId],
    /// Each dataset's `keep` (0 or missing: [`DEFAULT_KEEP`]).
    pub keep: &'a HashMap<String, u32>,
    pub tags: &'a [TagRecord],
    pub rollouts: &'a [RolloutRecord],
    pub serving: &'a [ServingRecord],
    pub in_use: &'a [InUse],
}

/// Every version of `facts.versions`, with the reasons it is retained (sorted; empty: not
/// retained).
pub fn retained(facts: &Facts<'_>) -> BTreeMap<VersionId, Vec<Reason>> {
    let mut reasons: BTreeMap<VersionId, BTreeSet<Reason>> =
        facts.versions.iter().map(|v| (v.clone(), BTreeSet::new())).collect();
    let mut add = |id: VersionId, reason: Reason| {
        if let Some(set) = reasons.get_mut(&id) {
            set.insert(reason);
        }
    };
    let mut by_dataset: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for v in facts.versions {
        by_dataset.entry(&v.dataset).or_default().push(v.version);
    }
    for (dataset, mut numbers) in by_dataset {
        let keep = match facts.keep.get(dataset).copied().unwrap_or(0) {
            0 => DEFAULT_KEEP,
            n => n,
        };
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        for n in numbers.into_iter().take(keep as usize) {
            add(VersionId::new(dataset, n), Reason::Newest { keep });
        }
    }
    for t in facts.tags {
        add(VersionId::new(&t.dataset, t.version), Reason::Tag(t.name.clone()));
    }
    for s in facts.serving {
        add(VersionId::new(&s.dataset, s.version), Reason::Served { region: s.region.clone() });
        if s.previous != 0 {
            add(VersionId::new(&s.dataset, s.previous), Reason::Previous { region: s.region.clone() });
        }
    }
    for r in facts.rollouts {
        let rolling = (r.ready_unix_ms.is_none() && r.phase != Phase::Failed) || r.promote_pending;
        if rolling {
            add(VersionId::new(&r.dataset, r.version), Reason::RollingOut { region: r.region.clone() });
        }
    }
    for u in facts.in_use {
        let reason = Reason::InUse { region: u.region.clone(), node: u.node.clone(), user: u.user.clone() };
        add(u.version.clone(), reason);
    }
    reasons.into_iter().map(|(id, set)| (id, set.into_iter().collect())).collect()
}

/// Why a version may not be removed, or `Ok` (with `force`: when it is retained only for
/// reasons [`Reason::forceable`] allows). The newest version of a dataset is never removed:
/// its number would be cut again.
pub fn removable(id: &VersionId, latest: u64, reasons: &[Reason], force: bool) -> Result<(), String> {
    if id.version == latest {
        return Err(format!(
            "{id} is the newest version of {}: it cannot be removed (its number would be used again)",
            id.dataset
        ));
    }
    let blocking: Vec<&Reason> = reasons.iter().filter(|r| !(force && r.forceable())).collect();
    if blocking.is_empty() {
        return Ok(());
    }
    let named = blocking.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
    let hint = if blocking.iter().all(|r| r.forceable()) {
        " (--force removes it anyway, with its tags)"
    } else if blocking.iter().any(|r| matches!(r, Reason::Served { .. } | Reason::Previous { .. })) {
        " (roll the regions forward or back first)"
    } else {
        ""
    };
    Err(format!("{id} is retained: {named}{hint}"))
}

/// Bytes each region's spokes drop when `removed` go: the chunks of the removed versions
/// rolled out to the region that no other version rolled out there shares. `chunks` holds the
/// chunks (digest, length) of every version rolled out somewhere. Regions that drop nothing
/// are listed with 0.
pub fn freed_per_region(
    removed: &[VersionId],
    rollouts: &[RolloutRecord],
    chunks: &HashMap<VersionId, Vec<(Digest, u32)>>,
) -> BTreeMap<String, u64> {
    let gone: BTreeSet<&VersionId> = removed.iter().collect();
    let mut regions: BTreeMap<&str, (BTreeSet<VersionId>, BTreeSet<VersionId>)> = BTreeMap::new();
    for r in rollouts {
        let id = VersionId::new(&r.dataset, r.version);
        let (dropped, kept) = regions.entry(&r.region).or_default();
        if gone.contains(&id) {
            dropped.insert(id)
        } else {
            kept.insert(id)
        };
    }
    regions
        .into_iter()
        .map(|(region, (dropped, kept))| {
            let keep: BTreeSet<&Digest> = kept.iter().filter_map(|v| chunks.get(v)).flatten().map(|(d, _)| d).collect();
            let drop: BTreeMap<&Digest, u32> = dropped
                .iter()
                .filter_map(|v| chunks.get(v))
                .flatten()
                .filter(|(d, _)| !keep.contains(d))
                .map(|(d, l)| (d, *l))
                .collect();
            (region.to_string(), drop.values().map(|&l| u64::from(l)).sum())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::timed;
    use super::*;
    use Phase::{Failed, Ready, Transferring};

    fn ids(dataset: &str, numbers: impl IntoIterator<Item = u64>) -> Vec<VersionId> {
        numbers.into_iter().map(|n| VersionId::new(dataset, n)).collect()
    }

    fn kept(map: &BTreeMap<VersionId, Vec<Reason>>) -> Vec<u64> {
        map.iter().filter(|(_, r)| !r.is_empty()).map(|(id, _)| id.version).collect()
    }

    fn tag(name: &str, version: u64) -> TagRecord {
        TagRecord { dataset: "m".into(), name: name.into(), version, updated_unix_ms: 0 }
    }

    #[test]
    fn the_newest_keep_tags_served_previous_rolling_and_in_use_are_retained() {
        let versions = ids("m", 1..=9);
        let keep: HashMap<String, u32> = [("m".to_string(), 2)].into();
        let rollouts = [
            timed(3, "eu", Transferring, 0, None), // rolling out
            timed(4, "eu", Failed, 0, None),       // failed: not a reason
            timed(5, "eu", Ready, 0, Some(1)),
        ];
        let serving =
            [ServingRecord { dataset: "m".into(), region: "eu".into(), version: 5, since_unix_ms: 0, previous: 2 }];
        let in_use = [InUse {
            region: "eu".into(),
            node: "n1".into(),
            version: VersionId::new("m", 6),
            user: "mount /x".into(),
        }];
        let tags = [tag("stable", 1)];
        let facts = Facts {
            versions: &versions,
            keep: &keep,
            tags: &tags,
            rollouts: &rollouts,
            serving: &serving,
            in_use: &in_use,
        };
        let r = retained(&facts);
        assert_eq!(kept(&r), [1, 2, 3, 5, 6, 8, 9], "4 and 7 go");
        let why = |n: u64| r[&VersionId::new("m", n)].iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(why(1), ["tag stable"]);
        assert_eq!(why(2), ["kept for rollback in eu"]);
        assert_eq!(why(3), ["rolling out to eu"]);
        assert_eq!(why(5), ["served in eu"]);
        assert_eq!(why(6), ["in use on eu/n1: mount /x"]);
        assert_eq!(why(9), ["newest 2"]);
        // The default keeps three.
        let facts =
            Facts { keep: &HashMap::new(), tags: &[], rollouts: &[], serving: &[], in_use: &[], versions: &versions };
        assert_eq!(kept(&retained(&facts)), [7, 8, 9]);
    }

    #[test]
    fn a_promoted_row_is_retained_until_it_serves() {
        let versions = ids("m", 1..=5);
        let keep: HashMap<String, u32> = [("m".to_string(), 1)].into();
        let mut row = timed(1, "eu", Ready, 0, Some(1));
        row.promote_pending = true;
        let rows = [row];
        let facts = Facts { versions: &versions, keep: &keep, tags: &[], rollouts: &rows, serving: &[], in_use: &[] };
        assert_eq!(kept(&retained(&facts)), [1, 5]);
    }

    #[test]
    fn removal_names_what_retains_and_force_passes_only_tags_and_newest() {
        let id = VersionId::new("m", 3);
        assert_eq!(removable(&id, 9, &[], false), Ok(()));
        let err = removable(&id, 9, &[Reason::Tag("stable".into()), Reason::Newest { keep: 7 }], false).unwrap_err();
        assert!(err.contains("tag stable") && err.contains("newest 7") && err.contains("--force"), "{err}");
        assert_eq!(removable(&id, 9, &[Reason::Tag("stable".into())], true), Ok(()));
        let served = [Reason::Served { region: "eu".into() }, Reason::Tag("x".into())];
        let err = removable(&id, 9, &served, true).unwrap_err();
        assert!(err.contains("served in eu") && !err.contains("tag x") && err.contains("roll the regions"), "{err}");
        let err = removable(&VersionId::new("m", 9), 9, &[], true).unwrap_err();
        assert!(err.contains("newest version"), "{err}");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(1000))]

        /// Any in-use list: accepted only when every entry names a valid dataset, a version
        /// and a short printable user; never a panic.
        #[test]
        fn fuzz_in_use_reports_are_checked(
            entries in proptest::collection::vec(("(?s).{0,12}", 0u64..4, "(?s).{0,300}"), 0..8),
            many in 0usize..3,
        ) {
            let mut list: Vec<pb::VersionInUse> = entries
                .iter()
                .map(|(dataset, version, user)| pb::VersionInUse { dataset: dataset.clone(), version: *version, user: user.clone() })
                .collect();
            if many == 2 {
                let one = pb::VersionInUse { dataset: "m".into(), version: 1, user: "mount /x".into() };
                list = vec![one; MAX_IN_USE + 1];
            }
            let ok = list.len() <= MAX_IN_USE
                && list.iter().all(|u| {
                    aqueduct_proto::validate_name("dataset", &u.dataset).is_ok()
                        && u.version > 0
                        && u.user.chars().count() <= MAX_USER_CHARS
                        && !u.user.chars().any(char::is_control)
                });
            prop_assert_eq!(check_in_use(&list).is_ok(), ok);
        }
    }

    #[test]
    fn a_region_frees_only_chunks_no_kept_version_shares() {
        let d = |b: u8| Digest([b; 32]);
        let chunks: HashMap<VersionId, Vec<(Digest, u32)>> = [
            (VersionId::new("m", 1), vec![(d(1), 100), (d(2), 10)]),
            (VersionId::new("m", 2), vec![(d(2), 10), (d(3), 1000)]),
        ]
        .into();
        let rows =
            [timed(1, "eu", Ready, 0, Some(1)), timed(2, "eu", Ready, 0, Some(1)), timed(1, "us", Ready, 0, Some(1))];
        let freed = freed_per_region(&[VersionId::new("m", 1)], &rows, &chunks);
        assert_eq!(freed, [("eu".to_string(), 100), ("us".to_string(), 110)].into());
        let freed = freed_per_region(&[], &rows, &chunks);
        assert_eq!(freed.values().sum::<u64>(), 0);
    }
}
