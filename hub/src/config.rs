//! The hub's configuration file (TOML), typed and checked on load.
//!
//! `aqueduct-hub init` writes one; `deploy/hub/hub.example.toml` documents every key. Paths
//! that are relative are taken relative to `data_dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aqueduct_proto::metrics::MetricsConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read hub config {path}: {source}; run `aqueduct-hub init` to create one")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("hub config {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address of the gRPC API (mutual TLS).
    pub listen: SocketAddr,
    /// Database, PKI and admin bundle live here.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// The Prometheus endpoint (`GET /metrics`); without this section, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA that issued every certificate allowed to connect.
    pub ca: PathBuf,
    /// The CA's key: the hub issues regions' certificates with it.
    pub ca_key: PathBuf,
    /// The hub's own certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: "pki/ca.pem".into(),
            ca_key: "pki/ca.key".into(),
            cert: "pki/hub.pem".into(),
            key: "pki/hub.key".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Objects chunked and hashed at once; default: the number of cores.
    pub parallelism: Option<usize>,
}

impl HubConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if config.snapshot.parallelism == Some(0) {
            return Err(invalid("snapshot.parallelism must be at least 1".into()));
        }
        if !config.data_dir.is_absolute() {
            return Err(invalid(format!("data_dir {:?} must be an absolute path", config.data_dir)));
        }
        Ok(config)
    }

    /// `path` made absolute against the data directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.data_dir.join(path)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("hub.db")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz::{self, Kind};
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = "listen = \"127.0.0.1:7443\"\ndata_dir = \"/var/lib/aqueduct-hub\"\n\
        [tls]\nca = \"pki/ca.pem\"\nca_key = \"pki/ca.key\"\ncert = \"pki/hub.pem\"\nkey = \"pki/hub.key\"\n\
        [snapshot]\nparallelism = 2\n[metrics]\nlisten = \"127.0.0.1:9465\"\n";

    const KEYS: &[fuzz::Key] = &[
        ("listen", Kind::Address, true),
        ("data_dir", Kind::AbsolutePath, true),
        ("tls.ca", Kind::Text, true),
        ("tls.ca_key", Kind::Text, true),
        ("tls.cert", Kind::Text, true),
        ("tls.key", Kind::Text, true),
        ("snapshot.parallelism", Kind::Count, false),
        ("metrics.listen", Kind::Address, true),
    ];

    proptest! {
        #![proptest_config(fuzz::config(3000))]

        /// Any TOML over the config's names, or any text: a config or an error, never a panic.
        #[test]
        fn fuzz_hub_config_from_any_toml(
            text in prop_oneof![fuzz::toml_document(&["listen", "data_dir", "tls", "ca", "ca_key", "cert", "key", "snapshot", "parallelism", "metrics"]), "(?s).{0,64}"]
        ) {
            if let Ok(config) = HubConfig::parse(&text, Path::new("hub.toml")) {
                prop_assert!(config.data_dir.is_absolute());
                prop_assert_eq!(HubConfig::parse(&config.to_toml(), Path::new("hub.toml")).unwrap(), config);
            }
        }

        /// One key broken in a valid config: the error names it.
        #[test]
        fn fuzz_hub_config_errors_name_the_key((text, key) in fuzz::broken_config(VALID, KEYS)) {
            let err = HubConfig::parse(&text, Path::new("hub.toml")).unwrap_err().to_string();
            prop_assert!(fuzz::names_key(&err, &key), "{} is not named in: {}\n{}", key, err, text);
        }
    }

    #[test]
    fn the_valid_config_of_the_fuzz_tests_is_valid() {
        HubConfig::parse(VALID, Path::new("hub.toml")).unwrap();
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../deploy/hub/hub.example.toml");
        let config = HubConfig::parse(text, Path::new("hub.example.toml")).unwrap();
        assert_eq!(config.snapshot.parallelism, Some(2));
        assert_eq!(config.metrics.as_ref().map(|m| m.listen.port()), Some(9465));
        assert_eq!(config.resolve(&config.tls.ca), Path::new("/var/lib/aqueduct-hub/pki/ca.pem"));
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            HubConfig::parse("listen = \"127.0.0.1:1\"\ndata_dir = \"/x\"\nlisten_port = 3\n", Path::new("h.toml"))
                .unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
        let err = HubConfig::parse("listen = \"nowhere\"\ndata_dir = \"/x\"\n", Path::new("h.toml")).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = HubConfig::parse("listen = \"127.0.0.1:1\"\ndata_dir = \"x\"\n", Path::new("h.toml")).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = HubConfig::parse(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n[snapshot]\nparallelism = 0\n",
            Path::new("h.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("parallelism"), "{err}");
        let err = HubConfig::parse(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n[metrics]\nlisten = \"0.0.0.0:9465\"\npath = \"/m\"\n",
            Path::new("h.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("path"), "{err}");
    }
}
