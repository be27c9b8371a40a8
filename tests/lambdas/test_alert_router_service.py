"""The alert router's decisions and messages, with in-memory adapters."""

from __future__ import annotations

import pytest

from iiot.anomaly import Anomaly
from lambdas.alert_router.models import Decision, Notification
from lambdas.alert_router.repository import InMemoryCooldownStore, RecordingNotifier
from lambdas.alert_router.service import AlertService, format_notification

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE = 60_000


def anomaly(**changes) -> Anomaly:
    fields = {
        "factory_id": "F01",
        "machine_id": "F01-M003",
        "metric": "temperature",
        "anomaly_type": "TEMPERATURE_HIGH",
        "severity": "WARNING",
        "value": 104.25,
        "threshold": 100.0,
        "timestamp": T0 + 3_723_456,
        "source": "stream",
        "sensor_id": "F01-M003-temperature",
        "message": "temperature above the warning threshold",
    }
    fields.update(changes)
    return Anomaly(**fields)


class Router:
    def __init__(self, cooldown_seconds: int = 900) -> None:
        self.store = InMemoryCooldownStore()
        self.alerts = RecordingNotifier()
        self.escalation = RecordingNotifier()
        self.service = AlertService(
            cooldown_store=self.store,
            alerts=self.alerts,
            escalation=self.escalation,
            cooldown_seconds=cooldown_seconds,
            units={"temperature": "degC", "vibration": "mm/s"},
        )


def test_message_names_factory_machine_metric_value_threshold_severity_and_time():
    note = format_notification(anomaly(), "degC")
    assert note.subject == "[WARNING] F01/F01-M003: temperature 104.25 degC above 100 degC"
    assert note.body.splitlines()[:10] == [
        "WARNING: TEMPERATURE_HIGH on machine F01-M003",
        "",
        "Factory:    F01",
        "Machine:    F01-M003",
        "Metric:     temperature (sensor F01-M003-temperature)",
        "Value:      104.25 degC",
        "Threshold:  100 degC",
        "Severity:   WARNING",
        "Time:       2026-01-05 01:02:03.456 UTC",
        "Detected by: stream",
    ]
    assert note.attributes["severity"] == "WARNING"
    assert not note.escalate


def test_rapid_change_and_prediction_read_naturally():
    rapid = format_notification(
        anomaly(anomaly_type="RAPID_CHANGE", value=24.61836, threshold=20.0, sensor_id=None),
        "degC",
    )
    assert (
        rapid.subject
        == "[WARNING] F01/F01-M003: temperature changing fast (stddev 24.6184 degC > 20 degC)"
    )
    assert "Value:      standard deviation 24.6184 degC over the window" in rapid.body
    predicted = format_notification(
        anomaly(
            anomaly_type="FAILURE_PREDICTED",
            severity="CRITICAL",
            value=0.97,
            threshold=0.9,
            source="model",
            metric="failure",
        )
    )
    assert "failure predicted (p=0.97)" in predicted.subject
    assert predicted.escalate


def test_subject_stays_within_the_sns_limit():
    note = format_notification(anomaly(machine_id="M" * 120))
    assert len(note.subject) == 100
    assert note.subject.endswith("...")


def test_repeats_within_the_cooldown_are_suppressed_per_machine_type_and_metric():
    router = Router(cooldown_seconds=900)
    route = router.service.route
    assert route(anomaly(timestamp=T0)) == Decision.SENT
    assert route(anomaly(timestamp=T0 + 1 * MINUTE)) == Decision.SUPPRESSED
    assert route(anomaly(timestamp=T0 + 14 * MINUTE)) == Decision.SUPPRESSED
    # another machine, another metric: their own cooldowns
    assert route(anomaly(timestamp=T0 + MINUTE, machine_id="F01-M004")) == Decision.SENT
    assert (
        route(anomaly(timestamp=T0 + MINUTE, metric="vibration", anomaly_type="THRESHOLD_HIGH"))
        == Decision.SENT
    )
    # the cooldown runs from the last alert sent: 15 minutes later it alerts again
    assert route(anomaly(timestamp=T0 + 15 * MINUTE)) == Decision.SENT
    assert len(router.alerts.sent) == 4
    assert router.escalation.sent == []


def test_critical_escalates_and_breaks_through_a_warning_cooldown():
    router = Router()
    route = router.service.route
    assert route(anomaly(timestamp=T0)) == Decision.SENT
    critical = anomaly(timestamp=T0 + MINUTE, severity="CRITICAL", value=125.0, threshold=120.0)
    assert route(critical) == Decision.ESCALATED
    assert route(anomaly(timestamp=T0 + 2 * MINUTE, severity="CRITICAL")) == Decision.SUPPRESSED
    assert route(anomaly(timestamp=T0 + 3 * MINUTE)) == Decision.SUPPRESSED
    assert [n.subject for n in router.escalation.sent] == [
        "[CRITICAL] F01/F01-M003: temperature 125 degC above 120 degC"
    ]
    assert len(router.alerts.sent) == 2


def test_cleared_and_info_anomalies_page_nobody():
    router = Router()
    assert router.service.route(anomaly(state="CLEARED")) == Decision.NOT_ALERTED
    assert router.service.route(anomaly(severity="INFO")) == Decision.NOT_ALERTED
    assert router.alerts.sent == []
    assert router.store.items == {}


def test_a_failed_notification_frees_the_cooldown_so_the_retry_alerts():
    class Failing:
        def publish(self, notification: Notification) -> None:
            raise ConnectionError("SNS unreachable")

    router = Router()
    failing = AlertService(
        cooldown_store=router.store, alerts=Failing(), escalation=Failing(), cooldown_seconds=900
    )
    with pytest.raises(ConnectionError):
        failing.route(anomaly(timestamp=T0))
    assert router.service.route(anomaly(timestamp=T0)) == Decision.SENT
