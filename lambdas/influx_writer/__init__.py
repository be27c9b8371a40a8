"""InfluxDB writer: Kinesis telemetry (JSON v1 and compact batches) -> InfluxDB points."""
