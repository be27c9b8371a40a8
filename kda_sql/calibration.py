"""Rapid-change limits learned per series from normal operation; the window scales with sampling.

The catalog keeps the physical limits (valid range, edge and severity thresholds) and the
rapid-change rule's *defaults*: `rapid_change.window_seconds` and `stddev_limit`, which apply to a
series nobody calibrated. A fixed standard-deviation limit cannot fit every series (SKAB's pumps
never reach 1 degC of 60 s standard deviation on temperature, against the catalog's 20), so each
series (factory, machine, metric) gets its own, from its normal operation:

* **window**: the catalog's window, widened in whole multiples of it until it holds at least
  `min_readings` readings at the series' sampling interval (the median spacing of its normal
  readings). A series read every 10 s keeps 60 s; one read every minute gets 360 s. Multiples of
  the catalog window keep every window a multiple of the HOP slide that divides the catalog's;
* **limit**: `margin` (1.5) times the `quantile` (by default the largest) of what the rule
  judges in the windows it would form over the normal readings (HOP windows of that size
  sliding by `slide_seconds`, at least three readings each: the smaller of the window's sample
  standard deviation and the same without its reading farthest from the mean, since the rule
  fires only when both are above the limit; `window_stddevs`), and never below
  `min_resolutions` sensor resolutions (a flat series must not alarm on one quantization step).
  The rule judges every series once per slide, 8,640 windows a day at 10 s: any quantile below
  the largest lets through, every day, windows that normal operation itself produced (0.999
  over five normal days of the demo's fleet: 124 alerts in its 24 h run, against 156 with the
  catalog's limits; the largest: 6).

Normal operation is what the anomaly detector (`ml_pipeline.anomaly`) also trains on: valid
readings, without the horizon before each recorded failure, its down time and every maintenance
job.
`learn_limits` takes the series directly; `learn_from_run` reads a run directory (or the lake's
silver export), `learn_from_silver` the lake's silver Delta tables (what a calibration job over
the lake runs: `iiot stream calibrate --silver <lake>/silver`).
`kda_sql.generate.render(catalog, calibration)` renders the learned limits and
windows into the Flink SQL; series without one keep the catalog's default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iiot.catalog import MetricCatalog

CALIBRATION_VERSION = 1
MIN_READINGS = 6
QUANTILE = 1.0  # the largest normal window: see the module docstring
MARGIN = 1.5
MIN_RESOLUTIONS = 2.0
MIN_WINDOWS = 30
DEFAULT_SLIDE_SECONDS = 10  # the runner's default `window.slide.seconds`

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SeriesLimit:
    """The rapid-change rule of one series, learned from `windows` normal windows."""

    factory_id: str
    machine_id: str
    metric: str
    interval_ms: int
    window_seconds: int
    stddev_limit: float
    windows: int

    @property
    def key(self) -> str:
        """How the SQL names the series: ``factory/machine/metric``."""
        return f"{self.factory_id}/{self.machine_id}/{self.metric}"


@dataclass(frozen=True)
class Calibration:
    """Every learned series limit, with how they were learned."""

    series: tuple[SeriesLimit, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": CALIBRATION_VERSION,
            "settings": self.settings,
            "series": [asdict(s) for s in self.series],
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a rapid-change calibration: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"{path}: calibration version {CALIBRATION_VERSION} expected")
        try:
            series = tuple(
                SeriesLimit(
                    str(s["factory_id"]),
                    str(s["machine_id"]),
                    str(s["metric"]),
                    int(s["interval_ms"]),
                    int(s["window_seconds"]),
                    float(s["stddev_limit"]),
                    int(s["windows"]),
                )
                for s in data["series"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: a series entry is incomplete: {exc}") from exc
        for s in series:
            if s.window_seconds < 1 or not s.stddev_limit > 0:
                raise ValueError(f"{path}: {s.key}: window and limit must be positive")
        return cls(series, dict(data.get("settings", {})))


def window_for(
    interval_ms: int, catalog_window_seconds: int, min_readings: int = MIN_READINGS
) -> int:
    """The catalog window, widened in whole multiples until it holds `min_readings` readings."""
    needed_s = min_readings * interval_ms / 1000
    return catalog_window_seconds * max(1, math.ceil(needed_s / catalog_window_seconds - 1e-9))


def window_stddevs(
    timestamp_ms: IntArray,
    values: FloatArray,
    window_ms: int,
    slide_ms: int,
    *,
    without_farthest: bool = False,
) -> FloatArray:
    """Sample standard deviations of the HOP windows (size `window_ms`, starting at multiples of
    `slide_ms`, epoch-aligned as Flink's) that hold at least two of the readings.

    With `without_farthest`, what the rule judges (`kda_sql/templates/rapid_change.sql`): for
    each window of at least three readings, the smaller of its standard deviation and its
    standard deviation without its one reading farthest from the window's mean (the rule fires
    only when both are above the limit, so a single spike does not make a rapid change)."""
    order = np.argsort(timestamp_ms, kind="stable")
    t = np.asarray(timestamp_ms, dtype=np.int64)[order]
    v = np.asarray(values, dtype=np.float64)[order]
    if len(t) < 2:
        return np.empty(0)
    v = v - v.mean()  # centred: the sums below do not cancel catastrophically
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    s2 = np.concatenate([[0.0], np.cumsum(v * v)])
    first = (int(t[0]) - window_ms) // slide_ms + 1
    last = int(t[-1]) // slide_ms
    starts = np.arange(first, last + 1, dtype=np.int64) * slide_ms
    lo = np.searchsorted(t, starts, side="left")
    hi = np.searchsorted(t, starts + window_ms, side="left")
    n = (hi - lo).astype(np.float64)
    keep = n >= (3 if without_farthest else 2)
    n, lo, hi = n[keep], lo[keep], hi[keep]
    total = s1[hi] - s1[lo]
    squares = s2[hi] - s2[lo] - total * total / n  # sum of squared deviations from the mean
    stddev: FloatArray = np.sqrt(np.maximum(squares / (n - 1), 0.0))
    if not without_farthest or not len(n):
        return stddev
    # the reading farthest from each window's mean: a window's readings side by side
    width = int((hi - lo).max())
    index = lo[:, None] + np.arange(width)[None, :]
    inside = index < hi[:, None]
    deviation = np.abs(v[np.minimum(index, len(v) - 1)] - (total / n)[:, None])
    farthest = np.where(inside, deviation, 0.0).max(axis=1)
    # without it: the sum of squares loses n / (n - 1) x farthest^2, n - 2 degrees of freedom
    trimmed = np.sqrt(np.maximum((squares - n / (n - 1) * farthest**2) / (n - 2), 0.0))
    judged: FloatArray = np.minimum(stddev, trimmed)
    return judged


def learn_limits(
    series: Iterable[tuple[str, str, str, IntArray, FloatArray]],
    catalog: MetricCatalog,
    *,
    quantile: float = QUANTILE,
    margin: float = MARGIN,
    min_readings: int = MIN_READINGS,
    min_resolutions: float = MIN_RESOLUTIONS,
    min_windows: int = MIN_WINDOWS,
    slide_seconds: int = DEFAULT_SLIDE_SECONDS,
) -> Calibration:
    """One SeriesLimit per (factory, machine, metric, timestamps, values) of normal operation
    whose metric has a rapid-change rule and that yields at least `min_windows` windows."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if not margin > 0 or min_readings < 2 or slide_seconds < 1:
        raise ValueError("margin must be positive, min_readings >= 2 and slide_seconds >= 1")
    learned = []
    for factory_id, machine_id, metric, timestamp_ms, values in series:
        spec = catalog.get(metric)
        if spec is None or spec.rapid_change is None or len(timestamp_ms) < min_readings:
            continue
        t = np.sort(np.asarray(timestamp_ms, dtype=np.int64))
        gaps = np.diff(t)
        gaps = gaps[gaps > 0]
        if not len(gaps):
            continue
        interval_ms = int(np.median(gaps))
        window_s = window_for(interval_ms, spec.rapid_change.window_seconds, min_readings)
        stds = window_stddevs(
            timestamp_ms, values, window_s * 1000, slide_seconds * 1000, without_farthest=True
        )
        if len(stds) < min_windows:
            continue
        limit = max(margin * float(np.quantile(stds, quantile)), min_resolutions * spec.resolution)
        learned.append(
            SeriesLimit(
                factory_id,
                machine_id,
                metric,
                interval_ms,
                window_s,
                float(f"{limit:.6g}"),
                len(stds),
            )
        )
    learned.sort(key=lambda s: (s.factory_id, s.machine_id, s.metric))
    return Calibration(
        tuple(learned),
        {
            "quantile": quantile,
            "margin": margin,
            "min_readings": min_readings,
            "min_resolutions": min_resolutions,
            "slide_seconds": slide_seconds,
            "catalog_digest": catalog.digest,
        },
    )


def _csv_windows(path: Path, begin: str, end: str) -> list[tuple[str, int, int]]:
    import csv

    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [(r["machine_id"], int(r[begin]), int(r[end])) for r in csv.DictReader(handle)]


def learn_from_run(
    run_dir: Path,
    catalog: MetricCatalog,
    *,
    horizon_ms: int = 24 * 3_600_000,
    **settings: Any,
) -> Calibration:
    """Learn every series' limit from a run directory's (or the lake's silver export's) normal
    operation: its valid readings (`readings.parquet`) outside the horizon before each failure
    and its down time (`failures.csv`) and every maintenance job (`maintenance_records.csv`)."""
    import pyarrow.parquet as pq

    path = run_dir / "readings.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: expected a simulation or silver export dir")
    table = pq.read_table(path, columns=list(READING_COLUMNS))
    failures = _csv_windows(run_dir / "failures.csv", "failed_at_ms", "repaired_at_ms")
    jobs = _csv_windows(run_dir / "maintenance_records.csv", "started_at_ms", "completed_at_ms")
    calibration = _learn(table, failures, jobs, catalog, horizon_ms, settings)
    calibration.settings.update({"source": str(run_dir), "horizon_hours": horizon_ms / 3_600_000})
    return calibration


def learn_from_silver(
    silver_dir: Path,
    catalog: MetricCatalog,
    *,
    horizon_ms: int = 24 * 3_600_000,
    until_ms: int | None = None,
    **settings: Any,
) -> Calibration:
    """The same, from the lake's silver Delta tables themselves (`silver_dir` holds
    `readings`, and `failures` and `maintenance_records` when the maintenance system has fed
    them): readings before `until_ms` when given."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    readings_dir = silver_dir / "readings"
    if not (readings_dir / "_delta_log").is_dir():
        raise FileNotFoundError(f"{readings_dir} is not a Delta table (silver readings)")
    dataset = DeltaTable(str(readings_dir)).to_pyarrow_dataset()
    where = ds.field("timestamp") < until_ms if until_ms is not None else None
    table = dataset.to_table(columns=list(READING_COLUMNS), filter=where)

    def windows(name: str, begin: str, end: str) -> list[tuple[str, int, int]]:
        path = silver_dir / name
        if not (path / "_delta_log").is_dir():
            return []
        rows = DeltaTable(str(path)).to_pyarrow_table(columns=["machine_id", begin, end])
        return [
            (str(r["machine_id"]), int(r[begin]), int(r[end]))
            for r in rows.to_pylist()
            if r[begin] is not None and r[end] is not None
        ]

    failures = windows("failures", "failed_at_ms", "repaired_at_ms")
    jobs = windows("maintenance_records", "started_at_ms", "completed_at_ms")
    calibration = _learn(table, failures, jobs, catalog, horizon_ms, settings)
    calibration.settings.update(
        {
            "source": str(silver_dir),
            "horizon_hours": horizon_ms / 3_600_000,
            **({"until_ms": until_ms} if until_ms is not None else {}),
        }
    )
    return calibration


READING_COLUMNS = ("timestamp", "factory_id", "machine_id", "metric", "value")


def _learn(
    table: Any,
    failures: list[tuple[str, int, int]],
    jobs: list[tuple[str, int, int]],
    catalog: MetricCatalog,
    horizon_ms: int,
    settings: dict[str, Any],
) -> Calibration:
    """Every series' limit from a readings table (pyarrow: READING_COLUMNS), without invalid
    readings, the horizon before each failure to its repair, and every maintenance job."""
    import pyarrow.compute as pc

    def strings(name: str) -> npt.NDArray[np.str_]:
        return np.asarray(table.column(name).combine_chunks().cast("string").to_numpy(False))

    factory, machine, metric = strings("factory_id"), strings("machine_id"), strings("metric")
    timestamp = np.asarray(pc.cast(table.column("timestamp"), "int64").to_numpy(), np.int64)
    value = np.asarray(table.column("value").to_numpy(), np.float64)
    keep = np.zeros(len(value), dtype=bool)
    for name in np.unique(metric).tolist():
        if name in catalog:
            valid = catalog[name].valid_range
            keep |= (metric == name) & (value >= valid.min) & (value <= valid.max)
    excluded = [(m, failed - horizon_ms, repaired) for m, failed, repaired in failures] + jobs
    for machine_id, begin, end in excluded:
        keep &= ~((machine == machine_id) & (timestamp >= begin) & (timestamp < end))
    rows = np.flatnonzero(keep)
    key = np.char.add(np.char.add(factory[rows], "\x00"), np.char.add(machine[rows], "\x00"))
    key = np.char.add(key, metric[rows])
    order = np.lexsort((timestamp[rows], key))
    rows, key = rows[order], key[order]
    breaks = np.flatnonzero(key[1:] != key[:-1]) + 1

    def normal_series() -> Iterable[tuple[str, str, str, IntArray, FloatArray]]:
        for part in np.split(np.arange(len(rows)), breaks):
            if len(part):
                r = rows[part]
                yield (str(factory[r[0]]), str(machine[r[0]]), str(metric[r[0]]),
                       timestamp[r], value[r])  # fmt: skip

    return learn_limits(normal_series(), catalog, **settings)
