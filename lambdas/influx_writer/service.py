"""The InfluxDB writer's logic: decode a Kinesis record in either wire format, validate it
against the contract, encode points, write them in batches with retries, dead-letter the rest.

* A record that is not a payload at all (garbage, unknown version, corrupt batch) is poison:
  it goes to the dead-letter queue with the reason and the record counts as done, so one bad
  record never blocks its shard or fails the batch.
* Readings refused by the contract go to the dead-letter queue with their reasons; the good
  readings of the same record are written.
* Throttling (429), server errors (5xx) and no answer are retried with exponential backoff and
  jitter (honouring Retry-After); when retries run out the record is reported failed and Lambda
  retries it. InfluxDB keeps one value per series and timestamp, so a retried write does not
  duplicate points.
* A 4xx other than 429 means the server refuses these lines (400) or this writer (401/403/404):
  refused lines are dead-lettered with the server's reason; an auth or bucket problem fails the
  record loudly, since every record would fail the same way.
* With a forwarder, the accepted readings then go on as JSON rows (one reading per Kinesis
  record) to the stream the Flink rules read: this is where compact batches become rows. A
  retried record forwards its rows again; the rules tolerate that (same anomaly ids, which the
  alert router de-duplicates).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from iiot.contract import ReadingColumns, Validator
from iiot.wire import is_batch, validate_payload, verified_batch_id
from lambdas.influx_writer.line_protocol import encode_columns
from lambdas.influx_writer.models import RecordOutcome, WriteError, WriteFailedError

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 8.0


class PointWriter(Protocol):
    def write(self, lines: list[str]) -> None:
        """Write line-protocol lines (ms precision); raise WriteError when refused."""
        ...


class DeadLetter(Protocol):
    def send(self, *, reason: str, payload: bytes, origin: dict[str, str]) -> None: ...


class ReadingsForwarder(Protocol):
    def forward(self, columns: ReadingColumns) -> int:
        """Send the accepted readings on as one JSON row each (the Flink rules' source);
        return how many; raise WriteFailedError when they could not all be sent."""
        ...


def idempotency_key(payload: bytes) -> str:
    """A compact batch's own batch id; for JSON, the payload's hash (same bytes, same key)."""
    if is_batch(payload):
        try:
            return f"batch:{verified_batch_id(payload)}"
        except ValueError:
            pass  # a damaged header: the hash still identifies these bytes
    return "sha256:" + hashlib.sha256(payload).hexdigest()


class InfluxWriterService:
    def __init__(
        self,
        *,
        writer: PointWriter,
        dead_letter: DeadLetter,
        validator: Validator,
        forwarder: ReadingsForwarder | None = None,
        batch_points: int = 5000,
        max_attempts: int = 5,
        base_backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._writer = writer
        self._dead_letter = dead_letter
        self._forwarder = forwarder
        self._validator = validator
        self._batch_points = batch_points
        self._max_attempts = max_attempts
        self._base_backoff_s = base_backoff_s
        self._sleep = sleep
        self._jitter = jitter

    def write_record(self, payload: bytes, origin: dict[str, str]) -> RecordOutcome:
        outcome = RecordOutcome(format="batch" if is_batch(payload) else "json")
        validated = validate_payload(payload, self._validator)
        whole = [r for r in validated.rejects if r.index is None]
        if whole:
            reason = "; ".join(r.reason for r in whole)
            self._dead_letter.send(
                reason=f"poison record: {reason}", payload=payload, origin=origin
            )
            outcome.dead_lettered = True
            outcome.reasons.append(reason)
            return outcome
        if validated.rejects:
            outcome.rejected_readings = len(validated.rejects)
            for reject in validated.rejects:
                self._dead_letter.send(
                    reason=f"reading {reject.index} rejected: {reject.reason}",
                    payload=reject.payload,
                    origin=origin,
                )
                outcome.reasons.append(reject.reason)
        lines = encode_columns(validated.columns)
        for start in range(0, len(lines), self._batch_points):
            chunk = lines[start : start + self._batch_points]
            written = self._write_with_retries(chunk, origin, outcome)
            outcome.points += written
        if self._forwarder is not None and len(validated.columns):
            outcome.forwarded = self._forwarder.forward(validated.columns)
        return outcome

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
