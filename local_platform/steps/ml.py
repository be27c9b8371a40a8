"""The `ml` demo step: train on a simulated history, compile, and predict on the live stream.

The demo's own run (24 h) holds too few failures to learn from, so this step simulates a longer
history of the same fleet model (another seed, same sampling interval, failures more frequent),
trains and evaluates on it (split by
time and machine), compiles the model for x86_64 and aarch64, and then replays the demo run's
readings through the FailurePredictor component's logic, as the gateway would see them.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from local_platform.demo import DemoContext, Figures
from local_platform.simulator import FleetSimulator, write_simulation

# The count windows (last 6 / 30 readings) span a time that depends on the sampling interval,
# so the history is sampled like the live run; failures are made more frequent instead of the
# history longer, to keep the step short.
HISTORY_HOURS = 96.0
HISTORY_MTBF_HOURS = 48.0


def _machines_config(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "machines.csv").open(newline="") as handle:
        return {
            row["machine_id"]: {"model": row["model"], "installedOn": row["installed_on"]}
            for row in csv.DictReader(handle)
        }


def ml_step(context: DemoContext) -> Figures:
    from failure_predictor.config import PredictorConfig
    from failure_predictor.model_loader import ModelHandle
    from failure_predictor.predictor import FailurePredictor

    from edge_runtime.features import MachineFeatureState
    from ml_pipeline.compile import compile_model
    from ml_pipeline.dataset import build_table, read_history, read_streams
    from ml_pipeline.train import train_and_evaluate

    work = context.work_dir / "ml"
    history_dir = work / "history"
    history = replace(
        context.fleet,
        hours=HISTORY_HOURS,
        mtbf_hours=HISTORY_MTBF_HOURS,
        seed=context.fleet.seed + 1000,
        malformed_rate=0.0,
    )
    context.progress("ml: simulating a training history", 0, 5)
    write_simulation(FleetSimulator(history, context.catalog), history_dir)
    context.progress("ml: features", 1, 5)
    table = build_table(history_dir, catalog=context.catalog)
    context.progress("ml: training", 2, 5)
    metrics = train_and_evaluate(table, work / "model", rounds=120)
    context.progress("ml: compiling", 3, 5)
    manifest = compile_model(work / "model", work / "failure_model", ("x86_64", "aarch64"))

    # the live stream: the demo run's readings, in time order, through the gateway's logic
    context.progress("ml: predicting on the live stream", 4, 5)
    run_dir = context.simulation_dir
    published: list[tuple[str, bytes]] = []
    config = PredictorConfig.from_mapping(
        {
            "factoryId": "F01",
            "modelDir": str(work / "failure_model"),
            "machines": _machines_config(run_dir),
        }
    )
    predictor = FailurePredictor(
        config,
        ModelHandle(work / "failure_model"),
        lambda topic, payload: published.append((topic, payload)),
        context.catalog,
    )
    run_history = read_history(run_dir)
    # the maintenance system tells the gateway about completed jobs (time since maintenance)
    for machine_id, completions in run_history.maintenance_completed.items():
        for completed in completions:
            predictor.on_maintenance(
                json.dumps({"machine_id": machine_id, "completed_at_ms": completed}).encode()
            )
    streams = list(read_streams(run_dir, run_history, context.catalog))
    timestamps = np.concatenate([s.timestamp for s in streams])
    order = np.argsort(timestamps, kind="stable")
    machine_of = np.concatenate([np.full(len(s.timestamp), s.machine.machine_id) for s in streams])[
        order
    ].tolist()
    metric_of = np.concatenate([s.metric for s in streams])[order].tolist()
    value_of = np.concatenate([s.value for s in streams])[order].tolist()
    began = time.perf_counter()
    on_reading = predictor.on_reading
    for t, machine, metric, value in zip(
        timestamps[order].tolist(), machine_of, metric_of, value_of, strict=True
    ):
        on_reading(t, machine, metric, value)
    replay_seconds = time.perf_counter() - began

    # per-prediction latency on this machine, feature update included
    model = predictor.model.model
    assert model is not None
    stream = streams[0]
    state = MachineFeatureState(model.manifest.feature_spec, stream.machine)
    samples = []
    for t, metric, value in zip(
        stream.timestamp[:3000].tolist(),
        stream.metric[:3000].tolist(),
        stream.value[:3000].tolist(),
        strict=True,
    ):
        tick = time.perf_counter_ns()
        state.update(t, metric, value)
        model.predict_one(state.vector)
        samples.append(time.perf_counter_ns() - tick)

    counters = predictor.counters
    lead = metrics["lead_time_hours"]
    (work / "demo_figures.json").write_text(json.dumps(metrics, indent=2, default=str))
    figures: dict[str, Any] = {
        "training history": f"{history.machines} machines x {HISTORY_HOURS:.0f} h",
        "failures in history": len(table.extra["failures"]),
        "PR-AUC (held-out machines, later time)": round(metrics["pr_auc"], 3),
        "precision / recall at p>=0.8": f"{metrics['precision']:.2f} / {metrics['recall']:.2f}",
        "failures caught": f"{metrics['failures_caught']}/{metrics['failures_evaluated']}",
        "median lead time (h)": round(lead["median"], 1) if lead["median"] is not None else None,
        "false alarms per machine-day": (
            round(metrics["false_alarms_per_machine_day"], 2)
            if metrics["false_alarms_per_machine_day"] is not None
            else None
        ),
        "compiled for": sorted(manifest["libraries"]),
        "backend on this gateway": model.backend,
        "compiled p50 us/prediction (with feature update)": round(
            float(np.percentile(samples, 50)) / 1000, 1
        ),
        "live stream readings": counters.readings,
        "live predictions": counters.predictions,
        "live alerts raised": counters.alerts_raised,
        "live failures in the run": len(run_history.failures),
        "live readings/s through the predictor": round(counters.readings / replay_seconds),
    }
    context.progress("ml: done", 5, 5)
    return figures
