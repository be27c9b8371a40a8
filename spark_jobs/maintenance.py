"""The maintenance system's records in the lake: landing -> silver -> gold `machine_day_kpis`.

The CMMS (a maintenance system's export job in the cloud, the simulated one in a connected run:
local_platform/connected/maintenance.py) lands JSON lines under `<lake root>/maintenance_landing/`,
one object per line with `record_type` `maintenance` (a completed job: maintenance_id,
factory_id, machine_id, kind preventive|corrective, started_at_ms, completed_at_ms, failure_id,
averted_failure) or `failure` (failure_id, factory_id, machine_id, failure_mode,
degradation_start_ms, failed_at_ms, repaired_at_ms). The tables are small (a job or a failure
per machine every few days), so each run rebuilds them whole from what landed:

* `silver/maintenance_records`, `silver/failures`: one row per job or failure id;
* `silver/cmms_rejects`: each line that is not such a record, with the reason (kept, not
  dropped);
* `gold/machine_day_kpis`: per factory, machine and UTC day of the observed window, the hours
  observed, the downtime (planned and unplanned, each stop split over the days it covers), the
  failures, the repairs begun that day and their hours, and availability, MTBF and MTTR, all
  computed by `spark_jobs.kpis` (the fleet report's arithmetic) inside `mapInArrow`.

The observed window is [start, end): by default from midnight (UTC) of the earliest record to
the latest moment any record reports (so a day still going on counts only its hours so far).
Every machine named by any record has a row for every day of the window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812  (the PySpark convention)

from spark_jobs import io, kpis

LANDING = "maintenance_landing"
MAINTENANCE_COLUMNS = (
    "maintenance_id string, factory_id string, machine_id string, kind string, "
    "started_at_ms bigint, completed_at_ms bigint, failure_id string, averted_failure boolean"
)
FAILURE_COLUMNS = (
    "failure_id string, factory_id string, machine_id string, failure_mode string, "
    "degradation_start_ms bigint, failed_at_ms bigint, repaired_at_ms bigint"
)
_RECORD_SCHEMA = (
    "record_type string, maintenance_id string, factory_id string, machine_id string, "
    "kind string, started_at_ms bigint, completed_at_ms bigint, failure_id string, "
    "averted_failure boolean, failure_mode string, degradation_start_ms bigint, "
    "failed_at_ms bigint, repaired_at_ms bigint"
)
KPI_COLUMNS = (
    "factory_id string, machine_id string, event_date date, observed_h double, downtime_h double, "
    "unplanned_h double, planned_h double, failures bigint, repairs bigint, repair_h double, "
    "availability double, mtbf_h double, mttr_h double"
)
_STOP_DAYS = "factory_id string, machine_id string, day_ms bigint, hours double, unplanned boolean"


@dataclass(frozen=True)
class MaintenancePaths:
    root: str

    @classmethod
    def of(cls, paths: io.LakePaths) -> MaintenancePaths:
        return cls(paths.root)

    @property
    def landing(self) -> str:
        return f"{self.root}/{LANDING}"

    @property
    def maintenance_records(self) -> str:
        return f"{self.root}/silver/maintenance_records"

    @property
    def failures(self) -> str:
        return f"{self.root}/silver/failures"

    @property
    def rejects(self) -> str:
        return f"{self.root}/silver/cmms_rejects"

    @property
    def machine_day_kpis(self) -> str:
        return f"{self.root}/gold/machine_day_kpis"

    def tables(self) -> list[str]:
        """Every Delta table this job writes (for `maintain`: compaction and vacuum)."""
        return [self.maintenance_records, self.failures, self.rejects, self.machine_day_kpis]

    def spectrum_tables(self) -> list[str]:
        """The tables the warehouse reads through symlink manifests (stacks/lake_stack.py)."""
        return [self.machine_day_kpis]


@dataclass
class MaintenanceResult:
    job: str = "maintenance"
    lines: int = 0
    maintenance_records: int = 0
    failures: int = 0
    rejected: int = 0
    machine_days: int = 0
    window: tuple[int, int] | None = None
    seconds: float = 0.0
    skipped: str | None = None

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# ------------------------------------------------------------------------------- transforms


def parse_records(lines: DataFrame) -> DataFrame:
    """Each landed line (`value`) as a record, with `reject_reason` set when it is none."""
    parsed = lines.select(
        F.col("value").alias("raw"), F.from_json("value", _RECORD_SCHEMA).alias("r")
    ).select("raw", "r.*")
    ids = {"maintenance": "maintenance_id", "failure": "failure_id"}
    times = {
        "maintenance": ("started_at_ms", "completed_at_ms"),
        "failure": ("failed_at_ms", "repaired_at_ms"),
    }
    reason = F.when(F.col("record_type").isNull(), F.lit("not a JSON record with record_type"))
    for kind, id_column in ids.items():
        first, last = times[kind]
        is_kind = F.col("record_type") == kind
        reason = reason.when(
            is_kind
            & (
                F.col(id_column).isNull()
                | F.col("factory_id").isNull()
                | F.col("machine_id").isNull()
                | F.col(first).isNull()
                | F.col(last).isNull()
            ),
            F.lit(f"{kind} without {id_column}, factory_id, machine_id, {first} or {last}"),
        ).when(is_kind & (F.col(last) < F.col(first)), F.lit(f"{kind} ends before it starts"))
    reason = reason.when(
        ~F.col("record_type").isin(*ids), F.lit("record_type is neither maintenance nor failure")
    )
    return parsed.withColumn("reject_reason", reason)


def _names(columns: str) -> list[str]:
    return [item.split()[0] for item in columns.split(",")]


def silver_tables(records: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(maintenance records, failures, rejects): one row per id, the first that landed."""
    good = records.filter(F.col("reject_reason").isNull())
    jobs = (
        good.filter(F.col("record_type") == "maintenance")
        .select(*_names(MAINTENANCE_COLUMNS))
        .dropDuplicates(["maintenance_id"])
    )
    failures = (
        good.filter(F.col("record_type") == "failure")
        .select(*_names(FAILURE_COLUMNS))
        .dropDuplicates(["failure_id"])
    )
    rejects = records.filter(F.col("reject_reason").isNotNull()).select("raw", "reject_reason")
    return jobs, failures, rejects


def default_window(jobs: DataFrame, failures: DataFrame) -> tuple[int, int] | None:
    """[midnight of the earliest record, latest moment any record reports), or None."""
    bounds = [
        jobs.agg(F.min("started_at_ms"), F.max("completed_at_ms")).first(),
        failures.agg(F.min("failed_at_ms"), F.max("repaired_at_ms")).first(),
    ]
    starts = [int(b[0]) for b in bounds if b is not None and b[0] is not None]
    ends = [int(b[1]) for b in bounds if b is not None and b[1] is not None]
    if not starts:
        return None
    first = min(starts)
    return first - first % kpis.DAY_MS, max(ends)


def machine_day_kpis(
    spark: SparkSession, jobs: DataFrame, failures: DataFrame, window: tuple[int, int]
) -> DataFrame:
    """Gold `machine_day_kpis` (KPI_COLUMNS) of the machines the records name, over `window`."""
    start, end = window

    def stop_days(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows: dict[str, list[Any]] = {name: [] for name in _names(_STOP_DAYS)}
            for job in batch.to_pylist():
                for day, hours in kpis.hours_by_day(
                    job["started_at_ms"], job["completed_at_ms"], start, end
                ):
                    rows["factory_id"].append(job["factory_id"])
                    rows["machine_id"].append(job["machine_id"])
                    rows["day_ms"].append(day)
                    rows["hours"].append(hours)
                    rows["unplanned"].append(job["kind"] == "corrective")
            yield pa.RecordBatch.from_pydict(rows, schema=_arrow_schema(_STOP_DAYS))

    day_ms = (F.col("day_ms") / 1000).cast("timestamp").cast("date")
    downtime = (
        jobs.select("factory_id", "machine_id", "kind", "started_at_ms", "completed_at_ms")
        .mapInArrow(stop_days, _STOP_DAYS)
        .groupBy("factory_id", "machine_id", "day_ms")
        .agg(
            F.sum("hours").alias("downtime_h"),
            F.sum(F.when(F.col("unplanned"), F.col("hours")).otherwise(0.0)).alias("unplanned_h"),
            F.sum(F.when(~F.col("unplanned"), F.col("hours")).otherwise(0.0)).alias("planned_h"),
        )
    )
    in_window = (F.col("at") >= start) & (F.col("at") < end)
    day_of = (F.col("at") - F.col("at") % kpis.DAY_MS).alias("day_ms")
    failed = (
        failures.withColumn("at", F.col("failed_at_ms"))
        .filter(in_window)
        .groupBy("factory_id", "machine_id", day_of)
        .agg(F.count("*").alias("failures"))
    )
    repaired = (
        jobs.filter(F.col("kind") == "corrective")
        .withColumn("at", F.col("started_at_ms"))
        .filter(in_window)
        .groupBy("factory_id", "machine_id", day_of)
        .agg(
            F.count("*").alias("repairs"),
            F.sum((F.col("completed_at_ms") - F.col("started_at_ms")) / kpis.HOUR_MS).alias(
                "repair_h"
            ),
        )
    )
    machines = (
        jobs.select("factory_id", "machine_id")
        .unionByName(failures.select("factory_id", "machine_id"))
        .distinct()
    )
    days = [(day, hours) for day, hours in kpis.hours_by_day(start, end, start, end) if hours > 0]
    calendar = spark.createDataFrame(days, "day_ms bigint, observed_h double")
    keys = ["factory_id", "machine_id", "day_ms"]
    facts = (
        machines.crossJoin(calendar)
        .join(downtime, keys, "left")
        .join(failed, keys, "left")
        .join(repaired, keys, "left")
        .select(
            "factory_id",
            "machine_id",
            "day_ms",
            "observed_h",
            *(
                F.coalesce(F.col(c), F.lit(0.0)).alias(c)
                for c in ("downtime_h", "unplanned_h", "planned_h", "repair_h")
            ),
            *(
                F.coalesce(F.col(c), F.lit(0)).cast("bigint").alias(c)
                for c in ("failures", "repairs")
            ),
        )
    )
    return facts.mapInArrow(_with_kpis, _KPI_FACTS).select(
        "factory_id", "machine_id", day_ms.alias("event_date"), *_names(KPI_COLUMNS)[3:]
    )


_KPI_FACTS = (
    "factory_id string, machine_id string, day_ms bigint, observed_h double, downtime_h double, "
    "unplanned_h double, planned_h double, failures bigint, repairs bigint, repair_h double, "
    "availability double, mtbf_h double, mttr_h double"
)


def _with_kpis(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The KPI columns of each machine-day, by the shared arithmetic."""
    for batch in batches:
        rows = batch.to_pylist()
        for row in rows:
            row["availability"] = kpis.availability(row["observed_h"], row["downtime_h"])
            row["mtbf_h"] = kpis.mtbf_h(row["observed_h"], row["downtime_h"], row["failures"])
            row["mttr_h"] = kpis.mttr_h(row["repair_h"], row["repairs"])
        yield pa.RecordBatch.from_pylist(rows, schema=_arrow_schema(_KPI_FACTS))


def _arrow_schema(columns: str) -> pa.Schema:
    types = {
        "string": pa.string(),
        "bigint": pa.int64(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
    }
    return pa.schema([(n, types[t]) for n, t in (c.split() for c in columns.split(","))])


# ------------------------------------------------------------------------------------ job


def run_maintenance(
    spark: SparkSession,
    paths: io.LakePaths,
    *,
    window: tuple[int, int] | None = None,
) -> MaintenanceResult:
    """Rebuild silver maintenance_records, failures, cmms_rejects and gold machine_day_kpis
    from every landed CMMS file; `window` [start_ms, end_ms) defaults to the records' span."""
    began = time.perf_counter()
    where = MaintenancePaths.of(paths)
    result = MaintenanceResult()
    if not _has_landed(spark, where.landing):
        result.skipped = f"nothing landed under {where.landing}"
        return result
    lines = spark.read.text(f"{where.landing}/*.jsonl").filter(F.trim("value") != "")
    records = parse_records(lines)
    jobs, failures, rejects = (
        spark.createDataFrame(frame.collect(), frame.schema)  # small: taken as data once
        for frame in silver_tables(records)
    )
    io.overwrite(jobs, where.maintenance_records)
    io.overwrite(failures, where.failures)
    io.overwrite(rejects, where.rejects)
    result.maintenance_records, result.failures = jobs.count(), failures.count()
    result.rejected = rejects.count()
    result.lines = records.count()
    result.window = window or default_window(jobs, failures)
    if result.window is not None:
        gold = machine_day_kpis(spark, jobs, failures, result.window)
        io.overwrite(gold, where.machine_day_kpis, partition_by=("event_date",))
        result.machine_days = gold.count()
    result.seconds = time.perf_counter() - began
    return result


def _has_landed(spark: SparkSession, landing: str) -> bool:
    if landing.startswith("file://"):
        folder = io.local_path(landing)
        return folder.is_dir() and any(folder.glob("*.jsonl"))
    try:
        return bool(spark.read.text(f"{landing}/*.jsonl").limit(1).count())
    except Exception:  # no such prefix: the engines raise different classes
        return False
