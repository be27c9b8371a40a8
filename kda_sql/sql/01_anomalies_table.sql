-- The output: one row per anomaly, the shared anomaly message (`iiot.anomaly.Anomaly`) as JSON,
-- which the alert router reads from the output stream.
CREATE TABLE anomalies (
  factory_id STRING,
  machine_id STRING,
  metric STRING,
  anomaly_type STRING,
  severity STRING,
  `value` DOUBLE,
  threshold DOUBLE,
  `timestamp` BIGINT,
  source STRING,
  sensor_id STRING,
  state STRING,
  message STRING
) WITH (
${sink_options}
)
