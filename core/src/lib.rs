//! What hub, spoke and FUSE view share beyond the wire contract (`aqueduct-proto`): the code
//! that runs in more than one of them but is not a message or a domain type.
//!
//! [`durable`] writes the small files hub and spoke keep (atomically, fsynced); [`layout`] is
//! where the chunk store keeps each chunk (the spoke writes it, the FUSE holder reads it); [`lru`] is the
//! weighted least-recently-used order behind every cache; [`revocation`] is the rule that says which certificates are revoked; [`singleflight`] makes concurrent
//! callers for one key share one in-flight future; [`socket`] binds the private unix sockets of
//! a node's local APIs. The rest serves the binaries' edges:
//! [`budget`] (a link's bytes per second), [`schedule`] (a budget over the week), [`identity`] (who a certificate names), [`server`]
//! (the TLS accept path, tonic's settings, per-key turns), [`metrics`] (the Prometheus
//! endpoint), [`health`] (liveness, readiness, the gRPC health service), [`signing`] (the hub's signing
//! keys, the spokes' trust in them) and [`edge`] (logging and signals). Each module that needs more than the standard
//! library sits behind a feature of its name, so that a crate takes only what it uses.

#[cfg(feature = "budget")]
pub mod budget;
pub mod durable;
#[cfg(feature = "edge")]
pub mod edge;
#[cfg(feature = "health")]
pub mod health;
#[cfg(feature = "identity")]
pub mod identity;
pub mod layout;
pub mod lru;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod revocation;
#[cfg(feature = "schedule")]
pub mod schedule;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "signing")]
pub mod signing;
#[cfg(feature = "singleflight")]
pub mod singleflight;
pub mod socket;
