"""Pure transforms of the lake: DataFrame in, DataFrame out, every parameter an argument.

Nothing here reads or writes a table or a file (that is `spark_jobs.io`), so each function runs
unchanged on Sail (the embedded local engine), on classic local PySpark (the tests compare the
two) and on Apache Spark with delta-spark on EMR Serverless.

Payload decoding uses the core's wire formats (`iiot.wire`) inside `mapInArrow`: the executors
need the `iiot` package (locally it is installed; on EMR it is in the application's image).
Time columns are computed with integer arithmetic on UTC epoch milliseconds, so that no engine's
session time zone can move a reading to another day, hour or shift.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F  # noqa: N812  (the PySpark convention)

from iiot.catalog import MetricCatalog
from iiot.contract import EARLIEST_TIMESTAMP_MS
from iiot.wire import BATCH_MAGIC, HEADER_SIZE

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
STD_FLOOR = 1e-6  # below any real deviation of readings at the catalog's resolutions
JSON_CHUNK_LINES = 5_000
_BODY_LENGTH = struct.Struct("<I")  # at offset 28 of the compact batch header

# ---------------------------------------------------------------------------------- schemas

LANDED_SCHEMA = "batch_id string, source_format string, source_path string, payload binary"

DECODED_COLUMNS = (
    "batch_id string, source_format string, source_path string, ingest_seq long, "
    "ingested_ms long, position int, item int, timestamp long, factory_id string, "
    "machine_id string, sensor_id string, metric string, unit string, value double, "
    "reject_reason string, raw string"
)

READING_KEY = ("sensor_id", "timestamp")
SERIES = ("machine_id", "metric")
PARTITION_COLUMNS = ("event_date", "factory_id")

SILVER_COLUMNS = (
    "factory_id",
    "machine_id",
    "sensor_id",
    "metric",
    "unit",
    "timestamp",
    "event_time",
    "value",
    "event_date",
    "hour",
    "is_weekend",
    "shift",
    "rolling_count",
    "rolling_mean",
    "rolling_std",
    "window_mean",
    "window_max",
    "zscore",
    "is_anomaly",
    "batch_id",
    "ingest_seq",
)
FEATURE_COLUMNS = (
    "rolling_count",
    "rolling_mean",
    "rolling_std",
    "window_mean",
    "window_max",
    "zscore",
    "is_anomaly",
)
QUARANTINE_COLUMNS = (
    "batch_id",
    "position",
    "item",
    "source_format",
    "source_path",
    "reason_field",
    "reason",
    "payload",
    "ingest_seq",
    "ingested_at",
    "ingest_date",
)


# ----------------------------------------------------------------------------------- bronze


def split_landed_files(files: DataFrame) -> DataFrame:
    """Landed files (`binaryFile` rows: path, content) -> one row per raw batch.

    A file that starts with the batch magic holds one or more compact batches back to back
    (Firehose concatenates records); each keeps the batch id from its header. Any other file is
    JSON lines, cut into chunks of `JSON_CHUNK_LINES` lines whose batch id is the SHA-256 of the
    chunk, so the same landed file always yields the same ids and is never ingested twice.
    """
    return files.select(
        F.col("path").alias("source_path"), F.col("content").alias("payload")
    ).mapInArrow(_split_landed_arrow, LANDED_SCHEMA)


def _split_landed_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    import pyarrow as pa

    for batch in batches:
        ids: list[str] = []
        formats: list[str] = []
        paths: list[str] = []
        payloads: list[bytes] = []
        for path, content in zip(
            batch.column("source_path").to_pylist(),
            batch.column("payload").to_pylist(),
            strict=True,
        ):
            for batch_id, source_format, payload in split_payloads(content or b""):
                ids.append(batch_id)
                formats.append(source_format)
                paths.append(path)
                payloads.append(payload)
        yield pa.RecordBatch.from_pydict(
            {"batch_id": ids, "source_format": formats, "source_path": paths, "payload": payloads},
            schema=pa.schema(
                [
                    ("batch_id", pa.string()),
                    ("source_format", pa.string()),
                    ("source_path", pa.string()),
                    ("payload", pa.binary()),
                ]
            ),
        )


def split_payloads(content: bytes) -> list[tuple[str, str, bytes]]:
    """(batch_id, format, payload) for each raw batch in one landed file's bytes."""
    if content[: len(BATCH_MAGIC)] == BATCH_MAGIC:
        out = []
        offset = 0
        while offset < len(content):
            rest = content[offset:]
            if len(rest) >= HEADER_SIZE and rest[: len(BATCH_MAGIC)] == BATCH_MAGIC:
                size = HEADER_SIZE + _BODY_LENGTH.unpack_from(rest, 28)[0]
                payload = rest[:size]
                batch_id = rest[8:24].hex()
            else:  # not a batch: keep the bytes whole, silver quarantines them with the reason
                payload = rest
                batch_id = "raw-" + hashlib.sha256(rest).hexdigest()[:32]
            out.append((batch_id, "batch", payload))
            offset += len(payload)
        return out
    lines = [line for line in content.split(b"\n") if line.strip()]
    chunks = []
    for start in range(0, len(lines), JSON_CHUNK_LINES):
        chunk = b"\n".join(lines[start : start + JSON_CHUNK_LINES])
        chunks.append(("json-" + hashlib.sha256(chunk).hexdigest()[:32], "json", chunk))
    return chunks


def new_batches(landed: DataFrame, known_batch_ids: DataFrame) -> DataFrame:
    """Raw batches whose id is not among `known_batch_ids` (one row per id)."""
    return landed.dropDuplicates(["batch_id"]).join(known_batch_ids, "batch_id", "left_anti")


def with_ingest_metadata(batches: DataFrame, ingest_seq: int, ingested_ms: int) -> DataFrame:
    """Bronze rows: the raw batch plus the run's sequence number and ingestion time."""
    return batches.select(
        "batch_id",
        "source_format",
        "source_path",
        "payload",
        F.length("payload").cast("long").alias("payload_bytes"),
        F.lit(ingest_seq).cast("long").alias("ingest_seq"),
        F.lit(ingested_ms).cast("long").alias("ingested_ms"),
        F.timestamp_millis(F.lit(ingested_ms)).alias("ingested_at"),
        F.date_from_unix_date(F.lit(ingested_ms // DAY_MS).cast("int")).alias("ingest_date"),
    )


# ---------------------------------------------------------------------------- silver: decode


def decode_payloads(bronze: DataFrame) -> DataFrame:
    """Bronze rows -> one row per reading, or per structural reject with its reason.

    Readings come out with `reject_reason` null; a payload or item that cannot be decoded comes
    out with the reason and its raw text. The catalog's rules are applied afterwards, in Spark
    (`quality_check`), so that they are visible and testable as a DataFrame transform.
    """
    return bronze.select(
        "batch_id", "source_format", "source_path", "payload", "ingest_seq", "ingested_ms"
    ).mapInArrow(_decode_arrow, DECODED_COLUMNS)


def _decode_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        columns = batch.to_pydict()
        for i in range(batch.num_rows):
            table = decode_one_payload(
                columns["batch_id"][i],
                columns["source_format"][i],
                columns["source_path"][i],
                columns["payload"][i] or b"",
                columns["ingest_seq"][i],
                columns["ingested_ms"][i],
            )
            if table.num_rows:
                yield from table.to_batches()


def decode_one_payload(
    batch_id: str,
    source_format: str,
    source_path: str,
    payload: bytes,
    ingest_seq: int,
    ingested_ms: int,
) -> Any:
    """One bronze payload decoded into an Arrow table with the `DECODED_COLUMNS` schema."""
    import numpy as np
    import pyarrow as pa

    from iiot import wire
    from iiot.contract import ReadingColumns

    columns = ReadingColumns.empty()
    positions = np.zeros(0, dtype=np.int32)
    items = np.zeros(0, dtype=np.int32)
    raws: list[str | None] | None = None
    rejects: list[tuple[int, int, str, str]] = []  # position, item, reason, raw

    if source_format == "batch":
        try:
            columns = wire.decode_batch(payload).columns
        except wire.WireFormatError as exc:
            rejects.append((0, -1, str(exc), _text(payload[:4096])))
        positions = np.zeros(len(columns), dtype=np.int32)
        items = np.arange(len(columns), dtype=np.int32)
    else:
        readings = []
        line_positions: list[int] = []
        item_positions: list[int] = []
        raw_items: list[str | None] = []
        for line_no, line in enumerate(payload.split(b"\n")):
            decoded = wire.decode_json(line)
            readings.extend(decoded.readings)
            line_positions.extend([line_no] * len(decoded.readings))
            if decoded.positions:
                item_positions.extend(decoded.positions)
                raw_items.extend(_text(raw) for raw in decoded.raws)
            else:
                item_positions.extend(range(len(decoded.readings)))
                raw_items.extend([_text(line)] * len(decoded.readings))
            for reject in decoded.rejects:
                item = -1 if reject.index is None else reject.index
                rejects.append((line_no, item, reject.reason, _text(reject.payload)))
        columns = ReadingColumns.from_readings(readings)
        # from_readings keeps the readings' order, so positions stay aligned
        positions = np.asarray(line_positions, dtype=np.int32)
        items = np.asarray(item_positions, dtype=np.int32)
        raws = raw_items

    n = len(columns)
    series = columns.series

    def series_column(field: int) -> Any:
        values = pa.array([key[field] for key in series], pa.string())
        return values.take(pa.array(columns.series_index)) if n else pa.array([], pa.string())

    reading_part = pa.table(
        {
            "batch_id": pa.array([batch_id] * n, pa.string()),
            "source_format": pa.array([source_format] * n, pa.string()),
            "source_path": pa.array([source_path] * n, pa.string()),
            "ingest_seq": pa.array(np.full(n, ingest_seq, dtype=np.int64)),
            "ingested_ms": pa.array(np.full(n, ingested_ms, dtype=np.int64)),
            "position": pa.array(positions, pa.int32()),
            "item": pa.array(items, pa.int32()),
            "timestamp": pa.array(columns.timestamp, pa.int64()),
            "factory_id": series_column(0),
            "machine_id": series_column(1),
            "sensor_id": series_column(2),
            "metric": series_column(3),
            "unit": series_column(4),
            "value": pa.array(columns.value, pa.float64()),
            "reject_reason": pa.nulls(n, pa.string()),
            "raw": pa.array(raws if raws is not None else [None] * n, pa.string()),
        }
    )
    if not rejects:
        return reading_part
    m = len(rejects)
    reject_part = pa.table(
        {
            "batch_id": pa.array([batch_id] * m, pa.string()),
            "source_format": pa.array([source_format] * m, pa.string()),
            "source_path": pa.array([source_path] * m, pa.string()),
            "ingest_seq": pa.array([ingest_seq] * m, pa.int64()),
            "ingested_ms": pa.array([ingested_ms] * m, pa.int64()),
            "position": pa.array([r[0] for r in rejects], pa.int32()),
            "item": pa.array([r[1] for r in rejects], pa.int32()),
            "timestamp": pa.nulls(m, pa.int64()),
            "factory_id": pa.nulls(m, pa.string()),
            "machine_id": pa.nulls(m, pa.string()),
            "sensor_id": pa.nulls(m, pa.string()),
            "metric": pa.nulls(m, pa.string()),
            "unit": pa.nulls(m, pa.string()),
            "value": pa.nulls(m, pa.float64()),
            "reject_reason": pa.array([r[2] for r in rejects], pa.string()),
            "raw": pa.array([r[3] for r in rejects], pa.string()),
        }
    )
    return pa.concat_tables([reading_part, reject_part])


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------- silver: quality


@dataclass(frozen=True)
class QualityRule:
    """What a reading of one metric must satisfy: its unit and the physically valid range."""

    unit: str
    min: float
    max: float


def quality_rules(catalog: MetricCatalog) -> dict[str, QualityRule]:
    """The catalog's units and valid ranges, as plain parameters for `quality_check`."""
    return {
        name: QualityRule(metric.unit, metric.valid_range.min, metric.valid_range.max)
        for name, metric in catalog.items()
    }


def quality_check(
    decoded: DataFrame, rules: Mapping[str, QualityRule], *, max_future_ms: int
) -> DataFrame:
    """Fill `reject_reason` for readings that break the catalog's rules (first problem wins).

    The checks and their messages are the contract's (`iiot.contract.Validator`): known metric,
    the catalog's unit, a finite value inside the valid range, a timestamp in milliseconds after
    2000 and at most `max_future_ms` after the batch was ingested (a deterministic clock, so a
    re-run judges a reading exactly as the first run did).
    """
    metric, unit, value, ts = F.col("metric"), F.col("unit"), F.col("value"), F.col("timestamp")
    known = ", ".join(sorted(rules))
    expected_unit = _lookup(metric, {name: rule.unit for name, rule in rules.items()})
    low = _lookup(metric, {name: float(rule.min) for name, rule in rules.items()})
    high = _lookup(metric, {name: float(rule.max) for name, rule in rules.items()})
    finite = ~F.isnan(value) & (value != float("inf")) & (value != float("-inf"))
    latest = F.col("ingested_ms") + F.lit(max_future_ms)
    reason = (
        F.when(
            expected_unit.isNull(),
            F.format_string(f"metric: unknown metric '%s' (the catalog defines {known})", metric),
        )
        .when(
            unit != expected_unit,
            F.format_string(
                "unit: '%s' does not match the catalog's unit '%s' for %s",
                unit,
                expected_unit,
                metric,
            ),
        )
        .when(~finite, F.lit("value: not a finite number (NaN or Infinity)"))
        .when(
            (value < low) | (value > high),
            F.format_string(
                "value: %s %s is outside the physically valid range [%s, %s] for %s "
                "(sensor fault?)",
                value.cast("string"),
                unit,
                low.cast("string"),
                high.cast("string"),
                metric,
            ),
        )
        .when(
            ts < F.lit(EARLIEST_TIMESTAMP_MS),
            F.format_string(
                "timestamp: %s is before 2000-01-01 (seconds instead of milliseconds?)",
                ts.cast("string"),
            ),
        )
        .when(
            ts > latest,
            F.format_string(
                "timestamp: %s is beyond the allowed clock skew after ingestion (future)",
                ts.cast("string"),
            ),
        )
    )
    return decoded.withColumn(
        "reject_reason", F.coalesce(F.col("reject_reason"), reason.otherwise(F.lit(None)))
    )


def _lookup(key: Column, mapping: Mapping[str, Any]) -> Column:
    """A CASE expression: `mapping[key]`, null for keys not in it."""
    expression: Any = F
    for name, value in mapping.items():
        expression = expression.when(key == F.lit(name), F.lit(value))
    return expression.otherwise(F.lit(None)) if mapping else F.lit(None)


def accepted_readings(checked: DataFrame) -> DataFrame:
    """The readings that passed every check."""
    return checked.filter(F.col("reject_reason").isNull())


def quarantine_records(checked: DataFrame) -> DataFrame:
    """Rejected payloads and readings in the quarantine's shape, with the reason and its field.

    A reading rejected by a catalog rule after binary decoding has no raw text: it is kept as
    the reading's JSON so the quarantine can be replayed.
    """
    rejected = checked.filter(F.col("reject_reason").isNotNull())
    reading_json = F.to_json(
        F.struct("timestamp", "factory_id", "machine_id", "sensor_id", "metric", "value", "unit")
    )
    return rejected.select(
        "batch_id",
        "position",
        "item",
        "source_format",
        "source_path",
        F.substring_index("reject_reason", ":", 1).alias("reason_field"),
        F.col("reject_reason").alias("reason"),
        F.coalesce(F.col("raw"), reading_json).alias("payload"),
        "ingest_seq",
        F.timestamp_millis(F.col("ingested_ms")).alias("ingested_at"),
        F.date_from_unix_date(F.floor(F.col("ingested_ms") / DAY_MS).cast("int")).alias(
            "ingest_date"
        ),
    )


# ------------------------------------------------------------------------ silver: enrichment


def with_time_dimensions(readings: DataFrame) -> DataFrame:
    """event_time, event_date, hour (UTC), is_weekend and shift.

    Shifts are half-open and do not overlap: early [06, 14), late [14, 22), night [22, 06).
    """
    ts = F.col("timestamp")
    hour = F.pmod(F.floor(ts / HOUR_MS), 24).cast("int")
    event_date = F.date_from_unix_date(F.floor(ts / DAY_MS).cast("int"))
    return (
        readings.withColumn("event_time", F.timestamp_millis(ts))
        .withColumn("event_date", event_date)
        .withColumn("hour", hour)
        .withColumn("is_weekend", F.dayofweek(event_date).isin(1, 7))
        .withColumn(
            "shift",
            F.when((hour >= 6) & (hour < 14), F.lit("early"))
            .when((hour >= 14) & (hour < 22), F.lit("late"))
            .otherwise(F.lit("night")),
        )
    )


def dedupe_readings(readings: DataFrame) -> DataFrame:
    """One row per (sensor_id, timestamp): the first ingested copy (deterministic tie-breaks).

    Copies are neighbours in the series order that `rolling_features` sorts by anyway, so a
    `lag` finds them without a sort of their own (a `row_number` per key, or the minimum of a
    struct per key, measured several times slower on Sail).
    """
    ordered = Window.partitionBy(*SERIES).orderBy(
        "timestamp", "sensor_id", "ingest_seq", "batch_id", "position", "item"
    )
    copy = (F.lag("timestamp").over(ordered) == F.col("timestamp")) & (
        F.lag("sensor_id").over(ordered) == F.col("sensor_id")
    )
    return (
        readings.withColumn("_copy", F.coalesce(copy, F.lit(False)))
        .filter(~F.col("_copy"))
        .drop("_copy")
    )


def rolling_features(
    readings: DataFrame,
    *,
    last_n: int,
    time_window_ms: int,
    sigma: float,
    min_periods: int,
) -> DataFrame:
    """Rolling statistics per machine and metric, and 3-sigma anomaly flags.

    * `rolling_count/mean/std`: over the last `last_n` readings, this one included
      (`rowsBetween(-(last_n - 1), 0)`; the seeds' `rowsBetween(100, 0)` is an empty frame);
    * `window_mean/max`: over the readings of the last `time_window_ms` milliseconds;
    * `zscore`: this value against the mean and deviation of the `last_n` readings *before* it
      (the previous row's rolling statistics), so a spike does not dilute its own baseline;
      `is_anomaly` when |zscore| > `sigma` and that baseline holds at least `min_periods`.

    A deviation below `STD_FLOOR` counts as 0: sliding-window variance is computed
    incrementally on some engines (Sail), which leaves rounding noise, even NaN, where the
    readings are constant; sensor resolutions make any real deviation far larger.
    """
    if last_n < 2:
        raise ValueError(f"last_n must be at least 2 readings, got {last_n}")
    ordered = Window.partitionBy(*SERIES).orderBy("timestamp", "sensor_id")
    last = ordered.rowsBetween(-(last_n - 1), 0)
    recent = Window.partitionBy(*SERIES).orderBy("timestamp").rangeBetween(-time_window_ms, 0)
    value = F.col("value")
    raw_std = F.stddev_samp(value).over(last)
    previous = {
        name: F.lag(name, 1).over(ordered)
        for name in ("rolling_count", "rolling_mean", "rolling_std")
    }
    zscore = F.when(
        previous["rolling_std"] > 0,
        (value - previous["rolling_mean"]) / previous["rolling_std"],
    )
    return (
        # readings in the frame: cheaper as a row number than as a sliding count
        readings.withColumn(
            "rolling_count", F.least(F.row_number().over(ordered), F.lit(last_n)).cast("int")
        )
        .withColumn("rolling_mean", F.avg(value).over(last))
        .withColumn(
            "rolling_std",
            F.when(F.isnan(raw_std) | (raw_std < STD_FLOOR), F.lit(0.0)).otherwise(raw_std),
        )
        .withColumn("window_mean", F.avg(value).over(recent))
        .withColumn("window_max", F.max(value).over(recent))
        .withColumn("_baseline_count", F.coalesce(previous["rolling_count"], F.lit(0)))
        .withColumn("zscore", zscore)
        .withColumn(
            "is_anomaly",
            F.coalesce(
                (F.col("_baseline_count") >= min_periods) & (F.abs(F.col("zscore")) > sigma),
                F.lit(False),
            ),
        )
        .drop("_baseline_count")
    )


def series_starts(new_readings: DataFrame) -> DataFrame:
    """Per machine and metric, the earliest new timestamp (features change from there on) and
    the number of new readings."""
    return new_readings.groupBy(*SERIES).agg(
        F.min("timestamp").alias("_start"), F.count("*").alias("_new")
    )


def late_series(existing: DataFrame, starts: DataFrame) -> DataFrame:
    """The series whose stored readings go past their first new reading: late data, whose
    arrival changes the statistics of readings already in silver."""
    return (
        existing.join(F.broadcast(starts.select(*SERIES, "_start")), list(SERIES), "inner")
        .filter(F.col("timestamp") > F.col("_start"))
        .select(*SERIES, "_start")
        .distinct()
    )


def recompute_window(
    existing: DataFrame, new_readings: DataFrame, starts: DataFrame, *, lookback_ms: int
) -> DataFrame:
    """Existing silver rows a change affects or needs as context, plus the new readings.

    For each series with new readings: the stored rows from `lookback_ms` before its earliest
    new reading on (context for the frames, and every later row whose statistics a late reading
    changes), and the new readings (`_is_new`). Rows before the start are context only;
    `changed_rows` keeps those from the start on.
    """
    bounds = F.broadcast(starts.select(*SERIES, "_start"))
    context = existing.join(bounds, list(SERIES), "inner").filter(
        F.col("timestamp") >= F.col("_start") - F.lit(lookback_ms)
    )
    base = [c for c in SILVER_COLUMNS if c not in FEATURE_COLUMNS]
    return (
        context.select(*base, "_start")
        .withColumn("_is_new", F.lit(False))
        .unionByName(
            new_readings.join(bounds, list(SERIES), "inner")
            .select(*base, "_start")
            .withColumn("_is_new", F.lit(True))
        )
    )


def changed_rows(features: DataFrame, *, new: bool) -> DataFrame:
    """The rows of a recomputed window whose features may have changed (from each start on):
    the new readings (`new=True`) or the stored ones (`new=False`)."""
    return features.filter(
        (F.col("timestamp") >= F.col("_start")) & (F.col("_is_new") == F.lit(new))
    ).select(*SILVER_COLUMNS)


def silver_rows(readings: DataFrame) -> DataFrame:
    """Silver's column order (so that every writer and reader agrees)."""
    return readings.select(*SILVER_COLUMNS)


# -------------------------------------------------------------------------------------- gold


def machine_daily(silver: DataFrame) -> DataFrame:
    """Per machine, day and metric: readings, sensors, mean, min, max, deviation, anomalies."""
    return silver.groupBy("event_date", "factory_id", "machine_id", "metric").agg(
        F.count("*").cast("long").alias("reading_count"),
        F.countDistinct("sensor_id").cast("long").alias("sensor_count"),
        F.avg("value").alias("mean_value"),
        F.min("value").alias("min_value"),
        F.max("value").alias("max_value"),
        F.stddev_samp("value").alias("std_value"),
        F.sum(F.col("is_anomaly").cast("long")).alias("anomaly_count"),
    )


def factory_daily(machine_days: DataFrame) -> DataFrame:
    """Per factory and day, from `machine_daily`'s rows: active machines (distinct machines,
    not rows), active sensors (a sensor belongs to one machine and metric, so the per-machine
    counts add up), readings, anomalies and machines with anomalies."""
    return machine_days.groupBy("event_date", "factory_id").agg(
        F.countDistinct("machine_id").cast("long").alias("active_machines"),
        F.sum("sensor_count").cast("long").alias("active_sensors"),
        F.sum("reading_count").cast("long").alias("reading_count"),
        F.sum("anomaly_count").cast("long").alias("anomaly_count"),
        F.countDistinct(F.when(F.col("anomaly_count") > 0, F.col("machine_id")))
        .cast("long")
        .alias("machines_with_anomalies"),
    )
