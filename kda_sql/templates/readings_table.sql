-- The input: one row per reading, as the reading contract defines it (`iiot.wire`). In
-- production the source's format is `iiot-batch` (`kda_sql/decoder`): each Kinesis record is
-- one gateway's compact batch, decoded inside the source, its readings emitted in event-time
-- order; `json` (one reading per record) reads the same columns.
-- Event time is the reading's own `timestamp` (UTC ms); the watermark trails the newest event
-- time seen by the allowed out-of-orderness, so readings that arrive a little late still land
-- in their windows and readings later than that are dropped by the window rules.
-- A row whose timestamp is missing gets event time 0 (Flink refuses a null rowtime); the
-- valid_readings view drops it. So does it drop a dead-letter row: a batch that fails the
-- contract's checks becomes one row with only the dead_letter_* columns set (never a failed
-- job), which the dead-letter INSERT sends on.
CREATE TABLE readings (
  `timestamp` BIGINT,
  factory_id STRING,
  machine_id STRING,
  sensor_id STRING,
  metric STRING,
  `value` DOUBLE,
  unit STRING,
  dead_letter_reason STRING,
  dead_letter_batch_id STRING,
  dead_letter_sha256 STRING,
  dead_letter_bytes INT,
  dead_letter_payload BYTES,
  event_time AS TO_TIMESTAMP_LTZ(COALESCE(`timestamp`, 0), 3),
  WATERMARK FOR event_time AS event_time - INTERVAL '${watermark_delay_seconds}' SECOND
) WITH (
${source_options}
)
