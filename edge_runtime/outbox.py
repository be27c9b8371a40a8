"""A small durable outbox for cloud messages that must not be lost: persist, publish, delete.

`SqliteOutbox` keeps messages (a stable id and the payload) in a SQLite file, oldest first,
bounded: beyond `max_messages` the oldest are evicted, counted (the count is kept in the file)
and logged. `OutboxSender` publishes them at QoS 1 through the transport's `publish_cloud`,
deletes each on its acknowledgement (PUBACK), and retries with exponential backoff and full
jitter while the cloud is unreachable; after a reconnect the backlog drains oldest first.

A message is committed before its first publish (WAL, `synchronous=FULL`), so a kill -9 or a
power cut between the commit and the acknowledgement sends it again after the restart: at least
once, with the same id, for the cloud side to drop the duplicate by id.

`submit` may be called from any thread (a transport's receive thread): it commits and wakes the
sender's thread (`start`), which publishes, collects acknowledgements and retries (`pump`)
whenever woken or due; all publishes leave from that one thread, oldest first.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

MEMORY = ":memory:"
Publish = Callable[[str, bytes], "Future[None]"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Pending(NamedTuple):
    row_id: int
    message_id: str
    payload: bytes


class SqliteOutbox:
    """Messages waiting for their acknowledgement, in a SQLite file (or `:memory:`).

    Thread-safe (one connection behind a lock). `put` ignores a message whose id is already
    waiting; `evicted` counts the messages dropped by the bound, across restarts.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_messages: int = 10_000,
        eviction_log_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = str(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._clock = clock
        self._log_interval = eviction_log_interval_s
        self._last_eviction_log: float | None = None
        self._unlogged_evictions = 0
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != MEMORY:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # committed = on disk, power cut included
        db.executescript(_SCHEMA)
        self._db: sqlite3.Connection | None = db

    @property
    def durable(self) -> bool:
        return self.path != MEMORY

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError(f"the outbox {self.path} is closed")
        return self._db

    def put(self, message_id: str, payload: bytes) -> bool:
        """Commit one message (False: its id is already waiting); evict beyond the bound."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                added = db.execute(
                    "INSERT OR IGNORE INTO messages (message_id, payload, created_ms) "
                    "VALUES (?, ?, ?)",
                    (message_id, payload, now_ms),
                ).rowcount
                count = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                excess = max(0, count - self.max_messages)
                if excess:
                    db.execute(
                        "DELETE FROM messages WHERE id IN "
                        "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES ('evicted', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (excess,),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if excess:
                self._log_eviction(excess)
        return added == 1

    def _log_eviction(self, excess: int) -> None:
        """The first eviction at once, then at most one line per interval with the count."""
        self._unlogged_evictions += excess
        now = self._clock()
        if self._last_eviction_log is None or now - self._last_eviction_log >= self._log_interval:
            log.warning(
                "outbox full: oldest messages evicted unsent",
                extra={
                    "outbox": self.path,
                    "evicted": self._unlogged_evictions,
                    "evicted_total": self._evicted_locked(),
                    "max_messages": self.max_messages,
                },
            )
            self._last_eviction_log = now
            self._unlogged_evictions = 0

    def pending(self, limit: int = 100, *, after: int = 0) -> list[Pending]:
        """The oldest waiting messages with a row id above `after`."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT id, message_id, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit),
                )
                .fetchall()
            )
        return [Pending(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def ack(self, row_id: int) -> None:
        """Acknowledged: delete it (a row already evicted is simply gone)."""
        with self._lock:
            self._conn().execute("DELETE FROM messages WHERE id = ?", (row_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def _evicted_locked(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
        return int(row[0]) if row else 0

    @property
    def evicted(self) -> int:
        with self._lock:
            return self._evicted_locked()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class OutboxSender:
    """Publishes an outbox's messages to `topic` in order, deleting each on its PUBACK.

    At most `max_in_flight` unacknowledged publishes; a failed publish (refused at once, or
    failed later) backs off `backoff_initial_s` doubling to `backoff_max_s`, full jitter, then
    resends from the oldest. A publish with no answer after `ack_timeout_s` is sent again.
    """

    def __init__(
        self,
        outbox: SqliteOutbox,
        publish: Publish,
        topic: str,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 10.0,
        max_in_flight: int = 10,
        ack_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str = "outbox-sender",
    ) -> None:
        self.outbox = outbox
        self.publish = publish
        self.topic = topic
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._name = name
        self._in_flight: dict[int, float] = {}  # row id -> when sent
        self._done: deque[tuple[int, BaseException | None]] = deque()
        self._pump_lock = threading.Lock()
        self._failures = 0
        self._backoff_until = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.acked = 0
        self.publish_failures = 0

    def submit(self, message_id: str, payload: bytes) -> None:
        """Commit the message, then have it published (unless backing off): by the sender's
        thread once started, so that every publish leaves from one thread, in order (a
        transport's client may run a call from its own event-loop thread ahead of calls queued
        from others); before `start`, from the caller's thread."""
        self.outbox.put(message_id, payload)
        if self._thread is not None:
            self._wake.set()
        else:
            self.pump()

    def _on_done(self, row_id: int, future: Future[None]) -> None:
        self._done.append((row_id, future.exception()))
        self._wake.set()

    def _collect(self) -> None:
        while self._done:
            row_id, error = self._done.popleft()
            if self._in_flight.pop(row_id, None) is None:
                continue  # timed out and sent again, or stopped: the newer copy decides
            if error is not None:
                self.publish_failures += 1
                self._failures += 1
                ceiling = min(
                    self.backoff_max_s, self.backoff_initial_s * 2 ** min(self._failures - 1, 30)
                )
                delay = self._rng.uniform(0, ceiling)
                self._backoff_until = max(self._backoff_until, self._clock() + delay)
                log.warning(
                    "cloud publish failed; kept in the outbox, retrying",
                    extra={
                        "topic": self.topic,
                        "error": str(error),
                        "delay_s": round(delay, 3),
                        "waiting": len(self.outbox),
                    },
                )
                continue
            self._failures = 0
            self.outbox.ack(row_id)
            self.acked += 1

    def pump(self) -> float:
        """Collect acknowledgements and send what is due; the seconds until it is due again."""
        with self._pump_lock:
            self._collect()
            now = self._clock()
            for row_id, sent_at in list(self._in_flight.items()):
                if now - sent_at >= self.ack_timeout_s:
                    log.warning("no PUBACK in time; sending again", extra={"topic": self.topic})
                    del self._in_flight[row_id]
            if now < self._backoff_until:
                return self._backoff_until - now
            room = self.max_in_flight - len(self._in_flight)
            after = 0
            while room > 0:
                batch = self.outbox.pending(limit=room + len(self._in_flight), after=after)
                if not batch:
                    break
                for message in batch:
                    after = message.row_id
                    if message.row_id in self._in_flight:
                        continue
                    if not self._send(message):
                        self._collect()  # refused at once: back off before the next
                        return max(0.01, self._backoff_until - self._clock())
                    room -= 1
                    if room == 0:
                        break
            self._collect()  # a transport that acknowledges at once (in-process tests)
            return 1.0

    def _send(self, message: Pending) -> bool:
        """Publish; False when it failed at once (e.g. not connected)."""
        self._in_flight[message.row_id] = self._clock()
        self.sent += 1
        try:
            future = self.publish(self.topic, message.payload)
        except Exception as exc:  # a transport that raises: the same as a failed publish
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(lambda f: self._on_done(message.row_id, f))
        return not (future.done() and future.exception() is not None)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        """The retry thread: pumps whenever woken (an acknowledgement) or due."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    delay = self.pump()
                except Exception:
                    log.exception("outbox step failed; retrying")
                    delay = 1.0
                self._wake.wait(timeout=max(0.001, min(delay, 1.0)))
                self._wake.clear()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; what is not acknowledged stays in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
