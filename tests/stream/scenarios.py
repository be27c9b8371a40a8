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

    # TEMP: a severity anomaly needs 3 consecutive readings (the catalog's debounce) above the
    # warning level, CRITICAL when all 3 are above the critical level; both exclusive ("above"):
    # the runs ending at 20 s (99.9) and 30 s (100.0) are not above 100, the one ending at 50 s
    # (120.0) is not above 120. WARNING at 40 s and 50 s, CRITICAL at 60 s.
    add(
        Row(second, "M-TEMP", "temperature", value)
        for second, value in (
            (0, 99.9), (10, 100.0), (20, 100.5), (30, 120.0), (40, 121.0), (50, 122.0),
            (60, 125.0),
        )
    )  # fmt: skip
    # VIB: vibration WARNING above 60, CRITICAL above 80: WARNING at 30 s and 40 s (80.0 is not
    # above 80), CRITICAL at 50 s.
    add(
        Row(second, "M-VIB", "vibration", value)
        for second, value in ((0, 59.9), (10, 60.5), (20, 80.0), (30, 80.1), (40, 80.5), (50, 81.0))
    )
    # SPIKE: steady 95 degC with a single reading of 150 (a sensor glitch, as the simulator
    # and real sensors report now and then) and later two consecutive readings of 110: no run
    # of 3 above 100, so nothing (a rule on single readings would raise CRITICAL and twice
    # WARNING). The spreads stay below the rapid-change limit without the spike.
    add(
        Row(s, "M-SPIKE", "temperature", {30: 150.0, 70: 110.0, 75: 110.0}.get(s, 95.0))
        for s in range(0, 120, 5)
    )
    # KEYED: two machines, each with two readings of 110 in a row (on a steady 95),
    # interleaved in time (four readings above 100 in a row across the fleet); a machine of
    # the same id in another factory above 100 in between, and vibration above its warning
    # level (60) in between on the same machine: runs are per factory, machine and metric.
    # Mixed up, each of these would make a run of 3 (the vibration one with the readings of
    # 95 and 110 before it): nothing.
    for machine, offset in (("M-KEY-A", 0.0), ("M-KEY-B", 2.5)):
        add(
            Row(s + offset, machine, "temperature", 110.0 if s in (20, 25) else 95.0)
            for s in range(0, 60, 5)
        )
    add([Row(22.0, "M-KEY-A", "temperature", 110.0, factory_id="F2")])
    add([Row(23.0, "M-KEY-A", "vibration", 70.0)])
    # SEV-OOO: 110 at 15, 20 and 25 s on a steady 95, but the 25 s reading arrives after the
    # 27 s one (95), before the watermark passes 27 s: in arrival order no 3 readings in a row
    # are above 100, in event-time order they are: WARNING at 25 s. (Flink's OVER window sorts
    # a series' rows as the watermark passes them; it drops a row only when a later one of its
    # series has been emitted.)
    add(
        Row(s, "M-SEV-OOO", "temperature", 110.0 if s in (15, 20, 25) else 95.0,
            order=27.5 if s == 25 else None)
        for s in (*range(0, 30, 5), 27, *range(30, 60, 5))
    )  # fmt: skip
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
    # LATE: steady 40, plus three readings of 200 stamped 10.5, 11 and 11.5 s that arrive after
    # 110 s, far behind the watermark. Their RAPID_CHANGE windows (ending 20..70 s) have fired
    # by then, and the severity rule's event-time OVER window drops them as well (in time they
    # would raise CRITICAL at 11.5 s): nothing. The lake's late evaluation
    # re-evaluates such a backlog (local_platform/connected/late.py).
    add(Row(s, "M-LATE", "temperature", 40.0) for s in range(0, 120, 5))
    add(Row(s, "M-LATE", "temperature", 200.0, order=112.0) for s in (10.5, 11.0, 11.5))

    streams.garbage = [
        b"not json at all",
        b'{"timestamp": "yesterday", "factory_id": "F1"}',
        b'{"factory_id": "F1", "machine_id": "M-GARBAGE", "metric": "temperature", '
        b'"value": 150.0, "unit": "degC"}',
    ]
    return streams
