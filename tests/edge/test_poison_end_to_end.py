"""The shared poison corpus through the real SensorBuffer over a real mosquitto.

`iiot edge run` as a subprocess between two private brokers; the corpus (`build_stream`: good
JSON lists and compact batches with every known poison, shadow copies and a reused batch id
between them) published to its input topic. Asserted: every good reading uploaded exactly once
(after de-duplication by batch id; the edge keeps the readings of the reused-id batch, it
de-duplicates by content), every poison quarantined with a reason containing its own, the
process alive and still ingesting afterwards; the bombs also through Ingestor+Store in a child
under an address-space limit. And the old stall: ~1,000 poisons, a kill -9, then good data.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from iiot.topics import SENSOR_DATA
from tests.edge.mqtt_helpers import Collector, close, connect, uploaded, wait_for
from tests.edge.test_ingest_isolation import assert_quarantined_with_reasons
from tests.poison import FACTORY, build_stream, good_json, good_readings, keys_of, run_limited

pytestmark = pytest.mark.slow
TOPIC = f"factory/{FACTORY}/readings"


def uploaded_keys(collector: Collector) -> list[tuple[str, int]]:
    """(sensor_id, timestamp) of every reading uploaded, once per distinct batch id."""
    keys = []
    for (series, ts, _value), copies in uploaded(collector.batches()).items():
        keys += [(series[2], ts)] * copies
    return keys


def publish_all(port: int, payloads: list[bytes], client_id: str) -> None:
    client, reason = connect(port, client_id=client_id)
    assert reason == "Success"
    try:
        pending = [client.publish(TOPIC, payload, qos=1) for payload in payloads]
        for message in pending:
            message.wait_for_publish(60)
    finally:
        close(client)


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_the_poison_corpus_over_mosquitto(broker_factory, component_factory) -> None:
    now_ms = int(time.time() * 1000)
    stream = build_stream(now_ms)
    local, cloud = broker_factory(), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-poison")
    component = component_factory(local.url, cloud.url)
    component.start(wait_port=local.port)
    expected = stream.good | stream.edge_only_good
    try:
        publish_all(local.port, stream.payloads, "sensors-poison")
        wait_for(lambda: set(uploaded_keys(collector)) == expected, 90, "every good reading")
        assert component.process is not None
        assert component.process.poll() is None, "the buffer died"
        later = good_readings(30, start_ms=now_ms - 1_000_000, sensor=77)
        publish_all(local.port, [good_json(later)], "sensors-after")
        wait_for(
            lambda: set(uploaded_keys(collector)) == expected | keys_of(later),
            60,
            "readings sent after the corpus",
        )
        print(f"buffer peak RSS over the corpus: {peak_rss_mb(component.process.pid):.0f} MB")
    finally:
        component.stop()
        collector.close()
    keys = uploaded_keys(collector)
    assert len(keys) == len(set(keys)), "a reading was uploaded twice"
    db = sqlite3.connect(component.db)
    reasons = [reason for (reason,) in db.execute("SELECT reason FROM quarantine")]
    db.close()
    poisons = [p for _, p in stream.poisons if not p.edge_accepts]
    assert len(stream.expected_reasons(edge=True)) == len(poisons)
    assert_quarantined_with_reasons(reasons, poisons)


def test_a_thousand_poisons_a_kill_9_then_good_data(broker_factory, component_factory) -> None:
    """Before: ~1,000 unacknowledged poisons filled the broker's in-flight window and no good
    reading got through again, even after a restart."""
    now_ms = int(time.time() * 1000)
    sample = good_json(good_readings(3, start_ms=now_ms - 3_000_000, sensor=90))
    poisons = [
        sample.replace(b'"F01"', b'"F\xff%d"' % i, 1)
        if i % 2
        else b"[" * (1000 + i) + b"]" * (1000 + i)
        for i in range(1200)
    ]
    local, cloud = broker_factory(persistent=True), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-stall")
    component = component_factory(local.url, cloud.url)
    component.start(wait_port=local.port)
    good = good_readings(100, start_ms=now_ms - 2_000_000, sensor=5)
    try:
        publish_all(local.port, poisons[:700], "sensors-stall-1")
        component.kill()  # mid-flood: what was not committed is redelivered
        publish_all(local.port, poisons[700:], "sensors-stall-2")
        component.start(wait_port=local.port)
        publish_all(local.port, [good_json(good[:50]), good_json(good[50:])], "sensors-stall-3")
        wait_for(lambda: set(uploaded_keys(collector)) == keys_of(good), 90, "the good data")
    finally:
        component.stop()
        collector.close()
    db = sqlite3.connect(component.db)
    quarantined = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
    db.close()
    assert quarantined == 1200  # each once: a redelivered poison is recognised by its digest


def test_bombs_through_the_ingestor_within_an_address_space_limit() -> None:
    """Each bomb with a good payload in one micro-batch of the real Ingestor and Store, in a
    fresh interpreter limited to 320 MB of address space (the interpreter, numpy and SQLite
    take about 170 MB of it): inflating any bomb would raise MemoryError there."""
    result = run_limited(
        """
        import tempfile, time
        from pathlib import Path
        from iiot.catalog import load_catalog
        from iiot.contract import Validator
        from sensor_buffer.ingest import Incoming, Ingestor
        from sensor_buffer.store import Store
        from sensor_buffer.thresholds import ThresholdChecker
        from tests.poison import bombs, good_json, good_readings

        catalog = load_catalog()
        now = int(time.time() * 1000)
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "buffer.sqlite3", producer="F01/gw", synchronous="NORMAL")
            edges = {name: metric.edge for name, metric in catalog.items()}
            ingestor = Ingestor(
                store, Validator(catalog), ThresholdChecker(edges, store.series.__getitem__)
            )
            for i, poison in enumerate(bombs(now)):
                good = good_readings(10, start_ms=now - 3_000_000 + i * 100_000, sensor=i)
                items = [Incoming("t", poison.payload, now), Incoming("t", good_json(good), now)]
                result = ingestor.process(items)
                assert result.stored == 10, poison.name
                [row] = store.quarantined(limit=1)
                assert poison.reason in row.reason, (poison.name, row.reason)
                print("refused:", poison.name)
            store.close()
        """,
        address_space_mb=320,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 5
