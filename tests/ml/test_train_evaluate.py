"""Training: no leakage across time or machines, imbalance handled, script mode; evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_pipeline.evaluate import evaluate, pr_auc
from ml_pipeline.labels import FailureEvent
from ml_pipeline.train import (
    MAX_BINS,
    THRESHOLDS,
    cross_validate,
    load_table,
    save_table,
    split_by_time_and_machine,
)


def test_split_keeps_test_machines_and_the_future_out_of_training(feature_table) -> None:
    split = split_by_time_and_machine(feature_table)
    machines = feature_table.machine_id
    assert not set(machines[split.train]) & set(split.test_machines)
    assert set(machines[split.test]) <= set(split.test_machines)
    assert feature_table.timestamp[split.train].max() < split.cut_ms
    assert feature_table.timestamp[split.test].min() >= split.cut_ms
    # a training row's label never knows a failure after the cut: rows whose horizon crosses
    # the cut are positive only through failures before it, or excluded
    horizon = feature_table.extra["horizon_ms"]
    late = feature_table.timestamp[split.train] + horizon > split.cut_ms
    late_positive = split.train_label[late] == 1
    failures_before_cut = [
        f for f in feature_table.extra["failures"] if f.failed_at_ms < split.cut_ms
    ]
    for row in np.flatnonzero(late)[late_positive]:
        t = feature_table.timestamp[split.train][row]
        machine = machines[split.train][row]
        assert any(
            f.machine_id == machine and t < f.failed_at_ms <= t + horizon
            for f in failures_before_cut
        )


def test_feature_table_round_trips_through_npz(feature_table, tmp_path: Path) -> None:
    save_table(feature_table, tmp_path / "features.npz")
    loaded = load_table(tmp_path / "features.npz")
    np.testing.assert_array_equal(loaded.x, feature_table.x)
    np.testing.assert_array_equal(loaded.extra["label"], feature_table.extra["label"])
    assert loaded.extra["failures"] == feature_table.extra["failures"]
    assert loaded.extra["spec"] == feature_table.extra["spec"]


def test_training_writes_model_and_metrics(model_dir: Path) -> None:
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for key in ("pr_auc", "precision", "recall", "lead_time_hours", "false_alarms_per_machine_day"):
        assert key in metrics
    assert metrics["split"]["train_positive_rows"] > 0
    info = json.loads((model_dir / "training.json").read_text())
    assert info["model_version"] == "test-1"
    # the threshold and max_bin are cross-validation's, recorded for the gateway
    chosen = metrics["cross_validation"]
    assert info["threshold"] == chosen["threshold"] == metrics["threshold"]
    assert info["threshold_source"] == chosen["threshold_source"] == metrics["threshold_source"]
    assert chosen["cv_threshold"] in THRESHOLDS
    if chosen["threshold_source"] == "cross-validation":
        assert chosen["threshold"] == chosen["cv_threshold"]
    else:  # this small fleet's training rows hold too few failures to choose on
        assert chosen["threshold_source"].startswith("default: ")
        assert chosen["threshold"] == 0.8
    assert chosen["max_bin"] in MAX_BINS
    assert {m["max_bin"] for m in chosen["measured"] if "max_bin" in m} == set(MAX_BINS)
    # the model learned something real from the simulated degradation
    assert metrics["pr_auc"] > (metrics["positive_rows"] / metrics["rows"])


def test_cross_validation_sees_the_training_rows_only(
    feature_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_pipeline import train

    seen = {}
    real = train.cross_validate

    def spy(x, label, machines, timestamps, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(x=x, machines=machines, timestamps=timestamps)
        return real(x, label, machines, timestamps, **kwargs)

    monkeypatch.setattr(train, "cross_validate", spy)
    metrics = train.train_and_evaluate(feature_table, tmp_path / "m", rounds=5, threshold=0.65)
    split = split_by_time_and_machine(feature_table)
    np.testing.assert_array_equal(seen["x"], feature_table.x[split.train])
    assert not set(seen["machines"].tolist()) & set(split.test_machines)
    assert seen["timestamps"].max() < split.cut_ms
    # a threshold given explicitly overrides the chosen one; the choice is still recorded
    assert metrics["threshold"] == 0.65
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert (info["threshold"], info["threshold_source"]) == (0.65, "given (--threshold)")
    assert metrics["cross_validation"]["cv_threshold"] in THRESHOLDS


def test_cross_validation_prefers_the_max_bin_that_resolves_the_signal() -> None:
    # positives sit in a narrow band of one feature: two bins cannot cut it out, 256 can
    rng = np.random.default_rng(0)
    n = 6000
    x = rng.random((n, 2))
    label = ((x[:, 0] > 0.50) & (x[:, 0] < 0.53)).astype(np.int8)
    machines = np.array([f"M{i % 6}" for i in range(n)])
    choice = cross_validate(x, label, machines, rounds=30, folds=3, max_bins=(2, 256))
    assert choice.max_bin == 256
    by_bins = {m["max_bin"]: m["cv_pr_auc"] for m in choice.measured if "max_bin" in m}
    assert by_bins[256] > by_bins[2] + 0.3
    assert choice.measured[-1]["cv_f1"] > 0.9
    assert choice.threshold in THRESHOLDS


def test_alert_figures_count_alerts_and_announced_failures() -> None:
    from ml_pipeline.train import alert_figures

    # one machine: rows 1-4 and 9-10 are two failures' horizons; an alert at rows 1-2 (followed,
    # announcing the first), another at row 7 (followed by nothing); the second failure missed
    prob = np.array([0.1, 0.9, 0.9, 0.2, 0.1, 0.1, 0.1, 0.95, 0.1, 0.1, 0.1])
    label = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1], dtype=np.int8)
    machines = np.array(["M1"] * len(prob))
    t = np.arange(len(prob), dtype=np.int64)[::-1].copy()  # given in reverse time order
    precision, recall = alert_figures(prob[::-1], label[::-1], machines, t, 0.8)
    assert (precision, recall) == (0.5, 0.5)
    assert alert_figures(prob, label, machines, t[::-1].copy(), 0.99) == (0.0, 0.0)


def test_train_runs_as_a_sagemaker_script_mode_entry_point(
    feature_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_pipeline import train

    channel = tmp_path / "channel"
    save_table(feature_table, channel / "features.npz")
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(channel))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(tmp_path / "output"))
    assert train.main(["--rounds", "5"]) == 0
    assert (tmp_path / "model" / "model.json").exists()
    assert json.loads((tmp_path / "output" / "metrics.json").read_text())["rows"] > 0


def test_pr_auc_matches_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    label = (rng.random(500) < 0.1).astype(np.int8)
    prob = np.round(np.clip(label * 0.3 + rng.random(500) * 0.7, 0, 1), 2)  # with ties
    assert pr_auc(label, prob) == pytest.approx(average_precision_score(label, prob))


def test_lead_time_and_false_alarms_on_a_known_case() -> None:
    hour = 3_600_000
    t = np.arange(0, 100) * hour  # one machine, hourly rows
    failure = FailureEvent("M1", 80 * hour, 84 * hour)
    label = np.zeros(100, dtype=np.int8)
    label[56:80] = 1
    label[80:84] = -1
    prob = np.zeros(100)
    prob[70:80] = 0.9  # fires 10 h before the failure
    prob[20:23] = 0.85  # one false alarm episode
    metrics = evaluate(prob, label, np.array(["M1"] * 100), t, [failure], threshold=0.8)
    assert metrics["failures_caught"] == 1
    assert metrics["lead_time_hours"]["median"] == pytest.approx(10.0)
    assert metrics["false_alarms"] == 1
    assert metrics["false_alarms_per_machine_day"] == pytest.approx(1 / (99 / 24))
    assert metrics["precision"] == pytest.approx(10 / 13)
    assert metrics["recall"] == pytest.approx(10 / 24)


def test_evaluate_command_writes_the_metrics_json(
    model_dir: Path, run_dir: Path, tmp_path: Path
) -> None:
    from ml_pipeline.dataset import build_table
    from ml_pipeline.evaluate_job import evaluate_model_dir
    from ml_pipeline.train import save_table

    table = build_table(run_dir, sample_ms=10 * 60_000)
    save_table(table, tmp_path / "features.npz")
    metrics = evaluate_model_dir(model_dir, tmp_path / "features.npz", tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["pr_auc"] == metrics["pr_auc"]
    assert metrics["model_version"] == "test-1"


def test_cli_features_then_train(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ml_pipeline.cli import app

    runner = CliRunner()
    features = runner.invoke(
        app, ["features", "--data", str(run_dir), "--out", str(tmp_path / "f.npz")]
    )
    assert features.exit_code == 0, features.output
    assert json.loads(features.output)["positive"] > 0
    trained = runner.invoke(
        app,
        ["train", "--data", str(tmp_path / "f.npz"), "--out", str(tmp_path / "m"), "--rounds", "5"],
    )
    assert trained.exit_code == 0, trained.output
    assert "pr_auc" in json.loads(trained.output)
    missing = runner.invoke(app, ["features", "--data", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1
    assert "missing" in missing.output


def test_alert_quality_counts_alerts_that_an_incident_followed():
    from iiot.anomaly import Anomaly
    from ml_pipeline.evaluate import Incident, alert_quality

    hour = 3_600_000

    def alert(machine: str, at_hours: float, kind: str = "MULTIVARIATE_ANOMALY", state="RAISED"):
        return Anomaly(
            factory_id="F01",
            machine_id=machine,
            metric="anomaly_score",
            anomaly_type=kind,
            severity="WARNING",
            value=2.0,
            threshold=1.0,
            timestamp=int(at_hours * hour),
            source="model",
            state=state,
        )

    incidents = [
        Incident("M1", 30 * hour, 34 * hour),  # a failure at 30 h, repaired at 34 h
        Incident("M2", 50 * hour, 60 * hour),  # another, never announced
        Incident("M3", 10 * hour, 11 * hour, kind="injected_fault"),
    ]
    alerts = [
        alert("M1", 8),  # 22 h before the failure: followed within 24 h
        alert("M1", 8.5, state="CLEARED"),  # not an alert
        alert("M1", 2),  # 28 h before: too early
        alert("M1", 31, "FAILURE_PREDICTED"),  # while it is down: under way
        alert("M2", 61),  # after the repair: followed by nothing
        alert("M3", 10.5),  # during the injected fault
        alert("M4", 5),  # a machine without incidents
    ]
    quality = alert_quality(alerts, incidents, horizon_ms=24 * hour)
    assert quality["alerts"] == 6
    assert quality["alerts_followed_by_an_incident"] == 3
    assert quality["alert_precision"] == 0.5
    assert quality["failures"] == 2
    assert quality["failures_alerted"] == 1  # M1's, by the alert 22 h ahead (not the one after)
    assert quality["failure_recall"] == 0.5
    assert quality["injected_faults_alerted"] == 1
    assert quality["by_type"]["FAILURE_PREDICTED"] == {"alerts": 1, "followed": 1, "precision": 1.0}
    assert quality["by_type"]["MULTIVARIATE_ANOMALY"]["alerts"] == 5
    # a failure before the alerting began: out of the recall, its down time still explains
    early = [Incident("M5", 1 * hour, 6 * hour), *incidents]
    alerts.append(alert("M5", 3))
    since = alert_quality(alerts, early, horizon_ms=24 * hour, since_ms=2 * hour)
    assert since["failures"] == 2
    assert since["incidents_before_the_data"] == 1
    assert since["alerts_followed_by_an_incident"] == 4
    assert alert_quality(alerts, early, horizon_ms=24 * hour)["failures"] == 3
    empty = alert_quality([], [], horizon_ms=hour)
    assert empty["alert_precision"] is None
    assert empty["failure_recall"] is None


def _episodes_fleet(
    machines: int, episodes_per_machine: int, signal: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows every 10 min per machine; each episode is 12 positive rows after 60 normal ones.
    With `signal` feature 0 rises through each episode (a learnable precursor); without it
    the features are noise."""
    rng = np.random.default_rng(seed)
    xs, labels, names, times = [], [], [], []
    for m in range(machines):
        for e in range(episodes_per_machine):
            label = np.array([0] * 60 + [1] * 12, dtype=np.int8)
            x = rng.random((len(label), 3))
            if signal:
                x[60:, 0] += np.linspace(1.0, 3.0, 12)
            start = e * len(label)
            xs.append(x)
            labels.append(label)
            names.append(np.array([f"M{m:02d}"] * len(label)))
            times.append((start + np.arange(len(label), dtype=np.int64)) * 600_000)
    return np.vstack(xs), np.concatenate(labels), np.concatenate(names), np.concatenate(times)


def test_a_small_training_set_keeps_the_default_threshold() -> None:
    from ml_pipeline.train import ALERT_THRESHOLD, MIN_CV_FAILURES, failure_episodes

    # 6 machines x 1 failure: the signal is clean, but 6 failures are too few to choose on
    x, label, machines, times = _episodes_fleet(6, 1, signal=True)
    assert failure_episodes(label, machines, times) == 6 < MIN_CV_FAILURES
    choice = cross_validate(x, label, machines, times, rounds=20, folds=3, max_bins=(64,))
    assert choice.source == "default: only 6 failures"
    assert choice.threshold == ALERT_THRESHOLD
    assert choice.cv_threshold in THRESHOLDS  # what cross-validation would have picked
    assert choice.measured[-1]["failure_episodes"] == 6


def test_a_large_training_set_gets_the_cross_validated_threshold() -> None:
    from ml_pipeline.train import CROSS_VALIDATION, MIN_CV_FAILURES

    # 9 machines x 3 failures with a clear precursor: enough evidence, precise alerts
    x, label, machines, times = _episodes_fleet(9, 3, signal=True)
    choice = cross_validate(x, label, machines, times, rounds=20, folds=3, max_bins=(64,))
    assert choice.source == CROSS_VALIDATION
    assert choice.threshold == choice.cv_threshold
    assert choice.measured[-1]["failure_episodes"] == 27 >= MIN_CV_FAILURES
    assert choice.measured[-1]["cv_alert_precision"] >= 0.5


def test_imprecise_cross_validated_alerts_keep_the_default_threshold() -> None:
    from ml_pipeline.train import ALERT_THRESHOLD, MIN_CV_ALERT_PRECISION

    # as many failures, but nothing foretells them: the best choice alerts mostly in vain
    x, label, machines, times = _episodes_fleet(9, 3, signal=False)
    choice = cross_validate(x, label, machines, times, rounds=20, folds=3, max_bins=(64,))
    assert choice.measured[-1]["cv_alert_precision"] < MIN_CV_ALERT_PRECISION
    assert choice.source.startswith("default: cross-validated alert precision")
    assert choice.threshold == ALERT_THRESHOLD


def test_the_compiled_manifest_records_the_threshold_and_its_rule(
    model_dir: Path, compiled_dir: Path
) -> None:
    info = json.loads((model_dir / "training.json").read_text())
    manifest = json.loads((compiled_dir / "manifest.json").read_text())
    assert manifest["threshold"] == info["threshold"]
    assert manifest["threshold_source"] == info["threshold_source"]
