-- Severity rules: a reading above the catalog's `stream.warning` raises <METRIC>_HIGH with
-- severity WARNING, above `stream.critical` with severity CRITICAL; one anomaly per reading
-- (the alert router suppresses repeats within its cooldown). Stateless, so a late reading still
-- raises its anomaly, stamped with its own event time.
-- Rendered from the metric catalog (config/metrics.yaml, digest c79723468fd4d143).
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
      WHEN metric = 'temperature' AND `value` > 120.0 THEN 'CRITICAL'
      WHEN metric = 'temperature' THEN 'WARNING'
      WHEN metric = 'vibration' AND `value` > 80.0 THEN 'CRITICAL'
      WHEN metric = 'vibration' THEN 'WARNING'
    END AS severity,
    CASE
      WHEN metric = 'temperature' AND `value` > 120.0 THEN 120.0
      WHEN metric = 'temperature' THEN 100.0
      WHEN metric = 'vibration' AND `value` > 80.0 THEN 80.0
      WHEN metric = 'vibration' THEN 60.0
    END AS threshold
  FROM valid_readings
  WHERE
    (metric = 'temperature' AND `value` > 100.0)
    OR (metric = 'vibration' AND `value` > 60.0)
)
