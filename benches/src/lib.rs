//! recmeter's benchmarks live in this crate's bench targets (`cargo bench --bench ingest`,
//! `cargo bench --bench memory`); the figures and the machine are in BENCHMARKS.md.

// Only the binary's allocator module may use `unsafe` (ADR 013).
#![forbid(unsafe_code)]
