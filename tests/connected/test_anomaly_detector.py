"""The anomaly detector's way through the connected run, on its real parts: trained from the
lake's silver readings (normal operation only) by `iiot ml anomaly-train`, published as a
com.iiot.AnomalyModel version in the local component store and deployed into the gateway's
package folder (`local_platform.connected.models`), run by the gateway's FailurePredictor
process configured as the run configures it; a fault injected into one machine's readings (a
sensor leaves its normal relation to the others) raises MULTIVARIATE_ANOMALY, which leaves
through the outbox to IoT Core (the cloud broker), the AnomalyRule puts it on the Kinesis
anomaly stream, and the predictor's record of what it raised (what the reconciliation follows
by id) names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from iiot.anomaly import decode_anomaly
from iiot.catalog import MetricCatalog
from local_platform.connected.plan import ANOMALY_STREAM, Plan, Topology

pytestmark = pytest.mark.slow

FAULTY = "F01-M001"
FAULT_READINGS = 60  # ten minutes at the run's 10 s sampling


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.2)


def _write_silver(plan: Plan, catalog: MetricCatalog) -> list[Any]:
    """The fleet's history as the lake's silver readings (a Delta table; the columns the
    training set export reads); returns the live hours' readings."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from local_platform.simulator import FleetSimulator

    history: list[Any] = []
    live: list[Any] = []
    for chunk in FleetSimulator(plan.fleet, catalog).chunks():
        for reading in chunk.to_readings():
            (live if reading.timestamp >= plan.live_start_ms else history).append(reading)
    table = pa.table(
        {
            "factory_id": [r.factory_id for r in history],
            "machine_id": [r.machine_id for r in history],
            "sensor_id": [r.sensor_id for r in history],
            "metric": [r.metric for r in history],
            "unit": [r.unit for r in history],
            "timestamp": pa.array([r.timestamp for r in history], pa.int64()),
            "value": pa.array([r.value for r in history], pa.float64()),
        }
    )
    write_deltalake(str(plan.lake_dir / "silver" / "readings"), table)
    return live


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """IoT Core (a mosquitto), the AWS APIs (moto, with the run's streams) and the IoT rules'
    process, as the connected run starts them; stopped by PID."""
    from local_platform.connected import aws
    from local_platform.connected.kinesis import aws_environment
    from local_platform.localbroker import Mosquitto, free_port

    plan = Plan(work_dir=tmp_path, factories=1, machines_per_factory=3, hours=1.0,
                history_hours=30, malformed_rate=0.0)  # fmt: skip
    plan.write()
    plan.status_dir.mkdir(parents=True, exist_ok=True)
    brokers = {"cloud": Mosquitto.create(log_subscriptions=True),
               "F01": Mosquitto.create(log_subscriptions=True)}  # fmt: skip
    port = free_port()
    moto = subprocess.Popen(aws.moto_command(port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    processes = [moto]
    env = aws_environment(port)
    saved = {k: os.environ.get(k) for k in env}
    try:
        _wait(lambda: aws.listening(port), 60, "moto")
        os.environ.update(env)
        aws.create_resources()
        Topology(
            cloud_broker=brokers["cloud"].port,
            input_brokers={"F01": brokers["F01"].port},
            uplinks={"F01": brokers["cloud"].port},
            moto=port,
        ).write(plan.run_dir)
        rules = subprocess.Popen(
            [sys.executable, "-m", "local_platform.connected.ingress",
             "--plan", str(plan.run_dir / "plan.json")],
            env={**os.environ, **env},
            stdout=(tmp_path / "ingress.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        processes.append(rules)
        _wait(
            lambda: brokers["cloud"].subscribed("iot-rules", "factory/anomalies"), 60, "IoT rules"
        )
        yield {"plan": plan, "brokers": brokers, "processes": processes}
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for broker in brokers.values():
            broker.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _anomaly_stream() -> list[Any]:
    from local_platform.connected.kinesis import client

    kinesis = client("kinesis")
    shards = kinesis.list_shards(StreamName=ANOMALY_STREAM)["Shards"]
    found = []
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=ANOMALY_STREAM, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=1000)
            found += [decode_anomaly(r["Data"]) for r in page["Records"]]
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return found


def test_a_fault_the_detector_finds_reaches_the_anomaly_stream(
    cloud: dict[str, Any], catalog: MetricCatalog
) -> None:
    from local_platform.connected import models, reconcile
    from local_platform.connected.gateway import component_configuration
    from local_platform.publisher import MqttWriter

    plan: Plan = cloud["plan"]
    brokers = cloud["brokers"]
    live = _write_silver(plan, catalog)

    # the lake -> anomaly-train -> the component store -> the gateway's package folder
    trained = models.anomaly_lifecycle(plan, 1, plan.live_start_ms)
    assert trained["published"]
    assert trained["machines"] == 3
    assert trained["training_set"]["readings"] > 0
    recipe = json.loads((Path(trained["store"]) / "recipe.json").read_text())
    assert (recipe["ComponentName"], recipe["ComponentVersion"]) == ("com.iiot.AnomalyModel",
                                                                      "1.0.1")  # fmt: skip
    models.deploy(plan, "F01", Path(trained["store"]), models.ANOMALY_MODEL)
    configured = component_configuration("failure-predictor", plan, "F01")
    model_file = Path(configured["anomalyModelDir"]) / "anomaly_model.json"
    assert json.loads(model_file.read_text())["model_version"] == trained["model_version"]

    # the gateway's predictor, as the run starts it (no failure model deployed: it runs the
    # detector alone)
    predictor = subprocess.Popen(
        [sys.executable, "-m", "local_platform.connected.gateway", "failure-predictor",
         "--plan", str(plan.run_dir / "plan.json"), "--factory", "F01",
         "--broker", brokers["F01"].url, "--cloud", brokers["cloud"].url],
        stdout=(plan.run_dir / "predictor.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    cloud["processes"].append(predictor)
    _wait(lambda: brokers["F01"].subscribed("failure-predictor-F01", "factory/F01/readings"),
          60, "the predictor")  # fmt: skip

    # the live readings, one message per machine and instant; the fault: from the 60th instant
    # on, one of FAULTY's sensors the model watches leaves its normal relation to the others
    # (five of the model's standard deviations, what an overheating or a blocked line does)
    from edge_runtime.anomaly_detector import AnomalyModelSet

    watched = AnomalyModelSet.load(model_file.parent).machines[FAULTY]
    sensor, shift = watched.sensors[0], 5 * float(watched.scale[0])
    assert (
        catalog[sensor].valid_range.max > max(r.value for r in live if r.metric == sensor) + shift
    )
    instants = sorted({r.timestamp for r in live})
    fault_start = instants[60]
    fault_end = instants[60 + FAULT_READINGS]
    by_message: dict[tuple[int, str], list[Any]] = {}
    for reading in live:
        if reading.timestamp > fault_end + 20 * plan.interval_ms:
            continue
        if (
            reading.machine_id == FAULTY
            and fault_start <= reading.timestamp < fault_end
            and reading.metric == sensor
        ):
            reading = msgspec.structs.replace(reading, value=reading.value + shift)
        by_message.setdefault((reading.timestamp, reading.machine_id), []).append(reading)
    writer = MqttWriter(brokers["F01"].url, "sensors-F01")
    try:
        for (_, _), readings in sorted(by_message.items()):
            writer.publish("factory/F01/readings", msgspec.json.encode(readings))
        writer.flush()
    finally:
        writer.close()

    def detected() -> list[Any]:
        return [a for a in _anomaly_stream() if a.anomaly_type == "MULTIVARIATE_ANOMALY"]

    _wait(lambda: any(a.state == "RAISED" for a in detected()), 120, "the detector's anomaly")
    raised = [a for a in detected() if a.state == "RAISED"]
    assert {a.machine_id for a in raised} == {FAULTY}
    first = min(raised, key=lambda a: a.timestamp)
    assert fault_start <= first.timestamp < fault_end
    assert first.source == "model"
    assert first.score is not None
    assert np.isfinite(first.score)
    assert sensor in [c.metric for c in first.contributors]
    # what the predictor recorded raising (the reconciliation's side of the count)
    _wait(lambda: first.anomaly_id in reconcile.predictor_anomalies(plan), 10, "the record")
    recorded = reconcile.predictor_anomalies(plan)
    assert recorded[first.anomaly_id] == "MULTIVARIATE_ANOMALY"
    assert {a.anomaly_id for a in raised} <= set(recorded)
    assert sum(reconcile.outbox_waiting(plan).values()) == 0  # acknowledged by the cloud
