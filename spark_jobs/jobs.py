"""Bronze -> silver -> gold: the jobs, wiring `transforms` to `io`. Incremental and idempotent.

* **bronze** appends the landed payloads whose content (SHA-256) it has not seen, each run tagged
  with the next `ingest_seq`. Integrity comes before identity (`spark_jobs.payloads`): only a
  batch that passed its integrity checks is known by its header's batch id, and another content
  under an id already taken is kept apart with the reason, for silver to quarantine.
* **silver** processes only bronze rows above its watermark (the last `ingest_seq` it finished):
  decode, check against the contract and the catalog, quarantine rejects (`MERGE`, insert-only,
  keyed by batch and position), and append the readings silver does not hold (an anti-join),
  exactly once per (sensor_id, timestamp). No payload fails the job: whatever cannot be
  decoded is quarantined. Rolling features are recomputed from each affected series' earliest
  new reading on (late data changes the statistics of the readings after it), with the stored
  rows before it as the frames' context.
* **gold** recomputes the daily aggregates of the (event_date, factory_id) partitions that silver
  changed since gold's watermark, and merges them.

Each job records its watermark last: a crash before that makes the next run redo work whose
merges change nothing twice. A run with nothing new does no write at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (the PySpark convention)

from iiot.contract import DEFAULT_MAX_FUTURE_MS
from spark_jobs import io, transforms
from spark_jobs.transforms import QualityRule

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

BRONZE_PARTITIONS = ("ingest_date",)
QUARANTINE_KEYS = ("batch_id", "position", "item")
KNOWN_COLUMNS = ("batch_id", "content_digest", "source_format", "source_path", "reject_reason")
KNOWN_SCHEMA = (
    "batch_id string, content_digest string, source_format string, source_path string, "
    "reject_reason string"
)
# Firehose retries a failed delivery to S3 for up to 24 hours, into the prefix of the records'
# arrival hour: each run lists the prefixes from this long before the newest one it has read.
LANDING_LATENESS_MS = 25 * 3_600_000
# The quarantine decodes again only the payloads with rejects when they are at most this many.
REJECTED_PAYLOADS_LISTED = 1_000
MACHINE_DAILY_KEYS = ("event_date", "factory_id", "machine_id", "metric")
FACTORY_DAILY_KEYS = ("event_date", "factory_id")


@dataclass(frozen=True)
class LakeSettings:
    """The silver job's parameters (defaults: the case study's 100 readings and 3 sigma)."""

    last_n: int = 100
    time_window_ms: int = 3_600_000
    sigma: float = 3.0
    min_periods: int = 10
    # Stored readings before a series' first new reading that are read as window context; must
    # span `last_n` readings and `time_window_ms` (1 h: 100 readings at up to one per 36 s; the
    # gateways sample at 1-10 s).
    lookback_ms: int = 3_600_000
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    # Bronze: how far before the newest landing prefix read so far each run lists.
    landing_lateness_ms: int = LANDING_LATENESS_MS
    # Silver's Python passes (decoding, features) run per partition, at least the session's
    # `spark.sql.shuffle.partitions` of them, and more when the series' rows exceed this many
    # per partition: a partition's rows are in one Python call's memory at once. (Each
    # partition also costs CPU: on Sail, 3M readings' features and write took about 4.7-5.6
    # CPU s in 1 partition, 5.2-6.0 in 4 and 6.5 in 10.)
    rows_per_partition: int = 2_000_000

    def __post_init__(self) -> None:
        if self.lookback_ms < self.time_window_ms:
            raise ValueError(
                f"lookback_ms ({self.lookback_ms}) must cover time_window_ms "
                f"({self.time_window_ms}), or window statistics after late data are cut short"
            )
        if self.rows_per_partition < 1:
            raise ValueError(f"rows_per_partition must be positive, got {self.rows_per_partition}")


@dataclass
class StepResult:
    """What one job did (figures for progress, the CLI and the demo)."""

    job: str
    source_seq: int = 0
    rows_in: int = 0
    rows_written: int = 0
    quarantined: int = 0
    duplicates: int = 0
    partitions: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, 0) or k == "job"}


def _nothing(_message: str) -> None:
    return None


# ---------------------------------------------------------------------------------- bronze


def run_bronze(
    spark: SparkSession,
    paths: io.LakePaths,
    *,
    progress: Progress = _nothing,
    now_ms: int | None = None,
    lateness_ms: int = LANDING_LATENESS_MS,
    full_listing: bool = False,
) -> StepResult:
    """Append the landed payloads whose content bronze has not seen (one new `ingest_seq` per
    run). Figures: `rows_written` new payloads, `duplicates` landed copies of content already
    in bronze (or landed twice), `extra` what landed and the new payloads' problems by field.

    Only files the landing manifest (`_state/landed_files`) has not seen are read, and only the
    `date=/hour=` prefixes from `lateness_ms` before the newest one read so far are listed
    (Firehose names a prefix by its records' arrival hour and can deliver an object late into
    an older one); `full_listing` lists every prefix (a sweep, e.g. after restoring objects)."""
    began = time.perf_counter()
    result = StepResult("bronze")
    exists = io.table_exists(spark, paths.bronze)
    if exists:
        _upgrade_bronze(spark, paths, progress)
    since_ms = (
        None if full_listing or not exists else io.landed_window_start(spark, paths, lateness_ms)
    )
    listed = io.list_landing(spark, paths.landing, since_ms=since_ms)
    seen = io.read_landed_manifest(spark, paths, since_ms) if exists else {}
    new_files = [item for item in listed if seen.get(item.path) != (item.size, item.modified_ms)]
    result.extra["landed files listed"] = len(listed)
    if not listed:
        result.skipped = f"nothing has landed under {paths.landing}"
        return result
    if not new_files:
        result.skipped = f"no new batches ({len(listed)} landed files, all read before)"
        return result
    landed_files = io.read_landed_files(spark, new_files)
    assert landed_files is not None  # new_files is not empty
    progress(f"bronze: reading {len(new_files)} new landed files of {len(listed)} listed")
    landed = transforms.split_landed_files(landed_files)
    if exists:
        bronze = io.read_table(spark, paths.bronze)
        last_seq = int(bronze.agg(F.max("ingest_seq")).collect()[0][0] or 0)
        known = bronze.select(*KNOWN_COLUMNS)
    else:
        last_seq = 0
        known = spark.createDataFrame([], KNOWN_SCHEMA)
    ingest_seq = last_seq + 1
    unseen = transforms.unseen_payloads(landed, known)
    # New content is decoded once, here; its identities are few rows, taken as data so that the
    # append below does not decode it again.
    verified = transforms.verify_payloads(unseen).collect()
    identities = (
        transforms.resolve_batch_ids(
            spark.createDataFrame(verified, transforms.IDENTITY_SCHEMA), known
        ).collect()
        if verified
        else []
    )
    # Distinct places, not rows: Sail reads a large file as several rows of the whole file.
    landed_count = landed.select("source_path", "source_offset").distinct().count()
    count = len(identities)
    result.duplicates = landed_count - count
    result.extra["landed payloads"] = landed_count
    refused: dict[str, int] = {}
    for row in identities:
        if row["reject_reason"] is not None:
            field = row["reject_reason"].split(":", 1)[0]
            refused[field] = refused.get(field, 0) + 1
    if refused:
        result.extra["new with a problem (silver quarantines them)"] = _by_field(refused)
    if count == 0:
        result.skipped = f"no new batches ({landed_count} landed, all already in bronze)"
    else:
        progress(f"bronze: appending {count} new batches (ingest_seq {ingest_seq})")
        rows = transforms.with_ingest_metadata(
            transforms.with_identities(
                unseen, spark.createDataFrame(identities, transforms.IDENTITY_SCHEMA)
            ),
            ingest_seq,
            int(time.time() * 1000) if now_ms is None else now_ms,
        )
        io.append(rows, paths.bronze, partition_by=BRONZE_PARTITIONS)
        result.source_seq = ingest_seq
        result.rows_written = count
    io.record_landed(spark, paths, new_files, ingest_seq if count else last_seq)
    result.seconds = time.perf_counter() - began
    return result


def _upgrade_bronze(spark: SparkSession, paths: io.LakePaths, progress: Progress) -> None:
    """Give the rows an earlier release wrote their content digest and verified identity, once
    (a rewrite of bronze): without it, a damaged copy stored under a good batch's id would keep
    shadowing it."""
    bronze = io.read_table(spark, paths.bronze)
    if "content_digest" in bronze.columns:
        return
    progress("bronze: identifying the batches an earlier release stored (once)")
    io.overwrite(transforms.identify_bronze(bronze), paths.bronze, partition_by=BRONZE_PARTITIONS)


def _by_field(counts: dict[str, int]) -> str:
    """`field n, field n` from the most common down: a summary line's worth."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{field} {n}" for field, n in ranked)


# ---------------------------------------------------------------------------------- silver


def run_silver(
    spark: SparkSession,
    paths: io.LakePaths,
    rules: dict[str, QualityRule],
    *,
    settings: LakeSettings = LakeSettings(),
    progress: Progress = _nothing,
) -> StepResult:
    """Decode, check and merge the bronze batches silver has not processed yet."""
    began = time.perf_counter()
    result = StepResult("silver")
    if not io.table_exists(spark, paths.bronze):
        result.skipped = "bronze does not exist yet"
        return result
    watermark = io.read_watermark(spark, paths, "silver")
    bronze = io.read_table(spark, paths.bronze)
    top = int(bronze.agg(F.max("ingest_seq")).collect()[0][0] or 0)
    if top <= watermark:
        result.skipped = f"bronze has nothing after ingest_seq {watermark}"
        return result
    result.source_seq = top
    progress(f"silver: decoding bronze ingest_seq {watermark + 1}..{top}")
    new_bronze = bronze.filter((F.col("ingest_seq") > watermark) & (F.col("ingest_seq") <= top))
    # The payloads are decoded in parallel (bronze holds a run's payloads in few files).
    parallelism = _shuffle_partitions(spark)
    checked = transforms.quality_check(
        transforms.decode_payloads(new_bronze, partitions=parallelism),
        rules,
        max_future_ms=settings.max_future_ms,
    )
    # One pass for the figures the merges and the summary need; no .cache(): Sail's cache made
    # these plans far slower than decoding again.
    stats = transforms.run_figures(checked).collect()
    counts = [row for row in stats if row["reason_field"] is None]
    rejected: dict[str, int] = {}
    for row in stats:
        if row["reason_field"] is not None:
            rejected[row["reason_field"]] = rejected.get(row["reason_field"], 0) + int(row["n"])
    if rejected:
        total = sum(rejected.values())
        progress(f"silver: quarantining {total} rejects")
        # Only the payloads with rejects (the figures name them; few) are decoded again for the
        # quarantine, not every new payload.
        with_rejects = {row["batch_id"] for row in stats if row["reason_field"] is not None}
        rejects_from = checked
        if None not in with_rejects and len(with_rejects) <= REJECTED_PAYLOADS_LISTED:
            rejects_from = transforms.quality_check(
                transforms.decode_payloads(
                    new_bronze.filter(F.col("batch_id").isin(sorted(with_rejects))),
                    partitions=parallelism,
                ),
                rules,
                max_future_ms=settings.max_future_ms,
            )
        _quarantine(spark, paths, rejects_from)
        result.quarantined = total
        result.extra["quarantined by field"] = _by_field(rejected)
    result.rows_in = sum(int(row["n"]) for row in counts)
    partitions = [(row["event_date"], row["factory_id"]) for row in counts]
    earliest = min((int(row["first"]) for row in counts), default=0)
    # Copies (the same sensor and timestamp) are dropped where each series is sorted anyway.
    readings = transforms.with_time_dimensions(transforms.accepted_readings(checked))
    # Each series whole in one partition for the features' Python pass, spread over enough
    # partitions to use every core and to bound the rows each Python call holds.
    series_partitions = max(parallelism, -(-result.rows_in // settings.rows_per_partition))
    changed = _merge_readings(
        spark,
        paths,
        readings,
        partitions,
        earliest,
        settings,
        result,
        progress,
        series_partitions,
        transforms.derived_metrics(rules),
    )
    io.record_changes(spark, paths, top, changed)
    io.write_watermark(spark, paths, "silver", top)
    result.seconds = time.perf_counter() - began
    return result


def _quarantine(spark: SparkSession, paths: io.LakePaths, checked: DataFrame) -> None:
    rejects = transforms.quarantine_records(checked)
    if io.table_exists(spark, paths.quarantine):
        io.merge(spark, rejects, paths.quarantine, keys=QUARANTINE_KEYS, update_columns=None)
    else:
        io.append(rejects, paths.quarantine, partition_by=("ingest_date",))


def _merge_readings(
    spark: SparkSession,
    paths: io.LakePaths,
    readings: DataFrame,
    partitions: list[tuple[Any, str]],
    earliest: int,
    settings: LakeSettings,
    result: StepResult,
    progress: Progress,
    series_partitions: int,
    derived: frozenset[str] = frozenset(),
) -> set[tuple[Any, str]]:
    """Merge the readings; return the (event_date, factory_id) partitions that changed."""
    result.partitions = len(partitions)
    if not partitions:
        return set()
    features = {
        **_feature_settings(settings),
        "partitions": series_partitions,
        "unflagged": derived,
    }
    if not io.table_exists(spark, paths.silver):
        progress(f"silver: writing {result.rows_in} accepted readings (duplicates included)")
        rows = transforms.silver_rows(
            transforms.rolling_features(readings, dedupe=True, **features)
        )
        io.append(rows, paths.silver, partition_by=transforms.PARTITION_COLUMNS)
        result.rows_written = io.read_table(spark, paths.silver).count()
        result.duplicates = result.rows_in - result.rows_written
        return set(partitions)
    silver = io.read_table(spark, paths.silver, transforms.SILVER_COLUMNS)
    touched = silver.filter(io.partition_predicate(partitions, alias=None)).filter(
        F.col("timestamp") >= F.lit(earliest)
    )
    # Readings already in silver (redelivered batches, duplicate readings) are not new.
    fresh = transforms.dedupe_readings(readings, partitions=series_partitions).join(
        touched.select(*transforms.READING_KEY), list(transforms.READING_KEY), "left_anti"
    )
    # One row per machine and metric: few, so taken as data for the rest of the run.
    start_rows = transforms.series_starts(fresh).collect()
    count = sum(int(row["_new"]) for row in start_rows)
    result.duplicates = result.rows_in - count
    if count == 0:
        return set()
    starts = spark.createDataFrame(
        [tuple(row) for row in start_rows],
        "machine_id string, metric string, _start long, _new long",
    )
    context_from = min(int(row["_start"]) for row in start_rows) - settings.lookback_ms
    context = silver.filter(F.col("event_date") >= F.lit(_day(context_from))).filter(
        F.col("timestamp") >= F.lit(context_from)
    )
    window = transforms.rolling_features(
        transforms.recompute_window(context, fresh, starts, lookback_ms=settings.lookback_ms),
        **features,
    )
    touched_partitions = set(partitions)
    progress(f"silver: {count} new readings in {len(start_rows)} series; checking for late data")
    # Late readings change the statistics of stored readings after them: update those first
    # (the window is re-read by each merge, and stays the same while the new rows are absent).
    if transforms.late_series(context, starts).count() > 0:
        updates = transforms.changed_rows(window, new=False)
        changed = [
            (row["event_date"], row["factory_id"])
            for row in updates.select(*transforms.PARTITION_COLUMNS).distinct().collect()
        ]
        result.extra["late partitions updated"] = len(changed)
        touched_partitions.update(changed)
        progress(f"silver: late data: updating statistics in {len(changed)} partitions")
        io.merge(
            spark,
            updates,
            paths.silver,
            keys=(*transforms.PARTITION_COLUMNS, *transforms.READING_KEY),
            update_columns=(*transforms.FEATURE_COLUMNS, "ingest_seq"),
            insert=False,
            target_filter=io.partition_predicate(changed),
        )
    progress(f"silver: appending {count} new readings")
    # New readings: `fresh` left out every key silver holds (the anti-join above, in the same
    # partitions from the earliest new timestamp on), so an append writes each key exactly
    # once; a MERGE would join the same partitions against silver a second time. The anti-join
    # is evaluated by this write, after the late-data update (which changes no key), and a
    # crashed run's rows are left out by the next run's anti-join the same way.
    io.append(
        transforms.changed_rows(window, new=True),
        paths.silver,
        partition_by=transforms.PARTITION_COLUMNS,
    )
    result.rows_written = count
    return touched_partitions


def _feature_settings(settings: LakeSettings) -> dict[str, Any]:
    return {
        "last_n": settings.last_n,
        "time_window_ms": settings.time_window_ms,
        "sigma": settings.sigma,
        "min_periods": settings.min_periods,
    }


def _shuffle_partitions(spark: SparkSession) -> int:
    """The session's `spark.sql.shuffle.partitions` (Spark's default 200 where unset)."""
    return max(int(spark.conf.get("spark.sql.shuffle.partitions", "200") or 200), 1)


def _day(epoch_ms: int) -> date:
    return date(1970, 1, 1) + timedelta(days=epoch_ms // transforms.DAY_MS)


# ------------------------------------------------------------------------------------ gold


def run_gold(
    spark: SparkSession,
    paths: io.LakePaths,
    *,
    progress: Progress = _nothing,
    derived: frozenset[str] = frozenset(),
) -> StepResult:
    """Recompute the daily aggregates of the partitions silver changed since the last run
    (`derived`: computed series, left out of the factories' counts, `transforms.factory_daily`)."""
    began = time.perf_counter()
    result = StepResult("gold")
    if not io.table_exists(spark, paths.silver):
        result.skipped = "silver does not exist yet"
        return result
    watermark = io.read_watermark(spark, paths, "gold")
    silver = io.read_table(spark, paths.silver, transforms.SILVER_COLUMNS)
    changes = io.read_changes(spark, paths, watermark)
    if not changes:
        result.skipped = f"silver has changed nothing after ingest_seq {watermark}"
        return result
    top = max(int(row["seq"]) for row in changes)
    partitions = [(row["event_date"], row["factory_id"]) for row in changes]
    result.source_seq = top
    result.partitions = len(partitions)
    progress(f"gold: recomputing {len(partitions)} (event_date, factory_id) partitions")
    affected = silver.filter(io.partition_predicate(partitions, alias=None))
    # Aggregated once: machine-days are few (machines x metrics per day), so they are taken as
    # data, merged, and the factory-days are computed from them without reading silver again.
    machine_frame = transforms.machine_daily(affected)
    machine_days = spark.createDataFrame(machine_frame.collect(), machine_frame.schema)
    for uri, frame, keys in (
        (paths.machine_daily, machine_days, MACHINE_DAILY_KEYS),
        (
            paths.factory_daily,
            transforms.factory_daily(machine_days, derived),
            FACTORY_DAILY_KEYS,
        ),
    ):
        if io.table_exists(spark, uri):
            columns = [c for c in frame.columns if c not in keys]
            io.merge(
                spark,
                frame,
                uri,
                keys=keys,
                update_columns=columns,
                target_filter=io.partition_predicate(partitions),
            )
        else:
            io.append(frame, uri, partition_by=("event_date",))
    io.write_watermark(spark, paths, "gold", top)
    result.seconds = time.perf_counter() - began
    return result


# ------------------------------------------------------------------------------------- all


def run_all(
    spark: SparkSession,
    paths: io.LakePaths,
    rules: dict[str, QualityRule],
    *,
    settings: LakeSettings = LakeSettings(),
    progress: Progress = _nothing,
    full_listing: bool = False,
) -> list[StepResult]:
    """bronze -> silver -> gold (`full_listing`: bronze lists every landing prefix)."""
    results = [
        run_bronze(
            spark,
            paths,
            progress=progress,
            lateness_ms=settings.landing_lateness_ms,
            full_listing=full_listing,
        )
    ]
    results.append(run_silver(spark, paths, rules, settings=settings, progress=progress))
    results.append(
        run_gold(spark, paths, progress=progress, derived=transforms.derived_metrics(rules))
    )
    for step in results:
        log.info("lake job finished", extra=step.figures())
    return results
