"""Ingest: payloads from local topics -> validated columns -> threshold checks -> group commit.

Payloads are handled in micro-batches (everything that arrived within the commit interval):

* JSON lists/objects of well-formed readings take a vectorized fast path: a structural decode
  without per-field regexes, then id patterns, metric and unit checked once per distinct series
  (cached), and value, range and timestamp checked as arrays over the whole micro-batch. It
  takes only what it can vouch for within the input limits: ASCII, at most `max_payload_bytes`
  and `max_items`, and no nesting beyond a list of flat readings.
* Any payload in which the fast path finds anything wrong, or that makes it raise anything at
  all (and every envelope, legacy spelling, NaN literal, oversized, non-ASCII or undecodable
  payload), goes through the core's exact validation (`iiot.wire.validate_json` with the
  configured `Limits`: integrity first), so rejects carry the contract's reasons.
* Compact batches are validated column-wise by the core (`iiot.wire.validate_batch`).

Each payload is isolated: an unexpected exception while validating one quarantines that payload
with the exception as its reason; the others in the micro-batch go on. Rejects go to the
quarantine table with their reasons in the same transaction as the readings. A payload is
acknowledged to the broker only after that transaction commits (only a storage error leaves
payloads unacknowledged, for the broker to redeliver), and its digest is committed with it, so
a redelivery after a crash is recognised and not stored twice.
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
from iiot.wire import (
    DEFAULT_LIMITS,
    Limits,
    announced_readings,
    batch_integrity_problem,
    is_batch,
    validate_batch,
    validate_json,
)
from sensor_buffer.derived import Converted, PredictionSeries
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
_QUARANTINED_BYTES = 64 * 1024  # what a quarantine row keeps of a payload (as the core does)

Parts = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]  # sid, ts, value arrays


def micro_batch_share(payload: bytes, limits: Limits) -> int:
    """Readings a payload adds to the micro-batch being formed, before anything is decoded:
    what it announces, or 1 when it will be refused whole unread (an 8 MB list, a damaged
    batch, a header announcing 4 billion readings): a poison must not force commits of its own.
    A batch's integrity check is cheap (header, CRC-32, zstd frame size; nothing decompressed).
    """
    if len(payload) > limits.max_payload_bytes:
        return 1
    if is_batch(payload) and batch_integrity_problem(payload, limits) is not None:
        return 1
    return announced_readings(payload)


def _identity(payload: bytes, limits: Limits) -> bytes:
    """The digest that recognises a redelivered payload. A payload over the byte limit is
    refused whole and the quarantine keeps only its head, so its length and that head identify
    it (hashing megabytes to recognise a reject is not worth it); the prefix keeps it apart
    from any payload within the limit."""
    if len(payload) > limits.max_payload_bytes:
        head = payload[:_QUARANTINED_BYTES]
        return payload_digest(b"oversize\x00" + len(payload).to_bytes(8, "little") + head)
    return payload_digest(payload)


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
    quarantine_evicted: int = 0
    duplicates: int = 0
    predictions: int = 0  # prediction messages turned into failure_probability readings
    predictions_suppressed: int = 0  # held back by the deadband
    predictions_quarantined: int = 0  # not a prediction: quarantined whole with the reason
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
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        predictions: PredictionSeries | None = None,
        predictions_topic: str = "",
    ) -> None:
        self.store = store
        self.predictions = predictions
        self.predictions_topic = predictions_topic
        self.limits = limits
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
        """Validate, check and commit one micro-batch; acknowledge its payloads afterwards.

        Raises only when the store cannot commit (the payloads stay unacknowledged).
        """
        result = IngestResult(payloads=len(items))
        digests: list[bytes] = []
        fast_items: list[Incoming] = []
        exact_items: list[Incoming] = []
        quarantine: list[QuarantineItem] = []
        seen_now: set[bytes] = set()
        for item in items:
            digest = _identity(item.payload, self.limits)
            if self.store.is_seen(digest) or digest in seen_now:
                result.duplicates += 1
                continue
            seen_now.add(digest)
            digests.append(digest)
            if self.predictions is not None and item.topic == self.predictions_topic:
                self._prediction(item, exact_items, quarantine, result)
            elif self._fast_candidate(item.payload):
                fast_items.append(item)
            else:
                exact_items.append(item)

        parts: Parts = ([], [], [])
        fast_sid, fast_ts, fast_value, unsure = self._fast_json(fast_items)
        if len(fast_sid):
            parts[0].append(fast_sid)
            parts[1].append(fast_ts)
            parts[2].append(fast_value)
        for item in (*unsure, *exact_items):
            self._validate_exactly(item, parts, quarantine)

        if parts[0]:
            sid = np.concatenate(parts[0]).astype(np.int32, copy=False)
            ts = np.concatenate(parts[1])
            value = np.concatenate(parts[2])
        else:
            sid = np.empty(0, np.int32)
            ts = np.empty(0, np.int64)
            value = np.empty(0, np.float64)
        result.accepted = len(sid)
        result.quarantined = len(quarantine)

        anomalies = self._check_thresholds(sid, ts, value)
        result.anomalies = anomalies
        counters = {
            name: amount
            for name, amount in (
                ("duplicates_dropped", result.duplicates),
                ("predictions_converted", result.predictions),
                ("predictions_suppressed", result.predictions_suppressed),
                ("predictions_quarantined", result.predictions_quarantined),
            )
            if amount
        }
        try:
            appended, events = self.store.append(
                sid,
                ts,
                value,
                anomalies=[(a.anomaly_id, encode_anomaly(a)) for a in anomalies],
                quarantine=quarantine,
                digests=digests,
                counters=counters or None,
                max_block_readings=self.max_block_readings,
            )
        except BaseException:
            if self.predictions is not None:
                self.predictions.rollback()  # redelivered, they meet the deadband as before
            raise
        if self.predictions is not None:
            self.predictions.commit()
        result.stored = appended.stored
        result.rejected_full = appended.rejected
        result.quarantine_evicted = appended.quarantine_evicted
        result.full_events = events
        for item in items:  # committed (or refused with a reason): the broker may forget them
            if item.ack is not None:
                item.ack()
        return result

    def _prediction(
        self,
        item: Incoming,
        exact_items: list[Incoming],
        quarantine: list[QuarantineItem],
        result: IngestResult,
    ) -> None:
        """A prediction message: its failure_probability reading takes the exact path (one
        reading: the contract's checks and reasons), a bad one is quarantined whole with the
        reason, one within the deadband is acknowledged and counted."""
        assert self.predictions is not None
        try:
            converted = self.predictions.convert(item.payload)
        except Exception as exc:  # isolated like any payload
            log.warning("prediction quarantined: conversion raised", exc_info=True)
            converted = Converted(reason=f"prediction: could not be converted ({exc!r})")
        if converted.reason is not None:
            result.predictions_quarantined += 1
            quarantine.append(
                QuarantineItem(
                    item.received_ms,
                    item.topic,
                    converted.reason,
                    None,
                    item.payload[:_QUARANTINED_BYTES],
                )
            )
        elif converted.reading is None:
            result.predictions_suppressed += 1
        else:
            result.predictions += 1
            exact_items.append(Incoming(item.topic, converted.reading, item.received_ms))

    def _fast_candidate(self, payload: bytes) -> bool:
        """Whether the fast path may try a payload: JSON within the byte limit, ASCII only (the
        structural decoder skips unknown fields without checking their UTF-8), and shaped like
        a list of flat readings: one object per `"timestamp"` key and at most one list, so a
        nested payload goes straight to the exact path instead of making the structural
        decoder recurse through it first (byte counts run at memory speed)."""
        return (
            not is_batch(payload)
            and len(payload) <= self.limits.max_payload_bytes
            and payload.isascii()
            and payload.count(b"[") <= 1
            and payload.count(b"{") == payload.count(b'"timestamp"')
        )

    def _validate_exactly(
        self, item: Incoming, parts: Parts, quarantine: list[QuarantineItem]
    ) -> None:
        """The core's validation of one payload, isolated: whatever it raises quarantines this
        payload with the exception as its reason and spoils nothing else."""
        payload = item.payload
        try:
            if is_batch(payload):
                outcome = validate_batch(payload, self.validator, self.limits)[1]
            else:
                outcome = validate_json(payload, self.validator, self.limits)
            remapped = self._remap(outcome.columns)
        except Exception as exc:
            log.warning(
                "payload quarantined: validation raised",
                extra={"topic": item.topic, "bytes": len(payload), "error": repr(exc)},
                exc_info=True,
            )
            quarantine.append(
                QuarantineItem(
                    item.received_ms,
                    item.topic,
                    f"payload: could not be validated ({type(exc).__name__}: {exc}); kept here "
                    "for inspection, report it with this row",
                    None,
                    payload[:_QUARANTINED_BYTES],
                )
            )
            return
        if remapped is not None:
            for target, array in zip(parts, remapped, strict=True):
                target.append(array)
        quarantine.extend(
            QuarantineItem(item.received_ms, item.topic, r.reason, r.index, r.payload)
            for r in outcome.rejects
        )

    def _remap(self, columns: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Validated columns with the store's global series ids; None when empty."""
        if not len(columns):
            return None
        remap = np.array([self.store.series_id(key) for key in columns.series], dtype=np.int32)
        return remap[columns.series_index], columns.timestamp, columns.value

    def _check_thresholds(
        self, sid: np.ndarray, ts: np.ndarray, value: np.ndarray
    ) -> list[Anomaly]:
        """Threshold alerts, published locally before the commit (milliseconds). A failure here
        costs the alerts of this micro-batch, never its readings."""
        try:
            anomalies = self.checker.check(sid, ts, value)
            if anomalies:
                self.on_alerts(anomalies)
        except Exception:
            log.exception("threshold check failed; the readings are stored without alerts")
            return []
        return anomalies

    def _fast_json(
        self, items: Sequence[Incoming]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Incoming]]:
        """Vectorized validation of JSON payloads; returns the payloads it could not vouch for.

        Anything unexpected sends the payload (or, in the vectorized part, every payload) to
        the exact path: the fast path may only be faster, never stricter or more lenient.
        """
        readings: list[_LooseReading] = []
        starts: list[int] = []
        kept: list[Incoming] = []
        unsure: list[Incoming] = []
        for item in items:
            decoded = self._decode_fast(item.payload)
            if decoded is None:
                unsure.append(item)
                continue
            starts.append(len(readings))
            kept.append(item)
            readings.extend(decoded)
        if not readings:
            empty = np.empty(0)
            return empty.astype(np.int32), empty.astype(np.int64), empty, unsure
        try:
            sid, ts, value, doubtful = self._check_fast(readings, starts)
        except Exception:
            log.exception("fast path failed; its payloads take the exact path")
            empty = np.empty(0)
            return empty.astype(np.int32), empty.astype(np.int64), empty, [*unsure, *kept]
        unsure.extend(kept[i] for i in doubtful)
        return sid, ts, value, unsure

    def _decode_fast(self, payload: bytes) -> list[_LooseReading] | None:
        """The readings of a flat list (or one reading) within the item limit, else None."""
        head = payload[:1]
        objects = payload.count(b"{")
        if head not in (b"[", b"{") or objects > self.limits.max_items:
            return None
        try:
            decoded = [_decode_loose_one(payload)] if head == b"{" else _decode_loose_list(payload)
        except Exception:  # any failure, even one no decoder should raise: the exact path
            return None
        # Every bracket belongs to the readings themselves: no nesting in unknown fields.
        lists = 1 if head == b"[" else 0
        if not decoded or objects != len(decoded) or payload.count(b"[") != lists:
            return None
        return decoded

    def _check_fast(
        self, readings: list[_LooseReading], starts: list[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(sid, ts, value) of the payloads without a doubt, and the indexes of the others."""
        n = len(readings)
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
        if not bad.any():
            return sid, ts, value, []
        bounds = np.asarray(starts)
        owners = np.unique(np.searchsorted(bounds, np.flatnonzero(bad), side="right") - 1)
        lengths = np.diff(np.r_[bounds, n])
        owner_mask = np.zeros(len(starts), dtype=bool)
        owner_mask[owners] = True
        keep = ~np.repeat(owner_mask, lengths)
        return sid[keep], ts[keep], value[keep], owners.tolist()
