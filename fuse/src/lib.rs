//! The read-only POSIX view of a dataset version.
//!
//! [`fs::VersionFs`] is the filesystem as a pure async type: inodes, lookups, attributes,
//! directory listings and reads over a [`aqueduct_proto::Manifest`] and a [`fs::ChunkSource`],
//! tested without the kernel. The thin `fuser` adapter that mounts it, the spoke's hosting and
//! the sidecar binary are not built yet (issue 5); nothing here mounts anything.

pub mod fs;
