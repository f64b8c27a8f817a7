-- recmeter's cost columns for FOCUS exports, as DuckDB computes them over the raw file:
-- BilledCost and EffectiveCost as the file has them, exact as DECIMAL(38,12); the literal NULL
-- is null. Grouped per UTC day of ChargePeriodStart and per ServiceName, as
-- `recmeter billing check` prints them. `$path` is the file.
SELECT 'day' AS kind, strftime(CAST(ChargePeriodStart AS TIMESTAMP), '%Y-%m-%d') AS key,
       CAST(SUM(CAST(BilledCost AS DECIMAL(38,12))) AS VARCHAR) AS billed_cost,
       CAST(SUM(CAST(EffectiveCost AS DECIMAL(38,12))) AS VARCHAR) AS effective_cost,
       COUNT(*) AS lines
FROM read_csv($path, all_varchar = true, nullstr = 'NULL', header = true)
GROUP BY 1, 2
UNION ALL
SELECT 'service', coalesce(ServiceName, ''),
       CAST(SUM(CAST(BilledCost AS DECIMAL(38,12))) AS VARCHAR),
       CAST(SUM(CAST(EffectiveCost AS DECIMAL(38,12))) AS VARCHAR),
       COUNT(*)
FROM read_csv($path, all_varchar = true, nullstr = 'NULL', header = true)
GROUP BY 1, 2
ORDER BY 1, 2;
