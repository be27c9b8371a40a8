"""NASA C-MAPSS with the platform's own feature definition, scored by the published protocol.

Each engine is a machine and each cycle one time step (1 cycle = 1 minute of event time), each
informative sensor a metric: the same `edge_runtime.features` code that runs on the gateways
computes the rolling statistics and trends. The engines start fresh, so "time since
maintenance" is the cycle count (a candidate the cross-validation may keep or drop).

Any subset (``--subset FD001`` .. ``FD004``) reads ``train_<subset>.txt``, ``test_<subset>.txt``
and ``RUL_<subset>.txt``. Subsets flown in several operating conditions (FD002, FD004: six)
have their sensors standardized per condition (the three settings rounded: altitude to 1 kft,
Mach to 0.01, throttle to 1), with the training rows' statistics; a sensor is informative when
some condition shows it with more than two distinct values in training (FD001 keeps 14 of 21).

Protocol ("fails within 30 cycles", the Azure predictive-maintenance template's, which the LSTM
figures also use): train on the training file; test on the last cycle of every test engine
with at least 50 cycles (93 engines in FD001), labelled positive when its true RUL is at most
30; every feature window is at most 50 cycles long (the cycle count since the engine's start,
"time since maintenance", is metadata an operator knows, as in the Azure template's features;
the cross-validation also tries the models without it). Candidates (a classifier on the binary
label, a regressor on RUL capped at 125 with a threshold on the predicted RUL, a few
hyper-parameters) and then XGBoost's ``max_bin`` for the chosen ones are picked by grouped
cross-validation over the training engines only, each with its alert threshold (the cut that
maximizes the cross-validated F1); the test set is scored once, with the chosen candidate.

RUL RMSE is reported over every test engine, against the true RUL capped at 125 (the usual
target) and uncapped, with 95% ranges from a bootstrap over the test engines.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.features import FeatureSpec, MachineInfo, batch_machine_features

log = logging.getLogger(__name__)

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
WINDOW = 30  # label: fails within 30 cycles
MIN_TEST_CYCLES = 50
RUL_CAP = 125
CYCLE_MS = 60_000
MAX_BINS = (64, 32, 128, 256)  # the first is the one every candidate starts with
BOOTSTRAP = 1000
PUBLISHED = {
    "LSTM (Azure template notebook)": {"precision": 0.96, "recall": 0.96, "f1": 0.96},
    "Azure ML template best model": {"f1": 0.87},
    "RUL RMSE (FD001)": {
        "MTSTAN": 10.97,
        "MS-DCNN": 11.44,
        "deep LSTM": 16.14,
        "CNN": 18.45,
        "SVR": 20.96,
    },
}


def read_engines(path: Path) -> dict[int, npt.NDArray[np.float64]]:
    """unit -> (cycles, 26) array: unit, cycle, 3 settings, 21 sensors."""
    data = np.loadtxt(path, ndmin=2)
    if data.shape[1] < 26:
        raise ValueError(f"{path}: {data.shape[1]} columns, C-MAPSS files have 26")
    return {int(u): data[data[:, 0] == u, :26] for u in np.unique(data[:, 0])}


def operating_conditions(settings: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """An integer code per row for its operating condition: the three settings rounded
    (altitude in kft to 1, Mach to 0.01, throttle resolver angle to 1; the files jitter each
    condition's settings by less than half of that)."""
    rounded = np.column_stack(
        [
            np.round(settings[:, 0]),
            np.round(settings[:, 1] * 100),
            np.round(settings[:, 2]),
        ]
    ).astype(np.int64)
    return rounded[:, 0] * 1_000_000 + rounded[:, 1] * 1_000 + rounded[:, 2]


@dataclass(frozen=True)
class SensorFrame:
    """Which sensors are informative and how to standardize them per operating condition
    (identity when the training data has one condition, as FD001 and FD003)."""

    sensors: tuple[int, ...]
    per_condition: dict[int, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]

    @classmethod
    def fit(cls, engines: dict[int, npt.NDArray[np.float64]]) -> SensorFrame:
        rows = np.vstack(list(engines.values()))
        condition = operating_conditions(rows[:, 2:5])
        codes = np.unique(condition)
        sensors = tuple(
            s
            for s in range(1, 22)
            if any(len(np.unique(rows[condition == c, 4 + s])) > 2 for c in codes)
        )
        per_condition = {}
        if len(codes) > 1:
            columns = [4 + s for s in sensors]
            for c in codes:
                values = rows[condition == c][:, columns]
                spread = values.std(axis=0)
                spread[spread < 1e-9] = 1.0
                per_condition[int(c)] = (values.mean(axis=0), spread)
        return cls(sensors, per_condition)

    def values(self, engine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(cycles, len(sensors)) sensor values, standardized per condition when several."""
        values = engine[:, [4 + s for s in self.sensors]].astype(np.float64)
        if not self.per_condition:
            return values
        condition = operating_conditions(engine[:, 2:5])
        out = np.empty_like(values)
        for i, c in enumerate(condition.tolist()):
            mean, spread = self.per_condition.get(int(c), (values.mean(axis=0), np.ones(1)))
            out[i] = (values[i] - mean) / spread
        return out


def spec_for(sensors: tuple[int, ...], *, maintenance: bool) -> FeatureSpec:
    return FeatureSpec(
        metrics=tuple(f"s{s}" for s in sensors),
        count_windows=(5, 15, 30),
        time_windows_minutes=(50,),
        maintenance=maintenance,
        machine_models=(),
    )


def engine_features(
    spec: FeatureSpec, engine: npt.NDArray[np.float64], frame: SensorFrame
) -> npt.NDArray[np.float64]:
    """One feature row per cycle, from the engine's sensor stream."""
    cycles = engine[:, 1].astype(np.int64)
    n_sensors = len(frame.sensors)
    timestamps = np.repeat(cycles * CYCLE_MS, n_sensors)
    metrics = np.tile(np.array([f"s{s}" for s in frame.sensors]), len(cycles))
    values = frame.values(engine).reshape(-1)
    rows = np.arange(len(cycles)) * n_sensors + n_sensors - 1
    # the engine starts fresh: its last maintenance is one cycle before the first
    start = [int(cycles[0] - 1) * CYCLE_MS]
    return batch_machine_features(
        spec, timestamps, metrics, values, MachineInfo("engine"), start, rows=rows
    )


@dataclass(frozen=True)
class Candidate:
    kind: str  # "classifier" | "regressor"
    maintenance: bool
    max_depth: int
    rounds: int
    eta: float = 0.08
    max_bin: int = MAX_BINS[0]

    def params(self) -> dict[str, Any]:
        base = {
            "max_depth": self.max_depth,
            "eta": self.eta,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 3,
            "nthread": int(os.environ.get("IIOT_ML_THREADS", "1")),
            "max_bin": self.max_bin,
            "seed": 7,
        }
        if self.kind == "classifier":
            return {**base, "objective": "binary:logistic"}
        return {**base, "objective": "reg:squarederror"}


def _fit(candidate: Candidate, x: npt.NDArray[np.float64], rul: npt.NDArray[np.float64]) -> Any:
    import xgboost as xgb

    target = (rul <= WINDOW).astype(np.float32) if candidate.kind == "classifier" else rul
    if candidate.kind == "regressor":
        target = np.minimum(rul, RUL_CAP).astype(np.float32)
    matrix = xgb.DMatrix(x.astype(np.float32), label=target, missing=np.nan)
    return xgb.train(candidate.params(), matrix, num_boost_round=candidate.rounds)


def _score(booster: Any, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A score where larger means closer to failure (probability, or minus predicted RUL)."""
    import xgboost as xgb

    out: npt.NDArray[np.float64] = booster.predict(
        xgb.DMatrix(x.astype(np.float32), missing=np.nan)
    ).astype(np.float64)
    return out if booster.attr("kind") != "regressor" else -out


def _f1_at(score: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_], cut: float) -> float:
    predicted = score >= cut
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _binary_figures(
    predicted: npt.NDArray[np.bool_], positive: npt.NDArray[np.bool_]
) -> dict[str, float]:
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def subset_files(data: Path, subset: str) -> tuple[Path, Path, Path]:
    """The training, test and true-RUL files of `subset` in `data`."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}")
    files = tuple(data / f"{kind}_{subset}.txt" for kind in ("train", "test", "RUL"))
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found: pass --data to the folder holding {subset}'s files"
        )
    return files[0], files[1], files[2]


def _bootstrap(statistic: Any, n: int, *, resamples: int, seed: int) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of `statistic(indices)` over bootstrap resamples of
    the n test engines."""
    if resamples <= 0 or n == 0:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def run(
    data: Path,
    *,
    subset: str = "FD001",
    folds: int = 5,
    seed: int = 7,
    candidates: list[Candidate] | None = None,
    max_bins: tuple[int, ...] = MAX_BINS,
    bootstrap: int = BOOTSTRAP,
    compile_check: bool = True,
) -> dict[str, Any]:
    began = time.perf_counter()
    train_file, test_file, rul_file = subset_files(data, subset)
    train = read_engines(train_file)
    test = read_engines(test_file)
    test_rul = np.loadtxt(rul_file, ndmin=1)
    if len(test_rul) != len(test):
        raise ValueError(f"{rul_file} has {len(test_rul)} values for {len(test)} test engines")
    frame = SensorFrame.fit(train)

    features: dict[bool, dict[str, Any]] = {}
    for maintenance in (False, True):
        spec = spec_for(frame.sensors, maintenance=maintenance)
        xs, ruls, groups, cycles = [], [], [], []
        for unit, engine in train.items():
            x = engine_features(spec, engine, frame)
            xs.append(x)
            ruls.append(engine[-1, 1] - engine[:, 1])
            groups.append(np.full(len(x), unit))
            cycles.append(engine[:, 1])
        features[maintenance] = {
            "spec": spec,
            "x": np.vstack(xs),
            "rul": np.concatenate(ruls),
            "group": np.concatenate(groups),
            "cycle": np.concatenate(cycles),
        }

    # grouped folds over training engines; validation rows mimic the test protocol (>= 50 cycles)
    units = np.array(sorted(train))
    rng = np.random.default_rng(seed)
    fold_of = dict(
        zip(rng.permutation(units).tolist(), itertools.cycle(range(folds)), strict=False)
    )

    measured: dict[Candidate, dict[str, Any]] = {}

    def cross_validate(candidate: Candidate) -> dict[str, Any]:
        if candidate in measured:
            return measured[candidate]
        log.info("cross-validating %s", candidate)
        f = features[candidate.maintenance]
        fold = np.array([fold_of[int(g)] for g in f["group"]])
        scores = np.full(len(fold), np.nan)
        for k in range(folds):
            booster = _fit(candidate, f["x"][fold != k], f["rul"][fold != k])
            booster.set_attr(kind=candidate.kind)
            rows = fold == k
            scores[rows] = _score(booster, f["x"][rows])
        evaluated = f["cycle"] >= MIN_TEST_CYCLES
        positive = f["rul"][evaluated] <= WINDOW
        s = scores[evaluated]
        cuts = (
            np.linspace(0.05, 0.95, 91)
            if candidate.kind == "classifier"
            else -np.arange(15.0, 60.5, 0.5)
        )
        f1s = [_f1_at(s, positive, float(c)) for c in cuts]
        best = int(np.argmax(f1s))
        entry = {"candidate": candidate, "cv_f1": f1s[best], "cut": round(float(cuts[best]), 4)}
        if candidate.kind == "regressor":
            predicted_rul = np.minimum(-scores[evaluated], RUL_CAP)
            entry["cv_rmse"] = float(
                np.sqrt(np.mean((predicted_rul - np.minimum(f["rul"][evaluated], RUL_CAP)) ** 2))
            )
        measured[candidate] = entry
        return entry

    candidates = candidates or [
        Candidate(kind, maintenance, depth, rounds, max_bin=max_bins[0])
        for kind in ("classifier", "regressor")
        for maintenance in (False, True)
        for depth, rounds in ((3, 250), (5, 150))
    ]
    for c in candidates:
        cross_validate(c)
    chosen = max(measured.values(), key=lambda e: e["cv_f1"])
    best_regressor = min(
        (e for e in measured.values() if "cv_rmse" in e), key=lambda e: e["cv_rmse"]
    )
    # then max_bin, for the two chosen candidates only (another value wins only if better)
    classifier_base, regressor_base = chosen["candidate"], best_regressor["candidate"]
    for bins in max_bins:
        entry = cross_validate(replace(classifier_base, max_bin=bins))
        if entry["cv_f1"] > chosen["cv_f1"]:
            chosen = entry
        entry = cross_validate(replace(regressor_base, max_bin=bins))
        if entry["cv_rmse"] < best_regressor["cv_rmse"]:
            best_regressor = entry
    cv = list(measured.values())

    def test_rows(
        spec: FeatureSpec, *, min_cycles: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        xs, ruls = [], []
        for position, (_unit, engine) in enumerate(sorted(test.items())):
            if len(engine) < min_cycles:
                continue
            # every window is at most 50 cycles, so the last row only sees the last 50 cycles;
            # the cycle count (time since overhaul) is the engine's metadata
            xs.append(engine_features(spec, engine, frame)[-1])
            ruls.append(test_rul[position])
        return np.vstack(xs), np.array(ruls)

    # the test set, once, with the chosen candidates refitted on every training engine
    candidate = chosen["candidate"]
    f = features[candidate.maintenance]
    booster = _fit(candidate, f["x"], f["rul"])
    booster.set_attr(kind=candidate.kind)
    x_test, rul_test = test_rows(f["spec"], min_cycles=MIN_TEST_CYCLES)
    predicted = _score(booster, x_test) >= chosen["cut"]
    positive = rul_test <= WINDOW
    classification: dict[str, Any] = dict(_binary_figures(predicted, positive))
    classification["f1_ci95"] = _bootstrap(
        lambda i: _binary_figures(predicted[i], positive[i])["f1"],
        len(predicted),
        resamples=bootstrap,
        seed=seed,
    )

    regressor = best_regressor["candidate"]
    fr = features[regressor.maintenance]
    reg_booster = _fit(regressor, fr["x"], fr["rul"])
    reg_booster.set_attr(kind="regressor")
    x_all, rul_all = test_rows(fr["spec"], min_cycles=1)
    predicted_rul = -_score(reg_booster, x_all)
    long_enough = np.array([len(e) >= MIN_TEST_CYCLES for _, e in sorted(test.items())])
    rul_figures: dict[str, Any] = {"engines": len(rul_all)}
    for name, truth in (
        ("clipped_truth", np.minimum(rul_all, RUL_CAP)),
        ("raw_truth", rul_all),
    ):
        error = predicted_rul - truth
        rul_figures[name] = {
            "rmse": round(math.sqrt(float(np.mean(error**2))), 2),
            "rmse_ci95": _bootstrap(
                lambda i, e=error: math.sqrt(float(np.mean(e[i] ** 2))),
                len(error),
                resamples=bootstrap,
                seed=seed,
            ),
        }
    rul_figures[f"clipped_truth_engines_with_{MIN_TEST_CYCLES}_cycles"] = round(
        math.sqrt(
            float(
                np.mean(
                    (predicted_rul[long_enough] - np.minimum(rul_all[long_enough], RUL_CAP)) ** 2
                )
            )
        ),
        2,
    )

    # the same model compiled for the gateway gives the same answers
    compiled = _compiled_agreement(booster, x_test, f["spec"]) if compile_check else None

    def describe(c: Candidate) -> dict[str, Any]:
        return {**c.__dict__}

    return {
        "subset": subset,
        "protocol": (
            f"{subset}, test = last cycle of the {len(rul_test)} test engines with >= "
            f"{MIN_TEST_CYCLES} cycles, positive when RUL <= {WINDOW}; feature windows span at "
            f"most the last {MIN_TEST_CYCLES} cycles (plus the cycle count when chosen); RUL "
            f"RMSE over all {len(rul_all)} test engines"
        ),
        "sensors": [f"s{s}" for s in frame.sensors],
        "operating_conditions": max(len(frame.per_condition), 1),
        "test_engines": len(rul_test),
        "test_positives": int(positive.sum()),
        "classification": classification,
        "chosen": {
            **describe(candidate),
            "cut": chosen["cut"],
            "cv_f1": round(chosen["cv_f1"], 4),
        },
        "cross_validation": [
            {
                **describe(e["candidate"]),
                "cv_f1": round(e["cv_f1"], 4),
                "cut": e["cut"],
                **({"cv_rmse": round(e["cv_rmse"], 2)} if "cv_rmse" in e else {}),
            }
            for e in cv
        ],
        "rul_rmse": rul_figures,
        "rul_regressor": {**describe(regressor), "cv_rmse": round(best_regressor["cv_rmse"], 2)},
        "compiled_max_abs_difference": compiled,
        "published": PUBLISHED,
        "seconds": round(time.perf_counter() - began, 1),
    }


def _compiled_agreement(
    booster: Any, x: npt.NDArray[np.float64], spec: FeatureSpec
) -> float | None:
    """Compile the chosen model with TL2cgen for this machine; max |compiled - xgboost|."""
    import json
    import tempfile

    import xgboost as xgb

    from edge_runtime.model_runtime import load_model, machine_arch
    from ml_pipeline.compile import CompileError, compile_model
    from ml_pipeline.train import MODEL_FILE, TRAINING_FILE

    with tempfile.TemporaryDirectory() as scratch:
        model_dir, out = Path(scratch) / "model", Path(scratch) / "compiled"
        model_dir.mkdir()
        booster.save_model(str(model_dir / MODEL_FILE))
        info = {
            "model_version": "cmapss",
            "feature_names": spec.names,
            "feature_spec": spec.to_dict(),
            "threshold": 0.5,
        }
        (model_dir / TRAINING_FILE).write_text(json.dumps(info))
        try:
            compile_model(model_dir, out, (machine_arch(),))
        except CompileError:
            return None
        model = load_model(out)
        raw = booster.predict(xgb.DMatrix(x.astype(np.float32), missing=np.nan))
        return float(np.max(np.abs(model.predict(x) - raw)))
