"""The detector candidates of issue 17 side by side on SKAB, under one pipeline.

Each candidate is a model family fitted per file on its first 400 rows and fed exactly what the
shipped detector is fed, so that the family is the only difference:

* every sensor standardized with the training rows' mean and standard deviation, then smoothed
  by an EWMA of span 5 (causal), the score then averaged over the last 5 rows;
* the alarm threshold: the 99th percentile of the smoothed training scores times the forward
  factor (a model fitted on the first 300 training rows scores the last 100; the factor is how
  far above its own 99th percentile that stretch went, at least 1): training rows only;
* on the screened sensors (the shipped detector's training-only screen) and on all 8.

Families: PCA T²+Q (the shipped one, refitted here as a check), Hotelling T² (Mahalanobis
distance), MSET (100 memory vectors, SKAB's similarity kernel), a windowless MLP autoencoder
(one hidden layer of 4 tanh units, scikit-learn) and forecasting residuals (ridge AR(5): the
Mahalanobis distance of the one-step forecast error). Only PCA T²+Q runs on the gateway
(`edge_runtime/anomaly_detector.py`); the others are scored in batch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_pipeline.skab import SENSORS, TRAIN_ROWS, SkabFile, _evaluate

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Scorer = Callable[[FloatArray], FloatArray]
EWMA_SPAN = 5
SMOOTHING = 5
FORWARD_SPLIT = 300


def _ewma(x: FloatArray, span: int) -> FloatArray:
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(x)
    state = x[0].copy()
    for i in range(len(x)):
        state += alpha * (x[i] - state)
        out[i] = state
    return out


def _moving_mean(values: FloatArray, window: int) -> FloatArray:
    sums = np.concatenate([[0.0], np.cumsum(values)])
    n = np.arange(1, len(values) + 1)
    low = np.maximum(n - window, 0)
    out: FloatArray = (sums[n] - sums[low]) / (n - low)
    return out


def fit_hotelling(z: FloatArray) -> Scorer:
    mean = z.mean(axis=0)
    precision = np.linalg.inv(np.cov(z.T) + 1e-3 * np.eye(z.shape[1]))

    def score(y: FloatArray) -> FloatArray:
        d = y - mean
        out: FloatArray = np.einsum("ij,jk,ik->i", d, precision, d)
        return out

    return score


def fit_pca_t2q(z: FloatArray, explained: float = 0.85) -> Scorer:
    mean = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    variance = s**2 / (len(z) - 1)
    k = int(np.searchsorted(np.cumsum(variance) / variance.sum(), explained) + 1)
    k = min(k, z.shape[1] - 1)
    v, inverse = vt[:k].T, 1.0 / variance[:k]

    def parts(y: FloatArray) -> tuple[FloatArray, FloatArray]:
        centred = y - mean
        t = centred @ v
        return (t**2 * inverse).sum(axis=1), ((centred - t @ v.T) ** 2).sum(axis=1)

    t2, q = parts(z)
    t2_scale, q_scale = np.quantile(t2, 0.99), max(float(np.quantile(q, 0.99)), 1e-12)

    def score(y: FloatArray) -> FloatArray:
        a, b = parts(y)
        out: FloatArray = a / t2_scale + b / q_scale
        return out

    return score


def fit_mset(z: FloatArray, memory: int = 100) -> Scorer:
    d = z[np.linspace(0, len(z) - 1, min(memory, len(z))).astype(int)]
    norms = np.linalg.norm(d, axis=1)

    def kernel(a: FloatArray) -> FloatArray:
        distance = np.linalg.norm(a[:, None, :] - d[None, :, :], axis=2)
        out: FloatArray = 1.0 - distance / (np.linalg.norm(a, axis=1)[:, None] + norms + 1e-12)
        return out

    inverse = np.linalg.pinv(kernel(d))

    def score(y: FloatArray) -> FloatArray:
        estimate = kernel(y) @ inverse.T @ d
        out: FloatArray = np.linalg.norm(y - estimate, axis=1) ** 2
        return out

    return score


def fit_autoencoder(z: FloatArray, hidden: int = 4) -> Scorer:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    model = MLPRegressor(
        hidden_layer_sizes=(hidden,),
        activation="tanh",
        alpha=1e-3,
        max_iter=2000,
        random_state=0,
        tol=1e-6,
    )
    with warnings.catch_warnings():  # 2000 iterations stop short of sklearn's tolerance
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(z, z)

    def score(y: FloatArray) -> FloatArray:
        out: FloatArray = ((y - model.predict(y)) ** 2).sum(axis=1)
        return out

    return score


def fit_forecast(z: FloatArray, lags: int = 5, ridge: float = 1.0) -> Scorer:
    def design(y: FloatArray) -> FloatArray:
        shifted = [
            np.vstack([np.repeat(y[:1], lag, axis=0), y[:-lag]]) for lag in range(1, lags + 1)
        ]
        return np.hstack([*shifted, np.ones((len(y), 1))])

    a = design(z)
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ z)
    residual = fit_hotelling((z - a @ weights)[lags:])

    def score(y: FloatArray) -> FloatArray:
        return residual(y - design(y) @ weights)

    return score


FAMILIES: dict[str, Callable[[FloatArray], Scorer]] = {
    "pca_t2q": fit_pca_t2q,
    "hotelling_t2": fit_hotelling,
    "mset": fit_mset,
    "mlp_autoencoder": fit_autoencoder,
    "forecast_residual_ar5": fit_forecast,
}


def alarms(file: SkabFile, columns: Sequence[int], fit: Callable[[FloatArray], Scorer]) -> Any:
    """Test-row alarms of one family on one file, from its training rows only."""
    x = file.values[:, list(columns)]
    mean, spread = x[:TRAIN_ROWS].mean(axis=0), x[:TRAIN_ROWS].std(axis=0)
    spread[spread < 1e-9] = 1.0
    features = _ewma((x - mean) / spread, EWMA_SPAN)
    full = _moving_mean(fit(features[:TRAIN_ROWS])(features), SMOOTHING)
    forward = _moving_mean(fit(features[:FORWARD_SPLIT])(features[:TRAIN_ROWS]), SMOOTHING)
    first = SMOOTHING - 1
    inside = np.quantile(forward[first:FORWARD_SPLIT], 0.99)
    factor = max(1.0, float(forward[FORWARD_SPLIT:TRAIN_ROWS].max()) / max(inside, 1e-12))
    threshold = factor * np.quantile(full[first:TRAIN_ROWS], 0.99)
    return (full[TRAIN_ROWS:] > threshold).astype(np.int8)


def compare(
    files: Sequence[SkabFile], screened: Sequence[str], families: Sequence[str] | None = None
) -> dict[str, Any]:
    """F1/FAR/MAR and NAB of every family (or those named) on the screened sensors and all 8."""
    subsets = {
        "screened": [SENSORS.index(s) for s in screened],
        "all_8_sensors": list(range(len(SENSORS))),
    }
    out: dict[str, Any] = {}
    for family in families or FAMILIES:
        fit = FAMILIES[family]
        for subset, columns in subsets.items():
            log.info("skab candidates: %s on %s", family, subset)
            figures = _evaluate(files, [alarms(f, columns, fit) for f in files])
            out[f"{family} ({subset})"] = {k: figures[k] for k in ("f1", "far", "mar", "nab")}
    return out
