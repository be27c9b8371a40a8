"""Crafted reading streams for the Flink SQL rules, one machine per scenario.

All scenarios share one input file (one JVM start for the whole rule suite), so their readings
are interleaved by event time as a real stream would be; a scenario's machine id keeps its
anomalies apart. Times are seconds after T0 (a minute boundary, so HOP windows start at
T0 + 10 s * k). The expected anomalies are worked out by hand in each scenario's docstring.

The same stream comes in two encodings: JSON lines (one reading per line, malformed lines in
the middle) and compact batches (`Streams.batches`: one batch per arrival instant, so a reading
that arrives out of order or late arrives in a later batch; poison batches in the middle).
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from iiot.contract import ReadingColumns, SeriesKey
from iiot.wire import encode_batch, is_batch
from tests.poison import Poison, good_batch, good_readings, known_poisons, shadow_copies

T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
UNITS = {
    "temperature": "degC",
    "vibration": "mm/s",
    "pressure": "bar",
    "rpm": "rpm",
    "flow_rate": "L/min",
}


@dataclass
class Row:
    """One line of the input file; `order` decides its place in the file (default: its time)."""

    second: float
    machine_id: str
    metric: str
    value: float
    unit: str | None = None
    order: float | None = None
    factory_id: str = "F1"

    def sort_key(self) -> tuple[float, str, str]:
        return (self.second if self.order is None else self.order, self.machine_id, self.metric)

    def to_dict(self) -> dict:
        return {
            "timestamp": T0_MS + int(self.second * 1000),
            "factory_id": self.factory_id,
            "machine_id": self.machine_id,
            "sensor_id": f"{self.machine_id}-{self.metric}",
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit or UNITS[self.metric],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    def arrival(self) -> float:
        return self.second if self.order is None else self.order


def batch_of(readings: Sequence[dict], batch_id: uuid.UUID | None = None) -> bytes:
    """Readings (contract dicts) as one compact batch, as a gateway uploads them."""
    lookup: dict[SeriesKey, int] = {}
    index = [
        lookup.setdefault(
            SeriesKey(r["factory_id"], r["machine_id"], r["sensor_id"], r["metric"], r["unit"]),
            len(lookup),
        )
        for r in readings
    ]
    columns = ReadingColumns(
        list(lookup),
        np.asarray(index, np.int32),
        np.asarray([r["timestamp"] for r in readings], np.int64),
        np.asarray([r["value"] for r in readings], np.float64),
    )
    return encode_batch(columns, batch_id=batch_id, producer="tests/stream")


@dataclass
class Streams:
    rows: list[Row] = field(default_factory=list)
    garbage: list[bytes] = field(default_factory=list)

    def lines(self) -> list[bytes]:
        ordered = sorted(self.rows, key=Row.sort_key)
        lines = [row.to_json() for row in ordered]
        # Malformed lines in the middle of the stream: skipped, never a failed job.
        middle = len(lines) // 2
        return lines[:middle] + self.garbage + lines[middle:]

    def batches(self, poisons: Sequence[bytes] = ()) -> list[bytes]:
        """The same readings as compact batches, one per arrival instant (every machine's
        readings that arrive together), in arrival order; `poisons` in the middle."""
        ordered = sorted(self.rows, key=Row.sort_key)
        batches = [
            batch_of([row.to_dict() for row in group])
            for _, group in groupby(ordered, key=Row.arrival)
        ]
        middle = len(batches) // 2
        return batches[:middle] + list(poisons) + batches[middle:]


def batch_poisons() -> list[Poison]:
    """The poison corpus's batches (`tests/poison.py`; its JSON poisons are not records of the
    telemetry stream, which carries batches), the shadow copies of a good batch, and a record
    that is not a batch at all."""
    poisons = [p for p in known_poisons(T0_MS) if is_batch(p.payload)]
    poisons += shadow_copies(good_batch(good_readings(40, start_ms=T0_MS - 3_600_000, sensor=3)))
    poisons.append(Poison("not a batch", bytes(range(1, 40)), "missing IIOTB magic"))
    return poisons


def base64_lines(payloads: Sequence[bytes]) -> bytes:
    """One base64 payload per line: what the local source of the `iiot-batch` format reads."""
    return b"".join(base64.b64encode(payload) + b"\n" for payload in payloads)


def step_series(machine: str, metric: str, low: float, high: float) -> Iterator[Row]:
    """A reading every 5 s for 120 s: `low` before 60 s, `high` from 60 s on."""
    for second in range(0, 120, 5):
        yield Row(second, machine, metric, low if second < 60 else high)


def sample_stddev(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def build() -> Streams:
    streams = Streams()
    add = streams.rows.extend

    # NORMAL: every metric steady with small noise for 2 minutes -> no anomaly at all.
    normal = {"temperature": 65.0, "vibration": 3.0, "pressure": 120.0, "rpm": 1480.0}
    normal["flow_rate"] = 600.0
    for second in range(0, 120, 2):
        wiggle = (second % 6 - 3) / 3  # -1 .. +1
        add(Row(second, "M-NORMAL", m, v + wiggle * 0.5) for m, v in normal.items())

    # TEMP: thresholds are exclusive ("above"): 100.0 and 120.0 are not above their limits.
    add(
        Row(second, "M-TEMP", "temperature", value)
        for second, value in ((0, 99.9), (10, 100.0), (20, 100.5), (30, 120.0), (40, 121.0))
    )
    # VIB: vibration WARNING above 60, CRITICAL above 80.
    add(
        Row(second, "M-VIB", "vibration", value)
        for second, value in ((0, 59.9), (10, 60.5), (20, 80.0), (30, 80.1))
    )
    # PRESSURE: no severity rule for pressure in the catalog.
    add([Row(5, "M-PRESSURE", "pressure", 450.0)])
    # FAULT: sensor fault codes, out-of-range and wrong-unit readings are never alerted on.
    add(
        [
            Row(5, "M-FAULT", "temperature", -999.0),
            Row(6, "M-FAULT", "temperature", 300.0),
            Row(7, "M-FAULT", "temperature", 150.0, unit="degF"),
            Row(8, "M-FAULT", "bogus_metric", 150.0, unit="degC"),
        ]
    )

    # RAPID: temperature steps 40 -> 90 and vibration 3 -> 28 at 60 s. A 60 s window sliding by
    # 10 s holds 12 readings; the windows starting at 20, 30 and 40 s mix the two levels enough
    # (stddev 24.6, 26.1, 24.6 for temperature; half that for vibration) to pass the limits
    # (20 and 10); those starting at 10 and 50 s do not (19.5 and 9.7).
    add(step_series("M-RAPID", "temperature", 40.0, 90.0))
    add(step_series("M-RAPID", "vibration", 3.0, 28.0))
    # ISOLATED: two machines steady at very different levels at the same instants: the rule is
    # per machine, so mixing them (stddev about 25) must never happen.
    add(Row(s, "M-ISO-A", "temperature", 40.0) for s in range(0, 120, 5))
    add(Row(s, "M-ISO-B", "temperature", 90.0) for s in range(0, 120, 5))
    # STUCK: sensors frozen at one value (as a stuck transmitter reports). The variance of equal
    # values is 0, but the textbook formula (sum of squares minus squared sum over n) comes out
    # a hair below 0 in floating point for values like these, and the square root of that is
    # NaN, which Flink's comparison ranks above every limit: no RAPID_CHANGE may fire.
    for metric, value in (("temperature", 47.11), ("vibration", 3.07), ("pressure", 120.4)):
        add(Row(s, "M-STUCK", metric, value) for s in range(0, 120, 5))
    for metric, value in (("rpm", 1480.3), ("flow_rate", 612.9)):
        add(Row(s, "M-STUCK", metric, value) for s in range(0, 120, 5))
    # OUT-OF-ORDER: the RAPID temperature step, but every pair of readings arrives swapped
    # (5 s out of order, within the 5 s watermark delay): same three windows expected.
    for row in step_series("M-OOO", "temperature", 40.0, 90.0):
        row.order = row.second + (5 if row.second % 10 == 0 else -5)
        add([row])
    # LATE: steady 40, plus one reading of 200 stamped 10 s that arrives after 110 s. Its
    # windows (ending 20..70 s) have fired by then, so it raises no RAPID_CHANGE (in time it
    # would: stddev 46), but the stateless severity rule still raises it as CRITICAL.
    add(Row(s, "M-LATE", "temperature", 40.0) for s in range(0, 120, 5))
    add([Row(10.5, "M-LATE", "temperature", 200.0, order=112.0)])

    streams.garbage = [
        b"not json at all",
        b'{"timestamp": "yesterday", "factory_id": "F1"}',
        b'{"factory_id": "F1", "machine_id": "M-GARBAGE", "metric": "temperature", '
        b'"value": 150.0, "unit": "degC"}',
    ]
    return streams
