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
  metric || ' above the ' || LOWER(severity) || ' threshold for '
    || CAST(run_readings AS STRING) || ' readings' AS message
FROM (
  SELECT
    *,
    CASE
{{severity_cases}}
    END AS severity,
    CASE
{{threshold_cases}}
    END AS threshold
  FROM (
{{run_queries}}
  )
  WHERE
{{severity_conditions}}
)
