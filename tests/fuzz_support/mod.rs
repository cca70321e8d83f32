//! The runner shared by the property tests (`tests/fuzz_*.rs`).
#![allow(dead_code)]

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// `PROPTEST_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `check` on `cases(default_cases)` inputs; see [`run_cases`].
pub fn run<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    run_cases(name, cases(default_cases), strategy, check)
}

/// Runs `check` on exactly `cases` inputs (no failure file: failures are
/// printed and become regression tests in the calling file), and reports how
/// many ran.
pub fn run_cases<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let executed = std::sync::atomic::AtomicU64::new(0);
    let started = std::time::Instant::now();
    let result = TestRunner::new(config.clone()).run(&strategy, |input| {
        executed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(input)
    });
    eprintln!(
        "{name}: {} executions ({} cases) in {:?}",
        executed.into_inner(),
        config.cases,
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}
