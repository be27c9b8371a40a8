"""The metric catalog: units, valid ranges and every threshold, loaded from one YAML file.

Every part of the platform (edge checks, stream SQL, lake quality rules, simulator) reads its
numbers from here, so a threshold changes in exactly one place. The loader is strict: an
invalid catalog is rejected with a message naming the file, the metric and the problem.

A metric is *measured* (a sensor reports it) or *derived* (`derived: <component>`: the
platform computes it, e.g. the failure predictor's `failure_probability`). A derived series
travels and is stored like a reading (the same contract, buffer, lake and InfluxDB), but no
threshold or stream rule runs on it (it has no `edge` limits, `stream` or `rapid_change`) and it
is never a model feature (`MetricCatalog.measured`): a model trained on its own output leaks.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

DEFAULT_CATALOG_PATH = Path(__file__).resolve().parent.parent / "config" / "metrics.yaml"
CATALOG_ENV_VAR = "IIOT_METRICS_CATALOG"
SUPPORTED_VERSIONS = frozenset({1})
# The severity rule keeps the last `debounce` readings of each series in Flink state (an OVER
# window of that many rows): a bound keeps a typo from holding thousands per series.
MAX_STREAM_DEBOUNCE = 100
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class CatalogError(ValueError):
    """The catalog file is missing, malformed or inconsistent."""


class ValidRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min: float
    max: float

    def contains(self, value: float) -> bool:
        return self.min <= value <= self.max


class EdgeThresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Gateway limits. An alert raises after `debounce` consecutive readings beyond a limit and
    clears once the value is back inside the limit by `hysteresis`."""

    min: float | None = None
    max: float | None = None
    hysteresis: float = 0.0
    debounce: int = 1


class StreamSeverity(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Cloud severity rule: raises once the series has been above `warning` for `debounce`
    consecutive readings (event-time order), CRITICAL when all of them are above `critical`.
    `debounce` None (the default) is the metric's `edge.debounce`: the gateway and the cloud
    then need the same run of readings before they alert (`Metric.stream_debounce`)."""

    warning: float
    critical: float
    debounce: int | None = None


class RapidChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    window_seconds: int
    stddev_limit: float


class Metric(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str = ""
    unit: str
    resolution: float
    valid_range: ValidRange
    edge: EdgeThresholds = EdgeThresholds()  # required for a measured metric (checked)
    stream: StreamSeverity | None = None
    rapid_change: RapidChange | None = None
    # The component that computes a derived series; None for a sensor's (measured) metric.
    derived: str | None = None

    @property
    def is_derived(self) -> bool:
        return self.derived is not None

    @property
    def stream_debounce(self) -> int | None:
        """Consecutive readings above `stream.warning` the severity rule needs: the stream's
        own `debounce`, else the edge's; None without a severity rule."""
        if self.stream is None:
            return None
        return self.edge.debounce if self.stream.debounce is None else self.stream.debounce

    @property
    def decimals(self) -> int:
        """Decimal places implied by `resolution` (0.01 -> 2, 1.0 -> 0, 5.0 -> 0)."""
        decimals = 0
        while (
            decimals < 9
            and abs(round(self.resolution * 10**decimals) - self.resolution * 10**decimals) > 1e-9
        ):
            decimals += 1
        return decimals


class _CatalogFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    metrics: dict[str, dict[str, Any]]


class MetricCatalog(Mapping[str, Metric]):
    """An immutable, validated mapping of metric name to its specification."""

    def __init__(self, metrics: Mapping[str, Metric], *, source: str, version: int = 1) -> None:
        self._metrics = dict(metrics)
        self.source = source
        self.version = version
        self.units = {name: metric.unit for name, metric in self._metrics.items()}

    def __getitem__(self, name: str) -> Metric:
        return self._metrics[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._metrics)

    def __len__(self) -> int:
        return len(self._metrics)

    def __repr__(self) -> str:
        return f"MetricCatalog({sorted(self._metrics)}, source={self.source!r})"

    @property
    def measured(self) -> dict[str, Metric]:
        """The sensors' metrics (catalog order): what thresholds, rules and features use."""
        return {name: m for name, m in self._metrics.items() if not m.is_derived}

    @property
    def derived(self) -> dict[str, Metric]:
        """The series the platform computes (catalog order): stored and shown, never a
        feature and never checked against thresholds."""
        return {name: m for name, m in self._metrics.items() if m.is_derived}

    def edge_threshold_config(self) -> dict[str, dict[str, Any]]:
        """The gateway thresholds in the components' `thresholds` configuration shape: the one
        place the catalog becomes what a recipe and a factory's deployment carry (measured
        metrics only: a derived series has no limits)."""
        return {
            name: {
                "min": metric.edge.min,
                "max": metric.edge.max,
                "hysteresis": metric.edge.hysteresis,
                "debounce": metric.edge.debounce,
            }
            for name, metric in self.measured.items()
        }

    def to_builtins(self) -> dict[str, Any]:
        """Plain data, e.g. for a Greengrass component's DefaultConfiguration."""
        metrics = {name: msgspec.to_builtins(metric) for name, metric in self._metrics.items()}
        for spec in metrics.values():
            del spec["name"]
            if spec["derived"] is None:
                del spec["derived"]  # a measured metric's content (and digest) as before
            else:
                del spec["edge"]
        return {"version": self.version, "metrics": metrics}

    @property
    def digest(self) -> str:
        """A stable fingerprint of the catalog's content, to check two parts agree on it."""
        canonical = msgspec.json.encode(self.to_builtins(), order="sorted")
        return hashlib.sha256(canonical).hexdigest()[:16]


def _problems(metric: Metric) -> Iterator[str]:
    """Yield every inconsistency in one metric's specification."""
    if not metric.unit.strip():
        yield "unit must not be empty"
    if not metric.resolution > 0:
        yield f"resolution must be positive, got {metric.resolution}"
    valid = metric.valid_range
    if not valid.min < valid.max:
        yield f"valid_range.min ({valid.min}) must be below valid_range.max ({valid.max})"
    edge = metric.edge
    if metric.derived is not None:
        if not _METRIC_NAME.match(metric.derived):
            yield f"derived: {metric.derived!r} must name the component that computes it"
        if metric.stream is not None or metric.rapid_change is not None:
            yield (
                "a derived series takes no stream or rapid_change rule (the component that "
                "computes it raises its own alerts)"
            )
        if edge != EdgeThresholds():
            yield "a derived series takes no edge thresholds"
        return
    if edge.min is None and edge.max is None:
        yield "edge needs at least one of min or max"
    for side in ("min", "max"):
        limit = getattr(edge, side)
        if limit is not None and not valid.contains(limit):
            yield f"edge.{side} ({limit}) is outside valid_range [{valid.min}, {valid.max}]"
    if edge.min is not None and edge.max is not None:
        if not edge.min < edge.max:
            yield f"edge.min ({edge.min}) must be below edge.max ({edge.max})"
        elif edge.hysteresis * 2 >= edge.max - edge.min:
            yield (
                f"edge.hysteresis ({edge.hysteresis}) must be less than half the band "
                f"between edge.min and edge.max ({edge.max - edge.min})"
            )
    if edge.hysteresis < 0:
        yield f"edge.hysteresis must not be negative, got {edge.hysteresis}"
    if edge.debounce < 1:
        yield f"edge.debounce must be at least 1 reading, got {edge.debounce}"
    if metric.stream is not None:
        stream = metric.stream
        if not stream.warning < stream.critical:
            yield (
                f"stream.warning ({stream.warning}) must be below "
                f"stream.critical ({stream.critical})"
            )
        for level in ("warning", "critical"):
            limit = getattr(stream, level)
            if not valid.contains(limit):
                yield f"stream.{level} ({limit}) is outside valid_range [{valid.min}, {valid.max}]"
        debounce = metric.stream_debounce  # the edge's when the stream names none
        if debounce is not None and not 1 <= debounce <= MAX_STREAM_DEBOUNCE:
            named = "stream.debounce" if stream.debounce is not None else "edge.debounce"
            yield (
                f"stream.debounce ({named}) must be between 1 and {MAX_STREAM_DEBOUNCE} "
                f"readings, got {debounce}"
            )
    if metric.rapid_change is not None:
        rule = metric.rapid_change
        if rule.window_seconds < 1:
            yield f"rapid_change.window_seconds must be at least 1, got {rule.window_seconds}"
        if not rule.stddev_limit > 0:
            yield f"rapid_change.stddev_limit must be positive, got {rule.stddev_limit}"


def parse_catalog(text: str | bytes, *, source: str = "<string>") -> MetricCatalog:
    """Parse and validate catalog YAML; raise CatalogError naming source, metric and problem."""
    try:
        raw = msgspec.yaml.decode(text)
    except msgspec.DecodeError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from exc
    try:
        parsed = msgspec.convert(raw, _CatalogFile)
    except msgspec.ValidationError as exc:
        raise CatalogError(f"{source}: {_field_error(str(exc))}") from exc
    if parsed.version not in SUPPORTED_VERSIONS:
        raise CatalogError(
            f"{source}: version {parsed.version} is not supported "
            f"(this release reads version {', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})"
        )
    if not parsed.metrics:
        raise CatalogError(f"{source}: defines no metrics")
    problems = []
    metrics: dict[str, Metric] = {}
    for name, spec in parsed.metrics.items():
        if not _METRIC_NAME.match(name):
            problems.append(
                f"metric {name!r}: name must be lower-case letters, digits and underscores, "
                "starting with a letter (it becomes a column and SQL identifier)"
            )
            continue
        try:
            metric = msgspec.convert(spec, Metric)
        except msgspec.ValidationError as exc:
            problems.append(f"metric {name!r}: {_field_error(str(exc))}")
            continue
        if metric.name and metric.name != name:
            problems.append(f"metric {name!r}: must not carry a different `name` ({metric.name!r})")
            continue
        problems.extend(f"metric {name!r}: {problem}" for problem in _problems(metric))
        metrics[name] = msgspec.structs.replace(metric, name=name)
    if problems:
        raise CatalogError(f"{source}: " + "; ".join(problems))
    return MetricCatalog(metrics, source=source, version=parsed.version)


def _field_error(message: str) -> str:
    """msgspec says "Expected `float`, got `str` - at `$.edge.max`": name the field first."""
    problem, _, where = message.partition(" - at `$")
    field = where.rstrip("`").lstrip(".")
    return f"{field}: {problem}" if field else problem


def load_catalog(path: str | os.PathLike[str] | None = None) -> MetricCatalog:
    """Load the catalog from `path`, else $IIOT_METRICS_CATALOG, else config/metrics.yaml."""
    if path is None:
        env_path = os.environ.get(CATALOG_ENV_VAR)
        return _load_cached(Path(env_path) if env_path else DEFAULT_CATALOG_PATH)
    return _load_cached(Path(path))


@cache
def _load_cached(path: Path) -> MetricCatalog:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the metric catalog: {exc.strerror}") from exc
    return parse_catalog(text, source=str(path))
