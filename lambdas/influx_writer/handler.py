"""InfluxDB writer Lambda: telemetry from Kinesis (JSON v1 or compact batches) to InfluxDB.

Kinesis batches report partial failures: only a record whose write failed after retries is
retried; poison records and refused readings go to the dead-letter queue with their reasons.
Each record that passed its integrity checks is written once per idempotency key (a compact
batch's batch id, else the payload hash; Powertools idempotency with payload validation, so the
same id with other readings is refused, not dropped). Logic: `service.InfluxWriterService`;
adapters: `repository.py`, `lambdas/shared`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
    KinesisStreamRecord,
)
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.typing import LambdaContext

from iiot.catalog import load_catalog
from iiot.contract import Validator
from lambdas.influx_writer.models import WriterSettings
from lambdas.influx_writer.repository import InfluxV2Writer
from lambdas.influx_writer.service import InfluxWriterService
from lambdas.shared.dead_letter import SqsDeadLetter
from lambdas.shared.idempotency import PowertoolsOnce

SERVICE = "influx-writer"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
# The stack sets each environment's namespace (IIoT/<env>: metric namespaces are account-wide);
# "IIoT" is the local default. An explicit namespace= would override the deployed one.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "IIoT"), service=SERVICE)
processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


@dataclass(frozen=True)
class Dependencies:
    service: InfluxWriterService
    once: PowertoolsOnce


def dependencies() -> Dependencies:
    """Built on the first invocation (never at import), then reused while the settings hold."""
    return _build(WriterSettings.from_environ())


@cache
def _build(settings: WriterSettings) -> Dependencies:
    secret = boto3.client("secretsmanager").get_secret_value(SecretId=settings.influxdb_secret_arn)
    writer = InfluxV2Writer.connect(
        settings.influxdb_url,
        json.loads(secret["SecretString"]),
        bucket=settings.influxdb_bucket,
        org=settings.influxdb_org,
    )
    once = PowertoolsOnce(
        DynamoDBPersistenceLayer(
            table_name=settings.idempotency_table, boto3_client=boto3.client("dynamodb")
        ),
        key_prefix=SERVICE,
    )
    return Dependencies(
        service=InfluxWriterService(
            writer=writer,
            dead_letter=SqsDeadLetter(boto3.client("sqs"), settings.dead_letter_queue_url),
            validator=Validator(load_catalog()),
            once=once,
            batch_points=settings.batch_points,
            max_attempts=settings.max_attempts,
        ),
        once=once,
    )


@tracer.capture_method
def record_handler(record: KinesisStreamRecord) -> None:
    origin = {"sequence_number": record.kinesis.sequence_number, "source": "kinesis"}
    outcome = dependencies().service.write_record(record.kinesis.data_as_bytes(), origin)
    if outcome.duplicate:  # a redelivery: counted once, when it was done
        metrics.add_metric(name="RecordsDuplicate", unit=MetricUnit.Count, value=1)
    else:
        metrics.add_metric(name="PointsWritten", unit=MetricUnit.Count, value=outcome.points)
        metrics.add_metric(
            name="ReadingsRejected", unit=MetricUnit.Count, value=outcome.rejected_readings
        )
        if outcome.dead_lettered:
            metrics.add_metric(name="RecordsDeadLettered", unit=MetricUnit.Count, value=1)
    logger.info("record written", extra={**origin, **asdict(outcome)})


def dispatch(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    dependencies().once.register_lambda_context(context)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return dispatch(event, context)
