"""The InfluxDB writer's logic: decode a Kinesis record in either wire format, validate it
against the contract, encode points, write them in batches with retries, dead-letter the rest.

* Integrity before identity: a record is checked whole first (size, decompressed size bounded
  before decompressing, CRC-32, UTF-8, nesting depth, item count: `WRITER_LIMITS`) and decoded.
  Only a record that passed is de-duplicated, on its batch id (JSON: the payload's hash), so a
  damaged or truncated copy that arrives first never makes the good copy look like a duplicate.
* A record that is not a payload at all (garbage, unknown version, corrupt batch, a bomb) is
  poison: it goes to the dead-letter queue with the reason and the record counts as done, so one
  bad record never blocks its shard or fails the batch. It is remembered under the hash of its
  own bytes, which no good copy can share.
* A batch id that was already written with other readings is refused whole ("batch_id reused
  with different content") and dead-lettered; an exact re-send is a duplicate and writes nothing.
* Readings refused by the contract go to the dead-letter queue with their reasons; the good
  readings of the same record are written.
* Throttling (429), server errors (5xx) and no answer are retried with exponential backoff and
  jitter (honouring Retry-After); when retries run out the record is reported failed and Lambda
  retries it (nothing is remembered for it). InfluxDB keeps one value per series and timestamp,
  so a retried write does not duplicate points.
* A 4xx other than 429 means the server refuses these lines (400) or this writer (401/403/404):
  refused lines are dead-lettered with the server's reason; an auth or bucket problem fails the
  record loudly, since every record would fail the same way.
* The writer is one of the telemetry stream's independent consumers: it forwards nothing. The
  Flink stream rules read the same compact batches through their own enhanced fan-out
  consumer (stacks/streaming_stack.py), so an InfluxDB outage or a retried record here never
  starves or duplicates their input.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import msgspec
import numpy as np

from iiot.contract import ReadingColumns, Reject, Validated, Validator
from iiot.wire import Limits, is_batch, validate_batch, validate_json
from lambdas.influx_writer.line_protocol import encode_columns
from lambdas.influx_writer.models import (
    WRITER_LIMITS,
    RecordOutcome,
    WriteError,
    WriteFailedError,
)
from lambdas.shared.idempotency import ContentMismatchError, EveryTime, Once

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 8.0
REJECTS_LETTER_BYTES = 96 * 1024  # under the dead-letter payload cap (128 KiB)
REJECT_READING_BYTES = 4096  # of one refused reading in a letter (a reading is ~200 bytes)
MAX_REASONS_KEPT = 20  # in the outcome (logs, idempotency record): counts carry the rest
_encode_reject = msgspec.json.Encoder().encode


class PointWriter(Protocol):
    def write(self, lines: list[str]) -> None:
        """Write line-protocol lines (ms precision); raise WriteError when refused."""
        ...


class DeadLetter(Protocol):
    def send(self, *, reason: str, payload: bytes, origin: dict[str, str]) -> None: ...


def _rejects_reason(rejects: list[Reject]) -> str:
    """A letter's reason: `3 readings rejected (indices 4-9): 2 x <reason>; 1 x <reason>`."""
    counts = Counter(reject.reason for reject in rejects)
    shown = "; ".join(f"{n} x {reason}" for reason, n in counts.most_common(3))
    more = f"; and {len(counts) - 3} other reasons" if len(counts) > 3 else ""
    indices = [r.index for r in rejects if r.index is not None]
    where = f" (indices {min(indices)}-{max(indices)})" if indices else ""
    noun = "reading" if len(rejects) == 1 else "readings"
    return f"{len(rejects)} {noun} rejected{where}: {shown}{more}"


def payload_hash(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def readings_digest(columns: ReadingColumns) -> str:
    """A digest of a batch's readings in a canonical order: the same readings give the same
    digest however the producer encoded them (series order, compression level, producer name),
    so only other readings under a batch id count as other content."""
    used = np.flatnonzero(np.bincount(columns.series_index, minlength=len(columns.series)))
    names = [list(columns.series[i]) for i in used.tolist()]
    order = sorted(range(len(names)), key=lambda i: names[i])
    rank = np.zeros(len(columns.series), dtype=np.int64)
    rank[used[order]] = np.arange(len(order), dtype=np.int64)
    series_rank = rank[columns.series_index]
    value_bits = columns.value.view(np.int64)
    canonical = np.lexsort((value_bits, columns.timestamp, series_rank))
    digest = hashlib.sha256(msgspec.json.encode([names[i] for i in order]))
    for column in (series_rank, columns.timestamp, value_bits):
        digest.update(np.ascontiguousarray(column[canonical], dtype="<i8").tobytes())
    return "readings-sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class CheckedRecord:
    """A record that passed its integrity checks and decoded: what it is, and under which key
    (and content digest) it is written once."""

    format: str
    key: str
    content: str
    validated: Validated


class InfluxWriterService:
    def __init__(
        self,
        *,
        writer: PointWriter,
        dead_letter: DeadLetter,
        validator: Validator,
        once: Once | None = None,
        limits: Limits = WRITER_LIMITS,
        batch_points: int = 5000,
        max_attempts: int = 5,
        base_backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._writer = writer
        self._dead_letter = dead_letter
        self._validator = validator
        self._once: Once = once if once is not None else EveryTime()
        self._limits = limits
        self._batch_points = batch_points
        self._max_attempts = max_attempts
        self._base_backoff_s = base_backoff_s
        self._sleep = sleep
        self._jitter = jitter

    def write_record(self, payload: bytes, origin: dict[str, str]) -> RecordOutcome:
        """Write one Kinesis record once; poison and refused content are dead-lettered."""
        record_format = "batch" if is_batch(payload) else "json"
        checked = self.check(payload)
        if isinstance(checked, str):
            return self._refuse(payload, record_format, f"poison record: {checked}", origin)
        try:
            result = self._once.run(
                checked.key,
                lambda: asdict(self._write_checked(checked, origin)),
                content=checked.content,
            )
        except ContentMismatchError:
            reason = (
                f"batch_id reused with different content: {checked.key} was already written "
                f"with other readings; these {len(checked.validated.columns)} readings were not "
                "written (a producer must give new readings a new batch id)"
            )
            return self._refuse(payload, record_format, reason, origin)
        return RecordOutcome(**result)

    def check(self, payload: bytes) -> CheckedRecord | str:
        """Integrity, decoding and the contract, in that order: the checked record with its
        idempotency key, or why the whole record is poison. Never raises on bad input."""
        if is_batch(payload):
            batch, validated = validate_batch(payload, self._validator, self._limits)
        else:
            batch, validated = None, validate_json(payload, self._validator, self._limits)
        whole = [reject.reason for reject in validated.rejects if reject.index is None]
        if whole:
            return "; ".join(whole)
        if batch is not None:
            return CheckedRecord(
                "batch", f"batch:{batch.batch_id}", readings_digest(batch.columns), validated
            )
        digest = payload_hash(payload)
        return CheckedRecord("json", digest, digest, validated)

    def _refuse(
        self, payload: bytes, record_format: str, reason: str, origin: dict[str, str]
    ) -> RecordOutcome:
        """Dead-letter a whole record once per its bytes (a redelivery adds no second letter);
        the key is the hash of these bytes, never a batch id a good copy could need."""

        def dead_letter() -> dict[str, Any]:
            self._dead_letter.send(reason=reason, payload=payload, origin=origin)
            refused = RecordOutcome(format=record_format, dead_lettered=True, reasons=[reason])
            return asdict(refused)

        digest = payload_hash(payload)
        return RecordOutcome(**self._once.run(f"refused:{digest}", dead_letter, content=digest))

    def _write_checked(self, checked: CheckedRecord, origin: dict[str, str]) -> RecordOutcome:
        outcome = RecordOutcome(format=checked.format)
        validated = checked.validated
        if validated.rejects:
            outcome.rejected_readings = len(validated.rejects)
            self._dead_letter_rejects(validated.rejects, origin)
            outcome.reasons.extend(r.reason for r in validated.rejects[:MAX_REASONS_KEPT])
        columns = validated.columns
        for start in range(0, len(columns), self._batch_points):
            # encoded a chunk at a time: a large batch never holds all of its lines at once
            chunk = encode_columns(columns.take(slice(start, start + self._batch_points)))
            outcome.points += self._write_with_retries(chunk, origin, outcome)
        return outcome

    def _dead_letter_rejects(self, rejects: list[Reject], origin: dict[str, str]) -> None:
        """Refused readings in letters of up to REJECTS_LETTER_BYTES, each a JSON line per
        reading (index, reason, the reading): a record with thousands of bad readings (a
        gateway with a wrong clock) costs a few dead-letter calls, not one per reading."""
        group: list[Reject] = []
        lines: list[bytes] = []
        size = 0
        for reject in rejects:
            reading = reject.payload[:REJECT_READING_BYTES].decode("utf-8", "replace")
            line = _encode_reject(
                {"index": reject.index, "reason": reject.reason, "reading": reading}
            )
            if lines and size + len(line) > REJECTS_LETTER_BYTES:
                self._send_rejects(group, lines, origin)
                group, lines, size = [], [], 0
            group.append(reject)
            lines.append(line)
            size += len(line) + 1
        if lines:
            self._send_rejects(group, lines, origin)

    def _send_rejects(
        self, group: list[Reject], lines: list[bytes], origin: dict[str, str]
    ) -> None:
        self._dead_letter.send(
            reason=_rejects_reason(group), payload=b"\n".join(lines), origin=origin
        )

    def _write_with_retries(
        self, lines: list[str], origin: dict[str, str], outcome: RecordOutcome
    ) -> int:
        for attempt in range(1, self._max_attempts + 1):
            outcome.attempts += 1
            try:
                self._writer.write(lines)
                return len(lines)
            except WriteError as exc:
                if exc.status == 400:
                    self._dead_letter.send(
                        reason=f"InfluxDB refused the points (400): {exc}",
                        payload="\n".join(lines).encode(),
                        origin=origin,
                    )
                    outcome.reasons.append(str(exc))
                    outcome.dead_lettered = True
                    return 0
                if not exc.retryable:
                    raise WriteFailedError(
                        f"InfluxDB answered {exc.status}: {exc}. Check the writer's token, "
                        "organization and bucket (INFLUXDB_SECRET_ARN, INFLUXDB_ORG, "
                        "INFLUXDB_BUCKET)."
                    ) from exc
                if attempt == self._max_attempts:
                    raise WriteFailedError(
                        f"InfluxDB write failed {attempt} times, last: "
                        f"{exc.status or 'no answer'} {exc}; the record will be retried"
                    ) from exc
                delay = min(MAX_BACKOFF_S, self._base_backoff_s * 2 ** (attempt - 1))
                delay = delay * (0.5 + self._jitter() / 2)
                if exc.retry_after_s is not None:
                    delay = max(delay, min(exc.retry_after_s, MAX_BACKOFF_S))
                log.warning(
                    "InfluxDB write retry",
                    extra={"status": exc.status, "attempt": attempt, "delay_s": round(delay, 3)},
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
