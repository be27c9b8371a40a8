"""Every Flink SQL rule on crafted streams, run on real local PyFlink (one job per encoding).

The job reads one file holding every scenario (see `scenarios.py`), interleaved by event time,
with a few out-of-order and late readings, and writes anomalies as JSON lines; each test checks
one scenario's anomalies exactly, for both encodings of the same stream: JSON lines (with
malformed lines in the middle) and compact batches decoded by the `iiot-batch` format (one
batch per arrival instant, so out-of-order and late readings arrive in later batches; poison
batches in the middle, which go to the dead letters and leave the anomalies as they are).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from iiot.anomaly import Anomaly, decode_anomaly
from iiot.wire import HEADER_SIZE, is_batch, read_header
from kda_sql.flink_env import FlinkRun, run_rules
from tests.poison import Poison

from .scenarios import T0_MS, base64_lines, batch_poisons, build, sample_stddev

pytestmark = pytest.mark.slow


@dataclass
class RulesRun:
    encoding: str
    run: FlinkRun
    poisons: list[Poison]  # in the input, between the good batches


@pytest.fixture(scope="module", params=["json", "batches"])
def rules_run(request, flink_python: Path, tmp_path_factory) -> RulesRun:
    work = tmp_path_factory.mktemp(f"rules-{request.param}")
    streams = build()
    if request.param == "json":
        source = work / "readings.jsonl"
        source.write_bytes(b"\n".join(streams.lines()) + b"\n")
        return RulesRun(request.param, run_rules(source, work / "anomalies"), [])
    jar = request.getfixturevalue("decoder_jar")
    poisons = batch_poisons()  # random batch ids: the same list goes in and is checked
    source = work / "batches.b64"
    source.write_bytes(base64_lines(streams.batches([p.payload for p in poisons])))
    run = run_rules(source, work / "anomalies", batches=True, jar=jar)
    return RulesRun(request.param, run, poisons)


@pytest.fixture(scope="module")
def anomalies_by_machine(rules_run: RulesRun) -> dict[str, list[Anomaly]]:
    by_machine: dict[str, list[Anomaly]] = defaultdict(list)
    for line in rules_run.run.output_lines:
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
    assert catalog["temperature"].stream_debounce == catalog["temperature"].edge.debounce == 3
    # runs of 3 readings: the lowest of the run decides (exclusive limits)
    assert severity_view(anomalies_by_machine["M-TEMP"]) == [
        (40_000, "temperature", "TEMPERATURE_HIGH", "WARNING", 121.0, 100.0),
        (50_000, "temperature", "TEMPERATURE_HIGH", "WARNING", 122.0, 100.0),
        (60_000, "temperature", "TEMPERATURE_HIGH", "CRITICAL", 125.0, 120.0),
    ]
    assert rapid_view(anomalies_by_machine["M-TEMP"]) == []


def test_vibration_severity_levels(anomalies_by_machine):
    assert severity_view(anomalies_by_machine["M-VIB"]) == [
        (30_000, "vibration", "VIBRATION_HIGH", "WARNING", 80.1, 60.0),
        (40_000, "vibration", "VIBRATION_HIGH", "WARNING", 80.5, 60.0),
        (50_000, "vibration", "VIBRATION_HIGH", "CRITICAL", 81.0, 80.0),
    ]


def test_a_single_spike_or_two_readings_above_the_limit_raise_nothing(anomalies_by_machine):
    # one reading of 150 and two of 110 on a steady 95: the debounce needs 3 in a row
    assert anomalies_by_machine.get("M-SPIKE", []) == []


def test_severity_runs_are_per_factory_machine_and_metric(anomalies_by_machine):
    assert anomalies_by_machine.get("M-KEY-A", []) == []
    assert anomalies_by_machine.get("M-KEY-B", []) == []


def test_severity_runs_follow_event_time_not_arrival(anomalies_by_machine):
    assert severity_view(anomalies_by_machine["M-SEV-OOO"]) == [
        (25_000, "temperature", "TEMPERATURE_HIGH", "WARNING", 110.0, 100.0)
    ]


def test_stream_anomalies_carry_the_shared_message_fields(anomalies_by_machine):
    critical = next(a for a in anomalies_by_machine["M-VIB"] if a.severity == "CRITICAL")
    assert critical.source == "stream"
    assert critical.state == "RAISED"
    assert critical.factory_id == "F1"
    assert critical.sensor_id == "M-VIB-vibration"
    assert critical.message == "vibration above the critical threshold for 3 readings"


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


def test_late_readings_miss_their_windows_and_their_severity_run(anomalies_by_machine):
    # three readings of 200 behind the watermark: dropped by the HOP windows and by the
    # severity rule's OVER window alike (the lake's late evaluation re-evaluates a backlog)
    assert anomalies_by_machine.get("M-LATE", []) == []


def test_no_anomaly_for_unexpected_machines(anomalies_by_machine):
    assert set(anomalies_by_machine) == {"M-TEMP", "M-VIB", "M-RAPID", "M-OOO", "M-SEV-OOO"}


def test_poison_batches_are_dead_lettered_with_their_reason(rules_run: RulesRun):
    letters = [json.loads(line) for line in rules_run.run.dead_letter_lines]
    if rules_run.encoding == "json":
        assert letters == []  # a JSON reading is never a batch: malformed lines are skipped
        return
    poisons = rules_run.poisons
    assert len(poisons) >= 14  # every batch poison of tests/poison.py, shadows, not a batch
    assert len(letters) == len(poisons)  # one row per refused record, nothing else
    by_digest = {letter["payload_sha256"]: letter for letter in letters}
    for poison in poisons:
        letter = by_digest[hashlib.sha256(poison.payload).hexdigest()]
        assert poison.reason in letter["reason"], poison.name
        assert letter["payload_bytes"] == len(poison.payload)
        assert base64.b64decode(letter["payload"]) == poison.payload[: 64 * 1024]
        assert letter["source"] == "stream-rules"
        if is_batch(poison.payload) and len(poison.payload) >= HEADER_SIZE:
            assert letter["batch_id"] == str(read_header(poison.payload).batch_id)
