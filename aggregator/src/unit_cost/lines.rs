//! The cost lines in force, read through the catalog's `cost_lines` table, as cost per UTC
//! hour: each line converted to USD, sent where its rule says, and prorated over the hours
//! of its charge period. Lines alike (same period, target, provider and service) are summed
//! before they are prorated, so a bill of many resources costs a proration per group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, MapArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, TimeUnit, TimestampNanosecondType};
use datafusion::arrow::record_batch::RecordBatch;

use super::periods::{DAY_NANOS, HOUR_NANOS};
use super::plan::{Plan, Target};
use super::prorate::{MAX_HOURS, prorate};
use crate::cost::CostLine;
use crate::error::{Error, Result};
use crate::sql::BatchSink;

/// What the line reader selects from `cost_lines`, in this order.
pub const LINES_SQL: &str = "SELECT charge_period_start, charge_period_end, provider, \
     service_name, service_category, pricing_category, billing_currency, tags, \
     effective_cost, billed_cost FROM cost_lines";

/// Money, in units of `10^-12` USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub effective: i128,
    pub billed: i128,
}

impl Amount {
    /// Adds `other`, saturating: two lines near `Decimal128(38, 12)`'s bound would overflow.
    pub fn add(&mut self, other: Amount) {
        self.effective = self.effective.saturating_add(other.effective);
        self.billed = self.billed.saturating_add(other.billed);
    }
}

/// One hour's cost, before shared cost is split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourCost {
    /// By target, provider and service name (empty where the line names none).
    pub pieces: BTreeMap<(Target, String, String), Amount>,
    /// The providers with usage data in this hour: lines of at most a day that cover it. (A
    /// monthly fee covers every hour of its month, and says nothing of whether the month's
    /// usage has been billed.)
    pub covered: BTreeSet<String>,
    /// Every provider with a line in this hour, monthly fees included.
    pub providers: BTreeSet<String>,
    /// Effective cost of compute (`service_category` `Compute`), and the part of it priced
    /// `Dynamic` (spot).
    pub compute: i128,
    pub dynamic: i128,
}

/// The lines as cost per hour, and what could not be used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourlyCost {
    /// By hour start, UTC nanoseconds.
    pub hours: BTreeMap<i64, HourCost>,
    /// Every provider with lines.
    pub providers: BTreeSet<String>,
    /// Lines left out, by reason (`currency`: no rate for it in `billing.usd_rates`, or too
    /// large to convert; `period`: a charge period that ends before it starts, spans over 400
    /// days or ends past the year 2262).
    pub excluded: BTreeMap<&'static str, u64>,
    /// Lines read.
    pub lines: u64,
}

/// Why lines are alike: summed before proration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Group {
    start: i64,
    end: i64,
    target: Target,
    provider: String,
    service: String,
    compute: bool,
    dynamic: bool,
}

/// Reads `cost_lines` batches (as [`LINES_SQL`] selects them) into [`HourlyCost`].
#[derive(Debug)]
pub struct LineReader {
    plan: Arc<Plan>,
    /// USD per unit of each other currency, in units of `10^-12`.
    rates: Arc<BTreeMap<String, i128>>,
    groups: HashMap<Group, Amount>,
    excluded: BTreeMap<&'static str, u64>,
    lines: u64,
    /// Reused for each line's rule match.
    line: CostLine,
}

/// The latest charge period end used: past it (the year 2262) the hour and week arithmetic
/// would overflow.
const LAST_END: i64 = i64::MAX - 8 * DAY_NANOS;

/// `1` in units of `10^-12`.
const ONE: i128 = 1_000_000_000_000;

impl LineReader {
    pub fn new(plan: Arc<Plan>, rates: Arc<BTreeMap<String, i128>>) -> Self {
        Self {
            plan,
            rates,
            groups: HashMap::new(),
            excluded: BTreeMap::new(),
            lines: 0,
            line: CostLine::default(),
        }
    }

    /// `amount` of `currency` in USD, or `None` without a rate (or past `i128`).
    fn usd(&self, amount: i128, currency: &str) -> Option<i128> {
        if currency == "USD" {
            return Some(amount);
        }
        let rate = *self.rates.get(currency)?;
        amount.checked_mul(rate).map(|v| v / ONE)
    }

    /// The lines read, prorated.
    pub fn finish(self) -> HourlyCost {
        let mut out = HourlyCost {
            excluded: self.excluded,
            lines: self.lines,
            ..HourlyCost::default()
        };
        for (group, amount) in self.groups {
            let (Ok(effective), Ok(billed)) = (
                prorate(group.start, group.end, amount.effective),
                prorate(group.start, group.end, amount.billed),
            ) else {
                *out.excluded.entry("period").or_default() += 1;
                continue;
            };
            out.providers.insert(group.provider.clone());
            let usage = group.end - group.start <= DAY_NANOS;
            for ((hour, effective), (_, billed)) in effective.into_iter().zip(billed) {
                let h = out.hours.entry(hour).or_default();
                h.pieces
                    .entry((
                        group.target.clone(),
                        group.provider.clone(),
                        group.service.clone(),
                    ))
                    .or_default()
                    .add(Amount { effective, billed });
                if usage {
                    h.covered.insert(group.provider.clone());
                }
                h.providers.insert(group.provider.clone());
                if group.compute {
                    h.compute = h.compute.saturating_add(effective);
                    if group.dynamic {
                        h.dynamic = h.dynamic.saturating_add(effective);
                    }
                }
            }
        }
        out
    }
}

fn column(batch: &RecordBatch, i: usize, to: &DataType) -> Result<ArrayRef> {
    let c = batch
        .columns()
        .get(i)
        .ok_or_else(|| Error::QueryInternal(format!("cost_lines: no column {i}")))?;
    cast(c, to).map_err(|e| Error::QueryInternal(format!("cost_lines column {i}: {e}")))
}

impl BatchSink for LineReader {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let time = DataType::Timestamp(TimeUnit::Nanosecond, None);
        let money = DataType::Decimal128(38, 12);
        let start = column(batch, 0, &time)?;
        let end = column(batch, 1, &time)?;
        let texts = (2..7)
            .map(|i| column(batch, i, &DataType::Utf8))
            .collect::<Result<Vec<_>>>()?;
        let effective = column(batch, 8, &money)?;
        let billed = column(batch, 9, &money)?;
        let bad = || Error::QueryInternal("cost_lines: a column of an unexpected type".into());
        let start = start
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(bad)?;
        let end = end
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(bad)?;
        let texts: Vec<&StringArray> = texts
            .iter()
            .map(|a| a.as_string_opt::<i32>().ok_or_else(bad))
            .collect::<Result<_>>()?;
        let [provider, service, category, pricing, currency] = texts[..] else {
            return Err(bad());
        };
        let effective = effective
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(bad)?;
        let billed = billed
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(bad)?;
        let tags = batch.column(7).as_map_opt();
        fn text(a: &StringArray, row: usize) -> &str {
            if a.is_null(row) { "" } else { a.value(row) }
        }
        for row in 0..batch.num_rows() {
            self.lines += 1;
            let (from, to) = (start.value(row), end.value(row));
            if to < from || to - from > (MAX_HOURS - 1) * HOUR_NANOS || to > LAST_END {
                *self.excluded.entry("period").or_default() += 1;
                continue;
            }
            let cur = text(currency, row);
            let (Some(e), Some(b)) = (
                self.usd(effective.value(row), cur),
                self.usd(billed.value(row), cur),
            ) else {
                *self.excluded.entry("currency").or_default() += 1;
                continue;
            };
            self.line.provider.clear();
            self.line.provider.push_str(text(provider, row));
            self.line.service_name = (!service.is_null(row)).then(|| service.value(row).into());
            self.line.tags.clear();
            if let Some(tags) = tags {
                read_tags(tags, row, &self.plan.tags, &mut self.line);
            }
            let target = self.plan.target(&self.line);
            let compute = text(category, row) == "Compute";
            let group = Group {
                start: from,
                end: to,
                target,
                provider: self.line.provider.clone(),
                service: text(service, row).to_owned(),
                compute,
                dynamic: compute && text(pricing, row) == "Dynamic",
            };
            self.groups.entry(group).or_default().add(Amount {
                effective: e,
                billed: b,
            });
        }
        Ok(())
    }
}

/// The tags of row `row` the rules read (`wanted`), into `line`.
fn read_tags(tags: &MapArray, row: usize, wanted: &[String], line: &mut CostLine) {
    if wanted.is_empty() || tags.is_null(row) {
        return;
    }
    let entries = tags.value(row);
    let (Some(keys), Some(values)) = (
        entries.column(0).as_string_opt::<i32>(),
        entries.column(1).as_string_opt::<i32>(),
    ) else {
        return;
    };
    for i in 0..keys.len() {
        let key = keys.value(i);
        if !values.is_null(i) && wanted.iter().any(|w| w == key) {
            line.tags.insert(key.to_owned(), values.value(i).to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cost::cost_lines_batch;
    use crate::unit_cost::config::CostConfig;

    const H: i64 = HOUR_NANOS;
    /// $1 in units.
    const USD: i128 = 1_000_000_000_000;

    fn line(start: i64, end: i64, cost: i128, currency: &str, tags: &[(&str, &str)]) -> CostLine {
        CostLine {
            charge_period_start: start,
            charge_period_end: end,
            provider: "AWS".into(),
            service_name: Some("Amazon EC2".into()),
            service_category: Some("Compute".into()),
            pricing_category: Some("Dynamic".into()),
            billed_cost: cost,
            effective_cost: cost,
            billing_currency: currency.into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..CostLine::default()
        }
    }

    /// The batch as the line reader's query selects it from `cost_lines`.
    fn selected(lines: &[CostLine]) -> RecordBatch {
        let batch = cost_lines_batch(lines).unwrap();
        let schema = batch.schema();
        let pick: Vec<usize> = LINES_SQL
            .trim_start_matches("SELECT ")
            .split(" FROM")
            .next()
            .unwrap()
            .split(',')
            .map(|c| schema.index_of(c.trim()).unwrap())
            .collect();
        batch.project(&pick).unwrap()
    }

    #[test]
    fn lines_are_priced_in_usd_sent_by_tag_and_spread_over_their_hours() {
        let config: CostConfig = serde_json::from_str(
            r#"{"components": [{"name": "ranker", "services": ["ranker"]}],
                "allocation": [{"component_tag": "component"}]}"#,
        )
        .unwrap();
        let plan = Arc::new(Plan::new(&config).unwrap());
        let rates = Arc::new(BTreeMap::from([("EUR".to_owned(), USD * 11 / 10)]));
        let mut reader = LineReader::new(plan, rates);
        reader
            .add(&selected(&[
                // $3 over two hours and a half from 10:30: $0.60, $1.20, $1.20.
                line(
                    10 * H + H / 2,
                    13 * H,
                    3 * USD,
                    "USD",
                    &[("component", "ranker")],
                ),
                // €10 at 1.1: $11, in hour 10, untagged: shared.
                line(10 * H, 11 * H, 10 * USD, "EUR", &[]),
                // No rate for JPY, and a period that ends before it starts: left out, counted.
                line(10 * H, 11 * H, USD, "JPY", &[]),
                line(11 * H, 10 * H, USD, "USD", &[]),
            ]))
            .unwrap();
        let cost = reader.finish();
        assert_eq!(cost.lines, 4);
        assert_eq!(
            cost.excluded,
            BTreeMap::from([("currency", 1), ("period", 1)])
        );
        let piece = |hour: i64, target: Target| {
            cost.hours[&(hour * H)].pieces[&(target, "AWS".to_owned(), "Amazon EC2".to_owned())]
                .effective
        };
        assert_eq!(piece(10, Target::Component(0)), USD * 6 / 10);
        assert_eq!(piece(11, Target::Component(0)), USD * 12 / 10);
        assert_eq!(piece(12, Target::Component(0)), USD * 12 / 10);
        assert_eq!(piece(10, Target::Shared), 11 * USD);
        // Compute priced Dynamic, hour 10: $0.60 + $11.
        assert_eq!(cost.hours[&(10 * H)].compute, USD * 116 / 10);
        assert_eq!(cost.hours[&(10 * H)].dynamic, USD * 116 / 10);
        assert!(cost.hours[&(12 * H)].covered.contains("AWS"));
    }
}
