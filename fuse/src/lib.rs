//! The read-only POSIX view of a dataset version.
//!
//! Not built yet. It will be a pure async filesystem over a manifest and a `ChunkSource`,
//! with a thin `fuser` adapter, used in-process by the spoke and as a small sidecar binary
//! (see `DESIGN.md`, "Data path" step 4). It exports nothing that pretends to work.
