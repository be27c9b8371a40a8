"""The alert router's logic: suppress repeats, write a message a person can read, escalate.

Repeat suppression is keyed on factory, machine, anomaly type and metric (two different
metrics above their limits are two problems, even when the edge calls both THRESHOLD_HIGH).
The cooldown runs on the anomalies' event time, not the wall clock, so a replay or a backlog
drained late alerts exactly as the live stream would have. A higher severity breaks through a
cooldown held by a lower one (a WARNING followed by a CRITICAL pages the on-call person).
Adapters are injected: DynamoDB/SNS in the Lambda (`repository.py`), in-memory in the demo.

Start-up shelving (ISA-18.2 / EEMUA 191 state-based alarming): a machine that returns to service
after a repair or a preventive job starts with every sensor changing at once, which the stream's
rate-of-change rule reports on every metric. With a machine state (the maintenance system's
completed jobs, `MachineState`), an anomaly of `STARTUP_TRANSIENT_TYPES` within the start-up
window after the machine's latest completed job (event time, as the cooldown) is SUPPRESSED with
the reason "start-up after maintenance": logged and counted with its job, never sent, never
dropped unseen. Severity alerts (TEMPERATURE_HIGH, THRESHOLD_LOW, FAILURE_PREDICTED, ...) are
never shelved: they say the machine is in a bad state, start-up or not.

Failure predictions are announced once per episode: a FAILURE_PREDICTED (`EPISODE_TYPES`) holds
its machine's slot for `failure_realert_seconds` (12 h) instead of the cooldown, and its slot is
keyed on the machine's latest completed job, so a repair or a preventive job starts a new
episode at once. A machine state that cannot be read falls back to the ordinary cooldown.

`AnomalyRouter` takes a whole payload (a Kinesis record or an IoT rule message): each anomaly
in it is checked and routed on its own, once per `anomaly_id`; each bad one goes to the
dead-letter queue with its index and reason, and never holds back the good ones.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from iiot.anomaly import SEVERITY_ORDER, Anomaly
from lambdas.alert_router.models import (
    DEFAULT_FAILURE_REALERT_SECONDS,
    EPISODE_TYPES,
    STARTUP_TRANSIENT_TYPES,
    Decision,
    InvalidAnomaly,
    Notification,
    Reason,
    ReturnToService,
    encode_iot_event,
    parse_anomalies,
)
from lambdas.shared.idempotency import DUPLICATE, EveryTime, Once

log = logging.getLogger(__name__)
SUBJECT_LIMIT = 100  # SNS e-mail subjects: at most 100 printable ASCII characters


class CooldownStore(Protocol):
    def claim(self, key: str, *, anomaly: Anomaly, until_ms: int) -> bool:
        """Record an alert for `key` unless one of equal or higher severity holds it past
        `anomaly.timestamp`; True when this anomaly may alert."""
        ...

    def release(self, key: str, *, anomaly: Anomaly) -> None:
        """Undo this anomaly's claim (its notification failed; a retry must not be suppressed)."""
        ...


class MachineState(Protocol):
    def last_return_to_service(
        self, factory_id: str, machine_id: str, at_ms: int
    ) -> ReturnToService | None:
        """The machine's latest completed maintenance job at or before `at_ms`, if any."""
        ...


class Notifier(Protocol):
    def publish(self, notification: Notification) -> None: ...


class DeadLetter(Protocol):
    def send(self, *, reason: str, payload: bytes, origin: dict[str, str]) -> None: ...


def cooldown_key(anomaly: Anomaly) -> str:
    return "#".join((anomaly.factory_id, anomaly.machine_id, anomaly.anomaly_type, anomaly.metric))


def _number(value: float) -> str:
    return f"{value:.6g}"


def _time(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{timestamp_ms % 1000:03d} UTC"


def _what(anomaly: Anomaly, unit: str) -> tuple[str, str]:
    """(short phrase for the subject, value line for the body)."""
    with_unit = f" {unit}" if unit else ""
    value = f"{_number(anomaly.value)}{with_unit}"
    limit = f"{_number(anomaly.threshold)}{with_unit}" if anomaly.threshold is not None else None
    if anomaly.anomaly_type == "RAPID_CHANGE":
        phrase = f"changing fast (stddev {value}" + (f" > {limit})" if limit else ")")
        return phrase, f"standard deviation {value} over the window"
    if anomaly.anomaly_type == "FAILURE_PREDICTED":
        return f"failure predicted (p={_number(anomaly.value)})", f"probability {value}"
    if anomaly.anomaly_type.endswith("_LOW"):
        return f"{value} below {limit}" if limit else f"{value} too low", value
    if anomaly.anomaly_type.endswith("_HIGH"):
        return f"{value} above {limit}" if limit else f"{value} too high", value
    return f"{anomaly.anomaly_type.lower().replace('_', ' ')} ({value})", value


def format_notification(anomaly: Anomaly, unit: str = "") -> Notification:
    """The SNS message: subject and body that say what, where, how bad and when."""
    phrase, value_line = _what(anomaly, unit)
    subject = f"[{anomaly.severity}] {anomaly.factory_id}/{anomaly.machine_id}: {anomaly.metric} "
    subject = (subject + phrase).encode("ascii", "replace").decode()
    if len(subject) > SUBJECT_LIMIT:
        subject = subject[: SUBJECT_LIMIT - 3] + "..."
    threshold = (
        f"{_number(anomaly.threshold)}{' ' + unit if unit else ''}"
        if anomaly.threshold is not None
        else "-"
    )
    sensor = f" (sensor {anomaly.sensor_id})" if anomaly.sensor_id else ""
    lines = [
        f"{anomaly.severity}: {anomaly.anomaly_type} on machine {anomaly.machine_id}",
        "",
        f"Factory:    {anomaly.factory_id}",
        f"Machine:    {anomaly.machine_id}",
        f"Metric:     {anomaly.metric}{sensor}",
        f"Value:      {value_line}",
        f"Threshold:  {threshold}",
        f"Severity:   {anomaly.severity}",
        f"Time:       {_time(anomaly.timestamp)}",
        f"Detected by: {anomaly.source}",
    ]
    if anomaly.message:
        lines.append(f"Detail:     {anomaly.message}")
    lines += ["", f"Anomaly id: {anomaly.anomaly_id}"]
    return Notification(
        subject=subject,
        body="\n".join(lines),
        attributes={
            "severity": anomaly.severity,
            "factory_id": anomaly.factory_id,
            "machine_id": anomaly.machine_id,
            "anomaly_type": anomaly.anomaly_type,
        },
        escalate=anomaly.severity == "CRITICAL",
    )


@dataclass(frozen=True)
class Routing:
    """The decision on one anomaly, why it was not sent (None when it was), and for a start-up
    suppression the maintenance job the machine returned to service from."""

    decision: Decision
    reason: Reason | None = None
    job: ReturnToService | None = None


class AlertService:
    """Decides per anomaly: alert, escalate, suppress (a repeat, or a start-up transient after
    maintenance), or only log."""

    def __init__(
        self,
        *,
        cooldown_store: CooldownStore,
        alerts: Notifier,
        escalation: Notifier,
        cooldown_seconds: int,
        units: Mapping[str, str] | None = None,
        machine_state: MachineState | None = None,
        startup_window_seconds: int = 0,
        on_machine_state_error: Callable[[], None] = lambda: None,
        failure_realert_seconds: int = DEFAULT_FAILURE_REALERT_SECONDS,
    ) -> None:
        self._store = cooldown_store
        self._alerts = alerts
        self._escalation = escalation
        self._cooldown_ms = cooldown_seconds * 1000
        self._units = dict(units or {})
        self._machine_state = machine_state
        self._startup_ms = startup_window_seconds * 1000
        self._on_machine_state_error = on_machine_state_error
        self._realert_ms = failure_realert_seconds * 1000

    def route(self, anomaly: Anomaly) -> Decision:
        return self.decide(anomaly).decision

    def _latest_job(self, anomaly: Anomaly) -> tuple[bool, ReturnToService | None]:
        """(whether the machine state could be read, the machine's latest completed job at or
        before the anomaly). Fails open: an unreadable state is logged and counted, never
        raised, so a suppression feature can never hold an alert back."""
        if self._machine_state is None:
            return False, None
        try:
            return True, self._machine_state.last_return_to_service(
                anomaly.factory_id, anomaly.machine_id, anomaly.timestamp
            )
        except Exception as exc:
            log.warning(
                "machine state unavailable; routed without it",
                extra={"anomaly_id": anomaly.anomaly_id, "error": repr(exc)},
            )
            self._on_machine_state_error()
            return False, None

    def starting_up(self, anomaly: Anomaly) -> ReturnToService | None:
        """The completed job whose start-up window `anomaly` falls in, when it is a start-up
        transient; None otherwise (or without a machine state)."""
        if self._startup_ms <= 0 or anomaly.anomaly_type not in STARTUP_TRANSIENT_TYPES:
            return None
        _, job = self._latest_job(anomaly)
        if job is None or anomaly.timestamp - job.completed_at_ms > self._startup_ms:
            return None
        return job

    def slot(self, anomaly: Anomaly) -> tuple[str, int, Reason]:
        """(cooldown key, held until, why a repeat is suppressed) for an alert of `anomaly`: a
        failure prediction holds its machine's episode (since the latest completed job) for the
        re-alert interval, any other anomaly its key for the cooldown."""
        key = cooldown_key(anomaly)
        if anomaly.anomaly_type in EPISODE_TYPES and self._realert_ms > self._cooldown_ms:
            readable, job = self._latest_job(anomaly)
            if readable or self._machine_state is None:
                # The job's id and completion time: a maintenance system that reuses ids still
                # opens a new episode with each job.
                episode = (
                    "in-service" if job is None else f"{job.maintenance_id}@{job.completed_at_ms}"
                )
                return f"{key}#{episode}", anomaly.timestamp + self._realert_ms, Reason.EPISODE
        return key, anomaly.timestamp + self._cooldown_ms, Reason.REPEAT

    def decide(self, anomaly: Anomaly) -> Routing:
        if anomaly.state == "CLEARED":
            return Routing(Decision.NOT_ALERTED, Reason.CLEARED)
        if SEVERITY_ORDER[anomaly.severity] < SEVERITY_ORDER["WARNING"]:
            return Routing(Decision.NOT_ALERTED, Reason.INFO)
        # Before the cooldown: a shelved start-up transient must not hold the slot of an alert
        # that comes after the window.
        job = self.starting_up(anomaly)
        if job is not None:
            return Routing(Decision.SUPPRESSED, Reason.STARTUP, job)
        key, until_ms, repeat = self.slot(anomaly)
        if not self._store.claim(key, anomaly=anomaly, until_ms=until_ms):
            return Routing(Decision.SUPPRESSED, repeat)
        notification = format_notification(anomaly, self._units.get(anomaly.metric, ""))
        try:
            self._alerts.publish(notification)
            if notification.escalate:
                self._escalation.publish(notification)
        except Exception:
            # Nobody was told (or the on-call was not): free the slot so the retry alerts.
            self._store.release(key, anomaly=anomaly)
            raise
        return Routing(Decision.ESCALATED if notification.escalate else Decision.SENT)


class RoutingFailedError(RuntimeError):
    """Some anomalies of a payload could not be routed now (SNS or DynamoDB failed): the record
    is reported failed and retried; the anomalies already routed are not alerted twice."""


@dataclass(frozen=True)
class RoutedAnomaly:
    anomaly: Anomaly
    decision: str
    duplicate: bool  # routed before (a redelivery): nothing was sent again
    reason: str | None = None  # why it was not sent (Reason), None when it was
    maintenance_id: str | None = None  # the job whose start-up suppressed it


@dataclass
class PayloadOutcome:
    """What happened to the anomalies of one payload."""

    routed: list[RoutedAnomaly] = field(default_factory=list)
    invalid: list[InvalidAnomaly] = field(default_factory=list)

    @property
    def decisions(self) -> list[str]:
        return [r.decision for r in self.routed]


class AnomalyRouter:
    """A payload of anomalies in, each anomaly routed once or dead-lettered on its own."""

    def __init__(
        self, *, service: AlertService, dead_letter: DeadLetter, once: Once | None = None
    ) -> None:
        self._service = service
        self._dead_letter = dead_letter
        self._once: Once = once if once is not None else EveryTime()

    def route_payload(self, payload: bytes, origin: dict[str, str]) -> PayloadOutcome:
        """A Kinesis record's data (one anomaly object or a list)."""
        parsed = parse_anomalies(payload)
        outcome = PayloadOutcome(invalid=parsed.invalid)
        for invalid in parsed.invalid:
            where = {} if invalid.index is None else {"anomaly_index": str(invalid.index)}
            self._dead_letter.send(
                reason=invalid.reason, payload=invalid.payload, origin={**origin, **where}
            )
        failures: list[str] = []
        first_error: Exception | None = None
        for index, anomaly in parsed.anomalies:
            try:
                outcome.routed.append(self._route_once(anomaly))
            except Exception as exc:  # the others still go out; the record is retried after
                log.warning(
                    "anomaly not routed",
                    extra={"anomaly_id": anomaly.anomaly_id, "error": repr(exc), **origin},
                )
                failures.append(f"{'anomaly' if index is None else f'anomaly {index}'}: {exc!r}")
                first_error = first_error or exc
        if failures:
            raise RoutingFailedError(
                f"{len(failures)} of {len(parsed.anomalies)} anomalies not routed, the record "
                f"will be retried: {'; '.join(failures)}"
            ) from first_error
        return outcome

    def route_event(self, event: Any) -> PayloadOutcome:
        """A direct IoT rule invocation: the message itself (an object or a list), already
        parsed by the runtime; checked and split exactly as a Kinesis record."""
        payload = encode_iot_event(event)
        if isinstance(payload, str):
            invalid = InvalidAnomaly(None, payload, reprlib.repr(event).encode())
            origin = {"source": "iot"}
            self._dead_letter.send(reason=payload, payload=invalid.payload, origin=origin)
            return PayloadOutcome(invalid=[invalid])
        return self.route_payload(payload, {"source": "iot"})

    def _route_once(self, anomaly: Anomaly) -> RoutedAnomaly:
        def decide() -> dict[str, Any]:
            routing = self._service.decide(anomaly)
            result: dict[str, Any] = {"decision": routing.decision.value}
            if routing.reason is not None:
                result["reason"] = routing.reason.value
            if routing.job is not None:
                result["maintenance_id"] = routing.job.maintenance_id
            return result

        # A redelivery answers with the first routing's record, reason included.
        result = self._once.run(anomaly.anomaly_id, decide)
        return RoutedAnomaly(
            anomaly,
            str(result["decision"]),
            bool(result.get(DUPLICATE)),
            reason=result.get("reason"),
            maintenance_id=result.get("maintenance_id"),
        )
