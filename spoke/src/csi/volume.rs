//! What a publish or unpublish asks for, checked: the volume's attributes (what the operator
//! wrote into the PersistentVolume) and the request's shape. Pure: no mounts, no catalog.
//!
//! Volume attributes (`volume_context`):
//! - `dataset` (required): the dataset's name;
//! - `version`: a version number (`3` or `v3`), `active` to follow the region's active
//!   version, or a tag name (`stable`) to follow the version the tag names (the mount switches
//!   when it changes or moves); default `active`;
//! - `mode`: `region`, `every-node` or `auto`, how the operator asked the region to hold the
//!   version (the rollout decides; the plugin checks the word and logs a difference);
//! - `startBeforeReady`: `true` lets the pod start before the version is Ready in the region.
//!
//! Attributes the kubelet adds (`csi.storage.k8s.io/...`) and any other with a `/` in its name
//! are ignored; another unknown name is refused, so that a typo does not pass unnoticed.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use aqueduct_proto::ReplicationMode;
use aqueduct_proto::csi::v1 as csi;
use aqueduct_proto::csi::v1::volume_capability::AccessType;
use aqueduct_proto::csi::v1::volume_capability::access_mode::Mode;
use aqueduct_proto::selector::{Follows, SelectorError};

use super::CsiError;

pub const DATASET: &str = "dataset";
pub const VERSION: &str = "version";
pub const MODE: &str = "mode";
pub const START_BEFORE_READY: &str = "startBeforeReady";

/// Which version a volume shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pin {
    Version(u64),
    /// The region's active version, followed as it changes.
    Active,
    /// The version a tag names, followed as it moves.
    Tag(String),
}

impl Pin {
    /// The fixed version (`None`: it follows).
    pub fn version(&self) -> Option<u64> {
        match self {
            Pin::Version(v) => Some(*v),
            Pin::Active | Pin::Tag(_) => None,
        }
    }

    /// As [`Mounts::mount`](crate::mounts::Mounts::mount) takes it.
    pub fn follows(&self) -> Follows {
        match self {
            Pin::Version(v) => Follows::Version(*v),
            Pin::Active => Follows::Active,
            Pin::Tag(t) => Follows::Tag(t.clone()),
        }
    }

    /// The tag followed, if any.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Pin::Tag(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::Version(v) => write!(f, "v{v}"),
            Pin::Active => f.write_str("active"),
            Pin::Tag(t) => f.write_str(t),
        }
    }
}

/// A volume's attributes, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub dataset: String,
    pub pin: Pin,
    pub mode: Option<ReplicationMode>,
    /// `None`: as the config says.
    pub start_before_ready: Option<bool>,
}

impl VolumeSpec {
    /// The node-level mount this volume shares: `DATASET@vN`, `DATASET@active` or
    /// `DATASET@TAG` (a tag is never `active` nor `vN`).
    pub fn share_name(&self) -> String {
        format!("{}@{}", self.dataset, self.pin)
    }

    pub fn parse(attributes: &HashMap<String, String>) -> Result<Self, CsiError> {
        let invalid = |key: &str, problem: String| CsiError::Invalid(format!("volume attribute {key}: {problem}"));
        let known = [DATASET, VERSION, MODE, START_BEFORE_READY];
        let mut unknown: Vec<&String> =
            attributes.keys().filter(|k| !k.contains('/') && !known.contains(&k.as_str())).collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(CsiError::Invalid(format!(
                "unknown volume attribute {:?}: the attributes are {} (and names with a '/', which are ignored)",
                unknown[0],
                known.join(", ")
            )));
        }
        let dataset = attributes.get(DATASET).ok_or_else(|| {
            invalid(DATASET, "missing: name the dataset to mount (the PersistentVolume's volumeAttributes)".into())
        })?;
        aqueduct_proto::validate_name("dataset", dataset).map_err(|e| invalid(DATASET, e.to_string()))?;
        let pin = match attributes.get(VERSION).map(|v| v.trim()) {
            None | Some("active") => Pin::Active,
            Some("latest") => {
                return Err(invalid(
                    VERSION,
                    "\"latest\" is not a version: write a version number (3 or v3), \"active\" or a tag name".into(),
                ));
            }
            Some(text) => match Follows::parse(text) {
                Ok(Follows::Version(v)) => Pin::Version(v),
                Ok(Follows::Tag(t)) => Pin::Tag(t),
                Ok(Follows::Active) | Err(_) => {
                    let why = match Follows::parse(text) {
                        Err(SelectorError::Tag(e)) => format!(" ({e})"),
                        _ => String::new(),
                    };
                    return Err(invalid(
                        VERSION,
                        format!(
                            "{text:?} is not a version: write a version number (3 or v3), \"active\" or a tag name{why}"
                        ),
                    ));
                }
            },
        };
        let mode = match attributes.get(MODE) {
            None => None,
            Some(text) => {
                Some(text.parse::<ReplicationMode>().map_err(|e| invalid(MODE, format!("{e}, or leave it out")))?)
            }
        };
        let start_before_ready = match attributes.get(START_BEFORE_READY).map(|v| v.trim()) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(invalid(START_BEFORE_READY, format!("{other:?} is not \"true\" or \"false\"")));
            }
        };
        Ok(Self { dataset: dataset.clone(), pin, mode, start_before_ready })
    }
}

/// A publish request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub volume_id: String,
    pub target: PathBuf,
    pub spec: VolumeSpec,
}

impl Publish {
    /// Checks a `NodePublishVolume` request: a volume id, an absolute target path, a mount
    /// (not block) capability, read-only access, and the volume's attributes.
    pub fn parse(request: &csi::NodePublishVolumeRequest) -> Result<Self, CsiError> {
        let (volume_id, target) = ids(&request.volume_id, &request.target_path)?;
        let capability = request.volume_capability.as_ref().ok_or_else(|| {
            CsiError::Invalid("volume_capability is missing: Aqueduct volumes are mounted (access type mount)".into())
        })?;
        match &capability.access_type {
            Some(AccessType::Mount(_)) => {}
            Some(AccessType::Block(_)) => {
                return Err(CsiError::Invalid(
                    "access type block is not supported: an Aqueduct volume is a read-only filesystem; use volumeMode: Filesystem".into(),
                ));
            }
            None => {
                return Err(CsiError::Invalid(
                    "volume_capability has no access type: Aqueduct volumes are mounted (access type mount)".into(),
                ));
            }
        }
        let mode = capability.access_mode.as_ref().map_or(Mode::Unknown, |m| m.mode());
        let reader_only = matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly);
        if !request.readonly && !reader_only {
            return Err(CsiError::Invalid(format!(
                "access mode {} with readonly=false: Aqueduct volumes are read-only; use accessModes [ReadOnlyMany] or mount the volume readOnly",
                mode.as_str_name()
            )));
        }
        Ok(Self { volume_id, target, spec: VolumeSpec::parse(&request.volume_context)? })
    }
}

/// Checks a volume id and a target path (publish and unpublish alike).
pub fn ids(volume_id: &str, target: &str) -> Result<(String, PathBuf), CsiError> {
    if volume_id.is_empty() {
        return Err(CsiError::Invalid("volume_id is missing".into()));
    }
    let target = PathBuf::from(target);
    if target.as_os_str().is_empty() {
        return Err(CsiError::Invalid("target_path is missing".into()));
    }
    if !target.is_absolute() {
        return Err(CsiError::Invalid(format!("target_path {} must be an absolute path", target.display())));
    }
    Ok((volume_id.to_string(), target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn request(pairs: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: "pv-1".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv-1/mount".into(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(csi::volume_capability::AccessMode { mode: Mode::MultiNodeReaderOnly as i32 }),
                access_type: Some(AccessType::Mount(Default::default())),
            }),
            volume_context: attrs(pairs),
            ..Default::default()
        }
    }

    fn invalid(result: Result<impl fmt::Debug, CsiError>) -> String {
        match result {
            Err(CsiError::Invalid(message)) => message,
            other => panic!("not Invalid: {other:?}"),
        }
    }

    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    fn attribute() -> impl Strategy<Value = (String, String)> {
        let key = prop_oneof![
            4 => proptest::sample::select(&[DATASET, VERSION, MODE, START_BEFORE_READY][..]).prop_map(str::to_string),
            1 => Just("csi.storage.k8s.io/pod.name".to_string()),
            1 => ".{0,12}",
        ];
        let value = prop_oneof![
            "[a-z0-9][a-z0-9.-]{0,8}",
            "v?[0-9]{1,22}",
            proptest::sample::select(&["active", "auto", "region", "every-node", "true", "false", " 3 ", "v0", ""][..])
                .prop_map(str::to_string),
            ".{0,12}",
        ];
        (key, value)
    }

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// Any attributes the kubelet passes: a spec or an Invalid that names an attribute,
        /// never a panic; a spec is what the attributes say.
        #[test]
        fn fuzz_volume_attributes(attributes in proptest::collection::hash_map(attribute().prop_map(|a| a.0), attribute().prop_map(|a| a.1), 0..6)) {
            match VolumeSpec::parse(&attributes) {
                Ok(spec) => {
                    prop_assert_eq!(Some(&spec.dataset), attributes.get(DATASET));
                    prop_assert!(aqueduct_proto::validate_name("dataset", &spec.dataset).is_ok());
                    match (spec.pin.clone(), attributes.get(VERSION).map(|v| v.trim())) {
                        (Pin::Active, None | Some("active")) => {}
                        (Pin::Tag(t), Some(text)) => {
                            prop_assert!(aqueduct_proto::validate_tag(&t).is_ok());
                            prop_assert_eq!(t.as_str(), text.trim());
                        }
                        (Pin::Version(v), Some(text)) => {
                            prop_assert!(v > 0);
                            prop_assert_eq!(text.trim_start_matches('v').parse::<u64>().ok(), Some(v));
                        }
                        (pin, text) => prop_assert!(false, "{:?} from {:?}", pin, text),
                    }
                    prop_assert_eq!(spec.mode.is_some(), attributes.contains_key(MODE));
                    prop_assert_eq!(spec.start_before_ready.is_some(), attributes.contains_key(START_BEFORE_READY));
                    let prefix = format!("{}@", spec.dataset);
                    prop_assert!(spec.share_name().starts_with(&prefix), "{}", spec.share_name());
                }
                Err(CsiError::Invalid(message)) => prop_assert!(message.contains("volume attribute"), "{}", message),
                Err(other) => prop_assert!(false, "not Invalid: {}", other),
            }
        }

        /// Any publish request: checked or Invalid, never a panic.
        #[test]
        fn fuzz_publish_requests(
            volume_id in ".{0,6}",
            target in "/?[a-z/.]{0,12}|.{0,8}",
            capability in proptest::option::of((proptest::option::of(any::<bool>()), proptest::option::of(any::<i32>()))),
            readonly in any::<bool>(),
            attributes in proptest::collection::hash_map(attribute().prop_map(|a| a.0), attribute().prop_map(|a| a.1), 0..5),
        ) {
            let request = csi::NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path: target.clone(),
                volume_capability: capability.map(|(access, mode)| csi::VolumeCapability {
                    access_type: access.map(|mount| {
                        if mount { AccessType::Mount(Default::default()) } else { AccessType::Block(Default::default()) }
                    }),
                    access_mode: mode.map(|mode| csi::volume_capability::AccessMode { mode }),
                }),
                readonly,
                volume_context: attributes,
                ..Default::default()
            };
            match Publish::parse(&request) {
                Ok(p) => {
                    prop_assert_eq!(p.volume_id, volume_id);
                    prop_assert!(p.target.is_absolute());
                }
                Err(CsiError::Invalid(_)) => {}
                Err(other) => prop_assert!(false, "not Invalid: {}", other),
            }
        }
    }

    #[test]
    fn attributes_name_a_dataset_and_a_version_or_active() {
        let spec =
            VolumeSpec::parse(&attrs(&[("dataset", "llama"), ("version", "3"), ("mode", "every-node")])).unwrap();
        assert_eq!(
            spec,
            VolumeSpec {
                dataset: "llama".into(),
                pin: Pin::Version(3),
                mode: Some(ReplicationMode::EveryNode),
                start_before_ready: None
            }
        );
        assert_eq!(spec.share_name(), "llama@v3");
        assert_eq!(VolumeSpec::parse(&attrs(&[("dataset", "llama"), ("version", "v7")])).unwrap().pin, Pin::Version(7));
        let active = VolumeSpec::parse(&attrs(&[
            ("dataset", "llama"),
            ("version", "active"),
            ("startBeforeReady", "true"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
        ]))
        .unwrap();
        assert_eq!(
            (active.pin.clone(), active.start_before_ready, active.share_name().as_str()),
            (Pin::Active, Some(true), "llama@active")
        );
        assert_eq!(VolumeSpec::parse(&attrs(&[("dataset", "llama")])).unwrap().pin, Pin::Active);
        let tagged = VolumeSpec::parse(&attrs(&[("dataset", "llama"), ("version", "stable")])).unwrap();
        assert_eq!((tagged.pin.clone(), tagged.share_name().as_str()), (Pin::Tag("stable".into()), "llama@stable"));
        assert_eq!(tagged.pin.follows(), Follows::Tag("stable".into()));
        let message = invalid(VolumeSpec::parse(&attrs(&[("dataset", "llama"), ("version", "Stable")])));
        assert!(message.contains("volume attribute version") && message.contains("tag name \"Stable\""), "{message}");
    }

    #[test]
    fn bad_attributes_say_which_and_what_is_expected() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[], &["volume attribute dataset", "missing"]),
            (&[("dataset", "Llama")], &["volume attribute dataset", "Llama"]),
            (&[("dataset", "llama"), ("version", "latest")], &["volume attribute version", "\"latest\"", "active"]),
            (&[("dataset", "llama"), ("version", "0")], &["volume attribute version", "version number"]),
            (&[("dataset", "llama"), ("mode", "everywhere")], &["volume attribute mode", "auto, region, every-node"]),
            (&[("dataset", "llama"), ("startBeforeReady", "yes")], &["volume attribute startBeforeReady", "\"true\""]),
            (&[("dataset", "llama"), ("verison", "3")], &["unknown volume attribute \"verison\"", "dataset, version"]),
        ];
        for (pairs, words) in cases {
            let message = invalid(VolumeSpec::parse(&attrs(pairs)));
            for w in *words {
                assert!(message.contains(w), "{pairs:?}: {message:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn requests_must_be_read_only_mounts_at_absolute_paths() {
        let ok = Publish::parse(&request(&[("dataset", "llama"), ("version", "1")])).unwrap();
        assert_eq!((ok.volume_id.as_str(), ok.spec.pin.clone()), ("pv-1", Pin::Version(1)));

        let mut block = request(&[("dataset", "llama")]);
        block.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(Default::default()));
        assert!(invalid(Publish::parse(&block)).contains("access type block"));

        let mut writer = request(&[("dataset", "llama")]);
        writer.volume_capability.as_mut().unwrap().access_mode.as_mut().unwrap().mode = Mode::SingleNodeWriter as i32;
        assert!(invalid(Publish::parse(&writer)).contains("SINGLE_NODE_WRITER with readonly=false"));
        writer.readonly = true;
        assert!(Publish::parse(&writer).is_ok(), "a writer mode published readonly is fine");

        let mut relative = request(&[("dataset", "llama")]);
        relative.target_path = "pods/x/mount".into();
        assert!(invalid(Publish::parse(&relative)).contains("must be an absolute path"));
        let mut nameless = request(&[("dataset", "llama")]);
        nameless.volume_id.clear();
        assert!(invalid(Publish::parse(&nameless)).contains("volume_id is missing"));
        let mut bare = request(&[("dataset", "llama")]);
        bare.volume_capability = None;
        assert!(invalid(Publish::parse(&bare)).contains("volume_capability is missing"));
    }
}
