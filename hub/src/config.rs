//! The hub's configuration file (TOML), typed and checked on load.
//!
//! `aqueduct-hub init` writes one; `deploy/hub/hub.example.toml` documents every key. Paths
//! that are relative are taken relative to `data_dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use aqueduct_core::metrics::{MetricsConfig, MetricsLimits};
use aqueduct_core::server::ServerLimits;
use aqueduct_proto::Size;
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
    /// What the hub serves at once (connections, calls, relay work per region).
    #[serde(default, skip_serializing_if = "LimitsConfig::is_default")]
    pub limits: LimitsConfig,
    /// What the hub gives the spokes that enrol (`[enrol]`).
    #[serde(default, skip_serializing_if = "EnrolConfig::is_default")]
    pub enrol: EnrolConfig,
    /// The key that signs new versions (`[signing]`).
    #[serde(default)]
    pub signing: SigningConfig,
    /// Watched datasets (`[triggers]`).
    #[serde(default, skip_serializing_if = "TriggersConfig::is_default")]
    pub triggers: TriggersConfig,
    /// Where the metadata is (`[database]`): SQLite in `data_dir` without it.
    #[serde(default, skip_serializing_if = "DatabaseConfig::is_default")]
    pub database: DatabaseConfig,
}

/// `[database]`: the hub's metadata in PostgreSQL, which several hubs can share. Without a
/// `url`, an embedded SQLite file (`data_dir/hub.db`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://USER@HOST:PORT/DATABASE`, with no password in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file that holds the password (relative to `data_dir`), read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// An environment variable that holds the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Connections to PostgreSQL this hub keeps (default 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// The CA certificate (PEM, relative to `data_dir`) that signs the server's: every
    /// connection is TLS then, the server's certificate verified (for its host in `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl DatabaseConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// What is wrong with the section, said with the key's name.
    fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.url else {
            if self.password_file.is_some()
                || self.password_env.is_some()
                || self.connections.is_some()
                || self.ca_file.is_some()
            {
                return Err("database.url is missing: password_file, password_env, connections and ca_file are for PostgreSQL (database.url = \"postgres://USER@HOST:5432/DATABASE\")".into());
            }
            return Ok(());
        };
        let parsed = url::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "postgres" | "postgresql"));
        let Some(parsed) = parsed else {
            return Err(format!(
                "database.url {:?} is not a PostgreSQL URL (postgres://USER@HOST:5432/DATABASE)",
                crate::store::sql::redact(url)
            ));
        };
        if parsed.password().is_some() {
            return Err("database.url holds a password: put it in database.password_file or database.password_env instead (the URL is logged and shown)".into());
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err("database.password_file and database.password_env are both set: keep one".into());
        }
        if self.connections == Some(0) {
            return Err("database.connections must be at least 1".into());
        }
        Ok(())
    }
}

/// `[triggers]`: the task that checks watched datasets (`aq dataset set NAME --watch-every`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// Whether this hub checks watched datasets at all (watches can be set either way).
    pub enabled: bool,
    /// The shortest interval a watch may have (each check lists the dataset's prefix).
    #[serde(with = "aqueduct_core::server::human::duration")]
    pub min_interval: Duration,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self { enabled: true, min_interval: Duration::from_secs(10) }
    }
}

impl TriggersConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The lowest `min_interval` taken: each check lists the dataset's prefix.
    pub const LOWEST_MIN_INTERVAL: Duration = Duration::from_secs(1);
}

/// `[signing]`: which key signs the versions the hub cuts. Every `*.key` file beside it is
/// published too (in region bundles and `aqueduct-hub signing-key show`), so that spokes can
/// trust a new key before the hub signs with it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The signing key's file (0600), relative to `data_dir`; `aqueduct-hub init` makes it,
    /// `aqueduct-hub signing-key new` makes another.
    pub key: PathBuf,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self { key: "signing/hub.key".into() }
    }
}

/// `[enrol]`: the certificates of the nodes that enrol (with a token) or renew.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolConfig {
    /// How long a node's certificate is valid from its issue; its spoke renews it at about 2/3
    /// of that (default 720h: 30 days).
    #[serde(with = "aqueduct_core::server::human::duration")]
    pub node_certificate_lifetime: Duration,
}

impl Default for EnrolConfig {
    fn default() -> Self {
        Self { node_certificate_lifetime: Duration::from_secs(30 * 24 * 3600) }
    }
}

impl EnrolConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The shortest lifetime taken: a spoke needs time to renew before expiry.
    pub const MIN_LIFETIME: Duration = Duration::from_secs(10);
}

/// `[limits]`: how much the hub takes on at once, so that no client (nor a flood of
/// connections) can exhaust it. The defaults fit a hub of 1000 spokes; each key is described,
/// with what its default allows, in `deploy/hub/hub.example.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// TLS connections held at once (each spoke keeps about two); past it, new connections
    /// are closed at once and their clients retry.
    pub max_connections: usize,
    /// Connections in their TLS handshake at once; past it, the oldest is dropped.
    pub max_handshakes: usize,
    /// How long a connection may take to complete its TLS handshake.
    #[serde(with = "aqueduct_core::server::human::duration")]
    pub handshake_timeout: Duration,
    /// Calls one connection may carry at once (HTTP/2 streams; clients queue past it).
    pub max_streams_per_connection: u32,
    /// `FetchChunks` streams the relay serves at once per region.
    pub fetch_streams_per_region: usize,
    /// Chunk bytes the relay holds at once per region: read from the source and not yet
    /// handed to the connection.
    #[serde(with = "aqueduct_core::server::human::size")]
    pub relay_memory_per_region: Size,
    /// Chunks read from the sources kept in memory for other regions that want them soon
    /// after (shared by all regions; 0: none kept, only reads at the same moment shared).
    #[serde(with = "aqueduct_core::server::human::size")]
    pub relay_cache: Size,
    /// Versions' chunk indexes (where each chunk is in its source) the relay keeps in memory,
    /// by an estimate of their size; the least recently used go first and are read from the
    /// database again when asked for.
    #[serde(with = "aqueduct_core::server::human::size")]
    pub index_cache: Size,
    /// How long a `FetchChunks` call waits for one of its region's streams before it is
    /// refused with RESOURCE_EXHAUSTED (spokes retry with backoff).
    #[serde(with = "aqueduct_core::server::human::duration")]
    pub fetch_wait: Duration,
    /// Connections to the metrics endpoint at once.
    pub metrics_connections: usize,
    /// How long a metrics client has to send its request's headers.
    #[serde(with = "aqueduct_core::server::human::duration")]
    pub metrics_header_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_handshakes: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 128,
            fetch_streams_per_region: 64,
            relay_memory_per_region: Size(128 << 20),
            relay_cache: Size(256 << 20),
            index_cache: Size(64 << 20),
            fetch_wait: Duration::from_secs(10),
            metrics_connections: 16,
            metrics_header_timeout: Duration::from_secs(5),
        }
    }
}

impl LimitsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the section; the message names the key and says what to write instead.
    pub fn validate(&self) -> Result<(), String> {
        self.server().validate(MIN_STREAMS_PER_CONNECTION)?;
        self.metrics().validate()?;
        if self.fetch_streams_per_region == 0 {
            return Err("limits.fetch_streams_per_region must be at least 1".into());
        }
        let two_chunks = 2 * aqueduct_proto::MAX_CHUNK_BYTES as u64;
        if self.relay_memory_per_region.0 < two_chunks {
            return Err(format!(
                "limits.relay_memory_per_region is {}; it must hold at least two chunks ({}), e.g. \"128MiB\"",
                self.relay_memory_per_region,
                Size(two_chunks)
            ));
        }
        Ok(())
    }

    /// The accept path's and tonic's limits.
    pub fn server(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            handshake_timeout: self.handshake_timeout,
            max_streams_per_connection: self.max_streams_per_connection,
        }
    }

    /// The metrics endpoint's limits.
    pub fn metrics(&self) -> MetricsLimits {
        MetricsLimits { max_connections: self.metrics_connections, header_timeout: self.metrics_header_timeout }
    }
}

/// The fewest calls per connection a spoke can work with: its watch, a report and fetches.
pub const MIN_STREAMS_PER_CONNECTION: u32 = 4;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The root CA's certificate: the trust anchor of every certificate allowed to connect.
    pub ca: PathBuf,
    /// The key the hub issues certificates with: the issuer's (`issuer`) when there is one,
    /// else the CA's own (a hub made before issuers existed).
    pub ca_key: PathBuf,
    /// The issuing CA's certificate, an intermediate signed by `ca` (whose key the hub never
    /// needs: `init` writes it apart, to be kept offline). Absent: `ca` issues itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<PathBuf>,
    /// The hub's own certificate (followed by the issuer's) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: "pki/ca.pem".into(),
            ca_key: "pki/issuer.key".into(),
            issuer: Some("pki/issuer.pem".into()),
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
        config.limits.validate().map_err(invalid)?;
        config.database.validate().map_err(invalid)?;
        if config.enrol.node_certificate_lifetime < EnrolConfig::MIN_LIFETIME {
            return Err(invalid(format!(
                "enrol.node_certificate_lifetime must be at least {:?} (spokes renew at about 2/3 of it), e.g. \"720h\"",
                EnrolConfig::MIN_LIFETIME
            )));
        }
        if config.triggers.min_interval < TriggersConfig::LOWEST_MIN_INTERVAL {
            return Err(invalid(format!(
                "triggers.min_interval must be at least {:?} (each check lists a dataset's source), e.g. \"10s\"",
                TriggersConfig::LOWEST_MIN_INTERVAL
            )));
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
        // The example's [limits] are the defaults, written out.
        assert_eq!(config.limits, LimitsConfig::default());
        assert!(!text.replace("[limits]", "").contains("\n[limits"), "one [limits] section");
        assert_eq!(config.enrol, EnrolConfig::default(), "the example's lifetime is the default, 30 days");
        let short = text.replace("node_certificate_lifetime = \"720h\"", "node_certificate_lifetime = \"5s\"");
        let err = HubConfig::parse(&short, Path::new("hub.example.toml")).unwrap_err().to_string();
        assert!(err.contains("enrol.node_certificate_lifetime must be at least"), "{err}");
        assert_eq!(config.triggers, TriggersConfig::default(), "the example's [triggers] are the defaults");
        let eager = text.replace("min_interval = \"10s\"", "min_interval = \"100ms\"");
        let err = HubConfig::parse(&eager, Path::new("hub.example.toml")).unwrap_err().to_string();
        assert!(err.contains("triggers.min_interval must be at least"), "{err}");
    }

    const BASE: &str = "listen = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n";

    #[test]
    fn the_database_section_is_checked_and_the_example_parses() {
        let parse = |db: &str| HubConfig::parse(&format!("{BASE}[database]\n{db}"), Path::new("h.toml"));
        let config = parse("url = \"postgres://aq@db:5432/aq\"\npassword_file = \"pw\"\nconnections = 3\n").unwrap();
        assert_eq!(config.database.url.as_deref(), Some("postgres://aq@db:5432/aq"));
        for (db, words) in [
            ("url = \"postgres://aq:secret@db/aq\"", &["holds a password", "password_file"][..]),
            ("url = \"mysql://db/aq\"", &["not a PostgreSQL URL"]),
            ("password_file = \"pw\"", &["database.url is missing"]),
            ("url = \"postgres://db/aq\"\npassword_file = \"a\"\npassword_env = \"B\"", &["keep one"]),
            ("url = \"postgres://db/aq\"\nconnections = 0", &["database.connections"]),
            ("url = \"postgres://db/aq\"\npasword = \"x\"", &["pasword"]),
        ] {
            let err = parse(db).unwrap_err().to_string();
            assert!(words.iter().all(|w| err.contains(w)), "{db}: {err}");
            assert!(!err.contains("secret"), "the password is never shown: {err}");
        }
        // The example's commented [database], uncommented, is a valid section.
        let example = include_str!("../../deploy/hub/hub.example.toml");
        let section: String = example
            .lines()
            .skip_while(|l| *l != "# [database]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ").trim_start_matches('#')))
            .collect();
        let section = section.replace("password_env", "# password_env");
        let config = HubConfig::parse(&format!("{BASE}{section}"), Path::new("h.toml")).unwrap();
        assert_eq!(config.database.connections, Some(8));
        assert!(HubConfig::parse(&config.to_toml(), Path::new("h.toml")).unwrap() == config);
    }

    #[test]
    fn limits_take_units_and_errors_name_the_key() {
        let parse = |limits: &str| HubConfig::parse(&format!("{BASE}[limits]\n{limits}"), Path::new("h.toml"));
        let config =
            parse("handshake_timeout = \"2s\"\nrelay_memory_per_region = \"1GiB\"\nmax_connections = 10\n").unwrap();
        assert_eq!(config.limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.relay_memory_per_region, Size(1 << 30));
        assert_eq!(config.limits.server().max_connections, 10);
        assert_eq!(config.limits.fetch_streams_per_region, 64, "what is left out is the default");
        for (limits, key) in [
            ("max_connections = 0", "limits.max_connections"),
            ("max_handshakes = 0", "limits.max_handshakes"),
            ("max_streams_per_connection = 2", "limits.max_streams_per_connection"),
            ("fetch_streams_per_region = 0", "limits.fetch_streams_per_region"),
            ("relay_memory_per_region = \"1MiB\"", "limits.relay_memory_per_region"),
            ("handshake_timeout = \"0s\"", "limits.handshake_timeout"),
            ("metrics_header_timeout = \"0ms\"", "limits.metrics_header_timeout"),
            ("metrics_connections = 0", "limits.metrics_connections"),
            ("handshake_timeout = \"soon\"", "handshake_timeout"),
            ("handshake_timeout = 10", "handshake_timeout"),
            ("relay_memory_per_region = \"lots\"", "relay_memory_per_region"),
            ("max_connections = -1", "max_connections"),
            ("max_conections = 5", "max_conections"),
        ] {
            let err = parse(limits).unwrap_err().to_string();
            assert!(err.contains(key), "{limits}: {err}");
        }
        // A config written back (by init) leaves out default limits and keeps others.
        let mut config = parse("").unwrap();
        assert!(!config.to_toml().contains("[limits]"));
        config.limits.relay_memory_per_region = Size((64 << 20) + 1);
        config.limits.fetch_wait = Duration::from_millis(1500);
        let again = HubConfig::parse(&config.to_toml(), Path::new("h.toml")).unwrap();
        assert_eq!(again.limits, config.limits);
    }

    /// The keys of `[limits]`, and values of every TOML kind for them.
    const LIMIT_KEYS: [&str; 9] = [
        "max_connections",
        "max_handshakes",
        "handshake_timeout",
        "max_streams_per_connection",
        "fetch_streams_per_region",
        "relay_memory_per_region",
        "fetch_wait",
        "metrics_connections",
        "metrics_header_timeout",
    ];

    fn limits_table() -> impl proptest::strategy::Strategy<Value = Vec<(String, String)>> {
        aqueduct_testkit::fuzz::flat_table(&LIMIT_KEYS)
    }

    proptest::proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(1024))]

        /// Whatever `[limits]` holds, loading never panics, and a refusal names one of the
        /// keys that are there.
        #[test]
        fn fuzz_limits_never_panic_and_errors_name_the_key(table in limits_table()) {
            let text: String = table.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            match HubConfig::parse(&format!("{BASE}[limits]\n{text}"), Path::new("h.toml")) {
                Ok(config) => proptest::prop_assert!(config.limits.validate().is_ok()),
                Err(e) => {
                    let e = e.to_string();
                    proptest::prop_assert!(table.iter().any(|(k, _)| e.contains(k.as_str())), "{e}");
                }
            }
        }
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
