"""The one feature definition, computed two ways: in batch (training) and per reading (gateway).

Features describe a machine "as of" its latest reading. Per metric (from the metric's own
readings up to and including its latest one):

* ``last``                  the latest value
* ``mean_<n>``, ``std_<n>``  mean and population standard deviation of the last ``n`` readings
                            (fewer at the start of a series; std needs two)
* ``slope_<n>``             least-squares trend per reading over the last ``n`` readings (the
                            largest count window; needs two)
* ``mean_<m>min``, ``max_<m>min``, ``count_<m>min``  over the readings in the time window
                            ``(t - m minutes, t]`` ending at the metric's latest reading

Per machine: hours since the last completed maintenance (NaN when none is known), the machine
model's code and its age in days at the latest reading (when the spec asks for metadata).

Per residual pair ``(y, x)`` (``y__resid_x``): how far ``y`` is from what ``x`` predicts for this
machine. Each reading of ``y`` with the latest reading of ``x`` updates an exponentially weighted
least-squares line ``y = a + b x`` (time constant ``residual_baseline_hours``, the machine's own
recent normal) and exponentially weighted means of both (``residual_smooth_minutes``); the
feature is ``mean(y) - (a + b mean(x))``. A pump's temperature follows its load (its speed), so
a temperature rise the load does not explain is visible whatever the shift, the machine model or
a slow calibration drift (the baseline follows the drift, which is much slower than a fault's
growth: a drift of r per hour leaves a residual of about r times the difference of the two time
constants); seal leaks show the same way in pressure and flow. NaN until ``x`` has been seen
(above the floor, when there is one) and has varied. The state is a few running sums per pair.
With ``residual_daily_cycle`` the line also fits a daily cycle,
``y = a + b x + c sin(2 pi h / 24) + d cos(2 pi h / 24)`` at the hour of day h (UTC: the fitted
phase takes care of the plant's time zone): the ambient temperature's swing over the day,
which the speed does not explain and which is as large as an early overheating, leaves the
residual (the features are then named ``y__resid_x_day``). The cycle's coefficients are
ridge-shrunk, the more the less of a day the sums cover (`_DAILY_RIDGE`), so on the first hours
of a series the line is the plain one. The cost: the extra freedom lets the line follow part of
a fault that grows over many hours (a 6 degree rise over 12 h, 60 h into a series, leaves 2.8
against the plain line's 4.6), against a background that is quiet instead of swinging by the
ambient's 8 degrees. With ``residual_x_floor`` a pair whose ``x`` is at or below the floor (a
stopped pump: speed 0, ambient temperature, no pressure or flow) is left out of the line and the
means, and the residual holds its value until the pump runs again: folded in, a stop lies off
the operating line by the whole load term (tens of degrees) and bends it for a day after every
repair or planned job. A pair's x is the latest x reading when y arrives, so where y comes
before x at each instant (the simulator writes temperature, vibration and pressure before rpm)
the stop's first y still pairs with the last running x and is folded in: one point per stop. All
pairs must share the floor's x (one metric, in its unit).

`batch_machine_features` computes every row of one machine's stream with vectorized numpy
(training over the lake's silver data); `MachineFeatureState` updates the same vector with O(1)
amortized work per reading (the gateway). `tests/ml/test_features.py` proves they agree.

This module must stay importable on a gateway: numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PUMP_MODELS = ("CP-200", "CP-400", "SP-100")


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute. Equal specs give equal feature vectors, in the order of `names`."""

    metrics: tuple[str, ...]
    count_windows: tuple[int, ...] = (6, 30)
    time_windows_minutes: tuple[int, ...] = (60,)
    maintenance: bool = True
    machine_models: tuple[str, ...] = PUMP_MODELS  # empty: no machine metadata features
    version: int = 1
    residuals: tuple[tuple[str, str], ...] = ()  # (y, x): y against what x predicts
    residual_baseline_hours: float = 24.0
    residual_smooth_minutes: float = 30.0
    # the residuals' lines also fit a daily cycle (sine and cosine of the time of day): the
    # ambient temperature's swing over the day, which the speed does not explain
    residual_daily_cycle: bool = False
    # a pair whose x is at or below this (x's unit) is left out of the residual's line and
    # means, and the residual holds its value meanwhile: a stopped pump (speed 0) reads the
    # ambient temperature, no pressure and no flow, which is not its operating normal (the
    # line through the operating points misses the stopped point by the whole load term)
    residual_x_floor: float | None = None

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError("a feature spec needs at least one metric")
        if not self.count_windows or min(self.count_windows) < 2:
            raise ValueError(f"count windows must be at least 2 readings: {self.count_windows}")
        if any(m <= 0 for m in self.time_windows_minutes):
            raise ValueError(f"time windows must be positive: {self.time_windows_minutes}")
        for y, x in self.residuals:
            if y not in self.metrics or x not in self.metrics or y == x:
                raise ValueError(f"a residual pair needs two of the spec's metrics: {(y, x)}")
        if not self.residual_baseline_hours > 0 or not self.residual_smooth_minutes > 0:
            raise ValueError("residual time constants must be positive")
        if self.residual_x_floor is not None:
            if not math.isfinite(self.residual_x_floor):
                raise ValueError(f"the residual floor must be finite: {self.residual_x_floor}")
            if len({x for _, x in self.residuals}) > 1:
                raise ValueError(
                    "a residual floor is in one metric's unit: every pair needs the same x, "
                    f"not {sorted({x for _, x in self.residuals})}"
                )

    @property
    def slope_window(self) -> int:
        return max(self.count_windows)

    @property
    def metric_feature_names(self) -> tuple[str, ...]:
        names = ["last"]
        for n in self.count_windows:
            names += [f"mean_{n}", f"std_{n}"]
        names.append(f"slope_{self.slope_window}")
        for m in self.time_windows_minutes:
            names += [f"mean_{m}min", f"max_{m}min", f"count_{m}min"]
        return tuple(names)

    @property
    def per_metric(self) -> int:
        return len(self.metric_feature_names)

    @property
    def machine_feature_names(self) -> tuple[str, ...]:
        names = []
        if self.maintenance:
            names.append("hours_since_maintenance")
        if self.machine_models:
            names += ["machine_model", "age_days"]
        return tuple(names)

    @property
    def residual_feature_names(self) -> tuple[str, ...]:
        # the daily cycle's residuals are other features, and named so: a gateway whose code
        # predates the cycle refuses such a model (its names differ from the spec's it reads)
        # instead of scoring it on the plain line's residuals
        day = "_day" if self.residual_daily_cycle else ""
        return tuple(f"{y}__resid_{x}{day}" for y, x in self.residuals)

    @property
    def names(self) -> list[str]:
        return (
            [f"{metric}__{name}" for metric in self.metrics for name in self.metric_feature_names]
            + list(self.machine_feature_names)
            + list(self.residual_feature_names)
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # a setting left at "off" is left out: a gateway whose code predates it still takes
        # the model, which it computes the same way (`from_dict` refuses keys it does not know)
        if data["residual_x_floor"] is None:
            del data["residual_x_floor"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """The spec a model was trained with. A key this code does not know is a feature it
        cannot compute (a model from newer training code than the gateway's): refused, so the
        gateway keeps its model instead of scoring vectors that only look the same."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"feature spec {data.get('version')} has settings this code does not know: "
                f"{sorted(unknown)} (update the FailurePredictor component before the model)"
            )
        return cls(
            metrics=tuple(data["metrics"]),
            count_windows=tuple(data["count_windows"]),
            time_windows_minutes=tuple(data["time_windows_minutes"]),
            maintenance=bool(data["maintenance"]),
            machine_models=tuple(data["machine_models"]),
            version=int(data.get("version", 1)),
            residuals=tuple((str(y), str(x)) for y, x in data.get("residuals", ())),
            residual_baseline_hours=float(data.get("residual_baseline_hours", 24.0)),
            residual_smooth_minutes=float(data.get("residual_smooth_minutes", 30.0)),
            residual_daily_cycle=bool(data.get("residual_daily_cycle", False)),
            residual_x_floor=(
                None if data.get("residual_x_floor") is None else float(data["residual_x_floor"])
            ),
        )


@dataclass(frozen=True)
class MachineInfo:
    """What the gateway's configuration (or machines.csv) says about a machine."""

    machine_id: str
    model: str = ""
    installed_ms: int | None = None


def model_code(spec: FeatureSpec, model: str) -> float:
    return float(spec.machine_models.index(model)) if model in spec.machine_models else math.nan


# ------------------------------------------------------------------------------ incremental


class _CountWindow:
    """Sums over the last `n` values, centred on a reference refreshed every `n` appends.

    Centring keeps the sums small (no cancellation for a flat signal); the exact refresh from
    the buffer every `n` appends stops rounding from accumulating, at amortized O(1) cost.
    """

    __slots__ = ("count", "n", "ref", "s1", "s2", "since_refresh", "sj")

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.ref = 0.0
        self.s1 = self.s2 = self.sj = 0.0
        self.since_refresh = 0

    def push(self, x: float, buffer: deque[float]) -> None:
        """`buffer` already holds `x` as its newest element (and at least `n` values if full)."""
        self.since_refresh += 1
        if self.count == 0 or self.since_refresh >= self.n:
            self._refresh(buffer)
            return
        d = x - self.ref
        if self.count == self.n:
            old = buffer[-self.n - 1] - self.ref
            self.s1 -= old
            self.s2 -= old * old
            # every remaining value moves one index down; the oldest (index 0) leaves
            self.sj -= self.s1
            self.count -= 1
        self.sj += self.count * d
        self.s1 += d
        self.s2 += d * d
        self.count += 1
        # After a level shift (a pump stopping) the reference is far from the values and
        # s2/k - mean^2 cancels: refresh then, so that a flat window's std is exactly 0.
        k = self.count
        m = self.s1 / k
        if m * m > 1e6 * (self.s2 / k - m * m):
            self._refresh(buffer)

    def _refresh(self, buffer: deque[float]) -> None:
        k = min(len(buffer), self.n)
        values = [buffer[i] for i in range(len(buffer) - k, len(buffer))]
        self.ref = sum(values) / k
        s1 = s2 = sj = 0.0
        for j, v in enumerate(values):
            d = v - self.ref
            s1 += d
            s2 += d * d
            sj += j * d
        self.s1, self.s2, self.sj, self.count = s1, s2, sj, k
        self.since_refresh = 0

    def mean(self) -> float:
        return self.ref + self.s1 / self.count

    def std(self) -> float:
        if self.count < 2:
            return math.nan
        m = self.s1 / self.count
        return math.sqrt(max(self.s2 / self.count - m * m, 0.0))

    def slope(self) -> float:
        k = self.count
        if k < 2:
            return math.nan
        return (self.sj - (k - 1) / 2 * self.s1) / (k * (k * k - 1) / 12)


class _TimeWindow:
    """Mean, max and count over `(t - span, t]`: a deque with a centred running sum and a
    monotonic deque for the max (amortized O(1) per value)."""

    __slots__ = ("items", "maxima", "ref", "s1", "since_refresh", "span_ms")

    def __init__(self, span_ms: int) -> None:
        self.span_ms = span_ms
        self.items: deque[tuple[int, float]] = deque()
        self.maxima: deque[tuple[int, float]] = deque()
        self.ref = 0.0
        self.s1 = 0.0
        self.since_refresh = 0

    def push(self, t: int, x: float) -> None:
        items, maxima = self.items, self.maxima
        cutoff = t - self.span_ms
        while items and items[0][0] <= cutoff:
            self.s1 -= items.popleft()[1] - self.ref
        while maxima and maxima[0][0] <= cutoff:
            maxima.popleft()
        items.append((t, x))
        while maxima and maxima[-1][1] <= x:
            maxima.pop()
        maxima.append((t, x))
        self.since_refresh += 1
        if len(items) == 1 or self.since_refresh >= len(items):
            self.ref = sum(v for _, v in items) / len(items)
            self.s1 = sum(v - self.ref for _, v in items)
            self.since_refresh = 0
        else:
            self.s1 += x - self.ref

    def mean(self) -> float:
        return self.ref + self.s1 / len(self.items)

    def max(self) -> float:
        return self.maxima[0][1]


# a fit needs this much weight (readings, decayed) and a spread of x beyond rounding
_MIN_FIT_WEIGHT = 30.0
_MIN_RELATIVE_SPREAD = 1e-10


class _PairState:
    """What every residual's running sums share: the two time constants, the latest time and
    the first pair seen (the sums are centred on it)."""

    __slots__ = ("last_t", "long_ms", "short_ms", "x0", "y0")

    def __init__(self, long_ms: float, short_ms: float) -> None:
        self.long_ms = long_ms
        self.short_ms = short_ms
        self.last_t: int | None = None
        self.x0 = self.y0 = 0.0

    def _decay(self, t: int, y: float, x: float) -> tuple[float, float]:
        """The long and short decay factors since the latest pair (the first pair: 1, 1)."""
        if self.last_t is None:
            self.x0, self.y0 = x, y
            d = ds = 1.0
        else:
            gap = t - self.last_t
            d = math.exp(-gap / self.long_ms)
            ds = math.exp(-gap / self.short_ms)
        self.last_t = t
        return d, ds


class _ResidualState(_PairState):
    """Exponentially weighted sums for one (y, x) pair, centred on the first pair seen."""

    __slots__ = ("sx", "sxs", "sxx", "sxy", "sy", "sys", "w", "ws")

    def __init__(self, long_ms: float, short_ms: float) -> None:
        super().__init__(long_ms, short_ms)
        self.w = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.ws = self.sxs = self.sys = 0.0

    def push(self, t: int, y: float, x: float) -> float:
        """Fold in one pair; the residual of the smoothed y against the fitted line."""
        d, ds = self._decay(t, y, x)
        dx, dy = x - self.x0, y - self.y0
        self.w = d * self.w + 1.0
        self.sx = d * self.sx + dx
        self.sy = d * self.sy + dy
        self.sxx = d * self.sxx + dx * dx
        self.sxy = d * self.sxy + dx * dy
        self.ws = ds * self.ws + 1.0
        self.sxs = ds * self.sxs + dx
        self.sys = ds * self.sys + dy
        return _residual(self.w, self.sx, self.sy, self.sxx, self.sxy, self.ws, self.sxs, self.sys)


def _residual(
    w: float, sx: float, sy: float, sxx: float, sxy: float, ws: float, sxs: float, sys_: float
) -> float:
    """mean_short(y) - (a + b mean_short(x)) from the sums; NaN without a fit yet.
    `_residuals_of_sums` is the same arithmetic over arrays (the batch side)."""
    mx, my = sx / w, sy / w
    vx = sxx / w - mx * mx
    if not (w >= _MIN_FIT_WEIGHT and vx > _MIN_RELATIVE_SPREAD * (sxx / w + 1.0)):
        return math.nan
    b = (sxy / w - mx * my) / vx
    return sys_ / ws - (my + b * (sxs / ws - mx))


def _residuals_of_sums(long: FloatArray, short: FloatArray) -> FloatArray:
    w, sx, sy, sxx, sxy = long.T
    ws, sxs, sys_ = short.T
    mx, my = sx / w, sy / w
    vx = sxx / w - mx * mx
    ok = (w >= _MIN_FIT_WEIGHT) & (vx > _MIN_RELATIVE_SPREAD * (sxx / w + 1.0))
    b = (sxy / w - mx * my) / np.where(ok, vx, 1.0)
    return np.where(ok, sys_ / ws - (my + b * (sxs / ws - mx)), np.nan)


# The daily cycle's coefficients are ridge-shrunk, so a line fitted on a few hours, where the
# cycle and the speed both move slowly, is the plain line instead of trading huge opposite
# coefficients or taking a slow rise for the cycle: by `_DAILY_RIDGE` (a variance: the sine's
# over a whole day is 0.5), and by `_DAILY_RIDGE_UNCOVERED` times how far the sums' variance of
# sine plus cosine falls short of `_DAILY_COVERED` (about 0.975 once a 24 h baseline holds
# days; a few hours hold an arc of the circle, (2 pi H / 24)^2 / 12 over H hours).
_DAILY_RIDGE = 0.01
_DAILY_RIDGE_UNCOVERED = 10.0
_DAILY_COVERED = 0.9
_DAY_ANGLE = 2 * math.pi / DAY_MS


class _DailyResidualState(_PairState):
    """`_ResidualState` whose line is ``y = a + b x + c sin(day) + d cos(day)``: the long sums
    of the regressors u = (x - x0, sin, cos) and y, their cross products, and the short means."""

    __slots__ = (
        *("c", "cc", "cs", "cy", "s", "sc", "ss", "ss_s", "sy", "w", "ws"),
        *("x", "x_s", "xc", "xs", "xx", "xy", "y", "y_s"),
    )

    def __init__(self, long_ms: float, short_ms: float) -> None:
        super().__init__(long_ms, short_ms)
        self.w = self.x = self.s = self.c = self.y = 0.0
        self.xx = self.xs = self.xc = self.ss = self.sc = self.cc = 0.0
        self.xy = self.sy = self.cy = 0.0
        self.ws = self.x_s = self.ss_s = self.cs = self.y_s = 0.0

    def push(self, t: int, y: float, x: float) -> float:
        d, ds = self._decay(t, y, x)
        angle = (t % DAY_MS) * _DAY_ANGLE
        sn, cn = math.sin(angle), math.cos(angle)
        dx, dy = x - self.x0, y - self.y0
        self.w = d * self.w + 1.0
        self.x = d * self.x + dx
        self.s = d * self.s + sn
        self.c = d * self.c + cn
        self.y = d * self.y + dy
        self.xx = d * self.xx + dx * dx
        self.xs = d * self.xs + dx * sn
        self.xc = d * self.xc + dx * cn
        self.ss = d * self.ss + sn * sn
        self.sc = d * self.sc + sn * cn
        self.cc = d * self.cc + cn * cn
        self.xy = d * self.xy + dx * dy
        self.sy = d * self.sy + sn * dy
        self.cy = d * self.cy + cn * dy
        self.ws = ds * self.ws + 1.0
        self.x_s = ds * self.x_s + dx
        self.ss_s = ds * self.ss_s + sn
        self.cs = ds * self.cs + cn
        self.y_s = ds * self.y_s + dy
        fitted, residual = _daily_residual(
            (
                *(self.w, self.x, self.s, self.c, self.y, self.xx, self.xs, self.xc),
                *(self.ss, self.sc, self.cc, self.xy, self.sy, self.cy),
            ),
            (self.ws, self.x_s, self.ss_s, self.cs, self.y_s),
        )
        return residual if fitted else math.nan


def _daily_residual(long: Sequence[Any], short: Sequence[Any]) -> tuple[Any, Any]:
    """(whether the line is defined, mean_short(y) minus the line at the short means of u),
    from the sums; the same arithmetic on floats (gateway) and on arrays (batch)."""
    w, x, s, c, y, xx, xs, xc, ss, sc, cc, xy, sy, cy = long
    ws, x_s, s_s, c_s, y_s = short
    mx, ms, mc, my = x / w, s / w, c / w, y / w
    # covariances of (x, sin, cos), the cycle's ridge-shrunk, and with y
    a00 = xx / w - mx * mx
    a01, a02 = xs / w - mx * ms, xc / w - mx * mc
    v11, v22 = ss / w - ms * ms, cc / w - mc * mc
    short_of = _DAILY_COVERED - (v11 + v22)
    ridge = _DAILY_RIDGE + _DAILY_RIDGE_UNCOVERED * (short_of + abs(short_of)) / 2
    a11, a12, a22 = v11 + ridge, sc / w - ms * mc, v22 + ridge
    b0, b1, b2 = xy / w - mx * my, sy / w - ms * my, cy / w - mc * my
    fitted = (w >= _MIN_FIT_WEIGHT) & (a00 > _MIN_RELATIVE_SPREAD * (xx / w + 1.0))
    arrays = isinstance(fitted, np.ndarray)
    if not arrays and not fitted:
        return False, math.nan
    # the symmetric 3x3 system by its adjugate: positive definite where `fitted` (the cycle's
    # ridge on a covariance, and a spread of x)
    k00, k11, k22 = a11 * a22 - a12 * a12, a00 * a22 - a02 * a02, a00 * a11 - a01 * a01
    k01, k02, k12 = a02 * a12 - a01 * a22, a01 * a12 - a02 * a11, a01 * a02 - a00 * a12
    det = a00 * k00 + a01 * k01 + a02 * k02
    if arrays:  # rows without a line divide by 1, their value is unused
        det = np.where(fitted, det, 1.0)
    slope_x = (k00 * b0 + k01 * b1 + k02 * b2) / det
    slope_s = (k01 * b0 + k11 * b1 + k12 * b2) / det
    slope_c = (k02 * b0 + k12 * b1 + k22 * b2) / det
    line = my + slope_x * (x_s / ws - mx) + slope_s * (s_s / ws - ms) + slope_c * (c_s / ws - mc)
    return fitted, y_s / ws - line


class _SeriesState:
    __slots__ = ("buffer", "counts", "slope_window", "times")

    def __init__(self, spec: FeatureSpec) -> None:
        self.buffer: deque[float] = deque(maxlen=spec.slope_window + 1)
        self.counts = [_CountWindow(n) for n in spec.count_windows]
        self.slope_window = self.counts[spec.count_windows.index(spec.slope_window)]
        self.times = [_TimeWindow(m * 60_000) for m in spec.time_windows_minutes]


class MachineFeatureState:
    """One machine's features, updated reading by reading (the gateway's side).

    `vector` is a float64 array in `spec.names` order, kept current: each reading rewrites
    only its own metric's slots and the machine slots, so reading it costs nothing.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        machine: MachineInfo,
        maintenance_completed_ms: Sequence[int] = (),
    ) -> None:
        self.spec = spec
        self.machine = machine
        self._metric_index = {m: i for i, m in enumerate(spec.metrics)}
        self._series = [_SeriesState(spec) for _ in spec.metrics]
        self._pending_maintenance = deque(sorted(maintenance_completed_ms))
        self.last_maintenance_ms: int | None = None
        self.vector: FloatArray = np.full(len(spec.names), np.nan)
        self._machine_offset = len(spec.metrics) * spec.per_metric
        # per metric: the residual pairs it is the y of (slot, state, index of x)
        residual_offset = self._machine_offset + len(spec.machine_feature_names)
        self._residuals_of: list[list[tuple[int, _ResidualState | _DailyResidualState, int]]] = [
            [] for _ in spec.metrics
        ]
        line = _DailyResidualState if spec.residual_daily_cycle else _ResidualState
        for k, (y, x) in enumerate(spec.residuals):
            self._residuals_of[self._metric_index[y]].append(
                (
                    residual_offset + k,
                    line(
                        spec.residual_baseline_hours * HOUR_MS,
                        spec.residual_smooth_minutes * 60_000,
                    ),
                    self._metric_index[x],
                )
            )
        self._model_code = model_code(spec, machine.model)
        self.last_timestamp_ms: int | None = None
        self.readings = 0

    def add_maintenance(self, completed_ms: int) -> None:
        """A maintenance job completed (takes effect from the first reading at or after it)."""
        pending = self._pending_maintenance
        pending.append(completed_ms)
        if len(pending) > 1 and pending[-2] > completed_ms:
            self._pending_maintenance = deque(sorted(pending))

    def update(self, timestamp_ms: int, metric: str, value: float) -> bool:
        """Fold one reading in; False (and no change) for a metric the spec does not use."""
        position = self._metric_index.get(metric)
        if position is None:
            return False
        series = self._series[position]
        series.buffer.append(value)
        out = self.vector
        base = position * self.spec.per_metric
        out[base] = value
        slot = base + 1
        for window in series.counts:
            window.push(value, series.buffer)
            out[slot] = window.mean()
            out[slot + 1] = window.std()
            slot += 2
        out[slot] = series.slope_window.slope()
        slot += 1
        for span in series.times:
            span.push(timestamp_ms, value)
            out[slot] = span.mean()
            out[slot + 1] = span.max()
            out[slot + 2] = len(span.items)
            slot += 3
        floor = self.spec.residual_x_floor
        for residual_slot, residual, x_position in self._residuals_of[position]:
            x_buffer = self._series[x_position].buffer
            if x_buffer and (floor is None or x_buffer[-1] > floor):
                out[residual_slot] = residual.push(timestamp_ms, value, x_buffer[-1])
        self._update_machine(timestamp_ms)
        self.readings += 1
        return True

    def _update_machine(self, t: int) -> None:
        self.last_timestamp_ms = t
        slot = self._machine_offset
        spec = self.spec
        if spec.maintenance:
            pending = self._pending_maintenance
            while pending and pending[0] <= t:
                self.last_maintenance_ms = pending.popleft()
            self.vector[slot] = (
                (t - self.last_maintenance_ms) / HOUR_MS
                if self.last_maintenance_ms is not None
                else math.nan
            )
            slot += 1
        if spec.machine_models:
            self.vector[slot] = self._model_code
            installed = self.machine.installed_ms
            self.vector[slot + 1] = (t - installed) / DAY_MS if installed is not None else math.nan


# ------------------------------------------------------------------------------------ batch


def _window_stats(values: FloatArray, n: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mean, population std and per-reading slope over the last `n` values at every position
    (fewer at the start), each computed exactly from its window (two-pass)."""
    length = len(values)
    padded = np.concatenate([np.full(n - 1, np.nan), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, n)  # (length, n)
    valid = ~np.isnan(windows)
    k = valid.sum(axis=1).astype(np.float64)
    filled = np.where(valid, windows, 0.0)
    mean = filled.sum(axis=1) / k
    dev = np.where(valid, windows - mean[:, None], 0.0)
    var = (dev * dev).sum(axis=1) / k
    std = np.where(k >= 2, np.sqrt(var), np.nan)
    # positions within the available part of the window: 0..k-1 (slope is shift-invariant)
    j = np.arange(n, dtype=np.float64)[None, :] - (n - k)[:, None]
    jbar = (k - 1) / 2
    sjj = k * (k * k - 1) / 12
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(
            k >= 2, (np.where(valid, j - jbar[:, None], 0.0) * dev).sum(axis=1) / sjj, np.nan
        )
    assert len(mean) == length
    return mean, std, slope


def _range_max(values: FloatArray, starts: IntArray) -> FloatArray:
    """max(values[starts[i] : i + 1]) for every i, with a sparse table (O(L log L))."""
    length = len(values)
    table = [values]
    span = 1
    while span * 2 <= length:
        prev = table[-1]
        table.append(np.maximum(prev[:-span], prev[span:]))
        span *= 2
    ends = np.arange(length)
    sizes = ends - starts + 1
    level = np.floor(np.log2(sizes)).astype(np.int64)
    out = np.empty(length)
    for lv in np.unique(level):
        rows = np.flatnonzero(level == lv)
        block = table[lv]
        width = 1 << int(lv)
        out[rows] = np.maximum(block[starts[rows]], block[ends[rows] - width + 1])
    return out


def _series_features(
    spec: FeatureSpec, timestamps: IntArray, values: FloatArray
) -> npt.NDArray[np.float64]:
    """Per-reading features of one metric's series, in `metric_feature_names` order."""
    columns = [values]
    for n in spec.count_windows:
        mean, std, slope = _window_stats(values, n)
        columns += [mean, std]
        if n == spec.slope_window:
            slope_column = slope
    columns.append(slope_column)
    if len(values):
        centre = float(values.mean())
        cumulative = np.concatenate([[0.0], np.cumsum(values - centre)])
    positions = np.arange(len(values))
    for minutes in spec.time_windows_minutes:
        starts = np.searchsorted(timestamps, timestamps - minutes * 60_000, side="right")
        count = (positions - starts + 1).astype(np.float64)
        if len(values):
            mean = centre + (cumulative[positions + 1] - cumulative[starts]) / count
            maximum = _range_max(values, starts.astype(np.int64))
        else:
            mean = maximum = np.empty(0)
        columns += [mean, maximum, count]
    return np.column_stack(columns) if len(values) else np.empty((0, spec.per_metric))


def batch_machine_features(
    spec: FeatureSpec,
    timestamps: IntArray,
    metrics: Sequence[str] | npt.NDArray[Any],
    values: FloatArray,
    machine: MachineInfo,
    maintenance_completed_ms: Sequence[int] = (),
    rows: IntArray | None = None,
) -> FloatArray:
    """Features as of every reading (or of `rows`) of one machine's stream.

    The stream must be in arrival order (time order; ties keep their order), exactly what the
    gateway sees. Returns float64 (len(rows), len(spec.names)).
    """
    timestamps = np.asarray(timestamps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    metrics = np.asarray(metrics)
    length = len(timestamps)
    if rows is None:
        rows = np.arange(length)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full((len(rows), len(spec.names)), np.nan)
    positions = np.arange(length)
    for m, metric in enumerate(spec.metrics):
        member = metrics == metric
        index = np.flatnonzero(member)
        if not len(index):
            continue
        features = _series_features(spec, timestamps[index], values[index])
        # forward-fill: each row sees its metric's latest reading at or before it
        latest = np.maximum.accumulate(np.where(member, positions, -1))[rows]
        seen = latest >= 0
        series_position = np.searchsorted(index, latest[seen])
        out[np.flatnonzero(seen), m * spec.per_metric : (m + 1) * spec.per_metric] = features[
            series_position
        ]
    # a row's machine features use its own timestamp, but only rows of used metrics count
    used = np.isin(metrics, np.asarray(spec.metrics))
    last_used = np.maximum.accumulate(np.where(used, positions, -1))[rows]
    t = np.where(last_used >= 0, timestamps[np.maximum(last_used, 0)], -1)
    slot = len(spec.metrics) * spec.per_metric
    valid = last_used >= 0
    if spec.maintenance:
        done = np.sort(np.asarray(maintenance_completed_ms, dtype=np.int64))
        k = np.searchsorted(done, t, side="right")
        has = valid & (k > 0)
        column = np.full(len(rows), np.nan)
        column[has] = (t[has] - done[k[has] - 1]) / HOUR_MS
        out[:, slot] = column
        slot += 1
    if spec.machine_models:
        out[valid, slot] = model_code(spec, machine.model)
        if machine.installed_ms is not None:
            out[valid, slot + 1] = (t[valid] - machine.installed_ms) / DAY_MS
    if spec.residuals:
        first = len(spec.metrics) * spec.per_metric + len(spec.machine_feature_names)
        out[:, first:] = _batch_residuals(spec, timestamps, metrics, values)[rows]
    return out


def _ew_sums(t: IntArray, z: FloatArray, tau_ms: float) -> FloatArray:
    """S_i = sum over j <= i of z_j exp(-(t_i - t_j) / tau) for each column of z, vectorized
    in blocks spanning at most 20 tau (so the rescaling stays within float range)."""
    out = np.empty_like(z)
    carry = np.zeros(z.shape[1])
    previous: int | None = None
    begin, length = 0, len(t)
    while begin < length:
        end = int(np.searchsorted(t, t[begin] + 20 * tau_ms, side="right"))
        lag = (t[begin:end] - t[begin]) / tau_ms
        if previous is not None:
            carry = carry * math.exp(-(int(t[begin]) - previous) / tau_ms)
        grown = np.cumsum(z[begin:end] * np.exp(lag)[:, None], axis=0)
        out[begin:end] = (carry[None, :] + grown) * np.exp(-lag)[:, None]
        carry = out[end - 1]
        previous = int(t[end - 1])
        begin = end
    return out


def _batch_residuals(
    spec: FeatureSpec, timestamps: IntArray, metrics: npt.NDArray[Any], values: FloatArray
) -> FloatArray:
    """Every residual feature as of every reading, NaN where the pair is not defined yet."""
    length = len(timestamps)
    positions = np.arange(length)
    out = np.full((length, len(spec.residuals)), np.nan)
    for k, (y, x) in enumerate(spec.residuals):
        x_member = metrics == x
        latest_x = np.maximum.accumulate(np.where(x_member, positions, -1))
        pairs = (metrics == y) & (latest_x >= 0)
        if spec.residual_x_floor is not None:
            pairs &= values[np.maximum(latest_x, 0)] > spec.residual_x_floor
        rows = np.flatnonzero(pairs)
        if not len(rows):
            continue
        yv, xv, t = values[rows], values[latest_x[rows]], timestamps[rows]
        dx, dy = xv - xv[0], yv - yv[0]
        ones = np.ones(len(rows))
        long_ms, short_ms = (
            spec.residual_baseline_hours * HOUR_MS,
            spec.residual_smooth_minutes * 60_000,
        )
        if spec.residual_daily_cycle:
            angle = (t % DAY_MS) * _DAY_ANGLE
            sn, cn = np.sin(angle), np.cos(angle)
            long = _ew_sums(
                t,
                np.column_stack(
                    [
                        *(ones, dx, sn, cn, dy),
                        *(dx * dx, dx * sn, dx * cn, sn * sn, sn * cn, cn * cn),
                        *(dx * dy, sn * dy, cn * dy),
                    ]
                ),
                long_ms,
            )
            short = _ew_sums(t, np.column_stack([ones, dx, sn, cn, dy]), short_ms)
            fitted, value = _daily_residual(list(long.T), list(short.T))
            residual = np.where(fitted, value, np.nan)
        else:
            long = _ew_sums(t, np.column_stack([ones, dx, dy, dx * dx, dx * dy]), long_ms)
            short = _ew_sums(t, np.column_stack([ones, dx, dy]), short_ms)
            residual = _residuals_of_sums(long, short)
        # forward-fill to every later reading (the value holds until y's next reading)
        is_row = np.zeros(length, dtype=bool)
        is_row[rows] = True
        latest = np.maximum.accumulate(np.where(is_row, positions, -1))
        seen = latest >= 0
        out[seen, k] = residual[np.searchsorted(rows, latest[seen])]
    return out


@dataclass
class FeatureTable:
    """Feature rows of many machines with their identity and time (the training input)."""

    names: list[str]
    x: FloatArray
    machine_id: npt.NDArray[np.str_]
    timestamp: IntArray
    extra: dict[str, Any] = field(default_factory=dict)
