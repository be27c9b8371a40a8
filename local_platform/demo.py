"""The local platform runner behind `make demo` / `iiot demo`: the whole pipeline on one machine.

The run is a list of steps (`demo_steps`): the simulation and the contract check here, and one
step per part under `local_platform/steps/`, registered by import. A step takes the shared
`DemoContext`, does its work under `context.work_dir`, and returns the figures that go into the
final summary; steps import a part's heavy dependencies only when they run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iiot.catalog import MetricCatalog
from iiot.contract import Reading, ReadingColumns, Validator
from iiot.wire import encode_batch, validate_json
from local_platform.simulator import (
    FleetConfig,
    FleetSimulator,
    SimulationSummary,
    write_simulation,
)

log = logging.getLogger(__name__)

Figures = dict[str, Any]
Step = Callable[["DemoContext"], Figures]


@dataclass
class DemoContext:
    """What the steps share: configuration, catalog, where to write, and earlier results."""

    work_dir: Path
    fleet: FleetConfig
    catalog: MetricCatalog
    progress: Callable[[str, int, int], None] = lambda _description, _done, _total: None
    results: dict[str, Figures] = field(default_factory=dict)

    @property
    def simulation_dir(self) -> Path:
        return self.work_dir / "simulation"


def simulate_step(context: DemoContext) -> Figures:
    simulator = FleetSimulator(context.fleet, context.catalog)
    total = simulator.chunk_count
    done = 0

    def chunk_done(_readings: int) -> None:
        nonlocal done
        done += 1
        context.progress("simulating fleet", done, total)

    summary: SimulationSummary = write_simulation(
        simulator, context.simulation_dir, formats=("parquet", "jsonl"), on_chunk=chunk_done
    )
    return {
        "machines": context.fleet.machines,
        "readings": summary.readings,
        "readings/s generated": round(summary.readings_per_second),
        "failures": summary.failures,
        "maintenance jobs": summary.maintenance,
        "malformed payloads": sum(summary.malformed.values()),
    }


def contract_step(context: DemoContext) -> Figures:
    """Validate every JSON line against the contract, quarantine rejects, batch the rest."""
    # The simulated history is in the past; allow any past time but keep the future check.
    validator = Validator(context.catalog)
    accepted: list[Reading] = []
    reasons: Counter[str] = Counter()
    lines = (context.simulation_dir / "readings.jsonl").read_bytes().splitlines()
    began = time.perf_counter()
    quarantine = context.work_dir / "quarantine.jsonl"
    with quarantine.open("wb") as sink:
        step = max(len(lines) // 20, 1)
        for start in range(0, len(lines), step):
            for line in lines[start : start + step]:
                outcome = validate_json(line, validator)
                accepted.extend(outcome.readings)
                for reject in outcome.rejects:
                    reasons[reject.reason.split(":")[0]] += 1
                    sink.write(
                        reject.payload.replace(b"\n", b" ") + b"\t" + reject.reason.encode() + b"\n"
                    )
            context.progress("validating payloads", min(start + step, len(lines)), len(lines))
    seconds = time.perf_counter() - began
    columns = ReadingColumns.from_readings(accepted)
    json_bytes = sum(len(line) + 1 for line in lines)
    batch_bytes = sum(
        len(encode_batch(columns.take(slice(i, i + 10_000))))
        for i in range(0, len(columns), 10_000)
    )
    return {
        "payloads validated": len(lines),
        "payloads/s (one reading each)": round(len(lines) / seconds) if seconds else 0,
        "accepted": len(columns),
        "quarantined": sum(reasons.values()),
        "quarantine reasons (field)": dict(reasons.most_common()),
        "JSON bytes/reading": round(json_bytes / max(len(lines), 1), 1),
        "compact batch bytes/reading": round(batch_bytes / max(len(columns), 1), 2),
    }


def demo_steps() -> list[tuple[str, Step]]:
    """The steps in the order they run: each part's step, registered by import."""
    from local_platform.steps.edge import edge_step
    from local_platform.steps.lake import lake_step
    from local_platform.steps.ml import ml_step
    from local_platform.steps.stream import stream_step

    return [
        ("simulate", simulate_step),
        ("contract", contract_step),
        ("lake", lake_step),
        ("stream", stream_step),
        ("edge", edge_step),
        ("ml", ml_step),
    ]


def run_demo(context: DemoContext, *, only: set[str] | None = None) -> dict[str, Figures]:
    """Run every step in order (or just `only`), collecting their figures."""
    context.work_dir.mkdir(parents=True, exist_ok=True)
    for title, step in demo_steps():
        if only and title not in only:
            continue
        began = time.perf_counter()
        log.info("demo step started", extra={"step": title})
        figures = step(context)
        figures["step seconds"] = round(time.perf_counter() - began, 2)
        context.results[title] = figures
        log.info("demo step finished", extra={"step": title, **figures})
    return context.results
