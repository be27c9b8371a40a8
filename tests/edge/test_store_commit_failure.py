"""A failed commit leaves memory as the database has it: real SQLite failures, not mocks.

Two ways the disk fills: the database reaches its page limit in the middle of a transaction
(`PRAGMA max_page_count`), and COMMIT itself cannot write the WAL (a file-size limit in a child
process, the same EFBIG/ENOSPC path a full disk takes). After each, the next commit stores
correctly and a Store reopened from disk agrees with the one in memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sensor_buffer.store import QuarantineItem, Store, iter_stored

from iiot.contract import SeriesKey

ROOT = Path(__file__).resolve().parents[2]
KEY_A = SeriesKey("F1", "M1", "M1-temp", "temperature", "degC")
KEY_B = SeriesKey("F1", "M2", "M2-temp", "temperature", "degC")


def columns(n: int, sid: int, start_ts: int):
    rng = np.random.default_rng(start_ts % 1000)
    return (
        np.full(n, sid, dtype=np.int32),
        start_ts + np.arange(n, dtype=np.int64) * 1000,
        np.round(rng.uniform(0, 100, n), 2),
    )


def memory_state(store: Store) -> dict:
    """Everything the store keeps in memory about its database."""
    return {
        "next_seq": store.next_seq,
        "acked_seq": store.acked_seq,
        "used_bytes": store.used_bytes,
        "quarantine_bytes": store.quarantine_bytes,
        "counters": dict(store.counters),
        "series": [tuple(key) for key in store.series],
        "seen": sorted(d.hex() for d in store.seen),
    }


def test_a_full_database_mid_transaction_changes_nothing_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    store = Store(path, producer="F1/gw", synchronous="NORMAL")
    store.series_id(KEY_A)
    store.append(*columns(500, 0, 1_700_000_000_000), digests=[b"a" * 16])
    entry = store.add_outbox(1, 500, 0)
    before = memory_state(store)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # not one page more: the disk is full

    sid_b = store.series_id(KEY_B)  # a new series, to be written by the next commit
    with pytest.raises(Exception, match="full"):
        store.append(
            *columns(20_000, sid_b, 1_700_001_000_000),
            quarantine=[QuarantineItem(1, "t", "bad", None, b"x" * 50_000)],
            digests=[b"b" * 16],
        )
    after = memory_state(store)
    assert after == {**before, "series": [*before["series"], tuple(KEY_B)]}
    assert not store.is_seen(b"b" * 16)

    store._db.execute("PRAGMA max_page_count=1073741823")  # space again
    result, _ = store.append(*columns(300, sid_b, 1_700_002_000_000), digests=[b"c" * 16])
    assert (result.first_seq, result.last_seq) == (501, 800)
    assert store.ack_batch(1, entry.batch_id, 500)
    committed = memory_state(store)
    store.close()
    reopened = Store(path, producer="F1/gw", synchronous="NORMAL")
    assert memory_state(reopened) == committed
    stored = list(iter_stored(path))
    assert [seq for seq, *_ in stored] == list(range(501, 801))
    assert {key for _, key, *_ in stored} == {KEY_B}


FAILING_COMMIT = """
import json, resource, signal, sqlite3, sys
from pathlib import Path
import numpy as np
from sensor_buffer.store import QuarantineItem, Store
from iiot.contract import SeriesKey
from tests.edge.test_store_commit_failure import KEY_A, KEY_B, columns, memory_state

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
path = Path(sys.argv[1])
store = Store(path, producer="F1/gw")
store.series_id(KEY_A)
store.append(*columns(500, 0, 1_700_000_000_000), digests=[b"a" * 16])
entry = store.add_outbox(1, 500, 0)
before = memory_state(store)
sid_b = store.series_id(KEY_B)
statements = []
store._db.set_trace_callback(statements.append)
wal = path.with_name(path.name + "-wal")
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (wal.stat().st_size, hard))  # the disk is full
try:
    store.append(
        *columns(2_000, sid_b, 1_700_001_000_000),
        quarantine=[QuarantineItem(1, "t", "bad", None, b"x" * 1000)],
        digests=[b"b" * 16],
    )
    error = None
except sqlite3.Error as exc:
    error = str(exc)
last_statement = statements[-1] if statements else None
try:  # the upload side: a PUBACK recorded on a full disk
    store.ack_batch(1, entry.batch_id, 500)
    ack_error = None
except sqlite3.Error as exc:
    ack_error = str(exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
store._db.set_trace_callback(None)
failed = memory_state(store)
result, _ = store.append(*columns(300, sid_b, 1_700_002_000_000), digests=[b"c" * 16])
acked = store.ack_batch(1, entry.batch_id, 500)
print(json.dumps({
    "error": error,
    "ack_error": ack_error,
    "acked": acked,
    "last_statement": last_statement,
    "before": before,
    "failed": failed,
    "retry": [result.first_seq, result.last_seq],
    "committed": memory_state(store),
}))
store.close()
"""


def test_a_commit_that_cannot_write_leaves_memory_as_the_database(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FAILING_COMMIT), str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["error"], "the commit was expected to fail"
    assert report["last_statement"] == "COMMIT"  # it was COMMIT itself that failed
    assert report["ack_error"]
    before, failed = report["before"], report["failed"]
    assert failed == {**before, "series": [*before["series"], list(KEY_B)]}
    assert report["retry"] == [501, 800]
    assert report["acked"]
    assert report["committed"]["acked_seq"] == 500
    reopened = Store(path, producer="F1/gw")
    committed = json.loads(json.dumps(memory_state(reopened)))
    assert committed == report["committed"]
    assert [seq for seq, *_ in iter_stored(path)] == list(range(501, 801))
