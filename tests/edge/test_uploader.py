"""Uploader: anomalies ahead of the backlog, oldest first, size and rate limits, backoff."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from sensor_buffer.config import BufferConfig
from sensor_buffer.store import Store, batch_id_for
from sensor_buffer.uploader import TokenBucket, Uploader

from edge_runtime.transport import MemoryTransport
from iiot.contract import SeriesKey
from iiot.wire import decode_batch

KEY = SeriesKey("F1", "M1", "M1-vib", "vibration", "mm/s")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def setup(tmp_path: Path, clock: Clock, **overrides):
    store = Store(tmp_path / "b.sqlite3", producer="F1/gw", synchronous="NORMAL")
    store.series_id(KEY)
    settings = {
        "factory_id": "F1",
        "data_dir": tmp_path,
        "batch_linger_ms": 0.001,
        "max_publishes_per_s": 1000.0,
        "max_bytes_per_s": 1e9,
    }
    settings.update(overrides)
    config = BufferConfig(**settings)
    transport = MemoryTransport()
    uploader = Uploader(
        store,
        transport.publish_cloud,
        config,
        clock=clock,
        wall_clock=lambda: clock.now + 2_000_000_000,
        rng=random.Random(1),
    )
    return store, transport, uploader, config


def add(store: Store, n: int, start: int = 1_700_000_000_000, noisy: bool = False) -> None:
    rng = np.random.default_rng(start)
    value = rng.uniform(0, 100, n) if noisy else np.round(5 + np.arange(n) % 7 * 0.01, 2)
    store.append(np.zeros(n, np.int32), start + np.arange(n, dtype=np.int64) * 1000, value)


def drain(uploader: Uploader, clock: Clock, steps: int = 200) -> None:
    for _ in range(steps):
        wait = uploader.step()
        clock.now += max(wait, 0.001)


def test_anomalies_go_out_before_any_backlog_batch(tmp_path: Path) -> None:
    clock = Clock()
    store, transport, uploader, config = setup(tmp_path, clock)
    add(store, 5000)
    store.append(
        np.empty(0, np.int32),
        np.empty(0, np.int64),
        np.empty(0),
        anomalies=[("a1", b'{"anomaly": 1}')],
    )
    drain(uploader, clock)
    topics = [topic for topic, _ in transport.cloud]
    assert topics[0] == config.anomalies_topic
    assert config.upload_topic in topics[1:]
    assert store.pending_anomalies() == []


def test_batches_are_sent_oldest_first_within_the_message_size_limit(tmp_path: Path) -> None:
    clock = Clock()
    store, transport, uploader, config = setup(tmp_path, clock, batch_max_bytes=8_000)
    for i in range(6):
        add(store, 2000, start=1_700_000_000_000 + i * 10_000_000, noisy=True)
    drain(uploader, clock, steps=500)
    batches = [decode_batch(p) for topic, p in transport.cloud if topic == config.upload_topic]
    assert all(len(p) <= 8_000 for _, p in transport.cloud)
    assert [b.first_seq for b in batches] == sorted(b.first_seq for b in batches)
    assert sum(len(b.columns) for b in batches) == 12_000
    assert batches[0].batch_id == batch_id_for(
        "F1/gateway".replace("gateway", "gw"), 1, batches[0].last_seq
    )
    assert store.backlog().readings == 0


def test_publish_rate_is_capped(tmp_path: Path) -> None:
    clock = Clock()
    store, transport, uploader, _ = setup(
        tmp_path, clock, max_publishes_per_s=2.0, commit_max_readings=100, batch_max_readings=100
    )
    for i in range(20):
        add(store, 100, start=1_700_000_000_000 + i * 1_000_000)
    began = clock.now
    drain(uploader, clock, steps=400)
    assert len(transport.cloud) == 20
    # 2 publishes/s with a bucket of 2: twenty publishes need at least 9 s
    assert clock.now - began >= 9.0


def test_failures_back_off_exponentially_with_jitter_then_recover(tmp_path: Path) -> None:
    clock = Clock()
    store, transport, uploader, _ = setup(tmp_path, clock, backoff_initial_s=1.0, backoff_max_s=8.0)
    add(store, 1000)
    transport.fail_next = 5
    waits = []
    for _ in range(40):
        wait = uploader.step()
        waits.append(wait)
        clock.now += max(wait, 0.001)
        if store.backlog().readings == 0:
            break
    assert uploader.publish_failures == 5
    assert store.backlog().readings == 0
    assert max(waits) <= 8.0
    # the same batch id every time: the cloud drops whatever copy arrives twice
    ids = {decode_batch(p).batch_id for _, p in transport.cloud}
    assert len(ids) == 1


def test_unacknowledged_batches_are_resent_after_restart_with_the_same_id(tmp_path: Path) -> None:
    clock = Clock()
    store, transport, uploader, _ = setup(tmp_path, clock)
    add(store, 1000)
    transport.auto_ack = False
    uploader.step()
    [(_, first_copy)] = transport.cloud
    store.close()  # crash before the PUBACK
    clock2 = Clock()
    store2, transport2, uploader2, _ = setup(tmp_path, clock2)
    drain(uploader2, clock2, steps=5)
    [(_, second_copy)] = transport2.cloud
    assert decode_batch(first_copy).batch_id == decode_batch(second_copy).batch_id
    assert store2.backlog().readings == 0


def test_token_bucket_waits_for_refill() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 10.0, clock)
    bucket.take(10)
    assert bucket.wait_time(5) == 0.5
    clock.now += 0.5
    assert bucket.wait_time(5) == 0.0


def test_a_refused_batch_is_not_overtaken_by_newer_ones(tmp_path: Path) -> None:
    clock = Clock()
    store, transport, uploader, config = setup(
        tmp_path, clock, commit_max_readings=100, batch_max_readings=100, backoff_initial_s=0.5
    )
    for i in range(6):
        add(store, 100, start=1_700_000_000_000 + i * 1_000_000)
    transport.fail_next = 1  # e.g. the connection is not back yet for the first publish
    drain(uploader, clock)
    sent = [
        decode_batch(p).first_seq for topic, p in transport.cloud if topic == config.upload_topic
    ]
    assert sent == sorted(sent)
    assert len(sent) == 6
