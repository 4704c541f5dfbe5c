//! The AqueductVolume under any spec: validation and the status it leads to never panic, an
//! invalid spec is a Failed volume whose conditions say why, a valid one's status adds up, and
//! the volume attributes the operator writes are what the CSI node plugin reads back.

use std::collections::HashMap;

use aqueduct_proto::ReplicationMode;
use aqueduct_spoke::csi::volume::{Pin, VolumeSpec};
use aqueduct_spoke::operator::build::{self, ClaimProblem, Observation, Resolved};
use aqueduct_spoke::operator::crd::{AqueductVolume, AqueductVolumeSpec, Phase, VolumeMode};
use aqueduct_spoke::operator::region::{Holding, RegionVersion};
use aqueduct_testkit::fuzz;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

const DATASETS: &[&str] = &["llama", "llama-3-8b", "x", "Llama", "", "-x", "a b"];

fn mode() -> impl Strategy<Value = VolumeMode> {
    prop_oneof![Just(VolumeMode::Auto), Just(VolumeMode::Region), Just(VolumeMode::EveryNode)]
}

fn spec() -> impl Strategy<Value = AqueductVolumeSpec> {
    (
        prop_oneof![4 => proptest::sample::select(DATASETS).prop_map(str::to_string), 1 => ".{0,70}"],
        proptest::option::of(prop_oneof![0u64..4, any::<u64>()]),
        mode(),
        any::<bool>(),
        proptest::option::weighted(
            0.3,
            prop_oneof![4 => proptest::sample::select(TAGS).prop_map(str::to_string), 1 => ".{0,8}"],
        ),
    )
        .prop_map(|(dataset, version, mode, start_before_ready, tag)| AqueductVolumeSpec {
            dataset,
            version,
            tag,
            mode,
            start_before_ready,
        })
}

const TAGS: &[&str] = &["stable", "canary", "v3", "active", "Stable", "-a", "prod-eu"];

/// The dataset's tags as the hub sent them (name, version).
fn tags() -> impl Strategy<Value = Vec<(String, u64)>> {
    proptest::collection::vec(
        (proptest::sample::select(&["stable", "canary", "prod-eu"][..]).prop_map(str::to_string), 0u64..5),
        0..3,
    )
}

fn versions() -> impl Strategy<Value = Vec<RegionVersion>> {
    let version = (proptest::sample::select(DATASETS), prop_oneof![1u64..4, any::<u64>()], any::<u64>(), any::<bool>())
        .prop_map(|(dataset, version, total_bytes, active)| RegionVersion {
            dataset: dataset.to_string(),
            version,
            total_bytes,
            active,
            mode: ReplicationMode::Auto,
        });
    proptest::collection::vec(version, 0..6)
}

fn volume(spec: AqueductVolumeSpec, namespace: Option<&str>, uid: Option<&str>) -> AqueductVolume {
    let mut aqv = AqueductVolume::new("vol", spec);
    aqv.metadata.namespace = namespace.map(str::to_string);
    aqv.metadata.uid = uid.map(str::to_string);
    aqv.metadata.generation = Some(3);
    aqv
}

fn now() -> Time {
    Time("2026-11-25T01:00:00Z".parse().unwrap())
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    #[test]
    fn fuzz_aqueduct_volume_specs(
        spec in spec(),
        versions in versions(),
        tags in tags(),
        cached_bytes in any::<u64>(),
        ready in any::<bool>(),
        capacity in proptest::option::of(any::<u64>()),
        conflict in any::<bool>(),
        namespace in proptest::option::of(prop_oneof![Just(""), Just("inference")]),
        uid in proptest::option::of(prop_oneof![Just(""), Just("0b7e6a52")]),
    ) {
        let aqv = volume(spec.clone(), namespace, uid);
        let resolved = build::validate_tagged(&aqv, &versions, &tags);
        let claim = conflict.then(|| ClaimProblem::Conflict { namespace: "inference".into(), name: "vol".into() });
        let seen = Observation { resolved: resolved.clone(), holding: Holding { cached_bytes, ready }, capacity, claim };
        let status = build::status(&aqv, &seen, &now());
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_).cloned();
        prop_assert!(status.conditions.iter().all(|c| c.observed_generation == Some(3)));
        match resolved {
            Err(invalid) => {
                // Never a crash: a Failed volume that says why.
                prop_assert_eq!(status.phase, Phase::Failed);
                let valid = condition(build::VALID).unwrap();
                prop_assert_eq!((valid.status.as_str(), valid.reason.as_str()), ("False", invalid.reason()));
                prop_assert_eq!(valid.message, invalid.to_string());
                prop_assert_eq!(condition(build::READY).unwrap().status, "False");
            }
            Ok(Resolved { version, newest }) => {
                prop_assert!(aqueduct_proto::validate_name("dataset", &spec.dataset).is_ok());
                prop_assert_eq!(&version.dataset, &spec.dataset);
                match (spec.version, &spec.tag) {
                    (Some(v), None) => prop_assert_eq!(version.version, v),
                    (None, None) => prop_assert!(version.active),
                    // A tag: the version it names (the first of that name), never with a version.
                    (None, Some(tag)) => {
                        prop_assert!(aqueduct_proto::validate_tag(tag).is_ok());
                        prop_assert_eq!(tags.iter().find(|(n, _)| n == tag).map(|t| t.1), Some(version.version));
                    }
                    (Some(_), Some(_)) => prop_assert!(false, "a version and a tag passed"),
                }
                prop_assert!(newest >= version.version);
                prop_assert_eq!(condition(build::VALID).unwrap().status, "True");
                prop_assert_eq!(status.version_lag, Some(newest - version.version));
                let (total, cached) = (status.total_bytes.unwrap(), status.cached_bytes.unwrap());
                prop_assert!(cached <= total);
                let percent: f64 = status.cached_percentage.unwrap().trim_end_matches('%').parse().unwrap();
                prop_assert!((0.0..=100.0).contains(&percent));
                let phase_ok = match (conflict, ready) {
                    (true, _) => status.phase == Phase::Failed,
                    (false, true) => status.phase == Phase::Ready,
                    (false, false) => matches!(status.phase, Phase::Pending | Phase::Transferring),
                };
                prop_assert!(phase_ok, "{:?} with conflict {} ready {}", status.phase, conflict, ready);

                // What the operator writes into the PV is what the node plugin reads.
                let attributes: HashMap<String, String> = build::volume_attributes(&aqv).into_iter().collect();
                let read = VolumeSpec::parse(&attributes).unwrap();
                prop_assert_eq!(&read.dataset, &spec.dataset);
                let pin = match &spec.tag {
                    Some(tag) => Pin::Tag(tag.clone()),
                    None => spec.version.map_or(Pin::Active, Pin::Version),
                };
                prop_assert_eq!(read.pin, pin);
                prop_assert_eq!(read.mode, Some(ReplicationMode::from(spec.mode)));
                prop_assert_eq!(read.start_before_ready, Some(spec.start_before_ready));
            }
        }
        // Built only from what the API server always sets; never a panic without it.
        match build::build(&aqv) {
            Ok((pv, pvc)) => {
                prop_assert_eq!(pv.metadata.name, Some(format!("aqv-{}", uid.unwrap())));
                prop_assert_eq!(pvc.metadata.namespace.as_deref(), namespace);
                prop_assert!(namespace.is_some_and(|n| !n.is_empty()) && uid.is_some_and(|u| !u.is_empty()));
            }
            Err(_) => prop_assert!(namespace.is_none_or(str::is_empty) || uid.is_none_or(str::is_empty)),
        }
    }

    /// Any YAML as the API server's object: a volume or an error, never a panic.
    #[test]
    fn fuzz_aqueduct_volume_from_yaml(
        dataset in prop_oneof![Just("llama".to_string()), ".{0,8}"],
        version in prop_oneof![Just("3".to_string()), Just("-1".to_string()), Just("\"3\"".to_string()), Just("18446744073709551616".to_string()), ".{0,6}"],
        mode in prop_oneof![Just("region"), Just("every-node"), Just("everywhere"), Just("3")],
        extra in prop_oneof![Just(""), Just("  startBeforeReady: maybe\n"), Just("  unknown: 1\n"), Just("  dataset: twice\n"), Just("  tag: stable\n"), Just("  tag: 3\n"), Just("  tag: [a]\n")],
    ) {
        let yaml = format!(
            "apiVersion: aqueduct.io/v1alpha1\nkind: AqueductVolume\nmetadata:\n  name: v\n  namespace: n\n  uid: u\nspec:\n  dataset: {dataset:?}\n  version: {version}\n  mode: {mode}\n{extra}"
        );
        if let Ok(aqv) = serde_saphyr::from_str::<AqueductVolume>(&yaml) {
            let versions = [RegionVersion { dataset: "llama".into(), version: 3, total_bytes: 1, active: true, mode: ReplicationMode::Auto }];
            let seen = Observation { resolved: build::validate(&aqv, &versions), holding: Holding::default(), capacity: None, claim: None };
            let _ = build::status(&aqv, &seen, &now());
            let _ = build::build(&aqv);
        }
    }
}
