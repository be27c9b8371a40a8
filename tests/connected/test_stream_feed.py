"""The rules' feed hands the Flink job compact batches: time-ordered, gateway-sized, and an
end-of-stream batch that moves the watermark past every window, then past a sentinel for every
rule."""

from __future__ import annotations

import base64
from itertools import pairwise
from pathlib import Path

import numpy as np

from iiot.anomaly import Anomaly, encode_anomaly
from iiot.catalog import load_catalog
from iiot.contract import ReadingColumns, SeriesKey
from iiot.wire import decode_batch
from local_platform.connected.stream import (
    BATCH_READINGS,
    END_OF_STREAM_MS,
    FLINK_DELAY_MS,
    SENTINEL,
    SENTINEL_CHANGES,
    SENTINEL_RAPID,
    batch_lines,
    end_of_stream_batch,
    holds_sentinel,
    sentinel_anomalies,
    sorted_batches,
)


def test_released_readings_become_time_ordered_batches_of_gateway_size():
    rng = np.random.default_rng(5)
    n = 2 * BATCH_READINGS + 123
    series = [
        SeriesKey(f"F0{i % 2 + 1}", f"M{i}", f"M{i}-t", "temperature", "degC") for i in range(7)
    ]
    columns = ReadingColumns(
        series,
        rng.integers(0, len(series), n).astype(np.int32),
        1_767_571_200_000 + rng.permutation(n).astype(np.int64) * 10,  # shuffled, distinct
        np.round(rng.normal(60, 5, n), 2),
    )
    batches = sorted_batches(columns)
    assert [len(decode_batch(b).columns) for b in batches] == [BATCH_READINGS] * 2 + [123]
    decoded = [decode_batch(b).columns for b in batches]
    times = [np.sort(c.timestamp) for c in decoded]
    # each batch holds the next run of event time: in order across batches
    assert all(a[-1] < b[0] for a, b in pairwise(times))
    merged = ReadingColumns.concat(decoded)
    got = sorted(
        zip(
            merged.timestamp.tolist(),
            merged.column("machine_id"),
            merged.value.tolist(),
            strict=True,
        )
    )
    want = sorted(
        zip(
            columns.timestamp.tolist(),
            columns.column("machine_id"),
            columns.value.tolist(),
            strict=True,
        )
    )
    assert got == want
    lines = batch_lines(batches).splitlines()
    assert [base64.b64decode(line) for line in lines] == batches


def test_the_end_of_stream_batch_holds_the_far_row_then_a_sentinel_for_every_rule():
    catalog = load_catalog().measured
    columns = decode_batch(end_of_stream_batch()).columns
    rows = sorted(
        zip(
            columns.timestamp.tolist(),
            columns.column("factory_id"),
            columns.column("machine_id"),
            columns.column("metric"),
            columns.value.tolist(),
            strict=True,
        )
    )
    # first a row the rules' view drops (not a metric) that closes every window of the run
    assert rows[0] == (END_OF_STREAM_MS, "END", "END", "end_of_stream", 0.0)
    sentinels = rows[1:-1]
    assert {row[1] for row in sentinels} == {SENTINEL}
    # a run of each severity metric's valid maximum, above its critical level, as long as its
    # debounce: one <METRIC>_HIGH per metric
    severity = [row for row in sentinels if row[2] == SENTINEL]
    for name, metric in catalog.items():
        run = [row[4] for row in severity if row[3] == name]
        if metric.stream is None:
            assert not run
            continue
        assert run == [metric.valid_range.max] * (metric.stream_debounce or 1)
        assert metric.valid_range.max > metric.stream.critical
    # per rapid-change metric, readings alternating between its valid limits: the window's
    # standard deviation without its farthest reading (the rule's second test) is above the
    # catalog's limit (the calibrated rules fall back to it for series they did not learn)
    rapid = [row for row in sentinels if row[2] == SENTINEL_RAPID]
    for name, metric in catalog.items():
        values = np.array([row[4] for row in rapid if row[3] == name])
        if metric.rapid_change is None:
            assert not len(values)
            continue
        assert len(values) == SENTINEL_CHANGES
        farthest = values[np.argmax(np.abs(values - values.mean()))]
        trimmed = np.delete(values, np.flatnonzero(values == farthest)[0])
        assert trimmed.std(ddof=1) > metric.rapid_change.stddev_limit
        span = rows[-1][0] - max(row[0] for row in rapid if row[3] == name)
        assert span > metric.rapid_change.window_seconds * 1_000 + FLINK_DELAY_MS
    # last a second dropped row that moves the watermark past every sentinel's window and run
    assert rows[-1][1:] == ("END", "END", "end_of_stream", 0.0)
    assert rows[-1][0] > max(row[0] for row in severity) + FLINK_DELAY_MS
    assert sentinel_anomalies() == {
        *((name, f"{name.upper()}_HIGH") for name, m in catalog.items() if m.stream),
        *((name, "RAPID_CHANGE") for name, m in catalog.items() if m.rapid_change),
    }
    assert ("temperature", "TEMPERATURE_HIGH") in sentinel_anomalies()


def _anomaly_line(metric: str, anomaly_type: str, factory: str = SENTINEL) -> bytes:
    anomaly = Anomaly(
        factory_id=factory,
        machine_id=SENTINEL,
        metric=metric,
        anomaly_type=anomaly_type,
        severity="WARNING",
        value=1.0,
        threshold=0.5,
        timestamp=END_OF_STREAM_MS,
        source="stream",
    )
    return encode_anomaly(anomaly) + b"\n"


def test_the_output_ends_only_once_every_rules_sentinel_is_committed(tmp_path: Path):
    """Each rule's INSERT is its own sink, committed by its own task: the severity rule's
    sentinel in a committed file says nothing of the window rule's last output (a loaded CI run
    read the output then and missed the last 40 RAPID_CHANGE windows)."""
    expected = sorted(sentinel_anomalies())
    severity = [key for key in expected if key[1] != "RAPID_CHANGE"]
    rapid = [key for key in expected if key[1] == "RAPID_CHANGE"]
    assert severity
    assert rapid
    (tmp_path / "part-a-0-0").write_bytes(b"".join(_anomaly_line(*key) for key in severity))
    (tmp_path / "part-b-0-0").write_bytes(_anomaly_line("rpm", "RAPID_CHANGE", factory="F01"))
    assert not holds_sentinel(tmp_path)
    # written but not committed yet (the sink's in-progress files are hidden)
    (tmp_path / ".part-b-0-1.inprogress").write_bytes(
        b"".join(_anomaly_line(*key) for key in rapid)
    )
    assert not holds_sentinel(tmp_path)
    (tmp_path / ".part-b-0-1.inprogress").rename(tmp_path / "part-b-0-1")
    assert holds_sentinel(tmp_path)
