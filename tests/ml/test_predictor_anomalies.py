"""The multivariate anomaly detector inside the FailurePredictor: per-machine state, the shared
anomaly message with its score and contributors, model swaps, and old consumers unharmed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from failure_predictor.config import ConfigError, PredictorConfig
from failure_predictor.main import build
from failure_predictor.model_loader import AnomalyModelHandle, ModelHandle
from failure_predictor.predictor import FailurePredictor

from edge_runtime.anomaly_detector import AnomalyModelSet, MachineModel
from edge_runtime.transport import MemoryTransport
from iiot import topics
from iiot.anomaly import Anomaly, decode_anomaly, encode_anomaly
from iiot.catalog import MetricCatalog
from iiot.contract import Reading
from iiot.wire import encode_json

FACTORY = "F01"
T0 = 1_767_000_000_000
NORMAL = {"pressure": 120.0, "flow_rate": 600.0, "vibration": 3.0}
LEAK = {"pressure": 120.0, "flow_rate": 540.0, "vibration": 3.0}  # flow off, pressure holds


def model(threshold: float = 4.0) -> MachineModel:
    return MachineModel(
        sensors=("pressure", "flow_rate", "vibration"),
        center=np.array([120.0, 600.0, 3.0]),
        scale=np.array([2.0, 10.0, 0.2]),
        components=np.array([[0.7071], [0.7071], [0.0]]),
        eigenvalues=np.array([1.8]),
        t2_limit=4.0,
        q_limit=0.5,
        threshold=threshold,
    )


def deploy(directory: Path, version: str = "a1", **machines: MachineModel) -> Path:
    AnomalyModelSet(
        model_version=version,
        ewma_span=1,
        smoothing_readings=1,
        machines=machines or {"F01-M001": model()},
    ).save(directory)
    return directory


def predictor_with(
    tmp_path: Path, catalog: MetricCatalog, **overrides: Any
) -> tuple[FailurePredictor, list[tuple[str, bytes]]]:
    """No failure model is deployed (an empty model folder): anomalies work on their own."""
    (tmp_path / "no_failure_model").mkdir(exist_ok=True)
    raw = {
        "factoryId": FACTORY,
        "modelDir": str(tmp_path / "no_failure_model"),
        "anomalyModelDir": str(tmp_path / "anomaly_model"),
        "anomalyRaiseAfterReadings": 2,
        "anomalyClearAfterReadings": 2,
        **overrides,
    }
    config = PredictorConfig.from_mapping(raw)
    published: list[tuple[str, bytes]] = []
    predictor = FailurePredictor(
        config,
        ModelHandle(Path(config.model_dir)),
        lambda t, p: published.append((t, p)),
        catalog,
        anomaly_models=AnomalyModelHandle(Path(config.anomaly_model_dir)),
        clock=lambda: 1_800_000_000.0,
    )
    return predictor, published


def play(predictor: FailurePredictor, rows: list[dict[str, float]], start: int = 0) -> None:
    for i, row in enumerate(rows, start):
        for metric, value in row.items():
            predictor.on_reading(T0 + i * 10_000, "F01-M001", metric, value)


def alerts(published: list[tuple[str, bytes]]) -> list[Anomaly]:
    return [decode_anomaly(p) for t, p in published if t == topics.LOCAL_ALERTS]


def test_a_leak_raises_one_anomaly_naming_flow_and_clears_once(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    deploy(tmp_path / "anomaly_model")
    predictor, published = predictor_with(tmp_path, catalog)
    play(predictor, [NORMAL] * 3 + [LEAK] * 4 + [NORMAL] * 3)
    raised, cleared = alerts(published)
    assert raised.state == "RAISED"
    assert raised.anomaly_type == "MULTIVARIATE_ANOMALY"
    assert raised.metric == "anomaly_score"
    assert raised.source == "model"
    assert raised.timestamp == T0 + 4 * 10_000  # the second leaking row (raise after 2)
    assert raised.score == pytest.approx(raised.value / raised.threshold, rel=1e-3)
    assert raised.score > 1
    assert raised.contributors[0].metric == "flow_rate"
    assert raised.contributors[0].share > 0.5
    assert "flow_rate" in raised.message
    assert "check the flow_rate sensor first" in raised.message  # it carries almost all
    assert cleared.state == "CLEARED"
    assert cleared.timestamp == T0 + 8 * 10_000
    # the same messages go to the cloud topic; no failure model, so no predictions
    assert [p for t, p in published if t == topics.ANOMALIES] == [
        p for t, p in published if t == topics.LOCAL_ALERTS
    ]
    assert predictor.counters.anomalies_raised == 1
    assert predictor.counters.anomalies_cleared == 1
    assert predictor.counters.predictions == 0


def test_consumers_that_predate_score_and_contributors_still_read_the_message(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    deploy(tmp_path / "anomaly_model")
    predictor, published = predictor_with(tmp_path, catalog)
    play(predictor, [NORMAL] * 2 + [LEAK] * 3)
    payload = next(p for t, p in published if t == topics.LOCAL_ALERTS)

    class OldAnomaly(msgspec.Struct, frozen=True, kw_only=True):  # the message before
        factory_id: str
        machine_id: str
        metric: str
        anomaly_type: str
        severity: str
        value: float
        threshold: float | None
        timestamp: int
        source: str
        sensor_id: str | None = None
        state: str = "RAISED"
        message: str = ""

    old = msgspec.json.decode(payload, type=OldAnomaly)
    assert old.anomaly_type == "MULTIVARIATE_ANOMALY"
    # an old producer's message decodes with the new fields at their defaults
    old_payload = msgspec.json.encode(old)
    assert b"contributors" not in old_payload
    new = decode_anomaly(old_payload)
    assert new.score is None
    assert new.contributors == ()
    assert new.anomaly_id == decode_anomaly(payload).anomaly_id
    bad = json.loads(payload)
    bad["contributors"][0]["share"] = 1.5
    with pytest.raises(msgspec.ValidationError, match="share"):
        decode_anomaly(json.dumps(bad).encode())
    assert decode_anomaly(encode_anomaly(new)) == new


def test_a_new_anomaly_model_is_swapped_in_by_the_readings_thread(
    tmp_path: Path, catalog: MetricCatalog
) -> None:
    deployed = deploy(tmp_path / "anomaly_model")
    predictor, published = predictor_with(tmp_path, catalog)
    play(predictor, [NORMAL] * 2 + [LEAK] * 3)
    assert [a.state for a in alerts(published)] == ["RAISED"]
    detector = predictor.anomalies
    assert detector is not None
    # a broken file is refused, the current models keep serving
    (deployed / "anomaly_model.json").write_text('{"format": "pca-t2q/1", "machines": 3}')
    assert not predictor.refresh_anomaly_model()
    assert predictor.anomaly_models is not None
    assert predictor.anomaly_models.models is not None
    assert predictor.anomaly_models.models.model_version == "a1"
    # a new version with a wider threshold for the machine: its alert is closed, it starts afresh
    deploy(deployed, "a2", **{"F01-M001": model(threshold=1e6)})
    assert predictor.refresh_anomaly_model()
    assert [a.state for a in alerts(published)] == ["RAISED"]  # nothing until the next reading
    play(predictor, [LEAK] * 3, start=5)
    closing = alerts(published)[1]
    assert closing.state == "CLEARED"
    assert "a2" in closing.message
    assert len(alerts(published)) == 2  # the wider threshold raises nothing
    assert predictor.counters.anomaly_model_swaps == 1


def test_configuration_and_wiring(tmp_path: Path, catalog: MetricCatalog) -> None:
    deploy(tmp_path / "anomaly_model")
    (tmp_path / "no_failure_model").mkdir()
    raw = {
        "factoryId": FACTORY,
        "modelDir": str(tmp_path / "no_failure_model"),
        "anomalyModelDir": str(tmp_path / "anomaly_model"),
        "anomalyRaiseAfterReadings": 1,
        "anomaliesTopic": "iiot/dev/factory/anomalies",
    }
    transport = MemoryTransport()
    predictor = build(PredictorConfig.from_mapping(raw), transport)
    readings = []
    for i, row in enumerate([NORMAL, LEAK]):
        for metric, value in row.items():
            unit = catalog[metric].unit
            readings.append(
                Reading(
                    T0 + i * 1000, FACTORY, "F01-M001", f"F01-M001-{metric}", metric, value, unit
                )
            )
    transport.deliver(f"factory/{FACTORY}/readings", encode_json(readings))
    assert predictor.counters.anomalies_raised == 1
    ((cloud_topic, payload),) = transport.cloud
    assert cloud_topic == "iiot/dev/factory/anomalies"
    assert decode_anomaly(payload).anomaly_type == "MULTIVARIATE_ANOMALY"
    # no anomaly model configured: nothing is detected, nothing breaks
    quiet = build(PredictorConfig.from_mapping({**raw, "anomalyModelDir": ""}), MemoryTransport())
    assert quiet.anomaly_models is None
    with pytest.raises(ConfigError, match="anomalyRaiseAfterReadings"):
        PredictorConfig.from_mapping({**raw, "anomalyRaiseAfterReadings": 0})
    with pytest.raises(ConfigError, match="anomalyModelDir"):
        PredictorConfig.from_mapping({**raw, "anomalyModelDir": 5})


def test_the_raise_and_clear_defaults_are_the_recipes() -> None:
    """A configuration without the keys gets what the recipe deploys: one constant each."""
    import yaml
    from failure_predictor.config import (
        ANOMALY_CLEAR_AFTER_READINGS,
        ANOMALY_RAISE_AFTER_READINGS,
    )

    recipe = Path(__file__).resolve().parents[2] / (
        "edge_components/com.iiot.FailurePredictor/recipe.yaml"
    )
    default = yaml.safe_load(recipe.read_text())["ComponentConfiguration"]["DefaultConfiguration"]
    assert default["anomalyRaiseAfterReadings"] == ANOMALY_RAISE_AFTER_READINGS == 18
    assert default["anomalyClearAfterReadings"] == ANOMALY_CLEAR_AFTER_READINGS
    bare = PredictorConfig.from_mapping({"factoryId": FACTORY, "modelDir": "/nowhere"})
    assert bare.anomaly_raise_after_readings == ANOMALY_RAISE_AFTER_READINGS
    assert bare.anomaly_clear_after_readings == ANOMALY_CLEAR_AFTER_READINGS
    assert PredictorConfig(FACTORY, "/nowhere").anomaly_raise_after_readings == 18
