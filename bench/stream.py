"""Events per second through the Flink SQL rules on local PyFlink (the `.venv-flink` job).

The input is a simulated fleet written as JSON lines (one reading per line, the Flink source's
format, with the simulator's malformed lines mixed in). The job runs every rendered rule
(severity, rapid change over 60 s HOP windows sliding by 10 s) at parallelism 1, with a
watermark after every reading. Figures: wall time of the whole job including the JVM start,
the same for a 1-hour input (mostly fixed start-up cost), and events/s from their difference.

    python bench/stream.py [--hours 24] [--machines 10] [--factories 2]

The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from iiot.catalog import load_catalog
from kda_sql.flink_env import ensure_flink_env, run_rules
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation


def simulate(out: Path, factories: int, machines: int, hours: float) -> int:
    config = FleetConfig(factories=factories, machines_per_factory=machines, hours=hours, seed=1)
    write_simulation(FleetSimulator(config, load_catalog()), out, formats=("jsonl",))
    with (out / "readings.jsonl").open("rb") as lines:
        return sum(1 for _ in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--factories", type=int, default=2)
    parser.add_argument("--machines", type=int, default=10)
    args = parser.parse_args()
    ensure_flink_env()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = simulate(root / "small", args.factories, args.machines, 1.0)
        large = simulate(root / "large", args.factories, args.machines, args.hours)
        small_run = run_rules(root / "small" / "readings.jsonl", root / "out-small")
        large_run = run_rules(root / "large" / "readings.jsonl", root / "out-large")
    steady = (large - small) / max(large_run.seconds - small_run.seconds, 1e-9)
    figures = {
        "events": large,
        "anomalies": len(large_run.output_lines),
        "job seconds (incl. JVM start)": round(large_run.seconds, 1),
        "events/s (whole job)": round(large / large_run.seconds),
        "job seconds for 1 h input": round(small_run.seconds, 1),
        "events/s (after start-up)": round(steady),
    }
    for name, value in figures.items():
        print(f"{name:32} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
