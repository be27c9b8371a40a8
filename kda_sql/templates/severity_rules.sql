-- Severity rules: a reading above the catalog's `stream.warning` raises <METRIC>_HIGH with
-- severity WARNING, above `stream.critical` with severity CRITICAL; one anomaly per reading
-- (the alert router suppresses repeats within its cooldown). Stateless, so a late reading still
-- raises its anomaly, stamped with its own event time.
-- Rendered from the metric catalog ({{catalog_source}}, digest {{catalog_digest}}).
INSERT INTO anomalies
SELECT
  factory_id,
  machine_id,
  metric,
  UPPER(metric) || '_HIGH' AS anomaly_type,
  severity,
  `value`,
  threshold,
  `timestamp`,
  'stream' AS source,
  sensor_id,
  'RAISED' AS state,
  metric || ' above the ' || LOWER(severity) || ' threshold' AS message
FROM (
  SELECT
    *,
    CASE
{{severity_cases}}
    END AS severity,
    CASE
{{threshold_cases}}
    END AS threshold
  FROM valid_readings
  WHERE
{{severity_conditions}}
)
