"""Simulator throughput: readings generated per second, in memory and written to each format.

Pinned to one core (the target is 1M readings/s to Parquet on one core). The fleet is the
issue's example, 2 factories x 10 machines for 24 h, at a 1 s interval (8.6M readings).

    python bench/simulator.py [--hours 24] [--interval-ms 1000]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from iiot.catalog import load_catalog
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--interval-ms", type=int, default=1000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    catalog = load_catalog()
    config = FleetConfig(
        factories=2, machines_per_factory=10, hours=args.hours, interval_ms=args.interval_ms, seed=1
    )
    figures = {}

    began = time.perf_counter()
    readings = sum(len(chunk) for chunk in FleetSimulator(config, catalog).chunks())
    figures["in_memory_readings_per_s"] = readings / (time.perf_counter() - began)

    for formats in (("parquet",), ("jsonl",)):
        with tempfile.TemporaryDirectory() as directory:
            summary = write_simulation(
                FleetSimulator(config, catalog), Path(directory), formats=formats
            )
            size = sum(p.stat().st_size for p in Path(directory).glob("readings.*"))
        figures[f"{formats[0]}_readings_per_s"] = summary.readings_per_second
        figures[f"{formats[0]}_bytes_per_reading"] = size / summary.readings
        print(
            f"{formats[0]:8s} {summary.readings:,} readings, {summary.readings_per_second:,.0f}/s, "
            f"{size / summary.readings:.2f} bytes/reading",
            file=sys.stderr,
        )
    print(f"in memory {figures['in_memory_readings_per_s']:,.0f} readings/s", file=sys.stderr)
    print(json.dumps({"readings": readings, **{k: round(v, 2) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
