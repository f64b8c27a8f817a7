//! FOCUS 1.0 to 1.2 (the FinOps Open Cost and Usage Specification): the columns map one to
//! one; `NULL` is null; `Tags` is a JSON object. 1.2's `ServiceProviderName` is read where
//! 1.0's `ProviderName` is absent. A line may also come as one JSON object with the same
//! column names (the Kafka billing topic's messages).

use super::line::{
    self, CellError, CostLine, json_tags, money, optional_money, optional_time, quantity, time,
};
use super::row::{Defaults, Header, Row};

/// Owned text of an optional cell.
fn owned(cell: Option<&str>) -> Option<String> {
    line::text(cell).map(str::to_owned)
}

/// The cost line of one FOCUS row.
pub fn line(row: Row<'_>, defaults: &Defaults) -> Result<CostLine, CellError> {
    let provider = owned(row.first(&["ServiceProviderName", "ProviderName"]))
        .or_else(|| defaults.provider.clone())
        .ok_or_else(|| {
            CellError::new(
                "ProviderName",
                "missing, and no provider is configured for this prefix",
                "",
            )
        })?;
    let billing_account_id = owned(row.get("BillingAccountId"))
        .or_else(|| defaults.billing_account_id.clone())
        .ok_or_else(|| {
            CellError::new(
                "BillingAccountId",
                "missing, and no billing account is configured for this prefix",
                "",
            )
        })?;
    let billing_currency = owned(row.get("BillingCurrency"))
        .ok_or_else(|| CellError::new("BillingCurrency", "missing", ""))?;
    Ok(CostLine {
        charge_period_start: time("ChargePeriodStart", row.get("ChargePeriodStart"))?,
        charge_period_end: time("ChargePeriodEnd", row.get("ChargePeriodEnd"))?,
        provider,
        billing_account_id,
        billing_period_start: optional_time("BillingPeriodStart", row.get("BillingPeriodStart"))?,
        sub_account_id: owned(row.get("SubAccountId")),
        service_name: owned(row.get("ServiceName")),
        service_category: owned(row.get("ServiceCategory")),
        resource_id: owned(row.get("ResourceId")),
        resource_name: owned(row.get("ResourceName")),
        region: owned(row.first(&["RegionId", "Region"])),
        charge_category: owned(row.get("ChargeCategory")),
        charge_class: owned(row.get("ChargeClass")),
        pricing_category: line::pricing_category(row.get("PricingCategory")),
        pricing_quantity: quantity("PricingQuantity", row.get("PricingQuantity"))?,
        pricing_unit: owned(row.get("PricingUnit")),
        consumed_quantity: quantity("ConsumedQuantity", row.get("ConsumedQuantity"))?,
        consumed_unit: owned(row.get("ConsumedUnit")),
        billed_cost: money("BilledCost", row.get("BilledCost"))?,
        effective_cost: money("EffectiveCost", row.get("EffectiveCost"))?,
        list_cost: optional_money("ListCost", row.get("ListCost"))?,
        billing_currency,
        tags: json_tags("Tags", row.get("Tags"))?,
        source_object: String::new(),
        source_row: 0,
    })
}

/// The cost line of one JSON object with FOCUS column names: strings are read as they are,
/// numbers from their JSON text (money never goes through `f64`), objects and arrays (`Tags`)
/// as their JSON text, and `null` as a null cell.
pub fn json_line(text: &str, defaults: &Defaults) -> Result<CostLine, CellError> {
    let object: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(text)
            .map_err(|e| CellError::new("", format!("not a JSON object: {e}"), text))?;
    let mut names = csv::StringRecord::new();
    let mut cells = csv::StringRecord::new();
    for (name, value) in object {
        let raw = value.get();
        names.push_field(&name);
        if raw.starts_with('"') {
            let cell: String = serde_json::from_str(raw)
                .map_err(|e| CellError::new(&name, format!("not a JSON string: {e}"), raw))?;
            cells.push_field(&cell);
        } else if raw == "null" {
            cells.push_field("");
        } else {
            cells.push_field(raw);
        }
    }
    let header = Header::new(&names);
    line(
        Row {
            header: &header,
            record: &cells,
        },
        defaults,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_reads_as_its_csv_row_would() {
        let text = r#"{"BilledCost": 0.123456789012, "EffectiveCost": "0.1", "ListCost": null,
            "ChargePeriodStart": "2026-11-30T00:00:00Z", "ChargePeriodEnd": "2026-11-30T01:00:00Z",
            "ProviderName": "AWS", "BillingAccountId": "1", "BillingCurrency": "USD",
            "ServiceName": "Amazon EC2", "PricingCategory": "Spot", "Tags": {"team": "recs", "n": 2}}"#;
        let line = json_line(text, &Defaults::default()).unwrap();
        assert_eq!(line.billed_cost, 123_456_789_012);
        assert_eq!(line.effective_cost, 100_000_000_000);
        assert_eq!(line.list_cost, None);
        assert_eq!(line.pricing_category.as_deref(), Some("Dynamic"));
        assert_eq!(line.tags["team"], "recs");
        assert_eq!(line.tags["n"], "2");
        let e = json_line(
            &text.replace("0.123456789012", "\"x\""),
            &Defaults::default(),
        )
        .unwrap_err();
        assert_eq!((e.column.as_str(), e.raw.as_str()), ("BilledCost", "x"));
        let e = json_line("[1, 2]", &Defaults::default()).unwrap_err();
        assert!(e.reason.starts_with("not a JSON object"), "{e:?}");
        // Digits past f64's precision are kept.
        let exact = r#"{"BilledCost": 12345678901234.000000000001, "EffectiveCost": 0,
            "ChargePeriodStart": "2026-11-30", "ChargePeriodEnd": "2026-12-01",
            "ProviderName": "AWS", "BillingAccountId": "1", "BillingCurrency": "USD"}"#;
        let line = json_line(exact, &Defaults::default()).unwrap();
        assert_eq!(line.billed_cost, 12_345_678_901_234_000_000_000_001);
    }
}
