//! The spoke's configuration: the TOML file (`spoke.toml`, see
//! `deploy/spoke/spoke.example.toml`), what the command line replaces in it ([`Overrides`]),
//! its validation (errors name the key), and what is derived from it: the hub's endpoint,
//! the local API's socket. The node's certificate is [`crate::enrol`]'s.

use std::path::{Path, PathBuf};

use aqueduct_proto::hub::v1 as pb;
use serde::Deserialize;
use tonic::transport::Endpoint;

use crate::cache::CacheConfig;
use crate::csi::CsiConfig;
use crate::hubs::HubAddresses;
use crate::limits::LimitsConfig;
use crate::operator::OperatorConfig;
use crate::trust::TrustConfig;

/// A config that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read spoke config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("spoke config {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read {what} {path}: {source}")]
    Credentials { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Where the local API listens unless the config says: inside the data directory.
const DEFAULT_SOCKET: &str = "spoke.sock";

/// The spoke's configuration file (TOML). Relative paths are relative to the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeConfig {
    /// The hub's address, https://HOST:PORT, or the addresses of several hubs that serve one
    /// state (`hub = ["https://a:7443", "https://b:7443"]`), tried in that order.
    pub hub: HubAddresses,
    /// This node's name, for the hub's log and the region's peers. May be left out of the file
    /// when the command line gives it ([`Overrides::node`]: `--node`, `AQUEDUCT_NODE`).
    #[serde(default)]
    pub node: String,
    /// Where the chunk store lives.
    pub data_dir: PathBuf,
    /// The hub's CA, and optionally a node certificate issued without enrolment.
    pub tls: TlsFiles,
    /// Enrolment with a bootstrap token (`aq region token`), when the node has no valid
    /// certificate.
    #[serde(default)]
    pub enrol: Option<EnrolConfig>,
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// The local API's unix socket (mounts, sidecars); default `DATA_DIR/spoke.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Peer exchange with the other spokes of the region (a *peer share*). Without it this
    /// spoke serves no peers and owns no chunk: in a region whose other spokes have a share it
    /// is a sidecar (replicates nothing, does not count for readiness, asks the owners for
    /// what it reads); alone, it holds every version itself, over the link.
    #[serde(default)]
    pub peer: Option<PeerConfig>,
    /// The chunk cache's tiers and quotas.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Who holds the node's FUSE mounts (`[mounts]`): see [`crate::holder`].
    #[serde(default)]
    pub mounts: crate::holder::MountsConfig,
    /// Serve the CSI node plugin (in Kubernetes). Without it the spoke serves none.
    #[serde(default)]
    pub csi: Option<CsiConfig>,
    /// The Kubernetes operator (AqueductVolumes into PVCs). Without it, none runs here.
    #[serde(default)]
    pub operator: Option<OperatorConfig>,
    /// The Prometheus endpoint (`GET /metrics`); without this section, none.
    #[serde(default)]
    pub metrics: Option<aqueduct_core::metrics::MetricsConfig>,
    /// What the spoke's servers take on at once.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The hub signing keys it trusts (`[trust]`): required.
    #[serde(default)]
    pub trust: TrustConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Where to serve the region's peers, `IP:PORT` (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// The `HOST:PORT` the other spokes reach this one at; default: `listen` (which then must
    /// name an address, not 0.0.0.0).
    #[serde(default)]
    pub advertise: Option<String>,
    /// In `region` mode, how many spokes hold each chunk (its first owners). Default 1.
    #[serde(default = "one")]
    pub replicas: usize,
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The hub's CA certificate (`aq region add` writes it).
    pub ca: PathBuf,
    /// A certificate of this node and its key, issued without enrolment (scripted installs,
    /// tests). Without them, the spoke enrols (`[enrol]`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolConfig {
    /// A file holding a bootstrap token of the region (`aq region token`); in Kubernetes, a
    /// file of a mounted Secret. Read when the node has no valid certificate (at start, or
    /// once its certificate expired).
    pub token_file: PathBuf,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Fetch streams in flight at once.
    pub streams: usize,
    /// Chunks asked for per stream.
    pub chunks_per_request: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self { streams: 4, chunks_per_request: 8 }
    }
}

/// Values given on the command line (or in the environment) that replace the config file's.
///
/// What one file cannot know when many nodes share it: in Kubernetes the spoke's config is one
/// ConfigMap for the whole DaemonSet, while the node's name and the pod's address come from
/// the downward API, through `AQUEDUCT_NODE` and `AQUEDUCT_PEER_ADVERTISE`.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces `node`.
    pub node: Option<String>,
    /// Replaces `[peer] advertise` (the config must have a `[peer]` section).
    pub advertise: Option<String>,
    /// Replaces `hub` (one address or several, in the order they are tried).
    pub hub: Option<Vec<String>>,
}

impl SpokeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Overrides::default())
    }

    /// Loads the file, replaces what `overrides` gives, then validates the result.
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse_with(&text, path, overrides)
    }

    /// [`SpokeConfig::load_with`] on the text of the file at `path`.
    pub fn parse_with(text: &str, path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        let mut config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(node) = &overrides.node {
            config.node = node.clone();
        }
        if let Some(hub) = &overrides.hub {
            config.hub = HubAddresses(hub.clone());
        }
        if let Some(advertise) = &overrides.advertise {
            let Some(peer) = &mut config.peer else {
                return Err(invalid(format!(
                    "--advertise (AQUEDUCT_PEER_ADVERTISE) is {advertise:?} but the config has no [peer] section: add one or leave the address out"
                )));
            };
            peer.advertise = Some(advertise.clone());
        }
        config.hub.validate().map_err(invalid)?;
        if config.node.is_empty() {
            return Err(invalid("node is missing: set `node` in the config or pass --node (AQUEDUCT_NODE)".into()));
        }
        aqueduct_proto::validate_name("node", &config.node).map_err(|e| invalid(format!("node: {e}")))?;
        if let Some(peer) = &config.peer
            && peer.advertise.is_none()
            && peer.listen.ip().is_unspecified()
        {
            return Err(invalid(format!(
                "peer.listen is {}, which other spokes cannot reach: set peer.advertise to this node's HOST:PORT",
                peer.listen
            )));
        }
        config.cache.validate().map_err(invalid)?;
        // Whole copies count in the disk quota, with the chunks they are made from.
        config.mounts.fit(config.cache.disk, crate::cache::LARGEST_CHUNK * 2).map_err(invalid)?;
        if let Some(op) = &config.operator {
            if op.lease_name.is_empty() {
                return Err(invalid("operator.lease_name must not be empty".into()));
            }
            if op.namespace.as_deref() == Some("") {
                return Err(invalid("operator.namespace is empty: leave it out to watch every namespace".into()));
            }
        }
        if config.peer.as_ref().is_some_and(|p| p.replicas == 0) {
            return Err(invalid("peer.replicas must be at least 1".into()));
        }
        if config.replication.streams == 0 || config.replication.chunks_per_request == 0 {
            return Err(invalid("replication.streams and replication.chunks_per_request must be at least 1".into()));
        }
        if config.replication.chunks_per_request > aqueduct_proto::MAX_DIGESTS_PER_REQUEST {
            return Err(invalid(format!(
                "replication.chunks_per_request is {}; servers take at most {} digests per request",
                config.replication.chunks_per_request,
                aqueduct_proto::MAX_DIGESTS_PER_REQUEST
            )));
        }
        config.limits.validate().map_err(invalid)?;
        if config.tls.cert.is_some() != config.tls.key.is_some() {
            return Err(invalid(
                "tls.cert and tls.key go together: give both (a node's certificate and key) or neither".into(),
            ));
        }
        if config.tls.cert.is_none() && config.enrol.is_none() {
            return Err(invalid(
                "the node has no way to its certificate: add `[enrol] token_file = \"...\"` (a token from `aq region token REGION`), or tls.cert and tls.key".into(),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        config.trust.resolve(dir).map_err(invalid)?;
        let token_file = config.enrol.as_mut().map(|e| &mut e.token_file);
        let paths = [
            Some(&mut config.data_dir),
            Some(&mut config.tls.ca),
            config.tls.cert.as_mut(),
            config.tls.key.as_mut(),
            token_file,
        ];
        for p in paths.into_iter().flatten() {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        let socket = config.socket.take().unwrap_or_else(|| DEFAULT_SOCKET.into());
        config.socket = Some(if socket.is_relative() { config.data_dir.join(socket) } else { socket });
        config.mounts.resolve(&config.data_dir);
        if let Some(csi) = &mut config.csi {
            csi.resolve(&config.data_dir);
            if csi.ready_timeout.is_zero() {
                return Err(invalid("csi.ready_timeout must be more than 0s".into()));
            }
        }
        Ok(config)
    }

    /// The local API's socket: `socket`, or `DATA_DIR/spoke.sock`.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.data_dir.join(DEFAULT_SOCKET))
    }

    /// The hubs' endpoint. Its URI is the first hub's as `http://` (the node's TLS connector,
    /// which presents the current certificate, does TLS: see [`crate::tls`]); which hub a
    /// connection goes to, and how long a connect may take, is the connector's of
    /// [`crate::hubs`], which every connection to a hub goes through. Its connections are
    /// pinged, so that a hub that went silent is left for the next.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let bad = |e: tonic::transport::Error| ConfigError::Invalid { path: "hub".into(), message: e.to_string() };
        let first = self.hub.0.first().map(String::as_str).unwrap_or_default();
        Ok(Endpoint::from_shared(crate::tls::plain_uri(first))
            .map_err(bad)?
            .http2_keep_alive_interval(crate::hubs::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::hubs::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(aqueduct_proto::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(aqueduct_proto::CONNECTION_WINDOW_BYTES))
    }
}

/// Writes a node's credentials bundle into `dir` (`ca.pem`, `cert.pem`, `key.pem` with mode
/// 0600, and the hub's signing keys, `signing.pub`) and a `spoke.toml` for that node that uses
/// it, with its store in `dir/store`. Returns the config's path. For tests and scripted
/// installs (a spoke enrols otherwise: see [`write_enrol_config`]).
pub fn write_node_config(
    dir: &Path,
    hub: &str,
    node: &str,
    bundle: &pb::CredentialsBundle,
) -> std::io::Result<PathBuf> {
    use aqueduct_core::durable::{self, PUBLIC, SECRET};
    durable::create_dir_all(dir)?;
    durable::write_file(&dir.join("ca.pem"), bundle.ca_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("cert.pem"), bundle.cert_pem.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("key.pem"), bundle.key_pem.as_bytes(), SECRET)?;
    let keys: String = bundle.signing_keys.iter().map(|k| format!("{k}\n")).collect();
    durable::write_file(&dir.join("signing.pub"), keys.as_bytes(), PUBLIC)?;
    let config = dir.join("spoke.toml");
    let text = format!(
        "hub = \"{hub}\"\nnode = \"{node}\"\ndata_dir = \"store\"\n[tls]\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[trust]\nsigning_keys_file = \"signing.pub\"\n"
    );
    durable::write_file(&config, text.as_bytes(), PUBLIC)?;
    Ok(config)
}

/// What a spoke that enrols is given: the hub's CA and signing keys (as `aq region add --out`
/// writes them) and a bootstrap token.
pub struct Enrolment<'a> {
    pub ca_pem: &'a str,
    pub signing_keys: &'a [String],
    pub token: &'a str,
}

/// Writes the hub's CA (`ca.pem`), its signing keys (`signing.pub`), an enrolment token
/// (`token`, mode 0600) and a `spoke.toml` for node `node` that enrols with it, with its store
/// in `dir/store`. Returns the config's path. For tests, the quickstart and scripted installs.
pub fn write_enrol_config(dir: &Path, hub: &str, node: &str, given: &Enrolment<'_>) -> std::io::Result<PathBuf> {
    use aqueduct_core::durable::{self, PUBLIC, SECRET};
    durable::create_dir_all(dir)?;
    durable::write_file(&dir.join("ca.pem"), given.ca_pem.as_bytes(), PUBLIC)?;
    let keys: String = given.signing_keys.iter().map(|k| format!("{k}\n")).collect();
    durable::write_file(&dir.join("signing.pub"), keys.as_bytes(), PUBLIC)?;
    durable::write_file(&dir.join("token"), given.token.as_bytes(), SECRET)?;
    let config = dir.join("spoke.toml");
    let text = format!(
        "hub = \"{hub}\"\nnode = \"{node}\"\ndata_dir = \"store\"\n[tls]\nca = \"ca.pem\"\n[enrol]\ntoken_file = \"token\"\n[trust]\nsigning_keys_file = \"signing.pub\"\n"
    );
    durable::write_file(&config, text.as_bytes(), PUBLIC)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn example_config_parses_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        std::fs::create_dir_all(dir.path().join("credentials")).unwrap();
        std::fs::write(
            dir.path().join("credentials/signing.pub"),
            "# the hub's\ned25519:2222222222222222222222222222222222222222222222222222222222222222\n",
        )
        .unwrap();
        std::fs::write(&path, include_str!("../../deploy/spoke/spoke.example.toml")).unwrap();
        let config = SpokeConfig::load(&path).unwrap();
        assert_eq!(config.tls.ca, dir.path().join("credentials/ca.pem"));
        assert_eq!(config.enrol.as_ref().map(|e| e.token_file.as_path()), Some(Path::new("/etc/aqueduct/token/token")));
        assert_eq!(config.replication.streams, 4);
        assert_eq!(config.metrics.as_ref().map(|m| m.listen.port()), Some(9464));
        assert_eq!(config.socket.as_deref(), Some(Path::new("/var/lib/aqueduct-spoke/spoke.sock")));
        let peer = config.peer.as_ref().unwrap();
        assert_eq!((peer.listen.port(), peer.advertise.as_deref()), (7444, Some("10.0.3.17:7444")));
        assert_eq!((config.cache.memory.0, config.cache.disk.map(|d| d.0)), (4 << 30, Some(200 << 30)));
        let csi = config.csi.as_ref().unwrap();
        assert_eq!(csi.socket, Path::new("/var/lib/kubelet/plugins/csi.aqueduct.io/csi.sock"));
        assert_eq!((csi.ready_timeout, csi.start_before_ready), (Duration::from_secs(90), false));
        let text = include_str!("../../deploy/spoke/spoke.example.toml")
            .replace("ready_timeout = \"90s\"", "ready_timeout = \"0s\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("csi.ready_timeout must be more than 0s"), "{err}");
        let op = config.operator.as_ref().unwrap();
        assert_eq!(
            (op.enabled, op.namespace.as_deref(), op.lease_name.as_str()),
            (false, Some("inference"), "aqueduct-operator")
        );
        // Unknown keys of the operator's section are errors too.
        let text = include_str!("../../deploy/spoke/spoke.example.toml").replace("lease_name =", "lease =");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("lease"), "{err}");
        // A quota below one chunk is refused, naming the key.
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("disk = \"200GiB\"", "disk = \"1MiB\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("cache.disk is 1MiB, smaller than one chunk"), "{err}");
        // Whole copies count in the disk quota: a budget for them that leaves no room for
        // chunks is refused, naming both keys.
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("disk = \"200GiB\"", "disk = \"16GiB\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("mounts.whole_files (16GiB) is not smaller than cache.disk (16GiB)"), "{err}");
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("disk = \"200GiB\"", "disk = \"lots\"");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"lots\" is not a size"), "{err}");
        // Peers must be reachable: 0.0.0.0 needs an address to advertise.
        let text =
            include_str!("../../deploy/spoke/spoke.example.toml").replace("advertise = \"10.0.3.17:7444\"\n", "");
        std::fs::write(&path, text).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("peer.advertise"), "{err}");

        std::fs::write(&path, "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\nstreems = 3\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n").unwrap();
        let err = SpokeConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("streems"), "{err}");
        // Without `socket`, the socket is in the data directory.
        std::fs::write(
            &path,
            "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n",
        )
        .unwrap();
        assert_eq!(SpokeConfig::load(&path).unwrap().socket, Some(dir.path().join("d/spoke.sock")));
        assert!(SpokeConfig::load(&path).unwrap().csi.is_none(), "no [csi]: no node plugin");
        assert!(SpokeConfig::load(&path).unwrap().metrics.is_none(), "no [metrics]: no endpoint");
        // A [csi] section with nothing in it: the socket is in the data directory too.
        std::fs::write(
            &path,
            "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n[csi]\n",
        )
        .unwrap();
        let csi = SpokeConfig::load(&path).unwrap().csi.unwrap();
        assert_eq!((csi.socket, csi.ready_timeout), (dir.path().join("d/csi.sock"), Duration::from_secs(90)));
        std::fs::write(
            &path,
            "hub = \"http://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n",
        )
        .unwrap();
        assert!(SpokeConfig::load(&path).unwrap_err().to_string().contains("https://"));
    }

    /// `hub` is one address or a list of them, kept in order; each is checked, the error naming
    /// which one.
    #[test]
    fn hub_is_one_address_or_a_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        let rest = "node = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n";
        let load = |hub: &str| {
            std::fs::write(&path, format!("hub = {hub}\n{rest}")).unwrap();
            SpokeConfig::load(&path)
        };
        assert_eq!(load("\"https://a:7443\"").unwrap().hub.0, ["https://a:7443"]);
        let two = load("[\"https://b:7443\", \"https://a.example:7443\"]").unwrap().hub;
        assert_eq!(two.0, ["https://b:7443", "https://a.example:7443"], "in the config's order");
        assert_eq!(two.to_string(), "https://b:7443, https://a.example:7443");
        // --hub (AQUEDUCT_HUB) replaces the file's list, and is checked like it.
        std::fs::write(&path, format!("hub = \"https://a:7443\"\n{rest}")).unwrap();
        let given =
            |hubs: &[&str]| Overrides { hub: Some(hubs.iter().map(|h| h.to_string()).collect()), ..Default::default() };
        let config = SpokeConfig::load_with(&path, &given(&["https://c:1", "https://d:1"])).unwrap();
        assert_eq!(config.hub.0, ["https://c:1", "https://d:1"]);
        let err = SpokeConfig::load_with(&path, &given(&["https://c:1", "c:2"])).unwrap_err().to_string();
        assert!(err.contains("hub[1] \"c:2\" must be an https:// URL"), "{err}");
        for (hub, words) in [
            ("[]", "empty list"),
            ("[\"https://a:1\", \"http://b:1\"]", "hub[1] \"http://b:1\" must be an https:// URL"),
            ("[\"https://a:1\", \"https://a:1\"]", "hub[1] \"https://a:1\" is listed twice"),
            ("\"https://\"", "hub \"https://\""),
            ("7443", "a list of them"),
        ] {
            let err = load(hub).unwrap_err().to_string();
            assert!(err.contains(words), "{hub}: {err}");
        }
    }

    /// A spoke trusts the keys of `[trust]`, from the config and a file; without any it does
    /// not start, saying where to get the hub's key; a key that does not parse is named.
    #[test]
    fn trust_is_required_and_read_from_the_config_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        let base =
            "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        std::fs::write(&path, base).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("no hub signing key is trusted") && err.contains("signing-key show"), "{err}");
        let (a, b) = (
            aqueduct_core::signing::SigningKey::generate().unwrap(),
            aqueduct_core::signing::SigningKey::generate().unwrap(),
        );
        std::fs::write(dir.path().join("keys.pub"), format!("# rotation\n{}\n", b.public())).unwrap();
        std::fs::write(
            &path,
            format!("{base}[trust]\nsigning_keys = [\"{}\"]\nsigning_keys_file = \"keys.pub\"\n", a.public()),
        )
        .unwrap();
        let ids = SpokeConfig::load(&path).unwrap().trust.keys.ids();
        assert!(ids.contains(a.id().as_str()) && ids.contains(b.id().as_str()), "{ids}");
        std::fs::write(&path, format!("{base}[trust]\nsigning_keys = [\"ed25519:00\"]\n")).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("trust.signing_keys[0]"), "{err}");
        std::fs::write(&path, format!("{base}[trust]\nsigning_keys_file = \"missing.pub\"\n")).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("trust.signing_keys_file"), "{err}");
    }

    /// The spoke config inside the sidecar example's ConfigMap loads: memory-only, its socket
    /// where the `aqueduct-fuse` sidecar looks for it.
    #[test]
    fn sidecar_example_config_loads() {
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(include_str!("../../deploy/spoke/examples/sidecar-pod.yaml")).unwrap();
        let toml = docs[0]["data"]["spoke.toml"].as_str().expect("the ConfigMap holds spoke.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        std::fs::write(&path, toml).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("AQUEDUCT_NODE"), "the pod's name comes from the environment: {err}");
        let pod = Overrides { node: Some("llama-server".into()), advertise: None, hub: None };
        let config = SpokeConfig::load_with(&path, &pod).unwrap();
        assert_eq!(config.node, "llama-server");
        assert!(config.cache.memory_only && config.peer.is_none());
        assert_eq!(config.socket, Some(PathBuf::from("/run/aqueduct/spoke.sock")));
        let sidecars = &docs[1]["spec"]["initContainers"];
        assert_eq!(sidecars[0]["env"][0]["name"], "AQUEDUCT_NODE");
        let fuse_args = sidecars[1]["args"].to_string();
        assert!(fuse_args.contains("/run/aqueduct/spoke.sock"), "{fuse_args}");
    }

    /// The command line's node name and peer address replace the file's, and are validated
    /// like them; a file without `node` needs one from the command line.
    #[test]
    fn overrides_replace_node_and_advertise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        let base = "hub = \"https://h:1\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n";
        let with_peer = format!("{base}[peer]\nlisten = \"0.0.0.0:7444\"\n");
        let overrides = |node: Option<&str>, advertise: Option<&str>| Overrides {
            node: node.map(Into::into),
            advertise: advertise.map(Into::into),
            hub: None,
        };

        std::fs::write(&path, &with_peer).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("node is missing") && err.contains("AQUEDUCT_NODE"), "{err}");
        let config = SpokeConfig::load_with(&path, &overrides(Some("gpu-node-7"), Some("10.0.3.17:7444"))).unwrap();
        assert_eq!(config.node, "gpu-node-7");
        assert_eq!(config.peer.unwrap().advertise.as_deref(), Some("10.0.3.17:7444"));
        // Without the address, 0.0.0.0 is still refused.
        let err = SpokeConfig::load_with(&path, &overrides(Some("n"), None)).unwrap_err().to_string();
        assert!(err.contains("peer.advertise"), "{err}");
        // The name from the command line is checked like the file's.
        let err = SpokeConfig::load_with(&path, &overrides(Some("Bad Name"), Some("h:1"))).unwrap_err().to_string();
        assert!(err.contains("node:"), "{err}");

        // The command line wins over the file.
        std::fs::write(&path, format!("node = \"from-file\"\n{with_peer}advertise = \"f:1\"\n")).unwrap();
        assert_eq!(SpokeConfig::load(&path).unwrap().node, "from-file");
        let config = SpokeConfig::load_with(&path, &overrides(Some("from-env"), Some("10.1.2.3:7444"))).unwrap();
        assert_eq!(
            (config.node.as_str(), config.peer.unwrap().advertise.as_deref()),
            ("from-env", Some("10.1.2.3:7444"))
        );

        // An address with nowhere to go is an error, not silently dropped.
        std::fs::write(&path, format!("node = \"n\"\n{base}")).unwrap();
        let err = SpokeConfig::load_with(&path, &overrides(None, Some("10.1.2.3:7444"))).unwrap_err().to_string();
        assert!(err.contains("no [peer] section"), "{err}");
    }
}
