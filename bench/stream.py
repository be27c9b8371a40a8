"""Events per second through the Flink SQL rules on local PyFlink (the `.venv-flink` job), from
JSON rows and from compact batches, side by side; and the telemetry stream's size and price at
1M readings/s.

The input is a simulated fleet, written twice with the same readings in the same (event-time)
order: as JSON lines (one reading per line, the simulator's malformed lines mixed in) and as
compact batches of at most `--batch-readings` readings (one base64 batch per line), which the
`iiot-batch` format (`kda_sql/decoder`) decodes inside the source, as the deployed application
decodes the telemetry stream. Each job runs every rendered rule (severity, rapid change over
60 s HOP windows sliding by 10 s) at parallelism 1 (one task slot), heap state, a watermark
every 200 ms as the deployed application emits them (`--per-reading-watermark`: after every
reading, as the tests do). Each is run on a 1-hour input and on the whole input; events/s after
start-up is the difference in readings over the difference in job seconds (the JVM start,
planning and submission cost the same in both), so `decode_rules_events_per_s` is decode +
rules on one slot after JVM start, and `json_rules_events_per_s` the JSON source's figure from
the same run. Wall-clock: the machine's load average is printed with them. The whole input is
72 simulated hours by default (2.58M readings; it was 24 h): the start-up's jitter (a second or
two between two JVMs) weighs a third as much, where at 24 h and 150K/s the two jobs differ by
only 5.5 s.

CPU per reading, which load disturbs far less than the wall clock: a sampler reads the Flink
JVM's threads' CPU time from /proc while each job runs (every thread but the JIT compilers,
whose work is start-up cost that the larger input only spreads further); the larger input's
extra CPU over its extra readings is `decode_rules_cpu_us_per_reading` (and
`json_rules_cpu_us_per_reading`), `decode_rules_events_per_cpu_s` its inverse: what one fully
busy vCPU (a KPU's, one slot) would decode and judge per second.

Kinesis at 1M readings/s: the shards `config.environments.size_stream` gives for prod's
workload (1M readings/s in the gateways' batches, their measured wire size), priced with
`config/prices.yaml` (shard-hours and PUT payload units, its `checked_on` date), against the
source design's 100 shards at $43,200 a month.

    python bench/stream.py [--hours 72] [--machines 10] [--factories 2] [--batch-readings 20000]
                           [--no-decode-only] [--no-copying] [--rocksdb] [--repeat 1]
                           [--per-reading-watermark] [--sql-dir kda_sql/sql]

Decode only (`json_decode_only_events_per_s`, `batches_decode_only_events_per_s`): the same
sources (format, event time, watermark) into a filter that keeps nothing, no rules. `--rocksdb`
adds the rules on RocksDB state with 60 s checkpoints, as Managed Flink runs them
(`*_rules_rocksdb_events_per_s`). Copying (`*_rules_copying_events_per_s`, skipped with
`--no-copying`): the rules with `pipeline.object-reuse` off, Flink's default, which
`kda_sql/runner.py` turns on: the baseline of that option, side by side.

The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iiot.catalog import load_catalog
from iiot.wire import encode_batch
from kda_sql.flink_env import FlinkRun, decoder_jar, ensure_flink_env, run_rules
from kda_sql.generate import DEAD_LETTER_FILE, RENDERED_DIR, TABLE_FILES
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

ROOT = Path(__file__).resolve().parents[1]
SEED_KINESIS_MONTHLY_USD = 43_200  # the source design: 100 shards
SEED_KINESIS_SHARDS = 100
# Decode only: the same source (format, event time, watermark), every row through a filter
# that holds none of them, no rules.
DECODE_ONLY_SQL = """INSERT INTO anomalies
SELECT factory_id, machine_id, metric, 'READING', 'INFO', `value`, 0.0, `timestamp`, 'bench',
  sensor_id, 'RAISED', unit
FROM readings
WHERE event_time < TO_TIMESTAMP_LTZ(0, 3)
"""
ROCKSDB = {  # Managed Flink's state backend and checkpoint interval
    "flink.state.backend.type": "rocksdb",
    "flink.execution.checkpointing.interval": "60 s",
}
COPYING = {"flink.pipeline.object-reuse": "false"}  # Flink's default; the runner turns it on
# Watermarks as the deployed application emits them: every 200 ms (Flink's
# `pipeline.auto-watermark-interval` default; the runner sets none on the service). The tests and
# `run_rules` emit one after every reading, so that which readings are late does not depend on
# timing; `--per-reading-watermark` measures that.
PRODUCTION_WATERMARKS = {"watermark.interval.ms": "200"}
_JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # /proc comm: 15 characters


def _descendants(root: int) -> list[int]:
    """The processes below `root` (the runner and the JVM it starts), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _threads_cpu(pid: int, clock_ticks: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid` but the JIT compilers'."""
    seconds: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return seconds
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if stat[stat.find("(") + 1 : stat.rfind(")")] in _JIT_THREADS:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / clock_ticks
    return seconds


def with_cpu_seconds(job: Callable[[], FlinkRun]) -> tuple[FlinkRun, float]:
    """Run `job` and return its result and the CPU seconds its processes' threads used (JIT
    compilers excepted), sampled from /proc every 0.1 s (a thread's last 0.1 s may be missed:
    far below the differences compared)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[int, int], float] = {}
    done = threading.Event()

    def sample() -> None:
        pids: list[int] = []
        for tick in itertools.count():
            if done.is_set():
                return
            if tick % 10 == 0:  # the processes rarely change: look them up once a second
                pids = _descendants(os.getpid())
            for pid in pids:
                for tid, cpu in _threads_cpu(pid, ticks).items():
                    seen[pid, tid] = max(seen.get((pid, tid), 0.0), cpu)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = job()
    finally:
        done.set()
        sampler.join()
    return result, sum(seen.values())


def decode_only_sql(folder: Path, rendered: Path = RENDERED_DIR) -> Path:
    """The rendered tables and dead-letter route, and `DECODE_ONLY_SQL` instead of the rules."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*TABLE_FILES, DEAD_LETTER_FILE):
        if name != "02_valid_readings_view.sql":
            (folder / name).write_text((rendered / name).read_text())
    (folder / "10_every_reading.sql").write_text(DECODE_ONLY_SQL)
    return folder


@dataclass
class Input:
    json_lines: int = 0  # readings plus the simulator's malformed lines
    readings: int = 0  # in the batches
    batches: int = 0
    batch_bytes: int = 0


def simulate(out: Path, factories: int, machines: int, hours: float, batch_readings: int) -> Input:
    """The fleet as `readings.jsonl` and as `batches.b64` (same readings, same order)."""
    config = FleetConfig(factories=factories, machines_per_factory=machines, hours=hours, seed=1)
    catalog = load_catalog()
    write_simulation(FleetSimulator(config, catalog), out, formats=("jsonl",))
    made = Input()
    with (out / "batches.b64").open("wb") as lines:
        for columns in FleetSimulator(config, catalog).chunks():  # the same seed, same readings
            ordered = columns.take(np.argsort(columns.timestamp, kind="stable"))
            for start in range(0, len(ordered), batch_readings):
                piece = ordered.take(slice(start, start + batch_readings))
                payload = encode_batch(piece)
                lines.write(base64.b64encode(payload) + b"\n")
                made.readings += len(piece)
                made.batches += 1
                made.batch_bytes += len(payload)
    with (out / "readings.jsonl").open("rb") as jsonl:
        made.json_lines = sum(1 for _ in jsonl)
    return made


def cpu_us_per_event(events: tuple[int, int], cpu: list[tuple[float, float]]) -> float:
    """CPU microseconds per event after start-up (the larger input's extra CPU over its extra
    events), the median over the repetitions."""
    return statistics.median(
        (large - small) / (events[1] - events[0]) * 1e6 for small, large in cpu
    )


def _rate(events: tuple[int, int], small: FlinkRun, large: FlinkRun) -> float | None:
    """The larger input's extra events over its extra seconds; None when it took no longer than
    the small one (a loaded machine's noise swamped the difference: no rate can be read)."""
    extra = large.seconds - small.seconds
    return (events[1] - events[0]) / extra if extra > 0 else None


def steady_rate(events: tuple[int, int], runs: list[tuple[FlinkRun, FlinkRun]]) -> int | None:
    """Events per second after start-up: the larger input's extra events over its extra time,
    the median over the repetitions that give one (None if none does)."""
    rates = [r for small, large in runs if (r := _rate(events, small, large)) is not None]
    return round(statistics.median(rates)) if rates else None


def each_rate(events: tuple[int, int], runs: list[tuple[FlinkRun, FlinkRun]]) -> list[int | None]:
    return [None if (r := _rate(events, a, b)) is None else round(r) for a, b in runs]


def kinesis_at_1m_per_s() -> dict[str, object]:
    """Shards (by records and by bytes) and the monthly price of the telemetry stream at
    prod's 1M readings/s: the environment's own sizing (`size_stream`) and cost model
    (`iiot cost --env prod`: shard-hours, PUT payload units, retention, Flink's enhanced
    fan-out consumer and its data), at `config/prices.yaml`'s unit prices."""
    from config.environments import environments
    from local_platform.report.cost import estimate_environment, load_prices

    env = environments()["prod"]
    workload = env.workload
    sizing = env.stream_sizing()
    estimate = estimate_environment("prod")
    telemetry = [
        line
        for line in estimate.lines
        if line.service == "Kinesis" and line.item.startswith("telemetry stream")
    ]
    book = load_prices()
    keys = sorted({line.price_key for line in telemetry})
    return {
        "kinesis_shards_for_1M_per_s": sizing.shards,
        "kinesis_shards_by_records": round(sizing.shards_by_records, 2),
        "kinesis_shards_by_bytes_in": round(sizing.shards_by_bytes_in, 2),
        "kinesis_shards_by_bytes_out": round(sizing.shards_by_bytes_out, 2),
        "kinesis_monthly_usd_for_1M_per_s": round(sum(line.usd_month for line in telemetry), 2),
        "kinesis_monthly_lines": {line.item: round(line.usd_month, 2) for line in telemetry},
        "kinesis_workload": {
            "readings_per_s": workload.readings_per_second,
            "readings_per_batch": workload.readings_per_batch,
            "bytes_per_reading": workload.bytes_per_reading,
            "headroom": workload.headroom,
        },
        "kinesis_unit_prices": {key: book.usd(key) for key in keys},
        "kinesis_prices_checked_on": book.checked_on,
        "kinesis_prices_region": estimate.region,
        "seed_kinesis_shards": SEED_KINESIS_SHARDS,
        "seed_kinesis_monthly_usd": SEED_KINESIS_MONTHLY_USD,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=72.0)
    parser.add_argument("--factories", type=int, default=2)
    parser.add_argument("--machines", type=int, default=10)
    parser.add_argument("--batch-readings", type=int, default=20_000)
    parser.add_argument(
        "--no-decode-only", action="store_true", help="skip the decode-only (no rules) runs"
    )
    parser.add_argument(
        "--sql-dir", type=Path, default=RENDERED_DIR,
        help="the rendered rules to run (default: kda_sql/sql)",
    )  # fmt: skip
    parser.add_argument(
        "--no-copying", action="store_true",
        help="skip the rules with pipeline.object-reuse off (Flink's default)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1, help="repetitions (figures: the median of each)"
    )
    parser.add_argument(
        "--per-reading-watermark", action="store_true",
        help="a watermark after every reading (the tests' setting) instead of every 200 ms",
    )  # fmt: skip
    parser.add_argument(
        "--rocksdb", action="store_true", help="also run the rules on RocksDB state (Managed "
        "Flink's backend) with 60 s checkpoints"
    )  # fmt: skip
    args = parser.parse_args()
    ensure_flink_env()
    jar = decoder_jar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = simulate(root / "small", args.factories, args.machines, 1.0, args.batch_readings)
        large = simulate(root / "large", args.factories, args.machines, args.hours,
                         args.batch_readings)  # fmt: skip
        rules = args.sql_dir
        watermarks: dict[str, str] = {} if args.per_reading_watermark else PRODUCTION_WATERMARKS
        variants: dict[str, tuple[Path | None, dict[str, str]]] = {"rules": (rules, watermarks)}
        if not args.no_decode_only:
            variants["decode_only"] = (
                decode_only_sql(root / "decode-only-sql", rules),
                watermarks,
            )
        if not args.no_copying:
            variants["rules_copying"] = (rules, {**watermarks, **COPYING})
        if args.rocksdb:
            variants["rules_rocksdb"] = (rules, {**watermarks, **ROCKSDB})
        runs: dict[tuple[str, str], list[tuple[FlinkRun, FlinkRun]]] = {}
        cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeat):
            for variant, (sql_dir, extra) in variants.items():
                for kind in ("json", "batches"):  # each pair small then large, interleaved
                    source = "readings.jsonl" if kind == "json" else "batches.b64"
                    (small_run, small_cpu), (large_run, large_cpu) = (
                        with_cpu_seconds(
                            functools.partial(
                                run_rules,
                                root / size / source,
                                root / f"out-{variant}-{kind}-{size}",
                                sql_dir=sql_dir,
                                extra_properties=extra,
                                batches=kind == "batches",
                                jar=jar,
                            )
                        )
                        for size in ("small", "large")
                    )
                    runs.setdefault((variant, kind), []).append((small_run, large_run))
                    cpu.setdefault((variant, kind), []).append((small_cpu, large_cpu))
    json_runs, batch_runs = runs["rules", "json"], runs["rules", "batches"]
    last_json, last_batches = json_runs[-1], batch_runs[-1]
    json_events = (small.json_lines, large.json_lines)
    batch_events = (small.readings, large.readings)
    figures: dict[str, object] = {
        "events": large.json_lines,
        "readings_in_batches": large.readings,
        "anomalies": len(last_json[1].output_lines),
        "anomalies_from_batches": len(last_batches[1].output_lines),
        "dead_letters_from_batches": len(last_batches[1].dead_letter_lines),
        "job seconds (incl. JVM start)": round(last_json[1].seconds, 1),
        "events/s (whole job)": round(large.json_lines / last_json[1].seconds),
        "job seconds for 1 h input": round(last_json[0].seconds, 1),
        "events/s (after start-up)": steady_rate(json_events, json_runs),
        "json_rules_events_per_s": steady_rate(json_events, json_runs),
        "decode_rules_events_per_s": steady_rate(batch_events, batch_runs),
        "batch job seconds (incl. JVM start)": round(last_batches[1].seconds, 1),
        "batch job seconds for 1 h input": round(last_batches[0].seconds, 1),
        "repetitions": args.repeat,
        "json_rules_events_per_s_each": each_rate(json_events, json_runs),
        "decode_rules_events_per_s_each": each_rate(batch_events, batch_runs),
        "decode_rules_cpu_us_per_reading": round(
            cpu_us_per_event(batch_events, cpu["rules", "batches"]), 2
        ),
        "decode_rules_events_per_cpu_s": round(
            1e6 / cpu_us_per_event(batch_events, cpu["rules", "batches"])
        ),
        "json_rules_cpu_us_per_reading": round(
            cpu_us_per_event(json_events, cpu["rules", "json"]), 2
        ),
    }
    for variant in variants:
        if variant == "rules":
            continue
        figures[f"json_{variant}_events_per_s"] = steady_rate(json_events, runs[variant, "json"])
        figures[f"batches_{variant}_events_per_s"] = steady_rate(
            batch_events, runs[variant, "batches"]
        )
        figures[f"json_{variant}_cpu_us_per_reading"] = round(
            cpu_us_per_event(json_events, cpu[variant, "json"]), 2
        )
        figures[f"batches_{variant}_cpu_us_per_reading"] = round(
            cpu_us_per_event(batch_events, cpu[variant, "batches"]), 2
        )
    figures.update(
        {
            "bench_batches": large.batches,
            "bench_batch_bytes_per_reading": round(large.batch_bytes / large.readings, 2),
            "load_average_1m": round(os.getloadavg()[0], 1),
            "watermark_interval_ms": int(watermarks.get("watermark.interval.ms", "0")),
            **kinesis_at_1m_per_s(),
        }
    )
    for name, value in figures.items():
        print(f"{name:36} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
