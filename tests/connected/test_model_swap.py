"""A running FailurePredictor (the gateway's process, as the connected run starts it) swaps in a
new FailureModel version mid-stream without losing its per-machine feature state.

The new version carries the same trees under another version (a new manifest, as a new
component version deploys it): if the swap rebuilt the feature state, the predictions after it
would come at other readings and with other probabilities than those of a predictor that ran
the model all along. They come at the same readings with the same probabilities, and under the
new version. The new version carries another alert threshold (as a retrained model brings the
one its cross-validation chose): the gateway, configured as the connected run configures it
(the recipe's defaults, no threshold of its own), flags alerts at v1's threshold before the
swap and at v2's after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from iiot.catalog import MetricCatalog
from local_platform.connected.gateway import component_configuration, model_dir
from local_platform.connected.plan import Plan
from local_platform.publisher import MqttWriter, messages
from local_platform.simulator import FleetConfig, FleetSimulator, write_simulation

pytestmark = pytest.mark.slow

TRAINING = FleetConfig(
    factories=1,
    machines_per_factory=6,
    hours=120.0,
    interval_ms=120_000,
    seed=11,
    mtbf_hours=40.0,
    malformed_rate=0.0,
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, catalog: MetricCatalog) -> Path:
    from ml_pipeline.compile import compile_model
    from ml_pipeline.dataset import build_table
    from ml_pipeline.train import train_and_evaluate

    root = tmp_path_factory.mktemp("model")
    write_simulation(FleetSimulator(TRAINING, catalog), root / "run")
    table = build_table(root / "run", catalog=catalog, sample_ms=10 * 60_000)
    train_and_evaluate(table, root / "model", rounds=30, version="v1")
    compile_model(root / "model", root / "failure_model", ("x86_64",))
    return root / "failure_model"


def _install(source: Path, target: Path, version: str, threshold: float | None = None) -> None:
    """A component version's files into place, the manifest last (as `models.deploy`)."""
    target.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.iterdir(), key=lambda p: p.name == "manifest.json"):
        data = file.read_bytes()
        if file.name == "manifest.json":
            manifest = json.loads(data)
            manifest["model_version"] = version
            if threshold is not None:
                manifest["threshold"] = threshold
            data = json.dumps(manifest, indent=2).encode()
        partial = target / f".{file.name}.partial"
        partial.write_bytes(data)
        os.replace(partial, target / file.name)


@pytest.fixture
def broker() -> Any:
    from local_platform.localbroker import Mosquitto

    running = Mosquitto.create(log_subscriptions=True)
    yield running
    running.close()


def test_the_predictor_swaps_the_model_and_keeps_its_feature_state(
    tmp_path: Path, broker: Any, catalog: MetricCatalog, compiled: Path
) -> None:
    import paho.mqtt.client as mqtt
    from failure_predictor.config import AlertThresholds, PredictorConfig
    from failure_predictor.model_loader import ModelHandle
    from failure_predictor.predictor import FailurePredictor
    from paho.mqtt.enums import CallbackAPIVersion

    plan = Plan(work_dir=tmp_path, factories=1, machines_per_factory=2, hours=3, history_hours=0)
    plan.write()
    live = FleetSimulator(
        FleetConfig(factories=1, machines_per_factory=2, hours=3, interval_ms=10_000, seed=5),
        catalog,
    )
    machines = {
        m.machine_id: {"model": m.model, "installedOn": m.installed_on} for m in live.machines
    }
    (tmp_path / "machines.json").write_text(json.dumps(machines))
    target = model_dir(plan, "F01") / "failure_model"
    _install(compiled, target, "v1")

    import numpy as np

    sent = [m for chunk in live.chunks() for m in messages(chunk, 0.0, np.random.default_rng(0))]
    half = len(sent) // 2

    received: list[dict[str, Any]] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        with lock:
            received.append(json.loads(message.payload))

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe("factory/F01/predictions", qos=0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert subscribed.wait(10)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "local_platform.connected.gateway", "failure-predictor",
            "--plan", str(tmp_path / "plan.json"), "--factory", "F01",
            "--broker", broker.url, "--cloud", broker.url,
            "--machines", str(tmp_path / "machines.json"),
        ],
        stdout=(tmp_path / "predictor.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not broker.subscribed("failure-predictor-F01", "factory/F01/readings"):
            assert process.poll() is None, (tmp_path / "predictor.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the predictor did not subscribe"
            time.sleep(0.1)
        # The reference: the same configuration, the model all along, fed in-process.
        config = PredictorConfig.from_mapping(
            component_configuration("failure-predictor", plan, "F01", machines)
        )
        expected: list[tuple[str, int, float]] = []
        reference = FailurePredictor(
            config,
            ModelHandle(target),
            lambda topic, payload: expected.append(_prediction(topic, payload)),
            catalog,
        )
        for message in sent[:half]:
            reference.on_payload(message.payload)
        first_half = len(expected)
        for message in sent[half:]:
            reference.on_payload(message.payload)
        wanted_v1 = len([e for e in expected[:first_half] if e[0]])
        # v2's threshold: one that some of the second half's probabilities reach and others not
        later = sorted(e[2] for e in expected[first_half:] if e[0])
        v1_threshold = json.loads((target / "manifest.json").read_text())["threshold"]
        v2_threshold = round(min(max(later[len(later) * 3 // 4], 0.01), 0.9), 3)
        assert v2_threshold != v1_threshold
        writer = MqttWriter(broker.url, "sensors-F01")
        for part, version in ((sent[:half], "v1"), (sent[half:], "v2")):
            for message in part:
                writer.publish(message.topic, message.payload)
            writer.flush()
            wanted = wanted_v1 if version == "v1" else len([e for e in expected if e[0]])
            _wait(lambda n=wanted: _count(received, lock) >= n, 60, "predictions")
            if version == "v1":
                # a new component version arrives, with its own threshold
                _install(compiled, target, "v2", threshold=v2_threshold)
                _wait(lambda: "\"previous\": \"v1\"" in (tmp_path / "predictor.log").read_text(),
                      30, "the swap")  # fmt: skip
        with lock:
            got = list(received)
    finally:
        process.terminate()
        process.wait(20)
        client.loop_stop()
        client.disconnect()
    expected = [e for e in expected if e[0]]
    assert len(got) == len(expected) > 20
    by_version = [p["model_version"] for p in got]
    first_v2 = by_version.index("v2")
    assert set(by_version[:first_v2]) == {"v1"}
    assert set(by_version[first_v2:]) == {"v2"}
    assert 0 < first_v2 < len(got)
    # the same readings triggered the same predictions, with the same probabilities
    assert sorted((p["machine_id"], p["timestamp"], p["probability"]) for p in got) == sorted(
        (machine, ts, round(p, 6)) for machine, ts, p in ((e[0], e[1], e[2]) for e in expected)
    )
    # alerts at each version's own threshold, with its hysteresis, across the swap
    limits = {v: AlertThresholds.around(t) for v, t in (("v1", v1_threshold), ("v2", v2_threshold))}
    alert: dict[str, bool] = {}
    flagged_v2 = 0
    for p in sorted(got, key=lambda p: (p["machine_id"], p["timestamp"])):
        at = limits[p["model_version"]]
        was = alert.get(p["machine_id"], False)
        now = p["probability"] >= at.clear if was else p["probability"] >= at.alert
        alert[p["machine_id"]] = now
        assert p["alert"] == now, p
        flagged_v2 += now and p["model_version"] == "v2"
    assert flagged_v2 > 0


def _prediction(topic: str, payload: bytes) -> tuple[str, int, float]:
    if not topic.endswith("/predictions"):
        return ("", 0, 0.0)
    document = json.loads(payload)
    return (document["machine_id"], document["timestamp"], document["probability"])


def _count(received: list[Any], lock: threading.Lock) -> int:
    with lock:
        return len(received)


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.1)
