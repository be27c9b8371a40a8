"""Adapters for the alert router: DynamoDB cooldown store and machine state, SNS notifier, SQS
dead letters, and in-memory versions for the local demo and tests. Clients are passed in, never
created here at import time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iiot.anomaly import SEVERITY_ORDER, Anomaly
from lambdas.alert_router.models import Notification, ReturnToService

# DynamoDB's TTL removes a cooldown item a while after it stops mattering (wall clock); the
# decision itself uses the event-time `until_ms`, so expiry is only housekeeping.
TTL_MARGIN_SECONDS = 3600


class DynamoCooldownStore:
    """One item per cooldown key, claimed with a conditional write (no read-modify-write race
    between concurrent invocations: exactly one of two simultaneous repeats wins)."""

    def __init__(
        self, client: Any, table_name: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._table = table_name
        self._clock = clock

    def claim(self, key: str, *, anomaly: Anomaly, until_ms: int) -> bool:
        cooldown_s = max(0, (until_ms - anomaly.timestamp) // 1000)
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": key},
                    "until_ms": {"N": str(until_ms)},
                    "severity_rank": {"N": str(SEVERITY_ORDER[anomaly.severity])},
                    "event_time_ms": {"N": str(anomaly.timestamp)},
                    "anomaly_id": {"S": anomaly.anomaly_id},
                    "expires_at": {"N": str(int(self._clock()) + cooldown_s + TTL_MARGIN_SECONDS)},
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR until_ms <= :event_time OR severity_rank < :rank"
                ),
                ExpressionAttributeValues={
                    ":event_time": {"N": str(anomaly.timestamp)},
                    ":rank": {"N": str(SEVERITY_ORDER[anomaly.severity])},
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def release(self, key: str, *, anomaly: Anomaly) -> None:
        # If a later alert holds the key now, the condition fails and that claim stays.
        with contextlib.suppress(self._client.exceptions.ConditionalCheckFailedException):
            self._client.delete_item(
                TableName=self._table,
                Key={"pk": {"S": key}},
                ConditionExpression="anomaly_id = :id",
                ExpressionAttributeValues={":id": {"S": anomaly.anomaly_id}},
            )


class DynamoMachineState:
    """The machine state table: one item per completed maintenance job, written by the IoT
    maintenance rule (partition key `machine_id`, sort key `completed_at_ms`, the factory and
    the job as attributes). The router asks for a machine's latest return to service at or
    before an anomaly's event time, so a replay decides as the live stream did."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def last_return_to_service(
        self, factory_id: str, machine_id: str, at_ms: int
    ) -> ReturnToService | None:
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "machine_id = :machine AND completed_at_ms <= :at",
            # Machine ids are unique per factory only: a job of another factory's machine of
            # the same name is not this one's.
            "FilterExpression": "factory_id = :factory",
            "ExpressionAttributeValues": {
                ":machine": {"S": machine_id},
                ":at": {"N": str(at_ms)},
                ":factory": {"S": factory_id},
            },
            "ScanIndexForward": False,  # newest first
        }
        while True:
            page = self._client.query(**query)
            for item in page.get("Items", []):
                return ReturnToService(
                    factory_id=factory_id,
                    machine_id=machine_id,
                    completed_at_ms=int(item["completed_at_ms"]["N"]),
                    maintenance_id=item.get("maintenance_id", {}).get("S", ""),
                    kind=item.get("kind", {}).get("S", ""),
                )
            if "LastEvaluatedKey" not in page:
                return None
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class SnsNotifier:
    def __init__(self, client: Any, topic_arn: str) -> None:
        self._client = client
        self._topic_arn = topic_arn

    def publish(self, notification: Notification) -> None:
        self._client.publish(
            TopicArn=self._topic_arn,
            Subject=notification.subject,
            Message=notification.body,
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value}
                for name, value in notification.attributes.items()
            },
        )


@dataclass
class InMemoryCooldownStore:
    """The same decisions as DynamoCooldownStore, in a dict (demo, unit tests)."""

    items: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def claim(self, key: str, *, anomaly: Anomaly, until_ms: int) -> bool:
        rank = SEVERITY_ORDER[anomaly.severity]
        held = self.items.get(key)
        if held is not None and held[0] > anomaly.timestamp and held[1] >= rank:
            return False
        self.items[key] = (until_ms, rank, anomaly.anomaly_id)
        return True

    def release(self, key: str, *, anomaly: Anomaly) -> None:
        held = self.items.get(key)
        if held is not None and held[2] == anomaly.anomaly_id:
            del self.items[key]


@dataclass
class RecordingNotifier:
    """Keeps notifications in a list (demo, tests)."""

    sent: list[Notification] = field(default_factory=list)

    def publish(self, notification: Notification) -> None:
        self.sent.append(notification)


@dataclass
class InMemoryMachineState:
    """The same answers as DynamoMachineState, from a list of jobs (demo, unit tests)."""

    jobs: list[ReturnToService] = field(default_factory=list)

    def record(self, job: ReturnToService) -> None:
        self.jobs.append(job)

    def last_return_to_service(
        self, factory_id: str, machine_id: str, at_ms: int
    ) -> ReturnToService | None:
        done = [
            job
            for job in self.jobs
            if (job.factory_id, job.machine_id) == (factory_id, machine_id)
            and job.completed_at_ms <= at_ms
        ]
        return max(done, key=lambda j: j.completed_at_ms, default=None)
