"""Pure transforms of the lake: DataFrame in, DataFrame out, every parameter an argument.

Nothing here reads or writes a table or a file (that is `spark_jobs.io`), so each function runs
unchanged on Sail (the embedded local engine), on classic local PySpark (the tests compare the
two) and on Apache Spark with delta-spark on EMR Serverless.

The work on raw bytes (splitting landed files, verifying and decoding payloads) is
`spark_jobs.payloads`, run inside `mapInArrow` with the core's wire formats (`iiot.wire`): the
executors need the `iiot` package (locally it is installed; on EMR it is in the application's
image).
Time columns are computed with integer arithmetic on UTC epoch milliseconds, so that no engine's
session time zone can move a reading to another day, hour or shift.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812  (the PySpark convention)

from iiot.catalog import MetricCatalog
from iiot.contract import EARLIEST_TIMESTAMP_MS
from spark_jobs.payloads import CONTENT_ID_CHARS, REUSED_ID

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# ---------------------------------------------------------------------------------- schemas

IDENTITY_SCHEMA = (
    "batch_id string, content_digest string, source_format string, source_path string, "
    "source_offset long, reject_reason string"
)
LANDED_SCHEMA = IDENTITY_SCHEMA + ", payload binary"
BRONZE_COLUMNS = (
    "batch_id",  # the header's id once the batch passed its integrity checks, else from content
    "content_digest",  # SHA-256 of the payload: what de-duplication keys on
    "source_format",
    "source_path",
    "source_offset",  # where the payload starts in its landed file (null: an older release)
    "reject_reason",  # why the payload failed at landing (integrity, reused id), else null
    "payload",
    "payload_bytes",
    "ingest_seq",
    "ingested_ms",
    "ingested_at",
    "ingest_date",
)

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
    """Landed files (`binaryFile` rows: path, content) -> one row per payload, with its identity.

    `spark_jobs.payloads.split_payloads` does the cutting: compact batches back to back as
    Firehose concatenates them (resynchronizing after a damaged one), or JSON lines in chunks.
    A batch that passed its integrity checks keeps its header's batch id; anything else is known
    by its content digest, and a damaged batch carries the reason it failed.
    """
    return files.select(
        F.col("path").alias("source_path"), F.col("content").alias("payload")
    ).mapInArrow(_split_landed_arrow, LANDED_SCHEMA)


def _split_landed_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    import pyarrow as pa

    from spark_jobs.payloads import split_payloads

    schema = pa.schema(
        [
            ("batch_id", pa.string()),
            ("content_digest", pa.string()),
            ("source_format", pa.string()),
            ("source_path", pa.string()),
            ("source_offset", pa.int64()),
            ("reject_reason", pa.string()),
            ("payload", pa.binary()),
        ]
    )
    for batch in batches:
        rows: dict[str, list[Any]] = {name: [] for name in schema.names}
        paths = batch.column("source_path")
        contents = batch.column("payload")
        for i in range(batch.num_rows):
            path = paths[i].as_py()
            for item in split_payloads(contents[i].as_py() or b""):
                rows["batch_id"].append(item.batch_id)
                rows["content_digest"].append(item.content_digest)
                rows["source_format"].append(item.source_format)
                rows["source_path"].append(path)
                rows["source_offset"].append(item.offset)
                rows["reject_reason"].append(item.reject_reason)
                rows["payload"].append(item.payload)
        yield pa.RecordBatch.from_pydict(rows, schema=schema)


def unseen_payloads(landed: DataFrame, known: DataFrame) -> DataFrame:
    """Landed payloads whose content (`content_digest`) is not in `known`, one row per content:
    an exact copy is a duplicate whatever id it claims."""
    return landed.dropDuplicates(["content_digest"]).join(
        known.select("content_digest"), "content_digest", "left_anti"
    )


def verify_payloads(unseen: DataFrame) -> DataFrame:
    """The identities (`IDENTITY_SCHEMA`, no payload) of unseen payloads once each batch that
    passed its integrity checks has also been decoded (`spark_jobs.payloads.verify`): one that
    does not decode gives up its header's id and carries the reason. Decoding only content
    bronze has not seen keeps this to one decode per new batch."""
    return unseen.select(
        "batch_id",
        "content_digest",
        "source_format",
        "source_path",
        "source_offset",
        "reject_reason",
        "payload",
    ).mapInArrow(_verify_arrow, IDENTITY_SCHEMA)


def _verify_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    import pyarrow as pa

    from spark_jobs.payloads import LandedPayload, verify

    schema = pa.schema(
        [
            ("batch_id", pa.string()),
            ("content_digest", pa.string()),
            ("source_format", pa.string()),
            ("source_path", pa.string()),
            ("source_offset", pa.int64()),
            ("reject_reason", pa.string()),
        ]
    )
    for batch in batches:
        rows: dict[str, list[Any]] = {name: [] for name in schema.names}
        for row in batch.to_pylist():
            item = verify(
                LandedPayload(
                    row["batch_id"],
                    row["source_format"],
                    row["source_offset"],
                    row["content_digest"],
                    row["reject_reason"],
                    row["payload"] or b"",
                )
            )
            rows["batch_id"].append(item.batch_id)
            rows["content_digest"].append(item.content_digest)
            rows["source_format"].append(item.source_format)
            rows["source_path"].append(row["source_path"])
            rows["source_offset"].append(item.offset)
            rows["reject_reason"].append(item.reject_reason)
        yield pa.RecordBatch.from_pydict(rows, schema=schema)


def resolve_batch_ids(verified: DataFrame, known: DataFrame) -> DataFrame:
    """Who owns each verified batch id: the first content under it. A verified batch id names
    one content: the content bronze already holds under it (`known`: bronze's `batch_id`,
    `content_digest`, `source_format`, `source_path`, `reject_reason`), else the earliest
    verified copy landed (by path, then offset). Another content under a taken id is refused: it
    gets an id of its own (`reused-` and its digest) and the reason, for silver to quarantine,
    so it neither merges into nor silently replaces the first (`IDENTITY_SCHEMA`)."""
    verified_batch = (F.col("source_format") == F.lit("batch")) & F.col("reject_reason").isNull()
    owners = known.filter(verified_batch).select(
        "batch_id",
        F.lit(0).alias("_rank"),
        "source_path",
        F.lit(None).cast("long").alias("source_offset"),
        "content_digest",
    )
    claims = verified.filter(verified_batch).select(
        "batch_id", F.lit(1).alias("_rank"), "source_path", "source_offset", "content_digest"
    )
    first = (
        owners.unionByName(claims)
        .groupBy("batch_id")
        .agg(
            F.min(F.struct("_rank", "source_path", "source_offset", "content_digest")).alias(
                "_first"
            )
        )
    )
    first_digest = F.col("_first.content_digest")
    reused = F.coalesce(verified_batch & (first_digest != F.col("content_digest")), F.lit(False))
    return verified.join(first, "batch_id", "left").select(
        F.when(
            reused,
            F.concat(F.lit(REUSED_ID), F.substring("content_digest", 1, CONTENT_ID_CHARS)),
        )
        .otherwise(F.col("batch_id"))
        .alias("batch_id"),
        "content_digest",
        "source_format",
        "source_path",
        "source_offset",
        F.when(
            reused,
            F.format_string(
                "batch_id: %s reused with different content (the first copy landed in %s); "
                "a batch id names one content",
                F.col("batch_id"),
                F.col("_first.source_path"),
            ),
        )
        .otherwise(F.col("reject_reason"))
        .alias("reject_reason"),
    )


def with_identities(unseen: DataFrame, identities: DataFrame) -> DataFrame:
    """The unseen payloads under their resolved identities (joined by content digest), ready
    for `with_ingest_metadata`."""
    return unseen.select("content_digest", "payload").join(identities, "content_digest")


def with_ingest_metadata(batches: DataFrame, ingest_seq: int, ingested_ms: int) -> DataFrame:
    """Bronze rows (`BRONZE_COLUMNS`): the payload and its identity plus the run's sequence
    number and ingestion time."""
    return batches.select(
        "batch_id",
        "content_digest",
        "source_format",
        "source_path",
        "source_offset",
        "reject_reason",
        "payload",
        F.length("payload").cast("long").alias("payload_bytes"),
        F.lit(ingest_seq).cast("long").alias("ingest_seq"),
        F.lit(ingested_ms).cast("long").alias("ingested_ms"),
        F.timestamp_millis(F.lit(ingested_ms)).alias("ingested_at"),
        F.date_from_unix_date(F.lit(ingested_ms // DAY_MS).cast("int")).alias("ingest_date"),
    ).select(*BRONZE_COLUMNS)


def identify_bronze(bronze: DataFrame) -> DataFrame:
    """Bronze rows an earlier release wrote (before content digests) with their identity as
    this release gives it (`BRONZE_COLUMNS`): a damaged batch that took its header's id gives
    it up (so that a good copy still in the landing zone lands), and carries its reason.
    """
    return (
        bronze.select(
            "batch_id", "source_format", "source_path", "payload", "ingest_seq", "ingested_ms"
        )
        .mapInArrow(_identify_arrow, _IDENTIFIED_SCHEMA)
        .withColumn("payload_bytes", F.length("payload").cast("long"))
        .withColumn("ingested_at", F.timestamp_millis(F.col("ingested_ms")))
        .withColumn(
            "ingest_date",
            F.date_from_unix_date(F.floor(F.col("ingested_ms") / DAY_MS).cast("int")),
        )
        .select(*BRONZE_COLUMNS)
    )


_IDENTIFIED_SCHEMA = (
    "batch_id string, content_digest string, source_format string, source_path string, "
    "source_offset long, reject_reason string, payload binary, ingest_seq long, ingested_ms long"
)


def _identify_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    import pyarrow as pa

    from spark_jobs.payloads import identify, verify

    for batch in batches:
        payloads = batch.column("payload").to_pylist()
        items = [verify(identify(payload or b"")) for payload in payloads]
        yield pa.RecordBatch.from_pydict(
            {
                "batch_id": pa.array([item.batch_id for item in items], pa.string()),
                "content_digest": pa.array([item.content_digest for item in items], pa.string()),
                "source_format": pa.array([item.source_format for item in items], pa.string()),
                "source_path": batch.column("source_path"),
                "source_offset": pa.nulls(batch.num_rows, pa.int64()),
                "reject_reason": pa.array([item.reject_reason for item in items], pa.string()),
                "payload": batch.column("payload"),
                "ingest_seq": batch.column("ingest_seq"),
                "ingested_ms": batch.column("ingested_ms"),
            }
        )


# ---------------------------------------------------------------------------- silver: decode


def decode_payloads(bronze: DataFrame, *, partitions: int | None = None) -> DataFrame:
    """Bronze rows -> one row per reading, or per structural reject with its reason.

    Readings come out with `reject_reason` null; a payload or item that cannot be decoded comes
    out with the reason and its raw text, and so does a payload bronze already knows is bad (its
    `reject_reason`: failed integrity, reused batch id). Decoding never fails the job
    (`spark_jobs.payloads.decode_one_payload`). The catalog's rules are applied afterwards, in
    Spark (`quality_check`), so that they are visible and testable as a DataFrame transform.

    `partitions` spreads the payloads over that many partitions first (hashed by `batch_id`),
    so that they are decoded in parallel: a scan yields a file's payloads as one partition, and
    bronze holds a run's payloads in few files (Sail reads one file as one partition).
    """
    if "reject_reason" not in bronze.columns:
        bronze = bronze.withColumn("reject_reason", F.lit(None).cast("string"))
    if partitions is not None:
        bronze = bronze.repartition(partitions, "batch_id")
    return bronze.select(
        "batch_id",
        "source_format",
        "source_path",
        "payload",
        "ingest_seq",
        "ingested_ms",
        "reject_reason",
    ).mapInArrow(_decode_arrow, DECODED_COLUMNS)


def _decode_arrow(batches: Iterator[Any]) -> Iterator[Any]:
    from spark_jobs.payloads import decode_one_payload

    for batch in batches:
        columns = {name: batch.column(name) for name in batch.schema.names}
        for i in range(batch.num_rows):
            table = decode_one_payload(
                columns["batch_id"][i].as_py(),
                columns["source_format"][i].as_py(),
                columns["source_path"][i].as_py(),
                columns["payload"][i].as_py() or b"",
                columns["ingest_seq"][i].as_py(),
                columns["ingested_ms"][i].as_py(),
                columns["reject_reason"][i].as_py(),
            )
            if table.num_rows:
                yield from table.to_batches()


# ---------------------------------------------------------------------------- silver: quality


@dataclass(frozen=True)
class QualityRule:
    """What a reading of one metric must satisfy: its unit and the physically valid range.
    `derived`: a series the platform computes (the catalog's `derived`, e.g. the predictor's
    failure_probability), stored like a reading but no sensor: the 3-sigma flag and the
    factories' sensor and reading counts leave it out."""

    unit: str
    min: float
    max: float
    derived: bool = False


def quality_rules(catalog: MetricCatalog) -> dict[str, QualityRule]:
    """The catalog's units and valid ranges, as plain parameters for `quality_check`."""
    return {
        name: QualityRule(
            metric.unit, metric.valid_range.min, metric.valid_range.max, metric.is_derived
        )
        for name, metric in catalog.items()
    }


def derived_metrics(rules: Mapping[str, QualityRule]) -> frozenset[str]:
    """The metrics of `rules` that are computed series, not sensors (`QualityRule.derived`)."""
    return frozenset(name for name, rule in rules.items() if rule.derived)


def quality_check(
    decoded: DataFrame, rules: Mapping[str, QualityRule], *, max_future_ms: int
) -> DataFrame:
    """Fill `reject_reason` for readings that break the catalog's rules (first problem wins).

    The checks and their messages are the contract's (`iiot.contract.Validator`): known metric,
    the catalog's unit, a finite value inside the valid range, a timestamp in milliseconds after
    2000 and at most `max_future_ms` after the batch was ingested (a deterministic clock, so a
    re-run judges a reading exactly as the first run did). Ids are checked while decoding, once
    per series (`spark_jobs.payloads`): a regular expression per row cost 8% of silver.
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
        .when(value.isNull(), F.lit("value: missing"))
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
        .when(ts.isNull(), F.lit("timestamp: missing"))
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
    # Nearly every reading passes: one cheap test of the rules, so that the lookups and the
    # reason's text are evaluated for the few that fail only (a CASE evaluates a branch only
    # on the rows that reach it). NaN and infinities fail the range comparisons.
    passes: Column = F.lit(False)
    for name, rule in rules.items():
        passes = passes | (
            (metric == F.lit(name))
            & (unit == F.lit(rule.unit))
            & (value >= F.lit(float(rule.min)))
            & (value <= F.lit(float(rule.max)))
        )
    passes = passes & (ts >= F.lit(EARLIEST_TIMESTAMP_MS)) & (ts <= latest)
    return decoded.withColumn(
        "reject_reason",
        F.when(F.col("reject_reason").isNotNull(), F.col("reject_reason"))
        .when(passes, F.lit(None))
        .otherwise(reason.otherwise(F.lit(None))),
    )


def _lookup(key: Column, mapping: Mapping[str, Any]) -> Column:
    """A CASE expression: `mapping[key]`, null for keys not in it."""
    expression: Any = F
    for name, value in mapping.items():
        expression = expression.when(key == F.lit(name), F.lit(value))
    return expression.otherwise(F.lit(None)) if mapping else F.lit(None)


ACCEPTED_COLUMNS = (
    "batch_id",
    "ingest_seq",
    "position",  # with `item`: the last tie-breaks between copies of a reading
    "item",
    "timestamp",
    "factory_id",
    "machine_id",
    "sensor_id",
    "metric",
    "unit",
    "value",
)


def accepted_readings(checked: DataFrame) -> DataFrame:
    """The readings that passed every check, in the columns silver takes from them
    (`ACCEPTED_COLUMNS`: the source's path and format, the raw text and the reason stay behind,
    so that they are neither shuffled nor handed to the features' Python)."""
    return checked.filter(F.col("reject_reason").isNull()).select(*ACCEPTED_COLUMNS)


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


def run_figures(checked: DataFrame) -> DataFrame:
    """The figures silver's merges and its summary need, in one pass: rows per rejected field
    (`reason_field`, null for accepted readings) and payload (`batch_id`, null for accepted
    readings: the quarantine decodes only those payloads again) and, for accepted readings, per
    (`event_date`, `factory_id`) with the earliest timestamp.

    Dates come from accepted readings only: a rejected timestamp can be anything an int64 holds,
    which no date can (a timestamp of 9e18 failed the whole job on Sail).
    """
    accepted = F.col("reject_reason").isNull()
    timestamp = F.when(accepted, F.col("timestamp"))
    return (
        checked.select(
            F.substring_index("reject_reason", ":", 1).alias("reason_field"),
            F.when(~accepted, F.col("batch_id")).alias("batch_id"),
            F.date_from_unix_date(F.floor(timestamp / DAY_MS).cast("int")).alias("event_date"),
            F.when(accepted, F.col("factory_id")).alias("factory_id"),
            timestamp.alias("timestamp"),
        )
        .groupBy("reason_field", "batch_id", *PARTITION_COLUMNS)
        .agg(F.count("*").alias("n"), F.min("timestamp").alias("first"))
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


def dedupe_readings(readings: DataFrame, *, partitions: int | None = None) -> DataFrame:
    """One row per (sensor_id, timestamp): the first ingested copy (deterministic tie-breaks:
    `ingest_seq`, `batch_id`, `position`, `item`).

    Copies are neighbours in the series order (`spark_jobs.features`), so each series is sorted
    once with numpy on integer codes in a partition of its own (`rolling_features(dedupe=True)`
    does this and the features in one pass). `partitions`: as in `rolling_features`."""
    from spark_jobs.features import dedupe_arrow

    return by_series(readings, partitions).mapInArrow(dedupe_arrow, readings.schema)


def by_series(readings: DataFrame, partitions: int | None) -> DataFrame:
    """Every series (machine and metric) whole in one of `partitions` partitions (`None`: the
    engine's default number). Sail's default is one partition, whatever
    `spark.sql.shuffle.partitions` says: all the rows in one Python call on one core."""
    if partitions is None:
        return readings.repartition(*SERIES)
    return readings.repartition(partitions, *SERIES)


def rolling_features(
    readings: DataFrame,
    *,
    last_n: int,
    time_window_ms: int,
    sigma: float,
    min_periods: int,
    dedupe: bool = False,
    partitions: int | None = None,
    unflagged: frozenset[str] = frozenset(),
) -> DataFrame:
    """Rolling statistics per machine and metric, and 3-sigma anomaly flags.

    * `rolling_count/mean/std`: over the last `last_n` readings, this one included (what
      `rowsBetween(-(last_n - 1), 0)` ordered by timestamp and sensor gives; the seeds'
      `rowsBetween(100, 0)` is an empty frame);
    * `window_mean/max`: over the readings of the last `time_window_ms` milliseconds (what
      `rangeBetween(-time_window_ms, 0)` ordered by timestamp gives: readings at the same
      timestamp included);
    * `zscore`: this value against the mean and deviation of the `last_n` readings *before* it
      (the previous row's rolling statistics), so a spike does not dilute its own baseline;
      `is_anomaly` when |zscore| > `sigma` and that baseline holds at least `min_periods`.

    With `dedupe`, copies are dropped first (`dedupe_readings`). Each series is sorted once and
    its features computed with numpy in one `mapInArrow` pass (`spark_jobs.features`): on Sail
    the SQL frames (a separate operator each, the `RANGE` frame comparing bounds row by row) cost
    most of a silver run. Deviations are exact where readings are constant (0), where Sail's
    sliding frames left rounding noise (up to 1e-4) that the floor
    (`spark_jobs.features.STD_FLOOR`) did not hide.

    `partitions`: how many partitions the series are spread over (`by_series`); each
    partition's rows are in one Python call's memory at once. `unflagged`: metrics whose rows
    get their statistics but never `is_anomaly` (the derived series, `derived_metrics`).
    """
    import functools

    from pyspark.sql.types import BooleanType, DoubleType, IntegerType, StructField, StructType

    from spark_jobs.features import FEATURES, features_arrow

    if last_n < 2:
        raise ValueError(f"last_n must be at least 2 readings, got {last_n}")
    kinds = {"int": IntegerType(), "double": DoubleType(), "boolean": BooleanType()}
    added = [StructField(name, kinds[kind], True) for name, kind in FEATURES]
    schema = StructType([*readings.schema.fields, *added])
    body = functools.partial(
        features_arrow,
        last_n=last_n,
        time_window_ms=time_window_ms,
        sigma=sigma,
        min_periods=min_periods,
        dedupe=dedupe,
        unflagged=unflagged,
    )
    return by_series(readings, partitions).mapInArrow(body, schema)


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


def factory_daily(machine_days: DataFrame, derived: frozenset[str] = frozenset()) -> DataFrame:
    """Per factory and day, from `machine_daily`'s rows: active machines (distinct machines,
    not rows), active sensors (a sensor belongs to one machine and metric, so the per-machine
    counts add up), readings, anomalies and machines with anomalies. The `derived` metrics'
    rows (computed series, no sensors: `derived_metrics`) are left out."""
    if derived:
        machine_days = machine_days.filter(~F.col("metric").isin(sorted(derived)))
    return machine_days.groupBy("event_date", "factory_id").agg(
        F.countDistinct("machine_id").cast("long").alias("active_machines"),
        F.sum("sensor_count").cast("long").alias("active_sensors"),
        F.sum("reading_count").cast("long").alias("reading_count"),
        F.sum("anomaly_count").cast("long").alias("anomaly_count"),
        F.countDistinct(F.when(F.col("anomaly_count") > 0, F.col("machine_id")))
        .cast("long")
        .alias("machines_with_anomalies"),
    )
