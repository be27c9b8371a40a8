"""The reading contract: one sensor reading, its columnar batch form, and strict validation.

A reading is (timestamp in UTC milliseconds, factory_id, machine_id, sensor_id, metric, value,
unit). Structural checks (missing fields, wrong types, malformed ids) happen while decoding
(`iiot.wire`); the semantic checks here need the metric catalog: known metric, matching unit,
finite value inside the physically valid range, timestamp neither before 2000 nor in the future.

msgspec does the structural work: `bench/contract.py` measured it against pydantic v2 and a
hand-rolled validator on the same payloads, and the figures are in the README.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from iiot.catalog import MetricCatalog

# Ids become MQTT topic levels, S3 partition values and InfluxDB tags: keep them plain.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z"  # \Z: `$` would let "F01\n" through
_ID_RE = re.compile(ID_PATTERN)
ID_RULE = "1-128 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
# For low-volume messages the decoder checks the pattern itself. Readings arrive by the hundred
# thousand and their ids repeat, so the Validator checks them against a cache of ids already
# seen instead (a regex per field would cost 5x the whole decode: bench/contract.py).
Identifier = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
ReadingId = Annotated[str, msgspec.Meta(max_length=128)]
MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
UnitName = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
TimestampMs = Annotated[int, msgspec.Meta(ge=0)]

EARLIEST_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: earlier means seconds, not ms
DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000  # gateway clocks drift; more than this is a broken clock


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One sensor reading. `timestamp` is milliseconds since the Unix epoch, UTC."""

    timestamp: TimestampMs
    factory_id: ReadingId
    machine_id: ReadingId
    sensor_id: ReadingId
    metric: MetricName
    value: float
    unit: UnitName


class SeriesKey(NamedTuple):
    """What identifies a time series: every field of a reading but its time and value."""

    factory_id: str
    machine_id: str
    sensor_id: str
    metric: str
    unit: str


Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class ReadingColumns:
    """Readings in columnar form: a table of series and three aligned arrays.

    This is the shape batches travel in (`iiot.wire.encode_batch`) and the shape the simulator
    produces, so that hundreds of thousands of readings are handled without a Python object each.
    """

    series: Sequence[SeriesKey]
    series_index: Int32Array
    timestamp: Int64Array
    value: Float64Array

    def __post_init__(self) -> None:
        n = len(self.series_index)
        if len(self.timestamp) != n or len(self.value) != n:
            raise ValueError(
                f"column lengths differ: series_index={n}, timestamp={len(self.timestamp)}, "
                f"value={len(self.value)}"
            )

    def __len__(self) -> int:
        return len(self.series_index)

    @classmethod
    def empty(cls) -> ReadingColumns:
        return cls([], np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64))

    @classmethod
    def from_readings(cls, readings: Iterable[Reading]) -> ReadingColumns:
        lookup: dict[SeriesKey, int] = {}
        index: list[int] = []
        timestamps: list[int] = []
        values: list[float] = []
        for r in readings:
            key = SeriesKey(r.factory_id, r.machine_id, r.sensor_id, r.metric, r.unit)
            position = lookup.get(key)
            if position is None:
                position = lookup[key] = len(lookup)
            index.append(position)
            timestamps.append(r.timestamp)
            values.append(r.value)
        return cls(
            list(lookup),
            np.asarray(index, dtype=np.int32),
            np.asarray(timestamps, dtype=np.int64),
            np.asarray(values, dtype=np.float64),
        )

    def to_readings(self) -> list[Reading]:
        series = self.series
        return [
            Reading(
                ts,
                series[i].factory_id,
                series[i].machine_id,
                series[i].sensor_id,
                series[i].metric,
                value,
                series[i].unit,
            )
            for i, ts, value in zip(
                self.series_index.tolist(),
                self.timestamp.tolist(),
                self.value.tolist(),
                strict=True,
            )
        ]

    def take(self, selector: BoolArray | Int64Array | slice) -> ReadingColumns:
        """The readings picked by a mask, an index array or a slice (series table kept)."""
        return ReadingColumns(
            self.series,
            self.series_index[selector],
            self.timestamp[selector],
            self.value[selector],
        )

    def column(self, name: str) -> list[str]:
        """One string column (e.g. "machine_id") expanded to a list, for small batches."""
        position = SeriesKey._fields.index(name)
        per_series = [key[position] for key in self.series]
        return [per_series[i] for i in self.series_index.tolist()]

    @staticmethod
    def concat(parts: Sequence[ReadingColumns]) -> ReadingColumns:
        """Concatenate, merging the series tables."""
        lookup: dict[SeriesKey, int] = {}
        indexes = []
        for part in parts:
            remap = np.empty(len(part.series), dtype=np.int32)
            for i, key in enumerate(part.series):
                remap[i] = lookup.setdefault(key, len(lookup))
            indexes.append(remap[part.series_index] if len(part.series) else part.series_index)
        if not parts:
            return ReadingColumns.empty()
        return ReadingColumns(
            list(lookup),
            np.concatenate(indexes).astype(np.int32, copy=False),
            np.concatenate([p.timestamp for p in parts]),
            np.concatenate([p.value for p in parts]),
        )


class Reject(msgspec.Struct, frozen=True):
    """A reading or payload refused, with the reason an operator can act on.

    `index` is the position in the payload (None when the whole payload was refused) and
    `payload` the offending bytes, kept for the quarantine.
    """

    reason: str
    payload: bytes
    index: int | None = None


class Validated:
    """The outcome of validating one payload: accepted readings and quarantined rejects.

    The accepted readings are available both as `readings` (objects) and as `columns`
    (arrays); whichever form the validation did not produce is built on first use.
    """

    def __init__(
        self,
        columns: ReadingColumns | None = None,
        rejects: list[Reject] | None = None,
        *,
        readings: list[Reading] | None = None,
    ) -> None:
        if (columns is None) == (readings is None):
            raise ValueError("give exactly one of columns or readings")
        self._columns = columns
        self._readings = readings
        self.rejects: list[Reject] = rejects if rejects is not None else []

    @property
    def columns(self) -> ReadingColumns:
        if self._columns is None:
            self._columns = (
                ReadingColumns.from_readings(self._readings)
                if self._readings
                else ReadingColumns.empty()
            )
        return self._columns

    @property
    def readings(self) -> list[Reading]:
        if self._readings is None:
            self._readings = self.columns.to_readings()
        return self._readings

    @property
    def accepted(self) -> int:
        return len(self._readings) if self._readings is not None else len(self._columns or ())


class Validator:
    """Applies the catalog's rules to decoded readings.

    `max_future_ms` bounds how far ahead of this machine's clock a timestamp may be;
    `check_range=False` keeps physically impossible values (the lake quarantines them itself).
    """

    def __init__(
        self,
        catalog: MetricCatalog,
        *,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        check_range: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.max_future_ms = max_future_ms
        self.check_range = check_range
        self._clock = clock
        self._ranges = {
            name: (metric.valid_range.min, metric.valid_range.max)
            for name, metric in catalog.items()
        }
        self._known_ids: set[str] = set()

    _KNOWN_IDS_CAP = 1_000_000  # a gateway sees thousands of sensors; bound the cache anyway

    def _id_problem(self, *fields: tuple[str, str]) -> str | None:
        """Check ids against the pattern, remembering the good ones."""
        known = self._known_ids
        for name, value in fields:
            if value in known:
                continue
            if not _ID_RE.match(value):
                return f"{name}: {value!r} is not a valid id ({ID_RULE})"
            if len(known) >= self._KNOWN_IDS_CAP:
                known.clear()
            known.add(value)
        return None

    def _latest_allowed_ms(self) -> int:
        return int(self._clock() * 1000) + self.max_future_ms

    def problem(self, reading: Reading, latest_allowed_ms: int | None = None) -> str | None:
        """Why `reading` breaks the contract or the catalog's rules, or None when it is valid."""
        return self._id_problem(
            ("factory_id", reading.factory_id),
            ("machine_id", reading.machine_id),
            ("sensor_id", reading.sensor_id),
        ) or self._problem(
            reading.metric,
            reading.unit,
            reading.value,
            reading.timestamp,
            self._latest_allowed_ms() if latest_allowed_ms is None else latest_allowed_ms,
        )

    def _series_problem(self, metric: str, unit: str) -> str | None:
        expected_unit = self.catalog.units.get(metric)
        if expected_unit is None:
            known = ", ".join(sorted(self.catalog))
            return f"metric: unknown metric {metric!r} (the catalog defines {known})"
        if unit != expected_unit:
            return (
                f"unit: {unit!r} does not match the catalog's unit {expected_unit!r} for {metric}"
            )
        return None

    def _problem(
        self, metric: str, unit: str, value: float, timestamp: int, latest_allowed_ms: int
    ) -> str | None:
        series_problem = self._series_problem(metric, unit)
        if series_problem:
            return series_problem
        if not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            return f"value: {shown} is not a finite number"
        if self.check_range:
            low, high = self._ranges[metric]
            if not low <= value <= high:
                return (
                    f"value: {value} {unit} is outside the physically valid range "
                    f"[{low}, {high}] for {metric} (sensor fault?)"
                )
        return _timestamp_problem(timestamp, latest_allowed_ms)

    def validate_readings(
        self,
        readings: Sequence[Reading],
        raw_items: Sequence[bytes] | None = None,
        positions: Sequence[int] | None = None,
    ) -> Validated:
        """Split decoded readings into accepted columns and rejects.

        `raw_items` are the readings' original bytes (kept in the quarantine) and `positions`
        their places in the payload; both default to the readings' own order and encoding.
        """
        latest = self._latest_allowed_ms()
        units, ranges, known = self.catalog.units, self._ranges, self._known_ids
        infinite = (-math.inf, math.inf)
        earliest = EARLIEST_TIMESTAMP_MS
        check_range = self.check_range
        # Fast pass: one tight loop of cheap checks; anything doubtful gets the full check below.
        doubtful = [
            position
            for position, r in enumerate(readings)
            if not (
                r.unit == units.get(r.metric)
                and (ranges[r.metric] if check_range else infinite)[0]
                <= r.value
                <= (ranges[r.metric] if check_range else infinite)[1]
                and earliest <= r.timestamp <= latest
                and r.factory_id in known
                and r.machine_id in known
                and r.sensor_id in known
            )
        ]
        reasons = {position: self.problem(readings[position], latest) for position in doubtful}
        if not any(reasons.values()):
            return Validated(readings=list(readings))
        rejects = []
        good = []
        for position, r in enumerate(readings):
            reason = reasons.get(position)
            if reason is None:
                good.append(r)
            else:
                raw = raw_items[position] if raw_items is not None else _encode_lenient(r)
                where = positions[position] if positions is not None else position
                rejects.append(Reject(reason, raw, where))
        return Validated(readings=good, rejects=rejects)

    def validate_columns(self, columns: ReadingColumns) -> Validated:
        """Vectorized validation of a columnar batch; rejects carry each reading as JSON."""
        n = len(columns)
        if n == 0:
            return Validated(columns)
        series_reason = [
            self._id_problem(
                ("factory_id", key.factory_id),
                ("machine_id", key.machine_id),
                ("sensor_id", key.sensor_id),
            )
            or self._series_problem(key.metric, key.unit)
            for key in columns.series
        ]
        bad = np.zeros(n, dtype=bool)
        if any(series_reason):
            bad_series = np.array([reason is not None for reason in series_reason])
            bad |= bad_series[columns.series_index]
        value, ts = columns.value, columns.timestamp
        latest = self._latest_allowed_ms()
        bad |= ~np.isfinite(value)
        bad |= (ts < EARLIEST_TIMESTAMP_MS) | (ts > latest)
        if self.check_range:
            bounds = np.array(
                [self._ranges.get(k.metric, (-np.inf, np.inf)) for k in columns.series],
                dtype=np.float64,
            ).reshape(-1, 2)
            low, high = bounds[:, 0], bounds[:, 1]
            if len(columns.series):
                idx = columns.series_index
                with np.errstate(invalid="ignore"):
                    bad |= (value < low[idx]) | (value > high[idx])
        if not bad.any():
            return Validated(columns)
        rejects = []
        for position in np.flatnonzero(bad).tolist():
            key = columns.series[columns.series_index[position]]
            reading = Reading(
                int(ts[position]),
                key.factory_id,
                key.machine_id,
                key.sensor_id,
                key.metric,
                float(value[position]),
                key.unit,
            )
            reason = series_reason[columns.series_index[position]] or self._problem(
                key.metric, key.unit, reading.value, reading.timestamp, latest
            )
            rejects.append(Reject(reason or "invalid", _encode_lenient(reading), position))
        return Validated(columns.take(~bad), rejects)


def _timestamp_problem(timestamp: int, latest_allowed_ms: int) -> str | None:
    if timestamp < EARLIEST_TIMESTAMP_MS:
        hint = " (it looks like seconds; the contract is milliseconds)" if timestamp > 1e8 else ""
        return f"timestamp: {timestamp} is before 2000-01-01{hint}"
    if timestamp > latest_allowed_ms:
        ahead_s = (timestamp - latest_allowed_ms) / 1000
        return f"timestamp: {timestamp} is {ahead_s:.0f} s beyond the allowed clock skew (future)"
    return None


def _encode_lenient(obj: Any) -> bytes:
    """JSON for the quarantine, keeping NaN/inf readable (strict JSON has no literal for them)."""
    return json.dumps(msgspec.to_builtins(obj), allow_nan=True).encode()
