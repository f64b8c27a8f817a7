-- recmeter's cost columns for Google Cloud's BigQuery billing export (newline-delimited
-- JSON), as DuckDB computes them over the raw file, exact as DECIMAL(38,12) from each
-- number's text: BilledCost is `cost`; EffectiveCost is `cost` plus the sum of
-- `credits[].amount` (credits are negative; not clamped at 0). Grouped per UTC day of
-- `usage_start_time` and per `service.description`, as `recmeter billing check` prints them.
-- `$path` is the file.
WITH raw AS (
  SELECT json FROM read_ndjson_objects($path)
), gcp AS (
  SELECT strftime(CAST(json_extract_string(json, '$.usage_start_time') AS TIMESTAMP), '%Y-%m-%d') AS day,
         coalesce(json_extract_string(json, '$.service.description'), '') AS service,
         CAST(json_extract_string(json, '$.cost') AS DECIMAL(38,12)) AS billed,
         coalesce((SELECT SUM(CAST(json_extract_string(c, '$.amount') AS DECIMAL(38,12)))
                   FROM (SELECT unnest(json_extract(json, '$.credits[*]')) AS c)), 0) AS credits
  FROM raw
)
SELECT 'day' AS kind, day AS key, CAST(SUM(billed) AS VARCHAR), CAST(SUM(billed + credits) AS VARCHAR), COUNT(*)
FROM gcp GROUP BY 1, 2
UNION ALL
SELECT 'service', service, CAST(SUM(billed) AS VARCHAR), CAST(SUM(billed + credits) AS VARCHAR), COUNT(*)
FROM gcp GROUP BY 1, 2
ORDER BY 1, 2;
