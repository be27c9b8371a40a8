-- Rapid change, 60-second windows: per factory, machine and metric, the sample
-- standard deviation of the readings in a window of 60 s that slides every
-- ${hop_slide_seconds} s (event time, HOP window); above the catalog's `rapid_change.stddev_limit`
-- it raises RAPID_CHANGE (WARNING) stamped with the newest reading's event time in the window,
-- when the window's standard deviation without its one reading farthest from the mean is above
-- the limit too: a single glitch (a spike the sensor reports for one reading) moves the
-- standard deviation of a short window as much as a real change does, but only a change keeps
-- it up without that reading. A window needs 3 readings to be judged.
-- A window fires once the watermark passes its end; readings later than that are dropped.
-- Rendered from the metric catalog (config/metrics.yaml, digest e5d1d83a88ad61a1).
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
    || ' readings in 60 s above the limit' AS message
FROM (
  SELECT
    *,
    -- not STDDEV_SAMP: Flink computes it as the square root of (sum of squares - squared sum
    -- / n) / (n - 1), which rounding takes a hair below 0 for equal readings (a stuck sensor):
    -- the root is NaN, and NaN compares above every limit. The variance is clamped at 0.
    SQRT(CASE WHEN variance > 0 THEN variance ELSE 0.0 END) AS stddev_value,
    -- Without the reading x farthest from the mean m: the sum of squared deviations loses
    -- n / (n - 1) (x - m)^2 and n - 1 readings remain (n - 2 degrees of freedom).
    SQRT(
      CASE
        WHEN readings >= 3 AND variance * (readings - 1)
          - CAST(readings AS DOUBLE) / (readings - 1) * farthest * farthest > 0
        THEN (variance * (readings - 1)
          - CAST(readings AS DOUBLE) / (readings - 1) * farthest * farthest) / (readings - 2)
        ELSE 0.0
      END
    ) AS trimmed_stddev
  FROM (
    SELECT
      factory_id,
      machine_id,
      metric,
      VAR_SAMP(`value`) AS variance,
      GREATEST(MAX(`value`) - AVG(`value`), AVG(`value`) - MIN(`value`)) AS farthest,
      CASE metric
        WHEN 'flow_rate' THEN 80.0
        WHEN 'pressure' THEN 20.0
        WHEN 'rpm' THEN 300.0
        WHEN 'temperature' THEN 20.0
        WHEN 'vibration' THEN 10.0
      END AS stddev_limit,
      MAX(`timestamp`) AS last_timestamp,
      COUNT(*) AS readings
    FROM TABLE(
      HOP(
        TABLE valid_readings,
        DESCRIPTOR(event_time),
        INTERVAL '${hop_slide_seconds}' SECOND,
        INTERVAL '60' SECOND
      )
    )
    WHERE metric IN ('flow_rate', 'pressure', 'rpm', 'temperature', 'vibration')
    GROUP BY window_start, window_end, factory_id, machine_id, metric
  )
)
WHERE readings >= 3 AND stddev_value > stddev_limit AND trimmed_stddev > stddev_limit
