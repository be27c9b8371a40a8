"""Per-prediction latency on the gateway: feature update + model, compiled library vs XGBoost.

Trains a model on a small simulated fleet, compiles it with TL2cgen for this machine, then
replays one machine's readings through the shared incremental features
(`edge_runtime.features.MachineFeatureState`) and times, per reading, the feature update plus a
prediction: once with the compiled library (ctypes) and once with XGBoost (inplace_predict, one
thread). The last line is JSON:
{"compiled_p50_us", "xgboost_p50_us", "speedup", "compiled_p99_us", ...}.

    .venv/bin/python bench/edge_inference.py [--predictions 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_runtime.features import MachineFeatureState
from edge_runtime.model_runtime import load_model, machine_arch
from iiot.catalog import load_catalog
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation
from ml_pipeline.compile import compile_model
from ml_pipeline.dataset import build_table, read_history, read_streams
from ml_pipeline.train import train_and_evaluate


def time_predictions(model, stream, maintenance, count: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    spec = model.manifest.feature_spec
    state = MachineFeatureState(spec, stream.machine, maintenance)
    timestamps = stream.timestamp.tolist()
    metrics = stream.metric.tolist()
    values = stream.value.tolist()
    n = len(timestamps)
    out = np.empty(count)
    clock = time.perf_counter_ns
    update, predict, vector = state.update, model.predict_one, state.vector
    for i in range(min(200, n)):  # warm the windows and caches
        update(timestamps[i], metrics[i], values[i])
        predict(vector)
    for i in range(count):
        j = (i + 200) % n
        began = clock()
        update(timestamps[j], metrics[j], values[j])
        predict(vector)
        out[i] = clock() - began
    return out / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=20_000)
    args = parser.parse_args()
    catalog = load_catalog()
    with tempfile.TemporaryDirectory(prefix="edge-inference-") as scratch:
        work = Path(scratch)
        fleet = FleetConfig(
            factories=1,
            machines_per_factory=10,
            hours=96,
            interval_ms=60_000,
            seed=5,
            mtbf_hours=40.0,
            malformed_rate=0.0,
        )
        write_simulation(FleetSimulator(fleet, catalog), work / "run")
        table = build_table(work / "run", catalog=catalog)
        train_and_evaluate(table, work / "model", version="bench")
        compile_model(work / "model", work / "compiled", (machine_arch(),))
        compiled = load_model(work / "compiled")
        reference = load_model(work / "compiled", prefer="xgboost")
        history = read_history(work / "run")
        stream = next(read_streams(work / "run", history, catalog))
        maintenance = history.maintenance_completed.get(stream.machine.machine_id, [])
        trees = json.loads((work / "model" / "model.json").read_text())["learner"][
            "gradient_booster"
        ]["model"]["gbtree_model_param"]["num_trees"]
        compiled_us = time_predictions(compiled, stream, maintenance, args.predictions)
        xgboost_us = time_predictions(
            reference, stream, maintenance, max(args.predictions // 10, 1000)
        )
    figures = {
        "compiled_p50_us": round(float(np.percentile(compiled_us, 50)), 2),
        "compiled_p99_us": round(float(np.percentile(compiled_us, 99)), 2),
        "xgboost_p50_us": round(float(np.percentile(xgboost_us, 50)), 2),
        "xgboost_p99_us": round(float(np.percentile(xgboost_us, 99)), 2),
        "speedup": round(float(np.percentile(xgboost_us, 50) / np.percentile(compiled_us, 50)), 1),
        "features": len(compiled.manifest.feature_names),
        "trees": int(trees),
        "arch": machine_arch(),
    }
    print(
        f"per prediction incl. feature update: compiled p50 {figures['compiled_p50_us']} us "
        f"p99 {figures['compiled_p99_us']} us; xgboost p50 {figures['xgboost_p50_us']} us "
        f"p99 {figures['xgboost_p99_us']} us; speedup {figures['speedup']}x"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
