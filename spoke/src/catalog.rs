//! What the region holds: the hub's assignments and the manifests of assigned versions.
//!
//! Both are kept on disk under `catalog/` in the spoke's data directory (prost encoding,
//! written atomically), so a restarted spoke serves its mounts from what it holds even before
//! the hub answers. Manifests come from the hub once, are checked against the root the hub
//! assigned, and never change (a version is immutable). Changes of assignments are published
//! on a watch channel: mounts that follow a dataset's active version subscribe to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aqueduct_core::durable;
use aqueduct_core::signing::{TrustedKeys, VerifyError};
use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::hub::v1::spoke_client::SpokeClient;
use aqueduct_proto::selector::Follows;
use aqueduct_proto::{Manifest, ManifestError};
use prost::Message;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, instrument, warn};

/// Layout version of `catalog/`.
pub const CATALOG_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "dataset {dataset:?} is not rolled out to this region; roll it out with `aq rollout {dataset}@vN --to REGION`"
    )]
    UnknownDataset { dataset: String },
    #[error(
        "{dataset}@v{version} is not rolled out to this region (it holds {held}); roll it out with `aq rollout {dataset}@v{version} --to REGION`"
    )]
    UnknownVersion { dataset: String, version: u64, held: String },
    #[error(
        "{dataset} has no active version in this region yet (a version becomes active when it is Ready in every region of its rollout); mount a version ({dataset}@vN) or wait and see `aq status {dataset}`"
    )]
    NoActiveVersion { dataset: String },
    #[error(
        "{dataset} has no tag {tag:?} (its tags: {known}); tag a version with `aq tag {dataset} {tag} vN`, or mount {dataset}@vN"
    )]
    UnknownTag { dataset: String, tag: String, known: String },
    #[error(
        "{dataset}@{tag} names v{version}, which is not rolled out to this region; roll it out with `aq rollout {dataset}@v{version} --to REGION`, or move the tag"
    )]
    TagNotAssigned { dataset: String, tag: String, version: u64 },
    #[error(
        "{dataset}@{tag} names v{version}, which is not Ready in this region yet; wait until it is (`aq status {dataset}`), or roll it out with `aq rollout {dataset}@v{version} --to REGION`"
    )]
    TagNotReady { dataset: String, tag: String, version: u64 },
    #[error("cannot get the manifest of {dataset}@v{version} from the hub: {status}")]
    Hub { dataset: String, version: u64, status: String },
    /// The hub was lost under the call, or refused it ([`crate::origin::hub_lost`]): asking
    /// again reaches the next hub.
    #[error("cannot get the manifest of {dataset}@v{version} from the hub: {}", .status.message())]
    HubLost { dataset: String, version: u64, status: tonic::Status },
    #[error("the manifest of {dataset}@v{version} does not verify: {source}")]
    Manifest { dataset: String, version: u64, source: ManifestError },
    /// Its signature does not verify under the keys of `[trust]`: nothing of it is served.
    #[error("{0}")]
    Untrusted(VerifyError),
    #[error("the catalog at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub struct Catalog {
    dir: PathBuf,
    hub: SpokeClient<Channel>,
    assignments: watch::Sender<pb::Assignments>,
    manifests: Mutex<HashMap<(String, u64), Arc<Manifest>>>,
    /// The hub signing keys a manifest must be signed by (`[trust]`).
    trust: TrustedKeys,
}

impl Catalog {
    /// Opens the catalog in `dir` (created if needed) with the last assignments it saw; it
    /// takes only manifests signed by a key of `trust`.
    pub fn open(dir: &Path, hub: SpokeClient<Channel>, trust: TrustedKeys) -> Result<Self, CatalogError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CatalogError::Io { path, source }
        };
        let manifests = dir.join("manifests");
        durable::create_dir_all(&manifests).map_err(io(dir))?;
        // What a crash left half written (the names are the temporary files').
        let mut dirs = vec![dir.to_owned()];
        dirs.extend(std::fs::read_dir(&manifests).map_err(io(&manifests))?.flatten().map(|e| e.path()));
        for d in dirs.iter().filter(|d| d.is_dir()) {
            durable::remove_temporaries(d).map_err(io(d))?;
        }
        let format = dir.join("FORMAT");
        match std::fs::read_to_string(&format) {
            Ok(found) if found.trim() == CATALOG_FORMAT.to_string() => {}
            Ok(found) => {
                return Err(CatalogError::Io {
                    path: format,
                    source: std::io::Error::other(format!(
                        "format {} is not {CATALOG_FORMAT}; upgrade the spoke or move the directory away",
                        found.trim()
                    )),
                });
            }
            Err(_) => durable::write_file(&format, format!("{CATALOG_FORMAT}\n").as_bytes(), durable::PUBLIC)
                .map_err(io(&format))?,
        }
        let saved = dir.join("assignments.pb");
        let assignments = match std::fs::read(&saved) {
            Ok(bytes) => pb::Assignments::decode(bytes.as_slice()).unwrap_or_default(),
            Err(_) => pb::Assignments::default(),
        };
        Ok(Self {
            dir: dir.to_owned(),
            hub,
            assignments: watch::Sender::new(assignments),
            manifests: Mutex::default(),
            trust,
        })
    }

    /// Writes a file of the catalog atomically, through a temporary name of its own (two
    /// tasks may write the same manifest at once).
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        durable::write_file(path, bytes, durable::PUBLIC)
    }

    pub fn assignments(&self) -> pb::Assignments {
        self.assignments.borrow().clone()
    }

    /// Changes of the assignments, as they arrive from the hub.
    pub fn subscribe(&self) -> watch::Receiver<pb::Assignments> {
        self.assignments.subscribe()
    }

    /// Records the hub's latest assignments (on disk, then for subscribers).
    pub fn set_assignments(&self, assignments: pb::Assignments) -> Result<(), CatalogError> {
        let path = self.dir.join("assignments.pb");
        self.write(&path, &assignments.encode_to_vec()).map_err(|source| CatalogError::Io { path, source })?;
        self.assignments.send_if_modified(|current| {
            let changed = *current != assignments;
            *current = assignments;
            changed
        });
        Ok(())
    }

    /// The assignment a dataset reference means here: the version asked for, or (`None`)
    /// the region's active version.
    pub fn resolve(&self, dataset: &str, version: Option<u64>) -> Result<pb::Assignment, CatalogError> {
        resolve(&self.assignments.borrow(), dataset, version)
    }

    /// The assignment a mount that follows `follows` shows now (see [`resolve_follows`]).
    pub fn resolve_follows(&self, dataset: &str, follows: &Follows) -> Result<pb::Assignment, CatalogError> {
        resolve_follows(&self.assignments.borrow(), dataset, follows)
    }

    /// Whether the catalog keeps the manifest of `dataset@version` (in memory or on disk):
    /// a version assigned to the region, or one it no longer is that a mount still shows.
    pub fn holds_manifest(&self, dataset: &str, version: u64) -> bool {
        let key = (dataset.to_string(), version);
        self.manifests.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key)
            || (aqueduct_proto::validate_name("dataset", dataset).is_ok()
                && self.manifest_path(dataset, version).is_file())
    }

    /// The manifest the catalog keeps of `dataset@version`, if any, without asking the hub
    /// (a version no longer assigned has no root to check against: the catalog checked it
    /// when it kept it).
    pub fn kept_manifest(&self, dataset: &str, version: u64) -> Option<Arc<Manifest>> {
        let key = (dataset.to_string(), version);
        if let Some(m) = self.manifests.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Some(m.clone());
        }
        aqueduct_proto::validate_name("dataset", dataset).ok()?;
        let bytes = std::fs::read(self.manifest_path(dataset, version)).ok()?;
        let m = Manifest::try_from(pb::Manifest::decode(bytes.as_slice()).ok()?).ok()?;
        if let Err(e) = self.trust.verify(&m) {
            warn!(dataset, version, error = %e, "a kept manifest is refused");
            return None;
        }
        (m.dataset == dataset && m.version == version).then(|| Arc::new(m))
    }

    /// The versions whose manifests the catalog keeps on disk.
    pub fn kept_versions(&self) -> Vec<(String, u64)> {
        let mut kept = Vec::new();
        let Ok(datasets) = std::fs::read_dir(self.dir.join("manifests")) else { return kept };
        for d in datasets.flatten() {
            let Some(name) = d.file_name().to_str().map(str::to_string) else { continue };
            let Ok(files) = std::fs::read_dir(d.path()) else { continue };
            for f in files.flatten() {
                let file = f.file_name();
                let version = file.to_str().and_then(|n| n.strip_suffix(".pb")).and_then(|n| n.parse::<u64>().ok());
                if let Some(v) = version {
                    kept.push((name.clone(), v));
                }
            }
        }
        kept.sort();
        kept
    }

    /// Forgets the manifest of a version no longer assigned (from memory and disk).
    pub fn forget_manifest(&self, dataset: &str, version: u64) -> Result<(), CatalogError> {
        self.manifests.lock().unwrap_or_else(|e| e.into_inner()).remove(&(dataset.to_string(), version));
        if aqueduct_proto::validate_name("dataset", dataset).is_err() {
            return Ok(());
        }
        let path = self.manifest_path(dataset, version);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CatalogError::Io { path, source }),
        }
    }

    fn manifest_path(&self, dataset: &str, version: u64) -> PathBuf {
        self.dir.join("manifests").join(dataset).join(format!("{version}.pb"))
    }

    /// The manifest of an assigned version: from memory, from disk, or from the hub (then
    /// kept). Checked against the root the hub assigned, and its signature against `[trust]`
    /// (also a copy read back from disk), before anything of the version is fetched or served.
    #[instrument(skip_all, fields(dataset = %a.dataset, version = a.version))]
    pub async fn manifest(&self, a: &pb::Assignment) -> Result<Arc<Manifest>, CatalogError> {
        let key = (a.dataset.clone(), a.version);
        if let Some(m) = self.manifests.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        // The name becomes a directory: never one that climbs out of the catalog.
        aqueduct_proto::validate_name("dataset", &a.dataset).map_err(|e| CatalogError::Hub {
            dataset: a.dataset.clone(),
            version: a.version,
            status: format!("the hub assigned it under a name that is not valid: {e}"),
        })?;
        let path = self.manifest_path(&a.dataset, a.version);
        let bad = |source| CatalogError::Manifest { dataset: a.dataset.clone(), version: a.version, source };
        let from_disk = std::fs::read(&path).ok().and_then(|bytes| saved_manifest(&bytes, a));
        let untrusted = |e: VerifyError| {
            warn!(error = %e, "manifest refused: its signature does not verify");
            CatalogError::Untrusted(e)
        };
        let manifest = match from_disk {
            Some(m) => {
                self.trust.verify(&m).map_err(untrusted)?;
                m
            }
            None => {
                debug!("fetching the manifest from the hub");
                let wire = self
                    .hub
                    .clone()
                    .get_manifest(pb::GetManifestRequest { dataset: a.dataset.clone(), version: a.version })
                    .await
                    .map_err(|s| match crate::origin::hub_lost(&s) {
                        true => CatalogError::HubLost { dataset: a.dataset.clone(), version: a.version, status: s },
                        false => CatalogError::Hub {
                            dataset: a.dataset.clone(),
                            version: a.version,
                            status: s.message().to_string(),
                        },
                    })?
                    .into_inner();
                let bytes = wire.encode_to_vec();
                let manifest = Manifest::try_from(wire).map_err(bad)?;
                if manifest.root.0.as_slice() != a.root.as_slice() {
                    return Err(bad(ManifestError::RootMismatch {
                        expected: aqueduct_proto::Digest::from_slice(&a.root)
                            .unwrap_or(aqueduct_proto::Digest([0; 32])),
                        computed: manifest.root,
                    }));
                }
                if !is_assigned(&manifest, a) {
                    return Err(CatalogError::Hub {
                        dataset: a.dataset.clone(),
                        version: a.version,
                        status: format!(
                            "the hub answered with the manifest of {}@v{}",
                            manifest.dataset, manifest.version
                        ),
                    });
                }
                self.trust.verify(&manifest).map_err(untrusted)?;
                durable::create_dir_all(path.parent().unwrap_or(&self.dir))
                    .and_then(|()| self.write(&path, &bytes))
                    .map_err(|source| CatalogError::Io { path: path.clone(), source })?;
                manifest
            }
        };
        let manifest = Arc::new(manifest);
        self.manifests.lock().unwrap_or_else(|e| e.into_inner()).insert(key, manifest.clone());
        Ok(manifest)
    }
}

/// A manifest the catalog saved, if `bytes` hold the one `a` assigns; anything else
/// (damaged, truncated, of another version) is `None`, and the manifest is fetched again.
pub fn saved_manifest(bytes: &[u8], a: &pb::Assignment) -> Option<Manifest> {
    let wire = pb::Manifest::decode(bytes).ok()?;
    Manifest::try_from(wire).ok().filter(|m| is_assigned(m, a))
}

/// Whether `m` is the manifest `a` assigns: its root, and its dataset and version, which the
/// root does not cover (and readers see, as extended attributes).
fn is_assigned(m: &Manifest, a: &pb::Assignment) -> bool {
    m.root.0.as_slice() == a.root.as_slice() && m.dataset == a.dataset && m.version == a.version
}

/// Which assignment `dataset` at `version` (or its active version) is.
pub fn resolve(
    assignments: &pb::Assignments,
    dataset: &str,
    version: Option<u64>,
) -> Result<pb::Assignment, CatalogError> {
    let of: Vec<&pb::Assignment> = assignments.assignments.iter().filter(|a| a.dataset == dataset).collect();
    if of.is_empty() {
        return Err(CatalogError::UnknownDataset { dataset: dataset.to_string() });
    }
    let found = match version {
        Some(v) => of.iter().find(|a| a.version == v),
        None => of.iter().find(|a| a.active),
    };
    match (found, version) {
        (Some(a), _) => Ok((*a).clone()),
        (None, Some(v)) => Err(CatalogError::UnknownVersion {
            dataset: dataset.to_string(),
            version: v,
            held: of.iter().map(|a| format!("v{}", a.version)).collect::<Vec<_>>().join(", "),
        }),
        (None, None) => Err(CatalogError::NoActiveVersion { dataset: dataset.to_string() }),
    }
}

/// Which assignment a mount that follows `follows` shows: the version asked for, the active
/// one, or the one a tag names, when that version is assigned to the region and Ready (a
/// mount never shows a tag's version before the region holds it; a following mount keeps the
/// version it shows meanwhile).
pub fn resolve_follows(
    assignments: &pb::Assignments,
    dataset: &str,
    follows: &Follows,
) -> Result<pb::Assignment, CatalogError> {
    let tag = match follows {
        Follows::Active => return resolve(assignments, dataset, None),
        Follows::Version(v) => return resolve(assignments, dataset, Some(*v)),
        Follows::Tag(tag) => tag,
    };
    if !assignments.assignments.iter().any(|a| a.dataset == dataset) {
        return Err(CatalogError::UnknownDataset { dataset: dataset.to_string() });
    }
    let Some(named) = assignments.tags.iter().find(|t| t.dataset == dataset && &t.name == tag) else {
        let mut known: Vec<&str> =
            assignments.tags.iter().filter(|t| t.dataset == dataset).map(|t| t.name.as_str()).collect();
        known.sort_unstable();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        return Err(CatalogError::UnknownTag { dataset: dataset.to_string(), tag: tag.clone(), known });
    };
    let version = named.version;
    let (dataset, tag) = (dataset.to_string(), tag.clone());
    match assignments.assignments.iter().find(|a| a.dataset == dataset && a.version == version) {
        Some(a) if a.ready || a.active => Ok(a.clone()),
        Some(_) => Err(CatalogError::TagNotReady { dataset, tag, version }),
        None => Err(CatalogError::TagNotAssigned { dataset, tag, version }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(dataset: &str, version: u64, active: bool) -> pb::Assignment {
        pb::Assignment {
            dataset: dataset.into(),
            version,
            total_bytes: 1,
            root: vec![0; 32],
            active,
            mode: Default::default(),
            ready: active,
            ..Default::default()
        }
    }

    use aqueduct_proto::{ChunkRef, ChunkerParams, Digest, FileEntry};
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    fn manifest(files: Vec<(String, Vec<u32>)>) -> Manifest {
        let files: std::collections::BTreeMap<String, Vec<u32>> = files.into_iter().collect();
        let entries = files
            .iter()
            .filter(|(p, _)| !files.keys().any(|q| q.starts_with(&format!("{p}/"))))
            .map(|(path, lengths)| {
                let mut offset = 0u64;
                let chunks = lengths
                    .iter()
                    .map(|&length| {
                        let c = ChunkRef { digest: Digest::of(&offset.to_le_bytes()), offset, length };
                        offset += u64::from(length);
                        c
                    })
                    .collect();
                FileEntry {
                    path: path.clone(),
                    object: path.clone(),
                    size: offset,
                    mode: 0o644,
                    mtime_unix_ms: 1,
                    chunks,
                }
            })
            .collect();
        Manifest::new("m".into(), 1, ChunkerParams::DEFAULT, entries).unwrap()
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// A manifest file as the catalog finds it on disk, whole, damaged or cut short: the
        /// manifest the hub assigned (its root) or nothing (then it is fetched again); never a
        /// panic, never another manifest.
        #[test]
        fn fuzz_saved_manifests_from_disk(
            files in proptest::collection::vec(("[a-c]{1,2}(/[a-c]{1,2}){0,2}", proptest::collection::vec(1u32..(2 << 20), 0..4)), 0..5),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
            cut in proptest::option::weighted(0.2, any::<prop::sample::Index>()),
            noise in proptest::option::weighted(0.1, proptest::collection::vec(any::<u8>(), 0..200)),
            other_root in any::<bool>(),
        ) {
            let m = manifest(files);
            let mut bytes = noise.unwrap_or_else(|| pb::Manifest::from(&m).encode_to_vec());
            for (at, mask) in &flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
            }
            if let Some(at) = cut {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            let root = if other_root { Digest::of(b"another version").0.to_vec() } else { m.root.0.to_vec() };
            let a = pb::Assignment { dataset: m.dataset.clone(), version: m.version, root, ..Default::default() };
            match saved_manifest(&bytes, &a) {
                Some(found) => {
                    prop_assert!(!other_root);
                    prop_assert_eq!(found.validate(), Ok(()));
                    // Everything but where the source holds each file (`object`: the hub's
                    // business, not covered by the root, never used by a spoke).
                    let without_objects = |m: &Manifest| {
                        let mut m = m.clone();
                        m.files.iter_mut().for_each(|f| f.object.clear());
                        m
                    };
                    prop_assert_eq!(without_objects(&found), without_objects(&m));
                }
                None => prop_assert!(other_root || !flips.is_empty() || cut.is_some() || bytes != pb::Manifest::from(&m).encode_to_vec()),
            }
        }
    }

    #[test]
    fn a_saved_manifest_is_the_assigned_one_in_its_dataset_and_version_too() {
        // Found by fuzz_saved_manifests_from_disk: a damaged byte in a field the root does not
        // cover (the dataset's name, the version, shown to readers) went unnoticed.
        let chunk = ChunkRef { digest: Digest::of(b"x"), offset: 0, length: 1 };
        let file = FileEntry {
            path: "f".into(),
            object: "f".into(),
            size: 1,
            mode: 0o644,
            mtime_unix_ms: 1,
            chunks: vec![chunk],
        };
        let m = Manifest::new("llama".into(), 2, ChunkerParams::DEFAULT, vec![file]).unwrap();
        let a = pb::Assignment { dataset: "llama".into(), version: 2, root: m.root.0.to_vec(), ..Default::default() };
        assert_eq!(saved_manifest(&pb::Manifest::from(&m).encode_to_vec(), &a), Some(m.clone()));
        for (dataset, version) in [("llamb", 2), ("llama", 3)] {
            let other = Manifest { dataset: dataset.into(), version, ..m.clone() };
            assert_eq!(other.validate(), Ok(()), "the root covers neither");
            assert_eq!(saved_manifest(&pb::Manifest::from(&other).encode_to_vec(), &a), None);
        }
    }

    /// A manifest read back from the catalog's own disk is checked like one from the hub: a
    /// copy unsigned, or signed by a key the spoke does not trust, is refused (never fetched
    /// again in its place, never served), and a kept one is not handed out.
    #[tokio::test]
    async fn manifests_on_disk_are_verified_before_they_are_used() {
        use aqueduct_core::signing::SigningKey;
        let file = FileEntry {
            path: "model".into(),
            object: "model".into(),
            size: 3,
            mode: 0o644,
            mtime_unix_ms: 0,
            chunks: vec![ChunkRef { digest: Digest::of(b"abc"), offset: 0, length: 3 }],
        };
        let dir = tempfile::tempdir().unwrap();
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let catalog =
            Catalog::open(&dir.path().join("catalog"), SpokeClient::new(channel), crate::trust::testing::trust())
                .unwrap();
        let stranger = SigningKey::generate().unwrap();
        for (version, sign) in [(1, None), (2, Some(&stranger)), (3, Some(crate::trust::testing::key()))] {
            let mut m = Manifest::new("m".into(), version, ChunkerParams::DEFAULT, vec![file.clone()]).unwrap();
            if let Some(key) = sign {
                key.sign_manifest(&mut m, 1);
            }
            let path = dir.path().join(format!("catalog/manifests/m/{version}.pb"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, pb::Manifest::from(&m).encode_to_vec()).unwrap();
            let a = pb::Assignment { dataset: "m".into(), version, root: m.root.0.to_vec(), ..Default::default() };
            let got = catalog.manifest(&a).await;
            match version {
                1 => assert!(matches!(got, Err(CatalogError::Untrusted(VerifyError::Unsigned { .. }))), "{got:?}"),
                2 => assert!(matches!(got, Err(CatalogError::Untrusted(VerifyError::UnknownKey { .. }))), "{got:?}"),
                _ => assert_eq!(*got.unwrap(), m),
            }
            assert_eq!(catalog.kept_manifest("m", version).is_some(), version == 3);
        }
    }

    #[tokio::test]
    async fn a_dataset_name_from_the_hub_never_becomes_a_path_outside_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let catalog =
            Catalog::open(&dir.path().join("catalog"), SpokeClient::new(channel), crate::trust::testing::trust())
                .unwrap();
        for name in ["../../escape", "/abs", "a/b", ""] {
            let err = catalog.manifest(&assignment(name, 1, true)).await.unwrap_err().to_string();
            assert!(err.contains("not valid"), "{name:?}: {err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "something was made outside the catalog");
        assert_eq!(std::fs::read_dir(dir.path().join("catalog/manifests")).unwrap().count(), 0);
    }

    #[test]
    fn references_resolve_to_assignments_or_say_what_to_do() {
        let a = pb::Assignments {
            assignments: vec![assignment("m", 1, true), assignment("m", 2, false), assignment("n", 1, false)],
            budget_bytes_per_sec: 1,
            members: Vec::new(),
            session: String::new(),
            ..Default::default()
        };
        assert_eq!(resolve(&a, "m", None).unwrap().version, 1);
        assert_eq!(resolve(&a, "m", Some(2)).unwrap().version, 2);
        let err = resolve(&a, "x", None).unwrap_err().to_string();
        assert!(err.contains("not rolled out") && err.contains("aq rollout x@vN"), "{err}");
        let err = resolve(&a, "m", Some(7)).unwrap_err().to_string();
        assert!(err.contains("m@v7") && err.contains("v1, v2"), "{err}");
        let err = resolve(&a, "n", None).unwrap_err().to_string();
        assert!(err.contains("no active version") && err.contains("n@vN"), "{err}");
    }

    fn tag(dataset: &str, name: &str, version: u64) -> pb::Tag {
        pb::Tag { dataset: dataset.into(), name: name.into(), version, updated_unix_ms: 0 }
    }

    #[test]
    fn a_tag_resolves_to_its_version_when_the_region_holds_it_ready() {
        let mut rolling = assignment("m", 3, false);
        rolling.ready = false;
        let mut ready = assignment("m", 2, false);
        ready.ready = true;
        let a = pb::Assignments {
            assignments: vec![assignment("m", 1, true), ready, rolling],
            tags: vec![tag("m", "stable", 1), tag("m", "canary", 2), tag("m", "next", 3), tag("m", "old", 9)],
            ..Default::default()
        };
        let follow = |name: &str| resolve_follows(&a, "m", &Follows::Tag(name.into()));
        // Assigned and Ready (the active version is Ready), or Ready while rolling out.
        assert_eq!(follow("stable").unwrap().version, 1);
        assert_eq!(follow("canary").unwrap().version, 2);
        // Assigned, not Ready: refused, naming the tag, its version and what to do.
        let err = follow("next").unwrap_err().to_string();
        assert!(err.contains("m@next") && err.contains("v3") && err.contains("not Ready"), "{err}");
        assert!(err.contains("aq rollout m@v3 --to REGION"), "{err}");
        // Not assigned here.
        let err = follow("old").unwrap_err().to_string();
        assert!(err.contains("m@old") && err.contains("v9") && err.contains("not rolled out"), "{err}");
        assert!(err.contains("aq rollout m@v9 --to REGION"), "{err}");
        // Unknown tag: the known ones are named.
        let err = follow("prod").unwrap_err().to_string();
        assert!(err.contains("no tag \"prod\"") && err.contains("canary, next, old, stable"), "{err}");
        let err = resolve_follows(&a, "x", &Follows::Tag("stable".into())).unwrap_err().to_string();
        assert!(err.contains("not rolled out"), "{err}");
        // The tag moves: the same follower resolves to the new version.
        let mut moved = a.clone();
        moved.tags[0].version = 2;
        assert_eq!(resolve_follows(&moved, "m", &Follows::Tag("stable".into())).unwrap().version, 2);
        // Active and fixed versions resolve as before.
        assert_eq!(resolve_follows(&a, "m", &Follows::Active).unwrap().version, 1);
        assert_eq!(resolve_follows(&a, "m", &Follows::Version(3)).unwrap().version, 3);
    }
}
