"""Training the anomaly detector: from normal rows only, the gateway scores what training
scored, a broken correlation is found and named, drifting sensors are screened out."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.anomaly_detector import AnomalyDetector, AnomalyModelSet, smoothed_scores
from ml_pipeline.anomaly import (
    DetectorConfig,
    fit_machine,
    screen_sensors,
    sensor_drift,
    train_models,
)

SENSORS = ("pressure", "flow_rate", "current", "vibration", "temperature")


def pump(rows: int, seed: int, *, drifting_temperature: bool = True) -> np.ndarray:
    """A pump's normal operation: load drives pressure, flow and current together; vibration
    is noise; temperature wanders slowly (a random walk), as a thermal sensor does."""
    rng = np.random.default_rng(seed)
    load = np.convolve(rng.normal(size=rows + 5), np.ones(5) / 5, mode="valid")[:rows]
    temperature = (
        60 + np.cumsum(rng.normal(0, 0.3, rows))
        if drifting_temperature
        else 60 + rng.normal(0, 0.5, rows)
    )
    return np.column_stack(
        [
            5 + 2 * load + rng.normal(0, 0.1, rows),
            30 + 8 * load + rng.normal(0, 0.4, rows),
            2 + 0.5 * load + rng.normal(0, 0.03, rows),
            0.2 + rng.normal(0, 0.01, rows),
            temperature,
        ]
    )


def test_the_gateway_scores_what_training_scored_and_finds_a_broken_correlation():
    rows = pump(2_000, seed=1)
    normal, live = rows[:1_000, :4], rows[:, :4].copy()
    live[1_700:1_760, 1] -= 8.0  # flow drops while pressure and current stay: a leak or a valve
    model, how = fit_machine(normal, SENSORS[:4])
    assert how["forward_factor"] >= 1.0
    assert model.threshold == pytest.approx(how["threshold"], rel=1e-5)
    models = AnomalyModelSet(
        model_version="t", ewma_span=5, smoothing_readings=5, machines={"P1": model}
    )
    batch = smoothed_scores(model, live, ewma_span=5, smoothing_readings=5)
    detector = AnomalyDetector(models)
    streamed, events = [], []
    for i, row in enumerate(live.tolist()):
        for metric, value in zip(SENSORS[:4], row, strict=True):
            event = detector.update(i * 1000, "P1", metric, value)
            if event is not None:
                events.append(event)
        streamed.append(detector.machines["P1"].score)
    np.testing.assert_allclose(streamed, batch, rtol=1e-10)
    alarm = batch > model.threshold
    assert alarm[1_705:1_760].mean() > 0.9
    assert alarm[1_000:1_700].mean() < 0.05
    raised = [e for e in events if e.state == "RAISED" and 1_700 <= e.timestamp // 1000 < 1_760]
    assert raised
    assert raised[0].contributors[0][0] == "flow_rate"


def test_drift_in_the_held_out_training_rows_widens_the_threshold():
    rows = pump(400, seed=2)[:, :4]
    steady, _ = fit_machine(rows, SENSORS[:4])
    drifting = rows.copy()
    drifting[300:, 3] += np.linspace(0, 0.05, 100)  # vibration creeps up in the last quarter
    widened, how = fit_machine(drifting, SENSORS[:4])
    assert how["forward_factor"] > 1.5
    assert widened.threshold > steady.threshold


def test_thermal_drift_is_screened_out_with_the_margin_of_the_decision():
    training = {f"P{i}": pump(400, seed=10 + i) for i in range(8)}
    screening = screen_sensors(training, SENSORS, max_drift=0.5)
    assert screening.dropped == ("temperature",)
    assert screening.kept == SENSORS[:4]
    low, high = screening.decision_margin
    assert low < 0.5 < high
    assert screening.median_drift["temperature"] == pytest.approx(high)
    # without the drift nothing is dropped
    steady = {f"P{i}": pump(400, seed=10 + i, drifting_temperature=False) for i in range(8)}
    assert screen_sensors(steady, SENSORS).dropped == ()


def test_drift_counts_only_what_the_other_sensors_do_not_explain():
    rng = np.random.default_rng(4)
    load = np.r_[rng.normal(0, 1, 300), rng.normal(3, 1, 100)]  # the load rises at the end
    wander = np.r_[rng.normal(0, 1, 300), rng.normal(2, 1, 100)]  # a sensor that drifts alone
    rows = np.column_stack(
        [
            load + rng.normal(0, 0.1, 400),
            2 * load + rng.normal(0, 0.1, 400),
            wander,
            np.full(400, 7.0),  # constant: no division by zero
        ]
    )
    drift = sensor_drift(rows, 0.25)
    assert drift[0] < 0.5
    assert drift[1] < 0.5
    assert drift[2] > 1.5
    assert drift[3] == 0.0


def test_train_models_uses_the_screened_sensors_for_every_machine():
    training = {f"P{i}": pump(400, seed=20 + i) for i in range(6)}
    models = train_models(training, SENSORS, version="v9")
    assert models.model_version == "v9"
    assert set(models.machines) == set(training)
    assert all(m.sensors == SENSORS[:4] for m in models.machines.values())
    assert models.training["screening"]["dropped"] == ["temperature"]
    assert models.training["sensors"] == list(SENSORS[:4])
    p0 = models.machines["P0"]
    k = p0.components.shape[1]
    assert p0.parameter_count == 2 * 4 + 4 * k + k + 3
    again = AnomalyModelSet.from_json(models.to_json())
    assert again.machines["P3"].to_dict() == models.machines["P3"].to_dict()
    unscreened = train_models(
        training, SENSORS, version="v9", config=DetectorConfig(screen_sensors=False)
    )
    assert unscreened.machines["P0"].sensors == SENSORS
    assert unscreened.training["screening"] is None


def test_bad_training_rows_are_refused_with_the_reason():
    rows = pump(400, seed=3)[:, :4]
    with pytest.raises(ValueError, match="at least 40 are needed"):
        fit_machine(rows[:10], SENSORS[:4])
    holed = rows.copy()
    holed[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_machine(holed, SENSORS[:4])
    with pytest.raises(ValueError, match=r"rows must be \(n, 3\)"):
        fit_machine(rows, SENSORS[:3])
    with pytest.raises(ValueError, match="no machine"):
        train_models({}, SENSORS, version="x")


def test_rows_are_assembled_as_the_gateway_assembles_them():
    from ml_pipeline.anomaly import machine_rows

    timestamp = np.array([1, 1, 2, 3, 3, 3, 4, 4])
    metric = np.array(["a", "b", "a", "a", "b", "c", "c", "b"])
    value = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    rows = machine_rows(timestamp, metric, value, ("a", "b", "c"))
    # c first reports at 3: earlier rows are incomplete; at 4, a keeps its last value
    assert rows.timestamp.tolist() == [3, 4]
    assert rows.values.tolist() == [[4.0, 5.0, 6.0], [4.0, 8.0, 7.0]]


def test_train_from_a_run_directory_leaves_failures_and_maintenance_out(run_dir, catalog, tmp_path):
    import zipfile

    from typer.testing import CliRunner

    from ml_pipeline.anomaly import normal_operation, train_from_run
    from ml_pipeline.cli import app
    from ml_pipeline.dataset import read_history

    normal, sensors = normal_operation(run_dir, catalog=catalog)
    assert sensors == ("temperature", "vibration", "pressure", "rpm", "flow_rate")
    history = read_history(run_dir)
    failure = history.failures[0]
    kept = normal[failure.machine_id].timestamp
    before = (kept >= failure.failed_at_ms - 24 * 3_600_000) & (kept < failure.repaired_at_ms)
    assert not before.any()
    assert len(kept) > 500
    models = train_from_run(run_dir, version="t1", catalog=catalog)
    assert set(models.machines) <= set(normal)
    assert models.training["horizon_hours"] == 24.0

    out = tmp_path / "anomaly_model"
    result = CliRunner().invoke(
        app,
        [
            "anomaly-train",
            "--data",
            str(run_dir),
            "--out",
            str(out),
            "--zip",
            str(tmp_path / "anomaly_model.zip"),
            "--version",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "anomaly_model.json").exists()
    with zipfile.ZipFile(tmp_path / "anomaly_model.zip") as archive:
        assert archive.namelist() == ["anomaly_model/anomaly_model.json"]
        shipped = AnomalyModelSet.from_json(archive.read("anomaly_model/anomaly_model.json"))
    assert shipped.model_version == "7"
    missing = CliRunner().invoke(app, ["anomaly-train", "--data", str(tmp_path / "none")])
    assert missing.exit_code == 1
    assert "is missing" in missing.output
