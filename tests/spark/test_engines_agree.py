"""The same transforms give the same result on Sail and on classic PySpark (the JVM engine that
production's Apache Spark on EMR Serverless runs), on a simulated run with malformed payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from chispa import assert_approx_df_equality

from local_platform.steps.lake import columns_from_arrow
from spark_jobs import transforms
from spark_jobs.engine import use_connect
from spark_jobs.payloads import split_payloads
from tests.poison import (
    HOUR_MS,
    good_batch,
    good_json,
    good_readings,
    known_poisons,
    shadow_copies,
)

INGESTED_MS = 1_800_000_000_000
BRONZE_SCHEMA = (
    "batch_id string, source_format string, source_path string, payload binary, "
    "ingest_seq long, ingested_ms long, reject_reason string"
)


@pytest.fixture(scope="module")
def bronze_rows(simulation: Path) -> list[tuple[Any, ...]]:
    """A few raw batches: JSON lines (with malformed lines) and compact batches of the same run,
    and a file of each kind with poisons (damaged batches, bad lines, bad ids, wild times)."""
    import uuid

    from iiot.wire import encode_batch

    lines = (simulation / "readings.jsonl").read_bytes()
    files = [("landing/json/a.jsonl", lines[:400_000])]
    columns = columns_from_arrow(pq.read_table(simulation / "readings.parquet"))
    for i in range(3):
        part = columns.take(slice(i * 3000, (i + 1) * 3000))
        files.append((f"landing/batch/{i}.iiotb", encode_batch(part, batch_id=uuid.UUID(int=i))))
    files.extend(poisoned_files())
    rows = []
    for path, content in files:
        for item in split_payloads(content):
            meta = (item.batch_id, item.source_format, path, item.payload, 1, INGESTED_MS)
            rows.append((*meta, item.reject_reason))
    return rows


def poisoned_files() -> list[tuple[str, bytes]]:
    poisons = [p for p in known_poisons(INGESTED_MS) if not p.bomb]
    good = good_batch(good_readings(40, start_ms=INGESTED_MS - HOUR_MS, sensor=7))
    shadows = b"".join(s.payload for s in shadow_copies(good))
    batches = b"".join(p.payload for p in poisons if p.payload.startswith(b"IIOTB"))
    reading = good_readings(1, start_ms=INGESTED_MS - HOUR_MS, sensor=8)[0]
    odd = [
        {**reading, "factory_id": "F/01"},
        {**reading, "machine_id": "M1\n", "timestamp": reading["timestamp"] + 1},
        {**reading, "timestamp": 9_000_000_000_000_000_000},
        {**reading, "timestamp": 2**53},
    ]
    texts = [p.payload for p in poisons if not p.payload.startswith(b"IIOTB") and p.payload]
    texts += [json.dumps(odd).encode(), good_json([reading]).replace(b'"F01"', b'"F\\ud800"')]
    return [
        ("landing/batch/poisoned.iiotb", shadows + good + batches),
        ("landing/json/poisoned.jsonl", b"\n".join(texts) + b"\n"),
    ]


def pipeline(spark: Any, rows: list[tuple[Any, ...]], catalog: Any) -> tuple[Any, Any, Any, Any]:
    bronze = spark.createDataFrame(rows, BRONZE_SCHEMA)
    checked = transforms.quality_check(
        transforms.decode_payloads(bronze),
        transforms.quality_rules(catalog),
        max_future_ms=300_000,
    )
    silver = transforms.silver_rows(
        transforms.rolling_features(
            transforms.with_time_dimensions(
                transforms.dedupe_readings(transforms.accepted_readings(checked))
            ),
            last_n=20,
            time_window_ms=300_000,
            sigma=3.0,
            min_periods=5,
        )
    )
    quarantine = transforms.quarantine_records(checked).drop("ingested_at")
    machine = transforms.machine_daily(silver)
    return silver, quarantine, machine, transforms.factory_daily(machine)


def test_sail_and_classic_spark_agree(
    sail: Any, classic: Any, bronze_rows: list[tuple[Any, ...]], catalog: Any
) -> None:
    use_connect(False)
    try:
        on_classic = [
            (frame.schema, frame.collect()) for frame in pipeline(classic, bronze_rows, catalog)
        ]
    finally:
        use_connect(True)
    on_sail = pipeline(sail, bronze_rows, catalog)
    for (schema, rows), frame in zip(on_classic, on_sail, strict=True):
        assert frame.count() == len(rows) > 0
        expected = sail.createDataFrame(rows, schema)
        assert_approx_df_equality(
            frame,
            expected,
            precision=1e-9,
            ignore_row_order=True,
            ignore_nullable=True,
            ignore_column_order=True,
        )
