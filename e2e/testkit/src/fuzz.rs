//! One configuration for every property-based test of the workspace.
//!
//! In CI a property test runs a bounded number of cases from a fixed seed, so that a run is
//! repeatable and its time predictable; a failure prints the case, shrunk. A long run is a
//! matter of environment:
//!
//! ```sh
//! AQ_FUZZ_CASES=200000 AQ_FUZZ_SEED=random cargo nextest run --workspace fuzz_
//! ```
//!
//! `AQ_FUZZ_CASES` replaces every test's own case count, `AQ_FUZZ_SEED` is `random` (a new
//! seed each run, printed with any failure) or a number (that seed). Tests that use this are
//! named `fuzz_*`.

use proptest::test_runner::{Config, RngSeed};

/// The seed every property test starts from unless `AQ_FUZZ_SEED` says otherwise.
pub const SEED: u64 = 0x00a9_0ed0_c7_2026;

/// A proptest configuration for a test that runs `cases` cases in CI.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("AQ_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    let rng_seed = match std::env::var("AQ_FUZZ_SEED").as_deref() {
        Ok("random") => RngSeed::Random,
        Ok(n) => RngSeed::Fixed(n.parse().unwrap_or(SEED)),
        Err(_) => RngSeed::Fixed(SEED),
    };
    Config {
        cases,
        rng_seed,
        // Failing cases are printed, not written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}
