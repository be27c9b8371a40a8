"""Lake benchmark: bronze -> silver -> gold on Sail against the seeds' job logic, same engine.

1. Simulate `--readings` readings (default 10M) plus 1% more, and land them the way gateways
   upload them (compact batches of 100K readings; landing is Firehose's work, not timed).
2. Full run: our incremental jobs on the first 10M (bronze -> silver -> gold).
3. Seeds' logic on the same bronze and engine: decode everything, filter, features, gold,
   `mode("overwrite")` of every table (its cost grows with history, whatever changed).
4. Incremental run: 1% new readings land; our jobs again; then the seeds' logic again.

The last line is JSON: readings_per_s (ours, full run), seed_readings_per_s (seeds' full run),
incremental_fraction_of_full (our incremental run's time over our full run's),
silver_bytes_per_reading (silver's data files over its rows, after both runs), and the same
comparison in CPU seconds of this process and its children (Sail runs in it), which other work on
a shared machine disturbs far less than wall-clock time: cpu_readings_per_s, seed_cpu_readings_per_s
and cpu_ratio_to_seed (ours per reading against the seeds', > 1 is faster); load_average: the
machine's 1-minute load average before the first timed run and after the last.

    .venv/bin/python bench/lake.py [--readings 10000000] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from iiot.catalog import load_catalog
from iiot.contract import ReadingColumns
from iiot.wire import encode_batch
from local_platform.simulator import FleetConfig, FleetSimulator
from spark_jobs import io, jobs, transforms
from spark_jobs.engine import sail_session

BATCH_READINGS = 100_000
INTERVAL_MS = 10_000


def simulate(total: int, seed: int) -> ReadingColumns:
    """About `total` readings from 4 factories x 25 machines x 5 sensors every 10 s."""
    series = 4 * 25 * 5
    hours = total / (series * 3_600_000 / INTERVAL_MS) * 1.03  # dropouts and failures
    config = FleetConfig(
        factories=4, machines_per_factory=25, hours=hours, interval_ms=INTERVAL_MS, seed=seed
    )
    simulator = FleetSimulator(config, load_catalog())
    columns = ReadingColumns.concat(list(simulator.chunks()))
    return columns.take(slice(0, total))


def land(paths: io.LakePaths, columns: ReadingColumns, prefix: str, rng: Any) -> int:
    landing = io.local_path(paths.landing)
    files = 0
    for start in range(0, len(columns), BATCH_READINGS):
        part = columns.take(slice(start, start + BATCH_READINGS))
        payload = encode_batch(part, batch_id=uuid.UUID(bytes=rng.bytes(16)), producer="bench")
        io.land_file(landing, f"batch/{prefix}-{files:05d}.iiotb", payload)
        files += 1
    return files


def seed_job(spark: Any, paths: io.LakePaths, rules: dict[str, Any]) -> None:
    """The seeds' job logic, with its frame repaired so that it does the same work: everything
    is re-read, recomputed and written with `mode("overwrite")` on every run."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    bronze = io.read_table(spark, paths.bronze)
    raw = transforms.decode_payloads(bronze).filter(F.col("reject_reason").isNull())
    in_range = None
    for metric, rule in rules.items():  # the seeds filter hard-coded ranges
        term = (F.col("metric") == metric) & F.col("value").between(rule.min, rule.max)
        in_range = term if in_range is None else in_range | term
    processed = transforms.with_time_dimensions(raw.filter(in_range))
    window = Window.partitionBy("machine_id", "metric").orderBy("timestamp").rowsBetween(-100, 0)
    processed = (
        processed.withColumn("rolling_avg", F.avg("value").over(window))
        .withColumn("rolling_std", F.stddev("value").over(window))
        .withColumn(
            "anomaly",
            F.when(
                F.abs(F.col("value") - F.col("rolling_avg")) > 3 * F.col("rolling_std"), 1
            ).otherwise(0),
        )
    )
    silver_uri = paths.root + "/seed/silver"
    io.overwrite(processed, silver_uri, partition_by=("event_date", "factory_id"))
    silver = io.read_table(spark, silver_uri)
    machine = silver.groupBy("machine_id", "event_date", "metric").agg(
        F.avg("value").alias("avg_value"),
        F.max("value").alias("max_value"),
        F.stddev("value").alias("std_value"),
        F.sum("anomaly").alias("anomaly_count"),
        F.count("*").alias("reading_count"),
    )
    io.overwrite(machine, paths.root + "/seed/machine_metrics", partition_by=("event_date",))
    factory = silver.groupBy("factory_id", "event_date").agg(
        F.count("*").alias("total_readings"),
        F.count("machine_id").alias("active_machines"),  # the seeds' defect, kept as it was
        F.sum("anomaly").alias("total_anomalies"),
    )
    io.overwrite(factory, paths.root + "/seed/factory_metrics", partition_by=("event_date",))


CPU: dict[str, float] = {}


def cpu_seconds() -> float:
    """User and system CPU time of this process (Sail's server included) and its children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def silver_file_bytes(paths: io.LakePaths) -> int:
    """The size of silver's current data files (its Parquet, whatever the codec)."""
    from deltalake import DeltaTable

    sizes = DeltaTable(paths.silver).get_add_actions(flatten=True).column("size_bytes")
    return sum(int(size) for size in sizes.to_pylist())


def timed(label: str, action: Any) -> float:
    began, began_cpu = time.perf_counter(), cpu_seconds()
    action()
    seconds = time.perf_counter() - began
    CPU[label] = cpu_seconds() - began_cpu
    print(f"{label}: {seconds:.1f} s ({CPU[label]:.1f} CPU s)", file=sys.stderr, flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="iiot-bench-lake-"))
    shutil.rmtree(work / "lake", ignore_errors=True)
    paths = io.LakePaths.from_root(work / "lake")
    increment = max(args.readings // 100, 1)
    began = time.perf_counter()
    columns = simulate(args.readings + increment, args.seed)
    order = np.argsort(columns.timestamp, kind="stable")
    columns = columns.take(order)
    rng = np.random.default_rng(args.seed)
    full_part = columns.take(slice(0, args.readings))
    new_part = columns.take(slice(args.readings, args.readings + increment))
    files = land(paths, full_part, "full", rng)
    print(
        f"simulated and landed {len(full_part):,} readings in {files} batches "
        f"({time.perf_counter() - began:.0f} s, not timed)",
        file=sys.stderr,
    )
    rules = transforms.quality_rules(load_catalog())
    figures: dict[str, Any] = {"readings": len(full_part), "new_readings": len(new_part)}
    load_before = os.getloadavg()[0]
    with sail_session() as spark:
        full = timed("ours, full run", lambda: jobs.run_all(spark, paths, rules))
        seed_full = timed("seeds' logic, full run", lambda: seed_job(spark, paths, rules))
        land(paths, new_part, "new", rng)
        incremental = timed("ours, +1% new data", lambda: jobs.run_all(spark, paths, rules))
        seed_incremental = timed("seeds' logic, +1%", lambda: seed_job(spark, paths, rules))
        noop = timed("ours, nothing new", lambda: jobs.run_all(spark, paths, rules))
    load_after = os.getloadavg()[0]
    tables = {t.name: t.rows for t in io.describe_tables(paths) if t.exists}
    silver_bytes = silver_file_bytes(paths)
    silver_bytes_per_reading = silver_bytes / max(tables.get("silver.readings") or 0, 1)
    figures.update(
        full_seconds=round(full, 2),
        seed_full_seconds=round(seed_full, 2),
        incremental_seconds=round(incremental, 2),
        seed_incremental_seconds=round(seed_incremental, 2),
        noop_seconds=round(noop, 2),
        silver_rows=tables.get("silver.readings"),
        silver_bytes=silver_bytes,
        cpu_seconds={label: round(value, 2) for label, value in CPU.items()},
        quarantined=tables.get("silver.quarantine", 0),
    )
    print(json.dumps(figures), file=sys.stderr)
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "readings_per_s": round(len(full_part) / full),
                "seed_readings_per_s": round(len(full_part) / seed_full),
                "incremental_fraction_of_full": round(incremental / full, 4),
                "silver_bytes_per_reading": round(silver_bytes_per_reading, 2),
                "cpu_readings_per_s": round(len(full_part) / CPU["ours, full run"]),
                "seed_cpu_readings_per_s": round(len(full_part) / CPU["seeds' logic, full run"]),
                "cpu_ratio_to_seed": round(
                    CPU["seeds' logic, full run"] / CPU["ours, full run"], 3
                ),
                "load_average": [round(load_before, 2), round(load_after, 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
