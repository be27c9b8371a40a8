"""The quarantine under its own cap: oldest rows evicted and counted, space given back to the
file system, the WAL bounded, and a database from before auto_vacuum converted once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from sensor_buffer.store import _SCHEMA, _WAL_SIZE_LIMIT, QuarantineItem, Store, stored_row_bytes

from iiot.contract import SeriesKey

KEY = SeriesKey("F1", "M1", "M1-temp", "temperature", "degC")
CAP = 2 * 1024 * 1024
PAGE_MARGIN = 256 * 1024  # free pages below the reclaim threshold, b-tree pages, meta


def rejects(n: int, size: int, tag: str) -> list[QuarantineItem]:
    return [
        QuarantineItem(i, "factory/F1/readings", f"{tag} {i}: not valid JSON", None, b"x" * size)
        for i in range(n)
    ]


def open_store(path: Path, **kwargs) -> Store:
    return Store(path / "buffer.sqlite3", producer="F1/gw", synchronous="NORMAL", **kwargs)


def test_the_oldest_rows_are_evicted_and_counted(tmp_path: Path) -> None:
    store = open_store(tmp_path, quarantine_max_bytes=CAP)
    evicted = 0
    for round_ in range(10):
        result, _ = store.append(*empty(), quarantine=rejects(100, 5_000, f"round {round_}"))
        evicted += result.quarantine_evicted
    assert store.quarantine_bytes <= CAP
    assert store.counters["quarantined"] == 1000
    assert store.counters["quarantine_evicted"] == evicted > 0
    kept = store.quarantined(limit=10_000)
    assert len(kept) == 1000 - evicted
    assert kept[0].reason == "round 9 99: not valid JSON"  # the newest stay
    assert not [q for q in kept if q.reason.startswith("round 0 ")]  # the oldest went first
    store.close()
    assert open_store(tmp_path, quarantine_max_bytes=CAP).quarantine_bytes == store.quarantine_bytes


def test_one_commit_larger_than_the_cap_keeps_its_newest_rejects(tmp_path: Path) -> None:
    store = open_store(tmp_path, quarantine_max_bytes=CAP)
    result, _ = store.append(*empty(), quarantine=rejects(100, 60_000, "flood"))
    kept = store.quarantined(limit=1000)
    assert 0 < len(kept) < 100
    assert result.quarantine_evicted == 100 - len(kept)
    assert kept[0].reason == "flood 99: not valid JSON"
    assert store.quarantine_bytes <= CAP


def test_a_poison_flood_leaves_the_file_within_the_cap(tmp_path: Path) -> None:
    """20x the cap of rejects, readings in between: the file stays at the cap plus the unsent
    readings and a small margin, and the WAL within its limit."""
    store = open_store(tmp_path, quarantine_max_bytes=CAP)
    sid = store.series_id(KEY)
    peak = 0
    for round_ in range(200):
        ts = 1_700_000_000_000 + round_ * 100_000 + np.arange(100, dtype=np.int64) * 1000
        store.append(
            np.full(100, sid, np.int32),
            ts,
            np.full(100, 50.0),
            quarantine=rejects(20, 10_000 + round_, f"r{round_}"),
        )
        peak = max(peak, store.file_bytes())
    store.maintenance()
    store._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    database = store.path.stat().st_size
    assert store.counters["quarantined"] == 4000
    assert store.quarantine_bytes <= CAP
    assert database <= CAP + store.used_bytes + PAGE_MARGIN, database
    assert peak <= CAP + store.used_bytes + PAGE_MARGIN + 2 * _WAL_SIZE_LIMIT, peak
    print(f"flood: cap {CAP}, database {database} bytes, peak with WAL {peak} bytes")


def test_space_is_given_back_and_the_wal_is_bounded(tmp_path: Path) -> None:
    store = open_store(tmp_path, quarantine_max_bytes=64 * CAP)
    store.append(*empty(), quarantine=rejects(400, 50_000, "big"))  # one 20 MB transaction
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = store.path.stat().st_size
    store.close()
    smaller = open_store(tmp_path, quarantine_max_bytes=CAP)  # a lowered cap applies on start
    assert smaller.quarantine_bytes <= CAP
    assert smaller.counters["quarantine_evicted"] > 0
    smaller._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    smaller.append(*empty(), quarantine=rejects(1, 10, "after"))  # the WAL restarts, truncated
    assert smaller.path.stat().st_size <= CAP + PAGE_MARGIN < full
    wal = Path(f"{smaller.path}-wal").stat().st_size
    assert wal <= _WAL_SIZE_LIMIT
    assert smaller._db.execute("PRAGMA journal_size_limit").fetchone()[0] == _WAL_SIZE_LIMIT


def test_a_database_from_before_auto_vacuum_is_converted_once(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(_SCHEMA.replace(",\n    nbytes INTEGER NOT NULL DEFAULT 0);", ");"))
    assert "nbytes" not in {row[1] for row in old.execute("PRAGMA table_info(quarantine)")}
    old.executemany(
        "INSERT INTO quarantine (received_ms, topic, reason, item_index, payload) "
        "VALUES (1, 't', 'bad', NULL, ?)",
        [(b"y" * 60_000,) for _ in range(300)],  # 18 MB of quarantine, as in the report
    )
    old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert old.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    old.close()
    before = path.stat().st_size
    store = Store(path, producer="F1/gw", quarantine_max_bytes=CAP)
    assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert store.quarantine_bytes <= CAP
    assert store.file_bytes() <= CAP + PAGE_MARGIN < before
    kept = store.quarantined(limit=1000)
    assert len(kept) == store.quarantine_bytes // stored_row_bytes(60_000 + 3 + 1, 4096)
    assert store.counters["quarantine_evicted"] == 300 - len(kept)


def empty():
    return np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64)
