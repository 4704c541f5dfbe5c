//! What the node plugin has published where, kept on disk so that a restarted spoke knows
//! every target and the kubelet never has to publish again.
//!
//! The file is `DATA_DIR/csi/publications.json` (`{"format": 1, "publications": [...]}`),
//! rewritten atomically ([`aqueduct_core::durable`]) after every change. Each publication
//! names its volume, its target path, its share (dataset and pin) and the pod directory the
//! target lies in (the kubelet's `.../pods/UID/volumes/kubernetes.io~csi/PV/mount`;
//! [`pod_dir`]). At start, [`reconcile`] decides for each publication, from what is true now
//! (is the target still a mount point? does the pod's directory still exist?), whether to
//! keep it, bind it again, or clean it up (pure: the node plugin does the I/O).

use std::path::{Component, Path, PathBuf};

use aqueduct_proto::selector::Follows;
use serde::{Deserialize, Serialize};

/// The file's format; a file of another format is set aside, not misread.
pub const FORMAT: u32 = 1;
/// The file, inside the data directory.
pub const FILE: &str = "csi/publications.json";

/// One published target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub volume_id: String,
    pub target: PathBuf,
    /// The share's name (`DATASET@vN` or `DATASET@active`): its FUSE mount is
    /// `DATA_DIR/csi/mounts/SHARE`.
    pub share: String,
    pub dataset: String,
    /// The version, or `None` for the region's active one (or the tag's).
    pub version: Option<u64>,
    /// The tag the share follows, if it follows one (files of earlier spokes have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The pod's uid, from the target path (when it has the kubelet's shape).
    #[serde(default)]
    pub pod_uid: Option<String>,
}

impl Publication {
    /// What the share's mount shows: its version, its tag, or the active version.
    pub fn follows(&self) -> Follows {
        match (self.version, &self.tag) {
            (Some(v), _) => Follows::Version(v),
            (None, Some(t)) => Follows::Tag(t.clone()),
            (None, None) => Follows::Active,
        }
    }

    /// The target is absolute with no `.` or `..` part, and the share one plain name (it is
    /// joined to the shares' directory): what a restarted spoke unmounts, removes or binds stays
    /// where the node plugin would have put it.
    fn plain(&self) -> bool {
        let target_plain = self.target.is_absolute()
            && self.target.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let mut share = Path::new(&self.share).components();
        let share_plain =
            matches!((share.next(), share.next()), (Some(Component::Normal(_)), None)) && !self.share.contains('/');
        target_plain && share_plain
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    format: u32,
    publications: Vec<Publication>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublicationsError {
    #[error("cannot read the CSI publications file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the CSI publications file {path} is damaged ({reason}); it is set aside as {path}.bad")]
    Damaged { path: PathBuf, reason: String },
}

/// The publications in `path` (none if there is no file yet).
pub fn load(path: &Path) -> Result<Vec<Publication>, PublicationsError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PublicationsError::Io { path: path.to_owned(), source }),
    };
    match serde_json::from_slice::<File>(&bytes) {
        Ok(f) if f.format == FORMAT => match f.publications.iter().find(|p| !p.plain()) {
            None => Ok(f.publications),
            Some(p) => Err(PublicationsError::Damaged {
                path: path.to_owned(),
                reason: format!("target {:?} or share {:?} is not a plain path", p.target, p.share),
            }),
        },
        Ok(f) => Err(PublicationsError::Damaged { path: path.to_owned(), reason: format!("format {}", f.format) }),
        Err(e) => Err(PublicationsError::Damaged { path: path.to_owned(), reason: e.to_string() }),
    }
}

/// Writes `publications` to `path`, atomically.
pub fn save(path: &Path, publications: &[Publication]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        aqueduct_core::durable::create_dir_all(dir)?;
    }
    let file = File { format: FORMAT, publications: publications.to_vec() };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    aqueduct_core::durable::write_file(path, &text, aqueduct_core::durable::SECRET)
}

/// The kubelet's pod directory a target lies in, and the pod's uid: for
/// `ROOT/pods/UID/volumes/kubernetes.io~csi/PV/mount`, `(ROOT/pods/UID, UID)`. `None` for a
/// path of another shape.
pub fn pod_dir(target: &Path) -> Option<(PathBuf, String)> {
    let parts: Vec<Component> = target.components().collect();
    let n = parts.len();
    if n < 6 {
        return None;
    }
    let name = |i: usize| match parts.get(i) {
        Some(Component::Normal(s)) => s.to_str(),
        _ => None,
    };
    let uid = name(n - 5)?;
    let shaped = name(n - 6) == Some("pods")
        && name(n - 4) == Some("volumes")
        && name(n - 3) == Some("kubernetes.io~csi")
        && name(n - 2).is_some()
        && name(n - 1) == Some("mount")
        && !uid.is_empty();
    shaped.then(|| (parts[..n - 4].iter().collect(), uid.to_string()))
}

/// The directory whose existence says the pod is still there: the pod's directory, or for a
/// target of another shape, the directory that holds it.
pub fn owner_dir(target: &Path) -> Option<PathBuf> {
    pod_dir(target).map(|(d, _)| d).or_else(|| target.parent().map(Path::to_owned))
}

/// What is true of a publication now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Something is mounted at the target.
    pub bound: bool,
    /// The pod's directory (see [`owner_dir`]) exists.
    pub pod_exists: bool,
}

/// What to do with a publication a restarted spoke finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Still bound, pod still there: nothing to do.
    Keep,
    /// The pod is there but its bind is gone: bind the share again.
    Rebind,
    /// The pod is gone: unbind (if bound), forget it, release its share if no one else uses it.
    CleanUp,
}

/// Decides what a restarted spoke does with a publication.
pub fn reconcile(facts: Facts) -> Action {
    match facts {
        Facts { pod_exists: false, .. } => Action::CleanUp,
        Facts { bound: true, .. } => Action::Keep,
        Facts { bound: false, .. } => Action::Rebind,
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_restarted_spoke_keeps_rebinds_or_cleans_up() {
        assert_eq!(reconcile(Facts { bound: true, pod_exists: true }), Action::Keep);
        assert_eq!(reconcile(Facts { bound: false, pod_exists: true }), Action::Rebind);
        assert_eq!(reconcile(Facts { bound: true, pod_exists: false }), Action::CleanUp);
        assert_eq!(reconcile(Facts { bound: false, pod_exists: false }), Action::CleanUp);
    }

    #[test]
    fn the_pod_comes_from_the_kubelets_target_path() {
        let t = Path::new("/var/lib/kubelet/pods/3f2a-11/volumes/kubernetes.io~csi/pv-llama/mount");
        assert_eq!(pod_dir(t), Some((PathBuf::from("/var/lib/kubelet/pods/3f2a-11"), "3f2a-11".into())));
        assert_eq!(owner_dir(t), Some(PathBuf::from("/var/lib/kubelet/pods/3f2a-11")));
        for other in ["/mnt/x", "/pods/a/volumes/kubernetes.io~csi/pv/data", "/a/pods/u/volumes/other/pv/mount", "/"] {
            assert_eq!(pod_dir(Path::new(other)), None, "{other}");
        }
        assert_eq!(owner_dir(Path::new("/mnt/x")), Some(PathBuf::from("/mnt")));
    }

    #[test]
    fn publications_round_trip_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi/publications.json");
        assert_eq!(load(&path).unwrap(), []);
        let p = Publication {
            volume_id: "pv".into(),
            target: "/k/pods/u/volumes/kubernetes.io~csi/pv/mount".into(),
            share: "llama@v1".into(),
            dataset: "llama".into(),
            version: Some(1),
            tag: None,
            pod_uid: Some("u".into()),
        };
        save(&path, std::slice::from_ref(&p)).unwrap();
        assert_eq!(load(&path).unwrap(), [p]);
        std::fs::write(&path, b"{\"format\": 9, \"publications\": []}").unwrap();
        assert!(matches!(load(&path), Err(PublicationsError::Damaged { .. })));
        std::fs::write(&path, b"{half").unwrap();
        assert!(matches!(load(&path), Err(PublicationsError::Damaged { .. })));
    }

    proptest! {
        #![proptest_config(fuzz::config(500))]

        /// Whatever the file holds, a load gives publications with plain paths or says the file
        /// is damaged; it never panics, and never hands back a path that leaves its place.
        #[test]
        fn fuzz_any_publications_file_loads_plain_or_is_damaged(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..256),
                (
                    "(/|\\.\\./|\\./|[a-z]{1,4}/){0,5}[a-z.]{0,6}",
                    "(\\.\\.|\\.|[a-z@0-9]{1,8})(/[a-z.]{1,4}){0,2}",
                    0u32..3,
                ).prop_map(|(target, share, format)| format!(
                    r#"{{"format": {format}, "publications": [{{"volume_id": "pv", "target": {target:?}, "share": {share:?}, "dataset": "d", "version": null}}]}}"#
                ).into_bytes()),
            ],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("publications.json");
            std::fs::write(&path, &bytes).unwrap();
            match load(&path) {
                Ok(found) => {
                    for p in found {
                        prop_assert!(p.target.is_absolute(), "{p:?}");
                        prop_assert!(!p.target.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)), "{p:?}");
                        prop_assert!(!p.share.contains('/') && p.share != ".." && p.share != "." && !p.share.is_empty(), "{p:?}");
                    }
                }
                Err(PublicationsError::Damaged { .. }) => {}
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// Any path: an answer or none, never a panic; an answer is a prefix of the target and
        /// its last part is the uid.
        #[test]
        fn fuzz_pod_dir_of_any_path(parts in proptest::collection::vec(prop_oneof![
            Just("pods".to_string()), Just("volumes".to_string()), Just("kubernetes.io~csi".to_string()),
            Just("mount".to_string()), Just("..".to_string()), Just(".".to_string()), "[a-z0-9-]{0,8}",
        ], 0..10), absolute in any::<bool>()) {
            let text = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
            let target = Path::new(&text);
            if let Some((dir, uid)) = pod_dir(target) {
                prop_assert!(target.starts_with(&dir));
                prop_assert_eq!(dir.file_name().and_then(|n| n.to_str()), Some(uid.as_str()));
                prop_assert_eq!(target.strip_prefix(&dir).unwrap().components().count(), 4);
            }
        }

        /// A well-formed target always gives its pod.
        #[test]
        fn fuzz_pod_dir_of_kubelet_targets(root in "(/[a-z]{1,6}){0,3}", uid in "[a-f0-9-]{1,36}", pv in "[a-z0-9-]{1,20}") {
            let target = PathBuf::from(format!("{root}/pods/{uid}/volumes/kubernetes.io~csi/{pv}/mount"));
            let (dir, found) = pod_dir(&target).unwrap();
            prop_assert_eq!(found, uid.clone());
            prop_assert_eq!(dir, PathBuf::from(format!("{root}/pods/{uid}")));
        }
    }
}
