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
    use super::*;

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
