"""The lake's step of `make demo`: land the simulated run as raw batches, build the lake on Sail.

The simulated readings reach the landing zone the two ways Firehose delivers them: the case
study's JSON lines (malformed payloads included) and the gateways' compact batches. The JSON
share is also uploaded as batches, and one batch file is delivered twice, so the run shows that
a batch and a reading land exactly once whatever the route.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from iiot.contract import ReadingColumns, SeriesKey
from iiot.wire import encode_batch
from local_platform.demo import DemoContext, Figures

BATCH_READINGS = 50_000
JSON_FILE_LINES = 20_000


def columns_from_arrow(table: Any) -> ReadingColumns:
    """Readings from an Arrow table in the simulator's layout (`simulator.arrow_table`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = ("factory_id", "machine_id", "sensor_id", "metric", "unit")
    keys = pa.table({name: table.column(name).cast(pa.string()) for name in names})
    joined = pc.binary_join_element_wise(*[keys.column(n) for n in names], "\x1f")
    uniques, inverse = np.unique(np.asarray(joined.to_pylist(), dtype=object), return_inverse=True)
    series = [SeriesKey(*str(u).split("\x1f")) for u in uniques]
    timestamps = table.column("timestamp").cast(pa.int64()).to_numpy()
    values = table.column("value").to_numpy()
    return ReadingColumns(
        series, inverse.astype(np.int32), timestamps.astype(np.int64), values.astype(np.float64)
    )


def land_simulation(
    simulation_dir: Path,
    landing_dir: Path,
    *,
    json_share: float = 0.05,
    batch_readings: int = BATCH_READINGS,
    seed: int = 0,
) -> dict[str, int]:
    """Write the simulated run into `landing_dir` as Firehose would: JSON-lines files and
    compact batch files (deterministic batch ids from `seed`)."""
    import pyarrow.parquet as pq

    from spark_jobs import io

    figures = {"json_files": 0, "json_lines": 0, "batch_files": 0, "batch_readings": 0}
    lines = (simulation_dir / "readings.jsonl").read_bytes().splitlines()
    json_lines = lines[: int(len(lines) * json_share)]
    for number, start in enumerate(range(0, len(json_lines), JSON_FILE_LINES)):
        chunk = b"\n".join(json_lines[start : start + JSON_FILE_LINES]) + b"\n"
        io.land_file(landing_dir, f"json/part-{number:05d}.jsonl", chunk)
        figures["json_files"] += 1
    figures["json_lines"] = len(json_lines)

    rng = np.random.default_rng(seed)
    columns = columns_from_arrow(pq.read_table(simulation_dir / "readings.parquet"))
    first_batch: bytes | None = None
    for number, start in enumerate(range(0, len(columns), batch_readings)):
        part = columns.take(slice(start, start + batch_readings))
        batch_id = uuid.UUID(bytes=rng.bytes(16))
        payload = encode_batch(part, batch_id=batch_id, producer="demo-gateway")
        io.land_file(landing_dir, f"batch/part-{number:05d}.iiotb", payload)
        first_batch = first_batch or payload
        figures["batch_files"] += 1
        figures["batch_readings"] += len(part)
    if first_batch is not None:  # a redelivery: same batch id, another file
        io.land_file(landing_dir, "batch/redelivered-00000.iiotb", first_batch)
        figures["batch_files"] += 1
    return figures


def lake_step(context: DemoContext) -> Figures:
    """Land the simulated run, then bronze -> silver -> gold on Sail, twice (the second run
    must change nothing)."""
    from spark_jobs import io, jobs
    from spark_jobs.engine import sail_session
    from spark_jobs.transforms import quality_rules

    lake_dir = context.work_dir / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)  # the demo builds its lake from scratch
    paths = io.LakePaths.from_root(lake_dir)
    landed = land_simulation(context.simulation_dir, io.local_path(paths.landing))
    steps = 4
    done = 0

    def progress(_message: str) -> None:
        nonlocal done
        done = min(done + 1, steps)
        context.progress("building the lake", done, steps)

    began = time.perf_counter()
    with sail_session() as spark:
        first = jobs.run_all(spark, paths, quality_rules(context.catalog), progress=progress)
        seconds = time.perf_counter() - began
        second = jobs.run_all(spark, paths, quality_rules(context.catalog))
    context.progress("building the lake", steps, steps)
    tables = {t.name: t.rows for t in io.describe_tables(paths) if t.exists}
    silver = first[1]
    readings_in = landed["json_lines"] + landed["batch_readings"]
    return {
        "landed files (json / batch)": f"{landed['json_files']} / {landed['batch_files']}",
        "readings landed (with duplicates)": readings_in,
        "bronze batches": tables.get("bronze.raw_batches", 0),
        "silver readings": tables.get("silver.readings", 0),
        "duplicates dropped": silver.duplicates,
        "quarantined": tables.get("silver.quarantine", 0),
        "quarantined by field": {f: n for f, n, _ in io.quarantine_summary(paths)},
        "gold machine-day-metric rows": tables.get("gold.machine_daily", 0),
        "gold factory-day rows": tables.get("gold.factory_daily", 0),
        "readings/s (bronze->gold)": round(readings_in / seconds) if seconds else 0,
        "second run": "no-op" if all(r.skipped for r in second) else "CHANGED TABLES",
        "lake": str(lake_dir),
    }
