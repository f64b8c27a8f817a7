//! Cost lines from the billing topic: each message is JSON lines, one FOCUS cost line per
//! line, normalized as a FOCUS export's rows are (`billing::focus`). A line that is not a cost
//! line is a reject (`cost_rejects`, with its column and reason); a message with no JSON line
//! at all goes to the dead-letter topic.
//!
//! Lines are gathered per partition and landed together: once `kafka.billing_flush_interval`
//! has passed since the first, or at [`MAX_ROWS`], and before a partition goes. Landing writes
//! their files (one per bill identity, plus the rejects) and then appends them to the billing
//! ledger in the same step as the partition's position moves past their messages
//! ([`Landing::append`]). Until then the partition's position stays before them, so a crash or
//! a lost partition reads them again and nothing counts twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use recmeter_core::Position;
use recmeter_core::cost::{Append, BillIdentity, CostLine, Landing, Reject, StagedBill};

use crate::sources::billing::focus;
use crate::sources::billing::read::Defaults;

/// Most rows (lines and rejects) gathered in a partition before they are landed.
pub(super) const MAX_ROWS: usize = 65_536;

/// A billing message's rows: its cost lines and rejects.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Rows {
    pub lines: Vec<CostLine>,
    pub rejects: Vec<Reject>,
}

/// Reads one message of the billing topic, found at `object` (`topic/partition/offset`): each
/// line a cost line or a reject; `Err` (a dead letter) when it is not UTF-8 text or none of its
/// lines is a JSON object.
pub(super) fn read(payload: &[u8], object: &str) -> Result<Rows, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| format!("not UTF-8 text, so not JSON lines: {e}"))?;
    let mut rows = Rows::default();
    let mut objects = 0usize;
    let defaults = Defaults::default();
    for (i, line) in text
        .split('\n')
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
    {
        let row = i as u64 + 1;
        if line.starts_with('{') {
            objects += 1;
        }
        match focus::json_line(line, &defaults) {
            Ok(mut cost) => {
                cost.source_object = object.to_owned();
                cost.source_row = row;
                rows.lines.push(cost);
            }
            Err(e) => rows.rejects.push(e.at(object, row)),
        }
    }
    if objects == 0 {
        let first = rows.rejects.first().map_or("empty", |r| r.reason.as_str());
        return Err(format!(
            "not JSON lines of FOCUS cost lines (no line is a JSON object): {first}"
        ));
    }
    Ok(rows)
}

/// The rows gathered in one partition, not landed yet.
#[derive(Debug)]
pub(super) struct Pending {
    pub rows: Rows,
    /// Where the partition stands once they are landed: after the last message taken.
    pub position: Position,
    /// When they are to be landed: `kafka.billing_flush_interval` after the first was taken.
    due_at: Instant,
}

/// Rows gathered per partition of the billing topic.
#[derive(Debug)]
pub(super) struct Gathered {
    pending: BTreeMap<i32, Pending>,
    flush_after: Duration,
}

impl Gathered {
    pub fn new(flush_after: Duration) -> Self {
        Self {
            pending: BTreeMap::new(),
            flush_after,
        }
    }

    /// Takes a message's rows (none for a dead letter); `position` is after it. Whether its
    /// partition is full and should be landed now.
    pub fn take(&mut self, position: Position, rows: Rows) -> bool {
        let due_at = Instant::now() + self.flush_after;
        let pending = self
            .pending
            .entry(position.partition)
            .or_insert_with(|| Pending {
                rows: Rows::default(),
                position: position.clone(),
                due_at,
            });
        pending.rows.lines.extend(rows.lines);
        pending.rows.rejects.extend(rows.rejects);
        pending.position = position;
        pending.rows.lines.len() + pending.rows.rejects.len() >= MAX_ROWS
    }

    /// The partitions due to be landed: gathered for `kafka.billing_flush_interval` (or, after
    /// a landing failed, waited out its retry).
    pub fn due(&self) -> Vec<i32> {
        let now = Instant::now();
        self.pending
            .iter()
            .filter(|(_, p)| now >= p.due_at)
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Forgets the rows of `partition` (lost: its next owner reads them).
    pub fn forget(&mut self, partition: i32) -> bool {
        self.pending.remove(&partition).is_some()
    }

    /// Every partition with rows gathered.
    pub fn partitions(&self) -> Vec<i32> {
        self.pending.keys().copied().collect()
    }

    /// Takes out a partition's rows, to land them.
    pub fn remove(&mut self, partition: i32) -> Option<Pending> {
        self.pending.remove(&partition)
    }

    /// Puts back rows whose landing failed; they are tried again after `retry`.
    pub fn put_back(&mut self, mut pending: Pending, retry: Duration) {
        pending.due_at = Instant::now() + retry;
        self.pending.insert(pending.position.partition, pending);
    }

    /// Forgets every partition's rows (they are read again from the partition's position).
    pub fn clear(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }
}

/// Writes `pending`'s files (a file per bill identity, and one of rejects) and gives the append
/// that puts them in force, blocking on `runtime` meanwhile.
pub(super) fn stage(
    landing: &dyn Landing,
    runtime: &tokio::runtime::Handle,
    stream: &str,
    pending: &Pending,
) -> recmeter_core::Result<Append> {
    let mut bills: BTreeMap<BillIdentity, (Vec<CostLine>, i64)> = BTreeMap::new();
    for line in &pending.rows.lines {
        let (lines, data_end) = bills
            .entry(BillIdentity::of(line, stream))
            .or_insert_with(|| (Vec::new(), i64::MIN));
        *data_end = (*data_end).max(line.charge_period_end);
        lines.push(line.clone());
    }
    let mut staged = Vec::with_capacity(bills.len());
    for (identity, (lines, data_end)) in bills {
        let file = runtime.block_on(landing.stage_lines(lines))?;
        staged.push(StagedBill {
            identity,
            files: vec![file],
            data_end,
        });
    }
    let rejects = if pending.rows.rejects.is_empty() {
        Vec::new()
    } else {
        vec![runtime.block_on(landing.stage_rejects(pending.rows.rejects.clone()))?]
    };
    Ok(Append {
        stream: stream.to_owned(),
        bills: staged,
        rejects,
        position: pending.position.clone(),
    })
}

/// The stream (and bill folder) of cost lines from `topic`.
pub(super) fn stream(topic: &str) -> String {
    format!("kafka://{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"BilledCost":"1.5","EffectiveCost":"1.25","ChargePeriodStart":"2026-11-30T00:00:00Z","ChargePeriodEnd":"2026-11-30T01:00:00Z","ProviderName":"AWS","BillingAccountId":"1","BillingCurrency":"USD"}"#;

    #[test]
    fn a_message_is_lines_and_rejects_or_a_dead_letter() {
        let bad = LINE.replace("\"1.5\"", "\"x\"");
        let text = format!("{LINE}\n\n{bad}\nnot json\n{LINE}\r\n");
        let rows = read(text.as_bytes(), "recs-billing/0/7").unwrap();
        assert_eq!(rows.lines.len(), 2);
        assert_eq!(
            (
                rows.lines[1].source_object.as_str(),
                rows.lines[1].source_row
            ),
            ("recs-billing/0/7", 5)
        );
        let rejected: Vec<(u64, &str)> = rows
            .rejects
            .iter()
            .map(|r| (r.source_row, r.column.as_str()))
            .collect();
        assert_eq!(rejected, [(3, "BilledCost"), (4, "")]);
        for bad in [&b"\xff\xfe"[..], b"garbage", b"", b"[1,2]\n3"] {
            assert!(read(bad, "t/0/0").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_lines_are_rejects_and_never_a_panic() {
        let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        let digits = LINE.replace("\"1.5\"", &"9".repeat(400));
        let exponent = LINE.replace("\"1.5\"", "1e400");
        let negative_zero_day = LINE.replace("2026-11-30T00:00:00Z", "0000-00-00T00:00:00Z");
        let control = LINE.replace("\"AWS\"", "\"A\\u0000WS\"");
        let text = [
            LINE,
            &deep,
            &digits,
            &exponent,
            &negative_zero_day,
            &control,
            "{",
            "{}",
        ]
        .join("\n");
        let rows = read(text.as_bytes(), "b/0/1").unwrap();
        // The line with a NUL in a provider's name is kept as written.
        assert_eq!(rows.lines.len(), 2, "{:?}", rows.rejects);
        let rejected: Vec<u64> = rows.rejects.iter().map(|r| r.source_row).collect();
        assert_eq!(rejected, [2, 3, 4, 5, 7, 8]);
        assert!(rows.rejects.iter().all(|r| r.raw.len() <= 1024));
        // Many small lines in one message.
        let many = format!("{LINE}\n").repeat(20_000);
        assert_eq!(read(many.as_bytes(), "b/0/2").unwrap().lines.len(), 20_000);
    }

    #[test]
    fn partitions_are_due_when_full_or_old() {
        let mut gathered = Gathered::new(Duration::from_secs(3600));
        let at = |offset| Position {
            topic: "b".into(),
            partition: 1,
            offset,
        };
        let rows = || read(LINE.as_bytes(), "b/1/0").unwrap();
        assert!(!gathered.take(at(1), rows()));
        assert!(!gathered.take(at(2), Rows::default()));
        assert!(gathered.due().is_empty());
        let pending = gathered.remove(1).unwrap();
        assert_eq!((pending.position.offset, pending.rows.lines.len()), (2, 1));
        gathered.put_back(pending, Duration::ZERO);
        assert_eq!(gathered.due(), [1]);
        assert_eq!(gathered.clear(), 1);
        let mut full = false;
        for i in 0..MAX_ROWS {
            full = gathered.take(at(i as i64 + 1), rows());
        }
        assert!(full);
        assert!(gathered.due().is_empty());
        assert!(gathered.forget(1));
    }
}
