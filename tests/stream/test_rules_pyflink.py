"""Every Flink SQL rule on crafted streams, run on real local PyFlink (one job for all).

The job reads one JSON-lines file holding every scenario (see `scenarios.py`), interleaved by
event time, with a few out-of-order, late and malformed lines, and writes anomalies as JSON
lines; each test checks one scenario's anomalies exactly.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from iiot.anomaly import Anomaly, decode_anomaly
from kda_sql.flink_env import run_rules

from .scenarios import T0_MS, build, sample_stddev

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def anomalies_by_machine(flink_python: Path, tmp_path_factory) -> dict[str, list[Anomaly]]:
    work = tmp_path_factory.mktemp("rules")
    source = work / "readings.jsonl"
    source.write_bytes(b"\n".join(build().lines()) + b"\n")
    run = run_rules(source, work / "anomalies")
    by_machine: dict[str, list[Anomaly]] = defaultdict(list)
    for line in run.output_lines:
        anomaly = decode_anomaly(line)  # every output row is a valid shared Anomaly message
        by_machine[anomaly.machine_id].append(anomaly)
    return by_machine


def severity_view(anomalies: list[Anomaly]) -> list[tuple]:
    return sorted(
        (a.timestamp - T0_MS, a.metric, a.anomaly_type, a.severity, a.value, a.threshold)
        for a in anomalies
        if a.anomaly_type != "RAPID_CHANGE"
    )


def rapid_view(anomalies: list[Anomaly]) -> list[tuple]:
    return sorted(
        (a.timestamp - T0_MS, a.metric, round(a.value, 9), a.threshold)
        for a in anomalies
        if a.anomaly_type == "RAPID_CHANGE"
    )


def test_normal_data_raises_nothing(anomalies_by_machine):
    assert anomalies_by_machine.get("M-NORMAL", []) == []


def test_temperature_severity_levels_come_from_the_catalog(anomalies_by_machine, catalog):
    rule = catalog["temperature"].stream
    assert (rule.warning, rule.critical) == (100.0, 120.0)
    assert severity_view(anomalies_by_machine["M-TEMP"]) == [
        (20_000, "temperature", "TEMPERATURE_HIGH", "WARNING", 100.5, 100.0),
        (30_000, "temperature", "TEMPERATURE_HIGH", "WARNING", 120.0, 100.0),
        (40_000, "temperature", "TEMPERATURE_HIGH", "CRITICAL", 121.0, 120.0),
    ]
    assert rapid_view(anomalies_by_machine["M-TEMP"]) == []


def test_vibration_severity_levels(anomalies_by_machine):
    assert severity_view(anomalies_by_machine["M-VIB"]) == [
        (10_000, "vibration", "VIBRATION_HIGH", "WARNING", 60.5, 60.0),
        (20_000, "vibration", "VIBRATION_HIGH", "WARNING", 80.0, 60.0),
        (30_000, "vibration", "VIBRATION_HIGH", "CRITICAL", 80.1, 80.0),
    ]


def test_stream_anomalies_carry_the_shared_message_fields(anomalies_by_machine):
    critical = next(a for a in anomalies_by_machine["M-VIB"] if a.severity == "CRITICAL")
    assert critical.source == "stream"
    assert critical.state == "RAISED"
    assert critical.factory_id == "F1"
    assert critical.sensor_id == "M-VIB-vibration"
    assert critical.message == "vibration above the critical threshold"


def test_metric_without_severity_rule_and_invalid_readings_raise_nothing(anomalies_by_machine):
    assert anomalies_by_machine.get("M-PRESSURE", []) == []
    # fault code -999, 300 degC (outside the valid range), degF, unknown metric
    assert anomalies_by_machine.get("M-FAULT", []) == []
    # valid JSON without a timestamp: dropped, and the malformed lines did not stop the job
    assert anomalies_by_machine.get("M-GARBAGE", []) == []


def expected_step(low: float, high: float, limit: float, metric: str) -> list[tuple]:
    # windows [20, 80), [30, 90), [40, 100): 8/4, 6/6 and 4/8 readings at low/high
    return [
        (
            start * 1000 + 55_000,  # newest reading in the window
            metric,
            round(sample_stddev([low] * n_low + [high] * (12 - n_low)), 9),
            limit,
        )
        for start, n_low in ((20, 8), (30, 6), (40, 4))
    ]


def test_rapid_change_over_sliding_one_minute_windows(anomalies_by_machine, catalog):
    assert catalog["temperature"].rapid_change.window_seconds == 60
    got = rapid_view(anomalies_by_machine["M-RAPID"])
    assert got == sorted(
        expected_step(40.0, 90.0, 20.0, "temperature") + expected_step(3.0, 28.0, 10.0, "vibration")
    )
    assert all(a.severity == "WARNING" for a in anomalies_by_machine["M-RAPID"])
    assert severity_view(anomalies_by_machine["M-RAPID"]) == []


def test_a_stuck_sensor_has_no_spread_and_raises_nothing(anomalies_by_machine):
    assert anomalies_by_machine.get("M-STUCK", []) == []


def test_rapid_change_is_per_machine(anomalies_by_machine):
    assert anomalies_by_machine.get("M-ISO-A", []) == []
    assert anomalies_by_machine.get("M-ISO-B", []) == []


def test_out_of_order_readings_within_the_watermark_delay_count(anomalies_by_machine):
    assert rapid_view(anomalies_by_machine["M-OOO"]) == expected_step(
        40.0, 90.0, 20.0, "temperature"
    )


def test_late_reading_misses_its_windows_but_still_raises_its_severity(anomalies_by_machine):
    assert rapid_view(anomalies_by_machine["M-LATE"]) == []
    assert severity_view(anomalies_by_machine["M-LATE"]) == [
        (10_500, "temperature", "TEMPERATURE_HIGH", "CRITICAL", 200.0, 120.0)
    ]


def test_no_anomaly_for_unexpected_machines(anomalies_by_machine):
    assert set(anomalies_by_machine) == {"M-TEMP", "M-VIB", "M-RAPID", "M-OOO", "M-LATE"}
