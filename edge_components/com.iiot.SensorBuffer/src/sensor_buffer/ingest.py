"""Ingest: payloads from local topics -> validated columns -> threshold checks -> group commit.

Payloads are handled in micro-batches (everything that arrived within the commit interval):

* JSON lists/objects of well-formed readings take a vectorized fast path: a structural decode
  without per-field regexes, then id patterns, metric and unit checked once per distinct series
  (cached), and value, range and timestamp checked as arrays over the whole micro-batch.
* Any payload in which the fast path finds anything wrong (and every envelope, legacy spelling,
  NaN literal, oversized or undecodable payload) goes through the core's exact validation
  (`iiot.wire.validate_json`), so rejects carry the contract's reasons, field by field.
* Compact batches are validated column-wise by the core (`iiot.wire.validate_batch`).

Rejects go to the quarantine table with their reasons in the same transaction as the readings.
A payload is acknowledged to the broker only after that transaction commits, and its digest is
committed with it, so a redelivery after a crash is recognised and not stored twice.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from iiot.anomaly import Anomaly, encode_anomaly
from iiot.contract import EARLIEST_TIMESTAMP_MS, ID_PATTERN, SeriesKey, Validator
from iiot.wire import MAX_JSON_PAYLOAD_BYTES, is_batch, validate_batch, validate_json
from sensor_buffer.store import FullEvent, QuarantineItem, Store, payload_digest
from sensor_buffer.thresholds import ThresholdChecker

log = logging.getLogger(__name__)

Ack = Callable[[], None]


class _LooseReading(msgspec.Struct, gc=False):
    """The reading's structure without the id regexes (checked once per series instead)."""

    timestamp: Annotated[int, msgspec.Meta(ge=0, le=2**62)]
    factory_id: str
    machine_id: str
    sensor_id: str
    metric: str
    value: float
    unit: str


_decode_loose_list = msgspec.json.Decoder(list[_LooseReading]).decode
_decode_loose_one = msgspec.json.Decoder(_LooseReading).decode
_get_ts = attrgetter("timestamp")
_get_value = attrgetter("value")
_get_key = attrgetter("factory_id", "machine_id", "sensor_id", "metric", "unit")
_ID = re.compile(ID_PATTERN)
_BAD_SERIES = -1


@dataclass
class Incoming:
    topic: str
    payload: bytes
    received_ms: int
    ack: Ack | None = None


@dataclass
class IngestResult:
    """What one micro-batch did."""

    payloads: int = 0
    accepted: int = 0
    stored: int = 0
    rejected_full: int = 0
    quarantined: int = 0
    duplicates: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    full_events: list[FullEvent] = field(default_factory=list)


class Ingestor:
    """Turns micro-batches of payloads into one committed block each (plus alerts)."""

    def __init__(
        self,
        store: Store,
        validator: Validator,
        checker: ThresholdChecker,
        *,
        on_alerts: Callable[[list[Anomaly]], None] = lambda _alerts: None,
        max_block_readings: int = 5_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.validator = validator
        self.checker = checker
        self.on_alerts = on_alerts
        self.max_block_readings = max_block_readings
        self._clock = clock
        self._series_cache: dict[tuple[str, ...], int] = {}
        self._low = np.empty(0)
        self._high = np.empty(0)
        self._ranges = {
            name: (m.valid_range.min, m.valid_range.max) for name, m in validator.catalog.items()
        }

    # ------------------------------------------------------------------------------ series

    def _sid(self, key: tuple[str, ...]) -> int:
        """Global series id for a fast-path key, or _BAD_SERIES when the core must look."""
        sid = self._series_cache.get(key)
        if sid is None:
            factory, machine, sensor, metric, unit = key
            ok = (
                _ID.match(factory) is not None
                and _ID.match(machine) is not None
                and _ID.match(sensor) is not None
                and 0 < len(metric) <= 64
                and 0 < len(unit) <= 32
                and self.validator.catalog.units.get(metric) == unit
                and "\n" not in factory + machine + sensor  # `$` in the pattern allows one
            )
            sid = self.store.series_id(SeriesKey(*key)) if ok else _BAD_SERIES
            self._series_cache[key] = sid
        return sid

    def _range_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.store.series)
        if len(self._low) < n:
            extra = self.store.series[len(self._low) : n]
            bounds = [self._ranges.get(k.metric, (np.inf, -np.inf)) for k in extra]
            self._low = np.concatenate([self._low, [b[0] for b in bounds]])
            self._high = np.concatenate([self._high, [b[1] for b in bounds]])
        return self._low, self._high

    # ------------------------------------------------------------------------------ ingest

    def process(self, items: Sequence[Incoming]) -> IngestResult:
        """Validate, check and commit one micro-batch; acknowledge its payloads afterwards."""
        result = IngestResult(payloads=len(items))
        digests: list[bytes] = []
        fast_items: list[Incoming] = []
        slow_items: list[Incoming] = []
        batch_items: list[Incoming] = []
        seen_now: set[bytes] = set()
        for item in items:
            digest = payload_digest(item.payload)
            if self.store.is_seen(digest) or digest in seen_now:
                result.duplicates += 1
                continue
            seen_now.add(digest)
            digests.append(digest)
            payload = item.payload
            if is_batch(payload):
                batch_items.append(item)
            elif len(payload) <= MAX_JSON_PAYLOAD_BYTES:
                fast_items.append(item)
            else:
                slow_items.append(item)

        sids: list[np.ndarray] = []
        tss: list[np.ndarray] = []
        values: list[np.ndarray] = []
        quarantine: list[QuarantineItem] = []

        fast_sid, fast_ts, fast_value, more_slow = self._fast_json(fast_items)
        slow_items.extend(more_slow)
        if len(fast_sid):
            sids.append(fast_sid)
            tss.append(fast_ts)
            values.append(fast_value)

        for item in slow_items:
            outcome = validate_json(item.payload, self.validator)
            self._collect(outcome.columns, sids, tss, values)
            quarantine.extend(
                QuarantineItem(item.received_ms, item.topic, r.reason, r.index, r.payload)
                for r in outcome.rejects
            )
        for item in batch_items:
            _, outcome = validate_batch(item.payload, self.validator)
            self._collect(outcome.columns, sids, tss, values)
            quarantine.extend(
                QuarantineItem(item.received_ms, item.topic, r.reason, r.index, r.payload)
                for r in outcome.rejects
            )

        if sids:
            sid = np.concatenate(sids).astype(np.int32, copy=False)
            ts = np.concatenate(tss)
            value = np.concatenate(values)
        else:
            sid = np.empty(0, np.int32)
            ts = np.empty(0, np.int64)
            value = np.empty(0, np.float64)
        result.accepted = len(sid)
        result.quarantined = len(quarantine)

        anomalies = self.checker.check(sid, ts, value)
        if anomalies:
            self.on_alerts(anomalies)  # local alerts go out before the commit: milliseconds
        result.anomalies = anomalies
        appended, events = self.store.append(
            sid,
            ts,
            value,
            anomalies=[(a.anomaly_id, encode_anomaly(a)) for a in anomalies],
            quarantine=quarantine,
            digests=digests,
            counters={"duplicates_dropped": result.duplicates} if result.duplicates else None,
            max_block_readings=self.max_block_readings,
        )
        result.stored = appended.stored
        result.rejected_full = appended.rejected
        result.full_events = events
        for item in items:  # committed (or refused with a reason): the broker may forget them
            if item.ack is not None:
                item.ack()
        return result

    def _collect(
        self,
        columns: Any,
        sids: list[np.ndarray],
        tss: list[np.ndarray],
        values: list[np.ndarray],
    ) -> None:
        if not len(columns):
            return
        remap = np.array([self.store.series_id(key) for key in columns.series], dtype=np.int32)
        sids.append(remap[columns.series_index])
        tss.append(columns.timestamp)
        values.append(columns.value)

    def _fast_json(
        self, items: Sequence[Incoming]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Incoming]]:
        """Vectorized validation of JSON payloads; returns the payloads it could not vouch for."""
        readings: list[_LooseReading] = []
        starts: list[int] = []
        kept: list[Incoming] = []
        slow: list[Incoming] = []
        for item in items:
            payload = item.payload
            try:
                head = payload[:1]
                if head == b"[":
                    decoded = _decode_loose_list(payload)
                elif head == b"{":
                    decoded = [_decode_loose_one(payload)]
                else:
                    slow.append(item)
                    continue
            except (msgspec.ValidationError, msgspec.DecodeError):
                slow.append(item)
                continue
            if not decoded:
                slow.append(item)
                continue
            starts.append(len(readings))
            kept.append(item)
            readings.extend(decoded)
        n = len(readings)
        if n == 0:
            empty = np.empty(0)
            return empty.astype(np.int32), empty.astype(np.int64), empty, slow
        ts = np.fromiter(map(_get_ts, readings), np.int64, n)
        value = np.fromiter(map(_get_value, readings), np.float64, n)
        keys = list(map(_get_key, readings))
        sid_of = {key: self._sid(key) for key in dict.fromkeys(keys)}
        sid = np.fromiter(map(sid_of.__getitem__, keys), np.int32, n)
        low, high = self._range_arrays()
        latest = int(self._clock() * 1000) + self.validator.max_future_ms
        bad = sid == _BAD_SERIES
        safe = np.where(bad, 0, sid)
        with np.errstate(invalid="ignore"):
            bad |= ~np.isfinite(value)
            if self.validator.check_range and len(low):
                bad |= (value < low[safe]) | (value > high[safe])
        bad |= (ts < EARLIEST_TIMESTAMP_MS) | (ts > latest)
        if bad.any():
            bounds = np.asarray(starts)
            owners = np.unique(np.searchsorted(bounds, np.flatnonzero(bad), side="right") - 1)
            lengths = np.diff(np.r_[bounds, n])
            owner_mask = np.zeros(len(kept), dtype=bool)
            owner_mask[owners] = True
            keep = ~np.repeat(owner_mask, lengths)
            slow.extend(kept[i] for i in owners.tolist())
            sid, ts, value = sid[keep], ts[keep], value[keep]
        return sid, ts, value, slow
