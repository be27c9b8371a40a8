-- Readings the rules may look at: known metric with the catalog's unit, value inside the
-- physically valid range (outside it is a sensor fault, quarantined upstream, never alerted on),
-- timestamp in milliseconds (not before 2000).
-- Only the columns a rule reads go on (the rules share this view's output: the unit and the
-- dead-letter columns would be carried, and their strings copied, for nothing).
-- Rendered from the metric catalog (config/metrics.yaml, digest e5d1d83a88ad61a1).
CREATE TEMPORARY VIEW valid_readings AS
SELECT `timestamp`, factory_id, machine_id, sensor_id, metric, `value`, event_time
FROM readings
WHERE `timestamp` >= 946684800000
  AND factory_id IS NOT NULL
  AND machine_id IS NOT NULL
  AND `value` IS NOT NULL
  AND (
      (metric = 'failure_probability' AND unit = 'probability' AND `value` BETWEEN 0.0 AND 1.0)
      OR (metric = 'flow_rate' AND unit = 'L/min' AND `value` BETWEEN 0.0 AND 2000.0)
      OR (metric = 'pressure' AND unit = 'bar' AND `value` BETWEEN 0.0 AND 500.0)
      OR (metric = 'rpm' AND unit = 'rpm' AND `value` BETWEEN 0.0 AND 10000.0)
      OR (metric = 'temperature' AND unit = 'degC' AND `value` BETWEEN -40.0 AND 250.0)
      OR (metric = 'vibration' AND unit = 'mm/s' AND `value` BETWEEN 0.0 AND 100.0)
  )
