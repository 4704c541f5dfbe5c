//! The spoke's config file (spoke.toml) under any TOML: a config or an error, never a panic;
//! one key broken in a valid config gives an error that names it.

use std::path::Path;

use aqueduct_spoke::{Overrides, SpokeConfig};
use aqueduct_testkit::fuzz::{self, Kind};
use proptest::prelude::*;

const VALID: &str = r#"
hub = "https://hub.example:7443"
node = "node-1"
data_dir = "/var/lib/aqueduct-spoke"
socket = "spoke.sock"
[tls]
ca = "credentials/ca.pem"
cert = "credentials/cert.pem"
key = "credentials/key.pem"
[trust]
signing_keys = ["ed25519:1111111111111111111111111111111111111111111111111111111111111111"]
[replication]
streams = 4
chunks_per_request = 8
[peer]
listen = "0.0.0.0:7444"
advertise = "10.0.3.17:7444"
replicas = 1
[cache]
memory = "4GiB"
disk = "200GiB"
high_watermark = 0.95
low_watermark = 0.85
memory_only = false
[csi]
socket = "csi.sock"
ready_timeout = "90s"
start_before_ready = false
[operator]
enabled = false
namespace = "inference"
lease_name = "aqueduct-operator"
lease_namespace = "aqueduct-system"
[metrics]
listen = "0.0.0.0:9464"
"#;

const KEYS: &[fuzz::Key] = &[
    ("hub", Kind::HttpsUrl, true),
    ("node", Kind::Name, true),
    ("data_dir", Kind::Text, true),
    ("socket", Kind::Text, false),
    ("tls.ca", Kind::Text, true),
    ("tls.cert", Kind::Text, true),
    ("tls.key", Kind::Text, true),
    ("replication.streams", Kind::Count, false),
    ("replication.chunks_per_request", Kind::Count, false),
    ("peer.listen", Kind::Address, true),
    ("peer.advertise", Kind::Text, false),
    ("peer.replicas", Kind::Count, false),
    ("cache.memory", Kind::Size, false),
    ("cache.disk", Kind::Size, false),
    ("cache.high_watermark", Kind::Fraction, false),
    ("cache.low_watermark", Kind::Fraction, false),
    ("cache.memory_only", Kind::Bool, false),
    ("csi.socket", Kind::Text, false),
    ("csi.ready_timeout", Kind::Duration, false),
    ("csi.start_before_ready", Kind::Bool, false),
    ("operator.enabled", Kind::Bool, false),
    ("operator.namespace", Kind::Text, false),
    ("operator.lease_name", Kind::Text, false),
    ("operator.lease_namespace", Kind::Text, false),
    ("metrics.listen", Kind::Address, true),
];

const NAMES: &[&str] = &[
    "hub",
    "node",
    "data_dir",
    "socket",
    "tls",
    "ca",
    "cert",
    "key",
    "replication",
    "streams",
    "chunks_per_request",
    "peer",
    "listen",
    "advertise",
    "replicas",
    "cache",
    "memory",
    "disk",
    "high_watermark",
    "low_watermark",
    "memory_only",
    "csi",
    "ready_timeout",
    "start_before_ready",
    "operator",
    "enabled",
    "namespace",
    "lease_name",
    "lease_namespace",
    "metrics",
    "trust",
    "signing_keys",
    "signing_keys_file",
];

fn parse(text: &str, overrides: &Overrides) -> Result<SpokeConfig, String> {
    SpokeConfig::parse_with(text, Path::new("/etc/aqueduct/spoke.toml"), overrides).map_err(|e| e.to_string())
}

#[test]
fn the_valid_config_of_the_fuzz_tests_is_valid() {
    parse(VALID, &Overrides::default()).unwrap();
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    #[test]
    fn fuzz_spoke_config_from_any_toml(
        text in prop_oneof![fuzz::toml_document(NAMES), "(?s).{0,64}"],
        node in proptest::option::of(".{0,8}"),
        advertise in proptest::option::of(".{0,8}"),
    ) {
        let overrides = Overrides { node: node.clone(), advertise, hub: None };
        if let Ok(config) = parse(&text, &overrides) {
            prop_assert!(aqueduct_proto::validate_name("node", &config.node).is_ok());
            if let Some(node) = node {
                prop_assert_eq!(config.node, node);
            }
            prop_assert!(config.data_dir.is_absolute());
        }
    }

    #[test]
    fn fuzz_spoke_config_errors_name_the_key((text, key) in fuzz::broken_config(VALID, KEYS)) {
        let err = parse(&text, &Overrides::default()).unwrap_err();
        prop_assert!(fuzz::names_key(&err, &key), "{} is not named in: {}\n{}", key, err, text);
    }
}
