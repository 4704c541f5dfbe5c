//! Aqueduct's wire contract and shared domain types.
//!
//! Everything that crosses a process boundary is defined in `proto/` and generated here with
//! prost and tonic, one module per versioned package (`aqueduct.hub.v1`, ...). The domain
//! types that hub, spoke and FUSE view all reason about (chunk digests, manifests, names and
//! version references) live in [`domain`], next to the generated code, and are converted from
//! the wire types in one place ([`domain::wire`]) with `TryFrom`, where they are validated.
//! [`durable`] is how hub and spoke write the small files they keep (atomically, fsynced).

#[cfg(feature = "budget")]
pub mod budget;
pub mod domain;
pub mod durable;
#[cfg(feature = "edge")]
pub mod edge;
#[cfg(feature = "identity")]
pub mod identity;
#[cfg(feature = "metrics")]
pub mod metrics;

/// HTTP/2 receive windows for chunk streams, per stream and per connection. The protocol's
/// default (64 KiB) caps a stream at 64 KiB per round trip: over a link whose queue adds
/// 100 ms that is 640 KiB/s, a fraction of the link. These let a few streams fill a link
/// of a few Gbit/s at that delay.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// Largest gRPC message any Aqueduct component sends or accepts: a manifest of a very large
/// version (about 40 bytes per chunk) must fit.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Generated code of package `aqueduct.hub.v1`.
pub mod hub {
    pub mod v1 {
        tonic::include_proto!("aqueduct.hub.v1");
    }
}

/// Generated code of package `aqueduct.spoke.v1` (a spoke's local API and its peer API).
pub mod spoke {
    pub mod v1 {
        tonic::include_proto!("aqueduct.spoke.v1");
    }
}

/// Generated code of package `csi.v1`: the Container Storage Interface, v1.12.0 of the spec
/// (vendored in `proto/csi/v1/csi.proto`), which the kubelet speaks to node plugins.
#[cfg(feature = "csi")]
pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

pub use domain::{
    ChunkRef, ChunkerParams, Digest, FileEntry, MANIFEST_FORMAT, Manifest, ManifestError, ModeError, NameError, Rate,
    RateError, ReplicationMode, Size, SizeError, VersionRef, validate_name,
};
