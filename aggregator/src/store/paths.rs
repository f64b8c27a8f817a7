//! Where each file of the store lives. Every object name recmeter writes is built here, and the
//! state files are recognised here, so the layout has one owner:
//!
//! - `manifests/<id>.json`: the manifests (`manifest.rs`);
//! - `minutes/day=YYYY-MM-DD/<id>[-<n>].parquet`, `hours/…`: rollup rows, by the day they fall
//!   in, written by checkpoint `id` (`-<n>`: the `n`th file of compaction `id`);
//! - `state/<id>-<name>.<ext>`: checkpoint `id`'s state files: `series.parquet`,
//!   `open.parquet`, `metric_streams.json`, and one `<participant>.json` per participant;
//! - `cost_lines/<export>-<n>.parquet`, `cost_rejects/…`: the billing ledger's cost lines and
//!   rejects, the `n`th file written for export number `export`.
//!
//! Ids are written with 20 digits, so names sort by id.

use crate::state::Table;
use crate::store::files::civil_date;

/// The prefix of `latency_minutes`' files.
pub const MINUTES_PREFIX: &str = "minutes";
/// The prefix of `latency_hours`' files.
pub const HOURS_PREFIX: &str = "hours";
/// The prefix of every checkpoint's state files, participants' included.
pub const STATE_PREFIX: &str = "state";

/// The prefix of `cost_lines`' files.
pub const COST_LINES_PREFIX: &str = "cost_lines";
/// The prefix of `cost_rejects`' files.
pub const COST_REJECTS_PREFIX: &str = "cost_rejects";

/// The `n`th file under `prefix` (a cost prefix) written for export number `export`.
pub fn cost_path(prefix: &str, export: u64, n: u64) -> String {
    format!("{prefix}/{export:020}-{n:06}.parquet")
}

/// The prefix of `table`'s rollup files (`Blocks` are stored as minutes).
pub fn rollup_prefix(table: Table) -> &'static str {
    match table {
        Table::Hours => HOURS_PREFIX,
        Table::Minutes | Table::Blocks => MINUTES_PREFIX,
    }
}

/// The rollup file of `table` for day `day` (days since the epoch) that checkpoint `id` writes,
/// or, with `part`, the `part`th file compaction `id` writes.
pub fn rollup_path(table: Table, day: i64, id: u64, part: Option<usize>) -> String {
    let prefix = rollup_prefix(table);
    let date = civil_date(day);
    match part {
        None => format!("{prefix}/day={date}/{id:020}.parquet"),
        Some(n) => format!("{prefix}/day={date}/{id:020}-{n}.parquet"),
    }
}

/// Checkpoint `id`'s state file `name` with extension `ext`: `state/<id>-<name>.<ext>`.
pub fn state_path(id: u64, name: &str, ext: &str) -> String {
    format!("{STATE_PREFIX}/{id:020}-{name}.{ext}")
}

/// The name of the state file at `path` (`metric_streams` for
/// `state/<id>-metric_streams.json`), if `path` is one.
pub fn state_name(path: &str) -> Option<&str> {
    let file = path.strip_prefix(STATE_PREFIX)?.strip_prefix('/')?;
    let (id, rest) = file.split_once('-')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (name, _ext) = rest.rsplit_once('.')?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            rollup_path(Table::Minutes, 20_514, 7, None),
            "minutes/day=2026-03-02/00000000000000000007.parquet"
        );
        assert_eq!(
            rollup_path(Table::Hours, 20_514, 7, Some(3)),
            "hours/day=2026-03-02/00000000000000000007-3.parquet"
        );
        let path = state_path(12, "metric_streams", "json");
        assert_eq!(path, "state/00000000000000000012-metric_streams.json");
        assert_eq!(state_name(&path), Some("metric_streams"));
        assert_eq!(
            state_name(&state_path(1, "test_ledger", "json")),
            Some("test_ledger")
        );
        for not in [
            "state/x-series.parquet",
            "state/-series.parquet",
            "state/0001-series",
            "minutes/0001-series.parquet",
            "stateful/0001-a.json",
            "",
        ] {
            assert_eq!(state_name(not), None, "{not}");
        }
    }
}
