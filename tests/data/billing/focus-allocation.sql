-- The FOCUS sample's cost per UTC day as the allocation test's rules split it, worked out by
-- DuckDB over the raw file, exact as DECIMAL(38,12): every line (`day`: allocated plus
-- unallocated), the EC2 lines the shared rule takes (`shared_day`), and the lines tagged
-- environment = prod that are not EC2 (`ranker_day`). Every line lies within one
-- hour, so its day is its ChargePeriodStart's. `$path` is the file.
WITH lines AS (
    SELECT strftime(CAST(ChargePeriodStart AS TIMESTAMP), '%Y-%m-%d') AS day,
           CAST(BilledCost AS DECIMAL(38,12)) AS billed,
           CAST(EffectiveCost AS DECIMAL(38,12)) AS effective,
           coalesce(ServiceName, '') LIKE 'Amazon Elastic Compute Cloud%' AS ec2,
           coalesce(json_extract_string(Tags, '$.environment') = 'prod', false) AS tagged
    FROM read_csv($path, all_varchar = true, nullstr = 'NULL', header = true)
)
SELECT 'day' AS kind, day AS key, CAST(SUM(billed) AS VARCHAR), CAST(SUM(effective) AS VARCHAR),
       COUNT(*)
FROM lines GROUP BY 1, 2
UNION ALL
SELECT 'shared_day', day, CAST(SUM(billed) AS VARCHAR), CAST(SUM(effective) AS VARCHAR), COUNT(*)
FROM lines WHERE ec2 GROUP BY 1, 2
UNION ALL
SELECT 'ranker_day', day, CAST(SUM(billed) AS VARCHAR), CAST(SUM(effective) AS VARCHAR), COUNT(*)
FROM lines WHERE tagged AND NOT ec2 GROUP BY 1, 2
ORDER BY 1, 2;
