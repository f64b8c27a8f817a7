//! What normalizing gives (cost lines and rejects, defined in `recmeter-core` so the store
//! can write them), where it goes (a [`Sink`]), and the cell readers every format shares:
//! nulls, times and money.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::decimal;

pub use recmeter_core::cost::{CostLine, Reject};

/// What normalizing one file gave: every row is a line or a reject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    pub lines: Vec<CostLine>,
    pub rejects: Vec<Reject>,
    /// Data rows read.
    pub rows: u64,
}

/// Where normalized rows go, one at a time: collected ([`Normalized`]), summed, or built into
/// batches, so a file of any size is read in bounded memory.
pub trait Sink {
    /// A data row was read; it becomes a line or a reject next.
    fn row(&mut self);
    fn line(&mut self, line: CostLine);
    fn reject(&mut self, reject: Reject);
}

impl Sink for Normalized {
    fn row(&mut self) {
        self.rows += 1;
    }

    fn line(&mut self, line: CostLine) {
        self.lines.push(line);
    }

    fn reject(&mut self, reject: Reject) {
        self.rejects.push(reject);
    }
}

/// Why a row is rejected: the column and the reason; the caller adds where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellError {
    pub column: String,
    pub reason: String,
    pub raw: String,
}

impl CellError {
    pub fn new(column: &str, reason: impl Into<String>, raw: &str) -> Self {
        Self {
            column: column.to_owned(),
            reason: reason.into(),
            raw: clip(raw, 1024).to_owned(),
        }
    }

    /// The reject of row `row` of `object`.
    pub fn at(self, object: &str, row: u64) -> Reject {
        Reject {
            source_object: object.to_owned(),
            source_row: row,
            column: self.column,
            reason: self.reason,
            raw: self.raw,
        }
    }
}

fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A cell's text, or `None` for the nulls exports write: empty, `NULL`, `(null)`.
pub fn text(cell: Option<&str>) -> Option<&str> {
    let cell = cell?.trim();
    (!(cell.is_empty() || cell.eq_ignore_ascii_case("null") || cell == "(null)")).then_some(cell)
}

/// A required cell of money.
pub fn money(column: &str, cell: Option<&str>) -> Result<i128, CellError> {
    let raw = text(cell).ok_or_else(|| CellError::new(column, "missing", cell.unwrap_or("")))?;
    decimal::parse(raw).map_err(|e| CellError::new(column, e.to_string(), raw))
}

/// An optional cell of money.
pub fn optional_money(column: &str, cell: Option<&str>) -> Result<Option<i128>, CellError> {
    match text(cell) {
        None => Ok(None),
        Some(raw) => decimal::parse(raw)
            .map(Some)
            .map_err(|e| CellError::new(column, e.to_string(), raw)),
    }
}

/// An optional quantity (not money: kept as a float).
pub fn quantity(column: &str, cell: Option<&str>) -> Result<Option<f64>, CellError> {
    match text(cell) {
        None => Ok(None),
        Some(raw) => raw
            .parse::<f64>()
            .ok()
            .filter(|q| q.is_finite())
            .map(Some)
            .ok_or_else(|| CellError::new(column, "not a number", raw)),
    }
}

/// A required time, UTC: RFC 3339 (`2024-09-18T22:00:00Z`, `…+00:00`), the same with a space
/// and no zone (`2024-09-18 22:00:00`, read as UTC), with ` UTC` after it, or a date alone.
pub fn time(column: &str, cell: Option<&str>) -> Result<i64, CellError> {
    let raw = text(cell).ok_or_else(|| CellError::new(column, "missing", cell.unwrap_or("")))?;
    parse_time(raw).ok_or_else(|| {
        CellError::new(
            column,
            "not a UTC time (RFC 3339, e.g. 2024-09-18T22:00:00Z)",
            raw,
        )
    })
}

/// An optional time.
pub fn optional_time(column: &str, cell: Option<&str>) -> Result<Option<i64>, CellError> {
    match text(cell) {
        None => Ok(None),
        Some(_) => time(column, cell).map(Some),
    }
}

fn parse_time(raw: &str) -> Option<i64> {
    let mut t = raw.trim();
    t = t.strip_suffix(" UTC").unwrap_or(t);
    for utc in ["+00:00", "+0000", "Z"] {
        if let Some(rest) = t.strip_suffix(utc) {
            t = rest;
            break;
        }
    }
    let owned;
    if t.len() == 10 {
        owned = format!("{t}T00:00:00");
        t = &owned;
    }
    // A zone other than UTC is not guessed at.
    if t.len() > 19 && t[19..].contains(['+', '-']) {
        return None;
    }
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(since.as_nanos()).ok()
}

/// Tags written as a JSON object (FOCUS `Tags`, GCP `labels` as a map): values that are not
/// strings keep their JSON text.
pub fn json_tags(column: &str, cell: Option<&str>) -> Result<BTreeMap<String, String>, CellError> {
    let Some(raw) = text(cell) else {
        return Ok(BTreeMap::new());
    };
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| CellError::new(column, format!("not JSON: {e}"), raw))?;
    let serde_json::Value::Object(map) = value else {
        return Err(CellError::new(column, "not a JSON object", raw));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

/// FOCUS's pricing category from a provider's own words: spot is `Dynamic`.
pub fn pricing_category(raw: Option<&str>) -> Option<String> {
    let raw = text(raw)?;
    Some(
        match raw.to_ascii_lowercase().as_str() {
            "standard" | "on demand" | "ondemand" | "on-demand" => "Standard",
            "dynamic" | "spot" => "Dynamic",
            "committed" | "reserved" | "savings plan" => "Committed",
            _ => "Other",
        }
        .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_as_exports_write_them() {
        for null in [
            None,
            Some(""),
            Some("NULL"),
            Some("null"),
            Some("(null)"),
            Some("  "),
        ] {
            assert_eq!(text(null), None, "{null:?}");
        }
        let at = |s| time("T", Some(s)).unwrap();
        let utc = 1_726_696_800_000_000_000; // 2024-09-18T22:00:00Z
        for form in [
            "2024-09-18 22:00:00",
            "2024-09-18T22:00:00Z",
            "2024-09-18T22:00:00.000Z",
            "2024-09-18T22:00:00+00:00",
            "2024-09-18 22:00:00 UTC",
        ] {
            assert_eq!(at(form), utc, "{form}");
        }
        assert_eq!(at("2024-09-18"), utc - 22 * 3_600_000_000_000);
        assert!(time("T", Some("2024-09-18T22:00:00+02:00")).is_err());
        assert_eq!(time("T", Some("NULL")).unwrap_err().reason, "missing");
        let e = money("BilledCost", Some("12,5")).unwrap_err();
        assert_eq!((e.column.as_str(), e.raw.as_str()), ("BilledCost", "12,5"));
        assert_eq!(optional_money("ListCost", Some("NULL")), Ok(None));
        let tags = json_tags("Tags", Some(r#"{"env":"prod","n":3}"#)).unwrap();
        assert_eq!(tags["env"], "prod");
        assert_eq!(tags["n"], "3");
        assert!(json_tags("Tags", Some("[1]")).is_err());
        assert_eq!(pricing_category(Some("Spot")).as_deref(), Some("Dynamic"));
        assert_eq!(pricing_category(Some("(null)")), None);
    }
}
