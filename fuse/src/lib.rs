//! The read-only POSIX view of a dataset version.
//!
//! [`fs::VersionFs`] is the filesystem as a pure async type: inodes, lookups, attributes,
//! extended attributes, directory listings and verified reads with per-file read-ahead over a
//! [`aqueduct_proto::Manifest`] and a [`fs::ChunkSource`], tested without the kernel.
//! [`view::View`] is what a mount shows: one version, switched to the next in one step.
//! [`mount`] is the thin `fuser` adapter that mounts a view. The `aqueduct-fuse` binary mounts
//! one over a spoke's local API (sidecars), or runs the node's [`holder`], which serves every
//! FUSE mount of a node (over the spoke's store and local API) so that they outlive the spoke. [`remote`] is the spoke's local API as both see it; [`mountinfo`] reads the kernel's
//! mount table.

pub mod fs;
pub mod holder;
pub mod mount;
pub mod mountinfo;
pub mod remote;
pub mod view;
