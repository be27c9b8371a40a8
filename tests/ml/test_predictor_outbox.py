"""The FailurePredictor's anomaly outbox through real brokers: the predictor runs as its own
process (`python -m failure_predictor.main --mqtt ... --cloud-mqtt ...`) on one mosquitto, a
second mosquitto stands in for IoT Core and is stopped while anomalies are raised. Every anomaly
arrives, each id exactly once and in order, unless the predictor was killed (-9): then at least
once. The outbox bound and the configuration are checked in-process."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from failure_predictor.config import ConfigError, PredictorConfig
from failure_predictor.main import PredictorComponent, build, outbox_location
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.anomaly_detector import AnomalyModelSet, MachineModel
from edge_runtime.outbox import MEMORY
from edge_runtime.transport import MemoryTransport
from iiot import topics
from iiot.anomaly import decode_anomaly
from iiot.catalog import MetricCatalog
from iiot.contract import Reading
from iiot.wire import encode_json
from local_platform.localbroker import Mosquitto
from tests.edge.mqtt_helpers import Collector, Subprocess, wait_for

FACTORY = "F01"
MACHINES = ("F01-M001", "F01-M002", "F01-M003")
T0 = 1_767_000_000_000
NORMAL = {"pressure": 120.0, "flow_rate": 600.0, "vibration": 3.0}
LEAK = {"pressure": 120.0, "flow_rate": 540.0, "vibration": 3.0}  # flow off, pressure holds


def deploy_models(directory: Path) -> None:
    model = MachineModel(
        sensors=("pressure", "flow_rate", "vibration"),
        center=np.array([120.0, 600.0, 3.0]),
        scale=np.array([2.0, 10.0, 0.2]),
        components=np.array([[0.7071], [0.7071], [0.0]]),
        eigenvalues=np.array([1.8]),
        t2_limit=4.0,
        q_limit=0.5,
        threshold=4.0,
    )
    AnomalyModelSet(
        model_version="a1",
        ewma_span=1,
        smoothing_readings=1,
        machines=dict.fromkeys(MACHINES, model),
    ).save(directory)


def raw_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Each machine raises on a leaking row and clears on the next normal one."""
    deploy_models(tmp_path / "anomaly_model")
    (tmp_path / "no_failure_model").mkdir(exist_ok=True)
    return {
        "factoryId": FACTORY,
        "modelDir": str(tmp_path / "no_failure_model"),
        "anomalyModelDir": str(tmp_path / "anomaly_model"),
        "anomalyRaiseAfterReadings": 1,
        "anomalyClearAfterReadings": 1,
        "outboxPath": str(tmp_path / "work" / "anomaly_outbox.sqlite3"),
        "backoffInitialSeconds": 0.1,
        "backoffMaxSeconds": 1.0,
        **overrides,
    }


def payloads(catalog: MetricCatalog, first_row: int, rows: int) -> list[bytes]:
    """One payload per row (every machine's three sensors), alternating normal and leaking."""
    out = []
    for i in range(first_row, first_row + rows):
        values = LEAK if i % 2 else NORMAL
        out.append(
            encode_json(
                [
                    Reading(T0 + i * 10_000, FACTORY, m, f"{m}-{k}", k, v, catalog[k].unit)
                    for m in MACHINES
                    for k, v in values.items()
                ]
            )
        )
    return out


def expected_ids(tmp_path: Path, sent: list[bytes]) -> list[str]:
    """The anomaly ids the same readings raise in-process, in the order they are raised."""
    transport = MemoryTransport()
    build(PredictorConfig.from_mapping({**raw_config(tmp_path), "outboxPath": ""}), transport)
    for payload in sent:
        transport.deliver(topics.readings_topic(FACTORY), payload)
    return [decode_anomaly(p).anomaly_id for _, p in transport.cloud]


class Predictor(Subprocess):
    """The component as a subprocess, stopped or killed by its PID."""

    def __init__(self, tmp_path: Path, local: Mosquitto, cloud: Mosquitto, raw: dict) -> None:
        config = tmp_path / "predictor.json"
        config.write_text(json.dumps(raw))
        self.outbox = Path(raw["outboxPath"])
        super().__init__(
            [
                sys.executable,
                "-m",
                "failure_predictor.main",
                "--mqtt",
                local.url,
                "--cloud-mqtt",
                cloud.url,
                "--config",
                str(config),
            ],
            tmp_path / "predictor.log",
        )

    def start(self) -> None:
        self.launch()

    def waiting(self) -> int:
        """Anomalies committed and not acknowledged (read as another process would)."""
        if not self.outbox.exists():
            return 0
        db = sqlite3.connect(self.outbox)
        try:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0
        finally:
            db.close()


@pytest.fixture
def brokers() -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """The gateway's broker (logging subscriptions) and a persistent "IoT Core"."""
    local = Mosquitto.create(log_subscriptions=True)
    cloud = Mosquitto.create(persistent=True)
    try:
        yield local, cloud
    finally:
        local.close()
        cloud.close()


def send(port: int, messages: list[bytes]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in messages:
            client.publish(topics.readings_topic(FACTORY), payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def received_ids(collector: Collector) -> list[str]:
    with collector._lock:
        got = list(collector.messages.get(topics.ANOMALIES, []))
    return [decode_anomaly(p).anomaly_id for p in got]


def started(predictor: Predictor, local: Mosquitto) -> None:
    predictor.start()
    wait_for(
        lambda: local.subscribed(f"failure-predictor-{FACTORY}", topics.readings_topic(FACTORY)),
        60,
        "the predictor to subscribe to readings",
    )


@pytest.mark.slow
def test_an_outage_loses_no_anomaly_and_each_arrives_once_in_order(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto], catalog: MetricCatalog
) -> None:
    local, cloud = brokers
    collector = Collector(cloud.port, (topics.ANOMALIES,), "cloud-anomalies-outage")
    before, during = payloads(catalog, 0, 4), payloads(catalog, 4, 10)
    expected = expected_ids(tmp_path, before + during)
    predictor = Predictor(tmp_path, local, cloud, raw_config(tmp_path))
    try:
        started(predictor, local)
        send(local.port, before)
        first = len(expected_ids(tmp_path, before))
        wait_for(lambda: len(received_ids(collector)) == first, 60, "anomalies before the outage")
        wait_for(lambda: predictor.waiting() == 0, 30, "their PUBACKs")
        cloud.stop()  # IoT Core unreachable while the predictor raises anomalies
        send(local.port, during)
        wait_for(lambda: predictor.waiting() == len(expected) - first, 60, "the outage's anomalies")
        assert len(received_ids(collector)) == first
        cloud.start()
        wait_for(lambda: len(received_ids(collector)) >= len(expected), 90, "the outbox drained")
        wait_for(lambda: predictor.waiting() == 0, 30, "the outbox emptied by the PUBACKs")
    finally:
        predictor.stop()
        collector.close()
    got = received_ids(collector)
    assert Counter(got) == Counter(expected)  # every anomaly, each id exactly once
    assert got == expected  # in the order they were raised
    assert len(expected) == 3 * 13  # every row after the first raises or clears, per machine
    log = predictor.log.read_text()
    assert "cloud publish failed; kept in the outbox, retrying" in log


@pytest.mark.slow
def test_a_kill_9_between_commit_and_puback_sends_them_after_the_restart(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto], catalog: MetricCatalog
) -> None:
    local, cloud = brokers
    collector = Collector(cloud.port, (topics.ANOMALIES,), "cloud-anomalies-kill")
    sent = payloads(catalog, 0, 8)
    expected = expected_ids(tmp_path, sent)
    predictor = Predictor(tmp_path, local, cloud, raw_config(tmp_path))
    try:
        cloud.stop()
        started(predictor, local)
        send(local.port, sent)
        wait_for(lambda: predictor.waiting() == len(expected), 60, "every anomaly committed")
        predictor.kill()  # committed, never acknowledged
        cloud.start()
        predictor.start()
        wait_for(lambda: predictor.waiting() == 0, 90, "the outbox drained after the restart")
        wait_for(lambda: set(received_ids(collector)) == set(expected), 30, "every anomaly")
    finally:
        predictor.stop()
        collector.close()
    got = Counter(received_ids(collector))
    assert set(got) == set(expected)  # none lost; a copy more is allowed after a kill
    assert "anomalies waiting in the outbox from before" in predictor.log.read_text()


def test_the_bound_evicts_the_oldest_and_the_outbox_is_in_the_work_folder(
    tmp_path: Path, catalog: MetricCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    raw = raw_config(tmp_path, outboxPath="anomaly_outbox.sqlite3", outboxMaxAnomalies=4)
    config = PredictorConfig.from_mapping(raw)
    work = tmp_path / "work"
    assert outbox_location(config, str(work)) == str(work / "anomaly_outbox.sqlite3")
    assert outbox_location(config, "") == MEMORY  # no work folder known: in memory
    absolute = PredictorConfig.from_mapping({**raw, "outboxPath": "/var/x.sqlite3"})
    assert outbox_location(absolute, str(work)) == "/var/x.sqlite3"
    transport = MemoryTransport()
    transport.fail_next = 10**9  # the cloud is unreachable throughout
    component = PredictorComponent(config, transport, str(work))
    component.start()
    try:
        for payload in payloads(catalog, 0, 4):
            transport.deliver(topics.readings_topic(FACTORY), payload)
    finally:
        component.stop()
    raised = expected_ids(tmp_path, payloads(catalog, 0, 4))
    assert len(raised) == 9
    db = sqlite3.connect(work / "anomaly_outbox.sqlite3")
    kept = [bytes(r[0]) for r in db.execute("SELECT payload FROM messages ORDER BY id")]
    evicted = db.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()[0]
    assert [decode_anomaly(p).anomaly_id for p in kept] == raised[-4:]  # the newest kept
    assert evicted == 5
    assert transport.cloud == []
    for key, bad in (
        ("outboxMaxAnomalies", 0),
        ("outboxPath", 3),
        ("backoffMaxSeconds", 0.01),
    ):
        with pytest.raises(ConfigError, match=key):
            PredictorConfig.from_mapping({**raw, key: bad})
