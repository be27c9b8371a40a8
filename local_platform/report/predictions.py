"""The failure predictor's view of a run: each machine's failure probability over time and the
FAILURE_PREDICTED alerts it raised, from the FailurePredictor component's own logic fed with
the run's readings in time order (as the gateway sees them). The report ranks risk with it and
the downtime what-if acts on its alerts."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iiot.catalog import MetricCatalog


@dataclass
class MachinePredictions:
    machine_id: str
    factory_id: str
    times: list[int] = field(default_factory=list)  # every prediction, event time (ms)
    probabilities: list[float] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)  # FAILURE_PREDICTED RAISED times

    @property
    def last(self) -> float | None:
        return self.probabilities[-1] if self.probabilities else None


def machines_config(simulation_dir: Path) -> dict[str, dict[str, str]]:
    with (simulation_dir / "machines.csv").open(newline="") as handle:
        return {
            row["machine_id"]: {"model": row["model"], "installedOn": row["installed_on"]}
            for row in csv.DictReader(handle)
        }


def alert_thresholds(model_dir: Path) -> dict[str, float]:
    """The thresholds a predictor with the recipe's configuration uses with the model in
    `model_dir` (the component's rule, `failure_predictor.config.AlertThresholds.around`: the
    alert threshold its training chose, the manifest's `threshold`), as recipe keys. Empty for
    a manifest that names none."""
    from failure_predictor.config import AlertThresholds

    threshold = model_threshold(model_dir)
    if threshold is None:
        return {}
    return AlertThresholds.around(threshold).as_configuration()


def model_threshold(model_dir: Path) -> float | None:
    """The alert threshold the model's training chose (its manifest's `threshold`), or None
    for a manifest that names none."""
    manifest = model_dir / "manifest.json"
    threshold = json.loads(manifest.read_text()).get("threshold") if manifest.is_file() else None
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        return None
    return float(threshold)


def replay_run(
    simulation_dir: Path,
    model_dir: Path,
    catalog: MetricCatalog,
    *,
    machines: Iterable[str] | None = None,
    maintenance: dict[str, list[int]] | None = None,
) -> dict[str, MachinePredictions]:
    """Feed a simulation directory's readings (all machines, or `machines`) through a fresh
    FailurePredictor with the model in `model_dir`; maintenance completions come from the run's
    records unless `maintenance` is given."""
    from failure_predictor.config import PredictorConfig
    from failure_predictor.messages import PREDICTIONS, topic
    from failure_predictor.model_loader import ModelHandle
    from failure_predictor.predictor import FailurePredictor

    from iiot import topics
    from iiot.anomaly import decode_anomaly
    from ml_pipeline.dataset import read_history, read_streams

    history = read_history(simulation_dir)
    wanted = set(machines) if machines is not None else None
    results: dict[str, MachinePredictions] = {
        machine_id: MachinePredictions(machine_id, factory)
        for machine_id, factory in history.factories.items()
        if wanted is None or machine_id in wanted
    }
    prediction_topic = topic(PREDICTIONS, "F01")
    decode = json.JSONDecoder().decode

    def publish(name: str, payload: bytes) -> None:
        if name == prediction_topic:
            message = decode(payload.decode())
            machine = results.get(message["machine_id"])
            if machine is not None:
                machine.times.append(int(message["timestamp"]))
                machine.probabilities.append(float(message["probability"]))
        elif name == topics.LOCAL_ALERTS:
            anomaly = decode_anomaly(payload)
            machine = results.get(anomaly.machine_id)
            if (
                machine is not None
                and anomaly.anomaly_type == "FAILURE_PREDICTED"
                and anomaly.state == "RAISED"
            ):
                machine.alerts.append(anomaly.timestamp)

    config = PredictorConfig.from_mapping(
        {
            "factoryId": "F01",
            "modelDir": str(model_dir),
            "machines": {k: v for k, v in machines_config(simulation_dir).items() if k in results},
            # no thresholds: the predictor takes the model's, as a gateway with the recipe does
        }
    )
    predictor = FailurePredictor(config, ModelHandle(model_dir), publish, catalog)
    completed = (
        maintenance if maintenance is not None else dict(history.maintenance_completed.items())
    )
    for machine_id, completions in completed.items():
        if machine_id in results:
            for done in completions:
                predictor.on_maintenance(
                    json.dumps({"machine_id": machine_id, "completed_at_ms": done}).encode()
                )
    streams = [
        s for s in read_streams(simulation_dir, history, catalog) if s.machine.machine_id in results
    ]
    if not streams:
        return results
    timestamps = np.concatenate([s.timestamp for s in streams])
    order = np.argsort(timestamps, kind="stable")
    machine_of = np.concatenate([np.full(len(s.timestamp), s.machine.machine_id) for s in streams])
    metric_of = np.concatenate([s.metric for s in streams])
    value_of = np.concatenate([s.value for s in streams])
    on_reading = predictor.on_reading
    for t, machine, metric, value in zip(
        timestamps[order].tolist(),
        machine_of[order].tolist(),
        metric_of[order].tolist(),
        value_of[order].tolist(),
        strict=True,
    ):
        on_reading(t, machine, metric, value)
    return results
