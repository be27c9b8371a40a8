"""Anomalies for the alert router's handler tests."""

from __future__ import annotations

from iiot.anomaly import Anomaly

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
        "timestamp": T0,
        "source": "stream",
    }
    fields.update(changes)
    return Anomaly(**fields)
