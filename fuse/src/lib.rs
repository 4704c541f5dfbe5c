//! The read-only POSIX view of a dataset version.
//!
//! [`fs::VersionFs`] is the filesystem as a pure async type: inodes, lookups, attributes,
//! extended attributes, directory listings and verified reads with per-file read-ahead over a
//! [`aqueduct_proto::Manifest`] and a [`fs::ChunkSource`], tested without the kernel.
//! [`view::View`] is what a mount shows: one version, switched to the next in one step.
//! [`mount`] is the thin `fuser` adapter that mounts a view. The spoke hosts mounts over its
//! chunk store; the `aqueduct-fuse` binary mounts one over a spoke's local API (sidecars).

pub mod fs;
pub mod mount;
pub mod remote;
pub mod view;
