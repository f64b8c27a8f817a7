//! recmeter's benchmarks live in this crate's bench targets (`cargo bench --bench ingest`,
//! `cargo bench --bench memory`, …); the figures and the machine are in BENCHMARKS.md. Here are
//! the helpers the custom-harness benches share.

// Only the binary's allocator module may use `unsafe` (ADR 013).
#![forbid(unsafe_code)]

/// The number in the environment variable `name` (a knob that shortens or varies a run while
/// investigating), else `default`; the recorded figures use the defaults.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's `field` of `/proc/self/status` (`VmRSS:`, `VmHWM:`) in MiB; NaN when it
/// cannot be read.
pub fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
