"""The edge path under poison: throughput clean and with 10% poison payloads, and the peak memory
one payload can cost.

* Throughput: the real `Ingestor` and `Store` (SQLite WAL, `synchronous=FULL`, one core), fed
  simulated sensor payloads (JSON lists of one machine's five readings per instant) in the
  micro-batches the ingest loop forms (`commitMaxReadings`, `ingest.micro_batch_share`). The
  poisoned run is the same good payloads with one poison after every nine (10% of payloads),
  cycling through the shared corpus (tests/poison.py): its known poisons that are not bombs
  (invalid UTF-8, deep nesting, damaged, truncated and miscounted batches, garbage, a list
  with bad items) and the shadow copies. The bombs (the 8 MB list, a 200K-number list, zstd
  bombs, a header announcing 4 billion readings) cost in proportion to their size or to a
  limit, not to a reading: a second poisoned run cycles through every known poison, bombs
  included, and each kind's cost per payload is printed. Each copy of a poison is made unique
  (whitespace, or another batch id) so de-duplication by digest cannot make it free. Only
  `Ingestor.process` is timed; readings/s counts the good readings. The runs alternate
  (`--rounds`) and the best of each is kept (the build machine is shared).
* Instructions: the wall and CPU figures move with whatever else the machine runs (2 shared
  cores). When valgrind is installed, the clean and the poisoned stream are also ingested by
  fresh child processes under `valgrind --tool=callgrind`, and so is a child that only loads
  them: instructions(stream) - instructions(load only) is the work the stream cost, the same
  on every run of the same code. `poisoned_fraction_of_clean_instructions` is clean's work over
  poisoned's (the same good readings in both). `--no-instructions` skips it.
* Memory: every poison, plus the largest JSON list and compact batch the default limits let
  through, ingested alone by a fresh child process; its peak resident set (VmHWM, which is
  ru_maxrss without what Linux carries over from the parent across fork and exec; the
  interpreter and libraries included, nothing subtracted) is the payload's peak. The worst is
  reported.

    python bench/poison.py [--machines 50] [--minutes 10] [--rounds 2]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sensor_buffer.config import BufferConfig
from sensor_buffer.ingest import Incoming, Ingestor, micro_batch_share
from sensor_buffer.store import Store
from sensor_buffer.thresholds import ThresholdChecker

from iiot import wire
from iiot.catalog import MetricCatalog, load_catalog
from iiot.contract import ReadingColumns, SeriesKey, Validator
from local_platform.simulator import FleetConfig, FleetSimulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the poison corpus is the tests' own (tests/poison.py), shared
from tests.poison import (  # noqa: E402
    Poison,
    good_batch,
    good_json,
    good_readings,
    known_poisons,
    shadow_copies,
)

TOPIC = "factory/F01/readings"
DEFAULTS = BufferConfig(factory_id="F01", data_dir=Path("."))  # the recipe's defaults
LIMITS = DEFAULTS.limits
POISON_EVERY = 10  # one payload in ten


def make_ingestor(directory: Path, catalog: MetricCatalog) -> Ingestor:
    config = BufferConfig(factory_id="F01", data_dir=directory)
    store = Store(
        config.db_path,
        producer="F01/gateway",
        synchronous=config.synchronous,
        quarantine_max_bytes=config.quarantine_max_bytes,
    )
    checker = ThresholdChecker({n: m.edge for n, m in catalog.items()}, store.series.__getitem__)
    return Ingestor(
        store,
        Validator(catalog),
        checker,
        max_block_readings=config.commit_max_readings,
        limits=config.limits,
    )


def json_payloads(columns: ReadingColumns) -> list[bytes]:
    """One JSON list per machine and instant, in time order (as `local_platform.publisher`)."""
    readings = columns.to_readings()
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for position, reading in enumerate(readings):
        groups[(reading.timestamp, reading.machine_id)].append(position)
    return [
        wire.msgspec.json.encode([readings[p] for p in positions])
        for _, positions in sorted(groups.items())
    ]


def unique_copy(poison: Poison, copy: int) -> bytes:
    """The poison, made distinct from its other copies without changing what is wrong."""
    payload = poison.payload
    if wire.is_batch(payload) and len(payload) >= 16:
        return payload[:8] + copy.to_bytes(8, "little") + payload[16:]  # the batch id's half
    return payload + b" " * copy


def poisoned(good: list[bytes], poisons: list[Poison]) -> Iterator[bytes]:
    """The good payloads with one poison after every nine, cycling through `poisons`."""
    copies: dict[str, int] = defaultdict(int)
    for i, payload in enumerate(good):
        yield payload
        if i % (POISON_EVERY - 1) == POISON_EVERY - 2:
            poison = poisons[(i // (POISON_EVERY - 1)) % len(poisons)]
            copies[poison.name] += 1
            yield unique_copy(poison, copies[poison.name])


class Timed:
    """What one run did, and the time it spent in Ingestor.process (wall and CPU)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.stored = self.quarantined = self.micro_batches = 0


def run(stream: Iterator[bytes], directory: Path, catalog: MetricCatalog) -> Timed:
    """Ingest `stream` in micro-batches formed as the ingest loop forms them."""
    ingestor = make_ingestor(directory, catalog)
    timed = Timed()
    batch: list[Incoming] = []
    estimate = 0

    def flush() -> None:
        nonlocal batch, estimate
        wall, cpu = time.perf_counter(), time.process_time()
        result = ingestor.process(batch)
        timed.wall += time.perf_counter() - wall
        timed.cpu += time.process_time() - cpu
        timed.stored += result.stored
        timed.quarantined += result.quarantined
        timed.micro_batches += 1
        batch, estimate = [], 0

    for payload in stream:
        batch.append(Incoming(TOPIC, payload, 0))
        estimate += micro_batch_share(payload, LIMITS)
        if estimate >= DEFAULTS.commit_max_readings:
            flush()
    if batch:
        flush()
    ingestor.store.close()
    return timed


def cost_per_kind(
    poisons: list[Poison], directory: Path, catalog: MetricCatalog
) -> dict[str, float]:
    """Milliseconds in Ingestor.process per payload, unique copies of one kind per
    micro-batch (the commit included, shared by the copies)."""
    ingestor = make_ingestor(directory, catalog)
    costs = {}
    for poison in poisons:
        n = 10 if len(poison.payload) > 1_000_000 else 100
        spent = []
        for round_ in range(3):
            items = [Incoming(TOPIC, unique_copy(poison, 1 + round_ * n + i), 0) for i in range(n)]
            began = time.perf_counter()
            ingestor.process(items)
            spent.append((time.perf_counter() - began) / n)
        costs[poison.name] = 1000 * min(spent)
    ingestor.store.close()
    return costs


# ---------------------------------------------------------------------------- peak memory


def largest_allowed(now_ms: int) -> list[Poison]:
    """Good payloads at the default limits: what a hostile sender can make the edge accept."""
    limits = LIMITS
    readings = good_readings(limits.max_items, start_ms=now_ms - 3 * 3_600_000, sensor=3)
    while len(good_json(readings)) > limits.max_payload_bytes:
        readings = readings[: int(len(readings) * 0.95)]
    n = limits.max_batch_readings
    columns = ReadingColumns(
        [SeriesKey("F01", "F01-M001", "F01-M001-temperature-0", "temperature", "degC")],
        np.zeros(n, np.int32),
        now_ms - 3_600_000 - np.arange(n, dtype=np.int64)[::-1] * 1000,
        np.round(60.0 + (np.arange(n) % 50) * 0.25, 2),
    )
    return [
        Poison(f"largest JSON list allowed ({len(readings)} readings)", good_json(readings), ""),
        Poison(f"largest compact batch allowed ({n} readings)", wire.encode_batch(columns), ""),
    ]


def child_peak_rss_mb(payload: bytes, directory: Path) -> tuple[float, str]:
    """A fresh interpreter ingests `payload` alone: (its ru_maxrss in MB, what it did)."""
    path = directory / "payload.bin"
    path.write_bytes(payload)
    done = subprocess.run(
        [sys.executable, __file__, "--one-payload", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the child failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.splitlines()[-1])
    return report["peak_rss_mb"], report["outcome"]


def ingest_one(path: Path) -> None:
    """The child's side: one payload through a fresh Ingestor and Store."""
    payload = path.read_bytes()
    catalog = load_catalog()
    with tempfile.TemporaryDirectory(prefix="poison-one-") as tmp:
        ingestor = make_ingestor(Path(tmp), catalog)
        result = ingestor.process([Incoming(TOPIC, payload, 0)])
        reasons = [q.reason for q in ingestor.store.quarantined(limit=3)]
        ingestor.store.close()
    del payload
    outcome = f"stored {result.stored}, quarantined {result.quarantined}"
    if reasons:
        outcome += f": {reasons[0][:70]}"
    print(json.dumps({"peak_rss_mb": round(_peak_rss_kib() / 1024, 1), "outcome": outcome}))


def _peak_rss_kib() -> int:
    """This process's peak resident set. Linux keeps ru_maxrss across fork and exec, so a child
    of a big parent would report the parent's size: VmHWM belongs to this image alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# ------------------------------------------------------------------------------------- main


def ingest_streams(path: Path, name: str) -> None:
    """Child process: load the pickled streams, then ingest the one named (none: load only)."""
    streams = pickle.loads(path.read_bytes())
    if name == "none":
        return
    with tempfile.TemporaryDirectory(prefix="poison-ir-") as tmp:
        timed = run(iter(streams[name]), Path(tmp), load_catalog())
    print(f"{name}: stored {timed.stored}, quarantined {timed.quarantined}", file=sys.stderr)


def instruction_counts(good: list[bytes], poisons: list[Poison]) -> dict[str, int]:
    """Instructions each stream's ingest costs under callgrind ({} without valgrind)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found: no instruction counts", file=sys.stderr)
        return {}
    streams = {"clean": good, "poisoned": list(poisoned(good, poisons))}
    totals: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="poison-ir-") as tmp:
        data = Path(tmp) / "streams.pickle"
        data.write_bytes(pickle.dumps(streams))
        for name in ("none", "clean", "poisoned"):
            result = subprocess.run(
                [
                    valgrind,
                    "--tool=callgrind",
                    f"--callgrind-out-file={tmp}/callgrind.{name}",
                    sys.executable,
                    __file__,
                    "--ingest-streams",
                    str(data),
                    name,
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"},
            )
            collected = re.search(r"Collected : (\d+)", result.stderr)
            if collected is None:
                raise RuntimeError(f"callgrind printed no total:\n{result.stderr[-2000:]}")
            totals[name] = int(collected.group(1))
    return {name: totals[name] - totals["none"] for name in ("clean", "poisoned")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-instructions", action="store_true", help="skip the callgrind instruction counts"
    )
    parser.add_argument("--one-payload", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--ingest-streams", nargs=2, metavar=("FILE", "NAME"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one_payload:
        ingest_one(args.one_payload)
        return
    if args.ingest_streams:
        ingest_streams(Path(args.ingest_streams[0]), args.ingest_streams[1])
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    catalog = load_catalog()
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    fleet = FleetConfig(
        factories=1,
        machines_per_factory=args.machines,
        hours=args.minutes / 60,
        interval_ms=1000,
        seed=1,
        start=start,
    )
    columns = ReadingColumns.concat(list(FleetSimulator(fleet, catalog).chunks()))
    good = json_payloads(columns)
    now_ms = int(time.time() * 1000)
    shadows = shadow_copies(good_batch(good_readings(50, start_ms=now_ms - 3_600_000, sensor=9)))
    every = known_poisons(now_ms) + shadows
    mixes = {"poisoned": [p for p in every if not p.bomb], "with_bombs": every}
    poison_count = sum(1 for _ in poisoned(good, every)) - len(good)
    print(
        f"input: {len(columns):,} readings in {len(good):,} JSON payloads; each poisoned run "
        f"adds {poison_count:,} poison payloads "
        f"({poison_count / (poison_count + len(good)):.0%} of payloads)"
    )

    streams = {
        "clean": lambda: iter(good),
        **{name: (lambda mix=mix: poisoned(good, mix)) for name, mix in mixes.items()},
    }
    best: dict[str, Timed] = {}
    with tempfile.TemporaryDirectory(prefix="poison-bench-") as tmp:
        for round_ in range(args.rounds):
            line = f"round {round_ + 1}:"
            for name, stream in streams.items():
                timed = run(stream(), Path(tmp) / f"{name}{round_}", catalog)
                if name not in best or timed.wall < best[name].wall:
                    best[name] = timed
                line += (
                    f" {name} {timed.wall:.2f} s ({timed.cpu:.2f} CPU, {timed.micro_batches} "
                    f"commits, {timed.quarantined:,} quarantined);"
                )
            print(line.rstrip(";"))
    delivered = best["clean"].stored  # the good readings every run must store
    assert all(timed.stored >= delivered for timed in best.values()), "a poison cost readings"
    rate = {name: delivered / timed.wall for name, timed in best.items()}
    cpu_rate = {name: delivered / timed.cpu for name, timed in best.items()}
    for name in streams:
        print(
            f"{name:>10}: {rate[name]:>10,.0f} good readings/s wall "
            f"({rate[name] / rate['clean']:.2f} of clean), {cpu_rate[name]:,.0f} per CPU second "
            f"({cpu_rate[name] / cpu_rate['clean']:.2f})"
        )

    print("cost of one poison, unique copies of its kind per micro-batch (ms per payload):")
    with tempfile.TemporaryDirectory(prefix="poison-kinds-") as tmp:
        costs = cost_per_kind(every, Path(tmp), catalog)
    for kind, ms in sorted(costs.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:8.3f}  {kind}")
    print(f"  {1000 * best['clean'].wall / len(good):8.3f}  (a good payload of five readings)")

    print("peak RSS of a fresh process ingesting one payload (interpreter included):")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="poison-rss-") as tmp:
        baseline, _ = child_peak_rss_mb(good[0], Path(tmp))
        print(f"  {baseline:7.1f} MB  one good payload of five readings (the baseline)")
        for poison in [*every, *largest_allowed(now_ms)]:
            peak, outcome = child_peak_rss_mb(poison.payload, Path(tmp))
            worst = max(worst, peak)
            print(f"  {peak:7.1f} MB  {poison.name} [{len(poison.payload):,} bytes] -> {outcome}")
    instructions = {} if args.no_instructions else instruction_counts(good, mixes["poisoned"])
    if instructions:
        print(
            "instructions (callgrind): "
            + ", ".join(f"{name} {count:,}" for name, count in instructions.items())
        )
    fraction_instructions = (
        round(instructions["clean"] / instructions["poisoned"], 3) if instructions else None
    )
    print(
        json.dumps(
            {
                "poisoned_fraction_of_clean_instructions": fraction_instructions,
                "clean_readings_per_s": round(rate["clean"]),
                "poisoned_readings_per_s": round(rate["poisoned"]),
                "poisoned_fraction_of_clean": round(rate["poisoned"] / rate["clean"], 3),
                "peak_rss_mb_worst_payload": round(worst, 1),
                "poisoned_fraction_of_clean_cpu": round(
                    cpu_rate["poisoned"] / cpu_rate["clean"], 3
                ),
                "with_bombs_readings_per_s": round(rate["with_bombs"]),
                "with_bombs_fraction_of_clean": round(rate["with_bombs"] / rate["clean"], 3),
                "peak_rss_mb_baseline": round(baseline, 1),
                "load_average_1m": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
