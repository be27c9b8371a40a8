"""The durable outbox: committed before the publish, deleted on the PUBACK, retried with backoff
in order, bounded with the oldest evicted and counted, and what a crash interrupted resent."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import pytest

from edge_runtime.outbox import MEMORY, OutboxSender, SqliteOutbox
from edge_runtime.transport import MemoryTransport


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sender(
    outbox: SqliteOutbox, transport: MemoryTransport, clock: Clock, **kwargs: float
) -> OutboxSender:
    return OutboxSender(
        outbox,
        transport.publish_cloud,
        "cloud/anomalies",
        clock=clock,
        rng=random.Random(1),
        **kwargs,  # type: ignore[arg-type]
    )


def test_committed_before_the_publish_and_deleted_on_the_puback(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
    transport = MemoryTransport(auto_ack=False)
    clock = Clock()
    out = sender(outbox, transport, clock)
    out.submit("a", b"A")
    assert transport.cloud == [("cloud/anomalies", b"A")]
    assert len(outbox) == 1  # on disk until acknowledged
    # a second process sees it committed (what a kill -9 leaves)
    assert [m.message_id for m in SqliteOutbox(tmp_path / "outbox.sqlite3").pending()] == ["a"]
    transport.pending[0].set_result(None)
    out.pump()
    assert len(outbox) == 0
    assert out.acked == 1


def test_an_outage_backs_off_then_drains_in_order_each_once(tmp_path: Path) -> None:
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
    transport = MemoryTransport()
    clock = Clock()
    out = sender(outbox, transport, clock, backoff_initial_s=1.0, backoff_max_s=8.0)
    transport.fail_next = 10**9  # the cloud is unreachable
    for i in range(5):
        out.submit(f"m{i}", f"M{i}".encode())
    assert transport.cloud == []
    assert len(outbox) == 5
    # only the first is tried while backing off: the others wait behind it
    assert out.publish_failures == 1
    delays = []
    for _ in range(6):
        wait = out.pump()
        delays.append(wait)
        clock.now += wait
        out.pump()  # due: tries the head again, fails again
    assert out.publish_failures == 7
    assert max(delays) <= 8.0
    transport.fail_next = 0  # reconnected
    clock.now += 8.0
    out.pump()
    assert [p for _, p in transport.cloud] == [f"M{i}".encode() for i in range(5)]
    assert len(outbox) == 0
    # the same id submitted again while still waiting is one message
    transport.auto_ack = False
    out.submit("x", b"X")
    out.submit("x", b"X")
    assert len(outbox) == 1


def test_the_bound_evicts_the_oldest_counts_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3"
    clock = Clock()
    outbox = SqliteOutbox(path, max_messages=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.outbox"):
        for i in range(10):
            outbox.put(f"m{i}", b"x")
            clock.now += 1
    assert [m.message_id for m in outbox.pending()] == ["m7", "m8", "m9"]
    assert outbox.evicted == 7
    evictions = [r for r in caplog.records if "evicted" in r.getMessage()]
    assert len(evictions) == 1  # the first at once, then at most one a minute
    assert evictions[0].evicted == 1  # type: ignore[attr-defined]
    clock.now += 60
    with caplog.at_level(logging.WARNING, logger="edge_runtime.outbox"):
        outbox.put("m10", b"x")
    last = [r for r in caplog.records if "evicted" in r.getMessage()][-1]
    assert last.evicted == 7  # type: ignore[attr-defined]  # six unlogged plus this one
    assert last.evicted_total == 8  # type: ignore[attr-defined]
    outbox.close()
    assert SqliteOutbox(path, max_messages=3).evicted == 8  # kept in the file


def test_a_restart_resends_what_was_not_acknowledged_and_an_ack_timeout_resends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    transport = MemoryTransport(auto_ack=False)
    clock = Clock()
    first = sender(SqliteOutbox(path), transport, clock, ack_timeout_s=60.0)
    first.submit("a", b"A")
    first.submit("b", b"B")
    transport.pending[0].set_result(None)
    first.pump()
    # the process dies here: b was published but never acknowledged
    again = MemoryTransport()
    second = sender(SqliteOutbox(path), again, Clock())
    second.pump()
    assert again.cloud == [("cloud/anomalies", b"B")]
    # a publish never answered is sent again after the ack timeout
    clock.now += 61
    first.pump()
    assert transport.cloud[-1] == ("cloud/anomalies", b"B")


def test_the_thread_retries_until_acknowledged_and_memory_is_not_durable() -> None:
    outbox = SqliteOutbox(MEMORY)
    assert not outbox.durable
    transport = MemoryTransport()
    transport.fail_next = 2
    out = OutboxSender(
        outbox, transport.publish_cloud, "t", backoff_initial_s=0.01, backoff_max_s=0.02
    )
    out.start()
    try:
        out.submit("a", b"A")
        deadline = time.monotonic() + 10
        while len(outbox) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        out.stop()
    assert transport.cloud == [("t", b"A")]
    assert len(outbox) == 0
    with pytest.raises(ValueError, match="max_messages"):
        SqliteOutbox(MEMORY, max_messages=0)
