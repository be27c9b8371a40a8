"""The wired component with the in-memory transport, and its configuration updates validated
through the Greengrass configuration watch."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import msgspec
from sensor_buffer.config import BufferConfig
from sensor_buffer.main import SensorBuffer

from edge_runtime.transport import MemoryTransport
from iiot.anomaly import decode_anomaly
from iiot.catalog import MetricCatalog
from iiot.contract import Reading


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def readings(n: int, start: int | None = None) -> bytes:
    start = start or int(time.time() * 1000) - 3_600_000
    rng = random.Random(start)
    return msgspec.json.encode(
        [
            Reading(start + i, "F1", "M1", "M1-temp", "temperature", rng.uniform(30, 90), "degC")
            for i in range(n)
        ]
    )


def test_full_disk_raises_a_buffer_alert_locally_and_to_the_cloud(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    transport = MemoryTransport(auto_ack=False)  # the cloud never acknowledges: the disk fills
    config = BufferConfig(
        factory_id="F1",
        data_dir=tmp_path,
        max_disk_bytes=30_000,
        full_policy="reject_new",
        batch_linger_ms=10_000_000,
        health_interval_s=3600,
    )
    buffer = SensorBuffer(config, transport, catalog)
    buffer.start()
    try:
        for i in range(40):
            transport.deliver(
                "factory/F1/readings", readings(500, start=1_790_000_000_000 + i * 1000)
            )
        wait_for(lambda: buffer.store.counters["rejected_full"] > 0)
        wait_for(lambda: any(t == config.anomalies_topic for t, _ in transport.cloud))
    finally:
        buffer.stop()
    local = [decode_anomaly(p) for t, p in transport.local if t == config.local_alerts_topic]
    # The first event alerts at once; the rest of the interval's go out together (here when
    # the buffer stops): the counts add up to every rejected reading, none twice.
    assert [a.anomaly_type for a in local] == ["BUFFER_FULL", "BUFFER_FULL"]
    assert {a.severity for a in local} == {"CRITICAL"}
    counts = [int(re.search(r"affected (\d+) readings", a.message)[1]) for a in local]
    assert sum(counts) == buffer.store.counters["rejected_full"]
    assert counts[1] > 0
    cloud = [decode_anomaly(p) for t, p in transport.cloud if t == config.anomalies_topic]
    assert cloud[0].anomaly_id == local[0].anomaly_id


def test_quarantine_cap_evicts_the_oldest_and_alerts_with_every_eviction_counted(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    transport = MemoryTransport()
    config = BufferConfig(
        factory_id="F1",
        data_dir=tmp_path,
        quarantine_max_bytes=1024 * 1024,
        batch_linger_ms=10_000_000,
        health_interval_s=3600,
    )
    buffer = SensorBuffer(config, transport, catalog)
    buffer.start()
    try:
        for i in range(100):  # 5 MB of garbage against a 1 MiB quarantine
            transport.deliver("factory/F1/readings", b"%d" % i + b"\xff" * 50_000)
        wait_for(lambda: buffer.store.counters["quarantined"] == 100)
        status = buffer.publish_status()
    finally:
        buffer.stop()
    assert status["quarantine_bytes"] <= status["quarantine_cap_bytes"] == 1024 * 1024
    evicted = status["quarantine_evicted"]
    assert evicted > 0
    assert status["database_file_bytes"] < 8 * 1024 * 1024
    local = [decode_anomaly(p) for t, p in transport.local if t == config.local_alerts_topic]
    assert {a.anomaly_type for a in local} == {"BUFFER_QUARANTINE_FULL"}
    counts = [int(re.search(r"(\d+) oldest quarantined", a.message)[1]) for a in local]
    assert sum(counts) == evicted  # all of them, the last ones flushed when the buffer stopped
    assert local[0].threshold == 1024 * 1024


def test_status_is_published_and_reports_the_backlog(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    transport = MemoryTransport(auto_ack=False)
    config = BufferConfig(
        factory_id="F1", data_dir=tmp_path, batch_linger_ms=10_000_000, health_interval_s=0.2
    )
    buffer = SensorBuffer(config, transport, catalog)
    buffer.start()
    try:
        transport.deliver("factory/F1/readings", readings(100))
        transport.deliver("factory/F1/readings", b"not json")

        def status_with_backlog() -> bool:
            for topic, payload in transport.local:
                if topic == config.status and json.loads(payload)["backlog_readings"] == 100:
                    return True
            return False

        wait_for(status_with_backlog)
    finally:
        buffer.stop()
    status = buffer.last_status
    assert status["backlog_readings"] == 100
    assert status["quarantined"] == 1
    assert status["oldest_unsent_age_s"] is not None
    assert status["backlog_bytes"] > 0


def test_configuration_updates_are_validated_before_they_apply(catalog: MetricCatalog) -> None:
    from awsiot.greengrasscoreipc.model import (
        ValidateConfigurationUpdateEvent,
        ValidateConfigurationUpdateEvents,
    )
    from sensor_buffer.config import default_configuration
    from sensor_buffer.main import validation_problem

    from edge_runtime.ipc import ConfigurationWatch

    class Client:
        def __init__(self) -> None:
            self.reports: list = []
            self.handlers: dict = {}

        def subscribe_to_validate_configuration_updates(self, *, on_stream_event):
            self.handlers["validate"] = on_stream_event
            return None, type("Operation", (), {"close": lambda self: None})()

        def subscribe_to_configuration_update(self, *, key_path, on_stream_event):
            self.handlers["update"] = on_stream_event
            return None, type("Operation", (), {"close": lambda self: None})()

        def send_configuration_validity_report(self, *, configuration_validity_report):
            self.reports.append(configuration_validity_report)

        def close(self) -> None:
            pass

    client = Client()
    changes: list[int] = []
    watch = ConfigurationWatch(
        lambda raw: validation_problem(raw, catalog), lambda: changes.append(1), client
    )
    watch.start()
    good = {**default_configuration(catalog), "factoryId": "F1"}
    bad = {**good, "fullPolicy": "panic"}
    for document, deployment in ((good, "d1"), (bad, "d2")):
        client.handlers["validate"](
            ValidateConfigurationUpdateEvents(
                validate_configuration_update_event=ValidateConfigurationUpdateEvent(
                    configuration=document, deployment_id=deployment
                )
            )
        )
    assert [(r.deployment_id, r.status) for r in client.reports] == [
        ("d1", "ACCEPTED"),
        ("d2", "REJECTED"),
    ]
    assert "full_policy" in client.reports[1].message
    client.handlers["update"](None)
    assert changes == [1]
    watch.stop()
