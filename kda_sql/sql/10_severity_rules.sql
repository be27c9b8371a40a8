-- Severity rules, debounced: per factory, machine and metric, in event-time order, a reading
-- raises <METRIC>_HIGH when it and the readings before it make a run of the catalog's
-- `stream.debounce` readings (default `edge.debounce`, what the gateway waits for) all above
-- `stream.warning`; severity CRITICAL when the lowest of the run is above `stream.critical`,
-- else WARNING. One anomaly per reading while the run lasts (the alert router suppresses
-- repeats within its cooldown); `value` is the newest reading's, `threshold` the level its
-- run's lowest reading passed. A single glitch (a sensor spike of one reading) raises nothing.
-- The run is an OVER window (ROWS BETWEEN debounce - 1 PRECEDING AND CURRENT ROW, ordered by
-- the event time): Flink 1.20 sorts each series' rows by event time as the watermark passes
-- them, and drops a row no later than the last timestamp its series has emitted (a reading
-- behind the watermark), as the rapid-change windows drop late readings; the lake's late
-- evaluation re-evaluates such a backlog (`local_platform/connected/late.py`).
-- Rendered from the metric catalog (config/metrics.yaml, digest e5d1d83a88ad61a1).
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
  metric || ' above the ' || LOWER(severity) || ' threshold for '
    || CAST(run_readings AS STRING) || ' readings' AS message
FROM (
  SELECT
    *,
    CASE
      WHEN metric = 'temperature' AND run_low > 120.0 THEN 'CRITICAL'
      WHEN metric = 'temperature' THEN 'WARNING'
      WHEN metric = 'vibration' AND run_low > 80.0 THEN 'CRITICAL'
      WHEN metric = 'vibration' THEN 'WARNING'
    END AS severity,
    CASE
      WHEN metric = 'temperature' AND run_low > 120.0 THEN 120.0
      WHEN metric = 'temperature' THEN 100.0
      WHEN metric = 'vibration' AND run_low > 80.0 THEN 80.0
      WHEN metric = 'vibration' THEN 60.0
    END AS threshold
  FROM (
    SELECT
      factory_id, machine_id, metric, sensor_id, `value`, `timestamp`,
      MIN(`value`) OVER run AS run_low,
      COUNT(*) OVER run AS run_readings
    FROM valid_readings
    WHERE metric IN ('temperature', 'vibration')
    WINDOW run AS (
      PARTITION BY factory_id, machine_id, metric
      ORDER BY event_time
      ROWS BETWEEN 2 PRECEDING AND CURRENT ROW
    )
  )
  WHERE
    (metric = 'temperature' AND run_readings = 3 AND run_low > 100.0)
    OR (metric = 'vibration' AND run_readings = 3 AND run_low > 60.0)
)
