"""The pure transforms, on Sail and on classic PySpark (each test runs on both engines)."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest
from chispa import assert_df_equality

from spark_jobs import transforms

DAY = 86_400_000
HOUR = 3_600_000
MONDAY = 1_767_571_200_000  # 2026-01-05T00:00:00Z
SATURDAY = MONDAY + 5 * DAY
INGESTED = MONDAY + 30 * DAY

DECODED_ROW = (
    "b1",
    "json",
    "landing/x.jsonl",
    1,
    INGESTED,
    0,
    0,
)  # batch_id, source_format, source_path, ingest_seq, ingested_ms, position, item


def decoded(spark: Any, rows: list[tuple[Any, ...]]) -> Any:
    """Decoded readings: (timestamp, machine_id, metric, unit, value, position) per row."""
    full = [
        (
            *DECODED_ROW[:5],
            position,
            0,
            ts,
            "F01",
            machine,
            f"{machine}-{metric}",
            metric,
            unit,
            value,
            None,
            None,
        )
        for ts, machine, metric, unit, value, position in rows
    ]
    return spark.createDataFrame(full, transforms.DECODED_COLUMNS)


def test_shifts_do_not_overlap_and_time_is_utc(spark: Any) -> None:
    hours = [0, 5, 6, 13, 14, 21, 22, 23]
    rows = [
        (MONDAY + h * HOUR + 59 * 60_000, "M1", "rpm", "rpm", 1.0, i) for i, h in enumerate(hours)
    ]
    rows.append((SATURDAY + 6 * HOUR, "M1", "rpm", "rpm", 1.0, 99))
    out = transforms.with_time_dimensions(decoded(spark, rows)).select(
        "position", "event_date", "hour", "is_weekend", "shift"
    )
    expected = spark.createDataFrame(
        [
            (0, date(2026, 1, 5), 0, False, "night"),
            (1, date(2026, 1, 5), 5, False, "night"),
            (2, date(2026, 1, 5), 6, False, "early"),
            (3, date(2026, 1, 5), 13, False, "early"),
            (4, date(2026, 1, 5), 14, False, "late"),
            (5, date(2026, 1, 5), 21, False, "late"),
            (6, date(2026, 1, 5), 22, False, "night"),
            (7, date(2026, 1, 5), 23, False, "night"),
            (99, date(2026, 1, 10), 6, True, "early"),
        ],
        "position int, event_date date, hour int, is_weekend boolean, shift string",
    )
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def test_quality_check_names_every_problem(spark: Any, catalog: Any) -> None:
    rules = transforms.quality_rules(catalog)
    rows = [
        (MONDAY, "M1", "temperature", "degC", 50.0, 0),  # fine
        (MONDAY, "M1", "temperature", "degC", -999.0, 1),  # fault code
        (MONDAY, "M1", "humidity_x", "%", 1.0, 2),
        (MONDAY, "M1", "temperature", "degF", 50.0, 3),
        (MONDAY, "M1", "temperature", "degC", float("nan"), 4),
        (MONDAY // 1000, "M1", "temperature", "degC", 50.0, 5),  # seconds
        (INGESTED + 10 * 60_000, "M1", "temperature", "degC", 50.0, 6),  # 10 min ahead
        (INGESTED + 60_000, "M1", "temperature", "degC", 50.0, 7),  # within the skew
    ]
    checked = transforms.quality_check(decoded(spark, rows), rules, max_future_ms=5 * 60_000)
    reasons = {r["position"]: r["reject_reason"] for r in checked.collect()}
    assert reasons[0] is None
    assert reasons[7] is None
    assert reasons[1].startswith("value: -999.0 degC is outside the physically valid range")
    assert reasons[2].startswith("metric: unknown metric 'humidity_x'")
    assert reasons[3] == "unit: 'degF' does not match the catalog's unit 'degC' for temperature"
    assert reasons[4] == "value: not a finite number (NaN or Infinity)"
    assert reasons[5].startswith(f"timestamp: {MONDAY // 1000} is before 2000-01-01")
    assert reasons[6].startswith("timestamp:")
    assert "future" in reasons[6]
    quarantine = transforms.quarantine_records(checked).select("position", "reason_field")
    expected = spark.createDataFrame(
        [
            (1, "value"),
            (2, "metric"),
            (3, "unit"),
            (4, "value"),
            (5, "timestamp"),
            (6, "timestamp"),
        ],
        "position int, reason_field string",
    )
    assert_df_equality(quarantine, expected, ignore_row_order=True, ignore_nullable=True)


def test_rolling_frame_covers_the_last_n_readings_and_flags_spikes(spark: Any) -> None:
    values = [10.0, 11.0, 10.0, 11.0, 10.0, 11.0, 50.0, 10.0]
    rows = [(MONDAY + i * 10_000, "M1", "rpm", "rpm", v, i) for i, v in enumerate(values)]
    rows.append((MONDAY, "M2", "rpm", "rpm", 99.0, 100))  # another machine: its own series
    out = transforms.rolling_features(
        decoded(spark, rows), last_n=3, time_window_ms=25_000, sigma=3.0, min_periods=3
    ).collect()
    by_position = {r["position"]: r for r in out}
    for i in range(len(values)):
        frame = values[max(0, i - 2) : i + 1]
        row = by_position[i]
        assert row["rolling_count"] == len(frame)
        assert row["rolling_mean"] == pytest.approx(sum(frame) / len(frame))
        recent = values[max(0, i - 2) : i + 1]  # 25 s window: this and the two before
        assert row["window_max"] == max(recent)
    assert by_position[1]["rolling_std"] == pytest.approx(math.sqrt(0.5))
    assert [i for i, r in sorted(by_position.items()) if r["is_anomaly"]] == [6]
    assert by_position[100]["rolling_count"] == 1
    assert not by_position[100]["is_anomaly"]


def test_a_derived_series_gets_statistics_but_no_flag_and_is_no_sensor(spark: Any) -> None:
    """The predictor's failure_probability is stored like a reading: its jump is a change of
    risk, not a sensor outlier, and the factories' sensor and reading counts leave it out."""
    from iiot.catalog import load_catalog

    rules = transforms.quality_rules(load_catalog())
    derived = transforms.derived_metrics(rules)
    assert derived == {"failure_probability"}
    assert "rpm" not in derived
    values = [0.1, 0.11, 0.1, 0.11, 0.1, 0.11, 0.9, 0.1]
    rows = [
        (MONDAY + i * 10_000, "M1", metric, "u", v * scale, i + offset)
        for metric, scale, offset in (("failure_probability", 1.0, 0), ("rpm", 100.0, 100))
        for i, v in enumerate(values)
    ]
    silver = transforms.rolling_features(
        transforms.with_time_dimensions(decoded(spark, rows)),
        last_n=3,
        time_window_ms=25_000,
        sigma=3.0,
        min_periods=3,
        unflagged=derived,
    )
    flagged = {r["position"]: r for r in silver.collect() if r["is_anomaly"]}
    assert sorted(flagged) == [106]  # the same jump: flagged on the sensor only
    unflagged_jump = silver.filter("position = 6").collect()[0]
    assert abs(unflagged_jump["zscore"]) > 3  # its statistics are still there
    out = transforms.factory_daily(transforms.machine_daily(silver), derived).collect()
    assert [(r["active_sensors"], r["reading_count"], r["anomaly_count"]) for r in out] == [
        (1, len(values), 1)
    ]


def test_duplicates_keep_the_first_ingested_copy(spark: Any) -> None:
    rows = [(MONDAY, "M1", "rpm", "rpm", 1.0, 0), (MONDAY, "M1", "rpm", "rpm", 2.0, 1)]
    out = transforms.dedupe_readings(decoded(spark, rows)).select("position", "value")
    expected = spark.createDataFrame([(0, 1.0)], "position int, value double")
    assert_df_equality(out, expected, ignore_nullable=True)


def test_factory_daily_counts_distinct_active_machines(spark: Any) -> None:
    rows = [
        (MONDAY + i * 1000, machine, metric, "u", 1.0, i)
        for i, (machine, metric) in enumerate(
            [("M1", "rpm"), ("M1", "rpm"), ("M1", "vibration"), ("M2", "rpm")]
        )
    ]
    silver = transforms.rolling_features(
        transforms.with_time_dimensions(decoded(spark, rows)),
        last_n=3,
        time_window_ms=1000,
        sigma=3.0,
        min_periods=2,
    )
    out = transforms.factory_daily(transforms.machine_daily(silver)).select(
        "event_date", "factory_id", "active_machines", "active_sensors", "reading_count"
    )
    expected = spark.createDataFrame(
        [(date(2026, 1, 5), "F01", 2, 3, 4)],
        "event_date date, factory_id string, active_machines long, active_sensors long, "
        "reading_count long",
    )
    assert_df_equality(out, expected, ignore_nullable=True)


def test_split_landed_files_keeps_batch_ids_and_chunks_json(spark: Any) -> None:
    import uuid

    import numpy as np

    from iiot.contract import ReadingColumns, SeriesKey
    from iiot.wire import encode_batch

    columns = ReadingColumns(
        [SeriesKey("F01", "M1", "M1-rpm", "rpm", "rpm")],
        np.zeros(3, np.int32),
        np.array([MONDAY, MONDAY + 1000, MONDAY + 2000], np.int64),
        np.array([1.0, 2.0, 3.0]),
    )
    first = encode_batch(columns, batch_id=uuid.UUID(int=1))
    second = encode_batch(columns, batch_id=uuid.UUID(int=2))
    truncated = second[:-5]  # a damaged batch never takes the next one along
    files = spark.createDataFrame(
        [("a.iiotb", first + truncated + second), ("b.jsonl", b'{"a": 1}\n\n{"b": 2}\n')],
        "path string, content binary",
    )
    out = transforms.split_landed_files(files).collect()
    pieces = sorted((r["source_path"], r["source_offset"]) for r in out)
    assert pieces == [
        ("a.iiotb", 0),
        ("a.iiotb", len(first)),
        ("a.iiotb", 2 * len(first) - 5),
        ("b.jsonl", 0),
    ]
    by_offset = {(r["source_path"], r["source_offset"]): r for r in out}
    assert by_offset["a.iiotb", 0]["batch_id"] == uuid.UUID(int=1).hex
    assert by_offset["a.iiotb", 2 * len(first) - 5]["batch_id"] == uuid.UUID(int=2).hex
    damaged = by_offset["a.iiotb", len(first)]
    assert damaged["batch_id"].startswith("damaged-")
    assert "(truncated or padded)" in damaged["reject_reason"]
    assert damaged["payload"] == truncated
    chunk = by_offset["b.jsonl", 0]
    assert chunk["source_format"] == "json"
    assert chunk["batch_id"] == "json-" + chunk["content_digest"][:32]
    assert chunk["payload"] == b'{"a": 1}\n{"b": 2}'


def test_a_verified_batch_id_names_one_content(spark: Any) -> None:
    """The first content under a verified id owns it (bronze's, else the earliest landed copy
    by path and offset); another content under it is refused with the reason. Payloads that
    failed their checks and JSON chunks claim no id."""
    known = spark.createDataFrame(
        [
            ("x", "d-x1", "batch", "file:///l/0", None),
            ("damaged-1", "d-bad", "batch", "file:///l/0", "body: CRC-32 mismatch"),
        ],
        "batch_id string, content_digest string, source_format string, source_path string, "
        "reject_reason string",
    )
    verified = spark.createDataFrame(
        [
            ("x", "d-x2", "batch", "file:///l/1", 0, None),
            ("y", "d-y2", "batch", "file:///l/1", 300, None),
            ("y", "d-y1", "batch", "file:///l/1", 20, None),
            ("damaged-2", "d-z", "batch", "file:///l/1", 40, "body: series counts add up"),
            ("json-1", "d-j", "json", "file:///l/j", 0, None),
        ],
        transforms.IDENTITY_SCHEMA,
    )
    out = {
        r["content_digest"]: (r["batch_id"], r["reject_reason"])
        for r in transforms.resolve_batch_ids(verified, known).collect()
    }
    assert out["d-x2"][0] == "reused-" + "d-x2"
    assert out["d-x2"][1] == (
        "batch_id: x reused with different content (the first copy landed in file:///l/0); "
        "a batch id names one content"
    )
    assert out["d-y1"] == ("y", None)
    assert out["d-y2"][0] == "reused-d-y2"
    assert out["d-z"] == ("damaged-2", "body: series counts add up")
    assert out["d-j"] == ("json-1", None)
