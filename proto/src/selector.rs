//! What a mount of a dataset shows, as people write it (`llama`, `llama@v3`, `llama@stable`)
//! and as the local API carries it (a version number and a tag name): the region's active
//! version, a tag's version, or one fixed version. Mounts that follow the active version or a
//! tag switch when it moves; a fixed one never does. Parsed and checked here, in one place,
//! for the spoke's CLI, the sidecar, the holder and the CSI volume attribute.

use std::fmt;
use std::str::FromStr;

use crate::{NameError, TagNameError, validate_name, validate_tag};

/// Which version of a dataset a mount shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Follows {
    /// The region's active version, as it changes.
    Active,
    /// The version a tag names, as it moves.
    Tag(String),
    /// One version, always.
    Version(u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error(
        "{input:?} selects no version: write a version (v3 or 3; versions count from 1), a tag (stable, canary) or `active`"
    )]
    BadVersion { input: String },
    #[error("{0}")]
    Tag(TagNameError),
    #[error("{0}")]
    Name(NameError),
    #[error("both version {version} and tag {tag:?} are given: a mount follows a tag or shows a version, not both")]
    Both { version: u64, tag: String },
}

impl Follows {
    /// Reads what follows the `@` of a reference, or a CSI `version` attribute: `active`
    /// (or `latest`, as the CLI always took it), `vN` or `N`, or a tag name.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text == "active" || text == "latest" {
            return Ok(Follows::Active);
        }
        let number = text.strip_prefix('v').unwrap_or(text);
        if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) {
            return match number.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Follows::Version(n)),
                _ => Err(SelectorError::BadVersion { input: text.to_string() }),
            };
        }
        if text.is_empty() || text.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(SelectorError::BadVersion { input: text.to_string() });
        }
        validate_tag(text).map_err(SelectorError::Tag)?;
        Ok(Follows::Tag(text.to_string()))
    }

    /// From the local API's fields (`version`: 0 for none; `tag`: empty for none).
    pub fn from_wire(version: u64, tag: &str) -> Result<Self, SelectorError> {
        match (version, tag) {
            (0, "") => Ok(Follows::Active),
            (v, "") => Ok(Follows::Version(v)),
            (0, tag) => validate_tag(tag).map(|()| Follows::Tag(tag.to_string())).map_err(SelectorError::Tag),
            (version, tag) => Err(SelectorError::Both { version, tag: tag.to_string() }),
        }
    }

    /// The local API's fields: the version (0: none) and the tag (empty: none).
    pub fn to_wire(&self) -> (u64, String) {
        match self {
            Follows::Active => (0, String::new()),
            Follows::Tag(t) => (0, t.clone()),
            Follows::Version(v) => (*v, String::new()),
        }
    }

    /// The version shown can change (active, or a tag).
    pub fn moves(&self) -> bool {
        !matches!(self, Follows::Version(_))
    }

    /// The fixed version, if it is one.
    pub fn version(&self) -> Option<u64> {
        match self {
            Follows::Version(v) => Some(*v),
            _ => None,
        }
    }

    /// The tag, if it follows one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Follows::Tag(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Follows {
    /// `active`, `stable`, `v3`: what [`Follows::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Follows::Active => f.write_str("active"),
            Follows::Tag(t) => f.write_str(t),
            Follows::Version(v) => write!(f, "v{v}"),
        }
    }
}

/// `DATASET` (its active version), `DATASET@active`, `DATASET@latest`, `DATASET@vN`,
/// `DATASET@N` or `DATASET@TAG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRef {
    pub dataset: String,
    pub follows: Follows,
}

impl FromStr for MountRef {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (dataset, follows) = match s.split_once('@') {
            None => (s, Follows::Active),
            Some((d, selector)) => (d, Follows::parse(selector)?),
        };
        validate_name("dataset", dataset).map_err(SelectorError::Name)?;
        Ok(Self { dataset: dataset.to_string(), follows })
    }
}

impl fmt::Display for MountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.dataset, self.follows)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn references_name_the_active_version_a_version_or_a_tag() {
        let r = |s: &str| s.parse::<MountRef>().map(|r| r.follows);
        assert_eq!(r("llama"), Ok(Follows::Active));
        assert_eq!(r("llama@active"), Ok(Follows::Active));
        assert_eq!(r("llama@latest"), Ok(Follows::Active));
        assert_eq!(r("llama@v3"), Ok(Follows::Version(3)));
        assert_eq!(r("llama@3"), Ok(Follows::Version(3)));
        assert_eq!(r("llama@stable"), Ok(Follows::Tag("stable".into())));
        assert_eq!(r("llama@v2-rc"), Ok(Follows::Tag("v2-rc".into())));
        for bad in ["llama@", "llama@v0", "llama@0", "llama@3x", "llama@Stable", "llama@a_b", "@stable", "Llama@v1"] {
            let err = bad.parse::<MountRef>().unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(r("llama@v0").unwrap_err().to_string().contains("versions count from 1"));
        assert!(r("llama@Stable").unwrap_err().to_string().contains("tag name"));
        assert_eq!("llama@stable".parse::<MountRef>().unwrap().to_string(), "llama@stable");
    }

    #[test]
    fn the_wire_carries_a_version_or_a_tag_never_both() {
        assert_eq!(Follows::from_wire(0, ""), Ok(Follows::Active));
        assert_eq!(Follows::from_wire(4, ""), Ok(Follows::Version(4)));
        assert_eq!(Follows::from_wire(0, "canary"), Ok(Follows::Tag("canary".into())));
        assert!(matches!(Follows::from_wire(4, "canary"), Err(SelectorError::Both { .. })));
        assert!(matches!(Follows::from_wire(0, "../x"), Err(SelectorError::Tag(_))));
        assert!(matches!(Follows::from_wire(0, "v3"), Err(SelectorError::Tag(_))), "a tag never reads as a version");
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(3000))]

        /// Any text after `DATASET@`: refused, or a selector that prints back to itself (in
        /// its canonical spelling) and goes over the wire unchanged; a tag is always a valid
        /// tag name, never a version word; never a panic.
        #[test]
        fn fuzz_mount_references(
            dataset in prop_oneof!["[a-z][a-z0-9-]{0,8}", ".{0,10}"],
            selector in prop_oneof![
                "v?[0-9]{0,22}",
                "[a-z][a-z0-9-]{0,10}",
                proptest::sample::select(&["active", "latest", "v0", "0", "", "V3", "stable", "-a", "a-"][..]).prop_map(str::to_string),
                ".{0,12}",
            ],
            at in any::<bool>(),
        ) {
            let text = if at { format!("{dataset}@{selector}") } else { dataset.clone() };
            if let Ok(r) = text.parse::<MountRef>() {
                prop_assert!(validate_name("dataset", &r.dataset).is_ok());
                let again: MountRef = r.to_string().parse().unwrap();
                prop_assert_eq!(&again, &r);
                let (version, tag) = r.follows.to_wire();
                prop_assert_eq!(Follows::from_wire(version, &tag), Ok(r.follows.clone()));
                match &r.follows {
                    Follows::Tag(t) => {
                        prop_assert!(validate_tag(t).is_ok());
                        prop_assert_eq!(t, &selector);
                    }
                    Follows::Version(v) => {
                        prop_assert!(*v > 0);
                        prop_assert_eq!(selector.trim_start_matches('v').parse::<u64>().ok(), Some(*v));
                    }
                    Follows::Active => prop_assert!(!at || selector == "active" || selector == "latest"),
                }
            }
        }
    }
}
