"""Adapters for the alert router: DynamoDB cooldown store, SNS notifier, SQS dead letters,
and in-memory versions for the local demo and tests. Clients are passed in, never created here
at import time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iiot.anomaly import SEVERITY_ORDER, Anomaly
from lambdas.alert_router.models import Notification

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
