//! Whole-system tests and benchmarks of Aqueduct.
//!
//! Today this crate holds the snapshot benchmark (`benches/snapshot.rs`); the scenario tests
//! with regions in network namespaces behind shaped links arrive with replication. Real
//! servers for tests (S3 via s3s-fs) live in `e2e/testkit`, which the crates' own tests use too.
