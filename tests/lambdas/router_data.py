"""Anomalies for the alert router's handler tests."""

from __future__ import annotations

from iiot.anomaly import Anomaly

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE = 60_000
# The variables AlertSettings requires (each fails fast when missing).
REQUIRED_ENVIRON = dict.fromkeys(
    (
        "ALERT_TOPIC_ARN",
        "ESCALATION_TOPIC_ARN",
        "COOLDOWN_TABLE",
        "IDEMPOTENCY_TABLE",
        "DEAD_LETTER_QUEUE_URL",
        "MACHINE_STATE_TABLE",
    ),
    "x",
)


def anomaly(**changes) -> Anomaly:
    fields = {
        "factory_id": "F01",
        "machine_id": "F01-M003",
        "metric": "temperature",
        "anomaly_type": "TEMPERATURE_HIGH",
        "severity": "WARNING",
        "value": 104.25,
        "threshold": 100.0,
        "timestamp": T0,
        "source": "stream",
    }
    fields.update(changes)
    return Anomaly(**fields)
