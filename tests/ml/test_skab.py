"""SKAB's protocol and scores, on small SKAB-shaped files made here (the real data is for
`iiot ml skab` and the benchmark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_pipeline.skab import (
    COLUMNS,
    TRAIN_ROWS,
    Counts,
    SkabFile,
    changepoints_from_alarms,
    load_skab,
    nab_scores,
    pooled,
    run,
)

T0 = 1_583_748_873_000


def skab_file(
    anomaly_at: list[int], rows: int = 500, name: str = "valve1/0", length: int = 20
) -> SkabFile:
    anomaly = np.zeros(rows, np.int8)
    changepoint = np.zeros(rows, np.int8)
    for start in anomaly_at:
        anomaly[start : start + length] = 1
        changepoint[start] = 1
        changepoint[start + length] = 1
    return SkabFile(
        name=name,
        group=name.split("/")[0],
        timestamp=T0 + 1000 * np.arange(rows, dtype=np.int64),
        values=np.zeros((rows, 8)),
        anomaly=anomaly,
        changepoint=changepoint,
    )


def test_binary_figures_are_pooled_over_files():
    a = skab_file([410])  # 100 test rows, 20 anomalous
    b = skab_file([450])
    predicted_a = np.zeros(100, np.int8)
    predicted_a[10:30] = 1  # all 20 found
    predicted_b = np.zeros(100, np.int8)
    predicted_b[50:55] = 1  # 5 of 20 found
    predicted_b[0:5] = 1  # 5 false alarms
    counts = pooled([a, b], [predicted_a, predicted_b])
    assert counts == Counts(tp=25, fp=5, fn=15, tn=155)
    figures = counts.figures()
    assert figures["f1"] == round(25 / (25 + 20 / 2), 4)
    assert figures["far"] == round(100 * 5 / 160, 2)
    assert figures["mar"] == round(100 * 15 / 40, 2)


def test_a_changepoint_is_wherever_the_alarm_switches():
    assert changepoints_from_alarms([1, 1, 0, 0, 1, 0]).tolist() == [1, 0, 1, 0, 1, 1]
    assert changepoints_from_alarms([0, 0]).tolist() == [0, 0]


def test_nab_perfect_null_early_late_and_false_positive_detections():
    file = skab_file([410], length=70)  # changepoints at test rows 10 and 80: 60 s windows
    at = np.zeros(100, np.int8)

    def score(*positions: int, of: SkabFile = file) -> dict:
        detected = at.copy()
        detected[list(positions)] = 1
        return nab_scores([of], [detected])

    perfect = score(10, 80)
    assert perfect["standard"] == 100.0
    assert perfect["missed_changepoints"] == 0
    assert perfect["false_positives"] == 0
    assert perfect["changepoints"] == 2
    assert nab_scores([file], [at])["standard"] == 0.0
    later = score(10, 11, 95)  # a second hit in a window is ignored; 15 s into the second
    assert later["false_positives"] == 0
    assert 50 < later["standard"] < 100
    assert score(10)["missed_changepoints"] == 1
    assert score(10)["standard"] == 50.0
    with_fp = score(0, 10, 80)
    assert with_fp["false_positives"] == 1
    a_fp = -0.11
    assert with_fp["standard"] == round(100 * (2 + a_fp - (-2)) / (2 - (-2)), 2)
    assert with_fp["low_fp"] < with_fp["standard"]
    assert with_fp["low_fn"] > with_fp["standard"]
    # overlapping windows: the second starts where the first ends, so a detection at the
    # second changepoint itself counts for the first window only
    close = skab_file([430], length=20)  # changepoints at test rows 30 and 50
    assert score(30, 50, of=close)["missed_changepoints"] == 1
    assert score(30, 90, of=close)["standard"] == 100.0


def write_skab_folder(root: Path, rng: np.random.Generator) -> None:
    header = ";".join(["datetime", *COLUMNS, "anomaly", "changepoint"])
    for group, count in (("valve1", 2), ("valve2", 1), ("other", 1)):
        (root / "data" / group).mkdir(parents=True)
        for number in range(count):
            rows = 600
            load = np.convolve(rng.normal(size=rows + 5), np.ones(5) / 5, mode="valid")[:rows]
            values = np.column_stack(
                [load * (j + 1) + rng.normal(0, 0.2, rows) for j in range(8)]
            ) + np.arange(8)
            values[450:500, 2] += 3.0  # a sensor leaves the others
            anomaly = np.zeros(rows, int)
            anomaly[450:500] = 1
            changepoint = np.zeros(rows, int)
            changepoint[[450, 500]] = 1
            lines = [header]
            for i in range(rows):
                moment = np.datetime64("2020-03-09T10:14:33") + np.timedelta64(i, "s")
                cells = [str(moment).replace("T", " "), *(f"{v:.6f}" for v in values[i])]
                lines.append(";".join([*cells, f"{anomaly[i]}.0", f"{changepoint[i]}.0"]))
            (root / "data" / group / f"{number}.csv").write_text("\n".join(lines) + "\n")
    (root / "data" / "anomaly-free").mkdir()  # present in SKAB, never scored


def test_run_follows_the_protocol_on_skab_shaped_files(tmp_path: Path):
    write_skab_folder(tmp_path, np.random.default_rng(5))
    files = load_skab(tmp_path)
    assert [f.name for f in files] == ["valve1/0", "valve1/1", "valve2/0", "other/0"]
    assert files[0].values.shape == (600, 8)
    assert files[0].timestamp[1] - files[0].timestamp[0] == 1000
    report = run(tmp_path, cross_validate=True)
    assert {"f1", "far", "mar", "nab", "candidates", "published", "cross_validation"} <= set(report)
    assert report["detector"]["batch_agreement"] == 1.0
    assert report["f1"] > 0.8  # the broken sensor is found
    assert set(report["candidates"]) >= {
        "pca_t2q_all_8_sensors",
        "isolation_forest_case_study",
        "isolation_forest_skab_notebook",
    }
    test_rows = sum(len(f.values) - TRAIN_ROWS for f in files)
    case_study = report["candidates"]["isolation_forest_case_study"]
    assert sum(case_study[k] for k in ("tp", "fp", "fn", "tn")) == test_rows
    assert report["published"]["outlier"]["Isolation forest"]["f1"] == 0.29


def test_a_folder_without_skab_files_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="pass --data to the SKAB folder"):
        load_skab(tmp_path)


def test_candidate_families_run_under_the_shipped_pipeline(tmp_path: Path):
    from edge_runtime.anomaly_detector import smoothed_scores
    from ml_pipeline.anomaly import DetectorConfig
    from ml_pipeline.skab import SENSORS, train_per_file
    from ml_pipeline.skab_candidates import FAMILIES, alarms, compare

    write_skab_folder(tmp_path, np.random.default_rng(5))
    files = load_skab(tmp_path)
    quick = [f for f in FAMILIES if f != "mlp_autoencoder"]  # the slow one: one file below
    report = compare(files, SENSORS[:6], quick)
    assert set(report) == {
        f"{family} ({subset})" for family in quick for subset in ("screened", "all_8_sensors")
    }
    assert alarms(files[0], range(8), FAMILIES["mlp_autoencoder"]).shape == (200,)
    for name, figures in report.items():
        assert {"f1", "far", "mar", "nab"} <= set(figures), name
    assert report["pca_t2q (all_8_sensors)"]["f1"] > 0.8  # the broken sensor is found
    # the PCA family here is the gateway's detector: same alarms on every test row
    config = DetectorConfig(screen_sensors=False)
    models = train_per_file(files, config)
    for file in files:
        model = models.machines[file.name]
        scores = smoothed_scores(
            model,
            file.values,
            ewma_span=models.ewma_span,
            smoothing_readings=models.smoothing_readings,
        )
        shipped = (scores[TRAIN_ROWS:] > model.threshold).astype(np.int8)
        candidate = alarms(file, range(8), FAMILIES["pca_t2q"])
        assert (shipped == candidate).mean() > 0.98
