"""The evaluation step: score a trained model on the held-out split and write the metrics JSON.

Locally `iiot ml evaluate`; in the SageMaker pipeline a processing job runs
``python -m ml_pipeline.evaluate_job`` with the model artifact and the features as inputs, and
the pipeline's condition step reads ``pr_auc`` from the JSON it writes (a property file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ml_pipeline.evaluate import evaluate, write_metrics
from ml_pipeline.train import (
    MODEL_FILE,
    TRAINING_FILE,
    load_input,
    predict,
    split_by_time_and_machine,
)


def evaluate_model_dir(model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    import xgboost as xgb

    info = json.loads((model_dir / TRAINING_FILE).read_text())
    booster = xgb.Booster()
    booster.load_model(str(model_dir / MODEL_FILE))
    table = load_input(data)
    if table.names != info["feature_names"]:
        raise ValueError("the data's features differ from the model's: recompute the features")
    test = split_by_time_and_machine(table).test
    metrics = evaluate(
        predict(booster, table.x[test]),
        table.extra["label"][test],
        table.machine_id[test],
        table.timestamp[test],
        table.extra["failures"],
        threshold=float(info["threshold"]),
        horizon_ms=int(table.extra["horizon_ms"]),
    )
    metrics["model_version"] = info["model_version"]
    write_metrics(metrics, out)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/opt/ml/processing/model"))
    parser.add_argument("--data", type=Path, default=Path("/opt/ml/processing/features"))
    parser.add_argument(
        "--out", type=Path, default=Path("/opt/ml/processing/evaluation/evaluation.json")
    )
    args = parser.parse_args(argv)
    model_dir = args.model
    archive = model_dir / "model.tar.gz"
    with tempfile.TemporaryDirectory() as scratch:
        if archive.exists():  # SageMaker hands the training output over as model.tar.gz
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            model_dir = Path(scratch)
        metrics = evaluate_model_dir(model_dir, args.data, args.out)
    json.dump({"pr_auc": metrics["pr_auc"]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
