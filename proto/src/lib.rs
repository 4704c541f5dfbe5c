//! Aqueduct's wire contract and shared domain types.
//!
//! Everything that crosses a process boundary is defined in `proto/` and generated here with
//! prost and tonic, one module per versioned package (`aqueduct.hub.v1`, ...). The domain
//! types that hub, spoke and FUSE view all reason about (chunk digests, manifests, names,
//! version references, rollout phases and replication modes) live in [`domain`], next to the
//! generated code, and are converted from the wire types in one place ([`domain::wire`]), where
//! they are validated. The constants below bound the messages of the contract. What hub, spoke
//! and FUSE view share beyond the contract (budgets, the TLS accept path, identities, metrics,
//! durable files) is in `aqueduct-core`.

pub mod domain;
pub mod selector;

/// HTTP/2 receive windows for chunk streams, per stream and per connection. The protocol's
/// default (64 KiB) caps a stream at 64 KiB per round trip: over a link whose queue adds
/// 100 ms that is 640 KiB/s, a fraction of the link. These let a few streams fill a link
/// of a few Gbit/s at that delay.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// The largest chunk there is: the chunker's maximum (2 MiB). A manifest whose chunker
/// allows more is refused ([`Manifest::validate`]).
pub const MAX_CHUNK_BYTES: usize = ChunkerParams::DEFAULT.max_size as usize;

/// A message that carries one chunk (`ChunkData`: the digest, the bytes and their framing).
/// The decoding limit of every client and server that moves chunks.
pub const MAX_CHUNK_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 1024;

/// The largest manifest, encoded. About 47 bytes per chunk and 20 plus the path and the
/// object key per file: some 2.8 million chunks (1.3 TiB of data at the chunker's 512 KiB
/// average, up to 5.6 TiB at its maximum), fewer with many small files. The hub refuses to
/// cut or serve a bigger one ([`Manifest::check_size`]); split such a dataset by prefix.
pub const MAX_MANIFEST_BYTES: usize = 128 << 20;

/// A message that carries a manifest (`Manifest`, or the local API's `ResolveResponse` around
/// one): the decoding limit of whoever reads manifests, and the largest message of any
/// Aqueduct service.
pub const MAX_MESSAGE_BYTES: usize = MAX_MANIFEST_BYTES + 1024;

/// A control message a hub sends a spoke (its region's assignments and live members), or an
/// admin (a status table): tens of bytes per member, version and row.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 16 << 20;

/// Digests one request may name (the hub's and the peers' `FetchChunks`, `Has`, the local
/// API's `ReadChunks`). Spokes ask for a few at a time (`replication.chunks_per_request`,
/// default 8); a longer list is refused with InvalidArgument, so that one request cannot make
/// a server plan (or, for a peer fetching what it lacks, hold) an unbounded amount of work.
pub const MAX_DIGESTS_PER_REQUEST: usize = 256;

/// A request to a server (anything but a manifest or a chunk): the decoding limit of every
/// server. The largest are a progress report naming a region's members (about 64 bytes a
/// member: thousands fit) and a list of [`MAX_DIGESTS_PER_REQUEST`] digests (9 KiB).
pub const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Refuses a list of more than [`MAX_DIGESTS_PER_REQUEST`] digests, with a message that says
/// the bound.
pub fn check_digest_count(count: usize) -> Result<(), tonic::Status> {
    if count > MAX_DIGESTS_PER_REQUEST {
        return Err(tonic::Status::invalid_argument(format!(
            "{count} digests in one request; at most {MAX_DIGESTS_PER_REQUEST} are allowed: split the request"
        )));
    }
    Ok(())
}

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

/// Generated code of package `aqueduct.holder.v1`: the FUSE holder's API, which the spoke
/// drives (the holder owns the node's FUSE mounts, so that they outlive the spoke).
pub mod holder {
    pub mod v1 {
        tonic::include_proto!("aqueduct.holder.v1");
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

pub use domain::tag::{TagNameError, validate_tag};
pub use domain::{
    ChunkRef, ChunkerParams, Digest, FileEntry, MANIFEST_FORMAT, Manifest, ManifestError, ModeError, NameError, Phase,
    PhaseError, Rate, RateError, ReplicationMode, Size, SizeError, VersionRef, format_duration, parse_duration,
    validate_name,
};
