"""The rules' feed hands the Flink job compact batches: time-ordered, gateway-sized, and an
end-of-stream batch that moves the watermark past every window before its sentinel."""

from __future__ import annotations

import base64
from itertools import pairwise

import numpy as np

from iiot.catalog import load_catalog
from iiot.contract import ReadingColumns, SeriesKey
from iiot.wire import decode_batch
from local_platform.connected.stream import (
    BATCH_READINGS,
    END_OF_STREAM_MS,
    FLINK_DELAY_MS,
    SENTINEL,
    batch_lines,
    end_of_stream_batch,
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


def test_the_end_of_stream_batch_holds_the_far_row_then_the_sentinel_run():
    columns = decode_batch(end_of_stream_batch()).columns
    rows = sorted(
        zip(
            columns.timestamp.tolist(),
            columns.column("factory_id"),
            columns.column("metric"),
            strict=True,
        )
    )
    run = load_catalog()["temperature"].stream_debounce
    assert run == 3
    assert rows == [
        (END_OF_STREAM_MS, "END", "end_of_stream"),  # not a metric: the rules' view drops it
        # 200 degC for as many readings as the severity rule's debounce: one anomaly
        *((END_OF_STREAM_MS + 1 + i, SENTINEL, "temperature") for i in range(run)),
        # moves the watermark past the sentinel's run, so the rule emits it
        (END_OF_STREAM_MS + run + FLINK_DELAY_MS + 1_000, "END", "end_of_stream"),
    ]
    values = dict(zip(columns.timestamp.tolist(), columns.value.tolist(), strict=True))
    assert [values[END_OF_STREAM_MS + 1 + i] for i in range(run)] == [200.0] * run
