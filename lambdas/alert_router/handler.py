"""Alert router Lambda: anomalies from the Flink output stream (Kinesis) or the IoT rule.

Kinesis batches report partial failures (only a failed record is retried). Each anomaly in a
record is handled on its own: a bad one goes to the dead-letter queue with its index and
reason, the good ones of the same record are routed, each once per its stable `anomaly_id`
(Powertools idempotency), so a retried batch never alerts twice. An anomaly not sent is logged
with its reason and counted per reason (`SUPPRESSION_METRICS`): a repeat within the cooldown, a
start-up transient after maintenance (the machine state table), or a failure prediction already
announced for the machine since its latest job. Logic:
`service.AnomalyRouter` and `service.AlertService`; adapters: `repository.py`, `lambdas/shared`.
"""

from __future__ import annotations

import os
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
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.typing import LambdaContext

from iiot.catalog import load_catalog
from lambdas.alert_router.models import AlertSettings, Reason
from lambdas.alert_router.repository import (
    DynamoCooldownStore,
    DynamoMachineState,
    SnsNotifier,
)
from lambdas.alert_router.service import AlertService, AnomalyRouter, PayloadOutcome
from lambdas.shared.dead_letter import SqsDeadLetter
from lambdas.shared.idempotency import PowertoolsOnce

SERVICE = "alert-router"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
# The stack sets each environment's namespace (IIoT/<env>: metric namespaces are account-wide);
# "IIoT" is the local default. An explicit namespace= would override the deployed one.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "IIoT"), service=SERVICE)
processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
# Suppressions counted per reason (beside Anomalies_suppressed): repeats, start-up shelving.
SUPPRESSION_METRICS: dict[str, str] = {
    Reason.REPEAT: "Suppressed_repeat",
    Reason.STARTUP: "Suppressed_startup",
    Reason.EPISODE: "Suppressed_episode",
}


@dataclass(frozen=True)
class Dependencies:
    router: AnomalyRouter
    once: PowertoolsOnce


def dependencies() -> Dependencies:
    """Built on the first invocation (never at import), then reused while the settings hold."""
    return _build(AlertSettings.from_environ())


@cache
def _build(settings: AlertSettings) -> Dependencies:
    dynamodb = boto3.client("dynamodb")
    sns = boto3.client("sns")
    once = PowertoolsOnce(
        DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=dynamodb),
        key_prefix=SERVICE,
    )
    service = AlertService(
        cooldown_store=DynamoCooldownStore(dynamodb, settings.cooldown_table),
        alerts=SnsNotifier(sns, settings.alert_topic_arn),
        escalation=SnsNotifier(sns, settings.escalation_topic_arn),
        cooldown_seconds=settings.cooldown_seconds,
        units=load_catalog().units,
        machine_state=DynamoMachineState(dynamodb, settings.machine_state_table),
        startup_window_seconds=settings.startup_window_seconds,
        failure_realert_seconds=settings.failure_realert_seconds,
        on_machine_state_error=lambda: metrics.add_metric(
            name="MachineStateUnavailable", unit=MetricUnit.Count, value=1
        ),
    )
    dead_letter = SqsDeadLetter(boto3.client("sqs"), settings.dead_letter_queue_url)
    return Dependencies(
        router=AnomalyRouter(service=service, dead_letter=dead_letter, once=once), once=once
    )


def observe(outcome: PayloadOutcome, origin: dict[str, str]) -> None:
    """Metrics and logs for one payload's anomalies."""
    for routed in outcome.routed:
        name = "duplicate" if routed.duplicate else routed.decision
        metrics.add_metric(name=f"Anomalies_{name}", unit=MetricUnit.Count, value=1)
        if routed.reason in SUPPRESSION_METRICS and not routed.duplicate:
            metrics.add_metric(
                name=SUPPRESSION_METRICS[routed.reason], unit=MetricUnit.Count, value=1
            )
        why = {"reason": routed.reason} if routed.reason else {}
        if routed.maintenance_id:
            why["maintenance_id"] = routed.maintenance_id
        logger.info(
            "anomaly routed",
            extra={
                "decision": routed.decision,
                "duplicate": routed.duplicate,
                "anomaly_id": routed.anomaly.anomaly_id,
                "machine_id": routed.anomaly.machine_id,
                "anomaly_type": routed.anomaly.anomaly_type,
                **why,
            },
        )
    for invalid in outcome.invalid:
        metrics.add_metric(name="InvalidAnomalies", unit=MetricUnit.Count, value=1)
        logger.warning(
            "invalid anomaly dead-lettered",
            extra={"reason": invalid.reason, "anomaly_index": invalid.index, **origin},
        )


@tracer.capture_method
def record_handler(record: KinesisStreamRecord) -> None:
    origin = {"sequence_number": record.kinesis.sequence_number, "source": "kinesis"}
    observe(dependencies().router.route_payload(record.kinesis.data_as_bytes(), origin), origin)


def dispatch(event: dict[str, Any] | list[Any], context: LambdaContext) -> Mapping[str, Any]:
    """Kinesis batch -> partial batch response; IoT rule message -> routed directly."""
    dependencies().once.register_lambda_context(context)
    if isinstance(event, dict) and event.get("Records"):
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    outcome = dependencies().router.route_event(event)
    observe(outcome, {"source": "iot"})
    return {"decisions": outcome.decisions, "dead_lettered": len(outcome.invalid)}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return dispatch(event, context)
