//! Settings the property tests share: few cases, so `cargo test` stays fast, and a fixed seed,
//! so every run checks the same cases and a failure replays. `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` explore further.

use proptest::test_runner::{Config, RngSeed};

pub(crate) fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x5eed_0013);
    }
    // Failures print their minimal input; nothing is written into the source tree.
    config.failure_persistence = None;
    config
}
