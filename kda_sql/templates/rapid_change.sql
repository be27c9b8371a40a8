-- Rapid change, {{window_seconds}}-second windows: per factory, machine and metric, the sample
-- standard deviation of the readings in a window of {{window_seconds}} s that slides every
-- ${hop_slide_seconds} s (event time, HOP window); above the catalog's `rapid_change.stddev_limit`
-- it raises RAPID_CHANGE (WARNING) stamped with the newest reading's event time in the window.
-- A window fires once the watermark passes its end; readings later than that are dropped.
-- Rendered from the metric catalog ({{catalog_source}}, digest {{catalog_digest}}).
INSERT INTO anomalies
SELECT
  factory_id,
  machine_id,
  metric,
  'RAPID_CHANGE' AS anomaly_type,
  'WARNING' AS severity,
  stddev_value AS `value`,
  stddev_limit AS threshold,
  last_timestamp AS `timestamp`,
  'stream' AS source,
  CAST(NULL AS STRING) AS sensor_id,
  'RAISED' AS state,
  'standard deviation of ' || metric || ' over ' || CAST(readings AS STRING)
    || ' readings in {{window_seconds}} s above the limit' AS message
FROM (
  SELECT
    factory_id,
    machine_id,
    metric,
    STDDEV_SAMP(`value`) AS stddev_value,
    CASE metric
{{limit_cases}}
    END AS stddev_limit,
    MAX(`timestamp`) AS last_timestamp,
    COUNT(*) AS readings
  FROM TABLE(
    HOP(
      TABLE valid_readings,
      DESCRIPTOR(event_time),
      INTERVAL '${hop_slide_seconds}' SECOND,
      INTERVAL '{{window_seconds}}' SECOND
    )
  )
  WHERE metric IN ({{metric_list}})
  GROUP BY window_start, window_end, factory_id, machine_id, metric
)
WHERE stddev_value > stddev_limit
