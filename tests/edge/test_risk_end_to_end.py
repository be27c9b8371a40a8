"""The fleet-risk data path end to end, through the connected run's real local stand-ins:

FailurePredictor messages on the local mosquitto -> the SensorBuffer (`iiot edge run`, a
subprocess) stores them as the derived series `failure_probability` (deadband, maximum
interval, bad ones quarantined) -> compact batches to a second mosquitto standing in for IoT
Core, which goes down for a while (the uplink outage) -> every delivered copy, duplicates
included, to the InfluxDB writer's logic against a real influxd and into the lake's landing
zone, run by the real lake jobs (Sail + Delta): each stored probability is one point in
InfluxDB and one row in silver, none lost to the outage.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyarrow as pa
import pytest
from failure_predictor.messages import PREDICTIONS, Prediction, encoder, topic
from paho.mqtt.enums import CallbackAPIVersion

from iiot.contract import Validator
from iiot.topics import SENSOR_DATA
from lambdas.influx_writer.repository import InfluxV1Writer, RecordingDeadLetter
from lambdas.influx_writer.service import InfluxWriterService
from tests.edge.mqtt_helpers import Collector, Key, uploaded, wait_for

pytestmark = pytest.mark.slow
METRIC = "failure_probability"
TOPIC = topic(PREDICTIONS, "F01")
SERIES = ("F01", "{machine}", "{machine}-failure_predictor", METRIC, "probability")


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Any]:
    """Debian's InfluxDB 1.6 on free 127.0.0.1 ports; stopped by its PID."""
    from local_platform.connected.influxd import start_influxd

    root = tmp_path / "influxd"
    root.mkdir()
    server = start_influxd(root)
    try:
        yield server
    finally:
        server.stop()


def publish(port: int, predictions: list[tuple[str, int, float, bool]], raw: list[bytes]) -> None:
    """The predictor's messages, as it encodes them, at QoS 1 on the local broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payloads = [
        encoder.encode(
            Prediction(
                factory_id="F01",
                machine_id=machine,
                timestamp=ts,
                probability=p,
                model_version="v3",
                backend="compiled",
                alert=alert,
            )
        )
        for machine, ts, p, alert in predictions
    ]
    for payload in [*payloads, *raw]:
        client.publish(TOPIC, payload, qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def key(machine: str, ts: int, p: float) -> Key:
    return (tuple(s.format(machine=machine) for s in SERIES), ts, p)


def counter(db: Path, name: str) -> int:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = connection.execute(
            "SELECT value FROM meta WHERE key = ?", (f"counter.{name}",)
        ).fetchone()
    finally:
        connection.close()
    return int(row[0]) if row else 0


def test_a_prediction_becomes_an_influxdb_point_and_a_lake_row_across_an_outage(
    broker_factory, component_factory, influxd, tmp_path: Path, catalog
) -> None:
    local, cloud = broker_factory(), broker_factory(persistent=True)
    collector = Collector(cloud.port, (SENSOR_DATA,), "cloud-risk")
    component = component_factory(local.url, cloud.url)  # deadband 0.01, at most every 300 s
    component.start(wait_port=local.port)
    t0 = int(time.time() * 1000) - 3_600_000
    minute = 60_000
    before_outage = [
        ("F01-M001", t0, 0.10, False),
        ("F01-M001", t0 + minute, 0.105, False),  # within the deadband: not stored
        ("F01-M001", t0 + 2 * minute, 0.30, False),
        ("F01-M002", t0, 0.50, False),
        ("F01-M002", t0 + 2 * minute, 0.52, False),
    ]
    bad = [
        encoder.encode(
            Prediction(
                factory_id="F01",
                machine_id="F01-M002",
                timestamp=t0 + minute,
                probability=1.5,
                model_version="v3",
                backend="compiled",
                alert=True,
            )
        ),
        b'{"factory_id": "F01", "machine_id": "F01-M002", "timestamp": 1, "probability": NaN}',
    ]
    during_outage = [
        ("F01-M001", t0 + 3 * minute, 0.85, True),
        ("F01-M001", t0 + 4 * minute, 0.855, True),  # within the deadband, same alert state
        ("F01-M002", t0 + 10 * minute, 0.525, False),  # 8 minutes since its last: stored
    ]
    stored_first = [key(m, ts, p) for m, ts, p, _ in before_outage if p not in (0.105,)]
    stored_later = [key(m, ts, p) for m, ts, p, _ in during_outage if p != 0.855]
    expected = Counter(stored_first + stored_later)
    try:
        publish(local.port, before_outage, bad)
        wait_for(
            lambda: uploaded(collector.batches()) == Counter(stored_first), 60, "first uploads"
        )
        cloud.stop()  # IoT Core unreachable while the predictor goes on
        publish(local.port, during_outage, [])
        wait_for(lambda: counter(component.db, "predictions_suppressed") == 2, 30, "the commit")
        cloud.start()
        wait_for(lambda: uploaded(collector.batches()) == expected, 120, "the backlog to drain")
    finally:
        component.stop()
        collector.close()

    database = sqlite3.connect(component.db)
    reasons = [r for (r,) in database.execute("SELECT reason FROM quarantine ORDER BY id")]
    database.close()
    assert len(reasons) == 2
    assert reasons[0].startswith("value: failure probability 1.5 of 'F01-M002' is outside [0, 1]")
    assert reasons[1].startswith("prediction: not a prediction message")
    assert counter(component.db, "predictions_converted") == len(expected)

    # Every copy the cloud broker delivered (a batch re-sent after the outage arrives twice):
    # at least once on the wire, once per key in InfluxDB and in the lake.
    copies = list(collector.messages[SENSOR_DATA])
    assert len(copies) >= 2

    influxd.query('CREATE DATABASE "risk"')
    dead = RecordingDeadLetter()
    writer = InfluxWriterService(
        writer=InfluxV1Writer(influxd.url, "risk"), dead_letter=dead, validator=Validator(catalog)
    )
    for payload in copies:
        writer.write_record(payload, {"source": "test"})
    writer.write_record(copies[0], {"source": "test"})  # and one redelivered record
    assert dead.sent == []
    series = influxd.query(
        f'SELECT value FROM "{METRIC}" GROUP BY "factory_id", "machine_id", "sensor_id"', "risk"
    )
    points = Counter(
        key(s["tags"]["machine_id"], ts, value)
        for s in series
        if s["tags"]["factory_id"] == "F01"
        and s["tags"]["sensor_id"] == f"{s['tags']['machine_id']}-failure_predictor"
        for ts, value in s["values"]
    )
    assert points == expected

    from spark_jobs import io, jobs
    from spark_jobs.engine import sail_session
    from spark_jobs.transforms import quality_rules

    lake = io.LakePaths.from_root(tmp_path / "lake")
    for index, payload in enumerate([*copies, copies[0]]):
        io.land_file(io.local_path(lake.landing), f"batch/{index}-{uuid.uuid4()}.iiotb", payload)
    with sail_session() as spark:
        jobs.run_all(spark, lake, quality_rules(catalog))
    silver = io.read_arrow(lake.silver)
    timestamps = silver.column("timestamp").cast(pa.int64()).to_pylist()
    rows = Counter(
        ((r["factory_id"], r["machine_id"], r["sensor_id"], r["metric"], r["unit"]), ts, r["value"])
        for r, ts in zip(silver.to_pylist(), timestamps, strict=True)
    )
    assert rows == expected  # one row per key, however often its batch arrived
