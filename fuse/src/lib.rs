//! The read-only POSIX view of a dataset version.
//!
//! [`fs::VersionFs`] is the filesystem as a pure async type: inodes, lookups, attributes,
//! directory listings and reads over a [`aqueduct_proto::Manifest`] and a [`fs::ChunkSource`],
//! tested without the kernel; [`mount`] is the thin `fuser` adapter that mounts it. The spoke's
//! hosting of mounts, read-ahead and the sidecar binary are not built yet (issue 5).

pub mod fs;
pub mod mount;
