-- The input: one row per reading, JSON as the reading contract writes it (`iiot.wire`).
-- Event time is the reading's own `timestamp` (UTC ms); the watermark trails the newest event
-- time seen by the allowed out-of-orderness, so readings that arrive a little late still land
-- in their windows and readings later than that are dropped by the window rules.
-- A row whose timestamp is missing gets event time 0 (Flink refuses a null rowtime); the
-- valid_readings view drops it.
CREATE TABLE readings (
  `timestamp` BIGINT,
  factory_id STRING,
  machine_id STRING,
  sensor_id STRING,
  metric STRING,
  `value` DOUBLE,
  unit STRING,
  event_time AS TO_TIMESTAMP_LTZ(COALESCE(`timestamp`, 0), 3),
  WATERMARK FOR event_time AS event_time - INTERVAL '${watermark_delay_seconds}' SECOND
) WITH (
${source_options}
)
