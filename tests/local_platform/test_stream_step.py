"""The demo's stream step on a small simulated run, and alert routing of stream anomalies."""

from __future__ import annotations

from pathlib import Path

import pytest

from iiot.anomaly import Anomaly
from local_platform.demo import DemoContext, simulate_step
from local_platform.simulator import FleetConfig
from local_platform.steps.stream import route_alerts, stream_step

T0 = 1_767_571_200_000


def stream_anomaly(minute: int, severity: str = "WARNING", machine: str = "M1") -> Anomaly:
    return Anomaly(
        factory_id="F1",
        machine_id=machine,
        metric="temperature",
        anomaly_type="TEMPERATURE_HIGH",
        severity=severity,
        value=125.0 if severity == "CRITICAL" else 105.0,
        threshold=120.0 if severity == "CRITICAL" else 100.0,
        timestamp=T0 + minute * 60_000,
        source="stream",
    )


def test_stream_anomalies_route_in_event_time_order_with_cooldown():
    anomalies = [stream_anomaly(m) for m in (22, 0, 5, 10, 16)] + [
        stream_anomaly(6, "CRITICAL"),
        stream_anomaly(1, machine="M2"),
    ]
    decisions, alerts, escalation = route_alerts(anomalies, {"temperature": "degC"})
    # M1: 0 sent, 5 suppressed, 6 CRITICAL escalated (restarts the cooldown), 10 suppressed,
    # 16 suppressed (within 15 min of 6), 22 sent; M2: 1 sent
    assert dict(decisions) == {"sent": 3, "suppressed": 3, "escalated": 1}
    assert [n.subject.split(":")[0] for n in alerts.sent] == [
        "[WARNING] F1/M1",
        "[WARNING] F1/M2",
        "[CRITICAL] F1/M1",
        "[WARNING] F1/M1",
    ]
    assert len(escalation.sent) == 1


@pytest.mark.slow
def test_stream_step_on_a_small_simulated_run(flink_python: Path, tmp_path: Path, catalog):
    context = DemoContext(
        work_dir=tmp_path,
        fleet=FleetConfig(factories=1, machines_per_factory=2, hours=1.0, seed=3),
        catalog=catalog,
    )
    simulated = simulate_step(context)
    figures = stream_step(context)
    assert figures["events"] >= simulated["readings"]  # plus the malformed lines
    assert figures["anomalies"] == sum(figures["anomalies by rule"].values())
    assert figures["alerts sent"] + figures["suppressed (cooldown 15 min)"] <= figures["anomalies"]
    assert (tmp_path / "stream" / "alerts.txt").exists()
