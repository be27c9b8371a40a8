"""The multivariate anomaly detector: one definition, scored in batch (training) and per reading
(gateway).

Per machine, a PCA model of normal operation over a few sensors (Hotelling's T² inside the
model's subspace plus the squared prediction error Q outside it), applied to exponentially
smoothed readings:

1. ``e``: each sensor's exponentially weighted moving average (span ``ewma_span`` readings),
   started at the machine's first complete row;
2. ``y = (e - center) / scale``: standardized with the training rows' statistics;
3. ``score = T²(y) / t2_limit + Q(y) / q_limit``: both parts relative to their 99th percentile
   on the training rows;
4. the mean of the last ``smoothing_readings`` scores; above the machine's ``threshold`` the
   machine is anomalous.

The sensors that contributed most are the terms of the score's quadratic form,
``score = y · M y`` with ``y_j (M y)_j`` per sensor: the share each sensor carries of the score
when the anomaly is raised, which tells an operator where to look.

A model set (``anomaly_model.json``, what the com.iiot.AnomalyModel component ships) holds one
such model per machine: about 43 numbers each. `smoothed_scores` scores rows in batch for
training and evaluation; `MachineDetector` keeps one machine's state on the gateway (the
latest value of each sensor, the moving averages, the last scores, the alarm) and updates it per
reading; `tests/edge_runtime/test_anomaly_detector.py` proves both give the same scores.

This module must stay importable on a gateway: numpy and the standard library only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

MODEL_FILE = "anomaly_model.json"
FORMAT = "pca-t2q/1"
TOP_CONTRIBUTORS = 3
MIN_SHARE = 0.05  # contributors below 5% of the score are not named


class AnomalyModelError(ValueError):
    """An anomaly model file that cannot be used; the message says what is wrong."""


def _array(raw: Any, name: str, shape: tuple[int, ...]) -> FloatArray:
    array = np.asarray(raw, dtype=np.float64)
    if array.shape != shape:
        raise AnomalyModelError(f"{name} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise AnomalyModelError(f"{name} holds a non-finite number")
    return array


@dataclass(frozen=True, eq=False)
class MachineModel:
    """One machine's model of normal operation (see the module docstring)."""

    sensors: tuple[str, ...]
    center: FloatArray  # (d,) in the sensors' units
    scale: FloatArray  # (d,) positive
    components: FloatArray  # (d, k) principal directions of the standardized smoothed rows
    eigenvalues: FloatArray  # (k,) their variances
    t2_limit: float
    q_limit: float
    threshold: float

    def __post_init__(self) -> None:
        d = len(self.sensors)
        if d < 2 or len(set(self.sensors)) != d:
            raise AnomalyModelError(f"a model needs two or more distinct sensors: {self.sensors}")
        k = np.shape(self.components)[1] if np.ndim(self.components) == 2 else 0
        if not 1 <= k < d:
            raise AnomalyModelError(f"components must be ({d}, k) with 1 <= k < {d}")
        object.__setattr__(self, "center", _array(self.center, "center", (d,)))
        object.__setattr__(self, "scale", _array(self.scale, "scale", (d,)))
        object.__setattr__(self, "components", _array(self.components, "components", (d, k)))
        object.__setattr__(self, "eigenvalues", _array(self.eigenvalues, "eigenvalues", (k,)))
        limits = (self.t2_limit, self.q_limit, self.threshold)
        if not (np.all(self.scale > 0) and np.all(self.eigenvalues > 0)):
            raise AnomalyModelError("scale and eigenvalues must be positive")
        if not all(math.isfinite(v) and v > 0 for v in limits):
            raise AnomalyModelError(f"t2_limit, q_limit and threshold must be positive: {limits}")

    # Folded constants: score = t·(w_t t) + |y|² q_weight with t = V'y.
    @cached_property
    def inverse_scale(self) -> FloatArray:
        return 1.0 / self.scale

    @cached_property
    def t_weights(self) -> FloatArray:
        return 1.0 / (self.eigenvalues * self.t2_limit) - 1.0 / self.q_limit

    @cached_property
    def q_weight(self) -> float:
        return 1.0 / self.q_limit

    @cached_property
    def quadratic_form(self) -> FloatArray:
        """M with score = y·My (for the sensors' contributions)."""
        v = self.components
        eye = np.eye(len(self.sensors))
        return np.asarray((v * self.t_weights) @ v.T + eye * self.q_weight, dtype=np.float64)

    @property
    def parameter_count(self) -> int:
        return int(2 * self.center.size + self.components.size + self.eigenvalues.size + 3)

    def standardized(self, smoothed: FloatArray) -> FloatArray:
        return (np.asarray(smoothed, dtype=np.float64) - self.center) * self.inverse_scale

    def t2_and_q(self, smoothed: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Hotelling's T² and Q of smoothed rows (n, d), each as an (n,) array."""
        y = self.standardized(np.atleast_2d(smoothed))
        t = y @ self.components
        t2 = (t * t / self.eigenvalues).sum(axis=1)
        q = np.maximum((y * y).sum(axis=1) - (t * t).sum(axis=1), 0.0)
        return t2, q

    def instant_scores(self, smoothed: FloatArray) -> FloatArray:
        """The score of each smoothed row (n, d), before the moving mean."""
        y = self.standardized(np.atleast_2d(smoothed))
        t = y @ self.components
        return np.asarray(
            (t * t * self.t_weights).sum(axis=1) + (y * y).sum(axis=1) * self.q_weight
        )

    def contributions(self, smoothed_row: FloatArray) -> list[tuple[str, float]]:
        """The sensors carrying most of one row's score, with their shares (largest first)."""
        y = self.standardized(smoothed_row)
        terms = np.maximum(y * (self.quadratic_form @ y), 0.0)
        total = float(terms.sum())
        if total <= 0:
            return []
        order = np.argsort(-terms, kind="stable")[:TOP_CONTRIBUTORS]
        return [
            (self.sensors[i], round(float(terms[i]) / total, 3))
            for i in order
            if terms[i] / total >= MIN_SHARE
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sensors": list(self.sensors),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "eigenvalues": self.eigenvalues.tolist(),
            "t2_limit": self.t2_limit,
            "q_limit": self.q_limit,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> MachineModel:
        try:
            return cls(
                sensors=tuple(str(s) for s in raw["sensors"]),
                center=raw["center"],
                scale=raw["scale"],
                components=raw["components"],
                eigenvalues=raw["eigenvalues"],
                t2_limit=float(raw["t2_limit"]),
                q_limit=float(raw["q_limit"]),
                threshold=float(raw["threshold"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AnomalyModelError):
                raise
            raise AnomalyModelError(f"not a machine model: {exc!r}") from exc


@dataclass(frozen=True)
class AnomalyModelSet:
    """Every machine's model, with the smoothing they share: the AnomalyModel artifact."""

    model_version: str
    ewma_span: int
    smoothing_readings: int
    machines: Mapping[str, MachineModel]
    training: Mapping[str, Any] = field(default_factory=dict)  # how it was trained, for people

    def __post_init__(self) -> None:
        if self.ewma_span < 1 or self.smoothing_readings < 1:
            raise AnomalyModelError(
                f"ewma_span ({self.ewma_span}) and smoothing_readings "
                f"({self.smoothing_readings}) must be at least 1"
            )

    @property
    def alpha(self) -> float:
        return 2.0 / (self.ewma_span + 1.0)

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": FORMAT,
                    "model_version": self.model_version,
                    "ewma_span": self.ewma_span,
                    "smoothing_readings": self.smoothing_readings,
                    "training": dict(self.training),
                    "machines": {m: model.to_dict() for m, model in sorted(self.machines.items())},
                },
                indent=1,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<string>") -> AnomalyModelSet:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise AnomalyModelError(f"{source}: not JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise AnomalyModelError(f"{source}: format {found!r} is not {FORMAT!r}")
        listed = raw.get("machines")
        if not isinstance(listed, dict):
            raise AnomalyModelError(f"{source}: machines must map machine ids to their models")
        machines = {}
        for machine_id, model in listed.items():
            if not isinstance(model, dict):
                raise AnomalyModelError(f"{source}: machine {machine_id}: not a mapping")
            try:
                machines[str(machine_id)] = MachineModel.from_dict(model)
            except AnomalyModelError as exc:
                raise AnomalyModelError(f"{source}: machine {machine_id}: {exc}") from exc
        try:
            return cls(
                model_version=str(raw["model_version"]),
                ewma_span=int(raw["ewma_span"]),
                smoothing_readings=int(raw["smoothing_readings"]),
                machines=machines,
                training=dict(raw.get("training") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AnomalyModelError):
                raise AnomalyModelError(f"{source}: {exc}") from exc
            raise AnomalyModelError(f"{source}: missing or bad field: {exc!r}") from exc

    def save(self, directory: Path) -> Path:
        """Write ``anomaly_model.json`` into `directory` atomically (a reader never sees half)."""
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / MODEL_FILE
        descriptor, partial = tempfile.mkstemp(dir=directory, prefix=f".{MODEL_FILE}.")
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(self.to_json())
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, directory: Path) -> AnomalyModelSet:
        path = Path(directory) / MODEL_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError as exc:
            raise AnomalyModelError(
                f"no {MODEL_FILE} in {directory}: is the model deployed?"
            ) from exc
        return cls.from_json(text, source=str(path))


# ------------------------------------------------------------------------------------- batch


def ewma(rows: FloatArray, span: int) -> FloatArray:
    """Exponentially weighted moving average of each column, started at the first row: the
    same arithmetic as the gateway's per-row update."""
    rows = np.asarray(rows, dtype=np.float64)
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(rows)
    if not len(rows):
        return out
    state = rows[0].copy()
    for i, row in enumerate(rows):
        state += alpha * (row - state)
        out[i] = state
    return out


def moving_mean(values: FloatArray, window: int) -> FloatArray:
    """Mean of the last `window` values at each position (fewer at the start)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    recent: deque[float] = deque(maxlen=window)
    for i, value in enumerate(values.tolist()):
        recent.append(value)
        out[i] = sum(recent) / len(recent)
    return out


def smoothed_scores(
    model: MachineModel, rows: FloatArray, *, ewma_span: int, smoothing_readings: int
) -> FloatArray:
    """The score the gateway compares with the threshold, for consecutive rows (n, d) of the
    model's sensors in its order."""
    return moving_mean(model.instant_scores(ewma(rows, ewma_span)), smoothing_readings)


# ------------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class AnomalyEvent:
    """A machine's alarm changed: RAISED (with what contributed) or CLEARED."""

    machine_id: str
    timestamp: int
    state: Literal["RAISED", "CLEARED"]
    score: float  # the smoothed score
    threshold: float
    contributors: tuple[tuple[str, float], ...] = ()

    @property
    def relative_score(self) -> float:
        return self.score / self.threshold


class MachineDetector:
    """One machine's detector state on the gateway, updated per reading.

    Readings of one instant arrive one metric at a time; a row is complete when every sensor
    of the model has a value for that timestamp, or when a later timestamp arrives (sensors
    that did not report keep their last value). Readings of other metrics, and readings not
    newer than the last scored row, are ignored. Nothing is scored before every sensor has
    reported once.

    `alarm` is the detector's decision for the latest row (what SKAB scores). `alert` is what
    people are told: RAISED once the alarm held for `raise_after` consecutive rows, CLEARED
    once it stayed off for `clear_after` rows (1 and 1 make the alert follow the alarm).
    """

    __slots__ = (
        "_above",
        "_alpha",
        "_below",
        "_buffer",
        "_clear_after",
        "_complete",
        "_filled",
        "_index",
        "_last",
        "_pending",
        "_raise_after",
        "_row",
        "_row_time",
        "_seen",
        "_state",
        "alarm",
        "alert",
        "machine_id",
        "model",
        "rows",
        "score",
    )

    def __init__(
        self,
        machine_id: str,
        model: MachineModel,
        *,
        ewma_span: int,
        window: int,
        raise_after: int = 1,
        clear_after: int = 1,
    ):
        if raise_after < 1 or clear_after < 1:
            raise ValueError("raise_after and clear_after must be at least 1 row")
        self.machine_id = machine_id
        self.model = model
        self._alpha = 2.0 / (ewma_span + 1.0)
        self._index = {sensor: i for i, sensor in enumerate(model.sensors)}
        self._row: list[float] = [0.0] * len(model.sensors)
        self._complete = (1 << len(model.sensors)) - 1
        self._seen = 0  # bit mask of sensors that ever reported
        self._filled = 0  # bit mask of sensors that reported for the pending row
        self._pending = False
        self._row_time = -(2**62)
        self._last = -(2**62)  # timestamp of the last scored row
        self._state: FloatArray | None = None
        self._buffer: deque[float] = deque(maxlen=window)
        self.rows = 0
        self.score = 0.0
        self.alarm = False
        self.alert = False
        self._raise_after = raise_after
        self._clear_after = clear_after
        self._above = 0  # consecutive rows with the alarm on
        self._below = 0  # ... and off

    def update(self, timestamp_ms: int, metric: str, value: float) -> AnomalyEvent | None:
        """One valid reading; returns an event when the machine's alarm changes."""
        i = self._index.get(metric)
        if i is None or timestamp_ms <= self._last or timestamp_ms < self._row_time:
            return None  # not a sensor of the model, or late for its row
        event = None
        if timestamp_ms != self._row_time:
            if self._pending:
                event = self._close_row()
            self._row_time = timestamp_ms
            self._filled = 0
        self._row[i] = value
        bit = 1 << i
        self._filled |= bit
        self._seen |= bit
        self._pending = True
        if self._filled == self._complete:
            # a new row holds one reading so far, so closing the previous one raised no event
            return self._close_row()
        return event

    def _close_row(self) -> AnomalyEvent | None:
        self._pending = False
        if self._seen != self._complete:
            return None  # a sensor has never reported: nothing to score yet
        self._last = self._row_time
        return self.step(self._row_time, self._row)

    def step(self, timestamp_ms: int, row: Sequence[float]) -> AnomalyEvent | None:
        """Score one complete row (the model's sensors, in its order)."""
        x = np.array(row, dtype=np.float64)
        state = self._state
        if state is None:
            state = self._state = x.copy()
        state += self._alpha * (x - state)
        model = self.model
        y = (state - model.center) * model.inverse_scale
        t = y @ model.components
        instant = float(t @ (model.t_weights * t) + (y @ y) * model.q_weight)
        buffer = self._buffer
        buffer.append(instant)
        self.score = score = sum(buffer) / len(buffer)
        self.rows += 1
        self.alarm = alarm = score > model.threshold
        if alarm:
            self._above += 1
            self._below = 0
            if self.alert or self._above < self._raise_after:
                return None
        else:
            self._below += 1
            self._above = 0
            if not self.alert or self._below < self._clear_after:
                return None
        self.alert = alarm
        if alarm:
            return AnomalyEvent(
                self.machine_id,
                timestamp_ms,
                "RAISED",
                score,
                model.threshold,
                tuple(model.contributions(state)),
            )
        return AnomalyEvent(self.machine_id, timestamp_ms, "CLEARED", score, model.threshold)


class AnomalyDetector:
    """Every machine of a gateway: one `MachineDetector` per machine that has a model."""

    def __init__(
        self, models: AnomalyModelSet, *, raise_after: int = 1, clear_after: int = 1
    ) -> None:
        self.models = models
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.machines: dict[str, MachineDetector] = {}
        self.unmodelled: set[str] = set()  # machines seen without a model of their own

    def update(
        self, timestamp_ms: int, machine_id: str, metric: str, value: float
    ) -> AnomalyEvent | None:
        detector = self.machines.get(machine_id)
        if detector is None:
            model = self.models.machines.get(machine_id)
            if model is None:
                self.unmodelled.add(machine_id)
                return None
            detector = self.machines[machine_id] = MachineDetector(
                machine_id,
                model,
                ewma_span=self.models.ewma_span,
                window=self.models.smoothing_readings,
                raise_after=self.raise_after,
                clear_after=self.clear_after,
            )
        return detector.update(timestamp_ms, metric, value)

    def swap(self, models: AnomalyModelSet) -> list[str]:
        """Use a new model set. A machine whose model or smoothing changed starts afresh (its
        alert, if raised, is returned for clearing); the others keep their state."""
        same_smoothing = (models.ewma_span, models.smoothing_readings) == (
            self.models.ewma_span,
            self.models.smoothing_readings,
        )
        restarted = []
        for machine_id, detector in list(self.machines.items()):
            new = models.machines.get(machine_id)
            if new is not None and same_smoothing and new.to_dict() == detector.model.to_dict():
                detector.model = new
                continue
            del self.machines[machine_id]
            if detector.alert:
                restarted.append(machine_id)
        self.models = models
        self.unmodelled.clear()
        return restarted
