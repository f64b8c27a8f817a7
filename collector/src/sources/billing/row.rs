//! What every format's reader shares: the per-prefix defaults, a CSV header and a row read
//! by column name, and why a file cannot be read at all.

/// Defaults for files whose rows do not say (per prefix in `[billing]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub provider: Option<String>,
    pub billing_account_id: Option<String>,
}

/// A CSV header: each column's index by name.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Looked up for every cell read: a fast hash, over names the file's header gives.
    index: foldhash::HashMap<String, usize>,
    names: Vec<String>,
    pub(super) len: usize,
}

impl Header {
    pub(super) fn new(names: &csv::StringRecord) -> Self {
        let names: Vec<String> = names
            .iter()
            .map(|n| n.trim_start_matches('\u{feff}').trim().to_owned())
            .collect();
        Self {
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            len: names.len(),
            names,
        }
    }

    /// Whether the column `name` is there.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// One data row, read by column name.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub(super) header: &'a Header,
    pub(super) record: &'a csv::StringRecord,
}

impl<'a> Row<'a> {
    /// The cell of column `name`, if the file has the column.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.header
            .index
            .get(name)
            .and_then(|&i| self.record.get(i))
    }

    /// Each column whose name starts with `prefix`, as (the rest of its name, its cell).
    pub fn columns_with_prefix(&self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        let record = self.record;
        self.header
            .names
            .iter()
            .enumerate()
            .filter_map(move |(i, n)| Some((n.strip_prefix(prefix)?, record.get(i)?)))
    }

    /// The cell of the first of `names` the file has.
    pub fn first(&self, names: &[&str]) -> Option<&'a str> {
        names.iter().find_map(|n| self.get(n))
    }
}

/// Why a file cannot be read at all (its rows are not the problem).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("no header row")]
    Empty,
    #[error("its header is not CSV: {0}")]
    Header(String),
    #[error("not a Parquet file recmeter reads: {0}")]
    Parquet(String),
    #[error(
        "not a billing export recmeter reads: no FOCUS (BilledCost, ChargePeriodStart), AWS CUR \
         (lineItem/UnblendedCost, line_item_unblended_cost) or GCP (cost, usage_start_time) \
         columns"
    )]
    UnknownFormat,
}
