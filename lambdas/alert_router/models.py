"""What the alert router reads and decides: anomalies in, settings, notifications out.

Anomalies arrive in the shared message format (`iiot.anomaly.Anomaly`, JSON) from two places:
the IoT rule on the gateways' anomaly topic (invoking the function with the message itself,
one object or a list) and the Flink output stream (Kinesis records, each one object or a list).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from iiot.anomaly import Anomaly, decode_anomalies

DEFAULT_COOLDOWN_SECONDS = 900


class Decision(StrEnum):
    """What the router did with one anomaly."""

    SENT = "sent"
    ESCALATED = "escalated"  # sent, and to the escalation topic too (CRITICAL)
    SUPPRESSED = "suppressed"  # a repeat within the cooldown
    NOT_ALERTED = "not_alerted"  # INFO severity or a CLEARED state: logged, nobody paged


class InvalidAnomalyError(ValueError):
    """A payload that is not an anomaly message; kept in the dead-letter queue with the reason."""


@dataclass(frozen=True)
class AlertSettings:
    """The function's configuration; every required variable fails fast when missing."""

    alert_topic_arn: str
    escalation_topic_arn: str
    cooldown_table: str
    idempotency_table: str
    dead_letter_queue_url: str
    cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> AlertSettings:
        cooldown = environ.get("COOLDOWN_SECONDS", str(DEFAULT_COOLDOWN_SECONDS))
        if not cooldown.isdigit():
            raise ValueError(
                f"COOLDOWN_SECONDS must be a whole number of seconds, got {cooldown!r}"
            )
        return cls(
            alert_topic_arn=environ["ALERT_TOPIC_ARN"],
            escalation_topic_arn=environ["ESCALATION_TOPIC_ARN"],
            cooldown_table=environ["COOLDOWN_TABLE"],
            idempotency_table=environ["IDEMPOTENCY_TABLE"],
            dead_letter_queue_url=environ["DEAD_LETTER_QUEUE_URL"],
            cooldown_seconds=int(cooldown),
        )


@dataclass(frozen=True)
class Notification:
    """One message for people: a short subject, a readable body, attributes for filtering."""

    subject: str
    body: str
    attributes: dict[str, str]
    escalate: bool


def parse_anomalies(payload: bytes) -> list[Anomaly]:
    """The anomalies in one record's data; InvalidAnomalyError names what is wrong."""
    try:
        return decode_anomalies(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidAnomalyError(f"not an anomaly message: {exc}") from exc


def parse_iot_event(event: Any) -> list[Anomaly]:
    """The anomalies of a direct IoT rule invocation (the message object, or a list)."""
    try:
        if isinstance(event, list):
            return msgspec.convert(event, list[Anomaly])
        return [msgspec.convert(event, Anomaly)]
    except msgspec.ValidationError as exc:
        raise InvalidAnomalyError(f"not an anomaly message: {exc}") from exc
