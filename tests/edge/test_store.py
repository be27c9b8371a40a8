"""The durable buffer: seq ranges, outbox ids, acknowledgement, recovery, retention, disk cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sensor_buffer.store import Store, batch_id_for, iter_stored

from iiot.contract import SeriesKey

KEY = SeriesKey("F1", "M1", "M1-temp", "temperature", "degC")


def columns(n: int, start_ts: int = 1_700_000_000_000, value0: float = 50.0):
    sid = np.zeros(n, dtype=np.int32)
    ts = start_ts + np.arange(n, dtype=np.int64) * 1000
    value = value0 + np.round(np.arange(n) * 0.01, 2)
    return sid, ts, value


def open_store(path: Path, **kwargs) -> Store:
    store = Store(path / "buffer.sqlite3", producer="F1/gw", **kwargs)
    store.series_id(KEY)
    return store


def test_append_assigns_consecutive_seqs_and_reads_ranges(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    first, _ = store.append(*columns(10))
    second, _ = store.append(*columns(5, start_ts=1_700_000_100_000))
    assert (first.first_seq, first.last_seq) == (1, 10)
    assert (second.first_seq, second.last_seq) == (11, 15)
    part, count = store.read_range(8, 12)
    assert count == 5
    assert part.timestamp.tolist() == [
        1_700_000_007_000,
        1_700_000_008_000,
        1_700_000_009_000,
        1_700_000_100_000,
        1_700_000_101_000,
    ]
    assert list(part.series) == [KEY]


def test_ack_by_seq_range_deletes_only_acknowledged_blocks(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.append(*columns(10))
    store.append(*columns(10, start_ts=1_700_001_000_000))
    entry = store.add_outbox(1, 10, 123)
    assert entry.batch_id == batch_id_for("F1/gw", 1, 10)
    assert store.ack_batch(1, entry.batch_id, 10)
    assert store.acked_seq == 10
    assert store.backlog().readings == 10
    assert store.next_unbatched(1000)[:3] == (11, 20, 10)


def test_out_of_order_acks_advance_the_watermark_only_over_a_contiguous_head(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    for i in range(3):
        store.append(*columns(10, start_ts=1_700_000_000_000 + i * 100_000))
    entries = [store.add_outbox(1 + 10 * i, 10 + 10 * i, 0) for i in range(3)]
    store.ack_batch(entries[1].first_seq, entries[1].batch_id, 10)
    assert store.acked_seq == 0  # batch 1 is still unacknowledged
    store.ack_batch(entries[0].first_seq, entries[0].batch_id, 10)
    assert store.acked_seq == 20
    assert [e.first_seq for e in store.outbox()] == [21]


def test_restart_resumes_from_the_last_acknowledged_seq_with_the_same_batch_ids(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    store.append(*columns(30))
    a = store.add_outbox(1, 10, 1)
    b = store.add_outbox(11, 20, 2)
    store.ack_batch(1, a.batch_id, 10)
    store.close()  # the process dies with batch b unacknowledged
    reopened = open_store(tmp_path)
    assert reopened.acked_seq == 10
    assert reopened.next_seq == 31
    assert [(e.first_seq, e.last_seq, e.batch_id) for e in reopened.outbox()] == [
        (11, 20, b.batch_id)
    ]
    assert reopened.next_unbatched(1000)[:2] == (21, 30)
    assert [seq for seq, *_ in iter_stored(tmp_path / "buffer.sqlite3")] == list(range(11, 31))


def test_seqs_are_never_reused_after_everything_was_acknowledged(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.append(*columns(5))
    entry = store.add_outbox(1, 5, 0)
    store.ack_batch(1, entry.batch_id, 5)
    store.close()
    reopened = open_store(tmp_path)
    assert reopened.append(*columns(3))[0].first_seq == 6


def test_seen_payload_digests_survive_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.append(*columns(1), digests=[b"d" * 16])
    store.close()
    assert open_store(tmp_path).is_seen(b"d" * 16)


@pytest.mark.parametrize("policy", ["reject_new", "drop_oldest", "downsample_oldest"])
def test_disk_cap_applies_the_full_policy_and_counts_it(tmp_path: Path, policy: str) -> None:
    rng = np.random.default_rng(1)
    store = open_store(tmp_path, max_disk_bytes=60_000, full_policy=policy, downsample_factor=10)

    def noisy(n: int, start: int):
        sid, ts, _ = columns(n, start_ts=start)
        return sid, ts, np.round(rng.uniform(0, 100, n), 2)

    events = []
    for i in range(20):
        _, happened = store.append(*noisy(1000, 1_700_000_000_000 + i * 1_000_000))
        events.extend(happened)
    assert store.used_bytes <= 60_000
    counters = store.counters
    assert events, "the cap was never reached"
    if policy == "reject_new":
        assert counters["rejected_full"] > 0
        assert counters["dropped_oldest"] == 0
        # the oldest data is kept
        assert store.read_range(1, 1)[1] == 1
    elif policy == "drop_oldest":
        assert counters["dropped_oldest"] > 0
        assert counters["rejected_full"] == 0
        assert store.read_range(1, 1)[1] == 0  # the oldest block went first
        assert store.read_range(19_001, 20_000)[1] == 1000  # the newest is complete
    else:
        assert counters["downsampled_away"] > 0
        assert counters["rejected_full"] == 0
        # the oldest block keeps one reading in ten, with its original seq and values
        _oldest, count = store.read_range(1, 1000)
        assert count == 100
        assert store.read_range(1, 1)[1] == 1
        assert store.read_range(2, 10)[1] == 0
    assert store.backlog().bytes == store.used_bytes


def test_full_policy_gives_overlapping_outbox_batches_a_new_id(tmp_path: Path) -> None:
    store = open_store(tmp_path, max_disk_bytes=15_000, full_policy="downsample_oldest")
    rng = np.random.default_rng(2)
    sid, ts, _ = columns(1000)
    store.append(sid, ts, np.round(rng.uniform(0, 100, 1000), 2))
    promised = store.add_outbox(1, 1000, 0)
    for i in range(1, 6):
        sid, ts, _ = columns(1000, start_ts=1_700_000_000_000 + i * 1_000_000)
        store.append(sid, ts, np.round(rng.uniform(0, 100, 1000), 2))
    [entry] = store.outbox()
    assert entry.generation >= 1
    assert entry.batch_id != promised.batch_id
    assert not store.ack_batch(1, promised.batch_id, 1000)  # a stale PUBACK changes nothing


def test_retention_drops_unsent_blocks_older_than_the_period(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = open_store(tmp_path, retention_ms=7 * 86_400_000, clock=lambda: now[0])
    store.append(*columns(10))
    now[0] += 8 * 86_400
    store.append(*columns(5, start_ts=1_700_100_000_000))
    assert store.enforce_retention() == 10
    assert store.counters["retention_dropped"] == 10
    assert store.backlog().readings == 5
