"""Train the multivariate anomaly detector: one PCA T²+Q model per machine, on normal operation.

The model and its scoring are defined once, in `edge_runtime.anomaly_detector` (the gateway
runs it); this module fits its parameters from a machine's normal rows, with nothing but those
rows (no labels):

* standardize each sensor with the training rows' mean and standard deviation, smooth it with
  the EWMA the gateway uses, and fit PCA on the smoothed rows, keeping the components that
  explain `explained_variance` of the variance (always leaving one out, so Q exists);
* T² and Q are each divided by their 99th percentile on the training rows;
* the threshold is the 99th percentile of the smoothed training scores times a factor
  calibrated forward on the training rows themselves: a model fitted on the first 75% scores
  the last 25% (still normal operation, but unseen), and the factor is how far above its own
  99th percentile that held-out stretch went (at least 1). Drift that normal operation shows
  within minutes thus widens the threshold instead of raising alarms.

**Sensor screening** (`screen_sensors`, also from training rows only): a sensor whose normal
readings drift on their own breaks the model's stationarity assumption. Its drift is the part
the other sensors do not explain (the residual of a linear fit on them over the first 75% of
the training rows): how far the residual's mean moves over the held-out last 25%, in units of
its spread over the first 75%. A sensor that follows the process load moves with the others and
does not count. Thermal sensors are the typical case that does: they respond to everything
with a time constant of minutes and do not return to their baseline after an event, so their
level tells more about the last hour than about now. A sensor whose median drift over the
fleet's machines exceeds `max_drift` is left out of the multivariate model (its own limits
and rate-of-change rules still watch it). The screen is decided once per sensor over the whole
fleet, before any evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.anomaly_detector import (
    AnomalyModelSet,
    MachineModel,
    ewma,
    moving_mean,
)
from iiot.catalog import MetricCatalog

FloatArray = npt.NDArray[np.float64]
# The pump metrics of the catalog the detector considers by default (the screen may drop some).
DEFAULT_SENSORS = ("temperature", "vibration", "pressure", "rpm", "flow_rate")


@dataclass(frozen=True)
class DetectorConfig:
    """How the detector is trained; the defaults are the shipped configuration."""

    ewma_span: int = 5
    smoothing_readings: int = 5
    explained_variance: float = 0.85
    limit_quantile: float = 0.99
    calibration_share: float = 0.25  # the last quarter of the training rows calibrates
    screen_sensors: bool = True
    max_drift: float = 0.5  # in standard deviations of the first part of the training rows
    min_rows: int = 40

    def __post_init__(self) -> None:
        if not 0 < self.explained_variance < 1:
            raise ValueError(f"explained_variance must be in (0, 1): {self.explained_variance}")
        if not 0 < self.calibration_share < 0.5:
            raise ValueError(f"calibration_share must be in (0, 0.5): {self.calibration_share}")
        if self.ewma_span < 1 or self.smoothing_readings < 1:
            raise ValueError("ewma_span and smoothing_readings must be at least 1")


def _standardization(rows: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant sensor: any change from it is an anomaly
    return mean, scale


def _pca_model(
    smoothed: FloatArray,
    mean: FloatArray,
    scale: FloatArray,
    sensors: tuple[str, ...],
    config: DetectorConfig,
) -> MachineModel:
    """PCA of the standardized smoothed rows, with T² and Q limits (threshold still 1)."""
    z = (smoothed - mean) / scale
    offset = z.mean(axis=0)
    _, singular, vt = np.linalg.svd(z - offset, full_matrices=False)
    variances = singular**2 / max(len(z) - 1, 1)
    total = variances.sum()
    explained = np.cumsum(variances) / total if total > 0 else np.ones_like(variances)
    k = min(int(np.searchsorted(explained, config.explained_variance) + 1), len(sensors) - 1)
    eigenvalues = np.maximum(variances[:k], 1e-12)
    provisional = MachineModel(
        sensors=sensors,
        center=mean + offset * scale,
        scale=scale,
        components=vt[:k].T,
        eigenvalues=eigenvalues,
        t2_limit=1.0,
        q_limit=1.0,
        threshold=1.0,
    )
    t2, q = provisional.t2_and_q(smoothed)
    return MachineModel(
        sensors=sensors,
        center=provisional.center,
        scale=scale,
        components=provisional.components,
        eigenvalues=eigenvalues,
        t2_limit=max(float(np.quantile(t2, config.limit_quantile)), 1e-12),
        q_limit=max(float(np.quantile(q, config.limit_quantile)), 1e-12),
        threshold=1.0,
    )


def fit_machine(
    rows: FloatArray, sensors: Sequence[str], config: DetectorConfig = DetectorConfig()
) -> tuple[MachineModel, dict[str, float]]:
    """One machine's model from its normal rows (n, d) in time order, and how its threshold
    was set."""
    rows = np.asarray(rows, dtype=np.float64)
    sensors = tuple(sensors)
    if rows.ndim != 2 or rows.shape[1] != len(sensors):
        raise ValueError(f"rows must be (n, {len(sensors)}), got {rows.shape}")
    if len(rows) < config.min_rows:
        raise ValueError(f"{len(rows)} training rows; at least {config.min_rows} are needed")
    if not np.all(np.isfinite(rows)):
        raise ValueError("training rows hold NaN or infinite values: fill or drop them first")
    mean, scale = _standardization(rows)
    smoothed = ewma(rows, config.ewma_span)
    window = config.smoothing_readings
    model = _pca_model(smoothed, mean, scale, sensors, config)
    scores = moving_mean(model.instant_scores(smoothed), window)
    warm = min(window - 1, len(rows) // 4)
    base = float(np.quantile(scores[warm:], config.limit_quantile))

    # forward calibration inside the training rows: fit on the first part, score the rest
    split = len(rows) - max(round(len(rows) * config.calibration_share), 1)
    early = _pca_model(smoothed[:split], mean, scale, sensors, config)
    early_scores = moving_mean(early.instant_scores(smoothed), window)
    early_base = max(float(np.quantile(early_scores[warm:split], config.limit_quantile)), 1e-12)
    factor = max(1.0, float(early_scores[split:].max()) / early_base)
    threshold = max(factor * base, 1e-12)
    return replace(model, threshold=threshold), {
        "training_rows": len(rows),
        "components": int(model.components.shape[1]),
        "base_quantile_score": round(base, 6),
        "forward_factor": round(factor, 4),
        "threshold": round(threshold, 6),
    }


def sensor_drift(rows: FloatArray, calibration_share: float = 0.25) -> FloatArray:
    """Per sensor, the drift the other sensors do not explain: regress the sensor on the others
    over the first part of the rows (standardized, least squares), then take the shift of the
    residual's mean over the last `calibration_share` of the rows, in units of the residual's
    standard deviation over the first part. A sensor that follows the process load moves with
    the others and does not count as drifting; one whose level wanders on its own does."""
    rows = np.asarray(rows, dtype=np.float64)
    n, d = rows.shape
    split = n - max(round(n * calibration_share), 1)
    mean, scale = _standardization(rows[:split])
    z = (rows - mean) / scale
    design = np.column_stack([np.ones(n), z])
    drift = np.zeros(d)
    for j in range(d):
        others = [0, *(i + 1 for i in range(d) if i != j)]
        coef, *_ = np.linalg.lstsq(design[:split, others], z[:split, j], rcond=None)
        residual = z[:, j] - design[:, others] @ coef
        spread = residual[:split].std()
        if spread < 1e-9:
            spread = 1.0
        drift[j] = abs(residual[split:].mean() - residual[:split].mean()) / spread
    return drift


@dataclass(frozen=True)
class Screening:
    kept: tuple[str, ...]
    dropped: tuple[str, ...]
    median_drift: dict[str, float]
    max_drift: float

    @property
    def decision_margin(self) -> tuple[float, float]:
        """Every `max_drift` in [low, high) keeps and drops the same sensors."""
        kept = [self.median_drift[s] for s in self.kept]
        dropped = [self.median_drift[s] for s in self.dropped]
        return (max(kept) if kept else 0.0, min(dropped) if dropped else float("inf"))


def screen_sensors(
    training: Mapping[str, FloatArray],
    sensors: Sequence[str],
    *,
    max_drift: float = 0.5,
    calibration_share: float = 0.25,
) -> Screening:
    """Which sensors the multivariate model uses: those whose median drift over the machines'
    normal rows is at most `max_drift` (see the module docstring)."""
    sensors = tuple(sensors)
    drift = np.array([sensor_drift(rows, calibration_share) for rows in training.values()])
    median = np.median(drift, axis=0)
    kept = tuple(s for s, m in zip(sensors, median, strict=True) if m <= max_drift)
    if len(kept) < 2:
        # too few steady sensors for a multivariate model: keep the two steadiest
        kept = tuple(sensors[i] for i in sorted(np.argsort(median, kind="stable")[:2]))
    return Screening(
        kept=kept,
        dropped=tuple(s for s in sensors if s not in kept),
        median_drift={s: round(float(m), 4) for s, m in zip(sensors, median, strict=True)},
        max_drift=max_drift,
    )


def train_models(
    training: Mapping[str, FloatArray],
    sensors: Sequence[str],
    *,
    config: DetectorConfig = DetectorConfig(),
    version: str,
    extra: Mapping[str, Any] | None = None,
) -> AnomalyModelSet:
    """A model per machine from its normal rows (n, len(sensors)), after the fleet-wide sensor
    screen when `config.screen_sensors`."""
    sensors = tuple(sensors)
    if not training:
        raise ValueError("no machine has normal rows to train on")
    screening = None
    used = sensors
    if config.screen_sensors:
        screening = screen_sensors(
            training,
            sensors,
            max_drift=config.max_drift,
            calibration_share=config.calibration_share,
        )
        used = screening.kept
    columns = [sensors.index(s) for s in used]
    machines: dict[str, MachineModel] = {}
    thresholds: dict[str, dict[str, float]] = {}
    for machine_id, rows in sorted(training.items()):
        model, how = fit_machine(np.asarray(rows)[:, columns], used, config)
        machines[machine_id] = model
        thresholds[machine_id] = how
    info: dict[str, Any] = {
        "config": asdict(config),
        "sensors": list(used),
        "screening": (
            {
                "rule": (
                    "a sensor is left out when the median over machines of its unexplained "
                    "drift exceeds max_drift: the residual of a linear fit on the other sensors "
                    "(first 75% of the normal rows), |mean over the last 25% - mean over the "
                    "first 75%| / std over the first 75%"
                ),
                "max_drift": screening.max_drift,
                "median_drift": screening.median_drift,
                "dropped": list(screening.dropped),
                "same_decision_for_max_drift_in": [
                    round(screening.decision_margin[0], 4),
                    round(screening.decision_margin[1], 4),
                ],
            }
            if screening is not None
            else None
        ),
        "machines": thresholds,
        **dict(extra or {}),
    }
    return AnomalyModelSet(
        model_version=version,
        ewma_span=config.ewma_span,
        smoothing_readings=config.smoothing_readings,
        machines=machines,
        training=info,
    )


# ------------------------------------------------------------------ from the platform's data


@dataclass(frozen=True)
class NormalRows:
    """A machine's rows of normal operation: one row per timestamp, every sensor filled."""

    timestamp: npt.NDArray[np.int64]
    values: FloatArray  # (n, len(sensors))


def machine_rows(
    timestamp: npt.NDArray[np.int64],
    metric: npt.NDArray[np.str_],
    value: FloatArray,
    sensors: Sequence[str],
) -> NormalRows:
    """One machine's readings (in time order) as rows, the way the gateway assembles them: a
    row per timestamp, a sensor that did not report keeps its last value, and rows before
    every sensor has reported once are left out."""
    times, row_of = np.unique(np.asarray(timestamp, dtype=np.int64), return_inverse=True)
    values = np.full((len(times), len(sensors)), np.nan)
    for j, sensor in enumerate(sensors):
        picked = np.asarray(metric) == sensor
        values[row_of[picked], j] = np.asarray(value, dtype=np.float64)[picked]
    # forward fill each column
    filled = np.where(np.isnan(values), 0, np.arange(len(times))[:, None])
    np.maximum.accumulate(filled, axis=0, out=filled)
    values = values[filled, np.arange(len(sensors))]
    complete = ~np.isnan(values).any(axis=1)
    return NormalRows(times[complete], values[complete])


def normal_operation(
    run_dir: Path,
    *,
    sensors: Sequence[str] | None = None,
    horizon_ms: int = 24 * 3_600_000,
    max_rows: int = 20_000,
    catalog: MetricCatalog | None = None,
) -> tuple[dict[str, NormalRows], tuple[str, ...]]:
    """Every machine's normal rows from a run directory (or the lake's silver export): its
    valid readings, without the `horizon_ms` before each recorded failure, its down time and
    any maintenance job, the most recent `max_rows` of what remains. Failures after the data
    ends cannot be known, so the last hours count as normal (as a live system must too)."""
    from ml_pipeline.dataset import read_history, read_streams

    history = read_history(run_dir)
    jobs = _maintenance_windows(run_dir)
    streams = list(read_streams(run_dir, history, catalog))
    if sensors is None:
        present = {str(m) for stream in streams for m in np.unique(stream.metric)}
        sensors = tuple(s for s in DEFAULT_SENSORS if s in present) or tuple(sorted(present))
    sensors = tuple(sensors)
    failures: dict[str, list[tuple[int, int]]] = {}
    for failure in history.failures:
        failures.setdefault(failure.machine_id, []).append(
            (failure.failed_at_ms - horizon_ms, failure.repaired_at_ms)
        )
    result: dict[str, NormalRows] = {}
    for stream in streams:
        machine_id = stream.machine.machine_id
        rows = machine_rows(stream.timestamp, stream.metric, stream.value, sensors)
        keep = np.ones(len(rows.timestamp), dtype=bool)
        for begin, end in [*failures.get(machine_id, []), *jobs.get(machine_id, [])]:
            keep &= (rows.timestamp < begin) | (rows.timestamp >= end)
        kept = np.flatnonzero(keep)[-max_rows:]
        result[machine_id] = NormalRows(rows.timestamp[kept], rows.values[kept])
    return result, sensors


def _maintenance_windows(run_dir: Path) -> dict[str, list[tuple[int, int]]]:
    import csv

    path = run_dir / "maintenance_records.csv"
    windows: dict[str, list[tuple[int, int]]] = {}
    if not path.exists():
        return windows
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            windows.setdefault(row["machine_id"], []).append(
                (int(row["started_at_ms"]), int(row["completed_at_ms"]))
            )
    return windows


def train_from_run(
    run_dir: Path,
    *,
    config: DetectorConfig = DetectorConfig(),
    version: str,
    horizon_ms: int = 24 * 3_600_000,
    catalog: MetricCatalog | None = None,
) -> AnomalyModelSet:
    """The AnomalyModel of every machine with enough normal rows in `run_dir`."""
    normal, sensors = normal_operation(run_dir, horizon_ms=horizon_ms, catalog=catalog)
    training = {
        m: rows.values for m, rows in normal.items() if len(rows.values) >= 4 * config.min_rows
    }
    skipped = sorted(set(normal) - set(training))
    if not training:
        raise ValueError(
            f"{run_dir}: no machine has {4 * config.min_rows} rows of normal operation to "
            "train on: export a longer history"
        )
    return train_models(
        training,
        sensors,
        config=config,
        version=version,
        extra={
            "source": str(run_dir),
            "horizon_hours": horizon_ms / 3_600_000,
            "rows_per_machine": {m: len(v) for m, v in training.items()},
            "machines_without_enough_normal_rows": skipped,
        },
    )


def write_artifact(models: AnomalyModelSet, out_dir: Path, zip_path: Path | None = None) -> Path:
    """The AnomalyModel component's artifact: ``out_dir/anomaly_model.json`` and, when asked,
    a zip holding it as ``anomaly_model/anomaly_model.json`` (what the recipe unarchives)."""
    import zipfile

    from edge_runtime.anomaly_detector import MODEL_FILE

    path = models.save(out_dir)
    if zip_path is not None:
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(path, f"anomaly_model/{MODEL_FILE}")
    return path
