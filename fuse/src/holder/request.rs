//! What the holder accepts, decided without touching the system: a mount request checked into
//! a [`MountSpec`], and what a mount request means for a mountpoint that already holds one
//! ([`decide`]).

use std::path::{Path, PathBuf};

use aqueduct_proto::selector::Follows;
use aqueduct_proto::spoke::v1 as local;
use aqueduct_proto::validate_name;

/// A checked mount request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub dataset: String,
    /// A version, or follow the region's active version or a tag.
    pub follows: Follows,
    pub mountpoint: PathBuf,
}

impl MountSpec {
    /// The fixed version asked for (`None`: it follows).
    pub fn version(&self) -> Option<u64> {
        self.follows.version()
    }
}

/// Why a request is refused before anything is done.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("{0}")]
    Name(String),
    #[error("{0}")]
    Selector(String),
    #[error("mountpoint {0:?} must be an absolute path")]
    Relative(String),
    #[error("mountpoint {0:?} must be a plain path: no `.` or `..` parts, no NUL byte")]
    Unclean(String),
    #[error("mountpoint is {0} bytes long; a path is at most {MAX_MOUNTPOINT_BYTES}")]
    TooLong(usize),
}

/// The longest mountpoint taken (Linux's PATH_MAX).
pub const MAX_MOUNTPOINT_BYTES: usize = 4096;

/// Checks a mount request: a valid dataset name, an absolute, plain mountpoint.
pub fn mount_spec(r: &local::MountRequest) -> Result<MountSpec, Invalid> {
    validate_name("dataset", &r.dataset).map_err(|e| Invalid::Name(e.to_string()))?;
    let follows = Follows::from_wire(r.version, &r.tag).map_err(|e| Invalid::Selector(e.to_string()))?;
    Ok(MountSpec { dataset: r.dataset.clone(), follows, mountpoint: mountpoint(&r.mountpoint)? })
}

/// Checks a mountpoint: absolute, without `.` or `..` parts or NUL bytes (the table is keyed
/// by path, so one directory has one spelling). A trailing slash is dropped.
pub fn mountpoint(text: &str) -> Result<PathBuf, Invalid> {
    if text.len() > MAX_MOUNTPOINT_BYTES {
        return Err(Invalid::TooLong(text.len()));
    }
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(Invalid::Relative(text.to_string()));
    }
    if text.contains('\0') || text.split('/').any(|part| part == "." || part == "..") {
        return Err(Invalid::Unclean(text.to_string()));
    }
    Ok(path.components().collect())
}

/// What a mountpoint shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub dataset: String,
    pub follows: Follows,
    pub version: u64,
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.follows {
            Follows::Active => write!(f, "{} (following its active version)", self.dataset),
            Follows::Tag(tag) => write!(f, "{}@{tag} (following the tag, now v{})", self.dataset, self.version),
            Follows::Version(_) => write!(f, "{}@v{}", self.dataset, self.version),
        }
    }
}

/// What a mount request means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Mount it.
    New,
    /// The same mount is there already: answer with it.
    Existing,
    /// Something else is mounted there (described).
    Busy(String),
}

/// Decides a mount request for a mountpoint that shows `there` (if anything): the same
/// dataset, following the same (the active version, the same tag) or at the same version, is
/// the existing mount; anything else is busy.
pub fn decide(there: Option<&Shown>, spec: &MountSpec) -> Decision {
    match there {
        None => Decision::New,
        Some(s) if s.dataset == spec.dataset && s.follows == spec.follows => Decision::Existing,
        Some(s) => Decision::Busy(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(1000))]

        /// Any request is refused or gives a spec with a valid name and an absolute, plain,
        /// bounded mountpoint; never a panic.
        #[test]
        fn fuzz_mount_requests_are_checked(
            dataset in prop_oneof![".{0,70}", "[a-z][a-z0-9-]{0,20}"],
            version in any::<u64>(),
            mountpoint in prop_oneof![
                ".{0,40}",
                "(/(\\.|\\.\\.|[a-z]{1,5}|)){0,6}/?",
                (0usize..3).prop_map(|n| format!("/{}", "a".repeat(MAX_MOUNTPOINT_BYTES - 2 + n))),
            ],
        ) {
            let r = local::MountRequest { dataset: dataset.clone(), version, mountpoint: mountpoint.clone(), tag: String::new() };
            if let Ok(spec) = mount_spec(&r) {
                prop_assert!(validate_name("dataset", &spec.dataset).is_ok());
                prop_assert_eq!(spec.version(), (version != 0).then_some(version));
                prop_assert!(spec.mountpoint.is_absolute() && mountpoint.len() <= MAX_MOUNTPOINT_BYTES);
                prop_assert!(spec.mountpoint.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))));
                prop_assert!(!mountpoint.contains('\0'));
            }
        }
    }

    fn request(dataset: &str, version: u64, mountpoint: &str) -> local::MountRequest {
        local::MountRequest { dataset: dataset.into(), version, mountpoint: mountpoint.into(), tag: String::new() }
    }

    #[test]
    fn requests_are_checked_before_anything_is_done() {
        let spec = mount_spec(&request("llama", 0, "/mnt/m/")).unwrap();
        assert_eq!(spec, MountSpec { dataset: "llama".into(), follows: Follows::Active, mountpoint: "/mnt/m".into() });
        assert_eq!(mount_spec(&request("llama", 3, "/mnt//m")).unwrap().version(), Some(3));
        let tagged = local::MountRequest { tag: "stable".into(), ..request("llama", 0, "/m") };
        assert_eq!(mount_spec(&tagged).unwrap().follows, Follows::Tag("stable".into()));
        let both = local::MountRequest { tag: "stable".into(), ..request("llama", 2, "/m") };
        assert!(matches!(mount_spec(&both), Err(Invalid::Selector(_))));
        let bad = local::MountRequest { tag: "v2".into(), ..request("llama", 0, "/m") };
        assert!(matches!(mount_spec(&bad), Err(Invalid::Selector(_))));
        assert_eq!(mount_spec(&request("llama", 3, "/mnt//m")).unwrap().mountpoint, Path::new("/mnt/m"));
        let err = mount_spec(&request("llama", 1, "rel/dir")).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        assert_eq!(mount_spec(&request("llama", 1, "")).unwrap_err(), Invalid::Relative(String::new()));
        for bad in ["/a/../b", "/a/./b", "/a/b\0"] {
            assert!(matches!(mount_spec(&request("llama", 1, bad)), Err(Invalid::Unclean(_))), "{bad:?}");
        }
        for bad in ["", "Llama", "a/b", "../x"] {
            assert!(matches!(mount_spec(&request(bad, 1, "/m")), Err(Invalid::Name(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_mountpoint_answers_the_same_mount_and_refuses_any_other() {
        let spec = |version: Option<u64>| MountSpec {
            dataset: "llama".into(),
            follows: version.map_or(Follows::Active, Follows::Version),
            mountpoint: "/m".into(),
        };
        let pinned = Shown { dataset: "llama".into(), follows: Follows::Version(2), version: 2 };
        let following = Shown { dataset: "llama".into(), follows: Follows::Active, version: 2 };
        assert_eq!(decide(None, &spec(None)), Decision::New);
        assert_eq!(decide(Some(&pinned), &spec(Some(2))), Decision::Existing);
        assert_eq!(decide(Some(&following), &spec(None)), Decision::Existing);
        // Following v2 is not v2 pinned, nor the other way round.
        assert_eq!(
            decide(Some(&following), &spec(Some(2))),
            Decision::Busy("llama (following its active version)".into())
        );
        assert_eq!(decide(Some(&pinned), &spec(None)), Decision::Busy("llama@v2".into()));
        assert_eq!(decide(Some(&pinned), &spec(Some(3))), Decision::Busy("llama@v2".into()));
        let other = Shown { dataset: "mistral".into(), ..pinned };
        assert_eq!(decide(Some(&other), &spec(Some(2))), Decision::Busy("mistral@v2".into()));
        // A tag is its own thing: the same tag is the same mount; another tag, the active
        // version or the version it names now are not.
        let tag = |name: &str| MountSpec { follows: Follows::Tag(name.into()), ..spec(None) };
        let stable = Shown { dataset: "llama".into(), follows: Follows::Tag("stable".into()), version: 2 };
        assert_eq!(decide(Some(&stable), &tag("stable")), Decision::Existing);
        for other in [tag("canary"), spec(None), spec(Some(2))] {
            assert_eq!(
                decide(Some(&stable), &other),
                Decision::Busy("llama@stable (following the tag, now v2)".into())
            );
        }
        assert_eq!(
            decide(Some(&following), &tag("stable")),
            Decision::Busy("llama (following its active version)".into())
        );
    }
}
