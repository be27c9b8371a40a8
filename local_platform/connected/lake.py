"""The lake in a connected run: its past, `iiot lake run` on a schedule, and what it holds.

* `land_history` writes the fleet's history (the hours before the live start) into the landing
  zone as the delivery stream would have: the gateways' compact batches of valid readings,
  concatenated per object under the hour they arrived.
* `LakeSchedule` runs the real `iiot lake run` (Sail + Delta, incremental) every
  `plan.lake_every_s` wall seconds while the live run goes on, and once more at the end; each run
  is recorded with what silver held afterwards (for the sensor-to-silver latency).
* `landed` walks the landing zone's objects batch by batch; `silver_counts` and
  `quarantine_counts` read the tables with delta-rs (no engine needed).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from iiot.catalog import load_catalog
from iiot.contract import Validator
from iiot.wire import HEADER_SIZE, WireFormatError, encode_batch, read_header
from local_platform.simulator import FleetSimulator

HISTORY_PREFIX = "history"
BATCH_READINGS = 20_000  # the gateways' batchMaxReadings


def land_history(plan: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """The history hours as landed objects (one per factory and hour); valid readings only,
    as the gateways would have uploaded them."""
    from spark_jobs.io import land_file

    catalog = load_catalog()
    validator = Validator(catalog)
    simulator = FleetSimulator(plan.fleet, catalog)
    figures = {"objects": 0, "batches": 0, "readings": 0, "rejected_at_gateway": 0}
    total = plan.history_hours
    for hour, columns in enumerate(simulator.chunks(0, plan.first_live_chunk)):
        outcome = validator.validate_columns(columns)
        good = outcome.columns
        figures["rejected_at_gateway"] += len(columns) - len(good)
        start = plan.fleet.start_ms + hour * 3_600_000
        arrival = datetime.fromtimestamp(start / 1000, tz=UTC)
        for factory in plan.factory_ids:
            mask = np.array([k.factory_id == factory for k in good.series], dtype=bool)
            own = good.take(mask[good.series_index])
            parts = []
            for first in range(0, len(own), BATCH_READINGS):
                piece = own.take(slice(first, first + BATCH_READINGS))
                parts.append(
                    encode_batch(
                        piece,
                        batch_id=uuid.uuid5(
                            uuid.NAMESPACE_URL, f"history/{factory}/{hour}/{first}"
                        ),
                        producer=f"{factory}/history",
                        created_ms=start,
                    )
                )
                figures["batches"] += 1
                figures["readings"] += len(piece)
            if parts:
                land_file(
                    plan.landing_dir,
                    f"date={arrival:%Y-%m-%d}/hour={arrival:%H}/"
                    f"{HISTORY_PREFIX}-{factory}-{arrival:%Y-%m-%d-%H}",
                    b"".join(parts),
                )
                figures["objects"] += 1
        if progress:
            progress(hour + 1, total)
    return figures


@dataclass
class LakeRun:
    started: float
    finished: float
    exit_code: int
    silver_live_rows: int
    silver_max_ts: dict[str, int]
    log: str


@dataclass
class LakeSchedule:
    """`iiot lake run --job all` every `every_s` wall seconds in a thread of the runner."""

    lake_dir: Path
    log_dir: Path
    live_start_ms: int
    every_s: float
    runs: list[LakeRun] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lake-schedule", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:  # an ongoing run finishes first
            pass
        if self._thread is not None:
            self._thread.join(600)

    def terminate(self) -> None:
        """Stop an ongoing run (the runner is aborting)."""
        self._stop.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()

    def run_once(self, job: str = "all") -> LakeRun:
        with self._lock:
            began = time.time()
            number = len(self.runs) + 1
            log_path = self.log_dir / f"lake-run-{number:03d}.log"
            with log_path.open("wb") as log:
                # Our own interpreter running the project's command line; fixed argv.
                self.process = subprocess.Popen(  # noqa: S603
                    [
                        sys.executable,
                        "-m",
                        "local_platform.cli",
                        "--no-log-json",
                        "lake",
                        "run",
                        "--root",
                        str(self.lake_dir),
                        "--job",
                        job,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                code = self.process.wait()
                self.process = None
            rows, max_ts = silver_progress(self.lake_dir, self.live_start_ms)
            run = LakeRun(began, time.time(), code, rows, max_ts, str(log_path))
            self.runs.append(run)
            return run


# ------------------------------------------------------------------------------ reading it


def _table(uri: Path) -> Any | None:
    from deltalake import DeltaTable

    if not (uri / "_delta_log").is_dir():
        return None
    return DeltaTable(str(uri))


def silver_progress(lake_dir: Path, live_start_ms: int) -> tuple[int, dict[str, int]]:
    """Live rows in silver and the newest event time per factory."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = _table(lake_dir / "silver" / "readings")
    if table is None:
        return 0, {}
    data = table.to_pyarrow_dataset().to_table(
        columns=["factory_id", "timestamp"], filter=ds.field("timestamp") >= live_start_ms
    )
    latest: dict[str, int] = {}
    if data.num_rows:
        grouped = data.group_by("factory_id").aggregate([("timestamp", "max")])
        for factory, ts in zip(
            grouped.column("factory_id").to_pylist(),
            grouped.column("timestamp_max").to_pylist(),
            strict=True,
        ):
            latest[str(factory)] = int(ts)
    del pc
    return data.num_rows, latest


def silver_counts(lake_dir: Path, live_start_ms: int, live_end_ms: int) -> dict[str, Any]:
    """The live readings in silver: rows (of them, `derived_rows` of the series the platform
    computes), distinct (sensor, time) keys, per factory, and the history before the live span."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from iiot.catalog import load_catalog

    table = _table(lake_dir / "silver" / "readings")
    if table is None:
        return {
            "rows": 0,
            "derived_rows": 0,
            "distinct_keys": 0,
            "by_factory": {},
            "history_rows": 0,
        }
    dataset = table.to_pyarrow_dataset()
    live = (ds.field("timestamp") >= live_start_ms) & (ds.field("timestamp") < live_end_ms)
    data = dataset.to_table(columns=["factory_id", "sensor_id", "metric", "timestamp"], filter=live)
    keys = data.group_by(["sensor_id", "timestamp"]).aggregate([]).num_rows
    by_factory = Counter(data.column("factory_id").to_pylist())
    history_rows = dataset.count_rows(filter=ds.field("timestamp") < live_start_ms)
    derived = pa.array(sorted(load_catalog().derived), pa.string())
    return {
        "rows": data.num_rows,
        # rows of the series the platform computes (the predictor's failure_probability)
        "derived_rows": int(pc.sum(pc.is_in(data.column("metric"), derived)).as_py() or 0),
        "distinct_keys": keys,
        "by_factory": dict(sorted(by_factory.items())),
        "history_rows": history_rows,
        "outside_live_span": dataset.count_rows(filter=ds.field("timestamp") >= live_end_ms),
    }


def quarantine_counts(lake_dir: Path) -> dict[str, int]:
    """silver.quarantine rows by the field their reason names."""
    table = _table(lake_dir / "silver" / "quarantine")
    if table is None:
        return {}
    data = table.to_pyarrow_table(columns=["reason_field"])
    return dict(sorted(Counter(str(v) for v in data.column("reason_field").to_pylist()).items()))


def gold_counts(lake_dir: Path) -> dict[str, int]:
    counts = {}
    for name in ("machine_daily", "factory_daily"):
        table = _table(lake_dir / "gold" / name)
        counts[f"gold.{name}"] = 0 if table is None else table.to_pyarrow_dataset().count_rows()
    return counts


def landed(landing_dir: Path) -> dict[str, Any]:
    """The live objects of the landing zone, walked batch by batch (history objects apart):
    objects, batches and readings as landed, and the distinct batches and their readings."""
    objects = batches = readings = damaged = 0
    unique: dict[uuid.UUID, int] = {}
    for path in sorted(landing_dir.rglob("*")):
        if not path.is_file() or path.name.startswith((".", "_", HISTORY_PREFIX)):
            continue
        objects += 1
        content = path.read_bytes()
        offset = 0
        while offset < len(content):
            try:
                header = read_header(content[offset : offset + HEADER_SIZE])
            except WireFormatError:
                damaged += 1
                break
            batches += 1
            readings += header.readings
            unique.setdefault(header.batch_id, header.readings)
            offset += header.size
    return {
        "objects": objects,
        "batches": batches,
        "readings": readings,
        "unique_batches": len(unique),
        "unique_readings": sum(unique.values()),
        "unreadable_objects": damaged,
    }


def sensor_to_silver_s(runs: list[LakeRun], clock: Any, live_start_ms: int) -> dict[str, Any]:
    """Seconds from a reading's publication to the end of the lake run that put it in silver.

    Each run made visible, per factory, the readings between the newest event time silver held
    before it and the newest after it; the sensors publish a reading when the simulated clock
    reaches its timestamp (`clock.wall`). Those spans, sampled evenly and weighted by the rows
    each run added, give the distribution."""
    samples: list[tuple[float, int]] = []
    previous: dict[str, int] = {}
    previous_rows = 0
    for run in runs:
        added = run.silver_live_rows - previous_rows
        previous_rows = run.silver_live_rows
        spans = [
            (previous.get(factory, live_start_ms), newest)
            for factory, newest in run.silver_max_ts.items()
            if newest > previous.get(factory, live_start_ms)
        ]
        previous.update(run.silver_max_ts)
        if added <= 0 or not spans:
            continue
        weight = added / (len(spans) * 50)
        for first, last in spans:
            for i in range(50):
                ts = first + (last - first) * (i + 0.5) / 50
                samples.append((run.finished - clock.wall(ts), int(max(weight, 1))))
    if not samples:
        return {"p50": None, "p90": None}
    expanded = sorted(value for value, weight in samples for _ in range(weight))
    return {
        "p50": round(expanded[len(expanded) // 2], 2),
        "p90": round(expanded[int(len(expanded) * 0.9)], 2),
        "runs": len(runs),
    }
