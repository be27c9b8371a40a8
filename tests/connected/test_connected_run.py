"""The connected platform on a tiny fleet, through its faults (an uplink outage, a gateway killed
with SIGKILL and restarted, InfluxDB stopped, malformed payloads): every reading reconciled,
exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iiot.anomaly import decode_anomaly
from iiot.catalog import load_catalog
from kda_sql.calibration import Calibration
from local_platform.connected.plan import Faults, Plan
from local_platform.connected.runner import run
from local_platform.connected.stream import IDLE_S

pytestmark = pytest.mark.slow


def test_a_tiny_fleet_reconciles_exactly_through_the_faults(
    tmp_path: Path, flink_python: Path
) -> None:
    """`flink_python`: the stream rules need `.venv-flink`, made at set-up, never here."""
    plan = Plan(
        work_dir=tmp_path,
        factories=2,
        machines_per_factory=2,
        hours=2.0,
        history_hours=4,
        malformed_rate=0.01,
        readings_per_s=2_000,
        # the outage must silence F01 well past the feed's idleness bound in wall seconds, or
        # F02 is held back for it and its backlog is not late (the default 0.2 of 7.2 live wall
        # seconds is 1.4 s, under IDLE_S: on an idle machine nothing came late)
        faults=Faults(outage_start_h=0.05, outage_hours=0.45, kill_down_s=1.0, influx_down_s=2.0),
        model_lifecycle=False,  # too few failures to learn from (tests/connected/test_model_swap.py)
    )
    assert plan.faults.outage_hours * plan.live_wall_s >= 1.5 * IDLE_S
    document = run(plan)
    assert document["ok"], json.dumps([c for c in document["checks"] if not c["ok"]], indent=1)
    readings = document["readings"]
    assert readings["published"] == sum(readings["published_by_factory"].values()) > 10_000
    assert readings["quarantined_at_gateways"] > 0  # the poison is there, and quarantined
    assert readings["silver"]["rows"] == readings["expected_valid"]
    assert document["influxdb"]["points"] == readings["expected_valid"]  # queried back
    alerts = document["alerts"]
    assert alerts["received_by_people"] == alerts["sent"]
    faults = {f["fault"]: f for f in document["faults"]}
    assert set(faults) == {"outage", "kill", "influxdb"}
    assert faults["outage"]["max_backlog_readings"] > 0  # the gateway buffered, then sent
    assert faults["kill"]["killed"][0]["process"] == "sensor-buffer-F02"
    # the stream rules read every valid reading once; the backlog came late and was evaluated
    assert document["stream"]["rows_fed"] == readings["expected_valid"]
    assert document["stream"]["late_rows"] > 0
    assert document["late_data"]["evaluated"]
    assert document["late_data"]["equal_to_reference"]
    # the rules ran calibrated on the lake's history: every rapid change the live job raised
    # was judged against its series' learned limit
    calibration = document["stream"]["calibration"]
    assert calibration["calibrated"], calibration
    learned = {s.key: s.stddev_limit for s in Calibration.load(Path(calibration["limits"])).series}
    assert learned
    rapid = [
        decode_anomaly(line)
        for path in sorted((plan.stream_dir / "anomalies").rglob("*"))
        if path.is_file() and not path.name.startswith(".")
        for line in path.read_bytes().splitlines()
        if b'"RAPID_CHANGE"' in line
    ]
    catalog = load_catalog()
    for anomaly in rapid:
        key = f"{anomaly.factory_id}/{anomaly.machine_id}/{anomaly.metric}"
        default = catalog[anomaly.metric].rapid_change
        assert default is not None
        assert anomaly.threshold == learned.get(key, default.stddev_limit)
    assert json.loads((tmp_path / "reconciliation.json").read_text())["ok"]
    assert json.loads((tmp_path / "pids.json").read_text()) == {}  # every process stopped
