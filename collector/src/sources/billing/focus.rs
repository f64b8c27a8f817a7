//! FOCUS 1.0 to 1.2 (the FinOps Open Cost and Usage Specification): the columns map one to
//! one; `NULL` is null; `Tags` is a JSON object. 1.2's `ServiceProviderName` is read where
//! 1.0's `ProviderName` is absent.

use super::line::{
    self, CellError, CostLine, json_tags, money, optional_money, optional_time, quantity, time,
};
use super::row::{Defaults, Row};

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
