"""The durable buffer: readings in SQLite (WAL), written by group commit, uploaded by seq range.

Every accepted reading gets an integer sequence number (`seq`), strictly increasing and never
reused. Readings are stored in *blocks*: one row per group commit, holding the columns
(series id, timestamp, value) of consecutive seqs, zstd-compressed. A block is the unit of
durability (one transaction, one fsync with `synchronous=FULL`); the seq is the unit of
acknowledgement.

Uploads go through the *outbox*: before a batch is published, its seq range and batch id are
committed here, so a batch re-sent after a crash carries the same readings under the same id
(the cloud drops the duplicate). A PUBACK marks the outbox row acknowledged; acknowledged rows at
the head of the outbox advance `acked_seq` and delete the blocks it covers. Nothing is ever
acknowledged by timestamp.

Retention (age) and the disk cap apply to unsent blocks; when the cap is reached the configured
policy rejects new readings, drops the oldest blocks or downsamples them, and counts it.
Outbox rows that overlap changed blocks get a new generation, hence a new batch id.

The quarantine (rejects with their reasons) lives under a cap of its own
(`quarantine_max_bytes`): when a commit would exceed it, the oldest rows are evicted and counted
(`quarantine_evicted`). Freed pages go back to the file system (`auto_vacuum=INCREMENTAL`,
`incremental_vacuum`; a database created before that is converted once when opened) and the WAL
is truncated to `_WAL_SIZE_LIMIT` after checkpoints.

Every write is one transaction against a *staged* copy of the in-memory state (sequence
numbers, byte counts, counters): the state becomes the store's only once COMMIT returned, so a
failed commit (a full disk) leaves memory exactly as the database has it.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import zstandard

from iiot.contract import Float64Array, Int32Array, Int64Array, ReadingColumns, SeriesKey
from sensor_buffer.config import FullPolicy

log = logging.getLogger(__name__)

_BLOCK_HEADER = struct.Struct("<IB")  # count, flags
_FLAG_OFFSETS = 0x01  # a downsampled block stores each reading's seq offset
_ROW_OVERHEAD = 96  # bytes per block row beyond its data, for the disk accounting
_BATCH_NAMESPACE = uuid.UUID("6c1f0d7e-3b8a-4f0e-9d2a-5e7b1c4a9f30")
SCHEMA_VERSION = 1
_AUTO_VACUUM_INCREMENTAL = 2
# The WAL is truncated to this size after a checkpoint (SQLite checkpoints at about 4 MiB).
_WAL_SIZE_LIMIT = 4 * 1024 * 1024
# Freed pages are handed back to the file system once there are at least this many bytes.
_RECLAIM_MIN_BYTES = 1024 * 1024
# A quarantine row's cost: its record (payload, reason, topic, and about this much for the record
# header, the id, received_ms and the cell) stored the way SQLite stores it, in whole overflow
# pages once it does not fit in one page. Counted at insert, so the file stays within the cap
# plus a small margin.
_QUARANTINE_ROW_OVERHEAD = 48

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, factory_id TEXT NOT NULL, machine_id TEXT NOT NULL,
    sensor_id TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    nbytes INTEGER NOT NULL, downsampled INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, generation INTEGER NOT NULL,
    batch_id BLOB NOT NULL, created_ms INTEGER NOT NULL, acked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS anomalies (
    id INTEGER PRIMARY KEY AUTOINCREMENT, anomaly_id TEXT NOT NULL, payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, item_index INTEGER, payload BLOB NOT NULL,
    nbytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS seen_digests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, digests BLOB NOT NULL);
"""

COUNTERS = (
    "readings_committed",
    "readings_uploaded",
    "batches_acked",
    "quarantined",
    "quarantine_evicted",
    "rejected_full",
    "dropped_oldest",
    "downsampled_away",
    "retention_dropped",
    "duplicates_dropped",
    "anomalies_sent",
    "predictions_converted",  # into failure_probability readings, then validated (derived.py)
    "predictions_suppressed",  # held back by the deadband
    "predictions_quarantined",  # not a prediction (undecodable, NaN, outside 0..1)
)


@dataclass(frozen=True)
class QuarantineItem:
    """A reject kept with its reason: what arrived, where, and why it was refused."""

    received_ms: int
    topic: str
    reason: str
    index: int | None
    payload: bytes


@dataclass(frozen=True)
class OutboxEntry:
    """A batch promised to the cloud: the seq range it carries and its idempotency id."""

    first_seq: int
    last_seq: int
    generation: int
    batch_id: uuid.UUID
    created_ms: int
    acked: bool = False


@dataclass(frozen=True)
class AppendResult:
    stored: int
    rejected: int
    first_seq: int | None
    last_seq: int | None
    quarantine_evicted: int = 0  # oldest quarantine rows evicted to stay under the cap


@dataclass
class _State:
    """What the store keeps in memory about its database. A transaction changes a staged copy,
    which replaces this one only once COMMIT returned."""

    next_seq: int
    acked_seq: int
    used_bytes: int
    quarantine_bytes: int
    counters: dict[str, int]

    def copy(self) -> _State:
        return replace(self, counters=dict(self.counters))

    def bump(self, counter: str, amount: int) -> None:
        self.counters[counter] += amount


@dataclass(frozen=True)
class PendingAnomaly:
    row_id: int
    anomaly_id: str
    payload: bytes


@dataclass
class FullEvent:
    """What the full-disk policy did on one append (for counters and the alert)."""

    policy: str
    readings: int = 0


@dataclass
class Backlog:
    readings: int
    bytes: int
    oldest_created_ms: int | None
    oldest_event_ms: int | None
    blocks: int
    outbox: int
    anomalies: int
    counters: dict[str, int] = field(default_factory=dict)


def batch_id_for(producer: str, first_seq: int, last_seq: int, generation: int = 0) -> uuid.UUID:
    """Deterministic idempotency id: the same rows of the same producer give the same id."""
    return uuid.uuid5(_BATCH_NAMESPACE, f"{producer}|{first_seq}|{last_seq}|{generation}")


def stored_row_bytes(record_bytes: int, page_size: int) -> int:
    """What a row with a record of `record_bytes` takes in the file (SQLite's file format, 1.6):
    its share of a leaf page (the cells that fit side by side) plus whole overflow pages for
    whatever does not fit in the leaf."""
    record = record_bytes + _QUARANTINE_ROW_OVERHEAD
    max_local = page_size - 35
    local, overflow_pages = record, 0
    if record > max_local:
        min_local = (page_size - 12) * 32 // 255 - 23
        local = min_local + (record - min_local) % (page_size - 4)
        if local > max_local:
            local = min_local
        overflow_pages = -(-(record - local) // (page_size - 4))
    cells_per_leaf = max(1, (page_size - 8) // local)
    return -(-page_size // cells_per_leaf) + overflow_pages * page_size


def payload_digest(payload: bytes) -> bytes:
    """Fingerprint of an input payload, to drop a broker's redelivery after a crash."""
    return hashlib.blake2b(payload, digest_size=16).digest()


class BlockCodec:
    """Columns of one block <-> compressed bytes."""

    def __init__(self, level: int = 1) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(
        self,
        sid: Int32Array,
        ts: Int64Array,
        value: Float64Array,
        offsets: Int32Array | None = None,
    ) -> bytes:
        flags = _FLAG_OFFSETS if offsets is not None else 0
        parts = [
            _BLOCK_HEADER.pack(len(sid), flags),
            sid.astype("<i4", copy=False).tobytes(),
            ts.astype("<i8", copy=False).tobytes(),
            value.astype("<f8", copy=False).tobytes(),
        ]
        if offsets is not None:
            parts.append(offsets.astype("<i4", copy=False).tobytes())
        return self._compressor.compress(b"".join(parts))

    def decode(
        self, data: bytes, first_seq: int
    ) -> tuple[Int32Array, Int64Array, Float64Array, Int64Array]:
        raw = self._decompressor.decompress(data)
        count, flags = _BLOCK_HEADER.unpack_from(raw)
        at = _BLOCK_HEADER.size
        sid = np.frombuffer(raw, "<i4", count, at).astype(np.int32)
        at += 4 * count
        ts = np.frombuffer(raw, "<i8", count, at).astype(np.int64)
        at += 8 * count
        value = np.frombuffer(raw, "<f8", count, at).astype(np.float64)
        at += 8 * count
        if flags & _FLAG_OFFSETS:
            seq = first_seq + np.frombuffer(raw, "<i4", count, at).astype(np.int64)
        else:
            seq = first_seq + np.arange(count, dtype=np.int64)
        return sid, ts, value, seq


class Store:
    """The SQLite buffer. Thread-safe: one connection behind a lock (the work is short)."""

    def __init__(
        self,
        path: Path,
        *,
        producer: str,
        synchronous: str = "FULL",
        max_disk_bytes: int = 8 * 1024**3,
        full_policy: FullPolicy = "drop_oldest",
        downsample_factor: int = 10,
        retention_ms: int = 7 * 86_400_000,
        quarantine_max_bytes: int = 64 * 1024**2,
        clock: Callable[[], float] = time.time,
        seen_payloads_kept: int = 200_000,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.producer = producer
        self.max_disk_bytes = max_disk_bytes
        self.full_policy = full_policy
        self.downsample_factor = downsample_factor
        self.retention_ms = retention_ms
        self.quarantine_max_bytes = quarantine_max_bytes
        self._clock = clock
        self._seen_kept = seen_payloads_kept
        self._lock = threading.RLock()
        self._codec = BlockCodec()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Takes effect on a new database only (before its first table); older files are
        # converted once by `_convert_to_incremental_vacuum`.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._add_quarantine_sizes()
        self._load()
        with self._lock:
            if self._state.quarantine_bytes > self.quarantine_max_bytes:  # e.g. a lowered cap
                staged = self._state.copy()
                with self._transaction(staged):
                    staged.bump("quarantine_evicted", self._evict_quarantine(staged, 0))
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != _AUTO_VACUUM_INCREMENTAL:
                self._convert_to_incremental_vacuum()
            self.reclaim()

    # ------------------------------------------------------------------------------- state

    def _load(self) -> None:
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        max_block = db.execute("SELECT MAX(last_seq) FROM blocks").fetchone()[0] or 0
        max_outbox = db.execute("SELECT MAX(last_seq) FROM outbox").fetchone()[0] or 0
        self._state = _State(
            next_seq=max(int(meta.get("next_seq", 1)), max_block + 1, max_outbox + 1),
            acked_seq=int(meta.get("acked_seq", 0)),
            used_bytes=int(db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM blocks").fetchone()[0]),
            quarantine_bytes=int(
                db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM quarantine").fetchone()[0]
            ),
            counters={name: int(meta.get(f"counter.{name}", 0)) for name in COUNTERS},
        )
        self.series: list[SeriesKey] = []
        self.series_ids: dict[SeriesKey, int] = {}
        for sid, *key in db.execute(
            "SELECT id, factory_id, machine_id, sensor_id, metric, unit FROM series ORDER BY id"
        ):
            series_key = SeriesKey(*key)
            while len(self.series) < sid:
                self.series.append(SeriesKey("", "", "", "", ""))
            self.series.append(series_key)
            self.series_ids[series_key] = sid
        self._new_series: list[int] = []  # assigned in memory, written by the next commit
        # Digests of recently committed payloads, 16 bytes each, one row per commit.
        self.seen: dict[bytes, None] = {}
        for (blob,) in db.execute("SELECT digests FROM seen_digests ORDER BY id"):
            self.seen.update(dict.fromkeys(blob[i : i + 16] for i in range(0, len(blob), 16)))
        self._trim_seen_memory()

    @property
    def next_seq(self) -> int:
        """The seq the next stored reading gets (committed state)."""
        return self._state.next_seq

    @property
    def acked_seq(self) -> int:
        """Every reading up to this seq is acknowledged by the cloud (committed state)."""
        return self._state.acked_seq

    @property
    def used_bytes(self) -> int:
        """Bytes of unsent blocks, what the disk cap counts (committed state)."""
        return self._state.used_bytes

    @property
    def quarantine_bytes(self) -> int:
        """Bytes of the quarantine, what its cap counts (committed state)."""
        return self._state.quarantine_bytes

    @property
    def counters(self) -> Mapping[str, int]:
        """The committed counters (read-only: they change with the transactions they count)."""
        return MappingProxyType(self._state.counters)

    def file_bytes(self) -> int:
        """The database file plus its WAL, as the file system has them now."""
        total = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def series_id(self, key: SeriesKey) -> int:
        """The global id of a series, assigned now and written with the next commit."""
        sid = self.series_ids.get(key)
        if sid is None:
            sid = len(self.series)
            self.series.append(key)
            self.series_ids[key] = sid
            self._new_series.append(sid)
        return sid

    @contextmanager
    def _transaction(self, staged: _State) -> Iterator[None]:
        """BEGIN, the caller's changes to the database and to `staged`, the meta row, COMMIT;
        only then does `staged` become the store's state. Anything that fails, COMMIT included
        (a full disk), is rolled back and leaves memory as the database has it. Hold the lock."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._write_meta(staged)
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._state = staged

    def _rollback(self) -> None:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, I/O errors).
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed", extra={"db": str(self.path)})

    # ------------------------------------------------------------------------------ append

    def append(
        self,
        sid: Int32Array,
        ts: Int64Array,
        value: Float64Array,
        *,
        anomalies: Sequence[tuple[str, bytes]] = (),
        quarantine: Sequence[QuarantineItem] = (),
        digests: Sequence[bytes] = (),
        counters: Mapping[str, int] | None = None,
        max_block_readings: int = 5_000,
    ) -> tuple[AppendResult, list[FullEvent]]:
        """Commit readings, anomalies, quarantined rejects, seen-payload digests and counter
        increments (`counters`) at once.

        One transaction: after it returns, all of it survives a crash; before, none of it does,
        and a failure leaves the in-memory state as it was.
        """
        now_ms = int(self._clock() * 1000)
        n = len(sid)
        events: list[FullEvent] = []
        blocks = []
        for start in range(0, n, max_block_readings):
            stop = min(start + max_block_readings, n)
            data = self._codec.encode(sid[start:stop], ts[start:stop], value[start:stop])
            blocks.append((start, stop, data))
        needed = sum(len(d) + _ROW_OVERHEAD for *_, d in blocks)
        stored = rejected = evicted = 0
        first = last = None
        with self._lock:
            db = self._db
            staged = self._state.copy()
            new_series = list(self._new_series)
            with self._transaction(staged):
                self._write_series(new_series)
                if n and staged.used_bytes + needed > self.max_disk_bytes:
                    events.append(self._make_room(staged, needed))
                if n and staged.used_bytes + needed > self.max_disk_bytes:
                    rejected = n
                    staged.bump("rejected_full", n)
                    events.append(FullEvent("reject_new", n))
                elif n:
                    rows = []
                    for start, stop, data in blocks:
                        count = stop - start
                        seq = staged.next_seq
                        staged.next_seq += count
                        part_ts = ts[start:stop]
                        rows.append(
                            (
                                seq,
                                seq + count - 1,
                                count,
                                int(part_ts.min()),
                                int(part_ts.max()),
                                now_ms,
                                len(data) + _ROW_OVERHEAD,
                                data,
                            )
                        )
                        first = seq if first is None else first
                        last = seq + count - 1
                    db.executemany(
                        "INSERT INTO blocks (first_seq, last_seq, count, min_ts, max_ts, "
                        "created_ms, nbytes, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    staged.used_bytes += needed
                    stored = n
                    staged.bump("readings_committed", n)
                if anomalies:
                    db.executemany(
                        "INSERT INTO anomalies (anomaly_id, payload, created_ms) VALUES (?, ?, ?)",
                        [(aid, payload, now_ms) for aid, payload in anomalies],
                    )
                if quarantine:
                    evicted = self._store_quarantine(staged, quarantine)
                if digests:
                    db.execute(
                        "INSERT INTO seen_digests (digests) VALUES (?)", (b"".join(digests),)
                    )
                for name, amount in (counters or {}).items():
                    staged.bump(name, amount)
            # Committed: what memory staged for the database is now true.
            del self._new_series[: len(new_series)]
            for d in digests:
                self.seen[d] = None
            self._trim_seen_memory()
            if evicted:
                self.reclaim()
        return AppendResult(stored, rejected, first, last, evicted), events

    def _write_series(self, sids: Sequence[int]) -> None:
        if sids:
            self._db.executemany(
                "INSERT OR REPLACE INTO series (id, factory_id, machine_id, sensor_id, metric, "
                "unit) VALUES (?, ?, ?, ?, ?, ?)",
                [(sid, *self.series[sid]) for sid in sids],
            )

    def _write_meta(self, state: _State) -> None:
        rows = [("next_seq", state.next_seq), ("acked_seq", state.acked_seq)]
        rows.extend((f"counter.{name}", value) for name, value in state.counters.items())
        self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)

    def _trim_seen_memory(self) -> None:
        excess = len(self.seen) - self._seen_kept
        if excess > 0:
            for digest in list(self.seen)[:excess]:
                del self.seen[digest]

    def is_seen(self, digest: bytes) -> bool:
        return digest in self.seen

    # ------------------------------------------------------------------------- quarantine

    def _store_quarantine(self, staged: _State, items: Sequence[QuarantineItem]) -> int:
        """Insert rejects under the quarantine cap; return how many rows did not stay (the
        oldest evicted, or the oldest of this commit's own when they alone exceed the cap)."""
        sizes = [self._quarantine_row_bytes(item) for item in items]
        keep_from = len(items)
        kept_bytes = 0
        while keep_from and kept_bytes + sizes[keep_from - 1] <= self.quarantine_max_bytes:
            keep_from -= 1
            kept_bytes += sizes[keep_from]
        evicted = self._evict_quarantine(staged, kept_bytes) + keep_from
        self._db.executemany(
            "INSERT INTO quarantine (received_ms, topic, reason, item_index, payload, nbytes) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (q.received_ms, q.topic, q.reason, q.index, q.payload, size)
                for q, size in zip(items[keep_from:], sizes[keep_from:], strict=True)
            ],
        )
        staged.quarantine_bytes += kept_bytes
        staged.bump("quarantined", len(items))
        staged.bump("quarantine_evicted", evicted)
        return evicted

    def _quarantine_row_bytes(self, item: QuarantineItem) -> int:
        record = len(item.payload) + len(item.reason.encode()) + len(item.topic.encode())
        return stored_row_bytes(record, self._page_size)

    def _add_quarantine_sizes(self) -> None:
        """One-time migration of a database from before the quarantine cap: size every row."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(quarantine)")}
        if "nbytes" in columns:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "ALTER TABLE quarantine ADD COLUMN nbytes INTEGER NOT NULL DEFAULT 0"
                )
                sizes = [
                    (stored_row_bytes(record, self._page_size), row_id)
                    for row_id, record in self._db.execute(
                        "SELECT id, length(payload) + length(CAST(reason AS BLOB)) "
                        "+ length(CAST(topic AS BLOB)) FROM quarantine"
                    )
                ]
                self._db.executemany("UPDATE quarantine SET nbytes = ? WHERE id = ?", sizes)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _evict_quarantine(self, staged: _State, incoming: int) -> int:
        """Delete the oldest quarantine rows until `incoming` more bytes fit under the cap."""
        excess = staged.quarantine_bytes + incoming - self.quarantine_max_bytes
        if excess <= 0:
            return 0
        freed = rows = 0
        last_id = None
        cursor = self._db.execute("SELECT id, nbytes FROM quarantine ORDER BY id")
        for row_id, nbytes in cursor:
            freed += nbytes
            rows += 1
            last_id = row_id
            if freed >= excess:
                break
        cursor.close()
        if last_id is not None:
            self._db.execute("DELETE FROM quarantine WHERE id <= ?", (last_id,))
        staged.quarantine_bytes -= freed
        return rows

    def reclaim(self) -> int:
        """Give free pages back to the file system once they add up to `_RECLAIM_MIN_BYTES`;
        return the bytes released (0 when it was not worth it)."""
        with self._lock:
            free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            if free_pages * page_size < _RECLAIM_MIN_BYTES:
                return 0
            # executescript steps the pragma to completion (execute frees one page per step).
            self._db.executescript("PRAGMA incremental_vacuum;")
        return int(free_pages * page_size)

    def _convert_to_incremental_vacuum(self) -> None:
        """One-time migration of a database created before auto_vacuum: VACUUM rewrites it."""
        before = self.file_bytes()
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.warning(
            "buffer database converted to incremental auto-vacuum (one time)",
            extra={"db": str(self.path), "bytes_before": before, "bytes_after": self.file_bytes()},
        )

    # ------------------------------------------------------------------- full disk policy

    def _make_room(self, staged: _State, needed: int) -> FullEvent:
        """Apply the full policy inside the caller's transaction until `needed` bytes fit."""
        event = FullEvent(self.full_policy)
        if self.full_policy == "reject_new":
            return event
        if self.full_policy == "downsample_oldest":
            for first_seq, last_seq, count, nbytes, data in self._db.execute(
                "SELECT first_seq, last_seq, count, nbytes, data FROM blocks "
                "WHERE downsampled = 0 ORDER BY first_seq"
            ).fetchall():
                if staged.used_bytes + needed <= self.max_disk_bytes:
                    break
                kept = self._downsample_block(staged, first_seq, last_seq, count, nbytes, data)
                event.readings += count - kept
        while staged.used_bytes + needed > self.max_disk_bytes:
            row = self._db.execute(
                "SELECT first_seq, last_seq, count, nbytes FROM blocks ORDER BY first_seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            first_seq, last_seq, count, nbytes = row
            self._db.execute("DELETE FROM blocks WHERE first_seq = ?", (first_seq,))
            staged.used_bytes -= nbytes
            staged.bump("dropped_oldest", count)
            self._renew_outbox(first_seq, last_seq)
            event.readings += count
            if event.policy == "downsample_oldest":
                event.policy = "downsample_oldest+drop_oldest"
        return event

    def _downsample_block(
        self, staged: _State, first_seq: int, last_seq: int, count: int, nbytes: int, data: bytes
    ) -> int:
        """Keep every `downsample_factor`-th reading of each series in the block."""
        sid, ts, value, seq = self._codec.decode(data, first_seq)
        order = np.argsort(sid, kind="stable")
        sorted_sid = sid[order]
        starts = np.flatnonzero(np.r_[True, sorted_sid[1:] != sorted_sid[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        keep = np.sort(order[rank % self.downsample_factor == 0])
        offsets = (seq[keep] - first_seq).astype(np.int32)
        new_data = self._codec.encode(sid[keep], ts[keep], value[keep], offsets)
        new_nbytes = len(new_data) + _ROW_OVERHEAD
        self._db.execute(
            "UPDATE blocks SET count = ?, nbytes = ?, downsampled = 1, data = ? "
            "WHERE first_seq = ?",
            (len(keep), new_nbytes, new_data, first_seq),
        )
        staged.used_bytes += new_nbytes - nbytes
        staged.bump("downsampled_away", count - len(keep))
        self._renew_outbox(first_seq, last_seq)
        return len(keep)

    def _renew_outbox(self, first_seq: int, last_seq: int) -> None:
        """Outbox rows overlapping changed blocks carry other readings now: new batch ids."""
        for o_first, o_last, generation in self._db.execute(
            "SELECT first_seq, last_seq, generation FROM outbox "
            "WHERE first_seq <= ? AND last_seq >= ? AND acked = 0",
            (last_seq, first_seq),
        ).fetchall():
            new_id = batch_id_for(self.producer, o_first, o_last, generation + 1)
            self._db.execute(
                "UPDATE outbox SET generation = ?, batch_id = ? WHERE first_seq = ?",
                (generation + 1, new_id.bytes, o_first),
            )

    def enforce_retention(self) -> int:
        """Delete unsent blocks older than the retention period; return readings dropped."""
        cutoff = int(self._clock() * 1000) - self.retention_ms
        dropped = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT first_seq, last_seq, count, nbytes FROM blocks WHERE created_ms < ?",
                (cutoff,),
            ).fetchall()
            if not rows:
                return 0
            staged = self._state.copy()
            with self._transaction(staged):
                for first_seq, last_seq, count, nbytes in rows:
                    self._db.execute("DELETE FROM blocks WHERE first_seq = ?", (first_seq,))
                    staged.used_bytes -= nbytes
                    self._renew_outbox(first_seq, last_seq)
                    dropped += count
                staged.bump("retention_dropped", dropped)
                self._trim_tables()
        return dropped

    def _trim_tables(self) -> None:
        """Bound the seen digests: keep the newest rows (the quarantine has its byte cap)."""
        # Keep enough commits to hold `seen_payloads_kept` digests (a commit holds at most
        # one digest per payload; redeliveries come from the last few commits anyway).
        self._db.execute(
            "DELETE FROM seen_digests WHERE id <= (SELECT MAX(id) FROM seen_digests) - ?",
            (max(1, self._seen_kept // 1000),),
        )

    def maintenance(self) -> int:
        """Periodic housekeeping: retention, trimming, free pages back to the file system."""
        dropped = self.enforce_retention()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._trim_tables()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self.reclaim()
        return dropped

    # ------------------------------------------------------------------------------ upload

    def read_range(self, first_seq: int, last_seq: int) -> tuple[ReadingColumns, int]:
        """Stored readings with seq in [first_seq, last_seq], in seq order, and their count."""
        with self._lock:
            rows = self._db.execute(
                "SELECT first_seq, data FROM blocks WHERE first_seq <= ? AND last_seq >= ? "
                "ORDER BY first_seq",
                (last_seq, first_seq),
            ).fetchall()
        parts = []
        for block_first, data in rows:
            sid, ts, value, seq = self._codec.decode(data, block_first)
            mask = (seq >= first_seq) & (seq <= last_seq)
            if not mask.all():
                sid, ts, value = sid[mask], ts[mask], value[mask]
            parts.append((sid, ts, value))
        if not parts:
            return ReadingColumns.empty(), 0
        sid = np.concatenate([p[0] for p in parts])
        ts = np.concatenate([p[1] for p in parts])
        value = np.concatenate([p[2] for p in parts])
        used, local = np.unique(sid, return_inverse=True)
        series = [self.series[i] for i in used.tolist()]
        return ReadingColumns(series, local.astype(np.int32), ts, value), len(sid)

    def next_unbatched(self, max_readings: int) -> tuple[int, int, int, int] | None:
        """(first_seq, last_seq, readings, oldest created_ms) of the next batch candidate."""
        with self._lock:
            cursor = self._cursor()
            rows = self._db.execute(
                "SELECT first_seq, last_seq, count, created_ms FROM blocks WHERE last_seq >= ? "
                "ORDER BY first_seq LIMIT 64",
                (cursor,),
            ).fetchall()
        if not rows:
            return None
        first = max(rows[0][0], cursor)
        total = 0
        last = first
        for block_first, block_last, count, _ in rows:
            if block_first < cursor:  # the head block was partly acknowledged
                count = block_last - cursor + 1 if count == block_last - block_first + 1 else count
            if total and total + count > max_readings:
                break
            total += count
            last = block_last
        return first, last, total, rows[0][3]

    def _cursor(self) -> int:
        max_outbox = self._db.execute("SELECT MAX(last_seq) FROM outbox").fetchone()[0] or 0
        return max(self.acked_seq, max_outbox) + 1

    def add_outbox(self, first_seq: int, last_seq: int, created_ms: int) -> OutboxEntry:
        """Promise a batch: committed before it is published, so a re-send keeps its id."""
        entry = OutboxEntry(
            first_seq, last_seq, 0, batch_id_for(self.producer, first_seq, last_seq), created_ms
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (first_seq, last_seq, generation, batch_id, created_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (first_seq, last_seq, 0, entry.batch_id.bytes, created_ms),
            )
        return entry

    def outbox(self) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT first_seq, last_seq, generation, batch_id, created_ms, acked FROM outbox "
                "ORDER BY first_seq"
            ).fetchall()
        return [
            OutboxEntry(first, last, gen, uuid.UUID(bytes=bid), created, bool(acked))
            for first, last, gen, bid, created, acked in rows
        ]

    def ack_batch(self, first_seq: int, batch_id: uuid.UUID, readings: int) -> bool:
        """Record a PUBACK for a batch; False when the outbox row moved on (new generation)."""
        with self._lock:
            staged = self._state.copy()
            with self._transaction(staged):
                updated = self._db.execute(
                    "UPDATE outbox SET acked = 1 WHERE first_seq = ? AND batch_id = ?",
                    (first_seq, batch_id.bytes),
                ).rowcount
                if updated:
                    staged.bump("batches_acked", 1)
                    staged.bump("readings_uploaded", readings)
                    self._compact_acked(staged)
        return bool(updated)

    def drop_empty_outbox(self, first_seq: int) -> None:
        """An outbox row whose readings were all dropped (policy/retention): nothing to send."""
        with self._lock:
            staged = self._state.copy()
            with self._transaction(staged):
                self._db.execute("UPDATE outbox SET acked = 1 WHERE first_seq = ?", (first_seq,))
                self._compact_acked(staged)

    def _compact_acked(self, staged: _State) -> None:
        """Advance acked_seq over the acknowledged head of the outbox; delete what it covers."""
        db = self._db
        head = db.execute(
            "SELECT first_seq, last_seq, acked FROM outbox ORDER BY first_seq"
        ).fetchall()
        watermark = staged.acked_seq
        for _, last, acked in head:
            if not acked:
                break
            watermark = last
        if watermark == staged.acked_seq:
            return
        staged.acked_seq = watermark
        db.execute("DELETE FROM outbox WHERE last_seq <= ?", (watermark,))
        freed = db.execute(
            "SELECT COALESCE(SUM(nbytes), 0) FROM blocks WHERE last_seq <= ?", (watermark,)
        ).fetchone()[0]
        db.execute("DELETE FROM blocks WHERE last_seq <= ?", (watermark,))
        staged.used_bytes -= int(freed)

    # --------------------------------------------------------------------------- anomalies

    def pending_anomalies(self, limit: int = 100) -> list[PendingAnomaly]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, anomaly_id, payload FROM anomalies ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [PendingAnomaly(*row) for row in rows]

    def add_anomalies(self, anomalies: Sequence[tuple[str, bytes]]) -> None:
        """Queue anomalies for the cloud outside an ingest commit (buffer alerts)."""
        now_ms = int(self._clock() * 1000)
        with self._lock:
            self._db.executemany(
                "INSERT INTO anomalies (anomaly_id, payload, created_ms) VALUES (?, ?, ?)",
                [(aid, payload, now_ms) for aid, payload in anomalies],
            )

    def ack_anomaly(self, row_id: int) -> None:
        with self._lock:
            staged = self._state.copy()
            with self._transaction(staged):
                self._db.execute("DELETE FROM anomalies WHERE id = ?", (row_id,))
                staged.bump("anomalies_sent", 1)

    # ------------------------------------------------------------------------------ health

    def backlog(self) -> Backlog:
        with self._lock:
            db = self._db
            readings, nbytes, blocks, oldest, oldest_ts = db.execute(
                "SELECT COALESCE(SUM(count), 0), COALESCE(SUM(nbytes), 0), COUNT(*), "
                "MIN(created_ms), MIN(min_ts) FROM blocks"
            ).fetchone()
            partial = db.execute(
                "SELECT first_seq, last_seq, count FROM blocks WHERE first_seq <= ? "
                "AND last_seq > ? AND downsampled = 0",
                (self.acked_seq, self.acked_seq),
            ).fetchone()
            if partial:
                readings -= self.acked_seq - partial[0] + 1
            outbox = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            anomalies = db.execute("SELECT COUNT(*) FROM anomalies").fetchone()[0]
        return Backlog(
            int(readings),
            int(nbytes),
            oldest,
            oldest_ts,
            int(blocks),
            int(outbox),
            int(anomalies),
            dict(self.counters),
        )

    def quarantined(self, limit: int = 1000) -> list[QuarantineItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT received_ms, topic, reason, item_index, payload FROM quarantine "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [QuarantineItem(*row) for row in rows]


def iter_stored(path: Path) -> Iterable[tuple[int, SeriesKey, int, float]]:
    """(seq, series, timestamp, value) of every reading in a buffer file (tests, tooling)."""
    # Read-write on purpose: after a crash the first connection must be able to recover the WAL.
    db = sqlite3.connect(path, timeout=10)
    try:
        series = {
            row[0]: SeriesKey(*row[1:])
            for row in db.execute(
                "SELECT id, factory_id, machine_id, sensor_id, metric, unit FROM series"
            )
        }
        acked = dict(db.execute("SELECT key, value FROM meta").fetchall()).get("acked_seq", 0)
        codec = BlockCodec()
        for first_seq, data in db.execute("SELECT first_seq, data FROM blocks ORDER BY first_seq"):
            sid, ts, value, seq = codec.decode(data, first_seq)
            for s, i, t, v in zip(
                seq.tolist(), sid.tolist(), ts.tolist(), value.tolist(), strict=True
            ):
                if s > acked:
                    yield s, series[i], t, v
    finally:
        db.close()
