"""The gateway's anomaly detector: rows assembled from single readings, alarms, contributors,
and the model file refused with a reason when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.anomaly_detector import (
    MODEL_FILE,
    AnomalyDetector,
    AnomalyModelError,
    AnomalyModelSet,
    MachineDetector,
    MachineModel,
    ewma,
    moving_mean,
    smoothed_scores,
)

SENSORS = ("pressure", "flow_rate", "vibration")


def hand_model(threshold: float = 3.0) -> MachineModel:
    """Normal operation: pressure and flow move together (one component), vibration is noise."""
    return MachineModel(
        sensors=SENSORS,
        center=np.array([10.0, 100.0, 2.0]),
        scale=np.array([1.0, 10.0, 0.5]),
        components=np.array([[0.7071], [0.7071], [0.0]]),
        eigenvalues=np.array([1.8]),
        t2_limit=4.0,
        q_limit=0.5,
        threshold=threshold,
    )


def model_set(**machines: MachineModel) -> AnomalyModelSet:
    return AnomalyModelSet(model_version="v1", ewma_span=1, smoothing_readings=1, machines=machines)


def feed(detector: AnomalyDetector, machine: str, t: int, row: dict[str, float]) -> list:
    events = []
    for metric, value in row.items():
        event = detector.update(t, machine, metric, value)
        if event is not None:
            events.append(event)
    return events


NORMAL = {"pressure": 10.0, "flow_rate": 100.0, "vibration": 2.0}
BROKEN = {"pressure": 10.0, "flow_rate": 100.0, "vibration": 6.0}  # vibration 8 sd off


def test_a_row_is_scored_once_every_sensor_reported_and_raises_with_contributors():
    detector = AnomalyDetector(model_set(M1=hand_model()))
    assert feed(detector, "M1", 1_000, NORMAL) == []
    state = detector.machines["M1"]
    assert state.rows == 1
    assert state.score == pytest.approx(0.0)
    # the broken row arrives out of metric order; it is scored on its last reading
    events = feed(detector, "M1", 2_000, dict(reversed(list(BROKEN.items()))))
    assert [e.state for e in events] == ["RAISED"]
    raised = events[0]
    assert raised.machine_id == "M1"
    assert raised.timestamp == 2_000
    assert raised.score > raised.threshold == 3.0
    assert raised.relative_score > 1
    assert raised.contributors[0][0] == "vibration"
    assert raised.contributors[0][1] > 0.9
    (cleared,) = feed(detector, "M1", 3_000, NORMAL)
    assert cleared.state == "CLEARED"
    assert cleared.contributors == ()


def test_missing_sensor_keeps_its_last_value_and_late_or_foreign_readings_are_ignored():
    detector = AnomalyDetector(model_set(M1=hand_model()))
    feed(detector, "M1", 1_000, NORMAL)
    # 2_000 lacks vibration: the row closes when 3_000 starts, with vibration's last value
    feed(detector, "M1", 2_000, {"pressure": 10.0, "flow_rate": 100.0})
    assert detector.machines["M1"].rows == 1
    feed(detector, "M1", 3_000, {"pressure": 10.0})
    assert detector.machines["M1"].rows == 2
    # late for a scored row, a duplicate, a metric the model does not use, another machine
    assert detector.update(1_500, "M1", "vibration", 50.0) is None
    assert detector.update(2_000, "M1", "vibration", 50.0) is None
    assert detector.update(3_000, "M1", "temperature", 500.0) is None
    assert detector.update(3_000, "M9", "pressure", 1.0) is None
    assert detector.unmodelled == {"M9"}
    feed(detector, "M1", 3_000, {"flow_rate": 100.0, "vibration": 2.0})
    assert detector.machines["M1"].rows == 3
    assert not detector.machines["M1"].alarm


def test_nothing_is_scored_before_every_sensor_reported_once():
    state = MachineDetector("M1", hand_model(), ewma_span=5, window=5)
    for t in range(1, 5):
        state.update(t * 1000, "pressure", 10.0)
        state.update(t * 1000, "flow_rate", 100.0)
    assert state.rows == 0
    state.update(5_000, "vibration", 2.0)
    state.update(6_000, "pressure", 10.0)
    assert state.rows == 1  # the row of 5_000, with the others' last values


def test_streaming_equals_the_batch_definition():
    model = hand_model(threshold=1.5)
    rng = np.random.default_rng(3)
    load = rng.normal(size=300).cumsum() * 0.05
    rows = np.column_stack(
        [
            10 + load + rng.normal(0, 0.2, 300),
            100 + 10 * load + rng.normal(0, 2, 300),
            2 + rng.normal(0, 0.3, 300),
        ]
    )
    rows[200:230, 2] += 2.0
    batch = smoothed_scores(model, rows, ewma_span=5, smoothing_readings=4)
    state = MachineDetector("M1", model, ewma_span=5, window=4)
    streamed, alarms = [], []
    for i, row in enumerate(rows.tolist()):
        for metric, value in zip(SENSORS, row, strict=True):
            state.update(i * 1000, metric, value)
        streamed.append(state.score)
        alarms.append(state.alarm)
    np.testing.assert_allclose(streamed, batch, rtol=1e-12, atol=1e-12)
    assert alarms == (batch > 1.5).tolist()
    assert any(alarms[200:235])


def test_batch_helpers():
    np.testing.assert_allclose(ewma(np.array([[0.0], [3.0], [3.0]]), 2), [[0.0], [2.0], [8 / 3]])
    np.testing.assert_allclose(moving_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])


def test_model_file_round_trip_and_refusals(tmp_path: Path):
    models = AnomalyModelSet(
        model_version="7",
        ewma_span=5,
        smoothing_readings=5,
        machines={"M1": hand_model()},
        training={"note": "hand-made"},
    )
    path = models.save(tmp_path)
    assert path.name == MODEL_FILE
    loaded = AnomalyModelSet.load(tmp_path)
    assert loaded.model_version == "7"
    assert loaded.machines["M1"].to_dict() == hand_model().to_dict()
    assert loaded.machines["M1"].parameter_count == 2 * 3 + 3 + 1 + 3

    raw = json.loads(path.read_text())
    bad = json.loads(json.dumps(raw))
    bad["machines"]["M1"]["scale"] = [1.0, 0.0, 1.0]
    with pytest.raises(
        AnomalyModelError, match="machine M1: scale and eigenvalues must be positive"
    ):
        AnomalyModelSet.from_json(json.dumps(bad))
    bad = json.loads(json.dumps(raw))
    bad["machines"]["M1"]["components"] = [[1.0], [0.0]]
    with pytest.raises(
        AnomalyModelError, match=r"components has shape \(2, 1\), expected \(3, 1\)"
    ):
        AnomalyModelSet.from_json(json.dumps(bad))
    bad = json.loads(json.dumps(raw))
    bad["machines"]["M1"]["center"] = [1.0, float("nan"), 1.0]
    with pytest.raises(AnomalyModelError, match="non-finite"):
        AnomalyModelSet.from_json(json.dumps(bad))
    with pytest.raises(AnomalyModelError, match="format 'other' is not 'pca-t2q/1'"):
        AnomalyModelSet.from_json(json.dumps({**raw, "format": "other"}))
    with pytest.raises(AnomalyModelError, match="not JSON"):
        AnomalyModelSet.from_json(path.read_text()[:50])
    with pytest.raises(AnomalyModelError, match="is the model deployed"):
        AnomalyModelSet.load(tmp_path / "missing")
    with pytest.raises(AnomalyModelError, match="ewma_span"):
        AnomalyModelSet.from_json(json.dumps({**raw, "ewma_span": 0}))


def test_a_swap_keeps_unchanged_machines_and_restarts_changed_ones():
    detector = AnomalyDetector(model_set(M1=hand_model(), M2=hand_model()))
    feed(detector, "M1", 1_000, BROKEN)
    feed(detector, "M2", 1_000, BROKEN)
    assert detector.machines["M1"].alarm
    assert detector.machines["M2"].alarm
    restarted = detector.swap(model_set(M1=hand_model(), M2=hand_model(threshold=1000.0)))
    assert restarted == ["M2"]  # its raised alarm is the caller's to clear
    assert detector.machines["M1"].alarm
    assert "M2" not in detector.machines
    feed(detector, "M2", 2_000, BROKEN)
    assert not detector.machines["M2"].alarm


def test_the_alert_waits_for_a_held_alarm_and_a_held_recovery():
    detector = AnomalyDetector(model_set(M1=hand_model()), raise_after=3, clear_after=2)
    rows = [BROKEN, NORMAL, BROKEN, BROKEN, BROKEN, BROKEN, NORMAL, BROKEN, NORMAL, NORMAL]
    states = []
    for t, row in enumerate(rows):
        for event in feed(detector, "M1", (t + 1) * 1000, row):
            states.append((t, event.state))
    # a lone broken row raises nothing; three in a row do; one good row does not clear
    assert states == [(4, "RAISED"), (9, "CLEARED")]
    state = detector.machines["M1"]
    assert not state.alarm
    assert not state.alert
    with pytest.raises(ValueError, match="at least 1 row"):
        MachineDetector("M1", hand_model(), ewma_span=1, window=1, raise_after=0)
