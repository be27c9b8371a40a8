"""Upload: anomalies first, then the backlog oldest first, as compact batches within IoT Core's
limits (message size, publishes/s, bytes/s), with exponential backoff and full jitter.

The uploader is a step function driven by one thread (`run`): each step collects finished
publishes, then spends rate tokens on pending anomalies before any batch, re-sends promised
batches (the outbox) before forming new ones, and keeps at most `max_in_flight` batches
unacknowledged. A batch is acknowledged only by its PUBACK (`Store.ack_batch`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from iiot.wire import encode_batch
from sensor_buffer.config import BufferConfig
from sensor_buffer.store import OutboxEntry, Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], "Future[None]"]
_REFUSED_WAIT_S = 0.01  # after an immediate refusal: collect it, then back off


class TokenBucket:
    """`rate` tokens per second, holding at most `capacity`."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self.tokens = capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` tokens are available (0 when they are now)."""
        self._refill()
        amount = min(amount, self.capacity)
        return 0.0 if self.tokens >= amount else (amount - self.tokens) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.tokens -= amount


@dataclass
class _Flight:
    kind: str  # "batch" or "anomaly"
    key: int  # outbox first_seq or anomaly row id
    batch_id: object = None
    readings: int = 0
    size: int = 0


class Uploader:
    """Moves the buffer to the cloud; thread-safe completion, single-threaded steps."""

    def __init__(
        self,
        store: Store,
        publish: Publish,
        config: BufferConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._publishes = TokenBucket(
            config.max_publishes_per_s, max(1.0, config.max_publishes_per_s), clock
        )
        self._bytes = TokenBucket(
            config.max_bytes_per_s, max(config.max_bytes_per_s, config.batch_max_bytes), clock
        )
        self._in_flight: dict[tuple[str, int], _Flight] = {}
        self._done: deque[tuple[_Flight, BaseException | None]] = deque()
        self.wake = threading.Event()
        self._failures = 0
        self._backoff_until = 0.0
        self.bytes_sent = 0
        self.batches_sent = 0
        self.readings_sent = 0
        self.publish_failures = 0
        self.wire_bytes_acked = 0
        self.readings_acked = 0

    # --------------------------------------------------------------------------- completion

    def _on_done(self, flight: _Flight, future: Future[None]) -> None:
        self._done.append((flight, future.exception()))
        self.wake.set()

    def _collect(self) -> None:
        while self._done:
            flight, error = self._done.popleft()
            self._in_flight.pop((flight.kind, flight.key), None)
            if error is not None:
                self.publish_failures += 1
                self._failures += 1
                ceiling = min(
                    self.config.backoff_max_s,
                    self.config.backoff_initial_s * 2 ** min(self._failures - 1, 30),
                )
                delay = self._rng.uniform(0, ceiling)  # full jitter
                self._backoff_until = max(self._backoff_until, self._clock() + delay)
                log.warning(
                    "publish failed; backing off",
                    extra={"kind": flight.kind, "error": str(error), "delay_s": round(delay, 3)},
                )
                continue
            self._failures = 0
            if flight.kind == "anomaly":
                self.store.ack_anomaly(flight.key)
            else:
                if self.store.ack_batch(flight.key, flight.batch_id, flight.readings):  # type: ignore[arg-type]
                    self.wire_bytes_acked += flight.size
                    self.readings_acked += flight.readings

    # -------------------------------------------------------------------------------- step

    def step(self) -> float:
        """Do what can be done now; return the seconds until the next step is useful."""
        self._collect()
        now = self._clock()
        if now < self._backoff_until:
            return self._backoff_until - now
        wait = self._send_anomalies()
        if wait:
            return wait
        return self._send_batches()

    def _gate(self, size: int) -> float:
        return max(self._publishes.wait_time(1), self._bytes.wait_time(size))

    def _start(self, flight: _Flight, topic: str, payload: bytes) -> bool:
        """Publish; False when the transport refused at once (e.g. not connected): the caller
        stops for this step, so nothing newer overtakes the refused message."""
        self._publishes.take(1)
        self._bytes.take(len(payload))
        self._in_flight[(flight.kind, flight.key)] = flight
        self.bytes_sent += len(payload)
        try:
            future = self.publish(topic, payload)
        except Exception as exc:  # a transport that refuses outright: same path as a failure
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(lambda f: self._on_done(flight, f))
        return not (future.done() and future.exception() is not None)

    def _send_anomalies(self) -> float:
        for pending in self.store.pending_anomalies(limit=50):
            if ("anomaly", pending.row_id) in self._in_flight:
                continue
            wait = self._gate(len(pending.payload))
            if wait:
                return wait
            if not self._start(
                _Flight("anomaly", pending.row_id), self.config.anomalies_topic, pending.payload
            ):
                return _REFUSED_WAIT_S
        return 0.0

    def _send_batches(self) -> float:
        batches_in_flight = sum(1 for kind, _ in self._in_flight if kind == "batch")
        for entry in self.store.outbox():
            if entry.acked or ("batch", entry.first_seq) in self._in_flight:
                continue
            if batches_in_flight >= self.config.max_in_flight:
                return 1.0
            wait = self._send_entry(entry)
            if wait:
                return wait
            batches_in_flight += 1
        while batches_in_flight < self.config.max_in_flight:
            candidate = self.store.next_unbatched(self.config.batch_max_readings)
            if candidate is None:
                return 1.0
            first, last, readings, oldest_created_ms = candidate
            age_ms = self._wall() * 1000 - oldest_created_ms
            if readings < self.config.batch_max_readings and age_ms < self.config.batch_linger_ms:
                return (self.config.batch_linger_ms - age_ms) / 1000
            wait = self._gate(self.config.batch_max_bytes // 4)
            if wait:
                return wait
            promised = self._promise(first, last)
            if promised is None:
                return 0.0
            wait = self._send_entry(promised)
            if wait:
                return wait
            batches_in_flight += 1
        return 1.0

    def _promise(self, first: int, last: int) -> OutboxEntry | None:
        """Fix the next batch's seq range so that it encodes within the message size limit."""
        while True:
            columns, count = self.store.read_range(first, last)
            if count == 0:
                return self.store.add_outbox(first, last, int(self._wall() * 1000))
            payload = self._encode(columns, first, last, int(self._wall() * 1000), None)
            if len(payload) <= self.config.batch_max_bytes or last == first:
                return self.store.add_outbox(first, last, int(self._wall() * 1000))
            last = first + (last - first) // 2

    def _encode(self, columns, first: int, last: int, created_ms: int, batch_id) -> bytes:  # type: ignore[no-untyped-def]
        return encode_batch(
            columns,
            batch_id=batch_id,
            producer=self.store.producer,
            created_ms=created_ms,
            first_seq=first,
            last_seq=last,
            level=self.config.compression_level,
        )

    def _send_entry(self, entry: OutboxEntry) -> float:
        columns, count = self.store.read_range(entry.first_seq, entry.last_seq)
        if count == 0:
            self.store.drop_empty_outbox(entry.first_seq)
            return 0.0
        payload = self._encode(
            columns, entry.first_seq, entry.last_seq, entry.created_ms, entry.batch_id
        )
        wait = self._gate(len(payload))
        if wait:
            return wait
        accepted = self._start(
            _Flight("batch", entry.first_seq, entry.batch_id, count, len(payload)),
            self.config.upload_topic,
            payload,
        )
        self.batches_sent += 1
        self.readings_sent += count
        if not accepted:
            return _REFUSED_WAIT_S
        return 0.0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def run(self, stop: threading.Event) -> None:
        """The upload loop: step, then sleep until woken (new data, a PUBACK) or due."""
        while not stop.is_set():
            try:
                delay = self.step()
            except Exception:
                log.exception("upload step failed; retrying")
                delay = 1.0
            self.wake.wait(timeout=max(0.001, min(delay, 1.0)))
            self.wake.clear()
