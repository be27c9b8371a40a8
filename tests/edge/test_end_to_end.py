"""Through real brokers: simulator -> mosquitto -> SensorBuffer (a subprocess run by the CLI) ->
mosquitto standing in for IoT Core. Outage and kill -9 chaos included."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sensor_buffer.store import iter_stored

from iiot.contract import ReadingColumns, Validator
from iiot.publisher import publish
from iiot.topics import ANOMALIES, LOCAL_ALERTS, SENSOR_DATA
from iiot.wire import decode_batch

pytestmark = pytest.mark.slow

Key = tuple[tuple[str, ...], int, float]


class Collector:
    """A cloud-side consumer with a persistent session: keeps every payload per topic."""

    def __init__(self, port: int, topics: tuple[str, ...], client_id: str) -> None:
        self.messages: dict[str, list[bytes]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._message
        self.client.on_connect = self._connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port, clean_start=False, properties=properties)
        self.topics = topics
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _connect(self, client, _userdata, _flags, _reason, _properties) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.setdefault(message.topic, []).append(bytes(message.payload))

    def batches(self) -> list:
        with self._lock:
            payloads = list(self.messages.get(SENSOR_DATA, []))
        return [decode_batch(p) for p in payloads]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def valid(columns: ReadingColumns, catalog) -> Counter[Key]:
    """The readings the contract accepts (the simulator injects sensor faults)."""
    return readings_of(Validator(catalog).validate_columns(columns).columns)


def readings_of(columns: ReadingColumns) -> Counter[Key]:
    return Counter(
        (tuple(columns.series[i]), int(ts), float(v))
        for i, ts, v in zip(
            columns.series_index.tolist(),
            columns.timestamp.tolist(),
            columns.value.tolist(),
            strict=True,
        )
    )


def unique_batches(batches: list) -> dict:
    """Batch id -> batch, checking that every re-sent copy carries the same readings."""
    by_id: dict = {}
    for batch in batches:
        if batch.batch_id in by_id:
            assert readings_of(by_id[batch.batch_id].columns) == readings_of(batch.columns)
        else:
            by_id[batch.batch_id] = batch
    return by_id


def uploaded(batches: list) -> Counter[Key]:
    total: Counter[Key] = Counter()
    for batch in unique_batches(batches).values():
        total.update(readings_of(batch.columns))
    return total


class Component:
    """`iiot edge run` as a subprocess, killed or stopped by its PID."""

    def __init__(self, tmp_path: Path, local_url: str, cloud_url: str, *extra: str) -> None:
        self.data_dir = tmp_path / "buffer"
        self.args = [
            sys.executable,
            "-m",
            "iiot.cli",
            "--log-level",
            "WARNING",
            "edge",
            "run",
            "--factory",
            "F01",
            "--broker",
            local_url,
            "--cloud-broker",
            cloud_url,
            "--data-dir",
            str(self.data_dir),
            "--batch-linger-ms",
            "50",
            "--backoff-max-s",
            "1",
            "--health-interval-s",
            "1",
            *extra,
        ]
        self.log = tmp_path / "component.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_port: int | None = None) -> None:
        """Start; with `wait_port` (the local broker), return once it reports its status."""
        status = (
            Collector(wait_port, ("factory/F01/gateway/status",), "probe") if wait_port else None
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=log)
        if status is not None:
            try:
                wait_for(lambda: bool(status.messages["factory/F01/gateway/status"]), 30, "status")
            finally:
                status.close()

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # 0: clean stop; -SIGTERM: stopped before it installed its handler (still starting)
        assert self.process is None or self.process.returncode in (
            0,
            -signal.SIGKILL,
            -signal.SIGTERM,
        )

    @property
    def db(self) -> Path:
        return self.data_dir / "sensor_buffer.sqlite3"


@pytest.fixture
def component_factory(tmp_path: Path):
    made: list[Component] = []

    def make(local_url: str, cloud_url: str, *extra: str) -> Component:
        component = Component(tmp_path, local_url, cloud_url, *extra)
        made.append(component)
        return component

    yield make
    for component in made:
        component.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_every_valid_reading_arrives_exactly_once_after_dedup(
    broker_factory, component_factory, simulate, catalog
) -> None:
    local, cloud = broker_factory(), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA, ANOMALIES), "cloud-e2e")
    alerts = Collector(local.port, (LOCAL_ALERTS,), "alerts-e2e")
    component = component_factory(local.url, cloud.url)
    component.start(wait_port=local.port)
    columns = simulate(machines=4, minutes=10)
    summary = publish([columns], local.url, client_id="sensors-e2e")
    bad = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    bad.connect("127.0.0.1", local.port)
    bad.loop_start()
    for payload in (b"garbage", b'[{"timestamp": "x"}]', b"\x00\xff" * 10):
        bad.publish("factory/F01/readings", payload, qos=1).wait_for_publish(10)
    bad.loop_stop()
    bad.disconnect()
    expected = valid(columns, catalog)
    assert summary.readings == len(columns)
    try:
        wait_for(
            lambda: uploaded(collector.batches()) == expected, 90, "every reading uploaded once"
        )
    finally:
        component.stop()
        collector.close()
        alerts.close()
    db = sqlite3.connect(component.db)
    quarantined = db.execute("SELECT COUNT(*), MIN(reason) FROM quarantine").fetchone()
    assert quarantined[0] == 3 + len(columns) - sum(expected.values())
    assert quarantined[1]


def test_cloud_outage_backlog_drains_completely_and_in_order(
    broker_factory, component_factory, simulate, catalog
) -> None:
    local, cloud = broker_factory(), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-outage")
    component = component_factory(local.url, cloud.url, "--commit-interval-ms", "5")
    component.start(wait_port=local.port)
    columns = simulate(machines=5, minutes=20, seed=5)
    half = len(columns) // 2
    publish([columns.take(slice(0, half))], local.url, client_id="sensors-outage-1")
    wait_for(lambda: len(collector.batches()) > 0, 60, "first uploads")
    cloud.stop()  # IoT Core unreachable while readings keep arriving
    publish([columns.take(slice(half, None))], local.url, client_id="sensors-outage-2")
    time.sleep(3)
    # the consumer's session (and what was queued for it) survives the broker's restart
    assert (cloud.directory / "mosquitto.db").exists()
    cloud.start()
    expected = valid(columns, catalog)
    try:
        wait_for(lambda: uploaded(collector.batches()) == expected, 120, "the backlog to drain")
    finally:
        component.stop()
        collector.close()
    first_copies = []
    seen = set()
    for batch in collector.batches():
        if batch.batch_id not in seen:
            seen.add(batch.batch_id)
            first_copies.append(batch.first_seq)
    assert first_copies == sorted(first_copies), "the backlog was not sent oldest first"


def test_kill_9_chaos_loses_no_committed_reading(
    broker_factory, component_factory, simulate, catalog
) -> None:
    rng = random.Random(7)
    local, cloud = broker_factory(), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-chaos")
    component = component_factory(local.url, cloud.url)
    columns = simulate(machines=10, minutes=12, seed=9)
    published = threading.Thread(
        target=publish,
        args=([columns], local.url),
        kwargs={"rate": 2_500, "client_id": "sensors-chaos"},
    )
    committed_seen: Counter[Key] = Counter()
    kills = 0
    component.start(wait_port=local.port)
    published.start()
    try:
        for _ in range(20):
            time.sleep(rng.uniform(0.6, 2.0))
            component.kill()
            kills += 1
            if component.db.exists():
                for _seq, key, ts, value in iter_stored(component.db):
                    committed_seen[(tuple(key), ts, value)] = 1
            component.start()
        published.join(120)
        expected = valid(columns, catalog)
        wait_for(
            lambda: uploaded(collector.batches()) == expected, 120, "everything after the chaos"
        )
    finally:
        component.stop()
        collector.close()
    assert kills == 20
    batches = collector.batches()
    by_id = unique_batches(batches)
    final = uploaded(batches)
    assert all(final[key] == 1 for key in committed_seen), "a committed reading was lost"
    assert final == expected
    # Distinct batch ids cover disjoint seq ranges, together 1..N without a gap: duplicates
    # exist only as re-sent copies of the same batch id.
    ranges = sorted((b.first_seq, b.last_seq) for b in by_id.values())
    assert ranges[0][0] == 1
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert first == last + 1
    assert ranges[-1][1] == sum(expected.values())
    print(f"chaos: {kills} kills, {len(batches)} batches received, {len(by_id)} unique")
