"""Train the failure model: split by time and machine, weight the rare positives, fit XGBoost.

Runs locally (`iiot ml train`) and as a SageMaker script-mode entry point: arguments default to
the ``SM_CHANNEL_TRAIN`` and ``SM_MODEL_DIR`` environment variables, so the training job needs
no arguments. The train channel holds either a run directory (readings.parquet, failures.csv,
...) or the ``features.npz`` that the processing step wrote.

Split (no leakage of the future, nor of the test machines): a share of machines is held out;
training uses only the other machines and only time before the cut, with labels censored at
the cut (a failure after the cut is future the training data must not know); testing uses the
held-out machines after the cut.

XGBoost's ``max_bin`` and the alert threshold are chosen by cross-validation over the training
rows only (folds of whole training machines): the ``max_bin`` whose out-of-fold predictions
have the best PR-AUC, then the threshold whose alerts have the best F1 of alert precision
(alerts a failure followed within the horizon) and failure recall (failures an alert
announced). The cross-validated threshold is used only when the training rows hold enough
evidence for it (`MIN_CV_FAILURES` failure episodes and a cross-validated alert precision of
`MIN_CV_ALERT_PRECISION`); otherwise the model keeps the documented default `ALERT_THRESHOLD`.
The held-out machines are scored once, at the threshold in force, which `training.json` records
for the gateway with the rule that chose it (`threshold_source`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.features import FeatureSpec, FeatureTable
from edge_runtime.model_runtime import DEFAULT_ALERT_THRESHOLD
from ml_pipeline.evaluate import evaluate, write_metrics
from ml_pipeline.labels import EXCLUDED, FailureEvent, label_rows

FEATURES_FILE = "features.npz"
MODEL_FILE = "model.json"
TRAINING_FILE = "training.json"
# The conservative default: alerts at p >= 0.8 (the platform's threshold before it was
# cross-validated, and what evaluates a model whose training recorded no threshold).
ALERT_THRESHOLD = DEFAULT_ALERT_THRESHOLD
# Cross-validation may choose the alert threshold only on enough evidence. A threshold is chosen
# on failure episodes (runs of positive rows per machine), not rows: rows of one episode are
# strongly correlated. With n episodes one failure more or less moves the measured recall by
# 1/n, and a proportion's 95% interval is about +-1/sqrt(n): 20 episodes keep that to +-0.22,
# 10 episodes (the connected demo's second model) leave +-0.32, so its choice is noise (it
# picked 0.3 there). And the chosen threshold must itself be worth alerting at: its
# cross-validated alert precision at least 0.5, the product's alert-precision goal (most of
# its alerts would be followed by a failure); below that the default, which is stricter than
# any low choice, alerts less.
MIN_CV_FAILURES = 20
MIN_CV_ALERT_PRECISION = 0.5
CROSS_VALIDATION = "cross-validation"
MAX_BINS = (64, 256)
CV_FOLDS = 3
THRESHOLDS = np.round(np.arange(0.2, 0.951, 0.05), 2)
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "aucpr",
    "max_depth": 4,
    "eta": 0.08,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 5,
    # one thread unless told otherwise: on a shared 2-core machine two threads ran 5x slower
    "nthread": int(os.environ.get("IIOT_ML_THREADS", "1")),
    "max_bin": 64,
    "seed": 7,
}
DEFAULT_ROUNDS = 150


# ------------------------------------------------------------------------ features on disk


def save_table(table: FeatureTable, path: Path) -> None:
    spec: FeatureSpec = table.extra["spec"]
    failures = [f.__dict__ for f in table.extra["failures"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        x=table.x,
        label=table.extra["label"],
        machine_id=table.machine_id.astype(str),
        timestamp=table.timestamp,
        meta=np.array(
            json.dumps(
                {
                    "names": table.names,
                    "spec": spec.to_dict(),
                    "failures": failures,
                    "start_ms": table.extra["start_ms"],
                    "end_ms": table.extra["end_ms"],
                    "horizon_ms": table.extra["horizon_ms"],
                }
            )
        ),
    )


def load_table(path: Path) -> FeatureTable:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return FeatureTable(
            names=meta["names"],
            x=data["x"],
            machine_id=data["machine_id"],
            timestamp=data["timestamp"],
            extra={
                "label": data["label"],
                "failures": [FailureEvent(**f) for f in meta["failures"]],
                "spec": FeatureSpec.from_dict(meta["spec"]),
                "start_ms": meta["start_ms"],
                "end_ms": meta["end_ms"],
                "horizon_ms": meta["horizon_ms"],
            },
        )


def load_input(path: Path) -> FeatureTable:
    """A features.npz file, a directory holding one, or a run directory to featurize."""
    if path.is_file():
        return load_table(path)
    if (path / FEATURES_FILE).exists():
        return load_table(path / FEATURES_FILE)
    from ml_pipeline.dataset import build_table

    return build_table(path)


# ----------------------------------------------------------------------------------- split


@dataclass
class Split:
    train: npt.NDArray[np.int64]
    train_label: npt.NDArray[np.int8]
    test: npt.NDArray[np.int64]
    cut_ms: int
    test_machines: list[str]


def split_by_time_and_machine(
    table: FeatureTable, *, test_machine_share: float = 0.3, cut_share: float = 0.6, seed: int = 7
) -> Split:
    machines = np.unique(table.machine_id)
    rng = np.random.default_rng(seed)
    n_test = max(1, round(len(machines) * test_machine_share)) if len(machines) > 1 else 0
    test_machines = sorted(rng.choice(machines, n_test, replace=False).tolist())
    start, end = int(table.extra["start_ms"]), int(table.extra["end_ms"])
    cut = start + int((end - start) * cut_share)
    held_out = np.isin(table.machine_id, test_machines)
    train = np.flatnonzero(~held_out & (table.timestamp < cut))
    # labels of training rows only know failures before the cut: censor there
    train_label = label_rows(
        table.machine_id[train],
        table.timestamp[train],
        [f for f in table.extra["failures"] if f.failed_at_ms < cut],
        cut,
        int(table.extra["horizon_ms"]),
    )
    test_rows = held_out if n_test else np.ones(len(held_out), dtype=bool)
    test = np.flatnonzero(test_rows & (table.timestamp >= cut))
    return Split(train, train_label, test, cut, test_machines)


# ----------------------------------------------------------------------------------- train


def fit(
    x: npt.NDArray[np.float64],
    label: npt.NDArray[np.int8],
    *,
    params: dict[str, Any] | None = None,
    rounds: int = DEFAULT_ROUNDS,
) -> Any:
    """XGBoost on the labelled rows, positives weighted by the class ratio."""
    import xgboost as xgb

    keep = label != EXCLUDED
    y = label[keep].astype(np.float32)
    positives = float(y.sum())
    if positives == 0:
        raise ValueError("no positive rows to learn from: simulate a longer history")
    parameters = {**DEFAULT_PARAMS, **(params or {})}
    # square root of the class ratio: enough to learn the rare class without inflating
    # every probability past the alert threshold (the full ratio tripled false alarms)
    parameters.setdefault("scale_pos_weight", ((len(y) - positives) / positives) ** 0.5)
    matrix = xgb.DMatrix(x[keep].astype(np.float32), label=y, missing=np.nan)
    return xgb.train(parameters, matrix, num_boost_round=rounds)


@dataclass
class Choice:
    """What cross-validation over the training machines chose, and what it measured."""

    max_bin: int
    threshold: float  # the threshold in force: cross-validation's, or ALERT_THRESHOLD
    measured: list[dict[str, float]]
    source: str = CROSS_VALIDATION  # which rule chose `threshold`
    cv_threshold: float | None = None  # what cross-validation picked, used or not


def failure_episodes(
    label: npt.NDArray[np.int8],
    machines: npt.NDArray[np.str_],
    timestamps: npt.NDArray[np.int64] | None = None,
) -> int:
    """Failure episodes in labelled rows: runs of consecutive positive rows per machine (in
    time order when timestamps are given, else in the rows' order)."""
    count = 0
    for machine in np.unique(machines):
        rows = np.flatnonzero(machines == machine)
        if timestamps is not None:
            rows = rows[np.argsort(timestamps[rows], kind="stable")]
        positive = label[rows] == 1
        count += int((positive & ~np.concatenate([[False], positive[:-1]])).sum())
    return count


def threshold_rule(episodes: int, cv_precision: float | None) -> str:
    """Which rule sets the alert threshold: cross-validation when the training rows hold at
    least MIN_CV_FAILURES failure episodes and the cross-validated choice's alert precision is
    at least MIN_CV_ALERT_PRECISION, else the default (the reason is recorded)."""
    if episodes < MIN_CV_FAILURES:
        return f"default: only {episodes} failures"
    if cv_precision is None or cv_precision < MIN_CV_ALERT_PRECISION:
        shown = "none" if cv_precision is None else f"{cv_precision:.2f}"
        return f"default: cross-validated alert precision {shown}"
    return CROSS_VALIDATION


def alert_figures(
    prob: npt.NDArray[np.float64],
    label: npt.NDArray[np.int8],
    machines: npt.NDArray[np.str_],
    timestamps: npt.NDArray[np.int64],
    threshold: float,
) -> tuple[float, float]:
    """(alert precision, failure recall) of alerting at `threshold` on labelled rows: an alert
    is a rising edge of ``prob >= threshold`` per machine in time order, followed by a failure
    within the horizon when its row is positive; a failure is a machine's run of consecutive
    positive rows, announced when an alert row falls in it."""
    alerts = followed = failures = announced = 0
    for machine in np.unique(machines):
        rows = np.flatnonzero(machines == machine)
        rows = rows[np.argsort(timestamps[rows], kind="stable")]
        on = prob[rows] >= threshold
        positive = label[rows] == 1
        rising = on & ~np.concatenate([[False], on[:-1]])
        alerts += int(rising.sum())
        followed += int((rising & positive).sum())
        starts = np.flatnonzero(positive & ~np.concatenate([[False], positive[:-1]]))
        ends = np.flatnonzero(positive & ~np.concatenate([positive[1:], [False]]))
        failures += len(starts)
        announced += sum(bool(on[a : b + 1].any()) for a, b in zip(starts, ends, strict=True))
    return (followed / alerts if alerts else 0.0), (announced / failures if failures else 0.0)


def cross_validate(
    x: npt.NDArray[np.float64],
    label: npt.NDArray[np.int8],
    machines: npt.NDArray[np.str_],
    timestamps: npt.NDArray[np.int64] | None = None,
    *,
    rounds: int = DEFAULT_ROUNDS,
    folds: int = CV_FOLDS,
    max_bins: tuple[int, ...] = MAX_BINS,
    seed: int = 7,
) -> Choice:
    """Choose max_bin (out-of-fold PR-AUC), then the alert threshold, with folds of whole
    machines, from training rows only. The threshold maximizes the F1 of alert precision and
    failure recall (`alert_figures`: what the people who receive the alerts see) on the
    out-of-fold predictions, the highest of equals; without timestamps, the row F1 (and the
    row precision stands for the alert precision). It is used only on enough evidence
    (`threshold_rule`); otherwise the Choice carries ALERT_THRESHOLD and the reason."""
    from ml_pipeline.evaluate import classification_at, pr_auc

    keep = label != EXCLUDED
    x, label, machines = x[keep], label[keep], machines[keep]
    times = timestamps[keep] if timestamps is not None else None
    names = np.unique(machines)
    rng = np.random.default_rng(seed)
    fold_of = {m: i % folds for i, m in enumerate(rng.permutation(names).tolist())}
    fold = np.array([fold_of[m] for m in machines.tolist()])
    usable = [
        k for k in range(folds) if (label[fold != k] == 1).any() and (label[fold == k] == 1).any()
    ]
    episodes = failure_episodes(label, machines, times)
    if len(names) < 2 or not usable:
        source = threshold_rule(episodes, None)
        if source == CROSS_VALIDATION:
            source = "default: no fold to cross-validate on"
        return Choice(DEFAULT_PARAMS["max_bin"], ALERT_THRESHOLD, [], source)
    measured = []
    best: tuple[float, int, npt.NDArray[np.float64]] | None = None
    rows = np.isin(fold, usable)
    for bins in max_bins:
        out_of_fold = np.full(len(label), np.nan)
        for k in usable:
            booster = fit(x[fold != k], label[fold != k], rounds=rounds, params={"max_bin": bins})
            out_of_fold[fold == k] = predict(booster, x[fold == k])
        score = pr_auc(label[rows], out_of_fold[rows])
        measured.append({"max_bin": bins, "cv_pr_auc": round(score, 4)})
        if best is None or score > best[0]:
            best = (score, bins, out_of_fold)
    assert best is not None
    _, bins, out_of_fold = best
    rows_at = [classification_at(label[rows], out_of_fold[rows], float(t)) for t in THRESHOLDS]
    f1 = [r["f1"] for r in rows_at]
    if times is None:
        pick = int(np.argmax(f1))
        measured.append(
            {
                "threshold": float(THRESHOLDS[pick]),
                "cv_f1": round(f1[pick], 4),
                "cv_precision": round(rows_at[pick]["precision"], 4),
                "failure_episodes": episodes,
            }
        )
        return _chosen(
            bins, float(THRESHOLDS[pick]), measured, episodes, rows_at[pick]["precision"]
        )
    figures = [
        alert_figures(out_of_fold[rows], label[rows], machines[rows], times[rows], float(t))
        for t in THRESHOLDS
    ]
    alert_f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in figures]
    pick = len(THRESHOLDS) - 1 - int(np.argmax(alert_f1[::-1]))  # the highest of equals
    measured.append(
        {
            "threshold": float(THRESHOLDS[pick]),
            "cv_alert_precision": round(figures[pick][0], 4),
            "cv_failure_recall": round(figures[pick][1], 4),
            "cv_alert_f1": round(alert_f1[pick], 4),
            "cv_f1": round(f1[pick], 4),
            "failure_episodes": episodes,
        }
    )
    return _chosen(bins, float(THRESHOLDS[pick]), measured, episodes, figures[pick][0])


def _chosen(
    bins: int,
    picked: float,
    measured: list[dict[str, float]],
    episodes: int,
    precision: float,
) -> Choice:
    source = threshold_rule(episodes, precision)
    threshold = picked if source == CROSS_VALIDATION else ALERT_THRESHOLD
    return Choice(bins, threshold, measured, source, picked)


def predict(booster: Any, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import xgboost as xgb

    out: npt.NDArray[np.float64] = booster.predict(
        xgb.DMatrix(x.astype(np.float32), missing=np.nan)
    ).astype(np.float64)
    return out


def model_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def train_and_evaluate(
    table: FeatureTable,
    model_dir: Path,
    *,
    threshold: float | None = None,
    rounds: int = DEFAULT_ROUNDS,
    version: str | None = None,
    cv_folds: int = CV_FOLDS,
) -> dict[str, Any]:
    """Split, choose max_bin and the threshold by cross-validation on the training rows (a
    given `threshold` overrides the chosen one), fit, evaluate on the held-out machines'
    future, and save model + metadata."""
    split = split_by_time_and_machine(table)
    choice = cross_validate(
        table.x[split.train],
        split.train_label,
        table.machine_id[split.train],
        table.timestamp[split.train],
        rounds=rounds,
        folds=cv_folds,
    )
    source = choice.source if threshold is None else "given (--threshold)"
    threshold = choice.threshold if threshold is None else threshold
    booster = fit(
        table.x[split.train], split.train_label, rounds=rounds, params={"max_bin": choice.max_bin}
    )
    test = split.test
    metrics = evaluate(
        predict(booster, table.x[test]),
        table.extra["label"][test],
        table.machine_id[test],
        table.timestamp[test],
        table.extra["failures"],
        threshold=threshold,
        horizon_ms=int(table.extra["horizon_ms"]),
    )
    metrics["cross_validation"] = {
        "max_bin": choice.max_bin,
        "threshold": choice.threshold,
        "threshold_source": choice.source,
        "cv_threshold": choice.cv_threshold,
        "min_failures": MIN_CV_FAILURES,
        "min_alert_precision": MIN_CV_ALERT_PRECISION,
        "measured": choice.measured,
    }
    metrics["threshold_source"] = source
    metrics["split"] = {
        "train_rows": len(split.train),
        "train_positive_rows": int((split.train_label == 1).sum()),
        "test_rows": len(test),
        "test_machines": split.test_machines,
        "cut_ms": split.cut_ms,
    }
    save_model(
        booster,
        table.extra["spec"],
        model_dir,
        threshold=threshold,
        threshold_source=source,
        version=version,
    )
    write_metrics(metrics, model_dir / "metrics.json")
    return metrics


def save_model(
    booster: Any,
    spec: FeatureSpec,
    model_dir: Path,
    *,
    threshold: float = ALERT_THRESHOLD,
    threshold_source: str = "default",
    version: str | None = None,
) -> None:
    import xgboost as xgb

    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model_dir / MODEL_FILE))
    info = {
        "model_version": version or model_version(),
        "feature_names": spec.names,
        "feature_spec": spec.to_dict(),
        "threshold": threshold,
        "threshold_source": threshold_source,
        "xgboost_version": xgb.__version__,
    }
    (model_dir / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n")


# ------------------------------------------------------------------ SageMaker script mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=Path(os.environ.get("SM_CHANNEL_TRAIN", ".")))
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("SM_MODEL_DIR", "model"))
    )
    parser.add_argument(
        "--output-data-dir",
        type=Path,
        default=Path(os.environ.get("SM_OUTPUT_DATA_DIR", os.environ.get("SM_MODEL_DIR", "model"))),
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="default: chosen by cross-validation"
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args(argv)
    metrics = train_and_evaluate(
        load_input(args.train), args.model_dir, threshold=args.threshold, rounds=args.rounds
    )
    write_metrics(metrics, args.output_data_dir / "metrics.json")
    json.dump({k: metrics[k] for k in ("pr_auc", "precision", "recall")}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
