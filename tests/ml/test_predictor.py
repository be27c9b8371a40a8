"""The FailurePredictor component's logic, without Greengrass: features, alerts, requests, swap."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from failure_predictor.config import AlertThresholds, ConfigError, PredictorConfig
from failure_predictor.main import build
from failure_predictor.messages import ShutdownConfirmation
from failure_predictor.model_loader import ModelHandle
from failure_predictor.predictor import FailurePredictor

from edge_runtime.features import MachineInfo, batch_machine_features
from edge_runtime.model_runtime import Manifest
from edge_runtime.transport import MemoryTransport
from iiot import topics
from iiot.anomaly import decode_anomaly
from iiot.catalog import MetricCatalog
from iiot.contract import Reading
from iiot.wire import encode_json
from ml_pipeline.dataset import read_history, read_streams

FACTORY = "F01"


class ScriptedModel:
    """A model whose probabilities the test chooses, with a real manifest."""

    backend = "scripted"

    def __init__(self, manifest: Manifest, probabilities: list[float]) -> None:
        self.manifest = manifest
        self.probabilities = list(probabilities)
        self.seen: list[np.ndarray] = []

    def predict_one(self, features: np.ndarray) -> float:
        self.seen.append(features.copy())
        return self.probabilities.pop(0) if self.probabilities else 0.0

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.array([self.predict_one(row) for row in np.atleast_2d(features)])


def config(compiled_dir: Path, **overrides: Any) -> PredictorConfig:
    raw = {
        "factoryId": FACTORY,
        "modelDir": str(compiled_dir),
        "predictEveryReadings": 5,
        "predictEverySeconds": 3600,
    }
    raw.update(overrides)
    return PredictorConfig.from_mapping(raw)


def scripted(
    compiled_dir: Path,
    catalog: MetricCatalog,
    probabilities: list[float],
    *,
    model_threshold: float = 0.8,
    **overrides: Any,
) -> tuple[FailurePredictor, ScriptedModel, list[tuple[str, bytes]]]:
    """A predictor on a scripted model whose manifest carries `model_threshold`."""
    manifest = dataclasses.replace(Manifest.read(compiled_dir), threshold=model_threshold)
    model = ScriptedModel(manifest, probabilities)
    handle = ModelHandle(compiled_dir, loader=lambda _d: model)
    published: list[tuple[str, bytes]] = []
    predictor = FailurePredictor(
        config(compiled_dir, **overrides),
        handle,
        lambda t, p: published.append((t, p)),
        catalog,
        clock=lambda: 1_800_000_000.0,
    )
    return predictor, model, published


def feed(predictor: FailurePredictor, n: int, machine: str = "F01-M001") -> None:
    for i in range(n):
        predictor.on_reading(1_767_000_000_000 + i * 10_000, machine, "temperature", 60.0 + i)


def on(published: list[tuple[str, bytes]], topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in published if t == topic]


def test_predicts_every_k_readings_with_the_shared_features(
    compiled_dir: Path, catalog: MetricCatalog, run_dir: Path
) -> None:
    predictor, model, published = scripted(compiled_dir, catalog, [])
    history = read_history(run_dir)
    stream = next(read_streams(run_dir, history, catalog))
    machine = stream.machine.machine_id
    n = 200
    for t, m, v in zip(
        stream.timestamp[:n].tolist(), stream.metric[:n], stream.value[:n].tolist(), strict=True
    ):
        predictor.on_reading(t, machine, str(m), v)
    predictions = on(published, f"factory/{FACTORY}/predictions")
    assert len(predictions) == n // 5
    # the gateway's config knows nothing of the machine here: no model/age metadata
    # what the model saw is the batch definition of the same stream at the same readings
    spec = model.manifest.feature_spec
    rows = np.arange(4, n, 5)
    batch = batch_machine_features(
        spec,
        stream.timestamp[:n],
        stream.metric[:n],
        stream.value[:n],
        MachineInfo(machine),
        rows=rows,
    )
    np.testing.assert_allclose(np.array(model.seen), batch, rtol=1e-6, atol=1e-6)


def test_alert_raises_at_threshold_and_clears_only_below_the_hysteresis(
    compiled_dir: Path, catalog: MetricCatalog
) -> None:
    probabilities = [0.5, 0.85, 0.7, 0.65, 0.9, 0.59, 0.2]
    predictor, _, published = scripted(compiled_dir, catalog, probabilities)
    feed(predictor, 5 * len(probabilities))
    alerts = [decode_anomaly(p) for t, p in published if t == topics.LOCAL_ALERTS]
    assert [a.state for a in alerts] == ["RAISED", "CLEARED"]
    assert alerts[0].anomaly_type == "FAILURE_PREDICTED"
    assert alerts[0].source == "model"
    assert alerts[0].value == pytest.approx(0.85)
    # the same anomaly goes to the cloud topic
    assert len([1 for t, _ in published if t == topics.ANOMALIES]) == 2
    flags = [p["alert"] for p in on(published, f"factory/{FACTORY}/predictions")]
    assert flags == [False, True, True, True, True, False, False]


def test_alerts_at_the_models_own_threshold(compiled_dir: Path, catalog: MetricCatalog) -> None:
    """The recipe sets no threshold: the model's (its training's cross-validated choice)
    raises, three quarters of it clears, max(0.95, it) is CRITICAL."""
    probabilities = [0.5, 0.6, 0.45, 0.41, 0.96, 0.2]
    predictor, _, published = scripted(compiled_dir, catalog, probabilities, model_threshold=0.55)
    feed(predictor, 5 * len(probabilities))
    assert predictor.thresholds == AlertThresholds(0.55, 0.413, 0.95)
    alerts = [decode_anomaly(p) for t, p in published if t == topics.LOCAL_ALERTS]
    # at the old fixed 0.8 only 0.96 would have raised
    assert [(a.state, a.value, a.threshold) for a in alerts] == [
        ("RAISED", 0.6, 0.55),
        ("CLEARED", 0.41, 0.413),
        ("RAISED", 0.96, 0.55),
        ("CLEARED", 0.2, 0.413),
    ]
    assert [a.severity for a in alerts if a.state == "RAISED"] == ["WARNING", "CRITICAL"]


def test_an_explicit_threshold_overrides_the_models(
    compiled_dir: Path, catalog: MetricCatalog
) -> None:
    predictor, _, published = scripted(
        compiled_dir, catalog, [0.6, 0.85, 0.64, 0.59], model_threshold=0.55, alertThreshold=0.8
    )
    feed(predictor, 20)
    assert predictor.thresholds == AlertThresholds(0.8, 0.6, 0.95)  # derived from the override
    alerts = [decode_anomaly(p) for t, p in published if t == topics.LOCAL_ALERTS]
    assert [(a.state, a.value) for a in alerts] == [("RAISED", 0.85), ("CLEARED", 0.59)]
    # every key pinned: the model's threshold plays no part
    pinned = config(compiled_dir, alertThreshold=0.7, clearThreshold=0.3, shutdownThreshold=0.9)
    assert pinned.thresholds(0.2) == (AlertThresholds(0.7, 0.3, 0.9), [])
    # an explicit clear threshold above a model's alert threshold is corrected and reported
    limits, corrected = config(compiled_dir, clearThreshold=0.6).thresholds(0.5)
    assert limits == AlertThresholds(0.5, 0.375, 0.95)
    assert "clearThreshold 0.6" in corrected[0]


def test_a_new_model_version_brings_its_own_threshold(
    compiled_dir: Path, catalog: MetricCatalog, tmp_path: Path
) -> None:
    deployed = tmp_path / "failure_model"
    shutil.copytree(compiled_dir, deployed)
    probabilities = [0.5, 0.5, 0.5, 0.3, 0.2]
    models: list[ScriptedModel] = []

    def load(directory: Path) -> ScriptedModel:  # the real manifest, scripted probabilities
        models.append(ScriptedModel(Manifest.read(directory), []))
        models[-1].probabilities = probabilities
        return models[-1]

    def install(version: str, threshold: float) -> None:
        manifest = json.loads((deployed / "manifest.json").read_text())
        manifest.update(model_version=version, threshold=threshold)
        (deployed / "manifest.json").write_text(json.dumps(manifest))

    install("t-1", 0.8)
    published: list[tuple[str, bytes]] = []
    predictor = FailurePredictor(
        config(deployed),
        ModelHandle(deployed, loader=load),  # type: ignore[arg-type]
        lambda t, p: published.append((t, p)),
        catalog,
    )
    feed(predictor, 5)  # p 0.5 under model t-1's 0.8: no alert
    assert predictor.thresholds == AlertThresholds(0.8, 0.6, 0.95)
    install("t-2", 0.45)
    assert predictor.refresh_model()
    assert predictor.thresholds == AlertThresholds(0.45, 0.338, 0.95)
    for i in range(5, 25):  # on from the same feature state
        predictor.on_reading(1_767_000_000_000 + i * 10_000, "F01-M001", "temperature", 60.0 + i)
    alerts = [decode_anomaly(p) for t, p in published if t == topics.LOCAL_ALERTS]
    assert [(a.state, a.value, a.threshold) for a in alerts] == [
        ("RAISED", 0.5, 0.45),
        ("CLEARED", 0.3, 0.338),
    ]


def test_no_shutdown_request_unless_enabled(compiled_dir: Path, catalog: MetricCatalog) -> None:
    predictor, _, published = scripted(compiled_dir, catalog, [0.99, 0.99])
    feed(predictor, 10)
    assert not on(published, f"factory/{FACTORY}/shutdown/requests")


def test_shutdown_is_a_request_that_only_an_operator_confirms(
    compiled_dir: Path, catalog: MetricCatalog
) -> None:
    predictor, _, published = scripted(
        compiled_dir, catalog, [0.97, 0.98, 0.99], shutdownRequestsEnabled=True
    )
    feed(predictor, 15)
    requests = on(published, f"factory/{FACTORY}/shutdown/requests")
    assert len(requests) == 1  # one open request per machine, not one per prediction
    request = requests[0]
    assert request["confirm_topic"] == f"factory/{FACTORY}/shutdown/confirmations"
    assert not on(published, f"factory/{FACTORY}/shutdown/decisions")
    predictor.on_confirmation(
        msgspec.json.encode(ShutdownConfirmation(request_id="other", operator="x", approved=True))
    )
    assert not on(published, f"factory/{FACTORY}/shutdown/decisions")
    predictor.on_confirmation(
        msgspec.json.encode(
            ShutdownConfirmation(request_id=request["request_id"], operator="ana", approved=True)
        )
    )
    decisions = on(published, f"factory/{FACTORY}/shutdown/decisions")
    assert decisions[0]["status"] == "CONFIRMED"
    assert decisions[0]["operator"] == "ana"


def test_model_update_swaps_in_place_and_keeps_feature_state(
    compiled_dir: Path, catalog: MetricCatalog, tmp_path: Path
) -> None:
    deployed = tmp_path / "failure_model"
    shutil.copytree(compiled_dir, deployed)
    published: list[tuple[str, bytes]] = []
    predictor = FailurePredictor(
        config(deployed), ModelHandle(deployed), lambda t, p: published.append((t, p)), catalog
    )
    assert predictor.model.model is not None
    assert predictor.model.model.backend == "compiled"
    feed(predictor, 12)
    state = predictor.machines["F01-M001"].state
    readings_before = state.readings
    # a new FailureModel version lands: new manifest (new version), same features
    manifest = json.loads((deployed / "manifest.json").read_text())
    manifest["model_version"] = "test-2"
    (deployed / "manifest.json").write_text(json.dumps(manifest))
    assert predictor.refresh_model()
    assert predictor.model.model.manifest.model_version == "test-2"
    assert predictor.machines["F01-M001"].state is state
    assert state.readings == readings_before
    feed(predictor, 5)
    versions = {p["model_version"] for p in on(published, f"factory/{FACTORY}/predictions")}
    assert versions == {"test-1", "test-2"}
    # a broken update is rejected and the current model keeps serving
    (deployed / "failure_model-x86_64.so").write_bytes(b"broken")
    manifest["model_version"] = "test-3"
    (deployed / "manifest.json").write_text(json.dumps(manifest))
    assert not predictor.refresh_model()
    assert predictor.model.model.manifest.model_version == "test-2"


def test_payloads_are_validated_and_wired_through_a_transport(
    compiled_dir: Path, catalog: MetricCatalog
) -> None:
    transport = MemoryTransport()
    predictor = build(config(compiled_dir), transport)
    assert f"factory/{FACTORY}/readings" in transport.topics
    good = [
        Reading(
            1_767_000_000_000 + i * 1000, FACTORY, "F01-M002", "F01-M002-rpm", "rpm", 1400.0, "rpm"
        )
        for i in range(10)
    ]
    transport.deliver(f"factory/{FACTORY}/readings", encode_json(good))
    transport.deliver(f"factory/{FACTORY}/readings", b'{"garbage": true}')
    assert predictor.counters.readings == 10
    assert predictor.counters.rejected == 1
    assert len([1 for t, _ in transport.published if t.endswith("/predictions")]) == 2


def test_predicted_failures_go_to_the_configured_cloud_topic(compiled_dir: Path) -> None:
    """Each environment's deployment sets its own IoT Core topic (iiot/<env>/...); the
    component's default stays the local demo's."""
    for overrides, expected in (
        ({}, topics.ANOMALIES),
        ({"anomaliesTopic": "iiot/dev/factory/anomalies"}, "iiot/dev/factory/anomalies"),
    ):
        transport = MemoryTransport()
        predictor = build(config(compiled_dir, **overrides), transport)
        predictor.publish(topics.ANOMALIES, b"anomaly")
        assert transport.cloud == [(expected, b"anomaly")]
    with pytest.raises(ConfigError, match="anomaliesTopic"):
        config(compiled_dir, anomaliesTopic="iiot/+/anomalies")


def test_each_message_is_acknowledged_once_handled_even_when_it_is_refused(
    compiled_dir: Path,
) -> None:
    transport = MemoryTransport()
    build(config(compiled_dir), transport)
    acks: list[str] = []
    transport.deliver(f"factory/{FACTORY}/readings", b"not json", lambda: acks.append("reading"))
    transport.deliver(
        f"factory/{FACTORY}/shutdown/confirmations", b"{", lambda: acks.append("confirmation")
    )
    assert acks == ["reading", "confirmation"]


def test_the_component_polls_for_models_until_stopped_and_refuses_bad_updates(
    compiled_dir: Path,
) -> None:
    import threading

    from failure_predictor.main import PredictorComponent, validation_problem

    transport = MemoryTransport()
    component = PredictorComponent(config(compiled_dir, modelPollSeconds=0.1), transport)
    component.start()
    assert component.predictor is not None
    assert f"factory/{FACTORY}/readings" in transport.topics
    assert "failure-model-poll" in {thread.name for thread in threading.enumerate()}
    component.stop()
    assert "failure-model-poll" not in {thread.name for thread in threading.enumerate()}
    # What the configuration watch reports to a deployment (None: accepted).
    good = {"factoryId": FACTORY, "modelDir": str(compiled_dir)}
    assert validation_problem(good) is None
    assert validation_problem({**good, "alertThreshold": 0.5}) is None  # clear derives from it
    assert "clearThreshold" in (
        validation_problem({**good, "alertThreshold": 0.5, "clearThreshold": 0.6}) or ""
    )


def test_configuration_is_validated_with_reasons() -> None:
    with pytest.raises(ConfigError) as error:
        PredictorConfig.from_mapping(
            {"factoryId": "", "alertThreshold": 0.5, "clearThreshold": 0.7, "modelDir": "m"}
        )
    message = str(error.value)
    assert "factoryId is required" in message
    assert "clearThreshold" in message
    parsed = PredictorConfig.from_mapping(
        {
            "factoryId": "F01",
            "modelDir": "m",
            "shutdownRequestsEnabled": "true",
            "machines": {"F01-M001": {"model": "CP-400", "installedOn": "2020-01-01"}},
        }
    )
    assert parsed.shutdown_requests_enabled
    assert parsed.machines["F01-M001"].model == "CP-400"


def test_only_main_reaches_greengrass_through_the_runtimes_ipc_module() -> None:
    source = Path(__file__).parents[2] / "edge_components/com.iiot.FailurePredictor/src"
    # Greengrass is reached through awsiot directly or through the runtime's IPC module.
    importers = sorted(
        p.name
        for p in source.rglob("*.py")
        if {"awsiot", "edge_runtime.ipc"}
        & set(re.findall(r"[\w.]+", p.read_text().replace("`awsiot`", "")))
    )
    assert importers == ["main.py"]


def test_recipe_grants_exactly_the_topics_the_component_uses() -> None:
    import yaml
    from failure_predictor import messages

    root = Path(__file__).parents[2] / "edge_components"
    recipe = yaml.safe_load((root / "com.iiot.FailurePredictor/recipe.yaml").read_text())
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    access = defaults["accessControl"]
    local = next(iter(access["aws.greengrass.ipc.pubsub"].values()))["resources"]
    cloud = next(iter(access["aws.greengrass.ipc.mqttproxy"].values()))["resources"]
    factory = "{iot:thingName}"
    used = {
        topics.readings_topic(factory),
        topics.LOCAL_ALERTS,
        *(
            messages.topic(t, factory)
            for t in (
                messages.PREDICTIONS,
                messages.MAINTENANCE,
                messages.SHUTDOWN_REQUESTS,
                messages.SHUTDOWN_CONFIRMATIONS,
                messages.SHUTDOWN_DECISIONS,
            )
        ),
    }
    assert set(local) == used
    assert cloud == [topics.ANOMALIES]
    # shutdown requests stay off unless a deployment enables them
    assert defaults["shutdownRequestsEnabled"] is False
    parsed = PredictorConfig.from_mapping({**defaults, "factoryId": "F01"})
    # no threshold that would override the model's own
    assert (parsed.alert_threshold, parsed.clear_threshold, parsed.shutdown_threshold) == (
        None,
        None,
        None,
    )
    assert parsed.thresholds(0.37)[0] == AlertThresholds.around(0.37)
    model_recipe = yaml.safe_load((root / "com.iiot.FailureModel/recipe.yaml").read_text())
    assert model_recipe["ComponentName"] == "com.iiot.FailureModel"
    assert "com.iiot.FailureModel" in recipe["ComponentDependencies"]


def test_runs_against_a_real_mqtt_broker(broker, compiled_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """main.build with the MQTT 5 transport: readings in, predictions out, on mosquitto."""
    import threading

    import paho.mqtt.client as mqtt

    from edge_runtime.mqtt import MqttTransport

    received: list[bytes] = []
    got_enough = threading.Event()
    subscribed = threading.Event()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(_client, _userdata, message):  # type: ignore[no-untyped-def]
        received.append(bytes(message.payload))
        if len(received) >= 2:
            got_enough.set()

    listener.on_message = on_message
    listener.on_subscribe = lambda *_args: subscribed.set()
    listener.connect("127.0.0.1", broker.port)
    listener.subscribe(f"factory/{FACTORY}/predictions", qos=1)
    listener.loop_start()
    transport = MqttTransport(broker.url, None, "predictor-test", persistent_session=False)
    try:
        assert subscribed.wait(10)
        predictor = build(config(compiled_dir), transport)
        readings = [
            Reading(
                1_767_000_000_000 + i * 1000,
                FACTORY,
                "F01-M003",
                "F01-M003-vibration",
                "vibration",
                3.0 + i / 100,
                "mm/s",
            )
            for i in range(10)
        ]
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        # the predictor subscribes asynchronously: publish until its first readings arrive
        for _ in range(50):
            publisher.publish(f"factory/{FACTORY}/readings", encode_json(readings), qos=1)
            if got_enough.wait(0.2):
                break
        publisher.loop_stop()
        publisher.disconnect()
        assert got_enough.is_set()
        prediction = json.loads(received[0])
        assert prediction["machine_id"] == "F01-M003"
        assert prediction["backend"] == "compiled"
        assert predictor.counters.predictions >= 2
    finally:
        transport.stop()
        listener.loop_stop()
        listener.disconnect()
