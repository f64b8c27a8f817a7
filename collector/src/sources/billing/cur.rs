//! AWS Cost and Usage Reports: the legacy export (`lineItem/UnblendedCost`, tags as
//! `resourceTags/user:*` columns) and CUR 2.0 (`line_item_unblended_cost`, tags in the
//! `resource_tags` map). Every column is named here by its legacy name; CUR 2.0's is its
//! snake_case form (`bill/PayerAccountId` → `bill_payer_account_id`).
//!
//! The cost columns, as FOCUS's converters define them:
//! - BilledCost: `lineItem/NetUnblendedCost` where the export has it, else
//!   `lineItem/UnblendedCost`.
//! - EffectiveCost by `lineItem/LineItemType`: SavingsPlanCoveredUsage →
//!   `savingsPlan/SavingsPlanEffectiveCost`; SavingsPlanRecurringFee →
//!   `savingsPlan/TotalCommitmentToDate` − `savingsPlan/UsedCommitment`; SavingsPlanNegation
//!   and SavingsPlanUpfrontFee → 0; DiscountedUsage → `reservation/EffectiveCost`; RIFee →
//!   `reservation/UnusedAmortizedUpfrontFeeForBillingPeriod` +
//!   `reservation/UnusedRecurringFee`; a Fee of a reservation → 0; anything else →
//!   `lineItem/UnblendedCost`. An empty cell in these reads as 0.
//! - ListCost: `pricing/publicOnDemandCost`.

use std::collections::BTreeMap;

use super::decimal;
use super::line::{self, CellError, CostLine, optional_money, optional_time, quantity, time};
use super::row::{Defaults, Row};

/// The snake_case (CUR 2.0) name of a legacy column name.
pub fn snake(legacy: &str) -> String {
    let mut out = String::with_capacity(legacy.len() + 8);
    let mut previous_lower = false;
    for c in legacy.chars() {
        if c == '/' {
            out.push('_');
            previous_lower = false;
        } else if c.is_ascii_uppercase() {
            if previous_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            previous_lower = false;
        } else {
            out.push(c);
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// The cell of a column named by its legacy name, in either edition.
fn cell<'a>(row: Row<'a>, legacy: &str) -> Option<&'a str> {
    row.get(legacy).or_else(|| row.get(&snake(legacy)))
}

fn owned(row: Row<'_>, legacy: &str) -> Option<String> {
    line::text(cell(row, legacy)).map(str::to_owned)
}

/// A money cell read as 0 when empty.
fn money_or_zero(row: Row<'_>, legacy: &str) -> Result<i128, CellError> {
    Ok(optional_money(legacy, cell(row, legacy))?.unwrap_or(0))
}

fn sum(column: &str, a: i128, b: i128) -> Result<i128, CellError> {
    let mut total = decimal::Total(a);
    total
        .add(b)
        .map_err(|e| CellError::new(column, e.to_string(), ""))?;
    Ok(total.0)
}

/// The cost line of one CUR row.
pub fn line(row: Row<'_>, defaults: &Defaults) -> Result<CostLine, CellError> {
    let kind = line::text(cell(row, "lineItem/LineItemType")).unwrap_or("");
    let unblended = line::money(
        "lineItem/UnblendedCost",
        cell(row, "lineItem/UnblendedCost"),
    )?;
    let billed = match optional_money(
        "lineItem/NetUnblendedCost",
        cell(row, "lineItem/NetUnblendedCost"),
    )? {
        Some(net) => net,
        None => unblended,
    };
    let effective = match kind {
        "SavingsPlanCoveredUsage" => money_or_zero(row, "savingsPlan/SavingsPlanEffectiveCost")?,
        "SavingsPlanRecurringFee" => sum(
            "savingsPlan/UsedCommitment",
            money_or_zero(row, "savingsPlan/TotalCommitmentToDate")?,
            -money_or_zero(row, "savingsPlan/UsedCommitment")?,
        )?,
        "SavingsPlanNegation" | "SavingsPlanUpfrontFee" => 0,
        "DiscountedUsage" => money_or_zero(row, "reservation/EffectiveCost")?,
        "RIFee" => sum(
            "reservation/UnusedRecurringFee",
            money_or_zero(row, "reservation/UnusedAmortizedUpfrontFeeForBillingPeriod")?,
            money_or_zero(row, "reservation/UnusedRecurringFee")?,
        )?,
        "Fee" if line::text(cell(row, "reservation/ReservationARN")).is_some() => 0,
        _ => unblended,
    };
    let charge_category = match kind {
        "Tax" => Some("Tax"),
        "Fee" | "SavingsPlanUpfrontFee" | "RIFee" | "SavingsPlanRecurringFee" => Some("Purchase"),
        "Usage"
        | "SavingsPlanCoveredUsage"
        | "SavingsPlanNegation"
        | "DiscountedUsage"
        | "BundledDiscount"
        | "Discount"
        | "PrivateRateDiscount"
        | "EdpDiscount" => Some("Usage"),
        "Credit" | "Refund" => Some("Adjustment"),
        _ => None,
    };
    let usage_type = line::text(cell(row, "lineItem/UsageType")).unwrap_or("");
    let pricing_category = if usage_type.contains("SpotUsage") {
        Some("Dynamic".to_owned())
    } else {
        match line::text(cell(row, "pricing/term")) {
            Some("OnDemand") => Some("Standard".to_owned()),
            Some("Reserved") => Some("Committed".to_owned()),
            Some(_) => Some("Other".to_owned()),
            None => None,
        }
    };
    let billing_account_id = owned(row, "bill/PayerAccountId")
        .or_else(|| defaults.billing_account_id.clone())
        .ok_or_else(|| {
            CellError::new(
                "bill/PayerAccountId",
                "missing, and no billing account is configured for this prefix",
                "",
            )
        })?;
    let usage = quantity("lineItem/UsageAmount", cell(row, "lineItem/UsageAmount"))?;
    Ok(CostLine {
        charge_period_start: time(
            "lineItem/UsageStartDate",
            cell(row, "lineItem/UsageStartDate"),
        )?,
        charge_period_end: time("lineItem/UsageEndDate", cell(row, "lineItem/UsageEndDate"))?,
        provider: defaults
            .provider
            .clone()
            .unwrap_or_else(|| "AWS".to_owned()),
        billing_account_id,
        billing_period_start: optional_time(
            "bill/BillingPeriodStartDate",
            cell(row, "bill/BillingPeriodStartDate"),
        )?,
        sub_account_id: owned(row, "lineItem/UsageAccountId"),
        service_name: owned(row, "lineItem/ProductCode"),
        service_category: None,
        resource_id: owned(row, "lineItem/ResourceId"),
        resource_name: None,
        region: owned(row, "product/region").or_else(|| owned(row, "product/regionCode")),
        charge_category: charge_category.map(str::to_owned),
        charge_class: None,
        pricing_category,
        pricing_quantity: usage,
        pricing_unit: owned(row, "pricing/unit"),
        consumed_quantity: usage,
        consumed_unit: owned(row, "pricing/unit"),
        billed_cost: billed,
        effective_cost: effective,
        list_cost: optional_money(
            "pricing/publicOnDemandCost",
            cell(row, "pricing/publicOnDemandCost"),
        )?,
        billing_currency: owned(row, "lineItem/CurrencyCode")
            .ok_or_else(|| CellError::new("lineItem/CurrencyCode", "missing", ""))?,
        tags: tags(row)?,
        source_object: String::new(),
        source_row: 0,
    })
}

/// Resource tags: legacy `resourceTags/user:team` columns, or CUR 2.0's `resource_tags` JSON
/// map (`user_team`); user tags lose their `user:` / `user_` prefix, AWS's keep `aws:`.
fn tags(row: Row<'_>) -> Result<BTreeMap<String, String>, CellError> {
    let mut tags = BTreeMap::new();
    if let Some(map) = row.get("resource_tags") {
        for (k, v) in line::json_tags("resource_tags", Some(map))? {
            let key = k.strip_prefix("user_").map_or(k.clone(), str::to_owned);
            tags.insert(key, v);
        }
    }
    for (name, value) in row.columns_with_prefix("resourceTags/") {
        if let Some(value) = line::text(Some(value)) {
            let key = name.strip_prefix("user:").unwrap_or(name);
            tags.insert(key.to_owned(), value.to_owned());
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::billing::{Normalized, normalize};

    fn lines(text: &str) -> Normalized {
        let mut out = Normalized::default();
        normalize(text.as_bytes(), "cur", &Defaults::default(), &mut out).unwrap();
        out
    }

    /// Each line item type's effective cost, as FOCUS's converters define it.
    #[test]
    fn effective_cost_follows_the_line_item_type() {
        let header = "bill/PayerAccountId,lineItem/LineItemType,lineItem/UsageStartDate,\
                      lineItem/UsageEndDate,lineItem/ProductCode,lineItem/UnblendedCost,\
                      lineItem/CurrencyCode,savingsPlan/SavingsPlanEffectiveCost,\
                      savingsPlan/TotalCommitmentToDate,savingsPlan/UsedCommitment,\
                      reservation/EffectiveCost,\
                      reservation/UnusedAmortizedUpfrontFeeForBillingPeriod,\
                      reservation/UnusedRecurringFee,lineItem/UsageType,pricing/term,\
                      resourceTags/user:team,resourceTags/aws:createdBy\n";
        let row = |kind: &str| {
            format!(
                "1,{kind},2024-01-01T00:00:00Z,2024-01-01T01:00:00Z,AmazonEC2,10,USD,\
                 7,5,3,6,1.5,0.25,USW2-SpotUsage:m5,OnDemand,recs,someone\n"
            )
        };
        let one = decimal::ONE;
        let kinds = [
            ("Usage", 10 * one),
            ("SavingsPlanCoveredUsage", 7 * one),
            ("SavingsPlanRecurringFee", 2 * one),
            ("SavingsPlanNegation", 0),
            ("DiscountedUsage", 6 * one),
            ("RIFee", one * 7 / 4),
            ("Tax", 10 * one),
        ];
        let text: String = std::iter::once(header.to_owned())
            .chain(kinds.iter().map(|(k, _)| row(k)))
            .collect();
        let out = lines(&text);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        for (line, (kind, effective)) in out.lines.iter().zip(kinds) {
            assert_eq!(line.effective_cost, effective, "{kind}");
            assert_eq!(line.billed_cost, 10 * one, "{kind}");
        }
        let first = &out.lines[0];
        assert_eq!(first.provider, "AWS");
        assert_eq!(first.pricing_category.as_deref(), Some("Dynamic"));
        assert_eq!(first.tags["team"], "recs");
        assert_eq!(first.tags["aws:createdBy"], "someone");
        assert_eq!(out.lines[6].charge_category.as_deref(), Some("Tax"));
    }

    #[test]
    fn cur2_reads_snake_case_and_its_tag_map() {
        let text = "bill_payer_account_id,line_item_line_item_type,line_item_usage_start_date,\
                    line_item_usage_end_date,line_item_product_code,line_item_unblended_cost,\
                    line_item_net_unblended_cost,line_item_currency_code,resource_tags\n\
                    1,Usage,2024-01-01T00:00:00Z,2024-01-01T01:00:00Z,AmazonS3,2.5,2.25,USD,\
                    \"{\"\"user_team\"\":\"\"recs\"\"}\"\n";
        let out = lines(text);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let line = &out.lines[0];
        assert_eq!(
            line.billed_cost, 2_250_000_000_000,
            "net unblended where present"
        );
        assert_eq!(line.effective_cost, 2_500_000_000_000);
        assert_eq!(line.service_name.as_deref(), Some("AmazonS3"));
        assert_eq!(line.tags["team"], "recs");
    }

    #[test]
    fn legacy_names_have_their_cur2_forms() {
        for (legacy, cur2) in [
            ("lineItem/UnblendedCost", "line_item_unblended_cost"),
            ("bill/PayerAccountId", "bill_payer_account_id"),
            (
                "savingsPlan/SavingsPlanEffectiveCost",
                "savings_plan_savings_plan_effective_cost",
            ),
            (
                "pricing/publicOnDemandCost",
                "pricing_public_on_demand_cost",
            ),
            ("product/regionCode", "product_region_code"),
            ("lineItem/UsageStartDate", "line_item_usage_start_date"),
        ] {
            assert_eq!(snake(legacy), cur2);
        }
    }
}
