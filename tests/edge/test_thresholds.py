"""Threshold checks: debounce, hysteresis, no flapping, vectorized path equals the walk."""

from __future__ import annotations

import numpy as np
from sensor_buffer.thresholds import ThresholdChecker

from iiot.catalog import EdgeThresholds, MetricCatalog
from iiot.contract import SeriesKey

TEMP = SeriesKey("F1", "M1", "M1-temp", "temperature", "degC")
VIB = SeriesKey("F1", "M1", "M1-vib", "vibration", "mm/s")


def checker(catalog: MetricCatalog, series=(TEMP, VIB)) -> ThresholdChecker:
    return ThresholdChecker({n: m.edge for n, m in catalog.items()}, list(series).__getitem__)


def feed(check: ThresholdChecker, values, sid: int = 0, chunk: int = 1):
    anomalies = []
    values = np.asarray(values, dtype=np.float64)
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        anomalies += check.check(
            np.full(len(part), sid, np.int32),
            1_700_000_000_000 + np.arange(start, start + len(part), dtype=np.int64),
            part,
        )
    return [(a.anomaly_type, a.state, a.value) for a in anomalies]


def test_value_hovering_at_the_limit_raises_once_and_never_flaps(catalog: MetricCatalog) -> None:
    # temperature: max 100, hysteresis 2, debounce 3
    hovering = [99.9, 100.1, 99.8, 100.2, 100.05, 100.3, 99.5, 100.4, 98.5, 100.2, 99.0] * 5
    assert feed(checker(catalog), hovering) == [("THRESHOLD_HIGH", "RAISED", 100.3)]


def test_raise_after_debounce_and_clear_after_hysteresis(catalog: MetricCatalog) -> None:
    values = [95, 101, 102, 103, 104, 99, 98.5, 97.9, 96, 101, 102]
    assert feed(checker(catalog), values) == [
        ("THRESHOLD_HIGH", "RAISED", 103.0),
        ("THRESHOLD_HIGH", "CLEARED", 97.9),
    ]


def test_low_limit_and_interrupted_runs(catalog: MetricCatalog) -> None:
    # temperature min 20: two below, one inside (run resets), then three below
    values = [19, 18, 25, 19, 18, 17, 21, 22.5]
    assert feed(checker(catalog), values) == [
        ("THRESHOLD_LOW", "RAISED", 17.0),
        ("THRESHOLD_LOW", "CLEARED", 22.5),
    ]


def test_state_carries_across_micro_batches(catalog: MetricCatalog) -> None:
    values = [95, 101, 102, 103, 104, 99, 98.5, 97.9, 96, 101, 102]
    whole = feed(checker(catalog), values, chunk=len(values))
    for chunk in (1, 2, 3, 4):
        assert feed(checker(catalog), values, chunk=chunk) == whole


def test_series_are_independent_and_metric_without_min_has_no_low_alarm(
    catalog: MetricCatalog,
) -> None:
    check = checker(catalog)
    sid = np.array([0, 1, 0, 1, 0, 1], np.int32)
    value = np.array([150.0, 0.0, 150.0, 0.0, 150.0, 0.0])
    ts = 1_700_000_000_000 + np.arange(6, dtype=np.int64)
    anomalies = check.check(sid, ts, value)
    assert [(a.sensor_id, a.anomaly_type) for a in anomalies] == [("M1-temp", "THRESHOLD_HIGH")]
    assert anomalies[0].source == "edge"
    assert anomalies[0].threshold == 100.0


def test_quiet_batches_take_the_vectorized_path(catalog: MetricCatalog) -> None:
    check = checker(catalog)
    rng = np.random.default_rng(0)
    value = rng.uniform(30, 90, 100_000)
    sid = np.zeros(100_000, np.int32)
    ts = np.arange(100_000, dtype=np.int64)
    assert check.check(sid, ts, value) == []
    assert check.run.tolist() == [0]


def test_configured_thresholds_override_the_catalog(catalog: MetricCatalog) -> None:
    check = ThresholdChecker(
        {"temperature": EdgeThresholds(max=50.0, hysteresis=1.0, debounce=1)}, [TEMP].__getitem__
    )
    assert feed(check, [49, 51, 49.5, 48.9]) == [
        ("THRESHOLD_HIGH", "RAISED", 51.0),
        ("THRESHOLD_HIGH", "CLEARED", 48.9),
    ]
