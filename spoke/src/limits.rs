//! The `[limits]` section of the spoke's config: how much the spoke's servers take on at once
//! (the peer API's connections and handshakes, calls per connection on the peer API, the
//! local socket and the CSI socket, a peer's `FetchChunks` streams, the metrics endpoint), so
//! that no caller can exhaust the spoke. Every key has a default; `deploy/spoke/spoke.example.toml`
//! says what each allows.

use std::time::Duration;

use aqueduct_core::metrics::MetricsLimits;
use aqueduct_core::server::ServerLimits;
use serde::Deserialize;

/// `[limits]` of the spoke's config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Peer API connections held at once (each other spoke of the region keeps one).
    pub max_connections: usize,
    /// Peer API connections in their TLS handshake at once; past it, the oldest is dropped.
    pub max_handshakes: usize,
    /// How long a peer API connection may take to complete its TLS handshake.
    #[serde(with = "aqueduct_core::server::human::duration")]
    pub handshake_timeout: Duration,
    /// Calls one connection may carry at once, on the peer API, the local socket and the CSI
    /// socket.
    pub max_streams_per_connection: u32,
    /// Peer `FetchChunks` streams served at once to one peer (by its address).
    pub fetch_streams_per_peer: usize,
    /// How long a peer's `FetchChunks` waits for a turn before RESOURCE_EXHAUSTED.
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
            max_connections: 1024,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 128,
            fetch_streams_per_peer: 16,
            fetch_wait: Duration::from_secs(10),
            metrics_connections: 16,
            metrics_header_timeout: Duration::from_secs(5),
        }
    }
}

/// The fewest calls per connection the spoke's clients work with: a reader's fetch beside a
/// replication stream and a `Has`, and a sidecar's reads beside its resolve.
pub const MIN_STREAMS_PER_CONNECTION: u32 = 4;

impl LimitsConfig {
    /// Checks the section; the message names the key and says what to write instead.
    pub fn validate(&self) -> Result<(), String> {
        self.server().validate(MIN_STREAMS_PER_CONNECTION)?;
        self.metrics().validate()?;
        if self.fetch_streams_per_peer == 0 {
            return Err("limits.fetch_streams_per_peer must be at least 1".into());
        }
        Ok(())
    }

    /// The peer API's accept path and tonic's limits (the sockets use the streams' cap).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpokeConfig;
    use proptest::prelude::*;

    const BASE: &str = "hub = \"https://h:1\"\nnode = \"n\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nsigning_keys = [\"ed25519:1111111111111111111111111111111111111111111111111111111111111111\"]\n";

    fn load(dir: &std::path::Path, limits: &str) -> Result<SpokeConfig, String> {
        let path = dir.join("spoke.toml");
        std::fs::write(&path, format!("{BASE}[limits]\n{limits}")).unwrap();
        SpokeConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_says_the_defaults_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spoke.toml");
        std::fs::create_dir_all(dir.path().join("credentials")).unwrap();
        std::fs::write(dir.path().join("credentials/signing.pub"), format!("ed25519:{}\n", "22".repeat(32))).unwrap();
        std::fs::write(&path, include_str!("../../deploy/spoke/spoke.example.toml")).unwrap();
        assert_eq!(SpokeConfig::load(&path).unwrap().limits, LimitsConfig::default());

        let config = load(dir.path(), "fetch_wait = \"1m30s\"\nmax_connections = 7\n").unwrap();
        assert_eq!(config.limits.fetch_wait, Duration::from_secs(90));
        assert_eq!(config.limits.server().max_connections, 7);
        assert_eq!(config.limits.fetch_streams_per_peer, 16, "what is left out is the default");
        for (limits, key) in [
            ("max_connections = 0", "limits.max_connections"),
            ("max_handshakes = 0", "limits.max_handshakes"),
            ("max_streams_per_connection = 3", "limits.max_streams_per_connection"),
            ("fetch_streams_per_peer = 0", "limits.fetch_streams_per_peer"),
            ("handshake_timeout = \"0s\"", "limits.handshake_timeout"),
            ("metrics_connections = 0", "limits.metrics_connections"),
            ("metrics_header_timeout = \"0ms\"", "limits.metrics_header_timeout"),
            ("fetch_wait = \"later\"", "fetch_wait"),
            ("fetch_wait = 10", "fetch_wait"),
            ("max_handshakes = 1.5", "max_handshakes"),
            ("fetch_streams_per_region = 3", "fetch_streams_per_region"),
        ] {
            let err = load(dir.path(), limits).unwrap_err();
            assert!(err.contains(key), "{limits}: {err}");
        }
        // A request names at most so many digests: a config that asks for more is refused.
        let path = dir.path().join("spoke.toml");
        std::fs::write(&path, format!("{BASE}[replication]\nchunks_per_request = 257\n")).unwrap();
        let err = SpokeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("replication.chunks_per_request") && err.contains("256"), "{err}");
    }

    /// The keys of `[limits]` (and others), with values of every TOML kind.
    const LIMIT_KEYS: [&str; 8] = [
        "max_connections",
        "max_handshakes",
        "handshake_timeout",
        "max_streams_per_connection",
        "fetch_streams_per_peer",
        "fetch_wait",
        "metrics_connections",
        "metrics_header_timeout",
    ];

    fn limits_table() -> impl Strategy<Value = Vec<(String, String)>> {
        aqueduct_testkit::fuzz::flat_table(&LIMIT_KEYS)
    }

    proptest! {
        #![proptest_config(aqueduct_testkit::fuzz::config(512))]

        /// Whatever `[limits]` holds, loading never panics, and a refusal names one of the
        /// keys that are there.
        #[test]
        fn fuzz_limits_never_panic_and_errors_name_the_key(table in limits_table()) {
            let dir = tempfile::tempdir().unwrap();
            let text: String = table.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            match load(dir.path(), &text) {
                Ok(config) => prop_assert!(config.limits.validate().is_ok()),
                Err(e) => prop_assert!(table.iter().any(|(k, _)| e.contains(k.as_str())), "{e}"),
            }
        }
    }
}
