"""Edge buffer throughput and wire size: the SensorBuffer against the case study's pattern.

On one core, side by side, with the same simulated input (JSON lists of one machine's five
readings per instant, as sensors publish them):

* SensorBuffer: validate (contract) + threshold checks (debounce/hysteresis) + durable store
  (SQLite WAL, group commit per micro-batch, synchronous=FULL), i.e. `Ingestor.process` on the
  micro-batches the ingest thread forms; also with compact batches as input.
* The case study's pattern: per payload `init_db()`, then per record a new connection, one
  INSERT, a commit and a close, plus its threshold check (no validation at all).

Wire size: the compact batches the uploader actually publishes (drained through the real
`Uploader`) against the case study's JSON batches of 100 records. A profile of the SensorBuffer
path follows. The last line is JSON.

    python bench/edge_buffer.py [--machines 100] [--minutes 10] [--seed-readings 1000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from sensor_buffer.config import BufferConfig
from sensor_buffer.ingest import Incoming, Ingestor
from sensor_buffer.store import Store
from sensor_buffer.thresholds import ThresholdChecker
from sensor_buffer.uploader import Uploader

from edge_runtime.transport import MemoryTransport
from iiot.catalog import load_catalog
from iiot.contract import ReadingColumns, Validator
from iiot.wire import encode_batch
from local_platform.simulator import FleetConfig, FleetSimulator

PAYLOADS_PER_MICRO_BATCH = 1_000  # about what the ingest loop gathers at commit_max_readings


def json_payloads(columns: ReadingColumns) -> list[bytes]:
    """One JSON list per machine and instant, in time order (as `local_platform.publisher`)."""
    readings = columns.to_readings()
    groups: dict[tuple[int, str], list[int]] = {}
    for position, reading in enumerate(readings):
        groups.setdefault((reading.timestamp, reading.machine_id), []).append(position)
    return [
        msgspec.json.encode([readings[p] for p in positions])
        for _, positions in sorted(groups.items())
    ]


def make_ingestor(directory: Path, catalog) -> Ingestor:  # type: ignore[no-untyped-def]
    store = Store(directory / "buffer.sqlite3", producer="F01/gateway", synchronous="FULL")
    checker = ThresholdChecker({n: m.edge for n, m in catalog.items()}, store.series.__getitem__)
    return Ingestor(store, Validator(catalog), checker)


def run_component(
    payloads: list[bytes], directory: Path, catalog
) -> tuple[float, float, int, Ingestor]:  # type: ignore[no-untyped-def]
    """(wall seconds, CPU seconds, readings stored, ingestor)."""
    ingestor = make_ingestor(directory, catalog)
    stored = 0
    cpu = time.process_time()
    began = time.perf_counter()
    for start in range(0, len(payloads), PAYLOADS_PER_MICRO_BATCH):
        items = [
            Incoming("factory/F01/readings", p, 0)
            for p in payloads[start : start + PAYLOADS_PER_MICRO_BATCH]
        ]
        stored += ingestor.process(items).stored
    return time.perf_counter() - began, time.process_time() - cpu, stored, ingestor


def run_seed(payloads: list[bytes], path: Path) -> tuple[float, float, int]:
    """The case study's lambda_handler without its upload: per record connect/insert/commit."""
    thresholds = {
        "temperature": {"min": 20, "max": 100},
        "vibration": {"max": 50},
        "pressure": {"min": 10, "max": 200},
    }
    done = 0
    cpu = time.process_time()
    began = time.perf_counter()
    for payload in payloads:
        event = json.loads(payload)
        conn = sqlite3.connect(path)  # init_db() on every event
        conn.execute(
            "CREATE TABLE IF NOT EXISTS sensor_data (timestamp INTEGER, sensor_id TEXT, "
            "machine_id TEXT, factory_id TEXT, metric_type TEXT, value REAL, unit TEXT, "
            "uploaded BOOLEAN DEFAULT 0)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS idx_uploaded ON sensor_data(uploaded)")
        conn.commit()
        conn.close()
        for data in event:
            conn = sqlite3.connect(path)  # save_locally()
            conn.execute(
                "INSERT INTO sensor_data (timestamp, sensor_id, machine_id, factory_id, "
                "metric_type, value, unit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    data["timestamp"],
                    data["sensor_id"],
                    data["machine_id"],
                    data["factory_id"],
                    data.get("metric_type", data.get("metric")),
                    data["value"],
                    data["unit"],
                ),
            )
            conn.commit()
            conn.close()
            limits = thresholds.get(
                data.get("metric_type", data.get("metric")), {}
            )  # check_anomaly
            _ = ("min" in limits and data["value"] < limits["min"]) or (
                "max" in limits and data["value"] > limits["max"]
            )
            done += 1
    return time.perf_counter() - began, time.process_time() - cpu, done


def drain_uploads(ingestor: Ingestor, directory: Path) -> tuple[int, int, int]:
    """Publish the whole buffer through the real Uploader; (bytes, readings, batches)."""
    config = BufferConfig(
        factory_id="F01",
        data_dir=directory,
        batch_linger_ms=0.001,
        max_publishes_per_s=1e9,
        max_bytes_per_s=1e12,
    )
    transport = MemoryTransport()
    uploader = Uploader(ingestor.store, transport.publish_cloud, config)
    while ingestor.store.backlog().readings or uploader.in_flight:
        uploader.step()
    uploader.step()
    batches = [p for topic, p in transport.cloud if topic == config.upload_topic]
    return sum(map(len, batches)), uploader.readings_acked, len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed-readings", type=int, default=1_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    catalog = load_catalog()
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    config = FleetConfig(
        factories=1,
        machines_per_factory=args.machines,
        hours=args.minutes / 60,
        interval_ms=1000,
        seed=1,
        start=start,
    )
    columns = ReadingColumns.concat(list(FleetSimulator(config, catalog).chunks()))
    payloads = json_payloads(columns)
    print(f"input: {len(columns):,} readings in {len(payloads):,} JSON payloads")

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        seconds, cpu_seconds, stored, ingestor = run_component(payloads, work / "json", catalog)
        rate = len(columns) / seconds
        cpu_rate = len(columns) / cpu_seconds
        print(
            f"SensorBuffer, JSON input:    {rate:>10,.0f} readings/s wall, {cpu_rate:,.0f} per "
            f"CPU second ({stored:,} stored, {ingestor.store.counters['quarantined']:,} "
            "quarantined)"
        )
        wire_bytes, wire_readings, wire_batches = drain_uploads(ingestor, work / "json")
        ingestor.store.close()

        batches = [
            encode_batch(columns.take(slice(i, i + 5_000))) for i in range(0, len(columns), 5_000)
        ]
        compact_seconds, compact_cpu, _, compact = run_component(batches, work / "compact", catalog)
        compact.store.close()
        compact_rate = len(columns) / compact_seconds
        print(
            f"SensorBuffer, compact input: {compact_rate:>10,.0f} readings/s wall, "
            f"{len(columns) / compact_cpu:,.0f} per CPU second"
        )

        seed_count = 0
        seed_payloads = []
        for payload in payloads:
            seed_payloads.append(payload)
            seed_count += payload.count(b'"timestamp"')
            if seed_count >= args.seed_readings:
                break
        seed_seconds, seed_cpu, seed_done = run_seed(seed_payloads, work / "seed.db")
        seed_rate = seed_done / seed_seconds
        print(
            f"case study per-record:       {seed_rate:>10,.0f} readings/s wall, "
            f"{seed_done / seed_cpu:,.0f} per CPU second ({seed_done:,} readings)"
        )

        profile = cProfile.Profile()
        profile.enable()
        run_component(payloads[: len(payloads) // 3], work / "profile", catalog)[3].store.close()
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
        print("profile of the SensorBuffer path (JSON input, by own time):")
        print("\n".join(line for line in text.getvalue().splitlines()[6:30] if line.strip()))

    readings = columns.to_readings()
    seed_batch_bytes = 0
    for i in range(0, len(readings), 100):  # the case study's upload: json.dumps of 100 records
        seed_batch_bytes += len(
            json.dumps(
                [
                    {
                        "timestamp": r.timestamp,
                        "sensor_id": r.sensor_id,
                        "machine_id": r.machine_id,
                        "factory_id": r.factory_id,
                        "metric_type": r.metric,
                        "value": r.value,
                        "unit": r.unit,
                    }
                    for r in readings[i : i + 100]
                ]
            )
        )
    wire = wire_bytes / max(wire_readings, 1)
    seed_wire = seed_batch_bytes / len(readings)
    print(
        f"wire: {wire:.2f} bytes/reading in {wire_batches} compact batches "
        f"vs {seed_wire:.1f} bytes/reading as the case study's JSON"
    )
    print(
        json.dumps(
            {
                "readings_per_s": round(rate),
                "seed_readings_per_s": round(seed_rate),
                "speedup": round(rate / seed_rate, 1),
                "wire_bytes_per_reading": round(wire, 2),
                "seed_wire_bytes_per_reading": round(seed_wire, 1),
                "cpu_readings_per_s": round(cpu_rate),
                "compact_input_readings_per_s": round(compact_rate),
                "load_average_1m": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
