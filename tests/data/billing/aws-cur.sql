-- recmeter's cost columns for AWS CUR (legacy) exports, as DuckDB computes them over the raw
-- file, exact as DECIMAL(38,12); empty cells are null, and null costs in the formulas read as 0.
--   BilledCost: lineItem/NetUnblendedCost where the export has it, else lineItem/UnblendedCost
--     (this layout has no NetUnblendedCost column);
--   EffectiveCost by lineItem/LineItemType: SavingsPlanCoveredUsage →
--     savingsPlan/SavingsPlanEffectiveCost; SavingsPlanRecurringFee →
--     TotalCommitmentToDate − UsedCommitment; SavingsPlanNegation, SavingsPlanUpfrontFee → 0;
--     DiscountedUsage → reservation/EffectiveCost; RIFee →
--     UnusedAmortizedUpfrontFeeForBillingPeriod + UnusedRecurringFee; anything else →
--     lineItem/UnblendedCost (a reservation's Fee → 0 needs reservation/ReservationARN, which
--     this layout lacks).
-- Grouped per UTC day of lineItem/UsageStartDate and per lineItem/ProductCode, as
-- `recmeter billing check` prints them. `$path` is the file.
WITH cur AS (
  SELECT strftime(CAST("lineItem/UsageStartDate" AS TIMESTAMP), '%Y-%m-%d') AS day,
         coalesce("lineItem/ProductCode", '') AS service,
         CAST("lineItem/UnblendedCost" AS DECIMAL(38,12)) AS billed,
         CASE "lineItem/LineItemType"
           WHEN 'SavingsPlanCoveredUsage' THEN coalesce(CAST("savingsPlan/SavingsPlanEffectiveCost" AS DECIMAL(38,12)), 0)
           WHEN 'SavingsPlanRecurringFee' THEN coalesce(CAST("savingsPlan/TotalCommitmentToDate" AS DECIMAL(38,12)), 0)
                                             - coalesce(CAST("savingsPlan/UsedCommitment" AS DECIMAL(38,12)), 0)
           WHEN 'SavingsPlanNegation' THEN 0
           WHEN 'SavingsPlanUpfrontFee' THEN 0
           WHEN 'DiscountedUsage' THEN coalesce(CAST("reservation/EffectiveCost" AS DECIMAL(38,12)), 0)
           WHEN 'RIFee' THEN coalesce(CAST("reservation/UnusedAmortizedUpfrontFeeForBillingPeriod" AS DECIMAL(38,12)), 0)
                           + coalesce(CAST("reservation/UnusedRecurringFee" AS DECIMAL(38,12)), 0)
           ELSE CAST("lineItem/UnblendedCost" AS DECIMAL(38,12))
         END AS effective
  FROM read_csv($path, all_varchar = true, header = true)
)
SELECT 'day' AS kind, day AS key, CAST(SUM(billed) AS VARCHAR), CAST(SUM(effective) AS VARCHAR), COUNT(*)
FROM cur GROUP BY 1, 2
UNION ALL
SELECT 'service', service, CAST(SUM(billed) AS VARCHAR), CAST(SUM(effective) AS VARCHAR), COUNT(*)
FROM cur GROUP BY 1, 2
ORDER BY 1, 2;
