//! recmeter's benchmarks live in this crate's bench targets (`cargo bench --bench ingest`,
//! `cargo bench --bench memory`); the figures and the machine are in BENCHMARKS.md.
