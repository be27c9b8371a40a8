"""Failure predictions are announced once per episode: a FAILURE_PREDICTED holds its machine's
slot for the re-alert interval (12 h) instead of the 15 min cooldown, a higher severity breaks
through, and a completed maintenance job on the machine starts a new episode. Repeats are
SUPPRESSED with their own reason and metric; an unreadable machine state falls back to the
ordinary cooldown. The service with in-memory adapters, then the Lambda on moto."""

from __future__ import annotations

import json

import boto3
import pytest

from iiot.anomaly import encode_anomaly
from lambdas.alert_router import handler
from lambdas.alert_router.models import AlertSettings, Decision, Reason, ReturnToService
from lambdas.alert_router.repository import (
    InMemoryCooldownStore,
    InMemoryMachineState,
    RecordingNotifier,
)
from lambdas.alert_router.service import AlertService

from .conftest import drain, kinesis_event
from .router_data import MINUTE, REQUIRED_ENVIRON, T0, anomaly
from .test_alert_router_startup import BrokenMachineState, completed_job

HOUR = 60 * MINUTE


def predicted(minutes: float = 0, **changes):
    fields = {
        "anomaly_type": "FAILURE_PREDICTED",
        "metric": "failure",
        "source": "model",
        "value": 0.9,
        "threshold": 0.8,
        "timestamp": T0 + int(minutes * MINUTE),
    }
    return anomaly(**(fields | changes))


def service(
    machine_state=None, errors=None, alerts=None, realert_s=12 * 3600
) -> tuple[AlertService, RecordingNotifier]:
    alerts = alerts if alerts is not None else RecordingNotifier()
    routed = AlertService(
        cooldown_store=InMemoryCooldownStore(),
        alerts=alerts,
        escalation=RecordingNotifier(),
        cooldown_seconds=900,
        machine_state=machine_state if machine_state is not None else InMemoryMachineState([]),
        startup_window_seconds=1800,
        on_machine_state_error=(lambda: errors.append(1)) if errors is not None else lambda: None,
        failure_realert_seconds=realert_s,
    )
    return routed, alerts


def test_a_failure_prediction_is_announced_once_per_twelve_hours():
    router, alerts = service()
    assert router.route(predicted()) == Decision.SENT
    # The predictor clears and raises again while the risk wavers: the same news, not sent.
    for minutes in (20, 90, 6 * 60, 12 * 60 - 1):
        routing = router.decide(predicted(minutes))
        assert (routing.decision, routing.reason) == (Decision.SUPPRESSED, Reason.EPISODE)
    assert Reason.EPISODE == "failure already announced for this machine"
    assert router.route(predicted(12 * 60)) == Decision.SENT
    assert len(alerts.sent) == 2
    # Another machine, and another factory's machine of the same name, have episodes of their own.
    assert router.route(predicted(30, machine_id="F01-M004")) == Decision.SENT
    assert router.route(predicted(30, factory_id="F02")) == Decision.SENT


def test_a_higher_severity_breaks_through_the_episode():
    router, _ = service()
    assert router.route(predicted()) == Decision.SENT
    critical = predicted(60, severity="CRITICAL", value=0.97)
    assert router.route(critical) == Decision.ESCALATED
    assert router.route(predicted(120, severity="CRITICAL", value=0.98)) == Decision.SUPPRESSED


def test_a_completed_job_starts_a_new_episode():
    job = ReturnToService("F01", "F01-M003", T0 + 3 * HOUR, "PM-F01-M003-4", "preventive")
    router, _ = service(InMemoryMachineState([job]))
    assert router.route(predicted()) == Decision.SENT
    assert router.route(predicted(2 * 60)) == Decision.SUPPRESSED
    # After the job the machine is renewed: a prediction is news again, once.
    assert router.route(predicted(4 * 60)) == Decision.SENT
    assert router.route(predicted(5 * 60)) == Decision.SUPPRESSED


class FailingOnce(RecordingNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def publish(self, notification) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("SNS unreachable")
        super().publish(notification)


def test_a_prediction_whose_notification_failed_is_sent_on_the_retry():
    router, alerts = service(alerts=FailingOnce())
    with pytest.raises(ConnectionError):
        router.route(predicted())
    assert router.route(predicted()) == Decision.SENT  # the retry: its slot was freed
    assert len(alerts.sent) == 1
    assert router.route(predicted(60)) == Decision.SUPPRESSED


def test_an_interval_no_longer_than_the_cooldown_turns_episodes_off():
    job = ReturnToService("F01", "F01-M003", T0 + 5 * MINUTE, "PM-1", "preventive")
    router, _ = service(InMemoryMachineState([job]), realert_s=900)
    assert router.route(predicted()) == Decision.SENT
    routing = router.decide(predicted(10))  # the job does not reset an ordinary cooldown
    assert (routing.decision, routing.reason) == (Decision.SUPPRESSED, Reason.REPEAT)
    assert router.route(predicted(16)) == Decision.SENT


def test_other_anomaly_types_keep_the_cooldown():
    router, _ = service()
    assert router.route(anomaly(timestamp=T0)) == Decision.SENT
    assert router.route(anomaly(timestamp=T0 + 10 * MINUTE)) == Decision.SUPPRESSED
    assert router.route(anomaly(timestamp=T0 + 16 * MINUTE)) == Decision.SENT
    assert router.decide(anomaly(timestamp=T0 + 20 * MINUTE)).reason == Reason.REPEAT


def test_an_unreadable_machine_state_falls_back_to_the_cooldown():
    errors: list[int] = []
    router, alerts = service(BrokenMachineState(), errors)
    assert router.route(predicted()) == Decision.SENT
    assert router.decide(predicted(10)).reason == Reason.REPEAT
    assert router.route(predicted(16)) == Decision.SENT
    assert len(alerts.sent) == 2
    assert len(errors) == 3


def test_the_interval_is_configured_in_whole_seconds():
    environ = REQUIRED_ENVIRON
    assert AlertSettings.from_environ(environ).failure_realert_seconds == 43200
    settings = AlertSettings.from_environ(environ | {"FAILURE_REALERT_SECONDS": "3600"})
    assert settings.failure_realert_seconds == 3600
    with pytest.raises(ValueError, match="FAILURE_REALERT_SECONDS must be a whole number"):
        AlertSettings.from_environ(environ | {"FAILURE_REALERT_SECONDS": "12h"})


def test_the_lambda_announces_a_prediction_once_until_the_machine_is_serviced(
    router, lambda_context, caplog, capsys
):
    handler._build.cache_clear()
    first = kinesis_event([encode_anomaly(predicted(m)) for m in (0, 45, 3 * 60)])
    assert handler.handler(first, lambda_context) == {"batchItemFailures": []}
    capsys.readouterr()
    completed_job(router["machine_state"], "F01", "F01-M003", T0 + 4 * HOUR, "CM-F01-M003-8")
    second = kinesis_event([encode_anomaly(predicted(m)) for m in (5 * 60, 6 * 60)])
    assert handler.handler(second, lambda_context) == {"batchItemFailures": []}
    handler._build.cache_clear()

    subjects = [a["Subject"] for a in drain(router["alerts"])]
    assert subjects == ["[WARNING] F01/F01-M003: failure failure predicted (p=0.9)"] * 2
    routed = [r for r in caplog.records if r.getMessage() == "anomaly routed"]
    assert [r.decision for r in routed] == [
        "sent",
        "suppressed",
        "suppressed",
        "sent",
        "suppressed",
    ]
    lines = capsys.readouterr().out.splitlines()
    metrics = next(json.loads(line) for line in lines if '"_aws"' in line)
    assert metrics["Suppressed_episode"] == [1.0]
    assert metrics["Anomalies_sent"] == [1.0]
    items = boto3.client("dynamodb").scan(TableName=router["cooldown"])["Items"]
    keys = sorted(item["pk"]["S"] for item in items)
    assert keys == [
        f"F01#F01-M003#FAILURE_PREDICTED#failure#CM-F01-M003-8@{T0 + 4 * HOUR}",
        "F01#F01-M003#FAILURE_PREDICTED#failure#in-service",
    ]
