-- A FOCUS file's BilledCost and EffectiveCost totals, exact as DECIMAL(38,12), and its line
-- count, as DuckDB computes them over the raw file. `$path` is the file.
SELECT 'total' AS kind, '' AS key,
       CAST(SUM(CAST(BilledCost AS DECIMAL(38,12))) AS VARCHAR) AS billed_cost,
       CAST(SUM(CAST(EffectiveCost AS DECIMAL(38,12))) AS VARCHAR) AS effective_cost,
       COUNT(*) AS lines
FROM read_csv($path, all_varchar = true, nullstr = 'NULL', header = true);
