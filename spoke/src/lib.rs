//! The spoke: Aqueduct's regional agent.
//!
//! Not built yet. The spoke will replicate and prefetch chunks under the region's link
//! budget, keep the regional chunk cache, serve peers, host the FUSE mounts and the CSI node
//! plugin, and run the Kubernetes operator (see `DESIGN.md`, "Data path" steps 3 and 4). This
//! crate exists so that the workspace has its final shape; it exports nothing that pretends
//! to work.
