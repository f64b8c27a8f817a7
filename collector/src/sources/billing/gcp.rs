//! Google Cloud's billing export to BigQuery, as newline-delimited JSON (the export's nested
//! records) or CSV (nested fields as dotted columns, `credits` and `labels` as JSON).
//! Money is read from the JSON text of each number, never through `f64`.
//!
//! The cost columns:
//! - BilledCost: `cost`.
//! - EffectiveCost: `cost` + Σ `credits[].amount` (credits are negative), not clamped at 0:
//!   a credit larger than its line's cost is money too.
//! - ListCost: `cost_at_list`, where exported.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::decimal::Total;
#[cfg(test)]
use super::line::Normalized;
use super::line::{self, CellError, CostLine, Sink};
use super::row::{Defaults, FileError, Row};

#[derive(Deserialize, Default)]
struct Described {
    description: Option<String>,
}

#[derive(Deserialize, Default)]
struct Project {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Label {
    key: String,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
struct Location {
    location: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    amount: Option<f64>,
    unit: Option<String>,
    amount_in_pricing_units: Option<f64>,
    pricing_unit: Option<String>,
}

#[derive(Deserialize)]
struct Credit<'a> {
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Invoice {
    month: Option<String>,
}

#[derive(Deserialize, Default)]
struct Resource {
    name: Option<String>,
    global_name: Option<String>,
}

/// One row of the export, as its JSON has it.
#[derive(Deserialize)]
struct Export<'a> {
    billing_account_id: Option<String>,
    #[serde(default)]
    service: Option<Described>,
    #[serde(default)]
    sku: Option<Described>,
    usage_start_time: Option<String>,
    usage_end_time: Option<String>,
    #[serde(default)]
    project: Option<Project>,
    #[serde(default)]
    labels: Option<Vec<Label>>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(borrow)]
    cost: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cost_at_list: Option<&'a RawValue>,
    currency: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    credits: Option<Vec<Credit<'a>>>,
    #[serde(default)]
    invoice: Option<Invoice>,
    cost_type: Option<String>,
    #[serde(default)]
    resource: Option<Resource>,
}

/// The text of a JSON number (or of a string holding one, as BigQuery writes NUMERIC).
fn number_text(raw: &RawValue) -> &str {
    let text = raw.get().trim();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
}

fn money(column: &str, raw: Option<&RawValue>) -> Result<i128, CellError> {
    line::money(column, raw.map(number_text))
}

fn optional_money(column: &str, raw: Option<&RawValue>) -> Result<Option<i128>, CellError> {
    match raw {
        Some(r) if r.get() != "null" => line::optional_money(column, Some(number_text(r))),
        _ => Ok(None),
    }
}

/// `invoice.month` (`YYYYMM`, Pacific time) as the UTC instant its month starts: the first
/// of a month at midnight is daylight time (UTC−7) from April to November, standard time
/// (UTC−8) from December to March, under the US rules in force since 2007.
fn invoice_month(raw: Option<&str>) -> Result<Option<i64>, CellError> {
    let Some(text) = line::text(raw) else {
        return Ok(None);
    };
    let bad = || CellError::new("invoice.month", "not a YYYYMM month", text);
    if text.len() != 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let month: u32 = text[4..].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&month) {
        return Err(bad());
    }
    let midnight = line::time(
        "invoice.month",
        Some(&format!("{}-{}-01", &text[..4], &text[4..])),
    )?;
    let offset_hours = if (4..=11).contains(&month) { 7 } else { 8 };
    Ok(Some(midnight + offset_hours * 3_600_000_000_000))
}

/// Spot and preemptible SKUs are FOCUS's `Dynamic`; other SKUs say nothing.
fn pricing_category(sku: Option<&str>) -> Option<String> {
    let sku = sku?;
    (sku.contains("Spot") || sku.contains("Preemptible")).then(|| "Dynamic".to_owned())
}

fn charge_category(cost_type: Option<&str>) -> &'static str {
    match cost_type {
        Some("tax") => "Tax",
        Some("adjustment" | "credit" | "rounding_error") => "Adjustment",
        _ => "Usage",
    }
}

/// A row's money, read exactly.
struct Money {
    billed: i128,
    credits: Vec<i128>,
    list: Option<i128>,
}

impl Export<'_> {
    /// The money of a JSON row, from the text of its numbers.
    fn money(&self) -> Result<Money, CellError> {
        Ok(Money {
            billed: money("cost", self.cost)?,
            credits: self
                .credits
                .iter()
                .flatten()
                .map(|c| money("credits.amount", c.amount))
                .collect::<Result<_, _>>()?,
            list: optional_money("cost_at_list", self.cost_at_list)?,
        })
    }

    fn line(self, money: Money, defaults: &Defaults) -> Result<CostLine, CellError> {
        let billed = money.billed;
        let mut effective = Total(billed);
        for amount in money.credits {
            effective
                .add(amount)
                .map_err(|e| CellError::new("credits.amount", e.to_string(), ""))?;
        }
        let sku = self.sku.and_then(|s| s.description);
        let usage = self.usage.unwrap_or_default();
        let location = self.location.unwrap_or_default();
        let resource = self.resource.unwrap_or_default();
        let mut tags = BTreeMap::new();
        for label in self.labels.into_iter().flatten() {
            tags.insert(label.key, label.value.unwrap_or_default());
        }
        Ok(CostLine {
            charge_period_start: line::time("usage_start_time", self.usage_start_time.as_deref())?,
            charge_period_end: line::time("usage_end_time", self.usage_end_time.as_deref())?,
            provider: defaults
                .provider
                .clone()
                .unwrap_or_else(|| "Google Cloud".to_owned()),
            billing_account_id: self
                .billing_account_id
                .filter(|a| !a.is_empty())
                .or_else(|| defaults.billing_account_id.clone())
                .ok_or_else(|| CellError::new("billing_account_id", "missing", ""))?,
            billing_period_start: invoice_month(self.invoice.and_then(|i| i.month).as_deref())?,
            sub_account_id: self.project.and_then(|p| p.id),
            service_name: self.service.and_then(|s| s.description),
            service_category: None,
            resource_id: resource.global_name,
            resource_name: resource.name,
            region: location.region.or(location.location),
            charge_category: Some(charge_category(self.cost_type.as_deref()).to_owned()),
            charge_class: None,
            pricing_category: pricing_category(sku.as_deref()),
            pricing_quantity: usage.amount_in_pricing_units,
            pricing_unit: usage.pricing_unit,
            consumed_quantity: usage.amount,
            consumed_unit: usage.unit,
            billed_cost: billed,
            effective_cost: effective.0,
            list_cost: money.list,
            billing_currency: self
                .currency
                .filter(|c| !c.is_empty())
                .ok_or_else(|| CellError::new("currency", "missing", ""))?,
            tags,
            source_object: String::new(),
            source_row: 0,
        })
    }
}

/// Longest JSON row read; a longer one is a reject.
pub const MAX_ROW_BYTES: usize = 1 << 20;

/// Normalizes newline-delimited JSON rows; a line that is not a row is a reject.
pub fn normalize_ndjson(
    reader: impl BufRead,
    object: &str,
    defaults: &Defaults,
    out: &mut impl Sink,
) -> Result<(), FileError> {
    let mut row = 0u64;
    let mut reader = reader;
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        // A row longer than the limit is a reject, and memory stays bounded however long.
        let read = (&mut reader)
            .take(MAX_ROW_BYTES as u64 + 1)
            .read_until(b'\n', &mut bytes)?;
        if read == 0 {
            break;
        }
        if bytes.len() > MAX_ROW_BYTES && bytes.last() != Some(&b'\n') {
            row += 1;
            out.row();
            let mut skipped = Vec::new();
            while (&mut reader)
                .take(1 << 20)
                .read_until(b'\n', &mut skipped)?
                > 0
                && skipped.last() != Some(&b'\n')
            {
                skipped.clear();
            }
            let reason = format!("a row of more than {MAX_ROW_BYTES} bytes");
            out.reject(CellError::new("", reason, "").at(object, row));
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            row += 1;
            out.row();
            out.reject(CellError::new("", "not UTF-8", "").at(object, row));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        row += 1;
        out.row();
        let parsed = serde_json::from_str::<Export<'_>>(text)
            .map_err(|e| CellError::new("", format!("not an export row: {e}"), text))
            .and_then(|export| {
                let money = export.money()?;
                export.line(money, defaults)
            });
        match parsed {
            Ok(mut line) => {
                line.source_object = object.to_owned();
                line.source_row = row;
                out.line(line);
            }
            Err(e) => out.reject(e.at(object, row)),
        }
    }
    Ok(())
}

/// The cost line of one CSV row: dotted columns for nested fields, `credits` and `labels` as
/// JSON.
pub fn csv_line(row: Row<'_>, defaults: &Defaults) -> Result<CostLine, CellError> {
    let owned = |name: &str| line::text(row.get(name)).map(str::to_owned);
    let credits_text = line::text(row.get("credits")).unwrap_or("[]");
    let credits: Vec<Credit<'_>> = serde_json::from_str(credits_text).map_err(|e| {
        CellError::new(
            "credits",
            format!("not a JSON list of credits: {e}"),
            credits_text,
        )
    })?;
    let money = Money {
        billed: line::money("cost", row.get("cost"))?,
        credits: credits
            .iter()
            .map(|c| self::money("credits.amount", c.amount))
            .collect::<Result<_, _>>()?,
        list: line::optional_money("cost_at_list", row.get("cost_at_list"))?,
    };
    let labels_text = line::text(row.get("labels")).unwrap_or("[]");
    let labels: Vec<Label> = match serde_json::from_str::<Vec<Label>>(labels_text) {
        Ok(l) => l,
        // Labels written as one JSON object also read.
        Err(_) => line::json_tags("labels", Some(labels_text))?
            .into_iter()
            .map(|(key, value)| Label {
                key,
                value: Some(value),
            })
            .collect(),
    };
    let export = Export {
        billing_account_id: owned("billing_account_id"),
        service: Some(Described {
            description: owned("service.description"),
        }),
        sku: Some(Described {
            description: owned("sku.description"),
        }),
        usage_start_time: owned("usage_start_time"),
        usage_end_time: owned("usage_end_time"),
        project: Some(Project {
            id: owned("project.id"),
        }),
        labels: Some(labels),
        location: Some(Location {
            location: owned("location.location"),
            region: owned("location.region"),
        }),
        cost: None,
        cost_at_list: None,
        currency: owned("currency"),
        usage: Some(Usage {
            amount: line::quantity("usage.amount", row.get("usage.amount"))?,
            unit: owned("usage.unit"),
            amount_in_pricing_units: line::quantity(
                "usage.amount_in_pricing_units",
                row.get("usage.amount_in_pricing_units"),
            )?,
            pricing_unit: owned("usage.pricing_unit"),
        }),
        credits: None,
        invoice: Some(Invoice {
            month: owned("invoice.month"),
        }),
        cost_type: owned("cost_type"),
        resource: Some(Resource {
            name: owned("resource.name"),
            global_name: owned("resource.global_name"),
        }),
    };
    export.line(money, defaults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::billing::{Format, decimal, normalize};

    #[test]
    fn json_money_is_read_from_its_text_and_credits_lower_the_effective_cost() {
        let text = r#"{"billing_account_id":"A","service":{"description":"Compute Engine"},"sku":{"description":"Spot Preemptible N2"},"usage_start_time":"2024-11-16 00:00:00 UTC","usage_end_time":"2024-11-16T01:00:00Z","cost":0.123456789012,"currency":"USD","credits":[{"amount":-0.05},{"amount":"-0.000000000001"}],"invoice":{"month":"202411"},"cost_type":"tax","labels":[{"key":"component","value":"ranker"}]}
{"cost": 1e-13, "usage_start_time": "2024-11-16T00:00:00Z"}
not json
"#;
        let mut out = Normalized::default();
        let format = normalize(text.as_bytes(), "gcp.json", &Defaults::default(), &mut out);
        assert_eq!(format.unwrap(), Format::GcpJson);
        assert_eq!((out.rows, out.lines.len(), out.rejects.len()), (3, 1, 2));
        let line = &out.lines[0];
        assert_eq!(decimal::format(line.billed_cost), "0.123456789012");
        assert_eq!(decimal::format(line.effective_cost), "0.073456789011");
        // November's invoice month starts at midnight Pacific daylight time.
        assert_eq!(
            line.billing_period_start,
            line::time("t", Some("2024-11-01T07:00:00Z")).ok()
        );
        assert_eq!(line.pricing_category.as_deref(), Some("Dynamic"));
        assert_eq!(line.charge_category.as_deref(), Some("Tax"));
        assert_eq!(line.provider, "Google Cloud");
        assert_eq!(line.tags["component"], "ranker");
        assert_eq!(
            out.rejects[0].column, "cost",
            "1e-13 has more than 12 decimals"
        );
        assert_eq!(
            (out.rejects[1].source_row, out.rejects[1].column.as_str()),
            (3, "")
        );
    }

    /// Hostile rows: far too long, nested far too deep, not UTF-8, a time past what
    /// nanoseconds hold, a quantity past f64: each a reject; the good row after them is read.
    #[test]
    fn hostile_json_rows_are_rejects_and_memory_stays_bounded() {
        let good = r#"{"billing_account_id":"A","usage_start_time":"2024-01-01T00:00:00Z","usage_end_time":"2024-01-01T01:00:00Z","cost":1,"currency":"USD"}"#;
        let mut text = Vec::new();
        text.extend_from_slice(b"{\"labels\":\"");
        text.extend(std::iter::repeat_n(b'x', 3 * MAX_ROW_BYTES));
        text.extend_from_slice(b"\"}\n");
        text.extend_from_slice(
            format!("{}{}\n", "[".repeat(10_000), "]".repeat(10_000)).as_bytes(),
        );
        text.extend_from_slice(b"{\"cost\": \"\xff\xfe\"}\n");
        text.extend_from_slice(good.replace("2024-01-01T00", "9999-12-31T00").as_bytes());
        text.push(b'\n');
        text.extend_from_slice(
            good.replace("\"currency\"", "\"usage\":{\"amount\":1e999},\"currency\"")
                .as_bytes(),
        );
        text.push(b'\n');
        text.extend_from_slice(good.as_bytes());
        text.push(b'\n');
        let mut out = Normalized::default();
        normalize(&text[..], "hostile.json", &Defaults::default(), &mut out).unwrap();
        let reasons: Vec<(u64, &str)> = out
            .rejects
            .iter()
            .map(|r| (r.source_row, r.reason.as_str()))
            .collect();
        assert_eq!(out.rows, 6, "{reasons:?}");
        assert_eq!(out.lines.len(), 1, "{reasons:?}");
        assert_eq!(out.lines[0].source_row, 6);
        assert!(reasons[0].1.contains("more than"), "{reasons:?}");
        assert_eq!(out.rejects.len(), 5, "{reasons:?}");
        assert!(out.rejects.iter().all(|r| r.raw.len() <= 1024));
    }

    #[test]
    fn csv_exports_read_dotted_columns_and_json_credits() {
        let text = "billing_account_id,service.description,usage_start_time,usage_end_time,\
                    cost,currency,credits,labels,invoice.month\n\
                    A,BigQuery,2024-01-05 10:00:00 UTC,2024-01-05 11:00:00 UTC,2.5,USD,\
                    \"[{\"\"amount\"\": -0.5}]\",\"{\"\"env\"\": \"\"prod\"\"}\",202401\n";
        let mut out = Normalized::default();
        let format = normalize(text.as_bytes(), "gcp.csv", &Defaults::default(), &mut out);
        assert_eq!(format.unwrap(), Format::GcpCsv);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let line = &out.lines[0];
        assert_eq!(line.effective_cost, 2 * decimal::ONE);
        assert_eq!(line.tags["env"], "prod");
        assert_eq!(
            line.billing_period_start,
            line::time("t", Some("2024-01-01T08:00:00Z")).ok(),
            "January: Pacific standard time"
        );
    }
}
