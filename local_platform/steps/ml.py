"""The `ml` demo step: train on a simulated history, compile, and predict on the live stream.

The demo's own run (24 h) holds too few failures to learn from, so this step simulates a longer
history of the same fleet model (another seed, same sampling interval, the fleet's failure
rate), trains and evaluates on it (split by time and machine), compiles the model for x86_64
and aarch64, and then replays the demo run's readings through the FailurePredictor component's
logic, as the gateway would see them.

The anomaly detector is per machine, so it learns from the same machines' normal operation:
the 48 hours before the run (the same fleet and seed, simulated earlier in time). The replay
runs it inside the FailurePredictor, and every alert of the run is judged with
`ml_pipeline.evaluate.alert_quality` against the run's failures.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from local_platform.demo import DemoContext, Figures
from local_platform.simulator import FleetSimulator, write_simulation

# The count windows (last 6 / 30 readings) span a time that depends on the sampling interval,
# so the history is sampled like the live run. It is 20 days of the fleet at the demo fleet's
# own MTBF (120 h), what a plant's historian holds after three weeks: about 65 failures, 28
# episodes in the training split (the threshold's cross-validation needs 20), and about a dozen
# overheating failures (a fifth of them). The earlier 4 days at an MTBF of 48 h held 8 training
# episodes, two of them overheating, and taught a failure rate 2.5 times the fleet's. On the
# downtime what-if (`iiot whatif`, default run): 10 days at 48 h left 2 failures but planned 61
# inspections that found nothing for 32 averted failures (-10% downtime); 20 days at 120 h
# planned 1 for 25 (-45%). CPU: about 2 minutes for the step (48 s before).
HISTORY_HOURS = 480.0
HISTORY_MTBF_HOURS = 120.0  # FleetConfig's default, the demo fleet's
# The anomaly detector's: the same machines, before the run. The run starts on a Monday, and
# the 48 h before it are a weekend (load at 65%): five days hold the weekday shifts as well.
NORMAL_HISTORY_HOURS = 120.0
HORIZON_MS = 24 * 3_600_000
ANOMALY_RAISE_AFTER_READINGS = 18


def _machines_config(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "machines.csv").open(newline="") as handle:
        return {
            row["machine_id"]: {"model": row["model"], "installedOn": row["installed_on"]}
            for row in csv.DictReader(handle)
        }


def ml_step(context: DemoContext) -> Figures:
    from failure_predictor.config import PredictorConfig
    from failure_predictor.model_loader import AnomalyModelHandle, ModelHandle
    from failure_predictor.predictor import FailurePredictor

    from edge_runtime.features import MachineFeatureState
    from iiot import topics
    from iiot.anomaly import decode_anomaly
    from ml_pipeline.anomaly import train_from_run, write_artifact
    from ml_pipeline.compile import compile_model
    from ml_pipeline.dataset import build_table, read_history, read_streams
    from ml_pipeline.evaluate import alert_quality, failure_incidents
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
    context.progress("ml: simulating a training history", 0, 6)
    write_simulation(FleetSimulator(history, context.catalog), history_dir)
    context.progress("ml: features", 1, 6)
    table = build_table(history_dir, catalog=context.catalog)
    context.progress("ml: training", 2, 6)
    metrics = train_and_evaluate(table, work / "model", rounds=120)
    context.progress("ml: compiling", 3, 6)
    manifest = compile_model(work / "model", work / "failure_model", ("x86_64", "aarch64"))
    context.progress("ml: the anomaly detector on the machines' normal operation", 4, 6)
    before = replace(
        context.fleet,
        start=context.fleet.start - timedelta(hours=NORMAL_HISTORY_HOURS),
        hours=NORMAL_HISTORY_HOURS,
        malformed_rate=0.0,
    )
    write_simulation(FleetSimulator(before, context.catalog), work / "normal_history")
    anomaly_models = train_from_run(
        work / "normal_history", version="demo", horizon_ms=HORIZON_MS, catalog=context.catalog
    )
    write_artifact(anomaly_models, work / "anomaly_model")

    # the live stream: the demo run's readings, in time order, through the gateway's logic
    context.progress("ml: predicting on the live stream", 5, 6)
    run_dir = context.simulation_dir
    published: list[tuple[str, bytes]] = []
    config = PredictorConfig.from_mapping(
        {
            "factoryId": "F01",
            "modelDir": str(work / "failure_model"),
            "anomalyModelDir": str(work / "anomaly_model"),
            "machines": _machines_config(run_dir),
            # no alert thresholds: the predictor takes the compiled model's (cross-validation's
            # or the default, as training recorded), as a gateway with the recipe's defaults does
            # a multivariate alarm pages people once it held 3 minutes at the run's 10 s
            # sampling (the recipe's 6 readings let sensor dropouts and spikes through: alert
            # precision 0.27 on the default run against 0.55 for 18, 30 or 60 readings)
            "anomalyRaiseAfterReadings": ANOMALY_RAISE_AFTER_READINGS,
        }
    )
    predictor = FailurePredictor(
        config,
        ModelHandle(work / "failure_model"),
        lambda topic, payload: published.append((topic, payload)),
        context.catalog,
        anomaly_models=AnomalyModelHandle(work / "anomaly_model"),
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
    # which rule set the threshold: cross-validation, or the default when the training rows
    # held too little evidence (`ml_pipeline.train.threshold_rule`)
    source = str(metrics["threshold_source"])
    threshold_rule = "cross-validated" if source == "cross-validation" else source
    limits = predictor.thresholds
    assert limits is not None
    if abs(limits.alert - float(metrics["threshold"])) > 1e-9:
        raise RuntimeError(
            f"the predictor alerted at {limits.alert}, not at the model's {metrics['threshold']}"
        )
    alerts = [decode_anomaly(p) for t, p in published if t == topics.LOCAL_ALERTS]
    quality = alert_quality(
        alerts,
        failure_incidents(run_history.failures),
        horizon_ms=HORIZON_MS,
        since_ms=run_history.start_ms,
    )
    (work / "alerts.jsonl").write_bytes(
        b"".join(p + b"\n" for t, p in published if t == topics.LOCAL_ALERTS)
    )
    (work / "alert_quality.json").write_text(json.dumps(quality, indent=2))
    dropped = anomaly_models.training["screening"]["dropped"]
    (work / "demo_figures.json").write_text(json.dumps(metrics, indent=2, default=str))
    figures: dict[str, Any] = {
        "training history": f"{history.machines} machines x {HISTORY_HOURS:.0f} h",
        "failures in history": len(table.extra["failures"]),
        "PR-AUC (held-out machines, later time)": round(metrics["pr_auc"], 3),
        "max_bin (cross-validated on training machines) / alert threshold": (
            f"{metrics['cross_validation']['max_bin']} / {metrics['threshold']:.2f} "
            f"({threshold_rule})"
        ),
        f"precision / recall at p>={metrics['threshold']:.2f}": (
            f"{metrics['precision']:.2f} / {metrics['recall']:.2f}"
        ),
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
        "anomaly detector": (
            f"{len(anomaly_models.machines)} machines x {NORMAL_HISTORY_HOURS:.0f} h normal, "
            f"sensors {', '.join(anomaly_models.training['sensors'])}"
            + (f" (screened out: {', '.join(dropped)})" if dropped else "")
        ),
        "live anomalies raised": counters.anomalies_raised,
        "gateway alert settings": (
            f"FAILURE_PREDICTED at p>={limits.alert:.2f} (the model's, {threshold_rule}; "
            f"clear below {limits.clear:.2f}), MULTIVARIATE_ANOMALY "
            f"after {ANOMALY_RAISE_AFTER_READINGS} readings off"
        ),
        "live failures in the run": len(run_history.failures),
        "alert precision (followed by a failure within 24 h)": _by_type(quality),
        "failures alerted": f"{quality['failures_alerted']}/{quality['failures']}"
        + (
            f" (+{quality['incidents_before_the_data']} failed before the run began)"
            if quality["incidents_before_the_data"]
            else ""
        ),
        "live readings/s through the predictor": round(counters.readings / replay_seconds),
    }
    context.progress("ml: done", 5, 5)
    return figures


def _by_type(quality: dict[str, Any]) -> str:
    """ "0.40 (4/10): FAILURE_PREDICTED 1.00 (2/2), ..." for the summary."""

    def one(followed: int, alerts: int) -> str:
        return f"{followed / alerts:.2f} ({followed}/{alerts})" if alerts else "- (0 alerts)"

    parts = [
        f"{kind} {one(entry['followed'], entry['alerts'])}"
        for kind, entry in quality["by_type"].items()
    ]
    overall = one(quality["alerts_followed_by_an_incident"], quality["alerts"])
    return overall + (": " + ", ".join(parts) if parts else "")
