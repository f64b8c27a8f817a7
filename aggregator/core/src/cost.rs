//! Cost lines: one row of a cloud bill normalized to FOCUS's shape (the `cost_lines` table),
//! and a source row that could not be (`cost_rejects`). The collector's billing normalizers
//! make them; the store writes them.

use std::collections::BTreeMap;

/// Nanoseconds in a day.
const DAY_NANOS: i64 = 86_400_000_000_000;

/// A row of `cost_lines`. Money is in units of `10^-12` of `billing_currency`
/// (`Decimal128(38, 12)`); times are UTC nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostLine {
    pub charge_period_start: i64,
    pub charge_period_end: i64,
    pub provider: String,
    pub billing_account_id: String,
    pub billing_period_start: Option<i64>,
    pub sub_account_id: Option<String>,
    pub service_name: Option<String>,
    pub service_category: Option<String>,
    pub resource_id: Option<String>,
    pub resource_name: Option<String>,
    pub region: Option<String>,
    pub charge_category: Option<String>,
    pub charge_class: Option<String>,
    /// FOCUS `Standard`, `Dynamic` (spot), `Committed` or `Other`.
    pub pricing_category: Option<String>,
    pub pricing_quantity: Option<f64>,
    pub pricing_unit: Option<String>,
    pub consumed_quantity: Option<f64>,
    pub consumed_unit: Option<String>,
    pub billed_cost: i128,
    pub effective_cost: i128,
    pub list_cost: Option<i128>,
    pub billing_currency: String,
    pub tags: BTreeMap<String, String>,
    /// The object (or file) the row came from, and its row number there (the first data row
    /// is 1).
    pub source_object: String,
    pub source_row: u64,
}

impl CostLine {
    /// The UTC day (days since the epoch) of the charge period's start.
    pub fn day(&self) -> i64 {
        self.charge_period_start.div_euclid(DAY_NANOS)
    }
}

/// A row of `cost_rejects`: a source row that is not a cost line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub source_object: String,
    pub source_row: u64,
    /// The column at fault (the export's own name), or empty for the row as a whole.
    pub column: String,
    pub reason: String,
    /// The cell as it was, clipped to 1 KiB.
    pub raw: String,
}

/// One version of one object of the billing bucket: what the ledger keeps so that each
/// version counts once.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectVersion {
    pub path: String,
    /// The ETag, or the version, or empty where the store gives neither.
    pub version: String,
    pub size: u64,
}

/// A bill's identity: a newer export of it replaces its lines.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct BillIdentity {
    pub provider: String,
    pub billing_account_id: String,
    /// Unix nanoseconds; `None` where the export does not say.
    pub billing_period_start: Option<i64>,
    /// The export's folder in the bucket (an AWS delivery's period folder).
    pub prefix: String,
}

impl BillIdentity {
    /// The identity `line`, read from an object under `prefix`, belongs to.
    pub fn of(line: &CostLine, prefix: &str) -> Self {
        Self {
            provider: line.provider.clone(),
            billing_account_id: line.billing_account_id.clone(),
            billing_period_start: line.billing_period_start,
            prefix: prefix.to_owned(),
        }
    }
}

/// A file the landing wrote, not yet in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// One bill identity's lines in an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedBill {
    pub identity: BillIdentity,
    pub files: Vec<Staged>,
    /// The latest charge period end among its lines, Unix nanoseconds.
    pub data_end: i64,
}

/// An export read whole: its lines by bill identity and its rejects, to be put in force at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The export: an object's path, or an AWS delivery's folder and assembly.
    pub export: String,
    /// The object versions it was read from.
    pub versions: Vec<ObjectVersion>,
    pub bills: Vec<StagedBill>,
    pub rejects: Vec<Staged>,
    /// The export could not be read whole: its versions and rejects are recorded, and every
    /// bill in force stays as it was (its own included).
    pub keep_bills: bool,
}

/// Cost lines read from a source that keeps its own log (a Kafka topic), to be appended: they
/// never replace a bill's earlier lines, and the position they move their partition to is
/// noted in the same step, unlogged (the source's log is theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The stream the lines belong to (`kafka://<topic>`): their bills' folder, which no
    /// export of the billing bucket has.
    pub stream: String,
    pub bills: Vec<StagedBill>,
    pub rejects: Vec<Staged>,
    /// Where their partition stands once they are in force.
    pub position: crate::batch::Position,
}

/// What [`Landing`]'s calls return.
pub type Landed<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = crate::error::Result<T>> + Send + 'a>>;

/// Where the billing source puts what it reads: the aggregator's store, through its log and
/// its billing ledger. Files are staged first, then an export's files go in force together.
pub trait Landing: Send + Sync + std::fmt::Debug {
    /// Whether the ledger holds `export` read from exactly `versions` already.
    fn seen(&self, export: &str, versions: &[ObjectVersion]) -> bool;
    /// Writes `lines` (all of one bill identity) as a file, not in force until committed.
    /// Encoding runs off the caller's thread, so a reader can go on meanwhile.
    fn stage_lines(&self, lines: Vec<CostLine>) -> Landed<'_, Staged>;
    /// Writes `rejects` as a file, not in force until committed.
    fn stage_rejects(&self, rejects: Vec<Reject>) -> Landed<'_, Staged>;
    /// Puts `commit` in force in one logged step: its bills replace every earlier line of
    /// their identities, and its rejects replace the export's earlier rejects.
    fn commit(&self, commit: Commit) -> Landed<'_, ()>;
    /// Queues `append` at once, or fails with `Error::Backpressure` while the aggregator's queue
    /// is full: its files (staged) go in force, added to their bills, in the same step as its
    /// position is noted; the answer comes once they are. Unlogged: a checkpoint holds both.
    fn append(&self, append: Append) -> crate::error::Result<crate::submit::Answer>;
    /// Deletes staged files of an export that will not be committed (its read failed).
    fn discard(&self, files: Vec<Staged>) -> Landed<'_, ()>;
}

/// When the billing source last finished a scan of the bucket, Unix nanoseconds (0: not yet
/// since the start).
#[derive(Debug, Default)]
pub struct ScanStatus {
    last_scan_nanos: std::sync::atomic::AtomicU64,
}

impl ScanStatus {
    pub fn scanned(&self, at_nanos: u64) {
        self.last_scan_nanos
            .store(at_nanos, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last_scan_nanos(&self) -> Option<u64> {
        match self
            .last_scan_nanos
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            n => Some(n),
        }
    }
}
