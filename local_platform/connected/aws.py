"""The AWS APIs of a connected run: moto in server mode, with the resources the stacks create.

`moto_server` (moto's own server, from the project's environment) listens on a free 127.0.0.1
port; every process of the run reaches it through `AWS_ENDPOINT_URL` (`kinesis.
aws_environment`). `create_resources` makes what the stacks make for an environment, under the
names they give them (prefix `iiot-local`):

* Kinesis: the telemetry stream (IoT rule -> Firehose and the InfluxDB writer; the stream
  rules' feed reads it too) and the anomaly stream (IoT rule and the stream rules -> the alert
  router);
* DynamoDB: the writer's and the router's idempotency tables, the router's cooldown table, and
  the machine state table the maintenance rule fills (`ingress.py`) and the router reads;
* SQS: the dead-letter queues of both functions, the event sources' on-failure destinations,
  and an inbox per SNS topic (what people would receive, read back by the reconciliation);
* SNS: the alert and escalation topics;
* Secrets Manager: the InfluxDB credentials the writer signs in with.
"""

from __future__ import annotations

import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from local_platform.connected.kinesis import client, wait_for_stream
from local_platform.connected.plan import ANOMALY_STREAM, PREFIX, TELEMETRY_STREAM

TELEMETRY_SHARDS = 2
INFLUX_ORG = "iiot"
INFLUX_BUCKET = "telemetry"


def moto_command(port: int) -> list[str]:
    """moto's server from the interpreter's own environment (fails early when missing)."""
    binary = Path(sys.executable).with_name("moto_server")
    found = str(binary) if binary.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError(
            "moto_server is not installed in this environment: run `scripts/bootstrap.sh demo`"
        )
    return [found, "-H", "127.0.0.1", "-p", str(port)]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class CloudResources:
    telemetry_stream: str
    anomaly_stream: str
    writer_idempotency_table: str
    writer_dead_letters: str
    writer_on_failure: str
    router_idempotency_table: str
    router_cooldown_table: str
    router_machine_state_table: str
    router_dead_letters: str
    router_on_failure: str
    alert_topic: str
    escalation_topic: str
    alert_inbox: str
    escalation_inbox: str
    influx_secret_arn: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _table(dynamodb: Any, name: str, key: str) -> str:
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def create_machine_state_table(dynamodb: Any, name: str) -> str:
    """One item per completed maintenance job, keyed by machine and completion time (the
    alerting stack's `MachineState`)."""
    dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "machine_id", "KeyType": "HASH"},
            {"AttributeName": "completed_at_ms", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "machine_id", "AttributeType": "S"},
            {"AttributeName": "completed_at_ms", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def create_resources() -> CloudResources:
    kinesis, sqs, sns = client("kinesis"), client("sqs"), client("sns")
    dynamodb, secrets = client("dynamodb"), client("secretsmanager")
    kinesis.create_stream(StreamName=TELEMETRY_STREAM, ShardCount=TELEMETRY_SHARDS)
    kinesis.create_stream(StreamName=ANOMALY_STREAM, ShardCount=1)
    for stream in (TELEMETRY_STREAM, ANOMALY_STREAM):
        wait_for_stream(kinesis, stream)

    def queue(name: str) -> str:
        url: str = sqs.create_queue(QueueName=f"{PREFIX}-{name}")["QueueUrl"]
        return url

    def inbox(topic_arn: str, name: str) -> str:
        url = queue(name)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)
        return url

    alert_topic = sns.create_topic(Name=f"{PREFIX}-alerts")["TopicArn"]
    escalation_topic = sns.create_topic(Name=f"{PREFIX}-alerts-critical")["TopicArn"]
    secret = secrets.create_secret(
        Name=f"{PREFIX}-influx-credentials",
        SecretString='{"token": "local-token", "organization": "iiot", "bucket": "telemetry"}',
    )["ARN"]
    return CloudResources(
        telemetry_stream=TELEMETRY_STREAM,
        anomaly_stream=ANOMALY_STREAM,
        writer_idempotency_table=_table(dynamodb, f"{PREFIX}-writer-idempotency", "id"),
        writer_dead_letters=queue("writer-dead-letters"),
        writer_on_failure=queue("writer-on-failure"),
        router_idempotency_table=_table(dynamodb, f"{PREFIX}-router-idempotency", "id"),
        router_cooldown_table=_table(dynamodb, f"{PREFIX}-cooldowns", "pk"),
        router_machine_state_table=create_machine_state_table(dynamodb, f"{PREFIX}-machine-state"),
        router_dead_letters=queue("router-dead-letters"),
        router_on_failure=queue("router-on-failure"),
        alert_topic=alert_topic,
        escalation_topic=escalation_topic,
        alert_inbox=inbox(alert_topic, "alerts-inbox"),
        escalation_inbox=inbox(escalation_topic, "alerts-critical-inbox"),
        influx_secret_arn=secret,
    )


def drain_queue(url: str) -> list[dict[str, Any]]:
    """Every message of a queue (body and attributes), removed from it."""
    sqs = client("sqs")
    messages: list[dict[str, Any]] = []
    while True:
        answer = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        batch = answer.get("Messages", [])
        if not batch:
            return messages
        for message in batch:
            messages.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
