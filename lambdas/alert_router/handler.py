"""Alert router Lambda: anomalies from the Flink output stream (Kinesis) or the IoT rule.

Kinesis batches report partial failures (only a failed record is retried); a record that is
not an anomaly goes to the dead-letter queue with the reason and does not block its shard.
Each anomaly is processed idempotently on its stable `anomaly_id`, so a retried batch never
alerts twice. Logic: `service.AlertService`; adapters: `repository.py`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
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
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from iiot.anomaly import Anomaly
from iiot.catalog import load_catalog
from lambdas.alert_router.models import (
    AlertSettings,
    InvalidAnomalyError,
    parse_anomalies,
    parse_iot_event,
)
from lambdas.alert_router.repository import DynamoCooldownStore, SnsNotifier
from lambdas.alert_router.service import AlertService
from lambdas.shared.dead_letter import SqsDeadLetter

SERVICE = "alert-router"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="IIoT", service=SERVICE)
processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


@dataclass(frozen=True)
class Dependencies:
    service: AlertService
    dead_letter: SqsDeadLetter
    idempotency: IdempotencyConfig
    persistence: DynamoDBPersistenceLayer


def dependencies() -> Dependencies:
    """Built on the first invocation (never at import), then reused while the settings hold."""
    return _build(AlertSettings.from_environ())


@cache
def _build(settings: AlertSettings) -> Dependencies:
    dynamodb = boto3.client("dynamodb")
    sns = boto3.client("sns")
    return Dependencies(
        service=AlertService(
            cooldown_store=DynamoCooldownStore(dynamodb, settings.cooldown_table),
            alerts=SnsNotifier(sns, settings.alert_topic_arn),
            escalation=SnsNotifier(sns, settings.escalation_topic_arn),
            cooldown_seconds=settings.cooldown_seconds,
            units=load_catalog().units,
        ),
        dead_letter=SqsDeadLetter(boto3.client("sqs"), settings.dead_letter_queue_url),
        idempotency=IdempotencyConfig(event_key_jmespath="anomaly_id", expires_after_seconds=86400),
        persistence=DynamoDBPersistenceLayer(
            table_name=settings.idempotency_table, boto3_client=dynamodb
        ),
    )


def route_once(anomaly: Anomaly) -> str:
    """Route one anomaly, at most once per anomaly_id (Powertools idempotency, DynamoDB)."""
    deps = dependencies()

    def route(anomaly_record: dict[str, Any]) -> str:
        return deps.service.route(anomaly).value

    once = idempotent_function(
        route,
        data_keyword_argument="anomaly_record",
        persistence_store=deps.persistence,
        config=deps.idempotency,
    )
    decision: str = once(anomaly_record={"anomaly_id": anomaly.anomaly_id})
    metrics.add_metric(name=f"Anomalies_{decision}", unit=MetricUnit.Count, value=1)
    logger.info(
        "anomaly routed",
        extra={
            "decision": decision,
            "anomaly_id": anomaly.anomaly_id,
            "machine_id": anomaly.machine_id,
        },
    )
    return decision


def route_payload(payload: bytes, origin: dict[str, str]) -> list[str]:
    try:
        anomalies = parse_anomalies(payload)
    except InvalidAnomalyError as exc:
        logger.warning("invalid anomaly dead-lettered", extra={"reason": str(exc), **origin})
        metrics.add_metric(name="InvalidAnomalies", unit=MetricUnit.Count, value=1)
        dependencies().dead_letter.send(reason=str(exc), payload=payload, origin=origin)
        return []
    return [route_once(anomaly) for anomaly in anomalies]


@tracer.capture_method
def record_handler(record: KinesisStreamRecord) -> None:
    route_payload(
        record.kinesis.data_as_bytes(),
        {"sequence_number": record.kinesis.sequence_number, "source": "kinesis"},
    )


def dispatch(event: dict[str, Any] | list[Any], context: LambdaContext) -> Mapping[str, Any]:
    """Kinesis batch -> partial batch response; IoT rule message -> routed directly."""
    dependencies().idempotency.register_lambda_context(context)
    if isinstance(event, dict) and event.get("Records"):
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    try:
        anomalies = parse_iot_event(event)
    except InvalidAnomalyError as exc:
        logger.warning("invalid anomaly dead-lettered", extra={"reason": str(exc)})
        payload = json.dumps(event, default=str).encode()
        dependencies().dead_letter.send(reason=str(exc), payload=payload, origin={"source": "iot"})
        return {"decisions": [], "dead_lettered": 1}
    return {"decisions": [route_once(anomaly) for anomaly in anomalies]}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return dispatch(event, context)
