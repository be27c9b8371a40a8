"""What the alert router reads and decides: anomalies in, settings, notifications out.

Anomalies arrive in the shared message format (`iiot.anomaly.Anomaly`, JSON) from two places:
the IoT rule on the gateways' anomaly topic (invoking the function with the message itself,
one object or a list) and the Flink output stream (Kinesis records, each one object or a list).

Integrity first, then each anomaly on its own: a payload is checked whole (size, UTF-8, nesting
depth, number of items: `ANOMALY_LIMITS`, the wire's rule) before anything is parsed; a list is
then split into its items and each is decoded alone, so one bad anomaly is refused with its
index and reason while the others in the same payload are routed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from iiot.anomaly import Anomaly
from iiot.wire import Limits, json_integrity_problem

DEFAULT_COOLDOWN_SECONDS = 900
# A machine that returns to service after maintenance starts with every sensor changing at once:
# its rate-of-change alarms in this window are shelved (ISA-18.2 / EEMUA 191 state-based
# alarming); 0 turns the start-up shelving off.
DEFAULT_STARTUP_WINDOW_SECONDS = 1800
# The anomaly types a start-up sets off by itself: the stream's rate-of-change rule (a
# stateless transient). Severity rules and the predictors' alerts (TEMPERATURE_HIGH,
# THRESHOLD_LOW, FAILURE_PREDICTED, ...) say the machine is in a bad state: never shelved.
STARTUP_TRANSIENT_TYPES = frozenset({"RAPID_CHANGE"})
# A failure prediction says "this machine is likely to fail soon": the predictor raises it
# again after each clear while the machine's risk wavers around its threshold, which told the
# same person the same thing up to six times a shift in the demo. It is announced once per
# episode (ISA-18.2 re-alarming): a repeat of equal or lower severity within this interval is
# suppressed, a higher severity breaks through, and a completed maintenance job on the machine
# starts a new episode. 12 h is the maintenance planner's least spacing of jobs on one machine
# (`min_gap_hours`, local_platform/report/whatif.py). Episodes need an interval longer than the
# cooldown: at or below it, a FAILURE_PREDICTED is a repeat like any other anomaly.
DEFAULT_FAILURE_REALERT_SECONDS = 12 * 3600
EPISODE_TYPES = frozenset({"FAILURE_PREDICTED"})

# What one payload of anomalies may cost the router. A Kinesis record is at most 1 MiB and an
# IoT message 128 KiB; producers send one anomaly per message (about 300 bytes), so 100 per
# payload is a wide margin, and bounds the dead letters one bad record can cost (one per item:
# about a second of SQS calls). An anomaly is a flat object: depth 2 in a list, 4 leaves room.
ANOMALY_LIMITS = Limits(max_payload_bytes=1024 * 1024, max_items=100, max_depth=4)


class Decision(StrEnum):
    """What the router did with one anomaly."""

    SENT = "sent"
    ESCALATED = "escalated"  # sent, and to the escalation topic too (CRITICAL)
    SUPPRESSED = "suppressed"  # counted and logged with its reason, nobody paged
    NOT_ALERTED = "not_alerted"  # INFO severity or a CLEARED state: logged, nobody paged


class Reason(StrEnum):
    """Why an anomaly was not sent: logged with each decision and counted per reason."""

    REPEAT = "repeat within the cooldown"
    STARTUP = "start-up after maintenance"
    EPISODE = "failure already announced for this machine"
    CLEARED = "cleared"
    INFO = "INFO severity"


@dataclass(frozen=True)
class AlertSettings:
    """The function's configuration; every required variable fails fast when missing."""

    alert_topic_arn: str
    escalation_topic_arn: str
    cooldown_table: str
    idempotency_table: str
    dead_letter_queue_url: str
    machine_state_table: str
    cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS
    startup_window_seconds: int = DEFAULT_STARTUP_WINDOW_SECONDS
    failure_realert_seconds: int = DEFAULT_FAILURE_REALERT_SECONDS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> AlertSettings:
        def seconds(name: str, default: int) -> int:
            value = environ.get(name, str(default))
            if not value.isdigit():
                raise ValueError(f"{name} must be a whole number of seconds, got {value!r}")
            return int(value)

        return cls(
            alert_topic_arn=environ["ALERT_TOPIC_ARN"],
            escalation_topic_arn=environ["ESCALATION_TOPIC_ARN"],
            cooldown_table=environ["COOLDOWN_TABLE"],
            idempotency_table=environ["IDEMPOTENCY_TABLE"],
            dead_letter_queue_url=environ["DEAD_LETTER_QUEUE_URL"],
            machine_state_table=environ["MACHINE_STATE_TABLE"],
            cooldown_seconds=seconds("COOLDOWN_SECONDS", DEFAULT_COOLDOWN_SECONDS),
            startup_window_seconds=seconds(
                "STARTUP_WINDOW_SECONDS", DEFAULT_STARTUP_WINDOW_SECONDS
            ),
            failure_realert_seconds=seconds(
                "FAILURE_REALERT_SECONDS", DEFAULT_FAILURE_REALERT_SECONDS
            ),
        )


@dataclass(frozen=True)
class ReturnToService:
    """A machine back in service: the maintenance system's record of a completed job (a repair
    after a failure or a preventive job), as the maintenance rule writes it into the machine
    state table (`stacks/alerting_stack.py`)."""

    factory_id: str
    machine_id: str
    completed_at_ms: int
    maintenance_id: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Notification:
    """One message for people: a short subject, a readable body, attributes for filtering."""

    subject: str
    body: str
    attributes: dict[str, str]
    escalate: bool


@dataclass(frozen=True)
class InvalidAnomaly:
    """An item (or a whole payload, `index` None) that is not an anomaly, with the reason and
    its own bytes for the dead-letter queue."""

    index: int | None
    reason: str
    payload: bytes


@dataclass
class ParsedAnomalies:
    """A payload's anomalies, each with its index, and what was refused."""

    anomalies: list[tuple[int | None, Anomaly]] = field(default_factory=list)
    invalid: list[InvalidAnomaly] = field(default_factory=list)


_items_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_anomaly_decoder = msgspec.json.Decoder(Anomaly)


def parse_anomalies(payload: bytes) -> ParsedAnomalies:
    """The anomalies in one payload (one object or a list), each decoded on its own; never
    raises on bad input."""
    parsed = ParsedAnomalies()
    problem = json_integrity_problem(payload, ANOMALY_LIMITS)
    if problem:
        parsed.invalid.append(InvalidAnomaly(None, f"not an anomaly message: {problem}", payload))
        return parsed
    if payload.lstrip()[:1] != b"[":
        items: list[tuple[int | None, bytes | msgspec.Raw]] = [(None, payload)]
    else:
        try:
            items = list(enumerate(_items_decoder.decode(payload)))
        except msgspec.DecodeError as exc:
            reason = f"not an anomaly message: {exc}"
            parsed.invalid.append(InvalidAnomaly(None, reason, payload))
            return parsed
    for index, item in items:
        try:
            parsed.anomalies.append((index, _anomaly_decoder.decode(item)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            where = "" if index is None else f"anomaly {index} of {len(items)}: "
            reason = f"{where}not an anomaly message: {exc}"
            parsed.invalid.append(InvalidAnomaly(index, reason, bytes(item)))
    return parsed


def encode_iot_event(event: Any) -> bytes | str:
    """A direct IoT rule invocation (the message object, or a list) back as JSON, so it goes
    through the same checks as a Kinesis record; the reason when it cannot be encoded."""
    try:
        return msgspec.json.encode(event)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        return f"not an anomaly message: cannot be read as JSON ({type(exc).__name__}: {exc})"
