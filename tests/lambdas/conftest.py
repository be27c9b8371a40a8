"""Lambda test fixtures: fake credentials and moto before any client exists (STYLE rule 6)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

REGION = "eu-west-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@dataclass
class LambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:test-function"
    aws_request_id: str = "request-1"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


def unique(prefix: str) -> str:
    """A resource name of its own per test (the handler reuses clients per configuration)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_table(name: str, key: str) -> None:
    boto3.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def create_machine_state_table(name: str) -> None:
    """The machine state table as the alerting stack defines it (one item per completed job):
    the connected run's own definition."""
    from local_platform.connected.aws import create_machine_state_table as create

    create(boto3.client("dynamodb"), name)


def create_queue(name: str) -> str:
    return boto3.client("sqs").create_queue(QueueName=name)["QueueUrl"]


def drain(queue_url: str) -> list[dict[str, Any]]:
    """Every message body in the queue (JSON-decoded), removing them."""
    sqs = boto3.client("sqs")
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        messages = got.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def kinesis_event(payloads: list[bytes], *, first_sequence: int = 1) -> dict[str, Any]:
    """A Kinesis event as Lambda delivers it (base64 data, sequence numbers)."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "F1",
                    "sequenceNumber": str(first_sequence + i),
                    "data": base64.b64encode(payload).decode(),
                    "approximateArrivalTimestamp": 1767571200.0,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000000:{first_sequence + i}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/test",
                "awsRegion": REGION,
                "eventSourceARN": f"arn:aws:kinesis:{REGION}:123456789012:stream/test",
            }
            for i, payload in enumerate(payloads)
        ]
    }


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's InfluxDB 1.6 on free 127.0.0.1 ports, temp dirs; stopped by its PID."""
    from local_platform.connected.influxd import start_influxd

    server = start_influxd(tmp_path_factory.mktemp("influxd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def router(aws, monkeypatch):
    """The alert router's environment on moto: topics with SQS subscribers (to read what people
    would get), cooldown, idempotency and machine state tables, the dead-letter queue."""
    sns = boto3.client("sns")
    sqs = boto3.client("sqs")
    names = {}
    for role in ("alerts", "escalation"):
        topic = sns.create_topic(Name=unique(role))["TopicArn"]
        queue_url = create_queue(unique(f"{role}-inbox"))
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        names[role] = (topic, queue_url)
    cooldown, idempotency = unique("cooldown"), unique("idempotency")
    create_table(cooldown, "pk")
    create_table(idempotency, "id")
    machine_state = unique("machine-state")
    create_machine_state_table(machine_state)
    dead_letters = create_queue(unique("dead-letters"))
    monkeypatch.setenv("ALERT_TOPIC_ARN", names["alerts"][0])
    monkeypatch.setenv("ESCALATION_TOPIC_ARN", names["escalation"][0])
    monkeypatch.setenv("COOLDOWN_TABLE", cooldown)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", idempotency)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", dead_letters)
    monkeypatch.setenv("COOLDOWN_SECONDS", "900")
    monkeypatch.setenv("MACHINE_STATE_TABLE", machine_state)
    monkeypatch.setenv("STARTUP_WINDOW_SECONDS", "1800")
    return {
        "alerts": names["alerts"][1],
        "escalation": names["escalation"][1],
        "dead_letters": dead_letters,
        "cooldown": cooldown,
        "idempotency": idempotency,
        "machine_state": machine_state,
        "escalation_topic": names["escalation"][0],
    }
