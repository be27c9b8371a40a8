"""The alert router Lambda end to end on moto: Kinesis batches and IoT rule messages in,
SNS alerts (read back through SQS subscriptions), DynamoDB cooldown and idempotency."""

from __future__ import annotations

import json

import boto3
import pytest

from iiot.anomaly import encode_anomaly
from lambdas.alert_router import handler
from lambdas.alert_router.repository import DynamoCooldownStore

from .conftest import drain, kinesis_event
from .router_data import MINUTE, T0, anomaly


def test_flink_output_batch_alerts_once_and_escalates_critical(router, lambda_context):
    event = kinesis_event(
        [
            encode_anomaly(anomaly()),
            encode_anomaly(anomaly(timestamp=T0 + MINUTE, value=105.0)),  # repeat: suppressed
            b"["
            + encode_anomaly(
                anomaly(
                    timestamp=T0 + 2 * MINUTE, severity="CRITICAL", value=121.5, threshold=120.0
                )
            )
            + b"]",
        ]
    )
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}

    alerts = drain(router["alerts"])
    assert [a["Subject"] for a in alerts] == [
        "[WARNING] F01/F01-M003: temperature 104.25 degC above 100 degC",
        "[CRITICAL] F01/F01-M003: temperature 121.5 degC above 120 degC",
    ]
    assert "Time:       2026-01-05 00:02:00.000 UTC" in alerts[1]["Message"]
    assert alerts[1]["MessageAttributes"]["severity"]["Value"] == "CRITICAL"
    escalated = drain(router["escalation"])
    assert [e["Subject"] for e in escalated] == [alerts[1]["Subject"]]

    # The same batch delivered again (a Lambda retry): idempotency, nothing sent twice.
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    assert drain(router["alerts"]) == []
    assert drain(router["escalation"]) == []
    stored = boto3.client("dynamodb").scan(TableName=router["idempotency"])["Items"]
    assert len(stored) == 3


def test_a_record_that_is_not_an_anomaly_is_dead_lettered_not_retried(router, lambda_context):
    event = kinesis_event([b'{"machine_id": "F01-M003"}', encode_anomaly(anomaly())])
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    (dead,) = drain(router["dead_letters"])
    assert dead["reason"].startswith("not an anomaly message: Object missing required field")
    assert dead["origin"] == {"sequence_number": "1", "source": "kinesis"}
    assert len(drain(router["alerts"])) == 1


def test_failed_escalation_reports_only_that_record_and_the_retry_escalates(router, lambda_context):
    sns = boto3.client("sns")
    sns.delete_topic(TopicArn=router["escalation_topic"])
    critical = anomaly(severity="CRITICAL", value=130.0, threshold=120.0)
    other_machine = anomaly(machine_id="F01-M004")
    event = kinesis_event(
        [encode_anomaly(critical), encode_anomaly(other_machine)], first_sequence=41
    )
    assert handler.handler(event, lambda_context) == {
        "batchItemFailures": [{"itemIdentifier": "41"}]
    }
    # the failed record's cooldown claim is released and its idempotency record removed
    keys = [
        i["pk"]["S"] for i in boto3.client("dynamodb").scan(TableName=router["cooldown"])["Items"]
    ]
    assert keys == ["F01#F01-M004#TEMPERATURE_HIGH#temperature"]
    assert len(drain(router["alerts"])) == 2  # the critical alert went out before escalating

    topic = sns.create_topic(Name=router["escalation_topic"].rsplit(":", 1)[1])["TopicArn"]
    queue_arn = boto3.client("sqs").get_queue_attributes(
        QueueUrl=router["escalation"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    retry = kinesis_event([encode_anomaly(critical)], first_sequence=41)
    assert handler.handler(retry, lambda_context) == {"batchItemFailures": []}
    # escalation reaches the on-call; the alerts topic sees the critical alert a second time
    # (a duplicate is preferred over a lost escalation)
    assert len(drain(router["escalation"])) == 1
    assert len(drain(router["alerts"])) == 1


def test_iot_rule_message_is_routed_directly(router, lambda_context):
    message = json.loads(
        encode_anomaly(
            anomaly(source="edge", anomaly_type="THRESHOLD_HIGH", sensor_id="F01-M003-temperature")
        )
    )
    assert handler.handler(message, lambda_context) == {"decisions": ["sent"], "dead_lettered": 0}
    assert handler.handler({"bogus": 1}, lambda_context) == {"decisions": [], "dead_lettered": 1}
    assert len(drain(router["alerts"])) == 1
    assert len(drain(router["dead_letters"])) == 1


def test_missing_configuration_fails_fast(router, lambda_context, monkeypatch):
    monkeypatch.delenv("ALERT_TOPIC_ARN")
    with pytest.raises(KeyError, match="ALERT_TOPIC_ARN"):
        handler.handler(kinesis_event([encode_anomaly(anomaly())]), lambda_context)


def test_dynamodb_cooldown_claims_are_conditional(router):
    store = DynamoCooldownStore(boto3.client("dynamodb"), router["cooldown"], clock=lambda: 1e9)
    key = "F01#F01-M003#TEMPERATURE_HIGH#temperature"
    first = anomaly()
    assert store.claim(key, anomaly=first, until_ms=T0 + 15 * MINUTE)
    repeat = anomaly(timestamp=T0 + MINUTE)
    assert not store.claim(key, anomaly=repeat, until_ms=T0 + 16 * MINUTE)
    critical = anomaly(timestamp=T0 + 2 * MINUTE, severity="CRITICAL")
    assert store.claim(key, anomaly=critical, until_ms=T0 + 17 * MINUTE)
    later = anomaly(timestamp=T0 + 17 * MINUTE)
    assert store.claim(key, anomaly=later, until_ms=T0 + 32 * MINUTE)
    item = boto3.client("dynamodb").get_item(TableName=router["cooldown"], Key={"pk": {"S": key}})
    assert item["Item"]["until_ms"]["N"] == str(T0 + 32 * MINUTE)
    assert int(item["Item"]["expires_at"]["N"]) == 1_000_000_000 + 900 + 3600  # TTL attribute
    store.release(key, anomaly=first)  # not the holder: no effect
    assert "Item" in boto3.client("dynamodb").get_item(
        TableName=router["cooldown"], Key={"pk": {"S": key}}
    )
