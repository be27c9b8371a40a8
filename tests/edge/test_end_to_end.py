"""Through real brokers: simulator -> mosquitto -> SensorBuffer (a subprocess run by the CLI) ->
mosquitto standing in for IoT Core. Outage and kill -9 chaos included."""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sensor_buffer.store import iter_stored

from iiot.contract import ReadingColumns, Validator
from iiot.topics import ANOMALIES, LOCAL_ALERTS, SENSOR_DATA
from local_platform.publisher import publish
from tests.edge.mqtt_helpers import Collector, Key, readings_of, unique_batches, uploaded, wait_for

pytestmark = pytest.mark.slow


def valid(columns: ReadingColumns, catalog) -> Counter[Key]:
    """The readings the contract accepts (the simulator injects sensor faults)."""
    return readings_of(Validator(catalog).validate_columns(columns).columns)


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
