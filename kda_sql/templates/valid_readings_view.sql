-- Readings the rules may look at: known metric with the catalog's unit, value inside the
-- physically valid range (outside it is a sensor fault, quarantined upstream, never alerted on),
-- timestamp in milliseconds (not before 2000).
-- Only the columns a rule reads go on (the rules share this view's output: the unit and the
-- dead-letter columns would be carried, and their strings copied, for nothing).
-- Rendered from the metric catalog ({{catalog_source}}, digest {{catalog_digest}}).
CREATE TEMPORARY VIEW valid_readings AS
SELECT `timestamp`, factory_id, machine_id, sensor_id, metric, `value`, event_time
FROM readings
WHERE `timestamp` >= 946684800000
  AND factory_id IS NOT NULL
  AND machine_id IS NOT NULL
  AND `value` IS NOT NULL
  AND (
{{valid_conditions}}
  )
