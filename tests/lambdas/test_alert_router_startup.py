"""Start-up shelving: a machine back in service after maintenance starts with every sensor
changing at once; its rate-of-change alarms within the start-up window are SUPPRESSED with the
reason "start-up after maintenance" (logged, counted, never sent), its severity alerts go out.

The service with in-memory adapters, then the Lambda on moto with the machine state table as
the maintenance rule fills it (stacks/alerting_stack.py)."""

from __future__ import annotations

import json

import boto3
import pytest

from iiot.anomaly import encode_anomaly
from lambdas.alert_router import handler
from lambdas.alert_router.models import AlertSettings, Decision, Reason, ReturnToService
from lambdas.alert_router.repository import (
    DynamoMachineState,
    InMemoryCooldownStore,
    InMemoryMachineState,
    RecordingNotifier,
)
from lambdas.alert_router.service import AlertService

from .conftest import drain, kinesis_event
from .router_data import MINUTE, REQUIRED_ENVIRON, T0, anomaly

REPAIRED = ReturnToService("F01", "F01-M003", T0, "CM-F01-M003-7", "corrective")


def rapid_change(**changes):
    fields = {
        "anomaly_type": "RAPID_CHANGE",
        "metric": "rpm",
        "value": 650.0,
        "threshold": 120.0,
        "timestamp": T0 + 20_000,
    }
    return anomaly(**(fields | changes))


class Router:
    def __init__(self, window_s: int = 1800, jobs: tuple[ReturnToService, ...] = (REPAIRED,)):
        self.alerts = RecordingNotifier()
        self.store = InMemoryCooldownStore()
        self.service = AlertService(
            cooldown_store=self.store,
            alerts=self.alerts,
            escalation=RecordingNotifier(),
            cooldown_seconds=900,
            machine_state=InMemoryMachineState(list(jobs)),
            startup_window_seconds=window_s,
        )


def test_rapid_change_in_the_start_up_window_is_suppressed_with_its_reason_and_job():
    router = Router()
    routing = router.service.decide(rapid_change())
    assert routing.decision == Decision.SUPPRESSED
    assert routing.reason == Reason.STARTUP == "start-up after maintenance"
    assert routing.job == REPAIRED
    assert router.alerts.sent == []
    # The window's last moment still counts; a moment later the rule speaks again.
    assert router.service.route(rapid_change(timestamp=T0 + 30 * MINUTE)) == Decision.SUPPRESSED
    assert router.service.route(rapid_change(timestamp=T0 + 30 * MINUTE + 1)) == Decision.SENT


def test_a_shelved_transient_does_not_hold_the_cooldown_of_a_later_alert():
    router = Router(window_s=60)
    assert router.service.route(rapid_change(timestamp=T0 + 10_000)) == Decision.SUPPRESSED
    assert router.store.items == {}
    assert router.service.route(rapid_change(timestamp=T0 + 2 * MINUTE)) == Decision.SENT


@pytest.mark.parametrize(
    "severity_alert",
    [
        {"anomaly_type": "TEMPERATURE_HIGH", "metric": "temperature"},
        {"anomaly_type": "THRESHOLD_LOW", "metric": "pressure", "source": "edge"},
        {"anomaly_type": "FAILURE_PREDICTED", "metric": "failure", "source": "model"},
    ],
)
def test_severity_alerts_go_out_during_start_up(severity_alert):
    router = Router()
    routing = router.service.decide(anomaly(timestamp=T0 + 20_000, **severity_alert))
    assert (routing.decision, routing.reason) == (Decision.SENT, None)
    assert len(router.alerts.sent) == 1


def test_only_the_machines_own_latest_job_before_the_anomaly_counts():
    other_factory = ReturnToService("F02", "F01-M003", T0, "CM-F02-1", "corrective")
    later_job = ReturnToService("F01", "F01-M003", T0 + 60 * MINUTE, "PM-F01-M003-9", "preventive")
    router = Router(jobs=(other_factory, later_job))
    # Stopping for the job that completes later (and the other factory's machine of the same
    # name) is no start-up of this machine: alerted.
    assert router.service.route(rapid_change()) == Decision.SENT
    assert router.service.route(rapid_change(machine_id="F01-M004")) == Decision.SENT
    restart = router.service.decide(rapid_change(timestamp=T0 + 61 * MINUTE, metric="flow_rate"))
    assert (restart.decision, restart.job) == (Decision.SUPPRESSED, later_job)


def test_a_window_of_zero_turns_the_shelving_off():
    assert Router(window_s=0).service.route(rapid_change()) == Decision.SENT


def test_the_window_is_configured_in_whole_seconds():
    environ = REQUIRED_ENVIRON
    assert AlertSettings.from_environ(environ).startup_window_seconds == 1800
    settings = AlertSettings.from_environ(environ | {"STARTUP_WINDOW_SECONDS": "600"})
    assert settings.startup_window_seconds == 600
    with pytest.raises(ValueError, match="STARTUP_WINDOW_SECONDS must be a whole number"):
        AlertSettings.from_environ(environ | {"STARTUP_WINDOW_SECONDS": "ten minutes"})


# --- the Lambda on moto ---------------------------------------------------------------------


def completed_job(table: str, factory: str, machine: str, completed_at_ms: int, job: str) -> None:
    """The item the maintenance rule writes for one completed job (its SELECT's fields)."""
    boto3.client("dynamodb").put_item(
        TableName=table,
        Item={
            "factory_id": {"S": factory},
            "machine_id": {"S": machine},
            "completed_at_ms": {"N": str(completed_at_ms)},
            "started_at_ms": {"N": str(completed_at_ms - 4 * 60 * MINUTE)},
            "maintenance_id": {"S": job},
            "kind": {"S": "corrective"},
            "expires_at": {"N": str(completed_at_ms // 1000 + 30 * 86_400)},
        },
    )


def test_the_machine_state_table_answers_the_latest_job_of_the_machine(router):
    table = router["machine_state"]
    completed_job(table, "F01", "F01-M003", T0 - 24 * 60 * MINUTE, "PM-1")
    completed_job(table, "F01", "F01-M003", T0, "CM-2")
    completed_job(table, "F01", "F01-M003", T0 + 60 * MINUTE, "PM-3")
    completed_job(table, "F02", "F01-M003", T0 + 5 * MINUTE, "CM-other-factory")
    state = DynamoMachineState(boto3.client("dynamodb"), table)
    found = state.last_return_to_service("F01", "F01-M003", T0 + 10 * MINUTE)
    assert found == ReturnToService("F01", "F01-M003", T0, "CM-2", "corrective")
    assert state.last_return_to_service("F01", "F01-M003", T0 - 1).maintenance_id == "PM-1"
    assert state.last_return_to_service("F01", "F01-M003", T0 - 25 * 60 * MINUTE) is None
    assert state.last_return_to_service("F02", "F01-M004", T0) is None


def test_start_up_transients_are_suppressed_logged_and_counted_severity_goes_out(
    router, lambda_context, caplog, capsys
):
    completed_job(router["machine_state"], "F01", "F01-M003", T0, "CM-F01-M003-7")
    handler._build.cache_clear()
    event = kinesis_event(
        [
            encode_anomaly(rapid_change(metric=metric, timestamp=T0 + 20_000))
            for metric in ("rpm", "flow_rate", "pressure")
        ]
        + [encode_anomaly(anomaly(timestamp=T0 + 30_000, value=121.0, threshold=120.0))]
    )
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    handler._build.cache_clear()

    (alert,) = drain(router["alerts"])
    assert alert["Subject"] == "[WARNING] F01/F01-M003: temperature 121 degC above 120 degC"
    routed = [r for r in caplog.records if r.getMessage() == "anomaly routed"]
    shelved = [r for r in routed if getattr(r, "reason", None) == "start-up after maintenance"]
    assert len(shelved) == 3
    assert {r.decision for r in shelved} == {"suppressed"}
    assert {r.maintenance_id for r in shelved} == {"CM-F01-M003-7"}
    # The metrics (EMF, one JSON document printed per invocation).
    lines = capsys.readouterr().out.splitlines()
    metrics = next(json.loads(line) for line in lines if '"_aws"' in line)
    assert metrics["Suppressed_startup"] == [1.0, 1.0, 1.0]
    assert metrics["Anomalies_sent"] == [1.0]


class BrokenMachineState:
    def last_return_to_service(self, factory_id: str, machine_id: str, at_ms: int):
        raise ConnectionError("machine state table unreachable")


def test_an_unreadable_machine_state_fails_open_the_alert_goes_out():
    """Shelving only ever holds an alert back: when the machine state cannot be read, the
    anomaly is routed as if there were none (counted), never held or retried for it."""
    errors = []
    alerts = RecordingNotifier()
    service = AlertService(
        cooldown_store=InMemoryCooldownStore(),
        alerts=alerts,
        escalation=RecordingNotifier(),
        cooldown_seconds=900,
        machine_state=BrokenMachineState(),
        startup_window_seconds=1800,
        on_machine_state_error=lambda: errors.append(1),
    )
    assert service.route(rapid_change()) == Decision.SENT
    assert len(alerts.sent) == 1
    assert errors == [1]


def test_the_lambda_sends_and_counts_when_the_machine_state_table_is_gone(
    router, lambda_context, capsys, monkeypatch
):
    monkeypatch.setenv("MACHINE_STATE_TABLE", "iiot-no-such-table")
    handler._build.cache_clear()
    event = kinesis_event([encode_anomaly(rapid_change())])
    assert handler.handler(event, lambda_context) == {"batchItemFailures": []}
    handler._build.cache_clear()
    (alert,) = drain(router["alerts"])
    assert "F01-M003" in alert["Subject"]
    lines = capsys.readouterr().out.splitlines()
    metrics = next(json.loads(line) for line in lines if '"_aws"' in line)
    assert metrics["MachineStateUnavailable"] == [1.0]
    assert metrics["Anomalies_sent"] == [1.0]
